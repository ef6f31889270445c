// rwkv7: the recurrent fast form and the decode step against the reference recurrence over a
// shape table, split runs, strided views, a long run and bad arguments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct R7Case {
  index_t B, T, H, K, V;
  float gate_lo;
  bool big;
};

std::string describe(const R7Case& c, std::uint64_t seed) {
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " H=" << c.H << " K=" << c.K << " V=" << c.V << " g in [" << c.gate_lo
    << ", 0] seed=" << seed;
  return s.str();
}

// RWKV-7's own parameterization keeps the transition contractive: a = -kappa (unit norm),
// b = kappa * lr with lr in (0, 1), so diag(w) + b a^T has norm <= 1.
struct R7Data {
  Tensor<float, 4> r, k, v, a, b, g, s0;
  R7Data(const R7Case& c, std::uint64_t seed)
      : r(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)), k(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.H, c.V}, seed + 3)), a({c.B, c.T, c.H, c.K}), b({c.B, c.T, c.H, c.K}),
        g({c.B, c.T, c.H, c.K}), s0(st::random_tensor<4>({c.B, c.H, c.K, c.V}, seed + 5, -0.5f, 0.5f)) {
    const Tensor<float, 4> kappa = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 6);
    const Tensor<float, 3> lr = st::random_tensor<3>({c.B, c.T, c.H}, seed + 7, 0.f, 1.f);
    for (index_t row = 0; row < kappa.numel() / c.K; ++row) {
      const float* x = kappa.data() + row * c.K;
      float sum = 0.f;
      for (index_t i = 0; i < c.K; ++i) sum += x[i] * x[i];
      const float inv = 1.f / std::sqrt(sum + 1e-6f);
      for (index_t i = 0; i < c.K; ++i) {
        a.data()[row * c.K + i] = -x[i] * inv;
        b.data()[row * c.K + i] = x[i] * inv * lr.data()[row];
      }
    }
    st::fill_log_gate(g.view(), seed + 4, c.gate_lo, 0.f);
  }
  seqmix::Rwkv7Inputs inputs() const { return {r.view(), k.view(), v.view(), a.view(), b.view(), g.view(), s0.view()}; }
};

void require_close(const Tensor<float, 4>& out, const Tensor<float, 4>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

constexpr double kTol = 2e-4;

}  // namespace

TEST_CASE("rwkv7: the fast form matches the reference over the shape table", "[rwkv7]") {
  std::vector<R7Case> cases = {{1, 1, 2, 64, 64, -1.f, false},   {3, 17, 2, 16, 16, -0.1f, false},
                               {1, 64, 4, 80, 80, -5.f, false},  {3, 65, 1, 128, 128, -1.f, false},
                               {1, 300, 2, 64, 16, -30.f, false}, {1, 2048, 1, 64, 64, -0.5f, false},
                               {1, 2048, 2, 128, 128, -0.5f, true}};
  if (st::small_test_scale()) cases.pop_back();
  seqmix::ThreadPool pool(2);
  std::uint64_t seed = 700;
  for (const R7Case& c : cases) {
    seed += 10;
    const R7Data data(c, seed);
    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), s_ref({c.B, c.H, c.K, c.V});
    seqmix::reference::rwkv7(data.inputs(), {o_ref.view(), s_ref.view()});
    Tensor<float, 4> o({c.B, c.T, c.H, c.V}), s({c.B, c.H, c.K, c.V});
    seqmix::rwkv7(data.inputs(), {o.view(), s.view()}, pool);
    require_close(o, o_ref, kTol, describe(c, seed) + " o");
    require_close(s, s_ref, kTol, describe(c, seed) + " final_state");
  }
}

// The prefill against the reference over shapes relative to the kernel's column tiles: T = 2, 3
// and odd lengths, value columns past the last whole vector (the scalar tail), K != V, one item
// split into value blocks on two threads, reverse, with and without token_states.
TEST_CASE("rwkv7: the prefill matches the reference, tails, blocks, reverse, token states", "[rwkv7]") {
  const std::vector<R7Case> cases = {{1, 2, 1, 64, 64, -1.f, false},  {2, 3, 2, 64, 40, -2.f, false},
                                     {1, 33, 1, 64, 72, -0.5f, false}, {1, 64, 2, 32, 96, -1.f, false},
                                     {1, 17, 1, 96, 48, -5.f, false},  {1, 9, 1, 16, 5, -1.f, false}};
  seqmix::ThreadPool pool(2);
  std::uint64_t seed = 900;
  for (const R7Case& c : cases)
    for (int threads = 1; threads <= 2; ++threads)
      for (int reverse = 0; reverse < 2; ++reverse)
        for (int keep_states = 0; keep_states < 2; ++keep_states) {
          seed += 10;
          const R7Data data(c, seed);
          const std::string what = describe(c, seed) + " threads=" + std::to_string(threads) +
                                   " reverse=" + std::to_string(reverse) + " token_states=" + std::to_string(keep_states);
          seqmix::Rwkv7Options options;
          options.reverse = reverse != 0;
          Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), s_ref({c.B, c.H, c.K, c.V});
          Tensor<float, 4> o({c.B, c.T, c.H, c.V}), s({c.B, c.H, c.K, c.V});
          Tensor<float, 5> ts_ref, ts;
          if (keep_states) ts_ref = Tensor<float, 5>({c.B, c.T, c.H, c.K, c.V}), ts = Tensor<float, 5>(ts_ref.shape());
          seqmix::reference::rwkv7(data.inputs(), {o_ref.view(), s_ref.view(), ts_ref.view()}, options);
          const seqmix::Executor& executor = threads == 2 ? static_cast<const seqmix::Executor&>(pool)
                                                          : seqmix::serial_executor();
          seqmix::rwkv7(data.inputs(), {o.view(), s.view(), ts.view()}, options, executor);
          require_close(o, o_ref, kTol, what + " o");
          require_close(s, s_ref, kTol, what + " final_state");
          if (keep_states) st::require_close((what + " token_states").c_str(), ts.view(), ts_ref.view(), kTol);
        }
}

TEST_CASE("rwkv7: one call equals prefill + prefill + steps, strided inputs included", "[rwkv7]") {
  const R7Case c{2, 120, 2, 32, 24, -1.f, false};
  const R7Data data(c, 41);
  Tensor<float, 4> o_full({c.B, c.T, c.H, c.V}), s_full({c.B, c.H, c.K, c.V});
  seqmix::reference::rwkv7(data.inputs(), {o_full.view(), s_full.view()});
  // r with a strided last dimension.
  Tensor<float, 4> wide({c.B, c.T, c.H, 2 * c.K});
  seqmix::TensorView<float, 4> r_strided(wide.data(), {c.B, c.T, c.H, c.K}, {c.T * c.H * 2 * c.K, c.H * 2 * c.K, 2 * c.K, 2});
  seqmix::copy(data.r.cview(), r_strided);
  Tensor<float, 4> state({c.B, c.H, c.K, c.V}), o({c.B, c.T, c.H, c.V});
  seqmix::copy(data.s0.cview(), state.view());
  auto piece = [&](index_t t0, index_t n) {
    seqmix::Rwkv7Inputs in = data.inputs();
    in.r = seqmix::ConstView<float, 4>(r_strided).slice(1, t0, n);
    in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n), in.a = in.a.slice(1, t0, n);
    in.b = in.b.slice(1, t0, n), in.g = in.g.slice(1, t0, n);
    in.initial_state = state.cview();
    seqmix::rwkv7(in, {o.view().slice(1, t0, n), state.view()});
  };
  piece(0, 70);
  piece(70, 33);
  for (index_t t = 103; t < c.T; ++t) {
    auto row = [t](const Tensor<float, 4>& x) { return x.view().select(1, t); };
    seqmix::Rwkv7StepInputs in{seqmix::ConstView<float, 4>(r_strided).select(1, t), row(data.k), row(data.v),
                               row(data.a), row(data.b), row(data.g)};
    seqmix::rwkv7_step(in, {o.view().select(1, t), state.view()});
  }
  require_close(o, o_full, kTol, describe(c, 41) + " o");
  require_close(state, s_full, kTol, describe(c, 41) + " state");
}

TEST_CASE("rwkv7: a 65536-token run stays finite and matches the recurrence", "[rwkv7]") {
  if (st::small_test_scale()) return;
  const R7Case c{1, 65536, 1, 16, 16, -0.05f, false};
  const R7Data data(c, 91);
  Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), s_ref({c.B, c.H, c.K, c.V}), o({c.B, c.T, c.H, c.V}),
      s({c.B, c.H, c.K, c.V});
  seqmix::reference::rwkv7(data.inputs(), {o_ref.view(), s_ref.view()});
  seqmix::rwkv7(data.inputs(), {o.view(), s.view()});
  REQUIRE(std::all_of(o.begin(), o.end(), [](float x) { return std::isfinite(x); }));
  require_close(o, o_ref, kTol, describe(c, 91) + " o");
  require_close(s, s_ref, kTol, describe(c, 91) + " state");
}

TEST_CASE("rwkv7: bad arguments are rejected before any output is written", "[rwkv7]") {
  const R7Case c{1, 6, 2, 8, 8, -1.f, false};
  R7Data data(c, 5);
  Tensor<float, 4> o({c.B, c.T, c.H, c.V}), s({c.B, c.H, c.K, c.V});
  o.fill(3.f);
  auto expect_error = [&](const seqmix::Rwkv7Inputs& in, const std::string& argument) {
    try {
      seqmix::rwkv7(in, {o.view(), s.view()});
      FAIL("no error for a bad '" << argument << "'");
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(e.argument() == argument);
    }
    CHECK(std::all_of(o.begin(), o.end(), [](float x) { return x == 3.f; }));
  };
  seqmix::Rwkv7Inputs in = data.inputs();
  Tensor<float, 4> a({c.B, c.T, c.H, c.K + 1});
  in.a = a.view();
  expect_error(in, "a");
  data.g(0, 2, 1, 3) = 0.5f;  // positive log-decay
  expect_error(data.inputs(), "g");
}
