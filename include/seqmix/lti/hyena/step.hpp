// hyena, decode step: one token per batch row, each order's long convolution by long_conv_step
// against the last L-1 rows of its z_n (the state a prefill returns as final_state), so prefill
// then steps give the outputs of one call. O(N L D) per token: exact; the distilled O(N D M)
// recurrence is hyena_distilled_step (step_distilled.hpp).
#pragma once

#include <algorithm>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/reference.hpp"
#include "seqmix/lti/long_conv/step.hpp"

namespace seqmix {

/// Decode-step arguments: one token per batch row.
struct HyenaStepInputs {
  ConstView<float, 2> v;          ///< [B,D]
  ConstView<float, 3> x;          ///< [N,B,D]
  ConstView<float, 3> filter;     ///< [N,L,D], as in the prefill
  ConstView<float, 2> skip = {};  ///< [N,D], optional
};

/// Step outputs: y and scratch overlap no input nor the state.
struct HyenaStepOutputs {
  TensorView<float, 2> y;             ///< [B,D]
  TensorView<float, 4> state;         ///< [N,B,L-1,D]: each order's last L-1 rows of z_n, oldest first; read, then shifted by one row
  TensorView<float, 2> scratch = {};  ///< [B,D], optional for N >= 2 (allocated per call when absent)
};

/// One decode step: z_1 = v, z_{n+1} = x_n * (long_conv_step of z_n against state[n]), y =
/// z_{N+1}. Validates everything (every order's filter and state) before the first write.
inline void hyena_step(const HyenaStepInputs& in, const HyenaStepOutputs& out,
                       const Executor& executor = serial_executor()) {
  const ArgCheck check("hyena_step");
  check.shape("v", in.v, {-1, -1}, "B,D");
  const index_t B = in.v.size(0), D = in.v.size(1);
  check.shape("x", in.x, {-1, B, D}, "N,B,D");
  const index_t N = in.x.size(0);
  if (N < 1) check.fail("x", "must hold at least one order (N >= 1), got shape " + shape_to_string(in.x.shape()));
  check.shape("filter", in.filter, {N, -1, D}, "N,L,D");
  const index_t L = in.filter.size(1);
  if (L < 1) check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(in.filter.shape()));
  check.optional_shape("skip", in.skip, {N, D}, "N,D")
      .shape("y", out.y, {B, D}, "B,D")
      .shape("state", out.state, {N, B, L - 1, D}, "N,B,L-1,D")
      .optional_shape("scratch", out.scratch, {B, D}, "B,D");
  detail::hyena_check_finite(check, in.filter, in.skip);
  detail::hyena_check_no_input(check, "y", out.y, in.v, in.x, in.filter, in.skip);
  detail::hyena_check_no_input(check, "state", out.state, in.v, in.x, in.filter, in.skip);
  detail::hyena_check_no_input(check, "scratch", out.scratch, in.v, in.x, in.filter, in.skip);
  check.no_overlap("y", out.y, "state", out.state)
      .no_overlap("scratch", out.scratch, "state", out.state)
      .no_overlap("scratch", out.scratch, "y", out.y);
  Tensor<float, 2> owned;
  TensorView<float, 2> scratch = out.scratch;
  if (N >= 2 && !scratch.has_value()) {
    owned = Tensor<float, 2>({B, D});
    scratch = owned.view();
  }
  ConstView<float, 2> z = in.v;
  for (index_t n = 0; n < N; ++n) {
    const TensorView<float, 2> target = (N - 1 - n) % 2 == 0 ? out.y : scratch;
    LongConvStepInputs args{z, in.filter.select(0, n)};
    if (in.skip.has_value()) args.skip = in.skip.select(0, n);
    long_conv_step(args, {target, out.state.select(0, n)}, executor);
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) target(b, d) *= in.x(n, b, d);
    z = target;
  }
}

}  // namespace seqmix
