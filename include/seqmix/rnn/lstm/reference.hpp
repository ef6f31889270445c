// lstm: PyTorch's LSTM cell (gate order i, f, g, o), so nn.LSTM weights load unchanged.
//
//   [i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          (4H pre-activations)
//   c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
//   h_t = sigmoid(o) * tanh(c_t)                                   y_t = h_t
//
// State [B,2,H] = (h, c). Arguments, options and validation: ../common.hpp; fast prefill:
// fast.hpp; decode step: step.hpp; derivation and layout: ../README.md.
#pragma once

#include <cmath>

#include "seqmix/rnn/common.hpp"

namespace seqmix {
namespace detail {

/// The LSTM cell for the shared recurrent engine: 4 gates, state (h, c).
struct LstmCell {
  static constexpr index_t kGates = 4, kStates = 2;
  template <class V>
  static void update(const V* ax, const V* ah, V* s) {
    const V i = rnn_sigmoid(ax[0] + ah[0]), f = rnn_sigmoid(ax[1] + ah[1]);
    const V g = rnn_tanh(ax[2] + ah[2]), o = rnn_sigmoid(ax[3] + ah[3]);
    s[1] = f * s[1] + i * g;
    s[0] = o * rnn_tanh(s[1]);
  }
};

}  // namespace detail

namespace reference {

/// The LSTM definition, token by token with double accumulators (see the top of this file).
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void lstm(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
                 const Executor& executor = serial_executor()) {
  (void)executor;
  detail::rnn_reference<detail::LstmCell>("reference::lstm", in, out, options);
}

}  // namespace reference
}  // namespace seqmix
