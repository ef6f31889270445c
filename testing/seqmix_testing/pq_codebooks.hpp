// A product-quantization codebook that holds given vectors exactly, for tests of PQ storage.
#pragma once

#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/coded/codebooks.hpp"

namespace seqmix::testing {

// Codebooks whose centroids of (h, s) are the sub-vectors of x [B, T, H, D] in token order (then
// the first one repeated), so every vector of x is a centroid and PQ stores it without error.
// B * T <= 256, D divisible by m.
inline PqCodebooks exact_pq_codebooks(const Tensor<float, 4>& x, index_t m) {
  const index_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), d = D / m, K = 256;
  PqCodebooks cb;
  cb.kv_heads = H, cb.subspaces = m, cb.centroids = K, cb.dim = D;
  cb.data.assign(static_cast<std::size_t>(H * K * D), 0.f);
  for (index_t h = 0; h < H; ++h)
    for (index_t s = 0; s < m; ++s)
      for (index_t k = 0; k < K; ++k) {
        const index_t n = k < B * T ? k : 0;
        for (index_t c = 0; c < d; ++c) cb.centroid(h, s, k)[c] = x(n / T, n % T, h, s * d + c);
      }
  return cb;
}

}  // namespace seqmix::testing
