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

// Element formats of a cache row. The float formats are stored as they are; the integer ones are
// unsigned codes with a (scale, min) pair per group.
enum class KvFormat : std::uint8_t { f32, f16, bf16, int8, int4, int2 };

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

constexpr bool is_quantized(KvFormat f) noexcept { return f == KvFormat::int8 || f == KvFormat::int4 || f == KvFormat::int2; }

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

// Bytes of n elements of a format, packed densely.
inline index_t row_bytes(KvFormat f, index_t n) noexcept { return (n * format_bits(f) + 7) / 8; }

namespace quant {

struct Params {
  float scale = 0.f;  // (max - min) / (2^bits - 1); 0 for a constant group
  float min = 0.f;    // the zero point: code 0 dequantizes to it
};

inline int code_max(int bits) noexcept { return (1 << bits) - 1; }

// Min-max parameters of n values x[i * stride].
inline Params min_max_params(const float* x, index_t n, index_t stride, int bits) noexcept {
  if (n <= 0) return {};
  float lo = x[0], hi = x[0];
  if (stride == 1) {
    const index_t nv = simd::vector_end(n);
    if (nv > 0) {
      simd::Batch<float> vlo = simd::load(x), vhi = vlo;
      for (index_t i = simd::kWidth; i < nv; i += simd::kWidth) {
        const auto v = simd::load(x + i);
        vlo = xsimd::min(vlo, v), vhi = xsimd::max(vhi, v);
      }
      hi = simd::reduce_max(vhi);
      lo = -simd::reduce_max(-vlo);
    }
    for (index_t i = nv; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  } else {
    for (index_t i = 1; i < n; ++i) lo = std::min(lo, x[i * stride]), hi = std::max(hi, x[i * stride]);
  }
  return {(hi - lo) / static_cast<float>(code_max(bits)), lo};
}

// round((x - min) / scale) clamped to the code range; 0 when scale is 0. Division (not a
// multiplication by 1/scale) keeps the rounding decision exact up to one float rounding.
inline std::uint8_t encode(float x, const Params& p, int bits) noexcept {
  if (!(p.scale > 0.f)) return 0;
  const float t = std::nearbyint((x - p.min) / p.scale);
  return static_cast<std::uint8_t>(std::clamp(t, 0.f, static_cast<float>(code_max(bits))));
}

inline float decode(int code, const Params& p) noexcept { return p.min + p.scale * static_cast<float>(code); }

// codes[i] for n values with one parameter pair, vectorized.
inline void encode_codes(const float* x, index_t n, const Params& p, int bits, std::uint8_t* codes) noexcept {
  if (!(p.scale > 0.f)) {
    std::fill(codes, codes + n, std::uint8_t{0});
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

inline index_t group_count(index_t n, index_t group) noexcept { return group > 0 ? (n + group - 1) / group : 1; }

// Largest error encode + decode may make on a group with these params (the bound tests check).
inline float error_bound(const Params& p) noexcept {
  return 0.5f * p.scale + 4.f * std::numeric_limits<float>::epsilon() * (std::abs(p.min) + p.scale * 255.f);
}

}  // namespace quant
}  // namespace seqmix
