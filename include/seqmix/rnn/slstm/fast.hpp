// slstm, fast prefill: the shared recurrent engine (../engine.hpp) with the sLSTM cell; with
// heads > 1 each block of units multiplies only its head's [4*n, H/heads] rows.
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/slstm/reference.hpp"

namespace seqmix {

/// sLSTM prefill over x [B,T,I] (or [B,T,4H] pre-activations without w_ih): y [B,T,H] and the
/// final (h, c, n, m). Same arguments and results as reference::slstm, up to rounding.
// A template only so that the engine compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void slstm(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
           const Executor& executor = serial_executor()) {
  detail::rnn_prefill<deferred_t<detail::SlstmCell, Deferred>>("slstm", in, out, options, executor);
}

}  // namespace seqmix
