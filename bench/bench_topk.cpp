// topk_attention decode benchmarks, 2 threads, llama3-8b heads (Hq = 32, Hkv = 8, D = 128), fp16
// K/V at Tk = 131072, k = 2048: Quest block selection (scores from per-block key min / max,
// select_topk, gather + exact attention) against dense decode on the same cache (target: >= 8x
// faster). The block summaries are maintained with the cache (one block update per new block
// of keys), so they are built once outside the timed loop.
//
// Counters:
//   GB/s    = bytes read / time: dense reads K and V once, B * Tk * Hkv * (Dk + Dv) * 2 bytes;
//             top-k reads the summaries, Nb * Hkv * 2 * Dk * 4 bytes, plus the gathered rows,
//             Hs * capacity * (Dk + Dv) * 2 bytes. Compare with the 68 GB/s streaming bandwidth.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/topk/fast.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/half.hpp"
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

using KV = seqmix::f16;

// One decode problem with its Quest summaries, shared by the benchmarks of one Tk.
struct Problem {
  index_t Tk, Hq, Hkv, D, block;
  Tensor<float, 4> q, o;
  Tensor<KV, 4> k, v;
  Tensor<float, 4> lo, hi;
  Problem(index_t Tk_, const st::AttentionShape& s, index_t block_)
      : Tk(Tk_), Hq(s.Hq), Hkv(s.Hkv), D(s.D), block(block_),
        q(st::random_tensor<4>({1, 1, Hq, D}, 1)), o({1, 1, Hq, D}),
        k({1, Tk, Hkv, D}), v({1, Tk, Hkv, D}),
        lo({1, (Tk + block - 1) / block, Hkv, D}), hi({1, (Tk + block - 1) / block, Hkv, D}) {
    st::fill_with(k.view(), 2, [](std::mt19937_64& e) { return KV(std::normal_distribution<float>(0.f, 1.f)(e)); });
    st::fill_with(v.view(), 3, [](std::mt19937_64& e) { return KV(std::normal_distribution<float>(0.f, 1.f)(e)); });
    seqmix::block_key_summaries(k.cview(), block, {}, lo.view(), hi.view(), pool());
  }
};

Problem& problem(index_t Tk, index_t block) {
  static std::vector<std::unique_ptr<Problem>> cache;
  for (auto& p : cache)
    if (p->Tk == Tk && p->block == block) return *p;
  cache.push_back(std::make_unique<Problem>(Tk, st::attention_shapes().front(), block));
  return *cache.back();
}

void dense_decode(benchmark::State& state, index_t Tk) {
  Problem& p = problem(Tk, 16);
  seqmix::AttentionInputs<KV> in;
  in.q = p.q.cview(), in.k = p.k.cview(), in.v = p.v.cview();
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    seqmix::attention(in, {p.o.view(), {}}, options, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const double bytes = static_cast<double>(Tk * p.Hkv * 2 * p.D) * sizeof(KV);
  seqmix::testing::report_gbytes(state, bytes);
}

// Quest selection with Hs selection heads (Hkv: one per KV group; Hq: per head), then attention.
void quest_decode(benchmark::State& state, index_t Tk, index_t block, index_t Hs) {
  Problem& p = problem(Tk, block);
  seqmix::TopkOptions options;
  options.k = 2048, options.block = block, options.sink_tokens = 4, options.recent = 64;
  const index_t Nb = (Tk + block - 1) / block, capacity = seqmix::topk_capacity(options);
  Tensor<float, 4> scores({1, 1, Hs, Nb});
  Tensor<std::int32_t, 4> indices({1, 1, Hs, capacity});
  seqmix::TopkAttentionInputs<KV> in;
  in.q = p.q.cview(), in.k = p.k.cview(), in.v = p.v.cview(), in.indices = indices.cview();
  for (auto _ : state) {
    seqmix::topk_scores_quest(p.q.cview(), p.lo.cview(), p.hi.cview(), scores.view(), pool());
    seqmix::select_topk(scores.cview(), Tk, indices.view(), options, {}, pool());
    seqmix::topk_attention(in, {p.o.view(), {}}, {}, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const double bytes = static_cast<double>(Nb * p.Hkv * 2 * p.D) * 4 + static_cast<double>(Hs * capacity * 2 * p.D) * sizeof(KV);
  seqmix::testing::report_gbytes(state, bytes);
}

// The reference on a small cache, for scale.
void small_decode(benchmark::State& state, bool reference) {
  Problem& p = problem(4096, 16);
  seqmix::TopkOptions options;
  options.k = 256, options.block = 16;
  Tensor<float, 4> scores({1, 1, p.Hkv, 4096 / 16});
  Tensor<std::int32_t, 4> indices({1, 1, p.Hkv, seqmix::topk_capacity(options)});
  seqmix::topk_scores_quest(p.q.cview(), p.lo.cview(), p.hi.cview(), scores.view());
  seqmix::select_topk(scores.cview(), 4096, indices.view(), options);
  seqmix::TopkAttentionInputs<KV> in;
  in.q = p.q.cview(), in.k = p.k.cview(), in.v = p.v.cview(), in.indices = indices.cview();
  for (auto _ : state) {
    if (reference)
      seqmix::reference::topk_attention(in, {p.o.view(), {}});
    else
      seqmix::topk_attention(in, {p.o.view(), {}}, {}, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
}

const bool kRegistered = [] {
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  const std::string shape = st::attention_shapes().front().name;
  const index_t Tk = 131072;
  add("attention/decode/" + shape + "_Tk131072_f16", [Tk](benchmark::State& s) { dense_decode(s, Tk); });
  for (const index_t block : {16, 32, 64})
    add("topk_attention/decode/" + shape + "_Tk131072_k2048_quest-b" + std::to_string(block) + "-per-group_f16",
        [Tk, block](benchmark::State& s) { quest_decode(s, Tk, block, 8); });
  add("topk_attention/decode/" + shape + "_Tk131072_k2048_quest-b16-per-head_f16",
      [Tk](benchmark::State& s) { quest_decode(s, Tk, 16, 32); });
  add("topk_attention/decode/" + shape + "_Tk4096_k256_attention-only_f16",
      [](benchmark::State& s) { small_decode(s, false); });
  add("topk_attention/decode/" + shape + "_Tk4096_k256_attention-only_f16_reference",
      [](benchmark::State& s) { small_decode(s, true); });
  return true;
}();

}  // namespace
