// masked_mixer, fast form: per (batch row, group, block of kMaskedMixerBlock output rows) one
// Eigen GEMM of the rectangular part of W below the block's diagonal (blocks above it are never
// touched: the mask costs nothing) plus a triangular product for the diagonal block, on the
// group's [T, D/G] column slab of x. Tasks (b, g, row block) are split over the executor; work
// per task grows with the row block index, so the split uses a grain of one task.
#pragma once

#include <algorithm>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/masked_mixer/reference.hpp"

namespace seqmix {
namespace detail {

// Output rows per task and diagonal block.
constexpr index_t kMaskedMixerBlock = 64;

// Rows [r0, r1) of y from the maps x [T, cols], w [L, L] (lower triangle read) and y [T, cols].
template <class XMap, class WMap, class YMap>
void masked_mixer_block(const XMap& x, const WMap& w, YMap&& y, index_t r0, index_t r1) {
  const index_t n = r1 - r0;
  y.middleRows(r0, n).noalias() = w.block(r0, r0, n, n).template triangularView<Eigen::Lower>() * x.middleRows(r0, n);
  if (r0 > 0) y.middleRows(r0, n).noalias() += w.block(r0, 0, n, r0) * x.topRows(r0);
}

// Rows [r0, r1) of y for batch b and the columns [c0, c0 + cols) of group g. Unit-stride rows
// (the usual layouts, reversed ones included) are mapped with a compile-time inner stride, so
// Eigen reads them in place instead of copying each operand element by element (scalar at -O2:
// 1.5-2x slower than -O3 before).
template <class Deferred>
void masked_mixer_rows(const MaskedMixerInputs& in, const MaskedMixerOutputs& out, index_t b, index_t g,
                              index_t c0, index_t cols, index_t r0, index_t r1) {
  const ConstView<float, 2> x = in.x.select(0, b).slice(1, c0, cols), w = in.weight.select(0, g);
  const TensorView<float, 2> y = out.y.select(0, b).slice(1, c0, cols);
  if (x.stride(1) == 1 && w.stride(1) == 1 && y.stride(1) == 1)
    masked_mixer_block(as_deferred_row_stride_matrix<Deferred>(x), as_deferred_row_stride_matrix<Deferred>(w),
                       as_deferred_row_stride_matrix<Deferred>(y), r0, r1);
  else
    masked_mixer_block(as_deferred_matrix<Deferred>(x), as_deferred_matrix<Deferred>(w),
                       as_deferred_matrix<Deferred>(y), r0, r1);
}

}  // namespace detail

/// Fast form of masked_mixer: same arguments and results as reference::masked_mixer
/// (reference.hpp) up to float rounding. O(B T^2 D / 2) multiply-adds in GEMMs, no allocation
/// beyond Eigen's packing buffers. Validates first. options.reverse: anti-causal, the same GEMMs
/// on reversed views of x and y (negated row strides, no copy).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void masked_mixer(const MaskedMixerInputs& in, const MaskedMixerOutputs& out, const MaskedMixerOptions& options,
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::masked_mixer_reversed_call(in, out);
    return masked_mixer<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto d = detail::validate_masked_mixer("masked_mixer", in, out);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const index_t group = d.D / d.G, blocks = (d.T + detail::kMaskedMixerBlock - 1) / detail::kMaskedMixerBlock;
  parallel_for(executor, d.B * d.G * blocks, 1, [&](index_t begin, index_t end) {
    for (index_t task = begin; task < end; ++task) {
      const index_t blk = task % blocks, g = (task / blocks) % d.G, b = task / (blocks * d.G);
      const index_t r0 = blk * detail::kMaskedMixerBlock, r1 = std::min(d.T, r0 + detail::kMaskedMixerBlock);
      detail::masked_mixer_rows<Deferred>(in, out, b, g, g * group, group, r0, r1);
    }
  });
}

/// masked_mixer with default options (forward), as before options existed.
template <class Deferred = void>
void masked_mixer(const MaskedMixerInputs& in, const MaskedMixerOutputs& out,
                  const Executor& executor = serial_executor()) {
  masked_mixer<Deferred>(in, out, MaskedMixerOptions{}, executor);
}

}  // namespace seqmix
