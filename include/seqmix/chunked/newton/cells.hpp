// Elementwise nonlinear recurrence cells h_t = f(h_{t-1}, x_t) for the parallel Newton solver
// (README.md). A cell is a stateless struct with
//   static constexpr int kInputs, kParams;          // per-token input streams [B,T,D], per-channel params [D]
//   static constexpr const char* kName, *kInputNames[kInputs], *kParamNames[kParams];
//   template <class V> static V value(V h, const V* in, const V* p);             // f
//   template <class V> static void eval(V h, const V* in, const V* p, V& f, V& J); // f and J = df/dh
// V is float (scalar tails, reference) or simd::Batch<float>; every operation is per channel, so
// one channel's state, inputs and parameters are scalars (a diagonal Jacobian).
#pragma once

#include <cmath>

#include "seqmix/core/simd.hpp"

namespace seqmix {
namespace detail::cell {

using FBatch = simd::Batch<float>;

inline float exp_v(float x) { return std::exp(x); }
inline FBatch exp_v(const FBatch& x) { return simd::exp(x); }

// sigmoid(x) = 1 / (1 + exp(-x)); exp(-x) = inf for very negative x gives 0, as it should.
template <class V>
V sigmoid(const V& x) {
  return V(1.f) / (V(1.f) + exp_v(-x));
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): saturates to +-1 without NaN (exp overflow gives 1 - 0); near 0
// it is accurate in absolute terms (about 1e-7), which is what the recurrences need. The scalar
// path (reference, tails) uses std::tanh.
inline float tanh_v(float x) { return std::tanh(x); }
inline FBatch tanh_v(const FBatch& x) { return FBatch(1.f) - FBatch(2.f) / (simd::exp(x + x) + FBatch(1.f)); }

}  // namespace detail::cell

/// Minimal GRU with a recurrent nonlinearity (minGRU made genuinely nonlinear), per channel:
///   c_t = tanh(a * h_{t-1} + x_t),  z_t = sigmoid(w * h_{t-1} + u_t)
///   h_t = (1 - z_t) h_{t-1} + z_t c_t
///   dh_t/dh_{t-1} = (1 - z_t) + z_t (1 - z_t) w (c_t - h_{t-1}) + z_t a (1 - c_t^2)
/// Inputs x, u [B,T,D] (the caller's projections of the token); parameters a, w [D].
struct MinGruCell {
  ///@{
  /// The cell interface (header comment): input and parameter counts, and the names validation
  /// messages use.
  static constexpr int kInputs = 2, kParams = 2;
  static constexpr const char* kName = "mingru";
  static constexpr const char* kInputNames[kInputs] = {"x", "u"};
  static constexpr const char* kParamNames[kParams] = {"a", "w"};

  ///@}
  /// f(h, x_t): the next state from state h, the token's inputs in[kInputs] and the channel's
  /// parameters p[kParams] (V: float or a SIMD batch).
  template <class V>
  static V value(const V& h, const V* in, const V* p) {
    const V c = detail::cell::tanh_v(p[0] * h + in[0]);
    const V z = detail::cell::sigmoid(p[1] * h + in[1]);
    return h + z * (c - h);
  }
  /// f and its derivative J = df/dh, what a Newton iteration needs.
  template <class V>
  static void eval(const V& h, const V* in, const V* p, V& f, V& J) {
    const V c = detail::cell::tanh_v(p[0] * h + in[0]);
    const V z = detail::cell::sigmoid(p[1] * h + in[1]);
    const V gap = c - h;
    f = h + z * gap;
    J = (V(1.f) - z) + z * ((V(1.f) - z) * p[1] * gap + p[0] * (V(1.f) - c * c));
  }
};

/// Diagonal LSTM-like cell (peephole gates on the cell state only, no hidden-state feedback), per
/// channel, the recurrent state being the cell state c:
///   f_t = sigmoid(wf * c_{t-1} + uf_t),  i_t = sigmoid(wi * c_{t-1} + ui_t),  g_t = tanh(r * c_{t-1} + x_t)
///   c_t = f_t c_{t-1} + i_t g_t
///   dc_t/dc_{t-1} = f_t + f_t (1 - f_t) wf c_{t-1} + i_t (1 - i_t) wi g_t + i_t r (1 - g_t^2)
/// An LSTM's output h_t = o_t tanh(c_t) (o_t from the token only) is a pointwise readout the caller
/// applies afterwards; it does not feed back, so the recurrence stays scalar per channel.
/// Inputs x, uf, ui [B,T,D]; parameters r, wf, wi [D].
struct DiagLstmCell {
  ///@{
  /// The cell interface (header comment): input and parameter counts, and the names validation
  /// messages use.
  static constexpr int kInputs = 3, kParams = 3;
  static constexpr const char* kName = "diag_lstm";
  static constexpr const char* kInputNames[kInputs] = {"x", "uf", "ui"};
  static constexpr const char* kParamNames[kParams] = {"r", "wf", "wi"};

  ///@}
  /// f(c, x_t): the next cell state from c, the token's inputs in[kInputs] and the channel's
  /// parameters p[kParams] (V: float or a SIMD batch).
  template <class V>
  static V value(const V& c, const V* in, const V* p) {
    const V fg = detail::cell::sigmoid(p[1] * c + in[1]);
    const V ig = detail::cell::sigmoid(p[2] * c + in[2]);
    const V g = detail::cell::tanh_v(p[0] * c + in[0]);
    return fg * c + ig * g;
  }
  /// f and its derivative J = df/dc, what a Newton iteration needs.
  template <class V>
  static void eval(const V& c, const V* in, const V* p, V& f, V& J) {
    const V fg = detail::cell::sigmoid(p[1] * c + in[1]);
    const V ig = detail::cell::sigmoid(p[2] * c + in[2]);
    const V g = detail::cell::tanh_v(p[0] * c + in[0]);
    f = fg * c + ig * g;
    J = fg + fg * (V(1.f) - fg) * p[1] * c + ig * ((V(1.f) - ig) * p[2] * g + p[0] * (V(1.f) - g * g));
  }
};

}  // namespace seqmix
