// Serving helpers shared by the selective state-space operators (causal_conv1d, selective_scan,
// ssd): resolving a step's state slots without heap allocation, slicing one sequence out of a
// dense or packed batch, the aliasing checks, and the channel-major conv state view.
// core/batch.hpp defines the serving arguments themselves (SequenceBatch, SequenceMap).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// A zero-copy view of a conv state stored channel-major, as causal-conv1d and vLLM keep it
/// ([S, D, W-1]: the W-1 taps of a channel contiguous), in the shape every seqmix conv form
/// addresses ([S, W-1, D]). Pass it as initial_state / final_state / conv_state; reads and writes
/// land in the caller's buffer.
inline TensorView<float, 3> channel_major_conv_state(const TensorView<float, 3>& state_sdw) {
  return TensorView<float, 3>(state_sdw.data(), {state_sdw.size(0), state_sdw.size(2), state_sdw.size(1)},
                              {state_sdw.stride(0), state_sdw.stride(2), state_sdw.stride(1)});
}

namespace detail {

// Token rows of one sequence: [1, tokens, ...] out of a [B, T, ...] (dense) or [1, total_T, ...]
// (packed) token tensor. A view without data is an optional argument not given (all extents 0,
// returned as is) or an empty token tensor ([B, 0, ...] or a zero feature extent), whose rows
// are the same shape with B = 1 and no data: returning the whole [B, ...] view made every
// sequence of a dense T = 0 call look like B rows, refused only after the first sequence's fresh
// state row was cleared (fuzz corpus based/serving-empty-tokens-fresh-state).
template <class V>
V sequence_tokens(const V& v, const SequenceSpan& s) {
  if (!v.has_value()) {
    auto shape = v.shape();
    bool absent = true;
    for (index_t e : shape) absent = absent && e == 0;
    if (absent) return v;
    shape[0] = 1, shape[1] = s.tokens;
    return V(v.data(), shape, v.strides());
  }
  return v.slice(0, s.batch_row, 1).slice(1, s.token_begin, s.tokens);
}

// Row `row` of a state tensor as a batch of one; empty when the tensor is not given.
template <class V>
V state_row(const V& v, index_t row) {
  if (!v.has_value() || row < 0) return V();
  return v.slice(0, row, 1);
}

// Two views that overlap must be the very same view (a state carried in place).
template <class A, class B>
bool same_view(const A& a, const B& b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

// Refuses an output that overlaps an input it must not alias.
template <class Out, class In>
void check_no_overlap(const ArgCheck& check, const char* output, const Out& out, const char* input, const In& in) {
  if (views_overlap(out, in))
    check.fail(output, std::string("overlaps input '") + input +
                           "'; this operator does not compute in place, pass a separate buffer");
}

// The same, except that the very same view is allowed (final_state == initial_state).
template <class Out, class In>
void check_no_partial_overlap(const ArgCheck& check, const char* output, const Out& out, const char* input,
                              const In& in) {
  if (views_overlap(out, in) && !same_view(out, in))
    check.fail(output, std::string("partly overlaps '") + input + "'; it may only be the very same view");
}

// A named input view for the aliasing checks below.
template <class V>
std::pair<const char*, V> named(const char* name, const V& view) {
  return {name, view};
}

// The aliasing rules of a prefill: y, final_state and token_states overlap none of `inputs` nor
// each other, y and token_states not the initial state either; final_state may only be the very
// same view as initial_state (a state carried in place).
template <class Y, class I, class F, class TS, class... In>
void check_prefill_aliasing(const ArgCheck& check, const Y& y, const I& initial_state, const F& final_state,
                            const TS& token_states, const std::pair<const char*, In>&... inputs) {
  const auto against_inputs = [&](const char* output, const auto& out) {
    (check_no_overlap(check, output, out, inputs.first, inputs.second), ...);
  };
  against_inputs("y", y);
  check_no_overlap(check, "y", y, "initial_state", initial_state);
  against_inputs("final_state", final_state);
  check_no_overlap(check, "final_state", final_state, "y", y);
  check_no_partial_overlap(check, "final_state", final_state, "initial_state", initial_state);
  against_inputs("token_states", token_states);
  check_no_overlap(check, "token_states", token_states, "initial_state", initial_state);
  check_no_overlap(check, "token_states", token_states, "y", y);
  check_no_overlap(check, "token_states", token_states, "final_state", final_state);
}

// The aliasing rules of a step: y overlaps neither the state nor any of `inputs`, the state
// (updated in place) none of `inputs`.
template <class Y, class S, class... In>
void check_step_aliasing(const ArgCheck& check, const Y& y, const std::pair<const char*, S>& state,
                         const std::pair<const char*, In>&... inputs) {
  check_no_overlap(check, "y", y, state.first, state.second);
  (check_no_overlap(check, "y", y, inputs.first, inputs.second), ...);
  (check_no_overlap(check, state.first, state.second, inputs.first, inputs.second), ...);
}

// The slots of a decode step: token row b uses state row slots[b].state_row of the pool (-1: a
// padding row), zeroed first when !slots[b].read_state.
class StepSlots {
 public:
  StepSlots(const SequenceBatch& batch) : batch_(batch) {}  // NOLINT: built by ssm_step_slots
  SequenceSpan operator[](index_t b) const {
    SequenceSpan s;
    s.batch_row = b;
    s.tokens = 1;
    s.state_row = batch_.slotted() ? batch_.state_indices[b] : b;
    s.read_state = s.state_row >= 0 && (!batch_.has_initial_state.has_value() || batch_.has_initial_state[b]);
    return s;
  }

 private:
  SequenceBatch batch_;
};

// Validates a step's slots. cu_seqlens has no meaning for one token per row and is refused.
inline StepSlots ssm_step_slots(const ArgCheck& check, const SequenceBatch& batch, index_t B, index_t pool_rows) {
  if (batch.packed())
    check.fail("batch.cu_seqlens", "must be empty for a decode step (one token per batch row); use state_indices");
  SequenceMap::make(check, batch, B, 1, true, pool_rows);  // slots and flags; no allocation when valid
  return StepSlots(batch);
}

}  // namespace detail
}  // namespace seqmix
