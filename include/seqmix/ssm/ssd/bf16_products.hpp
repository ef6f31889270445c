// ssd, fast prefill: the output product of a chunk on AVX512-BF16 dot products (internal to
// chunked.hpp; SsdOptions::bf16_compute = Bf16Compute::dot with bf16 x, Bm, Cm).
//
// Y [l,P] = [C ∘ exp(cs) | CB ∘ Lmask] · [S^T ; Xd], K = N + l, both operands rounded to bf16
// from their fp32 tiles (the decay-scaled C and masked CB, the carried state and dt ∘ x: each a
// product of the stored bf16 values with fp32 decays, so not bf16 already) and multiplied by
// core/bf16_gemm.hpp's gemm_bf16 (vdpbf16ps, fp32 accumulation). The state itself stays fp32:
// only its read-out is rounded, once per chunk, so the error does not grow with the chunk count.
// The chunk-state product (B^T over tokens) and the shared C B^T tiles stay fp32: their bf16
// operands would need a transpose of pair words per chunk (B^T [N, l] pairs along tokens), and
// together they are about a third of the prefill (README.md, "Efficiency").
//
// Layouts (bf16_gemm.hpp): A [l][Kp/2] pair words, consecutive k of one row; B [Kp/2][P] pair
// words, rows 2q and 2q+1 of [S^T ; Xd] side by side per column. Kp = K rounded up to even, the
// odd k's partner a zero. P must be a multiple of 16 (ssd_bf16_products_fit).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

/// Whether a head of P values can take the bf16 output product on this target.
inline bool ssd_bf16_products_fit(index_t P) noexcept { return kNativeBf16Dot && P % 16 == 0; }

// Pair-word tiles of the output product, per task: sized by the first chunk that uses them.
struct SsdBf16Tiles {
  std::vector<std::uint32_t> a, b;  // [L][Kp/2], [Kp/2][P]
};

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// Rows r0 and r1 of P floats (r1 null: zeros) rounded to bf16 and interleaved into P pair words.
inline void ssd_pair_rows(const float* r0, const float* r1, index_t P, std::uint32_t* dst) noexcept {
  // cvtne2ps_pbh(hi, lo) puts lo's 16 values in words 0-15 and hi's in 16-31; this index pairs
  // word c with word 16 + c.
  alignas(64) static constexpr std::uint16_t kPairs[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                          8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(kPairs);
  for (index_t c = 0; c < P; c += 16) {
    const __m512 lo = _mm512_loadu_ps(r0 + c), hi = r1 ? _mm512_loadu_ps(r1 + c) : _mm512_setzero_ps();
    const __m512i words = as_words(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_storeu_si512(dst + c, _mm512_permutexvar_epi16(order, words));
  }
}

// A row of K floats rounded to bf16 as Kp/2 pair words (a zero after an odd K).
inline void ssd_pack_row(const float* src, index_t K, std::uint32_t* dst) noexcept {
  auto* out = reinterpret_cast<std::uint16_t*>(dst);
  const index_t kv = K - K % 16;
  for (index_t k = 0; k < kv; k += 16) store_bf16x16(out + k, _mm512_loadu_ps(src + k));
  for (index_t k = kv; k < K; ++k) out[k] = float_to_bf16(src[k]);
  if (K % 2) out[K] = 0;
}

/// y [l,P] = lhs [l, K] · rhs [K, P] (row strides lhs_ld, ld, ld: P may be a column block of
/// wider rows) on bf16 dot products, the operands rounded to bf16 into `tiles`.
inline void ssd_output_product_bf16(const float* lhs, index_t lhs_ld, const float* rhs, index_t l, index_t K, index_t P,
                                    index_t ld, float* y, SsdBf16Tiles& tiles) {
  const index_t Kw = (K + 1) / 2;  // pair words per row of A
  if (tiles.a.size() < static_cast<std::size_t>(l * Kw)) tiles.a.resize(static_cast<std::size_t>(l * Kw));
  if (tiles.b.size() < static_cast<std::size_t>(Kw * P)) tiles.b.resize(static_cast<std::size_t>(Kw * P));
  for (index_t i = 0; i < l; ++i) ssd_pack_row(lhs + i * lhs_ld, K, tiles.a.data() + i * Kw);
  for (index_t q = 0; q < Kw; ++q)
    ssd_pair_rows(rhs + 2 * q * ld, 2 * q + 1 < K ? rhs + (2 * q + 1) * ld : nullptr, P, tiles.b.data() + q * P);
  gemm_bf16(tiles.a.data(), Kw, tiles.b.data(), P, y, ld, l, P, Kw, nullptr);
}
#else
// Never called where the target has no AVX512-BF16 (ssd_bf16_products_fit is false there).
inline void ssd_output_product_bf16(const float*, index_t, const float*, index_t, index_t, index_t, index_t, float*,
                                    SsdBf16Tiles&) {}
#endif

}  // namespace seqmix::detail
