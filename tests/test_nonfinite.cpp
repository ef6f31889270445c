// The non-finite policy (issue 24 item 2, docs/reliability.md): a NaN, +inf or -inf put into one
// element of one input at token t
//  - never reaches an output of an earlier token: those stay bit-identical to the clean run of
//    the same form (and the reference's to the clean reference run);
//  - makes non-finite exactly the outputs (and LSE / final states) that the reference makes
//    non-finite, so a fast form never hides a NaN and never invents one;
//  - or, where an operator refuses the value (a NaN or positive log-gate), is refused by the
//    fast form and the reference alike.
// One generic probe runs every family: each op is a list of named fields with a token axis, a
// reference and its fast forms.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"
#include "seqmix/attention/topk/fast.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix_testing/testing.hpp"
#include "nonfinite_probe.hpp"

namespace {

using namespace seqmix_nonfinite_probe;


// ---- linear attention family --------------------------------------------------------------

// V = 12 keeps the chunked fp32 steps on Eigen; V = 32 (whole vectors on every target) runs
// them on the register tiles (diagonal_decay/chunk_products.hpp) and their non-finite branch.
Op gla_op(seqmix::GateKind gate, index_t T, index_t chunk, index_t V = 12) {
  const index_t B = 1, H = 2, K = 16;
  Op op;
  op.name = "gated_linear_attention gate=" + std::to_string(static_cast<int>(gate)) + " T=" + std::to_string(T) +
            " chunk=" + std::to_string(chunk) + " V=" + std::to_string(V);
  op.inputs = {random_field("q", {B, T, H, K}, 1), random_field("k", {B, T, H, K}, 2),
               random_field("v", {B, T, H, V}, 3)};
  if (gate == seqmix::GateKind::channel) op.inputs.push_back(random_field("g", {B, T, H, K}, 4, -3.f, -0.01f));
  if (gate == seqmix::GateKind::scalar) op.inputs.push_back(random_field("g_scalar", {B, T, H}, 4, -3.f, -0.01f));
  if (op.inputs.size() == 4) op.inputs.back().exact = false;
  op.inputs.push_back(random_field("initial_state", {B, H, K, V}, 5, -1.f, 1.f, -1));
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("final_state", {B, H, K, V}, -1)};
  auto io = [gate](const Fields& in, Fields& out) {
    seqmix::GatedLinearAttentionInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>();
    if (gate == seqmix::GateKind::channel) i.g = in[3].in<4>();
    if (gate == seqmix::GateKind::scalar) i.g_scalar = in[3].in<3>();
    i.initial_state = in.back().in<4>();
    return std::make_pair(i, seqmix::GatedLinearAttentionOutputs{out[0].out<4>(), out[1].out<4>(), {}});
  };
  seqmix::GatedLinearAttentionOptions options;
  options.gate = gate;
  options.chunk_size = chunk;
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::gated_linear_attention(i, o, options);
  };
  for (auto algorithm : {seqmix::LinearAttentionAlgorithm::chunked, seqmix::LinearAttentionAlgorithm::recurrent}) {
    seqmix::GatedLinearAttentionOptions fast = options;
    fast.algorithm = algorithm;
    op.forms.push_back({algorithm == seqmix::LinearAttentionAlgorithm::chunked ? "chunked" : "recurrent",
                        [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::gated_linear_attention(i, o, fast, st::two_thread_pool());
                        }});
  }
  op.tokens = {0, chunk - 1, chunk, chunk + 6, T - 1};
  return op;
}


// A prefill op whose fast entry takes an algorithm option: the probe runs each algorithm.
template <class Options, class Algorithm, class Fast, class Ref, class Io>
void add_forms(Op& op, const Options& options, std::vector<std::pair<std::string, Algorithm>> algorithms, Fast fast,
               Ref ref, Io io) {
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    ref(i, o, options);
  };
  for (const auto& [name, algorithm] : algorithms) {
    Options o2 = options;
    o2.algorithm = algorithm;
    op.forms.push_back({name, [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          fast(i, o, o2);
                        }});
  }
}

Op linear_attention_op(seqmix::FeatureMap phi, bool normalize) {
  const index_t B = 1, T = 100, H = 2, K = 8, V = 12;
  const index_t Kf = seqmix::feature_dim(phi, K);
  Op op;
  op.name = "linear_attention phi=" + std::to_string(static_cast<int>(phi)) + " normalize=" + std::to_string(normalize);
  op.inputs = {random_field("q", {B, T, H, K}, 11), random_field("k", {B, T, H, K}, 12),
               random_field("v", {B, T, H, V}, 13)};
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("final_state", {B, H, Kf, V}, -1)};
  seqmix::LinearAttentionOptions options;
  options.feature_map = phi;
  options.normalize = normalize;
  using A = seqmix::LinearAttentionAlgorithm;
  add_forms(
      op, options, std::vector<std::pair<std::string, A>>{{"chunked", A::chunked}, {"recurrent", A::recurrent}},
      [](const auto& i, const auto& o, const auto& opt) { seqmix::linear_attention(i, o, opt, st::two_thread_pool()); },
      [](const auto& i, const auto& o, const auto& opt) { seqmix::reference::linear_attention(i, o, opt); },
      [](const Fields& in, Fields& out) {
        seqmix::LinearAttentionInputs i;
        i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>();
        seqmix::LinearAttentionOutputs o;
        o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
        return std::make_pair(i, o);
      });
  op.tokens = {0, 63, 64, 70, T - 1};
  return op;
}

Op rwkv6_op(index_t chunk = 64, index_t V = 8) {
  const index_t B = 1, T = 100, H = 2, K = 16;
  Op op;
  op.name = "rwkv6 V=" + std::to_string(V);
  op.inputs = {random_field("r", {B, T, H, K}, 21), random_field("k", {B, T, H, K}, 22),
               random_field("v", {B, T, H, V}, 23), random_field("g", {B, T, H, K}, 24, -2.f, -0.01f),
               random_field("u", {H, K}, 25, -1.f, 1.f, -1)};
  op.inputs[3].exact = false;
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("final_state", {B, H, K, V}, -1)};
  using A = seqmix::LinearAttentionAlgorithm;
  add_forms(
      op, seqmix::Rwkv6Options{chunk, {}}, std::vector<std::pair<std::string, A>>{{"chunked", A::chunked}, {"recurrent", A::recurrent}},
      [](const auto& i, const auto& o, const auto& opt) { seqmix::rwkv6(i, o, opt, st::two_thread_pool()); },
      [](const auto& i, const auto& o, const auto& opt) { seqmix::reference::rwkv6(i, o, opt); },
      [](const Fields& in, Fields& out) {
        seqmix::Rwkv6Inputs i;
        i.r = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.g = in[3].in<4>(), i.u = in[4].in<2>();
        seqmix::Rwkv6Outputs o;
        o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
        return std::make_pair(i, o);
      });
  op.tokens = {0, 63, 64, 70, T - 1};
  return op;
}

// delta_rule (gate -1), Gated DeltaNet (scalar gate) or KDA (channel gate), l2-normalized q, k.
// H heads: from 4 on the two-thread pool runs the chunked heads in tasks of ceil(H / 2) that
// advance chunk by chunk together on one scratch (delta_update::run_item_groups).
Op delta_op(int gate, index_t chunk = 64, index_t H = 2) {
  const index_t B = 1, T = 100, K = 16, V = 8;
  Op op;
  op.name = gate < 0 ? "delta_rule" : gate == 0 ? "gated_delta_rule scalar" : "gated_delta_rule channel (KDA)";
  op.name += " H=" + std::to_string(H);
  op.inputs = {random_field("q", {B, T, H, K}, 31), random_field("k", {B, T, H, K}, 32),
               random_field("v", {B, T, H, V}, 33), random_field("beta", {B, T, H}, 34, 0.05f, 1.f)};
  if (gate == 0) op.inputs.push_back(random_field("g_scalar", {B, T, H}, 35, -2.f, -0.01f));
  if (gate == 1) op.inputs.push_back(random_field("g", {B, T, H, K}, 35, -2.f, -0.01f));
  if (gate >= 0) op.inputs.back().exact = false;
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("final_state", {B, H, K, V}, -1)};
  using A = seqmix::DeltaAlgorithm;
  const std::vector<std::pair<std::string, A>> algorithms{{"chunked", A::chunked}, {"recurrent", A::recurrent}};
  if (gate < 0) {
    seqmix::DeltaRuleOptions options;
    options.qk_norm = seqmix::QkNorm::l2;
    options.chunk_size = chunk;
    add_forms(
        op, options, algorithms,
        [](const auto& i, const auto& o, const auto& opt) { seqmix::delta_rule(i, o, opt, st::two_thread_pool()); },
        [](const auto& i, const auto& o, const auto& opt) { seqmix::reference::delta_rule(i, o, opt); },
        [](const Fields& in, Fields& out) {
          seqmix::DeltaRuleInputs i;
          i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.beta = in[3].in<3>();
          seqmix::DeltaRuleOutputs o;
          o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
          return std::make_pair(i, o);
        });
  } else {
    seqmix::GatedDeltaRuleOptions options;
    options.qk_norm = seqmix::QkNorm::l2;
    options.chunk_size = chunk;
    options.gate = gate == 0 ? seqmix::DeltaGate::scalar : seqmix::DeltaGate::channel;
    add_forms(
        op, options, algorithms,
        [](const auto& i, const auto& o, const auto& opt) { seqmix::gated_delta_rule(i, o, opt, st::two_thread_pool()); },
        [](const auto& i, const auto& o, const auto& opt) { seqmix::reference::gated_delta_rule(i, o, opt); },
        [gate](const Fields& in, Fields& out) {
          seqmix::GatedDeltaRuleInputs i;
          i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.beta = in[3].in<3>();
          if (gate == 0) i.g_scalar = in[4].in<3>();
          if (gate == 1) i.g = in[4].in<4>();
          seqmix::GatedDeltaRuleOutputs o;
          o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
          return std::make_pair(i, o);
        });
  }
  op.tokens = {0, 63, 64, 70, T - 1};
  return op;
}

Op rwkv7_op() {
  const index_t B = 1, T = 40, H = 2, K = 8, V = 8;
  Op op;
  op.name = "rwkv7";
  // a = -kappa, b = kappa * alpha with a unit kappa: the usual RWKV-7 parameterization keeps
  // the transition contractive; small random a, b do too.
  op.inputs = {random_field("r", {B, T, H, K}, 41), random_field("k", {B, T, H, K}, 42, -0.3f, 0.3f),
               random_field("v", {B, T, H, V}, 43), random_field("a", {B, T, H, K}, 44, -0.3f, 0.f),
               random_field("b", {B, T, H, K}, 45, 0.f, 0.3f), random_field("g", {B, T, H, K}, 46, -1.f, -0.01f)};
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("final_state", {B, H, K, V}, -1)};
  auto io = [](const Fields& in, Fields& out) {
    seqmix::Rwkv7Inputs i;
    i.r = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.a = in[3].in<4>(), i.b = in[4].in<4>();
    i.g = in[5].in<4>();
    seqmix::Rwkv7Outputs o;
    o.o = out[0].out<4>(), o.final_state = out[1].out<4>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::rwkv7(i, o);
  };
  op.forms.push_back({"recurrent", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::rwkv7(i, o, st::two_thread_pool());
                      }});
  op.tokens = {0, 17, T - 1};
  return op;
}

// ---- state-space family -------------------------------------------------------------------

Op ssd_op(index_t chunk = 32) {
  const index_t B = 1, T = 80, H = 2, P = 8, G = 1, N = 16;
  Op op;
  op.name = "ssd";
  op.inputs = {random_field("x", {B, T, H, P}, 51), random_field("dt", {B, T, H}, 52, 0.01f, 0.5f),
               random_field("Bm", {B, T, G, N}, 53), random_field("Cm", {B, T, G, N}, 54),
               random_field("z", {B, T, H, P}, 55), random_field("A", {H}, 56, -2.f, -0.1f, -1),
               random_field("D", {H}, 57, -1.f, 1.f, -1)};
  op.inputs[1].exact = false;
  op.outputs = {zero_field("y", {B, T, H, P}), zero_field("final_state", {B, H, P, N}, -1)};
  using A = seqmix::SsdAlgorithm;
  add_forms(
      op, seqmix::SsdOptions{false, chunk, {}}, std::vector<std::pair<std::string, A>>{{"chunked", A::chunked}, {"recurrent", A::recurrent}},
      [](const auto& i, const auto& o, const auto& opt) { seqmix::ssd(i, o, opt, st::two_thread_pool()); },
      [](const auto& i, const auto& o, const auto& opt) { seqmix::reference::ssd(i, o, opt); },
      [](const Fields& in, Fields& out) {
        seqmix::SsdInputs i;
        i.x = in[0].in<4>(), i.dt = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.z = in[4].in<4>();
        i.A = in[5].in<1>(), i.D = in[6].in<1>();
        seqmix::SsdOutputs o;
        o.y = out[0].out<4>(), o.final_state = out[1].out<4>();
        return std::make_pair(i, o);
      });
  op.tokens = {0, 31, 32, 40, T - 1};
  return op;
}

Op selective_scan_op() {
  const index_t B = 1, T = 50, D = 8, G = 1, N = 8;
  Op op;
  op.name = "selective_scan";
  op.inputs = {random_field("u", {B, T, D}, 61), random_field("delta", {B, T, D}, 62, 0.01f, 0.5f),
               random_field("Bm", {B, T, G, N}, 63), random_field("Cm", {B, T, G, N}, 64),
               random_field("z", {B, T, D}, 65), random_field("A", {D, N}, 66, -2.f, -0.1f, -1)};
  op.outputs = {zero_field("y", {B, T, D}), zero_field("final_state", {B, D, N}, -1)};
  auto io = [](const Fields& in, Fields& out) {
    seqmix::SelectiveScanInputs i;
    i.u = in[0].in<3>(), i.delta = in[1].in<3>(), i.Bm = in[2].in<4>(), i.Cm = in[3].in<4>(), i.z = in[4].in<3>();
    i.A = in[5].in<2>();
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
  op.tokens = {0, 20, T - 1};
  return op;
}

Op causal_conv1d_op(seqmix::ConvActivation activation) {
  const index_t B = 1, T = 40, D = 20, W = 4;
  Op op;
  op.name = "causal_conv1d activation=" + std::to_string(static_cast<int>(activation));
  op.inputs = {random_field("x", {B, T, D}, 71), random_field("weight", {D, W}, 72, -1.f, 1.f, -1)};
  op.outputs = {zero_field("y", {B, T, D}), zero_field("final_state", {B, W - 1, D}, -1)};
  seqmix::CausalConv1dOptions options;
  options.activation = activation;
  auto io = [](const Fields& in, Fields& out) {
    seqmix::CausalConv1dInputs i;
    i.x = in[0].in<3>(), i.weight = in[1].in<2>();
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
  op.tokens = {0, 10, T - 1};
  return op;
}

// ---- softmax attention ---------------------------------------------------------------------

// Causal self-attention (query row i sees keys j <= i), so a key poked at token t reaches rows
// >= t only. The mask's token axis is the query row; its poked key (the middle column) is
// visible to rows past the middle and hidden from the others.
Op attention_op(index_t T, bool with_mask, bool softcap) {
  const index_t B = 1, Hq = 4, Hkv = 2, D = 16;
  Op op;
  op.name = "attention T=" + std::to_string(T) + (with_mask ? " mask" : "") + (softcap ? " softcap" : "");
  op.inputs = {random_field("q", {B, T, Hq, D}, 81), random_field("k", {B, T, Hkv, D}, 82),
               random_field("v", {B, T, Hkv, D}, 83)};
  if (with_mask) op.inputs.push_back(random_field("mask", {1, T, T}, 84, -2.f, 0.f));
  op.outputs = {zero_field("o", {B, T, Hq, D}), zero_field("lse", {B, T, Hq})};
  seqmix::AttentionOptions options;
  options.causal = true;
  if (softcap) options.softcap = 5.f;
  auto io = [with_mask](const Fields& in, Fields& out) {
    seqmix::AttentionInputs<float> i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>();
    if (with_mask) i.mask = in[3].in<3>();
    return std::make_pair(i, seqmix::AttentionOutputs{out[0].out<4>(), out[1].out<3>()});
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::attention(i, o, options);
  };
  op.forms.push_back({"attention_flash", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::attention_flash(i, o, options, st::two_thread_pool());
                      }});
  op.forms.push_back({"attention_step (split KV)", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::attention_step(i, o, options, st::two_thread_pool());
                      }});
  op.tokens = {0, 5, T / 2 + 1, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: gated_linear_attention and its special cases", "[nonfinite][gla]") {
  for (auto gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar, seqmix::GateKind::retnet, seqmix::GateKind::none})
    probe(gla_op(gate, 100, 64));
  probe(gla_op(seqmix::GateKind::channel, 70, 16));
  for (auto gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar}) probe(gla_op(gate, 100, 64, 32));
}

TEST_CASE("non-finite inputs: linear_attention, rwkv6", "[nonfinite][linear_attention]") {
  probe(linear_attention_op(seqmix::FeatureMap::identity, false));
  probe(linear_attention_op(seqmix::FeatureMap::elu1, true));
  probe(linear_attention_op(seqmix::FeatureMap::taylor2, false));
  probe(rwkv6_op());
  probe(rwkv6_op(64, 32));
}

TEST_CASE("non-finite inputs: delta_rule, gated_delta_rule, KDA, rwkv7", "[nonfinite][delta_rule]") {
  for (int gate : {-1, 0, 1}) probe(delta_op(gate));
  // Heads 0 and 1 in one task of the chunked form: head 0's poke must reach none of head 1's
  // outputs or state through the scratch they share.
  for (int gate : {-1, 0, 1}) probe(delta_op(gate, 64, 4));
  probe(rwkv7_op());
}

TEST_CASE("non-finite inputs: ssd, selective_scan, causal_conv1d", "[nonfinite][ssm]") {
  probe(ssd_op());
  probe(selective_scan_op());
  probe(causal_conv1d_op(seqmix::ConvActivation::none));
  probe(causal_conv1d_op(seqmix::ConvActivation::silu));
}

TEST_CASE("non-finite inputs: dense attention (prefill, split-KV decode)", "[nonfinite][attention]") {
  probe(attention_op(150, false, false));
  probe(attention_op(150, true, false));
  probe(attention_op(40, true, true));
}

TEST_CASE("non-finite inputs: attention rows that see a NaN logit give NaN o and lse", "[nonfinite][attention]") {
  // The policy itself, not only agreement with the reference: a NaN in q (row t, head 0), in a
  // key (token t, KV head 0) or a visible mask entry makes o and lse NaN on exactly those rows,
  // never o = 0 with lse = -inf; rows before t stay finite.
  const index_t T = 90, t = 70;
  Op op = attention_op(T, true, false);
  for (std::size_t f : {std::size_t{0}, std::size_t{1}, std::size_t{3}}) {
    Fields in = op.inputs;
    in[f].data[in[f].poke_index(t)] = kNan;
    INFO(in[f].name);
    std::vector<std::pair<std::string, Run>> forms = op.forms;
    forms.push_back({"reference", op.reference});
    for (const auto& [name, run] : forms) {
      INFO(name);
      Fields out = op.outputs;
      run(in, out);
      const Field& lse = out[1];  // [1,T,4,1+...]: rows of 4 heads, query head 0 reads KV head 0
      const index_t Hq = lse.shape[2];
      CHECK(std::isfinite(lse.data[(t - 1) * Hq]));
      // A key is seen by every later row; a q element or a mask entry by its own row only.
      const index_t last = f == 1 ? T - 1 : t;
      for (index_t i = t; i <= last; ++i) {
        CHECK(std::isnan(lse.data[i * Hq]));
        CHECK(std::isnan(out[0].data[i * Hq * out[0].shape[3]]));
      }
      if (f != 1) CHECK(std::isfinite(lse.data[(t + 1) * Hq]));
    }
  }
}

namespace {

// Gates at the extremes the chunked forms accept (issue 24 item 3): a reset of `reset` (a
// log-gate, or dt * A for ssd) every 7th token, -0.05 elsewhere. The chunked form (forms[0])
// must stay within 1e-4 of the reference, relative to max(1, max|ref|), at chunk sizes up to
// 256.
void check_extreme_gates(Op op, std::size_t gate, float reset, float scale) {
  Field& g = op.inputs[gate];
  const index_t T = g.shape[1], row = g.stride(1);
  for (index_t i = 0; i < g.numel(); ++i) g.data[i] = scale * ((i / row) % 7 == 6 ? reset : -0.05f);
  Fields ref = op.outputs, fast = op.outputs;
  op.reference(op.inputs, ref);
  op.forms[0].second(op.inputs, fast);
  for (std::size_t f = 0; f < ref.size(); ++f) {
    double max_ref = 1.0, max_err = 0.0;
    index_t worst = -1;
    for (index_t i = 0; i < ref[f].numel(); ++i) max_ref = std::max(max_ref, std::fabs(double(ref[f].data[i])));
    for (index_t i = 0; i < ref[f].numel(); ++i) {
      const double e = std::fabs(double(fast[f].data[i]) - double(ref[f].data[i]));
      if (!(e <= max_err)) max_err = e, worst = i;
    }
    INFO(op.name << " " << op.forms[0].first << " reset " << reset << " T=" << T << ": " << ref[f].name << " max|err| "
                 << max_err << " at " << worst << " (max|ref| " << max_ref << ")");
    CHECK(max_err <= 1e-4 * max_ref);
  }
}

}  // namespace

TEST_CASE("chunked forms stay accurate at extreme gates and chunk sizes up to 256", "[nonfinite][accuracy]") {
  for (float reset : {-100.f, -1e4f}) {
    for (index_t chunk : {64, 256}) {
      check_extreme_gates(gla_op(seqmix::GateKind::channel, 600, chunk), 3, reset, 1.f);
      check_extreme_gates(gla_op(seqmix::GateKind::scalar, 600, chunk), 3, reset, 1.f);
      check_extreme_gates(rwkv6_op(chunk), 3, reset, 1.f);
      check_extreme_gates(delta_op(0, chunk), 4, reset, 1.f);
      check_extreme_gates(delta_op(1, chunk), 4, reset, 1.f);
      check_extreme_gates(ssd_op(chunk), 1, reset, -1.f);  // dt = -reset with A in [-2, -0.1]
    }
  }
}

namespace {

// ssd's chunked form against the reference on one call (B=1, T=80, H=2, P=8, N=16), within 1e-4
// relative to max(1, max|ref|), finite where the reference is. `setup` edits dt, x and A.
void check_ssd_chunked(index_t chunk, float dt_lo, float dt_hi,
                       const std::function<void(seqmix::Tensor<float, 3>&, seqmix::Tensor<float, 4>&,
                                                seqmix::Tensor<float, 1>&)>& setup) {
  const index_t T = 80, H = 2, P = 8, N = 16;
  seqmix::Tensor<float, 4> x({1, T, H, P}), Bm({1, T, 1, N}), Cm({1, T, 1, N});
  seqmix::Tensor<float, 3> dt({1, T, H});
  seqmix::Tensor<float, 1> A({H});
  st::fill_uniform(x.view(), 61), st::fill_uniform(Bm.view(), 62), st::fill_uniform(Cm.view(), 63);
  st::fill_uniform(dt.view(), 64, dt_lo, dt_hi);
  A(0) = -1.5f, A(1) = -0.7f;
  setup(dt, x, A);
  seqmix::SsdInputs in;
  in.x = x.view(), in.dt = dt.view(), in.A = A.view(), in.Bm = Bm.view(), in.Cm = Cm.view();
  seqmix::Tensor<float, 4> y({1, T, H, P}), y_ref({1, T, H, P}), s({1, H, P, N}), s_ref({1, H, P, N});
  seqmix::SsdOptions options;
  options.chunk_size = chunk, options.algorithm = seqmix::SsdAlgorithm::chunked;
  seqmix::ssd(in, {y.view(), s.view()}, options, st::two_thread_pool());
  seqmix::reference::ssd(in, {y_ref.view(), s_ref.view()}, options);
  const auto compare = [&](const char* what, const auto& out, const auto& ref) {
    double max_ref = 1.0, max_err = 0.0;
    bool ref_finite = true;
    for (index_t i = 0; i < ref.numel(); ++i) {
      ref_finite = ref_finite && std::isfinite(ref.data()[i]);
      max_ref = std::max(max_ref, std::fabs(double(ref.data()[i])));
    }
    REQUIRE(ref_finite);
    for (index_t i = 0; i < ref.numel(); ++i) {
      const double e = std::fabs(double(out.data()[i]) - double(ref.data()[i]));
      if (!(e <= max_err)) max_err = e;  // a NaN output counts as the worst
    }
    INFO("chunk " << chunk << " " << what << ": max|err| " << max_err << " (max|ref| " << max_ref << ")");
    CHECK(max_err <= 1e-4 * max_ref);
  };
  compare("y", y, y_ref);
  compare("final_state", s, s_ref);
}

}  // namespace

// Fuzz findings tests/fuzz/corpus/ssm/ssd-chunked-extreme-Bm and ssd-chunked-negative-dt /
// ssd-chunked-growing-state.
TEST_CASE("ssd chunked: a dt * A overflowing to -inf resets like the recurrence", "[nonfinite][ssm]") {
  for (index_t chunk : {16, 32, 64}) {
    check_ssd_chunked(chunk, 0.01f, 0.5f, [](auto& dt, auto& x, auto&) {
      dt(0, 37, 0) = 3.4e38f;  // dt * A = -inf: exp gives 0 in the recurrence
      for (index_t p = 0; p < x.shape()[3]; ++p) x(0, 37, 0, p) = 0.f;  // dt * x stays finite (0)
    });
  }
}

TEST_CASE("ssd chunked: a growing state (negative dt without softplus) matches the recurrence", "[nonfinite][ssm]") {
  for (index_t chunk : {16, 32, 64})
    for (float lo : {-0.3f, -0.6f}) check_ssd_chunked(chunk, lo, 0.2f, [](auto&, auto&, auto&) {});
}

// ---- chunked hybrids ------------------------------------------------------------------------

namespace {

// Aaren (attention as a scan): a NaN / inf in k or v at token t reaches o from t on.
Op aaren_op() {
  const index_t B = 1, T = 70, H = 2, Dk = 8, Dv = 8;
  Op op;
  op.name = "aaren";
  op.inputs = {random_field("k", {B, T, H, Dk}, 71), random_field("v", {B, T, H, Dv}, 72),
               random_field("query", {H, Dk}, 73, -1.f, 1.f, -1)};
  op.outputs = {zero_field("o", {B, T, H, Dv})};
  auto io = [](const Fields& in, Fields& out) {
    seqmix::AarenInputs i;
    i.k = in[0].in<4>(), i.v = in[1].in<4>(), i.query = in[2].in<2>();
    seqmix::AarenOutputs o;
    o.o = out[0].out<4>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::aaren(i, o);
  };
  using S = seqmix::AarenSplit;
  for (const auto& [name, split] : std::vector<std::pair<std::string, S>>{{"heads", S::heads}, {"time", S::time}}) {
    seqmix::AarenOptions options;
    options.split = split;
    op.forms.push_back({name, [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::aaren(i, o, options, st::two_thread_pool());
                        }});
  }
  op.tokens = {0, 17, 35, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: chunked hybrids", "[nonfinite][chunked]") {
  probe(aaren_op());
}

namespace {

// topk_attention: query i selects up to 8 distinct keys <= i (so a poke at token t may reach
// only queries >= t), per selection head a different set, -1 padding. q, k and v are probed:
// a key that a row does not select takes no part, even with a NaN logit (the reference loops
// over the selected keys only; it used to add a -inf mask, and NaN + -inf = NaN).
Op topk_op() {
  const index_t T = 40, Hq = 4, Hkv = 2, Hs = 2, D = 8, capacity = 8;
  Op op;
  op.name = "topk_attention";
  op.inputs = {random_field("q", {1, T, Hq, D}, 81), random_field("k", {1, T, Hkv, D}, 82),
               random_field("v", {1, T, Hkv, D}, 83)};
  op.outputs = {zero_field("o", {1, T, Hq, D}), zero_field("lse", {1, T, Hq})};
  auto indices = std::make_shared<seqmix::Tensor<std::int32_t, 4>>(std::array<index_t, 4>{1, T, Hs, capacity});
  const index_t back[2][8] = {{0, 1, 2, 4, 7, 11, 16, 22}, {0, 3, 5, 6, 9, 13, 19, 30}};
  for (index_t i = 0; i < T; ++i)
    for (index_t h = 0; h < Hs; ++h) {
      index_t e = 0;  // increasing key indices first, then -1
      for (index_t k = capacity; k-- > 0;)
        if (i >= back[h][k]) (*indices)(0, i, h, e++) = std::int32_t(i - back[h][k]);
      for (; e < capacity; ++e) (*indices)(0, i, h, e) = -1;
    }
  auto io = [indices](const Fields& in, Fields& out) {
    seqmix::TopkAttentionInputs<float> i;
    i.q = in[0].in<4>(), i.k = in[1].in<4>(), i.v = in[2].in<4>(), i.indices = indices->view();
    seqmix::AttentionOutputs o;
    o.o = out[0].out<4>(), o.lse = out[1].out<3>();
    return std::make_pair(i, o);
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::topk_attention(i, o);
  };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                        const auto [i, o] = io(in, out);
                        seqmix::topk_attention(i, o, {}, st::two_thread_pool());
                      }});
  op.tokens = {0, 7, 20, T - 1};
  return op;
}

// The lightning indexer (causal): a key poked at token t reaches the scores of rows >= t only
// (column t), a q or weights element its own row. Its NaN scores are then never selected by
// select_topk (selectors.hpp skips NaN and -inf), so they cannot reach topk_attention.
Op lightning_indexer_op() {
  const index_t T = 40, Hi = 4, Di = 16;
  Op op;
  op.name = "lightning_indexer";
  op.inputs = {random_field("q", {1, T, Hi, Di}, 91), random_field("k", {1, T, Di}, 92),
               random_field("weights", {1, T, Hi}, 93, 0.f, 1.f)};
  op.outputs = {zero_field("scores", {1, T, T})};
  seqmix::LightningIndexerOptions options;
  options.causal = true;
  auto io = [](const Fields& in) {
    seqmix::LightningIndexerInputs i;
    i.q = in[0].in<4>(), i.k = in[1].in<3>(), i.weights = in[2].in<3>();
    return i;
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::lightning_indexer(io(in), out[0].out<3>(), options); };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                        seqmix::lightning_indexer(io(in), out[0].out<3>(), options, st::two_thread_pool());
                      }});
  op.tokens = {0, 7, 20, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: topk_attention", "[nonfinite][attention]") {
  probe(topk_op());
  // The policy itself: a NaN in key 10 (KV head 0) reaches the rows whose selection (head 0)
  // lists it, not row 13, which could see it causally but did not select it.
  Op op = topk_op();
  Fields in = op.inputs;
  in[1].data[in[1].poke_index(10)] = kNan;
  std::vector<std::pair<std::string, Run>> forms = op.forms;
  forms.push_back({"reference", op.reference});
  for (const auto& [name, run] : forms) {
    INFO(name);
    Fields out = op.outputs;
    run(in, out);
    const index_t Hq = out[1].shape[2];
    CHECK(std::isnan(out[1].data[10 * Hq]));          // row 10 selects key 10 (offset 0)
    CHECK(std::isnan(out[1].data[14 * Hq]));          // offset 4
    CHECK(std::isfinite(out[1].data[13 * Hq]));       // offset 3: not selected by head 0
    CHECK(std::isfinite(out[0].data[13 * Hq * 8]));
  }
}

TEST_CASE("non-finite inputs: lightning_indexer", "[nonfinite][attention]") {
  probe(lightning_indexer_op());
}
