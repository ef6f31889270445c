// Chunked GLA, gated delta rule and delta rule with bf16 dot-product GEMMs
// (options.bf16_compute = Bf16Compute::dot) against the fp32 chunked form on the same inputs,
// within the documented bound (docs/operators.md, GLA and gated delta rule): per (sequence,
// value head), the normwise relative error of the outputs ||o_dot - o|| / ||o|| and of the final
// state ||S_dot - S|| / ||S|| at most 2^-6. Ragged shapes: T = 1, T not a multiple of the chunk,
// a chunk not a multiple of 16, odd and non-multiple-of-16 K and V, GQA, B > 1, an initial state,
// every gate kind (channel gates strong enough for the fp32 sub-chunked scores too), packed
// sequences. On targets without AVX512-BF16 the option falls back to fp32: the results are
// checked to equal it exactly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/diagonal_decay/bf16_tiles.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::Bf16Compute;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr double kLaBf16Bound = 1.0 / 64;  // the documented normwise bound

struct LaBf16Case {
  index_t B, T, H, HV, K, V, chunk;
  float gate_lo, gate_hi;
  bool packed;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " HV=" << HV << " K=" << K << " V=" << V << " chunk=" << chunk
      << " g in [" << gate_lo << ", " << gate_hi << "]" << (packed ? " packed" : "");
    return s.str();
  }
};

std::vector<LaBf16Case> la_bf16_cases() {
  std::vector<LaBf16Case> cases = {
      {2, 1, 1, 1, 16, 16, 64, -0.1f, 0.f, false},    // T = 1
      {2, 70, 2, 4, 33, 20, 64, -0.2f, 0.f, false},   // ragged T, odd K, GQA
      {1, 129, 1, 2, 64, 48, 32, -0.05f, 0.f, false}, // several chunks, ragged last one
      {1, 100, 1, 1, 31, 17, 64, -3.f, -1.f, false},  // strong decay (fp32 sub-chunked scores)
      {1, 100, 1, 2, 40, 32, 64, -.8f, -.6f, false},  // a chunk's decay past 30: bf16 scores anchored half way
      {1, 90, 2, 2, 24, 32, 16, -0.1f, 0.f, true},    // packed sequences
      {1, 100, 1, 2, 20, 24, 40, -0.1f, 0.f, false},  // chunk not a multiple of 16: padded scratch
  };
  if (!st::small_test_scale()) cases.push_back({2, 300, 1, 2, 128, 128, 64, -0.05f, 0.f, false});
  return cases;
}

// Both forms' outputs and final states: within the bound where the target has the dot products,
// equal otherwise.
void la_bf16_compare(const std::string& what, const Tensor<float, 4>& o_dot, const Tensor<float, 4>& o,
                     const Tensor<float, 4>& s_dot, const Tensor<float, 4>& s) {
  INFO(what);
  if (!seqmix::detail::kNativeBf16Dot) {
    for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o_dot.data()[i] == o.data()[i]);
    for (index_t i = 0; i < s.numel(); ++i) REQUIRE(s_dot.data()[i] == s.data()[i]);
    return;
  }
  const double eo = st::per_head_relative_error(o_dot, o, 2);
  const double es = st::per_head_relative_error(s_dot, s, 1);
  INFO("output rel err " << eo << ", state rel err " << es);
  CHECK(eo <= kLaBf16Bound);
  CHECK(es <= kLaBf16Bound);
  CHECK(eo > 0.0);  // the dot form ran (rounding changes something)
}

std::vector<std::int32_t> la_bf16_cu(index_t T) {
  std::vector<std::int32_t> cu = {0};
  for (index_t len = 1; cu.back() < T; len = len * 3 + 4)
    cu.push_back(static_cast<std::int32_t>(std::min<index_t>(cu.back() + len, T)));
  return cu;
}

}  // namespace

TEST_CASE("gla bf16 dot products: within the documented bound of the fp32 chunked form", "[gla][bf16]") {
  using seqmix::GateKind;
  std::uint64_t seed = 1900;
  for (const LaBf16Case& c : la_bf16_cases())
    for (const GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::retnet, GateKind::none}) {
      ++seed;
      const index_t N = c.packed ? static_cast<index_t>(la_bf16_cu(c.T).size()) - 1 : c.B;
      const index_t B = c.packed ? 1 : c.B;
      const std::vector<std::int32_t> cu = la_bf16_cu(c.T);
      auto q = st::random_tensor<4>({B, c.T, c.H, c.K}, seed);
      auto k = st::random_tensor<4>({B, c.T, c.H, c.K}, seed + 1);
      auto v = st::random_tensor<4>({B, c.T, c.HV, c.V}, seed + 2);
      Tensor<float, 4> g({B, c.T, c.HV, c.K});
      Tensor<float, 3> gs({B, c.T, c.HV});
      st::fill_log_gate(g.view(), seed + 3, c.gate_lo, c.gate_hi);
      st::fill_log_gate(gs.view(), seed + 4, c.gate_lo, c.gate_hi);
      auto s0 = st::random_tensor<4>({N, c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f);
      seqmix::GatedLinearAttentionInputs in;
      in.q = q.view(), in.k = k.view(), in.v = v.view(), in.initial_state = s0.view();
      if (gate == GateKind::channel) in.g = g.view();
      if (gate == GateKind::scalar) in.g_scalar = gs.view();
      if (c.packed) in.batch.cu_seqlens = cu;
      seqmix::GatedLinearAttentionOptions opt;
      opt.gate = gate, opt.chunk_size = c.chunk, opt.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
      Tensor<float, 4> o({B, c.T, c.HV, c.V}), o_dot({B, c.T, c.HV, c.V});
      Tensor<float, 4> s({N, c.HV, c.K, c.V}), s_dot({N, c.HV, c.K, c.V});
      seqmix::gated_linear_attention(in, {o.view(), s.view()}, opt);
      opt.bf16_compute = Bf16Compute::dot;
      seqmix::gated_linear_attention(in, {o_dot.view(), s_dot.view()}, opt, st::two_thread_pool());
      la_bf16_compare(c.describe() + " gate " + std::to_string(static_cast<int>(gate)), o_dot, o, s_dot, s);
    }
}

TEST_CASE("linear_attention bf16 dot products: within the documented bound of the fp32 chunked form",
          "[linear_attention][bf16]") {
  using seqmix::FeatureMap;
  std::uint64_t seed = 2900;
  for (const LaBf16Case& c : la_bf16_cases())
    for (const FeatureMap map : {FeatureMap::identity, FeatureMap::elu1, FeatureMap::taylor2})
      for (const index_t prefix : {index_t{0}, index_t{5}}) {
        if (prefix > c.T || (prefix > 0 && c.packed)) continue;
        ++seed;
        const bool normalize = map != FeatureMap::identity;
        const index_t K = map == FeatureMap::taylor2 ? std::min<index_t>(c.K, 7) : c.K;  // Kf = 1 + K + K^2
        const index_t Kf = seqmix::feature_dim(map, K);
        const index_t N = c.packed ? static_cast<index_t>(la_bf16_cu(c.T).size()) - 1 : c.B;
        const index_t B = c.packed ? 1 : c.B;
        const std::vector<std::int32_t> cu = la_bf16_cu(c.T);
        auto q = st::random_tensor<4>({B, c.T, c.H, K}, seed);
        auto k = st::random_tensor<4>({B, c.T, c.H, K}, seed + 1);
        auto v = st::random_tensor<4>({B, c.T, c.HV, c.V}, seed + 2);
        auto s0 = st::random_tensor<4>({N, c.HV, Kf, c.V}, seed + 3, -0.5f, 0.5f);
        seqmix::LinearAttentionInputs in{q.view(), k.view(), v.view(), {}, {}};
        if (!normalize) in.initial_state = s0.view();  // normalized: z must stay positive, start from zero
        if (c.packed) in.batch.cu_seqlens = cu;
        seqmix::LinearAttentionOptions opt;
        opt.feature_map = map, opt.normalize = normalize, opt.prefix_len = prefix;
        opt.chunk_size = c.chunk, opt.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
        Tensor<float, 4> o({B, c.T, c.HV, c.V}), o_dot({B, c.T, c.HV, c.V});
        Tensor<float, 4> s({N, c.HV, Kf, c.V}), s_dot({N, c.HV, Kf, c.V});
        seqmix::linear_attention(in, {o.view(), s.view(), {}}, opt);
        opt.bf16_compute = Bf16Compute::dot;
        seqmix::linear_attention(in, {o_dot.view(), s_dot.view(), {}}, opt, st::two_thread_pool());
        la_bf16_compare(c.describe() + " map " + std::to_string(static_cast<int>(map)) + " prefix " +
                            std::to_string(prefix),
                        o_dot, o, s_dot, s);
      }
}

TEST_CASE("gated delta rule bf16 dot products: within the documented bound of the fp32 chunked form",
          "[gated_delta_rule][bf16]") {
  using seqmix::DeltaGate;
  std::uint64_t seed = 1950;
  for (const LaBf16Case& c : la_bf16_cases())
    for (const int variant : {0, 1, 2}) {  // scalar gate, channel gate (KDA), ungated delta_rule
      ++seed;
      const index_t N = c.packed ? static_cast<index_t>(la_bf16_cu(c.T).size()) - 1 : c.B;
      const index_t B = c.packed ? 1 : c.B;
      const std::vector<std::int32_t> cu = la_bf16_cu(c.T);
      auto q = st::random_tensor<4>({B, c.T, c.H, c.K}, seed);
      auto k = st::random_tensor<4>({B, c.T, c.H, c.K}, seed + 1);
      st::normalize_rows(q);
      st::normalize_rows(k);
      auto v = st::random_tensor<4>({B, c.T, c.HV, c.V}, seed + 2);
      auto beta = st::random_tensor<3>({B, c.T, c.HV}, seed + 3, 0.f, 1.f);
      Tensor<float, 4> g({B, c.T, c.HV, c.K});
      Tensor<float, 3> gs({B, c.T, c.HV});
      st::fill_log_gate(g.view(), seed + 4, c.gate_lo, c.gate_hi);
      st::fill_log_gate(gs.view(), seed + 5, c.gate_lo, c.gate_hi);
      auto s0 = st::random_tensor<4>({N, c.HV, c.K, c.V}, seed + 6, -0.5f, 0.5f);
      Tensor<float, 4> o({B, c.T, c.HV, c.V}), o_dot({B, c.T, c.HV, c.V});
      Tensor<float, 4> s({N, c.HV, c.K, c.V}), s_dot({N, c.HV, c.K, c.V});
      seqmix::SequenceBatch batch;
      if (c.packed) batch.cu_seqlens = cu;
      if (variant < 2) {
        seqmix::GatedDeltaRuleInputs in;
        in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.initial_state = s0.view();
        in.batch = batch;
        seqmix::GatedDeltaRuleOptions opt;
        opt.gate = variant == 0 ? DeltaGate::scalar : DeltaGate::channel;
        if (variant == 0) in.g_scalar = gs.view();
        else in.g = g.view();
        opt.chunk_size = c.chunk, opt.algorithm = seqmix::DeltaAlgorithm::chunked;
        seqmix::gated_delta_rule(in, {o.view(), s.view()}, opt);
        opt.bf16_compute = Bf16Compute::dot;
        seqmix::gated_delta_rule(in, {o_dot.view(), s_dot.view()}, opt, st::two_thread_pool());
      } else {
        seqmix::DeltaRuleInputs in;
        in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.initial_state = s0.view();
        in.batch = batch;
        seqmix::DeltaRuleOptions opt;
        opt.chunk_size = c.chunk, opt.algorithm = seqmix::DeltaAlgorithm::chunked;
        seqmix::delta_rule(in, {o.view(), s.view()}, opt);
        opt.bf16_compute = Bf16Compute::dot;
        seqmix::delta_rule(in, {o_dot.view(), s_dot.view()}, opt, st::two_thread_pool());
      }
      la_bf16_compare(c.describe() + " variant " + std::to_string(variant), o_dot, o, s_dot, s);
    }
}

TEST_CASE("linear attention bf16 dot products: a non-finite value reaches no earlier output", "[gla][bf16]") {
  const index_t T = 100, K = 32, V = 16;
  auto q = st::random_tensor<4>({1, T, 1, K}, 7);
  auto k = st::random_tensor<4>({1, T, 1, K}, 8);
  st::normalize_rows(k);
  auto v = st::random_tensor<4>({1, T, 1, V}, 9);
  v(0, 40, 0, 3) = std::numeric_limits<float>::infinity();
  auto gs = st::random_tensor<3>({1, T, 1}, 10, -0.1f, 0.f);
  auto beta = st::random_tensor<3>({1, T, 1}, 11, 0.f, 1.f);
  Tensor<float, 4> o({1, T, 1, V});
  seqmix::GatedLinearAttentionInputs gin;
  gin.q = q.view(), gin.k = k.view(), gin.v = v.view(), gin.g_scalar = gs.view();
  seqmix::GatedLinearAttentionOptions gopt;
  gopt.gate = seqmix::GateKind::scalar, gopt.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
  gopt.bf16_compute = Bf16Compute::dot;
  seqmix::gated_linear_attention(gin, {o.view()}, gopt);
  for (index_t t = 0; t < 40; ++t)
    for (index_t c = 0; c < V; ++c) REQUIRE(std::isfinite(o(0, t, 0, c)));
  // The delta rules, scalar and channel gate: the chunk's U is non-finite, so its M U and state
  // update take the fp32 code; the earlier rows must also match a clean run's (bf16 throughout).
  auto v_clean = st::random_tensor<4>({1, T, 1, V}, 9);
  Tensor<float, 4> g({1, T, 1, K}), o_clean({1, T, 1, V});
  st::fill_log_gate(g.view(), 12, -0.1f, 0.f);
  for (const bool channel : {false, true}) {
    INFO((channel ? "channel gate" : "scalar gate"));
    seqmix::GatedDeltaRuleInputs din;
    din.q = q.view(), din.k = k.view(), din.v = v.view(), din.beta = beta.view();
    seqmix::GatedDeltaRuleOptions dopt;
    dopt.gate = channel ? seqmix::DeltaGate::channel : seqmix::DeltaGate::scalar;
    if (channel) din.g = g.view();
    else din.g_scalar = gs.view();
    dopt.algorithm = seqmix::DeltaAlgorithm::chunked, dopt.bf16_compute = Bf16Compute::dot;
    seqmix::gated_delta_rule(din, {o.view()}, dopt);
    din.v = v_clean.view();
    seqmix::gated_delta_rule(din, {o_clean.view()}, dopt);
    double diff = 0.0, norm = 0.0;
    for (index_t t = 0; t < 40; ++t)
      for (index_t c = 0; c < V; ++c) {
        REQUIRE(std::isfinite(o(0, t, 0, c)));
        diff += std::pow(double(o(0, t, 0, c)) - o_clean(0, t, 0, c), 2);
        norm += std::pow(double(o_clean(0, t, 0, c)), 2);
      }
    CHECK(std::sqrt(diff) <= kLaBf16Bound * std::sqrt(norm));
  }
}

// A value that is not finite in a later chunk: that chunk leaves the words packed at load time
// (load_chunk_words, channel gate and no gate) for the fp32 steps. The chunks before it must
// equal a clean run's bit for bit, and no row before the bad token may see it.
TEST_CASE("gla / linear_attention bf16 dot products: a non-finite value in a later chunk, channel gate and none",
          "[gla][linear_attention][bf16]") {
  using seqmix::GateKind;
  const index_t T = 150, K = 48, V = 32, chunk = 64, bad = 80;
  auto q = st::random_tensor<4>({1, T, 2, K}, 21);
  auto k = st::random_tensor<4>({1, T, 2, K}, 22);
  auto v_clean = st::random_tensor<4>({1, T, 2, V}, 23);
  auto v = st::random_tensor<4>({1, T, 2, V}, 23);
  v(0, bad, 1, 5) = std::numeric_limits<float>::infinity();
  Tensor<float, 4> g({1, T, 2, K});
  st::fill_log_gate(g.view(), 24, -0.1f, 0.f);
  const auto check = [&](const std::string& what, const Tensor<float, 4>& o, const Tensor<float, 4>& o_clean) {
    INFO(what);
    for (index_t t = 0; t < bad; ++t)
      for (index_t h = 0; h < 2; ++h)
        for (index_t c = 0; c < V; ++c) {
          REQUIRE(std::isfinite(o(0, t, h, c)));
          if (t < chunk) REQUIRE(o(0, t, h, c) == o_clean(0, t, h, c));
        }
    // Head 0 never sees the bad value: every row equals the clean run's.
    for (index_t t = bad; t < T; ++t)
      for (index_t c = 0; c < V; ++c) REQUIRE(o(0, t, 0, c) == o_clean(0, t, 0, c));
  };
  for (const GateKind gate : {GateKind::channel, GateKind::none}) {
    seqmix::GatedLinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    if (gate == GateKind::channel) in.g = g.view();
    seqmix::GatedLinearAttentionOptions opt;
    opt.gate = gate, opt.chunk_size = chunk, opt.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
    opt.bf16_compute = Bf16Compute::dot;
    Tensor<float, 4> o({1, T, 2, V}), o_clean({1, T, 2, V});
    seqmix::gated_linear_attention(in, {o.view()}, opt, st::two_thread_pool());
    in.v = v_clean.view();
    seqmix::gated_linear_attention(in, {o_clean.view()}, opt, st::two_thread_pool());
    check(gate == GateKind::channel ? "gla, channel gate" : "gla, no gate", o, o_clean);
  }
  seqmix::LinearAttentionInputs in{q.view(), k.view(), v.view(), {}, {}};
  seqmix::LinearAttentionOptions opt;
  opt.chunk_size = chunk, opt.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
  opt.bf16_compute = Bf16Compute::dot;
  Tensor<float, 4> o({1, T, 2, V}), o_clean({1, T, 2, V});
  seqmix::linear_attention(in, {o.view(), {}, {}}, opt, st::two_thread_pool());
  in.v = v_clean.view();
  seqmix::linear_attention(in, {o_clean.view(), {}, {}}, opt, st::two_thread_pool());
  check("linear_attention", o, o_clean);
}

TEST_CASE("linear attention bf16 dot products: an invalid bf16_compute is refused before any write",
          "[gla][bf16]") {
  const index_t T = 5, K = 8, V = 8;
  auto q = st::random_tensor<4>({1, T, 1, K}, 1);
  auto gs = st::random_tensor<3>({1, T, 1}, 2, -0.1f, 0.f);
  auto beta = st::random_tensor<3>({1, T, 1}, 3, 0.f, 1.f);
  Tensor<float, 4> o({1, T, 1, V});
  o.fill(7.f);
  seqmix::GatedLinearAttentionInputs gin;
  gin.q = q.view(), gin.k = q.view(), gin.v = q.view(), gin.g_scalar = gs.view();
  seqmix::GatedLinearAttentionOptions gopt;
  gopt.gate = seqmix::GateKind::scalar, gopt.bf16_compute = static_cast<Bf16Compute>(5);
  REQUIRE_THROWS_AS(seqmix::gated_linear_attention(gin, {o.view()}, gopt), seqmix::ShapeError);
  seqmix::GatedDeltaRuleInputs din;
  din.q = q.view(), din.k = q.view(), din.v = q.view(), din.beta = beta.view(), din.g_scalar = gs.view();
  seqmix::GatedDeltaRuleOptions dopt;
  dopt.bf16_compute = static_cast<Bf16Compute>(-1);
  REQUIRE_THROWS_AS(seqmix::gated_delta_rule(din, {o.view()}, dopt), seqmix::ShapeError);
  for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
}

namespace {

// The gate of delta_dot_call: none (delta_rule), scalar (Gated DeltaNet) or per channel (KDA,
// whose anchored chunks build their bf16 operands' words directly: wy.hpp's channel_words).
enum class DotGate { none, scalar, channel };

const char* dot_gate_name(DotGate gate) {
  switch (gate) {
    case DotGate::scalar: return "scalar gate";
    case DotGate::channel: return "channel gate";
    case DotGate::none: break;
  }
  return "delta_rule";
}

// One delta rule call with bf16 dot products on fixed inputs, T tokens, K = 32, an initial state,
// into `o` (any view of [1, T, 1, V]). v(0, bad, 0, 3) = inf when bad >= 0.
void delta_dot_call(DotGate gate, index_t T, index_t V, index_t bad, const seqmix::TensorView<float, 4>& o,
                    int threads = 1) {
  const index_t K = 32;
  auto q = st::random_tensor<4>({1, T, 1, K}, 21);
  auto k = st::random_tensor<4>({1, T, 1, K}, 22);
  st::normalize_rows(q);
  st::normalize_rows(k);
  auto v = st::random_tensor<4>({1, T, 1, V}, 23);
  if (bad >= 0) v(0, bad, 0, 3) = std::numeric_limits<float>::infinity();
  auto beta = st::random_tensor<3>({1, T, 1}, 24, 0.f, 1.f);
  auto gs = st::random_tensor<3>({1, T, 1}, 25, -0.1f, 0.f);
  Tensor<float, 4> g({1, T, 1, K});
  st::fill_log_gate(g.view(), 27, -0.1f, 0.f);
  auto s0 = st::random_tensor<4>({1, 1, K, V}, 26, -0.5f, 0.5f);
  if (gate != DotGate::none) {
    seqmix::GatedDeltaRuleInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view();
    if (gate == DotGate::scalar) in.g_scalar = gs.view();
    else in.g = g.view();
    in.initial_state = s0.view();
    seqmix::GatedDeltaRuleOptions opt;
    opt.gate = gate == DotGate::scalar ? seqmix::DeltaGate::scalar : seqmix::DeltaGate::channel;
    opt.algorithm = seqmix::DeltaAlgorithm::chunked;
    opt.bf16_compute = Bf16Compute::dot;
    if (threads > 1) seqmix::gated_delta_rule(in, {o}, opt, st::two_thread_pool());
    else seqmix::gated_delta_rule(in, {o}, opt);
  } else {
    seqmix::DeltaRuleInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.initial_state = s0.view();
    seqmix::DeltaRuleOptions opt;
    opt.algorithm = seqmix::DeltaAlgorithm::chunked, opt.bf16_compute = Bf16Compute::dot;
    if (threads > 1) seqmix::delta_rule(in, {o}, opt, st::two_thread_pool());
    else seqmix::delta_rule(in, {o}, opt);
  }
}

}  // namespace

TEST_CASE("delta rules bf16 dot products: a non-finite U in a later chunk, the state read nonzero",
          "[gated_delta_rule][bf16]") {
  // The bf16 state read writes O = q S into the output rows and O += M U completes it there; a
  // chunk whose U is non-finite brings O back into P for the fp32 code (with its row decays when
  // the gate is scalar). In the first chunk without an initial state q S is zero and that path
  // moves nothing: here the infinity is in the second chunk (default chunk 64) and the state is
  // nonzero, so the rows before it check the copy and the decays. V = 16 has the products written
  // straight into the rows, V = 20 goes through the scratch. Under a channel gate the chunk's
  // state update then also needs the fp32 keys its bf16 words replaced (wy.hpp's
  // channel_keys_anchored).
  const index_t T = 150, bad = 64 + 30;
  for (const DotGate gate : {DotGate::scalar, DotGate::channel, DotGate::none})
    for (const index_t V : {16, 20}) {
      INFO(dot_gate_name(gate) << " V=" << V);
      Tensor<float, 4> o({1, T, 1, V}), o_clean({1, T, 1, V});
      delta_dot_call(gate, T, V, bad, o.view());
      delta_dot_call(gate, T, V, -1, o_clean.view());
      for (index_t t = 0; t < 64; ++t)  // the first chunk: the same operations on the same inputs
        for (index_t c = 0; c < V; ++c) REQUIRE(o(0, t, 0, c) == o_clean(0, t, 0, c));
      double diff = 0.0, norm = 0.0;  // the second chunk's rows before the infinity: fp32 M U there
      for (index_t t = 64; t < bad; ++t)
        for (index_t c = 0; c < V; ++c) {
          REQUIRE(std::isfinite(o(0, t, 0, c)));
          diff += std::pow(double(o(0, t, 0, c)) - o_clean(0, t, 0, c), 2);
          norm += std::pow(double(o_clean(0, t, 0, c)), 2);
        }
      CHECK(norm > 0.0);
      CHECK(std::sqrt(diff) <= kLaBf16Bound * std::sqrt(norm));
    }
}

TEST_CASE("delta rules bf16 dot products: outputs written in place into a strided view",
          "[gated_delta_rule][bf16]") {
  // The bf16 steps write O into the caller's rows (row stride o.stride(0), V floats each): a view
  // of columns [2, 2 + V) of wider rows must get the contiguous call's values exactly and leave
  // the other columns alone. T = 150: two full chunks and a ragged one; one and two threads
  // (two: the value columns split into blocks, narrower views again).
  const index_t T = 150;
  for (const DotGate gate : {DotGate::scalar, DotGate::channel, DotGate::none})
    for (const index_t V : {16, 20, 32})
      for (const int threads : {1, 2}) {
        INFO(dot_gate_name(gate) << " V=" << V << " threads=" << threads);
        Tensor<float, 4> o({1, T, 1, V}), wide({1, T, 1, V + 5});
        wide.fill(7.f);
        delta_dot_call(gate, T, V, -1, o.view(), threads);
        delta_dot_call(gate, T, V, -1, wide.view().slice(3, 2, V), threads);
        for (index_t t = 0; t < T; ++t)
          for (index_t c = 0; c < V + 5; ++c)
            if (c < 2 || c >= 2 + V) REQUIRE(wide(0, t, 0, c) == 7.f);
            else REQUIRE(wide(0, t, 0, c) == o(0, t, 0, c - 2));
      }
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
TEST_CASE("bf16 tiles: transpose_words equals the word-by-word transpose", "[gla][gated_delta_rule][bf16]") {
  // 16 x 16 register blocks over sizes that are not multiples of 16, the zero rows up to
  // rows_pad (inside the last block and past it), and nothing written past rows_pad.
  namespace bt = seqmix::detail::la::bf16_tiles;
  for (const index_t rows : {1, 5, 16, 17, 33, 40})
    for (const index_t cols : {1, 7, 16, 17, 32, 35})
      for (const index_t extra : {0, 3, 16, 21}) {
        INFO("rows=" << rows << " cols=" << cols << " rows_pad=" << rows + extra);
        const index_t lds = cols + 3, rows_pad = rows + extra, ldd = rows_pad + 2;
        std::vector<std::uint32_t> src(static_cast<std::size_t>(rows * lds));
        for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint32_t>(i * 2654435761u);
        std::vector<std::uint32_t> dst(static_cast<std::size_t>(cols * ldd), 0xdeadbeefu);
        bt::transpose_words(src.data(), lds, rows, cols, dst.data(), ldd, rows_pad);
        for (index_t c = 0; c < cols; ++c)
          for (index_t r = 0; r < ldd; ++r) {
            const std::uint32_t want = r < rows ? src[static_cast<std::size_t>(r * lds + c)] : r < rows_pad ? 0u : 0xdeadbeefu;
            REQUIRE(dst[static_cast<std::size_t>(c * ldd + r)] == want);
          }
      }
}

TEST_CASE("bf16 tiles: rows_words_from_columns equals packing the row pairs and transposing them",
          "[gla][bf16]") {
  // The update's K^T words derived from the scores' (no gate) against the path they replace, over
  // token counts around the 32-token step (odd ones: a zero half) and odd channel counts.
  namespace bt = seqmix::detail::la::bf16_tiles;
  for (const index_t n : {1, 5, 16, 31, 33, 40, 64})
    for (const index_t cols : {1, 16, 33, 128}) {
      INFO("n=" << n << " cols=" << cols);
      const index_t kw = bt::words(cols), lpad = bt::pad16(n), lw = bt::words(n), kpad = bt::pad16(cols);
      const Tensor<float, 2> x = st::random_tensor<2>({n, cols}, static_cast<std::uint64_t>(n * 131 + cols));
      std::vector<std::uint32_t> rows(static_cast<std::size_t>(n * kw)), cols_t(static_cast<std::size_t>(kw * lpad));
      bt::pack_rows(x.data(), cols, n, cols, rows.data(), kw);
      bt::transpose_words(rows.data(), kw, n, kw, cols_t.data(), lpad, lpad);
      std::vector<std::uint32_t> got(static_cast<std::size_t>(cols * lw), 0xdeadbeefu);
      bt::rows_words_from_columns(cols_t.data(), lpad, n, cols, got.data(), lw);
      std::vector<std::uint32_t> pairs(static_cast<std::size_t>(lw * kpad)), want(static_cast<std::size_t>(cols * lw));
      bt::pack_row_pairs(x.data(), cols, n, cols, pairs.data(), kpad);
      bt::transpose_words(pairs.data(), kpad, lw, cols, want.data(), lw, lw);
      for (std::size_t i = 0; i < want.size(); ++i) REQUIRE(got[i] == want[i]);
    }
}
#endif
