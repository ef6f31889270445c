// The fast prefill of gated_linear_attention and its named special cases:
//   seqmix::gated_linear_attention  per-channel (or any GateKind) decay
//   seqmix::simple_gla              one scalar decay per token and head (g_scalar)
//   seqmix::retention               RetNet: fixed decay log(1 - 2^(-5-h)) per value head h
//   seqmix::ungated_linear_attention no decay (linear_attention with the identity map)
// Multi-threaded over (sequence, value head); chunked or recurrent per shape (detail::la::
// choose_algorithm says which and why). Dense or packed (cu_seqlens) batches, states per sequence
// or in slots of a pool, the state after every token on request (GatedLinearAttentionInputs /
// GatedLinearAttentionOutputs). The definition is in reference.hpp.
#pragma once

#include <type_traits>
#include <vector>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"

namespace seqmix {

namespace detail::la {

// The HeadProblem of value head hv of batch row b. `fixed_gate` backs a retnet decay.
template <class T>
HeadProblem gla_head(const GatedLinearAttentionInputsOf<T>& in, const GatedLinearAttentionOutputs& out, GateKind gate,
                            float scale, const Dims& d, index_t b, index_t hv, const float* fixed_gate) {
  HeadProblem p;
  const index_t h = hv / d.heads_per_qk();
  p.q = in.q[b].select(1, h);
  p.k = in.k[b].select(1, h);
  p.v = in.v[b].select(1, hv);
  p.o = out.o[b].select(1, hv);
  p.scale = scale;
  switch (gate) {
    case GateKind::channel: p.g = in.g[b].select(1, head_for(in.g.size(2), hv, d)); break;
    case GateKind::scalar: {
      const ConstView<float, 1> g = in.g_scalar[b].select(1, head_for(in.g_scalar.size(2), hv, d));
      p.g = ConstView<float, 2>(g.data(), {d.T, d.K}, {g.stride(0), 0});
      p.scalar_gate = true;
      break;
    }
    case GateKind::retnet:
      p.g = ConstView<float, 2>(fixed_gate, {d.T, d.K}, {0, 0});
      p.scalar_gate = true;
      break;
    case GateKind::none: break;
  }
  return p;
}

// The per-head decays a retnet call points its gate views at (empty for other gates).
inline std::vector<float> retnet_gates(GateKind gate, index_t HV) {
  std::vector<float> gates(gate == GateKind::retnet ? static_cast<std::size_t>(HV) : 0);
  for (std::size_t h = 0; h < gates.size(); ++h) gates[h] = retnet_log_decay(static_cast<index_t>(h));
  return gates;
}

// The same for a decode step, in a per-thread table grown on demand (a step allocates nothing
// after warm-up). Valid until the calling thread's next call.
inline const float* retnet_gates_cached(index_t HV) {
  thread_local std::vector<float> gates;
  for (index_t h = static_cast<index_t>(gates.size()); h < HV; ++h) gates.push_back(retnet_log_decay(h));
  return gates.data();
}

inline GateKind effective_gate(GateKind gate) { return gate == GateKind::retnet ? GateKind::scalar : gate; }

}  // namespace detail::la

namespace detail {

// The prefill on q/k/v stored as T (float, bf16, f16): the rows are widened as each chunk or
// token is loaded (InputRows), everything after that is the fp32 computation.
template <class T>
void gla_prefill(const GatedLinearAttentionInputsOf<T>& in, const GatedLinearAttentionOutputs& out,
                 const GatedLinearAttentionOptions& options, const Executor& executor) {
  if (options.reverse) {
    const auto rev = reversed_call("gated_linear_attention", in, out);
    return gla_prefill(rev.first, rev.second, forward_options(options), executor);
  }
  using namespace la;
  const auto [checked_dims, seqs] = validate_gla("gated_linear_attention", in, out, options, executor);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  // Validated above; a static ArgCheck: building one per call allocates its name.
  static const ArgCheck scale_check("gated_linear_attention");
  const float scale = check_scale(scale_check, options.scale, d.K);
  PrefillPlan plan{seqs, d.HV, d.K, d.K, d.V, false, options.algorithm, options.chunk_size};
  if (out.token_states.has_value()) plan.algorithm = LinearAttentionAlgorithm::recurrent;
  if (plan.algorithm == LinearAttentionAlgorithm::automatic)
    plan.algorithm = choose_algorithm(effective_gate(options.gate), seqs.max_tokens(), d.K,
                                      task_columns(seqs, d.HV, d.V, executor), options.chunk_size,
                                      options.bf16_compute == Bf16Compute::dot);
  StateIo io;
  io.initial_state = in.initial_state;
  io.final_state = out.final_state;
  io.token_states = out.token_states;
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_prefill(plan, io, executor, [&](index_t b, index_t hv) {
    // Only retention has fixed gates; the others get no pointer (no offset on an empty vector).
    HeadProblem p =
        gla_head(in, out, options.gate, scale, d, b, hv, fixed_gates.empty() ? nullptr : fixed_gates.data() + hv);
    p.bf16_dot = options.bf16_compute == Bf16Compute::dot;
    return p;
  });
}

}  // namespace detail

/// GLA prefill with the decay options.gate selects (per-channel by default;
/// reference::gated_linear_attention is the definition). final_state may be the initial_state
/// view (in place); token_states forces the recurrent form. Threaded over (sequence, value head).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void gated_linear_attention(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                            const GatedLinearAttentionOptions& options = {},
                            const Executor& executor = serial_executor()) {
  detail::gla_prefill<deferred_t<float, Deferred>>(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (gates, states and outputs fp32):
/// each chunk's (or token's) rows are widened as they are loaded, never the whole tensor. With
/// options.bf16_compute = dot the chunked form's GEMMs then run on bf16 dot products as for fp32
/// inputs. docs/operators.md (GLA) gives the accuracy against fp32 inputs.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void gated_linear_attention(const GatedLinearAttentionInputsOf<H>& in, const GatedLinearAttentionOutputs& out,
                            const GatedLinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::gla_prefill(in, out, options, executor);
}

/// simple_gla on 16-bit q/k/v (see the bf16 / f16 gated_linear_attention).
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void simple_gla(const GatedLinearAttentionInputsOf<H>& in, const GatedLinearAttentionOutputs& out,
                GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::scalar;
  detail::gla_prefill(in, out, options, executor);
}

/// Simple GLA: one log-decay per token and head, g_scalar [B,T,Hg].
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void simple_gla(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::scalar;
  gated_linear_attention<Deferred>(in, out, options, executor);
}

/// RetNet retention: decay log(1 - 2^(-5-h)) for value head h; no gate input.
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void retention(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
               GatedLinearAttentionOptions options = {}, const Executor& executor = serial_executor()) {
  options.gate = GateKind::retnet;
  gated_linear_attention<Deferred>(in, out, options, executor);
}

/// No decay: S_t = S_{t-1} + k_t v_t^T (see also linear_attention for feature maps).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void ungated_linear_attention(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                              GatedLinearAttentionOptions options = {},
                              const Executor& executor = serial_executor()) {
  options.gate = GateKind::none;
  gated_linear_attention<Deferred>(in, out, options, executor);
}

}  // namespace seqmix
