// The delta-rule family (delta_rule, gated_delta_rule / KDA, rwkv7): public enums, one
// (batch, value head) slice of a problem, per-token loaders and the shared argument checks.
// The shape checks of q/k/v, scale and chunk size are the linear-attention family's
// (diagonal_decay/validate.hpp), reused as they are.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"

namespace seqmix {

/// How the decay of gated_delta_rule is given (natural-log space, <= 0).
enum class DeltaGate {
  scalar,   ///< g_scalar [B,T,HV]: one log-decay per token and value head (Gated DeltaNet)
  channel,  ///< g [B,T,HV,K]: one per token, value head and key channel (KDA, Kimi Delta Attention)
};

/// Optional normalization of q and k inside the kernel, per token and q/k head.
enum class QkNorm {
  none,  ///< q and k are used as given (callers normalized them already)
  l2,    ///< x / sqrt(sum x^2 + 1e-6), as flash-linear-attention's use_qk_l2norm_in_kernel
};

/// Which prefill algorithm a delta-family op runs. Both compute the same function (to rounding).
enum class DeltaAlgorithm {
  automatic,  ///< whichever measured faster for the shape (delta_update::choose_delta_algorithm)
  chunked,    ///< chunkwise WY / UT form on GEMMs (README.md)
  recurrent,  ///< token by token: the fused decode-step kernel applied T times
};

namespace delta_update {

using detail::la::Dims;

// Epsilon of QkNorm::l2, inside the square root (flash-linear-attention's value).
constexpr float kL2NormEps = 1e-6f;

// One (batch, value head) of a delta_rule / gated_delta_rule prefill.
struct DeltaHead {
  // [T,K] raw rows of q/k head hv / (HV/HK), [T,V] values: fp32 views, or bf16 / f16 storage
  // that the loaders below widen one row at a time (diagonal_decay/head.hpp's InputRows).
  detail::la::InputRows q, k;
  detail::la::InputRows v;
  ConstView<float, 1> beta;  // [T]
  // [T,K] log-decays; a scalar gate is the same view with column stride 0. Empty: no decay.
  ConstView<float, 2> g;
  bool scalar_gate = false;
  TensorView<float, 2> o;  // [T,V]
  float scale = 1.f;
  QkNorm norm = QkNorm::none;
  bool bf16_dot = false;  // chunked WY form: GEMMs on AVX512-BF16 dot products (wy.hpp)

  index_t T() const { return q.size(0); }
  index_t K() const { return q.size(1); }
  index_t V() const { return v.size(1); }
  bool gated() const { return g.has_value(); }
};

// Tokens [t0, t0 + n) of a head as a head of its own.
inline DeltaHead slice_head(const DeltaHead& p, index_t t0, index_t n) {
  DeltaHead s = p;
  s.q = p.q.slice(t0, n);
  s.k = p.k.slice(t0, n);
  s.v = p.v.slice(t0, n);
  s.beta = p.beta.slice(0, t0, n);
  s.o = p.o.slice(0, t0, n);
  if (p.g.has_value()) s.g = p.g.slice(0, t0, n);
  return s;
}

// factor / sqrt(sum x^2 + eps) for x[0..n) given its float sum of squares. That sum overflows to
// inf once an element passes ~1.8e19 (finite inputs would then be scaled to 0, where the
// reference, in double, gives x / ||x||), so an infinite sum is redone in double; a NaN or inf
// element still gives a non-finite norm.
inline float l2_normalized(float factor, const float* x, index_t n, float sum) {
  if (!std::isinf(sum)) return factor / std::sqrt(sum + kL2NormEps);
  double wide = 0.0;
  for (index_t i = 0; i < n; ++i) wide += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return static_cast<float>(static_cast<double>(factor) / std::sqrt(wide + static_cast<double>(kL2NormEps)));
}

// out[0..n) = factor * x (any stride), times 1/||x|| when normalizing.
inline void load_row(const ConstView<float, 1>& x, float factor, QkNorm norm, float* out) {
  const index_t n = x.size(0);
  if (x.is_last_dim_contiguous()) {
    const float* p = x.data();
    if (norm == QkNorm::l2) factor = l2_normalized(factor, p, n, simd::dot(p, p, n));
    const simd::Batch<float> f(factor);
    const index_t nv = simd::vector_end(n);
    for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, f * simd::load(p + i));
    for (index_t i = nv; i < n; ++i) out[i] = factor * p[i];
    return;
  }
  float sum = 0.f;
  for (index_t i = 0; i < n; ++i) out[i] = x(i);
  if (norm == QkNorm::l2) {
    for (index_t i = 0; i < n; ++i) sum += out[i] * out[i];
    factor = l2_normalized(factor, out, n, sum);
  }
  for (index_t i = 0; i < n; ++i) out[i] *= factor;
}

// load_row on row t of stored rows: an fp32 row as above; a 16-bit row is widened into `out`
// first and scaled (and normalized) there, in place.
inline void load_row(const detail::la::InputRows& x, index_t t, float factor, QkNorm norm, float* out) {
  if (x.is_float()) return load_row(x.floats()[t], factor, norm, out);
  x.load(t, out);
  load_row(ConstView<float, 1>(out, {x.size(1)}), factor, norm, out);  // elementwise: in place is safe
}

// Copies a (possibly strided) row into out[0..n).
inline void copy_row(const ConstView<float, 1>& x, float* out) {
  const index_t n = x.size(0);
  if (x.is_last_dim_contiguous()) {
    std::copy(x.data(), x.data() + n, out);
    return;
  }
  for (index_t i = 0; i < n; ++i) out[i] = x(i);
}

// beta [B,T,HV] (prefill) or [B,HV] (step) must be finite: beta outside [0, 1] is not forbidden
// by SPEC (DeltaNet variants use beta in (0, 2)). The check runs on the calling thread before the
// parallel part, where every microsecond idles 64 cores: a contiguous beta (the usual layout) is
// one vectorized pass over all of it (simd::rows_finite); otherwise, and to name the first bad
// element, row by row of the last dimension with one branch-free pass per row. Row by row alone,
// the rows' index decompositions were most of the check at few heads: gdn-h4 (1024 rows of 4)
// 5.1 us warm, 6.3 us right after a call, of a 20-30 us serial part (docs/parallel_grain.md).
template <std::size_t Rank>
inline void check_beta_finite(const ArgCheck& check, const ConstView<float, Rank>& beta) {
  if (beta.is_contiguous() && simd::rows_finite(beta.data(), 1, beta.numel(), beta.numel())) return;
  const index_t inner = beta.size(Rank - 1), s = beta.stride(Rank - 1);
  const index_t rows = inner > 0 ? beta.numel() / inner : 0;
  std::array<index_t, Rank> idx{};
  for (index_t r = 0; r < rows; ++r) {
    index_t rest = r, offset = 0;  // row r's leading indices, row-major
    for (std::size_t d = Rank - 1; d-- > 0;) {
      idx[d] = rest % beta.size(d);
      rest /= beta.size(d);
      offset += idx[d] * beta.stride(d);
    }
    const float* row = beta.data() + offset;
    bool bad = false;
    for (index_t i = 0; i < inner; ++i) bad |= !(row[i * s] - row[i * s] == 0.f);  // x - x: NaN for NaN and inf
    if (!bad) continue;
    for (index_t i = 0; i < inner; ++i) {
      if (std::isfinite(row[i * s])) continue;
      idx[Rank - 1] = i;
      check.fail("beta", "must be finite, got " + std::to_string(row[i * s]) + " at " + shape_to_string(idx));
    }
  }
}

// beta's shape and elements (check_beta_finite).
template <std::size_t Rank>
inline void check_beta(const ArgCheck& check, const ConstView<float, Rank>& beta, const std::array<index_t, Rank>& shape,
                       const char* dims) {
  check.shape("beta", beta, shape, dims);
  check_beta_finite(check, beta);
}

// Whether tokens [t0, t0 + L) of head p hold an element the prefill's checks refuse: a beta that
// is not finite (x - x is NaN for NaN and inf) or a log-gate that is not <= 0 (NaN included). Only
// says whether; the call's own checks then name the first bad element (run_delta_items).
inline bool chunk_elements_bad(const DeltaHead& p, index_t t0, index_t L) {
  bool bad = false;
  for (index_t t = t0; t < t0 + L; ++t) bad |= !(p.beta(t) - p.beta(t) == 0.f);
  if (!p.gated()) return bad;
  const index_t n = p.scalar_gate ? 1 : p.K();  // a scalar gate is column 0, repeated by stride 0
  for (index_t t = t0; t < t0 + L && !bad; ++t) bad = detail::la::has_bad_log_gate(p.g[t].data(), n, p.g.stride(1));
  return bad;
}

}  // namespace delta_update
}  // namespace seqmix
