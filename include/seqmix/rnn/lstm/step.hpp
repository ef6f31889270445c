// lstm, decode step: one token per batch row, the state (h, c) updated in place.
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/lstm/reference.hpp"

namespace seqmix {

/// One LSTM token per batch row: reads state [B,2,H] = (h, c), writes y [B,H] and the new state
/// in place. Equal to lstm() over one token.
// A template only so that the step engine compiles where it is called (docs/compile_time.md);
// pass it by name as lstm_step<>.
template <class Deferred = void>
void lstm_step(const RnnStepInputs& in, const RnnStepOutputs& out, const RnnOptions& options = {},
               const Executor& executor = serial_executor()) {
  static const ArgCheck check("lstm_step");
  detail::rnn_step<deferred_t<detail::LstmCell, Deferred>>(check, in, out, options, executor);
}

}  // namespace seqmix
