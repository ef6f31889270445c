// Writes the conformance cases of mom (Mixture-of-Memories) into <golden>/mom/<case>/
// (tests/golden/README.md), computed here by a float64 loop of the paper's recurrence (Du et al.
// 2025, docs/operators.md section 4, mom): every memory keeps its gated delta-rule state, a
// token's routed entries update their memories in turn and the output sums the weighted reads.
// The routes are drawn here as distinct memories per token (top-k of random logits); the weights
// are their softmax. Nothing of seqmix is used but its .npy writer.
//
//   g++ -std=c++17 -O2 -I include tools/golden_mom.cpp -o golden_mom
//   ./golden_mom tests/golden
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_mom.cpp: float64 loop of M gated delta-rule memories updated by their routed tokens and "
    "read with the router's weights, independent of seqmix's operators";

struct MomCase {
  std::string name;
  index_t B, T, E, M, HK, HV, K, V;
  bool channel, initial;
};

void mom_case(const fs::path& root, const MomCase& c, std::mt19937_64& rng) {
  const Array q = random_array({c.B, c.T, c.HK, c.K}, rng, -1, 1);
  const Array k = random_array({c.B, c.T, c.E, c.HK, c.K}, rng, -0.6, 0.6);
  const Array v = random_array({c.B, c.T, c.E, c.HV, c.V}, rng, -1, 1);
  const Array beta = random_array({c.B, c.T, c.E, c.HV}, rng, 0, 1);
  const Array g = c.channel ? random_array({c.B, c.T, c.E, c.HV, c.K}, rng, -0.5, 0) : random_array({c.B, c.T, c.E, c.HV}, rng, -0.5, 0);
  const Array s0 = c.initial ? random_array({c.B, c.M, c.HV, c.K, c.V}, rng, -1, 1) : zeros({c.B, c.M, c.HV, c.K, c.V});
  // Routes: top-E of random logits, softmax weights rounded to float (what the file holds).
  Array memory = zeros({c.B, c.T, c.E}), weight = zeros({c.B, c.T, c.E});
  std::normal_distribution<double> normal(0, 1);
  for (index_t bt = 0; bt < c.B * c.T; ++bt) {
    std::vector<double> logit(static_cast<std::size_t>(c.M));
    for (double& x : logit) x = normal(rng);
    std::vector<index_t> ids(static_cast<std::size_t>(c.M));
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(), [&](index_t a, index_t b) { return logit[a] > logit[b]; });
    double sum = 0;
    for (index_t e = 0; e < c.E; ++e) sum += std::exp(logit[ids[e]] - logit[ids[0]]);
    for (index_t e = 0; e < c.E; ++e) {
      memory.v[static_cast<std::size_t>(bt * c.E + e)] = static_cast<double>(ids[e]);
      weight.v[static_cast<std::size_t>(bt * c.E + e)] = static_cast<double>(static_cast<float>(std::exp(logit[ids[e]] - logit[ids[0]]) / sum));
    }
  }
  Array o = zeros({c.B, c.T, c.HV, c.V}), final_state = s0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.K));
  auto S = [&](index_t b, index_t m, index_t hv, index_t r, index_t col) -> double& {
    return final_state.v[static_cast<std::size_t>(((((b * c.M + m) * c.HV + hv) * c.K + r) * c.V + col))];
  };
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t e = 0; e < c.E; ++e) {
        const index_t entry = (b * c.T + t) * c.E + e;
        const index_t m = static_cast<index_t>(memory.v[static_cast<std::size_t>(entry)]);
        for (index_t hv = 0; hv < c.HV; ++hv) {
          const index_t h = hv / (c.HV / c.HK);
          for (index_t r = 0; r < c.K; ++r) {
            const double gate = c.channel ? g.v[static_cast<std::size_t>((entry * c.HV + hv) * c.K + r)] : g.v[static_cast<std::size_t>(entry * c.HV + hv)];
            for (index_t col = 0; col < c.V; ++col) S(b, m, hv, r, col) *= std::exp(gate);
          }
          const double bt = beta.v[static_cast<std::size_t>(entry * c.HV + hv)];
          std::vector<double> u(static_cast<std::size_t>(c.V));
          for (index_t col = 0; col < c.V; ++col) {
            double kS = 0;
            for (index_t r = 0; r < c.K; ++r) kS += k.v[static_cast<std::size_t>((entry * c.HK + h) * c.K + r)] * S(b, m, hv, r, col);
            u[static_cast<std::size_t>(col)] = bt * (v.v[static_cast<std::size_t>((entry * c.HV + hv) * c.V + col)] - kS);
          }
          for (index_t r = 0; r < c.K; ++r)
            for (index_t col = 0; col < c.V; ++col)
              S(b, m, hv, r, col) += k.v[static_cast<std::size_t>((entry * c.HK + h) * c.K + r)] * u[static_cast<std::size_t>(col)];
          for (index_t col = 0; col < c.V; ++col) {
            double read = 0;
            for (index_t r = 0; r < c.K; ++r) read += q.v[static_cast<std::size_t>(((b * c.T + t) * c.HK + h) * c.K + r)] * S(b, m, hv, r, col);
            o.v[static_cast<std::size_t>(((b * c.T + t) * c.HV + hv) * c.V + col)] += weight.v[static_cast<std::size_t>(entry)] * scale * read;
          }
        }
      }
  const fs::path dir = root / "mom" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "beta", beta);
  write(dir, c.channel ? "g" : "g_scalar", g);
  write(dir, "memory", memory), write(dir, "weight", weight);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"beta\": \"beta.npy\", ";
  inputs += c.channel ? "\"g\": \"g.npy\"" : "\"g_scalar\": \"g_scalar.npy\"";
  inputs += ", \"memory\": \"memory.npy\", \"weight\": \"weight.npy\"";
  if (c.initial) write(dir, "initial_state", s0), inputs += ", \"initial_state\": \"initial_state.npy\"";
  write(dir, "o", o), write(dir, "final_state", final_state);
  write_case(dir, "mom", "\"memories\": " + std::to_string(c.M) + ", \"gate\": \"" + (c.channel ? "channel" : "scalar") + "\"",
             inputs, "\"o\": \"o.npy\", \"final_state\": \"final_state.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  mom_case(root, {"b2_t33_e2_m4_hk1_hv2_k8_v6_state", 2, 33, 2, 4, 1, 2, 8, 6, false, true}, rng);
  mom_case(root, {"b1_t50_e3_m5_h2_k16_v8_channel", 1, 50, 3, 5, 2, 2, 16, 8, true, false}, rng);
  return 0;
}
