// base_conv: Zoology's BaseConv (Arora et al. 2023, issue 16 item 6): a linear projection gating
// a causal long convolution of a second projection, with the caller's projection weights and
// long filter.
//
//   p1 = u W1 + b1,  p2 = u W2 + b2                       (u [B,T,D], W1, W2 [D,D], b1, b2 [D] optional)
//   y[t,d] = p1[t,d] * sum_{s<L, s<=t} h[s,d] p2[t-s,d]     (h [L,D], tap 0 multiplies the newest p2)
//
// With initial_state [B,L-1,D] (the last L-1 rows of p2 before this segment, oldest first) the
// sum also reads those rows for t-s < 0; final_state holds the last L-1 rows of
// concat(initial_state, p2), long_conv's state, so segments and decode steps continue a prefill.
// options.reverse: the same on reversed views of u and y (core/direction.hpp), so the convolution
// is anti-causal and the states hold p2 rows in processing order, as long_conv's reverse.
// This header holds the argument structs, their validation and the readable definition
// (seqmix::reference::base_conv, loops in double); the fast prefill is in fast.hpp, the decode
// step in step.hpp.
#pragma once

#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {

/// Options of base_conv (docs/operators.md, "base_conv").
struct BaseConvOptions {
  /// How the long convolution runs (long_conv's choice; automatic by default).
  LongConvMethod method = LongConvMethod::automatic;
  /// Run from the last token to the first (core/direction.hpp): u and y are reversed views, not
  /// copies, so y[t] = p1[t] * sum_s h[s] p2[t+s] (anti-causal). The states hold p2 rows in
  /// processing order (LongConvOptions::reverse): final_state row r is p2[L-2-r]. base_conv_step
  /// has no direction: fed tokens T'-1, T'-2, ... it continues a reverse prefill.
  bool reverse = false;
};

/// Prefill arguments. Optional views are empty when not given.
struct BaseConvInputs {
  ConstView<float, 3> u;                   ///< [B,T,D]
  ConstView<float, 2> w1;                  ///< [D,D]: the gate's projection, p1 = u w1 + b1
  ConstView<float, 2> w2;                  ///< [D,D]: the convolved projection, p2 = u w2 + b2
  ConstView<float, 2> filter;              ///< [L,D], L >= 1: the causal long filter, tap 0 multiplies the newest p2
  ConstView<float, 1> b1 = {};             ///< [D], optional
  ConstView<float, 1> b2 = {};             ///< [D], optional
  ConstView<float, 3> initial_state = {};  ///< [B,L-1,D], optional (zero): the last L-1 rows of p2, oldest first
};

/// Outputs: y overlaps no input; final_state may be the very initial_state view.
struct BaseConvOutputs {
  TensorView<float, 3> y;                  ///< [B,T,D]
  TensorView<float, 3> final_state = {};   ///< [B,L-1,D], optional: the last L-1 rows of concat(initial_state, p2)
};

namespace detail {

struct BaseConvDims {
  index_t B, T, D, L;
};

template <class A, class B>
bool base_conv_same_view(const A& a, const B& b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

// An output of the prefill or the step must not overlap any input (u of rank 3 or 2).
template <class Output, class Input>
void base_conv_check_no_input(const ArgCheck& check, const char* name, const Output& output, const Input& u,
                              const ConstView<float, 2>& w1, const ConstView<float, 2>& w2,
                              const ConstView<float, 2>& filter, const ConstView<float, 1>& b1,
                              const ConstView<float, 1>& b2) {
  check.no_overlap(name, output, "u", u)
      .no_overlap(name, output, "w1", w1)
      .no_overlap(name, output, "w2", w2)
      .no_overlap(name, output, "filter", filter)
      .no_overlap(name, output, "b1", b1)
      .no_overlap(name, output, "b2", b2);
}

// The parameters shared by the prefill and the step: shapes and finite filter / weights / biases.
inline void base_conv_check_params(const ArgCheck& check, index_t D, const ConstView<float, 2>& w1,
                                   const ConstView<float, 2>& w2, const ConstView<float, 2>& filter,
                                   const ConstView<float, 1>& b1, const ConstView<float, 1>& b2) {
  check.shape("w1", w1, {D, D}, "D,D").shape("w2", w2, {D, D}, "D,D");
  check.shape("filter", filter, {-1, D}, "L,D");
  if (filter.size(0) < 1)
    check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(filter.shape()));
  check.optional_shape("b1", b1, {D}, "D").optional_shape("b2", b2, {D}, "D");
  check_finite_filter(check, "filter", filter);
  check_finite_filter(check, "w1", w1);
  check_finite_filter(check, "w2", w2);
  if (b1.has_value()) check_finite_vector(check, "b1", b1);
  if (b2.has_value()) check_finite_vector(check, "b2", b2);
}

// Validates a prefill call (shared by both forms) before anything is written.
inline BaseConvDims validate_base_conv(const char* op, const BaseConvInputs& in, const BaseConvOutputs& out,
                                       const BaseConvOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.method", options.method, 3);
  check.shape("u", in.u, {-1, -1, -1}, "B,T,D");
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2);
  base_conv_check_params(check, D, in.w1, in.w2, in.filter, in.b1, in.b2);
  const index_t L = in.filter.size(0);
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  check.optional_shape("initial_state", in.initial_state, {B, L - 1, D}, "B,L-1,D");
  check.optional_shape("final_state", out.final_state, {B, L - 1, D}, "B,L-1,D");
  base_conv_check_no_input(check, "y", out.y, in.u, in.w1, in.w2, in.filter, in.b1, in.b2);
  base_conv_check_no_input(check, "final_state", out.final_state, in.u, in.w1, in.w2, in.filter, in.b1, in.b2);
  check.no_overlap("y", out.y, "initial_state", in.initial_state)
      .no_overlap("final_state", out.final_state, "y", out.y);
  if (!base_conv_same_view(out.final_state, in.initial_state))
    check.no_overlap("final_state", out.final_state, "initial_state", in.initial_state);
  return {B, T, D, L};
}

// A reverse call (options.reverse) as the forward call on reversed views of u and y.
inline std::pair<BaseConvInputs, BaseConvOutputs> base_conv_reversed_call(BaseConvInputs in, BaseConvOutputs out) {
  reverse_time_of(in.u, out.y);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition with direct loops in double: both projections, then the causal convolution of
/// p2 over concat(initial_state, p2), gated by p1. O(B T D (2 D + L)); single-threaded,
/// `executor` accepted for a uniform signature. Validates first.
inline void base_conv(const BaseConvInputs& in, const BaseConvOutputs& out, const BaseConvOptions& options = {},
                      const Executor& executor = serial_executor()) {
  (void)executor;
  if (options.reverse) {
    const auto rev = detail::base_conv_reversed_call(in, out);
    return base_conv(rev.first, rev.second, detail::forward_options(options));
  }
  const auto dims = detail::validate_base_conv("reference::base_conv", in, out, options);
  const index_t B = dims.B, T = dims.T, D = dims.D, L = dims.L, S = L - 1;
  // xs[b] = concat(state rows, p2): S + T rows.
  std::vector<double> p1(static_cast<std::size_t>(B * T * D)), xs(static_cast<std::size_t>(B * (S + T) * D));
  const auto at = [&](index_t b, index_t r, index_t d) { return static_cast<std::size_t>((b * (S + T) + S + r) * D + d); };
  for (index_t b = 0; b < B; ++b) {
    for (index_t r = -S; r < 0; ++r)
      for (index_t d = 0; d < D; ++d)
        xs[at(b, r, d)] = in.initial_state.has_value() ? double(in.initial_state(b, S + r, d)) : 0.0;
    for (index_t t = 0; t < T; ++t)
      for (index_t j = 0; j < D; ++j) {
        double a1 = in.b1.has_value() ? double(in.b1(j)) : 0.0, a2 = in.b2.has_value() ? double(in.b2(j)) : 0.0;
        for (index_t i = 0; i < D; ++i) {
          a1 += double(in.u(b, t, i)) * double(in.w1(i, j));
          a2 += double(in.u(b, t, i)) * double(in.w2(i, j));
        }
        p1[static_cast<std::size_t>((b * T + t) * D + j)] = a1;
        xs[at(b, t, j)] = a2;
      }
  }
  std::vector<double> y(p1.size());
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (index_t s = 0; s < L; ++s) acc += double(in.filter(s, d)) * xs[at(b, t - s, d)];
        y[static_cast<std::size_t>((b * T + t) * D + d)] = p1[static_cast<std::size_t>((b * T + t) * D + d)] * acc;
      }
  if (out.final_state.has_value())
    for (index_t b = 0; b < B; ++b)
      for (index_t r = 0; r < S; ++r)
        for (index_t d = 0; d < D; ++d) out.final_state(b, r, d) = static_cast<float>(xs[at(b, T - S + r, d)]);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) out.y(b, t, d) = static_cast<float>(y[static_cast<std::size_t>((b * T + t) * D + d)]);
}

}  // namespace reference
}  // namespace seqmix
