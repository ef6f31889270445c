// rwkv7 (RWKV-7 "Goose" time mixing, the generalized delta rule), SPEC section 4. This header
// holds the argument structs, their validation and the readable definition
// seqmix::reference::rwkv7. Fast prefill: recurrent.hpp; decode step: step.hpp.
//
//   S_t = diag(exp(g_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T     S [K,V] per (batch, head)
//   o_t = S_t^T r_t                                                     no scale; updated, then read
//
// In RWKV-7 a = -kappa_hat and b = kappa_hat * in-context learning rate, so b a^T is the delta
// rule's -beta k k^T generalized; any a, b are accepted. All of r, k, a, b, g, v have the same
// head count H (SPEC gives no grouping for rwkv7).
#pragma once

#include <array>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/sequences.hpp"

namespace seqmix {

/// Options of the rwkv7 prefill (the step has none).
struct Rwkv7Options {
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
};

/// Prefill arguments of rwkv7 (RWKV-7, docs/operators.md section 4). Optional views are empty
/// when not given; packed batches and state slots as in GatedDeltaRuleInputs (core/batch.hpp).
/// T is the storage type of r, k, v, a and b: float (Rwkv7Inputs), or seqmix::bf16 / seqmix::f16,
/// which the recurrent kernel widens one token row at a time into its scratch (no fp32 copy of
/// the inputs); the log-decay g, states and outputs stay fp32.
template <class T>
struct Rwkv7InputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "Rwkv7InputsOf: r/k/v/a/b are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> r;                  ///< [B,T,H,K] receptance (the query)
  ConstView<T, 4> k;                  ///< [B,T,H,K]
  ConstView<T, 4> v;                  ///< [B,T,H,V]
  ConstView<T, 4> a;                  ///< [B,T,H,K] the state read by the rank-one term
  ConstView<T, 4> b;                  ///< [B,T,H,K] where that read is written back
  ConstView<float, 4> g;              ///< [B,T,H,K] log-decay <= 0 (w = exp(g))
  ConstView<float, 4> initial_state = {}; ///< [N,H,K,V] or the pool [S,H,K,V], optional (zeros if absent)
  SequenceBatch batch = {};           ///< optional: cu_seqlens, state_indices, has_initial_state
};

/// Prefill arguments with fp32 r/k/v/a/b (Rwkv7InputsOf).
using Rwkv7Inputs = Rwkv7InputsOf<float>;

/// o must not overlap an input; final_state may be the same view as initial_state.
struct Rwkv7Outputs {
  TensorView<float, 4> o;             ///< [B,T,H,V]
  TensorView<float, 4> final_state = {}; ///< [N,H,K,V] or the pool, optional
  TensorView<float, 5> token_states = {}; ///< [B,T,H,K,V], optional: the state after each token
};

/// Decode-step arguments of rwkv7_step: one token per batch row; T as for Rwkv7InputsOf.
template <class T>
struct Rwkv7StepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "Rwkv7StepInputsOf: r/k/v/a/b are stored as float, seqmix::bf16 or seqmix::f16");
  ///@{
  /// Receptance r and key k, [B,H,K].
  ConstView<T, 3> r, k;      ///< [B,H,K]
  ///@}
  ConstView<T, 3> v;         ///< [B,H,V]
  ///@{
  /// The rank-one term's read (a) and write-back (b) vectors, [B,H,K].
  ConstView<T, 3> a, b;      ///< [B,H,K]
  ///@}
  ConstView<float, 3> g;     ///< [B,H,K] log-decay <= 0
  SequenceBatch batch = {};  ///< optional: state_indices [B] (-1 = padding row), has_initial_state [B]
};

/// Decode-step arguments with fp32 r/k/v/a/b (Rwkv7StepInputsOf).
using Rwkv7StepInputs = Rwkv7StepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct Rwkv7StepOutputs {
  TensorView<float, 3> o;      ///< [B,H,V]
  TensorView<float, 4> state;  ///< [B,H,K,V] or the pool [S,H,K,V], updated in place (required)
};

namespace delta_update {

// A validated rwkv7 prefill: its sizes and its sequences.
struct Rwkv7Problem {
  Dims d;
  SequenceMap map;
};

template <class T>
Rwkv7Problem validate_rwkv7(const ArgCheck& check, const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out,
                                   const Executor& executor) {
  const Dims d = detail::la::check_qkv(check, "r", in.r, in.k, in.v);
  if (d.HV != d.H)
    check.fail("v", "must have as many heads as r and k (H = " + std::to_string(d.H) + "), got shape " +
                        shape_to_string(in.v.shape()));
  const std::array<index_t, 4> bthk{d.B, d.T, d.H, d.K};
  check.shape("a", in.a, bthk, "B,T,H,K").shape("b", in.b, bthk, "B,T,H,K").shape("g", in.g, bthk, "B,T,H,K");
  const std::array<index_t, 4> state_shape{-1, d.H, d.K, d.V};
  check.optional_shape("initial_state", in.initial_state, state_shape, "N,H,K,V");
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.H, d.V}, "B,T,H,V");
  check.optional_shape("final_state", out.final_state, state_shape, "N,H,K,V");
  check.optional_shape("token_states", out.token_states, std::array<index_t, 5>{d.B, d.T, d.H, d.K, d.V}, "B,T,H,K,V");
  detail::la::check_log_gate(check, "g", in.g, executor);
  const index_t rows = state_rows(check, in.initial_state, out.final_state);
  const SequenceMap map = SequenceMap::make(check, in.batch, d.B, d.T, in.initial_state.has_value(), rows);
  check_prefill_aliasing(check, out.o, out.final_state, out.token_states, in.initial_state, named("r", in.r),
                         named("k", in.k), named("v", in.v), named("a", in.a), named("b", in.b), named("g", in.g));
  return {d, map};
}

// Sequence s of a validated call as a dense call of its own (B = 1).
template <class T>
std::pair<Rwkv7InputsOf<T>, Rwkv7Outputs> rwkv7_sequence(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out,
                                                        const SequenceSpan& s) {
  Rwkv7InputsOf<T> i;
  i.r = sequence_rows(in.r, s), i.k = sequence_rows(in.k, s), i.v = sequence_rows(in.v, s);
  i.a = sequence_rows(in.a, s), i.b = sequence_rows(in.b, s), i.g = sequence_rows(in.g, s);
  i.initial_state = state_row(in.initial_state, s, s.read_state);
  Rwkv7Outputs o;
  o.o = sequence_rows(out.o, s);
  o.final_state = state_row(out.final_state, s, true);
  o.token_states = sequence_rows(out.token_states, s);
  return {i, o};
}

template <class T>
Dims validate_rwkv7_step(const ArgCheck& check, const Rwkv7StepInputsOf<T>& in, const Rwkv7StepOutputs& out,
                                const Executor& executor) {
  const Dims d = detail::la::check_qkv_step(check, "r", in.r, in.k, in.v);
  if (d.HV != d.H)
    check.fail("v", "must have as many heads as r and k (H = " + std::to_string(d.H) + "), got shape " +
                        shape_to_string(in.v.shape()));
  const std::array<index_t, 3> bhk{d.B, d.H, d.K};
  check.shape("a", in.a, bhk, "B,H,K").shape("b", in.b, bhk, "B,H,K").shape("g", in.g, bhk, "B,H,K");
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.H, d.V}, "B,H,V");
  check.shape("state", out.state, std::array<index_t, 4>{-1, d.H, d.K, d.V}, "S,H,K,V");
  detail::la::check_log_gate(check, "g", in.g, executor);
  return d;
}

}  // namespace delta_update

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class T>
std::pair<Rwkv7InputsOf<T>, Rwkv7Outputs> reversed_call(const char* op, Rwkv7InputsOf<T> in, Rwkv7Outputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.r, in.k, in.v, in.a, in.b, in.g, out.o, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, state in double. Single-threaded; `executor` only splits the
/// gate check. final_state may alias initial_state. r/k/v/a/b may be stored as float, bf16 or
/// f16 (Rwkv7InputsOf): each value is widened exactly where it is read.
template <class T>
void rwkv7(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out, const Executor& executor = serial_executor()) {
  const delta_update::Rwkv7Problem pr = delta_update::validate_rwkv7(ArgCheck("reference::rwkv7"), in, out, executor);
  const delta_update::Dims& d = pr.d;
  const std::size_t K = static_cast<std::size_t>(d.K), V = static_cast<std::size_t>(d.V);
  const auto w16 = [](const T& value) { return static_cast<double>(static_cast<float>(value)); };
  std::vector<double> S(K * V), sa(V);
  for (index_t n = 0; n < pr.map.sequences(); ++n) {
    const SequenceSpan span = pr.map[n];
    if (span.state_row < 0) continue;
    const auto one = delta_update::rwkv7_sequence(in, out, span);
    const Rwkv7InputsOf<T>& x = one.first;
    const Rwkv7Outputs& y = one.second;
    for (index_t h = 0; h < d.H; ++h) {
      for (std::size_t r = 0; r < K; ++r)
        for (std::size_t c = 0; c < V; ++c)
          S[r * V + c] = x.initial_state.has_value() ? x.initial_state(0, h, r, c) : 0.0;
      for (index_t t = 0; t < span.tokens; ++t) {
        // sa = S_{t-1}^T a_t, read before the update.
        for (std::size_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (std::size_t r = 0; r < K; ++r) acc += w16(x.a(0, t, h, r)) * S[r * V + c];
          sa[c] = acc;
        }
        for (std::size_t r = 0; r < K; ++r) {
          const double w = std::exp(double(x.g(0, t, h, r)));
          for (std::size_t c = 0; c < V; ++c)
            S[r * V + c] = w * S[r * V + c] + w16(x.b(0, t, h, r)) * sa[c] + w16(x.k(0, t, h, r)) * w16(x.v(0, t, h, c));
        }
        for (std::size_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (std::size_t r = 0; r < K; ++r) acc += w16(x.r(0, t, h, r)) * S[r * V + c];
          y.o(0, t, h, c) = static_cast<float>(acc);
        }
        if (y.token_states.has_value())
          for (std::size_t r = 0; r < K; ++r)
            for (std::size_t c = 0; c < V; ++c) y.token_states(0, t, h, r, c) = static_cast<float>(S[r * V + c]);
      }
      if (y.final_state.has_value())
        for (std::size_t r = 0; r < K; ++r)
          for (std::size_t c = 0; c < V; ++c) y.final_state(0, h, r, c) = static_cast<float>(S[r * V + c]);
    }
  }
}

/// reference::rwkv7 with options: options.reverse runs from the last token to the first.
template <class T>
void rwkv7(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out, const Rwkv7Options& options,
           const Executor& executor = serial_executor()) {
  // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overloads.
  if (!options.reverse) return reference::rwkv7<T>(in, out, executor);
  const auto rev = detail::reversed_call("reference::rwkv7", in, out);
  reference::rwkv7<T>(rev.first, rev.second, executor);
}

/// The definition on fp32 r/k/v/a/b (the overload braced argument lists pick).
inline void rwkv7(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const Executor& executor = serial_executor()) {
  reference::rwkv7<float>(in, out, executor);
}

/// reference::rwkv7 with options on fp32 r/k/v/a/b.
inline void rwkv7(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const Rwkv7Options& options,
                  const Executor& executor = serial_executor()) {
  reference::rwkv7<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
