// Writes the conformance cases of titans_mlp (Titans' two-layer MLP memory with momentum, mini-batch
// form) into <golden>/titans_mlp/<case>/ (tests/golden/README.md), computed by plain
// double-precision loops of the paper's formulas (Behrouz et al. 2024, eqs. 13-14 and section 3.2)
// in the column orientation: the memory maps a key to
//   M(k) = k + P gelu(U k),   U [M,K], P [K,M]   (seqmix stores W1 = U^T [K,M], W2 = P^T [M,K]),
// the inner loss ||M(k) - v||^2 has the gradients, with e = M(k) - v and h = gelu(U k),
//   dl/dP = 2 e h^T,   dl/dU = ((2 P^T e) o gelu'(U k)) k^T,
// every gradient of a mini-batch of b tokens is taken at the memory of the mini-batch's start, and
//   S_t = eta_t S_{t-1} - theta_t grad_t,   (U, P)_t = (1 - alpha_t) (U, P)_{t-1} + S_t,
//   y_t = q_t + P_t gelu(U_t q_t).
// Miras cases (Behrouz et al. 2025, "It's All Connected") replace the loss by sum_i f(e_i) with an
// elementwise attentional bias, so 2 e becomes f'(e) in both gradients: l1 (sign e), l3 (3 e |e|),
// Huber with a constant threshold or Yaad's per-token delta_t (e inside [-delta, delta], else
// +-delta). gelu is the tanh form.
// Retention cases (Behrouz et al. 2025, arXiv 2504.13173) replace the forgetting step of each
// matrix X in {U, P}, still with every gradient of a mini-batch at the memory read at its start:
//   Moneta (eqs. 24-25): A_t = (1 - alpha_t) A_{t-1} + S_t, the memory read X_t = A_t / ||A_t||_q^{q-2}
//     (entrywise l_q norm of the whole matrix; seqmix stores A);
//   Memora (eq. 27): X_t = softmax((1 - alpha_t) log X_{t-1} + S_t) over each row of U and P
//     (each hidden unit's / output's weights over its inputs; param softmax_axis "key") or each
//     column ("value"); the initial U, P are drawn as exp(2 x) normalized onto those simplices.
// Nothing of seqmix is used but its .npy writer, so the vectors are independent of the operator.
//
//   g++ -std=c++17 -O2 -I include tools/golden_titans_mlp.cpp -o golden_titans_mlp
//   ./golden_titans_mlp tests/golden
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_titans_mlp.cpp: float64 loops of Titans' MLP-memory update (M(k) = k + P gelu(U k), gradients of "
    "||M(k) - v||^2 written out in the column orientation, taken at each mini-batch's first memory; momentum, "
    "forgetting), independent of seqmix's operators";

struct MlpCase {
  std::string name;
  index_t B, T, HK, HV, K, M, mini_batch;
  bool momentum;  // initial momenta given
  std::string loss = "l2";  // Miras' elementwise biases: "l1", "l3", "huber" (delta kHuberDelta)
  bool delta_t = false;     // huber only: a per-token threshold delta_t in [0.05, 0.5] (Yaad), input huber_delta
  std::string retention = "decay";  // or "lq_normalized" (Moneta), "softmax_kl" (Memora)
  double q = 4.0;                   // Moneta's q
  std::string axis = "key";         // Memora: softmax over each row of U, P ("key") or each column ("value")
};

// Moneta's read A / ||A||_q^{q-2} (0 for A = 0).
std::vector<double> moneta_read(const std::vector<double>& A, double q) {
  double sum = 0;
  for (double x : A) sum += std::pow(std::abs(x), q);
  const double f = sum > 0 ? std::pow(sum, -(q - 2.0) / q) : 0.0;
  std::vector<double> W = A;
  for (double& x : W) x *= f;
  return W;
}

// Memora's softmax of X [R,C] (row-major) over each row (each_row false: over each column).
void softmax_slices(std::vector<double>& X, index_t R, index_t C, bool each_row) {
  const index_t slices = each_row ? R : C, len = each_row ? C : R;
  for (index_t i = 0; i < slices; ++i) {
    double mx = -INFINITY, sum = 0;
    for (index_t j = 0; j < len; ++j) mx = std::max(mx, X[each_row ? i * C + j : j * C + i]);
    for (index_t j = 0; j < len; ++j) sum += (X[each_row ? i * C + j : j * C + i] = std::exp(X[each_row ? i * C + j : j * C + i] - mx));
    for (index_t j = 0; j < len; ++j) X[each_row ? i * C + j : j * C + i] /= sum;
  }
}

const double kHuberDelta = 0.125;

// d/de of f(e): l2 e^2, l1 |e|, l3 |e|^3, Huber (delta) e^2/2 inside, delta (|e| - delta/2) outside.
double loss_derivative(const std::string& loss, double e, double delta) {
  if (loss == "l1") return e > 0 ? 1.0 : e < 0 ? -1.0 : 0.0;
  if (loss == "l3") return 3.0 * e * std::abs(e);
  if (loss == "huber") return std::abs(e) <= delta ? e : (e > 0 ? delta : -delta);
  return 2.0 * e;
}

double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
double gelu_prime(double x) {
  const double c = std::sqrt(2.0 / M_PI), u = c * (x + 0.044715 * x * x * x), th = std::tanh(u);
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

void mlp_case(const fs::path& root, const MlpCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, HK = c.HK, HV = c.HV, K = c.K, M = c.M, G = HV / HK;
  Array q = random_array({B, T, HK, K}, rng, -1, 1), k = random_array({B, T, HK, K}, rng, -1, 1);
  // Keys and queries scaled to about unit norm so the inner steps stay small.
  const double ks = 1.0 / std::sqrt(static_cast<double>(K) / 3.0);
  for (double& x : k.v) x = static_cast<double>(static_cast<float>(x * ks));
  for (double& x : q.v) x = static_cast<double>(static_cast<float>(x * ks));
  Array v = random_array({B, T, HV, K}, rng, -1, 1);
  Array alpha = random_array({B, T, HV}, rng, 0, 0.2), eta = random_array({B, T, HV}, rng, 0, 0.9);
  Array theta = random_array({B, T, HV}, rng, 0, 0.2);
  const double r1 = 1.0 / std::sqrt(double(K)), r2 = 1.0 / std::sqrt(double(M));
  Array w1 = random_array({B, HV, K, M}, rng, -r1, r1), w2 = random_array({B, HV, M, K}, rng, -r2, r2);
  Array s10 = random_array({B, HV, K, M}, rng, -0.05, 0.05), s20 = random_array({B, HV, M, K}, rng, -0.05, 0.05);
  // Drawn last, only for delta_t cases, so the earlier cases' draws are unchanged.
  Array delta = c.delta_t ? random_array({B, T, HV}, rng, 0.05, 0.5) : zeros({B, T, HV});
  Array y = zeros({B, T, HV, K}), w1f = zeros({B, HV, K, M}), w2f = zeros({B, HV, M, K});
  Array s1f = zeros({B, HV, K, M}), s2f = zeros({B, HV, M, K});
  const bool moneta = c.retention == "lq_normalized", memora = c.retention == "softmax_kl";
  if (moneta)  // forgetting shrinks A and so inflates the read A / ||A||^{q-2} (q > 3): gentle gates
    for (double& x : alpha.v) x = static_cast<double>(static_cast<float>(x * 0.1));  // the stored float
  for (index_t b = 0; b < B; ++b)
    for (index_t hv = 0; hv < HV; ++hv) {
      const index_t h = hv / G;
      // U [M,K] = W1^T, P [K,M] = W2^T and their momenta SU, SP.
      std::vector<double> U(M * K), P(K * M), SU(M * K), SP(K * M);
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const index_t a1 = ((b * HV + hv) * K + i) * M + m, a2 = ((b * HV + hv) * M + m) * K + i;
          U[m * K + i] = w1.at(a1), P[i * M + m] = w2.at(a2);
          SU[m * K + i] = c.momentum ? s10.at(a1) : 0.0, SP[i * M + m] = c.momentum ? s20.at(a2) : 0.0;
        }
      if (memora) {  // Memora's memory on its simplices, written back as the case's initial weights
        for (double& x : U) x = std::exp(2.0 * x);
        for (double& x : P) x = std::exp(2.0 * x);
        softmax_slices(U, M, K, c.axis == "key"), softmax_slices(P, K, M, c.axis == "key");
        for (double& x : U) x = static_cast<double>(static_cast<float>(x));
        for (double& x : P) x = static_cast<double>(static_cast<float>(x));
        for (index_t i = 0; i < K; ++i)
          for (index_t m = 0; m < M; ++m)
            w1.at(((b * HV + hv) * K + i) * M + m) = U[m * K + i], w2.at(((b * HV + hv) * M + m) * K + i) = P[i * M + m];
      }
      for (index_t t0 = 0; t0 < T; t0 += c.mini_batch) {
        const std::vector<double> U0 = moneta ? moneta_read(U, c.q) : U, P0 = moneta ? moneta_read(P, c.q) : P;
        for (index_t t = t0; t < std::min(T, t0 + c.mini_batch); ++t) {
          const index_t g = (b * T + t) * HV + hv, qk = ((b * T + t) * HK + h) * K, vo = g * K;
          std::vector<double> z(M), hid(M), e(K), de(K), dz(M);
          for (index_t m = 0; m < M; ++m) {
            z[m] = 0;
            for (index_t i = 0; i < K; ++i) z[m] += U0[m * K + i] * k.at(qk + i);
            hid[m] = gelu(z[m]);
          }
          for (index_t i = 0; i < K; ++i) {
            e[i] = k.at(qk + i) - v.at(vo + i);
            for (index_t m = 0; m < M; ++m) e[i] += P0[i * M + m] * hid[m];
            de[i] = loss_derivative(c.loss, e[i], c.delta_t ? delta.at(g) : kHuberDelta);  // dl/dM(k)_i
          }
          for (index_t m = 0; m < M; ++m) {
            double s = 0;
            for (index_t i = 0; i < K; ++i) s += P0[i * M + m] * de[i];
            dz[m] = s * gelu_prime(z[m]);
          }
          const double a = 1.0 - alpha.at(g), et = eta.at(g), th = theta.at(g);
          for (index_t m = 0; m < M; ++m)
            for (index_t i = 0; i < K; ++i) {
              SU[m * K + i] = et * SU[m * K + i] - th * dz[m] * k.at(qk + i);
              SP[i * M + m] = et * SP[i * M + m] - th * de[i] * hid[m];
              if (memora) {  // a = 0 forgets log X entirely
                U[m * K + i] = (a == 0 ? 0.0 : a * std::log(U[m * K + i])) + SU[m * K + i];
                P[i * M + m] = (a == 0 ? 0.0 : a * std::log(P[i * M + m])) + SP[i * M + m];
              } else {
                U[m * K + i] = a * U[m * K + i] + SU[m * K + i];
                P[i * M + m] = a * P[i * M + m] + SP[i * M + m];
              }
            }
          if (memora) softmax_slices(U, M, K, c.axis == "key"), softmax_slices(P, K, M, c.axis == "key");
          const std::vector<double> Ur = moneta ? moneta_read(U, c.q) : U, Pr = moneta ? moneta_read(P, c.q) : P;
          for (index_t m = 0; m < M; ++m) {
            double s = 0;
            for (index_t i = 0; i < K; ++i) s += Ur[m * K + i] * q.at(qk + i);
            hid[m] = gelu(s);
          }
          for (index_t i = 0; i < K; ++i) {
            double s = q.at(qk + i);
            for (index_t m = 0; m < M; ++m) s += Pr[i * M + m] * hid[m];
            y.at(vo + i) = s;
          }
        }
      }
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          const index_t a1 = ((b * HV + hv) * K + i) * M + m, a2 = ((b * HV + hv) * M + m) * K + i;
          w1f.at(a1) = U[m * K + i], w2f.at(a2) = P[i * M + m];
          s1f.at(a1) = SU[m * K + i], s2f.at(a2) = SP[i * M + m];
        }
    }
  const fs::path dir = root / "titans_mlp" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v);
  write(dir, "alpha", alpha), write(dir, "eta", eta), write(dir, "theta", theta);
  write(dir, "initial_w1", w1), write(dir, "initial_w2", w2);
  write(dir, "y", y), write(dir, "final_w1", w1f), write(dir, "final_w2", w2f);
  write(dir, "final_s1", s1f), write(dir, "final_s2", s2f);
  std::string inputs =
      "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"alpha\": \"alpha.npy\", \"eta\": \"eta.npy\", "
      "\"theta\": \"theta.npy\", \"initial_w1\": \"initial_w1.npy\", \"initial_w2\": \"initial_w2.npy\"";
  if (c.momentum) {
    write(dir, "initial_s1", s10), write(dir, "initial_s2", s20);
    inputs += ", \"initial_s1\": \"initial_s1.npy\", \"initial_s2\": \"initial_s2.npy\"";
  }
  if (c.delta_t) {
    write(dir, "huber_delta", delta);
    inputs += ", \"huber_delta\": \"huber_delta.npy\"";
  }
  std::string params = "\"mini_batch\": " + std::to_string(c.mini_batch);
  if (c.loss != "l2") {
    params += ", \"loss\": \"" + c.loss + "\"";
    if (c.loss == "huber" && !c.delta_t) params += ", \"huber_delta\": " + exact(kHuberDelta);
  }
  if (c.retention != "decay") {
    params += ", \"retention\": \"" + c.retention + "\"";
    if (moneta) params += ", \"retention_q\": " + exact(c.q);
    if (memora) params += ", \"softmax_axis\": \"" + c.axis + "\"";
  }
  write_case(dir, "titans_mlp", params, inputs,
             "\"y\": \"y.npy\", \"final_w1\": \"final_w1.npy\", \"final_w2\": \"final_w2.npy\", "
             "\"final_s1\": \"final_s1.npy\", \"final_s2\": \"final_s2.npy\"",
             "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261217);
  mlp_case(root, {"b1_t40_hk1_hv2_k8_m12_mb16", 1, 40, 1, 2, 8, 12, 16, false}, rng);
  mlp_case(root, {"b2_t23_h1_k6_m10_mb4_momentum", 2, 23, 1, 1, 6, 10, 4, true}, rng);
  mlp_case(root, {"b1_t19_h2_k8_m8_mb1_momentum", 1, 19, 2, 2, 8, 8, 1, true}, rng);
  mlp_case(root, {"miras_l1_b1_t21_h1_k6_m8_mb4_momentum", 1, 21, 1, 1, 6, 8, 4, true, "l1"}, rng);
  mlp_case(root, {"miras_l3_b1_t18_hk1_hv2_k6_m8_mb16", 1, 18, 1, 2, 6, 8, 16, false, "l3"}, rng);
  mlp_case(root, {"miras_huber_b2_t20_h1_k6_m10_mb4_momentum", 2, 20, 1, 1, 6, 10, 4, true, "huber"}, rng);
  mlp_case(root, {"miras_yaad_delta_t_b1_t25_h2_k8_m8_mb8_momentum", 1, 25, 2, 2, 8, 8, 8, true, "huber", true}, rng);
  // Appended after the earlier cases, so their draws are unchanged.
  mlp_case(root, {"moneta_q4_b1_t37_hk1_hv2_k8_m12_mb8_momentum", 1, 37, 1, 2, 8, 12, 8, true, "l2", false, "lq_normalized", 4.0}, rng);
  mlp_case(root, {"moneta_q3_l3_b2_t21_h1_k6_m8_mb1", 2, 21, 1, 1, 6, 8, 1, false, "l3", false, "lq_normalized", 3.0}, rng);
  mlp_case(root, {"memora_key_b1_t30_h2_k6_m10_mb4_momentum", 1, 30, 2, 2, 6, 10, 4, true, "l2", false, "softmax_kl", 4.0, "key"}, rng);
  mlp_case(root, {"memora_value_huber_b2_t19_h1_k8_m8_mb16", 2, 19, 1, 1, 8, 8, 16, false, "huber", false, "softmax_kl", 4.0, "value"}, rng);
  return 0;
}
