// The fp32 chunk steps' products (chunked.hpp) on core/small_gemm.hpp's register tile. Internal.
//
// Per chunk of C = 64 tokens the steps multiply [C,K] x [K,V] (the state read-out), [C,K] x
// [K,C] (the scores), [C,C] x [C,V] (A V) and [K,C] x [C,V] (the state update), K and V 64-128.
// Eigen's general GEMM packed both operands for every one of these products and ran them on a
// 48 x 4 micro tile at 0.40-0.51 of the one-core FMA rate (docs/operators.md, "The chunked form's
// efficiency"). Here the left operand is read in place (one broadcast per row and inner index),
// the right one row by row, and nothing is packed: the one operand that needs another layout,
// the keys of the scores, is written transposed once per chunk by the step that decays them.
// The causal structure is used twice: the scores are computed only in column panels that reach
// the diagonal of their row block, and A V sums only the tokens up to its row block's last row.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/small_gemm.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la {

// The rectangular products and A V: panels of kPanelVectors vectors of C, kPanelRows rows.
// AVX-512 (32 registers): 6 rows x 4 vectors = 24 accumulators + 4 rows of B + a broadcast, one
// panel spanning V = 64; 16 registers (SSE2, AVX2): 6 x 2 (12 + 2 + 1).
constexpr index_t kPanelVectors = simd::kWidth >= 16 ? 4 : 2;
constexpr index_t kPanelRows = 6;
// The scores: row blocks of kScoreRows (8 x 2 vectors = 16 accumulators with AVX-512; 4 x 2 with
// 16 registers), each computed up to the vector that holds its last row's diagonal. Narrower
// panels than A V's so that the skipped part above the diagonal is worth having: at C = 64 with
// AVX-512 the block rows need 1, 1, 2, 2, 3, 3, 4, 4 of the 4 column vectors (62.5% of the full
// product, against 100% for one 4-vector panel).
constexpr index_t kScoreRows = simd::kWidth >= 16 ? 8 : 4;

// Runs gemm_register_tile<rows, NV> for a runtime rows in [1, R]: the row tail of a panel.
template <std::size_t NV, std::size_t R>
inline void register_tile_rows(index_t rows, const StridedOperand& a, const float* b, index_t ldb, float* c,
                               index_t ldc, index_t inner, const Accumulate& old) noexcept {
  if constexpr (R > 0) {
    if (rows == static_cast<index_t>(R)) return gemm_register_tile<R, NV>(a, b, ldb, c, ldc, inner, old);
    register_tile_rows<NV, R - 1>(rows, a, b, ldb, c, ldc, inner, old);
  }
}

// One column panel of NV vectors, rows [0, M): blocks of kPanelRows. causal: a block of rows
// [i, i + r) sums the inner indices below min(inner, i + r) only (A is zero beyond each row's
// diagonal; the caller guarantees B finite there, since 0 * inf would be NaN).
template <std::size_t NV>
inline void product_panel(const StridedOperand& a, index_t M, index_t inner, const float* b, index_t ldb, float* c,
                          index_t ldc, const Accumulate& old, bool causal) noexcept {
  constexpr std::size_t R = static_cast<std::size_t>(kPanelRows);
  for (index_t i = 0; i < M; i += kPanelRows) {
    const index_t rows = std::min(kPanelRows, M - i);
    const index_t depth = causal ? std::min(inner, i + rows) : inner;
    register_tile_rows<NV, R>(rows, a.from_row(i), b, ldb, c + i * ldc, ldc, depth, old);
  }
}

/// C[M, n] (+)= A[M, inner] B[inner, n] (see Accumulate), n a multiple of simd::kWidth, B and C
/// row-major (rows ldb, ldc floats apart). causal: A is lower-triangular (M = inner), row i sums
/// up to its row block's last row; B must be finite.
inline void tiled_product(const StridedOperand& a, index_t M, index_t inner, const float* b, index_t ldb, index_t n,
                          float* c, index_t ldc, const Accumulate& old, bool causal = false) noexcept {
  constexpr index_t W = simd::kWidth;
  index_t col = 0;
  for (; col + kPanelVectors * W <= n; col += kPanelVectors * W)
    product_panel<static_cast<std::size_t>(kPanelVectors)>(a, M, inner, b + col, ldb, c + col, ldc, old, causal);
  if constexpr (kPanelVectors > 2)
    for (; col + 2 * W <= n; col += 2 * W) product_panel<2>(a, M, inner, b + col, ldb, c + col, ldc, old, causal);
  for (; col + W <= n; col += W) product_panel<1>(a, M, inner, b + col, ldb, c + col, ldc, old, causal);
}

/// The lower part of S = Q KT for L tokens: q [L, inner] (rows ldq apart), kt [inner, *] (the
/// keys transposed, rows ldkt apart, at least round_up(L, kWidth) columns whose values past L
/// are ignored). Row i of s is written for columns j < round_up(min(L, i0 + kScoreRows), kWidth),
/// i0 its block's first row: at least j <= i, plus stale products above the diagonal that the
/// caller masks. s has rows lds >= round_up(L, kWidth) floats apart.
inline void lower_scores(const float* q, index_t ldq, const float* kt, index_t ldkt, index_t L, index_t inner,
                         float* s, index_t lds) noexcept {
  constexpr index_t W = simd::kWidth;
  constexpr std::size_t R = static_cast<std::size_t>(kScoreRows);
  const Accumulate overwrite{false};
  for (index_t i = 0; i < L; i += kScoreRows) {
    const index_t rows = std::min(kScoreRows, L - i);
    const index_t cols = (i + rows + W - 1) / W * W;  // the vectors up to the block's last diagonal
    const StridedOperand a{q + i * ldq, ldq, 1};
    float* out = s + i * lds;
    index_t j = 0;
    for (; j + 2 * W <= cols; j += 2 * W) register_tile_rows<2, R>(rows, a, kt + j, ldkt, out + j, lds, inner, overwrite);
    if (j < cols) register_tile_rows<1, R>(rows, a, kt + j, ldkt, out + j, lds, inner, overwrite);
  }
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// 16 x 16 floats transposed in registers (core/bf16_gemm.hpp's word transpose: a float is one
// 32-bit word). Four rounds of shuffles against 256 scattered stores.
inline void transpose_16x16(const float* src, index_t lds, float* dst, index_t ldd) noexcept {
  __m512i w[16];
  unrolled(std::make_index_sequence<16>{}, [&](auto r) { w[r] = _mm512_loadu_si512(src + index_t(r) * lds); });
  transpose_words_16x16(w);
  unrolled(std::make_index_sequence<16>{}, [&](auto c) { _mm512_storeu_si512(dst + index_t(c) * ldd, w[c]); });
}
constexpr bool kRegisterTranspose = true;
#else
inline void transpose_16x16(const float*, index_t, float*, index_t) noexcept {}
constexpr bool kRegisterTranspose = false;
#endif

/// dst[c][j] = src[j][c] for j < rows, c < cols (src rows lds apart, dst rows ldd apart): the
/// chunk's keys in the layout lower_scores reads. Whole 16 x 16 blocks go through registers
/// where AVX-512 is there (measured 3.5 us -> 0.45 us for 64 x 64 floats, Zen 5, loaded: the scalar loop's
/// stores land on a new cache line each, 4 cycles per float); the rest are scalar in 16 x 16
/// blocks, which keep both sides' cache lines in L1.
inline void transpose_block(const float* src, index_t lds, index_t rows, index_t cols, float* dst, index_t ldd) noexcept {
  constexpr index_t B = 16;
  for (index_t j0 = 0; j0 < rows; j0 += B)
    for (index_t c0 = 0; c0 < cols; c0 += B) {
      const index_t j1 = std::min(rows, j0 + B), c1 = std::min(cols, c0 + B);
      if (kRegisterTranspose && j1 - j0 == B && c1 - c0 == B) {
        transpose_16x16(src + j0 * lds + c0, lds, dst + c0 * ldd + j0, ldd);
        continue;
      }
      for (index_t c = c0; c < c1; ++c)
        for (index_t j = j0; j < j1; ++j) dst[c * ldd + j] = src[j * lds + c];
    }
}

}  // namespace seqmix::detail::la
