// Small fp32 products of the chunked WY form (wy.hpp), C (+)= A B on row-major operands in
// place, on core/small_gemm.hpp's register tile: no packing, the right operand read straight from
// its rows. Internal.
//
// The chunk's products are small ([2C,K] x [K,V] with C = 64, K = V = 64 or 128) and run once
// per chunk; Eigen's GEMM packs both operands on every call and reached 0.46-0.60 of the FMA
// peak on them (per-phase profile in README.md). Here row tiles of kTileRows rows x kTileVectors
// vectors of C accumulate over the inner dimension; B's column strip (inner x 32 floats, 16 KB at
// 128) stays in L1 while the row tiles pass over it. Triangular operands skip their zero blocks.
#pragma once

#include <algorithm>
#include <cstddef>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/small_gemm.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::delta_update {

/// 6 rows x 2 vectors: 12 accumulators, 2 loads and 6 broadcasts per inner step; fits the 16
/// registers of SSE2 as well as AVX-512's 32 and covers the FMA latency (4 cycles, 2 ports).
constexpr index_t kTileRows = 6;
constexpr index_t kTileVectors = 2;

/// A left operand: element (r, p) at data[r * row_stride + p * col_stride]. Row-major A:
/// {a, lda, 1}; A given as its transpose (the state update's K^T): {a, 1, lda}.
using LeftOperand = detail::StridedOperand;

/// What happens to C's old value: overwritten, or kept as scale * C + A B (the state update
/// folds its decay in here); see core/small_gemm.hpp.
using Accumulate = detail::Accumulate;
constexpr Accumulate kOverwrite{false};
constexpr Accumulate kAdd{true};

/// Which inner indices a row may use: all, or p <= r (A lower-triangular, its zeros skipped).
enum class InnerRange { full, lower };

/// Rows [r0, r0 + R) of C over all n columns.
template <std::size_t R>
inline void product_rows(const LeftOperand& A, index_t r0, const float* B, index_t ldb, index_t n, index_t inner,
                         InnerRange range, float* C, index_t ldc, const Accumulate& acc_c) {
  constexpr index_t W = simd::kWidth, step = W * static_cast<index_t>(kTileVectors);
  // lower: rows r0..r0+R-1 need p <= r; the tile runs to the last row's bound (A is zero beyond
  // each row's own, so the extra products add zeros: the caller guarantees B finite there).
  const bool lower = range == InnerRange::lower;
  const index_t p_end = lower ? std::min(inner, r0 + static_cast<index_t>(R)) : inner;
  const LeftOperand rows = A.from_row(r0);
  float* c_rows = C + r0 * ldc;
  index_t c = 0;
  for (; c + step <= n; c += step) detail::gemm_register_tile<R, kTileVectors>(rows, B + c, ldb, c_rows + c, ldc, p_end, acc_c);
  for (; c + W <= n; c += W) detail::gemm_register_tile<R, 1>(rows, B + c, ldb, c_rows + c, ldc, p_end, acc_c);
  if (c < n) detail::gemm_scalar_columns(rows, static_cast<index_t>(R), B + c, ldb, n - c, c_rows + c, ldc, inner, acc_c, lower ? r0 : -1);
}

/// C [m,n] = A [m,inner] B [inner,n] (+ scale C, see Accumulate), B and C row-major with
/// strides ldb, ldc. With
/// InnerRange::lower, row r sums p <= r only (A lower-triangular, m = inner): B must be finite
/// (within a row tile a zero of A can meet a later row of B; 0 * inf would be NaN).
inline void small_product(const LeftOperand& A, index_t m, index_t inner, const float* B, index_t ldb, index_t n,
                          float* C, index_t ldc, const Accumulate& acc_c, InnerRange range = InnerRange::full) {
  constexpr index_t R = kTileRows;
  index_t r = 0;
  for (; r + R <= m; r += R) product_rows<kTileRows>(A, r, B, ldb, n, inner, range, C, ldc, acc_c);
  switch (m - r) {
    case 5: product_rows<5>(A, r, B, ldb, n, inner, range, C, ldc, acc_c); break;
    case 4: product_rows<4>(A, r, B, ldb, n, inner, range, C, ldc, acc_c); break;
    case 3: product_rows<3>(A, r, B, ldb, n, inner, range, C, ldc, acc_c); break;
    case 2: product_rows<2>(A, r, B, ldb, n, inner, range, C, ldc, acc_c); break;
    case 1: product_rows<1>(A, r, B, ldb, n, inner, range, C, ldc, acc_c); break;
    default: break;
  }
}

}  // namespace seqmix::delta_update
