// seqmix::feature_map, the fast form: DPFP row by row; the weighted maps as one [rows, K] x
// [K, M] product per block of 64 tokens of a head (Eigen), then the exp / softmax of each row on
// SIMD vectors. Threaded over (batch, head, token block). Definition and validation: reference.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/feature_maps/dpfp.hpp"
#include "seqmix/linear_attention/feature_maps/reference.hpp"

namespace seqmix {

namespace detail {

// Tokens of one head per product: enough rows for the GEMM to run near peak, few enough that
// the [rows, M] block of logits stays in L2 for M up to a few thousand.
constexpr index_t kFeatureMapRows = 64;

// Writes n contiguous values to a row of phi (strided or not).
inline void store_feature_row(const TensorView<float, 1>& dst, const float* src, index_t n, index_t offset = 0) {
  if (dst.stride(0) == 1) {
    std::copy(src, src + n, dst.data() + offset);
    return;
  }
  for (index_t j = 0; j < n; ++j) dst(offset + j) = src[j];
}

// The scratch of one task of the weighted maps.
struct FeatureMapScratch {
  std::vector<float> x, w, z, a, b, norm2;
  index_t head = -1;  // the head whose weights w holds
  FeatureMapScratch(const FeatureMapDims& d)
      : x(static_cast<std::size_t>(kFeatureMapRows * d.K)), w(static_cast<std::size_t>(d.M * d.K)),
        z(static_cast<std::size_t>(kFeatureMapRows * d.M)), a(static_cast<std::size_t>(d.M)),
        b(static_cast<std::size_t>(d.M)), norm2(static_cast<std::size_t>(kFeatureMapRows)) {}
};

// phi of rows [t0, t0 + n) of (b, h) for positive_random / hedgehog.
inline void weighted_feature_block(const FeatureMapInputs& in, const FeatureMapOutputs& out,
                                   const FeatureMapOptions& options, const FeatureMapDims& d, index_t b, index_t h,
                                   index_t t0, index_t n, FeatureMapScratch& s) {
  const index_t hw = d.shared_weight ? 0 : h, K = d.K, M = d.M;
  if (s.head != hw) {
    for (index_t j = 0; j < M; ++j)
      for (index_t k = 0; k < K; ++k) s.w[static_cast<std::size_t>(j * K + k)] = in.weight(hw, j, k);
    s.head = hw;
  }
  const float scale = options.input_scale;
  for (index_t r = 0; r < n; ++r) {
    float* xr = s.x.data() + r * K;
    const ConstView<float, 1> row = in.x[b][t0 + r][h];
    float norm2 = 0.f;
    for (index_t k = 0; k < K; ++k) {
      xr[k] = scale * row(k);
      norm2 += xr[k] * xr[k];
    }
    s.norm2[static_cast<std::size_t>(r)] = norm2;
  }
  const Eigen::Map<const RowMajorMatrix<float>> X(s.x.data(), n, K), W(s.w.data(), M, K);
  Eigen::Map<RowMajorMatrix<float>> Z(s.z.data(), n, M);
  Z.noalias() = X * W.transpose();
  const float inv_sqrt_m = static_cast<float>(1.0 / std::sqrt(static_cast<double>(M)));
  for (index_t r = 0; r < n; ++r) {
    float* z = s.z.data() + r * M;
    const TensorView<float, 1> phi = out.phi[b][t0 + r][h];
    if (in.bias.has_value())
      for (index_t j = 0; j < M; ++j) z[j] += in.bias(hw, j);
    // The maxima skip NaN (a NaN logit stays NaN through the exp), as in the reference.
    float zmax = -INFINITY, zmin = INFINITY;
    for (index_t j = 0; j < M; ++j) zmax = z[j] > zmax ? z[j] : zmax, zmin = z[j] < zmin ? z[j] : zmin;
    if (options.kind == FeatureMapKind::positive_random) {
      const float shift = s.norm2[static_cast<std::size_t>(r)] / 2.f + (options.subtract_row_max ? zmax : 0.f);
      for (index_t j = 0; j < M; ++j) s.a[static_cast<std::size_t>(j)] = z[j] - shift;
      la::exp_inplace(s.a.data(), M);
      for (index_t j = 0; j < M; ++j) s.a[static_cast<std::size_t>(j)] *= inv_sqrt_m;
      store_feature_row(phi, s.a.data(), M);
      continue;
    }
    for (index_t j = 0; j < M; ++j) s.a[static_cast<std::size_t>(j)] = z[j] - zmax, s.b[static_cast<std::size_t>(j)] = zmin - z[j];
    la::exp_inplace(s.a.data(), M);
    la::exp_inplace(s.b.data(), M);
    float sum_a = 0.f, sum_b = 0.f;
    for (index_t j = 0; j < M; ++j) sum_a += s.a[static_cast<std::size_t>(j)], sum_b += s.b[static_cast<std::size_t>(j)];
    const float inv_a = 1.f / sum_a, inv_b = 1.f / sum_b;
    for (index_t j = 0; j < M; ++j) s.a[static_cast<std::size_t>(j)] *= inv_a, s.b[static_cast<std::size_t>(j)] *= inv_b;
    store_feature_row(phi, s.a.data(), M);
    store_feature_row(phi, s.b.data(), M, M);
  }
}

}  // namespace detail

/// Applies a learned or random feature map to x (q or k) for any linear-attention operator
/// (definitions: reference.hpp). The output feeds the operator as its q / k with the identity
/// map; its state then has Kf = feature_map_dim(options, K, M) key channels.
inline void feature_map(const FeatureMapInputs& in, const FeatureMapOutputs& out, const FeatureMapOptions& options = {},
                        const Executor& executor = serial_executor()) {
  const detail::FeatureMapDims d = detail::validate_feature_map("feature_map", in, out, options);
  if (options.kind == FeatureMapKind::dpfp) {
    const index_t rows = d.B * d.T * d.H;
    parallel_for(executor, rows, 64, [&](index_t begin, index_t end) {
      std::vector<float> x(static_cast<std::size_t>(d.K)), phi(static_cast<std::size_t>(d.Kf));
      for (index_t i = begin; i < end; ++i) {
        const index_t h = i % d.H, t = (i / d.H) % d.T, b = i / (d.H * d.T);
        const ConstView<float, 1> row = in.x[b][t][h];
        for (index_t k = 0; k < d.K; ++k) x[static_cast<std::size_t>(k)] = options.input_scale * row(k);
        detail::la::dpfp_row(ConstView<float, 1>(x.data(), {d.K}), options.dpfp_nu, 1.f, phi.data());
        detail::store_feature_row(out.phi[b][t][h], phi.data(), d.Kf);
      }
    });
    return;
  }
  const index_t blocks_per_head = (d.T + detail::kFeatureMapRows - 1) / detail::kFeatureMapRows;
  const index_t units = d.B * d.H * blocks_per_head;
  parallel_for(executor, units, 1, [&](index_t begin, index_t end) {
    detail::FeatureMapScratch scratch(d);
    for (index_t u = begin; u < end; ++u) {
      // Units run head-major so a task reuses the head's weight copy across its token blocks.
      const index_t h = u / (d.B * blocks_per_head), rest = u % (d.B * blocks_per_head);
      const index_t b = rest / blocks_per_head, t0 = (rest % blocks_per_head) * detail::kFeatureMapRows;
      detail::weighted_feature_block(in, out, options, d, b, h, t0, std::min(detail::kFeatureMapRows, d.T - t0), scratch);
    }
  });
}

}  // namespace seqmix
