// s5, fast prefill: the input and output projections as GEMMs (Eigen), the recurrence of each
// state as core/scan's associative scan over the complex affine monoid (x -> a x + b, a and b
// complex), parallel over states or, with few states, over time chunks.
#pragma once

#include <algorithm>
#include <complex>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/s5/reference.hpp"

namespace seqmix {
namespace detail {

// Rows per GEMM task: 256 rows of u (H floats each) keep a task's share of the projection big
// enough for Eigen's blocking and leave 16 tasks at T = 4096.
constexpr index_t kS5GemmRows = 256;

// out[r0:r1] = a[r0:r1] * b^T, row blocks spread over the executor (Eigen itself runs serially).
template <class A, class Bm, class Out>
void s5_gemm_rows(const A& a, const Bm& bt, Out& out, const Executor& executor) {
  parallel_for(executor, a.rows(), kS5GemmRows, [&](index_t r0, index_t r1) {
    out.middleRows(r0, r1 - r0).noalias() = a.middleRows(r0, r1 - r0) * bt;
  });
}

// Scan elements of state i in batch row b with per-token steps: m_t = (Lambda_bar(t),
// factor(t) * (B u_t)_i), discretized in double at dt_i * timestep(b, t).
template <class Plane>
void s5_per_token_maps(const S5Params& params, const ConstView<float, 2>& timestep, index_t b, index_t i,
                       SsmDiscretization discretization, const Plane& bu_re, const Plane& bu_im,
                       std::vector<AffineMap<std::complex<float>>>& maps) {
  const SsmComplex lambda = s5_value(params.Lambda_real, params.Lambda_imag, i);
  const double dt = params.dt(i);
  for (index_t t = 0; t < static_cast<index_t>(maps.size()); ++t) {
    SsmComplex A_bar, factor;
    s5_discretize_state(lambda, dt * double(timestep(b, t)), discretization, A_bar, factor);
    const SsmComplex bu = factor * SsmComplex(bu_re(t, i), bu_im(t, i));
    maps[static_cast<std::size_t>(t)] = {std::complex<float>(A_bar), std::complex<float>(bu)};
  }
}

}  // namespace detail

/// Fast prefill: same arguments and results as reference::s5 (float rounding). Per batch row:
/// B_bar u as two real GEMMs [T,H] x [H,P], then for every state the inclusive scan of
/// (Lambda_bar, B_bar u_t) under composition (associative_scan with AffineMonoid over
/// std::complex<float>: over time chunks in parallel when P is below 2 threads' worth, else one
/// state per task), then y = c Re(C x) + D u as two GEMMs. Scratch: 4 T P floats and T affine
/// maps per task. The final state may be the very initial state. options.reverse: the GEMMs map
/// u with its negated row stride (no copy). With in.timestep the projection uses B itself and
/// each scan element is discretized where it is built, (Lambda_bar(t), factor(t) * (B u_t)_p) in
/// double: a complex exp (ZOH) or division (bilinear) per token and state, spread with the scans.
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void s5(const S5Params& params, const S5Inputs& in, const S5Outputs& out, const S5Options& options = {},
        const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::s5_reversed_call(in, out);
    return s5<Deferred>(params, rev.first, rev.second, detail::forward_options(options), executor);
  }
  using Complex = std::complex<float>;
  using Matrix = RowMajorMatrix<deferred_t<float, Deferred>>;
  const auto dims = detail::validate_s5("s5", params, in, out, options);
  const index_t T = dims.T, H = dims.H, P = dims.P;
  const auto sys = detail::s5_discretize(params, H, options);
  const float scale = static_cast<float>(detail::ssm_output_scale(options));
  // B_bar^T as two [H,P] planes; C^T scaled, as two [P,H] planes (Re(C x) = C_re x_re - C_im x_im).
  Matrix Bt_re(H, P), Bt_im(H, P), Ct_re(P, H), Ct_im(P, H);
  // With per-token steps the projection takes B and the scan elements are discretized per token.
  const bool per_token = in.timestep.has_value();
  for (index_t i = 0; i < P; ++i)
    for (index_t h = 0; h < H; ++h) {
      const detail::SsmComplex b_bar =
          per_token ? detail::SsmComplex(params.B_real(i, h), params.B_imag.has_value() ? params.B_imag(i, h) : 0.f)
                    : sys.B_bar[static_cast<std::size_t>(i * H + h)];
      Bt_re(h, i) = static_cast<float>(b_bar.real()), Bt_im(h, i) = static_cast<float>(b_bar.imag());
      Ct_re(i, h) = scale * params.C_real(h, i);
      Ct_im(i, h) = params.C_imag.has_value() ? -scale * params.C_imag(h, i) : 0.f;
    }
  std::vector<Complex> lambda(static_cast<std::size_t>(P));
  for (index_t i = 0; i < P; ++i) lambda[static_cast<std::size_t>(i)] = Complex(sys.Lambda_bar[static_cast<std::size_t>(i)]);
  // [T,P] planes: B_bar u, then (in place) the states x_t.
  Matrix X_re(T, P), X_im(T, P), Y(T, H);
  const bool over_states = P >= 2 * static_cast<index_t>(executor.concurrency());
  for (index_t b = 0; b < dims.B; ++b) {
    const auto U = as_deferred_matrix<Deferred>(in.u.select(0, b));
    detail::s5_gemm_rows(U, Bt_re, X_re, executor);
    detail::s5_gemm_rows(U, Bt_im, X_im, executor);
    // State i: maps m_t = (lambda_i, B_bar u_t), prefix M_t = m_t o ... o m_0, x_t = M_t(x_{-1}).
    const auto scan_state = [&](index_t i, std::vector<AffineMap<Complex>>& maps, const Executor& scan_executor) {
      if (per_token)
        detail::s5_per_token_maps(params, in.timestep, b, i, options.discretization, X_re, X_im, maps);
      else
        for (index_t t = 0; t < T; ++t) maps[static_cast<std::size_t>(t)] = {lambda[static_cast<std::size_t>(i)], Complex(X_re(t, i), X_im(t, i))};
      associative_scan(AffineMonoid<Complex>(), maps.data(), maps.data(), T, scan_executor);
      const Complex x0(detail::s5_initial(in, b, i));
      for (index_t t = 0; t < T; ++t) {
        const AffineMap<Complex>& m = maps[static_cast<std::size_t>(t)];
        const Complex x = m.a * x0 + m.b;
        X_re(t, i) = x.real(), X_im(t, i) = x.imag();
      }
    };
    if (over_states) {
      parallel_for(executor, P, 1, [&](index_t i0, index_t i1) {
        std::vector<AffineMap<Complex>> maps(static_cast<std::size_t>(T));
        for (index_t i = i0; i < i1; ++i) scan_state(i, maps, serial_executor());
      });
    } else {
      std::vector<AffineMap<Complex>> maps(static_cast<std::size_t>(T));
      for (index_t i = 0; i < P; ++i) scan_state(i, maps, executor);
    }
    // y = X_re C_re^T - X_im C_im^T (scaled) + D u.
    parallel_for(executor, T, detail::kS5GemmRows, [&](index_t r0, index_t r1) {
      Y.middleRows(r0, r1 - r0).noalias() = X_re.middleRows(r0, r1 - r0) * Ct_re;
      Y.middleRows(r0, r1 - r0).noalias() += X_im.middleRows(r0, r1 - r0) * Ct_im;
      for (index_t t = r0; t < r1; ++t)
        for (index_t h = 0; h < H; ++h)
          out.y(b, t, h) = Y(t, h) + (params.D.has_value() ? params.D(h) * in.u(b, t, h) : 0.f);
    });
    // Written after the scans read the initial state: the final state may be the same view.
    if (out.final_state_real.has_value())
      for (index_t i = 0; i < P; ++i) {
        const Complex x = T > 0 ? Complex(X_re(T - 1, i), X_im(T - 1, i)) : Complex(detail::s5_initial(in, b, i));
        out.final_state_real(b, i) = x.real(), out.final_state_imag(b, i) = x.imag();
      }
  }
}

}  // namespace seqmix
