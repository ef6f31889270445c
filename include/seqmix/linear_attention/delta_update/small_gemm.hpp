// Small fp32 products of the chunked WY form (wy.hpp), C (+)= A B on row-major operands in
// place: no packing, the right operand read straight from its rows. Internal.
//
// The chunk's products are small ([2C,K] x [K,V] with C = 64, K = V = 64 or 128) and run once
// per chunk; Eigen's GEMM packs both operands on every call and reached 0.46-0.60 of the FMA
// peak on them (per-phase profile in README.md). Here a register tile of kTileRows rows x
// kTileVectors vectors of C accumulates over the inner dimension with one broadcast of A and
// kTileVectors loads of B per step; B's column strip (inner x 32 floats, 16 KB at 128) stays
// in L1 while the row tiles pass over it. Triangular operands skip their zero blocks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::delta_update {

/// 6 rows x 2 vectors: 12 accumulators, 2 loads and 6 broadcasts per inner step; fits the 16
/// registers of SSE2 as well as AVX-512's 32 and covers the FMA latency (4 cycles, 2 ports).
constexpr index_t kTileRows = 6;
constexpr index_t kTileVectors = 2;

/// A left operand: element (r, p) at a[r * rs + p * ps]. Row-major A: rs = lda, ps = 1; A given
/// as its transpose (the state update's K^T): rs = 1, ps = lda.
struct LeftOperand {
  const float* a;
  index_t rs, ps;
  float operator()(index_t r, index_t p) const { return a[r * rs + p * ps]; }
};

/// What happens to C's old value: overwritten (read false), or kept as scale * C + A B (the
/// state update folds its decay in here; scale 0 still multiplies, so a NaN in C stays NaN as
/// the recurrence's 0 * NaN does).
struct Accumulate {
  bool read;
  float scale = 1.f;
};
constexpr Accumulate kOverwrite{false};
constexpr Accumulate kAdd{true};

/// Which inner indices a row may use: all, or p <= r (A lower-triangular, its zeros skipped).
enum class InnerRange { full, lower };

template <std::size_t... i, class F>
inline void unrolled(std::index_sequence<i...>, F&& f) {
  (f(std::integral_constant<std::size_t, i>{}), ...);
}

/// C rows [r0, r0 + R) x vector columns [c0, c0 + NV * width) = (scale C +) A B over inner [0, inner).
template <std::size_t R, std::size_t NV>
inline void product_tile(const LeftOperand& A, index_t r0, const float* B, index_t ldb, index_t c0, index_t inner,
                         float* C, index_t ldc, const Accumulate& acc_c) {
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> acc[R][NV];
  unrolled(std::make_index_sequence<R>{}, [&](auto r) {
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) {
      acc[r][v] = acc_c.read ? Batch<float>(acc_c.scale) * simd::load(C + (r0 + index_t(r)) * ldc + c0 + index_t(v) * W)
                             : Batch<float>(0.f);
    });
  });
  for (index_t p = 0; p < inner; ++p) {
    const float* b = B + p * ldb + c0;
    Batch<float> bv[NV];
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) { bv[v] = simd::load(b + index_t(v) * W); });
    unrolled(std::make_index_sequence<R>{}, [&](auto r) {
      const Batch<float> x(A(r0 + index_t(r), p));
      unrolled(std::make_index_sequence<NV>{}, [&](auto v) { acc[r][v] = simd::fma(x, bv[v], acc[r][v]); });
    });
  }
  unrolled(std::make_index_sequence<R>{}, [&](auto r) {
    unrolled(std::make_index_sequence<NV>{}, [&](auto v) {
      simd::store(C + (r0 + index_t(r)) * ldc + c0 + index_t(v) * W, acc[r][v]);
    });
  });
}

/// The scalar columns [c0, c0 + n) of rows [r0, r0 + rows) (the part of a row past its last full vector).
inline void product_columns(const LeftOperand& A, index_t r0, index_t rows, const float* B, index_t ldb, index_t c0,
                            index_t n, index_t inner, float* C, index_t ldc, const Accumulate& acc_c) {
  for (index_t r = r0; r < r0 + rows; ++r) {
    for (index_t c = c0; c < c0 + n; ++c) {
      float sum = acc_c.read ? acc_c.scale * C[r * ldc + c] : 0.f;
      for (index_t p = 0; p < inner; ++p) sum += A(r, p) * B[p * ldb + c];
      C[r * ldc + c] = sum;
    }
  }
}

/// Rows [r0, r0 + R) of C over all n columns.
template <std::size_t R>
inline void product_rows(const LeftOperand& A, index_t r0, const float* B, index_t ldb, index_t n, index_t inner,
                         InnerRange range, float* C, index_t ldc, const Accumulate& acc_c) {
  constexpr index_t W = simd::kWidth, step = W * static_cast<index_t>(kTileVectors);
  // lower: rows r0..r0+R-1 need p <= r; the tile runs to the last row's bound (A is zero beyond
  // each row's own, so the extra products add zeros: the caller guarantees B finite there).
  const index_t p_end = range == InnerRange::lower ? std::min(inner, r0 + static_cast<index_t>(R)) : inner;
  index_t c = 0;
  for (; c + step <= n; c += step) product_tile<R, kTileVectors>(A, r0, B, ldb, c, p_end, C, ldc, acc_c);
  for (; c + W <= n; c += W) product_tile<R, 1>(A, r0, B, ldb, c, p_end, C, ldc, acc_c);
  if (c < n) product_columns(A, r0, R, B, ldb, c, n - c, p_end, C, ldc, acc_c);
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
