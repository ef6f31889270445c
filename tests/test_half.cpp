// f16 / bf16 conversions: exhaustive over all 16-bit patterns, rounding at every f16 midpoint,
// known bf16 cases, and the vectorized bulk paths bit-identical to the scalar ones.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"

namespace {

using seqmix::bf16;
using seqmix::f16;
using seqmix::index_t;

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

bool is_f16_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// The value of an f16 pattern computed from its fields, independently of the library.
double f16_value(std::uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  if (exponent == 0x1f) return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Lengths around the batch width: empty, shorter than a batch, exact multiples, ragged tails.
std::vector<index_t> ragged_lengths(index_t total) {
  const index_t w = seqmix::simd::kWidth;
  std::vector<index_t> lengths{0, 1, 3, w - 1, w, w + 1, 2 * w + 3, 7 * w, total};
  std::vector<index_t> valid;
  for (index_t n : lengths)
    if (n >= 0 && n <= total) valid.push_back(n);
  return valid;
}

// Floats that stress the f16 rounding: every f16 value, each midpoint and its neighbours, and
// special values (NaN payloads, infinities, float subnormals, around the overflow threshold).
std::vector<float> f16_stress_floats() {
  std::vector<float> values;
  for (std::uint32_t h = 0; h < 0x7c00u; ++h) {
    const float lo = static_cast<float>(f16_value(static_cast<std::uint16_t>(h)));
    const float mid = static_cast<float>((f16_value(static_cast<std::uint16_t>(h)) +
                                          (h + 1 < 0x7c00u ? f16_value(static_cast<std::uint16_t>(h + 1)) : 65536.0)) / 2);
    for (float v : {lo, mid, std::nextafter(mid, 0.f), std::nextafter(mid, INFINITY)}) {
      values.push_back(v);
      values.push_back(-v);
    }
  }
  const float specials[] = {INFINITY, -INFINITY, std::numeric_limits<float>::quiet_NaN(),
                            from_bits(0x7f800001u), from_bits(0xffc12345u), from_bits(0x7fbfffffu),
                            std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                            65520.f, 1e10f, -1e-10f, 0.f, -0.f};
  values.insert(values.end(), std::begin(specials), std::end(specials));
  return values;
}

std::vector<float> random_float_bits(std::size_t count, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<float> values(count);
  for (float& v : values) v = from_bits(static_cast<std::uint32_t>(rng()));
  return values;
}

}  // namespace

TEST_CASE("f16 to float is exact for all 65536 patterns", "[half]") {
  for (std::uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    CAPTURE(h);
    const float got = seqmix::f16_to_float(bits);
    REQUIRE(bits_of(f16::from_bits(bits).to_float()) == bits_of(got));
    if (is_f16_nan(bits)) {
      REQUIRE(std::isnan(got));
      REQUIRE((bits_of(got) & 0x00400000u) != 0);                     // quiet
      REQUIRE(((bits_of(got) >> 13) & 0x1ffu) == (bits & 0x1ffu));     // payload kept
      REQUIRE(std::signbit(got) == ((bits & 0x8000u) != 0));
    } else {
      REQUIRE(static_cast<double>(got) == f16_value(bits));
      REQUIRE(std::signbit(got) == ((bits & 0x8000u) != 0));  // -0 stays -0
    }
  }
}

TEST_CASE("float to f16 round trip restores every pattern", "[half]") {
  for (std::uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    CAPTURE(h);
    const std::uint16_t back = seqmix::float_to_f16(seqmix::f16_to_float(bits));
    if (is_f16_nan(bits))
      REQUIRE(back == (bits | 0x0200u));  // quietened, payload and sign kept
    else
      REQUIRE(back == bits);
  }
}

TEST_CASE("float to f16 rounds to nearest even at every midpoint", "[half]") {
  for (std::uint32_t h = 0; h < 0x7bffu; ++h) {  // adjacent finite pairs (h, h+1)
    const double lo = f16_value(static_cast<std::uint16_t>(h));
    const double hi = f16_value(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    REQUIRE(static_cast<double>(mid) == (lo + hi) / 2);  // 12 significant bits: exact in float
    const std::uint16_t even = (h % 2 == 0) ? static_cast<std::uint16_t>(h) : static_cast<std::uint16_t>(h + 1);
    for (int sign : {1, -1}) {
      CAPTURE(h, sign);
      const std::uint16_t sign_bit = sign < 0 ? 0x8000u : 0u;
      const float s = static_cast<float>(sign);
      REQUIRE(seqmix::float_to_f16(s * mid) == (even | sign_bit));
      REQUIRE(seqmix::float_to_f16(s * std::nextafter(mid, 0.f)) == (h | sign_bit));
      REQUIRE(seqmix::float_to_f16(s * std::nextafter(mid, INFINITY)) == ((h + 1) | sign_bit));
    }
  }
}

TEST_CASE("float to f16 overflow, subnormals and specials", "[half]") {
  using seqmix::float_to_f16;
  CHECK(float_to_f16(65504.f) == 0x7bffu);
  CHECK(float_to_f16(65520.f) == 0x7c00u);  // tie between 65504 and 2^16 goes to the even inf
  CHECK(float_to_f16(std::nextafter(65520.f, 0.f)) == 0x7bffu);
  CHECK(float_to_f16(-65520.f) == 0xfc00u);
  CHECK(float_to_f16(1e6f) == 0x7c00u);
  CHECK(float_to_f16(std::numeric_limits<float>::max()) == 0x7c00u);
  CHECK(float_to_f16(INFINITY) == 0x7c00u);
  CHECK(float_to_f16(-INFINITY) == 0xfc00u);

  const float tiny = std::ldexp(1.f, -24);  // smallest f16 subnormal
  CHECK(float_to_f16(tiny) == 0x0001u);
  CHECK(float_to_f16(tiny / 2) == 0x0000u);  // tie to even: 0
  CHECK(float_to_f16(-tiny / 2) == 0x8000u);
  CHECK(float_to_f16(std::nextafter(tiny / 2, 1.f)) == 0x0001u);
  CHECK(float_to_f16(3 * tiny / 2) == 0x0002u);  // tie to even: 2
  CHECK(float_to_f16(std::ldexp(1023.5f, -24)) == 0x0400u);  // largest subnormal rounds up to 2^-14
  CHECK(float_to_f16(std::ldexp(1.f, -14)) == 0x0400u);
  CHECK(float_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000u);
  CHECK(float_to_f16(std::numeric_limits<float>::min()) == 0x0000u);
  CHECK(float_to_f16(-0.f) == 0x8000u);
  CHECK(float_to_f16(1.f) == 0x3c00u);
  CHECK(float_to_f16(-2.f) == 0xc000u);

  for (std::uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffbfffffu, 0x7f802000u}) {
    CAPTURE(nan);
    const std::uint16_t h = float_to_f16(from_bits(nan));
    CHECK(is_f16_nan(h));
    CHECK((h & 0x0200u) != 0);
    CHECK(((h & 0x8000u) != 0) == ((nan & 0x80000000u) != 0));
  }
}

TEST_CASE("f16 bulk conversion equals scalar, including ragged tails", "[half]") {
  std::vector<f16> all(0x10000);
  for (std::uint32_t h = 0; h <= 0xffffu; ++h) all[h] = f16::from_bits(static_cast<std::uint16_t>(h));

  SECTION("f16 -> float") {
    for (index_t n : ragged_lengths(static_cast<index_t>(all.size()))) {
      for (index_t offset : {index_t{0}, index_t{1}, index_t{5}}) {  // unaligned starts
        if (offset + n > static_cast<index_t>(all.size())) continue;
        CAPTURE(n, offset);
        std::vector<float> out(static_cast<std::size_t>(n) + 1, -7.f);
        seqmix::convert(all.data() + offset, out.data(), n);
        for (index_t i = 0; i < n; ++i) {
          const std::uint16_t h = all[static_cast<std::size_t>(offset + i)].bits;
          CAPTURE(i, h);
          REQUIRE(bits_of(out[static_cast<std::size_t>(i)]) == bits_of(seqmix::f16_to_float(h)));
        }
        REQUIRE(out[static_cast<std::size_t>(n)] == -7.f);  // nothing written past the end
      }
    }
  }

  SECTION("float -> f16") {
    std::vector<float> values = f16_stress_floats();
    const std::vector<float> random = random_float_bits(100000, 1234u);
    values.insert(values.end(), random.begin(), random.end());
    for (index_t n : ragged_lengths(static_cast<index_t>(values.size()))) {
      CAPTURE(n);
      std::vector<f16> out(static_cast<std::size_t>(n) + 1, f16::from_bits(0x1234u));
      seqmix::convert(values.data(), out.data(), n);
      for (index_t i = 0; i < n; ++i) {
        const float x = values[static_cast<std::size_t>(i)];
        CAPTURE(i, bits_of(x));
        REQUIRE(out[static_cast<std::size_t>(i)].bits == seqmix::float_to_f16(x));
      }
      REQUIRE(out[static_cast<std::size_t>(n)].bits == 0x1234u);
    }
  }
}

TEST_CASE("bf16 conversion known cases", "[half]") {
  using seqmix::float_to_bf16;
  CHECK(float_to_bf16(from_bits(0x3f800000u)) == 0x3f80u);
  CHECK(float_to_bf16(from_bits(0x3f808000u)) == 0x3f80u);  // tie, even stays
  CHECK(float_to_bf16(from_bits(0x3f818000u)) == 0x3f82u);  // tie, odd rounds up
  CHECK(float_to_bf16(from_bits(0x3f808001u)) == 0x3f81u);  // just above a tie
  CHECK(float_to_bf16(from_bits(0x3f807fffu)) == 0x3f80u);  // just below a tie
  CHECK(float_to_bf16(from_bits(0xbf808000u)) == 0xbf80u);  // negative tie
  CHECK(float_to_bf16(from_bits(0xbf818000u)) == 0xbf82u);
  CHECK(float_to_bf16(from_bits(0xbf808001u)) == 0xbf81u);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80u);  // rounds to inf
  CHECK(float_to_bf16(-std::numeric_limits<float>::max()) == 0xff80u);
  CHECK(float_to_bf16(from_bits(0x7f7f7fffu)) == 0x7f7fu);  // largest value still finite
  CHECK(float_to_bf16(INFINITY) == 0x7f80u);
  CHECK(float_to_bf16(-INFINITY) == 0xff80u);
  CHECK(float_to_bf16(-0.f) == 0x8000u);
  CHECK(float_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000u);  // tie to even 0
  CHECK(float_to_bf16(from_bits(0x00018000u)) == 0x0002u);                     // subnormal tie, odd
  CHECK(float_to_bf16(from_bits(0x007fffffu)) == 0x0080u);  // largest subnormal -> min normal

  // NaNs whose payload sits only in the low bits (or would carry into the exponent when
  // rounded) must stay NaN, quiet, with their sign.
  for (std::uint32_t nan : {0x7f800001u, 0x7fffffffu, 0xff800001u, 0xffffffffu, 0x7fc00000u, 0x7fbf8000u}) {
    CAPTURE(nan);
    const std::uint16_t b = float_to_bf16(from_bits(nan));
    CHECK((b & 0x7f80u) == 0x7f80u);
    CHECK((b & 0x007fu) != 0);
    CHECK((b & 0x0040u) != 0);
    CHECK((b >> 15) == (nan >> 31));
    CHECK(std::isnan(seqmix::bf16_to_float(b)));
  }

  // bf16 -> float is exact: the bits land in the top half (NaNs also get the quiet bit).
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    CAPTURE(b);
    const float x = seqmix::bf16_to_float(static_cast<std::uint16_t>(b));
    if ((b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0)
      REQUIRE(bits_of(x) == ((b << 16) | 0x00400000u));
    else
      REQUIRE(bits_of(x) == (b << 16));
    REQUIRE(seqmix::float_to_bf16(x) == ((bits_of(x) >> 16) & 0xffffu));  // round trip
  }
  CHECK(bf16(1.5f).to_float() == 1.5f);
  CHECK(static_cast<float>(bf16::from_bits(0xc040u)) == -3.f);
}

TEST_CASE("bf16 bulk conversion equals scalar on random floats", "[half]") {
  const unsigned seed = 42u;
  CAPTURE(seed);
  std::vector<float> values = random_float_bits(200000, seed);
  const std::vector<float> stress = f16_stress_floats();  // includes ties, specials, subnormals
  values.insert(values.end(), stress.begin(), stress.end());
  for (std::uint32_t tie : {0x3f808000u, 0x3f818000u, 0xff7fffffu, 0x7f7fffffu, 0x7fffffffu, 0xffff8000u})
    values.push_back(from_bits(tie));

  for (index_t n : ragged_lengths(static_cast<index_t>(values.size()))) {
    CAPTURE(n);
    std::vector<bf16> rounded(static_cast<std::size_t>(n) + 1, bf16::from_bits(0x1234u));
    seqmix::convert(values.data(), rounded.data(), n);
    for (index_t i = 0; i < n; ++i) {
      CAPTURE(i, bits_of(values[static_cast<std::size_t>(i)]));
      REQUIRE(rounded[static_cast<std::size_t>(i)].bits == seqmix::float_to_bf16(values[static_cast<std::size_t>(i)]));
    }
    REQUIRE(rounded[static_cast<std::size_t>(n)].bits == 0x1234u);

    std::vector<float> widened(static_cast<std::size_t>(n) + 1, -7.f);
    seqmix::convert(rounded.data(), widened.data(), n);
    for (index_t i = 0; i < n; ++i) {
      CAPTURE(i);
      REQUIRE(bits_of(widened[static_cast<std::size_t>(i)]) ==
              bits_of(seqmix::bf16_to_float(rounded[static_cast<std::size_t>(i)].bits)));
    }
    REQUIRE(widened[static_cast<std::size_t>(n)] == -7.f);
  }
}

TEST_CASE("simd load and store of f16 and bf16 batches match scalar", "[half]") {
  using seqmix::simd::kWidth;
  const std::vector<float> values = random_float_bits(static_cast<std::size_t>(kWidth) * 64 + 1, 7u);
  for (index_t start = 0; start + kWidth <= static_cast<index_t>(values.size()); start += kWidth + 1) {
    CAPTURE(start);
    const auto x = seqmix::simd::load(values.data() + start);
    std::vector<f16> h(static_cast<std::size_t>(kWidth));
    std::vector<bf16> b(static_cast<std::size_t>(kWidth));
    seqmix::simd::store_f16(h.data(), x);
    seqmix::simd::store_bf16(b.data(), x);
    std::vector<float> hf(static_cast<std::size_t>(kWidth)), bf(static_cast<std::size_t>(kWidth));
    seqmix::simd::store(hf.data(), seqmix::simd::load_f16(h.data()));
    seqmix::simd::store(bf.data(), seqmix::simd::load_bf16(b.data()));
    for (index_t j = 0; j < kWidth; ++j) {
      const auto k = static_cast<std::size_t>(j);
      const float v = values[static_cast<std::size_t>(start + j)];
      REQUIRE(h[k].bits == seqmix::float_to_f16(v));
      REQUIRE(b[k].bits == seqmix::float_to_bf16(v));
      REQUIRE(bits_of(hf[k]) == bits_of(seqmix::f16_to_float(h[k].bits)));
      REQUIRE(bits_of(bf[k]) == bits_of(seqmix::bf16_to_float(b[k].bits)));
    }
  }
}

TEST_CASE("f16 storage works with tensors and copy", "[half]") {
  seqmix::Tensor<f16, 2> half({3, 5});  // value-initialised: all +0
  for (const f16& h : half) REQUIRE(h.bits == 0);
  seqmix::Tensor<float, 2> source({3, 5});
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) source(i, j) = 0.25f * static_cast<float>(i * 5 + j) - 1.f;
  seqmix::copy(source.cview(), half.view());
  seqmix::Tensor<float, 2> back({3, 5});
  seqmix::copy(half.cview(), back.view());
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) REQUIRE(back(i, j) == source(i, j));  // exact in f16
  CHECK(f16(1.f / 3.f).to_float() == Approx(1.f / 3.f).epsilon(1e-3));
}
