// State passing across slices of one sequence for rwkv6: run a slice from a zero state with its
// transition, compose slices (compose_diagonal_slices, core/slice_state.hpp), and correct a
// slice's outputs and final state from its true initial state without rerunning it. rwkv6 reads
// the state before each token, so token t of a slice reads exp(G_{t-1}) S0 (the bonus term does
// not involve the state); diagonal_decay/slice.hpp has the derivation.
#pragma once

#include <type_traits>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/diagonal_decay/slice.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"

namespace seqmix {

/// Runs rwkv6 on one slice of longer sequences from a zero state: out.o gets the zero-state
/// outputs, out.final_state [B,HV,K,V] (required) the local final state and log_decay [B,HV,K]
/// the transition (the sum of the slice's log-decays g). A dense batch only, no
/// in.initial_state, no token_states. See gated_linear_attention_slice for the protocol. r/k/v
/// may be stored as float, seqmix::bf16 or seqmix::f16 (Rwkv6InputsOf).
template <class T>
void rwkv6_slice(const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const TensorView<float, 3>& log_decay,
                 const Rwkv6Options& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "rwkv6_slice";
  const ArgCheck check(op);
  const Dims d = validate_rwkv6(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, options.reverse, in.initial_state, out.final_state, out.token_states.has_value(), d,
                   false);
  check.shape("log_decay", log_decay, std::array<index_t, 3>{d.B, d.HV, d.K}, "B,HV,K");
  check_no_overlap(check, "log_decay", log_decay, in.r, in.k, in.v, in.g, in.u, out.o, out.final_state);
  detail::rwkv6_prefill(in, out, options, executor);
  run_slice_log_decays(d, log_decay, executor, [&](index_t b, index_t hv) { return rwkv6_head(in, out, d, b, hv); });
}

/// Finishes a slice run by rwkv6_slice: in.initial_state [B,HV,K,V] (required) is the slice's
/// true initial state, out.o gains what each token reads from it and out.final_state (optional,
/// not overlapping initial_state) goes from the local to the true final state. Reads r and g
/// (16-bit r rows widened one at a time).
template <class T>
void rwkv6_slice_correct(const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                         const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "rwkv6_slice_correct";
  const ArgCheck check(op);
  const Dims d = validate_rwkv6(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, options.reverse, in.initial_state, out.final_state, out.token_states.has_value(), d,
                   true);
  run_slice_correction(d, in.initial_state, out.final_state, executor,
                       [&](index_t b, index_t hv) { return rwkv6_head(in, out, d, b, hv); });
}

/// rwkv6_slice on fp32 r/k/v (the overload braced argument lists pick).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md);
// over a bool so that `rwkv6_slice<float>` still names the form above.
template <bool Deferred = true>
void rwkv6_slice(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const TensorView<float, 3>& log_decay,
                 const Rwkv6Options& options = {}, const Executor& executor = serial_executor()) {
  rwkv6_slice<deferred_t<float, std::bool_constant<Deferred>>>(in, out, log_decay, options, executor);
}

/// rwkv6_slice_correct on fp32 r/k/v (the overload braced argument lists pick).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md);
// over a bool so that `rwkv6_slice_correct<float>` still names the form above.
template <bool Deferred = true>
void rwkv6_slice_correct(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                         const Executor& executor = serial_executor()) {
  rwkv6_slice_correct<deferred_t<float, std::bool_constant<Deferred>>>(in, out, options, executor);
}

}  // namespace seqmix
