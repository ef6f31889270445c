// RAT decode step: the in-chunk state advances by one token (zeroed first at a chunk start), the
// split-KV decode attention runs over the position / L finished chunk summaries (all visible),
// the own-state key is merged in, and a token that ends its chunk appends the state to the
// summaries.
#pragma once

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/chunked/rat/fast.hpp"

namespace seqmix {

// Advances `state` by one token and writes that token's output. Scratch: B*H floats (lse) and two
// D-float rows per batch row.
inline void rat_step(const RatStepInputs& in, const RatStepOutputs& out, RatState& state,
                     const RatOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::rat;
  const Dims d = validate_step("rat_step", in, out, options, state);
  const index_t L = options.chunk, p = state.position, D = d.D;
  const float scale = scale_of(options, D);
  const bool keep = p % L != 0;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk)
      for (index_t i = 0; i < D; ++i) {
        const float e = std::exp(in.g(b, hk, i)), a = keep ? e : 0.f;
        state.k_run(b, hk, i) = a * state.k_run(b, hk, i) + (1.f - e) * in.k(b, hk, i);
        state.v_run(b, hk, i) = a * state.v_run(b, hk, i) + (1.f - e) * in.v(b, hk, i);
      }
  const index_t chunks = p / L;
  const TensorView<float, 4> o(out.o.data(), {d.B, 1, d.H, D}, {out.o.stride(0), 0, out.o.stride(1), out.o.stride(2)});
  Tensor<float, 3> lse({d.B, 1, d.H});
  if (chunks > 0) {
    AttentionInputs<float> ai;
    ai.q = ConstView<float, 4>(in.q.data(), {d.B, 1, d.H, D}, {in.q.stride(0), 0, in.q.stride(1), in.q.stride(2)});
    ai.k = state.chunk_k.as_const().slice(1, 0, chunks);
    ai.v = state.chunk_v.as_const().slice(1, 0, chunks);
    AttentionOptions ao;  // every finished chunk is visible
    ao.scale = scale;
    attention_decode(ai, AttentionOutputs{o, lse.view()}, ao, executor);
  } else {
    lse.fill(detail::kMinusInf);
  }
  std::vector<float> qrow(static_cast<std::size_t>(D)), kr(static_cast<std::size_t>(D)), vr(static_cast<std::size_t>(D));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      const index_t hk = h / d.group();
      for (index_t i = 0; i < D; ++i) {
        qrow[i] = in.q(b, h, i);
        kr[i] = state.k_run(b, hk, i);
        vr[i] = state.v_run(b, hk, i);
      }
      merge_own_state(qrow.data(), kr.data(), vr.data(), D, scale, lse(b, 0, h), out.o.ptr(b, h), out.o.stride(2));
    }
  if ((p + 1) % L == 0)
    for (index_t b = 0; b < d.B; ++b) {
      copy(state.k_run.as_const()[b], state.chunk_k[b][chunks]);
      copy(state.v_run.as_const()[b], state.chunk_v[b][chunks]);
    }
  ++state.position;
}

}  // namespace seqmix
