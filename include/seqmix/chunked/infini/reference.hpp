// Infini-attention (Munkhdalai et al. 2024, "Leave no context behind: efficient infinite context
// transformers with Infini-attention"): causal softmax attention inside segments of length S plus
// a compressive linear-attention memory carried across segments, mixed per head by a learned gate.
// This header holds the argument structs, the state, validation and the readable definition
// seqmix::reference::infini_attention. Fast prefill: fast.hpp; decode step: step.hpp; README.md.
//
// Token t (absolute position p) lies in segment s = p / S. For query head h (KV head hk = h / G):
//   sigma(x)  = elu(x) + 1                                         (elementwise, > 0)
//   A_local_t = softmax_{s*S <= j <= p}(scale * q_t.k_j) v_j        (causal, inside the segment)
//   A_mem_t   = sigma(q_t)^T M_{s-1} / (sigma(q_t).z_{s-1})         (0 while z = 0: empty memory)
//   o_t       = sigmoid(beta_h) A_mem_t + (1 - sigmoid(beta_h)) A_local_t
// After segment s is complete, with its keys K_s and values V_s (rows j):
//   linear: M_s = M_{s-1} + sigma(K_s)^T V_s
//   delta:  M_s = M_{s-1} + sigma(K_s)^T (V_s - sigma(K_s) M_{s-1} / (sigma(K_s) z_{s-1}))
//           (the retrieved row is 0 where its denominator is 0, i.e. while the memory is empty)
//   z_s = z_{s-1} + sum_j sigma(k_j)
// so the memory that segment s reads holds segments < s only. M [K,V] and z [K] per KV head.
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

/// How a finished segment is written into the compressive memory.
enum class InfiniMemoryUpdate {
  linear,  ///< M += sigma(K)^T V
  delta,   ///< M += sigma(K)^T (V - retrieved(K)): only what the memory does not already return
};

/// Options of infini_attention and infini_attention_step (docs/operators.md section 8).
struct InfiniAttentionOptions {
  /// Segment length S >= 1 (2048 in the paper's long-context runs).
  index_t segment = 2048;
  /// Linear memory update by default (delta: the paper's Linear + Delta variant).
  InfiniMemoryUpdate update = InfiniMemoryUpdate::linear;
  /// Softmax logit scale of the local attention; default 1/sqrt(K). The memory has no scale.
  std::optional<float> scale;
  /// Run from the last token to the first (core/direction.hpp): q, k, v and o are reached through
  /// reversed views, not copied, so segments are cut from token T-1 and the memory holds later
  /// segments; the state after the call is the one after token 0. Dense batches and state slots
  /// only (not cu_seqlens). infini_attention_step ignores it.
  bool reverse = false;
};

/// Arguments of infini_attention: local causal attention within segments plus the compressive
/// memory, mixed per head by sigmoid(beta).
struct InfiniAttentionInputs {
  ConstView<float, 4> q;     ///< [B,T,H,K]
  ConstView<float, 4> k;     ///< [B,T,Hkv,K], Hkv divides H
  ConstView<float, 4> v;     ///< [B,T,Hkv,V]
  ConstView<float, 1> beta;  ///< [H] gate logits: sigmoid(beta_h) is the memory's share
  /// Optional serving arguments (docs/operators.md section 9): packed tokens [1,total_T,...] with
  /// cu_seqlens, the state's rows as a pool [S,...] through state_indices, has_initial_state.
  /// Any of them needs state.positions when a state is given.
  SequenceBatch batch = {};
};

/// Outputs of infini_attention.
struct InfiniAttentionOutputs {
  TensorView<float, 4> o;  ///< [B,T,H,V]; must not overlap an input
};

/// The decode state (also the optional initial / final state of a prefill, updated in place).
/// Size per (batch, KV head): K*V + K + S*(K+V) floats.
struct InfiniAttentionState {
  TensorView<float, 4> memory;      ///< [B,Hkv,K,V]  M
  TensorView<float, 3> normalizer;  ///< [B,Hkv,K]    z
  TensorView<float, 4> segment_k;   ///< [B,S,Hkv,K]  keys of the unfinished segment, rows < position % S
  TensorView<float, 4> segment_v;   ///< [B,S,Hkv,V]
  index_t position = 0;             ///< tokens absorbed so far (every row; unused with `positions`)
  /// Optional per-row positions [B or S] (int64, updated in place): row r has absorbed
  /// positions[r] tokens. Required by serving calls (a `batch`), whose rows are pool slots at
  /// different positions; a fresh sequence (has_initial_state false) starts at 0.
  TensorView<std::int64_t, 1> positions = {};
};

/// Arguments of infini_attention_step: one token per batch row.
struct InfiniAttentionStepInputs {
  ConstView<float, 3> q;     ///< [B,H,K]
  ConstView<float, 3> k;     ///< [B,Hkv,K]
  ConstView<float, 3> v;     ///< [B,Hkv,V]
  ConstView<float, 1> beta;  ///< [H]
  /// Optional: state_indices [B] into the state pool (-1: padding row, nothing read or written,
  /// its output row untouched), has_initial_state [B]; needs state.positions.
  SequenceBatch batch = {};
};

/// Outputs of infini_attention_step.
struct InfiniAttentionStepOutputs {
  TensorView<float, 3> o;  ///< [B,H,V]
};

namespace detail::infini {

struct Dims {
  index_t B, T, H, Hkv, K, V;
  index_t group() const noexcept { return H / Hkv; }
};

inline float sigma(float x) { return x > 0.f ? x + 1.f : std::exp(x); }
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Whether a retrieval's denominator sigma(x).z reads the memory: not while it is 0 (the memory is
// empty: the retrieval is 0), but a NaN one does, so that a NaN in z, x or the memory reaches the
// output instead of being read as an empty memory (docs/reliability.md).
template <class T>
bool reads_memory(T den) {
  return den > T(0) || std::isnan(den);
}

inline void check_common(const ArgCheck& check, const ConstView<float, 1>& beta, const InfiniAttentionOptions& options,
                         const Dims& d) {
  check.shape("beta", beta, std::array<index_t, 1>{d.H}, "H");
  for (index_t h = 0; h < d.H; ++h) check.finite(beta(h), "beta");
  if (options.segment < 1) check.fail("options.segment", "must be >= 1, got " + std::to_string(options.segment));
  if (options.scale) check.finite(*options.scale, "options.scale");
}

// Shapes of a state with d.B rows (no allocation when valid).
inline void check_state_shapes(const ArgCheck& check, const InfiniAttentionState& s,
                               const InfiniAttentionOptions& options, const Dims& d) {
  check.shape("state.memory", s.memory, std::array<index_t, 4>{d.B, d.Hkv, d.K, d.V}, "B,Hkv,K,V");
  check.shape("state.normalizer", s.normalizer, std::array<index_t, 3>{d.B, d.Hkv, d.K}, "B,Hkv,K");
  check.shape("state.segment_k", s.segment_k, std::array<index_t, 4>{d.B, options.segment, d.Hkv, d.K}, "B,S,Hkv,K");
  check.shape("state.segment_v", s.segment_v, std::array<index_t, 4>{d.B, options.segment, d.Hkv, d.V}, "B,S,Hkv,V");
}

inline void check_state(const ArgCheck& check, const InfiniAttentionState& s, const InfiniAttentionOptions& options,
                        const Dims& d) {
  check_state_shapes(check, s, options, d);
  if (s.position < 0) check.fail("state.position", "must be >= 0, got " + std::to_string(s.position));
}

inline Dims validate(const char* op, const InfiniAttentionInputs& in, const InfiniAttentionOutputs& out,
                     const InfiniAttentionOptions& options, const InfiniAttentionState* state) {
  const ArgCheck check(op);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,K");
  const index_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), K = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, T, -1, K}, "B,T,Hkv,K");
  const index_t Hkv = in.k.size(2);
  check.shape("v", in.v, std::array<index_t, 4>{B, T, Hkv, -1}, "B,T,Hkv,V");
  check.that(K > 0 && in.v.size(3) > 0, "q", "feature sizes K and V must be positive");
  check.divides(Hkv, H, "k", "KV heads (dimension 2); the query head count H");
  const Dims d{B, T, H, Hkv, K, in.v.size(3)};
  check.shape("o", out.o, std::array<index_t, 4>{B, T, H, d.V}, "B,T,H,V");
  check_common(check, in.beta, options, d);
  if (state) check_state(check, *state, options, d);
  return d;
}

// A step's token and output shapes, beta and the options (no allocation when valid).
inline Dims step_dims(const ArgCheck& check, const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                      const InfiniAttentionOptions& options) {
  check.shape("q", in.q, std::array<index_t, 3>{-1, -1, -1}, "B,H,K");
  const index_t B = in.q.size(0), H = in.q.size(1), K = in.q.size(2);
  check.shape("k", in.k, std::array<index_t, 3>{B, -1, K}, "B,Hkv,K");
  const index_t Hkv = in.k.size(1);
  check.shape("v", in.v, std::array<index_t, 3>{B, Hkv, -1}, "B,Hkv,V");
  if (K <= 0 || in.v.size(2) <= 0) check.fail("q", "feature sizes K and V must be positive");
  check.divides(Hkv, H, "k", "KV heads (dimension 1); the query head count H");
  const Dims d{B, 1, H, Hkv, K, in.v.size(2)};
  check.shape("o", out.o, std::array<index_t, 3>{B, H, d.V}, "B,H,V");
  check_common(check, in.beta, options, d);
  return d;
}

inline Dims validate_step(const char* op, const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                          const InfiniAttentionOptions& options, const InfiniAttentionState& state) {
  const ArgCheck check(op);
  const Dims d = step_dims(check, in, out, options);
  check_state(check, state, options, d);
  return d;
}

inline float local_scale(const InfiniAttentionOptions& options, index_t K) {
  return options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(K));
}

// Row `row` of a state pool as a one-row state at `position`. A fresh sequence starts from an
// empty memory (the segment buffer holds no valid row at position 0).
inline InfiniAttentionState state_row(const InfiniAttentionState& s, index_t row, index_t position, bool fresh) {
  const InfiniAttentionState one{s.memory.slice(0, row, 1), s.normalizer.slice(0, row, 1),
                                 s.segment_k.slice(0, row, 1), s.segment_v.slice(0, row, 1), position, {}};
  if (fresh) detail::serving::clear(one.memory), detail::serving::clear(one.normalizer);
  return one;
}

// The serving form of a prefill (a batch, or per-row positions): everything is validated first,
// then `run(one_in, one_out, one_state)` is the dense form on each running sequence alone (B = 1,
// its state rows at its own position); the slot's position advances by its tokens.
template <class Run>
void serve(const char* op, const InfiniAttentionInputs& in, const InfiniAttentionOutputs& out,
           const InfiniAttentionOptions& options, InfiniAttentionState* state, Run&& run) {
  using detail::serving::sequence_tokens;
  InfiniAttentionInputs dense = in;
  dense.batch = {};
  Dims d = validate(op, dense, out, options, nullptr);  // token shapes, beta and options
  const ArgCheck check(op);
  index_t S = -1;
  if (state) {
    S = state->memory.size(0);
    Dims ds = d;
    ds.B = S;
    check_state_shapes(check, *state, options, ds);
    detail::serving::check_position_pool(check, state->positions, S);
  }
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, state != nullptr, S);
  check.no_overlap("o", out.o, "q", in.q).no_overlap("o", out.o, "k", in.k).no_overlap("o", out.o, "v", in.v);
  if (state) {
    check.no_overlap("o", out.o, "state.memory", state->memory).no_overlap("o", out.o, "state.normalizer", state->normalizer);
    check.no_overlap("o", out.o, "state.segment_k", state->segment_k).no_overlap("o", out.o, "state.segment_v", state->segment_v);
    detail::serving::check_start_positions(check, state->positions, seqs, seqs.sequences());
  }
  detail::serving::run_sequences(check, seqs, state, state_row, [&](const SequenceSpan& s, InfiniAttentionState* one) {
    const InfiniAttentionInputs one_in{sequence_tokens(in.q, s), sequence_tokens(in.k, s), sequence_tokens(in.v, s),
                                       in.beta, {}};
    run(one_in, InfiniAttentionOutputs{sequence_tokens(out.o, s)}, one);
  });
}

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments; packed batches refused.
inline std::pair<InfiniAttentionInputs, InfiniAttentionOutputs> reversed_call(const char* op, InfiniAttentionInputs in,
                                                                              InfiniAttentionOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, out.o);
  return {in, out};
}

}  // namespace detail::infini

namespace reference {

/// The definition, token by token, in double precision. `state` (optional) is read as the initial
/// state and overwritten with the final one. Single-threaded.
inline void infini_attention(const InfiniAttentionInputs& in, const InfiniAttentionOutputs& out,
                             const InfiniAttentionOptions& options = {}, InfiniAttentionState* state = nullptr,
                             const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::infini::reversed_call("reference::infini_attention", in, out);
    return infini_attention(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  (void)executor;
  using namespace detail::infini;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("reference::infini_attention", in, out, options, state,
          [&](const InfiniAttentionInputs& one, const InfiniAttentionOutputs& one_out, InfiniAttentionState* s) {
            infini_attention(one, one_out, options, s);
          });
    return;
  }
  const Dims d = validate("reference::infini_attention", in, out, options, state);
  const index_t S = options.segment, pos0 = state ? state->position : 0;
  const double scale = local_scale(options, d.K);
  std::vector<double> M(static_cast<std::size_t>(d.K * d.V)), z(static_cast<std::size_t>(d.K));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      for (index_t r = 0; r < d.K; ++r) {
        z[r] = state ? state->normalizer(b, hk, r) : 0.0;
        for (index_t c = 0; c < d.V; ++c) M[r * d.V + c] = state ? state->memory(b, hk, r, c) : 0.0;
      }
      // Keys and values of the unfinished segment, in order.
      std::vector<std::vector<double>> keys, values;
      for (index_t j = 0; j < pos0 % S; ++j) {
        keys.emplace_back(), values.emplace_back();
        for (index_t c = 0; c < d.K; ++c) keys.back().push_back(state->segment_k(b, j, hk, c));
        for (index_t c = 0; c < d.V; ++c) values.back().push_back(state->segment_v(b, j, hk, c));
      }
      for (index_t t = 0; t < d.T; ++t) {
        keys.emplace_back(), values.emplace_back();
        for (index_t c = 0; c < d.K; ++c) keys.back().push_back(in.k(b, t, hk, c));
        for (index_t c = 0; c < d.V; ++c) values.back().push_back(in.v(b, t, hk, c));
        for (index_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
          // Local causal softmax over the segment so far.
          std::vector<double> p;
          for (const auto& key : keys) {
            double s = 0.0;
            for (index_t c = 0; c < d.K; ++c) s += double(in.q(b, t, h, c)) * key[c];
            p.push_back(scale * s);
          }
          const index_t n = static_cast<index_t>(p.size());
          const double sum = detail::hybrid::softmax_weights(p.data(), n);
          // Memory retrieval.
          double den = 0.0;
          std::vector<double> sq(static_cast<std::size_t>(d.K));
          for (index_t r = 0; r < d.K; ++r) den += (sq[r] = sigma(in.q(b, t, h, r))) * z[r];
          const double g = sigmoid(in.beta(h));
          for (index_t c = 0; c < d.V; ++c) {
            const double local = detail::hybrid::softmax_average(p.data(), n, sum, [&](index_t j) { return values[j][c]; });
            double mem = 0.0;
            for (index_t r = 0; r < d.K; ++r) mem += sq[r] * M[r * d.V + c];
            out.o(b, t, h, c) = static_cast<float>(g * (reads_memory(den) ? mem / den : 0.0) + (1.0 - g) * local);
          }
        }
        if (static_cast<index_t>(keys.size()) == S) {  // segment complete: write it into the memory
          std::vector<double> update(static_cast<std::size_t>(S * d.V));
          for (index_t j = 0; j < S; ++j) {
            std::vector<double> sk(static_cast<std::size_t>(d.K));
            double den = 0.0;
            for (index_t r = 0; r < d.K; ++r) den += (sk[r] = sigma(static_cast<float>(keys[j][r]))) * z[r];
            for (index_t c = 0; c < d.V; ++c) {
              double retrieved = 0.0;
              if (options.update == InfiniMemoryUpdate::delta && reads_memory(den)) {
                for (index_t r = 0; r < d.K; ++r) retrieved += sk[r] * M[r * d.V + c];
                retrieved /= den;
              }
              update[j * d.V + c] = values[j][c] - retrieved;
            }
          }
          for (index_t j = 0; j < S; ++j)
            for (index_t r = 0; r < d.K; ++r) {
              const double sk = sigma(static_cast<float>(keys[j][r]));
              z[r] += sk;
              for (index_t c = 0; c < d.V; ++c) M[r * d.V + c] += sk * update[j * d.V + c];
            }
          keys.clear(), values.clear();
        }
      }
      if (state) {
        for (index_t r = 0; r < d.K; ++r) {
          state->normalizer(b, hk, r) = static_cast<float>(z[r]);
          for (index_t c = 0; c < d.V; ++c) state->memory(b, hk, r, c) = static_cast<float>(M[r * d.V + c]);
        }
        for (std::size_t j = 0; j < keys.size(); ++j) {
          for (index_t c = 0; c < d.K; ++c) state->segment_k(b, static_cast<index_t>(j), hk, c) = static_cast<float>(keys[j][c]);
          for (index_t c = 0; c < d.V; ++c) state->segment_v(b, static_cast<index_t>(j), hk, c) = static_cast<float>(values[j][c]);
        }
      }
    }
  if (state) state->position = pos0 + d.T;
}

}  // namespace reference
}  // namespace seqmix
