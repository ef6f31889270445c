// fnet (the real part of the 2-D DFT, FFT form against the DFT sums in double) and base_conv
// (Zoology's BaseConv: fast prefill, segments and decode steps against direct loops in double);
// bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

}  // namespace

TEST_CASE("fnet: the FFT form matches the DFT definition", "[fnet]") {
  std::uint64_t seed = 500;
  for (index_t T : {1, 7, 64, 100})
    for (index_t D : {1, 7, 64, 100}) {
      const index_t B = (T + D) % 2 == 0 ? 2 : 3;
      INFO("B=" << B << " T=" << T << " D=" << D);
      const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
      Tensor<float, 3> ref({B, T, D}), y({B, T, D});
      seqmix::reference::fnet({x.view()}, {ref.view()});
      seqmix::fnet({x.view()}, {y.view()}, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("y", y.cview(), ref.cview(), 2e-5);
    }
}

TEST_CASE("fnet: small cases by hand and a strided input", "[fnet]") {
  // T = 1, D = 2: y = [x0 + x1, x0 - x1]. T = 2, D = 1 likewise over tokens.
  Tensor<float, 3> a({1, 1, 2}), ya({1, 1, 2});
  a(0, 0, 0) = 3.f, a(0, 0, 1) = 5.f;
  seqmix::fnet({a.view()}, {ya.view()});
  REQUIRE(ya(0, 0, 0) == Approx(8.f));
  REQUIRE(ya(0, 0, 1) == Approx(-2.f));
  // A constant row: all the mass in y[0,0] = T D c.
  Tensor<float, 3> c({1, 3, 5}), yc({1, 3, 5});
  for (index_t t = 0; t < 3; ++t)
    for (index_t d = 0; d < 5; ++d) c(0, t, d) = 2.f;
  seqmix::fnet({c.view()}, {yc.view()});
  for (index_t t = 0; t < 3; ++t)
    for (index_t d = 0; d < 5; ++d) REQUIRE(yc(0, t, d) == Approx(t == 0 && d == 0 ? 30.f : 0.f).margin(1e-5));
  // Every other column of a wider buffer.
  const Tensor<float, 3> wide = st::random_tensor<3>({2, 9, 22}, 7);
  const seqmix::ConstView<float, 3> x(wide.data(), {2, 9, 11}, {9 * 22, 22, 2});
  Tensor<float, 3> ref({2, 9, 11}), y({2, 9, 11});
  seqmix::reference::fnet({x}, {ref.view()});
  seqmix::fnet({x}, {y.view()}, st::two_thread_pool());
  st::require_close("strided y", y.cview(), ref.cview(), 2e-5);
}

TEST_CASE("fnet: bad shapes and overlap are refused before any write", "[fnet][errors]") {
  const Tensor<float, 3> x = st::random_tensor<3>({2, 5, 4}, 3);
  Tensor<float, 3> wrong({2, 4, 5});
  wrong.fill(7.f);
  st::require_shape_error("y", [&] { seqmix::fnet({x.view()}, {wrong.view()}); });
  st::require_shape_error("y", [&] { seqmix::reference::fnet({x.view()}, {wrong.view()}); });
  for (index_t i = 0; i < 40; ++i) REQUIRE(wrong.data()[i] == 7.f);
  const Tensor<float, 3> original = st::random_tensor<3>({2, 5, 4}, 4);
  Tensor<float, 3> inplace = original;
  st::require_shape_error("y", [&] { seqmix::fnet({inplace.view()}, {inplace.view()}); });
  for (index_t i = 0; i < 40; ++i) REQUIRE(inplace.data()[i] == original.data()[i]);
}

namespace {

struct BaseConvCase {
  index_t B, T, D, L;
  bool biases;
  std::uint64_t seed;
};

// Weights scaled by 1/sqrt(D) and filters by 1/sqrt(L) keep the outputs O(1).
struct BaseConvTestData {
  Tensor<float, 3> u;
  Tensor<float, 2> w1, w2, h;
  Tensor<float, 1> b1, b2;

  explicit BaseConvTestData(const BaseConvCase& c)
      : u(st::random_tensor<3>({c.B, c.T, c.D}, c.seed)),
        w1(st::random_tensor<2>({c.D, c.D}, c.seed + 1, -1.f / std::sqrt(float(c.D)), 1.f / std::sqrt(float(c.D)))),
        w2(st::random_tensor<2>({c.D, c.D}, c.seed + 2, -1.f / std::sqrt(float(c.D)), 1.f / std::sqrt(float(c.D)))),
        h(st::random_tensor<2>({c.L, c.D}, c.seed + 3, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))),
        b1(st::random_tensor<1>({c.D}, c.seed + 4)),
        b2(st::random_tensor<1>({c.D}, c.seed + 5)) {}

  seqmix::BaseConvInputs inputs(bool biases) const {
    seqmix::BaseConvInputs in{u.view(), w1.view(), w2.view(), h.view()};
    if (biases) in.b1 = b1.view(), in.b2 = b2.view();
    return in;
  }
};

}  // namespace

TEST_CASE("base_conv: the fast prefill matches the reference", "[base_conv]") {
  std::uint64_t seed = 700;
  std::vector<BaseConvCase> cases;
  const index_t Ds[] = {1, 5, 17, 33};
  const index_t Ts[] = {1, 7, 64, st::small_test_scale() ? index_t(100) : index_t(300)};
  for (index_t T : Ts)
    for (index_t L : {T, T / 2 + 1, std::min<index_t>(3, T)}) {
      cases.push_back({seed % 3 == 0 ? index_t(1) : index_t(2), T, Ds[seed % 4], L, bool(seed & 1), seed});
      seed += 10;
    }
  for (const BaseConvCase& c : cases) {
    INFO("B=" << c.B << " T=" << c.T << " D=" << c.D << " L=" << c.L << " biases=" << c.biases);
    const BaseConvTestData data(c);
    Tensor<float, 3> ref({c.B, c.T, c.D});
    seqmix::reference::base_conv(data.inputs(c.biases), {ref.view()});
    for (seqmix::LongConvMethod method :
         {seqmix::LongConvMethod::direct, seqmix::LongConvMethod::fft, seqmix::LongConvMethod::automatic}) {
      INFO("method " << int(method));
      Tensor<float, 3> y({c.B, c.T, c.D});
      seqmix::base_conv(data.inputs(c.biases), {y.view()}, {method},
                        c.seed % 20 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("y", y.cview(), ref.cview(), 3e-5);
    }
  }
}

TEST_CASE("base_conv: a strided input and the definition by hand", "[base_conv]") {
  // u every other column of a wider buffer.
  const index_t B = 2, T = 11, D = 6, L = 4;
  const Tensor<float, 3> wide = st::random_tensor<3>({B, T, 2 * D}, 11);
  const seqmix::ConstView<float, 3> u(wide.data(), {B, T, D}, {T * 2 * D, 2 * D, 2});
  const BaseConvTestData data({B, T, D, L, true, 12});
  seqmix::BaseConvInputs in = data.inputs(true);
  in.u = u;
  Tensor<float, 3> ref({B, T, D}), y({B, T, D});
  seqmix::reference::base_conv(in, {ref.view()});
  seqmix::base_conv(in, {y.view()}, {}, st::two_thread_pool());
  st::require_close("strided y", y.cview(), ref.cview(), 3e-5);
  // One output by hand: y[1,5,2] = p1 * sum_s h[s,2] p2[5-s].
  const auto proj = [&](const Tensor<float, 2>& w, const Tensor<float, 1>& bias, index_t t, index_t j) {
    double a = bias(j);
    for (index_t i = 0; i < D; ++i) a += double(u(1, t, i)) * w(i, j);
    return a;
  };
  double conv = 0.0;
  for (index_t s = 0; s < L; ++s) conv += double(data.h(s, 2)) * proj(data.w2, data.b2, 5 - s, 2);
  REQUIRE(ref(1, 5, 2) == Approx(proj(data.w1, data.b1, 5, 2) * conv).margin(1e-6));
}

// Two prefill segments carrying the state, then decode steps, equal one call without a state.
TEST_CASE("base_conv: segments and steps with the state carried equal one call", "[base_conv]") {
  const index_t B = 2, T = 40, D = 7;
  std::uint64_t seed = 800;
  for (index_t L : {index_t(1), index_t(9), T})
    for (bool reference : {false, true}) {
      INFO("L=" << L << " reference=" << reference);
      const BaseConvTestData data({B, T, D, L, true, seed});
      seed += 10;
      Tensor<float, 3> ref({B, T, D}), y({B, T, D}), state({B, L - 1, D});
      seqmix::reference::base_conv(data.inputs(true), {ref.view()});
      for (const auto& piece : {std::make_pair(index_t(0), index_t(17)), std::make_pair(index_t(17), index_t(10))}) {
        seqmix::BaseConvInputs in = data.inputs(true);
        in.u = data.u.view().slice(1, piece.first, piece.second);
        if (piece.first > 0) in.initial_state = state.view();
        const seqmix::BaseConvOutputs out{y.view().slice(1, piece.first, piece.second), state.view()};
        if (reference)
          seqmix::reference::base_conv(in, out);
        else
          seqmix::base_conv(in, out, {}, st::two_thread_pool());
      }
      for (index_t t = 27; t < T; ++t)
        seqmix::base_conv_step({data.u.view().select(1, t), data.w1.view(), data.w2.view(), data.h.view(),
                                data.b1.view(), data.b2.view()},
                               {y.view().select(1, t), state.view()});
      st::require_close("y", y.cview(), ref.cview(), 3e-5);
    }
}

TEST_CASE("base_conv: bad arguments are refused before any write", "[base_conv][errors]") {
  const index_t B = 2, T = 5, D = 3, L = 4;
  const BaseConvTestData data({B, T, D, L, true, 900});
  Tensor<float, 3> y({B, T, D}), state({B, L - 1, D});
  y.fill(7.f);
  state.fill(7.f);
  const auto untouched = [&] {
    for (index_t i = 0; i < B * T * D; ++i) REQUIRE(y.data()[i] == 7.f);
    for (index_t i = 0; i < B * (L - 1) * D; ++i) REQUIRE(state.data()[i] == 7.f);
  };
  const Tensor<float, 2> w_bad({D, D + 1}), h_empty({0, D});
  Tensor<float, 2> h_nan = data.h;
  h_nan(2, 1) = std::nanf("");
  const Tensor<float, 1> b_bad({D + 1});
  const auto call = [&](seqmix::BaseConvInputs in, seqmix::BaseConvOutputs out) {
    return [in, out] { seqmix::base_conv(in, out); };
  };
  seqmix::BaseConvInputs in = data.inputs(true);
  const seqmix::BaseConvOutputs out{y.view(), state.view()};
  for (bool reference : {false, true}) {
    const auto run = [&](const char* name, seqmix::BaseConvInputs i, seqmix::BaseConvOutputs o) {
      if (reference)
        st::require_shape_error(name, [&] { seqmix::reference::base_conv(i, o); });
      else
        st::require_shape_error(name, call(i, o));
    };
    seqmix::BaseConvInputs bad = in;
    bad.w1 = w_bad.view();
    run("w1", bad, out);
    bad = in, bad.w2 = w_bad.view();
    run("w2", bad, out);
    bad = in, bad.filter = h_empty.view();
    run("filter", bad, out);
    bad = in, bad.filter = h_nan.view();
    run("filter", bad, out);
    bad = in, bad.b2 = b_bad.view();
    run("b2", bad, out);
    run("y", in, {y.view().slice(1, 0, T - 1), state.view()});
    run("final_state", in, {y.view(), state.view().slice(1, 0, L - 2)});
    bad = in, bad.initial_state = y.view().slice(1, 0, L - 1);
    run("y", bad, out);
    Tensor<float, 3> u_copy = data.u;
    bad = in, bad.u = u_copy.view();
    run("y", bad, {u_copy.view(), {}});
    for (index_t i = 0; i < B * T * D; ++i) REQUIRE(u_copy.data()[i] == data.u.data()[i]);
    untouched();
  }
  const Tensor<float, 2> u1 = st::random_tensor<2>({B, D}, 3);
  Tensor<float, 2> y1({B, D});
  y1.fill(7.f);
  st::require_shape_error("state", [&] {
    seqmix::base_conv_step({u1.view(), data.w1.view(), data.w2.view(), data.h.view()}, {y1.view(), state.view().slice(1, 0, 1)});
  });
  st::require_shape_error("filter", [&] {
    seqmix::base_conv_step({u1.view(), data.w1.view(), data.w2.view(), h_nan.view()}, {y1.view(), state.view()});
  });
  st::require_shape_error("w2", [&] {
    seqmix::base_conv_step({u1.view(), data.w1.view(), w_bad.view(), data.h.view()}, {y1.view(), state.view()});
  });
  for (index_t i = 0; i < B * D; ++i) REQUIRE(y1.data()[i] == 7.f);
  untouched();
}

// A prepared filter spectrum (inference: the filter is a fixed weight) gives the results of the
// call without one, for every method, two segments carrying the state, and reverse; a spectrum
// that does not serve the call is refused before any write.
TEST_CASE("base_conv: a prepared filter spectrum gives the results of the plain call", "[base_conv]") {
  const index_t B = 2, T = st::small_test_scale() ? 100 : 300, D = 19;
  std::uint64_t seed = 1000;
  for (index_t L : {T, T / 3, index_t(5)}) {
    INFO("L=" << L);
    const BaseConvTestData data({B, T, D, L, true, seed});
    seed += 10;
    const seqmix::BaseConvInputs in = data.inputs(true);
    const seqmix::LongConvFilterSpectrum spectrum(in.filter, {}, {D, T, seqmix::LongConvDirection::causal, false},
                                                  st::two_thread_pool());
    Tensor<float, 3> want({B, T, D}), y({B, T, D});
    for (bool reverse : {false, true})
      for (seqmix::LongConvMethod method :
           {seqmix::LongConvMethod::direct, seqmix::LongConvMethod::fft, seqmix::LongConvMethod::automatic}) {
        INFO("reverse " << reverse << " method " << int(method));
        seqmix::BaseConvOptions options;
        options.method = method, options.reverse = reverse;
        seqmix::base_conv(in, {want.view()}, options, st::two_thread_pool());
        seqmix::base_conv(in, spectrum, {y.view()}, options, st::two_thread_pool());
        st::require_close("y", y.cview(), want.cview(), 3e-5);
      }
    // Segments carrying the state: a spectrum made with_state, for the longer segment's T.
    const index_t first = T / 2;
    const seqmix::LongConvFilterSpectrum stream(in.filter, {}, {D, T - first, seqmix::LongConvDirection::causal, true});
    Tensor<float, 3> state({B, L - 1, D});
    seqmix::BaseConvInputs head = in;
    head.u = data.u.view().slice(1, 0, first);
    seqmix::base_conv(head, {y.view().slice(1, 0, first), state.view()}, {}, st::two_thread_pool());
    seqmix::BaseConvInputs tail = in;
    tail.u = data.u.view().slice(1, first, T - first), tail.initial_state = state.view();
    seqmix::base_conv(tail, stream, {y.view().slice(1, first, T - first), state.view()},
                      {seqmix::LongConvMethod::fft}, st::two_thread_pool());
    seqmix::base_conv(in, {want.view()}, {}, st::two_thread_pool());
    st::require_close("segments y", y.cview(), want.cview(), 3e-5);
    // Refused before any write: too long a call, a state the spectrum was not made for, another D.
    y.fill(7.f);
    const auto refused = [&](const seqmix::BaseConvInputs& call, const seqmix::LongConvFilterSpectrum& s) {
      st::require_shape_error("spectrum", [&] { seqmix::base_conv(call, s, {y.view().slice(1, 0, call.u.size(1))}); });
      for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y.data()[i] == 7.f);
    };
    refused(in, stream);  // T beyond its max_tokens, and no state
    seqmix::BaseConvInputs stated = tail;
    stated.u = data.u.view().slice(1, 0, T - first);
    refused(stated, spectrum);  // a state it was not made for
    const seqmix::LongConvFilterSpectrum narrow(in.filter.slice(1, 0, D - 1), {}, {D - 1, T, seqmix::LongConvDirection::causal, false});
    refused(in, narrow);  // the filter has D columns, the spectrum D - 1
  }
}
