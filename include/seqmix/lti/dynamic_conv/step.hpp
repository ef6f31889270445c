// lightweight_conv and dynamic_conv, causal decode steps: one token per batch row against the
// last K-1 inputs carried in a [B,K-1,D] state (oldest first; zeros at the start of a sequence,
// which is the causal zero padding), so steps from a zero state give the outputs of the causal
// prefill exactly up to float rounding.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/dynamic_conv/fast.hpp"

namespace seqmix {

/// lightweight_conv decode-step inputs (causal only).
struct LightweightConvStepInputs {
  ConstView<float, 2> x;       ///< [B,D]: this step's token
  ConstView<float, 2> weight;  ///< [H,K], as in the prefill
};

/// dynamic_conv decode-step inputs (causal only).
struct DynamicConvStepInputs {
  ConstView<float, 2> x;       ///< [B,D]: this step's token
  ConstView<float, 3> logits;  ///< [B,H,K]: this step's kernel logits
};

/// Decode-step outputs of both operators; y must not overlap any input or the state.
struct LocalConvStepOutputs {
  TensorView<float, 2> y;      ///< [B,D]
  TensorView<float, 3> state;  ///< [B,K-1,D]: the last K-1 inputs, oldest first; read, then shifted by one row
};

namespace detail {

inline void validate_local_conv_step(const ArgCheck& check, const ConstView<float, 2>& x, index_t H, index_t K,
                                     const LocalConvStepOutputs& out) {
  check.shape("x", x, {-1, -1}, "B,D");
  const index_t B = x.size(0), D = x.size(1);
  if (K < 1) check.fail("kernel", "must have at least one tap (K >= 1), got K = " + std::to_string(K));
  if (H < 1 || D % H != 0)
    check.fail("kernel", "needs H >= 1 heads dividing D = " + std::to_string(D) + ", got H = " + std::to_string(H));
  check.shape("state", out.state, {B, K - 1, D}, "B,K-1,D");
  check.shape("y", out.y, {B, D}, "B,D");
  check.no_overlap("y", out.y, "x", x);
  check.no_overlap("y", out.y, "state", out.state);
  check.no_overlap("state", out.state, "x", x);
}

// Batch row b, head h: y = sum_{k<K-1} p[k] state[k] + p[K-1] x, then state shifts up and takes x.
inline void local_conv_step_head(const ConstView<float, 2>& x, const LocalConvStepOutputs& out, index_t b, index_t h,
                                 index_t group, index_t K, const float* p) {
  const index_t c0 = h * group;
  // Taps outer, channels inner: each state row is read and shifted in memory order (the state is
  // [B,K-1,D], channels contiguous), and the sums keep the order of the definition: taps k < K-1,
  // then this token's.
  if (x.stride(1) == 1 && out.y.stride(1) == 1 && out.state.stride(2) == 1) {
    float* y = out.y.ptr(b, c0);
    const float* xt = x.ptr(b, c0);
    // The state's taps through the prefill's row sum (local_conv_contiguous_row: sums in
    // registers, also at -O2), then this token's tap: the same multiply-adds in the same order.
    const float* s0 = K > 1 ? out.state.ptr(b, 0, c0) : nullptr;  // state row k at s0 + k * stride(1)
    local_conv_contiguous_row(s0, out.state.stride(1), y, group, p, K - 1);
    const index_t nv = simd::vector_end(group);
    const simd::Batch<float> w_last(p[K - 1]);
    for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(y + c, simd::fma(w_last, simd::load(xt + c), simd::load(y + c)));
    for (index_t c = nv; c < group; ++c) y[c] += p[K - 1] * xt[c];
    for (index_t k = 0; k + 2 < K; ++k)
      std::memmove(out.state.ptr(b, k, c0), out.state.ptr(b, k + 1, c0), static_cast<std::size_t>(group) * sizeof(float));
    if (K > 1) std::memcpy(out.state.ptr(b, K - 2, c0), xt, static_cast<std::size_t>(group) * sizeof(float));
    return;
  }
  for (index_t c = c0; c < c0 + group; ++c) {
    float acc = 0.f;
    for (index_t k = 0; k + 1 < K; ++k) acc += p[k] * out.state(b, k, c);
    acc += p[K - 1] * x(b, c);
    out.y(b, c) = acc;
    for (index_t k = 0; k + 2 < K; ++k) out.state(b, k, c) = out.state(b, k + 1, c);
    if (K > 1) out.state(b, K - 2, c) = x(b, c);
  }
}

}  // namespace detail

/// One causal decode step of lightweight_conv: y[b,:] from this token and the state, which then
/// holds the last K-1 inputs including this one. Batch rows split over `executor`. Validates
/// first (shapes, K >= 1, H dividing D, finite weight, no overlap) before writing y or state.
inline void lightweight_conv_step(const LightweightConvStepInputs& in, const LocalConvStepOutputs& out,
                                  const Executor& executor = serial_executor()) {
  const ArgCheck check("lightweight_conv_step");
  check.shape("weight", in.weight, {-1, -1}, "H,K");
  const index_t H = in.weight.size(0), K = in.weight.size(1);
  detail::validate_local_conv_step(check, in.x, H, K, out);
  for (index_t h = 0; h < H; ++h)
    for (index_t k = 0; k < K; ++k)
      if (!std::isfinite(in.weight(h, k))) check.fail("weight", "holds a non-finite value (NaN or infinity)");
  check.no_overlap("y", out.y, "weight", in.weight);
  check.no_overlap("state", out.state, "weight", in.weight);
  const index_t B = in.x.size(0), D = in.x.size(1);
  if (B == 0 || D == 0) return;
  std::vector<float> p(static_cast<std::size_t>(H * K));
  for (index_t h = 0; h < H; ++h)
    detail::local_conv_softmax_float(K, [&](index_t k) { return in.weight(h, k); }, p.data() + h * K);
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    for (index_t b = begin; b < end; ++b)
      for (index_t h = 0; h < H; ++h) detail::local_conv_step_head(in.x, out, b, h, D / H, K, p.data() + h * K);
  });
}

/// One causal decode step of dynamic_conv, with this token's logits [B,H,K]; otherwise as
/// lightweight_conv_step. Validates first (shapes, K >= 1, H dividing D, finite logits, no
/// overlap) before writing y or state.
inline void dynamic_conv_step(const DynamicConvStepInputs& in, const LocalConvStepOutputs& out,
                              const Executor& executor = serial_executor()) {
  const ArgCheck check("dynamic_conv_step");
  check.shape("x", in.x, {-1, -1}, "B,D");
  const index_t B = in.x.size(0), D = in.x.size(1);
  check.shape("logits", in.logits, {B, -1, -1}, "B,H,K");
  const index_t H = in.logits.size(1), K = in.logits.size(2);
  detail::validate_local_conv_step(check, in.x, H, K, out);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t k = 0; k < K; ++k)
        if (!std::isfinite(in.logits(b, h, k))) check.fail("logits", "holds a non-finite value (NaN or infinity)");
  check.no_overlap("y", out.y, "logits", in.logits);
  check.no_overlap("state", out.state, "logits", in.logits);
  if (B == 0 || D == 0) return;
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    std::vector<float> p(static_cast<std::size_t>(K));
    for (index_t b = begin; b < end; ++b)
      for (index_t h = 0; h < H; ++h) {
        detail::local_conv_softmax_float(K, [&](index_t k) { return in.logits(b, h, k); }, p.data());
        detail::local_conv_step_head(in.x, out, b, h, D / H, K, p.data());
      }
  });
}

}  // namespace seqmix
