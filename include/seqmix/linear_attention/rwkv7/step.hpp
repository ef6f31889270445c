// The decode step of rwkv7: one token per batch row, the state [B,H,K,V] updated in place by
// the fused kernel of delta_update/recurrent.hpp (one pass reading S^T a, one pass writing S
// and reading o, the column tile in L1 between them). With batch.state_indices the state is a
// pool [S,H,K,V] updated in place row by row (-1: padding row); no allocation after warm-up.
#pragma once

#include "seqmix/linear_attention/rwkv7/recurrent.hpp"

namespace seqmix {

/// RWKV-7 decode step: one token per batch row, out.state updated in place (or pool rows through
/// in.batch.state_indices); o is read from the updated state. Threaded over (row, head).
inline void rwkv7_step(const Rwkv7StepInputs& in, const Rwkv7StepOutputs& out,
                       const Executor& executor = serial_executor()) {
  using namespace delta_update;
  static const ArgCheck check("rwkv7_step");  // built once: a step allocates nothing
  const Dims d = validate_rwkv7_step(check, in, out, executor);
  const StepSlots slots = check_step_slots(check, in.batch, d.B, out.state.size(0));
  refuse_overlap(check, "o", out.o, "state", out.state);
  auto make_token = [&](index_t b, index_t h, TokenWorkspace& ws) {
    return load_rwkv7_token(in.r, in.k, in.v, in.a, in.b, in.g, b, h, ws);
  };
  auto store_output = [&](index_t b, index_t h, const float* o) {
    const TensorView<float, 1> row = out.o[b][h];
    for (index_t c = 0; c < d.V; ++c) row(c) = o[c];
  };
  run_step(Update::rwkv7, d.B, d.H, d.K, d.V, out.state, slots, executor, make_token, store_output);
}

}  // namespace seqmix
