// Writes the conformance cases of slot_memory into <golden>/slot_memory/<case>/
// (tests/golden/README.md), computed here by a float64 formulation of docs/operators.md section 13
// written as whole-segment matrices rather than per-slot loops: per segment and head the score
// matrices X M^T and M X^T are formed, softmaxed by rows, and multiplied out; the gates are
// matrix products with the transposed weights. Nothing of seqmix is used but its .npy writer.
//
//   g++ -std=c++17 -O2 -I include tools/golden_slot_memory.cpp -o golden_slot_memory
//   ./golden_slot_memory tests/golden
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;
using Matrix = std::vector<std::vector<double>>;

const char* kSource =
    "tools/golden_slot_memory.cpp: float64 whole-segment score matrices, row softmax and gate products "
    "(docs/operators.md section 13), independent of seqmix's operators";

Matrix matrix(index_t rows, index_t cols) {
  return Matrix(static_cast<std::size_t>(rows), std::vector<double>(static_cast<std::size_t>(cols), 0.0));
}

// a [n,k] times b [m,k] transposed -> [n,m]
Matrix times_transposed(const Matrix& a, const Matrix& b) {
  Matrix c = matrix(static_cast<index_t>(a.size()), static_cast<index_t>(b.size()));
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t j = 0; j < b.size(); ++j)
      for (std::size_t e = 0; e < a[i].size(); ++e) c[i][j] += a[i][e] * b[j][e];
  return c;
}

// a [n,k] times b [k,m] -> [n,m]
Matrix times(const Matrix& a, const Matrix& b) {
  Matrix c = matrix(static_cast<index_t>(a.size()), static_cast<index_t>(b[0].size()));
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t e = 0; e < b.size(); ++e)
      for (std::size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][e] * b[e][j];
  return c;
}

void softmax_rows(Matrix& a, double scale) {
  for (auto& row : a) {
    double top = -INFINITY, total = 0;
    for (auto& e : row) top = std::max(top, e *= scale);
    for (auto& e : row) total += e = std::exp(e - top);
    for (auto& e : row) e /= total;
  }
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

struct SlotCase {
  std::string name;
  index_t B, T, S, D, H, segment;
  bool lm2;
};

void slot_case(const fs::path& root, const SlotCase& c, std::mt19937_64& rng) {
  const Array x = random_array({c.B, c.T, c.D}, rng, -1.5, 1.5);
  const Array memory = random_array({c.B, c.S, c.D}, rng, -1, 1);
  Array w[3], bias[3];
  for (int g = 0; g < 3; ++g) w[g] = random_array({c.D, c.D}, rng, -0.3, 0.3), bias[g] = random_array({c.D}, rng, -1, 1);
  Array y = zeros({c.B, c.T, c.D}), final_memory = zeros({c.B, c.S, c.D});
  const index_t dh = c.D / c.H, L = c.segment == 0 ? c.T : c.segment;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const auto gate_product = [&](const Matrix& a, int g) {  // a [n,D] -> a w_g^T + b_g
    Matrix wg = matrix(c.D, c.D);
    for (index_t i = 0; i < c.D; ++i)
      for (index_t j = 0; j < c.D; ++j) wg[i][j] = w[g].v[static_cast<std::size_t>(i * c.D + j)];
    Matrix out = times_transposed(a, wg);
    for (auto& row : out)
      for (index_t j = 0; j < c.D; ++j) row[j] += bias[g].v[static_cast<std::size_t>(j)];
    return out;
  };
  for (index_t b = 0; b < c.B; ++b) {
    Matrix M = matrix(c.S, c.D);
    for (index_t s = 0; s < c.S; ++s)
      for (index_t e = 0; e < c.D; ++e) M[s][e] = memory.v[static_cast<std::size_t>((b * c.S + s) * c.D + e)];
    for (index_t t0 = 0; t0 < c.T; t0 += L) {
      const index_t len = std::min(L, c.T - t0);
      Matrix R = matrix(len, c.D), U = matrix(c.S, c.D);
      for (index_t h = 0; h < c.H; ++h) {
        Matrix Xh = matrix(len, dh), Mh = matrix(c.S, dh);
        for (index_t j = 0; j < len; ++j)
          for (index_t e = 0; e < dh; ++e) Xh[j][e] = x.v[static_cast<std::size_t>((b * c.T + t0 + j) * c.D + h * dh + e)];
        for (index_t s = 0; s < c.S; ++s)
          for (index_t e = 0; e < dh; ++e) Mh[s][e] = M[s][h * dh + e];
        Matrix read = times_transposed(Xh, Mh), write = times_transposed(Mh, Xh);
        softmax_rows(read, scale), softmax_rows(write, scale);
        const Matrix Rh = times(read, Mh), Uh = times(write, Xh);
        for (index_t j = 0; j < len; ++j)
          for (index_t e = 0; e < dh; ++e) R[j][h * dh + e] = Rh[j][e];
        for (index_t s = 0; s < c.S; ++s)
          for (index_t e = 0; e < dh; ++e) U[s][h * dh + e] = Uh[s][e];
      }
      const Matrix gi = gate_product(U, 0), gf = gate_product(U, 1);
      const Matrix go = c.lm2 ? gate_product(R, 2) : Matrix();
      for (index_t j = 0; j < len; ++j)
        for (index_t e = 0; e < c.D; ++e)
          y.v[static_cast<std::size_t>((b * c.T + t0 + j) * c.D + e)] = (c.lm2 ? sigmoid(go[j][e]) : 1.0) * R[j][e];
      for (index_t s = 0; s < c.S; ++s)
        for (index_t e = 0; e < c.D; ++e)
          M[s][e] = sigmoid(gf[s][e]) * M[s][e] + sigmoid(gi[s][e]) * (c.lm2 ? std::tanh(U[s][e]) : U[s][e]);
    }
    for (index_t s = 0; s < c.S; ++s)
      for (index_t e = 0; e < c.D; ++e) final_memory.v[static_cast<std::size_t>((b * c.S + s) * c.D + e)] = M[s][e];
  }
  const fs::path dir = root / "slot_memory" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "memory", memory);
  write(dir, "w_input", w[0]), write(dir, "b_input", bias[0]), write(dir, "w_forget", w[1]), write(dir, "b_forget", bias[1]);
  std::string inputs =
      "\"x\": \"x.npy\", \"memory\": \"memory.npy\", \"w_input\": \"w_input.npy\", \"b_input\": \"b_input.npy\", "
      "\"w_forget\": \"w_forget.npy\", \"b_forget\": \"b_forget.npy\"";
  if (c.lm2) {
    write(dir, "w_output", w[2]), write(dir, "b_output", bias[2]);
    inputs += ", \"w_output\": \"w_output.npy\", \"b_output\": \"b_output.npy\"";
  }
  write(dir, "y", y), write(dir, "final_memory", final_memory);
  write_case(dir, "slot_memory",
             std::string("\"gate\": \"") + (c.lm2 ? "lm2" : "input_forget") + "\", \"heads\": " + std::to_string(c.H) +
                 ", \"segment\": " + std::to_string(c.segment),
             inputs, "\"y\": \"y.npy\", \"final_memory\": \"final_memory.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261204);
  slot_case(root, {"b2_t37_s5_d12_h3_seg16_input_forget", 2, 37, 5, 12, 3, 16, false}, rng);
  slot_case(root, {"b1_t40_s9_d16_h2_seg0_lm2", 1, 40, 9, 16, 2, 0, true}, rng);
  return 0;
}
