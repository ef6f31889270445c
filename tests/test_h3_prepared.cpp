// h3 with prepared filter spectra (h3_filter_spectra): equal to the unprepared call and the
// reference over head sizes that tile the FFT block (the prepared diagonal path) and odd ones
// (its fallback), T = 1, 7 and not powers of two, B > 1, several heads, reverse, 1 / 2 / 64
// threads; a non-finite input on the tiled path; bad spectra refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/h3_case.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LongConvMethod;
using seqmix::Tensor;
namespace st = seqmix::testing;

using Case = st::H3Case;

struct Data {
  Tensor<float, 4> q, k, v;
  Tensor<float, 2> shift, diag;

  explicit Data(const Case& c)
      : q(st::random_tensor<4>({c.B, c.T, c.H, c.P}, c.seed)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.P}, c.seed + 1)),
        v(st::random_tensor<4>({c.B, c.T, c.H, c.P}, c.seed + 2)),
        shift(st::random_tensor<2>({c.Ls, c.H * c.P}, c.seed + 3)),
        diag(st::random_tensor<2>({c.L, c.H * c.P}, c.seed + 4, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))) {}

  seqmix::H3Inputs inputs() const { return {q.cview(), k.cview(), v.cview(), shift.cview(), diag.cview()}; }
};

// The FFT's channel block (2 * simd::kWidth): head sizes that are multiples of it take the
// prepared (tiled) diagonal path.
constexpr index_t kBlock = 2 * seqmix::simd::kWidth;

TEST_CASE("h3 prepared: equals the unprepared call and the reference", "[h3]") {
  const Case cases[] = {
      {1, 1, 1, kBlock, 1, 1, 1},        {2, 7, 2, kBlock, 2, 7, 2},    {1, 100, 1, 2 * kBlock, 3, 100, 3},
      {2, 77, 2, kBlock, 4, 40, 4},      {1, 61, 3, 5, 2, 61, 5},       {2, 45, 1, 17, 3, 45, 6},
      {1, 130, 1, kBlock + 3, 2, 130, 7},
      {1, 20, 1, 3 * kBlock, 2, 20, 8}};  // SSE2: P = 24 in value blocks of 10, 10 and 4
  for (const Case& c : cases) {
    INFO(c.describe());
    const Data data(c);
    const seqmix::H3FilterSpectra prepared =
        seqmix::h3_filter_spectra(data.shift.cview(), data.diag.cview(), {c.H, c.T}, st::two_thread_pool());
    REQUIRE(prepared.diag.size() == static_cast<std::size_t>(c.H));
    for (bool reverse : {false, true}) {
      Tensor<float, 4> ref({c.B, c.T, c.H, c.P});
      seqmix::reference::h3(data.inputs(), {ref.view()}, {LongConvMethod::automatic, reverse});
      for (LongConvMethod method : {LongConvMethod::fft, LongConvMethod::automatic, LongConvMethod::direct})
        for (int threads : {1, 2, 64}) {
          INFO("reverse " << reverse << " method " << int(method) << " threads " << threads);
          const seqmix::H3Options options{method, reverse};
          st::CountingExecutor ex(threads);
          Tensor<float, 4> plain({c.B, c.T, c.H, c.P}), got({c.B, c.T, c.H, c.P});
          seqmix::h3(data.inputs(), {plain.view()}, options, ex);
          seqmix::h3(data.inputs(), prepared, {got.view()}, options, ex);
          st::require_close("y", got.cview(), ref.cview(), 3e-5);
          st::require_close("y", got.cview(), plain.cview(), 3e-5);
        }
    }
  }
}

TEST_CASE("h3 prepared: a non-finite value reaches only the outputs that read it", "[h3]") {
  const Case c{2, 50, 1, kBlock, 2, 50, 11};
  Data data(c);
  data.v(1, 20, 0, 3) = std::numeric_limits<float>::quiet_NaN();
  const seqmix::H3FilterSpectra prepared = seqmix::h3_filter_spectra(data.shift.cview(), data.diag.cview(), {c.H, c.T});
  Tensor<float, 4> plain({c.B, c.T, c.H, c.P}), got({c.B, c.T, c.H, c.P});
  seqmix::h3(data.inputs(), {plain.view()}, {LongConvMethod::fft});
  seqmix::h3(data.inputs(), prepared, {got.view()}, {LongConvMethod::fft});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t j = 0; j < c.P; ++j) {
        INFO("b " << b << " t " << t << " j " << j);
        const bool reads_nan = b == 1 && t >= 20 && j == 3;
        REQUIRE(std::isfinite(got(b, t, 0, j)) == !reads_nan);
        if (!reads_nan) REQUIRE(got(b, t, 0, j) == Approx(plain(b, t, 0, j)).margin(3e-5));
      }
}

TEST_CASE("h3 prepared: spectra that do not serve the call are refused before any write", "[h3]") {
  const Case c{2, 40, 2, kBlock, 3, 40, 21};
  const Data data(c);
  Tensor<float, 4> y({c.B, c.T, c.H, c.P});
  y.fill(7.f);
  const auto call = [&](const seqmix::H3FilterSpectra& prepared, const seqmix::H3Inputs& in) {
    return [&prepared, in, &y] { seqmix::h3(in, prepared, {y.view()}); };
  };
  const auto spectra = [&](const Tensor<float, 2>& shift, const Tensor<float, 2>& diag, index_t heads, index_t max_T) {
    return seqmix::h3_filter_spectra(shift.cview(), diag.cview(), {heads, max_T});
  };
  st::require_shape_error("prepared", call(seqmix::H3FilterSpectra{}, data.inputs()));
  st::require_shape_error("prepared", call(spectra(data.shift, data.diag, 1, c.T), data.inputs()));  // P = 2 kBlock
  st::require_shape_error("prepared.shift[0]", call(spectra(data.shift, data.diag, c.H, c.T - 1), data.inputs()));
  st::require_shape_error("prepared.shift[0]", call(spectra(data.shift, data.diag, c.H, 4 * c.T), data.inputs()));
  const Tensor<float, 2> longer = st::random_tensor<2>({c.L + 1, c.H * c.P}, 5);
  st::require_shape_error("prepared.diag[0]", call(spectra(data.shift, longer, c.H, c.T), data.inputs()));
  // Bad call arguments are still named as in the unprepared call.
  const seqmix::H3FilterSpectra good = spectra(data.shift, data.diag, c.H, c.T);
  seqmix::H3Inputs wrong = data.inputs();
  const Tensor<float, 4> k_short({c.B, c.T, c.H, c.P - 1});
  wrong.k = k_short.cview();
  st::require_shape_error("k", call(good, wrong));
  for (float value : y) REQUIRE(value == 7.f);

  // The maker's own checks.
  st::require_shape_error("shape.heads", [&] { spectra(data.shift, data.diag, 0, c.T); });
  st::require_shape_error("shift_filter", [&] { spectra(data.shift, data.diag, 3, c.T); });
  const Tensor<float, 2> narrow({c.L, c.H * c.P - 1});
  st::require_shape_error("diag_filter", [&] { spectra(data.shift, narrow, c.H, c.T); });
  Tensor<float, 2> bad = data.diag;
  bad(1, 2) = std::numeric_limits<float>::infinity();
  st::require_shape_error("diag_filter", [&] { spectra(data.shift, bad, c.H, c.T); });
}

}  // namespace
