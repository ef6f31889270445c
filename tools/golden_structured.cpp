// Writes the conformance cases of the 2-D scans into <golden>/{cross_scan,cross_merge,grid_scan}/
// <case>/ (tests/golden/README.md), computed here from their published definitions in float64:
//   cross_scan   VMamba's CrossScan: the four sequences of an H x W map, row-major (l = h W + w),
//                column-major (l = w H + h), and those two flipped (l -> H W - 1 - l)
//   cross_merge  VMamba's CrossMerge: y at a cell is the sum of the four sequences' tokens that
//                read that cell
//   grid_scan    the 2-D linear recurrence h[i,j] = a_left[i,j] h[i,j-1] + a_top[i,j] h[i-1,j]
//                + x[i,j], zero outside the grid, swept row by row
// (docs/operators.md section 19). Nothing of seqmix is used but its .npy writer, so the vectors
// are independent of the operators they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_structured.cpp -o golden_structured
//   ./golden_structured tests/golden
#include <random>
#include <string>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_structured.cpp: float64 loops of VMamba's CrossScan / CrossMerge orders and the 2-D linear "
    "recurrence over fp32-rounded inputs (docs/operators.md section 19), independent of seqmix's operators";

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
  return 0;
}
