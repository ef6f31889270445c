// ssd, fast prefill: the register-tiled fp32 products of a chunk (internal to chunked.hpp).
//
// The chunked form's two per-head products are small and oddly shaped: Y [L,P] = [L,N+L]·[N+L,P]
// (state read-out and intra-chunk term in one) and the chunk state [N,P] += [N,L]·[L,P] with the
// left operand read transposed out of Bm. Eigen's general GEMM packs both operands of each call
// into its own panels and tiles rows by 48; at these sizes (M 64-128, K 64-192, P 64-80) that
// left it at 0.45-0.48 of the one-thread FMA peak (thread CPU time, mamba2-780m T 512). Here the
// left operand is read in place (any row and column stride: one scalar broadcast per row and k),
// the right operand row by row (contiguous P floats), and MR x NV vectors of the output stay in
// registers for the whole K loop, so nothing is packed and every load feeds MR or NV FMAs.
// Y also skips the zeros above the diagonal of its intra-chunk half: a row block stops at the
// last token it can see (`causal_base`), about a sixth of Y's flops at L = 64, N = 128.
#pragma once

#include <algorithm>
#include <type_traits>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

using SsdVec = simd::Batch<float>;

// The left operand in place: element (i, k) at data[i * row_stride + k * col_stride].
struct SsdLhs {
  const float* data;
  index_t row_stride, col_stride;
  const float* at(index_t i, index_t k) const noexcept { return data + i * row_stride + k * col_stride; }
};

// C[MR rows, NV vectors] = beta * C + A[MR, K] B[K, NV vectors], or C = A B when !read_c (the
// old C is not read: no 0 * NaN of a stale output; with read_c a beta of 0 still multiplies, as
// the recurrence's decay does). The accumulator arrays must be unrolled into registers: GCC
// at -O2 does not do it by itself and leaves them on the stack (a third of the speed).
template <int MR, int NV>
inline void ssd_gemm_tile(const SsdLhs& a, const float* b, index_t ldb, float* c, index_t ldc, index_t K,
                          float beta, bool read_c) noexcept {
  constexpr index_t W = simd::kWidth;
  SsdVec acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = read_c ? SsdVec(beta) * simd::load(c + r * ldc + v * W) : SsdVec(0.f);
  for (index_t k = 0; k < K; ++k) {
    SsdVec bk[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bk[v] = simd::load(b + k * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const SsdVec ar(*a.at(r, k));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = simd::fma(ar, bk[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) simd::store(c + r * ldc + v * W, acc[r][v]);
}

// The row count of a register tile for NV vectors: the accumulators, NV right-hand vectors and a
// broadcast fit the register file (32 with AVX-512, 16 below), with >= 8 independent FMA chains
// where possible (4-cycle FMA latency, two FMA ports).
template <int NV>
constexpr int ssd_tile_rows() {
  constexpr int registers = simd::kWidth >= 16 ? 32 : 16;
  return std::max(1, std::min(8, (registers - NV - 1) / NV));
}

// Rows [0, M) of one column panel of NV vectors. causal_base >= 0: row block [i, i + mr) runs
// k < min(K, causal_base + i + mr) (the lhs is zero beyond, see the top of the file).
template <int NV>
void ssd_gemm_panel(const SsdLhs& a, const float* b, index_t ldb, float* c, index_t ldc, index_t M, index_t K,
                    float beta, bool read_c, index_t causal_base) noexcept {
  constexpr int MR = ssd_tile_rows<NV>();
  const auto depth = [&](index_t i, index_t mr) { return causal_base < 0 ? K : std::min(K, causal_base + i + mr); };
  index_t i = 0;
  for (; i + MR <= M; i += MR) ssd_gemm_tile<MR, NV>(SsdLhs{a.at(i, 0), a.row_stride, a.col_stride}, b, ldb, c + i * ldc, ldc, depth(i, MR), beta, read_c);
  for (; i + 2 <= M; i += 2) ssd_gemm_tile<2, NV>(SsdLhs{a.at(i, 0), a.row_stride, a.col_stride}, b, ldb, c + i * ldc, ldc, depth(i, 2), beta, read_c);
  if (i < M) ssd_gemm_tile<1, NV>(SsdLhs{a.at(i, 0), a.row_stride, a.col_stride}, b, ldb, c + i * ldc, ldc, depth(i, 1), beta, read_c);
}

/// C[M, n] = beta * C + A[M, K] B[K, n], or C = A B when !read_c. B rows are `ldb` floats apart
/// and contiguous, C rows `ldc` apart. causal_base >= 0 limits row i to k <= causal_base + i
/// (rounded up to its row block; the caller's A holds zeros there).
inline void ssd_gemm(const SsdLhs& a, const float* b, index_t ldb, float* c, index_t ldc, index_t M, index_t n,
                     index_t K, float beta, bool read_c, index_t causal_base = -1) noexcept {
  constexpr index_t W = simd::kWidth;
  index_t col = 0;
  const auto panel = [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    ssd_gemm_panel<NV>(a, b + col, ldb, c + col, ldc, M, K, beta, read_c, causal_base);
    col += NV * W;
  };
  if constexpr (W >= 16) {
    // Panels of 4 vectors; 5 left (P = 80) go as one panel of 5 (5 rows x 5 vectors in registers).
    for (;;) {
      const index_t vectors = (n - col) / W;
      if (vectors == 5) panel(std::integral_constant<int, 5>{});
      else if (vectors >= 4) panel(std::integral_constant<int, 4>{});
      else break;
    }
    if ((n - col) / W == 3) panel(std::integral_constant<int, 3>{});
  }
  while ((n - col) / W >= 2) panel(std::integral_constant<int, 2>{});
  if ((n - col) / W == 1) panel(std::integral_constant<int, 1>{});
  // Columns past the last whole vector (odd P): scalar, row by row.
  for (index_t i = 0; i < M && col < n; ++i) {
    const index_t k_end = causal_base < 0 ? K : std::min(K, causal_base + i + 1);
    for (index_t j = col; j < n; ++j) {
      float s = read_c ? beta * c[i * ldc + j] : 0.f;
      for (index_t k = 0; k < k_end; ++k) s += *a.at(i, k) * b[k * ldb + j];
      c[i * ldc + j] = s;
    }
  }
}

}  // namespace seqmix::detail
