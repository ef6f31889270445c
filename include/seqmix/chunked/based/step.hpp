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

/// Advances `state` by one token and writes that token's output. Scratch: B*H*V floats.
inline void based_step(const BasedStepInputs& in, const BasedStepOutputs& out, BasedState& state,
                       const BasedOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::based;
  const Dims d = validate_step("based_step", in, out, options, state);
  if (d.B * d.H == 0) return;
  const bool normalize = options.normalization == BasedNormalization::feature_sum;
  LinearAttentionStepOutputs lout{out.o, state.kv, normalize ? state.normalizer : TensorView<float, 3>{}};
  linear_attention_step(LinearAttentionStepInputs{in.q_feat, in.k_feat, in.v, {}}, lout, linear_options(options, d.F, 1),
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
  Tensor<float, 4> o_sw({d.B, 1, d.H, d.V});
  attention_step(ai, AttentionOutputs{o_sw.view(), {}}, ao, executor);
  add_into(as_sequence(out.o), o_sw, executor);
  ++state.position;
}

}  // namespace seqmix
