// attention, split-KV decode: few queries (Tq = 1 in generation), long key sequence.
//
// Decode is bound by reading K and V once. The work of one (batch, KV head) is the
// [Tq * group] rows of every query head that shares the KV head, so each K/V row is read once
// for all of them; the visible key tiles are split into contiguous pieces spread over the
// executor (so one query uses every core), each piece keeps an unnormalized online-softmax state
// (m, l, acc), and the pieces are combined with the attention_merge monoid (merge.hpp).
//
// This header also holds the tile machinery the prefill (flash.hpp) shares: K/V tile loads with
// on-the-fly conversion to fp32, the logit rule (softcap, ALiBi, mask, visibility) applied to a
// tile of logits, and the register-blocked GEMM kernel used for P*V.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/cpu_kind.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {
namespace detail {

using FBatch = simd::Batch<float>;

inline index_t round_up(index_t n, index_t multiple) noexcept { return (n + multiple - 1) / multiple * multiple; }

// ---- K/V element conversion -------------------------------------------------------------------

// 16-bit K/V rows are widened kWidth at a time by half.hpp's loaders (bit-identical to the
// scalar conversions); the tile is converted once into L1 and then feeds all query heads of
// its KV group.
inline FBatch load_kv_batch(const f16* p) noexcept { return simd::load_f16(p); }
inline FBatch load_kv_batch(const bf16* p) noexcept { return simd::load_bf16(p); }

// dst[c] = float(src[c * stride]) for c < n. The one place K/V storage types are read, so a new
// storage type only needs a branch here.
template <class KV>
inline void kv_row_to_float(const KV* src, index_t stride, index_t n, float* dst) noexcept {
  if constexpr (std::is_same_v<KV, float>) {
    if (stride == 1) {
      std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
      return;
    }
  } else if constexpr (std::is_same_v<KV, f16> || std::is_same_v<KV, bf16>) {
    if (stride == 1) {
      const index_t nv = simd::vector_end(n);
      for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(dst + c, load_kv_batch(src + c));
      convert(src + nv, dst + nv, n - nv);  // the tail, scalar
      return;
    }
  }
  for (index_t c = 0; c < n; ++c) dst[c] = static_cast<float>(src[c * stride]);
}

// Rows [j0, j0 + n) of x[b, :, h, :] into dst [rows x ld] fp32, zero beyond n rows / D columns:
// the zero padding lets the kernels run whole vectors and whole tiles without tail cases.
template <class KV>
void load_kv_tile(const ConstView<KV, 4>& x, index_t b, index_t h, index_t j0, index_t n, index_t rows, float* dst,
                  index_t ld) {
  const index_t D = x.size(3);
  for (index_t r = 0; r < n; ++r) {
    kv_row_to_float(x.ptr(b, j0 + r, h), x.stride(3), D, dst + r * ld);
    std::fill(dst + r * ld + D, dst + (r + 1) * ld, 0.f);
  }
  std::fill(dst + n * ld, dst + rows * ld, 0.f);
}

// Same rows, transposed: dst[c * ld + r] = x[b, j0 + r, h, c], so that the q.k tile becomes a
// broadcast-FMA GEMM with keys along the vector lanes. `row` is a D-float scratch row.
template <class KV>
void load_kv_tile_transposed(const ConstView<KV, 4>& x, index_t b, index_t h, index_t j0, index_t n, index_t cols,
                             float* dst, index_t ld, float* row) {
  const index_t D = x.size(3);
  for (index_t r = 0; r < n; ++r) {
    kv_row_to_float(x.ptr(b, j0 + r, h), x.stride(3), D, row);
    for (index_t c = 0; c < D; ++c) dst[c * ld + r] = row[c];
  }
  if (n < cols)
    for (index_t c = 0; c < D; ++c) std::fill(dst + c * ld + n, dst + c * ld + cols, 0.f);
}

// ---- GEMM kernel -------------------------------------------------------------------------------

// Where a GEMM's rows go instead of C, when `rows` is set: row r, columns from `col` on, to
// rows[r] + col, each scaled by scale[r] (the flash prefill's last tile writes its normalized rows
// straight into o, flash.hpp's flash_output_rows).
struct ScaledRows {
  float* const* rows = nullptr;
  const float* scale = nullptr;
  index_t col = 0;
  ScaledRows from_row(index_t r) const noexcept { return rows ? ScaledRows{rows + r, scale + r, col} : ScaledRows{}; }
  ScaledRows from_col(index_t c) const noexcept { return rows ? ScaledRows{rows, scale, col + c} : ScaledRows{}; }
};

// C[MR x NV*W] = row_scale * C + A[MR x K] * B[K x NV*W], accumulators in registers.
// A is read by broadcast (any lda), B and C by whole vectors. With out.rows set, the result
// goes to out's rows (scaled) instead of C.
template <int MR, int NV>
inline void gemm_block(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc, index_t K,
                       const float* row_scale, ScaledRows out = {}) noexcept {
  // The unroll pragmas keep acc in registers at -O2 too: GCC 12 unrolls these fixed-count loops
  // completely only at -O3, and at -O2 left acc in memory (the prefill took twice its -O3 time).
  FBatch acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = row_scale ? simd::load(C + r * ldc + v * simd::kWidth) * FBatch(row_scale[r]) : FBatch(0.f);
  for (index_t k = 0; k < K; ++k) {
    FBatch bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = simd::load(B + k * ldb + v * simd::kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const FBatch a(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = simd::fma(a, bk[v], acc[r][v]);
    }
  }
  if (out.rows) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        simd::store(out.rows[r] + out.col + v * simd::kWidth, acc[r][v] * FBatch(out.scale[r]));
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) simd::store(C + r * ldc + v * simd::kWidth, acc[r][v]);
}

// 6 rows x 2 vectors: 12 accumulators + 2 B vectors + 1 broadcast fit the 16 registers of
// SSE2/AVX2 and leave room on AVX-512; with two FMA ports the loop is FMA-bound.
constexpr int kGemmRows = 6;

template <int NV>
inline void gemm_column_block(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc,
                              index_t M, index_t K, const float* row_scale, ScaledRows out = {}) noexcept {
  index_t r = 0;
  for (; r + kGemmRows <= M; r += kGemmRows)
    gemm_block<kGemmRows, NV>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, K, row_scale ? row_scale + r : nullptr,
                              out.from_row(r));
  const float* scale = row_scale ? row_scale + r : nullptr;
  const ScaledRows rest = out.from_row(r);
  A += r * lda, C += r * ldc;
  switch (M - r) {  // the ragged rows in one pass over B, not one pass per row
    case 5: gemm_block<5, NV>(A, lda, B, ldb, C, ldc, K, scale, rest); break;
    case 4: gemm_block<4, NV>(A, lda, B, ldb, C, ldc, K, scale, rest); break;
    case 3: gemm_block<3, NV>(A, lda, B, ldb, C, ldc, K, scale, rest); break;
    case 2: gemm_block<2, NV>(A, lda, B, ldb, C, ldc, K, scale, rest); break;
    case 1: gemm_block<1, NV>(A, lda, B, ldb, C, ldc, K, scale, rest); break;
    default: break;
  }
}

// C[M x N] = diag(row_scale) C + A[M x K] B[K x N] (C = A B when row_scale is null).
// N must be a multiple of the vector width (callers pad with zeros).
inline void gemm(const float* A, index_t lda, const float* B, index_t ldb, float* C, index_t ldc, index_t M, index_t N,
                 index_t K, const float* row_scale) noexcept {
  const index_t W = simd::kWidth;
  index_t c = 0;
  // A few rows (a short query block): 4-vector column blocks halve the broadcasts of A per FMA.
  if (M <= 4)
    for (; c + 4 * W <= N; c += 4 * W) gemm_column_block<4>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
  // Column blocks outer: one B panel (K x 2W) stays in L1 while every row block streams past.
  for (; c + 2 * W <= N; c += 2 * W) gemm_column_block<2>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
  for (; c < N; c += W) gemm_column_block<1>(A, lda, B + c, ldb, C + c, ldc, M, K, row_scale);
}

// ---- logits --------------------------------------------------------------------------------

// The keys visible to one query: [0, sink_end) and [lo, hi).
struct VisibleKeys {
  index_t sink_end, lo, hi;
};

inline VisibleKeys visible_keys(const AttentionOptions& options, index_t pos, index_t Tk) noexcept {
  const index_t hi = options.causal ? std::clamp<index_t>(pos + 1, 0, Tk) : Tk;
  const index_t lo = options.window > 0 ? std::clamp<index_t>(pos - options.window + 1, 0, hi) : 0;
  const index_t sink_end = options.window > 0 ? std::min(options.sink_tokens, lo) : 0;
  return {sink_end, lo, hi};
}

// A call's relative bias per key offset rel = j - pos, rel in [-reach, reach], for T5, KERPLE
// and FIRE prefill: bias[h * width() + reach + rel], relative_bias_value's values bit for bit,
// computed once per call so that a tile row adds one contiguous slice of it instead of taking a
// bucket log / log / pow / MLP per logit. T5's table stops at max_distance, beyond which every
// offset takes the value at its end (`clamps`). FIRE's normalizer depends on the query's
// position above its threshold L, so there only rows at positions <= L use the table; the rows
// above take FIRE's lines (below).
struct DistanceBiasCache {
  std::vector<float> bias;
  index_t reach = -1;  // -1: no table
  bool clamps = false;  // offsets past the reach take the value at the nearer end (T5)
  double limit = std::numeric_limits<double>::infinity();  // rows at positions <= limit use the table

  // FIRE above L: a head's MLP b2 + sum_k w2 relu(w1 x + b1) is piecewise linear in x, alpha +
  // beta x between the units' kinks x = -b1 / w1, so a row takes one line per run of keys, with
  // psi(|rel|) from a table, instead of W units per logit. Within double rounding of fire_value.
  struct FireLine {
    double x_end, alpha, beta;  // alpha + beta x for x below x_end (the last line's is +inf)
  };
  std::vector<FireLine> fire_lines;  // head h's: [fire_first[h], fire_first[h + 1]), by x_end
  std::vector<index_t> fire_first;
  std::vector<double> fire_psi;  // psi(|rel|) = ln(1 + c |rel|) at reach + rel
  std::vector<double> fire_kinks;  // build_fire_lines's scratch, kept for its storage

  bool built() const noexcept { return reach >= 0; }
  bool covers(index_t pos) const noexcept { return static_cast<double>(pos) <= limit; }
  index_t width() const noexcept { return 2 * reach + 1; }

  // Worth building for these kinds only (none has nothing to cache; a distance table is one).
  static bool wanted(const RelativeBias& rb) noexcept {
    return rb.kind == RelativeBiasKind::t5 || rb.kind == RelativeBiasKind::kerple_log ||
           rb.kind == RelativeBiasKind::kerple_power || rb.kind == RelativeBiasKind::fire;
  }

  // The table of Hq heads for keys within `distances` of every query, heads spread over the
  // executor (T5: within max_distance, if nearer). `lowest_position` is the call's lowest query
  // position: FIRE rows above L take the lines, so when every row lies above L (a late chunk of
  // a long prefill) no row would read the per-offset table, and it is not built.
  static DistanceBiasCache build(const RelativeBias& rb, index_t Hq, index_t distances, const Executor& executor,
                                 index_t lowest_position = 0) {
    DistanceBiasCache cache;
    const bool t5 = rb.kind == RelativeBiasKind::t5, fire = rb.kind == RelativeBiasKind::fire;
    cache.reach = t5 ? std::min(rb.max_distance, distances) : std::max<index_t>(distances - 1, 0);
    cache.clamps = t5 && cache.reach == rb.max_distance;
    const bool table_rows = !fire || static_cast<double>(lowest_position) <= static_cast<double>(rb.fire_threshold);
    if (fire) {
      cache.limit = table_rows ? static_cast<double>(rb.fire_threshold) : -std::numeric_limits<double>::infinity();
      cache.build_fire_psi(rb);
      cache.build_fire_lines(rb, Hq);
    }
    if (!table_rows) return cache;
    const index_t width = cache.width(), reach = cache.reach;
    cache.bias.resize(static_cast<std::size_t>(Hq * width));
    // A query at position 0 has FIRE's normalizer of every position up to L, and the other kinds
    // depend on the offset only, so key j = rel of a query at 0 stands for offset rel.
    const double normalizer = fire ? fire_normalizer(rb, 0) : 0.0;
    float* const out = cache.bias.data();
    // KERPLE and FIRE depend on |rel| only: each distance is evaluated once and written on both
    // sides (half the pow / log1p / MLP evaluations of the table; T5's buckets are one-sided).
    const index_t first = t5 ? -reach : 0;
    parallel_for(executor, Hq, 1, [&](index_t begin, index_t end) {
      for (index_t h = begin; h < end; ++h)
        for (index_t rel = first; rel <= reach; ++rel) {
          const float value = static_cast<float>(fire ? fire_value(rb, h, normalizer, static_cast<double>(rel < 0 ? -rel : rel))
                                                      : relative_bias_value(rb, h, 0, rel));
          out[h * width + reach + rel] = value;
          if (!t5) out[h * width + reach - rel] = value;
        }
    });
    return cache;
  }

  void build_fire_psi(const RelativeBias& rb) {
    fire_psi.resize(static_cast<std::size_t>(width()));
    for (index_t rel = -reach; rel <= reach; ++rel)
      fire_psi[static_cast<std::size_t>(reach + rel)] =
          std::log1p(static_cast<double>(rb.fire_c) * std::abs(static_cast<double>(rel)));
  }

  // The lines of Hq heads (fire_lines, fire_first), for x >= 0. Rebuilding them into the same
  // object reuses its storage (decode builds them once per call: DecodeTileBias).
  void build_fire_lines(const RelativeBias& rb, index_t Hq) {
    const index_t W = rb.fire_w1.size(1);
    fire_lines.clear();
    fire_first.assign(1, 0);
    for (index_t h = 0; h < Hq; ++h) {
      fire_kinks.clear();
      for (index_t k = 0; k < W; ++k) {  // x >= 0 here (psi >= 0, normalizer > 0)
        const double w1 = rb.fire_w1(h, k), kink = w1 != 0.0 ? -static_cast<double>(rb.fire_b1(h, k)) / w1 : 0.0;
        if (kink > 0.0) fire_kinks.push_back(kink);
      }
      std::vector<double>& kinks = fire_kinks;
      std::sort(kinks.begin(), kinks.end());
      kinks.erase(std::unique(kinks.begin(), kinks.end()), kinks.end());
      const index_t m = static_cast<index_t>(kinks.size());
      for (index_t i = 0; i <= m; ++i) {
        const double start = i > 0 ? kinks[i - 1] : 0.0;
        const double end = i < m ? kinks[i] : std::numeric_limits<double>::infinity();
        const double inside = i < m ? 0.5 * (start + end) : start + 1.0;  // which units are on here
        FireLine line{end, rb.fire_b2(h), 0.0};
        for (index_t k = 0; k < W; ++k) {
          const double w1 = rb.fire_w1(h, k), b1 = rb.fire_b1(h, k), w2 = rb.fire_w2(h, k);
          if (w1 * inside + b1 > 0.0) line.alpha += w2 * b1, line.beta += w2 * w1;
        }
        fire_lines.push_back(line);
      }
      fire_first.push_back(static_cast<index_t>(fire_lines.size()));
    }
  }

  bool has_fire_lines() const noexcept { return !fire_first.empty(); }

  // The keys of a row [0, lo) and [hi, n) past the reach, by `outside`; not called for an empty
  // side (FIRE's formula takes a log1p for its normalizer even for no key: 2 per row and tile).
  template <class Outside>
  static void add_outside(Outside& outside, float* s, index_t j0, index_t lo, index_t hi, index_t n) {
    if (lo > 0) outside(s, j0, lo);
    if (hi < n) outside(s + hi, j0 + hi, n - hi);
  }

  // fire_normalizer(rb, pos) for a row above L, read from psi where the table reaches pos (the
  // same log1p(c * pos) in double) instead of a log1p per row and tile.
  double fire_row_normalizer(const RelativeBias& rb, index_t pos) const {
    if (static_cast<double>(pos) > static_cast<double>(rb.fire_threshold) && pos <= reach)
      return fire_psi[static_cast<std::size_t>(reach + pos)] + kFireEps;
    return fire_normalizer(rb, pos);
  }

  // s[c] += the bias of key j0 + c for head h at position pos, c < n; outside(s', j, count) adds
  // the bias of keys [j, j + count) past the reach when the table does not clamp.
  template <class Outside>
  void add_row(float* s, index_t j0, index_t n, index_t h, index_t pos, Outside&& outside) const {
    const float* row = bias.data() + h * width();
    const index_t lo = std::clamp<index_t>(pos - reach - j0, 0, n), hi = std::clamp<index_t>(pos + reach + 1 - j0, lo, n);
    if (clamps) {
      simd::add_scalar(row[0], s, lo);
      simd::add_scalar(row[width() - 1], s + hi, n - hi);
    } else {
      add_outside(outside, s, j0, lo, hi, n);
    }
    // The offset in parentheses: a pointer formed outside the table (positions far from the
    // keys, up to 2^62) is undefined behaviour even unread, and overflows the address space.
    if (hi > lo) simd::axpy(1.f, row + (reach + j0 + lo - pos), s + lo, hi - lo);  // fma(1, x, s) rounds as x + s
  }

  // s[c] += FIRE's bias of key j0 + c for head h at position pos above L, whose normalizer is
  // `normalizer`, by the head's lines; `outside` adds keys past the reach. x = psi(|rel|) /
  // normalizer is taken as psi times its inverse (a multiply, not a division, per key: the
  // lines are continuous at their kinks, so an x a rounding off a kink gives either line's value
  // within rounding). A vector of keys on one line takes it in one multiply-add; a vector across
  // kinks takes each of its lines in turn, lanes at or past a line's start replacing the value of
  // the line before (lines are ordered by x). The biases of a piece of the row are made in
  // double, then added to s in one pass. The former form (a line lookup and a division per 8
  // keys, runs across a kink key by key, a conversion per key) made FIRE's rows above L cost
  // ~37% of the whole prefill (llama3-8b T 1024: 45.5 ms against 33.2 ms without the bias).
  template <class Outside>
  void add_fire_row(float* s, index_t j0, index_t n, index_t h, index_t pos, double normalizer, Outside&& outside) const {
    using DBatch = simd::Batch<double>;
    constexpr index_t kLanes = static_cast<index_t>(DBatch::size), kPiece = 64;  // 64: one prefill key tile
    const FireLine* lines = fire_lines.data() + fire_first[h];
    index_t near = 0;  // the last line found: along a row x moves by little between lookups
    const auto line_of = [lines, &near](double x) {
      index_t i = near;
      while (x >= lines[i].x_end) ++i;  // the last x_end is +inf
      while (i > 0 && x < lines[i - 1].x_end) --i;
      return near = i;
    };
    const index_t lo = std::clamp<index_t>(pos - reach - j0, 0, n), hi = std::clamp<index_t>(pos + reach + 1 - j0, lo, n);
    add_outside(outside, s, j0, lo, hi, n);
    // psi[at + c]: key j0 + c, an index (not a pointer moved by it) for the reason of add_row's.
    const double* psi = fire_psi.data();
    const index_t at = reach + j0 - pos;
    const double inv = 1.0 / normalizer;
    const DBatch vinv(inv);
    alignas(64) double bias[kPiece];
    for (index_t c0 = lo; c0 < hi; c0 += kPiece) {
      const index_t e = std::min(hi, c0 + kPiece);
      index_t c = c0;
      for (; c + kLanes <= e; c += kLanes) {
        const DBatch x = DBatch::load_unaligned(psi + (at + c)) * vinv;
        // psi(|rel|) falls to the query and rises after it, so the lanes' x lie between their
        // smallest (an end, or 0 at the query) and their largest (an end): their lines are the
        // ones from x_min's to x_max's, usually one, else each lane takes its own by a mask.
        const double first = psi[at + c] * inv, last = psi[at + c + kLanes - 1] * inv;
        const bool holds_query = j0 + c < pos && pos < j0 + c + kLanes - 1;
        const index_t low = line_of(holds_query ? 0.0 : std::min(first, last)), high = line_of(std::max(first, last));
        DBatch value = simd::fma(DBatch(lines[low].beta), x, DBatch(lines[low].alpha));
        for (index_t i = low + 1; i <= high; ++i)
          value = xsimd::select(x >= DBatch(lines[i - 1].x_end), simd::fma(DBatch(lines[i].beta), x, DBatch(lines[i].alpha)),
                                value);
        value.store_unaligned(bias + (c - c0));
      }
      for (; c < e; ++c) bias[c - c0] = line_value(lines, line_of, psi[at + c] * inv);
      for (index_t k = 0; k < e - c0; ++k) s[c0 + k] += static_cast<float>(bias[k]);
    }
  }

  // The value of the line x lies on (found by line_of).
  template <class LineOf>
  static double line_value(const FireLine* lines, LineOf& line_of, double x) {
    const FireLine& line = lines[line_of(x)];
    return line.alpha + line.beta * x;
  }
};

// Finishes one row of a logit tile: s holds scale * q.k for keys [j0, j0 + n), padded to
// `cols`; applies softcap, ALiBi and the mask, and sets invisible and padding keys to -inf.
template <class KV, class Q = float>
struct LogitRule {
  const AttentionInputs<KV, Q>& in;
  const AttentionOptions& options;
  index_t Tk;
  const DistanceBiasCache* cache = nullptr;  // the call's per-distance bias, if built
  const DistanceBiasCache* fire_lines = nullptr;  // decode: the call's FIRE lines (DecodeTileBias)

  // True when apply() only masks what a row cannot see (no softcap, ALiBi, relative bias or
  // mask): then it leaves a row that sees every key of a tile without padding as it was.
  bool masks_only() const noexcept {
    return !(options.softcap > 0.f) && !in.alibi_slopes.has_value() &&
           in.relative_bias.kind == RelativeBiasKind::none && !in.mask.has_value();
  }

  void apply(float* s, index_t j0, index_t n, index_t cols, index_t b, index_t i, index_t h, index_t pos) const {
    apply(s, j0, n, cols, b, i, h, pos, [&] { relative_bias(s, j0, n, h, pos); });
  }

  // The same, with add_bias() adding the row's relative bias in its place (decode adds it from
  // the tile's head-invariant parts, DecodeTileBias).
  template <class AddBias>
  void apply(float* s, index_t j0, index_t n, index_t cols, index_t b, index_t i, index_t h, index_t pos,
             AddBias&& add_bias) const {
    if (options.softcap > 0.f) softcap(s, n);
    if (in.alibi_slopes.has_value()) {
      const float slope = in.alibi_slopes(h);
      for (index_t c = 0; c < n; ++c) s[c] -= slope * static_cast<float>(std::abs(pos - (j0 + c)));
    }
    if (in.relative_bias.kind != RelativeBiasKind::none) add_bias();
    if (in.mask.has_value()) {
      const float* mask = in.mask.ptr(in.mask.size(0) == 1 ? 0 : b, i, j0);
      const index_t stride = in.mask.stride(2);
      for (index_t c = 0; c < n; ++c) s[c] = add_mask(s[c], mask[c * stride]);
    }
    const VisibleKeys vis = visible_keys(options, pos, Tk);
    // Tile-relative bounds of [0, sink_end) and [lo, hi); everything else becomes -inf.
    const auto rel = [&](index_t j) { return std::clamp<index_t>(j - j0, 0, n); };
    const index_t sink_end = rel(vis.sink_end), lo = std::max(rel(vis.lo), sink_end), hi = std::max(rel(vis.hi), lo);
    std::fill(s + sink_end, s + lo, kMinusInf);
    std::fill(s + hi, s + cols, kMinusInf);
  }

  // The relative bias of keys [j0, j0 + n) for head h at position pos: the values of
  // relative_bias_value (bit for bit from the per-offset table and T5's buckets, to double rounding
  // from FIRE's lines and the vector formulas), with the kind chosen once per row.
  void relative_bias(float* s, index_t j0, index_t n, index_t h, index_t pos) const {
    const RelativeBias& rb = in.relative_bias;
    const auto formula = [&](float* part, index_t first, index_t count) { add_formula(part, first, count, h, pos); };
    if (cache && cache->covers(pos)) return cache->add_row(s, j0, n, h, pos, formula);
    if (cache && cache->has_fire_lines() && rb.kind == RelativeBiasKind::fire)
      return cache->add_fire_row(s, j0, n, h, pos, cache->fire_row_normalizer(rb, pos), formula);
    add_formula(s, j0, n, h, pos);
  }

  // The same from the bias's definition, no table: T5 looks its buckets up, KERPLE and FIRE
  // evaluate their formula a vector of keys at a time.
  void add_formula(float* s, index_t j0, index_t n, index_t h, index_t pos) const {
    const RelativeBias& rb = in.relative_bias;
    if (rb.kind == RelativeBiasKind::t5) {
      // Keys max_distance or more before the query share the last bucket, and so do the keys
      // after it (causal buckets: bucket 0) or max_distance or more after it (bidirectional):
      // only the keys between look their bucket up.
      const index_t nb = rb.table.size(1), md = rb.max_distance;
      const auto bucket_bias = [&](index_t rel) { return rb.table(h, t5_bucket(rel, rb.bidirectional, nb, md)); };
      const index_t near_lo = std::clamp<index_t>(pos - md + 1 - j0, 0, n);
      const index_t near_hi = std::clamp<index_t>(pos + (rb.bidirectional ? md : 1) - j0, near_lo, n);
      const float before = bucket_bias(-md), after = bucket_bias(rb.bidirectional ? md : 1);
      for (index_t c = 0; c < near_lo; ++c) s[c] += before;
      for (index_t c = near_lo; c < near_hi; ++c) s[c] += bucket_bias(j0 + c - pos);
      for (index_t c = near_hi; c < n; ++c) s[c] += after;
      return;
    }
    if (rb.kind == RelativeBiasKind::distance_table) {  // the caller's table, clamped at its last entry
      const index_t last = rb.table.size(1) - 1;
      for (index_t c = 0; c < n; ++c) {
        const index_t j = j0 + c, d = pos >= j ? pos - j : j - pos;
        s[c] += rb.table(h, d < last ? d : last);
      }
      return;
    }
    if (rb.kind == RelativeBiasKind::fire) {
      const double normalizer = fire_normalizer(rb, pos);
      return add_distance_formula(s, j0, n, pos, [&](const DBatch& distance) { return fire_lanes(h, normalizer, distance); },
                                  [&](double distance) { return fire_value(rb, h, normalizer, distance); });
    }
    const double r1 = rb.r1(h), r2 = rb.r2(h);
    const auto scalar = [&](double d) { return kerple_value(rb, h, d); };
    if (rb.kind == RelativeBiasKind::kerple_power)
      add_distance_formula(s, j0, n, pos, [&](const DBatch& d) { return DBatch(-r1) * simd::pow(d, DBatch(r2)); }, scalar);
    else
      add_distance_formula(s, j0, n, pos, [&](const DBatch& d) { return DBatch(-r1) * simd::log1p(DBatch(r2) * d); },
                           scalar);
  }

  using DBatch = simd::Batch<double>;

  // s[c] += formula(|pos - (j0 + c)|) for c < n, in double, a vector of keys at a time (decode and
  // rows no table covers evaluate the bias per logit); `scalar` is the same formula for the tail.
  template <class Vector, class Scalar>
  static void add_distance_formula(float* s, index_t j0, index_t n, index_t pos, Vector&& vector, Scalar&& scalar) {
    constexpr index_t kLanes = static_cast<index_t>(DBatch::size);
    alignas(64) double lanes[kLanes];
    index_t c = 0;
    for (; c + kLanes <= n; c += kLanes) {
      for (index_t k = 0; k < kLanes; ++k) lanes[k] = std::abs(static_cast<double>(pos - (j0 + c + k)));
      simd::store(lanes, vector(simd::load(lanes)));
      for (index_t k = 0; k < kLanes; ++k) s[c + k] += static_cast<float>(lanes[k]);
    }
    for (; c < n; ++c) s[c] += static_cast<float>(scalar(std::abs(static_cast<double>(pos - (j0 + c)))));
  }

  // fire_value on a vector of distances, the units summed in fire_value's order.
  DBatch fire_lanes(index_t h, double normalizer, const DBatch& distance) const {
    const RelativeBias& rb = in.relative_bias;
    const DBatch x = simd::log1p(DBatch(static_cast<double>(rb.fire_c)) * distance) / DBatch(normalizer);
    DBatch out(static_cast<double>(rb.fire_b2(h)));
    const DBatch zero(0.0);
    for (index_t k = 0; k < rb.fire_w1.size(1); ++k) {
      const DBatch unit = DBatch(static_cast<double>(rb.fire_w1(h, k))) * x + DBatch(static_cast<double>(rb.fire_b1(h, k)));
      out = out + DBatch(static_cast<double>(rb.fire_w2(h, k))) * simd::max(zero, unit);
    }
    return out;
  }

  void softcap(float* s, index_t n) const {
    const float cap = options.softcap, inv = 1.f / options.softcap;
    const FBatch vcap(cap), vinv(inv);
    const index_t nv = simd::vector_end(n);
    // tanh(x) = 1 - 2 / (exp(2x) + 1): saturates cleanly to +-1 (exp gives inf or 0) and is
    // within 1e-7 absolute of tanh, plenty for a logit. (xsimd's tanh trips GCC 12's
    // -Wmaybe-uninitialized inside its AVX-512 intrinsics.)
    const FBatch one(1.f), two(2.f);
    for (index_t c = 0; c < nv; c += simd::kWidth) {
      const FBatch e = simd::exp(simd::load(s + c) * (two * vinv));
      simd::store(s + c, vcap * (one - two / (e + one)));
    }
    for (index_t c = nv; c < n; ++c) s[c] = cap * std::tanh(s[c] * inv);
  }
};

// Key tiles of width `tile` that hold a key visible to any of the given positions.
inline std::vector<index_t> visible_tiles(const AttentionOptions& options, const index_t* positions, index_t count,
                                          index_t Tk, index_t tile) {
  index_t sink_end = 0, lo = Tk, hi = 0;
  for (index_t r = 0; r < count; ++r) {
    const VisibleKeys v = visible_keys(options, positions[r], Tk);
    sink_end = std::max(sink_end, v.sink_end);
    if (v.lo < v.hi) lo = std::min(lo, v.lo), hi = std::max(hi, v.hi);
  }
  std::vector<index_t> tiles;
  for (index_t j0 = 0; j0 < Tk; j0 += tile)
    if (j0 < sink_end || (j0 < hi && j0 + tile > lo)) tiles.push_back(j0);
  return tiles;
}

// Rows (query, head) of q or o requested this many rows ahead of their copy. A prefill task's
// rows are a KV head's G heads of each query: G * D contiguous floats (2 KB for llama3-8b), one
// per 4 KB page at Hq * D = 4096 floats, and the hardware prefetchers stop at page boundaries, so
// each piece started with a miss. 8 rows (2 pieces ahead at G = 4): a T = 256 prefill's loads of
// q and stores of o went from ~15 to ~11% of its samples (perf, one thread, loaded EPYC Zen 5);
// 4, 16 and 32 rows measured the same within the noise.
constexpr index_t kRowPrefetchAhead = 8;

// q rows of one (batch, KV head) group, scaled, as [rows x ld] with row r = query (i0 + r / G),
// head (hk * G + r % G): the query heads sharing a KV head form one GEMM M dimension.
// q may be stored as f16 / bf16: each row is widened here, so no fp32 copy of q is ever made.
template <class Q>
void load_query_rows(const ConstView<Q, 4>& q, index_t b, index_t hk, index_t G, index_t i0, index_t nq,
                     float scale, float* dst, index_t ld) {
  const index_t D = q.size(3), rows = nq * G;
  for (index_t r = 0; r < rows; ++r) {
    // Widened as K/V rows are (whole vectors for contiguous rows), then scaled in place: the
    // same scale * float(q) as element by element, which a prefill block of 256 rows spent a
    // scalar load, conversion and multiply per element on at -O2.
    float* row = dst + r * ld;
    const index_t ahead = r + kRowPrefetchAhead;
    if (ahead < rows && q.stride(3) == 1) prefetch_row(q.ptr(b, i0 + ahead / G, hk * G + ahead % G), D);
    kv_row_to_float(q.ptr(b, i0 + r / G, hk * G + r % G), q.stride(3), D, row);
    scale_row(row, D, scale);  // merge.hpp
    std::fill(row + D, row + ld, 0.f);
  }
}

// The same rows of in.q, rotated at their positions first when the call carries a rope
// (AttentionInputs::rope): each row is copied, rotated and scaled in the q tile, so q is rotated
// once per call and never written back. load_query_rows_rotated takes query i's position from
// position_of(i) (paged attention's queries sit at the end of their sequence).
// `head_scales` ([Hq] or empty) multiplies each head's scale; `rope` may be null.
template <class Q, class PositionOf>
void load_query_rows_rotated(const ConstView<Q, 4>& q, index_t b, index_t hk, index_t G, index_t i0, index_t nq,
                             float scale, float* dst, index_t ld, const RopeTable* rope, const PositionOf& position_of,
                             const ConstView<float, 1>& head_scales = {}) {
  const index_t D = q.size(3), rows = nq * G;
  for (index_t r = 0; r < rows; ++r) {
    const index_t h = hk * G + r % G, ahead = r + kRowPrefetchAhead;
    if (ahead < rows && q.stride(3) == 1) prefetch_row(q.ptr(b, i0 + ahead / G, hk * G + ahead % G), D);
    float* row = dst + r * ld;
    kv_row_to_float(q.ptr(b, i0 + r / G, h), q.stride(3), D, row);
    if (rope) rope_row_in_place(*rope, position_of(i0 + r / G), row, 1);
    scale_row(row, D, head_scales.has_value() ? scale * head_scales(h) : scale);
    std::fill(row + D, row + ld, 0.f);
  }
}

template <class KV, class Q>
void load_query_rows(const AttentionInputs<KV, Q>& in, index_t b, index_t hk, index_t G, index_t i0, index_t nq,
                     float scale, float* dst, index_t ld) {
  if (!in.rope && !in.head_scales.has_value()) return load_query_rows(in.q, b, hk, G, i0, nq, scale, dst, ld);
  load_query_rows_rotated(in.q, b, hk, G, i0, nq, scale, dst, ld, in.rope,
                          [&](index_t i) { return query_position(in, b, i); }, in.head_scales);
}

// Keys [j0, j0 + n) of a tile loaded as fp32 rows [n x ld] (key r at row r): rotated in place at
// their positions j0 + r where the call's rope rotates them (key j >= rope_rotated_keys).
template <class KV, class Q>
void rotate_key_rows(const AttentionInputs<KV, Q>& in, index_t j0, index_t n, float* rows, index_t ld) {
  if (!in.rope) return;
  for (index_t r = std::max<index_t>(0, in.rope_rotated_keys - j0); r < n; ++r)
    rope_row_in_place(*in.rope, j0 + r, rows + r * ld, 1);
}

// True when some key of [j0, j0 + n) is rotated by the call's rope on loading.
template <class KV, class Q>
bool tile_needs_rotation(const AttentionInputs<KV, Q>& in, index_t j0, index_t n) noexcept {
  return in.rope && j0 + n > in.rope_rotated_keys;
}

// ---- decode kernel ------------------------------------------------------------------------

// Where the decode kernel reads one head's key or value rows: row j at `base + j * ld`, a whole
// number of vectors long. Rows of the caller's tensor are read in place and 16-bit rows are
// widened in registers, so K and V make one trip from memory to the FMAs (no fp32 copy of the
// tile, which cost a store and a reload per element).
template <class KV>
struct KvRows {
  const KV* base;
  index_t ld;
  const KV* row(index_t j) const noexcept { return base + j * ld; }
};

inline FBatch load_kv_batch(const float* p) noexcept { return simd::load(p); }

// Scores of the decode kernel in dot form (no transpose of K, which would cost more than the
// dot products in this memory-bound path): a block of 4 rows x kScoreKeys keys keeps W
// accumulators, each K and Q vector load feeds several FMAs, and one reduce_add_rows reduces all
// W dot products at once instead of W separate horizontal sums.
constexpr index_t kScoreRows = 4;
constexpr index_t kScoreKeys = simd::kWidth >= 4 ? simd::kWidth / kScoreRows : 1;
static_assert(kScoreRows * kScoreKeys == simd::kWidth, "the score block must fill one reduce_add_rows");

// S[r][c] = Q_r . K_c for r < R and the W / R key rows `keys` (R = 4 by default; 1 or 2 when
// fewer query rows share a KV head, so no padded row costs FMAs). D is a multiple of the width.
template <index_t R = kScoreRows, class KV>
inline void score_block(const float* Q, index_t ldq, const KV* const* keys, index_t D, float* S, index_t lds,
                        LineStream* ahead = nullptr) noexcept {
  constexpr index_t KC = simd::kWidth / R;
  static_assert(R * KC == simd::kWidth, "the score block must fill one reduce_add_rows");
  // The first feature vector initializes the accumulators (a zero-filled array here became a
  // memset call per block). The unroll pragmas keep acc in registers at -O2 too: GCC 12 unrolls
  // these fixed-count loops completely only at -O3, and at -O2 left acc in memory (a load, an
  // FMA and a store per accumulator and feature vector); unrolled, the same FMAs in the same order.
  FBatch acc[simd::kWidth];
  for (index_t d = 0; d < D; d += simd::kWidth) {
    if (ahead) ahead->step();
    FBatch k[KC];
#pragma GCC unroll 16
    for (index_t c = 0; c < KC; ++c) k[c] = load_kv_batch(keys[c] + d);
#pragma GCC unroll 4
    for (index_t r = 0; r < R; ++r) {
      const FBatch q = simd::in_register(simd::load(Q + r * ldq + d));
#pragma GCC unroll 16
      for (index_t c = 0; c < KC; ++c) acc[r * KC + c] = d == 0 ? q * k[c] : simd::fma(q, k[c], acc[r * KC + c]);
    }
  }
  // reduce_add_rows takes the rows' address, and GCC at -O2 does not inline it: handing it acc
  // itself would pin acc to memory for the whole loop, so it gets a copy.
  FBatch rows[simd::kWidth];
#pragma GCC unroll 16
  for (index_t i = 0; i < simd::kWidth; ++i) rows[i] = acc[i];
  alignas(64) float sums[simd::kWidth];
  simd::reduce_add_rows(rows).store_aligned(sums);
  for (index_t r = 0; r < R; ++r)
    for (index_t c = 0; c < KC; ++c) S[r * lds + c] = sums[r * KC + c];
}

// S [M x round_up(n, kScoreKeys)] = Q K^T for Q rows padded to a multiple of 4 (zero rows are
// harmless). Keys past n repeat key n - 1, so no row beyond the tile is read; callers mask
// those columns.
template <class KV>
inline void scores_rows(const float* Q, index_t ldq, index_t M, const KvRows<KV>& K, index_t n, index_t D, float* S,
                        index_t lds) noexcept {
  for (index_t c = 0; c < n; c += kScoreKeys) {
    const KV* keys[kScoreKeys];
    for (index_t i = 0; i < kScoreKeys; ++i) keys[i] = K.row(std::min(c + i, n - 1));
    for (index_t r = 0; r < M; r += kScoreRows) score_block<kScoreRows>(Q + r * ldq, ldq, keys, D, S + r * lds + c, lds);
  }
}

// The same over an fp32 tile [n x ldk] whose rows past n are zero (the top-k selectors and
// retrieval score their gathered tiles this way).
inline void scores_dot(const float* Q, index_t ldq, index_t M, const float* K, index_t ldk, index_t n, index_t D,
                       float* S, index_t lds) noexcept {
  scores_rows(Q, ldq, M, KvRows<float>{K, ldk}, n, D, S, lds);
}

// acc[r][col : col + NV * W] += sum_c P[r][c] V_c for R rows over n keys: R x NV accumulators
// stay in registers over the keys, and each value vector is loaded (and widened) once for all
// R rows.
template <int R, int NV, class Rows>
inline void pv_block(const float* P, index_t ldp, const Rows& V, index_t n, index_t col, float* acc,
                     index_t ldacc, LineStream* ahead) noexcept {
  // Unrolling stated for -O2, as in score_block: there the rolled loops kept a in memory.
  FBatch a[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[r][v] = simd::load(acc + r * ldacc + col + v * simd::kWidth);
  for (index_t c = 0; c < n; ++c) {
    if (ahead) ahead->step();
    const auto* row = V.row(c) + col;
    FBatch x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = load_kv_batch(row + v * simd::kWidth);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const FBatch p = simd::in_register(FBatch(P[r * ldp + c]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] = simd::fma(p, x[v], a[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) simd::store(acc + r * ldacc + col + v * simd::kWidth, a[r][v]);
}

// 4 rows x 4 vectors: 16 accumulators + 4 values + 1 broadcast fit AVX-512's 32 registers;
// narrower targets (16 registers) take 2 vectors.
constexpr int kPvVectors = simd::kWidth >= 16 ? 4 : 2;

template <int R, class Rows>
inline void pv_rows(const float* P, index_t ldp, const Rows& V, index_t n, index_t Dv, float* acc,
                    index_t ldacc, LineStream* ahead) noexcept {
  const index_t W = simd::kWidth;
  index_t col = 0;
  for (; col + kPvVectors * W <= Dv; col += kPvVectors * W)
    pv_block<R, kPvVectors>(P, ldp, V, n, col, acc, ldacc, ahead);
  for (; col < Dv; col += W) pv_block<R, 1>(P, ldp, V, n, col, acc, ldacc, ahead);
}

// acc [M x ldacc] += P [M x n] V [n x Dv], in blocks of 4 rows. Rows: KvRows, or any type whose
// row(j) points at value row j (a paged cache's rows, paged/paged.hpp).
template <class Rows>
inline void accumulate_pv(const float* P, index_t ldp, index_t M, const Rows& V, index_t n, index_t Dv,
                          float* acc, index_t ldacc, LineStream* ahead = nullptr) noexcept {
  index_t r = 0;
  for (; r + 4 <= M; r += 4) pv_rows<4>(P + r * ldp, ldp, V, n, Dv, acc + r * ldacc, ldacc, ahead);
  P += r * ldp, acc += r * ldacc;
  switch (M - r) {
    case 3: pv_rows<3>(P, ldp, V, n, Dv, acc, ldacc, ahead); break;
    case 2: pv_rows<2>(P, ldp, V, n, Dv, acc, ldacc, ahead); break;
    case 1: pv_rows<1>(P, ldp, V, n, Dv, acc, ldacc, ahead); break;
    default: break;
  }
}

// Value rows that must not meet a weight of exactly 0 (docs/reliability.md): in P V a key's
// weight is 0 for the rows that cannot see it (causal, window, mask, padding), and
// 0 * NaN = 0 * inf = NaN would reach those rows anyway. A tile where some weight is 0 looks
// for value rows holding a NaN or inf (O(M n) for the test, the rows are read only then) and
// keeps them out of the product; add_nonfinite_keys then adds them to the rows whose weight is
// not 0. Clean tiles and tiles where every row sees every key pay the O(M n) test only.
struct NonFiniteKeys {
  static constexpr index_t kMax = 64;  // keys per tile: kDecodeTile, kFlashKeyTile
  index_t count = 0;
  std::array<index_t, kMax> key{};
  bool contains(index_t j) const noexcept { return std::find(key.begin(), key.begin() + count, j) != key.begin() + count; }
};

// One value row's first Dv entries as fp32 in `dst` (a pointer to them for fp32 rows).
template <class KV>
const float* value_row_as_float(const KV* row, index_t Dv, float* dst) noexcept {
  if constexpr (std::is_same_v<KV, float>) {
    (void)Dv, (void)dst;
    return row;
  } else {
    kv_row_to_float(row, 1, Dv, dst);
    return dst;
  }
}

// True when x[0..n) holds no infinity and no NaN: x * 0 is 0 for a finite x and NaN otherwise,
// and a NaN survives the sum. Whole vectors: the scalar isfinite loop (a compare and a flag per
// value, 8192 per 64 x 128 value tile) took ~3% of a T = 256 causal prefill (perf, loaded), where
// every diagonal tile's zero weights send its values through this check.
inline bool row_is_finite(const float* x, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  const FBatch zero(0.f);
  FBatch sum = zero;
  for (index_t c = 0; c < nv; c += simd::kWidth) sum += simd::load(x + c) * zero;
  float tail = 0.f;
  for (index_t c = nv; c < n; ++c) tail += x[c] * 0.f;
  return simd::reduce_add(sum) + tail == 0.f;
}

// True when some weight of P [M x n] is exactly 0. Whole vectors, one mask test per row: the
// scalar loop (a compare and a flag per weight) took ~15% of the fp16 decode kernel's P V time.
inline bool has_zero_weight(const float* P, index_t ldp, index_t M, index_t n) noexcept {
  const index_t nv = simd::vector_end(n);
  const FBatch zero(0.f);
  for (index_t r = 0; r < M; ++r) {
    const float* p = P + r * ldp;
    if (nv > 0) {
      simd::BatchBool<float> found = simd::load(p) == zero;
      for (index_t j = simd::kWidth; j < nv; j += simd::kWidth) found = found || (simd::load(p + j) == zero);
      if (xsimd::any(found)) return true;
    }
    for (index_t j = nv; j < n; ++j)
      if (p[j] == 0.f) return true;
  }
  return false;
}

// Finds the keys of the tile (n <= NonFiniteKeys::kMax) whose value row holds a NaN or inf,
// when some weight of P [M x n] is exactly 0; false when there is nothing to keep apart.
// `row` is scratch for Dv floats.
template <class Rows>
bool find_nonfinite_keys(const float* P, index_t ldp, index_t M, const Rows& V, index_t n, index_t Dv, float* row,
                         NonFiniteKeys& bad) noexcept {
  bad.count = 0;
  if (!has_zero_weight(P, ldp, M, n)) return false;
  for (index_t j = 0; j < n && bad.count < NonFiniteKeys::kMax; ++j)
    if (!row_is_finite(value_row_as_float(V.row(j), Dv, row), Dv)) bad.key[bad.count++] = j;
  return bad.count > 0;
}

// acc[r] += P[r][j] v_j for the keys in `bad` and the rows whose weight for them is not 0.
template <class Rows>
void add_nonfinite_keys(const float* P, index_t ldp, index_t M, const Rows& V, index_t Dv, const NonFiniteKeys& bad,
                        float* acc, index_t ldacc, float* row) noexcept {
  for (index_t b = 0; b < bad.count; ++b) {
    const index_t j = bad.key[b];
    const float* x = value_row_as_float(V.row(j), Dv, row);
    for (index_t r = 0; r < M; ++r) {
      const float p = P[r * ldp + j];
      if (p == 0.f) continue;
      for (index_t c = 0; c < Dv; ++c) acc[r * ldacc + c] += p * x[c];
    }
  }
}

// Rows with the keys in `skip` replaced by a row of zeros (`zero`, at least Dv entries).
template <class Rows, class Stored>
struct RowsWithout {
  const Rows& rows;
  const NonFiniteKeys& skip;
  const Stored* zero;
  const Stored* row(index_t j) const noexcept { return skip.contains(j) ? zero : rows.row(j); }
};

// accumulate_pv, where a value row holding a NaN or inf reaches only the rows that give it a
// non-zero weight (see NonFiniteKeys).
template <class Rows>
void accumulate_pv_guarded(const float* P, index_t ldp, index_t M, const Rows& V, index_t n, index_t Dv, float* acc,
                           index_t ldacc, LineStream* ahead) {
  using Stored = std::remove_cv_t<std::remove_pointer_t<decltype(V.row(0))>>;
  thread_local std::vector<float> row;  // grown on first use, kept (decode allocates nothing once warm)
  thread_local std::vector<Stored> zero;
  if (static_cast<index_t>(row.size()) < Dv) row.resize(static_cast<std::size_t>(Dv));
  NonFiniteKeys bad;
  if (n > NonFiniteKeys::kMax || !find_nonfinite_keys(P, ldp, M, V, n, Dv, row.data(), bad)) {
    accumulate_pv(P, ldp, M, V, n, Dv, acc, ldacc, ahead);
    return;
  }
  if (static_cast<index_t>(zero.size()) < Dv) zero.resize(static_cast<std::size_t>(Dv));
  accumulate_pv(P, ldp, M, RowsWithout<Rows, Stored>{V, bad, zero.data()}, n, Dv, acc, ldacc, ahead);
  add_nonfinite_keys(P, ldp, M, V, Dv, bad, acc, ldacc, row.data());
}

// At most 64 keys per tile: the per-tile work (logit rule, softmax bookkeeping, accumulator
// rescale) is spread over enough FMAs, and the logits of all heads (8 x 4 x 64 floats at
// Hkv = 8, G = 4) stay in L1 next to the queries and accumulators.
constexpr index_t kDecodeTile = 64;
// Keys per tile for a K/V row of `row_bytes` (all KV heads of one key): about 128 KB of K per
// tile, which is what the prefetch of the next tile measured best with (Hq=32 Hkv=8 D=128,
// Tk=16384, 2 threads: fp16 64 keys 1.66 ms vs 32: 1.77, 128: 1.79; fp32 32 keys 2.29 ms vs
// 64: 2.79), in multiples of 16 keys.
inline index_t decode_tile_keys(index_t row_bytes) noexcept {
  constexpr index_t kTileBytes = 128 * 1024;
  return std::clamp<index_t>(kTileBytes / std::max<index_t>(row_bytes, 1) / 16 * 16, 16, kDecodeTile);
}

// A split below 4 tiles (128 to 256 keys) costs more in merging and scheduling than it saves.
constexpr index_t kMinTilesPerSplit = 4;

// ---- decode: relative bias per tile ---------------------------------------------------------

// The relative bias of one decode tile's rows. Decode evaluates its bias per logit (each
// distance meets each head once per call, so a per-call table would not pay), and a tile's rows
// are every query head at the same few positions: what a bias takes from the key's distance
// alone is evaluated here once per tile and query, and each head's row then adds its own part.
// T5 and distance tables: one table column per key (usually one for the whole tile, past T5's
// max_distance). KERPLE power: ln d, so a head takes exp(r2 ln d), which is xsimd's pow(d, r2)
// operation for operation. FIRE: x = psi(d) / normalizer, so a head takes its MLP's lines (the
// call's, built once: DistanceBiasCache::build_fire_lines) instead of W units per logit.
// KERPLE log, ln(1 + r2 d), shares nothing: its rows take whole vectors in double.
// Far from the query KERPLE takes one log1p / exp per head and tile and a short series per key
// (add_kerple_log, add_kerple_power). Values: those of LogitRule::add_formula, bit for bit for
// T5, tables and KERPLE near the query, to double rounding for FIRE (lines against the MLP),
// KERPLE's series and the keys add_formula's scalar tail took.
struct DecodeTileBias {
  using DBatch = simd::Batch<double>;
  static constexpr index_t kLanes = static_cast<index_t>(DBatch::size);
  static constexpr index_t kStride = kDecodeTile;  // per query: one tile's keys

  RelativeBiasKind kind = RelativeBiasKind::none;
  index_t n = 0, padded = 0;  // the tile's keys; rounded up to whole double vectors
  // Per query i, from i * kStride: |pos - j| of key j0 + c (the last key's past n), and the
  // shared part (ln d, or FIRE's x); T5 / tables: the column of key c, and whether one column
  // holds for every key of the tile.
  AlignedVector<double> distance, shared;
  std::vector<double> x_low, x_high;  // FIRE: per query and vector of keys, its lanes' x range
  std::vector<double> tile_x_low, tile_x_high;  // FIRE: per query, the tile's x range
  std::vector<double> middle_distance, half_range;  // KERPLE log: per query (prepare_offsets)
  AlignedVector<double> log_offset;  // KERPLE power: per query and key (prepare_log_offsets)
  std::vector<double> middle_log, log_half_range;  // KERPLE power: per query
  std::vector<index_t> column;
  std::vector<char> one_column;
  AlignedVector<double> row;  // one head's bias, before it is rounded to float and added

  // Whether add_row serves this bias (FIRE only with its lines).
  static bool serves(const RelativeBias& rb, const DistanceBiasCache* fire_lines) noexcept {
    switch (rb.kind) {
      case RelativeBiasKind::t5:
      case RelativeBiasKind::distance_table:
      case RelativeBiasKind::kerple_log:
      case RelativeBiasKind::kerple_power: return true;
      case RelativeBiasKind::fire: return fire_lines != nullptr && fire_lines->has_fire_lines();
      default: return false;
    }
  }

  // The shared parts of keys [j0, j0 + n) for `queries` queries, query i at position_of(i).
  template <class PositionOf>
  void prepare(const RelativeBias& rb, index_t j0, index_t n_, index_t queries, const PositionOf& position_of) {
    kind = rb.kind, n = n_, padded = round_up(n_, kLanes);
    const std::size_t size = static_cast<std::size_t>(queries * kStride);
    grow(distance, size), grow(shared, size), grow(row, kStride);
    grow(column, size), grow(one_column, static_cast<std::size_t>(queries));
    grow(x_low, size / kLanes), grow(x_high, size / kLanes);
    grow(tile_x_low, static_cast<std::size_t>(queries)), grow(tile_x_high, static_cast<std::size_t>(queries));
    grow(middle_distance, static_cast<std::size_t>(queries)), grow(half_range, static_cast<std::size_t>(queries));
    grow(log_offset, size), grow(middle_log, static_cast<std::size_t>(queries));
    grow(log_half_range, static_cast<std::size_t>(queries));
    for (index_t i = 0; i < queries; ++i) {
      const index_t pos = position_of(i);
      if (kind == RelativeBiasKind::t5 || kind == RelativeBiasKind::distance_table) {
        prepare_columns(rb, j0, pos, i);
        continue;
      }
      double* d = distance.data() + i * kStride;
      for (index_t c = 0; c < padded; ++c) d[c] = std::abs(static_cast<double>(pos - (j0 + std::min(c, n - 1))));
      if (kind == RelativeBiasKind::kerple_power) {
        prepare_log_distance(d, shared.data() + i * kStride);
        prepare_log_offsets(shared.data() + i * kStride, i);
      }
      if (kind == RelativeBiasKind::kerple_log) prepare_offsets(d, i);
      if (kind == RelativeBiasKind::fire) prepare_fire_x(rb, pos, d, i);
    }
  }

  // s[c] += the bias of key j0 + c for query head h at query i, c < n (after prepare).
  void add_row(const RelativeBias& rb, const DistanceBiasCache* fire_lines, index_t h, index_t i, float* s) {
    if (kind == RelativeBiasKind::t5 || kind == RelativeBiasKind::distance_table) return add_columns(rb, h, i, s);
    const double* d = distance.data() + i * kStride;
    const double* shared_part = shared.data() + i * kStride;
    double* out = row.data();
    if (kind == RelativeBiasKind::kerple_log) {
      add_kerple_log(rb, h, i, d, shared_part, out);
    } else if (kind == RelativeBiasKind::kerple_power) {
      add_kerple_power(rb, h, i, d, shared_part, out);
    } else {
      add_fire_lines(*fire_lines, h, i, shared_part, out);
    }
    for (index_t c = 0; c < n; ++c) s[c] += static_cast<float>(out[c]);
  }

 private:
  template <class Vector, class Size>
  static void grow(Vector& x, Size size) {
    if (x.size() < static_cast<std::size_t>(size)) x.resize(static_cast<std::size_t>(size));
  }

  // T5: keys max_distance or more before the query share the last bucket, and the keys after it
  // (causal) or max_distance or more after it (bidirectional) theirs, as in add_formula; only
  // the keys between take t5_bucket's log. Tables: the distance, clamped at the last column.
  void prepare_columns(const RelativeBias& rb, index_t j0, index_t pos, index_t i) {
    index_t* col = column.data() + i * kStride;
    if (kind == RelativeBiasKind::t5) {
      const index_t nb = rb.table.size(1), md = rb.max_distance;
      const auto bucket = [&](index_t rel) { return t5_bucket(rel, rb.bidirectional, nb, md); };
      const index_t near_lo = std::clamp<index_t>(pos - md + 1 - j0, 0, n);
      const index_t near_hi = std::clamp<index_t>(pos + (rb.bidirectional ? md : 1) - j0, near_lo, n);
      const index_t before = bucket(-md), after = bucket(rb.bidirectional ? md : 1);
      for (index_t c = 0; c < near_lo; ++c) col[c] = before;
      for (index_t c = near_lo; c < near_hi; ++c) col[c] = bucket(j0 + c - pos);
      for (index_t c = near_hi; c < n; ++c) col[c] = after;
    } else {
      const index_t last = rb.table.size(1) - 1;
      for (index_t c = 0; c < n; ++c) {
        const index_t j = j0 + c, dist = pos >= j ? pos - j : j - pos;
        col[c] = dist < last ? dist : last;
      }
    }
    one_column[static_cast<std::size_t>(i)] = std::all_of(col, col + n, [&](index_t x) { return x == col[0]; });
  }

  void add_columns(const RelativeBias& rb, index_t h, index_t i, float* s) const {
    const index_t* col = column.data() + i * kStride;
    if (one_column[static_cast<std::size_t>(i)]) return simd::add_scalar(rb.table(h, col[0]), s, n);
    for (index_t c = 0; c < n; ++c) s[c] += rb.table(h, col[c]);
  }

  // KERPLE log: the keys' distances from the tile's middle distance, and the largest of them.
  void prepare_offsets(const double* d, index_t i) {
    const double middle = 0.5 * (d[0] + d[n - 1]);
    double* offset = shared.data() + i * kStride;
    double spread = 0.0;
    for (index_t c = 0; c < padded; ++c) offset[c] = d[c] - middle, spread = std::max(spread, std::abs(offset[c]));
    middle_distance[static_cast<std::size_t>(i)] = middle, half_range[static_cast<std::size_t>(i)] = spread;
  }

  // -r1 ln(1 + r2 d) for head h. Far from the query a tile's distances lie within a few percent
  // of its middle one m: ln(1 + r2 d) = ln(1 + r2 m) + ln(1 + t), t = r2 (d - m) / (1 + r2 m),
  // one log1p per head and tile and a series in t per key (|t| <= 1/64: terms to t^10, whose
  // remainder is below 1e-19) instead of a vector log1p (two divisions) per 8 keys. Near the
  // query, the log1p.
  void add_kerple_log(const RelativeBias& rb, index_t h, index_t i, const double* d, const double* offset,
                      double* out) const {
    const double r1 = -static_cast<double>(rb.r1(h)), r2 = static_cast<double>(rb.r2(h));
    const double middle = middle_distance[static_cast<std::size_t>(i)], base = 1.0 + r2 * middle;
    if (half_range[static_cast<std::size_t>(i)] * r2 > base / 64.0) {
      const DBatch vr1(r1), vr2(r2);
      for (index_t c = 0; c < padded; c += kLanes)
        (vr1 * simd::log1p(vr2 * DBatch::load_aligned(d + c))).store_aligned(out + c);
      return;
    }
    const DBatch at_middle(r1 * std::log1p(r2 * middle)), to_t(r2 / base), vr1(r1);
    for (index_t c = 0; c < padded; c += kLanes) {
      const DBatch t = DBatch::load_aligned(offset + c) * to_t;
      // ln(1 + t) = t - t^2/2 + t^3/3 - ... by Horner, from the t^10 term down.
      DBatch series(-1.0 / 10);
      for (int k = 9; k >= 1; --k) series = simd::fma(series, t, DBatch((k % 2 ? 1.0 : -1.0) / k));
      simd::fma(vr1, series * t, at_middle).store_aligned(out + c);
    }
  }

  // -r1 d^r2 for head h. xsimd's pow(d, r2) is exp(r2 ln d), with ln e standing in for ln 0 and
  // the result 0 there. Far from the query ln d changes little over a tile: d^r2 =
  // exp(r2 ln m) exp(r2 (ln d - ln m)) for the tile's middle key m, one exp per head and tile and
  // a series per key (|r2 (ln d - ln m)| <= 1/32: terms to the 9th power, remainder below 1e-19)
  // instead of a vector exp per 8 keys. Near the query, the exp.
  void add_kerple_power(const RelativeBias& rb, index_t h, index_t i, const double* d, const double* log_d,
                        double* out) const {
    const double r1 = -static_cast<double>(rb.r1(h)), r2 = static_cast<double>(rb.r2(h));
    const DBatch zero(0.0), vr1(r1), vr2(r2);
    const auto at_query_zero = [&](index_t c, const DBatch& power) {
      (vr1 * xsimd::select(DBatch::load_aligned(d + c) == zero, zero, power)).store_aligned(out + c);
    };
    if (log_half_range[static_cast<std::size_t>(i)] * r2 > 1.0 / 32) {
      for (index_t c = 0; c < padded; c += kLanes) at_query_zero(c, simd::exp(vr2 * DBatch::load_aligned(log_d + c)));
      return;
    }
    const DBatch at_middle(std::exp(r2 * middle_log[static_cast<std::size_t>(i)]));
    const double* offset = log_offset.data() + i * kStride;
    for (index_t c = 0; c < padded; c += kLanes) {
      const DBatch x = vr2 * DBatch::load_aligned(offset + c);
      // e^x = 1 + x + x^2/2! + ... by Horner, from the x^9 term down.
      DBatch series(1.0 / 362880);
      double factorial = 362880;
      for (int k = 8; k >= 1; --k) factorial /= (k + 1), series = simd::fma(series, x, DBatch(1.0 / factorial));
      at_query_zero(c, at_middle * simd::fma(series, x, DBatch(1.0)));
    }
  }

  // ln d, with ln e = 1 for d = 0 as in xsimd's pow (whose result add_row then sets to 0).
  void prepare_log_distance(const double* d, double* log_d) const {
    const DBatch zero(0.0), e(2.718281828459045);
    for (index_t c = 0; c < padded; c += kLanes) {
      const DBatch x = DBatch::load_aligned(d + c);
      simd::log(xsimd::select(x == zero, e, x)).store_aligned(log_d + c);
    }
  }

  // KERPLE power: ln d less ln d of the tile's middle key, and the largest of them.
  void prepare_log_offsets(const double* log_d, index_t i) {
    const double middle = log_d[(n - 1) / 2];
    double* offset = log_offset.data() + i * kStride;
    double spread = 0.0;
    for (index_t c = 0; c < padded; ++c) offset[c] = log_d[c] - middle, spread = std::max(spread, std::abs(offset[c]));
    middle_log[static_cast<std::size_t>(i)] = middle, log_half_range[static_cast<std::size_t>(i)] = spread;
  }

  // FIRE's x = psi(d) / normalizer as LogitRule::fire_lanes takes it, and each vector's range.
  void prepare_fire_x(const RelativeBias& rb, index_t pos, const double* d, index_t i) {
    const DBatch c_fire(static_cast<double>(rb.fire_c)), normalizer(fire_normalizer(rb, pos));
    double* x = shared.data() + i * kStride;
    for (index_t c = 0; c < padded; c += kLanes) {
      (simd::log1p(c_fire * DBatch::load_aligned(d + c)) / normalizer).store_aligned(x + c);
      const auto [low, high] = std::minmax_element(x + c, x + c + kLanes);
      x_low[static_cast<std::size_t>((i * kStride + c) / kLanes)] = *low;
      x_high[static_cast<std::size_t>((i * kStride + c) / kLanes)] = *high;
    }
    const auto [low, high] = std::minmax_element(x, x + padded);
    tile_x_low[static_cast<std::size_t>(i)] = *low, tile_x_high[static_cast<std::size_t>(i)] = *high;
  }

  // Head h's lines on x: a vector of keys on one line takes one multiply-add; across kinks each
  // line in turn, lanes at or past a line's start replacing the line before's value (as
  // DistanceBiasCache::add_fire_row).
  void add_fire_lines(const DistanceBiasCache& cache, index_t h, index_t i, const double* x, double* out) const {
    using FireLine = DistanceBiasCache::FireLine;
    const FireLine* lines = cache.fire_lines.data() + cache.fire_first[static_cast<std::size_t>(h)];
    index_t near = 0;  // the last line found: along a tile x moves by little
    const auto line_of = [lines, &near](double value) {
      index_t k = near;
      while (value >= lines[k].x_end) ++k;  // the last x_end is +inf
      while (k > 0 && value < lines[k - 1].x_end) --k;
      return near = k;
    };
    // Usually one line holds the whole tile (x changes little over 64 keys far from the query).
    const index_t first = line_of(tile_x_low[static_cast<std::size_t>(i)]);
    if (first == line_of(tile_x_high[static_cast<std::size_t>(i)])) {
      const DBatch alpha(lines[first].alpha), beta(lines[first].beta);
      for (index_t c = 0; c < padded; c += kLanes) simd::fma(beta, DBatch::load_aligned(x + c), alpha).store_aligned(out + c);
      return;
    }
    for (index_t c = 0; c < padded; c += kLanes) {
      const std::size_t v = static_cast<std::size_t>((i * kStride + c) / kLanes);
      const index_t low = line_of(x_low[v]), high = line_of(x_high[v]);
      const DBatch xs = DBatch::load_aligned(x + c);
      DBatch value = simd::fma(DBatch(lines[low].beta), xs, DBatch(lines[low].alpha));
      for (index_t k = low + 1; k <= high; ++k)
        value = xsimd::select(xs >= DBatch(lines[k - 1].x_end), simd::fma(DBatch(lines[k].beta), xs, DBatch(lines[k].alpha)),
                              value);
      value.store_aligned(out + c);
    }
  }
};

// Per-thread scratch of the decode kernel, kept across calls (thread_local, grown on demand, so
// decode allocates nothing once warm): per KV head the scaled query rows (padded to a multiple
// of 4 rows) and the logits of the current tile; one head's fp32 K and V tiles for the fallback
// path; per row its position and visible keys.
struct DecodeScratch {
  index_t rows = 0, rows_padded = 0, q_stride = 0, s_stride = 0;
  AlignedVector<float> q, k, v, s;
  // Bf16Compute::dot: per KV head the q rows rounded to bf16, [rows_padded x q16_ld] with
  // q16_ld = Dk rounded up to 32 (one 512-bit load of 32 values, zeros past Dk); per row of one
  // head the tile's weights as bf16 pair words [rows x kDecodeTile / 2]; a zero value row.
  index_t q16_ld = 0, q16_stride = 0;
  AlignedVector<bf16> q16, zero16;
  AlignedVector<std::uint32_t> p16;
  std::vector<index_t> pos;
  std::vector<VisibleKeys> visible;
  DecodeTileBias bias;  // the current tile's relative bias, when it serves the call's

  // Sizes the scratch for `rows` query rows per KV head; reuses the storage when it is big enough.
  void reserve(index_t Hkv, index_t rows_, index_t Dkp, index_t Dvp) {
    rows = rows_;
    rows_padded = round_up(rows, kScoreRows);
    q_stride = rows_padded * Dkp;
    s_stride = rows_padded * kDecodeTile;
    grow(q, Hkv * q_stride);
    grow(k, kDecodeTile * Dkp);
    grow(v, kDecodeTile * Dvp);
    grow(s, Hkv * s_stride);
    grow(pos, rows);
    grow(visible, rows);
    // Padding query rows feed score rows nobody reads; zero them so they stay finite.
    for (index_t h = 0; h < Hkv; ++h)
      std::fill(q.begin() + h * q_stride + rows * Dkp, q.begin() + (h + 1) * q_stride, 0.f);
  }

  // The scaled q rows of Hkv heads (q, after the rows are loaded) rounded to bf16 into q16,
  // once per task. Also sizes p16 and zero16 for value rows of Dv.
  void round_queries_bf16(index_t Hkv, index_t Dk, index_t Dkp, index_t Dv) {
    q16_ld = round_up(Dk, 32), q16_stride = rows_padded * q16_ld;
    grow(q16, Hkv * q16_stride);
    grow(p16, rows_padded * kDecodeTile / 2);
    if (static_cast<index_t>(zero16.size()) < Dv) zero16.assign(static_cast<std::size_t>(Dv), bf16::from_bits(0));
    for (index_t h = 0; h < Hkv; ++h)
      for (index_t r = 0; r < rows_padded; ++r) {
        bf16* dst = q16.data() + h * q16_stride + r * q16_ld;
        convert(q.data() + h * q_stride + r * Dkp, dst, Dk);  // round to nearest even, as vcvtneps2bf16
        std::fill(dst + Dk, dst + q16_ld, bf16::from_bits(0));
      }
  }

  // This thread's scratch.
  static DecodeScratch& local() {
    thread_local DecodeScratch scratch;
    return scratch;
  }

  template <class Vector>
  static void grow(Vector& x, index_t n) {
    if (static_cast<index_t>(x.size()) < n) x.resize(static_cast<std::size_t>(n));
  }
};

// The key tiles one row block can see, as index ranges of tiles of width `tile`: the sink tiles
// [0, sink_tiles) and the window tiles [first, last) (merged when they touch). visible_tiles
// without a list, so decode builds no vector per call.
struct TileRange {
  index_t sink_tiles = 0, first = 0, last = 0, tile = 1;

  index_t count() const noexcept { return sink_tiles + (last - first); }
  index_t key(index_t t) const noexcept { return (t < sink_tiles ? t : first + (t - sink_tiles)) * tile; }

  // Same tiles as visible_tiles(options, positions, count, Tk, tile).
  static TileRange of(const AttentionOptions& options, const index_t* positions, index_t count, index_t Tk,
                      index_t tile) noexcept {
    index_t sink_end = 0, lo = Tk, hi = 0;
    for (index_t r = 0; r < count; ++r) {
      const VisibleKeys v = visible_keys(options, positions[r], Tk);
      sink_end = std::max(sink_end, v.sink_end);
      if (v.lo < v.hi) lo = std::min(lo, v.lo), hi = std::max(hi, v.hi);
    }
    TileRange range;
    range.tile = tile;
    range.sink_tiles = (sink_end + tile - 1) / tile;
    if (lo < hi) {
      range.first = std::max(lo / tile, range.sink_tiles);
      range.last = std::max((hi + tile - 1) / tile, range.first);
    }
    return range;
  }
};

// Where one head's K/V tile is read from: the caller's rows, or fp32 copies in the scratch.
template <class KV, class Rows = KvRows<KV>>
struct KvTile {
  using stored_type = KV;
  Rows k, v;
};

// K/V rows that are contiguous whole vectors of fp32 / fp16 / bf16 are read in place; anything
// else (strided features, a head size that is not a multiple of the width, another element
// type) is converted head by head into the scratch tiles, zero-padded to whole vectors, and
// read as fp32.
template <class KV>
constexpr bool kv_loads_as_vectors = std::is_same_v<KV, float> || std::is_same_v<KV, f16> || std::is_same_v<KV, bf16>;

template <class KV, class Q>
bool decode_reads_in_place(const AttentionInputs<KV, Q>& in, const AttentionDims& d) noexcept {
  return in.k.stride(3) == 1 && in.v.stride(3) == 1 && d.Dk % simd::kWidth == 0 && d.Dv % simd::kWidth == 0;
}

// True when every key of the full tile [j0, j0 + tile) is visible to every row and no
// logit transform applies, so the logit rule has nothing to do (the common case in decode).
inline bool tile_needs_no_rule(const AttentionOptions& options, bool has_alibi, bool has_mask,
                               const VisibleKeys* visible, index_t rows, index_t j0, index_t n, index_t tile) noexcept {
  if (n != tile || options.softcap > 0.f || has_alibi || has_mask) return false;
  for (index_t r = 0; r < rows; ++r) {
    const VisibleKeys& v = visible[r];
    if (!(j0 + n <= v.sink_end || (j0 >= v.lo && j0 + n <= v.hi))) return false;
  }
  return true;
}

// Inner-loop steps (LineStream::step calls) of one decode tile of n keys: score blocks x feature
// vectors, plus value rows x column blocks. The bf16 dot-product tile (bf16_dot) steps once per
// 32 features and per key pair of a 64-column block.
inline std::size_t decode_tile_steps(const AttentionDims& d, index_t n, bool bf16_dot = false) noexcept {
  const index_t W = simd::kWidth, row_blocks = (d.Tq * d.group() + 3) / 4;
  if (bf16_dot) {
    const index_t pv_blocks = d.Dv / 64 + (d.Dv % 64 >= 32) + (d.Dv % 32 != 0);
    return static_cast<std::size_t>(d.Hkv * row_blocks *
                                    ((n + kScoreKeys - 1) / kScoreKeys * ((d.Dk + 31) / 32) + (n + 1) / 2 * pv_blocks));
  }
  const index_t steps = d.Hkv * row_blocks *
                        ((n + kScoreKeys - 1) / kScoreKeys * (d.Dk / W) + n * ((d.Dv + kPvVectors * W - 1) / (kPvVectors * W)));
  return static_cast<std::size_t>(steps);
}

// The next tile's K and V rows, as the lines the current tile's kernels request ahead. Hardware
// prefetchers stop at 4 KB pages, and a page holds only one or two key rows here, so they never
// get far ahead on their own. Only rows of packed heads (one contiguous block per key) are
// named; other layouts are left to the hardware.
template <class KV, class Q>
LineStream next_tile_lines(const AttentionInputs<KV, Q>& in, const AttentionDims& d, index_t b, index_t next_j0,
                           index_t next_n, index_t n, bool bf16_dot = false) {
  LineStream lines;
  const auto packed = [](const ConstView<KV, 4>& x) {
    return x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
  };
  if (next_n <= 0 || !packed(in.k) || !packed(in.v)) return lines;
  const std::size_t k_bytes = static_cast<std::size_t>(next_n * d.Hkv * d.Dk) * sizeof(KV);
  const std::size_t v_bytes = static_cast<std::size_t>(next_n * d.Hkv * d.Dv) * sizeof(KV);
  lines.set(0, in.k.ptr(b, next_j0, 0), k_bytes);
  lines.set(1, in.v.ptr(b, next_j0, 0), v_bytes);
  // Into L2 except on Zen 5 (core/cpu_kind.hpp), as the KV cache's decode: on Zen 4 the L1
  // requests waited for the core's L1 miss buffers; bench_attention, 2 threads, 3 alternated runs,
  // idle (load 1.3-1.4, 2026-12-08), Tk 16384 / 65536: fp32 6.02-6.18 -> 4.77-4.97 / 22.4-28.6 ->
  // 18.5-22.8 ms, fp16 3.44-3.73 -> 2.22-4.00 / 12.4-15.4 -> 8.7-11.5, bf16 2.92-3.76 -> 2.66-3.79 /
  // 12.9-14.9 -> 10.4-11.3. Zen 5 keeps the L1 requests it was tuned with.
  lines.to_l2 = !amd_zen5_or_later();
  lines.spread_over(decode_tile_steps(d, n, bf16_dot));
  return lines;
}

// The walk of one tile's score blocks for KV heads [h0, h1): keys in blocks of KC with the heads
// inside, so the tile is read in address order. block(h, c, keys) scores keys [c, c + KC) of head
// h (past the tile's end the last key repeats; its logits are never read).
template <index_t KC, class TileOf, class Block>
void for_score_blocks(index_t n, index_t h0, index_t h1, const TileOf& tile_of, const Block& block) {
  using Stored = typename std::invoke_result_t<const TileOf&, index_t>::stored_type;
  for (index_t c = 0; c < n; c += KC)
    for (index_t h = h0; h < h1; ++h) {
      const auto tile = tile_of(h);
      const Stored* keys[KC];
      for (index_t i = 0; i < KC; ++i) keys[i] = tile.k.row(std::min(c + i, n - 1));
      block(h, c, static_cast<const Stored* const*>(keys));
    }
}

// Logits of one tile for KV heads [h0, h1), R query rows per score block of W / R keys.
template <index_t R, class TileOf>
void score_tile(DecodeScratch& w, index_t M, index_t n, index_t h0, index_t h1, const TileOf& tile_of, index_t Dkp,
                LineStream& ahead) {
  for_score_blocks<simd::kWidth / R>(n, h0, h1, tile_of, [&](index_t h, index_t c, const auto* keys) {
    const float* q = w.q.data() + h * w.q_stride;
    float* s = w.s.data() + h * w.s_stride + c;
    for (index_t r = 0; r < M; r += R) score_block<R>(q + r * Dkp, Dkp, keys, Dkp, s + r * kDecodeTile, kDecodeTile, &ahead);
  });
}

// The middle of a decode tile for KV heads [h0, h1), once the logits are in w.s: the logit rule
// (bias, mask, visibility), the online softmax of each row, which leaves the weights p in w.s,
// and the rescale of its accumulators [M x Dvp] where the running maximum moved.
template <class KV, class Q>
void decode_tile_softmax(const LogitRule<KV, Q>& rule, const AttentionDims& d, DecodeScratch& w, index_t b, index_t j0,
                         index_t n, index_t h0, index_t h1, bool skip_rule, SoftmaxRow* states, float* accs) {
  const index_t G = d.group(), M = d.Tq * G, W = simd::kWidth, Dvp = round_up(d.Dv, W), T = kDecodeTile;
  // The bias's head-invariant parts once for the tile's queries, then each row adds its head's.
  const RelativeBias& rb = rule.in.relative_bias;
  const bool tile_bias = !skip_rule && DecodeTileBias::serves(rb, rule.fire_lines);
  if (tile_bias) w.bias.prepare(rb, j0, n, d.Tq, [&](index_t i) { return w.pos[i * G]; });
  for (index_t h = h0; h < h1; ++h)
    for (index_t r = 0; r < M; ++r) {
      float* s = w.s.data() + h * w.s_stride + r * T;
      const index_t i = r / G, head = h * G + r % G;
      if (tile_bias)
        rule.apply(s, j0, n, n, b, i, head, w.pos[r], [&] { w.bias.add_row(rb, rule.fire_lines, head, i, s); });
      else if (!skip_rule)
        rule.apply(s, j0, n, n, b, i, head, w.pos[r]);
      const float alpha = online_softmax_tile(s, n, states[h * M + r].m, states[h * M + r].l);
      if (alpha == 1.f) continue;  // the running maximum held: nothing to rescale
      float* acc = accs + (h * M + r) * Dvp;
      for (index_t col = 0; col < Dvp; col += W) simd::store(acc + col, simd::load(acc + col) * FBatch(alpha));
    }
}

// True when a decode call over KV storage takes the bf16 dot-product tiles below: bf16 K/V,
// options.bf16_compute = dot, and a compile target with AVX512-BF16.
template <class KV>
bool decode_takes_bf16_dot(const AttentionOptions& options) noexcept {
  return kNativeBf16Dot && std::is_same_v<KV, bf16> && options.bf16_compute == Bf16Compute::dot;
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// ---- bf16 dot-product decode tiles (AttentionOptions::bf16_compute = dot, bf16 K/V) -----------
//
// The same tile with both products on vdpbf16ps (core/bf16_gemm.hpp), read in place from the
// bf16 rows with no widening: each instruction takes 32 bf16 of a key row against 32 of a q row
// (rounded to bf16 once per task, DecodeScratch::round_queries_bf16), and in P V one broadcast
// pair of weights (keys 2p, 2p + 1, rounded to bf16 after the fp32 softmax) against two keys'
// value rows interleaved by 16-bit unpacks. Per key element and query row that is half an
// instruction where the fp32 tile spends a widening and an FMA. Logits, the online softmax and
// the accumulators stay fp32; the bound is the prefill's (docs/operators.md section 5).

// S[r][c] = Q_r . K_c for R rows of q16 (bf16, zero past Dk up to a multiple of 32) and the
// 16 / R key rows `keys`, Dk a multiple of 16.
template <index_t R>
inline void score_block_bf16(const bf16* Q, index_t ldq, const bf16* const* keys, index_t Dk, float* S, index_t lds,
                             LineStream& ahead) noexcept {
  constexpr index_t KC = 16 / R;
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  // The 16 features past the last whole 32, if any, by a masked load (none past a key row read).
  for (index_t d = 0; d < Dk; d += 32) {
    ahead.step();
    const __mmask32 mask = Dk - d >= 32 ? ~__mmask32{0} : __mmask32{0xffffu};
    __m512i k[KC];
#pragma GCC unroll 16
    for (index_t c = 0; c < KC; ++c) k[c] = _mm512_maskz_loadu_epi16(mask, keys[c] + d);
#pragma GCC unroll 4
    for (index_t r = 0; r < R; ++r) {
      const __m512bh q = as_bf16_pairs(_mm512_loadu_si512(Q + r * ldq + d));
#pragma GCC unroll 16
      for (index_t c = 0; c < KC; ++c) acc[r * KC + c] = _mm512_dpbf16_ps(acc[r * KC + c], q, as_bf16_pairs(k[c]));
    }
  }
  FBatch rows[16];  // a copy for reduce_add_rows, as in score_block
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) rows[i] = FBatch(acc[i]);
  alignas(64) float sums[16];
  simd::reduce_add_rows(rows).store_aligned(sums);
  for (index_t r = 0; r < R; ++r)
    for (index_t c = 0; c < KC; ++c) S[r * lds + c] = sums[r * KC + c];
}

// score_tile on the bf16 rows against q rounded to bf16 (w.q16), 16 / R keys per block.
template <index_t R, class TileOf>
void score_tile_bf16(DecodeScratch& w, index_t M, index_t n, index_t h0, index_t h1, const TileOf& tile_of,
                     index_t Dk, LineStream& ahead) {
  for_score_blocks<16 / R>(n, h0, h1, tile_of, [&](index_t h, index_t c, const bf16* const* keys) {
    const bf16* q = w.q16.data() + h * w.q16_stride;
    float* s = w.s.data() + h * w.s_stride + c;
    for (index_t r = 0; r < M; r += R)
      score_block_bf16<R>(q + r * w.q16_ld, w.q16_ld, keys, Dk, s + r * kDecodeTile, kDecodeTile, ahead);
  });
}

// The accumulator order of the unpack interleave: _mm512_unpacklo_epi16(x0, x1) pairs columns
// {0-3, 8-11, 16-19, 24-27} of a 32-column chunk (word i of each 128-bit lane), unpackhi the
// others, so an accumulator pair of the chunk holds its columns in that order. They are put in it
// once per block and back at its end (two permutes each way per chunk and row) rather than paying
// a cross-lane word permute per key pair.
struct UnpackOrder {
  __m512i to_lo, to_hi, from_lo_hi[2];
  UnpackOrder() noexcept {
    alignas(64) std::int32_t lo[16], hi[16], back[2][16];
    for (int i = 0; i < 16; ++i) lo[i] = 8 * (i / 4) + i % 4, hi[i] = lo[i] + 4;
    for (int half = 0; half < 2; ++half)
      for (int i = 0; i < 16; ++i) {
        const int col = 16 * half + i;
        back[half][i] = (col % 8 < 4 ? 0 : 16) + 4 * (col / 8) + col % 4;
      }
    to_lo = _mm512_load_si512(lo), to_hi = _mm512_load_si512(hi);
    from_lo_hi[0] = _mm512_load_si512(back[0]), from_lo_hi[1] = _mm512_load_si512(back[1]);
  }
};

// acc[r][col : col + 32 NC] += sum_p P[r][p] . (V_2p, V_2p+1) for R rows over the key pairs of
// n keys, P in pair words [R x ldp]; V row n (odd n) is `zero`. R x 2 NC accumulators stay in
// registers over the keys.
template <int R, int NC, class Rows>
inline void pv_block_bf16(const std::uint32_t* P, index_t ldp, const Rows& V, index_t n, index_t col, float* acc,
                          index_t ldacc, const bf16* zero, const UnpackOrder& order, LineStream& ahead) noexcept {
  __m512 a[R][2 * NC];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const __m512 x0 = _mm512_loadu_ps(acc + r * ldacc + col + 32 * c), x1 = _mm512_loadu_ps(acc + r * ldacc + col + 32 * c + 16);
      a[r][2 * c] = _mm512_permutex2var_ps(x0, order.to_lo, x1);
      a[r][2 * c + 1] = _mm512_permutex2var_ps(x0, order.to_hi, x1);
    }
  for (index_t p = 0; 2 * p < n; ++p) {
    ahead.step();
    const bf16* row0 = V.row(2 * p) + col;
    const bf16* row1 = 2 * p + 1 < n ? V.row(2 * p + 1) + col : zero;
    __m512i lo[NC], hi[NC];
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const __m512i x0 = _mm512_loadu_si512(row0 + 32 * c), x1 = _mm512_loadu_si512(row1 + 32 * c);
      lo[c] = _mm512_unpacklo_epi16(x0, x1), hi[c] = _mm512_unpackhi_epi16(x0, x1);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512bh w = as_bf16_pairs(_mm512_set1_epi32(static_cast<int>(P[r * ldp + p])));
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        a[r][2 * c] = _mm512_dpbf16_ps(a[r][2 * c], w, as_bf16_pairs(lo[c]));
        a[r][2 * c + 1] = _mm512_dpbf16_ps(a[r][2 * c + 1], w, as_bf16_pairs(hi[c]));
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      float* out = acc + r * ldacc + col + 32 * c;
      _mm512_storeu_ps(out, _mm512_permutex2var_ps(a[r][2 * c], order.from_lo_hi[0], a[r][2 * c + 1]));
      _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(a[r][2 * c], order.from_lo_hi[1], a[r][2 * c + 1]));
    }
}

// The last 16 columns when Dv is not a multiple of 32: the two rows' 16 values interleaved in
// column order by one word permute (interleave_bf16_rows' low half), read by masked loads.
template <int R, class Rows>
inline void pv_tail_bf16(const std::uint32_t* P, index_t ldp, const Rows& V, index_t n, index_t col, float* acc,
                         index_t ldacc, const bf16* zero, LineStream& ahead) noexcept {
  __m512 a[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) a[r] = _mm512_loadu_ps(acc + r * ldacc + col);
  for (index_t p = 0; 2 * p < n; ++p) {
    ahead.step();
    const bf16* row1 = 2 * p + 1 < n ? V.row(2 * p + 1) + col : zero;
    __m512i pairs, unused;
    interleave_bf16_rows(_mm512_maskz_loadu_epi16(0xffffu, V.row(2 * p) + col), _mm512_maskz_loadu_epi16(0xffffu, row1),
                         pairs, unused);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      a[r] = _mm512_dpbf16_ps(a[r], as_bf16_pairs(_mm512_set1_epi32(static_cast<int>(P[r * ldp + p]))),
                              as_bf16_pairs(pairs));
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + r * ldacc + col, a[r]);
}

// 4 rows x 2 chunks: 16 accumulators, 4 value vectors and their 4 interleaves, one broadcast and
// the 4 order vectors fit AVX-512's 32 registers.
template <int R, class Rows>
inline void pv_rows_bf16(const std::uint32_t* P, index_t ldp, const Rows& V, index_t n, index_t Dv, float* acc,
                         index_t ldacc, const bf16* zero, const UnpackOrder& order, LineStream& ahead) noexcept {
  index_t col = 0;
  for (; col + 64 <= Dv; col += 64) pv_block_bf16<R, 2>(P, ldp, V, n, col, acc, ldacc, zero, order, ahead);
  for (; col + 32 <= Dv; col += 32) pv_block_bf16<R, 1>(P, ldp, V, n, col, acc, ldacc, zero, order, ahead);
  if (col < Dv) pv_tail_bf16<R>(P, ldp, V, n, col, acc, ldacc, zero, ahead);
}

// True when some weight of P [M x n] is below the smallest normal float: 0 (a key the row does
// not see) or a subnormal, which vdpbf16ps takes as 0 (so 0 * inf or 0 * NaN would reach the row).
inline bool has_tiny_weight(const float* P, index_t ldp, index_t M, index_t n) noexcept {
  const __mmask16 tail = static_cast<__mmask16>((1u << (n % 16)) - 1u);
  const __m512 smallest = _mm512_set1_ps(std::numeric_limits<float>::min());
  for (index_t r = 0; r < M; ++r) {
    const float* p = P + r * ldp;
    __mmask16 found = 0;
    index_t c = 0;
    for (; c + 16 <= n; c += 16) found |= _mm512_cmp_ps_mask(_mm512_loadu_ps(p + c), smallest, _CMP_LT_OQ);
    if (c < n) found |= _mm512_mask_cmp_ps_mask(tail, _mm512_loadu_ps(p + c), smallest, _CMP_LT_OQ);
    if (found) return true;
  }
  return false;
}

// True when a value row of keys [0, n), Dv entries each (a multiple of 16), holds an inf or a NaN.
template <class Rows>
bool has_nonfinite_value(const Rows& V, index_t n, index_t Dv) noexcept {
  __mmask32 bad = 0;
  for (index_t j = 0; j < n; ++j)
    for (index_t c = 0; c < Dv; c += 32)
      bad |= bf16_nonfinite(_mm512_maskz_loadu_epi16(Dv - c >= 32 ? ~__mmask32{0} : 0xffffu, V.row(j) + c));
  return bad != 0;
}

// acc [M x ldacc] += P [M x n] V [n x Dv] for one head, P the fp32 weights [M x ldp]: rounded to
// bf16 pair words (zero past n) and taken 4 rows at a time. A head whose tile gives some row a
// weight below the smallest normal float while some value is an inf or a NaN takes the fp32
// guarded product instead (accumulate_pv_guarded), so such a value reaches exactly the rows the
// fp32 form lets it reach.
template <class Rows>
void accumulate_pv_bf16(const float* P, index_t ldp, index_t M, const Rows& V, index_t n, index_t Dv, float* acc,
                        index_t ldacc, DecodeScratch& w, LineStream& ahead) {
  if (has_tiny_weight(P, ldp, M, n) && has_nonfinite_value(V, n, Dv))
    return accumulate_pv_guarded(P, ldp, M, V, n, Dv, acc, ldacc, &ahead);
  constexpr index_t ldw = kDecodeTile / 2;  // pair words per row of weights
  std::uint32_t* const words = w.p16.data();
  for (index_t r = 0; r < M; ++r)
    for (index_t c = 0; c < n; c += 16) {
      const __mmask16 keep = n - c >= 16 ? __mmask16(0xffffu) : static_cast<__mmask16>((1u << (n - c)) - 1u);
      store_bf16x16(reinterpret_cast<std::uint16_t*>(words + r * ldw) + c, _mm512_maskz_loadu_ps(keep, P + r * ldp + c));
    }
  static const UnpackOrder order;
  const bf16* zero = w.zero16.data();
  index_t r = 0;
  for (; r + 4 <= M; r += 4) pv_rows_bf16<4>(words + r * ldw, ldw, V, n, Dv, acc + r * ldacc, ldacc, zero, order, ahead);
  const std::uint32_t* rest = words + r * ldw;
  acc += r * ldacc;
  switch (M - r) {
    case 3: pv_rows_bf16<3>(rest, ldw, V, n, Dv, acc, ldacc, zero, order, ahead); break;
    case 2: pv_rows_bf16<2>(rest, ldw, V, n, Dv, acc, ldacc, zero, order, ahead); break;
    case 1: pv_rows_bf16<1>(rest, ldw, V, n, Dv, acc, ldacc, zero, order, ahead); break;
    default: break;
  }
}

// decode_tile on bf16 rows read in place, with both products on dot products (see above).
template <class KV, class Q, class TileOf>
void decode_tile_bf16(const LogitRule<KV, Q>& rule, const AttentionDims& d, DecodeScratch& w, index_t b, index_t j0,
                      index_t n, index_t h0, index_t h1, const TileOf& tile_of, bool skip_rule, SoftmaxRow* states,
                      float* accs, LineStream& ahead) {
  const index_t M = d.Tq * d.group(), Dvp = round_up(d.Dv, simd::kWidth);
  if (M == 1)
    score_tile_bf16<1>(w, M, n, h0, h1, tile_of, d.Dk, ahead);
  else if (M == 2)
    score_tile_bf16<2>(w, M, n, h0, h1, tile_of, d.Dk, ahead);
  else
    score_tile_bf16<kScoreRows>(w, M, n, h0, h1, tile_of, d.Dk, ahead);
  decode_tile_softmax(rule, d, w, b, j0, n, h0, h1, skip_rule, states, accs);
  for (index_t h = h0; h < h1; ++h)
    accumulate_pv_bf16(w.s.data() + h * w.s_stride, kDecodeTile, M, tile_of(h).v, n, Dvp, accs + h * M * Dvp, Dvp, w,
                       ahead);
}
#endif

// One decode tile [j0, j0 + n) for KV heads [h0, h1): logits, logit rule, online softmax and
// P V into each head's accumulators [M x Dvp]. K and V rows of all heads lie side by side in
// memory; the scores walk keys in small blocks with the heads inside, so the keys are read in
// address order (one head's rows alone are 256-byte pieces 2 KB apart, which the hardware
// prefetchers do not follow: 28 vs 50 GB/s on one core), while the next tile's lines are
// requested from the inner loops (LineStream).
template <class KV, class Q, class TileOf>
void decode_tile(const LogitRule<KV, Q>& rule, const AttentionDims& d, DecodeScratch& w, index_t b, index_t j0,
                 index_t n, index_t h0, index_t h1, const TileOf& tile_of, bool skip_rule, SoftmaxRow* states,
                 float* accs, LineStream& ahead) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  using Stored = typename std::invoke_result_t<const TileOf&, index_t>::stored_type;
  if constexpr (std::is_same_v<Stored, bf16>)
    if (rule.options.bf16_compute == Bf16Compute::dot)
      return decode_tile_bf16(rule, d, w, b, j0, n, h0, h1, tile_of, skip_rule, states, accs, ahead);
#endif
  const index_t G = d.group(), M = d.Tq * G, W = simd::kWidth;
  const index_t Dkp = round_up(d.Dk, W), Dvp = round_up(d.Dv, W), T = kDecodeTile;
  // One or two query rows per KV head (MHA, or GQA groups of 2) take narrower score blocks.
  if (M == 1)
    score_tile<1>(w, M, n, h0, h1, tile_of, Dkp, ahead);
  else if (M == 2)
    score_tile<2>(w, M, n, h0, h1, tile_of, Dkp, ahead);
  else
    score_tile<kScoreRows>(w, M, n, h0, h1, tile_of, Dkp, ahead);
  decode_tile_softmax(rule, d, w, b, j0, n, h0, h1, skip_rule, states, accs);
  // Values head by head over the whole tile: its lines were requested during the previous tile,
  // so the order no longer matters for memory, and one pass per head keeps the accumulators in
  // registers for all the tile's keys (passes of 16 keys with the heads inside: 1.45 vs 1.35 ms).
  for (index_t h = h0; h < h1; ++h)
    accumulate_pv_guarded(w.s.data() + h * w.s_stride, T, M, tile_of(h).v, n, Dvp, accs + h * M * Dvp, Dvp, &ahead);
}

// Runs the tiles [first, last) of `list` for batch row b and every KV head.
template <class KV, class Q>
void decode_piece(const AttentionInputs<KV, Q>& in, const AttentionOptions& options, const AttentionDims& d,
                  const LogitRule<KV, Q>& rule, DecodeScratch& w, const TileRange& list, index_t b, index_t first,
                  index_t last, index_t keys_per_tile, SoftmaxRow* states, float* accs) {
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth);
  for (index_t tile = first; tile < last; ++tile) {
    const index_t j0 = list.key(tile), n = std::min(keys_per_tile, d.Tk - j0);
    const bool biased = in.alibi_slopes.has_value() || in.relative_bias.kind != RelativeBiasKind::none;
    const bool skip_rule = tile_needs_no_rule(options, biased, in.mask.has_value(),
                                              w.visible.data(), w.rows, j0, n, keys_per_tile);
    const index_t next_j0 = tile + 1 < last ? list.key(tile + 1) : 0;
    LineStream ahead = next_tile_lines(in, d, b, next_j0, tile + 1 < last ? std::min(keys_per_tile, d.Tk - next_j0) : 0, n,
                                       decode_takes_bf16_dot<KV>(options));
    if constexpr (kv_loads_as_vectors<KV>) {
      if (decode_reads_in_place(in, d) && !tile_needs_rotation(in, j0, n)) {
        // Head h's rows start one head stride after head 0's (ptr() per call showed in profiles).
        const KV *k0 = in.k.ptr(b, j0, 0), *v0 = in.v.ptr(b, j0, 0);
        const index_t kh = in.k.stride(2), vh = in.v.stride(2), kld = in.k.stride(1), vld = in.v.stride(1);
        const auto in_tensor = [=](index_t h) { return KvTile<KV>{{k0 + h * kh, kld}, {v0 + h * vh, vld}}; };
        decode_tile(rule, d, w, b, j0, n, 0, d.Hkv, in_tensor, skip_rule, states, accs, ahead);
        continue;
      }
    }
    for (index_t h = 0; h < d.Hkv; ++h) {
      load_kv_tile(in.k, b, h, j0, n, kDecodeTile, w.k.data(), Dkp);
      rotate_key_rows(in, j0, n, w.k.data(), Dkp);
      load_kv_tile(in.v, b, h, j0, n, kDecodeTile, w.v.data(), Dvp);
      const auto in_scratch = [&](index_t) { return KvTile<float>{{w.k.data(), Dkp}, {w.v.data(), Dvp}}; };
      decode_tile(rule, d, w, b, j0, n, h, h + 1, in_scratch, skip_rule, states, accs, ahead);
    }
  }
}

// The partial results of split-KV decode: per task and row, the online-softmax state and its
// [Dvp] accumulator. Kept by the calling thread across calls (grown on demand); each task
// starts its own rows (start_rows), so no serial pass over them precedes the parallel one.
struct DecodeWorkspace {
  std::vector<SoftmaxRow> states;
  AlignedVector<float> accs;
  std::vector<TileRange> tiles;  // per batch row or sequence
  DistanceBiasCache fire;  // FIRE's lines of the current call (no table: built() is false)

  void reserve(index_t rows, index_t Dvp, index_t lists) {
    DecodeScratch::grow(states, rows);
    DecodeScratch::grow(accs, rows * Dvp);
    DecodeScratch::grow(tiles, lists);
  }

  static DecodeWorkspace& local() {
    thread_local DecodeWorkspace workspace;
    return workspace;
  }
};

// Validation of the decode entry point without a heap allocation: the checker (and its op
// name, longer than the short-string buffer) is built once.
template <class KV, class Q>
AttentionDims validate_attention_step(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out,
                                      const AttentionOptions& options) {
  static const ArgCheck check("attention_step");
  return validate_attention(check, in, out, options);
}

}  // namespace detail

/// The decode form of attention (docs/operators.md section 5): split-KV attention, meant for
/// Tq = 1 (or a few draft tokens) over many keys, any Tq accepted; same arguments and results as
/// reference::attention; seqmix::attention calls it by itself for Tq <= 4. A task is (batch row,
/// contiguous piece of the visible key tiles) and covers every KV head, so K/V stream through
/// memory in order. The partial states of the pieces (B * splits * Hq * Tq * (Dv + 2) floats) and
/// each thread's scratch are kept across calls, so after a first call of the same shape it makes
/// no heap allocation.
template <class KV, class Q>
void attention_step(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options = {},
                    const Executor& executor = serial_executor()) {
  using namespace detail;
  const auto d = validate_attention_step(in, out, options);
  if (in.batch.packed()) {  // one call per sequence on its slices
    const SequenceMap seqs = SequenceMap::make("attention_step", in.batch, d.B, d.Tq, false, -1);
    for (index_t n = 0; n < seqs.sequences(); ++n)
      attention_step(sequence_inputs(in, seqs[n]), sequence_outputs(out, seqs[n]), options, executor);
    return;
  }
  const index_t G = d.group(), M = d.Tq * G, W = simd::kWidth;
  const index_t Dkp = round_up(d.Dk, W), Dvp = round_up(d.Dv, W);
  if (d.B * d.Tq * d.Hq == 0) return;
  const float scale = attention_scale(options, d.Dk);
  DecodeWorkspace& ws = DecodeWorkspace::local();
  // FIRE: the heads' MLPs as lines, once per call (DecodeTileBias evaluates them per key).
  const bool fire = in.relative_bias.kind == RelativeBiasKind::fire;
  if (fire) ws.fire.build_fire_lines(in.relative_bias, d.Hq);
  const LogitRule<KV, Q> rule{in, options, d.Tk, nullptr, fire ? &ws.fire : nullptr};
  const index_t keys_per_tile = decode_tile_keys(d.Hkv * d.Dk * static_cast<index_t>(sizeof(KV)));

  DecodeScratch::grow(ws.tiles, d.B);
  index_t max_tiles = 0;
  {
    DecodeScratch& w = DecodeScratch::local();
    DecodeScratch::grow(w.pos, d.Tq);
    for (index_t b = 0; b < d.B; ++b) {
      for (index_t i = 0; i < d.Tq; ++i) w.pos[i] = query_position(in, b, i);
      ws.tiles[b] = TileRange::of(options, w.pos.data(), d.Tq, d.Tk, keys_per_tile);
      max_tiles = std::max(max_tiles, ws.tiles[b].count());
    }
  }

  // Enough pieces for 4 tasks per thread (1 on many threads: decode_pieces_per_thread), but none
  // shorter than kMinTilesPerSplit tiles.
  const int threads = executor.concurrency();
  const index_t wanted = (decode_pieces_per_thread(threads, 4) * threads + d.B - 1) / d.B;
  const index_t splits = std::clamp<index_t>(max_tiles / kMinTilesPerSplit, 1, wanted);
  const index_t tasks = d.B * splits, rows_per_task = d.Hkv * M;

  // Workspace: per task and KV head, the row states and the [M x Dvp] accumulators.
  ws.reserve(tasks * rows_per_task, Dvp, d.B);
  SoftmaxRow* const states = ws.states.data();
  float* const accs = ws.accs.data();
  const TileRange* const tiles = ws.tiles.data();

  parallel_for(executor, tasks, 1, [&](index_t begin, index_t end) {
    DecodeScratch& w = DecodeScratch::local();
    w.reserve(d.Hkv, M, Dkp, Dvp);
    for (index_t t = begin; t < end; ++t) {
      const index_t b = t / splits, split = t % splits;
      const TileRange& list = tiles[b];
      const index_t count = list.count();
      const index_t first = count * split / splits, last = count * (split + 1) / splits;
      start_rows(states + t * rows_per_task, accs + t * rows_per_task * Dvp, rows_per_task, Dvp);
      if (first == last) continue;
      for (index_t hk = 0; hk < d.Hkv; ++hk)
        load_query_rows(in, b, hk, G, 0, d.Tq, scale, w.q.data() + hk * w.q_stride, Dkp);
      if (decode_takes_bf16_dot<KV>(options)) w.round_queries_bf16(d.Hkv, d.Dk, Dkp, d.Dv);
      for (index_t r = 0; r < M; ++r) {
        w.pos[r] = query_position(in, b, r / G);
        w.visible[r] = visible_keys(options, w.pos[r], d.Tk);
      }
      const index_t row0 = t * rows_per_task;
      decode_piece(in, options, d, rule, w, list, b, first, last, keys_per_tile, states + row0, accs + row0 * Dvp);
    }
  });

  // Combine the pieces of every row in key order and write o / lse (rows in parallel on many
  // threads: combine_grain).
  const bool has_sink = in.sink_logits.has_value();
  const index_t out_rows = d.B * d.Hkv * M;
  parallel_for(executor, out_rows, combine_grain(threads, out_rows, splits, d.Dv), [&](index_t begin, index_t end) {
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / rows_per_task, hk = row % rows_per_task / M, r = row % M;
      const index_t i = r / G, h = hk * G + r % G;
      const float lse = finish_pieces(states, accs, Dvp, d.Dv, splits, has_sink ? in.sink_logits(h) : kNoSink,
                                      out.o.ptr(b, i, h), out.o.stride(3), [&](index_t split) {
                                        return (b * splits + split) * rows_per_task + hk * M + r;
                                      });
      if (out.lse.has_value()) out.lse(b, i, h) = lse;
    }
  });
}

/// \deprecated The former name of attention_step (docs/conventions.md, naming).
template <class KV, class Q>
[[deprecated("renamed seqmix::attention_step")]] void attention_decode(const AttentionInputs<KV, Q>& in,
                                                                        const AttentionOutputs& out,
                                                                        const AttentionOptions& options = {},
                                                                        const Executor& executor = serial_executor()) {
  attention_step(in, out, options, executor);
}

}  // namespace seqmix
