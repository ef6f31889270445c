// The decode step of rwkv6: one token per batch row, the state [B,HV,K,V] (or rows of a pool
// [S,HV,K,V] through batch.state_indices) updated in place, without allocating, by
// the family's recurrent kernel (read S_{t-1}, add the bonus, then decay and absorb k v^T).
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace seqmix {

namespace detail {

// The step on r/k/v stored as T (float, bf16, f16): the token's rows are widened into the
// recurrent kernel's scratch as it loads them.
template <class T>
void rwkv6_step_rows(const Rwkv6StepInputsOf<T>& in, const Rwkv6StepOutputs& out, const Executor& executor) {
  using namespace la;
  static const ArgCheck check("rwkv6_step");  // built once per T: a step allocates nothing
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

}  // namespace detail

/// RWKV-6 decode step: one token per batch row, out.state (or pool rows through
/// in.batch.state_indices) read for o, then decayed and updated in place. No allocation.
inline void rwkv6_step(const Rwkv6StepInputs& in, const Rwkv6StepOutputs& out, const Rwkv6Options& options = {},
                       const Executor& executor = serial_executor()) {
  (void)options;
  detail::rwkv6_step_rows(in, out, executor);
}

/// The same on r/k/v stored as seqmix::bf16 or seqmix::f16 (g, u, state and output fp32): a
/// 16-bit prefill followed by 16-bit steps equals one 16-bit prefill, to rounding.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void rwkv6_step(const Rwkv6StepInputsOf<H>& in, const Rwkv6StepOutputs& out, const Rwkv6Options& options = {},
                const Executor& executor = serial_executor()) {
  (void)options;
  detail::rwkv6_step_rows(in, out, executor);
}

}  // namespace seqmix
