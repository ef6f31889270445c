// ssm_kernel: the convolution kernel of a linear time-invariant state space model with a
// diagonal (real or complex) state matrix, S4D (issue 16 item 2), and its discretization.
//
// This header holds the argument structs, validation, the discretization (ssm_discretize), the
// S4D initializations (ssm_init_diagonal) and the readable definition
// (seqmix::reference::ssm_kernel, a double Vandermonde loop). The fast kernel generation is in
// kernel.hpp, the recurrent decode step in step.hpp.
//
//   channel h, state n < N: lambda = A[h,n] (complex, Re(lambda) < 0), B[h,n], C[h,n] complex,
//   step dt[h] > 0
//   ZOH:      A_bar = exp(dt lambda),                 B_bar = (exp(dt lambda) - 1) / lambda * B
//   bilinear: A_bar = (1 + dt lambda/2)/(1 - dt lambda/2),  B_bar = dt / (1 - dt lambda/2) * B
//   kernel[l,h] = c * Re( sum_n C[h,n] B_bar[h,n] A_bar[h,n]^l ),  c = 2 with conjugate pairs, else 1
//   recurrence: x_t = A_bar x_{t-1} + B_bar u_t,  y_t = c Re(C x_t) = sum_{l<=t} kernel[l] u_{t-l}
#pragma once

#include <cmath>
#include <complex>
#include <string>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How the continuous system is discretized with step dt.
enum class SsmDiscretization {
  zoh,       ///< zero-order hold (S4D, Mamba): A_bar = exp(dt A)
  bilinear,  ///< Tustin (S4, LSSL): A_bar = (1 + dt A/2) / (1 - dt A/2)
};

/// Whether the N states stand for themselves or for N conjugate pairs (S4D keeps half of a
/// conjugate-symmetric spectrum and doubles the real part).
enum class SsmStateSymmetry {
  none,             ///< kernel = Re(sum_n ...)
  conjugate_pairs,  ///< kernel = 2 Re(sum_n ...): each state also stands for its conjugate
};

/// Options of ssm_kernel, ssm_discretize and ssm_step (docs/operators.md, "ssm_kernel").
struct SsmKernelOptions {
  /// zoh by default.
  SsmDiscretization discretization = SsmDiscretization::zoh;
  /// none by default.
  SsmStateSymmetry symmetry = SsmStateSymmetry::none;
};

/// Continuous parameters of H independent diagonal systems of N states. Complex values are two
/// planes; an empty imaginary plane means zero (a real diagonal A leaves A_imag empty).
struct SsmParams {
  ConstView<float, 2> A_real;       ///< [H,N], must be < 0 (stable)
  ConstView<float, 2> A_imag = {};  ///< [H,N], optional
  ConstView<float, 2> B_real;       ///< [H,N]
  ConstView<float, 2> B_imag = {};  ///< [H,N], optional
  ConstView<float, 2> C_real;       ///< [H,N]
  ConstView<float, 2> C_imag = {};  ///< [H,N], optional
  ConstView<float, 1> dt;           ///< [H], > 0 (the caller applies exp to a log_dt parameter)
};

/// Discretized system, written by ssm_discretize and read by ssm_step. All [H,N].
struct SsmDiscreteOutputs {
  TensorView<float, 2> A_bar_real;  ///< [H,N]
  TensorView<float, 2> A_bar_imag;  ///< [H,N]
  TensorView<float, 2> B_bar_real;  ///< [H,N]
  TensorView<float, 2> B_bar_imag;  ///< [H,N]
};

/// Initializations of a diagonal A (S4D paper, "On the Parameterization and Initialization of
/// Diagonal State Space Models"), for state n < N.
enum class SsmInit {
  s4d_lin,   ///< A_n = -1/2 + i pi n
  s4d_inv,   ///< A_n = -1/2 + i (N/pi) (N/(2n+1) - 1)
  s4d_real,  ///< A_n = -(n+1), real
};

namespace detail {

using SsmComplex = std::complex<double>;

struct SsmDims {
  index_t H, N;
};

inline SsmComplex ssm_value(const ConstView<float, 2>& re, const ConstView<float, 2>& im, index_t h, index_t n) {
  return {double(re(h, n)), im.has_value() ? double(im(h, n)) : 0.0};
}

inline void ssm_check_finite(const ArgCheck& check, const char* name, const ConstView<float, 2>& v) {
  for (index_t h = 0; h < v.size(0); ++h)
    for (index_t n = 0; n < v.size(1); ++n)
      if (!std::isfinite(v(h, n)))
        check.fail(name, "must be finite, element [" + std::to_string(h) + ", " + std::to_string(n) + "] is " +
                             std::to_string(v(h, n)));
}

// Validates the parameters: shapes, finiteness, Re(lambda) < 0 and dt > 0.
inline SsmDims validate_ssm_params(const ArgCheck& check, const SsmParams& p, const SsmKernelOptions& options) {
  check.enum_value("options.discretization", options.discretization, 2)
      .enum_value("options.symmetry", options.symmetry, 2);
  check.shape("A_real", p.A_real, {-1, -1}, "H,N");
  const index_t H = p.A_real.size(0), N = p.A_real.size(1);
  check.optional_shape("A_imag", p.A_imag, {H, N}, "H,N");
  check.shape("B_real", p.B_real, {H, N}, "H,N");
  check.optional_shape("B_imag", p.B_imag, {H, N}, "H,N");
  check.shape("C_real", p.C_real, {H, N}, "H,N");
  check.optional_shape("C_imag", p.C_imag, {H, N}, "H,N");
  check.shape("dt", p.dt, {H}, "H");
  const std::pair<const char*, ConstView<float, 2>> planes[] = {{"A_real", p.A_real}, {"A_imag", p.A_imag},
                                                                 {"B_real", p.B_real}, {"B_imag", p.B_imag},
                                                                 {"C_real", p.C_real}, {"C_imag", p.C_imag}};
  for (const auto& plane : planes)
    if (plane.second.has_value()) ssm_check_finite(check, plane.first, plane.second);
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n)
      if (!(p.A_real(h, n) < 0.f))
        check.fail("A_real", "must be < 0 (a stable system: Re(lambda) < 0), element [" + std::to_string(h) + ", " +
                                 std::to_string(n) + "] is " + std::to_string(p.A_real(h, n)));
  for (index_t h = 0; h < H; ++h)
    if (!(p.dt(h) > 0.f) || !std::isfinite(p.dt(h)))
      check.fail("dt", "must be finite and > 0, element [" + std::to_string(h) + "] is " + std::to_string(p.dt(h)));
  return {H, N};
}

// A_bar and B_bar of state (h, n), in double.
inline void ssm_discrete_value(const SsmParams& p, const SsmKernelOptions& options, index_t h, index_t n,
                               SsmComplex* A_bar, SsmComplex* B_bar) {
  const SsmComplex lambda = ssm_value(p.A_real, p.A_imag, h, n), B = ssm_value(p.B_real, p.B_imag, h, n);
  const double dt = p.dt(h);
  if (options.discretization == SsmDiscretization::zoh) {
    *A_bar = std::exp(dt * lambda);
    *B_bar = (*A_bar - 1.0) / lambda * B;
  } else {
    const SsmComplex denominator = 1.0 - dt * lambda / 2.0;  // Re > 1 for a stable lambda: never zero
    *A_bar = (1.0 + dt * lambda / 2.0) / denominator;
    *B_bar = dt / denominator * B;
  }
}

// The kernel output of ssm_kernel: [L,H], overlapping no parameter.
inline void validate_ssm_kernel_output(const ArgCheck& check, const SsmParams& p, const TensorView<float, 2>& kernel,
                                       index_t H) {
  check.shape("kernel", kernel, {-1, H}, "L,H");
  const std::pair<const char*, ConstView<float, 2>> planes[] = {{"A_real", p.A_real}, {"A_imag", p.A_imag},
                                                                 {"B_real", p.B_real}, {"B_imag", p.B_imag},
                                                                 {"C_real", p.C_real}, {"C_imag", p.C_imag}};
  for (const auto& plane : planes)
    if (views_overlap(kernel, plane.second))
      check.fail("kernel", std::string("overlaps input '") + plane.first + "'; pass a separate buffer");
  if (views_overlap(kernel, p.dt)) check.fail("kernel", "overlaps input 'dt'; pass a separate buffer");
}

inline double ssm_output_scale(const SsmKernelOptions& options) {
  return options.symmetry == SsmStateSymmetry::conjugate_pairs ? 2.0 : 1.0;
}

}  // namespace detail

/// Writes A_bar and B_bar (computed in double, stored as float) for ssm_step. Validates the
/// parameters (ShapeError before any write: shapes, non-finite values, Re(A) >= 0, dt <= 0).
inline void ssm_discretize(const SsmParams& params, const SsmDiscreteOutputs& out, const SsmKernelOptions& options = {}) {
  const ArgCheck check("ssm_discretize");
  const auto dims = detail::validate_ssm_params(check, params, options);
  check.shape("A_bar_real", out.A_bar_real, {dims.H, dims.N}, "H,N")
      .shape("A_bar_imag", out.A_bar_imag, {dims.H, dims.N}, "H,N")
      .shape("B_bar_real", out.B_bar_real, {dims.H, dims.N}, "H,N")
      .shape("B_bar_imag", out.B_bar_imag, {dims.H, dims.N}, "H,N");
  for (index_t h = 0; h < dims.H; ++h)
    for (index_t n = 0; n < dims.N; ++n) {
      detail::SsmComplex A_bar, B_bar;
      detail::ssm_discrete_value(params, options, h, n, &A_bar, &B_bar);
      out.A_bar_real(h, n) = static_cast<float>(A_bar.real()), out.A_bar_imag(h, n) = static_cast<float>(A_bar.imag());
      out.B_bar_real(h, n) = static_cast<float>(B_bar.real()), out.B_bar_imag(h, n) = static_cast<float>(B_bar.imag());
    }
}

/// Fills a diagonal A [H,N] with an S4D initialization (every channel the same); A_imag may be
/// empty for s4d_real (it is zeroed when given). B = 1 and a random C complete S4D's setup.
inline void ssm_init_diagonal(SsmInit init, const TensorView<float, 2>& A_real, const TensorView<float, 2>& A_imag = {}) {
  const ArgCheck check("ssm_init_diagonal");
  check.enum_value("init", init, 3);
  check.shape("A_real", A_real, {-1, -1}, "H,N");
  const index_t H = A_real.size(0), N = A_real.size(1);
  if (init == SsmInit::s4d_real)
    check.optional_shape("A_imag", A_imag, {H, N}, "H,N");
  else
    check.shape("A_imag", A_imag, {H, N}, "H,N");
  const double pi = 3.14159265358979323846;
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      double re = -0.5, im = 0.0;
      if (init == SsmInit::s4d_lin) im = pi * double(n);
      if (init == SsmInit::s4d_inv) im = double(N) / pi * (double(N) / double(2 * n + 1) - 1.0);
      if (init == SsmInit::s4d_real) re = -double(n + 1);
      A_real(h, n) = static_cast<float>(re);
      if (A_imag.has_value()) A_imag(h, n) = static_cast<float>(im);
    }
}

namespace reference {

/// kernel [L,H]: the definition, a Vandermonde sum in double with std::pow for every power.
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void ssm_kernel(const SsmParams& params, const TensorView<float, 2>& kernel, const SsmKernelOptions& options = {},
                       const Executor& executor = serial_executor()) {
  (void)executor;
  const ArgCheck check("reference::ssm_kernel");
  const auto dims = detail::validate_ssm_params(check, params, options);
  detail::validate_ssm_kernel_output(check, params, kernel, dims.H);
  for (index_t h = 0; h < dims.H; ++h)
    for (index_t l = 0; l < kernel.size(0); ++l) {
      detail::SsmComplex sum = 0.0;
      for (index_t n = 0; n < dims.N; ++n) {
        detail::SsmComplex A_bar, B_bar;
        detail::ssm_discrete_value(params, options, h, n, &A_bar, &B_bar);
        sum += detail::ssm_value(params.C_real, params.C_imag, h, n) * B_bar * std::pow(A_bar, double(l));
      }
      kernel(l, h) = static_cast<float>(detail::ssm_output_scale(options) * sum.real());
    }
}

}  // namespace reference
}  // namespace seqmix
