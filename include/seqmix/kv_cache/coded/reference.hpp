// Decode attention over a CodedKvCache, the definition: every visible entry decoded through
// CodedKvCache::read_key / read_value and attended in double (cache.hpp has the formats).
//
//   o[b,i,h] = sum_j softmax_j(scale <q[b,i,h], k'_j>) v'_j   over the entries j visible to query i
// (CodedKvAttentionOptions::causal), k', v' the decoded keys and values of KV head h / (Hq / Hkv).
// A query row with no visible entry gets zeros. A NaN logit or value makes the row NaN.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/kv_cache/coded/cache.hpp"

namespace seqmix {
namespace detail {

struct CodedAttentionDims {
  index_t B, Tq, Hq, Hkv, Dk, Dv;
  index_t group() const noexcept { return Hq / Hkv; }
};

inline CodedAttentionDims validate_coded_attention(const ArgCheck& check, const CodedKvCache& cache, const ConstView<float, 4>& q,
                                                   const TensorView<float, 4>& o, const CodedKvAttentionOptions& options) {
  const CodedKvCacheConfig& cfg = cache.config();
  check.shape("q", q, {cfg.batch, -1, -1, cfg.key_dim}, "B,Tq,Hq,Dk");
  const index_t Tq = q.size(1), Hq = q.size(2);
  check.divides(cfg.kv_heads, Hq, "q", "cache KV heads");
  check.shape("o", o, {cfg.batch, Tq, Hq, cfg.value_dim}, "B,Tq,Hq,Dv");
  check.no_overlap("o", o, "q", q);
  if (options.scale) check.finite(*options.scale, "options.scale");
  return {cfg.batch, Tq, Hq, cfg.kv_heads, cfg.key_dim, cfg.value_dim};
}

// Entries visible to query i of Tq in a row of n entries.
inline index_t coded_visible(const CodedKvAttentionOptions& options, index_t n, index_t Tq, index_t i) noexcept {
  if (!options.causal) return n;
  return std::max<index_t>(0, std::min<index_t>(n, n - Tq + i + 1));
}

}  // namespace detail

namespace reference {

/// The definition (header comment): entry by entry, decoded keys and values, double accumulation,
/// single-threaded. q [B, Tq, Hq, Dk], o [B, Tq, Hq, Dv]; Hkv must divide Hq. ShapeError before
/// any output is written.
inline void coded_kv_cache_attention(const CodedKvCache& cache, const ConstView<float, 4>& q, const TensorView<float, 4>& o,
                                     const CodedKvAttentionOptions& options = {}) {
  const auto d = detail::validate_coded_attention(ArgCheck("reference::coded_kv_cache_attention"), cache, q, o, options);
  const double scale = options.scale ? static_cast<double>(*options.scale) : 1.0 / std::sqrt(static_cast<double>(d.Dk));
  std::vector<float> k(static_cast<std::size_t>(d.Dk)), v(static_cast<std::size_t>(d.Dv));
  std::vector<double> logits, acc(static_cast<std::size_t>(d.Dv));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t hk = h / d.group(), n = detail::coded_visible(options, cache.size(b), d.Tq, i);
        logits.assign(static_cast<std::size_t>(n), 0.0);
        bool nan = false;
        double mx = -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j < n; ++j) {
          cache.read_key(b, hk, j, k.data());
          double s = 0.0;
          for (index_t c = 0; c < d.Dk; ++c) s += static_cast<double>(q(b, i, h, c)) * k[c];
          logits[j] = s * scale;
          if (std::isnan(logits[j])) nan = true;
          else mx = std::max(mx, logits[j]);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double l = 0.0;
        for (index_t j = 0; j < n && !nan; ++j) {
          const double p = std::exp(logits[j] - mx);
          l += p;
          cache.read_value(b, hk, j, v.data());
          for (index_t c = 0; c < d.Dv; ++c) acc[c] += p * v[c];
        }
        for (index_t c = 0; c < d.Dv; ++c)
          o(b, i, h, c) = nan ? std::numeric_limits<float>::quiet_NaN() : n == 0 ? 0.f : static_cast<float>(acc[c] / l);
      }
}

}  // namespace reference
}  // namespace seqmix
