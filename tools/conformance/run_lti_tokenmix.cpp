// seqmix-conformance runners for masked_mixer, monarch_mix, monarch_mix_causal, hyper_mixer and
// hyena_distilled_step (docs/operators.md section 11; vectors from tools/golden_lti_tokenmix.cpp).
// masked_mixer's "fast" slot also decodes every token with masked_mixer_step over the history,
// which must reproduce the prefill. hyena_distilled_step has no prefill of its own: its "fast"
// slot runs the step token by token from a zero modal state, its "reference" slot runs
// reference::hyena on the taps the modes define (h[0] = feedthrough + Re(sum_k g_k^2),
// h[s] = Re(sum_k g_k^2 lambda_k^s), computed in double over L = T taps).
#include <algorithm>
#include <cmath>
#include <complex>
#include <string>
#include <vector>

#include "registry.hpp"
#include "seqmix/lti.hpp"

namespace {

using namespace seqmix::conformance;
using seqmix::index_t;

OutputMap run_masked_mixer(const CaseData& c, bool reference) {
  const seqmix::MaskedMixerInputs in{c.in<3>("x", "B,T,D"), c.in<3>("weight", "G,L,L")};
  OutputMap out;
  const seqmix::MaskedMixerOutputs outputs{c.make_output<3>(out, "y")};
  if (reference) {
    seqmix::reference::masked_mixer(in, outputs);
    return out;
  }
  seqmix::masked_mixer(in, outputs);
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  seqmix::Tensor<float, 2> y1({B, D});
  for (index_t t = 0; t < T; ++t) {
    seqmix::masked_mixer_step({in.x.slice(1, 0, t + 1), in.weight}, {y1.view()});
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) {
        const float p = outputs.y(b, t, d), s = y1(b, d);
        if (!(std::abs(p - s) <= c.tol * std::max(1.f, std::abs(p))))
          throw CaseError(c.id() + ": masked_mixer_step differs from the prefill at token " + std::to_string(t));
      }
  }
  return out;
}

OutputMap run_monarch_mix(const CaseData& c, bool reference) {
  const seqmix::MonarchMixInputs in{c.in<3>("x", "B,T,D"), c.in<4>("left", "G,b,b,b"), c.in<4>("right", "G,b,b,b")};
  OutputMap out;
  const seqmix::MonarchMixOutputs outputs{c.make_output<3>(out, "y")};
  if (reference)
    seqmix::reference::monarch_mix(in, outputs);
  else
    seqmix::monarch_mix(in, outputs);
  return out;
}

OutputMap run_monarch_mix_causal(const CaseData& c, bool reference) {
  const seqmix::MonarchMixCausalInputs in{c.in<3>("x", "B,T,D"), c.in<2>("filter", "L,D")};
  OutputMap out;
  const seqmix::MonarchMixOutputs outputs{c.make_output<3>(out, "y")};
  if (reference)
    seqmix::reference::monarch_mix_causal(in, outputs);
  else
    seqmix::monarch_mix_causal(in, outputs);
  return out;
}

OutputMap run_hyper_mixer(const CaseData& c, bool reference) {
  seqmix::HyperMixerInputs in;
  in.x = c.in<3>("x", "B,T,D");
  in.hyper1 = {c.in<2>("w_in1", "D,M1"), c.opt_in<1>("b_in1", "M1"), c.in<2>("w_out1", "M1,E"),
               c.opt_in<1>("b_out1", "E")};
  in.hyper2 = {c.in<2>("w_in2", "D,M2"), c.opt_in<1>("b_in2", "M2"), c.in<2>("w_out2", "M2,E"),
               c.opt_in<1>("b_out2", "E")};
  in.positions = c.opt_in<2>("positions", "L,D");
  seqmix::HyperMixerOptions options;
  const std::string act = c.param_string("activation", "gelu");
  if (act == "relu")
    options.activation = seqmix::HyperMixerActivation::relu;
  else if (act != "gelu")
    throw CaseError(c.id() + ": param 'activation' must be \"gelu\" or \"relu\", got \"" + act + "\"");
  OutputMap out;
  const seqmix::HyperMixerOutputs outputs{c.make_output<3>(out, "y")};
  if (reference)
    seqmix::reference::hyper_mixer(in, outputs, options);
  else
    seqmix::hyper_mixer(in, outputs, options);
  return out;
}

OutputMap run_hyena_distilled_step(const CaseData& c, bool reference) {
  const auto v = c.in<3>("v", "B,T,D");
  const auto x = c.in<4>("x", "N,B,T,D");
  const seqmix::HyenaModalFilters f{c.in<3>("pole_real", "N,D,M"), c.in<3>("pole_imag", "N,D,M"),
                                    c.in<3>("gain_real", "N,D,M"), c.in<3>("gain_imag", "N,D,M"),
                                    c.in<2>("feedthrough", "N,D")};
  const index_t N = x.size(0), B = v.size(0), T = v.size(1), D = v.size(2), M = f.pole_real.size(2);
  OutputMap out;
  const auto y = c.make_output<3>(out, "y");
  if (reference) {
    seqmix::Tensor<float, 3> taps({N, T, D});
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) {
        std::vector<std::complex<double>> r(static_cast<std::size_t>(M)), lambda(static_cast<std::size_t>(M));
        for (index_t k = 0; k < M; ++k) {
          const std::complex<double> g(f.gain_real(n, d, k), f.gain_imag(n, d, k));
          r[static_cast<std::size_t>(k)] = g * g;
          lambda[static_cast<std::size_t>(k)] = {f.pole_real(n, d, k), f.pole_imag(n, d, k)};
        }
        for (index_t s = 0; s < T; ++s) {
          double h = s == 0 ? double(f.feedthrough(n, d)) : 0.0;
          for (std::size_t k = 0; k < r.size(); ++k) {
            h += r[k].real();
            r[k] *= lambda[k];
          }
          taps(n, s, d) = static_cast<float>(h);
        }
      }
    seqmix::reference::hyena({v, x, taps.view()}, {y});
    return out;
  }
  seqmix::Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M});
  sr.fill(0.f), si.fill(0.f);
  seqmix::Tensor<float, 2> yt({B, D});
  for (index_t t = 0; t < T; ++t) {
    seqmix::hyena_distilled_step({v.select(1, t), x.select(2, t), f}, {yt.view(), sr.view(), si.view()});
    seqmix::copy(yt.cview(), y.select(1, t));
  }
  return out;
}

const RegisterOp kMaskedMixer("masked_mixer", [](const CaseData& c) { return run_masked_mixer(c, false); },
                              [](const CaseData& c) { return run_masked_mixer(c, true); });
const RegisterOp kMonarchMix("monarch_mix", [](const CaseData& c) { return run_monarch_mix(c, false); },
                             [](const CaseData& c) { return run_monarch_mix(c, true); });
const RegisterOp kMonarchMixCausal("monarch_mix_causal",
                                   [](const CaseData& c) { return run_monarch_mix_causal(c, false); },
                                   [](const CaseData& c) { return run_monarch_mix_causal(c, true); });
const RegisterOp kHyperMixer("hyper_mixer", [](const CaseData& c) { return run_hyper_mixer(c, false); },
                             [](const CaseData& c) { return run_hyper_mixer(c, true); });
const RegisterOp kHyenaDistilledStep("hyena_distilled_step",
                                     [](const CaseData& c) { return run_hyena_distilled_step(c, false); },
                                     [](const CaseData& c) { return run_hyena_distilled_step(c, true); });

}  // namespace
