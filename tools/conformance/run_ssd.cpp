// seqmix-conformance runners for "ssd" (SPEC section 3): the fast prefill (seqmix::ssd, automatic
// algorithm choice) and the reference recurrence, each checked against the golden outputs.
#include "registry.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_ssd(const CaseData& c, bool fast) {
  seqmix::SsdInputs in;
  in.x = c.in<4>("x", "B,T,H,P");
  in.dt = c.in<3>("dt", "B,T,H");
  in.A = c.in<1>("A", "H");
  in.Bm = c.in<4>("Bm", "B,T,G,N");
  in.Cm = c.in<4>("Cm", "B,T,G,N");
  in.D = c.opt_in<1>("D", "H");
  in.z = c.opt_in<4>("z", "B,T,H,P");
  in.dt_bias = c.opt_in<1>("dt_bias", "H");
  in.initial_state = c.opt_in<4>("initial_state", "B,H,P,N");
  seqmix::SsdOptions options;
  options.dt_softplus = c.param_bool("dt_softplus", false);
  OutputMap out;
  const seqmix::SsdOutputs outputs{c.make_output<4>(out, "y"), c.make_output<4>(out, "final_state")};
  if (fast)
    seqmix::ssd(in, outputs, options);
  else
    seqmix::reference::ssd(in, outputs, options);
  return out;
}

const RegisterOp kSsd("ssd", [](const CaseData& c) { return run_ssd(c, true); },
                      [](const CaseData& c) { return run_ssd(c, false); });

}  // namespace
