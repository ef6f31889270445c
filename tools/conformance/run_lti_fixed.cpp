// seqmix-conformance runners for the fixed and data-dependent token mixers of docs/operators.md
// section 11: fnet, base_conv (the "fast" slot runs the automatic long-convolution method, then
// the direct and FFT ones, which must agree with it), lightweight_conv and dynamic_conv (the
// "fast" slot runs the prefill and, for causal cases, also the decode step token by token from a
// zero state, which must reproduce the prefill), each against its reference form.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "registry.hpp"
#include "seqmix/lti.hpp"

namespace {

using namespace seqmix::conformance;

// Throws when `b` is not `a` within the case's tolerance (what names the two forms).
void lti_fixed_agree(const CaseData& c, const std::string& what, const std::string& name, const std::vector<float>& a,
                     const std::vector<float>& b) {
  for (std::size_t j = 0; j < a.size(); ++j)
    if (!(std::abs(a[j] - b[j]) <= c.tol * std::max(1.f, std::abs(a[j]))))
      throw CaseError(c.id() + ": " + what + " in '" + name + "' at element " + std::to_string(j));
}

OutputMap run_fnet(const CaseData& c, bool reference) {
  const seqmix::FnetInputs in{c.in<3>("x", "B,T,D")};
  OutputMap out;
  const seqmix::FnetOutputs outputs{c.make_output<3>(out, "y")};
  if (reference)
    seqmix::reference::fnet(in, outputs);
  else
    seqmix::fnet(in, outputs);
  return out;
}

OutputMap run_base_conv_as(const CaseData& c, bool reference, seqmix::LongConvMethod method) {
  seqmix::BaseConvInputs in{c.in<3>("u", "B,T,D"), c.in<2>("w1", "D,D"), c.in<2>("w2", "D,D"),
                            c.in<2>("filter", "L,D")};
  in.b1 = c.opt_in<1>("b1", "D");
  in.b2 = c.opt_in<1>("b2", "D");
  in.initial_state = c.opt_in<3>("initial_state", "B,L-1,D");
  OutputMap out;
  seqmix::BaseConvOutputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state")) outputs.final_state = c.make_output<3>(out, "final_state");
  seqmix::BaseConvOptions options;
  options.method = method;
  if (reference)
    seqmix::reference::base_conv(in, outputs, options);
  else
    seqmix::base_conv(in, outputs, options);
  return out;
}

OutputMap run_base_conv(const CaseData& c, bool reference) {
  OutputMap out = run_base_conv_as(c, reference, seqmix::LongConvMethod::automatic);
  if (reference) return out;
  for (const auto method : {seqmix::LongConvMethod::direct, seqmix::LongConvMethod::fft}) {
    const OutputMap other = run_base_conv_as(c, false, method);
    const std::string what = std::string("the ") + (method == seqmix::LongConvMethod::fft ? "FFT" : "direct") +
                             " form differs from the automatic one";
    for (const auto& [name, values] : out) lti_fixed_agree(c, what, name, values, other.at(name));
  }
  return out;
}

seqmix::LocalConvOptions local_conv_options(const CaseData& c) {
  seqmix::LocalConvOptions options;
  const std::string padding = c.param_string("padding", "causal");
  if (padding == "centered")
    options.padding = seqmix::LocalConvPadding::centered;
  else if (padding != "causal")
    throw CaseError(c.id() + ": param 'padding' must be \"causal\" or \"centered\", got \"" + padding + "\"");
  return options;
}

// Decodes a causal case token by token from a zero state: `step(t, y_t, state)` runs one step.
template <class Step>
std::vector<float> local_conv_decode(seqmix::index_t B, seqmix::index_t T, seqmix::index_t D, seqmix::index_t K, Step&& step) {
  std::vector<float> y(static_cast<std::size_t>(B * T * D)), y_t(static_cast<std::size_t>(B * D));
  std::vector<float> state(static_cast<std::size_t>(B * (K - 1) * D), 0.f);
  for (seqmix::index_t t = 0; t < T; ++t) {
    step(t, seqmix::TensorView<float, 2>(y_t.data(), {B, D}), seqmix::TensorView<float, 3>(state.data(), {B, K - 1, D}));
    for (seqmix::index_t b = 0; b < B; ++b)
      std::copy(y_t.begin() + b * D, y_t.begin() + (b + 1) * D, y.begin() + (b * T + t) * D);
  }
  return y;
}

OutputMap run_lightweight_conv(const CaseData& c, bool reference) {
  const seqmix::LightweightConvInputs in{c.in<3>("x", "B,T,D"), c.in<2>("weight", "H,K")};
  const seqmix::LocalConvOptions options = local_conv_options(c);
  OutputMap out;
  const seqmix::LocalConvOutputs outputs{c.make_output<3>(out, "y")};
  if (reference) {
    seqmix::reference::lightweight_conv(in, outputs, options);
    return out;
  }
  seqmix::lightweight_conv(in, outputs, options);
  if (options.padding == seqmix::LocalConvPadding::causal) {
    const seqmix::index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2), K = in.weight.size(1);
    const std::vector<float> y = local_conv_decode(B, T, D, K, [&](seqmix::index_t t, const auto& y_t, const auto& state) {
      const seqmix::ConstView<float, 2> x_t(in.x.ptr(0, t), {B, D}, {in.x.stride(0), in.x.stride(2)});
      seqmix::lightweight_conv_step({x_t, in.weight}, {y_t, state});
    });
    lti_fixed_agree(c, "lightweight_conv_step differs from the prefill", "y", out["y"], y);
  }
  return out;
}

OutputMap run_dynamic_conv(const CaseData& c, bool reference) {
  const seqmix::DynamicConvInputs in{c.in<3>("x", "B,T,D"), c.in<4>("logits", "B,T,H,K")};
  const seqmix::LocalConvOptions options = local_conv_options(c);
  OutputMap out;
  const seqmix::LocalConvOutputs outputs{c.make_output<3>(out, "y")};
  if (reference) {
    seqmix::reference::dynamic_conv(in, outputs, options);
    return out;
  }
  seqmix::dynamic_conv(in, outputs, options);
  if (options.padding == seqmix::LocalConvPadding::causal) {
    const seqmix::index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2), H = in.logits.size(2), K = in.logits.size(3);
    const std::vector<float> y = local_conv_decode(B, T, D, K, [&](seqmix::index_t t, const auto& y_t, const auto& state) {
      const seqmix::ConstView<float, 2> x_t(in.x.ptr(0, t), {B, D}, {in.x.stride(0), in.x.stride(2)});
      const seqmix::ConstView<float, 3> l_t(in.logits.ptr(0, t), {B, H, K},
                                            {in.logits.stride(0), in.logits.stride(2), in.logits.stride(3)});
      seqmix::dynamic_conv_step({x_t, l_t}, {y_t, state});
    });
    lti_fixed_agree(c, "dynamic_conv_step differs from the prefill", "y", out["y"], y);
  }
  return out;
}

const RegisterOp kFnet("fnet", [](const CaseData& c) { return run_fnet(c, false); },
                       [](const CaseData& c) { return run_fnet(c, true); });
const RegisterOp kBaseConv("base_conv", [](const CaseData& c) { return run_base_conv(c, false); },
                           [](const CaseData& c) { return run_base_conv(c, true); });
const RegisterOp kLightweightConv("lightweight_conv", [](const CaseData& c) { return run_lightweight_conv(c, false); },
                                  [](const CaseData& c) { return run_lightweight_conv(c, true); });
const RegisterOp kDynamicConv("dynamic_conv", [](const CaseData& c) { return run_dynamic_conv(c, false); },
                              [](const CaseData& c) { return run_dynamic_conv(c, true); });

}  // namespace
