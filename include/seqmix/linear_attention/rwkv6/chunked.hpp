// The fast prefill of rwkv6: the family's chunked / recurrent engines with the exclusive readout
// (o_t reads S_{t-1}; the diagonal of the intra-chunk scores is the bonus r_t . (u * k_t)).
// Multi-threaded over (sequence, value head); see detail::la::choose_algorithm for the choice.
// Dense or packed batches, states per sequence or in slots, token_states (see GatedLinearAttentionInputs).
#pragma once

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace seqmix {

namespace detail::la {

// The HeadProblem of value head hv of batch row b: o_t reads the state before token t and adds
// the bonus u for the token itself (Readout::exclusive_bonus).
inline HeadProblem rwkv6_head(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Dims& d, index_t b, index_t hv) {
  HeadProblem p;
  const index_t h = hv / d.heads_per_qk();
  p.q = in.r[b].select(1, h);
  p.k = in.k[b].select(1, h);
  p.v = in.v[b].select(1, hv);
  p.o = out.o[b].select(1, hv);
  p.g = in.g[b].select(1, head_for(in.g.size(2), hv, d));
  p.u = in.u[head_for(in.u.size(0), hv, d)];
  p.readout = Readout::exclusive_bonus;
  return p;
}

}  // namespace detail::la

/// RWKV-6 prefill: o_t reads the state before token t plus the bonus u for the token itself
/// (reference::rwkv6 is the definition). final_state may be the initial_state view (in place);
/// token_states forces the recurrent form. Threaded over (sequence, value head).
inline void rwkv6(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("rwkv6", in, out);
    return rwkv6(rev.first, rev.second, detail::forward_options(options), executor);
  }
  using namespace detail::la;
  const auto [checked_dims, seqs] = validate_rwkv6("rwkv6", in, out, options, executor);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  PrefillPlan plan{seqs, d.HV, d.K, d.K, d.V, false, options.algorithm, options.chunk_size};
  if (out.token_states.has_value()) plan.algorithm = LinearAttentionAlgorithm::recurrent;
  if (plan.algorithm == LinearAttentionAlgorithm::automatic)
    plan.algorithm = choose_algorithm(GateKind::channel, seqs.max_tokens(), d.K, d.V, options.chunk_size);
  StateIo io;
  io.initial_state = in.initial_state;
  io.final_state = out.final_state;
  io.token_states = out.token_states;
  run_prefill(plan, io, executor, [&](index_t b, index_t hv) { return rwkv6_head(in, out, d, b, hv); });
}

}  // namespace seqmix
