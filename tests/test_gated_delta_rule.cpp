// gated_delta_rule (scalar gate and KDA's per-channel gate): every fast form against the
// reference recurrence over a shape table, plus chunk-size, split-run, strided-view,
// long-sequence, normalization and bad-argument properties.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaAlgorithm;
using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct GdrCase {
  index_t B, T, HK, HV, K, V;
  DeltaGate gate;
  float gate_lo, gate_hi;  // log-gates drawn from [gate_lo, gate_hi]
  float beta_lo, beta_hi;  // beta drawn from [beta_lo, beta_hi]
  bool big;                // dropped under SEQMIX_TEST_SCALE=small
};

std::string describe(const GdrCase& c, std::uint64_t seed) {
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " HK=" << c.HK << " HV=" << c.HV << " K=" << c.K << " V=" << c.V
    << " gate=" << (c.gate == DeltaGate::scalar ? "scalar" : "channel") << " g in [" << c.gate_lo << ", "
    << c.gate_hi << "] beta in [" << c.beta_lo << ", " << c.beta_hi << "] seed=" << seed;
  return s.str();
}

struct GdrData {
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> beta, gs;
  GdrData(const GdrCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.HK, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.HK, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3)),
        s0(st::random_tensor<4>({c.B, c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f)),
        beta(st::random_tensor<3>({c.B, c.T, c.HV}, seed + 6, c.beta_lo, c.beta_hi)) {
    st::normalize_rows(q);
    st::normalize_rows(k);
    if (c.gate == DeltaGate::channel) {
      g = Tensor<float, 4>({c.B, c.T, c.HV, c.K});
      st::fill_log_gate(g.view(), seed + 4, c.gate_lo, c.gate_hi);
    } else {
      gs = Tensor<float, 3>({c.B, c.T, c.HV});
      st::fill_log_gate(gs.view(), seed + 4, c.gate_lo, c.gate_hi);
    }
  }
  seqmix::GatedDeltaRuleInputs inputs() const {
    seqmix::GatedDeltaRuleInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.initial_state = s0.view();
    if (g.numel()) in.g = g.view();
    if (gs.numel()) in.g_scalar = gs.view();
    return in;
  }
};

struct GdrResult {
  Tensor<float, 4> o, state;
  explicit GdrResult(const GdrCase& c) : o({c.B, c.T, c.HV, c.V}), state({c.B, c.HV, c.K, c.V}) {}
  seqmix::GatedDeltaRuleOutputs outputs() { return {o.view(), state.view()}; }
};

void require_close(const Tensor<float, 4>& out, const Tensor<float, 4>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

// Each listed T, K=V, B, grouping, gate strength and beta range appears at least once, in
// ragged combinations around the default chunk size 32 and the former 64 (smaller, equal, one
// over, several, long).
std::vector<GdrCase> table() {
  std::vector<GdrCase> cases = {
      {1, 1, 1, 1, 16, 16, DeltaGate::scalar, -1.f, 0.f, 0.f, 1.f, false},
      {3, 17, 2, 4, 64, 64, DeltaGate::scalar, -1e-3f, 0.f, 0.f, 1.f, false},
      {2, 32, 1, 2, 48, 48, DeltaGate::scalar, -0.5f, 0.f, 0.f, 1.f, false},
      {1, 33, 2, 2, 64, 64, DeltaGate::channel, -0.5f, 0.f, 0.f, 1.f, false},
      {1, 64, 1, 1, 80, 80, DeltaGate::scalar, -20.f, -5.f, 0.f, 1.f, false},
      {3, 65, 1, 3, 16, 16, DeltaGate::scalar, -0.5f, 0.f, 1.f, 1.f, false},
      {1, 300, 2, 2, 128, 128, DeltaGate::scalar, -0.1f, 0.f, 0.f, 0.f, false},
      {1, 300, 1, 2, 64, 80, DeltaGate::scalar, -30.f, 0.f, 0.f, 1.f, false},
      {1, 2048, 1, 1, 64, 64, DeltaGate::scalar, -0.05f, 0.f, 0.f, 1.f, false},
      {1, 2048, 1, 2, 128, 128, DeltaGate::scalar, -0.2f, 0.f, 0.f, 1.f, true},
      {1, 1, 2, 2, 64, 64, DeltaGate::channel, -1.f, 0.f, 0.f, 1.f, false},
      {3, 17, 1, 2, 16, 16, DeltaGate::channel, -20.f, 0.f, 0.f, 1.f, false},
      {1, 64, 2, 2, 128, 128, DeltaGate::channel, -0.05f, 0.f, 0.f, 1.f, false},
      {1, 65, 1, 1, 80, 80, DeltaGate::channel, -3.f, -0.5f, 1.f, 1.f, false},
      {3, 300, 1, 1, 64, 64, DeltaGate::channel, -1e-3f, 0.f, 0.f, 1.f, false},
      {1, 300, 2, 4, 16, 16, DeltaGate::channel, -8.f, 0.f, 0.f, 1.f, false},
      // K not a multiple of any vector width (the per-channel operands' scalar tails), decays
      // over a 64-token chunk just under and over kAnchorRange (factors up to exp(+-30)).
      {2, 130, 1, 2, 20, 24, DeltaGate::channel, -1.6f, 0.f, 0.f, 1.f, false},
  };
  if (st::small_test_scale())
    cases.erase(std::remove_if(cases.begin(), cases.end(), [](const GdrCase& c) { return c.big; }), cases.end());
  return cases;
}

// fp32 fast forms against the double reference, bound relative to max(1, max|ref|).
constexpr double kTol = 2e-4;

// The same bytes (not only equal values: -0 against +0 or a NaN's payload would differ).
bool same_bits(const Tensor<float, 4>& a, const Tensor<float, 4>& b) {
  return a.numel() == b.numel() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("gated_delta_rule: fast forms match the reference over the shape table", "[gated_delta_rule]") {
  std::uint64_t seed = 300;
  for (const GdrCase& c : table()) {
    seed += 10;
    const GdrData data(c, seed);
    seqmix::GatedDeltaRuleOptions options;
    options.gate = c.gate;
    GdrResult ref(c);
    seqmix::reference::gated_delta_rule(data.inputs(), ref.outputs(), options);
    for (auto algorithm : {DeltaAlgorithm::automatic, DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent}) {
      options.algorithm = algorithm;
      GdrResult fast(c);
      seqmix::gated_delta_rule(data.inputs(), fast.outputs(), options);
      const std::string what = describe(c, seed) + " algorithm=" + std::to_string(static_cast<int>(algorithm));
      require_close(fast.o, ref.o, kTol, what + " o");
      require_close(fast.state, ref.state, kTol, what + " final_state");
    }
  }
}

TEST_CASE("gated_delta_rule: chunk sizes 16, 32, 64 and thread counts agree", "[gated_delta_rule]") {
  seqmix::ThreadPool pool(2);
  for (DeltaGate gate : {DeltaGate::scalar, DeltaGate::channel}) {
    for (float lo : {-40.f, -0.02f}) {
      const GdrCase c{2, 200, 1, 2, 64, 48, gate, lo, 0.f, 0.f, 1.f, false};
      const GdrData data(c, 7);
      seqmix::GatedDeltaRuleOptions options;
      options.gate = gate;
      GdrResult ref(c);
      seqmix::reference::gated_delta_rule(data.inputs(), ref.outputs(), options);
      for (index_t chunk : {16, 32, 64, 1, 37}) {
        options.chunk_size = chunk;
        options.algorithm = DeltaAlgorithm::chunked;
        GdrResult fast(c);
        seqmix::gated_delta_rule(data.inputs(), fast.outputs(), options, pool);
        const std::string what = describe(c, 7) + " chunk=" + std::to_string(chunk);
        require_close(fast.o, ref.o, kTol, what + " o");
        require_close(fast.state, ref.state, kTol, what + " final_state");
      }
    }
  }
}

TEST_CASE("gated_delta_rule: the default chunk is 32 bit for bit and 64 still matches the reference",
          "[gated_delta_rule]") {
  // The default chunk_size (32, GatedDeltaRuleOptions) runs exactly the explicit chunk_size = 32
  // call, for every path the default drives: scalar and channel gates, fp32 and bf16 dot
  // products, one and two threads, automatic and chunked; chunk_size = 64 (the default until
  // 2026-12-06) still matches the reference with fp32 products (bf16 dot products at chunks 16,
  // 32, 40 and 64: test_linear_attention_bf16.cpp). T = 150: a multiple of neither 32 nor 64.
  seqmix::ThreadPool pool(2);
  CHECK(seqmix::GatedDeltaRuleOptions{}.chunk_size == 32);
  for (DeltaGate gate : {DeltaGate::scalar, DeltaGate::channel})
    for (auto compute : {seqmix::Bf16Compute::fp32, seqmix::Bf16Compute::dot})
      for (auto algorithm : {DeltaAlgorithm::automatic, DeltaAlgorithm::chunked}) {
        const GdrCase c{2, 150, 1, 2, 64, 40, gate, -0.3f, 0.f, 0.f, 1.f, false};
        const GdrData data(c, 11);
        seqmix::GatedDeltaRuleOptions options;
        options.gate = gate, options.bf16_compute = compute, options.algorithm = algorithm;
        const std::string what = describe(c, 11) + " bf16_compute=" + std::to_string(static_cast<int>(compute)) +
                                 " algorithm=" + std::to_string(static_cast<int>(algorithm));
        INFO(what);
        for (const seqmix::Executor* ex : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
          GdrResult by_default(c), explicit32(c);
          seqmix::gated_delta_rule(data.inputs(), by_default.outputs(), options, *ex);
          seqmix::GatedDeltaRuleOptions chunk32 = options;
          chunk32.chunk_size = 32;
          seqmix::gated_delta_rule(data.inputs(), explicit32.outputs(), chunk32, *ex);
          CHECK(same_bits(by_default.o, explicit32.o));
          CHECK(same_bits(by_default.state, explicit32.state));
        }
        if (compute == seqmix::Bf16Compute::dot) continue;
        GdrResult ref(c), chunk64(c);
        seqmix::reference::gated_delta_rule(data.inputs(), ref.outputs(), options);
        seqmix::GatedDeltaRuleOptions with64 = options;
        with64.chunk_size = 64;
        seqmix::gated_delta_rule(data.inputs(), chunk64.outputs(), with64, pool);
        require_close(chunk64.o, ref.o, kTol, what + " chunk=64 o");
        require_close(chunk64.state, ref.state, kTol, what + " chunk=64 final_state");
      }
}

TEST_CASE("gated_delta_rule: one call equals prefill + prefill + steps", "[gated_delta_rule]") {
  for (DeltaGate gate : {DeltaGate::scalar, DeltaGate::channel}) {
    const GdrCase c{2, 150, 1, 2, 64, 32, gate, -2.f, 0.f, 0.f, 1.f, false};
    const GdrData data(c, 31);
    seqmix::GatedDeltaRuleOptions options;
    options.gate = gate;
    GdrResult full(c);
    seqmix::gated_delta_rule(data.inputs(), full.outputs(), options);

    // Pieces [0,100) and [100,137) (the automatic choice: chunked for either gate on 16-lane
    // vectors, recurrent on 4), then 13 steps, the state carried in place.
    Tensor<float, 4> state({c.B, c.HV, c.K, c.V});
    seqmix::copy(data.s0.cview(), state.view());
    Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
    auto piece = [&](index_t t0, index_t n) {
      seqmix::GatedDeltaRuleInputs in = data.inputs();
      in.q = in.q.slice(1, t0, n), in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n);
      in.beta = in.beta.slice(1, t0, n);
      if (in.g.has_value()) in.g = in.g.slice(1, t0, n);
      if (in.g_scalar.has_value()) in.g_scalar = in.g_scalar.slice(1, t0, n);
      in.initial_state = state.cview();
      seqmix::gated_delta_rule(in, {o.view().slice(1, t0, n), state.view()}, options);
    };
    piece(0, 100);
    piece(100, 37);
    for (index_t t = 137; t < c.T; ++t) {
      seqmix::GatedDeltaRuleStepInputs in;
      in.q = data.q.view().select(1, t), in.k = data.k.view().select(1, t), in.v = data.v.view().select(1, t);
      in.beta = data.beta.view().select(1, t);
      if (gate == DeltaGate::channel) in.g = data.g.view().select(1, t);
      if (gate == DeltaGate::scalar) in.g_scalar = data.gs.view().select(1, t);
      seqmix::gated_delta_rule_step(in, {o.view().select(1, t), state.view()}, options);
    }
    const std::string what = describe(c, 31);
    require_close(o, full.o, 1e-4, what + " o");
    require_close(state, full.state, 1e-4, what + " state");
  }
}

TEST_CASE("gated_delta_rule: in-kernel L2 normalization and strided views", "[gated_delta_rule]") {
  const GdrCase c{2, 90, 2, 2, 24, 20, DeltaGate::scalar, -1.f, 0.f, 0.f, 1.f, false};
  GdrData data(c, 55);
  // Raw (unnormalized) q and k, normalized by the kernel.
  data.q = st::random_tensor<4>({c.B, c.T, c.HK, c.K}, 56, -2.f, 2.f);
  data.k = st::random_tensor<4>({c.B, c.T, c.HK, c.K}, 57, -2.f, 2.f);
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  GdrResult ref(c);
  seqmix::reference::gated_delta_rule(data.inputs(), ref.outputs(), options);
  // q with a strided last dimension; o into a padded buffer.
  Tensor<float, 4> wide({c.B, c.T, c.HK, 2 * c.K});
  seqmix::TensorView<float, 4> q_strided(wide.data(), {c.B, c.T, c.HK, c.K},
                                         {c.T * c.HK * 2 * c.K, c.HK * 2 * c.K, 2 * c.K, 2});
  seqmix::copy(data.q.cview(), q_strided);
  Tensor<float, 4> o_wide({c.B, c.T, c.HV, c.V + 3});
  seqmix::TensorView<float, 4> o_view = o_wide.view().slice(3, 0, c.V);
  for (auto algorithm : {DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent}) {
    options.algorithm = algorithm;
    options.chunk_size = 32;
    seqmix::GatedDeltaRuleInputs in = data.inputs();
    in.q = q_strided;
    GdrResult fast(c);
    seqmix::gated_delta_rule(in, {o_view, fast.state.view()}, options);
    seqmix::copy(seqmix::ConstView<float, 4>(o_view), fast.o.view());
    const std::string what = describe(c, 55) + " l2 strided algorithm=" + std::to_string(static_cast<int>(algorithm));
    require_close(fast.o, ref.o, kTol, what + " o");
    require_close(fast.state, ref.state, kTol, what + " state");
  }
}

TEST_CASE("gated_delta_rule: a 65536-token run stays finite and matches the recurrence", "[gated_delta_rule]") {
  if (st::small_test_scale()) return;
  for (float lo : {-1e-3f, -30.f}) {
    const GdrCase c{1, 65536, 1, 1, 16, 16, DeltaGate::scalar, lo, 0.f, 0.f, 1.f, false};
    const GdrData data(c, 77);
    seqmix::GatedDeltaRuleOptions options;
    GdrResult ref(c);
    seqmix::reference::gated_delta_rule(data.inputs(), ref.outputs(), options);
    for (auto algorithm : {DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent}) {
      options.algorithm = algorithm;
      GdrResult fast(c);
      seqmix::gated_delta_rule(data.inputs(), fast.outputs(), options);
      const bool finite = std::all_of(fast.o.begin(), fast.o.end(), [](float x) { return std::isfinite(x); });
      INFO(describe(c, 77));
      REQUIRE(finite);
      require_close(fast.o, ref.o, kTol, describe(c, 77) + " o");
      require_close(fast.state, ref.state, kTol, describe(c, 77) + " state");
    }
  }
}

TEST_CASE("gated_delta_rule: bad arguments are rejected before any output is written", "[gated_delta_rule]") {
  const GdrCase c{2, 10, 2, 4, 8, 8, DeltaGate::scalar, -1.f, 0.f, 0.f, 1.f, false};
  GdrData data(c, 3);
  GdrResult out(c);
  out.o.fill(42.f);
  auto expect_error = [&](const seqmix::GatedDeltaRuleInputs& in, const seqmix::GatedDeltaRuleOptions& options,
                          const std::string& argument) {
    try {
      seqmix::gated_delta_rule(in, out.outputs(), options);
      FAIL("no error for a bad '" << argument << "'");
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(e.argument() == argument);
    }
    CHECK(std::all_of(out.o.begin(), out.o.end(), [](float x) { return x == 42.f; }));
  };
  seqmix::GatedDeltaRuleOptions options;
  {
    seqmix::GatedDeltaRuleInputs in = data.inputs();
    Tensor<float, 4> v3({c.B, c.T, 3, c.V});  // 3 value heads: not a multiple of HK = 2
    in.v = v3.view();
    expect_error(in, options, "v");
  }
  {
    seqmix::GatedDeltaRuleInputs in = data.inputs();
    Tensor<float, 3> beta({c.B, c.T, c.HK});  // beta with HK heads instead of HV
    in.beta = beta.view();
    expect_error(in, options, "beta");
  }
  {
    data.gs(1, 3, 2) = 0.25f;  // a positive log-gate
    expect_error(data.inputs(), options, "g_scalar");
    data.gs(1, 3, 2) = -0.25f;
  }
  {
    seqmix::GatedDeltaRuleOptions channel;
    channel.gate = DeltaGate::channel;  // the channel gate g is missing
    expect_error(data.inputs(), channel, "g");
  }
  {
    seqmix::GatedDeltaRuleInputs in = data.inputs();
    Tensor<float, 4> k({c.B, c.T, c.HK, c.K + 1});
    in.k = k.view();
    expect_error(in, options, "k");
  }
}
