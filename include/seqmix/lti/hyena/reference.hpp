// hyena: the order-N Hyena operator (issue 16 item 5) on projections and implicit filters the
// caller computed (the filter MLP and the short convolutions of the projections stay outside).
//
// This header holds the argument structs, their validation and the readable definition
// (seqmix::reference::hyena: direct convolutions in double). The fast prefill, with the long
// convolutions through lti/long_conv (FFT for long filters), is in fast.hpp, the decode step in
// step.hpp.
//
//   v [B,T,D], x [N,B,T,D] (x_n = x[n-1]), filters h [N,L,D] (L = T usually), skip [N,D] optional
//   z_1 = v
//   z_{n+1}[t,d] = x_n[t,d] * ( sum_{s<L, s<=t} h_n[s,d] z_n[t-s,d] + skip_n[d] z_n[t,d] )
//   y = z_{N+1}
// With initial_state [N,B,L-1,D] (order n's last L-1 rows of z_n before this segment, oldest
// first), the sum also reads those rows for t-s < 0; final_state holds the last L-1 rows of
// concat(initial_state[n], z_n), so segments and decode steps continue a prefill exactly.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {

/// Options of hyena (docs/operators.md, "hyena").
struct HyenaOptions {
  /// How each order's long convolution runs (long_conv's choice; automatic by default).
  LongConvMethod method = LongConvMethod::automatic;
  /// Run from the last token to the first (core/direction.hpp): v, x, y and scratch are reversed
  /// views, not copies, so every order's convolution is anti-causal (sum over s of h_n[s]
  /// z_n[t+s]). The states hold rows in processing order, as long_conv's (LongConvOptions::reverse):
  /// final_state[n] row r is z_n[L-2-r], initial_state[n] row L-2 the row processed just before
  /// token T-1. The steps (hyena_step) have no direction.
  bool reverse = false;
};

/// Prefill arguments. The order N is x.size(0) = filter.size(0).
struct HyenaInputs {
  ConstView<float, 3> v;             ///< [B,T,D]: the value projection, z_1
  ConstView<float, 4> x;             ///< [N,B,T,D]: the gating projections x_1..x_N (any strides, e.g. slices of one [B,T,(N+1)D] projection)
  ConstView<float, 3> filter;        ///< [N,L,D], L >= 1: order n's implicit filter, tap 0 multiplies the newest z_n
  ConstView<float, 2> skip = {};     ///< [N,D], optional: the filters' per-order bias (h_n (*) z_n + skip_n z_n)
  ConstView<float, 4> initial_state = {};  ///< [N,B,L-1,D], optional (zero): each order's last L-1 rows of z_n, oldest first
};

/// Outputs. y must overlap no input; scratch (needed for N >= 2, allocated per call when absent)
/// must overlap nothing else.
struct HyenaOutputs {
  TensorView<float, 3> y;                ///< [B,T,D]: the last order's output z_(N+1)
  TensorView<float, 3> scratch = {};     ///< [B,T,D], optional: the intermediate z_n; contents undefined after the call
  TensorView<float, 4> final_state = {}; ///< [N,B,L-1,D], optional: the state after the call; may be the very initial_state view
};

namespace detail {

struct HyenaDims {
  index_t N, B, T, D, L;
};

// An output of the prefill or the step must not overlap v, x, the filters or the skip, which are
// still read while it is written (v, x of rank 3 or 2).
template <class Output, class V, class X, class Filter, class Skip>
void hyena_check_no_input(const ArgCheck& check, const char* name, const Output& output, const V& v, const X& x,
                          const Filter& filter, const Skip& skip) {
  check.no_overlap(name, output, "v", v).no_overlap(name, output, "x", x);
  check.no_overlap(name, output, "filter", filter).no_overlap(name, output, "skip", skip);
}

// Every order's filter taps and skip are finite (checked before the first order writes).
inline void hyena_check_finite(const ArgCheck& check, const ConstView<float, 3>& filter, const ConstView<float, 2>& skip) {
  const index_t N = filter.size(0), L = filter.size(1), D = filter.size(2);
  for (index_t n = 0; n < N; ++n) {
    for (index_t s = 0; s < L; ++s)
      for (index_t d = 0; d < D; ++d)
        if (!std::isfinite(filter(n, s, d)))
          check.fail("filter", "must be finite, element [" + std::to_string(n) + ", " + std::to_string(s) + ", " +
                                   std::to_string(d) + "] is " + std::to_string(filter(n, s, d)));
    if (skip.has_value())
      for (index_t d = 0; d < D; ++d)
        if (!std::isfinite(skip(n, d)))
          check.fail("skip", "must be finite, element [" + std::to_string(n) + ", " + std::to_string(d) + "] is " +
                                 std::to_string(skip(n, d)));
  }
}

template <class A, class B>
bool hyena_same_view(const A& a, const B& b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

// Validates a prefill call (shared by every form), before anything is written: a later order's
// bad filter must not be found after earlier orders wrote y.
inline HyenaDims validate_hyena(const char* op, const HyenaInputs& in, const HyenaOutputs& out,
                                const HyenaOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.method", options.method, 3);
  check.shape("v", in.v, {-1, -1, -1}, "B,T,D");
  const index_t B = in.v.size(0), T = in.v.size(1), D = in.v.size(2);
  check.shape("x", in.x, {-1, B, T, D}, "N,B,T,D");
  const index_t N = in.x.size(0);
  if (N < 1) check.fail("x", "must hold at least one order (N >= 1), got shape " + shape_to_string(in.x.shape()));
  check.shape("filter", in.filter, {N, -1, D}, "N,L,D");
  const index_t L = in.filter.size(1);
  if (L < 1) check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(in.filter.shape()));
  check.optional_shape("skip", in.skip, {N, D}, "N,D");
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  check.optional_shape("scratch", out.scratch, {B, T, D}, "B,T,D");
  check.optional_shape("initial_state", in.initial_state, {N, B, L - 1, D}, "N,B,L-1,D");
  check.optional_shape("final_state", out.final_state, {N, B, L - 1, D}, "N,B,L-1,D");
  hyena_check_finite(check, in.filter, in.skip);
  // y, scratch and the final state are written while the inputs (and the later orders' initial
  // states) are still read.
  hyena_check_no_input(check, "y", out.y, in.v, in.x, in.filter, in.skip);
  hyena_check_no_input(check, "scratch", out.scratch, in.v, in.x, in.filter, in.skip);
  hyena_check_no_input(check, "final_state", out.final_state, in.v, in.x, in.filter, in.skip);
  check.no_overlap("y", out.y, "initial_state", in.initial_state)
      .no_overlap("scratch", out.scratch, "initial_state", in.initial_state)
      .no_overlap("scratch", out.scratch, "y", out.y)
      .no_overlap("final_state", out.final_state, "y", out.y)
      .no_overlap("final_state", out.final_state, "scratch", out.scratch);
  if (!hyena_same_view(out.final_state, in.initial_state))
    check.no_overlap("final_state", out.final_state, "initial_state", in.initial_state);
  return {N, B, T, D, L};
}

}  // namespace detail

namespace detail {

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments (x is [N,B,T,D]: time is its dimension 2); states stay in processing order.
inline std::pair<HyenaInputs, HyenaOutputs> hyena_reversed_call(HyenaInputs in, HyenaOutputs out) {
  reverse_time_of(in.v, out.y, out.scratch);
  in.x = reversed_view(in.x, 2);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, order by order with direct convolutions, accumulated in double (the oracle
/// the fast form is tested against). O(N T L D); single-threaded, `executor` accepted for a
/// uniform signature. Validates first.
inline void hyena(const HyenaInputs& in, const HyenaOutputs& out, const HyenaOptions& options = {},
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::hyena_reversed_call(in, out);
    return hyena(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_hyena("reference::hyena", in, out, options);
  const index_t B = dims.B, T = dims.T, D = dims.D, S = dims.L - 1;
  // z holds xs = concat(state rows, z_n) per batch row: S + T rows.
  const auto at = [T, D, S](index_t b, index_t r, index_t d) {
    return static_cast<std::size_t>((b * (S + T) + S + r) * D + d);
  };
  std::vector<double> z(static_cast<std::size_t>(B * (S + T) * D)), next(z.size()), final_rows;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) z[at(b, t, d)] = in.v(b, t, d);
  for (index_t n = 0; n < dims.N; ++n) {
    for (index_t b = 0; b < B; ++b)
      for (index_t r = -S; r < 0; ++r)
        for (index_t d = 0; d < D; ++d)
          z[at(b, r, d)] = in.initial_state.has_value() ? double(in.initial_state(n, b, S + r, d)) : 0.0;
    // The last S rows of xs, kept until every order ran (final_state may be initial_state).
    for (index_t b = 0; b < B; ++b)
      for (index_t r = T - S; r < T; ++r)
        for (index_t d = 0; d < D; ++d) final_rows.push_back(z[at(b, r, d)]);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) {
          double acc = in.skip.has_value() ? double(in.skip(n, d)) * z[at(b, t, d)] : 0.0;
          for (index_t s = 0; s < dims.L; ++s) acc += double(in.filter(n, s, d)) * z[at(b, t - s, d)];
          next[at(b, t, d)] = double(in.x(n, b, t, d)) * acc;
        }
    z.swap(next);
  }
  if (out.final_state.has_value()) {
    std::size_t i = 0;
    for (index_t n = 0; n < dims.N; ++n)
      for (index_t b = 0; b < B; ++b)
        for (index_t r = 0; r < S; ++r)
          for (index_t d = 0; d < D; ++d) out.final_state(n, b, r, d) = static_cast<float>(final_rows[i++]);
  }
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) out.y(b, t, d) = static_cast<float>(z[at(b, t, d)]);
}

}  // namespace reference
}  // namespace seqmix
