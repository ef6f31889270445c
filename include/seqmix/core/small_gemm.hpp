// The register tile of the chunked forms' small fp32 products, C (+)= A B, shared by ssd's
// chunk products (ssm/ssd/gemm.hpp) and the delta rules' WY form (linear_attention/delta_update/
// small_gemm.hpp). Internal.
//
// Those products are small (rows 64-128, inner 64-192, columns 64-128) and run once per chunk:
// Eigen's general GEMM packs both operands on every call and reached about half of the FMA peak
// on them (ssm/ssd/README.md, delta_update/README.md). Here nothing is packed: A is read in place
// through any row and column stride (one broadcast per row and inner index), B row by row
// (contiguous vectors), and MR x NV vectors of C stay in registers over the whole inner loop.
// Each family's driver picks the tile shapes its products measured fastest with.
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

template <std::size_t... i, class F>
inline void unrolled(std::index_sequence<i...>, F&& f) {
  (f(std::integral_constant<std::size_t, i>{}), ...);
}

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

}  // namespace seqmix::detail
