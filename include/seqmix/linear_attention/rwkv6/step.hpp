// The decode step of rwkv6: one token per batch row, the state [B,HV,K,V] updated in place by
// the family's recurrent kernel (read S_{t-1}, add the bonus, then decay and absorb k v^T).
#pragma once

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace seqmix {

inline void rwkv6_step(const Rwkv6StepInputs& in, const Rwkv6StepOutputs& out, const Rwkv6Options& options = {},
                       const Executor& executor = serial_executor()) {
  (void)options;
  using namespace detail::la;
  const Dims d = validate_rwkv6_step("rwkv6_step", in, out, executor);
  run_step(d.B, d.HV, d.K, d.K, d.V, false, out.state, TensorView<float, 3>(), executor, [&](index_t b, index_t hv) {
    HeadProblem p;
    const index_t h = hv / d.heads_per_qk();
    p.q = as_token(in.r[b][h]);
    p.k = as_token(in.k[b][h]);
    p.v = as_token(in.v[b][hv]);
    p.o = as_token(out.o[b][hv]);
    p.g = as_token(in.g[b][head_for(in.g.size(1), hv, d)]);
    p.u = in.u[head_for(in.u.size(0), hv, d)];
    p.readout = Readout::exclusive_bonus;
    return p;
  });
}

}  // namespace seqmix
