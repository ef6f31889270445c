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

/// Slots per online-softmax tile: 64 scores live on the stack (no allocation in the step), and
/// one rescale of the accumulator per 64 slots costs little next to 64 value rows.
constexpr index_t kDmcTile = 64;

/// Online softmax over rows of contiguous keys [n,Dk] and values [n,Dv] (row strides Dk, Dv):
/// m (running max), l (running denominator) and acc [Dv] are carried between calls, so the slots
/// and a partial row are one softmax. qs is the query already multiplied by the scale.
struct DmcSoftmax {
  float m = -std::numeric_limits<float>::infinity(), l = 0.f;

  void rows(const float* qs, const float* keys, const float* values, index_t n, index_t Dk, index_t Dv, float* acc) {
    float score[kDmcTile];
    for (index_t j0 = 0; j0 < n; j0 += kDmcTile) {
      const index_t len = std::min(kDmcTile, n - j0);
      float top = m;
      for (index_t j = 0; j < len; ++j) {
        score[j] = simd::dot(qs, keys + (j0 + j) * Dk, Dk);
        top = std::max(top, score[j]);
      }
      if (top > m) {
        const float factor = std::exp(m - top);  // 0 on the first tile (m = -inf)
        l *= factor;
        for (index_t c = 0; c < Dv; ++c) acc[c] *= factor;
        m = top;
      }
      for (index_t j = 0; j < len; ++j) {
        const float p = std::exp(score[j] - m);
        l += p;
        simd::axpy(p, values + (j0 + j) * Dv, acc, Dv);
      }
    }
  }
};

/// o = softmax attention of one query head over slots [0, closed) of (b, h) then the row
/// (last_k, last_v). scratch: Dk + Dv floats.
template <class Out>
void dmc_attend(DmcCache& cache, index_t b, index_t h, index_t closed, const float* last_k, const float* last_v,
                const float* q, index_t qs_stride, float scale, float* scratch, Out&& write) {
  const index_t Dk = cache.config().key_dim, Dv = cache.config().value_dim;
  float* qs = scratch;
  float* acc = scratch + Dk;
  for (index_t c = 0; c < Dk; ++c) qs[c] = scale * q[c * qs_stride];
  std::fill(acc, acc + Dv, 0.f);
  DmcSoftmax sm;
  sm.rows(qs, DmcCacheAccess::key(cache, b, h, 0), DmcCacheAccess::value(cache, b, h, 0), closed, Dk, Dv, acc);
  sm.rows(qs, last_k, last_v, 1, Dk, Dv, acc);
  const float inv = 1.f / sm.l;
  for (index_t c = 0; c < Dv; ++c) write(c, acc[c] * inv);
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
      std::vector<float> scratch(static_cast<std::size_t>(d.Dk + d.Dv));
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
        for (index_t g = 0; g < d.group; ++g) {
          const index_t hq = h * d.group + g;
          for (index_t t = 0; t < d.T; ++t)
            detail::dmc_attend(cache, b, h, closed[static_cast<std::size_t>(t)], partial_k.data() + t * d.Dk,
                               partial_v.data() + t * d.Dv, in.q.ptr(b, t, hq, index_t{0}), in.q.stride(3), d.scale,
                               scratch.data(), [&](index_t c, float x) { o(b, t, hq, c) = x; });
        }
      }
    });
  for (index_t b = 0; b < d.B; ++b) detail::DmcCacheAccess::tokens(cache, b) += d.T;
}

}  // namespace seqmix
