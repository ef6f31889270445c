// The decode step of gated_linear_attention (and simple_gla / retention / ungated): one token
// per batch row, the state [B,HV,K,V] updated in place. Each (batch, value head) is the
// recurrent kernel of diagonal_decay/recurrent.hpp: 3 vector ops per state element, o and v in registers.
#pragma once

#include <vector>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"

namespace seqmix {

inline void gated_linear_attention_step(const GlaStepInputs& in, const GlaStepOutputs& out,
                                        const GlaOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const Dims d = validate_gla_step("gated_linear_attention_step", in, out, options, executor);
  const float scale = check_scale(ArgCheck("gated_linear_attention_step"), options.scale, d.K);
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_step(d.B, d.HV, d.K, d.K, d.V, false, out.state, TensorView<float, 3>(), executor, [&](index_t b, index_t hv) {
    HeadProblem p;
    const index_t h = hv / d.heads_per_qk();
    p.q = as_token(in.q[b][h]);
    p.k = as_token(in.k[b][h]);
    p.v = as_token(in.v[b][hv]);
    p.o = as_token(out.o[b][hv]);
    p.scale = scale;
    switch (options.gate) {
      case GateKind::channel: p.g = as_token(in.g[b][head_for(in.g.size(1), hv, d)]); break;
      case GateKind::scalar:
        p.g = ConstView<float, 2>(in.g_scalar.ptr(b, head_for(in.g_scalar.size(1), hv, d)), {1, d.K}, {0, 0});
        p.scalar_gate = true;
        break;
      case GateKind::retnet:
        p.g = ConstView<float, 2>(fixed_gates.data() + hv, {1, d.K}, {0, 0});
        p.scalar_gate = true;
        break;
      case GateKind::none: break;
    }
    return p;
  });
}

inline void simple_gla_step(const GlaStepInputs& in, const GlaStepOutputs& out, GlaOptions options = {},
                            const Executor& executor = serial_executor()) {
  options.gate = GateKind::scalar;
  gated_linear_attention_step(in, out, options, executor);
}

inline void retention_step(const GlaStepInputs& in, const GlaStepOutputs& out, GlaOptions options = {},
                           const Executor& executor = serial_executor()) {
  options.gate = GateKind::retnet;
  gated_linear_attention_step(in, out, options, executor);
}

}  // namespace seqmix
