// The decode step of gated_linear_attention (and simple_gla / retention / ungated): one token
// per batch row, the state [B,HV,K,V] (or rows of a pool [S,HV,K,V] through
// batch.state_indices) updated in place, with no heap allocation after the first call. Each (batch, value head) is the
// recurrent kernel of diagonal_decay/recurrent.hpp: 3 vector ops per state element, o and v in registers.
#pragma once

#include <type_traits>
#include <vector>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"

namespace seqmix {

namespace detail {

// The step on q/k/v stored as T (float, bf16, f16): the token's rows are widened into the
// recurrent kernel's scratch as it loads them (InputRows); state, gates and output are fp32.
template <class T>
void gla_step(const GatedLinearAttentionStepInputsOf<T>& in, const GatedLinearAttentionStepOutputs& out,
              const GatedLinearAttentionOptions& options, const Executor& executor) {
  using namespace la;
  static const ArgCheck check("gated_linear_attention_step");  // built once per T: a step allocates nothing
  const Dims d = validate_gla_step(check, in, out, options, executor);
  const float scale = check_scale(check, options.scale, d.K);
  const float* fixed_gates = options.gate == GateKind::retnet ? retnet_gates_cached(d.HV) : nullptr;
  run_step(d.B, d.HV, d.K, d.K, d.V, false, out.state, TensorView<float, 3>(), in.batch, executor,
           [&](index_t b, index_t hv) {
               HeadProblem p = step_head(in.q, in.k, in.v, out.o, d, b, hv);
               p.scale = scale;
               switch (options.gate) {
                 case GateKind::channel: p.g = as_token(in.g[b][head_for(in.g.size(1), hv, d)]); break;
                 case GateKind::scalar:
                   p.g = ConstView<float, 2>(in.g_scalar.ptr(b, head_for(in.g_scalar.size(1), hv, d)), {1, d.K}, {0, 0});
                   p.scalar_gate = true;
                   break;
                 case GateKind::retnet:
                   p.g = ConstView<float, 2>(fixed_gates + hv, {1, d.K}, {0, 0});
                   p.scalar_gate = true;
                   break;
                 case GateKind::none: break;
               }
               return p;
           });
}

}  // namespace detail

/// GLA decode step: one token per batch row, out.state (or pool rows through
/// in.batch.state_indices) decayed and updated in place, then read for o. No allocation after the
/// first call.
inline void gated_linear_attention_step(const GatedLinearAttentionStepInputs& in,
                                        const GatedLinearAttentionStepOutputs& out,
                                        const GatedLinearAttentionOptions& options = {},
                                        const Executor& executor = serial_executor()) {
  detail::gla_step(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (gates, state and output fp32): the
/// token's rows are widened into the step's scratch, so a 16-bit prefill (gated_linear_attention)
/// followed by 16-bit steps equals one 16-bit prefill over all the tokens, to rounding.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void gated_linear_attention_step(const GatedLinearAttentionStepInputsOf<H>& in, const GatedLinearAttentionStepOutputs& out,
                                 const GatedLinearAttentionOptions& options = {},
                                 const Executor& executor = serial_executor()) {
  detail::gla_step(in, out, options, executor);
}

/// simple_gla_step on 16-bit q/k/v (see the bf16 / f16 gated_linear_attention_step).
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void simple_gla_step(const GatedLinearAttentionStepInputsOf<H>& in, const GatedLinearAttentionStepOutputs& out,
                     GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::scalar;
  detail::gla_step(in, out, options, executor);
}

/// gated_linear_attention_step with GateKind::scalar (one log-decay per token and head, g_scalar).
inline void simple_gla_step(const GatedLinearAttentionStepInputs& in, const GatedLinearAttentionStepOutputs& out,
                            GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::scalar;
  gated_linear_attention_step(in, out, options, executor);
}

/// gated_linear_attention_step with GateKind::retnet (RetNet's fixed per-head decay, no gate input).
inline void retention_step(const GatedLinearAttentionStepInputs& in, const GatedLinearAttentionStepOutputs& out,
                           GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::retnet;
  gated_linear_attention_step(in, out, options, executor);
}

}  // namespace seqmix
