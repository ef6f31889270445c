// Writes the conformance cases of dmc_attention into <golden>/dmc_attention/<case>/
// (tests/golden/README.md), computed here by a float64 loop of the paper's training-time form
// (Nawrot et al. 2024, docs/operators.md section 6, dmc) rather than by running a cache: every
// position t gets its partial accumulation (k~_t, v~_t, z_t), restarted where alpha_t rounds to 0
// (and at t = 0) and otherwise the importance-weighted average with k~_{t-1}; query t attends to
// position i <= t when i = t or when token i + 1 started a new slot (alpha_{i+1} rounds to 0), the
// paper's mask. Nothing of seqmix is used but its .npy writer, so the vectors are independent of
// the operator they check. The caches start empty.
//
//   g++ -std=c++17 -O2 -I include tools/golden_dmc.cpp -o golden_dmc
//   ./golden_dmc tests/golden
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_dmc.cpp: float64 loop over the partial accumulations of every position and the "
    "paper's visibility mask (docs/operators.md section 6, dmc), independent of seqmix's operators";

struct DmcCase {
  std::string name;
  index_t B, T, Hq, Hkv, Dk, Dv;
  double scale;  // 0: 1 / sqrt(Dk)
};

void dmc_case(const fs::path& root, const DmcCase& c, std::mt19937_64& rng) {
  const Array q = random_array({c.B, c.T, c.Hq, c.Dk}, rng, -2, 2);
  const Array k = random_array({c.B, c.T, c.Hkv, c.Dk}, rng, -1, 1);
  const Array v = random_array({c.B, c.T, c.Hkv, c.Dv}, rng, -1, 1);
  const Array alpha = random_array({c.B, c.T, c.Hkv}, rng, 0, 1);
  const Array omega = random_array({c.B, c.T, c.Hkv}, rng, 0.05, 1);
  Array o = zeros({c.B, c.T, c.Hq, c.Dv});
  const double scale = c.scale == 0 ? 1.0 / std::sqrt(static_cast<double>(c.Dk)) : c.scale;
  const index_t group = c.Hq / c.Hkv;
  const auto at3 = [&](const Array& a, index_t b, index_t t, index_t h) {
    return a.v[static_cast<std::size_t>((b * c.T + t) * c.Hkv + h)];
  };
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hkv; ++h) {
      std::vector<std::vector<double>> pk(static_cast<std::size_t>(c.T)), pv(pk);
      double z = 0;
      for (index_t t = 0; t < c.T; ++t) {
        const double w = at3(omega, b, t, h);
        const bool restart = t == 0 || at3(alpha, b, t, h) < 0.5;
        auto& K = pk[static_cast<std::size_t>(t)];
        auto& V = pv[static_cast<std::size_t>(t)];
        for (index_t e = 0; e < c.Dk; ++e) {
          const double x = k.v[static_cast<std::size_t>(((b * c.T + t) * c.Hkv + h) * c.Dk + e)];
          K.push_back(restart ? x : (z * pk[static_cast<std::size_t>(t - 1)][static_cast<std::size_t>(e)] + w * x) / (z + w));
        }
        for (index_t e = 0; e < c.Dv; ++e) {
          const double x = v.v[static_cast<std::size_t>(((b * c.T + t) * c.Hkv + h) * c.Dv + e)];
          V.push_back(restart ? x : (z * pv[static_cast<std::size_t>(t - 1)][static_cast<std::size_t>(e)] + w * x) / (z + w));
        }
        z = restart ? w : z + w;
      }
      for (index_t t = 0; t < c.T; ++t)
        for (index_t g = 0; g < group; ++g) {
          const index_t hq = h * group + g;
          std::vector<double> p(static_cast<std::size_t>(t + 1), 0.0);
          std::vector<bool> visible(static_cast<std::size_t>(t + 1), false);
          double top = -INFINITY;
          for (index_t i = 0; i <= t; ++i) {
            visible[static_cast<std::size_t>(i)] = i == t || at3(alpha, b, i + 1, h) < 0.5;
            if (!visible[static_cast<std::size_t>(i)]) continue;
            double s = 0;
            for (index_t e = 0; e < c.Dk; ++e)
              s += q.v[static_cast<std::size_t>(((b * c.T + t) * c.Hq + hq) * c.Dk + e)] * pk[static_cast<std::size_t>(i)][static_cast<std::size_t>(e)];
            p[static_cast<std::size_t>(i)] = scale * s;
            top = std::fmax(top, scale * s);
          }
          double total = 0;
          for (index_t i = 0; i <= t; ++i)
            if (visible[static_cast<std::size_t>(i)]) total += p[static_cast<std::size_t>(i)] = std::exp(p[static_cast<std::size_t>(i)] - top);
          for (index_t i = 0; i <= t; ++i) {
            if (!visible[static_cast<std::size_t>(i)]) continue;
            for (index_t e = 0; e < c.Dv; ++e)
              o.v[static_cast<std::size_t>(((b * c.T + t) * c.Hq + hq) * c.Dv + e)] +=
                  p[static_cast<std::size_t>(i)] / total * pv[static_cast<std::size_t>(i)][static_cast<std::size_t>(e)];
          }
        }
    }
  const fs::path dir = root / "dmc_attention" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "alpha", alpha), write(dir, "omega", omega);
  write(dir, "o", o);
  write_case(dir, "dmc_attention", "\"scale\": " + exact(c.scale),
             "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"alpha\": \"alpha.npy\", \"omega\": \"omega.npy\"",
             "\"o\": \"o.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  dmc_case(root, {"b2_t37_hq4_hkv2_dk16_dv12", 2, 37, 4, 2, 16, 12, 0.0}, rng);
  dmc_case(root, {"b1_t70_hq3_hkv1_dk9_dv20_scale05", 1, 70, 3, 1, 9, 20, 0.5}, rng);
  return 0;
}
