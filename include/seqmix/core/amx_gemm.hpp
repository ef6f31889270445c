// AMX tile GEMM for the bf16 dot-product kernels (issue 19 item 3): TDPBF16PS on 16 x 16 fp32
// tiles, the contract of gemm_bf16 (core/bf16_gemm.hpp): C[M x N] = diag(row_scale) C + A B
// (C = A B when row_scale is null), A [M x K] and B [K x N] in pair words (two bf16 in 32 bits),
// fp32 C, N a multiple of 16.
//
// The pair-word layouts of bf16_gemm.hpp are AMX's own: an A tile is 16 rows of 16 pair words
// (a row of bf16 as it lies in memory), a B tile 16 rows of K pairs x 16 columns (the "VNNI"
// layout), so the callers' packed tiles load as they are. One TDPBF16PS is 16 x 16 x 32
// multiply-adds, 16 times a vdpbf16ps.
//
// tile_gemm_bf16 walks C in blocks of 32 x 32 (tiles 0-3 accumulate, 4-5 hold A, 6-7 hold B, so
// each pair of A and B loads feeds four products), over K in steps of 16 pair words; a whole C
// tile loads from C (scaled in place) and stores back to it. Edges (rows past M, pair words past
// K) go through zero-filled copies, never a load or store past the caller's matrix. The walk is written against a backend of eight tiles (`Tiles`): `AmxTiles`, the
// instructions, where the compile target has AMX-TILE and AMX-BF16 on Linux; in the tests also an
// emulation that runs the same walk on every machine (testing/seqmix_testing/tile_emulator.hpp),
// since the machines this project is measured on do not all have AMX.
//
// Linux hands out the tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18):
// amx_tiles_ready() asks once per process; if the kernel refuses (or predates the request, Linux
// < 5.16), gemm_bf16 keeps its AVX512-BF16 kernel. Accuracy: as the dot-product kernel (products
// of bf16 exact in fp32, fp32 accumulation; the instruction flushes bf16 subnormal inputs and
// fp32 subnormal results), the summation order differs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "seqmix/core/tensor.hpp"

// GCC names the target's AMX features __AMX_TILE__ / __AMX_BF16__, clang 14 __AMXTILE__ /
// __AMXBF16__: SEQMIX_AMX_BF16 stands for either, on Linux (the tile state request is Linux's).
#if (defined(__AMX_TILE__) || defined(__AMXTILE__)) && (defined(__AMX_BF16__) || defined(__AMXBF16__)) && \
    defined(__linux__)
#define SEQMIX_AMX_BF16 1
#endif

#if defined(SEQMIX_AMX_BF16)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace seqmix::detail {

/// Zero-filled edge tiles and the store buffer of tile_gemm_bf16, one set per thread.
struct TileGemmScratch {
  alignas(64) std::uint32_t a[2][16 * 16];
  alignas(64) std::uint32_t b[2][16 * 16];
  alignas(64) float c[16 * 16];
  static TileGemmScratch& local() {
    thread_local TileGemmScratch scratch;
    return scratch;
  }
};

// Tile T (an A tile) := rows [r, r + rows) x pair words [k, k + kk) of A; rows and columns past
// those zero, by a copy unless the 16 x 16 block lies inside A.
template <class Tiles, int T>
inline void load_a_tile(const std::uint32_t* A, index_t lda, index_t r, index_t rows, index_t k, index_t kk,
                        std::uint32_t* edge) {
  if (rows == 16 && kk == 16) return Tiles::template load<T>(A + r * lda + k, lda * 4);
  std::fill(edge, edge + 16 * 16, 0u);
  for (index_t i = 0; i < rows; ++i) std::memcpy(edge + i * 16, A + (r + i) * lda + k, sizeof(std::uint32_t) * kk);
  Tiles::template load<T>(edge, 64);
}

// Tile T (a B tile) := pair rows [k, k + kk) x columns [c, c + 16) of B; rows past kk zero.
template <class Tiles, int T>
inline void load_b_tile(const std::uint32_t* B, index_t ldb, index_t c, index_t k, index_t kk, std::uint32_t* edge) {
  if (kk == 16) return Tiles::template load<T>(B + k * ldb + c, ldb * 4);
  std::fill(edge, edge + 16 * 16, 0u);
  for (index_t i = 0; i < kk; ++i) std::memcpy(edge + i * 16, B + (k + i) * ldb + c, sizeof(std::uint32_t) * 16);
  Tiles::template load<T>(edge, 64);
}

// C tile T's start for rows [r, r + rows) x columns [c, c + 16) of C. A whole tile starts from C
// itself, scaled in place first (so the products add to scale * C, and the tile stores straight
// back); a tile cut by M starts from zero and is merged by end_c_tile.
template <class Tiles, int T>
inline void begin_c_tile(float* C, index_t ldc, index_t r, index_t rows, index_t c, const float* row_scale) {
  if (rows < 16 || !row_scale) return Tiles::template zero<T>();
  for (index_t i = 0; i < 16; ++i) {
    float* row = C + (r + i) * ldc + c;
    const float s = row_scale[r + i];
    for (int j = 0; j < 16; ++j) row[j] *= s;
  }
  Tiles::template load<T>(C + r * ldc + c, ldc * 4);
}

// C tile T's end: a whole tile stores into C; a cut one through `buffer`, its rows set to
// scale * C + tile (tile alone without scale).
template <class Tiles, int T>
inline void end_c_tile(float* C, index_t ldc, index_t r, index_t rows, index_t c, const float* row_scale,
                       float* buffer) {
  if (rows == 16) return Tiles::template store<T>(C + r * ldc + c, ldc * 4);
  Tiles::template store<T>(buffer, 64);
  for (index_t i = 0; i < rows; ++i) {
    float* out = C + (r + i) * ldc + c;
    const float* t = buffer + i * 16;
    if (row_scale) {
      const float s = row_scale[r + i];
      for (int j = 0; j < 16; ++j) out[j] = s * out[j] + t[j];
    } else {
      std::memcpy(out, t, sizeof(float) * 16);
    }
  }
}

/// gemm_bf16's contract on a backend of eight 16-row x 64-byte tiles (see the top of the file).
template <class Tiles>
void tile_gemm_bf16(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C, index_t ldc,
                    index_t M, index_t N, index_t K, const float* row_scale) {
  TileGemmScratch& s = TileGemmScratch::local();
  Tiles::configure();
  for (index_t r = 0; r < M; r += 32)
    for (index_t c = 0; c < N; c += 32) {
      const index_t rows0 = std::min<index_t>(16, M - r), rows1 = std::min<index_t>(16, M - r - rows0);
      const bool right = c + 16 < N, lower = rows1 > 0;
      begin_c_tile<Tiles, 0>(C, ldc, r, rows0, c, row_scale);
      if (right) begin_c_tile<Tiles, 1>(C, ldc, r, rows0, c + 16, row_scale);
      if (lower) begin_c_tile<Tiles, 2>(C, ldc, r + 16, rows1, c, row_scale);
      if (right && lower) begin_c_tile<Tiles, 3>(C, ldc, r + 16, rows1, c + 16, row_scale);
      for (index_t k = 0; k < K; k += 16) {
        const index_t kk = std::min<index_t>(16, K - k);
        load_a_tile<Tiles, 4>(A, lda, r, rows0, k, kk, s.a[0]);
        load_b_tile<Tiles, 6>(B, ldb, c, k, kk, s.b[0]);
        Tiles::template dot<0, 4, 6>();
        if (right) {
          load_b_tile<Tiles, 7>(B, ldb, c + 16, k, kk, s.b[1]);
          Tiles::template dot<1, 4, 7>();
        }
        if (lower) {
          load_a_tile<Tiles, 5>(A, lda, r + 16, rows1, k, kk, s.a[1]);
          Tiles::template dot<2, 5, 6>();
          if (right) Tiles::template dot<3, 5, 7>();
        }
      }
      end_c_tile<Tiles, 0>(C, ldc, r, rows0, c, row_scale, s.c);
      if (right) end_c_tile<Tiles, 1>(C, ldc, r, rows0, c + 16, row_scale, s.c);
      if (lower) end_c_tile<Tiles, 2>(C, ldc, r + 16, rows1, c, row_scale, s.c);
      if (right && lower) end_c_tile<Tiles, 3>(C, ldc, r + 16, rows1, c + 16, row_scale, s.c);
    }
}

#if defined(SEQMIX_AMX_BF16)
/// True where the compile target has AMX tiles with bf16 products (and AmxTiles exists).
constexpr bool kNativeAmxBf16 = true;

/// Asks Linux for the AMX tile state for this process (arch_prctl ARCH_REQ_XCOMP_PERM, feature
/// 18, XTILEDATA); false when refused.
inline bool request_amx_tile_state() noexcept {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0;
}

/// True once the process may use the tiles: asked once, the answer kept.
inline bool amx_tiles_ready() noexcept {
  static const bool granted = request_amx_tile_state();
  return granted;
}

/// The instructions: palette 1, all eight tiles 16 rows x 64 bytes. The configuration is loaded
/// at every tile_gemm_bf16 call (it costs far less than one call's products), so code of the
/// caller's that configured the tiles otherwise between two calls does not break the next one.
struct AmxTiles {
  struct alignas(64) Config {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
  };
  static void configure() noexcept {
    static const Config config = [] {
      Config c;
      for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;
      return c;
    }();
    _tile_loadconfig(&config);
  }
  // GCC's tile intrinsics paste the tile number into the instruction's text, so each takes a
  // literal: the walk's tiles are named one by one (C 0-3, A 4-5, B 6-7).
  template <int T>
  static void zero() noexcept {
    static_assert(T >= 0 && T < 4, "C tiles are 0-3");
    if constexpr (T == 0) _tile_zero(0);
    else if constexpr (T == 1) _tile_zero(1);
    else if constexpr (T == 2) _tile_zero(2);
    else _tile_zero(3);
  }
  template <int T>
  static void load(const void* p, index_t stride_bytes) noexcept {
    static_assert(T >= 0 && T < 8, "tiles are 0-7");
    if constexpr (T == 0) _tile_loadd(0, p, stride_bytes);
    else if constexpr (T == 1) _tile_loadd(1, p, stride_bytes);
    else if constexpr (T == 2) _tile_loadd(2, p, stride_bytes);
    else if constexpr (T == 3) _tile_loadd(3, p, stride_bytes);
    else if constexpr (T == 4) _tile_loadd(4, p, stride_bytes);
    else if constexpr (T == 5) _tile_loadd(5, p, stride_bytes);
    else if constexpr (T == 6) _tile_loadd(6, p, stride_bytes);
    else _tile_loadd(7, p, stride_bytes);
  }
  template <int T>
  static void store(void* p, index_t stride_bytes) noexcept {
    static_assert(T >= 0 && T < 4, "C tiles are 0-3");
    if constexpr (T == 0) _tile_stored(0, p, stride_bytes);
    else if constexpr (T == 1) _tile_stored(1, p, stride_bytes);
    else if constexpr (T == 2) _tile_stored(2, p, stride_bytes);
    else _tile_stored(3, p, stride_bytes);
  }
  template <int Cd, int Ad, int Bd>
  static void dot() noexcept {
    static_assert(Ad == 4 + Cd / 2 && Bd == 6 + Cd % 2, "C tile 2i + j takes A tile 4 + i and B tile 6 + j");
    if constexpr (Cd == 0) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (Cd == 1) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (Cd == 2) _tile_dpbf16ps(2, 5, 6);
    else _tile_dpbf16ps(3, 5, 7);
  }
};
#else
constexpr bool kNativeAmxBf16 = false;
inline bool amx_tiles_ready() noexcept { return false; }
#endif

}  // namespace seqmix::detail
