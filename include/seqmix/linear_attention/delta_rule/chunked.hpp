// The fast prefill of delta_rule: gated_delta_rule's chunked WY form (or its recurrent kernel,
// see delta_update::choose_delta_algorithm) with no decay; the exp factors drop out.
#pragma once

#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"

namespace seqmix {

/// DeltaNet prefill. final_state may be the initial_state view (updated in place).
inline void delta_rule(const DeltaRuleInputs& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("delta_rule");
  delta_update::fast_delta(check, delta_update::ungated_call(in, out, options), executor);
}

}  // namespace seqmix
