// Head-type policies: a head's kept set depends on what kind of head it is.
//
//   retrieval_heads      DuoAttention / RazorAttention: retrieval heads keep every entry, the
//                        others (streaming heads) keep budget.sink_tokens + budget.recent
//   razor_compensation   RazorAttention's compensation token per streaming head: the mean of the
//                        evicted keys and the mean of the evicted values, as one extra fp32 row
//   fastgen              FastGen-style profiling: per head, the cheapest of {special, local,
//                        special + local, full} recovering >= threshold of the attention mass
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// retrieval[h] (size H) marks retrieval heads. Streaming heads keep the first
/// budget.sink_tokens and last budget.recent entries (budget.capacity is not used here).
inline KeptSet retrieval_heads(index_t batch, index_t entries, const std::vector<bool>& retrieval, const Budget& budget) {
  const ArgCheck check("kv::retrieval_heads");
  check.that(batch >= 0 && entries >= 0, "entries",
             "batch and entries must be >= 0, got " + std::to_string(batch) + ", " + std::to_string(entries));
  check.that(budget.sink_tokens >= 0 && budget.recent >= 0, "budget",
             "must have sink_tokens >= 0 and recent >= 0, got " + std::to_string(budget.sink_tokens) + ", " +
                 std::to_string(budget.recent));
  const index_t H = static_cast<index_t>(retrieval.size());
  KeptSet kept(batch, H, entries);
  const index_t sinks = std::min(budget.sink_tokens, entries);
  const index_t window_start = std::max(sinks, entries - budget.recent);
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < H; ++h) {
      auto& row = kept(b, h);
      if (retrieval[static_cast<std::size_t>(h)]) {
        for (index_t j = 0; j < entries; ++j) row.push_back(j);
      } else {
        for (index_t j = 0; j < sinks; ++j) row.push_back(j);
        for (index_t j = window_start; j < entries; ++j) row.push_back(j);
      }
    }
  return kept;
}

/// RazorAttention's compensation token: for every (b, h), the mean of the keys and of the values
/// of the entries NOT in kept(b, h), written to comp_keys[b, h] and comp_values[b, h] (zeros when
/// nothing was evicted). Returns the evicted counts [B * H] (a caller may bias the token's
/// logit by log(count) so it stands for that many entries). keys [B, N, H, Dk], values
/// [B, N, H, Dv], comp_keys [B, H, Dk], comp_values [B, H, Dv].
inline std::vector<index_t> razor_compensation(const ConstView<float, 4>& keys, const ConstView<float, 4>& values,
                                               const KeptSet& kept, const TensorView<float, 3>& comp_keys,
                                               const TensorView<float, 3>& comp_values) {
  const ArgCheck check("kv::razor_compensation");
  check.shape("keys", keys, {kept.batch(), kept.entries(), kept.heads(), -1}, "B,N,H,Dk");
  const index_t B = kept.batch(), N = kept.entries(), H = kept.heads(), Dk = keys.size(3);
  check.shape("values", values, {B, N, H, -1}, "B,N,H,Dv");
  const index_t Dv = values.size(3);
  check.shape("comp_keys", comp_keys, {B, H, Dk}, "B,H,Dk");
  check.shape("comp_values", comp_values, {B, H, Dv}, "B,H,Dv");
  std::vector<index_t> counts(static_cast<std::size_t>(B * H), 0);
  std::vector<double> sum_k(static_cast<std::size_t>(Dk)), sum_v(static_cast<std::size_t>(Dv));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      std::fill(sum_k.begin(), sum_k.end(), 0.0);
      std::fill(sum_v.begin(), sum_v.end(), 0.0);
      const auto& row = kept(b, h);
      index_t count = 0;
      std::size_t next = 0;  // row is sorted: walk it alongside j
      for (index_t j = 0; j < N; ++j) {
        if (next < row.size() && row[next] == j) {
          ++next;
          continue;
        }
        ++count;
        for (index_t c = 0; c < Dk; ++c) sum_k[static_cast<std::size_t>(c)] += keys(b, j, h, c);
        for (index_t c = 0; c < Dv; ++c) sum_v[static_cast<std::size_t>(c)] += values(b, j, h, c);
      }
      const double inv = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
      for (index_t c = 0; c < Dk; ++c) comp_keys(b, h, c) = static_cast<float>(sum_k[static_cast<std::size_t>(c)] * inv);
      for (index_t c = 0; c < Dv; ++c) comp_values(b, h, c) = static_cast<float>(sum_v[static_cast<std::size_t>(c)] * inv);
      counts[static_cast<std::size_t>(b * H + h)] = count;
    }
  return counts;
}

/// FastGen's candidate policies, from cheapest to most expensive for a long prompt.
enum class HeadPolicy {
  Special,       ///< only the special tokens (e.g. BOS, separators) listed by the caller
  Local,         ///< only the last `recent` entries
  SpecialLocal,  ///< both
  Full,          ///< every entry
};

/// The policy's name ("special", "local", "special+local", "full"), for reports.
inline const char* to_string(HeadPolicy p) noexcept {
  switch (p) {
    case HeadPolicy::Special: return "special";
    case HeadPolicy::Local: return "local";
    case HeadPolicy::SpecialLocal: return "special+local";
    default: return "full";
  }
}

/// Options of fastgen (FastGen's per-head policy choice from a profiled prompt).
struct FastGenOptions {
  /// Entry indices of the special tokens (any order, duplicates and out-of-range ones ignored).
  std::vector<index_t> special;
  /// Size of the local window.
  index_t recent = 0;
  /// A policy qualifies when its kept entries hold >= threshold of the head's attention mass.
  double threshold = 0.95;
};

/// What fastgen returns: the kept entries and the policy chosen for each head.
struct FastGenResult {
  /// Kept entries per (b, h), strictly increasing.
  KeptSet kept;
  std::vector<HeadPolicy> choice;  ///< [B * H]
};

/// scores [B, H, N]: each head's attention mass per entry over the profiled (prompt) queries,
/// e.g. observation_scores with Visibility::Causal over the whole prompt. Per head, the qualifying
/// candidate with the fewest kept entries wins (ties: the order of HeadPolicy); Full always
/// qualifies. A head with zero total mass picks the cheapest candidate.
inline FastGenResult fastgen(const ConstView<float, 3>& scores, const FastGenOptions& options) {
  const ArgCheck check("kv::fastgen");
  check.shape("scores", scores, {-1, -1, -1}, "B,H,N");
  check.that(options.recent >= 0, "recent", "must be >= 0, got " + std::to_string(options.recent));
  check.that(options.threshold >= 0.0 && options.threshold <= 1.0, "threshold",
             "must be in [0, 1], got " + std::to_string(options.threshold));
  const index_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  // Candidate sets are the same for every head; only their mass differs.
  std::vector<char> is_special(static_cast<std::size_t>(N), 0);
  for (index_t j : options.special)
    if (j >= 0 && j < N) is_special[static_cast<std::size_t>(j)] = 1;
  const index_t window_start = std::max<index_t>(0, N - options.recent);
  std::vector<index_t> sets[4];
  for (index_t j = 0; j < N; ++j) {
    const bool special = is_special[static_cast<std::size_t>(j)] != 0, local = j >= window_start;
    if (special) sets[0].push_back(j);
    if (local) sets[1].push_back(j);
    if (special || local) sets[2].push_back(j);
    sets[3].push_back(j);
  }
  FastGenResult result{KeptSet(B, H, N), std::vector<HeadPolicy>(static_cast<std::size_t>(B * H), HeadPolicy::Full)};
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      double total = 0.0;
      for (index_t j = 0; j < N; ++j) total += scores(b, h, j);
      int best = -1;
      for (int p = 0; p < 4; ++p) {
        double mass = 0.0;
        if (p < 3)
          for (index_t j : sets[p]) mass += scores(b, h, j);
        const bool qualifies = p == 3 || total <= 0.0 || mass >= options.threshold * total;
        if (qualifies && (best < 0 || sets[p].size() < sets[best].size())) best = p;
      }
      result.choice[static_cast<std::size_t>(b * H + h)] = static_cast<HeadPolicy>(best);
      result.kept(b, h) = sets[best];
    }
  return result;
}

}  // namespace seqmix::kv
