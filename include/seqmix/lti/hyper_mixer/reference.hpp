// hyper_mixer: HyperMixer's token mixing (Mai et al. 2023, "HyperMixer: An MLP-based Low Cost
// Alternative to Transformers"; issue 16 item 6): a token-mixing MLP whose two weight matrices
// are generated from the tokens by position-wise hypernetworks, so it works for any T.
//
//   z[t]     = x[t] + positions[t]                         (positions optional, [L,D], L >= T)
//   W_i[t,:] = sigma(z[t] A_i + a_i) B_i + b_i             (i = 1, 2; A_i [D,M_i], B_i [M_i,E])
//   y        = W_2 sigma(W_1^T x)                          (W_i [T,E], x [T,D], y [T,D])
//
// per batch row, sigma = GELU (erf form, the default) or ReLU, the same in the hypernetworks and
// the mixing MLP. W_1^T x sums over every token, so the operator is non-causal (the paper defines
// no causal form; none is offered here) and has no decode step. The caller's weights define the
// hypernetworks (the paper's one-hidden-layer MLPs; pass the same network twice for tied
// hypernetworks). This header holds the argument structs, validation and the readable definition
// (loops in double); the GEMM form is in fast.hpp.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// The nonlinearity of hyper_mixer (hypernetworks and mixing MLP alike).
enum class HyperMixerActivation {
  gelu,  ///< x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (default)
  relu   ///< max(x, 0)
};

/// Options of hyper_mixer.
struct HyperMixerOptions {
  HyperMixerActivation activation = HyperMixerActivation::gelu;  ///< sigma
};

/// One position-wise hypernetwork: W[t,:] = sigma(z[t] w_in + b_in) w_out + b_out.
struct HyperMixerNetwork {
  ConstView<float, 2> w_in;       ///< [D,M], M >= 1 hidden units, finite
  ConstView<float, 1> b_in = {};  ///< [M], optional, finite
  ConstView<float, 2> w_out;      ///< [M,E], E >= 1 (the mixing MLP's hidden width), finite
  ConstView<float, 1> b_out = {}; ///< [E], optional, finite
};

/// hyper_mixer's inputs (docs/operators.md, "hyper_mixer").
struct HyperMixerInputs {
  ConstView<float, 3> x;              ///< [B,T,D], any strides
  HyperMixerNetwork hyper1;           ///< generates W_1 [T,E]
  HyperMixerNetwork hyper2;           ///< generates W_2 [T,E] (same E as hyper1)
  ConstView<float, 2> positions = {}; ///< [L,D], L >= T, optional: added to the hypernetworks' input only, finite
};

/// hyper_mixer's output: y must not overlap an input.
struct HyperMixerOutputs {
  TensorView<float, 3> y;  ///< [B,T,D]
};

namespace detail {

struct HyperMixerDims {
  index_t B, T, D, E;
};

template <std::size_t Rank>
inline void hyper_mixer_check_finite(const ArgCheck& check, const char* argument, const ConstView<float, Rank>& v) {
  if (!v.has_value()) return;
  const index_t rows = v.size(0), cols = Rank == 2 ? v.size(Rank - 1) : 1;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const float value = Rank == 2 ? v.data()[r * v.stride(0) + c * v.stride(Rank - 1)] : v.data()[r * v.stride(0)];
      if (!std::isfinite(value))
        check.fail(argument, "holds a non-finite value at [" + std::to_string(r) +
                                 (Rank == 2 ? "," + std::to_string(c) : std::string()) + "]");
    }
}

inline index_t validate_hyper_network(const ArgCheck& check, const HyperMixerNetwork& net, index_t D, index_t E,
                                      const char* w_in, const char* b_in, const char* w_out, const char* b_out) {
  check.shape(w_in, net.w_in, {D, -1}, "D,M");
  const index_t M = net.w_in.size(1);
  if (M < 1) check.fail(w_in, "must have at least one hidden unit (M >= 1)");
  check.optional_shape(b_in, net.b_in, {M}, "M");
  check.shape(w_out, net.w_out, {M, E}, "M,E");
  if (net.w_out.size(1) < 1) check.fail(w_out, "must have a mixing width E >= 1");
  check.optional_shape(b_out, net.b_out, {net.w_out.size(1)}, "E");
  hyper_mixer_check_finite(check, w_in, net.w_in);
  hyper_mixer_check_finite(check, b_in, net.b_in);
  hyper_mixer_check_finite(check, w_out, net.w_out);
  hyper_mixer_check_finite(check, b_out, net.b_out);
  return net.w_out.size(1);
}

template <class View>
inline void hyper_mixer_no_overlap(const ArgCheck& check, const TensorView<float, 3>& y, const char* name,
                                   const View& v) {
  check.no_overlap("y", y, name, v);
}

inline HyperMixerDims validate_hyper_mixer(const char* op, const HyperMixerInputs& in, const HyperMixerOutputs& out,
                                           const HyperMixerOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.activation", options.activation, 2);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  const index_t E = validate_hyper_network(check, in.hyper1, D, -1, "hyper1.w_in", "hyper1.b_in", "hyper1.w_out",
                                           "hyper1.b_out");
  validate_hyper_network(check, in.hyper2, D, E, "hyper2.w_in", "hyper2.b_in", "hyper2.w_out", "hyper2.b_out");
  check.optional_shape("positions", in.positions, {-1, D}, "L,D");
  if (in.positions.has_value() && in.positions.size(0) < T)
    check.fail("positions", "covers L = " + std::to_string(in.positions.size(0)) + " tokens, fewer than T = " +
                                std::to_string(T));
  hyper_mixer_check_finite(check, "positions", in.positions);
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  hyper_mixer_no_overlap(check, out.y, "x", in.x);
  hyper_mixer_no_overlap(check, out.y, "positions", in.positions);
  for (const auto* net : {&in.hyper1, &in.hyper2}) {
    hyper_mixer_no_overlap(check, out.y, net == &in.hyper1 ? "hyper1.w_in" : "hyper2.w_in", net->w_in);
    hyper_mixer_no_overlap(check, out.y, net == &in.hyper1 ? "hyper1.b_in" : "hyper2.b_in", net->b_in);
    hyper_mixer_no_overlap(check, out.y, net == &in.hyper1 ? "hyper1.w_out" : "hyper2.w_out", net->w_out);
    hyper_mixer_no_overlap(check, out.y, net == &in.hyper1 ? "hyper1.b_out" : "hyper2.b_out", net->b_out);
  }
  return {B, T, D, E};
}

inline double hyper_mixer_act(double v, HyperMixerActivation a) {
  return a == HyperMixerActivation::relu ? (v > 0.0 ? v : 0.0) : 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
}

// W[t,:] of one hypernetwork for batch row b, in double.
inline void hyper_mixer_network_double(const HyperMixerInputs& in, const HyperMixerNetwork& net, index_t b, index_t t,
                                       HyperMixerActivation act, std::vector<double>& w) {
  const index_t D = in.x.size(2), M = net.w_in.size(1), E = net.w_out.size(1);
  std::vector<double> hidden(static_cast<std::size_t>(M));
  for (index_t m = 0; m < M; ++m) {
    double acc = net.b_in.has_value() ? double(net.b_in(m)) : 0.0;
    for (index_t d = 0; d < D; ++d) {
      const double z = double(in.x(b, t, d)) + (in.positions.has_value() ? double(in.positions(t, d)) : 0.0);
      acc += z * double(net.w_in(d, m));
    }
    hidden[static_cast<std::size_t>(m)] = hyper_mixer_act(acc, act);
  }
  w.assign(static_cast<std::size_t>(E), 0.0);
  for (index_t e = 0; e < E; ++e) {
    double acc = net.b_out.has_value() ? double(net.b_out(e)) : 0.0;
    for (index_t m = 0; m < M; ++m) acc += hidden[static_cast<std::size_t>(m)] * double(net.w_out(m, e));
    w[static_cast<std::size_t>(e)] = acc;
  }
}

}  // namespace detail

namespace reference {

/// The definition of hyper_mixer in double: per batch row both hypernetworks at every token,
/// then H = sigma(W_1^T x) [E,D] and y = W_2 H. Single-threaded, `executor` accepted for a
/// uniform signature. Validates first (shapes, M >= 1, E >= 1, L >= T, finite weights, biases
/// and positions, no overlap, a known activation).
inline void hyper_mixer(const HyperMixerInputs& in, const HyperMixerOutputs& out, const HyperMixerOptions& options = {},
                        const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_hyper_mixer("reference::hyper_mixer", in, out, options);
  const std::size_t E = static_cast<std::size_t>(d.E);
  std::vector<std::vector<double>> w1(static_cast<std::size_t>(d.T)), w2(static_cast<std::size_t>(d.T));
  std::vector<double> h(E * static_cast<std::size_t>(d.D));
  for (index_t b = 0; b < d.B; ++b) {
    for (index_t t = 0; t < d.T; ++t) {
      detail::hyper_mixer_network_double(in, in.hyper1, b, t, options.activation, w1[static_cast<std::size_t>(t)]);
      detail::hyper_mixer_network_double(in, in.hyper2, b, t, options.activation, w2[static_cast<std::size_t>(t)]);
    }
    for (std::size_t e = 0; e < E; ++e)
      for (index_t c = 0; c < d.D; ++c) {
        double acc = 0.0;
        for (index_t t = 0; t < d.T; ++t) acc += w1[static_cast<std::size_t>(t)][e] * double(in.x(b, t, c));
        h[e * static_cast<std::size_t>(d.D) + static_cast<std::size_t>(c)] = detail::hyper_mixer_act(acc, options.activation);
      }
    for (index_t t = 0; t < d.T; ++t)
      for (index_t c = 0; c < d.D; ++c) {
        double acc = 0.0;
        for (std::size_t e = 0; e < E; ++e)
          acc += w2[static_cast<std::size_t>(t)][e] * h[e * static_cast<std::size_t>(d.D) + static_cast<std::size_t>(c)];
        out.y(b, t, c) = static_cast<float>(acc);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
