// The decode step of delta_rule: gated_delta_rule_step's fused kernel without the decay.
#pragma once

#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"

namespace seqmix {

/// One decode token: o = scale S_t^T q with S updated in place (see reference.hpp).
inline void delta_rule_step(const DeltaRuleStepInputs& in, const DeltaRuleStepOutputs& out,
                            const DeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  delta_update::DeltaStepCall c;
  c.q = in.q, c.k = in.k, c.v = in.v, c.beta = in.beta;
  c.o = out.o, c.state = out.state, c.batch = in.batch, c.scale = options.scale, c.norm = options.qk_norm;
  static const ArgCheck check("delta_rule_step");
  delta_update::fast_delta_step(check, c, executor);
}

}  // namespace seqmix
