// causal_conv1d, single-token decode step: y = act(bias + conv(conv_state, x)), then the
// conv state shifts by one row and takes x as its newest row.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
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

// --- fixed tap count: the weights de-interleaved in registers ---------------------------------
// weight is [D,W] with the taps contiguous: the kTaps vectors at weight + i * kTaps hold channels
// [i, i + kWidth) tap-interleaved, word c * kTaps + j = channel i + c, tap j. Tap j's vector
// (lane c = channel i + c) is word c * kTaps + j of those vectors laid end to end: constant
// shuffles of the loaded vectors, a few per kWidth channels, and no per-call transpose of the
// weight. Three forms of the same shuffle: two-source permutes on AVX-512, zips on 4-lane vectors,
// and one-source swizzles with blends (weight_tap) wherever neither applies (AVX2, W = 3 on SSE2).

// Swizzle of tap kTap: lane c takes lane (c * kTaps + kTap) % kWidth (the same for every vector).
template <std::size_t kTaps, std::size_t kTap>
struct TapSourceLane {
  static constexpr std::uint32_t get(std::size_t c, std::size_t width) {
    return static_cast<std::uint32_t>((c * kTaps + kTap) % width);
  }
};
// Blend of tap kTap: the lanes c whose word sits in vector kVector.
template <std::size_t kTaps, std::size_t kTap, std::size_t kVector>
struct TapFromVector {
  static constexpr bool get(std::size_t c, std::size_t width) { return (c * kTaps + kTap) / width == kVector; }
};

// Tap kTap of the kWidth channels whose kTaps tap-interleaved weight vectors are w[0 .. kTaps):
// word c * kTaps + kTap is lane (c * kTaps + kTap) % kWidth of vector (c * kTaps + kTap) / kWidth,
// so one swizzle of each vector (the same index for all) and a blend per vector after the first.
template <std::size_t kTaps, std::size_t kTap>
inline FloatBatch weight_tap(const FloatBatch (&w)[kTaps]) noexcept {
  constexpr auto lane = simd::batch_constant<simd::Batch<std::uint32_t>, TapSourceLane<kTaps, kTap>>();
  FloatBatch tap = xsimd::swizzle(w[0], lane);
  unrolled(std::make_index_sequence<kTaps - 1>{}, [&](auto v) {
    constexpr std::size_t r = decltype(v)::value + 1;
    constexpr auto from_r = simd::batch_bool_constant<FloatBatch, TapFromVector<kTaps, kTap, r>>();
    tap = xsimd::select(from_r, xsimd::swizzle(w[r], lane), tap);
  });
  return tap;
}

#if defined(__AVX512F__)
/// True where weight_taps_permute2 exists (AVX512F).
constexpr bool kTwoSourcePermute = true;

// Tap kTap of 16 channels from kTaps <= 4 tap-interleaved vectors, by two-source permutes
// (vpermt2ps), which xsimd 8.1 does not wrap: word k = c * kTaps + kTap of the vectors laid end to
// end is lane k % 32 of the pair w[0], w[1] (k < 32) or w[2], w[kTaps - 1] (k >= 32: w[2], w[3] at
// W = 4; at W = 3 k < 48, so k % 32 < 16 reads only the first source, w[2]), so one index serves
// both pairs and a blend picks per lane. 1 instruction per tap for W = 2, 3 for W = 3 and 4, where
// the one-source swizzles and blends above take 3, 5 and 7: with those, W = 4 at -O3 was 4 to 10%
// slower than GCC's auto-vectorized loop (D = 3328, loaded).
template <std::size_t kTaps, std::size_t kTap, std::size_t... c>
inline __m512 weight_tap_permute2(const FloatBatch (&w)[kTaps], std::index_sequence<c...>) noexcept {
  static_assert(kTaps >= 2 && kTaps <= 4, "two pairs of vectors hold at most 4 taps of 16 channels");
  alignas(64) static constexpr std::int32_t kIndex[16] = {static_cast<std::int32_t>((c * kTaps + kTap) % 32)...};
  const __m512i index = _mm512_load_si512(kIndex);
  const __m512 low = _mm512_permutex2var_ps(w[0], index, w[1]);
  if constexpr (kTaps == 2) {
    return low;
  } else {
    constexpr __mmask16 high_words = static_cast<__mmask16>((((c * kTaps + kTap >= 32 ? 1u : 0u) << c) | ...));
    const __m512 high = _mm512_permutex2var_ps(w[2], index, w[kTaps - 1]);
    return _mm512_mask_blend_ps(high_words, low, high);
  }
}

template <std::size_t kTaps>
inline void weight_taps_permute2(const FloatBatch (&w)[kTaps], FloatBatch (&taps)[kTaps]) noexcept {
  unrolled(std::make_index_sequence<kTaps>{}, [&](auto j) {
    taps[j] = weight_tap_permute2<kTaps, decltype(j)::value>(w, std::make_index_sequence<16>{});
  });
}
#else
constexpr bool kTwoSourcePermute = false;
#endif

// With 4-lane vectors (SSE2, NEON) and kTaps 2 or 4 the same de-interleave is a 4 x 4 word
// transpose: two rounds of zips (v[i] with v[i + kTaps / 2]), 4 or 8 instructions where the swizzles
// and blends (and, andnot, or on SSE2) would take 10 or 52 (with those, W = 4 on SSE2 at -O3 took
// 15.9 us per step against the auto-vectorized loop's 13.1, D = 3328).
// Only there: xsimd's zips of wider vectors interleave within 128-bit lanes, whose order differs.
template <std::size_t kTaps>
inline void weight_taps(const FloatBatch (&w)[kTaps], FloatBatch (&taps)[kTaps]) noexcept {
  if constexpr (kTwoSourcePermute && simd::kWidth == 16) {
    weight_taps_permute2(w, taps);
  } else if constexpr (simd::kWidth == 4 && (kTaps == 2 || kTaps == 4)) {
    constexpr std::size_t half = kTaps / 2;
    FloatBatch z[kTaps];
    unrolled(std::make_index_sequence<half>{}, [&](auto i) {
      z[2 * i] = xsimd::zip_lo(w[i], w[i + half]), z[2 * i + 1] = xsimd::zip_hi(w[i], w[i + half]);
    });
    unrolled(std::make_index_sequence<half>{}, [&](auto i) {
      taps[2 * i] = xsimd::zip_lo(z[i], z[i + half]), taps[2 * i + 1] = xsimd::zip_hi(z[i], z[i + half]);
    });
  } else {
    unrolled(std::make_index_sequence<kTaps>{}, [&](auto j) { taps[j] = weight_tap<kTaps, j>(w); });
  }
}

// acc[i] += sum_j weight[i][j] * rows[j][i] for i < lanes, rows unit-stride. Written with the
// batches rather than left to the auto-vectorizer: GCC 12 vectorized the plain loop at -O3 only,
// so the step (D = 3328, W = 4) took 9.4 us at -O2 against 5.0 at -O3; now 4.6 at -O2 and 4.9 at
// -O3 (bench_ssm_scan CPU column, old and new alternated in one session, loaded). A strided gather instead is scalar in xsimd 8.1 on
// AVX-512 (45 us). The taps are unrolled by folds, so w[] and taps[] stay in registers at -O2 too
// (W = 4: 8 vpermt2ps and 4 FMAs per 16 channels, no stack traffic).
template <std::size_t kTaps>
inline void conv_step_taps_fixed(const float* __restrict weight, const float* const* rows, index_t lanes,
                                 float* __restrict acc) noexcept {
  using Taps = std::make_index_sequence<kTaps>;
  const index_t nv = simd::vector_end(lanes);
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    FloatBatch w[kTaps], taps[kTaps];
    unrolled(Taps{}, [&](auto r) { w[r] = simd::load(weight + i * index_t(kTaps) + index_t(r) * simd::kWidth); });
    weight_taps(w, taps);
    FloatBatch sum = simd::load(acc + i);
    unrolled(Taps{}, [&](auto j) { sum = simd::fma(taps[j], simd::load(rows[j] + i), sum); });
    simd::store(acc + i, sum);
  }
  for (index_t i = nv; i < lanes; ++i) {
    float sum = acc[i];
    for (std::size_t j = 0; j < kTaps; ++j) sum += weight[i * index_t(kTaps) + index_t(j)] * rows[j][i];
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
