// Writes the conformance cases of ttt_linear and ttt_mlp into <golden>/<op>/<case>/ (tests/golden/README.md),
// computed by plain double-precision loops written here from the TTT paper's dual form (Sun et
// al. 2024, section 2.5; docs/operators.md section 12): per mini-batch Z = X W_0, the gradient
// G = dl/dZ of every token at W_0, then q_t W_t = q_t W_0 - sum_{s <= t} c_t eta_s (q_t . k_s) G_s
// and W_0 - c_last sum_s eta_s k_s^T G_s. The LayerNorm's backward is taken here through its
// explicit Jacobian dxhat_i/dz_j = ((i == j) - 1/n) / sigma - xhat_i xhat_j / (n sigma), not
// the reduced formula the operators use. With an inner bias (f(x) = x W + b, the TTT authors'
// TTT-Linear), Z = X W_0 + b_0, query t adds b_0 - c_t sum_{s <= t} eta_s G_s and the bias
// update is b_0 - c_last sum_s eta_s G_s. ttt_mlp (f(x) = gelu(x W1) W2, the paper's dual form
// for both layers) likewise, with biases (gelu(x W1 + b1) W2 + b2, the authors' TTT-MLP) each
// layer's bias read and updated as ttt_linear's with that layer's gradient G1 or G2. Nothing of seqmix is used but its .npy writer.
//
//   g++ -std=c++17 -O2 -I include tools/golden_ttt.cpp -o golden_ttt
//   ./golden_ttt tests/golden
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_ttt.cpp: float64 loops of the TTT paper's dual form (docs/operators.md section 12), the "
    "LayerNorm backward through its explicit Jacobian, independent of seqmix's operators";

using Vec = std::vector<double>;

// y = gamma * (z - mean) / sigma + beta; with dy given, returns dl/dz = J^T (gamma * dy).
Vec layer_norm(const Vec& z, const Vec& gamma, const Vec& beta, double eps, const Vec* dy = nullptr) {
  const std::size_t n = z.size();
  double mean = 0, var = 0;
  for (double x : z) mean += x;
  mean /= double(n);
  for (double x : z) var += (x - mean) * (x - mean);
  var /= double(n);
  const double sigma = std::sqrt(var + eps);
  Vec xh(n), y(n);
  for (std::size_t i = 0; i < n; ++i) xh[i] = (z[i] - mean) / sigma, y[i] = gamma[i] * xh[i] + beta[i];
  if (dy == nullptr) return y;
  Vec dz(n, 0.0);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t i = 0; i < n; ++i) {
      const double jac = ((i == j ? 1.0 : 0.0) - 1.0 / double(n)) / sigma - xh[i] * xh[j] / (double(n) * sigma);
      dz[j] += (*dy)[i] * gamma[i] * jac;
    }
  return dz;
}

// Row t of head h, batch b of a [B,T,H,K] array.
Vec head_row(Array& x, index_t b, index_t t, index_t h, index_t T, index_t H, index_t K) {
  Vec r(K);
  for (index_t j = 0; j < K; ++j) r[j] = x.at(((b * T + t) * H + h) * K + j);
  return r;
}

// The position scales c_i = 1 / (i + 1) of a mini-batch of bs, rounded to float as stored.
Array position_scales(index_t bs) {
  Array scale = zeros({bs});
  for (index_t i = 0; i < bs; ++i) scale.at(i) = double(static_cast<float>(1.0 / double(i + 1)));
  return scale;
}

// dl/dz of the inner loss 1/2 ||LN(z) + k - v||^2 at the inner model's output z.
Vec residual_grad(const Vec& z, const Vec& k, const Vec& v, const Vec& gamma, const Vec& beta, double eps) {
  Vec dy = layer_norm(z, gamma, beta, eps);
  for (std::size_t j = 0; j < dy.size(); ++j) dy[j] += k[j] - v[j];  // d(1/2 ||LN + k - v||^2)/dLN
  return layer_norm(z, gamma, beta, eps, &dy);
}

struct TttCase {
  std::string name;
  index_t B, T, H, K, mini_batch;
  bool state, scale, bias = false;
};

void ttt_linear_case(const fs::path& root, const TttCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, H = c.H, K = c.K, bs = c.mini_batch;
  const double a = 1.0 / std::sqrt(double(K)), eps = 1e-6;
  Array q = random_array({B, T, H, K}, rng, -1, 1), k = random_array({B, T, H, K}, rng, -1, 1);
  Array v = random_array({B, T, H, K}, rng, -1, 1), eta = random_array({B, T, H}, rng, 0, 1.0 / double(K));
  Array gamma = random_array({H, K}, rng, 0.5, 1.5), beta = random_array({H, K}, rng, -0.2, 0.2);
  Array w0 = random_array({B, H, K, K}, rng, -a, a), scale = position_scales(bs);
  Array z = zeros({B, T, H, K}), wf = zeros({B, H, K, K});
  // Drawn only for a bias case, so that the other cases keep their draws.
  Array b0 = c.bias ? random_array({B, H, K}, rng, -0.5, 0.5) : zeros({B, H, K}), bf = zeros({B, H, K});
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      Vec W(K * K), g(K), be(K);
      for (index_t j = 0; j < K; ++j) g[j] = gamma.at(h * K + j), be[j] = beta.at(h * K + j);
      for (index_t e = 0; e < K * K; ++e) W[e] = c.state ? w0.at((b * H + h) * K * K + e) : 0.0;
      Vec bias(K);
      for (index_t j = 0; j < K; ++j) bias[j] = b0.at((b * H + h) * K + j);
      const auto row = [&](Array& x, index_t t) { return head_row(x, b, t, h, T, H, K); };
      for (index_t t0 = 0; t0 < T; t0 += bs) {
        const index_t n = std::min(bs, T - t0);
        std::vector<Vec> X(n), Q(n), G(n);
        Vec e(n), cs(n);
        for (index_t s = 0; s < n; ++s) {
          X[s] = row(k, t0 + s), Q[s] = row(q, t0 + s);
          const Vec V = row(v, t0 + s);
          e[s] = eta.at((b * T + t0 + s) * H + h), cs[s] = c.scale ? scale.at(s) : 1.0;
          Vec zs = bias;
          for (index_t i = 0; i < K; ++i)
            for (index_t j = 0; j < K; ++j) zs[j] += X[s][i] * W[i * K + j];
          G[s] = residual_grad(zs, X[s], V, g, be, eps);
        }
        for (index_t t = 0; t < n; ++t) {
          Vec zq = bias;
          for (index_t i = 0; i < K; ++i)
            for (index_t j = 0; j < K; ++j) zq[j] += Q[t][i] * W[i * K + j];
          for (index_t s = 0; s <= t; ++s) {
            double qk = 0;
            for (index_t i = 0; i < K; ++i) qk += Q[t][i] * X[s][i];
            // The weights' term and, with a bias, the bias's own (its gradient is G_s).
            for (index_t j = 0; j < K; ++j) zq[j] -= cs[t] * e[s] * (qk + (c.bias ? 1.0 : 0.0)) * G[s][j];
          }
          const Vec y = layer_norm(zq, g, be, eps);
          for (index_t j = 0; j < K; ++j) z.at(((b * T + t0 + t) * H + h) * K + j) = Q[t][j] + y[j];
        }
        for (index_t s = 0; s < n; ++s)
          for (index_t i = 0; i < K; ++i)
            for (index_t j = 0; j < K; ++j) W[i * K + j] -= cs[n - 1] * e[s] * X[s][i] * G[s][j];
        if (c.bias)
          for (index_t s = 0; s < n; ++s)
            for (index_t j = 0; j < K; ++j) bias[j] -= cs[n - 1] * e[s] * G[s][j];
      }
      for (index_t e2 = 0; e2 < K * K; ++e2) wf.at((b * H + h) * K * K + e2) = W[e2];
      for (index_t j = 0; j < K; ++j) bf.at((b * H + h) * K + j) = bias[j];
    }
  const fs::path dir = root / "ttt_linear" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "eta", eta);
  write(dir, "ln_weight", gamma), write(dir, "ln_bias", beta), write(dir, "z", z), write(dir, "final_w", wf);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"eta\": \"eta.npy\", "
                       "\"ln_weight\": \"ln_weight.npy\", \"ln_bias\": \"ln_bias.npy\"";
  if (c.state) inputs += ", \"initial_w\": \"initial_w.npy\"", write(dir, "initial_w", w0);
  if (c.scale) inputs += ", \"token_scale\": \"token_scale.npy\"", write(dir, "token_scale", scale);
  std::string params = "\"mini_batch\": " + std::to_string(bs) + ", \"ln_eps\": 1e-06";
  std::string outputs = "\"z\": \"z.npy\", \"final_w\": \"final_w.npy\"";
  if (c.bias) {
    params += ", \"inner_bias\": \"trained\"";
    inputs += ", \"initial_b\": \"initial_b.npy\"", write(dir, "initial_b", b0);
    outputs += ", \"final_b\": \"final_b.npy\"", write(dir, "final_b", bf);
  }
  write_case(dir, "ttt_linear", params, inputs, outputs, "1e-05", kSource);
}

// gelu with the tanh approximation (the TTT authors' gelu_tanh) and its derivative.
double gelu(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
double gelu_prime(double x) {
  const double u = std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x), th = std::tanh(u);
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * std::sqrt(2 / M_PI) * (1 + 3 * 0.044715 * x * x);
}

struct MlpCase {
  std::string name;
  index_t B, T, H, K, M, mini_batch;
  bool scale, bias = false;
};

// The dual form of TTT-MLP (f(x) = gelu(x W1) W2): per mini-batch, at (W1_0, W2_0),
// G2 = dl/dZ2, G1 = (G2 W2^T) * gelu'(Z1); queries: Hq_t = gelu(q_t W1_0 - sum_{s<=t} c_t eta_s
// (q_t . k_s) G1_s), out_t = Hq_t W2_0 - sum_{s<=t} c_t eta_s (Hq_t . gelu(Z1_s)) G2_s.
void ttt_mlp_case(const fs::path& root, const MlpCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, H = c.H, K = c.K, M = c.M, bs = c.mini_batch;
  const double eps = 1e-6, a1 = 1.0 / std::sqrt(double(K)), a2 = 1.0 / std::sqrt(double(M));
  Array q = random_array({B, T, H, K}, rng, -1, 1), k = random_array({B, T, H, K}, rng, -1, 1);
  Array v = random_array({B, T, H, K}, rng, -1, 1), eta = random_array({B, T, H}, rng, 0, 1.0 / double(K));
  Array gamma = random_array({H, K}, rng, 0.5, 1.5), beta = random_array({H, K}, rng, -0.2, 0.2);
  Array w1 = random_array({B, H, K, M}, rng, -a1, a1), w2 = random_array({B, H, M, K}, rng, -a2, a2);
  Array scale = position_scales(bs);
  Array z = zeros({B, T, H, K}), f1 = zeros({B, H, K, M}), f2 = zeros({B, H, M, K});
  // Drawn only for a bias case, so that the other cases keep their draws.
  Array b1_0 = c.bias ? random_array({B, H, M}, rng, -0.5, 0.5) : zeros({B, H, M});
  Array b2_0 = c.bias ? random_array({B, H, K}, rng, -0.5, 0.5) : zeros({B, H, K});
  Array fb1 = zeros({B, H, M}), fb2 = zeros({B, H, K});
  const double with_bias = c.bias ? 1.0 : 0.0;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      Vec W1(K * M), W2(M * K), g(K), be(K);
      for (index_t j = 0; j < K; ++j) g[j] = gamma.at(h * K + j), be[j] = beta.at(h * K + j);
      for (index_t e = 0; e < K * M; ++e) W1[e] = w1.at((b * H + h) * K * M + e), W2[e] = w2.at((b * H + h) * M * K + e);
      Vec bias1(M), bias2(K);
      for (index_t m = 0; m < M; ++m) bias1[m] = b1_0.at((b * H + h) * M + m);
      for (index_t j = 0; j < K; ++j) bias2[j] = b2_0.at((b * H + h) * K + j);
      const auto row = [&](Array& x, index_t t) { return head_row(x, b, t, h, T, H, K); };
      for (index_t t0 = 0; t0 < T; t0 += bs) {
        const index_t n = std::min(bs, T - t0);
        std::vector<Vec> X(n), Q(n), Hk(n), G1(n), G2(n);
        Vec e(n), cs(n);
        for (index_t s = 0; s < n; ++s) {
          X[s] = row(k, t0 + s), Q[s] = row(q, t0 + s);
          const Vec V = row(v, t0 + s);
          e[s] = eta.at((b * T + t0 + s) * H + h), cs[s] = c.scale ? scale.at(s) : 1.0;
          Vec z1 = bias1, z2 = bias2;
          for (index_t i = 0; i < K; ++i)
            for (index_t m = 0; m < M; ++m) z1[m] += X[s][i] * W1[i * M + m];
          Hk[s] = Vec(M);
          for (index_t m = 0; m < M; ++m) Hk[s][m] = gelu(z1[m]);
          for (index_t m = 0; m < M; ++m)
            for (index_t j = 0; j < K; ++j) z2[j] += Hk[s][m] * W2[m * K + j];
          G2[s] = residual_grad(z2, X[s], V, g, be, eps);
          G1[s] = Vec(M, 0.0);
          for (index_t m = 0; m < M; ++m) {
            for (index_t j = 0; j < K; ++j) G1[s][m] += G2[s][j] * W2[m * K + j];
            G1[s][m] *= gelu_prime(z1[m]);
          }
        }
        for (index_t t = 0; t < n; ++t) {
          Vec hq = bias1, zq = bias2;
          for (index_t i = 0; i < K; ++i)
            for (index_t m = 0; m < M; ++m) hq[m] += Q[t][i] * W1[i * M + m];
          for (index_t s = 0; s <= t; ++s) {
            double qk = 0;
            for (index_t i = 0; i < K; ++i) qk += Q[t][i] * X[s][i];
            for (index_t m = 0; m < M; ++m) hq[m] -= cs[t] * e[s] * (qk + with_bias) * G1[s][m];
          }
          for (index_t m = 0; m < M; ++m) hq[m] = gelu(hq[m]);
          for (index_t m = 0; m < M; ++m)
            for (index_t j = 0; j < K; ++j) zq[j] += hq[m] * W2[m * K + j];
          for (index_t s = 0; s <= t; ++s) {
            double hh = 0;
            for (index_t m = 0; m < M; ++m) hh += hq[m] * Hk[s][m];
            for (index_t j = 0; j < K; ++j) zq[j] -= cs[t] * e[s] * (hh + with_bias) * G2[s][j];
          }
          const Vec y = layer_norm(zq, g, be, eps);
          for (index_t j = 0; j < K; ++j) z.at(((b * T + t0 + t) * H + h) * K + j) = Q[t][j] + y[j];
        }
        for (index_t s = 0; s < n; ++s) {
          const double f = cs[n - 1] * e[s];
          for (index_t i = 0; i < K; ++i)
            for (index_t m = 0; m < M; ++m) W1[i * M + m] -= f * X[s][i] * G1[s][m];
          for (index_t m = 0; m < M; ++m)
            for (index_t j = 0; j < K; ++j) W2[m * K + j] -= f * Hk[s][m] * G2[s][j];
          for (index_t m = 0; m < M; ++m) bias1[m] -= f * with_bias * G1[s][m];
          for (index_t j = 0; j < K; ++j) bias2[j] -= f * with_bias * G2[s][j];
        }
      }
      for (index_t e2 = 0; e2 < K * M; ++e2) f1.at((b * H + h) * K * M + e2) = W1[e2], f2.at((b * H + h) * M * K + e2) = W2[e2];
      for (index_t m = 0; m < M; ++m) fb1.at((b * H + h) * M + m) = bias1[m];
      for (index_t j = 0; j < K; ++j) fb2.at((b * H + h) * K + j) = bias2[j];
    }
  const fs::path dir = root / "ttt_mlp" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "eta", eta);
  write(dir, "ln_weight", gamma), write(dir, "ln_bias", beta), write(dir, "initial_w1", w1), write(dir, "initial_w2", w2);
  write(dir, "z", z), write(dir, "final_w1", f1), write(dir, "final_w2", f2);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"eta\": \"eta.npy\", "
                       "\"ln_weight\": \"ln_weight.npy\", \"ln_bias\": \"ln_bias.npy\", "
                       "\"initial_w1\": \"initial_w1.npy\", \"initial_w2\": \"initial_w2.npy\"";
  if (c.scale) inputs += ", \"token_scale\": \"token_scale.npy\"", write(dir, "token_scale", scale);
  std::string params = "\"mini_batch\": " + std::to_string(bs) + ", \"ln_eps\": 1e-06";
  std::string outputs = "\"z\": \"z.npy\", \"final_w1\": \"final_w1.npy\", \"final_w2\": \"final_w2.npy\"";
  if (c.bias) {
    params += ", \"inner_bias\": \"trained\"";
    inputs += ", \"initial_b1\": \"initial_b1.npy\", \"initial_b2\": \"initial_b2.npy\"";
    write(dir, "initial_b1", b1_0), write(dir, "initial_b2", b2_0);
    outputs += ", \"final_b1\": \"final_b1.npy\", \"final_b2\": \"final_b2.npy\"";
    write(dir, "final_b1", fb1), write(dir, "final_b2", fb2);
  }
  write_case(dir, "ttt_mlp", params, inputs, outputs, "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  ttt_linear_case(root, {"b1_t40_h2_k8", 1, 40, 2, 8, 16, false, false}, rng);
  ttt_linear_case(root, {"b2_t37_h1_k16_state_scale", 2, 37, 1, 16, 16, true, true}, rng);
  ttt_linear_case(root, {"b1_t21_h2_k8_mb4_state", 1, 21, 2, 8, 4, true, false}, rng);
  ttt_mlp_case(root, {"b1_t37_h2_k8_m32", 1, 37, 2, 8, 32, 16, false}, rng);
  ttt_mlp_case(root, {"b2_t20_h1_k4_m16_mb8_scale", 2, 20, 1, 4, 16, 8, true}, rng);
  // Last, so that the cases above keep their random draws.
  ttt_linear_case(root, {"b2_t37_h2_k8_state_scale_bias", 2, 37, 2, 8, 16, true, true, true}, rng);
  ttt_mlp_case(root, {"b2_t37_h2_k8_m32_scale_bias", 2, 37, 2, 8, 32, 16, true, true}, rng);
  return 0;
}
