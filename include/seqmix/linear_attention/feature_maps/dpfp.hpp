// DPFP (deterministic parameter-free projection, Schlag et al. 2021, "Linear Transformers Are
// Secretly Fast Weight Programmers"), the feature map ARMT uses with its associative memory:
//   r = [relu(x), relu(-x)]                                  (2K values)
//   phi[(j-1) 2K + i] = r[i] * r[(i - j) mod 2K]             for j = 1..nu, i < 2K
// so Kf = 2 nu K. (i - j) is the paper's roll of r by j places. Internal: used by the fused
// FeatureMap::dpfp1..3 of linear_attention and by seqmix::feature_map.
#pragma once

#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la {

// relu(x) for i < K, relu(-x) for K <= i < 2K, written as a comparison that keeps NaN: a NaN
// input must reach both halves.
inline float dpfp_relu(const ConstView<float, 1>& x, index_t i) {
  const index_t K = x.size(0);
  const float a = i < K ? x(i) : -x(i - K);
  return a < 0.f ? 0.f : a;
}

// out[0 .. 2 nu K) = factor * phi(x). No scratch (the decode step allocates nothing): r is
// recomputed from x, a comparison per read.
inline void dpfp_row(const ConstView<float, 1>& x, index_t nu, float factor, float* out) {
  const index_t n = 2 * x.size(0);
  for (index_t j = 1; j <= nu; ++j) {
    float* block = out + (j - 1) * n;
    for (index_t i = 0; i < n; ++i) {
      const index_t partner = i >= j ? i - j : i - j + n;  // (i - j) mod 2K, j < 2K
      block[i] = factor * (dpfp_relu(x, i) * dpfp_relu(x, partner));
    }
  }
}

}  // namespace seqmix::detail::la
