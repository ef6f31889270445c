// 16-bit floating-point storage types: IEEE binary16 (seqmix::f16) and bfloat16 (seqmix::bf16).
//
// They are storage formats only (K/V caches, weights): arithmetic happens in float after
// conversion. Conversions round to nearest, ties to even, in the float -> 16-bit direction and
// are exact in the other; subnormals, infinities and signed zeros are handled, and a NaN stays a
// NaN whose quiet bit is set (as F16C / AVX512-BF16 hardware does), keeping the top payload bits.
//
// The bulk `convert` functions and simd::load_f16 / load_bf16 use integer bit manipulation on
// seqmix::simd batches and give bit-identical results to the scalar functions. The float ->
// 16-bit paths rely on the default floating-point environment (round to nearest, no flush to
// zero), as the rest of seqmix does; the 16-bit -> float paths only ever compute with normal
// floats, so they stay exact even under flush-to-zero / denormals-are-zero.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "seqmix/core/error.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

namespace detail {

inline std::uint32_t float_bits(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Bit patterns used by both the scalar and the vector conversions (float32 unless noted).
constexpr std::uint32_t kAbsMask = 0x7fffffffu;
constexpr std::uint32_t kQuietBit = 0x00400000u;      // float NaN quiet bit
constexpr std::uint32_t kRebias = (127 - 15) << 23;   // f16 exponent bias -> float bias
constexpr std::uint32_t kF16ExpMask = 0x7c00u << 13;  // f16 exponent field, moved to float position
constexpr std::uint32_t kF16MinNormal = 113u << 23;   // 2^-14, smallest normal f16, as float bits
constexpr std::uint32_t kF16Overflow = 0x477ff000u;   // 65520: halfway between f16 max and 2^16
constexpr std::uint32_t kHalf = 0x3f000000u;          // 0.5f; its ulp is 2^-24 = f16 subnormal ulp
// Added before >> 13 to round a normal float to f16: rebias the exponent and add half an ulp
// minus one (the tie-to-even +1 comes from the lowest kept mantissa bit).
constexpr std::uint32_t kF16RoundBias = 0xfffu - kRebias;

}  // namespace detail

/// Exact: every f16 is a float.
inline float f16_to_float(std::uint16_t h) noexcept {
  using namespace detail;
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t shifted = static_cast<std::uint32_t>(h & 0x7fffu) << 13;
  const std::uint32_t exponent = shifted & kF16ExpMask;
  std::uint32_t out;
  if (exponent == kF16ExpMask) {  // inf or NaN: float exponent all ones, NaN made quiet
    out = shifted | 0x7f800000u;
    if (shifted & 0x007fe000u) out |= kQuietBit;
  } else if (exponent == 0) {  // zero or subnormal m * 2^-24, computed exactly as (1+m/1024 - 1) * 2^-14
    out = float_bits(bits_float(shifted + kF16MinNormal) - bits_float(kF16MinNormal));
  } else {
    out = shifted + kRebias;
  }
  return bits_float(out | sign);
}

/// Round to nearest even; |x| >= 65520 becomes inf.
inline std::uint16_t float_to_f16(float x) noexcept {
  using namespace detail;
  const std::uint32_t u = float_bits(x);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & kAbsMask;
  std::uint32_t h;
  if (a > 0x7f800000u) {
    h = 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN: quiet, top payload bits kept
  } else if (a >= kF16Overflow) {
    h = 0x7c00u;
  } else if (a >= kF16MinNormal) {
    h = (a + kF16RoundBias + ((a >> 13) & 1u)) >> 13;  // a carry into the exponent is correct
  } else {
    // Below 2^-14 the f16 grid is uniform (step 2^-24), the same as the ulp of 0.5f: the float
    // addition does the rounding to nearest even, and the low bits are the f16 encoding.
    h = float_bits(bits_float(a) + 0.5f) - kHalf;
  }
  return static_cast<std::uint16_t>(h | sign);
}

/// Exact: a bf16 is the top half of a float.
inline float bf16_to_float(std::uint16_t b) noexcept {
  std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  if ((u & detail::kAbsMask) > 0x7f800000u) u |= detail::kQuietBit;
  return detail::bits_float(u);
}

/// Round to nearest even; values above the largest bf16 round to inf as IEEE requires.
inline std::uint16_t float_to_bf16(float x) noexcept {
  const std::uint32_t u = detail::float_bits(x);
  if ((u & detail::kAbsMask) > 0x7f800000u)  // NaN: must not round into inf
    return static_cast<std::uint16_t>((u | detail::kQuietBit) >> 16);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// Storage types: trivially copyable, 2 bytes, zero bits by value-initialisation.
struct f16 {
  /// The IEEE binary16 bit pattern.
  std::uint16_t bits;

  f16() = default;
  /// Rounds x to nearest, ties to even (NaN stays NaN).
  explicit f16(float x) noexcept : bits(float_to_f16(x)) {}
  /// The value with bit pattern b.
  static f16 from_bits(std::uint16_t b) noexcept {
    f16 h;
    h.bits = b;
    return h;
  }
  /// The exact float value.
  ///@{
  float to_float() const noexcept { return f16_to_float(bits); }
  explicit operator float() const noexcept { return to_float(); }  // lets seqmix::copy convert
  ///@}
};

/// bfloat16: the upper 16 bits of a float (8-bit exponent, 7-bit mantissa).
struct bf16 {
  /// The bfloat16 bit pattern (the upper half of the float's).
  std::uint16_t bits;

  bf16() = default;
  /// Rounds x to nearest, ties to even (NaN stays NaN).
  explicit bf16(float x) noexcept : bits(float_to_bf16(x)) {}
  /// The value with bit pattern b.
  static bf16 from_bits(std::uint16_t b) noexcept {
    bf16 h;
    h.bits = b;
    return h;
  }
  /// The exact float value.
  ///@{
  float to_float() const noexcept { return bf16_to_float(bits); }
  explicit operator float() const noexcept { return to_float(); }
  ///@}
};

/// How a kernel taking bf16 inputs computes its products (AttentionOptions::bf16_compute).
enum class Bf16Compute : int {
  /// Inputs widened to fp32, fp32 products: the fp32 result on the stored values (the default).
  fp32,
  /// The other GEMM operands rounded to bf16 too (q, the softmax weights), products by AVX512-BF16
  /// dot products accumulated in fp32, where the compile target has them; fp32 elsewhere. About
  /// twice the multiply-add rate, relative error bounded by a few bf16 roundings (docs/operators.md).
  dot,
};

static_assert(sizeof(f16) == 2 && std::is_trivially_copyable_v<f16> && std::is_trivial_v<f16>);
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16> && std::is_trivial_v<bf16>);

namespace simd {

// GCC 12's AVX-512 shift intrinsics self-initialise an "undefined" register and then warn about
// it wherever xsimd's << and >> get inlined (GCC bug 105593, fixed in GCC 13): silence that
// false positive for the shifts below only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
namespace detail {

using Int = Batch<std::int32_t>;

// Zero-extends kWidth 16-bit patterns to 32-bit lanes. Built from the scalars directly, which
// compilers turn into one widening load; a loop through a stack buffer would be stored in halves
// and reloaded whole, a store-forwarding stall that made this 4x slower than scalar code.
template <class Half, std::size_t... I>
Int widen(const Half* p, std::index_sequence<I...>) noexcept {
  return Int{static_cast<std::int32_t>(p[I].bits)...};
}
template <class Half>
Int widen(const Half* p) noexcept {
  return widen(p, std::make_index_sequence<kFloatWidth>{});
}

template <class Half>
void narrow(const Int& v, Half* p) noexcept {
  alignas(64) std::int32_t lanes[kFloatWidth];
  v.store_aligned(lanes);
  for (std::size_t j = 0; j < kFloatWidth; ++j) p[j].bits = static_cast<std::uint16_t>(lanes[j]);
}

inline Int constant(std::uint32_t bits) noexcept { return Int(static_cast<std::int32_t>(bits)); }

// Lane masks from integer arithmetic instead of compare + xsimd::select: xsimd 8.1's integer
// select does not compile at -O0 for AVX512BW. Operands must lie in [0, 2^31), which holds for
// every exponent/magnitude field compared below, so the difference's sign bit is the answer.
inline Int greater_mask(const Int& a, std::uint32_t b) noexcept { return (constant(b) - a) >> 31; }  // a > b
inline Int at_least_mask(const Int& a, std::uint32_t b) noexcept { return greater_mask(a, b - 1); }  // a >= b, b > 0
inline Int zero_mask(const Int& a) noexcept { return (a - constant(1u)) >> 31; }  // a == 0
inline Int blend(const Int& mask, const Int& yes, const Int& no) noexcept { return no ^ ((yes ^ no) & mask); }

// Vector forms of seqmix::f16_to_float and friends: the same steps, branches become blends.
inline Batch<float> f16_bits_to_float(const Int& h) noexcept {
  using namespace seqmix::detail;
  const Int sign = (h & constant(0x8000u)) << 16;
  const Int shifted = (h & constant(0x7fffu)) << 13;
  const Int exponent = shifted & constant(kF16ExpMask);
  const Int normal = shifted + constant(kRebias);
  const Int special = shifted | constant(0x7f800000u) | (greater_mask(shifted, kF16ExpMask) & constant(kQuietBit));
  const Int small = bit_cast<std::int32_t>(bit_cast<float>(shifted + constant(kF16MinNormal)) -
                                           Batch<float>(bits_float(kF16MinNormal)));
  Int out = blend(at_least_mask(exponent, kF16ExpMask), special, normal);
  out = blend(zero_mask(exponent), small, out);
  return bit_cast<float>(out | sign);
}

inline Int float_to_f16_bits(const Batch<float>& x) noexcept {
  using namespace seqmix::detail;
  const Int u = bit_cast<std::int32_t>(x);
  const Int sign = (u >> 16) & constant(0x8000u);
  const Int a = u & constant(kAbsMask);
  const Int mantissa_top = (a >> 13) & constant(0x3ffu);
  const Int normal = ((a + constant(kF16RoundBias) + (mantissa_top & constant(1u))) >> 13) &
                     constant(0x7fffu);  // mask: lanes that wrapped are not selected anyway
  const Int small = bit_cast<std::int32_t>(bit_cast<float>(a) + Batch<float>(0.5f)) - constant(kHalf);
  Int h = blend(at_least_mask(a, kF16MinNormal), normal, small);
  h = blend(at_least_mask(a, kF16Overflow), constant(0x7c00u), h);
  h = blend(greater_mask(a, 0x7f800000u), constant(0x7e00u) | mantissa_top, h);
  return h | sign;
}

inline Batch<float> bf16_bits_to_float(const Int& b) noexcept {
  using namespace seqmix::detail;
  const Int u = b << 16;
  return bit_cast<float>(u | (greater_mask(u & constant(kAbsMask), 0x7f800000u) & constant(kQuietBit)));
}

inline Int float_to_bf16_bits(const Batch<float>& x) noexcept {
  using namespace seqmix::detail;
  const Int u = bit_cast<std::int32_t>(x);
  const Int lsb = (u >> 16) & constant(1u);
  const Int rounded = u + constant(0x7fffu) + lsb;  // wraps only for negative NaNs, replaced below
  const Int nan = greater_mask(u & constant(kAbsMask), 0x7f800000u);
  return (blend(nan, u | constant(kQuietBit), rounded) >> 16) & constant(0xffffu);
}

}  // namespace detail
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// kWidth consecutive f16 / bf16 values as a float batch (for kernels reading a 16-bit K/V cache).
// Where the target has the hardware conversion (AVX-512F, or F16C for 8-wide AVX batches) it is one
// instruction, exact for every pattern like the portable path (NaNs come out quiet); it is what
// keeps a decode over an f16 KV cache bound by memory rather than by the conversion.
// (A template on the arch only so that the branch for the other register width is discarded.)
template <class A = Arch>
xsimd::batch<float, A> load_f16(const f16* p) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
#if defined(__F16C__)
  if constexpr (std::is_base_of_v<xsimd::avx, A> && !std::is_base_of_v<xsimd::avx512f, A>)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#endif
  return detail::f16_bits_to_float(detail::widen(p));
}
inline Batch<float> load_bf16(const bf16* p) noexcept { return detail::bf16_bits_to_float(detail::widen(p)); }

// Rounds a float batch to kWidth consecutive f16 / bf16 values (for kernels writing a cache).
inline void store_f16(f16* p, const Batch<float>& v) noexcept { detail::narrow(detail::float_to_f16_bits(v), p); }
inline void store_bf16(bf16* p, const Batch<float>& v) noexcept { detail::narrow(detail::float_to_bf16_bits(v), p); }

}  // namespace simd

///@{
/// Bulk conversions of n contiguous values; vectorized with a scalar tail.
inline void convert(const f16* src, float* dst, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(dst + i, simd::load_f16(src + i));
  for (index_t i = nv; i < n; ++i) dst[i] = f16_to_float(src[i].bits);
}

inline void convert(const float* src, f16* dst, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store_f16(dst + i, simd::load(src + i));
  for (index_t i = nv; i < n; ++i) dst[i].bits = float_to_f16(src[i]);
}

inline void convert(const bf16* src, float* dst, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(dst + i, simd::load_bf16(src + i));
  for (index_t i = nv; i < n; ++i) dst[i] = bf16_to_float(src[i].bits);
}

inline void convert(const float* src, bf16* dst, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store_bf16(dst + i, simd::load(src + i));
  for (index_t i = nv; i < n; ++i) dst[i].bits = float_to_bf16(src[i]);
}

///@}
}  // namespace seqmix
