// lightweight_conv and dynamic_conv (Wu et al. 2019): fast forms against the double-loop
// definitions over ragged T, K, H, B and both paddings; causal decode steps against the prefill;
// NaN in x confined to the outputs whose window holds it; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const seqmix::LocalConvPadding kDynConvPaddings[] = {seqmix::LocalConvPadding::causal,
                                                     seqmix::LocalConvPadding::centered};

// Causal decode steps from a zero state over x [B,T,D], one token at a time, collected into [B,T,D].
Tensor<float, 3> dynconv_run_lightweight_steps(const Tensor<float, 3>& x, const Tensor<float, 2>& weight) {
  const index_t B = x.size(0), T = x.size(1), D = x.size(2), K = weight.size(1);
  Tensor<float, 3> y({B, T, D}), state({B, K - 1, D});
  Tensor<float, 2> xt({B, D}), yt({B, D});
  for (index_t t = 0; t < T; ++t) {
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) xt(b, c) = x(b, t, c);
    seqmix::lightweight_conv_step({xt.cview(), weight.cview()}, {yt.view(), state.view()},
                                  t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) y(b, t, c) = yt(b, c);
  }
  return y;
}

Tensor<float, 3> dynconv_run_dynamic_steps(const Tensor<float, 3>& x, const Tensor<float, 4>& logits) {
  const index_t B = x.size(0), T = x.size(1), D = x.size(2), H = logits.size(2), K = logits.size(3);
  Tensor<float, 3> y({B, T, D}), state({B, K - 1, D}), lt({B, H, K});
  Tensor<float, 2> xt({B, D}), yt({B, D});
  for (index_t t = 0; t < T; ++t) {
    for (index_t b = 0; b < B; ++b) {
      for (index_t c = 0; c < D; ++c) xt(b, c) = x(b, t, c);
      for (index_t h = 0; h < H; ++h)
        for (index_t k = 0; k < K; ++k) lt(b, h, k) = logits(b, t, h, k);
    }
    seqmix::dynamic_conv_step({xt.cview(), lt.cview()}, {yt.view(), state.view()});
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) y(b, t, c) = yt(b, c);
  }
  return y;
}

}  // namespace

TEST_CASE("lightweight_conv and dynamic_conv: fast forms match the definitions", "[dynamic_conv]") {
  std::uint64_t seed = 1600;
  for (index_t T : {1, 7, 100})
    for (index_t K : {1, 3, 7})
      for (index_t H : {1, 2, 4})
        for (const auto padding : kDynConvPaddings) {
          const index_t B = 2, D = H == 2 ? 10 : 4 * H;  // D = 4, 10, 16: odd head size 5
          INFO("T=" << T << " K=" << K << " H=" << H << " D=" << D << " centered=" << int(padding));
          const seqmix::LocalConvOptions options{padding};
          const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
          const Tensor<float, 2> weight = st::random_tensor<2>({H, K}, seed++, -2.f, 2.f);
          const Tensor<float, 4> logits = st::random_tensor<4>({B, T, H, K}, seed++, -2.f, 2.f);
          const auto& ex = seed % 2 ? st::two_thread_pool() : seqmix::serial_executor();
          Tensor<float, 3> ref({B, T, D}), y({B, T, D});
          seqmix::reference::lightweight_conv({x.cview(), weight.cview()}, {ref.view()}, options);
          seqmix::lightweight_conv({x.cview(), weight.cview()}, {y.view()}, options, ex);
          st::require_close("lightweight y", y.cview(), ref.cview(), 1e-5);
          seqmix::reference::dynamic_conv({x.cview(), logits.cview()}, {ref.view()}, options);
          seqmix::dynamic_conv({x.cview(), logits.cview()}, {y.view()}, options, ex);
          st::require_close("dynamic y", y.cview(), ref.cview(), 1e-5);
          if (padding == seqmix::LocalConvPadding::causal) {
            seqmix::reference::lightweight_conv({x.cview(), weight.cview()}, {ref.view()}, options);
            st::require_close("lightweight steps", dynconv_run_lightweight_steps(x, weight).cview(), ref.cview(), 1e-5);
            seqmix::reference::dynamic_conv({x.cview(), logits.cview()}, {ref.view()}, options);
            st::require_close("dynamic steps", dynconv_run_dynamic_steps(x, logits).cview(), ref.cview(), 1e-5);
          }
        }
}

TEST_CASE("lightweight_conv: hand cases for the window and the softmax", "[dynamic_conv]") {
  // K = 2, equal logits: causal y[t] = (x[t-1] + x[t]) / 2 with x[-1] = 0; centered (lead 0)
  // y[t] = (x[t] + x[t+1]) / 2 with x[T] = 0.
  Tensor<float, 3> x({1, 3, 1}), y({1, 3, 1});
  x(0, 0, 0) = 2.f, x(0, 1, 0) = 4.f, x(0, 2, 0) = 8.f;
  Tensor<float, 2> w({1, 2});
  w(0, 0) = 0.5f, w(0, 1) = 0.5f;
  seqmix::lightweight_conv({x.cview(), w.cview()}, {y.view()});
  REQUIRE(y(0, 0, 0) == Approx(1.f));
  REQUIRE(y(0, 1, 0) == Approx(3.f));
  REQUIRE(y(0, 2, 0) == Approx(6.f));
  seqmix::lightweight_conv({x.cview(), w.cview()}, {y.view()}, {seqmix::LocalConvPadding::centered});
  REQUIRE(y(0, 0, 0) == Approx(3.f));
  REQUIRE(y(0, 1, 0) == Approx(6.f));
  REQUIRE(y(0, 2, 0) == Approx(4.f));
  // A dominant logit picks one tap: K = 3 centered, the last tap -> y[t] = x[t+1].
  Tensor<float, 2> w3({1, 3});
  w3(0, 0) = -40.f, w3(0, 1) = -40.f, w3(0, 2) = 40.f;
  seqmix::lightweight_conv({x.cview(), w3.cview()}, {y.view()}, {seqmix::LocalConvPadding::centered});
  REQUIRE(y(0, 0, 0) == Approx(4.f));
  REQUIRE(y(0, 1, 0) == Approx(8.f));
  REQUIRE(y(0, 2, 0) == Approx(0.f).margin(1e-6));
}

TEST_CASE("dynamic_conv: NaN in x reaches only the outputs whose window holds it", "[dynamic_conv]") {
  const index_t B = 2, T = 9, D = 4, H = 2, K = 3;
  Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, 77);
  x(1, 4, 2) = std::numeric_limits<float>::quiet_NaN();
  const Tensor<float, 4> logits = st::random_tensor<4>({B, T, H, K}, 78);
  for (const auto padding : kDynConvPaddings) {
    Tensor<float, 3> y({B, T, D});
    seqmix::dynamic_conv({x.cview(), logits.cview()}, {y.view()}, {padding}, st::two_thread_pool());
    const index_t lead = padding == seqmix::LocalConvPadding::causal ? K - 1 : (K - 1) / 2;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t c = 0; c < D; ++c) {
          const bool holds = b == 1 && c == 2 && t - lead <= 4 && 4 <= t - lead + K - 1;
          INFO("b=" << b << " t=" << t << " c=" << c);
          REQUIRE(std::isnan(y(b, t, c)) == holds);
        }
  }
}

TEST_CASE("lightweight_conv and dynamic_conv: bad arguments refused before any write", "[dynamic_conv][errors]") {
  const Tensor<float, 3> x = st::random_tensor<3>({2, 5, 6}, 3);
  Tensor<float, 3> y({2, 5, 6});
  for (index_t i = 0; i < y.size(0) * 30; ++i) y.data()[i] = 42.f;
  const auto untouched = [&] {
    for (index_t i = 0; i < 60; ++i) REQUIRE(y.data()[i] == 42.f);
  };
  Tensor<float, 2> w = st::random_tensor<2>({2, 3}, 4);
  Tensor<float, 2> w4({4, 3}), w0({2, 0});
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({x.cview(), w4.cview()}, {y.view()}), seqmix::ShapeError);  // 4 !| 6
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({x.cview(), w0.cview()}, {y.view()}), seqmix::ShapeError);  // K = 0
  Tensor<float, 3> ybad({2, 4, 6});
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({x.cview(), w.cview()}, {ybad.view()}), seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({x.cview(), w.cview()}, {y.view()},
                                             {static_cast<seqmix::LocalConvPadding>(5)}),
                    seqmix::ShapeError);
  w(1, 2) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({x.cview(), w.cview()}, {y.view()}), seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::reference::lightweight_conv({x.cview(), w.cview()}, {y.view()}), seqmix::ShapeError);
  Tensor<float, 4> logits = st::random_tensor<4>({2, 5, 3, 2}, 5);
  Tensor<float, 4> logits_t({2, 4, 3, 2});
  REQUIRE_THROWS_AS(seqmix::dynamic_conv({x.cview(), logits_t.cview()}, {y.view()}), seqmix::ShapeError);
  logits(1, 4, 2, 1) = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_AS(seqmix::dynamic_conv({x.cview(), logits.cview()}, {y.view()}), seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::reference::dynamic_conv({x.cview(), logits.cview()}, {y.view()}), seqmix::ShapeError);
  untouched();
  // y overlapping x.
  Tensor<float, 3> buf = st::random_tensor<3>({2, 5, 6}, 6);
  const Tensor<float, 2> wok = st::random_tensor<2>({2, 3}, 7);
  REQUIRE_THROWS_AS(seqmix::lightweight_conv({buf.cview(), wok.cview()}, {buf.view()}), seqmix::ShapeError);
  // Steps: wrong state shape, non-finite logits; y and state untouched.
  Tensor<float, 2> xt = st::random_tensor<2>({2, 6}, 8), yt({2, 6});
  Tensor<float, 3> state({2, 2, 6}), bad_state({2, 3, 6});
  for (index_t i = 0; i < 12; ++i) yt.data()[i] = 42.f;
  for (index_t i = 0; i < 24; ++i) state.data()[i] = 42.f;
  REQUIRE_THROWS_AS(seqmix::lightweight_conv_step({xt.cview(), wok.cview()}, {yt.view(), bad_state.view()}),
                    seqmix::ShapeError);
  Tensor<float, 3> lt = st::random_tensor<3>({2, 2, 3}, 9);
  lt(0, 1, 0) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_AS(seqmix::dynamic_conv_step({xt.cview(), lt.cview()}, {yt.view(), state.view()}),
                    seqmix::ShapeError);
  for (index_t i = 0; i < 12; ++i) REQUIRE(yt.data()[i] == 42.f);
  for (index_t i = 0; i < 24; ++i) REQUIRE(state.data()[i] == 42.f);
}
