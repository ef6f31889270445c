// s5: the simplified structured state space layer (S5, issue 16 item 3): one complex diagonal
// MIMO state space per layer, shared by all H channels.
//
// This header holds the argument structs, validation, the discretization shared by every form
// and the readable definition (seqmix::reference::s5, the recurrence in double). The fast
// prefill (projections as GEMMs, the recurrence as core/scan's associative scan over the complex
// affine monoid) is in scan.hpp, the decode step in step.hpp.
//
//   u [B,T,H]; Lambda [P] complex (Re < 0); B [P,H], C [H,P] complex; dt [P] > 0; D [H]
//   ZOH:      Lambda_bar = exp(dt Lambda),  B_bar = (Lambda_bar - 1) / Lambda * B      (row p)
//   bilinear: Lambda_bar = (1 + dt Lambda/2)/(1 - dt Lambda/2),  B_bar = dt/(1 - dt Lambda/2) B
//   x_t = Lambda_bar x_{t-1} + B_bar u_t      (x_{-1} = initial_state or 0)
//   y_t = c Re(C x_t) + D u_t                 (c = 2 with conjugate pairs, else 1)
//   timestep [B,T] (optional): token t of row b is discretized with dt_p * timestep[b,t]
//   (S5's variable observation intervals), so Lambda_bar and B_bar change from token to token.
#pragma once

#include <cmath>
#include <complex>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"

namespace seqmix {

/// The S5 layer's parameters. Complex values are two planes; empty imaginary planes are zero.
struct S5Params {
  ConstView<float, 1> Lambda_real;       ///< [P], must be < 0 (stable)
  ConstView<float, 1> Lambda_imag = {};  ///< [P], optional
  ConstView<float, 2> B_real;            ///< [P,H]
  ConstView<float, 2> B_imag = {};       ///< [P,H], optional
  ConstView<float, 2> C_real;            ///< [H,P]
  ConstView<float, 2> C_imag = {};       ///< [H,P], optional
  ConstView<float, 1> dt;                ///< [P], > 0 (S5 learns a step per state)
  ConstView<float, 1> D = {};            ///< [H], optional feedthrough
};

/// Options of the prefill: the discretization and symmetry of the shared SSM options, and the
/// scan direction. The step takes SsmKernelOptions (it has no direction).
struct S5Options : SsmKernelOptions {
  /// Default options (zoh, no symmetry, forward).
  S5Options() = default;
  /// The given SSM options, forward.
  S5Options(const SsmKernelOptions& ssm) : SsmKernelOptions(ssm) {}
  /// Run from the last token to the first (core/direction.hpp): u and y are reached through
  /// reversed views, not copied; the initial state is the state "after token T" and the final
  /// state the one after token 0.
  bool reverse = false;
};

/// Prefill inputs.
struct S5Inputs {
  ConstView<float, 3> u;                      ///< [B,T,H]
  ConstView<float, 2> initial_state_real = {}; ///< [B,P], optional (zero)
  ConstView<float, 2> initial_state_imag = {}; ///< [B,P], optional (zero)
  /// [B,T], optional, finite and > 0: the input-dependent step. Token t of row b is discretized
  /// with dt[p] * timestep(b, t) for state p, as S5's variable-observation-interval form scales
  /// its learned per-state step by each token's integration interval (one scalar per token).
  /// Empty: every token uses dt (timestep 1).
  ConstView<float, 2> timestep = {};
};

/// Prefill outputs. y must overlap no input; the final state may be the very initial state.
struct S5Outputs {
  TensorView<float, 3> y;                      ///< [B,T,H]
  TensorView<float, 2> final_state_real = {};  ///< [B,P], optional (given with final_state_imag)
  TensorView<float, 2> final_state_imag = {};  ///< [B,P], optional
};

namespace detail {

struct S5Dims {
  index_t B, T, H, P;
};

// The discretized system in double: Lambda_bar [P] and B_bar [P,H].
struct S5Discrete {
  std::vector<SsmComplex> Lambda_bar;  // [P]
  std::vector<SsmComplex> B_bar;       // [P*H], row p
};

// Lambda_bar and the scalar factor of B_bar's row (B_bar = factor * B) for one state and step.
inline void s5_discretize_state(SsmComplex lambda, double dt, SsmDiscretization discretization, SsmComplex& A_bar,
                                SsmComplex& factor) {
  if (discretization == SsmDiscretization::zoh) {
    A_bar = std::exp(dt * lambda);
    factor = (A_bar - 1.0) / lambda;
  } else {
    const SsmComplex denominator = 1.0 - dt * lambda / 2.0;
    A_bar = (1.0 + dt * lambda / 2.0) / denominator;
    factor = dt / denominator;
  }
}

// Per-token steps: finite and > 0. A step of 0 would freeze the state and drop the input (ZOH),
// a negative one makes Lambda_bar unstable.
// t < 0: a step's [B] timestep. The index string is built only for the error.
inline void check_s5_timestep_value(const ArgCheck& check, float v, index_t b, index_t t) {
  if (!(v > 0.f) || !std::isfinite(v))
    check.fail("timestep", "must be finite and > 0, element [" + std::to_string(b) +
                               (t >= 0 ? ", " + std::to_string(t) : std::string()) + "] is " + std::to_string(v));
}

inline void validate_s5_timestep(const ArgCheck& check, const ConstView<float, 2>& timestep) {
  for (index_t b = 0; b < timestep.size(0) && timestep.has_value(); ++b)
    for (index_t t = 0; t < timestep.size(1); ++t)
      check_s5_timestep_value(check, timestep(b, t), b, t);
}

inline void validate_s5_timestep(const ArgCheck& check, const ConstView<float, 1>& timestep) {
  for (index_t b = 0; b < timestep.size(0) && timestep.has_value(); ++b)
    check_s5_timestep_value(check, timestep(b), b, -1);
}

inline SsmComplex s5_value(const ConstView<float, 1>& re, const ConstView<float, 1>& im, index_t i) {
  return {double(re(i)), im.has_value() ? double(im(i)) : 0.0};
}

// Shapes, finiteness, stability of the parameters (shared by prefill and step).
inline S5Dims validate_s5_params(const ArgCheck& check, const S5Params& p, index_t H, const SsmKernelOptions& options) {
  check.enum_value("options.discretization", options.discretization, 2)
      .enum_value("options.symmetry", options.symmetry, 2);
  check.shape("Lambda_real", p.Lambda_real, {-1}, "P");
  const index_t P = p.Lambda_real.size(0);
  check.optional_shape("Lambda_imag", p.Lambda_imag, {P}, "P")
      .shape("B_real", p.B_real, {P, H}, "P,H")
      .optional_shape("B_imag", p.B_imag, {P, H}, "P,H")
      .shape("C_real", p.C_real, {H, P}, "H,P")
      .optional_shape("C_imag", p.C_imag, {H, P}, "H,P")
      .shape("dt", p.dt, {P}, "P")
      .optional_shape("D", p.D, {H}, "H");
  const std::pair<const char*, ConstView<float, 2>> planes[] = {
      {"B_real", p.B_real}, {"B_imag", p.B_imag}, {"C_real", p.C_real}, {"C_imag", p.C_imag}};
  for (const auto& plane : planes)
    if (plane.second.has_value()) ssm_check_finite(check, plane.first, plane.second);
  const std::pair<const char*, ConstView<float, 1>> vectors[] = {{"Lambda_imag", p.Lambda_imag}, {"D", p.D}};
  for (const auto& v : vectors)
    for (index_t i = 0; i < v.second.size(0) && v.second.has_value(); ++i)
      if (!std::isfinite(v.second(i)))
        check.fail(v.first, "must be finite, element [" + std::to_string(i) + "] is " + std::to_string(v.second(i)));
  for (index_t i = 0; i < P; ++i) {
    if (!(p.Lambda_real(i) < 0.f))
      check.fail("Lambda_real", "must be < 0 (a stable system: Re(lambda) < 0), element [" + std::to_string(i) +
                                    "] is " + std::to_string(p.Lambda_real(i)));
    if (!(p.dt(i) > 0.f) || !std::isfinite(p.dt(i)))
      check.fail("dt", "must be finite and > 0, element [" + std::to_string(i) + "] is " + std::to_string(p.dt(i)));
  }
  return {0, 0, H, P};
}

inline S5Dims validate_s5(const char* op, const S5Params& p, const S5Inputs& in, const S5Outputs& out,
                          const SsmKernelOptions& options) {
  const ArgCheck check(op);
  check.shape("u", in.u, {-1, -1, -1}, "B,T,H");
  const index_t B = in.u.size(0), T = in.u.size(1), H = in.u.size(2);
  S5Dims dims = validate_s5_params(check, p, H, options);
  dims.B = B, dims.T = T;
  const index_t P = dims.P;
  check.optional_shape("initial_state_real", in.initial_state_real, {B, P}, "B,P")
      .optional_shape("initial_state_imag", in.initial_state_imag, {B, P}, "B,P")
      .optional_shape("timestep", in.timestep, {B, T}, "B,T")
      .shape("y", out.y, {B, T, H}, "B,T,H")
      .optional_shape("final_state_real", out.final_state_real, {B, P}, "B,P")
      .optional_shape("final_state_imag", out.final_state_imag, {B, P}, "B,P");
  if (out.final_state_real.has_value() != out.final_state_imag.has_value())
    check.fail(out.final_state_real.has_value() ? "final_state_imag" : "final_state_real",
               "must be given with its other plane");
  if (in.initial_state_imag.has_value() && !in.initial_state_real.has_value())
    check.fail("initial_state_real", "must be given with initial_state_imag");
  const auto inputs = [&](const char* name, const auto& o) {
    const std::pair<const char*, ConstView<float, 2>> views[] = {{"B_real", p.B_real}, {"B_imag", p.B_imag},
                                                                 {"C_real", p.C_real}, {"C_imag", p.C_imag}};
    for (const auto& v : views)
      if (views_overlap(o, v.second)) check.fail(name, std::string("overlaps input '") + v.first + "'");
    if (views_overlap(o, in.u)) check.fail(name, "overlaps input 'u'");
    if (views_overlap(o, in.timestep)) check.fail(name, "overlaps input 'timestep'");
  };
  inputs("y", out.y);
  inputs("final_state_real", out.final_state_real);
  inputs("final_state_imag", out.final_state_imag);
  if (views_overlap(out.y, in.initial_state_real) || views_overlap(out.y, in.initial_state_imag))
    check.fail("y", "overlaps the initial state");
  if (views_overlap(out.final_state_real, out.final_state_imag) || views_overlap(out.final_state_real, out.y) ||
      views_overlap(out.final_state_imag, out.y))
    check.fail("final_state_real", "overlaps another output");
  validate_s5_timestep(check, in.timestep);
  return dims;
}

inline S5Discrete s5_discretize(const S5Params& p, index_t H, const SsmKernelOptions& options) {
  const index_t P = p.Lambda_real.size(0);
  S5Discrete d;
  d.Lambda_bar.resize(static_cast<std::size_t>(P));
  d.B_bar.resize(static_cast<std::size_t>(P * H));
  for (index_t i = 0; i < P; ++i) {
    const SsmComplex lambda = s5_value(p.Lambda_real, p.Lambda_imag, i);
    SsmComplex A_bar, factor;
    s5_discretize_state(lambda, p.dt(i), options.discretization, A_bar, factor);
    d.Lambda_bar[static_cast<std::size_t>(i)] = A_bar;
    for (index_t h = 0; h < H; ++h) {
      const SsmComplex b{double(p.B_real(i, h)), p.B_imag.has_value() ? double(p.B_imag(i, h)) : 0.0};
      d.B_bar[static_cast<std::size_t>(i * H + h)] = factor * b;
    }
  }
  return d;
}

// A reverse call (options.reverse) as the forward call on reversed views of u and y.
inline std::pair<S5Inputs, S5Outputs> s5_reversed_call(S5Inputs in, S5Outputs out) {
  reverse_time_of(in.u, out.y);
  if (in.timestep.has_value()) reverse_time_of(in.timestep);
  return {in, out};
}

inline SsmComplex s5_initial(const S5Inputs& in, index_t b, index_t i) {
  if (!in.initial_state_real.has_value()) return 0.0;
  return {double(in.initial_state_real(b, i)),
          in.initial_state_imag.has_value() ? double(in.initial_state_imag(b, i)) : 0.0};
}

}  // namespace detail

namespace reference {

/// The definition: the recurrence token by token, in double. Single-threaded; `executor` is
/// accepted for a uniform signature.
inline void s5(const S5Params& params, const S5Inputs& in, const S5Outputs& out, const S5Options& options = {},
               const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::s5_reversed_call(in, out);
    return s5(params, rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const auto dims = detail::validate_s5("reference::s5", params, in, out, options);
  const double scale = detail::ssm_output_scale(options);
  std::vector<detail::SsmComplex> x(static_cast<std::size_t>(dims.P));
  for (index_t b = 0; b < dims.B; ++b) {
    for (index_t i = 0; i < dims.P; ++i) x[static_cast<std::size_t>(i)] = detail::s5_initial(in, b, i);
    for (index_t t = 0; t < dims.T; ++t) {
      // Discretized per token, so a timestep input changes it from token to token.
      const double step = in.timestep.has_value() ? double(in.timestep(b, t)) : 1.0;
      for (index_t i = 0; i < dims.P; ++i) {
        detail::SsmComplex A_bar, factor;
        detail::s5_discretize_state(detail::s5_value(params.Lambda_real, params.Lambda_imag, i), double(params.dt(i)) * step,
                                    options.discretization, A_bar, factor);
        detail::SsmComplex bu = 0.0;
        for (index_t h = 0; h < dims.H; ++h) {
          const detail::SsmComplex b_ih{double(params.B_real(i, h)), params.B_imag.has_value() ? double(params.B_imag(i, h)) : 0.0};
          bu += b_ih * double(in.u(b, t, h));
        }
        x[static_cast<std::size_t>(i)] = A_bar * x[static_cast<std::size_t>(i)] + factor * bu;
      }
      for (index_t h = 0; h < dims.H; ++h) {
        double y = 0.0;
        for (index_t i = 0; i < dims.P; ++i) {
          const detail::SsmComplex c{double(params.C_real(h, i)), params.C_imag.has_value() ? double(params.C_imag(h, i)) : 0.0};
          y += (c * x[static_cast<std::size_t>(i)]).real();
        }
        out.y(b, t, h) = static_cast<float>(scale * y + (params.D.has_value() ? double(params.D(h)) * in.u(b, t, h) : 0.0));
      }
    }
    if (out.final_state_real.has_value())
      for (index_t i = 0; i < dims.P; ++i) {
        out.final_state_real(b, i) = static_cast<float>(x[static_cast<std::size_t>(i)].real());
        out.final_state_imag(b, i) = static_cast<float>(x[static_cast<std::size_t>(i)].imag());
      }
  }
}

}  // namespace reference
}  // namespace seqmix
