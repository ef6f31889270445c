// Token selection for long contexts (issue 23 item 5), both driven by a selective SSM's dt (the
// step size after bias and softplus: how strongly a token writes into the state):
//
//   DeciMamba token pooling between layers: keep the `keep` tokens with the largest mean dt over
//   channels (ties to the earlier token), in their original order; return their indices and the
//   gathered token rows for the next layer. DeciMambaSchedule says how many a layer keeps.
//   LongMamba selective accumulation: in the channels the caller marks global, only tokens whose
//   dt passes a threshold (or the top_k per channel) enter the state; the others get dt = 0, so
//   selective_scan leaves that channel's state untouched (exp(0 A) = 1, no input), and in ssd the
//   same with a per-head dt. Run the scan with delta = the filtered dt, no delta_bias and no
//   softplus (they were applied before).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// A DeciMamba-style pooling schedule: layers [first_layer, last_layer] decimate, layer l keeping
/// round(base_tokens * decay^(l - first_layer)) tokens (at least 1, at most the tokens it gets);
/// every other layer keeps all.
struct DeciMambaSchedule {
  index_t first_layer = 0;   ///< first decimating layer
  index_t last_layer = -1;   ///< last decimating layer (-1: none decimates)
  index_t base_tokens = 0;   ///< tokens the first decimating layer keeps (>= 1 when any decimates)
  double decay = 1.0;        ///< factor per further decimating layer, in (0, 1]
};

/// The token count layer `layer` keeps out of `tokens` under `schedule` (see DeciMambaSchedule).
inline index_t decimamba_keep_count(const DeciMambaSchedule& schedule, index_t layer, index_t tokens) {
  const ArgCheck check("decimamba_keep_count");
  check.that(tokens >= 0, "tokens", "must be >= 0, got " + std::to_string(tokens));
  if (layer < schedule.first_layer || layer > schedule.last_layer) return tokens;
  check.that(schedule.base_tokens >= 1, "schedule.base_tokens",
             "must be >= 1 when a layer decimates, got " + std::to_string(schedule.base_tokens));
  check.that(schedule.decay > 0.0 && schedule.decay <= 1.0, "schedule.decay",
             "must be in (0, 1], got " + std::to_string(schedule.decay));
  const double k = std::round(double(schedule.base_tokens) * std::pow(schedule.decay, double(layer - schedule.first_layer)));
  return std::min(tokens, std::max<index_t>(1, static_cast<index_t>(k)));
}

/// DeciMamba token pooling: per batch row, the `keep` tokens of largest mean_d dt[b,t,d] (ties to
/// the earlier token), in increasing position:
///   dt      [B,T,D]   the layer's step sizes (after bias and softplus)
///   x       [B,T,C]   the tokens to pool (the layer's output, the next layer's input)
///   kept    [B,keep]  out: the kept positions, increasing
///   pooled  [B,keep,C] out: x at those positions
/// 0 <= keep <= T. Errors (ShapeError, before any write): shapes, a non-finite dt, outputs
/// overlapping an input or each other. Parallel over batch rows.
inline void decimamba_pool(ConstView<float, 3> dt, ConstView<float, 3> x, TensorView<std::int64_t, 2> kept,
                           TensorView<float, 3> pooled, const Executor& executor = serial_executor()) {
  const ArgCheck check("decimamba_pool");
  check.shape("dt", dt, {-1, -1, -1}, "B,T,D");
  const index_t B = dt.size(0), T = dt.size(1), D = dt.size(2);
  check.shape("x", x, {B, T, -1}, "B,T,C");
  const index_t C = x.size(2);
  check.shape("kept", kept, {B, -1}, "B,keep");
  const index_t keep = kept.size(1);
  check.that(keep <= T, "kept", "keeps " + std::to_string(keep) + " tokens of " + std::to_string(T));
  check.shape("pooled", pooled, {B, keep, C}, "B,keep,C");
  check.no_overlap("pooled", pooled, "x", x).no_overlap("pooled", pooled, "dt", dt).no_overlap("kept", kept, "dt", dt);
  check.no_overlap("kept", kept, "x", x).no_overlap("kept", kept, "pooled", pooled);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d)
        if (!std::isfinite(dt(b, t, d)))
          check.fail("dt", "must be finite, element [" + std::to_string(b) + "," + std::to_string(t) + "," +
                               std::to_string(d) + "] is " + std::to_string(dt(b, t, d)));
  parallel_for(executor, B, 1, [&](index_t b0, index_t b1) {
    std::vector<double> score(static_cast<std::size_t>(T));
    std::vector<index_t> order(static_cast<std::size_t>(T));
    for (index_t b = b0; b < b1; ++b) {
      for (index_t t = 0; t < T; ++t) {
        double s = 0.0;
        for (index_t d = 0; d < D; ++d) s += dt(b, t, d);
        score[t] = D > 0 ? s / double(D) : 0.0;
        order[t] = t;
      }
      const auto before = [&](index_t i, index_t j) { return score[i] > score[j] || (score[i] == score[j] && i < j); };
      std::nth_element(order.begin(), order.begin() + keep, order.end(), before);
      std::sort(order.begin(), order.begin() + keep);
      for (index_t i = 0; i < keep; ++i) {
        kept(b, i) = order[i];
        for (index_t c = 0; c < C; ++c) pooled(b, i, c) = x(b, order[i], c);
      }
    }
  });
}

/// Which tokens enter a global channel's state under LongMamba's selective accumulation.
enum class AccumulationRule {
  threshold,  ///< tokens with dt > options.threshold
  top_k,      ///< the options.top_k tokens of largest dt in each (batch row, channel), ties to the earlier
};
// A NaN dt is always selected (under top_k it ranks above every number, earlier NaNs first), so
// it reaches the state as selective_scan would take it instead of being hidden as dt = 0
// (docs/reliability.md); +-inf are ordinary values of the order.

/// Options of selective_accumulation.
struct SelectiveAccumulationOptions {
  /// Threshold or top-k selection (see AccumulationRule).
  AccumulationRule rule = AccumulationRule::threshold;
  /// dt a token must exceed (AccumulationRule::threshold), finite.
  float threshold = 0.f;
  /// Tokens kept per channel (AccumulationRule::top_k), >= 0; more than T keeps all.
  index_t top_k = 0;
};

/// LongMamba selective accumulation: dt_out = dt, except that in channels with global[d] != 0 the
/// tokens not selected by options get 0 (they then leave that channel's state untouched).
///   dt, dt_out [B,T,D] (dt_out may be the very dt view: in place), global [D] (0 = local channel)
/// Errors (ShapeError, before any write): shapes, a non-finite threshold, top_k < 0, dt_out
/// overlapping dt other than as the same view. Parallel over batch rows.
inline void selective_accumulation(ConstView<float, 3> dt, ConstView<std::uint8_t, 1> global, TensorView<float, 3> dt_out,
                                   const SelectiveAccumulationOptions& options = {},
                                   const Executor& executor = serial_executor()) {
  const ArgCheck check("selective_accumulation");
  check.enum_value("options.rule", options.rule, 2);
  check.shape("dt", dt, {-1, -1, -1}, "B,T,D");
  const index_t B = dt.size(0), T = dt.size(1), D = dt.size(2);
  check.shape("global", global, {D}, "D").shape("dt_out", dt_out, dt.shape(), "B,T,D");
  check.finite(options.threshold, "options.threshold");
  check.that(options.top_k >= 0, "options.top_k", "must be >= 0, got " + std::to_string(options.top_k));
  detail::check_in_place(check, "dt_out", dt_out, "dt", dt);
  check.no_overlap("dt_out", dt_out, "global", global);
  parallel_for(executor, B, 1, [&](index_t b0, index_t b1) {
    std::vector<index_t> order(static_cast<std::size_t>(T));
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(T));
    for (index_t b = b0; b < b1; ++b)
      for (index_t d = 0; d < D; ++d) {
        if (global(d) == 0) {
          for (index_t t = 0; t < T; ++t) dt_out(b, t, d) = dt(b, t, d);
          continue;
        }
        if (options.rule == AccumulationRule::threshold) {
          for (index_t t = 0; t < T; ++t) keep[t] = dt(b, t, d) > options.threshold || std::isnan(dt(b, t, d));
        } else {
          const index_t k = std::min(options.top_k, T);
          for (index_t t = 0; t < T; ++t) order[t] = t, keep[t] = 0;
          const auto before = [&](index_t i, index_t j) {
            const float di = dt(b, i, d), dj = dt(b, j, d);
            const bool nan_i = std::isnan(di), nan_j = std::isnan(dj);
            if (nan_i || nan_j) return nan_i && (!nan_j || i < j);  // a strict order with NaN first
            return di > dj || (di == dj && i < j);
          };
          std::nth_element(order.begin(), order.begin() + k, order.end(), before);
          for (index_t i = 0; i < k; ++i) keep[order[i]] = 1;
        }
        // Selection is complete before the first write: in place is safe.
        for (index_t t = 0; t < T; ++t) dt_out(b, t, d) = keep[t] ? dt(b, t, d) : 0.f;
      }
  });
}

}  // namespace seqmix
