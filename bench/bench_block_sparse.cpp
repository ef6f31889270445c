// Block-sparse attention benchmarks, 2 threads: a causal local + global layout that selects
// about 10% of the causal (lower-triangular) blocks, against dense causal attention on the same
// problem (target: >= 6x faster at T = 32768), and the reference on a small shape.
//
// Shape: H = 8 query and KV heads, D = 128 (fewer heads than a full model keeps the dense
// baseline at a few seconds per call; both forms scale linearly in H).
// Counters:
//   GFLOP/s = 2 * H * (Dk + Dv) * visible_pairs / time, visible_pairs the (query, key) pairs
//             inside selected blocks that the causal rule lets through (dense: T * (T + 1) / 2).
//   blocks% = selected blocks / causal blocks of the grid, in percent.
#include <benchmark/benchmark.h>

#include <string>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const seqmix::ThreadPool& pool() {
  static const seqmix::ThreadPool instance(2);
  return instance;
}

constexpr index_t kHeads = 8, kDim = 128, kBlock = 64;

struct Problem {
  Tensor<float, 4> q, k, v, o;
  explicit Problem(index_t T)
      : q(st::random_tensor<4>({1, T, kHeads, kDim}, 1)),
        k(st::random_tensor<4>({1, T, kHeads, kDim}, 2)),
        v(st::random_tensor<4>({1, T, kHeads, kDim}, 3)),
        o({1, T, kHeads, kDim}) {}
  seqmix::AttentionInputs<float> inputs() const {
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    return in;
  }
};

// Local window + 2 global blocks, the window sized so that ~10% of the causal blocks are kept.
seqmix::BlockPattern ten_percent_pattern(index_t T) {
  const index_t blocks = T / kBlock, causal_blocks = blocks * (blocks + 1) / 2;
  const index_t per_row = std::max<index_t>(causal_blocks / 10 / blocks, 3);
  return seqmix::local_global_pattern({T, T, kBlock, kBlock}, {per_row - 3, 2, 0, 0, true});
}

// (query, key) pairs of the pattern that causal attention computes.
double visible_pairs(const seqmix::BlockPattern& p) {
  double pairs = 0;
  const index_t T = p.grid.Tq;
  for (index_t qb = 0; qb < p.grid.query_blocks(); ++qb)
    for (index_t e = p.offsets[qb]; e < p.offsets[qb + 1]; ++e)
      for (index_t i = qb * kBlock; i < std::min(T, (qb + 1) * kBlock); ++i) {
        const index_t j0 = p.indices[e] * kBlock, j1 = std::min(T, j0 + kBlock);
        pairs += static_cast<double>(std::clamp<index_t>(i + 1 - j0, 0, j1 - j0));
      }
  return pairs;
}

enum class Form { fast, reference, dense };

void prefill(benchmark::State& state, index_t T, Form form) {
  Problem p(T);
  const seqmix::BlockPattern pattern = ten_percent_pattern(T);
  seqmix::AttentionOptions options;
  options.causal = true;
  const seqmix::AttentionOutputs out{p.o.view(), {}};
  for (auto _ : state) {
    if (form == Form::fast)
      seqmix::block_sparse_attention(p.inputs(), pattern.layout(), out, options, pool());
    else if (form == Form::reference)
      seqmix::reference::block_sparse_attention(p.inputs(), pattern.layout(), out, options);
    else
      seqmix::attention(p.inputs(), out, options, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const double pairs = form == Form::dense ? 0.5 * static_cast<double>(T) * static_cast<double>(T + 1) : visible_pairs(pattern);
  seqmix::testing::report_gflops(state, 2.0 * kHeads * 2 * kDim * pairs);
  const double blocks = static_cast<double>(pattern.grid.query_blocks());
  state.counters["blocks%"] = form == Form::dense ? 100.0 : 100.0 * static_cast<double>(pattern.indices.size()) / (blocks * (blocks + 1) / 2);
}

const bool kRegistered = [] {
  const auto add = [](const std::string& name, index_t T, Form form) {
    benchmark::RegisterBenchmark(name.c_str(), [T, form](benchmark::State& s) { prefill(s, T, form); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  for (const index_t T : {8192, 32768}) {
    const std::string shape = "h8-d128_T" + std::to_string(T);
    add("block_sparse/prefill/" + shape + "_local-global-10pct", T, Form::fast);
    add("attention/prefill/" + shape + "_causal", T, Form::dense);  // the dense baseline
  }
  add("block_sparse/prefill/h8-d128_T1024_local-global-10pct", 1024, Form::fast);
  add("block_sparse/prefill/h8-d128_T1024_local-global-10pct_reference", 1024, Form::reference);
  return true;
}();

}  // namespace
