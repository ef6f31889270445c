// Asymmetric min-max group quantization for the KV cache (SPEC section 6), and the dense code
// packing every quantized cache row uses.
//
//   scale = (max - min) / (2^bits - 1),  code = round((x - min) / scale) in [0, 2^bits - 1],
//   x'    = min + scale * code,          |x - x'| <= scale / 2 (plus float rounding).
// A constant group has scale 0, every code 0, and dequantizes to min exactly.
//
// Packing ("planar chunks"): a packed row is cut into chunks of 16 bytes, i.e. 16 int8, 32 int4
// or 64 int2 codes. In a chunk of m codes with L = 8 / bits codes per byte and q = ceil(m / L),
// code e sits in byte e % q at bit (e / q) * bits. For a full chunk q = 16, so widening its 16
// bytes to 16 lanes once and shifting by 0, 4 (int4) or 0, 2, 4, 6 (int2) yields the codes of
// 16 consecutive elements per shift: no nibble shuffling in the kernels. Only the last chunk of a
// row may be short; the row still takes exactly ceil(n * bits / 8) bytes.
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

// Codes per 16-byte chunk.
inline index_t chunk_codes(int bits) noexcept { return 128 / bits; }

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

// Layout of one chunk: its length m, bytes per lane-row q and the byte offset of its start.
struct Chunk {
  index_t first, m, q, byte;
};
inline Chunk chunk_of(index_t first, index_t n, int bits) noexcept {
  const index_t per_byte = 8 / bits, m = std::min(chunk_codes(bits), n - first);
  return {first, m, (m + per_byte - 1) / per_byte, first * bits / 8};
}

// Unpacked codes (one per byte) -> packed row of ceil(n * bits / 8) bytes (see the top).
inline void pack_codes(const std::uint8_t* codes, index_t n, int bits, std::uint8_t* packed) noexcept {
  if (bits == 8) {
    std::memcpy(packed, codes, static_cast<std::size_t>(n));
    return;
  }
  for (index_t first = 0; first < n; first += chunk_codes(bits)) {
    const Chunk c = chunk_of(first, n, bits);
    std::uint8_t* out = packed + c.byte;
    std::fill(out, out + c.q, std::uint8_t{0});
    for (index_t e = 0; e < c.m; ++e)
      out[e % c.q] = static_cast<std::uint8_t>(out[e % c.q] | (codes[first + e] << ((e / c.q) * bits)));
  }
}

inline void unpack_codes(const std::uint8_t* packed, index_t n, int bits, std::uint8_t* codes) noexcept {
  if (bits == 8) {
    std::memcpy(codes, packed, static_cast<std::size_t>(n));
    return;
  }
  const int mask = code_max(bits);
  for (index_t first = 0; first < n; first += chunk_codes(bits)) {
    const Chunk c = chunk_of(first, n, bits);
    for (index_t e = 0; e < c.m; ++e)
      codes[first + e] = static_cast<std::uint8_t>((packed[c.byte + e % c.q] >> ((e / c.q) * bits)) & mask);
  }
}

// One packed code (random access, for compaction and reference reads).
inline int code_at(const std::uint8_t* packed, index_t n, int bits, index_t e) noexcept {
  if (bits == 8) return packed[e];
  const index_t first = e - e % chunk_codes(bits);
  const Chunk c = chunk_of(first, n, bits);
  const index_t r = e - first;
  return (packed[c.byte + r % c.q] >> ((r / c.q) * bits)) & code_max(bits);
}

// Overwrites one packed code.
inline void set_code(std::uint8_t* packed, index_t n, int bits, index_t e, int code) noexcept {
  if (bits == 8) {
    packed[e] = static_cast<std::uint8_t>(code);
    return;
  }
  const index_t first = e - e % chunk_codes(bits);
  const Chunk c = chunk_of(first, n, bits);
  const index_t r = e - first, shift = (r / c.q) * bits;
  std::uint8_t& byte = packed[c.byte + r % c.q];
  byte = static_cast<std::uint8_t>((byte & ~(code_max(bits) << shift)) | (code << shift));
}

// ---- vector widening of codes (the kernels' inner loads) ---------------------------------------

using IBatch = simd::Batch<std::int32_t>;

// The codes of lane-row `part` of widened chunk bytes, as floats.
inline simd::Batch<float> codes_part(const IBatch& bytes, int bits, int part) noexcept {
  if (bits == 8) return xsimd::to_float(bytes);
  return xsimd::to_float((bytes >> (part * bits)) & IBatch(code_max(bits)));
}

// ---- rows with one parameter pair per group of `group` elements -------------------------------

inline index_t group_count(index_t n, index_t group) noexcept { return group > 0 ? (n + group - 1) / group : 1; }

// Quantizes a contiguous row of n values in groups of `group` (0: one group), writes the packed
// row and params[g] for each group. `scratch` holds n bytes.
inline void quantize_row(const float* x, index_t n, index_t group, int bits, std::uint8_t* packed, Params* params,
                         std::uint8_t* scratch) noexcept {
  const index_t g = group > 0 ? group : n;
  for (index_t k = 0, c0 = 0; c0 < n; ++k, c0 += g) {
    const index_t len = std::min(g, n - c0);
    params[k] = min_max_params(x + c0, len, 1, bits);
    encode_codes(x + c0, len, params[k], bits, scratch + c0);
  }
  pack_codes(scratch, n, bits, packed);
}

// Inverse of quantize_row. The full chunks are decoded a vector at a time; when the group is a
// multiple of the vector width each vector has one parameter pair.
inline void dequantize_row(const std::uint8_t* packed, index_t n, index_t group, int bits, const Params* params,
                           float* out) noexcept {
  const index_t g = group > 0 ? group : n, W = simd::kWidth, per_chunk = chunk_codes(bits);
  const bool vector_groups = g % W == 0 && per_chunk % W == 0;
  index_t done = 0;
  if (vector_groups) {
    const index_t full = n - n % per_chunk;
    for (index_t first = 0; first < full; first += per_chunk) {
      const std::uint8_t* bytes = packed + first * bits / 8;
      for (index_t half = 0; half < 16; half += W) {  // 16 bytes per chunk, W lanes at a time
        const IBatch wide = simd::load_u8_widened(bytes + half);
        for (int part = 0; part < 8 / bits; ++part) {
          const index_t e = first + part * 16 + half;
          const Params& p = params[e / g];
          simd::store(out + e, simd::fma(codes_part(wide, bits, part), simd::Batch<float>(p.scale), simd::Batch<float>(p.min)));
        }
      }
    }
    done = full;
  }
  for (index_t e = done; e < n; ++e) out[e] = decode(code_at(packed, n, bits, e), params[e / g]);
}

// Largest error quantize_row may make on a group with these params (the bound tests check).
inline float error_bound(const Params& p) noexcept {
  return 0.5f * p.scale + 4.f * std::numeric_limits<float>::epsilon() * (std::abs(p.min) + p.scale * 255.f);
}

}  // namespace quant
}  // namespace seqmix
