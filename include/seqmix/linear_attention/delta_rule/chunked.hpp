// The fast prefill of delta_rule: gated_delta_rule's chunked WY form (or its recurrent kernel,
// see delta_update::choose_delta_algorithm) with no decay; the exp factors drop out.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"

namespace seqmix {

namespace detail {

// The prefill on q/k/v stored as T (float, bf16, f16).
template <class T>
void delta_rule_prefill(const DeltaRuleInputsOf<T>& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options,
                        const Executor& executor) {
  if (options.reverse) {
    const auto rev = reversed_call("delta_rule", in, out);
    return delta_rule_prefill(rev.first, rev.second, forward_options(options), executor);
  }
  static const ArgCheck check("delta_rule");
  delta_update::fast_delta(check, delta_update::ungated_call(in, out, options), executor);
}

}  // namespace detail

/// DeltaNet prefill. final_state may be the initial_state view (updated in place).
inline void delta_rule(const DeltaRuleInputs& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                       const Executor& executor = serial_executor()) {
  detail::delta_rule_prefill(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (beta, states and outputs fp32),
/// widened chunk by chunk or token by token as gated_delta_rule's 16-bit overload does.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void delta_rule(const DeltaRuleInputsOf<H>& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                const Executor& executor = serial_executor()) {
  detail::delta_rule_prefill(in, out, options, executor);
}

}  // namespace seqmix
