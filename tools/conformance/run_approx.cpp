// seqmix-conformance runners for linformer, nystrom_attention and combiner (docs/operators.md,
// "Approximate attention"): the fast forms and the references against the golden outputs.
#include "registry.hpp"
#include "seqmix/attention/approx/fast.hpp"
#include "seqmix/attention/approx/reference.hpp"

namespace {

using namespace seqmix::conformance;

std::optional<float> approx_scale(const CaseData& c) {
  if (const auto scale = c.param_opt_double("scale")) return static_cast<float>(*scale);
  return std::nullopt;
}

OutputMap run_linformer(const CaseData& c, bool fast) {
  seqmix::LinformerInputs in;
  in.q = c.in<4>("q", "B,Tq,Hq,Dk");
  in.k = c.in<4>("k", "B,T,Hkv,Dk");
  in.v = c.in<4>("v", "B,T,Hkv,Dv");
  in.e = c.in<2>("e", "kp,T");
  in.f = c.in<2>("f", "kp,T");
  seqmix::LinformerOptions options;
  options.scale = approx_scale(c);
  options.causal = c.param_bool("causal", false);
  OutputMap out;
  const seqmix::AttentionOutputs outputs{c.make_output<4>(out, "o"), c.make_output<3>(out, "lse")};
  if (fast)
    seqmix::linformer(in, outputs, options);
  else
    seqmix::reference::linformer(in, outputs, options);
  return out;
}

OutputMap run_nystrom(const CaseData& c, bool fast) {
  seqmix::NystromInputs in;
  in.q = c.in<4>("q", "B,T,Hq,Dk");
  in.k = c.in<4>("k", "B,T,Hkv,Dk");
  in.v = c.in<4>("v", "B,T,Hkv,Dv");
  in.conv_kernel = c.opt_in<2>("conv_kernel", "Hq,ks");
  seqmix::NystromOptions options;
  options.landmarks = c.param_int("landmarks", 64);
  options.pinv_iterations = c.param_int("pinv_iterations", 6);
  options.scale = approx_scale(c);
  OutputMap out;
  const auto o = c.make_output<4>(out, "o");
  if (fast)
    seqmix::nystrom_attention(in, o, options);
  else
    seqmix::reference::nystrom_attention(in, o, options);
  return out;
}

OutputMap run_combiner(const CaseData& c, bool fast) {
  seqmix::CombinerInputs in;
  in.q = c.in<4>("q", "B,T,Hq,Dk");
  in.k = c.in<4>("k", "B,T,Hkv,Dk");
  in.v = c.in<4>("v", "B,T,Hkv,Dv");
  in.summary_k = c.opt_in<4>("summary_k", "B,Nb,Hkv,Dk");
  in.summary_v = c.opt_in<4>("summary_v", "B,Nb,Hkv,Dv");
  seqmix::CombinerOptions options;
  options.block_size = c.param_int("block_size", 64);
  options.scale = approx_scale(c);
  OutputMap out;
  const seqmix::AttentionOutputs outputs{c.make_output<4>(out, "o"), c.make_output<3>(out, "lse")};
  if (fast)
    seqmix::combiner(in, outputs, options);
  else
    seqmix::reference::combiner(in, outputs, options);
  return out;
}

const RegisterOp kLinformer("linformer", [](const CaseData& c) { return run_linformer(c, true); },
                            [](const CaseData& c) { return run_linformer(c, false); });
const RegisterOp kNystrom("nystrom_attention", [](const CaseData& c) { return run_nystrom(c, true); },
                          [](const CaseData& c) { return run_nystrom(c, false); });
const RegisterOp kCombiner("combiner", [](const CaseData& c) { return run_combiner(c, true); },
                           [](const CaseData& c) { return run_combiner(c, false); });

}  // namespace
