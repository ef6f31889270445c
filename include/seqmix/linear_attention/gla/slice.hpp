// State passing across slices of one sequence for gated_linear_attention (and simple_gla,
// retention, ungated_linear_attention through options.gate): run a slice from a zero state with
// its transition, compose slices (compose_diagonal_slices, core/slice_state.hpp), and correct a
// slice's outputs and final state from its true initial state without rerunning it.
// diagonal_decay/slice.hpp has the derivation.
#pragma once

#include <vector>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/diagonal_decay/slice.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"

namespace seqmix {

/// Runs gated_linear_attention on one slice of longer sequences from a zero state: out.o gets
/// the slice's outputs as if nothing came before it, out.final_state [B,HV,K,V] (required) its
/// local final state, and log_decay [B,HV,K] its transition, the sum of the slice's log-decays
/// per key channel (zeros for GateKind::none). A dense batch only (in.batch empty), no
/// in.initial_state, no token_states. Compose slices with compose_diagonal_slices and finish one
/// with gated_linear_attention_slice_correct.
inline void gated_linear_attention_slice(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                                         const TensorView<float, 3>& log_decay,
                                         const GatedLinearAttentionOptions& options = {},
                                         const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "gated_linear_attention_slice";
  const ArgCheck check(op);
  const Dims d = validate_gla(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, in.initial_state, out.final_state, out.token_states.has_value(), d, false);
  check.shape("log_decay", log_decay, std::array<index_t, 3>{d.B, d.HV, d.K}, "B,HV,K");
  check_no_overlap(check, "log_decay", log_decay, in.q, in.k, in.v, in.g, in.g_scalar, out.o, out.final_state);
  gated_linear_attention(in, out, options, executor);
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_slice_log_decays(d, log_decay, executor, [&](index_t b, index_t hv) {
    return gla_head(in, out, options.gate, 1.f, d, b, hv, fixed_gates.empty() ? nullptr : fixed_gates.data() + hv);
  });
}

/// Finishes a slice run by gated_linear_attention_slice once its true initial state is known:
/// in.initial_state [B,HV,K,V] (required) is that state; out.o holds the slice's zero-state
/// outputs and gains what each token reads from it, one GEMM of the decayed queries per block of
/// tokens; out.final_state, when given, holds the local final state and becomes the true one
/// (it must not overlap initial_state). Reads q and the gate only; k and v are checked, not read.
/// The result equals one gated_linear_attention call over the whole sequence, to rounding.
inline void gated_linear_attention_slice_correct(const GatedLinearAttentionInputs& in,
                                                 const GatedLinearAttentionOutputs& out,
                                                 const GatedLinearAttentionOptions& options = {},
                                                 const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "gated_linear_attention_slice_correct";
  const ArgCheck check(op);
  const Dims d = validate_gla(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, in.initial_state, out.final_state, out.token_states.has_value(), d, true);
  const float scale = check_scale(check, options.scale, d.K);
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_slice_correction(d, in.initial_state, out.final_state, executor, [&](index_t b, index_t hv) {
    return gla_head(in, out, options.gate, scale, d, b, hv, fixed_gates.empty() ? nullptr : fixed_gates.data() + hv);
  });
}

}  // namespace seqmix
