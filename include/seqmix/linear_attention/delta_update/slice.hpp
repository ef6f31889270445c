// State passing across slices of one sequence for the delta rules (delta_rule, gated_delta_rule /
// KDA, rwkv7), whose slice transition is a [K,K] matrix per head: a product of
// (I - beta k k^T)-type factors and decays. Internal; the public entry points are each op's
// slice.hpp, the composition and the correction are core/slice_state.hpp's
// compose_matrix_slices and correct_matrix_slice.
//
// The recurrence is linear in (S0, v) jointly, so a slice's outputs split into the zero-state
// outputs (the op from zero) plus the outputs of the op run with v = 0 from S0. The latter are
// R_t S0 with R_t the outputs of the op run with v = 0 from the identity I [K,K] (as a [K,K]
// "state" with K value columns), and the final state splits the same way into the local final
// state plus P S0, P the final state of that identity run. So one extra run of the op's own
// fast form (chunked WY for the delta rules, V = K) yields the readout R [T,K] per head and the
// transition P [K,K]; the correction is then one [T,K] x [K,V] GEMM per head and slice, and
// nothing is rerun once S0 is known. The identity run costs about a prefill with V = K; it runs
// in the parallel phase, before the slices exchange anything.
#pragma once

#include <array>
#include <vector>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"

namespace seqmix::delta_update {

// Inputs of the identity run: values that are zero and an initial state that is I [K,K] for
// every (batch row, head), both as stride-0 views over one small buffer.
struct IdentityRun {
  IdentityRun(index_t B, index_t T, index_t H, index_t K) : eye(static_cast<std::size_t>(K * K), 0.f) {
    for (index_t i = 0; i < K; ++i) eye[static_cast<std::size_t>(i * K + i)] = 1.f;
    zero_values = ConstView<float, 4>(&zero, {B, T, H, K}, {0, 0, 0, 0});
    identity = ConstView<float, 4>(eye.data(), {B, H, K, K}, {0, 0, K, 1});
  }
  float zero = 0.f;
  std::vector<float> eye;
  ConstView<float, 4> zero_values;  // [B,T,H,K]
  ConstView<float, 4> identity;     // [B,H,K,K]
};

// The checks a matrix slice call adds to the op's own (before anything is written): a dense
// batch, no initial state (a slice runs from zero), a final state, no token states, readout
// [B,T,H,K] and transition [B,H,K,K] apart from each other and from every other argument.
template <class... Others>
void check_matrix_slice(const ArgCheck& check, const SequenceBatch& batch, const ConstView<float, 4>& initial,
                        const TensorView<float, 4>& final_state, bool token_states, const detail::la::Dims& d,
                        const TensorView<float, 4>& readout, const TensorView<float, 4>& transition,
                        const Others&... others) {
  detail::check_slice_batch(check, batch);
  if (token_states) check.fail("token_states", "is not supported by the slice functions (leave it empty)");
  if (initial.has_value())
    check.fail("initial_state", "must be empty: a slice runs from a zero state (its true one is applied later)");
  check.shape("final_state", final_state, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}, "B,H,K,V");
  check.shape("readout", readout, std::array<index_t, 4>{d.B, d.T, d.HV, d.K}, "B,T,H,K");
  check.shape("transition", transition, std::array<index_t, 4>{d.B, d.HV, d.K, d.K}, "B,H,K,K");
  check.no_overlap("readout", readout, "transition", transition);
  detail::la::check_no_overlap(check, "readout", readout, final_state, others...);
  detail::la::check_no_overlap(check, "transition", transition, final_state, others...);
}

}  // namespace seqmix::delta_update
