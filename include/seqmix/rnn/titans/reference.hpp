// titans: the neural long-term memory of Titans (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning
// to Memorize at Test Time", eqs. 8-14) with a LINEAR memory. Per (batch, value head) the memory
// M [K,V] and the momentum ("surprise") S [K,V] are stored as gated_delta_rule stores its state
// (docs/operators.md section 4: the memory maps a key to M^T k). Per token, with the gates
// alpha_t (forgetting, in [0,1]), eta_t (momentum decay, in [0,1]) and theta_t (inner learning
// rate, >= 0):
//
//   l(M; k, v)  = || M^T k - v ||^2                     the inner (associative-memory) loss
//   grad_t      = d l / d M at M_{t-1} = 2 k_t (M_{t-1}^T k_t - v_t)^T     [K,V], factor 2 kept
//   S_t         = eta_t S_{t-1} - theta_t grad_t         momentum over the surprise
//   M_t         = (1 - alpha_t) M_{t-1} + S_t            forgetting, then the step
//   y_t         = scale * M_t^T q_t                      retrieval from the updated memory
//
// Retrieval reads M_t: the paper's y_t = M*(q_t) is the forward pass of the memory without a
// weight update, and in its layers (MAC: o_t = y_t (x) M*_t(y_t)) the memory has already taken
// token t; gated_delta_rule also reads its state after the write. scale defaults to 1 (the paper
// has none). q/k have HK heads and v / gates HV (a multiple of HK), repeat-interleaved (SPEC
// section 1). With eta = 0 the update is Gated DeltaNet's: titans(alpha, theta, v) equals
// gated_delta_rule with g = log(1 - alpha), beta = 2 theta / (1 - alpha) and v' = (1 - alpha) v
// (alpha < 1); the gradient is taken at M_{t-1}, Gated DeltaNet's error at the decayed state.
//
// Miras (TitansOptions::loss): the same memory with the elementwise attentional biases l1, l3
// and Huber in place of l2, whose gradient k f'(e)^T replaces 2 k e^T (TitansLoss); the
// retention stays Titans' (1 - alpha) gate. Those run recurrently (exact), not chunked. Huber's
// threshold is options.huber_delta or, per token (Yaad's data-dependent delta_t), the input
// huber_delta.
//
// Miras retention (TitansOptions::retention; Behrouz et al. 2025, arXiv 2504.13173, Moneta eqs.
// 24-25 and Memora eq. 27). The momentum is kept; what it is added to changes. With
// G_t = grad_t taken at the memory read at t-1 and S_t = eta_t S_{t-1} - theta_t G_t:
//   decay          M_t = (1 - alpha_t) M_{t-1} + S_t                       (Titans, above)
//   lq_normalized  A_t = (1 - alpha_t) A_{t-1} + S_t, read W_t = A_t / ||A_t||_q^{q-2}
//                  (Moneta; ||.||_q the entrywise l_q norm of the whole [K,V] matrix; the
//                  stored memory is A, W = 0 while A = 0; q = 2 is the decay form exactly)
//   softmax_kl     W_t = softmax((1 - alpha_t) log W_{t-1} + S_t) over each slice of
//                  TitansOptions::softmax_axis (Memora; W stays >= 0, each slice sums to 1;
//                  no initial memory means the uniform 1 / slice length)
// Neither is linear in the state: the prefill runs them token by token (exact), never chunked.
//
// Serving (TitansInputs::batch, TitansStepInputs::batch; core/batch.hpp): packed sequences
// (cu_seqlens), state slots in pools (state_indices, -1 = padding) and fresh sequences
// (has_initial_state); each sequence runs as a dense call of its own on its state rows.
//
// This header: argument structs, options, validation and seqmix::reference::titans (plain
// loops, double state). Fast prefill (chunkwise-parallel closed form, or recurrent): chunked.hpp;
// decode step: step.hpp; derivation: docs/operators.md section 12, "titans".
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/core/qkv_check.hpp"
#include "seqmix/rnn/common.hpp"

namespace seqmix {

/// How titans() runs the prefill; the step is always recurrent.
enum class TitansAlgorithm {
  chunked,    ///< chunkwise-parallel exact closed form, (M, S) carried between chunks (default)
  recurrent,  ///< token by token, the step's kernel
};

/// The inner loss l(M; k, v) = sum_i f(e_i) on the error e = M^T k - v: Miras' attentional
/// biases that stay elementwise (Behrouz et al. 2025, "It's All Connected"). The gradient is
/// k f'(e)^T; only l2 has the chunkwise-parallel closed form (the others are not linear in M).
enum class TitansLoss {
  l2,     ///< f = e^2, f' = 2 e (Titans; the default)
  l1,     ///< f = |e|, f' = sign(e), 0 at 0 (Moneta's l_p bias, p = 1)
  l3,     ///< f = |e|^3, f' = 3 e |e| (Moneta's l_p bias, p = 3)
  huber,  ///< f = e^2/2 for |e| <= delta, delta (|e| - delta/2) beyond; f' = clamp(e, -delta, delta) (Yaad)
};

/// What the memory keeps of itself per token (Miras' retention gates, arXiv 2504.13173
/// section 5). The momentum S_t = eta_t S_{t-1} - theta_t grad_t is the same for all three.
enum class TitansRetention {
  decay,          ///< M_t = (1 - alpha_t) M_{t-1} + S_t (Titans; the default)
  lq_normalized,  ///< Moneta (eqs. 24-25): state A_t = (1 - alpha_t) A_{t-1} + S_t, memory read W = A / ||A||_q^{q-2}
  softmax_kl,     ///< Memora (eq. 27): W_t = softmax((1 - alpha_t) log W_{t-1} + S_t) per slice, W >= 0
};

/// The slices Memora's softmax (TitansRetention::softmax_kl) normalizes, in the stored [K,V]
/// memory (the transpose of the paper's W [V,K], which maps k to W k).
enum class TitansSoftmaxAxis {
  key,    ///< over K for each value channel: every column of the [K,V] state (a row of the paper's W) sums to 1 (default)
  value,  ///< over V for each key channel: every row of the [K,V] state (a column of the paper's W) sums to 1
};

/// Options of titans and titans_step.
struct TitansOptions {
  /// Multiplies the retrieval y = scale * M^T q; default 1 (the paper's y = M q).
  std::optional<float> scale = {};
  /// Tokens per chunk of the chunked algorithm, in [1, 1024]; changes rounding only. 32 measured
  /// best at H 16, K = V = 64 (16 and 32: 391 ms, 64: 420-480 ms, 128: 520-700 ms, recurrent
  /// 440-485 ms for T 8192 on the loaded 2-core machine).
  index_t chunk_size = 32;
  /// Prefill algorithm (see TitansAlgorithm). With a loss other than l2 the prefill is always
  /// recurrent (no exact chunked form exists).
  TitansAlgorithm algorithm = TitansAlgorithm::chunked;
  /// The inner loss (attentional bias), see TitansLoss.
  TitansLoss loss = TitansLoss::l2;
  /// Huber's threshold delta (TitansLoss::huber only): finite and > 0.
  float huber_delta = 1.f;
  /// Run from the last token to the first (core/direction.hpp): q, k, v, the gates and y are
  /// reached through reversed views, not copied; final states are those after token 0. The step
  /// ignores it.
  bool reverse = false;
  /// The retention gate (see TitansRetention). Other than decay, the prefill runs token by token.
  TitansRetention retention = TitansRetention::decay;
  /// Moneta's q (TitansRetention::lq_normalized): finite and >= 2; 4 as the paper's Moneta.
  float retention_q = 4.f;
  /// The slices of Memora's softmax (TitansRetention::softmax_kl), see TitansSoftmaxAxis.
  TitansSoftmaxAxis softmax_axis = TitansSoftmaxAxis::key;
};

/// Prefill arguments. Each initial state is optional (zeros when absent).
struct TitansInputs {
  ConstView<float, 4> q;                      ///< [B,T,HK,K]
  ConstView<float, 4> k;                      ///< [B,T,HK,K]
  ConstView<float, 4> v;                      ///< [B,T,HV,V], HV a multiple of HK
  ConstView<float, 3> alpha;                  ///< [B,T,HV] forgetting gate in [0,1]
  ConstView<float, 3> eta;                    ///< [B,T,HV] momentum decay in [0,1]
  ConstView<float, 3> theta;                  ///< [B,T,HV] inner learning rate >= 0
  ConstView<float, 4> initial_memory = {};    ///< [B,HV,K,V], optional
  ConstView<float, 4> initial_momentum = {};  ///< [B,HV,K,V], optional
  /// [B,T,HV] Yaad's data-dependent Huber threshold delta_t (TitansLoss::huber only; finite,
  /// > 0), optional: options.huber_delta for every token when absent.
  ConstView<float, 3> huber_delta = {};
  /// Optional serving layout (core/batch.hpp): cu_seqlens (packed tokens [1,total_T,...], N
  /// sequences, states [N,HV,K,V]), state_indices (the four state views are rows of pools
  /// [P,HV,K,V]; -1 = padding: nothing read or written, its y untouched) and has_initial_state
  /// (false: the sequence starts from zero memory and momentum, Memora's uniform memory, whatever
  /// its slot holds). Every sequence runs alone, as a dense call on its own tokens and state rows.
  SequenceBatch batch = {};
};

/// Prefill outputs. y must not overlap anything; each final state is optional and may be the
/// very view of its initial state (written after the row's last token).
struct TitansOutputs {
  TensorView<float, 4> y;                     ///< [B,T,HV,V]
  TensorView<float, 4> final_memory = {};     ///< [B,HV,K,V] ([N,...] packed, [P,...] with slots), optional
  TensorView<float, 4> final_momentum = {};   ///< [B,HV,K,V] ([N,...] packed, [P,...] with slots), optional
};

/// Decode-step arguments: one token per batch row.
struct TitansStepInputs {
  ConstView<float, 3> q;      ///< [B,HK,K]
  ConstView<float, 3> k;      ///< [B,HK,K]
  ConstView<float, 3> v;      ///< [B,HV,V]
  ConstView<float, 2> alpha;  ///< [B,HV]
  ConstView<float, 2> eta;    ///< [B,HV]
  ConstView<float, 2> theta;  ///< [B,HV]
  ConstView<float, 2> huber_delta = {};  ///< [B,HV] the token's Huber delta_t, optional (as TitansInputs::huber_delta)
  /// Optional: state_indices [B] (row b updates pool row state_indices[b] of memory and
  /// momentum [P,HV,K,V]; -1 = padding row, its y and states untouched) and has_initial_state [B]
  /// (false: row b's state is reset to zeros, Memora's uniform memory, before its token).
  /// cu_seqlens is refused (one token per batch row).
  SequenceBatch batch = {};
};

/// Decode-step outputs: memory and momentum are read and updated in place.
struct TitansStepOutputs {
  TensorView<float, 3> y;         ///< [B,HV,V]
  TensorView<float, 4> memory;    ///< [B,HV,K,V] (or the pool [P,HV,K,V] with batch.state_indices)
  TensorView<float, 4> momentum;  ///< [B,HV,K,V] (or the pool [P,HV,K,V] with batch.state_indices)
};

namespace detail {

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments.
inline std::pair<TitansInputs, TitansOutputs> titans_reversed_call(TitansInputs in, TitansOutputs out) {
  reverse_time_of(in.q, in.k, in.v, in.alpha, in.eta, in.theta, in.huber_delta, out.y);
  return {in, out};
}

struct TitansDims {
  index_t B, T, HK, HV, K, V;
  float scale;
  index_t group() const { return HV / HK; }
};

// Every gate value in its range (NaN fails): alpha, eta in [0,1], theta >= 0 and finite.
template <std::size_t R>
void titans_check_gates(const ArgCheck& check, const ConstView<float, R>& alpha, const ConstView<float, R>& eta,
                        const ConstView<float, R>& theta) {
  const auto scan = [&](const char* name, const ConstView<float, R>& g, bool unit) {
    bool ok = true;
    float bad = 0.f;
    const auto visit = [&](float x) {
      const bool good = unit ? (x >= 0.f && x <= 1.f) : (x >= 0.f && std::isfinite(x));
      if (!good && ok) ok = false, bad = x;
    };
    if constexpr (R == 3) {
      for (index_t a = 0; a < g.size(0); ++a)
        for (index_t b = 0; b < g.size(1); ++b)
          for (index_t c = 0; c < g.size(2); ++c) visit(g(a, b, c));
    } else {
      for (index_t a = 0; a < g.size(0); ++a)
        for (index_t b = 0; b < g.size(1); ++b) visit(g(a, b));
    }
    if (!ok)
      check.fail(name, std::string(unit ? "must hold values in [0, 1]" : "must hold finite values >= 0") + ", got " +
                           std::to_string(bad));
  };
  scan("alpha", alpha, true);
  scan("eta", eta, true);
  scan("theta", theta, false);
}

// The scale, after the checks of the options shared by prefill and step.
inline float titans_scale(const ArgCheck& check, const TitansOptions& options) {
  const float scale = options.scale ? *options.scale : 1.f;
  check.finite(scale, "options.scale");
  check_enum(check.op(), "options.loss", options.loss, 4);
  if (options.loss == TitansLoss::huber && !(options.huber_delta > 0.f && std::isfinite(options.huber_delta)))
    check.fail("options.huber_delta", "must be finite and > 0, got " + std::to_string(options.huber_delta));
  check_enum(check.op(), "options.retention", options.retention, 3);
  check_enum(check.op(), "options.softmax_axis", options.softmax_axis, 2);
  if (!(options.retention_q >= 2.f && std::isfinite(options.retention_q)))
    check.fail("options.retention_q", "must be finite and >= 2, got " + std::to_string(options.retention_q));
  return scale;
}

// Memora's memory (TitansRetention::softmax_kl) must be a point of its simplices: every entry
// finite and >= 0, every slice of options.softmax_axis with a positive sum (log W is taken; an
// exact 0, which float's softmax gives only by underflow, stays 0).
inline void titans_check_simplex_memory(const ArgCheck& check, const char* name, const ConstView<float, 4>& M,
                                        TitansSoftmaxAxis axis) {
  if (!M.has_value()) return;
  const bool over_key = axis == TitansSoftmaxAxis::key;
  const index_t slices = over_key ? M.size(3) : M.size(2), len = over_key ? M.size(2) : M.size(3);
  for (index_t b = 0; b < M.size(0); ++b)
    for (index_t h = 0; h < M.size(1); ++h)
      for (index_t i = 0; i < slices; ++i) {
        double sum = 0.0;
        for (index_t j = 0; j < len; ++j) {
          const float x = over_key ? M(b, h, j, i) : M(b, h, i, j);
          if (!(x >= 0.f && std::isfinite(x)))
            check.fail(name, "must hold finite values >= 0 with TitansRetention::softmax_kl, got " + std::to_string(x));
          sum += x;
        }
        if (!(sum > 0.0)) check.fail(name, "has a softmax slice summing to 0 (TitansRetention::softmax_kl takes log W)");
      }
}

// |x|^q, the entries of Moneta's l_q norm (q = 2 and 4 without pow).
template <class F>
F titans_abs_pow(F x, F q) {
  const F a = std::abs(x);
  if (q == F(2)) return a * a;
  if (q == F(4)) return (a * a) * (a * a);
  return std::pow(a, q);
}

// Moneta's read factor 1 / ||A||_q^{q-2} from sum |A|^q: 1 at q = 2, 0 for A = 0 (W = 0).
inline double titans_lq_read_factor(double sum_pow, double q) {
  if (q == 2.0) return 1.0;
  return sum_pow > 0.0 ? std::pow(sum_pow, -(q - 2.0) / q) : 0.0;
}

// The per-token Huber thresholds (Yaad's delta_t): only with TitansLoss::huber, every value
// finite and > 0 (NaN fails). Options: TitansOptions or TitansMlpOptions (both have loss).
template <std::size_t R, class Options>
void titans_check_huber_deltas(const ArgCheck& check, const ConstView<float, R>& delta, const Options& options) {
  if (!delta.has_value()) return;
  if (options.loss != TitansLoss::huber) check.fail("huber_delta", "is read only by options.loss = TitansLoss::huber");
  const auto visit = [&](float x) {
    if (!(x > 0.f && std::isfinite(x))) check.fail("huber_delta", "must hold finite values > 0, got " + std::to_string(x));
  };
  if constexpr (R == 3) {
    for (index_t a = 0; a < delta.size(0); ++a)
      for (index_t b = 0; b < delta.size(1); ++b)
        for (index_t c = 0; c < delta.size(2); ++c) visit(delta(a, b, c));
  } else {
    for (index_t a = 0; a < delta.size(0); ++a)
      for (index_t b = 0; b < delta.size(1); ++b) visit(delta(a, b));
  }
}

// f'(e) of the loss (TitansLoss), for float (the fast forms) and double (the reference). NaN
// stays NaN (no comparison swallows it).
template <class F>
F titans_loss_grad(TitansLoss loss, F e, F delta) {
  switch (loss) {
    case TitansLoss::l1: return e > F(0) ? F(1) : e < F(0) ? F(-1) : e;
    case TitansLoss::l3: return F(3) * e * std::abs(e);
    case TitansLoss::huber: return e > delta ? delta : e < -delta ? -delta : e;
    case TitansLoss::l2: break;
  }
  return F(2) * e;
}

// f(e) of the loss (TitansLoss) itself, in double: the inner loss the gradient tests take finite
// differences of.
inline double titans_loss_value(TitansLoss loss, double e, double delta) {
  const double a = std::abs(e);
  switch (loss) {
    case TitansLoss::l1: return a;
    case TitansLoss::l3: return a * a * a;
    case TitansLoss::huber: return a <= delta ? 0.5 * e * e : delta * (a - 0.5 * delta);
    case TitansLoss::l2: break;
  }
  return e * e;
}

// The rows of a serving call's state views (N packed, the pool's P with slots): every view given
// has the same, -1 when none is given.
inline index_t titans_state_rows(const ArgCheck& check, const TitansInputs& in, const TitansOutputs& out) {
  const std::pair<const char*, ConstView<float, 4>> views[4] = {{"initial_memory", in.initial_memory},
                                                                {"initial_momentum", in.initial_momentum},
                                                                {"final_memory", out.final_memory},
                                                                {"final_momentum", out.final_momentum}};
  index_t rows = -1;
  const char* first = nullptr;
  for (const auto& named : views) {
    if (!named.second.has_value()) continue;
    if (first == nullptr) {
      first = named.first, rows = named.second.size(0);
    } else if (named.second.size(0) != rows) {
      check.fail(named.first, std::string("must have as many rows as ") + first + " (" + std::to_string(rows) +
                                  "), got " + std::to_string(named.second.size(0)));
    }
  }
  return rows;
}

// Memora's initial memory on the rows a serving call reads (a pool's other slots may hold
// anything, a fresh sequence's slot too).
inline void titans_check_simplex_rows(const ArgCheck& check, const SequenceMap& map, const ConstView<float, 4>& M,
                                      TitansSoftmaxAxis axis) {
  if (!M.has_value()) return;
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.read_state) titans_check_simplex_memory(check, "initial_memory", M.slice(0, s.state_row, 1), axis);
  }
}

// `map` (when not null) receives the sequences of a serving call (in.batch used); a plain dense
// batch builds none.
inline TitansDims validate_titans(const ArgCheck& check, const TitansInputs& in, const TitansOutputs& out,
                                  const TitansOptions& options, SequenceMap* map = nullptr) {
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  const bool plain = rnn_plain_batch(in.batch);
  const detail::QkvDims d = detail::check_qkv(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, T = d.T, HV = d.HV, K = d.K, V = d.V;
  if (V <= 0) check.fail("v", "must have at least one value channel, got shape " + shape_to_string(in.v.shape()));
  const std::array<index_t, 3> gate{B, T, HV};
  check.shape("alpha", in.alpha, gate, "B,T,HV").shape("eta", in.eta, gate, "B,T,HV").shape("theta", in.theta, gate, "B,T,HV");
  check.optional_shape("huber_delta", in.huber_delta, gate, "B,T,HV");
  // A dense batch has B state rows; a serving call N (packed) or the pool's P (slots).
  const std::array<index_t, 4> state{plain ? B : -1, HV, K, V};
  const char* state_dims = plain ? "B,HV,K,V" : "N,HV,K,V or P,HV,K,V";
  check.optional_shape("initial_memory", in.initial_memory, state, state_dims);
  check.optional_shape("initial_momentum", in.initial_momentum, state, state_dims);
  check.shape("y", out.y, std::array<index_t, 4>{B, T, HV, V}, "B,T,HV,V");
  check.optional_shape("final_memory", out.final_memory, state, state_dims);
  check.optional_shape("final_momentum", out.final_momentum, state, state_dims);
  if (options.chunk_size < 1 || options.chunk_size > 1024)
    check.fail("options.chunk_size", "must lie in [1, 1024], got " + std::to_string(options.chunk_size));
  check_enum(check.op(), "options.algorithm", options.algorithm, 2);
  const float scale = titans_scale(check, options);
  SequenceMap m;
  if (!plain) {
    const bool has_initial = in.initial_memory.has_value() || in.initial_momentum.has_value();
    m = SequenceMap::make(check, in.batch, B, T, has_initial, titans_state_rows(check, in, out));
    if (map != nullptr) *map = m;
  }
  titans_check_gates<3>(check, in.alpha, in.eta, in.theta);
  titans_check_huber_deltas<3>(check, in.huber_delta, options);
  if (options.retention == TitansRetention::softmax_kl) {
    if (plain)
      titans_check_simplex_memory(check, "initial_memory", in.initial_memory, options.softmax_axis);
    else
      titans_check_simplex_rows(check, m, in.initial_memory, options.softmax_axis);
  }
  check.no_overlap("y", out.y, "huber_delta", in.huber_delta);
  // y is written while every input is read; the final states only at the end of their row.
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("y", out.y, "alpha", in.alpha).no_overlap("y", out.y, "eta", in.eta);
  check.no_overlap("y", out.y, "theta", in.theta).no_overlap("y", out.y, "initial_memory", in.initial_memory);
  check.no_overlap("y", out.y, "initial_momentum", in.initial_momentum);
  check.no_overlap("y", out.y, "final_memory", out.final_memory).no_overlap("y", out.y, "final_momentum", out.final_momentum);
  const auto same = [](const auto& a, const auto& b) { return a.data() == b.data() && a.strides() == b.strides(); };
  if (!same(out.final_memory, in.initial_memory))
    check.no_overlap("final_memory", out.final_memory, "initial_memory", in.initial_memory);
  if (!same(out.final_momentum, in.initial_momentum))
    check.no_overlap("final_momentum", out.final_momentum, "initial_momentum", in.initial_momentum);
  check.no_overlap("final_memory", out.final_memory, "initial_momentum", in.initial_momentum);
  check.no_overlap("final_momentum", out.final_momentum, "initial_memory", in.initial_memory);
  check.no_overlap("final_memory", out.final_memory, "final_momentum", out.final_momentum);
  for (const auto& [name, view] : {std::pair<const char*, ConstView<float, 4>>{"final_memory", out.final_memory},
                                   std::pair<const char*, ConstView<float, 4>>{"final_momentum", out.final_momentum}}) {
    check.no_overlap(name, view, "q", in.q).no_overlap(name, view, "k", in.k).no_overlap(name, view, "v", in.v);
    check.no_overlap(name, view, "alpha", in.alpha).no_overlap(name, view, "eta", in.eta);
    check.no_overlap(name, view, "theta", in.theta).no_overlap(name, view, "huber_delta", in.huber_delta);
  }
  return {B, T, d.H, HV, K, V, scale};
}

inline TitansDims validate_titans_step(const ArgCheck& check, const TitansStepInputs& in, const TitansStepOutputs& out,
                                       const TitansOptions& options) {
  if (in.batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
  const bool slotted = in.batch.slotted();
  const detail::QkvDims d = detail::check_qkv_step(check, "q", in.q, in.k, in.v);
  const index_t B = d.B, HV = d.HV, K = d.K, V = d.V;
  if (V <= 0) check.fail("v", "must have at least one value channel, got shape " + shape_to_string(in.v.shape()));
  const std::array<index_t, 2> gate{B, HV};
  check.shape("alpha", in.alpha, gate, "B,HV").shape("eta", in.eta, gate, "B,HV").shape("theta", in.theta, gate, "B,HV");
  check.optional_shape("huber_delta", in.huber_delta, gate, "B,HV");
  check.shape("y", out.y, std::array<index_t, 3>{B, HV, V}, "B,HV,V");
  // B state rows, or a pool of P with slots.
  check.shape("memory", out.memory, std::array<index_t, 4>{slotted ? -1 : B, HV, K, V}, slotted ? "P,HV,K,V" : "B,HV,K,V");
  const index_t P = out.memory.size(0);
  check.shape("momentum", out.momentum, std::array<index_t, 4>{P, HV, K, V}, slotted ? "P,HV,K,V" : "B,HV,K,V");
  const float scale = titans_scale(check, options);
  // Slots (in [-1, P), none twice) and flags (one per row); allocates nothing on a valid call.
  const SequenceMap map = SequenceMap::make(check, in.batch, B, 1, true, P);
  titans_check_gates<2>(check, in.alpha, in.eta, in.theta);
  titans_check_huber_deltas<2>(check, in.huber_delta, options);
  if (options.retention == TitansRetention::softmax_kl) {
    if (rnn_plain_batch(in.batch)) {
      titans_check_simplex_memory(check, "memory", out.memory, options.softmax_axis);
    } else {
      for (index_t b = 0; b < B; ++b) {  // only the rows this step reads
        const SequenceSpan s = map[b];
        if (s.read_state) titans_check_simplex_memory(check, "memory", out.memory.slice(0, s.state_row, 1), options.softmax_axis);
      }
    }
  }
  check.no_overlap("y", out.y, "huber_delta", in.huber_delta);
  check.no_overlap("y", out.y, "q", in.q).no_overlap("y", out.y, "k", in.k).no_overlap("y", out.y, "v", in.v);
  check.no_overlap("y", out.y, "alpha", in.alpha).no_overlap("y", out.y, "eta", in.eta);
  check.no_overlap("y", out.y, "theta", in.theta).no_overlap("y", out.y, "memory", out.memory);
  check.no_overlap("y", out.y, "momentum", out.momentum).no_overlap("memory", out.memory, "momentum", out.momentum);
  for (const auto& [name, view] : {std::pair<const char*, ConstView<float, 4>>{"memory", out.memory},
                                   std::pair<const char*, ConstView<float, 4>>{"momentum", out.momentum}}) {
    check.no_overlap(name, view, "q", in.q).no_overlap(name, view, "k", in.k).no_overlap(name, view, "v", in.v);
    check.no_overlap(name, view, "alpha", in.alpha).no_overlap(name, view, "eta", in.eta);
    check.no_overlap(name, view, "theta", in.theta).no_overlap(name, view, "huber_delta", in.huber_delta);
  }
  return {B, 1, d.H, HV, K, V, scale};
}

// One sequence of a validated serving call as a plain dense call of its own (B = 1, its tokens,
// its state rows; no initial state when it starts fresh). The caller skips padding (state row -1).
inline std::pair<TitansInputs, TitansOutputs> titans_sequence_call(const TitansInputs& in, const TitansOutputs& out,
                                                                   const SequenceSpan& s) {
  TitansInputs in1 = in;
  in1.q = rnn_sequence_rows(in.q, s), in1.k = rnn_sequence_rows(in.k, s), in1.v = rnn_sequence_rows(in.v, s);
  in1.alpha = rnn_sequence_rows(in.alpha, s), in1.eta = rnn_sequence_rows(in.eta, s);
  in1.theta = rnn_sequence_rows(in.theta, s), in1.huber_delta = rnn_sequence_rows(in.huber_delta, s);
  in1.initial_memory = rnn_state_row(in.initial_memory, s, s.read_state);
  in1.initial_momentum = rnn_state_row(in.initial_momentum, s, s.read_state);
  in1.batch = SequenceBatch();
  TitansOutputs out1 = out;
  out1.y = rnn_sequence_rows(out.y, s);
  out1.final_memory = rnn_state_row(out.final_memory, s, true);
  out1.final_momentum = rnn_state_row(out.final_momentum, s, true);
  return {in1, out1};
}

// Memora's softmax over each slice of the [K,V] matrix X (row-major), in place, in double.
inline void titans_softmax_slices_reference(std::vector<double>& X, index_t K, index_t V, TitansSoftmaxAxis axis) {
  const bool over_key = axis == TitansSoftmaxAxis::key;
  const index_t slices = over_key ? V : K, len = over_key ? K : V;
  const auto at = [&](index_t i, index_t j) { return static_cast<std::size_t>(over_key ? j * V + i : i * V + j); };
  for (index_t i = 0; i < slices; ++i) {
    double mx = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < len; ++j) mx = std::max(mx, X[at(i, j)]);
    double sum = 0.0;
    for (index_t j = 0; j < len; ++j) sum += (X[at(i, j)] = std::exp(X[at(i, j)] - mx));
    for (index_t j = 0; j < len; ++j) X[at(i, j)] /= sum;
  }
}

// reference::titans with a Miras retention (lq_normalized, softmax_kl): the definition of
// reference.hpp's header comment, per (batch, value head), token by token, in double.
inline void titans_reference_retained(const TitansInputs& in, const TitansOutputs& out, const TitansOptions& options,
                                      const TitansDims& d) {
  const index_t K = d.K, V = d.V;
  const bool moneta = options.retention == TitansRetention::lq_normalized;
  const double q = options.retention_q;
  const double uniform = 1.0 / double(options.softmax_axis == TitansSoftmaxAxis::key ? K : V);
  std::vector<double> M(static_cast<std::size_t>(K * V)), S(M.size()), g(static_cast<std::size_t>(V));
  const auto at = [V](index_t r, index_t c) { return static_cast<std::size_t>(r * V + c); };
  // The memory the state is read as: W = A / ||A||_q^{q-2} (Moneta) or the state itself (Memora).
  const auto read_factor = [&]() {
    if (!moneta) return 1.0;
    double sum = 0.0;
    for (const double x : M) sum += titans_abs_pow<double>(x, q);
    return titans_lq_read_factor(sum, q);
  };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.group();
      for (index_t r = 0; r < K; ++r)
        for (index_t c = 0; c < V; ++c) {
          M[at(r, c)] = in.initial_memory.has_value() ? double(in.initial_memory(b, hv, r, c)) : moneta ? 0.0 : uniform;
          S[at(r, c)] = in.initial_momentum.has_value() ? in.initial_momentum(b, hv, r, c) : 0.0;
        }
      for (index_t t = 0; t < d.T; ++t) {
        const double a = 1.0 - double(in.alpha(b, t, hv)), eta = in.eta(b, t, hv), theta = in.theta(b, t, hv);
        const double delta = in.huber_delta.has_value() ? in.huber_delta(b, t, hv) : options.huber_delta;
        const double f = read_factor();
        for (index_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < K; ++r) acc += f * M[at(r, c)] * double(in.k(b, t, h, r));
          g[static_cast<std::size_t>(c)] = titans_loss_grad<double>(options.loss, acc - double(in.v(b, t, hv, c)), delta);
        }
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) {
            S[at(r, c)] = eta * S[at(r, c)] - theta * double(in.k(b, t, h, r)) * g[static_cast<std::size_t>(c)];
            // Memora: a = 0 forgets log W entirely (0 * log 0 would be NaN).
            const double kept = moneta ? a * M[at(r, c)] : a == 0.0 ? 0.0 : a * std::log(M[at(r, c)]);
            M[at(r, c)] = kept + S[at(r, c)];
          }
        if (!moneta) titans_softmax_slices_reference(M, K, V, options.softmax_axis);
        const double f_new = read_factor();
        for (index_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < K; ++r) acc += M[at(r, c)] * double(in.q(b, t, h, r));
          out.y(b, t, hv, c) = static_cast<float>(double(d.scale) * f_new * acc);
        }
      }
      for (index_t r = 0; r < K; ++r)
        for (index_t c = 0; c < V; ++c) {
          if (out.final_memory.has_value()) out.final_memory(b, hv, r, c) = static_cast<float>(M[at(r, c)]);
          if (out.final_momentum.has_value()) out.final_momentum(b, hv, r, c) = static_cast<float>(S[at(r, c)]);
        }
    }
}

}  // namespace detail

namespace reference {

/// The definition: per (batch, value head), token by token, M and S in double, the gradient
/// written out. Single-threaded. Final states may be their initial views. Serving batches
/// (in.batch) run sequence by sequence as dense calls.
inline void titans(const TitansInputs& in, const TitansOutputs& out, const TitansOptions& options = {}) {
  const ArgCheck check("reference::titans");
  SequenceMap map;
  const detail::TitansDims d = detail::validate_titans(check, in, out, options, &map);
  if (options.reverse) {
    const auto rev = detail::titans_reversed_call(in, out);
    return titans(rev.first, rev.second, detail::forward_options(options));
  }
  if (!detail::rnn_plain_batch(in.batch)) {
    // Serving: each running sequence as its own dense call (validated above as a whole).
    for (index_t n = 0; n < map.sequences(); ++n) {
      const SequenceSpan s = map[n];
      if (s.state_row < 0) continue;
      const auto one = detail::titans_sequence_call(in, out, s);
      titans(one.first, one.second, options);
    }
    return;
  }
  if (options.retention != TitansRetention::decay) return detail::titans_reference_retained(in, out, options, d);
  const index_t K = d.K, V = d.V;
  std::vector<double> M(static_cast<std::size_t>(K * V)), S(M.size()), err(static_cast<std::size_t>(V));
  const auto at = [V](index_t r, index_t c) { return static_cast<std::size_t>(r * V + c); };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hv = 0; hv < d.HV; ++hv) {
      const index_t h = hv / d.group();
      for (index_t r = 0; r < K; ++r)
        for (index_t c = 0; c < V; ++c) {
          M[at(r, c)] = in.initial_memory.has_value() ? in.initial_memory(b, hv, r, c) : 0.0;
          S[at(r, c)] = in.initial_momentum.has_value() ? in.initial_momentum(b, hv, r, c) : 0.0;
        }
      for (index_t t = 0; t < d.T; ++t) {
        const double alpha = in.alpha(b, t, hv), eta = in.eta(b, t, hv), theta = in.theta(b, t, hv);
        const double delta = in.huber_delta.has_value() ? in.huber_delta(b, t, hv) : options.huber_delta;
        // err = M_{t-1}^T k - v; grad = k f'(err)^T (l2: 2 k err^T).
        for (index_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < K; ++r) acc += M[at(r, c)] * double(in.k(b, t, h, r));
          err[static_cast<std::size_t>(c)] =
              detail::titans_loss_grad<double>(options.loss, acc - double(in.v(b, t, hv, c)), delta);
        }
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) {
            const double grad = double(in.k(b, t, h, r)) * err[static_cast<std::size_t>(c)];
            S[at(r, c)] = eta * S[at(r, c)] - theta * grad;
            M[at(r, c)] = (1.0 - alpha) * M[at(r, c)] + S[at(r, c)];
          }
        for (index_t c = 0; c < V; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < K; ++r) acc += M[at(r, c)] * double(in.q(b, t, h, r));
          out.y(b, t, hv, c) = static_cast<float>(double(d.scale) * acc);
        }
      }
      for (index_t r = 0; r < K; ++r)
        for (index_t c = 0; c < V; ++c) {
          if (out.final_memory.has_value()) out.final_memory(b, hv, r, c) = static_cast<float>(M[at(r, c)]);
          if (out.final_momentum.has_value()) out.final_momentum(b, hv, r, c) = static_cast<float>(S[at(r, c)]);
        }
    }
}

}  // namespace reference
}  // namespace seqmix
