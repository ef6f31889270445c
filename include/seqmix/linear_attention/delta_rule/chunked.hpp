// The fast prefill of delta_rule: gated_delta_rule's chunked WY form (or its recurrent kernel,
// see delta_update::choose_delta_algorithm) with no decay; the exp factors drop out.
#pragma once

#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"

namespace seqmix {

/// DeltaNet prefill. final_state may be the initial_state view (updated in place).
inline void delta_rule(const DeltaRuleInputs& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                       const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("delta_rule", in, out);
    return delta_rule(rev.first, rev.second, detail::forward_options(options), executor);
  }
  static const ArgCheck check("delta_rule");
  delta_update::fast_delta(check, delta_update::ungated_call(in, out, options), executor);
}

}  // namespace seqmix
