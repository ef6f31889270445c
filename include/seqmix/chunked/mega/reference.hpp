// Mega-style mixer (Ma et al. 2023, "Mega: Moving Average Equipped Gated Attention"), the core
// of it: a multi-dimensional damped EMA per channel, then chunk-diagonal causal softmax attention
// whose queries and keys are per-channel affine maps of the EMA output.
//
// Parameters (per channel d in [0,D), expansion dim j in [0,N)), unconstrained as Mega stores them:
//   alpha = sigmoid(alpha_logit[d,j]), delta = sigmoid(delta_logit[d,j])      both in (0,1)
//   decay[d,j] = 1 - alpha * delta  in (0,1),   gain[d,j] = alpha * beta[d,j]
// EMA (state h [B,D,N], h_{-1} = initial_state or 0):
//   h_t[d,j] = gain[d,j] * x_t[d] + decay[d,j] * h_{t-1}[d,j]
//   y_t[d]   = sum_j eta[d,j] * h_t[d,j]
// Queries / keys (Mega's Z W_q + b_q with the projection left to the caller: an affine map per
// channel; the D channels are split into H heads of Dk = D / H):
//   q_t[h,i] = q_scale[d] * y_t[d] + q_bias[d],   k_t likewise with k_scale, k_bias,  d = h*Dk + i
// Chunk-diagonal causal attention with chunk size c (query t sees keys s with s <= t in the same
// chunk, chunks starting at token 0 of the call), values v given by the caller:
//   o_t[h] = sum_{s in chunk(t), s<=t} exp(scale q_t.k_s) v_s[h] / sum exp(scale q_t.k_s)
// Mega's gates, residual and output projection are the caller's (pointwise / dense, not mixing).
// Decode (step.hpp): the EMA state plus the K/V of the current, partial chunk.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "seqmix/chunked/serving.hpp"
#include "seqmix/chunked/softmax.hpp"
#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Mega's per-channel parameters, unconstrained as Mega stores them (the header comment gives
/// how each enters the EMA and the query / key maps).
struct MegaParams {
  ConstView<float, 2> alpha_logit;  ///< [D,N]
  ConstView<float, 2> delta_logit;  ///< [D,N]
  ConstView<float, 2> beta;         ///< [D,N]
  ConstView<float, 2> eta;          ///< [D,N]
  ///@{
  /// [D] per-channel affine maps of the EMA output into queries (q_scale, q_bias) and keys
  /// (k_scale, k_bias).
  ConstView<float, 1> q_scale, q_bias, k_scale, k_bias;  ///< [D]
  ///@}
};

/// Arguments of mega (docs/operators.md section 8): the EMA input x, the caller's values v and
/// the parameters.
struct MegaInputs {
  ConstView<float, 3> x;              ///< [B,T,D]
  ConstView<float, 4> v;              ///< [B,T,H,Dv]; H divides D
  /// EMA and query / key parameters.
  MegaParams params;
  ConstView<float, 3> initial_state = {}; ///< [B,D,N] optional EMA state ([N or S,D,N] with a batch)
  /// Optional serving arguments (docs/operators.md section 9): packed tokens [1,total_T,...] with
  /// cu_seqlens; initial_state, final_state, k_cache, v_cache as rows of pools [S,...] through
  /// state_indices; has_initial_state. Each sequence starts its own chunk grid at its first token.
  SequenceBatch batch = {};
};

/// Outputs of mega; o must not overlap an input.
struct MegaOutputs {
  TensorView<float, 4> o;            ///< [B,T,H,Dv]
  TensorView<float, 3> ema = {};     ///< [B,T,D] optional: y
  TensorView<float, 3> final_state = {}; ///< [B,D,N] optional EMA state
  /// Optional decode hand-off: the keys / values of the last, partial chunk (tokens
  /// [T - T % c, T)) in rows [0, T % c); a step at position T continues that chunk.
  TensorView<float, 4> k_cache = {};  ///< [B,c,H,Dk]
  TensorView<float, 4> v_cache = {};  ///< [B,c,H,Dv]
  /// Optional per-row positions [B, N or S] (int64): each running sequence's row is set to its
  /// token count, the position its decode steps continue from (mega_step's state.positions).
  TensorView<std::int64_t, 1> positions = {};
};

/// Options of mega and mega_step.
struct MegaOptions {
  index_t chunk_size = 128;    ///< c
  std::optional<float> scale;  ///< default 1/sqrt(Dk)
  /// Run from the last token to the first (core/direction.hpp): x, v, o and ema are reached
  /// through reversed views, not copied, so the EMA runs from token T-1 and chunks are cut from
  /// token T-1 (o_t attends to tokens t..end of its chunk); final_state is the EMA state after
  /// token 0, initial_state the one "after token T", k_cache / v_cache hold the last partial chunk
  /// in processing order (tokens T % c - 1 down to 0). Dense batches and state slots only (not
  /// cu_seqlens). mega_step ignores it.
  bool reverse = false;
};

namespace detail::mega {

struct Dims {
  index_t B, T, D, N, H, Dk, Dv, c;
};

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

inline void check_params(const ArgCheck& check, const MegaParams& p, index_t D, index_t N) {
  check.shape("params.delta_logit", p.delta_logit, std::array<index_t, 2>{D, N}, "D,N");
  check.shape("params.beta", p.beta, std::array<index_t, 2>{D, N}, "D,N");
  check.shape("params.eta", p.eta, std::array<index_t, 2>{D, N}, "D,N");
  check.shape("params.q_scale", p.q_scale, std::array<index_t, 1>{D}, "D");
  check.shape("params.q_bias", p.q_bias, std::array<index_t, 1>{D}, "D");
  check.shape("params.k_scale", p.k_scale, std::array<index_t, 1>{D}, "D");
  check.shape("params.k_bias", p.k_bias, std::array<index_t, 1>{D}, "D");
}

inline Dims validate(const char* op, const MegaInputs& in, const MegaOutputs& out, const MegaOptions& o) {
  const ArgCheck check(op);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("params.alpha_logit", in.params.alpha_logit, std::array<index_t, 2>{D, -1}, "D,N");
  const index_t N = in.params.alpha_logit.size(1);
  check_params(check, in.params, D, N);
  check.shape("v", in.v, std::array<index_t, 4>{B, T, -1, -1}, "B,T,H,Dv");
  const index_t H = in.v.size(2), Dv = in.v.size(3);
  if (D > 0 || H > 0) check.divides(H, D, "v", "heads (dimension 2), which must divide the channels D of x");
  check.that(o.chunk_size >= 1, "options.chunk_size", "must be >= 1, got " + std::to_string(o.chunk_size));
  if (o.scale) check.finite(*o.scale, "options.scale");
  const Dims d{B, T, D, N, H, H > 0 ? D / H : 0, Dv, o.chunk_size};
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{B, D, N}, "B,D,N");
  check.shape("o", out.o, std::array<index_t, 4>{B, T, H, Dv}, "B,T,H,Dv");
  check.optional_shape("ema", out.ema, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{B, D, N}, "B,D,N");
  check.optional_shape("k_cache", out.k_cache, std::array<index_t, 4>{B, d.c, H, d.Dk}, "B,c,H,Dk");
  check.optional_shape("v_cache", out.v_cache, std::array<index_t, 4>{B, d.c, H, Dv}, "B,c,H,Dv");
  return d;
}

inline float scale_of(const MegaOptions& o, index_t Dk) {
  return o.scale ? *o.scale : 1.f / std::sqrt(static_cast<float>(Dk > 0 ? Dk : 1));
}

// True when a prefill takes the serving path (a batch, or per-row positions to write).
inline bool serving(const MegaInputs& in, const MegaOutputs& out) {
  return detail::serving::uses_positions(in.batch, out.positions.has_value());
}

// The serving form of a prefill: everything is validated first, then `run(one_in, one_out)` is
// the dense form on each running sequence alone (B = 1, its state and cache rows); the slot's
// position becomes the sequence's token count (the sequence's chunk grid starts at its first token).
template <class Run>
void serve(const char* op, const MegaInputs& in, const MegaOutputs& out, const MegaOptions& options, Run&& run) {
  using detail::serving::sequence_tokens;
  MegaInputs dense = in;
  dense.batch = {}, dense.initial_state = {};
  MegaOutputs dense_out{out.o, out.ema, {}, {}, {}, {}};
  const Dims d = validate(op, dense, dense_out, options);  // tokens, parameters, options, o and ema
  const ArgCheck check(op);
  // The state rows: the pool size S with slots, else one per sequence (checked by SequenceMap).
  index_t R = -1;
  for (const index_t rows : {in.initial_state.size(0), out.final_state.size(0), out.k_cache.size(0),
                             out.v_cache.size(0), out.positions.size(0)})
    if (R < 0 && rows > 0) R = rows;
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{R, d.D, d.N}, "S,D,N");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{R, d.D, d.N}, "S,D,N");
  check.optional_shape("k_cache", out.k_cache, std::array<index_t, 4>{R, d.c, d.H, d.Dk}, "S,c,H,Dk");
  check.optional_shape("v_cache", out.v_cache, std::array<index_t, 4>{R, d.c, d.H, d.Dv}, "S,c,H,Dv");
  check.optional_shape("positions", out.positions, std::array<index_t, 1>{R}, "S");
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, in.initial_state.has_value(), R);
  const auto refuse_overlap = [&](const char* name, const auto& view) {
    check.no_overlap(name, view, "x", in.x).no_overlap(name, view, "v", in.v);
  };
  refuse_overlap("o", out.o), refuse_overlap("ema", out.ema), refuse_overlap("k_cache", out.k_cache);
  refuse_overlap("v_cache", out.v_cache), refuse_overlap("final_state", out.final_state);
  check.no_overlap("o", out.o, "initial_state", in.initial_state).no_overlap("k_cache", out.k_cache, "initial_state", in.initial_state);
  check.no_overlap("v_cache", out.v_cache, "initial_state", in.initial_state);
  if (views_overlap(out.final_state, in.initial_state) && !seqmix::detail::same_view(out.final_state, in.initial_state))
    check.fail("final_state", "partly overlaps 'initial_state'; it may only be the very same view");
  detail::serving::for_each_sequence(seqs, [&](const SequenceSpan& s) {
    using seqmix::detail::state_row;
    MegaInputs one{sequence_tokens(in.x, s), sequence_tokens(in.v, s), in.params,
                   s.read_state ? state_row(in.initial_state, s.state_row) : ConstView<float, 3>{}, {}};
    const MegaOutputs one_out{sequence_tokens(out.o, s), sequence_tokens(out.ema, s),
                              state_row(out.final_state, s.state_row), state_row(out.k_cache, s.state_row),
                              state_row(out.v_cache, s.state_row), {}};
    run(one, one_out);
    if (out.positions.has_value()) out.positions(s.state_row) = s.tokens;
  });
}

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments; packed batches refused.
inline std::pair<MegaInputs, MegaOutputs> reversed_call(const char* op, MegaInputs in, MegaOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.x, in.v, out.o, out.ema);
  return {in, out};
}

}  // namespace detail::mega

namespace reference {

/// The readable definition: the EMA token by token, then chunk-diagonal causal attention with
/// plain loops.
inline void mega(const MegaInputs& in, const MegaOutputs& out, const MegaOptions& options = {},
                 const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::mega::reversed_call("reference::mega", in, out);
    return mega(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  using namespace detail::mega;
  if (serving(in, out)) {
    serve("reference::mega", in, out, options,
          [&](const MegaInputs& one, const MegaOutputs& one_out) { mega(one, one_out, options); });
    return;
  }
  const Dims d = validate("reference::mega", in, out, options);
  const MegaParams& p = in.params;
  const float scale = scale_of(options, d.Dk);
  std::vector<float> y(static_cast<std::size_t>(d.T * d.D)), q(y.size()), k(y.size());
  std::vector<float> h(static_cast<std::size_t>(d.D * d.N)), w(static_cast<std::size_t>(d.c));
  for (index_t b = 0; b < d.B; ++b) {
    for (index_t c = 0; c < d.D; ++c)
      for (index_t j = 0; j < d.N; ++j) h[c * d.N + j] = in.initial_state.has_value() ? in.initial_state(b, c, j) : 0.f;
    for (index_t t = 0; t < d.T; ++t)
      for (index_t c = 0; c < d.D; ++c) {
        float acc = 0.f;
        for (index_t j = 0; j < d.N; ++j) {
          const float alpha = sigmoid(p.alpha_logit(c, j)), delta = sigmoid(p.delta_logit(c, j));
          float& s = h[c * d.N + j];
          s = alpha * p.beta(c, j) * in.x(b, t, c) + (1.f - alpha * delta) * s;
          acc += p.eta(c, j) * s;
        }
        y[t * d.D + c] = acc;
        q[t * d.D + c] = p.q_scale(c) * acc + p.q_bias(c);
        k[t * d.D + c] = p.k_scale(c) * acc + p.k_bias(c);
        if (out.ema.has_value()) out.ema(b, t, c) = acc;
      }
    if (out.final_state.has_value())
      for (index_t c = 0; c < d.D; ++c)
        for (index_t j = 0; j < d.N; ++j) out.final_state(b, c, j) = h[c * d.N + j];
    for (index_t t = 0; t < d.T; ++t)
      for (index_t hh = 0; hh < d.H; ++hh) {
        const index_t s0 = t / d.c * d.c;
        for (index_t s = s0; s <= t; ++s) {
          float dot = 0.f;
          for (index_t i = 0; i < d.Dk; ++i) dot += q[t * d.D + hh * d.Dk + i] * k[s * d.D + hh * d.Dk + i];
          w[s - s0] = scale * dot;
        }
        const float den = detail::hybrid::softmax_weights(w.data(), t - s0 + 1);
        for (index_t e = 0; e < d.Dv; ++e)
          out.o(b, t, hh, e) = detail::hybrid::softmax_average(w.data(), t - s0 + 1, den,
                                                               [&](index_t j) { return in.v(b, s0 + j, hh, e); });
      }
    const index_t r = d.T % d.c;
    for (index_t s = 0; s < r; ++s)
      for (index_t hh = 0; hh < d.H; ++hh) {
        if (out.k_cache.has_value())
          for (index_t i = 0; i < d.Dk; ++i) out.k_cache(b, s, hh, i) = k[(d.T - r + s) * d.D + hh * d.Dk + i];
        if (out.v_cache.has_value())
          for (index_t e = 0; e < d.Dv; ++e) out.v_cache(b, s, hh, e) = in.v(b, d.T - r + s, hh, e);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
