// The decode step of rwkv6: one token per batch row, the state [B,HV,K,V] (or rows of a pool
// [S,HV,K,V] through batch.state_indices) updated in place, without allocating, by
// the family's recurrent kernel (read S_{t-1}, add the bonus, then decay and absorb k v^T).
#pragma once

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace seqmix {

/// RWKV-6 decode step: one token per batch row, out.state (or pool rows through
/// in.batch.state_indices) read for o, then decayed and updated in place. No allocation.
inline void rwkv6_step(const Rwkv6StepInputs& in, const Rwkv6StepOutputs& out, const Rwkv6Options& options = {},
                       const Executor& executor = serial_executor()) {
  (void)options;
  using namespace detail::la;
  static const ArgCheck check("rwkv6_step");
  const Dims d = validate_rwkv6_step(check, in, out, executor);
  run_step(d.B, d.HV, d.K, d.K, d.V, false, out.state, TensorView<float, 3>(), in.batch, executor,
           [&](index_t b, index_t hv) {
               HeadProblem p = step_head(in.r, in.k, in.v, out.o, d, b, hv);
               p.g = as_token(in.g[b][head_for(in.g.size(1), hv, d)]);
               p.u = in.u[head_for(in.u.size(0), hv, d)];
               p.readout = Readout::exclusive_bonus;
               return p;
           });
}

}  // namespace seqmix
