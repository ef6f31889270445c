// masked_mixer (learned lower-triangular T x T token mixing, issue 16 item 6): the blocked fast
// form against the double loops over ragged T (T = 1, T not a multiple of the 64-row block),
// shared / per-group / per-channel matrices, B > 1, odd channel counts; decode steps over growing
// prefixes equal the prefill; upper-triangle entries never read; bad arguments refused before
// any write.
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

// Steps over the growing prefixes x[:, 0..t] (the history is a view into x), collected into [B,T,D].
Tensor<float, 3> maskmix_run_steps(const Tensor<float, 3>& x, const Tensor<float, 3>& w) {
  const index_t B = x.size(0), T = x.size(1), D = x.size(2);
  Tensor<float, 3> y({B, T, D});
  Tensor<float, 2> yt({B, D});
  for (index_t t = 0; t < T; ++t) {
    seqmix::masked_mixer_step({x.cview().slice(1, 0, t + 1), w.cview()}, {yt.view()},
                              t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) y(b, t, c) = yt(b, c);
  }
  return y;
}

}  // namespace

TEST_CASE("masked_mixer: blocked fast form and steps match the definition", "[masked_mixer]") {
  std::uint64_t seed = 1660;
  for (index_t T : {1, 7, 64, 150})
    for (index_t G : {1, 3, 15}) {
      const index_t B = 2, D = 15, L = T + 3;  // odd D; G = D is one matrix per channel
      INFO("T=" << T << " G=" << G);
      const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
      const Tensor<float, 3> w = st::random_tensor<3>({G, L, L}, seed++, -0.3f, 0.3f);
      Tensor<float, 3> ref({B, T, D}), y({B, T, D});
      seqmix::reference::masked_mixer({x.cview(), w.cview()}, {ref.view()});
      seqmix::masked_mixer({x.cview(), w.cview()}, {y.view()}, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("masked_mixer y", y.cview(), ref.cview(), 1e-5);
      if (T <= 64) st::require_close("masked_mixer steps", maskmix_run_steps(x, w).cview(), ref.cview(), 1e-5);
    }
}

TEST_CASE("masked_mixer: a hand case, the mask and a strided input", "[masked_mixer]") {
  // G = 1, T = 3: y[t] = sum_{s<=t} W[t,s] x[s]; NaN above the diagonal is never read.
  Tensor<float, 3> x({1, 3, 1}), y({1, 3, 1}), w({1, 3, 3});
  x(0, 0, 0) = 1.f, x(0, 1, 0) = 2.f, x(0, 2, 0) = 4.f;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float rows[3][3] = {{2.f, nan, nan}, {1.f, -1.f, nan}, {0.5f, 0.25f, 1.f}};
  for (index_t t = 0; t < 3; ++t)
    for (index_t s = 0; s < 3; ++s) w(0, t, s) = rows[t][s];
  seqmix::masked_mixer({x.cview(), w.cview()}, {y.view()});
  REQUIRE(y(0, 0, 0) == Approx(2.f));
  REQUIRE(y(0, 1, 0) == Approx(-1.f));
  REQUIRE(y(0, 2, 0) == Approx(5.f));
  // Causality: changing x after t leaves y[0..t] unchanged (bitwise).
  const Tensor<float, 3> xa = st::random_tensor<3>({2, 100, 6}, 5), w2 = st::random_tensor<3>({2, 100, 100}, 6);
  Tensor<float, 3> xb = xa, ya({2, 100, 6}), yb({2, 100, 6});
  for (index_t t = 70; t < 100; ++t)
    for (index_t c = 0; c < 6; ++c) xb(1, t, c) += 1.f;
  seqmix::masked_mixer({xa.cview(), w2.cview()}, {ya.view()});
  seqmix::masked_mixer({xb.cview(), w2.cview()}, {yb.view()});
  for (index_t t = 0; t < 70; ++t)
    for (index_t c = 0; c < 6; ++c) REQUIRE(ya(1, t, c) == yb(1, t, c));
  // A strided x (every other channel of a wider tensor) gives the contiguous result.
  const Tensor<float, 3> wide = st::random_tensor<3>({2, 9, 10}, 7);
  Tensor<float, 3> packed({2, 9, 5}), ys({2, 9, 5}), yp({2, 9, 5});
  for (index_t b = 0; b < 2; ++b)
    for (index_t t = 0; t < 9; ++t)
      for (index_t c = 0; c < 5; ++c) packed(b, t, c) = wide(b, t, 2 * c);
  const seqmix::ConstView<float, 3> strided(wide.data(), {2, 9, 5}, {90, 10, 2});
  const Tensor<float, 3> w5 = st::random_tensor<3>({5, 12, 12}, 8);
  seqmix::masked_mixer({strided, w5.cview()}, {ys.view()}, st::two_thread_pool());
  seqmix::reference::masked_mixer({packed.cview(), w5.cview()}, {yp.view()});
  st::require_close("strided x", ys.cview(), yp.cview(), 1e-5);
}

TEST_CASE("masked_mixer: bad arguments refused before any write", "[masked_mixer][errors]") {
  const Tensor<float, 3> x = st::random_tensor<3>({2, 5, 6}, 3);
  Tensor<float, 3> y({2, 5, 6});
  for (index_t i = 0; i < 60; ++i) y.data()[i] = 42.f;
  const auto untouched = [&] {
    for (index_t i = 0; i < 60; ++i) REQUIRE(y.data()[i] == 42.f);
  };
  Tensor<float, 3> w = st::random_tensor<3>({2, 5, 5}, 4);
  const Tensor<float, 3> w4({4, 5, 5}), wshort({2, 4, 4}), wrect({2, 5, 6});
  st::require_shape_error("weight", [&] { seqmix::masked_mixer({x.cview(), w4.cview()}, {y.view()}); });  // 4 !| 6
  st::require_shape_error("weight", [&] { seqmix::masked_mixer({x.cview(), wshort.cview()}, {y.view()}); });  // L < T
  st::require_shape_error("weight", [&] { seqmix::masked_mixer({x.cview(), wrect.cview()}, {y.view()}); });
  Tensor<float, 3> ybad({2, 4, 6});
  st::require_shape_error("y", [&] { seqmix::masked_mixer({x.cview(), w.cview()}, {ybad.view()}); });
  w(1, 4, 2) = std::numeric_limits<float>::infinity();
  st::require_shape_error("weight", [&] { seqmix::masked_mixer({x.cview(), w.cview()}, {y.view()}); });
  st::require_shape_error("weight", [&] { seqmix::reference::masked_mixer({x.cview(), w.cview()}, {y.view()}); });
  untouched();
  Tensor<float, 3> buf = st::random_tensor<3>({2, 5, 6}, 6);
  const Tensor<float, 3> wok = st::random_tensor<3>({2, 5, 5}, 7);
  st::require_shape_error("y", [&] { seqmix::masked_mixer({buf.cview(), wok.cview()}, {buf.view()}); });
  // Steps: empty history, history longer than L, non-finite row; y untouched.
  Tensor<float, 2> yt({2, 6});
  for (index_t i = 0; i < 12; ++i) yt.data()[i] = 42.f;
  const Tensor<float, 3> h0({2, 0, 6}), h6 = st::random_tensor<3>({2, 6, 6}, 9);
  st::require_shape_error("history", [&] { seqmix::masked_mixer_step({h0.cview(), wok.cview()}, {yt.view()}); });
  st::require_shape_error("history", [&] { seqmix::masked_mixer_step({h6.cview(), wok.cview()}, {yt.view()}); });
  st::require_shape_error("weight", [&] { seqmix::masked_mixer_step({x.cview(), w.cview()}, {yt.view()}); });
  for (index_t i = 0; i < 12; ++i) REQUIRE(yt.data()[i] == 42.f);
}
