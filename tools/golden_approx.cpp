// Writes the conformance cases of linformer, nystrom_attention and combiner into
// <golden>/<op>/<case>/ (tests/golden/README.md), computed here by float64 loops of the papers'
// formulas (docs/operators.md, "Approximate attention"):
//  - linformer: projected keys / values E K, F V, then a softmax over the kp projected keys;
//  - nystrom_attention: segment-mean landmarks, the three softmax kernels, the iterative
//    Moore-Penrose inverse of the landmark kernel (Z_0 = A^T / (|A|_1 |A|_inf), then
//    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4), the optional centred depthwise conv of V;
//  - combiner: one softmax per query over its own block's keys up to itself and one summary key
//    (block mean, or given) per earlier block.
// Nothing of seqmix is used but its .npy writer, so the vectors are independent of the operators.
//
//   g++ -std=c++17 -O2 -I include -I tools tools/golden_approx.cpp -o golden_approx
//   ./golden_approx tests/golden
#include <algorithm>
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
    "tools/golden_approx.cpp: float64 loops of the papers' formulas (docs/operators.md, Approximate attention), "
    "independent of seqmix's operators";

// Element (b, t, h, c) of a [B, T, H, D] array.
double& el(Array& a, index_t b, index_t t, index_t h, index_t c) {
  return a.v[static_cast<std::size_t>(((b * a.shape[1] + t) * a.shape[2] + h) * a.shape[3] + c)];
}
double el(const Array& a, index_t b, index_t t, index_t h, index_t c) {
  return a.v[static_cast<std::size_t>(((b * a.shape[1] + t) * a.shape[2] + h) * a.shape[3] + c)];
}

using Matrix = std::vector<std::vector<double>>;

Matrix mat(index_t rows, index_t cols, double fill = 0.0) {
  return Matrix(static_cast<std::size_t>(rows), std::vector<double>(static_cast<std::size_t>(cols), fill));
}

Matrix mul(const Matrix& x, const Matrix& y) {
  Matrix z = mat(static_cast<index_t>(x.size()), static_cast<index_t>(y[0].size()));
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t j = 0; j < y[0].size(); ++j)
      for (std::size_t r = 0; r < y.size(); ++r) z[i][j] += x[i][r] * y[r][j];
  return z;
}

// c I - x.
Matrix shift(double c, const Matrix& x) {
  Matrix z = x;
  for (std::size_t i = 0; i < z.size(); ++i)
    for (std::size_t j = 0; j < z.size(); ++j) z[i][j] = (i == j ? c : 0.0) - x[i][j];
  return z;
}

// Row-wise softmax of scale * X Y^T.
Matrix softmax_rows(const Matrix& x, const Matrix& y, double scale) {
  Matrix s = mat(static_cast<index_t>(x.size()), static_cast<index_t>(y.size()));
  for (std::size_t i = 0; i < x.size(); ++i) {
    double top = -HUGE_VAL, total = 0;
    for (std::size_t j = 0; j < y.size(); ++j) {
      double dot = 0;
      for (std::size_t c = 0; c < x[i].size(); ++c) dot += x[i][c] * y[j][c];
      top = std::max(top, s[i][j] = scale * dot);
    }
    for (double& e : s[i]) total += (e = std::exp(e - top));
    for (double& e : s[i]) e /= total;
  }
  return s;
}

// Softmax-weighted average of `values` with logits scale * q . keys[j]; returns lse.
double attend(const std::vector<double>& q, const Matrix& keys, const Matrix& values, double scale,
              std::vector<double>& o) {
  std::vector<double> s(keys.size());
  double top = -HUGE_VAL;
  for (std::size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    for (std::size_t c = 0; c < q.size(); ++c) dot += q[c] * keys[j][c];
    top = std::max(top, s[j] = scale * dot);
  }
  double total = 0;
  for (double& e : s) total += (e = std::exp(e - top));
  o.assign(values[0].size(), 0.0);
  for (std::size_t j = 0; j < keys.size(); ++j)
    for (std::size_t c = 0; c < o.size(); ++c) o[c] += s[j] / total * values[j][c];
  return top + std::log(total);
}

// Rows [t0, t1) of head h of batch row b, or their mean (one row) when `mean`.
Matrix rows_of(const Array& a, index_t b, index_t h, index_t t0, index_t t1) {
  Matrix m;
  for (index_t t = t0; t < t1; ++t) {
    std::vector<double> row;
    for (index_t c = 0; c < a.shape[3]; ++c) row.push_back(el(a, b, t, h, c));
    m.push_back(row);
  }
  return m;
}
std::vector<double> mean_of(const Array& a, index_t b, index_t h, index_t t0, index_t t1) {
  std::vector<double> m(static_cast<std::size_t>(a.shape[3]), 0.0);
  for (const auto& row : rows_of(a, b, h, t0, t1))
    for (std::size_t c = 0; c < m.size(); ++c) m[c] += row[c] / static_cast<double>(t1 - t0);
  return m;
}

struct ApproxCase {
  std::string name;
  index_t B, T, Hq, Hkv, D, param;  // kp, m or block size
  double scale;
  index_t extra;  // nystrom: conv kernel size (0: none) | combiner: 1 = given summaries
  index_t iterations = 6;
};

void linformer_case(const fs::path& root, const ApproxCase& c, std::mt19937_64& rng) {
  const index_t kp = c.param, G = c.Hq / c.Hkv;
  const Array q = random_array({c.B, c.T, c.Hq, c.D}, rng, -1, 1), k = random_array({c.B, c.T, c.Hkv, c.D}, rng, -1, 1),
              v = random_array({c.B, c.T, c.Hkv, c.D}, rng, -1, 1);
  const double s = 1.0 / std::sqrt(static_cast<double>(c.T));
  const Array e = random_array({kp, c.T}, rng, -s, s), f = random_array({kp, c.T}, rng, -s, s);
  Array o = zeros({c.B, c.T, c.Hq, c.D}), lse = zeros({c.B, c.T, c.Hq});
  std::vector<double> out;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t hk = 0; hk < c.Hkv; ++hk) {
      Matrix kk = mat(kp, c.D), vv = mat(kp, c.D);
      for (index_t r = 0; r < kp; ++r)
        for (index_t j = 0; j < c.T; ++j)
          for (index_t x = 0; x < c.D; ++x) {
            kk[r][x] += e.v[static_cast<std::size_t>(r * c.T + j)] * el(k, b, j, hk, x);
            vv[r][x] += f.v[static_cast<std::size_t>(r * c.T + j)] * el(v, b, j, hk, x);
          }
      for (index_t h = hk * G; h < (hk + 1) * G; ++h)
        for (index_t i = 0; i < c.T; ++i) {
          lse.v[static_cast<std::size_t>((b * c.T + i) * c.Hq + h)] = attend(rows_of(q, b, h, i, i + 1)[0], kk, vv, c.scale, out);
          for (index_t x = 0; x < c.D; ++x) el(o, b, i, h, x) = out[static_cast<std::size_t>(x)];
        }
    }
  const fs::path dir = root / "linformer" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "e", e), write(dir, "f", f);
  write(dir, "o", o), write(dir, "lse", lse);
  write_case(dir, "linformer", "\"scale\": " + exact(c.scale),
             "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\", \"e\": \"e.npy\", \"f\": \"f.npy\"",
             "\"o\": \"o.npy\", \"lse\": \"lse.npy\"", "1e-05", kSource);
}

void nystrom_case(const fs::path& root, const ApproxCase& c, std::mt19937_64& rng) {
  const index_t m = c.param, seg = c.T / m, G = c.Hq / c.Hkv, ks = c.extra;
  const Array q = random_array({c.B, c.T, c.Hq, c.D}, rng, -2, 2), k = random_array({c.B, c.T, c.Hkv, c.D}, rng, -2, 2),
              v = random_array({c.B, c.T, c.Hkv, c.D}, rng, -1, 1);
  const Array w = random_array({c.Hq, std::max<index_t>(ks, 1)}, rng, -1, 1);
  Array o = zeros({c.B, c.T, c.Hq, c.D});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hq; ++h) {
      const Matrix Q = rows_of(q, b, h, 0, c.T), K = rows_of(k, b, h / G, 0, c.T), V = rows_of(v, b, h / G, 0, c.T);
      Matrix Ql, Kl;
      for (index_t r = 0; r < m; ++r)
        Ql.push_back(mean_of(q, b, h, r * seg, (r + 1) * seg)), Kl.push_back(mean_of(k, b, h / G, r * seg, (r + 1) * seg));
      const Matrix F = softmax_rows(Q, Kl, c.scale), A = softmax_rows(Ql, Kl, c.scale), Bm = softmax_rows(Ql, K, c.scale);
      double col = 0, row = 0;
      for (index_t i = 0; i < m; ++i) {
        double sc = 0, sr = 0;
        for (index_t j = 0; j < m; ++j) sc += std::fabs(A[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)]), sr += std::fabs(A[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)]);
        col = std::max(col, sc), row = std::max(row, sr);
      }
      Matrix Z = mat(m, m);
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < m; ++j) Z[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = A[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)] / (col * row);
      for (index_t it = 0; it < c.iterations; ++it) {
        const Matrix AZ = mul(A, Z);
        Z = mul(Z, shift(13, mul(AZ, shift(15, mul(AZ, shift(7, AZ))))));
        for (auto& r : Z)
          for (double& x : r) x /= 4;
      }
      const Matrix X = mul(mul(F, Z), mul(Bm, V));
      for (index_t t = 0; t < c.T; ++t)
        for (index_t x = 0; x < c.D; ++x) {
          double y = X[static_cast<std::size_t>(t)][static_cast<std::size_t>(x)];
          for (index_t u = 0; u < ks; ++u) {
            const index_t j = t - ks / 2 + u;
            if (j >= 0 && j < c.T) y += w.v[static_cast<std::size_t>(h * ks + u)] * V[static_cast<std::size_t>(j)][static_cast<std::size_t>(x)];
          }
          el(o, b, t, h, x) = y;
        }
    }
  const fs::path dir = root / "nystrom_attention" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "o", o);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\"";
  if (ks > 0) write(dir, "conv_kernel", w), inputs += ", \"conv_kernel\": \"conv_kernel.npy\"";
  write_case(dir, "nystrom_attention",
             "\"landmarks\": " + std::to_string(m) + ", \"pinv_iterations\": " + std::to_string(c.iterations) +
                 ", \"scale\": " + exact(c.scale),
             inputs, "\"o\": \"o.npy\"", "1e-05", kSource);
}

void combiner_case(const fs::path& root, const ApproxCase& c, std::mt19937_64& rng) {
  const index_t bs = c.param, Nb = (c.T + bs - 1) / bs, G = c.Hq / c.Hkv;
  const Array q = random_array({c.B, c.T, c.Hq, c.D}, rng, -1, 1), k = random_array({c.B, c.T, c.Hkv, c.D}, rng, -1, 1),
              v = random_array({c.B, c.T, c.Hkv, c.D}, rng, -1, 1);
  const Array sk = random_array({c.B, Nb, c.Hkv, c.D}, rng, -1, 1), sv = random_array({c.B, Nb, c.Hkv, c.D}, rng, -1, 1);
  Array o = zeros({c.B, c.T, c.Hq, c.D}), lse = zeros({c.B, c.T, c.Hq});
  std::vector<double> out;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hq; ++h)
      for (index_t i = 0; i < c.T; ++i) {
        const index_t hk = h / G, n = i / bs;
        Matrix keys, values;
        for (index_t r = 0; r < n; ++r) {
          keys.push_back(c.extra ? rows_of(sk, b, hk, r, r + 1)[0] : mean_of(k, b, hk, r * bs, (r + 1) * bs));
          values.push_back(c.extra ? rows_of(sv, b, hk, r, r + 1)[0] : mean_of(v, b, hk, r * bs, (r + 1) * bs));
        }
        for (const auto& row : rows_of(k, b, hk, n * bs, i + 1)) keys.push_back(row);
        for (const auto& row : rows_of(v, b, hk, n * bs, i + 1)) values.push_back(row);
        lse.v[static_cast<std::size_t>((b * c.T + i) * c.Hq + h)] = attend(rows_of(q, b, h, i, i + 1)[0], keys, values, c.scale, out);
        for (index_t x = 0; x < c.D; ++x) el(o, b, i, h, x) = out[static_cast<std::size_t>(x)];
      }
  const fs::path dir = root / "combiner" / c.name;
  fs::create_directories(dir);
  write(dir, "q", q), write(dir, "k", k), write(dir, "v", v), write(dir, "o", o), write(dir, "lse", lse);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\"";
  if (c.extra)
    write(dir, "summary_k", sk), write(dir, "summary_v", sv),
        inputs += ", \"summary_k\": \"summary_k.npy\", \"summary_v\": \"summary_v.npy\"";
  write_case(dir, "combiner", "\"block_size\": " + std::to_string(bs) + ", \"scale\": " + exact(c.scale), inputs,
             "\"o\": \"o.npy\", \"lse\": \"lse.npy\"", "1e-05", kSource);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261203);
  linformer_case(root, {"b2_t20_hq4_hkv2_d8_kp6", 2, 20, 4, 2, 8, 6, 1 / std::sqrt(8.0), 0}, rng);
  linformer_case(root, {"b1_t9_hq2_hkv2_d16_kp9_scale", 1, 9, 2, 2, 16, 9, 0.5, 0}, rng);
  nystrom_case(root, {"b1_t24_hq2_hkv1_d8_m6", 1, 24, 2, 1, 8, 6, 1 / std::sqrt(8.0), 0}, rng);
  nystrom_case(root, {"b2_t16_hq2_hkv2_d8_m4_conv3_it10", 2, 16, 2, 2, 8, 4, 0.5, 3, 10}, rng);
  combiner_case(root, {"b2_t21_hq4_hkv2_d8_bs4", 2, 21, 4, 2, 8, 4, 1 / std::sqrt(8.0), 0}, rng);
  combiner_case(root, {"b1_t19_hq2_hkv1_d8_bs5_summaries", 1, 19, 2, 1, 8, 5, 0.75, 1}, rng);
  return 0;
}
