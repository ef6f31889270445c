// rwkv6: fast forms against the reference over a shape table (gates from near 0 to -20 per
// step), split runs with steps, chunk sizes, bad arguments.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct RwkvCase {
  index_t B, T, H, HV, K, V;
  float gate_lo, gate_hi;
  bool big;
};

std::string describe(const RwkvCase& c, std::uint64_t seed) {
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " H=" << c.H << " HV=" << c.HV << " K=" << c.K << " V=" << c.V << " g in ["
    << c.gate_lo << ", " << c.gate_hi << "] seed=" << seed;
  return s.str();
}

struct RwkvData {
  Tensor<float, 4> r, k, v, g, s0;
  Tensor<float, 2> u;
  RwkvData(const RwkvCase& c, std::uint64_t seed)
      : r(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3)),
        g({c.B, c.T, c.H, c.K}),
        s0(st::random_tensor<4>({c.B, c.HV, c.K, c.V}, seed + 5)),
        u(st::random_tensor<2>({c.H, c.K}, seed + 6)) {
    st::fill_log_gate(g.view(), seed + 4, c.gate_lo, c.gate_hi);
  }
  seqmix::Rwkv6Inputs inputs() const { return {r.view(), k.view(), v.view(), g.view(), u.view(), s0.view()}; }
  // Token t's operands for a step.
  seqmix::Rwkv6StepInputs step_inputs(index_t t) const {
    return {r.view().select(1, t), k.view().select(1, t), v.view().select(1, t), g.view().select(1, t), u.view()};
  }
};

struct RwkvResult {
  Tensor<float, 4> o, state;
  explicit RwkvResult(const RwkvCase& c) : o({c.B, c.T, c.HV, c.V}), state({c.B, c.HV, c.K, c.V}) {}
  seqmix::Rwkv6Outputs outputs() { return {o.view(), state.view()}; }
};

void require_close(const Tensor<float, 4>& out, const Tensor<float, 4>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

std::vector<RwkvCase> rwkv_table() {
  std::vector<RwkvCase> cases = {
      {1, 1, 1, 1, 16, 16, -1.f, 0.f, false},
      {3, 17, 4, 4, 64, 16, -20.f, 0.f, false},
      {1, 64, 1, 1, 64, 64, -0.05f, 0.f, false},
      {3, 65, 4, 4, 16, 80, -3.f, -1.f, false},
      {1, 300, 4, 8, 80, 64, -20.f, -5.f, false},
      {1, 300, 1, 1, 128, 128, -1e-3f, 0.f, false},
      {3, 300, 1, 1, 64, 64, -0.5f, 0.f, false},
      {1, 2048, 1, 1, 64, 64, -0.2f, 0.f, false},
      {2, 131, 1, 2, 33, 32, -0.5f, 0.f, false},  // odd K, ragged T, grouped heads (the tiled steps)
      {2, 131, 1, 2, 64, 1040, -0.5f, 0.f, false},  // state over 2^16 floats: chunked heads one at a time
      {1, 2048, 4, 4, 128, 128, -1.f, 0.f, true},
  };
  if (st::small_test_scale()) cases.pop_back();
  return cases;
}

}  // namespace

TEST_CASE("rwkv6: fast forms match the reference over the shape table", "[rwkv6]") {
  std::uint64_t seed = 500;
  for (const RwkvCase& c : rwkv_table()) {
    seed += 10;
    const RwkvData data(c, seed);
    RwkvResult ref(c);
    seqmix::reference::rwkv6(data.inputs(), ref.outputs());
    for (auto algorithm : {LinearAttentionAlgorithm::automatic, LinearAttentionAlgorithm::chunked,
                           LinearAttentionAlgorithm::recurrent}) {
      seqmix::Rwkv6Options options;
      options.algorithm = algorithm;
      RwkvResult fast(c);
      seqmix::rwkv6(data.inputs(), fast.outputs(), options);
      const std::string what = describe(c, seed) + " algorithm=" + std::to_string(static_cast<int>(algorithm));
      require_close(fast.o, ref.o, 2e-4, what + " o");
      require_close(fast.state, ref.state, 2e-4, what + " final_state");
    }
  }
}

TEST_CASE("rwkv6: chunk sizes and threads agree", "[rwkv6]") {
  seqmix::ThreadPool pool(2);
  for (float lo : {-25.f, -0.1f}) {
    const RwkvCase c{2, 200, 2, 2, 32, 48, lo, 0.f, false};
    const RwkvData data(c, 9);
    RwkvResult ref(c);
    seqmix::reference::rwkv6(data.inputs(), ref.outputs());
    for (index_t chunk : {1, 16, 50, 64, 256}) {
      seqmix::Rwkv6Options options;
      options.chunk_size = chunk;
      options.algorithm = LinearAttentionAlgorithm::chunked;
      RwkvResult fast(c);
      seqmix::rwkv6(data.inputs(), fast.outputs(), options, pool);
      require_close(fast.o, ref.o, 2e-4, describe(c, 9) + " chunk=" + std::to_string(chunk));
      require_close(fast.state, ref.state, 2e-4, describe(c, 9) + " chunk=" + std::to_string(chunk));
    }
  }
}

TEST_CASE("rwkv6: one call equals prefill + prefill + steps", "[rwkv6]") {
  const RwkvCase c{2, 150, 2, 4, 64, 48, -2.f, 0.f, false};
  const RwkvData data(c, 61);
  RwkvResult full(c), split(c);
  seqmix::rwkv6(data.inputs(), full.outputs());
  seqmix::copy(data.s0.cview(), split.state.view());
  auto piece = [&](index_t t0, index_t n) {
    seqmix::Rwkv6Inputs in = data.inputs();
    in.r = in.r.slice(1, t0, n), in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n), in.g = in.g.slice(1, t0, n);
    in.initial_state = split.state.cview();
    seqmix::rwkv6(in, {split.o.view().slice(1, t0, n), split.state.view()});
  };
  piece(0, 100);
  piece(100, 37);
  for (index_t t = 137; t < c.T; ++t) {
    const seqmix::Rwkv6StepInputs in = data.step_inputs(t);
    seqmix::rwkv6_step(in, {split.o.view().select(1, t), split.state.view()});
  }
  require_close(split.o, full.o, 1e-5, describe(c, 61) + " o");
  require_close(split.state, full.state, 1e-5, describe(c, 61) + " state");
}

// The step's row walk from 256 columns (recurrent_rows, diagonal_decay/recurrent.hpp), with the
// exclusive readout and the bonus: rows 4 and 8 KiB apart, scalar tails, a remainder row (K odd),
// B = 2, grouped heads. A prefill of 11 tokens then 6 steps against one reference call.
TEST_CASE("rwkv6: decode steps on wide states match the reference", "[rwkv6]") {
  for (const index_t V : {256, 1023, 1024, 1040, 2048}) {
    const RwkvCase c{2, 17, 1, 2, 9, V, -1.f, 0.f, false};
    const RwkvData data(c, 73);
    RwkvResult ref(c), fast(c);
    seqmix::reference::rwkv6(data.inputs(), ref.outputs());
    constexpr index_t kPrefill = 11;
    seqmix::Rwkv6Inputs head = data.inputs();
    head.r = head.r.slice(1, 0, kPrefill), head.k = head.k.slice(1, 0, kPrefill), head.v = head.v.slice(1, 0, kPrefill);
    head.g = head.g.slice(1, 0, kPrefill);
    seqmix::rwkv6(head, {fast.o.view().slice(1, 0, kPrefill), fast.state.view()});
    for (index_t t = kPrefill; t < c.T; ++t) {
      const seqmix::Rwkv6StepInputs in = data.step_inputs(t);
      seqmix::rwkv6_step(in, {fast.o.view().select(1, t), fast.state.view()});
    }
    require_close(fast.o, ref.o, 2e-4, describe(c, 73) + " o");
    require_close(fast.state, ref.state, 2e-4, describe(c, 73) + " state");
  }
}

// With the exclusive readout and the bonus: one step on a wide state (the row walk) equals a
// one-token recurrent prefill (the column tiles) bit for bit, 4-row groups leaving 1, 2 or 3 rows.
TEST_CASE("rwkv6: a step on a wide state equals a one-token prefill bit for bit", "[rwkv6]") {
  for (const index_t V : {256, 1023, 1040, 2051})
    for (const index_t K : {9, 10, 11}) {
      const RwkvCase c{2, 1, 1, 2, K, V, -1.f, 0.f, false};
      const RwkvData data(c, 83);
      RwkvResult prefill(c), step(c);
      seqmix::Rwkv6Options options;
      options.algorithm = seqmix::LinearAttentionAlgorithm::recurrent;
      seqmix::rwkv6(data.inputs(), prefill.outputs(), options);
      seqmix::copy(data.s0.view(), step.state.view());
      const seqmix::Rwkv6StepInputs in = data.step_inputs(0);
      seqmix::rwkv6_step(in, {step.o.view().select(1, 0), step.state.view()});
      require_close(step.o, prefill.o, 0.0, describe(c, 83) + " o");
      require_close(step.state, prefill.state, 0.0, describe(c, 83) + " state");
    }
}

TEST_CASE("rwkv6: bad arguments are rejected", "[rwkv6]") {
  const RwkvCase c{1, 10, 2, 2, 8, 8, -1.f, 0.f, false};
  RwkvData data(c, 2);
  RwkvResult out(c);
  data.g(0, 4, 1, 2) = 0.5f;
  CHECK_THROWS_WITH(seqmix::rwkv6(data.inputs(), out.outputs()), Catch::Contains("'g' must be a log-space decay <= 0"));
  data.g(0, 4, 1, 2) = -0.5f;
  Tensor<float, 2> u_bad({3, 8});
  seqmix::Rwkv6Inputs in = data.inputs();
  in.u = u_bad.view();
  CHECK_THROWS_WITH(seqmix::rwkv6(in, out.outputs()), Catch::Contains("'u' must have H = 2 or HV = 2 heads"));
}

// The exclusive readout through the recurrent prefill's lazy decay windows (see test_gla.cpp):
// mild gates (long windows), constant -7.5 (windows close early), and spikes of -20 and -inf;
// odd K and V, T not a multiple of the block, B > 1 and an initial state.
TEST_CASE("rwkv6: recurrent lazy decay windows under strong and extreme gates", "[rwkv6]") {
  const RwkvCase c{2, 203, 2, 2, 37, 45, -0.1f, 0.f, false};
  auto pattern = [](int kind, index_t t, index_t col) -> float {
    if (kind == 0) return -0.01f * static_cast<float>((t + col) % 7);
    if (kind == 1) return -7.5f;
    if (kind == 2) return (t % 13 == 5 && col % 3 == 0) ? -20.f : -0.05f;
    return (t % 11 == 6 && col % 5 == 1) ? -INFINITY : -0.02f;
  };
  for (int kind = 0; kind < 4; ++kind) {
    RwkvData data(c, 41 + kind);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t t = 0; t < c.T; ++t)
        for (index_t h = 0; h < c.H; ++h)
          for (index_t col = 0; col < c.K; ++col) data.g(b, t, h, col) = pattern(kind, t + 3 * h + 5 * b, col);
    RwkvResult ref(c), fast(c);
    seqmix::reference::rwkv6(data.inputs(), ref.outputs());
    seqmix::Rwkv6Options options;
    options.algorithm = LinearAttentionAlgorithm::recurrent;
    seqmix::rwkv6(data.inputs(), fast.outputs(), options);
    const std::string what = "gate pattern " + std::to_string(kind);
    require_close(fast.o, ref.o, 2e-4, what + " o");
    require_close(fast.state, ref.state, 2e-4, what + " final_state");
  }
}

// u read through a strided view ([K, H] storage, u[h][i] at i * H + h): the recurrent prefill's
// block prep sums the bonus in its pass over q and k only for a contiguous u and sums it apart
// otherwise; both against the reference, K ragged against the vector width.
TEST_CASE("rwkv6: a strided u gives the contiguous result", "[rwkv6]") {
  const RwkvCase cases[] = {{2, 70, 3, 3, 37, 20, -0.3f, 0.f, false}, {1, 64, 2, 2, 64, 64, -1.f, 0.f, false}};
  for (const RwkvCase& c : cases) {
    const RwkvData data(c, 77);
    Tensor<float, 2> u_by_column({c.K, c.H});
    for (index_t h = 0; h < c.H; ++h)
      for (index_t i = 0; i < c.K; ++i) u_by_column(i, h) = data.u(h, i);
    const seqmix::ConstView<float, 2> strided_u(u_by_column.data(), {c.H, c.K}, {1, c.H});
    seqmix::Rwkv6Inputs strided = data.inputs();
    strided.u = strided_u;
    RwkvResult ref(c), fast(c), fast_strided(c);
    seqmix::reference::rwkv6(data.inputs(), ref.outputs());
    seqmix::Rwkv6Options options;
    options.algorithm = LinearAttentionAlgorithm::recurrent;
    seqmix::rwkv6(data.inputs(), fast.outputs(), options);
    seqmix::rwkv6(strided, fast_strided.outputs(), options);
    const std::string what = describe(c, 77);
    require_close(fast.o, ref.o, 2e-4, what + " o");
    require_close(fast_strided.o, ref.o, 2e-4, what + " o, strided u");
    require_close(fast_strided.state, ref.state, 2e-4, what + " final_state, strided u");
  }
}
