// Score-based eviction policies. Each maps per-(batch row, KV head) scores to a KeptSet under a
// Budget: the protected entries (first budget.sink_tokens, last budget.recent) plus the best
// others up to budget.capacity; a head with N <= capacity keeps everything. Definitions and
// sources in README.md.
//
//   streaming_llm  sinks + the most recent entries (no scores)
//   h2o            highest accumulated attention (observation_scores over the observed queries)
//   tova           highest attention of the current query (observation_scores with W = 1)
//   snapkv         window queries' attention on the prefix, pooled along entries, top-k; the
//                  window (the last W entries) always kept
//   key_norm       lowest L2 norm of the key
//   qfilters       highest projection <k, direction_h> on a per-head direction
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"
#include "seqmix/kv_cache/policies/scores.hpp"

namespace seqmix::kv {

/// StreamingLLM: the first sink_tokens entries and the most recent capacity - sink_tokens.
/// (budget.recent only adds to the check; all non-sink slots go to the most recent entries.)
inline KeptSet streaming_llm(index_t batch, index_t heads, index_t entries, const Budget& budget) {
  const ArgCheck check("kv::streaming_llm");
  check.that(batch >= 0 && heads >= 0 && entries >= 0, "entries",
             "batch, heads and entries must be >= 0, got " + std::to_string(batch) + ", " + std::to_string(heads) +
                 ", " + std::to_string(entries));
  detail::check_budget(check, budget);
  KeptSet kept(batch, heads, entries);
  const index_t sinks = std::min(budget.sink_tokens, entries);
  const index_t window_start = std::max(sinks, entries - (budget.capacity - budget.sink_tokens));
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < heads; ++h) {
      auto& row = kept(b, h);
      for (index_t j = 0; j < sinks; ++j) row.push_back(j);
      for (index_t j = window_start; j < entries; ++j) row.push_back(j);
    }
  return kept;
}

/// H2O (heavy hitters + recent): `accumulated` [B, H, N] is the attention each entry has received,
/// summed over the queries seen so far (observation_scores at prefill, plus each decode step's
/// probabilities). Keeps the recent window and the heaviest hitters.
inline KeptSet h2o(const ConstView<float, 3>& accumulated, const Budget& budget,
                   const Executor& executor = serial_executor()) {
  return select_by_score(accumulated, budget, Keep::Highest, executor, "kv::h2o");
}

/// TOVA: `current` [B, H, N] is the attention of the current query (observation_scores with the
/// last query only, Visibility::All). Keeping the top `capacity` by it is what TOVA's streaming
/// rule does one token at a time (when the cache exceeds the budget by one, drop the entry the
/// current query attends to least). The paper averages over heads of a layer; pass the same
/// score row to every head for that variant.
inline KeptSet tova(const ConstView<float, 3>& current, const Budget& budget,
                    const Executor& executor = serial_executor()) {
  return select_by_score(current, budget, Keep::Highest, executor, "kv::tova");
}

/// L2 norm of every key: norms[b, h, j] = ||keys[b, j, h, :]||. keys [B, N, H, D], norms [B, H, N].
inline void key_norms(const ConstView<float, 4>& keys, const TensorView<float, 3>& norms) {
  const ArgCheck check("kv::key_norms");
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,H,D");
  const index_t B = keys.size(0), N = keys.size(1), H = keys.size(2), D = keys.size(3);
  check.shape("norms", norms, {B, H, N}, "B,H,N");
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < N; ++j)
      for (index_t h = 0; h < H; ++h) {
        float s = 0.f;
        if (keys.stride(3) == 1) {
          s = simd::dot(keys.ptr(b, j, h), keys.ptr(b, j, h), D);
        } else {
          for (index_t c = 0; c < D; ++c) s += keys(b, j, h, c) * keys(b, j, h, c);
        }
        norms(b, h, j) = std::sqrt(s);
      }
}

/// Key-norm eviction: keeps the keys with the lowest L2 norm (low-norm keys draw high attention).
inline KeptSet key_norm(const ConstView<float, 4>& keys, const Budget& budget,
                        const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::key_norm");
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,H,D");
  detail::check_budget(check, budget);
  Tensor<float, 3> norms({keys.size(0), keys.size(2), keys.size(1)});
  key_norms(keys, norms.view());
  return select_by_score(norms.cview(), budget, Keep::Lowest, executor, "kv::key_norm");
}

/// Q-Filters projection: keeps the keys with the highest <k, directions[h]>. The direction of a
/// head is the principal direction of its queries, signed so that E[<q, u>] > 0; then
/// q.k ~ E[<q,u>] <k,u> and a high projection predicts high attention.
/// keys [B, N, H, D], directions [H, D].
inline KeptSet qfilters(const ConstView<float, 4>& keys, const ConstView<float, 2>& directions, const Budget& budget,
                        const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::qfilters");
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,H,D");
  const index_t B = keys.size(0), N = keys.size(1), H = keys.size(2), D = keys.size(3);
  check.shape("directions", directions, {H, D}, "H,D");
  detail::check_budget(check, budget);
  Tensor<float, 3> projections({B, H, N});
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < N; ++j)
      for (index_t h = 0; h < H; ++h) {
        float s = 0.f;
        for (index_t c = 0; c < D; ++c) s += keys(b, j, h, c) * directions(h, c);
        projections(b, h, j) = s;
      }
  return select_by_score(projections.cview(), budget, Keep::Highest, executor, "kv::qfilters");
}

/// How SnapKV pools the window's scores along entries. Entry j pools the kernel-wide window
/// [j - kernel/2, j - kernel/2 + kernel) (centred for odd kernels, one more entry on the left
/// for even ones); the variants differ only where that window crosses an end of the prefix.
enum class Pooling {
  Max,          ///< SnapKV's default: a key next to a strong key is kept with it (keeps local context)
  Mean,         ///< avg_pool1d with zero padding kernel/2: the in-range sum over `kernel`, also at the ends
  MeanInRange,  ///< the in-range sum over the number of in-range entries (seqmix's Mean before issue 22)
};

/// out[j] = pool of in[j - kernel/2 .. j - kernel/2 + kernel - 1], n outputs ('same' size).
/// Max and MeanInRange clip the window to [0, n); Mean counts the entries outside as zeros, the
/// reference SnapKV / kvpress convention (avg_pool1d with padding kernel/2 and its default
/// count_include_pad; for even kernels PyTorch returns n + 1 values, these are its first n).
/// kernel 1 copies. O(n * kernel).
inline void pool_scores(const float* in, float* out, index_t n, index_t kernel, Pooling pooling) {
  const index_t half = kernel / 2;
  for (index_t j = 0; j < n; ++j) {
    const index_t lo = std::max<index_t>(0, j - half), hi = std::min(n, j - half + kernel);
    if (pooling == Pooling::Max) {
      float acc = in[lo];
      for (index_t i = lo + 1; i < hi; ++i) acc = std::max(acc, in[i]);
      out[j] = acc;
      continue;
    }
    float acc = 0.f;
    for (index_t i = lo; i < hi; ++i) acc += in[i];
    out[j] = acc / static_cast<float>(pooling == Pooling::Mean ? kernel : hi - lo);
  }
}

/// Options of snapkv and snapkv_from_scores.
struct SnapKvOptions {
  /// Pooling kernel along entries (>= 1; 1 = no pooling). SnapKV uses 5 or 7; an even kernel
  /// leans one entry to the left (see Pooling).
  index_t kernel = 5;
  /// Max (SnapKV's default), Mean (zero-padded avg_pool1d, the reference) or MeanInRange.
  Pooling pooling = Pooling::Max;
  /// How the window's attention is computed (scale, causal window, sum or mean over GQA group).
  ObservationOptions scores;
};

/// SnapKV from precomputed window scores [B, H, N] (observation_scores of the last `window`
/// queries): the prefix scores [0, N - window) are pooled, and the best of them kept besides
/// the window and the sinks. The window counts in the budget: budget.recent is raised to
/// `window`, so capacity must be >= sink_tokens + max(recent, window).
inline KeptSet snapkv_from_scores(const ConstView<float, 3>& scores, index_t window, const Budget& budget,
                                  const SnapKvOptions& options = {}, const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::snapkv");
  check.shape("scores", scores, {-1, -1, -1}, "B,H,N");
  check.that(window >= 0, "window", "must be >= 0, got " + std::to_string(window));
  check.that(options.kernel >= 1, "kernel", "must be >= 1, got " + std::to_string(options.kernel));
  Budget effective = budget;
  effective.recent = std::max(budget.recent, window);
  if (budget.capacity < budget.sink_tokens + effective.recent)
    check.fail("budget", "capacity = " + std::to_string(budget.capacity) +
                             " is below sink_tokens + window = " + std::to_string(budget.sink_tokens) + " + " +
                             std::to_string(effective.recent) + " = " +
                             std::to_string(budget.sink_tokens + effective.recent));
  detail::check_budget(check, effective);
  const index_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  KeptSet kept(B, H, N);
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    std::vector<float> row, pooled;
    std::vector<index_t> scratch;
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      // Only the prefix is pooled: the window is kept anyway, and its (large, self-attention)
      // scores must not spill onto the last prefix entries.
      const index_t prefix = std::max<index_t>(0, N - effective.recent);
      row.resize(static_cast<std::size_t>(prefix));
      pooled.resize(static_cast<std::size_t>(prefix));
      for (index_t j = 0; j < prefix; ++j) row[static_cast<std::size_t>(j)] = scores(b, h, j);
      pool_scores(row.data(), pooled.data(), prefix, options.kernel, options.pooling);
      // Max-pooling gives a peak's neighbours the peak's score; among equal pooled scores the
      // higher raw score goes first (then the older entry), so when the budget cannot hold every
      // pooled neighbourhood the peaks themselves are kept before their neighbours. Two exact
      // keys, no epsilon blend: the order among different pooled scores is unchanged.
      const auto better = [&](index_t x, index_t y) {
        const std::size_t i = static_cast<std::size_t>(x), k = static_cast<std::size_t>(y);
        const float px = detail::rank_key(pooled[i], Keep::Highest), py = detail::rank_key(pooled[k], Keep::Highest);
        if (px != py) return px > py;
        const float rx = detail::rank_key(row[i], Keep::Highest), ry = detail::rank_key(row[k], Keep::Highest);
        return rx > ry || (rx == ry && x < y);
      };
      kept(b, h) = detail::select_head_by(N, effective, better, scratch);
    }
  });
  return kept;
}

/// SnapKV end to end: window scores of q_obs (the last W tokens' queries, W = q_obs.size(1)) on
/// the keys, then snapkv_from_scores with window W.
inline KeptSet snapkv(const ObservationInputs& in, const Budget& budget, const SnapKvOptions& options,
                      ObservationWorkspace& workspace, const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::snapkv");
  const auto d = detail::validate_observation(check, in, options.scores);
  // Validate the budget before the expensive part.
  check.that(options.kernel >= 1, "kernel", "must be >= 1, got " + std::to_string(options.kernel));
  if (budget.capacity < budget.sink_tokens + std::max(budget.recent, d.W))
    check.fail("budget", "capacity = " + std::to_string(budget.capacity) +
                             " is below sink_tokens + window = " + std::to_string(budget.sink_tokens) + " + " +
                             std::to_string(std::max(budget.recent, d.W)) + " = " +
                             std::to_string(budget.sink_tokens + std::max(budget.recent, d.W)));
  Tensor<float, 3> scores({d.B, d.Hkv, d.N});
  observation_scores(in, scores.view(), options.scores, workspace, executor);
  return snapkv_from_scores(scores.cview(), d.W, budget, options, executor);
}

/// snapkv with a workspace of its own (allocates per call).
inline KeptSet snapkv(const ObservationInputs& in, const Budget& budget, const SnapKvOptions& options = {},
                      const Executor& executor = serial_executor()) {
  ObservationWorkspace workspace;
  return snapkv(in, budget, options, workspace, executor);
}

}  // namespace seqmix::kv
