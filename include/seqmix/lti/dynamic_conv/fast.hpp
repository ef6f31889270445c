// lightweight_conv and dynamic_conv, fast forms: per (b, t) row the float softmax of each head's
// K logits, then K multiply-adds of a scalar tap against a run of contiguous channels (the loop
// over channels vectorizes), the window clipped to [0,T) so no padding is read. Rows (b, t) are
// split over the executor's threads in blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/dynamic_conv/reference.hpp"

namespace seqmix {
namespace detail {

// Rows (b, t) per parallel task.
constexpr index_t kLocalConvRowGrain = 16;

// softmax of K logits in float, max subtracted; p has K entries.
template <class Get>
inline void local_conv_softmax_float(index_t K, Get logit, float* p) {
  float m = logit(0);
  for (index_t k = 1; k < K; ++k) m = std::max(m, logit(k));
  float sum = 0.f;
  for (index_t k = 0; k < K; ++k) sum += p[k] = std::exp(logit(k) - m);
  const float inv = 1.f / sum;
  for (index_t k = 0; k < K; ++k) p[k] *= inv;
}

// out[c] = sum_k w[k] * in[k * row_stride + c] over `group` contiguous channels, taps in
// ascending k. Each vector of channels keeps its sum in a register over the taps: the channel
// loop as plain C++ (out[c] += w * in[c] per tap) is vectorized by g++ -O3 only behind a runtime
// alias check, which -O2's cost model does not emit, so -O2 ran it scalar (2.7-4.4x slower).
// Four vectors at once: four independent FMA chains (one chain left the FMA latency exposed in
// the decode step: 1.15-1.35x slower than the per-tap loop at -O3). Same multiply-adds in the
// same order as that loop (contracted to FMAs there as here). The prefill and the decode step
// (local_conv_step_head) both sum through it.
inline void local_conv_contiguous_row(const float* in, index_t row_stride, float* out, index_t group, const float* w,
                                      index_t taps) noexcept {
  constexpr index_t W = simd::kWidth;
  const index_t nv = simd::vector_end(group);
  index_t c = 0;
  for (; c + 4 * W <= nv; c += 4 * W) {
    simd::Batch<float> acc[4] = {simd::Batch<float>(0.f), simd::Batch<float>(0.f), simd::Batch<float>(0.f),
                                 simd::Batch<float>(0.f)};
    for (index_t k = 0; k < taps; ++k) {
      const simd::Batch<float> wk(w[k]);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = simd::fma(wk, simd::load(in + k * row_stride + c + j * W), acc[j]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) simd::store(out + c + j * W, acc[j]);
  }
  for (; c < nv; c += W) {
    simd::Batch<float> acc(0.f);
    for (index_t k = 0; k < taps; ++k) acc = simd::fma(simd::Batch<float>(w[k]), simd::load(in + k * row_stride + c), acc);
    simd::store(out + c, acc);
  }
  for (index_t c = nv; c < group; ++c) out[c] = 0.f;
  for (index_t k = 0; k < taps; ++k)
    for (index_t c = nv; c < group; ++c) out[c] += w[k] * in[k * row_stride + c];
}

// y[b,t,c] for the channels of head h, taps p[0..K) at positions t-lead+k, clipped to [0,T).
inline void local_conv_fast_row(const ConstView<float, 3>& x, const TensorView<float, 3>& y, index_t b, index_t t,
                                index_t h, index_t group, index_t lead, index_t K, const float* p) {
  const index_t T = x.size(1), c0 = h * group;
  const index_t k0 = std::max<index_t>(0, lead - t), k1 = std::min<index_t>(K, T - t + lead);
  if (y.stride(2) == 1 && x.stride(2) == 1) {
    local_conv_contiguous_row(x.ptr(b, t - lead + k0, c0), x.stride(1), y.ptr(b, t, c0), group, p + k0, k1 - k0);
    return;
  }
  for (index_t c = c0; c < c0 + group; ++c) {
    float acc = 0.f;
    for (index_t k = k0; k < k1; ++k) acc += p[k] * x(b, t - lead + k, c);
    y(b, t, c) = acc;
  }
}

// Row r of a task's range [begin, end) in the order that walks x in ascending addresses: the
// outputs are independent, so a reverse call (negative time stride) takes its rows last first
// and streams memory forward as the forward call does (measured: 6 to 10% slower otherwise).
inline index_t local_conv_row(const ConstView<float, 3>& x, index_t begin, index_t end, index_t i) {
  return x.stride(1) < 0 ? begin + end - 1 - i : i;
}

}  // namespace detail

/// Fast form of lightweight_conv: same arguments and results as reference::lightweight_conv
/// (reference.hpp) up to float rounding. The H softmaxes are taken once per call; rows (b, t)
/// are split over `executor`. Validates first; NaN or infinity in x reaches only the outputs
/// whose window holds it.
inline void lightweight_conv(const LightweightConvInputs& in, const LocalConvOutputs& out,
                             const LocalConvOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::lightweight_conv_reversed_call(in, out);
    return lightweight_conv(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto d = detail::validate_lightweight_conv("lightweight_conv", in, out, options);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const index_t lead = detail::local_conv_lead(d.K, options.padding), group = d.D / d.H;
  std::vector<float> p(static_cast<std::size_t>(d.H * d.K));
  for (index_t h = 0; h < d.H; ++h)
    detail::local_conv_softmax_float(d.K, [&](index_t k) { return in.weight(h, k); }, p.data() + h * d.K);
  parallel_for(executor, d.B * d.T, detail::kLocalConvRowGrain, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t r = detail::local_conv_row(in.x, begin, end, i);
      for (index_t h = 0; h < d.H; ++h)
        detail::local_conv_fast_row(in.x, out.y, r / d.T, r % d.T, h, group, lead, d.K, p.data() + h * d.K);
    }
  });
}

/// Fast form of dynamic_conv: same arguments and results as reference::dynamic_conv
/// (reference.hpp) up to float rounding. Each task takes the softmax of its rows' logits into a
/// K-float buffer; rows (b, t) are split over `executor`. Validates first; NaN or infinity in x
/// reaches only the outputs whose window holds it.
inline void dynamic_conv(const DynamicConvInputs& in, const LocalConvOutputs& out, const LocalConvOptions& options = {},
                         const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::dynamic_conv_reversed_call(in, out);
    return dynamic_conv(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto d = detail::validate_dynamic_conv("dynamic_conv", in, out, options);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const index_t lead = detail::local_conv_lead(d.K, options.padding), group = d.D / d.H;
  parallel_for(executor, d.B * d.T, detail::kLocalConvRowGrain, [&](index_t begin, index_t end) {
    std::vector<float> p(static_cast<std::size_t>(d.K));
    for (index_t i = begin; i < end; ++i) {
      const index_t r = detail::local_conv_row(in.x, begin, end, i), b = r / d.T, t = r % d.T;
      for (index_t h = 0; h < d.H; ++h) {
        detail::local_conv_softmax_float(d.K, [&](index_t k) { return in.logits(b, t, h, k); }, p.data());
        detail::local_conv_fast_row(in.x, out.y, b, t, h, group, lead, d.K, p.data());
      }
    }
  });
}

}  // namespace seqmix
