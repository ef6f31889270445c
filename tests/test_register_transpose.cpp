// core/register_transpose.hpp's transpose_words (16 x 16 register blocks on AVX512F, scalar
// elsewhere) against the element definition, and core/small_gemm.hpp's small_product /
// lower_scores: the tile shapes the families pick (6 x 4, 6 x 2, 8 x 2, 4 x 2; 4 x 1 as well) give
// bit-identical results (each element is the same FMA chain) and leave C's padding column alone,
// and lower_scores equals the full product on and below the diagonal and writes no column at or
// past max_cols. Shapes around the 16-word block and the tiles: 1, 15, 16, 17, 33, 64.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "seqmix/core/register_transpose.hpp"
#include "seqmix/core/small_gemm.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace sd = seqmix::detail;

// n floats uniform in [-1, 1) from the project's generator.
std::vector<float> uniform(index_t n, unsigned seed) {
  const seqmix::Tensor<float, 1> t = seqmix::testing::random_tensor<1>({n}, seed);
  return std::vector<float>(t.data(), t.data() + n);
}

// One transpose of rows x cols words (src rows lds apart) into dst (rows ldd apart, pre-filled
// with `fill`): word (r, c) lands at dst[c][r], rows [rows, rows_pad) are zero, the rest of dst
// keeps `fill`.
template <class Word>
void check_transpose(index_t rows, index_t cols, index_t rows_pad, const std::vector<Word>& src, Word fill) {
  const index_t lds = cols + 3, ldd = rows_pad + 5;
  std::vector<Word> dst(static_cast<std::size_t>((cols + 1) * ldd), fill);
  sd::transpose_words(src.data(), lds, rows, cols, dst.data(), ldd, rows_pad);
  INFO("rows=" << rows << " cols=" << cols << " rows_pad=" << rows_pad << " word bytes=" << sizeof(Word));
  index_t wrong = 0;
  for (index_t c = 0; c < cols + 1; ++c)
    for (index_t r = 0; r < ldd; ++r) {
      Word want = fill;
      if (c < cols && r < rows) want = src[static_cast<std::size_t>(r * lds + c)];
      else if (c < cols && r < rows_pad) want = Word(0);
      const Word got = dst[static_cast<std::size_t>(c * ldd + r)];
      if (std::memcmp(&got, &want, sizeof(Word)) != 0) ++wrong;
    }
  CHECK(wrong == 0);
}

// C of one small_product<R, NV> (C pre-filled from seed 3, then kept as 0.75 C + A B or
// overwritten).
template <std::size_t R, std::size_t NV>
std::vector<float> product(index_t M, index_t inner, index_t n, const std::vector<float>& a, index_t lda,
                           const std::vector<float>& b, index_t ldb, bool add, sd::InnerRange range) {
  const index_t ldc = n + 1;
  std::vector<float> c = uniform(M * ldc, 3);
  sd::small_product<R, NV>({a.data(), lda, 1}, M, inner, b.data(), ldb, n, c.data(), ldc,
                           add ? sd::Accumulate{true, 0.75f} : sd::Accumulate{false}, range);
  return c;
}

}  // namespace

TEST_CASE("transpose_words matches the element definition over ragged blocks", "[core]") {
  for (index_t rows : {1, 5, 15, 16, 17, 33, 64})
    for (index_t cols : {1, 7, 15, 16, 17, 40, 64})
      for (index_t extra : {0, 3, 16}) {
        const index_t rows_pad = rows + extra, lds = cols + 3;
        check_transpose<float>(rows, cols, rows_pad, uniform(rows * lds, 7), -9.f);
        std::vector<std::uint32_t> words(static_cast<std::size_t>(rows * lds));
        for (std::size_t i = 0; i < words.size(); ++i) words[i] = 0x9e3779b9u * static_cast<std::uint32_t>(i + 1);
        check_transpose<std::uint32_t>(rows, cols, rows_pad, words, 0xdeadbeefu);
      }
}

TEST_CASE("small_product's tile shapes give bit-identical results and lower_scores its lower part", "[core]") {
  const index_t W = seqmix::simd::kWidth;
  for (index_t M : {1, 5, 6, 7, 17, 64})
    for (index_t n : {index_t{1}, W, W + 3, 2 * W, 4 * W, 5 * W + 1})
      for (index_t inner : {1, 16, 37}) {
        const index_t lda = inner + 2, ldb = n + 5;
        const std::vector<float> a = uniform(M * lda, 1), b = uniform(inner * ldb, 2);
        for (bool add : {false, true}) {
          INFO("M=" << M << " inner=" << inner << " n=" << n << (add ? " add" : " overwrite"));
          const std::vector<float> c64 = product<6, 4>(M, inner, n, a, lda, b, ldb, add, sd::InnerRange::full);
          CHECK(product<6, 2>(M, inner, n, a, lda, b, ldb, add, sd::InnerRange::full) == c64);
          CHECK(product<8, 2>(M, inner, n, a, lda, b, ldb, add, sd::InnerRange::full) == c64);
          CHECK(product<4, 1>(M, inner, n, a, lda, b, ldb, add, sd::InnerRange::full) == c64);
          CHECK(product<4, 2>(M, inner, n, a, lda, b, ldb, add, sd::InnerRange::full) == c64);
          const std::vector<float> before = uniform(M * (n + 1), 3);
          index_t padding_changed = 0;  // column n of C (ldc = n + 1) is not C's
          for (index_t i = 0; i < M; ++i)
            if (c64[static_cast<std::size_t>(i * (n + 1) + n)] != before[static_cast<std::size_t>(i * (n + 1) + n)])
              ++padding_changed;
          CHECK(padding_changed == 0);
          double worst = 0;
          for (index_t i = 0; i < M; ++i)
            for (index_t j = 0; j < n; ++j) {
              double want = add ? 0.75 * before[static_cast<std::size_t>(i * (n + 1) + j)] : 0.0;
              for (index_t k = 0; k < inner; ++k)
                want += double(a[static_cast<std::size_t>(i * lda + k)]) * b[static_cast<std::size_t>(k * ldb + j)];
              worst = std::max(worst, std::abs(c64[static_cast<std::size_t>(i * (n + 1) + j)] - want));
            }
          CHECK(worst < 1e-5 * (inner + 1));
        }
      }
  // Lower-triangular A (square): the lower range equals the full product bit for bit, and
  // lower_scores (A B^T's lower part from the transposed keys) equals small_product on j <= i.
  for (index_t L : {1, 6, 7, 15, 16, 17, 33, 64}) {
    const index_t lda = L + 2, n = L, ldb = n + 5;
    std::vector<float> a = uniform(L * lda, 4);
    for (index_t i = 0; i < L; ++i)
      for (index_t k = i + 1; k < L; ++k) a[static_cast<std::size_t>(i * lda + k)] = 0.f;
    const std::vector<float> b = uniform(L * ldb, 5);
    INFO("L=" << L);
    const std::vector<float> full = product<6, 4>(L, L, n, a, lda, b, ldb, true, sd::InnerRange::full);
    CHECK(product<6, 4>(L, L, n, a, lda, b, ldb, true, sd::InnerRange::lower) == full);
    CHECK(product<6, 2>(L, L, n, a, lda, b, ldb, true, sd::InnerRange::lower) == full);

    // want: whole vectors (Lw columns) as lower_scores computes them, not the scalar column tail.
    const index_t inner = 37, Lw = (L + W - 1) / W * W, lds = Lw + 3;
    const std::vector<float> q = uniform(L * inner, 6), kt = uniform(inner * lds, 7);
    const std::vector<float> want = product<6, 2>(L, inner, Lw, q, inner, kt, lds, false, sd::InnerRange::full);
    // Capped at L columns, the last ones come from the scalar column tail, as here.
    const std::vector<float> want_capped = product<6, 2>(L, inner, L, q, inner, kt, lds, false, sd::InnerRange::full);
    // Three tile shapes with room to the row's end, then 6 x 2 capped at max_cols = L (the WY
    // form's cap, ldg = C, which need not be a whole number of vectors).
    for (int shape = 0; shape < 4; ++shape) {
      std::vector<float> s(static_cast<std::size_t>(L * lds), -7.f);
      const index_t max_cols = shape == 3 ? L : lds;
      const sd::StridedOperand qa{q.data(), inner, 1};
      if (shape == 0) sd::lower_scores<6, 2>(qa, L, inner, kt.data(), lds, s.data(), lds, max_cols);
      else if (shape == 1) sd::lower_scores<8, 2>(qa, L, inner, kt.data(), lds, s.data(), lds, max_cols);
      else if (shape == 2) sd::lower_scores<4, 2>(qa, L, inner, kt.data(), lds, s.data(), lds, max_cols);
      else sd::lower_scores<6, 2>(qa, L, inner, kt.data(), lds, s.data(), lds, max_cols);
      INFO("shape " << shape << " max_cols " << max_cols);
      index_t wrong = 0, past_cap = 0;
      for (index_t i = 0; i < L; ++i) {
        for (index_t j = 0; j <= i; ++j) {
          const float expected = shape == 3 ? want_capped[static_cast<std::size_t>(i * (L + 1) + j)]
                                            : want[static_cast<std::size_t>(i * (Lw + 1) + j)];
          if (s[static_cast<std::size_t>(i * lds + j)] != expected) ++wrong;
        }
        for (index_t j = max_cols; j < lds; ++j)
          if (s[static_cast<std::size_t>(i * lds + j)] != -7.f) ++past_cap;
      }
      CHECK(wrong == 0);
      CHECK(past_cap == 0);
    }
  }
}
