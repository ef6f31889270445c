// A complete Mamba-2 mixer layer built from seqmix operators, the way mamba_ssm's Mamba2 module
// composes them:
//
//   u [B,T,d_model]
//     -> in_proj                      zxbcdt = u W_in^T, split into z | xBC | dt
//     -> causal_conv1d (SiLU)         over the xBC channels, carrying a conv state
//     -> split xBC                    x [B,T,H,P], Bm [B,T,G,N], Cm [B,T,G,N]
//     -> ssd                          y = SSD(x, dt, A, Bm, Cm, D, dt_bias, softplus), ssm state
//     -> gated RMSNorm                rmsnorm(y * silu(z)) * norm_weight, per group of channels
//     -> out_proj                     out = y W_out^T
//
// The layer runs over a prompt in one call, and again as a prompt prefix plus token-by-token
// decode steps; both must agree. Weights are deterministic pseudo-random numbers.
//
// Build: g++ -std=c++17 -O2 -I include -I /usr/include/eigen3 examples/mamba2_block.cpp -pthread
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include <Eigen/Core>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
using Matrix = seqmix::RowMajorMatrix<float>;

// Sizes of the layer (a small Mamba-2: mamba_ssm's defaults, scaled down).
struct Mamba2Config {
  index_t d_model = 256;
  index_t expand = 2;
  index_t head_dim = 64;  // P
  index_t d_state = 64;   // N
  index_t groups = 1;     // G: groups of heads sharing Bm, Cm
  index_t d_conv = 4;     // W: conv taps
  float norm_eps = 1e-5f;

  index_t d_inner() const { return expand * d_model; }
  index_t heads() const { return d_inner() / head_dim; }                   // H
  index_t conv_dim() const { return d_inner() + 2 * groups * d_state; }   // x | Bm | Cm channels
  index_t d_in_proj() const { return d_inner() + conv_dim() + heads(); }  // z | xBC | dt
};

struct Mamba2Weights {
  Matrix in_proj;        // [d_in_proj, d_model]
  Tensor<float, 2> conv_weight;  // [conv_dim, W]
  Tensor<float, 1> conv_bias;    // [conv_dim]
  Tensor<float, 1> dt_bias;      // [H]
  Tensor<float, 1> A;            // [H], A = -exp(A_log)
  Tensor<float, 1> D;            // [H]
  Tensor<float, 1> norm_weight;  // [d_inner]
  Matrix out_proj;       // [d_model, d_inner]

  explicit Mamba2Weights(const Mamba2Config& c)
      : in_proj(c.d_in_proj(), c.d_model),
        conv_weight({c.conv_dim(), c.d_conv}),
        conv_bias({c.conv_dim()}),
        dt_bias({c.heads()}),
        A({c.heads()}),
        D({c.heads()}),
        norm_weight({c.d_inner()}),
        out_proj(c.d_model, c.d_inner()) {
    std::mt19937 rng(2024);
    auto uniform = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
    const float in_scale = 1.f / std::sqrt(static_cast<float>(c.d_model));
    const float out_scale = 1.f / std::sqrt(static_cast<float>(c.d_inner()));
    for (index_t i = 0; i < in_proj.size(); ++i) in_proj.data()[i] = uniform(-in_scale, in_scale);
    for (float& w : conv_weight) w = uniform(-0.5f, 0.5f);
    for (float& w : conv_bias) w = uniform(-0.1f, 0.1f);
    for (index_t h = 0; h < c.heads(); ++h) {
      // As mamba_ssm initializes them: softplus(dt_bias) log-uniform in [0.001, 0.1], A in [-16, -1].
      const float dt = std::exp(uniform(std::log(0.001f), std::log(0.1f)));
      dt_bias(h) = dt + std::log(-std::expm1(-dt));  // inverse softplus
      A(h) = -uniform(1.f, 16.f);
      D(h) = 1.f;
    }
    for (float& w : norm_weight) w = 1.f + uniform(-0.1f, 0.1f);
    for (index_t i = 0; i < out_proj.size(); ++i) out_proj.data()[i] = uniform(-out_scale, out_scale);
  }
};

// What the layer carries from one call to the next.
struct Mamba2Cache {
  Tensor<float, 3> conv_state;  // [B, W-1, conv_dim]: the last W-1 xBC inputs
  Tensor<float, 4> ssm_state;   // [B, H, P, N]
  Mamba2Cache(const Mamba2Config& c, index_t batch)
      : conv_state({batch, c.d_conv - 1, c.conv_dim()}), ssm_state({batch, c.heads(), c.head_dim, c.d_state}) {}
};

// out[r, :] = in[r, :] W^T for every row r: one GEMM on zero-copy Eigen maps of the views.
void project(const ConstView<float, 2>& in, const Matrix& weight, const TensorView<float, 2>& out) {
  seqmix::as_matrix(out).noalias() = seqmix::as_matrix(in) * weight.transpose();
}

// Channels [begin, begin + heads*dim) of a [..., channels] view, seen as [..., heads, dim]. No copy:
// only the strides change.
template <std::size_t R>
ConstView<float, R + 1> split_heads(const ConstView<float, R>& v, index_t begin, index_t heads, index_t dim) {
  std::array<index_t, R + 1> shape{}, strides{};
  for (std::size_t d = 0; d + 1 < R; ++d) shape[d] = v.size(d), strides[d] = v.stride(d);
  shape[R - 1] = heads, strides[R - 1] = dim * v.stride(R - 1);
  shape[R] = dim, strides[R] = v.stride(R - 1);
  return ConstView<float, R + 1>(v.data() + begin * v.stride(R - 1), shape, strides);
}

// y <- rmsnorm(y * silu(z)) * weight over each group of d_inner / G channels (mamba_ssm's
// RMSNormGated with norm_before_gate=False), for rows of [rows, d_inner].
void gated_rms_norm(const TensorView<float, 2>& y, const ConstView<float, 2>& z, const Mamba2Config& c,
                    const Tensor<float, 1>& weight) {
  const index_t group = c.d_inner() / c.groups;
  for (index_t r = 0; r < y.size(0); ++r)
    for (index_t g0 = 0; g0 < c.d_inner(); g0 += group) {
      double sum_sq = 0.0;
      for (index_t i = g0; i < g0 + group; ++i) {
        const float zi = z(r, i);
        y(r, i) *= zi / (1.f + std::exp(-zi));
        sum_sq += static_cast<double>(y(r, i)) * y(r, i);
      }
      const float rstd = 1.f / std::sqrt(static_cast<float>(sum_sq / group) + c.norm_eps);
      for (index_t i = g0; i < g0 + group; ++i) y(r, i) *= rstd * weight(i);
    }
}

class Mamba2Layer {
 public:
  Mamba2Layer(const Mamba2Config& config, const seqmix::Executor& executor)
      : c_(config), w_(config), executor_(executor) {}

  // Prefill: u [B,T,d_model] -> out [B,T,d_model], continuing from `cache` and updating it.
  void forward(const ConstView<float, 3>& u, const TensorView<float, 3>& out, Mamba2Cache& cache) const {
    const index_t B = u.size(0), T = u.size(1), H = c_.heads(), P = c_.head_dim, N = c_.d_state, G = c_.groups;
    // 1. In-projection of every token: [B, T, d_in_proj], columns z | xBC | dt.
    Tensor<float, 3> zxbcdt({B, T, c_.d_in_proj()});
    for (index_t b = 0; b < B; ++b) project(u[b], w_.in_proj, zxbcdt.view()[b]);
    const ConstView<float, 3> proj = zxbcdt.view();
    const ConstView<float, 3> z = proj.slice(2, 0, c_.d_inner());
    const ConstView<float, 3> xBC = proj.slice(2, c_.d_inner(), c_.conv_dim());
    const ConstView<float, 3> dt = proj.slice(2, c_.d_inner() + c_.conv_dim(), H);

    // 2. Depthwise causal conv + SiLU over x | Bm | Cm; the conv state is carried in place.
    Tensor<float, 3> xBC_conv({B, T, c_.conv_dim()});
    seqmix::CausalConv1dOptions conv_options;
    conv_options.activation = seqmix::ConvActivation::silu;
    seqmix::causal_conv1d({xBC, w_.conv_weight.view(), w_.conv_bias.view(), cache.conv_state.view(), {}},
                          {xBC_conv.view(), cache.conv_state.view(), {}}, conv_options, executor_);

    // 3. SSD over the heads, from the cached state; z is not passed: it gates the norm instead.
    const ConstView<float, 3> conv = xBC_conv.view();
    Tensor<float, 4> y({B, T, H, P});
    seqmix::SsdInputs in;
    in.x = split_heads<3>(conv, 0, H, P);
    in.Bm = split_heads<3>(conv, c_.d_inner(), G, N);
    in.Cm = split_heads<3>(conv, c_.d_inner() + G * N, G, N);
    in.dt = dt;
    in.A = w_.A.view();
    in.D = w_.D.view();
    in.dt_bias = w_.dt_bias.view();
    in.initial_state = cache.ssm_state.view();
    seqmix::ssd(in, {y.view(), cache.ssm_state.view(), {}}, ssd_options(), executor_);

    // 4. Gated RMSNorm, 5. out-projection; y's heads read as d_inner channels per token.
    for (index_t b = 0; b < B; ++b) {
      const TensorView<float, 2> y_rows = y.view()[b].reshape<2>({T, c_.d_inner()});
      gated_rms_norm(y_rows, z[b], c_, w_.norm_weight);
      project(y_rows, w_.out_proj, out[b]);
    }
  }

  // Decode: one token per batch row, u [B,d_model] -> out [B,d_model], updating `cache`.
  void step(const ConstView<float, 2>& u, const TensorView<float, 2>& out, Mamba2Cache& cache) const {
    const index_t B = u.size(0), H = c_.heads(), P = c_.head_dim, N = c_.d_state, G = c_.groups;
    Tensor<float, 2> zxbcdt({B, c_.d_in_proj()});
    project(u, w_.in_proj, zxbcdt.view());
    const ConstView<float, 2> proj = zxbcdt.view();
    const ConstView<float, 2> z = proj.slice(1, 0, c_.d_inner());
    const ConstView<float, 2> xBC = proj.slice(1, c_.d_inner(), c_.conv_dim());
    const ConstView<float, 2> dt = proj.slice(1, c_.d_inner() + c_.conv_dim(), H);

    Tensor<float, 2> xBC_conv({B, c_.conv_dim()});
    seqmix::CausalConv1dOptions conv_options;
    conv_options.activation = seqmix::ConvActivation::silu;
    seqmix::causal_conv1d_step({xBC, w_.conv_weight.view(), w_.conv_bias.view(), {}},
                               {xBC_conv.view(), cache.conv_state.view()}, conv_options, executor_);

    const ConstView<float, 2> conv = xBC_conv.view();
    Tensor<float, 3> y({B, H, P});
    seqmix::SsdStepInputs in;
    in.x = split_heads<2>(conv, 0, H, P);
    in.Bm = split_heads<2>(conv, c_.d_inner(), G, N);
    in.Cm = split_heads<2>(conv, c_.d_inner() + G * N, G, N);
    in.dt = dt;
    in.A = w_.A.view();
    in.D = w_.D.view();
    in.dt_bias = w_.dt_bias.view();
    seqmix::ssd_step(in, {y.view(), cache.ssm_state.view()}, ssd_options(), executor_);

    const TensorView<float, 2> y_rows = y.view().reshape<2>({B, c_.d_inner()});
    gated_rms_norm(y_rows, z, c_, w_.norm_weight);
    project(y_rows, w_.out_proj, out);
  }

 private:
  static seqmix::SsdOptions ssd_options() {
    seqmix::SsdOptions options;
    options.dt_softplus = true;  // dt = softplus(dt + dt_bias), as in Mamba-2
    return options;
  }
  Mamba2Config c_;
  Mamba2Weights w_;
  const seqmix::Executor& executor_;
};

template <std::size_t R>
float max_abs_diff(const Tensor<float, R>& a, const Tensor<float, R>& b) {
  float m = 0.f;
  for (index_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}

}  // namespace

int main() {
  const Mamba2Config config;
  const index_t batch = 2, prompt = 80, prefix = 50;  // the last 30 tokens go through step()
  seqmix::ThreadPool pool(2);
  const Mamba2Layer layer(config, pool);

  Tensor<float, 3> u({batch, prompt, config.d_model});
  std::mt19937 rng(7);
  for (float& v : u) v = std::normal_distribution<float>(0.f, 1.f)(rng);

  // (a) The whole prompt in one call, from an empty cache.
  Mamba2Cache cache_a(config, batch);
  Tensor<float, 3> out_a({batch, prompt, config.d_model});
  layer.forward(u.view(), out_a.view(), cache_a);

  // (b) A prefix in one call, then the remaining tokens one at a time.
  Mamba2Cache cache_b(config, batch);
  Tensor<float, 3> out_b({batch, prompt, config.d_model});
  layer.forward(u.view().slice(1, 0, prefix), out_b.view().slice(1, 0, prefix), cache_b);
  Tensor<float, 2> u_t({batch, config.d_model}), out_t({batch, config.d_model});
  for (index_t t = prefix; t < prompt; ++t) {
    seqmix::copy(u.view().select(1, t).as_const(), u_t.view());
    layer.step(u_t.view(), out_t.view(), cache_b);
    seqmix::copy(out_t.view().as_const(), out_b.view().select(1, t));
  }

  const float out_diff = max_abs_diff(out_a, out_b);
  const float ssm_diff = max_abs_diff(cache_a.ssm_state, cache_b.ssm_state);
  const float conv_diff = max_abs_diff(cache_a.conv_state, cache_b.conv_state);
  float out_max = 0.f;
  for (float v : out_a) out_max = std::max(out_max, std::abs(v));
  std::printf("Mamba-2 mixer: d_model %td, %td heads of %td, d_state %td, batch %td, %td tokens (%s)\n",
              config.d_model, config.heads(), config.head_dim, config.d_state, batch, prompt, seqmix::simd::arch_name());
  std::printf("one call vs %td-token prefill + %td steps: max|out diff| %.2e (max|out| %.3f), "
              "ssm state %.2e, conv state %.2e\n",
              prefix, prompt - prefix, out_diff, out_max, ssm_diff, conv_diff);
  const bool ok = out_diff <= 1e-4f * std::max(1.f, out_max) && ssm_diff <= 1e-4f && conv_diff == 0.f;
  std::printf("%s\n", ok ? "OK: both paths agree" : "MISMATCH");
  return ok ? 0 : 1;
}
