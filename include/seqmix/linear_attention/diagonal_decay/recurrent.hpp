// The recurrent form of the family: one token at a time, vectorized over the value dimension.
// Both the decode steps and the recurrent prefill run this kernel. Internal.
//
// Per token and state row r (a key feature), with s = S[r][:] and the value row v:
//   inclusive (GLA, linear attention):  s = w_r * s + k_r * v;   o += q_r * s
//   exclusive (rwkv6):                  o += q_r * s;            s = w_r * s + k_r * v
// and rwkv6 adds (q . (u * k)) v to o at the end. That is 3 vector ops per state element (2
// without decay), with o and v held in registers across all rows of a column tile, and several
// tokens applied to each loaded piece of S (see kTokenBlock). The prefill folds the decays of a
// window of tokens into q and k instead (lazy decay, see plan_lazy_windows): 2 ops per element.
// A single token on a wide state (a decode step from kRowWalkColumns columns) walks the state row
// by row instead (recurrent_rows), o accumulating in L1.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"

namespace seqmix::detail::la {

// One token's operands, all contiguous.
struct TokenOperands {
  const float* q;      // [Kf], scale folded in
  const float* k;      // [Kf]
  const float* v;      // [ncols]
  const float* w;      // decays exp(g): [Kf] (w_stride 1), one value (w_stride 0), or nullptr
  index_t w_stride;
  float bonus;         // exclusive readout: q . (u * k); 0 otherwise
};

// Which tokens of a tile decay the state: all (the plain recurrence), none (no gates, or the
// lazy tokens of a window, whose decays are folded into q and k), or only the first (the token
// that opens a lazy window, see plan_lazy_windows).
enum class Decay { none, every_token, first_token };

// f(1), ..., f(NT - 1), unrolled at compile time: GCC left a plain loop over tokens 1..3 rolled
// in the tiles without decay, which kept vv and acc on the stack (a store and a reload on every
// accumulation, ~25% of the tile's time at K = V = 64).
template <int NT, class F, int... J>
inline void unrolled_tokens(F&& f, std::integer_sequence<int, J...>) {
  (f(J + 1), ...);
}
template <int NT, class F>
inline void unrolled_tokens(F&& f) {
  unrolled_tokens<NT>(f, std::make_integer_sequence<int, NT - 1>{});
}

// Columns [c0, c0 + NB*kWidth) of the state, all Kf rows, advanced through NT consecutive tokens
// x[0..NT) in one pass: each loaded row piece takes all NT updates before it is stored, so S is
// loaded and stored once per NT tokens. The NT*NB batches of o and of v stay in registers: NT=4,
// NB=2 holds 2*NT*NB + NB = 18 live batches plus 3*NT broadcasts, within 32 AVX-512 registers.
// kRescale multiplies each row r by x[NT-1].w[r] after the last token (a lazy window's end).
// The loops over the NT tokens and NB batches carry `#pragma GCC unroll` (NT, NB <= 4): GCC 12
// unrolls them completely only at -O3; at -O2 the decode tile (NT = 1, NB = 4) kept s, vv and
// acc in memory, a load and a store around each FMA, and the steps took 1.5-2.7x their -O3 time.
template <int NT, int NB, Decay kDecay, bool kExclusive, bool kRescale = false>
inline void recurrent_tile(float* S, index_t ldS, index_t Kf, index_t c0, const TokenOperands* x, float* const* o,
                           PassLines<kAheadLocality> ahead = {}) {
  static_assert(NT <= 4 && NB <= 4, "the loops over NT and NB carry #pragma GCC unroll 4");
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> vv[NT][NB], acc[NT][NB];
  // Locals, not x's fields: the stores to S could alias x, which made the compiler reload the
  // pointers every row.
  const float *q[NT], *k[NT], *w[NT];
  index_t w_stride[NT];
#pragma GCC unroll 4
  for (int j = 0; j < NT; ++j) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      vv[j][b] = simd::load(x[j].v + c0 + b * W);
      acc[j][b] = Batch<float>(0.f);
    }
    q[j] = x[j].q, k[j] = x[j].k, w[j] = x[j].w, w_stride[j] = x[j].w_stride;
  }
  for (index_t r = 0; r < Kf; ++r) {
    float* row = S + r * ldS + c0;
    ahead.request(r);
    Batch<float> s[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) s[b] = simd::load(row + b * W);
    // Token j's update, decayed or not (a compile-time choice: a runtime one kept the compiler
    // from unrolling the tokens, which spilled vv and acc to the stack).
    auto update = [&](int j, auto decays) {
      const Batch<float> kr(k[j][r]), qr(q[j][r]);
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) {
        if constexpr (kExclusive) acc[j][b] = simd::fma(qr, s[b], acc[j][b]);
        if constexpr (decltype(decays)::value)
          s[b] = simd::fma(kr, vv[j][b], Batch<float>(w[j][r * w_stride[j]]) * s[b]);
        else
          s[b] = simd::fma(kr, vv[j][b], s[b]);
        if constexpr (!kExclusive) acc[j][b] = simd::fma(qr, s[b], acc[j][b]);
      }
    };
    update(0, std::bool_constant<kDecay != Decay::none>{});
    unrolled_tokens<NT>([&](int j) { update(j, std::bool_constant<kDecay == Decay::every_token>{}); });
    if constexpr (kRescale) {
      const Batch<float> p(w[NT - 1][r]);
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) s[b] = p * s[b];
    }
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) simd::store(row + b * W, s[b]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < NT; ++j)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      if constexpr (kExclusive) acc[j][b] = simd::fma(Batch<float>(x[j].bonus), vv[j][b], acc[j][b]);
      simd::store(o[j] + c0 + b * W, acc[j][b]);
    }
}

template <bool kDecay>
constexpr Decay kEvery = kDecay ? Decay::every_token : Decay::none;

// Look-ahead requests handed out between a block's tile passes (see AheadRows in run_recurrent's
// section): step() is called once after each pass. nullptr: none (decode steps, the last block).
struct AheadRows;
inline void ahead_step(AheadRows* ahead);
inline PassLines<kAheadLocality> pass_lines(const AheadRows* ahead);

// Columns [c0, c0 + NB*kWidth) through tokens x[0..n), NT at a time.
template <int NT, int NB, bool kDecay, bool kExclusive>
inline void recurrent_tile_tokens(float* S, index_t ldS, index_t Kf, index_t c0, const TokenOperands* x, index_t n,
                                  float* const* o, AheadRows* ahead) {
  index_t j = 0;
  for (; j + NT <= n; j += NT) {
    recurrent_tile<NT, NB, kEvery<kDecay>, kExclusive>(S, ldS, Kf, c0, x + j, o + j, pass_lines(ahead));
    ahead_step(ahead);
  }
  for (; j < n; ++j) {
    recurrent_tile<1, NB, kEvery<kDecay>, kExclusive>(S, ldS, Kf, c0, x + j, o + j, pass_lines(ahead));
    ahead_step(ahead);
  }
}

// The scalar tail: columns [c0, ncols), one at a time down the rows. Each column's readout
// sums over the Kf rows in 4 independent partial sums: one running sum made every row wait for
// the previous FMA, which made normalize's z column (V + 1 columns: a tail of one) cost as much
// as the vector tiles of 64 columns at Kf = 273.
template <bool kDecay, bool kExclusive>
inline void recurrent_tail(float* S, index_t ldS, index_t Kf, index_t c0, index_t ncols, const TokenOperands& x,
                           float* o) {
  constexpr index_t kSums = 4;
  const auto row_step = [&](index_t r, index_t c, float& sum) {
    float* s = S + r * ldS + c;
    const float wr = kDecay ? x.w[r * x.w_stride] : 1.f;
    if constexpr (kExclusive) sum += x.q[r] * *s;
    *s = wr * *s + x.k[r] * x.v[c];
    if constexpr (!kExclusive) sum += x.q[r] * *s;
  };
  for (index_t c = c0; c < ncols; ++c) {
    float sums[kSums] = {};
    index_t r = 0;
    for (; r + kSums <= Kf; r += kSums)
      for (index_t u = 0; u < kSums; ++u) row_step(r + u, c, sums[u]);
    for (; r < Kf; ++r) row_step(r, c, sums[0]);
    o[c] = (kExclusive ? x.bonus * x.v[c] : 0.f) + ((sums[0] + sums[1]) + (sums[2] + sums[3]));
  }
}

// Columns [c, ncols) through tokens x[0..n), in tiles of NB batches, NT tokens per pass.
template <int NT, int NB, bool kDecay, bool kExclusive>
inline void recurrent_columns(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands* x, index_t n,
                              float* const* o, AheadRows* ahead) {
  constexpr index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + NB * W <= ncols; c += NB * W)
    recurrent_tile_tokens<NT, NB, kDecay, kExclusive>(S, ldS, Kf, c, x, n, o, ahead);
  for (; c + W <= ncols; c += W) recurrent_tile_tokens<NT, 1, kDecay, kExclusive>(S, ldS, Kf, c, x, n, o, ahead);
  if (c < ncols)
    for (index_t j = 0; j < n; ++j) recurrent_tail<kDecay, kExclusive>(S, ldS, Kf, c, ncols, x[j], o[j]);
}

// Prefill tokens are processed kTokenBlock at a time (the driver interleaves heads per block, see
// driver.hpp), and inside a block 4 tokens per pass over 32-column tiles of the state: S is loaded
// and stored once per 4 tokens instead of every token, and a tile of a K=128 head (16 KB) stays in
// L1 where the whole 64 KB state did not. Measured (2 threads, median ms, quiet moments of a
// shared machine): gla-k128-t512 2.61 -> 1.95-2.1 with one token per pass and 64-column tiles
// -> 2.3; 2 tokens x 64 columns was within noise of 4 x 32 (1.93-2.22). A single token (decode)
// keeps 64-column tiles: 32-column ones took the rwkv6 step from 6.3 to 7.2-7.6 us. 16 tokens
// (was 8) since the lazy decay windows, which end with their block: one thread, thread CPU time,
// gla-k128-t512 1.27x over blocks of 8 (windows of 16 tokens, and the 64 KB state re-read half
// as often), gla-1.3b-t512 unchanged (2026-12-04, loaded AMD EPYC Zen 5).
constexpr index_t kTokenBlock = 16;

// The row stride (floats) of a prefill's working state of `width` columns. A tile pass walks a
// 32-column strip down all Kf rows. With rows a multiple of 2 KiB apart, or within a cache line
// of one (V = 512, 1024, 2048; normalize's 1025), the strip's rows fell in few L1 and L2 sets
// (at 4 KiB: 2 of L1's 64 sets) and each row's loads sat 4 KiB from the previous row's stores:
// the kernel ran at 38-40 GFLOP/s at V = 1024 and 2048 for every K from 64 to 1024. Those widths
// get rows one line past the multiple (1024 -> 1040 floats). Measured (recurrent_block alone,
// ungated, one thread, thread CPU time, AMD EPYC Zen 5, loaded): K = V = 1024 38 -> 185-203
// GFLOP/s, K = 256 V = 2048 39 -> 210, K = V = 512 96-151 -> 192-198. Other widths keep their
// stride: the kernel alone gained nothing from padding at V = 64 .. 256, and the extra line per
// row would grow the states a task interleaves (1 MiB at H = 16, K = V = 128: L2's size; a first
// rule padding every width measured 0.78-0.90x end to end there, though unchanged code varied as
// much on this loaded machine). The decode step runs on the caller's state layout and cannot pad
// it: from kRowWalkColumns on it walks the rows instead of column strips (recurrent_rows).
inline index_t state_row_stride(index_t width) {
  constexpr index_t kLine = 64 / static_cast<index_t>(sizeof(float));
  constexpr index_t kSpan = 2048 / static_cast<index_t>(sizeof(float));
  const index_t offset = width % kSpan;
  if (width < kSpan - kLine || (offset >= kLine && offset <= kSpan - kLine)) return width;
  const index_t lines = (width + kLine - 1) / kLine * kLine;
  return lines % kSpan == 0 ? lines + kLine : lines;
}

// Advances columns [0, ncols) of S through tokens x[0..n), token j writing o[j][0..ncols).
template <bool kDecay, bool kExclusive>
inline void recurrent_block_impl(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands* x, index_t n,
                                 float* const* o, AheadRows* ahead) {
  if (n >= 4)
    recurrent_columns<4, 2, kDecay, kExclusive>(S, ldS, Kf, ncols, x, n, o, ahead);
  else
    recurrent_columns<1, 4, kDecay, kExclusive>(S, ldS, Kf, ncols, x, n, o, ahead);
}

// Advances the state S ([Kf, ncols], rows ldS apart, contiguous columns) by n tokens in order
// (all decayed or none) and writes o[j][0..ncols) for each. `exclusive` selects the rwkv6 readout.
// `ahead` (optional): look-ahead requests to spread over the tile passes.
inline void recurrent_block(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands* x, index_t n,
                            bool exclusive, float* const* o, AheadRows* ahead = nullptr) {
  const bool decay = x[0].w != nullptr;
  if (decay && exclusive) return recurrent_block_impl<true, true>(S, ldS, Kf, ncols, x, n, o, ahead);
  if (decay) return recurrent_block_impl<true, false>(S, ldS, Kf, ncols, x, n, o, ahead);
  if (exclusive) return recurrent_block_impl<false, true>(S, ldS, Kf, ncols, x, n, o, ahead);
  recurrent_block_impl<false, false>(S, ldS, Kf, ncols, x, n, o, ahead);
}

// Rows [r0, r0 + R) of a row walk (recurrent_rows) over columns [0, nv): each row's update and
// its readout added to o, one column batch of all R rows at a time. The R rows are loaded before
// any is stored, so no load waits behind a store to the same offset of a page (rows 4 KiB apart
// alias there). `ahead` (floats) is where the rows to request come from: the next group's rows,
// R * ldS, or 0 for the last group. Each batch of each row asks for the batch `ahead` floats
// further, as a write prefetch (locality 2): the hardware prefetchers stop at page boundaries,
// and at V = 1024 every row is a new page. GCC emits `prefetchw` where the target has PRFCHW
// (Zen, Broadwell and later: the line comes into L1, ready to be written; no level hint) and
// `prefetcht1` (into L2) elsewhere; the figures below are `prefetchw`'s (-march=native). Measured (one thread, thread CPU time, GLA, 64 MiB of state, out of L3: K = V =
// 1024 with H = 16, K = 256 V = 1024 with B = 4, H = 16; without and with the requests in one
// process, two sessions): 35-45 -> 43-64 GB/s of state in and out, 1.2-1.5x; within L3 (H = 2,
// 8 MiB) they cost 144-148 -> 127-132 GB/s, the price paid for decode, whose states across
// layers exceed L3.
template <int R, bool kDecay, bool kExclusive>
inline void recurrent_row_group(float* S, index_t ldS, index_t r0, index_t nv, const TokenOperands& x, index_t ahead,
                                float* o) {
  static_assert(R <= 4, "the loops over R carry #pragma GCC unroll 4");
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  float* row[R];
  Batch<float> kr[R], qr[R], wr[R];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    const index_t r = r0 + j;
    row[j] = S + r * ldS;
    kr[j] = Batch<float>(x.k[r]), qr[j] = Batch<float>(x.q[r]);
    wr[j] = Batch<float>(kDecay ? x.w[r * x.w_stride] : 1.f);
  }
  const float* v = x.v;
  for (index_t c = 0; c < nv; c += W) {
    const Batch<float> vv = simd::load(v + c);
    Batch<float> acc = simd::load(o + c), s[R];
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) s[j] = simd::load(row[j] + c);
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) prefetch_row<true, 2>(row[j] + ahead + c, 1);
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {
      if constexpr (kExclusive) acc = simd::fma(qr[j], s[j], acc);
      s[j] = kDecay ? simd::fma(kr[j], vv, wr[j] * s[j]) : simd::fma(kr[j], vv, s[j]);
      if constexpr (!kExclusive) acc = simd::fma(qr[j], s[j], acc);
    }
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) simd::store(row[j] + c, s[j]);
    simd::store(o + c, acc);
  }
}

// Columns [0, nv) of all Kf rows by row walk, 4 rows at a time.
template <bool kDecay, bool kExclusive>
inline void recurrent_row_groups(float* S, index_t ldS, index_t Kf, index_t nv, const TokenOperands& x, float* o) {
  constexpr index_t kRows = 4;
  index_t r = 0;
  for (; r + kRows <= Kf; r += kRows) {
    const index_t ahead = r + 2 * kRows <= Kf ? kRows * ldS : 0;
    recurrent_row_group<kRows, kDecay, kExclusive>(S, ldS, r, nv, x, ahead, o);
  }
  for (; r < Kf; ++r) recurrent_row_group<1, kDecay, kExclusive>(S, ldS, r, nv, x, r + 1 < Kf ? ldS : 0, o);
}

// From this many columns a single token (a decode step) walks the state by rows (recurrent_rows)
// instead of the column tiles: the tiles walk a 64-column strip down all Kf rows, and on a
// caller's state with rows 4 KiB apart (V = 1024, 2048, 4096) each row's loads sat 4 KiB after
// the previous row's stores and the strip fell in 4 of L1's 64 sets: 31-36 GB/s of state in and
// out where the row walk streams 102-148 GB/s (one thread, state in L3). Measured one thread,
// thread CPU time, GLA step, AMD EPYC Zen 5, load average 3-8 (see the family README): V = 256
// and 384 0.97-1.15x, V = 512 0.86-1.06x, V = 768 0.82-0.90x with the state in L3 (6 MiB) but
// 1.6x at 12 MiB; V = 64 and 128 (states within L2) 0.6-0.75x: there the tiles keep o in
// registers, which is what those widths need.
constexpr index_t kRowWalkColumns = 256;
// The row walk takes the columns in blocks of this many: the block's o and v (8 KiB) stay in L1.
// Whole rows of 4096 or 8192 columns ran 0.8x slower (58 against 74 GB/s).
constexpr index_t kRowWalkBlock = 1024;

// One token on a state of at least kRowWalkColumns columns: o[0..ncols) accumulates in memory
// (L1) instead of registers, and each row is read and written front to back. Per column the
// readout sums the rows in order from zero, as the tiles do, so both give the same bits.
template <bool kDecay, bool kExclusive>
inline void recurrent_rows(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands& x, float* o) {
  const index_t nv = simd::vector_end(ncols);
  for (index_t c = 0; c < nv; c += simd::kWidth) simd::store(o + c, simd::Batch<float>(0.f));
  for (index_t c0 = 0; c0 < nv; c0 += kRowWalkBlock) {
    TokenOperands block = x;
    block.v = x.v + c0;
    recurrent_row_groups<kDecay, kExclusive>(S + c0, ldS, Kf, std::min(kRowWalkBlock, nv - c0), block, o + c0);
  }
  if constexpr (kExclusive)
    for (index_t c = 0; c < nv; c += simd::kWidth)
      simd::store(o + c, simd::fma(simd::Batch<float>(x.bonus), simd::load(x.v + c), simd::load(o + c)));
  if (nv < ncols) recurrent_tail<kDecay, kExclusive>(S, ldS, Kf, nv, ncols, x, o);
}

// One token: S advanced, o[0..ncols) written.
inline void recurrent_token(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands& x, bool exclusive,
                            float* o) {
  if (ncols < kRowWalkColumns) return recurrent_block(S, ldS, Kf, ncols, &x, 1, exclusive, &o);
  const bool decay = x.w != nullptr;
  if (decay && exclusive) return recurrent_rows<true, true>(S, ldS, Kf, ncols, x, o);
  if (decay) return recurrent_rows<true, false>(S, ldS, Kf, ncols, x, o);
  if (exclusive) return recurrent_rows<false, true>(S, ldS, Kf, ncols, x, o);
  recurrent_rows<false, false>(S, ldS, Kf, ncols, x, o);
}

// Per-thread scratch of the recurrent form: the operands of up to `slots` tokens. Small ones
// (a decode step's single token) live inline, so a step allocates nothing.
class RecurrentWorkspace {
 public:
  RecurrentWorkspace(index_t K, index_t Kf, index_t Vp, index_t slots = 1)
      : RecurrentWorkspace(K, Kf, Vp, slots, nullptr) {}
  // The same, with the slots in `storage` (grown when too small) where they do not fit inline:
  // a caller that keeps `storage` across calls allocates (and first-touches) it once.
  RecurrentWorkspace(index_t K, index_t Kf, index_t Vp, index_t slots, AlignedVector<float>* storage)
      : slot_(round_up(2 * Kf + std::max(Kf, K) + 2 * Vp + (slots > 1 ? 3 * Kf : 0))), K_(K), Kf_(Kf), Vp_(Vp),
        slots_(slots) {
    const auto n = static_cast<std::size_t>(slot_ * slots);
    if (n <= static_cast<std::size_t>(kInline)) {
      base_ = inline_;
      return;
    }
    AlignedVector<float>& heap = storage != nullptr ? *storage : heap_;
    if (heap.size() < n) heap.resize(n);
    // Zeros, as a fresh workspace has: a kept one holds the last call's operands.
    if (storage != nullptr) std::fill(heap.begin(), heap.begin() + static_cast<std::ptrdiff_t>(n), 0.f);
    base_ = heap.data();
  }
  RecurrentWorkspace(const RecurrentWorkspace&) = delete;
  RecurrentWorkspace& operator=(const RecurrentWorkspace&) = delete;

  index_t slots() const { return slots_; }
  float* q(index_t j = 0) { return base_ + j * slot_; }
  float* k(index_t j = 0) { return q(j) + Kf_; }
  float* v(index_t j = 0) { return k(j) + Kf_; }
  float* o(index_t j = 0) { return v(j) + Vp_; }
  float* w(index_t j = 0) { return o(j) + Vp_; }
  // A lazy window's folded q and k and the decay product P of token j (prefill only, slots > 1).
  float* lazy_q(index_t j) { return w(j) + std::max(Kf_, K_); }
  float* lazy_k(index_t j) { return lazy_q(j) + Kf_; }
  float* lazy_p(index_t j) { return lazy_k(j) + Kf_; }

 private:
  // Slots start on a batch boundary.
  static index_t round_up(index_t n) { return (n + simd::kWidth - 1) / simd::kWidth * simd::kWidth; }
  static constexpr index_t kInline = 1024;  // K = V = 128 needs 640 floats
  alignas(64) float inline_[kInline];
  AlignedVector<float> heap_;
  float* base_;
  index_t slot_, K_, Kf_, Vp_, slots_;
};

// Lazy decay. Within a window of tokens the state's rows decay by per-row scalars, so with
// P_j[r] = w_{a+1}[r] * ... * w_j[r] (a: the window's first token, P_a = 1) the state after token
// j is S_j = P_j * S'_j, where S'_a = S_a and S'_j = S'_{j-1} + (k_j / P_j) v_j^T, and the readout
// is o_j = (q_j * P_j) . S'_j (exclusive: (q_j * P_{j-1}) . S'_{j-1}). Folding P into q and k
// (O(K) per token) leaves 2 FMAs per state element and token instead of 3; the window's first
// token takes the plain update (its decay may be anything, 0 included) and its last multiplies the
// rows by P once. Windows are whole groups of kLazyGroup tokens of one block and end early: a
// group joins the window only if every P_j of its tokens stays within [kLazyMin, 1 / kLazyMin]
// (cumulative log-gates within +-30), so 1/P is at most 1e13 and never overflows or loses range
// for inputs below ~1e12; a group that cannot even open a window (a token's own decay out of the
// bound, NaN, or 0) runs the plain update, as do the block's last n % kLazyGroup tokens.
constexpr int kLazyGroup = 4;
constexpr float kLazyMin = 1e-13f;  // e^-29.9

// How a group of kLazyGroup tokens runs.
struct LazyGroup {
  enum class Mode : unsigned char { plain, open, extend } mode = Mode::plain;  // open: a window starts here
  bool closes = false;  // the window's last group: rescales the rows by P
};

// P = prev * w (prev nullptr: 1) over Kf rows; whether all of P lies within the lazy bound
// (false for NaN).
inline bool lazy_products(const float* prev, const TokenOperands& x, index_t Kf, float* P) {
  using simd::Batch;
  const Batch<float> lo(kLazyMin), hi(1.f / kLazyMin);
  auto in_bound = [&](const Batch<float>& p) { return xsimd::all((p >= lo) & (p <= hi)); };
  bool ok = true;
  const index_t nv = simd::vector_end(Kf);
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    const Batch<float> w = x.w_stride == 0 ? Batch<float>(x.w[0]) : simd::load(x.w + i);
    const Batch<float> p = prev ? simd::load(prev + i) * w : w;
    ok = ok && in_bound(p);
    simd::store(P + i, p);
  }
  for (index_t i = nv; i < Kf; ++i) {
    P[i] = (prev ? prev[i] : 1.f) * x.w[i * x.w_stride];
    ok = ok && P[i] >= kLazyMin && P[i] <= 1.f / kLazyMin;
  }
  return ok;
}

// y = x with q * Pq (Pq nullptr: 1) and k / P; y.w = P (for the rescale at a window's end).
inline void lazy_fold(const TokenOperands& x, const float* Pq, const float* P, index_t Kf, float* q, float* k,
                      TokenOperands& y) {
  using simd::Batch;
  const index_t nv = simd::vector_end(Kf);
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    const Batch<float> qi = simd::load(x.q + i);
    simd::store(q + i, Pq ? qi * simd::load(Pq + i) : qi);
    simd::store(k + i, simd::load(x.k + i) / simd::load(P + i));
  }
  for (index_t i = nv; i < Kf; ++i) {
    q[i] = Pq ? x.q[i] * Pq[i] : x.q[i];
    k[i] = x.k[i] / P[i];
  }
  y = x;
  y.q = q, y.k = k, y.w = P, y.w_stride = 1;
}

// Tokens [first, last) of a window whose previous token has product prev (nullptr: the window's
// first token): their products and folded operands into y, or false if a product leaves the bound.
inline bool lazy_tokens(const TokenOperands* x, index_t first, index_t last, const float* prev, index_t Kf,
                        bool exclusive, RecurrentWorkspace& ws, TokenOperands* y) {
  const float* p = prev;
  for (index_t j = first; j < last; ++j) {
    if (!lazy_products(p, x[j], Kf, ws.lazy_p(j))) return false;
    p = ws.lazy_p(j);
  }
  p = prev;
  for (index_t j = first; j < last; ++j) {
    lazy_fold(x[j], exclusive ? p : ws.lazy_p(j), ws.lazy_p(j), Kf, ws.lazy_q(j), ws.lazy_k(j), y[j]);
    p = ws.lazy_p(j);
  }
  return true;
}

// Splits tokens x[0..n) (n <= ws.slots(), all with per-row or scalar decays) into lazy windows:
// groups[g] says how group g (tokens [4g, 4g+4)) runs, y[j] its tokens' operands.
inline void plan_lazy_windows(const TokenOperands* x, index_t n, index_t Kf, bool exclusive, RecurrentWorkspace& ws,
                              TokenOperands* y, LazyGroup* groups) {
  const float* prev = nullptr;  // the open window's latest product; nullptr: no window open
  const index_t count = n / kLazyGroup;
  for (index_t g = 0; g < count; ++g) {
    const index_t j0 = g * kLazyGroup, j1 = j0 + kLazyGroup;
    groups[g] = LazyGroup{};
    if (prev && lazy_tokens(x, j0, j1, prev, Kf, exclusive, ws, y)) {
      groups[g].mode = LazyGroup::Mode::extend;
      prev = ws.lazy_p(j1 - 1);
      continue;
    }
    if (prev) groups[g - 1].closes = true;
    prev = nullptr;
    if (lazy_tokens(x, j0 + 1, j1, nullptr, Kf, exclusive, ws, y)) {
      groups[g].mode = LazyGroup::Mode::open;
      y[j0] = x[j0];
      prev = ws.lazy_p(j1 - 1);
    }
  }
  if (prev) groups[count - 1].closes = true;
}

// One group of kLazyGroup tokens on columns [c0, c0 + NB*kWidth).
template <int NB, bool kExclusive>
inline void lazy_group(float* S, index_t ldS, index_t Kf, index_t c0, const TokenOperands* x, const TokenOperands* y,
                       LazyGroup group, float* const* o, PassLines<kAheadLocality> ahead) {
  constexpr int NT = kLazyGroup;
  using Mode = LazyGroup::Mode;
  if (group.mode == Mode::plain)
    return recurrent_tile<NT, NB, Decay::every_token, kExclusive>(S, ldS, Kf, c0, x, o, ahead);
  if (group.mode == Mode::open && group.closes)
    return recurrent_tile<NT, NB, Decay::first_token, kExclusive, true>(S, ldS, Kf, c0, y, o, ahead);
  if (group.mode == Mode::open)
    return recurrent_tile<NT, NB, Decay::first_token, kExclusive>(S, ldS, Kf, c0, y, o, ahead);
  if (group.closes) return recurrent_tile<NT, NB, Decay::none, kExclusive, true>(S, ldS, Kf, c0, y, o, ahead);
  recurrent_tile<NT, NB, Decay::none, kExclusive>(S, ldS, Kf, c0, y, o, ahead);
}

// Columns [c0, c0 + NB*kWidth) through tokens x[0..n) as planned (plan_lazy_windows).
template <int NB, bool kExclusive>
inline void lazy_tile_tokens(float* S, index_t ldS, index_t Kf, index_t c0, const TokenOperands* x,
                             const TokenOperands* y, const LazyGroup* groups, index_t n, float* const* o,
                             AheadRows* ahead) {
  index_t j = 0;
  for (; j + kLazyGroup <= n; j += kLazyGroup) {
    lazy_group<NB, kExclusive>(S, ldS, Kf, c0, x + j, y + j, groups[j / kLazyGroup], o + j, pass_lines(ahead));
    ahead_step(ahead);
  }
  for (; j < n; ++j) {
    recurrent_tile<1, NB, Decay::every_token, kExclusive>(S, ldS, Kf, c0, x + j, o + j, pass_lines(ahead));
    ahead_step(ahead);
  }
}

// recurrent_block for decayed tokens x[0..n) with lazy windows, as planned (y, groups: see
// plan_lazy_windows; n <= kTokenBlock). The scalar tail columns run the plain update on x:
// columns are independent, so the two forms mix.
template <bool kExclusive>
inline void recurrent_block_lazy(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands* x,
                                 const TokenOperands* y, const LazyGroup* groups, index_t n, float* const* o,
                                 AheadRows* ahead = nullptr) {
  constexpr index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + 2 * W <= ncols; c += 2 * W) lazy_tile_tokens<2, kExclusive>(S, ldS, Kf, c, x, y, groups, n, o, ahead);
  for (; c + W <= ncols; c += W) lazy_tile_tokens<1, kExclusive>(S, ldS, Kf, c, x, y, groups, n, o, ahead);
  if (c < ncols)
    for (index_t j = 0; j < n; ++j) recurrent_tail<true, kExclusive>(S, ldS, Kf, c, ncols, x[j], o[j]);
}

// The decays and the bonus of token t, after x's q/k/v rows are loaded.
inline TokenOperands load_token_gates(const HeadProblem& p, index_t t, RecurrentWorkspace& ws, index_t slot,
                                      TokenOperands x) {
  const index_t K = p.K();
  if (p.gated()) {
    if (p.scalar_gate) {
      ws.w(slot)[0] = std::exp(std::max(p.g(t, 0), kGateFloor));
      x.w_stride = 0;
    } else {
      const ConstView<float, 1> g = p.g[t];
      if (g.is_last_dim_contiguous()) {
        exp_copy(g.data(), ws.w(slot), K);
      } else {
        load_gate_row(p, t, ws.w(slot));
        exp_inplace(ws.w(slot), K);
      }
      x.w_stride = 1;
    }
    x.w = ws.w(slot);
  }
  if (p.readout == Readout::exclusive_bonus) {
    x.bonus = bonus_dot(x.q, p.u, x.k, K);
  }
  return x;
}

// load_token_rows for 16-bit q/k/v storage: q, k and v widened into the slot's buffers, q scaled
// there (identity map, GLA and linear_attention). A feature map (linear_attention, never with a
// decay) needs its raw row apart from its output: the raw rows are widened into the decay slot
// (max(Kf, K) floats), which an ungated head does not use.
inline TokenOperands load_token_widened(const HeadProblem& p, index_t t, RecurrentWorkspace& ws, index_t slot) {
  TokenOperands x{};
  if (p.phi == FeatureMap::identity || p.gated()) {
    p.q.load(t, ws.q(slot));
    scaled_copy(ws.q(slot), p.scale, ws.q(slot), p.K());
    p.k.load(t, ws.k(slot));
  } else {
    const ConstView<float, 1> raw(ws.w(slot), {p.K()});
    p.q.load(t, ws.w(slot));
    apply_feature_map(p.phi, raw, p.scale, ws.q(slot));
    p.k.load(t, ws.w(slot));
    apply_feature_map(p.phi, raw, 1.f, ws.k(slot));
  }
  load_value_row(p, t, ws.v(slot));
  x.q = ws.q(slot), x.k = ws.k(slot), x.v = ws.v(slot);
  return x;
}

// Whether a head's stored q rows are its loaded ones up to the scale (fp32, identity map,
// contiguous rows): the prep can then read them in place.
inline bool reads_q_in_place(const HeadProblem& p) {
  return p.q.is_float() && p.phi == FeatureMap::identity && p.q.floats().is_last_dim_contiguous();
}

// q, k and v of token t of a head: phi(q)*scale in ws.q(slot), phi(k), v (+1 column). Contiguous
// rows with the identity map are used in place (k, v) or with one vector pass (q): this per-token
// work is O(K + V) next to the kernel's O(K V), but with scalar strided loops it cost ~30%.
// With `raw_q`, a q row read in place (reads_q_in_place) is left unscaled: *raw_q points at it and
// the caller fills ws.q(slot) (the lazy block's fused prep); otherwise *raw_q is ws.q(slot).
inline TokenOperands load_token_rows(const HeadProblem& p, index_t t, RecurrentWorkspace& ws, index_t slot,
                                     const float** raw_q = nullptr) {
  if (!p.q.is_float()) {
    const TokenOperands x = load_token_widened(p, t, ws, slot);
    if (raw_q) *raw_q = x.q;
    return x;
  }
  TokenOperands x{};
  const index_t K = p.K();
  const bool identity = p.phi == FeatureMap::identity;
  const ConstView<float, 1> q = p.q.floats()[t], k = p.k.floats()[t], v = p.v.floats()[t];
  const bool q_in_place = reads_q_in_place(p);
  if (raw_q && q_in_place) {
    *raw_q = q.data();
  } else {
    if (q_in_place)
      scaled_copy(q.data(), p.scale, ws.q(slot), K);
    else
      apply_feature_map(p.phi, q, p.scale, ws.q(slot));
    if (raw_q) *raw_q = ws.q(slot);
  }
  x.q = ws.q(slot);
  if (identity && k.is_last_dim_contiguous()) {
    x.k = k.data();
  } else {
    apply_feature_map(p.phi, k, 1.f, ws.k(slot));
    x.k = ws.k(slot);
  }
  if (!p.normalize && v.is_last_dim_contiguous()) {
    x.v = v.data();
  } else {
    load_value_row(p, t, ws.v(slot));
    x.v = ws.v(slot);
  }
  return x;
}

// Loads token t of a head: phi(q)*scale, phi(k), v (+1 column), decays, bonus.
inline TokenOperands load_token(const HeadProblem& p, index_t t, RecurrentWorkspace& ws, index_t slot = 0) {
  return load_token_gates(p, t, ws, slot, load_token_rows(p, t, ws, slot));
}

// Token t's log-gates as the lazy block's prep reads them: the stored row (one value for a scalar
// gate), or the row gathered into ws.w(slot) when strided (the prep overwrites it with the decays).
inline const float* log_gate_row(const HeadProblem& p, index_t t, RecurrentWorkspace& ws, index_t slot) {
  const ConstView<float, 1> g = p.g[t];
  if (p.scalar_gate || g.is_last_dim_contiguous()) return g.data();
  load_gate_row(p, t, ws.w(slot));
  return ws.w(slot);
}

// The rows a gated block's prep reads (fold_block_window), per token.
struct LazyBlockRows {
  const float* q[kTokenBlock];  // q rows, still to be multiplied by q_factor
  const float* g[kTokenBlock];  // log-gates: Kf of them, or one for a scalar gate
  float q_factor = 1.f;         // the scale when q is read in place, else 1 (already applied)
  // rwkv6's u [Kf] when contiguous: the prep sums each token's bonus q . (u * k) in its pass over
  // q and k. nullptr: no bonus (GLA), or a strided u, summed apart by bonus_dot.
  const float* u = nullptr;
};

// The whole per-token prep of a gated block x[0..n) (kLazyGroup <= n <= kTokenBlock) in one
// vector pass over each token's key rows, token after token, planning the block as ONE lazy
// window (token 0 opens it, each further group extends it; the case of gates within +-30 over
// 16 tokens, which is every GLA model's). The plain operands (decays exp(g) into ws.w(j), q *
// scale into ws.q(j)) are written for the tokens that run the plain update in that plan: the
// opening token 0 and the block's last n % 4. Tokens [1, n - n % 4) get the running product P_j,
// carried in lazy_p(n - n % 4 - 1) from token to token, its bound check and the fold: ws.lazy_q(j) = q P_j (rwkv6: q P_{j-1}),
// lazy_k(j) = k / P_j, and P_j in lazy_p(j) for the last of them (the window's rescale). Returns
// whether every product stayed within the bound. Where plan_lazy_windows would open the same
// window it computes the same products in the same order. Before this pass the exp, the
// products, the bound check and the fold were separate passes over workspace copies (~1/3 of
// the kernel at K = 64), and the lazy tokens' plain operands, written but not read, took L1 room
// and store slots (1.03-1.1x at L2-resident sizes). rwkv6 (with rows.u): each token's bonus
// q . (u * k) is summed in the same pass, its q and k already in registers, and the n sums
// reduced together (reduce_add_rows); as a pass of its own (bonus_dot per token: a dependent
// FMA chain and a horizontal sum each) it was ~4% of rwkv6's one-thread prefill at K = V = 64.
template <bool kScalarGate, bool kExclusive>
inline bool fold_block_window(const LazyBlockRows& rows, TokenOperands* x, index_t n, index_t Kf,
                              RecurrentWorkspace& ws) {
  using simd::Batch;
  const index_t lazy_end = n - n % kLazyGroup;
  float w_scalar[kTokenBlock] = {};
  for (index_t j = 0; j < n; ++j) {
    if constexpr (kScalarGate) w_scalar[j] = ws.w(j)[0] = std::exp(std::max(rows.g[j][0], kGateFloor));
    x[j].w = ws.w(j), x[j].w_stride = kScalarGate ? 0 : 1;
  }
  // Each token's destinations, once: computed from ws in the loop, the slot layout was reloaded
  // from ws after every store (~1/4 of this function's samples, gla-1.3b-t512). One hot 16-token
  // block's prep at K = V = 64: 0.35-0.57 -> 0.31-0.34 us (one thread, loaded Zen 5).
  float *out_q[kTokenBlock], *out_k[kTokenBlock];
  float* out_w[kTokenBlock];
  const float* in_k[kTokenBlock];
  for (index_t j = 0; j < n; ++j) {
    const bool plain = j == 0 || j >= lazy_end;
    out_q[j] = plain ? ws.q(j) : ws.lazy_q(j);
    out_k[j] = plain ? nullptr : ws.lazy_k(j);
    out_w[j] = ws.w(j);
    in_k[j] = x[j].k;
  }
  assert(lazy_end >= kLazyGroup);
  float* const last_p = ws.lazy_p(lazy_end - 1);
  const Batch<float> lo(kLazyMin), hi(1.f / kLazyMin), factor(rows.q_factor);
  simd::BatchBool<float> in_bound(true);
  const bool sum_bonus = kExclusive && rows.u != nullptr;
  static_assert(kTokenBlock % simd::kWidth == 0, "the bonus sums reduce kWidth tokens at a time");
  Batch<float> bonus[kTokenBlock];  // per token: the bonus's partial sums, one per lane
  if (sum_bonus)
    for (index_t j = 0; j < kTokenBlock; ++j) bonus[j] = Batch<float>(0.f);
  // Token by token, each row front to back: a token's q / k / gate rows (8 KiB apart from the
  // next token's at H = 16, K = 128) are read in order, where a pass per slice of key rows over
  // all tokens took a new line of 3n rows per slice (perf: ~23 cycles per token and slice at
  // gla-k128). The running product P waits in last_p between tokens: the same products in the
  // same order, the same bits. One thread, gla-k128-t512: 0.99x, gla-1.3b-t512 0.98x (with
  // the look-ahead as before; AMD EPYC Zen 5, load 5, 9 alternations).
  const index_t nv = simd::vector_end(Kf);
  for (index_t j = 0; j < n; ++j) {
    const bool plain = j == 0 || j >= lazy_end;
    const Batch<float> w_token(w_scalar[j]);
    for (index_t i = 0; i < nv; i += simd::kWidth) {
      Batch<float> w = w_token;
      if constexpr (!kScalarGate) {
        w = simd::exp(simd::load(rows.g[j] + i));
        if (plain) simd::store(out_w[j] + i, w);
      }
      const Batch<float> q = factor * simd::load(rows.q[j] + i);
      if (sum_bonus) bonus[j] = simd::fma(q * simd::load(rows.u + i), simd::load(in_k[j] + i), bonus[j]);
      if (plain) {
        simd::store(out_q[j] + i, q);
        continue;
      }
      const Batch<float> before = j == 1 ? Batch<float>(1.f) : simd::load(last_p + i);
      const Batch<float> P = j == 1 ? w : before * w;
      simd::store(last_p + i, P);  // after the window's last token: its P, for the rescale
      in_bound = in_bound & (P >= lo) & (P <= hi);
      simd::store(out_q[j] + i, kExclusive ? q * before : q * P);
      simd::store(out_k[j] + i, simd::load(in_k[j] + i) / P);
    }
  }
  bool ok = xsimd::all(in_bound);
  alignas(64) float bonus_sum[kTokenBlock];
  if (sum_bonus)
    for (index_t j = 0; j < kTokenBlock; j += simd::kWidth)
      simd::store(bonus_sum + j, simd::reduce_add_rows(bonus + j));
  for (index_t i = nv; i < Kf; ++i) {  // the key rows past the last full batch
    float P = 1.f, before = 1.f;
    for (index_t j = 0; j < n; ++j) {
      const bool plain = j == 0 || j >= lazy_end;
      const float w = kScalarGate ? w_scalar[j] : std::exp(rows.g[j][i]);
      const float q = rows.q_factor * rows.q[j][i];
      if (sum_bonus) bonus_sum[j] += q * rows.u[i] * x[j].k[i];
      if (plain) {
        if constexpr (!kScalarGate) ws.w(j)[i] = w;
        ws.q(j)[i] = q;
        continue;
      }
      before = P;
      P = j == 1 ? w : P * w;
      ok = ok && P >= kLazyMin && P <= 1.f / kLazyMin;
      ws.lazy_q(j)[i] = kExclusive ? q * before : q * P;
      ws.lazy_k(j)[i] = x[j].k[i] / P;
      if (j == lazy_end - 1) ws.lazy_p(j)[i] = P;
    }
  }
  if (sum_bonus)
    for (index_t j = 0; j < n; ++j) x[j].bonus = bonus_sum[j];
  return ok;
}

// The plain operands fold_block_window leaves out (tokens [1, n - n % 4): scaled q, decays), for
// a block that needs them: the scalar tail columns, or a window plan other than one per block.
inline void complete_plain_operands(const LazyBlockRows& rows, const HeadProblem& p, index_t n, RecurrentWorkspace& ws) {
  for (index_t j = 1; j < n - n % kLazyGroup; ++j) {
    scaled_copy(rows.q[j], rows.q_factor, ws.q(j), p.K());
    if (!p.scalar_gate) exp_copy(rows.g[j], ws.w(j), p.K());
  }
}

// The lazy plan of a gated block x[0..n) (kLazyGroup <= n <= kTokenBlock; q/k/v loaded by
// load_token_rows, rows as LazyBlockRows): completes the plain operands x (decays, scaled q,
// bonus) where they are read and fills y and groups as plan_lazy_windows does.
inline void plan_lazy_block(const HeadProblem& p, const LazyBlockRows& rows, TokenOperands* x, index_t n,
                            RecurrentWorkspace& ws, TokenOperands* y, LazyGroup* groups) {
  const index_t Kf = p.Kf();
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  bool one_window = false;
  if (p.scalar_gate)
    one_window = exclusive ? fold_block_window<true, true>(rows, x, n, Kf, ws)
                           : fold_block_window<true, false>(rows, x, n, Kf, ws);
  else
    one_window = exclusive ? fold_block_window<false, true>(rows, x, n, Kf, ws)
                           : fold_block_window<false, false>(rows, x, n, Kf, ws);
  if (!one_window || p.Vp() % simd::kWidth != 0) complete_plain_operands(rows, p, n, ws);
  // q . (u * k) of the stored q, times the scale (rows.q_factor or already applied), unless the
  // fold summed it (rows.u).
  if (exclusive && rows.u == nullptr)
    for (index_t j = 0; j < n; ++j) x[j].bonus = rows.q_factor * bonus_dot(rows.q[j], p.u, x[j].k, p.K());
  if (!one_window) return plan_lazy_windows(x, n, Kf, exclusive, ws, y, groups);
  const index_t count = n / kLazyGroup;
  y[0] = x[0];
  for (index_t j = 1; j < count * kLazyGroup; ++j) {
    y[j] = x[j];
    // P is read only at the window's end (the rescale): no decay inside the window.
    const bool last = j == count * kLazyGroup - 1;
    y[j].q = ws.lazy_q(j), y[j].k = ws.lazy_k(j), y[j].w = last ? ws.lazy_p(j) : nullptr, y[j].w_stride = 1;
  }
  for (index_t g = 0; g < count; ++g) groups[g] = LazyGroup{g == 0 ? LazyGroup::Mode::open : LazyGroup::Mode::extend};
  groups[count - 1].closes = true;
}

// Asks for the cache lines of token t's rows of a head, into L2 (kAheadLocality): q, k, v, the
// gates (one line for a scalar gate) and, for writing, o. Rows with strided elements are left to
// the hardware.
inline void prefetch_token(const HeadProblem& p, index_t t) {
  p.q.prefetch(t);
  p.k.prefetch(t);
  p.v.prefetch(t);
  if (p.gated()) {
    const ConstView<float, 1> g = p.g[t];
    const index_t n = g.stride(0) == 0 ? 1 : g.size(0);
    if (g.stride(0) <= 1) prefetch_row<false, kAheadLocality>(g.data(), n);
  }
  const TensorView<float, 1> o = p.o[t];
  if (o.is_last_dim_contiguous()) prefetch_row<true, kAheadLocality>(o.data(), o.size(0));
}

// The look-ahead of a prefill block: the rows of tokens [next, end) of the head the caller runs
// next, requested per_step tokens at a time after each of the block's tile passes, so the
// requests overlap the FMAs instead of waiting in one burst at the block's start (with
// them all issued while the block loaded its rows, the kernel ran at 0.54-0.56 of the FMA rate on
// the gla-1.3b rows, against 0.97 on L1-resident ones: see the family README). With at most one
// token per pass (K = V = 128: 16 passes per 16-token block) and fp32 q, k and v, each input's
// rows are found once, as a first address and a stride: asking the views for every token's row
// (prefetch_token: a view per row, a switch on the storage type) took 5-6% of gla-k128-t512's
// samples, and without it the call ran 0.89x (one thread) / 0.87-0.99x (two, process CPU time). With
// more tokens per pass (K = V = 64: 2) the same cheap requests, 2 tokens' rows in a burst after
// each pass, ran 1.08-1.23x slower (gla-1.3b-t512, one thread), and the views' cost was what spread
// them. Those now hand the read rows' lines to the passes, one per row of S (PassLines of a
// LineList, core/prefetch.hpp, as the delta rule's): 1.08-1.15x faster than the views at gla-1.3b
// T512 / T8192, simple_gla T8192 and rwkv6 h32 T512 (one thread, README). Gated heads only: the
// ungated tiles (2 ops per element, not 3) ran 0.88x so at linear_attention gla-1.3b T8192; and at
// K = V = 128 the spread ran 0.98x: both keep their former requests. 16-bit rows go through
// prefetch_token.
struct AheadRows {
  // Rows of one input: `bytes` from `first + t * stride` for token t of [next, end).
  struct RowStream {
    const char* first = nullptr;
    std::ptrdiff_t stride = 0, bytes = 0;
  };
  static constexpr index_t kLineCapacity = 512;  // 16 tokens of 4 rows of 128 floats
  const HeadProblem* p = nullptr;
  index_t next = 0, end = 0, per_step = 0;
  RowStream reads[4];  // q, k, v, gates: those with contiguous rows
  int read_count = 0;
  RowStream out;       // o, written; bytes 0: strided rows, left to the hardware
  bool by_view = false;  // prefetch_token per row (16-bit q/k/v; several tokens per pass, no lines)
  // More than one token per pass, gated: the read rows' lines, handed to the passes (pass_lines)
  // to ask for one per row of S; the outputs still go in a burst after each pass.
  LineList<kLineCapacity, kAheadLocality> lines;
  index_t line_next = 0, lines_per_pass = 0;

  // Tokens [first, last) of head over about `passes` steps. Out of line (once per block): inlined
  // into run_recurrent it left GCC 12 less room there and the per-token row views went out of
  // line instead. gla-1.3b T512 recurrent, one thread, against both out of line and pass_lines
  // always inlined: 0.96x both left to GCC, 0.98x this alone, 0.95x pass_lines alone (AMD EPYC
  // Zen 4, load 7-8, 8 alternated rounds).
  [[gnu::noinline]] AheadRows(const HeadProblem& head, index_t first, index_t last, index_t passes)
      : p(&head), next(first), end(last), per_step((last - first + passes - 1) / std::max<index_t>(passes, 1)) {
    if (first >= last) return;
    by_view = !(head.q.is_float() && head.k.is_float() && head.v.is_float());
    if (by_view) return;
    for (const InputRows* x : {&head.q, &head.k, &head.v}) add_read(x->floats(), x->floats().size(1));
    if (head.gated()) add_read(head.g, head.g.stride(1) == 0 ? 1 : head.g.size(1));
    if (head.o.stride(1) == 1 || head.o.size(1) <= 1) out = stream_of(head.o, head.o.size(1));
    if (per_step > 1) by_view = !(head.gated() && collect_lines(head.Kf(), passes));
  }

  PassLines<kAheadLocality> pass() const { return lines.lines(line_next, lines_per_pass); }
  void step() {
    line_next = std::min(lines.count, line_next + lines_per_pass);
    request(std::min(end, next + per_step));
  }
  // Whatever the passes left (fewer passes than planned: the scalar tail columns).
  void finish() {
    lines.lines().request_from(line_next);
    line_next = lines.count;
    request(end);
  }

 private:
  template <class View>
  RowStream stream_of(const View& rows, index_t n) const {
    RowStream s;
    s.first = reinterpret_cast<const char*>(rows.data());
    s.stride = static_cast<std::ptrdiff_t>(rows.stride(0) * static_cast<index_t>(sizeof(float)));
    s.bytes = static_cast<std::ptrdiff_t>(n * static_cast<index_t>(sizeof(float)));
    return s;
  }
  // Rows of n elements, stride(1) apart: requested only when contiguous (n <= 1 or stride 1), as
  // InputRows::prefetch and prefetch_token do.
  void add_read(const ConstView<float, 2>& rows, index_t n) {
    if (n <= 1 || rows.stride(1) == 1) reads[read_count++] = stream_of(rows, n);
  }
  // The read rows' lines of all tokens, if they fit and a pass over Kf rows can ask for its share.
  bool collect_lines(index_t Kf, index_t passes) {
    std::ptrdiff_t per_token = 0;
    for (int i = 0; i < read_count; ++i) per_token += (reads[i].bytes + 63) / 64;
    const index_t count = (end - next) * per_token;
    if (passes < 1 || count > kLineCapacity || (count + passes - 1) / passes > Kf) return false;
    for (index_t t = next; t < end; ++t)
      for (int i = 0; i < read_count; ++i) lines.add_row(reads[i].first + t * reads[i].stride, reads[i].bytes);
    lines_per_pass = (lines.count + passes - 1) / passes;
    return true;
  }
  void request(index_t stop) {
    if (by_view) {
      for (; next < stop; ++next) prefetch_token(*p, next);
      return;
    }
    for (; next < stop; ++next) {
      if (lines.count == 0)
        for (int i = 0; i < read_count; ++i)
          prefetch_row<false, kAheadLocality>(reads[i].first + next * reads[i].stride, reads[i].bytes);
      if (out.bytes > 0) prefetch_row<true, kAheadLocality>(out.first + next * out.stride, out.bytes);
    }
  }
};

inline void ahead_step(AheadRows* ahead) {
  if (ahead) ahead->step();
}

// Always inlined: it runs before every tile pass (see AheadRows' constructor for the measure).
[[gnu::always_inline]] inline PassLines<kAheadLocality> pass_lines(const AheadRows* ahead) {
  return ahead ? ahead->pass() : PassLines<kAheadLocality>{};
}

// The number of tile passes recurrent_block / recurrent_block_lazy make over n tokens and ncols
// columns (the vector tiles; the scalar tail takes none).
inline index_t tile_passes(index_t ncols, index_t n) {
  constexpr index_t W = simd::kWidth;
  const index_t NB = n >= 4 ? 2 : 4, NT = n >= 4 ? 4 : 1;
  const index_t tiles = ncols / (NB * W) + (ncols % (NB * W)) / W;
  return tiles * (n / NT + n % NT);
}

// The recurrent prefill of one head on the internal state S [Kf, Vp] (rows ldS >= Vp apart,
// state_row_stride(Vp) for speed), in blocks of ws.slots() tokens. Outputs go straight into o when
// its rows are contiguous and need no division. `ahead` (optional, at least as many tokens as p):
// the head the caller runs next, whose rows are requested into L2 through each block's tile passes
// (the driver's blocks over heads, whose rows lie 2 to 64 pages apart, where the hardware
// prefetchers lose track).
inline void run_recurrent(const HeadProblem& p, float* S, index_t ldS, RecurrentWorkspace& ws,
                          const HeadProblem* ahead = nullptr) {
  const index_t Kf = p.Kf(), Vp = p.Vp();
  assert(ldS >= Vp);
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  const bool direct = !p.normalize && p.o.is_last_dim_contiguous();
  TokenOperands x[kTokenBlock], y[kTokenBlock];
  LazyGroup groups[kTokenBlock / kLazyGroup];
  LazyBlockRows rows;
  rows.q_factor = reads_q_in_place(p) ? p.scale : 1.f;
  // The bonus runs over K, the fold over Kf: the same with rwkv6's identity map.
  if (exclusive && p.u.is_last_dim_contiguous() && p.Kf() == p.K()) rows.u = p.u.data();
  float* o[kTokenBlock];
  const index_t block = std::min(ws.slots(), kTokenBlock);
  for (index_t t0 = 0; t0 < p.T(); t0 += block) {
    const index_t n = std::min(block, p.T() - t0);
    const bool lazy = p.gated() && n >= kLazyGroup;
    for (index_t j = 0; j < n; ++j) {
      if (lazy) {
        x[j] = load_token_rows(p, t0 + j, ws, j, &rows.q[j]);
        rows.g[j] = log_gate_row(p, t0 + j, ws, j);
      } else {
        x[j] = load_token(p, t0 + j, ws, j);
      }
      o[j] = direct ? p.o.ptr(t0 + j) : ws.o(j);
    }
    if (lazy) plan_lazy_block(p, rows, x, n, ws, y, groups);
    AheadRows next_rows(ahead ? *ahead : p, t0, ahead ? std::min(t0 + n, ahead->T()) : t0, tile_passes(Vp, n));
    AheadRows* look = ahead ? &next_rows : nullptr;
    if (lazy && exclusive)
      recurrent_block_lazy<true>(S, ldS, Kf, Vp, x, y, groups, n, o, look);
    else if (lazy)
      recurrent_block_lazy<false>(S, ldS, Kf, Vp, x, y, groups, n, o, look);
    else
      recurrent_block(S, ldS, Kf, Vp, x, n, exclusive, o, look);
    if (look) look->finish();
    if (!direct)
      for (index_t j = 0; j < n; ++j) store_output_row(p, t0 + j, o[j]);
  }
}

}  // namespace seqmix::detail::la
