// gru: PyTorch's GRU cell (gate order r, z, n), so nn.GRU weights load unchanged.
//
//   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
//   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
//   h_t = (1 - z) * n + z * h_{t-1}                                y_t = h_t
//
// State [B,1,H] = (h). Arguments, options and validation: ../common.hpp; fast prefill: fast.hpp;
// decode step: step.hpp.
#pragma once

#include <cmath>

#include "seqmix/rnn/common.hpp"

namespace seqmix {
namespace detail {

/// The GRU cell for the shared recurrent engine: 3 gates, state (h). The candidate's recurrent
/// part (with b_hn) is gated by r, which is why the engine keeps the two sides apart.
struct GruCell {
  static constexpr index_t kGates = 3, kStates = 1;
  template <class V>
  static void update(const V* ax, const V* ah, V* s) {
    const V r = rnn_sigmoid(ax[0] + ah[0]), z = rnn_sigmoid(ax[1] + ah[1]);
    const V n = rnn_tanh(ax[2] + r * ah[2]);
    s[0] = (V(1.f) - z) * n + z * s[0];
  }
};

}  // namespace detail

namespace reference {

/// The GRU definition, token by token with double accumulators (see the top of this file).
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void gru(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
                const Executor& executor = serial_executor()) {
  (void)executor;
  detail::rnn_reference<detail::GruCell>("reference::gru", in, out, options);
}

}  // namespace reference
}  // namespace seqmix
