// titans_mlp: Titans' neural long-term memory (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to
// Memorize at Test Time", eqs. 8-14, section 3.2's mini-batch training) with a DEEP memory: a
// two-layer MLP with a residual connection. Per (batch, value head), rows of k, q, v in R^K and
// M hidden units (W1 [K,M], W2 [M,K], f(x)_j = x_j + sum_m gelu((x W1)_m) W2[m][j]):
//
//   M(x)        = x + gelu(x W1) W2                      gelu in its tanh form (as ttt_mlp)
//   l(W; k, v)  = || M(k) - v ||^2                       the inner loss, factor 2 kept in the gradient
//   mini-batches of b tokens from the call's first token; in the one starting at t0 with the
//   memory W_0 = (W1, W2)_0, every gradient is taken at W_0 (the paper's section 3.2):
//   S_t         = eta_t S_{t-1} - theta_t grad l(W_0; k_t, v_t)      momentum, per weight matrix
//   W_t         = (1 - alpha_t) W_{t-1} + S_t                        forgetting, then the step
//   y_t         = M_{W_t}(q_t) = q_t + gelu(q_t W1_t) W2_t           retrieval after the write
//
// With b = 1 every gradient is taken at W_{t-1}: the paper's token-by-token recurrence (the step).
// The gradient: e = M(k) - v, a = gelu(k W1), d = 2 e, grad_W2 = a^T d, g1 = (d W2^T) o gelu'(k W1),
// grad_W1 = k^T g1. q/k have HK heads and v / the gates HV (a multiple of HK), repeat-interleaved.
// This header: argument structs, options, validation, the inner loss with its gradient
// (reference::titans_mlp_inner_loss) and reference::titans_mlp (per mini-batch, each token's two
// gradient matrices formed explicitly, double). Fast prefill and step: mlp.hpp.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/qkv_check.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/ttt/reference.hpp"

namespace seqmix {

/// Options of titans_mlp and titans_mlp_step.
struct TitansMlpOptions {
  /// Tokens per mini-batch b, in [1, 1024]: inside a mini-batch every gradient is taken at the
  /// memory of its start (Titans section 3.2). b = 1 is the exact per-token recurrence (the step).
  index_t mini_batch = 16;
};

/// Prefill arguments of titans_mlp. The initial weights are required (they give M; the zero MLP
/// has zero gradients); the initial momenta are optional (zeros).
struct TitansMlpInputs {
  ConstView<float, 4> q;                  ///< [B,T,HK,K]
  ConstView<float, 4> k;                  ///< [B,T,HK,K]
  ConstView<float, 4> v;                  ///< [B,T,HV,K] (the memory is residual: V = K)
  ConstView<float, 3> alpha;              ///< [B,T,HV] forgetting gate in [0,1]
  ConstView<float, 3> eta;                ///< [B,T,HV] momentum decay in [0,1]
  ConstView<float, 3> theta;              ///< [B,T,HV] inner learning rate >= 0
  ConstView<float, 4> initial_w1;         ///< [B,HV,K,M], required
  ConstView<float, 4> initial_w2;         ///< [B,HV,M,K], required
  ConstView<float, 4> initial_s1 = {};    ///< [B,HV,K,M] momentum of W1, optional
  ConstView<float, 4> initial_s2 = {};    ///< [B,HV,M,K] momentum of W2, optional
};

/// Prefill outputs of titans_mlp. y must not overlap anything; each final state is optional and
/// may be the very view of its initial state (written after the row's last token).
struct TitansMlpOutputs {
  TensorView<float, 4> y;                 ///< [B,T,HV,K]
  TensorView<float, 4> final_w1 = {};     ///< [B,HV,K,M]
  TensorView<float, 4> final_w2 = {};     ///< [B,HV,M,K]
  TensorView<float, 4> final_s1 = {};     ///< [B,HV,K,M]
  TensorView<float, 4> final_s2 = {};     ///< [B,HV,M,K]
};

/// Decode-step arguments of titans_mlp_step: as titans_step's (v is [B,HV,K]).
using TitansMlpStepInputs = TitansStepInputs;

/// Decode-step outputs of titans_mlp_step: the weights and momenta are read and updated in place.
struct TitansMlpStepOutputs {
  TensorView<float, 3> y;   ///< [B,HV,K]
  TensorView<float, 4> w1;  ///< [B,HV,K,M]
  TensorView<float, 4> w2;  ///< [B,HV,M,K]
  TensorView<float, 4> s1;  ///< [B,HV,K,M]
  TensorView<float, 4> s2;  ///< [B,HV,M,K]
};

namespace detail {

struct TitansMlpDims {
  index_t B, T, HK, HV, K, M;
  index_t group() const { return HV / HK; }
};

inline void check_titans_mlp_options(const ArgCheck& check, const TitansMlpOptions& options) {
  if (options.mini_batch < 1 || options.mini_batch > 1024)
    check.fail("options.mini_batch", "must lie in [1, 1024], got " + std::to_string(options.mini_batch));
}

inline TitansMlpDims validate_titans_mlp(const ArgCheck& check, const TitansMlpInputs& in, const TitansMlpOutputs& out,
                                         const TitansMlpOptions& options) {
  const detail::QkvDims d = detail::check_qkv(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, T = d.T, HV = d.HV, K = d.K;
  if (d.V != K)
    check.fail("v", "must have K = " + std::to_string(K) + " columns (the memory x + gelu(x W1) W2 is residual), got shape " +
                        shape_to_string(in.v.shape()));
  if (K <= 0) check.fail("k", "must have at least one channel, got shape " + shape_to_string(in.k.shape()));
  const std::array<index_t, 3> gate{B, T, HV};
  check.shape("alpha", in.alpha, gate, "B,T,HV").shape("eta", in.eta, gate, "B,T,HV").shape("theta", in.theta, gate, "B,T,HV");
  check.shape("initial_w1", in.initial_w1, std::array<index_t, 4>{B, HV, K, -1}, "B,HV,K,M (required)");
  const index_t M = in.initial_w1.size(3);
  if (M <= 0) check.fail("initial_w1", "must have at least one hidden unit, got shape " + shape_to_string(in.initial_w1.shape()));
  const std::array<index_t, 4> s1{B, HV, K, M}, s2{B, HV, M, K};
  check.shape("initial_w2", in.initial_w2, s2, "B,HV,M,K (required)");
  check.optional_shape("initial_s1", in.initial_s1, s1, "B,HV,K,M");
  check.optional_shape("initial_s2", in.initial_s2, s2, "B,HV,M,K");
  check.shape("y", out.y, std::array<index_t, 4>{B, T, HV, K}, "B,T,HV,K");
  check.optional_shape("final_w1", out.final_w1, s1, "B,HV,K,M").optional_shape("final_w2", out.final_w2, s2, "B,HV,M,K");
  check.optional_shape("final_s1", out.final_s1, s1, "B,HV,K,M").optional_shape("final_s2", out.final_s2, s2, "B,HV,M,K");
  check_titans_mlp_options(check, options);
  titans_check_gates<3>(check, in.alpha, in.eta, in.theta);
  const ConstView<float, 4> finals[4] = {out.final_w1, out.final_w2, out.final_s1, out.final_s2};
  const ConstView<float, 4> initials[4] = {in.initial_w1, in.initial_w2, in.initial_s1, in.initial_s2};
  const char* final_names[4] = {"final_w1", "final_w2", "final_s1", "final_s2"};
  const char* initial_names[4] = {"initial_w1", "initial_w2", "initial_s1", "initial_s2"};
  // y is written while every input is read; the final states only at the end of their row.
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("y", out.y, "alpha", in.alpha).no_overlap("y", out.y, "eta", in.eta).no_overlap("y", out.y, "theta", in.theta);
  for (int i = 0; i < 4; ++i) {
    check.no_overlap("y", out.y, initial_names[i], initials[i]).no_overlap("y", out.y, final_names[i], finals[i]);
    check.no_overlap(final_names[i], finals[i], "q", in.q).no_overlap(final_names[i], finals[i], "k", in.k);
    check.no_overlap(final_names[i], finals[i], "v", in.v).no_overlap(final_names[i], finals[i], "alpha", in.alpha);
    check.no_overlap(final_names[i], finals[i], "eta", in.eta).no_overlap(final_names[i], finals[i], "theta", in.theta);
    for (int j = 0; j < 4; ++j) {
      if (j > i) check.no_overlap(final_names[i], finals[i], final_names[j], finals[j]);
      const bool same = j == i && finals[i].data() == initials[j].data() && finals[i].strides() == initials[j].strides();
      if (!same) check.no_overlap(final_names[i], finals[i], initial_names[j], initials[j]);
    }
  }
  return {B, T, d.H, HV, K, M};
}

inline TitansMlpDims validate_titans_mlp_step(const ArgCheck& check, const TitansMlpStepInputs& in,
                                              const TitansMlpStepOutputs& out, const TitansMlpOptions& options) {
  const detail::QkvDims d = detail::check_qkv_step(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, HV = d.HV, K = d.K;
  if (d.V != K)
    check.fail("v", "must have K = " + std::to_string(K) + " columns (the memory x + gelu(x W1) W2 is residual), got shape " +
                        shape_to_string(in.v.shape()));
  if (K <= 0) check.fail("k", "must have at least one channel, got shape " + shape_to_string(in.k.shape()));
  const std::array<index_t, 2> gate{B, HV};
  check.shape("alpha", in.alpha, gate, "B,HV").shape("eta", in.eta, gate, "B,HV").shape("theta", in.theta, gate, "B,HV");
  check.shape("y", out.y, std::array<index_t, 3>{B, HV, K}, "B,HV,K");
  check.shape("w1", out.w1, std::array<index_t, 4>{B, HV, K, -1}, "B,HV,K,M");
  const index_t M = out.w1.size(3);
  if (M <= 0) check.fail("w1", "must have at least one hidden unit, got shape " + shape_to_string(out.w1.shape()));
  const std::array<index_t, 4> s1{B, HV, K, M}, s2{B, HV, M, K};
  check.shape("w2", out.w2, s2, "B,HV,M,K").shape("s1", out.s1, s1, "B,HV,K,M").shape("s2", out.s2, s2, "B,HV,M,K");
  check_titans_mlp_options(check, options);
  titans_check_gates<2>(check, in.alpha, in.eta, in.theta);
  if (in.huber_delta.has_value()) check.fail("huber_delta", "is not read by titans_mlp_step (its loss is l2); leave it empty");
  const ConstView<float, 4> states[4] = {out.w1, out.w2, out.s1, out.s2};
  const char* names[4] = {"w1", "w2", "s1", "s2"};
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("y", out.y, "alpha", in.alpha).no_overlap("y", out.y, "eta", in.eta).no_overlap("y", out.y, "theta", in.theta);
  for (int i = 0; i < 4; ++i) {
    check.no_overlap(names[i], states[i], "y", out.y).no_overlap(names[i], states[i], "q", in.q);
    check.no_overlap(names[i], states[i], "k", in.k).no_overlap(names[i], states[i], "v", in.v);
    check.no_overlap(names[i], states[i], "alpha", in.alpha).no_overlap(names[i], states[i], "eta", in.eta);
    check.no_overlap(names[i], states[i], "theta", in.theta);
    for (int j = i + 1; j < 4; ++j) check.no_overlap(names[i], states[i], names[j], states[j]);
  }
  return {B, 1, d.H, HV, K, M};
}

}  // namespace detail

namespace reference {

/// The inner loss of titans_mlp, l(W1, W2; k, v) = ||k + gelu(k W1) W2 - v||^2, in double, with
/// W1 [K,M] and W2 [M,K] row-major. With g1 / g2 given, writes the gradient dl/dW1 [K,M] and
/// dl/dW2 [M,K] there, written out (no autodiff).
inline double titans_mlp_inner_loss(const std::vector<double>& W1, const std::vector<double>& W2,
                                    const std::vector<double>& k, const std::vector<double>& v,
                                    std::vector<double>* g1 = nullptr, std::vector<double>* g2 = nullptr) {
  const index_t K = static_cast<index_t>(k.size()), M = static_cast<index_t>(W1.size()) / std::max<index_t>(K, 1);
  std::vector<double> z1(static_cast<std::size_t>(M), 0.0), a(z1.size()), d(static_cast<std::size_t>(K));
  for (index_t m = 0; m < M; ++m) {
    double s = 0.0;
    for (index_t i = 0; i < K; ++i) s += k[static_cast<std::size_t>(i)] * W1[static_cast<std::size_t>(i * M + m)];
    z1[static_cast<std::size_t>(m)] = s, a[static_cast<std::size_t>(m)] = detail::ttt_gelu(s);
  }
  double loss = 0.0;
  for (index_t j = 0; j < K; ++j) {
    double e = k[static_cast<std::size_t>(j)] - v[static_cast<std::size_t>(j)];
    for (index_t m = 0; m < M; ++m) e += a[static_cast<std::size_t>(m)] * W2[static_cast<std::size_t>(m * K + j)];
    loss += e * e;
    d[static_cast<std::size_t>(j)] = 2.0 * e;  // dl/dM(k)
  }
  if (g2 != nullptr) {
    g2->assign(static_cast<std::size_t>(M * K), 0.0);
    for (index_t m = 0; m < M; ++m)
      for (index_t j = 0; j < K; ++j) (*g2)[static_cast<std::size_t>(m * K + j)] = a[static_cast<std::size_t>(m)] * d[static_cast<std::size_t>(j)];
  }
  if (g1 != nullptr) {
    g1->assign(static_cast<std::size_t>(K * M), 0.0);
    for (index_t m = 0; m < M; ++m) {
      double s = 0.0;
      for (index_t j = 0; j < K; ++j) s += W2[static_cast<std::size_t>(m * K + j)] * d[static_cast<std::size_t>(j)];
      const double gz = s * detail::ttt_gelu_derivative(z1[static_cast<std::size_t>(m)]);  // dl/dz1
      for (index_t i = 0; i < K; ++i) (*g1)[static_cast<std::size_t>(i * M + m)] = k[static_cast<std::size_t>(i)] * gz;
    }
  }
  return loss;
}

/// The titans_mlp definition: per (batch, value head) and mini-batch, each token's gradient
/// matrices at the mini-batch's first memory formed explicitly, then the momentum and forgetting
/// recurrence token by token and y_t = q_t + gelu(q_t W1_t) W2_t. Double; single-threaded.
inline void titans_mlp(const TitansMlpInputs& in, const TitansMlpOutputs& out, const TitansMlpOptions& options = {}) {
  const ArgCheck check("reference::titans_mlp");
  const detail::TitansMlpDims d = detail::validate_titans_mlp(check, in, out, options);
  const index_t K = d.K, M = d.M, KM = K * M;
  std::vector<double> W1(static_cast<std::size_t>(KM)), W2(W1.size()), S1(W1.size()), S2(W1.size());
  std::vector<double> W1_0, W2_0, kr(static_cast<std::size_t>(K)), vr(kr.size()), g1, g2, h(static_cast<std::size_t>(M));
  const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t hk = hv / d.group();
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          W1[at(i * M + m)] = in.initial_w1(b, hv, i, m), W2[at(m * K + i)] = in.initial_w2(b, hv, m, i);
          S1[at(i * M + m)] = in.initial_s1.has_value() ? in.initial_s1(b, hv, i, m) : 0.0;
          S2[at(m * K + i)] = in.initial_s2.has_value() ? in.initial_s2(b, hv, m, i) : 0.0;
        }
      for (index_t t0 = 0; t0 < d.T; t0 += options.mini_batch) {
        W1_0 = W1, W2_0 = W2;  // every gradient of this mini-batch at its first memory
        for (index_t t = t0; t < std::min(d.T, t0 + options.mini_batch); ++t) {
          for (index_t j = 0; j < K; ++j) kr[at(j)] = in.k(b, t, hk, j), vr[at(j)] = in.v(b, t, hv, j);
          titans_mlp_inner_loss(W1_0, W2_0, kr, vr, &g1, &g2);
          const double a = 1.0 - double(in.alpha(b, t, hv)), eta = in.eta(b, t, hv), theta = in.theta(b, t, hv);
          for (index_t e = 0; e < KM; ++e) {
            S1[at(e)] = eta * S1[at(e)] - theta * g1[at(e)], W1[at(e)] = a * W1[at(e)] + S1[at(e)];
            S2[at(e)] = eta * S2[at(e)] - theta * g2[at(e)], W2[at(e)] = a * W2[at(e)] + S2[at(e)];
          }
          for (index_t m = 0; m < M; ++m) {
            double s = 0.0;
            for (index_t i = 0; i < K; ++i) s += double(in.q(b, t, hk, i)) * W1[at(i * M + m)];
            h[at(m)] = detail::ttt_gelu(s);
          }
          for (index_t j = 0; j < K; ++j) {
            double s = in.q(b, t, hk, j);
            for (index_t m = 0; m < M; ++m) s += h[at(m)] * W2[at(m * K + j)];
            out.y(b, t, hv, j) = static_cast<float>(s);
          }
        }
      }
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          if (out.final_w1.has_value()) out.final_w1(b, hv, i, m) = static_cast<float>(W1[at(i * M + m)]);
          if (out.final_w2.has_value()) out.final_w2(b, hv, m, i) = static_cast<float>(W2[at(m * K + i)]);
          if (out.final_s1.has_value()) out.final_s1(b, hv, i, m) = static_cast<float>(S1[at(i * M + m)]);
          if (out.final_s2.has_value()) out.final_s2(b, hv, m, i) = static_cast<float>(S2[at(m * K + i)]);
        }
    }
}

}  // namespace reference
}  // namespace seqmix
