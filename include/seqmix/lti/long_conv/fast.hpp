// long_conv, fast prefill: the direct or the FFT form, whichever the cost model below expects to
// be cheaper (options.method forces one).
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/core/parallel.hpp"
#include "seqmix/lti/long_conv/direct.hpp"
#include "seqmix/lti/long_conv/fft.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {
namespace detail {

// Measured costs (one thread, CPU time, AMD EPYC with AVX-512, D = 768; docs/operators.md,
// long_conv, "Crossover"), per channel and batch row: the direct form's time per multiply-add and
// per output (the window copy and the output pass), and the FFT form's time per N log2 N of one
// channel's transform (gather, product and scatter included), fitted where the two forms meet:
// at T = 4096 the FFT form takes as long as the direct one at L ~ 8-12 since the radix-8
// transform and the 4-block walks (one thread, CPU time, loaded machine, same run: FFT 7.5-8.5
// against direct 8.7 ms at L = 8, 8.7 against 9.5 at L = 12, 7.5 against 12.3 at L = 16; it was
// 10.1 against 10.0 at L = 16 with 0.10 ns before). Past N = 32768 the levels of the transform
// above its in-cache blocks stream from memory and the cost per N log2 N grows. Only the ratios
// matter: the FFT form wins from L ~ 11 taps at T = 4096, and at L = T from T ~ 128 or below.
constexpr double kLongConvDirectNsPerTap = 0.10;
constexpr double kLongConvDirectNsPerOutput = 6.0;
constexpr double kLongConvFftNsPerNLogN = 0.09;
constexpr double kLongConvFftCachedLength = 32768;

// Multiply-adds of the direct form per channel and batch row: sum over t of the taps it reads.
inline double long_conv_direct_taps(const LongConvDims& dims, bool has_state) {
  const double T = static_cast<double>(dims.T), S = has_state ? static_cast<double>(dims.L - 1) : 0.0;
  const double L = static_cast<double>(dims.L), Lb = static_cast<double>(dims.Lb);
  // Causal: min(L, t + 1 + S) taps at step t; backward: min(Lb, T - t).
  const auto ramp = [T](double cap, double offset) {
    // sum_{t<T} min(cap, t + 1 + offset)
    const double full_from = std::max(0.0, std::min(T, cap - 1 - offset));  // steps below the cap
    const double rising = full_from * (offset + 1) + full_from * (full_from - 1) / 2;
    return rising + (T - full_from) * cap;
  };
  return ramp(L, S) + (dims.Lb > 0 ? ramp(Lb, 0.0) : 0.0);
}

// prepared: the filters' spectra are given (LongConvFilterSpectrum), so the FFT form runs only
// the input's and the inverse transform per channel.
inline bool long_conv_prefers_fft(const LongConvDims& dims, bool has_state, bool prepared = false) {
  const double N = static_cast<double>(long_conv_fft_length(dims, has_state));
  const double BD = static_cast<double>(dims.B * dims.D);
  const double filters = prepared ? 0.0 : static_cast<double>(dims.G) * (dims.Lb > 0 ? 2.0 : 1.0);
  const double transforms = 2.0 * BD + filters;
  const double memory_bound = N > kLongConvFftCachedLength ? 1.0 + 0.19 * std::log2(N / kLongConvFftCachedLength) : 1.0;
  const double fft_ns = transforms * N * std::log2(N) * kLongConvFftNsPerNLogN * memory_bound;
  const double direct_ns = BD * (long_conv_direct_taps(dims, has_state) * kLongConvDirectNsPerTap +
                                static_cast<double>(dims.T) * kLongConvDirectNsPerOutput);
  return fft_ns < direct_ns;
}

// options.method, or the cost model's choice when it is automatic (prepared: as above).
inline LongConvMethod long_conv_pick(const LongConvOptions& options, const LongConvDims& dims, bool has_state,
                                     bool prepared) {
  if (options.method != LongConvMethod::automatic) return options.method;
  return long_conv_prefers_fft(dims, has_state, prepared) ? LongConvMethod::fft : LongConvMethod::direct;
}

// The form a call runs, validated like long_conv_method, the filters' check over `executor`.
inline LongConvMethod long_conv_choose(const LongConvInputs& in, const LongConvOutputs& out,
                                       const LongConvOptions& options, const Executor& executor) {
  const auto dims = validate_long_conv("long_conv", in, out, options, true, executor);
  return long_conv_pick(options, dims, in.initial_state.has_value(), false);
}

}  // namespace detail

/// Which form long_conv runs for these arguments (LongConvMethod::direct or LongConvMethod::fft), the choice
/// of the measured cost model when options.method is automatic. Validates like long_conv.
inline LongConvMethod long_conv_method(const LongConvInputs& in, const LongConvOutputs& out,
                                       const LongConvOptions& options = {}) {
  return detail::long_conv_choose(in, out, options, serial_executor());
}

/// The form long_conv(in, spectrum, out, options) runs: as above, with the FFT form costed at
/// two transforms per channel (the filters' are in the spectrum). Validates like that call.
inline LongConvMethod long_conv_method(const LongConvInputs& in, const LongConvFilterSpectrum& spectrum,
                                       const LongConvOutputs& out, const LongConvOptions& options = {}) {
  const LongConvOptions forward = detail::forward_options(options);
  const auto dims = detail::validate_long_conv("long_conv", in, out, forward, false);
  detail::check_long_conv_spectrum(ArgCheck("long_conv"), "spectrum", spectrum, in, forward);
  return detail::long_conv_pick(options, dims, in.initial_state.has_value(), true);
}

/// Fast prefill: same arguments and results as reference::long_conv (see reference.hpp), by the
/// direct form (direct.hpp) for short filters and the FFT form (fft.hpp) for long ones, chosen
/// by a cost model measured on both (README.md, "Crossover") unless options.method forces one.
/// Threaded through `executor`; any strides.
inline void long_conv(const LongConvInputs& in, const LongConvOutputs& out, const LongConvOptions& options = {},
                      const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const LongConvMethod method = detail::long_conv_choose(in, out, options, executor);
  if (method == LongConvMethod::fft)
    detail::long_conv_fft_run(in, out.y, executor);
  else
    detail::long_conv_direct_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

/// Fast prefill with a prepared filter spectrum (fft.hpp, LongConvFilterSpectrum: which calls it
/// serves): the same results as long_conv(in, out, options) up to float rounding. `in` still
/// names the filters the spectrum was made from (the direct form reads them); their values are
/// not checked again. The automatic choice costs the FFT form at two transforms per channel, so it
/// takes the FFT form from shorter filters than without a spectrum. A spectrum that does not
/// serve the call is a ShapeError before any output is written.
inline void long_conv(const LongConvInputs& in, const LongConvFilterSpectrum& spectrum, const LongConvOutputs& out,
                      const LongConvOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::long_conv_reversed_call(in, out);
    return long_conv(rev.first, spectrum, rev.second, detail::forward_options(options), executor);
  }
  const LongConvMethod method = long_conv_method(in, spectrum, out, options);
  if (method == LongConvMethod::fft)
    detail::long_conv_fft_run(in, out.y, executor, spectrum.data());
  else
    detail::long_conv_direct_run(in, out.y, executor);
  if (out.final_state.has_value())
    for (index_t b = 0; b < in.u.size(0); ++b) detail::long_conv_write_final_state(in, out.final_state, b);
}

}  // namespace seqmix
