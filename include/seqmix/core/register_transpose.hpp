// Transposes of 32-bit words (floats, or bf16 pair words) in 16 x 16 register blocks. Internal.
//
// Used by attention's key tiles (fp32 and bf16, attention/dense/flash.hpp) and by the linear-
// attention chunk forms (the fp32 scores' K^T, diagonal_decay/chunk_products.hpp; the bf16 pair
// word tiles, diagonal_decay/bf16_tiles.hpp). The shuffles are AVX512F instructions on 32- and
// 64-bit elements and 128-bit lanes, so the register form exists wherever AVX512F does (Skylake-X
// and Ice Lake included, which have no AVX512-BF16); other targets transpose scalar, in 16 x 16
// blocks that keep both sides' cache lines in L1.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <utility>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

#if defined(__AVX512F__)
/// True where transpose_words_16x16 exists (AVX512F) and transpose_words runs on it.
constexpr bool kRegisterTranspose = true;

// One round of 128-bit lane shuffles over 16 registers, paired kDistance apart: for each of the 8
// registers a whose bit kDistance is clear, dst[a] takes lanes 0, 2 of src[a] and src[a +
// kDistance] (0x88), dst[a + kDistance] their lanes 1, 3 (0xdd).
template <int kDistance>
inline void shuffle_lane_pairs(const __m512i src[16], __m512i dst[16]) noexcept {
  constexpr __mmask16 all16 = 0xFFFF;
  unrolled(std::make_index_sequence<8>{}, [&](auto p) {
    constexpr int k = decltype(p)::value;
    constexpr int a = k / kDistance * 2 * kDistance + k % kDistance;
    dst[a] = _mm512_maskz_shuffle_i32x4(all16, src[a], src[a + kDistance], 0x88);
    dst[a + kDistance] = _mm512_maskz_shuffle_i32x4(all16, src[a], src[a + kDistance], 0xdd);
  });
}

/// Transposes 16 x 16 32-bit words in registers: w[r] holds row r's words 0..15 on entry, w[c]
/// word c of rows 0..15 (row r in lane r) on return. Four rounds of 16 shuffles: pairs of words,
/// pairs of pairs, then 128-bit lanes twice. Unrolled by folds (unrolled): with loops g++ -O2
/// keeps the arrays on the stack. The zero-masking forms with every lane kept are the same
/// instructions as the plain ones, whose undefined merge source GCC 12's -Wall reports as
/// uninitialized.
inline void transpose_words_16x16(__m512i w[16]) noexcept {
  constexpr __mmask16 all16 = 0xFFFF;
  constexpr __mmask8 all8 = 0xFF;
  using Four = std::make_index_sequence<4>;
  __m512i t[16];
  // t[4g + 2h + e], lane l: rows 4g + 2h and 4g + 2h + 1 at words 4l + 2e and 4l + 2e + 1.
  unrolled(std::make_index_sequence<8>{}, [&](auto p) {
    constexpr int i = 2 * decltype(p)::value;
    t[i] = _mm512_maskz_unpacklo_epi32(all16, w[i], w[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_epi32(all16, w[i], w[i + 1]);
  });
  // w[4g + m], lane l: rows 4g .. 4g + 3 at word 4l + m.
  unrolled(Four{}, [&](auto g) {
    constexpr int i = 4 * decltype(g)::value;
    w[i] = _mm512_maskz_unpacklo_epi64(all8, t[i], t[i + 2]);
    w[i + 1] = _mm512_maskz_unpackhi_epi64(all8, t[i], t[i + 2]);
    w[i + 2] = _mm512_maskz_unpacklo_epi64(all8, t[i + 1], t[i + 3]);
    w[i + 3] = _mm512_maskz_unpackhi_epi64(all8, t[i + 1], t[i + 3]);
  });
  // Then 128-bit lanes, between registers 4 apart, then 8 apart; after the second round
  // w[4l + m]: word 4l + m of rows 0..15, lane l of each group of four rows.
  shuffle_lane_pairs<4>(w, t);
  shuffle_lane_pairs<8>(t, w);
}

/// The first min(m, 16) of 16 lanes.
inline __mmask16 first_lanes16(index_t m) noexcept {
  return m >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << m) - 1u);
}

// transpose_words on whole registers: each 16 x 16 block (ragged ones through masked loads and
// stores) in four rounds of shuffles, where the word-by-word copy lands every store on a new
// cache line (3.5 us -> 0.45 us for 64 x 64 floats, Zen 5, loaded: measured on whole unmasked
// blocks before the masks; the flash key tile keeps its own unmasked loop, flash.hpp says why).
template <class Word>
inline void transpose_word_blocks(const Word* src, index_t lds, index_t rows, index_t cols, Word* dst, index_t ldd,
                                  index_t rows_pad) noexcept {
  for (index_t r0 = 0; r0 < rows; r0 += 16) {
    const index_t n = std::min<index_t>(16, rows - r0);
    // Written: rows [r0, r0 + out) of dst, the ones past `rows` zero (a masked load reads zeros).
    const __mmask16 out = first_lanes16(std::min<index_t>(16, rows_pad - r0));
    for (index_t c0 = 0; c0 < cols; c0 += 16) {
      const index_t m = std::min<index_t>(16, cols - c0);
      __m512i x[16];
      unrolled(std::make_index_sequence<16>{}, [&](auto r) {
        x[r] = index_t(r) < n ? _mm512_maskz_loadu_epi32(first_lanes16(m), src + (r0 + index_t(r)) * lds + c0)
                              : _mm512_setzero_si512();
      });
      transpose_words_16x16(x);
      unrolled(std::make_index_sequence<16>{}, [&](auto c) {
        if (index_t(c) < m) _mm512_mask_storeu_epi32(dst + (c0 + index_t(c)) * ldd + r0, out, x[c]);
      });
    }
  }
}
#else
constexpr bool kRegisterTranspose = false;

// transpose_words one word at a time in 16 x 16 blocks (both sides' cache lines stay in L1).
template <class Word>
inline void transpose_word_blocks(const Word* src, index_t lds, index_t rows, index_t cols, Word* dst, index_t ldd,
                                  index_t /*rows_pad*/) noexcept {
  constexpr index_t B = 16;
  for (index_t r0 = 0; r0 < rows; r0 += B)
    for (index_t c0 = 0; c0 < cols; c0 += B) {
      const index_t r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
      for (index_t c = c0; c < c1; ++c)
        for (index_t r = r0; r < r1; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
}
#endif

/// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols, and zeros for r in [rows, rows_pad)
/// (rows_pad >= rows). Word is a 32-bit type (float, or a bf16 pair word std::uint32_t): the words
/// move as they are.
template <class Word>
inline void transpose_words(const Word* src, index_t lds, index_t rows, index_t cols, Word* dst, index_t ldd,
                            index_t rows_pad) noexcept {
  static_assert(sizeof(Word) == 4, "transpose_words moves 32-bit words");
  assert(rows_pad >= rows);
  transpose_word_blocks(src, lds, rows, cols, dst, ldd, rows_pad);
  // The register form zeroes rows up to the next multiple of 16 (capped at rows_pad) itself.
  const index_t written = kRegisterTranspose ? std::min(rows_pad, (rows + 15) / 16 * 16) : rows;
  if (rows_pad > written)
    for (index_t c = 0; c < cols; ++c) std::fill(dst + c * ldd + written, dst + c * ldd + rows_pad, Word(0));
}

}  // namespace seqmix::detail
