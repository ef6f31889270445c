// Packing of fp32 chunk tiles into the pair-word layouts of core/bf16_gemm.hpp, for the bf16
// dot-product chunked forms of GLA (chunked.hpp) and the delta rules (delta_update/wy.hpp).
// Internal; only compiled where the target has AVX512-BF16 (kNativeBf16Dot).
//
// gemm_bf16 computes C[M x N] (+)= A B with
//   A [M x Kw] pair words along the reduction (word p of row m = (a[m][2p], a[m][2p+1]));
//   B [Kw x N] pair words across the reduction (word (p, n) = (b[2p][n], b[2p+1][n])), N a
//     multiple of 16.
// A chunk's GEMMs reduce either over channels (Q S, Q K^T) or over tokens (A V, K^T V), so every
// fp32 tile is packed in one of four ways: rows as A (pack_rows), row pairs as B (pack_row_pairs),
// and the transposes of both (transpose_words, core/register_transpose.hpp). Odd reductions are
// padded with zero halves, columns up to a multiple of 16 with zero words. Every value is rounded
// to bf16 once, to nearest even (vcvtne2ps2bf16).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/register_transpose.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la::bf16_tiles {

#if defined(__AVX512BF16__) && defined(__AVX512BW__)

using seqmix::detail::gemm_bf16;
// The transposes of both operand layouts (pair words): core/register_transpose.hpp. They were a
// word-by-word copy of L x K / 2 words per delta-rule chunk (the scores' K^T and the state
// update's (K * decay)^T).
using seqmix::detail::transpose_words;

inline index_t pad16(index_t n) { return (n + 15) / 16 * 16; }
inline index_t words(index_t n) { return (n + 1) / 2; }

// 32 consecutive floats from x (m of them, zeros past) times `scale`, as 32 bf16, in order.
inline __m512i round32(const float* x, index_t m, float scale = 1.f) noexcept {
  const __m512 f = _mm512_set1_ps(scale);
  const __m512 lo = _mm512_mul_ps(f, _mm512_maskz_loadu_ps(first_lanes16(m), x));
  const __m512 hi = m > 16 ? _mm512_mul_ps(f, _mm512_maskz_loadu_ps(first_lanes16(m - 16), x + 16)) : _mm512_setzero_ps();
  return as_words(_mm512_cvtne2ps_pbh(hi, lo));
}

/// n rows of `cols` floats (row stride ld), row r times row_scale[r] when given, as A operands:
/// dst row r holds words(cols) pair words (a zero half closing an odd row) at stride ldw. The
/// scale saves the callers a scaled fp32 copy (a gate's decay per row) made only to be packed.
inline void pack_rows(const float* src, index_t ld, index_t n, index_t cols, std::uint32_t* dst, index_t ldw,
                      const float* row_scale = nullptr) {
  const index_t w = words(cols);
  for (index_t r = 0; r < n; ++r) {
    const float* x = src + r * ld;
    std::uint32_t* out = dst + r * ldw;
    const float scale = row_scale ? row_scale[r] : 1.f;
    for (index_t c0 = 0; c0 < cols; c0 += 32) {
      const index_t m = std::min<index_t>(32, cols - c0);
      _mm512_mask_storeu_epi32(out + c0 / 2, first_lanes16(std::min<index_t>(16, w - c0 / 2)), round32(x + c0, m, scale));
    }
  }
}

/// 16 columns of two rows (a: the even row, b: the odd one) as the B operand's 16 pair words:
/// word c = (a[c], b[c]), each rounded to bf16.
inline __m512i row_pair_words(__m512 a, __m512 b) noexcept {
  alignas(64) static constexpr std::uint16_t kPair[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                          8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_permutexvar_epi16(_mm512_load_si512(kPair), as_words(_mm512_cvtne2ps_pbh(b, a)));
}

/// n rows of `cols` floats (row stride ld), row r times row_scale[r] and column c times
/// col_scale[c] when given, as a B operand: word (p, c) = (x[2p][c], x[2p+1][c]) at
/// dst[p * ldw + c] for p < words(n), c < pad16(cols); zeros past the rows and columns. Returns
/// true when every packed value is finite: a caller that must not multiply a non-finite value
/// checks the words it packs instead of reading the floats a second time (a finite float beyond
/// bf16's range rounds to infinity and reads as non-finite, which only sends it to the fp32 steps).
inline bool pack_row_pairs(const float* src, index_t ld, index_t n, index_t cols, std::uint32_t* dst, index_t ldw,
                           const float* row_scale = nullptr, const float* col_scale = nullptr) {
  __mmask32 bad = 0;
  for (index_t p = 0; p < words(n); ++p) {
    const float* x0 = src + 2 * p * ld;
    const float* x1 = 2 * p + 1 < n ? x0 + ld : nullptr;
    std::uint32_t* out = dst + p * ldw;
    const __m512 f0 = _mm512_set1_ps(row_scale ? row_scale[2 * p] : 1.f);
    const __m512 f1 = _mm512_set1_ps(row_scale && x1 ? row_scale[2 * p + 1] : 1.f);
    for (index_t c0 = 0; c0 < cols; c0 += 16) {
      const __mmask16 m = first_lanes16(cols - c0);
      const __m512 fc = col_scale ? _mm512_maskz_loadu_ps(m, col_scale + c0) : _mm512_setzero_ps();
      const __m512 s0 = col_scale ? _mm512_mul_ps(f0, fc) : f0, s1 = col_scale ? _mm512_mul_ps(f1, fc) : f1;
      const __m512 a = _mm512_mul_ps(s0, _mm512_maskz_loadu_ps(m, x0 + c0));
      const __m512 b = x1 ? _mm512_mul_ps(s1, _mm512_maskz_loadu_ps(m, x1 + c0)) : _mm512_setzero_ps();
      const __m512i w = row_pair_words(a, b);
      bad |= bf16_nonfinite(w);  // the same 32 values in another order
      _mm512_storeu_si512(out + c0, w);
    }
  }
  return bad == 0;
}

/// The B operand of X^T for X [n x cols] (src [words(cols) x lds]: word (p, j) =
/// (x[j][2p], x[j][2p+1]), transpose_words' output, zeros for j in [n, lds)) as the A operand of
/// X^T over the rows of X: dst row c holds words(n) pair words (x[2q][c], x[2q+1][c]) at stride
/// ldw. The same bf16 values regrouped (two vpermt2w per 64), where packing X's row pairs and
/// transposing them again cost a pass over the fp32 X and a word transpose.
inline void rows_words_from_columns(const std::uint32_t* src, index_t lds, index_t n, index_t cols,
                                    std::uint32_t* dst, index_t ldw) {
  alignas(64) static constexpr std::uint16_t kEven[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                                          22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
                                                          44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  alignas(64) static constexpr std::uint16_t kOdd[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                         23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                         45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  const __m512i even = _mm512_load_si512(kEven), odd = _mm512_load_si512(kOdd);
  const index_t w = words(n);
  for (index_t p = 0; p < words(cols); ++p) {
    const std::uint32_t* row = src + p * lds;
    std::uint32_t* lo = dst + 2 * p * ldw;  // channel 2p
    for (index_t j0 = 0; j0 < n; j0 += 32) {  // 32 rows of X: words j0 / 2 .. j0 / 2 + 15 of dst
      const __m512i x = _mm512_maskz_loadu_epi32(first_lanes16(lds - j0), row + j0);
      const __m512i y = _mm512_maskz_loadu_epi32(first_lanes16(lds - j0 - 16), row + j0 + 16);
      const __mmask16 keep = first_lanes16(w - j0 / 2);
      _mm512_mask_storeu_epi32(lo + j0 / 2, keep, _mm512_permutex2var_epi16(x, even, y));
      if (2 * p + 1 < cols) _mm512_mask_storeu_epi32(lo + ldw + j0 / 2, keep, _mm512_permutex2var_epi16(x, odd, y));
    }
  }
}

/// dst [M, n] = diag(row_scale) dst + A B (dst = A B when row_scale is null): gemm_bf16 over
/// pad16(n) columns (B zero past n), straight into dst when its rows have `room` >= pad16(n)
/// floats, else through `f` (M x pad16(n) floats) and copied. Writing in place saves a pass over
/// the product per GEMM (the copies were about 7% of a bf16 Gated DeltaNet chunk at K = 128, perf).
inline void gemm_bf16_into(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, index_t M,
                           index_t n, index_t Kw, float* dst, index_t ldd, index_t room, const float* row_scale,
                           float* f) {
  const index_t npad = pad16(n);
  if (npad <= room) return gemm_bf16(A, lda, B, ldb, dst, ldd, M, npad, Kw, row_scale);
  gemm_bf16(A, lda, B, ldb, f, npad, M, npad, Kw, nullptr);
  for (index_t i = 0; i < M; ++i) {
    float* d = dst + i * ldd;
    const float* fi = f + i * npad;
    for (index_t c = 0; c < n; ++c) d[c] = row_scale ? row_scale[i] * d[c] + fi[c] : fi[c];
  }
}

/// Per-thread scratch of the bf16 chunk forms, grown on demand (no allocation after warm-up).
struct Scratch {
  AlignedVector<std::uint32_t> a, b, c, d, e;  // packed operands
  AlignedVector<float> f, g, ones;             // fp32 products (padded rows), row scales of 1
  AlignedVector<float> staging;                // a few fp32 rows made just before they are packed
  static void grow(AlignedVector<std::uint32_t>& x, index_t n) {
    if (static_cast<index_t>(x.size()) < n) x.resize(static_cast<std::size_t>(n));
  }
  static void grow(AlignedVector<float>& x, index_t n) {
    if (static_cast<index_t>(x.size()) < n) x.resize(static_cast<std::size_t>(n));
  }
  /// Room for a chunk of `rows` token rows (2C for the delta rules' k;q) by K channels and V values.
  void reserve(index_t rows, index_t K, index_t V) {
    const index_t big = std::max({rows, K, V}) + 16;
    const index_t n = big * (big + 16);
    grow(a, n), grow(b, n), grow(c, n), grow(d, n), grow(e, n), grow(f, n), grow(g, n), grow(staging, 4 * big);
    if (static_cast<index_t>(ones.size()) < big) ones.assign(static_cast<std::size_t>(big), 1.f);
  }
  static Scratch& local() {
    thread_local Scratch scratch;
    return scratch;
  }
};

#endif

}  // namespace seqmix::detail::la::bf16_tiles
