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
//
// Miras (TitansMlpOptions::loss, as titans' TitansLoss): l(W; k, v) = sum_j f(e_j) with f one of
// Miras' elementwise attentional biases (l2 = e^2, l1 = |e|, l3 = |e|^3, Huber with threshold
// options.huber_delta or Yaad's per-token delta_t, the input huber_delta); the backward is the
// same with d = f'(e) in place of 2 e.
//
// Miras retention (TitansMlpOptions::retention; Behrouz et al. 2025, arXiv 2504.13173, Moneta
// eqs. 24-25, Memora eq. 27), per weight matrix X in {W1, W2} with its own momentum S as above:
//   decay          X_t = (1 - alpha_t) X_{t-1} + S_t                        (Titans, the default)
//   lq_normalized  A_t = (1 - alpha_t) A_{t-1} + S_t, read X_t = A_t / ||A_t||_q^{q-2}, ||.||_q the
//                  entrywise l_q norm of that whole matrix (the stored w1, w2 are A1, A2; X = 0
//                  while A = 0; q = 2 is decay exactly)
//   softmax_kl     X_t = softmax((1 - alpha_t) log X_{t-1} + S_t) over each slice of
//                  options.softmax_axis of the stored [in,out] matrix (key: each column over
//                  the inputs, value: each row over the outputs); X stays on its simplices
// Inside a mini-batch every gradient is still taken at the memory READ at its start (A_0 / ||A_0||
// for Moneta), and the retention is applied exactly at every token: W_t of the formula above,
// not the paper's chunkwise approximation (Moneta normalizing only at chunk boundaries, Memora
// linearized inside a chunk). With b = 1 this is the paper's token recurrence.
// options.reverse runs from the last token to the first (core/direction.hpp; mini-batches counted
// in processing order). Serving: TitansMlpInputs::batch / TitansMlpStepInputs::batch (packed
// sequences, state slots); each packed sequence starts its own mini-batches.
// This header: argument structs, options, validation, the inner loss with its gradient
// (reference::titans_mlp_inner_loss) and reference::titans_mlp (per mini-batch, each token's two
// gradient matrices formed explicitly, double). Fast prefill and step: mlp.hpp.
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
#include "seqmix/core/qkv_check.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/rnn/common.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/ttt/reference.hpp"

namespace seqmix {

/// Options of titans_mlp and titans_mlp_step.
struct TitansMlpOptions {
  /// Tokens per mini-batch b, in [1, 1024]: inside a mini-batch every gradient is taken at the
  /// memory of its start (Titans section 3.2). b = 1 is the exact per-token recurrence (the step).
  index_t mini_batch = 16;
  /// The inner loss f(e) summed over the error e = M(k) - v (Miras' attentional biases, see
  /// TitansLoss): l2 (Titans, the default), l1, l3 or huber.
  TitansLoss loss = TitansLoss::l2;
  /// Huber's threshold delta (TitansLoss::huber only; finite and > 0) for every token without
  /// a per-token huber_delta input.
  float huber_delta = 1.f;
  /// Run from the last token to the first (core/direction.hpp): q, k, v, the gates, huber_delta
  /// and y are reached through reversed views, not copied; mini-batches are counted from the
  /// last token; final states are those after token 0. Refused with packed sequences. The step
  /// ignores it.
  bool reverse = false;
  /// The retention gate of each weight matrix (Miras, see TitansRetention and the header
  /// comment): decay (Titans, the default), lq_normalized (Moneta: the stored W1, W2 are the
  /// states A1, A2, the memory reads A / ||A||_q^{q-2} per matrix) or softmax_kl (Memora). Other
  /// than decay, the prefill runs each mini-batch's state updates token by token (exact).
  TitansRetention retention = TitansRetention::decay;
  /// Moneta's q (TitansRetention::lq_normalized): finite and >= 2; 4 as the paper's Moneta.
  float retention_q = 4.f;
  /// The slices of Memora's softmax (TitansRetention::softmax_kl) in each stored [in,out] matrix
  /// (W1 [K,M], W2 [M,K]), as the linear memory's [K,V]: key = over the input rows for each
  /// output column (every hidden unit's and every output channel's weights sum to 1, the
  /// default), value = over the output columns for each input row.
  TitansSoftmaxAxis softmax_axis = TitansSoftmaxAxis::key;
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
  /// [B,T,HV] Yaad's per-token Huber threshold delta_t (TitansLoss::huber only; finite, > 0),
  /// optional: options.huber_delta for every token when absent.
  ConstView<float, 3> huber_delta = {};
  /// Optional serving layout (core/batch.hpp): cu_seqlens (packed tokens [1,total_T,...], N
  /// sequences, states [N,...]) and state_indices (states are rows of pools [P,...], -1 =
  /// padding: nothing read or written, its y untouched). has_initial_state is refused: the zero
  /// MLP has zero gradients, so a fresh sequence needs its W1_0, W2_0 (and zero momenta) written
  /// into its slot.
  SequenceBatch batch = {};
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

/// Decode-step arguments of titans_mlp_step: one token per batch row (v is [B,HV,K]).
struct TitansMlpStepInputs {
  ConstView<float, 3> q;                 ///< [B,HK,K]
  ConstView<float, 3> k;                 ///< [B,HK,K]
  ConstView<float, 3> v;                 ///< [B,HV,K]
  ConstView<float, 2> alpha;             ///< [B,HV]
  ConstView<float, 2> eta;               ///< [B,HV]
  ConstView<float, 2> theta;             ///< [B,HV]
  ConstView<float, 2> huber_delta = {};  ///< [B,HV] the token's Huber delta_t, optional (TitansLoss::huber only)
  /// Optional: state_indices [B] (row b updates pool row state_indices[b] of w1, w2, s1, s2;
  /// -1 = padding row, its y and states untouched). cu_seqlens and has_initial_state are refused.
  SequenceBatch batch = {};
};

/// Decode-step outputs of titans_mlp_step: the weights and momenta are read and updated in place.
struct TitansMlpStepOutputs {
  TensorView<float, 3> y;   ///< [B,HV,K]
  TensorView<float, 4> w1;  ///< [B,HV,K,M] (or the pool [P,HV,K,M] with batch.state_indices)
  TensorView<float, 4> w2;  ///< [B,HV,M,K] (or [P,HV,M,K])
  TensorView<float, 4> s1;  ///< [B,HV,K,M] (or [P,HV,K,M])
  TensorView<float, 4> s2;  ///< [B,HV,M,K] (or [P,HV,M,K])
};

namespace detail {

struct TitansMlpDims {
  index_t B, T, HK, HV, K, M;
  index_t group() const { return HV / HK; }
};

inline void check_titans_mlp_options(const ArgCheck& check, const TitansMlpOptions& options) {
  if (options.mini_batch < 1 || options.mini_batch > 1024)
    check.fail("options.mini_batch", "must lie in [1, 1024], got " + std::to_string(options.mini_batch));
  check_enum(check.op(), "options.loss", options.loss, 4);
  if (options.loss == TitansLoss::huber && !(options.huber_delta > 0.f && std::isfinite(options.huber_delta)))
    check.fail("options.huber_delta", "must be finite and > 0, got " + std::to_string(options.huber_delta));
  check_enum(check.op(), "options.retention", options.retention, 3);
  check_enum(check.op(), "options.softmax_axis", options.softmax_axis, 2);
  if (!(options.retention_q >= 2.f && std::isfinite(options.retention_q)))
    check.fail("options.retention_q", "must be finite and >= 2, got " + std::to_string(options.retention_q));
}

// Memora (TitansRetention::softmax_kl) takes log W: state row r of w1 and w2 must be a point of
// the simplices of options.softmax_axis (titans_check_simplex_memory). Only the rows a call reads
// are checked: a pool's unused slots may hold anything.
inline void titans_mlp_check_simplex_row(const ArgCheck& check, const TitansMlpOptions& options, const char* name1,
                                         const ConstView<float, 4>& w1, const char* name2, const ConstView<float, 4>& w2,
                                         index_t r) {
  if (options.retention != TitansRetention::softmax_kl) return;
  titans_check_simplex_memory(check, name1, w1.slice(0, r, 1), options.softmax_axis);
  titans_check_simplex_memory(check, name2, w2.slice(0, r, 1), options.softmax_axis);
}

// Token row b's state row in a step: its slot with batch.state_indices (-1: padding), else b.
inline index_t titans_mlp_step_row(const SequenceBatch& batch, index_t b) {
  return batch.state_indices.has_value() ? batch.state_indices[b] : b;
}

// A serving call never starts a row from zeros: the zero MLP has zero gradients.
inline void titans_mlp_refuse_fresh(const ArgCheck& check, const SequenceBatch& batch) {
  if (batch.has_initial_state.has_value())
    check.fail("has_initial_state", "is not supported by titans_mlp (the zero MLP has zero gradients): write the "
                                    "sequence's initial W1, W2 and zero momenta into its slot instead");
}

// The token-indexed arguments of a reverse call, reversed (the forward code then runs on them).
inline std::pair<TitansMlpInputs, TitansMlpOutputs> titans_mlp_reversed_call(TitansMlpInputs in, TitansMlpOutputs out) {
  reverse_time_of(in.q, in.k, in.v, in.alpha, in.eta, in.theta, in.huber_delta, out.y);
  return {in, out};
}

inline TitansMlpDims validate_titans_mlp(const ArgCheck& check, const TitansMlpInputs& in, const TitansMlpOutputs& out,
                                         const TitansMlpOptions& options, SequenceMap* map = nullptr) {
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  titans_mlp_refuse_fresh(check, in.batch);
  const bool plain = rnn_plain_batch(in.batch);
  const detail::QkvDims d = detail::check_qkv(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, T = d.T, HV = d.HV, K = d.K;
  if (d.V != K)
    check.fail("v", "must have K = " + std::to_string(K) + " columns (the memory x + gelu(x W1) W2 is residual), got shape " +
                        shape_to_string(in.v.shape()));
  if (K <= 0) check.fail("k", "must have at least one channel, got shape " + shape_to_string(in.k.shape()));
  const std::array<index_t, 3> gate{B, T, HV};
  check.shape("alpha", in.alpha, gate, "B,T,HV").shape("eta", in.eta, gate, "B,T,HV").shape("theta", in.theta, gate, "B,T,HV");
  check.optional_shape("huber_delta", in.huber_delta, gate, "B,T,HV");
  // A dense batch has B state rows; a serving call N (packed) or the pool's P (slots).
  check.shape("initial_w1", in.initial_w1, std::array<index_t, 4>{plain ? B : -1, HV, K, -1},
              plain ? "B,HV,K,M (required)" : "N,HV,K,M or P,HV,K,M (required)");
  const index_t M = in.initial_w1.size(3), R = in.initial_w1.size(0);
  if (M <= 0) check.fail("initial_w1", "must have at least one hidden unit, got shape " + shape_to_string(in.initial_w1.shape()));
  const std::array<index_t, 4> s1{R, HV, K, M}, s2{R, HV, M, K};
  check.shape("initial_w2", in.initial_w2, s2, "R,HV,M,K (R = initial_w1's rows; required)");
  check.optional_shape("initial_s1", in.initial_s1, s1, "R,HV,K,M");
  check.optional_shape("initial_s2", in.initial_s2, s2, "R,HV,M,K");
  check.shape("y", out.y, std::array<index_t, 4>{B, T, HV, K}, "B,T,HV,K");
  check.optional_shape("final_w1", out.final_w1, s1, "R,HV,K,M").optional_shape("final_w2", out.final_w2, s2, "R,HV,M,K");
  check.optional_shape("final_s1", out.final_s1, s1, "R,HV,K,M").optional_shape("final_s2", out.final_s2, s2, "R,HV,M,K");
  check_titans_mlp_options(check, options);
  if (!plain) {
    const SequenceMap m = SequenceMap::make(check, in.batch, B, T, true, R);
    for (index_t n = 0; n < m.sequences(); ++n)
      if (m[n].state_row >= 0)
        titans_mlp_check_simplex_row(check, options, "initial_w1", in.initial_w1, "initial_w2", in.initial_w2, m[n].state_row);
    if (map != nullptr) *map = m;
  } else {
    for (index_t r = 0; r < R; ++r)
      titans_mlp_check_simplex_row(check, options, "initial_w1", in.initial_w1, "initial_w2", in.initial_w2, r);
  }
  titans_check_gates<3>(check, in.alpha, in.eta, in.theta);
  titans_check_huber_deltas<3>(check, in.huber_delta, options);
  check.no_overlap("y", out.y, "huber_delta", in.huber_delta);
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
    check.no_overlap(final_names[i], finals[i], "huber_delta", in.huber_delta);
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
  titans_mlp_refuse_fresh(check, in.batch);
  if (in.batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
  const detail::QkvDims d = detail::check_qkv_step(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, HV = d.HV, K = d.K;
  if (d.V != K)
    check.fail("v", "must have K = " + std::to_string(K) + " columns (the memory x + gelu(x W1) W2 is residual), got shape " +
                        shape_to_string(in.v.shape()));
  if (K <= 0) check.fail("k", "must have at least one channel, got shape " + shape_to_string(in.k.shape()));
  const std::array<index_t, 2> gate{B, HV};
  check.shape("alpha", in.alpha, gate, "B,HV").shape("eta", in.eta, gate, "B,HV").shape("theta", in.theta, gate, "B,HV");
  check.shape("y", out.y, std::array<index_t, 3>{B, HV, K}, "B,HV,K");
  check.optional_shape("huber_delta", in.huber_delta, gate, "B,HV");
  const bool slotted = in.batch.slotted();
  check.shape("w1", out.w1, std::array<index_t, 4>{slotted ? -1 : B, HV, K, -1}, slotted ? "P,HV,K,M" : "B,HV,K,M");
  const index_t M = out.w1.size(3), P = out.w1.size(0);
  if (M <= 0) check.fail("w1", "must have at least one hidden unit, got shape " + shape_to_string(out.w1.shape()));
  const std::array<index_t, 4> s1{P, HV, K, M}, s2{P, HV, M, K};
  check.shape("w2", out.w2, s2, "P,HV,M,K").shape("s1", out.s1, s1, "P,HV,K,M").shape("s2", out.s2, s2, "P,HV,M,K");
  check_titans_mlp_options(check, options);
  if (slotted) SequenceMap::make(check, in.batch, B, 1, true, P);
  for (index_t b = 0; b < B; ++b) {
    const index_t p = titans_mlp_step_row(in.batch, b);
    if (p >= 0) titans_mlp_check_simplex_row(check, options, "w1", out.w1, "w2", out.w2, p);
  }
  titans_check_gates<2>(check, in.alpha, in.eta, in.theta);
  titans_check_huber_deltas<2>(check, in.huber_delta, options);
  check.no_overlap("y", out.y, "huber_delta", in.huber_delta);
  const ConstView<float, 4> states[4] = {out.w1, out.w2, out.s1, out.s2};
  const char* names[4] = {"w1", "w2", "s1", "s2"};
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("y", out.y, "alpha", in.alpha).no_overlap("y", out.y, "eta", in.eta).no_overlap("y", out.y, "theta", in.theta);
  for (int i = 0; i < 4; ++i) {
    check.no_overlap(names[i], states[i], "y", out.y).no_overlap(names[i], states[i], "q", in.q);
    check.no_overlap(names[i], states[i], "k", in.k).no_overlap(names[i], states[i], "v", in.v);
    check.no_overlap(names[i], states[i], "alpha", in.alpha).no_overlap(names[i], states[i], "eta", in.eta);
    check.no_overlap(names[i], states[i], "theta", in.theta).no_overlap(names[i], states[i], "huber_delta", in.huber_delta);
    for (int j = i + 1; j < 4; ++j) check.no_overlap(names[i], states[i], names[j], states[j]);
  }
  return {B, 1, d.H, HV, K, M};
}

// Runs one(in1, out1) on every running sequence of a validated serving call as a plain dense
// call of its own (B = 1, its tokens, its state rows). Padding sequences (state row -1) are
// skipped: their y stays untouched.
template <class F>
void titans_mlp_for_each_sequence(const SequenceMap& map, const TitansMlpInputs& in, const TitansMlpOutputs& out, F&& one) {
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.state_row < 0) continue;
    TitansMlpInputs in1 = in;
    in1.q = rnn_sequence_rows(in.q, s), in1.k = rnn_sequence_rows(in.k, s), in1.v = rnn_sequence_rows(in.v, s);
    in1.alpha = rnn_sequence_rows(in.alpha, s), in1.eta = rnn_sequence_rows(in.eta, s);
    in1.theta = rnn_sequence_rows(in.theta, s), in1.huber_delta = rnn_sequence_rows(in.huber_delta, s);
    in1.initial_w1 = rnn_state_row(in.initial_w1, s, true), in1.initial_w2 = rnn_state_row(in.initial_w2, s, true);
    in1.initial_s1 = rnn_state_row(in.initial_s1, s, true), in1.initial_s2 = rnn_state_row(in.initial_s2, s, true);
    in1.batch = SequenceBatch();
    TitansMlpOutputs out1 = out;
    out1.y = rnn_sequence_rows(out.y, s);
    out1.final_w1 = rnn_state_row(out.final_w1, s, true), out1.final_w2 = rnn_state_row(out.final_w2, s, true);
    out1.final_s1 = rnn_state_row(out.final_s1, s, true), out1.final_s2 = rnn_state_row(out.final_s2, s, true);
    one(in1, out1);
  }
}

}  // namespace detail

namespace reference {

/// The inner loss of titans_mlp, l(W1, W2; k, v) = sum_j f(e_j) with e = k + gelu(k W1) W2 - v
/// and f the loss (l2: ||e||^2, the default; l1, l3, Huber with threshold delta), in double, with
/// W1 [K,M] and W2 [M,K] row-major. With g1 / g2 given, writes the gradient dl/dW1 [K,M] and
/// dl/dW2 [M,K] there, written out (no autodiff).
inline double titans_mlp_inner_loss(const std::vector<double>& W1, const std::vector<double>& W2,
                                    const std::vector<double>& k, const std::vector<double>& v,
                                    std::vector<double>* g1 = nullptr, std::vector<double>* g2 = nullptr,
                                    TitansLoss loss_kind = TitansLoss::l2, double delta = 1.0) {
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
    loss += detail::titans_loss_value(loss_kind, e, delta);
    d[static_cast<std::size_t>(j)] = detail::titans_loss_grad<double>(loss_kind, e, delta);  // dl/dM(k)
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
/// matrices at the mini-batch's first memory (as read) formed explicitly, then the momentum and
/// retention recurrence token by token and y_t = q_t + gelu(q_t W1_t) W2_t with W_t the memory
/// as read (options.retention). Double; single-threaded.
/// Serving batches run sequence by sequence as dense calls.
inline void titans_mlp(const TitansMlpInputs& in, const TitansMlpOutputs& out, const TitansMlpOptions& options = {}) {
  const ArgCheck check("reference::titans_mlp");
  SequenceMap map;
  const detail::TitansMlpDims d = detail::validate_titans_mlp(check, in, out, options, &map);
  if (options.reverse) {
    const auto rev = detail::titans_mlp_reversed_call(in, out);
    return titans_mlp(rev.first, rev.second, detail::forward_options(options));
  }
  if (!detail::rnn_plain_batch(in.batch))
    return detail::titans_mlp_for_each_sequence(
        map, in, out, [&](const TitansMlpInputs& in1, const TitansMlpOutputs& out1) { titans_mlp(in1, out1, options); });
  const index_t K = d.K, M = d.M, KM = K * M;
  std::vector<double> W1(static_cast<std::size_t>(KM)), W2(W1.size()), S1(W1.size()), S2(W1.size());
  std::vector<double> W1_0, W2_0, kr(static_cast<std::size_t>(K)), vr(kr.size()), g1, g2, h(static_cast<std::size_t>(M));
  const auto at = [](index_t i) { return static_cast<std::size_t>(i); };
  const bool moneta = options.retention == TitansRetention::lq_normalized;
  const bool memora = options.retention == TitansRetention::softmax_kl;
  // The factor the stored state is read with: 1 / ||A||_q^{q-2} (Moneta), else 1.
  const auto read_factor = [&](const std::vector<double>& A) {
    if (!moneta) return 1.0;
    double sum = 0.0;
    for (const double x : A) sum += detail::titans_abs_pow<double>(x, options.retention_q);
    return detail::titans_lq_read_factor(sum, options.retention_q);
  };
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
        W1_0 = W1, W2_0 = W2;  // every gradient of this mini-batch at its first memory (as read)
        const double f1_0 = read_factor(W1), f2_0 = read_factor(W2);
        for (double& x : W1_0) x *= f1_0;
        for (double& x : W2_0) x *= f2_0;
        for (index_t t = t0; t < std::min(d.T, t0 + options.mini_batch); ++t) {
          for (index_t j = 0; j < K; ++j) kr[at(j)] = in.k(b, t, hk, j), vr[at(j)] = in.v(b, t, hv, j);
          const double delta = in.huber_delta.has_value() ? in.huber_delta(b, t, hv) : options.huber_delta;
          titans_mlp_inner_loss(W1_0, W2_0, kr, vr, &g1, &g2, options.loss, delta);
          const double a = 1.0 - double(in.alpha(b, t, hv)), eta = in.eta(b, t, hv), theta = in.theta(b, t, hv);
          // What each weight keeps of itself: a W (decay; Moneta's A), a log W (Memora; a = 0
          // forgets log W entirely, 0 * log 0 would be NaN).
          const auto kept = [&](double w) { return !memora ? a * w : a == 0.0 ? 0.0 : a * std::log(w); };
          for (index_t e = 0; e < KM; ++e) {
            S1[at(e)] = eta * S1[at(e)] - theta * g1[at(e)], W1[at(e)] = kept(W1[at(e)]) + S1[at(e)];
            S2[at(e)] = eta * S2[at(e)] - theta * g2[at(e)], W2[at(e)] = kept(W2[at(e)]) + S2[at(e)];
          }
          if (memora) {
            detail::titans_softmax_slices_reference(W1, K, M, options.softmax_axis);
            detail::titans_softmax_slices_reference(W2, M, K, options.softmax_axis);
          }
          const double f1 = read_factor(W1), f2 = read_factor(W2);
          for (index_t m = 0; m < M; ++m) {
            double s = 0.0;
            for (index_t i = 0; i < K; ++i) s += double(in.q(b, t, hk, i)) * W1[at(i * M + m)];
            h[at(m)] = detail::ttt_gelu(f1 * s);
          }
          for (index_t j = 0; j < K; ++j) {
            double s = 0.0;
            for (index_t m = 0; m < M; ++m) s += h[at(m)] * W2[at(m * K + j)];
            s = double(in.q(b, t, hk, j)) + f2 * s;
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
