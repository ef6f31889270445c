// Serving arguments (core/batch.hpp) for the hybrid mixers whose fast form runs one dense batch:
// a validated SequenceMap drives one call per sequence on [1, tokens, ...] views of the packed
// (or dense) token tensors and [1, ...] views of the state rows, so a packed call equals the
// per-sequence calls bit for bit, and a short sequence costs what its tokens cost (no padding,
// no per-token fallback at sequence boundaries). The slicing and step-slot helpers are the
// selective state-space family's (ssm/serving.hpp). Internal.
#pragma once

#include "seqmix/core/batch.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/serving.hpp"

namespace seqmix::detail::serving {

using detail::sequence_tokens;
using detail::ssm_step_slots;

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

}  // namespace seqmix::detail::serving
