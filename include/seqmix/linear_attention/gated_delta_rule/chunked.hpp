// The fast prefill of gated_delta_rule (scalar gate: Gated DeltaNet; per-channel gate: KDA).
// Multi-threaded over (sequence, value head) items, longest sequences first, each split into
// blocks of value columns when the items alone leave threads idle; per item either
// the chunked WY form (delta_update/wy.hpp) or the fused recurrent kernel
// (delta_update/recurrent.hpp), chosen per sequence by delta_update::choose_delta_algorithm,
// which says why. Packed sequences each run on their own chunk grid, so a short one costs about
// its tokens. Workspace: one state [K,V] and (for chunked items) one chunk workspace (about
// (10C + 2V) x K floats for chunk size C, the scores' transposed K included) per thread, kept
// across calls (delta_update/sequences.hpp). The definition is in reference.hpp.
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/delta_update/driver.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"

namespace seqmix {

namespace delta_update {

// The fast prefill of a validated-on-entry call (gated or not): one item per (sequence, value
// head), longest sequences first, split into blocks of value columns when there are fewer
// items than threads, the chunked items' V-independent chunk factors then computed once in a first
// pass (run_delta_items). Each sequence picks its algorithm on its own length (as a
// call of that sequence alone would) and the value columns each task runs (run_delta_items);
// token_states take the recurrent kernel. E: the storage
// type of q/k/v; 16-bit rows are widened as each chunk or token is loaded (DeltaHead). The
// elements of beta and the gate are checked by run_delta_items before anything is written, in its
// chunk-factor pass when it has one (ElementChecks::caller).
template <class E>
void fast_delta(const ArgCheck& check, const DeltaCallOf<E>& c, const Executor& executor) {
  const DeltaProblem pr = validate_delta(check, c, executor, ElementChecks::caller);
  const Dims& d = pr.d;
  const bool channel = c.gated && c.gate == DeltaGate::channel;
  run_delta_items(executor, pr.map, d.HV, d.K, d.V, c.chunk, [&](index_t n, index_t hv, ValueColumns cols) {
    const SequenceSpan span = pr.map[n];
    const DeltaCallOf<E> one = sequence_call(c, span);
    DeltaItem item;
    DeltaHead& p = item.p;
    const index_t h = hv / d.heads_per_qk();
    p.q = one.q[0].select(1, h);
    p.k = one.k[0].select(1, h);
    p.v = one.v[0].select(1, hv).slice(1, cols.begin, cols.width);
    p.beta = one.beta[0].select(1, hv);
    p.o = one.o[0].select(1, hv).slice(1, cols.begin, cols.width);
    p.scale = pr.scale;
    p.norm = c.norm;
    p.bf16_dot = c.bf16_compute == Bf16Compute::dot;
    if (channel) {
      p.g = one.g[0].select(1, hv);
    } else if (c.gated) {
      const ConstView<float, 1> g = one.g_scalar[0].select(1, hv);
      p.g = ConstView<float, 2>(g.data(), {span.tokens, d.K}, {g.stride(0), 0});
      p.scalar_gate = true;
    }
    if (one.initial_state.has_value()) item.initial = one.initial_state[0][hv].slice(1, cols.begin, cols.width);
    if (one.final_state.has_value()) item.final_state = one.final_state[0][hv].slice(1, cols.begin, cols.width);
    if (one.token_states.has_value())
      item.token_states = one.token_states[0].select(1, hv).slice(2, cols.begin, cols.width);
    item.algorithm = c.algorithm;  // automatic: run_delta_items chooses on the value block that runs
    item.shape = {span.tokens, d.K, d.V, d.HV, c.chunk, c.bf16_compute, static_cast<index_t>(sizeof(E)), channel};
    if (item.token_states.has_value()) item.algorithm = DeltaAlgorithm::recurrent;
    return item;
  }, [&] { check_delta_elements(check, c, executor); });
}

}  // namespace delta_update

namespace detail {

// The prefill on q/k/v stored as T (float, bf16, f16).
template <class T>
void gated_delta_rule_prefill(const GatedDeltaRuleInputsOf<T>& in, const GatedDeltaRuleOutputs& out,
                              const GatedDeltaRuleOptions& options, const Executor& executor) {
  if (options.reverse) {
    const auto rev = reversed_call("gated_delta_rule", in, out);
    return gated_delta_rule_prefill(rev.first, rev.second, forward_options(options), executor);
  }
  static const ArgCheck check("gated_delta_rule");
  delta_update::fast_delta(check, delta_update::gated_call(in, out, options), executor);
}

}  // namespace detail

/// Gated DeltaNet / KDA prefill. final_state may be the initial_state view (updated in place).
inline void gated_delta_rule(const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                             const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::gated_delta_rule_prefill(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (beta, gates, states and outputs fp32):
/// the chunked WY form widens each chunk's rows into the operand buffers it fills anyway, the
/// recurrent form each token's, never the whole tensor. With options.bf16_compute = dot the
/// chunked form's GEMMs then run on bf16 dot products as for fp32 inputs. docs/operators.md
/// (section 4, half storage) gives the accuracy against fp32 inputs.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void gated_delta_rule(const GatedDeltaRuleInputsOf<H>& in, const GatedDeltaRuleOutputs& out,
                      const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::gated_delta_rule_prefill(in, out, options, executor);
}

}  // namespace seqmix
