// seqmix-conformance runners for hyena and h3 (docs/operators.md section 11): the fast prefill
// (automatic long_conv method) and the reference.
#include "registry.hpp"
#include "seqmix/lti.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_hyena(const CaseData& c, bool reference) {
  seqmix::HyenaInputs in;
  in.v = c.in<3>("v", "B,T,D");
  in.x = c.in<4>("x", "N,B,T,D");
  in.filter = c.in<3>("filter", "N,L,D");
  in.skip = c.opt_in<2>("skip", "N,D");
  in.initial_state = c.opt_in<4>("initial_state", "N,B,L-1,D");
  OutputMap out;
  seqmix::HyenaOutputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state")) outputs.final_state = c.make_output<4>(out, "final_state");
  if (reference)
    seqmix::reference::hyena(in, outputs);
  else
    seqmix::hyena(in, outputs);
  return out;
}

OutputMap run_h3(const CaseData& c, bool reference) {
  const seqmix::H3Inputs in{c.in<4>("q", "B,T,H,P"), c.in<4>("k", "B,T,H,P"), c.in<4>("v", "B,T,H,P"),
                            c.in<2>("shift_filter", "Ls,H*P"), c.in<2>("diag_filter", "L,H*P")};
  OutputMap out;
  const seqmix::H3Outputs outputs{c.make_output<4>(out, "y")};
  if (reference)
    seqmix::reference::h3(in, outputs);
  else
    seqmix::h3(in, outputs);
  return out;
}

const RegisterOp kHyena("hyena", [](const CaseData& c) { return run_hyena(c, false); },
                        [](const CaseData& c) { return run_hyena(c, true); });
const RegisterOp kH3("h3", [](const CaseData& c) { return run_h3(c, false); },
                     [](const CaseData& c) { return run_h3(c, true); });

}  // namespace
