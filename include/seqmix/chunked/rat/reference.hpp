// RAT (Wei et al. 2025, "RAT: Bridging RNN efficiency and attention accuracy in language
// modeling"): a gated linear recurrence inside chunks of length L, and softmax attention across the
// chunk-end states. This header holds the argument structs, the state, validation and the readable
// definition seqmix::reference::rat. Fast prefill: fast.hpp; decode step: step.hpp; README.md.
//
// Token at absolute position p lies in chunk c = p / L. Per KV head, elementwise over D channels,
// with a_p = exp(g_p) (g <= 0, log space) and the recurrent state zeroed before each chunk:
//   kr_p = a_p * kr_{p-1} + (1 - a_p) * k_p        kr_{p-1} := 0 when p % L == 0
//   vr_p = a_p * vr_{p-1} + (1 - a_p) * v_p        (same gate for keys and values)
// Chunk c's summary is its last state (Kc_c, Vc_c) = (kr, vr) at p = c*L + L - 1. Query head h
// (KV head h / G) attends with one softmax over the summaries of every earlier chunk and its own
// position's in-chunk state:
//   keys  {Kc_0, ..., Kc_{c-1}, kr_p},  values {Vc_0, ..., Vc_{c-1}, vr_p},  logits scale * q_p . key
// It is causal: kr_p and vr_p depend on tokens <= p only. (RAT's output gate and projections are
// the caller's; this op is the mixing core.)
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <string>
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

/// RatOptions::chunk, the former name of chunk_size: assigning it still compiles, with a
/// deprecation warning, and wins over chunk_size. (A plain [[deprecated]] member would warn in
/// every aggregate initialization of RatOptions.)
class RatFormerChunk {
 public:
  /// Sets the chunk length under its former name.
  [[deprecated("renamed RatOptions::chunk_size")]] RatFormerChunk& operator=(index_t chunk_size) {
    value_ = chunk_size;
    return *this;
  }
  /// The chunk length assigned, if any.
  const std::optional<index_t>& value() const noexcept { return value_; }

 private:
  std::optional<index_t> value_;
};

/// Options of rat and rat_step (docs/operators.md section 8).
struct RatOptions {
  /// Chunk length L >= 1 (16 in the paper's default configuration). Unlike a compute tile, it is
  /// part of the model: the result depends on it.
  index_t chunk_size = 16;
  /// Softmax logit scale; default 1/sqrt(D).
  std::optional<float> scale;
  RatFormerChunk chunk = {};  ///< deprecated name of chunk_size
  /// Run from the last token to the first (core/direction.hpp): q, k, v, g and o are reached
  /// through reversed views, not copied, so chunks are cut from token T-1 and o_t attends over the
  /// summaries of later chunks; the state after the call is the one after token 0. Dense batches
  /// and state slots only (not cu_seqlens). rat_step ignores it.
  bool reverse = false;
};

/// Arguments of rat: a gated recurrence over k and v inside chunks of L tokens, and softmax
/// attention of q over the chunk-end states.
struct RatInputs {
  ConstView<float, 4> q;  ///< [B,T,H,D]
  ConstView<float, 4> k;  ///< [B,T,Hkv,D], Hkv divides H
  ConstView<float, 4> v;  ///< [B,T,Hkv,D]
  ConstView<float, 4> g;  ///< [B,T,Hkv,D] log forget gate, <= 0
  /// Optional serving arguments (docs/operators.md section 9): packed tokens [1,total_T,...] with
  /// cu_seqlens, the state's rows as a pool [S,...] through state_indices, has_initial_state.
  /// Any of them needs state.positions when a state is given.
  SequenceBatch batch = {};
};

/// Outputs of rat.
struct RatOutputs {
  TensorView<float, 4> o;  ///< [B,T,H,D]; must not overlap an input
};

/// The decode state (also the optional initial / final state of a prefill, updated in place). It
/// grows like a KV cache, by one entry per L tokens: capacity C must hold (position + T) / L chunk
/// summaries after the call. Size per (batch, KV head): 2*D*(C + 1) floats.
struct RatState {
  TensorView<float, 4> chunk_k;  ///< [B,C,Hkv,D] summaries of finished chunks, rows < position / L
  TensorView<float, 4> chunk_v;  ///< [B,C,Hkv,D]
  TensorView<float, 3> k_run;    ///< [B,Hkv,D] in-chunk state after the last token (0 rows at a chunk start)
  TensorView<float, 3> v_run;    ///< [B,Hkv,D]
  index_t position = 0;          ///< tokens absorbed so far (every row; unused with `positions`)
  /// Optional per-row positions [B or S] (int64, updated in place): row r has absorbed
  /// positions[r] tokens. Required by serving calls (a `batch`), where rows are pool slots at
  /// different positions; a fresh sequence (has_initial_state false) starts at 0.
  TensorView<std::int64_t, 1> positions = {};
};

/// Arguments of rat_step: one token per batch row.
struct RatStepInputs {
  ConstView<float, 3> q;  ///< [B,H,D]
  ConstView<float, 3> k;  ///< [B,Hkv,D]
  ConstView<float, 3> v;  ///< [B,Hkv,D]
  ConstView<float, 3> g;  ///< [B,Hkv,D]
  /// Optional: state_indices [B] into the state pool (-1: padding row, nothing read or written,
  /// its output row untouched), has_initial_state [B]; needs state.positions.
  SequenceBatch batch = {};
};

/// Outputs of rat_step.
struct RatStepOutputs {
  TensorView<float, 3> o;  ///< [B,H,D]
};

namespace detail::rat {

struct Dims {
  index_t B, T, H, Hkv, D;
  index_t group() const noexcept { return H / Hkv; }
};

// The chunk length L: chunk_size, or the deprecated RatOptions::chunk when a caller still sets it.
inline index_t chunk_length(const RatOptions& options) {
  return options.chunk.value() ? *options.chunk.value() : options.chunk_size;
}

// The capacity C of the summary cache must hold (position + T) / L summaries after the call.
inline void check_capacity(const ArgCheck& check, const RatState& s, const RatOptions& options, index_t position,
                           index_t T) {
  const index_t needed = (position + T) / chunk_length(options);
  if (s.chunk_k.size(1) < needed)
    check.fail("state.chunk_k", "has room for " + std::to_string(s.chunk_k.size(1)) + " chunk summaries, but " +
                                    std::to_string(needed) + " are needed after this call (position " +
                                    std::to_string(position) + " + T " + std::to_string(T) + ", chunk " +
                                    std::to_string(chunk_length(options)) + ")");
}

// Shapes of a state with d.B rows (no allocation when valid).
inline void check_state_shapes(const ArgCheck& check, const RatState& s, const Dims& d) {
  check.shape("state.chunk_k", s.chunk_k, std::array<index_t, 4>{d.B, -1, d.Hkv, d.D}, "B,C,Hkv,D");
  check.shape("state.chunk_v", s.chunk_v, std::array<index_t, 4>{d.B, s.chunk_k.size(1), d.Hkv, d.D}, "B,C,Hkv,D");
  check.shape("state.k_run", s.k_run, std::array<index_t, 3>{d.B, d.Hkv, d.D}, "B,Hkv,D");
  check.shape("state.v_run", s.v_run, std::array<index_t, 3>{d.B, d.Hkv, d.D}, "B,Hkv,D");
}

inline void check_state(const ArgCheck& check, const RatState& s, const RatOptions& options, const Dims& d) {
  if (s.position < 0) check.fail("state.position", "must be >= 0, got " + std::to_string(s.position));
  check_state_shapes(check, s, d);
  check_capacity(check, s, options, s.position, d.T);
}

inline void check_options(const ArgCheck& check, const RatOptions& options) {
  if (chunk_length(options) < 1)
    check.fail("options.chunk_size", "must be >= 1, got " + std::to_string(chunk_length(options)));
  if (options.scale) check.finite(*options.scale, "options.scale");
}

// Gates must be <= 0 (a multiplier in (0, 1]); NaN fails too. One pass over g, cheap next to
// the attention.
template <class View>
void check_gate(const ArgCheck& check, const View& g) {
  if constexpr (View::rank == 4) {
    for (index_t b = 0; b < g.size(0); ++b) check_gate(check, g[b]);
  } else {
    for (index_t i = 0; i < g.size(0); ++i)
      for (index_t j = 0; j < g.size(1); ++j)
        for (index_t c = 0; c < g.size(2); ++c)
          if (!(g(i, j, c) <= 0.f))
            check.fail("g", "must hold log gates <= 0, got " + std::to_string(g(i, j, c)));
  }
}

inline Dims validate(const char* op, const RatInputs& in, const RatOutputs& out, const RatOptions& options,
                     const RatState* state) {
  const ArgCheck check(op);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,D");
  const index_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), D = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, T, -1, D}, "B,T,Hkv,D");
  const index_t Hkv = in.k.size(2);
  check.shape("v", in.v, std::array<index_t, 4>{B, T, Hkv, D}, "B,T,Hkv,D");
  check.shape("g", in.g, std::array<index_t, 4>{B, T, Hkv, D}, "B,T,Hkv,D");
  check.that(D > 0, "q", "must have a positive head size D, got shape " + shape_to_string(in.q.shape()));
  check.divides(Hkv, H, "k", "KV heads (dimension 2); the query head count H");
  check.shape("o", out.o, std::array<index_t, 4>{B, T, H, D}, "B,T,H,D");
  check_options(check, options);
  const Dims d{B, T, H, Hkv, D};
  if (state) check_state(check, *state, options, d);
  check_gate(check, in.g);
  return d;
}

// A step's token and output shapes and the options (no allocation when valid).
inline Dims step_dims(const ArgCheck& check, const RatStepInputs& in, const RatStepOutputs& out,
                      const RatOptions& options) {
  check.shape("q", in.q, std::array<index_t, 3>{-1, -1, -1}, "B,H,D");
  const index_t B = in.q.size(0), H = in.q.size(1), D = in.q.size(2);
  check.shape("k", in.k, std::array<index_t, 3>{B, -1, D}, "B,Hkv,D");
  const index_t Hkv = in.k.size(1);
  check.shape("v", in.v, std::array<index_t, 3>{B, Hkv, D}, "B,Hkv,D");
  check.shape("g", in.g, std::array<index_t, 3>{B, Hkv, D}, "B,Hkv,D");
  if (D <= 0) check.fail("q", "must have a positive head size D, got shape " + shape_to_string(in.q.shape()));
  check.divides(Hkv, H, "k", "KV heads (dimension 1); the query head count H");
  check.shape("o", out.o, std::array<index_t, 3>{B, H, D}, "B,H,D");
  check_options(check, options);
  return Dims{B, 1, H, Hkv, D};
}

inline Dims validate_step(const char* op, const RatStepInputs& in, const RatStepOutputs& out,
                          const RatOptions& options, const RatState& state) {
  const ArgCheck check(op);
  const Dims d = step_dims(check, in, out, options);
  check_state(check, state, options, d);
  check_gate(check, in.g);
  return d;
}

inline float scale_of(const RatOptions& options, index_t D) {
  return options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(D));
}

// Row `row` of a state pool as a one-row state at `position`. A fresh sequence needs no clearing:
// at position 0 the in-chunk state is reset and no summary is read.
inline RatState state_row(const RatState& s, index_t row, index_t position, bool /*fresh*/ = false) {
  return RatState{s.chunk_k.slice(0, row, 1), s.chunk_v.slice(0, row, 1), s.k_run.slice(0, row, 1),
                  s.v_run.slice(0, row, 1), position, {}};
}

// Sequence s's token views, as a dense batch of one.
inline RatInputs sequence_inputs(const RatInputs& in, const SequenceSpan& s) {
  using detail::serving::sequence_tokens;
  return RatInputs{sequence_tokens(in.q, s), sequence_tokens(in.k, s), sequence_tokens(in.v, s),
                   sequence_tokens(in.g, s), {}};
}

// The serving form of a prefill (a batch, or per-row positions): everything is validated first,
// then `run(one_in, one_out, one_state)` is the dense form on each running sequence alone (B = 1,
// its state rows at its own position); the slot's position advances by its tokens.
template <class Run>
void serve(const char* op, const RatInputs& in, const RatOutputs& out, const RatOptions& options, RatState* state,
           Run&& run) {
  RatInputs dense = in;
  dense.batch = {};
  const Dims d = validate(op, dense, out, options, nullptr);  // token shapes and gates
  const ArgCheck check(op);
  index_t S = -1;
  if (state) {
    S = state->chunk_k.size(0);
    check_state_shapes(check, *state, Dims{S, 0, d.H, d.Hkv, d.D});
    detail::serving::check_position_pool(check, state->positions, S);
  }
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, state != nullptr, S);
  check.no_overlap("o", out.o, "q", in.q).no_overlap("o", out.o, "k", in.k);
  check.no_overlap("o", out.o, "v", in.v).no_overlap("o", out.o, "g", in.g);
  if (state) {
    check.no_overlap("o", out.o, "state.chunk_k", state->chunk_k).no_overlap("o", out.o, "state.chunk_v", state->chunk_v);
    check.no_overlap("o", out.o, "state.k_run", state->k_run).no_overlap("o", out.o, "state.v_run", state->v_run);
    for (index_t n = 0; n < seqs.sequences(); ++n)
      if (seqs[n].state_row >= 0)
        check_capacity(check, *state, options, detail::serving::start_position(check, state->positions, seqs[n]),
                       seqs[n].tokens);
  }
  detail::serving::run_sequences(check, seqs, state, state_row, [&](const SequenceSpan& s, RatState* one) {
    run(sequence_inputs(in, s), RatOutputs{detail::serving::sequence_tokens(out.o, s)}, one);
  });
}

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments; packed batches refused.
inline std::pair<RatInputs, RatOutputs> reversed_call(const char* op, RatInputs in, RatOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, in.g, out.o);
  return {in, out};
}

}  // namespace detail::rat

namespace reference {

/// The definition, token by token, in double precision. `state` (optional) is read as the initial
/// state and overwritten with the final one. Single-threaded.
inline void rat(const RatInputs& in, const RatOutputs& out, const RatOptions& options = {}, RatState* state = nullptr,
                const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::rat::reversed_call("reference::rat", in, out);
    return rat(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  (void)executor;
  using namespace detail::rat;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("reference::rat", in, out, options, state,
          [&](const RatInputs& one, const RatOutputs& one_out, RatState* s) { rat(one, one_out, options, s); });
    return;
  }
  const Dims d = validate("reference::rat", in, out, options, state);
  const index_t L = chunk_length(options), pos0 = state ? state->position : 0;
  const double scale = scale_of(options, d.D);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      std::vector<std::vector<double>> ck, cv;  // chunk summaries
      for (index_t c = 0; c < pos0 / L; ++c) {
        ck.emplace_back(), cv.emplace_back();
        for (index_t i = 0; i < d.D; ++i) {
          ck.back().push_back(state->chunk_k(b, c, hk, i));
          cv.back().push_back(state->chunk_v(b, c, hk, i));
        }
      }
      std::vector<double> kr(static_cast<std::size_t>(d.D)), vr(static_cast<std::size_t>(d.D));
      for (index_t i = 0; i < d.D; ++i) {
        kr[i] = state ? state->k_run(b, hk, i) : 0.0;
        vr[i] = state ? state->v_run(b, hk, i) : 0.0;
      }
      for (index_t t = 0; t < d.T; ++t) {
        const index_t p = pos0 + t;
        for (index_t i = 0; i < d.D; ++i) {
          const double a = std::exp(double(in.g(b, t, hk, i)));
          // The chunk starts from a zero state: the previous one is not read (not even as
          // 0 * state, which is NaN for an inf state).
          const bool start = p % L == 0;
          kr[i] = (start ? 0.0 : a * kr[i]) + (1.0 - a) * in.k(b, t, hk, i);
          vr[i] = (start ? 0.0 : a * vr[i]) + (1.0 - a) * in.v(b, t, hk, i);
        }
        for (index_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
          // Logits over the earlier chunks' summaries, then over the own state (last).
          std::vector<double> s;
          auto logit = [&](const std::vector<double>& key) {
            double x = 0.0;
            for (index_t i = 0; i < d.D; ++i) x += double(in.q(b, t, h, i)) * key[i];
            s.push_back(scale * x);
          };
          for (const auto& key : ck) logit(key);
          logit(kr);
          const index_t n = static_cast<index_t>(s.size()), own = n - 1;
          const double sum = detail::hybrid::softmax_weights(s.data(), n);
          for (index_t i = 0; i < d.D; ++i)
            out.o(b, t, h, i) = static_cast<float>(detail::hybrid::softmax_average(
                s.data(), n, sum, [&](index_t j) { return j == own ? vr[i] : cv[j][i]; }));
        }
        if ((p + 1) % L == 0) ck.push_back(kr), cv.push_back(vr);
      }
      if (state) {
        for (index_t c = pos0 / L; c < static_cast<index_t>(ck.size()); ++c)
          for (index_t i = 0; i < d.D; ++i) {
            state->chunk_k(b, c, hk, i) = static_cast<float>(ck[c][i]);
            state->chunk_v(b, c, hk, i) = static_cast<float>(cv[c][i]);
          }
        for (index_t i = 0; i < d.D; ++i) {
          state->k_run(b, hk, i) = static_cast<float>(kr[i]);
          state->v_run(b, hk, i) = static_cast<float>(vr[i]);
        }
      }
    }
  if (state) state->position = pos0 + d.T;
}

}  // namespace reference
}  // namespace seqmix
