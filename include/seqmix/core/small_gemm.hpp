// The register tile of the chunked forms' small fp32 products, C (+)= A B, shared by ssd's
// chunk products (ssm/ssd/gemm.hpp), and the small product built on it (small_product,
// lower_scores) shared by the linear-attention chunk steps (diagonal_decay/chunk_products.hpp)
// and the delta rules' WY form (delta_update/small_gemm.hpp, wy.hpp). Internal.
//
// Those products are small (rows 64-128, inner 64-192, columns 64-128) and run once per chunk:
// Eigen's general GEMM packs both operands on every call and reached about half of the FMA peak
// on them (ssm/ssd/README.md, delta_update/README.md). Here nothing is packed: A is read in place
// through any row and column stride (one broadcast per row and inner index), B row by row
// (contiguous vectors), and MR x NV vectors of C stay in registers over the whole inner loop.
// Each family picks the tile shapes its products measured fastest with (template arguments).
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

/// A left operand read in place: element (i, k) at data[i * row_stride + k * col_stride]
/// (row-major A: row_stride = lda, col_stride = 1; A given as its transpose: 1 and lda).
struct StridedOperand {
  const float* data;
  index_t row_stride, col_stride;
  float operator()(index_t i, index_t k) const noexcept { return data[i * row_stride + k * col_stride]; }
  /// The operand from row i on.
  StridedOperand from_row(index_t i) const noexcept { return {data + i * row_stride, row_stride, col_stride}; }
};

/// What happens to C's old value: overwritten (read false: a stale NaN is never read), or kept
/// as scale * C + A B (scale 0 still multiplies, so a NaN in C stays NaN as a recurrence's
/// 0 * NaN does).
struct Accumulate {
  bool read;
  float scale = 1.f;
};

/// C[MR rows, NV vectors] (+)= A[MR, inner] B[inner, NV vectors]; B rows ldb floats apart, C rows
/// ldc apart. The tile's arrays are unrolled by folds, not loops: with loops g++ -O2 keeps them
/// on the stack, at a third of the speed.
template <std::size_t MR, std::size_t NV>
inline void gemm_register_tile(const StridedOperand& a, const float* b, index_t ldb, float* c, index_t ldc,
                               index_t inner, const Accumulate& old) noexcept {
  using Vec = simd::Batch<float>;
  constexpr index_t W = simd::kWidth;
  Vec acc[MR][NV];
  unrolled(std::make_index_sequence<MR>{}, [&](auto r) {
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) {
      acc[r][v] = old.read ? Vec(old.scale) * simd::load(c + index_t(r) * ldc + index_t(v) * W) : Vec(0.f);
    });
  });
  for (index_t k = 0; k < inner; ++k) {
    Vec bk[NV];
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { bk[v] = simd::load(b + k * ldb + index_t(v) * W); });
    unrolled(std::make_index_sequence<MR>{}, [&](auto r) {
      const Vec ar(a(index_t(r), k));
      unrolled(std::make_index_sequence<NV>{}, [&](auto v) { acc[r][v] = simd::fma(ar, bk[v], acc[r][v]); });
    });
  }
  unrolled(std::make_index_sequence<MR>{}, [&](auto r) {
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { simd::store(c + index_t(r) * ldc + index_t(v) * W, acc[r][v]); });
  });
}

/// The columns past the last whole vector (n of them, at b and c), rows [0, rows), scalar. Row i
/// sums k < inner, or k <= causal_base + i when causal_base >= 0 (A is zero beyond).
inline void gemm_scalar_columns(const StridedOperand& a, index_t rows, const float* b, index_t ldb, index_t n, float* c,
                                index_t ldc, index_t inner, const Accumulate& old, index_t causal_base = -1) noexcept {
  for (index_t i = 0; i < rows; ++i) {
    const index_t k_end = causal_base < 0 ? inner : std::min(inner, causal_base + i + 1);
    for (index_t j = 0; j < n; ++j) {
      float s = old.read ? old.scale * c[i * ldc + j] : 0.f;
      for (index_t k = 0; k < k_end; ++k) s += a(i, k) * b[k * ldb + j];
      c[i * ldc + j] = s;
    }
  }
}

// ---- The small product over whole matrices ---------------------------------------------------

/// Which inner indices row i of A may use: all, or k <= i (A lower-triangular, M = inner, its
/// zeros skipped).
enum class InnerRange { full, lower };

/// gemm_register_tile<rows, NV> for a runtime rows in [1, R]: a panel's last row block.
template <std::size_t NV, std::size_t R>
inline void register_tile_rows(index_t rows, const StridedOperand& a, const float* b, index_t ldb, float* c,
                               index_t ldc, index_t inner, const Accumulate& old) noexcept {
  if constexpr (R > 0) {
    if (rows == static_cast<index_t>(R)) return gemm_register_tile<R, NV>(a, b, ldb, c, ldc, inner, old);
    register_tile_rows<NV, R - 1>(rows, a, b, ldb, c, ldc, inner, old);
  }
}

/// One column panel of NV vectors, rows [0, M) in blocks of R. InnerRange::lower: a block of
/// rows [i, i + r) sums the inner indices below min(inner, i + r) only (A is zero beyond each
/// row's diagonal; the caller guarantees B finite there, since 0 * inf would be NaN).
template <std::size_t R, std::size_t NV>
inline void product_panel(const StridedOperand& a, index_t M, index_t inner, const float* b, index_t ldb, float* c,
                          index_t ldc, const Accumulate& old, InnerRange range) noexcept {
  constexpr index_t rows_max = static_cast<index_t>(R);
  for (index_t i = 0; i < M; i += rows_max) {
    const index_t rows = std::min(rows_max, M - i);
    const index_t depth = range == InnerRange::lower ? std::min(inner, i + rows) : inner;
    register_tile_rows<NV, R>(rows, a.from_row(i), b, ldb, c + i * ldc, ldc, depth, old);
  }
}

/// C[M, n] (+)= A[M, inner] B[inner, n] (see Accumulate), B and C row-major (rows ldb, ldc floats
/// apart), on R-row x NV-vector register tiles: column panels of NV vectors (then 2, then 1),
/// each over all row blocks, so one panel of B stays in L1 while A's rows pass; the columns past
/// the last whole vector scalar. Every element is the same chain of FMAs over k in order
/// whatever the tile shape, so R and NV change speed only. InnerRange::lower: row i sums k <= i
/// (the vector columns up to their row block's last row, adding A's zeros: B must be finite).
template <std::size_t R, std::size_t NV>
inline void small_product(const StridedOperand& a, index_t M, index_t inner, const float* b, index_t ldb, index_t n,
                          float* c, index_t ldc, const Accumulate& old, InnerRange range = InnerRange::full) noexcept {
  constexpr index_t W = simd::kWidth, panel = static_cast<index_t>(NV) * W;
  index_t col = 0;
  for (; col + panel <= n; col += panel) product_panel<R, NV>(a, M, inner, b + col, ldb, c + col, ldc, old, range);
  if constexpr (NV > 2)
    for (; col + 2 * W <= n; col += 2 * W) product_panel<R, 2>(a, M, inner, b + col, ldb, c + col, ldc, old, range);
  if constexpr (NV > 1)
    for (; col + W <= n; col += W) product_panel<R, 1>(a, M, inner, b + col, ldb, c + col, ldc, old, range);
  if (col < n)
    gemm_scalar_columns(a, M, b + col, ldb, n - col, c + col, ldc, inner, old, range == InnerRange::lower ? 0 : -1);
}

/// The lower part of S = A BT for L rows, the part a causal chunk's scores use: A [L, inner]
/// (read in place), bt [inner, *] (the keys transposed, rows ldbt apart, at least
/// min(max_cols, round_up(L, kWidth)) columns; values past L ignored). Row i of s is written for
/// columns j < min(max_cols, round_up(min(L, i0 + R), kWidth)), i0 its R-row block's first row:
/// at least j <= i, plus products above the diagonal that the caller masks. s rows lds apart.
/// Each row block is a small_product<R, NV> over its columns (about half the full product's flops).
template <std::size_t R, std::size_t NV>
inline void lower_scores(const StridedOperand& a, index_t L, index_t inner, const float* bt, index_t ldbt, float* s,
                         index_t lds, index_t max_cols) noexcept {
  constexpr index_t W = simd::kWidth, rows_max = static_cast<index_t>(R);
  for (index_t i = 0; i < L; i += rows_max) {
    const index_t rows = std::min(rows_max, L - i);
    const index_t cols = std::min(max_cols, (i + rows + W - 1) / W * W);  // up to the block's last diagonal
    small_product<R, NV>(a.from_row(i), rows, inner, bt, ldbt, cols, s + i * lds, lds, Accumulate{false});
  }
}

}  // namespace seqmix::detail
