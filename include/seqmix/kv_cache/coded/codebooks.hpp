// Product-quantization codebooks and 1-bit sign codes shared by the coded KV storage: the
// formats (KvCodeFormat), the per-head codebooks (PqCodebooks), their checks, the nearest-centroid
// search and k-means fitting (fit_pq_codebooks). coded/cache.hpp (CodedKvCache) and KvCache's
// coded storage (KvCacheConfig::coded, coded/block_codes.hpp) both use them; the formulas are in
// coded/cache.hpp's header comment.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Coded storage formats (CodedKvCache, and KvCache with KvCacheConfig::coded).
enum class KvCodeFormat : std::uint8_t {
  pq,     ///< product quantization: one byte per sub-space, centroids from per-head codebooks
  sign1,  ///< 1-bit signs with one scale (mean |x|) per group of channels
};

/// Product-quantization codebooks of one role (keys or values): for each KV head h and sub-space
/// s, `centroids` vectors of `sub_dim()` floats, stored as data [kv_heads][subspaces][centroids][sub_dim].
struct PqCodebooks {
  ///@{
  index_t kv_heads = 0, subspaces = 0, centroids = 0, dim = 0;  ///< Hkv, m, K (<= 256), D
  ///@}
  std::vector<float> data;  ///< [Hkv][m][K][D / m]

  /// Channels per sub-space, D / m.
  index_t sub_dim() const noexcept { return subspaces > 0 ? dim / subspaces : 0; }
  /// Centroid k of sub-space s of KV head h (sub_dim() floats).
  const float* centroid(index_t h, index_t s, index_t k) const noexcept {
    return data.data() + ((h * subspaces + s) * centroids + k) * sub_dim();
  }
  /// Writable centroid k of sub-space s of KV head h.
  float* centroid(index_t h, index_t s, index_t k) noexcept { return data.data() + ((h * subspaces + s) * centroids + k) * sub_dim(); }
};

/// How fit_pq_codebooks runs k-means.
struct PqFitOptions {
  index_t subspaces = 0;    ///< m, must divide D
  index_t centroids = 256;  ///< K in [1, 256]
  index_t iterations = 8;   ///< Lloyd iterations after the seeding (>= 0)
  std::uint64_t seed = 1;   ///< seeds the choice of the initial centroids
};


namespace detail {

// Shape and content checks of one role's codebooks (ShapeError naming `name`).
inline void check_codebooks(const ArgCheck& check, const PqCodebooks& cb, index_t kv_heads, index_t dim, const char* name) {
  const std::string n = name;
  if (cb.centroids < 1 || cb.centroids > 256)
    check.fail(name, "centroids must lie in [1, 256], got " + std::to_string(cb.centroids));
  if (cb.subspaces < 1 || dim % cb.subspaces != 0)
    check.fail(name, "subspaces (" + std::to_string(cb.subspaces) + ") must be >= 1 and divide the dimension " + std::to_string(dim));
  if (cb.dim != dim) check.fail(name, "dim must be " + std::to_string(dim) + ", got " + std::to_string(cb.dim));
  if (cb.kv_heads != kv_heads) check.fail(name, "kv_heads must be " + std::to_string(kv_heads) + ", got " + std::to_string(cb.kv_heads));
  const index_t want = check.product(name, kv_heads, cb.centroids, dim);
  if (static_cast<index_t>(cb.data.size()) != want)
    check.fail(name, "data must hold Hkv * K * D = " + std::to_string(want) + " floats, got " + std::to_string(cb.data.size()));
  for (float x : cb.data)
    if (!std::isfinite(x)) check.fail(name, "data must be finite (a centroid holds " + std::to_string(x) + ")");
}

inline void check_fit_options(const ArgCheck& check, const PqFitOptions& o, index_t dim) {
  if (o.centroids < 1 || o.centroids > 256) check.fail("options.centroids", "must lie in [1, 256], got " + std::to_string(o.centroids));
  if (o.subspaces < 1 || dim % o.subspaces != 0)
    check.fail("options.subspaces", "must be >= 1 and divide the dimension " + std::to_string(dim) + ", got " + std::to_string(o.subspaces));
  if (o.iterations < 0) check.fail("options.iterations", "must be >= 0, got " + std::to_string(o.iterations));
}

inline float squared_distance(const float* a, const float* b, index_t n) noexcept {
  float d = 0.f;
  for (index_t i = 0; i < n; ++i) d += (a[i] - b[i]) * (a[i] - b[i]);
  return d;
}

// Nearest centroid of x [d] among K centroids [K][d] (ties: the lowest index). x must be finite.
inline int nearest_centroid(const float* x, const float* centroids, index_t K, index_t d) noexcept {
  int best = 0;
  float best_d = std::numeric_limits<float>::infinity();
  for (index_t k = 0; k < K; ++k) {
    const float dist = squared_distance(x, centroids + k * d, d);
    if (dist < best_d) best_d = dist, best = static_cast<int>(k);
  }
  return best;
}

inline bool all_finite(const float* x, index_t n) noexcept {
  float poison = 0.f;
  for (index_t i = 0; i < n; ++i) poison += x[i] * 0.f;
  return poison == 0.f;
}

}  // namespace detail

/// Fits PQ codebooks on x [B, T, Hkv, D] (e.g. the prefill's keys): for each KV head and sub-space,
/// k-means over the B * T sub-vectors that are finite. Seeding: K distinct points drawn with
/// std::mt19937_64(seed ^ (h * m + s)) (all points, repeated in order, when fewer than K are
/// finite; zeros when none are); then `iterations` Lloyd steps (nearest centroid, ties to the
/// lowest index; a centroid left without points keeps its place). Deterministic for a given
/// input and options, whatever the executor. Threaded over (head, sub-space).
/// ShapeError for an empty x, centroids outside [1, 256], subspaces not dividing D, iterations < 0.
inline PqCodebooks fit_pq_codebooks(const ConstView<float, 4>& x, const PqFitOptions& options,
                                    const Executor& executor = serial_executor()) {
  const ArgCheck check("fit_pq_codebooks");
  check.shape("x", x, {-1, -1, -1, -1}, "B,T,Hkv,D");
  const index_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  if (B * T < 1 || H < 1 || D < 1) check.fail("x", "must hold at least one token of one head and one channel");
  detail::check_fit_options(check, options, D);
  PqCodebooks cb;
  cb.kv_heads = H, cb.subspaces = options.subspaces, cb.centroids = options.centroids, cb.dim = D;
  cb.data.assign(static_cast<std::size_t>(check.product("x", H, options.centroids, D)), 0.f);
  const index_t m = options.subspaces, K = options.centroids, d = D / m, N = B * T;
  parallel_for(executor, H * m, 1, [&](index_t begin, index_t end) {
    std::vector<float> pts, sums, row(static_cast<std::size_t>(d));
    std::vector<index_t> counts;
    for (index_t task = begin; task < end; ++task) {
      const index_t h = task / m, s = task % m;
      pts.clear();
      for (index_t n = 0; n < N; ++n) {
        for (index_t c = 0; c < d; ++c) row[c] = x(n / T, n % T, h, s * d + c);
        if (detail::all_finite(row.data(), d)) pts.insert(pts.end(), row.begin(), row.end());
      }
      const index_t P = static_cast<index_t>(pts.size()) / d;
      float* C = cb.centroid(h, s, 0);
      if (P == 0) continue;  // zeros
      if (P <= K) {
        for (index_t k = 0; k < K; ++k) std::copy_n(pts.data() + (k % P) * d, d, C + k * d);
      } else {
        // K distinct indices: a partial Fisher-Yates shuffle of [0, P).
        std::mt19937_64 rng(options.seed ^ static_cast<std::uint64_t>(task));
        std::vector<index_t> idx(static_cast<std::size_t>(P));
        for (index_t i = 0; i < P; ++i) idx[i] = i;
        for (index_t k = 0; k < K; ++k) {
          const index_t j = k + static_cast<index_t>(rng() % static_cast<std::uint64_t>(P - k));
          std::swap(idx[k], idx[j]);
          std::copy_n(pts.data() + idx[k] * d, d, C + k * d);
        }
      }
      for (index_t it = 0; it < options.iterations; ++it) {
        sums.assign(static_cast<std::size_t>(K * d), 0.f);
        counts.assign(static_cast<std::size_t>(K), 0);
        for (index_t p = 0; p < P; ++p) {
          const int k = detail::nearest_centroid(pts.data() + p * d, C, K, d);
          ++counts[k];
          for (index_t c = 0; c < d; ++c) sums[k * d + c] += pts[p * d + c];
        }
        for (index_t k = 0; k < K; ++k)
          if (counts[k] > 0)
            for (index_t c = 0; c < d; ++c) C[k * d + c] = sums[k * d + c] / static_cast<float>(counts[k]);
      }
    }
  });
  return cb;
}

}  // namespace seqmix
