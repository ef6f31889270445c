// Writes the conformance cases of the 2-D scans into <golden>/{cross_scan,cross_merge,grid_scan}/
// <case>/ (tests/golden/README.md), computed here from their published definitions in float64:
//   cross_scan   VMamba's CrossScan: the four sequences of an H x W map, row-major (l = h W + w),
//                column-major (l = w H + h), and those two flipped (l -> H W - 1 - l)
//   cross_merge  VMamba's CrossMerge: y at a cell is the sum of the four sequences' tokens that
//                read that cell
//   grid_scan    the 2-D linear recurrence h[i,j] = a_left[i,j] h[i,j-1] + a_top[i,j] h[i-1,j]
//                + x[i,j], zero outside the grid, swept row by row
//   cross_selective_scan  VMamba's SS2D: per direction k, Mamba's selective scan (mamba_ssm's
//                selective_scan_ref, docs/operators.md section 8) run token by token over the
//                sequence CrossScan builds from that direction's map, then CrossMerge's sum at
//                each cell; MSVMamba's coarse directions scan a ceil(H/2) x ceil(W/2) map and
//                their output is read back at fine cell (h, w) from coarse cell (h/2, w/2)
// (docs/operators.md section 19). Nothing of seqmix is used but its .npy writer, so the vectors
// are independent of the operators they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_structured.cpp -o golden_structured
//   ./golden_structured tests/golden
#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_structured.cpp: float64 loops of VMamba's CrossScan / CrossMerge orders and the 2-D linear "
    "recurrence over fp32-rounded inputs (docs/operators.md section 19), independent of seqmix's operators";

const char* kSourceSelective =
    "tools/golden_structured.cpp: float64 selective-scan recurrence (mamba_ssm's selective_scan_ref) over VMamba's "
    "four CrossScan orders, summed per cell as CrossMerge does, coarse directions upsampled by nearest neighbour "
    "(docs/operators.md sections 8 and 19), independent of seqmix's operators";

struct GridCase {
  std::string name;
  index_t B, H, W, C;
};

// Token l of sequence k reads cell (h, w) with l = position(k, h, w): the inverse written out
// per order, as VMamba's code builds it (flatten, transpose-then-flatten, flip).
index_t structured_position(index_t k, index_t H, index_t W, index_t h, index_t w) {
  const index_t row_major = h * W + w, column_major = w * H + h, L = H * W;
  switch (k) {
    case 0: return row_major;
    case 1: return column_major;
    case 2: return L - 1 - row_major;
    default: return L - 1 - column_major;
  }
}

void cross_scan_case(const fs::path& root, const GridCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, H = c.H, W = c.W, C = c.C, L = H * W;
  const Array x = random_array({B, H, W, C}, rng, -1, 1);
  Array xs = zeros({B, 4, L, C});
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 0; k < 4; ++k)
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w)
          for (index_t ch = 0; ch < C; ++ch)
            xs.at(((b * 4 + k) * L + structured_position(k, H, W, h, w)) * C + ch) = x.v[((b * H + h) * W + w) * C + ch];
  const fs::path dir = root / "cross_scan" / c.name;
  fs::create_directories(dir);
  write(dir, "x", x), write(dir, "xs", xs);
  write_case(dir, "cross_scan", "", "\"x\": \"x.npy\"", "\"xs\": \"xs.npy\"", "1e-07", kSource);
}

void cross_merge_case(const fs::path& root, const GridCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, H = c.H, W = c.W, C = c.C, L = H * W;
  const Array ys = random_array({B, 4, L, C}, rng, -1, 1);
  Array y = zeros({B, H, W, C});
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < W; ++w)
        for (index_t ch = 0; ch < C; ++ch) {
          double s = 0.0;
          for (index_t k = 0; k < 4; ++k) s += ys.v[((b * 4 + k) * L + structured_position(k, H, W, h, w)) * C + ch];
          y.at(((b * H + h) * W + w) * C + ch) = s;
        }
  const fs::path dir = root / "cross_merge" / c.name;
  fs::create_directories(dir);
  write(dir, "ys", ys), write(dir, "y", y);
  write_case(dir, "cross_merge", "", "\"ys\": \"ys.npy\"", "\"y\": \"y.npy\"", "1e-06", kSource);
}

// Coefficients in [0, 0.5) each, so |h| stays bounded (a_left + a_top < 1).
void grid_scan_case(const fs::path& root, const GridCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, H = c.H, W = c.W, C = c.C;
  const Array a_left = random_array({B, H, W, C}, rng, 0, 0.5);
  const Array a_top = random_array({B, H, W, C}, rng, 0, 0.5);
  const Array x = random_array({B, H, W, C}, rng, -1, 1);
  Array h = zeros({B, H, W, C});
  auto at = [&](index_t b, index_t i, index_t j, index_t ch) { return ((b * H + i) * W + j) * C + ch; };
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < H; ++i)
      for (index_t j = 0; j < W; ++j)
        for (index_t ch = 0; ch < C; ++ch) {
          const double left = j > 0 ? h.v[at(b, i, j - 1, ch)] : 0.0, top = i > 0 ? h.v[at(b, i - 1, j, ch)] : 0.0;
          h.at(at(b, i, j, ch)) = a_left.v[at(b, i, j, ch)] * left + a_top.v[at(b, i, j, ch)] * top + x.v[at(b, i, j, ch)];
        }
  const fs::path dir = root / "grid_scan" / c.name;
  fs::create_directories(dir);
  write(dir, "a_left", a_left), write(dir, "a_top", a_top), write(dir, "x", x), write(dir, "h", h);
  write_case(dir, "grid_scan", "", "\"a_left\": \"a_left.npy\", \"a_top\": \"a_top.npy\", \"x\": \"x.npy\"",
             "\"h\": \"h.npy\"", "1e-05", kSource);
}


struct CrossSelectiveCase {
  std::string name;
  index_t B, H, W, D, N, G;
  bool softplus, skip, gate, bias;
  std::array<bool, 4> coarse;  // MSVMamba: the direction scans the 2x-downsampled map
};

double structured_softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

void cross_selective_scan_case(const fs::path& root, const CrossSelectiveCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, H = c.H, W = c.W, D = c.D, N = c.N, G = c.G;
  const fs::path dir = root / "cross_selective_scan" / c.name;
  fs::create_directories(dir);
  Array y = zeros({B, H, W, D});
  std::string inputs, scales;
  for (index_t k = 0; k < 4; ++k) {
    const bool coarse = c.coarse[static_cast<std::size_t>(k)];
    const index_t Hk = coarse ? (H + 1) / 2 : H, Wk = coarse ? (W + 1) / 2 : W, L = Hk * Wk;
    const Array u = random_array({B, Hk, Wk, D}, rng, -1, 1);
    // Raw delta: around softplus's knee when it is applied, else already a positive step.
    const Array delta = c.softplus ? random_array({B, Hk, Wk, D}, rng, -3, 1) : random_array({B, Hk, Wk, D}, rng, 0.02, 0.6);
    const Array A = random_array({D, N}, rng, -2, -0.25);
    const Array Bm = random_array({B, Hk, Wk, G, N}, rng, -1, 1), Cm = random_array({B, Hk, Wk, G, N}, rng, -1, 1);
    const Array Dskip = random_array({D}, rng, -1, 1), z = random_array({B, Hk, Wk, D}, rng, -2, 2);
    const Array dbias = random_array({D}, rng, -0.5, 0.5);
    // cell_of[l] = the cell (h * Wk + w) token l of the sequence reads.
    std::vector<index_t> cell_of(static_cast<std::size_t>(L));
    for (index_t h = 0; h < Hk; ++h)
      for (index_t w = 0; w < Wk; ++w) cell_of[static_cast<std::size_t>(structured_position(k, Hk, Wk, h, w))] = h * Wk + w;
    std::vector<double> yk(static_cast<std::size_t>(B * L * D));
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) {
        const index_t g = d / (D / G);
        std::vector<double> state(static_cast<std::size_t>(N), 0.0);
        for (index_t l = 0; l < L; ++l) {
          const index_t cell = b * L + cell_of[static_cast<std::size_t>(l)];
          double dt = delta.v[static_cast<std::size_t>(cell * D + d)] + (c.bias ? dbias.v[static_cast<std::size_t>(d)] : 0.0);
          if (c.softplus) dt = structured_softplus(dt);
          const double ut = u.v[static_cast<std::size_t>(cell * D + d)];
          double out = 0.0;
          for (index_t n = 0; n < N; ++n) {
            const std::size_t bc = static_cast<std::size_t>((cell * G + g) * N + n);
            double& s = state[static_cast<std::size_t>(n)];
            s = std::exp(dt * A.v[static_cast<std::size_t>(d * N + n)]) * s + dt * Bm.v[bc] * ut;
            out += Cm.v[bc] * s;
          }
          if (c.skip) out += Dskip.v[static_cast<std::size_t>(d)] * ut;
          if (c.gate) {
            const double zt = z.v[static_cast<std::size_t>(cell * D + d)];
            out *= zt / (1.0 + std::exp(-zt));
          }
          yk[static_cast<std::size_t>(cell * D + d)] = out;
        }
      }
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w) {
          const index_t src = (b * Hk + (coarse ? h / 2 : h)) * Wk + (coarse ? w / 2 : w);
          for (index_t d = 0; d < D; ++d) y.at(((b * H + h) * W + w) * D + d) += yk[static_cast<std::size_t>(src * D + d)];
        }
    const std::string n = std::to_string(k);
    write(dir, "u" + n, u), write(dir, "delta" + n, delta), write(dir, "A" + n, A), write(dir, "Bm" + n, Bm);
    write(dir, "Cm" + n, Cm);
    for (const char* name : {"u", "delta", "A", "Bm", "Cm"})
      inputs += std::string(inputs.empty() ? "" : ", ") + "\"" + name + n + "\": \"" + name + n + ".npy\"";
    if (c.skip) inputs += ", \"Dskip" + n + "\": \"Dskip" + n + ".npy\"", write(dir, "Dskip" + n, Dskip);
    if (c.gate) inputs += ", \"z" + n + "\": \"z" + n + ".npy\"", write(dir, "z" + n, z);
    if (c.bias) inputs += ", \"delta_bias" + n + "\": \"delta_bias" + n + ".npy\"", write(dir, "delta_bias" + n, dbias);
    scales += std::string(k ? ", " : "") + (coarse ? "\"coarse\"" : "\"full\"");
  }
  write(dir, "y", y);
  write_case(dir, "cross_selective_scan",
             std::string("\"delta_softplus\": ") + (c.softplus ? "true" : "false") + ", \"scales\": [" + scales + "]",
             inputs, "\"y\": \"y.npy\"", "1e-04", kSourceSelective);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  cross_scan_case(root, {"b2_h5_w7_c3", 2, 5, 7, 3}, rng);
  cross_scan_case(root, {"b1_h1_w9_c4", 1, 1, 9, 4}, rng);
  cross_scan_case(root, {"b1_h6_w1_c2", 1, 6, 1, 2}, rng);
  cross_merge_case(root, {"b2_h4_w6_c5", 2, 4, 6, 5}, rng);
  cross_merge_case(root, {"b1_h7_w3_c1", 1, 7, 3, 1}, rng);
  grid_scan_case(root, {"b2_h9_w13_c5", 2, 9, 13, 5}, rng);
  grid_scan_case(root, {"b1_h1_w17_c3", 1, 1, 17, 3}, rng);
  grid_scan_case(root, {"b1_h24_w20_c8", 1, 24, 20, 8}, rng);
  // After the earlier cases, so their vectors stay as they were.
  constexpr std::array<bool, 4> kFull = {false, false, false, false}, kMultiScale = {false, true, true, true};
  cross_selective_scan_case(root, {"b2_h5_w7_d6_n4_softplus_skip_bias", 2, 5, 7, 6, 4, 1, true, true, false, true, kFull}, rng);
  cross_selective_scan_case(root, {"b1_h6_w1_d4_n3_g2_gate", 1, 6, 1, 4, 3, 2, false, false, true, false, kFull}, rng);
  cross_selective_scan_case(root, {"b1_h1_w9_d3_n2_full", 1, 1, 9, 3, 2, 1, true, false, false, false, kFull}, rng);
  cross_selective_scan_case(root, {"b2_h5_w6_d4_n4_g2_multiscale", 2, 5, 6, 4, 4, 2, true, true, true, true, kMultiScale}, rng);
  return 0;
}
