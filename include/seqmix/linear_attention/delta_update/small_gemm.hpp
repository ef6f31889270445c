// Small fp32 products of the chunked WY form (wy.hpp), C (+)= A B on row-major operands in
// place, on core/small_gemm.hpp's register tile: no packing, the right operand read straight from
// its rows. Internal.
//
// The chunk's products are small ([2C,K] x [K,V] with C = 64, K = V = 64 or 128) and run once
// per chunk; Eigen's GEMM packs both operands on every call and reached 0.46-0.60 of the FMA
// peak on them (per-phase profile in README.md). Here row tiles of kTileRows rows x kTileVectors
// vectors of C accumulate over the inner dimension (core/small_gemm.hpp's small_product, shared
// with the GLA chunk steps); B's column strip (inner x 32 floats, 16 KB at 128) stays in L1 while
// the row tiles pass over it. Triangular operands skip their zero blocks.
#pragma once

#include <cstddef>
#include <utility>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/small_gemm.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::delta_update {

/// 6 rows x 2 vectors: 12 accumulators, 2 loads and 6 broadcasts per inner step; fits the 16
/// registers of SSE2 and AVX2 and covers the FMA latency (4 cycles, 2 ports). 8 rows on AVX-512's
/// 32 registers (16 accumulators): the chunk's products have 32, 64 or 128 rows (the state read
/// runs its key and query halves as two products of L rows), which 6-row tiles cut with a 2- or
/// 4-row tail tile each; the fp32 Gated DeltaNet call at H32 K = V = 128 T512 measured 1.06x
/// faster with 8 (README.md, "Where a chunk's time goes"). Every element's chain of FMAs is the
/// same whatever the tile, so the results are too.
constexpr index_t kTileRows = simd::kWidth >= 16 ? 8 : 6;
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
using detail::InnerRange;

/// C [m,n] = A [m,inner] B [inner,n] (+ scale C, see Accumulate), B and C row-major with
/// strides ldb, ldc: core/small_gemm.hpp's small_product on kTileRows x kTileVectors tiles. With
/// InnerRange::lower, row r sums p <= r only (A lower-triangular, m = inner): B must be finite
/// (within a row tile a zero of A can meet a later row of B; 0 * inf would be NaN).
inline void small_product(const LeftOperand& A, index_t m, index_t inner, const float* B, index_t ldb, index_t n,
                          float* C, index_t ldc, const Accumulate& acc_c, InnerRange range = InnerRange::full) {
  detail::small_product<static_cast<std::size_t>(kTileRows), static_cast<std::size_t>(kTileVectors)>(
      A, m, inner, B, ldb, n, C, ldc, acc_c, range);
}

// ---- The chunk's triangular solve (I + A) X = X on the register tile -----------------------------
//
// Forward substitution over a column strip of X (NV vectors wide) in blocks of R rows: the block's
// rows stay in registers while the solved rows above are subtracted (a register-tiled product,
// nothing packed), then the block substitutes itself in registers, row r final before the rows
// below it take it. Eigen's packed GEMM for the off-diagonal blocks plus row-by-row axpys reached
// 0.26-0.29 of the FMA peak on this solve (README.md's phase profile).

/// 8 rows x 2 vectors of X in registers (16 accumulators) on AVX-512's 32 registers; 4 rows with
/// fewer registers (SSE2, AVX2: 16), where 8 x 2 would spill.
constexpr index_t kSolveRows = simd::kWidth >= 16 ? 8 : 4;

/// Rows [i0, i0 + R) of X's strip at x (NV vectors, rows ldx apart), rows above i0 already
/// solved: x_i -= sum_{j < i} a(i, j) x_j, a row-major (rows lda apart, read below the diagonal only).
template <std::size_t R, std::size_t NV>
inline void solve_tile(const float* a, index_t lda, index_t i0, float* x, index_t ldx) noexcept {
  using Vec = simd::Batch<float>;
  using detail::unrolled;
  constexpr index_t W = simd::kWidth;
  const float* arow = a + i0 * lda;
  float* xrow = x + i0 * ldx;
  Vec acc[R][NV];
  unrolled(std::make_index_sequence<R>{}, [&](auto r) {
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { acc[r][v] = simd::load(xrow + index_t(r) * ldx + index_t(v) * W); });
  });
  for (index_t j = 0; j < i0; ++j) {
    Vec xj[NV];
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { xj[v] = simd::load(x + j * ldx + index_t(v) * W); });
    unrolled(std::make_index_sequence<R>{}, [&](auto r) {
      const Vec ar(-arow[index_t(r) * lda + j]);
      unrolled(std::make_index_sequence<NV>{}, [&](auto v) { acc[r][v] = simd::fma(ar, xj[v], acc[r][v]); });
    });
  }
  // Within the block: row s is final once the rows above it are in; it then feeds the rows below.
  unrolled(std::make_index_sequence<R>{}, [&](auto s) {
    constexpr std::size_t done = decltype(s)::value;
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { simd::store(xrow + index_t(done) * ldx + index_t(v) * W, acc[done][v]); });
    unrolled(std::make_index_sequence<R>{}, [&](auto r) {
      if constexpr (decltype(r)::value > done) {
        const Vec ar(-arow[index_t(r) * lda + i0 + index_t(done)]);
        unrolled(std::make_index_sequence<NV>{}, [&](auto v) { acc[r][v] = simd::fma(ar, acc[done][v], acc[r][v]); });
      }
    });
  });
}

/// The strip's rows [i0, i0 + rows) for rows < kSolveRows (the last block of an L that is not
/// a multiple of it).
template <std::size_t NV>
inline void solve_tile_rest(const float* a, index_t lda, index_t i0, index_t rows, float* x, index_t ldx) noexcept {
  switch (rows) {
    case 7: solve_tile<7, NV>(a, lda, i0, x, ldx); break;
    case 6: solve_tile<6, NV>(a, lda, i0, x, ldx); break;
    case 5: solve_tile<5, NV>(a, lda, i0, x, ldx); break;
    case 4: solve_tile<4, NV>(a, lda, i0, x, ldx); break;
    case 3: solve_tile<3, NV>(a, lda, i0, x, ldx); break;
    case 2: solve_tile<2, NV>(a, lda, i0, x, ldx); break;
    case 1: solve_tile<1, NV>(a, lda, i0, x, ldx); break;
    default: break;
  }
}

/// One strip of NV vectors, all L rows, in blocks of kSolveRows.
template <std::size_t NV>
inline void solve_strip(const float* a, index_t lda, index_t L, float* x, index_t ldx) noexcept {
  constexpr index_t R = kSolveRows;
  index_t i0 = 0;
  for (; i0 + R <= L; i0 += R) solve_tile<static_cast<std::size_t>(R), NV>(a, lda, i0, x, ldx);
  solve_tile_rest<NV>(a, lda, i0, L - i0, x, ldx);
}

/// Solves (I + A) X = X in place for rows [0, L) of X [*, n] (rows ldx apart) by forward
/// substitution, A's strictly lower part read (rows lda apart): strips of 2 vectors, then 1,
/// then the columns past the last whole vector one by one.
inline void solve_unit_lower_tiles(const float* a, index_t lda, index_t L, float* x, index_t ldx, index_t n) noexcept {
  constexpr index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + 2 * W <= n; c += 2 * W) solve_strip<2>(a, lda, L, x + c, ldx);
  for (; c + W <= n; c += W) solve_strip<1>(a, lda, L, x + c, ldx);
  for (; c < n; ++c)
    for (index_t i = 1; i < L; ++i) {
      float s = x[i * ldx + c];
      for (index_t j = 0; j < i; ++j) s -= a[i * lda + j] * x[j * ldx + c];
      x[i * ldx + c] = s;
    }
}

}  // namespace seqmix::delta_update
