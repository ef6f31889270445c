// The fast forms of linformer, nystrom_attention and combiner (definitions in reference.hpp):
// each is a few dense GEMMs plus calls of the library's flash attention (seqmix::attention) on
// small derived key / value sets, so the tiles, GQA handling and threading are the dense ones.
//
//  - linformer: K' = E K and V' = F V per (batch row, KV head) as Eigen GEMMs ([kp x T] x
//    [T x D], strided rows of k / v read in place), then attention(q, K', V'), non-causal.
//  - nystrom_attention: the landmarks (segment means); Bm V = attention(Q~, K, V) (the [m x T]
//    kernel times V is exactly attention of the m landmark queries over all keys); A and its
//    iterative pseudo-inverse Z per (batch row, query head) in double ([m x m], cheap next to the
//    rest, and the iteration amplifies rounding where A is ill-conditioned); W = Z (Bm V); then
//    F W = attention(Q, K~, W) (K~ repeated to the query heads, since W is per query head); the
//    conv skip is added last.
//  - combiner: the own-block part is dense causal attention on the sequence cut into blocks (a
//    strided view [T / bs, bs, H, D] per batch row, plus the ragged tail block; with Tq < T one
//    call per block holding queries), the summary part is causal attention of the queries at
//    positions pos >= bs over the Nb summaries with query positions pos / bs - 1 (so a query sees
//    summaries r < pos / bs), and the two key sets are disjoint, so attention_merge of their
//    (o, lse) is the one softmax of the definition.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "seqmix/attention/approx/reference.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/topk/selectors.hpp"  // block_key_summaries
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"

namespace seqmix {
namespace detail {

// A view of batch row b of x cut into `blocks` rows of `len` tokens from token t0:
// [blocks, len, H, D] with the token stride scaled for the new leading dimension.
template <class T>
TensorView<T, 4> approx_block_view(const TensorView<T, 4>& x, index_t b, index_t t0, index_t blocks, index_t len) {
  return TensorView<T, 4>(x.ptr(b, t0, 0, 0), {blocks, len, x.size(2), x.size(3)},
                          {len * x.stride(1), x.stride(1), x.stride(2), x.stride(3)});
}

template <class T>
TensorView<T, 3> approx_block_view(const TensorView<T, 3>& x, index_t b, index_t t0, index_t blocks, index_t len) {
  return TensorView<T, 3>(x.ptr(b, t0, 0), {blocks, len, x.size(2)}, {len * x.stride(1), x.stride(1), x.stride(2)});
}

}  // namespace detail

/// Same arguments and results as reference::linformer. Allocates K' and V'
/// ([B,kp,Hkv,Dk] and [B,kp,Hkv,Dv] floats).
inline void linformer(const LinformerInputs& in, const AttentionOutputs& out, const LinformerOptions& options = {},
                      const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_linformer("linformer", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t kp = in.e.size(0);
  Tensor<float, 4> kproj({d.B, kp, d.Hkv, d.Dk}), vproj({d.B, kp, d.Hkv, d.Dv});
  const auto E = as_matrix(in.e), F = as_matrix(in.f);
  parallel_for(executor, d.B * d.Hkv, 1, [&](index_t first, index_t last) {
    for (index_t r = first; r < last; ++r) {
      const index_t b = r / d.Hkv, hk = r % d.Hkv;
      as_matrix(kproj.view().select(0, b).select(1, hk)).noalias() = E * as_matrix(in.k.select(0, b).select(1, hk));
      as_matrix(vproj.view().select(0, b).select(1, hk)).noalias() = F * as_matrix(in.v.select(0, b).select(1, hk));
    }
  });
  attention(approx_dense_inputs(in.q, kproj.cview(), vproj.cview()), out, approx_attention_options(options.scale, false),
            executor);
}

/// Same arguments and results as reference::nystrom_attention. Allocates the landmarks, Bm V
/// and W ([B,m,Hq,D] each) and one [m x m] set of doubles per task.
inline void nystrom_attention(const NystromInputs& in, const TensorView<float, 4>& o, const NystromOptions& options = {},
                              const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_nystrom("nystrom_attention", in, o, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tk, m = options.landmarks, seg = T / m, G = d.group();
  const AttentionOptions open = approx_attention_options(options.scale, false);
  const double scale = attention_scale(open, d.Dk);
  // Landmarks: Q~ per query head, K~ repeated to the query heads (the second product needs
  // keys per query head, its values W being per query head).
  Tensor<float, 4> ql({d.B, m, d.Hq, d.Dk}), kl({d.B, m, d.Hq, d.Dk});
  parallel_for(executor, d.B * m, 1, [&](index_t first, index_t last) {
    for (index_t r = first; r < last; ++r) {
      const index_t b = r / m, n = r % m;
      for (index_t h = 0; h < d.Hq; ++h)
        for (index_t c = 0; c < d.Dk; ++c) {
          float sq = 0.f, sk = 0.f;
          for (index_t t = n * seg; t < (n + 1) * seg; ++t) sq += in.q(b, t, h, c), sk += in.k(b, t, h / G, c);
          ql(b, n, h, c) = sq / static_cast<float>(seg), kl(b, n, h, c) = sk / static_cast<float>(seg);
        }
    }
  });
  // Bm V: the landmark queries over every key.
  Tensor<float, 4> bv({d.B, m, d.Hq, d.Dv});
  attention(approx_dense_inputs(ql.cview(), in.k, in.v), AttentionOutputs{bv.view(), {}}, open, executor);
  // W = pinv(A) (Bm V) per (batch row, query head), in double.
  Tensor<float, 4> w({d.B, m, d.Hq, d.Dv});
  parallel_for(executor, d.B * d.Hq, 1, [&](index_t first, index_t last) {
    using Mat = Eigen::MatrixXd;
    for (index_t r = first; r < last; ++r) {
      const index_t b = r / d.Hq, h = r % d.Hq;
      const Mat Ql = as_matrix(ql.cview().select(0, b).select(1, h)).cast<double>();
      const Mat Kl = as_matrix(kl.cview().select(0, b).select(1, h)).cast<double>();
      Mat A = scale * (Ql * Kl.transpose());
      for (index_t i = 0; i < m; ++i) {
        const double top = A.row(i).maxCoeff();
        softmax_numerators_in_place(A.row(i), top);
        A.row(i) /= A.row(i).sum();
      }
      const double norms = A.cwiseAbs().colwise().sum().maxCoeff() * A.cwiseAbs().rowwise().sum().maxCoeff();
      Mat Z = A.transpose() / norms;
      const Mat I = Mat::Identity(m, m);
      for (index_t it = 0; it < options.pinv_iterations; ++it) {
        const Mat AZ = A * Z;
        const Mat t1 = AZ * (7.0 * I - AZ);
        const Mat t2 = AZ * (15.0 * I - t1);
        Z = 0.25 * (Z * (13.0 * I - t2));
      }
      as_matrix(w.view().select(0, b).select(1, h)) =
          (Z * as_matrix(bv.cview().select(0, b).select(1, h)).cast<double>()).cast<float>();
    }
  });
  // F W: every query over the landmark keys, with W as values.
  attention(approx_dense_inputs(in.q, kl.cview(), w.cview()), AttentionOutputs{o, {}}, open, executor);
  if (!in.conv_kernel.has_value()) return;
  const index_t ks = in.conv_kernel.size(1), half = (ks - 1) / 2;
  parallel_for(executor, d.B * T, 16, [&](index_t first, index_t last) {
    for (index_t r = first; r < last; ++r) {
      const index_t b = r / T, t = r % T;
      for (index_t h = 0; h < d.Hq; ++h)
        for (index_t u = 0; u < ks; ++u) {
          const index_t j = t + u - half;
          if (j < 0 || j >= T) continue;
          const float wgt = in.conv_kernel(h, u);
          for (index_t c = 0; c < d.Dv; ++c) o(b, t, h, c) += wgt * in.v(b, j, h / G, c);
        }
    }
  });
}

/// Same arguments and results as reference::combiner (prefill with Tq = T, decode with Tq = 1,
/// chunks between). Allocates the block means (unless both summaries are given), an lse per
/// query and head, and the summary part's (o, lse) for the queries after the first block. A
/// decode step with kept summaries reads the own block's keys and the Nb summaries only.
inline void combiner(const CombinerInputs& in, const AttentionOutputs& out, const CombinerOptions& options = {},
                     const Executor& executor = serial_executor()) {
  using namespace detail;
  AttentionDims d{};
  const index_t Nb = validate_combiner("combiner", in, out, options, d);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tk, Tq = d.Tq, first = T - Tq, bs = options.block_size;
  const AttentionOptions causal = approx_attention_options(options.scale, true);
  Tensor<float, 3> lse({d.B, Tq, d.Hq});
  if (Tq == T) {
    // Own blocks: causal attention within each block (whole blocks as a batch, then the tail).
    const index_t whole = T / bs, tail = T - whole * bs;
    for (index_t b = 0; b < d.B; ++b) {
      if (whole > 0)
        attention(approx_dense_inputs(approx_block_view(in.q, b, 0, whole, bs), approx_block_view(in.k, b, 0, whole, bs),
                                      approx_block_view(in.v, b, 0, whole, bs)),
                  AttentionOutputs{approx_block_view(out.o, b, 0, whole, bs), approx_block_view(lse.view(), b, 0, whole, bs)},
                  causal, executor);
      if (tail > 0)
        attention(approx_dense_inputs(approx_block_view(in.q, b, whole * bs, 1, tail),
                                      approx_block_view(in.k, b, whole * bs, 1, tail),
                                      approx_block_view(in.v, b, whole * bs, 1, tail)),
                  AttentionOutputs{approx_block_view(out.o, b, whole * bs, 1, tail),
                                   approx_block_view(lse.view(), b, whole * bs, 1, tail)},
                  causal, executor);
    }
  } else {
    // Fewer queries than keys (decode, or a chunk after a prefix): per batch row and block that
    // holds queries, its queries at positions [p0, p1] over keys [n * bs, p1], causal
    // bottom-right, which puts each query at its own position relative to the block start.
    for (index_t b = 0; b < d.B; ++b)
      for (index_t p0 = first; p0 < T;) {
        const index_t n = p0 / bs, p1 = std::min((n + 1) * bs, T) - 1;
        attention(approx_dense_inputs(approx_block_view(in.q, b, p0 - first, 1, p1 - p0 + 1),
                                      approx_block_view(in.k, b, n * bs, 1, p1 + 1 - n * bs),
                                      approx_block_view(in.v, b, n * bs, 1, p1 + 1 - n * bs)),
                  AttentionOutputs{approx_block_view(out.o, b, p0 - first, 1, p1 - p0 + 1),
                                   approx_block_view(lse.view(), b, p0 - first, 1, p1 - p0 + 1)},
                  causal, executor);
        p0 = p1 + 1;
      }
  }
  // Queries i0.. are past the first block (position >= bs): they also see summaries.
  const index_t i0 = std::max<index_t>(0, bs - first);
  if (i0 < Tq) {
    // Summaries: the caller's, or the block means.
    Tensor<float, 4> mean_k, mean_v;
    ConstView<float, 4> sk = in.summary_k, sv = in.summary_v;
    if (!sk.has_value()) {
      mean_k = Tensor<float, 4>({d.B, Nb, d.Hkv, d.Dk});
      block_key_summaries(in.k, bs, mean_k.view(), {}, {}, executor);
      sk = mean_k.cview();
    }
    if (!sv.has_value()) {
      mean_v = Tensor<float, 4>({d.B, Nb, d.Hkv, d.Dv});
      block_key_summaries(in.v, bs, mean_v.view(), {}, {}, executor);
      sv = mean_v.cview();
    }
    // Query i over the summaries r < pos / bs: causal with query position pos / bs - 1.
    const index_t rest = Tq - i0;
    Tensor<std::int32_t, 2> positions({d.B, rest});
    for (index_t b = 0; b < d.B; ++b)
      for (index_t t = 0; t < rest; ++t) positions(b, t) = static_cast<std::int32_t>((first + i0 + t) / bs - 1);
    Tensor<float, 4> o2({d.B, rest, d.Hq, d.Dv});
    Tensor<float, 3> lse2({d.B, rest, d.Hq});
    AttentionInputs<float> summary = approx_dense_inputs(in.q.slice(1, i0, rest), sk, sv);
    summary.positions = positions.cview();
    attention(summary, AttentionOutputs{o2.view(), lse2.view()}, causal, executor);
    const TensorView<float, 4> o1 = out.o.slice(1, i0, rest);
    const TensorView<float, 3> l1 = lse.view().slice(1, i0, rest);
    attention_merge(o1, l1, o2.cview(), lse2.cview(), o1, l1, executor);
  }
  if (out.lse.has_value())
    for (index_t b = 0; b < d.B; ++b)
      for (index_t i = 0; i < Tq; ++i)
        for (index_t h = 0; h < d.Hq; ++h) out.lse(b, i, h) = lse(b, i, h);
}

}  // namespace seqmix
