// nsa (Native Sparse Attention, SPEC section 5): three causal attention branches per query head,
// combined with the caller's per-head gates.
//
// Query i sits at pos = Tk - Tq + i. With compression block l, stride d, selection block l',
// top_n selected blocks and window w:
//  - compressed branch: compressed keys / values K~_c = phi(k[c d .. c d + l)), V~_c likewise,
//    c = 0 .. Nc - 1, Nc = (Tk - l) / d + 1 (0 when Tk < l); phi is mean pooling here
//    (nsa_compress) or the caller's own (compressed_k / compressed_v given). Block c is visible
//    when its last key is: c d + l - 1 <= pos. o_cmp = softmax attention over the visible c
//    (0 when none), p_cmp its probabilities.
//  - selection branch: keys in selection blocks of l' (block j: [j l', (j + 1) l')). Block j's
//    importance for a KV head is the sum, over the group's query heads and over the visible
//    compressed blocks overlapping block j, of p_cmp (the paper's Eq. 9 and 10; an overlapping
//    compressed block is counted once). The first `initial_blocks` blocks and the
//    `local_blocks` blocks ending at the query's own are always taken, then the best blocks by
//    importance (ties: the lower block) up to top_n; the choice is shared by the KV head's
//    group. o_slc = softmax attention over the chosen blocks' keys j <= pos.
//  - sliding-window branch: o_win = softmax attention over keys pos - w < j <= pos.
//  o = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win,  gates [B, Tq, Hq, 3] in [0, 1].
//
// The selection (nsa_block_selection) is one routine shared by every form, computed from float
// scores of each (query, compressed key) pair that do not depend on the call's shape, so the forms choose the same blocks and differ only in the
// rounding of the attention. This header holds the options, validation, nsa_compress,
// nsa_block_selection and reference::nsa (plain loops in double).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/dense/decode.hpp"  // kv_row_to_float
#include "seqmix/core/simd.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of nsa, nsa_step and reference::nsa (the paper's defaults).
struct NsaOptions {
  /// Compression block length l (keys pooled into one compressed key), >= 1.
  index_t compress_block = 32;
  /// Compression stride d, 1 <= d <= l.
  index_t compress_stride = 16;
  /// Selection block size l', >= 1.
  index_t select_block = 64;
  /// Selection blocks per query (forced ones included), >= initial_blocks + local_blocks.
  index_t top_n = 16;
  /// The first blocks, always selected (when visible).
  index_t initial_blocks = 1;
  /// The blocks ending at the query's own block, always selected.
  index_t local_blocks = 2;
  /// Sliding-window length w, >= 1.
  index_t window = 512;
  /// Multiplies q.k in every branch; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments (KV: float, f16 or bf16). compressed_k / compressed_v are optional and go together:
/// the caller's compressed keys and values (its own pooling or MLP), in place of mean pooling,
/// stored like the cache (KV), so that decode reads them at the cache's width.
template <class KV = float>
struct NsaInputs {
  ConstView<float, 4> q;                  ///< [B,Tq,Hq,Dk], Tq <= Tk
  ConstView<KV, 4> k;                     ///< [B,Tk,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v;                     ///< [B,Tk,Hkv,Dv]
  ConstView<float, 4> gates;              ///< [B,Tq,Hq,3]: g_cmp, g_slc, g_win in [0, 1]
  ConstView<KV, 4> compressed_k = {};     ///< [B,Nc,Hkv,Dk], optional (Nc = nsa_compressed_blocks)
  ConstView<KV, 4> compressed_v = {};     ///< [B,Nc,Hkv,Dv], optional, with compressed_k
};

/// Compressed blocks of Tk keys: (Tk - l) / d + 1, or 0 when Tk < l.
inline index_t nsa_compressed_blocks(index_t Tk, const NsaOptions& options) {
  return Tk < options.compress_block ? 0 : (Tk - options.compress_block) / options.compress_stride + 1;
}

namespace detail {

struct NsaDims {
  AttentionDims attention;
  index_t compressed, select_blocks;  // Nc, ceil(Tk / l')
};

inline void validate_nsa_options(const ArgCheck& check, const NsaOptions& o) {
  check.that(o.compress_block >= 1, "options.compress_block", "must be >= 1, got " + std::to_string(o.compress_block));
  check.that(o.compress_stride >= 1 && o.compress_stride <= o.compress_block, "options.compress_stride",
             "must be in [1, compress_block = " + std::to_string(o.compress_block) + "], got " +
                 std::to_string(o.compress_stride));
  check.that(o.select_block >= 1, "options.select_block", "must be >= 1, got " + std::to_string(o.select_block));
  check.that(o.initial_blocks >= 0 && o.local_blocks >= 0, "options.initial_blocks",
             "and options.local_blocks must be >= 0, got " + std::to_string(o.initial_blocks) + " and " +
                 std::to_string(o.local_blocks));
  check.that(o.top_n >= o.initial_blocks + o.local_blocks, "options.top_n",
             "must be >= initial_blocks + local_blocks = " + std::to_string(o.initial_blocks + o.local_blocks) +
                 ", got " + std::to_string(o.top_n));
  check.that(o.window >= 1, "options.window", "must be >= 1, got " + std::to_string(o.window));
  if (o.scale) check.finite(*o.scale, "options.scale");
}

template <class KV>
AttentionInputs<KV> nsa_dense_inputs(const NsaInputs<KV>& in) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v;
  return dense;
}

// Checks of everything but the output (the selection's arguments).
template <class KV>
NsaDims validate_nsa_inputs(const ArgCheck& check, const NsaInputs<KV>& in, const NsaOptions& options) {
  validate_nsa_options(check, options);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,Dk");
  const index_t B = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, -1, -1, Dk}, "B,Tk,Hkv,Dk");
  const index_t Tk = in.k.size(1), Hkv = in.k.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "k", "KV heads (dimension 2)");
  check.shape("v", in.v, std::array<index_t, 4>{B, Tk, Hkv, -1}, "B,Tk,Hkv,Dv");
  const index_t Dv = in.v.size(3);
  if (Tq > Tk)
    check.fail("q", "needs Tq <= Tk (queries are the last Tq of the Tk keys), got Tq = " + std::to_string(Tq) +
                        ", Tk = " + std::to_string(Tk));
  check.shape("gates", in.gates, std::array<index_t, 4>{B, Tq, Hq, 3}, "B,Tq,Hq,3");
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t e = 0; e < 3; ++e) {
          const float g = in.gates(b, i, h, e);
          if (!(g >= 0.f && g <= 1.f))
            check.fail("gates", "must lie in [0, 1], got " + std::to_string(g) + " at (" + std::to_string(b) + ", " +
                                    std::to_string(i) + ", " + std::to_string(h) + ", " + std::to_string(e) + ")");
        }
  const index_t Nc = nsa_compressed_blocks(Tk, options);
  if (in.compressed_k.has_value() != in.compressed_v.has_value())
    check.fail(in.compressed_k.has_value() ? "compressed_v" : "compressed_k", "must be given together with the other");
  check.optional_shape("compressed_k", in.compressed_k, std::array<index_t, 4>{B, Nc, Hkv, Dk}, "B,Nc,Hkv,Dk");
  check.optional_shape("compressed_v", in.compressed_v, std::array<index_t, 4>{B, Nc, Hkv, Dv}, "B,Nc,Hkv,Dv");
  return {{B, Tq, Tk, Hq, Hkv, Dk, Dv}, Nc, (Tk + options.select_block - 1) / options.select_block};
}

template <class KV>
NsaDims validate_nsa(const char* op, const NsaInputs<KV>& in, const TensorView<float, 4>& o, const NsaOptions& options) {
  const ArgCheck check(op);
  const NsaDims n = validate_nsa_inputs(check, in, options);
  const AttentionDims& d = n.attention;
  check.shape("o", o, std::array<index_t, 4>{d.B, d.Tq, d.Hq, d.Dv}, "B,Tq,Hq,Dv");
  if (views_overlap(o, in.q) || views_overlap(o, in.k) || views_overlap(o, in.v) || views_overlap(o, in.gates) ||
      views_overlap(o, in.compressed_k) || views_overlap(o, in.compressed_v))
    check.fail("o", "overlaps an input; nsa cannot write in place");
  return n;
}

// The compressed branch's visibility as a causal position: block c is visible to pos when
// c <= (pos - l + 1) / d; -1 (nothing visible) before the first block completes.
inline index_t nsa_compressed_position(index_t pos, const NsaOptions& o) {
  return pos + 1 < o.compress_block ? -1 : (pos + 1 - o.compress_block) / o.compress_stride;
}

// One (query, KV head) choice from the group's unscaled compressed scores (rows of `stride`
// apart, G rows): p_cmp per head, summed into selection-block importances, forced blocks, then
// the best by importance. Writes top_n block ids increasing, padded with -1.
struct NsaSelectScratch {
  AlignedVector<float> p, group_p;
  std::vector<double> importance;
  std::vector<std::pair<double, std::int32_t>> candidates;
  std::vector<std::int32_t> chosen;
};

// exp(scale * s[c] - max) for c < n into p (SIMD exp: at Tk = 131072 the group's 4 x 8191
// scalar exps were most of a decode step), returning the sum. NaN scores are left out of the
// max and give NaN; no finite score (max -inf or +inf) gives NaN everywhere, as
// exp(-inf - -inf) did in double: the caller treats a NaN importance as unselectable.
inline float nsa_softmax_numerators(const float* s, index_t n, float scale, float* p, float* max_out = nullptr) noexcept {
  const index_t nv = simd::vector_end(n);
  const simd::Batch<float> sc(scale), low(kMinusInf);
  simd::Batch<float> top(kMinusInf);
  for (index_t c = 0; c < nv; c += simd::kWidth) {
    const simd::Batch<float> x = sc * simd::load(s + c);
    top = xsimd::max(top, xsimd::select(x == x, x, low));  // NaN lanes left out
  }
  float m = nv > 0 ? simd::reduce_max(top) : kMinusInf;
  for (index_t c = nv; c < n; ++c) m = std::max(m, scale * s[c]);
  if (max_out) *max_out = m;
  const simd::Batch<float> mb(m);
  simd::Batch<float> sum(0.f);
  for (index_t c = 0; c < nv; c += simd::kWidth) {
    const simd::Batch<float> e = simd::exp(sc * simd::load(s + c) - mb);
    simd::store(p + c, e);
    sum += e;
  }
  float total = nv > 0 ? simd::reduce_add(sum) : 0.f;
  for (index_t c = nv; c < n; ++c) total += (p[c] = std::exp(scale * s[c] - m));
  return total;
}

inline void nsa_select_row(const float* scores, index_t head_stride, index_t G, index_t pos, float scale,
                           const NsaOptions& o, std::int32_t* out, NsaSelectScratch& w) {
  const index_t visible = nsa_compressed_position(pos, o) + 1, own = pos / o.select_block, blocks = own + 1;
  w.importance.assign(static_cast<std::size_t>(blocks), 0.0);
  const auto n = static_cast<std::size_t>(std::max<index_t>(visible, 1));
  if (w.p.size() < n) w.p.resize(n), w.group_p.resize(n);
  // The group's p_cmp summed per compressed block (SIMD over blocks), then spread over the
  // selection blocks each compressed block overlaps.
  std::fill(w.group_p.begin(), w.group_p.begin() + static_cast<std::ptrdiff_t>(n), 0.f);
  const index_t nv = simd::vector_end(visible);
  for (index_t g = 0; g < G && visible > 0; ++g) {
    const float inv = 1.f / nsa_softmax_numerators(scores + g * head_stride, visible, scale, w.p.data());
    const simd::Batch<float> ib(inv);
    for (index_t c = 0; c < nv; c += simd::kWidth)
      simd::store(w.group_p.data() + c, simd::fma(simd::load(w.p.data() + c), ib, simd::load(w.group_p.data() + c)));
    for (index_t c = nv; c < visible; ++c) w.group_p[static_cast<std::size_t>(c)] += w.p[static_cast<std::size_t>(c)] * inv;
  }
  for (index_t c = 0; c < visible; ++c) {
    const double p = w.group_p[static_cast<std::size_t>(c)];
    const index_t j0 = c * o.compress_stride / o.select_block;
    const index_t j1 = std::min(own, (c * o.compress_stride + o.compress_block - 1) / o.select_block);
    for (index_t j = j0; j <= j1; ++j) w.importance[static_cast<std::size_t>(j)] += p;
  }
  w.chosen.clear();
  w.candidates.clear();
  const index_t local_begin = std::max<index_t>(0, own - o.local_blocks + 1);
  for (index_t j = 0; j < blocks; ++j) {
    if (j < o.initial_blocks || (j >= local_begin && o.local_blocks > 0))
      w.chosen.push_back(static_cast<std::int32_t>(j));
    else if (!std::isnan(w.importance[static_cast<std::size_t>(j)]))
      w.candidates.push_back({w.importance[static_cast<std::size_t>(j)], static_cast<std::int32_t>(j)});
  }
  const index_t extra = std::min<index_t>(o.top_n - static_cast<index_t>(w.chosen.size()),
                                          static_cast<index_t>(w.candidates.size()));
  const auto better = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::nth_element(w.candidates.begin(), w.candidates.begin() + extra, w.candidates.end(), better);
  for (index_t e = 0; e < extra; ++e) w.chosen.push_back(w.candidates[static_cast<std::size_t>(e)].second);
  std::sort(w.chosen.begin(), w.chosen.end());
  for (index_t e = 0; e < o.top_n; ++e)
    out[e] = e < static_cast<index_t>(w.chosen.size()) ? w.chosen[static_cast<std::size_t>(e)] : -1;
}

}  // namespace detail

/// Mean pooling with block l and stride d: ck[b, c, h] = mean(k[b, c d .. c d + l, h]), the same
/// for v, summed in float and stored as KV (the cache's type). ck [B, Nc, Hkv, Dk],
/// cv [B, Nc, Hkv, Dv] with Nc = nsa_compressed_blocks(Tk, options).
template <class KV>
void nsa_compress(const ConstView<KV, 4>& k, const ConstView<KV, 4>& v, const TensorView<KV, 4>& ck,
                  const TensorView<KV, 4>& cv, const NsaOptions& options = {},
                  const Executor& executor = serial_executor()) {
  const ArgCheck check("nsa_compress");
  detail::validate_nsa_options(check, options);
  check.shape("k", k, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tk,Hkv,Dk");
  const index_t B = k.size(0), Tk = k.size(1), H = k.size(2), Dk = k.size(3);
  check.shape("v", v, std::array<index_t, 4>{B, Tk, H, -1}, "B,Tk,Hkv,Dv");
  const index_t Dv = v.size(3), Nc = nsa_compressed_blocks(Tk, options);
  check.shape("ck", ck, std::array<index_t, 4>{B, Nc, H, Dk}, "B,Nc,Hkv,Dk");
  check.shape("cv", cv, std::array<index_t, 4>{B, Nc, H, Dv}, "B,Nc,Hkv,Dv");
  const index_t l = options.compress_block, d = options.compress_stride;
  parallel_for(executor, B * Nc * H, 16, [&](index_t first, index_t last) {
    std::vector<float> sum;
    for (index_t t = first; t < last; ++t) {
      const index_t h = t % H, c = t / H % Nc, b = t / H / Nc;
      for (int which = 0; which < 2; ++which) {
        const ConstView<KV, 4>& x = which == 0 ? k : v;
        const TensorView<KV, 4>& out = which == 0 ? ck : cv;
        const index_t D = x.size(3);
        sum.assign(static_cast<std::size_t>(D), 0.f);
        for (index_t j = c * d; j < c * d + l; ++j)
          for (index_t e = 0; e < D; ++e) sum[static_cast<std::size_t>(e)] += static_cast<float>(x(b, j, h, e));
        for (index_t e = 0; e < D; ++e) out(b, c, h, e) = static_cast<KV>(sum[static_cast<std::size_t>(e)] / static_cast<float>(l));
      }
    }
  });
}

namespace detail {

// q . row for one query row (float) and one compressed key row (converted to float): SIMD
// lanes then a fixed reduction, so the value of a pair does not depend on the call's shape.
inline float nsa_dot(const float* q, const float* row, index_t D) noexcept {
  simd::Batch<float> acc(0.f);
  const index_t Dv = simd::vector_end(D);
  for (index_t c = 0; c < Dv; c += simd::kWidth) acc = simd::fma(simd::load(q + c), simd::load(row + c), acc);
  float sum = Dv > 0 ? simd::reduce_add(acc) : 0.f;
  for (index_t c = Dv; c < D; ++c) sum += q[c] * row[c];
  return sum;
}

}  // namespace detail

namespace detail {

// The group rows of query (b, i), widened, for every KV head: q [Hkv][M][Dp], rows past G zero.
template <class KV>
void nsa_query_rows(const NsaInputs<KV>& in, const AttentionDims& d, index_t b, index_t i, index_t M, index_t Dp,
                    float* q) {
  const index_t G = d.group();
  for (index_t hk = 0; hk < d.Hkv; ++hk)
    for (index_t g = 0; g < G; ++g)
      kv_row_to_float(in.q.ptr(b, i, hk * G + g), in.q.stride(3), d.Dk, q + (hk * M + g) * Dp);
}

// Scores of one query's group rows against compressed keys [c0, c1) of every KV head (c1 <=
// visible): scores [Hkv][M][lds]. Keys go in blocks of kScoreKeys with the heads inside, so
// compressed_k is read in address order (one head's rows alone are 2 KB apart at Hkv = 8,
// D = 128, a stride the hardware prefetchers do not follow: the decode kernel's finding). A
// pair's score depends on (g, c) only (blocks start at multiples of kScoreKeys whatever c0,
// c1 and `visible` are), so every form and call shape sees the same scores for a query.
template <class KV>
void nsa_score_range(const float* q, index_t M, index_t Dp, const ConstView<KV, 4>& ck, const AttentionDims& d,
                     index_t b, index_t c0, index_t c1, index_t visible, float* scores, index_t lds) {
  if (d.Dk % simd::kWidth == 0 && ck.stride(3) == 1) {
    // Tiles of 64 keys; the next tile's lines are requested from the inner loop when the heads
    // of a key row are contiguous (the decode kernel's LineStream, core/prefetch.hpp).
    constexpr index_t kTile = 64;
    const bool packed = ck.stride(2) == d.Dk && ck.stride(1) == d.Hkv * d.Dk;
    for (index_t t0 = c0; t0 < c1; t0 += kTile) {
      const index_t t1 = std::min(t0 + kTile, c1), next = std::min(kTile, c1 - t1);
      LineStream ahead;
      if (packed && next > 0) {
        ahead.set(0, ck.ptr(b, t1, 0), static_cast<std::size_t>(next * d.Hkv * d.Dk) * sizeof(KV));
        ahead.spread_over(static_cast<std::size_t>((t1 - t0 + kScoreKeys - 1) / kScoreKeys * d.Hkv * (M / kScoreRows) *
                                                   (d.Dk / simd::kWidth)));
      }
      for (index_t c = t0; c < t1; c += kScoreKeys)
        for (index_t hk = 0; hk < d.Hkv; ++hk) {
          const KV* keys[kScoreKeys];
          for (index_t e = 0; e < kScoreKeys; ++e) keys[e] = ck.ptr(b, std::min(c + e, visible - 1), hk);
          for (index_t r = 0; r < M; r += kScoreRows)
            score_block<kScoreRows>(q + (hk * M + r) * Dp, Dp, keys, d.Dk, scores + (hk * M + r) * lds + c, lds, &ahead);
        }
    }
    return;
  }
  AlignedVector<float> row(static_cast<std::size_t>(Dp), 0.f);
  for (index_t c = c0; c < c1; ++c)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      kv_row_to_float(ck.ptr(b, c, hk), ck.stride(3), d.Dk, row.data());
      for (index_t g = 0; g < d.group(); ++g)
        scores[(hk * M + g) * lds + c] = nsa_dot(q + (hk * M + g) * Dp, row.data(), d.Dk);
    }
}

// Scratch of one query's selection: its rows, its scores, the choice's working vectors.
struct NsaQueryScratch {
  AlignedVector<float> q, scores;
  NsaSelectScratch select;
};

}  // namespace detail

namespace detail {

// One query's selection with its compressed keys in chunks (multiples of kScoreKeys) across the
// executor, then one task per KV head for the choice; the scores stay in w.scores
// ([Hkv][M][lds], M = G rounded up to kScoreRows, lds = Nc rounded up to kScoreKeys) for
// nsa_step's compressed branch. w.q and w.scores must hold those sizes.
template <class KV>
void nsa_select_query(const NsaInputs<KV>& in, const ConstView<KV, 4>& ck, const NsaDims& n, const NsaOptions& options,
                      float scale, index_t b, index_t i, const TensorView<std::int32_t, 4>& blocks, NsaQueryScratch& w,
                      const Executor& executor) {
  constexpr index_t kChunk = 256;
  const AttentionDims& d = n.attention;
  const index_t G = d.group(), M = round_up(G, kScoreRows), Dp = round_up(d.Dk, simd::kWidth);
  const index_t lds = round_up(std::max<index_t>(n.compressed, 1), kScoreKeys);
  const index_t pos = d.Tk - d.Tq + i, visible = nsa_compressed_position(pos, options) + 1;
  nsa_query_rows(in, d, b, i, M, Dp, w.q.data());
  parallel_for(executor, (std::max<index_t>(visible, 0) + kChunk - 1) / kChunk, 1, [&](index_t first, index_t last) {
    nsa_score_range(w.q.data(), M, Dp, ck, d, b, first * kChunk, std::min(last * kChunk, visible), visible,
                    w.scores.data(), lds);
  });
  parallel_for(executor, d.Hkv, 1, [&](index_t first, index_t last) {
    NsaSelectScratch own;
    for (index_t hk = first; hk < last; ++hk)
      nsa_select_row(w.scores.data() + hk * M * lds, lds, G, pos, scale, options, blocks.ptr(b, i, hk), own);
  });
}

}  // namespace detail

/// The selection blocks nsa attends to: blocks[b, i, hk, e] (e < top_n), increasing, padded with
/// -1, shared by the query heads of KV head hk. ck: the compressed keys (nsa_compress's or the
/// caller's). Every form uses this selection. Many queries: one task per query; one or a few
/// (decode): each query's keys are split across the executor. Each compressed key row is read
/// once per query and scored against the G rows of its group.
template <class KV>
void nsa_block_selection(const NsaInputs<KV>& in, const ConstView<KV, 4>& ck,
                         const TensorView<std::int32_t, 4>& blocks, const NsaOptions& options = {},
                         const Executor& executor = serial_executor()) {
  using namespace detail;
  const ArgCheck check("nsa_block_selection");
  const NsaDims n = validate_nsa_inputs(check, in, options);
  const AttentionDims& d = n.attention;
  check.shape("ck", ck, std::array<index_t, 4>{d.B, n.compressed, d.Hkv, d.Dk}, "B,Nc,Hkv,Dk");
  check.shape("blocks", blocks, std::array<index_t, 4>{d.B, d.Tq, d.Hkv, options.top_n}, "B,Tq,Hkv,top_n");
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t G = d.group(), Nc = std::max<index_t>(n.compressed, 1), Dp = round_up(d.Dk, simd::kWidth);
  const index_t M = round_up(G, kScoreRows), lds = round_up(Nc, kScoreKeys);
  AttentionOptions scale_only;
  scale_only.scale = options.scale;
  const float scale = attention_scale(scale_only, d.Dk);
  const auto fit = [&](NsaQueryScratch& w) {
    w.q.assign(static_cast<std::size_t>(d.Hkv * M * Dp), 0.f);
    w.scores.resize(static_cast<std::size_t>(d.Hkv * M * lds));
  };
  const auto select = [&](NsaQueryScratch& w, index_t b, index_t i, index_t hk) {
    nsa_select_row(w.scores.data() + hk * M * lds, lds, G, d.Tk - d.Tq + i, scale, options, blocks.ptr(b, i, hk), w.select);
  };
  const index_t queries = d.B * d.Tq;
  if (queries >= executor.concurrency()) {
    parallel_for(executor, queries, 1, [&](index_t first, index_t last) {
      NsaQueryScratch w;
      fit(w);
      for (index_t t = first; t < last; ++t) {
        const index_t i = t % d.Tq, b = t / d.Tq;
        const index_t visible = nsa_compressed_position(d.Tk - d.Tq + i, options) + 1;
        nsa_query_rows(in, d, b, i, M, Dp, w.q.data());
        if (visible > 0) nsa_score_range(w.q.data(), M, Dp, ck, d, b, 0, visible, visible, w.scores.data(), lds);
        for (index_t hk = 0; hk < d.Hkv; ++hk) select(w, b, i, hk);
      }
    });
    return;
  }
  // Decode: the keys of one query split across the executor.
  NsaQueryScratch w;
  fit(w);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i) nsa_select_query(in, ck, n, options, scale, b, i, blocks, w, executor);
}

namespace reference {

/// The definition: the shared selection (nsa_block_selection, on nsa_compress's mean pooling or
/// the caller's compressed K/V), then per query and head three plain softmaxes in double and the
/// gated sum. Single-threaded attention; `executor` runs the compression and the selection.
template <class KV>
void nsa(const NsaInputs<KV>& in, const TensorView<float, 4>& o, const NsaOptions& options = {},
         const Executor& executor = serial_executor()) {
  const detail::NsaDims n = detail::validate_nsa("reference::nsa", in, o, options);
  const detail::AttentionDims& d = n.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<KV, 4> own_k, own_v;
  ConstView<KV, 4> ck = in.compressed_k, cv = in.compressed_v;
  if (!ck.has_value()) {
    own_k = Tensor<KV, 4>({d.B, n.compressed, d.Hkv, d.Dk});
    own_v = Tensor<KV, 4>({d.B, n.compressed, d.Hkv, d.Dv});
    nsa_compress(in.k, in.v, own_k.view(), own_v.view(), options, executor);
    ck = own_k.cview(), cv = own_v.cview();
  }
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hkv, options.top_n});
  nsa_block_selection(in, ck, blocks.view(), options, executor);
  AttentionOptions scale_only;
  scale_only.scale = options.scale;
  const double scale = detail::attention_scale(scale_only, d.Dk);
  std::vector<double> acc(static_cast<std::size_t>(d.Dv)), s;
  // Softmax over the listed rows of (keys, values) accessors, added as gate * o to total.
  const auto branch = [&](const std::vector<index_t>& rows, auto key, auto value, double gate, std::vector<double>& total) {
    if (rows.empty()) return;
    s.assign(rows.size(), 0.0);
    double top = -HUGE_VAL, l = 0.0;
    bool nan = false;
    for (std::size_t e = 0; e < rows.size(); ++e) {
      s[e] = scale * key(rows[e]);
      top = std::max(top, s[e]);
      nan = nan || std::isnan(s[e]);
    }
    // Attention's non-finite rule (docs/reliability.md): a NaN or +inf logit makes the branch
    // NaN, a branch whose every logit is -inf sees no key (0), a key of weight 0 takes no part.
    if (nan || top == HUGE_VAL) {
      for (auto& x : total) x = std::numeric_limits<double>::quiet_NaN();
      return;
    }
    if (top == -HUGE_VAL) return;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::size_t e = 0; e < rows.size(); ++e) {
      const double p = std::exp(s[e] - top);
      if (p == 0.0) continue;
      l += p;
      value(rows[e], p, acc);
    }
    for (index_t c = 0; c < d.Dv; ++c) total[static_cast<std::size_t>(c)] += gate * acc[static_cast<std::size_t>(c)] / l;
  };
  std::vector<double> total(static_cast<std::size_t>(d.Dv)), qrow(static_cast<std::size_t>(d.Dk));
  std::vector<index_t> rows;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t pos = d.Tk - d.Tq + i, hk = h / d.group();
        std::fill(total.begin(), total.end(), 0.0);
        // Rows through pointers (element strides honoured): the reference reads 3 branches.
        for (index_t c = 0; c < d.Dk; ++c) qrow[static_cast<std::size_t>(c)] = in.q(b, i, h, c);
        const auto dot = [&](const auto* row, index_t stride) {
          double sum = 0.0;
          for (index_t c = 0; c < d.Dk; ++c) sum += qrow[static_cast<std::size_t>(c)] * static_cast<double>(static_cast<float>(row[c * stride]));
          return sum;
        };
        const auto add = [&](const auto* row, index_t stride, double p, std::vector<double>& into) {
          for (index_t c = 0; c < d.Dv; ++c) into[static_cast<std::size_t>(c)] += p * static_cast<double>(static_cast<float>(row[c * stride]));
        };
        const auto qk = [&](index_t j) { return dot(in.k.ptr(b, j, hk), in.k.stride(3)); };
        const auto vj = [&](index_t j, double p, std::vector<double>& into) { add(in.v.ptr(b, j, hk), in.v.stride(3), p, into); };
        const auto qck = [&](index_t j) { return dot(ck.ptr(b, j, hk), ck.stride(3)); };
        const auto vc = [&](index_t j, double p, std::vector<double>& into) { add(cv.ptr(b, j, hk), cv.stride(3), p, into); };
        rows.clear();
        for (index_t c = 0; c <= detail::nsa_compressed_position(pos, options); ++c) rows.push_back(c);
        branch(rows, qck, vc, in.gates(b, i, h, 0), total);
        rows.clear();
        for (index_t e = 0; e < options.top_n; ++e) {
          const index_t blk = blocks(b, i, hk, e);
          if (blk < 0) continue;
          for (index_t j = blk * options.select_block; j < std::min((blk + 1) * options.select_block, pos + 1); ++j)
            rows.push_back(j);
        }
        branch(rows, qk, vj, in.gates(b, i, h, 1), total);
        rows.clear();
        for (index_t j = std::max<index_t>(0, pos - options.window + 1); j <= pos; ++j) rows.push_back(j);
        branch(rows, qk, vj, in.gates(b, i, h, 2), total);
        for (index_t c = 0; c < d.Dv; ++c) o(b, i, h, c) = static_cast<float>(total[static_cast<std::size_t>(c)]);
      }
}

}  // namespace reference
}  // namespace seqmix
