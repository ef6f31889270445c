// Aaren decode step: one token per (batch, head), the online-softmax state (m, l, acc) updated in
// place and o = acc / l read out. Prefill with final_state, then steps, equals one call.
#pragma once

#include "seqmix/chunked/aaren/fast.hpp"

namespace seqmix {

/// Arguments of aaren_step: one token per (batch row, head).
struct AarenStepInputs {
  ConstView<float, 2> query;  ///< [H,Dk]
  ConstView<float, 3> k;      ///< [B,H,Dk] this token's keys
  ConstView<float, 3> v;      ///< [B,H,Dv]
};

/// o [B,H,Dv]; state m, l [B,H], acc [B,H,Dv] (aaren_reset_state for a fresh sequence).
inline void aaren_step(const AarenStepInputs& in, const TensorView<float, 3>& o, const AarenState& state,
                       const AarenOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::aaren;
  const ArgCheck check("aaren_step");
  check.shape("k", in.k, std::array<index_t, 3>{-1, -1, -1}, "B,H,Dk");
  const Dims d{in.k.size(0), 1, in.k.size(1), in.k.size(2), in.v.size(2)};
  check.shape("query", in.query, std::array<index_t, 2>{d.H, d.Dk}, "H,Dk");
  check.shape("v", in.v, std::array<index_t, 3>{d.B, d.H, -1}, "B,H,Dv");
  check.shape("o", o, std::array<index_t, 3>{d.B, d.H, d.Dv}, "B,H,Dv");
  check.shape("state.m", state.m, std::array<index_t, 2>{d.B, d.H}, "B,H");
  check.shape("state.l", state.l, std::array<index_t, 2>{d.B, d.H}, "B,H");
  check.shape("state.acc", state.acc, std::array<index_t, 3>{d.B, d.H, d.Dv}, "B,H,Dv");
  if (options.scale) check.finite(*options.scale, "options.scale");
  // A one-token problem in the prefill's layout: [B,1,H,*] views of the step's [B,H,*] ones.
  const AarenInputs one{in.query,
                        ConstView<float, 4>(in.k.data(), {d.B, 1, d.H, d.Dk}, {in.k.stride(0), 0, in.k.stride(1), in.k.stride(2)}),
                        ConstView<float, 4>(in.v.data(), {d.B, 1, d.H, d.Dv}, {in.v.stride(0), 0, in.v.stride(1), in.v.stride(2)}),
                        {state.m, state.l, state.acc}};
  const AarenOutputs one_out{TensorView<float, 4>(o.data(), {d.B, 1, d.H, d.Dv}, {o.stride(0), 0, o.stride(1), o.stride(2)}),
                             state};
  AarenOptions step_options = options;
  step_options.split = AarenSplit::heads;
  // One token is H*(Dk + 2*Dv) FMAs: a thread hand-off costs more than the work.
  (void)executor;
  aaren(one, one_out, step_options, serial_executor());
}

}  // namespace seqmix
