// hyper_mixer, fast form: GEMMs in three phases split over the executor.
//   1. hypernetworks: per block of 64 (batch row, token) rows, z = x + positions copied into a
//      [rows, D] buffer, then two GEMMs per network (z A + a, sigma, then B + b) into W_1, W_2
//      ([B T, E] each, allocated per call);
//   2. per (batch row, run of 256 channels): H = sigma(W_1^T x) [E, run] (one GEMM, the sum over
//      every token);
//   3. per block of 64 rows: y = W_2 H_b, written straight into y.
// 2 T E (2 D + ...) flops per batch row beyond the hypernetworks' 2 T D M + 2 T M E each.
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyper_mixer/reference.hpp"

namespace seqmix {
namespace detail {

// Rows (batch row, token) per task in phases 1 and 3, channels per task in phase 2.
constexpr index_t kHyperMixerRows = 64;
constexpr index_t kHyperMixerColumns = 256;

template <class Matrix>
inline void hyper_mixer_activate(Matrix&& m, HyperMixerActivation act) {
  const bool relu = act == HyperMixerActivation::relu;
  for (index_t r = 0; r < m.rows(); ++r)
    for (index_t c = 0; c < m.cols(); ++c) {
      const float v = m(r, c);
      m(r, c) = relu ? (v > 0.f ? v : 0.f) : 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
    }
}

// rows of W = sigma(z w_in + b_in) w_out + b_out.
template <class Deferred, bool kUnitStride, class Matrix>
void hyper_mixer_network_rows(const HyperMixerNetwork& net, const Matrix& z, Matrix& hidden, Matrix& w, index_t row0,
                              HyperMixerActivation act) {
  hidden.noalias() = z * as_deferred_matrix_for<Deferred, kUnitStride>(net.w_in);
  if (net.b_in.has_value())
    for (index_t m = 0; m < hidden.cols(); ++m) hidden.col(m).array() += net.b_in(m);
  hyper_mixer_activate(hidden, act);
  auto rows = w.middleRows(row0, z.rows());
  rows.noalias() = hidden * as_deferred_matrix_for<Deferred, kUnitStride>(net.w_out);
  if (net.b_out.has_value())
    for (index_t e = 0; e < rows.cols(); ++e) rows.col(e).array() += net.b_out(e);
}

// The three phases of hyper_mixer (validated, non-empty), x, y and the weights mapped with a
// compile-time unit inner stride where kUnitStride (see hyper_mixer).
template <class Deferred, bool kUnitStride>
void hyper_mixer_run(const HyperMixerInputs& in, const HyperMixerOutputs& out, const HyperMixerOptions& options,
                     const HyperMixerDims& d, const Executor& executor) {
  using Matrix = deferred_t<RowMajorMatrix<float>, Deferred>;
  const index_t rows_total = d.B * d.T, blocks = (rows_total + detail::kHyperMixerRows - 1) / detail::kHyperMixerRows;
  Matrix w1(rows_total, d.E), w2(rows_total, d.E), h(d.B * d.E, d.D);
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    Matrix z, hidden;
    for (index_t blk = begin; blk < end; ++blk) {
      const index_t r0 = blk * detail::kHyperMixerRows, n = std::min(detail::kHyperMixerRows, rows_total - r0);
      z.resize(n, d.D);
      for (index_t r = 0; r < n; ++r) {
        const index_t b = (r0 + r) / d.T, t = (r0 + r) % d.T;
        if constexpr (kUnitStride) {
          // The row as a copy (memcpy), positions added through Eigen: both vectorized at -O2.
          std::copy(in.x.ptr(b, t, 0), in.x.ptr(b, t, 0) + d.D, z.data() + r * d.D);
          if (in.positions.has_value()) z.row(r) += as_matrix(in.positions).row(t);
        } else {
          for (index_t c = 0; c < d.D; ++c)
            z(r, c) = in.x(b, t, c) + (in.positions.has_value() ? in.positions(t, c) : 0.f);
        }
      }
      hyper_mixer_network_rows<Deferred, kUnitStride>(in.hyper1, z, hidden, w1, r0, options.activation);
      hyper_mixer_network_rows<Deferred, kUnitStride>(in.hyper2, z, hidden, w2, r0, options.activation);
    }
  });
  const index_t runs = (d.D + detail::kHyperMixerColumns - 1) / detail::kHyperMixerColumns;
  parallel_for(executor, d.B * runs, 1, [&](index_t begin, index_t end) {
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / runs, c0 = (task % runs) * detail::kHyperMixerColumns;
      const index_t nc = std::min(detail::kHyperMixerColumns, d.D - c0);
      auto hb = h.block(b * d.E, c0, d.E, nc);
      hb.noalias() = w1.middleRows(b * d.T, d.T).transpose() *
                     as_deferred_matrix_for<Deferred, kUnitStride>(in.x.select(0, b)).middleCols(c0, nc);
      hyper_mixer_activate(hb, options.activation);
    }
  });
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    for (index_t blk = begin; blk < end; ++blk) {
      const index_t r0 = blk * detail::kHyperMixerRows, r1 = std::min(rows_total, r0 + detail::kHyperMixerRows);
      // A block may span two batch rows: one GEMM per batch row it touches.
      for (index_t r = r0; r < r1;) {
        const index_t b = r / d.T, stop = std::min(r1, (b + 1) * d.T), t0 = r % d.T;
        as_deferred_matrix_for<Deferred, kUnitStride>(out.y.select(0, b)).middleRows(t0, stop - r).noalias() =
            w2.middleRows(r, stop - r) * h.middleRows(b * d.E, d.E);
        r = stop;
      }
    }
  });
}

}  // namespace detail

/// Fast form of hyper_mixer: same arguments and results as reference::hyper_mixer
/// (reference.hpp) up to float rounding. Allocates W_1, W_2 ([B T, E]) and H ([B E, D]) per
/// call. Validates first.
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
// Unit-stride x, y and weights (the usual layout) take maps with a compile-time inner stride: with
// runtime strides Eigen copied each operand element by element before every product, a loop GCC
// -O2 leaves scalar (1.2-1.4x slower than -O3).
template <class Deferred = void>
void hyper_mixer(const HyperMixerInputs& in, const HyperMixerOutputs& out, const HyperMixerOptions& options = {},
                 const Executor& executor = serial_executor()) {
  const auto d = detail::validate_hyper_mixer("hyper_mixer", in, out, options);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const bool unit = in.x.stride(2) == 1 && out.y.stride(2) == 1 && in.hyper1.w_in.stride(1) == 1 &&
                    in.hyper1.w_out.stride(1) == 1 && in.hyper2.w_in.stride(1) == 1 && in.hyper2.w_out.stride(1) == 1;
  if (unit)
    detail::hyper_mixer_run<Deferred, true>(in, out, options, d, executor);
  else
    detail::hyper_mixer_run<Deferred, false>(in, out, options, d, executor);
}

}  // namespace seqmix
