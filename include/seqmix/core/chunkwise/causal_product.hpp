// The intra-chunk product O += A X of every chunked form, kept causal for non-finite values.
// Internal.
//
// A is a chunk's lower-triangular score matrix (row i: token i's weights of tokens j <= i; the
// entries above the diagonal are zero) and X the chunk's token rows (values, dt-scaled inputs,
// the WY solution). One GEMM also multiplies those zeros by the rows of later tokens, and
// 0 * inf = 0 * NaN = NaN would carry a non-finite value of token j into the outputs of tokens
// i < j. The non-finite policy (docs/reliability.md) forbids that, so a chunk whose X holds a NaN
// or inf runs the GEMM with those entries set to 0, which leaves every output that does not see
// them bit-identical to a clean chunk's, and then adds A(i, j) * X(j, c) to the rows i >= j that
// do. A clean chunk pays one finiteness test of X (O(L * cols), against the GEMM's O(L^2 * cols)).
#pragma once

#include <cmath>
#include <type_traits>

#include <Eigen/Core>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::chunkwise {

using ProductScratch = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The non-finite half of the product: O(i, c) += A(i, j) * X(j, c) for every non-finite X(j, c)
// and every i >= j (the GEMM ran with those entries set to 0).
template <class Lower, class Rows, class Out>
void add_nonfinite_lower(const Lower& A, const Rows& X, Out&& O) {
  const index_t L = X.rows(), n = X.cols();
  for (index_t j = 0; j < L; ++j)
    for (index_t c = 0; c < n; ++c)
      if (!std::isfinite(X(j, c)))
        for (index_t i = j; i < L; ++i) O(i, c) += A(i, j) * X(j, c);
}

// Whether every entry of X is finite: vectorized where X is float rows in memory (Eigen's
// allFinite is a scalar compare per value: 6% of the chunked GLA call at K = V = 1024).
template <class Rows>
bool all_finite(const Rows& X) {
  constexpr bool rows_in_memory = std::is_same_v<typename Rows::Scalar, float> && bool(Rows::IsRowMajor) &&
                                  (int(Eigen::internal::traits<Rows>::Flags) & Eigen::DirectAccessBit) != 0;
  if constexpr (rows_in_memory)
    return simd::rows_finite(X.data(), X.rows(), X.cols(), X.outerStride());
  else
    return X.allFinite();
}

// O += A X with A [L,L] lower-triangular, X [L,n], O [L,n] (Eigen blocks or matrices).
// `finite_x` is scratch, sized on first use by a chunk with non-finite X (clean inputs never
// allocate it).
template <class Lower, class Rows, class Out>
void add_lower_product(const Lower& A, const Rows& X, Out&& O, ProductScratch& finite_x) {
  if (all_finite(X)) {
    O.noalias() += A * X;
    return;
  }
  finite_x = X.array().isFinite().select(X, 0.f);
  O.noalias() += A * finite_x;
  add_nonfinite_lower(A, X, O);
}

}  // namespace seqmix::chunkwise
