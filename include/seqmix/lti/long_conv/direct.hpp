// long_conv, direct (time-domain) form: vectorized over channels, threaded over (batch, channel
// tile, time tile). O(T L D) multiply-adds: the fast choice for short filters (fast.hpp's cost
// model picks it below the measured crossover).
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {
namespace detail {

using LongConvBatch = simd::Batch<float>;

// Channels per tile: 4 vectors. The kernel keeps 4 time steps x 4 vectors = 16 accumulators in
// registers, so each filter row loaded serves 4 outputs (5 loads per 4 FMAs instead of 8).
constexpr index_t kLongConvLanes = 4 * simd::kWidth;
// Steps per time tile: the copied input window is L - 1 + 64 rows; 64 keeps the copy at about
// 1/64 of the work and leaves enough tiles to balance two threads at D = 768.
constexpr index_t kLongConvTimeTile = 64;
// Outputs computed together (the register block above).
constexpr index_t kLongConvStepBlock = 4;

struct LongConvTile {
  index_t b, c0, c1, t0, t1;
};

// Per-task scratch: the tile's filters expanded to [tap][kLongConvLanes] (shared-head columns
// repeated, ragged channels zero) and its input window, both contiguous and zero-padded so the
// kernel has one code path for every view, stride and head grouping.
struct LongConvDirectScratch {
  AlignedVector<float> h, hb, x;
  AlignedVector<float> skip, bias;  // the tile's skip and bias, kLongConvLanes each (ragged zero)
  index_t c0 = -1;  // channel tile whose filters, skip and bias the vectors hold
};

inline void long_conv_expand_filter(const ConstView<float, 2>& filter, index_t group, index_t c0, index_t c1,
                                    AlignedVector<float>& out) {
  const index_t L = filter.size(0);
  out.assign(static_cast<std::size_t>(L * kLongConvLanes), 0.f);
  for (index_t s = 0; s < L; ++s)
    for (index_t c = c0; c < c1; ++c) out[static_cast<std::size_t>(s * kLongConvLanes + c - c0)] = filter(s, c / group);
}

// view[c0:c1] into out[0:kLongConvLanes], ragged lanes zero (empty view: nothing).
inline void long_conv_expand_channels(const ConstView<float, 1>& view, index_t c0, index_t c1, AlignedVector<float>& out) {
  if (!view.has_value()) return;
  out.assign(static_cast<std::size_t>(kLongConvLanes), 0.f);
  for (index_t c = c0; c < c1; ++c) out[static_cast<std::size_t>(c - c0)] = view(c);
}

// Copies xs rows [r0, r1) of the tile's channels into x (row r at (r - r0) * lanes); rows outside
// [-state rows, T) are zero.
inline void long_conv_copy_window(const LongConvInputs& in, const LongConvTile& tile, index_t r0, index_t r1,
                                  AlignedVector<float>& x) {
  const index_t T = in.u.size(1), S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0;
  const index_t width = tile.c1 - tile.c0;
  x.assign(static_cast<std::size_t>((r1 - r0) * kLongConvLanes), 0.f);
  for (index_t r = std::max(r0, -S); r < std::min(r1, T); ++r) {
    float* dst = x.data() + (r - r0) * kLongConvLanes;
    if (r >= 0) {
      const float* src = in.u.ptr(tile.b, r, tile.c0);
      const index_t stride = in.u.stride(2);
      if (stride == 1)  // g++ -O2 copies the strided loop element by element even at stride 1
        std::copy(src, src + width, dst);
      else
        for (index_t c = 0; c < width; ++c) dst[c] = src[c * stride];
    } else {
      const float* src = in.initial_state.ptr(tile.b, in.filter.size(0) - 1 + r, tile.c0);
      const index_t stride = in.initial_state.stride(2);
      for (index_t c = 0; c < width; ++c) dst[c] = src[c * stride];
    }
  }
}

// acc[i][v] += sum_{s < taps} h[s] * x[row_i - s] for kLongConvStepBlock consecutive outputs
// (sign = -1, causal) or x[row_i + s] (sign = +1, backward). Rows are kLongConvLanes apart. The
// block is accumulated in a local copy: vector types may alias the float rows, so g++ -O2 stored
// every accumulator through the caller's `acc` after every tap, and left the loops rolled (the
// direct form took 2.5-5x its -O3 time); the loops state their unrolling.
template <int kSign>
inline void long_conv_taps(const float* h, const float* x_first, index_t taps,
                           LongConvBatch (&acc)[kLongConvStepBlock][4]) noexcept {
  constexpr index_t W = simd::kWidth, R = kLongConvLanes;
  LongConvBatch a[kLongConvStepBlock][4];
#pragma GCC unroll 4
  for (index_t i = 0; i < kLongConvStepBlock; ++i)
#pragma GCC unroll 4
    for (index_t v = 0; v < 4; ++v) a[i][v] = acc[i][v];
  for (index_t s = 0; s < taps; ++s) {
    const float* hs = h + s * R;
    const float* xs = x_first + kSign * s * R;
#pragma GCC unroll 4
    for (index_t v = 0; v < 4; ++v) {
      const LongConvBatch hv = simd::in_register(simd::load(hs + v * W));
#pragma GCC unroll 4
      for (index_t i = 0; i < kLongConvStepBlock; ++i) a[i][v] = simd::fma(hv, simd::load(xs + i * R + v * W), a[i][v]);
    }
  }
#pragma GCC unroll 4
  for (index_t i = 0; i < kLongConvStepBlock; ++i)
#pragma GCC unroll 4
    for (index_t v = 0; v < 4; ++v) acc[i][v] = a[i][v];
}

// y[b, t, c0:c1] = acc + skip * u + bias, with u[t] the window's row x_row. In vectors, each
// stored whole where y's channels are contiguous: the per-channel loop through the views it
// replaces (a skip and a bias test, three strided index computations per element) was not
// vectorized by g++ -O2 and kept the direct form at 1.8-3.2x its -O3 time. The same operations
// in the same order (a product, then one add for each term) as that loop: results unchanged.
inline void long_conv_store_step(const LongConvInputs& in, const TensorView<float, 3>& y, const LongConvTile& tile,
                                 index_t t, const float* x_row, const LongConvDirectScratch& scratch,
                                 const LongConvBatch (&acc)[4]) {
  constexpr index_t W = simd::kWidth;
  const bool skip = in.skip.has_value(), bias = in.bias.has_value();
  const index_t width = tile.c1 - tile.c0;
  const bool whole = width == kLongConvLanes && y.stride(2) == 1;
  float* dst = y.ptr(tile.b, t, tile.c0);
  alignas(64) float out[kLongConvLanes];
#pragma GCC unroll 4
  for (index_t v = 0; v < 4; ++v) {
    LongConvBatch value = acc[v];
    if (skip) value = value + simd::load(scratch.skip.data() + v * W) * simd::load(x_row + v * W);
    if (bias) value = value + simd::load(scratch.bias.data() + v * W);
    if (whole)
      simd::store(dst + v * W, value);
    else
      value.store_aligned(out + v * W);
  }
  if (!whole)
    for (index_t c = 0; c < width; ++c) dst[c * y.stride(2)] = out[c];
}

// y[b, t0:t1, c0:c1] from the expanded filters and the copied window.
inline void long_conv_direct_tile(const LongConvInputs& in, const TensorView<float, 3>& y, const LongConvTile& tile,
                                  LongConvDirectScratch& scratch) {
  const index_t T = in.u.size(1), L = in.filter.size(0);
  const index_t Lb = in.filter_backward.has_value() ? in.filter_backward.size(0) : 0;
  const index_t S = in.initial_state.has_value() ? L - 1 : 0;
  const index_t r0 = tile.t0 - (L - 1);
  // Whole blocks of 4 outputs: the window reaches past t1 by the block's padding and Lb - 1.
  const index_t t_end = tile.t0 + (tile.t1 - tile.t0 + kLongConvStepBlock - 1) / kLongConvStepBlock * kLongConvStepBlock;
  const index_t r1 = t_end + std::max<index_t>(Lb - 1, 0);
  long_conv_copy_window(in, tile, r0, r1, scratch.x);
  for (index_t t = tile.t0; t < tile.t1; t += kLongConvStepBlock) {
    LongConvBatch acc[kLongConvStepBlock][4];
#pragma GCC unroll 4
    for (index_t i = 0; i < kLongConvStepBlock; ++i)
#pragma GCC unroll 4
      for (index_t v = 0; v < 4; ++v) acc[i][v] = LongConvBatch(0.f);
    // Taps reaching xs rows below -S read zeros from the window: one tap count for the block.
    const index_t causal_taps = std::min(L, t + kLongConvStepBlock + S);
    long_conv_taps<-1>(scratch.h.data(), scratch.x.data() + (t - r0) * kLongConvLanes, causal_taps, acc);
    if (Lb > 0) {
      const index_t backward_taps = std::min(Lb, T - t);
      long_conv_taps<+1>(scratch.hb.data(), scratch.x.data() + (t - r0) * kLongConvLanes, backward_taps, acc);
    }
    for (index_t i = 0; i < kLongConvStepBlock && t + i < tile.t1; ++i)
      long_conv_store_step(in, y, tile, t + i, scratch.x.data() + (t + i - r0) * kLongConvLanes, scratch, acc[i]);
  }
}

// Direct form over a validated call (also used by the FFT form for channels whose input is not
// finite, where the FFT would spread a NaN to every output).
inline void long_conv_direct_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor) {
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2);
  const index_t group = D / in.filter.size(1);
  std::vector<LongConvTile> tiles;
  for (index_t b = 0; b < B; ++b)
    for (index_t c0 = 0; c0 < D; c0 += kLongConvLanes)
      for (index_t t0 = 0; t0 < T; t0 += kLongConvTimeTile)  // time fastest: a task's tiles share filters
        tiles.push_back({b, c0, std::min(D, c0 + kLongConvLanes), t0, std::min(T, t0 + kLongConvTimeTile)});
  parallel_for(executor, static_cast<index_t>(tiles.size()), 1, [&](index_t begin, index_t end) {
    LongConvDirectScratch scratch;
    for (index_t i = begin; i < end; ++i) {
      const LongConvTile& tile = tiles[static_cast<std::size_t>(i)];
      if (tile.c0 != scratch.c0) {
        long_conv_expand_filter(in.filter, group, tile.c0, tile.c1, scratch.h);
        if (in.filter_backward.has_value())
          long_conv_expand_filter(in.filter_backward, group, tile.c0, tile.c1, scratch.hb);
        long_conv_expand_channels(in.skip, tile.c0, tile.c1, scratch.skip);
        long_conv_expand_channels(in.bias, tile.c0, tile.c1, scratch.bias);
        scratch.c0 = tile.c0;
      }
      long_conv_direct_tile(in, y, tile, scratch);
    }
  });
}

}  // namespace detail

/// Direct (time-domain) prefill: same arguments and results as reference::long_conv. Costs
/// about T * min(L, T) * D multiply-adds; scratch per task: the tile's filters (L x 64 floats
/// with AVX-512) and an input window of L + 64 rows.
inline void long_conv_direct(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                             const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv_direct(rev.first, rev.second, detail::forward_options(options), executor);
  }
  detail::validate_long_conv("long_conv_direct", in, out, options, true, executor);
  detail::long_conv_direct_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace seqmix
