// ssm_dplr_step: the recurrent decode step of a DPLR system (S4) with a complex state. Bilinear:
//
//   x_t = A_bar x_{t-1} + B_bar u_t = M^-1 ((I + dt/2 A) x_{t-1} + dt B u_t),  M = I - dt/2 A
//   y_t = Re(C x_t) + skip u_t
//
// applied in its structured form, O(N r) per channel and step instead of the dense O(N^2):
// (I + dt/2 A) x = x + dt/2 (Lambda x - P (Q^* x)), and M = D0 + dt/2 P Q^* with
// D0 = I - dt/2 Lambda diagonal, so (Woodbury)
//
//   M^-1 w = D w - D P S Q^* D w,   D = D0^-1,  S = (2/dt I_r + Q^* D P)^-1  (r x r).
//
// ZOH: x_t = A_bar x_{t-1} + B_bar u_t with the dense A_bar = exp(dt A) (O(N^2): the exponential
// of a DPLR matrix is not DPLR). The constants (D, S; or A_bar, B_bar) are computed once by
// ssm_dplr_step_plan. Its outputs over a sequence equal the convolution of the inputs with
// ssm_dplr_kernel's kernel (plus skip u).
#pragma once

#include <algorithm>
#include <complex>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/dplr_reference.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"

namespace seqmix {

/// DPLR decode-step arguments: one input per batch row and channel, the continuous parameters.
struct SsmDplrStepInputs {
  ConstView<float, 2> u;          ///< [B,H]
  SsmDplrParams params;           ///< the system (as ssm_dplr_kernel takes it)
  ConstView<float, 1> skip = {};  ///< [H], optional: y += skip[h] u[b,h]
};

namespace detail {

inline void validate_ssm_dplr_step(const ArgCheck& check, const SsmDplrStepInputs& in, const SsmStepOutputs& out,
                                   const SsmKernelOptions& options, SsmDplrDims* dims) {
  // Shapes and the cheap value checks; the O(G N^3) dissipativity check of an explicit Q is left
  // to ssm_dplr_kernel (run it once on the same parameters).
  *dims = validate_ssm_dplr_params(check, in.params, options, false);
  const index_t H = dims->H, N = dims->N;
  check.shape("u", in.u, {-1, H}, "B,H");
  const index_t B = in.u.size(0);
  check.optional_shape("skip", in.skip, {H}, "H")
      .shape("y", out.y, {B, H}, "B,H")
      .shape("state_real", out.state_real, {B, H, N}, "B,H,N")
      .shape("state_imag", out.state_imag, {B, H, N}, "B,H,N");
  const SsmDplrParams& p = in.params;
  const std::pair<const char*, ConstView<float, 2>> planes[] = {
      {"u", in.u},           {"Lambda_real", p.Lambda_real}, {"Lambda_imag", p.Lambda_imag}, {"B_real", p.B_real},
      {"B_imag", p.B_imag},  {"C_real", p.C_real},           {"C_imag", p.C_imag}};
  const std::pair<const char*, ConstView<float, 3>> factors[] = {
      {"P_real", p.P_real}, {"P_imag", p.P_imag}, {"Q_real", p.Q_real}, {"Q_imag", p.Q_imag}};
  const std::pair<const char*, TensorView<float, 3>> states[] = {{"state_real", out.state_real},
                                                                  {"state_imag", out.state_imag}};
  for (const auto& state : states) {
    for (const auto& plane : planes)
      if (views_overlap(state.second, plane.second))
        check.fail(state.first, std::string("overlaps input '") + plane.first + "'");
    for (const auto& factor : factors)
      if (views_overlap(state.second, factor.second))
        check.fail(state.first, std::string("overlaps input '") + factor.first + "'");
    if (views_overlap(state.second, p.dt) || views_overlap(state.second, in.skip))
      check.fail(state.first, "overlaps input 'dt' or 'skip'");
    if (views_overlap(out.y, state.second)) check.fail("y", "overlaps the state");
  }
  for (const auto& plane : planes)
    if (views_overlap(out.y, plane.second)) check.fail("y", std::string("overlaps input '") + plane.first + "'");
  for (const auto& factor : factors)
    if (views_overlap(out.y, factor.second)) check.fail("y", std::string("overlaps input '") + factor.first + "'");
  if (views_overlap(out.y, p.dt) || views_overlap(out.y, in.skip)) check.fail("y", "overlaps input 'dt' or 'skip'");
  if (views_overlap(out.state_real, out.state_imag)) check.fail("state_imag", "overlaps 'state_real'");
}

}  // namespace detail

/// The decode step's per-channel constants, computed once from the continuous parameters
/// (ssm_dplr_step_plan) so a step does no discretization work. Bilinear: the group's Lambda, P,
/// Q and, per channel, B, C, dt, D = (I - dt/2 Lambda)^-1 and the r x r Woodbury matrix
/// S = (2/dt I + Q^* D P)^-1: O(N r) per channel and token. ZOH: the dense A_bar = exp(dt A) and
/// B_bar per channel (16 N^2 bytes each): O(N^2) per channel and token, since exp(dt A) keeps no
/// DPLR structure.
struct SsmDplrStepPlan {
  index_t H = 0;  ///< channels
  index_t N = 0;  ///< states
  index_t G = 0;  ///< groups
  index_t r = 0;  ///< rank
  SsmDiscretization discretization = SsmDiscretization::bilinear;  ///< how it was discretized
  std::vector<std::complex<double>> Lambda;  ///< bilinear: [G*N]
  std::vector<std::complex<double>> P;       ///< bilinear: [G*r*N]
  std::vector<std::complex<double>> Q_conj;  ///< bilinear: [G*r*N], conj(Q)
  std::vector<double> dt;                    ///< bilinear: [H]
  std::vector<std::complex<double>> D;       ///< bilinear: [H*N]
  std::vector<std::complex<double>> S;       ///< bilinear: [H*r*r]
  std::vector<std::complex<double>> B;       ///< bilinear: [H*N] B; ZOH: [H*N] B_bar
  std::vector<std::complex<double>> C;       ///< [H*N]
  std::vector<std::complex<double>> A_bar;   ///< ZOH: [H*N*N] row-major per channel
};

/// Builds the step plan of a DPLR system under `options` (validated as ssm_dplr_kernel does,
/// ShapeError before any work). Bilinear: O(N r^2) per channel; ZOH: one (N+1)^3 matrix
/// exponential per channel (the same as ssm_dplr_kernel's, so steps and kernel agree). Channels
/// in parallel.
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
SsmDplrStepPlan ssm_dplr_step_plan(const SsmDplrParams& params,
                                          const SsmKernelOptions& options = {SsmDiscretization::bilinear,
                                                                             SsmStateSymmetry::none},
                                          const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_dplr_step_plan");
  const detail::SsmDplrDims dims = detail::validate_ssm_dplr_params(check, params, options);
  SsmDplrStepPlan plan;
  plan.H = dims.H, plan.N = dims.N, plan.G = dims.G, plan.r = dims.r, plan.discretization = options.discretization;
  const index_t H = dims.H, N = dims.N, r = dims.r, per_group = dims.H / dims.G;
  const bool zoh = options.discretization == SsmDiscretization::zoh;
  plan.C.resize(static_cast<std::size_t>(H * N)), plan.B.resize(static_cast<std::size_t>(H * N));
  if (zoh) {
    plan.A_bar.resize(static_cast<std::size_t>(H * N * N));
  } else {
    plan.Lambda.resize(static_cast<std::size_t>(dims.G * N));
    plan.P.resize(static_cast<std::size_t>(dims.G * r * N)), plan.Q_conj.resize(plan.P.size());
    plan.dt.resize(H), plan.D.resize(static_cast<std::size_t>(H * N)), plan.S.resize(static_cast<std::size_t>(H * r * r));
    for (index_t g = 0; g < dims.G; ++g) {
      const detail::SsmDplrGroup s = detail::ssm_dplr_group(params, g);
      std::copy(s.Lambda.begin(), s.Lambda.end(), plan.Lambda.begin() + g * N);
      std::copy(s.P.begin(), s.P.end(), plan.P.begin() + g * r * N);
      for (index_t i = 0; i < r * N; ++i) plan.Q_conj[g * r * N + i] = std::conj(s.Q[i]);
    }
  }
  parallel_for(executor, H, 1, [&](index_t begin, index_t end) {
    std::vector<detail::SsmComplex> A_bar, B_bar, Sinv, S;
    for (index_t h = begin; h < end; ++h) {
      const detail::SsmDplrGroup s = detail::ssm_dplr_group(params, h / per_group);
      for (index_t n = 0; n < N; ++n) {
        plan.C[h * N + n] = detail::ssm_value(params.C_real, params.C_imag, h, n);
        plan.B[h * N + n] = detail::ssm_value(params.B_real, params.B_imag, h, n);
      }
      if (zoh) {
        detail::ssm_dplr_zoh_discretize<Deferred>(params, s, h, &A_bar, &B_bar);
        std::copy(A_bar.begin(), A_bar.end(), plan.A_bar.begin() + h * N * N);
        std::copy(B_bar.begin(), B_bar.end(), plan.B.begin() + h * N);
        continue;
      }
      const double dt = params.dt(h);
      plan.dt[h] = dt;
      for (index_t n = 0; n < N; ++n) plan.D[h * N + n] = 1.0 / (1.0 - dt / 2.0 * s.Lambda[n]);
      // S = (2/dt I + Q^* D P)^-1 by an r x r solve against the identity.
      Sinv.assign(static_cast<std::size_t>(r * r), 0.0), S.assign(static_cast<std::size_t>(r * r), 0.0);
      for (index_t i = 0; i < r; ++i) {
        S[i * r + i] = 1.0;
        for (index_t j = 0; j < r; ++j) {
          detail::SsmComplex sum = i == j ? 2.0 / dt : 0.0;
          for (index_t n = 0; n < N; ++n) sum += std::conj(s.Q[i * N + n]) * plan.D[h * N + n] * s.P[j * N + n];
          Sinv[i * r + j] = sum;
        }
      }
      detail::ssm_dplr_solve(Sinv, S, r, r);
      std::copy(S.begin(), S.end(), plan.S.begin() + h * r * r);
    }
  });
  return plan;
}

namespace detail {

inline void validate_ssm_dplr_plan_step(const ArgCheck& check, const SsmDplrStepPlan& plan, const ConstView<float, 2>& u,
                                        const ConstView<float, 1>& skip, const SsmStepOutputs& out) {
  check.that(plan.H > 0 && plan.N > 0 && plan.C.size() == static_cast<std::size_t>(plan.H * plan.N), "plan",
             "must come from ssm_dplr_step_plan");
  const index_t H = plan.H, N = plan.N;
  check.shape("u", u, {-1, H}, "B,H");
  const index_t B = u.size(0);
  check.optional_shape("skip", skip, {H}, "H")
      .shape("y", out.y, {B, H}, "B,H")
      .shape("state_real", out.state_real, {B, H, N}, "B,H,N")
      .shape("state_imag", out.state_imag, {B, H, N}, "B,H,N");
  const std::pair<const char*, TensorView<float, 3>> states[] = {{"state_real", out.state_real},
                                                                  {"state_imag", out.state_imag}};
  for (const auto& state : states) {
    if (views_overlap(state.second, u) || views_overlap(state.second, skip))
      check.fail(state.first, "overlaps input 'u' or 'skip'");
    if (views_overlap(out.y, state.second)) check.fail("y", "overlaps the state");
  }
  if (views_overlap(out.y, u) || views_overlap(out.y, skip)) check.fail("y", "overlaps input 'u' or 'skip'");
  if (views_overlap(out.state_real, out.state_imag)) check.fail("state_imag", "overlaps 'state_real'");
}

// Channel h's per-token work from the plan, all batch rows, in double.
inline void ssm_dplr_plan_step_channel(const SsmDplrStepPlan& plan, const ConstView<float, 2>& u,
                                       const ConstView<float, 1>& skip, const SsmStepOutputs& out, index_t h,
                                       std::vector<SsmComplex>& x, std::vector<SsmComplex>& v) {
  const index_t N = plan.N, r = plan.r, B = u.size(0);
  const SsmComplex* C = plan.C.data() + h * N;
  const SsmComplex* Bv = plan.B.data() + h * N;
  x.resize(N), v.resize(N);
  for (index_t b = 0; b < B; ++b) {
    const double input = u(b, h);
    for (index_t n = 0; n < N; ++n) x[n] = SsmComplex(out.state_real(b, h, n), out.state_imag(b, h, n));
    if (plan.discretization == SsmDiscretization::zoh) {
      const SsmComplex* A = plan.A_bar.data() + h * N * N;
      for (index_t n = 0; n < N; ++n) {
        SsmComplex sum = Bv[n] * input;
        for (index_t k = 0; k < N; ++k) sum += A[n * N + k] * x[k];
        v[n] = sum;
      }
    } else {
      const index_t g = h / (plan.H / plan.G);
      const SsmComplex* Lambda = plan.Lambda.data() + g * N;
      const SsmComplex* P = plan.P.data() + g * r * N;
      const SsmComplex* Qc = plan.Q_conj.data() + g * r * N;
      const SsmComplex* D = plan.D.data() + h * N;
      const SsmComplex* S = plan.S.data() + h * r * r;
      const double dt = plan.dt[h];
      // w = (I + dt/2 A) x + dt B u, then D w.
      SsmComplex qx[kSsmDplrMaxRank], qv[kSsmDplrMaxRank], sqv[kSsmDplrMaxRank];
      for (index_t j = 0; j < r; ++j) {
        qx[j] = 0.0;
        for (index_t n = 0; n < N; ++n) qx[j] += Qc[j * N + n] * x[n];
      }
      for (index_t n = 0; n < N; ++n) {
        SsmComplex lowrank = 0.0;
        for (index_t j = 0; j < r; ++j) lowrank += P[j * N + n] * qx[j];
        v[n] = D[n] * (x[n] + dt / 2.0 * (Lambda[n] * x[n] - lowrank) + dt * input * Bv[n]);
      }
      // x = v - D P S (Q^* v).
      for (index_t i = 0; i < r; ++i) {
        qv[i] = 0.0;
        for (index_t n = 0; n < N; ++n) qv[i] += Qc[i * N + n] * v[n];
      }
      for (index_t i = 0; i < r; ++i) {
        sqv[i] = 0.0;
        for (index_t j = 0; j < r; ++j) sqv[i] += S[i * r + j] * qv[j];
      }
      for (index_t n = 0; n < N; ++n) {
        SsmComplex correction = 0.0;
        for (index_t j = 0; j < r; ++j) correction += P[j * N + n] * sqv[j];
        v[n] -= D[n] * correction;
      }
    }
    double y = 0.0;
    for (index_t n = 0; n < N; ++n) {
      out.state_real(b, h, n) = static_cast<float>(v[n].real());
      out.state_imag(b, h, n) = static_cast<float>(v[n].imag());
      y += (C[n] * v[n]).real();
    }
    out.y(b, h) = static_cast<float>(y + (skip.has_value() ? double(skip(h)) * input : 0.0));
  }
}

}  // namespace detail

/// Decode step from a plan (ssm_dplr_step_plan): advances the complex state [B,H,N] by one input
/// u [B,H] per batch row and channel, writes y [B,H] (+ skip[h] u). Bilinear O(N r), ZOH O(N^2)
/// per row and channel, in double (the state is stored as float); no discretization work.
/// Channels threaded once the step is large enough. Validates shapes and overlaps (ShapeError
/// before any write).
inline void ssm_dplr_step(const SsmDplrStepPlan& plan, const ConstView<float, 2>& u, const SsmStepOutputs& out,
                          const ConstView<float, 1>& skip = {}, const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_dplr_step");
  detail::validate_ssm_dplr_plan_step(check, plan, u, skip, out);
  const auto body = [&](index_t begin, index_t end) {
    std::vector<detail::SsmComplex> x, v;
    for (index_t h = begin; h < end; ++h) detail::ssm_dplr_plan_step_channel(plan, u, skip, out, h, x, v);
  };
  const index_t per_token = plan.discretization == SsmDiscretization::zoh ? plan.N * plan.N : plan.N * plan.r;
  if (u.size(0) * plan.H * per_token < detail::kSsmStepMinParallelWork) {
    body(0, plan.H);
    return;
  }
  parallel_for(executor, plan.H, 8, body);
}

/// Decode step of a DPLR system from its continuous parameters: builds the plan
/// (ssm_dplr_step_plan) and runs one step with it. Convenient for a single step; a decode loop
/// should build the plan once (this form redoes the discretization every call: for ZOH one
/// matrix exponential per channel). Validates shapes, overlaps and the parameters' values
/// (ShapeError before any write).
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
void ssm_dplr_step(const SsmDplrStepInputs& in, const SsmStepOutputs& out,
                          const SsmKernelOptions& options = {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                          const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_dplr_step");
  detail::SsmDplrDims dims{};
  detail::validate_ssm_dplr_step(check, in, out, options, &dims);
  ssm_dplr_step(ssm_dplr_step_plan<Deferred>(in.params, options, executor), in.u, out, in.skip, executor);
}

}  // namespace seqmix
