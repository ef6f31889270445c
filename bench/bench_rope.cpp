// Rotary embedding benchmarks, 2 threads.
//
//   rope/<layout>/<shape>       seqmix::rope out of place on q [B,T,H,D] (Llama-3-8B heads, llama3
//                               scaling, positions int32 per token)
//   rope/copy/<shape>           the baseline: std::copy of the same tensor into another buffer
//                               in the same parallel blocks (a read and a write of every byte,
//                               what rope cannot go below)
//   rope/reference/<shape>      reference::rope on a smaller shape, beside rope/half_split on it
// GB/s = 2 * B*T*H*D * 4 bytes (x read, out written) / time; compare with the machine's
// streaming bandwidth (68 GB/s on both cores, seqmix-machine-limits).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/positional.hpp"
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
  const double bytes = 2.0 * static_cast<double>(s.B * s.T * s.H * s.D) * sizeof(float);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
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

const int kRegistered = (register_all(), 0);

}  // namespace
