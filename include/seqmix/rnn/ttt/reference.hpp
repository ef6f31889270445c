// ttt_linear: the TTT layer of Sun et al. 2024 ("Learning to (Learn at Test Time): RNNs with
// Expressive Hidden States"), its hidden state a linear inner model trained by mini-batch
// gradient descent on a self-supervised loss while the sequence is read. Per (batch, head), with
// K the head size, rows of q, k, v in R^K and the inner model f_W(x) = x W, W [K,K] (with
// options.inner_bias = trained, f(x) = x W + b, b [K], trained by the same rule; its gradient is
// dl/dz itself, so the dual form adds b_0 - c_t sum_{s <= t} eta_s dl/dz_s to every query row):
//
//   LN(z)        = gamma * (z - mean(z)) / sqrt(var(z) + ln_eps) + beta      gamma, beta [K]
//   l(W; k, v)   = 1/2 || LN(f_W(k)) + k - v ||^2                           the inner loss
//   mini-batches of b tokens from the call's first token; in the mini-batch starting at t0
//   (W_0 the weights after the previous one, i = t - t0 the position, c_i = token_scale[i] or 1):
//   W_t          = W_0 - c_i * sum_{s = t0..t} eta_s grad_W l(W_0; k_s, v_s)
//   z_t          = q_t + LN(f_{W_t}(q_t))
//   the next mini-batch starts from W_{t0 + n - 1} (n tokens in this one).
//
// Every gradient of a mini-batch is taken at W_0 (the paper's mini-batch GD), the output of
// token t sees the gradients of the tokens s <= t of its mini-batch (the paper's dual form).
// The 1/2 makes the gradient (LN(f(k)) + k - v) backpropagated, as the authors' code computes
// it; a model trained with ||.||^2 uses eta / 2 here.
// ttt_mlp: the same layer with the inner model f(x) = gelu(x W1) W2, W1 [K,M], W2 [M,K] (M = 4K
// in the paper, GELU in its tanh form), both layers updated by the same rule; with
// options.inner_bias = trained f(x) = gelu(x W1 + b1) W2 + b2 (the authors' TTT-MLP), b1 [M] and
// b2 [K] trained by the same rule (dl/db1 = dl/dz1, dl/db2 = dl/dz2).
// This header: argument structs, options, validation, the explicit gradients and
// seqmix::reference::ttt_linear / ttt_mlp (per mini-batch, the gradient matrices written out, double).
// Fast prefill (dual form): fast.hpp; decode step (b = 1): step.hpp; derivation: README.md.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/rnn/common.hpp"

namespace seqmix {

/// Whether the inner model has a bias (the authors' TTT-Linear f(x) = x W + b, initialized to
/// zeros and trained by the same gradient steps as W).
enum class TttInnerBias {
  none,     ///< f(x) = x W (no bias state)
  trained,  ///< f(x) = x W + b, b [K] per (row, head) a state beside W: initial_b / final_b, the step's b
};

/// Options of ttt_linear and ttt_linear_step.
struct TttOptions {
  /// Tokens per mini-batch b, in [1, 1024]; 16 as in the paper. The step is always b = 1.
  index_t mini_batch = 16;
  /// The epsilon of both LayerNorms (inner loss and output); 1e-6 as the authors' code.
  float ln_eps = 1e-6f;
  /// Run from the last token to the first (core/direction.hpp): q, k, v, eta and z are reached
  /// through reversed views, not copied, and the mini-batches are counted from the last token;
  /// final weights are those after token 0. The steps ignore it.
  bool reverse = false;
  /// The inner biases: ttt_linear's b, ttt_mlp's b1 and b2 (`trained`), or none.
  TttInnerBias inner_bias = TttInnerBias::none;
};

/// Prefill arguments of ttt_linear.
struct TttLinearInputs {
  ConstView<float, 4> q;                ///< [B,T,H,K]
  ConstView<float, 4> k;                ///< [B,T,H,K]
  ConstView<float, 4> v;                ///< [B,T,H,K] (the target is v - k, so V = K)
  ConstView<float, 3> eta;              ///< [B,T,H] per-token learning rate of the token's gradient
  ConstView<float, 2> ln_weight;        ///< [H,K] LayerNorm scale gamma
  ConstView<float, 2> ln_bias;          ///< [H,K] LayerNorm shift beta
  ConstView<float, 1> token_scale = {}; ///< [mini_batch] c_i per position in the mini-batch, optional (ones)
  ConstView<float, 4> initial_w = {};   ///< [B,H,K,K] W[i][j]: f(x)_j = sum_i x_i W[i][j], optional (zeros)
  /// [B,H,K] the inner bias b with options.inner_bias = trained, optional (zeros, the authors'
  /// initialization); refused otherwise. Rows as initial_w's (N or the pool's with serving).
  ConstView<float, 3> initial_b = {};
  /// Optional serving arguments (core/batch.hpp): packed tokens (cu_seqlens [N+1], token tensors
  /// [1,total_T,...], weights [N,H,K,K]; each sequence starts its own mini-batches), state slots
  /// (state_indices [N] into a pool [P,H,K,K], -1 = padding: nothing read or written) and
  /// has_initial_state [N] (false: start from zeros).
  SequenceBatch batch = {};
};

/// Prefill outputs. z must not overlap an input; final_w is optional and may be the very view
/// of initial_w (written after the last token of its row).
struct TttLinearOutputs {
  TensorView<float, 4> z;               ///< [B,T,H,K]
  TensorView<float, 4> final_w = {};    ///< [B,H,K,K]
  TensorView<float, 3> final_b = {};    ///< [B,H,K] with options.inner_bias = trained, optional; may be initial_b
};

/// Decode-step arguments of ttt_linear_step and ttt_mlp_step (TttLinearStepInputs, TttMlpStepInputs):
/// one token per batch row, a mini-batch of one (W -= eta grad, then z).
struct TttStepInputs {
  ConstView<float, 3> q;          ///< [B,H,K]
  ConstView<float, 3> k;          ///< [B,H,K]
  ConstView<float, 3> v;          ///< [B,H,K]
  ConstView<float, 2> eta;        ///< [B,H]
  ConstView<float, 2> ln_weight;  ///< [H,K]
  ConstView<float, 2> ln_bias;    ///< [H,K]
  /// Optional: state_indices [B] (row b updates pool row state_indices[b] of the weights; -1 =
  /// padding row, its z and weights untouched) and has_initial_state [B] (false: start from
  /// zeros; ttt_linear_step only). No cu_seqlens (one token per batch row).
  SequenceBatch batch = {};
};

/// Decode-step arguments of ttt_linear_step.
using TttLinearStepInputs = TttStepInputs;

/// Decode-step outputs: w is read and updated in place; z overlaps nothing.
struct TttLinearStepOutputs {
  TensorView<float, 3> z;  ///< [B,H,K]
  TensorView<float, 4> w;  ///< [B,H,K,K] (or the pool [P,H,K,K] with batch.state_indices)
  /// [B,H,K] (or [P,H,K]) the inner bias, read and updated in place: required with
  /// options.inner_bias = trained, refused otherwise.
  TensorView<float, 3> b = {};
};

/// Prefill arguments of ttt_mlp: as ttt_linear's, the inner model a two-layer MLP
/// f(x) = gelu(x W1) W2 with M hidden units (4K in the paper); its initial weights are required
/// (they give M, and the zero MLP has zero gradients).
struct TttMlpInputs {
  ConstView<float, 4> q;                ///< [B,T,H,K]
  ConstView<float, 4> k;                ///< [B,T,H,K]
  ConstView<float, 4> v;                ///< [B,T,H,K]
  ConstView<float, 3> eta;              ///< [B,T,H]
  ConstView<float, 2> ln_weight;        ///< [H,K]
  ConstView<float, 2> ln_bias;          ///< [H,K]
  ConstView<float, 1> token_scale = {}; ///< [mini_batch], optional (ones)
  ConstView<float, 4> initial_w1;       ///< [B,H,K,M]
  ConstView<float, 4> initial_w2;       ///< [B,H,M,K]
  /// [B,H,M] the hidden layer's bias b1 with options.inner_bias = trained, optional (zeros, the
  /// authors' initialization); refused otherwise. Rows as initial_w1's.
  ConstView<float, 3> initial_b1 = {};
  /// [B,H,K] the output layer's bias b2 with options.inner_bias = trained, optional (zeros);
  /// refused otherwise. Rows as initial_w1's.
  ConstView<float, 3> initial_b2 = {};
  /// Optional: cu_seqlens and state_indices as TttLinearInputs::batch (weights [N,...] or pools
  /// [P,...]). has_initial_state is refused: the zero MLP has zero gradients, so a fresh
  /// sequence needs its W1_0, W2_0 written into its slot.
  SequenceBatch batch = {};
};

/// Prefill outputs of ttt_mlp; each final weight is optional and may be its initial view.
struct TttMlpOutputs {
  TensorView<float, 4> z;               ///< [B,T,H,K]
  TensorView<float, 4> final_w1 = {};   ///< [B,H,K,M]
  TensorView<float, 4> final_w2 = {};   ///< [B,H,M,K]
  TensorView<float, 3> final_b1 = {};   ///< [B,H,M] with options.inner_bias = trained, optional; may be initial_b1
  TensorView<float, 3> final_b2 = {};   ///< [B,H,K] with options.inner_bias = trained, optional; may be initial_b2
};

/// Decode-step arguments of ttt_mlp_step (a mini-batch of one).
using TttMlpStepInputs = TttStepInputs;

/// Decode-step outputs of ttt_mlp: w1 and w2 are read and updated in place.
struct TttMlpStepOutputs {
  TensorView<float, 3> z;   ///< [B,H,K]
  TensorView<float, 4> w1;  ///< [B,H,K,M] (or the pool [P,H,K,M] with batch.state_indices)
  TensorView<float, 4> w2;  ///< [B,H,M,K] (or [P,H,M,K])
  /// [B,H,M] (or [P,H,M]) the hidden bias b1, read and updated in place: required with
  /// options.inner_bias = trained, refused otherwise.
  TensorView<float, 3> b1 = {};
  /// [B,H,K] (or [P,H,K]) the output bias b2, as b1.
  TensorView<float, 3> b2 = {};
};

namespace detail {

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments (ttt_linear's and ttt_mlp's inputs and outputs alike).
template <class In, class Out>
std::pair<In, Out> ttt_reversed_call(In in, Out out) {
  reverse_time_of(in.q, in.k, in.v, in.eta, out.z);
  return {in, out};
}

struct TttDims {
  index_t B, T, H, K;
};

/// LayerNorm of one row x [n] with scale g and shift b: writes y = LN(x) and, when dy is given,
/// overwrites dy (dL/dy) with dL/dx, in Real (double in the references; the fast forms run the
/// same formulas on blocks of rows, fast.hpp TttLnBlock).
template <class Real, class In, class Gm, class Bt>
inline void ttt_layer_norm(const In* x, index_t n, const Gm& gamma, const Bt& beta, Real eps, Real* y, Real* dy) {
  Real mean = 0, var = 0;
  for (index_t j = 0; j < n; ++j) mean += Real(x[j]);
  mean /= Real(n);
  for (index_t j = 0; j < n; ++j) var += (Real(x[j]) - mean) * (Real(x[j]) - mean);
  var /= Real(n);
  const Real inv = Real(1) / std::sqrt(var + eps);
  if (dy == nullptr) {
    for (index_t j = 0; j < n; ++j) y[j] = Real(gamma(j)) * (Real(x[j]) - mean) * inv + Real(beta(j));
    return;
  }
  // dL/dxhat = dy * gamma; dL/dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
  Real m1 = 0, m2 = 0;
  for (index_t j = 0; j < n; ++j) {
    const Real xh = (Real(x[j]) - mean) * inv;
    y[j] = Real(gamma(j)) * xh + Real(beta(j));
    const Real d = dy[j] * Real(gamma(j));
    m1 += d, m2 += d * xh;
  }
  m1 /= Real(n), m2 /= Real(n);
  for (index_t j = 0; j < n; ++j) {
    const Real xh = (Real(x[j]) - mean) * inv;
    dy[j] = inv * (dy[j] * Real(gamma(j)) - m1 - xh * m2);
  }
}

inline void check_ttt_options(const ArgCheck& check, const TttOptions& options) {
  if (options.mini_batch < 1 || options.mini_batch > 1024)
    check.fail("options.mini_batch", "must lie in [1, 1024], got " + std::to_string(options.mini_batch));
  if (!(options.ln_eps > 0.f) || !std::isfinite(options.ln_eps))
    check.fail("options.ln_eps", "must be finite and > 0, got " + std::to_string(options.ln_eps));
}

/// The checks shared by ttt_linear and ttt_mlp's prefills: q, k, v, eta, the LayerNorm, the
/// token scale, z; returns B, T, H, K.
template <class In, class Out>
inline TttDims validate_ttt_common(const ArgCheck& check, const In& in, const Out& out, const TttOptions& options) {
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,K");
  const index_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), K = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, T, H, K}, "B,T,H,K");
  check.shape("v", in.v, std::array<index_t, 4>{B, T, H, K}, "B,T,H,K (the target v - k needs V = K)");
  check.shape("eta", in.eta, std::array<index_t, 3>{B, T, H}, "B,T,H");
  check.shape("ln_weight", in.ln_weight, std::array<index_t, 2>{H, K}, "H,K");
  check.shape("ln_bias", in.ln_bias, std::array<index_t, 2>{H, K}, "H,K");
  check_ttt_options(check, options);
  check.optional_shape("token_scale", in.token_scale, std::array<index_t, 1>{options.mini_batch}, "mini_batch");
  check.shape("z", out.z, std::array<index_t, 4>{B, T, H, K}, "B,T,H,K");
  check.no_overlap("z", out.z, "q", in.q).no_overlap("z", out.z, "k", in.k).no_overlap("z", out.z, "v", in.v);
  check.no_overlap("z", out.z, "eta", in.eta).no_overlap("z", out.z, "ln_weight", in.ln_weight);
  check.no_overlap("z", out.z, "ln_bias", in.ln_bias).no_overlap("z", out.z, "token_scale", in.token_scale);
  return {B, T, H, K};
}

/// A final state view: shape, and no overlap with z or an input; it may be its initial view.
template <class In, class Out, class Final, class Initial, std::size_t R>
inline void check_ttt_final(const ArgCheck& check, const In& in, const Out& out, const char* name, const Final& fin,
                            const char* initial_name, const Initial& initial, const std::array<index_t, R>& shape,
                            const char* dims) {
  check.optional_shape(name, fin, shape, dims);
  check.no_overlap("z", out.z, name, fin);
  const bool same = fin.data() == initial.data() && fin.strides() == initial.strides();
  if (!same) check.no_overlap(name, fin, initial_name, initial);
  check.no_overlap(name, fin, "q", in.q).no_overlap(name, fin, "k", in.k).no_overlap(name, fin, "v", in.v);
  check.no_overlap(name, fin, "eta", in.eta).no_overlap(name, fin, "ln_weight", in.ln_weight);
  check.no_overlap(name, fin, "ln_bias", in.ln_bias).no_overlap(name, fin, "token_scale", in.token_scale);
}

/// The inner bias of a ttt_linear prefill: given only with options.inner_bias = trained, shape
/// [rows,H,K] (rows: B, or -1 for a serving call), no overlap with the weights or z.
inline void check_ttt_linear_bias(const ArgCheck& check, const TttLinearInputs& in, const TttLinearOutputs& out,
                                  const TttOptions& options, index_t rows) {
  const bool trained = options.inner_bias == TttInnerBias::trained;
  if (!trained && (in.initial_b.has_value() || out.final_b.has_value()))
    check.fail(in.initial_b.has_value() ? "initial_b" : "final_b",
               "is given but options.inner_bias is none (set it to trained for f(x) = x W + b)");
  if (!trained) return;
  const index_t H = in.q.size(2), K = in.q.size(3);
  const std::array<index_t, 3> bshape{rows, H, K};
  const char* dims = rows >= 0 ? "B,H,K" : "N,H,K";
  check.optional_shape("initial_b", in.initial_b, bshape, dims);
  check.no_overlap("z", out.z, "initial_b", in.initial_b).no_overlap("initial_w", in.initial_w, "initial_b", in.initial_b);
  check_ttt_final(check, in, out, "final_b", out.final_b, "initial_b", in.initial_b, bshape, dims);
  check.no_overlap("final_b", out.final_b, "initial_w", in.initial_w).no_overlap("final_b", out.final_b, "final_w", out.final_w);
  check.no_overlap("final_w", out.final_w, "initial_b", in.initial_b);
  // Bias and weights rows must agree (the same sequences or slots).
  const index_t wrows = in.initial_w.has_value() ? in.initial_w.size(0) : out.final_w.has_value() ? out.final_w.size(0) : -1;
  const index_t brows = in.initial_b.has_value() ? in.initial_b.size(0) : out.final_b.has_value() ? out.final_b.size(0) : -1;
  if (wrows >= 0 && brows >= 0 && wrows != brows)
    check.fail(in.initial_b.has_value() ? "initial_b" : "final_b",
               "must have as many rows as the weights (" + std::to_string(wrows) + "), got " + std::to_string(brows));
  if (in.initial_b.has_value() && out.final_b.has_value() && in.initial_b.size(0) != out.final_b.size(0))
    check.fail("final_b", "must have as many rows as initial_b (" + std::to_string(in.initial_b.size(0)) + "), got " +
                              std::to_string(out.final_b.size(0)));
}

inline TttDims validate_ttt_linear(const ArgCheck& check, const TttLinearInputs& in, const TttLinearOutputs& out,
                                   const TttOptions& options, SequenceMap* map = nullptr) {
  const TttDims d = validate_ttt_common(check, in, out, options);
  // A plain dense batch has B weight rows; a serving call N (packed) or the pool's rows (slots).
  const bool plain = rnn_plain_batch(in.batch);
  const std::array<index_t, 4> wshape{plain ? d.B : -1, d.H, d.K, d.K};
  const char* dims = plain ? "B,H,K,K" : "N,H,K,K";
  check.optional_shape("initial_w", in.initial_w, wshape, dims);
  check.no_overlap("z", out.z, "initial_w", in.initial_w);
  check_ttt_final(check, in, out, "final_w", out.final_w, "initial_w", in.initial_w, wshape, dims);
  check_ttt_linear_bias(check, in, out, options, wshape[0]);
  if (!plain) {
    index_t rows = rnn_state_rows(check, "initial_w", in.initial_w, "final_w", out.final_w);
    if (rows < 0) rows = rnn_state_rows(check, "initial_b", in.initial_b, "final_b", out.final_b);
    const bool reads = in.initial_w.has_value() || in.initial_b.has_value();
    const SequenceMap m = SequenceMap::make(check, in.batch, d.B, d.T, reads, rows);
    if (map != nullptr) *map = m;
  }
  return d;
}

/// The checks shared by the steps: q, k, v, eta, the LayerNorm, z; returns B, 1, H, K.
template <class In, class Out>
inline TttDims validate_ttt_step_common(const ArgCheck& check, const In& in, const Out& out, const TttOptions& options) {
  check.shape("q", in.q, std::array<index_t, 3>{-1, -1, -1}, "B,H,K");
  const index_t B = in.q.size(0), H = in.q.size(1), K = in.q.size(2);
  check.shape("k", in.k, std::array<index_t, 3>{B, H, K}, "B,H,K");
  check.shape("v", in.v, std::array<index_t, 3>{B, H, K}, "B,H,K (the target v - k needs V = K)");
  check.shape("eta", in.eta, std::array<index_t, 2>{B, H}, "B,H");
  check.shape("ln_weight", in.ln_weight, std::array<index_t, 2>{H, K}, "H,K");
  check.shape("ln_bias", in.ln_bias, std::array<index_t, 2>{H, K}, "H,K");
  check_ttt_options(check, options);
  check.shape("z", out.z, std::array<index_t, 3>{B, H, K}, "B,H,K");
  check.no_overlap("z", out.z, "q", in.q).no_overlap("z", out.z, "k", in.k).no_overlap("z", out.z, "v", in.v);
  check.no_overlap("z", out.z, "eta", in.eta).no_overlap("z", out.z, "ln_weight", in.ln_weight);
  check.no_overlap("z", out.z, "ln_bias", in.ln_bias);
  return {B, 1, H, K};
}

template <class In, class Out, class State, std::size_t R>
inline void check_ttt_step_state(const ArgCheck& check, const In& in, const Out& out, const char* name,
                                 const State& s, const std::array<index_t, R>& shape, const char* dims) {
  check.shape(name, s, shape, dims);
  check.no_overlap(name, s, "z", out.z).no_overlap(name, s, "q", in.q).no_overlap(name, s, "k", in.k);
  check.no_overlap(name, s, "v", in.v).no_overlap(name, s, "eta", in.eta);
  check.no_overlap(name, s, "ln_weight", in.ln_weight).no_overlap(name, s, "ln_bias", in.ln_bias);
}

// A step's batch: slots into a pool of `pool` rows and fresh flags, no cu_seqlens (no allocation
// on valid input).
inline void check_ttt_step_batch(const ArgCheck& check, const SequenceBatch& batch, index_t B, index_t pool) {
  if (rnn_plain_batch(batch)) return;
  if (batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
  SequenceMap::make(check, batch, B, 1, true, pool);
}

inline TttDims validate_ttt_linear_step(const ArgCheck& check, const TttLinearStepInputs& in,
                                        const TttLinearStepOutputs& out, const TttOptions& options) {
  const TttDims d = validate_ttt_step_common(check, in, out, options);
  const bool plain = rnn_plain_batch(in.batch);
  check_ttt_step_state(check, in, out, "w", out.w, std::array<index_t, 4>{plain ? d.B : -1, d.H, d.K, d.K},
                       plain ? "B,H,K,K" : "P,H,K,K");
  if (options.inner_bias == TttInnerBias::trained) {
    check_ttt_step_state(check, in, out, "b", out.b, std::array<index_t, 3>{out.w.size(0), d.H, d.K},
                         plain ? "B,H,K" : "P,H,K");
    check.no_overlap("b", out.b, "w", out.w);
  } else if (out.b.has_value()) {
    check.fail("b", "is given but options.inner_bias is none (set it to trained for f(x) = x W + b)");
  }
  check_ttt_step_batch(check, in.batch, d.B, out.w.size(0));
  return d;
}

/// The inner biases of a ttt_mlp prefill: given only with options.inner_bias = trained, b1
/// [R,H,M] and b2 [R,H,K] (R the weights' rows), no overlap with the weights or z.
inline void check_ttt_mlp_bias(const ArgCheck& check, const TttMlpInputs& in, const TttMlpOutputs& out,
                               const TttOptions& options, index_t R, index_t M, bool plain) {
  const bool trained = options.inner_bias == TttInnerBias::trained;
  if (!trained) {
    const std::pair<const char*, bool> given[] = {{"initial_b1", in.initial_b1.has_value()},
                                                  {"initial_b2", in.initial_b2.has_value()},
                                                  {"final_b1", out.final_b1.has_value()},
                                                  {"final_b2", out.final_b2.has_value()}};
    for (const auto& g : given)
      if (g.second) check.fail(g.first, "is given but options.inner_bias is none (set it to trained for b1, b2)");
    return;
  }
  const index_t H = in.q.size(2), K = in.q.size(3);
  const std::array<index_t, 3> s1{R, H, M}, s2{R, H, K};
  check.optional_shape("initial_b1", in.initial_b1, s1, plain ? "B,H,M" : "N,H,M");
  check.optional_shape("initial_b2", in.initial_b2, s2, plain ? "B,H,K" : "N,H,K");
  check_ttt_final(check, in, out, "final_b1", out.final_b1, "initial_b1", in.initial_b1, s1, plain ? "B,H,M" : "N,H,M");
  check_ttt_final(check, in, out, "final_b2", out.final_b2, "initial_b2", in.initial_b2, s2, plain ? "B,H,K" : "N,H,K");
  check.no_overlap("z", out.z, "initial_b1", in.initial_b1).no_overlap("z", out.z, "initial_b2", in.initial_b2);
  // Every final state is written at the end of its row while the other initial states may still be read.
  const std::pair<const char*, ConstView<float, 3>> bin[] = {{"initial_b1", in.initial_b1}, {"initial_b2", in.initial_b2}};
  const std::pair<const char*, TensorView<float, 3>> bout[] = {{"final_b1", out.final_b1}, {"final_b2", out.final_b2}};
  for (const auto& bi : bin)
    check.no_overlap(bi.first, bi.second, "initial_w1", in.initial_w1).no_overlap(bi.first, bi.second, "initial_w2", in.initial_w2);
  for (const auto& bo : bout) {
    check.no_overlap(bo.first, bo.second, "initial_w1", in.initial_w1).no_overlap(bo.first, bo.second, "initial_w2", in.initial_w2);
    check.no_overlap(bo.first, bo.second, "final_w1", out.final_w1).no_overlap(bo.first, bo.second, "final_w2", out.final_w2);
  }
  check.no_overlap("initial_b1", in.initial_b1, "initial_b2", in.initial_b2);
  check.no_overlap("final_b1", out.final_b1, "final_b2", out.final_b2);
  check.no_overlap("final_b1", out.final_b1, "initial_b2", in.initial_b2);
  check.no_overlap("final_b2", out.final_b2, "initial_b1", in.initial_b1);
  check.no_overlap("final_w1", out.final_w1, "initial_b1", in.initial_b1).no_overlap("final_w1", out.final_w1, "initial_b2", in.initial_b2);
  check.no_overlap("final_w2", out.final_w2, "initial_b1", in.initial_b1).no_overlap("final_w2", out.final_w2, "initial_b2", in.initial_b2);
}

/// A ttt_mlp step's biases: b1 [P,H,M] and b2 [P,H,K] required with options.inner_bias =
/// trained, refused otherwise.
inline void check_ttt_mlp_step_bias(const ArgCheck& check, const TttMlpStepInputs& in, const TttMlpStepOutputs& out,
                                    const TttOptions& options, index_t P, index_t M, bool plain) {
  if (options.inner_bias != TttInnerBias::trained) {
    if (out.b1.has_value() || out.b2.has_value())
      check.fail(out.b1.has_value() ? "b1" : "b2", "is given but options.inner_bias is none (set it to trained for b1, b2)");
    return;
  }
  const index_t H = in.q.size(1), K = in.q.size(2);
  check_ttt_step_state(check, in, out, "b1", out.b1, std::array<index_t, 3>{P, H, M}, plain ? "B,H,M" : "P,H,M");
  check_ttt_step_state(check, in, out, "b2", out.b2, std::array<index_t, 3>{P, H, K}, plain ? "B,H,K" : "P,H,K");
  check.no_overlap("b1", out.b1, "b2", out.b2).no_overlap("b1", out.b1, "w1", out.w1).no_overlap("b1", out.b1, "w2", out.w2);
  check.no_overlap("b2", out.b2, "w1", out.w1).no_overlap("b2", out.b2, "w2", out.w2);
}

/// ttt_mlp's checks; returns B, T, H, K and M (the hidden size, from initial_w1).
inline TttDims validate_ttt_mlp(const ArgCheck& check, const TttMlpInputs& in, const TttMlpOutputs& out,
                                const TttOptions& options, index_t* M, SequenceMap* map = nullptr) {
  const TttDims d = validate_ttt_common(check, in, out, options);
  const bool plain = rnn_plain_batch(in.batch);
  if (in.batch.has_initial_state.has_value())
    check.fail("has_initial_state", "is not supported by ttt_mlp (the zero MLP has zero gradients): write the "
                                    "sequence's initial W1, W2 into its slot instead");
  check.shape("initial_w1", in.initial_w1, std::array<index_t, 4>{plain ? d.B : -1, d.H, d.K, -1},
              plain ? "B,H,K,M" : "N,H,K,M");
  *M = in.initial_w1.size(3);
  const index_t R = in.initial_w1.size(0);
  const std::array<index_t, 4> s1{R, d.H, d.K, *M}, s2{R, d.H, *M, d.K};
  check.shape("initial_w2", in.initial_w2, s2, plain ? "B,H,M,K" : "N,H,M,K");
  if (!plain) {
    const SequenceMap m = SequenceMap::make(check, in.batch, d.B, d.T, true, R);
    if (map != nullptr) *map = m;
  }
  check.no_overlap("z", out.z, "initial_w1", in.initial_w1).no_overlap("z", out.z, "initial_w2", in.initial_w2);
  check_ttt_final(check, in, out, "final_w1", out.final_w1, "initial_w1", in.initial_w1, s1, "B,H,K,M");
  check_ttt_final(check, in, out, "final_w2", out.final_w2, "initial_w2", in.initial_w2, s2, "B,H,M,K");
  // A final weight is written at the end of its row while the other initial one may still be read.
  check.no_overlap("final_w1", out.final_w1, "initial_w2", in.initial_w2);
  check.no_overlap("final_w2", out.final_w2, "initial_w1", in.initial_w1);
  check.no_overlap("final_w1", out.final_w1, "final_w2", out.final_w2);
  check_ttt_mlp_bias(check, in, out, options, R, *M, plain);
  return d;
}

inline TttDims validate_ttt_mlp_step(const ArgCheck& check, const TttMlpStepInputs& in, const TttMlpStepOutputs& out,
                                     const TttOptions& options, index_t* M) {
  const TttDims d = validate_ttt_step_common(check, in, out, options);
  const bool plain = rnn_plain_batch(in.batch);
  if (in.batch.has_initial_state.has_value())
    check.fail("has_initial_state", "is not supported by ttt_mlp_step (the zero MLP has zero gradients): write the "
                                    "sequence's initial W1, W2 into its slot instead");
  check.shape("w1", out.w1, std::array<index_t, 4>{plain ? d.B : -1, d.H, d.K, -1}, plain ? "B,H,K,M" : "P,H,K,M");
  *M = out.w1.size(3);
  const index_t P = out.w1.size(0);
  check_ttt_step_state(check, in, out, "w1", out.w1, std::array<index_t, 4>{P, d.H, d.K, *M}, plain ? "B,H,K,M" : "P,H,K,M");
  check_ttt_step_state(check, in, out, "w2", out.w2, std::array<index_t, 4>{P, d.H, *M, d.K}, plain ? "B,H,M,K" : "P,H,M,K");
  check.no_overlap("w1", out.w1, "w2", out.w2);
  check_ttt_mlp_step_bias(check, in, out, options, P, *M, plain);
  check_ttt_step_batch(check, in.batch, d.B, P);
  return d;
}

// Runs one(in, out) on every running sequence of a validated serving call as a plain dense call
// of its own (B = 1, its tokens, its weight rows; none when it starts from zeros). Padding
// sequences (state row -1) are skipped: their outputs stay untouched.
template <class In, class Out, class States, class F>
void ttt_for_each_sequence(const SequenceMap& map, const In& in, const Out& out, States&& states, F&& one) {
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.state_row < 0) continue;
    In in1 = in;
    in1.q = rnn_sequence_rows(in.q, s), in1.k = rnn_sequence_rows(in.k, s), in1.v = rnn_sequence_rows(in.v, s);
    in1.eta = rnn_sequence_rows(in.eta, s);
    in1.batch = SequenceBatch();
    Out out1 = out;
    out1.z = rnn_sequence_rows(out.z, s);
    states(in1, out1, s);
    one(in1, out1);
  }
}

inline void ttt_linear_sequence_states(TttLinearInputs& in1, TttLinearOutputs& out1, const TttLinearInputs& in,
                                       const TttLinearOutputs& out, const SequenceSpan& s) {
  in1.initial_w = rnn_state_row(in.initial_w, s, s.read_state);
  out1.final_w = rnn_state_row(out.final_w, s, true);
  in1.initial_b = rnn_state_row(in.initial_b, s, s.read_state);
  out1.final_b = rnn_state_row(out.final_b, s, true);
}

inline void ttt_mlp_sequence_states(TttMlpInputs& in1, TttMlpOutputs& out1, const TttMlpInputs& in,
                                    const TttMlpOutputs& out, const SequenceSpan& s) {
  in1.initial_w1 = rnn_state_row(in.initial_w1, s, true), in1.initial_w2 = rnn_state_row(in.initial_w2, s, true);
  out1.final_w1 = rnn_state_row(out.final_w1, s, true), out1.final_w2 = rnn_state_row(out.final_w2, s, true);
  in1.initial_b1 = rnn_state_row(in.initial_b1, s, true), in1.initial_b2 = rnn_state_row(in.initial_b2, s, true);
  out1.final_b1 = rnn_state_row(out.final_b1, s, true), out1.final_b2 = rnn_state_row(out.final_b2, s, true);
}

/// GELU, tanh approximation (the TTT authors' gelu_tanh), and its derivative.
template <class Real>
inline Real ttt_gelu(Real x) {
  const Real c = Real(0.7978845608028654), u = c * (x + Real(0.044715) * x * x * x);
  return Real(0.5) * x * (Real(1) + std::tanh(u));
}
template <class Real>
inline Real ttt_gelu_derivative(Real x) {
  const Real c = Real(0.7978845608028654), u = c * (x + Real(0.044715) * x * x * x), th = std::tanh(u);
  return Real(0.5) * (Real(1) + th) + Real(0.5) * x * (Real(1) - th * th) * c * (Real(1) + Real(3 * 0.044715) * x * x);
}

/// The inner loss at the model's output z [K]: y = LN(z), dy = dl/dLN = y + k - v, returns
/// 1/2 ||dy||^2; with `backward`, then overwrites dy with dl/dz (double, the references').
inline double ttt_residual_loss(const std::vector<double>& z, const std::vector<double>& k,
                                const std::vector<double>& v, const std::vector<double>& gamma,
                                const std::vector<double>& beta, double ln_eps, std::vector<double>& y,
                                std::vector<double>& dy, bool backward) {
  const index_t K = static_cast<index_t>(k.size());
  const auto g = [&](index_t j) { return gamma[j]; };
  const auto b = [&](index_t j) { return beta[j]; };
  ttt_layer_norm<double>(z.data(), K, g, b, ln_eps, y.data(), static_cast<double*>(nullptr));
  double loss = 0;
  for (index_t j = 0; j < K; ++j) {
    dy[j] = y[j] + k[j] - v[j];  // dl/dLN
    loss += 0.5 * dy[j] * dy[j];
  }
  if (backward) ttt_layer_norm<double>(z.data(), K, g, b, ln_eps, y.data(), dy.data());  // dy := dl/dz
  return loss;
}

}  // namespace detail

namespace reference {

/// The inner loss with a bias, l(W, b; k, v) = 1/2 ||LN(k W + b) + k - v||^2 (options.inner_bias
/// = trained), in double. With grad / grad_b given, writes dl/dW [K,K] and dl/db = dl/dz [K].
inline double ttt_linear_inner_loss(const std::vector<double>& W, const std::vector<double>& bias,
                                    const std::vector<double>& k, const std::vector<double>& v,
                                    const std::vector<double>& gamma, const std::vector<double>& beta, double ln_eps,
                                    std::vector<double>* grad, std::vector<double>* grad_b) {
  const index_t K = static_cast<index_t>(k.size());
  std::vector<double> zr(bias), y(static_cast<std::size_t>(K)), dy(y);
  for (index_t i = 0; i < K; ++i)
    for (index_t j = 0; j < K; ++j) zr[j] += k[i] * W[i * K + j];
  const bool backward = grad != nullptr || grad_b != nullptr;
  const double loss = detail::ttt_residual_loss(zr, k, v, gamma, beta, ln_eps, y, dy, backward);
  if (grad != nullptr) {
    grad->assign(static_cast<std::size_t>(K * K), 0.0);
    for (index_t i = 0; i < K; ++i)
      for (index_t j = 0; j < K; ++j) (*grad)[i * K + j] = k[i] * dy[j];  // dl/dW = k^T dl/dz
  }
  if (grad_b != nullptr) *grad_b = dy;  // dl/db = dl/dz
  return loss;
}

/// The inner loss l(W; k, v) = 1/2 ||LN(k W) + k - v||^2 of ttt_linear in double: W row-major
/// [K,K], k, v, gamma, beta [K]. With `grad` given, writes dl/dW (row-major [K,K]) into it.
inline double ttt_linear_inner_loss(const std::vector<double>& W, const std::vector<double>& k,
                                    const std::vector<double>& v, const std::vector<double>& gamma,
                                    const std::vector<double>& beta, double ln_eps,
                                    std::vector<double>* grad = nullptr) {
  return ttt_linear_inner_loss(W, std::vector<double>(k.size(), 0.0), k, v, gamma, beta, ln_eps, grad, nullptr);
}

/// The ttt_linear definition (top of this file) per mini-batch: every token's gradient matrix at
/// W_0 is formed explicitly, W_t is W_0 minus their weighted sum, z_t reads W_t. Double
/// precision throughout; single-threaded (`executor` is accepted for a uniform signature).
inline void ttt_linear(const TttLinearInputs& in, const TttLinearOutputs& out, const TttOptions& options = {},
                       const Executor& executor = serial_executor()) {
  detail::check_reversible("reference::ttt_linear", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::ttt_reversed_call(in, out);
    return ttt_linear(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const ArgCheck check("reference::ttt_linear");
  SequenceMap map;
  const detail::TttDims d = detail::validate_ttt_linear(check, in, out, options, &map);
  if (!detail::rnn_plain_batch(in.batch))
    return detail::ttt_for_each_sequence(
        map, in, out,
        [&](TttLinearInputs& in1, TttLinearOutputs& out1, const SequenceSpan& s) {
          detail::ttt_linear_sequence_states(in1, out1, in, out, s);
        },
        [&](const TttLinearInputs& in1, const TttLinearOutputs& out1) { ttt_linear(in1, out1, options, executor); });
  const index_t K = d.K, KK = K * K, bs = options.mini_batch;
  const double eps = options.ln_eps;
  const bool biased = options.inner_bias == TttInnerBias::trained;
  std::vector<double> W(static_cast<std::size_t>(KK)), Wt(W), acc(W), grad(W);
  std::vector<double> kr(static_cast<std::size_t>(K)), vr(kr), qr(kr), gamma(kr), beta(kr), zq(kr), y(kr);
  std::vector<double> bias(kr), acc_b(kr), grad_b(kr);  // b, sum_{s <= t} eta_s dl/db_s, one token's dl/db
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      for (index_t j = 0; j < K; ++j) gamma[j] = in.ln_weight(h, j), beta[j] = in.ln_bias(h, j);
      for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j < K; ++j) W[i * K + j] = in.initial_w.has_value() ? in.initial_w(b, h, i, j) : 0.0;
      for (index_t j = 0; j < K; ++j) bias[j] = in.initial_b.has_value() ? in.initial_b(b, h, j) : 0.0;
      const auto g = [&](index_t j) { return gamma[j]; };
      const auto bt = [&](index_t j) { return beta[j]; };
      for (index_t t0 = 0; t0 < d.T; t0 += bs) {
        const index_t n = std::min(bs, d.T - t0);
        std::fill(acc.begin(), acc.end(), 0.0);  // sum_{s <= t} eta_s grad l(W_0; k_s, v_s)
        std::fill(acc_b.begin(), acc_b.end(), 0.0);
        double c = 1;
        for (index_t i = 0; i < n; ++i) {
          const index_t t = t0 + i;
          for (index_t j = 0; j < K; ++j) kr[j] = in.k(b, t, h, j), vr[j] = in.v(b, t, h, j), qr[j] = in.q(b, t, h, j);
          ttt_linear_inner_loss(W, bias, kr, vr, gamma, beta, eps, &grad, &grad_b);
          const double eta = in.eta(b, t, h);
          for (index_t e = 0; e < KK; ++e) acc[e] += eta * grad[e];
          if (biased)
            for (index_t j = 0; j < K; ++j) acc_b[j] += eta * grad_b[j];
          c = in.token_scale.has_value() ? double(in.token_scale(i)) : 1.0;
          for (index_t e = 0; e < KK; ++e) Wt[e] = W[e] - c * acc[e];
          for (index_t j = 0; j < K; ++j) zq[j] = bias[j] - c * acc_b[j];  // b_t (zero without a bias)
          for (index_t r = 0; r < K; ++r)
            for (index_t j = 0; j < K; ++j) zq[j] += qr[r] * Wt[r * K + j];
          detail::ttt_layer_norm<double>(zq.data(), K, g, bt, eps, y.data(), static_cast<double*>(nullptr));
          for (index_t j = 0; j < K; ++j) out.z(b, t, h, j) = static_cast<float>(qr[j] + y[j]);
        }
        for (index_t e = 0; e < KK; ++e) W[e] -= c * acc[e];  // W_{t0+n-1}: the last position's scale
        for (index_t j = 0; j < K; ++j) bias[j] -= c * acc_b[j];
      }
      if (out.final_w.has_value())
        for (index_t i = 0; i < K; ++i)
          for (index_t j = 0; j < K; ++j) out.final_w(b, h, i, j) = static_cast<float>(W[i * K + j]);
      if (out.final_b.has_value())
        for (index_t j = 0; j < K; ++j) out.final_b(b, h, j) = static_cast<float>(bias[j]);
    }
}


/// The gradients of ttt_mlp's inner loss with biases (ttt_mlp_inner_loss below), in double.
struct TttMlpInnerGrads {
  std::vector<double> w1;  ///< dl/dW1 [K,M] row-major
  std::vector<double> b1;  ///< dl/db1 = dl/dz1 [M]
  std::vector<double> w2;  ///< dl/dW2 [M,K] row-major
  std::vector<double> b2;  ///< dl/db2 = dl/dz2 [K]
};

/// The inner loss of ttt_mlp with biases (options.inner_bias = trained),
/// l(W1, b1, W2, b2; k, v) = 1/2 ||LN(gelu(k W1 + b1) W2 + b2) + k - v||^2, in double; with
/// `grads` given, writes every gradient, each written out from the chain rule.
inline double ttt_mlp_inner_loss(const std::vector<double>& W1, const std::vector<double>& b1,
                                 const std::vector<double>& W2, const std::vector<double>& b2,
                                 const std::vector<double>& k, const std::vector<double>& v,
                                 const std::vector<double>& gamma, const std::vector<double>& beta, double ln_eps,
                                 TttMlpInnerGrads* grads) {
  const index_t K = static_cast<index_t>(k.size()), M = static_cast<index_t>(b1.size());
  std::vector<double> z1(b1), a(z1), g1(z1), z2(b2), y(static_cast<std::size_t>(K)), dy(y);
  for (index_t i = 0; i < K; ++i)
    for (index_t m = 0; m < M; ++m) z1[m] += k[i] * W1[i * M + m];
  for (index_t m = 0; m < M; ++m) a[m] = detail::ttt_gelu(z1[m]);
  for (index_t m = 0; m < M; ++m)
    for (index_t j = 0; j < K; ++j) z2[j] += a[m] * W2[m * K + j];
  const double loss = detail::ttt_residual_loss(z2, k, v, gamma, beta, ln_eps, y, dy, grads != nullptr);
  if (grads == nullptr) return loss;
  for (index_t m = 0; m < M; ++m) {  // dy is dl/dz2 now
    double s = 0;
    for (index_t j = 0; j < K; ++j) s += dy[j] * W2[m * K + j];
    g1[m] = s * detail::ttt_gelu_derivative(z1[m]);  // dl/dz1
  }
  grads->w2.assign(static_cast<std::size_t>(M * K), 0.0);
  for (index_t m = 0; m < M; ++m)
    for (index_t j = 0; j < K; ++j) grads->w2[m * K + j] = a[m] * dy[j];  // dl/dW2 = a^T dl/dz2
  grads->w1.assign(static_cast<std::size_t>(K * M), 0.0);
  for (index_t i = 0; i < K; ++i)
    for (index_t m = 0; m < M; ++m) grads->w1[i * M + m] = k[i] * g1[m];  // dl/dW1 = k^T dl/dz1
  grads->b1 = g1, grads->b2 = dy;
  return loss;
}

/// The inner loss of ttt_mlp, l(W1, W2; k, v) = 1/2 ||LN(gelu(k W1) W2) + k - v||^2, in double:
/// W1 row-major [K,M], W2 [M,K]. With grad1 / grad2 given, writes dl/dW1 [K,M] and dl/dW2 [M,K].
inline double ttt_mlp_inner_loss(const std::vector<double>& W1, const std::vector<double>& W2,
                                 const std::vector<double>& k, const std::vector<double>& v,
                                 const std::vector<double>& gamma, const std::vector<double>& beta, double ln_eps,
                                 std::vector<double>* grad1 = nullptr, std::vector<double>* grad2 = nullptr) {
  const std::size_t M = W1.size() / k.size();
  TttMlpInnerGrads g;
  const bool backward = grad1 != nullptr || grad2 != nullptr;
  const double loss = ttt_mlp_inner_loss(W1, std::vector<double>(M, 0.0), W2, std::vector<double>(k.size(), 0.0), k, v,
                                         gamma, beta, ln_eps, backward ? &g : nullptr);
  if (grad1 != nullptr) *grad1 = std::move(g.w1);
  if (grad2 != nullptr) *grad2 = std::move(g.w2);
  return loss;
}

/// The ttt_mlp definition per mini-batch, as reference::ttt_linear: each token's gradients
/// (dl/dW1, dl/dW2 at the mini-batch's W1_0, W2_0) formed explicitly, W1_t and W2_t their
/// weighted sums, z_t = q_t + LN(gelu(q_t W1_t) W2_t). Double; single-threaded.
inline void ttt_mlp(const TttMlpInputs& in, const TttMlpOutputs& out, const TttOptions& options = {},
                    const Executor& executor = serial_executor()) {
  detail::check_reversible("reference::ttt_mlp", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::ttt_reversed_call(in, out);
    return ttt_mlp(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const ArgCheck check("reference::ttt_mlp");
  index_t M = 0;
  SequenceMap map;
  const detail::TttDims d = detail::validate_ttt_mlp(check, in, out, options, &M, &map);
  if (!detail::rnn_plain_batch(in.batch))
    return detail::ttt_for_each_sequence(
        map, in, out,
        [&](TttMlpInputs& in1, TttMlpOutputs& out1, const SequenceSpan& s) {
          detail::ttt_mlp_sequence_states(in1, out1, in, out, s);
        },
        [&](const TttMlpInputs& in1, const TttMlpOutputs& out1) { ttt_mlp(in1, out1, options, executor); });
  const index_t K = d.K, KM = K * M, bs = options.mini_batch;
  const double eps = options.ln_eps;
  const bool biased = options.inner_bias == TttInnerBias::trained;
  std::vector<double> W1(static_cast<std::size_t>(KM)), W2(W1), W1t(W1), W2t(W1), acc1(W1), acc2(W1);
  std::vector<double> kr(static_cast<std::size_t>(K)), vr(kr), qr(kr), gamma(kr), beta(kr), zq(kr), y(kr);
  std::vector<double> hq(static_cast<std::size_t>(M));
  // b1, b2 and their sums_{s <= t} eta_s dl/db (zero without biases), one token's gradients.
  std::vector<double> b1(static_cast<std::size_t>(M)), acc_b1(b1), b2(static_cast<std::size_t>(K)), acc_b2(b2);
  TttMlpInnerGrads grads;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      for (index_t j = 0; j < K; ++j) gamma[j] = in.ln_weight(h, j), beta[j] = in.ln_bias(h, j);
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) W1[i * M + m] = in.initial_w1(b, h, i, m), W2[m * K + i] = in.initial_w2(b, h, m, i);
      for (index_t m = 0; m < M; ++m) b1[m] = in.initial_b1.has_value() ? in.initial_b1(b, h, m) : 0.0;
      for (index_t j = 0; j < K; ++j) b2[j] = in.initial_b2.has_value() ? in.initial_b2(b, h, j) : 0.0;
      const auto g = [&](index_t j) { return gamma[j]; };
      const auto bt = [&](index_t j) { return beta[j]; };
      for (index_t t0 = 0; t0 < d.T; t0 += bs) {
        const index_t n = std::min(bs, d.T - t0);
        std::fill(acc1.begin(), acc1.end(), 0.0), std::fill(acc2.begin(), acc2.end(), 0.0);
        std::fill(acc_b1.begin(), acc_b1.end(), 0.0), std::fill(acc_b2.begin(), acc_b2.end(), 0.0);
        double c = 1;
        for (index_t i = 0; i < n; ++i) {
          const index_t t = t0 + i;
          for (index_t j = 0; j < K; ++j) kr[j] = in.k(b, t, h, j), vr[j] = in.v(b, t, h, j), qr[j] = in.q(b, t, h, j);
          ttt_mlp_inner_loss(W1, b1, W2, b2, kr, vr, gamma, beta, eps, &grads);
          const double eta = in.eta(b, t, h);
          for (index_t e = 0; e < KM; ++e) acc1[e] += eta * grads.w1[e], acc2[e] += eta * grads.w2[e];
          if (biased) {
            for (index_t m = 0; m < M; ++m) acc_b1[m] += eta * grads.b1[m];
            for (index_t j = 0; j < K; ++j) acc_b2[j] += eta * grads.b2[j];
          }
          c = in.token_scale.has_value() ? double(in.token_scale(i)) : 1.0;
          for (index_t e = 0; e < KM; ++e) W1t[e] = W1[e] - c * acc1[e], W2t[e] = W2[e] - c * acc2[e];
          for (index_t m = 0; m < M; ++m) {
            double s = b1[m] - c * acc_b1[m];  // b1_t
            for (index_t r = 0; r < K; ++r) s += qr[r] * W1t[r * M + m];
            hq[m] = detail::ttt_gelu(s);
          }
          for (index_t j = 0; j < K; ++j) zq[j] = b2[j] - c * acc_b2[j];  // b2_t
          for (index_t m = 0; m < M; ++m)
            for (index_t j = 0; j < K; ++j) zq[j] += hq[m] * W2t[m * K + j];
          detail::ttt_layer_norm<double>(zq.data(), K, g, bt, eps, y.data(), static_cast<double*>(nullptr));
          for (index_t j = 0; j < K; ++j) out.z(b, t, h, j) = static_cast<float>(qr[j] + y[j]);
        }
        for (index_t e = 0; e < KM; ++e) W1[e] -= c * acc1[e], W2[e] -= c * acc2[e];
        for (index_t m = 0; m < M; ++m) b1[m] -= c * acc_b1[m];
        for (index_t j = 0; j < K; ++j) b2[j] -= c * acc_b2[j];
      }
      if (out.final_w1.has_value())
        for (index_t i = 0; i < K; ++i)
          for (index_t m = 0; m < M; ++m) out.final_w1(b, h, i, m) = static_cast<float>(W1[i * M + m]);
      if (out.final_w2.has_value())
        for (index_t m = 0; m < M; ++m)
          for (index_t j = 0; j < K; ++j) out.final_w2(b, h, m, j) = static_cast<float>(W2[m * K + j]);
      if (out.final_b1.has_value())
        for (index_t m = 0; m < M; ++m) out.final_b1(b, h, m) = static_cast<float>(b1[m]);
      if (out.final_b2.has_value())
        for (index_t j = 0; j < K; ++j) out.final_b2(b, h, j) = static_cast<float>(b2[j]);
    }
}

}  // namespace reference
}  // namespace seqmix
