// attention_merge, and the online-softmax accumulator that every fast attention form shares.
//
// A partial attention result over a key set K is (o, lse) with o = sum_K p_j v_j / sum_K p_j and
// lse = log sum_K exp(s_j). Two results over disjoint key sets combine as
//   lse = logaddexp(lse1, lse2),   o = exp(lse1 - lse) o1 + exp(lse2 - lse) o2,
// which is associative and commutative (it is the monoid of SPEC section 2 in normalized form).
// A part with lse = -inf (no visible key) has weight 0; two such parts give o = 0, lse = -inf.
//
// Inside the kernels the same monoid is kept unnormalized per row: (m, l, acc) with
// l = sum exp(s_j - m), acc = sum exp(s_j - m) v_j, so a new tile only rescales by exp(m_old - m).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {
namespace detail {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// acc[0..n) *= factor.
inline void scale_row(float* acc, index_t n, float factor) noexcept {
  const simd::Batch<float> f(factor);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(acc + c, simd::load(acc + c) * f);
  for (index_t c = nv; c < n; ++c) acc[c] *= factor;
}

inline float row_max(const float* s, index_t n) noexcept {
  simd::Batch<float> m(kMinusInf);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth) m = xsimd::max(m, simd::load(s + j));
  float top = nv > 0 ? simd::reduce_max(m) : kMinusInf;
  for (index_t j = nv; j < n; ++j) top = std::max(top, s[j]);
  return top;
}

// The two halves of online_softmax_tile for a row whose new maximum m_new (= max(m, row_max(s,
// n))) is finite: softmax_tile_exps replaces s by p = exp(s - m_new) and returns their sum;
// softmax_tile_update folds that sum into (m, l) and returns the factor exp(m - m_new) for the
// accumulator. The prefill runs them as passes over a tile's rows (flash_softmax), so the rows'
// independent reductions and exps overlap instead of waiting on each row's branches. Every
// s - m_new is <= 0 (or NaN), so the exp is simd::exp_nonpositive.
inline float softmax_tile_exps(float* s, index_t n, float m_new) noexcept {
  const simd::Batch<float> shift(m_new);
  simd::Batch<float> sum(0.f);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const simd::Batch<float> p = simd::exp_nonpositive(simd::load(s + j) - shift);
    simd::store(s + j, p);
    sum += p;
  }
  float total = simd::reduce_add(sum);
  for (index_t j = nv; j < n; ++j) {
    s[j] = std::exp(s[j] - m_new);
    total += s[j];
  }
  return total;
}

inline float softmax_tile_update(float& m, float& l, float m_new, float total) noexcept {
  // The running maximum held (most rows of most tiles): exp(0) = 1 without the libm call, which
  // was a scalar exp per row of every tile.
  const float alpha = m == m_new ? 1.f : m == kMinusInf ? 0.f : std::exp(m - m_new);
  l = l * alpha + total;
  m = m_new;
  return alpha;
}

// One row of the online softmax over a new tile of logits s[0..n) (-inf = invisible). Replaces
// s by p = exp(s - m_new), updates (m, l) and returns the factor exp(m_old - m_new) the caller
// applies to its accumulator. A row that has seen no visible key keeps m = -inf, l = 0, p = 0.
// A NaN logit makes l NaN (so the row's lse and o come out NaN, as the reference's): through
// p = exp(NaN - m), or, when row_max's vector max dropped it and saw nothing else, through m.
inline float online_softmax_tile(float* s, index_t n, float& m, float& l) noexcept {
  float m_new = std::max(m, row_max(s, n));
  if (m_new == kMinusInf) {
    if (std::none_of(s, s + n, [](float x) { return std::isnan(x); })) {
      std::fill(s, s + n, 0.f);
      return 1.f;
    }
    m_new = std::numeric_limits<float>::quiet_NaN();
  }
  const float total = softmax_tile_exps(s, n, m_new);
  return softmax_tile_update(m, l, m_new, total);
}

// Unnormalized online-softmax state of one row: the (m, l) pair; acc lives beside it.
struct SoftmaxRow {
  float m = kMinusInf;
  float l = 0.f;
};

// Folds the unnormalized state (m2, l2, acc2) into (m1, l1, acc1): the monoid's combine.
inline void combine_rows(SoftmaxRow& a, float* acc_a, const SoftmaxRow& b, const float* acc_b, index_t n) noexcept {
  if (b.m == kMinusInf) return;
  if (a.m == kMinusInf) {
    a = b;
    std::copy(acc_b, acc_b + n, acc_a);
    return;
  }
  const float m = std::max(a.m, b.m);
  const float wa = std::exp(a.m - m), wb = std::exp(b.m - m);
  const simd::Batch<float> va(wa), vb(wb);
  const index_t nv = simd::vector_end(n);
  for (index_t c = 0; c < nv; c += simd::kWidth)
    simd::store(acc_a + c, simd::fma(va, simd::load(acc_a + c), vb * simd::load(acc_b + c)));
  for (index_t c = nv; c < n; ++c) acc_a[c] = wa * acc_a[c] + wb * acc_b[c];
  a.l = a.l * wa + b.l * wb;
  a.m = m;
}

// Sets `rows` partial rows (states and their [ld] accumulators) to the empty state: split-key
// decode tasks start their own rows, in parallel, rather than the caller all of them up front.
inline void start_rows(SoftmaxRow* states, float* accs, index_t rows, index_t ld) noexcept {
  std::fill(states, states + rows, SoftmaxRow{});
  std::fill(accs, accs + rows * ld, 0.f);
}

// Split-key decode (attention_step, kv_cache_attention) on many threads. Below this count each
// thread takes several pieces (the callers' measured counts on 2 cores: the pool's dynamic
// scheduling absorbs a slowed core) and the caller combines the rows alone (a few us). From it
// on, one piece per thread, since the pieces of a decode cost the same and each extra one adds a
// partial row to every output row, and the rows are combined in parallel: with 64 threads the
// serial combine of 128-256 pieces was 2-3% of the call, which alone idled ~60% of the cores.
constexpr int kDecodeManyThreads = 8;

inline index_t decode_pieces_per_thread(int threads, index_t few_threads) noexcept {
  return threads < kDecodeManyThreads ? few_threads : 1;
}

// Output rows per task of that parallel combine (`rows` rows of `pieces` partial rows of Dv
// floats): all rows on the calling thread below kDecodeManyThreads, else tasks reading at least
// kMinCombineFloats accumulator floats (64 KB: about 10 us of loads and FMAs, several times a
// task dispatch).
constexpr index_t kMinCombineFloats = 16 * 1024;
inline index_t combine_grain(int threads, index_t rows, index_t pieces, index_t Dv) noexcept {
  if (threads < kDecodeManyThreads) return std::max<index_t>(rows, 1);
  return std::max<index_t>(1, kMinCombineFloats / std::max<index_t>(1, pieces * Dv));
}

// A finished row's lse (exp(sink) added to the denominator when has_sink) and the factor that
// turns its acc into o: o = acc * factor (0 for a row without a visible key).
struct RowEnd {
  float lse, factor;
};

inline RowEnd finish_factor(const SoftmaxRow& row, bool has_sink, float sink) noexcept {
  // l = 0: no visible key. l NaN (a NaN or +inf logit): lse and o come out NaN.
  const bool seen = !(row.l <= 0.f);
  float lse = seen ? row.m + std::log(row.l) : kMinusInf;
  if (has_sink) {
    const float top = std::max(lse, sink);
    lse = top + std::log(std::exp(lse - top) + std::exp(sink - top));
  }
  // o = acc * exp(m) / exp(lse); exp(m - lse) / ... kept in one factor to stay in range.
  return {lse, seen ? std::exp(row.m - lse) : 0.f};
}

// Turns a finished row state into (o, lse), adding exp(sink) to the denominator when has_sink.
// o has stride o_stride; a row without a visible key gives zeros.
inline float finish_row(const SoftmaxRow& row, const float* acc, index_t n, bool has_sink, float sink, float* o,
                        index_t o_stride) noexcept {
  const auto [lse, factor] = finish_factor(row, has_sink, sink);
  if (o_stride == 1) {
    const simd::Batch<float> f(factor);
    const index_t nv = simd::vector_end(n);
    for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(o + c, simd::load(acc + c) * f);
    for (index_t c = nv; c < n; ++c) o[c] = acc[c] * factor;
  } else {
    for (index_t c = 0; c < n; ++c) o[c * o_stride] = acc[c] * factor;
  }
  return lse;
}

// Sink logit of a head without one (finish_pieces' `sink`).
constexpr float kNoSink = kMinusInf;

// Merges the partial states of one row's pieces, rows row_of(0), row_of(1), ... in key order,
// and writes the normalized row to o (stride o_stride); returns its lse. `sink` is the head's
// sink logit, or kNoSink.
template <class RowOf>
float finish_pieces(const SoftmaxRow* states, float* accs, index_t Dvp, index_t Dv, index_t pieces, float sink, float* o,
                    index_t o_stride, const RowOf& row_of) {
  SoftmaxRow row = states[row_of(0)];
  float* acc = accs + row_of(0) * Dvp;
  for (index_t piece = 1; piece < pieces; ++piece)
    combine_rows(row, acc, states[row_of(piece)], accs + row_of(piece) * Dvp, Dv);
  return finish_row(row, acc, Dv, sink != kNoSink, sink != kNoSink ? sink : 0.f, o, o_stride);
}

// The split-key combine of a decode whose output rows come in groups of different sizes (the
// paged forms: one group per item of queries, or per (item, KV head)): runs finish(g, r) for
// every row r < first_row[g + 1] - first_row[g] of every group g < groups, each row once, over
// the groups' rows laid end to end in tasks of combine_grain rows (`pieces`: the most pieces a
// row merges). first_row holds groups + 1 ascending offsets, first_row[0] = 0.
template <class Finish>
void finish_row_groups(const Executor& executor, const index_t* first_row, index_t groups, index_t pieces, index_t Dv,
                       const Finish& finish) {
  const index_t total = first_row[groups];
  const index_t grain = combine_grain(executor.concurrency(), total, pieces, Dv);
  parallel_for(executor, total, grain, [&](index_t begin, index_t end) {
    index_t g = static_cast<index_t>(std::upper_bound(first_row, first_row + groups + 1, begin) - first_row) - 1;
    for (index_t row = begin; row < end; ++row) {
      while (row >= first_row[g + 1]) ++g;
      finish(g, row - first_row[g]);
    }
  });
}

}  // namespace detail

/// Combines two partial attention results over disjoint key sets (see the top of this file).
/// o1, o2, o: [B,Tq,H,Dv]; lse1, lse2, lse: [B,Tq,H]. o / lse may be the same views as o1 / lse1
/// (merging in place). If sink logits were used, give them to exactly one of the parts.
inline void attention_merge(const ConstView<float, 4>& o1, const ConstView<float, 3>& lse1,
                            const ConstView<float, 4>& o2, const ConstView<float, 3>& lse2,
                            const TensorView<float, 4>& o, const TensorView<float, 3>& lse,
                            const Executor& executor = serial_executor()) {
  const ArgCheck check("attention_merge");
  check.shape("o1", o1, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,H,Dv");
  const index_t B = o1.size(0), Tq = o1.size(1), H = o1.size(2), Dv = o1.size(3);
  check.shape("lse1", lse1, std::array<index_t, 3>{B, Tq, H}, "B,Tq,H");
  check.shape("o2", o2, std::array<index_t, 4>{B, Tq, H, Dv}, "B,Tq,H,Dv");
  check.shape("lse2", lse2, std::array<index_t, 3>{B, Tq, H}, "B,Tq,H");
  check.shape("o", o, std::array<index_t, 4>{B, Tq, H, Dv}, "B,Tq,H,Dv");
  check.shape("lse", lse, std::array<index_t, 3>{B, Tq, H}, "B,Tq,H");
  const index_t rows = B * Tq * H;
  parallel_for(executor, rows, std::max<index_t>(1, 4096 / std::max<index_t>(Dv, 1)), [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const index_t b = r / (Tq * H), i = r / H % Tq, h = r % H;
      const float l1 = lse1(b, i, h), l2 = lse2(b, i, h);
      const float top = std::isnan(l2) ? l2 : std::max(l1, l2);  // a NaN part makes the merge NaN
      float w1 = 0.f, w2 = 0.f, merged = detail::kMinusInf;
      if (top != detail::kMinusInf) {
        const float e1 = std::exp(l1 - top), e2 = std::exp(l2 - top);
        merged = top + std::log(e1 + e2);
        w1 = e1 / (e1 + e2);
        w2 = e2 / (e1 + e2);
      }
      // Read both inputs before writing: o may alias o1.
      for (index_t c = 0; c < Dv; ++c) {
        const float a = o1(b, i, h, c), bb = o2(b, i, h, c);
        o(b, i, h, c) = (w1 != 0.f ? w1 * a : 0.f) + (w2 != 0.f ? w2 * bb : 0.f);
      }
      lse(b, i, h) = merged;
    }
  });
}

}  // namespace seqmix
