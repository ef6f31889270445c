// State passing across slices of one sequence for causal_conv1d. Its state is the last W-1
// inputs (the halo), so a slice's "transition" is a shift by its token count L: after the slice
// the window holds the previous window's last W-1-L rows (none when L >= W-1) followed by the
// slice's last min(L, W-1) inputs. Only the slice's first min(L, W-1) outputs read the halo, so
// the correction recomputes those outputs from the true halo (O(W^2 D), whatever L is) and
// shifts the halo's rows into the final state; the rest of the slice is untouched. With
// options.dilation d, read W-1 as S = (W-1) * d throughout (the halo is the last S inputs and
// the first min(L, S) outputs read it); options.lookahead must be 0 (ShapeError).
#pragma once

#include <algorithm>
#include <array>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"

namespace seqmix {

namespace detail {

inline Conv1dDims validate_causal_conv1d_slice(const char* op, const CausalConv1dInputs& in,
                                               const CausalConv1dOutputs& out, const CausalConv1dOptions& options,
                                               bool correcting) {
  const ArgCheck check(op);
  const Conv1dDims d = validate_causal_conv1d(op, in, out, options).dims;
  // A lookahead output reads tokens of the next slice, which no halo of the past can correct.
  if (options.lookahead != 0)
    check.fail("options.lookahead", "must be 0 on slices (an output would read the next slice's tokens)");
  check_slice_states(check, in.batch, options.reverse, out.token_states.has_value(), in.initial_state, out.final_state,
                     std::array<index_t, 3>{d.B, (d.W - 1) * options.dilation, d.D}, "B,(W-1)*dilation,D",
                     correcting);
  return d;
}

}  // namespace detail

/// Runs causal_conv1d on one slice of longer sequences from a zero halo: out.y gets the outputs
/// as if zeros came before the slice, out.final_state [B,W-1,D] (required) the window after it.
/// A dense batch only, no in.initial_state, no token_states. Compose windows with
/// compose_causal_conv1d_slices; finish a slice with causal_conv1d_slice_correct.
inline void causal_conv1d_slice(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                                const CausalConv1dOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::validate_causal_conv1d_slice("causal_conv1d_slice", in, out, options, false);
  causal_conv1d(in, out, options, executor);
}

/// The window after two consecutive slices: `first_state` [B,W-1,D] is the window before the
/// second slice (the previous slices' composed window, or the sequence's initial state), and
/// `second_state` the window causal_conv1d_slice returned for the second slice of
/// `second_tokens` tokens. state = the last W-1 rows of first_state followed by the second
/// slice's inputs. state may be first_state or second_state (in place).
inline void compose_causal_conv1d_slices(const ConstView<float, 3>& first_state, index_t second_tokens,
                                         const ConstView<float, 3>& second_state, const TensorView<float, 3>& state) {
  const ArgCheck check("compose_causal_conv1d_slices");
  check.shape("second_state", second_state, std::array<index_t, 3>{-1, -1, -1}, "B,W-1,D");
  const std::array<index_t, 3> shape = second_state.shape();
  check.shape("first_state", first_state, shape, "B,W-1,D");
  check.shape("state", state, shape, "B,W-1,D");
  check.that(second_tokens >= 0, "second_tokens", "must be >= 0, got " + std::to_string(second_tokens));
  const index_t B = shape[0], H = shape[1], D = shape[2];
  const index_t kept = std::max<index_t>(H - second_tokens, 0);  // rows of the older window still in it
  // Increasing r: row r reads row r + L of first_state (never an earlier, already written row)
  // and row r of second_state, so either may be `state`.
  for (index_t b = 0; b < B; ++b)
    for (index_t r = 0; r < H; ++r)
      for (index_t c = 0; c < D; ++c)
        state(b, r, c) = r < kept ? first_state(b, r + second_tokens, c) : second_state(b, r, c);
}

/// Finishes a slice run by causal_conv1d_slice: in.initial_state [B,W-1,D] (required) is the true
/// window before the slice (the last W-1 inputs of the sequence before it, oldest first); the
/// first min(T, W-1) outputs of out.y are recomputed from it and out.final_state, when given,
/// goes from the slice's window to the true one (it must not overlap initial_state). Equals one
/// causal_conv1d call over the whole sequence.
inline void causal_conv1d_slice_correct(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                                        const CausalConv1dOptions& options = {},
                                        const Executor& executor = serial_executor()) {
  const detail::Conv1dDims d =
      detail::validate_causal_conv1d_slice("causal_conv1d_slice_correct", in, out, options, true);
  const index_t head = std::min(d.T, (d.W - 1) * options.dilation);  // the outputs that read the halo
  if (head > 0) {
    CausalConv1dInputs first = in;
    first.x = in.x.slice(1, 0, head);
    causal_conv1d(first, {out.y.slice(1, 0, head)}, options, executor);
  }
  if (out.final_state.has_value()) compose_causal_conv1d_slices(in.initial_state, d.T, out.final_state, out.final_state);
}

}  // namespace seqmix
