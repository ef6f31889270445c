// lstm, fast prefill: the input projection of all tokens as GEMMs, the recurrence with W_hh
// packed per block of hidden units, blocks spread over the executor (../engine.hpp).
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/lstm/reference.hpp"

namespace seqmix {

/// LSTM prefill over x [B,T,I] (or [B,T,4H] pre-activations without w_ih): y [B,T,H] and the
/// final (h, c). Same arguments and results as reference::lstm, up to rounding.
// A template only so that the engine compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void lstm(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
          const Executor& executor = serial_executor()) {
  detail::rnn_prefill<deferred_t<detail::LstmCell, Deferred>>("lstm", in, out, options, executor);
}

}  // namespace seqmix
