// State passing across slices of one sequence for ssd (Mamba-2): run a slice from a zero state
// with its transition, compose slices (compose_diagonal_slices, core/slice_state.hpp), and correct
// a slice's outputs and final state from its true initial state without rerunning it.
//
// With cs_t = sum_{s<=t} dt_s A[h] the slice's cumulative log-decay of head h, the state after
// token t from S0 is exp(cs_t) S0 + h_t^0, so
//   y_t += silu(z_t) * exp(cs_t) * (S0 C_t)      (one [n,N] x [N,P] GEMM per block of tokens)
//   final_state += exp(cs_L) S0,                  transition: log_decay[b,h] = cs_L.
// The D skip term does not involve the state.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/slice_state.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"

namespace seqmix {

namespace detail {

// Tokens per GEMM of the correction ([64, N] rows of C next to the [N, P] state in L1/L2).
constexpr index_t kSsdSliceBlock = 64;

inline SsdDims validate_ssd_slice(const char* op, const SsdInputs& in, const SsdOutputs& out,
                                  const SsdOptions& options, bool correcting) {
  const ArgCheck check(op);
  const SsdDims d = validate_ssd(op, in, out, options).dims;
  check_slice_states(check, in.batch, options.reverse, out.token_states.has_value(), in.initial_state, out.final_state,
                     std::array<index_t, 4>{d.B, d.H, d.P, d.N}, "B,H,P,N", correcting);
  return d;
}

}  // namespace detail

/// Runs ssd on one slice of longer sequences from a zero state: out.y gets the zero-state
/// outputs, out.final_state [B,H,P,N] (required) the local final state and log_decay [B,H] the
/// transition, sum_t dt_t A[h] over the slice (dt after bias and softplus). A dense batch only
/// (in.batch empty), no in.initial_state, no token_states. Compose slices with
/// compose_diagonal_slices<2, 4> and finish one with ssd_slice_correct.
inline void ssd_slice(const SsdInputs& in, const SsdOutputs& out, const TensorView<float, 2>& log_decay,
                      const SsdOptions& options = {}, const Executor& executor = serial_executor()) {
  const char* op = "ssd_slice";
  const ArgCheck check(op);
  const detail::SsdDims d = detail::validate_ssd_slice(op, in, out, options, false);
  check.shape("log_decay", log_decay, std::array<index_t, 2>{d.B, d.H}, "B,H");
  check.no_overlap("log_decay", log_decay, "y", out.y).no_overlap("log_decay", log_decay, "final_state", out.final_state);
  check.no_overlap("log_decay", log_decay, "dt", in.dt);
  ssd(in, out, options, executor);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      float sum = 0.f;
      for (index_t t = 0; t < d.T; ++t) sum += detail::ssd_dt(in.dt(b, t, h), in.dt_bias, h, options.dt_softplus);
      log_decay(b, h) = sum * in.A(h);
    }
}

/// Finishes a slice run by ssd_slice once its true initial state is known: in.initial_state
/// [B,H,P,N] (required) is that state; out.y holds the slice's zero-state outputs and gains what
/// each token reads from it (gated by silu(z) when z is given); out.final_state, when given,
/// holds the local final state and becomes the true one (it must not overlap initial_state).
/// Reads dt, Cm and z; the other inputs are checked, not read. Equals one ssd call over the
/// whole sequence, to rounding.
inline void ssd_slice_correct(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                              const Executor& executor = serial_executor()) {
  const detail::SsdDims d = detail::validate_ssd_slice("ssd_slice_correct", in, out, options, true);
  const index_t heads_per_group = d.H / d.G;
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    using Matrix = RowMajorMatrix<float>;
    Matrix S(d.N, d.P), C(detail::kSsdSliceBlock, d.N), Y(detail::kSsdSliceBlock, d.P);
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.H, h = task % d.H, g = h / heads_per_group;
      for (index_t p = 0; p < d.P; ++p)
        for (index_t n = 0; n < d.N; ++n) S(n, p) = in.initial_state(b, h, p, n);
      float cs = 0.f;
      for (index_t t0 = 0; t0 < d.T; t0 += detail::kSsdSliceBlock) {
        const index_t rows = std::min(detail::kSsdSliceBlock, d.T - t0);
        for (index_t i = 0; i < rows; ++i) {
          cs += detail::ssd_dt(in.dt(b, t0 + i, h), in.dt_bias, h, options.dt_softplus) * in.A(h);
          const float decay = std::exp(cs);
          for (index_t n = 0; n < d.N; ++n) C(i, n) = decay * in.Cm(b, t0 + i, g, n);
        }
        Y.topRows(rows).noalias() = C.topRows(rows) * S;
        for (index_t i = 0; i < rows; ++i)
          for (index_t p = 0; p < d.P; ++p) {
            const float gate = in.z.has_value() ? detail::ssd_silu(in.z(b, t0 + i, h, p)) : 1.f;
            out.y(b, t0 + i, h, p) += gate * Y(i, p);
          }
      }
      if (!out.final_state.has_value()) continue;
      const float decay = std::exp(cs);
      for (index_t p = 0; p < d.P; ++p)
        for (index_t n = 0; n < d.N; ++n) out.final_state(b, h, p, n) += decay * S(n, p);
    }
  });
}

/// ssd over long sequences split by position across the executor's threads: each of `slices`
/// pieces (0: one per thread; cut at T*i/slices) runs ssd_slice at the same time, the pieces'
/// initial states follow by composing their summaries in order, and each piece is corrected
/// (ssd_slice_correct); the result equals one ssd call to rounding. Worth it when B * H is too
/// small to keep the threads busy; scratch: two [B,H,P,N] states per slice. A dense batch only,
/// no token_states; final_state may be the initial_state view.
inline void context_parallel_ssd(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                                 const Executor& executor = serial_executor(), index_t slices = 0) {
  const char* op = "context_parallel_ssd";
  const ArgCheck check(op);
  const detail::SsdDims d = detail::validate_ssd(op, in, out, options).dims;
  detail::check_context_parallel_call(check, in.batch, options.reverse, out.token_states.has_value());
  const index_t P = detail::context_slices(slices, d.T, executor);
  if (P <= 1) {
    ssd(in, out, options, executor);
    return;
  }
  const auto piece = [&](index_t begin, index_t n) {
    SsdInputs s = in;
    s.x = in.x.slice(1, begin, n), s.dt = in.dt.slice(1, begin, n);
    s.Bm = in.Bm.slice(1, begin, n), s.Cm = in.Cm.slice(1, begin, n);
    if (in.z.has_value()) s.z = in.z.slice(1, begin, n);
    s.initial_state = {};
    return s;
  };
  detail::context_parallel_states(
      d.T, P, executor, std::array<index_t, 4>{d.B, d.H, d.P, d.N}, std::array<index_t, 2>{d.B, d.H}, in.initial_state,
      out.final_state,
      [&](index_t begin, index_t n, const TensorView<float, 4>& local, const TensorView<float, 2>& decay) {
        ssd_slice(piece(begin, n), {out.y.slice(1, begin, n), local}, decay, options);
      },
      [](const TensorView<float, 4>& start, const TensorView<float, 2>& decay, const TensorView<float, 4>& local,
         const TensorView<float, 4>& next) { compose_diagonal_slices<2, 4>({}, start, decay, local, {}, next); },
      [&](index_t, index_t begin, index_t n, const TensorView<float, 4>& start, const TensorView<float, 2>&,
          const TensorView<float, 4>& final_state) {
        SsdInputs s = piece(begin, n);
        s.initial_state = start;
        ssd_slice_correct(s, {out.y.slice(1, begin, n), final_state}, options);
      });
}

}  // namespace seqmix
