// seqmix-conformance runner for mom (docs/operators.md section 4, mom): the fast prefill and the
// reference. The routes are stored as float (the golden writer's type) and converted to int32 ids.
#include <cmath>
#include <vector>

#include "registry.hpp"
#include "seqmix/linear_attention/mom/fast.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_mom(const CaseData& c, bool fast) {
  seqmix::MomOptions options;
  options.memories = c.param_int("memories", 1);
  options.memory.gate = c.param_string("gate", "scalar") == "channel" ? seqmix::DeltaGate::channel : seqmix::DeltaGate::scalar;
  seqmix::MomInputs in;
  in.q = c.in<4>("q", "B,T,HK,K");
  in.k = c.in<5>("k", "B,T,E,HK,K");
  in.v = c.in<5>("v", "B,T,E,HV,V");
  in.beta = c.in<4>("beta", "B,T,E,HV");
  in.g_scalar = c.opt_in<4>("g_scalar", "B,T,E,HV");
  in.g = c.opt_in<5>("g", "B,T,E,HV,K");
  in.weight = c.in<3>("weight", "B,T,E");
  in.initial_state = c.opt_in<5>("initial_state", "B,M,HV,K,V");
  const auto ids = c.in<3>("memory", "B,T,E");
  std::vector<std::int32_t> memory;
  for (seqmix::index_t b = 0; b < ids.size(0); ++b)
    for (seqmix::index_t t = 0; t < ids.size(1); ++t)
      for (seqmix::index_t e = 0; e < ids.size(2); ++e) {
        const float id = ids(b, t, e);
        if (id != std::floor(id)) throw CaseError(c.id() + ": memory ids must be whole numbers");
        memory.push_back(static_cast<std::int32_t>(id));
      }
  in.memory = seqmix::ConstView<std::int32_t, 3>(memory.data(), ids.shape());
  OutputMap out;
  const seqmix::MomOutputs outputs{c.make_output<4>(out, "o"), c.make_output<5>(out, "final_state")};
  if (fast)
    seqmix::mom(in, outputs, options);
  else
    seqmix::reference::mom(in, outputs, options);
  return out;
}

const RegisterOp kMom("mom", [](const CaseData& c) { return run_mom(c, true); },
                      [](const CaseData& c) { return run_mom(c, false); });

}  // namespace
