// The SIMD compatibility layer: horizontal reductions, dot/axpy tails, and reduce_add_rows,
// which must give lane i = sum of row i on every instruction set (xsimd 8.1's AVX-512 haddp
// permutes its lanes; simd.hpp corrects that).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "seqmix/core/simd.hpp"

using seqmix::simd::Batch;
using seqmix::simd::kFloatWidth;
using seqmix::simd::kWidth;

namespace {

Batch<float> batch_from(const float* values) { return seqmix::simd::load(values); }

}  // namespace

TEST_CASE("reduce_add and reduce_max see every lane", "[simd]") {
  std::vector<float> lanes(kFloatWidth);
  for (std::size_t i = 0; i < kFloatWidth; ++i) lanes[i] = static_cast<float>(i + 1);
  const Batch<float> v = batch_from(lanes.data());
  const float n = static_cast<float>(kFloatWidth);
  CHECK(seqmix::simd::reduce_add(v) == Approx(n * (n + 1) / 2));
  CHECK(seqmix::simd::reduce_max(v) == n);
  lanes[kFloatWidth / 2] = 1000.f;
  CHECK(seqmix::simd::reduce_max(batch_from(lanes.data())) == 1000.f);
}

TEST_CASE("reduce_add_rows puts the sum of row i in lane i", "[simd]") {
  std::vector<Batch<float>> rows;
  std::vector<float> expected(kFloatWidth, 0.f);
  std::vector<float> values(kFloatWidth);
  for (std::size_t r = 0; r < kFloatWidth; ++r) {
    for (std::size_t i = 0; i < kFloatWidth; ++i) {
      values[i] = static_cast<float>((r + 1) * 100 + i);  // distinct sums per row
      expected[r] += values[i];
    }
    rows.push_back(batch_from(values.data()));
  }
  std::vector<float> sums(kFloatWidth);
  seqmix::simd::store(sums.data(), seqmix::simd::reduce_add_rows(rows.data()));
  for (std::size_t r = 0; r < kFloatWidth; ++r) {
    INFO("lane " << r << " of " << kFloatWidth << " (" << seqmix::simd::arch_name() << ")");
    CHECK(sums[r] == expected[r]);
  }
}

TEST_CASE("dot and axpy handle ragged tails", "[simd]") {
  for (std::ptrdiff_t n : {std::ptrdiff_t{0}, std::ptrdiff_t{1}, kWidth - 1, kWidth, kWidth + 1, 3 * kWidth + 2, std::ptrdiff_t{1000}}) {
    CAPTURE(n);
    std::vector<float> a(static_cast<std::size_t>(n)), b(a.size()), y(a.size());
    double expected_dot = 0.0;
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      a[i] = std::sin(0.1f * static_cast<float>(i));
      b[i] = std::cos(0.3f * static_cast<float>(i));
      y[i] = static_cast<float>(i);
      expected_dot += static_cast<double>(a[i]) * b[i];
    }
    CHECK(seqmix::simd::dot(a.data(), b.data(), n) == Approx(expected_dot).margin(1e-4));
    seqmix::simd::axpy(2.f, a.data(), y.data(), n);
    for (std::ptrdiff_t i = 0; i < n; ++i) REQUIRE(y[i] == Approx(static_cast<float>(i) + 2.f * a[i]));
  }
}

TEST_CASE("vector exp matches std::exp", "[simd]") {
  std::vector<float> x(kFloatWidth), out(kFloatWidth);
  for (float start : {-80.f, -20.f, -1.f, 0.f, 5.f}) {
    for (std::size_t i = 0; i < kFloatWidth; ++i) x[i] = start + 0.37f * static_cast<float>(i);
    seqmix::simd::store(out.data(), seqmix::simd::exp(batch_from(x.data())));
    for (std::size_t i = 0; i < kFloatWidth; ++i) {
      CAPTURE(x[i]);
      CHECK(out[i] == Approx(std::exp(x[i])).epsilon(1e-6));
    }
  }
}

// The softmax's exp (arguments s - max <= 0): within about one ulp of e^x in double over an even
// sweep of [-87.33, 0] (every 997th float of the range's bit patterns, ~1.1 million values, and
// the lanes in every position), exactly 1 at 0, 0 for -inf and below the range, NaN kept.
TEST_CASE("exp_nonpositive is within one ulp of exp on the softmax's range", "[simd]") {
  using seqmix::simd::exp_nonpositive;
  std::vector<float> x(kFloatWidth), out(kFloatWidth);
  double worst = 0.0;
  float worst_at = 0.f;
  std::uint32_t bits = 0x80000000u;  // -0, then more negative floats down to -87.33
  const std::uint32_t last = 0xC2AEA8F6u;  // -87.33f
  while (bits <= last) {
    for (std::size_t i = 0; i < kFloatWidth; ++i, bits += 997) {
      const std::uint32_t b = std::min(bits, last);
      std::memcpy(&x[i], &b, sizeof b);
    }
    seqmix::simd::store(out.data(), exp_nonpositive(batch_from(x.data())));
    for (std::size_t i = 0; i < kFloatWidth; ++i) {
      const double exact = std::exp(static_cast<double>(x[i]));
      const double rel = std::abs(static_cast<double>(out[i]) - exact) / exact;
      if (rel > worst) worst = rel, worst_at = x[i];
    }
  }
  CAPTURE(worst_at);
  CHECK(worst < 1.2e-7);  // 2^-23: one ulp at the top of a binade

  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {0.f, -0.f, -inf, -87.34f, -100.f, -1e30f, std::nanf("")};
  for (std::size_t i = 0; i < kFloatWidth; ++i) x[i] = specials[i % 7];
  seqmix::simd::store(out.data(), exp_nonpositive(batch_from(x.data())));
  for (std::size_t i = 0; i < kFloatWidth; ++i) {
    CAPTURE(x[i]);
    if (std::isnan(x[i]))
      CHECK(std::isnan(out[i]));
    else if (x[i] == 0.f)
      CHECK(out[i] == 1.f);
    else
      CHECK(out[i] == 0.f);
  }
}
