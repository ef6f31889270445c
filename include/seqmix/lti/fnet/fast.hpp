// fnet, fast form: per batch row, Eigen's FFT (unsupported/Eigen/FFT, any length: mixed radix
// with a generic butterfly for large prime factors) over the features of every token, then over
// the tokens of every feature column, keeping the real part. O(B T D (log T + log D)) against the
// reference's O(B T D (T + D)); threaded over tokens, then over features.
#pragma once

#include <algorithm>
#include <complex>
#include <vector>

#include <unsupported/Eigen/FFT>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/fnet/reference.hpp"

namespace seqmix {
namespace detail {

// DFT of length n >= 1 (Eigen's kissfft has no length-1 plan; that DFT is the identity).
template <class Source>
void fnet_dft(Eigen::FFT<float>& fft, std::complex<float>* dst, const Source* src, index_t n) {
  if (n == 1)
    dst[0] = src[0];
  else
    fft.fwd(dst, src, n);
}

}  // namespace detail

/// Fast form: same arguments and results as reference::fnet (see reference.hpp) up to float
/// rounding (about 1e-6 of the output's magnitude). Non-causal, no step. Batch rows one after
/// the other; within a row, one real FFT of length D per token (tokens in parallel through
/// `executor`) into a [T,D] complex buffer allocated per call, then one complex FFT of length T
/// per feature (features in parallel), keeping the real part. Each task has its own FFT plans.
inline void fnet(const FnetInputs& in, const FnetOutputs& out, const Executor& executor = serial_executor()) {
  const auto dims = detail::validate_fnet("fnet", in, out);
  const index_t T = dims.T, D = dims.D;
  if (dims.B == 0 || T == 0 || D == 0) return;
  std::vector<std::complex<float>> spectrum(static_cast<std::size_t>(T * D));
  // Tasks of about 4K transform elements (tens of microseconds), so tiny calls stay on the calling thread.
  const index_t token_grain = std::max<index_t>(1, 4096 / D), feature_grain = std::max<index_t>(1, 4096 / T);
  for (index_t b = 0; b < dims.B; ++b) {
    parallel_for(executor, T, token_grain, [&](index_t begin, index_t end) {
      Eigen::FFT<float> fft;
      std::vector<float> row(static_cast<std::size_t>(D));
      for (index_t s = begin; s < end; ++s) {
        for (index_t e = 0; e < D; ++e) row[static_cast<std::size_t>(e)] = in.x(b, s, e);
        detail::fnet_dft(fft, spectrum.data() + s * D, row.data(), D);
      }
    });
    parallel_for(executor, D, feature_grain, [&](index_t begin, index_t end) {
      Eigen::FFT<float> fft;
      std::vector<std::complex<float>> column(static_cast<std::size_t>(T)), transformed(column.size());
      for (index_t d = begin; d < end; ++d) {
        for (index_t s = 0; s < T; ++s) column[static_cast<std::size_t>(s)] = spectrum[static_cast<std::size_t>(s * D + d)];
        detail::fnet_dft(fft, transformed.data(), column.data(), T);
        for (index_t t = 0; t < T; ++t) out.y(b, t, d) = transformed[static_cast<std::size_t>(t)].real();
      }
    });
  }
}

}  // namespace seqmix
