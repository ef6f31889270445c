// cross_scan / cross_merge (VMamba's CrossScan / CrossMerge, token-major): the readable
// definitions and the validation shared with the fast forms (fast.hpp).
//
//   cross_scan:  xs[b,k,l,c] = x[b, cell_k(l), c]            x [B,H,W,C] -> xs [B,4,H*W,C]
//   cross_merge: y[b,h,w,c]  = sum_k ys[b,k,l_k(h,w),c]       ys [B,4,H*W,C] -> y [B,H,W,C]
// with cell_k(l) = cross_scan_cell(kCrossDirections[k], H, W, l) (grid.hpp) and l_k its inverse.
// Both materialize the four sequences; cross_selective_scan (selective.hpp) reads them as views
// instead.
#pragma once

#include <array>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/structured/cross_scan/grid.hpp"

namespace seqmix {

namespace detail {

inline void validate_cross_scan(const char* op, const ConstView<float, 4>& x, const TensorView<float, 4>& xs) {
  const ArgCheck check(op);
  check.shape("x", x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,W,C");
  const index_t B = x.size(0), L = x.size(1) * x.size(2), C = x.size(3);
  check.shape("xs", xs, std::array<index_t, 4>{B, 4, L, C}, "B,4,H*W,C");
  check.no_overlap("xs", xs, "x", x);
}

inline void validate_cross_merge(const char* op, const ConstView<float, 4>& ys, const TensorView<float, 4>& y) {
  const ArgCheck check(op);
  check.shape("y", y, std::array<index_t, 4>{-1, -1, -1, -1}, "B,H,W,C");
  const index_t B = y.size(0), L = y.size(1) * y.size(2), C = y.size(3);
  check.shape("ys", ys, std::array<index_t, 4>{B, 4, L, C}, "B,4,H*W,C");
  check.no_overlap("y", y, "ys", ys);
}

}  // namespace detail

namespace reference {

/// xs[b,k,l,:] = x[b, cross_scan_cell(kCrossDirections[k], H, W, l), :], token by token.
inline void cross_scan(ConstView<float, 4> x, TensorView<float, 4> xs) {
  detail::validate_cross_scan("reference::cross_scan", x, xs);
  const index_t H = x.size(1), W = x.size(2);
  for (index_t b = 0; b < x.size(0); ++b)
    for (index_t k = 0; k < 4; ++k)
      for (index_t l = 0; l < H * W; ++l) {
        const auto hw = cross_scan_cell(kCrossDirections[static_cast<std::size_t>(k)], H, W, l);
        for (index_t c = 0; c < x.size(3); ++c) xs(b, k, l, c) = x(b, hw[0], hw[1], c);
      }
}

/// y[b,h,w,:] = sum over k of ys at the token of direction k that reads cell (h, w).
inline void cross_merge(ConstView<float, 4> ys, TensorView<float, 4> y) {
  detail::validate_cross_merge("reference::cross_merge", ys, y);
  const index_t H = y.size(1), W = y.size(2);
  for (index_t b = 0; b < y.size(0); ++b) {
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < W; ++w)
        for (index_t c = 0; c < y.size(3); ++c) y(b, h, w, c) = 0.f;
    for (index_t k = 0; k < 4; ++k)
      for (index_t l = 0; l < H * W; ++l) {
        const auto hw = cross_scan_cell(kCrossDirections[static_cast<std::size_t>(k)], H, W, l);
        for (index_t c = 0; c < y.size(3); ++c) y(b, hw[0], hw[1], c) += ys(b, k, l, c);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
