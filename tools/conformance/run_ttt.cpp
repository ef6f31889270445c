// seqmix-conformance runners for the TTT layer (docs/operators.md section 12): ttt_linear and ttt_mlp (the
// dual-form prefill in the "fast" slot, the per-mini-batch reference in the other).
#include <string>

#include "registry.hpp"
#include "seqmix/rnn.hpp"

namespace {

using namespace seqmix::conformance;

seqmix::TttOptions ttt_options(const CaseData& c) {
  seqmix::TttOptions options;
  options.mini_batch = c.param_int("mini_batch", 16);
  options.ln_eps = static_cast<float>(c.param_double("ln_eps", 1e-6));
  const std::string bias = c.param_string("inner_bias", "none");
  if (bias == "trained")
    options.inner_bias = seqmix::TttInnerBias::trained;
  else if (bias != "none")
    throw CaseError(c.id() + ": param 'inner_bias' must be \"none\" or \"trained\", got \"" + bias + "\"");
  return options;
}

OutputMap run_ttt_linear(const CaseData& c, bool fast) {
  seqmix::TttLinearInputs in;
  in.q = c.in<4>("q", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,H,K");
  in.eta = c.in<3>("eta", "B,T,H");
  in.ln_weight = c.in<2>("ln_weight", "H,K");
  in.ln_bias = c.in<2>("ln_bias", "H,K");
  in.token_scale = c.opt_in<1>("token_scale", "mini_batch");
  in.initial_w = c.opt_in<4>("initial_w", "B,H,K,K");
  in.initial_b = c.opt_in<3>("initial_b", "B,H,K");
  OutputMap out;
  seqmix::TttLinearOutputs outputs{c.make_output<4>(out, "z")};
  if (c.outputs.count("final_w")) outputs.final_w = c.make_output<4>(out, "final_w");
  if (c.outputs.count("final_b")) outputs.final_b = c.make_output<3>(out, "final_b");
  fast ? seqmix::ttt_linear(in, outputs, ttt_options(c)) : seqmix::reference::ttt_linear(in, outputs, ttt_options(c));
  return out;
}

OutputMap run_ttt_mlp(const CaseData& c, bool fast) {
  seqmix::TttMlpInputs in;
  in.q = c.in<4>("q", "B,T,H,K");
  in.k = c.in<4>("k", "B,T,H,K");
  in.v = c.in<4>("v", "B,T,H,K");
  in.eta = c.in<3>("eta", "B,T,H");
  in.ln_weight = c.in<2>("ln_weight", "H,K");
  in.ln_bias = c.in<2>("ln_bias", "H,K");
  in.token_scale = c.opt_in<1>("token_scale", "mini_batch");
  in.initial_w1 = c.in<4>("initial_w1", "B,H,K,M");
  in.initial_w2 = c.in<4>("initial_w2", "B,H,M,K");
  in.initial_b1 = c.opt_in<3>("initial_b1", "B,H,M");
  in.initial_b2 = c.opt_in<3>("initial_b2", "B,H,K");
  OutputMap out;
  seqmix::TttMlpOutputs outputs{c.make_output<4>(out, "z")};
  if (c.outputs.count("final_w1")) outputs.final_w1 = c.make_output<4>(out, "final_w1");
  if (c.outputs.count("final_w2")) outputs.final_w2 = c.make_output<4>(out, "final_w2");
  if (c.outputs.count("final_b1")) outputs.final_b1 = c.make_output<3>(out, "final_b1");
  if (c.outputs.count("final_b2")) outputs.final_b2 = c.make_output<3>(out, "final_b2");
  fast ? seqmix::ttt_mlp(in, outputs, ttt_options(c)) : seqmix::reference::ttt_mlp(in, outputs, ttt_options(c));
  return out;
}

const RegisterOp kTttLinear("ttt_linear", [](const CaseData& c) { return run_ttt_linear(c, true); },
                            [](const CaseData& c) { return run_ttt_linear(c, false); });
const RegisterOp kTttMlp("ttt_mlp", [](const CaseData& c) { return run_ttt_mlp(c, true); },
                         [](const CaseData& c) { return run_ttt_mlp(c, false); });

}  // namespace
