// The decode step of linear_attention: one token per batch row; state [B,HV,Kf,V] (and the
// normalizer z [B,HV,Kf] when normalizing), or rows of pools [S,...] through
// batch.state_indices, updated in place by the recurrent kernel; no allocation after warm-up.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"

namespace seqmix {

namespace detail::la {

// The step on q/k/v stored as T (float, bf16, f16): see seqmix::linear_attention_step.
template <class T>
void linear_attention_step_of(const LinearAttentionStepInputsOf<T>& in, const LinearAttentionStepOutputs& out,
                              const LinearAttentionOptions& options, const Executor& executor) {
  static const ArgCheck check("linear_attention_step");
  const Dims d = validate_linear_attention_step(check, in, out, options);
  const float scale = check_scale(check, options.scale, d.K);
  run_step(d.B, d.HV, d.K, d.Kf, d.V, options.normalize, out.state, out.normalizer, in.batch, executor,
           [&](index_t b, index_t hv) {
             HeadProblem p = step_head(in.q, in.k, in.v, out.o, d, b, hv);  // 16-bit rows widen as loaded
             p.phi = options.feature_map;
             p.scale = scale;
             p.normalize = options.normalize;
             return p;
           });
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
