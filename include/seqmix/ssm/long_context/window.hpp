// Sliding-window state, fast form (definition: reference::sliding_window_scan).
//
// Cut time into blocks of r tokens. A window ending at t in block j = [jr, jr + r) starts at
// t - r + 1 > (j - 1) r, so it covers a suffix of block j - 1 and a prefix of block j:
//   w_t = F_t + P_t G_{t-r+1}
//   F_t = a_t F_{t-1} + b_t from zero at jr      (block j's own scan)
//   P_t = a_jr ... a_t                           (its prefix product)
//   G_s = sum_{s <= s' < jr} (a_{s'+1} ... a_{jr-1}) b_{s'}   (block j-1's suffix sums, a backward
//         pass: G_s = G_{s+1} + Q_s b_s with Q_s = a_{s+1} Q_{s+1}, Q_{jr-1} = 1)
// with no G term when t - r + 1 = jr. Every term is a sum of products; nothing is subtracted, so
// the window is as accurate as a scan of r tokens however large h_t grows. Each element is read
// twice (backward pass of its block, then forward), vectorized across channels.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/long_context/reference.hpp"

namespace seqmix {
namespace detail {

template <GateSpace G>
inline float window_gate(float stored) {
  if constexpr (G == GateSpace::log)
    return std::exp(stored);
  else
    return stored;
}

// Channels [d0, d1) of batch row n. suffix holds r * (d1 - d0) floats, state 2 * (d1 - d0).
template <GateSpace G>
void sliding_window_rows(const ConstView<float, 3>& a, const ConstView<float, 3>& b, const TensorView<float, 3>& w,
                         index_t n, index_t d0, index_t d1, index_t r, float* suffix, float* state) {
  const index_t T = a.size(1), n_ch = d1 - d0;
  float* F = state;
  float* P = state + n_ch;
  for (index_t j0 = 0; j0 < T; j0 += r) {
    const index_t j1 = std::min(T, j0 + r);
    // Suffix sums of the previous block [j0 - r, j0): suffix[(s - (j0 - r)) * n_ch + i] = G_s.
    if (j0 > 0) {
      float* Q = P;  // a_{s+1} ... a_{j0-1}, free until the forward pass below
      for (index_t i = 0; i < n_ch; ++i) suffix[(r - 1) * n_ch + i] = b(n, j0 - 1, d0 + i), Q[i] = 1.f;
      for (index_t s = j0 - 2; s >= j0 - r; --s) {
        float* g = suffix + (s - (j0 - r)) * n_ch;
        const float* g_next = g + n_ch;
        for (index_t i = 0; i < n_ch; ++i) {
          Q[i] *= window_gate<G>(a(n, s + 1, d0 + i));
          g[i] = g_next[i] + Q[i] * b(n, s, d0 + i);
        }
      }
    }
    std::fill(F, F + n_ch, 0.f);
    std::fill(P, P + n_ch, 1.f);
    for (index_t t = j0; t < j1; ++t) {
      const index_t start = t - r + 1;  // first token of the window
      const float* g = start < j0 && j0 > 0 ? suffix + (start - (j0 - r)) * n_ch : nullptr;
      for (index_t i = 0; i < n_ch; ++i) {
        const float gate = window_gate<G>(a(n, t, d0 + i));
        // The block's first token starts F from b alone: gate * 0 would turn a NaN / inf gate,
        // which no window starting at j0 reads, into NaN (it still enters P, which does read it).
        F[i] = t == j0 ? b(n, t, d0 + i) : gate * F[i] + b(n, t, d0 + i);
        P[i] *= gate;
        w(n, t, d0 + i) = g != nullptr ? F[i] + P[i] * g[i] : F[i];
      }
    }
  }
}

}  // namespace detail

/// The state of the last options.window tokens of h_t = a_t h_{t-1} + b_t (from zero), for every
/// token: a, b, w [B,T,D] (any strides; w overlaps neither input). Exact to the rounding of an
/// r-token scan (no h_t - prod(a) h_{t-r} subtraction; window.hpp's header derives it). Parallel
/// over batch rows and channel blocks; scratch (r + 2) floats per channel of a task.
inline void sliding_window_scan(ConstView<float, 3> a, ConstView<float, 3> b, TensorView<float, 3> w,
                                const SlidingWindowOptions& options, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    detail::reverse_time_of(a, b, w);
    return sliding_window_scan(a, b, w, detail::forward_options(options), executor);
  }
  detail::validate_sliding_window("sliding_window_scan", a, b, w, options);
  const index_t B = a.size(0), T = a.size(1), D = a.size(2);
  if (B * T * D == 0) return;
  const index_t r = std::min(options.window, T);  // a window longer than T is the whole prefix
  // Channel blocks of 64: the r x 64 suffix block stays in L2 for r up to a few thousand.
  constexpr index_t kChannels = 64;
  const index_t blocks = (D + kChannels - 1) / kChannels;
  parallel_for(executor, B * blocks, 1, [&](index_t p0, index_t p1) {
    std::vector<float> suffix(static_cast<std::size_t>(r * kChannels)), state(2 * kChannels);
    for (index_t p = p0; p < p1; ++p) {
      const index_t n = p / blocks, d0 = p % blocks * kChannels, d1 = std::min(D, d0 + kChannels);
      if (options.gate_space == GateSpace::log)
        detail::sliding_window_rows<GateSpace::log>(a, b, w, n, d0, d1, r, suffix.data(), state.data());
      else
        detail::sliding_window_rows<GateSpace::direct>(a, b, w, n, d0, d1, r, suffix.data(), state.data());
    }
  });
}

}  // namespace seqmix
