// BASED (Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
// tradeoff"): a taylor2 linear attention over small feature-dim q/k plus an exact causal
// sliding-window softmax attention over full-dim q/k, both reading the same values, summed.
// This header holds the argument structs, the state, validation and the readable definition
// seqmix::reference::based. Fast prefill: fast.hpp; decode step: step.hpp; derivation: README.md.
//
// For value head h (linear-branch q/k head hf = h / (H / Hf)), token t:
//   phi(x)   = [1, x / F^(1/4), vec(x x^T) / (sqrt(2) sqrt(F))]       (taylor2, 1 + F + F^2 features)
//   lin_t    = sum_{s<=t} (phi(qf_t).phi(kf_s)) v_s / sum_{s<=t} phi(qf_t).phi(kf_s)     (feature_sum)
//            = linear_scale * sum_{s<=t} (phi(qf_t).phi(kf_s)) v_s                        (none)
//   swa_t    = softmax_{t-W < s <= t}(window_scale * q_t.k_s) v_s
//   o_t      = lin_t + swa_t
// phi(q).phi(k) = 1 + q.k/sqrt(F) + (q.k)^2/(2F): the second-order Taylor expansion of exp(q.k/sqrt F),
// as in the paper and flash-linear-attention's `based` (use_norm=True is feature_sum).
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
#include "seqmix/linear_attention/common.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"

namespace seqmix {

/// How the linear branch's output is normalized.
enum class BasedNormalization {
  feature_sum,  ///< divide by phi(q_t).z_t, z_t = sum_{s<=t} phi(k_s) (the paper; fla use_norm=True)
  none,         ///< unnormalized: linear_scale * S_t^T phi(q_t)
};

/// Options of based and based_step (docs/operators.md section 8).
struct BasedOptions {
  /// Sliding window W >= 1: token t attends softmax-wise to tokens (t - W, t]. 64 in the paper.
  index_t window = 64;
  /// feature_sum (the paper's) by default.
  BasedNormalization normalization = BasedNormalization::feature_sum;
  /// Multiplies the linear branch (cancels under feature_sum); default 1/sqrt(F).
  std::optional<float> linear_scale;
  /// Softmax logit scale of the window branch; default 1/sqrt(D).
  std::optional<float> window_scale;
  /// Chunk length of the linear branch's chunked prefill (seqmix::linear_attention). 32 measured
  /// fastest for taylor2 at F = 16, V = 64 (16: 61 ms, 32: 58, 48: 61, 64: 63 ms of CPU per thread).
  index_t chunk_size = 32;
  /// Run from the last token to the first (core/direction.hpp): q_feat, k_feat, q, k, v and o are
  /// reached through reversed views, not copied, so token t reads tokens t..T-1 (its window
  /// (t, t + W - 1]); the state after the call is the one after token 0. Dense batches and state
  /// slots only (not cu_seqlens). based_step ignores it.
  bool reverse = false;
};

/// Optional views are empty when not given. Kf = 1 + F + F^2.
struct BasedInputs {
  ConstView<float, 4> q_feat;  ///< [B,T,Hf,F]   linear-branch queries (small F, e.g. 16)
  ConstView<float, 4> k_feat;  ///< [B,T,Hf,F]   linear-branch keys; Hf divides H
  ConstView<float, 4> q;       ///< [B,T,H,D]    window-branch queries
  ConstView<float, 4> k;       ///< [B,T,H,D]    window-branch keys
  ConstView<float, 4> v;       ///< [B,T,H,V]    values, shared by both branches
  /// Optional serving arguments (docs/operators.md section 9): packed tokens [1,total_T,...] with
  /// cu_seqlens, the state's rows as a pool [S,...] through state_indices, has_initial_state.
  /// Any of them needs state.positions when a state is given.
  SequenceBatch batch = {};
};

/// Outputs of based.
struct BasedOutputs {
  TensorView<float, 4> o;  ///< [B,T,H,V]; must not overlap an input
};

/// The decode state (also the optional initial / final state of a prefill, updated in place).
/// Size per (batch, head): Kf*V + Kf + W*(D+V) floats.
struct BasedState {
  TensorView<float, 4> kv;          ///< [B,H,Kf,V]  linear-attention state S
  TensorView<float, 3> normalizer;  ///< [B,H,Kf]    z (feature_sum only; leave empty with none)
  TensorView<float, 4> window_k;    ///< [B,W,H,D]   ring buffer: token p sits in slot p % W
  TensorView<float, 4> window_v;    ///< [B,W,H,V]
  index_t position = 0;             ///< tokens absorbed so far (ring slots < min(position, W) are valid)
  /// Optional per-row positions [B or S] (int64, updated in place; `position` is then unused):
  /// row r has absorbed positions[r] tokens. Required by serving calls (a `batch`), whose rows are
  /// pool slots at different positions; a fresh sequence (has_initial_state false) starts at 0.
  TensorView<std::int64_t, 1> positions = {};
};

/// Arguments of based_step: one token per batch row.
struct BasedStepInputs {
  ConstView<float, 3> q_feat;  ///< [B,Hf,F]
  ConstView<float, 3> k_feat;  ///< [B,Hf,F]
  ConstView<float, 3> q;       ///< [B,H,D]
  ConstView<float, 3> k;       ///< [B,H,D]
  ConstView<float, 3> v;       ///< [B,H,V]
  /// Optional: state_indices [B] into the state pool (-1: padding row, nothing read or written,
  /// its output row untouched), has_initial_state [B]; needs state.positions.
  SequenceBatch batch = {};
};

/// Outputs of based_step.
struct BasedStepOutputs {
  TensorView<float, 3> o;  ///< [B,H,V]
};

namespace detail::based {

struct Dims {
  index_t B, T, Hf, F, Kf, H, D, V;
  index_t group() const noexcept { return H / Hf; }
};

inline void check_options(const ArgCheck& check, const BasedOptions& options) {
  if (options.window < 1) check.fail("options.window", "must be >= 1, got " + std::to_string(options.window));
  if (options.chunk_size < 1 || options.chunk_size > 4096)
    check.fail("options.chunk_size", "must be in [1, 4096], got " + std::to_string(options.chunk_size));
  if (options.linear_scale) check.finite(*options.linear_scale, "options.linear_scale");
  if (options.window_scale) check.finite(*options.window_scale, "options.window_scale");
}

// Shapes of a state with d.B rows (no allocation when valid).
inline void check_state_shapes(const ArgCheck& check, const BasedState& s, const BasedOptions& options, const Dims& d) {
  check.shape("state.kv", s.kv, std::array<index_t, 4>{d.B, d.H, d.Kf, d.V}, "B,H,Kf,V");
  if (options.normalization == BasedNormalization::feature_sum)
    check.shape("state.normalizer", s.normalizer, std::array<index_t, 3>{d.B, d.H, d.Kf}, "B,H,Kf");
  else if (s.normalizer.has_value())
    check.fail("state.normalizer", "is only used with BasedNormalization::feature_sum");
  check.shape("state.window_k", s.window_k, std::array<index_t, 4>{d.B, options.window, d.H, d.D}, "B,W,H,D");
  check.shape("state.window_v", s.window_v, std::array<index_t, 4>{d.B, options.window, d.H, d.V}, "B,W,H,V");
}

inline void check_state(const ArgCheck& check, const BasedState& s, const BasedOptions& options, const Dims& d) {
  check_state_shapes(check, s, options, d);
  if (s.position < 0) check.fail("state.position", "must be >= 0, got " + std::to_string(s.position));
}

inline Dims validate(const char* op, const BasedInputs& in, const BasedOutputs& out, const BasedOptions& options,
                     const BasedState* state) {
  const ArgCheck check(op);
  check.shape("q_feat", in.q_feat, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,Hf,F");
  const index_t B = in.q_feat.size(0), T = in.q_feat.size(1), Hf = in.q_feat.size(2), F = in.q_feat.size(3);
  check.shape("k_feat", in.k_feat, std::array<index_t, 4>{B, T, Hf, F}, "B,T,Hf,F");
  check.shape("q", in.q, std::array<index_t, 4>{B, T, -1, -1}, "B,T,H,D");
  const index_t H = in.q.size(2), D = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, T, H, D}, "B,T,H,D");
  check.shape("v", in.v, std::array<index_t, 4>{B, T, H, -1}, "B,T,H,V");
  const index_t V = in.v.size(3);
  check.that(F > 0 && D > 0 && V > 0, "q_feat", "feature sizes F, D, V must be positive");
  check.divides(Hf, H, "q_feat", "linear-branch heads Hf (dimension 2); the value head count H");
  check.shape("o", out.o, std::array<index_t, 4>{B, T, H, V}, "B,T,H,V");
  check_options(check, options);
  const Dims d{B, T, Hf, F, feature_dim(FeatureMap::taylor2, F), H, D, V};
  if (state) check_state(check, *state, options, d);
  return d;
}

// A step's token and output shapes and the options (no allocation when valid).
inline Dims step_dims(const ArgCheck& check, const BasedStepInputs& in, const BasedStepOutputs& out,
                      const BasedOptions& options) {
  check.shape("q_feat", in.q_feat, std::array<index_t, 3>{-1, -1, -1}, "B,Hf,F");
  const index_t B = in.q_feat.size(0), Hf = in.q_feat.size(1), F = in.q_feat.size(2);
  check.shape("k_feat", in.k_feat, std::array<index_t, 3>{B, Hf, F}, "B,Hf,F");
  check.shape("q", in.q, std::array<index_t, 3>{B, -1, -1}, "B,H,D");
  const index_t H = in.q.size(1), D = in.q.size(2);
  check.shape("k", in.k, std::array<index_t, 3>{B, H, D}, "B,H,D");
  check.shape("v", in.v, std::array<index_t, 3>{B, H, -1}, "B,H,V");
  const index_t V = in.v.size(2);
  if (F <= 0 || D <= 0 || V <= 0) check.fail("q_feat", "feature sizes F, D, V must be positive");
  check.divides(Hf, H, "q_feat", "linear-branch heads Hf (dimension 1); the value head count H");
  check.shape("o", out.o, std::array<index_t, 3>{B, H, V}, "B,H,V");
  check_options(check, options);
  return Dims{B, 1, Hf, F, feature_dim(FeatureMap::taylor2, F), H, D, V};
}

inline Dims validate_step(const char* op, const BasedStepInputs& in, const BasedStepOutputs& out,
                          const BasedOptions& options, const BasedState& state) {
  const ArgCheck check(op);
  const Dims d = step_dims(check, in, out, options);
  check_state(check, state, options, d);
  return d;
}

inline float linear_scale(const BasedOptions& o, index_t F) {
  return o.linear_scale ? *o.linear_scale : 1.f / std::sqrt(static_cast<float>(F));
}
inline float window_scale(const BasedOptions& o, index_t D) {
  return o.window_scale ? *o.window_scale : 1.f / std::sqrt(static_cast<float>(D));
}

// Row `row` of a state pool as a one-row state at `position`. A fresh sequence starts from
// zeros: its linear-attention rows are cleared (the ring holds no valid slot at position 0).
inline BasedState state_row(const BasedState& s, index_t row, index_t position, bool fresh) {
  const BasedState one{s.kv.slice(0, row, 1), seqmix::detail::state_row(s.normalizer, row),
                       s.window_k.slice(0, row, 1), s.window_v.slice(0, row, 1), position, {}};
  if (fresh) detail::serving::clear(one.kv), detail::serving::clear(one.normalizer);
  return one;
}

// The serving form of a prefill (a batch, or per-row positions): everything is validated first,
// then `run(one_in, one_out, one_state)` is the dense form on each running sequence alone (B = 1,
// its state rows at its own position); the slot's position advances by its tokens.
template <class Run>
void serve(const char* op, const BasedInputs& in, const BasedOutputs& out, const BasedOptions& options,
           BasedState* state, Run&& run) {
  using detail::serving::sequence_tokens;
  BasedInputs dense = in;
  dense.batch = {};
  Dims d = validate(op, dense, out, options, nullptr);  // token shapes and options
  const ArgCheck check(op);
  index_t S = -1;
  if (state) {
    S = state->kv.size(0);
    Dims ds = d;
    ds.B = S;
    check_state_shapes(check, *state, options, ds);
    detail::serving::check_position_pool(check, state->positions, S);
  }
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, state != nullptr, S);
  for (const auto& x : {in.q_feat, in.k_feat, in.q, in.k, in.v}) check.no_overlap("o", out.o, "an input", x);
  if (state) {
    check.no_overlap("o", out.o, "state.kv", state->kv).no_overlap("o", out.o, "state.normalizer", state->normalizer);
    check.no_overlap("o", out.o, "state.window_k", state->window_k).no_overlap("o", out.o, "state.window_v", state->window_v);
    detail::serving::check_start_positions(check, state->positions, seqs, seqs.sequences());
  }
  detail::serving::run_sequences(check, seqs, state, state_row, [&](const SequenceSpan& s, BasedState* one) {
    const BasedInputs one_in{sequence_tokens(in.q_feat, s), sequence_tokens(in.k_feat, s), sequence_tokens(in.q, s),
                             sequence_tokens(in.k, s), sequence_tokens(in.v, s), {}};
    run(one_in, BasedOutputs{sequence_tokens(out.o, s)}, one);
  });
}

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments; packed batches refused.
inline std::pair<BasedInputs, BasedOutputs> reversed_call(const char* op, BasedInputs in, BasedOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q_feat, in.k_feat, in.q, in.k, in.v, out.o);
  return {in, out};
}

}  // namespace detail::based

namespace reference {

/// The definition, token by token, in double precision. `state` (optional) is read as the initial
/// state and overwritten with the final one. Single-threaded.
inline void based(const BasedInputs& in, const BasedOutputs& out, const BasedOptions& options = {},
                  BasedState* state = nullptr, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::based::reversed_call("reference::based", in, out);
    return based(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  (void)executor;
  using namespace detail::based;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("reference::based", in, out, options, state,
          [&](const BasedInputs& one, const BasedOutputs& one_out, BasedState* s) { based(one, one_out, options, s); });
    return;
  }
  const Dims d = validate("reference::based", in, out, options, state);
  const bool normalize = options.normalization == BasedNormalization::feature_sum;
  const double lscale = linear_scale(options, d.F), wscale = window_scale(options, d.D);
  const index_t W = options.window, pos0 = state ? state->position : 0;
  // History the window can still see: tokens [pos0 - hist, pos0).
  const index_t hist = std::min(pos0, W - 1);
  std::vector<double> S(static_cast<std::size_t>(d.Kf * d.V)), z(static_cast<std::size_t>(d.Kf));
  std::vector<float> phq(static_cast<std::size_t>(d.Kf)), phk(static_cast<std::size_t>(d.Kf));
  // Window keys/values of one (b, h) in token order: history then this call's tokens.
  std::vector<std::vector<float>> keys, values;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      const index_t hf = h / d.group();
      for (index_t r = 0; r < d.Kf; ++r) {
        for (index_t c = 0; c < d.V; ++c) S[r * d.V + c] = state ? state->kv(b, h, r, c) : 0.0;
        z[r] = state && normalize ? state->normalizer(b, h, r) : 0.0;
      }
      keys.clear(), values.clear();
      for (index_t p = pos0 - hist; p < pos0; ++p) {
        const index_t slot = p % W;
        keys.emplace_back(), values.emplace_back();
        for (index_t c = 0; c < d.D; ++c) keys.back().push_back(state->window_k(b, slot, h, c));
        for (index_t c = 0; c < d.V; ++c) values.back().push_back(state->window_v(b, slot, h, c));
      }
      for (index_t t = 0; t < d.T; ++t) {
        // Linear branch: S += phi(k) v^T, z += phi(k); read phi(q)^T S.
        detail::la::apply_feature_map(FeatureMap::taylor2, in.k_feat[b][t][hf], 1.f, phk.data());
        detail::la::apply_feature_map(FeatureMap::taylor2, in.q_feat[b][t][hf], 1.f, phq.data());
        for (index_t r = 0; r < d.Kf; ++r) {
          z[r] += phk[r];
          for (index_t c = 0; c < d.V; ++c) S[r * d.V + c] += double(phk[r]) * in.v(b, t, h, c);
        }
        double den = 0.0;
        for (index_t r = 0; r < d.Kf; ++r) den += double(phq[r]) * z[r];
        std::vector<double> o(static_cast<std::size_t>(d.V));
        for (index_t c = 0; c < d.V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < d.Kf; ++r) acc += double(phq[r]) * S[r * d.V + c];
          o[c] = normalize ? acc / den : lscale * acc;
        }
        // Window branch: softmax over the last W tokens, this one included.
        keys.emplace_back(), values.emplace_back();
        for (index_t c = 0; c < d.D; ++c) keys.back().push_back(in.k(b, t, h, c));
        for (index_t c = 0; c < d.V; ++c) values.back().push_back(in.v(b, t, h, c));
        const index_t last = static_cast<index_t>(keys.size()) - 1, first = std::max<index_t>(0, last - W + 1);
        std::vector<double> logits;
        for (index_t j = first; j <= last; ++j) {
          double s = 0.0;
          for (index_t c = 0; c < d.D; ++c) s += double(in.q(b, t, h, c)) * keys[j][c];
          logits.push_back(wscale * s);
        }
        const index_t n = last - first + 1;
        const double sum = detail::hybrid::softmax_weights(logits.data(), n);
        for (index_t c = 0; c < d.V; ++c)
          o[c] += detail::hybrid::softmax_average(logits.data(), n, sum, [&](index_t j) { return values[first + j][c]; });
        for (index_t c = 0; c < d.V; ++c) out.o(b, t, h, c) = static_cast<float>(o[c]);
      }
      if (state) {
        for (index_t r = 0; r < d.Kf; ++r) {
          for (index_t c = 0; c < d.V; ++c) state->kv(b, h, r, c) = static_cast<float>(S[r * d.V + c]);
          if (normalize) state->normalizer(b, h, r) = static_cast<float>(z[r]);
        }
        // The last min(W, hist + T) tokens go to their ring slots.
        const index_t n = static_cast<index_t>(keys.size()), keep = std::min(W, n);
        for (index_t j = n - keep; j < n; ++j) {
          const index_t slot = (pos0 - hist + j) % W;
          for (index_t c = 0; c < d.D; ++c) state->window_k(b, slot, h, c) = keys[j][c];
          for (index_t c = 0; c < d.V; ++c) state->window_v(b, slot, h, c) = values[j][c];
        }
      }
    }
  if (state) state->position = pos0 + d.T;
}

}  // namespace reference
}  // namespace seqmix
