// The fp32 chunk steps' products (chunked.hpp) on core/small_gemm.hpp's small product, with this
// family's tile shapes. Internal.
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

#include <cstddef>

#include "seqmix/core/register_transpose.hpp"
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

/// C[M, n] (+)= A[M, inner] B[inner, n] (see Accumulate), any n (a scalar column tail), B and C
/// row-major (rows ldb, ldc floats apart): core/small_gemm.hpp's small_product on this family's
/// panels. causal: A is lower-triangular (M = inner), row i sums up to its row block's last row;
/// B must be finite.
inline void tiled_product(const StridedOperand& a, index_t M, index_t inner, const float* b, index_t ldb, index_t n,
                          float* c, index_t ldc, const Accumulate& old, bool causal = false) noexcept {
  small_product<static_cast<std::size_t>(kPanelRows), static_cast<std::size_t>(kPanelVectors)>(
      a, M, inner, b, ldb, n, c, ldc, old, causal ? InnerRange::lower : InnerRange::full);
}

/// The lower part of S = Q KT for L tokens (core/small_gemm.hpp's lower_scores in blocks of
/// kScoreRows): q [L, inner] (rows ldq apart), kt [inner, *] (the keys transposed, rows ldkt
/// apart, at least round_up(L, kWidth) columns whose values past L are ignored). Row i of s is
/// written for columns j < round_up(min(L, i0 + kScoreRows), kWidth), i0 its block's first row:
/// at least j <= i, plus stale products above the diagonal that the caller masks. s has rows
/// lds >= round_up(L, kWidth) floats apart.
inline void lower_scores(const float* q, index_t ldq, const float* kt, index_t ldkt, index_t L, index_t inner,
                         float* s, index_t lds) noexcept {
  detail::lower_scores<static_cast<std::size_t>(kScoreRows), 2>({q, ldq, 1}, L, inner, kt, ldkt, s, lds, lds);
}

/// dst[c][j] = src[j][c] for j < rows, c < cols (src rows lds apart, dst rows ldd apart): the
/// chunk's keys in the layout lower_scores reads, in 16 x 16 register blocks where AVX512F is
/// there (core/register_transpose.hpp).
inline void transpose_block(const float* src, index_t lds, index_t rows, index_t cols, float* dst, index_t ldd) noexcept {
  transpose_words(src, lds, rows, cols, dst, ldd, rows);
}

}  // namespace seqmix::detail::la
