// long_conv: depthwise convolution with filters as long as the sequence (issue 16 item 1), the
// common core of S4-style kernels, Hyena, H3 and the fixed long-filter mixers.
//
// This header holds the readable definition (seqmix::reference::long_conv), the argument structs
// shared by every form, and their validation. The direct (time-domain) and FFT prefill are in
// direct.hpp and fft.hpp, the automatic choice between them in fast.hpp, the decode step in
// step.hpp.
//
//   u [B,T,D]; filter h [L,G], G = D (one filter per channel) or G | D (shared per head: channel d
//   uses column d / (D/G)); optional skip [D], bias [D], initial_state [B,L-1,D] (causal only).
//   xs = concat(initial_state or zeros, u) along time, so xs[t - s] for t - s < 0 is a state row
//   causal:        y[t,d] = bias[d] + skip[d] u[t,d] + sum_{s<L} h[s,g(d)] xs[t-s,d]
//   bidirectional: the causal sum plus sum_{s<Lb, t+s<T} hb[s,g(d)] u[t+s,d]   (hb: filter_backward)
//   final_state = the last L-1 rows of xs (causal only)
//   options.reverse: the same on reversed views of u and y (core/direction.hpp), so causal reads
//   u[t..t+L-1] (anti-causal) and the state rows are inputs in processing order (see the option).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Which inputs a long convolution's output sees.
enum class LongConvDirection {
  causal,         ///< y[t] reads u[0..t] (and the initial state): the autoregressive form
  bidirectional,  ///< y[t] also reads u[t..T-1] through filter_backward (encoders, non-causal Hyena)
};

/// How the fast prefill computes the convolution. Every method gives the same results up to
/// float rounding (the FFT's error grows with log T, about 1e-6 relative).
enum class LongConvMethod {
  automatic,  ///< the cheaper of the two by the measured cost model in fast.hpp
  direct,     ///< time-domain sum over the taps: O(T L D), best for short filters
  fft,        ///< zero-padded real FFT per channel: O(T log T D), best for long filters
};

/// Options of long_conv (docs/operators.md, "long_conv").
struct LongConvOptions {
  /// causal by default; bidirectional needs filter_backward and takes no state.
  LongConvDirection direction = LongConvDirection::causal;
  /// automatic by default.
  LongConvMethod method = LongConvMethod::automatic;
  /// Run from the last token to the first (core/direction.hpp): u and y are reversed views, not
  /// copies. Causal then means anti-causal, y[t] = bias + skip u[t] + sum_{s<L} h[s] u[t+s]
  /// (filter tap 0 still multiplies the token being processed), and the state holds inputs in
  /// processing order: initial_state row L-2 is "u[T]", the input processed just before token
  /// T-1; final_state row r is u[L-2-r] (the last L-1 tokens processed, token 0 last).
  /// Bidirectional then equals the forward bidirectional call with filter and filter_backward
  /// swapped. The step (long_conv_step) has no direction: it continues a stream forward.
  bool reverse = false;
};

/// Prefill arguments. Optional views are empty (default-constructed) when not given.
struct LongConvInputs {
  ConstView<float, 3> u;                    ///< [B,T,D]
  ConstView<float, 2> filter;               ///< [L,G], L >= 1 taps, tap 0 multiplies the newest input; G = D or G | D
  ConstView<float, 2> filter_backward = {}; ///< [Lb,G], bidirectional only: tap s multiplies u[t+s]
  ConstView<float, 1> skip = {};            ///< [D], optional: y += skip[d] * u[t,d] (the SSM's D term)
  ConstView<float, 1> bias = {};            ///< [D], optional
  ConstView<float, 3> initial_state = {};   ///< [B,L-1,D], optional (causal only): the last L-1 inputs, oldest first
};

/// y must not overlap any input. final_state may be the very same view as initial_state (a
/// stream carried in one buffer); it is written after every output.
struct LongConvOutputs {
  TensorView<float, 3> y;                   ///< [B,T,D]
  TensorView<float, 3> final_state = {};    ///< [B,L-1,D], optional (causal only)
};

namespace detail {

struct LongConvDims {
  index_t B, T, D, L, Lb, G;
  index_t group() const { return D / G; }  // channels per filter column
};

// The first non-finite element of a [L,G] filter, refused with its position: a NaN tap would
// reach every later output (and, through the FFT, every output) of its channels.
// Whether rows [s0, s1) of h are all finite, read a vector at a time when its rows are contiguous
// (false otherwise, also when unsure).
inline bool filter_rows_finite(const ConstView<float, 2>& h, index_t s0, index_t s1) noexcept {
  return h.stride(1) == 1 && simd::rows_finite(h.data() + s0 * h.stride(0), s1 - s0, h.size(1), h.stride(0));
}

// The check of the whole filter, in row ranges over `executor` (tasks that only read and report)
// when it has more than two threads. Why: validation reads the whole filter on every call; at
// L = 4096, D = 768 (12 MiB) that took 240 us on the calling thread, 1.3% of the FFT form's work,
// which alone idled a third of 64 cores (docs/parallel_grain.md, long_conv). On one or two
// threads it stays on the caller: there it is ~2% of the call's time, less than what another
// hand-off to the pool can cost on a loaded machine. Ranges of at least 64 KiB, so a small
// filter stays one read on the caller.
inline bool filter_finite(const ConstView<float, 2>& h, const Executor& executor) {
  const index_t L = h.size(0), G = std::max<index_t>(h.size(1), 1);
  const index_t threads = executor.concurrency();
  const index_t rows = std::max((L + threads - 1) / threads, (index_t{16384} + G - 1) / G);
  const index_t ranges = (L + rows - 1) / rows;
  if (threads <= 2 || ranges <= 1) return filter_rows_finite(h, 0, L);
  std::vector<char> finite(static_cast<std::size_t>(ranges), 0);
  executor.run(ranges, [&](index_t i) {
    finite[static_cast<std::size_t>(i)] = filter_rows_finite(h, i * rows, std::min(L, (i + 1) * rows)) ? 1 : 0;
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

inline void check_finite_filter(const ArgCheck& check, const char* name, const ConstView<float, 2>& h,
                                const Executor& executor = serial_executor()) {
  if (filter_finite(h, executor)) return;  // else find the element the message names
  for (index_t s = 0; s < h.size(0); ++s)
    for (index_t g = 0; g < h.size(1); ++g)
      if (!std::isfinite(h(s, g)))
        check.fail(name, "must be finite, element [" + std::to_string(s) + ", " + std::to_string(g) + "] is " +
                             std::to_string(h(s, g)));
}

inline void check_finite_vector(const ArgCheck& check, const char* name, const ConstView<float, 1>& v) {
  for (index_t i = 0; i < v.size(0); ++i)
    if (!std::isfinite(v(i)))
      check.fail(name, "must be finite, element [" + std::to_string(i) + "] is " + std::to_string(v(i)));
}

template <class Out, class In>
void long_conv_no_overlap(const ArgCheck& check, const char* output, const Out& out, const char* input, const In& in) {
  if (views_overlap(out, in))
    check.fail(output, std::string("overlaps input '") + input + "'; pass a separate buffer");
}

// Validates a prefill call (shared by every form), before anything is written. filter_values:
// false skips the filters' finiteness check, for a call with a prepared spectrum whose making
// checked them (the check reads the whole filter, which that call otherwise never reads).
// executor: where the filters' check runs (filter_finite); the fast forms pass theirs.
inline LongConvDims validate_long_conv(const char* op, const LongConvInputs& in, const LongConvOutputs& out,
                                       const LongConvOptions& options, bool filter_values = true,
                                       const Executor& executor = serial_executor()) {
  const ArgCheck check(op);
  check.enum_value("options.direction", options.direction, 2).enum_value("options.method", options.method, 3);
  check.shape("u", in.u, {-1, -1, -1}, "B,T,D");
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2);
  check.shape("filter", in.filter, {-1, -1}, "L,G");
  const index_t L = in.filter.size(0), G = in.filter.size(1);
  if (L < 1) check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(in.filter.shape()));
  if (G < 1 || D % G != 0)
    check.fail("filter", "must have G = D columns (per channel) or G dividing D = " + std::to_string(D) +
                             " (shared per head), got shape " + shape_to_string(in.filter.shape()));
  const bool bidirectional = options.direction == LongConvDirection::bidirectional;
  index_t Lb = 0;
  if (bidirectional) {
    check.shape("filter_backward", in.filter_backward, {-1, G}, "Lb,G");
    Lb = in.filter_backward.size(0);
    if (Lb < 1) check.fail("filter_backward", "must have at least one tap (Lb >= 1) in a bidirectional call");
    if (in.initial_state.has_value()) check.fail("initial_state", "is causal only; a bidirectional call takes no state");
    if (out.final_state.has_value()) check.fail("final_state", "is causal only; a bidirectional call takes no state");
  } else if (in.filter_backward.has_value()) {
    check.fail("filter_backward", "is given but options.direction is causal");
  }
  check.optional_shape("skip", in.skip, {D}, "D");
  check.optional_shape("bias", in.bias, {D}, "D");
  check.optional_shape("initial_state", in.initial_state, {B, L - 1, D}, "B,L-1,D");
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  check.optional_shape("final_state", out.final_state, {B, L - 1, D}, "B,L-1,D");
  if (filter_values) check_finite_filter(check, "filter", in.filter, executor);
  if (filter_values && bidirectional) check_finite_filter(check, "filter_backward", in.filter_backward, executor);
  if (in.skip.has_value()) check_finite_vector(check, "skip", in.skip);
  if (in.bias.has_value()) check_finite_vector(check, "bias", in.bias);
  // The fast forms read every input while they write y; final_state may be initial_state itself.
  const auto inputs = [&](const char* output, const auto& o) {
    long_conv_no_overlap(check, output, o, "u", in.u);
    long_conv_no_overlap(check, output, o, "filter", in.filter);
    long_conv_no_overlap(check, output, o, "filter_backward", in.filter_backward);
    long_conv_no_overlap(check, output, o, "skip", in.skip);
    long_conv_no_overlap(check, output, o, "bias", in.bias);
  };
  inputs("y", out.y);
  long_conv_no_overlap(check, "y", out.y, "initial_state", in.initial_state);
  inputs("final_state", out.final_state);
  long_conv_no_overlap(check, "final_state", out.final_state, "y", out.y);
  const bool same = static_cast<const void*>(out.final_state.data()) == static_cast<const void*>(in.initial_state.data()) &&
                    out.final_state.shape() == in.initial_state.shape() &&
                    out.final_state.strides() == in.initial_state.strides();
  if (!same) long_conv_no_overlap(check, "final_state", out.final_state, "initial_state", in.initial_state);
  return {B, T, D, L, Lb, G};
}

// Row r of xs for batch row b: u[r] for r >= 0, else state row L-1+r (zero when absent).
inline float long_conv_xs(const LongConvInputs& in, index_t b, index_t r, index_t d) {
  if (r >= 0) return in.u(b, r, d);
  if (!in.initial_state.has_value()) return 0.f;
  return in.initial_state(b, in.filter.size(0) - 1 + r, d);
}

// final_state[b, r] = xs[T - (L-1) + r]. Ascending rows read row T - (L-1) + r >= r - (L-1),
// i.e. state row >= r, so the final state may be the initial state itself.
inline void long_conv_write_final_state(const LongConvInputs& in, const TensorView<float, 3>& final_state,
                                        index_t b) {
  const index_t T = in.u.size(1), D = in.u.size(2), S = final_state.size(1);
  for (index_t r = 0; r < S; ++r)
    for (index_t d = 0; d < D; ++d) final_state(b, r, d) = long_conv_xs(in, b, T - S + r, d);
}

// A reverse call (options.reverse) as the forward call on reversed views of u and y; the state
// rows are in processing order already, so they are passed as they are.
inline std::pair<LongConvInputs, LongConvOutputs> long_conv_reversed_call(LongConvInputs in, LongConvOutputs out) {
  reverse_time_of(in.u, out.y);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, one output at a time, accumulated in double (the oracle the fast forms are
/// tested against). Single-threaded; `executor` is accepted for a uniform signature.
inline void long_conv(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                      const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_long_conv("reference::long_conv", in, out, options);
  const index_t S = dims.L - 1, group = dims.group();
  for (index_t b = 0; b < dims.B; ++b)
    for (index_t t = 0; t < dims.T; ++t)
      for (index_t d = 0; d < dims.D; ++d) {
        const index_t g = d / group;
        double acc = in.bias.has_value() ? in.bias(d) : 0.0;
        if (in.skip.has_value()) acc += double(in.skip(d)) * in.u(b, t, d);
        for (index_t s = 0; s < dims.L && t - s >= -S; ++s)
          acc += double(in.filter(s, g)) * detail::long_conv_xs(in, b, t - s, d);
        for (index_t s = 0; s < dims.Lb && t + s < dims.T; ++s)
          acc += double(in.filter_backward(s, g)) * in.u(b, t + s, d);
        out.y(b, t, d) = static_cast<float>(acc);
      }
  if (out.final_state.has_value())
    for (index_t b = 0; b < dims.B; ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace reference
}  // namespace seqmix
