// ssm_kernel's recurrent form, the decode step of a diagonal LTI state space model with a complex
// state: x = A_bar x + B_bar u, y = c Re(C x) + skip u. Its outputs over a sequence equal the
// convolution of the inputs with ssm_kernel's kernel (plus skip u).
#pragma once

#include <algorithm>
#include <string>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"

namespace seqmix {

/// Decode-step arguments: one input per batch row and channel, the discretized system
/// (ssm_discretize) and the output matrix.
struct SsmStepInputs {
  ConstView<float, 2> u;           ///< [B,H]
  ConstView<float, 2> A_bar_real;  ///< [H,N]
  ConstView<float, 2> A_bar_imag;  ///< [H,N]
  ConstView<float, 2> B_bar_real;  ///< [H,N]
  ConstView<float, 2> B_bar_imag;  ///< [H,N]
  ConstView<float, 2> C_real;      ///< [H,N]
  ConstView<float, 2> C_imag = {}; ///< [H,N], optional (zero)
  ConstView<float, 1> skip = {};   ///< [H], optional: y += skip[h] u[b,h]
};

/// The complex state is read and updated in place; y must overlap no input nor the state.
struct SsmStepOutputs {
  TensorView<float, 2> y;           ///< [B,H]
  TensorView<float, 3> state_real;  ///< [B,H,N]
  TensorView<float, 3> state_imag;  ///< [B,H,N]
};

namespace detail {

// Below this many state updates a step stays on the calling thread.
constexpr index_t kSsmStepMinParallelWork = 64 * 1024;

inline void validate_ssm_step(const ArgCheck& check, const SsmStepInputs& in, const SsmStepOutputs& out,
                              const SsmKernelOptions& options) {
  check.enum_value("options.symmetry", options.symmetry, 2);
  check.shape("u", in.u, {-1, -1}, "B,H");
  const index_t B = in.u.size(0), H = in.u.size(1);
  check.shape("A_bar_real", in.A_bar_real, {H, -1}, "H,N");
  const index_t N = in.A_bar_real.size(1);
  check.shape("A_bar_imag", in.A_bar_imag, {H, N}, "H,N")
      .shape("B_bar_real", in.B_bar_real, {H, N}, "H,N")
      .shape("B_bar_imag", in.B_bar_imag, {H, N}, "H,N")
      .shape("C_real", in.C_real, {H, N}, "H,N")
      .optional_shape("C_imag", in.C_imag, {H, N}, "H,N")
      .optional_shape("skip", in.skip, {H}, "H")
      .shape("y", out.y, {B, H}, "B,H")
      .shape("state_real", out.state_real, {B, H, N}, "B,H,N")
      .shape("state_imag", out.state_imag, {B, H, N}, "B,H,N");
  const std::pair<const char*, ConstView<float, 2>> inputs[] = {
      {"u", in.u},           {"A_bar_real", in.A_bar_real}, {"A_bar_imag", in.A_bar_imag},
      {"B_bar_real", in.B_bar_real}, {"B_bar_imag", in.B_bar_imag}, {"C_real", in.C_real}, {"C_imag", in.C_imag}};
  for (const auto& input : inputs) {
    if (views_overlap(out.y, input.second)) check.fail("y", std::string("overlaps input '") + input.first + "'");
    if (views_overlap(out.state_real, input.second))
      check.fail("state_real", std::string("overlaps input '") + input.first + "'");
    if (views_overlap(out.state_imag, input.second))
      check.fail("state_imag", std::string("overlaps input '") + input.first + "'");
  }
  if (views_overlap(out.y, in.skip)) check.fail("y", "overlaps input 'skip'");
  if (views_overlap(out.y, out.state_real) || views_overlap(out.y, out.state_imag))
    check.fail("y", "overlaps the state");
  if (views_overlap(out.state_real, out.state_imag)) check.fail("state_imag", "overlaps 'state_real'");
}

// Batch row b, channel h: the N complex states advance, then y = c Re(C x) + skip u. With
// contiguous rows (the usual layout) the loop runs on raw pointers, which the compiler
// vectorizes; any other strides go element by element.
inline void ssm_step_channel(const SsmStepInputs& in, const SsmStepOutputs& out, float scale, index_t b, index_t h) {
  const index_t N = in.A_bar_real.size(1);
  const float u = in.u(b, h);
  float y = 0.f;
  const bool contiguous = in.A_bar_real.stride(1) == 1 && in.A_bar_imag.stride(1) == 1 && in.B_bar_real.stride(1) == 1 &&
                          in.B_bar_imag.stride(1) == 1 && in.C_real.stride(1) == 1 &&
                          (!in.C_imag.has_value() || in.C_imag.stride(1) == 1) && out.state_real.stride(2) == 1 &&
                          out.state_imag.stride(2) == 1;
  if (contiguous) {
    const float* __restrict ar = in.A_bar_real.ptr(h);
    const float* __restrict ai = in.A_bar_imag.ptr(h);
    const float* __restrict br = in.B_bar_real.ptr(h);
    const float* __restrict bi = in.B_bar_imag.ptr(h);
    const float* __restrict cr = in.C_real.ptr(h);
    const float* __restrict ci = in.C_imag.has_value() ? in.C_imag.ptr(h) : nullptr;
    float* __restrict xr = out.state_real.ptr(b, h);
    float* __restrict xi = out.state_imag.ptr(b, h);
    for (index_t n = 0; n < N; ++n) {
      const float nr = ar[n] * xr[n] - ai[n] * xi[n] + br[n] * u;
      const float ni = ar[n] * xi[n] + ai[n] * xr[n] + bi[n] * u;
      xr[n] = nr, xi[n] = ni;
      y += cr[n] * nr;
    }
    if (ci != nullptr)
      for (index_t n = 0; n < N; ++n) y -= ci[n] * xi[n];
  } else {
    for (index_t n = 0; n < N; ++n) {
      const float xr = out.state_real(b, h, n), xi = out.state_imag(b, h, n);
      const float ar = in.A_bar_real(h, n), ai = in.A_bar_imag(h, n);
      const float nr = ar * xr - ai * xi + in.B_bar_real(h, n) * u;
      const float ni = ar * xi + ai * xr + in.B_bar_imag(h, n) * u;
      out.state_real(b, h, n) = nr, out.state_imag(b, h, n) = ni;
      y += in.C_real(h, n) * nr - (in.C_imag.has_value() ? in.C_imag(h, n) * ni : 0.f);
    }
  }
  out.y(b, h) = scale * y + (in.skip.has_value() ? in.skip(h) * u : 0.f);
}

}  // namespace detail

/// Decode step: advances the complex state [B,H,N] by one input per batch row and channel and
/// writes y [B,H]. O(H N) per row; threaded over (batch, channel) once the step is large enough.
/// No heap allocation. Validates shapes and overlaps (ShapeError before any write); the
/// discretized system is taken as ssm_discretize wrote it (stable by its checks).
inline void ssm_step(const SsmStepInputs& in, const SsmStepOutputs& out, const SsmKernelOptions& options = {},
                     const Executor& executor = serial_executor()) {
  static const ArgCheck check("ssm_step");
  detail::validate_ssm_step(check, in, out, options);
  const index_t B = in.u.size(0), H = in.u.size(1), N = in.A_bar_real.size(1);
  const float scale = static_cast<float>(detail::ssm_output_scale(options));
  const auto body = [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) detail::ssm_step_channel(in, out, scale, i / H, i % H);
  };
  if (B * H * N < detail::kSsmStepMinParallelWork) {
    body(0, B * H);
    return;
  }
  parallel_for(executor, B * H, 16, body);
}

}  // namespace seqmix
