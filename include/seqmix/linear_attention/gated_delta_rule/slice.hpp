// State passing across slices of one sequence for gated_delta_rule (Gated DeltaNet, KDA) and
// delta_rule (DeltaNet): a slice runs from a zero state and returns its readout and [K,K]
// transition (delta_update/slice.hpp derives them); compose_matrix_slices composes slices and
// correct_matrix_slice applies a slice's true initial state (core/slice_state.hpp).
#pragma once

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_update/slice.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"

namespace seqmix {

namespace delta_update {

// The slice protocol on a DeltaCall: the zero-state run, then the identity run into readout /
// transition with the same gates, betas, keys, queries and options. E: the storage type of q/k/v;
// the identity run's zero values are a stride-0 view of one E zero.
template <class E>
void run_delta_slice(const ArgCheck& check, const DeltaCallOf<E>& c, const TensorView<float, 4>& readout,
                     const TensorView<float, 4>& transition, const Executor& executor) {
  const detail::la::Dims d = validate_delta(check, c, executor).d;
  check_matrix_slice(check, c.batch, c.initial_state, c.final_state, c.token_states.has_value(), d, readout,
                     transition, c.q, c.k, c.v, c.beta, c.g, c.g_scalar, c.o);
  fast_delta(check, c, executor);
  const IdentityRun run(d.B, d.T, d.HV, d.K);
  DeltaCallOf<E> identity = c;
  const E zero = E(0.f);
  identity.v = ConstView<E, 4>(&zero, run.zero_values.shape(), {0, 0, 0, 0});
  identity.initial_state = run.identity;
  identity.o = readout;
  identity.final_state = transition;
  fast_delta(check, identity, executor);
}

}  // namespace delta_update

/// Runs gated_delta_rule on one slice of longer sequences from a zero state: out.o gets the
/// zero-state outputs, out.final_state [B,HV,K,V] (required) the local final state, readout
/// [B,T,HV,K] what each token's output reads per unit of initial state (o_t gains
/// readout_t^T S0) and transition [B,HV,K,K] the product of the slice's per-token transitions
/// (the final state gains transition S0). A dense batch only (in.batch empty), no
/// in.initial_state, no token_states. Costs about two prefills (the second with V = K). Compose
/// slices with compose_matrix_slices; finish one with correct_matrix_slice.
/// q/k/v may be stored as float, seqmix::bf16 or seqmix::f16 (GatedDeltaRuleInputsOf).
template <class T>
void gated_delta_rule_slice(const GatedDeltaRuleInputsOf<T>& in, const GatedDeltaRuleOutputs& out,
                            const TensorView<float, 4>& readout, const TensorView<float, 4>& transition,
                            const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  static const ArgCheck check("gated_delta_rule_slice");
  detail::check_slice_forward(check, options.reverse);
  delta_update::run_delta_slice(check, delta_update::gated_call(in, out, options), readout, transition, executor);
}

/// delta_rule's form of gated_delta_rule_slice (no decay): same outputs and protocol, q/k/v
/// stored as float, seqmix::bf16 or seqmix::f16 (DeltaRuleInputsOf).
template <class T>
void delta_rule_slice(const DeltaRuleInputsOf<T>& in, const DeltaRuleOutputs& out, const TensorView<float, 4>& readout,
                      const TensorView<float, 4>& transition, const DeltaRuleOptions& options = {},
                      const Executor& executor = serial_executor()) {
  static const ArgCheck check("delta_rule_slice");
  detail::check_slice_forward(check, options.reverse);
  delta_update::run_delta_slice(check, delta_update::ungated_call(in, out, options), readout, transition, executor);
}

/// gated_delta_rule over long sequences split by position across the executor's threads: each of
/// `slices` pieces (0: one per thread; cut at T*i/slices) runs gated_delta_rule_slice at the same
/// time, the pieces' initial states follow by composing their summaries in order
/// (compose_matrix_slices), and each piece is corrected (correct_matrix_slice); the result
/// equals one gated_delta_rule call to rounding. The slices cost about twice a prefill in all
/// (the identity run), so it gains over one call only from 3 threads on, or when B * HV is too
/// small to keep the threads busy. Scratch: a [B,T,HV,K] readout, and two [B,HV,K,V] states and
/// a [B,HV,K,K] transition per slice. A dense batch only, no token_states; final_state may be
/// the initial_state view. q/k/v may be stored as float, seqmix::bf16 or seqmix::f16 (the pieces
/// are views of them, not copies).
template <class T>
void context_parallel_gated_delta_rule(const GatedDeltaRuleInputsOf<T>& in, const GatedDeltaRuleOutputs& out,
                                       const GatedDeltaRuleOptions& options = {},
                                       const Executor& executor = serial_executor(), index_t slices = 0) {
  static const ArgCheck check("context_parallel_gated_delta_rule");
  const detail::la::Dims d = delta_update::validate_delta(check, delta_update::gated_call(in, out, options), executor).d;
  detail::check_context_parallel_call(check, in.batch, options.reverse, out.token_states.has_value());
  const index_t P = detail::context_slices(slices, d.T, executor);
  if (P <= 1) {
    gated_delta_rule(in, out, options, executor);
    return;
  }
  Tensor<float, 4> readout({d.B, d.T, d.HV, d.K});
  detail::context_parallel_states(
      d.T, P, executor, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}, std::array<index_t, 4>{d.B, d.HV, d.K, d.K},
      in.initial_state, out.final_state,
      [&](index_t begin, index_t n, const TensorView<float, 4>& local, const TensorView<float, 4>& transition) {
        GatedDeltaRuleInputsOf<T> s = in;
        s.q = in.q.slice(1, begin, n), s.k = in.k.slice(1, begin, n), s.v = in.v.slice(1, begin, n);
        s.beta = in.beta.slice(1, begin, n);
        if (in.g.has_value()) s.g = in.g.slice(1, begin, n);
        if (in.g_scalar.has_value()) s.g_scalar = in.g_scalar.slice(1, begin, n);
        s.initial_state = {};
        gated_delta_rule_slice(s, {out.o.slice(1, begin, n), local}, readout.view().slice(1, begin, n), transition,
                               options);
      },
      [](const TensorView<float, 4>& start, const TensorView<float, 4>& transition, const TensorView<float, 4>& local,
         const TensorView<float, 4>& next) { compose_matrix_slices({}, start, transition, local, {}, next); },
      [&](index_t, index_t begin, index_t n, const TensorView<float, 4>& start, const TensorView<float, 4>& transition,
          const TensorView<float, 4>& final_state) {
        correct_matrix_slice(readout.view().slice(1, begin, n), transition, start, out.o.slice(1, begin, n),
                             final_state);
      });
}

/// gated_delta_rule_slice on fp32 q/k/v (the overload braced argument lists pick).
inline void gated_delta_rule_slice(const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                                   const TensorView<float, 4>& readout, const TensorView<float, 4>& transition,
                                   const GatedDeltaRuleOptions& options = {},
                                   const Executor& executor = serial_executor()) {
  gated_delta_rule_slice<float>(in, out, readout, transition, options, executor);
}

/// delta_rule_slice on fp32 q/k/v (the overload braced argument lists pick).
inline void delta_rule_slice(const DeltaRuleInputs& in, const DeltaRuleOutputs& out, const TensorView<float, 4>& readout,
                             const TensorView<float, 4>& transition, const DeltaRuleOptions& options = {},
                             const Executor& executor = serial_executor()) {
  delta_rule_slice<float>(in, out, readout, transition, options, executor);
}

/// context_parallel_gated_delta_rule on fp32 q/k/v (the overload braced argument lists pick).
inline void context_parallel_gated_delta_rule(const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                                              const GatedDeltaRuleOptions& options = {},
                                              const Executor& executor = serial_executor(), index_t slices = 0) {
  context_parallel_gated_delta_rule<float>(in, out, options, executor, slices);
}

}  // namespace seqmix
