// seqmix-conformance runner for product_key_memory (docs/operators.md section 13): the fast form
// (sub-key search) and the reference (exhaustive search), fp32 value table; for slot_memory
// (fast and reference, below); and for compressive_memory (fast and reference, at the end).
#include <string>

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

// slot_memory (docs/operators.md section 13): the fast form and the reference.
namespace {

OutputMap run_slot_memory(const CaseData& c, bool fast) {
  seqmix::SlotMemoryInputs in;
  in.x = c.in<3>("x", "B,T,D");
  in.memory = c.in<3>("memory", "B,S,D");
  in.weights.w_input = c.in<2>("w_input", "D,D");
  in.weights.b_input = c.in<1>("b_input", "D");
  in.weights.w_forget = c.in<2>("w_forget", "D,D");
  in.weights.b_forget = c.in<1>("b_forget", "D");
  in.weights.w_output = c.opt_in<2>("w_output", "D,D");
  in.weights.b_output = c.opt_in<1>("b_output", "D");
  seqmix::SlotMemoryOptions options;
  const std::string gate = c.param_string("gate", "input_forget");
  if (gate == "input_forget")
    options.gate = seqmix::SlotGate::input_forget;
  else if (gate == "lm2")
    options.gate = seqmix::SlotGate::lm2;
  else
    throw CaseError(c.id() + ": param 'gate' must be \"input_forget\" or \"lm2\", got \"" + gate + "\"");
  options.heads = c.param_int("heads", 1);
  options.segment = c.param_int("segment", 0);
  OutputMap out;
  const seqmix::SlotMemoryOutputs outputs{c.make_output<3>(out, "y"), c.make_output<3>(out, "final_memory")};
  if (fast)
    seqmix::slot_memory(in, outputs, options);
  else
    seqmix::reference::slot_memory(in, outputs, options);
  return out;
}

const RegisterOp kSlotMemory("slot_memory", [](const CaseData& c) { return run_slot_memory(c, true); },
                             [](const CaseData& c) { return run_slot_memory(c, false); });

}  // namespace

// compressive_memory (docs/operators.md section 13): the fast form and the reference.
namespace {

OutputMap run_compressive_memory(const CaseData& c, bool fast) {
  seqmix::CompressiveMemoryInputs in;
  in.q = c.in<4>("q", "B,T,Hq,dk");
  in.k = c.in<4>("k", "B,T,Hkv,dk");
  in.v = c.in<4>("v", "B,T,Hkv,dv");
  in.weights.conv_key = c.opt_in<4>("conv_key", "Hkv,rate,dk,dk");
  in.weights.conv_value = c.opt_in<4>("conv_value", "Hkv,rate,dv,dv");
  seqmix::CompressiveMemoryOptions options;
  const std::string how = c.param_string("compression", "mean");
  if (how == "mean")
    options.compression = seqmix::Compression::mean;
  else if (how == "max")
    options.compression = seqmix::Compression::max;
  else if (how == "conv")
    options.compression = seqmix::Compression::conv;
  else if (how == "most_used")
    options.compression = seqmix::Compression::most_used;
  else
    throw CaseError(c.id() + ": param 'compression' must be \"mean\", \"max\", \"conv\" or \"most_used\", got \"" + how + "\"");
  options.segment = c.param_int("segment", 0);
  options.memory = c.param_int("memory", 0);
  options.compressed = c.param_int("compressed", 0);
  options.rate = c.param_int("rate", 1);
  OutputMap out;
  const seqmix::CompressiveMemoryOutputs outputs{c.make_output<4>(out, "o")};
  if (fast)
    seqmix::compressive_memory(in, outputs, options);
  else
    seqmix::reference::compressive_memory(in, outputs, options);
  return out;
}

const RegisterOp kCompressiveMemory("compressive_memory", [](const CaseData& c) { return run_compressive_memory(c, true); },
                                    [](const CaseData& c) { return run_compressive_memory(c, false); });

}  // namespace
