// causal_conv1d, single-token decode step: y = act(bias + conv(conv_state, x)), then the
// conv state shifts by one row and takes x as its newest row.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"

namespace seqmix {
namespace detail {

// Below this many multiply-adds per call a step stays on the calling thread: waking a pool worker
// costs a few microseconds, more than the work it would take over.
constexpr index_t kConvStepMinParallelWork = 32 * 1024;

// Channels per block of the step: 64 = 4 AVX-512 vectors, a 256-byte accumulator on the stack.
constexpr index_t kConvStepBlock = 64;
// Up to this many taps the row pointers of a block live on the stack.
constexpr index_t kStepStackTaps = 8;

// acc[i] += sum_j weight[i][j] * rows[j][i] for i < lanes. weight is [D,W] with the taps
// contiguous, so a vector of channels would need a strided gather (xsimd's is scalar on AVX-512
// here) or a per-call transpose of the whole weight (as costly as the step). With the tap count
// fixed at compile time, the compiler vectorizes this plain loop well (measured 4 us vs 45 us
// with xsimd's gather at D = 3328, W = 4).
template <index_t kTaps>
inline void conv_step_taps_fixed(const float* __restrict weight, const float* const* rows, index_t lanes,
                                 float* __restrict acc) noexcept {
  const float* __restrict row[kTaps];
  for (index_t j = 0; j < kTaps; ++j) row[j] = rows[j];
  for (index_t i = 0; i < lanes; ++i) {
    float sum = acc[i];
    for (index_t j = 0; j < kTaps; ++j) sum += weight[i * kTaps + j] * row[j][i];
    acc[i] = sum;
  }
}

// Any W, any strides: the same sum, element by element.
inline void conv_step_taps_generic(const ConstView<float, 2>& weight, index_t c0, const float* const* rows,
                                   const index_t* row_strides, index_t lanes, float* acc) noexcept {
  const index_t W = weight.size(1);
  for (index_t i = 0; i < lanes; ++i) {
    float sum = acc[i];
    for (index_t j = 0; j < W; ++j) sum += weight(c0 + i, j) * rows[j][i * row_strides[j]];
    acc[i] = sum;
  }
}

// One block of channels [c0, c0 + lanes) of batch row b, whose state is row `row` of the
// conv_state pool; lanes <= kConvStepBlock. The window is the S = (W-1) * dilation state rows
// (oldest first) and x; tap j reads its row j * dilation.
inline void conv_step_block(const CausalConv1dStepInputs& in, const CausalConv1dStepOutputs& out,
                            ConvActivation activation, index_t dilation, index_t b, index_t row, index_t c0,
                            index_t lanes) {
  const index_t W = in.weight.size(1), S = out.conv_state.size(1);
  // Tap rows of this token: state rows 0, d, ..., (W-2) d, then x.
  const float* rows[kStepStackTaps];
  index_t row_strides[kStepStackTaps];
  std::vector<const float*> rows_heap;  // only for W > kStepStackTaps (rare): no allocation otherwise
  std::vector<index_t> strides_heap;
  const float** row_ptr = rows;
  index_t* stride_ptr = row_strides;
  if (W > kStepStackTaps) {
    rows_heap.resize(static_cast<std::size_t>(W)), strides_heap.resize(static_cast<std::size_t>(W));
    row_ptr = rows_heap.data(), stride_ptr = strides_heap.data();
  }
  for (index_t j = 0; j + 1 < W; ++j)
    row_ptr[j] = out.conv_state.ptr(row, j * dilation, c0), stride_ptr[j] = out.conv_state.stride(2);
  row_ptr[W - 1] = in.x.ptr(b, c0), stride_ptr[W - 1] = in.x.stride(1);

  alignas(64) float acc[kConvStepBlock];
  for (index_t i = 0; i < lanes; ++i) acc[i] = in.bias.has_value() ? in.bias(c0 + i) : 0.f;
  bool unit = in.weight.stride(1) == 1 && in.weight.stride(0) == W;
  for (index_t j = 0; j < W; ++j) unit = unit && stride_ptr[j] == 1;
  const float* weight = in.weight.ptr(c0);
  if (unit && W == 4)
    conv_step_taps_fixed<4>(weight, row_ptr, lanes, acc);
  else if (unit && W == 3)
    conv_step_taps_fixed<3>(weight, row_ptr, lanes, acc);
  else if (unit && W == 2)
    conv_step_taps_fixed<2>(weight, row_ptr, lanes, acc);
  else
    conv_step_taps_generic(in.weight, c0, row_ptr, stride_ptr, lanes, acc);

  // The state moves up one row and takes x as its newest row (ascending rows read row j + 1
  // before it is overwritten); then the output, last, so y may be the same view as x.
  const index_t y_stride = out.y.stride(1), state_stride = out.conv_state.stride(2), x_stride = in.x.stride(1);
  for (index_t i = 0; i < lanes; i += simd::kWidth) {
    const index_t n = std::min(simd::kWidth, lanes - i);
    for (index_t j = 0; j < S; ++j) {
      const FloatBatch next = j + 1 < S ? load_lanes(out.conv_state.ptr(row, j + 1, c0 + i), state_stride, n)
                                        : load_lanes(in.x.ptr(b, c0 + i), x_stride, n);
      store_lanes(out.conv_state.ptr(row, j, c0 + i), state_stride, n, next);
    }
    FloatBatch v = load_lanes(acc + i, 1, n);
    if (activation == ConvActivation::silu) v = silu(v);
    store_lanes(out.y.ptr(b, c0 + i), y_stride, n, v);
  }
}

// Zeroes channels [c0, c0 + lanes) of a state row (a slot handed to a new sequence).
inline void conv_step_zero_state(const TensorView<float, 3>& state, index_t row, index_t c0, index_t lanes) {
  for (index_t j = 0; j < state.size(1); ++j)
    for (index_t i = 0; i < lanes; ++i) state(row, j, c0 + i) = 0.f;
}

}  // namespace detail

/// Decode step for one token per batch row: reads conv_state, writes y [B,D] and the shifted
/// state. The state holds the last (W-1) * options.dilation inputs; with options.lookahead R the
/// step computes the same window, so y is the output for the token R * dilation positions before
/// x (docs/operators.md, causal_conv1d). Without batch.state_indices conv_state is
/// [B,(W-1)*dilation,D]; with it, conv_state is the caller's pool [S,(W-1)*dilation,D] (any strides: channel_major_conv_state views a [S,D,W-1] pool), row b
/// uses pool row state_indices[b] in place (-1: padding, y row and state untouched) and
/// has_initial_state[b] false zeroes that row first. y may be the same view as x; it must not
/// overlap conv_state. No heap allocation for W <= 8. Vectorized over channels, threaded over
/// channel groups and batch once the call is large enough to pay for waking a thread.
inline void causal_conv1d_step(const CausalConv1dStepInputs& in, const CausalConv1dStepOutputs& out,
                               const CausalConv1dOptions& options = {},
                               const Executor& executor = serial_executor()) {
  static const ArgCheck check("causal_conv1d_step");  // built once: validation allocates nothing
  const auto call = detail::validate_causal_conv1d_step(check, in, out, options);
  const index_t B = call.dims.B, D = call.dims.D, W = call.dims.W;
  const index_t blocks_per_row = (D + detail::kConvStepBlock - 1) / detail::kConvStepBlock;
  const index_t groups = B * blocks_per_row;
  const index_t tasks = B * D * W >= detail::kConvStepMinParallelWork ? executor.concurrency() : 1;
  auto body = [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t b = i / blocks_per_row, c0 = (i % blocks_per_row) * detail::kConvStepBlock;
      const SequenceSpan seq = call.map[b];
      if (seq.state_row < 0) continue;
      const index_t lanes = std::min(detail::kConvStepBlock, D - c0);
      if (!seq.read_state) detail::conv_step_zero_state(out.conv_state, seq.state_row, c0, lanes);
      detail::conv_step_block(in, out, options.activation, options.dilation, b, seq.state_row, c0, lanes);
    }
  };
  if (tasks <= 1) {
    body(0, groups);
    return;
  }
  // Even split, one block per thread: the work per group is uniform.
  executor.run(tasks, [&](index_t task) { body(groups * task / tasks, groups * (task + 1) / tasks); });
}

}  // namespace seqmix
