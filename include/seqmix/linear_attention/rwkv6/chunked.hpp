// The fast prefill of rwkv6: the family's chunked / recurrent engines with the exclusive readout
// (o_t reads S_{t-1}; the diagonal of the intra-chunk scores is the bonus r_t . (u * k_t)).
// Multi-threaded over (sequence, value head); see detail::la::choose_algorithm for the choice.
// Dense or packed batches, states per sequence or in slots, token_states (see GatedLinearAttentionInputs).
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"

namespace seqmix {

namespace detail::la {

// The HeadProblem of value head hv of batch row b: o_t reads the state before token t and adds
// the bonus u for the token itself (Readout::exclusive_bonus).
template <class T>
HeadProblem rwkv6_head(const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const Dims& d, index_t b, index_t hv) {
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

namespace detail {

// The prefill on r/k/v stored as T (float, bf16, f16): the rows are widened as each chunk or
// token is loaded (InputRows), everything after that is the fp32 computation.
template <class T>
void rwkv6_prefill(const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const Rwkv6Options& options,
                   const Executor& executor) {
  if (options.reverse) {
    const auto rev = reversed_call("rwkv6", in, out);
    return rwkv6_prefill(rev.first, rev.second, forward_options(options), executor);
  }
  using namespace la;
  const auto [checked_dims, seqs] = validate_rwkv6("rwkv6", in, out, options, executor);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  PrefillPlan plan{seqs, d.HV, d.K, d.K, d.V, false, options.algorithm, options.chunk_size};
  if (out.token_states.has_value()) plan.algorithm = LinearAttentionAlgorithm::recurrent;
  if (plan.algorithm == LinearAttentionAlgorithm::automatic)
    plan.algorithm = choose_algorithm(GateKind::channel, seqs.max_tokens(), d.K,
                                      task_columns(seqs, d.HV, d.V, executor), options.chunk_size,
                                      false);  // rwkv6 has no bf16 dot products
  StateIo io;
  io.initial_state = in.initial_state;
  io.final_state = out.final_state;
  io.token_states = out.token_states;
  run_prefill(plan, io, executor, [&](index_t b, index_t hv) { return rwkv6_head(in, out, d, b, hv); });
}

}  // namespace detail

/// RWKV-6 prefill: o_t reads the state before token t plus the bonus u for the token itself
/// (reference::rwkv6 is the definition). final_state may be the initial_state view (in place);
/// token_states forces the recurrent form. Threaded over (sequence, value head).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void rwkv6(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
           const Executor& executor = serial_executor()) {
  detail::rwkv6_prefill<deferred_t<float, Deferred>>(in, out, options, executor);
}

/// The same on r/k/v stored as seqmix::bf16 or seqmix::f16 (g, u, states and outputs fp32):
/// each chunk's (or token's) rows are widened as they are loaded, never the whole tensor.
/// docs/operators.md (RWKV-6) gives the accuracy against fp32 inputs.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void rwkv6(const Rwkv6InputsOf<H>& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
           const Executor& executor = serial_executor()) {
  detail::rwkv6_prefill(in, out, options, executor);
}

}  // namespace seqmix
