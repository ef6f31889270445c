// State passing across slices of a sequence for the family's diagonal-decay members
// (gated_linear_attention and its special cases, rwkv6, linear_attention): the slice transition
// and the correction from a slice's true initial state (core/slice_state.hpp has the algebra).
// Internal; the public entry points are each op's slice.hpp.
//
// With G_t = sum_{s<=t} g_s the slice's cumulative log-decay (per key channel), the state after
// token t of a slice that starts from S0 is diag(exp(G_t)) S0 + S_t^0, S_t^0 the state from
// zero. So the slice's outputs gain (scale * phi(q_t) * exp(G_t))^T S0 (G_{t-1} for rwkv6's
// exclusive readout; the bonus term does not touch the state), one GEMM of the decayed queries
// with S0 per block of tokens, and its final state gains diag(exp(G_L)) S0. The transition is
// the log-decay G_L [K].
#pragma once

#include <algorithm>
#include <array>
#include <cmath>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/slice_state.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunked.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"

namespace seqmix::detail::la {

// Tokens per GEMM of the correction: 64 rows of decayed queries ([64, K] = 16 KB at K = 64) stay
// in L1 next to the state they multiply.
constexpr index_t kSliceBlock = 64;

// The checks a slice call adds to the op's own: a dense batch with states per batch row (a
// slice is one piece of one sequence per row; packing and slots belong to the op's serving
// path), no per-token states, and the transition [B,HV,K]. `correcting`: the initial state is
// the slice's true initial state and the final state is updated in place, so they must differ.
inline void check_slice_call(const ArgCheck& check, const SequenceBatch& batch, bool reverse,
                             const ConstView<float, 4>& initial, const TensorView<float, 4>& final_state,
                             bool token_states, const Dims& d, bool correcting) {
  check_slice_states(check, batch, reverse, token_states, initial, final_state,
                     std::array<index_t, 4>{d.B, d.HV, d.Kf, d.V}, "B,HV,Kf,V", correcting);
}

// The slice's transition of one head: log_decay[c] = sum_t max(g_t[c], kGateFloor) (the floor
// the prefill applies), zeros when the head has no gate.
inline void head_log_decay(const HeadProblem& p, const TensorView<float, 1>& log_decay) {
  const index_t K = log_decay.size(0);
  for (index_t c = 0; c < K; ++c) log_decay(c) = 0.f;
  if (!p.gated()) return;
  for (index_t t = 0; t < p.T(); ++t)
    for (index_t c = 0; c < K; ++c) log_decay(c) += std::max(p.g(t, c), kGateFloor);
}

// Scratch of the correction, one per parallel block.
struct SliceWorkspace {
  SliceWorkspace(index_t Kf, index_t V) : S(Kf, V), QD(kSliceBlock, Kf), O(kSliceBlock, V), cumulative(Kf) {}
  RowMatrix S;           // [Kf,V] the head's true initial state
  RowMatrix QD;          // [kSliceBlock,Kf] scale * phi(q_t) * exp(G_t)
  RowMatrix O;           // [kSliceBlock,V] what those tokens read from S
  RowVector cumulative;  // [Kf] G so far
  RowVector q_row;       // [K] one 16-bit q row widened (grown on first use: K is not Kf)
};

// Adds to head p's outputs what its tokens read from its true initial state `initial` ([Kf,V])
// and, when final_state is given, diag(exp(G_L)) initial to it.
template <class Deferred = void>
void correct_head(const HeadProblem& p, const ConstView<float, 2>& initial, const TensorView<float, 2>& final_state,
                  deferred_t<SliceWorkspace, Deferred>& ws) {
  const index_t Kf = p.Kf(), V = p.V();
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  for (index_t r = 0; r < Kf; ++r)
    for (index_t c = 0; c < V; ++c) ws.S(r, c) = initial(r, c);
  ws.cumulative.setZero();
  auto advance = [&](index_t t) {
    for (index_t c = 0; c < Kf; ++c) ws.cumulative(c) += std::max(p.g(t, c), kGateFloor);
  };
  for (index_t t0 = 0; t0 < p.T(); t0 += kSliceBlock) {
    const index_t n = std::min(kSliceBlock, p.T() - t0);
    for (index_t i = 0; i < n; ++i) {
      float* row = ws.QD.row(i).data();
      if (ws.q_row.size() < p.K()) ws.q_row.resize(p.K());
      apply_feature_map(p.phi, p.q.row(t0 + i, ws.q_row.data()), p.scale, row);  // fp32 rows in place
      if (!p.gated()) continue;
      if (!exclusive) advance(t0 + i);
      for (index_t c = 0; c < Kf; ++c) row[c] *= std::exp(ws.cumulative(c));
      if (exclusive) advance(t0 + i);
    }
    ws.O.topRows(n).noalias() = ws.QD.topRows(n) * ws.S;
    for (index_t i = 0; i < n; ++i) {
      const TensorView<float, 1> o = p.o[t0 + i];
      for (index_t c = 0; c < V; ++c) o(c) += ws.O(i, c);
    }
  }
  if (!final_state.has_value()) return;
  for (index_t r = 0; r < Kf; ++r) {
    const float decay = p.gated() ? std::exp(ws.cumulative(r)) : 1.f;
    for (index_t c = 0; c < V; ++c) final_state(r, c) += decay * ws.S(r, c);
  }
}

// The transitions [B,HV,K] of every (batch row, value head); make_head(b, hv) as in run_prefill.
template <class MakeHead>
void run_slice_log_decays(const Dims& d, const TensorView<float, 3>& log_decay, const Executor& executor,
                          MakeHead&& make_head) {
  parallel_for(executor, d.B * d.HV, 8, [&](index_t begin, index_t end) {
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.HV, hv = task % d.HV;
      head_log_decay(make_head(b, hv), log_decay[b][hv]);
    }
  });
}

// The correction of every (batch row, value head) from initial [B,HV,Kf,V].
template <class MakeHead>
void run_slice_correction(const Dims& d, const ConstView<float, 4>& initial, const TensorView<float, 4>& final_state,
                          const Executor& executor, MakeHead&& make_head) {
  parallel_for(executor, d.B * d.HV, 1, [&](index_t begin, index_t end) {
    SliceWorkspace ws(d.Kf, d.V);
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.HV, hv = task % d.HV;
      correct_head(make_head(b, hv), initial[b][hv],
                   final_state.has_value() ? final_state[b][hv] : TensorView<float, 2>(), ws);
    }
  });
}

}  // namespace seqmix::detail::la
