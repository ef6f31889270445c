// fnet, fast form: per batch row, Eigen's FFT (unsupported/Eigen/FFT, any length: mixed radix
// with a generic butterfly for large prime factors) over the features of every token, then over
// the tokens of every feature column, keeping the real part. O(B T D (log T + log D)) against the
// reference's O(B T D (T + D)); threaded over batch rows.
#pragma once

#include <complex>
#include <vector>

#include <unsupported/Eigen/FFT>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/fnet/reference.hpp"

namespace seqmix {
namespace detail {

// One batch row: spectrum[s,:] = DFT_D(x[b,s,:]), then y[b,:,d] = Re(DFT_T(spectrum[:,d])).
inline void fnet_row(const FnetInputs& in, const FnetOutputs& out, index_t b, Eigen::FFT<float>& fft,
                     std::vector<std::complex<float>>& spectrum, std::vector<float>& real_row,
                     std::vector<std::complex<float>>& column, std::vector<std::complex<float>>& column_out) {
  const index_t T = in.x.size(1), D = in.x.size(2);
  for (index_t s = 0; s < T; ++s) {
    for (index_t e = 0; e < D; ++e) real_row[static_cast<std::size_t>(e)] = in.x(b, s, e);
    if (D == 1)  // Eigen's kissfft has no length-1 plan; that DFT is the identity.
      spectrum[static_cast<std::size_t>(s)] = real_row[0];
    else
      fft.fwd(spectrum.data() + s * D, real_row.data(), D);
  }
  for (index_t d = 0; d < D; ++d) {
    for (index_t s = 0; s < T; ++s) column[static_cast<std::size_t>(s)] = spectrum[static_cast<std::size_t>(s * D + d)];
    if (T == 1)
      column_out[0] = column[0];
    else
      fft.fwd(column_out.data(), column.data(), T);
    for (index_t t = 0; t < T; ++t) out.y(b, t, d) = column_out[static_cast<std::size_t>(t)].real();
  }
}

}  // namespace detail

/// Fast form: same arguments and results as reference::fnet (see reference.hpp) up to float
/// rounding (about 1e-6 of the output's magnitude). Non-causal, no step. Per batch row, one
/// real FFT of length D per token and one complex FFT of length T per feature; batch rows in
/// parallel through `executor`, each task with its own FFT plans and a [T,D] complex buffer.
inline void fnet(const FnetInputs& in, const FnetOutputs& out, const Executor& executor = serial_executor()) {
  const auto dims = detail::validate_fnet("fnet", in, out);
  if (dims.B == 0 || dims.T == 0 || dims.D == 0) return;
  parallel_for(executor, dims.B, 1, [&](index_t begin, index_t end) {
    Eigen::FFT<float> fft;
    std::vector<std::complex<float>> spectrum(static_cast<std::size_t>(dims.T * dims.D));
    std::vector<std::complex<float>> column(static_cast<std::size_t>(dims.T)), column_out(column.size());
    std::vector<float> real_row(static_cast<std::size_t>(dims.D));
    for (index_t b = begin; b < end; ++b) detail::fnet_row(in, out, b, fft, spectrum, real_row, column, column_out);
  });
}

}  // namespace seqmix
