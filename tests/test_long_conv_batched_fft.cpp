// long_conv's batched FFT (lti/long_conv/batched_fft.hpp) on its own: the forward transform of
// every lane against a double-precision DFT and the inverse undoing it, at lengths that take each
// path: in cache only with an even or odd number of levels (radix-4 stages, plus one radix-2
// stage when odd: N = 2, 8, 128, 512, 2048), and above the 2048-element cache block one radix-2
// pass (4096), radix-4 passes (8192, 32768, 131072: 1, 2, 3) or both (16384).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <vector>

#include "seqmix/lti/long_conv/batched_fft.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace sd = seqmix::detail;
namespace st = seqmix::testing;

// A batched signal of n elements, every lane's real and imaginary part uniform in [-1, 1).
std::vector<float, seqmix::AlignedAllocator<float>> batched_signal(index_t n, std::uint64_t seed) {
  const auto values = st::random_tensor<1>({n * sd::kFftElement}, seed);
  return {values.data(), values.data() + n * sd::kFftElement};
}

std::complex<double> lane_value(const float* x, index_t j, index_t lane) {
  const float* e = x + j * sd::kFftElement;
  return {e[lane], e[seqmix::simd::kWidth + lane]};
}

// Frequency k of one lane by the defining sum, in double.
std::complex<double> dft(const float* x, index_t n, index_t lane, index_t k) {
  std::complex<double> acc = 0;
  const double step = -2.0 * 3.14159265358979323846 / static_cast<double>(n);
  for (index_t j = 0; j < n; ++j)
    acc += lane_value(x, j, lane) * std::polar(1.0, step * static_cast<double>((j * k) % n));
  return acc;
}

}  // namespace

TEST_CASE("long_conv batched FFT: forward against a double DFT, inverse undoes it", "[long_conv]") {
  const bool small = st::small_test_scale();
  std::vector<index_t> lengths = {2, 4, 8, 64, 128, 256, 512, 2048, 4096, 8192, 16384, 32768};
  if (!small) lengths.push_back(131072);
  std::uint64_t seed = 40;
  for (index_t n : lengths) {
    INFO("N = " << n);
    const auto x = batched_signal(n, seed++);
    auto y = x;
    const sd::FftTwiddles tw(n);
    sd::batched_fft_forward(y.data(), tw);
    // Rounding grows like log2 N times the spectrum's size, sqrt(N) for these inputs.
    const double tol = 2e-7 * std::log2(static_cast<double>(n)) * std::sqrt(static_cast<double>(n)) + 1e-6;
    // All frequencies of the short ones, 40 spread over the spectrum of the long ones; lanes 0,
    // the last, and one between.
    const index_t checks = n <= 512 ? n : 40;
    for (index_t lane : {index_t{0}, index_t{seqmix::simd::kWidth / 2}, index_t{seqmix::simd::kWidth - 1}})
      for (index_t c = 0; c < checks; ++c) {
        const index_t k = n <= 512 ? c : (c * 7919 + 3) % n;
        const std::complex<double> want = dft(x.data(), n, lane, k);
        const std::complex<double> got = lane_value(y.data(), tw.reverse(k), lane);  // bit-reversed output
        INFO("lane " << lane << " frequency " << k);
        CHECK(std::abs(got - want) <= tol);
      }
    sd::batched_fft_inverse(y.data(), tw);
    double worst = 0;
    for (index_t i = 0; i < n * sd::kFftElement; ++i)
      worst = std::max(worst, std::abs(static_cast<double>(y[static_cast<std::size_t>(i)]) / static_cast<double>(n) -
                                       x[static_cast<std::size_t>(i)]));
    CHECK(worst <= 1e-6 * std::log2(static_cast<double>(n)) + 1e-7);
  }
}

TEST_CASE("long_conv batched FFT: grouped radix-8 twiddles and the length-4 stage", "[long_conv]") {
  const index_t n = 4096;
  const sd::FftTwiddles tw(n);
  // Group j of the stage of length len holds the table's w^(j s1), w^((j+e) s1), w^((j+2e) s1),
  // w^((j+3e) s1), w^(2 j s1), w^(2 (j+e) s1), w^(4 j s1) (s1 = n / len), real parts then imaginary.
  for (index_t len = 8; len <= n; len *= 2) {
    const index_t e = len / 8, s1 = n / len;
    for (index_t j = 0; j < e; ++j) {
      const float* g = tw.stage8_twiddles(len) + j * sd::kFftGroup8Floats;
      const index_t at[7] = {j * s1, (j + e) * s1, (j + 2 * e) * s1, (j + 3 * e) * s1, 2 * j * s1, 2 * (j + e) * s1, 4 * j * s1};
      for (int i = 0; i < 7; ++i) {
        INFO("len " << len << " group " << j << " twiddle " << i);
        CHECK(g[i] == tw.re[static_cast<std::size_t>(at[i])]);
        CHECK(g[8 + i] == tw.im[static_cast<std::size_t>(at[i])]);
      }
    }
  }
  // The multiplication-free stage of length 4 against the general radix-4 stage, both ways.
  for (bool inverse : {false, true}) {
    const auto x = batched_signal(64, inverse ? 51 : 50);
    auto general = x, short_form = x;
    if (inverse) {
      sd::fft_stage_all<true, 4>(general.data(), 64, 4, tw);
      sd::fft_stage4_short<true>(short_form.data(), 64);
    } else {
      sd::fft_stage_all<false, 4>(general.data(), 64, 4, tw);
      sd::fft_stage4_short<false>(short_form.data(), 64);
    }
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(double(general[i]) - short_form[i]));
    INFO("inverse " << inverse);
    CHECK(worst <= 1e-6);
  }
}
