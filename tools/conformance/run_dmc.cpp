// seqmix-conformance runner for dmc_attention (docs/operators.md section 6, dmc): the fast prefill
// and the reference, each on a fresh DmcCache with room for every token.
#include <algorithm>

#include "registry.hpp"
#include "seqmix/kv_cache/dmc/fast.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_dmc(const CaseData& c, bool fast) {
  seqmix::DmcInputs in;
  in.q = c.in<4>("q", "B,T,Hq,Dk");
  in.k = c.in<4>("k", "B,T,Hkv,Dk");
  in.v = c.in<4>("v", "B,T,Hkv,Dv");
  in.alpha = c.in<3>("alpha", "B,T,Hkv");
  in.omega = c.in<3>("omega", "B,T,Hkv");
  seqmix::DmcCacheConfig config;
  config.batch = in.k.size(0), config.kv_heads = in.k.size(2), config.key_dim = in.k.size(3);
  config.value_dim = in.v.size(3), config.capacity = std::max<seqmix::index_t>(1, in.k.size(1));
  seqmix::DmcCache cache(config);
  seqmix::DmcOptions options;
  options.scale = static_cast<float>(c.param_double("scale", 0.0));
  OutputMap out;
  const auto o = c.make_output<4>(out, "o");
  if (fast)
    seqmix::dmc_attention(in, cache, o, options);
  else
    seqmix::reference::dmc_attention(in, cache, o, options);
  return out;
}

const RegisterOp kDmc("dmc_attention", [](const CaseData& c) { return run_dmc(c, true); },
                      [](const CaseData& c) { return run_dmc(c, false); });

}  // namespace
