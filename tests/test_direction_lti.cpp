// The reverse option of the LTI convolutions (issue 23 item 1): long_conv (causal with a state,
// bidirectional; direct, FFT and automatic forms and the reference), h3 and hyena. A reverse call
// equals the forward call on explicitly reversed copies (outputs reversed back; final states,
// which hold inputs in processing order, equal) from a non-empty initial state where the operator
// takes one, for T 1, 2, 37 and 100 (the FFT form's window and the filter longer or shorter than
// T). Also: causal reverse is the anti-causal sum written out, bidirectional reverse is the
// forward bidirectional call with the two filters swapped, bidirectional()'s sum equals the sum
// of the two directions, and a refused reverse call writes nothing.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const index_t kLtiDirLengths[] = {1, 2, 37, 100};

// One long_conv call by form: 0 reference, 1 direct, 2 fft, 3 automatic (the fast entry point).
void lti_dir_long_conv(int form, const seqmix::LongConvInputs& in, const seqmix::LongConvOutputs& out,
                       seqmix::LongConvOptions options) {
  if (form == 0) return seqmix::reference::long_conv(in, out, options);
  if (form == 1) return seqmix::long_conv_direct(in, out, options, st::two_thread_pool());
  if (form == 2) return seqmix::long_conv_fft(in, out, options, st::two_thread_pool());
  options.method = seqmix::LongConvMethod::automatic;
  seqmix::long_conv(in, out, options, st::two_thread_pool());
}

struct LongConvDirCase {
  index_t B = 2, T, D = 6, G, L;
  Tensor<float, 3> u, state0;
  Tensor<float, 2> h, hb;
  Tensor<float, 1> skip, bias;
  LongConvDirCase(index_t T_, index_t G_, index_t L_, std::uint64_t seed) : T(T_), G(G_), L(L_) {
    u = st::random_tensor<3>({B, T, D}, seed);
    state0 = st::random_tensor<3>({B, L - 1, D}, seed + 1);
    h = st::random_tensor<2>({L, G}, seed + 2, -0.5f, 0.5f), hb = st::random_tensor<2>({L + 3, G}, seed + 3, -0.5f, 0.5f);
    skip = st::random_tensor<1>({D}, seed + 4), bias = st::random_tensor<1>({D}, seed + 5);
  }
};

TEST_CASE("reverse long_conv equals long_conv on reversed copies", "[direction][long_conv]") {
  for (const index_t T : kLtiDirLengths)
    for (const index_t L : {index_t(1), index_t(5), index_t(60)})
      for (const index_t G : {index_t(6), index_t(3)})
        for (int form = 0; form < 4; ++form) {
          INFO("T=" << T << " L=" << L << " G=" << G << " form=" << form);
          const LongConvDirCase c(T, G, L, 2300 + std::uint64_t(T * 7 + L));
          const auto u_r = st::reversed_copy(c.u);
          seqmix::LongConvOptions options;
          options.method = form == 2 ? seqmix::LongConvMethod::fft : seqmix::LongConvMethod::direct;
          seqmix::LongConvOptions reverse = options;
          reverse.reverse = true;
          // Causal, skip and bias, from a state; the final state written over the initial one.
          auto state = st::clone(c.state0), state_ref = st::clone(c.state0);
          Tensor<float, 3> y({c.B, T, c.D}), y_ref({c.B, T, c.D});
          lti_dir_long_conv(form, {c.u.cview(), c.h.cview(), {}, c.skip.cview(), c.bias.cview(), state.cview()},
                            {y.view(), state.view()}, reverse);
          lti_dir_long_conv(form, {u_r.cview(), c.h.cview(), {}, c.skip.cview(), c.bias.cview(), state_ref.cview()},
                            {y_ref.view(), state_ref.view()}, options);
          st::require_close("causal y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
          st::require_close("causal final_state", state.cview(), state_ref.cview(), 1e-6);
          // Bidirectional (no state).
          seqmix::LongConvOptions bi = options, bi_reverse = reverse;
          bi.direction = bi_reverse.direction = seqmix::LongConvDirection::bidirectional;
          lti_dir_long_conv(form, {c.u.cview(), c.h.cview(), c.hb.cview()}, {y.view()}, bi_reverse);
          lti_dir_long_conv(form, {u_r.cview(), c.h.cview(), c.hb.cview()}, {y_ref.view()}, bi);
          st::require_close("bidirectional y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        }
}

TEST_CASE("reverse causal long_conv is the anti-causal sum, reverse bidirectional swaps the filters",
          "[direction][long_conv]") {
  const index_t T = 37, L = 9;
  const LongConvDirCase c(T, 3, L, 2400);
  seqmix::LongConvOptions reverse;
  reverse.reverse = true;
  // The initial state holds "u[T], ..., u[T+L-2]" in processing order: row L-2 is u[T].
  Tensor<float, 3> y({c.B, T, c.D}), final_state({c.B, L - 1, c.D});
  seqmix::long_conv({c.u.cview(), c.h.cview(), {}, c.skip.cview(), {}, c.state0.cview()}, {y.view(), final_state.view()},
                    reverse, st::two_thread_pool());
  Tensor<double, 3> want({c.B, T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        double acc = double(c.skip(d)) * c.u(b, t, d);
        for (index_t s = 0; s < L; ++s) {
          const index_t r = t + s;  // token read; past T-1 it is state row L-2-(r-T)
          const double x = r < T ? c.u(b, r, d) : c.state0(b, L - 2 - (r - T), d);
          acc += double(c.h(s, d / 2)) * x;
        }
        want.view()(b, t, d) = acc;
      }
  st::require_close("anti-causal y", y.cview(), want.cview(), 1e-5);
  for (index_t b = 0; b < c.B; ++b)
    for (index_t r = 0; r < L - 1; ++r)
      for (index_t d = 0; d < c.D; ++d) REQUIRE(final_state(b, r, d) == c.u(b, L - 2 - r, d));
  // Bidirectional reverse = forward bidirectional with filter and filter_backward swapped.
  seqmix::LongConvOptions bi;
  bi.direction = seqmix::LongConvDirection::bidirectional;
  seqmix::LongConvOptions bi_reverse = bi;
  bi_reverse.reverse = true;
  Tensor<float, 3> y_ref({c.B, T, c.D});
  seqmix::reference::long_conv({c.u.cview(), c.h.cview(), c.hb.cview()}, {y.view()}, bi_reverse);
  seqmix::reference::long_conv({c.u.cview(), c.hb.cview(), c.h.cview()}, {y_ref.view()}, bi);
  st::require_close("bidirectional reverse", y.cview(), y_ref.cview(), 1e-6);
}

TEST_CASE("bidirectional long_conv sum equals forward plus reverse, refused reverse calls write nothing",
          "[direction][long_conv]") {
  const index_t T = 50, L = 50;
  const LongConvDirCase c(T, 6, L, 2500);
  Tensor<float, 3> y({c.B, T, c.D}), f({c.B, T, c.D}), r({c.B, T, c.D});
  const seqmix::LongConvInputs in{c.u.cview(), c.h.cview(), {}, c.skip.cview()};
  seqmix::LongConvOptions options;
  seqmix::bidirectional<3>(
      [&](bool reverse, const seqmix::TensorView<float, 3>& out) {
        seqmix::LongConvOptions o = options;
        o.reverse = reverse;
        seqmix::long_conv(in, {out}, o, st::two_thread_pool());
      },
      y.view());
  seqmix::long_conv(in, {f.view()}, options);
  options.reverse = true;
  seqmix::long_conv(in, {r.view()}, options);
  Tensor<float, 3> sum({c.B, T, c.D});
  for (index_t i = 0; i < sum.numel(); ++i) sum.data()[i] = f.data()[i] + r.data()[i];
  st::require_close("bidirectional sum", y.cview(), sum.cview(), 1e-6);
  // A bad state shape under reverse: ShapeError before y is touched.
  Tensor<float, 3> bad_state({c.B, L, c.D});
  for (index_t i = 0; i < y.numel(); ++i) y.data()[i] = 7.f;
  st::require_shape_error("initial_state", [&] {
    seqmix::long_conv({c.u.cview(), c.h.cview(), {}, {}, {}, bad_state.cview()}, {y.view()}, options);
  });
  for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y.data()[i] == 7.f);
}

TEST_CASE("reverse h3 equals h3 on reversed copies", "[direction][h3]") {
  const index_t B = 2, H = 2, P = 3;
  for (const index_t T : kLtiDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const std::uint64_t seed = 2600 + std::uint64_t(T);
      const index_t Ls = 4, L = 30;
      const auto q = st::random_tensor<4>({B, T, H, P}, seed), k = st::random_tensor<4>({B, T, H, P}, seed + 1);
      const auto v = st::random_tensor<4>({B, T, H, P}, seed + 2);
      const auto shift = st::random_tensor<2>({Ls, H * P}, seed + 3), diag = st::random_tensor<2>({L, H * P}, seed + 4, -0.2f, 0.2f);
      const auto q_r = st::reversed_copy(q), k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
      seqmix::H3Options options, reverse;
      reverse.reverse = true;
      Tensor<float, 4> y({B, T, H, P}), y_ref({B, T, H, P});
      const seqmix::H3Inputs got{q.cview(), k.cview(), v.cview(), shift.cview(), diag.cview()};
      const seqmix::H3Inputs want{q_r.cview(), k_r.cview(), v_r.cview(), shift.cview(), diag.cview()};
      if (fast) {
        seqmix::h3(got, {y.view()}, reverse, st::two_thread_pool());
        seqmix::h3(want, {y_ref.view()}, options);
      } else {
        seqmix::reference::h3(got, {y.view()}, reverse);
        seqmix::reference::h3(want, {y_ref.view()}, options);
      }
      st::require_close("h3 y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
    }
}

TEST_CASE("reverse hyena equals hyena on reversed copies", "[direction][hyena]") {
  const index_t N = 2, B = 2, D = 5;
  for (const index_t T : kLtiDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const std::uint64_t seed = 2700 + std::uint64_t(T);
      const index_t L = 40;
      const auto v = st::random_tensor<3>({B, T, D}, seed);
      const auto x = st::random_tensor<4>({N, B, T, D}, seed + 1);
      const auto filter = st::random_tensor<3>({N, L, D}, seed + 2, -0.2f, 0.2f);
      const auto skip = st::random_tensor<2>({N, D}, seed + 3);
      const auto state0 = st::random_tensor<4>({N, B, L - 1, D}, seed + 4);
      const auto v_r = st::reversed_copy(v);
      const auto x_r = st::reversed_copy(x, 2);
      seqmix::HyenaOptions options, reverse;
      reverse.reverse = true;
      auto state = st::clone(state0), state_ref = st::clone(state0);
      Tensor<float, 3> y({B, T, D}), y_ref({B, T, D}), scratch({B, T, D});
      const seqmix::HyenaInputs got{v.cview(), x.cview(), filter.cview(), skip.cview(), state.cview()};
      const seqmix::HyenaInputs want{v_r.cview(), x_r.cview(), filter.cview(), skip.cview(), state_ref.cview()};
      if (fast) {
        seqmix::hyena(got, {y.view(), scratch.view(), state.view()}, reverse, st::two_thread_pool());
        seqmix::hyena(want, {y_ref.view(), {}, state_ref.view()}, options);
      } else {
        seqmix::reference::hyena(got, {y.view(), {}, state.view()}, reverse);
        seqmix::reference::hyena(want, {y_ref.view(), {}, state_ref.view()}, options);
      }
      st::require_close("hyena y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      st::require_close("hyena final_state", state.cview(), state_ref.cview(), 1e-5);
    }
}

}  // namespace
