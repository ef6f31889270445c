// hyena, fast prefill: each order's long convolution by lti/long_conv (the FFT form for filters
// as long as the sequence, chosen by its cost model), then the gate x_n applied in place. The
// orders alternate between y and one scratch buffer so that the last one lands in y.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/reference.hpp"
#include "seqmix/lti/long_conv/fast.hpp"

namespace seqmix {
namespace detail {

// z[b,t,:] *= x[b,t,:] over every row, SIMD when both rows are contiguous.
inline void hyena_gate(const ConstView<float, 3>& x, const TensorView<float, 3>& z, const Executor& executor) {
  const index_t T = z.size(1), D = z.size(2);
  // Rows per task: about 16K elements, so small calls stay on the calling thread.
  const index_t grain = std::max<index_t>(1, 16384 / std::max<index_t>(D, 1));
  parallel_for(executor, z.size(0) * T, grain, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const index_t b = r / T, t = r % T;
      float* zr = z.ptr(b, t, 0);
      const float* xr = x.ptr(b, t, 0);
      index_t d = 0;
      if (z.stride(2) == 1 && x.stride(2) == 1)
        for (; d < simd::vector_end(D); d += simd::kWidth) simd::store(zr + d, simd::load(zr + d) * simd::load(xr + d));
      for (; d < D; ++d) z(b, t, d) *= x(b, t, d);
    }
  });
}

}  // namespace detail

/// Order n's filter spectrum for each n (one LongConvFilterSpectrum per order, from
/// in.filter.select(0, n)), for inference with fixed filters: hyena(in, spectra, out, ...) then
/// runs two transforms per channel and order instead of three. `shape` as for
/// LongConvFilterSpectrum: D, the longest T, direction causal, with_state iff the calls pass
/// initial_state.
inline std::vector<LongConvFilterSpectrum> hyena_filter_spectra(const ConstView<float, 3>& filter,
                                                                const LongConvSpectrumShape& shape,
                                                                const Executor& executor = serial_executor()) {
  std::vector<LongConvFilterSpectrum> spectra;
  for (index_t n = 0; n < filter.size(0); ++n) spectra.emplace_back(filter.select(0, n), ConstView<float, 2>(), shape, executor);
  return spectra;
}

namespace detail {

// Order n's long_conv arguments.
inline std::pair<LongConvInputs, LongConvOutputs> hyena_order_call(const HyenaInputs& in, const HyenaOutputs& out,
                                                                   index_t n, ConstView<float, 3> z,
                                                                   const TensorView<float, 3>& target) {
  LongConvInputs args{z, in.filter.select(0, n)};
  if (in.skip.has_value()) args.skip = in.skip.select(0, n);
  if (in.initial_state.has_value()) args.initial_state = in.initial_state.select(0, n);
  LongConvOutputs results{target};
  if (out.final_state.has_value()) results.final_state = out.final_state.select(0, n);
  return {args, results};
}

// The orders' long convolutions, z_1 = v, gated in place; spectra: one per order, or null.
inline void hyena_orders(const HyenaInputs& in, const HyenaOutputs& out, const HyenaDims& dims,
                         const HyenaOptions& options, const LongConvFilterSpectrum* spectra, const Executor& executor) {
  Tensor<float, 3> owned;
  TensorView<float, 3> scratch = out.scratch;
  if (dims.N >= 2 && !scratch.has_value()) {
    owned = Tensor<float, 3>({dims.B, dims.T, dims.D});
    scratch = owned.view();
  }
  // Order n writes to y when N - 1 - n is even, so order N - 1 ends in y.
  ConstView<float, 3> z = in.v;
  LongConvOptions conv;
  conv.method = options.method;
  for (index_t n = 0; n < dims.N; ++n) {
    const TensorView<float, 3> target = (dims.N - 1 - n) % 2 == 0 ? out.y : scratch;
    const auto call = hyena_order_call(in, out, n, z, target);
    if (spectra != nullptr)
      long_conv(call.first, spectra[n], call.second, conv, executor);
    else
      long_conv(call.first, call.second, conv, executor);
    detail::hyena_gate(in.x.select(0, n), target, executor);
    z = target;
  }
}

}  // namespace detail

/// Fast prefill: same arguments and results as reference::hyena (see reference.hpp) up to float
/// rounding (the FFT's, about 1e-6 relative per order). Per order one long_conv (options.method:
/// direct, FFT or the cost model's choice) and one gate pass, threaded through `executor`.
/// N >= 2 needs a [B,T,D] buffer for the intermediate z_n: out.scratch, or one allocated per call.
/// With states, each order's long_conv carries its own (initial_state[n] -> final_state[n]).
inline void hyena(const HyenaInputs& in, const HyenaOutputs& out, const HyenaOptions& options = {},
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::hyena_reversed_call(in, out);
    return hyena(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_hyena("hyena", in, out, options);
  detail::hyena_orders(in, out, dims, options, nullptr, executor);
}

/// Fast prefill with each order's filter spectrum prepared (hyena_filter_spectra; the filters are
/// fixed weights): the same results as hyena(in, out, options) up to float rounding. spectra[n]
/// must serve order n's long_conv call (LongConvFilterSpectrum: D, L, T range, state); all are
/// checked before any output is written (ShapeError naming "spectra").
inline void hyena(const HyenaInputs& in, const std::vector<LongConvFilterSpectrum>& spectra, const HyenaOutputs& out,
                  const HyenaOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::hyena_reversed_call(in, out);
    return hyena(rev.first, spectra, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_hyena("hyena", in, out, options);
  const ArgCheck check("hyena");
  if (static_cast<index_t>(spectra.size()) != dims.N)
    check.fail("spectra", "must hold one spectrum per order (N = " + std::to_string(dims.N) + "), got " +
                                          std::to_string(spectra.size()));
  for (index_t n = 0; n < dims.N; ++n) {
    const auto call = detail::hyena_order_call(in, out, n, in.v, out.y);  // the shapes of order n's call
    detail::check_long_conv_spectrum(check, "spectra[" + std::to_string(n) + "]", spectra[static_cast<std::size_t>(n)],
                                     call.first, {});
  }
  detail::hyena_orders(in, out, dims, options, spectra.data(), executor);
}

}  // namespace seqmix
