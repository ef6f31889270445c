// LightNet's normalized decay (issue 23 item 4) as GLA gates: the additive recurrence
//
//   S_t = sum_{s<=t} exp(f_s) / Z_t  k_s v_s^T,      Z_t = sum_{s<=t} exp(f_s)
//       = (Z_{t-1} / Z_t) S_{t-1} + (exp(f_t) / Z_t) k_t v_t^T
//
// is GLA (S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T) with
//
//   g_t = log Z_{t-1} - log Z_t = -softplus(f_t - L_{t-1})        (the log-decay, <= 0)
//   w_t = exp(f_t) / Z_t       = exp(-softplus(L_{t-1} - f_t))     (the input weight, in (0, 1])
//   and k_t scaled by w_t,      L_t = log Z_t = logsumexp(f_1..f_t)
//
// all formed in log space, so no exp(f) is ever taken and nothing overflows, whatever f. Z is
// kept as the pair (m, s) with Z = exp(m) s, m the running max of f and s = sum exp(f - m) in
// [1, T], as online softmax keeps its denominator: g and w then come from differences of f's and
// m's (exact when they tie) and logs of s, so even f near 3e38 keeps full relative precision, which
// a single log Z (where 1e30 + log 2 rounds to 1e30) would not.
// normalized_decay_gates turns f into (g, w) and carries (m, s) across calls; the caller multiplies
// k by w (elementwise: per channel for channel gates, per head for scalar gates) and runs
// gated_linear_attention / simple_gla, or their steps, unchanged.
#pragma once

#include <cmath>
#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Arguments of normalized_decay_gates for gates of rank Rank: 4 for GLA's channel gates
/// f [B,T,Hg,K], 3 for scalar gates f [B,T,Hg]. The running log-normalizer has f's shape without T.
template <std::size_t Rank>
struct NormalizedDecayArgs {
  ConstView<float, Rank> f;             ///< [B,T,Hg(,K)] the unnormalized log-weights, finite
  TensorView<float, Rank> log_decay;    ///< out, f's shape: g_t for GLA's g / g_scalar (<= 0)
  TensorView<float, Rank> weight;       ///< out, f's shape: w_t in (0, 1], multiplies k
  /// [B,Hg(,K)], optional with running_sum, read and then updated in place: m, the max of every
  /// f before this call (-inf for a fresh row). Both empty: every row starts fresh, and GLA must
  /// then start from a zero state (the first token's decay g = 0 multiplies a zero state).
  TensorView<float, Rank - 1> running_max = {};
  /// [B,Hg(,K)], optional with running_max, in place: s = sum of exp(f - m) over every f before
  /// this call (0 for a fresh row; Z = exp(m) s).
  TensorView<float, Rank - 1> running_sum = {};
};

namespace detail {

// The most negative log-decay written. Below it exp(g) < 2^-127 (under float's normal range), and
// g < -88 means the new token's weight is 1 to within e^-88 too, so the state is k v^T plus a
// remainder below float resolution either way; the floor only keeps g finite and small, since
// chunked GLA forms differences of cumulative sums of g within a chunk (-inf there gives NaN,
// and a huge g would cancel the small ones after it).
constexpr double kNormalizedDecayFloor = -88.0;

// Element (b, t, c) of a [B,T,...] view, c enumerating the trailing dims row-major.
template <class View>
auto& normalized_at(const View& v, index_t b, index_t t, index_t c) {
  if constexpr (View::rank == 4)
    return v(b, t, c / v.size(3), c % v.size(3));
  else
    return v(b, t, c);
}

// Element (b, c) of the [B,...] running normalizer.
template <class View>
auto& normalized_row(const View& v, index_t b, index_t c) {
  if constexpr (View::rank == 3)
    return v(b, c / v.size(2), c % v.size(2));
  else
    return v(b, c);
}

}  // namespace detail

/// LightNet's normalized decay as GLA gates (definitions in the header comment). Rows (batch,
/// head(, channel)) run in parallel over the executor, each a sequential pass in double.
/// Errors (ShapeError, before any write): shapes, a non-finite f, a running normalizer given half
/// or not a valid (max, sum) pair, outputs overlapping an input or each other.
template <std::size_t Rank>
void normalized_decay_gates(const NormalizedDecayArgs<Rank>& args, const Executor& executor = serial_executor()) {
  static_assert(Rank == 3 || Rank == 4, "f is [B,T,Hg] (scalar gates) or [B,T,Hg,K] (channel gates)");
  const ArgCheck check("normalized_decay_gates");
  const char* dims = Rank == 4 ? "B,T,Hg,K" : "B,T,Hg";
  std::array<index_t, Rank> any{};
  any.fill(-1);
  check.shape("f", args.f, any, dims);
  check.shape("log_decay", args.log_decay, args.f.shape(), dims).shape("weight", args.weight, args.f.shape(), dims);
  const index_t B = args.f.size(0), T = args.f.size(1);
  std::array<index_t, Rank - 1> row_shape{};
  row_shape[0] = B;
  index_t C = 1;
  for (std::size_t d = 2; d < Rank; ++d) row_shape[d - 1] = args.f.size(d), C *= args.f.size(d);
  const char* row_dims = Rank == 4 ? "B,Hg,K" : "B,Hg";
  check.optional_shape("running_max", args.running_max, row_shape, row_dims)
      .optional_shape("running_sum", args.running_sum, row_shape, row_dims);
  if (args.running_max.has_value() != args.running_sum.has_value())
    check.fail(args.running_max.has_value() ? "running_sum" : "running_max",
               "must be given together with the other half of the running normalizer");
  check.no_overlap("log_decay", args.log_decay, "f", args.f)
      .no_overlap("weight", args.weight, "f", args.f)
      .no_overlap("weight", args.weight, "log_decay", args.log_decay);
  const std::pair<const char*, TensorView<float, Rank - 1>> running[] = {{"running_max", args.running_max},
                                                                         {"running_sum", args.running_sum}};
  for (const auto& r : running)
    check.no_overlap(r.first, r.second, "f", args.f)
        .no_overlap(r.first, r.second, "log_decay", args.log_decay)
        .no_overlap(r.first, r.second, "weight", args.weight);
  check.no_overlap("running_max", args.running_max, "running_sum", args.running_sum);
  const bool carried = args.running_max.has_value();
  for (index_t b = 0; b < B; ++b)
    for (index_t c = 0; c < C; ++c) {
      for (index_t t = 0; t < T; ++t)
        if (!std::isfinite(detail::normalized_at(args.f, b, t, c)))
          check.fail("f", "must be finite, got " + std::to_string(detail::normalized_at(args.f, b, t, c)) +
                              " at batch " + std::to_string(b) + ", token " + std::to_string(t));
      if (!carried) continue;
      const float m = detail::normalized_row(args.running_max, b, c), s = detail::normalized_row(args.running_sum, b, c);
      const bool fresh = m == -std::numeric_limits<float>::infinity() && s == 0.f;
      if (!fresh && !(std::isfinite(m) && s >= 1.f && std::isfinite(s)))
        check.fail("running_max", "and running_sum must be a fresh row (-inf, 0) or finite with sum >= 1, got (" +
                                      std::to_string(m) + ", " + std::to_string(s) + ")");
    }
  parallel_for(executor, B * C, 16, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / C, c = r % C;
      double m = carried ? double(detail::normalized_row(args.running_max, b, c)) : -std::numeric_limits<double>::infinity();
      double s = carried ? double(detail::normalized_row(args.running_sum, b, c)) : 0.0;
      for (index_t t = 0; t < T; ++t) {
        const double f = detail::normalized_at(args.f, b, t, c);
        double g = 0.0;  // a fresh row: nothing to decay (Z_{t-1} = 0 times a zero state)
        double s_new, m_new;
        if (s == 0.0) {
          m_new = f, s_new = 1.0;
        } else {
          m_new = std::max(m, f);
          const double kept = s * std::exp(m - m_new);  // Z_{t-1} / exp(m_new)
          s_new = kept + std::exp(f - m_new);
          g = std::log(kept) - std::log(s_new);  // log(Z_{t-1} / Z_t); -inf only if kept underflows
          g = std::max(g, detail::kNormalizedDecayFloor);
        }
        detail::normalized_at(args.log_decay, b, t, c) = static_cast<float>(std::min(g, 0.0));
        detail::normalized_at(args.weight, b, t, c) = static_cast<float>(std::exp(f - m_new) / s_new);
        m = m_new, s = s_new;
      }
      if (carried) {
        detail::normalized_row(args.running_max, b, c) = static_cast<float>(m);
        detail::normalized_row(args.running_sum, b, c) = static_cast<float>(s);
      }
    }
  });
}

}  // namespace seqmix
