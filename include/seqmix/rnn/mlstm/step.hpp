// mlstm, decode step: one token per batch row and head, the state (c, n, m) updated in place.
#pragma once

#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/mlstm/chunked.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"

namespace seqmix {

/// One mLSTM token per (batch row, head): reads and updates c [B,NH,DK,DV], n [B,NH,DK] and
/// m [B,NH] in place, writes h [B,NH,DV]. Equal to mlstm() over one token. Threaded over
/// (batch, head) rows.
inline void mlstm_step(const MlstmStepInputs& in, const MlstmStepOutputs& out, const MlstmOptions& options = {},
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("mlstm_step");
  const detail::MlstmDims d = detail::validate_mlstm_step(check, in, out, options);
  // Contiguous state rows are updated where they are; other layouts go through the scratch.
  const bool direct = out.c.stride(3) == 1 && out.c.stride(2) == d.DV && out.n.stride(2) == 1;
  parallel_for(executor, d.B * d.NH, 1, [&](index_t begin, index_t end) {
    detail::MlstmState s(direct ? 0 : d.DK, d.DV);
    s.q.resize(static_cast<std::size_t>(d.DK)), s.k.resize(static_cast<std::size_t>(d.DK));
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.NH, hd = row % d.NH;
      for (index_t r = 0; r < d.DK; ++r) {
        s.q[static_cast<std::size_t>(r)] = d.scale * in.q(b, hd, r);
        s.k[static_cast<std::size_t>(r)] = in.k(b, hd, r);
      }
      for (index_t c = 0; c < d.DV; ++c) s.v[static_cast<std::size_t>(c)] = in.v(b, hd, c);
      float m = out.m(b, hd);
      if (direct) {
        detail::mlstm_token(s, out.c.ptr(b, hd), out.n.ptr(b, hd), m, d.DK, d.DV, in.i(b, hd), in.f(b, hd), options.eps,
                            out.h.ptr(b, hd), out.h.stride(2));
      } else {
        for (index_t r = 0; r < d.DK; ++r) {
          s.n[static_cast<std::size_t>(r)] = out.n(b, hd, r);
          for (index_t c = 0; c < d.DV; ++c) s.C[static_cast<std::size_t>(r * d.DV + c)] = out.c(b, hd, r, c);
        }
        detail::mlstm_token(s, s.C.data(), s.n.data(), m, d.DK, d.DV, in.i(b, hd), in.f(b, hd), options.eps,
                            out.h.ptr(b, hd), out.h.stride(2));
        for (index_t r = 0; r < d.DK; ++r) {
          out.n(b, hd, r) = s.n[static_cast<std::size_t>(r)];
          for (index_t c = 0; c < d.DV; ++c) out.c(b, hd, r, c) = s.C[static_cast<std::size_t>(r * d.DV + c)];
        }
      }
      out.m(b, hd) = m;
    }
  });
}

}  // namespace seqmix
