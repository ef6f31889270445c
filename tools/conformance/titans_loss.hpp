// The "loss" param of the titans and titans_mlp cases (Miras' attentional biases) and their
// retention params (Miras' retention gates), shared by run_titans.cpp and run_titans_mlp.cpp.
#pragma once

#include <string>

#include "registry.hpp"
#include "seqmix/rnn.hpp"

namespace seqmix::conformance {

// "l2" (the default), "l1", "l3" or "huber"; any other name is a CaseError naming `op`.
inline TitansLoss titans_loss_param(const CaseData& c, const std::string& op) {
  const std::string loss = c.param_string("loss", "l2");
  if (loss == "l2") return TitansLoss::l2;
  if (loss == "l1") return TitansLoss::l1;
  if (loss == "l3") return TitansLoss::l3;
  if (loss == "huber") return TitansLoss::huber;
  throw CaseError(c.id() + ": unknown " + op + " loss '" + loss + "'");
}

// The params retention ("decay" default, "lq_normalized": Moneta, "softmax_kl": Memora),
// retention_q (4 default) and softmax_axis ("key" default, "value") into `options`
// (TitansOptions or TitansMlpOptions); an unknown name is a CaseError naming `op`.
template <class Options>
void titans_retention_params(const CaseData& c, const std::string& op, Options& options) {
  const std::string retention = c.param_string("retention", "decay");
  if (retention == "lq_normalized")
    options.retention = TitansRetention::lq_normalized;
  else if (retention == "softmax_kl")
    options.retention = TitansRetention::softmax_kl;
  else if (retention != "decay")
    throw CaseError(c.id() + ": unknown " + op + " retention '" + retention + "'");
  options.retention_q = static_cast<float>(c.param_double("retention_q", 4.0));
  const std::string axis = c.param_string("softmax_axis", "key");
  if (axis != "key" && axis != "value") throw CaseError(c.id() + ": unknown " + op + " softmax_axis '" + axis + "'");
  options.softmax_axis = axis == "key" ? TitansSoftmaxAxis::key : TitansSoftmaxAxis::value;
}

}  // namespace seqmix::conformance
