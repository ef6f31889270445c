// gated_delta_rule (Gated DeltaNet; KDA when the gate is per key channel), SPEC section 4. This
// header holds the argument structs, the options, their validation and the readable definition
// seqmix::reference::gated_delta_rule. Fast prefill: chunked.hpp; decode step: step.hpp;
// derivation of the chunked WY form: ../delta_update/README.md.
//
//   S' = exp(g_t) S_{t-1}          (KDA: diag(exp(g_t)) S_{t-1})      S [K,V] per (batch, value head)
//   S_t = S' + beta_t k_t (v_t - S'^T k_t)^T
//   o_t = scale * S_t^T q_t        the state is updated before it is read
//
// q/k have HK heads, v / beta / g have HV (a multiple of HK): value head hv uses q/k head
// hv / (HV/HK) (repeat-interleave, SPEC section 1).
//
// Serving (core/batch.hpp): `batch` packs sequences ([1, total_T, ...] with cu_seqlens) and/or
// maps them to rows of a state pool [S,HV,K,V] (state_indices, has_initial_state); states are
// then per sequence, [N,HV,K,V] or the pool. `token_states` [Bt,Tt,HV,K,V] receives the state
// after every token (a speculative verify keeps the one after its last accepted token); given
// it, the fast form runs its recurrent kernel. A step's `batch` maps its rows to pool rows.
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
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/sequences.hpp"

namespace seqmix {

/// Options of gated_delta_rule and gated_delta_rule_step (Gated DeltaNet, KDA; docs/operators.md
/// section 4).
struct GatedDeltaRuleOptions {
  /// Which gate input the call reads (see DeltaGate).
  DeltaGate gate = DeltaGate::scalar;
  /// Multiplies q; default 1/sqrt(K).
  std::optional<float> scale;
  /// Normalize q and k inside the kernel (QkNorm::l2), or use them as given.
  QkNorm qk_norm = QkNorm::none;
  /// Tokens per chunk of the chunked WY form. Any value in [1, 4096] works; it changes rounding
  /// only. 32: the chunked form's extra flops (scores, solve, M U: 2K(C+1) + 2VC per token beside
  /// the recurrence's 6KV) halve against C = 64 while its state products stay on the register
  /// tile's rate: 1.06-1.11x faster than 64 with the scalar gate (idle machine), 1.04-1.22x
  /// (loaded) with no gate, KDA's chunked form, bf16 dot products and bf16 storage, K = V = 64
  /// and 128 (delta_update/README.md, "Chunk size").
  index_t chunk_size = 32;
  /// Prefill algorithm: chunked WY form, recurrent, or the measured choice (the step ignores it).
  DeltaAlgorithm algorithm = DeltaAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// Bf16Compute::dot: the chunked WY form rounds the operands of its GEMMs (q, k, the carried
  /// state, the solved U and the q-k scores) to bf16 and multiplies them with AVX512-BF16 dot
  /// products, accumulating in fp32 and carrying the state in fp32, where the compile target has
  /// them (__AVX512BF16__); the triangular solve stays fp32, and so does everything elsewhere and
  /// in the recurrent form. Bounded extra error (docs/operators.md); the reference and the step
  /// ignore it.
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

/// Prefill arguments. Optional views are empty when not given. Dense: B sequences of T tokens,
/// states [B,HV,K,V]; packed (batch.cu_seqlens [N+1]): token tensors [1,total_T,...], states
/// [N,HV,K,V]; with batch.state_indices the states are rows of a pool [S,HV,K,V] (core/batch.hpp).
/// T is the storage type of q, k and v: float (GatedDeltaRuleInputs), or seqmix::bf16 /
/// seqmix::f16, which the chunked and recurrent forms widen row by row as they load each chunk or
/// token (no fp32 copy of the inputs); beta, gates, states and outputs stay fp32.
template <class T>
struct GatedDeltaRuleInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "GatedDeltaRuleInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> q;                  ///< [B,T,HK,K]
  ConstView<T, 4> k;                  ///< [B,T,HK,K]
  ConstView<T, 4> v;                  ///< [B,T,HV,V], HV a multiple of HK
  ConstView<float, 3> beta;           ///< [B,T,HV]
  ConstView<float, 3> g_scalar = {};  ///< [B,T,HV]   log-decays <= 0 (DeltaGate::scalar only)
  ConstView<float, 4> g = {};         ///< [B,T,HV,K] log-decays <= 0 (DeltaGate::channel only)
  ConstView<float, 4> initial_state = {}; ///< [N,HV,K,V] or the pool [S,HV,K,V], optional (zeros if absent)
  SequenceBatch batch = {};           ///< optional: cu_seqlens, state_indices, has_initial_state
};

/// Prefill arguments with fp32 q/k/v (GatedDeltaRuleInputsOf).
using GatedDeltaRuleInputs = GatedDeltaRuleInputsOf<float>;

/// o must not overlap an input; final_state may be the same view as initial_state.
struct GatedDeltaRuleOutputs {
  TensorView<float, 4> o;             ///< [B,T,HV,V]
  TensorView<float, 4> final_state = {}; ///< [N,HV,K,V] or the pool, optional
  TensorView<float, 5> token_states = {}; ///< [B,T,HV,K,V], optional: the state after each token
};

/// Decode step: one token per batch row. T is the storage type of q, k and v (float, seqmix::bf16
/// or seqmix::f16, widened as the token is loaded); beta, gates, state and output stay fp32.
template <class T>
struct GatedDeltaRuleStepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "GatedDeltaRuleStepInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 3> q;             ///< [B,HK,K]
  ConstView<T, 3> k;             ///< [B,HK,K]
  ConstView<T, 3> v;             ///< [B,HV,V]
  ConstView<float, 2> beta;      ///< [B,HV]
  ConstView<float, 2> g_scalar = {};  ///< [B,HV]   (DeltaGate::scalar)
  ConstView<float, 3> g = {};         ///< [B,HV,K] (DeltaGate::channel)
  SequenceBatch batch = {};      ///< optional: state_indices [B] (-1 = padding row), has_initial_state [B]
};

/// Decode-step arguments with fp32 q/k/v (GatedDeltaRuleStepInputsOf).
using GatedDeltaRuleStepInputs = GatedDeltaRuleStepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct GatedDeltaRuleStepOutputs {
  TensorView<float, 3> o;      ///< [B,HV,V]
  TensorView<float, 4> state;  ///< [B,HV,K,V] or the pool [S,HV,K,V], updated in place (required)
};

namespace delta_update {

// The log-gates' values of a gate whose shapes check_delta_gate checked: all <= 0 (NaN refused).
template <std::size_t GRank>
inline void check_delta_gate_elements(const ArgCheck& check, DeltaGate gate, const ConstView<float, GRank>& g,
                                      const ConstView<float, GRank - 1>& g_scalar, const Executor& executor) {
  if (gate == DeltaGate::channel)
    detail::la::check_log_gate(check, "g", g, executor);
  else
    detail::la::check_log_gate(check, "g_scalar", g_scalar, executor);
}

// The gate arguments of a prefill (GRank 4) or a step (GRank 3). `gated` false: no gate at all
// (delta_rule), both views must be empty. `elements` false: the shapes only, the caller checks
// the log-gates' values later (check_delta_elements).
template <std::size_t GRank>
inline void check_delta_gate(const ArgCheck& check, bool gated, DeltaGate gate, const ConstView<float, GRank>& g,
                             const ConstView<float, GRank - 1>& g_scalar, const Dims& d, const Executor& executor,
                             bool elements = true) {
  constexpr bool prefill = GRank == 4;
  if (gated) check_enum(check.op(), "options.gate", gate, 2);
  std::array<index_t, GRank> g_shape{};
  std::array<index_t, GRank - 1> s_shape{};
  if constexpr (prefill) {
    g_shape = {d.B, d.T, d.HV, d.K};
    s_shape = {d.B, d.T, d.HV};
  } else {
    g_shape = {d.B, d.HV, d.K};
    s_shape = {d.B, d.HV};
  }
  const char* g_dims = prefill ? "B,T,HV,K" : "B,HV,K";
  const char* s_dims = prefill ? "B,T,HV" : "B,HV";
  if (!gated) return;
  if (gate == DeltaGate::channel) {
    if (!g.has_value() && g.numel() != 0)
      check.fail("g", std::string("is required for DeltaGate::channel, shape [") + g_dims + "]");
    check.shape("g", g, g_shape, g_dims);
    if (g_scalar.has_value()) check.fail("g_scalar", "must be empty with DeltaGate::channel (the gate is g)");
  } else {
    if (!g_scalar.has_value() && g_scalar.numel() != 0)
      check.fail("g_scalar", std::string("is required for DeltaGate::scalar, shape [") + s_dims + "]");
    check.shape("g_scalar", g_scalar, s_shape, s_dims);
    if (g.has_value()) check.fail("g", "must be empty with DeltaGate::scalar (the gate is g_scalar)");
  }
  if (elements) check_delta_gate_elements<GRank>(check, gate, g, g_scalar, executor);
}

// Everything a delta-rule prefill needs, gated or not (delta_rule passes gated = false). E: the
// storage type of q/k/v (float, bf16, f16).
template <class E>
struct DeltaCallOf {
  ConstView<E, 4> q, k, v;
  ConstView<float, 3> beta;
  bool gated = false;
  DeltaGate gate = DeltaGate::scalar;
  ConstView<float, 3> g_scalar;
  ConstView<float, 4> g;
  ConstView<float, 4> initial_state;
  TensorView<float, 4> o, final_state;
  TensorView<float, 5> token_states = {};
  SequenceBatch batch = {};
  std::optional<float> scale;
  QkNorm norm = QkNorm::none;
  index_t chunk = 32;  // always set from the options (their chunk_size)
  DeltaAlgorithm algorithm = DeltaAlgorithm::automatic;
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

using DeltaCall = DeltaCallOf<float>;

// Who checks the elements of a prefill's beta (finite) and gate (log-decays <= 0).
enum class ElementChecks {
  now,     ///< validate_delta, with the shapes
  caller,  ///< the caller, before it writes any output or state (fast_delta: run_delta_items,
           ///< which folds them into its chunk-factor pass when it has one)
};

// A validated prefill: its sizes, its sequences and the resolved scale.
struct DeltaProblem {
  Dims d;
  SequenceMap map;
  float scale;
};

// The elements of a prefill's beta and gate whose shapes validate_delta checked: a ShapeError
// naming the first bad one.
template <class E>
void check_delta_elements(const ArgCheck& check, const DeltaCallOf<E>& c, const Executor& executor) {
  check_beta_finite(check, c.beta);
  if (c.gated) check_delta_gate_elements<4>(check, c.gate, c.g, c.g_scalar, executor);
}

// Validates a prefill call before any output is written. With ElementChecks::caller the elements
// of beta and the gate are left to the caller (check_delta_elements), which must check them before
// it writes an output or a state.
template <class E>
DeltaProblem validate_delta(const ArgCheck& check, const DeltaCallOf<E>& c, const Executor& executor,
                            ElementChecks elements = ElementChecks::now) {
  using namespace detail::la;
  const bool now = elements == ElementChecks::now;
  const Dims d = check_qkv(check, "q", c.q, c.k, c.v);
  check.shape("beta", c.beta, std::array<index_t, 3>{d.B, d.T, d.HV}, "B,T,HV");
  if (now) check_beta_finite(check, c.beta);
  check_delta_gate<4>(check, c.gated, c.gate, c.g, c.g_scalar, d, executor, now);
  const std::array<index_t, 4> state_shape{-1, d.HV, d.K, d.V};
  check.optional_shape("initial_state", c.initial_state, state_shape, "N,HV,K,V");
  check.shape("o", c.o, std::array<index_t, 4>{d.B, d.T, d.HV, d.V}, "B,T,HV,V");
  check.optional_shape("final_state", c.final_state, state_shape, "N,HV,K,V");
  check.optional_shape("token_states", c.token_states, std::array<index_t, 5>{d.B, d.T, d.HV, d.K, d.V}, "B,T,HV,K,V");
  const float scale = check_scale(check, c.scale, d.K);
  check_chunk(check, c.chunk);
  check_enum(check.op(), "options.qk_norm", c.norm, 2);
  check_enum(check.op(), "options.algorithm", c.algorithm, 3);
  check_bf16_compute(check, c.bf16_compute);
  const index_t rows = state_rows(check, c.initial_state, c.final_state);
  const SequenceMap map = SequenceMap::make(check, c.batch, d.B, d.T, c.initial_state.has_value(), rows);
  check_prefill_aliasing(check, c.o, c.final_state, c.token_states, c.initial_state, named("q", c.q), named("k", c.k),
                         named("v", c.v), named("beta", c.beta), named("g", c.g), named("g_scalar", c.g_scalar));
  return {d, map, scale};
}

// Sequence s of a validated call as a dense call of its own (B = 1, its tokens, its state row;
// no initial state when it starts from zeros).
template <class E>
DeltaCallOf<E> sequence_call(const DeltaCallOf<E>& c, const SequenceSpan& s) {
  DeltaCallOf<E> one = c;
  one.q = sequence_rows(c.q, s), one.k = sequence_rows(c.k, s), one.v = sequence_rows(c.v, s);
  one.beta = sequence_rows(c.beta, s);
  one.g = sequence_rows(c.g, s), one.g_scalar = sequence_rows(c.g_scalar, s);
  one.o = sequence_rows(c.o, s);
  one.token_states = sequence_rows(c.token_states, s);
  one.initial_state = state_row(c.initial_state, s, s.read_state);
  one.final_state = state_row(c.final_state, s, true);
  one.batch = SequenceBatch();
  return one;
}

// x / sqrt(sum x^2 + eps) (or x) for the reference, in double; a 16-bit x is widened exactly.
template <class E>
std::vector<double> reference_row(const ConstView<E, 1>& x, QkNorm norm) {
  std::vector<double> out(static_cast<std::size_t>(x.size(0)));
  for (index_t i = 0; i < x.size(0); ++i) out[static_cast<std::size_t>(i)] = static_cast<float>(x(i));
  double sum = 0.0;
  for (const double xi : out) sum += xi * xi;
  const double f = norm == QkNorm::l2 ? 1.0 / std::sqrt(sum + double(kL2NormEps)) : 1.0;
  for (double& xi : out) xi *= f;
  return out;
}

// The definition on one sequence `c` (B = 1), token by token, the state in double.
template <class E>
void reference_sequence(const DeltaCallOf<E>& c, const Dims& d, double scale) {
  const index_t T = c.q.size(1);
  std::vector<double> S(static_cast<std::size_t>(d.K * d.V)), w(static_cast<std::size_t>(d.K)),
      u(static_cast<std::size_t>(d.V));
  auto s = [&](index_t r, index_t col) -> double& { return S[static_cast<std::size_t>(r * d.V + col)]; };
  for (index_t hv = 0; hv < d.HV; ++hv) {
    const index_t h = hv / d.heads_per_qk();
    for (index_t r = 0; r < d.K; ++r)
      for (index_t col = 0; col < d.V; ++col)
        s(r, col) = c.initial_state.has_value() ? c.initial_state(0, hv, r, col) : 0.0;
    for (index_t t = 0; t < T; ++t) {
      const std::vector<double> q = reference_row(c.q[0][t][h], c.norm);
      const std::vector<double> k = reference_row(c.k[0][t][h], c.norm);
      for (index_t r = 0; r < d.K; ++r) {
        double g = 0.0;
        if (c.gated) g = c.gate == DeltaGate::scalar ? c.g_scalar(0, t, hv) : c.g(0, t, hv, r);
        w[static_cast<std::size_t>(r)] = std::exp(g);
      }
      // S' = diag(w) S; u = beta (v - S'^T k); S = S' + k u^T; o = scale S^T q.
      for (index_t r = 0; r < d.K; ++r)
        for (index_t col = 0; col < d.V; ++col) s(r, col) *= w[static_cast<std::size_t>(r)];
      for (index_t col = 0; col < d.V; ++col) {
        double kv = 0.0;
        for (index_t r = 0; r < d.K; ++r) kv += k[static_cast<std::size_t>(r)] * s(r, col);
        u[static_cast<std::size_t>(col)] = double(c.beta(0, t, hv)) * (double(static_cast<float>(c.v(0, t, hv, col))) - kv);
      }
      for (index_t r = 0; r < d.K; ++r)
        for (index_t col = 0; col < d.V; ++col) s(r, col) += k[static_cast<std::size_t>(r)] * u[static_cast<std::size_t>(col)];
      for (index_t col = 0; col < d.V; ++col) {
        double acc = 0.0;
        for (index_t r = 0; r < d.K; ++r) acc += q[static_cast<std::size_t>(r)] * s(r, col);
        c.o(0, t, hv, col) = static_cast<float>(scale * acc);
      }
      if (c.token_states.has_value())
        for (index_t r = 0; r < d.K; ++r)
          for (index_t col = 0; col < d.V; ++col) c.token_states(0, t, hv, r, col) = static_cast<float>(s(r, col));
    }
    if (c.final_state.has_value())
      for (index_t r = 0; r < d.K; ++r)
        for (index_t col = 0; col < d.V; ++col) c.final_state(0, hv, r, col) = static_cast<float>(s(r, col));
  }
}

// The definition: each sequence of the batch alone (padding sequences skipped). Single-threaded.
template <class E>
void reference_delta(const char* op, const DeltaCallOf<E>& c, const Executor& executor) {
  const ArgCheck check(op);
  const DeltaProblem pr = validate_delta(check, c, executor);
  for (index_t n = 0; n < pr.map.sequences(); ++n) {
    const SequenceSpan s = pr.map[n];
    if (s.state_row >= 0) reference_sequence(sequence_call(c, s), pr.d, pr.scale);
  }
}

template <class E>
DeltaCallOf<E> gated_call(const GatedDeltaRuleInputsOf<E>& in, const GatedDeltaRuleOutputs& out,
                          const GatedDeltaRuleOptions& options) {
  DeltaCallOf<E> c;
  c.q = in.q, c.k = in.k, c.v = in.v, c.beta = in.beta;
  c.gated = true, c.gate = options.gate, c.g_scalar = in.g_scalar, c.g = in.g;
  c.initial_state = in.initial_state, c.batch = in.batch;
  c.o = out.o, c.final_state = out.final_state, c.token_states = out.token_states;
  c.scale = options.scale, c.norm = options.qk_norm, c.chunk = options.chunk_size, c.algorithm = options.algorithm;
  c.bf16_compute = options.bf16_compute;
  return c;
}

}  // namespace delta_update

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class E>
std::pair<GatedDeltaRuleInputsOf<E>, GatedDeltaRuleOutputs> reversed_call(const char* op, GatedDeltaRuleInputsOf<E> in,
                                                                          GatedDeltaRuleOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, in.beta, in.g_scalar, in.g, out.o, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, state in double. final_state may alias initial_state.
/// `executor` only splits the gate check. q/k/v may be stored as float, bf16 or f16
/// (GatedDeltaRuleInputsOf): each value is widened exactly where it is read.
template <class T>
void gated_delta_rule(const GatedDeltaRuleInputsOf<T>& in, const GatedDeltaRuleOutputs& out,
                      const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::gated_delta_rule", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::gated_delta_rule<T>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  delta_update::reference_delta("reference::gated_delta_rule", delta_update::gated_call(in, out, options), executor);
}

/// The definition on fp32 q/k/v (the overload braced argument lists pick).
inline void gated_delta_rule(const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                             const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor()) {
  gated_delta_rule<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
