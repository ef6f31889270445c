// Decode attention over a CodedKvCache, reading the codes directly (the definition is
// reference.hpp). Threaded over (batch row, KV head); the query rows of a KV head's group (G * Tq
// rows) go in tiles of 4 that share every code load.
//
// pq, keys: per tile a lookup table tab[s][k][r] = scale * <q_r[s], C_k[h][s][k]> (m * K * 4
// floats; its cost K * Dk per row is independent of the cache length), then for each entry
//   score_r(j) = sum_s tab[s][code_j[s]][r]      (m lookups of 4 adjacent floats per entry).
// pq, values: the softmax weights are summed per sub-space and centroid,
//   W[s][k][r] = sum_{j: code_j[s] = k} p_r(j),  o_r[s] = sum_k W[s][k][r] C_v[h][s][k] / l_r,
// so an entry costs m additions and the centroids are read once per tile.
// sign1, keys: 16 entries per chunk, bit i of channel c's word = sign of entry i (cache.hpp):
//   score_r(j) = sum_g scale_jg (2 sum_{c in g, bit set} q_r[c] - sum_{c in g} q_r[c]),
// the inner sum a masked add of the broadcast q_r[c] into 16 lanes (one per entry) per channel.
// sign1, values: o[c] = 2 pos[c] - tot[g(c)] with pos[c] = sum_{j: bit set} w_jg(c) (one masked add
// of the broadcast w_jg = p_r(j) scale_jg per entry and 16-channel word, in registers up to
// Dv = 128) and tot[g] = sum_j w_jg (needs groups of a multiple of 16 channels, or one group per
// row; otherwise, and without AVX-512, the same sums run channel by channel).
// Softmax: two passes over the row's scores (max, then exp and sum with SIMD). A NaN score (a
// flagged PQ key, a NaN sign1 scale) makes the row NaN; a flagged PQ value or a NaN value scale
// makes it NaN through the sums (0 * NaN = NaN), as in the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache/coded/kernels.hpp"
#include "seqmix/kv_cache/coded/reference.hpp"

namespace seqmix {
namespace detail {

struct CodedScratch {
  std::vector<float> q, table, s, hist, acc, qsum;
  std::vector<index_t> visible;
  std::vector<char> nan;
};

// Softmax weights of scores s[0, n) in place; returns the sum of the weights, or NaN when a
// score is NaN. n > 0.
inline float coded_softmax(float* s, index_t n) noexcept {
  using FB = simd::Batch<float>;
  const index_t nv = simd::vector_end(n);
  float mx = -std::numeric_limits<float>::infinity(), poison = 0.f;
  if (nv > 0) {
    FB vmx(mx), vp(0.f);
    for (index_t j = 0; j < nv; j += simd::kWidth) {
      const FB x = simd::load(s + j);
      vmx = xsimd::max(vmx, x), vp = vp + x * 0.f;
    }
    mx = simd::reduce_max(vmx), poison = simd::reduce_add(vp);
  }
  for (index_t j = nv; j < n; ++j) mx = std::max(mx, s[j]), poison += s[j] * 0.f;
  if (std::isnan(poison) || !std::isfinite(mx)) return std::numeric_limits<float>::quiet_NaN();
  FB vl(0.f);
  const FB vm(mx);
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const FB p = simd::exp(simd::load(s + j) - vm);
    simd::store(s + j, p);
    vl = vl + p;
  }
  float l = nv > 0 ? simd::reduce_add(vl) : 0.f;
  for (index_t j = nv; j < n; ++j) s[j] = std::exp(s[j] - mx), l += s[j];
  return l;
}

// One (b, KV head): every query row of its group, in tiles of 4.
inline void coded_attend_head(const CodedKvCache& cache, const ConstView<float, 4>& q, const TensorView<float, 4>& o,
                              const CodedKvAttentionOptions& options, const CodedAttentionDims& d, index_t b, index_t hk,
                              float scale, bool vector, CodedScratch& w) {
  const CodedKvCacheConfig& cfg = cache.config();
  const CodedKvCache::Head& hd = cache.head(b, hk);
  const index_t G = d.group(), rows = G * d.Tq, n = cache.size(b), Dk = d.Dk, Dv = d.Dv;
  const bool pq = cfg.format == KvCodeFormat::pq;
  const index_t lds = (n + 15) / 16 * 16 + 16;
  const index_t gk = cache.key_group(), gv = cache.value_group(), Gk = (Dk + gk - 1) / gk;
  w.q.assign(static_cast<std::size_t>(kCodedRows * Dk), 0.f);
  w.s.resize(static_cast<std::size_t>(kCodedRows * lds));
  w.acc.resize(static_cast<std::size_t>(kCodedRows * ((Dv + 15) / 16 * 16) + 16));
  w.qsum.assign(static_cast<std::size_t>(kCodedRows * Gk), 0.f);
  w.visible.assign(kCodedRows, 0);
  if (pq) {
    w.table.resize(static_cast<std::size_t>(cfg.key_codebooks.subspaces * cfg.key_codebooks.centroids * kCodedRows));
    w.hist.resize(static_cast<std::size_t>(cfg.value_codebooks.subspaces * cfg.value_codebooks.centroids * kCodedRows));
  }
  std::vector<float>& out = w.acc;  // [4][Dv] unnormalized outputs (pq) / per-row (sign1)
  std::vector<float> tmp;
  for (index_t r0 = 0; r0 < rows; r0 += kCodedRows) {
    const index_t nr = std::min(kCodedRows, rows - r0);
    index_t nmax = 0;
    for (index_t r = 0; r < kCodedRows; ++r) {
      const index_t row = r0 + std::min(r, nr - 1), i = row / G, h = hk * G + row % G;
      for (index_t c = 0; c < Dk; ++c) w.q[r * Dk + c] = scale * q(b, i, h, c);
      w.visible[r] = r < nr ? coded_visible(options, n, d.Tq, i) : 0;
      nmax = std::max(nmax, w.visible[r]);
      if (!pq)
        for (index_t g = 0; g < Gk; ++g) {
          float sum = 0.f;
          for (index_t c = g * gk; c < std::min(Dk, (g + 1) * gk); ++c) sum += w.q[r * Dk + c];
          w.qsum[r * Gk + g] = sum;
        }
    }
    if (pq)
      pq_scores(cfg.key_codebooks, hk, hd.key_codes.data(), nmax, w.q.data(), Dk, w.table.data(), w.s.data(), lds);
    else
      sign1_scores(hd.key_bits.data(), hd.key_scales.data(), nmax, w.q.data(), Dk, gk, w.qsum.data(), w.s.data(), lds, vector);
    float l[kCodedRows];
    for (index_t r = 0; r < kCodedRows; ++r) {
      float* s = w.s.data() + r * lds;
      const index_t nv = w.visible[r];
      l[r] = nv > 0 ? coded_softmax(s, nv) : 0.f;
      if (pq && hd.any_flag)  // a flagged key row among the visible ones
        for (index_t j = 0; j < nv; ++j)
          if (hd.flags[j] & 1u) l[r] = std::numeric_limits<float>::quiet_NaN();
      std::fill(s + nv, s + lds, 0.f);
    }
    if (pq) {
      tmp.resize(static_cast<std::size_t>(kCodedRows * Dv));
      pq_values(cfg.value_codebooks, hk, hd.value_codes.data(), nmax, w.s.data(), lds, w.hist.data(), tmp.data(), Dv);
    }
    for (index_t r = 0; r < nr; ++r) {
      const index_t row = r0 + r, i = row / G, h = hk * G + row % G, nv = w.visible[r];
      float* res = tmp.data() + (pq ? r * Dv : 0);
      if (!pq) {
        tmp.resize(static_cast<std::size_t>((Dv + 15) / 16 * 16));
        res = tmp.data();
        sign1_values(hd.value_bits.data(), hd.value_scales.data(), nv, w.s.data() + r * lds, Dv, gv, out.data(), res, vector);
      }
      bool nan = std::isnan(l[r]);
      if (pq && hd.any_flag)
        for (index_t j = 0; j < nv; ++j)
          if (hd.flags[j] & 2u) nan = true;
      for (index_t c = 0; c < Dv; ++c)
        o(b, i, h, c) = nan ? std::numeric_limits<float>::quiet_NaN() : nv == 0 ? 0.f : res[c] / l[r];
    }
  }
}

inline void coded_attention(const CodedKvCache& cache, const ConstView<float, 4>& q, const TensorView<float, 4>& o,
                            const CodedKvAttentionOptions& options, const Executor& executor, bool vector) {
  const auto d = validate_coded_attention(ArgCheck("coded_kv_cache_attention"), cache, q, o, options);
  const float scale = options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(d.Dk));
  parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
    CodedScratch w;
    for (index_t t = begin; t < end; ++t) coded_attend_head(cache, q, o, options, d, t / d.Hkv, t % d.Hkv, scale, vector, w);
  });
}

}  // namespace detail

/// Decode attention over a CodedKvCache reading the codes directly (header comment): lookup-table
/// scores and centroid-summed values for pq, masked adds over sign bits for sign1. q [B, Tq, Hq, Dk]
/// (Hkv divides Hq), o [B, Tq, Hq, Dv]; visibility per CodedKvAttentionOptions::causal. Same
/// result as reference::coded_kv_cache_attention up to float rounding. ShapeError before any
/// output is written. Threaded over (batch row, KV head).
inline void coded_kv_cache_attention(const CodedKvCache& cache, const ConstView<float, 4>& q, const TensorView<float, 4>& o,
                                     const CodedKvAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::coded_attention(cache, q, o, options, executor, true);
}

}  // namespace seqmix
