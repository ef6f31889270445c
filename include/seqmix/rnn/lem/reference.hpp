// lem: Long Expressive Memory (Rusch, Mishra, Erichson, Mahoney, ICLR 2022), two coupled states
// y (the output) and z, each moved towards a tanh target by its own learned multiscale step:
//
//   [a_dtb, a_dt, a_y, a_z] = W_ih u_t + b_ih                       (4H, input side)
//   [r_dtb, r_dt, r_z]      = W_hh y_{t-1} + b_hh                   (3H, recurrent side)
//   dtb = dt * sigmoid(a_dtb + r_dtb)        dtz = dt * sigmoid(a_dt + r_dt)
//   z_t = (1 - dtz) * z_{t-1} + dtz * tanh(a_z + r_z)
//   y_t = (1 - dtb) * y_{t-1} + dtb * tanh(a_y + W_z z_t + b_z)      output y_t
//
// The row order is that of the paper's reference code (inp2hid [4H, I] chunks dt1, dt2, i_z,
// i_y; hid2hid [3H, H] chunks dt1, dt2, h_y; transform_z [H, H]), so its weights load unchanged:
// w_ih = inp2hid.weight, w_hh = hid2hid.weight, w_z = transform_z.weight, biases likewise. Its
// chunk named i_z feeds y and i_y feeds z; the names above are by role. Since y_t needs all of
// z_t, a token is two dependent matrix-vector products, not one as in lstm/gru: the cell does not
// fit the shared engine's single product (../engine.hpp) and has its own fast form (fast.hpp).
//
// State [B,2,H] = (y, z). Options: dt (the paper's global step, in (0, 1]) and reverse. Fast
// prefill: fast.hpp; decode step: step.hpp; derivation: ../README.md.
#pragma once

#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/rnn/common.hpp"

namespace seqmix {

/// Options of lem and lem_step.
struct LemOptions {
  /// The global step size dt of the paper: both multiscale steps are dt * sigmoid(.), so they
  /// lie in (0, dt). Must be finite and in (0, 1] (then every update is a convex combination and
  /// the state stays in [-1, 1] once it starts there).
  float dt = 1.f;
  /// Prefill only: run from the last token to the first (core/direction.hpp); initial_state is
  /// the state "after token T" and final_state the state after token 0.
  bool reverse = false;
};

/// Prefill arguments of lem (shapes with G = 4 input gates, 3 recurrent gates, S = 2 states).
struct LemInputs {
  /// [B,T,I] inputs, or [B,T,4H] input pre-activations when w_ih is not given.
  ConstView<float, 3> x;
  ConstView<float, 2> w_ih = {};           ///< [4H, I], optional (the reference code's inp2hid.weight)
  ConstView<float, 2> w_hh;                ///< [3H, H] (hid2hid.weight)
  ConstView<float, 2> w_z;                 ///< [H, H] (transform_z.weight)
  ConstView<float, 1> b_ih = {};           ///< [4H], optional
  ConstView<float, 1> b_hh = {};           ///< [3H], optional
  ConstView<float, 1> b_z = {};            ///< [H], optional
  ConstView<float, 3> initial_state = {};  ///< [B,2,H] = (y, z), optional (zeros)
  /// Optional serving arguments (core/batch.hpp), as for the other cells (RnnInputs::batch):
  /// packed tokens with cu_seqlens, state slots and has_initial_state.
  SequenceBatch batch = {};
};

/// Decode-step arguments: one token per batch row (outputs: RnnStepOutputs, state [B,2,H]).
struct LemStepInputs {
  ConstView<float, 2> x;          ///< [B,I], or [B,4H] pre-activations when w_ih is not given
  ConstView<float, 2> w_ih = {};  ///< [4H, I], optional
  ConstView<float, 2> w_hh;       ///< [3H, H]
  ConstView<float, 2> w_z;        ///< [H, H]
  ConstView<float, 1> b_ih = {};  ///< [4H], optional
  ConstView<float, 1> b_hh = {};  ///< [3H], optional
  ConstView<float, 1> b_z = {};   ///< [H], optional
  /// Optional: state_indices [B] into a pool [P,2,H] (-1 = padding row, untouched) and
  /// has_initial_state [B]; no cu_seqlens.
  SequenceBatch batch = {};
};

namespace detail {

constexpr index_t kLemInputGates = 4, kLemRecurrentGates = 3, kLemStates = 2;

// The elementwise parts of a LEM token, for one float (the reference) and a vector of units (the
// fast form), so that both run the same code.
// A multiscale step dt * sigmoid(pre), in [0, dt].
template <class V>
V lem_rate(const V& pre, float dt) {
  return V(dt) * rnn_sigmoid(pre);
}
// The state moved towards tanh(target) by `rate`: (1 - rate) * old + rate * tanh(target).
template <class V>
V lem_blend(const V& old, const V& rate, const V& target) {
  return (V(1.f) - rate) * old + rate * rnn_tanh(target);
}

// The weights of a call (shared by prefill and step); returns H. x's last extent is `xin`.
inline index_t validate_lem_weights(const ArgCheck& check, index_t xin, const ConstView<float, 2>& w_ih,
                                    const ConstView<float, 2>& w_hh, const ConstView<float, 2>& w_z,
                                    const ConstView<float, 1>& b_ih, const ConstView<float, 1>& b_hh,
                                    const ConstView<float, 1>& b_z, const LemOptions& options) {
  check.shape("w_hh", w_hh, std::array<index_t, 2>{-1, -1}, "3H,H");
  const index_t H = w_hh.size(1);
  check.shape("w_hh", w_hh, std::array<index_t, 2>{kLemRecurrentGates * H, H}, "3H,H");
  check.shape("w_z", w_z, std::array<index_t, 2>{H, H}, "H,H");
  const index_t GH = kLemInputGates * H;
  if (w_ih.has_value() || w_ih.numel() > 0) {
    check.shape("w_ih", w_ih, std::array<index_t, 2>{GH, xin}, "4H,I");
  } else if (xin != GH) {
    check.fail("x", "must hold 4H = " + std::to_string(GH) +
                        " input pre-activations per token when w_ih is not given, got " + std::to_string(xin));
  }
  check.optional_shape("b_ih", b_ih, std::array<index_t, 1>{GH}, "4H");
  check.optional_shape("b_hh", b_hh, std::array<index_t, 1>{kLemRecurrentGates * H}, "3H");
  check.optional_shape("b_z", b_z, std::array<index_t, 1>{H}, "H");
  if (!(std::isfinite(options.dt) && options.dt > 0.f && options.dt <= 1.f))
    check.fail("options.dt", "must be finite and in (0, 1], got " + std::to_string(options.dt));
  return H;
}

// Validates a prefill; returns the dims (I, heads, Dh filled for the shared helpers: heads = 1,
// Dh = H). `map` (not null) receives the sequences of a serving call.
inline RnnDims validate_lem(const ArgCheck& check, const LemInputs& in, const RnnOutputs& out,
                            const LemOptions& options, SequenceMap* map = nullptr) {
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,T,I");
  const index_t B = in.x.size(0), T = in.x.size(1);
  const index_t H =
      validate_lem_weights(check, in.x.size(2), in.w_ih, in.w_hh, in.w_z, in.b_ih, in.b_hh, in.b_z, options);
  const bool plain = rnn_plain_batch(in.batch);
  const index_t rows = plain ? B : -1;
  const char* dims = plain ? "B,2,H" : "N,2,H";
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{rows, kLemStates, H}, dims);
  check.shape("y", out.y, std::array<index_t, 3>{B, T, H}, "B,T,H");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{rows, kLemStates, H}, dims);
  if (!plain) {
    const index_t state_rows = rnn_state_rows(check, "initial_state", in.initial_state, "final_state", out.final_state);
    const SequenceMap m = SequenceMap::make(check, in.batch, B, T, in.initial_state.has_value(), state_rows);
    if (map != nullptr) *map = m;
  }
  check.no_overlap("y", out.y, "x", in.x).no_overlap("y", out.y, "w_ih", in.w_ih).no_overlap("y", out.y, "w_hh", in.w_hh);
  check.no_overlap("y", out.y, "w_z", in.w_z).no_overlap("y", out.y, "b_z", in.b_z);
  check.no_overlap("y", out.y, "b_ih", in.b_ih).no_overlap("y", out.y, "b_hh", in.b_hh);
  check.no_overlap("y", out.y, "initial_state", in.initial_state).no_overlap("y", out.y, "final_state", out.final_state);
  // final_state is written last, so it may be initial_state itself, but not overlap it otherwise.
  if (out.final_state.data() != in.initial_state.data() || out.final_state.strides() != in.initial_state.strides())
    check.no_overlap("final_state", out.final_state, "initial_state", in.initial_state);
  check.no_overlap("final_state", out.final_state, "x", in.x).no_overlap("final_state", out.final_state, "w_hh", in.w_hh);
  check.no_overlap("final_state", out.final_state, "w_ih", in.w_ih).no_overlap("final_state", out.final_state, "w_z", in.w_z);
  return {B, T, in.x.size(2), H, 1, H};
}

inline RnnDims validate_lem_step(const ArgCheck& check, const LemStepInputs& in, const RnnStepOutputs& out,
                                 const LemOptions& options) {
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,I");
  const index_t B = in.x.size(0);
  const index_t H =
      validate_lem_weights(check, in.x.size(1), in.w_ih, in.w_hh, in.w_z, in.b_ih, in.b_hh, in.b_z, options);
  const bool plain = rnn_plain_batch(in.batch);
  check.shape("state", out.state, std::array<index_t, 3>{plain ? B : -1, kLemStates, H}, plain ? "B,2,H" : "P,2,H");
  check.shape("y", out.y, std::array<index_t, 2>{B, H}, "B,H");
  if (!plain) {
    if (in.batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
    SequenceMap::make(check, in.batch, B, 1, true, out.state.size(0));  // slots and flags
  }
  check.no_overlap("y", out.y, "x", in.x).no_overlap("y", out.y, "state", out.state);
  check.no_overlap("y", out.y, "w_ih", in.w_ih).no_overlap("y", out.y, "w_hh", in.w_hh).no_overlap("y", out.y, "w_z", in.w_z);
  check.no_overlap("state", out.state, "x", in.x).no_overlap("state", out.state, "w_ih", in.w_ih);
  check.no_overlap("state", out.state, "w_hh", in.w_hh).no_overlap("state", out.state, "w_z", in.w_z);
  check.no_overlap("y", out.y, "b_ih", in.b_ih).no_overlap("y", out.y, "b_hh", in.b_hh).no_overlap("y", out.y, "b_z", in.b_z);
  check.no_overlap("state", out.state, "b_ih", in.b_ih).no_overlap("state", out.state, "b_hh", in.b_hh);
  check.no_overlap("state", out.state, "b_z", in.b_z);
  return {B, 1, in.x.size(1), H, 1, H};
}

// Runs one(in, out) on every running sequence of a validated serving call as a plain dense call
// of its own (B = 1, its tokens, its state row; none when it starts from zeros). Padding
// sequences (state row -1) are skipped: their outputs stay untouched.
template <class F>
void lem_for_each_sequence(const SequenceMap& map, const LemInputs& in, const RnnOutputs& out, F&& one) {
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.state_row < 0) continue;
    LemInputs in1 = in;
    in1.x = rnn_sequence_rows(in.x, s);
    in1.initial_state = rnn_state_row(in.initial_state, s, s.read_state);
    in1.batch = SequenceBatch();
    RnnOutputs out1 = out;
    out1.y = rnn_sequence_rows(out.y, s);
    out1.final_state = rnn_state_row(out.final_state, s, true);
    one(in1, out1);
  }
}

// The definition, one batch row and one token at a time, matrix-vector products in double.
inline void lem_reference(const char* op, const LemInputs& in_given, const RnnOutputs& out_given,
                          const LemOptions& options) {
  const ArgCheck check(op);
  SequenceMap map;
  const RnnDims d = validate_lem(check, in_given, out_given, options, &map);
  if (!rnn_plain_batch(in_given.batch))
    return lem_for_each_sequence(map, in_given, out_given, [&](const LemInputs& in1, const RnnOutputs& out1) {
      lem_reference(op, in1, out1, options);
    });
  LemInputs in = in_given;
  RnnOutputs out = out_given;
  if (options.reverse) reverse_time_of(in.x, out.y);
  const index_t H = d.H;
  const float dt = options.dt;
  std::vector<float> y(static_cast<std::size_t>(H)), z(y), dtb(y), a_y(y);
  auto at = [](std::vector<float>& v, index_t j) -> float& { return v[static_cast<std::size_t>(j)]; };
  for (index_t b = 0; b < d.B; ++b) {
    for (index_t j = 0; j < H; ++j) {
      at(y, j) = in.initial_state.has_value() ? in.initial_state(b, 0, j) : 0.f;
      at(z, j) = in.initial_state.has_value() ? in.initial_state(b, 1, j) : 0.f;
    }
    for (index_t t = 0; t < d.T; ++t) {
      // Input pre-activation of row `row` of the 4H.
      auto input = [&](index_t row) {
        double a = in.b_ih.has_value() ? in.b_ih(row) : 0.0;
        if (in.w_ih.has_value()) {
          for (index_t i = 0; i < d.I; ++i) a += double(in.w_ih(row, i)) * in.x(b, t, i);
        } else {
          a += in.x(b, t, row);
        }
        return static_cast<float>(a);
      };
      // Recurrent pre-activation of row `row` of the 3H, from y_{t-1}.
      auto recurrent = [&](index_t row) {
        double r = in.b_hh.has_value() ? in.b_hh(row) : 0.0;
        for (index_t k = 0; k < H; ++k) r += double(in.w_hh(row, k)) * at(y, k);
        return static_cast<float>(r);
      };
      // z first (it reads y_{t-1} only) ...
      for (index_t j = 0; j < H; ++j) {
        at(dtb, j) = lem_rate(input(j) + recurrent(j), dt);
        const float dtz = lem_rate(input(H + j) + recurrent(H + j), dt);
        at(a_y, j) = input(2 * H + j);
        at(z, j) = lem_blend(at(z, j), dtz, input(3 * H + j) + recurrent(2 * H + j));
      }
      // ... then y, from z_t.
      for (index_t j = 0; j < H; ++j) {
        double c = in.b_z.has_value() ? in.b_z(j) : 0.0;
        for (index_t k = 0; k < H; ++k) c += double(in.w_z(j, k)) * at(z, k);
        at(y, j) = lem_blend(at(y, j), at(dtb, j), at(a_y, j) + static_cast<float>(c));
        out.y(b, t, j) = at(y, j);
      }
    }
    if (out.final_state.has_value())
      for (index_t j = 0; j < H; ++j) out.final_state(b, 0, j) = at(y, j), out.final_state(b, 1, j) = at(z, j);
  }
}

}  // namespace detail

namespace reference {

/// The LEM definition (see the top of this file), token by token with double accumulators.
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void lem(const LemInputs& in, const RnnOutputs& out, const LemOptions& options = {},
                const Executor& executor = serial_executor()) {
  (void)executor;
  detail::lem_reference("reference::lem", in, out, options);
}

}  // namespace reference
}  // namespace seqmix
