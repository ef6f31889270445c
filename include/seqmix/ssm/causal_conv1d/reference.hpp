// causal_conv1d: the depthwise causal convolution in front of Mamba's scan (SPEC section 3).
//
// This header holds the readable definition (seqmix::reference::causal_conv1d), the argument
// structs shared by all three forms, and their validation. The fast prefill is in fast.hpp, the
// single-token decode step in step.hpp.
//
//   x [B,T,D], weight [D,W], optional bias [D], optional initial_state [B,S,D] (zero if absent),
//   S = (W-1) * dilation rows (options.dilation d >= 1, default 1), lookahead R in [0, W-1]
//   (default 0).
//   xs = concat(initial_state, x, R*d zero rows) along time   (S+T+R*d rows)
//   y[b,t,d] = act(bias[d] + sum_{j<W} weight[d][j] * xs[b, t + (j+R)*d, d])
//   i.e. tap j reads token t + (j-(W-1-R))*d: taps W-1-R, ..., 0 look back, the last R look
//   ahead (zeros past the end of the sequence).
//   final_state = the last S rows of concat(initial_state, x)   ([B,S,D])
//
// Serving (README.md, "Serving"): `batch` packs sequences (cu_seqlens) and maps them to rows of
// a conv state pool (state_indices, has_initial_state); `token_states` keeps the window after
// every token for a speculative verify.
#pragma once

#include <cmath>
#include <string>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/serving.hpp"

namespace seqmix {

/// The nonlinearity applied to each output of the convolution.
enum class ConvActivation {
  none,  ///< y = conv
  silu,  ///< y = conv * sigmoid(conv), as in Mamba
};

/// Options of causal_conv1d and causal_conv1d_step (docs/operators.md section 3).
struct CausalConv1dOptions {
  /// Applied to bias + convolution; none by default (Mamba uses silu).
  ConvActivation activation = ConvActivation::none;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// Spacing of the taps in tokens (TCN stacks), >= 1: tap j reads token t - (W-1-lookahead-j)
  /// * dilation. The conv state then holds the last (W-1) * dilation inputs.
  index_t dilation = 1;
  /// Taps past the current token (FSMN lookahead; non-causal), 0 <= lookahead <= W-1: the last
  /// `lookahead` taps read tokens t + dilation, ..., t + lookahead * dilation, zeros past the end
  /// of the sequence. The step computes the same window of the newest (W-1) * dilation + 1
  /// tokens, so its output for the token at position n is y[n - lookahead * dilation]
  /// (docs/operators.md, causal_conv1d).
  index_t lookahead = 0;
};

/// Prefill arguments. Optional views are empty (default-constructed) when not given.
struct CausalConv1dInputs {
  ConstView<float, 3> x;              ///< [B,T,D]
  ConstView<float, 2> weight;         ///< [D,W], W >= 1 taps; tap W-1 multiplies the newest input
  ConstView<float, 1> bias = {};      ///< [D], optional
  ConstView<float, 3> initial_state = {}; ///< [N or S, (W-1)*dilation, D], optional: the last (W-1)*dilation
                                      ///< inputs seen, oldest first; any strides (channel_major_conv_state
                                      ///< for [S,D,W-1])
  SequenceBatch batch = {};           ///< optional: packed sequences, state slots (core/batch.hpp)
};

/// y must not overlap any input (ShapeError). final_state may be the very same view as
/// initial_state (the state is then carried in place, e.g. a slot pool); it is written after
/// every output of its sequence has been computed.
struct CausalConv1dOutputs {
  TensorView<float, 3> y;            ///< [B,T,D]
  TensorView<float, 3> final_state = {}; ///< [N or S, (W-1)*dilation, D], optional
  /// [Bt,Tt,(W-1)*dilation,D], optional (speculative verify): the window after each token, i.e. the final
  /// state a prefill ending at that token would return. [Bt,Tt] are x's first two dims.
  TensorView<float, 4> token_states = {};
};

/// Decode-step arguments: one token per batch row.
struct CausalConv1dStepInputs {
  ConstView<float, 2> x;       ///< [B,D]
  ConstView<float, 2> weight;  ///< [D,W]
  ConstView<float, 1> bias = {}; ///< [D], optional
  SequenceBatch batch = {};    ///< optional: state_indices [B] into the conv_state pool, has_initial_state [B]
};

/// y may be the very same view as x; it must not overlap conv_state, weight or bias.
struct CausalConv1dStepOutputs {
  TensorView<float, 2> y;           ///< [B,D]
  TensorView<float, 3> conv_state;  ///< [B or S, (W-1)*dilation, D], read and then updated in place (required)
};

namespace detail {

struct Conv1dDims {
  index_t B, T, D, W;
};

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

inline float apply_activation(float v, ConvActivation activation) {
  return activation == ConvActivation::silu ? silu(v) : v;
}

// Checks the options against W (>= 1) and returns the rows of the conv state, (W-1) * dilation.
inline index_t check_conv_options(const ArgCheck& check, const CausalConv1dOptions& options, index_t W) {
  // Tested before the message is built: the step validates on every token and must not allocate.
  if (options.activation != ConvActivation::none && options.activation != ConvActivation::silu)
    check.fail("options.activation", "must be ConvActivation::none or ConvActivation::silu");
  if (options.dilation < 1) check.fail("options.dilation", "must be >= 1, got " + std::to_string(options.dilation));
  // Bounded so (W-1) * dilation and t + (W-1+lookahead) * dilation stay far from overflow.
  constexpr index_t kMaxSpan = index_t(1) << 40;
  if (W > 1 && options.dilation > kMaxSpan / (2 * W))
    check.fail("options.dilation", "is too large for " + std::to_string(W) + " taps: " +
                                       std::to_string(options.dilation));
  if (options.lookahead < 0 || options.lookahead > W - 1)
    check.fail("options.lookahead", "must be in [0, W-1] = [0, " + std::to_string(W - 1) + "], got " +
                                        std::to_string(options.lookahead));
  return (W - 1) * options.dilation;
}

// A validated prefill: the sizes and the map from sequences to tokens and state rows.
struct Conv1dCall {
  Conv1dDims dims;
  SequenceMap map;
};

// Validates a prefill call (shared by the reference and the fast form).
inline Conv1dCall validate_causal_conv1d(const char* op, const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                                         const CausalConv1dOptions& options) {
  const ArgCheck check(op);
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2), W = in.weight.size(1);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  check.shape("weight", in.weight, std::array<index_t, 2>{D, -1}, "D,W");
  if (W < 1) check.fail("weight", "must have at least one tap (W >= 1), got shape " + shape_to_string(in.weight.shape()));
  const index_t S = check_conv_options(check, options, W);  // rows of the conv state
  check.optional_shape("bias", in.bias, std::array<index_t, 1>{D}, "D");
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{-1, S, D}, "N,(W-1)*dilation,D");
  check.shape("y", out.y, std::array<index_t, 3>{B, T, D}, "B,T,D");
  // With W = 1 the state has no elements (and may have no data pointer): its rows still count.
  const auto given = [](const auto& v) { return v.has_value() || v.size(0) > 0; };
  const index_t rows = given(in.initial_state) ? in.initial_state.size(0) : -1;
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{rows, S, D}, "N,(W-1)*dilation,D");
  check.optional_shape("token_states", out.token_states, std::array<index_t, 4>{B, T, S, D},
                       "Bt,Tt,(W-1)*dilation,D");
  const index_t state_rows = rows >= 0 ? rows : (given(out.final_state) ? out.final_state.size(0) : -1);
  const SequenceMap map = SequenceMap::make(op, in.batch, B, T, in.initial_state.has_value(), state_rows);
  // The fast form reads x and the initial state while it writes y: no output may alias them.
  check_prefill_aliasing(check, out.y, in.initial_state, out.final_state, out.token_states, named("x", in.x),
                         named("weight", in.weight), named("bias", in.bias));
  return {{B, T, D, W}, map};
}

// A reverse call as the forward call on reversed views (core/direction.hpp).
inline std::pair<CausalConv1dInputs, CausalConv1dOutputs> reversed_call(const char* op, CausalConv1dInputs in,
                                                                        CausalConv1dOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.x, out.y, out.token_states);
  return {in, out};
}

struct Conv1dStepCall {
  Conv1dDims dims;
  StepSlots map;
};

// Allocation-free on success (the step runs once per token): `check` is built once by the caller.
inline Conv1dStepCall validate_causal_conv1d_step(const ArgCheck& check, const CausalConv1dStepInputs& in,
                                                  const CausalConv1dStepOutputs& out,
                                                  const CausalConv1dOptions& options) {
  const index_t B = in.x.size(0), D = in.x.size(1), W = in.weight.size(1);
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,D");
  check.shape("weight", in.weight, std::array<index_t, 2>{D, -1}, "D,W");
  if (W < 1) check.fail("weight", "must have at least one tap (W >= 1), got shape " + shape_to_string(in.weight.shape()));
  check.optional_shape("bias", in.bias, std::array<index_t, 1>{D}, "D");
  const index_t S = check_conv_options(check, options, W);
  check.shape("conv_state", out.conv_state, std::array<index_t, 3>{-1, S, D}, "S,(W-1)*dilation,D");
  check.shape("y", out.y, std::array<index_t, 2>{B, D}, "B,D");
  const StepSlots map = ssm_step_slots(check, in.batch, B, out.conv_state.size(0));
  // y may be x itself: each block of channels reads its inputs before it writes its outputs.
  check_no_partial_overlap(check, "y", out.y, "x", in.x);
  check_no_overlap(check, "conv_state", out.conv_state, "x", in.x);
  check_step_aliasing(check, out.y, named("conv_state", out.conv_state), named("weight", in.weight), named("bias", in.bias));
  return {{B, 1, D, W}, map};
}

}  // namespace detail

namespace reference {

/// The definition, one output at a time, sequence by sequence. Single-threaded; `executor` is
/// accepted for a uniform signature.
inline void causal_conv1d(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                          const CausalConv1dOptions& options = {},
                          const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::causal_conv1d", in, out);
    return causal_conv1d(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const auto call = detail::validate_causal_conv1d("reference::causal_conv1d", in, out, options);
  const index_t D = call.dims.D, W = call.dims.W, dil = options.dilation;
  const index_t S = (W - 1) * dil, ahead = options.lookahead * dil;  // S: rows of conv state
  for (index_t n = 0; n < call.map.sequences(); ++n) {
    const SequenceSpan seq = call.map[n];
    if (seq.state_row < 0) continue;  // padding sequence: nothing read or written
    const index_t b = seq.batch_row, t0 = seq.token_begin, T = seq.tokens;
    // xs[r] for r in [0, S + T + ahead): the state rows first, then the sequence's inputs, then
    // zeros (read by lookahead taps only).
    auto xs = [&](index_t r, index_t d) -> float {
      if (r < S) return seq.read_state ? in.initial_state(seq.state_row, r, d) : 0.f;
      if (r >= S + T) return 0.f;
      return in.x(b, t0 + r - S, d);
    };
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        float acc = in.bias.has_value() ? in.bias(d) : 0.f;
        for (index_t j = 0; j < W; ++j) acc += in.weight(d, j) * xs(t + ahead + j * dil, d);
        out.y(b, t0 + t, d) = detail::apply_activation(acc, options.activation);
      }
    if (out.token_states.has_value())
      for (index_t t = 0; t < T; ++t)
        for (index_t r = 0; r < S; ++r)
          for (index_t d = 0; d < D; ++d) out.token_states(b, t0 + t, r, d) = xs(t + 1 + r, d);
    // Ascending rows read xs row T + r >= r: safe when final_state aliases initial_state.
    if (out.final_state.has_value())
      for (index_t r = 0; r < S; ++r)
        for (index_t d = 0; d < D; ++d) out.final_state(seq.state_row, r, d) = xs(T + r, d);
  }
}

}  // namespace reference
}  // namespace seqmix
