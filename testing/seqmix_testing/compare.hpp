// Comparison of a computed tensor against a reference, with the SPEC's tolerance rule
// max|out - ref| <= tol * max(1, max|ref|), reporting where the worst difference is.
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "seqmix/core/tensor.hpp"

namespace seqmix::testing {

struct Comparison {
  double max_abs_error = 0.0;  // max |out - ref|
  double max_abs_ref = 0.0;    // max |ref|
  double bound = 0.0;          // tol * max(1, max|ref|)
  index_t worst_index = -1;    // flat (row-major) index of the worst element
  double worst_out = 0.0, worst_ref = 0.0;
  bool has_nan = false;
  bool ok = true;

  std::string describe() const {
    std::ostringstream msg;
    msg << "max|out-ref| = " << max_abs_error << " (bound " << bound << ", max|ref| " << max_abs_ref
        << ") at flat index " << worst_index << ": out " << worst_out << " ref " << worst_ref
        << (has_nan ? " [NaN present]" : "");
    return msg.str();
  }
};

namespace detail {
template <class A, class B, std::size_t Rank, class F>
void for_each_pair(const TensorView<A, Rank>& a, const TensorView<B, Rank>& b, index_t& flat, F&& f) {
  for (index_t i = 0; i < a.size(0); ++i) {
    if constexpr (Rank == 1)
      f(flat++, static_cast<double>(a(i)), static_cast<double>(b(i)));
    else
      for_each_pair(a[i], b[i], flat, f);
  }
}
}  // namespace detail

template <class A, class B, std::size_t Rank>
Comparison compare(const TensorView<A, Rank>& out, const TensorView<B, Rank>& ref, double tol) {
  Comparison c;
  if (out.shape() != ref.shape()) {
    c.ok = false;
    c.has_nan = false;
    c.max_abs_error = INFINITY;
    return c;
  }
  index_t flat = 0;
  detail::for_each_pair(out, ref, flat, [&](index_t i, double o, double r) {
    c.max_abs_ref = std::max(c.max_abs_ref, std::abs(r));
    if (std::isnan(o) || std::isnan(r)) {
      if (!c.has_nan) c.worst_index = i, c.worst_out = o, c.worst_ref = r;
      c.has_nan = true;
      return;
    }
    const double e = std::abs(o - r);
    if (e > c.max_abs_error || c.worst_index < 0) {
      c.max_abs_error = std::max(c.max_abs_error, e);
      c.worst_index = i, c.worst_out = o, c.worst_ref = r;
    }
  });
  c.bound = tol * std::max(1.0, c.max_abs_ref);
  c.ok = !c.has_nan && c.max_abs_error <= c.bound;
  return c;
}

// The largest relative error ||a - b|| / ||b|| (||a - b|| where b is 0) over the (row, head)
// slices of [N,X,H,Y] tensors (head_dim 2: token-major outputs) or [N,H,X,Y] (head_dim 1:
// states), each slice's norm taken over its X x Y elements in double.
inline double per_head_relative_error(const Tensor<float, 4>& a, const Tensor<float, 4>& b, int head_dim) {
  double worst = 0.0;
  const index_t H = b.size(head_dim), X = b.size(head_dim == 2 ? 1 : 2);
  for (index_t n = 0; n < b.size(0); ++n)
    for (index_t h = 0; h < H; ++h) {
      double diff = 0.0, ref = 0.0;
      for (index_t x = 0; x < X; ++x)
        for (index_t y = 0; y < b.size(3); ++y) {
          const double va = head_dim == 2 ? a(n, x, h, y) : a(n, h, x, y);
          const double vb = head_dim == 2 ? b(n, x, h, y) : b(n, h, x, y);
          diff += (va - vb) * (va - vb), ref += vb * vb;
        }
      worst = std::max(worst, ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff));
    }
  return worst;
}

}  // namespace seqmix::testing
