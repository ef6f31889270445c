// Expected values for the `reverse` tests (tests/test_direction_*.cpp): explicit reversed copies
// and deep copies. The reversal indexes every slice itself rather than going through
// seqmix::reversed_view, the mechanism the operators' reverse option is built on, so a fault
// there cannot hide in the expected value too.
#pragma once

#include <cstddef>

#include "seqmix/core/tensor.hpp"

namespace seqmix::testing {

// A copy of t with dimension `dim` (the token axis by default) in reverse order.
template <std::size_t Rank>
Tensor<float, Rank> reversed_copy(const Tensor<float, Rank>& t, std::size_t dim = 1) {
  Tensor<float, Rank> r(t.shape());
  const index_t n = t.size(dim);
  for (index_t i = 0; i < n; ++i) {
    if constexpr (Rank == 1)
      r(i) = t(n - 1 - i);
    else
      copy(t.cview().select(dim, n - 1 - i), r.view().select(dim, i));
  }
  return r;
}

// A deep copy (each direction of a test gets its own initial state, which a call updates in place).
template <std::size_t Rank>
Tensor<float, Rank> clone(const Tensor<float, Rank>& t) {
  Tensor<float, Rank> r(t.shape());
  copy(t.cview(), r.view());
  return r;
}

}  // namespace seqmix::testing
