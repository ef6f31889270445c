// Long-context remedies for selective SSMs (issue 23 item 5): the readable definitions, options
// and validation. Fast forms: window.hpp (sliding-window state), selection.hpp (DeciMamba token
// pooling, LongMamba selective accumulation).
//
// Sliding-window state of the diagonal recurrence h_t = a_t h_{t-1} + b_t (core/scan, from zero):
//   w_t = sum_{s = max(0, t-r+1)}^{t} (a_{s+1} ... a_t) b_s  =  h_t - (a_{t-r+1} ... a_t) h_{t-r}
// the state made of the last r tokens only. The right-hand form cancels catastrophically once h
// is large next to w (a near 1 over a long context); window.hpp forms the sum without subtraction.
#pragma once

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of sliding_window_scan.
struct SlidingWindowOptions {
  /// How `a` is given: the decay itself or its log (core/scan's GateSpace).
  GateSpace gate_space = GateSpace::direct;
  /// r, the number of most recent tokens the state keeps (>= 1).
  index_t window = 0;
  /// Run from the last token to the first (core/direction.hpp): h_t = a_t h_{t+1} + b_t and w_t
  /// holds tokens t..t+r-1; a, b and w are reached through reversed views, not copied.
  bool reverse = false;
};

namespace detail {

inline void validate_sliding_window(const char* op, const ConstView<float, 3>& a, const ConstView<float, 3>& b,
                                    const TensorView<float, 3>& w, const SlidingWindowOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.gate_space", options.gate_space, 2);
  check.that(options.window >= 1, "options.window", "must be >= 1, got " + std::to_string(options.window));
  check.shape("a", a, {-1, -1, -1}, "B,T,D");
  check.shape("b", b, a.shape(), "B,T,D").shape("w", w, a.shape(), "B,T,D");
  check.no_overlap("w", w, "a", a).no_overlap("w", w, "b", b);
}

}  // namespace detail

namespace reference {

/// The definition: the window sum token by token, O(T r) per channel, in double. Single-threaded.
inline void sliding_window_scan(ConstView<float, 3> a, ConstView<float, 3> b, TensorView<float, 3> w,
                                const SlidingWindowOptions& options, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    detail::reverse_time_of(a, b, w);
    return sliding_window_scan(a, b, w, detail::forward_options(options), executor);
  }
  (void)executor;
  detail::validate_sliding_window("reference::sliding_window_scan", a, b, w, options);
  const index_t B = a.size(0), T = a.size(1), D = a.size(2), r = options.window;
  const auto gate = [&](index_t n, index_t t, index_t d) {
    return options.gate_space == GateSpace::log ? std::exp(double(a(n, t, d))) : double(a(n, t, d));
  };
  for (index_t n = 0; n < B; ++n)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double sum = 0.0, decay = 1.0;  // decay = a_{s+1} ... a_t
        for (index_t s = t; s >= 0 && s > t - r; --s) {
          sum += decay * b(n, s, d);
          decay *= gate(n, s, d);
        }
        w(n, t, d) = static_cast<float>(sum);
      }
}

}  // namespace reference
}  // namespace seqmix
