// seqmix-conformance runners for "rope", "mla_prefill", "mla_decode" and "attention_positional"
// (docs/operators.md section 10: attention with a fused rope, a relative bias and head scales):
// the fast forms and the references, each checked against the golden outputs.
// Integer inputs (positions, cache_seqlens) travel as exact fp32 values like every golden array.
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "registry.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/mla/reference.hpp"
#include "seqmix/positional.hpp"

namespace {

using namespace seqmix::conformance;
using seqmix::index_t;

// An fp32 array of whole numbers as int64; anything else is a broken case.
std::vector<std::int64_t> whole_numbers(const seqmix::ConstView<float, 1>& x, const CaseData& c, const char* name) {
  std::vector<std::int64_t> out;
  for (index_t i = 0; i < x.size(0); ++i) {
    if (x(i) != std::floor(x(i))) throw CaseError(c.id() + ": input '" + name + "' must hold whole numbers");
    out.push_back(static_cast<std::int64_t>(x(i)));
  }
  return out;
}

seqmix::RopeConfig rope_config(const CaseData& c) {
  seqmix::RopeConfig config;
  const std::string scheme = c.param_string("scheme", "plain");
  const char* const names[] = {"plain", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope"};
  int found = -1;
  for (int i = 0; i < seqmix::kRopeSchemeCount; ++i)
    if (scheme == names[i]) found = i;
  if (found < 0) throw CaseError(c.id() + ": param 'scheme' \"" + scheme + "\" is not a rope scheme");
  config.scheme = static_cast<seqmix::RopeScheme>(found);
  const std::string layout = c.param_string("layout", "half_split");
  if (layout != "half_split" && layout != "interleaved")
    throw CaseError(c.id() + ": param 'layout' must be \"half_split\" or \"interleaved\"");
  config.layout = layout == "interleaved" ? seqmix::RopeLayout::interleaved : seqmix::RopeLayout::half_split;
  config.rotary_dim = c.param_int("rotary_dim", 0);
  config.base = c.param_double("base", 10000.0);
  config.factor = c.param_double("factor", 1.0);
  config.original_max_position_embeddings = c.param_int("original_max_position_embeddings", 0);
  config.max_position_embeddings = c.param_int("max_position_embeddings", 0);
  config.beta_fast = c.param_double("beta_fast", 32.0);
  config.beta_slow = c.param_double("beta_slow", 1.0);
  config.mscale = c.param_double("mscale", 0.0);
  config.mscale_all_dim = c.param_double("mscale_all_dim", 0.0);
  config.low_freq_factor = c.param_double("low_freq_factor", 1.0);
  config.high_freq_factor = c.param_double("high_freq_factor", 4.0);
  for (const auto& [name, list] : {std::pair<const char*, std::vector<double>*>{"short_factor", &config.short_factor},
                                   {"long_factor", &config.long_factor}}) {
    const auto factors = c.opt_in<1>(name, "R/2");
    for (index_t i = 0; i < factors.size(0); ++i) list->push_back(factors(i));
  }
  return config;
}

OutputMap run_rope(const CaseData& c, bool fast) {
  const seqmix::RopeTable table(rope_config(c), c.param_int("table_positions", 0), c.param_int("sequence_length", 0));
  const auto x = c.in<4>("x", "B,T,H,D");
  const std::vector<std::int64_t> positions = whole_numbers(c.in<1>("positions", "B*T"), c, "positions");
  OutputMap out;
  const auto y = c.make_output<4>(out, "out");
  if (fast)
    seqmix::rope(table, {x, positions}, {y});
  else
    seqmix::reference::rope(table, {x, positions}, {y});
  return out;
}

seqmix::MlaWeights mla_weights(const CaseData& c) {
  return {c.in<3>("w_uk", "H,d_nope,d_c"), c.in<3>("w_uv", "H,d_v,d_c")};
}

seqmix::MlaOptions mla_options(const CaseData& c, bool causal_default) {
  seqmix::MlaOptions options;
  if (const auto scale = c.param_opt_double("scale")) options.scale = static_cast<float>(*scale);
  options.causal = c.param_bool("causal", causal_default);
  return options;
}

OutputMap run_mla_prefill(const CaseData& c, bool fast) {
  const seqmix::MlaPrefillInputs<float> in{c.in<4>("q_nope", "B,Tq,H,d_nope"), c.in<4>("q_rope", "B,Tq,H,d_r"),
                                           c.in<3>("c_kv", "B,Tk,d_c"), c.in<3>("k_rope", "B,Tk,d_r"), mla_weights(c)};
  OutputMap out;
  const seqmix::MlaPrefillOutputs outputs{c.make_output<4>(out, "o"), c.make_output<3>(out, "lse")};
  if (fast)
    seqmix::mla_prefill(in, outputs, mla_options(c, true));
  else
    seqmix::reference::mla(in, outputs, mla_options(c, true));
  return out;
}

// The reference has no decode form of its own: one expanded call per row on its cached tokens.
OutputMap run_mla_decode(const CaseData& c, bool fast) {
  const std::vector<std::int64_t> lens = whole_numbers(c.in<1>("cache_seqlens", "B"), c, "cache_seqlens");
  const seqmix::MlaDecodeInputs<float> in{c.in<3>("q_nope", "B,H,d_nope"), c.in<3>("q_rope", "B,H,d_r"),
                                          c.in<3>("c_kv", "B,Tmax,d_c"),   c.in<3>("k_rope", "B,Tmax,d_r"),
                                          lens,                            mla_weights(c)};
  OutputMap out;
  const seqmix::MlaDecodeOutputs outputs{c.make_output<3>(out, "o"), c.make_output<2>(out, "lse")};
  const seqmix::MlaOptions options = mla_options(c, false);
  if (fast) {
    seqmix::mla_decode(in, outputs, options);
    return out;
  }
  const index_t H = in.q_nope.size(1);
  for (index_t b = 0; b < in.q_nope.size(0); ++b) {
    const auto rows = [&](const auto& v, index_t d) {
      return seqmix::ConstView<float, 4>(v.ptr(b), {1, 1, H, d}, {0, 0, v.stride(1), v.stride(2)});
    };
    const index_t L = lens[static_cast<std::size_t>(b)];
    const seqmix::MlaPrefillInputs<float> one{rows(in.q_nope, in.q_nope.size(2)), rows(in.q_rope, in.q_rope.size(2)),
                                              in.c_kv.slice(0, b, 1).slice(1, 0, L),
                                              in.k_rope.slice(0, b, 1).slice(1, 0, L), in.weights};
    const seqmix::TensorView<float, 4> o(outputs.o.ptr(b), {1, 1, H, outputs.o.size(2)});
    const seqmix::TensorView<float, 3> lse(outputs.lse.ptr(b), {1, 1, H});
    seqmix::reference::mla(one, {o, lse}, options);
  }
  return out;
}

// attention (seqmix::attention, which picks decode or prefill, or the reference) with the case's
// fused rope (params "rope", the rope params, "rope_rotated_keys"), relative bias (param "bias"
// and its inputs) and head scales.
OutputMap run_attention_positional(const CaseData& c, bool fast) {
  seqmix::AttentionInputs<float> in;
  in.q = c.in<4>("q", "B,Tq,Hq,Dk");
  in.k = c.in<4>("k", "B,Tk,Hkv,Dk");
  in.v = c.in<4>("v", "B,Tk,Hkv,Dv");
  std::optional<seqmix::RopeTable> table;
  if (c.param_bool("rope", false)) {
    table.emplace(rope_config(c), c.param_int("table_positions", 0), c.param_int("sequence_length", 0));
    in.rope = &*table;
    in.rope_rotated_keys = c.param_int("rope_rotated_keys", 0);
  }
  seqmix::RelativeBias& rb = in.relative_bias;
  const std::string bias = c.param_string("bias", "none");
  const char* const kinds[] = {"none", "t5", "kerple_log", "kerple_power", "fire"};
  int kind = -1;
  for (int i = 0; i < 5; ++i)
    if (bias == kinds[i]) kind = i;
  if (kind < 0) throw CaseError(c.id() + ": param 'bias' \"" + bias + "\" is not a relative bias kind");
  rb.kind = static_cast<seqmix::RelativeBiasKind>(kind);
  rb.table = c.opt_in<2>("t5_table", "Hq,num_buckets");
  rb.bidirectional = c.param_bool("bidirectional", false);
  rb.max_distance = c.param_int("max_distance", 128);
  rb.r1 = c.opt_in<1>("r1", "Hq"), rb.r2 = c.opt_in<1>("r2", "Hq");
  rb.fire_w1 = c.opt_in<2>("fire_w1", "Hq,W"), rb.fire_b1 = c.opt_in<2>("fire_b1", "Hq,W");
  rb.fire_w2 = c.opt_in<2>("fire_w2", "Hq,W"), rb.fire_b2 = c.opt_in<1>("fire_b2", "Hq");
  rb.fire_c = static_cast<float>(c.param_double("fire_c", 0.1));
  rb.fire_threshold = static_cast<float>(c.param_double("fire_threshold", 512.0));
  in.head_scales = c.opt_in<1>("head_scales", "Hq");
  seqmix::AttentionOptions options;
  if (const auto scale = c.param_opt_double("scale")) options.scale = static_cast<float>(*scale);
  options.causal = c.param_bool("causal", false);
  OutputMap out;
  const seqmix::AttentionOutputs outputs{c.make_output<4>(out, "o"), c.make_output<3>(out, "lse")};
  if (fast)
    seqmix::attention(in, outputs, options);
  else
    seqmix::reference::attention(in, outputs, options);
  return out;
}

const RegisterOp kRope("rope", [](const CaseData& c) { return run_rope(c, true); },
                       [](const CaseData& c) { return run_rope(c, false); });
const RegisterOp kMlaPrefill("mla_prefill", [](const CaseData& c) { return run_mla_prefill(c, true); },
                             [](const CaseData& c) { return run_mla_prefill(c, false); });
const RegisterOp kMlaDecode("mla_decode", [](const CaseData& c) { return run_mla_decode(c, true); },
                            [](const CaseData& c) { return run_mla_decode(c, false); });

const RegisterOp kAttentionPositional("attention_positional",
                                      [](const CaseData& c) { return run_attention_positional(c, true); },
                                      [](const CaseData& c) { return run_attention_positional(c, false); });

}  // namespace
