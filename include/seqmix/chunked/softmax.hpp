// The softmax of one row of logits as the hybrids' references and scalar decode loops compute it,
// under attention's non-finite rule (attention/dense/reference.hpp, docs/reliability.md): a NaN
// logit, or a +inf one (exp(inf - inf)), makes the row NaN; a -inf logit hides its key; a row
// whose every logit is -inf sees no key and gives 0; a key whose weight is exactly 0 takes no
// part, so a NaN or inf in its value reaches nothing. The naive max / exp / sum loop they used
// gave NaN for the empty row and let 0 * NaN values through.
#pragma once

#include <cmath>
#include <limits>

#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::hybrid {

/// Replaces the logits s[0, n) by their unnormalized weights exp(s_j - max) and returns the sum:
/// NaN when a logit is NaN or +inf, 0 (every weight 0) when every logit is -inf.
template <class T>
T softmax_weights(T* s, index_t n) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  T top = minus_inf;
  bool nan = false;
  for (index_t j = 0; j < n; ++j) {
    nan = nan || std::isnan(s[j]);
    if (s[j] > top) top = s[j];
  }
  if (nan) return std::numeric_limits<T>::quiet_NaN();
  T sum = 0;
  for (index_t j = 0; j < n; ++j) sum += (s[j] = top == minus_inf ? T(0) : std::exp(s[j] - top));
  return sum;
}

/// sum_j w[j] value(j) / sum over the keys of non-zero weight (w, sum from softmax_weights):
/// 0 for a row that saw no key, NaN for a NaN row.
template <class T, class Value>
T softmax_average(const T* w, index_t n, T sum, Value&& value) {
  if (sum == T(0)) return T(0);
  T acc = 0;
  for (index_t j = 0; j < n; ++j)
    if (w[j] != T(0)) acc += w[j] * value(j);
  return acc / sum;
}

}  // namespace seqmix::detail::hybrid
