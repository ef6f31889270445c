// causal_conv1d with options.dilation and options.lookahead (issue 16 item 1): the reference
// against a double loop of the window formula, the fast form and the step against the reference,
// packed batches, slices, streams, reverse, and the refusals.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/chunked/streaming.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/slice.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConvActivation;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct DilCase {
  index_t B, T, D, W, dilation, lookahead;
  bool bias, state;
  ConvActivation activation;
  std::uint64_t seed;

  index_t S() const { return (W - 1) * dilation; }
  seqmix::CausalConv1dOptions options() const {
    seqmix::CausalConv1dOptions o;
    o.activation = activation, o.dilation = dilation, o.lookahead = lookahead;
    return o;
  }
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " W=" << W << " dilation=" << dilation << " lookahead=" << lookahead
      << " bias=" << bias << " state=" << state << " silu=" << (activation == ConvActivation::silu);
    return s.str();
  }
};

// Ragged T (1, shorter than the state, across the 64-step tile), D across the SIMD width, W on
// the fixed (2, 3, 4) and generic (1, 5) paths, every lookahead from 0 to W-1.
std::vector<DilCase> dil_cases() {
  std::vector<DilCase> cases;
  const index_t Ts[] = {1, 5, 67};
  const index_t Ds[] = {3, 17, 40};
  const index_t Ws[] = {1, 2, 3, 4, 5};
  const index_t dils[] = {1, 2, 3};
  std::uint64_t seed = 1;
  for (index_t T : Ts)
    for (index_t D : Ds)
      for (index_t W : Ws) {
        if (st::small_test_scale() && T == 67 && D == 40 && W != 4) continue;  // the sanitizer run
        const index_t dil = dils[seed % 3], R = static_cast<index_t>(seed % static_cast<std::uint64_t>(W));
        const index_t B = seed % 2 ? 2 : 1;
        cases.push_back({B, T, D, W, dil, R, (seed & 2) != 0, (seed & 4) != 0,
                         (seed & 8) ? ConvActivation::silu : ConvActivation::none, seed});
        ++seed;
      }
  return cases;
}

struct DilData {
  Tensor<float, 3> x, state;
  Tensor<float, 2> weight;
  Tensor<float, 1> bias;

  explicit DilData(const DilCase& c)
      : x(st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 10 + 1)),
        state(st::random_tensor<3>({c.B, c.S(), c.D}, c.seed * 10 + 4)),
        weight(st::random_tensor<2>({c.D, c.W}, c.seed * 10 + 2)),
        bias(st::random_tensor<1>({c.D}, c.seed * 10 + 3)) {}

  seqmix::CausalConv1dInputs inputs(const DilCase& c) const {
    seqmix::CausalConv1dInputs in;
    in.x = x.view(), in.weight = weight.view();
    if (c.bias) in.bias = bias.view();
    if (c.state) in.initial_state = state.view();
    return in;
  }
};

// The formula of the issue, in double: tap j of output t reads token t + (j - (W-1-R)) * d of
// the sequence (the state's rows are tokens -S..-1, zeros past T-1).
Tensor<float, 3> dil_formula(const DilCase& c, const DilData& data) {
  Tensor<float, 3> y({c.B, c.T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        double acc = c.bias ? data.bias(d) : 0.0;
        for (index_t j = 0; j < c.W; ++j) {
          const index_t s = t + (j - (c.W - 1 - c.lookahead)) * c.dilation;
          double v = 0.0;
          if (s >= c.T) v = 0.0;
          else if (s >= 0) v = data.x(b, s, d);
          else if (c.state) v = data.state(b, c.S() + s, d);
          acc += double(data.weight(d, j)) * v;
        }
        if (c.activation == ConvActivation::silu) acc = acc / (1.0 + std::exp(-acc));
        y(b, t, d) = static_cast<float>(acc);
      }
  return y;
}

// One token of x [B,T,D] as a step input (zeros for positions >= T: the flush tokens).
Tensor<float, 2> dil_token(const Tensor<float, 3>& x, index_t t) {
  Tensor<float, 2> v({x.size(0), x.size(2)});
  v.fill(0.f);
  if (t < x.size(1))
    for (index_t b = 0; b < x.size(0); ++b)
      for (index_t d = 0; d < x.size(2); ++d) v(b, d) = x(b, t, d);
  return v;
}

}  // namespace

TEST_CASE("causal_conv1d dilation and lookahead: reference equals the window formula, fast equals the reference",
          "[causal_conv1d][dilation]") {
  for (const DilCase& c : dil_cases()) {
    INFO(c.describe());
    const DilData data(c);
    const auto in = data.inputs(c);
    Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.S(), c.D});
    Tensor<float, 4> tok_ref({c.B, c.T, c.S(), c.D});
    seqmix::reference::causal_conv1d(in, {y_ref.view(), s_ref.view(), tok_ref.view()}, c.options());
    st::require_close("reference vs formula", y_ref.view(), dil_formula(c, data).view(), 1e-5);
    // final_state: the last S inputs of concat(state, x), whatever the lookahead.
    for (index_t b = 0; b < c.B; ++b)
      for (index_t r = 0; r < c.S(); ++r)
        for (index_t d = 0; d < c.D; ++d) {
          const index_t s = c.T - c.S() + r;
          const float want = s >= 0 ? data.x(b, s, d) : (c.state ? data.state(b, c.S() + s, d) : 0.f);
          REQUIRE(s_ref(b, r, d) == want);
        }
    for (const seqmix::Executor* ex :
         {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&st::two_thread_pool())}) {
      Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.S(), c.D});
      Tensor<float, 4> tok({c.B, c.T, c.S(), c.D});
      seqmix::causal_conv1d(in, {y.view(), s.view(), tok.view()}, c.options(), *ex);
      st::require_close("fast y", y.view(), y_ref.view(), 1e-5);
      st::require_close("fast final_state", s.view(), s_ref.view(), 0.0);
      st::require_close("fast token_states", tok.view(), tok_ref.view(), 0.0);
    }
  }
}

TEST_CASE("causal_conv1d dilation and lookahead: packed sequences in state slots equal separate calls",
          "[causal_conv1d][dilation]") {
  // Three sequences of 5, 1 and 23 tokens packed in one row; slots 2, 0, 1 of a pool of 3; the
  // middle one starts from zeros.
  const index_t D = 19, W = 4, dil = 2, S = (W - 1) * dil;
  const std::vector<std::int32_t> cu = {0, 5, 6, 29}, slots = {2, 0, 1};
  const std::vector<std::uint8_t> has = {1, 0, 1};
  for (index_t R : {index_t{0}, index_t{2}}) {
    INFO("lookahead=" << R);
    seqmix::CausalConv1dOptions o;
    o.dilation = dil, o.lookahead = R, o.activation = ConvActivation::silu;
    const Tensor<float, 3> x = st::random_tensor<3>({1, 29, D}, 901);
    const Tensor<float, 2> w = st::random_tensor<2>({D, W}, 902);
    const Tensor<float, 1> bias = st::random_tensor<1>({D}, 903);
    const Tensor<float, 3> pool0 = st::random_tensor<3>({3, S, D}, 904);
    for (int form = 0; form < 2; ++form) {
      Tensor<float, 3> pool({3, S, D}), y({1, 29, D});
      seqmix::copy(pool0.view(), pool.view());
      seqmix::CausalConv1dInputs in{x.view(), w.view(), bias.view(), pool.view()};
      in.batch.cu_seqlens = cu, in.batch.state_indices = slots, in.batch.has_initial_state = has;
      if (form == 0) seqmix::reference::causal_conv1d(in, {y.view(), pool.view()}, o);
      else seqmix::causal_conv1d(in, {y.view(), pool.view()}, o, st::two_thread_pool());
      for (std::size_t n = 0; n < 3; ++n) {
        const index_t t0 = cu[n], len = cu[n + 1] - cu[n];
        Tensor<float, 3> y1({1, len, D}), s1({1, S, D});
        seqmix::CausalConv1dInputs one{x.view().slice(1, t0, len), w.view(), bias.view()};
        if (has[n]) one.initial_state = pool0.view().slice(0, slots[n], 1);
        seqmix::reference::causal_conv1d(one, {y1.view(), s1.view()}, o);
        st::require_close("packed y", y.view().slice(1, t0, len).as_const(), y1.view(), 1e-6);
        st::require_close("slot state", pool.view().slice(0, slots[n], 1).as_const(), s1.view(), 0.0);
      }
    }
  }
}

TEST_CASE("causal_conv1d dilation and lookahead: prefill plus steps equals one call, the step delayed by the lookahead",
          "[causal_conv1d][dilation]") {
  const DilCase cases[] = {
      {2, 30, 33, 4, 2, 0, true, true, ConvActivation::silu, 501},
      {1, 25, 17, 3, 3, 1, false, false, ConvActivation::none, 502},
      {2, 19, 70, 5, 2, 2, true, true, ConvActivation::none, 503},
      {1, 12, 16, 2, 4, 1, true, false, ConvActivation::silu, 504},
      {3, 14, 9, 4, 1, 3, true, true, ConvActivation::silu, 505},
  };
  for (const DilCase& c : cases) {
    const index_t ahead = c.lookahead * c.dilation;
    for (index_t T1 : {index_t{0}, index_t{2}, c.T / 2}) {
      INFO(c.describe() << " prefill=" << T1);
      const DilData data(c);
      Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.S(), c.D});
      seqmix::reference::causal_conv1d(data.inputs(c), {y_ref.view(), s_ref.view()}, c.options());
      Tensor<float, 3> state({c.B, c.S(), c.D});
      state.fill(0.f);
      if (c.state) seqmix::copy(data.state.view(), state.view());
      Tensor<float, 3> y({c.B, c.T, c.D});
      if (T1 > 0) {
        auto in = data.inputs(c);
        in.x = data.x.view().slice(1, 0, T1);
        in.initial_state = state.view();
        seqmix::causal_conv1d(in, {y.view().slice(1, 0, T1), state.view()}, c.options(), st::two_thread_pool());
      }
      // Steps over tokens T1 .. T-1, then `ahead` zero tokens flush the last outputs. The step
      // at position n gives y[n - ahead]; the prefill's last `ahead` outputs (zeros past T1) are
      // superseded by those steps.
      for (index_t n = T1; n < c.T + ahead; ++n) {
        const Tensor<float, 2> xt = dil_token(data.x, n);
        Tensor<float, 2> yt({c.B, c.D});
        seqmix::CausalConv1dStepInputs in{xt.view(), data.weight.view(), {}};
        if (c.bias) in.bias = data.bias.view();
        seqmix::causal_conv1d_step(in, {yt.view(), state.view()}, c.options());
        const index_t t = n - ahead;
        if (t < 0) continue;  // a window ending before token `ahead`: no output of the sequence
        for (index_t b = 0; b < c.B; ++b)
          for (index_t d = 0; d < c.D; ++d) y(b, t, d) = yt(b, d);
        if (n + 1 == c.T) st::require_close("state after the last token", state.view(), s_ref.view(), 0.0);
      }
      st::require_close("y", y.view(), y_ref.view(), 1e-5);
    }
  }
}

TEST_CASE("causal_conv1d dilation: slices with halo correction and streams equal one call", "[causal_conv1d][dilation]") {
  const DilCase c{2, 40, 21, 3, 3, 0, true, false, ConvActivation::silu, 601};
  const DilData data(c);
  Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.S(), c.D});
  seqmix::reference::causal_conv1d(data.inputs(c), {y_ref.view(), s_ref.view()}, c.options());
  // Slices of 4 (shorter than the 6-row halo), 13 and 23 tokens.
  const index_t cuts[] = {0, 4, 17, 40};
  Tensor<float, 3> y({c.B, c.T, c.D}), window({c.B, c.S(), c.D});
  window.fill(0.f);
  for (int i = 0; i < 3; ++i) {
    const index_t t0 = cuts[i], len = cuts[i + 1] - cuts[i];
    auto in = data.inputs(c);
    in.x = data.x.view().slice(1, t0, len);
    Tensor<float, 3> local({c.B, c.S(), c.D});
    seqmix::causal_conv1d_slice(in, {y.view().slice(1, t0, len), local.view()}, c.options());
    in.initial_state = window.view();
    seqmix::causal_conv1d_slice_correct(in, {y.view().slice(1, t0, len), local.view()}, c.options());
    seqmix::copy(local.view().as_const(), window.view());
  }
  st::require_close("sliced y", y.view(), y_ref.view(), 1e-5);
  st::require_close("sliced window", window.view(), s_ref.view(), 0.0);

  seqmix::RecurrentStream<seqmix::CausalConv1dInputs> stream(c.options());
  Tensor<float, 3> ys({c.B, c.T, c.D});
  for (int i = 0; i < 3; ++i) {
    auto in = data.inputs(c);
    in.x = data.x.view().slice(1, cuts[i], cuts[i + 1] - cuts[i]);
    stream.feed(in, {ys.view().slice(1, cuts[i], cuts[i + 1] - cuts[i])});
  }
  st::require_close("streamed y", ys.view(), y_ref.view(), 1e-5);
  st::require_close("streamed state", stream.state().s.view(), s_ref.view(), 0.0);

  // Lookahead on slices and streams is refused before anything is written.
  seqmix::CausalConv1dOptions ahead = c.options();
  ahead.lookahead = 1;
  y.fill(5.f);
  Tensor<float, 3> local({c.B, c.S(), c.D});
  st::require_shape_error("options.lookahead", [&] {
    seqmix::causal_conv1d_slice(data.inputs(c), {y.view(), local.view()}, ahead);
  });
  seqmix::RecurrentStream<seqmix::CausalConv1dInputs> ahead_stream(ahead);
  st::require_shape_error("options.lookahead", [&] { ahead_stream.feed(data.inputs(c), {y.view()}); });
  for (float v : y) REQUIRE(v == 5.f);
}

TEST_CASE("causal_conv1d dilation and lookahead: reverse equals the forward call on reversed copies",
          "[causal_conv1d][dilation]") {
  const DilCase c{2, 23, 18, 4, 2, 1, true, true, ConvActivation::none, 701};
  const DilData data(c);
  Tensor<float, 3> xr({c.B, c.T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) xr(b, t, d) = data.x(b, c.T - 1 - t, d);
  auto in_r = data.inputs(c);
  in_r.x = xr.view();
  Tensor<float, 3> yr({c.B, c.T, c.D}), sr({c.B, c.S(), c.D});
  seqmix::reference::causal_conv1d(in_r, {yr.view(), sr.view()}, c.options());
  seqmix::CausalConv1dOptions rev = c.options();
  rev.reverse = true;
  for (int form = 0; form < 2; ++form) {
    Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.S(), c.D});
    if (form == 0) seqmix::reference::causal_conv1d(data.inputs(c), {y.view(), s.view()}, rev);
    else seqmix::causal_conv1d(data.inputs(c), {y.view(), s.view()}, rev, st::two_thread_pool());
    for (index_t b = 0; b < c.B; ++b)
      for (index_t t = 0; t < c.T; ++t)
        for (index_t d = 0; d < c.D; ++d) REQUIRE(y(b, t, d) == Approx(yr(b, c.T - 1 - t, d)).margin(1e-5));
    st::require_close("reverse final_state", s.view(), sr.view(), 0.0);
  }
}

TEST_CASE("causal_conv1d refuses bad dilation and lookahead before writing", "[causal_conv1d][dilation]") {
  const DilCase c{2, 8, 12, 4, 2, 1, true, true, ConvActivation::none, 801};
  const DilData data(c);
  Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.S(), c.D});
  Tensor<float, 3> short_state({c.B, c.W - 1, c.D});  // the undilated state size
  y.fill(7.f), s.fill(7.f);
  auto expect_error = [&](const seqmix::CausalConv1dInputs& in, const seqmix::CausalConv1dOptions& o,
                          const char* argument) {
    st::require_shape_error(argument, [&] { seqmix::causal_conv1d(in, {y.view(), s.view()}, o); });
    st::require_shape_error(argument, [&] { seqmix::reference::causal_conv1d(in, {y.view(), s.view()}, o); });
    for (float v : y) REQUIRE(v == 7.f);
    for (float v : s) REQUIRE(v == 7.f);
  };
  const auto good = data.inputs(c);
  for (index_t bad : {index_t{0}, index_t{-2}}) {
    auto o = c.options();
    o.dilation = bad;
    expect_error(good, o, "options.dilation");
  }
  {
    auto o = c.options();
    o.dilation = index_t(1) << 50;
    expect_error(good, o, "options.dilation");
  }
  for (index_t bad : {index_t{-1}, c.W, c.W + 3}) {
    auto o = c.options();
    o.lookahead = bad;
    expect_error(good, o, "options.lookahead");
  }
  auto in = good;
  in.initial_state = short_state.view();
  expect_error(in, c.options(), "initial_state");

  // The step: bad options, and a state of W-1 rows where (W-1)*dilation are needed.
  Tensor<float, 2> y1({c.B, c.D});
  y1.fill(7.f);
  const seqmix::CausalConv1dStepInputs step_in{data.x.view().select(1, 0), data.weight.view(), data.bias.view()};
  auto o = c.options();
  o.lookahead = c.W;
  st::require_shape_error("options.lookahead", [&] { seqmix::causal_conv1d_step(step_in, {y1.view(), s.view()}, o); });
  o = c.options();
  o.dilation = 0;
  st::require_shape_error("options.dilation", [&] { seqmix::causal_conv1d_step(step_in, {y1.view(), s.view()}, o); });
  st::require_shape_error("conv_state",
                          [&] { seqmix::causal_conv1d_step(step_in, {y1.view(), short_state.view()}, c.options()); });
  for (float v : y1) REQUIRE(v == 7.f);
  for (float v : s) REQUIRE(v == 7.f);
}
