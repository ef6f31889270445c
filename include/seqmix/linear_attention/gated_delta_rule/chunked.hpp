// The fast prefill of gated_delta_rule (scalar gate: Gated DeltaNet; per-channel gate: KDA).
// Multi-threaded over (batch, value head); per head either the chunked WY form
// (delta_update/wy.hpp) or the fused recurrent kernel (delta_update/recurrent.hpp), chosen by
// delta_update::choose_delta_algorithm, which says why. Workspace: one state [K,V] and one
// chunk workspace (about (9C + 2V) x K floats for chunk size C) per parallel block, allocated
// once per call. The definition is in reference.hpp.
#pragma once

#include "seqmix/linear_attention/delta_update/driver.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"

namespace seqmix {

namespace delta_update {

// The fast prefill of a validated-on-entry call (gated or not).
inline void fast_delta(const char* op, const DeltaCall& c, const Executor& executor) {
  const ArgCheck check(op);
  const Dims d = validate_delta(check, c, executor);
  const float scale = detail::la::check_scale(check, c.scale, d.K);
  const bool channel = c.gated && c.gate == DeltaGate::channel;
  DeltaPlan plan{d.B, d.HV, d.K, d.V, c.algorithm, c.chunk};
  if (plan.algorithm == DeltaAlgorithm::automatic)
    plan.algorithm = choose_delta_algorithm(channel, d.T, d.K, d.V, c.chunk);
  run_prefill(plan, c.initial_state, c.final_state, executor, [&](index_t b, index_t hv) {
    DeltaHead p;
    const index_t h = hv / d.heads_per_qk();
    p.q = c.q[b].select(1, h);
    p.k = c.k[b].select(1, h);
    p.v = c.v[b].select(1, hv);
    p.beta = c.beta[b].select(1, hv);
    p.o = c.o[b].select(1, hv);
    p.scale = scale;
    p.norm = c.norm;
    if (channel) {
      p.g = c.g[b].select(1, hv);
    } else if (c.gated) {
      const ConstView<float, 1> g = c.g_scalar[b].select(1, hv);
      p.g = ConstView<float, 2>(g.data(), {d.T, d.K}, {g.stride(0), 0});
      p.scalar_gate = true;
    }
    return p;
  });
}

}  // namespace delta_update

// Gated DeltaNet / KDA prefill. final_state may be the initial_state view (updated in place).
inline void gated_delta_rule(const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                             const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  delta_update::fast_delta("gated_delta_rule", delta_update::gated_call(in, out, options), executor);
}

}  // namespace seqmix
