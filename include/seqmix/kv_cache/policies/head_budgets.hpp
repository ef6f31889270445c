// Per-head budgets from retrieval scores (HeadKV: Fu et al., Not All Heads Matter: A Head-Level
// KV Cache Compression Method with Integrated Retrieval and Reasoning, ICLR 2025; Task-KV style
// head classes), feeding the per-head selection of the existing policies.
//
//   retrieval_scores      a head's retrieval score measured on an attention-to-needle probe the
//                         caller ran: Copy (Wu et al.'s retrieval score: share of the answer's
//                         decode steps whose most attended entry is the needle token being copied)
//                         or NeedleMass (mean attention probability on the needle span)
//   headkv_budgets        every head keeps (1 - pool_fraction) of the even share; the pooled rest
//                         goes to the heads in proportion to their scores (largest remainders),
//                         summing exactly to the total
//   top_heads             Task-KV / DuoAttention-style classes: the `count` best-scoring heads
//                         marked (for retrieval_heads)
//   select_with_head_budgets   per-head capacities applied to per-head scores (any score policy)
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// How retrieval_scores scores a head on the probe.
enum class RetrievalScoreRule {
  Copy,        ///< share of probe queries whose most attended entry (ties: the older) is their target
  NeedleMass,  ///< mean over probe queries of the attention probability on [needle_begin, needle_end)
};

/// An attention-to-needle probe: the attention of Tq decode queries (those generating the
/// answer, which copies a needle planted in the prompt) over the N prompt entries, per head.
struct RetrievalProbe {
  ConstView<float, 3> probs;   ///< [H, Tq, N]: softmax probabilities of each head's probe queries
  std::vector<index_t> targets;  ///< [Tq]: the needle entry query t copies (Copy rule)
  index_t needle_begin = 0;    ///< first entry of the needle span (NeedleMass rule)
  index_t needle_end = 0;      ///< one past its last entry
};

/// Retrieval score of every head (size H) on the probe, in [0, 1] for probability rows.
inline std::vector<float> retrieval_scores(const RetrievalProbe& probe, RetrievalScoreRule rule) {
  const ArgCheck check("kv::retrieval_scores");
  check.shape("probs", probe.probs, {-1, -1, -1}, "H,Tq,N");
  const index_t H = probe.probs.size(0), Tq = probe.probs.size(1), N = probe.probs.size(2);
  check.that(Tq >= 1, "probs", "must hold at least one probe query (Tq >= 1)");
  if (rule == RetrievalScoreRule::Copy) {
    if (static_cast<index_t>(probe.targets.size()) != Tq)
      check.fail("targets", "must hold one entry per probe query (" + std::to_string(Tq) + "), got " +
                                std::to_string(probe.targets.size()));
    for (std::size_t t = 0; t < probe.targets.size(); ++t)
      if (probe.targets[t] < 0 || probe.targets[t] >= N)
        check.fail("targets", "entry " + std::to_string(t) + " = " + std::to_string(probe.targets[t]) +
                                  " is outside [0, " + std::to_string(N) + ")");
  } else if (rule == RetrievalScoreRule::NeedleMass) {
    if (!(probe.needle_begin >= 0 && probe.needle_begin < probe.needle_end && probe.needle_end <= N))
      check.fail("needle_begin", "the needle span [" + std::to_string(probe.needle_begin) + ", " +
                                     std::to_string(probe.needle_end) + ") must be non-empty within [0, " +
                                     std::to_string(N) + ")");
  } else {
    check.fail("rule", "is out of range (" + std::to_string(static_cast<int>(rule)) + ")");
  }
  std::vector<float> out(static_cast<std::size_t>(H), 0.f);
  for (index_t h = 0; h < H; ++h) {
    double acc = 0.0;
    for (index_t t = 0; t < Tq; ++t) {
      if (rule == RetrievalScoreRule::Copy) {
        index_t best = -1;
        float best_p = 0.f;
        for (index_t j = 0; j < N; ++j) {
          const float p = probe.probs(h, t, j);
          if (best < 0 || p > best_p) best = j, best_p = p;  // NaN never wins
        }
        if (best == probe.targets[static_cast<std::size_t>(t)]) acc += 1.0;
      } else {
        for (index_t j = probe.needle_begin; j < probe.needle_end; ++j) acc += probe.probs(h, t, j);
      }
    }
    out[static_cast<std::size_t>(h)] = static_cast<float>(acc / static_cast<double>(Tq));
  }
  return out;
}

/// Options of headkv_budgets.
struct HeadBudgetOptions {
  /// Entries kept over all the scored heads (one layer's heads, or every layer's heads flattened
  /// for HeadKV's global allocation).
  index_t total = 0;
  /// Share of the even split each head gives to the shared pool, in [0, 1]: 0 = every head gets
  /// total / heads, 1 = the whole total is split by score.
  double pool_fraction = 0.5;
  /// No head gets less (e.g. sink_tokens + recent, so every head's Budget stays valid).
  index_t min_per_head = 0;
};

/// HeadKV's allocation: head i gets base = max(min_per_head, floor((1 - pool_fraction) * total / n))
/// plus pool * s_i / sum(s) of the pool = total - sum(base) (an even split when every score is 0),
/// rounded down with the leftover entries going to the largest remainders (ties: the lower head).
/// Sums exactly to total. Scores must be finite and >= 0.
inline std::vector<index_t> headkv_budgets(const std::vector<float>& scores, const HeadBudgetOptions& options) {
  const ArgCheck check("kv::headkv_budgets");
  const index_t n = static_cast<index_t>(scores.size());
  check.that(n >= 1, "scores", "must score at least one head");
  for (index_t i = 0; i < n; ++i)
    if (!(std::isfinite(scores[static_cast<std::size_t>(i)]) && scores[static_cast<std::size_t>(i)] >= 0.f))
      check.fail("scores", "must be finite and >= 0, entry " + std::to_string(i) + " is " +
                               std::to_string(scores[static_cast<std::size_t>(i)]));
  if (!(options.pool_fraction >= 0.0 && options.pool_fraction <= 1.0))
    check.fail("pool_fraction", "must lie in [0, 1], got " + std::to_string(options.pool_fraction));
  check.that(options.min_per_head >= 0, "min_per_head", "must be >= 0, got " + std::to_string(options.min_per_head));
  if (options.total < n * options.min_per_head)
    check.fail("total", "= " + std::to_string(options.total) + " is below heads * min_per_head = " + std::to_string(n) +
                            " * " + std::to_string(options.min_per_head) + " = " + std::to_string(n * options.min_per_head));
  const index_t base = std::max(options.min_per_head,
                                static_cast<index_t>(std::floor((1.0 - options.pool_fraction) *
                                                                static_cast<double>(options.total) / static_cast<double>(n))));
  std::vector<index_t> out(static_cast<std::size_t>(n), base);
  const index_t pool = options.total - n * base;  // >= 0: base <= total / n unless min_per_head set it
  double sum = 0.0;
  for (float s : scores) sum += s;
  std::vector<double> remainder(static_cast<std::size_t>(n));
  index_t given = 0;
  for (index_t i = 0; i < n; ++i) {
    const double share = sum > 0.0 ? static_cast<double>(pool) * scores[static_cast<std::size_t>(i)] / sum
                                   : static_cast<double>(pool) / static_cast<double>(n);
    const index_t whole = std::min<index_t>(pool - given, static_cast<index_t>(std::floor(share)));
    out[static_cast<std::size_t>(i)] += whole;
    given += whole;
    remainder[static_cast<std::size_t>(i)] = share - std::floor(share);
  }
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
    return remainder[static_cast<std::size_t>(a)] > remainder[static_cast<std::size_t>(b)];
  });
  for (index_t k = 0; given < pool; k = (k + 1) % n, ++given) ++out[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])];
  return out;
}

/// Marks the `count` highest-scoring heads (ties: the lower head); the result feeds
/// retrieval_heads (retrieval heads keep everything, the others sinks + recent).
inline std::vector<bool> top_heads(const std::vector<float>& scores, index_t count) {
  const ArgCheck check("kv::top_heads");
  const index_t n = static_cast<index_t>(scores.size());
  check.that(count >= 0 && count <= n, "count", "must lie in [0, " + std::to_string(n) + "], got " + std::to_string(count));
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
    return detail::rank_key(scores[static_cast<std::size_t>(a)], Keep::Highest) >
           detail::rank_key(scores[static_cast<std::size_t>(b)], Keep::Highest);
  });
  std::vector<bool> out(static_cast<std::size_t>(n), false);
  for (index_t k = 0; k < count; ++k) out[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])] = true;
  return out;
}

/// Per-head capacities applied to per-head scores [B, H, N]: head h keeps its protected entries
/// (the first sink_tokens, the last recent) and its best scores (Keep::Highest or Lowest) up to
/// budgets[h] (e.g. headkv_budgets), as select_by_score does with one capacity.
inline KeptSet select_with_head_budgets(const ConstView<float, 3>& scores, const std::vector<index_t>& budgets,
                                        index_t sink_tokens, index_t recent, Keep keep = Keep::Highest,
                                        const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::select_with_head_budgets");
  check.shape("scores", scores, {-1, -1, -1}, "B,H,N");
  const index_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  if (static_cast<index_t>(budgets.size()) != H)
    check.fail("budgets", "must hold one capacity per head (" + std::to_string(H) + "), got " +
                              std::to_string(budgets.size()));
  for (index_t h = 0; h < H; ++h) detail::check_budget(check, {budgets[static_cast<std::size_t>(h)], sink_tokens, recent});
  KeptSet kept(B, H, N);
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    std::vector<index_t> scratch;
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      const Budget budget{budgets[static_cast<std::size_t>(h)], sink_tokens, recent};
      kept(b, h) = detail::select_head(N, budget, keep, [&](index_t j) { return scores(b, h, j); }, scratch);
    }
  });
  return kept;
}

}  // namespace seqmix::kv
