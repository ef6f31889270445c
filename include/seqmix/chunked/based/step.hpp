// BASED decode step: one token per batch row. The linear branch is seqmix::linear_attention_step
// on (state.kv, state.normalizer); the window branch writes the token into its ring slot
// position % W and runs the split-KV decode attention over the min(position + 1, W) valid slots.
// Slot order does not matter: softmax attention without positional bias is permutation-invariant
// over its keys.
#pragma once

#include <algorithm>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"

namespace seqmix {

namespace detail::based {

// A [B,X,Y] step tensor as the [B,1,X,Y] sequence view the attention kernels take.
template <class T>
TensorView<T, 4> as_sequence(const TensorView<T, 3>& x) {
  return TensorView<T, 4>(x.data(), {x.size(0), 1, x.size(1), x.size(2)}, {x.stride(0), 0, x.stride(1), x.stride(2)});
}

}  // namespace detail::based

namespace detail::based {

// One token of every row of a validated dense call (state rows = batch rows, one position). The
// window branch's output goes through a per-thread scratch that only grows.
inline void step_rows(const BasedStepInputs& in, const BasedStepOutputs& out, BasedState& state,
                      const BasedOptions& options, const Dims& d, const Executor& executor) {
  if (d.B * d.H == 0) return;
  const bool normalize = options.normalization == BasedNormalization::feature_sum;
  LinearAttentionStepOutputs lout{out.o, state.kv, normalize ? state.normalizer : TensorView<float, 3>{}};
  linear_attention_step(LinearAttentionStepInputs{in.q_feat, in.k_feat, in.v, {}}, lout, linear_options(options, d.F),
                        executor);

  const index_t W = options.window, slot = state.position % W;
  for (index_t b = 0; b < d.B; ++b) {
    copy(in.k[b], state.window_k[b][slot]);
    copy(in.v[b], state.window_v[b][slot]);
  }
  const index_t n = std::min(state.position + 1, W);
  AttentionInputs<float> ai;
  ai.q = as_sequence(in.q);
  ai.k = state.window_k.as_const().slice(1, 0, n);
  ai.v = state.window_v.as_const().slice(1, 0, n);
  AttentionOptions ao;  // every valid slot is visible: no causal or window rule
  ao.scale = window_scale(options, d.D);
  thread_local AlignedVector<float> scratch;
  scratch.resize(std::max(scratch.size(), static_cast<std::size_t>(d.B * d.H * d.V)));
  const TensorView<float, 4> o_sw(scratch.data(), {d.B, 1, d.H, d.V});
  attention_step(ai, AttentionOutputs{o_sw, {}}, ao, executor);
  add_into(as_sequence(out.o), o_sw.as_const(), executor);
  ++state.position;
}

// A serving step: row b advances state row slots[b] (pool [S,...]) from its own position
// state.positions[row]; validated as a whole before any write, then one dense step per row (a
// fresh row's linear state cleared first). No allocation on a valid call after warm-up.
inline void serve_step(const BasedStepInputs& in, const BasedStepOutputs& out, BasedState& state,
                       const BasedOptions& options, const Executor& executor) {
  static const ArgCheck check("based_step");  // a static: building an ArgCheck may allocate its name
  const Dims d = step_dims(check, in, out, options);
  const index_t B = d.B;
  const index_t S = state.kv.size(0);
  Dims pool = d;
  pool.B = S;
  check_state_shapes(check, state, options, pool);
  detail::serving::check_position_pool(check, state.positions, S);
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, B, S);
  detail::serving::check_start_positions(check, state.positions, rows, B);
  const auto refuse_overlap = [&](const char* name, const ConstView<float, 3>& x) {
    check.no_overlap("o", out.o, name, x).no_overlap("state.kv", state.kv, name, x);
    check.no_overlap("state.normalizer", state.normalizer, name, x);
    check.no_overlap("state.window_k", state.window_k, name, x).no_overlap("state.window_v", state.window_v, name, x);
  };
  refuse_overlap("q_feat", in.q_feat), refuse_overlap("k_feat", in.k_feat), refuse_overlap("q", in.q);
  refuse_overlap("k", in.k), refuse_overlap("v", in.v);
  check.no_overlap("o", out.o, "state.kv", state.kv).no_overlap("o", out.o, "state.normalizer", state.normalizer);
  check.no_overlap("o", out.o, "state.window_k", state.window_k).no_overlap("o", out.o, "state.window_v", state.window_v);
  Dims one_row = d;
  one_row.B = 1;
  detail::serving::run_step_rows(check, rows, B, state, state_row, [&](index_t b, BasedState& one) {
    const BasedStepInputs in1{in.q_feat.slice(0, b, 1), in.k_feat.slice(0, b, 1), in.q.slice(0, b, 1),
                              in.k.slice(0, b, 1), in.v.slice(0, b, 1), {}};
    step_rows(in1, BasedStepOutputs{out.o.slice(0, b, 1)}, one, options, one_row, serial_executor());
  }, executor);
}

}  // namespace detail::based

/// Advances `state` by one token and writes that token's output. Scratch: B*H*V floats, per
/// thread, kept across steps.
/// Serving (in.batch, or state.positions given): state rows are pool slots at their own positions
/// (docs/operators.md section 9.2); batched decode of sequences at different positions is one call.
inline void based_step(const BasedStepInputs& in, const BasedStepOutputs& out, BasedState& state,
                       const BasedOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::based;
  if (detail::serving::uses_positions(in.batch, state.positions.has_value())) {
    serve_step(in, out, state, options, executor);
    return;
  }
  step_rows(in, out, state, options, validate_step("based_step", in, out, options, state), executor);
}

}  // namespace seqmix
