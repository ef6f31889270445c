// State passing across slices of one sequence (context parallelism, issue 21 item 2).
//
// A recurrent operator whose state evolves linearly, S_t = A_t S_{t-1} + (input terms), lets a
// slice of a sequence run from a zero state without knowing its true initial state S0: what the
// slice leaves is its local final state s (the final state from zero) and its transition
// T = A_L ... A_1, and its true final state is T S0 + s. Two consecutive slices compose
// associatively,
//   (T2, s2) after (T1, s1) = (T2 T1, T2 s1 + s2),
// so any transport (a loop, threads, MPI_Exscan, a log-depth exchange) can form each slice's
// exclusive prefix, which applied to the sequence's initial state is the slice's initial state.
//
// This header holds the compose step for the two shapes transitions take:
//  - diagonal (GLA, RWKV-6, linear attention, Mamba-1/2): T is a log-decay broadcast over the
//    state's trailing dimensions (K of a [K,V] state, or all of an SSD head's [P,N]);
//  - matrix (the delta rules, RWKV-7): T is a [K,K] matrix per head acting on a [K,V] state.
// Each operator's slice.hpp has the functions that compute a slice's (T, s) and apply the
// correction from S0 to its outputs.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

namespace detail {

// Lets a parameter take a TensorView<float> argument without it joining the deduction of Rank.
template <class T>
struct NoDeduce {
  using type = T;
};

template <std::size_t RD, std::size_t RS>
void check_slice_pair(const ArgCheck& check, const char* decay_name, const ConstView<float, RD>& decay,
                      const char* state_name, const ConstView<float, RS>& state,
                      const std::array<index_t, RS>& shape, bool decay_optional) {
  std::array<index_t, RD> decay_shape{};
  for (std::size_t d = 0; d < RD; ++d) decay_shape[d] = shape[d];
  check.shape(state_name, state, shape, "state");
  check.that(state.is_contiguous(), state_name, "must be contiguous");
  if (decay_optional && !decay.has_value()) return;
  check.shape(decay_name, decay, decay_shape, "the state's leading dimensions");
  check.that(decay.is_contiguous(), decay_name, "must be contiguous");
}

// A slice call takes a dense batch with one state per batch row: packing and state slots are
// the serving path's, and a slice is one piece of each row's sequence.
inline void check_slice_batch(const ArgCheck& check, const SequenceBatch& batch) {
  if (batch.packed() || batch.slotted() || batch.has_initial_state.has_value())
    check.fail("batch", "must be empty: a slice call takes a dense batch with one state per batch row");
}

// The slice functions cut a sequence in its forward order; options.reverse would run each slice
// backwards, which the corrections do not model (pass reversed views to slice a reversed call).
inline void check_slice_forward(const ArgCheck& check, bool reverse) {
  if (reverse) check.fail("options.reverse", "is not supported by the slice functions (pass reversed views instead)");
}

// The checks every <op>_slice / <op>_slice_correct call shares, after the operator's own
// validation: a dense batch, forward order, no token_states; a slice runs from a zero state and
// must produce its local final state, a correction needs the true initial state and may turn a
// local final state (not overlapping it) into the true one. `layout` names the state's dims.
template <std::size_t R>
void check_slice_states(const ArgCheck& check, const SequenceBatch& batch, bool reverse, bool token_states,
                        const ConstView<float, R>& initial, const TensorView<float, R>& final_state,
                        const std::array<index_t, R>& state_shape, const char* layout, bool correcting) {
  check_slice_batch(check, batch);
  check_slice_forward(check, reverse);
  if (token_states) check.fail("token_states", "is not supported by the slice functions (leave it empty)");
  if (correcting) {
    check.shape("initial_state", initial, state_shape, layout);
    check.optional_shape("final_state", final_state, state_shape, layout);
    check.no_overlap("final_state", final_state, "initial_state", initial);
  } else {
    if (initial.has_value())
      check.fail("initial_state", "must be empty: a slice runs from a zero state (its true one is applied later)");
    check.shape("final_state", final_state, state_shape, layout);
  }
}

// What a context_parallel_<op> call refuses besides the operator's own checks.
inline void check_context_parallel_call(const ArgCheck& check, const SequenceBatch& batch, bool reverse,
                                        bool token_states) {
  check_slice_batch(check, batch);
  check_slice_forward(check, reverse);
  if (token_states) check.fail("token_states", "is not supported here (leave it empty)");
}

}  // namespace detail

/// Composes the (log-decay, state) summaries of two consecutive slices with a diagonal
/// transition: state = exp(second_log_decay) * first_state + second_state, the decay broadcast
/// over the state's trailing RS - RD dimensions, and log_decay = first + second. first_log_decay
/// and log_decay are optional together (empty: first_state is a plain state, e.g. the
/// sequence's initial state, and only the state is formed). Shapes: state [d_0..d_{RS-1}], decay
/// [d_0..d_{RD-1}]; all views contiguous. Outputs may be any of the inputs (elementwise, in
/// place). Layouts per operator: GLA / RWKV-6 / linear attention [B,HV,K] and [B,HV,K,V]; ssd
/// [B,H] and [B,H,P,N]; selective_scan [B,D,N] and [B,D,N].
template <std::size_t RD, std::size_t RS>
void compose_diagonal_slices(const typename detail::NoDeduce<ConstView<float, RD>>::type& first_log_decay,
                             const typename detail::NoDeduce<ConstView<float, RS>>::type& first_state,
                             const typename detail::NoDeduce<ConstView<float, RD>>::type& second_log_decay,
                             const typename detail::NoDeduce<ConstView<float, RS>>::type& second_state,
                             const TensorView<float, RD>& log_decay, const TensorView<float, RS>& state) {
  static_assert(RD >= 1 && RD <= RS, "the decay indexes the state's leading dimensions");
  const ArgCheck check("compose_diagonal_slices");
  const std::array<index_t, RS> shape = second_state.shape();
  detail::check_slice_pair(check, "second_log_decay", second_log_decay, "second_state", second_state, shape, false);
  detail::check_slice_pair(check, "first_log_decay", first_log_decay, "first_state", first_state, shape, true);
  detail::check_slice_pair(check, "log_decay", ConstView<float, RD>(log_decay), "state", ConstView<float, RS>(state),
                           shape, true);
  check.that(first_log_decay.has_value() == log_decay.has_value(), "log_decay",
             "must be given exactly when first_log_decay is");
  const index_t rows = second_log_decay.numel();
  const index_t inner = rows > 0 ? second_state.numel() / rows : 0;
  const float* d1 = first_log_decay.data();
  const float* s1 = first_state.data();
  const float* d2 = second_log_decay.data();
  const float* s2 = second_state.data();
  float* d = log_decay.data();
  float* s = state.data();
  for (index_t r = 0; r < rows; ++r) {
    const float decay = std::exp(d2[r]);
    for (index_t c = r * inner; c < (r + 1) * inner; ++c) s[c] = decay * s1[c] + s2[c];
    if (d != nullptr) d[r] = d1[r] + d2[r];
  }
}

/// Composes the (transition, state) summaries of two consecutive slices with a matrix transition
/// (the delta rules, RWKV-7): state = second_transition * first_state + second_state and
/// transition = second_transition * first_transition, per (batch row, head). Transitions
/// [B,H,K,K], states [B,H,K,V], any strides. first_transition and transition are optional
/// together (empty: first_state is a plain state, e.g. the sequence's initial state). Outputs may
/// be any of the inputs (each product is formed before it is stored).
inline void compose_matrix_slices(const ConstView<float, 4>& first_transition, const ConstView<float, 4>& first_state,
                                  const ConstView<float, 4>& second_transition, const ConstView<float, 4>& second_state,
                                  const TensorView<float, 4>& transition, const TensorView<float, 4>& state) {
  const ArgCheck check("compose_matrix_slices");
  check.shape("second_state", second_state, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,K,V");
  const index_t B = second_state.size(0), H = second_state.size(1), K = second_state.size(2);
  const std::array<index_t, 4> transition_shape{B, H, K, K};
  check.shape("second_transition", second_transition, transition_shape, "B,H,K,K");
  check.shape("first_state", first_state, second_state.shape(), "B,H,K,V");
  check.shape("state", state, second_state.shape(), "B,H,K,V");
  check.optional_shape("first_transition", first_transition, transition_shape, "B,H,K,K");
  check.optional_shape("transition", transition, transition_shape, "B,H,K,K");
  check.that(first_transition.has_value() == transition.has_value(), "transition",
             "must be given exactly when first_transition is");
  RowMajorMatrix<float> product;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const auto T2 = as_matrix(second_transition[b][h]);
      product.noalias() = T2 * as_matrix(first_state[b][h]);
      as_matrix(state[b][h]) = product + as_matrix(second_state[b][h]);
      if (!transition.has_value()) continue;
      product.noalias() = T2 * as_matrix(first_transition[b][h]);
      as_matrix(transition[b][h]) = product;
    }
}

/// Finishes a slice of a matrix-transition operator once its true initial state is known:
/// o[b,t,h,:] += readout[b,t,h,:] initial[b,h] (one [T,K] x [K,V] GEMM per batch row and head)
/// and, when final_state is given, final_state[b,h] += transition[b,h] initial[b,h]. readout
/// [B,T,H,K] and transition [B,H,K,K] are what the operator's slice function returned (e.g.
/// gated_delta_rule_slice), o [B,T,H,V] its zero-state outputs, final_state [B,H,K,V] (optional)
/// its local final state; initial [B,H,K,V]. o and final_state must not overlap the other
/// arguments. Threaded over (b, h).
inline void correct_matrix_slice(const ConstView<float, 4>& readout, const ConstView<float, 4>& transition,
                                 const ConstView<float, 4>& initial, const TensorView<float, 4>& o,
                                 const TensorView<float, 4>& final_state, const Executor& executor = serial_executor()) {
  const ArgCheck check("correct_matrix_slice");
  check.shape("readout", readout, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,K");
  const index_t B = readout.size(0), T = readout.size(1), H = readout.size(2), K = readout.size(3);
  check.shape("transition", transition, std::array<index_t, 4>{B, H, K, K}, "B,H,K,K");
  check.shape("initial", initial, std::array<index_t, 4>{B, H, K, -1}, "B,H,K,V");
  const index_t V = initial.size(3);
  check.shape("o", o, std::array<index_t, 4>{B, T, H, V}, "B,T,H,V");
  check.optional_shape("final_state", final_state, std::array<index_t, 4>{B, H, K, V}, "B,H,K,V");
  check.no_overlap("o", o, "readout", readout).no_overlap("o", o, "transition", transition);
  check.no_overlap("o", o, "initial", initial).no_overlap("o", o, "final_state", final_state);
  check.no_overlap("final_state", final_state, "readout", readout);
  check.no_overlap("final_state", final_state, "transition", transition);
  check.no_overlap("final_state", final_state, "initial", initial);
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    RowMajorMatrix<float> S, product;
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / H, h = task % H;
      S = as_matrix(initial[b][h]);
      if (T > 0) {
        product.noalias() = as_matrix(readout[b].select(1, h)) * S;
        as_matrix(o[b].select(1, h)) += product;
      }
      if (!final_state.has_value()) continue;
      product.noalias() = as_matrix(transition[b][h]) * S;
      as_matrix(final_state[b][h]) += product;
    }
  });
}

namespace detail {

// The threaded driver of the context_parallel_<op> functions: cuts [0, T) into `slices` nearly
// equal pieces (T*i/slices boundaries, so every piece has a token when slices <= T), runs
// run_slice(i, begin, length) for all of them at once over the executor, then
// compose(i) for i = 0..slices-2 in order on the calling thread (slice i+1's initial state from
// slice i's), then correct(i, begin, length) for all of them at once.
template <class RunSlice, class Compose, class Correct>
void run_context_parallel(index_t T, index_t slices, const Executor& executor, RunSlice&& run_slice,
                          Compose&& compose, Correct&& correct) {
  std::vector<index_t> begins(static_cast<std::size_t>(slices + 1));
  for (index_t i = 0; i <= slices; ++i) begins[static_cast<std::size_t>(i)] = T * i / slices;
  const auto piece = [&](index_t i, auto&& body) {
    const index_t begin = begins[static_cast<std::size_t>(i)];
    body(i, begin, begins[static_cast<std::size_t>(i + 1)] - begin);
  };
  executor.run(slices, [&](index_t i) { piece(i, run_slice); });
  for (index_t i = 0; i + 1 < slices; ++i) compose(i);
  executor.run(slices, [&](index_t i) { piece(i, correct); });
}

// The body of a context_parallel_<op> call once validated, for slices >= 2: per slice a local
// final state, a start state (slice 0's is the sequence's initial state, or zeros) and a
// transition of transition_shape;
//   run_slice(begin, length, local, transition)          the slice from a zero state,
//   compose(start, transition, local, next_start)        in order, on the calling thread,
//   correct(i, begin, length, start, transition, final)  for every slice that did not start from
//                                                        zeros; final is the last slice's local
//                                                        state (empty for the others),
// then the last slice's (now true) final state goes to final_state when it is given.
template <std::size_t RS, std::size_t RT, class RunSlice, class Compose, class Correct>
void context_parallel_states(index_t T, index_t slices, const Executor& executor,
                             const std::array<index_t, RS>& state_shape,
                             const std::array<index_t, RT>& transition_shape, const ConstView<float, RS>& initial_state,
                             const TensorView<float, RS>& final_state, RunSlice&& run_slice, Compose&& compose,
                             Correct&& correct) {
  std::vector<Tensor<float, RS>> local, starts;
  std::vector<Tensor<float, RT>> transition;
  for (index_t i = 0; i < slices; ++i) {
    local.emplace_back(state_shape);
    starts.emplace_back(state_shape);
    transition.emplace_back(transition_shape);
  }
  if (initial_state.has_value()) copy(initial_state, starts[0].view());
  run_context_parallel(
      T, slices, executor,
      [&](index_t i, index_t begin, index_t n) {
        const auto u = static_cast<std::size_t>(i);
        run_slice(begin, n, local[u].view(), transition[u].view());
      },
      [&](index_t i) {
        const auto u = static_cast<std::size_t>(i);
        compose(starts[u].view(), transition[u].view(), local[u].view(), starts[u + 1].view());
      },
      [&](index_t i, index_t begin, index_t n) {
        const auto u = static_cast<std::size_t>(i);
        if (i == 0 && !initial_state.has_value()) return;  // it did start from zeros
        correct(i, begin, n, starts[u].view(), transition[u].view(),
                i == slices - 1 ? local[u].view() : TensorView<float, RS>());
      });
  if (final_state.has_value()) copy(ConstView<float, RS>(local.back().view()), final_state);
}

// How many slices a context_parallel_<op> call cuts T tokens into: `requested`, or one per
// thread of the executor when 0, never more than T.
inline index_t context_slices(index_t requested, index_t T, const Executor& executor) {
  const index_t slices = requested > 0 ? requested : static_cast<index_t>(executor.concurrency());
  return std::max<index_t>(1, std::min(slices, T));
}

}  // namespace detail

}  // namespace seqmix
