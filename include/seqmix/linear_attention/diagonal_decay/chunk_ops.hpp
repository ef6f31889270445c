// Vectorized elementwise pieces of the chunk steps (chunked.hpp, fp32 and bf16 tiles, and the
// delta rules' anchored operands in delta_update/wy.hpp). Internal.
//
// Profiled at gla-1.3b (H 32, K = V = 64, T 8192, one thread): with Eigen's array expressions the
// exp-scaled copies of Q and K ran on scalar expf (Eigen does not vectorize exp through a
// rowwise broadcast) and the per-element loads of q / k / g went through strided view
// accessors; together they took about three times the GEMMs' time. These loops keep every
// elementwise pass on simd::Batch.
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la {

// out[i][c] = x[i][c] * exp(s * g[i][c] + m[c]) for i < n, c < cols (m null: no shift). Row
// strides ldx, ldg, ldo; out may be x.
inline void times_exp_rows(const float* x, index_t ldx, const float* g, index_t ldg, float s, const float* m,
                           float* out, index_t ldo, index_t n, index_t cols) {
  using simd::Batch;
  const index_t cv = simd::vector_end(cols);
  const Batch<float> sign(s), zero(0.f);
  for (index_t i = 0; i < n; ++i) {
    const float *xi = x + i * ldx, *gi = g + i * ldg;
    float* oi = out + i * ldo;
    for (index_t c = 0; c < cv; c += simd::kWidth) {
      const Batch<float> e = simd::fma(sign, simd::load(gi + c), m ? simd::load(m + c) : zero);
      simd::store(oi + c, simd::load(xi + c) * simd::exp(e));
    }
    for (index_t c = cv; c < cols; ++c) oi[c] = xi[c] * std::exp(s * gi[c] + (m ? m[c] : 0.f));
  }
}

// times_exp_rows with s = 1 and no shift that also keeps e[i][c] = exp(g[i][c]) (row stride
// lde): the bf16 steps divide the keys by it instead of taking a second exp (chunked.hpp).
inline void times_exp_rows_kept(const float* x, index_t ldx, const float* g, index_t ldg, float* e, index_t lde,
                                float* out, index_t ldo, index_t n, index_t cols) {
  const index_t cv = simd::vector_end(cols);
  for (index_t i = 0; i < n; ++i) {
    const float *xi = x + i * ldx, *gi = g + i * ldg;
    float *ei = e + i * lde, *oi = out + i * ldo;
    for (index_t c = 0; c < cv; c += simd::kWidth) {
      const simd::Batch<float> ec = simd::exp(simd::load(gi + c));
      simd::store(ei + c, ec);
      simd::store(oi + c, simd::load(xi + c) * ec);
    }
    for (index_t c = cv; c < cols; ++c) {
      ei[c] = std::exp(gi[c]);
      oi[c] = xi[c] * ei[c];
    }
  }
}

// out[i][c] = x[i][c] / d[i][c] for i < n, c < cols. Row strides ldx, ldd, ldo; out may be d.
inline void divide_rows(const float* x, index_t ldx, const float* d, index_t ldd, float* out, index_t ldo, index_t n,
                        index_t cols) {
  const index_t cv = simd::vector_end(cols);
  for (index_t i = 0; i < n; ++i) {
    const float *xi = x + i * ldx, *di = d + i * ldd;
    float* oi = out + i * ldo;
    for (index_t c = 0; c < cv; c += simd::kWidth) simd::store(oi + c, simd::load(xi + c) / simd::load(di + c));
    for (index_t c = cv; c < cols; ++c) oi[c] = xi[c] / di[c];
  }
}

// out[i][c] = x[i][c] * scale[c] for i < n, c < cols. Row strides ldx, ldo; out may be x.
inline void times_columns(const float* x, index_t ldx, const float* scale, float* out, index_t ldo, index_t n,
                          index_t cols) {
  const index_t cv = simd::vector_end(cols);
  for (index_t i = 0; i < n; ++i) {
    const float* xi = x + i * ldx;
    float* oi = out + i * ldo;
    for (index_t c = 0; c < cv; c += simd::kWidth) simd::store(oi + c, simd::load(xi + c) * simd::load(scale + c));
    for (index_t c = cv; c < cols; ++c) oi[c] = xi[c] * scale[c];
  }
}

// row[j] *= exp(b - bk[j]) for j < n: a scalar-gated score row (every exponent <= 0 for j <= i).
inline void times_exp_diff(float* row, float b, const float* bk, index_t n) {
  const simd::Batch<float> bb(b);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth)
    simd::store(row + j, simd::load(row + j) * simd::exp(bb - simd::load(bk + j)));
  for (index_t j = nv; j < n; ++j) row[j] *= std::exp(b - bk[j]);
}

// out[c] = factor * x[c] over n contiguous floats.
inline void scaled_copy(const float* x, float factor, float* out, index_t n) {
  const simd::Batch<float> f(factor);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(out + c, f * simd::load(x + c));
  for (index_t c = nv; c < n; ++c) out[c] = factor * x[c];
}

// out[c] = factor * (x[c] > 0 ? x[c] + 1 : exp(x[c])), the elu1 feature map on n contiguous
// floats (a NaN stays NaN). Scalar, its exp was ~3/4 of a K = 128 recurrent prefill.
inline void elu1_scaled(const float* x, float factor, float* out, index_t n) {
  const simd::Batch<float> f(factor), zero(0.f), one(1.f);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth) {
    const simd::Batch<float> v = simd::load(x + c);
    simd::store(out + c, f * xsimd::select(v > zero, v + one, simd::exp(simd::min_keep_nan(v, zero))));
  }
  for (index_t c = nv; c < n; ++c) out[c] = factor * (x[c] > 0.f ? x[c] + 1.f : std::exp(x[c]));
}

// out[c] = factor * max(x[c], 0) on n contiguous floats (a NaN stays NaN, as std::max(x, 0) keeps it).
inline void relu_scaled(const float* x, float factor, float* out, index_t n) {
  const simd::Batch<float> f(factor), zero(0.f);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth) {
    const simd::Batch<float> v = simd::load(x + c);
    simd::store(out + c, f * xsimd::select(v < zero, zero, v));
  }
  for (index_t c = nv; c < n; ++c) out[c] = factor * std::max(x[c], 0.f);
}

// out[c] = (prev ? prev[c] : 0) + max(g[c], floor): one row of a cumulative log-decay.
inline void add_floored(const float* prev, const float* g, float floor, float* out, index_t n) {
  const simd::Batch<float> bound(-floor), zero(0.f);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth) {
    const simd::Batch<float> gc = -simd::min_keep_nan(-simd::load(g + c), bound);  // max(g, floor)
    simd::store(out + c, (prev ? simd::load(prev + c) : zero) + gc);
  }
  for (index_t c = nv; c < n; ++c) out[c] = (prev ? prev[c] : 0.f) + std::max(g[c], floor);
}

}  // namespace seqmix::detail::la
