// The non-finite policy (issue 24 item 2, docs/reliability.md) in the serving forms: a NaN, +inf
// or -inf in one sequence of a ragged batch (packed cu_seqlens), or in one row of a state pool,
// stays in that sequence. The probe of tests/nonfinite_probe.hpp, with owners: every output
// element of another sequence, and every pool row another sequence (or none) owns, stays bit for
// bit what the same form gives on the clean batch; within the poked sequence, earlier tokens stay
// as they were and later outputs and its final state are non-finite exactly where the reference
// (its own serving form) makes them non-finite. A state row read by no sequence (a free slot, or
// a sequence with has_initial_state false) must not be read at all.
//
// One layout for every op: four packed sequences of 5, 37, 1 and 20 tokens (chunk edges at 16
// and 32 inside the second) in a pool of 6 state rows with holes, has_initial_state mixed. The
// recurrent families also run their slotted decode steps, token by token over three rows.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "nonfinite_probe.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/chunked/rat/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace {

using namespace seqmix_nonfinite_probe;

// The ragged batch of every prefill probe, and the pool its states live in.
struct ServingLayout {
  std::vector<index_t> lengths{5, 37, 1, 20};
  std::vector<std::int64_t> cu{0, 5, 42, 43, 63};
  std::vector<std::int64_t> slots{4, 1, 0, 3};        // rows 2 and 5 free
  std::vector<std::uint8_t> has_init{1, 0, 1, 1};     // sequence 1 starts from zeros
  index_t S = 6, total = 63, free_row = 2;
  // Owners: of each packed token, and of each pool row (-1: free).
  std::vector<index_t> token_owners() const {
    std::vector<index_t> o;
    for (std::size_t n = 0; n + 1 < cu.size(); ++n)
      for (auto t = cu[n]; t < cu[n + 1]; ++t) o.push_back(static_cast<index_t>(n));
    return o;
  }
  std::vector<index_t> row_owners() const {
    std::vector<index_t> o(static_cast<std::size_t>(S), -1);
    for (std::size_t n = 0; n < slots.size(); ++n) o[static_cast<std::size_t>(slots[n])] = static_cast<index_t>(n);
    return o;
  }
  seqmix::SequenceBatch batch() const {
    seqmix::SequenceBatch b;
    b.cu_seqlens = cu, b.state_indices = slots, b.has_initial_state = has_init;
    return b;
  }
  // Pokes at the first and last token of sequence 0, across sequence 1's chunk edges, into the
  // one-token sequence 2 and the first and last token of sequence 3.
  std::vector<index_t> tokens() const { return {0, 4, 5 + 15, 5 + 16, 5 + 33, 42, 43, 62}; }
};

// A packed token field [1, total, ...] whose tokens belong to the layout's sequences.
Field serving_tokens(const ServingLayout& l, std::string name, std::vector<index_t> rest, std::uint64_t seed,
                     float lo = -1.f, float hi = 1.f) {
  std::vector<index_t> shape{1, l.total};
  shape.insert(shape.end(), rest.begin(), rest.end());
  Field f = random_field(std::move(name), shape, seed, lo, hi);
  f.owner_axis = 1, f.owners = l.token_owners();
  return f;
}

// A state pool field [S, ...] (an input: poked in the row of sequence 0, which reads it, of
// sequence 1, which starts from zeros and must not read it, and of free row 2), or the output
// template of one.
template <class Layout>
Field serving_pool(const Layout& l, std::string name, std::vector<index_t> rest, std::uint64_t seed, float lo = -1.f,
                   float hi = 1.f) {
  std::vector<index_t> shape{l.S};
  shape.insert(shape.end(), rest.begin(), rest.end());
  Field f = random_field(std::move(name), shape, seed, lo, hi, -1);
  f.owner_axis = 0, f.owners = l.row_owners();
  const index_t row = f.stride(0), mid = row / 2;
  f.state_pokes = {l.slots[0] * row + mid, l.slots[1] * row + mid, l.free_row * row + mid};
  return f;
}
template <class Layout>
Field serving_pool_out(const Layout& l, std::string name, std::vector<index_t> rest) {
  Field f = serving_pool(l, std::move(name), std::move(rest), 0);
  f.data.assign(f.data.size(), 0.f), f.state_pokes.clear();
  return f;
}

// ---- gated_linear_attention (channel gate), gated_delta_rule (scalar gate) -------------------

Op gla_serving_op() {
  const ServingLayout l;
  const index_t H = 2, K = 8, V = 8;
  Op op;
  op.name = "gated_linear_attention packed + slots";
  op.inputs = {serving_tokens(l, "q", {H, K}, 201), serving_tokens(l, "k", {H, K}, 202),
               serving_tokens(l, "v", {H, V}, 203), serving_tokens(l, "g", {H, K}, 204, -3.f, -0.01f),
               serving_pool(l, "initial_state", {H, K, V}, 205)};
  op.inputs[3].exact = false;
  op.outputs = {zero_field("o", {1, l.total, H, V}), serving_pool_out(l, "final_state", {H, K, V})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::GatedLinearAttentionOptions options;
  options.gate = seqmix::GateKind::channel;
  options.chunk_size = 16;
  const auto io = [l](const Fields& in, Fields& out) {
    seqmix::GatedLinearAttentionInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.g = in[3].in<4>(), i.initial_state = in[4].in<4>();
    i.batch = l.batch();
    return std::make_pair(i, seqmix::GatedLinearAttentionOutputs{out[0].out<4>(), out[1].out<4>(), {}});
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::gated_linear_attention(i, o, options);
  };
  for (auto algorithm : {seqmix::LinearAttentionAlgorithm::chunked, seqmix::LinearAttentionAlgorithm::recurrent}) {
    auto fast = options;
    fast.algorithm = algorithm;
    op.forms.push_back({algorithm == seqmix::LinearAttentionAlgorithm::chunked ? "chunked" : "recurrent",
                        [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::gated_linear_attention(i, o, fast, st::two_thread_pool());
                        }});
  }
  op.tokens = l.tokens();
  return op;
}

Op gated_delta_rule_serving_op() {
  const ServingLayout l;
  const index_t H = 2, K = 8, V = 8;
  Op op;
  op.name = "gated_delta_rule packed + slots";
  op.inputs = {serving_tokens(l, "q", {H, K}, 211), serving_tokens(l, "k", {H, K}, 212),
               serving_tokens(l, "v", {H, V}, 213), serving_tokens(l, "beta", {H}, 214, 0.05f, 1.f),
               serving_tokens(l, "g_scalar", {H}, 215, -2.f, -0.01f), serving_pool(l, "initial_state", {H, K, V}, 216)};
  op.inputs[4].exact = false;
  op.outputs = {zero_field("o", {1, l.total, H, V}), serving_pool_out(l, "final_state", {H, K, V})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  options.gate = seqmix::DeltaGate::scalar;
  options.chunk_size = 16;
  const auto io = [l](const Fields& in, Fields& out) {
    seqmix::GatedDeltaRuleInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.beta = in[3].in<3>(), i.g_scalar = in[4].in<3>();
    i.initial_state = in[5].in<4>(), i.batch = l.batch();
    seqmix::GatedDeltaRuleOutputs o;
    o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::gated_delta_rule(i, o, options);
  };
  for (auto algorithm : {seqmix::DeltaAlgorithm::chunked, seqmix::DeltaAlgorithm::recurrent}) {
    auto fast = options;
    fast.algorithm = algorithm;
    op.forms.push_back({algorithm == seqmix::DeltaAlgorithm::chunked ? "chunked" : "recurrent",
                        [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::gated_delta_rule(i, o, fast, st::two_thread_pool());
                        }});
  }
  op.tokens = l.tokens();
  return op;
}

// ---- ssd, selective_scan, causal_conv1d ------------------------------------------------------

Op ssd_serving_op() {
  const ServingLayout l;
  const index_t H = 2, P = 4, G = 1, N = 8;
  Op op;
  op.name = "ssd packed + slots";
  op.inputs = {serving_tokens(l, "x", {H, P}, 221), serving_tokens(l, "dt", {H}, 222, 0.01f, 0.5f),
               serving_tokens(l, "Bm", {G, N}, 223), serving_tokens(l, "Cm", {G, N}, 224),
               serving_tokens(l, "z", {H, P}, 225), random_field("A", {H}, 226, -2.f, -0.1f, -1),
               serving_pool(l, "initial_state", {H, P, N}, 227)};
  op.inputs[1].exact = false;
  op.outputs = {zero_field("y", {1, l.total, H, P}), serving_pool_out(l, "final_state", {H, P, N})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::SsdOptions options;
  options.chunk_size = 16;
  const auto io = [l](const Fields& in, Fields& out) {
    seqmix::SsdInputs i;
    i.x = in[0].in<4>(), i.dt = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.z = in[4].in<4>();
    i.A = in[5].in<1>(), i.initial_state = in[6].in<4>(), i.batch = l.batch();
    seqmix::SsdOutputs o;
    o.y = out[0].out<4>(), o.final_state = out[1].out<4>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::ssd(i, o, options);
  };
  for (auto algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent}) {
    auto fast = options;
    fast.algorithm = algorithm;
    op.forms.push_back({algorithm == seqmix::SsdAlgorithm::chunked ? "chunked" : "recurrent",
                        [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::ssd(i, o, fast, st::two_thread_pool());
                        }});
  }
  op.tokens = l.tokens();
  return op;
}

Op selective_scan_serving_op() {
  const ServingLayout l;
  const index_t D = 8, G = 1, N = 4;
  Op op;
  op.name = "selective_scan packed + slots";
  op.inputs = {serving_tokens(l, "u", {D}, 231), serving_tokens(l, "delta", {D}, 232, 0.01f, 0.5f),
               serving_tokens(l, "Bm", {G, N}, 233), serving_tokens(l, "Cm", {G, N}, 234),
               serving_tokens(l, "z", {D}, 235), random_field("A", {D, N}, 236, -2.f, -0.1f, -1),
               serving_pool(l, "initial_state", {D, N}, 237)};
  op.outputs = {zero_field("y", {1, l.total, D}), serving_pool_out(l, "final_state", {D, N})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  const auto io = [l](const Fields& in, Fields& out) {
    seqmix::SelectiveScanInputs i;
    i.u = in[0].in<3>(), i.delta = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.z = in[4].in<3>();
    i.A = in[5].in<2>(), i.initial_state = in[6].in<3>(), i.batch = l.batch();
    seqmix::SelectiveScanOutputs o;
    o.y = out[0].out<3>(), o.final_state = out[1].out<3>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::selective_scan(i, o);
  };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::selective_scan(i, o, {}, st::two_thread_pool());
                      }});
  op.tokens = l.tokens();
  return op;
}

Op causal_conv1d_serving_op() {
  const ServingLayout l;
  const index_t D = 12, W = 4;
  Op op;
  op.name = "causal_conv1d packed + slots";
  op.inputs = {serving_tokens(l, "x", {D}, 241), random_field("weight", {D, W}, 242, -1.f, 1.f, -1),
               serving_pool(l, "initial_state", {W - 1, D}, 243)};
  op.outputs = {zero_field("y", {1, l.total, D}), serving_pool_out(l, "final_state", {W - 1, D})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::CausalConv1dOptions options;
  options.activation = seqmix::ConvActivation::silu;
  const auto io = [l](const Fields& in, Fields& out) {
    seqmix::CausalConv1dInputs i;
    i.x = in[0].in<3>(), i.weight = in[1].in<2>(), i.initial_state = in[2].in<3>(), i.batch = l.batch();
    seqmix::CausalConv1dOutputs o;
    o.y = out[0].out<3>(), o.final_state = out[1].out<3>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::causal_conv1d(i, o, options);
  };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::causal_conv1d(i, o, options, st::two_thread_pool());
                      }});
  op.tokens = l.tokens();
  return op;
}

// ---- hybrids with slots: BASED, RAT, Infini-attention (per-slot positions), Mega -------------

// The state inputs in[first, first + n) copied into the pool outputs out[1, 1 + n), which the
// forms update in place; the per-slot positions start from `start` on every run.
void serving_copy_pools(const Fields& in, std::size_t first, std::size_t n, Fields& out) {
  for (std::size_t s = 0; s < n; ++s) out[1 + s].data = in[first + s].data;
}

// Start positions of the pool rows: sequence 0 (row 4) resumes at 7, sequence 3 (row 3) at 12;
// sequence 1 (row 1) is fresh, whatever its row says.
const std::vector<std::int64_t> kServingPositions{3, 9, 0, 12, 7, 2};

Op based_serving_op() {
  const ServingLayout l;
  const index_t Hf = 1, F = 4, H = 2, D = 8, V = 8, W = 8, Kf = 1 + F + F * F;
  Op op;
  op.name = "based packed + slots";
  op.inputs = {serving_tokens(l, "q_feat", {Hf, F}, 251), serving_tokens(l, "k_feat", {Hf, F}, 252),
               serving_tokens(l, "q", {H, D}, 253),       serving_tokens(l, "k", {H, D}, 254),
               serving_tokens(l, "v", {H, V}, 255),       serving_pool(l, "state.kv", {H, Kf, V}, 256, -0.1f, 0.1f),
               serving_pool(l, "state.normalizer", {H, Kf}, 257, 0.5f, 2.f),
               serving_pool(l, "state.window_k", {W, H, D}, 258), serving_pool(l, "state.window_v", {W, H, V}, 259)};
  op.outputs = {zero_field("o", {1, l.total, H, V}), serving_pool_out(l, "state.kv", {H, Kf, V}),
                serving_pool_out(l, "state.normalizer", {H, Kf}), serving_pool_out(l, "state.window_k", {W, H, D}),
                serving_pool_out(l, "state.window_v", {W, H, V})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::BasedOptions options;
  options.window = W;
  options.chunk_size = 16;
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      serving_copy_pools(in, 5, 4, out);
      std::vector<std::int64_t> positions = kServingPositions;
      seqmix::BasedState s;
      s.kv = out[1].out<4>(), s.normalizer = out[2].out<3>(), s.window_k = out[3].out<4>(), s.window_v = out[4].out<4>();
      s.positions = TensorView<std::int64_t, 1>(positions.data(), {static_cast<index_t>(positions.size())});
      const seqmix::BasedInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<4>(), in[4].in<4>(), l.batch()};
      if (reference)
        seqmix::reference::based(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::based(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.tokens = l.tokens();
  return op;
}

Op rat_serving_op() {
  const ServingLayout l;
  const index_t H = 2, Hkv = 1, D = 8, L = 8, C = 6;
  Op op;
  op.name = "rat packed + slots";
  op.inputs = {serving_tokens(l, "q", {H, D}, 261, -2.f, 2.f), serving_tokens(l, "k", {Hkv, D}, 262, -2.f, 2.f),
               serving_tokens(l, "v", {Hkv, D}, 263),          serving_tokens(l, "g", {Hkv, D}, 264, -2.f, 0.f),
               serving_pool(l, "state.chunk_k", {C, Hkv, D}, 265), serving_pool(l, "state.chunk_v", {C, Hkv, D}, 266),
               serving_pool(l, "state.k_run", {Hkv, D}, 267),      serving_pool(l, "state.v_run", {Hkv, D}, 268)};
  op.outputs = {zero_field("o", {1, l.total, H, D}), serving_pool_out(l, "state.chunk_k", {C, Hkv, D}),
                serving_pool_out(l, "state.chunk_v", {C, Hkv, D}), serving_pool_out(l, "state.k_run", {Hkv, D}),
                serving_pool_out(l, "state.v_run", {Hkv, D})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  // The chunk summaries poked: row 0 (history of sequences 0 and 3) besides the middle one.
  for (std::size_t f : {std::size_t{4}, std::size_t{5}}) {
    const index_t row = op.inputs[f].stride(0);
    op.inputs[f].state_pokes.push_back(l.slots[0] * row);
  }
  seqmix::RatOptions options;
  options.chunk_size = L;
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      serving_copy_pools(in, 4, 4, out);
      std::vector<std::int64_t> positions = kServingPositions;
      seqmix::RatState s{out[1].out<4>(), out[2].out<4>(), out[3].out<3>(), out[4].out<3>(), 0, {}};
      s.positions = TensorView<std::int64_t, 1>(positions.data(), {static_cast<index_t>(positions.size())});
      const seqmix::RatInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<4>(), l.batch()};
      if (reference)
        seqmix::reference::rat(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::rat(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.tokens = l.tokens();
  return op;
}

// Infini-attention at per-slot positions, segments of 16: sequence 0 resumes at 7 (its segment
// buffer holds 7 rows), sequence 3 at 12.
Op infini_serving_op(seqmix::InfiniMemoryUpdate update) {
  const ServingLayout l;
  const index_t H = 2, Hkv = 1, K = 8, V = 8, S = 16;
  Op op;
  op.name = std::string("infini_attention packed + slots ") + (update == seqmix::InfiniMemoryUpdate::delta ? "delta" : "linear");
  op.inputs = {serving_tokens(l, "q", {H, K}, 295), serving_tokens(l, "k", {Hkv, K}, 296),
               serving_tokens(l, "v", {Hkv, V}, 297), random_field("beta", {H}, 298, -2.f, 2.f, -1),
               serving_pool(l, "state.memory", {Hkv, K, V}, 299), serving_pool(l, "state.normalizer", {Hkv, K}, 300, 1.f, 4.f),
               serving_pool(l, "state.segment_k", {S, Hkv, K}, 301), serving_pool(l, "state.segment_v", {S, Hkv, V}, 302)};
  // Segment rows 2 (history of both resuming sequences) besides the middle one (row 8: stale).
  for (std::size_t f : {std::size_t{6}, std::size_t{7}}) op.inputs[f].state_pokes.push_back(l.slots[0] * op.inputs[f].stride(0) + 2 * op.inputs[f].stride(1));
  op.outputs = {zero_field("o", {1, l.total, H, V}), serving_pool_out(l, "state.memory", {Hkv, K, V}),
                serving_pool_out(l, "state.normalizer", {Hkv, K}), serving_pool_out(l, "state.segment_k", {S, Hkv, K}),
                serving_pool_out(l, "state.segment_v", {S, Hkv, V})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::InfiniAttentionOptions options;
  options.segment = S;
  options.update = update;
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      serving_copy_pools(in, 4, 4, out);
      std::vector<std::int64_t> positions = kServingPositions;
      seqmix::InfiniAttentionState s{out[1].out<4>(), out[2].out<3>(), out[3].out<4>(), out[4].out<4>(), 0, {}};
      s.positions = TensorView<std::int64_t, 1>(positions.data(), {static_cast<index_t>(positions.size())});
      const seqmix::InfiniAttentionInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<1>(), l.batch()};
      if (reference)
        seqmix::reference::infini_attention(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::infini_attention(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
      // Segment rows at or past a used slot's position % S are stale (the fast form keeps a
      // finished segment's rows there, the reference does not): cleared before the comparison.
      for (std::int64_t row : l.slots)
        for (std::size_t f : {std::size_t{3}, std::size_t{4}}) {
          const index_t r = out[f].stride(1), first = row * out[f].stride(0);
          std::fill(out[f].data.begin() + first + (positions[static_cast<std::size_t>(row)] % S) * r,
                    out[f].data.begin() + first + S * r, 0.f);
        }
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.tokens = l.tokens();
  return op;
}

// Mega: the EMA state pool read through the slots, the final state and the partial chunk's keys
// and values written to pool rows, each sequence on its own chunk grid.
Op mega_serving_op() {
  const ServingLayout l;
  const index_t D = 8, N = 4, H = 2, Dk = D / H, Dv = 4, c = 16;
  Op op;
  op.name = "mega packed + slots";
  op.inputs = {serving_tokens(l, "x", {D}, 281), serving_tokens(l, "v", {H, Dv}, 282),
               serving_pool(l, "initial_state", {D, N}, 283),
               random_field("params.alpha_logit", {D, N}, 284, -2.f, 2.f, -1),
               random_field("params.delta_logit", {D, N}, 285, -2.f, 2.f, -1),
               random_field("params.beta", {D, N}, 286, -1.f, 1.f, -1),
               random_field("params.eta", {D, N}, 287, -1.f, 1.f, -1),
               random_field("params.q_scale", {D}, 288, -1.f, 1.f, -1),
               random_field("params.q_bias", {D}, 289, -1.f, 1.f, -1),
               random_field("params.k_scale", {D}, 290, -1.f, 1.f, -1),
               random_field("params.k_bias", {D}, 291, -1.f, 1.f, -1)};
  op.outputs = {zero_field("o", {1, l.total, H, Dv}), serving_pool_out(l, "final_state", {D, N}),
                serving_pool_out(l, "k_cache", {c, H, Dk}), serving_pool_out(l, "v_cache", {c, H, Dv})};
  op.outputs[0].owner_axis = 1, op.outputs[0].owners = l.token_owners();
  seqmix::MegaOptions options;
  options.chunk_size = c;
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      seqmix::MegaInputs i;
      i.x = in[0].in<3>(), i.v = in[1].in<4>(), i.initial_state = in[2].in<3>(), i.batch = l.batch();
      i.params = seqmix::MegaParams{in[3].in<2>(), in[4].in<2>(), in[5].in<2>(), in[6].in<2>(),
                                    in[7].in<1>(), in[8].in<1>(), in[9].in<1>(), in[10].in<1>()};
      seqmix::MegaOutputs o;
      o.o = out[0].out<4>(), o.final_state = out[1].out<3>(), o.k_cache = out[2].out<4>(), o.v_cache = out[3].out<4>();
      if (reference)
        seqmix::reference::mega(i, o, options);
      else
        seqmix::mega(i, o, options, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.tokens = l.tokens();
  return op;
}

// ---- paged attention -----------------------------------------------------------------------

// Three sequences of 9, 5 and 12 cached tokens, the last 3 of each the queries, over pages of 4
// rows: sequence 0 in pages {5, 1, 7}, 1 in {0, 3}, 2 in {2, 6, 4}; pages 8 and 9 are free.
Op paged_serving_op() {
  const index_t N = 3, Tq = 3, Hq = 2, Hkv = 1, Dk = 8, Dv = 8, block = 4, blocks = 10, max_blocks = 3;
  const std::vector<std::int32_t> table{5, 1, 7, 0, 3, 0, 2, 6, 4};
  const std::vector<std::int64_t> seqlens{9, 5, 12};
  const std::vector<index_t> page_owner{1, 0, 2, 1, 2, 0, 2, 0, -1, -1};
  Op op;
  op.name = "paged_attention";
  op.inputs = {random_field("q", {N, Tq, Hq, Dk}, 271, -2.f, 2.f), random_field("k_pages", {blocks, block, Hkv, Dk}, 272, -2.f, 2.f, -1),
               random_field("v_pages", {blocks, block, Hkv, Dv}, 273, -1.f, 1.f, -1)};
  op.inputs[0].owner_axis = 0, op.inputs[0].owners = {0, 1, 2};
  const index_t row = block * Hkv * Dk;  // a page (Dk == Dv)
  for (std::size_t f : {std::size_t{1}, std::size_t{2}}) {
    op.inputs[f].owner_axis = 0, op.inputs[f].owners = page_owner;
    // Sequence 0's first and last key (page 5 row 0, page 7 row 0), sequence 2's key 10
    // (page 4 row 2), sequence 1's page 3 past its 5 tokens (row 3: never read), free page 8.
    op.inputs[f].state_pokes = {5 * row + 3, 7 * row + 3, 4 * row + 2 * Dk + 3, 3 * row + 3 * Dk + 3, 8 * row + 3};
  }
  op.outputs = {zero_field("o", {N, Tq, Hq, Dv}), zero_field("lse", {N, Tq, Hq})};
  for (auto& f : op.outputs) f.owner_axis = 0, f.owners = {0, 1, 2};
  const auto io = [=](const Fields& in, Fields& out) {
    seqmix::PagedAttentionInputs<float> i;
    i.q = in[0].in<4>(), i.k_pages = in[1].in<4>(), i.v_pages = in[2].in<4>();
    i.block_table = ConstView<std::int32_t, 2>(table.data(), {N, max_blocks}), i.cache_seqlens = seqlens;
    return std::make_pair(i, seqmix::PagedAttentionOutputs{out[0].out<4>(), out[1].out<3>()});
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::paged_attention(i, o, seqmix::PagedAttentionOptions{});
  };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::paged_attention(i, o, seqmix::PagedAttentionOptions{}, st::two_thread_pool());
                      }});
  op.tokens = {0, 2};
  return op;
}

// ---- slotted decode steps --------------------------------------------------------------------

// Three rows stepping pool rows 4, 0 and 2 (of 5; rows 1 and 3 free) for T tokens; row 1 starts
// fresh (has_initial_state false on its first step). The token fields are [B, T, ...] with the
// rows as owners; the reference is the dense slotted prefill of the same rows. Both update the
// output pool in place from a copy of the input pool, so a free row keeps whatever it held.
struct StepLayout {
  index_t B = 3, T = 6, S = 5, free_row = 3;
  std::vector<std::int64_t> slots{4, 0, 2};
  std::vector<std::uint8_t> has_init{1, 0, 1}, later{1, 1, 1};
  std::vector<index_t> row_owners() const { return {1, -1, 2, -1, 0}; }
  seqmix::SequenceBatch batch(bool first = true) const {
    seqmix::SequenceBatch b;
    b.state_indices = slots, b.has_initial_state = first ? has_init : later;
    return b;
  }
};

Field step_tokens(const StepLayout& l, std::string name, std::vector<index_t> rest, std::uint64_t seed, float lo = -1.f,
                  float hi = 1.f) {
  std::vector<index_t> shape{l.B, l.T};
  shape.insert(shape.end(), rest.begin(), rest.end());
  Field f = random_field(std::move(name), shape, seed, lo, hi);
  f.owner_axis = 0, f.owners = {0, 1, 2};
  return f;
}

// Token t of a [B,T,...] field as the step's [B,...] view.
template <std::size_t R>
ConstView<float, R - 1> step_at(const Field& f, index_t t) {
  return f.in<R>().select(1, t);
}
template <std::size_t R>
TensorView<float, R - 1> step_out(Field& f, index_t t) {
  return f.out<R>().select(1, t);
}

Op gla_step_op() {
  const StepLayout l;
  const index_t H = 2, K = 8, V = 8;
  Op op;
  op.name = "gated_linear_attention_step slotted";
  op.inputs = {step_tokens(l, "q", {H, K}, 301), step_tokens(l, "k", {H, K}, 302), step_tokens(l, "v", {H, V}, 303),
               step_tokens(l, "g", {H, K}, 304, -3.f, -0.01f), serving_pool(l, "state", {H, K, V}, 305)};
  op.outputs = {zero_field("o", {l.B, l.T, H, V}), serving_pool_out(l, "state", {H, K, V})};
  op.outputs[0].owner_axis = 0, op.outputs[0].owners = {0, 1, 2};
  seqmix::GatedLinearAttentionOptions options;
  options.gate = seqmix::GateKind::channel;
  op.reference = [=](const Fields& in, Fields& out) {
    out[1].data = in[4].data;
    seqmix::GatedLinearAttentionInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.g = in[3].in<4>(), i.initial_state = out[1].out<4>();
    i.batch = l.batch();
    seqmix::reference::gated_linear_attention(i, {out[0].out<4>(), out[1].out<4>(), {}}, options);
  };
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[4].data;
                        for (index_t t = 0; t < l.T; ++t) {
                          seqmix::GatedLinearAttentionStepInputs i;
                          i.q = step_at<4>(in[0], t), i.k = step_at<4>(in[1], t), i.v = step_at<4>(in[2], t);
                          i.g = step_at<4>(in[3], t), i.batch = l.batch(t == 0);
                          seqmix::gated_linear_attention_step(i, {step_out<4>(out[0], t), out[1].out<4>()}, options,
                                                              st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 3, l.T - 1};
  return op;
}

Op gated_delta_rule_step_op() {
  const StepLayout l;
  const index_t H = 2, K = 8, V = 8;
  Op op;
  op.name = "gated_delta_rule_step slotted";
  op.inputs = {step_tokens(l, "q", {H, K}, 311), step_tokens(l, "k", {H, K}, 312), step_tokens(l, "v", {H, V}, 313),
               step_tokens(l, "beta", {H}, 314, 0.05f, 1.f), step_tokens(l, "g_scalar", {H}, 315, -2.f, -0.01f),
               serving_pool(l, "state", {H, K, V}, 316)};
  op.outputs = {zero_field("o", {l.B, l.T, H, V}), serving_pool_out(l, "state", {H, K, V})};
  op.outputs[0].owner_axis = 0, op.outputs[0].owners = {0, 1, 2};
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  options.gate = seqmix::DeltaGate::scalar;
  op.reference = [=](const Fields& in, Fields& out) {
    out[1].data = in[5].data;
    seqmix::GatedDeltaRuleInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.beta = in[3].in<3>(), i.g_scalar = in[4].in<3>();
    i.initial_state = out[1].out<4>(), i.batch = l.batch();
    seqmix::GatedDeltaRuleOutputs o;
    o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
    seqmix::reference::gated_delta_rule(i, o, options);
  };
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[5].data;
                        for (index_t t = 0; t < l.T; ++t) {
                          seqmix::GatedDeltaRuleStepInputs i;
                          i.q = step_at<4>(in[0], t), i.k = step_at<4>(in[1], t), i.v = step_at<4>(in[2], t);
                          i.beta = step_at<3>(in[3], t), i.g_scalar = step_at<3>(in[4], t), i.batch = l.batch(t == 0);
                          seqmix::gated_delta_rule_step(i, {step_out<4>(out[0], t), out[1].out<4>()}, options,
                                                        st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 3, l.T - 1};
  return op;
}

Op ssd_step_op() {
  const StepLayout l;
  const index_t H = 2, P = 4, G = 1, N = 8;
  Op op;
  op.name = "ssd_step slotted";
  op.inputs = {step_tokens(l, "x", {H, P}, 321), step_tokens(l, "dt", {H}, 322, 0.01f, 0.5f),
               step_tokens(l, "Bm", {G, N}, 323), step_tokens(l, "Cm", {G, N}, 324),
               random_field("A", {H}, 325, -2.f, -0.1f, -1), serving_pool(l, "state", {H, P, N}, 326)};
  op.outputs = {zero_field("y", {l.B, l.T, H, P}), serving_pool_out(l, "state", {H, P, N})};
  op.outputs[0].owner_axis = 0, op.outputs[0].owners = {0, 1, 2};
  op.reference = [=](const Fields& in, Fields& out) {
    out[1].data = in[5].data;
    seqmix::SsdInputs i;
    i.x = in[0].in<4>(), i.dt = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.A = in[4].in<1>();
    i.initial_state = out[1].out<4>(), i.batch = l.batch();
    seqmix::SsdOutputs o;
    o.y = out[0].out<4>(), o.final_state = out[1].out<4>();
    seqmix::reference::ssd(i, o);
  };
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[5].data;
                        for (index_t t = 0; t < l.T; ++t) {
                          seqmix::SsdStepInputs i;
                          i.x = step_at<4>(in[0], t), i.dt = step_at<3>(in[1], t), i.Bm = step_at<4>(in[2], t);
                          i.Cm = step_at<4>(in[3], t), i.A = in[4].in<1>(), i.batch = l.batch(t == 0);
                          seqmix::ssd_step(i, {step_out<4>(out[0], t), out[1].out<4>()}, {}, st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 3, l.T - 1};
  return op;
}

Op selective_scan_step_op() {
  const StepLayout l;
  const index_t D = 8, G = 1, N = 4;
  Op op;
  op.name = "selective_scan_step slotted";
  op.inputs = {step_tokens(l, "u", {D}, 331), step_tokens(l, "delta", {D}, 332, 0.01f, 0.5f),
               step_tokens(l, "Bm", {G, N}, 333), step_tokens(l, "Cm", {G, N}, 334),
               random_field("A", {D, N}, 335, -2.f, -0.1f, -1), serving_pool(l, "state", {D, N}, 336)};
  op.outputs = {zero_field("y", {l.B, l.T, D}), serving_pool_out(l, "state", {D, N})};
  op.outputs[0].owner_axis = 0, op.outputs[0].owners = {0, 1, 2};
  op.reference = [=](const Fields& in, Fields& out) {
    out[1].data = in[5].data;
    seqmix::SelectiveScanInputs i;
    i.u = in[0].in<3>(), i.delta = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.A = in[4].in<2>();
    i.initial_state = out[1].out<3>(), i.batch = l.batch();
    seqmix::SelectiveScanOutputs o;
    o.y = out[0].out<3>(), o.final_state = out[1].out<3>();
    seqmix::reference::selective_scan(i, o);
  };
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[5].data;
                        for (index_t t = 0; t < l.T; ++t) {
                          seqmix::SelectiveScanStepInputs i;
                          i.u = step_at<3>(in[0], t), i.delta = step_at<3>(in[1], t), i.Bm = step_at<4>(in[2], t);
                          i.Cm = step_at<4>(in[3], t), i.A = in[4].in<2>(), i.batch = l.batch(t == 0);
                          seqmix::selective_scan_step(i, {step_out<3>(out[0], t), out[1].out<3>()}, {},
                                                      st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 3, l.T - 1};
  return op;
}

Op causal_conv1d_step_op() {
  const StepLayout l;
  const index_t D = 12, W = 4;
  Op op;
  op.name = "causal_conv1d_step slotted";
  op.inputs = {step_tokens(l, "x", {D}, 341), random_field("weight", {D, W}, 342, -1.f, 1.f, -1),
               serving_pool(l, "conv_state", {W - 1, D}, 343)};
  op.outputs = {zero_field("y", {l.B, l.T, D}), serving_pool_out(l, "conv_state", {W - 1, D})};
  op.outputs[0].owner_axis = 0, op.outputs[0].owners = {0, 1, 2};
  op.reference = [=](const Fields& in, Fields& out) {
    out[1].data = in[2].data;
    seqmix::CausalConv1dInputs i;
    i.x = in[0].in<3>(), i.weight = in[1].in<2>(), i.initial_state = out[1].out<3>(), i.batch = l.batch();
    seqmix::CausalConv1dOutputs o;
    o.y = out[0].out<3>(), o.final_state = out[1].out<3>();
    seqmix::reference::causal_conv1d(i, o);
  };
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[2].data;
                        for (index_t t = 0; t < l.T; ++t) {
                          seqmix::CausalConv1dStepInputs i;
                          i.x = step_at<3>(in[0], t), i.weight = in[1].in<2>(), i.batch = l.batch(t == 0);
                          seqmix::causal_conv1d_step(i, {step_out<3>(out[0], t), out[1].out<3>()}, {},
                                                     st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 2, l.T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite serving: gla and gated_delta_rule packed sequences in state slots", "[nonfinite][serving]") {
  probe(gla_serving_op());
  probe(gated_delta_rule_serving_op());
}

TEST_CASE("non-finite serving: ssd, selective_scan, causal_conv1d packed sequences in state slots",
          "[nonfinite][serving][ssm]") {
  probe(ssd_serving_op());
  probe(selective_scan_serving_op());
  probe(causal_conv1d_serving_op());
}

TEST_CASE("non-finite serving: based, rat, mega and infini_attention packed sequences in state slots",
          "[nonfinite][serving][chunked]") {
  probe(based_serving_op());
  probe(rat_serving_op());
  probe(mega_serving_op());
  probe(infini_serving_op(seqmix::InfiniMemoryUpdate::linear));
  probe(infini_serving_op(seqmix::InfiniMemoryUpdate::delta));
}

TEST_CASE("non-finite serving: paged_attention pages of one sequence", "[nonfinite][serving][attention]") {
  probe(paged_serving_op());
}

TEST_CASE("non-finite serving: slotted decode steps of gla, gated_delta_rule, ssd, selective_scan, causal_conv1d",
          "[nonfinite][serving][step]") {
  probe(gla_step_op());
  probe(gated_delta_rule_step_op());
  probe(ssd_step_op());
  probe(selective_scan_step_op());
  probe(causal_conv1d_step_op());
}

TEST_CASE("non-finite serving probe: a NaN leaking into another sequence or a free pool row is reported",
          "[nonfinite][serving]") {
  // The owner rule itself: sequence 0's poke may change sequence 0's outputs only.
  const ServingLayout l;
  Fields clean = {zero_field("o", {1, l.total, 2}), serving_pool_out(l, "final_state", {2})};
  clean[0].owner_axis = 1, clean[0].owners = l.token_owners();
  Fields bad = clean;
  bad[0].data[2 * 3] = kNan;  // token 3, sequence 0: allowed where the reference is NaN too
  CHECK(violations(clean, bad, bad, 0, false, true, 0) == "");
  Fields leak = bad;
  leak[0].data[2 * 10] = kNan;  // token 10 belongs to sequence 1
  CHECK(violations(clean, leak, leak, 0, false, true, 0).find("another sequence's element changed") != std::string::npos);
  Fields row = bad;
  row[1].data[2 * 2] = 1.f;  // free pool row 2
  CHECK(violations(clean, row, row, 0, false, true, 0).find("another sequence's element changed") != std::string::npos);
  CHECK(violations(clean, row, row, 0, false, true) == "");  // not a serving probe: no owner rule
}
