// Asymmetric min-max group quantization for the KV cache (SPEC section 6).
//
//   scale = (max - min) / (2^bits - 1),  code = round((x - min) / scale) in [0, 2^bits - 1],
//   x'    = min + scale * code,          |x - x'| <= scale / 2 (plus float rounding).
// A constant group has scale 0, every code 0, and dequantizes to min exactly.
//
// Codes are unsigned, one per element; where a cache block keeps them is layout.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

/// Element formats of a cache row. The float formats are stored as they are; the integer ones are
/// unsigned codes with a (scale, min) pair per group.
enum class KvFormat : std::uint8_t { f32, f16, bf16, int8, int4, int2 };
/// \var KvFormat::f32
/// 32-bit float, stored as given.
/// \var KvFormat::f16
/// IEEE half precision (seqmix::f16), rounded to nearest even.
/// \var KvFormat::bf16
/// bfloat16 (seqmix::bf16), rounded to nearest even.
/// \var KvFormat::int8
/// 8-bit unsigned codes with a (scale, min) pair per group.
/// \var KvFormat::int4
/// 4-bit codes, two per byte, with a (scale, min) pair per group.
/// \var KvFormat::int2
/// 2-bit codes, four per byte, with a (scale, min) pair per group (values only).

/// Bits per element of a format (32, 16, 8, 4 or 2).
constexpr int format_bits(KvFormat f) noexcept {
  switch (f) {
    case KvFormat::f32: return 32;
    case KvFormat::f16:
    case KvFormat::bf16: return 16;
    case KvFormat::int8: return 8;
    case KvFormat::int4: return 4;
    case KvFormat::int2: return 2;
  }
  return 0;
}

/// True for the integer formats (int8, int4, int2).
constexpr bool is_quantized(KvFormat f) noexcept { return f == KvFormat::int8 || f == KvFormat::int4 || f == KvFormat::int2; }

/// The format's name as in the API ("f16", "int4", ...), for messages and reports.
inline const char* format_name(KvFormat f) noexcept {
  switch (f) {
    case KvFormat::f32: return "fp32";
    case KvFormat::f16: return "fp16";
    case KvFormat::bf16: return "bf16";
    case KvFormat::int8: return "int8";
    case KvFormat::int4: return "int4";
    case KvFormat::int2: return "int2";
  }
  return "?";
}

/// Bytes of n elements of a format, packed densely.
inline index_t row_bytes(KvFormat f, index_t n) noexcept { return (n * format_bits(f) + 7) / 8; }

/// \namespace seqmix::quant
/// Asymmetric min-max group quantization (the header comment gives the formulas): parameters,
/// encoding, decoding and the error bound, on plain float arrays.
namespace quant {

/// The quantization parameters of one group.
struct Params {
  float scale = 0.f;  ///< (max - min) / (2^bits - 1); 0 for a constant group
  float min = 0.f;    ///< the zero point: code 0 dequantizes to it
};

/// The largest code of a `bits`-bit format, 2^bits - 1.
inline int code_max(int bits) noexcept { return (1 << bits) - 1; }

/// Min-max parameters of n values x[i * stride].
/// Non-finite input: a group holding a NaN or an inf gets scale = min = NaN, so every element of
/// it dequantizes to NaN (kept visible, as the fp32 cache would propagate it) and encodes to code
/// 0 (never a float-to-integer conversion of NaN). Extreme finite groups (hi - lo beyond the
/// float range, e.g. +-3e38) get scale = hi / c - lo / c, which stays finite, and encode and
/// decode below avoid the overflowing differences, so they round-trip finite.
inline Params min_max_params(const float* x, index_t n, index_t stride, int bits) noexcept {
  if (n <= 0) return {};
  float lo = x[0], hi = x[0];
  float poison = 0.f;  // x * 0 summed: NaN when any element is NaN or inf
  if (stride == 1) {
    const index_t nv = simd::vector_end(n);
    if (nv > 0) {
      simd::Batch<float> vlo = simd::load(x), vhi = vlo, vpoison(0.f);
      for (index_t i = 0; i < nv; i += simd::kWidth) {
        const auto v = simd::load(x + i);
        vlo = xsimd::min(vlo, v), vhi = xsimd::max(vhi, v), vpoison = vpoison + v * 0.f;
      }
      hi = simd::reduce_max(vhi);
      lo = -simd::reduce_max(-vlo);
      poison = simd::reduce_add(vpoison);
    }
    for (index_t i = nv; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]), poison += x[i] * 0.f;
  } else {
    for (index_t i = 0; i < n; ++i) lo = std::min(lo, x[i * stride]), hi = std::max(hi, x[i * stride]), poison += x[i * stride] * 0.f;
  }
  if (std::isnan(poison)) return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
  const float top = static_cast<float>(code_max(bits));
  const float range = hi - lo;
  return {std::isfinite(range) ? range / top : hi / top - lo / top, lo};
}

/// True for a group whose range reaches past half the float range: x - min may overflow there, so
/// encoding halves both terms first (exact otherwise, so only these groups take that route).
inline bool wide_group(const Params& p, int bits) noexcept {
  return !(p.scale * static_cast<float>(code_max(bits)) <= 0.5f * std::numeric_limits<float>::max());
}

/// round((x - min) / scale) clamped to the code range; 0 when scale is 0 or NaN. Division (not a
/// multiplication by 1/scale) keeps the rounding decision exact up to one float rounding.
inline std::uint8_t encode(float x, const Params& p, int bits) noexcept {
  if (!(p.scale > 0.f)) return 0;
  const float q = wide_group(p, bits) ? (0.5f * x - 0.5f * p.min) / (0.5f * p.scale) : (x - p.min) / p.scale;
  const float t = std::nearbyint(q);
  if (!(t >= 0.f)) return 0;  // negative, or NaN (a NaN element in a group of finite parameters)
  return static_cast<std::uint8_t>(std::min(t, static_cast<float>(code_max(bits))));
}

/// min + scale * code; where that overflows (an extreme finite group) the fused form, whose exact
/// intermediate lands back within [min, max] of the group.
inline float decode(int code, const Params& p) noexcept {
  const float y = p.min + p.scale * static_cast<float>(code);
  if (std::isfinite(y) || !std::isfinite(p.min) || !std::isfinite(p.scale)) return y;
  return std::fma(p.scale, static_cast<float>(code), p.min);
}

/// codes[i] for n values with one parameter pair, vectorized.
inline void encode_codes(const float* x, index_t n, const Params& p, int bits, std::uint8_t* codes) noexcept {
  if (!(p.scale > 0.f) || wide_group(p, bits)) {  // constant or non-finite group, or a rare wide one
    for (index_t i = 0; i < n; ++i) codes[i] = encode(x[i], p, bits);
    return;
  }
  using FB = simd::Batch<float>;
  const FB vmin(p.min), vscale(p.scale), top(static_cast<float>(code_max(bits))), zero(0.f);
  const index_t nv = simd::vector_end(n);
  alignas(64) std::int32_t lanes[simd::kFloatWidth];
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    const FB t = xsimd::nearbyint((simd::load(x + i) - vmin) / vscale);
    xsimd::to_int(xsimd::min(xsimd::max(t, zero), top)).store_aligned(lanes);
    for (index_t j = 0; j < simd::kWidth; ++j) codes[i + j] = static_cast<std::uint8_t>(lanes[j]);
  }
  for (index_t i = nv; i < n; ++i) codes[i] = encode(x[i], p, bits);
}

// ---- groups of `group` elements (0: one group) ------------------------------------------------

/// Number of groups of `group` elements in n (one group when group is 0).
inline index_t group_count(index_t n, index_t group) noexcept { return group > 0 ? (n + group - 1) / group : 1; }

/// Largest error encode + decode may make on a group with these params (the bound tests check).
inline float error_bound(const Params& p) noexcept {
  return 0.5f * p.scale + 4.f * std::numeric_limits<float>::epsilon() * (std::abs(p.min) + p.scale * 255.f);
}

}  // namespace quant
}  // namespace seqmix
