// causal_conv1d: the fast prefill and the decode step against the reference, over a shape table
// that straddles the SIMD width and the 1024-channel / 64-step tiles.
#include <catch2/catch.hpp>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
using seqmix::ConvActivation;
namespace st = seqmix::testing;

constexpr double kTol = 1e-5;

struct ConvCase {
  index_t B, T, D, W;
  bool bias, state;
  ConvActivation activation;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " W=" << W << " bias=" << bias << " state=" << state
      << " silu=" << (activation == ConvActivation::silu) << " seed=" << seed;
    return s.str();
  }
};

// T crosses the 64-step tile, D the SIMD width (4 or 16) and the 1024-channel tile; every optional
// input is on and off across the table.
std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  const index_t Ts[] = {1, 17, 64, 65, 300, 2048};
  const index_t Ds[] = {1, 15, 16, 17, 48, 300, 1100};
  const index_t Ws[] = {1, 2, 3, 4, 5};
  std::uint64_t seed = 1;
  for (index_t T : Ts)
    for (index_t D : Ds) {
      if (T == 2048 && D >= 300 && st::small_test_scale()) continue;
      const index_t W = Ws[seed % 5];
      const index_t B = (seed % 3 == 0) ? 3 : 1;
      const bool bias = seed & 1, state = seed & 2;
      const ConvActivation act = (seed & 4) ? ConvActivation::silu : ConvActivation::none;
      cases.push_back({B, T, D, W, bias, state, act, seed});
      ++seed;
    }
  return cases;
}

struct ConvData {
  Tensor<float, 3> x;
  Tensor<float, 2> weight;
  Tensor<float, 1> bias;
  Tensor<float, 3> state;

  explicit ConvData(const ConvCase& c)
      : x(st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 10 + 1)),
        weight(st::random_tensor<2>({c.D, c.W}, c.seed * 10 + 2)),
        bias(st::random_tensor<1>({c.D}, c.seed * 10 + 3)),
        state(st::random_tensor<3>({c.B, c.W - 1, c.D}, c.seed * 10 + 4)) {}

  seqmix::CausalConv1dInputs inputs(const ConvCase& c) const {
    seqmix::CausalConv1dInputs in;
    in.x = x.view();
    in.weight = weight.view();
    if (c.bias) in.bias = bias.view();
    if (c.state) in.initial_state = state.view();
    return in;
  }
};

void require_close(const char* what, const seqmix::ConstView<float, 3>& out, const seqmix::ConstView<float, 3>& ref,
                   double tol = kTol) {
  st::require_close(what, out, ref, tol);
}

// [B,D] (any strides) as a contiguous [B,1,D]: one token of a sequence.
Tensor<float, 3> as_tokens(const seqmix::ConstView<float, 2>& v) {
  Tensor<float, 3> t({v.size(0), 1, v.size(1)});
  seqmix::copy(v, t.view().select(1, 0));
  return t;
}

const seqmix::ThreadPool& pool() { return st::two_thread_pool(); }

}  // namespace

TEST_CASE("causal_conv1d fast matches the reference over the shape table", "[causal_conv1d]") {
  for (const ConvCase& c : conv_cases()) {
    INFO(c.describe());
    const ConvData data(c);
    const auto in = data.inputs(c);
    const seqmix::CausalConv1dOptions options{c.activation};
    Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.W - 1, c.D});
    seqmix::reference::causal_conv1d(in, {y_ref.view(), s_ref.view()}, options);
    for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool())}) {
      INFO("threads=" << executor->concurrency());
      Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.W - 1, c.D});
      seqmix::causal_conv1d(in, {y.view(), s.view()}, options, *executor);
      require_close("y", y.view(), y_ref.view());
      require_close("final_state", s.view(), s_ref.view(), 0.0);
    }
  }
}

TEST_CASE("causal_conv1d fast accepts strided views", "[causal_conv1d]") {
  // Every view has channel stride 2 (every other element of a wider buffer).
  const ConvCase c{2, 70, 37, 4, true, true, ConvActivation::silu, 77};
  INFO(c.describe());
  const ConvData data(c);
  Tensor<float, 3> xw({c.B, c.T, 2 * c.D}), sw({c.B, c.W - 1, 2 * c.D}), yw({c.B, c.T, 2 * c.D}),
      fw({c.B, c.W - 1, 2 * c.D});
  Tensor<float, 2> ww({c.D, 2 * c.W});
  Tensor<float, 1> bw({2 * c.D});
  auto strided3 = [](Tensor<float, 3>& t, index_t D) {
    return TensorView<float, 3>(t.data(), {t.size(0), t.size(1), D}, {t.size(1) * t.size(2), t.size(2), 2});
  };
  const auto x = strided3(xw, c.D), s = strided3(sw, c.D), y = strided3(yw, c.D), f = strided3(fw, c.D);
  const TensorView<float, 2> w(ww.data(), {c.D, c.W}, {2 * c.W, 2});
  const TensorView<float, 1> bias(bw.data(), {c.D}, {2});
  seqmix::copy(data.x.view(), x);
  seqmix::copy(data.state.view(), s);
  seqmix::copy(data.weight.view(), w);
  seqmix::copy(data.bias.view(), bias);
  const seqmix::CausalConv1dInputs in{x, w, bias, s};
  const seqmix::CausalConv1dOptions options{c.activation};
  Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.W - 1, c.D});
  seqmix::reference::causal_conv1d(data.inputs(c), {y_ref.view(), s_ref.view()}, options);
  seqmix::causal_conv1d(in, {y, f}, options, pool());
  require_close("y", y.as_const(), y_ref.view());
  require_close("final_state", f.as_const(), s_ref.view(), 0.0);

  // The step on strided views too: one token from the final state.
  Tensor<float, 2> y_step_w({c.B, 2 * c.D});
  const TensorView<float, 2> y_step(y_step_w.data(), {c.B, c.D}, {2 * c.D, 2});
  const TensorView<const float, 2> x1(x.data(), {c.B, c.D}, {x.stride(0), 2});  // token 0 again
  seqmix::causal_conv1d_step({x1, w, bias}, {y_step, f}, options);
  Tensor<float, 3> x1c({c.B, 1, c.D}), y1_ref({c.B, 1, c.D}), s1_ref({c.B, c.W - 1, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t d = 0; d < c.D; ++d) x1c(b, 0, d) = x1(b, d);
  seqmix::reference::causal_conv1d({x1c.view(), data.weight.view(), data.bias.view(), s_ref.view()},
                                   {y1_ref.view(), s1_ref.view()}, options);
  require_close("step y", as_tokens(y_step).view(), y1_ref.view());
  require_close("step state", f.as_const(), s1_ref.view(), 0.0);
}

TEST_CASE("causal_conv1d prefill(T1) + prefill(T2) + steps equals one call", "[causal_conv1d]") {
  const ConvCase cases[] = {
      {2, 40, 33, 4, true, true, ConvActivation::silu, 101},
      {1, 9, 16, 5, false, false, ConvActivation::none, 102},
      {3, 70, 1100, 2, true, false, ConvActivation::silu, 103},
      {1, 6, 20, 1, true, true, ConvActivation::none, 104},
  };
  for (const ConvCase& c : cases) {
    // T1 shorter than the state (W-1) exercises the state shift inside a prefill.
    for (index_t T1 : {index_t{1}, c.T / 2}) {
      const index_t steps = 3, T2 = c.T - T1 - steps;
      INFO(c.describe() << " T1=" << T1 << " T2=" << T2 << " steps=" << steps);
      const ConvData data(c);
      const seqmix::CausalConv1dOptions options{c.activation};
      Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.W - 1, c.D});
      seqmix::reference::causal_conv1d(data.inputs(c), {y_ref.view(), s_ref.view()}, options);

      // The state is carried in place: final_state is the same view as initial_state.
      Tensor<float, 3> state({c.B, c.W - 1, c.D}), y({c.B, c.T, c.D});
      if (c.state) seqmix::copy(data.state.view(), state.view());
      auto run_prefill = [&](index_t t0, index_t len) {
        auto in = data.inputs(c);
        in.x = data.x.view().slice(1, t0, len);
        in.initial_state = state.view();
        seqmix::causal_conv1d(in, {y.view().slice(1, t0, len), state.view()}, options, pool());
      };
      run_prefill(0, T1);
      run_prefill(T1, T2);
      for (index_t t = T1 + T2; t < c.T; ++t) {
        seqmix::CausalConv1dStepInputs in{data.x.view().select(1, t), data.weight.view(), {}};
        if (c.bias) in.bias = data.bias.view();
        seqmix::causal_conv1d_step(in, {y.view().select(1, t), state.view()}, options, pool());
      }
      require_close("y", y.view(), y_ref.view());
      require_close("final_state", state.view(), s_ref.view(), 0.0);
    }
  }
}

TEST_CASE("causal_conv1d_step matches a one-token reference call", "[causal_conv1d]") {
  // Large enough rows (B * D * W) to take the threaded path, and small ones that stay serial.
  const ConvCase cases[] = {
      {1, 1, 3328, 4, true, true, ConvActivation::silu, 201},
      {3, 1, 17, 4, false, true, ConvActivation::none, 202},
      {2, 1, 8192, 3, true, true, ConvActivation::none, 203},
      {1, 1, 5, 1, true, true, ConvActivation::silu, 204},
      // The fixed-tap kernels (W 2, 3, 4) with a scalar tail after the vectors of each block.
      {2, 1, 35, 2, true, true, ConvActivation::silu, 205},
      {1, 1, 19, 3, false, true, ConvActivation::silu, 206},
      {3, 1, 6001, 2, true, true, ConvActivation::none, 207},
  };
  for (const ConvCase& c : cases) {
    INFO(c.describe());
    const ConvData data(c);
    const seqmix::CausalConv1dOptions options{c.activation};
    Tensor<float, 3> y_ref({c.B, 1, c.D}), s_ref({c.B, c.W - 1, c.D});
    seqmix::reference::causal_conv1d(data.inputs(c), {y_ref.view(), s_ref.view()}, options);
    Tensor<float, 3> state({c.B, c.W - 1, c.D});
    seqmix::copy(data.state.view(), state.view());
    Tensor<float, 2> y({c.B, c.D});
    seqmix::CausalConv1dStepInputs in{data.x.view().select(1, 0), data.weight.view(), {}};
    if (c.bias) in.bias = data.bias.view();
    seqmix::causal_conv1d_step(in, {y.view(), state.view()}, options, pool());
    require_close("y", as_tokens(y.view()).view(), y_ref.view());
    require_close("state", state.view(), s_ref.view(), 0.0);
  }
}

TEST_CASE("causal_conv1d rejects bad arguments before writing", "[causal_conv1d]") {
  const ConvCase c{2, 8, 12, 4, true, true, ConvActivation::none, 301};
  const ConvData data(c);
  Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.W - 1, c.D});
  y.fill(7.f);
  auto expect_error = [&](const seqmix::CausalConv1dInputs& in, const seqmix::CausalConv1dOutputs& out, const char* argument) {
    st::require_shape_error(argument, [&] { seqmix::causal_conv1d(in, out); });
    st::require_shape_error(argument, [&] { seqmix::reference::causal_conv1d(in, out); });
    for (float v : y) REQUIRE(v == 7.f);  // nothing written before the check failed
  };
  const auto good = data.inputs(c);
  Tensor<float, 2> w_bad({c.D + 1, c.W}), w_empty({c.D, 0});
  Tensor<float, 1> bias_bad({c.D - 1});
  Tensor<float, 3> state_bad({c.B, c.W, c.D}), y_bad({c.B, c.T + 1, c.D});
  auto in = good;
  in.weight = w_bad.view();
  expect_error(in, {y.view(), s.view()}, "weight");
  in = good;
  in.weight = w_empty.view();
  expect_error(in, {y.view(), s.view()}, "weight");
  in = good;
  in.bias = bias_bad.view();
  expect_error(in, {y.view(), s.view()}, "bias");
  in = good;
  in.initial_state = state_bad.view();
  expect_error(in, {y.view(), s.view()}, "initial_state");
  expect_error(good, {y_bad.view(), s.view()}, "y");
  expect_error(good, {y.view(), state_bad.view()}, "final_state");

  // The step: a state with the wrong number of rows, and a missing state.
  Tensor<float, 2> y1({c.B, c.D});
  const seqmix::CausalConv1dStepInputs step_in{data.x.view().select(1, 0), data.weight.view(), data.bias.view()};
  CHECK_THROWS_AS(seqmix::causal_conv1d_step(step_in, {y1.view(), state_bad.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::causal_conv1d_step(step_in, {y1.view(), {}}), seqmix::ShapeError);
}
