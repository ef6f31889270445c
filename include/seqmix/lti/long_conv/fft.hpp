// long_conv, FFT form: per channel, a zero-padded real FFT of the input window and of the
// filter, a pointwise product, an inverse real FFT. O(T log T) per channel instead of O(T L).
//
// FFT: Eigen's unsupported/Eigen/FFT (the kissfft backend that ships with the Eigen package, header
// only, no new dependency). Its real transforms of a length that is a multiple of 4 run as a
// half-length complex FFT plus a twiddle pass; the lengths chosen below are such multiples with
// factors 2, 3 and 5 only (kissfft's fast radices). A real-FFT kernel of our own was not written:
// at the shapes of the issue this form already beats the direct one from L ~ 100 taps on
// (README.md, "Crossover"), so a faster transform would move the crossover, not the results.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include <unsupported/Eigen/FFT>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/direct.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {
namespace detail {

// Channels per FFT task: one 64-byte row of each input row is read at once when gathering the
// time series, so the strided gather reads whole cache lines.
constexpr index_t kLongConvFftChannels = 16;

// Smallest n >= need that is a multiple of 4 with no prime factor above 5.
inline index_t long_conv_fft_size(index_t need) {
  for (index_t n = std::max<index_t>(4, (need + 3) / 4 * 4);; n += 4) {
    index_t m = n;
    for (index_t p : {2, 3, 5})
      while (m % p == 0) m /= p;
    if (m == 1) return n;
  }
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

using LongConvComplex = std::complex<float>;

struct LongConvFftScratch {
  Eigen::FFT<float> fft;
  std::vector<float> series;                 // [kLongConvFftChannels][N]: one channel's window per row
  std::vector<LongConvComplex> spectrum;     // [N/2+1]
  std::vector<LongConvComplex> filters;      // [kLongConvFftChannels][N/2+1]: scaled filter spectra
  std::vector<LongConvComplex> backward;     // [N/2+1]
  std::vector<float> tap_buffer;             // [N]
};

// The spectrum of filter column g, scaled by 1/N (the inverse runs unscaled), plus the
// conjugate spectrum of the backward filter: one product then gives both directions.
inline void long_conv_filter_spectrum(const LongConvInputs& in, index_t g, index_t N, LongConvFftScratch& scratch,
                                      LongConvComplex* out) {
  const index_t half = N / 2 + 1;
  const index_t T = in.u.size(1);
  const auto transform = [&](const ConstView<float, 2>& h, index_t taps, LongConvComplex* dst) {
    std::fill(scratch.tap_buffer.begin(), scratch.tap_buffer.end(), 0.f);
    for (index_t s = 0; s < taps; ++s) scratch.tap_buffer[static_cast<std::size_t>(s)] = h(s, g);
    scratch.fft.fwd(dst, scratch.tap_buffer.data(), N);
  };
  transform(in.filter, long_conv_fft_causal_taps(in.filter.size(0), T, in.initial_state.has_value()), out);
  const float scale = 1.f / static_cast<float>(N);
  if (in.filter_backward.has_value()) {
    transform(in.filter_backward, std::min(in.filter_backward.size(0), T), scratch.backward.data());
    for (index_t k = 0; k < half; ++k) out[k] = (out[k] + std::conj(scratch.backward[static_cast<std::size_t>(k)])) * scale;
  } else {
    for (index_t k = 0; k < half; ++k) out[k] *= scale;
  }
}

// One task: channels [c0, c1) of every batch row.
inline void long_conv_fft_block(const LongConvInputs& in, const TensorView<float, 3>& y, index_t N, index_t c0,
                                index_t c1, LongConvFftScratch& scratch, std::vector<index_t>& nonfinite) {
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2), L = in.filter.size(0);
  const index_t group = D / in.filter.size(1), half = N / 2 + 1, width = c1 - c0;
  const index_t S = in.initial_state.has_value() ? L - 1 : 0;
  const auto sz = [](index_t n) { return static_cast<std::size_t>(n); };
  scratch.series.resize(sz(kLongConvFftChannels * N));
  scratch.spectrum.resize(sz(half));
  scratch.filters.resize(sz(kLongConvFftChannels * half));
  scratch.backward.resize(sz(half));
  scratch.tap_buffer.resize(sz(N));
  // Filter spectra, computed once per column (neighbouring channels of a head share one).
  for (index_t c = 0; c < width; ++c) {
    LongConvComplex* dst = scratch.filters.data() + c * half;
    if (c > 0 && (c0 + c) / group == (c0 + c - 1) / group)
      std::copy(dst - half, dst, dst);
    else
      long_conv_filter_spectrum(in, (c0 + c) / group, N, scratch, dst);
  }
  for (index_t b = 0; b < B; ++b) {
    // Gather the window xs[-S .. T) of each channel, row by row (a row's channels are adjacent).
    float* series = scratch.series.data();
    float poison[kLongConvFftChannels] = {};  // 0 * x: NaN exactly when x is inf or NaN
    for (index_t r = -S; r < T; ++r) {
      const float* src = r >= 0 ? in.u.ptr(b, r, c0) : in.initial_state.ptr(b, S + r, c0);
      const index_t stride = r >= 0 ? in.u.stride(2) : in.initial_state.stride(2);
      for (index_t c = 0; c < width; ++c) {
        const float v = src[c * stride];
        series[c * N + S + r] = v;
        poison[c] += 0.f * v;
      }
    }
    for (index_t c = 0; c < width; ++c) {
      if (poison[c] != 0.f) {  // NaN compares unequal: this channel goes to the direct form
        nonfinite.push_back(c0 + c);
        continue;
      }
      float* x = series + c * N;
      std::fill(x + S + T, x + N, 0.f);
      scratch.fft.fwd(scratch.spectrum.data(), x, N);
      const LongConvComplex* h = scratch.filters.data() + c * half;
      for (index_t k = 0; k < half; ++k) scratch.spectrum[sz(k)] *= h[k];
      scratch.fft.inv(x, scratch.spectrum.data(), N);
    }
    // Outputs y[t] = conv[S + t], row by row again.
    for (index_t t = 0; t < T; ++t)
      for (index_t c = 0; c < width; ++c) {
        if (poison[c] != 0.f) continue;
        const index_t d = c0 + c;
        float value = series[c * N + S + t];
        if (in.skip.has_value()) value += in.skip(d) * in.u(b, t, d);
        if (in.bias.has_value()) value += in.bias(d);
        y(b, t, d) = value;
      }
  }
}

// FFT form over a validated call.
inline void long_conv_fft_run(const LongConvInputs& in, const TensorView<float, 3>& y, const Executor& executor) {
  const index_t D = in.u.size(2), B = in.u.size(0);
  const LongConvDims dims{B, in.u.size(1), D, in.filter.size(0),
                          in.filter_backward.has_value() ? in.filter_backward.size(0) : 0, in.filter.size(1)};
  const index_t N = long_conv_fft_length(dims, in.initial_state.has_value());
  const index_t blocks = (D + kLongConvFftChannels - 1) / kLongConvFftChannels;
  std::vector<std::vector<index_t>> nonfinite(static_cast<std::size_t>(blocks));
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    LongConvFftScratch scratch;
    scratch.fft.SetFlag(Eigen::FFT<float>::HalfSpectrum);
    scratch.fft.SetFlag(Eigen::FFT<float>::Unscaled);  // the 1/N is folded into the filter spectra
    for (index_t i = begin; i < end; ++i)
      long_conv_fft_block(in, y, N, i * kLongConvFftChannels, std::min(D, (i + 1) * kLongConvFftChannels), scratch,
                          nonfinite[static_cast<std::size_t>(i)]);
  });
  // A channel whose input holds inf or NaN: the FFT would spread it to every output, so the
  // direct form computes it and the non-finite values reach only the outputs that read them
  // (docs/reliability.md, "Non-finite values"). Channels are independent, so one at a time.
  for (const auto& list : nonfinite)
    for (index_t d : list) {
      LongConvInputs one = in;
      const index_t g = d / (D / in.filter.size(1));
      one.u = in.u.slice(2, d, 1);
      one.filter = in.filter.slice(1, g, 1);
      if (in.filter_backward.has_value()) one.filter_backward = in.filter_backward.slice(1, g, 1);
      if (in.skip.has_value()) one.skip = in.skip.slice(0, d, 1);
      if (in.bias.has_value()) one.bias = in.bias.slice(0, d, 1);
      if (in.initial_state.has_value()) one.initial_state = in.initial_state.slice(2, d, 1);
      long_conv_direct_run(one, y.slice(2, d, 1), serial_executor());
    }
}

}  // namespace detail

/// FFT prefill: same arguments and results as reference::long_conv (float rounding of an
/// FFT: about 1e-6 relative to sum |h| |u|). Each channel's window (state rows and inputs) is
/// zero-padded to N >= S + T + L - 1 (a multiple of 4 with factors 2, 3, 5), transformed, multiplied
/// by the filter's spectrum and transformed back; filter spectra are computed once per call and
/// head column. Threaded over blocks of 16 channels; scratch per task about 16 N floats and
/// 16 N/2 complex values. A channel whose input is not finite is computed by the direct form.
inline void long_conv_fft(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                          const Executor& executor = serial_executor()) {
  detail::validate_long_conv("long_conv_fft", in, out, options);
  detail::long_conv_fft_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace seqmix
