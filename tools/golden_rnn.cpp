// Writes the conformance cases of lstm, gru, slstm and mlstm into <golden>/<op>/<case>/
// (tests/golden/README.md), computed by plain double-precision loops written here from the
// formulas of docs/operators.md section 12 (PyTorch's nn.LSTM / nn.GRU equations, xLSTM's sLSTM
// and mLSTM recurrences). Nothing of seqmix is used but its .npy writer, so the vectors are
// independent of the operators they check. sLSTM and mLSTM are run here without their
// stabilizer (plain exponentials of gates kept small), which the stabilized forms must equal.
//
//   g++ -std=c++17 -O2 -I include tools/golden_rnn.cpp -o golden_rnn
//   ./golden_rnn tests/golden
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

const char* kSource =
    "tools/golden_rnn.cpp: float64 loops of the formulas of docs/operators.md section 12 (PyTorch's LSTM/GRU "
    "equations, xLSTM's sLSTM/mLSTM without the stabilizer), independent of seqmix's operators";

// ---- lstm, gru, slstm -----------------------------------------------------------------------

enum class Cell { lstm, gru, slstm };

struct CellCase {
  Cell cell;
  std::string name;
  index_t B, T, I, H, heads;
  bool project, biases, state;
};

void cell_case(const fs::path& root, const CellCase& c, std::mt19937_64& rng) {
  const index_t G = c.cell == Cell::gru ? 3 : 4, S = c.cell == Cell::lstm ? 2 : c.cell == Cell::gru ? 1 : 4;
  const index_t H = c.H, Dh = H / c.heads, X = c.project ? c.I : G * H;
  const double a = 1.0 / std::sqrt(static_cast<double>(Dh));
  Array x = random_array({c.B, c.T, X}, rng, -1, 1);
  Array w_ih = random_array({G * H, c.I}, rng, -a, a), w_hh = random_array({G * H, Dh}, rng, -a, a);
  Array b_ih = random_array({G * H}, rng, -a, a), b_hh = random_array({G * H}, rng, -a, a);
  Array s0 = random_array({c.B, S, H}, rng, -0.5, 0.5);
  if (c.cell == Cell::slstm)  // normalizer n > 0, and m = 0 (the unstabilized cell below has none)
    for (index_t b = 0; b < c.B; ++b)
      for (index_t j = 0; j < H; ++j) s0.at((b * S + 2) * H + j) = 0.5 + std::abs(s0.at((b * S + 2) * H + j)), s0.at((b * S + 3) * H + j) = 0;
  Array y = zeros({c.B, c.T, H}), fin = zeros({c.B, S, H});
  for (index_t b = 0; b < c.B; ++b) {
    // Per unit: h, c and (sLSTM) the unstabilized normalizer n.
    std::vector<double> h(H), cc(H), nn(H);
    for (index_t j = 0; j < H; ++j) {
      h[j] = c.state ? s0.at((b * S) * H + j) : 0;
      if (S > 1) cc[j] = c.state ? s0.at((b * S + 1) * H + j) : 0;
      if (S > 2) nn[j] = c.state ? s0.at((b * S + 2) * H + j) : 0;
    }
    for (index_t t = 0; t < c.T; ++t) {
      // All pre-activations of the token first, as matrix-vector products.
      std::vector<double> gx(G * H, 0.0), gh(G * H, 0.0);
      for (index_t r = 0; r < G * H; ++r) {
        if (c.project)
          for (index_t i = 0; i < c.I; ++i) gx[r] += w_ih.at(r * c.I + i) * x.at((b * c.T + t) * X + i);
        else
          gx[r] = x.at((b * c.T + t) * X + r);
        const index_t head = (r % H) / Dh;
        for (index_t k = 0; k < Dh; ++k) gh[r] += w_hh.at(r * Dh + k) * h[head * Dh + k];
        if (c.biases) gx[r] += b_ih.at(r), gh[r] += b_hh.at(r);
      }
      std::vector<double> hn(H);
      for (index_t j = 0; j < H; ++j) {
        auto pre = [&](index_t g) { return gx[g * H + j] + gh[g * H + j]; };
        if (c.cell == Cell::lstm) {
          cc[j] = sig(pre(1)) * cc[j] + sig(pre(0)) * std::tanh(pre(2));
          hn[j] = sig(pre(3)) * std::tanh(cc[j]);
        } else if (c.cell == Cell::gru) {
          const double r = sig(pre(0)), z = sig(pre(1));
          const double n = std::tanh(gx[2 * H + j] + r * gh[2 * H + j]);
          hn[j] = (1 - z) * n + z * h[j];
        } else {
          // Unstabilized sLSTM: exp(i) and sigmoid(f) directly.
          const double ig = std::exp(pre(0)), fg = sig(pre(1));
          cc[j] = fg * cc[j] + ig * std::tanh(pre(2));
          nn[j] = fg * nn[j] + ig;
          hn[j] = sig(pre(3)) * cc[j] / nn[j];
        }
      }
      h = hn;
      for (index_t j = 0; j < H; ++j) y.at((b * c.T + t) * H + j) = h[j];
    }
    for (index_t j = 0; j < H; ++j) {
      fin.at((b * S) * H + j) = h[j];
      if (S > 1) fin.at((b * S + 1) * H + j) = cc[j];
      if (S > 2) fin.at((b * S + 2) * H + j) = nn[j];
    }
  }
  const std::string op = c.cell == Cell::lstm ? "lstm" : c.cell == Cell::gru ? "gru" : "slstm";
  const fs::path dir = root / op / c.name;
  fs::create_directories(dir);
  std::string inputs = "\"x\": \"x.npy\", \"w_hh\": \"w_hh.npy\"";
  write(dir, "x", x), write(dir, "w_hh", w_hh);
  if (c.project) inputs += ", \"w_ih\": \"w_ih.npy\"", write(dir, "w_ih", w_ih);
  if (c.biases) inputs += ", \"b_ih\": \"b_ih.npy\", \"b_hh\": \"b_hh.npy\"", write(dir, "b_ih", b_ih), write(dir, "b_hh", b_hh);
  if (c.state) inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
  std::string outputs = "\"y\": \"y.npy\"";
  write(dir, "y", y);
  // The stabilized sLSTM carries c and n scaled by exp(-m): only h is comparable there.
  if (c.cell != Cell::slstm) outputs += ", \"final_state\": \"final_state.npy\"", write(dir, "final_state", fin);
  write_case(dir, op, "\"heads\": " + std::to_string(c.heads), inputs, outputs, "1e-05", kSource);
}

// ---- mlstm ----------------------------------------------------------------------------------

struct MlstmCase {
  std::string name;
  index_t B, T, NH, DK, DV;
  bool state;
};

void mlstm_case(const fs::path& root, const MlstmCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, NH = c.NH, DK = c.DK, DV = c.DV;
  Array q = random_array({B, T, NH, DK}, rng, -1, 1), k = random_array({B, T, NH, DK}, rng, -1, 1);
  Array v = random_array({B, T, NH, DV}, rng, -1, 1);
  Array ig = random_array({B, T, NH}, rng, -2, 2), fg = random_array({B, T, NH}, rng, 0, 5);
  Array c0 = random_array({B, NH, DK, DV}, rng, -1, 1), n0 = random_array({B, NH, DK}, rng, 0, 1);
  Array m0 = zeros({B, NH});
  Array h = zeros({B, T, NH, DV});
  const double scale = 1.0 / std::sqrt(static_cast<double>(DK)), eps = 1e-6;
  for (index_t b = 0; b < B; ++b)
    for (index_t hd = 0; hd < NH; ++hd) {
      // Unstabilized memories (m = 0 throughout): C_t = sigmoid(f) C + exp(i) k v^T.
      std::vector<double> C(DK * DV), n(DK);
      for (index_t r = 0; r < DK; ++r) {
        n[r] = c.state ? n0.at((b * NH + hd) * DK + r) : 0;
        for (index_t col = 0; col < DV; ++col) C[r * DV + col] = c.state ? c0.at(((b * NH + hd) * DK + r) * DV + col) : 0;
      }
      double log_scale = 0;  // log of the product of forget gates: the stabilized form's exp(-m) floor
      double m = 0;          // the stabilizer, only for the floor exp(-m) of the denominator
      for (index_t t = 0; t < T; ++t) {
        const index_t bt = (b * T + t) * NH + hd;
        const double f = sig(fg.at(bt)), i = std::exp(ig.at(bt));
        m = std::max(std::log(f) + m, ig.at(bt));
        log_scale += std::log(f);
        for (index_t r = 0; r < DK; ++r) {
          n[r] = f * n[r] + i * k.at(bt * DK + r);
          for (index_t col = 0; col < DV; ++col) C[r * DV + col] = f * C[r * DV + col] + i * k.at(bt * DK + r) * v.at(bt * DV + col);
        }
        // h = (q C) / (max(|q n|, 1) + eps exp(m)) in unstabilized terms: the stabilized
        // max(|q.n_s|, exp(-m)) + eps with n_s = n exp(-m), multiplied through by exp(m).
        double qn = 0;
        for (index_t r = 0; r < DK; ++r) qn += scale * q.at(bt * DK + r) * n[r];
        const double denom = std::max(std::abs(qn), 1.0) + eps * std::exp(m);
        for (index_t col = 0; col < DV; ++col) {
          double num = 0;
          for (index_t r = 0; r < DK; ++r) num += scale * q.at(bt * DK + r) * C[r * DV + col];
          h.at(bt * DV + col) = num / denom;
        }
      }
      (void)log_scale;
    }
  const fs::path dir = root / "mlstm" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "i", ig), write(dir, "f", fg), write(dir, "h", h);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"i\": \"i.npy\", \"f\": \"f.npy\"";
  if (c.state) {
    write(dir, "initial_c", c0), write(dir, "initial_n", n0), write(dir, "initial_m", m0);
    inputs += ", \"initial_c\": \"initial_c.npy\", \"initial_n\": \"initial_n.npy\", \"initial_m\": \"initial_m.npy\"";
  }
  write_case(dir, "mlstm", "\"scale\": " + exact(scale) + ", \"eps\": 1e-06", inputs, "\"h\": \"h.npy\"", "1e-05",
             kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261202);
  cell_case(root, {Cell::lstm, "b2_t33_i12_h16_bias_state", 2, 33, 12, 16, 1, true, true, true}, rng);
  cell_case(root, {Cell::lstm, "b1_t40_h24_heads3_preact", 1, 40, 0, 24, 3, false, false, false}, rng);
  cell_case(root, {Cell::gru, "b2_t33_i12_h16_bias_state", 2, 33, 12, 16, 1, true, true, true}, rng);
  cell_case(root, {Cell::slstm, "b2_t37_h32_heads4_preact_state", 2, 37, 0, 32, 4, false, true, true}, rng);
  mlstm_case(root, {"b1_t70_nh2_dk16_dv8", 1, 70, 2, 16, 8, false}, rng);
  mlstm_case(root, {"b2_t33_nh1_dk8_dv12_state", 2, 33, 1, 8, 12, true}, rng);
  return 0;
}
