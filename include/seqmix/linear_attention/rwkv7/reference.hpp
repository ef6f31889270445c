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
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"

namespace seqmix {

struct Rwkv7Inputs {
  ConstView<float, 4> r;              // [B,T,H,K] receptance (the query)
  ConstView<float, 4> k;              // [B,T,H,K]
  ConstView<float, 4> v;              // [B,T,H,V]
  ConstView<float, 4> a;              // [B,T,H,K] the state read by the rank-one term
  ConstView<float, 4> b;              // [B,T,H,K] where that read is written back
  ConstView<float, 4> g;              // [B,T,H,K] log-decay <= 0 (w = exp(g))
  ConstView<float, 4> initial_state;  // [B,H,K,V], optional (zero state if absent)
};

// o must not overlap an input; final_state may be the same view as initial_state.
struct Rwkv7Outputs {
  TensorView<float, 4> o;            // [B,T,H,V]
  TensorView<float, 4> final_state;  // [B,H,K,V], optional
};

struct Rwkv7StepInputs {
  ConstView<float, 3> r, k;  // [B,H,K]
  ConstView<float, 3> v;     // [B,H,V]
  ConstView<float, 3> a, b;  // [B,H,K]
  ConstView<float, 3> g;     // [B,H,K] log-decay <= 0
};

struct Rwkv7StepOutputs {
  TensorView<float, 3> o;      // [B,H,V]
  TensorView<float, 4> state;  // [B,H,K,V], read and then updated in place (required)
};

namespace delta_update {

inline Dims validate_rwkv7(const ArgCheck& check, const Rwkv7Inputs& in, const Rwkv7Outputs& out,
                           const Executor& executor) {
  const Dims d = detail::la::check_qkv(check, "r", in.r, in.k, in.v);
  check.that(d.HV == d.H, "v", "must have as many heads as r and k (H = " + std::to_string(d.H) + "), got shape " +
                                   shape_to_string(in.v.shape()));
  const std::array<index_t, 4> bthk{d.B, d.T, d.H, d.K};
  check.shape("a", in.a, bthk, "B,T,H,K").shape("b", in.b, bthk, "B,T,H,K").shape("g", in.g, bthk, "B,T,H,K");
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 4>{d.B, d.H, d.K, d.V}, "B,H,K,V");
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.H, d.V}, "B,T,H,V");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 4>{d.B, d.H, d.K, d.V}, "B,H,K,V");
  detail::la::check_log_gate(check, "g", in.g, executor);
  return d;
}

inline Dims validate_rwkv7_step(const ArgCheck& check, const Rwkv7StepInputs& in, const Rwkv7StepOutputs& out,
                                const Executor& executor) {
  const Dims d = detail::la::check_qkv_step(check, "r", in.r, in.k, in.v);
  check.that(d.HV == d.H, "v", "must have as many heads as r and k (H = " + std::to_string(d.H) + "), got shape " +
                                   shape_to_string(in.v.shape()));
  const std::array<index_t, 3> bhk{d.B, d.H, d.K};
  check.shape("a", in.a, bhk, "B,H,K").shape("b", in.b, bhk, "B,H,K").shape("g", in.g, bhk, "B,H,K");
  check.shape("o", out.o, std::array<index_t, 3>{d.B, d.H, d.V}, "B,H,V");
  check.shape("state", out.state, std::array<index_t, 4>{d.B, d.H, d.K, d.V}, "B,H,K,V");
  detail::la::check_log_gate(check, "g", in.g, executor);
  return d;
}

}  // namespace delta_update

namespace reference {

// The definition, token by token, state in double. Single-threaded; `executor` only splits the
// gate check. final_state may alias initial_state.
inline void rwkv7(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const Executor& executor = serial_executor()) {
  const delta_update::Dims d = delta_update::validate_rwkv7(ArgCheck("reference::rwkv7"), in, out, executor);
  const std::size_t K = static_cast<std::size_t>(d.K), V = static_cast<std::size_t>(d.V);
  std::vector<double> S(K * V), sa(V);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      for (std::size_t r = 0; r < K; ++r)
        for (std::size_t c = 0; c < V; ++c)
          S[r * V + c] = in.initial_state.has_value() ? in.initial_state(b, h, r, c) : 0.0;
      for (index_t t = 0; t < d.T; ++t) {
        // sa = S_{t-1}^T a_t, read before the update.
        for (std::size_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (std::size_t r = 0; r < K; ++r) acc += double(in.a(b, t, h, r)) * S[r * V + c];
          sa[c] = acc;
        }
        for (std::size_t r = 0; r < K; ++r) {
          const double w = std::exp(double(in.g(b, t, h, r)));
          for (std::size_t c = 0; c < V; ++c)
            S[r * V + c] = w * S[r * V + c] + double(in.b(b, t, h, r)) * sa[c] + double(in.k(b, t, h, r)) * in.v(b, t, h, c);
        }
        for (std::size_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (std::size_t r = 0; r < K; ++r) acc += double(in.r(b, t, h, r)) * S[r * V + c];
          out.o(b, t, h, c) = static_cast<float>(acc);
        }
      }
      if (out.final_state.has_value())
        for (std::size_t r = 0; r < K; ++r)
          for (std::size_t c = 0; c < V; ++c) out.final_state(b, h, r, c) = static_cast<float>(S[r * V + c]);
    }
}

}  // namespace reference
}  // namespace seqmix
