// cross_scan / cross_merge, fast forms: each direction's runs (grid.hpp) copied as strided views,
// threaded over (batch row, direction). Definitions: reference.hpp.
#pragma once

#include <array>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/structured/cross_scan/grid.hpp"
#include "seqmix/structured/cross_scan/reference.hpp"

namespace seqmix {

namespace detail {

// dst[l, :] (op)= src[l, :] over [len, C] views; channels innermost.
template <bool kAdd>
void cross_rows(const ConstView<float, 2>& src, const TensorView<float, 2>& dst) {
  const index_t L = src.size(0), C = src.size(1);
  for (index_t l = 0; l < L; ++l) {
    const float* s = src.ptr(l);
    float* d = dst.ptr(l);
    const index_t ss = src.stride(1), ds = dst.stride(1);
    if (ss == 1 && ds == 1) {
      for (index_t c = 0; c < C; ++c) d[c] = kAdd ? d[c] + s[c] : s[c];
    } else {
      for (index_t c = 0; c < C; ++c) d[c * ds] = kAdd ? d[c * ds] + s[c * ss] : s[c * ss];
    }
  }
}

}  // namespace detail

/// VMamba's CrossScan, token-major: x [B,H,W,C] -> xs [B,4,H*W,C] (definition:
/// reference::cross_scan). Needed only where the four sequences must exist in memory;
/// cross_selective_scan reads them as views instead.
inline void cross_scan(ConstView<float, 4> x, TensorView<float, 4> xs, const Executor& executor = serial_executor()) {
  detail::validate_cross_scan("cross_scan", x, xs);
  const index_t B = x.size(0), H = x.size(1), W = x.size(2);
  executor.run(B * 4, [&](index_t task) {
    const index_t b = task / 4, k = task % 4;
    const CrossDirection dir = kCrossDirections[static_cast<std::size_t>(k)];
    index_t l = 0;
    for (const GridSegment& seg : grid_segments(dir, H, W, grid_flattens(dir, x))) {
      detail::cross_rows<false>(grid_segment_view(x, seg)[b], xs[b][k].slice(0, l, seg.length));
      l += seg.length;
    }
  });
}

/// VMamba's CrossMerge, token-major: ys [B,4,H*W,C] -> y [B,H,W,C], the sum of the four
/// directions at each cell (definition: reference::cross_merge).
inline void cross_merge(ConstView<float, 4> ys, TensorView<float, 4> y, const Executor& executor = serial_executor()) {
  detail::validate_cross_merge("cross_merge", ys, y);
  const index_t B = y.size(0), H = y.size(1), W = y.size(2);
  executor.run(B, [&](index_t b) {
    for (index_t k = 0; k < 4; ++k) {
      const CrossDirection dir = kCrossDirections[static_cast<std::size_t>(k)];
      index_t l = 0;
      for (const GridSegment& seg : grid_segments(dir, H, W, grid_flattens(dir, y))) {
        const auto dst = grid_segment_view(y, seg)[b];
        const auto src = ys[b][k].slice(0, l, seg.length);
        if (k == 0)
          detail::cross_rows<false>(src, dst);
        else
          detail::cross_rows<true>(src, dst);
        l += seg.length;
      }
    }
  });
}

}  // namespace seqmix
