// monarch_mix and monarch_mix_causal, fast forms: batched small GEMMs over the b x b blocks
// (Eigen), the M2 way of applying Monarch matrices.
//
// monarch_mix: per task (batch row, group, run of up to kMonarchColumns channels of the group)
// b GEMMs right[g,k] (b x b) x the k-th block of b token rows of x (only the rows inside [0,T);
// padding is never materialized), then b GEMMs left[g,i] x the rows {k*b + i} of that result
// (an outer-stride view, so P^T costs no copy), written straight into the output rows
// {m*b + i} < T (P likewise). 4 n b multiply-adds per channel (n = b*b).
//
// monarch_mix_causal: the n-point DFT (n = b*b >= 2T-1) as the Monarch product of the four-step
// FFT: one GEMM F_b x [b, b*C] over the first index, a twiddle pass, then b GEMMs F_b x [b, C]
// over the second; the inverse is the same with conj(F_b) in the other order and a 1/n scale.
// Complex float GEMMs, the b x b DFT and twiddle tables computed in double once per call. Tasks
// are runs of kMonarchColumns channels (each transforms its filter columns once, then every
// batch row), so a call with D <= kMonarchColumns runs on one thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/monarch/reference.hpp"

namespace seqmix {
namespace detail {

// Channels per task (GEMM width).
constexpr index_t kMonarchColumns = 64;

using MonarchOuterMap = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
using MonarchComplexMatrix = RowMajorMatrix<std::complex<float>>;
using MonarchComplexMap = Eigen::Map<MonarchComplexMatrix>;

// Rows of y for batch row bt and channels [c0, c0 + nc) of group g (monarch_mix_columns).
template <class Deferred, bool kUnitStride, class Matrix>
void monarch_mix_columns_mapped(const MonarchMixInputs& in, const MonarchMixOutputs& out, index_t bt, index_t g,
                                index_t c0, index_t nc, Matrix& z) {
  using OuterMap = deferred_t<MonarchOuterMap, Deferred>;
  const index_t T = in.x.size(1), b = in.left.size(1);
  z.resize(b * b, nc);
  const auto x = as_deferred_matrix_for<Deferred, kUnitStride>(in.x.select(0, bt).slice(1, c0, nc));
  for (index_t k = 0; k < b; ++k) {
    const index_t rows = std::min(b, T - k * b);
    if (rows <= 0) {
      z.middleRows(k * b, b).setZero();
      continue;
    }
    const auto r = as_deferred_matrix_for<Deferred, kUnitStride>(in.right.select(0, g).select(0, k));
    z.middleRows(k * b, b).noalias() = r.leftCols(rows) * x.middleRows(k * b, rows);
  }
  for (index_t i = 0; i < b && i < T; ++i) {
    const index_t rows = (T - i + b - 1) / b;  // outputs m*b + i < T
    const OuterMap zi(z.data() + i * nc, b, nc, Eigen::OuterStride<>(b * nc));
    const TensorView<float, 2> yi(out.y.ptr(bt, i, c0), {rows, nc}, {b * out.y.stride(1), out.y.stride(2)});
    as_deferred_matrix_for<Deferred, kUnitStride>(yi).noalias() =
        as_deferred_matrix_for<Deferred, kUnitStride>(in.left.select(0, g).select(0, i)).topRows(rows) * zi;
  }
}

// Rows of y for batch row bt and channels [c0, c0 + nc) of group g. Unit-stride channels (the
// usual layout) take maps with a compile-time inner stride: with runtime strides Eigen copied
// every operand element by element first, a loop GCC -O2 leaves scalar (1.2-1.4x slower than -O3).
template <class Deferred, class Matrix = deferred_t<RowMajorMatrix<float>, Deferred>>
void monarch_mix_columns(const MonarchMixInputs& in, const MonarchMixOutputs& out, index_t bt, index_t g, index_t c0,
                         index_t nc, Matrix& z) {
  if (in.x.stride(2) == 1 && out.y.stride(2) == 1 && in.left.stride(3) == 1 && in.right.stride(3) == 1)
    monarch_mix_columns_mapped<Deferred, true>(in, out, bt, g, c0, nc, z);
  else
    monarch_mix_columns_mapped<Deferred, false>(in, out, bt, g, c0, nc, z);
}

// Smallest b with b*b >= m (m >= 1).
inline index_t monarch_side(index_t m) {
  index_t b = static_cast<index_t>(std::sqrt(static_cast<double>(m)));
  while (b * b < m) ++b;
  while (b > 1 && (b - 1) * (b - 1) >= m) --b;
  return std::max<index_t>(b, 1);
}

// The n = b*b point DFT tables: f[k][j] = w_b^{kj}, twiddle[k1][n2] = w_n^{n2 k1}, w_m = exp(-2 pi i / m).
// A template only so that its products compile where monarch_mix_causal is called.
template <class Deferred>
struct MonarchDft {
  using Matrix = deferred_t<MonarchComplexMatrix, Deferred>;
  using Map = deferred_t<MonarchComplexMap, Deferred>;
  index_t b = 0, n = 0;
  Matrix f, f_conj, twiddle;
  explicit MonarchDft(index_t side) : b(side), n(side * side), f(side, side), f_conj(side, side), twiddle(side, side) {
    const double pi = 3.14159265358979323846;
    for (index_t k = 0; k < b; ++k)
      for (index_t j = 0; j < b; ++j) {
        const double a = -2.0 * pi * double((k * j) % b) / double(b), t = -2.0 * pi * double((k * j) % n) / double(n);
        f(k, j) = {float(std::cos(a)), float(std::sin(a))};
        f_conj(k, j) = std::conj(f(k, j));
        twiddle(k, j) = {float(std::cos(t)), float(std::sin(t))};
      }
  }

  // spec [b(k1), b(k2)*nc] = DFT of work [b(n1), b(n2)*nc] (index n = n1*b + n2, frequency k1 + b*k2);
  // work is overwritten.
  void forward(Matrix& work, Matrix& spec, index_t nc) const {
    spec.noalias() = f * work;
    for (index_t k1 = 0; k1 < b; ++k1)
      for (index_t n2 = 0; n2 < b; ++n2) {
        const std::complex<float> w = twiddle(k1, n2);
        std::complex<float>* row = spec.data() + k1 * b * nc + n2 * nc;
        for (index_t c = 0; c < nc; ++c) row[c] *= w;
      }
    for (index_t k1 = 0; k1 < b; ++k1) {
      Map a(spec.data() + k1 * b * nc, b, nc), o(work.data() + k1 * b * nc, b, nc);
      o.noalias() = f * a;  // f is symmetric: sum over n2 of w_b^{n2 k2}
    }
    spec.swap(work);
  }

  // work [rows(n1), b(n2)*nc] = n times the inverse DFT of spec [b(k1), b(k2)*nc], its first rows*b
  // entries; spec is overwritten.
  void inverse(Matrix& spec, Matrix& work, index_t nc, index_t rows) const {
    work.resize(b, b * nc);
    for (index_t k1 = 0; k1 < b; ++k1) {
      Map a(spec.data() + k1 * b * nc, b, nc), o(work.data() + k1 * b * nc, b, nc);
      o.noalias() = f_conj * a;
    }
    for (index_t k1 = 0; k1 < b; ++k1)
      for (index_t n2 = 0; n2 < b; ++n2) {
        const std::complex<float> w = std::conj(twiddle(k1, n2));
        std::complex<float>* row = work.data() + k1 * b * nc + n2 * nc;
        for (index_t c = 0; c < nc; ++c) row[c] *= w;
      }
    spec.resize(rows, b * nc);
    spec.noalias() = f_conj.topRows(rows) * work;
    work.swap(spec);
  }
};

}  // namespace detail

/// Fast form of monarch_mix: same arguments and results as reference::monarch_mix
/// (reference.hpp) up to float rounding. Tasks (batch row, group, channel run) split over
/// `executor`; a [b*b, 64] float buffer per task. Validates first.
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void monarch_mix(const MonarchMixInputs& in, const MonarchMixOutputs& out, const Executor& executor = serial_executor()) {
  const auto d = detail::validate_monarch_mix("monarch_mix", in, out);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const index_t group = d.D / d.G, runs = (group + detail::kMonarchColumns - 1) / detail::kMonarchColumns;
  parallel_for(executor, d.B * d.G * runs, 1, [&](index_t begin, index_t end) {
    deferred_t<RowMajorMatrix<float>, Deferred> z;
    for (index_t task = begin; task < end; ++task) {
      const index_t run = task % runs, g = (task / runs) % d.G, bt = task / (runs * d.G);
      const index_t c0 = g * group + run * detail::kMonarchColumns;
      const index_t nc = std::min(detail::kMonarchColumns, (g + 1) * group - c0);
      detail::monarch_mix_columns<Deferred>(in, out, bt, g, c0, nc, z);
    }
  });
}

/// Fast form of monarch_mix_causal: same arguments and results as reference::monarch_mix_causal
/// (reference.hpp) up to float rounding (y[t] reads x[0..t] exactly in the definition; later
/// inputs reach it only through rounding, relative 1e-6). O(n^1.5) complex multiply-adds per
/// channel and batch row with n = b*b >= 2T-1. Channel runs split over `executor`. Validates first.
/// options.reverse: anti-causal, the same transforms on reversed views of x and y (no copy).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void monarch_mix_causal(const MonarchMixCausalInputs& in, const MonarchMixOutputs& out,
                        const MonarchMixCausalOptions& options, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::monarch_causal_reversed_call(in, out);
    return monarch_mix_causal<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto d = detail::validate_monarch_mix_causal("monarch_mix_causal", in, out);
  if (d.B == 0 || d.T == 0 || d.D == 0) return;
  const detail::MonarchDft<Deferred> dft(detail::monarch_side(2 * d.T - 1));
  const index_t b = dft.b, taps = std::min(in.filter.size(0), d.T), rows = (d.T + b - 1) / b;
  const index_t runs = (d.D + detail::kMonarchColumns - 1) / detail::kMonarchColumns;
  const float scale = 1.f / float(dft.n);
  parallel_for(executor, runs, 1, [&](index_t begin, index_t end) {
    typename detail::MonarchDft<Deferred>::Matrix work, spec, kernel;
    for (index_t run = begin; run < end; ++run) {
      const index_t c0 = run * detail::kMonarchColumns, nc = std::min(detail::kMonarchColumns, d.D - c0);
      work.setZero(b, b * nc);
      for (index_t s = 0; s < taps; ++s)
        for (index_t c = 0; c < nc; ++c) work(s / b, (s % b) * nc + c) = in.filter(s, c0 + c);
      dft.forward(work, kernel, nc);
      for (index_t bt = 0; bt < d.B; ++bt) {
        work.setZero(b, b * nc);
        for (index_t t = 0; t < d.T; ++t)
          for (index_t c = 0; c < nc; ++c) work(t / b, (t % b) * nc + c) = in.x(bt, t, c0 + c);
        dft.forward(work, spec, nc);
        spec.array() *= kernel.array();
        dft.inverse(spec, work, nc, rows);
        for (index_t t = 0; t < d.T; ++t)
          for (index_t c = 0; c < nc; ++c) out.y(bt, t, c0 + c) = work(t / b, (t % b) * nc + c).real() * scale;
      }
    }
  });
}

/// monarch_mix_causal with default options (forward), as before options existed.
template <class Deferred = void>
void monarch_mix_causal(const MonarchMixCausalInputs& in, const MonarchMixOutputs& out,
                        const Executor& executor = serial_executor()) {
  monarch_mix_causal<Deferred>(in, out, MonarchMixCausalOptions{}, executor);
}

}  // namespace seqmix
