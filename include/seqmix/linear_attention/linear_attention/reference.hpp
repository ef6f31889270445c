// linear_attention (SPEC section 4): feature maps identity / elu1 / relu / taylor2 (Based), the
// normalize option and JRT's prefix_len. This header holds the argument structs, the options,
// their validation and the readable definition seqmix::reference::linear_attention. Fast prefill:
// chunked.hpp; decode step: step.hpp; derivation: ../README.md.
//
//   S_t = S_{t-1} + phi(k_t) v_t^T       S [Kf,V] per (batch, value head), Kf = feature_dim(phi, K)
//   z_t = z_{t-1} + phi(k_t)             (normalize only; z [Kf])
//   o_t = scale * S_t^T phi(q_t)         divided by scale * phi(q_t).z_t when normalizing
// With prefix_len P > 0 (JRT prefix-linear attention), tokens t < P read the full prefix state
// S_{P-1} (and z_{P-1}) instead of S_t; tokens t >= P are causal as above.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/common.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"

namespace seqmix {

struct LinearAttentionOptions {
  FeatureMap feature_map = FeatureMap::identity;
  // Divide o_t by scale * phi(q_t).z_t, z_t = sum_{s<=t} phi(k_s). Plain division, as in the
  // definition: use a positive feature map (elu1) or a taylor2 map so the denominator stays > 0.
  bool normalize = false;
  // JRT prefix mode: the first prefix_len tokens of the call read the state after the whole
  // prefix (non-causal within the prefix). 0: fully causal. Must not exceed T.
  index_t prefix_len = 0;
  // Multiplies phi(q); default 1/sqrt(K) with K the input key size (not the feature count).
  std::optional<float> scale;
  // Tokens per chunk of the chunked algorithm; see GlaOptions::chunk_size for why 64.
  index_t chunk_size = 64;
  LinearAttentionAlgorithm algorithm = LinearAttentionAlgorithm::automatic;
};

// Optional views are empty when not given. Kf = feature_dim(options.feature_map, K).
struct LinearAttentionInputs {
  ConstView<float, 4> q;                   // [B,T,H,K]
  ConstView<float, 4> k;                   // [B,T,H,K]
  ConstView<float, 4> v;                   // [B,T,HV,V], HV a multiple of H
  ConstView<float, 4> initial_state;       // [B,HV,Kf,V], optional (zero if absent)
  ConstView<float, 3> initial_normalizer;  // [B,HV,Kf], optional z (normalize only; zero if absent)
};

// o must not overlap an input; a final view may be the same view as its initial one.
struct LinearAttentionOutputs {
  TensorView<float, 4> o;                 // [B,T,HV,V]
  TensorView<float, 4> final_state;       // [B,HV,Kf,V], optional
  TensorView<float, 3> final_normalizer;  // [B,HV,Kf], optional (normalize only)
};

struct LinearAttentionStepInputs {
  ConstView<float, 3> q;  // [B,H,K]
  ConstView<float, 3> k;  // [B,H,K]
  ConstView<float, 3> v;  // [B,HV,V]
};

struct LinearAttentionStepOutputs {
  TensorView<float, 3> o;           // [B,HV,V]
  TensorView<float, 4> state;       // [B,HV,Kf,V], updated in place (required)
  TensorView<float, 3> normalizer;  // [B,HV,Kf], updated in place (required iff normalize)
};

namespace detail::la {

inline void check_linear_attention_options(const ArgCheck& check, const LinearAttentionOptions& options,
                                           const Dims& d, bool step) {
  check_scale(check, options.scale, d.K);
  check_chunk(check, options.chunk_size);
  check.that(options.prefix_len >= 0 && (step ? options.prefix_len == 0 : options.prefix_len <= d.T),
             "options.prefix_len",
             step ? "must be 0 for a decode step (the prefix is a prefill concept)"
                  : "must be in [0, T = " + std::to_string(d.T) + "], got " + std::to_string(options.prefix_len));
}

inline Dims validate_linear_attention(const char* op, const LinearAttentionInputs& in,
                                      const LinearAttentionOutputs& out, const LinearAttentionOptions& options) {
  const ArgCheck check(op);
  Dims d = check_qkv(check, "q", in.q, in.k, in.v);
  d.Kf = feature_dim(options.feature_map, d.K);
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 4>{d.B, d.HV, d.Kf, d.V}, "B,HV,Kf,V");
  check.optional_shape("initial_normalizer", in.initial_normalizer, std::array<index_t, 3>{d.B, d.HV, d.Kf}, "B,HV,Kf");
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.HV, d.V}, "B,T,HV,V");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 4>{d.B, d.HV, d.Kf, d.V}, "B,HV,Kf,V");
  check.optional_shape("final_normalizer", out.final_normalizer, std::array<index_t, 3>{d.B, d.HV, d.Kf}, "B,HV,Kf");
  check.that(options.normalize || (!in.initial_normalizer.has_value() && !out.final_normalizer.has_value()),
             in.initial_normalizer.has_value() ? "initial_normalizer" : "final_normalizer",
             "is only used with options.normalize = true");
  check_linear_attention_options(check, options, d, false);
  return d;
}

inline Dims validate_linear_attention_step(const char* op, const LinearAttentionStepInputs& in,
                                           const LinearAttentionStepOutputs& out, const LinearAttentionOptions& options) {
  const ArgCheck check(op);
  Dims d = check_qkv_step(check, "q", in.q, in.k, in.v);
  d.Kf = feature_dim(options.feature_map, d.K);
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.HV, d.V}, "B,HV,V");
  check.shape("state", out.state, std::array<index_t, 4>{d.B, d.HV, d.Kf, d.V}, "B,HV,Kf,V");
  if (options.normalize)
    check.shape("normalizer", out.normalizer, std::array<index_t, 3>{d.B, d.HV, d.Kf}, "B,HV,Kf");
  else
    check.that(!out.normalizer.has_value(), "normalizer", "is only used with options.normalize = true");
  check_linear_attention_options(check, options, d, true);
  return d;
}

}  // namespace detail::la

namespace reference {

// The definition, token by token, state in double precision. Single-threaded.
inline void linear_attention(const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                             const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  using namespace detail::la;
  const Dims d = validate_linear_attention("reference::linear_attention", in, out, options);
  const double scale = check_scale(ArgCheck("reference::linear_attention"), options.scale, d.K);
  const index_t Kf = d.Kf, P = options.prefix_len;
  std::vector<double> S(static_cast<std::size_t>(Kf * d.V)), z(static_cast<std::size_t>(Kf));
  std::vector<float> phi_q(static_cast<std::size_t>(Kf)), phi_k(static_cast<std::size_t>(Kf));
  auto s = [&](index_t r, index_t c) -> double& { return S[static_cast<std::size_t>(r * d.V + c)]; };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.heads_per_qk();
      for (index_t r = 0; r < Kf; ++r) {
        for (index_t c = 0; c < d.V; ++c) s(r, c) = in.initial_state.has_value() ? in.initial_state(b, hv, r, c) : 0.0;
        z[r] = in.initial_normalizer.has_value() ? in.initial_normalizer(b, hv, r) : 0.0;
      }
      auto absorb = [&](index_t t) {  // S += phi(k_t) v_t^T, z += phi(k_t)
        apply_feature_map(options.feature_map, in.k[b][t][h], 1.f, phi_k.data());
        for (index_t r = 0; r < Kf; ++r) {
          z[r] += phi_k[r];
          for (index_t c = 0; c < d.V; ++c) s(r, c) += double(phi_k[r]) * in.v(b, t, hv, c);
        }
      };
      auto read = [&](index_t t) {  // o_t from the current state
        apply_feature_map(options.feature_map, in.q[b][t][h], 1.f, phi_q.data());
        double den = 0.0;
        for (index_t r = 0; r < Kf; ++r) den += scale * phi_q[r] * z[r];
        for (index_t c = 0; c < d.V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < Kf; ++r) acc += double(phi_q[r]) * s(r, c);
          out.o(b, t, hv, c) = static_cast<float>(options.normalize ? scale * acc / den : scale * acc);
        }
      };
      for (index_t t = 0; t < P; ++t) absorb(t);
      for (index_t t = 0; t < P; ++t) read(t);
      for (index_t t = P; t < d.T; ++t) {
        absorb(t);
        read(t);
      }
      for (index_t r = 0; r < Kf; ++r) {
        if (out.final_state.has_value())
          for (index_t c = 0; c < d.V; ++c) out.final_state(b, hv, r, c) = static_cast<float>(s(r, c));
        if (out.final_normalizer.has_value()) out.final_normalizer(b, hv, r) = static_cast<float>(z[r]);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
