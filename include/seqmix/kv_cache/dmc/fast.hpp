// dmc, fast prefill: per (batch row, KV head) task, the tokens are merged or appended into the
// cache in order while the running last slot after each token is kept aside (a partial row);
// then query t of every head in the group attends, with an online softmax and SIMD dot products,
// over the slots that were closed before its token (they never change again, so they are read
// from the cache's final storage) and its own partial row. Threaded over (b, KV head): a task owns
// that head's slots and its group's output rows. README.md has the derivation.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache/dmc/reference.hpp"

namespace seqmix {
namespace detail {

/// Token update of (b, h): merge (k, v) into the last slot with importance omega, or append it.
/// k and v are read with element strides ks and vs.
inline void dmc_update(DmcCache& cache, index_t b, index_t h, const float* k, index_t ks, const float* v, index_t vs,
                       float alpha, float omega) {
  using Acc = DmcCacheAccess;
  const index_t Dk = cache.config().key_dim, Dv = cache.config().value_dim;
  index_t& n = Acc::size(cache, b, h);
  if (dmc_merges(alpha) && n > 0) {
    float& z = Acc::z(cache, b, h, n - 1);
    const float total = z + omega, keep = z / total, add = omega / total;
    float* K = Acc::key(cache, b, h, n - 1);
    float* V = Acc::value(cache, b, h, n - 1);
    for (index_t c = 0; c < Dk; ++c) K[c] = keep * K[c] + add * k[c * ks];
    for (index_t c = 0; c < Dv; ++c) V[c] = keep * V[c] + add * v[c * vs];
    z = total;
  } else {
    float* K = Acc::key(cache, b, h, n);
    float* V = Acc::value(cache, b, h, n);
    for (index_t c = 0; c < Dk; ++c) K[c] = k[c * ks];
    for (index_t c = 0; c < Dv; ++c) V[c] = v[c * vs];
    Acc::z(cache, b, h, n) = omega;
    ++n;
  }
}

/// Slots per online-softmax tile: one rescale of the accumulators per 64 slots costs little next
/// to 64 value rows, and a tile's keys and values stay in L1 while every head of the group reads them.
constexpr index_t kDmcTile = 64;

/// Floats of scratch dmc_attend_group needs for a group of G query heads.
inline index_t dmc_group_scratch(index_t G, index_t Dk, index_t Dv) { return G * (Dk + Dv + 2 + kDmcTile); }

/// Online softmax of the G query heads of one KV head's group over rows of contiguous keys [n,Dk]
/// and values [n,Dv]; the running max m, denominator l and accumulator acc of each head are carried
/// between calls, so the closed slots and a partial row form one softmax. Each key and value row
/// is loaded once for all G heads (the group shares the slots), which divides the cache traffic of
/// a decode step by G.
struct DmcGroupSoftmax {
  index_t G, Dk, Dv;
  float *qs, *acc, *m, *l, *score;  // [G,Dk] scaled queries, [G,Dv], [G], [G], [G,kDmcTile]

  DmcGroupSoftmax(index_t g, index_t dk, index_t dv, float* scratch)
      : G(g), Dk(dk), Dv(dv), qs(scratch), acc(qs + g * dk), m(acc + g * dv), l(m + g), score(l + g) {
    std::fill(acc, acc + G * Dv, 0.f);
    std::fill(m, m + G, -std::numeric_limits<float>::infinity());
    std::fill(l, l + G, 0.f);
  }

  void rows(const float* keys, const float* values, index_t n) {
    for (index_t j0 = 0; j0 < n; j0 += kDmcTile) {
      const index_t len = std::min(kDmcTile, n - j0);
      for (index_t j = 0; j < len; ++j)
        for (index_t g = 0; g < G; ++g) score[g * kDmcTile + j] = simd::dot(qs + g * Dk, keys + (j0 + j) * Dk, Dk);
      for (index_t g = 0; g < G; ++g) {
        float top = m[g];
        for (index_t j = 0; j < len; ++j) top = std::max(top, score[g * kDmcTile + j]);
        if (top > m[g]) {
          const float factor = std::exp(m[g] - top);  // 0 on the first tile (m = -inf)
          l[g] *= factor;
          for (index_t c = 0; c < Dv; ++c) acc[g * Dv + c] *= factor;
          m[g] = top;
        }
        // While every logit so far is -inf the row has no key (weight 0, not exp(-inf + inf) = NaN).
        const bool none = m[g] == -std::numeric_limits<float>::infinity();
        for (index_t j = 0; j < len; ++j) {
          const float x = score[g * kDmcTile + j];  // a NaN logit (which max() skips) keeps the row NaN
          const float p = std::isnan(x) ? x : none ? 0.f : std::exp(x - m[g]);
          score[g * kDmcTile + j] = p;
          l[g] += p;
        }
      }
      // A slot of weight exactly 0 takes no part: 0 * an inf / NaN value would be NaN.
      for (index_t j = 0; j < len; ++j)
        for (index_t g = 0; g < G; ++g)
          if (score[g * kDmcTile + j] != 0.f) simd::axpy(score[g * kDmcTile + j], values + (j0 + j) * Dv, acc + g * Dv, Dv);
    }
  }
};

/// o = softmax attention of the G query heads of KV head h (query head g at q + g * q_head_stride,
/// elements q_stride apart) over slots [0, closed) of (b, h) then the row (last_k, last_v).
/// scratch: dmc_group_scratch(G, Dk, Dv) floats. write(g, c, x) stores o of head g, channel c.
template <class Out>
void dmc_attend_group(DmcCache& cache, index_t b, index_t h, index_t closed, const float* last_k, const float* last_v,
                      const float* q, index_t q_head_stride, index_t q_stride, index_t G, float scale, float* scratch,
                      Out&& write) {
  const index_t Dk = cache.config().key_dim, Dv = cache.config().value_dim;
  DmcGroupSoftmax sm(G, Dk, Dv, scratch);
  for (index_t g = 0; g < G; ++g)
    for (index_t c = 0; c < Dk; ++c) sm.qs[g * Dk + c] = scale * q[g * q_head_stride + c * q_stride];
  sm.rows(DmcCacheAccess::key(cache, b, h, 0), DmcCacheAccess::value(cache, b, h, 0), closed);
  sm.rows(last_k, last_v, 1);
  for (index_t g = 0; g < G; ++g) {
    const bool none = sm.m[g] == -std::numeric_limits<float>::infinity() && !std::isnan(sm.l[g]);  // every logit -inf: o = 0
    const float inv = 1.f / sm.l[g];
    for (index_t c = 0; c < Dv; ++c) write(g, c, none ? 0.f : sm.acc[g * Dv + c] * inv);
  }
}

}  // namespace detail

/// DMC prefill (docs/operators.md section 6, dmc): the T tokens of every batch row are merged into
/// or appended to `cache` in order, and query t attends over the cache as it is right after token
/// t (causal over the compressed cache); o [B,T,Hq,Dv]. A cache that already holds slots (an
/// earlier chunk) is continued, so chunks, or a prefill followed by dmc_decode_step, equal one
/// call. Validation (ShapeError, before o or the cache is written): shapes, Hq not a multiple of
/// Hkv, alpha outside [0, 1] or NaN, omega not finite or <= 0, a head that would exceed the
/// cache's capacity, a non-finite scale, o overlapping an input. Threaded over (b, KV head).
inline void dmc_attention(const DmcInputs& in, DmcCache& cache, const TensorView<float, 4>& o,
                          const DmcOptions& options = {}, const Executor& executor = serial_executor()) {
  const ArgCheck check("dmc_attention");
  const auto d = detail::validate_dmc(check, in, cache, o, options);
  if (d.T > 0)
    parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
      std::vector<float> partial_k(static_cast<std::size_t>(d.T * d.Dk)), partial_v(static_cast<std::size_t>(d.T * d.Dv));
      std::vector<float> scratch(static_cast<std::size_t>(detail::dmc_group_scratch(d.group, d.Dk, d.Dv)));
      std::vector<index_t> closed(static_cast<std::size_t>(d.T));
      for (index_t task = begin; task < end; ++task) {
        const index_t b = task / d.Hkv, h = task % d.Hkv;
        for (index_t t = 0; t < d.T; ++t) {
          detail::dmc_update(cache, b, h, in.k.ptr(b, t, h, index_t{0}), in.k.stride(3), in.v.ptr(b, t, h, index_t{0}),
                             in.v.stride(3), in.alpha(b, t, h), in.omega(b, t, h));
          const index_t n = cache.size(b, h);
          closed[static_cast<std::size_t>(t)] = n - 1;
          std::copy_n(detail::DmcCacheAccess::key(cache, b, h, n - 1), d.Dk, partial_k.data() + t * d.Dk);
          std::copy_n(detail::DmcCacheAccess::value(cache, b, h, n - 1), d.Dv, partial_v.data() + t * d.Dv);
        }
        for (index_t t = 0; t < d.T; ++t)
          detail::dmc_attend_group(cache, b, h, closed[static_cast<std::size_t>(t)], partial_k.data() + t * d.Dk,
                                   partial_v.data() + t * d.Dv, in.q.ptr(b, t, h * d.group, index_t{0}), in.q.stride(2),
                                   in.q.stride(3), d.group, d.scale, scratch.data(),
                                   [&](index_t g, index_t c, float x) { o(b, t, h * d.group + g, c) = x; });
      }
    });
  for (index_t b = 0; b < d.B; ++b) detail::DmcCacheAccess::tokens(cache, b) += d.T;
}

}  // namespace seqmix
