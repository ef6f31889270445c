// A decoder loop over a long stream with a 16-bit KV cache, comparing three ways to attend at
// every step against full dense attention:
//   window + sinks  StreamingLLM: the last W keys and the first 4 (seqmix::attention options)
//   top-k (Quest)   per-block key min / max kept beside the cache, block scores, select_topk
//                   (sinks + recent window + best blocks), exact attention over the selection
//   top-k (exact)   the same selection from exact q.k scores (reads every key: the quality
//                   bound of top-k, not a speed-up)
// It prints, every 1024 steps, the average time per step of each form and the relative output
// error ||o - o_dense|| / ||o_dense||. The stream is synthetic: keys drift slowly (an AR(1)
// process, so neighbouring keys are alike, as in real caches, which is what keeps Quest's block
// bounds tight), and each query looks up two earlier keys plus noise, so attention is peaked like
// a retrieval head's. The window misses the looked-up keys once they fall out of it; top-k
// finds them.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/topk/fast.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using Clock = std::chrono::steady_clock;

constexpr index_t kSteps = 6144, kHq = 8, kHkv = 2, kD = 64;
constexpr index_t kWindow = 512, kSinks = 4;
constexpr index_t kBlock = 16, kTopk = 256, kRecent = 64;
constexpr index_t kReport = 1024;

double relative_error(const Tensor<float, 4>& o, const Tensor<float, 4>& ref) {
  double diff = 0, norm = 0;
  for (index_t n = 0; n < o.numel(); ++n) {
    diff += (o.data()[n] - ref.data()[n]) * static_cast<double>(o.data()[n] - ref.data()[n]);
    norm += ref.data()[n] * static_cast<double>(ref.data()[n]);
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

struct Timer {
  double total = 0;
  template <class F>
  void run(F&& f) {
    const auto start = Clock::now();
    f();
    total += std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  }
};

}  // namespace

int main() {
  seqmix::ThreadPool pool(2);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);

  // The cache: K/V as fp16, filled one token per step; Quest's per-block bounds beside it.
  Tensor<seqmix::f16, 4> k({1, kSteps, kHkv, kD}), v({1, kSteps, kHkv, kD});
  const index_t blocks = (kSteps + kBlock - 1) / kBlock;
  Tensor<float, 4> lo({1, blocks, kHkv, kD}), hi({1, blocks, kHkv, kD});
  Tensor<float, 4> q({1, 1, kHq, kD});
  Tensor<float, 4> o_dense({1, 1, kHq, kD}), o_window({1, 1, kHq, kD}), o_topk({1, 1, kHq, kD});
  seqmix::TopkOptions select;
  select.k = kTopk, select.block = kBlock, select.sink_tokens = kSinks, select.recent = kRecent;
  Tensor<float, 4> scores({1, 1, kHkv, blocks});
  Tensor<std::int32_t, 4> indices({1, 1, kHkv, seqmix::topk_capacity(select)});

  std::printf("streaming attention: %ld steps, Hq=%ld Hkv=%ld D=%ld, fp16 KV cache, simd %s\n",
              static_cast<long>(kSteps), static_cast<long>(kHq), static_cast<long>(kHkv), static_cast<long>(kD),
              seqmix::simd::arch_name());
  std::printf("%8s | %9s | %9s %10s | %9s %10s | %9s %10s\n", "step", "dense us", "window us", "window err",
              "quest us", "quest err", "exact us", "exact err");
  Timer dense_time, window_time, topk_time, exact_time;
  double window_error = 0, topk_error = 0, exact_error = 0;
  Tensor<float, 4> o_exact({1, 1, kHq, kD});
  Tensor<float, 4> key_scores({1, 1, kHkv, kSteps});
  seqmix::TopkOptions select_keys = select;
  select_keys.block = 1;
  std::vector<float> drift(static_cast<std::size_t>(kHkv * kD), 0.f);
  for (index_t t = 0; t < kSteps; ++t) {
    // New token: a drifting key (unit variance), a random value; each query head looks up two
    // earlier keys of its KV head.
    for (index_t h = 0; h < kHkv; ++h)
      for (index_t d = 0; d < kD; ++d) {
        float& x = drift[static_cast<std::size_t>(h * kD + d)];
        x = 0.95f * x + 0.31f * normal(rng);
        k(0, t, h, d) = seqmix::f16(x);
        v(0, t, h, d) = seqmix::f16(normal(rng));
      }
    for (index_t h = 0; h < kHq; ++h) {
      std::uniform_int_distribution<index_t> earlier(0, t);
      const index_t a = earlier(rng), b = earlier(rng), hk = h / (kHq / kHkv);
      for (index_t d = 0; d < kD; ++d)
        q(0, 0, h, d) = 0.3f * normal(rng) + 1.5f * (k(0, a, hk, d).to_float() + k(0, b, hk, d).to_float());
    }
    // A block of keys is complete: its bounds join the summaries (the cache's one-time cost).
    if ((t + 1) % kBlock == 0) {
      const index_t nb = t / kBlock;
      seqmix::block_key_summaries(k.cview().slice(1, nb * kBlock, kBlock), kBlock, {}, lo.view().slice(1, nb, 1),
                                  hi.view().slice(1, nb, 1));
    }
    const index_t Tk = t + 1;
    seqmix::AttentionInputs<seqmix::f16> in;
    in.q = q.cview(), in.k = k.cview().slice(1, 0, Tk), in.v = v.cview().slice(1, 0, Tk);

    seqmix::AttentionOptions causal;
    causal.causal = true;
    dense_time.run([&] { seqmix::attention(in, {o_dense.view(), {}}, causal, pool); });

    seqmix::AttentionOptions window = causal;
    window.window = kWindow, window.sink_tokens = kSinks;
    window_time.run([&] { seqmix::attention(in, {o_window.view(), {}}, window, pool); });

    topk_time.run([&] {
      // Scores of the complete blocks; the block being filled is inside the recent window.
      const index_t complete = Tk / kBlock, N = (Tk + kBlock - 1) / kBlock;
      const auto block_scores = scores.view().slice(3, 0, N);
      seqmix::topk_scores_quest(q.cview(), lo.cview().slice(1, 0, complete), hi.cview().slice(1, 0, complete),
                                block_scores.slice(3, 0, complete), pool);
      if (N > complete)
        for (index_t s = 0; s < kHkv; ++s) block_scores(0, 0, s, complete) = -INFINITY;
      seqmix::select_topk(block_scores.as_const(), Tk, indices.view(), select, {}, pool);
      seqmix::TopkAttentionInputs<seqmix::f16> sparse;
      sparse.q = in.q, sparse.k = in.k, sparse.v = in.v, sparse.indices = indices.cview();
      seqmix::topk_attention(sparse, {o_topk.view(), {}}, {}, pool);
    });
    exact_time.run([&] {
      const auto scores_now = key_scores.view().slice(3, 0, Tk);
      seqmix::topk_scores_exact(q.cview(), in.k, scores_now, pool);
      seqmix::select_topk(scores_now.as_const(), Tk, indices.view().slice(3, 0, seqmix::topk_capacity(select_keys)),
                          select_keys, {}, pool);
      seqmix::TopkAttentionInputs<seqmix::f16> sparse;
      sparse.q = in.q, sparse.k = in.k, sparse.v = in.v;
      sparse.indices = indices.cview().slice(3, 0, seqmix::topk_capacity(select_keys));
      seqmix::topk_attention(sparse, {o_exact.view(), {}}, {}, pool);
    });
    window_error += relative_error(o_window, o_dense);
    topk_error += relative_error(o_topk, o_dense);
    exact_error += relative_error(o_exact, o_dense);

    if ((t + 1) % kReport == 0) {
      std::printf("%8ld | %9.1f | %9.1f %10.4f | %9.1f %10.4f | %9.1f %10.4f\n", static_cast<long>(t + 1),
                  dense_time.total / kReport, window_time.total / kReport, window_error / kReport,
                  topk_time.total / kReport, topk_error / kReport, exact_time.total / kReport, exact_error / kReport);
      dense_time = window_time = topk_time = exact_time = Timer{};
      window_error = topk_error = exact_error = 0;
    }
  }
  std::printf("(times: average microseconds per step over the last %ld steps; errors: average relative error)\n",
              static_cast<long>(kReport));
  return 0;
}
