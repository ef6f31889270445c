// titans_mlp, fast prefill and decode step: the mini-batch form of Titans' deep memory
// (mlp_reference.hpp's definition) as a few matrix products per mini-batch, threaded over
// (batch, value head) rows; the step is a mini-batch of one.
//
// Inside a mini-batch every gradient G_s is taken at the first memory W_0, so with a_t = 1 - alpha_t
// the momentum and the memory are a linear recurrence in the fixed G_s (as titans' chunked form):
//   S_j = E_j S_0 - sum_{s<=j} e_{j,s} theta_s G_s,   W_j = A_j W_0 + c_j S_0 - sum_{s<=j} w_{j,s} theta_s G_s
//   A_j = a_j A_{j-1}, E_j = eta_j E_{j-1}, c_j = a_j c_{j-1} + E_j, e_{j,s} = eta_j e_{j-1,s},
//   w_{j,s} = a_j w_{j-1,s} + e_{j,s}, e_{s,s} = w_{s,s} = 1.
// Each G_s is rank one per layer (grad_W1 = k_s^T g1_s, grad_W2 = a_s^T d_s), so the queries'
// hidden rows are Z = diag(A) Q W1_0 + diag(c) Q S1_0 - (Wth o Q K^T) G1, H = gelu(Z), and the
// outputs Y = Q + diag(A) H W2_0 + diag(c) H S2_0 - (Wth o H Ah^T) D, with Wth = w theta (causal),
// G1 [n,M] and D [n,K] the tokens' backward rows: products of [n,K] x [K,M], [n,M] x [M,K], [n,n].
// Miras' losses change only D's rows: d = f'(e) elementwise (l2: 2 e), the rest is the same.
// Miras' retentions (lq_normalized, softmax_kl) are not linear in the state: the backward stays
// one batched pass at the memory read at the mini-batch's start, then the state takes the rank-one
// gradients token by token and each query reads its own W_t (titans_mlp_minibatch_retained).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/titans/mlp_reference.hpp"
#include "seqmix/rnn/ttt/fast.hpp"

namespace seqmix {
namespace detail {

/// Per-thread buffers of titans_mlp: one row's weights and momenta, one mini-batch's rows.
struct TitansMlpScratch {
  index_t K, M, bs;
  std::vector<float> W1, S1, W2, S2;        // [K,M], [K,M], [M,K], [M,K] row-major
  std::vector<float> Q, X, V, D, Y, Xs;     // [bs,K] q, k, v, dl/dM(k), y, scaled k rows
  std::vector<float> Ah, D1, G1, H, As, Tm; // [bs,M] gelu(k W1), gelu'(k W1), dl/dz1, q's hidden rows, scaled Ah, temp
  std::vector<float> P, Wth, Eth;           // [bs,bs] scores, w theta, e theta (causal)
  std::vector<float> alpha, eta, theta, A, E, C, delta;  // [bs]; delta: Huber's threshold per token
  TitansLoss loss = TitansLoss::l2;
  TitansRetention retention = TitansRetention::decay;  // with retention_q, axis: TitansMlpOptions'
  float retention_q = 4.f;
  TitansSoftmaxAxis axis = TitansSoftmaxAxis::key;
  std::vector<float> R1, R2;                // Moneta's read memory W = A / ||A||_q^{q-2} (sized on first use)
  std::vector<float> slice_max, slice_inv;  // Memora's per-slice max and 1 / sum, max(K, M) (sized on first use)
  chunkwise::ProductScratch finite_g;
  TitansMlpScratch(index_t K_, index_t M_, index_t bs_)
      : K(K_), M(M_), bs(bs_), W1(static_cast<std::size_t>(K_ * M_)), S1(W1), W2(W1), S2(W1),
        Q(static_cast<std::size_t>(bs_ * K_)), X(Q), V(Q), D(Q), Y(Q), Xs(Q), Ah(static_cast<std::size_t>(bs_ * M_)),
        D1(Ah), G1(Ah), H(Ah), As(Ah), Tm(Ah), P(static_cast<std::size_t>(bs_ * bs_)), Wth(P), Eth(P),
        alpha(static_cast<std::size_t>(bs_)), eta(alpha), theta(alpha), A(alpha), E(alpha), C(alpha), delta(alpha) {}
};

/// The step's per-thread scratch (a mini-batch of one), built on a thread's first call and rebuilt
/// only when K or M change, so a step makes no heap allocation after warm-up
/// (tests/alloc/alloc_titans.cpp). The prefill keeps a per-call scratch: its mini-batch size varies.
inline TitansMlpScratch& titans_mlp_step_scratch(index_t K, index_t M) {
  thread_local std::optional<TitansMlpScratch> scratch;
  if (!scratch || scratch->K != K || scratch->M != M) scratch.emplace(K, M, 1);
  return *scratch;
}

/// The backward of the n tokens of a mini-batch (rows of s.X, s.V) at the memory (W1, W2):
/// Ah = gelu(k W1), D1 = gelu'(k W1), D = f'(k + gelu(k W1) W2 - v) (l2: 2 e), G1 = (D W2^T) o D1.
template <class Deferred = void>
void titans_mlp_backward(TitansMlpScratch& s, index_t n, const TttDeferredMap<Deferred>& W1, const TttDeferredMap<Deferred>& W2) {
  const index_t K = s.K, M = s.M;
  TttDeferredMap<Deferred> X(s.X.data(), n, K), V(s.V.data(), n, K), D(s.D.data(), n, K);
  TttDeferredMap<Deferred> Ah(s.Ah.data(), n, M), D1(s.D1.data(), n, M), G1(s.G1.data(), n, M);
  Ah.noalias() = X * W1;
  ttt_gelu_block(Ah, &D1);
  D = X - V;
  D.noalias() += Ah * W2;
  if (s.loss == TitansLoss::l2) {
    D *= 2.f;
  } else {
    for (index_t r = 0; r < n; ++r) {
      const float delta = s.delta[static_cast<std::size_t>(r)];
      for (index_t j = 0; j < K; ++j) D(r, j) = titans_loss_grad<float>(s.loss, D(r, j), delta);
    }
  }
  G1.noalias() = D * W2.transpose();
  G1.array() *= D1.array();
}

/// One mini-batch of n tokens (rows of s.Q, s.X, s.V and gates s.alpha, s.eta, s.theta) from the
/// memory and momenta in s, with Titans' decay: leaves y in s.Y and the state after the
/// mini-batch's last token in s.
template <class Deferred = void>
void titans_mlp_minibatch(TitansMlpScratch& s, index_t n) {
  const index_t K = s.K, M = s.M;
  TttDeferredMap<Deferred> W1(s.W1.data(), K, M), S1(s.S1.data(), K, M), W2(s.W2.data(), M, K), S2(s.S2.data(), M, K);
  TttDeferredMap<Deferred> Q(s.Q.data(), n, K), X(s.X.data(), n, K), D(s.D.data(), n, K), Y(s.Y.data(), n, K);
  TttDeferredMap<Deferred> Xs(s.Xs.data(), n, K), Ah(s.Ah.data(), n, M), G1(s.G1.data(), n, M);
  TttDeferredMap<Deferred> H(s.H.data(), n, M), As(s.As.data(), n, M), Tm(s.Tm.data(), n, M);
  TttDeferredMap<Deferred> P(s.P.data(), n, n), Wth(s.Wth.data(), n, n), Eth(s.Eth.data(), n, n);
  titans_mlp_backward(s, n, W1, W2);
  // The recurrence's coefficients (products and sums only: gates of exactly 0 or 1 are safe).
  float A = 1.f, E = 1.f, C = 0.f;
  for (index_t j = 0; j < n; ++j) {
    const float a = 1.f - s.alpha[static_cast<std::size_t>(j)], eta = s.eta[static_cast<std::size_t>(j)];
    A *= a, E *= eta, C = a * C + E;
    s.A[static_cast<std::size_t>(j)] = A, s.E[static_cast<std::size_t>(j)] = E, s.C[static_cast<std::size_t>(j)] = C;
    for (index_t u = 0; u < n; ++u) {
      float e = 0.f, w = 0.f;
      if (u < j) e = eta * Eth(j - 1, u), w = a * Wth(j - 1, u) + e;  // rows j-1 still hold e, w (theta applied below)
      if (u == j) e = w = 1.f;
      Eth(j, u) = e, Wth(j, u) = w;
    }
  }
  for (index_t j = 0; j < n; ++j)
    for (index_t u = 0; u <= j; ++u) {
      // theta after the whole table: rows j-1 were read unscaled above.
      const float th = s.theta[static_cast<std::size_t>(u)];
      Eth(j, u) *= th, Wth(j, u) *= th;
    }
  const deferred_t<Eigen::Map<Eigen::VectorXf>, Deferred> Av(s.A.data(), n), Cv(s.C.data(), n);
  // Layer 1 of the queries at W1_j, then layer 2 at W2_j.
  H.noalias() = Q * W1;
  H.array().colwise() *= Av.array();
  Tm.noalias() = Q * S1;
  H.noalias() += Cv.asDiagonal() * Tm;
  P.noalias() = Q * X.transpose();
  P.array() *= Wth.array();
  chunkwise::add_lower_product(-P, G1, H, s.finite_g);  // causal for a non-finite G1 too
  ttt_gelu_block(H, nullptr);
  Y.noalias() = H * W2;
  Y.array().colwise() *= Av.array();
  Xs.noalias() = H * S2;  // Xs as a temporary [n,K]
  Y.noalias() += Cv.asDiagonal() * Xs;
  P.noalias() = H * Ah.transpose();
  P.array() *= Wth.array();
  chunkwise::add_lower_product(-P, D, Y, s.finite_g);
  Y += Q;
  // The state after token n-1: W = A W + c S - (rows scaled by w theta)^T G, S = E S - (e theta)^T G.
  const float An = s.A[static_cast<std::size_t>(n - 1)], En = s.E[static_cast<std::size_t>(n - 1)], Cn = s.C[static_cast<std::size_t>(n - 1)];
  for (index_t u = 0; u < n; ++u) Xs.row(u) = X.row(u) * Wth(n - 1, u), As.row(u) = Ah.row(u) * Wth(n - 1, u);
  W1 *= An;
  W1 += Cn * S1;
  W1.noalias() -= Xs.transpose() * G1;
  W2 *= An;
  W2 += Cn * S2;
  W2.noalias() -= As.transpose() * D;
  for (index_t u = 0; u < n; ++u) Xs.row(u) = X.row(u) * Eth(n - 1, u), As.row(u) = Ah.row(u) * Eth(n - 1, u);
  S1 *= En;
  S1.noalias() -= Xs.transpose() * G1;
  S2 *= En;
  S2.noalias() -= As.transpose() * D;
}

// Moneta's read factor 1 / ||A||_q^{q-2} of a stored matrix. q = 4 (the paper's) sums A^4 with
// Eigen's vectorized float reduction; any other q sums pow(|A|, q) in double.
template <class Deferred = void>
float titans_mlp_lq_factor(const TttDeferredMap<Deferred>& A, float q) {
  if (q == 2.f) return 1.f;
  double sum = 0.0;
  if (q == 4.f) {
    sum = static_cast<double>(A.array().square().square().sum());
  } else {
    for (index_t r = 0; r < A.rows(); ++r)
      for (index_t c = 0; c < A.cols(); ++c) sum += titans_abs_pow<double>(A(r, c), q);
  }
  return static_cast<float>(titans_lq_read_factor(sum, q));
}

// Memora's step of one stored [rows,cols] matrix: W = softmax(a log W + S) over each slice of
// `axis` (key: each column, over the rows; value: each row), in place, on Eigen's vectorized log
// and exp. a = 0 forgets log W entirely (0 * log 0 would be NaN); an entry that underflowed to 0
// has log -inf and stays 0.
// slice_max and slice_inv hold at least max(rows, cols) floats (no allocation per token).
template <class Deferred = void>
void titans_mlp_softmax_step(TttDeferredMap<Deferred>& W, const TttDeferredMap<Deferred>& S, float a, TitansSoftmaxAxis axis,
                             float* slice_max, float* slice_inv) {
  if (a == 0.f)
    W = S;
  else
    W.array() = a * W.array().log() + S.array();
  if (axis == TitansSoftmaxAxis::key) {
    deferred_t<Eigen::Map<Eigen::RowVectorXf>, Deferred> mx(slice_max, W.cols()), inv(slice_inv, W.cols());
    mx.noalias() = W.colwise().maxCoeff();
    W.array() = (W.array().rowwise() - mx.array()).exp();
    inv.noalias() = W.colwise().sum().cwiseInverse();
    W.array().rowwise() *= inv.array();
  } else {
    deferred_t<Eigen::Map<Eigen::VectorXf>, Deferred> mx(slice_max, W.rows()), inv(slice_inv, W.rows());
    mx.noalias() = W.rowwise().maxCoeff();
    W.array() = (W.array().colwise() - mx.array()).exp();
    inv.noalias() = W.rowwise().sum().cwiseInverse();
    W.array().colwise() *= inv.array();
  }
}

/// One mini-batch of n tokens with a Miras retention (s.retention: lq_normalized or softmax_kl).
/// The gradients are still all taken at the memory read at the mini-batch's start (its backward is
/// one batched pass); the retention is not linear in the state, so the momentum and the state then
/// take the tokens' rank-one gradients one by one, and each query reads the memory after its token:
/// y = q + f2 gelu(f1 q W1) W2 with Moneta's read factors f (1 for Memora).
template <class Deferred = void>
void titans_mlp_minibatch_retained(TitansMlpScratch& s, index_t n) {
  const index_t K = s.K, M = s.M;
  const bool moneta = s.retention == TitansRetention::lq_normalized;
  TttDeferredMap<Deferred> W1(s.W1.data(), K, M), S1(s.S1.data(), K, M), W2(s.W2.data(), M, K), S2(s.S2.data(), M, K);
  TttDeferredMap<Deferred> Q(s.Q.data(), n, K), X(s.X.data(), n, K), D(s.D.data(), n, K), Y(s.Y.data(), n, K);
  TttDeferredMap<Deferred> Ah(s.Ah.data(), n, M), G1(s.G1.data(), n, M);
  if (moneta) {
    if (s.R1.size() != s.W1.size()) s.R1.resize(s.W1.size()), s.R2.resize(s.W2.size());
    TttDeferredMap<Deferred> R1(s.R1.data(), K, M), R2(s.R2.data(), M, K);
    R1 = titans_mlp_lq_factor(W1, s.retention_q) * W1;
    R2 = titans_mlp_lq_factor(W2, s.retention_q) * W2;
    titans_mlp_backward(s, n, R1, R2);
  } else {
    const std::size_t longest = static_cast<std::size_t>(std::max(K, M));
    if (s.slice_max.size() != longest) s.slice_max.resize(longest), s.slice_inv.resize(longest);
    titans_mlp_backward(s, n, W1, W2);
  }
  for (index_t u = 0; u < n; ++u) {
    const std::size_t g = static_cast<std::size_t>(u);
    const float a = 1.f - s.alpha[g], eta = s.eta[g], theta = s.theta[g];
    S1 *= eta;
    S1.noalias() -= (theta * X.row(u).transpose()) * G1.row(u);
    S2 *= eta;
    S2.noalias() -= (theta * Ah.row(u).transpose()) * D.row(u);
    float f1 = 1.f, f2 = 1.f;
    if (moneta) {
      W1 = a * W1 + S1;
      W2 = a * W2 + S2;
      f1 = titans_mlp_lq_factor(W1, s.retention_q), f2 = titans_mlp_lq_factor(W2, s.retention_q);
    } else {
      titans_mlp_softmax_step(W1, S1, a, s.axis, s.slice_max.data(), s.slice_inv.data());
      titans_mlp_softmax_step(W2, S2, a, s.axis, s.slice_max.data(), s.slice_inv.data());
    }
    TttDeferredMap<Deferred> h(s.H.data() + u * M, 1, M);  // the query's hidden row
    h.noalias() = f1 * (Q.row(u) * W1);
    ttt_gelu_block(h, nullptr);
    Y.row(u) = Q.row(u) + f2 * (h * W2);
  }
}

// One mini-batch with the scratch's retention.
template <class Deferred = void>
void titans_mlp_minibatch_any(TitansMlpScratch& s, index_t n) {
  if (s.retention == TitansRetention::decay)
    titans_mlp_minibatch<Deferred>(s, n);
  else
    titans_mlp_minibatch_retained<Deferred>(s, n);
}

// The scratch's options from TitansMlpOptions.
inline void titans_mlp_configure(TitansMlpScratch& s, const TitansMlpOptions& options) {
  s.loss = options.loss, s.retention = options.retention, s.retention_q = options.retention_q, s.axis = options.softmax_axis;
}

}  // namespace detail

/// Titans' MLP-memory prefill (mlp_reference.hpp's definition) in the mini-batch form: per
/// mini-batch the tokens' forward and backward at its first memory as [b,K] x [K,M] and
/// [b,M] x [M,K] products, the queries' reads through the causal [b,b] weights of the momentum
/// recurrence, and the state update. Threaded over (batch, value head) rows. options.loss picks
/// the inner loss (Miras); options.reverse runs through reversed views; serving batches
/// (in.batch) run sequence by sequence, each packed sequence starting its own mini-batches.
/// options.retention other than decay (Moneta, Memora): the same batched backward, the state
/// updates and reads token by token inside each mini-batch.
template <class Deferred = void>
void titans_mlp(const TitansMlpInputs& in, const TitansMlpOutputs& out, const TitansMlpOptions& options = {},
                const Executor& executor = serial_executor()) {
  static const ArgCheck check("titans_mlp");
  SequenceMap map;
  const detail::TitansMlpDims d = detail::validate_titans_mlp(check, in, out, options, &map);
  if (options.reverse) {
    const auto rev = detail::titans_mlp_reversed_call(in, out);
    return titans_mlp<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  if (!detail::rnn_plain_batch(in.batch))
    return detail::titans_mlp_for_each_sequence(map, in, out, [&](const TitansMlpInputs& in1, const TitansMlpOutputs& out1) {
      titans_mlp<Deferred>(in1, out1, options, executor);
    });
  const index_t K = d.K, M = d.M, bs = std::min(options.mini_batch, std::max<index_t>(d.T, 1));
  parallel_for(executor, d.B * d.HV, 1, [&](index_t begin, index_t end) {
    detail::TitansMlpScratch s(K, M, bs);
    detail::titans_mlp_configure(s, options);
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.HV, hv = row % d.HV, hk = hv / d.group();
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const std::size_t e1 = static_cast<std::size_t>(i * M + m), e2 = static_cast<std::size_t>(m * K + i);
          s.W1[e1] = in.initial_w1(b, hv, i, m), s.W2[e2] = in.initial_w2(b, hv, m, i);
          s.S1[e1] = in.initial_s1.has_value() ? in.initial_s1(b, hv, i, m) : 0.f;
          s.S2[e2] = in.initial_s2.has_value() ? in.initial_s2(b, hv, m, i) : 0.f;
        }
      for (index_t t0 = 0; t0 < d.T; t0 += bs) {
        const index_t n = std::min(bs, d.T - t0);
        for (index_t r = 0; r < n; ++r) {
          for (index_t j = 0; j < K; ++j) {
            const std::size_t e = static_cast<std::size_t>(r * K + j);
            s.Q[e] = in.q(b, t0 + r, hk, j), s.X[e] = in.k(b, t0 + r, hk, j), s.V[e] = in.v(b, t0 + r, hv, j);
          }
          const std::size_t g = static_cast<std::size_t>(r);
          s.alpha[g] = in.alpha(b, t0 + r, hv), s.eta[g] = in.eta(b, t0 + r, hv), s.theta[g] = in.theta(b, t0 + r, hv);
          s.delta[g] = in.huber_delta.has_value() ? in.huber_delta(b, t0 + r, hv) : options.huber_delta;
        }
        detail::titans_mlp_minibatch_any<Deferred>(s, n);
        for (index_t r = 0; r < n; ++r)
          for (index_t j = 0; j < K; ++j) out.y(b, t0 + r, hv, j) = s.Y[static_cast<std::size_t>(r * K + j)];
      }
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const std::size_t e1 = static_cast<std::size_t>(i * M + m), e2 = static_cast<std::size_t>(m * K + i);
          if (out.final_w1.has_value()) out.final_w1(b, hv, i, m) = s.W1[e1];
          if (out.final_w2.has_value()) out.final_w2(b, hv, m, i) = s.W2[e2];
          if (out.final_s1.has_value()) out.final_s1(b, hv, i, m) = s.S1[e1];
          if (out.final_s2.has_value()) out.final_s2(b, hv, m, i) = s.S2[e2];
        }
    }
  });
}

/// One decode token per batch row: the exact per-token recurrence (a mini-batch of one), weights
/// and momenta read and updated in place, y = q + gelu(q W1_t) W2_t, with options.loss, the
/// token's huber_delta and options.retention (Moneta: w1, w2 hold A1, A2). options.mini_batch and options.reverse are not used (mini_batch checked
/// only). With in.batch.state_indices the states are pools [P,...] and row b updates pool row
/// state_indices[b] (-1: padding, untouched). Threaded over (batch, value head).
template <class Deferred = void>
void titans_mlp_step(const TitansMlpStepInputs& in, const TitansMlpStepOutputs& out,
                     const TitansMlpOptions& options = {}, const Executor& executor = serial_executor()) {
  static const ArgCheck check("titans_mlp_step");
  const detail::TitansMlpDims d = detail::validate_titans_mlp_step(check, in, out, options);
  const index_t K = d.K, M = d.M;
  parallel_for(executor, d.B * d.HV, 1, [&](index_t begin, index_t end) {
    detail::TitansMlpScratch& s = detail::titans_mlp_step_scratch(K, M);
    detail::titans_mlp_configure(s, options);
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.HV, hv = row % d.HV, hk = hv / d.group();
      const index_t p = detail::titans_mlp_step_row(in.batch, b);  // the states' (pool) row
      if (p < 0) continue;                                          // padding row: y and states untouched
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const std::size_t e1 = static_cast<std::size_t>(i * M + m), e2 = static_cast<std::size_t>(m * K + i);
          s.W1[e1] = out.w1(p, hv, i, m), s.W2[e2] = out.w2(p, hv, m, i);
          s.S1[e1] = out.s1(p, hv, i, m), s.S2[e2] = out.s2(p, hv, m, i);
        }
      for (index_t j = 0; j < K; ++j) {
        const std::size_t e = static_cast<std::size_t>(j);
        s.Q[e] = in.q(b, hk, j), s.X[e] = in.k(b, hk, j), s.V[e] = in.v(b, hv, j);
      }
      s.alpha[0] = in.alpha(b, hv), s.eta[0] = in.eta(b, hv), s.theta[0] = in.theta(b, hv);
      s.delta[0] = in.huber_delta.has_value() ? in.huber_delta(b, hv) : options.huber_delta;
      detail::titans_mlp_minibatch_any<Deferred>(s, 1);
      for (index_t j = 0; j < K; ++j) out.y(b, hv, j) = s.Y[static_cast<std::size_t>(j)];
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const std::size_t e1 = static_cast<std::size_t>(i * M + m), e2 = static_cast<std::size_t>(m * K + i);
          out.w1(p, hv, i, m) = s.W1[e1], out.w2(p, hv, m, i) = s.W2[e2];
          out.s1(p, hv, i, m) = s.S1[e1], out.s2(p, hv, m, i) = s.S2[e2];
        }
    }
  });
}

}  // namespace seqmix
