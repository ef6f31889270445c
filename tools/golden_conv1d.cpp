// Writes the conformance cases of causal_conv1d with options.dilation and options.lookahead
// (docs/operators.md section 3, causal_conv1d; issue 16 item 1) into <golden>/causal_conv1d/<case>/
// (tests/golden/README.md), computed by a plain double-precision loop of the window formula:
//   y[b,t,d] = act(bias[d] + sum_{j<W} weight[d][j] * u(b, t + (j - (W-1-R)) * dil, d))
// where u(b, s, d) is x[b,s,d] for 0 <= s < T, initial_state[b, S+s, d] for s < 0 (zero without
// a state), zero for s >= T; S = (W-1) * dil, R = lookahead, act = identity or silu.
//   final_state[b, r, d] = u(b, T-S+r, d) for r < S (the last S inputs; the lookahead does not
// change it).
// Nothing of seqmix is used but its .npy writer, so the vectors are independent of the operator.
//
//   g++ -std=c++17 -O2 -I include tools/golden_conv1d.cpp -o golden_conv1d
//   ./golden_conv1d tests/golden
#include <cmath>
#include <random>
#include <string>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_conv1d.cpp: a float64 loop of the dilated / lookahead causal_conv1d window formula of "
    "docs/operators.md section 3, independent of seqmix's operators";

struct DilatedConvCase {
  std::string name;
  index_t B, T, D, W, dilation, lookahead;
  bool bias, state, silu;
};

void dilated_conv_case(const fs::path& root, const DilatedConvCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, D = c.D, W = c.W, S = (W - 1) * c.dilation;
  const Array x = random_array({B, T, D}, rng, -1, 1);
  const Array w = random_array({D, W}, rng, -0.8, 0.8);
  const Array bias = random_array({D}, rng, -0.5, 0.5);
  const Array s0 = random_array({B, S, D}, rng, -1, 1);
  const auto u = [&](index_t b, index_t s, index_t d) -> double {
    if (s >= T) return 0.0;
    if (s >= 0) return x.v[static_cast<std::size_t>((b * T + s) * D + d)];
    return c.state ? s0.v[static_cast<std::size_t>((b * S + S + s) * D + d)] : 0.0;
  };
  Array y = zeros({B, T, D}), fin = zeros({B, S, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double acc = c.bias ? bias.v[static_cast<std::size_t>(d)] : 0.0;
        for (index_t j = 0; j < W; ++j)
          acc += w.v[static_cast<std::size_t>(d * W + j)] * u(b, t + (j - (W - 1 - c.lookahead)) * c.dilation, d);
        if (c.silu) acc = acc / (1.0 + std::exp(-acc));
        y.at((b * T + t) * D + d) = acc;
      }
  for (index_t b = 0; b < B; ++b)
    for (index_t r = 0; r < S; ++r)
      for (index_t d = 0; d < D; ++d) fin.at((b * S + r) * D + d) = u(b, T - S + r, d);
  const fs::path dir = root / "causal_conv1d" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "weight", w), write(dir, "y", y);
  std::string inputs = "\"x\": \"x.npy\", \"weight\": \"weight.npy\"", outputs = "\"y\": \"y.npy\"";
  if (c.bias) inputs += ", \"bias\": \"bias.npy\"", write(dir, "bias", bias);
  if (c.state) inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
  if (S > 0) outputs += ", \"final_state\": \"final_state.npy\"", write(dir, "final_state", fin);
  const std::string params = std::string("\"activation\": \"") + (c.silu ? "silu" : "none") +
                             "\", \"dilation\": " + std::to_string(c.dilation) +
                             ", \"lookahead\": " + std::to_string(c.lookahead);
  write_case(dir, "causal_conv1d", params, inputs, outputs, "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261603);
  dilated_conv_case(root, {"b2_t30_d9_w4_dil2_bias_state_silu", 2, 30, 9, 4, 2, 0, true, true, true}, rng);
  dilated_conv_case(root, {"b1_t25_d7_w3_dil3_la1_bias", 1, 25, 7, 3, 3, 1, true, false, false}, rng);
  dilated_conv_case(root, {"b2_t12_d5_w5_dil1_la2_state", 2, 12, 5, 5, 1, 2, false, true, false}, rng);
  dilated_conv_case(root, {"b1_t7_d4_w3_dil4_la2_state_silu", 1, 7, 4, 3, 4, 2, false, true, true}, rng);
  dilated_conv_case(root, {"b2_t1_d6_w4_dil2_step_state", 2, 1, 6, 4, 2, 0, true, true, false}, rng);
  return 0;
}
