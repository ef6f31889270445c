// Writes the conformance cases of feature_map into <golden>/feature_map/<case>/
// (tests/golden/README.md), computed here by float64 loops of the papers' definitions: DPFP as
// Schlag et al. (2021) write it with concatenation and rolls (r = [relu(x), relu(-x)], each roll
// by j = 1..nu multiplied with r), Performer's positive random features exp(w . x - |x|^2/2) /
// sqrt(M) on x scaled by K^(-1/4) (Choromanski et al. 2021), Hedgehog's [softmax(W x + b),
// softmax(-(W x + b))] (Zhang et al. 2024). The weights are plain random arrays stored with the
// case. Nothing of seqmix is used but its .npy writer.
//
//   g++ -std=c++17 -O2 -I include tools/golden_feature_maps.cpp -o golden_feature_maps
//   ./golden_feature_maps tests/golden
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_feature_maps.cpp: float64 loops of DPFP (concatenation and rolls), Performer's positive random "
    "features and Hedgehog's two softmaxes, independent of seqmix's operators";

struct MapCase {
  std::string name, kind;
  index_t B, T, H, K, M, Hw, nu;
  double input_scale;
  bool bias;
};

std::vector<double> dpfp(const std::vector<double>& x, index_t nu) {
  const std::size_t K = x.size(), n = 2 * K;
  std::vector<double> r(n), out;
  for (std::size_t i = 0; i < K; ++i) r[i] = x[i] > 0 ? x[i] : 0.0, r[K + i] = -x[i] > 0 ? -x[i] : 0.0;
  for (index_t j = 1; j <= nu; ++j) {
    std::vector<double> rolled(n);
    for (std::size_t i = 0; i < n; ++i) rolled[(i + static_cast<std::size_t>(j)) % n] = r[i];
    for (std::size_t i = 0; i < n; ++i) out.push_back(r[i] * rolled[i]);
  }
  return out;
}

void map_case(const fs::path& root, const MapCase& c, std::mt19937_64& rng) {
  const Array x = random_array({c.B, c.T, c.H, c.K}, rng, -1.5, 1.5);
  const bool weighted = c.kind != "dpfp";
  const Array w = weighted ? random_array({c.Hw, c.M, c.K}, rng, -1, 1) : zeros({0});
  const Array bias = c.bias ? random_array({c.Hw, c.M}, rng, -0.5, 0.5) : zeros({0});
  const index_t Kf = c.kind == "dpfp" ? 2 * c.nu * c.K : c.kind == "hedgehog" ? 2 * c.M : c.M;
  Array phi = zeros({c.B, c.T, c.H, Kf});
  for (index_t row = 0; row < c.B * c.T * c.H; ++row) {
    const index_t h = row % c.H, hw = c.Hw == 1 ? 0 : h;
    std::vector<double> xs(static_cast<std::size_t>(c.K));
    for (index_t k = 0; k < c.K; ++k) xs[static_cast<std::size_t>(k)] = c.input_scale * x.v[static_cast<std::size_t>(row * c.K + k)];
    std::vector<double> out;
    if (!weighted) {
      out = dpfp(xs, c.nu);
    } else {
      std::vector<double> z(static_cast<std::size_t>(c.M));
      double norm2 = 0;
      for (double value : xs) norm2 += value * value;
      for (index_t j = 0; j < c.M; ++j) {
        double acc = c.bias ? bias.v[static_cast<std::size_t>(hw * c.M + j)] : 0.0;
        for (index_t k = 0; k < c.K; ++k) acc += w.v[static_cast<std::size_t>((hw * c.M + j) * c.K + k)] * xs[static_cast<std::size_t>(k)];
        z[static_cast<std::size_t>(j)] = acc;
      }
      if (c.kind == "positive_random") {
        for (double value : z) out.push_back(std::exp(value - norm2 / 2) / std::sqrt(static_cast<double>(c.M)));
      } else {
        double sp = 0, sn = 0;
        for (double value : z) sp += std::exp(value), sn += std::exp(-value);
        for (double value : z) out.push_back(std::exp(value) / sp);
        for (double value : z) out.push_back(std::exp(-value) / sn);
      }
    }
    for (index_t f = 0; f < Kf; ++f) phi.v[static_cast<std::size_t>(row * Kf + f)] = out[static_cast<std::size_t>(f)];
  }
  const fs::path dir = root / "feature_map" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x);
  std::string inputs = "\"x\": \"x.npy\"";
  if (weighted) write(dir, "weight", w), inputs += ", \"weight\": \"weight.npy\"";
  if (c.bias) write(dir, "bias", bias), inputs += ", \"bias\": \"bias.npy\"";
  write(dir, "phi", phi);
  write_case(dir, "feature_map",
             "\"kind\": \"" + c.kind + "\", \"dpfp_nu\": " + std::to_string(c.nu) + ", \"input_scale\": " + exact(c.input_scale),
             inputs, "\"phi\": \"phi.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  const double performer_scale = static_cast<double>(static_cast<float>(std::pow(16.0, -0.25)));
  map_case(root, {"dpfp_nu3_b2_t9_h3_k5", "dpfp", 2, 9, 3, 5, 0, 1, 3, 1.0, false}, rng);
  map_case(root, {"dpfp_nu1_b1_t20_h2_k16_scale", "dpfp", 1, 20, 2, 16, 0, 1, 1, 0.5, false}, rng);
  map_case(root, {"positive_random_b1_t33_h2_k16_m40_perhead", "positive_random", 1, 33, 2, 16, 40, 2, 1, performer_scale, false}, rng);
  map_case(root, {"hedgehog_b2_t17_h3_k8_m12_bias_shared", "hedgehog", 2, 17, 3, 8, 12, 1, 1, 1.0, true}, rng);
  return 0;
}
