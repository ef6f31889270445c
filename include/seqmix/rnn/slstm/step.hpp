// slstm, decode step: one token per batch row, the state (h, c, n, m) updated in place.
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/slstm/reference.hpp"

namespace seqmix {

/// One sLSTM token per batch row: reads state [B,4,H] = (h, c, n, m), writes y [B,H] and the
/// new state in place. Equal to slstm() over one token.
// A template only so that the step engine compiles where it is called (docs/compile_time.md);
// pass it by name as slstm_step<>.
template <class Deferred = void>
void slstm_step(const RnnStepInputs& in, const RnnStepOutputs& out, const RnnOptions& options = {},
                const Executor& executor = serial_executor()) {
  static const ArgCheck check("slstm_step");
  detail::rnn_step<deferred_t<detail::SlstmCell, Deferred>>(check, in, out, options, executor);
}

}  // namespace seqmix
