// RAT decode step: the in-chunk state advances by one token (zeroed first at a chunk start), the
// split-KV decode attention runs over the position / L finished chunk summaries (all visible),
// the own-state key is merged in, and a token that ends its chunk appends the state to the
// summaries. Nothing is allocated per step beyond what attention_step allocates: the lse and
// the row copies of strided inputs live in a per-thread buffer that only grows.
#pragma once

#include <algorithm>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/chunked/rat/fast.hpp"

namespace seqmix {

namespace detail::rat {

// One token of the in-chunk recurrence for a row of D channels, in place:
// run = a * run + (1 - exp(g)) * x with a = keep ? exp(g) : 0 (gate_row's arithmetic).
inline void advance_row(const float* g, index_t sg, const float* x, index_t sx, float* run, index_t sr, index_t D,
                        bool keep) {
  index_t i = 0;
  if (sg == 1 && sx == 1 && sr == 1) {
    const simd::Batch<float> one(1.f), zero(0.f);
    for (; i < simd::vector_end(D); i += simd::kWidth) {
      const simd::Batch<float> e = simd::exp(simd::load(g + i));
      simd::store(run + i, simd::fma(keep ? e : zero, simd::load(run + i), (one - e) * simd::load(x + i)));
    }
  }
  for (; i < D; ++i) {
    const float e = std::exp(g[i * sg]), a = keep ? e : 0.f;
    run[i * sr] = a * run[i * sr] + (1.f - e) * x[i * sx];
  }
}

// x's row as a unit-stride pointer: in place, or copied into `row`.
inline const float* unit_row(const float* x, index_t stride, index_t D, float* row) {
  if (stride == 1) return x;
  for (index_t i = 0; i < D; ++i) row[i] = x[i * stride];
  return row;
}

}  // namespace detail::rat

/// Advances `state` by one token and writes that token's output. Scratch: B*H floats (lse) and three
/// D-float rows (strided inputs only), in a per-thread buffer reused across steps.
inline void rat_step(const RatStepInputs& in, const RatStepOutputs& out, RatState& state,
                     const RatOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::rat;
  const Dims d = validate_step("rat_step", in, out, options, state);
  const index_t L = chunk_length(options), p = state.position, D = d.D;
  const float scale = scale_of(options, D);
  const bool keep = p % L != 0;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      advance_row(in.g.ptr(b, hk), in.g.stride(2), in.k.ptr(b, hk), in.k.stride(2), state.k_run.ptr(b, hk),
                  state.k_run.stride(2), D, keep);
      advance_row(in.g.ptr(b, hk), in.g.stride(2), in.v.ptr(b, hk), in.v.stride(2), state.v_run.ptr(b, hk),
                  state.v_run.stride(2), D, keep);
    }
  thread_local AlignedVector<float> scratch;
  scratch.resize(std::max(scratch.size(), static_cast<std::size_t>(d.B * d.H + 3 * D)));
  const TensorView<float, 3> lse(scratch.data(), {d.B, 1, d.H});
  float* rows = scratch.data() + d.B * d.H;
  const index_t chunks = p / L;
  const TensorView<float, 4> o(out.o.data(), {d.B, 1, d.H, D}, {out.o.stride(0), 0, out.o.stride(1), out.o.stride(2)});
  if (chunks > 0) {
    AttentionInputs<float> ai;
    ai.q = ConstView<float, 4>(in.q.data(), {d.B, 1, d.H, D}, {in.q.stride(0), 0, in.q.stride(1), in.q.stride(2)});
    ai.k = state.chunk_k.as_const().slice(1, 0, chunks);
    ai.v = state.chunk_v.as_const().slice(1, 0, chunks);
    AttentionOptions ao;  // every finished chunk is visible
    ao.scale = scale;
    attention_step(ai, AttentionOutputs{o, lse}, ao, executor);
  } else {
    std::fill(scratch.data(), scratch.data() + d.B * d.H, detail::kMinusInf);
  }
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      const index_t hk = h / d.group();
      const float* q = unit_row(in.q.ptr(b, h), in.q.stride(2), D, rows);
      const float* kr = unit_row(state.k_run.ptr(b, hk), state.k_run.stride(2), D, rows + D);
      const float* vr = unit_row(state.v_run.ptr(b, hk), state.v_run.stride(2), D, rows + 2 * D);
      merge_own_state(q, kr, vr, D, scale, lse(b, 0, h), out.o.ptr(b, h), out.o.stride(2));
    }
  if ((p + 1) % L == 0)
    for (index_t b = 0; b < d.B; ++b) {
      copy(state.k_run.as_const()[b], state.chunk_k[b][chunks]);
      copy(state.v_run.as_const()[b], state.chunk_v[b][chunks]);
    }
  ++state.position;
}

}  // namespace seqmix
