// The decode step of rwkv7: one token per batch row, the state [B,H,K,V] updated in place by
// the fused kernel of delta_update/recurrent.hpp (one pass reading S^T a, one pass writing S
// and reading o, the column tile in L1 between them). With batch.state_indices the state is a
// pool [S,H,K,V] updated in place row by row (-1: padding row); no allocation after warm-up.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/rwkv7/recurrent.hpp"

namespace seqmix {

namespace detail {

// The step on r/k/v/a/b stored as T (float, bf16, f16): the token's rows are widened into the
// kernel's scratch as it loads them.
template <class T>
void rwkv7_step_rows(const Rwkv7StepInputsOf<T>& in, const Rwkv7StepOutputs& out, const Executor& executor) {
  using namespace delta_update;
  static const ArgCheck check("rwkv7_step");  // built once per T: a step allocates nothing
  const Dims d = validate_rwkv7_step(check, in, out, executor);
  const delta_update::StepSlots slots = check_step_slots(check, in.batch, d.B, out.state.size(0));
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

}  // namespace detail

/// RWKV-7 decode step: one token per batch row, out.state updated in place (or pool rows through
/// in.batch.state_indices); o is read from the updated state. Threaded over (row, head).
inline void rwkv7_step(const Rwkv7StepInputs& in, const Rwkv7StepOutputs& out,
                       const Executor& executor = serial_executor()) {
  detail::rwkv7_step_rows(in, out, executor);
}

/// The same on r/k/v/a/b stored as seqmix::bf16 or seqmix::f16 (g, state and output fp32): a
/// 16-bit prefill followed by 16-bit steps equals one 16-bit prefill, to rounding.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void rwkv7_step(const Rwkv7StepInputsOf<H>& in, const Rwkv7StepOutputs& out, const Executor& executor = serial_executor()) {
  detail::rwkv7_step_rows(in, out, executor);
}

}  // namespace seqmix
