// gru, decode step: one token per batch row, the state h updated in place.
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/gru/reference.hpp"

namespace seqmix {

/// One GRU token per batch row: reads state [B,1,H], writes y [B,H] and the new state in place.
/// Equal to gru() over one token.
// A template only so that the step engine compiles where it is called (docs/compile_time.md);
// pass it by name as gru_step<>.
template <class Deferred = void>
void gru_step(const RnnStepInputs& in, const RnnStepOutputs& out, const RnnOptions& options = {},
              const Executor& executor = serial_executor()) {
  static const ArgCheck check("gru_step");
  detail::rnn_step<deferred_t<detail::GruCell, Deferred>>(check, in, out, options, executor);
}

}  // namespace seqmix
