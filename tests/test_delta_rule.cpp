// delta_rule (DeltaNet, no decay): the chunked WY form and the recurrent form against the
// reference recurrence over a shape table, chunk sizes, split runs with steps, grouped heads,
// beta at its edges and bad arguments. gated_delta_rule's tests cover the shared machinery with
// decays; these pin down the ungated entry points.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaAlgorithm;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct DrCase {
  index_t B, T, HK, HV, K, V;
  float beta_lo, beta_hi;
  bool big;  // dropped under SEQMIX_TEST_SCALE=small
};

std::string describe(const DrCase& c, std::uint64_t seed) {
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " HK=" << c.HK << " HV=" << c.HV << " K=" << c.K << " V=" << c.V
    << " beta in [" << c.beta_lo << ", " << c.beta_hi << "] seed=" << seed;
  return s.str();
}

struct DrData {
  Tensor<float, 4> q, k, v, s0;
  Tensor<float, 3> beta;
  DrData(const DrCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.HK, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.HK, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3)),
        s0(st::random_tensor<4>({c.B, c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f)),
        beta(st::random_tensor<3>({c.B, c.T, c.HV}, seed + 6, c.beta_lo, c.beta_hi)) {
    st::normalize_rows(q);
    st::normalize_rows(k);
  }
  seqmix::DeltaRuleInputs inputs() const { return {q.view(), k.view(), v.view(), beta.view(), s0.view()}; }
};

struct DrResult {
  Tensor<float, 4> o, state;
  explicit DrResult(const DrCase& c) : o({c.B, c.T, c.HV, c.V}), state({c.B, c.HV, c.K, c.V}) {}
  seqmix::DeltaRuleOutputs outputs() { return {o.view(), state.view()}; }
};

void require_close(const Tensor<float, 4>& out, const Tensor<float, 4>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

// Each T in {1, 17, 64, 65, 300, 2048}, K=V in {16, 64, 80, 128}, B in {1, 3}, grouped heads
// and beta at 0, 1 and in between appear at least once.
std::vector<DrCase> table() {
  std::vector<DrCase> cases = {
      {1, 1, 1, 1, 64, 64, 0.f, 1.f, false},     {3, 17, 1, 2, 16, 16, 0.f, 1.f, false},
      {1, 64, 2, 2, 128, 128, 1.f, 1.f, false},  {3, 65, 2, 4, 80, 80, 0.f, 1.f, false},
      {1, 300, 1, 1, 64, 64, 0.f, 0.f, false},   {1, 300, 1, 3, 16, 80, 0.f, 1.f, false},
      {1, 2048, 1, 1, 80, 80, 0.f, 1.f, false},  {1, 2048, 1, 2, 128, 128, 0.f, 1.f, true},
  };
  if (st::small_test_scale())
    cases.erase(std::remove_if(cases.begin(), cases.end(), [](const DrCase& c) { return c.big; }), cases.end());
  return cases;
}

constexpr double kTol = 2e-4;

}  // namespace

TEST_CASE("delta_rule: fast forms match the reference over the shape table", "[delta_rule]") {
  std::uint64_t seed = 500;
  for (const DrCase& c : table()) {
    seed += 10;
    const DrData data(c, seed);
    DrResult ref(c);
    seqmix::reference::delta_rule(data.inputs(), ref.outputs());
    for (auto algorithm : {DeltaAlgorithm::automatic, DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent}) {
      seqmix::DeltaRuleOptions options;
      options.algorithm = algorithm;
      DrResult fast(c);
      seqmix::delta_rule(data.inputs(), fast.outputs(), options);
      const std::string what = describe(c, seed) + " algorithm=" + std::to_string(static_cast<int>(algorithm));
      require_close(fast.o, ref.o, kTol, what + " o");
      require_close(fast.state, ref.state, kTol, what + " final_state");
    }
  }
}

TEST_CASE("delta_rule: chunk sizes 16, 32, 64 agree with the reference, the default is 32 bit for bit",
          "[delta_rule]") {
  const DrCase c{2, 257, 1, 2, 32, 48, 0.f, 1.f, false};
  const DrData data(c, 9);
  DrResult ref(c);
  seqmix::reference::delta_rule(data.inputs(), ref.outputs());
  seqmix::ThreadPool pool(2);
  for (index_t chunk : {16, 32, 64}) {
    seqmix::DeltaRuleOptions options;
    options.chunk_size = chunk;
    options.algorithm = DeltaAlgorithm::chunked;
    DrResult fast(c);
    seqmix::delta_rule(data.inputs(), fast.outputs(), options, pool);
    require_close(fast.o, ref.o, kTol, describe(c, 9) + " chunk=" + std::to_string(chunk));
    require_close(fast.state, ref.state, kTol, describe(c, 9) + " chunk=" + std::to_string(chunk));
    if (chunk != 32) continue;
    // The default chunk_size runs exactly this call (the same bytes, not only equal values).
    seqmix::DeltaRuleOptions by_default;
    by_default.algorithm = DeltaAlgorithm::chunked;
    DrResult same(c);
    seqmix::delta_rule(data.inputs(), same.outputs(), by_default, pool);
    const auto bytes = [](const Tensor<float, 4>& x) { return static_cast<std::size_t>(x.numel()) * sizeof(float); };
    CHECK(std::memcmp(same.o.data(), fast.o.data(), bytes(fast.o)) == 0);
    CHECK(std::memcmp(same.state.data(), fast.state.data(), bytes(fast.state)) == 0);
  }
}

TEST_CASE("delta_rule: one call equals prefill + prefill + steps", "[delta_rule]") {
  const DrCase c{2, 150, 2, 4, 32, 40, 0.f, 1.f, false};
  const DrData data(c, 21);
  DrResult full(c);
  seqmix::delta_rule(data.inputs(), full.outputs());
  Tensor<float, 4> state({c.B, c.HV, c.K, c.V});
  seqmix::copy(data.s0.cview(), state.view());
  Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
  auto piece = [&](index_t t0, index_t n) {
    seqmix::DeltaRuleInputs in = data.inputs();
    in.q = in.q.slice(1, t0, n), in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n);
    in.beta = in.beta.slice(1, t0, n);
    in.initial_state = state.cview();
    seqmix::delta_rule(in, {o.view().slice(1, t0, n), state.view()});
  };
  piece(0, 100);
  piece(100, 37);
  for (index_t t = 137; t < c.T; ++t) {
    seqmix::DeltaRuleStepInputs in{data.q.view().select(1, t), data.k.view().select(1, t), data.v.view().select(1, t),
                                   data.beta.view().select(1, t)};
    seqmix::delta_rule_step(in, {o.view().select(1, t), state.view()});
  }
  require_close(o, full.o, 1e-4, describe(c, 21) + " o");
  require_close(state, full.state, 1e-4, describe(c, 21) + " state");
}

TEST_CASE("delta_rule: bad arguments are rejected before any output is written", "[delta_rule]") {
  const DrCase c{1, 8, 2, 4, 8, 8, 0.f, 1.f, false};
  const DrData data(c, 3);
  DrResult out(c);
  out.o.fill(7.f);
  auto expect_error = [&](const seqmix::DeltaRuleInputs& in, const seqmix::DeltaRuleOutputs& outputs,
                          const std::string& argument) {
    try {
      seqmix::delta_rule(in, outputs);
      FAIL("no error for a bad '" << argument << "'");
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(e.argument() == argument);
    }
    CHECK(std::all_of(out.o.begin(), out.o.end(), [](float x) { return x == 7.f; }));
  };
  seqmix::DeltaRuleInputs in = data.inputs();
  Tensor<float, 3> beta({c.B, c.T + 1, c.HV});
  in.beta = beta.view();
  expect_error(in, out.outputs(), "beta");
  in = data.inputs();
  Tensor<float, 4> s0({c.B, c.HK, c.K, c.V});  // initial state with HK instead of HV heads
  in.initial_state = s0.view();
  expect_error(in, out.outputs(), "initial_state");
  Tensor<float, 4> small_state({c.B, c.HV, c.K, c.V - 1});
  expect_error(data.inputs(), {out.o.view(), small_state.view()}, "final_state");
  seqmix::DeltaRuleStepOutputs step_out{out.o.view().select(1, 0), small_state.view()};
  CHECK_THROWS_AS(seqmix::delta_rule_step({data.q.view().select(1, 0), data.k.view().select(1, 0),
                                           data.v.view().select(1, 0), data.beta.view().select(1, 0)},
                                          step_out),
                  seqmix::ShapeError);
}
