// linear_attention (SPEC section 4): feature maps identity / elu1 / relu / taylor2 (Based), the
// normalize option and JRT's prefix_len. This header holds the argument structs, the options,
// their validation and the readable definition seqmix::reference::linear_attention. Fast prefill:
// chunked.hpp; decode step: step.hpp; derivation: ../README.md.
//
//   S_t = S_{t-1} + phi(k_t) v_t^T       S [Kf,V] per (batch, value head), Kf = feature_dim(phi, K)
//   z_t = z_{t-1} + phi(k_t)             (normalize only; z [Kf])
//   o_t = scale * S_t^T phi(q_t)         divided by scale * phi(q_t).z_t when normalizing
// With prefix_len P > 0 (JRT prefix-linear attention), tokens t < P read the full prefix state
// S_{P-1} (and z_{P-1}) instead of S_t; tokens t >= P are causal as above. In a packed batch the
// prefix is min(P, length) tokens of each sequence. Batches, slots and token_states: GatedLinearAttentionInputs.
#pragma once

#include <algorithm>
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

/// Options of linear_attention and linear_attention_step (docs/operators.md section 4).
struct LinearAttentionOptions {
  /// phi applied to q and k (identity by default); it sets the state's key size Kf.
  FeatureMap feature_map = FeatureMap::identity;
  /// Divide o_t by scale * phi(q_t).z_t, z_t = sum_{s<=t} phi(k_s). Plain division, as in the
  /// definition: use a positive feature map (elu1) or a taylor2 map so the denominator stays > 0.
  bool normalize = false;
  /// JRT prefix mode: the first prefix_len tokens of the call read the state after the whole
  /// prefix (non-causal within the prefix). 0: fully causal. Must not exceed T.
  index_t prefix_len = 0;
  /// Multiplies phi(q); default 1/sqrt(K) with K the input key size (not the feature count).
  std::optional<float> scale;
  /// Tokens per chunk of the chunked algorithm; see GatedLinearAttentionOptions::chunk_size for why 64.
  index_t chunk_size = 64;
  /// Prefill algorithm: chunked, recurrent, or the measured choice (the step ignores it).
  LinearAttentionAlgorithm algorithm = LinearAttentionAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// Chunked prefill only: `dot` runs its GEMMs on AVX512-BF16 dot products (operands rounded to
  /// bf16 as packed, fp32 accumulation and state; docs/operators.md section 4 gives the bound)
  /// where the target has them. Elsewhere, in the recurrent form and in the step: fp32.
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

/// Optional views are empty when not given. Kf = feature_dim(options.feature_map, K). T is the
/// storage type of q, k and v: float (LinearAttentionInputs), or seqmix::bf16 / seqmix::f16, which
/// the chunked and recurrent forms widen row by row as they load each chunk or token, before the
/// feature map (no fp32 copy of the inputs); states, normalizers and outputs stay fp32.
template <class T>
struct LinearAttentionInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "LinearAttentionInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 4> q;                       ///< [B,T,H,K]
  ConstView<T, 4> k;                       ///< [B,T,H,K]
  ConstView<T, 4> v;                       ///< [B,T,HV,V], HV a multiple of H
  ConstView<float, 4> initial_state = {};  ///< [B,HV,Kf,V], optional (zero if absent)
  ConstView<float, 3> initial_normalizer = {}; ///< [B,HV,Kf], optional z (normalize only; zero if absent)
  /// cu_seqlens, state_indices, has_initial_state (seqmix/core/batch.hpp; see GatedLinearAttentionInputs): states
  /// and normalizers are then [N,...] per sequence or a pool [S,...] of slots.
  SequenceBatch batch = {};
};

/// Prefill arguments with fp32 q/k/v (LinearAttentionInputsOf).
using LinearAttentionInputs = LinearAttentionInputsOf<float>;

/// o must not overlap an input; a final view may be the same view as its initial one.
struct LinearAttentionOutputs {
  TensorView<float, 4> o;                 ///< [B,T,HV,V]
  TensorView<float, 4> final_state = {};  ///< [B,HV,Kf,V], optional
  TensorView<float, 3> final_normalizer = {}; ///< [B,HV,Kf], optional (normalize only)
  TensorView<float, 5> token_states = {}; ///< [B,T,HV,Kf,V], optional, the state after each token
                                          ///< (not with prefix_len; recurrent form)
  TensorView<float, 4> token_normalizers = {}; ///< [B,T,HV,Kf], optional (normalize only), z after each
                                           ///< token: with token_states, what a verify rolls back to
};

/// Decode-step arguments of linear_attention_step: one token per batch row. T: the storage type
/// of q, k and v (float, seqmix::bf16 or seqmix::f16; the token's rows are widened as loaded).
template <class T>
struct LinearAttentionStepInputsOf {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>,
                "LinearAttentionStepInputsOf: q/k/v are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<T, 3> q;  ///< [B,H,K]
  ConstView<T, 3> k;  ///< [B,H,K]
  ConstView<T, 3> v;  ///< [B,HV,V]
  SequenceBatch batch = {}; ///< state_indices / has_initial_state per row (see GatedLinearAttentionStepInputs)
};

/// Decode-step arguments with fp32 q/k/v (LinearAttentionStepInputsOf).
using LinearAttentionStepInputs = LinearAttentionStepInputsOf<float>;

/// Decode-step outputs; o must not overlap an input.
struct LinearAttentionStepOutputs {
  TensorView<float, 3> o;           ///< [B,HV,V]
  TensorView<float, 4> state;       ///< [B,HV,Kf,V] or a pool [S,HV,Kf,V], updated in place (required)
  TensorView<float, 3> normalizer = {};  ///< [B,HV,Kf] or [S,HV,Kf], updated in place (required iff normalize)
};

namespace detail::la {

inline void check_linear_attention_options(const ArgCheck& check, const LinearAttentionOptions& options,
                                           const Dims& d, bool step) {
  check_scale(check, options.scale, d.K);
  check_chunk(check, options.chunk_size);
  check_algorithm(check, options.algorithm);
  if (step && options.prefix_len != 0)
    check.fail("options.prefix_len", "must be 0 for a decode step (the prefix is a prefill concept)");
  if (!step && (options.prefix_len < 0 || options.prefix_len > d.T))
    check.fail("options.prefix_len",
               "must be in [0, T = " + std::to_string(d.T) + "], got " + std::to_string(options.prefix_len));
}

template <class T>
PrefillCheck validate_linear_attention(const char* op, const LinearAttentionInputsOf<T>& in,
                                              const LinearAttentionOutputs& out, const LinearAttentionOptions& options) {
  const ArgCheck check(op);
  Dims d = check_qkv(check, "q", in.q, in.k, in.v);
  check_enum(check.op(), "options.feature_map", options.feature_map, kFeatureMapCount);  // before it sizes the state
  check_bf16_compute(check, options.bf16_compute);
  d.Kf = feature_dim(options.feature_map, d.K);
  index_t rows = check_state_pair(check, "initial_state", in.initial_state, "final_state", out.final_state, d);
  rows = check_normalizer_pair(check, in.initial_normalizer, out.final_normalizer, rows, d);
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.HV, d.V}, "B,T,HV,V");
  check_token_states(check, out.token_states, d);
  check.optional_shape("token_normalizers", out.token_normalizers, std::array<index_t, 4>{d.B, d.T, d.HV, d.Kf},
                       "B,T,HV,Kf");
  // fail() rather than that(): the message would be built into a std::string on every call.
  if (!options.normalize && (in.initial_normalizer.has_value() || out.final_normalizer.has_value()))
    check.fail(in.initial_normalizer.has_value() ? "initial_normalizer" : "final_normalizer",
               "is only used with options.normalize = true");
  if (out.token_normalizers.has_value() && !options.normalize)
    check.fail("token_normalizers", "is only used with options.normalize = true");
  // Within a JRT prefix every token reads the whole prefix: no per-token state to roll back to.
  if (options.prefix_len > 0 && (out.token_states.has_value() || out.token_normalizers.has_value()))
    check.fail(out.token_states.has_value() ? "token_states" : "token_normalizers",
               "is not supported with options.prefix_len > 0");
  check_linear_attention_options(check, options, d, false);
  const bool has_initial = in.initial_state.has_value() || in.initial_normalizer.has_value();
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, has_initial, rows);
  check_no_overlap(check, "o", out.o, in.q, in.k, in.v, in.initial_state, in.initial_normalizer, out.final_state,
                   out.final_normalizer, out.token_states, out.token_normalizers);
  check_no_overlap(check, "token_states", out.token_states, in.q, in.k, in.v, in.initial_state, out.final_state,
                   in.initial_normalizer, out.final_normalizer, out.token_normalizers);
  check_no_overlap(check, "token_normalizers", out.token_normalizers, in.q, in.k, in.v, in.initial_state,
                   out.final_state, in.initial_normalizer, out.final_normalizer);
  return {d, seqs};
}

// `check` is the caller's (a static: building an ArgCheck allocates its name).
template <class T>
Dims validate_linear_attention_step(const ArgCheck& check, const LinearAttentionStepInputsOf<T>& in,
                                           const LinearAttentionStepOutputs& out, const LinearAttentionOptions& options) {
  Dims d = check_qkv_step(check, "q", in.q, in.k, in.v);
  check_enum(check.op(), "options.feature_map", options.feature_map, kFeatureMapCount);
  d.Kf = feature_dim(options.feature_map, d.K);
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.HV, d.V}, "B,HV,V");
  check.shape("state", out.state, std::array<index_t, 4>{-1, d.HV, d.Kf, d.V}, "S,HV,Kf,V");
  if (options.normalize)
    check.shape("normalizer", out.normalizer, std::array<index_t, 3>{out.state.size(0), d.HV, d.Kf}, "S,HV,Kf");
  else if (out.normalizer.has_value())
    check.fail("normalizer", "is only used with options.normalize = true");
  check_step_batch(check, in.batch, d.B, out.state.size(0));
  check_linear_attention_options(check, options, d, true);
  check_no_overlap(check, "o", out.o, in.q, in.k, in.v, out.state, out.normalizer);
  return d;
}

}  // namespace detail::la

namespace detail {

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class T>
std::pair<LinearAttentionInputsOf<T>, LinearAttentionOutputs> reversed_call(const char* op, LinearAttentionInputsOf<T> in,
                                                                           LinearAttentionOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.q, in.k, in.v, out.o, out.token_states, out.token_normalizers);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, state in double precision, one sequence at a time.
/// Single-threaded. q/k/v may be stored as float, bf16 or f16 (LinearAttentionInputsOf): each row
/// is widened to fp32 where it is read, before the feature map.
template <class T>
void linear_attention(const LinearAttentionInputsOf<T>& in, const LinearAttentionOutputs& out,
                      const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::linear_attention", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::linear_attention<T>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  using namespace detail::la;
  const auto [checked_dims, seqs] = validate_linear_attention("reference::linear_attention", in, out, options);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  const double scale = check_scale(ArgCheck("reference::linear_attention"), options.scale, d.K);
  const index_t Kf = d.Kf;
  std::vector<double> S(static_cast<std::size_t>(Kf * d.V)), z(static_cast<std::size_t>(Kf));
  std::vector<float> phi_q(static_cast<std::size_t>(Kf)), phi_k(static_cast<std::size_t>(Kf));
  std::vector<float> raw(static_cast<std::size_t>(d.K));  // a q or k row widened to fp32
  auto widened = [&](const ConstView<T, 1>& x) {
    for (index_t i = 0; i < d.K; ++i) raw[static_cast<std::size_t>(i)] = static_cast<float>(x(i));
    return ConstView<float, 1>(raw.data(), {d.K});
  };
  auto s = [&](index_t r, index_t c) -> double& { return S[static_cast<std::size_t>(r * d.V + c)]; };
  for (index_t n = 0; n < seqs.sequences(); ++n) {
    const SequenceSpan span = seqs[n];
    if (span.state_row < 0) continue;
    const index_t b = span.batch_row, t0 = span.token_begin, t1 = span.token_begin + span.tokens;
    const index_t P = t0 + std::min(options.prefix_len, span.tokens);
    const bool read_s = span.read_state && in.initial_state.has_value();
    const bool read_z = span.read_state && in.initial_normalizer.has_value();
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.heads_per_qk();
      for (index_t r = 0; r < Kf; ++r) {
        for (index_t c = 0; c < d.V; ++c) s(r, c) = read_s ? in.initial_state(span.state_row, hv, r, c) : 0.0;
        z[r] = read_z ? in.initial_normalizer(span.state_row, hv, r) : 0.0;
      }
      auto absorb = [&](index_t t) {  // S += phi(k_t) v_t^T, z += phi(k_t)
        apply_feature_map(options.feature_map, widened(in.k[b][t][h]), 1.f, phi_k.data());
        for (index_t r = 0; r < Kf; ++r) {
          z[r] += phi_k[r];
          for (index_t c = 0; c < d.V; ++c) s(r, c) += double(phi_k[r]) * double(static_cast<float>(in.v(b, t, hv, c)));
        }
        if (out.token_states.has_value())
          for (index_t r = 0; r < Kf; ++r)
            for (index_t c = 0; c < d.V; ++c) out.token_states(b, t, hv, r, c) = static_cast<float>(s(r, c));
        if (out.token_normalizers.has_value())
          for (index_t r = 0; r < Kf; ++r) out.token_normalizers(b, t, hv, r) = static_cast<float>(z[r]);
      };
      auto read = [&](index_t t) {  // o_t from the current state
        apply_feature_map(options.feature_map, widened(in.q[b][t][h]), 1.f, phi_q.data());
        double den = 0.0;
        for (index_t r = 0; r < Kf; ++r) den += scale * phi_q[r] * z[r];
        for (index_t c = 0; c < d.V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < Kf; ++r) acc += double(phi_q[r]) * s(r, c);
          out.o(b, t, hv, c) = static_cast<float>(options.normalize ? scale * acc / den : scale * acc);
        }
      };
      for (index_t t = t0; t < P; ++t) absorb(t);
      for (index_t t = t0; t < P; ++t) read(t);
      for (index_t t = P; t < t1; ++t) {
        absorb(t);
        read(t);
      }
      for (index_t r = 0; r < Kf; ++r) {
        if (out.final_state.has_value())
          for (index_t c = 0; c < d.V; ++c) out.final_state(span.state_row, hv, r, c) = static_cast<float>(s(r, c));
        if (out.final_normalizer.has_value()) out.final_normalizer(span.state_row, hv, r) = static_cast<float>(z[r]);
      }
    }
  }
}

/// The definition on fp32 q/k/v (the overload braced argument lists pick).
inline void linear_attention(const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                             const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  linear_attention<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
