// bf16 dot-product GEMM tiles (AVX512-BF16 vdpbf16ps) with fp32 accumulation, for the kernels
// that take bf16 inputs (attention prefill over a bf16 K/V, docs/operators.md section 5).
//
// vdpbf16ps adds, in every fp32 lane, the two products of a pair of bf16 values:
//   acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]
// so a GEMM C[M x N] += A[M x K] B[K x N] runs over K / 2 "pair words" (two bf16 in 32 bits): A
// is stored row-major in pair words (consecutive k of one row, which is how a row of bf16 lies in
// memory) and broadcast one word at a time, B is stored as [K / 2][N] pair words (k = 2p, 2p + 1
// of column n side by side), N along the lanes. Each instruction does 32 multiply-adds where an
// fp32 FMA does 16, and the tiles are half the bytes.
//
// Accuracy: the products of two bf16 are exact in fp32 and accumulate in fp32; the instruction
// rounds to nearest even, treats bf16 subnormal inputs as zero and flushes subnormal results (it
// ignores MXCSR). Rounding an fp32 value to bf16 (vcvtneps2bf16, here for q and the softmax
// weights) has relative error <= 2^-9, subnormals likewise flushed.
//
// Only compiled where the target has AVX512-BF16 (kNativeBf16Dot); elsewhere the callers keep
// their fp32 kernels. Where the target also has AMX tiles, gemm_bf16 runs on them once Linux grants
// the tile state (core/amx_gemm.hpp; the triangular and panel kernels the attention prefill calls
// directly stay on vdpbf16ps). The 16 x 16 word transposes that pack bf16 tiles need only
// AVX512F: core/register_transpose.hpp.
#pragma once

#include <cstdint>
#include <cstring>

#include "seqmix/core/amx_gemm.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
/// True where the compile target has AVX512-BF16 dot products (and the helpers below exist).
constexpr bool kNativeBf16Dot = true;

// GCC 12's __m512bh is a vector of shorts, GCC 13's and clang's one of __bf16: a cast between
// vector types of the same size reinterprets the bits in all of them.
inline __m512bh as_bf16_pairs(__m512i v) noexcept { return (__m512bh)v; }
inline __m512i as_words(__m512bh v) noexcept { return (__m512i)v; }

// 16 floats rounded to bf16 (nearest even) at dst[0..16).
inline void store_bf16x16(std::uint16_t* dst, __m512 x) noexcept {
  const __m256bh h = _mm512_cvtneps_pbh(x);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)h);
}

// n floats (a multiple of 16) rounded to bf16: dst holds n / 2 pair words.
inline void floats_to_bf16_pairs(const float* src, index_t n, std::uint32_t* dst) noexcept {
  auto* out = reinterpret_cast<std::uint16_t*>(dst);
  for (index_t c = 0; c < n; c += 16) store_bf16x16(out + c, _mm512_loadu_ps(src + c));
}

#if defined(__clang__)
#define SEQMIX_BF16_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define SEQMIX_BF16_UNROLL _Pragma("GCC unroll 8")
#else
#define SEQMIX_BF16_UNROLL
#endif

// C[MR x NV*16] = row_scale * C + A[MR x K pair words] B[K x NV*16 pair words]: MR x NV
// accumulators in registers; A broadcast one pair word at a time, B read by whole vectors.
template <int MR, int NV>
inline void gemm_bf16_block(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C,
                            index_t ldc, index_t K, const float* row_scale) noexcept {
  // The accumulators must live in registers: GCC at -O2 does not unroll these loops by itself
  // (the arrays then go to the stack and the kernel runs at a third of its -O3 speed).
  __m512 acc[MR][NV];
  SEQMIX_BF16_UNROLL
  for (int r = 0; r < MR; ++r)
    SEQMIX_BF16_UNROLL
    for (int v = 0; v < NV; ++v)
      acc[r][v] = row_scale ? _mm512_mul_ps(_mm512_loadu_ps(C + r * ldc + v * 16), _mm512_set1_ps(row_scale[r]))
                            : _mm512_setzero_ps();
  for (index_t k = 0; k < K; ++k) {
    __m512bh b[NV];
    SEQMIX_BF16_UNROLL
    for (int v = 0; v < NV; ++v) b[v] = as_bf16_pairs(_mm512_loadu_si512(B + k * ldb + v * 16));
    SEQMIX_BF16_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = as_bf16_pairs(_mm512_set1_epi32(static_cast<int>(A[r * lda + k])));
      SEQMIX_BF16_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  SEQMIX_BF16_UNROLL
  for (int r = 0; r < MR; ++r)
    SEQMIX_BF16_UNROLL
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + v * 16, acc[r][v]);
}

// 6 rows x 4 vectors: 24 accumulators + 4 B vectors + 1 broadcast of AVX-512's 32 registers,
// enough independent chains to cover vdpbf16ps's latency.
constexpr int kBf16GemmRows = 6;

template <int NV>
inline void gemm_bf16_columns(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C,
                              index_t ldc, index_t M, index_t K, const float* row_scale) noexcept {
  index_t r = 0;
  for (; r + kBf16GemmRows <= M; r += kBf16GemmRows)
    gemm_bf16_block<kBf16GemmRows, NV>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, K, row_scale ? row_scale + r : nullptr);
  const float* scale = row_scale ? row_scale + r : nullptr;
  A += r * lda, C += r * ldc;
  switch (M - r) {  // the ragged rows in one pass over B
    case 5: gemm_bf16_block<5, NV>(A, lda, B, ldb, C, ldc, K, scale); break;
    case 4: gemm_bf16_block<4, NV>(A, lda, B, ldb, C, ldc, K, scale); break;
    case 3: gemm_bf16_block<3, NV>(A, lda, B, ldb, C, ldc, K, scale); break;
    case 2: gemm_bf16_block<2, NV>(A, lda, B, ldb, C, ldc, K, scale); break;
    case 1: gemm_bf16_block<1, NV>(A, lda, B, ldb, C, ldc, K, scale); break;
    default: break;
  }
}

/// C[M x N] = diag(row_scale) C + A B (C = A B when row_scale is null), A [M x K] and B [K x N]
/// in pair words (see the top of this file), fp32 C. N must be a multiple of 16 (callers pad).
/// This is the vdpbf16ps kernel; gemm_bf16 below picks the AMX tiles over it where it can.
inline void gemm_bf16_dot(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C,
                          index_t ldc, index_t M, index_t N, index_t K, const float* row_scale) noexcept {
  index_t c = 0;
  // Column blocks outer: one B panel (K x 64 words) stays in L1 while the row blocks stream past.
  for (; c + 64 <= N; c += 64) gemm_bf16_columns<4>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
  for (; c + 32 <= N; c += 32) gemm_bf16_columns<2>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
  for (; c < N; c += 16) gemm_bf16_columns<1>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
}

/// gemm_bf16_dot's product, on AMX tiles where the target has them and Linux granted the tile
/// state (core/amx_gemm.hpp), else by gemm_bf16_dot.
inline void gemm_bf16(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C, index_t ldc,
                      index_t M, index_t N, index_t K, const float* row_scale) noexcept {
#if defined(SEQMIX_AMX_BF16)
  if (amx_tiles_ready()) return tile_gemm_bf16<AmxTiles>(A, lda, B, ldb, C, ldc, M, N, K, row_scale);
#endif
  gemm_bf16_dot(A, lda, B, ldb, C, ldc, M, N, K, row_scale);
}

/// Pairs two rows of 32 bf16 (x, y) into the B layout: lo = words (x[c], y[c]) for c in [0, 16),
/// hi = the same for c in [16, 32).
inline void interleave_bf16_rows(__m512i x, __m512i y, __m512i& lo, __m512i& hi) noexcept {
  alignas(64) static constexpr std::uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                         8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static constexpr std::uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                         24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  lo = _mm512_permutex2var_epi16(x, _mm512_load_si512(kLo), y);
  hi = _mm512_permutex2var_epi16(x, _mm512_load_si512(kHi), y);
}

/// Lanes of 32 bf16 holding an infinity or a NaN (exponent all ones), as a mask.
inline __mmask32 bf16_nonfinite(__m512i x) noexcept {
  const __m512i e = _mm512_set1_epi16(0x7f80);
  return _mm512_cmpeq_epi16_mask(_mm512_and_si512(x, e), e);
}
#else
constexpr bool kNativeBf16Dot = false;
#endif

}  // namespace seqmix::detail
