// topk_attention (SPEC section 5): each query attends only to a selected set of keys: its top-k
// keys under some score, plus the always-kept sink tokens and recent window.
//
// The operator is split in two stages, so that any scorer can feed it:
//   1. a selector (selectors.hpp) scores the keys, or blocks of keys, per (batch row, query,
//      selection head): exact q.k, block summaries (mean key; Quest min/max bounds), low-rank
//      projected keys (Loki), or the lightning indexer (DeepSeek sparse attention); then
//      select_topk turns scores into a sorted list of key indices per row;
//   2. topk_attention computes exact softmax attention of each query head over the keys listed
//      for its selection head.
// Selection heads: indices are [B, Tq, Hs, capacity]; query head h reads selection head
// h / (Hq / Hs). Hs = Hq selects per head (Quest), Hs = Hkv per KV group, Hs = 1 per token
// (DeepSeek sparse attention). Unused slots hold -1; listed keys are strictly increasing.
//
// Attention over the selected keys is exact dense attention restricted to them:
//   o = sum_{j in S} exp(s_j) v_j / (sum_{j in S} exp(s_j) + exp(sink_logits[h])),
//   s_j = scale * q.k_j, soft-capped if softcap > 0.
// Visibility (causal, sinks, recent window) is decided at selection; a row with no selected
// key gives o = 0 and lse = -inf (or sink_logits[h]), as in dense attention.
//
// This header holds the argument structs, validation and reference::topk_attention (dense
// attention's reference loop over the selected keys only); fast.hpp gathers the selected rows
// and runs the dense decode kernel on them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/attention/block_sparse/reference.hpp"  // detail::head_slice
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// The attention part's options (selection has its own, TopkOptions in selectors.hpp).
struct TopkAttentionOptions {
  /// Multiplies q.k; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale;
  /// s = softcap * tanh(s / softcap) when > 0, as in dense attention.
  float softcap = 0.f;
};

/// q, k, v and sink_logits as in AttentionInputs (KV: float, f16 or bf16); indices from
/// select_topk.
template <class KV = float>
struct TopkAttentionInputs {
  ConstView<float, 4> q;                 ///< [B,Tq,Hq,Dk]
  ConstView<KV, 4> k;                    ///< [B,Tk,Hkv,Dk]
  ConstView<KV, 4> v;                    ///< [B,Tk,Hkv,Dv]
  ConstView<std::int32_t, 4> indices;    ///< [B,Tq,Hs,capacity], Hs divides Hq; -1 = unused slot
  ConstView<float, 1> sink_logits = {};  ///< [Hq], optional
};

namespace detail {

struct TopkDims {
  AttentionDims attention;
  index_t Hs, capacity;
  index_t heads_per_selection() const noexcept { return attention.Hq / Hs; }
};

template <class KV>
TopkDims validate_topk_attention(const char* op, const TopkAttentionInputs<KV>& in, const AttentionOutputs& out,
                                 const TopkAttentionOptions& options) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v, dense.sink_logits = in.sink_logits;
  AttentionOptions dense_options;
  dense_options.scale = options.scale, dense_options.softcap = options.softcap;
  const AttentionDims d = validate_attention(op, dense, out, dense_options);
  const ArgCheck check(op);
  check.shape("indices", in.indices, std::array<index_t, 4>{d.B, d.Tq, -1, -1}, "B,Tq,Hs,capacity");
  const index_t Hs = in.indices.size(2);
  if (d.Hq > 0 || Hs > 0) check.divides(Hs, d.Hq, "indices", "selection heads (dimension 2)");
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t s = 0; s < Hs; ++s) {
        index_t previous = -1;
        for (index_t e = 0; e < in.indices.size(3); ++e) {
          const index_t j = in.indices(b, i, s, e);
          if (j < 0) continue;
          if (j >= d.Tk || j <= previous)  // message built only on failure: this loop is per slot
            check.fail("indices",
                       "must hold strictly increasing key indices in [0, " + std::to_string(d.Tk) + ") per row, got " +
                           std::to_string(j) + " after " + std::to_string(previous) + " in row (" + std::to_string(b) +
                           ", " + std::to_string(i) + ", " + std::to_string(s) + ")");
          previous = j;
        }
      }
  return {d, Hs, in.indices.size(3)};
}

inline AttentionOptions as_attention_options(const TopkAttentionOptions& options) {
  AttentionOptions o;
  o.scale = options.scale, o.softcap = options.softcap;
  return o;
}

}  // namespace detail

namespace reference {

/// The definition, one query row at a time over its selected keys only, accumulated in double
/// with dense reference::attention's arithmetic and non-finite rule: a NaN or +inf logit of a
/// selected key makes the row's o and lse NaN, a key of weight 0 takes no part. Keys that are
/// not selected are left out altogether (an additive -inf mask would turn an unselected key's
/// NaN logit into NaN + -inf = NaN). Single-threaded; meant for tests.
template <class KV>
void topk_attention(const TopkAttentionInputs<KV>& in, const AttentionOutputs& out,
                    const TopkAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  const auto t = detail::validate_topk_attention("reference::topk_attention", in, out, options);
  const detail::AttentionDims& d = t.attention;
  const double scale = detail::attention_scale(detail::as_attention_options(options), d.Dk);
  const double minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<index_t> keys(static_cast<std::size_t>(t.capacity));
  std::vector<double> logits(static_cast<std::size_t>(t.capacity)), acc(static_cast<std::size_t>(d.Dv));
  const auto value = [](const KV& x) { return static_cast<double>(static_cast<float>(x)); };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t hk = h / d.group(), hs = h / t.heads_per_selection();
        index_t n = 0;
        for (index_t e = 0; e < t.capacity; ++e)
          if (in.indices(b, i, hs, e) >= 0) keys[static_cast<std::size_t>(n++)] = in.indices(b, i, hs, e);
        double max_logit = minus_inf;
        bool nan_logit = false;
        for (index_t e = 0; e < n; ++e) {
          double s = 0.0;
          for (index_t c = 0; c < d.Dk; ++c) s += static_cast<double>(in.q(b, i, h, c)) * value(in.k(b, keys[e], hk, c));
          s *= scale;
          if (options.softcap > 0.f) s = options.softcap * std::tanh(s / options.softcap);
          logits[e] = s;
          max_logit = std::max(max_logit, s);
          nan_logit |= std::isnan(s);
        }
        const auto value_of = [&](index_t e, index_t c) { return value(in.v(b, keys[e], hk, c)); };
        detail::reference_softmax_row(logits, n, max_logit, nan_logit, value_of, in.sink_logits, out, b, i, h, acc);
      }
}

}  // namespace reference
}  // namespace seqmix
