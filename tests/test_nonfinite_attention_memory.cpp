// The non-finite policy (issue 24 item 2, docs/reliability.md) for the approximate and sparse
// attention operators (linformer, nystrom_attention, combiner, nsa, moba, mla prefill and
// decode), DMC's compressed cache and the memories (slot_memory, product_key_memory). The probe
// of tests/nonfinite_probe.hpp puts NaN, +inf and -inf into one element of each token input at
// batch row 0 of B = 2: for the causal operators the outputs of earlier tokens stay bit for bit
// what the same form gives without it; every form's outputs are non-finite exactly where the
// reference's are (attention's rule: a NaN / inf reaches the rows whose weights see it), and
// batch row 1 is bit for bit the clean run's. linformer and nystrom_attention have no causal form:
// there the probe checks the reference's rule and batch row 1 only, and a test below states what
// the reference gives (every row of the poked batch row and head group non-finite). Fast forms
// run serially and on two threads; decode forms run token by token over the growing prefix.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "nonfinite_probe.hpp"
#include "seqmix/attention/approx/fast.hpp"
#include "seqmix/attention/approx/reference.hpp"
#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/mla/reference.hpp"
#include "seqmix/attention/moba/fast.hpp"
#include "seqmix/attention/moba/reference.hpp"
#include "seqmix/attention/moba/step.hpp"
#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/nsa/reference.hpp"
#include "seqmix/attention/nsa/step.hpp"
#include "seqmix/kv_cache/dmc/fast.hpp"
#include "seqmix/kv_cache/dmc/reference.hpp"
#include "seqmix/kv_cache/dmc/step.hpp"
#include "seqmix/memory/product_key/fast.hpp"
#include "seqmix/memory/product_key/reference.hpp"
#include "seqmix/memory/slot/fast.hpp"
#include "seqmix/memory/slot/reference.hpp"

namespace {

using namespace seqmix_nonfinite_probe;

constexpr index_t kAmB = 2;   // batch rows: the poke goes to row 0, row 1 must not move
constexpr index_t kAmT = 60;  // tokens; pokes at 0, 13, 25 (inside blocks of 8) and T - 1

Field am_batch(Field f, int axis = 0) {
  f.owner_axis = axis;
  f.owners.clear();
  for (index_t b = 0; b < f.shape[static_cast<std::size_t>(axis)]; ++b) f.owners.push_back(b);
  return f;
}
Field am_param(std::string name, std::vector<index_t> shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return random_field(std::move(name), std::move(shape), seed, lo, hi, -1);
}
const seqmix::Executor& am_executor(bool threads) {
  return threads ? static_cast<const seqmix::Executor&>(st::two_thread_pool()) : seqmix::serial_executor();
}
template <typename F>
void am_add_threaded(Op& op, const std::string& name, F run) {
  op.forms.push_back({name + " serial", [=](const Fields& in, Fields& out) { run(in, out, false); }});
  op.forms.push_back({name + " 2 threads", [=](const Fields& in, Fields& out) { run(in, out, true); }});
}

// ---- linformer, nystrom_attention (no causal form), combiner ----------------------------------

// Hq = 2 query heads on Hkv = 1. Outputs carry no token axis (every row reads every key).
Op am_linformer_op() {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8, kp = 12;
  Op op;
  op.name = "linformer";
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 401)), am_batch(random_field("k", {B, T, Hkv, D}, 402)),
               am_batch(random_field("v", {B, T, Hkv, D}, 403)), am_param("e", {kp, T}, 404, -0.3f, 0.3f),
               am_param("f", {kp, T}, 405, -0.3f, 0.3f)};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D}, -1)), am_batch(zero_field("lse", {B, T, Hq}, -1))};
  const auto args = [](const Fields& in) {
    return seqmix::LinformerInputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<2>(), in[4].in<2>()};
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::linformer(args(in), {out[0].out<4>(), out[1].out<3>()}); };
  am_add_threaded(op, "linformer", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::linformer(args(in), {out[0].out<4>(), out[1].out<3>()}, {}, am_executor(threads));
  });
  op.tokens = {0, 25, T - 1};
  return op;
}

Op am_nystrom_op(bool conv) {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8;
  Op op;
  op.name = std::string("nystrom_attention") + (conv ? " with conv skip" : "");
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 411)), am_batch(random_field("k", {B, T, Hkv, D}, 412)),
               am_batch(random_field("v", {B, T, Hkv, D}, 413)), am_param("conv_kernel", {Hq, 3}, 414)};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D}, -1))};
  seqmix::NystromOptions options;
  options.landmarks = 6;
  const auto args = [=](const Fields& in) {
    seqmix::NystromInputs a{in[0].in<4>(), in[1].in<4>(), in[2].in<4>()};
    if (conv) a.conv_kernel = in[3].in<2>();
    return a;
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::nystrom_attention(args(in), out[0].out<4>(), options); };
  am_add_threaded(op, "nystrom_attention", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::nystrom_attention(args(in), out[0].out<4>(), options, am_executor(threads));
  });
  op.tokens = {0, 25, T - 1};
  return op;
}

// Causal: queries are the last Tq of T positions; decode runs Tq = 1 over the prefix [0, t].
Op am_combiner_op() {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8;
  Op op;
  op.name = "combiner";
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 421)), am_batch(random_field("k", {B, T, Hkv, D}, 422)),
               am_batch(random_field("v", {B, T, Hkv, D}, 423))};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D})), am_batch(zero_field("lse", {B, T, Hq}))};
  seqmix::CombinerOptions options;
  options.block_size = 8;
  const auto args = [](const Fields& in) { return seqmix::CombinerInputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>()}; };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::combiner(args(in), {out[0].out<4>(), out[1].out<3>()}, options);
  };
  am_add_threaded(op, "combiner", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::combiner(args(in), {out[0].out<4>(), out[1].out<3>()}, options, am_executor(threads));
  });
  op.forms.push_back({"combiner decode", [=](const Fields& in, Fields& out) {
                        for (index_t t = 0; t < T; ++t)
                          seqmix::combiner({in[0].in<4>().slice(1, t, 1), in[1].in<4>().slice(1, 0, t + 1),
                                            in[2].in<4>().slice(1, 0, t + 1)},
                                           {out[0].out<4>().slice(1, t, 1), out[1].out<3>().slice(1, t, 1)}, options);
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- nsa, moba ----------------------------------------------------------------------------------

Op am_nsa_op() {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8;
  Op op;
  op.name = "nsa";
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 431)), am_batch(random_field("k", {B, T, Hkv, D}, 432)),
               am_batch(random_field("v", {B, T, Hkv, D}, 433)), am_batch(random_field("gates", {B, T, Hq, 3}, 434, 0.f, 1.f))};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D}))};
  seqmix::NsaOptions options;
  options.compress_block = 8, options.compress_stride = 4, options.select_block = 8;
  options.top_n = 4, options.initial_blocks = 1, options.local_blocks = 2, options.window = 12;
  const auto args = [](const Fields& in) {
    return seqmix::NsaInputs<float>{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<4>()};
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::nsa(args(in), out[0].out<4>(), options); };
  am_add_threaded(op, "nsa", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::nsa(args(in), out[0].out<4>(), options, am_executor(threads));
  });
  op.forms.push_back({"nsa_step", [=](const Fields& in, Fields& out) {
                        for (index_t t = 0; t < T; ++t)
                          seqmix::nsa_step(seqmix::NsaInputs<float>{in[0].in<4>().slice(1, t, 1), in[1].in<4>().slice(1, 0, t + 1),
                                                                    in[2].in<4>().slice(1, 0, t + 1), in[3].in<4>().slice(1, t, 1)},
                                           out[0].out<4>().slice(1, t, 1), options, st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

Op am_moba_op() {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8;
  Op op;
  op.name = "moba";
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 441)), am_batch(random_field("k", {B, T, Hkv, D}, 442)),
               am_batch(random_field("v", {B, T, Hkv, D}, 443))};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D})), am_batch(zero_field("lse", {B, T, Hq}))};
  seqmix::MobaOptions options;
  options.block_size = 8, options.top_k = 2;
  const auto args = [](const Fields& in) { return seqmix::MobaInputs<float>{in[0].in<4>(), in[1].in<4>(), in[2].in<4>()}; };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::moba(args(in), {out[0].out<4>(), out[1].out<3>()}, options);
  };
  am_add_threaded(op, "moba", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::moba(args(in), {out[0].out<4>(), out[1].out<3>()}, options, am_executor(threads));
  });
  op.forms.push_back({"moba_step", [=](const Fields& in, Fields& out) {
                        for (index_t t = 0; t < T; ++t)
                          seqmix::moba_step(seqmix::MobaInputs<float>{in[0].in<4>().slice(1, t, 1), in[1].in<4>().slice(1, 0, t + 1),
                                                                      in[2].in<4>().slice(1, 0, t + 1)},
                                            {out[0].out<4>().slice(1, t, 1), out[1].out<3>().slice(1, t, 1)}, options,
                                            st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- mla ----------------------------------------------------------------------------------------

// Prefill (causal) against the reference, and the absorbed decode token by token over the
// latent cache with cache_seqlens = t + 1 (the later cache rows, poked or not, are not read).
Op am_mla_op() {
  const index_t B = kAmB, T = kAmT, H = 2, dn = 6, dr = 4, dc = 10, dv = 5;
  Op op;
  op.name = "mla";
  op.inputs = {am_batch(random_field("q_nope", {B, T, H, dn}, 451)), am_batch(random_field("q_rope", {B, T, H, dr}, 452)),
               am_batch(random_field("c_kv", {B, T, dc}, 453)),      am_batch(random_field("k_rope", {B, T, dr}, 454)),
               am_param("w_uk", {H, dn, dc}, 455, -0.4f, 0.4f),      am_param("w_uv", {H, dv, dc}, 456, -0.4f, 0.4f)};
  op.outputs = {am_batch(zero_field("o", {B, T, H, dv})), am_batch(zero_field("lse", {B, T, H}))};
  const auto args = [](const Fields& in) {
    return seqmix::MlaPrefillInputs<float>{in[0].in<4>(), in[1].in<4>(), in[2].in<3>(), in[3].in<3>(), {in[4].in<3>(), in[5].in<3>()}};
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::mla(args(in), {out[0].out<4>(), out[1].out<3>()}); };
  am_add_threaded(op, "mla_prefill", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::mla_prefill(args(in), {out[0].out<4>(), out[1].out<3>()}, {}, am_executor(threads));
  });
  op.forms.push_back({"mla_decode", [=](const Fields& in, Fields& out) {
                        std::vector<std::int32_t> lengths(static_cast<std::size_t>(B));
                        for (index_t t = 0; t < T; ++t) {
                          for (auto& n : lengths) n = static_cast<std::int32_t>(t + 1);
                          seqmix::MlaDecodeInputs<float> d{in[0].in<4>().select(1, t), in[1].in<4>().select(1, t), in[2].in<3>(),
                                                           in[3].in<3>(), ConstView<std::int32_t, 1>(lengths.data(), {B}),
                                                           {in[4].in<3>(), in[5].in<3>()}};
                          seqmix::mla_decode(d, {out[0].out<4>().select(1, t), out[1].out<3>().select(1, t)}, {},
                                             st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- dmc ----------------------------------------------------------------------------------------

// A fresh cache per run (capacity T); alpha in [0, 1] (rounded: merge or append), omega > 0.
// Non-finite alpha / omega are refused by every form.
Op am_dmc_op() {
  const index_t B = kAmB, T = kAmT, Hq = 2, Hkv = 1, D = 8;
  Op op;
  op.name = "dmc";
  op.inputs = {am_batch(random_field("q", {B, T, Hq, D}, 461)), am_batch(random_field("k", {B, T, Hkv, D}, 462)),
               am_batch(random_field("v", {B, T, Hkv, D}, 463)), am_batch(random_field("alpha", {B, T, Hkv}, 464, 0.f, 1.f)),
               am_batch(random_field("omega", {B, T, Hkv}, 465, 0.2f, 2.f))};
  op.outputs = {am_batch(zero_field("o", {B, T, Hq, D}))};
  const seqmix::DmcCacheConfig config{B, Hkv, D, D, T};
  const auto args = [](const Fields& in) {
    return seqmix::DmcInputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<3>(), in[4].in<3>()};
  };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::DmcCache cache(config);
    seqmix::reference::dmc_attention(args(in), cache, out[0].out<4>());
  };
  am_add_threaded(op, "dmc_attention", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::DmcCache cache(config);
    seqmix::dmc_attention(args(in), cache, out[0].out<4>(), {}, am_executor(threads));
  });
  op.forms.push_back({"dmc_decode_step", [=](const Fields& in, Fields& out) {
                        seqmix::DmcCache cache(config);
                        for (index_t t = 0; t < T; ++t)
                          seqmix::dmc_decode_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t), in[2].in<4>().select(1, t),
                                                   in[3].in<3>().select(1, t), in[4].in<3>().select(1, t)},
                                                  cache, out[0].out<4>().select(1, t), {}, st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- slot_memory, product_key_memory -----------------------------------------------------------

// Segments of 10 tokens (tokens 13 and 25 mid-segment): a token's x reaches its segment's write
// and so every later segment's reads; tokens of its own segment before it read the memory as it
// was at the segment's start. The step is fed one segment at a time.
Op am_slot_op(seqmix::SlotGate gate) {
  const index_t B = kAmB, T = kAmT, S = 4, D = 8, segment = 10;
  const bool lm2 = gate == seqmix::SlotGate::lm2;
  Op op;
  op.name = std::string("slot_memory ") + (lm2 ? "lm2" : "input_forget");
  op.inputs = {am_batch(random_field("x", {B, T, D}, 471)), am_batch(random_field("memory", {B, S, D}, 472, -1.f, 1.f, -1)),
               am_param("w_input", {D, D}, 473, -0.4f, 0.4f), am_param("b_input", {D}, 474, -0.2f, 0.2f),
               am_param("w_forget", {D, D}, 475, -0.4f, 0.4f), am_param("b_forget", {D}, 476, -0.2f, 0.2f),
               am_param("w_output", {D, D}, 477, -0.4f, 0.4f), am_param("b_output", {D}, 478, -0.2f, 0.2f)};
  op.inputs[1].state_pokes = {2 * D + 5};
  op.outputs = {am_batch(zero_field("y", {B, T, D})), am_batch(zero_field("final_memory", {B, S, D}, -1))};
  seqmix::SlotMemoryOptions options;
  options.gate = gate, options.heads = 2, options.segment = segment;
  const auto weights = [=](const Fields& in) {
    seqmix::SlotMemoryWeights w{in[2].in<2>(), in[3].in<1>(), in[4].in<2>(), in[5].in<1>()};
    if (lm2) w.w_output = in[6].in<2>(), w.b_output = in[7].in<1>();
    return w;
  };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::slot_memory({in[0].in<3>(), in[1].in<3>(), weights(in)}, {out[0].out<3>(), out[1].out<3>()}, options);
  };
  am_add_threaded(op, "slot_memory", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::slot_memory({in[0].in<3>(), in[1].in<3>(), weights(in)}, {out[0].out<3>(), out[1].out<3>()}, options,
                        am_executor(threads));
  });
  op.forms.push_back({"slot_memory_step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[1].data;
                        for (index_t t0 = 0; t0 < T; t0 += segment)
                          seqmix::slot_memory_step(in[0].in<3>().slice(1, t0, segment), out[1].out<3>(), weights(in),
                                                   out[0].out<3>().slice(1, t0, segment), options, st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// Per token (no batch axis: the token axis is 0); with the optional gate.
Op am_pkm_op() {
  const index_t T = kAmT, H = 2, Dk = 8, n_sub = 6, Dv = 5, k = 3;
  Op op;
  op.name = "product_key_memory";
  op.inputs = {random_field("query", {T, H, Dk}, 481, -1.f, 1.f, 0), am_param("keys_a", {H, n_sub, Dk / 2}, 482),
               am_param("keys_b", {H, n_sub, Dk / 2}, 483), am_param("values", {n_sub * n_sub, Dv}, 484),
               random_field("gate", {T, Dv}, 485, -1.f, 1.f, 0)};
  op.outputs = {zero_field("y", {T, Dv}, 0), zero_field("weights", {T, H, k}, 0)};
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = k;
  const auto args = [](const Fields& in) {
    return seqmix::ProductKeyMemoryInputs<float>{in[0].in<3>(), in[1].in<3>(), in[2].in<3>(), in[3].in<2>(), in[4].in<2>()};
  };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::product_key_memory(args(in), {out[0].out<2>(), {}, out[1].out<3>()}, options);
  };
  am_add_threaded(op, "product_key_memory", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::product_key_memory(args(in), {out[0].out<2>(), {}, out[1].out<3>()}, options, am_executor(threads));
  });
  op.tokens = {0, 25, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: linformer (no causal form)", "[nonfinite][attention][approx]") { probe(am_linformer_op()); }

TEST_CASE("non-finite inputs: nystrom_attention (no causal form)", "[nonfinite][attention][approx]") {
  probe(am_nystrom_op(false));
  probe(am_nystrom_op(true));
}

TEST_CASE("non-finite inputs: combiner prefill and decode", "[nonfinite][attention][approx]") { probe(am_combiner_op()); }

TEST_CASE("non-finite inputs: nsa and nsa_step", "[nonfinite][attention][nsa]") { probe(am_nsa_op()); }

TEST_CASE("non-finite inputs: moba and moba_step", "[nonfinite][attention][moba]") { probe(am_moba_op()); }

TEST_CASE("non-finite inputs: mla prefill and decode", "[nonfinite][attention][mla]") { probe(am_mla_op()); }

TEST_CASE("non-finite inputs: dmc_attention and dmc_decode_step", "[nonfinite][kv_cache][dmc]") { probe(am_dmc_op()); }

TEST_CASE("non-finite inputs: slot_memory and its segment step", "[nonfinite][memory][slot]") {
  probe(am_slot_op(seqmix::SlotGate::input_forget));
  probe(am_slot_op(seqmix::SlotGate::lm2));
}

TEST_CASE("non-finite inputs: product_key_memory", "[nonfinite][memory][product_key]") { probe(am_pkm_op()); }

namespace {

// What the rule gives for the operators without a causal form: a NaN in k at token t of batch
// row 0 reaches every projected key / landmark of that row, so every output of batch row 0 is
// NaN; an inf in v reaches the poked value channel of every output row of batch row 0 (NaN or
// inf); batch row 1 is bit for bit the clean run's. Checked for the reference and each form.
void am_check_global_rule(const Op& op, std::size_t field, bool whole_row) {
  const index_t t = 25;
  Fields clean = op.outputs;
  op.reference(op.inputs, clean);
  Fields in = op.inputs;
  const index_t poked = in[field].poke_index(t);
  in[field].data[static_cast<std::size_t>(poked)] = whole_row ? kNan : std::numeric_limits<float>::infinity();
  std::vector<std::pair<std::string, Run>> runs = op.forms;
  runs.insert(runs.begin(), {"reference", op.reference});
  for (const auto& run : runs) {
    INFO(op.name << " " << run.first << ": " << in[field].name << (whole_row ? " NaN" : " inf") << " at token " << t);
    Fields out = op.outputs;
    run.second(in, out);
    const Field& o = out[0];
    const index_t per_row = o.numel() / o.shape[0], D = o.shape.back();
    index_t wrong = 0;
    for (index_t i = 0; i < o.numel(); ++i) {
      const float x = o.data[static_cast<std::size_t>(i)];
      if (i >= per_row) {
        wrong += !same_bits(x, clean[0].data[static_cast<std::size_t>(i)]) && run.first == "reference";
        wrong += !std::isfinite(x);
      } else {
        wrong += (whole_row || i % D == D / 2) ? std::isfinite(x) : !std::isfinite(x);
      }
    }
    CHECK(wrong == 0);
  }
}

}  // namespace

TEST_CASE("non-finite inputs: linformer and nystrom_attention spread a NaN key over their batch row", "[nonfinite][attention][approx]") {
  for (const Op& op : {am_linformer_op(), am_nystrom_op(false)}) {
    am_check_global_rule(op, 1, true);   // NaN in k: every output of batch row 0
    am_check_global_rule(op, 2, false);  // inf in v: its channel in every row of batch row 0
  }
}
