// seqmix-conformance runners for the linear time-invariant family (docs/operators.md section
// 11): long_conv (the "fast" slot runs the automatic form and then the direct and FFT forms, which
// must agree with it), ssm_kernel, ssm_dplr_kernel and s5 (fast prefill and reference).
#include "registry.hpp"
#include "seqmix/lti.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_long_conv_as(const CaseData& c, bool reference, seqmix::LongConvMethod method) {
  seqmix::LongConvInputs in;
  in.u = c.in<3>("u", "B,T,D");
  in.filter = c.in<2>("filter", "L,G");
  in.filter_backward = c.opt_in<2>("filter_backward", "Lb,G");
  in.skip = c.opt_in<1>("skip", "D");
  in.bias = c.opt_in<1>("bias", "D");
  in.initial_state = c.opt_in<3>("initial_state", "B,L-1,D");
  seqmix::LongConvOptions options;
  const std::string direction = c.param_string("direction", "causal");
  if (direction == "bidirectional")
    options.direction = seqmix::LongConvDirection::bidirectional;
  else if (direction != "causal")
    throw CaseError(c.id() + ": param 'direction' must be \"causal\" or \"bidirectional\", got \"" + direction + "\"");
  options.method = method;
  OutputMap out;
  seqmix::LongConvOutputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state")) outputs.final_state = c.make_output<3>(out, "final_state");
  if (reference)
    seqmix::reference::long_conv(in, outputs, options);
  else
    seqmix::long_conv(in, outputs, options);
  return out;
}

OutputMap run_long_conv(const CaseData& c, bool reference) {
  OutputMap out = run_long_conv_as(c, reference, seqmix::LongConvMethod::automatic);
  if (reference) return out;
  // Both forced forms must give the automatic form's outputs within the case's tolerance.
  for (const auto method : {seqmix::LongConvMethod::direct, seqmix::LongConvMethod::fft}) {
    const OutputMap other = run_long_conv_as(c, false, method);
    for (const auto& [name, values] : out) {
      const std::vector<float>& b = other.at(name);
      for (std::size_t j = 0; j < values.size(); ++j)
        if (!(std::abs(values[j] - b[j]) <= c.tol * std::max(1.f, std::abs(values[j]))))
          throw CaseError(c.id() + ": the " + (method == seqmix::LongConvMethod::fft ? "FFT" : "direct") +
                          " form differs from the automatic one in '" + name + "' at element " + std::to_string(j));
    }
  }
  return out;
}

seqmix::SsmKernelOptions ssm_options(const CaseData& c) {
  seqmix::SsmKernelOptions options;
  const std::string disc = c.param_string("discretization", "zoh"), symmetry = c.param_string("symmetry", "none");
  if (disc == "bilinear")
    options.discretization = seqmix::SsmDiscretization::bilinear;
  else if (disc != "zoh")
    throw CaseError(c.id() + ": param 'discretization' must be \"zoh\" or \"bilinear\", got \"" + disc + "\"");
  if (symmetry == "conjugate_pairs")
    options.symmetry = seqmix::SsmStateSymmetry::conjugate_pairs;
  else if (symmetry != "none")
    throw CaseError(c.id() + ": param 'symmetry' must be \"none\" or \"conjugate_pairs\", got \"" + symmetry + "\"");
  return options;
}

OutputMap run_ssm_kernel(const CaseData& c, bool reference) {
  const seqmix::SsmParams params{c.in<2>("A_real", "H,N"), c.opt_in<2>("A_imag", "H,N"), c.in<2>("B_real", "H,N"),
                                 c.opt_in<2>("B_imag", "H,N"), c.in<2>("C_real", "H,N"), c.opt_in<2>("C_imag", "H,N"),
                                 c.in<1>("dt", "H")};
  OutputMap out;
  const auto kernel = c.make_output<2>(out, "kernel");
  if (reference)
    seqmix::reference::ssm_kernel(params, kernel, ssm_options(c));
  else
    seqmix::ssm_kernel(params, kernel, ssm_options(c));
  return out;
}

OutputMap run_ssm_dplr_kernel(const CaseData& c, bool reference) {
  seqmix::SsmDplrParams params;
  params.Lambda_real = c.in<2>("Lambda_real", "G,N"), params.Lambda_imag = c.opt_in<2>("Lambda_imag", "G,N");
  params.P_real = c.in<3>("P_real", "G,r,N"), params.P_imag = c.opt_in<3>("P_imag", "G,r,N");
  params.Q_real = c.opt_in<3>("Q_real", "G,r,N"), params.Q_imag = c.opt_in<3>("Q_imag", "G,r,N");
  params.B_real = c.in<2>("B_real", "H,N"), params.B_imag = c.opt_in<2>("B_imag", "H,N");
  params.C_real = c.in<2>("C_real", "H,N"), params.C_imag = c.opt_in<2>("C_imag", "H,N");
  params.dt = c.in<1>("dt", "H");
  OutputMap out;
  const auto kernel = c.make_output<2>(out, "kernel");
  if (reference)
    seqmix::reference::ssm_dplr_kernel(params, kernel, ssm_options(c));
  else
    seqmix::ssm_dplr_kernel(params, kernel, ssm_options(c));
  return out;
}

OutputMap run_s5(const CaseData& c, bool reference) {
  const seqmix::S5Params params{c.in<1>("Lambda_real", "P"), c.opt_in<1>("Lambda_imag", "P"),
                                c.in<2>("B_real", "P,H"),    c.opt_in<2>("B_imag", "P,H"),
                                c.in<2>("C_real", "H,P"),    c.opt_in<2>("C_imag", "H,P"),
                                c.in<1>("dt", "P"),          c.opt_in<1>("D", "H")};
  const seqmix::S5Inputs in{c.in<3>("u", "B,T,H"), c.opt_in<2>("initial_state_real", "B,P"),
                            c.opt_in<2>("initial_state_imag", "B,P"), c.opt_in<2>("timestep", "B,T")};
  OutputMap out;
  seqmix::S5Outputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state_real")) {
    outputs.final_state_real = c.make_output<2>(out, "final_state_real");
    outputs.final_state_imag = c.make_output<2>(out, "final_state_imag");
  }
  if (reference)
    seqmix::reference::s5(params, in, outputs, ssm_options(c));
  else
    seqmix::s5(params, in, outputs, ssm_options(c));
  return out;
}

const RegisterOp kLongConv("long_conv", [](const CaseData& c) { return run_long_conv(c, false); },
                           [](const CaseData& c) { return run_long_conv(c, true); });
const RegisterOp kSsmKernel("ssm_kernel", [](const CaseData& c) { return run_ssm_kernel(c, false); },
                            [](const CaseData& c) { return run_ssm_kernel(c, true); });
const RegisterOp kSsmDplrKernel("ssm_dplr_kernel", [](const CaseData& c) { return run_ssm_dplr_kernel(c, false); },
                                [](const CaseData& c) { return run_ssm_dplr_kernel(c, true); });
const RegisterOp kS5("s5", [](const CaseData& c) { return run_s5(c, false); },
                     [](const CaseData& c) { return run_s5(c, true); });

}  // namespace
