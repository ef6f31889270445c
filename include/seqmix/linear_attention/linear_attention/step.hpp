// The decode step of linear_attention: one token per batch row; state [B,HV,Kf,V] (and the
// normalizer z [B,HV,Kf] when normalizing) updated in place by the recurrent kernel.
#pragma once

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"

namespace seqmix {

inline void linear_attention_step(const LinearAttentionStepInputs& in, const LinearAttentionStepOutputs& out,
                                  const LinearAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const Dims d = validate_linear_attention_step("linear_attention_step", in, out, options);
  const float scale = check_scale(ArgCheck("linear_attention_step"), options.scale, d.K);
  run_step(d.B, d.HV, d.K, d.Kf, d.V, options.normalize, out.state, out.normalizer, executor,
           [&](index_t b, index_t hv) {
             HeadProblem p;
             const index_t h = hv / d.heads_per_qk();
             p.q = as_token(in.q[b][h]);
             p.k = as_token(in.k[b][h]);
             p.v = as_token(in.v[b][hv]);
             p.o = as_token(out.o[b][hv]);
             p.phi = options.feature_map;
             p.scale = scale;
             p.normalize = options.normalize;
             return p;
           });
}

}  // namespace seqmix
