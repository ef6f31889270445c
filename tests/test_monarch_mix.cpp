// monarch_mix (order-2 Monarch matrices P L P^T R over the token axis, Fu et al. 2023) and its
// causal variant (the zero-padded Monarch DFT product, a causal convolution): fast forms against
// the double definitions over ragged T (T = 1, T below b*b so padding applies), shared /
// per-group / per-channel blocks, B > 1, odd channel counts; the literal factors against the
// index formula by hand; causality; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

}  // namespace

TEST_CASE("monarch_mix: the GEMM form matches the four factors applied in double", "[monarch_mix]") {
  std::uint64_t seed = 1690;
  for (index_t T : {1, 4, 7, 16, 50})
    for (index_t G : {1, 3, 9}) {
      const index_t B = 2, D = 9, b = T == 16 ? 5 : static_cast<index_t>(std::ceil(std::sqrt(double(T))));
      INFO("T=" << T << " G=" << G << " b=" << b);
      const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
      const Tensor<float, 4> left = st::random_tensor<4>({G, b, b, b}, seed++), right = st::random_tensor<4>({G, b, b, b}, seed++);
      Tensor<float, 3> ref({B, T, D}), y({B, T, D});
      seqmix::reference::monarch_mix({x.cview(), left.cview(), right.cview()}, {ref.view()});
      seqmix::monarch_mix({x.cview(), left.cview(), right.cview()}, {y.view()},
                          seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("monarch_mix y", y.cview(), ref.cview(), 1e-5);
    }
  // A wide group (more channels than one GEMM run) and a strided x.
  const Tensor<float, 3> wide = st::random_tensor<3>({2, 10, 2 * 70}, 1700);
  const seqmix::ConstView<float, 3> x(wide.data(), {2, 10, 70}, {10 * 140, 140, 2});
  Tensor<float, 3> packed({2, 10, 70}), ref({2, 10, 70}), y({2, 10, 70});
  for (index_t bt = 0; bt < 2; ++bt)
    for (index_t t = 0; t < 10; ++t)
      for (index_t c = 0; c < 70; ++c) packed(bt, t, c) = x(bt, t, c);
  const Tensor<float, 4> left = st::random_tensor<4>({1, 4, 4, 4}, 1701), right = st::random_tensor<4>({1, 4, 4, 4}, 1702);
  seqmix::reference::monarch_mix({packed.cview(), left.cview(), right.cview()}, {ref.view()});
  seqmix::monarch_mix({x, left.cview(), right.cview()}, {y.view()}, st::two_thread_pool());
  st::require_close("monarch_mix strided", y.cview(), ref.cview(), 1e-5);
}

TEST_CASE("monarch_mix: the index formula by hand and the identity blocks", "[monarch_mix]") {
  // b = 2, T = 3 (padded to 4): y[m*2 + i] = sum_k left[i][m,k] sum_j right[k][i,j] x[k*2 + j].
  const index_t b = 2, T = 3;
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, 1}, 11);
  const Tensor<float, 4> left = st::random_tensor<4>({1, b, b, b}, 12), right = st::random_tensor<4>({1, b, b, b}, 13);
  Tensor<float, 3> y({1, T, 1});
  seqmix::monarch_mix({x.cview(), left.cview(), right.cview()}, {y.view()});
  for (index_t m = 0; m < b; ++m)
    for (index_t i = 0; i < b; ++i) {
      if (m * b + i >= T) continue;
      double acc = 0.0;
      for (index_t k = 0; k < b; ++k)
        for (index_t j = 0; j < b; ++j)
          if (k * b + j < T) acc += double(left(0, i, m, k)) * right(0, k, i, j) * x(0, k * b + j, 0);
      REQUIRE(y(0, m * b + i, 0) == Approx(acc).epsilon(1e-5));
    }
  // Identity blocks: M = P P = I.
  Tensor<float, 4> eye({1, 3, 3, 3});
  for (index_t k = 0; k < 3; ++k)
    for (index_t i = 0; i < 3; ++i)
      for (index_t j = 0; j < 3; ++j) eye(0, k, i, j) = i == j ? 1.f : 0.f;
  const Tensor<float, 3> x8 = st::random_tensor<3>({2, 8, 3}, 14);
  Tensor<float, 3> y8({2, 8, 3});
  seqmix::monarch_mix({x8.cview(), eye.cview(), eye.cview()}, {y8.view()});
  st::require_close("identity", y8.cview(), x8.cview(), 1e-7);
}

TEST_CASE("monarch_mix_causal: the Monarch DFT product is the causal convolution", "[monarch_mix]") {
  std::uint64_t seed = 1710;
  for (index_t T : {1, 2, 7, 40, 130})
    for (index_t L : {1, 5, 200}) {
      const index_t B = 2, D = T == 130 ? 67 : 5;  // 67: two channel runs
      INFO("T=" << T << " L=" << L << " D=" << D);
      const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
      const Tensor<float, 2> h = st::random_tensor<2>({L, D}, seed++, -0.3f, 0.3f);
      Tensor<float, 3> ref({B, T, D}), y({B, T, D});
      seqmix::reference::monarch_mix_causal({x.cview(), h.cview()}, {ref.view()});
      seqmix::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("causal y", y.cview(), ref.cview(), 2e-5);
      // Decode is long_conv_step with the same filter: long_conv computes the same map.
      Tensor<float, 3> lc({B, T, D});
      seqmix::long_conv({x.cview(), h.cview()}, {lc.view()});
      st::require_close("causal vs long_conv", y.cview(), lc.cview(), 2e-5);
    }
}

TEST_CASE("monarch_mix_causal: output t does not depend on inputs after t", "[monarch_mix]") {
  // Exact in the definition; the fast form mixes every token in its transforms, so later inputs
  // reach y[t] only through float rounding: inputs after `cut` raised to about 100x the size of x
  // move y[0..cut] by no more than 1e-5 of that size.
  const index_t B = 2, T = 60, D = 3, cut = 25;
  const Tensor<float, 3> xa = st::random_tensor<3>({B, T, D}, 21);
  const Tensor<float, 2> h = st::random_tensor<2>({T, D}, 22);
  Tensor<float, 3> xb = xa, ya({B, T, D}), yb({B, T, D}), ra({B, T, D}), rb({B, T, D});
  for (index_t t = cut + 1; t < T; ++t)
    for (index_t c = 0; c < D; ++c) xb(1, t, c) = 100.f * (1.f + xb(1, t, c));
  seqmix::monarch_mix_causal({xa.cview(), h.cview()}, {ya.view()});
  seqmix::monarch_mix_causal({xb.cview(), h.cview()}, {yb.view()});
  seqmix::reference::monarch_mix_causal({xb.cview(), h.cview()}, {rb.view()});
  const Tensor<float, 3> ya_head = [&] {
    Tensor<float, 3> r({B, cut + 1, D});
    for (index_t bt = 0; bt < B; ++bt)
      for (index_t t = 0; t <= cut; ++t)
        for (index_t c = 0; c < D; ++c) r(bt, t, c) = ya(bt, t, c);
    return r;
  }();
  double worst = 0.0, scale = 0.0;
  for (index_t bt = 0; bt < B; ++bt)
    for (index_t t = 0; t <= cut; ++t)
      for (index_t c = 0; c < D; ++c) {
        worst = std::max(worst, std::fabs(double(yb(bt, t, c)) - ya_head(bt, t, c)));
        scale = std::max(scale, std::fabs(double(ya_head(bt, t, c))));
      }
  INFO("worst change of y[0..cut] " << worst << " against max |y| " << scale);
  REQUIRE(worst <= 1e-5 * std::max(1.0, scale) * 100.0);
  // The perturbed later inputs do change the later outputs (the test would catch a no-op).
  REQUIRE(std::fabs(yb(1, T - 1, 0) - ya(1, T - 1, 0)) > 1.f);
  st::require_close("perturbed", yb.cview(), rb.cview(), 2e-5);
}

TEST_CASE("monarch_mix: bad arguments refused before any write", "[monarch_mix][errors]") {
  const Tensor<float, 3> x = st::random_tensor<3>({2, 5, 6}, 3);
  Tensor<float, 3> y({2, 5, 6});
  for (index_t i = 0; i < 60; ++i) y.data()[i] = 42.f;
  Tensor<float, 4> left = st::random_tensor<4>({2, 3, 3, 3}, 4);
  const Tensor<float, 4> right = st::random_tensor<4>({2, 3, 3, 3}, 5), small({2, 2, 2, 2}), g4({4, 3, 3, 3}),
                         rect({2, 3, 3, 2}), right1({1, 3, 3, 3});
  const auto call = [&](const Tensor<float, 4>& l, const Tensor<float, 4>& r) {
    seqmix::monarch_mix({x.cview(), l.cview(), r.cview()}, {y.view()});
  };
  st::require_shape_error("left", [&] { call(small, small); });  // b*b = 4 < T = 5
  st::require_shape_error("left", [&] { call(g4, g4); });        // 4 groups do not divide 6
  st::require_shape_error("left", [&] { call(rect, rect); });
  st::require_shape_error("right", [&] { call(left, right1); });
  Tensor<float, 3> ybad({2, 5, 5});
  st::require_shape_error("y", [&] { seqmix::monarch_mix({x.cview(), left.cview(), right.cview()}, {ybad.view()}); });
  left(1, 2, 0, 1) = std::numeric_limits<float>::quiet_NaN();
  st::require_shape_error("left", [&] { call(left, right); });
  st::require_shape_error("left", [&] { seqmix::reference::monarch_mix({x.cview(), left.cview(), right.cview()}, {y.view()}); });
  Tensor<float, 2> h = st::random_tensor<2>({4, 6}, 6);
  const Tensor<float, 2> h0({0, 6}), hd({4, 5});
  st::require_shape_error("filter", [&] { seqmix::monarch_mix_causal({x.cview(), h0.cview()}, {y.view()}); });
  st::require_shape_error("filter", [&] { seqmix::monarch_mix_causal({x.cview(), hd.cview()}, {y.view()}); });
  h(3, 5) = std::numeric_limits<float>::infinity();
  st::require_shape_error("filter", [&] { seqmix::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}); });
  for (index_t i = 0; i < 60; ++i) REQUIRE(y.data()[i] == 42.f);
  Tensor<float, 3> buf = st::random_tensor<3>({2, 5, 6}, 7);
  const Tensor<float, 2> hok = st::random_tensor<2>({4, 6}, 8);
  st::require_shape_error("y", [&] { seqmix::monarch_mix_causal({buf.cview(), hok.cview()}, {buf.view()}); });
}
