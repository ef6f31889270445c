// rwkv6 (RWKV-6 "Finch" time mixing, SPEC section 4): data-dependent per-channel decay and the
// bonus u for the current token. This header holds the argument structs, the options, their
// validation and the readable definition seqmix::reference::rwkv6. Fast prefill: chunked.hpp;
// decode step: step.hpp; derivation: ../README.md.
//
//   o_t = S_{t-1}^T r_t + (r_t . (u * k_t)) v_t      the state is read BEFORE the update
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          S [K,V] per (batch, value head); no scale
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
#include "seqmix/linear_attention/common.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"

namespace seqmix {

/// Options of rwkv6 and rwkv6_step (RWKV-6, docs/operators.md section 4).
struct Rwkv6Options {
  /// Tokens per chunk of the chunked algorithm; see GatedLinearAttentionOptions::chunk_size for why 64.
  index_t chunk_size = 64;
  /// Prefill algorithm: chunked, recurrent, or the measured choice (the step ignores it).
  LinearAttentionAlgorithm algorithm = LinearAttentionAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
};

/// g and u have Hg = H or HV heads (shared like r/k, or one per value head). T is the storage
/// type of r, k and v: float (Rwkv6Inputs), or seqmix::bf16 / seqmix::f16, which the chunked and
/// recurrent forms widen row by row as they load each chunk or token (no fp32 copy of the
/// inputs); g, u, states and outputs stay fp32.
template <class T>
struct Rwkv6InputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "Rwkv6InputsOf: r/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> r;                  ///< [B,T,H,K] receptance (the query)
  ConstView<T, 4> k;                  ///< [B,T,H,K]
  ConstView<T, 4> v;                  ///< [B,T,HV,V]
  ConstView<float, 4> g;              ///< [B,T,Hg,K] log-decay <= 0 (w = exp(g))
  ConstView<float, 2> u;              ///< [Hg,K] bonus of the current token
  ConstView<float, 4> initial_state = {}; ///< [B,HV,K,V], optional (zero if absent)
  /// cu_seqlens, state_indices, has_initial_state (seqmix/core/batch.hpp; see GatedLinearAttentionInputs): the
  /// states are then [N,HV,K,V] per sequence or a pool [S,HV,K,V] of slots.
  SequenceBatch batch = {};
};

/// Prefill arguments with fp32 r/k/v (Rwkv6InputsOf).
using Rwkv6Inputs = Rwkv6InputsOf<float>;

/// Prefill outputs; o must not overlap an input.
struct Rwkv6Outputs {
  TensorView<float, 4> o;             ///< [B,T,HV,V]
  TensorView<float, 4> final_state = {}; ///< [B,HV,K,V], optional; may be the initial_state view
  TensorView<float, 5> token_states = {}; ///< [B,T,HV,K,V], optional: S_t after each token t
};

/// Decode-step arguments of rwkv6_step: one token per batch row; T as for Rwkv6InputsOf.
template <class T>
struct Rwkv6StepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "Rwkv6StepInputsOf: r/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 3> r;      ///< [B,H,K]
  ConstView<T, 3> k;      ///< [B,H,K]
  ConstView<T, 3> v;      ///< [B,HV,V]
  ConstView<float, 3> g;  ///< [B,Hg,K]
  ConstView<float, 2> u;  ///< [Hg,K]
  SequenceBatch batch = {}; ///< state_indices / has_initial_state per row (see GatedLinearAttentionStepInputs)
};

/// Decode-step arguments with fp32 r/k/v (Rwkv6StepInputsOf).
using Rwkv6StepInputs = Rwkv6StepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct Rwkv6StepOutputs {
  TensorView<float, 3> o;      ///< [B,HV,V]
  TensorView<float, 4> state;  ///< [B,HV,K,V] or a pool [S,HV,K,V], read and then updated in place (required)
};

namespace detail::la {

inline void check_rwkv6_u(const ArgCheck& check, const ConstView<float, 2>& u, const Dims& d) {
  check.shape("u", u, std::array<index_t, 2>{-1, d.K}, "Hg,K");
  check_head_count(check, "u", u.size(0), d, u.shape());
}

template <class T>
PrefillCheck validate_rwkv6(const char* op, const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out,
                                   const Rwkv6Options& options, const Executor& executor) {
  const ArgCheck check(op);
  const Dims d = check_qkv(check, "r", in.r, in.k, in.v);
  check.shape("g", in.g, std::array<index_t, 4>{d.B, d.T, -1, d.K}, "B,T,Hg,K");
  check_head_count(check, "g", in.g.size(2), d, in.g.shape());
  check_rwkv6_u(check, in.u, d);
  const index_t rows = check_state_pair(check, "initial_state", in.initial_state, "final_state", out.final_state, d);
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.HV, d.V}, "B,T,HV,V");
  check_token_states(check, out.token_states, d);
  check_chunk(check, options.chunk_size);
  check_algorithm(check, options.algorithm);
  check_log_gate(check, "g", in.g, executor);
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, in.initial_state.has_value(), rows);
  check_no_overlap(check, "o", out.o, in.r, in.k, in.v, in.g, in.u, in.initial_state, out.final_state,
                   out.token_states);
  check_no_overlap(check, "token_states", out.token_states, in.r, in.k, in.v, in.g, in.u, in.initial_state,
                   out.final_state);
  return {d, seqs};
}

// `check` is the caller's (a static: building an ArgCheck allocates its name).
template <class T>
Dims validate_rwkv6_step(const ArgCheck& check, const Rwkv6StepInputsOf<T>& in, const Rwkv6StepOutputs& out,
                                const Executor& executor) {
  const Dims d = check_qkv_step(check, "r", in.r, in.k, in.v);
  check.shape("g", in.g, std::array<index_t, 3>{d.B, -1, d.K}, "B,Hg,K");
  check_head_count(check, "g", in.g.size(1), d, in.g.shape());
  check_rwkv6_u(check, in.u, d);
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.HV, d.V}, "B,HV,V");
  check.shape("state", out.state, std::array<index_t, 4>{-1, d.HV, d.K, d.V}, "S,HV,K,V");
  check_step_batch(check, in.batch, d.B, out.state.size(0));
  check_log_gate(check, "g", in.g, executor);
  check_no_overlap(check, "o", out.o, in.r, in.k, in.v, in.g, in.u, out.state);
  return d;
}

}  // namespace detail::la

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class T>
std::pair<Rwkv6InputsOf<T>, Rwkv6Outputs> reversed_call(const char* op, Rwkv6InputsOf<T> in, Rwkv6Outputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.r, in.k, in.v, in.g, out.o, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, state in double precision, one sequence at a time.
/// Single-threaded; `executor` only splits the gate check. r/k/v may be stored as float, bf16
/// or f16 (Rwkv6InputsOf): each value is widened exactly where it is read.
template <class T>
void rwkv6(const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
           const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::rwkv6", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::rwkv6<T>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  using namespace detail::la;
  const auto [checked_dims, seqs] = validate_rwkv6("reference::rwkv6", in, out, options, executor);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  const auto x = [](const T& value) { return static_cast<double>(static_cast<float>(value)); };
  std::vector<double> S(static_cast<std::size_t>(d.K * d.V));
  auto s = [&](index_t r, index_t c) -> double& { return S[static_cast<std::size_t>(r * d.V + c)]; };
  for (index_t n = 0; n < seqs.sequences(); ++n) {
    const SequenceSpan span = seqs[n];
    if (span.state_row < 0) continue;
    const index_t b = span.batch_row;
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.heads_per_qk();
      const index_t hg = head_for(in.g.size(2), hv, d), hu = head_for(in.u.size(0), hv, d);
      for (index_t r = 0; r < d.K; ++r)
        for (index_t c = 0; c < d.V; ++c) s(r, c) = span.read_state ? in.initial_state(span.state_row, hv, r, c) : 0.0;
      for (index_t t = span.token_begin; t < span.token_begin + span.tokens; ++t) {
        double bonus = 0.0;
        for (index_t r = 0; r < d.K; ++r) bonus += x(in.r(b, t, h, r)) * in.u(hu, r) * x(in.k(b, t, h, r));
        for (index_t c = 0; c < d.V; ++c) {
          double acc = bonus * x(in.v(b, t, hv, c));
          for (index_t r = 0; r < d.K; ++r) acc += x(in.r(b, t, h, r)) * s(r, c);
          out.o(b, t, hv, c) = static_cast<float>(acc);
        }
        for (index_t r = 0; r < d.K; ++r) {
          const double w = std::exp(static_cast<double>(in.g(b, t, hg, r)));
          for (index_t c = 0; c < d.V; ++c) s(r, c) = w * s(r, c) + x(in.k(b, t, h, r)) * x(in.v(b, t, hv, c));
        }
        if (out.token_states.has_value())
          for (index_t r = 0; r < d.K; ++r)
            for (index_t c = 0; c < d.V; ++c) out.token_states(b, t, hv, r, c) = static_cast<float>(s(r, c));
      }
      if (out.final_state.has_value())
        for (index_t r = 0; r < d.K; ++r)
          for (index_t c = 0; c < d.V; ++c) out.final_state(span.state_row, hv, r, c) = static_cast<float>(s(r, c));
    }
  }
}

/// The definition on fp32 r/k/v (the overload braced argument lists pick).
inline void rwkv6(const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                  const Executor& executor = serial_executor()) {
  rwkv6<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
