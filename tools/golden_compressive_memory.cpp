// Writes the conformance cases of compressive_memory into <golden>/compressive_memory/<case>/
// (tests/golden/README.md), computed here in float64 from docs/operators.md section 13 with a
// formulation of its own: the memory is a queue of token indices and the compressed memory a queue
// of groups of token indices, and a compressed entry's key / value is computed from the original
// keys / values of its group whenever it is read. Mean, max and conv compression (most_used is a
// discrete choice between entries whose usages can tie within rounding, so it is left to the
// unit tests). Nothing of seqmix is used but its .npy writer.
//
//   g++ -std=c++17 -O2 -I include tools/golden_compressive_memory.cpp -o golden_compressive_memory
//   ./golden_compressive_memory tests/golden
#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_compressive_memory.cpp: float64, the memories as queues of token indices and of groups, "
    "compressed entries recomputed from the original keys / values (docs/operators.md section 13), "
    "independent of seqmix's operators";

struct CmemCase {
  std::string name, compression;  // "mean", "max" or "conv"
  index_t B, T, Hq, Hkv, dk, dv, segment, memory, compressed, rate;
};

void cmem_case(const fs::path& root, const CmemCase& c, std::mt19937_64& rng) {
  const Array q = random_array({c.B, c.T, c.Hq, c.dk}, rng, -1.5, 1.5);
  const Array k = random_array({c.B, c.T, c.Hkv, c.dk}, rng, -1.5, 1.5);
  const Array v = random_array({c.B, c.T, c.Hkv, c.dv}, rng, -1, 1);
  const bool conv = c.compression == "conv";
  const Array wk = conv ? random_array({c.Hkv, c.rate, c.dk, c.dk}, rng, -0.5, 0.5) : Array{};
  const Array wv = conv ? random_array({c.Hkv, c.rate, c.dv, c.dv}, rng, -0.5, 0.5) : Array{};
  Array o = zeros({c.B, c.T, c.Hq, c.dv});
  const index_t G = c.Hq / c.Hkv, L = c.segment == 0 ? c.T : c.segment;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  // Row of token t, KV head h of k (width dk) or v (width dv).
  const auto row = [&](const Array& a, index_t b, index_t t, index_t h, index_t w) {
    std::vector<double> r(static_cast<std::size_t>(w));
    for (index_t e = 0; e < w; ++e) r[e] = a.v[static_cast<std::size_t>(((b * c.T + t) * c.Hkv + h) * w + e)];
    return r;
  };
  // A compressed entry from its group of token indices.
  const auto compress = [&](const std::vector<index_t>& group, const Array& a, const Array& w_conv, index_t b, index_t h,
                            index_t width) {
    std::vector<double> out(static_cast<std::size_t>(width), c.compression == "max" ? -INFINITY : 0.0);
    for (std::size_t i = 0; i < group.size(); ++i) {
      const auto r = row(a, b, group[i], h, width);
      for (index_t e = 0; e < width; ++e) {
        if (c.compression == "mean") out[e] += r[e] / static_cast<double>(group.size());
        else if (c.compression == "max") out[e] = std::max(out[e], r[e]);
        else
          for (index_t f = 0; f < width; ++f)
            out[e] += w_conv.v[static_cast<std::size_t>(((h * c.rate + static_cast<index_t>(i)) * width + e) * width + f)] * r[f];
      }
    }
    return out;
  };
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hkv; ++h) {
      std::deque<index_t> memory;                     // token indices, oldest first
      std::deque<std::vector<index_t>> compressed;    // groups of token indices, oldest first
      for (index_t t0 = 0; t0 < c.T; t0 += L) {
        const index_t len = std::min(L, c.T - t0);
        std::vector<std::vector<double>> keys, values;
        for (const auto& group : compressed) {
          keys.push_back(compress(group, k, wk, b, h, c.dk));
          values.push_back(compress(group, v, wv, b, h, c.dv));
        }
        for (index_t t = 0; t < len + static_cast<index_t>(memory.size()); ++t) {
          const index_t token = t < static_cast<index_t>(memory.size()) ? memory[t] : t0 + t - static_cast<index_t>(memory.size());
          keys.push_back(row(k, b, token, h, c.dk)), values.push_back(row(v, b, token, h, c.dv));
        }
        const std::size_t before = keys.size() - static_cast<std::size_t>(len);  // entries every token of the segment sees
        for (index_t g = h * G; g < (h + 1) * G; ++g)
          for (index_t j = 0; j < len; ++j) {
            const std::size_t n = before + static_cast<std::size_t>(j) + 1;
            std::vector<double> s(n);
            for (std::size_t i = 0; i < n; ++i) {
              double dot = 0;
              for (index_t e = 0; e < c.dk; ++e)
                dot += q.v[static_cast<std::size_t>(((b * c.T + t0 + j) * c.Hq + g) * c.dk + e)] * keys[i][e];
              s[i] = scale * dot;
            }
            const double top = *std::max_element(s.begin(), s.end());
            double total = 0;
            for (auto& x : s) total += (x = std::exp(x - top));
            for (index_t e = 0; e < c.dv; ++e) {
              double acc = 0;
              for (std::size_t i = 0; i < n; ++i) acc += s[i] * values[i][e];
              o.v[static_cast<std::size_t>(((b * c.T + t0 + j) * c.Hq + g) * c.dv + e)] = acc / total;
            }
          }
        for (index_t t = t0; t < t0 + len; ++t) memory.push_back(t);
        while (static_cast<index_t>(memory.size()) - c.memory >= c.rate) {
          std::vector<index_t> group(memory.begin(), memory.begin() + c.rate);
          memory.erase(memory.begin(), memory.begin() + c.rate);
          compressed.push_back(group);
          if (static_cast<index_t>(compressed.size()) > c.compressed) compressed.pop_front();
        }
      }
    }
  const fs::path dir = root / "compressive_memory" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "o", o);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\"";
  if (conv) {
    write(dir, "conv_key", wk), write(dir, "conv_value", wv);
    inputs += ", \"conv_key\": \"conv_key.npy\", \"conv_value\": \"conv_value.npy\"";
  }
  write_case(dir, "compressive_memory",
             "\"compression\": \"" + c.compression + "\", \"segment\": " + std::to_string(c.segment) +
                 ", \"memory\": " + std::to_string(c.memory) + ", \"compressed\": " + std::to_string(c.compressed) +
                 ", \"rate\": " + std::to_string(c.rate),
             inputs, "\"o\": \"o.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261222);
  cmem_case(root, {"b2_t37_hq4_hkv2_seg8_m6_c4_rate3_mean", "mean", 2, 37, 4, 2, 8, 6, 8, 6, 4, 3}, rng);
  cmem_case(root, {"b1_t25_h3_seg6_m4_c5_rate2_max", "max", 1, 25, 3, 3, 5, 4, 6, 4, 5, 2}, rng);
  cmem_case(root, {"b1_t30_hq2_hkv1_seg7_m5_c3_rate2_conv", "conv", 1, 30, 2, 1, 4, 5, 7, 5, 3, 2}, rng);
  return 0;
}
