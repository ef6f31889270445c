// Writes the conformance cases of matrix_scan into <golden>/matrix_scan/<case>/
// (tests/golden/README.md), computed here by a float64 loop of docs/operators.md section 14:
// h_t = A_t h_{t-1} + x_t per (batch row, head), the blocks as N x N row-major matrices. One case
// has orthogonal blocks, built here from Givens rotations in float64 and rounded to fp32 before
// the loop runs (the loop reads exactly the values in the files). Nothing of seqmix is used but
// its .npy writer, so the vectors are independent of the operator they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_matrix_scan.cpp -o golden_matrix_scan
//   ./golden_matrix_scan tests/golden
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;

const char* kSource =
    "tools/golden_matrix_scan.cpp: float64 loop of h_t = A_t h_{t-1} + x_t over fp32-rounded inputs "
    "(docs/operators.md section 14), independent of seqmix's operators";

struct MatrixScanCase {
  std::string name;
  index_t B, T, H, N;
  bool h0, orthogonal;
};

void matrix_scan_case(const fs::path& root, const MatrixScanCase& c, std::mt19937_64& rng) {
  const index_t B = c.B, T = c.T, H = c.H, N = c.N;
  // Contracting blocks: 0.5 I + U(-0.5, 0.5) / N (row sums of |A| at most 1).
  Array A = random_array({B, T, H, N, N}, rng, -0.5 / double(N), 0.5 / double(N));
  std::uniform_real_distribution<double> angle(-3.0, 3.0);
  for (index_t blk = 0; blk < B * T * H; ++blk) {
    double* a = A.v.data() + blk * N * N;
    if (!c.orthogonal) {
      for (index_t i = 0; i < N; ++i) a[i * N + i] = static_cast<double>(static_cast<float>(a[i * N + i] + 0.5));
      continue;
    }
    std::vector<double> m(static_cast<std::size_t>(N * N), 0.0);
    for (index_t i = 0; i < N; ++i) m[i * N + i] = 1.0;
    for (index_t p = 0; p < N; ++p)
      for (index_t q = p + 1; q < N; ++q) {
        const double th = angle(rng), cs = std::cos(th), sn = std::sin(th);
        for (index_t j = 0; j < N; ++j) {
          const double mp = m[p * N + j], mq = m[q * N + j];
          m[p * N + j] = cs * mp - sn * mq, m[q * N + j] = sn * mp + cs * mq;
        }
      }
    for (index_t i = 0; i < N * N; ++i) a[i] = static_cast<double>(static_cast<float>(m[i]));
  }
  const Array x = random_array({B, T, H, N}, rng, -1, 1);
  const Array h0 = c.h0 ? random_array({B, H, N}, rng, -1, 1) : zeros({B, H, N});
  Array h_all = zeros({B, T, H, N}), h_last = zeros({B, H, N});
  std::vector<double> h(static_cast<std::size_t>(N)), next(static_cast<std::size_t>(N));
  for (index_t b = 0; b < B; ++b)
    for (index_t hd = 0; hd < H; ++hd) {
      for (index_t i = 0; i < N; ++i) h[i] = h0.v[(b * H + hd) * N + i];
      for (index_t t = 0; t < T; ++t) {
        const double* a = A.v.data() + ((b * T + t) * H + hd) * N * N;
        for (index_t i = 0; i < N; ++i) {
          double s = x.v[((b * T + t) * H + hd) * N + i];
          for (index_t j = 0; j < N; ++j) s += a[i * N + j] * h[j];
          next[i] = s;
        }
        h.swap(next);
        for (index_t i = 0; i < N; ++i) h_all.v[((b * T + t) * H + hd) * N + i] = h[i];
      }
      for (index_t i = 0; i < N; ++i) h_last.v[(b * H + hd) * N + i] = h[i];
    }
  const fs::path dir = root / "matrix_scan" / c.name;
  fs::create_directories(dir);
  write(dir, "A", A), write(dir, "x", x), write(dir, "h_all", h_all), write(dir, "h_last", h_last);
  std::string inputs = "\"A\": \"A.npy\", \"x\": \"x.npy\"";
  if (c.h0) write(dir, "h0", h0), inputs += ", \"h0\": \"h0.npy\"";
  write_case(dir, "matrix_scan", "", inputs, "\"h_all\": \"h_all.npy\", \"h_last\": \"h_last.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261223);
  matrix_scan_case(root, {"b2_t40_h3_n4_h0", 2, 40, 3, 4, true, false}, rng);
  matrix_scan_case(root, {"b1_t300_h1_n16", 1, 300, 1, 16, false, false}, rng);
  matrix_scan_case(root, {"b1_t50_h2_n5_orthogonal_h0", 1, 50, 2, 5, true, true}, rng);
  return 0;
}
