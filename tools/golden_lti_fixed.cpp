// Writes the conformance cases of the fixed and data-dependent token mixers of docs/operators.md
// section 11 into <golden>/<op>/<case>/ (tests/golden/README.md), computed by plain
// double-precision loops written here from the formulas of that section:
//   fnet              the real part of the 2-D DFT over tokens and features, as the double sum
//                     of cos(2 pi (t s / T + d e / D)) x[s,e] (the angle reduced mod 1 in integers)
//   base_conv         p1 = u W1 + b1, p2 = u W2 + b2, y = p1 * (causal convolution of p2 with the
//                     filter, initial_state rows before token 0), final_state = last L-1 rows
//   lightweight_conv  y[t,c] = sum_k softmax(weight[h(c),:])[k] x[t-P+k, c], P = K-1 (causal)
//                     or (K-1)/2 (centered), zero outside [0,T)
//   dynamic_conv      the same with the softmax of logits[b,t,h(c),:] per position
// Nothing of seqmix is used but its .npy writer, so the vectors are independent of the operators
// they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_lti_fixed.cpp -o golden_lti_fixed
//   ./golden_lti_fixed tests/golden
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_lti_fixed.cpp: float64 loops of the fnet, base_conv, lightweight_conv and dynamic_conv formulas "
    "of docs/operators.md section 11, independent of seqmix's operators";

const double kTwoPi = 6.283185307179586476925286766559;

// ---- fnet -----------------------------------------------------------------------------------

struct FnetCase {
  std::string name;
  index_t B, T, D;
};

void fnet_case(const fs::path& root, const FnetCase& c, std::mt19937_64& rng) {
  const Array x = random_array({c.B, c.T, c.D}, rng, -1, 1);
  Array y = zeros({c.B, c.T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        double acc = 0.0;
        for (index_t s = 0; s < c.T; ++s)
          for (index_t e = 0; e < c.D; ++e) {
            // Re(exp(-2 pi i (ts/T + de/D))) = cos(2 pi ((ts mod T) D + (de mod D) T) / (T D)).
            const index_t num = ((t * s) % c.T) * c.D + ((d * e) % c.D) * c.T;
            acc += std::cos(kTwoPi * static_cast<double>(num) / static_cast<double>(c.T * c.D)) *
                   x.v[static_cast<std::size_t>((b * c.T + s) * c.D + e)];
          }
        y.at((b * c.T + t) * c.D + d) = acc;
      }
  const fs::path dir = root / "fnet" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "y", y);
  write_case(dir, "fnet", "", "\"x\": \"x.npy\"", "\"y\": \"y.npy\"", "1e-05", kSource);
}

// ---- base_conv ------------------------------------------------------------------------------

struct BaseConvCase {
  std::string name;
  index_t B, T, D, L;
  bool biases, state;
};

void base_conv_case(const fs::path& root, const BaseConvCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, D = c.D, L = c.L, S = L - 1;
  const double w = 1.0 / std::sqrt(static_cast<double>(D)), a = 1.0 / std::sqrt(static_cast<double>(L));
  const Array u = random_array({B, T, D}, rng, -1, 1);
  const Array w1 = random_array({D, D}, rng, -w, w), w2 = random_array({D, D}, rng, -w, w);
  const Array h = random_array({L, D}, rng, -a, a);
  const Array b1 = random_array({D}, rng, -0.5, 0.5), b2 = random_array({D}, rng, -0.5, 0.5);
  const Array s0 = random_array({B, S, D}, rng, -1, 1);
  Array y = zeros({B, T, D}), fin = zeros({B, S, D});
  for (index_t b = 0; b < B; ++b) {
    // p[j] = sum_i u[i] w[i][j] (+ bias[j]) for every token; xs = concat(state or zeros, p2).
    std::vector<double> p1(static_cast<std::size_t>(T * D)), xs(static_cast<std::size_t>((S + T) * D), 0.0);
    for (index_t r = 0; r < S && c.state; ++r)
      for (index_t j = 0; j < D; ++j) xs[static_cast<std::size_t>(r * D + j)] = s0.v[static_cast<std::size_t>((b * S + r) * D + j)];
    for (index_t t = 0; t < T; ++t)
      for (index_t j = 0; j < D; ++j) {
        double a1 = c.biases ? b1.v[static_cast<std::size_t>(j)] : 0.0, a2 = c.biases ? b2.v[static_cast<std::size_t>(j)] : 0.0;
        for (index_t i = 0; i < D; ++i) {
          const double ui = u.v[static_cast<std::size_t>((b * T + t) * D + i)];
          a1 += ui * w1.v[static_cast<std::size_t>(i * D + j)];
          a2 += ui * w2.v[static_cast<std::size_t>(i * D + j)];
        }
        p1[static_cast<std::size_t>(t * D + j)] = a1;
        xs[static_cast<std::size_t>((S + t) * D + j)] = a2;
      }
    for (index_t t = 0; t < T; ++t)
      for (index_t j = 0; j < D; ++j) {
        double conv = 0.0;
        for (index_t s = 0; s < L; ++s)  // row S + t - s of xs is token t - s (a state row when < 0)
          if (S + t - s >= 0) conv += h.v[static_cast<std::size_t>(s * D + j)] * xs[static_cast<std::size_t>((S + t - s) * D + j)];
        y.at((b * T + t) * D + j) = p1[static_cast<std::size_t>(t * D + j)] * conv;
      }
    for (index_t r = 0; r < S; ++r)
      for (index_t j = 0; j < D; ++j) fin.at((b * S + r) * D + j) = xs[static_cast<std::size_t>((T + r) * D + j)];
  }
  const fs::path dir = root / "base_conv" / c.name;
  fs::create_directories(dir);
  write(dir, "u", u), write(dir, "w1", w1), write(dir, "w2", w2), write(dir, "filter", h), write(dir, "y", y);
  std::string inputs = "\"u\": \"u.npy\", \"w1\": \"w1.npy\", \"w2\": \"w2.npy\", \"filter\": \"filter.npy\"";
  std::string outputs = "\"y\": \"y.npy\"";
  if (c.biases) inputs += ", \"b1\": \"b1.npy\", \"b2\": \"b2.npy\"", write(dir, "b1", b1), write(dir, "b2", b2);
  if (c.state) inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
  if (S > 0) outputs += ", \"final_state\": \"final_state.npy\"", write(dir, "final_state", fin);
  write_case(dir, "base_conv", "", inputs, outputs, "1e-05", kSource);
}

// ---- lightweight_conv and dynamic_conv ------------------------------------------------------

struct LocalConvCase {
  std::string name;
  index_t B, T, D, H, K;
  bool centered;
};

// Softmax of K logits in double, the maximum subtracted.
std::vector<double> lti_fixed_softmax(const double* logit, index_t K) {
  const double m = *std::max_element(logit, logit + K);
  std::vector<double> p(static_cast<std::size_t>(K));
  double sum = 0.0;
  for (index_t k = 0; k < K; ++k) sum += p[static_cast<std::size_t>(k)] = std::exp(logit[k] - m);
  for (double& v : p) v /= sum;
  return p;
}

// y[b,t,c] = sum_k p(b,t,h(c))[k] x[b, t-P+k, c]; `dynamic` takes the logits [B,T,H,K] per
// position, otherwise weight [H,K] for every position.
void local_conv_case(const fs::path& root, const LocalConvCase& c, bool dynamic, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, D = c.D, H = c.H, K = c.K, P = c.centered ? (K - 1) / 2 : K - 1;
  const Array x = random_array({B, T, D}, rng, -1, 1);
  const Array logits = dynamic ? random_array({B, T, H, K}, rng, -3, 3) : random_array({H, K}, rng, -3, 3);
  Array y = zeros({B, T, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t h = 0; h < H; ++h) {
        const double* l = logits.v.data() + (dynamic ? ((b * T + t) * H + h) * K : h * K);
        const std::vector<double> p = lti_fixed_softmax(l, K);
        for (index_t ch = h * (D / H); ch < (h + 1) * (D / H); ++ch) {
          double acc = 0.0;
          for (index_t k = 0; k < K; ++k) {
            const index_t s = t - P + k;
            if (s >= 0 && s < T) acc += p[static_cast<std::size_t>(k)] * x.v[static_cast<std::size_t>((b * T + s) * D + ch)];
          }
          y.at((b * T + t) * D + ch) = acc;
        }
      }
  const char* op = dynamic ? "dynamic_conv" : "lightweight_conv";
  const char* name = dynamic ? "logits" : "weight";
  const fs::path dir = root / op / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, name, logits), write(dir, "y", y);
  write_case(dir, op, c.centered ? "\"padding\": \"centered\"" : "\"padding\": \"causal\"",
             std::string("\"x\": \"x.npy\", \"") + name + "\": \"" + name + ".npy\"", "\"y\": \"y.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261216);
  fnet_case(root, {"b2_t12_d10", 2, 12, 10}, rng);
  fnet_case(root, {"b1_t17_d7", 1, 17, 7}, rng);
  fnet_case(root, {"b1_t1_d5", 1, 1, 5}, rng);
  fnet_case(root, {"b1_t32_d16", 1, 32, 16}, rng);
  base_conv_case(root, {"b2_t21_d6_l21_bias_state", 2, 21, 6, 21, true, true}, rng);
  base_conv_case(root, {"b1_t33_d5_l12", 1, 33, 5, 12, false, false}, rng);
  base_conv_case(root, {"b1_t7_d4_l30_bias", 1, 7, 4, 30, true, false}, rng);
  base_conv_case(root, {"b2_t1_d3_l5_state", 2, 1, 3, 5, false, true}, rng);
  local_conv_case(root, {"b2_t20_d12_h3_k5_causal", 2, 20, 12, 3, 5, false}, false, rng);
  local_conv_case(root, {"b1_t17_d8_h2_k4_centered", 1, 17, 8, 2, 4, true}, false, rng);
  local_conv_case(root, {"b1_t6_d6_h6_k9_centered", 1, 6, 6, 6, 9, true}, false, rng);
  local_conv_case(root, {"b2_t19_d12_h4_k7_causal", 2, 19, 12, 4, 7, false}, true, rng);
  local_conv_case(root, {"b1_t23_d10_h2_k6_centered", 1, 23, 10, 2, 6, true}, true, rng);
  local_conv_case(root, {"b1_t5_d3_h1_k3_centered", 1, 5, 3, 1, 3, true}, true, rng);
  return 0;
}
