// seqmix-conformance runners for the linear-attention family (SPEC section 4):
// "linear_attention", "gated_linear_attention" and "rwkv6". The fast runner is each op's public
// prefill (automatic algorithm choice), the reference runner its token-by-token definition.
#include <string>

#include "registry.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace {

using namespace seqmix::conformance;

std::optional<float> scale_param(const CaseData& c) {
  const std::optional<double> scale = c.param_opt_double("scale");
  return scale ? std::optional<float>(static_cast<float>(*scale)) : std::nullopt;
}

seqmix::FeatureMap feature_map_param(const CaseData& c) {
  const std::string name = c.param_string("feature_map", "identity");
  if (name == "identity") return seqmix::FeatureMap::identity;
  if (name == "elu1") return seqmix::FeatureMap::elu1;
  if (name == "relu") return seqmix::FeatureMap::relu;
  if (name == "taylor2") return seqmix::FeatureMap::taylor2;
  throw CaseError(c.id() + ": param 'feature_map' must be identity, elu1, relu or taylor2, got \"" + name + "\"");
}

OutputMap run_linear_attention(const CaseData& c, bool fast) {
  seqmix::LinearAttentionInputs in;
  in.q = c.in<4>("q", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.initial_state = c.opt_in<4>("initial_state", "B,HV,Kf,V");
  seqmix::LinearAttentionOptions options;
  options.scale = scale_param(c);
  options.feature_map = feature_map_param(c);
  options.normalize = c.param_bool("normalize", false);
  options.prefix_len = c.param_int("prefix_len", 0);
  OutputMap out;
  seqmix::LinearAttentionOutputs outputs;
  outputs.o = c.make_output<4>(out, "o");
  outputs.final_state = c.make_output<4>(out, "final_state");
  if (fast)
    seqmix::linear_attention(in, outputs, options);
  else
    seqmix::reference::linear_attention(in, outputs, options);
  return out;
}

OutputMap run_gla(const CaseData& c, bool fast) {
  seqmix::GatedLinearAttentionInputs in;
  in.q = c.in<4>("q", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.initial_state = c.opt_in<4>("initial_state", "B,HV,K,V");
  seqmix::GatedLinearAttentionOptions options;
  options.scale = scale_param(c);
  const std::string gate = c.param_string("gate", "channel");
  if (gate == "channel") {
    options.gate = seqmix::GateKind::channel;
    in.g = c.in<4>("g", "B,T,H,K");
  } else if (gate == "scalar") {
    options.gate = seqmix::GateKind::scalar;
    in.g_scalar = c.in<3>("g", "B,T,H");
  } else {
    throw CaseError(c.id() + ": param 'gate' must be \"channel\" or \"scalar\", got \"" + gate + "\"");
  }
  OutputMap out;
  const seqmix::GatedLinearAttentionOutputs outputs{c.make_output<4>(out, "o"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::gated_linear_attention(in, outputs, options);
  else
    seqmix::reference::gated_linear_attention(in, outputs, options);
  return out;
}

OutputMap run_rwkv6(const CaseData& c, bool fast) {
  seqmix::Rwkv6Inputs in;
  in.r = c.in<4>("r", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.g = c.in<4>("g", "B,T,H,K");
  in.u = c.in<2>("u", "H,K");
  in.initial_state = c.opt_in<4>("initial_state", "B,HV,K,V");
  OutputMap out;
  const seqmix::Rwkv6Outputs outputs{c.make_output<4>(out, "o"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::rwkv6(in, outputs);
  else
    seqmix::reference::rwkv6(in, outputs);
  return out;
}

const RegisterOp kLinearAttention("linear_attention", [](const CaseData& c) { return run_linear_attention(c, true); },
                                  [](const CaseData& c) { return run_linear_attention(c, false); });
const RegisterOp kGla("gated_linear_attention", [](const CaseData& c) { return run_gla(c, true); },
                      [](const CaseData& c) { return run_gla(c, false); });
const RegisterOp kRwkv6("rwkv6", [](const CaseData& c) { return run_rwkv6(c, true); },
                        [](const CaseData& c) { return run_rwkv6(c, false); });

}  // namespace
