// The one place where seqmix touches xsimd's API directly.
//
// Operators use seqmix::simd::Batch<float> and the helpers below. The batch width is chosen at
// compile time from the compiler's target flags (SSE2 by default, AVX-512 with -march=native);
// every kernel handles the ragged tail with scalar code. Differences between xsimd releases
// (Debian ships 8.1) are absorbed here and nowhere else.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // non-temporal stores, which xsimd 8.1 does not wrap
#endif

namespace seqmix::simd {

using Arch = xsimd::default_arch;

template <class T>
using Batch = xsimd::batch<T, Arch>;
template <class T>
using BatchBool = xsimd::batch_bool<T, Arch>;

/// Number of floats in one register (4 with SSE2, 16 with AVX-512).
constexpr std::size_t kFloatWidth = Batch<float>::size;
constexpr std::ptrdiff_t kWidth = static_cast<std::ptrdiff_t>(kFloatWidth);

/// Largest multiple of the batch width not above n: the vectorized part of a loop of length n.
constexpr std::ptrdiff_t vector_end(std::ptrdiff_t n) noexcept { return n - n % kWidth; }

template <class T>
Batch<T> load(const T* p) noexcept {
  return Batch<T>::load_unaligned(p);
}
template <class T>
void store(T* p, const Batch<T>& v) noexcept {
  v.store_unaligned(p);
}
template <class T>
Batch<T> broadcast(T value) noexcept {
  return Batch<T>(value);
}

/// A compile-time batch (Generator::get(lane, size) per lane) and its bool counterpart, for
/// swizzle indices and blend masks, in xsimd 8's spelling (make_batch_constant<Batch, Generator>).
/// Later versions moved the arch and generator to other template parameters; untested against
/// those, so this is the one place to adapt (callers name only simd::batch_constant).
template <class B, class Generator>
constexpr auto batch_constant() noexcept {
  return xsimd::make_batch_constant<B, Generator>();
}
template <class B, class Generator>
constexpr auto batch_bool_constant() noexcept {
  return xsimd::make_batch_bool_constant<B, Generator>();
}

/// Horizontal sum: `hadd` in xsimd 8, renamed `reduce_add` in xsimd 9 and later.
template <class T>
T reduce_add(const Batch<T>& v) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(v);
#else
  return xsimd::hadd(v);
#endif
}

template <class T>
T reduce_max(const Batch<T>& v) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_max(v);
#else
  alignas(64) T lanes[Batch<T>::size];
  v.store_aligned(lanes);
  T m = lanes[0];
  for (std::size_t i = 1; i < Batch<T>::size; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
#endif
}

/// Lane i of the result is the horizontal sum of rows[i], for kFloatWidth rows: W dot products
/// reduced at the cost of about one. xsimd 8.1's AVX-512 haddp returns its lanes in the order
/// [0,1,4,5,2,3,6,7, 8,9,12,13,10,11,14,15]; that permutation is its own inverse, so feeding the
/// rows in that order yields sorted lanes (the swap is free: it only renames registers).
inline Batch<float> reduce_add_rows(const Batch<float>* rows) noexcept {
  constexpr bool avx512_lane_order_bug =
      XSIMD_VERSION_MAJOR < 9 && std::is_base_of<xsimd::avx512f, Arch>::value && kFloatWidth == 16;
  if constexpr (avx512_lane_order_bug) {
    constexpr int order[16] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};
    Batch<float> reordered[16];
    for (int i = 0; i < 16; ++i) reordered[i] = rows[order[i]];
    return xsimd::haddp(reordered);
  } else {
    return xsimd::haddp(rows);
  }
}

/// Reinterprets the bits of a batch as another element type of the same width.
template <class To, class From>
Batch<To> bit_cast(const Batch<From>& v) noexcept {
  return xsimd::bitwise_cast<Batch<To>>(v);
}

/// Elementwise |x| (the sign bit cleared; NaN stays NaN).
inline Batch<float> abs(const Batch<float>& x) noexcept { return xsimd::abs(x); }

/// A value loaded once and used by several FMAs: GCC folds the load into every FMA that uses it
/// (a memory operand each), which turns one load into four and made the decode kernels bound by
/// the load ports instead of the FMAs. The empty asm makes the value a register the compiler
/// cannot re-derive from memory; it emits no instruction.
inline Batch<float> in_register(Batch<float> v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v.data));
#endif
  return v;
}

/// Elementwise exp; accurate to about 1 ulp (xsimd's implementation, no scalar expf calls).
inline Batch<float> exp(const Batch<float>& x) noexcept { return xsimd::exp(x); }
/// e^x for x <= 0 (the softmax's s - max), NaN kept: max relative error 8.5e-8 (1.01 ulp)
/// against e^x in double over every float in [-87.33, 0]; 0 below that, where e^x is under
/// FLT_MIN (a softmax weight 1e-38 of the largest), exactly 1 at 0, and 0 for -inf (a masked key).
/// xsimd's exp (1.5 ulp) also covers positive arguments and denormal results: the softmax pass
/// over a row (subtract, exp, store, sum) is 24 instructions per vector instead of 29.
/// x = n ln2 + r with n = round(x log2 e) and |r| <= ln2/2: e^x = 2^n e^r, ln 2 split in two
/// parts so that r is exact to float precision for the n here (-126..0), e^r a degree-6
/// polynomial (minimax for the relative error, fitted for this range), 2^n built from n's bits.
inline Batch<float> exp_nonpositive(const Batch<float>& x) noexcept {
  // ln2_hi has 16 significant bits, so n ln2_hi is exact also where fma is a multiply and an add
  // (SSE2); ln2_lo = ln 2 - ln2_hi.
  const Batch<float> log2e(1.44269504f), ln2_hi(0.693145751953125f), ln2_lo(1.42860682e-6f);
  // Adding 1.5 * 2^23 rounds to an integer, which lands in the low mantissa bits.
  const Batch<float> round_shift(12582912.f);
  const Batch<float> shifted = fma(x, log2e, round_shift);
  const Batch<float> n = shifted - round_shift;
  Batch<float> r = fma(n, -ln2_hi, x);
  r = fma(n, -ln2_lo, r);
  // e^r = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4).
  Batch<float> q = fma(Batch<float>(1.38146151e-3f), r, Batch<float>(8.36871006e-3f));
  q = fma(q, r, Batch<float>(4.16683890e-2f));
  q = fma(q, r, Batch<float>(1.66665211e-1f));
  q = fma(q, r, Batch<float>(4.99999940e-1f));
  const Batch<float> e_r = fma(q, r * r, r) + Batch<float>(1.f);
  // The shifted float's bits are 0x4B400000 + n: shifting them into the exponent field leaves n
  // there (the constant's set bits leave the word), and 127 more is the biased exponent of 2^n.
  const Batch<std::int32_t> exponent = (bit_cast<std::int32_t>(shifted) << 23) + Batch<std::int32_t>(127 << 23);
  const Batch<float> result = e_r * bit_cast<float>(exponent);
  // Below the range (and -inf, whose r is NaN): 0. A NaN x fails the test and stays NaN.
  return xsimd::select(x < Batch<float>(-87.33f), Batch<float>(0.f), result);
}
/// min(x, bound) that keeps a NaN x: xsimd::min returns `bound` for a NaN lane on SSE2 (minps
/// returns its second operand), which would turn a NaN input into a finite result.
inline Batch<float> min_keep_nan(const Batch<float>& x, const Batch<float>& bound) noexcept {
  return xsimd::select(x > bound, bound, x);
}
/// Elementwise tanh and log(1 + x) (xsimd's implementations).
inline Batch<float> tanh(const Batch<float>& x) noexcept { return xsimd::tanh(x); }
inline Batch<float> log1p(const Batch<float>& x) noexcept { return xsimd::log1p(x); }
inline Batch<float> fma(const Batch<float>& a, const Batch<float>& b, const Batch<float>& c) noexcept {
  return xsimd::fma(a, b, c);
}
/// log(1 + x), x^y, ln x, e^x and max(a, b) in double lanes (xsimd's implementations; the
/// relative biases that attention evaluates per logit in double).
///
/// Except under g++ without optimization on AVX-512BW: there GCC defines the byte and word blend
/// intrinsics as macros whose casts do not take xsimd 8.1's batches, and its double log (inside
/// log1p and pow) selects int64 lanes through them, so it does not compile; a debug build takes
/// the scalar functions lane by lane instead.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__OPTIMIZE__) && defined(__AVX512BW__)
template <class F>
Batch<double> lane_by_lane(const Batch<double>& x, const Batch<double>& y, F f) noexcept {
  alignas(64) double a[Batch<double>::size], b[Batch<double>::size];
  x.store_aligned(a), y.store_aligned(b);
  for (std::size_t i = 0; i < Batch<double>::size; ++i) a[i] = f(a[i], b[i]);
  return Batch<double>::load_aligned(a);
}
inline Batch<double> log1p(const Batch<double>& x) noexcept {
  return lane_by_lane(x, x, [](double v, double) { return std::log1p(v); });
}
inline Batch<double> pow(const Batch<double>& x, const Batch<double>& y) noexcept {
  return lane_by_lane(x, y, [](double v, double e) { return std::pow(v, e); });
}
inline Batch<double> log(const Batch<double>& x) noexcept {
  return lane_by_lane(x, x, [](double v, double) { return std::log(v); });
}
inline Batch<double> exp(const Batch<double>& x) noexcept {
  return lane_by_lane(x, x, [](double v, double) { return std::exp(v); });
}
#else
inline Batch<double> log1p(const Batch<double>& x) noexcept { return xsimd::log1p(x); }
inline Batch<double> pow(const Batch<double>& x, const Batch<double>& y) noexcept { return xsimd::pow(x, y); }
/// ln x and e^x in double lanes: pow(x, y) is exp(y * log(x)) in xsimd, so a caller with one x
/// and many y (attention decode's KERPLE power bias, one ln d per key for every head) takes the
/// log once.
inline Batch<double> log(const Batch<double>& x) noexcept { return xsimd::log(x); }
inline Batch<double> exp(const Batch<double>& x) noexcept { return xsimd::exp(x); }
#endif
inline Batch<double> max(const Batch<double>& a, const Batch<double>& b) noexcept { return xsimd::max(a, b); }
/// a * b + c in double lanes (the double-precision Cauchy sums of ssm_dplr_kernel).
inline Batch<double> fma(const Batch<double>& a, const Batch<double>& b, const Batch<double>& c) noexcept {
  return xsimd::fma(a, b, c);
}

/// Dot product of two contiguous float arrays of length n.
inline float dot(const float* a, const float* b, std::ptrdiff_t n) noexcept {
  Batch<float> acc(0.f);
  const std::ptrdiff_t nv = vector_end(n);
  for (std::ptrdiff_t i = 0; i < nv; i += kWidth) acc = fma(load(a + i), load(b + i), acc);
  float sum = reduce_add(acc);
  for (std::ptrdiff_t i = nv; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

/// y[i] += alpha * x[i] over n contiguous floats.
inline void axpy(float alpha, const float* x, float* y, std::ptrdiff_t n) noexcept {
  const Batch<float> a(alpha);
  const std::ptrdiff_t nv = vector_end(n);
  for (std::ptrdiff_t i = 0; i < nv; i += kWidth) store(y + i, fma(a, load(x + i), load(y + i)));
  for (std::ptrdiff_t i = nv; i < n; ++i) y[i] += alpha * x[i];
}

/// y[i] += c over n contiguous floats.
inline void add_scalar(float c, float* y, std::ptrdiff_t n) noexcept {
  const Batch<float> v(c);
  const std::ptrdiff_t nv = vector_end(n);
  for (std::ptrdiff_t i = 0; i < nv; i += kWidth) store(y + i, load(y + i) + v);
  for (std::ptrdiff_t i = nv; i < n; ++i) y[i] += c;
}

/// Whether `rows` rows of `cols` contiguous floats, `row_stride` floats apart, are all finite:
/// x * 0 is 0 for a finite x and NaN for an inf or NaN. Four sums, as one would wait on its
/// add's latency at every vector.
inline bool rows_finite(const float* data, std::ptrdiff_t rows, std::ptrdiff_t cols, std::ptrdiff_t row_stride) noexcept {
  const Batch<float> zero(0.f);
  Batch<float> z0(0.f), z1(0.f), z2(0.f), z3(0.f);
  float tail = 0.f;
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    const float* row = data + r * row_stride;
    std::ptrdiff_t c = 0;
    for (; c + 4 * kWidth <= cols; c += 4 * kWidth) {
      z0 += load(row + c) * zero, z1 += load(row + c + kWidth) * zero;
      z2 += load(row + c + 2 * kWidth) * zero, z3 += load(row + c + 3 * kWidth) * zero;
    }
    for (; c + kWidth <= cols; c += kWidth) z0 += load(row + c) * zero;
    for (; c < cols; ++c) tail += row[c] * 0.f;
  }
  return reduce_add((z0 + z1) + (z2 + z3)) + tail == 0.f;
}

/// Non-temporal store of one batch, bypassing the cache: for outputs larger than the cache that
/// are not read back soon, it saves the read-for-ownership of every line (a quarter of a scan's
/// traffic). xsimd 8.1 has none, so the x86 instruction is chosen by the arch tag; elsewhere it is
/// a plain store. `p` must be aligned to the batch size. The stores are weakly ordered: call
/// stream_fence() after a task's last one, before handing its results to another thread.
template <class A>
void stream_store(float* p, const xsimd::batch<float, A>& v) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>)
    _mm512_stream_ps(p, v);
  else if constexpr (std::is_base_of_v<xsimd::avx, A>)
    _mm256_stream_ps(p, v);
  else if constexpr (std::is_base_of_v<xsimd::sse2, A>)
    _mm_stream_ps(p, v);
  else
    v.store_aligned(p);
#else
  v.store_aligned(p);
#endif
}

inline void stream_fence() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

/// Name of the instruction set the batches compile to, for benchmark and example output.
inline const char* arch_name() noexcept { return Arch::name(); }

}  // namespace seqmix::simd

namespace seqmix::detail {

/// f(integral_constant<i>) for each i of the sequence, as a fold: the register arrays of the SIMD
/// tiles are indexed by constants, so g++ -O2 keeps them in registers (with loops it kept them on
/// the stack).
template <std::size_t... i, class F>
inline void unrolled(std::index_sequence<i...>, F&& f) {
  (f(std::integral_constant<std::size_t, i>{}), ...);
}

}  // namespace seqmix::detail
