// long_conv, decode step: one token per batch row against the last L-1 inputs carried in the
// state (the same [B,L-1,D] state a causal prefill returns as final_state), so prefill, steps
// and segments give exactly the outputs of one call.
#pragma once

#include <algorithm>
#include <cstring>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {

/// Decode-step arguments: one token per batch row (causal only).
struct LongConvStepInputs {
  ConstView<float, 2> u;          ///< [B,D]
  ConstView<float, 2> filter;     ///< [L,G], as in the prefill
  ConstView<float, 1> skip = {};  ///< [D], optional
  ConstView<float, 1> bias = {};  ///< [D], optional
};

/// y must not overlap any input or the state.
struct LongConvStepOutputs {
  TensorView<float, 2> y;      ///< [B,D]
  TensorView<float, 3> state;  ///< [B,L-1,D]: the last L-1 inputs, oldest first; read, then shifted by one row
};

namespace detail {

// Channels per step task: 4 vectors, as in the direct prefill.
constexpr index_t kLongConvStepLanes = 4 * simd::kWidth;
// Below this many multiply-adds a step stays on the calling thread (waking a worker costs
// microseconds).
constexpr index_t kLongConvStepMinParallelWork = 64 * 1024;

inline void validate_long_conv_step(const ArgCheck& check, const LongConvStepInputs& in,
                                    const LongConvStepOutputs& out) {
  check.shape("u", in.u, {-1, -1}, "B,D");
  const index_t B = in.u.size(0), D = in.u.size(1);
  check.shape("filter", in.filter, {-1, -1}, "L,G");
  const index_t L = in.filter.size(0), G = in.filter.size(1);
  if (L < 1) check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(in.filter.shape()));
  if (G < 1 || D % G != 0)
    check.fail("filter", "must have G = D columns or G dividing D = " + std::to_string(D) + ", got shape " +
                             shape_to_string(in.filter.shape()));
  check.optional_shape("skip", in.skip, {D}, "D");
  check.optional_shape("bias", in.bias, {D}, "D");
  check.shape("state", out.state, {B, L - 1, D}, "B,L-1,D");
  check.shape("y", out.y, {B, D}, "B,D");
  check_finite_filter(check, "filter", in.filter);
  if (in.skip.has_value()) check_finite_vector(check, "skip", in.skip);
  if (in.bias.has_value()) check_finite_vector(check, "bias", in.bias);
  for (const char* name : {"y", "state"}) {
    const bool is_y = name[0] == 'y';
    const auto check_in = [&](const char* input, const auto& v) {
      if (is_y ? views_overlap(out.y, v) : views_overlap(out.state, v))
        check.fail(name, std::string("overlaps input '") + input + "'; pass a separate buffer");
    };
    check_in("u", in.u);
    check_in("filter", in.filter);
    check_in("skip", in.skip);
    check_in("bias", in.bias);
  }
  if (views_overlap(out.y, out.state)) check.fail("y", "overlaps 'state'; pass a separate buffer");
}

// acc += sum_{s>=1} h[s] x[L-1-s] over one full block of kLongConvStepLanes unit-stride channels
// (h: the filter's row 0 at these channels, x: the state's row 0), the four accumulators held in
// registers across the taps (the same fused multiply-adds in the same order as the general loop
// below, so the same results). Its loop states its unrolling: at -O2 g++ leaves it rolled.
inline void long_conv_step_full_block(const float* h, index_t h_row, const float* x, index_t x_row, index_t L,
                                      float* acc) noexcept {
  constexpr index_t W = simd::kWidth;
  simd::Batch<float> a[4];
#pragma GCC unroll 4
  for (index_t v = 0; v < 4; ++v) a[v] = simd::load(acc + v * W);
  for (index_t s = 1; s < L; ++s) {
    const float* hs = h + s * h_row;
    const float* xs = x + (L - 1 - s) * x_row;
#pragma GCC unroll 4
    for (index_t v = 0; v < 4; ++v) a[v] = simd::fma(simd::load(hs + v * W), simd::load(xs + v * W), a[v]);
  }
#pragma GCC unroll 4
  for (index_t v = 0; v < 4; ++v) simd::store(acc + v * W, a[v]);
}

// The same for any block: strided views, grouped filters, a ragged last block.
inline void long_conv_step_taps(const LongConvStepInputs& in, const LongConvStepOutputs& out, index_t b, index_t c0,
                                index_t c1, bool unit, float* acc) {
  const index_t L = in.filter.size(0), S = L - 1, group = in.u.size(1) / in.filter.size(1);
  const index_t width = c1 - c0;
  for (index_t s = 1; s < L; ++s) {
    const float* x = out.state.ptr(b, S - s, c0);
    if (unit) {
      const float* h = in.filter.ptr(s, c0);
      index_t c = 0;
      for (; c + simd::kWidth <= width; c += simd::kWidth)
        simd::store(acc + c, simd::fma(simd::load(h + c), simd::load(x + c), simd::load(acc + c)));
      for (; c < width; ++c) acc[c] += h[c] * x[c];
    } else {
      for (index_t c = 0; c < width; ++c) acc[c] += in.filter(s, (c0 + c) / group) * out.state(b, S - s, c0 + c);
    }
  }
}

// Channels [c0, c1) of batch row b: y = bias + skip u + h[0] u + sum_{s>=1} h[s] state[L-1-s],
// then the state moves up one row and takes u as its newest row.
inline void long_conv_step_block(const LongConvStepInputs& in, const LongConvStepOutputs& out, index_t b, index_t c0,
                                 index_t c1) {
  const index_t L = in.filter.size(0), S = L - 1, group = in.u.size(1) / in.filter.size(1);
  const index_t width = c1 - c0;
  alignas(64) float acc[kLongConvStepLanes];
  for (index_t c = 0; c < width; ++c) acc[c] = in.filter(0, (c0 + c) / group) * in.u(b, c0 + c);
  const bool unit = out.state.stride(2) == 1 && in.filter.stride(1) == 1 && group == 1;
  if (L > 1 && unit && width == kLongConvStepLanes) {  // L = 1 has no state rows to point at
    long_conv_step_full_block(in.filter.ptr(0, c0), in.filter.stride(0), out.state.ptr(b, 0, c0),
                              out.state.stride(1), L, acc);
  } else {
    long_conv_step_taps(in, out, b, c0, c1, unit, acc);
  }
  // Shift: ascending rows read row r + 1 before it is overwritten.
  for (index_t r = 0; r + 1 < S; ++r) {
    if (out.state.stride(2) == 1)
      std::memmove(out.state.ptr(b, r, c0), out.state.ptr(b, r + 1, c0), static_cast<std::size_t>(width) * sizeof(float));
    else
      for (index_t c = 0; c < width; ++c) out.state(b, r, c0 + c) = out.state(b, r + 1, c0 + c);
  }
  for (index_t c = 0; c < width; ++c) {
    const index_t d = c0 + c;
    const float u = in.u(b, d);
    if (S > 0) out.state(b, S - 1, d) = u;
    float value = acc[c];
    if (in.skip.has_value()) value += in.skip(d) * u;
    if (in.bias.has_value()) value += in.bias(d);
    out.y(b, d) = value;
  }
}

}  // namespace detail

/// Decode step: y [B,D] from one new input per batch row and the state [B,L-1,D] of the last
/// L-1 inputs (a causal prefill's final_state), then the state shifts by one row and takes the
/// input. Costs L multiply-adds and L-1 row moves per channel (a long filter makes every step
/// O(L D); a state-space model distilled from the filter is the O(state) alternative). No heap
/// allocation; threaded over channel blocks once the step is large enough.
inline void long_conv_step(const LongConvStepInputs& in, const LongConvStepOutputs& out,
                           const Executor& executor = serial_executor()) {
  static const ArgCheck check("long_conv_step");
  detail::validate_long_conv_step(check, in, out);
  const index_t B = in.u.size(0), D = in.u.size(1), L = in.filter.size(0);
  const index_t blocks = (D + detail::kLongConvStepLanes - 1) / detail::kLongConvStepLanes;
  const auto body = [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t b = i / blocks, c0 = (i % blocks) * detail::kLongConvStepLanes;
      detail::long_conv_step_block(in, out, b, c0, std::min(D, c0 + detail::kLongConvStepLanes));
    }
  };
  if (B * D * L < detail::kLongConvStepMinParallelWork) {
    body(0, B * blocks);
    return;
  }
  parallel_for(executor, B * blocks, 1, body);
}

}  // namespace seqmix
