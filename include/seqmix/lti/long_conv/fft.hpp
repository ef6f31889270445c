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
#include <cmath>
#include <memory>
#include <mutex>
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

struct LongConvFftScratch {
  // [blocks][N][kFftElement] each: per channel block of the task's walk, the batched signal (its
  // spectrum, then the product of spectra in place), and the spectrum G of its filter pairs.
  AlignedVector<float> x, G;
};

// The tasks' scratch, kept by the calling thread across calls: a task takes one (made on first
// use) and gives it back, so the pool holds as many as ever ran at once, each sized for the
// longest transform seen. Why: a fresh 4 x 16 MiB per task and call at N = 131072 cost more CPU
// time in page faults and zeroing than the transforms did (perf, T = 16384: 60% of the call in
// memset and the fault handler; one thread, D = 768: 1.8 s per call against 0.62 s for the same
// work on reused buffers). Owned by the calling thread, not by the workers (kv_cache's
// KvScratchSet explains why), and locked because the workers share it.
class LongConvFftScratchPool {
 public:
  static LongConvFftScratchPool& local() {
    thread_local LongConvFftScratchPool pool;
    return pool;
  }
  std::unique_ptr<LongConvFftScratch> take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return std::make_unique<LongConvFftScratch>();
    std::unique_ptr<LongConvFftScratch> scratch = std::move(free_.back());
    free_.pop_back();
    return scratch;
  }
  void give(std::unique_ptr<LongConvFftScratch> scratch) {
    const std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(scratch));
  }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<LongConvFftScratch>> free_;
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

// The forward transform of a signal at x whose elements from `rows` on are zero and never
// written (no zero fill): the first pass (fft_stage4 of length N) reads only the positions below
// `rows` (half of them under the usual padding, rows <= N/2), then the quarters as fft_dif does
// them. The same butterflies and twiddles as batched_fft_forward.
inline void long_conv_forward_padded(index_t rows, float* x, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const index_t N = tw.N, q = N / 4;
  const FftValue zero{FftBatch(0.f), FftBatch(0.f)};
  for (index_t j = 0; j < q; ++j) {
    float* p = x + j * E;
    FftValue a0 = j < rows ? fft_load(p) : zero, a1 = j + q < rows ? fft_load(p + q * E) : zero;
    FftValue a2 = j + 2 * q < rows ? fft_load(p + 2 * q * E) : zero, a3 = j + 3 * q < rows ? fft_load(p + 3 * q * E) : zero;
    fft_butterfly4<false>(a0, a1, a2, a3, fft_twiddle<false>(tw, j), fft_twiddle<false>(tw, j + q),
                          fft_twiddle<false>(tw, 2 * j));
    fft_store(p, a0), fft_store(p + q * E, a1), fft_store(p + 2 * q * E, a2), fft_store(p + 3 * q * E, a3);
  }
  for (index_t m = 0; m < 4; ++m) fft_dif(x + m * q * E, q, tw);
}

// The inverse transform (unscaled) of a spectrum at x, its last pass (the inverse fft_stage4 of
// length N) storing only positions [first, first + count), the window's outputs (half the
// positions under the usual padding); the others are left as they were.
inline void long_conv_inverse_window(float* x, const FftTwiddles& tw, index_t first, index_t count) noexcept {
  constexpr index_t E = kFftElement;
  const index_t N = tw.N, q = N / 4;
  for (index_t m = 0; m < 4; ++m) fft_dit_inverse(x + m * q * E, q, tw);
  for (index_t j = 0; j < q; ++j) {
    float* p = x + j * E;
    FftValue a0 = fft_load(p), a1 = fft_load(p + q * E), a2 = fft_load(p + 2 * q * E), a3 = fft_load(p + 3 * q * E);
    fft_butterfly4<true>(a0, a1, a2, a3, fft_twiddle<true>(tw, j), fft_twiddle<true>(tw, j + q),
                         fft_twiddle<true>(tw, 2 * j));
    const FftValue out[4] = {a0, a1, a2, a3};
    for (index_t m = 0; m < 4; ++m) {
      const index_t position = j + m * q;
      if (position >= first && position - first < count) fft_store(p + m * q * E, out[m]);
    }
  }
}

// One element of a block's signal from `lanes` contiguous floats (lanes = E, or W with the
// imaginary parts zero).
inline void long_conv_store_row(const float* src, index_t lanes, float* dst) noexcept {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  for (index_t i = 0; i < E; i += W) simd::store(dst + i, i < lanes ? simd::load(src + i) : FftBatch(0.f));
}

// Copies taps [0, taps) of the walk's filter columns to their signals (block k's tap s at
// x + (k N + s) E; lane c % W of part c / W: channel c of the block, real part channel a,
// imaginary part channel b of each pair), one row of h after the other.
inline void long_conv_load_filter_rows(const ConstView<float, 2>& h, const LongConvWalk& walk, index_t taps,
                                       index_t group, index_t N, float* x) {
  constexpr index_t E = kFftElement;
  // One filter per channel, adjacent: a block's row is walk.lanes contiguous floats.
  const bool unit = group == 1 && h.stride(1) == 1;
  alignas(64) float buffer[E];
  for (index_t s = 0; s < taps; ++s) {
    if (unit && s + kLongConvPrefetchRows < taps)
      long_conv_prefetch_span(h.ptr(s + kLongConvPrefetchRows, walk.c0), walk.span(), 0);
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* src = h.ptr(s, c / group);
      if (!unit || width != walk.lanes) {
        for (index_t i = 0; i < walk.lanes; ++i) buffer[i] = i < width ? h(s, (c + i) / group) : 0.f;
        src = buffer;
      }
      long_conv_store_row(src, walk.lanes, x + (k * N + s) * E);
    }
  }
}

// The spectra G = FFT(h_a + i h_b) of the walk's filter pairs, block k's at scratch.G + k N E. A
// backward filter hb enters through its correlation, conj(FFT(hb_a)) and conj(FFT(hb_b)): the
// same pair split applied to Gb[-k] (conj of (Gb[k] + conj Gb[-k]) / 2 is (Gb[-k] + conj Gb[k]) / 2,
// and likewise for the b part), so G[k] += Gb[-k] carries both filters in one spectrum.
inline void long_conv_filter_spectra(const LongConvInputs& in, const LongConvWalk& walk, LongConvFftScratch& scratch,
                                     const FftTwiddles& tw) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t T = in.u.size(1), N = tw.N, group = in.u.size(2) / in.filter.size(1);
  float* G = scratch.G.data();
  const index_t taps = long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value());
  long_conv_load_filter_rows(in.filter, walk, taps, group, N, G);
  for (index_t k = 0; k < walk.blocks; ++k) long_conv_forward_padded(taps, G + k * N * E, tw);
  if (!in.filter_backward.has_value()) return;
  float* x = scratch.x.data();
  const index_t back = std::min(in.filter_backward.size(0), T);
  long_conv_load_filter_rows(in.filter_backward, walk, back, group, N, x);
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

// The product of spectra, in place over the signal's: frequencies k and -k read the same four
// values, so each mirrored pair of positions is done once, by the lower position.
inline void long_conv_spectral_product(float* x, const float* G, const FftTwiddles& tw) noexcept {
  constexpr index_t E = kFftElement;
  const FftBatch c(0.25f / static_cast<float>(tw.N));
  for (index_t k = 0; k < tw.N; ++k) {
    const index_t mk = tw.mirror[static_cast<std::size_t>(k)];
    if (mk < k) continue;
    const FftValue z = fft_load(x + k * E), zm = fft_load(x + mk * E);
    const FftValue g = fft_load(G + k * E), gm = fft_load(G + mk * E);
    fft_store(x + k * E, long_conv_pair_product(z, zm, g, gm, c));
    if (mk != k) fft_store(x + mk * E, long_conv_pair_product(zm, z, gm, g, c));
  }
}

// Copies the window xs[-S .. T) of batch row b (state rows, then inputs), the walk's blocks, to
// their signals (block k's row r at x + (k N + r) E), one row of u after the other. Tried and
// slower: this walk fused with the first pass (rows r and r + N/4 read together, the four
// butterfly outputs written): the walks took 2.7x as long (perf samples, T = 16384, one thread).
inline void long_conv_gather_rows(const LongConvInputs& in, const LongConvWalk& walk, index_t b, index_t S, index_t N,
                                  float* x) {
  constexpr index_t E = kFftElement;
  const index_t T = in.u.size(1);
  alignas(64) float buffer[E];
  for (index_t r = 0; r < S + T; ++r) {
    const bool state = r < S;
    const index_t ahead = r + kLongConvPrefetchRows;
    if (ahead >= S && ahead < S + T && in.u.stride(2) == 1)
      long_conv_prefetch_span(in.u.ptr(b, ahead - S, walk.c0), walk.span(), 0);
    const index_t stride = state ? in.initial_state.stride(2) : in.u.stride(2);
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* src = state ? in.initial_state.ptr(b, r, c) : in.u.ptr(b, r - S, c);
      if (stride != 1 || width != walk.lanes) {
        for (index_t i = 0; i < walk.lanes; ++i) buffer[i] = i < width ? src[i * stride] : 0.f;
        src = buffer;
      }
      long_conv_store_row(src, walk.lanes, x + (k * N + r) * E);
    }
  }
}

// Writes y[b, t, c] = conv (+ skip u, + bias) for t < T from the walk's inverse transforms (block
// k's output t at x + (k N + S + t) E, channel c of the block in lane c % W of part c / W), one
// row of y after the other.
inline void long_conv_scatter_rows(const LongConvInputs& in, const TensorView<float, 3>& y, const LongConvWalk& walk,
                                   index_t b, index_t S, index_t N, const float* x) {
  constexpr index_t W = simd::kWidth, E = kFftElement, kMax = kLongConvFftWalkBlocks;
  const index_t T = in.u.size(1);
  const bool skip = in.skip.has_value(), bias = in.bias.has_value();
  const bool unit = y.stride(2) == 1 && in.u.stride(2) == 1;
  float skips[kMax][E] = {}, biases[kMax][E] = {};
  for (index_t k = 0; k < walk.blocks; ++k)
    for (index_t i = 0; i < walk.width(k); ++i) {
      if (skip) skips[k][i] = in.skip(walk.channel(k) + i);
      if (bias) biases[k][i] = in.bias(walk.channel(k) + i);
    }
  for (index_t t = 0; t < T; ++t) {
    if (unit && t + kLongConvPrefetchRows < T) {
      long_conv_prefetch_span(y.ptr(b, t + kLongConvPrefetchRows, walk.c0), walk.span(), 1);
      if (skip) long_conv_prefetch_span(in.u.ptr(b, t + kLongConvPrefetchRows, walk.c0), walk.span(), 0);
    }
    for (index_t k = 0; k < walk.blocks; ++k) {
      const index_t c = walk.channel(k), width = walk.width(k);
      const float* row = x + (k * N + S + t) * E;
      if (unit && width == walk.lanes) {
        float* out = y.ptr(b, t, c);
        const float* u = in.u.ptr(b, t, c);
        for (index_t i = 0; i < walk.lanes; i += W) {
          FftBatch v = simd::load(row + i);
          if (skip) v += simd::load(skips[k] + i) * simd::load(u + i);
          if (bias) v += simd::load(biases[k] + i);
          simd::store(out + i, v);
        }
        continue;
      }
      for (index_t i = 0; i < width; ++i) {
        float v = row[i];
        if (skip) v += skips[k][i] * in.u(b, t, c + i);
        if (bias) v += biases[k][i];
        y(b, t, c + i) = v;
      }
    }
  }
}

// One task: the walk's channels of every batch row.
inline void long_conv_fft_walk(const LongConvInputs& in, const TensorView<float, 3>& y, const FftTwiddles& tw,
                               const LongConvWalk& walk, LongConvFftScratch& scratch, std::vector<index_t>& nonfinite) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2), N = tw.N;
  const index_t S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0;
  const auto size = static_cast<std::size_t>(walk.blocks * N * E);
  if (scratch.x.size() < size) scratch.x.resize(size), scratch.G.resize(size);
  long_conv_filter_spectra(in, walk, scratch, tw);
  float* x = scratch.x.data();
  for (index_t b = 0; b < B; ++b) {
    long_conv_gather_rows(in, walk, b, S, N, x);
    // Block after block, its transforms and product while its signal is in cache.
    for (index_t k = 0; k < walk.blocks; ++k) {
      float* xk = x + k * N * E;
      long_conv_forward_padded(S + T, xk, tw);
      // Non-finite input: the spectrum's frequency 0 (position 0) is the plain sum of the window
      // (no twiddle on that path), so 0 * Z[0] is NaN in a lane part exactly when that channel's
      // window holds an inf or NaN (or, harmlessly, when finite values overflow the sum). Such a
      // value spreads over the whole pair's transform: both channels of the pair go to the
      // direct form, in this batch row only (listed as b * D + d: the other rows keep their FFT
      // results bit for bit, as without the NaN).
      alignas(64) float lanes[E];
      for (index_t i = 0; i < E; i += W) simd::store(lanes + i, FftBatch(0.f) * simd::load(xk + i));
      const index_t c0 = walk.channel(k), width = walk.width(k);
      for (index_t lane = 0; lane < W; ++lane)
        if (lanes[lane] != 0.f || (lane + W < width && lanes[lane + W] != 0.f)) {
          if (lane < width) nonfinite.push_back(b * D + c0 + lane);
          if (lane + W < width) nonfinite.push_back(b * D + c0 + lane + W);
        }
      long_conv_spectral_product(xk, scratch.G.data() + k * N * E, tw);
      long_conv_inverse_window(xk, tw, S, T);
    }
    long_conv_scatter_rows(in, y, walk, b, S, N, x);
  }
}

// Blocks a task walks together: as many as kLongConvFftWalkBlocks while the call still splits
// into at least two tasks per thread (so the threads stay balanced).
inline index_t long_conv_fft_walk_blocks(index_t blocks, int concurrency) {
  index_t per = kLongConvFftWalkBlocks;
  while (per > 1 && (blocks + per - 1) / per < 2 * static_cast<index_t>(concurrency)) --per;
  return per;
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

// FFT form over a validated call.
inline void long_conv_fft_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor) {
  const index_t D = in.u.size(2), B = in.u.size(0);
  const LongConvDims dims{B, in.u.size(1), D, in.filter.size(0),
                          in.filter_backward.has_value() ? in.filter_backward.size(0) : 0, in.filter.size(1)};
  const FftTwiddles tw(long_conv_fft_length(dims, in.initial_state.has_value()));
  const index_t lanes = long_conv_fft_block_lanes(D, executor.concurrency());
  const index_t blocks = (D + lanes - 1) / lanes;
  const index_t per_walk = long_conv_fft_walk_blocks(blocks, executor.concurrency());
  const index_t walks = (blocks + per_walk - 1) / per_walk;
  std::vector<std::vector<index_t>> nonfinite(static_cast<std::size_t>(walks));
  LongConvFftScratchPool& pool = LongConvFftScratchPool::local();
  parallel_for(executor, walks, 1, [&](index_t begin, index_t end) {
    std::unique_ptr<LongConvFftScratch> scratch = pool.take();
    for (index_t i = begin; i < end; ++i) {
      const index_t first = i * per_walk;
      const LongConvWalk walk{first * lanes, std::min(per_walk, blocks - first), D, lanes};
      long_conv_fft_walk(in, y, tw, walk, *scratch, nonfinite[static_cast<std::size_t>(i)]);
    }
    pool.give(std::move(scratch));
  });
  // A channel whose input holds inf or NaN (and its pair) in a batch row: the FFT spread the
  // value to every output of that row, so the direct form recomputes them and the non-finite values reach only the outputs
  // that read them (docs/reliability.md, "Non-finite values"). Channels are independent.
  for (const auto& list : nonfinite)
    for (index_t bd : list) {
      const index_t b = bd / D, d = bd % D;
      LongConvInputs one = in;
      const index_t g = d / (D / in.filter.size(1));
      one.u = in.u.slice(0, b, 1).slice(2, d, 1);
      one.filter = in.filter.slice(1, g, 1);
      if (in.filter_backward.has_value()) one.filter_backward = in.filter_backward.slice(1, g, 1);
      if (in.skip.has_value()) one.skip = in.skip.slice(0, d, 1);
      if (in.bias.has_value()) one.bias = in.bias.slice(0, d, 1);
      if (in.initial_state.has_value()) one.initial_state = in.initial_state.slice(0, b, 1).slice(2, d, 1);
      long_conv_direct_run(one, y.slice(0, b, 1).slice(2, d, 1), serial_executor());
    }
}

}  // namespace detail

/// FFT prefill: same arguments and results as reference::long_conv (float rounding of an
/// FFT: about 1e-6 relative to sum |h| |u|). Each channel's window (state rows and inputs) is
/// zero-padded to a power of two N >= S + T + L - 1, transformed (two channels per complex
/// transform, one pair per SIMD lane), multiplied by the filter's spectrum and transformed back.
/// Threaded over groups of up to 4 blocks of 2 * simd::kWidth channels (fewer when the call
/// would split into fewer than two groups per thread; blocks of simd::kWidth channels when more
/// than two threads would otherwise idle); scratch per task and block 2 N * 2 *
/// simd::kWidth floats (the signal and the filters' spectrum, kept by the calling thread for its
/// next call: 128 MiB per task of 4 blocks at N = 131072 with AVX-512). A channel whose input is not finite is computed
/// by the direct form, with its pair.
inline void long_conv_fft(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                          const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv_fft(rev.first, rev.second, detail::forward_options(options), executor);
  }
  detail::validate_long_conv("long_conv_fft", in, out, options);
  detail::long_conv_fft_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace seqmix
