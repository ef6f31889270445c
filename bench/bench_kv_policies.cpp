// KV-cache eviction policy benchmarks, 2 threads, llama3-8b heads (Hq = 32, Hkv = 8, D = 128).
//
//   kv/snapkv/Hq32_Hkv8_D128_N32768_W64          SnapKV selection over a 32768-entry prompt,
//                                                 window 64: window scores (GEMM + softmax),
//                                                 max-pool (kernel 5), top-k (budget 2048). Target <= 100 ms.
//   kv/observation_scores/Hq32_Hkv8_D128_N32768_W64   the score part alone
//   kv/snapkv/..._N2048_W64 and ..._reference     fast vs the plain-loop reference at a small N
//   kv/cacheblend_deviation/Hkv8_D128_N8192 and ..._reference   CacheBlend's KV deviation of
//                                                 8192 tokens (4 tensors read; GB/s counter)
//
// Counter GFLOP/s = 2 * W * N * Hq * D (the window-score product) / time. The machine is shared
// and noisy: run with --benchmark_repetitions=5 and read the min (or the _min aggregate).
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/cacheblend.hpp"
#include "seqmix/kv_cache/policies/eviction.hpp"
#include "seqmix/kv_cache/policies/scores_reference.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;
namespace kv = seqmix::kv;

struct Problem {
  index_t N, W, Hq, Hkv, D;
  Tensor<float, 4> q, k;
  kv::ObservationWorkspace workspace;
  Problem(index_t N_, index_t W_, const st::AttentionShape& s)
      : N(N_), W(W_), Hq(s.Hq), Hkv(s.Hkv), D(s.D), q({1, W, Hq, D}), k({1, N, Hkv, D}) {
    st::fill_normal(q.view(), 1);
    st::fill_normal(k.view(), 2);
  }
  kv::ObservationInputs inputs() const { return {q.cview(), k.cview(), {}}; }
  double flops() const { return 2.0 * static_cast<double>(W * N * Hq * D); }
};

Problem& problem(index_t N, index_t W) {
  static std::vector<std::unique_ptr<Problem>> cache;
  for (auto& p : cache)
    if (p->N == N && p->W == W) return *p;
  cache.push_back(std::make_unique<Problem>(N, W, st::attention_shapes().front()));
  return *cache.back();
}

void set_counters(benchmark::State& state, const Problem& p) {
  seqmix::testing::report_gflops(state, p.flops());
}

void snapkv(benchmark::State& state, index_t N, index_t W) {
  Problem& p = problem(N, W);
  const kv::Budget budget{std::min<index_t>(2048, N), 4, 0};
  kv::SnapKvOptions options;
  options.kernel = 5;
  for (auto _ : state) {
    auto kept = kv::snapkv(p.inputs(), budget, options, p.workspace, st::two_thread_pool());
    benchmark::DoNotOptimize(kept(0, 0).data());
  }
  set_counters(state, p);
}

void scores_only(benchmark::State& state, index_t N, index_t W) {
  Problem& p = problem(N, W);
  Tensor<float, 3> scores({1, p.Hkv, N});
  for (auto _ : state) {
    kv::observation_scores(p.inputs(), scores.view(), {}, p.workspace, st::two_thread_pool());
    benchmark::DoNotOptimize(scores.data());
  }
  set_counters(state, p);
}

void snapkv_reference(benchmark::State& state, index_t N, index_t W) {
  Problem& p = problem(N, W);
  Tensor<float, 3> scores({1, p.Hkv, N});
  const kv::Budget budget{std::min<index_t>(512, N), 4, 0};
  for (auto _ : state) {
    kv::reference::observation_scores(p.inputs(), scores.view());
    auto kept = kv::snapkv_from_scores(scores.cview(), W, budget);
    benchmark::DoNotOptimize(kept(0, 0).data());
  }
  set_counters(state, p);
}

// Cached and fresh K/V of N tokens, Hkv = 8, D = 128.
struct BlendProblem {
  index_t N;
  Tensor<float, 4> ck, cv, fk, fv;
  explicit BlendProblem(index_t n) : N(n), ck({1, n, 8, 128}), cv({1, n, 8, 128}), fk({1, n, 8, 128}), fv({1, n, 8, 128}) {
    st::fill_normal(ck.view(), 3), st::fill_normal(cv.view(), 4), st::fill_normal(fk.view(), 5), st::fill_normal(fv.view(), 6);
  }
  kv::CacheBlendInputs inputs() const { return {ck.cview(), cv.cview(), fk.cview(), fv.cview()}; }
};

void cacheblend_deviation(benchmark::State& state, index_t N, bool reference) {
  static BlendProblem p(N);
  Tensor<float, 2> deviation({1, N});
  for (auto _ : state) {
    if (reference)
      kv::reference::cacheblend_deviation(p.inputs(), deviation.view());
    else
      kv::cacheblend_deviation(p.inputs(), deviation.view(), st::two_thread_pool());
    benchmark::DoNotOptimize(deviation.data());
  }
  seqmix::testing::report_gbytes(state, 4.0 * static_cast<double>(N) * 8 * 128 * sizeof(float));
}

const bool kRegistered = [] {
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  add("kv/snapkv/Hq32_Hkv8_D128_N32768_W64", [](benchmark::State& s) { snapkv(s, 32768, 64); });
  add("kv/observation_scores/Hq32_Hkv8_D128_N32768_W64", [](benchmark::State& s) { scores_only(s, 32768, 64); });
  add("kv/snapkv/Hq32_Hkv8_D128_N2048_W64", [](benchmark::State& s) { snapkv(s, 2048, 64); });
  add("kv/snapkv/Hq32_Hkv8_D128_N2048_W64_reference", [](benchmark::State& s) { snapkv_reference(s, 2048, 64); });
  add("kv/cacheblend_deviation/Hkv8_D128_N8192", [](benchmark::State& s) { cacheblend_deviation(s, 8192, false); });
  add("kv/cacheblend_deviation/Hkv8_D128_N8192_reference", [](benchmark::State& s) { cacheblend_deviation(s, 8192, true); });
  return true;
}();

}  // namespace
