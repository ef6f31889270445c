// Writes the conformance cases of lem (Long Expressive Memory, docs/operators.md section 12) into
// <golden>/lem/<case>/ (tests/golden/README.md), computed by plain double-precision loops written
// here from the paper's equations (Rusch et al., ICLR 2022) in the row order of its reference code
// (inp2hid chunks dt1, dt2, i_z, i_y; hid2hid chunks dt1, dt2, h_y; transform_z). Nothing of
// seqmix is used but its .npy writer, so the vectors are independent of the operator they check.
//
//   g++ -std=c++17 -O2 -I include -I tools tools/golden_lem.cpp -o golden_lem
//   ./golden_lem tests/golden
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_lem.cpp: float64 loops of the LEM equations (Rusch et al., ICLR 2022; docs/operators.md "
    "section 12) in the reference code's row order, independent of seqmix's operators";

struct LemCase {
  std::string name;
  index_t B, T, I, H;
  double dt;
  bool project, biases, state;
};

void lem_case(const fs::path& root, const LemCase& c, std::mt19937_64& rng) {
  const index_t H = c.H, X = c.project ? c.I : 4 * H;
  const double a = 1.0 / std::sqrt(static_cast<double>(H));
  Array x = random_array({c.B, c.T, X}, rng, -1.5, 1.5);
  Array w_ih = random_array({4 * H, c.I}, rng, -a, a), w_hh = random_array({3 * H, H}, rng, -a, a);
  Array w_z = random_array({H, H}, rng, -a, a);
  Array b_ih = random_array({4 * H}, rng, -a, a), b_hh = random_array({3 * H}, rng, -a, a);
  Array b_z = random_array({H}, rng, -a, a);
  Array s0 = random_array({c.B, 2, H}, rng, -0.8, 0.8);
  Array y = zeros({c.B, c.T, H}), fin = zeros({c.B, 2, H});
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  for (index_t b = 0; b < c.B; ++b) {
    std::vector<double> ys(H, 0.0), zs(H, 0.0);
    if (c.state)
      for (index_t j = 0; j < H; ++j) ys[j] = s0.at((b * 2) * H + j), zs[j] = s0.at((b * 2 + 1) * H + j);
    for (index_t t = 0; t < c.T; ++t) {
      // The token's input and recurrent pre-activations as whole vectors first.
      std::vector<double> gi(4 * H, 0.0), gh(3 * H, 0.0);
      for (index_t r = 0; r < 4 * H; ++r) {
        if (c.project)
          for (index_t i = 0; i < c.I; ++i) gi[r] += w_ih.at(r * c.I + i) * x.at((b * c.T + t) * X + i);
        else
          gi[r] = x.at((b * c.T + t) * X + r);
        if (c.biases) gi[r] += b_ih.at(r);
      }
      for (index_t r = 0; r < 3 * H; ++r) {
        for (index_t k = 0; k < H; ++k) gh[r] += w_hh.at(r * H + k) * ys[k];
        if (c.biases) gh[r] += b_hh.at(r);
      }
      // ms_dt_bar (chunk 0) steps y, ms_dt (chunk 1) steps z; z's target is i_y + h_y (input
      // chunk 3, recurrent chunk 2), y's target transform_z(z_t) + i_z (input chunk 2).
      std::vector<double> dt_bar(H);
      for (index_t j = 0; j < H; ++j) {
        dt_bar[j] = c.dt * sig(gi[j] + gh[j]);
        const double dt_z = c.dt * sig(gi[H + j] + gh[H + j]);
        zs[j] = (1 - dt_z) * zs[j] + dt_z * std::tanh(gi[3 * H + j] + gh[2 * H + j]);
      }
      std::vector<double> yn(H);
      for (index_t j = 0; j < H; ++j) {
        double tz = c.biases ? b_z.at(j) : 0.0;
        for (index_t k = 0; k < H; ++k) tz += w_z.at(j * H + k) * zs[k];
        yn[j] = (1 - dt_bar[j]) * ys[j] + dt_bar[j] * std::tanh(tz + gi[2 * H + j]);
      }
      ys = yn;
      for (index_t j = 0; j < H; ++j) y.at((b * c.T + t) * H + j) = ys[j];
    }
    for (index_t j = 0; j < H; ++j) fin.at((b * 2) * H + j) = ys[j], fin.at((b * 2 + 1) * H + j) = zs[j];
  }
  const fs::path dir = root / "lem" / c.name;
  fs::create_directories(dir);
  std::string inputs = "\"x\": \"x.npy\", \"w_hh\": \"w_hh.npy\", \"w_z\": \"w_z.npy\"";
  write(dir, "x", x), write(dir, "w_hh", w_hh), write(dir, "w_z", w_z);
  if (c.project) inputs += ", \"w_ih\": \"w_ih.npy\"", write(dir, "w_ih", w_ih);
  if (c.biases) {
    inputs += ", \"b_ih\": \"b_ih.npy\", \"b_hh\": \"b_hh.npy\", \"b_z\": \"b_z.npy\"";
    write(dir, "b_ih", b_ih), write(dir, "b_hh", b_hh), write(dir, "b_z", b_z);
  }
  if (c.state) inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
  write(dir, "y", y), write(dir, "final_state", fin);
  write_case(dir, "lem", "\"dt\": " + exact(c.dt), inputs, "\"y\": \"y.npy\", \"final_state\": \"final_state.npy\"",
             "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261204);
  lem_case(root, {"b2_t33_i12_h16_bias_state_dt0p5", 2, 33, 12, 16, 0.5, true, true, true}, rng);
  lem_case(root, {"b1_t50_h24_preact", 1, 50, 0, 24, 1.0, false, false, false}, rng);
  lem_case(root, {"b3_t65_i10_h40_bias_dt0p125", 3, 65, 10, 40, 0.125, true, true, false}, rng);
  return 0;
}
