// A GLA token mixer as a decoder uses it: the prompt is prefilled in one call, then tokens are
// generated one at a time with the carried state, each new token's input depending on the
// previous output (autoregressive feedback). At the end the whole sequence is run through one
// prefill call and must give the same outputs and final state.
//
// The layer: hidden size D = H * V; per token x [D] is projected to q, k [H,K], v [H,V] and a
// per-channel gate g = logsigmoid(x W_g) / 16 [H,K] (GLA's gate, always <= 0). The "model"
// feeds back x_{t+1} = rmsnorm(o_t) for generation, as a residual-free toy decoder would.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <Eigen/Core>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/step.hpp"

namespace {

using seqmix::index_t;
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr index_t kHeads = 4, kKey = 32, kValue = 32, kHidden = kHeads * kValue;
constexpr index_t kPrompt = 100, kGenerate = 40, kTotal = kPrompt + kGenerate;

// The layer's projections, random but fixed.
struct Projections {
  Matrix Wq, Wk, Wv, Wg;  // [D, H*K] or [D, H*V]
  explicit Projections(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.f, 1.f / std::sqrt(static_cast<float>(kHidden)));
    auto random = [&](index_t cols) {
      Matrix m(kHidden, cols);
      for (index_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
      return m;
    };
    Wq = random(kHeads * kKey), Wk = random(kHeads * kKey), Wv = random(kHeads * kValue), Wg = random(kHeads * kKey);
  }
};

float logsigmoid(float x) { return x >= 0.f ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }

// Projects hidden rows x [n, D] into token-major q, k, v, g rows [n, H*K] (i.e. [n,H,K]).
void project(const Projections& p, const Matrix& x, Matrix& q, Matrix& k, Matrix& v, Matrix& g) {
  q = x * p.Wq, k = x * p.Wk, v = x * p.Wv, g = x * p.Wg;
  g = g.unaryExpr([](float a) { return logsigmoid(a) / 16.f; });
}

seqmix::GatedLinearAttentionInputs gla_inputs(const Matrix& q, const Matrix& k, const Matrix& v, const Matrix& g, index_t T) {
  seqmix::GatedLinearAttentionInputs in;
  in.q = seqmix::ConstView<float, 4>(q.data(), {1, T, kHeads, kKey});
  in.k = seqmix::ConstView<float, 4>(k.data(), {1, T, kHeads, kKey});
  in.v = seqmix::ConstView<float, 4>(v.data(), {1, T, kHeads, kValue});
  in.g = seqmix::ConstView<float, 4>(g.data(), {1, T, kHeads, kKey});
  return in;
}

}  // namespace

int main() {
  const Projections proj(7);
  seqmix::ThreadPool pool(2);
  std::printf("GLA decoder: H=%td K=%td V=%td, prompt %td tokens + %td generated (SIMD: %s)\n", kHeads, kKey, kValue,
              kPrompt, kGenerate, seqmix::simd::arch_name());

  // Every token's hidden input, filled as the decoder goes: the prompt is given...
  Matrix x(kTotal, kHidden);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (index_t i = 0; i < kPrompt * kHidden; ++i) x.data()[i] = uniform(rng);

  // 1. Prefill the prompt in one call; the state is carried out in `state` [1,H,K,V].
  seqmix::Tensor<float, 4> state({1, kHeads, kKey, kValue});
  Matrix outputs(kTotal, kHidden);  // o rows [T, H*V]
  Matrix q, k, v, g;
  project(proj, x.topRows(kPrompt), q, k, v, g);
  seqmix::gated_linear_attention(gla_inputs(q, k, v, g, kPrompt),
                                 {seqmix::TensorView<float, 4>(outputs.data(), {1, kPrompt, kHeads, kValue}), state.view()},
                                 {}, pool);

  // 2. Generate: the next input is the RMS-normalized last output, then one decode step.
  for (index_t t = kPrompt; t < kTotal; ++t) {
    const float rms = std::sqrt(outputs.row(t - 1).squaredNorm() / kHidden + 1e-6f);
    x.row(t) = outputs.row(t - 1) / rms;
    project(proj, x.row(t), q, k, v, g);
    seqmix::GatedLinearAttentionStepInputs in;
    in.q = seqmix::ConstView<float, 3>(q.data(), {1, kHeads, kKey});
    in.k = seqmix::ConstView<float, 3>(k.data(), {1, kHeads, kKey});
    in.v = seqmix::ConstView<float, 3>(v.data(), {1, kHeads, kValue});
    in.g = seqmix::ConstView<float, 3>(g.data(), {1, kHeads, kKey});
    seqmix::gated_linear_attention_step(in, {seqmix::TensorView<float, 3>(outputs.row(t).data(), {1, kHeads, kValue}), state.view()},
                                        {}, pool);
  }

  // 3. Check: the whole sequence in one prefill call gives the same outputs and final state.
  Matrix full(kTotal, kHidden);
  seqmix::Tensor<float, 4> full_state({1, kHeads, kKey, kValue});
  project(proj, x, q, k, v, g);
  seqmix::gated_linear_attention(gla_inputs(q, k, v, g, kTotal),
                                 {seqmix::TensorView<float, 4>(full.data(), {1, kTotal, kHeads, kValue}), full_state.view()},
                                 {}, pool);
  const float max_ref = std::max(1.f, full.cwiseAbs().maxCoeff());
  const float out_error = (full - outputs).cwiseAbs().maxCoeff() / max_ref;
  float state_error = 0.f;
  for (index_t i = 0; i < state.numel(); ++i)
    state_error = std::max(state_error, std::abs(state.data()[i] - full_state.data()[i]));
  std::printf("last generated output, head 0: %.5f %.5f %.5f ...\n", outputs(kTotal - 1, 0), outputs(kTotal - 1, 1),
              outputs(kTotal - 1, 2));
  std::printf("prefill + %td steps vs one call: max output error %.2e (relative), max state error %.2e\n", kGenerate,
              out_error, state_error);
  const bool ok = out_error <= 1e-5f && state_error <= 1e-4f;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
