// mla: the fast forms. Definition and arguments in reference.hpp.
//
// mla_prefill (expanded): k_nope = c W_uk[h]^T and v = c W_uv[h]^T are built per head with
// GEMMs into scratch [B, Tk, H, d_nope + d_r] / [B, Tk, H, d_v] (the shared rotary key copied
// beside every head's k_nope), q = [q_nope ; q_rope], and the tiled flash attention runs on them.
// Prefill is compute-bound, so expanding costs Tk * H * (d_nope + d_v) * d_c multiply-adds once
// and saves the attention loop from working on d_c-long latents.
//
// mla_decode (absorbed): per sequence, q_lat[h] = scale * W_uk[h]^T q_nope[h] (d_c) and
// q_r[h] = scale * q_rope[h]. The cache is split over the executor in spans of whole blocks;
// each task streams its span once, in blocks of kMlaBlock tokens converted to fp32 (f16/bf16
// latents read in place), and for all H heads at once:
//   S [H, n]   = Q_lat [H, d_c] C_blk^T + Q_r [H, d_r] R_blk^T
//   online softmax per head (running max m, sum l), then  O_lat [H, d_c] += P [H, n] C_blk
// so every latent byte is read once per call whatever H is. The spans merge by their (m, l)
// (attention_merge's rule) and o[h] = W_uv[h] O_lat[h] / l at the end. Work per token is
// H * (2 d_c + d_r) multiply-adds over (d_c + d_r) * sizeof(C) bytes: with 128 heads that is
// ~242 FLOP per byte of fp16 cache, so decode at DeepSeek's head count is bound by the FMAs, not
// by the cache's bandwidth (docs/operators.md section 10).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/mla/reference.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

namespace detail {

// 64 tokens: one block of d_c = 512 fp32 latents is 128 KiB, which stays in L2 between the
// score GEMM and the P.C GEMM that reads it again.
constexpr index_t kMlaBlock = 64;

template <class C>
inline void latent_rows_to_float(const ConstView<C, 3>& x, index_t b, index_t j0, index_t n, float* dst) {
  const index_t width = x.size(2);
  for (index_t r = 0; r < n; ++r) kv_row_to_float(x.ptr(b, j0 + r), x.stride(2), width, dst + r * width);
}

}  // namespace detail

/// The expanded prefill. Same arguments and results as reference::mla.
template <class C>
void mla_prefill(const MlaPrefillInputs<C>& in, const MlaPrefillOutputs& out, const MlaOptions& options = {},
                 const Executor& executor = serial_executor()) {
  const detail::MlaDims d = detail::validate_mla_prefill(ArgCheck("mla_prefill"), in, out, options);
  const index_t dk = d.dn + d.dr;
  Tensor<float, 4> q({d.B, d.Tq, d.H, dk}), k({d.B, d.Tk, d.H, dk}), v({d.B, d.Tk, d.H, d.dv});
  std::vector<float> latents(static_cast<std::size_t>(d.Tk * d.dc)), rope(static_cast<std::size_t>(d.Tk * d.dr));
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  using Map = Eigen::Map<Matrix, Eigen::Unaligned, Stride>;
  for (index_t b = 0; b < d.B; ++b) {
    detail::latent_rows_to_float(in.c_kv, b, 0, d.Tk, latents.data());
    detail::latent_rows_to_float(in.k_rope, b, 0, d.Tk, rope.data());
    const Eigen::Map<const Matrix> Cb(latents.data(), d.Tk, d.dc);
    parallel_for(executor, d.H, 1, [&](index_t h0, index_t h1) {
      for (index_t h = h0; h < h1; ++h) {
        // k[b, :, h, :d_nope] = C W_uk[h]^T ; v[b, :, h, :] = C W_uv[h]^T (strided destinations)
        Map(k.view().ptr(b, 0, h), d.Tk, d.dn, Stride(d.H * dk, 1)).noalias() =
            Cb * as_matrix(in.weights.w_uk[h]).transpose();
        Map(v.view().ptr(b, 0, h), d.Tk, d.dv, Stride(d.H * d.dv, 1)).noalias() =
            Cb * as_matrix(in.weights.w_uv[h]).transpose();
        for (index_t j = 0; j < d.Tk; ++j)
          std::copy(rope.data() + j * d.dr, rope.data() + (j + 1) * d.dr, k.view().ptr(b, j, h) + d.dn);
        for (index_t i = 0; i < d.Tq; ++i) {
          float* row = q.view().ptr(b, i, h);
          for (index_t e = 0; e < d.dn; ++e) row[e] = in.q_nope(b, i, h, e);
          for (index_t e = 0; e < d.dr; ++e) row[d.dn + e] = in.q_rope(b, i, h, e);
        }
      }
    });
  }
  AttentionInputs<float> ain;
  ain.q = q.view(), ain.k = k.view(), ain.v = v.view();
  AttentionOptions aopt;
  aopt.scale = d.scale;
  aopt.causal = options.causal;
  attention(ain, AttentionOutputs{out.o, out.lse}, aopt, executor);
}

namespace detail {

// The decode's per-call buffers, kept by the calling thread so that a call of a shape seen
// before allocates nothing (the per-task block buffers are thread_local in the tasks).
struct MlaDecodeWorkspace {
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<float, Eigen::Dynamic, 1>;
  std::vector<Matrix> q_lat, q_r, o_lat;
  std::vector<Vector> m, l;
  std::vector<char> nan_row, q_bad;
  static MlaDecodeWorkspace& local() {
    thread_local MlaDecodeWorkspace workspace;
    return workspace;
  }
};

// The absorbed decode over any latent store. `rows(b, j0, n, c, r)` writes the fp32 latents
// [n, d_c] and rotary keys [n, d_r] of tokens [j0, j0 + n) of sequence b into c and r (a dense
// cache, pages through a block table, quantized rows decoded; never more than one block);
// `length(b)` is the sequence's cached token count. The arguments were validated by the caller.
template <class Rows, class Length>
void mla_decode_run(const MlaDims& d, const ConstView<float, 3>& q_nope, const ConstView<float, 3>& q_rope,
                    const MlaWeights& weights, const Length& length, const Rows& rows, const MlaDecodeOutputs& out,
                    const Executor& executor) {
  using Matrix = MlaDecodeWorkspace::Matrix;
  using Vector = MlaDecodeWorkspace::Vector;
  const index_t B = d.B, H = d.H, dc = d.dc, dr = d.dr;
  const index_t blocks_max = (d.Tk + kMlaBlock - 1) / kMlaBlock;
  // Spans per sequence: enough tasks for every thread twice over, never less than a block each.
  const index_t spans = std::clamp<index_t>((2 * static_cast<index_t>(executor.concurrency()) + B - 1) / B, 1,
                                            std::max<index_t>(1, blocks_max));
  // Per sequence: q_lat [H, d_c], q_r [H, d_r]; per (sequence, span): O_lat [H, d_c], m [H], l [H].
  MlaDecodeWorkspace& ws = MlaDecodeWorkspace::local();
  const auto grow = [](auto& v, index_t n) {
    if (static_cast<index_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
  };
  grow(ws.q_lat, B), grow(ws.q_r, B), grow(ws.o_lat, B * spans), grow(ws.m, B * spans), grow(ws.l, B * spans);
  // Per (sequence, span, head): a NaN or +inf logit was seen (the row is NaN, attention's rule).
  grow(ws.nan_row, B * spans * H);
  std::fill(ws.nan_row.begin(), ws.nan_row.begin() + B * spans * H, char{0});
  // Per (sequence, head): q_nope holds inf / NaN, so its logits are formed in the expanded form.
  grow(ws.q_bad, B * H);
  std::vector<Matrix>& q_lat = ws.q_lat;
  std::vector<Matrix>& q_r = ws.q_r;
  std::vector<Matrix>& o_lat = ws.o_lat;
  std::vector<Vector>& m = ws.m;
  std::vector<Vector>& l = ws.l;
  char* nan_row = ws.nan_row.data();
  char* q_bad = ws.q_bad.data();
  for (index_t b = 0; b < B; ++b) {
    q_lat[static_cast<std::size_t>(b)].resize(H, dc);
    q_r[static_cast<std::size_t>(b)].resize(H, dr);
  }
  parallel_for(executor, B * H, 4, [&](index_t begin, index_t end) {
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      Eigen::Map<Vector> qn_dst(q_lat[static_cast<std::size_t>(b)].row(h).data(), dc);
      const auto qn = as_matrix(q_nope[b]).row(h).transpose();
      qn_dst.noalias() = d.scale * (as_matrix(weights.w_uk[h]).transpose() * qn);
      q_bad[bh] = !qn.allFinite();
      for (index_t e = 0; e < dr; ++e) q_r[static_cast<std::size_t>(b)](h, e) = d.scale * q_rope(b, h, e);
    }
  });
  executor.run(B * spans, [&](index_t task) {
    const index_t b = task / spans, span = task % spans;
    const index_t L = length(b), blocks = (L + kMlaBlock - 1) / kMlaBlock;
    const index_t first = blocks * span / spans, last = blocks * (span + 1) / spans;
    Matrix& O = o_lat[static_cast<std::size_t>(task)];
    Vector& mt = m[static_cast<std::size_t>(task)];
    Vector& lt = l[static_cast<std::size_t>(task)];
    O.resize(H, dc);
    O.setZero();
    mt.resize(H);
    mt.setConstant(-std::numeric_limits<float>::infinity());
    lt.resize(H);
    lt.setZero();
    thread_local Matrix cblk, rblk, S;
    thread_local Vector k_nope;
    cblk.resize(kMlaBlock, dc);
    rblk.resize(kMlaBlock, dr);
    S.resize(H, kMlaBlock);
    const Matrix& Ql = q_lat[static_cast<std::size_t>(b)];
    const Matrix& Qr = q_r[static_cast<std::size_t>(b)];
    for (index_t blk = first; blk < last; ++blk) {
      const index_t j0 = blk * kMlaBlock, n = std::min(kMlaBlock, L - j0);
      rows(b, j0, n, cblk.data(), rblk.data());
      const auto Cn = cblk.topRows(n);
      auto Sn = S.leftCols(n);
      Sn.noalias() = Ql * Cn.transpose();
      Sn.noalias() += Qr * rblk.topRows(n).transpose();
      // Non-finite values (docs/reliability.md): the absorbed logit (W_uk^T q) . c of a latent
      // row holding inf is a single +-inf term where the definition's q . (W_uk c) sums terms of
      // both signs (NaN), and an inf in q_nope likewise turns the other way; such logits are
      // formed in the expanded form. Values are added only with non-zero weights below (0 * inf
      // would be NaN for a hidden key).
      // Vectorized: Eigen's allFinite is a scalar compare per value (n x dc of them a block).
      const bool finite_block = simd::rows_finite(cblk.data(), n, dc, cblk.cols());
      for (index_t h = 0; h < H; ++h) {
        const bool all_rows = q_bad[b * H + h] != 0;
        if (finite_block && !all_rows) continue;
        const auto qn = as_matrix(q_nope[b]).row(h);
        for (index_t r = 0; r < n; ++r) {
          if (!all_rows && Cn.row(r).allFinite()) continue;
          k_nope.noalias() = as_matrix(weights.w_uk[h]) * Cn.row(r).transpose();
          float acc = 0.f;
          for (index_t e = 0; e < d.dn; ++e) acc += qn(e) * k_nope(e);
          Sn(h, r) = d.scale * acc + Qr.row(h).dot(rblk.row(r));
        }
      }
      for (index_t h = 0; h < H; ++h) {
        for (index_t r = 0; r < n; ++r)
          if (std::isnan(Sn(h, r)) || Sn(h, r) == std::numeric_limits<float>::infinity()) nan_row[task * H + h] = 1;
        if (nan_row[task * H + h]) {
          Sn.row(h).setZero();
          continue;
        }
        const float block_max = Sn.row(h).maxCoeff();
        const float m_new = std::max(mt(h), block_max);
        if (m_new == -std::numeric_limits<float>::infinity()) {  // every logit so far -inf: no key yet
          Sn.row(h).setZero();
          continue;
        }
        const float correction = std::exp(mt(h) - m_new);  // 0 on the first block (m = -inf)
        softmax_numerators_in_place(Sn.row(h), m_new);
        lt(h) = lt(h) * correction + Sn.row(h).sum();
        if (correction != 1.f) O.row(h) *= correction;
        mt(h) = m_new;
      }
      if (finite_block) {
        O.noalias() += Sn * Cn;
      } else {
        for (index_t h = 0; h < H; ++h)
          for (index_t r = 0; r < n; ++r)
            if (Sn(h, r) != 0.f) O.row(h) += Sn(h, r) * Cn.row(r);
      }
    }
  });
  // Merge the spans and project: o[h] = W_uv[h] (sum_s e^(m_s - M) O_s[h]) / (sum_s e^(m_s - M) l_s).
  parallel_for(executor, B * H, 4, [&](index_t begin, index_t end) {
    thread_local Vector merged, projected;
    merged.resize(dc);
    projected.resize(d.dv);
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      float M = -std::numeric_limits<float>::infinity();
      for (index_t s = 0; s < spans; ++s) M = std::max(M, m[static_cast<std::size_t>(b * spans + s)](h));
      float total = 0.f;
      merged.setZero();
      if (M != -std::numeric_limits<float>::infinity()) {
        for (index_t s = 0; s < spans; ++s) {
          const index_t t = b * spans + s;
          const float w = std::exp(m[static_cast<std::size_t>(t)](h) - M);
          if (w == 0.f) continue;
          total += w * l[static_cast<std::size_t>(t)](h);
          merged += w * o_lat[static_cast<std::size_t>(t)].row(h).transpose();
        }
      }
      auto o_row = out.o[b];
      bool nan = false;
      for (index_t s = 0; s < spans; ++s) nan = nan || nan_row[(b * spans + s) * H + h];
      if (nan) {
        for (index_t e = 0; e < d.dv; ++e) o_row(h, e) = std::numeric_limits<float>::quiet_NaN();
        if (out.lse.has_value()) out.lse(b, h) = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      if (total > 0.f) {
        projected.noalias() = as_matrix(weights.w_uv[h]) * merged;
        for (index_t e = 0; e < d.dv; ++e) o_row(h, e) = projected(e) / total;
      } else {
        for (index_t e = 0; e < d.dv; ++e) o_row(h, e) = 0.f;
      }
      if (out.lse.has_value())
        out.lse(b, h) = total > 0.f ? M + std::log(total) : -std::numeric_limits<float>::infinity();
    }
  });
}

}  // namespace detail

/// The absorbed decode over the latent cache. Same results as reference::mla with one query at
/// the end of each sequence's cache. Nothing is allocated after a first call of the same shape.
template <class C>
void mla_decode(const MlaDecodeInputs<C>& in, const MlaDecodeOutputs& out, const MlaOptions& options = {},
                const Executor& executor = serial_executor()) {
  const detail::MlaDims d = detail::validate_mla_decode(ArgCheck("mla_decode"), in, out, options);
  const auto length = [&](index_t b) { return in.cache_seqlens.has_value() ? in.cache_seqlens[b] : d.Tk; };
  const auto rows = [&](index_t b, index_t j0, index_t n, float* c, float* r) {
    detail::latent_rows_to_float(in.c_kv, b, j0, n, c);
    detail::latent_rows_to_float(in.k_rope, b, j0, n, r);
  };
  detail::mla_decode_run(d, in.q_nope, in.q_rope, in.weights, length, rows, out, executor);
}

}  // namespace seqmix
