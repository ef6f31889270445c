// State passing across slices of one sequence for linear_attention: run a slice from a zero
// state, compose slices (compose_diagonal_slices with no decay, core/slice_state.hpp), and
// correct a slice's outputs and final state from its true initial state without rerunning it:
// o_t += (scale * phi(q_t))^T S0, final state += S0. Without a decay the transition is the
// identity, so there is no log_decay to return. Not for options.normalize (its outputs are a
// ratio: the correction needs numerator and denominator apart) nor a JRT prefix.
#pragma once

#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/diagonal_decay/slice.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"

namespace seqmix {

namespace detail::la {

inline Dims validate_linear_attention_slice(const char* op, const LinearAttentionInputs& in,
                                            const LinearAttentionOutputs& out, const LinearAttentionOptions& options,
                                            bool correcting) {
  const ArgCheck check(op);
  const Dims d = validate_linear_attention(op, in, out, options).d;
  if (options.normalize) check.fail("options.normalize", "is not supported by the slice functions");
  if (options.prefix_len != 0) check.fail("options.prefix_len", "must be 0 for the slice functions");
  check_slice_call(check, in.batch, options.reverse, in.initial_state, out.final_state, out.token_states.has_value(), d,
                   correcting);
  return d;
}

}  // namespace detail::la

/// Runs linear_attention on one slice of longer sequences from a zero state: out.o gets the
/// zero-state outputs and out.final_state [B,HV,Kf,V] (required) the local final state. The
/// transition is the identity. A dense batch only, no in.initial_state, no token states, no
/// normalize, no prefix. See gated_linear_attention_slice for the protocol.
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void linear_attention_slice(const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                            const LinearAttentionOptions& options = {},
                            const Executor& executor = serial_executor()) {
  detail::la::validate_linear_attention_slice("linear_attention_slice", in, out, options, false);
  linear_attention<Deferred>(in, out, options, executor);
}

/// Finishes a slice run by linear_attention_slice: in.initial_state [B,HV,Kf,V] (required) is the
/// slice's true initial state S0, out.o gains (scale * phi(q_t))^T S0 and out.final_state
/// (optional, not overlapping initial_state) gains S0. Reads q only.
inline void linear_attention_slice_correct(const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                                           const LinearAttentionOptions& options = {},
                                           const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "linear_attention_slice_correct";
  const Dims d = validate_linear_attention_slice(op, in, out, options, true);
  const float scale = check_scale(ArgCheck(op), options.scale, d.K);
  run_slice_correction(d, in.initial_state, out.final_state, executor, [&](index_t b, index_t hv) {
    return linear_attention_head(in.q, in.k, in.v, out.o, options, scale, d, b, hv);
  });
}

}  // namespace seqmix
