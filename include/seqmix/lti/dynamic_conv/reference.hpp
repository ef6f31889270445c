// lightweight_conv and dynamic_conv (Wu et al. 2019, "Pay Less Attention with Lightweight and
// Dynamic Convolutions", issue 16 item 6): a depthwise convolution of width K whose taps are a
// softmax over K, shared by the D/H channels of each of H heads (channel c is in head c / (D/H)).
//
//   lightweight_conv: p[h,:]     = softmax(weight[h,:])          weight [H,K], one kernel per head
//   dynamic_conv:     p[b,t,h,:] = softmax(logits[b,t,h,:])      logits [B,T,H,K], one per position
//   y[b,t,c] = sum_{k<K} p[..h(c)..][k] x[b, t-P+k, c]           x outside [0,T) counts as zero
//
// with P = K-1 (causal: taps t-K+1..t) or P = (K-1)/2 (centered: K/2 padding on both sides for
// odd K; for even K one tap more after t than before). This header holds the argument structs,
// their validation and the readable definition (double loops in double precision); the fast
// forms are in fast.hpp, the causal decode steps in step.hpp. options.reverse: the same on
// reversed views of x, y (and logits) (core/direction.hpp): causal windows become x[t..t+K-1].
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Which inputs a local softmax convolution reads (docs/operators.md, "lightweight_conv").
enum class LocalConvPadding {
  causal,   ///< taps t-K+1..t: y[t] reads no later token; has a decode step
  centered  ///< taps t-(K-1)/2..t+K/2: non-causal, no decode step
};

/// Options shared by lightweight_conv and dynamic_conv.
struct LocalConvOptions {
  LocalConvPadding padding = LocalConvPadding::causal;  ///< causal or centered window
  /// Run from the last token to the first (core/direction.hpp): x, y and dynamic_conv's logits
  /// are reversed views, not copies. A causal window becomes y[t] = sum_k p[k] x[t+K-1-k]
  /// (tap K-1 on x[t]); an even centered window has its extra tap before t. The decode steps have
  /// no direction (fed tokens from the end, they continue a reverse prefill).
  bool reverse = false;
};

/// lightweight_conv's inputs (docs/operators.md, "lightweight_conv").
struct LightweightConvInputs {
  ConstView<float, 3> x;       ///< [B,T,D], any strides
  ConstView<float, 2> weight;  ///< [H,K]: kernel logits per head (softmax over K inside the op), finite, H divides D
};

/// dynamic_conv's inputs (docs/operators.md, "dynamic_conv").
struct DynamicConvInputs {
  ConstView<float, 3> x;       ///< [B,T,D], any strides
  ConstView<float, 4> logits;  ///< [B,T,H,K]: kernel logits per position and head, finite, H divides D
};

/// Output of both operators: y must not overlap any input.
struct LocalConvOutputs {
  TensorView<float, 3> y;  ///< [B,T,D]
};

namespace detail {

struct LocalConvDims {
  index_t B, T, D, H, K;
};

inline void local_conv_common(const ArgCheck& check, const ConstView<float, 3>& x, index_t H, index_t K,
                              const LocalConvOptions& options) {
  check.enum_value("options.padding", options.padding, 2);
  const index_t D = x.size(2);
  if (K < 1) check.fail("kernel", "must have at least one tap (K >= 1), got K = " + std::to_string(K));
  if (H < 1 || D % H != 0)
    check.fail("kernel", "needs H >= 1 heads dividing D = " + std::to_string(D) + ", got H = " + std::to_string(H));
}

inline LocalConvDims validate_lightweight_conv(const char* op, const LightweightConvInputs& in,
                                               const LocalConvOutputs& out, const LocalConvOptions& options) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  check.shape("weight", in.weight, {-1, -1}, "H,K");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  const index_t H = in.weight.size(0), K = in.weight.size(1);
  local_conv_common(check, in.x, H, K, options);
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  bool finite = true;
  for (index_t h = 0; h < H; ++h)
    for (index_t k = 0; k < K; ++k) finite = finite && std::isfinite(in.weight(h, k));
  if (!finite) check.fail("weight", "holds a non-finite value (NaN or infinity)");
  check.no_overlap("y", out.y, "x", in.x);
  check.no_overlap("y", out.y, "weight", in.weight);
  return {B, T, D, H, K};
}

inline LocalConvDims validate_dynamic_conv(const char* op, const DynamicConvInputs& in, const LocalConvOutputs& out,
                                           const LocalConvOptions& options) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("logits", in.logits, {B, T, -1, -1}, "B,T,H,K");
  const index_t H = in.logits.size(2), K = in.logits.size(3);
  local_conv_common(check, in.x, H, K, options);
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  bool finite = true;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t h = 0; h < H; ++h)
        for (index_t k = 0; k < K; ++k) finite = finite && std::isfinite(in.logits(b, t, h, k));
  if (!finite) check.fail("logits", "holds a non-finite value (NaN or infinity)");
  check.no_overlap("y", out.y, "x", in.x);
  check.no_overlap("y", out.y, "logits", in.logits);
  return {B, T, D, H, K};
}

// Taps before t: K-1 (causal) or (K-1)/2 (centered).
inline index_t local_conv_lead(index_t K, LocalConvPadding padding) {
  return padding == LocalConvPadding::causal ? K - 1 : (K - 1) / 2;
}

// softmax of K logits in double (max subtracted).
template <class Get>
inline void local_conv_softmax_double(index_t K, Get logit, std::vector<double>& p) {
  p.resize(static_cast<std::size_t>(K));
  double m = logit(0);
  for (index_t k = 1; k < K; ++k) m = std::max(m, double(logit(k)));
  double sum = 0.0;
  for (index_t k = 0; k < K; ++k) sum += p[static_cast<std::size_t>(k)] = std::exp(double(logit(k)) - m);
  for (index_t k = 0; k < K; ++k) p[static_cast<std::size_t>(k)] /= sum;
}

// y[b,t,c] for c in head h with taps p (double loops; out-of-range taps skipped).
inline void local_conv_reference_row(const ConstView<float, 3>& x, const TensorView<float, 3>& y, index_t b, index_t t,
                                     index_t h, index_t group, index_t lead, const std::vector<double>& p) {
  const index_t T = x.size(1), K = static_cast<index_t>(p.size());
  for (index_t c = h * group; c < (h + 1) * group; ++c) {
    double acc = 0.0;
    for (index_t k = 0; k < K; ++k) {
      const index_t s = t - lead + k;
      if (s >= 0 && s < T) acc += p[static_cast<std::size_t>(k)] * double(x(b, s, c));
    }
    y(b, t, c) = static_cast<float>(acc);
  }
}

}  // namespace detail

namespace detail {

// Reverse calls (options.reverse) as forward calls on reversed views of the token-indexed arguments.
inline std::pair<LightweightConvInputs, LocalConvOutputs> lightweight_conv_reversed_call(LightweightConvInputs in,
                                                                                         LocalConvOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

inline std::pair<DynamicConvInputs, LocalConvOutputs> dynamic_conv_reversed_call(DynamicConvInputs in,
                                                                                 LocalConvOutputs out) {
  reverse_time_of(in.x, in.logits, out.y);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition of lightweight_conv: softmax of each head's kernel in double, then the window
/// sums in double for every (b, t, c). Single-threaded, `executor` accepted for a uniform
/// signature. Validates first (shapes, K >= 1, H dividing D, finite weight, no overlap).
inline void lightweight_conv(const LightweightConvInputs& in, const LocalConvOutputs& out,
                             const LocalConvOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  if (options.reverse) {
    const auto rev = detail::lightweight_conv_reversed_call(in, out);
    return lightweight_conv(rev.first, rev.second, detail::forward_options(options));
  }
  const auto d = detail::validate_lightweight_conv("reference::lightweight_conv", in, out, options);
  const index_t lead = detail::local_conv_lead(d.K, options.padding), group = d.H > 0 ? d.D / d.H : 0;
  std::vector<std::vector<double>> p(static_cast<std::size_t>(d.H));
  for (index_t h = 0; h < d.H; ++h)
    detail::local_conv_softmax_double(d.K, [&](index_t k) { return in.weight(h, k); }, p[static_cast<std::size_t>(h)]);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t h = 0; h < d.H; ++h)
        detail::local_conv_reference_row(in.x, out.y, b, t, h, group, lead, p[static_cast<std::size_t>(h)]);
}

/// The definition of dynamic_conv: per (b, t, h) the softmax of logits[b,t,h,:] in double, then
/// the window sums in double. Single-threaded, `executor` accepted for a uniform signature.
/// Validates first (shapes, K >= 1, H dividing D, finite logits, no overlap).
inline void dynamic_conv(const DynamicConvInputs& in, const LocalConvOutputs& out, const LocalConvOptions& options = {},
                         const Executor& executor = serial_executor()) {
  (void)executor;
  if (options.reverse) {
    const auto rev = detail::dynamic_conv_reversed_call(in, out);
    return dynamic_conv(rev.first, rev.second, detail::forward_options(options));
  }
  const auto d = detail::validate_dynamic_conv("reference::dynamic_conv", in, out, options);
  const index_t lead = detail::local_conv_lead(d.K, options.padding), group = d.H > 0 ? d.D / d.H : 0;
  std::vector<double> p;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t h = 0; h < d.H; ++h) {
        detail::local_conv_softmax_double(d.K, [&](index_t k) { return in.logits(b, t, h, k); }, p);
        detail::local_conv_reference_row(in.x, out.y, b, t, h, group, lead, p);
      }
}

}  // namespace reference
}  // namespace seqmix
