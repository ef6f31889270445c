// delta_update/small_gemm.hpp, the register-tile products of the chunked WY form, against a
// plain double loop: row counts around the 6-row tile, columns around one and two vectors (and
// not a multiple of any width), inner sizes 1 to 130, A row-major and transposed, C
// overwritten, added to and scaled, the lower-triangular inner range.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/linear_attention/delta_update/small_gemm.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace du = seqmix::delta_update;

struct ProductCase {
  index_t m, inner, n;
  bool transposed;  // A given as its transpose ([inner, m] row-major)
  du::InnerRange range;
};

std::vector<float> uniform(index_t n, unsigned seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  unsigned s = seed * 2654435761u + 1;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) / 16777216.f * 2.f - 1.f;
  }
  return x;
}

// C after one small_product against the double loop: largest |got - want| / max(1, |want|).
void check_product(const ProductCase& c, const du::Accumulate& acc) {
  const index_t lda = c.transposed ? c.m + 3 : c.inner + 2, ldb = c.n + 5, ldc = c.n + 1;
  std::vector<float> a = uniform((c.transposed ? c.inner : c.m) * lda, 1);
  const std::vector<float> b = uniform(c.inner * ldb, 2);
  if (c.range == du::InnerRange::lower)  // the contract: A lower-triangular (row-major here)
    for (index_t r = 0; r < c.m; ++r)
      for (index_t p = r + 1; p < c.inner; ++p) a[static_cast<std::size_t>(r * lda + p)] = 0.f;
  std::vector<float> out = uniform(c.m * ldc, 3);
  const std::vector<float> before = out;
  const du::LeftOperand A = c.transposed ? du::LeftOperand{a.data(), 1, lda} : du::LeftOperand{a.data(), lda, 1};
  du::small_product(A, c.m, c.inner, b.data(), ldb, c.n, out.data(), ldc, acc, c.range);
  const std::string what = "m=" + std::to_string(c.m) + " inner=" + std::to_string(c.inner) +
                           " n=" + std::to_string(c.n) + (c.transposed ? " transposed" : "") +
                           (c.range == du::InnerRange::lower ? " lower" : "") + (acc.read ? " add" : " overwrite") +
                           " scale=" + std::to_string(acc.scale);
  double worst = 0;
  for (index_t r = 0; r < c.m; ++r) {
    const index_t end = c.range == du::InnerRange::lower ? std::min(c.inner, r + 1) : c.inner;
    for (index_t j = 0; j < c.n; ++j) {
      double want = acc.read ? static_cast<double>(acc.scale) * before[static_cast<std::size_t>(r * ldc + j)] : 0.0;
      for (index_t p = 0; p < end; ++p) want += static_cast<double>(A(r, p)) * b[static_cast<std::size_t>(p * ldb + j)];
      const double got = out[static_cast<std::size_t>(r * ldc + j)];
      worst = std::max(worst, std::abs(got - want) / std::max(1.0, std::abs(want)));
    }
    for (index_t j = c.n; j < ldc; ++j)  // the padding between rows is never written
      REQUIRE(out[static_cast<std::size_t>(r * ldc + j)] == before[static_cast<std::size_t>(r * ldc + j)]);
  }
  INFO(what);
  CHECK(worst < 1e-5);
}

}  // namespace

TEST_CASE("delta small_product matches a double loop over ragged shapes", "[delta_rule]") {
  const index_t W = seqmix::simd::kWidth;
  for (index_t m : {1, 5, 6, 7, 13, 64})
    for (index_t n : {index_t{1}, W - 1, W, W + 3, 2 * W, 3 * W + 1, index_t{80}})
      for (index_t inner : {1, 16, 37, 130})
        for (bool transposed : {false, true}) {
          check_product({m, inner, n, transposed, du::InnerRange::full}, du::kOverwrite);
          check_product({m, inner, n, transposed, du::InnerRange::full}, du::Accumulate{true, 0.75f});
        }
  // The lower range: square A (m = inner), the zeros above its diagonal never read.
  for (index_t m : {1, 6, 7, 16, 37, 64})
    for (index_t n : {index_t{1}, W + 3, 2 * W, index_t{80}}) {
      check_product({m, m, n, false, du::InnerRange::lower}, du::kAdd);
      check_product({m, m, n, false, du::InnerRange::lower}, du::kOverwrite);
    }
}

// solve_unit_lower_tiles against forward substitution in double: row counts around the 8- and
// 4-row blocks, columns around one and two vectors, A's upper part and diagonal poisoned with
// NaN (never read), the padding between X's rows never written.
TEST_CASE("delta solve_unit_lower_tiles matches a double forward substitution", "[delta_rule]") {
  const index_t W = seqmix::simd::kWidth;
  for (index_t L : {1, 3, 4, 7, 8, 9, 13, 37, 64})
    for (index_t n : {index_t{1}, W - 1, W, W + 3, 2 * W, 3 * W + 1, index_t{80}}) {
      const index_t lda = L + 2, ldx = n + 3;
      std::vector<float> a = uniform(L * lda, 4);
      for (index_t i = 0; i < L; ++i)
        for (index_t j = 0; j < lda; ++j)
          if (j >= i) a[static_cast<std::size_t>(i * lda + j)] = std::nanf("");
          else a[static_cast<std::size_t>(i * lda + j)] *= 0.25f;  // keeps the solution O(1)
      std::vector<float> x = uniform(L * ldx, 5);
      std::vector<double> want(x.begin(), x.end());
      for (index_t i = 0; i < L; ++i)
        for (index_t j = 0; j < i; ++j)
          for (index_t c = 0; c < n; ++c)
            want[static_cast<std::size_t>(i * ldx + c)] -=
                static_cast<double>(a[static_cast<std::size_t>(i * lda + j)]) * want[static_cast<std::size_t>(j * ldx + c)];
      const std::vector<float> before = x;
      du::solve_unit_lower_tiles(a.data(), lda, L, x.data(), ldx, n);
      double worst = 0;
      for (index_t i = 0; i < L; ++i) {
        for (index_t c = 0; c < n; ++c) {
          const double w = want[static_cast<std::size_t>(i * ldx + c)];
          const double err = std::abs(x[static_cast<std::size_t>(i * ldx + c)] - w) / std::max(1.0, std::abs(w));
          if (!(err <= worst)) worst = err;  // a NaN stays (std::max would drop it)
        }
        for (index_t c = n; c < ldx; ++c) REQUIRE(x[static_cast<std::size_t>(i * ldx + c)] == before[static_cast<std::size_t>(i * ldx + c)]);
      }
      INFO("L=" << L << " n=" << n);
      CHECK(worst < 1e-5);
    }
}
