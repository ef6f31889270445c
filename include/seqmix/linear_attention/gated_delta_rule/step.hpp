// The decode step of gated_delta_rule: one token per batch row, the state [B,HV,K,V] updated in
// place. Per (batch, value head) it is the fused kernel of delta_update/recurrent.hpp: one sweep
// computes S'^T k (the decay applied to k, not to S), the second decays S, adds k u^T and
// accumulates o = S^T q while the tile is still in L1, so S streams from memory once.
// With batch.state_indices the state is a pool [S,HV,K,V] and row b updates pool row
// state_indices[b] in place (-1: padding row, nothing touched); has_initial_state[b] false
// zeroes that row first. No heap allocation after the first call (per-thread scratch).
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/delta_update/driver.hpp"
#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"

namespace seqmix {

namespace delta_update {

// A step's arguments, gated or not; E: the storage type of q/k/v (float, bf16, f16).
template <class E>
struct DeltaStepCall {
  ConstView<E, 3> q, k, v;
  ConstView<float, 2> beta;
  bool gated = false;
  DeltaGate gate = DeltaGate::scalar;
  ConstView<float, 2> g_scalar;
  ConstView<float, 3> g;
  TensorView<float, 3> o;
  TensorView<float, 4> state;
  SequenceBatch batch = {};
  std::optional<float> scale;
  QkNorm norm = QkNorm::none;
};

template <class E>
void fast_delta_step(const ArgCheck& check, const DeltaStepCall<E>& c, const Executor& executor) {
  using detail::la::as_token;
  using detail::la::check_qkv_step;
  using detail::la::check_scale;
  const Dims d = check_qkv_step(check, "q", c.q, c.k, c.v);
  check_beta<2>(check, c.beta, {d.B, d.HV}, "B,HV");
  check_delta_gate<3>(check, c.gated, c.gate, c.g, c.g_scalar, d, executor);
  check.shape("o", c.o, std::array<index_t, 3>{d.B, d.HV, d.V}, "B,HV,V");
  check.shape("state", c.state, std::array<index_t, 4>{-1, d.HV, d.K, d.V}, "S,HV,K,V");
  const float scale = check_scale(check, c.scale, d.K);
  const StepSlots slots = check_step_slots(check, c.batch, d.B, c.state.size(0));
  refuse_overlap(check, "o", c.o, "state", c.state);
  const bool channel = c.gated && c.gate == DeltaGate::channel;
  auto make_token = [&](index_t b, index_t hv, TokenWorkspace& ws) {
    DeltaHead p;
    const index_t h = hv / d.heads_per_qk();
    p.q = as_token(c.q[b][h]);
    p.k = as_token(c.k[b][h]);
    p.v = as_token(c.v[b][hv]);
    p.beta = ConstView<float, 1>(c.beta.ptr(b, hv), {1});
    p.scale = scale;
    p.norm = c.norm;
    if (channel) {
      p.g = as_token(c.g[b][hv]);
    } else if (c.gated) {
      p.g = ConstView<float, 2>(c.g_scalar.ptr(b, hv), {1, d.K}, {0, 0});
      p.scalar_gate = true;
    }
    return load_delta_token(p, 0, ws);
  };
  auto store_output = [&](index_t b, index_t hv, const float* o) {
    const TensorView<float, 1> out = c.o[b][hv];
    for (index_t i = 0; i < d.V; ++i) out(i) = o[i];
  };
  run_step(Update::delta, d.B, d.HV, d.K, d.V, c.state, slots, executor, make_token, store_output);
}

}  // namespace delta_update

namespace delta_update {

template <class T>
void gated_step(const GatedDeltaRuleStepInputsOf<T>& in, const GatedDeltaRuleStepOutputs& out,
                const GatedDeltaRuleOptions& options, const Executor& executor) {
  DeltaStepCall<T> c;
  c.q = in.q, c.k = in.k, c.v = in.v, c.beta = in.beta;
  c.gated = true, c.gate = options.gate, c.g_scalar = in.g_scalar, c.g = in.g;
  c.o = out.o, c.state = out.state, c.batch = in.batch, c.scale = options.scale, c.norm = options.qk_norm;
  static const ArgCheck check("gated_delta_rule_step");  // built once: a step allocates nothing
  fast_delta_step(check, c, executor);
}

}  // namespace delta_update

/// One decode token: o = scale S_t^T q with S updated in place (see reference.hpp).
inline void gated_delta_rule_step(const GatedDeltaRuleStepInputs& in, const GatedDeltaRuleStepOutputs& out,
                                  const GatedDeltaRuleOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  delta_update::gated_step(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16: the token's rows are widened into
/// the step's scratch (beta, gates, state and output fp32).
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void gated_delta_rule_step(const GatedDeltaRuleStepInputsOf<H>& in, const GatedDeltaRuleStepOutputs& out,
                           const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  delta_update::gated_step(in, out, options, executor);
}

}  // namespace seqmix
