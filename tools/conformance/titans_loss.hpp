// The "loss" param of the titans and titans_mlp cases (Miras' attentional biases), shared by
// run_titans.cpp and run_titans_mlp.cpp.
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

}  // namespace seqmix::conformance
