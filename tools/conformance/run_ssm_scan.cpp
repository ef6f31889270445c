// seqmix-conformance runners for the Mamba-1 pair: causal_conv1d and selective_scan.
//
// The fast runners route one-token cases (T == 1) through the decode step, so the golden step
// case (causal_conv1d/b2_t1_d64_w4_step_bias) checks causal_conv1d_step as well.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "registry.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"

namespace {

using namespace seqmix::conformance;
using seqmix::index_t;

seqmix::ConvActivation parse_activation(const CaseData& c) {
  const std::string name = c.param_string("activation", "none");
  if (name == "none") return seqmix::ConvActivation::none;
  if (name == "silu") return seqmix::ConvActivation::silu;
  throw CaseError(c.id() + ": param 'activation' must be \"none\" or \"silu\", got \"" + name + "\"");
}

OutputMap run_causal_conv1d(const CaseData& c, bool fast) {
  seqmix::CausalConv1dInputs in;
  in.x = c.in<3>("x", "B,T,D");
  in.weight = c.in<2>("weight", "D,W");
  in.bias = c.opt_in<1>("bias", "D");
  in.initial_state = c.opt_in<3>("initial_state", "B,(W-1)*dilation,D");
  seqmix::CausalConv1dOptions options{parse_activation(c)};
  options.dilation = c.param_int("dilation", 1);
  options.lookahead = c.param_int("lookahead", 0);
  OutputMap out;
  const auto y = c.make_output<3>(out, "y");
  const auto final_state = c.make_output<3>(out, "final_state");
  if (!fast) {
    seqmix::reference::causal_conv1d(in, {y, final_state}, options);
  } else if (in.x.size(1) == 1 && options.lookahead == 0 &&
             final_state.size(1) == (in.weight.size(1) - 1) * options.dilation) {
    // (With a lookahead the step's output belongs to an earlier token: prefill only.)
    // Decode step: the state is updated in place, so start from a copy of the initial state.
    if (in.initial_state.has_value())
      seqmix::copy(in.initial_state, final_state);
    else
      std::fill(out["final_state"].begin(), out["final_state"].end(), 0.f);
    seqmix::causal_conv1d_step({in.x.select(1, 0), in.weight, in.bias}, {y.select(1, 0), final_state}, options);
  } else {
    seqmix::causal_conv1d(in, {y, final_state}, options);
  }
  return out;
}

OutputMap run_selective_scan(const CaseData& c, bool fast) {
  seqmix::SelectiveScanInputs in;
  in.u = c.in<3>("u", "B,T,D");
  in.delta = c.in<3>("delta", "B,T,D");
  in.A = c.in<2>("A", "D,N");
  in.Bm = c.in<4>("Bm", "B,T,G,N");
  in.Cm = c.in<4>("Cm", "B,T,G,N");
  in.Dskip = c.opt_in<1>("Dskip", "D");
  in.z = c.opt_in<3>("z", "B,T,D");
  in.delta_bias = c.opt_in<1>("delta_bias", "D");
  in.initial_state = c.opt_in<3>("initial_state", "B,D,N");
  seqmix::SelectiveScanOptions options;
  options.delta_softplus = c.param_bool("delta_softplus", false);
  OutputMap out;
  const auto y = c.make_output<3>(out, "y");
  const auto final_state = c.make_output<3>(out, "final_state");
  if (!fast) {
    seqmix::reference::selective_scan(in, {y, final_state}, options);
  } else if (in.u.size(1) == 1 && final_state.shape() == std::array<index_t, 3>{in.u.size(0), in.u.size(2), in.A.size(1)}) {
    if (in.initial_state.has_value())
      seqmix::copy(in.initial_state, final_state);
    else
      std::fill(out["final_state"].begin(), out["final_state"].end(), 0.f);
    seqmix::SelectiveScanStepInputs step;
    step.u = in.u.select(1, 0);
    step.delta = in.delta.select(1, 0);
    step.A = in.A;
    step.Bm = in.Bm.select(1, 0);
    step.Cm = in.Cm.select(1, 0);
    step.Dskip = in.Dskip;
    if (in.z.has_value()) step.z = in.z.select(1, 0);
    step.delta_bias = in.delta_bias;
    seqmix::selective_scan_step(step, {y.select(1, 0), final_state}, options);
  } else {
    seqmix::selective_scan(in, {y, final_state}, options);
  }
  return out;
}

const RegisterOp kCausalConv1d(
    "causal_conv1d", [](const CaseData& c) { return run_causal_conv1d(c, true); },
    [](const CaseData& c) { return run_causal_conv1d(c, false); });
const RegisterOp kSelectiveScan(
    "selective_scan", [](const CaseData& c) { return run_selective_scan(c, true); },
    [](const CaseData& c) { return run_selective_scan(c, false); });

}  // namespace
