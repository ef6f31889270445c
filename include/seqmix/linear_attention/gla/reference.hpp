// gated_linear_attention (GLA, SPEC section 4) and its named special cases: simple_gla (one
// scalar gate per token and head), retention (RetNet's fixed per-head decay) and the ungated
// form. This header holds the argument structs, the options, their validation and the readable
// definition seqmix::reference::gated_linear_attention. Fast prefill: chunked.hpp; decode step:
// step.hpp; derivation of the chunked form: ../README.md.
//
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        S [K,V] per (batch, value head)
//   o_t = scale * S_t^T q_t                          the state is updated before it is read
//
// Value head hv uses q/k head hv / (HV/H); a gate given with H heads is shared the same way.
#pragma once

#include <array>
#include <cmath>
#include <optional>
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

/// Options of gated_linear_attention, simple_gla, retention and their steps (docs/operators.md
/// section 4).
struct GatedLinearAttentionOptions {
  /// Which decay the call uses, and so which gate input it reads (see GateKind).
  GateKind gate = GateKind::channel;
  /// Multiplies q; default 1/sqrt(K).
  std::optional<float> scale;
  /// Tokens per chunk of the chunked algorithm. 64 measured best on AVX-512 for K=V=64..128: the
  /// [64,K] tiles and the 64x64 score tile of one head stay in L1/L2 and the intra-chunk GEMMs stay
  /// small next to the state GEMMs. Any value in [1, 4096] works; it changes rounding only.
  index_t chunk_size = 64;
  /// Prefill algorithm: chunked, recurrent, or the measured choice (the step ignores it).
  LinearAttentionAlgorithm algorithm = LinearAttentionAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// Bf16Compute::dot: the chunked prefill rounds its GEMM operands (decayed q and k, v, the
  /// intra-chunk scores, the carried state) to bf16 and multiplies them with AVX512-BF16 dot
  /// products, accumulating in fp32 and carrying the state in fp32, where the compile target has
  /// them (__AVX512BF16__); the fp32 kernels elsewhere and in the recurrent form. Bounded extra
  /// error (docs/operators.md, GLA); the reference and the step ignore it.
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

/// Prefill arguments. Optional views are empty when not given. The gate has Hg = H or HV heads.
/// Dense: B sequences of T tokens, states [B,HV,K,V]. Packed (batch.cu_seqlens [N+1]): token
/// tensors [1,total_T,...], sequence n is tokens [cu[n], cu[n+1]), states [N,HV,K,V]. With
/// batch.state_indices the states are a pool [S,HV,K,V] read and written at row state_indices[n]
/// (-1: padding sequence, nothing read or written, its outputs untouched); has_initial_state[n]
/// false starts sequence n from zeros (seqmix/core/batch.hpp). T is the storage type of q, k and v:
/// float (GatedLinearAttentionInputs), or seqmix::bf16 / seqmix::f16, which the chunked and
/// recurrent forms widen row by row as they load each chunk or token (no fp32 copy of the inputs);
/// gates, states and outputs stay fp32.
template <class T>
struct GatedLinearAttentionInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "GatedLinearAttentionInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> q;                       ///< [B,T,H,K]
  ConstView<T, 4> k;                       ///< [B,T,H,K]
  ConstView<T, 4> v;                       ///< [B,T,HV,V], HV a multiple of H
  ConstView<float, 4> g = {};              ///< [B,T,Hg,K] log-decays <= 0 (GateKind::channel only)
  ConstView<float, 3> g_scalar = {};       ///< [B,T,Hg]   log-decays <= 0 (GateKind::scalar only)
  ConstView<float, 4> initial_state = {};  ///< [N,HV,K,V] or a pool [S,HV,K,V], optional (zeros if absent)
  SequenceBatch batch = {};                ///< cu_seqlens, state_indices, has_initial_state (all optional)
};

/// Prefill arguments with fp32 q/k/v (GatedLinearAttentionInputsOf).
using GatedLinearAttentionInputs = GatedLinearAttentionInputsOf<float>;

/// o must not overlap an input; final_state may be the same view as initial_state (in place).
struct GatedLinearAttentionOutputs {
  TensorView<float, 4> o;            ///< [B,T,HV,V]
  TensorView<float, 4> final_state = {}; ///< [N,HV,K,V] or the pool [S,HV,K,V], optional
  /// [B,T,HV,K,V], optional: the state after each token (speculative verify keeps the state of the
  /// last accepted token). Given, the call runs the recurrent form.
  TensorView<float, 5> token_states = {};
};

/// Decode-step arguments: one token per batch row. T is the storage type of q, k and v (float,
/// seqmix::bf16 or seqmix::f16; the step widens the token's rows into its scratch); gates, state
/// and output stay fp32.
template <class T>
struct GatedLinearAttentionStepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "GatedLinearAttentionStepInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 3> q;                  ///< [B,H,K]
  ConstView<T, 3> k;                  ///< [B,H,K]
  ConstView<T, 3> v;                  ///< [B,HV,V]
  ConstView<float, 3> g = {};         ///< [B,Hg,K] (GateKind::channel)
  ConstView<float, 2> g_scalar = {};  ///< [B,Hg]   (GateKind::scalar)
  /// state_indices [B]: row b steps pool row state_indices[b] (-1: padding row, its output and
  /// every state untouched); has_initial_state[b] false zeroes that row first. No cu_seqlens.
  SequenceBatch batch = {};
};

/// Decode-step arguments with fp32 q/k/v (GatedLinearAttentionStepInputsOf).
using GatedLinearAttentionStepInputs = GatedLinearAttentionStepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct GatedLinearAttentionStepOutputs {
  TensorView<float, 3> o;      ///< [B,HV,V]
  TensorView<float, 4> state;  ///< [B,HV,K,V] or a pool [S,HV,K,V], updated in place (required)
};

namespace detail::la {

// The gate arguments of one call, prefill or step (Rank 4 / 3 for channel gates).
template <std::size_t GRank>
inline void check_gate(const ArgCheck& check, GateKind gate, const ConstView<float, GRank>& g,
                       const ConstView<float, GRank - 1>& g_scalar, const Dims& d, const Executor& executor) {
  constexpr bool prefill = GRank == 4;
  const char* g_dims = prefill ? "B,T,Hg,K" : "B,Hg,K";
  const char* s_dims = prefill ? "B,T,Hg" : "B,Hg";
  check_enum(check.op(), "options.gate", gate, 4);  // else it would silently run as GateKind::none
  if (gate == GateKind::channel) {
    if (!g.has_value() && g.size(GRank - 1) == 0)
      check.fail("g", std::string("is required for GateKind::channel, shape [") + g_dims + "]");
    std::array<index_t, GRank> expected{};
    expected.fill(-1);
    expected[0] = d.B;
    if constexpr (prefill) expected[1] = d.T;
    expected[GRank - 1] = d.K;
    check.shape("g", g, expected, g_dims);
    check_head_count(check, "g", g.size(GRank - 2), d, g.shape());
    if (g_scalar.has_value()) check.fail("g_scalar", "must be empty with GateKind::channel (the gate is g)");
    check_log_gate(check, "g", g, executor);
  } else if (gate == GateKind::scalar) {
    if (!g_scalar.has_value() && g_scalar.size(GRank - 2) == 0)
      check.fail("g_scalar", std::string("is required for GateKind::scalar, shape [") + s_dims + "]");
    std::array<index_t, GRank - 1> expected{};
    expected.fill(-1);
    expected[0] = d.B;
    if constexpr (prefill) expected[1] = d.T;
    check.shape("g_scalar", g_scalar, expected, s_dims);
    check_head_count(check, "g_scalar", g_scalar.size(GRank - 2), d, g_scalar.shape());
    if (g.has_value()) check.fail("g", "must be empty with GateKind::scalar (the gate is g_scalar)");
    check_log_gate(check, "g_scalar", g_scalar, executor);
  } else {
    if (g.has_value() || g_scalar.has_value())
      check.fail(g.has_value() ? "g" : "g_scalar", "must be empty: GateKind::retnet and GateKind::none take no gate input");
  }
}

// Checks a prefill (before anything is written) and resolves its sequences.
template <class T>
PrefillCheck validate_gla(const char* op, const GatedLinearAttentionInputsOf<T>& in,
                                 const GatedLinearAttentionOutputs& out, const GatedLinearAttentionOptions& options,
                                 const Executor& executor) {
  const ArgCheck check(op);
  const Dims d = check_qkv(check, "q", in.q, in.k, in.v);
  const index_t rows = check_state_pair(check, "initial_state", in.initial_state, "final_state", out.final_state, d);
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.HV, d.V}, "B,T,HV,V");
  check_token_states(check, out.token_states, d);
  check_scale(check, options.scale, d.K);
  check_chunk(check, options.chunk_size);
  check_algorithm(check, options.algorithm);
  check_bf16_compute(check, options.bf16_compute);
  check_gate<4>(check, options.gate, in.g, in.g_scalar, d, executor);
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, in.initial_state.has_value(), rows);
  check_no_overlap(check, "o", out.o, in.q, in.k, in.v, in.g, in.g_scalar, in.initial_state, out.final_state,
                   out.token_states);
  check_no_overlap(check, "token_states", out.token_states, in.q, in.k, in.v, in.g, in.g_scalar, in.initial_state,
                   out.final_state);
  return {d, seqs};
}

// `check` is the caller's (a static: building an ArgCheck allocates its name).
template <class T>
Dims validate_gla_step(const ArgCheck& check, const GatedLinearAttentionStepInputsOf<T>& in,
                              const GatedLinearAttentionStepOutputs& out, const GatedLinearAttentionOptions& options,
                              const Executor& executor) {
  const Dims d = check_qkv_step(check, "q", in.q, in.k, in.v);
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.HV, d.V}, "B,HV,V");
  check.shape("state", out.state, std::array<index_t, 4>{-1, d.HV, d.K, d.V}, "S,HV,K,V");
  check_step_batch(check, in.batch, d.B, out.state.size(0));
  check_scale(check, options.scale, d.K);
  check_gate<3>(check, options.gate, in.g, in.g_scalar, d, executor);
  check_no_overlap(check, "o", out.o, in.q, in.k, in.v, in.g, in.g_scalar, out.state);
  return d;
}

// The log-decay of key channel c for value head hv at token t of a prefill (any gate kind).
template <class T>
float gla_log_gate(const GatedLinearAttentionInputsOf<T>& in, GateKind gate, const Dims& d, index_t b, index_t t,
                          index_t hv, index_t c) {
  switch (gate) {
    case GateKind::channel: return in.g(b, t, head_for(in.g.size(2), hv, d), c);
    case GateKind::scalar: return in.g_scalar(b, t, head_for(in.g_scalar.size(2), hv, d));
    case GateKind::retnet: return retnet_log_decay(hv);
    case GateKind::none: break;
  }
  return 0.f;
}

}  // namespace detail::la

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class T>
std::pair<GatedLinearAttentionInputsOf<T>, GatedLinearAttentionOutputs> reversed_call(const char* op,
                                                                                     GatedLinearAttentionInputsOf<T> in,
                                                                                     GatedLinearAttentionOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, in.g, in.g_scalar, out.o, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, with the state in double precision, one sequence at a time.
/// Single-threaded; `executor` only splits the gate check. final_state may alias initial_state.
/// q/k/v may be stored as float, bf16 or f16 (GatedLinearAttentionInputsOf): each value is widened
/// exactly where it is read.
template <class T>
void gated_linear_attention(const GatedLinearAttentionInputsOf<T>& in, const GatedLinearAttentionOutputs& out,
                            const GatedLinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::gated_linear_attention", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::gated_linear_attention<T>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  using namespace detail::la;
  const auto [checked_dims, seqs] = validate_gla("reference::gated_linear_attention", in, out, options, executor);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  const double scale = check_scale(ArgCheck("reference::gated_linear_attention"), options.scale, d.K);
  std::vector<double> S(static_cast<std::size_t>(d.K * d.V));
  auto s = [&](index_t r, index_t c) -> double& { return S[static_cast<std::size_t>(r * d.V + c)]; };
  for (index_t n = 0; n < seqs.sequences(); ++n) {
    const SequenceSpan span = seqs[n];
    if (span.state_row < 0) continue;
    const index_t b = span.batch_row;
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.heads_per_qk();
      for (index_t r = 0; r < d.K; ++r)
        for (index_t c = 0; c < d.V; ++c) s(r, c) = span.read_state ? in.initial_state(span.state_row, hv, r, c) : 0.0;
      for (index_t t = span.token_begin; t < span.token_begin + span.tokens; ++t) {
        for (index_t r = 0; r < d.K; ++r) {
          const double decay = std::exp(static_cast<double>(gla_log_gate(in, options.gate, d, b, t, hv, r)));
          for (index_t c = 0; c < d.V; ++c) s(r, c) = decay * s(r, c) + double(static_cast<float>(in.k(b, t, h, r))) *
                                                 double(static_cast<float>(in.v(b, t, hv, c)));
        }
        for (index_t c = 0; c < d.V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < d.K; ++r) acc += double(static_cast<float>(in.q(b, t, h, r))) * s(r, c);
          out.o(b, t, hv, c) = static_cast<float>(scale * acc);
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

/// The definition on fp32 q/k/v (the overload braced argument lists pick).
inline void gated_linear_attention(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                                   const GatedLinearAttentionOptions& options = {},
                                   const Executor& executor = serial_executor()) {
  gated_linear_attention<float>(in, out, options, executor);
}

}  // namespace reference

/// \deprecated Renamed GatedLinearAttentionInputs (docs/conventions.md, naming).
using GlaInputs [[deprecated("renamed seqmix::GatedLinearAttentionInputs")]] = GatedLinearAttentionInputs;
/// \deprecated Renamed GatedLinearAttentionOutputs (docs/conventions.md, naming).
using GlaOutputs [[deprecated("renamed seqmix::GatedLinearAttentionOutputs")]] = GatedLinearAttentionOutputs;
/// \deprecated Renamed GatedLinearAttentionStepInputs (docs/conventions.md, naming).
using GlaStepInputs [[deprecated("renamed seqmix::GatedLinearAttentionStepInputs")]] = GatedLinearAttentionStepInputs;
/// \deprecated Renamed GatedLinearAttentionStepOutputs (docs/conventions.md, naming).
using GlaStepOutputs [[deprecated("renamed seqmix::GatedLinearAttentionStepOutputs")]] =
    GatedLinearAttentionStepOutputs;
/// \deprecated Renamed GatedLinearAttentionOptions (docs/conventions.md, naming).
using GlaOptions [[deprecated("renamed seqmix::GatedLinearAttentionOptions")]] = GatedLinearAttentionOptions;

}  // namespace seqmix
