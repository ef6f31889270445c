// Writes the conformance cases of titans (linear memory) into <golden>/titans/<case>/
// (tests/golden/README.md), computed by plain double-precision loops of the paper's formulas
// (Behrouz et al. 2024, eqs. 13-14) in the paper's orientation: the memory is a [V,K] matrix
// W applied as W k, the inner loss ||W k - v||^2 has the gradient 2 (W k - v) k^T, and
//   S_t = eta_t S_{t-1} - theta_t * 2 (W_{t-1} k_t - v_t) k_t^T,   W_t = (1 - alpha_t) W_{t-1} + S_t,
//   y_t = scale * W_t q_t.
// Miras cases replace 2 (W k - v) by the derivative of the elementwise loss (l1, l3, Huber),
// and the retention cases (Behrouz et al. 2025, arXiv 2504.13173) replace the forgetting step:
//   Moneta (eqs. 24-25): A_t = (1 - alpha_t) A_{t-1} + S_t, the gradient and y taken at
//     W = A / ||A||_q^{q-2} (entrywise l_q norm of the whole matrix), A the stored memory;
//   Memora (eq. 27): W_t = softmax((1 - alpha_t) log W_{t-1} + S_t) over each row of W (over the
//     key index; param softmax_axis "key") or each column (over the value index, "value"); no
//     initial memory means the uniform point.
// The files hold seqmix's layout, the transposes M = W^T and momentum S^T ([B,HV,K,V]). Nothing
// of seqmix is used but its .npy writer, so the vectors are independent of the operator.
//
//   g++ -std=c++17 -O2 -I include tools/golden_titans.cpp -o golden_titans
//   ./golden_titans tests/golden
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const double kHuberDelta = 0.125;

const char* kSource =
    "tools/golden_titans.cpp: float64 loops of Titans' linear-memory update (momentum, forgetting, gradient of "
    "||W k - v||^2 written out, memory in the paper's [V,K] orientation), independent of seqmix's operators";

struct TitansCase {
  std::string name;
  index_t B, T, HK, HV, K, V;
  bool state, given_scale;
  std::string loss = "l2";  // Miras' elementwise biases: "l1", "l3", "huber" (delta 0.125)
  bool delta_t = false;     // huber only: a per-token threshold delta_t in [0.02, 0.5] (Yaad), input huber_delta
  std::string retention = "decay";  // or "lq_normalized" (Moneta), "softmax_kl" (Memora)
  double q = 4.0;                   // Moneta's q
  std::string axis = "key";         // Memora: softmax over the key index (rows of W) or "value" (columns of W)
};

// Memora's softmax over the rows (over j, the key index) or the columns (over i) of W [V,K].
void softmax_slices(std::vector<double>& W, index_t V, index_t K, bool over_key) {
  const index_t slices = over_key ? V : K, len = over_key ? K : V;
  for (index_t a = 0; a < slices; ++a) {
    std::vector<double> z(len);
    double mx = -1e300, sum = 0;
    for (index_t b = 0; b < len; ++b) z[b] = over_key ? W[a * K + b] : W[b * K + a], mx = std::max(mx, z[b]);
    for (index_t b = 0; b < len; ++b) sum += z[b] = std::exp(z[b] - mx);
    for (index_t b = 0; b < len; ++b) (over_key ? W[a * K + b] : W[b * K + a]) = z[b] / sum;
  }
}

// Moneta's W = A / ||A||_q^{q-2}, W = 0 while A = 0.
std::vector<double> moneta_read(const std::vector<double>& A, double q) {
  double sum = 0;
  for (double x : A) sum += std::pow(std::abs(x), q);
  const double norm = std::pow(sum, 1.0 / q);
  std::vector<double> W(A.size(), 0.0);
  if (norm > 0)
    for (std::size_t i = 0; i < A.size(); ++i) W[i] = A[i] / std::pow(norm, q - 2.0);
  return W;
}

// d/de of the loss's f(e): l2 e^2, l1 |e|, l3 |e|^3, Huber (delta) e^2/2 inside, delta (|e| - delta/2) outside.
double loss_derivative(const std::string& loss, double e, double delta = kHuberDelta) {
  if (loss == "l1") return e > 0 ? 1.0 : e < 0 ? -1.0 : 0.0;
  if (loss == "l3") return 3.0 * e * std::abs(e);
  if (loss == "huber") return std::abs(e) <= delta ? e : (e > 0 ? delta : -delta);
  return 2.0 * e;
}

void titans_case(const fs::path& root, const TitansCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, HK = c.HK, HV = c.HV, K = c.K, V = c.V, G = HV / HK;
  Array q = random_array({B, T, HK, K}, rng, -1, 1), k = random_array({B, T, HK, K}, rng, -1, 1);
  // Keys scaled to about unit norm, so 2 theta |k|^2 < 1 and the memory stays O(1).
  const double ks = 1.0 / std::sqrt(static_cast<double>(K) / 3.0);
  for (double& x : k.v) x = static_cast<double>(static_cast<float>(x * ks));
  Array v = random_array({B, T, HV, V}, rng, -1, 1);
  Array alpha = random_array({B, T, HV}, rng, 0, 0.3), eta = random_array({B, T, HV}, rng, 0, 0.9);
  Array theta = random_array({B, T, HV}, rng, 0, 0.4);
  Array m0 = random_array({B, HV, K, V}, rng, -0.5, 0.5), s0 = random_array({B, HV, K, V}, rng, -0.2, 0.2);
  const bool moneta = c.retention == "lq_normalized", memora = c.retention == "softmax_kl";
  if (memora)  // Memora's memory is positive
    for (double& x : m0.v) x = static_cast<double>(static_cast<float>(0.05 + std::abs(x)));
  const double scale = c.given_scale ? static_cast<double>(static_cast<float>(0.375)) : 1.0;
  Array delta = c.delta_t ? random_array({B, T, HV}, rng, 0.02, 0.5) : zeros({1});
  Array y = zeros({B, T, HV, V}), mf = zeros({B, HV, K, V}), sf = zeros({B, HV, K, V});
  for (index_t b = 0; b < B; ++b)
    for (index_t hv = 0; hv < HV; ++hv) {
      const index_t h = hv / G;
      // W [V,K] and its momentum, the transposes of the stored [K,V] states.
      std::vector<double> W(V * K), S(V * K), e(V);
      for (index_t i = 0; i < V; ++i)
        for (index_t j = 0; j < K; ++j) {
          const index_t st = ((b * HV + hv) * K + j) * V + i;
          W[i * K + j] = c.state ? m0.at(st) : memora ? 1.0 / double(c.axis == "key" ? K : V) : 0;
          S[i * K + j] = c.state ? s0.at(st) : 0;
        }
      for (index_t t = 0; t < T; ++t) {
        const index_t g = (b * T + t) * HV + hv;
        const index_t qk = ((b * T + t) * HK + h) * K, vo = g * V;
        const std::vector<double> R = moneta ? moneta_read(W, c.q) : W;  // the memory read at t-1
        for (index_t i = 0; i < V; ++i) {
          double wk = 0;
          for (index_t j = 0; j < K; ++j) wk += R[i * K + j] * k.at(qk + j);
          e[i] = wk - v.at(vo + i);
        }
        for (index_t i = 0; i < V; ++i)
          for (index_t j = 0; j < K; ++j) {
            S[i * K + j] = eta.at(g) * S[i * K + j] - theta.at(g) * loss_derivative(c.loss, e[i], c.delta_t ? delta.at(g) : kHuberDelta) * k.at(qk + j);
            const double keep = 1.0 - alpha.at(g);
            if (memora)
              W[i * K + j] = (keep > 0 ? keep * std::log(W[i * K + j]) : 0.0) + S[i * K + j];
            else
              W[i * K + j] = keep * W[i * K + j] + S[i * K + j];
          }
        if (memora) softmax_slices(W, V, K, c.axis == "key");
        const std::vector<double> Rt = moneta ? moneta_read(W, c.q) : W;
        for (index_t i = 0; i < V; ++i) {
          double wq = 0;
          for (index_t j = 0; j < K; ++j) wq += Rt[i * K + j] * q.at(qk + j);
          y.at(vo + i) = scale * wq;
        }
      }
      for (index_t i = 0; i < V; ++i)
        for (index_t j = 0; j < K; ++j) {
          const index_t st = ((b * HV + hv) * K + j) * V + i;
          mf.at(st) = W[i * K + j], sf.at(st) = S[i * K + j];
        }
    }
  const fs::path dir = root / "titans" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v);
  write(dir, "alpha", alpha), write(dir, "eta", eta), write(dir, "theta", theta);
  write(dir, "y", y), write(dir, "final_memory", mf), write(dir, "final_momentum", sf);
  std::string inputs =
      "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"alpha\": \"alpha.npy\", \"eta\": \"eta.npy\", "
      "\"theta\": \"theta.npy\"";
  if (c.delta_t) {
    write(dir, "huber_delta", delta);
    inputs += ", \"huber_delta\": \"huber_delta.npy\"";
  }
  if (c.state) {
    write(dir, "initial_memory", m0), write(dir, "initial_momentum", s0);
    inputs += ", \"initial_memory\": \"initial_memory.npy\", \"initial_momentum\": \"initial_momentum.npy\"";
  }
  std::string params = c.given_scale ? "\"scale\": " + exact(scale) : "";
  if (c.loss != "l2") {
    params += std::string(params.empty() ? "" : ", ") + "\"loss\": \"" + c.loss + "\"";
    if (c.loss == "huber" && !c.delta_t) params += ", \"huber_delta\": " + exact(kHuberDelta);
  }
  if (c.retention != "decay") {
    params += std::string(params.empty() ? "" : ", ") + "\"retention\": \"" + c.retention + "\"";
    if (moneta) params += ", \"retention_q\": " + exact(c.q);
    if (memora) params += ", \"softmax_axis\": \"" + c.axis + "\"";
  }
  write_case(dir, "titans", params, inputs,
             "\"y\": \"y.npy\", \"final_memory\": \"final_memory.npy\", \"final_momentum\": \"final_momentum.npy\"",
             "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  titans_case(root, {"b1_t70_hk1_hv2_k16_v8", 1, 70, 1, 2, 16, 8, false, false}, rng);
  titans_case(root, {"b2_t33_h1_k8_v12_state_scale", 2, 33, 1, 1, 8, 12, true, true}, rng);
  titans_case(root, {"miras_l1_b1_t40_h2_k8_v8_state", 1, 40, 2, 2, 8, 8, true, false, "l1"}, rng);
  titans_case(root, {"miras_l3_b1_t40_hk1_hv2_k8_v6", 1, 40, 1, 2, 8, 6, false, false, "l3"}, rng);
  titans_case(root, {"miras_huber_b2_t30_h1_k12_v8_state", 2, 30, 1, 1, 12, 8, true, false, "huber"}, rng);
  titans_case(root, {"miras_yaad_delta_t_b2_t29_hk1_hv2_k8_v6_state", 2, 29, 1, 2, 8, 6, true, false, "huber", true}, rng);
  // Retention cases last: the earlier cases keep their draws.
  titans_case(root, {"moneta_q4_b2_t40_hk1_hv2_k8_v6_state", 2, 40, 1, 2, 8, 6, true, false, "l2", false, "lq_normalized", 4.0}, rng);
  titans_case(root, {"moneta_q3_l3_b1_t37_h1_k8_v8", 1, 37, 1, 1, 8, 8, false, true, "l3", false, "lq_normalized", 3.0}, rng);
  titans_case(root, {"memora_key_b1_t41_h2_k8_v6_state", 1, 41, 2, 2, 8, 6, true, false, "l2", false, "softmax_kl", 4.0, "key"}, rng);
  titans_case(root, {"memora_value_b2_t30_hk1_hv2_k6_v8", 2, 30, 1, 2, 6, 8, false, false, "huber", false, "softmax_kl", 4.0, "value"}, rng);
  return 0;
}
