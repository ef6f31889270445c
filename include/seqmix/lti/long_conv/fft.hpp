// long_conv, FFT form: per channel, a zero-padded FFT of the input window and of the filter, a
// pointwise product, an inverse FFT. O(T log T) per channel instead of O(T L).
//
// FFT: our own batched transform (batched_fft.hpp, radix-2 butterflies grouped by 8), one channel pair per SIMD
// lane: two real channels a and b ride in one complex signal a + i b, whose spectrum Z gives both
// (X_a = (Z[k] + conj Z[-k]) / 2, X_b = (Z[k] - conj Z[-k]) / 2i), so a transform of length N costs
// what a real transform would per channel. Eigen's kissfft (unsupported/Eigen/FFT) was the first
// version: one scalar transform at a time, 4x slower for the whole operator (batched_fft.hpp).
#pragma once

#include <algorithm>
#include <string>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/batched_fft.hpp"
#include "seqmix/lti/long_conv/direct.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {
namespace detail {

// Smallest power of two >= need (and >= 4: the first and last passes are radix-4).
inline index_t long_conv_fft_size(index_t need) {
  index_t n = 4;
  while (n < need) n *= 2;
  return n;
}

// Taps that can reach an output: a causal tap s > S + T - 1 only meets rows below the window,
// a backward tap s > T - 1 only rows past the end (S = L-1 with a state, else 0).
inline index_t long_conv_fft_causal_taps(index_t L, index_t T, bool has_state) {
  return std::min(L, (has_state ? L - 1 : 0) + T);
}

// The FFT length of a call: the window holds S state rows and T inputs; the circular
// convolution with the causal taps must not wrap onto outputs [S, S+T) (N >= T + taps - 1 without
// a state, N >= S + T with one), nor the correlation with the backward taps (N >= T + Lb - 1).
inline index_t long_conv_fft_length(const LongConvDims& dims, bool has_state) {
  const index_t S = has_state ? dims.L - 1 : 0;
  const index_t taps = long_conv_fft_causal_taps(dims.L, dims.T, has_state), back = std::min(dims.Lb, dims.T);
  return long_conv_fft_size(S + dims.T + std::max<index_t>({taps - 1 - S, back - 1, 0}));
}

// Rows ahead that the column walks (gather, filter load, output) prefetch: a block's 32 channels
// are 128 bytes of a row, rows are D * 4 bytes apart, and the hardware prefetchers stop at page
// boundaries, so every row would otherwise be a miss (measured: the walks took 3/4 of the time
// at T = 4096, D = 768 before).
constexpr index_t kLongConvPrefetchRows = 8;

// Prefetches the floats [p, p + floats) of one row, a cache line at a time.
inline void long_conv_prefetch_span(const float* p, index_t floats, int write) noexcept {
  for (index_t i = 0; i < floats; i += 16) {
    if (write)
      __builtin_prefetch(p + i, 1, 3);
    else
      __builtin_prefetch(p + i, 0, 3);
  }
}

// Grows a scratch buffer to at least `floats` floats: the old buffer freed first (its values are
// never needed: every walk writes what it reads). A buffer of 4 MiB and more comes in transparent
// huge pages (AlignedAllocator, core/huge_pages.hpp), marked before its first touch. Why: a
// prepared call's wide walks hold up to 384 MiB (kLongConvFftWideWalkBytes), and growing it in
// 4 KiB pages cost the first call at T = 65536 1.4-1.7 s of CPU time against 0.22-0.26 s for the
// next ones (page faults and zeroing; resize also copied the old values), 0.5-0.7 s on main's
// 64 MiB walks (one thread and two, loaded).
inline void long_conv_grow_scratch(AlignedVector<float>& buffer, std::size_t floats) {
  if (buffer.size() >= floats) return;
  AlignedVector<float>().swap(buffer);
  buffer.resize(floats);
}

struct LongConvFftScratch {
  // [blocks][N][kFftElement] each: per channel block of the task's walk, the batched signal (its
  // spectrum, then the product of spectra in place), and the spectrum G of its filter pairs.
  AlignedVector<float> x, G;
  // [2][blocks][kFftElement]: the walk's (or a split call's) skip, then bias weights per block
  // (long_conv_row_weights), made once per walk for every row it writes.
  AlignedVector<float> weights;
  // The pool's call count when a task last took it (LongConvFftScratchPool::begin_call).
  std::uint64_t last_call = 0;
  std::size_t floats() const noexcept { return x.capacity() + G.capacity() + weights.capacity(); }
};

// Bytes of stale scratch (untaken in the last kLongConvScratchStaleCalls calls) a calling thread's
// pool keeps, 64 MiB: all of a two-thread call's up to T = L = 16384 (two tasks of 4 blocks,
// 2 x 32 MiB at N = 32768 with AVX-512). Past it, stale scratch is freed, the least recently taken
// first; scratch taken within those calls is kept whatever its size. Why: the pool kept one
// scratch per task that ever ran at once, each as large as its longest walk (384 MiB after one
// prepared call at T = 65536 on one thread, and 64 MiB more per thread count seen) for as long as
// the thread lived. Why only stale bytes count: a large recent scratch must not push out a small
// one used every 17th call (h3_run at P = 64: 16 diagonal calls between two shift calls).
constexpr std::size_t kLongConvScratchKeepBytes = std::size_t{64} << 20;

// Calls after which an untaken scratch counts as stale, 16. Why not free it at once: a scratch
// of a long call is worth keeping across the calls between two long ones (remaking 384 MiB at
// T = 65536 cost 1.4-1.7 s of CPU time in page faults and zeroing against 0.22-0.26 s for the
// call on kept scratch), and long_conv_crossover --prepared runs four kinds of call in turn
// (one and two threads, with and without a spectrum), each taking its own scratch.
constexpr std::uint64_t kLongConvScratchStaleCalls = 16;

// The tasks' scratch, kept by the calling thread across calls: a task takes one (made on first
// use) and gives it back, so the pool holds as many as ran at once, each sized for the longest
// transform it served, until they are stale beyond kLongConvScratchKeepBytes (begin_call). Why: a
// fresh 4 x 16 MiB per task and call at N = 131072 cost more CPU time in page faults and zeroing
// than the transforms did (perf, T = 16384: 60% of the call in memset and the fault handler; one
// thread, D = 768: 1.8 s per call against 0.62 s for the same work on reused buffers). Owned by the calling thread, not by the workers (kv_cache's
// KvScratchSet explains why), and locked because the workers share it.
class LongConvFftScratchPool {
 public:
  static LongConvFftScratchPool& local() {
    thread_local LongConvFftScratchPool pool;
    return pool;
  }
  // A free scratch for a task that needs `floats` signal floats: the smallest whose signal holds
  // them, else the largest (the task grows it). Why not the last given back: walks of a prepared
  // call differ in size with the thread count (long_conv_prepared_walk_width: 384 MiB on one
  // thread, 2 x 192 MiB on two at N = 131072), and a one-thread call after a two-thread one took a
  // 192 MiB scratch and grew it, page faults and zeroing included, every other call (1.4-1.5 s
  // against 0.25 s, long_conv_crossover --prepared, T = 65536).
  // Past kLongConvScratchKeepBytes, a scratch whose signal is over twice the task's is left for
  // the calls it was made for (a new one is made instead): a short call would otherwise keep a
  // long call's scratch from ever going stale (one thread: the only one kept).
  std::unique_ptr<LongConvFftScratch> take(std::size_t floats) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto oversized = [&](const LongConvFftScratch& scratch) {
      return scratch.floats() * sizeof(float) > kLongConvScratchKeepBytes && scratch.x.size() / 2 > floats;
    };
    std::size_t pick = free_.size();
    for (std::size_t i = 0; i < free_.size(); ++i) {
      if (oversized(*free_[i])) continue;
      if (pick == free_.size()) {
        pick = i;
        continue;
      }
      const std::size_t have = free_[i]->x.size(), best = free_[pick]->x.size();
      const bool fits = have >= floats, best_fits = best >= floats;
      if (fits ? !best_fits || have < best : !best_fits && have > best) pick = i;
    }
    if (pick == free_.size()) return stamped(std::make_unique<LongConvFftScratch>());
    std::unique_ptr<LongConvFftScratch> scratch = std::move(free_[pick]);
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(pick));
    return stamped(std::move(scratch));
  }
  // Counts a call on this thread (before its tasks take scratch) and frees stale scratch (taken
  // more than kLongConvScratchStaleCalls calls ago) while it is over kLongConvScratchKeepBytes:
  // the least recently taken first, the larger on a tie. A scratch taken within those calls
  // stays, so calls that repeat within 16 calls reuse theirs whatever its size; a call's scratch
  // is freed at the start of the 17th later call that did not take it, if stale scratch is then
  // over the bound (or by long_conv_release_thread_scratch).
  void begin_call() {
    const std::lock_guard<std::mutex> lock(mutex_);
    ++calls_;
    const auto stale = [&](const LongConvFftScratch& scratch) {
      return calls_ - scratch.last_call > kLongConvScratchStaleCalls;
    };
    std::size_t stale_bytes = 0;
    for (const auto& scratch : free_)
      if (stale(*scratch)) stale_bytes += scratch->floats() * sizeof(float);
    while (stale_bytes > kLongConvScratchKeepBytes) {
      const auto oldest = std::min_element(free_.begin(), free_.end(), [](const auto& a, const auto& b) {
        return a->last_call != b->last_call ? a->last_call < b->last_call : a->floats() > b->floats();
      });
      stale_bytes -= (*oldest)->floats() * sizeof(float);  // stale: the oldest of a stale set
      free_.erase(oldest);
    }
  }
  void give(std::unique_ptr<LongConvFftScratch> scratch) {
    const std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(scratch));
  }
  // Frees every kept scratch (long_conv_release_thread_scratch); none may be taken meanwhile.
  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    free_.clear();
  }
  // How many scratches the pool keeps.
  std::size_t held_scratches() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return free_.size();
  }
  // The floats the kept scratches hold (signals, filter spectra and row weights).
  std::size_t held_floats() {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::size_t floats = 0;
    for (const auto& scratch : free_) floats += scratch->floats();
    return floats;
  }

 private:
  std::unique_ptr<LongConvFftScratch> stamped(std::unique_ptr<LongConvFftScratch> scratch) const {
    scratch->last_call = calls_;
    return scratch;
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<LongConvFftScratch>> free_;
  std::uint64_t calls_ = 0;  // begin_call's count
};

// A task's channels: `blocks` adjacent blocks of `lanes` channels from c0 (the last one possibly
// narrower), walked together. lanes is E = kFftElement (a channel pair per SIMD lane), or W =
// simd::kWidth (narrow blocks: real parts only) when a call has too few blocks for its threads
// (long_conv_fft_block_lanes). Why: the walks over u, h and y read E floats (128 bytes
// with AVX-512) of each row, and at D = 768 a row is 3 KiB, so a block alone touches a new 4 KiB
// page every 1.3 rows and its walks ran at ~5 GB/s (150 of ~400 ms at T = 65536, one thread);
// blocks walked together take blocks x 128 bytes per row visited. The cost: their signals and
// spectra are held at once (2 N E floats per block).
struct LongConvWalk {
  index_t c0 = 0, blocks = 1, D = 0, lanes = kFftElement;
  index_t channel(index_t k) const noexcept { return c0 + k * lanes; }
  index_t width(index_t k) const noexcept { return std::min(lanes, D - channel(k)); }
  // Floats from channel c0 to the end of the last block (a row's span in a unit-stride view).
  index_t span() const noexcept { return channel(blocks - 1) + width(blocks - 1) - c0; }
};

// Most blocks a task walks together: 4 (512 bytes per row with AVX-512). At D = 768, T = 65536,
// one thread (perf samples, machine loaded) the three walks took 0.69x the samples of main's
// one-block walks; the whole call, 2 blocks against 4: 373 against 345 ms (one run each).
constexpr index_t kLongConvFftWalkBlocks = 4;

// The parts the first pass of a padded forward transform (and the last of the inverse) splits
// the length-N signal into: 8 when fft_split_parts(N) is 8, else 4 (shorter lengths too: then the
// quarters run in cache).
inline index_t long_conv_top_parts(index_t N) noexcept { return fft_split_parts(N) == 8 ? 8 : 4; }

// A block's signal of N positions (E floats each) as two halves: positions [0, N/2) at lo,
// [N/2, N) at hi. Contiguous (hi = lo + N/2 E) but for a prepared wide walk whose window and
// outputs lie in the lower half, where every block's upper half is one buffer of the walk
// (long_conv_walk_layout). Every part of the transforms lies in one half (a part holds N/8 or
// N/4 positions), and so does its mirror part (positions from N/2 on hold the odd frequencies,
// whose negations are odd too).
struct LongConvSignal {
  float* lo = nullptr;
  float* hi = nullptr;
  index_t half = 0;
  float* at(index_t position) const noexcept {
    return position < half ? lo + position * kFftElement : hi + (position - half) * kFftElement;
  }
};

inline LongConvSignal long_conv_contiguous_signal(float* x, index_t N) noexcept { return {x, x + N / 2 * kFftElement, N / 2}; }

// The first pass of the forward transform of a signal at x whose elements from `rows` on are zero
// and never written (no zero fill): fft_stage8 or fft_stage4 of length N (long_conv_top_parts),
// reading only the positions below `rows` (half of them under the usual padding, rows <= N/2).
// fft_dif on each part finishes the transform (the same butterflies and twiddles as
// batched_fft_forward). With `parts` (4 or 8) parts instead, and only the groups j in [j0, j1) of
// the pass (group j reads and writes positions j + m N / parts): a split block's piece
// (long_conv_fft_split_run). Tried at N = 131072 (prepared call, T = 65536, one thread,
// long_conv_crossover --passes, loaded): non-temporal stores of the pass's outputs (a block's
// 16 MiB signal stays in no cache) made it 1.7-2x slower (36-40 against 19-22 ms), and software
// prefetches 8 or 32 groups ahead of its strided streams (here and in the inverse's last pass)
// were flat over 4 alternations (18.6 against 18.7 ms). The twiddles come from the grouped table
// (FftTwiddles::stage8_twiddles, one line per group) rather than 14 streams of the re / im
// tables: first pass 9.2-12.3 against 13.9-15.9 ms, the inverse's last 8.0-11.6 against
// 12.1-15.4 (same profile, 3 alternations, load 7-8).
inline void long_conv_forward_top(index_t rows, const LongConvSignal& x, const FftTwiddles& tw, index_t parts,
                                  index_t j0, index_t j1) noexcept {
  constexpr index_t E = kFftElement;
  const index_t N = tw.N, end = std::min(j1, N / parts);
  const FftValue zero{FftBatch(0.f), FftBatch(0.f)};
  if (parts == 8) {
    const index_t e = N / 8;
    float* const part[8] = {x.at(0), x.at(e), x.at(2 * e), x.at(3 * e), x.at(4 * e), x.at(5 * e), x.at(6 * e), x.at(7 * e)};
    for (index_t j = j0; j < end; ++j) {
      const auto in = [&](index_t m) { return j + m * e < rows ? fft_load(part[m] + j * E) : zero; };
      FftValue a[8] = {in(0), in(1), in(2), in(3), in(4), in(5), in(6), in(7)};
      fft_butterfly8<false>(a, tw.stage8_twiddles(N) + j * kFftGroup8Floats);
      fft_store(part[0] + j * E, a[0]), fft_store(part[1] + j * E, a[1]), fft_store(part[2] + j * E, a[2]);
      fft_store(part[3] + j * E, a[3]), fft_store(part[4] + j * E, a[4]), fft_store(part[5] + j * E, a[5]);
      fft_store(part[6] + j * E, a[6]), fft_store(part[7] + j * E, a[7]);
    }
    return;
  }
  const index_t q = N / 4;
  float* const part[4] = {x.at(0), x.at(q), x.at(2 * q), x.at(3 * q)};
  for (index_t j = j0; j < end; ++j) {
    const auto in = [&](index_t m) { return j + m * q < rows ? fft_load(part[m] + j * E) : zero; };
    FftValue a0 = in(0), a1 = in(1), a2 = in(2), a3 = in(3);
    fft_butterfly4<false>(a0, a1, a2, a3, fft_twiddle<false>(tw, j), fft_twiddle<false>(tw, j + q),
                          fft_twiddle<false>(tw, 2 * j));
    fft_store(part[0] + j * E, a0), fft_store(part[1] + j * E, a1), fft_store(part[2] + j * E, a2);
    fft_store(part[3] + j * E, a3);
  }
}

inline void long_conv_forward_top(index_t rows, float* x, const FftTwiddles& tw, index_t parts, index_t j0,
                                  index_t j1) noexcept {
  long_conv_forward_top(rows, long_conv_contiguous_signal(x, tw.N), tw, parts, j0, j1);
}

inline void long_conv_forward_top(index_t rows, const LongConvSignal& x, const FftTwiddles& tw) noexcept {
  const index_t parts = long_conv_top_parts(tw.N);
  long_conv_forward_top(rows, x, tw, parts, 0, tw.N / parts);
}

inline void long_conv_forward_top(index_t rows, float* x, const FftTwiddles& tw) noexcept {
  long_conv_forward_top(rows, long_conv_contiguous_signal(x, tw.N), tw);
}

// The whole forward transform of such a signal: the first pass, then the parts.
inline void long_conv_forward_padded(index_t rows, float* x, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  long_conv_forward_top(rows, x, tw);
  const index_t len = tw.N / long_conv_top_parts(tw.N);
  for (index_t start = 0; start < tw.N; start += len) fft_dif(x + start * E, len, tw);
}

// The last pass of the inverse transform (unscaled) of a spectrum at x whose parts
// (long_conv_top_parts) went through fft_dit_inverse: the inverse fft_stage8 or fft_stage4 of
// length N, storing only positions [first, first + count), the window's outputs (half the
// positions under the usual padding); the others are left as they were. With `parts` parts and
// groups j in [j0, j1) only, as long_conv_forward_top.
inline void long_conv_inverse_top(const LongConvSignal& x, const FftTwiddles& tw, index_t first, index_t count,
                                  index_t parts, index_t j0, index_t j1) noexcept {
  constexpr index_t E = kFftElement;
  const index_t N = tw.N, end = std::min(j1, N / parts);
  const auto keep = [&](index_t position) { return position >= first && position - first < count; };
  if (parts == 8) {
    const index_t e = N / 8;
    float* const part[8] = {x.at(0), x.at(e), x.at(2 * e), x.at(3 * e), x.at(4 * e), x.at(5 * e), x.at(6 * e), x.at(7 * e)};
    for (index_t j = j0; j < end; ++j) {
      FftValue a[8] = {fft_load(part[0] + j * E), fft_load(part[1] + j * E), fft_load(part[2] + j * E),
                       fft_load(part[3] + j * E), fft_load(part[4] + j * E), fft_load(part[5] + j * E),
                       fft_load(part[6] + j * E), fft_load(part[7] + j * E)};
      fft_butterfly8<true>(a, tw.stage8_twiddles(N) + j * kFftGroup8Floats);
      for (index_t m = 0; m < 8; ++m)
        if (keep(j + m * e)) fft_store(part[m] + j * E, a[m]);
    }
    return;
  }
  const index_t q = N / 4;
  float* const part[4] = {x.at(0), x.at(q), x.at(2 * q), x.at(3 * q)};
  for (index_t j = j0; j < end; ++j) {
    FftValue a0 = fft_load(part[0] + j * E), a1 = fft_load(part[1] + j * E), a2 = fft_load(part[2] + j * E);
    FftValue a3 = fft_load(part[3] + j * E);
    fft_butterfly4<true>(a0, a1, a2, a3, fft_twiddle<true>(tw, j), fft_twiddle<true>(tw, j + q),
                         fft_twiddle<true>(tw, 2 * j));
    const FftValue out[4] = {a0, a1, a2, a3};
    for (index_t m = 0; m < 4; ++m)
      if (keep(j + m * q)) fft_store(part[m] + j * E, out[m]);
  }
}

inline void long_conv_inverse_top(float* x, const FftTwiddles& tw, index_t first, index_t count, index_t parts,
                                  index_t j0, index_t j1) noexcept {
  long_conv_inverse_top(long_conv_contiguous_signal(x, tw.N), tw, first, count, parts, j0, j1);
}

inline void long_conv_inverse_top(const LongConvSignal& x, const FftTwiddles& tw, index_t first, index_t count) noexcept {
  const index_t parts = long_conv_top_parts(tw.N);
  long_conv_inverse_top(x, tw, first, count, parts, 0, tw.N / parts);
}

inline void long_conv_inverse_top(float* x, const FftTwiddles& tw, index_t first, index_t count) noexcept {
  long_conv_inverse_top(long_conv_contiguous_signal(x, tw.N), tw, first, count);
}

// One element of a block's signal from `lanes` contiguous floats (lanes = E, or W with the
// imaginary parts zero). stream: non-temporal stores (long_conv_walk_streams).
inline void long_conv_store_row(const float* src, index_t lanes, float* dst, bool stream = false) noexcept {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  for (index_t i = 0; i < E; i += W) {
    const FftBatch v = i < lanes ? simd::load(src + i) : FftBatch(0.f);
    if (stream)
      simd::stream_store(dst + i, v);
    else
      simd::store(dst + i, v);
  }
}

// Bytes of a walk's signals (blocks x N x E floats) above which its gather stores the signals
// and its scatter stores y with non-temporal stores, 32 MiB. Why: such a walk writes all its
// signals before the first block's first pass reads any back (192-384 MiB for the wide walks at
// N = 131072), and y is written once and not read by the call, so the lines go to memory whatever
// the stores do; plain stores first read every line they write (read for ownership), a third of
// the gather's and the scatter's traffic. Pass profile at T = L = 65536, one thread (D = 768,
// long_conv_crossover --passes, loaded): gather 11.7-12.4 against 20.4-22.2 ms, scatter
// 16.8-19.4 against 20.9-22.2. Below it (the cache-sized walks, N <= 32768 with AVX-512) the
// first pass reads a block's rows back from cache. Tried with it and dropped: signals N + 1
// elements apart instead of N (so that a row's 24 blocks fall into different cache sets): the
// streaming gather took 16.4-17.3 ms instead of 11.4-12.6, the scatter no less.
constexpr index_t kLongConvFftStreamBytes = index_t{32} << 20;

inline bool long_conv_walk_streams(const LongConvWalk& walk, index_t N) noexcept {
  return walk.blocks * N * kFftElement * static_cast<index_t>(sizeof(float)) > kLongConvFftStreamBytes;
}

// Where a walk's signals lie in its scratch x: block k's at x + k stride E, whole, or with
// `halves` only its lower half there and every block's upper half in one buffer after them, at
// x + blocks stride E (long_conv_walk_layout).
struct LongConvWalkLayout {
  index_t stride = 0;
  bool halves = false;
  bool stream = false;  // long_conv_walk_streams
  std::size_t floats(const LongConvWalk& walk, index_t N) const noexcept {
    return static_cast<std::size_t>((walk.blocks * stride + (halves ? N / 2 : 0)) * kFftElement);
  }
  LongConvSignal signal(float* x, const LongConvWalk& walk, index_t k, index_t N) const noexcept {
    float* lo = x + k * stride * kFftElement;
    if (!halves) return long_conv_contiguous_signal(lo, N);
    return {lo, x + walk.blocks * stride * kFftElement, N / 2};
  }
};

// The layout of a walk at FFT length N whose window (and outputs) are its first `rows` positions.
// shared_halves: the walk transforms no filter in x (a prepared call's pair blocks). The upper
// halves are shared when the walk streams and rows <= N/2. Why: positions from N/2 on are zero
// before the first pass, which writes them without reading, and dead after the last pass (the
// outputs lie below N/2), so each block's upper half was read for ownership from memory and
// written back for nothing, 2 x 8 MiB per block at N = 131072; one buffer for all blocks stays
// in cache from one block to the next, and the walk holds half the scratch (200 instead of
// 384 MiB at D = 768, T = L = 65536).
inline LongConvWalkLayout long_conv_walk_layout(const LongConvWalk& walk, index_t N, index_t rows, bool shared_halves) {
  const bool stream = long_conv_walk_streams(walk, N);
  const bool halves = stream && shared_halves && rows <= N / 2;
  return {halves ? N / 2 : N, halves, stream};
}

// Copies taps [0, taps) of the walk's filter columns to their signals (block k's tap s at
// x + (k N + s) E; lane c % W of part c / W: channel c of the block, real part channel a,
// imaginary part channel b of each pair), one row of h after the other.
// imaginary: a narrow walk's taps into the imaginary parts only (long_conv_packed_product), the
// real parts left as they are. first: taps [first, taps) only (a split block's piece). N: the
// elements from one block's signal to the next (N/2 for lower halves, long_conv_walk_layout).
// stream: non-temporal stores (long_conv_walk_streams).
inline void long_conv_load_filter_rows(const ConstView<float, 2>& h, const LongConvWalk& walk, index_t taps,
                                       index_t group, index_t N, float* x, bool imaginary = false,
                                       index_t first = 0, bool stream = false) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  // One filter per channel, adjacent: a block's row is walk.lanes contiguous floats.
  const bool unit = group == 1 && h.stride(1) == 1;
  alignas(64) float buffer[E];
  for (index_t s = first; s < taps; ++s) {
    if (unit && s + kLongConvPrefetchRows < taps)
      long_conv_prefetch_span(h.ptr(s + kLongConvPrefetchRows, walk.c0), walk.span(), 0);
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* src = h.ptr(s, c / group);
      if (!unit || width != walk.lanes) {
        for (index_t i = 0; i < walk.lanes; ++i) buffer[i] = i < width ? h(s, (c + i) / group) : 0.f;
        src = buffer;
      }
      if (imaginary)
        simd::store(x + (k * N + s) * E + W, simd::load(src));  // walk.lanes == W
      else
        long_conv_store_row(src, walk.lanes, x + (k * N + s) * E, stream);
    }
  }
  if (stream) simd::stream_fence();
}

// The spectra G = FFT(h_a + i h_b) of the walk's filter pairs from their first `taps` causal
// and `back` backward taps, block k's at G + k N E (x: the same room, scratch). A backward filter
// hb enters through its correlation, conj(FFT(hb_a)) and conj(FFT(hb_b)): the same pair split
// applied to Gb[-k] (conj of (Gb[k] + conj Gb[-k]) / 2 is (Gb[-k] + conj Gb[k]) / 2, and likewise
// for the b part), so G[k] += Gb[-k] carries both filters in one spectrum (back = 0: none).
inline void long_conv_filter_spectra(const ConstView<float, 2>& filter, const ConstView<float, 2>& filter_backward,
                                     index_t taps, index_t back, index_t group, const LongConvWalk& walk,
                                     const FftTwiddles& tw, float* G, float* x) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t N = tw.N;
  long_conv_load_filter_rows(filter, walk, taps, group, N, G);
  for (index_t k = 0; k < walk.blocks; ++k) long_conv_forward_padded(taps, G + k * N * E, tw);
  if (back == 0) return;
  long_conv_load_filter_rows(filter_backward, walk, back, group, N, x);
  for (index_t k = 0; k < walk.blocks; ++k) long_conv_forward_padded(back, x + k * N * E, tw);
  for (index_t k = 0; k < walk.blocks; ++k) {
    float* Gk = G + k * N * E;
    const float* xk = x + k * N * E;
    for (index_t i = 0; i < N; ++i) {
      const float* mirrored = xk + tw.mirror[static_cast<std::size_t>(i)] * E;
      for (index_t v = 0; v < E; v += W) simd::store(Gk + i * E + v, simd::load(Gk + i * E + v) + simd::load(mirrored + v));
    }
  }
}

// The taps of a call that reach its outputs (causal, backward): the spectra hold these.
inline std::pair<index_t, index_t> long_conv_fft_filter_taps(index_t L, index_t Lb, index_t T, bool has_state) {
  return {long_conv_fft_causal_taps(L, T, has_state), std::min(Lb, T)};
}

// The spectra of a call's walk into scratch.G (block k's at scratch.G + k N E).
inline void long_conv_filter_spectra(const LongConvInputs& in, const LongConvWalk& walk, LongConvFftScratch& scratch,
                                     const FftTwiddles& tw) {
  const index_t group = in.u.size(2) / in.filter.size(1);
  const index_t Lb = in.filter_backward.has_value() ? in.filter_backward.size(0) : 0;
  const auto taps = long_conv_fft_filter_taps(in.filter.size(0), Lb, in.u.size(1), in.initial_state.has_value());
  long_conv_filter_spectra(in.filter, in.filter_backward, taps.first, taps.second, group, walk, tw, scratch.G.data(),
                           scratch.x.data());
}

// A narrow block's spectrum (one real channel per lane) from the pair spectrum G of the full
// block holding its channels: the full block's real parts (even narrow block) have
// H_a = (G[k] + conj G[-k]) / 2, its imaginary parts (odd) H_b = (G[k] - conj G[-k]) / 2i, lane
// for lane; a real filter's spectrum is what the narrow walk would have transformed. O(N).
inline void long_conv_narrow_spectrum(const float* G, bool odd, const FftTwiddles& tw, float* out) noexcept {
  constexpr index_t E = kFftElement;
  const FftBatch half(0.5f);
  for (index_t i = 0; i < tw.N; ++i) {
    const FftValue g = fft_load(G + i * E), gm = fft_load(G + tw.mirror[static_cast<std::size_t>(i)] * E);
    const FftValue h = odd ? FftValue{(g.im + gm.im) * half, (gm.re - g.re) * half}
                           : FftValue{(g.re + gm.re) * half, (g.im - gm.im) * half};
    fft_store(out + i * E, h);
  }
}

// Frequency k of the pairs' output spectrum from the signal's (z = Z[k], zm = Z[-k]) and the
// filters' (g = G[k], gm = G[-k]) pair spectra: with H_a = (g + conj gm) / 2 and
// H_b = (g - conj gm) / 2i, y_a + i y_b = IFFT(X_a H_a + i X_b H_b) = IFFT(Z P + conj(Z[-k]) Q)
// with P = (H_a + H_b) / 2N and Q = (H_a - H_b) / 2N (the inverse runs unscaled). c = 1 / 4N.
inline FftValue long_conv_pair_product(const FftValue& z, const FftValue& zm, const FftValue& g, const FftValue& gm,
                                       const FftBatch& c) noexcept {
  // 2 H_a = (g.re + gm.re, g.im - gm.im), 2 H_b = (g.im + gm.im, gm.re - g.re)
  const FftBatch ar = g.re + gm.re, ai = g.im - gm.im, br = g.im + gm.im, bi = gm.re - g.re;
  const FftValue P{(ar + br) * c, (ai + bi) * c}, Q{(ar - br) * c, (ai - bi) * c};
  const FftValue zp = fft_mul(z, P);
  // conj(zm) Q
  return {simd::fma(zm.re, Q.re, simd::fma(zm.im, Q.im, zp.re)), simd::fma(zm.re, Q.im, zp.im - zm.im * Q.re)};
}

// f(k, mk) for the positions k in [first, first + len) and their mirrors mk (positions of the
// negated frequencies, [mirror_first, mirror_first + len)): frequencies k and -k read the same
// values, so each mirrored pair of positions is visited once (by the lower position when the
// range is its own mirror).
template <class F>
inline void for_each_mirrored_pair(const FftTwiddles& tw, index_t first, index_t mirror_first, index_t len, F&& f) {
  for (index_t k = first; k < first + len; ++k) {
    const index_t mk = tw.mirror[static_cast<std::size_t>(k)];
    if (mirror_first == first && mk < k) continue;
    f(k, mk);
  }
}

// Elements of G the product prefetches ahead (k up, its mirror down: a part's mirror positions
// run backwards).
constexpr index_t kLongConvProductAhead = 16;

// The product of spectra, in place over the signal's, at positions [first, first + len) and at
// their mirrors [mirror_first, mirror_first + len); the filters' spectrum of those positions at
// g_part and g_mirror (each range lies in one half of either signal).
inline void long_conv_spectral_product(const LongConvSignal& x, const float* g_part, const float* g_mirror,
                                       const FftTwiddles& tw, index_t first, index_t mirror_first, index_t len) noexcept {
  constexpr index_t E = kFftElement;
  const FftBatch c(0.25f / static_cast<float>(tw.N));
  float* const part = x.at(first);
  float* const mirror = x.at(mirror_first);
  for_each_mirrored_pair(tw, first, mirror_first, len, [&](index_t k, index_t mk) {
    const index_t i = k - first, mi = mk - mirror_first;
    float* xk = part + i * E;
    float* xmk = mirror + mi * E;
    const FftValue z = fft_load(xk), zm = fft_load(xmk);
    if (i + kLongConvProductAhead < len) long_conv_prefetch_span(g_part + (i + kLongConvProductAhead) * E, E, 0);
    if (mi >= kLongConvProductAhead) long_conv_prefetch_span(g_mirror + (mi - kLongConvProductAhead) * E, E, 0);
    const FftValue g = fft_load(g_part + i * E), gm = fft_load(g_mirror + mi * E);
    fft_store(xk, long_conv_pair_product(z, zm, g, gm, c));
    if (mk != k) fft_store(xmk, long_conv_pair_product(zm, z, gm, g, c));
  });
}

// The same with the filters' spectrum G whole and contiguous (position k at G + k E).
inline void long_conv_spectral_product(const LongConvSignal& x, const float* G, const FftTwiddles& tw, index_t first,
                                       index_t mirror_first, index_t len) noexcept {
  long_conv_spectral_product(x, G + first * kFftElement, G + mirror_first * kFftElement, tw, first, mirror_first, len);
}

// The product of spectra of a packed narrow block (long_conv_load_filter_rows, imaginary: input in the real
// parts, filter in the imaginary parts, z = U + i H), in place over positions [first, first + len)
// and their mirrors as long_conv_spectral_product. For real u and h, conj Z[-k] = U - i H, so
// U H = (z^2 - conj(zm)^2) / 4i, and Y[-k] = conj Y[k] (y is real). c = 1 / 4N (the inverse runs
// unscaled).
inline void long_conv_packed_product(const LongConvSignal& x, const FftTwiddles& tw, index_t first, index_t mirror_first,
                                     index_t len) noexcept {
  constexpr index_t E = kFftElement;
  const FftBatch c(0.25f / static_cast<float>(tw.N));
  float* const part = x.at(first);
  float* const mirror = x.at(mirror_first);
  for_each_mirrored_pair(tw, first, mirror_first, len, [&](index_t k, index_t mk) {
    float* xk = part + (k - first) * E;
    float* xmk = mirror + (mk - mirror_first) * E;
    const FftValue z = fft_load(xk), zm = fft_load(xmk);
    // z^2 - conj(zm)^2 = (z.re^2 - z.im^2 - zm.re^2 + zm.im^2) + i (2 z.re z.im + 2 zm.re zm.im)
    const FftBatch re = simd::fma(z.re, z.re, -(z.im * z.im)) - simd::fma(zm.re, zm.re, -(zm.im * zm.im));
    const FftBatch im = simd::fma(z.re, z.im, zm.re * zm.im);
    // (re + i im) / 4i / N = (im - i re) c: the 2 of im folded into c's 1/4 -> 1/2
    const FftValue y{im * (c + c), -(re * c)};
    fft_store(xk, y);
    if (mk != k) fft_store(xmk, FftValue{y.re, FftBatch(0.f) - y.im});
  });
}

// The middle of one block's convolution, after the forward transform's first pass
// (long_conv_forward_top) and before the inverse's last one (long_conv_inverse_top), in place:
// depth first below the first pass, each part and its mirror part (a part of the bit-reversed
// spectrum holds one residue class of frequencies modulo the part count, its mirror the negated
// class) go through their forward stages, the product with the filters' pair spectrum G and
// their inverse stages while they are in cache (2 x 512 KiB at N = 32768, 2 x 2 MiB at
// N = 131072, with AVX-512), instead of a trip through memory for the product and one for the
// inverse's first read. The same operations per element as the transforms one after the other.
// Tried and slower at N = 131072 (medians of 6, loaded, 272 against 258 ms per call): the same
// recursively, each part pair's own parts paired down to the cache blocks. frequency0: the
// spectrum's position 0 (frequency 0), copied before the product. G null: a packed narrow block
// (long_conv_packed_product), its filter in the signal, unless `filter` is given: the filters'
// pair signal after its own first pass (long_conv_forward_top), whose part pairs go through
// their forward stages here, each just before the product reads it (long_conv_fft_rows_run).
inline void long_conv_convolve_parts(const LongConvSignal& x, const float* G, const FftTwiddles& tw, float* frequency0,
                                     const LongConvSignal& filter = {}) noexcept {
  constexpr index_t E = kFftElement;
  const index_t len = tw.N / long_conv_top_parts(tw.N);
  for (index_t part = 0; part < tw.N; part += len) {
    const index_t mirror = tw.mirror[static_cast<std::size_t>(part)] / len * len;
    if (mirror < part) continue;  // done with its mirror
    if (filter.lo != nullptr) {
      fft_dif(filter.at(part), len, tw);
      if (mirror != part) fft_dif(filter.at(mirror), len, tw);
    }
    fft_dif(x.at(part), len, tw);
    if (mirror != part) fft_dif(x.at(mirror), len, tw);
    if (part == 0)
      for (index_t i = 0; i < E; ++i) frequency0[i] = x.lo[i];
    if (filter.lo != nullptr)
      long_conv_spectral_product(x, filter.at(part), filter.at(mirror), tw, part, mirror, len);
    else if (G == nullptr)
      long_conv_packed_product(x, tw, part, mirror, len);
    else
      long_conv_spectral_product(x, G, tw, part, mirror, len);
    fft_dit_inverse(x.at(part), len, tw);
    if (mirror != part) fft_dit_inverse(x.at(mirror), len, tw);
  }
}

// One block's convolution in place: the forward transform of its window (the first `rows`
// elements, the rest zero and never read), the product with the filters' pair spectrum G (null:
// packed, as long_conv_convolve_parts), and the inverse, storing positions [first, first + count).
// filter: the filters' pair signal, its first `filter_rows` taps loaded and the rest zero, to
// transform here (long_conv_convolve_parts) instead of G.
inline void long_conv_convolve_block(const LongConvSignal& x, const float* G, index_t rows, index_t first, index_t count,
                                     const FftTwiddles& tw, float* frequency0, const LongConvSignal& filter = {},
                                     index_t filter_rows = 0) noexcept {
  if (filter.lo != nullptr) long_conv_forward_top(filter_rows, filter, tw);
  long_conv_forward_top(rows, x, tw);
  long_conv_convolve_parts(x, G, tw, frequency0, filter);
  long_conv_inverse_top(x, tw, first, count);
}

// Copies the window xs[-S .. T) of batch row b (state rows, then inputs), the walk's blocks, to
// their signals (block k's row r at x + (k N + r) E), one row of u after the other. Tried and
// slower: this walk fused with the first pass (rows r and r + N/4 read together, the four
// butterfly outputs written): the walks took 2.7x as long (perf samples, T = 16384, one thread);
// on the wide walks at T = 65536 (radix-8, rows j + m N/8 of u read straight into the pass, the
// 8 outputs stored) 41-86 ms against 36-48 for this walk and the first pass, whether groups or
// blocks ran inner or in tiles of 8-128 groups, and the inverse's last pass fused with the
// scatter broke even (one thread, loaded; docs/operators.md, long_conv, 2026-12-06).
// block_stride: elements from one block's signal to the next (long_conv_walk_layout); stream:
// non-temporal stores (long_conv_walk_streams). [r0, r1): the window rows to copy (a split
// block's piece; r1 < 0: to the end).
inline void long_conv_gather_rows(const LongConvInputs& in, const LongConvWalk& walk, index_t b, index_t S,
                                  index_t block_stride, float* x, bool stream, index_t r0 = 0, index_t r1 = -1) {
  constexpr index_t E = kFftElement;
  const index_t T = in.u.size(1), end = r1 < 0 ? S + T : std::min(r1, S + T);
  alignas(64) float buffer[E];
  for (index_t r = r0; r < end; ++r) {
    const bool state = r < S;
    const index_t ahead = r + kLongConvPrefetchRows;
    if (ahead >= S && ahead < end && in.u.stride(2) == 1)
      long_conv_prefetch_span(in.u.ptr(b, ahead - S, walk.c0), walk.span(), 0);
    const index_t stride = state ? in.initial_state.stride(2) : in.u.stride(2);
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* src = state ? in.initial_state.ptr(b, r, c) : in.u.ptr(b, r - S, c);
      if (stride != 1 || width != walk.lanes) {
        for (index_t i = 0; i < walk.lanes; ++i) buffer[i] = i < width ? src[i * stride] : 0.f;
        src = buffer;
      }
      long_conv_store_row(src, walk.lanes, x + (k * block_stride + r) * E, stream);
    }
  }
  if (stream) simd::stream_fence();
}

// A walk's skip and bias weights for long_conv_scatter_rows: block k's at skip + k E and
// bias + k E (lane i: channel walk.channel(k) + i, zero past the block's width); null without
// skip (bias).
struct LongConvRowWeights {
  const float* skip = nullptr;
  const float* bias = nullptr;
  // The weights of the walk's block k, as a one-block walk's.
  LongConvRowWeights block(index_t k) const noexcept {
    return {skip == nullptr ? nullptr : skip + k * kFftElement, bias == nullptr ? nullptr : bias + k * kFftElement};
  }
};

// The walk's row weights, made in `buffer` (a scratch's weights: grown to 2 x blocks x E floats on
// first use, then only overwritten). Why here and not per scatter: the scatter runs per batch row
// of a walk and per piece of a split block (8 parts x pieces per signal), and made its two weight
// vectors on the heap every time.
inline LongConvRowWeights long_conv_row_weights(const LongConvInputs& in, const LongConvWalk& walk,
                                                AlignedVector<float>& buffer) {
  constexpr index_t E = kFftElement;
  const bool skip = in.skip.has_value(), bias = in.bias.has_value();
  if (!skip && !bias) return {};
  const index_t floats = walk.blocks * E;
  if (buffer.size() < static_cast<std::size_t>(2 * floats)) buffer.resize(static_cast<std::size_t>(2 * floats));
  float* skips = buffer.data();
  float* biases = buffer.data() + floats;
  for (index_t k = 0; k < walk.blocks; ++k)
    for (index_t i = 0; i < E; ++i) {
      const bool lane = i < walk.width(k);
      skips[k * E + i] = skip && lane ? in.skip(walk.channel(k) + i) : 0.f;
      biases[k * E + i] = bias && lane ? in.bias(walk.channel(k) + i) : 0.f;
    }
  return {skip ? skips : nullptr, bias ? biases : nullptr};
}

// Writes y[b, t, c] = conv (+ skip u, + bias) for t < T from the walk's inverse transforms (block
// k's output t at x + (k block_stride + S + t) E, channel c of the block in lane c % W of part
// c / W), one row of y after the other. weights: the walk's (long_conv_row_weights). stream:
// non-temporal stores to y where a row's run is aligned (long_conv_walk_streams). [t0, t1): the
// rows to write (a split block's piece; t1 < 0: to T).
inline void long_conv_scatter_rows(const LongConvInputs& in, const TensorView<float, 3>& y, const LongConvWalk& walk,
                                   const LongConvRowWeights& weights, index_t b, index_t S, index_t block_stride,
                                   const float* x, bool stream, index_t t0 = 0, index_t t1 = -1) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t end = t1 < 0 ? in.u.size(1) : std::min(t1, in.u.size(1));
  const float* skips = weights.skip;
  const float* biases = weights.bias;
  const bool skip = skips != nullptr, bias = biases != nullptr;
  const bool unit = y.stride(2) == 1 && in.u.stride(2) == 1;
  const auto aligned = [](const float* p) { return reinterpret_cast<std::uintptr_t>(p) % (W * sizeof(float)) == 0; };
  for (index_t t = t0; t < end; ++t) {
    if (unit && t + kLongConvPrefetchRows < end) {
      // (not when streaming: the prefetch for writing would read the lines the stores skip)
      if (!stream) long_conv_prefetch_span(y.ptr(b, t + kLongConvPrefetchRows, walk.c0), walk.span(), 1);
      if (skip) long_conv_prefetch_span(in.u.ptr(b, t + kLongConvPrefetchRows, walk.c0), walk.span(), 0);
    }
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* row = x + (k * block_stride + S + t) * E;
      if (unit && width == walk.lanes) {
        float* out = y.ptr(b, t, c);
        const float* u = in.u.ptr(b, t, c);
        for (index_t i = 0; i < walk.lanes; i += W) {
          FftBatch v = simd::load(row + i);
          if (skip) v += simd::load(skips + k * E + i) * simd::load(u + i);
          if (bias) v += simd::load(biases + k * E + i);
          if (stream && aligned(out + i))
            simd::stream_store(out + i, v);
          else
            simd::store(out + i, v);
        }
        continue;
      }
      for (index_t i = 0; i < width; ++i) {
        float v = row[i];
        if (skip) v += skips[k * E + i] * in.u(b, t, c + i);
        if (bias) v += biases[k * E + i];
        y(b, t, c + i) = v;
      }
    }
  }
  if (stream) simd::stream_fence();
}

// Lists the channels of a block (first: b * D + its first channel, width channels) whose window
// held a non-finite input, from frequency0 (the spectrum's position 0, E floats). Why it works:
// frequency 0 is the plain sum of the window (no twiddle on that path), so 0 * Z[0] is NaN in a
// lane part exactly when that channel's window holds an inf or NaN (or, harmlessly, when finite
// values overflow the sum). Such a value spreads over the whole pair's transform: both channels
// of the pair go to the direct form, in this batch row only (listed as b * D + d: the other rows
// keep their FFT results bit for bit, as without the NaN).
inline void long_conv_list_nonfinite(const float* frequency0, index_t first, index_t width,
                                     std::vector<index_t>& nonfinite) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  alignas(64) float lanes[E];
  for (index_t i = 0; i < E; i += W) simd::store(lanes + i, FftBatch(0.f) * simd::load(frequency0 + i));
  for (index_t lane = 0; lane < W; ++lane)
    if (lanes[lane] != 0.f || (lane + W < width && lanes[lane + W] != 0.f)) {
      if (lane < width) nonfinite.push_back(first + lane);
      if (lane + W < width) nonfinite.push_back(first + lane + W);
    }
}

// The prepared spectrum's block that serves channel block `block`: the same block, or with a
// tiled spectrum of `tile` blocks (tile > 0) block % tile.
inline index_t long_conv_prepared_block(index_t block, index_t tile) noexcept { return tile > 0 ? block % tile : block; }

// Whether a call has one batch row whose window (state rows and inputs) lies in the lower half of
// a length-N transform (the halves layout of long_conv_fft_rows_run).
inline bool long_conv_window_in_lower_half(const LongConvInputs& in, index_t N) noexcept {
  const index_t S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0;
  return in.u.size(0) == 1 && S + in.u.size(1) <= N / 2;
}

// Whether such a call without a prepared spectrum can make its filters' spectra block by block
// next to its signals' (long_conv_fft_rows_run): causal taps only, and those in the lower half too.
inline bool long_conv_fuses_filters(const LongConvInputs& in, index_t N) noexcept {
  return long_conv_window_in_lower_half(in, N) && !in.filter_backward.has_value() &&
         long_conv_fft_causal_taps(in.filter.size(0), in.u.size(1), in.initial_state.has_value()) <= N / 2;
}

// One task: the walk's channels of every batch row.
// prepared: the pair spectra of every full block of channels (LongConvFilterSpectrum's, block j
// at prepared + j N E), or null to transform the walk's filters here. tile > 0 (h3's prepared
// path): the spectrum holds `tile` blocks, made for tile E channels, that repeat over the call's
// channels (channel d reads filter column d % G, not d / (D / G)).
inline void long_conv_fft_walk(const LongConvInputs& in, const TensorView<float, 3>& y, const FftTwiddles& tw,
                               const LongConvWalk& walk, const float* prepared, LongConvFftScratch& scratch,
                               std::vector<index_t>& nonfinite, index_t tile = 0) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2), N = tw.N;
  const index_t S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0;
  const auto g_size = static_cast<std::size_t>(walk.blocks * N * E);
  // A narrow walk of a causal call transforms its filters with its input, one per lane's
  // imaginary part (long_conv_packed_product): two transforms per block and batch row instead of
  // three for the first row. Why: narrow walks run when threads outnumber the blocks (at 64
  // threads, D = 768), where each task's length is the call's time.
  const bool packed = prepared == nullptr && walk.lanes == W && !in.filter_backward.has_value();
  const bool own_spectra = !packed && (prepared == nullptr || walk.lanes != E);
  const LongConvWalkLayout layout = long_conv_walk_layout(walk, N, S + T, prepared != nullptr && walk.lanes == E);
  long_conv_grow_scratch(scratch.x, layout.floats(walk, N));
  if (own_spectra) long_conv_grow_scratch(scratch.G, g_size);
  const float* G = packed ? nullptr : scratch.G.data();
  // Block k's spectrum: adjacent in G, or a tiled prepared spectrum's block.
  const auto block_spectrum = [&](index_t k) -> const float* {
    if (prepared != nullptr && walk.lanes == E)
      return prepared + long_conv_prepared_block(walk.c0 / E + k, tile) * N * E;
    return G == nullptr ? nullptr : G + k * N * E;
  };
  const index_t taps = long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value());
  if (packed) {
    // no spectra: each batch row's signal carries the filters (loaded below, with the window)
  } else if (prepared == nullptr) {
    long_conv_filter_spectra(in, walk, scratch, tw);
  } else if (walk.lanes == E) {
    // block_spectrum reads the prepared blocks in place
  } else {
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t narrow = walk.c0 / W + k;
      long_conv_narrow_spectrum(prepared + long_conv_prepared_block(narrow / 2, tile) * N * E, narrow % 2 == 1, tw,
                                scratch.G.data() + k * N * E);
    }
  }
  float* x = scratch.x.data();
  const LongConvRowWeights weights = long_conv_row_weights(in, walk, scratch.weights);
  for (index_t b = 0; b < B; ++b) {
    long_conv_gather_rows(in, walk, b, S, layout.stride, x, layout.stream);
    if (packed) long_conv_load_filter_rows(in.filter, walk, taps, D / in.filter.size(1), N, x, true);
    // Block after block, its transforms and product while its signal is in cache.
    for (index_t k = 0; k < walk.blocks; ++k) {
      alignas(64) float lanes[E];
      long_conv_convolve_block(layout.signal(x, walk, k, N), block_spectrum(k), S + T, S, T, tw, lanes);
      long_conv_list_nonfinite(lanes, b * D + walk.channel(k), walk.width(k), nonfinite);
    }
    long_conv_scatter_rows(in, y, walk, weights, b, S, layout.stride, x, layout.stream);
  }
}

// A prepared call's walk holds its signals (N E floats per block) to this many bytes, 2 MiB,
// while one block's signal fits in twice that (up to N = 32768 with AVX-512), so a block's signal
// stays in L2 and L3 from its gather through its scatter. Why: with 4 blocks a walk wrote 16 MiB
// of signals at N = 32768 before the first block's first pass read them back; with 1 block the
// prepared call took 35-44 against 47-53 ms (one thread, T = 16384, nearly idle machine; under
// load 0.94-1.12x there, 0.83-0.93x at T = 8192 and 0.88x at 4096: docs/operators.md,
// long_conv). Longer blocks (N >= 65536) stay in no cache, and there the walks' wider rows of u
// and y win (T = 65536: 4 blocks faster than 1). A call
// without a prepared spectrum keeps its 4 blocks while a block fits in cache (N <= 32768 with
// AVX-512; wider walks above, long_conv_plain_walk_width): it also holds each block's filter spectrum and
// walks the filter's rows, and with 1 block it ran 1.12x slower (T = 16384, one thread, load 11).
constexpr index_t kLongConvFftWalkCacheBytes = index_t{2} << 20;

// Most blocks a prepared call's walk takes at FFT length N: as many as fit in
// kLongConvFftWalkCacheBytes (at least 1, at most kLongConvFftWalkBlocks) while one block's
// signal fits in twice that, else kLongConvFftWalkBlocks (N = 8192: 2, 16384 and 32768: 1 with
// AVX-512).
inline index_t long_conv_prepared_walk_blocks(index_t N) noexcept {
  const index_t block_bytes = N * kFftElement * static_cast<index_t>(sizeof(float));
  if (block_bytes > 2 * kLongConvFftWalkCacheBytes) return kLongConvFftWalkBlocks;
  return std::max<index_t>(1, std::min(kLongConvFftWalkBlocks, kLongConvFftWalkCacheBytes / block_bytes));
}

// Blocks a task walks together: as many as `most` while the call still splits into at least two
// tasks per thread (so the threads stay balanced).
inline index_t long_conv_fft_walk_blocks(index_t blocks, int concurrency, index_t most = kLongConvFftWalkBlocks) {
  index_t per = most;
  while (per > 1 && (blocks + per - 1) / per < 2 * static_cast<index_t>(concurrency)) --per;
  return per;
}

// Most bytes of scratch a walk holds at FFT lengths whose block stays in no cache (N E floats
// over 2 kLongConvFftWalkCacheBytes: N >= 65536 with AVX-512), 384 MiB: a prepared call's signals
// of all 24 blocks of D = 768 at N = 131072, or a call's without one, signals and filter spectra,
// of 12 blocks. Why: there each block's signal goes through memory anyway, and what
// the walk width buys is the rows of u and y read and written whole instead of 128 bytes of
// each 3 KiB row (a new 4 KiB page every 1.3 rows, ~5 GB/s). Pass profile at T = 65536, one
// thread (long_conv_crossover --passes, loaded): gather 35-44 ms and scatter 42-56 ms with
// 4 blocks, 27 and 31-45 with 12, 22 and 26-28 with all 24 (docs/operators.md, long_conv). The
// cost: the walk's scratch, kept by the calling thread's pool after the call, is that of all its
// blocks (a prepared call's walks together hold at most the prepared spectrum's own size, D N
// floats rounded to whole blocks, when no walk is capped; a call without one twice that).
constexpr index_t kLongConvFftWideWalkBytes = index_t{384} << 20;

// Blocks per wide walk (FFT lengths whose block stays in no cache) of `blocks` blocks on
// `concurrency` threads, each block holding `block_bytes` of scratch: as few walks as
// kLongConvFftWideWalkBytes allows but aiming at one per thread (a thread per walk keeps them
// balanced: the walks are equal but for the last), the blocks spread evenly over them. Rounding
// the width up can leave fewer walks than threads (24 blocks on 7 threads: 6 walks of 4).
inline index_t long_conv_wide_walk_width(index_t blocks, int concurrency, index_t block_bytes) {
  const index_t most = std::max<index_t>(1, kLongConvFftWideWalkBytes / block_bytes);
  const index_t walks = std::min(blocks, std::max((blocks + most - 1) / most, static_cast<index_t>(concurrency)));
  return (blocks + walks - 1) / walks;
}

// Blocks per walk of a prepared call of `blocks` blocks at FFT length N on `concurrency`
// threads: long_conv_prepared_walk_blocks' cache-sized walks (two or more per thread) while a
// block fits in cache; above, wide walks of up to kLongConvFftWideWalkBytes of signals
// (long_conv_wide_walk_width).
inline index_t long_conv_prepared_walk_width(index_t blocks, int concurrency, index_t N) {
  const index_t block_bytes = N * kFftElement * static_cast<index_t>(sizeof(float));
  if (block_bytes <= 2 * kLongConvFftWalkCacheBytes)
    return long_conv_fft_walk_blocks(blocks, concurrency, long_conv_prepared_walk_blocks(N));
  return long_conv_wide_walk_width(blocks, concurrency, block_bytes);
}

// Blocks per walk of a call without a prepared spectrum: long_conv_fft_walk_blocks' walks of up
// to 4 blocks while a block fits in cache (N <= 32768 with AVX-512, as before); above, wide walks
// whose signals and filter spectra together (2 N E floats per block) hold at most
// kLongConvFftWideWalkBytes: at D = 768 with AVX-512, N = 65536 one walk of 24 blocks on one
// thread, 12 + 12 on two; N = 131072 two walks of 12 on one thread, 12 + 12 on two (one batch
// row: long_conv_fft_rows_run instead). Why: as for
// a prepared call, the walk width decides how the gather, the filter load and the scatter touch
// u, h and y (whole rows instead of 512 bytes of each 3 KiB row). Measured (long_conv_crossover
// --prepared, one thread, D = L = T, loaded, docs/operators.md long_conv): T = 65536 4 blocks
// 349-386 ms, 12 blocks 323-366, 24 blocks 297-308 (24 not kept: 768 MiB of scratch); T = 32768
// 4 blocks 165-179, 24 blocks 139-151 ms.
inline index_t long_conv_plain_walk_width(index_t blocks, int concurrency, index_t N) {
  const index_t block_bytes = N * kFftElement * static_cast<index_t>(sizeof(float));
  if (block_bytes <= 2 * kLongConvFftWalkCacheBytes) return long_conv_fft_walk_blocks(blocks, concurrency);
  return long_conv_wide_walk_width(blocks, concurrency, 2 * block_bytes);
}

// Channels per block: E (a pair per lane), or W (narrow blocks, one channel per lane) when the
// narrow blocks all run at once (at most one per thread) and more than two threads wait. Why: at
// D = 768 a call has 24 full blocks, so 64 threads idled 89%; a narrow block costs the same
// transforms as a full one (the imaginary parts ride along as zeros) but half the walks over u,
// h and y, so each task takes no longer and twice the cores work. Never at one or two threads,
// where it would only double the transforms.
inline index_t long_conv_fft_block_lanes(index_t D, int concurrency) {
  const index_t narrow = (D + simd::kWidth - 1) / simd::kWidth, full = (D + kFftElement - 1) / kFftElement;
  return concurrency > 2 && narrow > full && narrow <= concurrency ? simd::kWidth : kFftElement;
}

// Overlap-save segments of a call's outputs: `count` runs of `length` outputs (the last one
// shorter), each convolved on its own from the L-1 inputs before it (the call's state for the
// first) with transforms of length N. Why: at many threads a call with few channel blocks leaves
// cores idle (D = 768: 24 blocks of pairs, 48 narrow ones, for 64 threads), and a short filter
// does not need the whole window in one transform: at T = 4096, L = 64 five segments of 820
// outputs run transforms of 1024 instead of 8192, 120 tasks a tenth as long each (two rounds on
// 64 cores) instead of 48.
struct LongConvFftSegments {
  index_t count = 1, length = 0, N = 0;
};

// Shortest segment: 8 (L-1) outputs (under a ninth of its window is the overlap) and at least
// 256 (a task also walks its filter and pays its dispatch).
constexpr index_t kLongConvMinSegmentRows = 256;

// The segments a causal call runs on `concurrency` threads, each segment a task per block of
// channel pairs: the count whose rounds of tasks (ceil(blocks x count / threads)) times a
// task's transforms (3 N log2 N) is smallest, fewer tasks on a tie; one segment (the whole
// window, narrow packed blocks of 2 transforms when long_conv_fft_block_lanes picks them) unless
// that is under 0.8x the whole call's estimate. Not at one or two threads, whose path and cost model (fast.hpp,
// measured on whole windows) stay as they were, nor for bidirectional calls (the backward taps
// read ahead of a segment).
inline LongConvFftSegments long_conv_fft_segments(const LongConvDims& dims, bool has_state, int concurrency) {
  const index_t whole_N = long_conv_fft_length(dims, has_state);
  LongConvFftSegments best{1, dims.T, whole_N};
  if (concurrency <= 2 || dims.Lb > 0) return best;
  const auto cost = [](index_t n) { return static_cast<double>(n) * std::log2(static_cast<double>(n)); };
  const auto rounds = [&](index_t tasks) { return static_cast<double>((tasks + concurrency - 1) / concurrency); };
  const index_t pairs = (dims.D + kFftElement - 1) / kFftElement;
  const index_t lanes = long_conv_fft_block_lanes(dims.D, concurrency);
  const double whole = rounds((dims.D + lanes - 1) / lanes) * (lanes == kFftElement ? 3.0 : 2.0) * cost(whole_N);
  const index_t min_rows = std::max(kLongConvMinSegmentRows, 8 * (dims.L - 1));
  double best_cost = 0.8 * whole, best_work = 0.0;
  for (index_t count = 2; count <= concurrency && dims.T / count >= min_rows; ++count) {
    const index_t length = (dims.T + count - 1) / count, N = long_conv_fft_size(dims.L - 1 + length);
    const double time = rounds(pairs * count) * 3.0 * cost(N), work = static_cast<double>(pairs * count) * cost(N);
    if (time < best_cost || (time == best_cost && best.count > 1 && work < best_work))
      best = {count, length, N}, best_cost = time, best_work = work;
  }
  return best;
}

// Segment [t0, t1) of a call as a call of its own: those inputs and, after the first segment,
// the L-1 inputs before t0 as its state (t0 >= L-1 by long_conv_fft_segments' lengths).
inline LongConvInputs long_conv_segment_inputs(const LongConvInputs& in, index_t t0, index_t t1) {
  if (t0 == 0 && t1 == in.u.size(1)) return in;
  LongConvInputs part = in;
  const index_t S = in.filter.size(0) - 1;
  part.u = in.u.slice(1, t0, t1 - t0);
  if (t0 > 0) part.initial_state = S > 0 ? in.u.slice(1, t0 - S, S) : ConstView<float, 3>{};
  return part;
}

// Recomputes by the direct form the channels `nonfinite` lists (b * D + d, each once, in any order).
// A channel whose input holds inf or NaN (and its pair) in a batch row: the FFT spread the
// value to every output of that row, so the direct form recomputes them and the non-finite values
// reach only the outputs that read them (docs/reliability.md, "Non-finite values"). Channels are
// independent. tiled: channel d reads filter column d % G (long_conv_fft_walk's tile).
inline void long_conv_fix_nonfinite(const LongConvInputs& in, const TensorView<float, 3>& y,
                                    const std::vector<index_t>& nonfinite, bool tiled = false) {
  const index_t D = in.u.size(2), G = in.filter.size(1);
  for (index_t bd : nonfinite) {
    const index_t b = bd / D, d = bd % D;
    LongConvInputs one = in;
    const index_t g = tiled ? d % G : d / (D / G);
    one.u = in.u.slice(0, b, 1).slice(2, d, 1);
    one.filter = in.filter.slice(1, g, 1);
    if (in.filter_backward.has_value()) one.filter_backward = in.filter_backward.slice(1, g, 1);
    if (in.skip.has_value()) one.skip = in.skip.slice(0, d, 1);
    if (in.bias.has_value()) one.bias = in.bias.slice(0, d, 1);
    if (in.initial_state.has_value()) one.initial_state = in.initial_state.slice(0, b, 1).slice(2, d, 1);
    long_conv_direct_run(one, y.slice(0, b, 1).slice(2, d, 1), serial_executor());
  }
}

// A call's convolution in four parallel passes, for calls whose walks are fewer than the threads
// (long_conv_fft_split_pieces). Why: at D = 768, T = L = 4096 on 64 threads the walks were 48
// narrow blocks, one task each, so a quarter of the cores idled and a task cost a block's whole
// transforms (~270 us). The split runs blocks of channel pairs (3 transforms per 2W channels
// against 2 per W for narrow blocks: their walks did 0.78x the narrow walks' work at that shape,
// one thread) and cuts each block's convolution into equal tasks, every (batch row, block)
// signal and every block's filter kept whole between the passes:
//   1. pieces: the rows of the window (and of the filter) that groups [j0, j1) of the first pass
//      read, then those groups of the first pass (radix-8: kLongConvSplitParts parts);
//   2. parts: the forward stages of one part of the signal (and of the filter);
//   3. parts: the product of spectra at one part's positions (reading the mirror part's values,
//      written to a second signal so that no task writes what another reads), then the
//      inverse stages of that part;
//   4. pieces: those groups of the inverse's last pass, then the output rows they produce.
// Parts are equal tasks (a part and its mirror part in one task, as long_conv_convolve_block
// does, would make half the tasks twice as long).
constexpr index_t kLongConvSplitParts = 8;

// Most scratch the split may hold (its signals, their products and the blocks' filter spectra,
// long_conv_fft_split_scratch_floats), 256 MiB. Why: the split keeps every signal at once and its
// scratch stays in the caller's pool after the call, (2B + 1) N * 2 * simd::kWidth floats per
// block: 1.1 GiB at B = 1, D = 768, T = L = 65536 with AVX-512, 6.4 GiB at B = 8, where the walks
// hold one task's blocks per running task whatever B (768 MiB for 48 narrow walks at N = 131072).
// It bought 0.95-0.99x of the 64-core time at T = 4096 (72 MiB); above the cap the walks run.
constexpr std::size_t kLongConvSplitMaxScratchBytes = std::size_t{256} << 20;

// The floats long_conv_fft_split_run's scratch holds for B batch rows of `blocks` blocks of pairs.
inline std::size_t long_conv_fft_split_scratch_floats(index_t B, index_t blocks, index_t N) noexcept {
  const auto signals = static_cast<std::size_t>(B * blocks);
  return ((2 * signals + static_cast<std::size_t>(blocks)) * static_cast<std::size_t>(N) + signals) * kFftElement;
}

// The pieces per signal (B x blocks of pairs) of passes 1 and 4: the count in 1..8 whose rounds
// of tasks per unit of work (ceil(signals x pieces / threads) / pieces) is smallest, fewer pieces
// on a tie (24 signals on 64 threads: 8 pieces, 192 tasks in three full rounds). 0: no split,
// when the walks (walk_tasks) already fill the threads, when the transform is too short to cut
// (N < 64), when the scratch would pass kLongConvSplitMaxScratchBytes, and always at one or two
// threads (whose path stays the walks).
inline index_t long_conv_fft_split_pieces(index_t B, index_t blocks, index_t walk_tasks, index_t N, int concurrency) {
  const index_t threads = concurrency, signals = B * blocks;
  if (concurrency <= 2 || walk_tasks >= threads || N < 64) return 0;
  if (long_conv_fft_split_scratch_floats(B, blocks, N) * sizeof(float) > kLongConvSplitMaxScratchBytes) return 0;
  index_t best = 1;
  double best_rounds = static_cast<double>((signals + threads - 1) / threads);
  for (index_t pieces = 2; pieces <= 8; ++pieces) {
    const double rounds = static_cast<double>((signals * pieces + threads - 1) / threads) / static_cast<double>(pieces);
    if (rounds < best_rounds) best = pieces, best_rounds = rounds;
  }
  return best;
}

// Rows [lo, hi) of the window intersected with [r0, r1), as a call f(lo, hi) when not empty.
template <class F>
inline void long_conv_piece_rows(index_t lo, index_t hi, index_t r0, index_t r1, F&& f) {
  lo = std::max(lo, r0), hi = std::min(hi, r1);
  if (lo < hi) f(lo, hi);
}

// The product of spectra (long_conv_pair_product) at positions [first, first + len) into out,
// reading x and G there and at the mirrored positions.
inline void long_conv_part_product(const float* x, const float* G, float* out, const FftTwiddles& tw, index_t first,
                                   index_t len) noexcept {
  constexpr index_t E = kFftElement;
  const FftBatch c(0.25f / static_cast<float>(tw.N));
  for (index_t k = first; k < first + len; ++k) {
    const index_t mk = tw.mirror[static_cast<std::size_t>(k)];
    fft_store(out + k * E, long_conv_pair_product(fft_load(x + k * E), fft_load(x + mk * E), fft_load(G + k * E),
                                                  fft_load(G + mk * E), c));
  }
}

// The split form of long_conv_fft_run (causal, no prepared spectrum, one segment) with `pieces`
// pieces per signal in passes 1 and 4.
inline void long_conv_fft_split_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor,
                                    const FftTwiddles& tw, index_t pieces) {
  constexpr index_t E = kFftElement, parts = kLongConvSplitParts;
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2), N = tw.N, len = N / parts;
  const index_t S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0, rows = S + T;
  const index_t blocks = (D + E - 1) / E, signals = B * blocks;
  const index_t taps = long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value());
  const index_t group = D / in.filter.size(1);
  LongConvFftScratchPool& pool = LongConvFftScratchPool::local();
  std::unique_ptr<LongConvFftScratch> scratch = pool.take(static_cast<std::size_t>(2 * signals * N * E));
  // x: signal (b, block) at x + (b blocks + block) N E, then its product of spectra (the
  // inverse's input) at out + the same; G: block's filter spectrum at G + block N E (the tasks of
  // batch row 0 make it), then the spectra's position 0 per signal (E floats each). No allocation
  // on the caller once the pool's scratch is this big.
  const auto signal_floats = static_cast<std::size_t>(signals * N * E);
  const auto spectra_floats = static_cast<std::size_t>(blocks * N * E);
  const std::size_t g_floats = long_conv_fft_split_scratch_floats(B, blocks, N) - 2 * signal_floats;  // spectra, then position 0s
  long_conv_grow_scratch(scratch->x, 2 * signal_floats);
  long_conv_grow_scratch(scratch->G, g_floats);
  float* x = scratch->x.data();
  float* out = x + signal_floats;
  float* G = scratch->G.data();
  float* frequency0 = G + spectra_floats;
  // Every block's skip and bias weights, made once for the call's pieces (block j's: .block(j)).
  const LongConvRowWeights weights = long_conv_row_weights(in, LongConvWalk{0, blocks, D, E}, scratch->weights);
  const auto walk_of = [&](index_t block) { return LongConvWalk{block * E, 1, D, E}; };
  // Piece p of a signal: first-pass groups [j0, j1); group j touches positions j + m len.
  const auto piece = [&](index_t p) { return std::make_pair(len * p / pieces, len * (p + 1) / pieces); };

  parallel_for(executor, signals * pieces, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t signal = i / pieces, b = signal / blocks, block = signal % blocks;
      const auto [j0, j1] = piece(i % pieces);
      float* xs = x + signal * N * E;
      float* filter = G + block * N * E;
      for (index_t m = 0; m < parts; ++m) {
        long_conv_piece_rows(j0 + m * len, j1 + m * len, 0, rows, [&](index_t r0, index_t r1) {
          long_conv_gather_rows(in, walk_of(block), b, S, N, xs, false, r0, r1);
        });
        if (b == 0)
          long_conv_piece_rows(j0 + m * len, j1 + m * len, 0, taps, [&](index_t s0, index_t s1) {
            long_conv_load_filter_rows(in.filter, walk_of(block), s1, group, N, filter, false, s0);
          });
      }
      long_conv_forward_top(rows, xs, tw, parts, j0, j1);
      if (b == 0) long_conv_forward_top(taps, filter, tw, parts, j0, j1);
    }
  });
  parallel_for(executor, signals * parts, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t signal = i / parts, part = i % parts * len;
      float* xs = x + signal * N * E;
      fft_dif(xs + part * E, len, tw);
      if (signal < blocks) fft_dif(G + (signal * N + part) * E, len, tw);  // batch row 0
      if (part == 0)
        for (index_t v = 0; v < E; ++v) frequency0[signal * E + v] = xs[v];
    }
  });
  parallel_for(executor, signals * parts, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t signal = i / parts, part = i % parts * len;
      float* product = out + signal * N * E;
      long_conv_part_product(x + signal * N * E, G + signal % blocks * N * E, product, tw, part, len);
      fft_dit_inverse(product + part * E, len, tw);
    }
  });
  parallel_for(executor, signals * pieces, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t signal = i / pieces, b = signal / blocks, block = signal % blocks;
      const auto [j0, j1] = piece(i % pieces);
      float* product = out + signal * N * E;
      long_conv_inverse_top(product, tw, S, T, parts, j0, j1);
      for (index_t m = 0; m < parts; ++m)
        long_conv_piece_rows(j0 + m * len, j1 + m * len, S, rows, [&](index_t r0, index_t r1) {
          long_conv_scatter_rows(in, y, walk_of(block), weights.block(block), b, S, N, product, false, r0 - S,
                                 r1 - S);
        });
    }
  });
  std::vector<index_t> nonfinite;
  for (index_t signal = 0; signal < signals; ++signal) {
    const index_t b = signal / blocks, block = signal % blocks;
    long_conv_list_nonfinite(frequency0 + signal * E, b * D + block * E, walk_of(block).width(0), nonfinite);
  }
  pool.give(std::move(scratch));
  if (!nonfinite.empty()) long_conv_fix_nonfinite(in, y, nonfinite);
}

// Whether a call runs long_conv_fft_rows_run: one batch row, blocks of pairs at least as many as
// the threads, FFT lengths whose block's signal takes kLongConvFftWalkCacheBytes or more (N >= 16384
// with AVX-512), window (and taps, without a prepared spectrum: long_conv_fuses_filters) in the
// transform's lower half, and every block's lower halves within kLongConvFftWideWalkBytes.
// Below that length the walks measured as fast or faster (T = L = 4096, N = 8192: 0.95-1.08x;
// 1024: 0.8x), their blocks' signals staying in cache from gather to scatter.
inline bool long_conv_fft_splits_rows(const LongConvInputs& in, index_t N, index_t lanes, int concurrency,
                                      bool prepared) noexcept {
  constexpr index_t E = kFftElement;
  const index_t blocks = (in.u.size(2) + E - 1) / E;
  const index_t block_bytes = N * E * static_cast<index_t>(sizeof(float));
  if (lanes != E || blocks < concurrency || block_bytes < kLongConvFftWalkCacheBytes) return false;
  if (!(prepared ? long_conv_window_in_lower_half(in, N) : long_conv_fuses_filters(in, N))) return false;
  return blocks * (block_bytes / 2) * (prepared ? 1 : 2) <= kLongConvFftWideWalkBytes;
}

// A call of one batch row (long_conv_fft_splits_rows) in three parallel passes: the rows of u
// (and of h, without a prepared spectrum) split into ranges over the threads, each range copied
// to every block's signal; each block's transforms, product and inverse
// (long_conv_convolve_block); the rows of y split again, written from every block. Signals in the
// halves layout: every block's lower half in one scratch of the call, the upper halves (written by
// the first pass, dead after the last) one per task. Without a prepared spectrum each block's
// filters go through their first pass right before its signal's and their part pairs through
// their forward stages right before the product reads them (long_conv_convolve_parts' filter).
// Why: the walks read and wrote 128-512 bytes of each 3 KiB row of u, h and y (1-4 blocks below
// N = 65536, 12 of 24 blocks per thread above), and made every block's filter spectrum whole
// before the first signal, a trip of 2 x N E floats per block through memory between its passes.
// Measured in one process, old path and this alternated 9 times (5 at T = 65536), medians of both
// threads' CPU time, AMD EPYC (Zen 5), machine loaded (load 17-19), D = 768, L = T, two threads:
// T = 8192 27.4 -> 18.8 ms (prepared 16.9 -> 14.1), T = 16384 72.6 -> 51.0 (prepared 52.2 -> 31.8);
// one thread T = 16384 72.9 -> 51.7 (56.2 -> 35.7); docs/operators.md, long_conv. Outputs equal
// bit for bit (the same butterflies in the same order). nonfinite[k]: block k's channels whose
// window held a non-finite input (long_conv_list_nonfinite).
inline void long_conv_fft_rows_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor,
                                   const FftTwiddles& tw, const float* prepared,
                                   std::vector<std::vector<index_t>>& nonfinite) {
  constexpr index_t E = kFftElement;
  const index_t T = in.u.size(1), D = in.u.size(2), N = tw.N, half = N / 2, blocks = (D + E - 1) / E;
  const bool has_state = in.initial_state.has_value();
  const index_t S = has_state ? in.filter.size(0) - 1 : 0, rows = S + T;
  const index_t taps = long_conv_fft_causal_taps(in.filter.size(0), T, has_state);
  const index_t group = D / in.filter.size(1);
  const LongConvWalk all{0, blocks, D, E};
  const auto lower_floats = static_cast<std::size_t>(blocks * half * E);
  LongConvFftScratchPool& pool = LongConvFftScratchPool::local();
  std::unique_ptr<LongConvFftScratch> lower = pool.take(lower_floats);
  long_conv_grow_scratch(lower->x, lower_floats);
  if (prepared == nullptr) long_conv_grow_scratch(lower->G, lower_floats);
  float* const x = lower->x.data();
  float* const G = prepared == nullptr ? lower->G.data() : nullptr;
  const LongConvRowWeights weights = long_conv_row_weights(in, all, lower->weights);
  const bool stream = long_conv_walk_streams(all, N);
  // Row ranges: a few per thread (parallel_for), each a whole number of rows of every block.
  const index_t row_end = prepared == nullptr ? std::max(rows, taps) : rows;
  parallel_for(executor, row_end, 64, [&](index_t r0, index_t r1) {
    if (r0 < rows) long_conv_gather_rows(in, all, 0, S, half, x, stream, r0, std::min(r1, rows));
    if (G != nullptr && r0 < taps)
      long_conv_load_filter_rows(in.filter, all, std::min(r1, taps), group, half, G, false, r0, stream);
  });
  nonfinite.assign(static_cast<std::size_t>(blocks), {});
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    std::unique_ptr<LongConvFftScratch> upper = pool.take(static_cast<std::size_t>(half * E));
    long_conv_grow_scratch(upper->x, static_cast<std::size_t>(half * E));
    if (G != nullptr) long_conv_grow_scratch(upper->G, static_cast<std::size_t>(half * E));
    for (index_t k = begin; k < end; ++k) {
      alignas(64) float lanes[E];
      const LongConvSignal signal{x + k * half * E, upper->x.data(), half};
      if (G == nullptr)
        long_conv_convolve_block(signal, prepared + k * N * E, rows, S, T, tw, lanes);
      else
        long_conv_convolve_block(signal, nullptr, rows, S, T, tw, lanes,
                                 LongConvSignal{G + k * half * E, upper->G.data(), half}, taps);
      long_conv_list_nonfinite(lanes, all.channel(k), all.width(k), nonfinite[static_cast<std::size_t>(k)]);
    }
    pool.give(std::move(upper));
  });
  parallel_for(executor, T, 64, [&](index_t t0, index_t t1) {
    long_conv_scatter_rows(in, y, all, weights, 0, S, half, x, stream, t0, t1);
  });
  pool.give(std::move(lower));
}

// FFT form over a validated call (prepared, tile: as in long_conv_fft_walk; its FFT length is the
// call's, so a prepared call never splits into segments).
inline void long_conv_fft_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor,
                              const float* prepared = nullptr, index_t tile = 0) {
  LongConvFftScratchPool::local().begin_call();  // before any task takes scratch (the split's too)
  const index_t D = in.u.size(2), B = in.u.size(0), T = in.u.size(1);
  const LongConvDims dims{B, T, D, in.filter.size(0),
                          in.filter_backward.has_value() ? in.filter_backward.size(0) : 0, in.filter.size(1)};
  const bool has_state = in.initial_state.has_value();
  const LongConvFftSegments segments = prepared != nullptr
                                           ? LongConvFftSegments{1, T, long_conv_fft_length(dims, has_state)}
                                           : long_conv_fft_segments(dims, has_state, executor.concurrency());
  const FftTwiddles& tw = fft_twiddles(segments.N);
  const index_t lanes = segments.count > 1 ? kFftElement : long_conv_fft_block_lanes(D, executor.concurrency());
  const index_t blocks = (D + lanes - 1) / lanes;
  const index_t per_walk = segments.count > 1    ? 1
                           : prepared != nullptr ? long_conv_prepared_walk_width(blocks, executor.concurrency(), segments.N)
                                                 : long_conv_plain_walk_width(blocks, executor.concurrency(), segments.N);
  const index_t walks = (blocks + per_walk - 1) / per_walk, tasks = walks * segments.count;
  if (segments.count == 1 && prepared == nullptr && !in.filter_backward.has_value()) {
    const index_t pieces =
        long_conv_fft_split_pieces(B, (D + kFftElement - 1) / kFftElement, tasks, segments.N, executor.concurrency());
    if (pieces > 0) return long_conv_fft_split_run(in, y, executor, tw, pieces);
  }
  std::vector<std::vector<index_t>> nonfinite(static_cast<std::size_t>(tasks));
  LongConvFftScratchPool& pool = LongConvFftScratchPool::local();
  if (segments.count == 1 && tile == 0 &&
      long_conv_fft_splits_rows(in, segments.N, lanes, executor.concurrency(), prepared != nullptr)) {
    long_conv_fft_rows_run(in, y, executor, tw, prepared, nonfinite);
  } else {
    parallel_for(executor, tasks, 1, [&](index_t begin, index_t end) {
      std::unique_ptr<LongConvFftScratch> scratch = pool.take(static_cast<std::size_t>(per_walk * segments.N * kFftElement));
      for (index_t i = begin; i < end; ++i) {
        const index_t first = i / segments.count * per_walk, segment = i % segments.count;
        const LongConvWalk walk{first * lanes, std::min(per_walk, blocks - first), D, lanes};
        const index_t t0 = segment * segments.length, t1 = std::min(T, t0 + segments.length);
        long_conv_fft_walk(long_conv_segment_inputs(in, t0, t1), y.slice(1, t0, t1 - t0), tw, walk, prepared, *scratch,
                           nonfinite[static_cast<std::size_t>(i)], tile);
      }
      pool.give(std::move(scratch));
    });
  }
  std::vector<index_t> channels;
  for (const auto& list : nonfinite) channels.insert(channels.end(), list.begin(), list.end());
  if (channels.empty()) return;
  std::sort(channels.begin(), channels.end());  // a channel's segments each listed it
  channels.erase(std::unique(channels.begin(), channels.end()), channels.end());
  long_conv_fix_nonfinite(in, y, channels, tile > 0);
}

}  // namespace detail

/// What a prepared filter spectrum is made for (LongConvFilterSpectrum).
struct LongConvSpectrumShape {
  index_t channels = 0;    ///< D, the calls' channels (u's last extent)
  index_t max_tokens = 0;  ///< the longest call's T; see LongConvFilterSpectrum for the T it serves
  /// causal (filter only) or bidirectional (filter and filter_backward).
  LongConvDirection direction = LongConvDirection::causal;
  /// The calls pass initial_state (a causal stream): their window holds L-1 state rows and every
  /// tap reaches an output, so the FFT length is fixed by L-1+T instead of T+min(L,T)-1.
  bool with_state = false;
};

/// A long-conv filter's spectrum, made once and owned by the caller, for calls whose filters are
/// fixed weights (inference: Hyena's filters after its MLP, an S4/S4D kernel of a given length).
/// A call with it (long_conv(in, spectrum, out, ...)) runs two transforms per channel pair instead of
/// three, reads no filter and skips the filter's finiteness check (done here, once).
///
/// Contract. Made from filter [L,G] (and filter_backward [Lb,G] when bidirectional) for
/// shape.channels = D channels. It serves a call exactly when: u's D, the filter's L and G (and Lb)
/// equal the ones it was made from; the direction is the same (options.direction, after
/// options.reverse, which any spectrum serves); initial_state is given iff shape.with_state; and
/// T is in [min_tokens(), max_tokens()], where max_tokens() = shape.max_tokens and min_tokens() is
/// the shortest T whose FFT length (the power of two N >= T + min(L, T) - 1, or >= L-1+T with a
/// state; bidirectional also >= T + min(Lb, T) - 1) is still fft_length(). Anything else is a ShapeError
/// before any output is written. The values are not compared: the call's filter views must hold
/// the values the spectrum was made from (they are still read by the direct form, when the
/// automatic choice takes it, and for channels whose input is not finite).
///
/// Size: D * N floats (rounded up to whole blocks of 2 * simd::kWidth channels; a filter shared
/// per head is expanded to its D channels), about twice the filter's size at L = T: 384 MiB at
/// D = 768, T = L = 65536. Calls with it at FFT lengths whose channel block stays in no cache
/// (N >= 65536 with AVX-512) walk wide blocks of channels, and the calling thread then keeps
/// scratch of up to the same size (384 MiB per running walk at most; long_conv_prepared_walk_width;
/// about 200 MiB on one thread at L = T, where the walk keeps only its signals' lower halves)
/// until 16 FFT calls on it no longer took it (long_conv_release_thread_scratch).
class LongConvFilterSpectrum {
 public:
  LongConvFilterSpectrum() = default;

  /// Validates like long_conv (shapes, finite taps), then transforms the filters, threaded over
  /// blocks of channels through `executor`.
  LongConvFilterSpectrum(const ConstView<float, 2>& filter, const ConstView<float, 2>& filter_backward,
                         const LongConvSpectrumShape& shape, const Executor& executor = serial_executor());

  /// True for a default-constructed spectrum, which serves no call.
  bool empty() const noexcept { return N_ == 0; }
  /// D: the channels of the calls it serves.
  index_t channels() const noexcept { return D_; }
  /// L: the (forward) filter's taps.
  index_t taps() const noexcept { return L_; }
  /// Lb: the backward filter's taps (0 unless bidirectional).
  index_t backward_taps() const noexcept { return Lb_; }
  /// G: the filter's columns (D, or the head count of a filter shared per head).
  index_t columns() const noexcept { return G_; }
  /// N: the FFT length every call it serves uses.
  index_t fft_length() const noexcept { return N_; }
  /// The shortest T it serves (the shortest whose FFT length is still fft_length()).
  index_t min_tokens() const noexcept { return min_T_; }
  /// The longest T it serves (shape.max_tokens).
  index_t max_tokens() const noexcept { return max_T_; }
  /// The direction it was made for (a call's options.reverse is served by either).
  LongConvDirection direction() const noexcept { return direction_; }
  /// Whether calls pass an initial_state (they must, exactly when this is true).
  bool with_state() const noexcept { return with_state_; }
  /// [ceil(D / E)][N][E] floats, E = 2 * simd::kWidth: block j's pair spectrum G = FFT(h_a + i h_b) of
  /// channels [j E, j E + E) (lane i: channels j E + i and j E + W + i), frequencies in the
  /// transform's bit-reversed order, the backward filter's correlation folded in.
  const float* data() const noexcept { return spectra_.data(); }

 private:
  index_t D_ = 0, L_ = 0, Lb_ = 0, G_ = 0, N_ = 0, min_T_ = 0, max_T_ = 0;
  LongConvDirection direction_ = LongConvDirection::causal;
  bool with_state_ = false;
  AlignedVector<float> spectra_;
};

/// Frees the FFT scratch that long_conv's FFT form keeps on the calling thread for its next call:
/// one scratch per task that ran at once, each as large as the longest walk it served (for
/// prepared calls up to the spectrum's own size: 384 MiB at D = 768, T = 65536, or about 200 MiB
/// where the walk shares one upper half among its signals, as at L = T). Without it the
/// thread keeps at most 64 MiB of scratch no task took in its last 16 FFT calls (the least
/// recently taken is freed first; scratch taken within those calls, of any size, stays), so a
/// long call's scratch is freed at the start of the 17th later call that does not take it, but
/// stays if the thread makes no more FFT calls. The next FFT call on this thread makes it again, paying the first call's
/// page faults and zeroing. Call it when a thread is done with long sequences and the memory is
/// wanted elsewhere at once; not while a long_conv call runs on this thread.
inline void long_conv_release_thread_scratch() { detail::LongConvFftScratchPool::local().clear(); }

namespace detail {

// The FFT length of a call of T tokens against these filter extents.
inline index_t long_conv_fft_length_for(index_t T, index_t D, index_t L, index_t Lb, index_t G, bool has_state) {
  return long_conv_fft_length(LongConvDims{1, T, D, L, Lb, G}, has_state);
}

// Refuses a spectrum that does not serve this (already validated) call, naming what differs
// (the argument `name`, e.g. "spectrum").
inline void check_long_conv_spectrum(const ArgCheck& check, const std::string& name,
                                     const LongConvFilterSpectrum& spectrum, const LongConvInputs& in,
                                     const LongConvOptions& options) {
  const auto n = [](index_t v) { return std::to_string(v); };
  if (spectrum.empty()) check.fail(name.c_str(), "is empty (default-constructed); make it from the filter first");
  const index_t T = in.u.size(1), D = in.u.size(2), L = in.filter.size(0), G = in.filter.size(1);
  const index_t Lb = in.filter_backward.has_value() ? in.filter_backward.size(0) : 0;
  if (spectrum.channels() != D) check.fail(name.c_str(), "was made for D = " + n(spectrum.channels()) + ", the call has D = " + n(D));
  if (spectrum.taps() != L || spectrum.columns() != G)
    check.fail(name.c_str(), "was made from a filter [" + n(spectrum.taps()) + ", " + n(spectrum.columns()) +
                               "], the call's is [" + n(L) + ", " + n(G) + "]");
  if (spectrum.direction() != options.direction || spectrum.backward_taps() != Lb)
    check.fail(name.c_str(), std::string("was made for a ") +
                               (spectrum.direction() == LongConvDirection::causal ? "causal" : "bidirectional") +
                               " call with Lb = " + n(spectrum.backward_taps()) + ", the call is " +
                               (options.direction == LongConvDirection::causal ? "causal" : "bidirectional") +
                               " with Lb = " + n(Lb));
  if (spectrum.with_state() != in.initial_state.has_value())
    check.fail(name.c_str(), std::string("was made ") + (spectrum.with_state() ? "with" : "without") +
                               " initial_state, the call passes " + (in.initial_state.has_value() ? "one" : "none"));
  if (T < spectrum.min_tokens() || T > spectrum.max_tokens())
    check.fail(name.c_str(), "serves T in [" + n(spectrum.min_tokens()) + ", " + n(spectrum.max_tokens()) +
                               "] (FFT length " + n(spectrum.fft_length()) + "), the call has T = " + n(T));
}

}  // namespace detail

inline LongConvFilterSpectrum::LongConvFilterSpectrum(const ConstView<float, 2>& filter,
                                                      const ConstView<float, 2>& filter_backward,
                                                      const LongConvSpectrumShape& shape, const Executor& executor) {
  constexpr index_t E = detail::kFftElement;
  const ArgCheck check("LongConvFilterSpectrum");
  check.enum_value("shape.direction", shape.direction, 2);
  if (shape.channels < 1) check.fail("shape.channels", "must be at least 1, got " + std::to_string(shape.channels));
  if (shape.max_tokens < 1) check.fail("shape.max_tokens", "must be at least 1, got " + std::to_string(shape.max_tokens));
  const bool bidirectional = shape.direction == LongConvDirection::bidirectional;
  if (bidirectional && shape.with_state) check.fail("shape.with_state", "is causal only; a bidirectional call takes no state");
  // The filter checks of validate_long_conv, on the filters alone.
  const index_t D = shape.channels, L = filter.size(0), G = filter.size(1);
  check.shape("filter", filter, {-1, -1}, "L,G");
  if (L < 1) check.fail("filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(filter.shape()));
  if (G < 1 || D % G != 0)
    check.fail("filter", "must have G = D columns (per channel) or G dividing D = " + std::to_string(D) +
                             " (shared per head), got shape " + shape_to_string(filter.shape()));
  index_t Lb = 0;
  if (bidirectional) {
    check.shape("filter_backward", filter_backward, {-1, G}, "Lb,G");
    Lb = filter_backward.size(0);
    if (Lb < 1) check.fail("filter_backward", "must have at least one tap (Lb >= 1) in a bidirectional call");
    detail::check_finite_filter(check, "filter_backward", filter_backward, executor);
  } else if (filter_backward.has_value()) {
    check.fail("filter_backward", "is given but shape.direction is causal");
  }
  detail::check_finite_filter(check, "filter", filter, executor);

  const index_t T = shape.max_tokens, N = detail::long_conv_fft_length_for(T, D, L, Lb, G, shape.with_state);
  index_t lo = 1, hi = T;  // the shortest T of the same FFT length (the length grows with T)
  while (lo < hi) {
    const index_t mid = lo + (hi - lo) / 2;
    if (detail::long_conv_fft_length_for(mid, D, L, Lb, G, shape.with_state) == N)
      hi = mid;
    else
      lo = mid + 1;
  }
  D_ = D, L_ = L, Lb_ = Lb, G_ = G, N_ = N, min_T_ = lo, max_T_ = T;
  direction_ = shape.direction, with_state_ = shape.with_state;

  // The taps a call of max_tokens reaches: a shorter call of the same FFT length reaches no more,
  // and the extra taps land in the zero padding, never on its outputs (T + taps - 1 <= N).
  const auto taps = detail::long_conv_fft_filter_taps(L, Lb, T, shape.with_state);
  const index_t blocks = (D + E - 1) / E;
  spectra_.assign(static_cast<std::size_t>(blocks * N * E), 0.f);
  const detail::FftTwiddles& tw = detail::fft_twiddles(N);
  detail::LongConvFftScratchPool& pool = detail::LongConvFftScratchPool::local();
  pool.begin_call();
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    std::unique_ptr<detail::LongConvFftScratch> scratch = pool.take(static_cast<std::size_t>(N * E));
    detail::long_conv_grow_scratch(scratch->x, static_cast<std::size_t>(N * E));
    for (index_t j = begin; j < end; ++j) {
      const detail::LongConvWalk walk{j * E, 1, D, E};
      detail::long_conv_filter_spectra(filter, filter_backward, taps.first, taps.second, D / G, walk, tw,
                                       spectra_.data() + j * N * E, scratch->x.data());
    }
    pool.give(std::move(scratch));
  });
}

/// FFT prefill: same arguments and results as reference::long_conv (float rounding of an
/// FFT: about 1e-6 relative to sum |h| |u|). Each channel's window (state rows and inputs) is
/// zero-padded to a power of two N >= S + T + L - 1, transformed (two channels per complex
/// transform, one pair per SIMD lane), multiplied by the filter's spectrum and transformed back.
/// One batch row at N >= 16384 (AVX-512; a block's signal of 2 MiB and more), window and taps in
/// the transform's lower half: the rows of u and h split over the threads, then a task per block,
/// then the rows of y (long_conv_fft_rows_run; scratch about 2 x D x N floats). Otherwise
/// threaded over groups of up to 4 blocks of 2 * simd::kWidth channels (fewer when the call
/// would split into fewer than two groups per thread; from N = 65536 with AVX-512, where a
/// block's signal stays in no cache, wider groups of up to 384 MiB of scratch each, about one per
/// thread: long_conv_plain_walk_width; blocks of simd::kWidth channels when more
/// than two threads would otherwise idle; on more than two threads, a causal call with a short
/// filter in overlap-save segments of its outputs, a task per segment and block, when that
/// finishes sooner, and one whose groups are still fewer than the threads in four passes of
/// equal tasks over its blocks' transforms); scratch per task and block 2 N * 2 *
/// simd::kWidth floats (the signal and the filters' spectrum, kept by the calling thread for its
/// next call: 384 MiB per task of 12 blocks at N = 131072 with AVX-512; the four passes hold every
/// block's at once, (2B + 1) N * 2 * simd::kWidth floats per block, and run only while that is at
/// most 256 MiB). A channel whose input is not finite is computed by the direct form, with its pair.
inline void long_conv_fft(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                          const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv_fft(rev.first, rev.second, detail::forward_options(options), executor);
  }
  detail::validate_long_conv("long_conv_fft", in, out, options, true, executor);
  detail::long_conv_fft_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace seqmix
