// seqmix-conformance runners for the delta-rule family (SPEC section 4): "delta_rule",
// "gated_delta_rule" (params scale, gate "scalar" | "channel") and "rwkv7". The fast runner is
// each op's public prefill (automatic algorithm choice), except that one-token cases go through
// the decode step; the reference runner is the token-by-token definition.
#include <optional>
#include <string>

#include "registry.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"

namespace {

using namespace seqmix::conformance;

std::optional<float> scale_param(const CaseData& c) {
  const std::optional<double> scale = c.param_opt_double("scale");
  return scale ? std::optional<float>(static_cast<float>(*scale)) : std::nullopt;
}

OutputMap run_delta_rule(const CaseData& c, bool fast) {
  seqmix::DeltaRuleInputs in;
  in.q = c.in<4>("q", "B,T,HK,K");
  in.k = c.in<4>("k", "B,T,HK,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.beta = c.in<3>("beta", "B,T,HV");
  in.initial_state = c.opt_in<4>("initial_state", "B,HV,K,V");
  seqmix::DeltaRuleOptions options;
  options.scale = scale_param(c);
  OutputMap out;
  const seqmix::DeltaRuleOutputs outputs{c.make_output<4>(out, "o"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::delta_rule(in, outputs, options);
  else
    seqmix::reference::delta_rule(in, outputs, options);
  return out;
}

OutputMap run_gated_delta_rule(const CaseData& c, bool fast) {
  seqmix::GatedDeltaRuleInputs in;
  in.q = c.in<4>("q", "B,T,HK,K");
  in.k = c.in<4>("k", "B,T,HK,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.beta = c.in<3>("beta", "B,T,HV");
  in.initial_state = c.opt_in<4>("initial_state", "B,HV,K,V");
  seqmix::GatedDeltaRuleOptions options;
  options.scale = scale_param(c);
  const std::string gate = c.param_string("gate", "scalar");
  if (gate == "scalar") {
    options.gate = seqmix::DeltaGate::scalar;
    in.g_scalar = c.in<3>("g", "B,T,HV");
  } else if (gate == "channel") {
    options.gate = seqmix::DeltaGate::channel;
    in.g = c.in<4>("g", "B,T,HV,K");
  } else {
    throw CaseError(c.id() + ": param 'gate' must be \"scalar\" or \"channel\", got \"" + gate + "\"");
  }
  OutputMap out;
  const seqmix::GatedDeltaRuleOutputs outputs{c.make_output<4>(out, "o"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::gated_delta_rule(in, outputs, options);
  else
    seqmix::reference::gated_delta_rule(in, outputs, options);
  return out;
}

OutputMap run_rwkv7(const CaseData& c, bool fast) {
  seqmix::Rwkv7Inputs in;
  in.r = c.in<4>("r", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,H,V");
  in.a = c.in<4>("a", "B,T,H,K");
  in.b = c.in<4>("b", "B,T,H,K");
  in.g = c.in<4>("g", "B,T,H,K");
  in.initial_state = c.opt_in<4>("initial_state", "B,H,K,V");
  OutputMap out;
  const seqmix::Rwkv7Outputs outputs{c.make_output<4>(out, "o"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::rwkv7(in, outputs);
  else
    seqmix::reference::rwkv7(in, outputs);
  return out;
}

const RegisterOp kDeltaRule("delta_rule", [](const CaseData& c) { return run_delta_rule(c, true); },
                            [](const CaseData& c) { return run_delta_rule(c, false); });
const RegisterOp kGatedDeltaRule("gated_delta_rule", [](const CaseData& c) { return run_gated_delta_rule(c, true); },
                                 [](const CaseData& c) { return run_gated_delta_rule(c, false); });
const RegisterOp kRwkv7("rwkv7", [](const CaseData& c) { return run_rwkv7(c, true); },
                        [](const CaseData& c) { return run_rwkv7(c, false); });

}  // namespace
