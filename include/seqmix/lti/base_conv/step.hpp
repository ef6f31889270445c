// base_conv, decode step: one token per batch row; the projections of the new token, then
// long_conv_step of p2 against the last L-1 rows of p2 (the state a prefill returns as
// final_state), gated by p1. O(D^2 + L D) per token per row.
#pragma once

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/base_conv/reference.hpp"
#include "seqmix/lti/long_conv/step.hpp"

namespace seqmix {

/// Decode-step arguments: one token per batch row, parameters as in the prefill.
struct BaseConvStepInputs {
  ConstView<float, 2> u;       ///< [B,D]
  ConstView<float, 2> w1;      ///< [D,D]
  ConstView<float, 2> w2;      ///< [D,D]
  ConstView<float, 2> filter;  ///< [L,D], L >= 1
  ConstView<float, 1> b1 = {}; ///< [D], optional
  ConstView<float, 1> b2 = {}; ///< [D], optional
};

/// Step outputs: y overlaps no input nor the state.
struct BaseConvStepOutputs {
  TensorView<float, 2> y;      ///< [B,D]
  TensorView<float, 3> state;  ///< [B,L-1,D]: the last L-1 rows of p2, oldest first; read, then shifted by one row
};

/// One decode step: p1 = u w1 + b1, p2 = u w2 + b2, y = p1 * long_conv_step(p2 against state).
/// Validates everything before the first write; allocates the [B,2D] projections per call.
inline void base_conv_step(const BaseConvStepInputs& in, const BaseConvStepOutputs& out,
                           const Executor& executor = serial_executor()) {
  const ArgCheck check("base_conv_step");
  check.shape("u", in.u, {-1, -1}, "B,D");
  const index_t B = in.u.size(0), D = in.u.size(1);
  detail::base_conv_check_params(check, D, in.w1, in.w2, in.filter, in.b1, in.b2);
  const index_t L = in.filter.size(0);
  check.shape("y", out.y, {B, D}, "B,D").shape("state", out.state, {B, L - 1, D}, "B,L-1,D");
  detail::base_conv_check_no_input(check, "y", out.y, in.u, in.w1, in.w2, in.filter, in.b1, in.b2);
  detail::base_conv_check_no_input(check, "state", out.state, in.u, in.w1, in.w2, in.filter, in.b1, in.b2);
  check.no_overlap("y", out.y, "state", out.state);
  Tensor<float, 2> p1({B, D}), p2({B, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < D; ++j) {
      float a1 = in.b1.has_value() ? in.b1(j) : 0.f, a2 = in.b2.has_value() ? in.b2(j) : 0.f;
      for (index_t i = 0; i < D; ++i) {
        a1 += in.u(b, i) * in.w1(i, j);
        a2 += in.u(b, i) * in.w2(i, j);
      }
      p1(b, j) = a1;
      p2(b, j) = a2;
    }
  long_conv_step({p2.cview(), in.filter}, {out.y, out.state}, executor);
  for (index_t b = 0; b < B; ++b)
    for (index_t d = 0; d < D; ++d) out.y(b, d) *= p1(b, d);
}

}  // namespace seqmix
