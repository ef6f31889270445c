// mlstm, decode step: one token per batch row and head, the state (c, n, m) updated in place.
#pragma once

#include <optional>

#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/mlstm/chunked.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"

namespace seqmix {
namespace detail {

// The step's per-thread scratch (one token's q, k, v and numerator; C and n only for strided
// state layouts), built on a thread's first call and rebuilt only when the sizes change: a step
// makes no heap allocation after warm-up (tests/alloc/alloc_cells.cpp).
inline MlstmState& mlstm_step_scratch(index_t DK, index_t DV, bool direct) {
  thread_local std::optional<MlstmState> scratch;
  thread_local bool scratch_direct = false;
  if (!scratch || scratch->q.size() != static_cast<std::size_t>(DK) ||
      scratch->v.size() != static_cast<std::size_t>(DV) || scratch_direct != direct) {
    scratch.emplace(direct ? 0 : DK, DV);
    scratch->q.resize(static_cast<std::size_t>(DK)), scratch->k.resize(static_cast<std::size_t>(DK));
    scratch_direct = direct;
  }
  return *scratch;
}

}  // namespace detail

/// One mLSTM token per (batch row, head): reads and updates c [B,NH,DK,DV], n [B,NH,DK] and
/// m [B,NH] in place, writes h [B,NH,DV]. Equal to mlstm() over one token. Threaded over
/// (batch, head) rows. With in.batch.state_indices the states are pools [P,...] and row b
/// updates pool row state_indices[b] (-1: padding, nothing touched); has_initial_state[b] false
/// zeroes that row's state first. No heap allocation after a thread's first call.
inline void mlstm_step(const MlstmStepInputs& in, const MlstmStepOutputs& out, const MlstmOptions& options = {},
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("mlstm_step");
  const detail::MlstmDims d = detail::validate_mlstm_step(check, in, out, options);
  // Contiguous state rows are updated where they are; other layouts go through the scratch.
  const bool direct = out.c.stride(3) == 1 && out.c.stride(2) == d.DV && out.n.stride(2) == 1;
  parallel_for(executor, d.B * d.NH, 1, [&](index_t begin, index_t end) {
    detail::MlstmState& s = detail::mlstm_step_scratch(d.DK, d.DV, direct);
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.NH, hd = row % d.NH;  // token row b, its state row p
      const index_t p = in.batch.state_indices.has_value() ? in.batch.state_indices[b] : b;
      if (p < 0) continue;  // padding row: h and state untouched
      if (in.batch.has_initial_state.has_value() && !in.batch.has_initial_state[b]) {
        for (index_t r = 0; r < d.DK; ++r) {
          out.n(p, hd, r) = 0.f;
          for (index_t c = 0; c < d.DV; ++c) out.c(p, hd, r, c) = 0.f;
        }
        out.m(p, hd) = 0.f;
      }
      for (index_t r = 0; r < d.DK; ++r) {
        s.q[static_cast<std::size_t>(r)] = d.scale * in.q(b, hd, r);
        s.k[static_cast<std::size_t>(r)] = in.k(b, hd, r);
      }
      for (index_t c = 0; c < d.DV; ++c) s.v[static_cast<std::size_t>(c)] = in.v(b, hd, c);
      float m = out.m(p, hd);
      if (direct) {
        detail::mlstm_token(s, out.c.ptr(p, hd), out.n.ptr(p, hd), m, d.DK, d.DV, in.i(b, hd), in.f(b, hd), options.eps,
                            out.h.ptr(b, hd), out.h.stride(2));
      } else {
        for (index_t r = 0; r < d.DK; ++r) {
          s.n[static_cast<std::size_t>(r)] = out.n(p, hd, r);
          for (index_t c = 0; c < d.DV; ++c) s.C[static_cast<std::size_t>(r * d.DV + c)] = out.c(p, hd, r, c);
        }
        detail::mlstm_token(s, s.C.data(), s.n.data(), m, d.DK, d.DV, in.i(b, hd), in.f(b, hd), options.eps,
                            out.h.ptr(b, hd), out.h.stride(2));
        for (index_t r = 0; r < d.DK; ++r) {
          out.n(p, hd, r) = s.n[static_cast<std::size_t>(r)];
          for (index_t c = 0; c < d.DV; ++c) out.c(p, hd, r, c) = s.C[static_cast<std::size_t>(r * d.DV + c)];
        }
      }
      out.m(p, hd) = m;
    }
  });
}

}  // namespace seqmix
