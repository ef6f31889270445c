// seqmix-conformance runners for "attention" and "lightning_indexer" (SPEC section 5): the fast
// forms (seqmix::attention, seqmix::lightning_indexer) and the references, each checked against
// the golden outputs.
#include <string>

#include "registry.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"

namespace {

using namespace seqmix::conformance;
using seqmix::index_t;

template <class KV>
void run_attention_with(const seqmix::AttentionInputs<KV>& in, const seqmix::AttentionOutputs& out,
                        const seqmix::AttentionOptions& options, bool fast) {
  if (fast)
    seqmix::attention(in, out, options);
  else
    seqmix::reference::attention(in, out, options);
}

// An fp32 K or V input as fp16; a value that fp16 cannot hold exactly is a broken case.
seqmix::Tensor<seqmix::f16, 4> to_f16(const seqmix::ConstView<float, 4>& x, const CaseData& c, const char* name) {
  seqmix::Tensor<seqmix::f16, 4> out(x.shape());
  seqmix::copy(x, out.view());
  seqmix::Tensor<float, 4> back(x.shape()), given(x.shape());
  seqmix::copy(out.cview(), back.view());
  seqmix::copy(x, given.view());
  for (index_t i = 0; i < back.numel(); ++i)
    if (back.data()[i] != given.data()[i] && given.data()[i] == given.data()[i])  // NaN stays NaN
      throw CaseError(c.id() + ": input '" + name + "' holds a value not exactly representable in fp16 although kv_storage is \"f16\"");
  return out;
}

OutputMap run_attention(const CaseData& c, bool fast) {
  seqmix::AttentionInputs<float> in;
  in.q = c.in<4>("q", "B,Tq,Hq,Dk");
  in.k = c.in<4>("k", "B,Tk,Hkv,Dk");
  in.v = c.in<4>("v", "B,Tk,Hkv,Dv");
  if (const auto* mask = c.input("mask")) {
    // [Tq,Tk] is shared by every batch row; [B,Tq,Tk] is per row.
    if (mask->rank() == 2)
      in.mask = seqmix::shared_mask(mask->view_f32<2>("Tq,Tk"));
    else
      in.mask = mask->view_f32<3>("B,Tq,Tk");
  }
  in.alibi_slopes = c.opt_in<1>("alibi_slopes", "Hq");
  in.sink_logits = c.opt_in<1>("sink_logits", "Hq");
  seqmix::AttentionOptions options;
  if (const auto scale = c.param_opt_double("scale")) options.scale = static_cast<float>(*scale);
  options.causal = c.param_bool("causal", false);
  options.window = c.param_int("window", 0);
  options.sink_tokens = c.param_int("sink_tokens", 0);
  options.softcap = static_cast<float>(c.param_double("softcap", 0.0));
  const std::string storage = c.param_string("kv_storage", "f32");
  if (storage != "f32" && storage != "f16")
    throw CaseError(c.id() + ": param 'kv_storage' must be \"f32\" or \"f16\", got \"" + storage + "\"");
  OutputMap out;
  const seqmix::AttentionOutputs outputs{c.make_output<4>(out, "o"), {}};
  // kv_storage "f16": the golden k/v values are exactly representable in fp16; store them as
  // seqmix::f16 (a rounding that changes nothing, checked below) and run the 16-bit kernels.
  if (storage == "f16") {
    const seqmix::Tensor<seqmix::f16, 4> k16 = to_f16(in.k, c, "k"), v16 = to_f16(in.v, c, "v");
    seqmix::AttentionInputs<seqmix::f16> in16;
    in16.q = in.q, in16.k = k16.view(), in16.v = v16.view();
    in16.mask = in.mask, in16.alibi_slopes = in.alibi_slopes, in16.sink_logits = in.sink_logits;
    run_attention_with(in16, outputs, options, fast);
  } else {
    run_attention_with(in, outputs, options, fast);
  }
  return out;
}

OutputMap run_lightning_indexer(const CaseData& c, bool fast) {
  seqmix::LightningIndexerInputs in;
  in.q = c.in<4>("q", "B,T,Hi,Di");
  in.k = c.in<3>("k", "B,Tk,Di");
  in.weights = c.in<3>("weights", "B,T,Hi");
  seqmix::LightningIndexerOptions options;
  options.causal = c.param_bool("causal", false);
  OutputMap out;
  const auto scores = c.make_output<3>(out, "scores");
  if (fast)
    seqmix::lightning_indexer(in, scores, options);
  else
    seqmix::reference::lightning_indexer(in, scores, options);
  return out;
}

const RegisterOp kAttention("attention", [](const CaseData& c) { return run_attention(c, true); },
                            [](const CaseData& c) { return run_attention(c, false); });
const RegisterOp kLightningIndexer("lightning_indexer",
                                   [](const CaseData& c) { return run_lightning_indexer(c, true); },
                                   [](const CaseData& c) { return run_lightning_indexer(c, false); });

}  // namespace
