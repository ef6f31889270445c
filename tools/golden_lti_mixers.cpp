// Writes the conformance cases of hyena and h3 into <golden>/<op>/<case>/ (tests/golden/README.md),
// computed by plain double-precision loops written here from the formulas of docs/operators.md
// section 11 (hyena: the order recurrence with direct convolutions; h3: the shift convolution,
// then for every (head, i, j) the diagonal convolution of kbar_i v_j, read out by q). Nothing of
// seqmix is used but its .npy writer, so the vectors are independent of the operators they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_lti_mixers.cpp -o golden_lti_mixers
//   ./golden_lti_mixers tests/golden
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

const char* kSource =
    "tools/golden_lti_mixers.cpp: float64 loops of the hyena and h3 formulas of docs/operators.md section 11, "
    "independent of seqmix's operators";

// ---- hyena ----------------------------------------------------------------------------------

struct HyenaCase {
  std::string name;
  index_t N, B, T, D, L;
  bool skip, state;
};

void hyena_case(const fs::path& root, const HyenaCase& c, std::mt19937_64& rng) {
  const index_t S = c.L - 1;
  const double a = 1.0 / std::sqrt(static_cast<double>(c.L));
  Array v = random_array({c.B, c.T, c.D}, rng, -1, 1), x = random_array({c.N, c.B, c.T, c.D}, rng, -1, 1);
  Array h = random_array({c.N, c.L, c.D}, rng, -a, a), skip = random_array({c.N, c.D}, rng, -1, 1);
  Array s0 = random_array({c.N, c.B, S, c.D}, rng, -1, 1);
  Array y = zeros({c.B, c.T, c.D}), fin = zeros({c.N, c.B, S, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t d = 0; d < c.D; ++d) {
      std::vector<double> z(static_cast<std::size_t>(c.T));
      for (index_t t = 0; t < c.T; ++t) z[t] = v.at((b * c.T + t) * c.D + d);
      for (index_t n = 0; n < c.N; ++n) {
        // xs(r): order n's state rows for r < 0, then z_n.
        const auto xs = [&](index_t r) {
          if (r >= 0) return z[static_cast<std::size_t>(r)];
          return c.state ? s0.at(((n * c.B + b) * S + S + r) * c.D + d) : 0.0;
        };
        for (index_t r = 0; r < S; ++r) fin.at(((n * c.B + b) * S + r) * c.D + d) = xs(c.T - S + r);
        std::vector<double> next(z.size());
        for (index_t t = 0; t < c.T; ++t) {
          double acc = c.skip ? skip.at(n * c.D + d) * z[t] : 0.0;
          for (index_t s = 0; s < c.L && t - s >= -S; ++s) acc += h.at((n * c.L + s) * c.D + d) * xs(t - s);
          next[static_cast<std::size_t>(t)] = x.at(((n * c.B + b) * c.T + t) * c.D + d) * acc;
        }
        z = next;
      }
      for (index_t t = 0; t < c.T; ++t) y.at((b * c.T + t) * c.D + d) = z[static_cast<std::size_t>(t)];
    }
  const fs::path dir = root / "hyena" / c.name;
  fs::create_directories(dir);
  write(dir, "v", v), write(dir, "x", x), write(dir, "filter", h), write(dir, "y", y);
  std::string inputs = "\"v\": \"v.npy\", \"x\": \"x.npy\", \"filter\": \"filter.npy\"", outputs = "\"y\": \"y.npy\"";
  if (c.skip) inputs += ", \"skip\": \"skip.npy\"", write(dir, "skip", skip);
  if (c.state) {
    inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
    outputs += ", \"final_state\": \"final_state.npy\"", write(dir, "final_state", fin);
  }
  write_case(dir, "hyena", "", inputs, outputs, "1e-05", kSource);
}

// ---- h3 -------------------------------------------------------------------------------------

struct H3Case {
  std::string name;
  index_t B, T, H, P, Ls, L;
};

void h3_case(const fs::path& root, const H3Case& c, std::mt19937_64& rng) {
  const index_t D = c.H * c.P;
  const double a = 1.0 / std::sqrt(static_cast<double>(c.L));
  Array q = random_array({c.B, c.T, c.H, c.P}, rng, -1, 1), k = random_array({c.B, c.T, c.H, c.P}, rng, -1, 1);
  Array v = random_array({c.B, c.T, c.H, c.P}, rng, -1, 1);
  Array shift = random_array({c.Ls, D}, rng, -1, 1), diag = random_array({c.L, D}, rng, -a, a);
  Array y = zeros({c.B, c.T, c.H, c.P});
  const auto idx = [&](index_t b, index_t t, index_t h, index_t i) { return ((b * c.T + t) * c.H + h) * c.P + i; };
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.H; ++h)
      for (index_t i = 0; i < c.P; ++i) {
        std::vector<double> kbar(static_cast<std::size_t>(c.T), 0.0);
        for (index_t t = 0; t < c.T; ++t)
          for (index_t s = 0; s < c.Ls && s <= t; ++s) kbar[t] += shift.at(s * D + h * c.P + i) * k.at(idx(b, t - s, h, i));
        for (index_t j = 0; j < c.P; ++j)
          for (index_t t = 0; t < c.T; ++t) {
            double kv = 0.0;
            for (index_t s = 0; s < c.L && s <= t; ++s)
              kv += diag.at(s * D + h * c.P + i) * kbar[t - s] * v.at(idx(b, t - s, h, j));
            y.at(idx(b, t, h, j)) += q.at(idx(b, t, h, i)) * kv;
          }
      }
  const fs::path dir = root / "h3" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "shift_filter", shift);
  write(dir, "diag_filter", diag), write(dir, "y", y);
  write_case(dir, "h3", "",
             "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"shift_filter\": \"shift_filter.npy\", "
             "\"diag_filter\": \"diag_filter.npy\"",
             "\"y\": \"y.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261217);
  hyena_case(root, {"n2_b2_t40_d5_l40_skip_state", 2, 2, 40, 5, 40, true, true}, rng);
  hyena_case(root, {"n3_b1_t33_d3_l20", 3, 1, 33, 3, 20, false, false}, rng);
  hyena_case(root, {"n1_b1_t30_d7_l30_skip", 1, 1, 30, 7, 30, true, false}, rng);
  h3_case(root, {"b2_t30_h2_p3_ls4_l30", 2, 30, 2, 3, 4, 30}, rng);
  h3_case(root, {"b1_t25_h1_p5_ls2_l10", 1, 25, 1, 5, 2, 10}, rng);
  return 0;
}
