// grid_scan: the 2-D linear recurrence over a grid (the 2-D SSM / pLSTM form: each cell from its
// left and top neighbours), elementwise over channels. Readable definition, options and
// validation; the fast form is wavefront.hpp.
//
//   h[b,i,j,c] = a_left[b,i,j,c] * h[b,i,j-1,c] + a_top[b,i,j,c] * h[b,i-1,j,c] + x[b,i,j,c]
//
// with h = 0 outside the grid (h[b,i,-1,c] = h[b,-1,j,c] = 0). Cell (i, j) depends on every cell
// (i', j') with i' <= i, j' <= j, so the cells of one anti-diagonal i + j = d are independent
// given diagonal d - 1: the wavefront order of the fast form.
#pragma once

#include <array>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How the fast grid_scan spreads work over the executor's threads.
enum class GridScanSplit {
  /// channels when every thread gets at least two vectors of channels of some batch row,
  /// wavefront otherwise.
  automatic,
  /// Each task owns (batch row, block of channels) and sweeps the whole grid: no synchronisation.
  channels,
  /// Anti-diagonal by anti-diagonal; the cells of one diagonal (times batch rows) in parallel,
  /// one synchronisation per diagonal (H + W - 1 of them). For few channels.
  wavefront,
};

/// Options of grid_scan.
struct GridScanOptions {
  /// Which dimension runs in parallel (see GridScanSplit).
  GridScanSplit split = GridScanSplit::automatic;
};

/// grid_scan arguments.
struct GridScanInputs {
  ConstView<float, 4> a_left;  ///< [B,H,W,C] coefficient of the left neighbour
  ConstView<float, 4> a_top;   ///< [B,H,W,C] coefficient of the top neighbour
  ConstView<float, 4> x;       ///< [B,H,W,C] input of each cell
};

namespace detail {

struct GridScanDims {
  index_t B, H, W, C;
};

inline GridScanDims validate_grid_scan(const char* op, const GridScanInputs& in, const TensorView<float, 4>& h,
                                       const GridScanOptions& options) {
  const ArgCheck check(op);
  check.shape("x", in.x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,W,C");
  const std::array<index_t, 4> shape = in.x.shape();
  check.shape("a_left", in.a_left, shape, "B,H,W,C");
  check.shape("a_top", in.a_top, shape, "B,H,W,C");
  check.shape("h", h, shape, "B,H,W,C");
  const auto split = options.split;
  check.that(split == GridScanSplit::automatic || split == GridScanSplit::channels || split == GridScanSplit::wavefront,
             "options.split", "must be automatic, channels or wavefront");
  // h is read back (the neighbours) while it is written: it may not share memory with an input.
  check.no_overlap("h", h, "x", in.x).no_overlap("h", h, "a_left", in.a_left).no_overlap("h", h, "a_top", in.a_top);
  return {shape[0], shape[1], shape[2], shape[3]};
}

}  // namespace detail

namespace reference {

/// The definition, cell by cell in row-major order. Single-threaded; `executor` is accepted for a
/// uniform signature.
inline void grid_scan(const GridScanInputs& in, TensorView<float, 4> h, const GridScanOptions& options = {},
                      const Executor& executor = serial_executor()) {
  (void)executor;
  const auto dims = detail::validate_grid_scan("reference::grid_scan", in, h, options);
  for (index_t b = 0; b < dims.B; ++b)
    for (index_t i = 0; i < dims.H; ++i)
      for (index_t j = 0; j < dims.W; ++j)
        for (index_t c = 0; c < dims.C; ++c) {
          const float left = j > 0 ? h(b, i, j - 1, c) : 0.f, top = i > 0 ? h(b, i - 1, j, c) : 0.f;
          h(b, i, j, c) = in.a_left(b, i, j, c) * left + in.a_top(b, i, j, c) * top + in.x(b, i, j, c);
        }
}

}  // namespace reference
}  // namespace seqmix
