// grid_scan, fast form (definition: reference.hpp): SIMD across channels, threaded either over
// channel blocks (each task sweeps the whole grid) or along the anti-diagonal wavefront (cells
// with i + j = d are independent once diagonal d - 1 is done).
#pragma once

#include <algorithm>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/structured/grid_scan/reference.hpp"

namespace seqmix {

namespace detail {

// Channels [c0, c1) of cell (b, i, j); its neighbours are final.
inline void grid_cell(const GridScanInputs& in, const TensorView<float, 4>& h, index_t b, index_t i, index_t j,
                      index_t c0, index_t c1) {
  const float* al = in.a_left.ptr(b, i, j);
  const float* at = in.a_top.ptr(b, i, j);
  const float* x = in.x.ptr(b, i, j);
  float* out = h.ptr(b, i, j);
  const float* left = j > 0 ? h.ptr(b, i, j - 1) : nullptr;
  const float* top = i > 0 ? h.ptr(b, i - 1, j) : nullptr;
  const bool unit = in.a_left.stride(3) == 1 && in.a_top.stride(3) == 1 && in.x.stride(3) == 1 && h.stride(3) == 1;
  index_t c = c0;
  if (unit) {
    using simd::Batch;
    for (const index_t cv = c0 + simd::vector_end(c1 - c0); c < cv; c += simd::kWidth) {
      Batch<float> v = simd::load(x + c);
      if (left) v = simd::fma(simd::load(al + c), simd::load(left + c), v);
      if (top) v = simd::fma(simd::load(at + c), simd::load(top + c), v);
      simd::store(out + c, v);
    }
  }
  const index_t sal = in.a_left.stride(3), sat = in.a_top.stride(3), sx = in.x.stride(3), sh = h.stride(3);
  for (; c < c1; ++c) {
    float v = x[c * sx];
    if (left) v += al[c * sal] * left[c * sh];
    if (top) v += at[c * sat] * top[c * sh];
    out[c * sh] = v;
  }
}

}  // namespace detail

/// The 2-D linear recurrence h[i,j] = a_left h[i,j-1] + a_top h[i-1,j] + x[i,j] over [B,H,W,C]
/// grids (definition: reference::grid_scan; zero outside the grid). Any strides; unit channel
/// stride is the fast case. h must not overlap an input. No scratch.
inline void grid_scan(const GridScanInputs& in, TensorView<float, 4> h, const GridScanOptions& options = {},
                      const Executor& executor = serial_executor()) {
  const auto dims = detail::validate_grid_scan("grid_scan", in, h, options);
  const index_t B = dims.B, H = dims.H, W = dims.W, C = dims.C;
  if (B == 0 || H == 0 || W == 0 || C == 0) return;
  const int threads = executor.concurrency();
  // Channel blocks of whole vectors, at least two vectors each.
  const index_t vectors = (C + simd::kWidth - 1) / simd::kWidth;
  const index_t blocks = std::max<index_t>(1, std::min<index_t>(vectors / 2, (threads + B - 1) / B));
  GridScanSplit split = options.split;
  if (split == GridScanSplit::automatic)
    split = threads <= 1 || B * blocks >= threads ? GridScanSplit::channels : GridScanSplit::wavefront;
  if (split == GridScanSplit::channels) {
    executor.run(B * blocks, [&](index_t task) {
      const index_t b = task / blocks, k = task % blocks;
      const index_t c0 = std::min(C, vectors * k / blocks * simd::kWidth);
      const index_t c1 = std::min(C, vectors * (k + 1) / blocks * simd::kWidth);
      for (index_t i = 0; i < H; ++i)
        for (index_t j = 0; j < W; ++j) detail::grid_cell(in, h, b, i, j, c0, c1);
    });
    return;
  }
  for (index_t d = 0; d < H + W - 1; ++d) {
    const index_t i0 = std::max<index_t>(0, d - (W - 1)), i1 = std::min(H - 1, d);
    const index_t cells = i1 - i0 + 1;
    parallel_for(executor, B * cells, 1, [&](index_t begin, index_t end) {
      for (index_t t = begin; t < end; ++t) {
        const index_t b = t / cells, i = i0 + t % cells;
        detail::grid_cell(in, h, b, i, d - i, 0, C);
      }
    });
  }
}

}  // namespace seqmix
