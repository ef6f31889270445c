// ssd, fast prefill: the register-tiled fp32 products of a chunk (internal to chunked.hpp), on
// core/small_gemm.hpp's register tile.
//
// The chunked form's two per-head products are small and oddly shaped: Y [L,P] = [L,N+L]·[N+L,P]
// (state read-out and intra-chunk term in one) and the chunk state [N,P] += [N,L]·[L,P] with the
// left operand read transposed out of Bm. Eigen's general GEMM packs both operands of each call
// into its own panels and tiles rows by 48; at these sizes (M 64-128, K 64-192, P 64-80) that
// left it at 0.45-0.48 of the one-thread FMA peak (thread CPU time, mamba2-780m T 512). Here the
// left operand is read in place and MR x NV vectors of the output stay in registers for the
// whole K loop, in column panels of 4 or 5 vectors (P = 80 as one panel of 5), so nothing is
// packed and every load feeds MR or NV FMAs.
// Y also skips the zeros above the diagonal of its intra-chunk half: a row block stops at the
// last token it can see (`causal_base`), about a sixth of Y's flops at L = 64, N = 128.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/small_gemm.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

// The left operand in place: element (i, k) at data[i * row_stride + k * col_stride].
using SsdLhs = StridedOperand;

// The row count of a register tile for NV vectors: the accumulators, NV right-hand vectors and a
// broadcast fit the register file (32 with AVX-512, 16 below), with >= 8 independent FMA chains
// where possible (4-cycle FMA latency, two FMA ports).
template <int NV>
constexpr int ssd_tile_rows() {
  constexpr int registers = simd::kWidth >= 16 ? 32 : 16;
  return std::max(1, std::min(8, (registers - NV - 1) / NV));
}

// What ssd_gemm calls when rows of C are complete if the caller has nothing to do with them.
struct SsdNoRowsHook {
  void operator()(index_t, index_t) const noexcept {}
};

// Rows [0, M) of one column panel of NV vectors. causal_base >= 0: row block [i, i + mr) runs
// k < min(K, causal_base + i + mr) (the lhs is zero beyond, see the top of the file).
// rows_done(i, mr) after each row block (see ssd_gemm).
template <int NV, class Hook>
void ssd_gemm_panel(const SsdLhs& a, const float* b, index_t ldb, float* c, index_t ldc, index_t M, index_t K,
                    const Accumulate& old, index_t causal_base, const Hook& rows_done) noexcept {
  constexpr std::size_t MR = ssd_tile_rows<NV>(), V = NV;
  const auto depth = [&](index_t i, index_t mr) { return causal_base < 0 ? K : std::min(K, causal_base + i + mr); };
  index_t i = 0;
  for (; i + index_t(MR) <= M; i += MR) {
    gemm_register_tile<MR, V>(a.from_row(i), b, ldb, c + i * ldc, ldc, depth(i, MR), old);
    rows_done(i, index_t(MR));
  }
  for (; i + 2 <= M; i += 2) {
    gemm_register_tile<2, V>(a.from_row(i), b, ldb, c + i * ldc, ldc, depth(i, 2), old);
    rows_done(i, 2);
  }
  if (i < M) {
    gemm_register_tile<1, V>(a.from_row(i), b, ldb, c + i * ldc, ldc, depth(i, 1), old);
    rows_done(i, 1);
  }
}

/// C[M, n] = beta * C + A[M, K] B[K, n], or C = A B when !read_c. B rows are `ldb` floats apart
/// and contiguous, C rows `ldc` apart. causal_base >= 0 limits row i to k <= causal_base + i
/// (rounded up to its row block; the caller's A holds zeros there).
/// rows_done(i, rows) is called once rows [i, i + rows) of C hold their final values, in order,
/// while the product's later row blocks are still to run: work put there overlaps the product's
/// FMAs (the chunk-state product asks for the next chunk's rows there, chunked.hpp SsdNextRows).
template <class Hook = SsdNoRowsHook>
void ssd_gemm(const SsdLhs& a, const float* b, index_t ldb, float* c, index_t ldc, index_t M, index_t n, index_t K,
              float beta, bool read_c, index_t causal_base = -1, const Hook& rows_done = {}) noexcept {
  constexpr index_t W = simd::kWidth;
  const Accumulate old{read_c, beta};
  index_t col = 0;
  // Panels run one after another over all rows, so rows are final after the last panel's row
  // block, or after the scalar columns of an odd n.
  const bool scalar_tail = n % W != 0;
  const auto panel = [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    if (!scalar_tail && col + NV * W == n)
      ssd_gemm_panel<NV>(a, b + col, ldb, c + col, ldc, M, K, old, causal_base, rows_done);
    else
      ssd_gemm_panel<NV>(a, b + col, ldb, c + col, ldc, M, K, old, causal_base, SsdNoRowsHook{});
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
  // Columns past the last whole vector (odd P).
  if (col < n) {
    gemm_scalar_columns(a, M, b + col, ldb, n - col, c + col, ldc, K, old, causal_base);
    rows_done(index_t{0}, M);
  }
}

}  // namespace seqmix::detail
