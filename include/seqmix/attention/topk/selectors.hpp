// Key selection for topk_attention: scorers, and select_topk, which turns scores into the sorted
// key lists topk_attention reads.
//
// Every scorer writes scores [B, Tq, Hs, N] for Hs selection heads (Hs divides Hq; selection
// head s serves query heads [s * Hq/Hs, (s + 1) * Hq/Hs)); N = Tk for per-key scores, the number
// of key blocks for block scores. The score of a selection head is the max over its query heads
// (a key that matters to any of them is kept). Scores rank keys only, so no scale is applied.
//   topk_scores_exact       q . k_j                                            (exact top-k)
//   topk_scores_exact on block means: q . mean_b                               (block top-k, mean key)
//   topk_scores_quest       sum_c max(q_c * min_bc, q_c * max_bc) >= q . k_j for every j in
//                           block b (Quest's upper bound from per-channel key min / max)
//   topk_scores_low_rank    (q P) . (k P) with a given projection P [Hkv, Dk, R] (Loki); the
//                           projected keys are computed once by project_keys and kept
//   topk_scores_indexer     DeepSeek's lightning indexer, Hs = 1 (one selection per token)
//
// Each query scorer also takes a QueryRope (positional/rope): q rotated once per call into a
// scratch copy at its positions (default Tk - Tq + i), for keys (or key summaries, or projected
// keys) the caller computed from rotated keys; equal to seqmix::rope on q, then the scorer.
//
// select_topk keeps, per row, the visible keys j < sink_tokens and pos - recent < j <= pos, then
// adds the ceil(k / block) best-scoring blocks (block = 1: keys) among the other visible ones.
// Ties are broken by the lower block index; -inf and NaN scores are never selected. Output rows
// are strictly increasing key indices padded with -1.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"  // kv tiles, query rows, scores_dot
#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/core/batch.hpp"
#include "seqmix/core/parallel.hpp"

namespace seqmix {

/// Options of select_topk and the selection rules topk_attention's key lists follow.
struct TopkOptions {
  /// Keys chosen by score per row, besides the kept ones; rounded up to whole blocks.
  index_t k = 2048;
  /// Keys per score: 1 for per-key scores, the summary block size for block scores.
  index_t block = 1;
  /// Keys j < sink_tokens are always kept (StreamingLLM sinks), if visible.
  index_t sink_tokens = 0;
  /// Keys pos - recent < j <= pos are always kept (the local window).
  index_t recent = 0;
  /// Only keys j <= pos are candidates; pos = positions[b, i] if given, else Tk - Tq + i.
  bool causal = true;
};

/// Slots per row select_topk may fill: the size of dimension 3 of its `indices` output.
inline index_t topk_capacity(const TopkOptions& o) {
  return (o.k + o.block - 1) / std::max<index_t>(o.block, 1) * o.block + o.sink_tokens + o.recent;
}

namespace detail {

inline void check_selection_heads(const ArgCheck& check, const char* argument, index_t Hs, index_t Hq, index_t Hkv) {
  check.divides(Hs, Hq, argument, "selection heads (dimension 2)");
  check.divides(Hkv, Hq, "k", "KV heads (dimension 2)");
}

// Query heads [h0, h1) of selection head s that read KV head hk (empty when h0 >= h1).
struct HeadRange {
  index_t h0, h1;
};
inline HeadRange heads_of(index_t s, index_t Gs, index_t hk, index_t G) {
  return {std::max(s * Gs, hk * G), std::min((s + 1) * Gs, (hk + 1) * G)};
}

// Keys per parallel task of the scorers: enough work to amortize a task, and at Tk = 128K with
// one selection head still 32 tasks to balance.
constexpr index_t kScoreChunk = 4096;

// The scorers' queries: q itself without a rope table, else q rotated at the rope's positions
// into `scratch` (one copy per call, [B,Tq,Hq,D]; the rope already validated against Tk).
inline ConstView<float, 4> rotated_queries(const ConstView<float, 4>& q, const QueryRope& rope, index_t Tk,
                                           Tensor<float, 4>& scratch) {
  if (!rope.table) return q;
  const index_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3);
  scratch = Tensor<float, 4>({B, Tq, H, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i) {
      const index_t p = query_rope_position(rope, b, i, Tq, Tk);
      for (index_t h = 0; h < H; ++h) {
        float* row = scratch.view().ptr(b, i, h);
        kv_row_to_float(q.ptr(b, i, h), q.stride(3), D, row);
        rope_row_in_place(*rope.table, p, row, 1);
      }
    }
  return scratch.cview();
}

}  // namespace detail

/// scores[b, i, s, j] = max over query heads h of s of q[b, i, h] . k[b, j, h / (Hq / Hkv)],
/// with q rotated first when `rope` has a table (k then holds rotated keys).
template <class KV>
void topk_scores_exact(const ConstView<float, 4>& q_in, const ConstView<KV, 4>& k, const TensorView<float, 4>& scores,
                       const QueryRope& rope, const Executor& executor = serial_executor()) {
  using namespace detail;
  const ArgCheck check("topk_scores_exact");
  check.shape("q", q_in, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,D");
  const index_t B = q_in.size(0), Tq = q_in.size(1), Hq = q_in.size(2), D = q_in.size(3);
  check.shape("k", k, std::array<index_t, 4>{B, -1, -1, D}, "B,Tk,Hkv,D");
  const index_t Tk = k.size(1), Hkv = k.size(2);
  check.shape("scores", scores, std::array<index_t, 4>{B, Tq, -1, Tk}, "B,Tq,Hs,Tk");
  const index_t Hs = scores.size(2);
  validate_query_rope(check, rope, B, Tq, Tk, D);
  if (B * Tq * Hq * Tk == 0) return;
  check_selection_heads(check, "scores", Hs, Hq, Hkv);
  Tensor<float, 4> rotated;
  const ConstView<float, 4> q = rotated_queries(q_in, rope, Tk, rotated);
  const index_t G = Hq / Hkv, Gs = Hq / Hs, Dp = round_up(D, simd::kWidth), T = kDecodeTile;
  const index_t chunks = (Tk + kScoreChunk - 1) / kScoreChunk;
  parallel_for(executor, B * Tq * Hs * chunks, 1, [&](index_t first, index_t last) {
    const index_t max_rows = round_up(std::min(Gs, G), kScoreRows);
    AlignedVector<float> qr(static_cast<std::size_t>(max_rows * Dp), 0.f), kt(static_cast<std::size_t>(T * Dp)),
        s(static_cast<std::size_t>(max_rows * T));
    for (index_t task = first; task < last; ++task) {
      const index_t chunk = task % chunks, row = task / chunks;
      const index_t sel = row % Hs, i = row / Hs % Tq, b = row / Hs / Tq;
      const index_t j_begin = chunk * kScoreChunk, j_end = std::min(Tk, j_begin + kScoreChunk);
      float* out = scores.ptr(b, i, sel);
      for (index_t j = j_begin; j < j_end; ++j) out[j * scores.stride(3)] = kMinusInf;
      for (index_t hk = 0; hk < Hkv; ++hk) {
        const HeadRange heads = heads_of(sel, Gs, hk, G);
        if (heads.h0 >= heads.h1) continue;
        const index_t rows = heads.h1 - heads.h0;
        std::fill(qr.begin(), qr.end(), 0.f);
        for (index_t r = 0; r < rows; ++r) kv_row_to_float(q.ptr(b, i, heads.h0 + r), q.stride(3), D, qr.data() + r * Dp);
        for (index_t j0 = j_begin; j0 < j_end; j0 += T) {
          const index_t n = std::min(T, j_end - j0);
          load_kv_tile(k, b, hk, j0, n, T, kt.data(), Dp);
          scores_dot(qr.data(), Dp, round_up(rows, kScoreRows), kt.data(), Dp, round_up(n, kScoreKeys), Dp, s.data(), T);
          for (index_t r = 0; r < rows; ++r)
            for (index_t c = 0; c < n; ++c) {
              float& o = out[(j0 + c) * scores.stride(3)];
              o = std::max(o, s[r * T + c]);
            }
        }
      }
    }
  });
}

/// topk_scores_exact without a rope.
template <class KV>
void topk_scores_exact(const ConstView<float, 4>& q, const ConstView<KV, 4>& k, const TensorView<float, 4>& scores,
                       const Executor& executor = serial_executor()) {
  topk_scores_exact(q, k, scores, QueryRope{}, executor);
}

/// Per-block key summaries over blocks of `block` keys (the last block may be shorter): the mean
/// key and the per-channel min and max (Quest). Each output is [B, ceil(Tk / block), Hkv, D] and
/// optional (empty view: not computed).
template <class KV>
void block_key_summaries(const ConstView<KV, 4>& k, index_t block, const TensorView<float, 4>& mean,
                         const TensorView<float, 4>& min, const TensorView<float, 4>& max,
                         const Executor& executor = serial_executor()) {
  const ArgCheck check("block_key_summaries");
  check.shape("k", k, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tk,Hkv,D");
  check.that(block >= 1, "block", "must be >= 1, got " + std::to_string(block));
  const index_t B = k.size(0), Tk = k.size(1), H = k.size(2), D = k.size(3), Nb = (Tk + block - 1) / block;
  const std::array<index_t, 4> shape{B, Nb, H, D};
  check.optional_shape("mean", mean, shape, "B,ceil(Tk/block),Hkv,D");
  check.optional_shape("min", min, shape, "B,ceil(Tk/block),Hkv,D");
  check.optional_shape("max", max, shape, "B,ceil(Tk/block),Hkv,D");
  parallel_for(executor, B * Nb * H, 16, [&](index_t first, index_t last) {
    AlignedVector<float> row(static_cast<std::size_t>(D)), sum(static_cast<std::size_t>(D)),
        lo(static_cast<std::size_t>(D)), hi(static_cast<std::size_t>(D));
    for (index_t t = first; t < last; ++t) {
      const index_t h = t % H, nb = t / H % Nb, b = t / H / Nb;
      const index_t j0 = nb * block, j1 = std::min(Tk, j0 + block);
      std::fill(sum.begin(), sum.end(), 0.f);
      std::fill(lo.begin(), lo.end(), std::numeric_limits<float>::infinity());
      std::fill(hi.begin(), hi.end(), detail::kMinusInf);
      for (index_t j = j0; j < j1; ++j) {
        detail::kv_row_to_float(k.ptr(b, j, h), k.stride(3), D, row.data());
        for (index_t c = 0; c < D; ++c) {
          sum[c] += row[c];
          lo[c] = std::min(lo[c], row[c]);
          hi[c] = std::max(hi[c], row[c]);
        }
      }
      const float inv = 1.f / static_cast<float>(j1 - j0);
      for (index_t c = 0; c < D; ++c) {
        if (mean.has_value()) mean(b, nb, h, c) = sum[c] * inv;
        if (min.has_value()) min(b, nb, h, c) = lo[c];
        if (max.has_value()) max(b, nb, h, c) = hi[c];
      }
    }
  });
}

namespace detail {

// Quest bounds for R query rows and KC = W / R key blocks: sums[r * KC + e] = sum over the
// vectorized channels of qpos[r] . hi[e] + qneg[r] . lo[e], where qpos = max(q, 0) and
// qneg = min(q, 0), so that the sum is max(q_c lo_c, q_c hi_c) per channel without a select.
// Each block's lo / hi vector is loaded once for the R rows; one reduce_add_rows sums all W.
template <index_t R>
inline void quest_block(const float* qpos, const float* qneg, index_t ldq, index_t Dv, const float* const* lo,
                        const float* const* hi, float* sums) noexcept {
  constexpr index_t KC = simd::kWidth / R;
  // The unroll pragmas keep acc in registers at -O2 too (GCC 12 unrolls these fixed-count loops
  // completely only at -O3); the same FMAs in the same order.
  FBatch acc[simd::kFloatWidth];
#pragma GCC unroll 16
  for (auto& a : acc) a = FBatch(0.f);
  for (index_t c = 0; c < Dv; c += simd::kWidth) {
    FBatch l[KC], h[KC];
#pragma GCC unroll 16
    for (index_t e = 0; e < KC; ++e) l[e] = simd::load(lo[e] + c), h[e] = simd::load(hi[e] + c);
#pragma GCC unroll 16
    for (index_t r = 0; r < R; ++r) {
      const FBatch qp = simd::in_register(simd::load(qpos + r * ldq + c));
      const FBatch qn = simd::in_register(simd::load(qneg + r * ldq + c));
#pragma GCC unroll 16
      for (index_t e = 0; e < KC; ++e) acc[r * KC + e] = simd::fma(qp, h[e], simd::fma(qn, l[e], acc[r * KC + e]));
    }
  }
  simd::reduce_add_rows(acc).store_aligned(sums);
}

// Quest bounds of key blocks [g0, g0 + count) for the query heads [h0, h0 + heads) of one
// selection head: the max over the heads, written to out. q is given split into its positive
// and negative parts (qpos, qneg; rows of ldq floats) and q itself for the scalar tail.
inline void quest_group(const float* qrows, const float* qpos, const float* qneg, index_t ldq, index_t h0,
                        index_t heads, index_t G, index_t D, const ConstView<float, 4>& min,
                        const ConstView<float, 4>& max, index_t b, index_t g0, index_t count, float* out,
                        index_t out_stride) {
  const index_t W = simd::kWidth, Dv = simd::vector_end(D);
  alignas(64) float bounds[simd::kFloatWidth];
  alignas(64) float sums[simd::kFloatWidth];
  std::fill(bounds, bounds + W, kMinusInf);
  // 4 rows x W/4 blocks per kernel call where 4 consecutive heads share a KV head (and so the
  // blocks' summaries), else one row x W blocks.
  const auto run_rows = [&](index_t r0, auto rows_tag) {
    constexpr index_t R = decltype(rows_tag)::value, KC = simd::kWidth / R;
    const index_t hk = (h0 + r0) / G;
    for (index_t e0 = 0; e0 < count; e0 += KC) {
      const float *lo[KC], *hi[KC];
      for (index_t e = 0; e < KC; ++e) {
        const index_t blk = g0 + std::min(e0 + e, count - 1);  // past count: repeat the last block
        lo[e] = min.ptr(b, blk, hk), hi[e] = max.ptr(b, blk, hk);
      }
      quest_block<R>(qpos + r0 * ldq, qneg + r0 * ldq, ldq, Dv, lo, hi, sums);
      for (index_t r = 0; r < R; ++r)
        for (index_t e = 0; e < KC && e0 + e < count; ++e) {
          float sum = sums[r * KC + e];
          const float* qr = qrows + (r0 + r) * ldq;
          for (index_t c = Dv; c < D; ++c) sum += std::max(qr[c] * lo[e][c], qr[c] * hi[e][c]);
          bounds[e0 + e] = std::max(bounds[e0 + e], sum);
        }
    }
  };
  index_t r = 0;
  if (G % 4 == 0 && h0 % 4 == 0 && simd::kWidth % 4 == 0)
    for (; r + 4 <= heads; r += 4) run_rows(r, std::integral_constant<index_t, 4>{});
  for (; r < heads; ++r) run_rows(r, std::integral_constant<index_t, 1>{});
  for (index_t e = 0; e < count; ++e) out[e * out_stride] = bounds[e];
}

}  // namespace detail

/// Quest: scores[b, i, s, nb] = max over query heads h of s of sum_c max(q_c * min_c, q_c * max_c)
/// with the min / max of key block nb of h's KV head; an upper bound of q . k over the block.
/// With a rope table, q is rotated first (the summaries then come from rotated keys); the
/// summaries do not tell Tk, so rope.positions must be given.
inline void topk_scores_quest(const ConstView<float, 4>& q_in, const ConstView<float, 4>& min,
                              const ConstView<float, 4>& max, const TensorView<float, 4>& scores,
                              const QueryRope& rope, const Executor& executor = serial_executor()) {
  using namespace detail;
  const ArgCheck check("topk_scores_quest");
  check.shape("q", q_in, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,D");
  const index_t B = q_in.size(0), Tq = q_in.size(1), Hq = q_in.size(2), D = q_in.size(3);
  check.shape("min", min, std::array<index_t, 4>{B, -1, -1, D}, "B,Nb,Hkv,D");
  const index_t Nb = min.size(1), Hkv = min.size(2);
  check.shape("max", max, std::array<index_t, 4>{B, Nb, Hkv, D}, "B,Nb,Hkv,D");
  check.shape("scores", scores, std::array<index_t, 4>{B, Tq, -1, Nb}, "B,Tq,Hs,Nb");
  const index_t Hs = scores.size(2);
  validate_query_rope(check, rope, B, Tq, -1, D);
  if (B * Tq * Hq * Nb == 0) return;
  check_selection_heads(check, "scores", Hs, Hq, Hkv);
  check.that(min.stride(3) == 1 && max.stride(3) == 1, "min", "and 'max' must have a contiguous last dimension");
  Tensor<float, 4> rotated;
  const ConstView<float, 4> q = rotated_queries(q_in, rope, -1, rotated);
  const index_t G = Hq / Hkv, Gs = Hq / Hs, W = simd::kWidth;
  // Task = (batch row, query, piece of the blocks); blocks outer, every head inner, so the
  // summaries ([Nb, Hkv, D]: all heads of a block side by side) stream through memory in order,
  // each read once, while a block's rows stay in L1 for all the heads that use them.
  const index_t pieces = std::max<index_t>(1, std::min<index_t>(4 * executor.concurrency(), Nb / 64));
  parallel_for(executor, B * Tq * pieces, 1, [&](index_t first, index_t last) {
    AlignedVector<float> qrows(static_cast<std::size_t>(Hq * D)), qpos(qrows.size()), qneg(qrows.size());
    for (index_t task = first; task < last; ++task) {
      const index_t piece = task % pieces, i = task / pieces % Tq, b = task / pieces / Tq;
      const index_t nb0 = Nb * piece / pieces, nb1 = Nb * (piece + 1) / pieces;
      for (index_t h = 0; h < Hq; ++h) kv_row_to_float(q.ptr(b, i, h), q.stride(3), D, qrows.data() + h * D);
      for (std::size_t c = 0; c < qrows.size(); ++c) qpos[c] = std::max(qrows[c], 0.f), qneg[c] = std::min(qrows[c], 0.f);
      for (index_t g0 = nb0; g0 < nb1; g0 += W) {
        const index_t count = std::min(W, nb1 - g0);
        for (index_t sel = 0; sel < Hs; ++sel) {
          const index_t row0 = sel * Gs * D;
          quest_group(qrows.data() + row0, qpos.data() + row0, qneg.data() + row0, D, sel * Gs, Gs, G, D, min, max, b,
                      g0, count, scores.ptr(b, i, sel, g0), scores.stride(3));
        }
      }
    }
  });
}

/// topk_scores_quest without a rope.
inline void topk_scores_quest(const ConstView<float, 4>& q, const ConstView<float, 4>& min,
                              const ConstView<float, 4>& max, const TensorView<float, 4>& scores,
                              const Executor& executor = serial_executor()) {
  topk_scores_quest(q, min, max, scores, QueryRope{}, executor);
}

/// Loki: k_low[b, j, hk] = k[b, j, hk] P[hk], P = projection [Hkv, Dk, R] (e.g. the top-R principal
/// directions of the keys). Computed once per key and kept beside the cache.
template <class KV>
void project_keys(const ConstView<KV, 4>& k, const ConstView<float, 3>& projection, const TensorView<float, 4>& k_low,
                  const Executor& executor = serial_executor()) {
  const ArgCheck check("project_keys");
  check.shape("k", k, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tk,Hkv,Dk");
  const index_t B = k.size(0), Tk = k.size(1), H = k.size(2), D = k.size(3);
  check.shape("projection", projection, std::array<index_t, 3>{H, D, -1}, "Hkv,Dk,R");
  const index_t R = projection.size(2);
  check.shape("k_low", k_low, std::array<index_t, 4>{B, Tk, H, R}, "B,Tk,Hkv,R");
  parallel_for(executor, B * Tk * H, 64, [&](index_t first, index_t last) {
    AlignedVector<float> row(static_cast<std::size_t>(D)), out(static_cast<std::size_t>(R));
    for (index_t t = first; t < last; ++t) {
      const index_t h = t % H, j = t / H % Tk, b = t / H / Tk;
      detail::kv_row_to_float(k.ptr(b, j, h), k.stride(3), D, row.data());
      std::fill(out.begin(), out.end(), 0.f);
      for (index_t c = 0; c < D; ++c)  // row of P times k_c: contiguous when P's last dim is
        for (index_t r = 0; r < R; ++r) out[r] += row[c] * projection(h, c, r);
      for (index_t r = 0; r < R; ++r) k_low(b, j, h, r) = out[r];
    }
  });
}

/// Loki's scores: (q P) . k_low, with k_low from project_keys. Projects q (small: Tq rows) into
/// one allocation per call, then ranks as topk_scores_exact in the R-dimensional subspace. With
/// a rope table, q is rotated before the projection (k_low then projects rotated keys).
inline void topk_scores_low_rank(const ConstView<float, 4>& q_in, const ConstView<float, 3>& projection,
                                 const ConstView<float, 4>& k_low, const TensorView<float, 4>& scores,
                                 const QueryRope& rope, const Executor& executor = serial_executor()) {
  const ArgCheck check("topk_scores_low_rank");
  check.shape("q", q_in, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,Dk");
  const index_t B = q_in.size(0), Tq = q_in.size(1), Hq = q_in.size(2), D = q_in.size(3);
  check.shape("projection", projection, std::array<index_t, 3>{-1, D, -1}, "Hkv,Dk,R");
  const index_t H = projection.size(0), R = projection.size(2);
  check.shape("k_low", k_low, std::array<index_t, 4>{B, -1, H, R}, "B,Tk,Hkv,R");
  if (Hq > 0 || H > 0) check.divides(H, Hq, "projection", "KV heads (dimension 0)");
  detail::validate_query_rope(check, rope, B, Tq, k_low.size(1), D);
  Tensor<float, 4> rotated;
  const ConstView<float, 4> q = detail::rotated_queries(q_in, rope, k_low.size(1), rotated);
  Tensor<float, 4> q_low({B, Tq, Hq, R});
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t r = 0; r < R; ++r) {
          float acc = 0.f;
          for (index_t c = 0; c < D; ++c) acc += q(b, i, h, c) * projection(h / (Hq / H), c, r);
          q_low(b, i, h, r) = acc;
        }
  topk_scores_exact(q_low.cview(), k_low, scores, executor);
}

/// topk_scores_low_rank without a rope.
inline void topk_scores_low_rank(const ConstView<float, 4>& q, const ConstView<float, 3>& projection,
                                 const ConstView<float, 4>& k_low, const TensorView<float, 4>& scores,
                                 const Executor& executor = serial_executor()) {
  topk_scores_low_rank(q, projection, k_low, scores, QueryRope{}, executor);
}

/// DeepSeek sparse attention: the lightning indexer's scores as one selection head, [B,T,1,Tk]
/// (its query rope, if any, is in.rope).
inline void topk_scores_indexer(const LightningIndexerInputs& in, const TensorView<float, 4>& scores,
                                const Executor& executor = serial_executor()) {
  ArgCheck("topk_scores_indexer").shape("scores", scores, std::array<index_t, 4>{-1, -1, 1, -1}, "B,T,1,Tk");
  lightning_indexer(in, scores.select(2, 0), LightningIndexerOptions{}, executor);
}

namespace detail {

// Keys that select_topk always keeps, as two ranges: the sinks [0, sink_end) and the recent
// window [recent_begin, recent_end), both clipped to the visible keys.
struct KeptKeys {
  index_t sink_end, recent_begin, recent_end;
  bool kept(index_t j) const noexcept { return j < sink_end || (j >= recent_begin && j < recent_end); }
  // Whether keys [j0, j1) hold one outside both kept ranges.
  bool adds_to(index_t j0, index_t j1) const noexcept {
    return std::max(j0, sink_end) < std::min(j1, recent_begin) || std::max(j0, std::max(recent_end, sink_end)) < j1;
  }
};

// One row of select_topk. `candidates` and `keys` are per-thread scratch.
inline void select_row(const float* score, index_t score_stride, index_t N, index_t pos, index_t Tk,
                       const TopkOptions& o, std::int32_t* out, index_t out_stride, index_t capacity,
                       std::vector<std::pair<float, std::int32_t>>& candidates, std::vector<std::int32_t>& keys) {
  const index_t hi = o.causal ? std::clamp<index_t>(pos + 1, 0, Tk) : Tk;
  const index_t recent_end = std::clamp<index_t>(pos + 1, 0, hi);
  const KeptKeys kept{std::min(o.sink_tokens, hi), std::clamp<index_t>(pos - o.recent + 1, 0, recent_end), recent_end};
  candidates.clear();
  keys.clear();
  for (index_t c = 0; c < std::min(N, (hi + o.block - 1) / o.block); ++c) {
    const float s = score[c * score_stride];
    if (!(s > kMinusInf)) continue;  // -inf and NaN
    const index_t j0 = c * o.block, j1 = std::min(j0 + o.block, hi);
    if (kept.adds_to(j0, j1))  // a block the kept ranges cover adds nothing
      candidates.push_back({s, static_cast<std::int32_t>(c)});
  }
  // Higher score first, lower index on ties: a strict total order, so the chosen set is unique.
  const auto better = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  const index_t wanted = std::min<index_t>((o.k + o.block - 1) / o.block, static_cast<index_t>(candidates.size()));
  std::nth_element(candidates.begin(), candidates.begin() + wanted, candidates.end(), better);
  for (index_t e = 0; e < wanted; ++e)
    for (index_t j = candidates[e].second * o.block; j < std::min((candidates[e].second + 1) * o.block, hi); ++j)
      if (!kept.kept(j)) keys.push_back(static_cast<std::int32_t>(j));
  for (index_t j = 0; j < kept.sink_end; ++j) keys.push_back(static_cast<std::int32_t>(j));
  for (index_t j = std::max(kept.recent_begin, kept.sink_end); j < kept.recent_end; ++j)
    keys.push_back(static_cast<std::int32_t>(j));
  std::sort(keys.begin(), keys.end());  // disjoint by construction: no duplicates
  const index_t n = std::min<index_t>(static_cast<index_t>(keys.size()), capacity);
  for (index_t e = 0; e < capacity; ++e) out[e * out_stride] = e < n ? keys[e] : -1;
}

}  // namespace detail

/// scores [B,Tq,Hs,N] (N = ceil(Tk / block)) -> indices [B,Tq,Hs,capacity >= topk_capacity(o)].
/// positions [B,Tq] optional, as in AttentionInputs.
inline void select_topk(const ConstView<float, 4>& scores, index_t Tk, const TensorView<std::int32_t, 4>& indices,
                        const TopkOptions& o, const IndexTable& positions = {},
                        const Executor& executor = serial_executor()) {
  const ArgCheck check("select_topk");
  check.that(o.k >= 0 && o.block >= 1 && o.sink_tokens >= 0 && o.recent >= 0, "options",
             "must have k >= 0, block >= 1, sink_tokens >= 0, recent >= 0");
  check.that(Tk >= 0, "Tk", "must be >= 0");
  const index_t N = (Tk + o.block - 1) / o.block;
  check.shape("scores", scores, std::array<index_t, 4>{-1, -1, -1, N}, "B,Tq,Hs,ceil(Tk/block)");
  const index_t B = scores.size(0), Tq = scores.size(1), Hs = scores.size(2);
  check.shape("indices", indices, std::array<index_t, 4>{B, Tq, Hs, -1}, "B,Tq,Hs,capacity");
  check.that(indices.size(3) >= topk_capacity(o), "indices",
             "needs capacity >= topk_capacity(options) = " + std::to_string(topk_capacity(o)) + ", got " +
                 std::to_string(indices.size(3)));
  positions.check_optional_shape(check, "positions", {B, Tq}, "B,Tq");
  positions.check_position_range(check, "positions");
  parallel_for(executor, B * Tq * Hs, 1, [&](index_t first, index_t last) {
    std::vector<std::pair<float, std::int32_t>> candidates;
    std::vector<std::int32_t> keys;
    for (index_t row = first; row < last; ++row) {
      const index_t s = row % Hs, i = row / Hs % Tq, b = row / Hs / Tq;
      const index_t pos = positions.has_value() ? positions(b, i) : Tk - Tq + i;
      detail::select_row(scores.ptr(b, i, s), scores.stride(3), N, pos, Tk, o, indices.ptr(b, i, s), indices.stride(3),
                         indices.size(3), candidates, keys);
    }
  });
}

}  // namespace seqmix
