// State passing across slices of one sequence for selective_scan (Mamba-1): run a slice from a
// zero state with its transition, compose slices (compose_diagonal_slices, core/slice_state.hpp),
// and correct a slice's outputs and final state from its true initial state without rerunning it.
//
// With c_t = sum_{s<=t} dt_s[d] the slice's cumulative step of channel d, the state after token
// t from S0 is exp(A[d] c_t) * S0[d] + h_t^0 (elementwise over n), so
//   y_t[d] += silu(z_t[d]) * sum_n C_t[n] exp(A[d][n] c_t) S0[d][n]
//   final_state += exp(A c_L) * S0,       transition: log_decay[b,d,n] = A[d][n] c_L.
// The decay differs per (d, n), so the correction is O(T D N) like the scan (no GEMM form), but
// it reads only dt, C and z and writes no state.
#pragma once

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/slice_state.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"

namespace seqmix {

namespace detail {

inline float scan_slice_dt(const SelectiveScanInputs& in, const SelectiveScanOptions& options, index_t b, index_t t,
                           index_t d) {
  const float dt = in.delta(b, t, d) + (in.delta_bias.has_value() ? in.delta_bias(d) : 0.f);
  return options.delta_softplus ? softplus(dt) : dt;
}

inline ScanDims validate_selective_scan_slice(const char* op, const SelectiveScanInputs& in,
                                              const SelectiveScanOutputs& out, const SelectiveScanOptions& options,
                                              bool correcting) {
  const ArgCheck check(op);
  const ScanDims d = validate_selective_scan(op, in, out).dims;
  check_slice_states(check, in.batch, options.reverse, out.token_states.has_value(), in.initial_state, out.final_state,
                     std::array<index_t, 3>{d.B, d.D, d.N}, "B,D,N", correcting);
  return d;
}

}  // namespace detail

/// Runs selective_scan on one slice of longer sequences from a zero state: out.y gets the
/// zero-state outputs, out.final_state [B,D,N] (required) the local final state and log_decay
/// [B,D,N] the transition A[d][n] * sum_t dt_t[d]. A dense batch only, no in.initial_state, no
/// token_states. Compose slices with compose_diagonal_slices<3, 3>; finish one with
/// selective_scan_slice_correct.
inline void selective_scan_slice(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                                 const TensorView<float, 3>& log_decay, const SelectiveScanOptions& options = {},
                                 const Executor& executor = serial_executor()) {
  const char* op = "selective_scan_slice";
  const ArgCheck check(op);
  const detail::ScanDims d = detail::validate_selective_scan_slice(op, in, out, options, false);
  check.shape("log_decay", log_decay, std::array<index_t, 3>{d.B, d.D, d.N}, "B,D,N");
  check.no_overlap("log_decay", log_decay, "y", out.y).no_overlap("log_decay", log_decay, "final_state", out.final_state);
  check.no_overlap("log_decay", log_decay, "delta", in.delta);
  selective_scan(in, out, options, executor);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t c = 0; c < d.D; ++c) {
      float steps = 0.f;
      for (index_t t = 0; t < d.T; ++t) steps += detail::scan_slice_dt(in, options, b, t, c);
      for (index_t n = 0; n < d.N; ++n) log_decay(b, c, n) = in.A(c, n) * steps;
    }
}

/// Finishes a slice run by selective_scan_slice: in.initial_state [B,D,N] (required) is the
/// slice's true initial state; out.y gains what each token reads from it and out.final_state
/// (optional, not overlapping initial_state) goes from the local to the true final state.
/// Reads delta, Cm and z. Equals one selective_scan call over the whole sequence, to rounding.
inline void selective_scan_slice_correct(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                                         const SelectiveScanOptions& options = {},
                                         const Executor& executor = serial_executor()) {
  const detail::ScanDims d = detail::validate_selective_scan_slice("selective_scan_slice_correct", in, out, options, true);
  const index_t channels_per_group = d.D / d.G;
  parallel_for(executor, d.B * d.D, 16, [&](index_t begin, index_t end) {
    std::vector<float> carried(static_cast<std::size_t>(d.N));  // exp(A c_t) * S0, per n
    std::vector<float> a_row(static_cast<std::size_t>(d.N)), decay(static_cast<std::size_t>(d.N));
    const std::ptrdiff_t vec_end = simd::vector_end(static_cast<std::ptrdiff_t>(d.N));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.D, c = task % d.D, g = c / channels_per_group;
      for (index_t n = 0; n < d.N; ++n) carried[static_cast<std::size_t>(n)] = in.initial_state(b, c, n);
      for (index_t n = 0; n < d.N; ++n) a_row[static_cast<std::size_t>(n)] = in.A(c, n);
      // The carried state decays token by token; below FLT_MIN it is flushed to zero (what it
      // adds is under 1e-38 per output), as subnormal products run ~100x slower and a slowly
      // decaying channel stays subnormal for thousands of tokens. Once every entry is zero the
      // rest of the slice reads nothing from S0.
      for (index_t t = 0; t < d.T; ++t) {
        const float dt = detail::scan_slice_dt(in, options, b, t, c);
        float read = 0.f;
        bool live = false;
        // exp(dt A[c,n]) for every n, SIMD over whole vectors (the single call's decay).
        std::ptrdiff_t n0 = 0;
        for (; n0 < vec_end; n0 += simd::kWidth)
          simd::exp(simd::Batch<float>(dt) * simd::Batch<float>::load_unaligned(a_row.data() + n0))
              .store_unaligned(decay.data() + n0);
        for (; n0 < static_cast<std::ptrdiff_t>(d.N); ++n0) decay[static_cast<std::size_t>(n0)] = std::exp(dt * a_row[static_cast<std::size_t>(n0)]);
        for (index_t n = 0; n < d.N; ++n) {
          float& s = carried[static_cast<std::size_t>(n)];
          s *= decay[static_cast<std::size_t>(n)];
          if (std::abs(s) < std::numeric_limits<float>::min()) s = 0.f;
          live = live || s != 0.f;
          read += in.Cm(b, t, g, n) * s;
        }
        out.y(b, t, c) += in.z.has_value() ? detail::scan_silu(in.z(b, t, c)) * read : read;
        if (!live) break;
      }
      if (!out.final_state.has_value()) continue;
      for (index_t n = 0; n < d.N; ++n) out.final_state(b, c, n) += carried[static_cast<std::size_t>(n)];
    }
  });
}

}  // namespace seqmix
