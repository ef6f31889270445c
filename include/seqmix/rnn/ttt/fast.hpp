// ttt_linear, fast prefill: the dual form of the TTT layer (Sun et al. 2024, section 2.5), one
// mini-batch at a time as a few small matrix products, threaded over (batch, head) rows.
// Definition and arguments: reference.hpp; derivation: README.md.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/ttt/reference.hpp"

namespace seqmix {
namespace detail {

using TttMap = Eigen::Map<RowMajorMatrix<float>>;

/// Per-thread buffers of ttt_linear: the weights of one row and one mini-batch's rows.
struct TttLinearScratch {
  index_t K, bs;
  std::vector<float> W;            // [K,K] row-major, the row's current W_0
  std::vector<float> Q, X, V;      // [bs,K] q, k, v of the mini-batch
  std::vector<float> Z, G, Zq;     // [bs,K] k W_0, dl/dz per token, q W_t
  std::vector<float> A;            // [bs,bs] c_t eta_s (q_t . k_s), causal
  std::vector<float> eta, y;       // [bs], [K]
  TttLinearScratch(index_t K_, index_t bs_)
      : K(K_), bs(bs_), W(static_cast<std::size_t>(K_ * K_)), Q(static_cast<std::size_t>(bs_ * K_)), X(Q), V(Q),
        Z(Q), G(Q), Zq(Q), A(static_cast<std::size_t>(bs_ * bs_)), eta(static_cast<std::size_t>(bs_)),
        y(static_cast<std::size_t>(K_)) {}
};

/// One mini-batch of n tokens (rows of s.Q, s.X, s.V, learning rates s.eta) from W_0 = s.W:
/// leaves q_t W_t in s.Zq and W_{n-1} in s.W. `c` holds the position scales (null: ones).
template <class Gamma>
inline void ttt_linear_minibatch(TttLinearScratch& s, index_t n, const float* c, const Gamma& gamma,
                                 const Gamma& beta, float eps) {
  const index_t K = s.K;
  TttMap W(s.W.data(), K, K), Q(s.Q.data(), n, K), X(s.X.data(), n, K), Z(s.Z.data(), n, K);
  TttMap G(s.G.data(), n, K), Zq(s.Zq.data(), n, K), A(s.A.data(), n, n);
  Z.noalias() = X * W;
  // dl/dz of every token at W_0: the LayerNorm's backward of LN(z) + k - v.
  for (index_t t = 0; t < n; ++t) {
    float* g = s.G.data() + t * K;
    ttt_layer_norm<float>(s.Z.data() + t * K, K, gamma, beta, eps, g, static_cast<float*>(nullptr));
    for (index_t j = 0; j < K; ++j) g[j] += s.X[static_cast<std::size_t>(t * K + j)] - s.V[static_cast<std::size_t>(t * K + j)];
    ttt_layer_norm<float>(s.Z.data() + t * K, K, gamma, beta, eps, s.y.data(), g);
  }
  // q_t W_t = q_t W_0 - sum_{s <= t} c_t eta_s (q_t . k_s) dl/dz_s.
  A.noalias() = Q * X.transpose();
  for (index_t t = 0; t < n; ++t) {
    const float ct = c != nullptr ? c[t] : 1.f;
    for (index_t u = 0; u < n; ++u) A(t, u) = u <= t ? A(t, u) * ct * s.eta[static_cast<std::size_t>(u)] : 0.f;
  }
  Zq.noalias() = Q * W;
  Zq.noalias() -= A * G;
  // W_{n-1} = W_0 - c_{n-1} X^T diag(eta) G (X is not needed any more: scaled in place).
  const float last = c != nullptr ? c[n - 1] : 1.f;
  for (index_t t = 0; t < n; ++t) X.row(t) *= last * s.eta[static_cast<std::size_t>(t)];
  W.noalias() -= X.transpose() * G;
}

}  // namespace detail

/// TTT-Linear prefill (reference.hpp's definition) in the dual form: per mini-batch
/// Z = K W_0, the tokens' dl/dz, then Q W_0 - tril(c eta ∘ Q K^T) dL/dZ and
/// W_0 - K^T diag(c eta) dL/dZ, matrix products of [b,K] x [K,K] and [b,b]. Threaded over
/// (batch, head) rows; the mini-batches of a row are sequential.
inline void ttt_linear(const TttLinearInputs& in, const TttLinearOutputs& out, const TttOptions& options = {},
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("ttt_linear");
  const detail::TttDims d = detail::validate_ttt_linear(check, in, out, options);
  const index_t K = d.K, bs = std::min(options.mini_batch, std::max<index_t>(d.T, 1));
  std::vector<float> scale;
  if (in.token_scale.has_value())
    for (index_t i = 0; i < bs; ++i) scale.push_back(in.token_scale(i));
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    detail::TttLinearScratch s(K, bs);
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.H, h = row % d.H;
      const detail::TttLnRow gamma{&in.ln_weight, h}, beta{&in.ln_bias, h};
      for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j < K; ++j)
          s.W[static_cast<std::size_t>(i * K + j)] = in.initial_w.has_value() ? in.initial_w(b, h, i, j) : 0.f;
      for (index_t t0 = 0; t0 < d.T; t0 += bs) {
        const index_t n = std::min(bs, d.T - t0);
        for (index_t i = 0; i < n; ++i) {
          for (index_t j = 0; j < K; ++j) {
            const std::size_t e = static_cast<std::size_t>(i * K + j);
            s.Q[e] = in.q(b, t0 + i, h, j), s.X[e] = in.k(b, t0 + i, h, j), s.V[e] = in.v(b, t0 + i, h, j);
          }
          s.eta[static_cast<std::size_t>(i)] = in.eta(b, t0 + i, h);
        }
        detail::ttt_linear_minibatch(s, n, scale.empty() ? nullptr : scale.data(), gamma, beta, options.ln_eps);
        for (index_t i = 0; i < n; ++i) {
          detail::ttt_layer_norm<float>(s.Zq.data() + i * K, K, gamma, beta, options.ln_eps, s.y.data(),
                                        static_cast<float*>(nullptr));
          for (index_t j = 0; j < K; ++j) out.z(b, t0 + i, h, j) = s.Q[static_cast<std::size_t>(i * K + j)] + s.y[static_cast<std::size_t>(j)];
        }
      }
      if (out.final_w.has_value())
        for (index_t i = 0; i < K; ++i)
          for (index_t j = 0; j < K; ++j) out.final_w(b, h, i, j) = s.W[static_cast<std::size_t>(i * K + j)];
    }
  });
}

}  // namespace seqmix
