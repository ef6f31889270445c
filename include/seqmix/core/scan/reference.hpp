// Core scans (SPEC section 2): the readable definitions, the options shared by all forms, and
// argument validation. The fast forms are in linear.hpp and associative.hpp.
//
// Linear recurrence, elementwise over channels, for every batch row b and channel d:
//   h[b,0..]    starts from h0[b,d] (zero if h0 is not given)
//   h[b,t,d]   = a_t * h[b,t-1,d] + x[b,t,d]       with a_t = a[b,t,d]        (GateSpace::direct)
//                                                   or   a_t = exp(a[b,t,d])   (GateSpace::log)
//   outputs: h_all = every h_t [B,T,D], and/or h_last = h_{T-1} [B,D] (h0, or zeros, when T = 0).
// The additive term is named `b` in the API (h_t = a_t h_{t-1} + b_t), as in the SPEC.
//
// Associative scan: out[i] = in[0] (+) in[1] (+) ... (+) in[i] for a monoid (+) with identity;
// see monoids.hpp for the Monoid requirements and ready-made monoids.
#pragma once

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How the multiplier a_t is stored.
enum class GateSpace {
  direct,  ///< a holds a_t itself (any real value)
  log,     ///< a holds log a_t (usually <= 0, as SPEC gates are); the scan uses exp(a)
};

/// How the fast linear scan spreads work over the executor's threads.
enum class ScanSplit {
  /// channels when B*D gives every thread at least detail::kMinChannelsPerTask channels (or there
  /// is one thread, or T is too short to chunk), time otherwise.
  automatic,
  /// Each task owns a block of channels for all T: one pass, 12 bytes per element (8 for last-only).
  channels,
  /// Each task owns a time chunk: (1) reduce the chunk to (prod a, local h from zero), (2) scan the
  /// chunk carries serially, (3) rescan each chunk from its carry. About 20 bytes per element with
  /// h_all (chunk 0 is scanned finally in pass 1), 8 for last-only (no pass 3). For few channels.
  time,
};

/// How the fast linear scan writes h_all.
enum class OutputStores {
  /// streaming when h_all is larger than detail::kStreamingOutputBytes (16 MiB), cached otherwise.
  automatic,
  /// Ordinary stores: h_all stays in cache for an operator that reads it next.
  cached,
  /// Non-temporal stores that bypass the caches: no read-for-ownership of h_all's cache lines, so
  /// a memory-bound scan moves 12 instead of 16 bytes per element.
  streaming,
};

/// Options of linear_scan and linear_scan_step (docs/operators.md section 2).
struct LinearScanOptions {
  /// How `a` is given: the decay itself (default) or its log (see GateSpace).
  GateSpace gate_space = GateSpace::direct;
  /// Which dimension runs in parallel: channels, time or the automatic choice (see ScanSplit).
  ScanSplit split = ScanSplit::automatic;
  /// Time-chunk length for ScanSplit::time; 0 picks one chunk per thread (plus one, sized so that
  /// pass 1 and pass 3 take equally long). Results do not depend on it beyond rounding.
  index_t chunk_size = 0;
  /// Cached or streaming stores for h_all (see OutputStores).
  OutputStores stores = OutputStores::automatic;
  /// Run from the last token to the first (core/direction.hpp): h_t = a_t h_{t+1} + b_t, h_all[t]
  /// the state after token t in that order, h_last the state after token 0, h0 the state before
  /// token T-1. No copy: the views are reversed.
  bool reverse = false;
};

/// Options of the generic associative scan.
struct AssociativeScanOptions {
  /// Elements per time chunk when run on several threads; 0 picks threads + 1 equal chunks.
  /// Results do not depend on it beyond rounding (exactly not, for an exact monoid).
  index_t chunk_size = 0;
  /// Run from the last element to the first (core/direction.hpp): out[i] = in[n-1] (+) in[n-2]
  /// (+) ... (+) in[i]. The element processed later goes on the right of combine, as in the
  /// forward scan, so for a non-commutative monoid (AffineMonoid: h_i = a_i h_{i+1} + b_i) the
  /// order is "processing order", not index order; out[0] is the fold of all n elements. No copy:
  /// the views are reversed.
  bool reverse = false;
};

namespace detail {

struct LinearScanDims {
  index_t B, T, D;
};

// An optional output counts as given when it has data or a non-default shape (a [B,0,D] tensor
// owns no memory but was still passed on purpose).
template <class View>
bool is_given(const View& view) {
  return view.has_value() || view.shape() != typename View::shape_type{};
}

// An output may be the very same view as the input it replaces (h_all as a or b, h_last as h0:
// the scan then runs in place, each element read before it is overwritten); any other overlap
// would let a write land on an element not yet read, and is refused.
template <std::size_t Rank>
void check_in_place(const ArgCheck& check, const char* output, const TensorView<float, Rank>& out,
                    const char* input, const ConstView<float, Rank>& in) {
  if (!out.has_value()) return;
  if (in.data() == out.data() && in.shape() == out.shape()) {
    check.that(in.strides() == out.strides(), output,
               std::string("shares its data pointer with '") + input + "' but has strides " +
                   shape_to_string(out.strides()) + " instead of " + shape_to_string(in.strides()) +
                   " (in-place scans need the identical view)");
    return;
  }
  check.no_overlap(output, out, input, in);
}

inline LinearScanDims validate_linear_scan(const char* op, const ConstView<float, 3>& a,
                                           const ConstView<float, 3>& b, const ConstView<float, 2>& h0,
                                           const TensorView<float, 3>& h_all,
                                           const TensorView<float, 2>& h_last,
                                           const LinearScanOptions& options) {
  const ArgCheck check(op);
  check.shape("a", a, std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  const index_t B = a.size(0), T = a.size(1), D = a.size(2);
  check.shape("b", b, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.optional_shape("h0", h0, std::array<index_t, 2>{B, D}, "B,D");
  check.optional_shape("h_all", h_all, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.optional_shape("h_last", h_last, std::array<index_t, 2>{B, D}, "B,D");
  check.that(is_given(h_all) || is_given(h_last), "h_all",
             "and argument 'h_last' are both empty: give at least one output");
  check.that(options.chunk_size >= 0, "options.chunk_size",
             "must be >= 0 (0 = automatic), got " + std::to_string(options.chunk_size));
  check_in_place(check, "h_all", h_all, "a", a);
  check_in_place(check, "h_all", h_all, "b", b);
  check_in_place(check, "h_last", h_last, "h0", h0);
  check.no_overlap("h_all", h_all, "h0", h0).no_overlap("h_last", h_last, "h_all", h_all);
  check.no_overlap("h_last", h_last, "a", a).no_overlap("h_last", h_last, "b", b);
  return {B, T, D};
}

template <class V>
void validate_associative_scan(const char* op, const ConstView<V, 1>& in, const TensorView<V, 1>& out,
                               const AssociativeScanOptions& options) {
  const ArgCheck check(op);
  check.shape("in", in, std::array<index_t, 1>{-1}, "n");
  check.shape("out", out, std::array<index_t, 1>{in.size(0)}, "n");
  check.that(options.chunk_size >= 0, "options.chunk_size",
             "must be >= 0 (0 = automatic), got " + std::to_string(options.chunk_size));
  if (in.data() == out.data() && in.size(0) > 1)
    check.that(in.stride(0) == out.stride(0), "out",
               "shares its data pointer with 'in' but has a different stride (in-place scans need "
               "the identical view)");
}

}  // namespace detail

namespace reference {

/// The definition, token by token (channels innermost, so the loop streams through memory).
/// Single-threaded; `executor` is accepted for a uniform signature. h_all may be the same view as
/// a or b, h_last the same as h0.
inline void linear_scan(ConstView<float, 3> a, ConstView<float, 3> b, ConstView<float, 2> h0,
                        TensorView<float, 3> h_all, TensorView<float, 2> h_last,
                        const LinearScanOptions& options = {},
                        const Executor& executor = serial_executor()) {
  if (options.reverse)
    return linear_scan(reversed_time_view(a), reversed_time_view(b), h0, reversed_time_view(h_all), h_last,
                       detail::forward_options(options), executor);
  (void)executor;
  const auto [B, T, D] = detail::validate_linear_scan("reference::linear_scan", a, b, h0, h_all, h_last, options);
  std::vector<float> h(static_cast<std::size_t>(D));
  for (index_t n = 0; n < B; ++n) {
    for (index_t d = 0; d < D; ++d) h[d] = h0.has_value() ? h0(n, d) : 0.f;
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        const float gate = options.gate_space == GateSpace::log ? std::exp(a(n, t, d)) : a(n, t, d);
        h[d] = gate * h[d] + b(n, t, d);
        if (h_all.has_value()) h_all(n, t, d) = h[d];
      }
    if (h_last.has_value())
      for (index_t d = 0; d < D; ++d) h_last(n, d) = h[d];
  }
}

/// Sequential fold: out[i] = combine(out[i-1], in[i]), starting from identity(); with
/// options.reverse out[i] = combine(out[i+1], in[i]) from i = n-1 down. out may be in.
/// options.chunk_size is validated and otherwise ignored.
template <class Monoid>
void associative_scan(const Monoid& monoid, ConstView<typename Monoid::value_type, 1> in,
                      TensorView<typename Monoid::value_type, 1> out, const AssociativeScanOptions& options,
                      const Executor& executor = serial_executor()) {
  (void)executor;
  detail::validate_associative_scan("reference::associative_scan", in, out, options);
  if (options.reverse)
    return reference::associative_scan(monoid, reversed_view(in, 0), reversed_view(out, 0),
                                       detail::forward_options(options), executor);
  typename Monoid::value_type acc = monoid.identity();
  for (index_t i = 0; i < in.size(0); ++i) {
    acc = monoid.combine(acc, in(i));
    out(i) = acc;
  }
}

/// The forward fold with default options.
template <class Monoid>
void associative_scan(const Monoid& monoid, ConstView<typename Monoid::value_type, 1> in,
                      TensorView<typename Monoid::value_type, 1> out,
                      const Executor& executor = serial_executor()) {
  reference::associative_scan(monoid, in, out, AssociativeScanOptions{}, executor);
}

}  // namespace reference
}  // namespace seqmix
