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
// run = a * run + (1 - exp(g)) * x with a = keep ? exp(g) : 0 (gate_row's arithmetic); a chunk's
// first token (keep false) does not read run at all (0 * inf would be NaN).
inline void advance_row(const float* g, index_t sg, const float* x, index_t sx, float* run, index_t sr, index_t D,
                        bool keep) {
  index_t i = 0;
  if (sg == 1 && sx == 1 && sr == 1) {
    const simd::Batch<float> one(1.f);
    for (; i < simd::vector_end(D); i += simd::kWidth) {
      const simd::Batch<float> e = simd::exp(simd::load(g + i));
      const simd::Batch<float> fresh = (one - e) * simd::load(x + i);
      simd::store(run + i, keep ? simd::fma(e, simd::load(run + i), fresh) : fresh);
    }
  }
  for (; i < D; ++i) {
    const float e = std::exp(g[i * sg]);
    run[i * sr] = keep ? e * run[i * sr] + (1.f - e) * x[i * sx] : (1.f - e) * x[i * sx];
  }
}

// x's row as a unit-stride pointer: in place, or copied into `row`.
inline const float* unit_row(const float* x, index_t stride, index_t D, float* row) {
  if (stride == 1) return x;
  for (index_t i = 0; i < D; ++i) row[i] = x[i * stride];
  return row;
}

// One token of every row of a validated dense call (state rows = batch rows, one position).
inline void step_rows(const RatStepInputs& in, const RatStepOutputs& out, RatState& state, const RatOptions& options,
                      const Dims& d, const Executor& executor) {
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

// A serving step: row b advances state row slots[b] (pool [S,...]) from its own position
// state.positions[row]; validated as a whole before any write, then one dense step per row.
// No allocation on a valid call after the first on a thread.
inline void serve_step(const RatStepInputs& in, const RatStepOutputs& out, RatState& state, const RatOptions& options,
                       const Executor& executor) {
  static const ArgCheck check("rat_step");  // a static: building an ArgCheck allocates its name
  const Dims d = step_dims(check, in, out, options);
  const index_t B = d.B, H = d.H, Hkv = d.Hkv, D = d.D;
  const index_t S = state.chunk_k.size(0);
  check_state_shapes(check, state, Dims{S, 1, H, Hkv, D});
  detail::serving::check_position_pool(check, state.positions, S);
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, B, S);
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan s = rows[b];
    if (s.state_row >= 0) check_capacity(check, state, options, detail::serving::start_position(check, state.positions, s), 1);
  }
  check_gate(check, in.g);
  const auto refuse_overlap = [&](const char* name, const ConstView<float, 3>& x) {
    check.no_overlap("o", out.o, name, x);
    check.no_overlap("state.chunk_k", state.chunk_k, name, x).no_overlap("state.chunk_v", state.chunk_v, name, x);
    check.no_overlap("state.k_run", state.k_run, name, x).no_overlap("state.v_run", state.v_run, name, x);
  };
  refuse_overlap("q", in.q), refuse_overlap("k", in.k), refuse_overlap("v", in.v), refuse_overlap("g", in.g);
  check.no_overlap("o", out.o, "state.k_run", state.k_run).no_overlap("o", out.o, "state.v_run", state.v_run);
  check.no_overlap("o", out.o, "state.chunk_k", state.chunk_k).no_overlap("o", out.o, "state.chunk_v", state.chunk_v);
  const Dims one_row{1, 1, H, Hkv, D};
  detail::serving::run_step_rows(check, rows, B, state, state_row, [&](index_t b, RatState& one) {
    const RatStepInputs in1{in.q.slice(0, b, 1), in.k.slice(0, b, 1), in.v.slice(0, b, 1), in.g.slice(0, b, 1), {}};
    step_rows(in1, RatStepOutputs{out.o.slice(0, b, 1)}, one, options, one_row, serial_executor());
  }, executor);
}

}  // namespace detail::rat

/// Advances `state` by one token and writes that token's output. Scratch: B*H floats (lse) and three
/// D-float rows (strided inputs only), in a per-thread buffer reused across steps.
/// Serving (in.batch, or state.positions given): state rows are pool slots at their own positions
/// (docs/operators.md section 9.2); batched decode of sequences at different positions is one call.
inline void rat_step(const RatStepInputs& in, const RatStepOutputs& out, RatState& state,
                     const RatOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::rat;
  if (detail::serving::uses_positions(in.batch, state.positions.has_value())) {
    serve_step(in, out, state, options, executor);
    return;
  }
  step_rows(in, out, state, options, validate_step("rat_step", in, out, options, state), executor);
}

}  // namespace seqmix
