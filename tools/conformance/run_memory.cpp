// seqmix-conformance runner for product_key_memory (docs/operators.md section 13): the fast form
// (sub-key search) and the reference (exhaustive search), fp32 value table.
#include "registry.hpp"
#include "seqmix/memory.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_pkm(const CaseData& c, bool fast) {
  seqmix::ProductKeyMemoryInputs<float> in;
  in.query = c.in<3>("query", "T,H,Dk");
  in.keys_a = c.in<3>("keys_a", "H,n_sub,Dk/2");
  in.keys_b = c.in<3>("keys_b", "H,n_sub,Dk/2");
  in.values = c.in<2>("values", "n_sub*n_sub,Dv");
  in.gate = c.opt_in<2>("gate", "T,Dv");
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = c.param_int("top_k", 32);
  options.scale = static_cast<float>(c.param_double("scale", 0.0));
  OutputMap out;
  const seqmix::ProductKeyMemoryOutputs outputs{c.make_output<2>(out, "y")};
  if (fast)
    seqmix::product_key_memory(in, outputs, options);
  else
    seqmix::reference::product_key_memory(in, outputs, options);
  return out;
}

const RegisterOp kPkm("product_key_memory", [](const CaseData& c) { return run_pkm(c, true); },
                      [](const CaseData& c) { return run_pkm(c, false); });

}  // namespace
