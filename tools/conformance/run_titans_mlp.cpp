// seqmix-conformance runner for titans_mlp (docs/operators.md section 12, "titans with a two-layer
// MLP memory"): the mini-batch prefill in the "fast" slot, the double reference in the other.
// Params: mini_batch (default 16), loss ("l2" default, "l1", "l3", "huber": Miras' biases),
// huber_delta; optional input huber_delta [B,T,HV] (Yaad's per-token threshold); retention
// ("decay" default, "lq_normalized": Moneta, "softmax_kl": Memora), retention_q, softmax_axis.
#include <string>

#include "registry.hpp"
#include "titans_loss.hpp"
#include "seqmix/rnn.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_titans_mlp(const CaseData& c, bool fast) {
  seqmix::TitansMlpInputs in;
  in.q = c.in<4>("q", "B,T,HK,K");
  in.k = c.in<4>("k", "B,T,HK,K");
  in.v = c.in<4>("v", "B,T,HV,K");
  in.alpha = c.in<3>("alpha", "B,T,HV");
  in.eta = c.in<3>("eta", "B,T,HV");
  in.theta = c.in<3>("theta", "B,T,HV");
  in.initial_w1 = c.in<4>("initial_w1", "B,HV,K,M");
  in.initial_w2 = c.in<4>("initial_w2", "B,HV,M,K");
  in.initial_s1 = c.opt_in<4>("initial_s1", "B,HV,K,M");
  in.initial_s2 = c.opt_in<4>("initial_s2", "B,HV,M,K");
  in.huber_delta = c.opt_in<3>("huber_delta", "B,T,HV");  // Yaad's per-token delta_t (huber only)
  seqmix::TitansMlpOptions options;
  options.mini_batch = c.param_int("mini_batch", 16);
  options.loss = titans_loss_param(c, "titans_mlp");
  options.huber_delta = static_cast<float>(c.param_double("huber_delta", 1.0));
  titans_retention_params(c, "titans_mlp", options);
  OutputMap out;
  const seqmix::TitansMlpOutputs outputs{c.make_output<4>(out, "y"), c.make_output<4>(out, "final_w1"),
                                         c.make_output<4>(out, "final_w2"), c.make_output<4>(out, "final_s1"),
                                         c.make_output<4>(out, "final_s2")};
  if (fast)
    seqmix::titans_mlp(in, outputs, options);
  else
    seqmix::reference::titans_mlp(in, outputs, options);
  return out;
}

const RegisterOp kTitansMlp("titans_mlp", [](const CaseData& c) { return run_titans_mlp(c, true); },
                            [](const CaseData& c) { return run_titans_mlp(c, false); });

}  // namespace
