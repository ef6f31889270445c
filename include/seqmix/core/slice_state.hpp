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

#include <array>
#include <cmath>
#include <string>

#include "seqmix/core/batch.hpp"
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

}  // namespace seqmix
