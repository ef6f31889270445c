// The chunkwise WY / UT-transform form of the (gated) delta rule, one head at a time. Internal.
// README.md derives it; in short, for a chunk of L tokens entering with state S,
// gamma_i = sum_{s<=i} g_s (cumulative log-gate from the chunk start, per channel for KDA):
//   A   = strict_tril(diag(beta) [k_i . (k_j * exp(gamma_i - gamma_j))])          [L,L]
//   M   = tril([q_i . (k_j * exp(gamma_i - gamma_j))])                            [L,L]
//   (I + A) U = diag(beta) (V - (K * exp(gamma)) S)     blocked forward substitution
//   O   = (Q * exp(gamma)) S + M U
//   S   = diag(exp(gamma_L)) S + (K * exp(gamma_L - gamma))^T U
// U is the WY form's U - W S with W = T diag(beta) (K * exp(gamma)), U = T diag(beta) V,
// T = (I + A)^-1: on a CPU the chunks of one head run in order, so T is applied once, to the
// combined right-hand side, instead of forming W and U separately (that would cost one more
// [L,L]x[L,K] GEMM per chunk for the same result).
//
// Every exponent is <= 0 (the factor exp(gamma_i - gamma_j) is only needed for j <= i) except
// in the per-channel scores, which are computed safely:
//  - decay over the chunk at most kAnchorRange: one GEMM of (X * exp(gamma - m)) and
//    (K * exp(m - gamma)) with the anchor m half way, every factor within exp(+-30);
//  - stronger decay: each pair (i, j <= i) summed directly with exp of the non-positive
//    difference, vectorized over K.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <Eigen/Core>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/register_transpose.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/recurrent.hpp"
#include "seqmix/linear_attention/delta_update/small_gemm.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunk_ops.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunked.hpp"

namespace seqmix::delta_update {

using detail::la::RowMatrix;
using detail::la::kGateFloor;

/// 60: with the anchor half way, factors stay within exp(+-30) ~ 1e13, far from fp32 overflow
/// even for the masked-out (j > i) products, and kept ones far from underflow.
constexpr float kAnchorRange = 60.f;

/// Per-thread scratch of the chunked form for chunk size C, allocated once per parallel block
/// and reused for every chunk and head (never allocated per chunk).
struct WyWorkspace {
  WyWorkspace(index_t C, index_t K, index_t V)
      : KQ(2 * C, K), KQg(2 * C, K), Kn(C, K), KQa(2 * C, K), Ka(C, K), gamma(C, K), G(2 * C, C), A(C, C), M(C, C),
        P(2 * C, V), Vc(C, V), U(C, V), KT(RowMatrix::Zero(K, C)), beta(C), anchor(K), anchor_exp(K), row_decay(K),
        gsum(C), factor(C) {}
  RowMatrix KQ;     ///< [2C,K] rows [0,L): k (normalized), rows [L,2L): q (normalized, * scale)
  RowMatrix KQg;    ///< [2C,K] the same rows * exp(gamma) (the read of the carried state)
  RowMatrix Kn;     ///< [C,K]  k * exp(gamma_L - gamma) (the keys of the state update)
  /// Per-channel gate, anchored scores (channel_operands): [2C,K] (K;Q) * exp(gamma - m) and
  /// [C,K] K * exp(m - gamma), the two factors of the scores.
  RowMatrix KQa, Ka;
  RowMatrix gamma;  ///< [C,K]  cumulative log-gates (column 0 only for a scalar gate)
  RowMatrix G;      ///< [2C,C] raw scores: rows [0,L) against k, rows [L,2L) q against k
  RowMatrix A, M;   ///< [C,C]  strictly lower beta-scaled k scores; lower q scores
  RowMatrix P;      ///< [2C,V] (K;Q) * exp(gamma) times S
  RowMatrix Vc, U;  ///< [C,V]  values; right-hand side, then the solution U
  RowMatrix KT;     ///< [K,C]  k transposed, the right operand of the scores (scores_lower)
  Eigen::Matrix<float, 1, Eigen::Dynamic> beta, anchor;
  /// [K] per-channel gate: exp(m) of the anchor m = gamma_L / 2; exp(gamma_L), the state rows'
  /// decay over the chunk (both set by chunk_scores).
  Eigen::Matrix<float, 1, Eigen::Dynamic> anchor_exp, row_decay;
  /// [C] scalar gate: gamma's column 0 contiguous (the mask's vector loads); per-row factors
  /// exp(...) of the rows being scaled, computed once per row (not once per element).
  Eigen::Matrix<float, 1, Eigen::Dynamic> gsum, factor;
  chunkwise::ProductScratch finite_u;  // add_lower_product's scratch (non-finite U only)
  bool bf16_dot = false;  ///< the current chunk's GEMMs on bf16 dot products (set by wy_load_chunk)
  /// bf16 dot products: the rows of (K;Q) packed by the scores in the scratch's `a`, unscaled, for
  /// the state read (wy_read_state), which then leaves P's rows without their decays.
  bool kq_words = false;
  /// P's row i and L + i still lack the factor[i] = exp(gamma_i) of the scalar gate (applied by
  /// wy_intra: to the right-hand side's P and as the row scale of O += M U).
  bool p_unscaled = false;
  /// O lives in the caller's output rows (o_rows, o_ld floats apart; bind_output_rows) instead of
  /// P's rows [L, 2L): the state read writes it there and O += M U adds to it in place, so
  /// wy_store_outputs has nothing left to copy. Null: O is in P (outputs with a column stride).
  float* o_rows = nullptr;
  index_t o_ld = 0;
  /// The chunk's values read in place from the caller's fp32 rows (v_ld floats apart) by wy_intra's
  /// right-hand side instead of from a copy in Vc (load_chunk only asks for their lines). Null:
  /// the values are in Vc.
  const float* v_rows = nullptr;
  index_t v_ld = 0;
  /// The chunk's keys read in place from the caller's fp32 rows (k_ld floats apart) by the scores
  /// and the decayed copies (KQg's top rows, Kn), or packed from there into pair words, KQ's rows
  /// [0, L) left unfilled (in_place_keys). Null: the keys are in KQ.
  const float* k_rows = nullptr;
  index_t k_ld = 0;
  /// The same for the queries (q_rows, q_ld): then unscaled, and q_scale, the call's scale, goes on
  /// M's rows (mask_scores) and on the decays of KQg's bottom rows (decay_rows) in fp32, on the
  /// queries as they are packed with bf16 dot products. 1 otherwise.
  const float* q_rows = nullptr;
  index_t q_ld = 0;
  float q_scale = 1.f;
  bool u_words = false;   ///< bf16 U finite, its pair words packed by wy_intra for the state update
  /// bf16 dot products, anchored per-channel gate: the chunk's decayed operands exist only as the
  /// pair words below (channel_words), KQa, Ka, KQg and Kn are not filled.
  bool channel_words = false;
  /// channel_words: (K;Q) * exp(gamma) as A operands [2L, words(K)] (the state read), and
  /// K * exp(gamma_L - gamma) as row-pair words [words(L), pad16(K)] (the state update's keys).
  AlignedVector<std::uint32_t> kqg_words, kn_pairs;
};

/// The values of chunk [t0, t0 + L) into Vc: copied, or widened from 16-bit storage.
inline void load_chunk_values(const DeltaHead& p, index_t t0, index_t L, WyWorkspace& ws) {
  for (index_t i = 0; i < L; ++i) p.v.load(t0 + i, ws.Vc.row(i).data());
}

/// Whether wy_intra reads the values from the caller's rows in place (ws.v_rows): fp32 rows with
/// a unit column stride. Copying them into Vc in load_chunk's pass, whose time is the rows'
/// misses, put 8 more stores a token behind those misses (README.md, 2026-12-07 evening).
inline bool in_place_values(const DeltaHead& p) {
  return p.v.is_float() && p.v.floats().stride(1) == 1;
}

/// Whether a chunk's keys are read in place (ws.k_rows) on the fp32 path of a gate: fp32 rows
/// with a unit column stride that need no normalization. There the keys are only read by the
/// scores and the row-scale passes (decay_rows, decayed_keys; a channel gate's operands), which
/// take a row stride. The queries too under a scalar gate (their scale then goes on M and KQg).
inline bool in_place_keys(const DeltaHead& p) {
  return p.gated() && p.norm == QkNorm::none && p.k.is_float() && p.k.floats().stride(1) == 1;
}

/// Row i of the chunk's keys: in place (ws.k_rows) or in KQ.
inline const float* key_row(const WyWorkspace& ws, index_t i) {
  return ws.k_rows ? ws.k_rows + i * ws.k_ld : ws.KQ.row(i).data();
}

/// Row i of the L queries: in place (ws.q_rows, without the scale ws.q_scale) or in KQ (scaled).
inline const float* query_row(const WyWorkspace& ws, index_t L, index_t i) {
  return ws.q_rows ? ws.q_rows + i * ws.q_ld : ws.KQ.row(L + i).data();
}

/// A per-channel gate whose queries were left in place (bf16 dot products) but whose decay is
/// too strong for the packed operands: the fp32 operands read them from KQ, scaled there as
/// load_chunk would have (the same products).
inline void copy_queries(index_t L, index_t K, WyWorkspace& ws) {
  if (!ws.q_rows) return;
  for (index_t i = 0; i < L; ++i)
    load_row(ConstView<float, 1>(query_row(ws, L, i), {K}), ws.q_scale, QkNorm::none, ws.KQ.row(L + i).data());
  ws.q_rows = nullptr;
  ws.q_scale = 1.f;
}

/// Whether a chunk's queries are read in place (ws.q_rows) where its keys are (in_place_keys):
/// fp32 rows with a unit column stride, under a scalar gate (the fp32 scores take them raw) or
/// on bf16 dot products under either gate (the queries are only packed there, times the scale;
/// a per-channel gate's strong decays copy them after all, chunk_scores).
inline bool in_place_queries(const DeltaHead& p, bool bf16_dot) {
  return in_place_keys(p) && (p.scalar_gate || bf16_dot) && p.q.is_float() && p.q.floats().stride(1) == 1;
}

/// Loads chunk [t0, t0 + L) of a head: normalized k and scaled q, beta, cumulative gates, and
/// the values unless `values` is false (the shared chunk factors, below, need none). One pass
/// over the token rows, each token's k, q and v together. fp32 values with a unit column stride
/// are only asked for (ws.v_rows); without `copy_keys` (in_place_keys) the keys, and without
/// `copy_queries` (in_place_queries) the queries, are left in the caller's rows too (ws.k_rows,
/// ws.q_rows).
inline void load_chunk(const DeltaHead& p, index_t t0, index_t L, WyWorkspace& ws, bool values = true,
                       bool copy_keys = true, bool copy_queries = true) {
  ws.k_rows = ws.q_rows = nullptr;
  ws.q_scale = 1.f;
  if (!copy_keys) ws.k_rows = p.k.floats()[t0].data(), ws.k_ld = p.k.floats().stride(0);
  if (!copy_queries) ws.q_rows = p.q.floats()[t0].data(), ws.q_ld = p.q.floats().stride(0), ws.q_scale = p.scale;
  ws.v_rows = nullptr;
  if (values && in_place_values(p)) ws.v_rows = p.v.floats()[t0].data(), ws.v_ld = p.v.floats().stride(0);
  for (index_t i = 0; i < L; ++i) {
    if (copy_keys) load_row(p.k, t0 + i, 1.f, p.norm, ws.KQ.row(i).data());
    if (!ws.q_rows) load_row(p.q, t0 + i, p.scale, p.norm, ws.KQ.row(L + i).data());
    if (ws.v_rows)
      detail::prefetch_row<false, 2>(ws.v_rows + i * ws.v_ld, p.V());
    else if (values)
      p.v.load(t0 + i, ws.Vc.row(i).data());
    ws.beta(i) = p.beta(t0 + i);
  }
  if (!p.gated()) return;
  const index_t n = p.scalar_gate ? 1 : p.K();
  for (index_t i = 0; i < L; ++i) {
    float* cur = ws.gamma.row(i).data();
    const float* prev = i > 0 ? ws.gamma.row(i - 1).data() : nullptr;
    // The floor keeps a hard reset (g = -inf) from making -inf - -inf = NaN below.
    for (index_t c = 0; c < n; ++c) cur[c] = (prev ? prev[c] : 0.f) + std::max(p.g(t0 + i, c), kGateFloor);
  }
  if (p.scalar_gate)
    for (index_t i = 0; i < L; ++i) ws.gsum(i) = ws.gamma(i, 0);
}

/// sum_c x_c k_c exp(gx_c - gk_c) for one pair with gx <= gk channelwise.
inline float decayed_dot(const float* x, const float* k, const float* gx, const float* gk, index_t K) {
  using simd::Batch;
  Batch<float> acc(0.f);
  const index_t kv = simd::vector_end(K);
  for (index_t c = 0; c < kv; c += simd::kWidth)
    acc = simd::fma(simd::load(x + c) * simd::load(k + c), simd::exp(simd::load(gx + c) - simd::load(gk + c)), acc);
  float sum = simd::reduce_add(acc);
  for (index_t c = kv; c < K; ++c) sum += x[c] * k[c] * std::exp(gx[c] - gk[c]);
  return sum;
}

/// Row i of the masked scores, j <= i: a[j] = beta_i d_j gk[j] (the diagonal then set to 0, A is
/// strict), m[j] = d_j gq[j], with d_j = exp(gamma_i - gamma_j) for a scalar gate (`g`: the
/// contiguous cumulative gates, gi = gamma_i), 1 without one. Vectorized over j: the exps were
/// a scalar std::exp per pair, 16% of a chunk at K = 64 (per-phase profile in README.md).
inline void mask_row(index_t i, float bi, const float* g, float gi, const float* gk, const float* gq, float* a, float* m,
                     float qs = 1.f) {
  using simd::Batch;
  const index_t n = i + 1, nv = simd::vector_end(n);
  const Batch<float> b(bi), gv(gi), qv(qs);
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const Batch<float> d = g ? simd::exp(gv - simd::load(g + j)) : Batch<float>(1.f);
    simd::store(a + j, b * d * simd::load(gk + j));
    simd::store(m + j, d * qv * simd::load(gq + j));
  }
  for (index_t j = nv; j < n; ++j) {
    const float d = g ? std::exp(gi - g[j]) : 1.f;
    a[j] = bi * d * gk[j];
    m[j] = d * qs * gq[j];
  }
  a[i] = 0.f;
}

#if defined(__AVX512F__)
/// mask_row over the whole row [0, L) of A and M in masked 16-lane vectors, the zeros past the
/// diagonal included. mask_row's last, partial vector of j is up to 15 scalar std::exp calls a
/// row, ~240 a chunk of 32 (perf: 9.5% of the bf16 Gated DeltaNet call at H16 K = V = 64 in
/// mask_scores and libm's expf; 3.8% of the fp32 call at H32 K = V = 128), here one masked vector
/// exp. The vector exp differs from std::exp by about an ulp in those lanes (the whole vectors
/// before them are mask_row's own); the bf16 steps took this first, the fp32 ones since
/// 2026-12-07 (README.md, "Where a chunk's time goes").
inline void mask_row_lanes(index_t i, index_t L, float bi, const float* g, float gi, const float* gk, const float* gq,
                           float* a, float* m, float qs = 1.f) {
  using simd::Batch;
  using detail::first_lanes16;
  static_assert(simd::kWidth == 16, "a row's lanes are 16-float registers");
  const Batch<float> b(bi), gv(gi), qv(qs);
  for (index_t j = 0; j < L; j += 16) {
    const __mmask16 row = first_lanes16(L - j);
    if (j > i) {  // wholly past the diagonal: zeros, no exp
      _mm512_mask_storeu_ps(a + j, row, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(m + j, row, _mm512_setzero_ps());
      continue;
    }
    const __mmask16 keep = first_lanes16(i + 1 - j);
    // Lanes past the diagonal load 0: exp(gamma_i) <= 1, then masked to zero.
    const Batch<float> d = g ? simd::exp(gv - Batch<float>(_mm512_maskz_loadu_ps(keep, g + j))) : Batch<float>(1.f);
    _mm512_mask_storeu_ps(a + j, row, _mm512_maskz_mul_ps(keep, b * d, _mm512_maskz_loadu_ps(keep, gk + j)));
    _mm512_mask_storeu_ps(m + j, row, _mm512_maskz_mul_ps(keep, d * qv, _mm512_maskz_loadu_ps(keep, gq + j)));
  }
  a[i] = 0.f;
}
#endif

/// Fills A (strict lower, beta-scaled) and M (lower) from the raw scores G, with the pairwise
/// decay exp(gamma_i - gamma_j) for a scalar gate (`scalar_decay`), none otherwise, and M's rows
/// times q_scale (the call's scale where the scores took the raw queries). Whole rows in masked
/// vectors where AVX-512 is there (mask_row_lanes).
inline void mask_scores(index_t L, bool scalar_decay, float q_scale, WyWorkspace& ws) {
  const float* g = scalar_decay ? ws.gsum.data() : nullptr;
  for (index_t i = 0; i < L; ++i) {
    float* a = ws.A.row(i).data();
    float* m = ws.M.row(i).data();
#if defined(__AVX512F__)
    mask_row_lanes(i, L, ws.beta(i), g, g ? g[i] : 0.f, ws.G.row(i).data(), ws.G.row(L + i).data(), a, m, q_scale);
#else
    mask_row(i, ws.beta(i), g, g ? g[i] : 0.f, ws.G.row(i).data(), ws.G.row(L + i).data(), a, m, q_scale);
    std::fill(a + i + 1, a + L, 0.f);
    std::fill(m + i + 1, m + L, 0.f);
#endif
  }
}

/// Rows of a chunk operand: row i at data + i * ld.
struct ChunkRows {
  const float* data;
  index_t ld;
};

/// The chunk's keys (key_row) and its L queries (query_row) as rows, in place or in KQ.
inline ChunkRows chunk_keys(const WyWorkspace& ws) { return {key_row(ws, 0), ws.k_rows ? ws.k_ld : ws.KQ.cols()}; }
inline ChunkRows chunk_queries(const WyWorkspace& ws, index_t L) {
  return {query_row(ws, L, 0), ws.q_rows ? ws.q_ld : ws.KQ.cols()};
}

/// scores_lower on rows given apart: X's key half xk, its query half xq, the keys y (each [L,K]).
inline void scores_lower_rows(index_t L, index_t K, ChunkRows xk, ChunkRows xq, ChunkRows y, WyWorkspace& ws) {
  const index_t ldg = ws.G.cols();
  constexpr auto R = static_cast<std::size_t>(kTileRows), NV = static_cast<std::size_t>(kTileVectors);
  // In 16 x 16 register blocks: Eigen's transposing assignment was ~3% of a chunk (perf, H32 K128).
  detail::transpose_words(y.data, y.ld, L, K, ws.KT.data(), ws.KT.cols(), L);
  const ChunkRows halves[2] = {xk, xq};
  for (index_t half = 0; half < 2; ++half)
    detail::lower_scores<R, NV>({halves[half].data, halves[half].ld, 1}, L, K, ws.KT.data(), ws.KT.cols(),
                                ws.G.row(half * L).data(), ldg, ldg);
}

/// Raw scores G = (K;Q) K^T without gates, only where mask_scores reads them: row i of either
/// half needs columns j <= i, so each 6-row tile stops at the vector holding its last row's
/// diagonal (about half the flops of the full product; core/small_gemm.hpp's lower_scores).
/// X: the rows (K;Q) [2L,K], Y: the keys [L,K] (X's top rows without a gate; the anchored
/// factors under a per-channel gate).
inline void scores_lower(index_t L, const RowMatrix& X, const RowMatrix& Y, WyWorkspace& ws) {
  const index_t K = X.cols();
  scores_lower_rows(L, K, {X.data(), K}, {X.row(L).data(), K}, {Y.data(), Y.cols()}, ws);
}

/// Per-channel gate, decay over the chunk at most kAnchorRange: every decayed operand of the chunk
/// from one exp per element, e = exp(gamma_i - m) with the anchor m = gamma_L / 2 (|gamma_i - m|
/// <= 30): the scores' factors (K;Q) * e into KQa and K / e into Ka, the state read's (K;Q) *
/// exp(gamma) = (K;Q) * e * exp(m) into KQg and the update's keys K * exp(gamma_L - gamma) =
/// (K / e) * exp(m) into Kn (gamma_L - m = m). Computing each of those with exps of its own took
/// 6 L K exps per chunk, the largest part of KDA's extra time over the scalar gate (README.md).
/// The products and the quotient add a rounding or two to factors exact to about 1 ulp anyway.
inline void channel_operands_anchored(index_t L, index_t K, WyWorkspace& ws) {
  using simd::Batch;
  const float* m = ws.anchor.data();
  const float* em = ws.anchor_exp.data();
  const index_t kv = simd::vector_end(K);
  for (index_t i = 0; i < L; ++i) {
    const float *g = ws.gamma.row(i).data(), *k = key_row(ws, i), *q = ws.KQ.row(L + i).data();
    float *ka = ws.KQa.row(i).data(), *qa = ws.KQa.row(L + i).data(), *kn = ws.Ka.row(i).data();
    float *kg = ws.KQg.row(i).data(), *qg = ws.KQg.row(L + i).data(), *ku = ws.Kn.row(i).data();
    for (index_t c = 0; c < kv; c += simd::kWidth) {
      const Batch<float> e = simd::exp(simd::load(g + c) - simd::load(m + c)), mc = simd::load(em + c);
      const Batch<float> kc = simd::load(k + c), kae = kc * e, qae = simd::load(q + c) * e, kne = kc / e;
      simd::store(ka + c, kae), simd::store(qa + c, qae), simd::store(kn + c, kne);
      simd::store(kg + c, kae * mc), simd::store(qg + c, qae * mc), simd::store(ku + c, kne * mc);
    }
    for (index_t c = kv; c < K; ++c) {
      const float e = std::exp(g[c] - m[c]);
      ka[c] = k[c] * e, qa[c] = q[c] * e, kn[c] = k[c] / e;
      kg[c] = ka[c] * em[c], qg[c] = qa[c] * em[c], ku[c] = kn[c] * em[c];
    }
  }
}

/// Kn alone, as channel_operands_anchored computes it (the same values): for a chunk whose
/// operands went straight to bf16 words (channel_words) and whose U then turned out not finite.
inline void channel_keys_anchored(index_t L, index_t K, WyWorkspace& ws) {
  const float* m = ws.anchor.data();
  const float* em = ws.anchor_exp.data();
  const index_t kv = simd::vector_end(K);
  for (index_t i = 0; i < L; ++i) {
    const float *g = ws.gamma.row(i).data(), *k = key_row(ws, i);
    float* ku = ws.Kn.row(i).data();
    for (index_t c = 0; c < kv; c += simd::kWidth)
      simd::store(ku + c, simd::load(k + c) / simd::exp(simd::load(g + c) - simd::load(m + c)) * simd::load(em + c));
    for (index_t c = kv; c < K; ++c) ku[c] = k[c] / std::exp(g[c] - m[c]) * em[c];
  }
}

/// The decayed operands of a per-channel gate without the anchored factors (stronger decays):
/// (K;Q) * exp(gamma) into KQg and K * exp(gamma_L - gamma) into Kn, every exponent <= 0.
inline void channel_operands_direct(index_t L, index_t K, WyWorkspace& ws) {
  using detail::la::times_exp_rows;
  const index_t G = ws.gamma.cols();
  const float* keys = key_row(ws, 0);
  const index_t ldk = ws.k_rows ? ws.k_ld : K;
  times_exp_rows(keys, ldk, ws.gamma.data(), G, 1.f, nullptr, ws.KQg.data(), K, L, K);
  times_exp_rows(ws.KQ.row(L).data(), K, ws.gamma.data(), G, 1.f, nullptr, ws.KQg.row(L).data(), K, L, K);
  times_exp_rows(keys, ldk, ws.gamma.data(), G, -1.f, ws.gamma.row(L - 1).data(), ws.Kn.data(), K, L, K);
}

/// Per-channel gate: true when the chunk's decay allows the anchored scores (header comment).
inline bool channel_anchored(index_t L, const WyWorkspace& ws) {
  return -ws.gamma.row(L - 1).minCoeff() <= kAnchorRange;
}

/// Per-channel gate: the chunk's decayed operands (KQg, Kn, row_decay = exp(gamma_L)), and the
/// anchored factors of the scores (KQa, Ka) when channel_anchored; returns channel_anchored.
inline bool channel_operands(index_t L, index_t K, WyWorkspace& ws) {
  const auto last = ws.gamma.row(L - 1);
  ws.row_decay = last.array().exp().matrix();
  if (!channel_anchored(L, ws)) {
    channel_operands_direct(L, K, ws);
    return false;
  }
  ws.anchor = 0.5f * last;
  ws.anchor_exp = ws.anchor.array().exp().matrix();
  channel_operands_anchored(L, K, ws);
  return true;
}

/// Raw scores G for per-channel gates (see the header comment for the two regimes), after
/// channel_operands: the register-tiled lower scores of the anchored factors, or the pairs
/// j <= i summed directly.
inline void channel_scores(index_t L, index_t K, bool anchored, WyWorkspace& ws) {
  if (anchored) {
    scores_lower(L, ws.KQa, ws.Ka, ws);
    return;
  }
  for (index_t i = 0; i < L; ++i)
    for (index_t j = 0; j <= i; ++j) {
      const float* gi = ws.gamma.row(i).data();
      const float* gj = ws.gamma.row(j).data();
      ws.G(i, j) = decayed_dot(key_row(ws, i), key_row(ws, j), gi, gj, K);
      ws.G(L + i, j) = decayed_dot(ws.KQ.row(L + i).data(), key_row(ws, j), gi, gj, K);
    }
}

/// dst row i = f_i (x row i - y row i) over n columns (y null: f_i x row i); rows of stride `ld`.
/// With `yf`, y's row i is taken times yf[i] (the bf16 state read's rows, decayed here).
/// Written out because Eigen's colwise broadcast over a row-major block runs element by element.
inline void scale_rows(const float* x, const float* y, const float* f, index_t rows, index_t n, index_t ld, float* dst,
                       const float* yf = nullptr) {
  using simd::Batch;
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < rows; ++i) {
    const float* xi = x + i * ld;
    const float* yi = y ? y + i * ld : nullptr;
    float* di = dst + i * ld;
    const Batch<float> fi(f[i]);
    if (yf) {
      const Batch<float> gi(-yf[i]);
      for (index_t c = 0; c < nv; c += simd::kWidth)
        simd::store(di + c, fi * simd::fma(gi, simd::load(yi + c), simd::load(xi + c)));
      for (index_t c = nv; c < n; ++c) di[c] = f[i] * (xi[c] - yf[i] * yi[c]);
      continue;
    }
    for (index_t c = 0; c < nv; c += simd::kWidth) {
      const Batch<float> xv = simd::load(xi + c);
      simd::store(di + c, fi * (yi ? xv - simd::load(yi + c) : xv));
    }
    for (index_t c = nv; c < n; ++c) di[c] = f[i] * (yi ? xi[c] - yi[c] : xi[c]);
  }
}

/// The right-hand side U = diag(beta) (V - P) (P's row i times yf[i] when given) with the values
/// read in place, rows ldv floats apart (ws.v_rows): scale_rows' arithmetic, the same bits.
inline void rhs_rows(const float* v, index_t ldv, const float* P, const float* beta, index_t rows, index_t n,
                     index_t ld, float* U, const float* yf) {
  for (index_t i = 0; i < rows; ++i)
    scale_rows(v + i * ldv, P + i * ld, beta + i, 1, n, ld, U + i * ld, yf ? yf + i : nullptr);
}

/// dst row i = f_i x row i, x's rows ldx floats apart and dst's ldd (scale_rows' arithmetic).
inline void scale_rows_apart(const float* x, index_t ldx, const float* f, index_t rows, index_t n, float* dst,
                             index_t ldd) {
  for (index_t i = 0; i < rows; ++i) scale_rows(x + i * ldx, nullptr, f + i, 1, n, ldd, dst + i * ldd);
}

/// factor = exp(gamma) per row (scalar gate): the decay of the state read.
inline void read_decays(index_t L, WyWorkspace& ws) { ws.factor.head(L) = ws.gsum.head(L).array().exp().matrix(); }

/// KQg = (K;Q) * exp(gamma) rowwise under a scalar gate (a per-channel gate's KQg comes from
/// channel_operands, with its scores).
inline void decay_rows(index_t L, WyWorkspace& ws) {
  read_decays(L, ws);
  for (int half = 0; half < 2; ++half) {
    auto dst = ws.KQg.middleRows(half * L, L);
    const auto src = ws.KQ.middleRows(half * L, L);
    if (half == 0 && ws.k_rows)
      scale_rows_apart(ws.k_rows, ws.k_ld, ws.factor.data(), L, src.cols(), dst.data(), dst.cols());
    else if (half == 1 && ws.q_rows)
      for (index_t i = 0; i < L; ++i) {  // the call's scale with the row's decay, one product per element
        const float f = ws.q_scale * ws.factor(i);
        scale_rows(ws.q_rows + i * ws.q_ld, nullptr, &f, 1, src.cols(), src.cols(), dst.row(i).data());
      }
    else
      scale_rows(src.data(), nullptr, ws.factor.data(), L, src.cols(), src.cols(), dst.data());
  }
}

/// factor = exp(gamma_L - gamma) per row (scalar gate): the decay of the keys' state update.
inline void key_decays(index_t L, float last, WyWorkspace& ws) {
  ws.factor.head(L) = (last - ws.gsum.head(L).array()).exp().matrix();
}

/// Kn = K * exp(gamma_L - gamma) rowwise (scalar gate), each row's factor computed once.
inline void decayed_keys(index_t L, float last, WyWorkspace& ws) {
  key_decays(L, last, ws);
  if (ws.k_rows)
    scale_rows_apart(ws.k_rows, ws.k_ld, ws.factor.data(), L, ws.KQ.cols(), ws.Kn.data(), ws.Kn.cols());
  else
    scale_rows(ws.KQ.data(), nullptr, ws.factor.data(), L, ws.KQ.cols(), ws.KQ.cols(), ws.Kn.data());
}

/// S row c *= exp(gamma_L[c]) (per-channel gate; ws.row_decay from channel_operands).
inline void decay_state_rows(RowMatrix& S, const WyWorkspace& ws) {
  scale_rows(S.data(), nullptr, ws.row_decay.data(), S.rows(), S.cols(), S.cols(), S.data());
}

/// Solves (I + A) X = X in place for the first L rows of X by forward substitution on the
/// register tile (small_gemm.hpp; A: a RowMatrix or a map of one's rows).
template <class LowerA>
inline void solve_unit_lower(const LowerA& A, index_t L, RowMatrix& X) {
  solve_unit_lower_tiles(A.data(), A.outerStride(), L, X.data(), X.cols(), X.cols());
}

/// O of chunk t0 goes straight into the caller's output rows when they have a unit column stride
/// (ws.o_rows), else into P's rows [L, 2L) and wy_store_outputs copies it out. Copying O out of
/// P was 3.5% of the fp32 chunk (perf, H32 K = V = 128, one thread).
inline void bind_output_rows(const DeltaHead& p, index_t t0, WyWorkspace& ws) {
  ws.o_rows = nullptr;
  if (p.o.stride(1) == 1) ws.o_rows = p.o.ptr(t0), ws.o_ld = p.o.stride(0);
}
inline float* output_rows(index_t L, WyWorkspace& ws) { return ws.o_rows ? ws.o_rows : ws.P.row(L).data(); }
inline index_t output_stride(const WyWorkspace& ws) { return ws.o_rows ? ws.o_ld : ws.P.cols(); }

/// The fp32 read of the state by X [2L, K] (rows K floats apart): its first L rows (the keys)
/// into P's rows [0, L), the next L (the queries) into O (output_rows).
inline void read_state_fp32(const float* X, index_t L, const RowMatrix& S, WyWorkspace& ws) {
  const index_t K = S.rows(), V = S.cols();
  small_product({X, K, 1}, L, K, S.data(), V, V, ws.P.data(), ws.P.cols(), kOverwrite);
  small_product({X + L * K, K, 1}, L, K, S.data(), V, V, output_rows(L, ws), output_stride(ws), kOverwrite);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// ---- bf16 dot-product steps (DeltaHead::bf16_dot; Bf16Compute::dot) ------------------------------
//
// The chunk's four GEMMs on vdpbf16ps (core/bf16_gemm.hpp; packing in
// diagonal_decay/bf16_tiles.hpp): the scores G = (K;Q) K^T, the read of the state P = (K;Q) S,
// O += M U and the state update (K * decay)^T U, their operands rounded to bf16 as they are
// packed and the products accumulated in fp32. The gates, the masks, the right-hand side
// V - P and the triangular solve stay fp32, as does the state. Strong channel decays (the
// pairwise scores) and a non-finite U take the fp32 code.

/// Anchored per-channel gate (channel_anchored), bf16 dot products: channel_operands_anchored's
/// six decayed operands straight into their pair words in one pass over the rows, the fp32
/// values the same as there (so the same words): the scores' factors (K;Q) * e into the
/// scratch's `a` and K / e into `d` (rows of words(K) words), (K;Q) * exp(gamma) into
/// ws.kqg_words and the update's keys (K / e) * exp(m) into ws.kn_pairs as row pairs. Built as
/// fp32 rows and packed by three later passes, these were about 8% of a bf16 KDA chunk at K = 128
/// (README.md, "bf16 dot products under a per-channel gate"). Rows two at a time: a pair word of
/// the keys holds two tokens.
inline void channel_words_anchored(index_t L, index_t K, WyWorkspace& ws, detail::la::bf16_tiles::Scratch& x) {
  using namespace detail::la::bf16_tiles;
  using detail::as_words, detail::first_lanes16;
  static_assert(simd::kWidth == 16, "the pair words are built from 16-float registers");
  const index_t Kw = words(K), Kpad = pad16(K);
  const float *m = ws.anchor.data(), *em = ws.anchor_exp.data();
  std::uint32_t *qa_w = x.a.data() + L * Kw, *ka_w = x.a.data(), *kd_w = x.d.data();
  std::uint32_t *kg_w = ws.kqg_words.data(), *qg_w = kg_w + L * Kw;
  // Queries in place take the scale here, as load_row would have (the same product).
  const __m512 qs = _mm512_set1_ps(ws.q_rows ? ws.q_scale : 1.f);
  // 16 channels of row i from c: the six products, in channel_operands_anchored's order.
  struct Sixteen {
    __m512 ka, qa, kd, kg, qg, ku;  // k e, q e, k / e, then each times exp(m)
  };
  const auto sixteen = [&](index_t i, index_t c) {
    const __mmask16 lanes = first_lanes16(K - c);
    const __m512 g = _mm512_maskz_loadu_ps(lanes, ws.gamma.row(i).data() + c);
    const simd::Batch<float> e = simd::exp(simd::Batch<float>(_mm512_sub_ps(g, _mm512_maskz_loadu_ps(lanes, m + c))));
    const __m512 mc = _mm512_maskz_loadu_ps(lanes, em + c);
    const __m512 k = _mm512_maskz_loadu_ps(lanes, key_row(ws, i) + c);
    const __m512 q = _mm512_mul_ps(qs, _mm512_maskz_loadu_ps(lanes, query_row(ws, L, i) + c));
    Sixteen r;
    r.ka = _mm512_mul_ps(k, e), r.qa = _mm512_mul_ps(q, e), r.kd = _mm512_div_ps(k, e);
    r.kg = _mm512_mul_ps(r.ka, mc), r.qg = _mm512_mul_ps(r.qa, mc), r.ku = _mm512_mul_ps(r.kd, mc);
    return r;
  };
  const auto words32 = [](__m512 lo, __m512 hi) { return as_words(_mm512_cvtne2ps_pbh(hi, lo)); };
  for (index_t i = 0; i < L; i += 2) {
    const index_t rows = std::min<index_t>(2, L - i);
    std::uint32_t* pairs = ws.kn_pairs.data() + i / 2 * Kpad;
    for (index_t c0 = 0; c0 < K; c0 += 32) {
      const __mmask16 out = first_lanes16(std::min<index_t>(16, Kw - c0 / 2));
      __m512 ku[2][2] = {};  // [row][half]: the keys' channels c0 and c0 + 16 of rows i, i + 1 (zeros past)
      for (index_t r = 0; r < rows; ++r) {  // each row's products stored as made (they fill the registers)
        const Sixteen lo = sixteen(i + r, c0), hi = c0 + 16 < K ? sixteen(i + r, c0 + 16) : Sixteen{};
        const index_t at = (i + r) * Kw + c0 / 2;
        _mm512_mask_storeu_epi32(ka_w + at, out, words32(lo.ka, hi.ka));
        _mm512_mask_storeu_epi32(qa_w + at, out, words32(lo.qa, hi.qa));
        _mm512_mask_storeu_epi32(kd_w + at, out, words32(lo.kd, hi.kd));
        _mm512_mask_storeu_epi32(kg_w + at, out, words32(lo.kg, hi.kg));
        _mm512_mask_storeu_epi32(qg_w + at, out, words32(lo.qg, hi.qg));
        ku[r][0] = lo.ku, ku[r][1] = hi.ku;
      }
      // The keys' row pairs: word (i / 2, c) = (ku[i][c], ku[i + 1][c]), zeros past K up to pad16(K).
      for (index_t h = 0; h < 2 && c0 + 16 * h < K; ++h)
        _mm512_storeu_si512(pairs + c0 + 16 * h, row_pair_words(ku[0][h], ku[1][h]));
    }
  }
}

/// G = X Y^T over the first `rows` rows of X and L rows of Y, X's rows packed in the scratch's `a`
/// and Y's in y (rows of words(K) words), only where mask_scores reads it: each 16-row strip of
/// either half (rows of X [0, L) and [L, 2L)) stops at the 16 columns holding its last row's
/// diagonal (5/8 of the full product at L = 64).
inline void scores_from_words(const std::uint32_t* y, index_t rows, index_t L, index_t K, WyWorkspace& ws,
                              detail::la::bf16_tiles::Scratch& x) {
  using namespace detail::la::bf16_tiles;
  const index_t Kw = words(K), Lpad = pad16(L), ldg = ws.G.cols();
  transpose_words(y, Kw, L, Kw, x.b.data(), Lpad, Lpad);
  for (index_t half = 0; half * L < rows; ++half)
    for (index_t i0 = 0; i0 < L; i0 += 16) {
      const index_t r0 = half * L + i0;
      gemm_bf16_into(x.a.data() + r0 * Kw, Kw, x.b.data(), Lpad, std::min<index_t>(16, L - i0), std::min(L, i0 + 16),
                     Kw, ws.G.row(r0).data(), ldg, ldg, nullptr, x.f.data());
    }
}

/// Anchored per-channel gate on bf16 dot products: the decayed operands' words
/// (channel_words_anchored) and the raw scores G from them; false (nothing done) when the
/// chunk's decay is too strong for the anchored factors.
inline bool channel_scores_words(index_t L, index_t K, WyWorkspace& ws) {
  using namespace detail::la::bf16_tiles;
  const auto last = ws.gamma.row(L - 1);
  ws.row_decay = last.array().exp().matrix();
  if (!channel_anchored(L, ws)) return false;
  ws.anchor = 0.5f * last;
  ws.anchor_exp = ws.anchor.array().exp().matrix();
  Scratch& x = Scratch::local();
  x.reserve(2 * L, K, ws.Vc.cols());
  Scratch::grow(ws.kqg_words, 2 * L * words(K));
  Scratch::grow(ws.kn_pairs, words(L) * pad16(K));
  channel_words_anchored(L, K, ws, x);
  scores_from_words(x.d.data(), 2 * L, L, K, ws, x);
  return true;
}

/// n rows of K floats (rows ld apart) times `factor` as A operands (rows of words(K) words at
/// dst): pack_rows with one factor for every row.
inline void pack_rows_times(const float* src, index_t ld, index_t n, index_t K, float factor, std::uint32_t* dst) {
  using namespace detail::la::bf16_tiles;
  const index_t w = words(K);
  for (index_t r = 0; r < n; ++r)
    for (index_t c0 = 0; c0 < K; c0 += 32)
      _mm512_mask_storeu_epi32(dst + r * w + c0 / 2, detail::first_lanes16(std::min<index_t>(16, w - c0 / 2)),
                               round32(src + r * ld + c0, std::min<index_t>(32, K - c0), factor));
}

/// G = (K;Q) K^T over the chunk's L keys and L queries, only where mask_scores reads it
/// (scores_from_words). The rows are packed from where load_chunk left them, the caller's rows
/// or KQ, the queries in place times the call's scale (the words of KQ's scaled rows); they stay
/// packed in the scratch's `a` for the state read. Copying them into KQ first and packing KQ was
/// a pass over the rows more (README.md, "The bf16 chunk packs its rows in place").
inline void scores_bf16(index_t L, index_t K, WyWorkspace& ws) {
  using namespace detail::la::bf16_tiles;
  Scratch& x = Scratch::local();
  x.reserve(2 * L, K, ws.Vc.cols());
  const ChunkRows keys = chunk_keys(ws), queries = chunk_queries(ws, L);
  pack_rows_times(keys.data, keys.ld, L, K, 1.f, x.a.data());
  pack_rows_times(queries.data, queries.ld, L, K, ws.q_rows ? ws.q_scale : 1.f, x.a.data() + L * words(K));
  scores_from_words(x.a.data(), 2 * L, L, K, ws, x);
}

/// P = X S over 2L rows of X given as A operands (xw: rows of words(K) words); rows [L, 2L) (O)
/// go to ws.o_rows when set.
inline void read_state_words(const std::uint32_t* xw, index_t L, const RowMatrix& S, WyWorkspace& ws,
                             detail::la::bf16_tiles::Scratch& x) {
  using namespace detail::la::bf16_tiles;
  const index_t K = S.rows(), V = S.cols(), Kw = words(K), Vpad = pad16(V), rows = 2 * L;
  pack_row_pairs(S.data(), V, K, V, x.b.data(), Vpad);
  if (ws.o_rows) {  // P's top rows, then O in the output rows (no padding room there: `room` V)
    gemm_bf16_into(xw, Kw, x.b.data(), Vpad, L, V, Kw, ws.P.data(), ws.P.cols(), ws.P.cols(), nullptr, x.f.data());
    gemm_bf16_into(xw + L * Kw, Kw, x.b.data(), Vpad, L, V, Kw, ws.o_rows, ws.o_ld, V, nullptr, x.f.data());
    return;
  }
  gemm_bf16_into(xw, Kw, x.b.data(), Vpad, rows, V, Kw, ws.P.data(), ws.P.cols(), ws.P.cols(), nullptr, x.f.data());
}

/// P = X S over the 2L rows of X [*, K]. With `packed`, X's rows are already in the scratch's `a`
/// as scores_bf16 left them (X = (K;Q)). Rows [L, 2L) (O) go to ws.o_rows when set.
inline void read_state_bf16(const RowMatrix& X, index_t L, const RowMatrix& S, WyWorkspace& ws, bool packed) {
  using namespace detail::la::bf16_tiles;
  const index_t K = S.rows(), Kw = words(K);
  Scratch& x = Scratch::local();
  x.reserve(2 * L, K, S.cols());
  if (!packed)
    for (index_t half = 0; half < 2; ++half)
      pack_rows(X.row(half * L).data(), K, L, K, x.a.data() + half * L * Kw, Kw);
  read_state_words(x.a.data(), L, S, ws, x);
}

/// O = diag(o_scale) O + M U (O: ws.o_rows, or P's rows [L, 2L); o_scale null: O += M U); U
/// finite. U's pair words stay in the scratch's `d` for the state update of the same chunk
/// (add_state_bf16), which reads the same bf16 U.
inline void add_mu_bf16(index_t L, const float* o_scale, WyWorkspace& ws) {
  using namespace detail::la::bf16_tiles;
  const index_t V = ws.U.cols(), Lw = words(L), Vpad = pad16(V);
  Scratch& x = Scratch::local();
  x.reserve(2 * L, ws.KQ.cols(), V);
  pack_rows(ws.M.data(), ws.M.cols(), L, L, x.a.data(), Lw);
  pack_row_pairs(ws.U.data(), V, L, V, x.d.data(), Vpad);
  float* o = ws.o_rows ? ws.o_rows : ws.P.row(L).data();
  const index_t ldo = ws.o_rows ? ws.o_ld : ws.P.cols(), room = ws.o_rows ? V : ws.P.cols();
  for (index_t i0 = 0; i0 < L; i0 += 16)  // 16-row strips of M's lower triangle: tokens j < i0 + 16
    gemm_bf16_into(x.a.data() + i0 * Lw, Lw, x.d.data(), Vpad, std::min<index_t>(16, L - i0), V,
                   words(std::min(L, i0 + 16)), o + i0 * ldo, ldo, room, o_scale ? o_scale + i0 : x.ones.data(),
                   x.f.data());
}

/// S = diag(decay) S + X^T U over the first L rows of X [*, K] (S += X^T U when decay is null),
/// row i times key_scale[i] when given (the scalar gate's exp(gamma_L - gamma_i), applied as X
/// is packed); U's pair words from add_mu_bf16.
/// With `pairs`, X's rows are given as row-pair words instead ([words(L) x pad16(K)]:
/// channel_words_anchored's keys) and X and key_scale are not read.
inline void add_state_bf16(ChunkRows X, index_t L, const float* key_scale, const float* decay, RowMatrix& S,
                           const std::uint32_t* pairs = nullptr) {
  using namespace detail::la::bf16_tiles;
  const index_t K = S.rows(), V = S.cols(), Lw = words(L), Kpad = pad16(K), Vpad = pad16(V);
  Scratch& x = Scratch::local();
  x.reserve(2 * L, K, V);
  if (!pairs) {
    pack_row_pairs(X.data, X.ld, L, K, x.c.data(), Kpad, key_scale);  // [Lw x Kpad]
    pairs = x.c.data();
  }
  transpose_words(pairs, Kpad, Lw, K, x.a.data(), Lw, Lw);  // [K x Lw]
  // The scratch's row of ones is taken after reserve, which may reallocate it.
  gemm_bf16_into(x.a.data(), Lw, x.d.data(), Vpad, K, V, Lw, S.data(), V, V, decay ? decay : x.ones.data(),
                 x.f.data());
}
#endif

// The steps of one chunk [t0, t0 + L) of head p on the state S [K,V], in the order the chunkwise
// engine (core/chunkwise/engine.hpp) calls them; driver.hpp binds them to its hooks.

/// The state-free scores A and M of a chunk whose k, q, beta and gates are loaded (load_chunk);
/// under a per-channel gate also the chunk's decayed operands of the state read and update
/// (channel_operands: they share the scores' exps).
inline void chunk_scores(const DeltaHead& p, index_t L, WyWorkspace& ws) {
  const bool channel = p.gated() && !p.scalar_gate;
  ws.bf16_dot = detail::kNativeBf16Dot && p.bf16_dot;
  ws.kq_words = false;
  ws.channel_words = false;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (ws.bf16_dot && channel) ws.channel_words = channel_scores_words(L, p.K(), ws);
  if (ws.bf16_dot && (!channel || ws.channel_words)) {
    if (!channel) {
      scores_bf16(L, p.K(), ws);
      ws.kq_words = true;  // the state read multiplies the same words (wy_read_state)
    }
    mask_scores(L, p.gated() && p.scalar_gate, 1.f, ws);  // the words hold the scaled queries
    return;
  }
#endif
  if (channel) copy_queries(L, p.K(), ws);  // bf16 dot products' strong decays: the fp32 operands
  const bool anchored = channel && channel_operands(L, p.K(), ws);
  if (channel) {
    channel_scores(L, p.K(), anchored, ws);
  } else if (ws.k_rows) {
    const index_t K = p.K();
    const ChunkRows keys{ws.k_rows, ws.k_ld};
    const ChunkRows queries = ws.q_rows ? ChunkRows{ws.q_rows, ws.q_ld} : ChunkRows{ws.KQ.row(L).data(), K};
    scores_lower_rows(L, K, keys, queries, keys, ws);
  } else {
    scores_lower(L, ws.KQ, ws.KQ, ws);
  }
  mask_scores(L, p.gated() && p.scalar_gate, ws.q_scale, ws);
}

/// Operands and the state-free scores: A and M.
inline void wy_load_chunk(const DeltaHead& p, index_t t0, index_t L, WyWorkspace& ws) {
  const bool bf16_dot = detail::kNativeBf16Dot && p.bf16_dot;
  load_chunk(p, t0, L, ws, true, !in_place_keys(p), !in_place_queries(p, bf16_dot));
  chunk_scores(p, L, ws);
}

/// The read of the carried state by k (for the right-hand side) and by q (for the output).
inline void wy_read_state(const DeltaHead& p, index_t t0, index_t L, const RowMatrix& S, WyWorkspace& ws) {
  ws.p_unscaled = false;
  ws.o_rows = nullptr;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (ws.bf16_dot && ws.kq_words) {
    // (K;Q) S on the words the scores packed: k and q are packed once per chunk, where packing
    // them times exp(gamma) for this product was a second pass. The decays then go on P's rows
    // (wy_intra): exp(gamma_i) (k_i S) in place of (exp(gamma_i) k_i) S, the same value with k_i
    // rounded to bf16 rather than exp(gamma_i) k_i.
    if (p.gated()) read_decays(L, ws);
    if (p.o.stride(1) == 1) ws.o_rows = p.o.ptr(t0), ws.o_ld = p.o.stride(0);
    read_state_bf16(ws.KQ, L, S, ws, true);
    ws.p_unscaled = p.gated();
    return;
  }
  if (ws.channel_words) {  // an anchored channel gate: KQg's words from chunk_scores
    if (p.o.stride(1) == 1) ws.o_rows = p.o.ptr(t0), ws.o_ld = p.o.stride(0);
    using detail::la::bf16_tiles::Scratch;
    read_state_words(ws.kqg_words.data(), L, S, ws, Scratch::local());
    return;
  }
  if (ws.bf16_dot) {  // a channel gate's strong decays: KQg from chunk_scores (channel_operands)
    read_state_bf16(ws.KQg, L, S, ws, false);
    return;
  }
#endif
  if (p.gated() && p.scalar_gate) decay_rows(L, ws);  // a channel gate's KQg: chunk_scores
  bind_output_rows(p, t0, ws);
  read_state_fp32((p.gated() ? ws.KQg : ws.KQ).data(), L, S, ws);
}

/// O += M U over M's lower triangle (O: output_rows); M: a RowMatrix or a map of one's rows.
template <class LowerM>
inline void add_mu(index_t L, const LowerM& M, WyWorkspace& ws) {
  using Rows = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;
  // O += M U over M's lower triangle. A NaN / inf in U must not reach earlier tokens through
  // M's zeros (docs/reliability.md): such entries run as 0 and are added to the rows i >= j
  // that see them afterwards (core/chunkwise/causal_product.hpp), so the earlier rows are
  // bit-identical to a clean chunk's.
  const bool finite = chunkwise::all_finite(ws.U.topRows(L));
  if (!finite) ws.finite_u = ws.U.topRows(L).array().isFinite().select(ws.U.topRows(L), 0.f);
  const float* u = finite ? ws.U.data() : ws.finite_u.data();
  const index_t V = ws.U.cols(), ldo = output_stride(ws);
  float* o = output_rows(L, ws);
  small_product({M.data(), M.outerStride(), 1}, L, L, u, V, V, o, ldo, kAdd, InnerRange::lower);
  if (!finite) chunkwise::add_nonfinite_lower(M.topLeftCorner(L, L), ws.U.topRows(L), Rows(o, L, V, Eigen::OuterStride<>(ldo)));
}

/// U = (I + A)^-1 diag(beta) (V - (K * exp(gamma)) S), then O += M U (O: output_rows).
inline void wy_intra(index_t L, WyWorkspace& ws) {
  ws.u_words = false;
  const float* p_scale = ws.p_unscaled ? ws.factor.data() : nullptr;  // P's row decays, when still due
  if (ws.v_rows)
    rhs_rows(ws.v_rows, ws.v_ld, ws.P.data(), ws.beta.data(), L, ws.U.cols(), ws.U.cols(), ws.U.data(), p_scale);
  else
    scale_rows(ws.Vc.data(), ws.P.data(), ws.beta.data(), L, ws.U.cols(), ws.U.cols(), ws.U.data(), p_scale);
  solve_unit_lower(ws.A, L, ws.U);
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  ws.u_words = ws.bf16_dot && simd::rows_finite(ws.U.data(), L, ws.U.cols(), ws.U.cols());
  if (ws.u_words) {
    add_mu_bf16(L, p_scale, ws);
    return;
  }
#endif
  if (p_scale) {  // O's rows take their decays before the fp32 product adds M U to them
    float* o = output_rows(L, ws);
    scale_rows(o, nullptr, p_scale, L, ws.U.cols(), output_stride(ws), o);
  }
  add_mu(L, ws.M, ws);
}

/// S = decay S + X^T U, X [L,K] (the decayed keys, row stride K) read as its transpose. A NaN /
/// inf in U reaches every state row through the full sum anyway, so this product needs no
/// finiteness split.
inline void add_keys_times_u(const float* X, index_t L, float decay, RowMatrix& S, const WyWorkspace& ws) {
  small_product({X, 1, S.rows()}, S.rows(), L, ws.U.data(), ws.U.cols(), S.cols(), S.data(), S.cols(), Accumulate{true, decay});
}

/// State passing: S = diag(exp(gamma_L)) S + (K * exp(gamma_L - gamma))^T U.
inline void wy_update_state(const DeltaHead& p, index_t L, RowMatrix& S, WyWorkspace& ws) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (ws.u_words) {  // bf16 dot products, U finite and packed by wy_intra
    ChunkRows keys = chunk_keys(ws);
    const float* key_scale = nullptr;  // the scalar gate's key decays, applied as K is packed
    const float* decay = nullptr;      // no decay of S without a gate
    if (p.gated() && p.scalar_gate) {
      const float last = ws.gamma(L - 1, 0);
      key_decays(L, last, ws);
      ws.row_decay.setConstant(std::exp(last));
      key_scale = ws.factor.data(), decay = ws.row_decay.data();
    } else if (p.gated()) {  // the decayed keys (or their words) and the rows' decays from chunk_scores
      keys = {ws.Kn.data(), ws.Kn.cols()}, decay = ws.row_decay.data();
    }
    add_state_bf16(keys, L, key_scale, decay, S, ws.channel_words ? ws.kn_pairs.data() : nullptr);
    return;
  }
  if (ws.channel_words) channel_keys_anchored(L, p.K(), ws);  // U not finite: the fp32 update below needs Kn
#endif
  float decay = 1.f;  // the scalar gate's exp(gamma_L), applied to S inside the product
  if (p.gated() && p.scalar_gate) {
    const float last = ws.gamma(L - 1, 0);
    decayed_keys(L, last, ws);
    decay = std::exp(last);
  } else if (p.gated()) {  // Kn and the rows' decays from chunk_scores (channel_operands)
    decay_state_rows(S, ws);
  }
  add_keys_times_u((p.gated() ? ws.Kn : ws.KQ).data(), L, decay, S, ws);
}

/// The chunk's outputs (P's rows [L, 2L)) out to o, any stride, unless the steps wrote them
/// there already (ws.o_rows). Nothing above overwrites them.
inline void wy_store_outputs(const DeltaHead& p, index_t t0, index_t L, const WyWorkspace& ws) {
  if (ws.o_rows) return;  // written in place
  const auto O = ws.P.middleRows(L, L);
  for (index_t i = 0; i < L; ++i) {
    const TensorView<float, 1> out = p.o[t0 + i];
    if (out.is_last_dim_contiguous()) {
      std::copy(O.row(i).data(), O.row(i).data() + p.V(), out.data());
      continue;
    }
    for (index_t c = 0; c < p.V(); ++c) out(c) = O(i, c);
  }
}

// ---- V-independent factors shared by value-column blocks ---------------------------------------
//
// When an item's value columns run as separate tasks (driver.hpp, run_delta_items), everything a
// chunk computes before it reads the state depends only on k, q, beta and the gates: the loads
// with their normalization, the scores, the masks A and M, the decayed keys and queries. A first
// parallel pass over (item, chunk) computes them once into a WyFactors record; each block then
// loads its values, reads the state, solves, mixes and updates its own columns.

/// One chunk's V-independent factors, a view over WyFactors::floats(C, K) floats (16-float
/// aligned records of one array, C the chunk size).
struct WyFactors {
  float* base;  ///< the record's first float
  index_t C;    ///< chunk size (rows reserved per operand)
  index_t K;    ///< key dimension

  /// Floats of one record, a multiple of 16 (64 bytes) so every record starts aligned.
  static index_t floats(index_t C, index_t K) { return (3 * C * K + 2 * C * C + C + K + 15) / 16 * 16; }
  float* X() const { return base; }                 ///< [2L,K] (K;Q) * exp(gamma): read the state
  float* Kn() const { return base + 2 * C * K; }    ///< [L,K] K * exp(gamma_L - gamma): update it
  float* A() const { return base + 3 * C * K; }     ///< [L,C] strictly lower, beta-scaled k scores
  float* M() const { return A() + C * C; }          ///< [L,C] lower q scores
  float* beta() const { return M() + C * C; }       ///< [L]
  float* decay() const { return beta() + C; }       ///< [K] exp(gamma_L) per state row; [0] alone for a scalar gate or none
};

/// Pass 1: the factors of chunk [t0, t0 + L) of p (fp32 products: p.bf16_dot false) into f;
/// ws is any WyWorkspace of chunk size f.C (its value-side rows are not used).
inline void wy_chunk_factors(const DeltaHead& p, index_t t0, index_t L, WyWorkspace& ws, const WyFactors& f) {
  load_chunk(p, t0, L, ws, false);  // keys copied: the factors keep them (f.X)
  chunk_scores(p, L, ws);
  const index_t K = p.K();
  const RowMatrix* X = &ws.KQ;
  const RowMatrix* Kn = &ws.KQ;
  f.decay()[0] = 1.f;
  if (p.gated()) {
    X = &ws.KQg, Kn = &ws.Kn;
    if (p.scalar_gate) {
      decay_rows(L, ws);
      const float last = ws.gamma(L - 1, 0);
      decayed_keys(L, last, ws);
      f.decay()[0] = std::exp(last);
    } else {  // KQg, Kn and the rows' decays from chunk_scores (channel_operands)
      std::copy(ws.row_decay.data(), ws.row_decay.data() + K, f.decay());
    }
  }
  std::copy(X->data(), X->data() + 2 * L * K, f.X());
  std::copy(Kn->data(), Kn->data() + L * K, f.Kn());
  std::copy(ws.A.data(), ws.A.data() + L * f.C, f.A());
  std::copy(ws.M.data(), ws.M.data() + L * f.C, f.M());
  std::copy(ws.beta.data(), ws.beta.data() + L, f.beta());
}

/// Pass 2: chunk [t0, t0 + L) of p's value columns (a block) on its state S [K, V] from the
/// chunk's factors f: the same steps as wy_read_state, wy_intra, wy_update_state and
/// wy_store_outputs in fp32, minus their V-independent part.
inline void wy_block_chunk(const DeltaHead& p, index_t t0, index_t L, const WyFactors& f, RowMatrix& S, WyWorkspace& ws) {
  using Rows = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
  const index_t K = S.rows(), V = S.cols();
  load_chunk_values(p, t0, L, ws);
  bind_output_rows(p, t0, ws);
  read_state_fp32(f.X(), L, S, ws);
  scale_rows(ws.Vc.data(), ws.P.data(), f.beta(), L, V, V, ws.U.data());
  solve_unit_lower(Rows(f.A(), L, L, Eigen::OuterStride<>(f.C)), L, ws.U);
  add_mu(L, Rows(f.M(), L, L, Eigen::OuterStride<>(f.C)), ws);
  float decay = f.decay()[0];
  if (p.gated() && !p.scalar_gate) {
    scale_rows(S.data(), nullptr, f.decay(), K, V, V, S.data());
    decay = 1.f;
  }
  add_keys_times_u(f.Kn(), L, decay, S, ws);
  wy_store_outputs(p, t0, L, ws);
}

}  // namespace seqmix::delta_update
