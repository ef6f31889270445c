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
//   mla/decode_paged/<shape>    mla_paged_decode over the same fp16 latents in 64-token pages
//                               (shuffled block table), same counters
//   mla/decode_int8|int4/<shape> mla_latent_decode over int8 / int4 latents (one group per
//                               token) with fp16 rotary keys; GB/s of their own (smaller) bytes
//   mla/prefill/<shape>         mla_prefill (expanded) causal over T new tokens, DeepSeek-V2-Lite
//                               heads (16), GFLOP/s of the attention and expansion GEMMs
// Every mla/decode* row reports cache_B_per_tok (the latent cache's bytes per token and layer) and
// gqa_B_per_tok, Llama-3-8B's fp16 GQA cache (8 KV heads of 128: 4096), beside it.
// With 128 heads the absorbed decode does ~160 FLOP per cache byte, so it is bound by the FMAs,
// not by the cache's bandwidth; H1 and H16 show where it becomes bandwidth-bound.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/mla/paged.hpp"
#include "seqmix/kv_cache/mla_cache.hpp"
#include "seqmix/kv_cache/mla_latent.hpp"
#include "seqmix/attention/dense/decode.hpp"
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

enum class MlaStore { paged_f16, int8, int4 };

void mla_store(benchmark::State& state, const MlaShape& s, MlaStore store) {
  const auto c = st::random_tensor<3>({1, s.Tk, s.dc}, 1), r = st::random_tensor<3>({1, s.Tk, s.dr}, 2);
  const auto q_nope = st::random_tensor<3>({1, s.H, s.dn}, 3), q_rope = st::random_tensor<3>({1, s.H, s.dr}, 4);
  const auto w = st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, 5, -0.05f, 0.05f);
  const seqmix::MlaWeights weights{w.view().slice(1, 0, s.dn), w.view().slice(1, s.dn, s.dv)};
  Tensor<float, 3> o({1, s.H, s.dv});
  const index_t bs = 64, pages = (s.Tk + bs - 1) / bs;
  Tensor<std::int32_t, 2> table({1, pages});
  for (index_t i = 0; i < pages; ++i) table(0, i) = static_cast<std::int32_t>((i * 37) % pages);  // 37 is prime to 512
  const std::vector<std::int32_t> none = {0}, lengths = {static_cast<std::int32_t>(s.Tk)};
  seqmix::MlaLatentAppendInputs fill;
  fill.c_kv = c.view(), fill.k_rope = r.view(), fill.cache_seqlens = none;
  double bytes_per_token = 0;
  if (store == MlaStore::paged_f16) {
    Tensor<seqmix::f16, 3> c_pages({pages, bs, s.dc}), r_pages({pages, bs, s.dr});
    fill.block_table = table.cview();
    seqmix::mla_paged_append(fill, seqmix::MlaPagedLatentPool<seqmix::f16>{c_pages.view(), r_pages.view()});
    const seqmix::MlaPagedDecodeInputs<seqmix::f16> in{q_nope.view(), q_rope.view(), c_pages.view(), r_pages.view(),
                                                       table.cview(), lengths, weights};
    for (auto _ : state) {
      seqmix::mla_paged_decode(in, {o.view(), {}}, {}, st::two_thread_pool());
      benchmark::DoNotOptimize(o.data());
    }
    bytes_per_token = static_cast<double>((s.dc + s.dr) * 2);
  } else {
    const seqmix::KvFormat f = store == MlaStore::int8 ? seqmix::KvFormat::int8 : seqmix::KvFormat::int4;
    Tensor<std::uint8_t, 3> codes({1, s.Tk, seqmix::row_bytes(f, s.dc)});
    Tensor<float, 4> params({1, s.Tk, 1, 2});
    Tensor<seqmix::f16, 3> kr({1, s.Tk, s.dr});
    const seqmix::MlaQuantizedLatents<seqmix::f16> cache{f, 0, codes.view(), params.view(), kr.view(), s.dc};
    seqmix::mla_latent_append(fill, cache);
    const seqmix::MlaLatentDecodeInputs<seqmix::f16> in{q_nope.view(), q_rope.view(), cache, {}, {}, weights};
    for (auto _ : state) {
      seqmix::mla_latent_decode(in, {o.view(), {}}, {}, st::two_thread_pool());
      benchmark::DoNotOptimize(o.data());
    }
    bytes_per_token = static_cast<double>(seqmix::mla_latent_bytes_per_token(f, s.dc, 0, s.dr));
  }
  st::report_throughput(state, 2.0 * static_cast<double>(s.H * s.Tk * (2 * s.dc + s.dr)),
                        bytes_per_token * static_cast<double>(s.Tk));
  state.counters["cache_B_per_tok"] = bytes_per_token;
  state.counters["gqa_B_per_tok"] = 2.0 * 8 * 128 * 2;
}

void mla_prefill_bench(benchmark::State& state, index_t T) {
  const index_t H = 16, dc = 512, dr = 64, dn = 128, dv = 128;  // DeepSeek-V2-Lite
  const auto c_kv = random_f16({1, T, dc}, 1), k_rope = random_f16({1, T, dr}, 2);
  const auto q_nope = st::random_tensor<4>({1, T, H, dn}, 3), q_rope = st::random_tensor<4>({1, T, H, dr}, 4);
  const auto w = st::random_tensor<3>({H, dn + dv, dc}, 5, -0.05f, 0.05f);
  Tensor<float, 4> o({1, T, H, dv});
  const seqmix::MlaPrefillInputs<seqmix::f16> in{q_nope.view(), q_rope.view(), c_kv.view(), k_rope.view(),
                                                 {w.view().slice(1, 0, dn), w.view().slice(1, dn, dv)}};
  for (auto _ : state) {
    seqmix::mla_prefill(in, {o.view(), {}}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  // Expansion (k_nope and v for every head and token) plus causal attention (half the logits).
  const double flops = 2.0 * static_cast<double>(T * H * (dn + dv) * dc) +
                       2.0 * static_cast<double>(H) * static_cast<double>(T) * static_cast<double>(T + 1) / 2.0 *
                           static_cast<double>(dn + dr + dv);
  st::report_throughput(state, flops, static_cast<double>(T * (dc + dr) * 2));
}

// GQA decode at the same cache length, Llama-3-8B heads (32 query, 8 KV heads of 128, fp16 K/V):
// the memory-bound baseline the MLA decode rows are read against (same program, same run).
void gqa_decode_bench(benchmark::State& state, index_t Tk) {
  const index_t Hq = 32, Hkv = 8, D = 128;
  Tensor<seqmix::f16, 4> k({1, Tk, Hkv, D}), v({1, Tk, Hkv, D});
  const Tensor<float, 4> kv = st::random_tensor<4>({1, Tk, Hkv, D}, 7);
  for (index_t i = 0; i < kv.numel(); ++i) k.data()[i] = seqmix::f16(kv.data()[i]), v.data()[i] = seqmix::f16(-kv.data()[i]);
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 8);
  Tensor<float, 4> o({1, 1, Hq, D});
  seqmix::AttentionInputs<seqmix::f16> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  for (auto _ : state) {
    seqmix::attention_step(in, {o.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  st::report_throughput(state, 2.0 * 2.0 * static_cast<double>(Hq * Tk * D), static_cast<double>(Tk * Hkv * D * 2 * 2));
  state.counters["cache_B_per_tok"] = 2.0 * Hkv * D * 2;
}

// The same MLA decode over an MlaLatentCache (fp16 latents and rotary keys) instead of caller views.
void mla_cache_bench(benchmark::State& state, const MlaShape& s) {
  seqmix::MlaLatentCacheConfig cfg;
  cfg.latent_dim = s.dc, cfg.rope_dim = s.dr;
  seqmix::MlaLatentCache cache(cfg);
  const auto c = st::random_tensor<3>({1, s.Tk, s.dc}, 1), r = st::random_tensor<3>({1, s.Tk, s.dr}, 2);
  seqmix::MlaCacheAppendInputs fill;
  fill.c_kv = c.view(), fill.k_rope = r.view();
  cache.append(fill);
  const auto q_nope = st::random_tensor<3>({1, s.H, s.dn}, 3), q_rope = st::random_tensor<3>({1, s.H, s.dr}, 4);
  const auto w = st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, 5, -0.05f, 0.05f);
  Tensor<float, 3> o({1, s.H, s.dv});
  const seqmix::MlaCacheDecodeInputs in{q_nope.view(), q_rope.view(), &cache,
                                        {w.view().slice(1, 0, s.dn), w.view().slice(1, s.dn, s.dv)}};
  for (auto _ : state) {
    seqmix::mla_latent_cache_decode(in, {o.view(), {}}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  st::report_throughput(state, 2.0 * static_cast<double>(s.H * s.Tk * (2 * s.dc + s.dr)),
                        static_cast<double>(s.Tk * (s.dc + s.dr)) * 2.0);
  state.counters["cache_B_per_tok"] = static_cast<double>((s.dc + s.dr) * 2);
}

void register_mla() {
  for (const MlaShape& s : kMlaShapes) {
    benchmark::RegisterBenchmark((std::string("mla/decode/") + s.name).c_str(),
                                 [=](benchmark::State& st_) {
                                   mla(st_, s, false);
                                   st_.counters["cache_B_per_tok"] = static_cast<double>((s.dc + s.dr) * 2);
                                   st_.counters["gqa_B_per_tok"] = 2.0 * 8 * 128 * 2;
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark((std::string("mla/stream/") + kMlaShapes[0].name).c_str(),
                               [=](benchmark::State& st_) { mla(st_, kMlaShapes[0], true); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (const MlaShape& s : {kMlaShapes[0], kMlaShapes[1]}) {
    const std::string tail = std::string(s.name).substr(0, std::string(s.name).size() - 5);  // drop "_fp16"
    benchmark::RegisterBenchmark((std::string("mla/decode_paged/") + s.name + "_bs64").c_str(),
                                 [=](benchmark::State& st_) { mla_store(st_, s, MlaStore::paged_f16); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("mla/decode_int8/") + tail).c_str(),
                                 [=](benchmark::State& st_) { mla_store(st_, s, MlaStore::int8); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("mla/decode_int4/") + tail).c_str(),
                                 [=](benchmark::State& st_) { mla_store(st_, s, MlaStore::int4); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("mla/gqa_decode/llama3_8b_Tk32768_fp16",
                               [](benchmark::State& st_) { gqa_decode_bench(st_, 32768); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark((std::string("mla/decode_cache/") + kMlaShapes[0].name).c_str(),
                               [=](benchmark::State& st_) { mla_cache_bench(st_, kMlaShapes[0]); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("mla/prefill/T1024_H16_dc512_dr64_fp16_causal",
                               [](benchmark::State& st_) { mla_prefill_bench(st_, 1024); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

const int kRegistered = (register_all(), register_mla(), 0);

}  // namespace
