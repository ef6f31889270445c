// Rotary embedding benchmarks, 2 threads.
//
//   rope/<layout>/<shape>       seqmix::rope out of place on q [B,T,H,D] (Llama-3-8B heads, llama3
//                               scaling, positions int32 per token)
//   rope/copy/<shape>           the baseline: std::copy of the same tensor into another buffer
//                               in the same parallel blocks (a read and a write of every byte,
//                               what rope cannot go below)
//   rope/reference/<shape>      reference::rope on a smaller shape, beside rope/half_split on it
// GB/s = 2 * B*T*H*D * 4 bytes (x read, out written) / time; compare with the machine's
// streaming bandwidth through "eff" (bench_counters.hpp: the fraction of the machine's limit).
//
// Multi-head latent attention, decode over one sequence's fp16 latent cache (DeepSeek-V2/V3:
// 128 heads, d_c = 512, d_r = 64, d_nope = d_v = 128):
//   mla/decode/<shape>          mla_decode (absorbed), GB/s = Tk * (d_c + d_r) * 2 bytes / time
//                               and GFLOP/s = 2 * H * Tk * (2 d_c + d_r) / time
//   mla/stream/<shape>          the baseline: one pass summing the same fp16 cache bytes
// With 128 heads the absorbed decode does ~160 FLOP per cache byte, so it is bound by the FMAs,
// not by the cache's bandwidth; H1 and H16 show where it becomes bandwidth-bound.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/positional.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct RopeShape {
  const char* name;
  index_t B, T, H, D;
};

// Llama-3-8B query heads: a 4096-token prefill chunk, and one decode step of 256 sequences.
const RopeShape kShapes[] = {{"llama3_8b_q_T4096", 1, 4096, 32, 128}, {"llama3_8b_q_decode_B256", 256, 1, 32, 128}};
const RopeShape kSmall = {"H8_D128_T256", 1, 256, 8, 128};

seqmix::RopeConfig llama3_config(seqmix::RopeLayout layout) {
  seqmix::RopeConfig c;
  c.scheme = seqmix::RopeScheme::llama3;
  c.layout = layout;
  c.rotary_dim = 128;
  c.base = 500000.0;
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  return c;
}

void set_bytes(benchmark::State& state, const RopeShape& s) {
  st::report_gbytes(state, 2.0 * static_cast<double>(s.B * s.T * s.H * s.D) * sizeof(float));
}

std::vector<std::int32_t> positions(const RopeShape& s) {
  std::vector<std::int32_t> pos;
  for (index_t i = 0; i < s.B * s.T; ++i) pos.push_back(static_cast<std::int32_t>((i * 7919) % 32768));
  return pos;
}

enum class Form { fast, reference, copy };

void run(benchmark::State& state, const RopeShape& s, seqmix::RopeLayout layout, Form form) {
  static const seqmix::RopeTable half_table(llama3_config(seqmix::RopeLayout::half_split), 32768);
  static const seqmix::RopeTable inter_table(llama3_config(seqmix::RopeLayout::interleaved), 32768);
  const seqmix::RopeTable& table = layout == seqmix::RopeLayout::interleaved ? inter_table : half_table;
  Tensor<float, 4> x = st::random_tensor<4>({s.B, s.T, s.H, s.D}, 1), out({s.B, s.T, s.H, s.D});
  const std::vector<std::int32_t> pos = positions(s);
  const index_t row = s.H * s.D;
  for (auto _ : state) {
    switch (form) {
      case Form::fast:
        seqmix::rope(table, {x.view(), pos}, {out.view()}, st::two_thread_pool());
        break;
      case Form::reference:
        seqmix::reference::rope(table, {x.view(), pos}, {out.view()});
        break;
      case Form::copy:
        seqmix::parallel_for(st::two_thread_pool(), s.B * s.T, std::max<index_t>(1, 4096 / row),
                             [&](index_t begin, index_t end) {
                               std::copy(x.data() + begin * row, x.data() + end * row, out.data() + begin * row);
                             });
        break;
    }
    benchmark::DoNotOptimize(x.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

void register_all() {
  auto add = [](const std::string& name, const RopeShape& s, seqmix::RopeLayout layout, Form form) {
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st_) { run(st_, s, layout, form); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  };
  for (const RopeShape& s : kShapes) {
    add(std::string("rope/half_split/") + s.name, s, seqmix::RopeLayout::half_split, Form::fast);
    add(std::string("rope/interleaved/") + s.name, s, seqmix::RopeLayout::interleaved, Form::fast);
    add(std::string("rope/copy/") + s.name, s, seqmix::RopeLayout::half_split, Form::copy);
  }
  add(std::string("rope/half_split/") + kSmall.name, kSmall, seqmix::RopeLayout::half_split, Form::fast);
  add(std::string("rope/reference/") + kSmall.name, kSmall, seqmix::RopeLayout::half_split, Form::reference);
}

struct MlaShape {
  const char* name;
  index_t Tk, H, dc, dr, dn, dv;
};

const MlaShape kMlaShapes[] = {{"Tk32768_H128_dc512_dr64_fp16", 32768, 128, 512, 64, 128, 128},
                               {"Tk32768_H16_dc512_dr64_fp16", 32768, 16, 512, 64, 128, 128},
                               {"Tk32768_H1_dc512_dr64_fp16", 32768, 1, 512, 64, 128, 128}};

Tensor<seqmix::f16, 3> random_f16(const std::array<index_t, 3>& shape, std::uint64_t seed) {
  const Tensor<float, 3> values = st::random_tensor<3>(shape, seed);
  Tensor<seqmix::f16, 3> out(shape);
  for (index_t i = 0; i < values.numel(); ++i) out.data()[i] = seqmix::f16(values.data()[i]);
  return out;
}

void mla(benchmark::State& state, const MlaShape& s, bool stream) {
  const auto c_kv = random_f16({1, s.Tk, s.dc}, 1), k_rope = random_f16({1, s.Tk, s.dr}, 2);
  const auto q_nope = st::random_tensor<3>({1, s.H, s.dn}, 3), q_rope = st::random_tensor<3>({1, s.H, s.dr}, 4);
  const auto w = st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, 5, -0.05f, 0.05f);
  Tensor<float, 3> o({1, s.H, s.dv});
  const seqmix::MlaDecodeInputs<seqmix::f16> in{q_nope.view(), q_rope.view(), c_kv.view(), k_rope.view(), {},
                                                {w.view().slice(1, 0, s.dn), w.view().slice(1, s.dn, s.dv)}};
  for (auto _ : state) {
    if (stream) {
      float sums[2] = {0.f, 0.f};
      seqmix::parallel_for(st::two_thread_pool(), 2, 1, [&](index_t begin, index_t end) {
        for (index_t part = begin; part < end; ++part) {
          const auto* c = c_kv.data() + part * (c_kv.numel() / 2);
          const auto* r = k_rope.data() + part * (k_rope.numel() / 2);
          seqmix::simd::Batch<float> acc(0.f);
          for (index_t i = 0; i + seqmix::simd::kWidth <= c_kv.numel() / 2; i += seqmix::simd::kWidth)
            acc += seqmix::simd::load_f16(c + i);
          for (index_t i = 0; i + seqmix::simd::kWidth <= k_rope.numel() / 2; i += seqmix::simd::kWidth)
            acc += seqmix::simd::load_f16(r + i);
          sums[part] = seqmix::simd::reduce_add(acc);
        }
      });
      benchmark::DoNotOptimize(sums);
    } else {
      seqmix::mla_decode(in, {o.view(), {}}, {}, st::two_thread_pool());
      benchmark::DoNotOptimize(o.data());
    }
  }
  const double bytes = static_cast<double>(s.Tk * (s.dc + s.dr)) * 2.0;
  if (stream)
    st::report_gbytes(state, bytes);
  else
    st::report_throughput(state, 2.0 * static_cast<double>(s.H * s.Tk * (2 * s.dc + s.dr)), bytes);
}

void register_mla() {
  for (const MlaShape& s : kMlaShapes) {
    benchmark::RegisterBenchmark((std::string("mla/decode/") + s.name).c_str(),
                                 [=](benchmark::State& st_) { mla(st_, s, false); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark((std::string("mla/stream/") + kMlaShapes[0].name).c_str(),
                               [=](benchmark::State& st_) { mla(st_, kMlaShapes[0], true); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

const int kRegistered = (register_all(), register_mla(), 0);

}  // namespace
