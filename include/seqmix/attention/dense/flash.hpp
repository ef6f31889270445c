// attention, tiled online-softmax prefill (FlashAttention-2 order on a CPU), and
// seqmix::attention, the entry point that picks between it and the split-KV decode.
//
// One task is (batch row, KV head, block of queries). Its rows are [queries x group] (every
// query head sharing the KV head), so each K/V tile is converted and loaded once per task and
// both products are GEMM-shaped:
//   S   = Q K^T        [rows x kTile]   (K tile transposed into keys-along-lanes layout)
//   S  <- logit rule, online softmax: P = exp(S - m_new), factor = exp(m_old - m_new)
//   acc = factor * acc + P V          [rows x Dv]
// Key tiles that no row of the block can see (beyond the causal diagonal, before the window,
// except sink tokens) are never visited, so the causal case costs half the full one; the
// [Tq x Tk] matrix is never formed. With bf16 K/V and AttentionOptions::bf16_compute = dot, on
// targets with AVX512-BF16, both products run as bf16 dot products on the bf16 tiles
// (flash_block_bf16). See README.md for the derivation.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/register_transpose.hpp"

namespace seqmix {
namespace detail {

// 64 keys per tile: the transposed K tile (D x 64 x 4 B = 32 KB at D = 128) fits L1 while a
// row block of Q streams past it; the S tile of 256 rows x 64 stays in L2 with acc.
constexpr index_t kFlashKeyTile = 64;
// Rows (queries x group) per task aimed at: 256 rows amortize each K/V tile conversion over
// 256 x 64 x D x 4 flops, while T = 1024 with 8 KV heads still gives 128 tasks for balancing.
constexpr index_t kFlashRows = 256;

inline index_t flash_query_block(index_t G, index_t Tq) {
  return std::clamp<index_t>(kFlashRows / G, 1, std::max<index_t>(Tq, 1));
}

// Per-thread scratch of the prefill (FlashScratch::local keeps one per thread).
struct FlashScratch {
  AlignedVector<float> q, kt, v, s, acc, alpha, sums, row;
  AlignedVector<float> keys;  // 16 key rows widened (and rotated) for the register transpose
  std::vector<index_t> pos, ends;  // ends: per row, the keys of the current tile it can see
  std::vector<SoftmaxRow> state;
  NonFiniteKeys bad;              // value rows kept out of the P V GEMM (NaN / inf)
  std::vector<float> bad_rows;    // their saved contents (sized on first use)
  // True from flash_begin until the task's first P V product: acc then holds nothing yet, and
  // that product writes acc = P V instead of rescaling a zero-filled acc (the same values: the
  // first factor scales zeros), which saves the 128 KB fill and re-read of a 256-row task.
  bool acc_empty = false;
  std::vector<float*> o_rows;       // the task's rows of o, for its last tile (flash_output_rows)
  AlignedVector<float> o_scale;     // and each row's factor acc -> o
  FlashScratch(index_t rows, index_t Dk, index_t Dkp, index_t Dvp)
      : q(static_cast<std::size_t>(rows * Dkp)),
        kt(static_cast<std::size_t>(Dk * kFlashKeyTile)),
        v(static_cast<std::size_t>(kFlashKeyTile * Dvp)),
        s(static_cast<std::size_t>(rows * kFlashKeyTile)),
        acc(static_cast<std::size_t>(rows * Dvp)),
        alpha(static_cast<std::size_t>(rows)),
        sums(static_cast<std::size_t>(rows)),
        row(static_cast<std::size_t>(Dk)),
        keys(static_cast<std::size_t>(16 * round_up(Dk, 16))),
        pos(static_cast<std::size_t>(rows)),
        ends(static_cast<std::size_t>(rows)),
        state(static_cast<std::size_t>(rows)),
        o_rows(static_cast<std::size_t>(rows)),
        o_scale(static_cast<std::size_t>(rows)) {}

  // This thread's scratch for tasks of `rows` rows, kept across tasks and calls (made anew when
  // the sizes change): ~400 KB zeroed per parallel block cost a llama3-8b T = 256 prefill (16
  // tasks in 8 blocks) a few percent. Every task starts its rows afresh (flash_begin).
  static FlashScratch& local(index_t rows, index_t Dk, index_t Dkp, index_t Dvp) {
    thread_local std::unique_ptr<FlashScratch> scratch;
    thread_local std::array<index_t, 4> sized{};
    const std::array<index_t, 4> need{rows, Dk, Dkp, Dvp};
    if (!scratch || sized != need) scratch = std::make_unique<FlashScratch>(rows, Dk, Dkp, Dvp), sized = need;
    return *scratch;
  }
};

// A run of at most kFlashKeyTile keys [j0, j0 + n) that one step of a task visits.
struct KeyTile {
  index_t j0, n;
};

// The dense key tiles a block of rows at these positions can see.
inline std::vector<KeyTile> dense_key_tiles(const AttentionOptions& options, const index_t* positions, index_t rows,
                                            index_t Tk) {
  std::vector<KeyTile> tiles;
  for (const index_t j0 : visible_tiles(options, positions, rows, Tk, kFlashKeyTile))
    tiles.push_back({j0, std::min(kFlashKeyTile, Tk - j0)});
  return tiles;
}

// load_kv_tile_transposed with the call's rope: each key row is rotated at its position in the
// fp32 row scratch between widening and transposing, so the keys of a prefill are rotated as
// their tiles are loaded, with no pass of their own over k.
template <class KV, class Q>
void load_key_tile_rotated(const AttentionInputs<KV, Q>& in, index_t b, index_t h, index_t j0, index_t n, index_t cols,
                           float* dst, index_t ld, float* row) {
  const ConstView<KV, 4>& x = in.k;
  const index_t D = x.size(3);
  for (index_t r = 0; r < n; ++r) {
    kv_row_to_float(x.ptr(b, j0 + r, h), x.stride(3), D, row);
    if (j0 + r >= in.rope_rotated_keys) rope_row_in_place(*in.rope, j0 + r, row, 1);
    for (index_t c = 0; c < D; ++c) dst[c * ld + r] = row[c];
  }
  if (n < cols)
    for (index_t c = 0; c < D; ++c) std::fill(dst + c * ld + n, dst + c * ld + cols, 0.f);
}

// The start of a task (queries [i0, i0 + nq) of batch row b, KV head hk): its q rows scaled
// (and rotated) into w.q, their positions, fresh softmax states and accumulators. Returns the
// number of rows, nq * group.
template <class KV, class Q>
index_t flash_begin(const AttentionInputs<KV, Q>& in, const AttentionDims& d, float scale, index_t b, index_t hk,
                    index_t i0, index_t nq, FlashScratch& w) {
  const index_t G = d.group(), M = nq * G, Dkp = round_up(d.Dk, simd::kWidth);
  load_query_rows(in, b, hk, G, i0, nq, scale, w.q.data(), Dkp);
  for (index_t r = 0; r < M; ++r) w.pos[r] = query_position(in, b, i0 + r / G);
  std::fill(w.state.begin(), w.state.begin() + M, SoftmaxRow{});
  w.acc_empty = true;  // acc is written by the first tile's P V (FlashScratch::acc_empty)
  return M;
}

// m[r] = row_max(s + r * ld, width_of(r)) for r < rows, each width a multiple of the vector
// width. With AVX512F 16 rows at a time: each row's vector of maxima, the 16 vectors transposed
// in registers (transpose_words_16x16), and the lanes' maxima taken across them. xsimd 8's
// horizontal maximum (simd::reduce_max) stores the vector and takes 15 scalar maxima, ~2.4% of a
// T = 256 prefill's samples (perf, one thread, loaded EPYC Zen 5). The same values: a maximum is
// exact in any order, and where a NaN logit is dropped or kept by either order, its exp makes
// the row's sum NaN all the same (online_softmax_tile).
constexpr index_t kRowMaxBlock = 16;

#if defined(__AVX512F__)
// max(a, b) per lane: the zero-masking form with every lane kept is the plain instruction, whose
// undefined merge source GCC 12's -Wall reports as uninitialized (as in register_transpose.hpp).
inline __m512 max_lanes(__m512 a, __m512 b) noexcept { return _mm512_maskz_max_ps(0xFFFF, a, b); }
#endif

template <class Width>
void tile_row_maxima(const float* s, index_t ld, index_t rows, const Width& width_of, float* m) noexcept {
  index_t r0 = 0;
#if defined(__AVX512F__)
  if constexpr (simd::kWidth == 16)
    for (; r0 + 16 <= rows; r0 += 16) {
      __m512i top[16];
      for (index_t r = 0; r < 16; ++r) {
        const float* row = s + (r0 + r) * ld;
        __m512 x = _mm512_set1_ps(kMinusInf);
        for (index_t j = 0, e = width_of(r0 + r); j < e; j += 16) x = max_lanes(x, _mm512_loadu_ps(row + j));
        top[r] = _mm512_castps_si512(x);
      }
      transpose_words_16x16(top);  // top[c] lane r: row r0 + r's lane c
      __m512 x = _mm512_castsi512_ps(top[0]);
      for (index_t c = 1; c < 16; ++c) x = max_lanes(x, _mm512_castsi512_ps(top[c]));
      _mm512_storeu_ps(m + r0, x);
    }
#endif
  for (; r0 < rows; ++r0) m[r0] = row_max(s + r0 * ld, width_of(r0));
}

// The logit rule and the online softmax over the task's logit tile w.s (keys [j0, j0 + n)):
// w.s becomes the weights P, w.alpha each row's rescaling factor. With ends (a tile across the
// causal diagonal, diagonal_row_ends) a row's exponentials stop at the vector holding its last
// visible key: the logits past it are -inf, whose weights are exactly 0, so they are stored as
// 0 without an exp (the same P, m and l bit for bit; about 3/8 of a diagonal tile's exps).
// Three passes over the rows, online_softmax_tile's arithmetic split at its branches (the rule
// and each row's new maximum; the exps and sums; the (m, l) updates): row by row, each row's
// reductions and exps waited on the one before behind data-dependent branches (whether the
// maximum moved). Rows that see no key yet (maximum -inf) take online_softmax_tile whole.
template <class KV, class Q>
void flash_softmax(const LogitRule<KV, Q>& rule, const AttentionDims& d, index_t b, index_t hk, index_t i0, index_t M,
                   index_t j0, index_t n, FlashScratch& w, const index_t* ends = nullptr) {
  const index_t G = d.group(), T = kFlashKeyTile;
  const auto width_of = [&](index_t r) { return ends ? std::min<index_t>(T, round_up(ends[r], simd::kWidth)) : T; };
  float* m_new = w.alpha.data();  // each row's new maximum until the last pass makes it the factor
  // A rule that only masks has nothing to do in a row that sees the whole of a full tile (every
  // row of a tile below the causal diagonal): its call per row and tile, with the visibility
  // worked out and two empty fills, was ~2% of a T = 256 prefill's samples (perf, loaded).
  const bool full_rows_as_they_are = rule.masks_only() && n == T;
  const auto sees_tile = [&](index_t r) {
    const VisibleKeys v = visible_keys(rule.options, w.pos[r], rule.Tk);
    return j0 + n <= v.sink_end || (j0 >= v.lo && j0 + n <= v.hi);
  };
  // The rule and the maxima kRowMaxBlock rows at a time, while those rows are in L1.
  for (index_t r0 = 0; r0 < M; r0 += kRowMaxBlock) {
    const index_t rows = std::min(kRowMaxBlock, M - r0);
    for (index_t r = r0; r < r0 + rows; ++r)
      if (!(full_rows_as_they_are && sees_tile(r)))
        rule.apply(w.s.data() + r * T, j0, n, T, b, i0 + r / G, hk * G + r % G, w.pos[r]);
    tile_row_maxima(w.s.data() + r0 * T, T, rows, [&](index_t r) { return width_of(r0 + r); }, m_new + r0);
    for (index_t r = r0; r < r0 + rows; ++r) m_new[r] = std::max(w.state[r].m, m_new[r]);
  }
  for (index_t r = 0; r < M; ++r) {
    float* s = w.s.data() + r * T;
    const index_t width = width_of(r);
    if (m_new[r] == kMinusInf) {  // done here: alpha gets its factor, sums the mark -inf
      w.alpha[r] = online_softmax_tile(s, width, w.state[r].m, w.state[r].l);
      w.sums[r] = kMinusInf;
    } else {
      w.sums[r] = softmax_tile_exps(s, width, m_new[r]);  // >= 0 or NaN
    }
    // Only where something is past the width: an empty fill of 0.f is still a memset call, one
    // per row of every tile (~3% of a T = 256 prefill's samples in memset, perf, loaded).
    if (width < T) std::fill(s + width, s + T, 0.f);
  }
  for (index_t r = 0; r < M; ++r)
    if (w.sums[r] != kMinusInf) w.alpha[r] = softmax_tile_update(w.state[r].m, w.state[r].l, m_new[r], w.sums[r]);
}

// ---- tiles that cross the causal diagonal ------------------------------------------------------
//
// A causal row at position pos sees keys up to pos only, so in the tiles that cross the
// diagonal the rows see different numbers of the tile's keys: ends[r] = keys [j0, j0 + ends[r])
// (the logit rule masks the rest to -inf, so their weights are exactly 0). There the products
// run per block of kFlashGemmRows rows only as far as a row of the block sees: S over the column
// panels some row reaches, P V over the keys the block's last-seeing row reaches. The values
// computed are the same products in the same order (a weight of 0 adds exactly 0), so results
// are bit for bit those of the full tile. At T = 256 (4 query blocks of 64 queries against
// 64-key tiles) 4 of the 10 tiles of a head are diagonal, and their cost falls to about 5/8.

// w.ends for the rows of a tile [j0, j0 + n) from the logit rule's visibility; true when some
// row sees fewer than n of its keys (a causal tile on the diagonal).
template <class KV, class Q>
bool diagonal_row_ends(const LogitRule<KV, Q>& rule, index_t j0, index_t n, index_t M, FlashScratch& w) {
  if (!rule.options.causal) return false;
  bool short_row = false;
  for (index_t r = 0; r < M; ++r) {
    w.ends[r] = std::clamp<index_t>(visible_keys(rule.options, w.pos[r], rule.Tk).hi - j0, 0, n);
    short_row |= w.ends[r] < n;
  }
  return short_row;
}

// The largest of ends[r .. r + rows).
inline index_t block_end(const index_t* ends, index_t r, index_t rows) noexcept {
  return *std::max_element(ends + r, ends + r + rows);
}

// Rows per register block of the task's two products. With AVX-512's 32 registers, 12 rows x 2
// vectors (24 accumulators) hide the FMA latency that 6 x 2 (12) leaves exposed: a 256 x 64 x 128
// product took 47 against 63 us (thread CPU, loaded EPYC Zen 5, 1.33x; 8 rows 1.16x, 14 rows
// 1.37x but 30 of the 32 registers, 6 x 4 0.88x). With 16 registers (SSE2 / AVX2) 6 x 2 fits.
constexpr int kFlashGemmRows = simd::kWidth >= 16 ? 12 : kGemmRows;

// One column panel (NV vectors) of C [M x NV W] = diag(row_scale) C + A B, the rows in blocks of
// kFlashGemmRows (the last < kFlashGemmRows rows in decode.hpp's 6-row blocks). depth(r, rows)
// gives the k the block of rows [r, r + rows) runs over (A [rows x depth], B [depth x NV W]), or
// -1 to leave its C as it was. Every element is the same sum in the same k order whatever the
// row blocking, so results are bit for bit those of gemm().
template <int NV, class Depth>
void flash_gemm_panel(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc, index_t M,
                      const float* row_scale, const Depth& depth, ScaledRows out) noexcept {
  constexpr index_t R = kFlashGemmRows;
  index_t r = 0;
  for (; r + R <= M; r += R) {
    const index_t K = depth(r, R);
    if (K >= 0)
      gemm_block<R, NV>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, K, row_scale ? row_scale + r : nullptr,
                        out.from_row(r));
  }
  const index_t K = r < M ? depth(r, M - r) : -1;
  if (K >= 0)
    gemm_column_block<NV>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, M - r, K, row_scale ? row_scale + r : nullptr,
                          out.from_row(r));
}

// Both products of a tile, full or cut at the causal diagonal, as one walk: column panels of 2
// vectors, then 1 (N a multiple of the width), each walked by flash_gemm_panel with
// depth(c, r, rows) for the panel starting at column c. With out.rows set the results go there
// (ScaledRows) instead of C.
template <class Depth>
void flash_gemm(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc, index_t M, index_t N,
                const float* row_scale, const Depth& depth, ScaledRows out = {}) noexcept {
  const index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + 2 * W <= N; c += 2 * W)
    flash_gemm_panel<2>(A, lda, B + c, ldb, C + c, ldc, M, row_scale,
                        [&](index_t r, index_t rows) { return depth(c, r, rows); }, out.from_col(c));
  for (; c < N; c += W)
    flash_gemm_panel<1>(A, lda, B + c, ldb, C + c, ldc, M, row_scale,
                        [&](index_t r, index_t rows) { return depth(c, r, rows); }, out.from_col(c));
}

// S [M x N] = A [M x K] B [K x N], with ends: only the column panels some row of a block sees
// (columns a block does not reach are left as they were; the logit rule masks them).
inline void gemm_scores(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc, index_t M,
                        index_t N, index_t K, const index_t* ends) noexcept {
  if (!ends && M <= 4) return gemm(A, lda, B, ldb, C, ldc, M, N, K, nullptr);  // its 4-vector blocks
  flash_gemm(A, lda, B, ldb, C, ldc, M, N, nullptr, [&](index_t c, index_t r, index_t rows) {
    return !ends || block_end(ends, r, rows) > c ? K : index_t{-1};
  });
}

// acc [M x N] = diag(alpha) acc + P [M x K] V [K x N] (acc = P V when alpha is null); with ends
// (row r's weights past ends[r] are 0) each block of rows runs over the keys its rows reach (every
// block is written). With out.rows set, row r goes to out's row r scaled instead of to acc.
inline void gemm_values(const float* P, index_t ldp, const float* V, index_t ldv, float* acc, index_t ldacc,
                        index_t M, index_t N, index_t K, const float* alpha, const index_t* ends,
                        ScaledRows out = {}) noexcept {
  if (!ends && M <= 4 && !out.rows) return gemm(P, ldp, V, ldv, acc, ldacc, M, N, K, alpha);
  flash_gemm(P, ldp, V, ldv, acc, ldacc, M, N, alpha,
             [&](index_t, index_t r, index_t rows) { return ends ? block_end(ends, r, rows) : K; }, out);
}

// The row factors of the tile's P V product: none for the task's first (acc = P V, see
// FlashScratch::acc_empty), w.alpha after it. Called once per tile, right before that product.
inline const float* first_rescale(FlashScratch& w) noexcept {
  const bool first = w.acc_empty;
  w.acc_empty = false;
  return first ? nullptr : w.alpha.data();
}

// The task's rows of o and their factors (and each row's lse written), once its states are
// final (after the last tile's softmax): the last tile's P V then writes each row of o from its
// registers, acc * factor, the product flash_finish would make from acc (bit for bit), without
// the store of acc and its second pass. The separate pass stored 128 KB of o per task with
// nothing to overlap the misses, ~5% of a T = 256 prefill (perf, one thread, loaded). False
// (nothing done) where o's rows are not whole vectors of the width.
template <class KV, class Q>
bool flash_output_rows(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionDims& d,
                       index_t b, index_t hk, index_t i0, index_t M, FlashScratch& w) {
  if (out.o.stride(3) != 1 || d.Dv % simd::kWidth != 0) return false;
  const index_t G = d.group();
  const bool has_sink = in.sink_logits.has_value();
  for (index_t r = 0; r < M; ++r) {
    const index_t i = i0 + r / G, h = hk * G + r % G;
    const RowEnd end = finish_factor(w.state[r], has_sink, has_sink ? in.sink_logits(h) : 0.f);
    w.o_rows[r] = out.o.ptr(b, i, h);
    w.o_scale[r] = end.factor;
    if (out.lse.has_value()) out.lse(b, i, h) = end.lse;
  }
  return true;
}

// One key tile whose keys and values are in w.kt / w.v (fp32): S = Q K^T, softmax, acc += P V.
// `last` (the task's last tile, or null): where the P V product may write the task's rows of o
// straight away; returns true when it did (flash_output_rows; the task is then finished).
template <class KV, class Q>
bool flash_tile(const LogitRule<KV, Q>& rule, const AttentionDims& d, index_t b, index_t hk, index_t i0, index_t M,
                index_t j0, index_t n, FlashScratch& w, const AttentionOutputs* last = nullptr) {
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth), T = kFlashKeyTile;
  const bool diagonal = diagonal_row_ends(rule, j0, n, M, w);
  const index_t* ends = diagonal ? w.ends.data() : nullptr;
  gemm_scores(w.q.data(), Dkp, w.kt.data(), T, w.s.data(), T, M, T, d.Dk, ends);
  flash_softmax(rule, d, b, hk, i0, M, j0, n, w, ends);
  // Value rows holding a NaN / inf sit out the GEMM where some row gives them weight 0, and are
  // added to the rows that see them afterwards (NonFiniteKeys in decode.hpp).
  const KvRows<float> values{w.v.data(), Dvp};
  const bool guard = find_nonfinite_keys(w.s.data(), T, M, values, n, d.Dv, nullptr, w.bad);
  if (guard) {
    w.bad_rows.resize(static_cast<std::size_t>(w.bad.count * Dvp));
    for (index_t b = 0; b < w.bad.count; ++b) {
      float* row = w.v.data() + w.bad.key[b] * Dvp;
      std::copy(row, row + Dvp, w.bad_rows.data() + b * Dvp);
      std::fill(row, row + Dvp, 0.f);
    }
  }
  const bool to_o = last && !guard && flash_output_rows(rule.in, *last, d, b, hk, i0, M, w);
  const ScaledRows o_rows = to_o ? ScaledRows{w.o_rows.data(), w.o_scale.data(), 0} : ScaledRows{};
  gemm_values(w.s.data(), T, w.v.data(), Dvp, w.acc.data(), Dvp, M, Dvp, n, first_rescale(w), ends, o_rows);
  if (guard) {
    for (index_t b = 0; b < w.bad.count; ++b) {
      const index_t j = w.bad.key[b];
      const float* x = w.bad_rows.data() + b * Dvp;
      for (index_t r = 0; r < M; ++r) {
        const float p = w.s[r * T + j];
        if (p != 0.f)
          for (index_t c = 0; c < d.Dv; ++c) w.acc[r * Dvp + c] += p * x[c];
      }
    }
  }
  return to_o;
}

// The end of a task: each row normalized into o (and its lse), the o rows requested for writing
// kRowPrefetchAhead rows ahead (see there).
template <class KV, class Q>
void flash_finish(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionDims& d, index_t b,
                  index_t hk, index_t i0, index_t M, FlashScratch& w) {
  const index_t G = d.group(), Dvp = round_up(d.Dv, simd::kWidth);
  if (w.acc_empty) std::fill(w.acc.begin(), w.acc.begin() + M * Dvp, 0.f);  // no tile visited: zeros
  const bool has_sink = in.sink_logits.has_value();
  for (index_t r = 0; r < M; ++r) {
    const index_t i = i0 + r / G, h = hk * G + r % G, ahead = r + kRowPrefetchAhead;
    if (ahead < M && out.o.stride(3) == 1) prefetch_row<true>(out.o.ptr(b, i0 + ahead / G, hk * G + ahead % G), d.Dv);
    const float lse = finish_row(w.state[r], w.acc.data() + r * Dvp, d.Dv, has_sink, has_sink ? in.sink_logits(h) : 0.f,
                                 out.o.ptr(b, i, h), out.o.stride(3));
    if (out.lse.has_value()) out.lse(b, i, h) = lse;
  }
}

// One task: queries [i0, i0 + nq) of batch row b against KV head hk, over the key tiles that
// select_tiles(positions, rows) returns (dense: every visible tile; block-sparse attention: the
// selected blocks). The logit rule still masks what causal / window / mask hide from each row,
// so a tile list may hold keys some rows cannot see; it must hold only keys the task's rows are
// allowed to attend to otherwise, each key once.
//
// load_tile(j0, n, w) fills w.kt with the tile's keys transposed ([Dk x kFlashKeyTile]) and w.v
// with its values ([kFlashKeyTile x Dvp]), fp32 and zero past n keys / Dv features; the overload
// below reads them from in.k / in.v (dense_tile_loader), paged attention from its pages.
// `cache` is the call's per-distance relative bias, or null.
template <class KV, class Q, class SelectTiles, class LoadTile>
void flash_block(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options,
                 const AttentionDims& d, float scale, index_t b, index_t hk, index_t i0, index_t nq, FlashScratch& w,
                 SelectTiles&& select_tiles, LoadTile&& load_tile, const DistanceBiasCache* cache = nullptr) {
  const LogitRule<KV, Q> rule{in, options, d.Tk, cache};
  const index_t M = flash_begin(in, d, scale, b, hk, i0, nq, w);
  const auto tiles = select_tiles(w.pos.data(), M);
  bool finished = false;  // the last tile wrote o (flash_tile)
  for (auto it = tiles.begin(); it != tiles.end();) {
    const KeyTile tile = *it;
    const bool last = !(++it != tiles.end());
    load_tile(tile.j0, tile.n, w);
    finished = flash_tile(rule, d, b, hk, i0, M, tile.j0, tile.n, w, last ? &out : nullptr);
  }
  if (!finished) flash_finish(in, out, d, b, hk, i0, M, w);
}

#if defined(__AVX512F__)
// True when the key rows [j0, j0 + n) of in.k can feed the register transpose as they are:
// fp32, contiguous whole vectors, not rotated by the call's rope.
template <class KV, class Q>
bool key_rows_in_place(const AttentionInputs<KV, Q>& in, index_t j0, index_t n) noexcept {
  if constexpr (std::is_same_v<KV, float>)
    return in.k.stride(3) == 1 && in.k.size(3) % 16 == 0 && !tile_needs_rotation(in, j0, n);
  return false;
}

// The key tile transposed into s.kt ([Dk x kFlashKeyTile], zero past n keys) 16 keys x 16
// features at a time in registers (core/register_transpose.hpp, AVX512F: Skylake-X and Ice Lake
// too; it moves 32-bit words, so floats as they are). Element by element the transpose was 8192
// scalar stores 256 bytes apart per tile at Dk = 128, 4-5% of a T = 256 prefill (thread CPU,
// loaded EPYC Zen 5). fp32 rows of whole vectors that the rope leaves alone are read where they
// are (key_rows_in_place); others are widened (and rotated) into s.keys first, 16 at a time,
// zero past D. Reading in place drops a 32 KB copy per tile at Dk = 128 (the 16-row copies were
// ~2% of a T = 256 prefill's samples, perf, loaded).
template <class KV, class Q>
void load_key_tile_by_blocks(const AttentionInputs<KV, Q>& in, index_t b, index_t h, index_t j0, index_t n,
                             FlashScratch& s) {
  const index_t D = in.k.size(3), T = kFlashKeyTile, ld = round_up(D, 16);
  const bool in_place = key_rows_in_place(in, j0, n);
  float* dst = s.kt.data();
  for (index_t r0 = 0; r0 < n; r0 += 16) {
    const index_t m = std::min<index_t>(16, n - r0);
    const float* src[16];  // key r0 + r at src[r], r < m (rows past m load as zeros)
    if (in_place) {
      if constexpr (std::is_same_v<KV, float>)
        for (index_t r = 0; r < m; ++r) src[r] = in.k.ptr(b, j0 + r0 + r, h);
    } else {
      load_kv_tile(in.k, b, h, j0 + r0, m, 16, s.keys.data(), ld);
      rotate_key_rows(in, j0 + r0, m, s.keys.data(), ld);
      for (index_t r = 0; r < m; ++r) src[r] = s.keys.data() + r * ld;
    }
    // Whole rows and unmasked stores (rows are whole vectors, or s.keys zero past D), not
    // transpose_words: its masked edges took a T = 256 prefill from 2.50 to 2.62 ms (3
    // alternations, near idle).
    for (index_t c0 = 0; c0 < D; c0 += 16) {
      __m512i w[16];
      for (index_t r = 0; r < 16; ++r) w[r] = r < m ? _mm512_castps_si512(_mm512_loadu_ps(src[r] + c0)) : _mm512_setzero_si512();
      transpose_words_16x16(w);
      const index_t features = std::min<index_t>(16, D - c0);
      for (index_t c = 0; c < features; ++c) _mm512_storeu_ps(dst + (c0 + c) * T + r0, _mm512_castsi512_ps(w[c]));
    }
  }
  const index_t rows_end = round_up(n, 16);
  if (rows_end < T)
    for (index_t c = 0; c < D; ++c) std::fill(dst + c * T + rows_end, dst + (c + 1) * T, 0.f);
}
#endif

// The key tile of keys [j0, j0 + n) of head h transposed into s.kt (rotated where the rope asks):
// in registers where AVX512F is (core/register_transpose.hpp), else the scalar transposing loads.
template <class KV, class Q>
void load_key_tile(const AttentionInputs<KV, Q>& in, index_t b, index_t h, index_t j0, index_t n, FlashScratch& s) {
  const index_t T = kFlashKeyTile;
#if defined(__AVX512F__)
  if (T % 16 == 0) return load_key_tile_by_blocks(in, b, h, j0, n, s);
#endif
  if (tile_needs_rotation(in, j0, n))
    load_key_tile_rotated(in, b, h, j0, n, T, s.kt.data(), T, s.row.data());
  else
    load_kv_tile_transposed(in.k, b, h, j0, n, T, s.kt.data(), T, s.row.data());
}

// flash_block's load_tile for K/V tiles read from in.k / in.v (batch row b, KV head hk), keys
// rotated on loading where the call's rope asks for it.
template <class KV, class Q>
auto dense_tile_loader(const AttentionInputs<KV, Q>& in, index_t b, index_t hk) {
  return [&in, b, hk](index_t j0, index_t n, FlashScratch& s) {
    const index_t T = kFlashKeyTile, Dvp = round_up(in.v.size(3), simd::kWidth);
    load_key_tile(in, b, hk, j0, n, s);
    load_kv_tile(in.v, b, hk, j0, n, T, s.v.data(), Dvp);
  };
}

// The same with the K/V tiles read from in.k / in.v.
template <class KV, class Q, class SelectTiles>
void flash_block(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options,
                 const AttentionDims& d, float scale, index_t b, index_t hk, index_t i0, index_t nq, FlashScratch& w,
                 SelectTiles&& select_tiles) {
  flash_block(in, out, options, d, scale, b, hk, i0, nq, w, select_tiles, dense_tile_loader(in, b, hk));
}

// The bf16 K/V tiles of a whole call in the dot-product layout (pack_call_kv_tiles), packed once
// before its tasks instead of by every task that visits them: in a causal prefill a KV head's tile
// j is visited by every query block from j on, so llama3-8b at T = 1024 (16 blocks of 64
// queries) packed 136 tiles per head where 16 are distinct; packing (strided, latency-bound
// loads of K and V rows from L2 / L3, and their transposes) was ~16% of the bf16 call there
// (perf, one thread). Tile i = (b * Hkv + hk) * tiles + j0 / kFlashKeyTile holds its keys
// [Dkw x 64] at words + i * tile_words, then its values [32 x Dvp] (see pack_key_tile_bf16 /
// pack_value_tile_bf16). words is null where nothing was packed (tasks pack their own tiles).
struct PackedKvTiles {
  const std::uint32_t* words = nullptr;
  const std::uint8_t* usable = nullptr;  // per tile: 0 where the fp32 tile takes it (rope, NaN / inf)
  index_t Hkv = 0, tiles = 0, key_words = 0, tile_words = 0;

  index_t index(index_t b, index_t hk, index_t j0) const noexcept { return (b * Hkv + hk) * tiles + j0 / kFlashKeyTile; }
  const std::uint32_t* keys(index_t i) const noexcept { return words + i * tile_words; }
  const std::uint32_t* values(index_t i) const noexcept { return keys(i) + key_words; }
};

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// ---- bf16 dot-product tiles (AttentionOptions::bf16_compute = dot, bf16 K/V) -----------------
//
// The same task with both products in pair words (core/bf16_gemm.hpp): q rows rounded to bf16
// once per task, each key tile packed as [Dk / 2 x 64 keys] pair words straight from the bf16
// rows (no widening), the softmax in fp32 on the fp32 logits, its weights rounded to bf16 for
// P V against the value tile packed as [32 key pairs x Dv] words, accumulators fp32. Tiles the
// call's rope rotates, and tiles holding a non-finite key or value (whose weight-0 rules the fp32
// tile handles), take the fp32 tile instead; both keep the same (m, l, acc) state.

// Per-thread tiles of the bf16 form, grown on demand.
struct FlashBf16Scratch {
  AlignedVector<std::uint32_t> q, kt, v, p;
  static void grow(AlignedVector<std::uint32_t>& x, index_t n) {
    if (static_cast<index_t>(x.size()) < n) x.resize(static_cast<std::size_t>(n));
  }
  void reserve(index_t M, index_t Dkw, index_t Dvw) {
    grow(q, M * Dkw), grow(kt, Dkw * kFlashKeyTile), grow(v, kFlashKeyTile / 2 * Dvw), grow(p, M * kFlashKeyTile / 2);
  }
  static FlashBf16Scratch& local() {
    thread_local FlashBf16Scratch scratch;
    return scratch;
  }
};

// 32 bf16 of a row from feature c0 on, zero past D (any stride).
inline __m512i load_bf16_chunk(const bf16* src, index_t stride, index_t D, index_t c0) noexcept {
  const index_t m = std::min<index_t>(32, D - c0);
  if (stride == 1) {
    const __mmask32 mask = m >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << m) - 1u);
    return _mm512_maskz_loadu_epi16(mask, src + c0);
  }
  alignas(64) std::uint16_t lanes[32] = {};
  for (index_t c = 0; c < m; ++c) lanes[c] = src[(c0 + c) * stride].bits;
  return _mm512_load_si512(lanes);
}

// Keys [j0, j0 + n) of head h as kt[c * 64 + r] = (k[r][2c], k[r][2c + 1]) for c < Dkw, zero past
// n keys and Dk features. False if a key holds an infinity or a NaN. Blocks of 16 keys x 16 pair
// words are transposed in registers (transpose_words_16x16, core/register_transpose.hpp; a word at a
// time, the transpose took 4096 scalar stores per tile at Dk = 128).
inline bool pack_key_tile_bf16(const ConstView<bf16, 4>& x, index_t b, index_t h, index_t j0, index_t n, index_t Dkw,
                               std::uint32_t* kt) {
  const index_t D = x.size(3), T = kFlashKeyTile, rows_end = round_up(n, 16);
  __mmask32 bad = 0;
  __m512i w[16];
  for (index_t r0 = 0; r0 < n; r0 += 16) {
    const bf16* src[16];
    for (index_t i = 0; i < 16; ++i) src[i] = r0 + i < n ? x.ptr(b, j0 + r0 + i, h) : nullptr;
    for (index_t c0 = 0; c0 < Dkw; c0 += 16) {
      for (index_t i = 0; i < 16; ++i) {
        w[i] = src[i] ? load_bf16_chunk(src[i], x.stride(3), D, 2 * c0) : _mm512_setzero_si512();
        bad |= bf16_nonfinite(w[i]);
      }
      transpose_words_16x16(w);
      const index_t words = std::min<index_t>(16, Dkw - c0);
      for (index_t c = 0; c < words; ++c) _mm512_storeu_si512(kt + (c0 + c) * T + r0, w[c]);
    }
  }
  if (rows_end < T)
    for (index_t c = 0; c < Dkw; ++c) std::fill(kt + c * T + rows_end, kt + (c + 1) * T, 0u);
  return bad == 0;
}

// Values [j0, j0 + n) of head h as v[p * Dvw + c] = (v[2p][c], v[2p + 1][c]) for the 32 key
// pairs and c < Dvw, zero past n keys and Dv features. False if a value is infinite or NaN.
inline bool pack_value_tile_bf16(const ConstView<bf16, 4>& x, index_t b, index_t h, index_t j0, index_t n,
                                 index_t Dvw, std::uint32_t* v) {
  const index_t D = x.size(3);
  __mmask32 bad = 0;
  const __m512i zero = _mm512_setzero_si512();
  for (index_t p = 0; p < kFlashKeyTile / 2; ++p) {
    const index_t r0 = 2 * p, r1 = 2 * p + 1;
    for (index_t c0 = 0; c0 < Dvw; c0 += 32) {
      const __m512i x0 = r0 < n ? load_bf16_chunk(x.ptr(b, j0 + r0, h), x.stride(3), D, c0) : zero;
      const __m512i x1 = r1 < n ? load_bf16_chunk(x.ptr(b, j0 + r1, h), x.stride(3), D, c0) : zero;
      bad |= bf16_nonfinite(x0) | bf16_nonfinite(x1);
      __m512i lo, hi;
      interleave_bf16_rows(x0, x1, lo, hi);
      _mm512_storeu_si512(v + p * Dvw + c0, lo);
      if (c0 + 16 < Dvw) _mm512_storeu_si512(v + p * Dvw + c0 + 16, hi);
    }
  }
  return bad == 0;
}

// Above this the call's packed tiles (as many bytes as its K and V) are not kept: its tasks pack
// their own. 64 MB holds llama3-8b's K and V up to T = 16384 (2 MB per 1024 tokens).
constexpr std::size_t kMaxPackedKvBytes = std::size_t{64} << 20;

// The key tiles `visited` (b * tiles + j0 / kFlashKeyTile, for every KV head) of the call packed
// once (PackedKvTiles), one tile of one head per executor task, into this thread's buffer (kept
// across calls, grown on demand: the call's caller owns it until it returns); tiles no task
// visits are left as they were. Empty when the buffer would pass kMaxPackedKvBytes.
template <class Q>
PackedKvTiles pack_kv_tiles_bf16(const AttentionInputs<bf16, Q>& in, const AttentionDims& d,
                                 const std::vector<index_t>& visited, const Executor& executor) {
  const index_t T = kFlashKeyTile, Dkw = round_up(d.Dk, simd::kWidth) / 2, Dvp = round_up(d.Dv, simd::kWidth);
  PackedKvTiles p;
  p.Hkv = d.Hkv, p.tiles = (d.Tk + T - 1) / T, p.key_words = Dkw * T, p.tile_words = p.key_words + T / 2 * Dvp;
  const index_t count = d.B * d.Hkv * p.tiles;
  if (static_cast<std::size_t>(count * p.tile_words) * sizeof(std::uint32_t) > kMaxPackedKvBytes) return {};
  struct Buffer {
    AlignedVector<std::uint32_t> words;
    std::vector<std::uint8_t> usable;
  };
  thread_local Buffer buffer;
  if (static_cast<index_t>(buffer.words.size()) < count * p.tile_words)
    buffer.words.resize(static_cast<std::size_t>(count * p.tile_words));
  buffer.usable.resize(static_cast<std::size_t>(count));
  std::uint32_t* const words = buffer.words.data();
  std::uint8_t* const usable = buffer.usable.data();
  executor.run(static_cast<index_t>(visited.size()) * d.Hkv, [&](index_t task) {
    const index_t bt = visited[static_cast<std::size_t>(task / d.Hkv)], hk = task % d.Hkv;
    const index_t b = bt / p.tiles, t = bt % p.tiles, i = p.index(b, hk, t * T);
    const index_t j0 = t * T, n = std::min(T, d.Tk - j0);
    std::uint32_t* tile = words + i * p.tile_words;
    usable[i] = !tile_needs_rotation(in, j0, n) && pack_key_tile_bf16(in.k, b, hk, j0, n, Dkw, tile) &&
                pack_value_tile_bf16(in.v, b, hk, j0, n, Dvp, tile + p.key_words);
  });
  p.words = words, p.usable = usable;
  return p;
}

// The diagonal tiles' products (see gemm_scores) on pair words: S over the 32-key
// panels some row of each block of kBf16GemmRows rows sees, P V over the key pairs its rows
// reach, so the bf16 form keeps the fp32 form's saving on tiles that cross the diagonal.
inline void gemm_bf16_scores_to_ends(const std::uint32_t* A, index_t lda, const std::uint32_t* B, index_t ldb, float* C,
                                     index_t ldc, index_t M, index_t N, index_t K, const index_t* ends) noexcept {
  for (index_t c = 0; c < N; c += 32)  // N: kFlashKeyTile, a multiple of 32
    for (index_t r = 0; r < M; r += kBf16GemmRows) {
      const index_t rows = std::min<index_t>(kBf16GemmRows, M - r);
      if (block_end(ends, r, rows) > c)
        gemm_bf16_columns<2>(A + r * lda, lda, B + c, ldb, C + r * ldc + c, ldc, rows, K, nullptr);
    }
}

template <int NV>
void gemm_bf16_values_panel(const std::uint32_t* P, index_t ldp, const std::uint32_t* V, index_t ldv, float* acc,
                            index_t ldacc, index_t M, const float* alpha, const index_t* ends) noexcept {
  for (index_t r = 0; r < M; r += kBf16GemmRows) {
    const index_t rows = std::min<index_t>(kBf16GemmRows, M - r), pairs = (block_end(ends, r, rows) + 1) / 2;
    gemm_bf16_columns<NV>(P + r * ldp, ldp, V, ldv, acc + r * ldacc, ldacc, rows, pairs, alpha ? alpha + r : nullptr);
  }
}

inline void gemm_bf16_values_to_ends(const std::uint32_t* P, index_t ldp, const std::uint32_t* V, index_t ldv,
                                     float* acc, index_t ldacc, index_t M, index_t N, const float* alpha,
                                     const index_t* ends) noexcept {
  index_t c = 0;
  for (; c + 64 <= N; c += 64) gemm_bf16_values_panel<4>(P, ldp, V + c, ldv, acc + c, ldacc, M, alpha, ends);
  for (; c + 32 <= N; c += 32) gemm_bf16_values_panel<2>(P, ldp, V + c, ldv, acc + c, ldacc, M, alpha, ends);
  for (; c < N; c += 16) gemm_bf16_values_panel<1>(P, ldp, V + c, ldv, acc + c, ldacc, M, alpha, ends);
}

// flash_block over in.k / in.v with bf16 dot-product tiles (see above).
template <class Q, class SelectTiles>
void flash_block_bf16(const AttentionInputs<bf16, Q>& in, const AttentionOutputs& out, const AttentionOptions& options,
                      const AttentionDims& d, float scale, index_t b, index_t hk, index_t i0, index_t nq,
                      FlashScratch& w, SelectTiles&& select_tiles, const DistanceBiasCache* cache,
                      const PackedKvTiles& call_tiles) {
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth), T = kFlashKeyTile;
  const index_t Dkw = Dkp / 2, Kw = (d.Dk + 1) / 2;  // pair words per q row / holding features
  const LogitRule<bf16, Q> rule{in, options, d.Tk, cache};
  const index_t M = flash_begin(in, d, scale, b, hk, i0, nq, w);
  FlashBf16Scratch& x = FlashBf16Scratch::local();
  x.reserve(M, Dkw, Dvp);
  for (index_t r = 0; r < M; ++r) floats_to_bf16_pairs(w.q.data() + r * Dkp, Dkp, x.q.data() + r * Dkw);
  for (const KeyTile& tile : select_tiles(w.pos.data(), M)) {
    const index_t j0 = tile.j0, n = tile.n;
    const std::uint32_t *kt = x.kt.data(), *vt = x.v.data();
    bool packed = false;
    if (call_tiles.words) {
      const index_t i = call_tiles.index(b, hk, j0);
      kt = call_tiles.keys(i), vt = call_tiles.values(i), packed = call_tiles.usable[i] != 0;
    } else {
      packed = !tile_needs_rotation(in, j0, n) && pack_key_tile_bf16(in.k, b, hk, j0, n, Dkw, x.kt.data()) &&
               pack_value_tile_bf16(in.v, b, hk, j0, n, Dvp, x.v.data());
    }
    if (!packed) {
      dense_tile_loader(in, b, hk)(j0, n, w);
      flash_tile(rule, d, b, hk, i0, M, j0, n, w);
      continue;
    }
    const bool diagonal = diagonal_row_ends(rule, j0, n, M, w);
    if (diagonal)
      gemm_bf16_scores_to_ends(x.q.data(), Dkw, kt, T, w.s.data(), T, M, T, Kw, w.ends.data());
    else
      gemm_bf16(x.q.data(), Dkw, kt, T, w.s.data(), T, M, T, Kw, nullptr);
    flash_softmax(rule, d, b, hk, i0, M, j0, n, w, diagonal ? w.ends.data() : nullptr);
    for (index_t r = 0; r < M; ++r) floats_to_bf16_pairs(w.s.data() + r * T, T, x.p.data() + r * (T / 2));
    const float* alpha = first_rescale(w);
    if (diagonal)
      gemm_bf16_values_to_ends(x.p.data(), T / 2, vt, Dvp, w.acc.data(), Dvp, M, Dvp, alpha, w.ends.data());
    else
      gemm_bf16(x.p.data(), T / 2, vt, Dvp, w.acc.data(), Dvp, M, Dvp, (n + 1) / 2, alpha);
  }
  flash_finish(in, out, d, b, hk, i0, M, w);
}
#endif

// The dense prefill's task: flash_block over in.k / in.v, with bf16 dot-product tiles where the
// call asks for them and the target has them.
template <class KV, class Q, class SelectTiles>
void flash_block_dense(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options,
                       const AttentionDims& d, float scale, index_t b, index_t hk, index_t i0, index_t nq,
                       FlashScratch& w, SelectTiles&& select_tiles, const DistanceBiasCache* cache,
                       [[maybe_unused]] const PackedKvTiles& call_tiles = {}) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<KV, bf16>)
    if (options.bf16_compute == Bf16Compute::dot)
      return flash_block_bf16(in, out, options, d, scale, b, hk, i0, nq, w, select_tiles, cache, call_tiles);
#endif
  flash_block(in, out, options, d, scale, b, hk, i0, nq, w, select_tiles, dense_tile_loader(in, b, hk), cache);
}

// The per-offset bias of a prefill whose keys lie within `distances` of every query and whose
// lowest query position is `lowest_position`, when its kind is worth a table and the queries
// are many enough (each offset is then looked up by many rows); empty otherwise.
inline DistanceBiasCache prefill_bias_cache(const RelativeBias& rb, index_t Hq, index_t Tq, index_t distances,
                                            index_t lowest_position, const Executor& executor) {
  constexpr index_t kMinQueries = 16;  // below, the table costs about what it saves
  if (!DistanceBiasCache::wanted(rb) || Tq < kMinQueries) return {};
  return DistanceBiasCache::build(rb, Hq, distances, executor, lowest_position);
}

// The lowest query position of an unpacked call (default positions: Tk - Tq).
template <class KV, class Q>
index_t lowest_query_position(const AttentionInputs<KV, Q>& in, const AttentionDims& d) {
  if (!in.positions.has_value()) return d.Tk - d.Tq;
  index_t lowest = std::numeric_limits<index_t>::max();
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i) lowest = std::min(lowest, in.positions(b, i));
  return lowest;
}

// One block of queries [i0, i0 + nq) of batch row b: an unpacked prefill's task for each KV head.
struct QueryBlock {
  index_t b, i0, nq;
  double cost;  // (query, key) pairs its rows see
};

// The query blocks of an unpacked prefill, most expensive first: cost = the (query, key) pairs
// their rows can see (a causal block j visits j + 1 key tiles), ties in (b, i0) order. Handed
// out in this order one at a time (Executor::run's counter), the costly blocks start first and
// a call ends on its cheapest blocks (one key tile each, causal), so when one thread starts late
// or runs slower (a shared machine, a core taken by another process) the other waits for at
// most such a block. The former tasks of two blocks (j and blocks-1-j, equal cost) split as
// equally on two equal threads (task CPU times list-scheduled: within 1-3% of an even split,
// llama3-8b T = 256), but parallel_for handed them out in 8 runs of 2 tasks, ~0.6 ms of a
// 2.9 ms call, which a slowed thread could leave the other to wait for.
template <class KV, class Q>
std::vector<QueryBlock> prefill_blocks_by_cost(const AttentionInputs<KV, Q>& in, const AttentionOptions& options,
                                               const AttentionDims& d, index_t bq) {
  std::vector<QueryBlock> blocks;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i0 = 0; i0 < d.Tq; i0 += bq) {
      const index_t nq = std::min(bq, d.Tq - i0);
      double pairs = 0;
      for (index_t i = i0; i < i0 + nq; ++i) {
        const VisibleKeys v = visible_keys(options, query_position(in, b, i), d.Tk);  // sink_end <= lo
        pairs += static_cast<double>(v.sink_end + std::max<index_t>(v.hi - v.lo, 0));
      }
      blocks.push_back({b, i0, nq, pairs});
    }
  std::stable_sort(blocks.begin(), blocks.end(), [](const QueryBlock& x, const QueryBlock& y) { return x.cost > y.cost; });
  return blocks;
}

// The call's K/V tiles packed once for the bf16 dot-product tasks (PackedKvTiles): the tiles its
// query blocks visit, where some tile is visited by more than one block (with one block, or
// windows that do not overlap, each task packing its own costs no more); empty otherwise, and
// for fp32 products or on targets without AVX512-BF16.
template <class KV, class Q>
PackedKvTiles pack_call_kv_tiles(const AttentionInputs<KV, Q>& in, const AttentionOptions& options,
                                 const AttentionDims& d, const std::vector<QueryBlock>& blocks,
                                 const Executor& executor) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<KV, bf16>) {
    if (options.bf16_compute != Bf16Compute::dot || blocks.size() < 2) return {};
    const index_t tiles = (d.Tk + kFlashKeyTile - 1) / kFlashKeyTile;
    std::vector<bool> seen(static_cast<std::size_t>(d.B * tiles), false);
    std::vector<index_t> visited, positions;
    std::size_t visits = 0;
    for (const QueryBlock& block : blocks) {
      positions.resize(static_cast<std::size_t>(block.nq));
      for (index_t i = 0; i < block.nq; ++i) positions[static_cast<std::size_t>(i)] = query_position(in, block.b, block.i0 + i);
      for (const index_t j0 : visible_tiles(options, positions.data(), block.nq, d.Tk, kFlashKeyTile)) {
        const index_t bt = block.b * tiles + j0 / kFlashKeyTile;
        ++visits;
        if (!seen[static_cast<std::size_t>(bt)]) seen[static_cast<std::size_t>(bt)] = true, visited.push_back(bt);
      }
    }
    if (visits == visited.size()) return {};
    return pack_kv_tiles_bf16(in, d, visited, executor);
  }
#endif
  (void)in, (void)options, (void)d, (void)blocks, (void)executor;
  return {};
}

// One task of a packed call: query block [i0, i0 + nq) of one sequence against KV head hk.
struct VarlenTask {
  index_t seq, hk, i0, nq;
  double cost;  // (query, key) pairs it visits, for the longest-first order
};

// Packed (cu_seqlens) prefill: each sequence is tiled on its own, so a sequence of n tokens costs
// about what n tokens cost (a 17-token sequence is one block of 17 queries against one key
// tile), and no block mixes sequences. Tasks (sequence, KV head, query block) are handed out
// most expensive first, one at a time (Executor::run's counter), so a long sequence's late
// causal blocks start early and short ones fill the gaps at the end.
template <class KV, class Q>
void attention_flash_varlen(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options,
                            const AttentionDims& d, const Executor& executor) {
  const SequenceMap seqs = SequenceMap::make("attention_flash", in.batch, d.B, d.Tq, false, -1);
  const float scale = attention_scale(options, d.Dk);
  const index_t G = d.group(), bq = flash_query_block(G, seqs.max_tokens());
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth);
  std::vector<VarlenTask> tasks;
  for (index_t n = 0; n < seqs.sequences(); ++n) {
    const index_t L = seqs[n].tokens;
    for (index_t i0 = 0; i0 < L; i0 += bq) {
      const index_t nq = std::min(bq, L - i0);
      index_t keys = options.causal ? i0 + nq : L;
      if (options.window > 0) keys = std::min(keys, options.window + nq + options.sink_tokens);
      for (index_t hk = 0; hk < d.Hkv; ++hk)
        tasks.push_back({n, hk, i0, nq, static_cast<double>(nq) * static_cast<double>(keys)});
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const VarlenTask& a, const VarlenTask& b) { return a.cost > b.cost; });
  // Positions are local to each sequence: distances stay below the longest one.
  const DistanceBiasCache cache =
      prefill_bias_cache(in.relative_bias, d.Hq, seqs.max_tokens(), seqs.max_tokens(), 0, executor);
  const DistanceBiasCache* const table = cache.built() ? &cache : nullptr;
  executor.run(static_cast<index_t>(tasks.size()), [&](index_t t) {
    const VarlenTask& task = tasks[static_cast<std::size_t>(t)];
    const SequenceSpan span = seqs[task.seq];
    const AttentionInputs<KV, Q> one = sequence_inputs(in, span);
    const AttentionOutputs one_out = sequence_outputs(out, span);
    const AttentionDims one_dims{1, span.tokens, span.tokens, d.Hq, d.Hkv, d.Dk, d.Dv};
    // One scratch per thread (tasks are too small to allocate each).
    FlashScratch& scratch = FlashScratch::local(bq * G, d.Dk, Dkp, Dvp);
    flash_block_dense(one, one_out, options, one_dims, scale, 0, task.hk, task.i0, task.nq, scratch,
                      [&](const index_t* positions, index_t rows) { return dense_key_tiles(options, positions, rows, span.tokens); },
                      table);
  });
}

}  // namespace detail

/// Tiled prefill: same arguments and results as reference::attention, for any Tq. Keeps one
/// scratch per thread across calls (about (2 * rows + 64) * (D + 64) floats, made anew when the
/// shape changes), allocates none inside the loops. With bf16_compute = dot on bf16 K/V the
/// calling thread also keeps the call's packed K/V tiles (as many bytes as K and V, at most
/// 64 MB; detail::PackedKvTiles), grown on demand.
template <class KV, class Q>
void attention_flash(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options = {},
                     const Executor& executor = serial_executor()) {
  using namespace detail;
  const auto d = validate_attention("attention_flash", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  if (in.batch.packed()) return attention_flash_varlen(in, out, options, d, executor);
  const float scale = attention_scale(options, d.Dk);
  const index_t G = d.group(), bq = flash_query_block(G, d.Tq);
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth);
  // T5 / KERPLE / FIRE per offset, once per call: with the default positions every offset is
  // within Tk (given positions farther away fall back to the formula, key by key).
  const DistanceBiasCache cache =
      prefill_bias_cache(in.relative_bias, d.Hq, d.Tq, d.Tk, lowest_query_position(in, d), executor);
  const DistanceBiasCache* const table = cache.built() ? &cache : nullptr;
  // One task per (query block, KV head), handed out one at a time most expensive first
  // (prefill_blocks_by_cost), so the tasks that end a call are the cheapest ones.
  const std::vector<QueryBlock> order = prefill_blocks_by_cost(in, options, d, bq);
  const PackedKvTiles call_tiles = pack_call_kv_tiles(in, options, d, order, executor);
  executor.run(static_cast<index_t>(order.size()) * d.Hkv, [&](index_t t) {
    const QueryBlock& block = order[static_cast<std::size_t>(t / d.Hkv)];
    FlashScratch& scratch = FlashScratch::local(bq * G, d.Dk, Dkp, Dvp);
    flash_block_dense(in, out, options, d, scale, block.b, t % d.Hkv, block.i0, block.nq, scratch,
                      [&](const index_t* positions, index_t rows) { return dense_key_tiles(options, positions, rows, d.Tk); },
                      table, call_tiles);
  });
}

/// Dense attention (SPEC section 5), the fast form: split-KV decode for a few queries, tiled
/// prefill otherwise (and for packed sequences). Same arguments and results as
/// reference::attention.
template <class KV, class Q>
void attention(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options = {},
               const Executor& executor = serial_executor()) {
  // Up to 4 queries, one tile of queries per KV head is too little work to spread over threads,
  // so the keys are split instead. Packed sequences are tiled one by one (attention_flash).
  if (in.q.size(1) <= 4 && !in.batch.packed())
    attention_step(in, out, options, executor);
  else
    attention_flash(in, out, options, executor);
}

}  // namespace seqmix
