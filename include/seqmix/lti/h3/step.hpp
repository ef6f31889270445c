// h3_step, H3's decode form (issue 16 item 4): the shift SSM as its FIR of Ls taps over the last
// Ls - 1 keys (carried), the diagonal SSM through its complex diagonal recurrence (lti/ssm_kernel's
// step) on every entry kbar_i v_j of the head's outer product. Over a sequence it gives h3's
// prefill output when the prefill's diag_filter is the SSM's kernel (ssm_kernel, plus the skip D
// on tap 0) and the shift filter is the same: the convolution form for prefill, the recurrence for
// generation, O(H P^2 N) per token instead of O(H P^2 t).
//
//   kbar[c]           = sum_{s < Ls} shift[s, c] k_{t-s}[c]         c = h*P + i (zero before the first token)
//   x[c, j]           = A_bar[c] x[c, j] + B_bar[c] kbar[c] v[h, j]  (N complex states per (c, j))
//   kv[c, j]          = scale Re(C[c] . x[c, j]) + skip[c] kbar[c] v[h, j]
//   y[h, j]           = sum_i q[h, i] kv[h*P + i, j]
#pragma once

#include <array>
#include <vector>

#include "seqmix/lti/h3/reference.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"

namespace seqmix {

/// h3_step's inputs: one token per batch row, the shift filter and the diagonal SSM's discretized
/// system (ssm_discretize) per key channel c = h*P + i.
struct H3StepInputs {
  ConstView<float, 3> q;             ///< [B,H,P]
  ConstView<float, 3> k;             ///< [B,H,P]
  ConstView<float, 3> v;             ///< [B,H,P]
  ConstView<float, 2> shift_filter;  ///< [Ls,H*P], Ls >= 1
  ConstView<float, 2> A_bar_real;    ///< [H*P,N]
  ConstView<float, 2> A_bar_imag;    ///< [H*P,N]
  ConstView<float, 2> B_bar_real;    ///< [H*P,N]
  ConstView<float, 2> B_bar_imag;    ///< [H*P,N]
  ConstView<float, 2> C_real;        ///< [H*P,N]
  ConstView<float, 2> C_imag = {};   ///< [H*P,N], optional (zero)
  ConstView<float, 1> skip = {};     ///< [H*P], optional: the diagonal SSM's D
};

/// h3_step's outputs and carried state (updated in place; zeros before the first token).
struct H3StepOutputs {
  TensorView<float, 3> y;            ///< [B,H,P]
  TensorView<float, 3> shift_state;  ///< [B,Ls-1,H*P]: the last Ls - 1 keys, oldest first
  TensorView<float, 4> state_real;   ///< [B,H*P,P,N]: the diagonal SSM's states per (c, value index j)
  TensorView<float, 4> state_imag;   ///< [B,H*P,P,N]
};

/// One decode token of H3 (definition at the top of this header). The complex states advance
/// through ssm_step, one call per value index j over all (batch, key channel) pairs; scratch of
/// O(B H P) floats is allocated per call. Validates first (ShapeError before any write).
inline void h3_step(const H3StepInputs& in, const H3StepOutputs& out, const SsmKernelOptions& options = {},
                    const Executor& executor = serial_executor()) {
  const ArgCheck check("h3_step");
  check.shape("q", in.q, {-1, -1, -1}, "B,H,P");
  const index_t B = in.q.size(0), H = in.q.size(1), P = in.q.size(2);
  check.shape("k", in.k, {B, H, P}, "B,H,P").shape("v", in.v, {B, H, P}, "B,H,P");
  const index_t D = check.product("q", H, P);
  check.shape("shift_filter", in.shift_filter, {-1, D}, "Ls,H*P");
  const index_t Ls = in.shift_filter.size(0);
  if (Ls < 1) check.fail("shift_filter", "must have at least one tap (Ls >= 1)");
  detail::check_finite_filter(check, "shift_filter", in.shift_filter);
  check.shape("A_bar_real", in.A_bar_real, {D, -1}, "H*P,N");
  const index_t N = in.A_bar_real.size(1);
  check.shape("y", out.y, {B, H, P}, "B,H,P").shape("shift_state", out.shift_state, {B, Ls - 1, D}, "B,Ls-1,H*P");
  check.shape("state_real", out.state_real, {B, D, P, N}, "B,H*P,P,N").shape("state_imag", out.state_imag, {B, D, P, N}, "B,H*P,P,N");
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("shift_state", out.shift_state, "k", in.k).no_overlap("shift_state", out.shift_state, "y", out.y);
  check.no_overlap("y", out.y, "state_real", out.state_real).no_overlap("y", out.y, "state_imag", out.state_imag);
  check.no_overlap("shift_state", out.shift_state, "state_real", out.state_real)
      .no_overlap("shift_state", out.shift_state, "state_imag", out.state_imag);
  // The system and the state views of value index 0 go through ssm_step's own checks before
  // anything is written (the other j differ only by an offset).
  std::vector<float> u(static_cast<std::size_t>(B * D)), kv(static_cast<std::size_t>(B * D)), kbar(static_cast<std::size_t>(B * D));
  auto state_j = [&](const TensorView<float, 4>& s, index_t j) {
    return TensorView<float, 3>(s.data() + j * s.stride(2), {B, D, N}, {s.stride(0), s.stride(1), s.stride(3)});
  };
  SsmStepInputs ssm{ConstView<float, 2>(u.data(), {B, D}), in.A_bar_real, in.A_bar_imag, in.B_bar_real, in.B_bar_imag,
                    in.C_real, in.C_imag, in.skip};
  const auto ssm_out = [&](index_t j) {
    return SsmStepOutputs{TensorView<float, 2>(kv.data(), {B, D}), state_j(out.state_real, j), state_j(out.state_imag, j)};
  };
  detail::validate_ssm_step(check, ssm, ssm_out(0), options);
  // Shift SSM: the FIR over the carried keys, then the window moves by one.
  for (index_t b = 0; b < B; ++b)
    for (index_t c = 0; c < D; ++c) {
      const float kt = in.k(b, c / P, c % P);
      double sum = double(in.shift_filter(0, c)) * kt;
      for (index_t s = 1; s < Ls; ++s) sum += double(in.shift_filter(s, c)) * out.shift_state(b, Ls - 1 - s, c);
      kbar[static_cast<std::size_t>(b * D + c)] = static_cast<float>(sum);
      for (index_t s = 0; s + 1 < Ls - 1; ++s) out.shift_state(b, s, c) = out.shift_state(b, s + 1, c);
      if (Ls > 1) out.shift_state(b, Ls - 2, c) = kt;
    }
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t j = 0; j < P; ++j) out.y(b, h, j) = 0.f;
  for (index_t j = 0; j < P; ++j) {
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) u[static_cast<std::size_t>(b * D + c)] = kbar[static_cast<std::size_t>(b * D + c)] * in.v(b, c / P, j);
    ssm_step(ssm, ssm_out(j), options, executor);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h) {
        float acc = 0.f;
        for (index_t i = 0; i < P; ++i) acc += in.q(b, h, i) * kv[static_cast<std::size_t>(b * D + h * P + i)];
        out.y(b, h, j) = acc;
      }
  }
}

}  // namespace seqmix
