// causal_conv1d: the depthwise causal convolution in front of Mamba's scan (SPEC section 3).
//
// This header holds the readable definition (seqmix::reference::causal_conv1d), the argument
// structs shared by all three forms, and their validation. The fast prefill is in fast.hpp, the
// single-token decode step in step.hpp.
//
//   x [B,T,D], weight [D,W], optional bias [D], optional initial_state [B,W-1,D] (zero if absent).
//   xs = concat(initial_state, x) along time            (W-1+T rows)
//   y[b,t,d] = act(bias[d] + sum_{j<W} weight[d][j] * xs[b,t+j,d])
//   final_state = the last W-1 rows of xs               ([B,W-1,D])
#pragma once

#include <cmath>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

// The nonlinearity applied to each output of the convolution.
enum class ConvActivation {
  none,  // y = conv
  silu,  // y = conv * sigmoid(conv), as in Mamba
};

struct CausalConv1dOptions {
  ConvActivation activation = ConvActivation::none;
};

// Prefill arguments. Optional views are empty (default-constructed) when not given.
struct CausalConv1dInputs {
  ConstView<float, 3> x;              // [B,T,D]
  ConstView<float, 2> weight;         // [D,W], W >= 1 taps; tap W-1 multiplies the newest input
  ConstView<float, 1> bias;           // [D], optional
  ConstView<float, 3> initial_state;  // [B,W-1,D], optional: the last W-1 inputs seen, oldest first
};

// y must not overlap any input. final_state may be the very same view as initial_state (the
// state is then carried in place); it is written after every output has been computed.
struct CausalConv1dOutputs {
  TensorView<float, 3> y;            // [B,T,D]
  TensorView<float, 3> final_state;  // [B,W-1,D], optional
};

// Decode-step arguments: one token per batch row.
struct CausalConv1dStepInputs {
  ConstView<float, 2> x;       // [B,D]
  ConstView<float, 2> weight;  // [D,W]
  ConstView<float, 1> bias;    // [D], optional
};

struct CausalConv1dStepOutputs {
  TensorView<float, 2> y;           // [B,D]
  TensorView<float, 3> conv_state;  // [B,W-1,D], read and then updated in place (required)
};

namespace detail {

struct Conv1dDims {
  index_t B, T, D, W;
};

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

inline float apply_activation(float v, ConvActivation activation) {
  return activation == ConvActivation::silu ? silu(v) : v;
}

inline void check_conv_options(const ArgCheck& check, const CausalConv1dOptions& options) {
  check.that(options.activation == ConvActivation::none || options.activation == ConvActivation::silu,
             "options.activation", "must be ConvActivation::none or ConvActivation::silu");
}

// Validates a prefill call (shared by the reference and the fast form).
inline Conv1dDims validate_causal_conv1d(const char* op, const CausalConv1dInputs& in,
                                         const CausalConv1dOutputs& out,
                                         const CausalConv1dOptions& options) {
  const ArgCheck check(op);
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2), W = in.weight.size(1);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  check.shape("weight", in.weight, std::array<index_t, 2>{D, -1}, "D,W");
  check.that(W >= 1, "weight", "must have at least one tap (W >= 1), got shape " + shape_to_string(in.weight.shape()));
  check.optional_shape("bias", in.bias, std::array<index_t, 1>{D}, "D");
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{B, W - 1, D}, "B,W-1,D");
  check.shape("y", out.y, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{B, W - 1, D}, "B,W-1,D");
  check_conv_options(check, options);
  return {B, T, D, W};
}

inline Conv1dDims validate_causal_conv1d_step(const char* op, const CausalConv1dStepInputs& in,
                                              const CausalConv1dStepOutputs& out,
                                              const CausalConv1dOptions& options) {
  const ArgCheck check(op);
  const index_t B = in.x.size(0), D = in.x.size(1), W = in.weight.size(1);
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,D");
  check.shape("weight", in.weight, std::array<index_t, 2>{D, -1}, "D,W");
  check.that(W >= 1, "weight", "must have at least one tap (W >= 1), got shape " + shape_to_string(in.weight.shape()));
  check.optional_shape("bias", in.bias, std::array<index_t, 1>{D}, "D");
  check.shape("conv_state", out.conv_state, std::array<index_t, 3>{B, W - 1, D}, "B,W-1,D");
  check.shape("y", out.y, std::array<index_t, 2>{B, D}, "B,D");
  check_conv_options(check, options);
  return {B, 1, D, W};
}

}  // namespace detail

namespace reference {

// The definition, one output at a time. Single-threaded; `executor` is accepted for a uniform
// signature.
inline void causal_conv1d(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                          const CausalConv1dOptions& options = {},
                          const Executor& executor = serial_executor()) {
  (void)executor;
  const auto [B, T, D, W] = detail::validate_causal_conv1d("reference::causal_conv1d", in, out, options);
  const index_t S = W - 1;  // rows of conv state
  // xs[b, r, d] for r in [0, S + T): state rows first, then the inputs.
  auto xs = [&](index_t b, index_t r, index_t d) -> float {
    if (r < S) return in.initial_state.has_value() ? in.initial_state(b, r, d) : 0.f;
    return in.x(b, r - S, d);
  };
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        float acc = in.bias.has_value() ? in.bias(d) : 0.f;
        for (index_t j = 0; j < W; ++j) acc += in.weight(d, j) * xs(b, t + j, d);
        out.y(b, t, d) = detail::apply_activation(acc, options.activation);
      }
  // Ascending rows read xs row T + r >= r: safe when final_state aliases initial_state.
  if (out.final_state.has_value())
    for (index_t b = 0; b < B; ++b)
      for (index_t r = 0; r < S; ++r)
        for (index_t d = 0; d < D; ++d) out.final_state(b, r, d) = xs(b, T + r, d);
}

}  // namespace reference
}  // namespace seqmix
