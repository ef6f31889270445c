// long_conv, FFT form: per channel, a zero-padded FFT of the input window and of the filter, a
// pointwise product, an inverse FFT. O(T log T) per channel instead of O(T L).
//
// FFT: our own batched radix-2 transform (batched_fft.hpp), one channel pair per SIMD
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

// Channels per FFT task: a channel pair per lane.
constexpr index_t kLongConvFftChannels = 2 * simd::kWidth;

// Smallest power of two >= need (and >= 2).
inline index_t long_conv_fft_size(index_t need) {
  index_t n = 2;
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

template <class T>
inline void long_conv_prefetch_row(T* p, int write) noexcept {
  if (write)
    __builtin_prefetch(p, 1, 3), __builtin_prefetch(reinterpret_cast<const char*>(p) + 64, 1, 3);
  else
    __builtin_prefetch(p, 0, 3), __builtin_prefetch(reinterpret_cast<const char*>(p) + 64, 0, 3);
}

struct LongConvFftScratch {
  // [N][kFftElement] each: the batched signal (its spectrum, then the product of spectra in
  // place), and the spectrum G of the block's filter pairs.
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

// Loads taps [0, taps) of filter columns g(a), g(b) of each lane pair into x (zero-padded): lane
// c % W of part c / W (0: real, channel a; 1: imaginary, b) is x[s E + c].
inline void long_conv_load_filter_pairs(const ConstView<float, 2>& h, index_t taps, index_t group, index_t c0,
                                        index_t width, index_t N, float* x) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  // One filter per channel, adjacent, a full block: row s is E contiguous floats.
  const bool contiguous = group == 1 && width == E && h.stride(1) == 1;
  std::fill(x + (contiguous ? taps * E : 0), x + N * E, 0.f);
  for (index_t s = 0; s < taps; ++s) {
    if (s + kLongConvPrefetchRows < taps) long_conv_prefetch_row(h.ptr(s + kLongConvPrefetchRows, c0 / group), 0);
    if (contiguous) {
      for (index_t i = 0; i < E; i += W) simd::store(x + s * E + i, simd::load(h.ptr(s, c0) + i));
      continue;
    }
    for (index_t c = 0; c < width; ++c) x[s * E + c] = h(s, (c0 + c) / group);
  }
}

// The spectrum G = FFT(h_a + i h_b) of the block's filter pairs, into scratch.G. A backward
// filter hb enters through its correlation, conj(FFT(hb_a)) and conj(FFT(hb_b)): the same pair
// split applied to Gb[-k] (conj of (Gb[k] + conj Gb[-k]) / 2 is (Gb[-k] + conj Gb[k]) / 2, and
// likewise for the b part), so G[k] += Gb[-k] carries both filters in one spectrum.
inline void long_conv_filter_spectrum(const LongConvInputs& in, index_t N, index_t c0, index_t width,
                                      LongConvFftScratch& scratch, const FftTwiddles& tw) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t T = in.u.size(1), group = in.u.size(2) / in.filter.size(1);
  float* G = scratch.G.data();
  long_conv_load_filter_pairs(in.filter, long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value()),
                              group, c0, width, N, G);
  batched_fft_forward(G, tw);
  if (!in.filter_backward.has_value()) return;
  float* x = scratch.x.data();
  long_conv_load_filter_pairs(in.filter_backward, std::min(in.filter_backward.size(0), T), group, c0, width, N, x);
  batched_fft_forward(x, tw);
  for (index_t k = 0; k < N; ++k) {
    const float* back = x + tw.mirror[static_cast<std::size_t>(k)] * E;
    for (index_t v = 0; v < E; v += W) simd::store(G + k * E + v, simd::load(G + k * E + v) + simd::load(back + v));
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

// Gathers the window xs[-S .. T) of batch row b, channels [c0, c0 + width), into the pairs at x
// (row r of the window at x + (S + r) E, a row's channels adjacent there as in u), zero-padded
// to N rows; poison[c] += 0 * value.
inline void long_conv_gather_window(const LongConvInputs& in, index_t b, index_t c0, index_t width, index_t N, float* x,
                                    float* poison) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t T = in.u.size(1), S = in.initial_state.has_value() ? in.filter.size(0) - 1 : 0;
  // A full block of adjacent channels: each row is E contiguous floats, copied by vectors (the
  // scalar loop, strided in general, took as long as a transform at T = 65536).
  const bool contiguous =
      width == E && in.u.stride(2) == 1 && (!in.initial_state.has_value() || in.initial_state.stride(2) == 1);
  std::fill(x + (contiguous ? (S + T) * E : 0), x + N * E, 0.f);
  FftBatch vpoison[E / W];
  for (auto& v : vpoison) v = FftBatch(0.f);
  const FftBatch zero(0.f);
  for (index_t r = -S; r < T; ++r) {
    const float* src = r >= 0 ? in.u.ptr(b, r, c0) : in.initial_state.ptr(b, S + r, c0);
    if (r >= 0 && r + kLongConvPrefetchRows < T) long_conv_prefetch_row(in.u.ptr(b, r + kLongConvPrefetchRows, c0), 0);
    float* dst = x + (S + r) * E;
    if (contiguous) {
      for (index_t i = 0; i < E / W; ++i) {
        const FftBatch v = simd::load(src + i * W);
        simd::store(dst + i * W, v);
        vpoison[i] = simd::fma(zero, v, vpoison[i]);
      }
      continue;
    }
    const index_t stride = r >= 0 ? in.u.stride(2) : in.initial_state.stride(2);
    for (index_t c = 0; c < width; ++c) {
      const float v = src[c * stride];
      dst[c] = v;
      poison[c] += 0.f * v;
    }
  }
  if (contiguous)
    for (index_t i = 0; i < E / W; ++i) simd::store(poison + i * W, vpoison[i]);
}

// Writes y[b, t, c0 + c] = conv[t][c] (+ skip u, + bias) for t < T, from the inverse transform's
// rows at conv (E floats apart).
inline void long_conv_scatter_outputs(const LongConvInputs& in, const TensorView<float, 3>& y, index_t b, index_t c0,
                                      index_t width, const float* conv) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t T = in.u.size(1);
  const bool skip = in.skip.has_value(), bias = in.bias.has_value();
  const bool contiguous = width == E && y.stride(2) == 1 && in.u.stride(2) == 1;
  float skips[E] = {}, biases[E] = {};
  for (index_t c = 0; c < width; ++c) {
    if (skip) skips[c] = in.skip(c0 + c);
    if (bias) biases[c] = in.bias(c0 + c);
  }
  for (index_t t = 0; t < T; ++t) {
    const float* row = conv + t * E;
    if (t + kLongConvPrefetchRows < T) {
      long_conv_prefetch_row(y.ptr(b, t + kLongConvPrefetchRows, c0), 1);
      if (skip) long_conv_prefetch_row(in.u.ptr(b, t + kLongConvPrefetchRows, c0), 0);
    }
    if (contiguous) {
      float* out = y.ptr(b, t, c0);
      const float* u = in.u.ptr(b, t, c0);
      for (index_t i = 0; i < E; i += W) {
        FftBatch v = simd::load(row + i);
        if (skip) v += simd::load(skips + i) * simd::load(u + i);
        if (bias) v += simd::load(biases + i);
        simd::store(out + i, v);
      }
      continue;
    }
    for (index_t c = 0; c < width; ++c) {
      float value = row[c];
      if (skip) value += skips[c] * in.u(b, t, c0 + c);
      if (bias) value += biases[c];
      y(b, t, c0 + c) = value;
    }
  }
}

// One task: channels [c0, c0 + width) of every batch row, width <= kLongConvFftChannels.
inline void long_conv_fft_block(const LongConvInputs& in, const TensorView<float, 3>& y, const FftTwiddles& tw,
                                index_t c0, index_t width, LongConvFftScratch& scratch, std::vector<index_t>& nonfinite) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t B = in.u.size(0), L = in.filter.size(0), N = tw.N;
  const index_t S = in.initial_state.has_value() ? L - 1 : 0;
  const auto size = static_cast<std::size_t>(N * E);
  scratch.x.resize(size), scratch.G.resize(size);
  long_conv_filter_spectrum(in, N, c0, width, scratch, tw);
  for (index_t b = 0; b < B; ++b) {
    float* x = scratch.x.data();
    float poison[kLongConvFftChannels] = {};  // 0 * x: NaN exactly when x is inf or NaN
    long_conv_gather_window(in, b, c0, width, N, x, poison);
    batched_fft_forward(x, tw);
    long_conv_spectral_product(x, scratch.G.data(), tw);
    batched_fft_inverse(x, tw);
    // A NaN (poison != 0) spreads over the whole pair's transform: both channels of the pair
    // go to the direct form, in this batch row only (listed as b * D + d: the other rows keep
    // their FFT results bit for bit, as without the NaN).
    const index_t D = in.u.size(2);
    for (index_t lane = 0; lane < W; ++lane)
      if (poison[lane] != 0.f || (lane + W < width && poison[lane + W] != 0.f)) {
        if (lane < width) nonfinite.push_back(b * D + c0 + lane);
        if (lane + W < width) nonfinite.push_back(b * D + c0 + lane + W);
      }
    long_conv_scatter_outputs(in, y, b, c0, width, x + S * E);
  }
}

// FFT form over a validated call.
inline void long_conv_fft_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor) {
  const index_t D = in.u.size(2), B = in.u.size(0);
  const LongConvDims dims{B, in.u.size(1), D, in.filter.size(0),
                          in.filter_backward.has_value() ? in.filter_backward.size(0) : 0, in.filter.size(1)};
  const FftTwiddles tw(long_conv_fft_length(dims, in.initial_state.has_value()));
  const index_t blocks = (D + kLongConvFftChannels - 1) / kLongConvFftChannels;
  std::vector<std::vector<index_t>> nonfinite(static_cast<std::size_t>(blocks));
  LongConvFftScratchPool& pool = LongConvFftScratchPool::local();
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    std::unique_ptr<LongConvFftScratch> scratch = pool.take();
    for (index_t i = begin; i < end; ++i) {
      const index_t c0 = i * kLongConvFftChannels;
      long_conv_fft_block(in, y, tw, c0, std::min(kLongConvFftChannels, D - c0), *scratch,
                          nonfinite[static_cast<std::size_t>(i)]);
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
/// Threaded over blocks of 2 * simd::kWidth channels; scratch per task 2 N * 2 * simd::kWidth
/// floats (the signal and the filters' spectrum, kept by the calling thread for its next call:
/// 32 MiB per task at N = 131072 with AVX-512). A channel whose input is not finite is computed
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
