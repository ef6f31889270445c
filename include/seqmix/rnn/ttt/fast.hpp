// ttt_linear and ttt_mlp, fast prefills: the dual form of the TTT layer (Sun et al. 2024, section 2.5), one
// mini-batch at a time as a few small matrix products, threaded over (batch, head) rows.
// Definition and arguments: reference.hpp; derivation: README.md.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/ttt/reference.hpp"

namespace seqmix {
namespace detail {

using TttMap = Eigen::Map<RowMajorMatrix<float>>;

/// TttMap, named through the `Deferred` parameter of the function templates of ttt and titans so
/// that their Eigen products compile only in the units that call them (docs/compile_time.md).
template <class Deferred>
using TttDeferredMap = deferred_t<TttMap, Deferred>;

/// The LayerNorm of ttt's fast forms over a block of rows [n,K] at once (Eigen array
/// expressions, vectorized along the rows): one head's gamma and beta, kept contiguous, and the
/// forward's normalized rows and 1/sigma, which the backward reuses. forward and backward are
/// templates on the map type (a TttDeferredMap) so that they compile only where ttt is called.
struct TttLnBlock {
  index_t K;
  Eigen::Array<float, 1, Eigen::Dynamic> gamma, beta;  // [K]
  std::vector<float> xh;                                // [bs,K] (z - mean) / sigma
  Eigen::ArrayXf inv, m1, m2;                           // [bs] 1/sigma and the backward's two means
  TttLnBlock(index_t K_, index_t bs)
      : K(K_), gamma(K_), beta(K_), xh(static_cast<std::size_t>(bs * K_)), inv(bs), m1(bs), m2(bs) {}

  /// Head h's parameters.
  void load(const ConstView<float, 2>& weight, const ConstView<float, 2>& bias, index_t h) {
    for (index_t j = 0; j < K; ++j) gamma(j) = weight(h, j), beta(j) = bias(h, j);
  }

  /// y = LN(z) row by row (y may be z itself); keeps xh and 1/sigma for backward().
  template <class Map>
  void forward(const Map& z, Map& y, float eps) {
    const index_t n = z.rows();
    Map xm(xh.data(), n, K);
    auto mean = m1.head(n);
    mean = z.array().rowwise().mean();
    xm.array() = z.array().colwise() - mean;
    inv.head(n) = (xm.array().square().rowwise().mean() + eps).rsqrt();
    xm.array().colwise() *= inv.head(n);
    y.array() = (xm.array().rowwise() * gamma).rowwise() + beta;
  }

  /// dy := dl/dz from dl/dy, for the rows of the last forward().
  template <class Map>
  void backward(Map& dy) {
    const index_t n = dy.rows();
    const Map xm(xh.data(), n, K);
    dy.array().rowwise() *= gamma;
    m1.head(n) = dy.array().rowwise().mean();
    m2.head(n) = (dy.array() * xm.array()).rowwise().mean();
    dy.array() = dy.array().colwise() - m1.head(n);
    dy.array() -= xm.array().colwise() * m2.head(n);
    dy.array().colwise() *= inv.head(n);
  }
};

/// Per-thread buffers of ttt_linear: the weights of one row and one mini-batch's rows.
struct TttLinearScratch {
  index_t K, bs;
  std::vector<float> W;            // [K,K] row-major, the row's current W_0
  std::vector<float> Q, X, V;      // [bs,K] q, k, v of the mini-batch
  std::vector<float> Z, G, Zq;     // [bs,K] k W_0, dl/dz per token, q W_t
  std::vector<float> A;            // [bs,bs] c_t eta_s (q_t . k_s), causal
  std::vector<float> eta;          // [bs]
  std::vector<float> bias, bias_acc;  // [K] the row's current b_0, and sum_{s <= t} eta_s dl/dz_s
  bool has_bias = false;           // options.inner_bias == trained: f(x) = x W + b
  TttLnBlock ln;                   // the head's LayerNorm
  chunkwise::ProductScratch finite_g;  // sized only by a mini-batch with a non-finite gradient
  TttLinearScratch(index_t K_, index_t bs_)
      : K(K_), bs(bs_), W(static_cast<std::size_t>(K_ * K_)), Q(static_cast<std::size_t>(bs_ * K_)), X(Q), V(Q),
        Z(Q), G(Q), Zq(Q), A(static_cast<std::size_t>(bs_ * bs_)), eta(static_cast<std::size_t>(bs_)),
        bias(static_cast<std::size_t>(K_)), bias_acc(bias), ln(K_, bs_) {}
};

/// A = tril(c_t eta_s (L R^T)_ts) for the rows of L and R [n, cols].
template <class Deferred = void>
void ttt_scaled_causal_scores(TttDeferredMap<Deferred>& A, const TttDeferredMap<Deferred>& L,
                              const TttDeferredMap<Deferred>& R, index_t n, const float* c,
                              const std::vector<float>& eta) {
  A.noalias() = L * R.transpose();
  for (index_t t = 0; t < n; ++t) {
    const float ct = c != nullptr ? c[t] : 1.f;
    for (index_t u = 0; u < n; ++u) A(t, u) = u <= t ? A(t, u) * ct * eta[static_cast<std::size_t>(u)] : 0.f;
  }
}

/// The inner bias a mini-batch's queries read, b_t = b_0 - c_t sum_{s <= t} eta_s G_s (a bias's
/// gradient is dl/d(its layer's output), the rows of G [n,cols]): added to row t of Y [n,cols];
/// then the next mini-batch's b_0 - c_{n-1} sum_s eta_s G_s into `bias`. `acc` [cols] is scratch.
template <class Deferred = void>
void ttt_running_bias(TttDeferredMap<Deferred>& Y, const TttDeferredMap<Deferred>& G, std::vector<float>& bias,
                      std::vector<float>& acc, index_t n, const float* c, const std::vector<float>& eta) {
  const index_t cols = G.cols();
  deferred_t<Eigen::Map<Eigen::RowVectorXf>, Deferred> b(bias.data(), cols), sum(acc.data(), cols);
  sum.setZero();
  for (index_t t = 0; t < n; ++t) {
    sum += eta[static_cast<std::size_t>(t)] * G.row(t);
    Y.row(t) += b - (c != nullptr ? c[t] : 1.f) * sum;
  }
  b -= (c != nullptr ? c[n - 1] : 1.f) * sum;
}

/// One mini-batch of n tokens (rows of s.Q, s.X, s.V, learning rates s.eta) from W_0 = s.W
/// with the LayerNorm s.ln: leaves z_t = q_t + LN(q_t W_t) in s.Zq and W_{n-1} in s.W. `c` holds
/// the position scales (null: ones).
template <class Deferred = void>
void ttt_linear_minibatch(TttLinearScratch& s, index_t n, const float* c, float eps) {
  const index_t K = s.K;
  TttDeferredMap<Deferred> W(s.W.data(), K, K), Q(s.Q.data(), n, K), X(s.X.data(), n, K), Z(s.Z.data(), n, K);
  TttDeferredMap<Deferred> V(s.V.data(), n, K), G(s.G.data(), n, K), Zq(s.Zq.data(), n, K), A(s.A.data(), n, n);
  Z.noalias() = X * W;
  if (s.has_bias) Z.rowwise() += deferred_t<Eigen::Map<const Eigen::RowVectorXf>, Deferred>(s.bias.data(), K);
  // dl/dz of every token at W_0: the LayerNorm's backward of LN(z) + k - v.
  s.ln.forward(Z, G, eps);
  G += X - V;
  s.ln.backward(G);
  // q_t W_t = q_t W_0 - sum_{s <= t} c_t eta_s (q_t . k_s) dl/dz_s.
  ttt_scaled_causal_scores(A, Q, X, n, c, s.eta);
  Zq.noalias() = Q * W;
  // Zq -= A G, causal also for a non-finite gradient (core/chunkwise/causal_product.hpp): one GEMM
  // would multiply the zeros above A's diagonal by a later token's NaN.
  chunkwise::add_lower_product(-A, G, Zq, s.finite_g);
  // The bias seen by query t (dl/db = dl/dz), and the mini-batch's update of b.
  if (s.has_bias) ttt_running_bias(Zq, G, s.bias, s.bias_acc, n, c, s.eta);
  s.ln.forward(Zq, Zq, eps);
  Zq += Q;
  // W_{n-1} = W_0 - c_{n-1} X^T diag(eta) G (X is not needed any more: scaled in place).
  const float last = c != nullptr ? c[n - 1] : 1.f;
  for (index_t t = 0; t < n; ++t) X.row(t) *= last * s.eta[static_cast<std::size_t>(t)];
  W.noalias() -= X.transpose() * G;
}

/// Per-thread buffers of ttt_mlp: one row's weights and one mini-batch's rows.
struct TttMlpScratch {
  index_t K, M, bs;
  std::vector<float> W1, W2;              // [K,M], [M,K] row-major, the row's current weights
  std::vector<float> Q, X, V, Z2, G2, Zq; // [bs,K]
  std::vector<float> Ah, G1, Hq, D1;      // [bs,M] gelu(k W1), dl/dz1, q's hidden rows, gelu'(k W1)
  std::vector<float> A;                   // [bs,bs]
  std::vector<float> eta;                 // [bs]
  std::vector<float> b1, b1_acc, b2, b2_acc;  // [M], [M], [K], [K] the row's current biases, their sums
  bool has_bias = false;                  // options.inner_bias == trained: gelu(x W1 + b1) W2 + b2
  TttLnBlock ln;                          // the head's LayerNorm
  chunkwise::ProductScratch finite_g;     // sized only by a mini-batch with a non-finite gradient
  TttMlpScratch(index_t K_, index_t M_, index_t bs_)
      : K(K_), M(M_), bs(bs_), W1(static_cast<std::size_t>(K_ * M_)), W2(W1), Q(static_cast<std::size_t>(bs_ * K_)),
        X(Q), V(Q), Z2(Q), G2(Q), Zq(Q), Ah(static_cast<std::size_t>(bs_ * M_)), G1(Ah), Hq(Ah), D1(Ah),
        A(static_cast<std::size_t>(bs_ * bs_)), eta(static_cast<std::size_t>(bs_)), b1(static_cast<std::size_t>(M_)),
        b1_acc(b1), b2(static_cast<std::size_t>(K_)), b2_acc(b2), ln(K_, bs_) {}
};

/// gelu (tanh form) of every element of `x` in place, on Eigen's vectorized tanh; with `derivative`
/// given, first writes gelu'(x) there (the values before the update).
template <class Deferred = void>
void ttt_gelu_block(TttDeferredMap<Deferred>& x, TttDeferredMap<Deferred>* derivative) {
  constexpr float c = 0.7978845608028654f, a = 0.044715f;
  auto u = x.array();
  if (derivative != nullptr) {
    auto d = derivative->array();
    d = (c * (u + a * u.cube())).tanh();  // tanh, then the derivative from it
    d = 0.5f * (1.f + d) + 0.5f * u * (1.f - d.square()) * c * (1.f + 3.f * a * u.square());
  }
  u = 0.5f * u * (1.f + (c * (u + a * u.cube())).tanh());
}

/// One ttt_mlp mini-batch of n tokens from W1_0, W2_0 = s.W1, s.W2: leaves
/// z_t = q_t + LN(gelu(q W1_t) W2_t) in s.Zq and the mini-batch's last weights in s.W1, s.W2.
template <class Deferred = void>
void ttt_mlp_minibatch(TttMlpScratch& s, index_t n, const float* c, float eps) {
  const index_t K = s.K, M = s.M;
  TttDeferredMap<Deferred> W1(s.W1.data(), K, M), W2(s.W2.data(), M, K), Q(s.Q.data(), n, K), X(s.X.data(), n, K);
  TttDeferredMap<Deferred> V(s.V.data(), n, K), Z2(s.Z2.data(), n, K), G2(s.G2.data(), n, K), Zq(s.Zq.data(), n, K);
  TttDeferredMap<Deferred> Ah(s.Ah.data(), n, M), G1(s.G1.data(), n, M), Hq(s.Hq.data(), n, M);
  TttDeferredMap<Deferred> A(s.A.data(), n, n);
  // Forward at the mini-batch's weights, then dl/dz2 and dl/dz1 of every token.
  TttDeferredMap<Deferred> D1(s.D1.data(), n, M);
  Ah.noalias() = X * W1;  // z1 = k W1 (+ b1), turned into gelu(z1) with gelu'(z1) kept in D1
  if (s.has_bias) Ah.rowwise() += deferred_t<Eigen::Map<const Eigen::RowVectorXf>, Deferred>(s.b1.data(), M);
  ttt_gelu_block(Ah, &D1);
  Z2.noalias() = Ah * W2;
  if (s.has_bias) Z2.rowwise() += deferred_t<Eigen::Map<const Eigen::RowVectorXf>, Deferred>(s.b2.data(), K);
  s.ln.forward(Z2, G2, eps);
  G2 += X - V;
  s.ln.backward(G2);
  G1.noalias() = G2 * W2.transpose();
  G1.array() *= D1.array();
  // Layer 1 of the queries at W1_t, then layer 2 at W2_t.
  ttt_scaled_causal_scores(A, Q, X, n, c, s.eta);
  Hq.noalias() = Q * W1;
  chunkwise::add_lower_product(-A, G1, Hq, s.finite_g);  // causal for a non-finite G1 too
  if (s.has_bias) ttt_running_bias(Hq, G1, s.b1, s.b1_acc, n, c, s.eta);  // b1_t; dl/db1 = dl/dz1
  ttt_gelu_block(Hq, nullptr);
  ttt_scaled_causal_scores(A, Hq, Ah, n, c, s.eta);
  Zq.noalias() = Hq * W2;
  chunkwise::add_lower_product(-A, G2, Zq, s.finite_g);
  if (s.has_bias) ttt_running_bias(Zq, G2, s.b2, s.b2_acc, n, c, s.eta);  // b2_t; dl/db2 = dl/dz2
  s.ln.forward(Zq, Zq, eps);
  Zq += Q;
  // The last weights: W1 -= (c eta X)^T G1, W2 -= (c eta Ah)^T G2 (X and Ah scaled in place).
  const float last = c != nullptr ? c[n - 1] : 1.f;
  for (index_t t = 0; t < n; ++t) {
    const float f = last * s.eta[static_cast<std::size_t>(t)];
    X.row(t) *= f, Ah.row(t) *= f;
  }
  W1.noalias() -= X.transpose() * G1;
  W2.noalias() -= Ah.transpose() * G2;
}

/// Rows t0..t0+n-1 of (b, h) of a prefill's q, k, v, eta into a scratch's Q, X, V, eta
/// (TttLinearScratch or TttMlpScratch).
template <class Scratch, class In>
inline void ttt_load_minibatch(Scratch& s, const In& in, index_t b, index_t h, index_t t0, index_t n) {
  const index_t K = s.K;
  for (index_t i = 0; i < n; ++i) {
    for (index_t j = 0; j < K; ++j) {
      const std::size_t e = static_cast<std::size_t>(i * K + j);
      s.Q[e] = in.q(b, t0 + i, h, j), s.X[e] = in.k(b, t0 + i, h, j), s.V[e] = in.v(b, t0 + i, h, j);
    }
    s.eta[static_cast<std::size_t>(i)] = in.eta(b, t0 + i, h);
  }
}

/// A step's token (b, h) of q, k, v, eta into row 0 of a scratch's Q, X, V, eta.
template <class Scratch, class In>
inline void ttt_load_step(Scratch& s, const In& in, index_t b, index_t h) {
  for (index_t j = 0; j < s.K; ++j) {
    const std::size_t e = static_cast<std::size_t>(j);
    s.Q[e] = in.q(b, h, j), s.X[e] = in.k(b, h, j), s.V[e] = in.v(b, h, j);
  }
  s.eta[0] = in.eta(b, h);
}

/// The n outputs z of a mini-batch (s.Zq) into rows t0..t0+n-1 of (b, h) of out.z.
template <class Scratch, class Out>
inline void ttt_store_minibatch(const Scratch& s, const Out& out, index_t b, index_t h, index_t t0, index_t n) {
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < s.K; ++j) out.z(b, t0 + i, h, j) = s.Zq[static_cast<std::size_t>(i * s.K + j)];
}

/// The position scales of a prefill: the first bs of in.token_scale, or empty (ones).
template <class In>
inline std::vector<float> ttt_token_scales(const In& in, index_t bs) {
  std::vector<float> scale;
  if (in.token_scale.has_value())
    for (index_t i = 0; i < bs; ++i) scale.push_back(in.token_scale(i));
  return scale;
}

/// The mini-batches of row (b, h) of a prefill of T tokens, s.bs at a time from the weights in s:
/// load, `minibatch` (ttt_linear_minibatch or ttt_mlp_minibatch), store z.
template <class Scratch, class In, class Out>
inline void ttt_row_minibatches(Scratch& s, const In& in, const Out& out, index_t b, index_t h, index_t T,
                                const std::vector<float>& scale, float eps,
                                void (*minibatch)(Scratch&, index_t, const float*, float)) {
  for (index_t t0 = 0; t0 < T; t0 += s.bs) {
    const index_t n = std::min(s.bs, T - t0);
    ttt_load_minibatch(s, in, b, h, t0, n);
    minibatch(s, n, scale.empty() ? nullptr : scale.data(), eps);
    ttt_store_minibatch(s, out, b, h, t0, n);
  }
}

}  // namespace detail

/// TTT-Linear prefill (reference.hpp's definition) in the dual form: per mini-batch
/// Z = K W_0, the tokens' dl/dz, then Q W_0 - tril(c eta ∘ Q K^T) dL/dZ and
/// W_0 - K^T diag(c eta) dL/dZ, matrix products of [b,K] x [K,K] and [b,b]. Threaded over
/// (batch, head) rows; the mini-batches of a row are sequential.
template <class Deferred = void>
void ttt_linear(const TttLinearInputs& in, const TttLinearOutputs& out, const TttOptions& options = {},
                const Executor& executor = serial_executor()) {
  detail::check_reversible("ttt_linear", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::ttt_reversed_call(in, out);
    return ttt_linear<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  static const ArgCheck check("ttt_linear");
  SequenceMap map;
  const detail::TttDims d = detail::validate_ttt_linear(check, in, out, options, &map);
  // A serving call: each running sequence as a dense B = 1 call, its weight row in place.
  if (!detail::rnn_plain_batch(in.batch))
    return detail::ttt_for_each_sequence(
        map, in, out,
        [&](TttLinearInputs& in1, TttLinearOutputs& out1, const SequenceSpan& s) {
          detail::ttt_linear_sequence_states(in1, out1, in, out, s);
        },
        [&](const TttLinearInputs& in1, const TttLinearOutputs& out1) { ttt_linear<Deferred>(in1, out1, options, executor); });
  const index_t K = d.K, bs = std::min(options.mini_batch, std::max<index_t>(d.T, 1));
  const std::vector<float> scale = detail::ttt_token_scales(in, bs);
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    detail::TttLinearScratch s(K, bs);
    s.has_bias = options.inner_bias == TttInnerBias::trained;
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.H, h = row % d.H;
      s.ln.load(in.ln_weight, in.ln_bias, h);
      for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j < K; ++j)
          s.W[static_cast<std::size_t>(i * K + j)] = in.initial_w.has_value() ? in.initial_w(b, h, i, j) : 0.f;
      for (index_t j = 0; j < K; ++j)
        s.bias[static_cast<std::size_t>(j)] = in.initial_b.has_value() ? in.initial_b(b, h, j) : 0.f;
      detail::ttt_row_minibatches(s, in, out, b, h, d.T, scale, options.ln_eps, &detail::ttt_linear_minibatch<Deferred>);
      if (out.final_w.has_value())
        for (index_t i = 0; i < K; ++i)
          for (index_t j = 0; j < K; ++j) out.final_w(b, h, i, j) = s.W[static_cast<std::size_t>(i * K + j)];
      if (out.final_b.has_value())
        for (index_t j = 0; j < K; ++j) out.final_b(b, h, j) = s.bias[static_cast<std::size_t>(j)];
    }
  });
}

/// TTT-MLP prefill (reference.hpp's definition) in the dual form, per mini-batch: the forward
/// and backward of every token at (W1_0, W2_0) as [b,K] x [K,M] and [b,M] x [M,K] products,
/// the queries' hidden rows gelu(Q W1_0 - tril(c eta ∘ Q X^T) G1), their outputs
/// Hq W2_0 - tril(c eta ∘ Hq Ah^T) G2, and the weights' update. Threaded over (batch, head).
template <class Deferred = void>
void ttt_mlp(const TttMlpInputs& in, const TttMlpOutputs& out, const TttOptions& options = {},
             const Executor& executor = serial_executor()) {
  detail::check_reversible("ttt_mlp", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::ttt_reversed_call(in, out);
    return ttt_mlp<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  static const ArgCheck check("ttt_mlp");
  index_t M = 0;
  SequenceMap map;
  const detail::TttDims d = detail::validate_ttt_mlp(check, in, out, options, &M, &map);
  if (!detail::rnn_plain_batch(in.batch))
    return detail::ttt_for_each_sequence(
        map, in, out,
        [&](TttMlpInputs& in1, TttMlpOutputs& out1, const SequenceSpan& s) {
          detail::ttt_mlp_sequence_states(in1, out1, in, out, s);
        },
        [&](const TttMlpInputs& in1, const TttMlpOutputs& out1) { ttt_mlp<Deferred>(in1, out1, options, executor); });
  const index_t K = d.K, bs = std::min(options.mini_batch, std::max<index_t>(d.T, 1));
  const std::vector<float> scale = detail::ttt_token_scales(in, bs);
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    detail::TttMlpScratch s(K, M, bs);
    s.has_bias = options.inner_bias == TttInnerBias::trained;
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.H, h = row % d.H;
      s.ln.load(in.ln_weight, in.ln_bias, h);
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          s.W1[static_cast<std::size_t>(i * M + m)] = in.initial_w1(b, h, i, m);
          s.W2[static_cast<std::size_t>(m * K + i)] = in.initial_w2(b, h, m, i);
        }
      for (index_t m = 0; m < M; ++m)
        s.b1[static_cast<std::size_t>(m)] = in.initial_b1.has_value() ? in.initial_b1(b, h, m) : 0.f;
      for (index_t j = 0; j < K; ++j)
        s.b2[static_cast<std::size_t>(j)] = in.initial_b2.has_value() ? in.initial_b2(b, h, j) : 0.f;
      detail::ttt_row_minibatches(s, in, out, b, h, d.T, scale, options.ln_eps, &detail::ttt_mlp_minibatch<Deferred>);
      if (out.final_w1.has_value())
        for (index_t i = 0; i < K; ++i)
          for (index_t m = 0; m < M; ++m) out.final_w1(b, h, i, m) = s.W1[static_cast<std::size_t>(i * M + m)];
      if (out.final_w2.has_value())
        for (index_t m = 0; m < M; ++m)
          for (index_t j = 0; j < K; ++j) out.final_w2(b, h, m, j) = s.W2[static_cast<std::size_t>(m * K + j)];
      if (out.final_b1.has_value())
        for (index_t m = 0; m < M; ++m) out.final_b1(b, h, m) = s.b1[static_cast<std::size_t>(m)];
      if (out.final_b2.has_value())
        for (index_t j = 0; j < K; ++j) out.final_b2(b, h, j) = s.b2[static_cast<std::size_t>(j)];
    }
  });
}

}  // namespace seqmix
