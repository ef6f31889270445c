// Mega decode step: one token per batch row. State: the EMA state [B,D,N] and the keys / values
// of the current chunk [B,c,H,*]; `position` is the token's index in the sequence (the same for
// every batch row), so slot position % c of the cache receives this token's k and v and the query
// attends to slots [0, slot]. A step at slot 0 starts a new chunk (earlier slots are ignored).
// Prefill with final_state / k_cache / v_cache, then steps from position T, equals one call.
//
// Cost: the EMA state is updated in place in its [B,D,N] layout (no transposed copy), with the
// decay and gain recomputed from the logits on the fly (2 exps per (d, j), vectorized over j:
// the parameters arrive with every call, and the prefill's [N,D] transposition would cost more
// than the step itself); the attention over the slot + 1 cached keys uses simd::dot / axpy rows.
// Scratch: D + c floats in a per-thread buffer that only grows, so steps do not allocate.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/softmax.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

/// Arguments of mega_step: one token per batch row.
struct MegaStepInputs {
  ConstView<float, 2> x;  ///< [B,D]
  ConstView<float, 3> v;  ///< [B,H,Dv]
  /// EMA and query / key parameters, as for mega.
  MegaParams params;
  /// The token's index in the sequence (the same for every row): it goes to chunk slot
  /// position % chunk_size, and slot 0 starts a new chunk. Unused with state.positions.
  index_t position = 0;
  /// Optional: state_indices [B] into the state pools (-1: padding row, nothing read or written,
  /// its output row untouched), has_initial_state [B] (false: EMA from zeros, position 0); needs
  /// state.positions.
  SequenceBatch batch = {};
};

/// Mega's decode state: the EMA state and the keys / values of the current chunk (what mega's
/// final_state, k_cache and v_cache hand over), updated in place.
struct MegaDecodeState {
  TensorView<float, 3> ema;      ///< [B,D,N]
  TensorView<float, 4> k_cache;  ///< [B,c,H,Dk]
  TensorView<float, 4> v_cache;  ///< [B,c,H,Dv]
  /// Optional per-row positions [B or S] (int64, each advanced by one per step): row r's token
  /// goes to chunk slot positions[r] % c. Required with a batch, whose rows are pool slots.
  TensorView<std::int64_t, 1> positions = {};
};

namespace detail::mega {

inline simd::Batch<float> sigmoid(const simd::Batch<float>& x) {
  const simd::Batch<float> one(1.f);
  return one / (one + simd::exp(-x));
}

// Advances the N states of channel d by one token in place (state row h, stride hs) and returns
// y = sum_j eta[d,j] h[j]. Same arithmetic as coefficients() + ema_token: decay = 1 - alpha delta,
// gain = alpha beta, h = fma(decay, h, gain x).
inline float ema_channel_step(const MegaParams& p, index_t d, index_t N, float x, float* h, index_t hs) {
  using FB = simd::Batch<float>;
  index_t j = 0;
  float y = 0.f;
  const bool rows = hs == 1 && p.alpha_logit.stride(1) == 1 && p.delta_logit.stride(1) == 1 &&
                    p.beta.stride(1) == 1 && p.eta.stride(1) == 1;
  if (rows) {
    const float *al = p.alpha_logit.ptr(d), *dl = p.delta_logit.ptr(d), *be = p.beta.ptr(d), *et = p.eta.ptr(d);
    const FB one(1.f), xv(x);
    FB acc(0.f);
    for (; j < simd::vector_end(N); j += simd::kWidth) {
      const FB alpha = sigmoid(simd::load(al + j)), delta = sigmoid(simd::load(dl + j));
      const FB s = simd::fma(one - alpha * delta, simd::load(h + j), (alpha * simd::load(be + j)) * xv);
      simd::store(h + j, s);
      acc = simd::fma(simd::load(et + j), s, acc);
    }
    y = simd::reduce_add(acc);
  }
  for (; j < N; ++j) {
    const float alpha = sigmoid(p.alpha_logit(d, j)), delta = sigmoid(p.delta_logit(d, j));
    float& s = h[j * hs];
    s = (1.f - alpha * delta) * s + (alpha * p.beta(d, j)) * x;
    y += p.eta(d, j) * s;
  }
  return y;
}

// Softmax attention of one head's query q [Dk] over cache rows [0, n) of (b, h), into o (stride os).
// w: n floats of scratch.
inline void chunk_attention_step(const float* q, const TensorView<float, 4>& kc, const TensorView<float, 4>& vc,
                                 index_t b, index_t h, index_t n, float scale, float* w, float* o, index_t os) {
  const index_t Dk = kc.size(3), Dv = vc.size(3);
  for (index_t s = 0; s < n; ++s) {
    const float* key = kc.ptr(b, s, h);
    float dot = 0.f;
    if (kc.stride(3) == 1)
      dot = simd::dot(q, key, Dk);
    else
      for (index_t i = 0; i < Dk; ++i) dot += q[i] * key[i * kc.stride(3)];
    w[s] = scale * dot;
  }
  // Attention's non-finite rule (chunked/softmax.hpp): a NaN row gives NaN, a row that sees no
  // key 0, and a key of weight 0 takes no part (its value, even NaN, is not read).
  const float den = detail::hybrid::softmax_weights(w, n);
  if (!(den > 0.f)) {
    for (index_t e = 0; e < Dv; ++e) o[e * os] = den == 0.f ? 0.f : std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float inv = 1.f / den;
  if (os == 1 && vc.stride(3) == 1) {
    std::fill(o, o + Dv, 0.f);
    for (index_t s = 0; s < n; ++s)
      if (w[s] != 0.f) simd::axpy(w[s] * inv, vc.ptr(b, s, h), o, Dv);
    return;
  }
  for (index_t e = 0; e < Dv; ++e) {
    float acc = 0.f;
    for (index_t s = 0; s < n; ++s)
      if (w[s] != 0.f) acc += w[s] * vc(b, s, h, e);
    o[e * os] = acc * inv;
  }
}

}  // namespace detail::mega

namespace detail::mega {

// The shapes of a step (state rows S: B without slots, the pool size with them). No allocation
// on a valid call.
inline Dims validate_step(const ArgCheck& check, const MegaStepInputs& in, const TensorView<float, 3>& o,
                          const MegaDecodeState& state, const MegaOptions& options, bool pooled) {
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,D");
  const index_t B = in.x.size(0), D = in.x.size(1);
  check.shape("params.alpha_logit", in.params.alpha_logit, std::array<index_t, 2>{D, -1}, "D,N");
  const index_t N = in.params.alpha_logit.size(1);
  check_params(check, in.params, D, N);
  check.shape("v", in.v, std::array<index_t, 3>{B, -1, -1}, "B,H,Dv");
  const index_t H = in.v.size(1), Dv = in.v.size(2);
  if (D > 0 || H > 0) check.divides(H, D, "v", "heads (dimension 1), which must divide the channels D of x");
  if (options.chunk_size < 1) check.fail("options.chunk_size", "must be >= 1");
  if (options.scale) check.finite(*options.scale, "options.scale");
  const index_t c = options.chunk_size, Dk = H > 0 ? D / H : 0;
  check.shape("o", o, std::array<index_t, 3>{B, H, Dv}, "B,H,Dv");
  const index_t S = pooled ? state.ema.size(0) : B;
  check.shape("state.ema", state.ema, std::array<index_t, 3>{S, D, N}, "S,D,N");
  check.shape("state.k_cache", state.k_cache, std::array<index_t, 4>{S, c, H, Dk}, "S,c,H,Dk");
  check.shape("state.v_cache", state.v_cache, std::array<index_t, 4>{S, c, H, Dv}, "S,c,H,Dv");
  return Dims{B, 1, D, N, H, Dk, Dv, c};
}

// One token of every row of a validated call, all rows at `position`.
inline void step_rows(const MegaStepInputs& in, const TensorView<float, 3>& o, const MegaDecodeState& state,
                      const MegaOptions& options, const Dims& dims, index_t position) {
  const index_t B = dims.B, D = dims.D, N = dims.N, H = dims.H, Dk = dims.Dk, Dv = dims.Dv;
  const float scale = scale_of(options, Dk);
  const index_t slot = position % dims.c;
  // q [D] then the logits [slot + 1]; grows to the largest step seen on this thread, then stays.
  thread_local AlignedVector<float> scratch;
  scratch.resize(std::max(scratch.size(), static_cast<std::size_t>(D + slot + 1)));
  float* q = scratch.data();
  float* w = q + D;
  const MegaParams& p = in.params;
  for (index_t b = 0; b < B; ++b) {
    for (index_t d = 0; d < D; ++d) {
      const float y = ema_channel_step(p, d, N, in.x(b, d), state.ema.ptr(b, d), state.ema.stride(2));
      q[d] = p.q_scale(d) * y + p.q_bias(d);
      state.k_cache(b, slot, d / Dk, d % Dk) = p.k_scale(d) * y + p.k_bias(d);
    }
    for (index_t h = 0; h < H; ++h) {
      for (index_t e = 0; e < Dv; ++e) state.v_cache(b, slot, h, e) = in.v(b, h, e);
      chunk_attention_step(q + h * Dk, state.k_cache, state.v_cache, b, h, slot + 1, scale, w, o.ptr(b, h),
                           o.stride(2));
    }
  }
}

}  // namespace detail::mega

/// o [B,H,Dv].
/// Serving (in.batch, or state.positions given): state rows are pool slots at their own positions
/// (docs/operators.md section 9.7); batched decode of sequences at different positions is one call,
/// a row with has_initial_state false starts at position 0 from a cleared EMA state.
inline void mega_step(const MegaStepInputs& in, const TensorView<float, 3>& o, const MegaDecodeState& state,
                      const MegaOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::mega;
  // Dense: one token is B*D*N FMAs plus c*D attention MACs, below a thread hand-off, so it runs
  // here; a serving batch spreads its rows over the executor.
  static const ArgCheck check("mega_step");  // a static: no allocation on the hot path
  const bool pooled = detail::serving::uses_positions(in.batch, state.positions.has_value());
  const Dims dims = validate_step(check, in, o, state, options, pooled);
  if (!pooled) {
    if (in.position < 0) check.fail("position", "must be >= 0, got " + std::to_string(in.position));
    step_rows(in, o, state, options, dims, in.position);
    return;
  }
  const index_t S = state.ema.size(0);
  detail::serving::check_position_pool(check, state.positions, S);
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, dims.B, S);
  detail::serving::check_start_positions(check, state.positions, rows, dims.B);
  const auto refuse_overlap = [&](const char* name, const auto& x) {
    check.no_overlap("o", o, name, x).no_overlap("state.ema", state.ema, name, x);
    check.no_overlap("state.k_cache", state.k_cache, name, x).no_overlap("state.v_cache", state.v_cache, name, x);
  };
  refuse_overlap("x", in.x), refuse_overlap("v", in.v);
  check.no_overlap("o", o, "state.ema", state.ema).no_overlap("o", o, "state.k_cache", state.k_cache);
  check.no_overlap("o", o, "state.v_cache", state.v_cache);
  Dims one_row = dims;
  one_row.B = 1;
  // Rows in parallel (distinct slots; positions checked above, so nothing here throws).
  parallel_for(executor, dims.B, 1, [&](index_t begin, index_t end) {
    for (index_t b = begin; b < end; ++b) {
      const SequenceSpan s = rows[b];
      if (s.state_row < 0) continue;
      const index_t position = detail::serving::start_position(check, state.positions, s);
      const MegaDecodeState one{state.ema.slice(0, s.state_row, 1), state.k_cache.slice(0, s.state_row, 1),
                                state.v_cache.slice(0, s.state_row, 1), {}};
      if (!s.read_state) detail::serving::clear(one.ema);
      MegaStepInputs row_in{in.x.slice(0, b, 1), in.v.slice(0, b, 1), in.params, position, {}};
      step_rows(row_in, o.slice(0, b, 1), one, options, one_row, position);
      state.positions(s.state_row) = position + 1;
    }
  });
}

}  // namespace seqmix
