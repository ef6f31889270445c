// cross_selective_scan: VMamba's 2-D selective scan (SS2D) over a [B,H,W,D] map, the four scan
// orders of grid.hpp fed to selective_scan as strided views and merged back to the grid by sum;
// optionally MSVMamba's multi-scale variant, where some directions scan a 2x-downsampled map.
//
// Per direction k every token-indexed input is given in grid layout ([B,Hk,Wk,...]): VMamba
// computes delta, B and C from the cross-scanned sequence by a per-token projection, which the
// caller computes on the grid just as well, so nothing needs to exist in scan order and u may be
// the very same view for all four directions. Direction k's output is y_k[b,cell] = the
// selective_scan output at the token that reads that cell, and
//
//   y[b,h,w,:] = sum over full-scale k of y_k[b,h,w,:]
//              + sum over coarse k of y_k[b, h/2, w/2, :]   (nearest-neighbour upsampling)
//
// A coarse direction's map is [B, ceil(H/2), ceil(W/2), ...]: the caller downsamples (MSVMamba
// uses a stride-2 depthwise convolution; downsample2x_mean below is a 2x2 mean for callers
// without one). Cost: the scans themselves, plus one [B,H,W,D] scratch for the directions after
// the first and one [B,D,N] state carried across the runs of a direction that is not one stride
// (column orders of a contiguous map: one selective_scan call per column, each starting from the
// previous column's final state).
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/structured/cross_scan/grid.hpp"

namespace seqmix {

/// The scale a direction of cross_selective_scan scans at.
enum class GridScale {
  full,    ///< the [B,H,W,...] map itself
  coarse,  ///< a 2x-downsampled [B,ceil(H/2),ceil(W/2),...] map; its output is upsampled (nearest)
};

/// One direction's selective_scan inputs in grid layout (see SelectiveScanInputs for each one).
struct CrossScanDirectionInputs {
  ConstView<float, 4> u;                ///< [B,Hk,Wk,D]
  ConstView<float, 4> delta;            ///< [B,Hk,Wk,D]
  ConstView<float, 2> A;                ///< [D,N]
  ConstView<float, 5> Bm;               ///< [B,Hk,Wk,G,N]
  ConstView<float, 5> Cm;               ///< [B,Hk,Wk,G,N]
  ConstView<float, 1> Dskip = {};       ///< [D], optional
  ConstView<float, 4> z = {};           ///< [B,Hk,Wk,D], optional gate
  ConstView<float, 1> delta_bias = {};  ///< [D], optional
};

/// Options of cross_selective_scan.
struct CrossSelectiveScanOptions {
  /// Passed to every direction's selective_scan (its reverse flag must stay false: the reversed
  /// directions are directions 2 and 3).
  SelectiveScanOptions scan = {};
  /// Scale of each direction, k = 0..3 in kCrossDirections order; all full = VMamba. MSVMamba
  /// scans row-major at full scale and the others coarse: {full, coarse, coarse, coarse}.
  std::array<GridScale, 4> scales = {GridScale::full, GridScale::full, GridScale::full, GridScale::full};
};

namespace detail {

inline index_t cross_coarse(index_t n) { return (n + 1) / 2; }

struct CrossDims {
  index_t B, H, W, D;
};

inline CrossDims validate_cross_selective_scan(const char* op, const std::array<CrossScanDirectionInputs, 4>& dirs,
                                               const TensorView<float, 4>& y, const CrossSelectiveScanOptions& options) {
  const ArgCheck check(op);
  check.shape("y", y, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,W,D");
  const index_t B = y.size(0), H = y.size(1), W = y.size(2), D = y.size(3);
  check.that(!options.scan.reverse, "options.scan.reverse",
             "must be false: directions 2 and 3 are the reversed ones");
  for (std::size_t k = 0; k < 4; ++k) {
    const GridScale scale = options.scales[k];
    check.that(scale == GridScale::full || scale == GridScale::coarse, "options.scales", "must be full or coarse");
    const CrossScanDirectionInputs& in = dirs[k];
    const bool coarse = scale == GridScale::coarse;
    const index_t Hk = coarse ? cross_coarse(H) : H, Wk = coarse ? cross_coarse(W) : W;
    const std::string p = "directions[" + std::to_string(k) + "].";
    const std::string u = p + "u", delta = p + "delta", A = p + "A", Bm = p + "Bm", Cm = p + "Cm", z = p + "z";
    const index_t N = in.A.size(1);
    check.shape(u.c_str(), in.u, std::array<index_t, 4>{B, Hk, Wk, D}, coarse ? "B,ceil(H/2),ceil(W/2),D" : "B,H,W,D");
    check.shape(delta.c_str(), in.delta, std::array<index_t, 4>{B, Hk, Wk, D}, "B,Hk,Wk,D");
    check.shape(A.c_str(), in.A, std::array<index_t, 2>{D, -1}, "D,N");
    check.shape(Bm.c_str(), in.Bm, std::array<index_t, 5>{B, Hk, Wk, -1, N}, "B,Hk,Wk,G,N");
    check.shape(Cm.c_str(), in.Cm, std::array<index_t, 5>{B, Hk, Wk, in.Bm.size(3), N}, "B,Hk,Wk,G,N");
    check.optional_shape(z.c_str(), in.z, std::array<index_t, 4>{B, Hk, Wk, D}, "B,Hk,Wk,D");
    check.no_overlap("y", y, u.c_str(), in.u).no_overlap("y", y, delta.c_str(), in.delta);
    check.no_overlap("y", y, Bm.c_str(), in.Bm).no_overlap("y", y, Cm.c_str(), in.Cm).no_overlap("y", y, z.c_str(), in.z);
    // The rest (groups, Dskip, delta_bias, finite A) as selective_scan checks it, on the first
    // run; its y is y's first cell repeated along time (stride 0), there for its shape only.
    if (B > 0 && Hk > 0 && Wk > 0) {
      const GridSegment first = grid_segments(kCrossDirections[k], Hk, Wk, false).front();
      const TensorView<float, 3> y_probe(y.data(), {B, first.length, D}, {y.stride(0), 0, y.stride(3)});
      const SelectiveScanInputs seq{grid_segment_view(in.u, first), grid_segment_view(in.delta, first), in.A,
                                    grid_segment_view(in.Bm, first), grid_segment_view(in.Cm, first), in.Dskip,
                                    grid_segment_view(in.z, first), in.delta_bias};
      try {
        validate_selective_scan(op, seq, SelectiveScanOutputs{y_probe});
      } catch (const ShapeError& e) {
        // Say which direction: the same problem, under the direction's argument name.
        const std::string what = e.what(), prefix = "argument '" + e.argument() + "' ";
        const std::size_t at = what.find(prefix);
        throw ShapeError(op, p + e.argument(), at == std::string::npos ? what : what.substr(at + prefix.size()));
      }
    }
  }
  return {B, H, W, D};
}

// dst[b,h,w,:] += src[b,h/2,w/2,:] (src coarse) or src[b,h,w,:]; `assign` writes instead of adding.
inline void cross_accumulate(const ConstView<float, 4>& src, const TensorView<float, 4>& dst, bool coarse, bool assign,
                             const Executor& executor) {
  const index_t B = dst.size(0), H = dst.size(1), W = dst.size(2), D = dst.size(3);
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t b = i / H, h = i % H;
      for (index_t w = 0; w < W; ++w) {
        const float* s = src.ptr(b, coarse ? h / 2 : h, coarse ? w / 2 : w);
        float* d = dst.ptr(b, h, w);
        const index_t ss = src.stride(3), ds = dst.stride(3);
        for (index_t c = 0; c < D; ++c) d[c * ds] = assign ? s[c * ss] : d[c * ds] + s[c * ss];
      }
    }
  });
}

// Runs one direction over its map: selective_scan on each run, the state carried between runs.
// y_grid is the direction's output in grid layout.
template <class Scan>
void cross_run_direction(CrossDirection dir, const CrossScanDirectionInputs& in, const TensorView<float, 4>& y_grid,
                         const SelectiveScanOptions& options, Scan&& scan, const Executor& executor) {
  const index_t B = y_grid.size(0), H = y_grid.size(1), W = y_grid.size(2), D = y_grid.size(3), N = in.A.size(1);
  const bool flat = grid_flattens(dir, in.u) && grid_flattens(dir, in.delta) && grid_flattens(dir, in.Bm) &&
                    grid_flattens(dir, in.Cm) && grid_flattens(dir, in.z) && grid_flattens(dir, y_grid);
  const std::vector<GridSegment> runs = grid_segments(dir, H, W, flat);
  Tensor<float, 3> state(runs.size() > 1 ? std::array<index_t, 3>{B, D, N} : std::array<index_t, 3>{0, D, N});
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const GridSegment& seg = runs[r];
    const SelectiveScanInputs seq{grid_segment_view(in.u, seg), grid_segment_view(in.delta, seg), in.A,
                                  grid_segment_view(in.Bm, seg), grid_segment_view(in.Cm, seg), in.Dskip,
                                  grid_segment_view(in.z, seg), in.delta_bias,
                                  r == 0 ? ConstView<float, 3>() : state.cview()};
    const bool last = r + 1 == runs.size();
    scan(seq, SelectiveScanOutputs{grid_segment_view(y_grid, seg), last ? TensorView<float, 3>() : state.view()}, options,
         executor);
  }
}

template <class Scan>
void cross_selective_scan_impl(const char* op, const std::array<CrossScanDirectionInputs, 4>& dirs,
                               TensorView<float, 4> y, const CrossSelectiveScanOptions& options, Scan&& scan,
                               const Executor& executor) {
  const CrossDims dims = validate_cross_selective_scan(op, dirs, y, options);
  const index_t B = dims.B, H = dims.H, W = dims.W, D = dims.D;
  if (B == 0 || H == 0 || W == 0 || D == 0) return;
  Tensor<float, 4> full_scratch, coarse_scratch;
  bool written = false;
  for (std::size_t k = 0; k < 4; ++k) {
    const bool coarse = options.scales[k] == GridScale::coarse;
    TensorView<float, 4> target;
    if (coarse) {
      if (coarse_scratch.view().numel() == 0) coarse_scratch = Tensor<float, 4>({B, cross_coarse(H), cross_coarse(W), D});
      target = coarse_scratch.view();
    } else if (!written) {
      target = y;  // the first full-scale direction writes y directly
    } else {
      if (full_scratch.view().numel() == 0) full_scratch = Tensor<float, 4>({B, H, W, D});
      target = full_scratch.view();
    }
    cross_run_direction(kCrossDirections[k], dirs[k], target, options.scan, scan, executor);
    if (target.data() != y.data()) cross_accumulate(target.as_const(), y, coarse, !written, executor);
    written = true;
  }
}

}  // namespace detail

/// The 2-D selective scan of VMamba (SS2D) and MSVMamba (options.scales), y [B,H,W,D] = the sum
/// of the four directions' selective_scan outputs at each cell (see the header comment). The
/// scans read the grid-layout inputs as strided views: nothing is copied into scan order.
/// Threaded as selective_scan is, direction after direction.
inline void cross_selective_scan(const std::array<CrossScanDirectionInputs, 4>& directions, TensorView<float, 4> y,
                                 const CrossSelectiveScanOptions& options = {},
                                 const Executor& executor = serial_executor()) {
  detail::cross_selective_scan_impl(
      "cross_selective_scan", directions, y, options,
      [](const SelectiveScanInputs& in, const SelectiveScanOutputs& out, const SelectiveScanOptions& o,
         const Executor& ex) { selective_scan(in, out, o, ex); },
      executor);
}

namespace reference {

/// cross_selective_scan with reference::selective_scan on every run.
inline void cross_selective_scan(const std::array<CrossScanDirectionInputs, 4>& directions, TensorView<float, 4> y,
                                 const CrossSelectiveScanOptions& options = {},
                                 const Executor& executor = serial_executor()) {
  detail::cross_selective_scan_impl(
      "reference::cross_selective_scan", directions, y, options,
      [](const SelectiveScanInputs& in, const SelectiveScanOutputs& out, const SelectiveScanOptions& o,
         const Executor& ex) { reference::selective_scan(in, out, o, ex); },
      executor);
}

}  // namespace reference

/// 2x2 mean pooling of a [B,H,W,C] map into [B,ceil(H/2),ceil(W/2),C] (an edge window of an odd
/// extent averages the cells it has): a stand-in for MSVMamba's stride-2 depthwise convolution
/// when preparing coarse directions.
inline void downsample2x_mean(ConstView<float, 4> x, TensorView<float, 4> out) {
  const ArgCheck check("downsample2x_mean");
  check.shape("x", x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,W,C");
  const index_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  check.shape("out", out, std::array<index_t, 4>{B, detail::cross_coarse(H), detail::cross_coarse(W), C},
              "B,ceil(H/2),ceil(W/2),C");
  check.no_overlap("out", out, "x", x);
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < out.size(1); ++i)
      for (index_t j = 0; j < out.size(2); ++j) {
        const index_t h1 = std::min(H, 2 * i + 2), w1 = std::min(W, 2 * j + 2);
        const float inv = 1.f / static_cast<float>((h1 - 2 * i) * (w1 - 2 * j));
        for (index_t c = 0; c < C; ++c) {
          float s = 0.f;
          for (index_t h = 2 * i; h < h1; ++h)
            for (index_t w = 2 * j; w < w1; ++w) s += x(b, h, w, c);
          out(b, i, j, c) = s * inv;
        }
      }
}

}  // namespace seqmix
