// Writes the conformance cases of the token mixers masked_mixer, monarch_mix, monarch_mix_causal,
// hyper_mixer and of hyena_distilled_step (docs/operators.md section 11) into
// <golden>/<op>/<case>/ (tests/golden/README.md), computed by plain double-precision loops written
// here from the formulas of that section:
//   masked_mixer          y[b,t,c] = sum_{s<=t} W[g(c),t,s] x[b,s,c]   (entries above the diagonal
//                         of W hold NaN-free junk the operator must not read)
//   monarch_mix           y[m*bs+i] = sum_k left[g,i][m,k] sum_j right[g,k][i,j] x[k*bs+j]  (x zero
//                         past T), written as that closed double sum, not as the four factors
//   monarch_mix_causal    y[t] = sum_{s<=t, s<L} filter[s] x[t-s]
//   hyper_mixer           W_i[t] = act((x[t] + pos[t]) A_i + a_i) B_i + b_i, y = W_2 act(W_1^T x)
//   hyena_distilled_step  a fixed set of modes per order (poles inside the unit circle, complex
//                         gains g, feedthrough f) run token by token from a zero state:
//                         s_k <- lambda_k s_k + g_k z[t],  z_{n+1}[t] = x_n[t] (Re(sum_k g_k s_k) + f z[t])
// Nothing of seqmix is used but its .npy writer, so the vectors are independent of the operators.
//
//   g++ -std=c++17 -O2 -I include tools/golden_lti_tokenmix.cpp -o golden_lti_tokenmix
//   ./golden_lti_tokenmix tests/golden
#include <cmath>
#include <complex>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_lti_tokenmix.cpp: float64 loops of the masked_mixer, monarch_mix, monarch_mix_causal, "
    "hyper_mixer and distilled-hyena recurrence formulas of docs/operators.md section 11, independent of "
    "seqmix's operators";

std::size_t at(index_t i) { return static_cast<std::size_t>(i); }

// ---- masked_mixer ---------------------------------------------------------------------------

struct MaskedCase {
  std::string name;
  index_t B, T, D, G, L;
};

void masked_case(const fs::path& root, const MaskedCase& c, std::mt19937_64& rng) {
  const Array x = random_array({c.B, c.T, c.D}, rng, -1, 1);
  const double a = 1.0 / std::sqrt(static_cast<double>(c.L));
  const Array w = random_array({c.G, c.L, c.L}, rng, -a, a);
  Array y = zeros({c.B, c.T, c.D});
  const index_t per = c.D / c.G;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t ch = 0; ch < c.D; ++ch) {
        double acc = 0.0;
        for (index_t s = 0; s <= t; ++s)
          acc += w.v[at((ch / per * c.L + t) * c.L + s)] * x.v[at((b * c.T + s) * c.D + ch)];
        y.at((b * c.T + t) * c.D + ch) = acc;
      }
  const fs::path dir = root / "masked_mixer" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "weight", w), write(dir, "y", y);
  write_case(dir, "masked_mixer", "", "\"x\": \"x.npy\", \"weight\": \"weight.npy\"", "\"y\": \"y.npy\"", "1e-05",
             kSource);
}

// ---- monarch_mix and monarch_mix_causal ------------------------------------------------------

struct MonarchCase {
  std::string name;
  index_t B, T, D, G, bs;
};

void monarch_case(const fs::path& root, const MonarchCase& c, std::mt19937_64& rng) {
  const index_t bs = c.bs, per = c.D / c.G;
  const double a = 1.0 / std::sqrt(static_cast<double>(bs));
  const Array x = random_array({c.B, c.T, c.D}, rng, -1, 1);
  const Array left = random_array({c.G, bs, bs, bs}, rng, -a, a), right = random_array({c.G, bs, bs, bs}, rng, -a, a);
  const auto blk = [&](const Array& m, index_t g, index_t k, index_t r, index_t col) {
    return m.v[at(((g * bs + k) * bs + r) * bs + col)];
  };
  Array y = zeros({c.B, c.T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t ch = 0; ch < c.D; ++ch) {
      const index_t g = ch / per;
      const auto xv = [&](index_t t) { return t < c.T ? x.v[at((b * c.T + t) * c.D + ch)] : 0.0; };
      for (index_t m = 0; m < bs; ++m)
        for (index_t i = 0; i < bs; ++i) {
          if (m * bs + i >= c.T) continue;
          double acc = 0.0;
          for (index_t k = 0; k < bs; ++k) {
            double inner = 0.0;
            for (index_t j = 0; j < bs; ++j) inner += blk(right, g, k, i, j) * xv(k * bs + j);
            acc += blk(left, g, i, m, k) * inner;
          }
          y.at((b * c.T + m * bs + i) * c.D + ch) = acc;
        }
    }
  const fs::path dir = root / "monarch_mix" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "left", left), write(dir, "right", right), write(dir, "y", y);
  write_case(dir, "monarch_mix", "", "\"x\": \"x.npy\", \"left\": \"left.npy\", \"right\": \"right.npy\"",
             "\"y\": \"y.npy\"", "1e-05", kSource);
}

struct MonarchCausalCase {
  std::string name;
  index_t B, T, D, L;
};

void monarch_causal_case(const fs::path& root, const MonarchCausalCase& c, std::mt19937_64& rng) {
  const double a = 1.0 / std::sqrt(static_cast<double>(c.L));
  const Array x = random_array({c.B, c.T, c.D}, rng, -1, 1), h = random_array({c.L, c.D}, rng, -a, a);
  Array y = zeros({c.B, c.T, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t ch = 0; ch < c.D; ++ch) {
        double acc = 0.0;
        for (index_t s = 0; s <= t && s < c.L; ++s) acc += h.v[at(s * c.D + ch)] * x.v[at((b * c.T + t - s) * c.D + ch)];
        y.at((b * c.T + t) * c.D + ch) = acc;
      }
  const fs::path dir = root / "monarch_mix_causal" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "filter", h), write(dir, "y", y);
  write_case(dir, "monarch_mix_causal", "", "\"x\": \"x.npy\", \"filter\": \"filter.npy\"", "\"y\": \"y.npy\"",
             "1e-05", kSource);
}

// ---- hyper_mixer ----------------------------------------------------------------------------

struct HyperCase {
  std::string name;
  index_t B, T, D, M1, M2, E, L;
  bool biases, positions, relu;
};

double hyper_act(double v, bool relu) { return relu ? (v > 0 ? v : 0.0) : 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

struct HyperNet {
  Array w_in, b_in, w_out, b_out;
};

HyperNet hyper_net(index_t D, index_t M, index_t E, std::mt19937_64& rng) {
  const double a = 1.0 / std::sqrt(static_cast<double>(D)), o = 1.0 / std::sqrt(static_cast<double>(M));
  return {random_array({D, M}, rng, -a, a), random_array({M}, rng, -0.3, 0.3), random_array({M, E}, rng, -o, o),
          random_array({E}, rng, -0.3, 0.3)};
}

void hyper_case(const fs::path& root, const HyperCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, D = c.D, E = c.E;
  const Array x = random_array({B, T, D}, rng, -1, 1), pos = random_array({c.L, D}, rng, -0.5, 0.5);
  const HyperNet n1 = hyper_net(D, c.M1, E, rng), n2 = hyper_net(D, c.M2, E, rng);
  // W[t,e] of one network for batch row b.
  const auto generate = [&](const HyperNet& n, index_t M, index_t b) {
    std::vector<double> W(at(T * E), 0.0), hidden(at(M));
    for (index_t t = 0; t < T; ++t) {
      for (index_t m = 0; m < M; ++m) {
        double acc = c.biases ? n.b_in.v[at(m)] : 0.0;
        for (index_t d = 0; d < D; ++d)
          acc += (x.v[at((b * T + t) * D + d)] + (c.positions ? pos.v[at(t * D + d)] : 0.0)) * n.w_in.v[at(d * M + m)];
        hidden[at(m)] = hyper_act(acc, c.relu);
      }
      for (index_t e = 0; e < E; ++e) {
        double acc = c.biases ? n.b_out.v[at(e)] : 0.0;
        for (index_t m = 0; m < M; ++m) acc += hidden[at(m)] * n.w_out.v[at(m * E + e)];
        W[at(t * E + e)] = acc;
      }
    }
    return W;
  };
  Array y = zeros({B, T, D});
  for (index_t b = 0; b < B; ++b) {
    const std::vector<double> W1 = generate(n1, c.M1, b), W2 = generate(n2, c.M2, b);
    std::vector<double> H(at(E * D));
    for (index_t e = 0; e < E; ++e)
      for (index_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (index_t t = 0; t < T; ++t) acc += W1[at(t * E + e)] * x.v[at((b * T + t) * D + d)];
        H[at(e * D + d)] = hyper_act(acc, c.relu);
      }
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (index_t e = 0; e < E; ++e) acc += W2[at(t * E + e)] * H[at(e * D + d)];
        y.at((b * T + t) * D + d) = acc;
      }
  }
  const fs::path dir = root / "hyper_mixer" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "w_in1", n1.w_in), write(dir, "w_out1", n1.w_out), write(dir, "w_in2", n2.w_in);
  write(dir, "w_out2", n2.w_out), write(dir, "y", y);
  std::string inputs =
      "\"x\": \"x.npy\", \"w_in1\": \"w_in1.npy\", \"w_out1\": \"w_out1.npy\", \"w_in2\": \"w_in2.npy\", "
      "\"w_out2\": \"w_out2.npy\"";
  if (c.biases) {
    write(dir, "b_in1", n1.b_in), write(dir, "b_out1", n1.b_out), write(dir, "b_in2", n2.b_in);
    write(dir, "b_out2", n2.b_out);
    inputs += ", \"b_in1\": \"b_in1.npy\", \"b_out1\": \"b_out1.npy\", \"b_in2\": \"b_in2.npy\", \"b_out2\": \"b_out2.npy\"";
  }
  if (c.positions) inputs += ", \"positions\": \"positions.npy\"", write(dir, "positions", pos);
  write_case(dir, "hyper_mixer", c.relu ? "\"activation\": \"relu\"" : "\"activation\": \"gelu\"", inputs,
             "\"y\": \"y.npy\"", "1e-05", kSource);
}

// ---- hyena_distilled_step -------------------------------------------------------------------

struct DistilledCase {
  std::string name;
  index_t N, B, T, D, M;
};

void distilled_case(const fs::path& root, const DistilledCase& c, std::mt19937_64& rng) {
  const index_t N = c.N, B = c.B, T = c.T, D = c.D, M = c.M;
  const Array v = random_array({B, T, D}, rng, -1, 1), x = random_array({N, B, T, D}, rng, -1, 1);
  // Poles of modulus 0.3..0.97 at any angle, rounded to float like every stored value.
  const Array modulus = random_array({N, D, M}, rng, 0.3, 0.97), angle = random_array({N, D, M}, rng, -3.1, 3.1);
  Array pr = zeros({N, D, M}), pi = zeros({N, D, M});
  for (std::size_t i = 0; i < pr.v.size(); ++i) {
    pr.v[i] = static_cast<float>(modulus.v[i] * std::cos(angle.v[i]));
    pi.v[i] = static_cast<float>(modulus.v[i] * std::sin(angle.v[i]));
  }
  const Array gr = random_array({N, D, M}, rng, -0.4, 0.4), gi = random_array({N, D, M}, rng, -0.4, 0.4);
  const Array ft = random_array({N, D}, rng, -1, 1);
  Array y = zeros({B, T, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t d = 0; d < D; ++d) {
      std::vector<double> z(at(T));
      for (index_t t = 0; t < T; ++t) z[at(t)] = v.v[at((b * T + t) * D + d)];
      for (index_t n = 0; n < N; ++n) {
        std::vector<std::complex<double>> s(at(M), 0.0);
        for (index_t t = 0; t < T; ++t) {
          double out = ft.v[at(n * D + d)] * z[at(t)];
          for (index_t k = 0; k < M; ++k) {
            const std::size_t i = at((n * D + d) * M + k);
            const std::complex<double> lambda(pr.v[i], pi.v[i]), g(gr.v[i], gi.v[i]);
            s[at(k)] = lambda * s[at(k)] + g * z[at(t)];
            out += (g * s[at(k)]).real();
          }
          z[at(t)] = out * x.v[at(((n * B + b) * T + t) * D + d)];
        }
      }
      for (index_t t = 0; t < T; ++t) y.at((b * T + t) * D + d) = z[at(t)];
    }
  const fs::path dir = root / "hyena_distilled_step" / c.name;
  fs::create_directories(dir);
  write(dir, "v", v), write(dir, "x", x), write(dir, "pole_real", pr), write(dir, "pole_imag", pi);
  write(dir, "gain_real", gr), write(dir, "gain_imag", gi), write(dir, "feedthrough", ft), write(dir, "y", y);
  write_case(dir, "hyena_distilled_step", "",
             "\"v\": \"v.npy\", \"x\": \"x.npy\", \"pole_real\": \"pole_real.npy\", \"pole_imag\": \"pole_imag.npy\", "
             "\"gain_real\": \"gain_real.npy\", \"gain_imag\": \"gain_imag.npy\", \"feedthrough\": \"feedthrough.npy\"",
             "\"y\": \"y.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261604);
  masked_case(root, {"b2_t70_d6_g3_l80", 2, 70, 6, 3, 80}, rng);
  masked_case(root, {"b1_t1_d4_g1_l3", 1, 1, 4, 1, 3}, rng);
  masked_case(root, {"b1_t33_d5_g5_l33", 1, 33, 5, 5, 33}, rng);
  monarch_case(root, {"b2_t16_d6_g2_bs4", 2, 16, 6, 2, 4}, rng);
  monarch_case(root, {"b1_t23_d5_g1_bs5", 1, 23, 5, 1, 5}, rng);
  monarch_case(root, {"b1_t7_d3_g3_bs3", 1, 7, 3, 3, 3}, rng);
  monarch_causal_case(root, {"b2_t40_d5_l40", 2, 40, 5, 40}, rng);
  monarch_causal_case(root, {"b1_t1_d3_l4", 1, 1, 3, 4}, rng);
  monarch_causal_case(root, {"b1_t70_d3_l25", 1, 70, 3, 25}, rng);
  hyper_case(root, {"b2_t9_d6_m5_m3_e4_gelu_bias_pos", 2, 9, 6, 5, 3, 4, 12, true, true, false}, rng);
  hyper_case(root, {"b1_t13_d5_m4_m4_e7_relu", 1, 13, 5, 4, 4, 7, 13, false, false, true}, rng);
  hyper_case(root, {"b1_t1_d3_m2_m6_e2_gelu_pos", 1, 1, 3, 2, 6, 2, 4, false, true, false}, rng);
  distilled_case(root, {"n2_b2_t30_d4_m3", 2, 2, 30, 4, 3}, rng);
  distilled_case(root, {"n1_b1_t25_d3_m6", 1, 1, 25, 3, 6}, rng);
  distilled_case(root, {"n3_b1_t17_d5_m2", 3, 1, 17, 5, 2}, rng);
  return 0;
}
