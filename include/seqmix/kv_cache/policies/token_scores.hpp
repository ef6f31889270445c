// Token scorers whose state lives across layers or decode rounds, for eviction beside the
// score-based policies of eviction.hpp. Both return KeptSets with the same kept tokens in every
// KV head (token pruning, not per-head eviction).
//
//   SpAttenCascade   SpAtten's cascade token pruning (Wang et al., SpAtten: Efficient Sparse
//                    Attention Architecture with Cascade Token and Head Pruning, HPCA 2021): each
//                    token's importance is the attention probability it receives, summed over the
//                    heads and queries of every layer so far; after a layer the least important
//                    tokens are pruned, and a pruned token is gone for all later layers.
//   reference::spatten_cascade   the same cascade from per-layer scores over all N tokens, with a
//                    full sort per layer (what the tests compare against)
//   token_entropy    SirLLM's token entropy (Yao et al., SirLLM: Streaming Infinite Retentive
//                    LLM, ACL 2024): -log p(token | prefix) from the logits that predicted it
//                    (fast: one pass with a running max; reference: double)
//   SirLlmScores     SirLLM's memory: the entropy of every cached token, decayed by a factor each
//                    round, the highest kept besides the sinks and the recent window
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

namespace detail {

// One kept set for every head: `keep` (strictly increasing indices into N) copied to H heads.
inline void broadcast_kept(KeptSet& kept, index_t b, const std::vector<index_t>& keep) {
  for (index_t h = 0; h < kept.heads(); ++h) kept(b, h) = keep;
}

inline void check_heads(const ArgCheck& check, index_t heads) {
  check.that(heads >= 1, "heads", "must be >= 1, got " + std::to_string(heads));
}

}  // namespace detail

/// SpAtten's cascade token pruning over the layers of one forward pass (header comment). The
/// survivors of every batch row are original token indices 0..N-1, strictly increasing; all rows
/// prune the same number of tokens (the budget's), so every row has alive() survivors.
class SpAttenCascade {
 public:
  /// `batch` rows of `entries` tokens each, all alive, importance 0.
  SpAttenCascade(index_t batch, index_t entries) : batch_(batch), alive_(entries) {
    const ArgCheck check("kv::SpAttenCascade");
    check.that(batch >= 0 && entries >= 0, "entries",
               "batch and entries must be >= 0, got " + std::to_string(batch) + ", " + std::to_string(entries));
    survivors_.resize(static_cast<std::size_t>(batch));
    importance_.assign(static_cast<std::size_t>(batch), std::vector<float>(static_cast<std::size_t>(entries), 0.f));
    for (auto& s : survivors_) {
      s.resize(static_cast<std::size_t>(entries));
      std::iota(s.begin(), s.end(), index_t{0});
    }
  }

  /// Batch rows.
  index_t batch() const noexcept { return batch_; }
  /// Tokens alive in every row.
  index_t alive() const noexcept { return alive_; }
  /// The original indices of row b's surviving tokens, strictly increasing.
  const std::vector<index_t>& survivors(index_t b) const { return survivors_.at(static_cast<std::size_t>(b)); }
  /// Accumulated importance of row b's i-th surviving token.
  float importance(index_t b, index_t i) const {
    return importance_.at(static_cast<std::size_t>(b)).at(static_cast<std::size_t>(i));
  }

  /// Adds one layer's scores [B, H, alive()] (the attention each surviving token received, summed
  /// over the layer's queries: observation_scores of the layer over the survivors' keys) to the
  /// importance, summed over the H heads. Validated before any change.
  void accumulate(const ConstView<float, 3>& scores) {
    const ArgCheck check("kv::SpAttenCascade::accumulate");
    check.shape("scores", scores, {batch_, -1, alive_}, "B,H,alive");
    const index_t H = scores.size(1);
    for (index_t b = 0; b < batch_; ++b) {
      auto& imp = importance_[static_cast<std::size_t>(b)];
      for (index_t i = 0; i < alive_; ++i) {
        float s = 0.f;
        for (index_t h = 0; h < H; ++h) s += scores(b, h, i);
        imp[static_cast<std::size_t>(i)] += s;
      }
    }
  }

  /// Prunes every row to the budget: the protected survivors (first sink_tokens, last recent)
  /// and the most important others up to capacity (ties to the older token, NaN last). Returns
  /// the kept survivors as indices into the survivor list before the call (what
  /// KvCache::retain takes for a cache holding exactly the survivors), the same for all `heads`
  /// KV heads; the pruned tokens never come back.
  KeptSet prune(const Budget& budget, index_t heads) {
    const ArgCheck check("kv::SpAttenCascade::prune");
    detail::check_budget(check, budget);
    detail::check_heads(check, heads);
    KeptSet kept(batch_, heads, alive_);
    std::vector<index_t> scratch;
    index_t next_alive = alive_;
    for (index_t b = 0; b < batch_; ++b) {
      auto& imp = importance_[static_cast<std::size_t>(b)];
      auto& surv = survivors_[static_cast<std::size_t>(b)];
      const auto keep = detail::select_head(
          alive_, budget, Keep::Highest, [&](index_t i) { return imp[static_cast<std::size_t>(i)]; }, scratch);
      std::vector<index_t> new_surv;
      std::vector<float> new_imp;
      for (index_t i : keep) {
        new_surv.push_back(surv[static_cast<std::size_t>(i)]);
        new_imp.push_back(imp[static_cast<std::size_t>(i)]);
      }
      surv = std::move(new_surv), imp = std::move(new_imp);
      detail::broadcast_kept(kept, b, keep);
      next_alive = static_cast<index_t>(keep.size());
    }
    alive_ = next_alive;
    return kept;
  }

 private:
  index_t batch_ = 0, alive_ = 0;
  std::vector<std::vector<index_t>> survivors_;
  std::vector<std::vector<float>> importance_;
};

namespace reference {

/// The cascade from scores over all N tokens: layer_scores[l] is [B, H, N] (a pruned token's
/// columns are ignored), budgets[l] the budget applied after layer l. Per layer: every survivor's
/// importance += sum over heads of its column, then the survivors are fully sorted (importance
/// descending, older first, NaN last) and the protected plus the best kept. Returns the final
/// survivors (original indices, increasing) per batch row.
inline std::vector<std::vector<index_t>> spatten_cascade(const std::vector<ConstView<float, 3>>& layer_scores,
                                                         const std::vector<Budget>& budgets) {
  const ArgCheck check("kv::reference::spatten_cascade");
  check.that(layer_scores.size() == budgets.size(), "budgets",
             "must hold one budget per layer (" + std::to_string(layer_scores.size()) + "), got " +
                 std::to_string(budgets.size()));
  if (layer_scores.empty()) return {};
  const index_t B = layer_scores[0].size(0), N = layer_scores[0].size(2);
  for (const auto& s : layer_scores) check.shape("layer_scores", s, {B, -1, N}, "B,H,N");
  for (const auto& budget : budgets) detail::check_budget(check, budget);
  std::vector<std::vector<index_t>> out(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    std::vector<index_t> alive(static_cast<std::size_t>(N));
    std::iota(alive.begin(), alive.end(), index_t{0});
    std::vector<double> imp(static_cast<std::size_t>(N), 0.0);
    for (std::size_t l = 0; l < layer_scores.size(); ++l) {
      const auto& s = layer_scores[l];
      for (index_t j : alive)
        for (index_t h = 0; h < s.size(1); ++h) imp[static_cast<std::size_t>(j)] += s(b, h, j);
      const index_t n = static_cast<index_t>(alive.size());
      const Budget& budget = budgets[l];
      if (n <= budget.capacity) continue;
      const index_t sinks = std::min(budget.sink_tokens, n), window = std::max(sinks, n - budget.recent);
      std::vector<index_t> middle(alive.begin() + sinks, alive.begin() + window);
      const auto key = [&](index_t j) {
        const double v = imp[static_cast<std::size_t>(j)];
        return std::isnan(v) ? -std::numeric_limits<double>::infinity() : v;
      };
      std::sort(middle.begin(), middle.end(),
                [&](index_t x, index_t y) { return key(x) > key(y) || (key(x) == key(y) && x < y); });
      middle.resize(static_cast<std::size_t>(budget.capacity - sinks - (n - window)));
      std::vector<index_t> next(alive.begin(), alive.begin() + sinks);
      next.insert(next.end(), middle.begin(), middle.end());
      next.insert(next.end(), alive.begin() + window, alive.end());
      std::sort(next.begin(), next.end());
      alive = std::move(next);
    }
    out[static_cast<std::size_t>(b)] = alive;
  }
  return out;
}

}  // namespace reference

/// Token ids for token_entropy: ids[b, t] in [0, V).
using TokenIds = ConstView<std::int32_t, 2>;

namespace detail {

inline void validate_token_entropy(const ArgCheck& check, const ConstView<float, 3>& logits, const TokenIds& tokens,
                                   const TensorView<float, 2>& entropy) {
  check.shape("logits", logits, {-1, -1, -1}, "B,T,V");
  const index_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  check.that(V >= 1 || B * T == 0, "logits", "must have a vocabulary of at least 1 entry");
  check.shape("tokens", tokens, {B, T}, "B,T");
  check.shape("entropy", entropy, {B, T}, "B,T");
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      if (tokens(b, t) < 0 || tokens(b, t) >= V)
        check.fail("tokens", "entry (" + std::to_string(b) + ", " + std::to_string(t) + ") = " +
                                 std::to_string(tokens(b, t)) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
}

}  // namespace detail

namespace reference {

/// entropy[b, t] = -log softmax(logits[b, t, :])[tokens[b, t]] in double (logits[b, t] are the
/// logits that predicted token t, i.e. the model's output at t - 1).
inline void token_entropy(const ConstView<float, 3>& logits, const TokenIds& tokens, const TensorView<float, 2>& entropy) {
  const ArgCheck check("kv::reference::token_entropy");
  detail::validate_token_entropy(check, logits, tokens, entropy);
  const index_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t) {
      double m = -std::numeric_limits<double>::infinity();
      for (index_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(logits(b, t, v)));
      double sum = 0.0;
      for (index_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits(b, t, v)) - m);
      entropy(b, t) = static_cast<float>(m + std::log(sum) - logits(b, t, tokens(b, t)));
    }
}

}  // namespace reference

/// token_entropy, fast: one pass per row with a running maximum (online log-sum-exp in float).
/// A row whose logits are all -inf, or hold a NaN, gives NaN.
inline void token_entropy(const ConstView<float, 3>& logits, const TokenIds& tokens, const TensorView<float, 2>& entropy,
                          const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::token_entropy");
  detail::validate_token_entropy(check, logits, tokens, entropy);
  const index_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  parallel_for(executor, B * T, 16, [&](index_t begin, index_t end) {
    for (index_t bt = begin; bt < end; ++bt) {
      const index_t b = bt / T, t = bt % T;
      float m = -std::numeric_limits<float>::infinity(), sum = 0.f;
      for (index_t v = 0; v < V; ++v) {
        const float x = logits(b, t, v);
        if (x == -std::numeric_limits<float>::infinity()) continue;  // a masked entry adds 0
        if (x > m) {
          sum = sum * std::exp(m - x) + 1.f;
          m = x;
        } else {
          sum += std::exp(x - m);  // NaN x propagates through the sum
        }
      }
      entropy(b, t) = m + std::log(sum) - logits(b, t, tokens(b, t));
    }
  });
}

/// SirLLM's token memory: per batch row the entropy score of every cached token, oldest first,
/// kept in step with the cache (append what the cache appends, evict with the same kept set).
class SirLlmScores {
 public:
  /// `batch` rows, empty.
  explicit SirLlmScores(index_t batch) {
    const ArgCheck check("kv::SirLlmScores");
    check.that(batch >= 0, "batch", "must be >= 0, got " + std::to_string(batch));
    rows_.resize(static_cast<std::size_t>(batch));
  }

  /// Batch rows.
  index_t batch() const noexcept { return static_cast<index_t>(rows_.size()); }
  /// Tokens scored per row.
  index_t size() const noexcept { return size_; }
  /// Score of row b's i-th token.
  float score(index_t b, index_t i) const {
    return rows_.at(static_cast<std::size_t>(b)).at(static_cast<std::size_t>(i));
  }

  /// Appends the entropies [B, T] of T new tokens per row (token_entropy).
  void append(const ConstView<float, 2>& entropy) {
    const ArgCheck check("kv::SirLlmScores::append");
    check.shape("entropy", entropy, {batch(), -1}, "B,T");
    for (index_t b = 0; b < batch(); ++b)
      for (index_t t = 0; t < entropy.size(1); ++t) rows_[static_cast<std::size_t>(b)].push_back(entropy(b, t));
    size_ += entropy.size(1);
  }

  /// Multiplies every stored score by `rate` in [0, 1] (SirLLM's decay, once per round, so
  /// that old key tokens fade unless they keep being recalled).
  void decay(float rate) {
    const ArgCheck check("kv::SirLlmScores::decay");
    check.that(rate >= 0.f && rate <= 1.f, "rate", "must lie in [0, 1], got " + std::to_string(rate));
    for (auto& row : rows_)
      for (float& s : row) s *= rate;
  }

  /// Evicts to the budget: the protected tokens and the highest scores (ties to the older, NaN
  /// last); drops the evicted tokens' scores and returns the kept set, the same for all `heads`.
  KeptSet evict(const Budget& budget, index_t heads) {
    const ArgCheck check("kv::SirLlmScores::evict");
    detail::check_budget(check, budget);
    detail::check_heads(check, heads);
    KeptSet kept(batch(), heads, size_);
    std::vector<index_t> scratch;
    index_t next = size_;
    for (index_t b = 0; b < batch(); ++b) {
      auto& row = rows_[static_cast<std::size_t>(b)];
      const auto keep =
          detail::select_head(size_, budget, Keep::Highest, [&](index_t i) { return row[static_cast<std::size_t>(i)]; }, scratch);
      std::vector<float> kept_scores;
      for (index_t i : keep) kept_scores.push_back(row[static_cast<std::size_t>(i)]);
      row = std::move(kept_scores);
      detail::broadcast_kept(kept, b, keep);
      next = static_cast<index_t>(keep.size());
    }
    size_ = next;
    return kept;
  }

 private:
  std::vector<std::vector<float>> rows_;
  index_t size_ = 0;
};

}  // namespace seqmix::kv
