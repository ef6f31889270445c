// The decode kernels of coded KV storage, on plain pointers: lookup-table scores and
// centroid-summed values for product-quantization codes, masked adds over sign bits for 1-bit
// codes (the formulas: coded/fast.hpp's header comment). Used by coded_kv_cache_attention
// (CodedKvCache) and by kv_cache_attention over a KvCache with coded storage (attention.hpp).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache/coded/codebooks.hpp"

namespace seqmix::detail {

constexpr index_t kCodedRows = 4;  // query rows per tile

// ---- pq ---------------------------------------------------------------------------------------

// The lookup table of 4 query rows q [4][Dk] (already scaled): table[s][k][r] = <q_r[s], C[h][s][k]>.
inline void pq_table(const PqCodebooks& cb, index_t h, const float* q, index_t Dk, float* table) {
  const index_t m = cb.subspaces, K = cb.centroids, d = cb.sub_dim();
  for (index_t sp = 0; sp < m; ++sp)
    for (index_t k = 0; k < K; ++k) {
      const float* c = cb.centroid(h, sp, k);
      float* t = table + (sp * K + k) * kCodedRows;
      for (index_t r = 0; r < kCodedRows; ++r) t[r] = simd::dot(q + r * Dk + sp * d, c, d);
    }
}

// Scores of 4 rows over n entries of codes [n][m] from a table made by pq_table:
// s[r * lds + j] = sum_s table[s][code_j[s]][r].
inline void pq_lookup_scores(const float* table, index_t m, index_t K, const std::uint8_t* codes, index_t n, float* s,
                             index_t lds) {
  index_t j = 0;
  for (; j + 4 <= n; j += 4) {  // 4 entries at once: 4 independent chains of 4-float adds
    float a[4][kCodedRows] = {};
    const std::uint8_t* c0 = codes + j * m;
    for (index_t sp = 0; sp < m; ++sp) {
      const float* base = table + sp * K * kCodedRows;
      for (index_t e = 0; e < 4; ++e) {
        const float* t = base + c0[e * m + sp] * kCodedRows;
        for (index_t r = 0; r < kCodedRows; ++r) a[e][r] += t[r];
      }
    }
    for (index_t e = 0; e < 4; ++e)
      for (index_t r = 0; r < kCodedRows; ++r) s[r * lds + j + e] = a[e][r];
  }
  for (; j < n; ++j) {
    float a[kCodedRows] = {};
    for (index_t sp = 0; sp < m; ++sp) {
      const float* t = table + (sp * K + codes[j * m + sp]) * kCodedRows;
      for (index_t r = 0; r < kCodedRows; ++r) a[r] += t[r];
    }
    for (index_t r = 0; r < kCodedRows; ++r) s[r * lds + j] = a[r];
  }
}

inline void pq_scores(const PqCodebooks& cb, index_t h, const std::uint8_t* codes, index_t n, const float* q, index_t Dk,
                      float* table, float* s, index_t lds) {
  pq_table(cb, h, q, Dk, table);
  pq_lookup_scores(table, cb.subspaces, cb.centroids, codes, n, s, lds);
}

// o_r = sum_j p_r(j) v'_j (unnormalized) for the 4 rows, p zero past each row's visible count.
inline void pq_values(const PqCodebooks& cb, index_t h, const std::uint8_t* codes, index_t n, const float* p, index_t lds,
                      float* hist, float* out, index_t Dv) {
  const index_t m = cb.subspaces, K = cb.centroids, d = cb.sub_dim();
  std::fill(hist, hist + m * K * kCodedRows, 0.f);
  for (index_t j = 0; j < n; ++j) {
    const float w[kCodedRows] = {p[j], p[lds + j], p[2 * lds + j], p[3 * lds + j]};
    const std::uint8_t* c = codes + j * m;
    for (index_t sp = 0; sp < m; ++sp) {
      float* t = hist + (sp * K + c[sp]) * kCodedRows;
      for (index_t r = 0; r < kCodedRows; ++r) t[r] += w[r];
    }
  }
  std::fill(out, out + kCodedRows * Dv, 0.f);
  for (index_t sp = 0; sp < m; ++sp)
    for (index_t k = 0; k < K; ++k) {
      const float* t = hist + (sp * K + k) * kCodedRows;
      const float* cen = cb.centroid(h, sp, k);
      for (index_t r = 0; r < kCodedRows; ++r)
        if (t[r] != 0.f) simd::axpy(t[r], cen, out + r * Dv + sp * d, d);
    }
}

// ---- sign1 ------------------------------------------------------------------------------------

// Scores of the 4 rows over entries [0, n) (n rounded up to whole chunks of 16 is written).
inline void sign1_scores(const std::uint16_t* key_bits, const float* key_scales, index_t n, const float* q, index_t Dk, index_t gk, const float* qsum,
                         float* s, index_t lds, bool vector) {
  const index_t Gk = (Dk + gk - 1) / gk, chunks = (n + 15) / 16;
#if defined(__AVX512F__)
  if (vector) {
    for (index_t ch = 0; ch < chunks; ++ch) {
      const std::uint16_t* bits = key_bits + ch * Dk;
      const float* sc = key_scales + ch * Gk * 16;
      __m512 score[kCodedRows];
      for (index_t r = 0; r < kCodedRows; ++r) score[r] = _mm512_setzero_ps();
      for (index_t g = 0; g < Gk; ++g) {
        // Two accumulators per row (even and odd channels): 8 independent chains of masked adds
        // keep both vector ports busy past the add latency.
        __m512 acc[kCodedRows], odd[kCodedRows];
        for (index_t r = 0; r < kCodedRows; ++r) acc[r] = _mm512_setzero_ps(), odd[r] = _mm512_setzero_ps();
        const index_t c1 = std::min(Dk, (g + 1) * gk);
        index_t c = g * gk;
        for (; c + 1 < c1; c += 2) {
          const __mmask16 k0 = static_cast<__mmask16>(bits[c]), k1 = static_cast<__mmask16>(bits[c + 1]);
          for (index_t r = 0; r < kCodedRows; ++r) {
            acc[r] = _mm512_mask_add_ps(acc[r], k0, acc[r], _mm512_set1_ps(q[r * Dk + c]));
            odd[r] = _mm512_mask_add_ps(odd[r], k1, odd[r], _mm512_set1_ps(q[r * Dk + c + 1]));
          }
        }
        if (c < c1) {
          const __mmask16 k0 = static_cast<__mmask16>(bits[c]);
          for (index_t r = 0; r < kCodedRows; ++r) acc[r] = _mm512_mask_add_ps(acc[r], k0, acc[r], _mm512_set1_ps(q[r * Dk + c]));
        }
        const __m512 scale = _mm512_loadu_ps(sc + g * 16), two = _mm512_set1_ps(2.f);
        for (index_t r = 0; r < kCodedRows; ++r)
          score[r] = _mm512_fmadd_ps(scale, _mm512_fmsub_ps(two, _mm512_add_ps(acc[r], odd[r]), _mm512_set1_ps(qsum[r * Gk + g])),
                                     score[r]);
      }
      for (index_t r = 0; r < kCodedRows; ++r) _mm512_storeu_ps(s + r * lds + ch * 16, score[r]);
    }
    return;
  }
#endif
  (void)vector;
  for (index_t j = 0; j < chunks * 16; ++j) {
    const index_t ch = j / 16, lane = j % 16;
    const std::uint16_t* bits = key_bits + ch * Dk;
    const float* sc = key_scales + ch * Gk * 16 + lane;
    for (index_t r = 0; r < kCodedRows; ++r) {
      float score = 0.f;
      for (index_t g = 0; g < Gk; ++g) {
        float pos = 0.f;
        const index_t c1 = std::min(Dk, (g + 1) * gk);
        for (index_t c = g * gk; c < c1; ++c)
          if ((bits[c] >> lane) & 1u) pos += q[r * Dk + c];
        score += sc[g * 16] * (2.f * pos - qsum[r * Gk + g]);
      }
      s[r * lds + j] = score;
    }
  }
}

#if defined(__AVX512F__)
// The vector path of sign1_values for W = ceil(Dv / 16) words (1 to 8): the positive parts of the
// sums stay in W registers, pos[c] = sum_{j: bit set} w_jg(c) (one masked add per word and entry),
// the group totals tot[g] = sum_j w_jg in scalars, and out = 2 pos - tot at the end.
template <int W>
inline void sign1_values_avx512(const std::uint16_t* value_bits, const float* value_scales, index_t n, const float* p, index_t Dv, index_t gv,
                                float* tot, float* out) {
  const index_t Gv = (Dv + gv - 1) / gv;
  __m512 pos[W];
  for (int u = 0; u < W; ++u) pos[u] = _mm512_setzero_ps();
  std::fill(tot, tot + Gv, 0.f);
  const std::uint16_t* bits = value_bits;
  const float* sc = value_scales;
  index_t group_of_word[W];  // no division in the loop
  for (int u = 0; u < W; ++u) group_of_word[u] = Gv == 1 ? 0 : u * 16 / gv;
  for (index_t j = 0; j < n; ++j, bits += W, sc += Gv) {
    if (Gv == 1) {
      const float wj = p[j] * sc[0];
      tot[0] += wj;
      const __m512 w = _mm512_set1_ps(wj);
      for (int u = 0; u < W; ++u) pos[u] = _mm512_mask_add_ps(pos[u], static_cast<__mmask16>(bits[u]), pos[u], w);
    } else {
      for (index_t g = 0; g < Gv; ++g) tot[g] += p[j] * sc[g];
      for (int u = 0; u < W; ++u)
        pos[u] = _mm512_mask_add_ps(pos[u], static_cast<__mmask16>(bits[u]), pos[u], _mm512_set1_ps(p[j] * sc[group_of_word[u]]));
    }
  }
  alignas(64) float lanes[16 * W];
  for (int u = 0; u < W; ++u) _mm512_store_ps(lanes + 16 * u, pos[u]);
  for (index_t c = 0; c < Dv; ++c) out[c] = 2.f * lanes[c] - tot[c / gv];
}
#endif

// out [Dv] = sum_{j < n} p[j] v'_j (unnormalized). `tot` holds one float per value group.
inline void sign1_values(const std::uint16_t* value_bits, const float* value_scales, index_t n, const float* p, index_t Dv, index_t gv, float* tot, float* out,
                         bool vector) {
  const index_t Gv = (Dv + gv - 1) / gv, W = (Dv + 15) / 16;
#if defined(__AVX512F__)
  if (vector && (gv % 16 == 0 || Gv == 1) && W <= 8) {
    switch (W) {
      case 1: return sign1_values_avx512<1>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 2: return sign1_values_avx512<2>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 3: return sign1_values_avx512<3>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 4: return sign1_values_avx512<4>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 5: return sign1_values_avx512<5>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 6: return sign1_values_avx512<6>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      case 7: return sign1_values_avx512<7>(value_bits, value_scales, n, p, Dv, gv, tot, out);
      default: return sign1_values_avx512<8>(value_bits, value_scales, n, p, Dv, gv, tot, out);
    }
  }
  if (vector && (gv % 16 == 0 || Gv == 1)) {  // wider rows: the same sums, accumulated in `out`
    std::fill(tot, tot + Gv, 0.f);
    std::fill(out, out + W * 16, 0.f);
    for (index_t j = 0; j < n; ++j) {
      const std::uint16_t* bits = value_bits + j * W;
      const float* sc = value_scales + j * Gv;
      for (index_t g = 0; g < Gv; ++g) tot[g] += p[j] * sc[g];
      for (index_t u = 0; u < W; ++u) {
        const __m512 a = _mm512_loadu_ps(out + 16 * u), w = _mm512_set1_ps(p[j] * sc[Gv == 1 ? 0 : u * 16 / gv]);  // W > 8: rare
        _mm512_storeu_ps(out + 16 * u, _mm512_mask_add_ps(a, static_cast<__mmask16>(bits[u]), a, w));
      }
    }
    for (index_t c = 0; c < Dv; ++c) out[c] = 2.f * out[c] - tot[c / gv];
    return;
  }
#endif
  (void)vector, (void)tot;
  std::fill(out, out + Dv, 0.f);
  for (index_t j = 0; j < n; ++j) {
    const std::uint16_t* bits = value_bits + j * W;
    const float* sc = value_scales + j * Gv;
    for (index_t c = 0; c < Dv; ++c) {
      const float w = p[j] * sc[c / gv];
      out[c] += (bits[c / 16] >> (c % 16)) & 1u ? w : -w;
    }
  }
}

}  // namespace seqmix::detail
