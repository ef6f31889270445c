// hyena, distilled decode step (issue 16 item 5): each order's long convolution replaced by the
// modal recurrence hyena_distill fitted to its filter, run by ssm_step (lti/ssm_kernel/step.hpp):
// O(N D M) per token and an [N,B,D,M] complex state, instead of hyena_step's O(N L D) and
// [N,B,L-1,D] history. Its outputs are those of hyena with the filters replaced by their modal
// fits (within the fit error reported by hyena_distill).
#pragma once

#include <cmath>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/distill.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"

namespace seqmix {

/// The distilled filters as hyena_distill wrote them ([N,D,M], feedthrough [N,D]).
struct HyenaModalFilters {
  ConstView<float, 3> pole_real;    ///< [N,D,M]
  ConstView<float, 3> pole_imag;    ///< [N,D,M]
  ConstView<float, 3> gain_real;    ///< [N,D,M]
  ConstView<float, 3> gain_imag;    ///< [N,D,M]
  ConstView<float, 2> feedthrough;  ///< [N,D]: tap 0 and the skip, minus the modes' lag-0 sum
};

/// Distilled decode-step arguments: one token per batch row.
struct HyenaDistilledStepInputs {
  ConstView<float, 2> v;        ///< [B,D]
  ConstView<float, 3> x;        ///< [N,B,D]
  HyenaModalFilters filters;    ///< from hyena_distill
};

/// Distilled step outputs: y and scratch overlap no input nor the state.
struct HyenaDistilledStepOutputs {
  TensorView<float, 2> y;             ///< [B,D]
  TensorView<float, 4> state_real;    ///< [N,B,D,M]: each order's modal state (zero before the first token), updated in place
  TensorView<float, 4> state_imag;    ///< [N,B,D,M]
  TensorView<float, 2> scratch = {};  ///< [B,D], optional for N >= 2 (allocated per call when absent)
};

namespace detail {

// The modal filters of N orders and D channels: shapes, finite values, every pole strictly inside
// the unit circle. Returns M. Shared by hyena_distilled_step and hyena_distilled_prefill.
inline index_t hyena_check_modal_filters(const ArgCheck& check, const HyenaModalFilters& f, index_t N, index_t D) {
  check.shape("filters.pole_real", f.pole_real, {N, D, -1}, "N,D,M");
  const index_t M = f.pole_real.size(2);
  check.shape("filters.pole_imag", f.pole_imag, {N, D, M}, "N,D,M")
      .shape("filters.gain_real", f.gain_real, {N, D, M}, "N,D,M")
      .shape("filters.gain_imag", f.gain_imag, {N, D, M}, "N,D,M")
      .shape("filters.feedthrough", f.feedthrough, {N, D}, "N,D");
  for (index_t n = 0; n < N; ++n)
    for (index_t d = 0; d < D; ++d) {
      const auto where = [&](index_t k) {
        return "element [" + std::to_string(n) + ", " + std::to_string(d) + ", " + std::to_string(k) + "]";
      };
      if (!std::isfinite(f.feedthrough(n, d)))
        check.fail("filters.feedthrough", "must be finite, element [" + std::to_string(n) + ", " + std::to_string(d) + "] is not");
      for (index_t k = 0; k < M; ++k) {
        const float pr = f.pole_real(n, d, k), pi = f.pole_imag(n, d, k);
        if (!std::isfinite(f.gain_real(n, d, k)) || !std::isfinite(f.gain_imag(n, d, k)))
          check.fail("filters.gain_real", "must be finite (with gain_imag), " + where(k) + " is not");
        if (!(double(pr) * pr + double(pi) * pi < 1.0))
          check.fail("filters.pole_real", "poles must be finite and inside the unit circle, " + where(k) + " is (" +
                                              std::to_string(pr) + ", " + std::to_string(pi) + ")");
      }
    }
  return M;
}

}  // namespace detail

/// One decode step of the distilled Hyena: z_1 = v, z_{n+1} = x_n * (modal recurrence of order n
/// on z_n + feedthrough_n z_n), y = z_{N+1}. Validates everything (shapes, finite filters,
/// |pole| < 1, overlaps) before the first write; each order then runs ssm_step.
inline void hyena_distilled_step(const HyenaDistilledStepInputs& in, const HyenaDistilledStepOutputs& out,
                                 const Executor& executor = serial_executor()) {
  const ArgCheck check("hyena_distilled_step");
  check.shape("v", in.v, {-1, -1}, "B,D");
  const index_t B = in.v.size(0), D = in.v.size(1);
  check.shape("x", in.x, {-1, B, D}, "N,B,D");
  const index_t N = in.x.size(0);
  if (N < 1) check.fail("x", "must hold at least one order (N >= 1), got shape " + shape_to_string(in.x.shape()));
  const HyenaModalFilters& f = in.filters;
  const index_t M = detail::hyena_check_modal_filters(check, f, N, D);
  check.shape("y", out.y, {B, D}, "B,D")
      .shape("state_real", out.state_real, {N, B, D, M}, "N,B,D,M")
      .shape("state_imag", out.state_imag, {N, B, D, M}, "N,B,D,M")
      .optional_shape("scratch", out.scratch, {B, D}, "B,D");
  const std::pair<const char*, TensorView<float, 4>> states[] = {{"state_real", out.state_real}, {"state_imag", out.state_imag}};
  const std::pair<const char*, TensorView<float, 2>> rows[] = {{"y", out.y}, {"scratch", out.scratch}};
  const auto no_input = [&](const char* name, const auto& output) {
    check.no_overlap(name, output, "v", in.v).no_overlap(name, output, "x", in.x);
    check.no_overlap(name, output, "filters.pole_real", f.pole_real).no_overlap(name, output, "filters.pole_imag", f.pole_imag);
    check.no_overlap(name, output, "filters.gain_real", f.gain_real).no_overlap(name, output, "filters.gain_imag", f.gain_imag);
    check.no_overlap(name, output, "filters.feedthrough", f.feedthrough);
  };
  for (const auto& s : states) no_input(s.first, s.second);
  for (const auto& r : rows) {
    no_input(r.first, r.second);
    for (const auto& s : states) check.no_overlap(r.first, r.second, s.first, s.second);
  }
  check.no_overlap("state_imag", out.state_imag, "state_real", out.state_real).no_overlap("scratch", out.scratch, "y", out.y);
  Tensor<float, 2> owned;
  TensorView<float, 2> scratch = out.scratch;
  if (N >= 2 && !scratch.has_value()) {
    owned = Tensor<float, 2>({B, D});
    scratch = owned.view();
  }
  ConstView<float, 2> z = in.v;
  for (index_t n = 0; n < N; ++n) {
    const TensorView<float, 2> target = (N - 1 - n) % 2 == 0 ? out.y : scratch;
    const ConstView<float, 2> gain_real = f.gain_real.select(0, n), gain_imag = f.gain_imag.select(0, n);
    const SsmStepInputs args{z,         f.pole_real.select(0, n), f.pole_imag.select(0, n), gain_real, gain_imag,
                             gain_real, gain_imag,                f.feedthrough.select(0, n)};
    ssm_step(args, {target, out.state_real.select(0, n), out.state_imag.select(0, n)}, {}, executor);
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) target(b, d) *= in.x(n, b, d);
    z = target;
  }
}

}  // namespace seqmix
