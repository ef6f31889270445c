// A 2-D map [B,H,W,...] read as a 1-D token sequence in one of VMamba's four scan orders,
// without copying: each order is a list of segments, each segment a strided [B,len,...] view
// (core/tensor.hpp strides may be anything, negative included).
//
// Row-major order over a map whose rows are back to back (stride_H == W * stride_W, true for a
// contiguous map) is one segment of H*W tokens, and its reverse one segment with a negative
// stride. Column-major order over a contiguous map is not a single stride (the jump from the
// bottom of one column to the top of the next differs from the step inside a column), so it is W
// segments, one per column, and the scan carries its state from one column into the next
// (initial_state = the previous segment's final_state). The same holds for row-major order over
// a map with padded rows.
#pragma once

#include <array>
#include <cstddef>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// VMamba's four scan orders over an H x W grid, in VMamba's order (k = 0..3 of CrossScan).
enum class CrossDirection {
  row_major,              ///< token l = (l / W, l % W): rows top to bottom, each left to right
  column_major,           ///< token l = (l % H, l / H): columns left to right, each top to bottom
  row_major_reversed,     ///< row_major from its last token to its first
  column_major_reversed,  ///< column_major from its last token to its first
};

/// The four directions, indexable by k = 0..3.
constexpr std::array<CrossDirection, 4> kCrossDirections = {CrossDirection::row_major, CrossDirection::column_major,
                                                            CrossDirection::row_major_reversed,
                                                            CrossDirection::column_major_reversed};

/// A run of `length` tokens of a scan order starting at grid cell (h0, w0); token k of the run
/// sits k * (dh * stride_H + dw * stride_W) elements further in memory. With dh = 0, dw = +-1 and
/// length > W the run wraps from row to row, which is exact only when stride_H == W * stride_W
/// (grid_segments asks for that before it builds such a run).
struct GridSegment {
  index_t h0 = 0;      ///< grid row of the first token
  index_t w0 = 0;      ///< grid column of the first token
  index_t length = 0;  ///< tokens in the run
  index_t dh = 0;      ///< step in rows per token (-1, 0 or 1)
  index_t dw = 0;      ///< step in columns per token (-1, 0 or 1)
};

namespace detail {

inline bool cross_is_column(CrossDirection d) {
  return d == CrossDirection::column_major || d == CrossDirection::column_major_reversed;
}
inline bool cross_is_reversed(CrossDirection d) {
  return d == CrossDirection::row_major_reversed || d == CrossDirection::column_major_reversed;
}

}  // namespace detail

/// True when a map with these extents and (row, column) strides reads in `direction` as one run.
inline bool grid_flattens(CrossDirection direction, index_t H, index_t W, index_t stride_h, index_t stride_w) {
  if (H <= 1 || W <= 1) return true;  // one row or one column: a single stride either way
  return detail::cross_is_column(direction) ? stride_w == H * stride_h : stride_h == W * stride_w;
}

/// grid_flattens for the grid dimensions (1 and 2) of a [B,H,W,...] view; an empty (not given)
/// view does not constrain.
template <class T, std::size_t Rank>
bool grid_flattens(CrossDirection direction, const TensorView<T, Rank>& view) {
  static_assert(Rank >= 3, "a grid view is [B,H,W,...]");
  if (!view.has_value()) return true;
  return grid_flattens(direction, view.size(1), view.size(2), view.stride(1), view.stride(2));
}

/// The runs that read an H x W grid in `direction`, in scan order: one run when `flat` (every map
/// involved passed grid_flattens), else one per row (row orders) or per column (column orders).
inline std::vector<GridSegment> grid_segments(CrossDirection direction, index_t H, index_t W, bool flat) {
  std::vector<GridSegment> runs;
  if (H <= 0 || W <= 0) return runs;
  const bool column = detail::cross_is_column(direction), reversed = detail::cross_is_reversed(direction);
  const index_t s = reversed ? -1 : 1;
  // A single row or column reads the same in both orders: step along the extent that is not 1.
  if (H == 1 || W == 1) {
    const bool along_w = W > 1;
    runs.push_back({reversed ? H - 1 : 0, reversed ? W - 1 : 0, H * W, along_w ? 0 : s, along_w ? s : 0});
    return runs;
  }
  if (flat) {
    runs.push_back({reversed ? H - 1 : 0, reversed ? W - 1 : 0, H * W, column ? s : 0, column ? 0 : s});
    return runs;
  }
  const index_t count = column ? W : H;
  for (index_t i = 0; i < count; ++i) {
    const index_t line = reversed ? count - 1 - i : i;  // the row or column of run i
    if (column)
      runs.push_back({reversed ? H - 1 : 0, line, H, s, 0});
    else
      runs.push_back({line, reversed ? W - 1 : 0, W, 0, s});
  }
  return runs;
}

/// The tokens of one run of a [B,H,W,rest...] view as a [B,len,rest...] view (no copy). An empty
/// view stays empty.
template <class T, std::size_t Rank>
TensorView<T, Rank - 1> grid_segment_view(const TensorView<T, Rank>& view, const GridSegment& seg) {
  static_assert(Rank >= 3, "a grid view is [B,H,W,...]");
  if (!view.has_value()) return {};
  std::array<index_t, Rank - 1> shape{}, strides{};
  shape[0] = view.size(0), strides[0] = view.stride(0);
  shape[1] = seg.length, strides[1] = seg.dh * view.stride(1) + seg.dw * view.stride(2);
  for (std::size_t d = 3; d < Rank; ++d) shape[d - 1] = view.size(d), strides[d - 1] = view.stride(d);
  return TensorView<T, Rank - 1>(view.data() + seg.h0 * view.stride(1) + seg.w0 * view.stride(2), shape, strides);
}

/// Grid cell (h, w) of token l of `direction` over an H x W grid: the definition the runs follow.
inline std::array<index_t, 2> cross_scan_cell(CrossDirection direction, index_t H, index_t W, index_t l) {
  if (detail::cross_is_reversed(direction)) l = H * W - 1 - l;
  if (detail::cross_is_column(direction)) return {l % H, l / H};
  return {l / W, l % W};
}

}  // namespace seqmix
