// The classic sub-quadratic approximations of softmax attention (docs/operators.md, "Approximate
// attention"): linformer, nystrom_attention and combiner. This header holds their options,
// inputs, validation and the references (plain loops in double, the readable definitions);
// fast.hpp holds the forms built on the flash kernel.
//
// linformer (Wang et al. 2020): learned projections E, F [kp, T] mix the T keys and values into
// kp projected ones, K' = E K and V' = F V per (batch row, KV head), then every query attends to
// the kp projected keys with a plain softmax:
//   o_i = sum_r exp(s_ir) v'_r / sum_r exp(s_ir),  s_ir = scale * q_i . k'_r.
// Causal is not defined: every projected key mixes keys from the whole sequence, so no query can
// be kept from later keys; causal = true is refused (ShapeError on options.causal).
//
// nystrom_attention (Xiong et al. 2021): m landmarks, the means of m equal segments of Q and of K
// (T % m == 0, as the paper's reshape needs). With S(X, Y) = softmax(scale X Y^T) row by row,
//   F = S(Q, K~) [T x m],  A = S(Q~, K~) [m x m],  Bm = S(Q~, K) [m x T],
//   o = F Z (Bm V) + conv(V),   Z = pinv(A) by the paper's iteration:
//   Z_0 = A^T / (max_j sum_i |A_ij| * max_i sum_j |A_ij|),
//   Z_{n+1} = 1/4 Z_n (13 I - A Z_n (15 I - A Z_n (7 I - A Z_n)))   (pinv_iterations times).
// conv is the optional depthwise skip on V: conv(V)[t, h] = sum_u w[h, u] V[t + u - (ks - 1) / 2,
// h / G] (zero outside [0, T), ks odd). Non-causal. m = T makes Q~ = Q, K~ = K, so F = A = Bm and
// o = A pinv(A) A V = A V: dense attention once the iteration has converged.
// Differences from the published code, on purpose: its Z_0 takes the maxima over the whole batch
// and every head at once; here they are taken per (batch row, head), so one batch row's result
// does not depend on the others. Only Z_0's scale differs; the limit is the same.
//
// combiner (Ren et al. 2021, the causal Combiner-Fixed form): keys in blocks of bs; query i, at
// position pos = T - Tq + i (the last Tq of the T keys; Tq = 1 is the decode step) in block
// n = pos / bs, attends, in one softmax, to the keys of its own block up to itself and to one
// summary key / value per earlier block r < n (the block's mean key and mean value, or the
// caller's summaries):
//   logits scale * q_i . k_j (n * bs <= j <= pos) and scale * q_i . ks_r (r < n), values v_j, vs_r.
// bs = 1 (each earlier block is one key, its own summary) and bs >= T (one block) both give dense
// causal attention exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

// ---- linformer --------------------------------------------------------------------------------

/// Options of linformer and reference::linformer.
struct LinformerOptions {
  /// Multiplies q.k'; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
  /// Must stay false: linformer has no causal form (see the top of this file); true is refused.
  bool causal = false;
};

/// Arguments of linformer (fp32). E and F are shared by every head (the paper's shared
/// projection); kp is the projected length, 1 <= kp <= T.
struct LinformerInputs {
  ConstView<float, 4> q;  ///< [B,Tq,Hq,Dk]
  ConstView<float, 4> k;  ///< [B,T,Hkv,Dk], Hkv divides Hq
  ConstView<float, 4> v;  ///< [B,T,Hkv,Dv]
  ConstView<float, 2> e;  ///< [kp,T]: K' = E K
  ConstView<float, 2> f;  ///< [kp,T]: V' = F V
};

// ---- nystrom_attention ------------------------------------------------------------------------

/// Options of nystrom_attention and reference::nystrom_attention.
struct NystromOptions {
  /// Landmarks m, >= 1, dividing T (segment means of T / m tokens each).
  index_t landmarks = 64;
  /// Iterations of the pseudo-inverse (the paper's default 6), >= 0.
  index_t pinv_iterations = 6;
  /// Multiplies q.k in all three kernels; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments of nystrom_attention (fp32, self-attention: q, k, v share T).
struct NystromInputs {
  ConstView<float, 4> q;                  ///< [B,T,Hq,Dk]
  ConstView<float, 4> k;                  ///< [B,T,Hkv,Dk], Hkv divides Hq
  ConstView<float, 4> v;                  ///< [B,T,Hkv,Dv]
  ConstView<float, 2> conv_kernel = {};   ///< [Hq,ks], ks odd, optional: the depthwise skip on V
};

// ---- combiner ---------------------------------------------------------------------------------

/// Options of combiner and reference::combiner.
struct CombinerOptions {
  /// Keys per block, >= 1 (the paper uses about sqrt(T)).
  index_t block_size = 64;
  /// Multiplies q.k and q.ks; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments of combiner (fp32). The queries are the last Tq of the T positions (Tq = T: prefill,
/// Tq = 1: a decode step). The summaries are optional (absent: the mean key / value of each block,
/// which reads all of k and v; a decoder keeps them beside its cache); only blocks before a
/// query's own are read.
struct CombinerInputs {
  ConstView<float, 4> q;                  ///< [B,Tq,Hq,Dk], Tq <= T
  ConstView<float, 4> k;                  ///< [B,T,Hkv,Dk], Hkv divides Hq
  ConstView<float, 4> v;                  ///< [B,T,Hkv,Dv]
  ConstView<float, 4> summary_k = {};     ///< [B,ceil(T/block_size),Hkv,Dk], optional
  ConstView<float, 4> summary_v = {};     ///< [B,ceil(T/block_size),Hkv,Dv], optional
};

namespace detail {

inline AttentionOptions approx_attention_options(const std::optional<float>& scale, bool causal) {
  AttentionOptions o;
  o.scale = scale, o.causal = causal;
  return o;
}

inline AttentionInputs<float> approx_dense_inputs(const ConstView<float, 4>& q, const ConstView<float, 4>& k,
                                                  const ConstView<float, 4>& v) {
  AttentionInputs<float> in;
  in.q = q, in.k = k, in.v = v;
  return in;
}

// Validation of linformer; nothing is written before it passes. Returns the dims (Tk = T).
inline AttentionDims validate_linformer(const char* op, const LinformerInputs& in, const AttentionOutputs& out,
                                        const LinformerOptions& options) {
  const ArgCheck check(op);
  if (options.causal)
    check.fail("options.causal",
               "must be false: linformer has no causal form (each projected key k'_r = sum_j E[r, j] k_j mixes keys "
               "from the whole sequence, so no query can be kept from later keys)");
  const AttentionDims d = validate_attention(check, approx_dense_inputs(in.q, in.k, in.v), out,
                                             approx_attention_options(options.scale, false));
  check.shape("e", in.e, std::array<index_t, 2>{-1, d.Tk}, "kp,T");
  const index_t kp = in.e.size(0);
  check.that(kp >= 1, "e", "needs kp >= 1 projected keys, got kp = 0");
  check.that(kp <= d.Tk, "e", "needs kp <= T (a projection to at most T keys), got kp = " + std::to_string(kp) +
                                  ", T = " + std::to_string(d.Tk));
  check.shape("f", in.f, std::array<index_t, 2>{kp, d.Tk}, "kp,T");
  check.no_overlap("o", out.o, "e", in.e).no_overlap("o", out.o, "f", in.f);
  check.no_overlap("lse", out.lse, "e", in.e).no_overlap("lse", out.lse, "f", in.f);
  return d;
}

// Validation of nystrom_attention; nothing is written before it passes.
inline AttentionDims validate_nystrom(const char* op, const NystromInputs& in, const TensorView<float, 4>& o,
                                      const NystromOptions& options) {
  const ArgCheck check(op);
  check.that(options.landmarks >= 1, "options.landmarks",
             "must be >= 1, got " + std::to_string(options.landmarks));
  check.that(options.pinv_iterations >= 0, "options.pinv_iterations",
             "must be >= 0, got " + std::to_string(options.pinv_iterations));
  const AttentionDims d = validate_attention(check, approx_dense_inputs(in.q, in.k, in.v), AttentionOutputs{o, {}},
                                             approx_attention_options(options.scale, false));
  if (d.Tq != d.Tk)
    check.fail("q", "needs as many queries as keys (self-attention, Tq = T), got Tq = " + std::to_string(d.Tq) +
                        ", T = " + std::to_string(d.Tk));
  if (d.Tk > 0 && (options.landmarks > d.Tk || d.Tk % options.landmarks != 0))
    check.fail("options.landmarks", "must divide T (segments of T / m tokens), got m = " +
                                        std::to_string(options.landmarks) + ", T = " + std::to_string(d.Tk));
  if (in.conv_kernel.has_value() || in.conv_kernel.size(1) > 0) {
    check.shape("conv_kernel", in.conv_kernel, std::array<index_t, 2>{d.Hq, -1}, "Hq,ks");
    check.that(in.conv_kernel.size(1) % 2 == 1, "conv_kernel",
               "needs an odd kernel size ks (centred, T outputs), got " + std::to_string(in.conv_kernel.size(1)));
    check.no_overlap("o", o, "conv_kernel", in.conv_kernel);
  }
  return d;
}

// Validation of combiner; nothing is written before it passes. Returns the block count.
inline index_t validate_combiner(const char* op, const CombinerInputs& in, const AttentionOutputs& out,
                                 const CombinerOptions& options, AttentionDims& d) {
  const ArgCheck check(op);
  check.that(options.block_size >= 1, "options.block_size", "must be >= 1, got " + std::to_string(options.block_size));
  d = validate_attention(check, approx_dense_inputs(in.q, in.k, in.v), out, approx_attention_options(options.scale, true));
  if (d.Tq > d.Tk)
    check.fail("q", "needs Tq <= T (queries are the last Tq of the T keys), got Tq = " + std::to_string(d.Tq) +
                        ", T = " + std::to_string(d.Tk));
  const index_t Nb = (d.Tk + options.block_size - 1) / options.block_size;
  check.optional_shape("summary_k", in.summary_k, std::array<index_t, 4>{d.B, Nb, d.Hkv, d.Dk},
                       "B,ceil(T/block_size),Hkv,Dk");
  check.optional_shape("summary_v", in.summary_v, std::array<index_t, 4>{d.B, Nb, d.Hkv, d.Dv},
                       "B,ceil(T/block_size),Hkv,Dv");
  check.no_overlap("o", out.o, "summary_k", in.summary_k).no_overlap("lse", out.lse, "summary_k", in.summary_k);
  check.no_overlap("o", out.o, "summary_v", in.summary_v).no_overlap("lse", out.lse, "summary_v", in.summary_v);
  return Nb;
}

// Mean of rows [j0, j1) of x[b, :, h, :] in double.
inline void reference_row_mean(const ConstView<float, 4>& x, index_t b, index_t h, index_t j0, index_t j1,
                               std::vector<double>& out) {
  const index_t D = x.size(3);
  out.assign(static_cast<std::size_t>(D), 0.0);
  for (index_t j = j0; j < j1; ++j)
    for (index_t c = 0; c < D; ++c) out[static_cast<std::size_t>(c)] += static_cast<double>(x(b, j, h, c));
  for (double& e : out) e /= static_cast<double>(j1 - j0);
}

// softmax(scale * X Y^T) row by row, X [n x D], Y [p x D] (row-major doubles) -> [n x p].
inline std::vector<double> reference_softmax_kernel(const std::vector<double>& X, const std::vector<double>& Y,
                                                    index_t n, index_t p, index_t D, double scale) {
  std::vector<double> S(static_cast<std::size_t>(n * p));
  for (index_t i = 0; i < n; ++i) {
    double top = -HUGE_VAL;
    for (index_t j = 0; j < p; ++j) {
      double dot = 0.0;
      for (index_t c = 0; c < D; ++c) dot += X[static_cast<std::size_t>(i * D + c)] * Y[static_cast<std::size_t>(j * D + c)];
      S[static_cast<std::size_t>(i * p + j)] = scale * dot;
      top = std::max(top, scale * dot);
    }
    double l = 0.0;
    for (index_t j = 0; j < p; ++j) l += (S[static_cast<std::size_t>(i * p + j)] = std::exp(S[static_cast<std::size_t>(i * p + j)] - top));
    for (index_t j = 0; j < p; ++j) S[static_cast<std::size_t>(i * p + j)] /= l;
  }
  return S;
}

// C [n x p] = A [n x q] B [q x p], row-major doubles.
inline std::vector<double> reference_matmul(const std::vector<double>& A, const std::vector<double>& B, index_t n,
                                            index_t q, index_t p) {
  std::vector<double> C(static_cast<std::size_t>(n * p), 0.0);
  for (index_t i = 0; i < n; ++i)
    for (index_t r = 0; r < q; ++r) {
      const double a = A[static_cast<std::size_t>(i * q + r)];
      for (index_t j = 0; j < p; ++j) C[static_cast<std::size_t>(i * p + j)] += a * B[static_cast<std::size_t>(r * p + j)];
    }
  return C;
}

// The paper's iterative Moore-Penrose inverse of the m x m matrix A (row-major doubles).
inline std::vector<double> reference_iterative_pinv(const std::vector<double>& A, index_t m, index_t iterations) {
  double col = 0.0, row = 0.0;
  for (index_t j = 0; j < m; ++j) {
    double sc = 0.0, sr = 0.0;
    for (index_t i = 0; i < m; ++i)
      sc += std::abs(A[static_cast<std::size_t>(i * m + j)]), sr += std::abs(A[static_cast<std::size_t>(j * m + i)]);
    col = std::max(col, sc), row = std::max(row, sr);
  }
  std::vector<double> Z(static_cast<std::size_t>(m * m));
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < m; ++j) Z[static_cast<std::size_t>(i * m + j)] = A[static_cast<std::size_t>(j * m + i)] / (col * row);
  const auto c_minus = [m](double c, const std::vector<double>& X) {  // c I - X
    std::vector<double> Y(X.size());
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < m; ++j) Y[static_cast<std::size_t>(i * m + j)] = (i == j ? c : 0.0) - X[static_cast<std::size_t>(i * m + j)];
    return Y;
  };
  for (index_t it = 0; it < iterations; ++it) {
    const std::vector<double> AZ = reference_matmul(A, Z, m, m, m);
    const std::vector<double> t1 = reference_matmul(AZ, c_minus(7.0, AZ), m, m, m);
    const std::vector<double> t2 = reference_matmul(AZ, c_minus(15.0, t1), m, m, m);
    Z = reference_matmul(Z, c_minus(13.0, t2), m, m, m);
    for (double& z : Z) z *= 0.25;
  }
  return Z;
}

}  // namespace detail

namespace reference {

/// linformer's definition: K' = E K, V' = F V in double, then a plain softmax of each query over
/// the kp projected keys (o and, if given, lse).
inline void linformer(const LinformerInputs& in, const AttentionOutputs& out, const LinformerOptions& options = {}) {
  const detail::AttentionDims d = detail::validate_linformer("reference::linformer", in, out, options);
  const index_t kp = in.e.size(0);
  const double scale = detail::attention_scale(detail::approx_attention_options(options.scale, false), d.Dk);
  std::vector<double> kpj(static_cast<std::size_t>(kp * d.Dk)), vpj(static_cast<std::size_t>(kp * d.Dv)),
      s(static_cast<std::size_t>(kp)), acc(static_cast<std::size_t>(d.Dv));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      std::fill(kpj.begin(), kpj.end(), 0.0), std::fill(vpj.begin(), vpj.end(), 0.0);
      for (index_t r = 0; r < kp; ++r)
        for (index_t j = 0; j < d.Tk; ++j) {
          const double e = in.e(r, j), f = in.f(r, j);
          for (index_t c = 0; c < d.Dk; ++c) kpj[static_cast<std::size_t>(r * d.Dk + c)] += e * static_cast<double>(in.k(b, j, hk, c));
          for (index_t c = 0; c < d.Dv; ++c) vpj[static_cast<std::size_t>(r * d.Dv + c)] += f * static_cast<double>(in.v(b, j, hk, c));
        }
      for (index_t i = 0; i < d.Tq; ++i)
        for (index_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
          double top = -HUGE_VAL;
          for (index_t r = 0; r < kp; ++r) {
            double dot = 0.0;
            for (index_t c = 0; c < d.Dk; ++c) dot += static_cast<double>(in.q(b, i, h, c)) * kpj[static_cast<std::size_t>(r * d.Dk + c)];
            s[static_cast<std::size_t>(r)] = scale * dot;
            top = std::max(top, scale * dot);
          }
          double l = 0.0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (index_t r = 0; r < kp; ++r) {
            const double p = std::exp(s[static_cast<std::size_t>(r)] - top);
            l += p;
            for (index_t c = 0; c < d.Dv; ++c) acc[static_cast<std::size_t>(c)] += p * vpj[static_cast<std::size_t>(r * d.Dv + c)];
          }
          for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = static_cast<float>(acc[static_cast<std::size_t>(c)] / l);
          if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(top + std::log(l));
        }
    }
}

/// nystrom_attention's definition: landmarks, the three softmax kernels, the iterative
/// pseudo-inverse and the products in double, per (batch row, query head), plus the conv skip.
inline void nystrom_attention(const NystromInputs& in, const TensorView<float, 4>& o, const NystromOptions& options = {}) {
  const detail::AttentionDims d = detail::validate_nystrom("reference::nystrom_attention", in, o, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tk, m = options.landmarks, seg = T / m, Dk = d.Dk, Dv = d.Dv;
  const double scale = detail::attention_scale(detail::approx_attention_options(options.scale, false), Dk);
  std::vector<double> Q(static_cast<std::size_t>(T * Dk)), K(static_cast<std::size_t>(T * Dk)),
      V(static_cast<std::size_t>(T * Dv)), Ql(static_cast<std::size_t>(m * Dk)), Kl(static_cast<std::size_t>(m * Dk)), mean;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      const index_t hk = h / d.group();
      for (index_t t = 0; t < T; ++t) {
        for (index_t c = 0; c < Dk; ++c)
          Q[static_cast<std::size_t>(t * Dk + c)] = in.q(b, t, h, c), K[static_cast<std::size_t>(t * Dk + c)] = in.k(b, t, hk, c);
        for (index_t c = 0; c < Dv; ++c) V[static_cast<std::size_t>(t * Dv + c)] = in.v(b, t, hk, c);
      }
      for (index_t r = 0; r < m; ++r) {
        detail::reference_row_mean(in.q, b, h, r * seg, (r + 1) * seg, mean);
        std::copy(mean.begin(), mean.end(), Ql.begin() + r * Dk);
        detail::reference_row_mean(in.k, b, hk, r * seg, (r + 1) * seg, mean);
        std::copy(mean.begin(), mean.end(), Kl.begin() + r * Dk);
      }
      const std::vector<double> F = detail::reference_softmax_kernel(Q, Kl, T, m, Dk, scale);
      const std::vector<double> A = detail::reference_softmax_kernel(Ql, Kl, m, m, Dk, scale);
      const std::vector<double> Bm = detail::reference_softmax_kernel(Ql, K, m, T, Dk, scale);
      const std::vector<double> Z = detail::reference_iterative_pinv(A, m, options.pinv_iterations);
      const std::vector<double> W = detail::reference_matmul(Z, detail::reference_matmul(Bm, V, m, T, Dv), m, m, Dv);
      const std::vector<double> X = detail::reference_matmul(F, W, T, m, Dv);
      const index_t ks = in.conv_kernel.has_value() ? in.conv_kernel.size(1) : 0;
      for (index_t t = 0; t < T; ++t)
        for (index_t c = 0; c < Dv; ++c) {
          double x = X[static_cast<std::size_t>(t * Dv + c)];
          for (index_t u = 0; u < ks; ++u) {
            const index_t j = t + u - (ks - 1) / 2;
            if (j >= 0 && j < T) x += static_cast<double>(in.conv_kernel(h, u)) * V[static_cast<std::size_t>(j * Dv + c)];
          }
          o(b, t, h, c) = static_cast<float>(x);
        }
    }
}

/// combiner's definition: for each query and head one softmax in double over its own block's
/// keys up to itself and the summaries of the earlier blocks (means unless given).
inline void combiner(const CombinerInputs& in, const AttentionOutputs& out, const CombinerOptions& options = {}) {
  detail::AttentionDims d{};
  detail::validate_combiner("reference::combiner", in, out, options, d);
  const index_t bs = options.block_size;
  const double scale = detail::attention_scale(detail::approx_attention_options(options.scale, true), d.Dk);
  const index_t Nb = (d.Tk + bs - 1) / bs;
  std::vector<std::vector<double>> keys, values, summary_k, summary_v;
  std::vector<double> s, acc(static_cast<std::size_t>(d.Dv)), mean;
  for (index_t b = 0; b < d.B; ++b) {
    // The summaries of batch row b, [r * Hkv + hk]: the caller's, or the block means.
    summary_k.clear(), summary_v.clear();
    for (index_t r = 0; r < Nb; ++r)
      for (index_t hk = 0; hk < d.Hkv; ++hk) {
        const index_t j0 = r * bs, j1 = std::min(d.Tk, j0 + bs);
        detail::reference_row_mean(in.k, b, hk, j0, j1, mean);
        if (in.summary_k.has_value())
          for (index_t c = 0; c < d.Dk; ++c) mean[static_cast<std::size_t>(c)] = in.summary_k(b, r, hk, c);
        summary_k.push_back(mean);
        detail::reference_row_mean(in.v, b, hk, j0, j1, mean);
        if (in.summary_v.has_value())
          for (index_t c = 0; c < d.Dv; ++c) mean[static_cast<std::size_t>(c)] = in.summary_v(b, r, hk, c);
        summary_v.push_back(mean);
      }
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t hk = h / d.group(), pos = d.Tk - d.Tq + i, own = pos / bs;
        keys.clear(), values.clear();
        for (index_t r = 0; r < own; ++r) {
          keys.push_back(summary_k[static_cast<std::size_t>(r * d.Hkv + hk)]);
          values.push_back(summary_v[static_cast<std::size_t>(r * d.Hkv + hk)]);
        }
        for (index_t j = own * bs; j <= pos; ++j) {
          detail::reference_row_mean(in.k, b, hk, j, j + 1, mean);
          keys.push_back(mean);
          detail::reference_row_mean(in.v, b, hk, j, j + 1, mean);
          values.push_back(mean);
        }
        s.assign(keys.size(), 0.0);
        double top = -HUGE_VAL;
        for (std::size_t e = 0; e < keys.size(); ++e) {
          double dot = 0.0;
          for (index_t c = 0; c < d.Dk; ++c) dot += static_cast<double>(in.q(b, i, h, c)) * keys[e][static_cast<std::size_t>(c)];
          s[e] = scale * dot;
          top = std::max(top, s[e]);
        }
        const auto value_of = [&](std::size_t e, index_t c) { return values[e][static_cast<std::size_t>(c)]; };
        detail::reference_plain_softmax_row(s, top, value_of, out, b, i, h, acc);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
