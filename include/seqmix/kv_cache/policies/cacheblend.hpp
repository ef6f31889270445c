// CacheBlend selective recompute (Yao et al., CacheBlend: Fast Large Language Model Serving for
// RAG with Cached Knowledge Fusion, EuroSys 2025): chunks prefilled independently are reused
// out of prefix order; their cached KV lacks the cross-attention between chunks. A layer's fresh KV
// of the concatenation (computed for the first layer, then for the selected tokens only) is
// compared with the cached KV, the tokens with the highest KV deviation are recomputed and their
// rows replace the cached ones.
//
//   deviation[b, j] = sqrt( sum_h ||K_cached[b,j,h,:] - K_fresh[b,j,h,:]||^2
//                         + sum_h ||V_cached[b,j,h,:] - V_fresh[b,j,h,:]||^2 )
//   (the L2 norm of the difference of the token's key and value rows over all KV heads)
//
//   reference::cacheblend_deviation   the definition in double, one element at a time
//   cacheblend_deviation              fast: SIMD squared differences, threaded over tokens
//   cacheblend_select                 the round(ratio * N) tokens of highest deviation (optionally
//                                     among a previous layer's selection: gradual filtering)
//   cacheblend_blend                  replaces the selected rows of the cached KV by the fresh ones
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// One layer's cached and fresh KV of the same N tokens (B rows, H KV heads).
struct CacheBlendInputs {
  ConstView<float, 4> cached_keys;    ///< [B, N, H, Dk]: KV of the independently prefilled chunks
  ConstView<float, 4> cached_values;  ///< [B, N, H, Dv]
  ConstView<float, 4> fresh_keys;     ///< [B, N, H, Dk]: KV recomputed over the concatenation
  ConstView<float, 4> fresh_values;   ///< [B, N, H, Dv]
};

/// The tokens to recompute, per batch row: indices into the N tokens, strictly increasing.
struct CacheBlendSelection {
  std::vector<std::vector<index_t>> rows;  ///< rows[b]: the selected tokens of batch row b
};

namespace detail {

struct CacheBlendDims {
  index_t B, N, H, Dk, Dv;
};

inline CacheBlendDims validate_cacheblend(const ArgCheck& check, const CacheBlendInputs& in) {
  check.shape("cached_keys", in.cached_keys, {-1, -1, -1, -1}, "B,N,H,Dk");
  const index_t B = in.cached_keys.size(0), N = in.cached_keys.size(1), H = in.cached_keys.size(2),
                Dk = in.cached_keys.size(3);
  check.shape("cached_values", in.cached_values, {B, N, H, -1}, "B,N,H,Dv");
  const index_t Dv = in.cached_values.size(3);
  check.shape("fresh_keys", in.fresh_keys, {B, N, H, Dk}, "B,N,H,Dk");
  check.shape("fresh_values", in.fresh_values, {B, N, H, Dv}, "B,N,H,Dv");
  return {B, N, H, Dk, Dv};
}

// sum_i (a[i*sa] - b[i*sb])^2 in float; SIMD when both rows are contiguous.
inline float squared_distance(const float* a, index_t sa, const float* b, index_t sb, index_t n) noexcept {
  float s = 0.f;
  index_t i = 0;
  if (sa == 1 && sb == 1) {
    const index_t nv = simd::vector_end(n);
    if (nv > 0) {
      simd::Batch<float> acc(0.f);
      for (; i < nv; i += simd::kWidth) {
        const auto d = simd::load(a + i) - simd::load(b + i);
        acc = simd::fma(d, d, acc);
      }
      s = simd::reduce_add(acc);
    }
  }
  for (; i < n; ++i) {
    const float d = a[i * sa] - b[i * sb];
    s += d * d;
  }
  return s;
}

// Ranking key of a deviation (larger = recompute first). NaN means the cached or fresh row is not
// a number: it ranks with +inf, first, so a broken cached row is always recomputed.
inline float deviation_key(float d) noexcept { return std::isnan(d) ? std::numeric_limits<float>::infinity() : d; }

}  // namespace detail

namespace reference {

/// deviation [B, N]: the definition (header comment) with double accumulation.
inline void cacheblend_deviation(const CacheBlendInputs& in, const TensorView<float, 2>& deviation) {
  const ArgCheck check("kv::reference::cacheblend_deviation");
  const auto d = detail::validate_cacheblend(check, in);
  check.shape("deviation", deviation, {d.B, d.N}, "B,N");
  for (index_t b = 0; b < d.B; ++b)
    for (index_t j = 0; j < d.N; ++j) {
      double s = 0.0;
      for (index_t h = 0; h < d.H; ++h) {
        for (index_t c = 0; c < d.Dk; ++c) {
          const double x = static_cast<double>(in.cached_keys(b, j, h, c)) - in.fresh_keys(b, j, h, c);
          s += x * x;
        }
        for (index_t c = 0; c < d.Dv; ++c) {
          const double x = static_cast<double>(in.cached_values(b, j, h, c)) - in.fresh_values(b, j, h, c);
          s += x * x;
        }
      }
      deviation(b, j) = static_cast<float>(std::sqrt(s));
    }
}

}  // namespace reference

/// deviation [B, N] (header comment): fast form, float SIMD sums of squared differences per row,
/// tokens split over the executor. Any strides; contiguous channels take the vector path.
inline void cacheblend_deviation(const CacheBlendInputs& in, const TensorView<float, 2>& deviation,
                                 const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::cacheblend_deviation");
  const auto d = detail::validate_cacheblend(check, in);
  check.shape("deviation", deviation, {d.B, d.N}, "B,N");
  parallel_for(executor, d.B * d.N, 64, [&](index_t begin, index_t end) {
    for (index_t bj = begin; bj < end; ++bj) {
      const index_t b = bj / d.N, j = bj % d.N;
      float s = 0.f;
      for (index_t h = 0; h < d.H; ++h) {
        s += detail::squared_distance(in.cached_keys.ptr(b, j, h), in.cached_keys.stride(3), in.fresh_keys.ptr(b, j, h),
                                      in.fresh_keys.stride(3), d.Dk);
        s += detail::squared_distance(in.cached_values.ptr(b, j, h), in.cached_values.stride(3),
                                      in.fresh_values.ptr(b, j, h), in.fresh_values.stride(3), d.Dv);
      }
      deviation(b, j) = std::sqrt(s);
    }
  });
}

/// Options of cacheblend_select.
struct CacheBlendOptions {
  /// Share of the N tokens to recompute, in [0, 1]: round(ratio * N) tokens per batch row (0 keeps
  /// the cached KV, 1 recomputes every token). CacheBlend uses about 0.15 from the second layer on.
  double ratio = 0.15;
  /// Gradual filtering: when given (one list per batch row, strictly increasing), the tokens are
  /// chosen among these only (the previous layer's selection), at most all of them.
  const CacheBlendSelection* candidates = nullptr;
};

/// The tokens of highest deviation [B, N] per batch row, returned in increasing index order.
/// Ties go to the lower index (the earlier token); a NaN deviation ranks as +inf (recomputed first).
inline CacheBlendSelection cacheblend_select(const ConstView<float, 2>& deviation, const CacheBlendOptions& options) {
  const ArgCheck check("kv::cacheblend_select");
  check.shape("deviation", deviation, {-1, -1}, "B,N");
  const index_t B = deviation.size(0), N = deviation.size(1);
  if (!(options.ratio >= 0.0 && options.ratio <= 1.0))
    check.fail("ratio", "must lie in [0, 1], got " + std::to_string(options.ratio));
  if (options.candidates) {
    const auto& rows = options.candidates->rows;
    if (static_cast<index_t>(rows.size()) != B)
      check.fail("candidates", "must hold one list per batch row (" + std::to_string(B) + "), got " +
                                   std::to_string(rows.size()));
    for (index_t b = 0; b < B; ++b) {
      const auto& r = rows[static_cast<std::size_t>(b)];
      for (std::size_t i = 0; i < r.size(); ++i)
        if (r[i] < 0 || r[i] >= N || (i > 0 && r[i] <= r[i - 1]))
          check.fail("candidates", "row " + std::to_string(b) + " must be strictly increasing indices in [0, " +
                                       std::to_string(N) + "), entry " + std::to_string(i) + " is " +
                                       std::to_string(r[i]));
    }
  }
  const index_t count = static_cast<index_t>(std::llround(options.ratio * static_cast<double>(N)));
  CacheBlendSelection out;
  out.rows.resize(static_cast<std::size_t>(B));
  std::vector<index_t> pool;
  for (index_t b = 0; b < B; ++b) {
    if (options.candidates) {
      pool = options.candidates->rows[static_cast<std::size_t>(b)];
    } else {
      pool.resize(static_cast<std::size_t>(N));
      std::iota(pool.begin(), pool.end(), index_t{0});
    }
    const index_t take = std::min<index_t>(count, static_cast<index_t>(pool.size()));
    const auto better = [&](index_t x, index_t y) {
      const float kx = detail::deviation_key(deviation(b, x)), ky = detail::deviation_key(deviation(b, y));
      return kx > ky || (kx == ky && x < y);
    };
    if (take < static_cast<index_t>(pool.size())) std::nth_element(pool.begin(), pool.begin() + take, pool.end(), better);
    auto& row = out.rows[static_cast<std::size_t>(b)];
    row.assign(pool.begin(), pool.begin() + take);
    std::sort(row.begin(), row.end());
  }
  return out;
}

/// Blend: keys [B, N, H, Dk] and values [B, N, H, Dv] hold the cached KV and are updated in
/// place: the rows of the selected tokens (every KV head) are replaced by fresh_keys /
/// fresh_values; the other rows are left as they are. Everything is validated before a write.
inline void cacheblend_blend(const TensorView<float, 4>& keys, const TensorView<float, 4>& values,
                             const ConstView<float, 4>& fresh_keys, const ConstView<float, 4>& fresh_values,
                             const CacheBlendSelection& selection) {
  const ArgCheck check("kv::cacheblend_blend");
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,H,Dk");
  const index_t B = keys.size(0), N = keys.size(1), H = keys.size(2), Dk = keys.size(3);
  check.shape("values", values, {B, N, H, -1}, "B,N,H,Dv");
  const index_t Dv = values.size(3);
  check.shape("fresh_keys", fresh_keys, {B, N, H, Dk}, "B,N,H,Dk");
  check.shape("fresh_values", fresh_values, {B, N, H, Dv}, "B,N,H,Dv");
  if (static_cast<index_t>(selection.rows.size()) != B)
    check.fail("selection", "must hold one list per batch row (" + std::to_string(B) + "), got " +
                                std::to_string(selection.rows.size()));
  for (index_t b = 0; b < B; ++b) {
    const auto& r = selection.rows[static_cast<std::size_t>(b)];
    for (std::size_t i = 0; i < r.size(); ++i)
      if (r[i] < 0 || r[i] >= N || (i > 0 && r[i] <= r[i - 1]))
        check.fail("selection", "row " + std::to_string(b) + " must be strictly increasing indices in [0, " +
                                    std::to_string(N) + "), entry " + std::to_string(i) + " is " + std::to_string(r[i]));
  }
  for (index_t b = 0; b < B; ++b)
    for (index_t j : selection.rows[static_cast<std::size_t>(b)])
      for (index_t h = 0; h < H; ++h) {
        for (index_t c = 0; c < Dk; ++c) keys(b, j, h, c) = fresh_keys(b, j, h, c);
        for (index_t c = 0; c < Dv; ++c) values(b, j, h, c) = fresh_values(b, j, h, c);
      }
}

}  // namespace seqmix::kv
