// The decode step of delta_rule: gated_delta_rule_step's fused kernel without the decay.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"

namespace seqmix {

namespace delta_update {

template <class T>
void ungated_step(const DeltaRuleStepInputsOf<T>& in, const DeltaRuleStepOutputs& out, const DeltaRuleOptions& options,
                  const Executor& executor) {
  DeltaStepCall<T> c;
  c.q = in.q, c.k = in.k, c.v = in.v, c.beta = in.beta;
  c.o = out.o, c.state = out.state, c.batch = in.batch, c.scale = options.scale, c.norm = options.qk_norm;
  static const ArgCheck check("delta_rule_step");
  fast_delta_step(check, c, executor);
}

}  // namespace delta_update

/// One decode token: o = scale S_t^T q with S updated in place (see reference.hpp).
inline void delta_rule_step(const DeltaRuleStepInputs& in, const DeltaRuleStepOutputs& out,
                            const DeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  delta_update::ungated_step(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (see gated_delta_rule_step's).
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void delta_rule_step(const DeltaRuleStepInputsOf<H>& in, const DeltaRuleStepOutputs& out,
                     const DeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  delta_update::ungated_step(in, out, options, executor);
}

}  // namespace seqmix
