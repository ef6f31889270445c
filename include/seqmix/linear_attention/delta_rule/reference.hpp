// delta_rule (DeltaNet), SPEC section 4: the delta rule without decay. This header holds the
// argument structs, the options and the readable definition seqmix::reference::delta_rule.
// Fast prefill: chunked.hpp; decode step: step.hpp. Every form is the gated_delta_rule machinery
// with the gate left out (../gated_delta_rule/), so the two cannot drift apart.
//
//   S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T      S [K,V] per (batch, value head)
//   o_t = scale * S_t^T q_t                                  the state is updated before it is read
//
// q/k have HK heads, v / beta have HV (a multiple of HK): value head hv uses q/k head hv / (HV/HK).
// Serving (batch, token_states): as gated_delta_rule (../gated_delta_rule/reference.hpp).
#pragma once

#include <optional>
#include <type_traits>

#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"

namespace seqmix {

/// Options of delta_rule and delta_rule_step (DeltaNet, docs/operators.md section 4).
struct DeltaRuleOptions {
  /// Multiplies q; default 1/sqrt(K).
  std::optional<float> scale;
  /// Normalize q and k inside the kernel (QkNorm::l2), or use them as given.
  QkNorm qk_norm = QkNorm::none;
  /// Tokens per chunk of the chunked WY form; see GatedDeltaRuleOptions::chunk_size (the same
  /// default, measured for this gate too).
  index_t chunk_size = 32;
  /// Prefill algorithm: chunked WY form, recurrent, or the measured choice (the step ignores it).
  DeltaAlgorithm algorithm = DeltaAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// bf16 dot-product GEMMs in the chunked WY form; see GatedDeltaRuleOptions::bf16_compute.
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

/// Prefill arguments of delta_rule. Optional views are empty when not given; packed batches and
/// state slots as in GatedDeltaRuleInputs (core/batch.hpp). T is the storage type of q, k and v:
/// float (DeltaRuleInputs), or seqmix::bf16 / seqmix::f16, widened row by row as each chunk or
/// token is loaded; beta, states and outputs stay fp32.
template <class T>
struct DeltaRuleInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "DeltaRuleInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> q;                  ///< [B,T,HK,K]
  ConstView<T, 4> k;                  ///< [B,T,HK,K]
  ConstView<T, 4> v;                  ///< [B,T,HV,V], HV a multiple of HK
  ConstView<float, 3> beta;           ///< [B,T,HV]
  ConstView<float, 4> initial_state = {}; ///< [N,HV,K,V] or the pool [S,HV,K,V], optional (zeros if absent)
  SequenceBatch batch = {};           ///< optional: cu_seqlens, state_indices, has_initial_state
};

/// Prefill arguments with fp32 q/k/v (DeltaRuleInputsOf).
using DeltaRuleInputs = DeltaRuleInputsOf<float>;

/// o must not overlap an input; final_state may be the same view as initial_state.
struct DeltaRuleOutputs {
  TensorView<float, 4> o;             ///< [B,T,HV,V]
  TensorView<float, 4> final_state = {}; ///< [N,HV,K,V] or the pool, optional
  TensorView<float, 5> token_states = {}; ///< [B,T,HV,K,V], optional: the state after each token
};

/// Decode-step arguments of delta_rule_step: one token per batch row. T is the storage type of
/// q, k and v (float, seqmix::bf16 or seqmix::f16); beta, state and output stay fp32.
template <class T>
struct DeltaRuleStepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "DeltaRuleStepInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 3> q;         ///< [B,HK,K]
  ConstView<T, 3> k;         ///< [B,HK,K]
  ConstView<T, 3> v;         ///< [B,HV,V]
  ConstView<float, 2> beta;  ///< [B,HV]
  SequenceBatch batch = {};  ///< optional: state_indices [B] (-1 = padding row), has_initial_state [B]
};

/// Decode-step arguments with fp32 q/k/v (DeltaRuleStepInputsOf).
using DeltaRuleStepInputs = DeltaRuleStepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct DeltaRuleStepOutputs {
  TensorView<float, 3> o;      ///< [B,HV,V]
  TensorView<float, 4> state;  ///< [B,HV,K,V] or the pool [S,HV,K,V], updated in place (required)
};

namespace delta_update {

template <class E>
DeltaCallOf<E> ungated_call(const DeltaRuleInputsOf<E>& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options) {
  DeltaCallOf<E> c;
  c.q = in.q, c.k = in.k, c.v = in.v, c.beta = in.beta;
  c.initial_state = in.initial_state, c.batch = in.batch;
  c.o = out.o, c.final_state = out.final_state, c.token_states = out.token_states;
  c.scale = options.scale, c.norm = options.qk_norm, c.chunk = options.chunk_size, c.algorithm = options.algorithm;
  c.bf16_compute = options.bf16_compute;
  return c;
}

}  // namespace delta_update

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class E>
std::pair<DeltaRuleInputsOf<E>, DeltaRuleOutputs> reversed_call(const char* op, DeltaRuleInputsOf<E> in,
                                                                DeltaRuleOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, in.beta, out.o, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, state in double. final_state may alias initial_state. q/k/v
/// may be stored as float, bf16 or f16 (DeltaRuleInputsOf): each value is widened where it is read.
template <class T>
void delta_rule(const DeltaRuleInputsOf<T>& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::delta_rule", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::delta_rule<T>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  delta_update::reference_delta("reference::delta_rule", delta_update::ungated_call(in, out, options), executor);
}

/// The definition on fp32 q/k/v (the overload braced argument lists pick).
inline void delta_rule(const DeltaRuleInputs& in, const DeltaRuleOutputs& out, const DeltaRuleOptions& options = {},
                       const Executor& executor = serial_executor()) {
  delta_rule<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
