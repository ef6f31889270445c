// seqmix-conformance runner for titans (docs/operators.md section 12, "titans"): the chunked
// prefill in the "fast" slot, which also checks the recurrent prefill against it, and the
// reference. Params: scale, loss ("l2" default, "l1", "l3", "huber": Miras' biases), huber_delta;
// optional input huber_delta [B,T,HV] (Yaad's per-token threshold); retention ("decay" default,
// "lq_normalized": Moneta, "softmax_kl": Memora), retention_q (4 default), softmax_axis ("key"
// default, "value").
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "registry.hpp"
#include "titans_loss.hpp"
#include "seqmix/rnn.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_titans(const CaseData& c, bool fast) {
  seqmix::TitansInputs in;
  in.q = c.in<4>("q", "B,T,HK,K");
  in.k = c.in<4>("k", "B,T,HK,K");
  in.v = c.in<4>("v", "B,T,HV,V");
  in.alpha = c.in<3>("alpha", "B,T,HV");
  in.eta = c.in<3>("eta", "B,T,HV");
  in.theta = c.in<3>("theta", "B,T,HV");
  in.initial_memory = c.opt_in<4>("initial_memory", "B,HV,K,V");
  in.initial_momentum = c.opt_in<4>("initial_momentum", "B,HV,K,V");
  in.huber_delta = c.opt_in<3>("huber_delta", "B,T,HV");  // Yaad's per-token delta_t (huber only)
  seqmix::TitansOptions options;
  if (const auto scale = c.param_opt_double("scale")) options.scale = static_cast<float>(*scale);
  options.loss = titans_loss_param(c, "titans");
  options.huber_delta = static_cast<float>(c.param_double("huber_delta", 1.0));
  titans_retention_params(c, "titans", options);
  OutputMap out;
  const seqmix::TitansOutputs outputs{c.make_output<4>(out, "y"), c.make_output<4>(out, "final_memory"),
                                      c.make_output<4>(out, "final_momentum")};
  if (!fast) {
    seqmix::reference::titans(in, outputs, options);
    return out;
  }
  seqmix::titans(in, outputs, options);
  OutputMap rec;
  options.algorithm = seqmix::TitansAlgorithm::recurrent;
  seqmix::titans(in, {c.make_output<4>(rec, "y"), c.make_output<4>(rec, "final_memory"), c.make_output<4>(rec, "final_momentum")},
                 options);
  for (const char* name : {"y", "final_memory", "final_momentum"}) {
    const std::vector<float>& a = out[name];
    const std::vector<float>& b = rec[name];
    for (std::size_t j = 0; j < a.size(); ++j)
      if (!(std::abs(a[j] - b[j]) <= c.tol * std::max(1.f, std::abs(a[j]))))
        throw CaseError(c.id() + ": the recurrent prefill's " + name + " differs from the chunked one at element " +
                        std::to_string(j));
  }
  return out;
}

const RegisterOp kTitans("titans", [](const CaseData& c) { return run_titans(c, true); },
                         [](const CaseData& c) { return run_titans(c, false); });

}  // namespace
