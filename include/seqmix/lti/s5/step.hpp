// s5, decode step: one token per batch row through the recurrence, x = Lambda_bar x + B_bar u,
// y = c Re(C x) + D u, with the complex state [B,P] updated in place.
#pragma once

#include <complex>
#include <string>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/s5/reference.hpp"

namespace seqmix {

namespace detail {

// sum_j m[r, j] v[b, j]: one SIMD dot product when both rows are contiguous.
template <class V>
inline float s5_row_dot(const ConstView<float, 2>& m, index_t r, const V& v, index_t b) noexcept {
  const index_t n = m.size(1);
  if (m.stride(1) == 1 && v.stride(1) == 1) return simd::dot(m.ptr(r), v.ptr(b), n);
  float sum = 0.f;
  for (index_t j = 0; j < n; ++j) sum += m(r, j) * v(b, j);
  return sum;
}

}  // namespace detail

/// Decode-step arguments: one input per batch row.
struct S5StepInputs {
  ConstView<float, 2> u;  ///< [B,H]
  /// [B], optional, finite and > 0: this token's step factor (S5Inputs::timestep's column);
  /// state p of row b is discretized with dt[p] * timestep(b). Empty: 1.
  ConstView<float, 1> timestep = {};
};

/// The state is read and updated in place; y must overlap no input nor the state.
struct S5StepOutputs {
  TensorView<float, 2> y;           ///< [B,H]
  TensorView<float, 2> state_real;  ///< [B,P]
  TensorView<float, 2> state_imag;  ///< [B,P]
};

/// Decode step: same parameters and options as s5. B_bar is never formed: row p of B_bar is
/// B's row p times the scalar (Lambda_bar_p - 1) / Lambda_p (ZOH) or dt_p / (1 - dt_p Lambda_p / 2)
/// (bilinear), computed in double per state and step (at dt_p * in.timestep(b) with a timestep).
/// O(P H) per batch row, no heap allocation; single-threaded (`executor` is accepted for a uniform signature).
inline void s5_step(const S5Params& params, const S5StepInputs& in, const S5StepOutputs& out,
                    const SsmKernelOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  static const ArgCheck check("s5_step");
  check.shape("u", in.u, {-1, -1}, "B,H");
  const index_t B = in.u.size(0), H = in.u.size(1);
  const index_t P = detail::validate_s5_params(check, params, H, options).P;
  check.optional_shape("timestep", in.timestep, {B}, "B")
      .shape("y", out.y, {B, H}, "B,H")
      .shape("state_real", out.state_real, {B, P}, "B,P")
      .shape("state_imag", out.state_imag, {B, P}, "B,P");
  if (views_overlap(out.y, in.u) || views_overlap(out.y, out.state_real) || views_overlap(out.y, out.state_imag))
    check.fail("y", "overlaps 'u' or the state; pass a separate buffer");
  if (views_overlap(out.state_real, out.state_imag) || views_overlap(out.state_real, in.u) ||
      views_overlap(out.state_imag, in.u))
    check.fail("state_real", "overlaps 'state_imag' or 'u'");
  if (views_overlap(out.y, in.timestep) || views_overlap(out.state_real, in.timestep) ||
      views_overlap(out.state_imag, in.timestep))
    check.fail("y", "an output overlaps 'timestep'");
  detail::validate_s5_timestep(check, in.timestep);
  const double scale = detail::ssm_output_scale(options);
  for (index_t b = 0; b < B; ++b) {
    for (index_t i = 0; i < P; ++i) {
      const detail::SsmComplex lambda = detail::s5_value(params.Lambda_real, params.Lambda_imag, i);
      const double dt = double(params.dt(i)) * (in.timestep.has_value() ? double(in.timestep(b)) : 1.0);
      detail::SsmComplex A_bar, factor;
      detail::s5_discretize_state(lambda, dt, options.discretization, A_bar, factor);
      const float bu_re = detail::s5_row_dot(params.B_real, i, in.u, b);
      const float bu_im = params.B_imag.has_value() ? detail::s5_row_dot(params.B_imag, i, in.u, b) : 0.f;
      const detail::SsmComplex x = A_bar * detail::SsmComplex(out.state_real(b, i), out.state_imag(b, i)) +
                                   factor * detail::SsmComplex(bu_re, bu_im);
      out.state_real(b, i) = static_cast<float>(x.real()), out.state_imag(b, i) = static_cast<float>(x.imag());
    }
    for (index_t h = 0; h < H; ++h) {
      float y = detail::s5_row_dot(params.C_real, h, out.state_real, b);
      if (params.C_imag.has_value()) y -= detail::s5_row_dot(params.C_imag, h, out.state_imag, b);
      out.y(b, h) = static_cast<float>(scale * y) + (params.D.has_value() ? params.D(h) * in.u(b, h) : 0.f);
    }
  }
}

}  // namespace seqmix
