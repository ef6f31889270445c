// seqmix-conformance runner for feature_map (docs/operators.md, linear attention's feature maps):
// the fast form and the reference.
#include "registry.hpp"
#include "seqmix/linear_attention/feature_maps/fast.hpp"

namespace {

using namespace seqmix::conformance;

seqmix::FeatureMapKind feature_map_kind(const std::string& name) {
  if (name == "dpfp") return seqmix::FeatureMapKind::dpfp;
  if (name == "positive_random") return seqmix::FeatureMapKind::positive_random;
  if (name == "hedgehog") return seqmix::FeatureMapKind::hedgehog;
  throw std::runtime_error("feature_map: unknown kind '" + name + "'");
}

OutputMap run_feature_map(const CaseData& c, bool fast) {
  seqmix::FeatureMapOptions options;
  options.kind = feature_map_kind(c.param_string("kind", "dpfp"));
  options.dpfp_nu = c.param_int("dpfp_nu", 1);
  options.input_scale = static_cast<float>(c.param_double("input_scale", 1.0));
  seqmix::FeatureMapInputs in;
  in.x = c.in<4>("x", "B,T,H,K");
  in.weight = c.opt_in<3>("weight", "Hw,M,K");
  in.bias = c.opt_in<2>("bias", "Hw,M");
  OutputMap out;
  const auto phi = c.make_output<4>(out, "phi");
  if (fast)
    seqmix::feature_map(in, {phi}, options);
  else
    seqmix::reference::feature_map(in, {phi}, options);
  return out;
}

const RegisterOp kFeatureMap("feature_map", [](const CaseData& c) { return run_feature_map(c, true); },
                             [](const CaseData& c) { return run_feature_map(c, false); });

}  // namespace
