// A complex FFT of power-of-two length over a batch of signals, one signal per SIMD lane: the
// transform long_conv's FFT form runs on simd::kWidth channel pairs at once (channel a in the real
// part, channel b in the imaginary part of each lane's signal).
//
// Why our own and not Eigen's kissfft (the first version): kissfft transforms one signal at a time
// with scalar complex arithmetic; the same radix-2 butterflies with every operation on a vector
// of 16 independent signals made long_conv's FFT form 4x faster at D = 768 (one thread: T = 4096
// 46 ms against 195 ms, T = 16384 231 ms against 910 ms).
// The forward transform is a decimation in frequency leaving its spectrum in bit-reversed order
// and the inverse a decimation in time taking it so: a convolution multiplies spectra pointwise,
// so no reordering pass is ever needed; both run in place, splitting recursively until a
// sub-transform fits in L2. Stages go three at a time (radix-8 groups of the radix-2 butterflies,
// fft_stage8; one radix-4 or radix-2 group for the levels left over): the in-cache stages are
// bound by loads and stores, not arithmetic, and above the cache block each pass over memory does
// three levels. Each radix-8 group reads its seven twiddles from one cache line
// (FftTwiddles::stage8_twiddles): read from the table, N / len entries apart, they had bound the
// in-cache stages at half their speed (docs/operators.md, long_conv, lc65k4). Radix-8 against radix-4 (long_conv at D = 768, one thread, loaded machine, with
// the other changes of that revision): docs/operators.md, long_conv. Earlier, radix-4 against
// radix-2: Measured on the transform alone (one
// thread, thread CPU time, 5 N log2 N flops per lane, AMD EPYC AVX-512, machine loaded, both
// versions in the same run): 113 against 81 GFLOP/s at N = 2048, 96 against 66 at 8192, 74
// against 56 at 32768, 55 against 43 at 131072. A pass fusing six levels through an L1 buffer of
// 64 elements was slower than radix-2 (43 against 56 GFLOP/s at N = 32768, 33 against 43 at
// 131072): a group's elements are a power of two apart and evict each other from L1 and L2.
#pragma once

#include <cmath>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {
namespace detail {

using FftBatch = simd::Batch<float>;

// Element j of a batched signal is 2 * kWidth floats at j * kFftElement: kWidth real parts,
// then kWidth imaginary parts (one lane per signal).
constexpr index_t kFftElement = 2 * simd::kWidth;

// Sub-transforms up to this many elements run their stages one after the other inside the
// block: 2048 elements of 128 bytes (AVX-512) = 256 KiB, within L2 (1 MiB per core on Zen 5,
// 2 MiB on Sapphire Rapids; 4096 elements measured no different at T = 4096..65536). Larger ones split first
// (recursively), so every stage of a long transform touches memory once per pass above the
// cutoff instead of once per stage.
constexpr index_t kFftCacheElements = 2048;

// Floats of a radix-8 group's twiddles in FftTwiddles::groups8: the seven real parts, a pad, the
// seven imaginary parts, a pad (one 64-byte line).
constexpr index_t kFftGroup8Floats = 16;

// The plan of a length-N transform: twiddles w^j = exp(-2 pi i j / N) for j < N/2 (computed in
// double), for each position of the bit-reversed spectrum the position of the mirrored
// frequency N - k (what a pair of real signals needs, long_conv's fft.hpp), and for every radix-8
// stage length len = 8e (8 <= len <= N) the seven twiddles of each group j < e in one line
// (stage8_twiddles), copied from re / im (the same values).
// Why the grouped copy: a stage of length len reads w^(j N / len) etc., N / len table entries
// apart (2 KiB to 16 KiB for the in-cache stages at N = 131072), so each twiddle was a line of
// its own and, the strides being powers of two, the lines fell into few L1 sets; with the grouped
// lines a radix-8 stage over a 256-element block ran 1.9x faster (10.6 against 5.5 ms for 12288
// blocks with the twiddles held in registers, one thread; docs/operators.md, long_conv, lc65k4).
struct FftTwiddles {
  index_t N = 0;
  std::vector<float> re, im;
  std::vector<index_t> mirror;
  AlignedVector<float> groups8;

  explicit FftTwiddles(index_t n)
      : N(n), re(static_cast<std::size_t>(n / 2)), im(static_cast<std::size_t>(n / 2)), mirror(static_cast<std::size_t>(n)) {
    const double step = -2.0 * 3.14159265358979323846 / static_cast<double>(n);
    for (index_t j = 0; j < n / 2; ++j) {
      re[static_cast<std::size_t>(j)] = static_cast<float>(std::cos(step * static_cast<double>(j)));
      im[static_cast<std::size_t>(j)] = static_cast<float>(std::sin(step * static_cast<double>(j)));
    }
    for (index_t i = 0; i < n; ++i) mirror[static_cast<std::size_t>(i)] = reverse((n - reverse(i)) % n);
    if (n >= 8) build_groups8();
  }

  // Group j's twiddles of the radix-8 stage of length len (a power of two, 8 <= len <= N): at
  // stage8_twiddles(len) + j kFftGroup8Floats (fft_butterfly8's order: positions j, j + e,
  // j + 2e, j + 3e of length len, j and j + e of length len / 2, j of length len / 4).
  const float* stage8_twiddles(index_t len) const noexcept {
    return groups8.data() + (len / 8 - 1) * kFftGroup8Floats;  // lengths 8 .. len / 2 before it
  }

 private:
  void build_groups8() {
    groups8.assign(static_cast<std::size_t>((N / 4 - 1) * kFftGroup8Floats), 0.f);
    for (index_t len = 8; len <= N; len *= 2) {
      const index_t e = len / 8, s1 = N / len;
      float* g = groups8.data() + (len / 8 - 1) * kFftGroup8Floats;
      for (index_t j = 0; j < e; ++j, g += kFftGroup8Floats) {
        const index_t at[7] = {j * s1, (j + e) * s1, (j + 2 * e) * s1, (j + 3 * e) * s1, j * 2 * s1, (j + e) * 2 * s1, j * 4 * s1};
        for (int i = 0; i < 7; ++i) {
          g[i] = re[static_cast<std::size_t>(at[i])];
          g[8 + i] = im[static_cast<std::size_t>(at[i])];
        }
      }
    }
  }

 public:

  // Bit reversal over log2 N bits: position i of the forward transform's output holds frequency
  // reverse(i).
  index_t reverse(index_t i) const noexcept {
    index_t r = 0;
    for (index_t bit = 1; bit < N; bit <<= 1) r = (r << 1) | ((i & bit) ? 1 : 0);
    return r;
  }
};

// The plan of length n (a power of two), built on first use and kept for the process: one per
// length, immutable once built (std::call_once makes concurrent first callers wait for the one
// building it). Why: long_conv built its plan on the calling thread for every call, 160 us at
// N = 8192 (cos / sin in double, the bit reversals), a serial 1% of a 64-thread call's work that
// alone idled ~40% of 64 cores (docs/parallel_grain.md, long_conv). Size: 32 N bytes with 8-byte
// indices (16 N for the tables and mirrors, 16 N for the grouped radix-8 twiddles: 4 MiB at
// N = 131072), for each length a process uses.
inline const FftTwiddles& fft_twiddles(index_t n) {
  constexpr int kLengths = 63;  // log2 n < 63 for any index_t length
  static std::once_flag built[kLengths];
  static std::unique_ptr<const FftTwiddles> plans[kLengths];
  int log2n = 0;
  while ((index_t{1} << log2n) < n) ++log2n;
  std::call_once(built[log2n], [&] { plans[log2n] = std::make_unique<const FftTwiddles>(index_t{1} << log2n); });
  return *plans[log2n];
}

// One element of a batched signal in registers: kWidth real parts and kWidth imaginary parts.
struct FftValue {
  FftBatch re, im;
};

inline FftValue fft_load(const float* p) noexcept { return {simd::load(p), simd::load(p + simd::kWidth)}; }
inline void fft_store(float* p, const FftValue& v) noexcept {
  simd::store(p, v.re);
  simd::store(p + simd::kWidth, v.im);
}

// The twiddle w^t (conjugated for the inverse) broadcast over the lanes.
template <bool kInverse>
inline FftValue fft_twiddle(const FftTwiddles& tw, index_t t) noexcept {
  const auto i = static_cast<std::size_t>(t);
  return {FftBatch(tw.re[i]), FftBatch(kInverse ? -tw.im[i] : tw.im[i])};
}

inline FftValue fft_mul(const FftValue& a, const FftValue& w) noexcept {
  return {simd::fma(a.re, w.re, -(a.im * w.im)), simd::fma(a.re, w.im, a.im * w.re)};
}

// Radix-2 butterflies in registers: forward (decimation in frequency) a + b and (a - b) w, inverse
// (decimation in time, w conjugated by fft_twiddle) a + w b and a - w b.
inline void fft_dif2(FftValue& a, FftValue& b, const FftValue& w) noexcept {
  const FftValue d{a.re - b.re, a.im - b.im};
  a = {a.re + b.re, a.im + b.im};
  b = fft_mul(d, w);
}

inline void fft_dit2(FftValue& a, FftValue& b, const FftValue& w) noexcept {
  const FftValue t = fft_mul(b, w);
  b = {a.re - t.re, a.im - t.im};
  a = {a.re + t.re, a.im + t.im};
}

// One radix-2 stage over a sub-transform of len elements at x, the twiddle of position j being
// w^(j N / len).
template <bool kInverse>
inline void fft_stage2(float* x, index_t len, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t half = len / 2, stride = tw.N / len;
  for (index_t j = 0; j < half; ++j) {
    float* pa = x + j * E;
    float* pb = pa + half * E;
    FftValue a = fft_load(pa), b = fft_load(pb);
    if (kInverse)
      fft_dit2(a, b, fft_twiddle<true>(tw, j * stride));
    else
      fft_dif2(a, b, fft_twiddle<false>(tw, j * stride));
    fft_store(pa, a), fft_store(pb, b);
  }
}

// The group's butterflies: elements a0..a3 at positions j, j + q, j + 2q, j + 3q of a length-4q
// stage, w1 / w1q the twiddles of positions j / j + q at that length, w2 that of j at length 2q.
// (long_conv's fft.hpp runs the first and last groups of its padded transforms through it too.)
template <bool kInverse>
inline void fft_butterfly4(FftValue& a0, FftValue& a1, FftValue& a2, FftValue& a3, const FftValue& w1,
                           const FftValue& w1q, const FftValue& w2) noexcept {
  if (kInverse) {
    fft_dit2(a0, a1, w2), fft_dit2(a2, a3, w2);
    fft_dit2(a0, a2, w1), fft_dit2(a1, a3, w1q);
  } else {
    fft_dif2(a0, a2, w1), fft_dif2(a1, a3, w1q);
    fft_dif2(a0, a1, w2), fft_dif2(a2, a3, w2);
  }
}

// Two radix-2 stages at once over a sub-transform of len = 4q elements at x: the stage of length
// len and, on both halves, the stage of length 2q (forward; the inverse runs them the other way
// round). Elements j, j + q, j + 2q, j + 3q (j < q) only meet each other in those two stages, so
// they are loaded once, go through both in registers and are stored once: half the loads and
// stores of two radix-2 stages (which bound the in-cache stages) and, above the cache block, half
// the passes over memory. The same butterflies and twiddles as the radix-2 stages, in a
// different order: the same results.
template <bool kInverse>
inline void fft_stage4(float* x, index_t len, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t q = len / 4, s1 = tw.N / len, s2 = 2 * s1;
  for (index_t j = 0; j < q; ++j) {
    float* p = x + j * E;
    FftValue a0 = fft_load(p), a1 = fft_load(p + q * E), a2 = fft_load(p + 2 * q * E), a3 = fft_load(p + 3 * q * E);
    fft_butterfly4<kInverse>(a0, a1, a2, a3, fft_twiddle<kInverse>(tw, j * s1), fft_twiddle<kInverse>(tw, (j + q) * s1),
                             fft_twiddle<kInverse>(tw, j * s2));
    fft_store(p, a0), fft_store(p + q * E, a1), fft_store(p + 2 * q * E, a2), fft_store(p + 3 * q * E, a3);
  }
}

// The group's butterflies of three radix-2 stages: a[m] the element at position j + m e (m < 8)
// of a length-8e stage, w1m the twiddle of position j + m e at that length, w2m that of j + m e
// at length 4e, w4 that of j at length 2e (the inverse's conjugated). Levels (forward; the
// inverse runs them the other way round): length 8e, pairs (m, m + 4), twiddle w1m; length 4e,
// pairs (m, m + 2) in each half, w2(m % 2); length 2e, pairs (m, m + 1), w4.
// Forced inline: out of line (GCC's choice for a function this size) the eight values go through
// memory and the transform ran 1.3x slower (long_conv, T = 16384).
template <bool kInverse>
[[gnu::always_inline]] inline void fft_butterfly8(FftValue (&a)[8], const FftValue& w10, const FftValue& w11,
                                                  const FftValue& w12, const FftValue& w13, const FftValue& w20,
                                                  const FftValue& w21, const FftValue& w4) noexcept {
  if (kInverse) {
    fft_dit2(a[0], a[1], w4), fft_dit2(a[2], a[3], w4), fft_dit2(a[4], a[5], w4), fft_dit2(a[6], a[7], w4);
    fft_dit2(a[0], a[2], w20), fft_dit2(a[1], a[3], w21), fft_dit2(a[4], a[6], w20), fft_dit2(a[5], a[7], w21);
    fft_dit2(a[0], a[4], w10), fft_dit2(a[1], a[5], w11), fft_dit2(a[2], a[6], w12), fft_dit2(a[3], a[7], w13);
  } else {
    fft_dif2(a[0], a[4], w10), fft_dif2(a[1], a[5], w11), fft_dif2(a[2], a[6], w12), fft_dif2(a[3], a[7], w13);
    fft_dif2(a[0], a[2], w20), fft_dif2(a[1], a[3], w21), fft_dif2(a[4], a[6], w20), fft_dif2(a[5], a[7], w21);
    fft_dif2(a[0], a[1], w4), fft_dif2(a[2], a[3], w4), fft_dif2(a[4], a[5], w4), fft_dif2(a[6], a[7], w4);
  }
}

// The same with group j's twiddles from FftTwiddles::stage8_twiddles (one line per group).
// (long_conv's fft.hpp runs its padded first and last passes through it too.)
template <bool kInverse>
[[gnu::always_inline]] inline void fft_butterfly8(FftValue (&a)[8], const float* group) noexcept {
  const auto w = [group](int i) { return FftValue{FftBatch(group[i]), FftBatch(kInverse ? -group[8 + i] : group[8 + i])}; };
  fft_butterfly8<kInverse>(a, w(0), w(1), w(2), w(3), w(4), w(5), w(6));
}

// Three radix-2 stages at once over a sub-transform of len = 8e elements at x: the stage of
// length len, on both halves the stage of length 4e, on the four quarters the stage of length 2e
// (forward; the inverse runs them the other way round). Elements j + m e (m < 8, j < e) only meet
// each other in those three stages: loaded once, three levels in registers (16 vector registers
// with AVX-512's 32), stored once. Why: the in-cache stages are bound by loads and stores (a
// radix-4 group does 4 complex loads and stores per two levels, this one 8 per three), and above
// the cache block a pass over memory does three levels instead of two. The same butterflies and
// twiddles as three radix-2 stages: the same results.
template <bool kInverse>
inline void fft_stage8(float* x, index_t len, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t e = len / 8;
  const float* group = tw.stage8_twiddles(len);
  for (index_t j = 0; j < e; ++j, group += kFftGroup8Floats) {
    float* p = x + j * E;
    FftValue a[8] = {fft_load(p), fft_load(p + e * E), fft_load(p + 2 * e * E), fft_load(p + 3 * e * E),
                     fft_load(p + 4 * e * E), fft_load(p + 5 * e * E), fft_load(p + 6 * e * E), fft_load(p + 7 * e * E)};
    fft_butterfly8<kInverse>(a, group);
    fft_store(p, a[0]), fft_store(p + e * E, a[1]), fft_store(p + 2 * e * E, a[2]), fft_store(p + 3 * e * E, a[3]);
    fft_store(p + 4 * e * E, a[4]), fft_store(p + 5 * e * E, a[5]), fft_store(p + 6 * e * E, a[6]);
    fft_store(p + 7 * e * E, a[7]);
  }
}

// The radix-4 stage of length 4 over the n elements at x (n / 4 sub-transforms): its twiddles
// are 1 and -i (+i for the inverse), so the group is additions and a swap of real and imaginary
// parts, no multiplications. Why: the in-cache 2048-element blocks end (forward) and start
// (inverse) with this stage, a fifth of their time with the general group (docs/operators.md,
// long_conv, lc65k4: 5.1 against 8.6 ms for this stage forward and inverse over 1536 blocks).
// The table's w^(N/4) is (6.1e-17, -1), cos(-pi/2) rounded: the products agree with the general
// group's to rounding (bit for bit on a 2048-element block of test data).
template <bool kInverse>
inline void fft_stage4_short(float* x, index_t n) noexcept {
  constexpr index_t E = kFftElement;
  const auto add = [](const FftValue& a, const FftValue& b) { return FftValue{a.re + b.re, a.im + b.im}; };
  const auto sub = [](const FftValue& a, const FftValue& b) { return FftValue{a.re - b.re, a.im - b.im}; };
  for (index_t start = 0; start < n; start += 4) {
    float* p = x + start * E;
    const FftValue a0 = fft_load(p), a1 = fft_load(p + E), a2 = fft_load(p + 2 * E), a3 = fft_load(p + 3 * E);
    if (kInverse) {
      // length 2 (pairs 0-1, 2-3), then length 4 with twiddles 1 and +i
      const FftValue b0 = add(a0, a1), b1 = sub(a0, a1), b2 = add(a2, a3), d = sub(a2, a3);
      const FftValue b3{FftBatch(0.f) - d.im, d.re};  // i d
      fft_store(p, add(b0, b2)), fft_store(p + 2 * E, sub(b0, b2));
      fft_store(p + E, add(b1, b3)), fft_store(p + 3 * E, sub(b1, b3));
    } else {
      // length 4 with twiddles 1 and -i, then length 2
      const FftValue b0 = add(a0, a2), b2 = sub(a0, a2), b1 = add(a1, a3), d = sub(a1, a3);
      const FftValue b3{d.im, FftBatch(0.f) - d.re};  // -i d
      fft_store(p, add(b0, b1)), fft_store(p + E, sub(b0, b1));
      fft_store(p + 2 * E, add(b2, b3)), fft_store(p + 3 * E, sub(b2, b3));
    }
  }
}

// Applies the radix-2 / 4 / 8 stage of length len to every sub-transform of that length in the
// n elements at x.
template <bool kInverse, int kRadix>
inline void fft_stage_all(float* x, index_t n, index_t len, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  for (index_t start = 0; start < n; start += len) {
    if (kRadix == 8)
      fft_stage8<kInverse>(x + start * E, len, tw);
    else if (kRadix == 4)
      fft_stage4<kInverse>(x + start * E, len, tw);
    else
      fft_stage2<kInverse>(x + start * E, len, tw);
  }
}

// The stages of lengths n, n/2, ..., 2 (forward) over the n-element sub-signal at x, three at a
// time, the one or two left over last (the inverse: first, at the shortest lengths).
template <bool kInverse>
inline void fft_stages_in_cache(float* x, index_t n, const FftTwiddles& tw) noexcept {
  int levels = 0;
  for (index_t m = n; m > 1; m /= 2) ++levels;
  const int rest = levels % 3;
  if (kInverse) {
    index_t done = 1;  // the length of the last stage done
    if (rest == 1) fft_stage_all<true, 2>(x, n, 2, tw), done = 2;
    if (rest == 2) fft_stage4_short<true>(x, n), done = 4;
    for (index_t len = 8 * done; len <= n; len *= 8) fft_stage_all<true, 8>(x, n, len, tw);
    return;
  }
  index_t len = n;
  for (int done = 0; done + 3 <= levels; done += 3, len /= 8) fft_stage_all<false, 8>(x, n, len, tw);
  if (rest == 2) fft_stage4_short<false>(x, n);
  if (rest == 1) fft_stage_all<false, 2>(x, n, 2, tw);
}

// The parts the pass above the cache block splits an n-element sub-transform into (1: none, n
// runs in cache): 8 or 4, chosen so that every pass below it is radix-8 and the parts end at
// cache blocks of 2048 or 4096 elements (4096: 512 KiB with AVX-512, still within L2). Why: each
// pass above the block is a trip through memory (16 MiB per pass at N = 131072), and a fixed
// radix-8-first split left a radix-2 or radix-4 pass over. Passes above the block: N = 8192,
// 16384, 32768 one; 65536, 131072 two (before: 1, 2, 2, 2, 3 with long_conv's padded first pass).
inline index_t fft_split_parts(index_t n) noexcept {
  if (n <= 2 * kFftCacheElements) return 1;
  int levels = 0;  // above a 2048-element block
  for (index_t m = n; m > kFftCacheElements; m /= 2) ++levels;
  return levels % 3 == 2 ? 4 : 8;
}

// Forward transform of the n-element sub-signal at x, in place: natural order in, bit-reversed
// order out (positions within the sub-transform). Above the cache block, one pass does three
// levels (two or one if fewer are left above it) and the parts recurse.
inline void fft_dif(float* x, index_t n, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t parts = fft_split_parts(n);
  if (parts == 1) return fft_stages_in_cache<false>(x, n, tw);
  if (parts == 8) fft_stage8<false>(x, n, tw);
  if (parts == 4) fft_stage4<false>(x, n, tw);
  for (index_t start = 0; start < n; start += n / parts) fft_dif(x + start * E, n / parts, tw);
}

// Inverse transform (unscaled), in place: bit-reversed order in, natural order out.
inline void fft_dit_inverse(float* x, index_t n, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t parts = fft_split_parts(n);
  if (parts == 1) return fft_stages_in_cache<true>(x, n, tw);
  for (index_t start = 0; start < n; start += n / parts) fft_dit_inverse(x + start * E, n / parts, tw);
  if (parts == 8) fft_stage8<true>(x, n, tw);
  if (parts == 4) fft_stage4<true>(x, n, tw);
}

/// Forward transform of a whole batched signal (tw.N elements): natural in, bit-reversed out.
inline void batched_fft_forward(float* x, const FftTwiddles& tw) noexcept { fft_dif(x, tw.N, tw); }
/// Inverse transform, unscaled: bit-reversed in, natural out.
inline void batched_fft_inverse(float* x, const FftTwiddles& tw) noexcept { fft_dit_inverse(x, tw.N, tw); }

}  // namespace detail
}  // namespace seqmix
