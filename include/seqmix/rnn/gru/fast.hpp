// gru, fast prefill: the input projection of all tokens as GEMMs, the recurrence with W_hh
// packed per block of hidden units, blocks spread over the executor (../engine.hpp).
#pragma once

#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/gru/reference.hpp"

namespace seqmix {

/// GRU prefill over x [B,T,I] (or [B,T,3H] pre-activations without w_ih): y [B,T,H] and the
/// final h. Same arguments and results as reference::gru, up to rounding.
// A template only so that the engine compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void gru(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
         const Executor& executor = serial_executor()) {
  detail::rnn_prefill<deferred_t<detail::GruCell, Deferred>>("gru", in, out, options, executor);
}

}  // namespace seqmix
