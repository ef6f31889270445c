// KV-cache eviction policies (SPEC section 6): the types every policy shares.
//
// A policy looks at one layer's cache, per batch row b and KV head h, as N entries indexed
// 0..N-1 (the order in which the cache holds them, oldest first), and returns the indices of the
// entries to keep. The caller (the cache) keeps those entries with their original positions, so
// a policy never renumbers positions. Policies work on plain fp32 tensors of scores, keys and
// values and do not depend on the cache's storage.
//
//   Budget    how many entries a head keeps, and which ones are kept whatever their score (the
//             first `sink_tokens` entries and the last `recent` entries).
//   KeptSet   the result: per (b, h) the kept indices, strictly increasing.
//   select_by_score   the selection step shared by the score-based policies: protected entries
//             plus the best-scoring others, O(N) with std::nth_element (no full sort).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

/// \namespace seqmix::kv
/// KV-cache eviction, selection and merging policies, and budgets across heads and layers
/// (docs/operators.md section 6). A policy reads one layer's cache as N entries per (batch row,
/// KV head), oldest first, and returns the indices to keep (KeptSet) without renumbering
/// positions; KvCache::retain applies them.
namespace seqmix::kv {

/// Entries kept per (batch row, KV head).
struct Budget {
  /// Total entries a head keeps, protected ones included. A head with N <= capacity keeps all N.
  index_t capacity = 0;
  /// The first `sink_tokens` entries are always kept (StreamingLLM's attention sinks).
  index_t sink_tokens = 0;
  /// The last `recent` entries are always kept (the local window; SnapKV's observation window).
  index_t recent = 0;
};

/// Which end of the score scale a policy keeps.
enum class Keep {
  Highest,  ///< the largest scores (attention mass, projections)
  Lowest,   ///< the smallest scores (key norms)
};

/// The kept entries of every (batch row, KV head), each list strictly increasing.
class KeptSet {
 public:
  KeptSet() = default;
  /// Empty lists for `batch` x `heads` heads choosing among `entries` entries.
  KeptSet(index_t batch, index_t heads, index_t entries)
      : batch_(batch), heads_(heads), entries_(entries), rows_(static_cast<std::size_t>(batch * heads)) {}

  /// Batch rows B.
  index_t batch() const noexcept { return batch_; }
  /// KV heads H.
  index_t heads() const noexcept { return heads_; }
  /// N: the number of entries the policy chose from (kept indices are < N).
  index_t entries() const noexcept { return entries_; }

  /// The kept indices of (b, h).
  ///@{
  std::vector<index_t>& operator()(index_t b, index_t h) { return rows_[static_cast<std::size_t>(b * heads_ + h)]; }
  const std::vector<index_t>& operator()(index_t b, index_t h) const {
    return rows_[static_cast<std::size_t>(b * heads_ + h)];
  }

  ///@}
  /// The largest kept count over all heads (the capacity a compacted cache needs).
  index_t max_kept() const noexcept {
    std::size_t m = 0;
    for (const auto& r : rows_) m = std::max(m, r.size());
    return static_cast<index_t>(m);
  }

 private:
  index_t batch_ = 0, heads_ = 0, entries_ = 0;
  std::vector<std::vector<index_t>> rows_;  ///< [b * heads + h]
};

namespace detail {

// The budget is usable: capacity holds at least the protected entries. Checked even when a
// head has fewer entries than the capacity, so a misconfigured policy fails on the first call.
inline void check_budget(const ArgCheck& check, const Budget& budget) {
  if (budget.sink_tokens < 0 || budget.recent < 0 || budget.capacity < 0)
    check.fail("budget", "must have non-negative fields, got capacity = " + std::to_string(budget.capacity) +
                             ", sink_tokens = " + std::to_string(budget.sink_tokens) +
                             ", recent = " + std::to_string(budget.recent));
  if (budget.capacity < budget.sink_tokens + budget.recent)
    check.fail("budget", "capacity = " + std::to_string(budget.capacity) + " is below sink_tokens + recent = " +
                             std::to_string(budget.sink_tokens) + " + " + std::to_string(budget.recent) + " = " +
                             std::to_string(budget.sink_tokens + budget.recent));
}

// Ranking key: larger is better. NaN ranks below everything, so it is never preferred.
inline float rank_key(float score, Keep keep) noexcept {
  if (std::isnan(score)) return -std::numeric_limits<float>::infinity();
  return keep == Keep::Highest ? score : -score;
}

// Appends to `kept` the `count` best entries of candidates [first, last) under `better` (a strict
// total order: better(a, b) when a ranks before b), in no particular order. O(last - first).
template <class Better>
void append_best_by(index_t first, index_t last, index_t count, Better&& better, std::vector<index_t>& kept,
                    std::vector<index_t>& scratch) {
  count = std::min(count, last - first);
  if (count <= 0) return;
  scratch.resize(static_cast<std::size_t>(last - first));
  std::iota(scratch.begin(), scratch.end(), first);
  if (count < last - first) std::nth_element(scratch.begin(), scratch.begin() + count, scratch.end(), better);
  kept.insert(kept.end(), scratch.begin(), scratch.begin() + count);
}

// One head's kept set: sinks [0, s), the window [N - r, N), and the best `capacity - s - r` of
// the entries in between under `better` (see append_best_by). Returned sorted.
template <class Better>
std::vector<index_t> select_head_by(index_t N, const Budget& budget, Better&& better, std::vector<index_t>& scratch) {
  std::vector<index_t> kept;
  if (N <= budget.capacity) {
    kept.resize(static_cast<std::size_t>(N));
    std::iota(kept.begin(), kept.end(), index_t{0});
    return kept;
  }
  kept.reserve(static_cast<std::size_t>(budget.capacity));
  const index_t sinks = std::min(budget.sink_tokens, N);
  const index_t window_start = std::max(sinks, N - budget.recent);
  for (index_t j = 0; j < sinks; ++j) kept.push_back(j);
  append_best_by(sinks, window_start, budget.capacity - sinks - (N - window_start), better, kept, scratch);
  for (index_t j = window_start; j < N; ++j) kept.push_back(j);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// select_head_by ranking by rank_key(score(j), keep), ties to the older (lower) index.
template <class Score>
std::vector<index_t> select_head(index_t N, const Budget& budget, Keep keep, Score&& score,
                                 std::vector<index_t>& scratch) {
  const auto better = [&](index_t a, index_t b) {
    const float ka = rank_key(score(a), keep), kb = rank_key(score(b), keep);
    return ka > kb || (ka == kb && a < b);
  };
  return select_head_by(N, budget, better, scratch);
}

}  // namespace detail

/// The kept set of a score-based policy: per (b, h), the protected entries plus the best
/// `capacity - sink_tokens - recent` others by scores[b, h, :] (Keep::Highest or Lowest; ties to
/// the older entry; NaN scores rank last). scores [B, H, N], any strides.
inline KeptSet select_by_score(const ConstView<float, 3>& scores, const Budget& budget, Keep keep,
                               const Executor& executor = serial_executor(), const char* op = "kv::select_by_score") {
  const ArgCheck check(op);
  check.shape("scores", scores, {-1, -1, -1}, "B,H,N");
  detail::check_budget(check, budget);
  const index_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  KeptSet kept(B, H, N);
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    std::vector<index_t> scratch;
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      const float* row = scores.ptr(b, h);
      const index_t stride = scores.stride(2);
      kept(b, h) = detail::select_head(N, budget, keep, [&](index_t j) { return row[j * stride]; }, scratch);
    }
  });
  return kept;
}

}  // namespace seqmix::kv
