// A Gated DeltaNet token mixer as in Qwen3-Next-style models, with deterministic random weights:
//
//   q, k = x Wq, x Wk            [HK*K]      v = x Wv   [HV*V]
//   (q, k, v) = silu(short causal conv of width 4)      (seqmix::causal_conv1d)
//   q, k L2-normalized per head (in the kernel: QkNorm::l2)
//   beta = sigmoid(x Wb)         [HV]
//   g    = -exp(A_log) * softplus(x Wa + dt_bias)       [HV], always <= 0
//   o    = gated_delta_rule(q, k, v, g, beta)
//   y    = (rmsnorm(o) * silu(x Wz)) Wo                  per-head gated RMSNorm, output projection
//
// The prompt is processed in one prefill call (conv state and delta state carried out), then
// further tokens one decode step at a time; the outputs must match one prefill call over the
// whole sequence.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <random>

#include <Eigen/Core>

#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Qwen3-Next has 16 q/k heads and 32 value heads of 128; a quarter-size copy keeps this quick.
constexpr index_t kHidden = 256, kQkHeads = 2, kValueHeads = 4, kKey = 64, kValue = 64, kConv = 4;
constexpr index_t kQk = kQkHeads * kKey, kVal = kValueHeads * kValue, kMixed = 2 * kQk + kVal;
constexpr index_t kPrompt = 77, kGenerate = 23, kTotal = kPrompt + kGenerate;

float silu(float x) { return x / (1.f + std::exp(-x)); }
float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

struct Weights {
  Matrix Wqkv, Wb, Wa, Wz, Wo;  // [D, 2*HK*K + HV*V], [D, HV], [D, HV], [D, HV*V], [HV*V, D]
  Tensor<float, 2> conv;        // [2*HK*K + HV*V, W]
  Eigen::VectorXf A_log, dt_bias, norm_weight;
  explicit Weights(unsigned seed) : conv({kMixed, kConv}) {
    std::mt19937 rng(seed);
    auto random = [&](index_t rows, index_t cols, float stddev) {
      std::normal_distribution<float> normal(0.f, stddev);
      Matrix m(rows, cols);
      for (index_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
      return m;
    };
    const float s = 1.f / std::sqrt(static_cast<float>(kHidden));
    Wqkv = random(kHidden, kMixed, s);
    Wb = random(kHidden, kValueHeads, s);
    Wa = random(kHidden, kValueHeads, s);
    Wz = random(kHidden, kVal, s);
    Wo = random(kVal, kHidden, 1.f / std::sqrt(static_cast<float>(kVal)));
    const Matrix c = random(kMixed, kConv, 0.5f);
    for (index_t i = 0; i < c.size(); ++i) conv.data()[i] = c.data()[i];
    A_log = Eigen::VectorXf::LinSpaced(kValueHeads, -1.f, 1.f);
    dt_bias = Eigen::VectorXf::Constant(kValueHeads, -2.f);
    norm_weight = Eigen::VectorXf::Ones(kValue);
  }
};

// Carried between calls: the conv state (last W-1 mixed inputs) and the delta-rule state.
struct LayerState {
  Tensor<float, 3> conv{{1, kConv - 1, kMixed}};
  Tensor<float, 4> delta{{1, kValueHeads, kKey, kValue}};
};

// Token rows of x [T, D] -> y [T, D], advancing the state. T == 1 uses the decode steps.
Matrix run_layer(const Weights& w, const Matrix& x, LayerState& state, const seqmix::Executor& executor) {
  const index_t T = x.rows();
  // Projections and the short convolution over the concatenated q|k|v channels.
  Matrix mixed_in = x * w.Wqkv;
  Tensor<float, 3> mixed({1, T, kMixed});
  const seqmix::ConstView<float, 3> mixed_in_view(mixed_in.data(), {1, T, kMixed});
  const seqmix::CausalConv1dOptions conv_options{seqmix::ConvActivation::silu};
  if (T == 1) {
    seqmix::causal_conv1d_step({mixed_in_view.select(1, 0), w.conv.view(), {}},
                               {mixed.view().select(1, 0), state.conv.view()}, conv_options);
  } else {
    const Tensor<float, 3> conv_in = state.conv;  // the prefill reads its initial state before writing
    seqmix::causal_conv1d({mixed_in_view, w.conv.view(), {}, conv_in.view()}, {mixed.view(), state.conv.view()},
                          conv_options);
  }
  // Gates from projections.
  const Matrix b_logits = x * w.Wb, a_logits = x * w.Wa, z = x * w.Wz;
  Tensor<float, 3> beta({1, T, kValueHeads}), g({1, T, kValueHeads});
  for (index_t t = 0; t < T; ++t)
    for (index_t h = 0; h < kValueHeads; ++h) {
      beta(0, t, h) = sigmoid(b_logits(t, h));
      g(0, t, h) = -std::exp(w.A_log(h)) * softplus(a_logits(t, h) + w.dt_bias(h));
    }
  // q, k, v are column ranges of the mixed rows: strided views, no copies.
  const float* base = mixed.data();
  const std::array<index_t, 4> qk_strides{T * kMixed, kMixed, kKey, 1}, v_strides{T * kMixed, kMixed, kValue, 1};
  const seqmix::ConstView<float, 4> q(base, {1, T, kQkHeads, kKey}, qk_strides);
  const seqmix::ConstView<float, 4> k(base + kQk, {1, T, kQkHeads, kKey}, qk_strides);
  const seqmix::ConstView<float, 4> v(base + 2 * kQk, {1, T, kValueHeads, kValue}, v_strides);
  Tensor<float, 4> o({1, T, kValueHeads, kValue});
  seqmix::GatedDeltaRuleOptions options;
  options.gate = seqmix::DeltaGate::scalar;
  options.qk_norm = seqmix::QkNorm::l2;
  if (T == 1) {
    seqmix::gated_delta_rule_step({q.select(1, 0), k.select(1, 0), v.select(1, 0), beta.view().select(1, 0),
                                   g.view().select(1, 0), {}},
                                  {o.view().select(1, 0), state.delta.view()}, options, executor);
  } else {
    seqmix::GatedDeltaRuleInputs in;
    in.q = q, in.k = k, in.v = v, in.beta = beta.view(), in.g_scalar = g.view();
    in.initial_state = state.delta.view();
    seqmix::gated_delta_rule(in, {o.view(), state.delta.view()}, options, executor);
  }
  // Output gate: per-head RMSNorm of o times silu(z), then the output projection.
  Matrix gated(T, kVal);
  for (index_t t = 0; t < T; ++t)
    for (index_t h = 0; h < kValueHeads; ++h) {
      float sum = 0.f;
      for (index_t c = 0; c < kValue; ++c) sum += o(0, t, h, c) * o(0, t, h, c);
      const float inv = 1.f / std::sqrt(sum / kValue + 1e-6f);
      for (index_t c = 0; c < kValue; ++c)
        gated(t, h * kValue + c) = o(0, t, h, c) * inv * w.norm_weight(c) * silu(z(t, h * kValue + c));
    }
  return gated * w.Wo;
}

}  // namespace

int main() {
  const Weights weights(2024);
  seqmix::ThreadPool pool(2);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  Matrix x(kTotal, kHidden);
  for (index_t i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);

  // One call over the whole sequence.
  LayerState full_state;
  const Matrix y_full = run_layer(weights, x, full_state, pool);

  // The prompt in one call, then one token at a time.
  LayerState state;
  Matrix y(kTotal, kHidden);
  y.topRows(kPrompt) = run_layer(weights, x.topRows(kPrompt), state, pool);
  for (index_t t = kPrompt; t < kTotal; ++t) y.row(t) = run_layer(weights, x.row(t), state, pool);

  const float scale = std::max(1.f, y_full.cwiseAbs().maxCoeff());
  const float err_y = (y - y_full).cwiseAbs().maxCoeff() / scale;
  float err_state = 0.f;
  for (index_t i = 0; i < state.delta.numel(); ++i)
    err_state = std::max(err_state, std::abs(state.delta.data()[i] - full_state.delta.data()[i]));
  std::printf("gated_deltanet_layer: D=%td HK=%td HV=%td K=%td V=%td, prompt %td + %td steps (%s)\n", kHidden,
              kQkHeads, kValueHeads, kKey, kValue, kPrompt, kGenerate, seqmix::simd::arch_name());
  std::printf("  max |y_steps - y_full| / max(1, max|y|) = %.2e, max state difference = %.2e\n", err_y, err_state);
  const bool ok = err_y < 1e-4f && err_state < 1e-4f;
  std::printf("  %s\n", ok ? "OK: prefill + steps match one full call" : "MISMATCH");
  return ok ? 0 : 1;
}
