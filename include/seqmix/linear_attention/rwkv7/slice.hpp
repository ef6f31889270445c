// State passing across slices of one sequence for rwkv7, whose transition
// diag(w_t) + b_t a_t^T is a matrix: a slice runs from a zero state and returns its readout and
// [K,K] transition (delta_update/slice.hpp derives them); compose_matrix_slices composes slices
// and correct_matrix_slice applies a slice's true initial state (core/slice_state.hpp).
#pragma once

#include "seqmix/linear_attention/delta_update/slice.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"

namespace seqmix {

/// Runs rwkv7 on one slice of longer sequences from a zero state: out.o gets the zero-state
/// outputs, out.final_state [B,H,K,V] (required) the local final state, readout [B,T,H,K] (o_t
/// gains readout_t^T S0) and transition [B,H,K,K] (the final state gains transition S0). A dense
/// batch only, no in.initial_state, no token_states. Costs about two prefills (the second with
/// V = K). Compose with compose_matrix_slices; finish with correct_matrix_slice. r/k/v/a/b may be
/// stored as float, seqmix::bf16 or seqmix::f16 (Rwkv7InputsOf).
template <class T>
void rwkv7_slice(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out, const TensorView<float, 4>& readout,
                 const TensorView<float, 4>& transition, const Executor& executor = serial_executor()) {
  using namespace delta_update;
  static const ArgCheck check("rwkv7_slice");
  const detail::la::Dims d = validate_rwkv7(check, in, out, executor).d;
  check_matrix_slice(check, in.batch, in.initial_state, out.final_state, out.token_states.has_value(), d, readout,
                     transition, in.r, in.k, in.v, in.a, in.b, in.g, out.o);
  seqmix::detail::rwkv7_prefill(in, out, executor);
  const IdentityRun run(d.B, d.T, d.H, d.K);
  Rwkv7InputsOf<T> identity = in;
  const T zero = T(0.f);  // the identity run's values: a stride-0 view of one zero of the storage type
  identity.v = ConstView<T, 4>(&zero, run.zero_values.shape(), {0, 0, 0, 0});
  identity.initial_state = run.identity;
  seqmix::detail::rwkv7_prefill(identity, {readout, transition}, executor);
}

/// rwkv7_slice on fp32 r/k/v/a/b (the overload braced argument lists pick).
inline void rwkv7_slice(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const TensorView<float, 4>& readout,
                        const TensorView<float, 4>& transition, const Executor& executor = serial_executor()) {
  rwkv7_slice<float>(in, out, readout, transition, executor);
}

}  // namespace seqmix
