// The shared interface of the nonlinear recurrent cells (lstm, gru, slstm): argument structs,
// validation and the readable per-token definition every cell's reference runs.
//
// A cell with G gates and S state vectors of H units each reads, per token,
//   ax = W_ih x_t + b_ih           [G*H]   (x_t itself when W_ih is not given: pre-activations)
//   ah = W_hh h_{t-1} + b_hh       [G*H]   (block-diagonal over `heads` when heads > 1)
// and updates its state s = (h, ...) unit by unit; the output is the new h. Rows of W_ih, W_hh
// and the biases are gate-major (row g*H + j: gate g, unit j), as PyTorch stores them, so
// PyTorch's nn.LSTM / nn.GRU weights load unchanged. With heads > 1, W_hh is [G*H, H/heads]: row
// g*H + j multiplies only the h units of j's head (FlashRNN / xLSTM's head-wise recurrence).
#pragma once

#include <array>
#include <cmath>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of the recurrent cells (lstm, gru, slstm and their steps).
struct RnnOptions {
  /// Blocks of the recurrent matrix: 1 is a dense W_hh [G*H, H]; heads > 1 makes it
  /// block-diagonal, W_hh [G*H, H/heads], head-wise as FlashRNN and xLSTM's sLSTM run it.
  index_t heads = 1;
  /// Prefill only (a step has one token): run from the last token to the first
  /// (core/direction.hpp). x and y are read and written through reversed views, not copied;
  /// initial_state is the state "after token T" and final_state the state after token 0.
  bool reverse = false;
};

/// Prefill arguments of a recurrent cell with G gates and S state vectors (lstm: G = 4, S = 2
/// (h, c); gru: G = 3, S = 1 (h); slstm: G = 4, S = 4 (h, c, n, m)).
struct RnnInputs {
  /// [B,T,I] inputs, or [B,T,G*H] gate pre-activations when w_ih is not given.
  ConstView<float, 3> x;
  ConstView<float, 2> w_ih = {};           ///< [G*H, I], optional (PyTorch's weight_ih_l0)
  ConstView<float, 2> w_hh;                ///< [G*H, H/heads] (PyTorch's weight_hh_l0 for heads = 1)
  ConstView<float, 1> b_ih = {};           ///< [G*H], optional
  ConstView<float, 1> b_hh = {};           ///< [G*H], optional
  ConstView<float, 3> initial_state = {};  ///< [B,S,H], optional (zeros): h first, then the cell's others
  /// Optional serving arguments (core/batch.hpp): packed tokens (cu_seqlens [N+1], x [1,total_T,I],
  /// y [1,total_T,H], states [N,S,H]), state slots (state_indices [N] into a pool [P,S,H], -1 =
  /// padding: nothing read or written) and has_initial_state [N] (false: start from zeros).
  SequenceBatch batch = {};
};

/// Prefill outputs. y must not overlap an input; final_state may be the very same view as
/// initial_state (it is written after the last token).
struct RnnOutputs {
  TensorView<float, 3> y;                 ///< [B,T,H]: h after every token
  TensorView<float, 3> final_state = {};  ///< [B,S,H] (or [N,S,H], or the pool [P,S,H]), optional
};

/// Decode-step arguments: one token per batch row.
struct RnnStepInputs {
  ConstView<float, 2> x;        ///< [B,I], or [B,G*H] pre-activations when w_ih is not given
  ConstView<float, 2> w_ih = {};  ///< [G*H, I], optional
  ConstView<float, 2> w_hh;     ///< [G*H, H/heads]
  ConstView<float, 1> b_ih = {};  ///< [G*H], optional
  ConstView<float, 1> b_hh = {};  ///< [G*H], optional
  /// Optional: state_indices [B] (row b reads and updates pool row state_indices[b]; -1 = padding
  /// row, its y and state untouched) and has_initial_state [B] (false: start from zeros). No
  /// cu_seqlens (one token per batch row).
  SequenceBatch batch = {};
};

/// Decode-step outputs: state is read, then updated in place; y must not overlap anything.
struct RnnStepOutputs {
  TensorView<float, 2> y;      ///< [B,H]
  TensorView<float, 3> state;  ///< [B,S,H] or the pool [P,S,H] with batch.state_indices, updated in place (required)
};

namespace detail {

// The cells' scalar functions, each for one float (the reference) and for a vector of units (the
// fast form), so that both run the very same update code. Numerically safe: no overflow to NaN
// at extreme pre-activations (exp(-v) = inf gives sigmoid 0).
using RnnBatch = simd::Batch<float>;

inline float rnn_sigmoid(float v) {
  if (v >= 0.f) return 1.f / (1.f + std::exp(-v));
  const float e = std::exp(v);
  return e / (1.f + e);
}
inline RnnBatch rnn_sigmoid(const RnnBatch& v) { return RnnBatch(1.f) / (RnnBatch(1.f) + simd::exp(-v)); }

// log sigmoid(v) = min(v, 0) - log1p(exp(-|v|)).
inline float rnn_log_sigmoid(float v) { return std::min(v, 0.f) - std::log1p(std::exp(-std::abs(v))); }
inline RnnBatch rnn_log_sigmoid(const RnnBatch& v) {
  return xsimd::min(v, RnnBatch(0.f)) - simd::log1p(simd::exp(-xsimd::abs(v)));
}

inline float rnn_tanh(float v) { return std::tanh(v); }
inline RnnBatch rnn_tanh(const RnnBatch& v) { return simd::tanh(v); }
inline float rnn_exp(float v) { return std::exp(v); }
inline RnnBatch rnn_exp(const RnnBatch& v) { return simd::exp(v); }
inline float rnn_max(float a, float b) { return std::max(a, b); }
inline RnnBatch rnn_max(const RnnBatch& a, const RnnBatch& b) { return xsimd::max(a, b); }
// `if_zero` where x == 0, else `otherwise`.
inline float rnn_if_zero(float x, float if_zero, float otherwise) { return x == 0.f ? if_zero : otherwise; }
inline RnnBatch rnn_if_zero(const RnnBatch& x, const RnnBatch& if_zero, const RnnBatch& otherwise) {
  return xsimd::select(x == RnnBatch(0.f), if_zero, otherwise);
}

struct RnnDims {
  index_t B, T, I, H, heads, Dh;
};

// Validates the weights of a call (shared by prefill and step): G gates, x's last extent `xin`.
template <class Cell>
RnnDims validate_rnn_weights(const ArgCheck& check, index_t B, index_t T, index_t xin, const ConstView<float, 2>& w_ih,
                             const ConstView<float, 2>& w_hh, const ConstView<float, 1>& b_ih,
                             const ConstView<float, 1>& b_hh, const RnnOptions& options) {
  constexpr index_t G = Cell::kGates;
  check.shape("w_hh", w_hh, std::array<index_t, 2>{-1, -1}, "G*H,H/heads");
  const index_t GH = w_hh.size(0);
  if (GH <= 0 || GH % G != 0)
    check.fail("w_hh", "must have G*H rows with G = " + std::to_string(G) + " gates, got shape " +
                           shape_to_string(w_hh.shape()));
  const index_t H = GH / G;
  if (options.heads < 1 || H % options.heads != 0)
    check.fail("options.heads", "must be >= 1 and divide H = " + std::to_string(H) + ", got " +
                                    std::to_string(options.heads));
  const index_t Dh = H / options.heads;
  check.shape("w_hh", w_hh, std::array<index_t, 2>{GH, Dh}, "G*H,H/heads");
  index_t I = xin;
  if (w_ih.has_value() || w_ih.numel() > 0) {
    check.shape("w_ih", w_ih, std::array<index_t, 2>{GH, xin}, "G*H,I");
  } else if (xin != GH) {
    check.fail("x", "must hold G*H = " + std::to_string(GH) + " gate pre-activations per token when w_ih is not given, got " +
                        std::to_string(xin));
  }
  check.optional_shape("b_ih", b_ih, std::array<index_t, 1>{GH}, "G*H");
  check.optional_shape("b_hh", b_hh, std::array<index_t, 1>{GH}, "G*H");
  return {B, T, I, H, options.heads, Dh};
}

// True when a call uses none of SequenceBatch's arguments (a plain dense batch).
inline bool rnn_plain_batch(const SequenceBatch& batch) {
  return !batch.packed() && !batch.slotted() && !batch.has_initial_state.has_value();
}

// The state tensors' row count (N, or the pool size with slots), -1 when none is given.
template <class Initial, class Final>
index_t rnn_state_rows(const ArgCheck& check, const char* initial_name, const Initial& initial, const char* final_name,
                       const Final& final_state) {
  if (initial.has_value() && final_state.has_value() && initial.size(0) != final_state.size(0))
    check.fail(final_name, std::string("must have as many rows as ") + initial_name + " (" +
                               std::to_string(initial.size(0)) + "), got " + std::to_string(final_state.size(0)));
  if (initial.has_value()) return initial.size(0);
  return final_state.has_value() ? final_state.size(0) : -1;
}

// Token rows of one sequence of a [Bt, Tt, ...] tensor as a [1, tokens, ...] view.
template <class T, std::size_t R>
TensorView<T, R> rnn_sequence_rows(const TensorView<T, R>& x, const SequenceSpan& s) {
  if (!x.has_value()) return x;
  return x.slice(0, s.batch_row, 1).slice(1, s.token_begin, s.tokens);
}

// The state row of one sequence as a [1, ...] view; empty when `use` is false or there is none.
template <class T, std::size_t R>
TensorView<T, R> rnn_state_row(const TensorView<T, R>& x, const SequenceSpan& s, bool use) {
  if (!x.has_value() || !use || s.state_row < 0) return TensorView<T, R>();
  return x.slice(0, s.state_row, 1);
}

// Validates a prefill; `map` (when not null) receives the call's sequences (a serving call only:
// with a plain dense batch the states have B rows and no map is built).
template <class Cell>
RnnDims validate_rnn(const ArgCheck& check, const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options,
                     SequenceMap* map = nullptr) {
  constexpr index_t S = Cell::kStates;
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,T,I");
  const index_t B = in.x.size(0), T = in.x.size(1);
  const RnnDims d = validate_rnn_weights<Cell>(check, B, T, in.x.size(2), in.w_ih, in.w_hh, in.b_ih, in.b_hh, options);
  const bool plain = rnn_plain_batch(in.batch);
  const index_t rows = plain ? B : -1;
  const char* dims = plain ? "B,S,H" : "N,S,H";
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{rows, S, d.H}, dims);
  check.shape("y", out.y, std::array<index_t, 3>{B, T, d.H}, "B,T,H");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{rows, S, d.H}, dims);
  if (!plain) {
    const index_t state_rows = rnn_state_rows(check, "initial_state", in.initial_state, "final_state", out.final_state);
    const SequenceMap m = SequenceMap::make(check, in.batch, B, T, in.initial_state.has_value(), state_rows);
    if (map != nullptr) *map = m;
  }
  check.no_overlap("y", out.y, "x", in.x).no_overlap("y", out.y, "w_ih", in.w_ih).no_overlap("y", out.y, "w_hh", in.w_hh);
  check.no_overlap("y", out.y, "b_ih", in.b_ih).no_overlap("y", out.y, "b_hh", in.b_hh);
  check.no_overlap("y", out.y, "initial_state", in.initial_state).no_overlap("y", out.y, "final_state", out.final_state);
  // final_state is written last, so it may be initial_state itself, but not overlap it otherwise.
  if (out.final_state.data() != in.initial_state.data() || out.final_state.strides() != in.initial_state.strides())
    check.no_overlap("final_state", out.final_state, "initial_state", in.initial_state);
  check.no_overlap("final_state", out.final_state, "x", in.x).no_overlap("final_state", out.final_state, "w_hh", in.w_hh);
  check.no_overlap("final_state", out.final_state, "w_ih", in.w_ih);
  return d;
}

template <class Cell>
RnnDims validate_rnn_step(const ArgCheck& check, const RnnStepInputs& in, const RnnStepOutputs& out,
                          const RnnOptions& options) {
  constexpr index_t S = Cell::kStates;
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,I");
  const index_t B = in.x.size(0);
  const RnnDims d = validate_rnn_weights<Cell>(check, B, 1, in.x.size(1), in.w_ih, in.w_hh, in.b_ih, in.b_hh, options);
  const bool plain = rnn_plain_batch(in.batch);
  check.shape("state", out.state, std::array<index_t, 3>{plain ? B : -1, S, d.H}, plain ? "B,S,H" : "P,S,H");
  check.shape("y", out.y, std::array<index_t, 2>{B, d.H}, "B,H");
  if (!plain) {
    if (in.batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
    SequenceMap::make(check, in.batch, B, 1, true, out.state.size(0));  // slots and flags
  }
  check.no_overlap("y", out.y, "x", in.x).no_overlap("y", out.y, "state", out.state);
  check.no_overlap("y", out.y, "w_ih", in.w_ih).no_overlap("y", out.y, "w_hh", in.w_hh);
  check.no_overlap("state", out.state, "x", in.x).no_overlap("state", out.state, "w_ih", in.w_ih);
  check.no_overlap("state", out.state, "w_hh", in.w_hh);
  check.no_overlap("y", out.y, "b_ih", in.b_ih).no_overlap("y", out.y, "b_hh", in.b_hh);
  check.no_overlap("state", out.state, "b_ih", in.b_ih).no_overlap("state", out.state, "b_hh", in.b_hh);
  return d;
}

// The definition, one batch row at a time, token by token, with double accumulators. `Cell`
// provides kGates, kStates and update(ax, ah, s): s = (h, ...) updated in place from the gate
// pre-activations ax (input side) and ah (recurrent side) of one unit (V = float here; the fast
// form runs the same code on vectors of units).
// A reverse call (options.reverse) as the forward call on reversed views of x and y.
inline std::pair<RnnInputs, RnnOutputs> reversed_call(RnnInputs in, RnnOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

// Runs one(in, out) on every running sequence of a validated serving call as a plain dense call
// of its own: B = 1, its tokens, its state row (none when it starts from zeros). Padding
// sequences (state row -1) are skipped: their outputs stay untouched.
template <class F>
void rnn_for_each_sequence(const SequenceMap& map, const RnnInputs& in, const RnnOutputs& out, F&& one) {
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.state_row < 0) continue;
    RnnInputs in1 = in;
    in1.x = rnn_sequence_rows(in.x, s);
    in1.initial_state = rnn_state_row(in.initial_state, s, s.read_state);
    in1.batch = SequenceBatch();
    RnnOutputs out1 = out;
    out1.y = rnn_sequence_rows(out.y, s);
    out1.final_state = rnn_state_row(out.final_state, s, true);
    one(in1, out1);
  }
}

template <class Cell>
void rnn_reference(const char* op, const RnnInputs& in_given, const RnnOutputs& out_given, const RnnOptions& options) {
  constexpr index_t G = Cell::kGates, S = Cell::kStates;
  const ArgCheck check(op);
  SequenceMap map;
  const RnnDims d = validate_rnn<Cell>(check, in_given, out_given, options, &map);
  if (!rnn_plain_batch(in_given.batch))
    return rnn_for_each_sequence(map, in_given, out_given, [&](const RnnInputs& in1, const RnnOutputs& out1) {
      rnn_reference<Cell>(op, in1, out1, options);
    });
  const auto [in, out] = options.reverse ? reversed_call(in_given, out_given) : std::make_pair(in_given, out_given);
  const index_t H = d.H, Dh = d.Dh;
  std::vector<float> state(static_cast<std::size_t>(S * H)), h_prev(static_cast<std::size_t>(H));
  for (index_t b = 0; b < d.B; ++b) {
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < H; ++j) state[k * H + j] = in.initial_state.has_value() ? in.initial_state(b, k, j) : 0.f;
    for (index_t t = 0; t < d.T; ++t) {
      for (index_t j = 0; j < H; ++j) h_prev[j] = state[j];
      for (index_t j = 0; j < H; ++j) {
        float ax[G], ah[G], s[S];
        const index_t head0 = (j / Dh) * Dh;  // first h unit of j's head
        for (index_t g = 0; g < G; ++g) {
          const index_t row = g * H + j;
          double a = in.b_ih.has_value() ? in.b_ih(row) : 0.0;
          if (in.w_ih.has_value()) {
            for (index_t i = 0; i < d.I; ++i) a += double(in.w_ih(row, i)) * in.x(b, t, i);
          } else {
            a += in.x(b, t, row);
          }
          double r = in.b_hh.has_value() ? in.b_hh(row) : 0.0;
          for (index_t k = 0; k < Dh; ++k) r += double(in.w_hh(row, k)) * h_prev[head0 + k];
          ax[g] = static_cast<float>(a), ah[g] = static_cast<float>(r);
        }
        for (index_t k = 0; k < S; ++k) s[k] = state[k * H + j];
        Cell::update(ax, ah, s);
        for (index_t k = 0; k < S; ++k) state[k * H + j] = s[k];
        out.y(b, t, j) = s[0];
      }
    }
    if (out.final_state.has_value())
      for (index_t k = 0; k < S; ++k)
        for (index_t j = 0; j < H; ++j) out.final_state(b, k, j) = state[k * H + j];
  }
}

}  // namespace detail
}  // namespace seqmix
