// Writes the conformance cases of product_key_memory into <golden>/product_key_memory/<case>/
// (tests/golden/README.md), computed here by a float64 loop of docs/operators.md section 13 written
// from the definition of a product key: every one of the N = n_sub^2 keys is built as the
// concatenation [keys_a[h,i], keys_b[h,j]] and dotted with the whole query, all N scores are fully
// sorted (ties to the lower row), and the top_k are softmaxed. Nothing of seqmix is used but its
// .npy writer, so the vectors are independent of the operator they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_memory.cpp -o golden_memory
//   ./golden_memory tests/golden
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_memory.cpp: float64 loop over all N concatenated product keys, full sort, softmax of the "
    "top_k (docs/operators.md section 13), independent of seqmix's operators";

struct PkmCase {
  std::string name;
  index_t T, H, Dk, n_sub, Dv, k;
  double scale;
  bool gate;
};

void pkm_case(const fs::path& root, const PkmCase& c, std::mt19937_64& rng) {
  const index_t half = c.Dk / 2, N = c.n_sub * c.n_sub;
  const Array q = random_array({c.T, c.H, c.Dk}, rng, -1, 1);
  const Array ka = random_array({c.H, c.n_sub, half}, rng, -1, 1);
  const Array kb = random_array({c.H, c.n_sub, half}, rng, -1, 1);
  const Array values = random_array({N, c.Dv}, rng, -1, 1);
  const Array gate = random_array({c.T, c.Dv}, rng, -3, 3);
  Array y{{c.T, c.Dv}, std::vector<double>(static_cast<std::size_t>(c.T * c.Dv), 0.0)};
  std::vector<double> key(static_cast<std::size_t>(c.Dk));
  for (index_t t = 0; t < c.T; ++t) {
    for (index_t h = 0; h < c.H; ++h) {
      std::vector<std::pair<double, index_t>> scored;  // (-score, row): ascending sort = best first
      for (index_t i = 0; i < c.n_sub; ++i)
        for (index_t j = 0; j < c.n_sub; ++j) {
          for (index_t e = 0; e < half; ++e) {
            key[static_cast<std::size_t>(e)] = ka.v[static_cast<std::size_t>((h * c.n_sub + i) * half + e)];
            key[static_cast<std::size_t>(half + e)] = kb.v[static_cast<std::size_t>((h * c.n_sub + j) * half + e)];
          }
          double s = 0;
          for (index_t e = 0; e < c.Dk; ++e) s += q.v[static_cast<std::size_t>((t * c.H + h) * c.Dk + e)] * key[static_cast<std::size_t>(e)];
          scored.emplace_back(-c.scale * s, i * c.n_sub + j);
        }
      std::sort(scored.begin(), scored.end());
      if (c.k < N && scored[static_cast<std::size_t>(c.k - 1)].first + 1e-9 > scored[static_cast<std::size_t>(c.k)].first)
        std::fprintf(stderr, "%s: near-tie at the k-th place (t=%td, h=%td)\n", c.name.c_str(), t, h);
      double total = 0;
      for (index_t r = 0; r < c.k; ++r) total += std::exp(scored[0].first - scored[static_cast<std::size_t>(r)].first);
      for (index_t r = 0; r < c.k; ++r) {
        const double w = std::exp(scored[0].first - scored[static_cast<std::size_t>(r)].first) / total;
        const index_t row = scored[static_cast<std::size_t>(r)].second;
        for (index_t e = 0; e < c.Dv; ++e)
          y.v[static_cast<std::size_t>(t * c.Dv + e)] += w * values.v[static_cast<std::size_t>(row * c.Dv + e)];
      }
    }
    if (c.gate)
      for (index_t e = 0; e < c.Dv; ++e) {
        const double g = gate.v[static_cast<std::size_t>(t * c.Dv + e)];
        y.v[static_cast<std::size_t>(t * c.Dv + e)] *= g / (1.0 + std::exp(-g));
      }
  }
  const fs::path dir = root / "product_key_memory" / c.name;
  fs::create_directories(dir);
  write(dir, "query", q), write(dir, "keys_a", ka), write(dir, "keys_b", kb), write(dir, "values", values), write(dir, "y", y);
  std::string inputs = "\"query\": \"query.npy\", \"keys_a\": \"keys_a.npy\", \"keys_b\": \"keys_b.npy\", \"values\": \"values.npy\"";
  if (c.gate) write(dir, "gate", gate), inputs += ", \"gate\": \"gate.npy\"";
  write_case(dir, "product_key_memory", "\"top_k\": " + std::to_string(c.k) + ", \"scale\": " + exact(c.scale), inputs,
             "\"y\": \"y.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261202);
  pkm_case(root, {"t20_h2_dk16_nsub12_dv10_k5_gate", 20, 2, 16, 12, 10, 5, 0.25, true}, rng);
  pkm_case(root, {"t7_h1_dk8_nsub9_dv33_k9", 7, 1, 8, 9, 33, 9, 1.0, false}, rng);
  pkm_case(root, {"t3_h3_dk4_nsub5_dv16_k1", 3, 3, 4, 5, 16, 1, 0.5, false}, rng);
  return 0;
}
