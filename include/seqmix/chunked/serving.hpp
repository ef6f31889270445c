// Serving arguments (core/batch.hpp) for the hybrid mixers whose fast form runs one dense batch:
// a validated SequenceMap drives one call per sequence on [1, tokens, ...] views of the packed
// (or dense) token tensors and [1, ...] views of the state rows, so a packed call equals the
// per-sequence calls bit for bit, and a short sequence costs what its tokens cost (no padding,
// no per-token fallback at sequence boundaries). The slicing and step-slot helpers are the
// selective state-space family's (ssm/serving.hpp). Internal.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/serving.hpp"

namespace seqmix::detail::serving {

using detail::sequence_tokens;
using detail::ssm_step_slots;
using detail::StepSlots;

// State row of sequence `s` of a [S, ...] state tensor as a [1, ...] view (empty when not given).
template <class View>
View state_row(const View& x, const SequenceSpan& s) {
  return detail::state_row(x, s.state_row);
}

// The initial state a sequence reads: its row, or nothing (zeros) when has_initial_state is false.
template <class View>
View initial_row(const View& x, const SequenceSpan& s) {
  return s.read_state ? state_row(x, s) : View{};
}

// Calls body(span) for every sequence that runs (state_row >= 0), in order.
template <class Body>
void for_each_sequence(const SequenceMap& seqs, Body&& body) {
  for (index_t n = 0; n < seqs.sequences(); ++n) {
    const SequenceSpan s = seqs[n];
    if (s.state_row >= 0) body(s);
  }
}


// Zeroes a state row in place (a fresh sequence's recurrent state); an absent view is skipped.
template <std::size_t R>
void clear(const TensorView<float, R>& x) {
  if (!x.has_value()) return;
  if constexpr (R == 1) {
    for (index_t i = 0; i < x.size(0); ++i) x(i) = 0.f;
  } else {
    for (index_t i = 0; i < x.size(0); ++i) clear(x[i]);
  }
}

// ---- Per-slot positions (based, rat, infini_attention, mega) ---------------------------------
// Their states hold token buffers (window rings, chunk summaries, segment buffers, chunk k/v
// caches) addressed by the sequence's position, so a serving call carries one position per state
// row: `positions [S]` int64, owned by the caller next to the state pool and updated in place
// (a fresh sequence starts at 0). Each running sequence is one call of the dense form on its own
// token views and state rows, so a serving call equals the per-sequence calls bit for bit.

// True when a call takes the serving path: a packed or slotted batch, has_initial_state, or a
// state that carries per-row positions.
inline bool uses_positions(const SequenceBatch& batch, bool has_positions) {
  return batch.packed() || batch.slotted() || batch.has_initial_state.has_value() || has_positions;
}

// The positions pool of a serving call with a state: required, [S] (no allocation on success).
inline void check_position_pool(const ArgCheck& check, const TensorView<std::int64_t, 1>& positions, index_t S) {
  if (!positions.has_value())
    check.fail("state.positions", "is required with a batch (cu_seqlens, state_indices or has_initial_state): "
                                  "one int64 position per state row [S]");
  check.shape("state.positions", positions, std::array<index_t, 1>{S}, "S");
}

// The position sequence s starts from: its slot's, or 0 when it starts fresh (or no state is
// given). Refuses a negative entry or one past 2^62 - `tokens` (no write has happened yet).
inline index_t start_position(const ArgCheck& check, const TensorView<std::int64_t, 1>& positions,
                              const SequenceSpan& s) {
  if (!s.read_state || !positions.has_value()) return 0;
  const std::int64_t p = positions(s.state_row);
  if (p < 0 || p > kMaxPosition - 1 - s.tokens)
    check.fail("state.positions", "entry " + std::to_string(s.state_row) + " is " + std::to_string(p) +
                                      ", outside [0, 2^62 - tokens)");
  return static_cast<index_t>(p);
}

// Every running sequence's start position (before anything is written).
template <class Slots>
void check_start_positions(const ArgCheck& check, const TensorView<std::int64_t, 1>& positions, const Slots& seqs,
                           index_t count) {
  for (index_t n = 0; n < count; ++n)
    if (seqs[n].state_row >= 0) start_position(check, positions, seqs[n]);
}

// Runs the running sequences of a validated serving prefill one by one: `row_of(state, row,
// position, fresh)` gives a sequence's state rows as a one-row state at its start position
// (cleared where a fresh sequence needs it), `run(span, one_state_or_null)` the dense form on
// them; the slot's position then becomes the one-row state's. Without a state, run(span, nullptr).
template <class State, class RowOf, class Run>
void run_sequences(const ArgCheck& check, const SequenceMap& seqs, State* state, RowOf&& row_of, Run&& run) {
  for_each_sequence(seqs, [&](const SequenceSpan& s) {
    if (!state) {
      run(s, static_cast<State*>(nullptr));
      return;
    }
    State one = row_of(*state, s.state_row, start_position(check, state->positions, s), !s.read_state);
    run(s, &one);
    state->positions(s.state_row) = one.position;
  });
}

// The same for a validated serving step: run(b, one_state) advances token row b's slot. Rows run
// in parallel over the executor (each row's step on one thread: run must use a serial executor),
// so a batch of B rows costs B row steps spread over the threads instead of B thread hand-offs;
// rows write distinct slots (ssm_step_slots refuses a slot named twice), and the start positions
// were checked before (check_start_positions), so nothing here throws.
template <class State, class RowOf, class Run>
void run_step_rows(const ArgCheck& check, const StepSlots& rows, index_t B, State& state, RowOf&& row_of, Run&& run,
                   const Executor& executor) {
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    for (index_t b = begin; b < end; ++b) {
      const SequenceSpan s = rows[b];
      if (s.state_row < 0) continue;
      State one = row_of(state, s.state_row, start_position(check, state.positions, s), !s.read_state);
      run(b, one);
      state.positions(s.state_row) = one.position;
    }
  });
}

}  // namespace seqmix::detail::serving
