// slstm: xLSTM's scalar-memory LSTM (Beck et al. 2024), with exponential input gate, normalizer
// and stabilizer, and a head-wise block-diagonal recurrence (RnnOptions::heads), gate order
// i, f, z, o as in the xLSTM code.
//
//   [i, f, z, o] = W_ih x_t + b_ih + R h_{t-1} + b_hh      (4H pre-activations, R block-diagonal)
//   m_t = max(i, log sigmoid(f) + m_{t-1})                   (m_t = i while n_{t-1} = 0: first token)
//   i' = exp(i - m_t),  f' = exp(log sigmoid(f) + m_{t-1} - m_t)
//   c_t = f' c_{t-1} + i' tanh(z)
//   n_t = f' n_{t-1} + i'
//   h_t = sigmoid(o) * c_t / n_t                              y_t = h_t
//
// The stabilizer m keeps every exponent <= 0: c and n carry the common factor exp(-m), which
// cancels in c / n, so h equals the unstabilized cell's. After the first token n_t >= min(n, 1)
// stays positive. State [B,4,H] = (h, c, n, m). xLSTM computes W_ih x_t outside the cell (with
// its own projections and convolution): pass those pre-activations as x [B,T,4H] without w_ih.
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/rnn/common.hpp"

namespace seqmix {
namespace detail {

/// The sLSTM cell for the shared recurrent engine: 4 gates, state (h, c, n, m). A unit whose
/// normalizer is 0 (a fresh state) takes m = i, as xLSTM's code does, so n becomes 1.
struct SlstmCell {
  static constexpr index_t kGates = 4, kStates = 4;
  template <class V>
  static void update(const V* ax, const V* ah, V* s) {
    const V i = ax[0] + ah[0], f = ax[1] + ah[1], z = ax[2] + ah[2], o = ax[3] + ah[3];
    const V log_f_m = rnn_log_sigmoid(f) + s[3];
    const V m = rnn_if_zero(s[2], i, rnn_max(i, log_f_m));
    const V ig = rnn_exp(i - m), fg = rnn_if_zero(s[2], V(0.f), rnn_exp(log_f_m - m));
    s[1] = fg * s[1] + ig * rnn_tanh(z);
    s[2] = fg * s[2] + ig;
    s[3] = m;
    s[0] = rnn_sigmoid(o) * s[1] / s[2];
  }
};

}  // namespace detail

namespace reference {

/// The sLSTM definition, token by token with double accumulators (see the top of this file).
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void slstm(const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options = {},
                  const Executor& executor = serial_executor()) {
  (void)executor;
  detail::rnn_reference<detail::SlstmCell>("reference::slstm", in, out, options);
}

}  // namespace reference
}  // namespace seqmix
