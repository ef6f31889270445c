// base_conv, fast prefill: both projections as one Eigen GEMM per batch row against [W1 | W2]
// (threaded over batch rows), the long convolution of p2 by lti/long_conv (direct or FFT by its
// cost model) written straight into y, then y *= p1 in a SIMD pass.
#pragma once

#include <algorithm>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/base_conv/reference.hpp"
#include "seqmix/lti/long_conv/fast.hpp"

namespace seqmix {
namespace detail {

// p[b*T + t, 0:D] = u[b,t] W1 + b1 and p[b*T + t, D:2D] = u[b,t] W2 + b2, for every row.
template <class Deferred, class Matrix = deferred_t<RowMajorMatrix<float>, Deferred>>
void base_conv_project(const ConstView<float, 3>& u, const ConstView<float, 2>& w1, const ConstView<float, 2>& w2,
                       const ConstView<float, 1>& b1, const ConstView<float, 1>& b2, Matrix& p,
                       const Executor& executor) {
  const index_t B = u.size(0), T = u.size(1), D = u.size(2);
  Matrix w(D, 2 * D);
  w.leftCols(D) = as_deferred_matrix<Deferred>(w1);
  w.rightCols(D) = as_deferred_matrix<Deferred>(w2);
  deferred_t<Eigen::RowVectorXf, Deferred> bias = Eigen::RowVectorXf::Zero(2 * D);
  for (index_t d = 0; d < D; ++d) {
    if (b1.has_value()) bias(d) = b1(d);
    if (b2.has_value()) bias(D + d) = b2(d);
  }
  p.resize(B * T, 2 * D);
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    for (index_t b = begin; b < end; ++b) {
      auto rows = p.middleRows(b * T, T);
      rows.noalias() = as_deferred_matrix<Deferred>(u.select(0, b)) * w;
      rows.rowwise() += bias;
    }
  });
}

// y[b,t,:] *= p1 rows (p's first D columns), SIMD when y's rows are contiguous.
inline void base_conv_gate(const RowMajorMatrix<float>& p, const TensorView<float, 3>& y, const Executor& executor) {
  const index_t T = y.size(1), D = y.size(2);
  const index_t grain = std::max<index_t>(1, 16384 / std::max<index_t>(D, 1));
  parallel_for(executor, y.size(0) * T, grain, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const index_t b = r / T, t = r % T;
      const float* g = p.data() + r * p.outerStride();
      float* yr = y.ptr(b, t, 0);
      index_t d = 0;
      if (y.stride(2) == 1)
        for (; d < simd::vector_end(D); d += simd::kWidth) simd::store(yr + d, simd::load(yr + d) * simd::load(g + d));
      for (; d < D; ++d) y(b, t, d) *= g[d];
    }
  });
}

// The projections, the long convolution of p2 into y (by `spectrum` when given) and the gate,
// for a validated call with rows.
template <class Deferred>
void base_conv_run(const BaseConvInputs& in, const BaseConvOutputs& out, const BaseConvOptions& options,
                   const LongConvFilterSpectrum* spectrum, const Executor& executor) {
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2);
  deferred_t<RowMajorMatrix<float>, Deferred> p;
  base_conv_project<Deferred>(in.u, in.w1, in.w2, in.b1, in.b2, p, executor);
  const index_t row = p.outerStride();
  const ConstView<float, 3> p2(p.data() + D, {B, T, D}, {T * row, row, 1});
  LongConvInputs args{p2, in.filter};
  args.initial_state = in.initial_state;
  LongConvOptions conv;
  conv.method = options.method;
  if (spectrum)
    long_conv(args, *spectrum, {out.y, out.final_state}, conv, executor);
  else
    long_conv(args, {out.y, out.final_state}, conv, executor);
  base_conv_gate(p, out.y, executor);
}

}  // namespace detail

/// Fast prefill: same arguments and results as reference::base_conv (see reference.hpp) up to
/// float rounding. One GEMM [T,D] x [D,2D] per batch row (threaded over rows), one long_conv of
/// p2 into y (options.method; carries initial_state -> final_state), one gate pass. Allocates
/// the [B T, 2D] projections per call. options.reverse: the same on reversed views of u and y
/// (the projection GEMM reads u with its negated row stride; no copy).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void base_conv(const BaseConvInputs& in, const BaseConvOutputs& out, const BaseConvOptions& options = {},
               const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::base_conv_reversed_call(in, out);
    return base_conv<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_base_conv("base_conv", in, out, options);
  if (dims.B == 0 || dims.T == 0 || dims.D == 0) {
    // No new rows: the state carries over unchanged.
    if (out.final_state.has_value() && !detail::base_conv_same_view(out.final_state, in.initial_state))
      for (index_t b = 0; b < dims.B; ++b)
        for (index_t r = 0; r < dims.L - 1; ++r)
          for (index_t d = 0; d < dims.D; ++d)
            out.final_state(b, r, d) = in.initial_state.has_value() ? in.initial_state(b, r, d) : 0.f;
    return;
  }
  detail::base_conv_run<Deferred>(in, out, options, nullptr, executor);
}

/// Fast prefill with the filter's spectrum made once (inference: the filter is a fixed weight):
/// the same results as base_conv(in, out, options) up to float rounding, with two transforms per
/// channel pair instead of three when the FFT form runs. Make it with
/// `LongConvFilterSpectrum(in.filter, {}, {D, max_tokens, LongConvDirection::causal, with_state})`
/// (with_state: the calls pass initial_state); which calls it serves is long_conv's contract
/// (lti/long_conv/fft.hpp). `in.filter` must still be the filter it was made from. A spectrum
/// that does not serve the call is a ShapeError naming `spectrum` before any output is written.
template <class Deferred = void>
void base_conv(const BaseConvInputs& in, const LongConvFilterSpectrum& spectrum, const BaseConvOutputs& out,
               const BaseConvOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::base_conv_reversed_call(in, out);
    return base_conv<Deferred>(rev.first, spectrum, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_base_conv("base_conv", in, out, options);
  // u has p2's shape, so it stands for the convolution's input in the check.
  LongConvInputs conv_shape{in.u, in.filter};
  conv_shape.initial_state = in.initial_state;
  detail::check_long_conv_spectrum(ArgCheck("base_conv"), "spectrum", spectrum, conv_shape, LongConvOptions{});
  if (dims.B == 0 || dims.T == 0 || dims.D == 0) return base_conv<Deferred>(in, out, options, executor);
  detail::base_conv_run<Deferred>(in, out, options, &spectrum, executor);
}

}  // namespace seqmix
