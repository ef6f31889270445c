// The decode step of linear_attention: one token per batch row; state [B,HV,Kf,V] (and the
// normalizer z [B,HV,Kf] when normalizing), or rows of pools [S,...] through
// batch.state_indices, updated in place by the recurrent kernel; no allocation after warm-up.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"

namespace seqmix {

namespace detail::la {

// The one-token head of a step's batch row b and value head hv; E is q/k/v's storage type.
template <class E>
HeadProblem linear_attention_step_head(const LinearAttentionStepInputsOf<E>& in, const TensorView<float, 3>& o,
                                       const LinearAttentionOptions& options, float scale, const Dims& d, index_t b,
                                       index_t hv) {
  HeadProblem p;
  const index_t h = hv / d.heads_per_qk();
  p.q = as_token(in.q[b][h]);
  p.k = as_token(in.k[b][h]);
  p.v = as_token(in.v[b][hv]);
  p.o = as_token(o[b][hv]);
  p.phi = options.feature_map;
  p.scale = scale;
  p.normalize = options.normalize;
  return p;
}

template <class T>
void linear_attention_step_of(const LinearAttentionStepInputsOf<T>& in, const LinearAttentionStepOutputs& out,
                              const LinearAttentionOptions& options, const Executor& executor) {
  static const ArgCheck check("linear_attention_step");
  const Dims d = validate_linear_attention_step(check, in, out, options);
  const float scale = check_scale(check, options.scale, d.K);
  run_step(d.B, d.HV, d.K, d.Kf, d.V, options.normalize, out.state, out.normalizer, in.batch, executor,
           [&](index_t b, index_t hv) { return linear_attention_step_head(in, out.o, options, scale, d, b, hv); });
}

}  // namespace detail::la

/// Linear attention decode step: one token per batch row, state (and normalizer) updated in
/// place, or pool rows through in.batch.state_indices. No allocation after warm-up.
inline void linear_attention_step(const LinearAttentionStepInputs& in, const LinearAttentionStepOutputs& out,
                                  const LinearAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  detail::la::linear_attention_step_of(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16: the token's rows are widened as they
/// are loaded, before the feature map; states, normalizers and outputs stay fp32.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void linear_attention_step(const LinearAttentionStepInputsOf<H>& in, const LinearAttentionStepOutputs& out,
                           const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::la::linear_attention_step_of(in, out, options, executor);
}

}  // namespace seqmix
