// ssm_dplr_step: the recurrent decode step of a DPLR system (S4), bilinear, with a complex state:
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
// Its outputs over a sequence equal the convolution of the inputs with ssm_dplr_kernel's kernel
// (plus skip u).
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

// Per-task buffers of the step (allocated once per task, not per channel).
struct SsmDplrStepScratch {
  SsmDplrGroup group;
  index_t group_index = -1;
  std::vector<SsmComplex> D, x, v, S, identity;
};

// Channel h, all batch rows, in double.
inline void ssm_dplr_step_channel(const SsmDplrStepInputs& in, const SsmStepOutputs& out, const SsmDplrDims& dims,
                                  index_t h, SsmDplrStepScratch& scratch) {
  const SsmDplrParams& p = in.params;
  const index_t g = h / (dims.H / dims.G);
  if (scratch.group_index != g) scratch.group = ssm_dplr_group(p, g), scratch.group_index = g;
  const SsmDplrGroup& s = scratch.group;
  const index_t N = dims.N, r = dims.r, B = in.u.size(0);
  const double dt = p.dt(h);
  std::vector<SsmComplex>&D = scratch.D, &x = scratch.x, &v = scratch.v, &S = scratch.S, &identity = scratch.identity;
  D.resize(N), x.resize(N), v.resize(N);
  for (index_t n = 0; n < N; ++n) D[n] = 1.0 / (1.0 - dt / 2.0 * s.Lambda[n]);
  // S = (2/dt I + Q^* D P)^-1, as the r x r solve of the Woodbury term (columns of the identity).
  S.resize(static_cast<std::size_t>(r * r)), identity.assign(static_cast<std::size_t>(r * r), 0.0);
  for (index_t i = 0; i < r; ++i) {
    identity[i * r + i] = 1.0;
    for (index_t j = 0; j < r; ++j) {
      SsmComplex sum = i == j ? 2.0 / dt : 0.0;
      for (index_t n = 0; n < N; ++n) sum += std::conj(s.Q[i * N + n]) * D[n] * s.P[j * N + n];
      S[i * r + j] = sum;
    }
  }
  ssm_dplr_solve(S, identity, r, r);  // identity now holds S
  for (index_t b = 0; b < B; ++b) {
    const double u = in.u(b, h);
    for (index_t n = 0; n < N; ++n) x[n] = SsmComplex(out.state_real(b, h, n), out.state_imag(b, h, n));
    // w = (I + dt/2 A) x + dt B u, then D w.
    SsmComplex qx[kSsmDplrMaxRank];
    for (index_t j = 0; j < r; ++j) {
      qx[j] = 0.0;
      for (index_t n = 0; n < N; ++n) qx[j] += std::conj(s.Q[j * N + n]) * x[n];
    }
    for (index_t n = 0; n < N; ++n) {
      SsmComplex lowrank = 0.0;
      for (index_t j = 0; j < r; ++j) lowrank += s.P[j * N + n] * qx[j];
      const SsmComplex w = x[n] + dt / 2.0 * (s.Lambda[n] * x[n] - lowrank) + dt * u * ssm_value(p.B_real, p.B_imag, h, n);
      v[n] = D[n] * w;
    }
    // x = v - D P S (Q^* v).
    SsmComplex qv[kSsmDplrMaxRank], sqv[kSsmDplrMaxRank];
    for (index_t i = 0; i < r; ++i) {
      qv[i] = 0.0;
      for (index_t n = 0; n < N; ++n) qv[i] += std::conj(s.Q[i * N + n]) * v[n];
    }
    for (index_t i = 0; i < r; ++i) {
      sqv[i] = 0.0;
      for (index_t j = 0; j < r; ++j) sqv[i] += identity[i * r + j] * qv[j];
    }
    double y = 0.0;
    for (index_t n = 0; n < N; ++n) {
      SsmComplex correction = 0.0;
      for (index_t j = 0; j < r; ++j) correction += s.P[j * N + n] * sqv[j];
      const SsmComplex next = v[n] - D[n] * correction;
      out.state_real(b, h, n) = static_cast<float>(next.real());
      out.state_imag(b, h, n) = static_cast<float>(next.imag());
      y += (ssm_value(p.C_real, p.C_imag, h, n) * next).real();
    }
    out.y(b, h) = static_cast<float>(y + (in.skip.has_value() ? double(in.skip(h)) * u : 0.0));
  }
}

}  // namespace detail

/// Decode step of a DPLR system: advances the complex state [B,H,N] by one input per batch row
/// and channel, writes y [B,H]. O(N r) per row and channel in double (the state is stored as
/// float), channels threaded; D and the r x r Woodbury matrix are formed per channel and call.
/// Validates shapes, overlaps and the parameters' values (ShapeError before any write) except the
/// dissipativity of an explicit Q, which ssm_dplr_kernel checks. Bilinear only, as
/// ssm_dplr_kernel.
inline void ssm_dplr_step(const SsmDplrStepInputs& in, const SsmStepOutputs& out,
                          const SsmKernelOptions& options = {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                          const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_dplr_step");
  detail::SsmDplrDims dims{};
  detail::validate_ssm_dplr_step(check, in, out, options, &dims);
  const auto body = [&](index_t begin, index_t end) {
    detail::SsmDplrStepScratch scratch;
    for (index_t h = begin; h < end; ++h) detail::ssm_dplr_step_channel(in, out, dims, h, scratch);
  };
  if (in.u.size(0) * dims.H * dims.N * dims.r < detail::kSsmStepMinParallelWork) {
    body(0, dims.H);
    return;
  }
  parallel_for(executor, dims.H, 8, body);
}

}  // namespace seqmix
