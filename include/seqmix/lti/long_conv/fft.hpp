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
  AlignedVector<float> x, work;  // [N][kFftElement]: the batched signal, and the product of spectra
  AlignedVector<float> P, Q;     // [N][kFftElement]: the pair spectra, W[k] = Z[k] P[k] + conj(Z[N-k]) Q[k]
};

// The spectra (H_a, H_b) of the lane pairs' filters from G = FFT(h_a + i h_b), added into P
// (as H) or, for a backward filter, conjugated (its correlation).
// All spectra are in the transform's bit-reversed order: position k's mirrored frequency is at
// tw.mirror[k].
inline void long_conv_split_pair_spectrum(const float* G, const FftTwiddles& tw, bool conjugate, float* Ha, float* Hb) {
  const index_t N = tw.N;
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const FftBatch half(0.5f);
  for (index_t k = 0; k < N; ++k) {
    const float* g = G + k * E;
    const float* h = G + tw.mirror[static_cast<std::size_t>(k)] * E;  // G[-k]
    const FftBatch gr = simd::load(g), gi = simd::load(g + W), hr = simd::load(h), hi = simd::load(h + W);
    // H_a = (G[k] + conj G[-k]) / 2, H_b = (G[k] - conj G[-k]) / 2i
    FftBatch ar = (gr + hr) * half, ai = (gi - hi) * half;
    FftBatch br = (gi + hi) * half, bi = (hr - gr) * half;
    if (conjugate) ai = -ai, bi = -bi;
    simd::store(Ha + k * E, simd::load(Ha + k * E) + ar);
    simd::store(Ha + k * E + W, simd::load(Ha + k * E + W) + ai);
    simd::store(Hb + k * E, simd::load(Hb + k * E) + br);
    simd::store(Hb + k * E + W, simd::load(Hb + k * E + W) + bi);
  }
}

// Loads taps [0, taps) of filter columns g(a), g(b) of each lane pair into x (zero-padded).
inline void long_conv_load_filter_pairs(const ConstView<float, 2>& h, index_t taps, index_t group, index_t c0,
                                        index_t width, index_t N, float* x) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  std::fill(x, x + N * E, 0.f);
  for (index_t s = 0; s < taps; ++s) {
    if (s + kLongConvPrefetchRows < taps) long_conv_prefetch_row(h.ptr(s + kLongConvPrefetchRows, c0 / group), 0);
    for (index_t c = 0; c < width; ++c) {
      const index_t lane = c % W, part = c / W;  // part 0: real (channel a), 1: imaginary (b)
      x[s * E + part * W + lane] = h(s, (c0 + c) / group);
    }
  }
}

// P = (H_a + H_b) / 2N and Q = (H_a - H_b) / 2N for the block's pairs: with z = x_a + i x_b,
// y_a + i y_b = IFFT(X_a H_a + i X_b H_b) = IFFT(Z P + conj(Z[-k]) Q) / N (the inverse runs unscaled).
inline void long_conv_pair_filters(const LongConvInputs& in, index_t N, index_t c0, index_t width,
                                   LongConvFftScratch& scratch, const FftTwiddles& tw) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t T = in.u.size(1), group = in.u.size(2) / in.filter.size(1);
  // H_a and H_b are summed into P and Q, then turned into their half sum and difference in place.
  float* Ha = scratch.P.data();
  float* Hb = scratch.Q.data();
  std::fill(Ha, Ha + N * E, 0.f);
  std::fill(Hb, Hb + N * E, 0.f);
  long_conv_load_filter_pairs(in.filter, long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value()),
                              group, c0, width, N, scratch.x.data());
  batched_fft_forward(scratch.x.data(), tw);
  long_conv_split_pair_spectrum(scratch.x.data(), tw, false, Ha, Hb);
  if (in.filter_backward.has_value()) {
    long_conv_load_filter_pairs(in.filter_backward, std::min(in.filter_backward.size(0), T), group, c0, width, N,
                                scratch.x.data());
    batched_fft_forward(scratch.x.data(), tw);
    long_conv_split_pair_spectrum(scratch.x.data(), tw, true, Ha, Hb);
  }
  const FftBatch scale(0.5f / static_cast<float>(N));
  for (index_t i = 0; i < N * E; i += W) {
    const FftBatch a = simd::load(Ha + i), b = simd::load(Hb + i);
    simd::store(Ha + i, (a + b) * scale);
    simd::store(Hb + i, (a - b) * scale);
  }
}

// One task: channels [c0, c0 + width) of every batch row, width <= kLongConvFftChannels.
inline void long_conv_fft_block(const LongConvInputs& in, const TensorView<float, 3>& y, const FftTwiddles& tw,
                                index_t c0, index_t width, LongConvFftScratch& scratch, std::vector<index_t>& nonfinite) {
  constexpr index_t W = simd::kWidth, E = kFftElement;
  const index_t B = in.u.size(0), T = in.u.size(1), L = in.filter.size(0), N = tw.N;
  const index_t S = in.initial_state.has_value() ? L - 1 : 0;
  const auto size = static_cast<std::size_t>(N * E);
  scratch.x.resize(size), scratch.work.resize(size), scratch.P.resize(size), scratch.Q.resize(size);
  long_conv_pair_filters(in, N, c0, width, scratch, tw);
  for (index_t b = 0; b < B; ++b) {
    // Gather the window xs[-S .. T) into the pairs, row by row (a row's channels are adjacent).
    float* x = scratch.x.data();
    std::fill(x, x + N * E, 0.f);
    float poison[kLongConvFftChannels] = {};  // 0 * x: NaN exactly when x is inf or NaN
    for (index_t r = -S; r < T; ++r) {
      const float* src = r >= 0 ? in.u.ptr(b, r, c0) : in.initial_state.ptr(b, S + r, c0);
      const index_t stride = r >= 0 ? in.u.stride(2) : in.initial_state.stride(2);
      if (r >= 0 && r + kLongConvPrefetchRows < T) long_conv_prefetch_row(in.u.ptr(b, r + kLongConvPrefetchRows, c0), 0);
      float* dst = x + (S + r) * E;  // lanes of channel c: real part for c < W, imaginary after
      for (index_t c = 0; c < width; ++c) {
        const float v = src[c * stride];
        dst[c] = v;
        poison[c] += 0.f * v;
      }
    }
    batched_fft_forward(x, tw);
    // W[k] = Z[k] P[k] + conj(Z[N-k]) Q[k], into work.
    float* w = scratch.work.data();
    for (index_t k = 0; k < N; ++k) {
      const float* z = x + k * E;
      const float* zm = x + tw.mirror[static_cast<std::size_t>(k)] * E;
      const FftBatch zr = simd::load(z), zi = simd::load(z + W), mr = simd::load(zm), mi = -simd::load(zm + W);
      const FftBatch pr = simd::load(scratch.P.data() + k * E), pi = simd::load(scratch.P.data() + k * E + W);
      const FftBatch qr = simd::load(scratch.Q.data() + k * E), qi = simd::load(scratch.Q.data() + k * E + W);
      FftBatch re = simd::fma(zr, pr, -(zi * pi));
      FftBatch im = simd::fma(zr, pi, zi * pr);
      re = simd::fma(mr, qr, simd::fma(-mi, qi, re));
      im = simd::fma(mr, qi, simd::fma(mi, qr, im));
      simd::store(w + k * E, re);
      simd::store(w + k * E + W, im);
    }
    batched_fft_inverse(w, tw);
    // A NaN (poison != 0) spreads over the whole pair's transform: both channels of the pair
    // go to the direct form, in this batch row only (listed as b * D + d: the other rows keep
    // their FFT results bit for bit, as without the NaN).
    const index_t D = in.u.size(2);
    for (index_t lane = 0; lane < W; ++lane)
      if (poison[lane] != 0.f || (lane + W < width && poison[lane + W] != 0.f)) {
        if (lane < width) nonfinite.push_back(b * D + c0 + lane);
        if (lane + W < width) nonfinite.push_back(b * D + c0 + lane + W);
      }
    // Outputs y[t] = conv[S + t], row by row again.
    for (index_t t = 0; t < T; ++t) {
      const float* row = w + (S + t) * E;
      if (t + kLongConvPrefetchRows < T) {
        long_conv_prefetch_row(y.ptr(b, t + kLongConvPrefetchRows, c0), 1);
        if (in.skip.has_value()) long_conv_prefetch_row(in.u.ptr(b, t + kLongConvPrefetchRows, c0), 0);
      }
      for (index_t c = 0; c < width; ++c) {
        const index_t d = c0 + c;
        float value = row[c];
        if (in.skip.has_value()) value += in.skip(d) * in.u(b, t, d);
        if (in.bias.has_value()) value += in.bias(d);
        y(b, t, d) = value;
      }
    }
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
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    LongConvFftScratch scratch;
    for (index_t i = begin; i < end; ++i) {
      const index_t c0 = i * kLongConvFftChannels;
      long_conv_fft_block(in, y, tw, c0, std::min(kLongConvFftChannels, D - c0), scratch,
                          nonfinite[static_cast<std::size_t>(i)]);
    }
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
/// Threaded over blocks of 2 * simd::kWidth channels; scratch per task 4 N * 2 * simd::kWidth
/// floats (the signal, the transform's other buffer, two filter spectra). A channel whose input
/// is not finite is computed by the direct form, with its pair.
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
