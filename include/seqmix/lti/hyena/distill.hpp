// hyena distillation (issue 16 item 5, "Laughing Hyena", Massaroli et al. 2023): each channel's
// long filter h[0..L) is replaced by a low-order modal recurrence, so that generation costs
// O(order D) per token and order instead of O(L D).
//
//   h[0]  kept exactly (a feedthrough),
//   h[s] ~ Re( sum_{k<M} R_k lambda_k^s ),  s = 1..L-1,  |lambda_k| < 1,  M = options.order
//
// Method (per order and channel, in double):
//  1. Poles by Kung's method (the Ho-Kalman / eigensystem-realization step of balanced
//     truncation) on a Hankel matrix of the taps g[t] = h[1+t]: Hk[i,c] = g[s i + c] with K rows
//     (256 by default, options.hankel_rows, at most L/2) strided by s lags so that they span
//     about half the filter (a filter of 16384 taps is seen over 8192 lags, not 256), and the
//     C = L-1 - s(K-1) consecutive columns, so every tap enters. Its left singular vectors are
//     the eigenvectors of the K x K Gram Hk Hk^T (built in O(K L) from one row of lagged
//     products and a sliding update); W = Hk^T U over the r = 2M leading ones spans the
//     controllability rows (b, A b, A^2 b, ...), whose one-lag shift W[1:] = W[:-1] X gives a
//     matrix similar to A (least squares); the poles are its eigenvalues (real poles and
//     conjugate pairs, X being real). A conjugate pair takes one
//     complex mode (the real part supplies its conjugate), a real pole one mode too; if the real
//     poles would need more than M modes, r is lowered until they fit. Directions whose singular
//     value is below 1e-7 of the largest are not used (the Gram squares them: 1e-14 is near the
//     double rounding of its eigenvalues), so a filter's fit stops improving with M once its
//     numerical Hankel rank is reached.
//  2. Stability: a pole outside the unit circle is reflected to 1 / conj(lambda) (same angle,
//     mirrored decay), then any modulus above options.max_pole_modulus is clipped to it.
//  3. Residues by linear least squares of h[1..L) on the modal basis (Re, Im of lambda_k^s), with
//     the normal equations formed in closed form (geometric sums of lambda_i lambda_j and
//     lambda_i conj(lambda_j)) and solved after Jacobi scaling by a complete orthogonal
//     decomposition (near-duplicate poles do not break it).
//  4. The feedthrough makes tap 0 exact: feedthrough = h[0] + skip - Re(sum_k R_k).
//
// The result is a diagonal complex system in the form ssm_step (lti/ssm_kernel/step.hpp) runs:
// A_bar = lambda, B_bar = C = g with g^2 = R (the principal square root, so Re(C A^s B) =
// Re(R lambda^s)), skip = feedthrough. hyena_distilled_step (step_distilled.hpp) uses it.
// A filter that is exactly a sum of at most M modes (2M real poles) is recovered to float
// rounding; smooth decaying filters (Hyena's windowed sinusoid mixtures) converge with M.
// The modal filter does not stop at L: past L it continues its (decaying) tail, where the FIR
// filter is zero; with L = T (the usual Hyena setting) this never matters within the context.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/reference.hpp"

namespace seqmix {

/// Options of hyena_distill (docs/operators.md, "hyena").
struct HyenaDistillOptions {
  /// Complex modes per channel (the state size of the recurrence), 1 <= order <= L/2.
  index_t order = 16;
  /// Poles are kept strictly inside the unit circle: |lambda| <= max_pole_modulus, in (0, 1).
  double max_pole_modulus = 1.0 - 1e-5;
  /// Rows K of the Hankel matrix (0: automatic, max(4 order + 32, 256), at most L/2; the rows are
  /// strided to span half the filter). More rows resolve more of the filter's structure at
  /// O(K^3) per channel (512 rows cost about 8 times 256).
  index_t hankel_rows = 0;
};

/// Outputs of hyena_distill, all written by the call ([N,D,M] with M = options.order). Unused
/// modes (a channel whose filter needs fewer) have pole 0 and gain 0.
struct HyenaDistillOutputs {
  TensorView<float, 3> pole_real;      ///< [N,D,M]: Re(lambda), ssm_step's A_bar_real
  TensorView<float, 3> pole_imag;      ///< [N,D,M]: Im(lambda), ssm_step's A_bar_imag
  TensorView<float, 3> gain_real;      ///< [N,D,M]: Re(g), g^2 = residue R; ssm_step's B_bar_real and C_real
  TensorView<float, 3> gain_imag;      ///< [N,D,M]: Im(g); ssm_step's B_bar_imag and C_imag
  TensorView<float, 2> feedthrough;    ///< [N,D]: h[0] + skip - Re(sum_k R_k), ssm_step's skip
  TensorView<float, 2> fit_error = {}; ///< [N,D], optional: ||h - h_modal|| / ||h|| over the L taps (0 for a zero filter)
};

namespace detail {

using HyenaComplex = std::complex<double>;

// One channel's fit, in double.
struct HyenaModalFit {
  std::vector<HyenaComplex> pole, residue;  // up to M modes
  double feedthrough = 0.0, error = 0.0;
};

// sum_{s=1}^{count} q^s.
inline HyenaComplex hyena_geometric_sum(HyenaComplex q, index_t count) {
  if (std::abs(1.0 - q) < 1e-13) return HyenaComplex(double(count));
  return q * (1.0 - std::pow(q, double(count))) / (1.0 - q);
}

// Poles of the taps g[0..M) = h[1..L) by Kung's method, at most `modes` modes (one per conjugate
// pair or real pole), stabilized. Returns one pole per mode (Im >= 0).
// (A template through deferred_t only so that the solvers compile where hyena_distill is called.)
template <class Tag>
std::vector<HyenaComplex> hyena_fit_poles(const std::vector<double>& g, index_t modes, index_t hankel_rows,
                                          double max_modulus, double rank_tolerance = 1e-7) {
  using Matrix = deferred_t<Eigen::MatrixXd, Tag>;
  using Vector = deferred_t<Eigen::VectorXd, Tag>;
  const index_t M = static_cast<index_t>(g.size());
  std::vector<HyenaComplex> poles;
  if (M < 2) return poles;
  // K rows strided by `stride` lags so that they span about half the filter, C consecutive
  // columns: Hk[i,c] = g[stride i + c].
  index_t K = hankel_rows > 0 ? hankel_rows : std::max<index_t>(4 * modes + 32, 256), stride = 1;
  if (K > (M + 1) / 2) K = (M + 1) / 2;
  else stride = std::max<index_t>(1, (M / 2) / std::max<index_t>(K - 1, 1));
  const index_t C = M - stride * (K - 1);
  // Gram G = Hk Hk^T: the first row directly, then G[i+1,j+1] = G[i,j] - (the first `stride`
  // products of rows i, j) + (the `stride` products past their end).
  Matrix G(K, K);
  for (index_t k = 0; k < K; ++k) {
    double acc = 0.0;
    for (index_t c = 0; c < C; ++c) acc += g[c] * g[stride * k + c];
    G(0, k) = G(k, 0) = acc;
  }
  for (index_t i = 0; i + 1 < K; ++i)
    for (index_t j = i; j + 1 < K; ++j) {
      double value = G(i, j);
      for (index_t c = 0; c < stride; ++c)
        value += g[stride * i + C + c] * g[stride * j + C + c] - g[stride * i + c] * g[stride * j + c];
      G(i + 1, j + 1) = G(j + 1, i + 1) = value;
    }
  const Eigen::SelfAdjointEigenSolver<Matrix> svd(G);
  if (svd.info() != Eigen::Success) return poles;
  const Vector& sigma2 = svd.eigenvalues();  // ascending
  const double top = sigma2(K - 1);
  if (!(top > 0.0)) return poles;
  index_t rank = 0;
  while (rank < K && sigma2(K - 1 - rank) > rank_tolerance * rank_tolerance * top) ++rank;
  const index_t r0 = std::min({2 * modes, rank, K, C - 1});
  if (r0 < 1) return poles;
  // W = Hk^T U (C x r0), U the r0 leading left singular vectors (largest first): its columns
  // span the controllability rows (b, A b, A^2 b, ...) whose shift by one lag is A, whatever the
  // row stride. W[1:] = W[:-1] X gives X similar to A^T.
  Matrix U(K, r0), W(C, r0);
  for (index_t j = 0; j < r0; ++j) U.col(j) = svd.eigenvectors().col(K - 1 - j);
  for (index_t c = 0; c < C; ++c) {
    const Eigen::Map<const Eigen::VectorXd, 0, Eigen::InnerStride<>> column(g.data() + c, K, Eigen::InnerStride<>(stride));
    W.row(c) = column.transpose() * U;
  }
  for (index_t r = r0; r >= 1; --r) {
    const Matrix X = W.topLeftCorner(C - 1, r).colPivHouseholderQr().solve(W.block(1, 0, C - 1, r));
    const Eigen::EigenSolver<Matrix> eig(X, false);
    if (eig.info() != Eigen::Success) continue;
    poles.clear();
    for (index_t j = 0; j < r; ++j) {
      const HyenaComplex lambda = eig.eigenvalues()(j);
      if (lambda.imag() < 0.0) continue;  // the conjugate of a kept mode
      poles.push_back(lambda);
    }
    if (static_cast<index_t>(poles.size()) <= modes) break;
    poles.clear();
  }
  for (auto& lambda : poles) {
    double modulus = std::abs(lambda);
    if (modulus > 1.0) lambda = 1.0 / std::conj(lambda), modulus = 1.0 / modulus;
    if (modulus > max_modulus) lambda *= max_modulus / modulus;
  }
  return poles;
}

// Residues by least squares of g[s-1] = h[s], s = 1..M, on Re(R_k lambda_k^s); the tap-0
// feedthrough and the relative error over all taps.
template <class Tag>
HyenaModalFit hyena_fit_channel(const std::vector<double>& h, double skip, index_t modes, index_t hankel_rows,
                                double max_modulus, double rank_tolerance = 1e-7) {
  using Matrix = deferred_t<Eigen::MatrixXd, Tag>;
  using Vector = deferred_t<Eigen::VectorXd, Tag>;
  HyenaModalFit fit;
  const index_t L = static_cast<index_t>(h.size()), M = L - 1;
  const std::vector<double> g(h.begin() + 1, h.end());
  fit.pole = hyena_fit_poles<Tag>(g, modes, hankel_rows, max_modulus, rank_tolerance);
  const index_t P = static_cast<index_t>(fit.pole.size());
  // Unknowns: (Re R_k, Im R_k) per complex pole, Re R_k per real pole. Basis of unknown j:
  // Re(lambda^s) or -Im(lambda^s); column j of the basis is (pole, part).
  std::vector<std::pair<index_t, int>> column;
  for (index_t k = 0; k < P; ++k) {
    column.push_back({k, 0});
    if (fit.pole[k].imag() != 0.0) column.push_back({k, 1});
  }
  const index_t Q = static_cast<index_t>(column.size());
  Vector solution = Vector::Zero(Q);
  if (Q > 0) {
    // Closed-form normal equations: with Pij = sum_s (l_i l_j)^s and Qij = sum_s (l_i conj l_j)^s,
    // sum Re.Re = Re(P+Q)/2, sum Im.Im = Re(Q-P)/2, sum Re_i.Im_j = Im(P-Q)/2.
    Matrix gram(Q, Q);
    for (index_t a = 0; a < Q; ++a)
      for (index_t b = a; b < Q; ++b) {
        const HyenaComplex li = fit.pole[column[a].first], lj = fit.pole[column[b].first];
        const HyenaComplex Ps = hyena_geometric_sum(li * lj, M), Qs = hyena_geometric_sum(li * std::conj(lj), M);
        const int pa = column[a].second, pb = column[b].second;
        double value;
        if (pa == 0 && pb == 0) value = 0.5 * (Ps.real() + Qs.real());
        else if (pa == 1 && pb == 1) value = 0.5 * (Qs.real() - Ps.real());
        else if (pa == 0) value = -0.5 * (Ps.imag() - Qs.imag());  // Re_i . (-Im_j)
        else value = -0.5 * (Ps.imag() + Qs.imag());                // (-Im_i) . Re_j = -Im(P + Q)/2 by symmetry
        gram(a, b) = gram(b, a) = value;
      }
    Vector rhs = Vector::Zero(Q);
    std::vector<HyenaComplex> power(fit.pole.begin(), fit.pole.end());
    for (index_t s = 1; s <= M; ++s) {
      for (index_t j = 0; j < Q; ++j) {
        const HyenaComplex p = power[column[j].first];
        rhs(j) += h[s] * (column[j].second == 0 ? p.real() : -p.imag());
      }
      for (index_t k = 0; k < P; ++k) power[k] *= fit.pole[k];
    }
    // Jacobi scaling, then a rank-revealing solve.
    Vector scale(Q);
    for (index_t j = 0; j < Q; ++j) scale(j) = gram(j, j) > 0.0 ? 1.0 / std::sqrt(gram(j, j)) : 0.0;
    const Matrix scaled = scale.asDiagonal() * gram * scale.asDiagonal();
    Eigen::CompleteOrthogonalDecomposition<Matrix> solver(scaled);
    solver.setThreshold(1e-13);
    solution = scale.asDiagonal() * solver.solve(scale.asDiagonal() * rhs);
  }
  fit.residue.assign(P, HyenaComplex(0.0));
  for (index_t j = 0; j < Q; ++j)
    if (column[j].second == 0) fit.residue[column[j].first].real(solution(j));
    else fit.residue[column[j].first].imag(solution(j));
  double modal0 = 0.0;
  for (const auto& R : fit.residue) modal0 += R.real();
  fit.feedthrough = h[0] + skip - modal0;
  // Relative error over the L taps (tap 0 exact).
  double err = 0.0, norm = h[0] * h[0];
  std::vector<HyenaComplex> power(fit.pole.begin(), fit.pole.end());
  for (index_t s = 1; s <= M; ++s) {
    double value = 0.0;
    for (index_t k = 0; k < P; ++k) value += (fit.residue[k] * power[k]).real(), power[k] *= fit.pole[k];
    err += (h[s] - value) * (h[s] - value), norm += h[s] * h[s];
  }
  fit.error = norm > 0.0 ? std::sqrt(err / norm) : 0.0;
  return fit;
}

}  // namespace detail

/// Distills each order's filter h [N,L,D] (and skip [N,D], optional) into M = options.order
/// complex modes per channel (method in the header comment): the system ssm_step runs per order
/// (A_bar = pole, B_bar = C = gain, skip = feedthrough) and, optionally, each channel's relative
/// fit error. Validates first (ShapeError before any write): shapes, 1 <= order <= L/2, finite
/// filter and skip, max_pole_modulus in (0, 1). Cost per channel O(L K M + K^3) with K the
/// Hankel rows; threaded over channels through `executor`. A template with nothing to choose
/// (`Deferred` stays `void`): the eigensolvers it uses then compile only where it is called.
template <class Deferred = void>
void hyena_distill(const ConstView<float, 3>& filter, const ConstView<float, 2>& skip,
                          const HyenaDistillOutputs& out, const HyenaDistillOptions& options = {},
                          const Executor& executor = serial_executor()) {
  const ArgCheck check("hyena_distill");
  check.shape("filter", filter, {-1, -1, -1}, "N,L,D");
  const index_t N = filter.size(0), L = filter.size(1), D = filter.size(2), M = options.order;
  if (N < 1 || L < 1) check.fail("filter", "must hold at least one order and one tap, got shape " + shape_to_string(filter.shape()));
  if (M < 1 || 2 * M > L)
    check.fail("options.order", "must be in [1, L/2] = [1, " + std::to_string(L / 2) + "] for filters of L = " +
                                    std::to_string(L) + " taps, got " + std::to_string(M));
  if (!(options.max_pole_modulus > 0.0 && options.max_pole_modulus < 1.0))
    check.fail("options.max_pole_modulus", "must be in (0, 1), got " + std::to_string(options.max_pole_modulus));
  if (options.hankel_rows < 0) check.fail("options.hankel_rows", "must be >= 0, got " + std::to_string(options.hankel_rows));
  check.optional_shape("skip", skip, {N, D}, "N,D");
  for (const auto& view : {std::make_pair("pole_real", out.pole_real), std::make_pair("pole_imag", out.pole_imag),
                           std::make_pair("gain_real", out.gain_real), std::make_pair("gain_imag", out.gain_imag)})
    check.shape(view.first, view.second, {N, D, M}, "N,D,M");
  check.shape("feedthrough", out.feedthrough, {N, D}, "N,D").optional_shape("fit_error", out.fit_error, {N, D}, "N,D");
  detail::hyena_check_finite(check, filter, skip);
  const std::pair<const char*, TensorView<float, 3>> planes[] = {
      {"pole_real", out.pole_real}, {"pole_imag", out.pole_imag}, {"gain_real", out.gain_real}, {"gain_imag", out.gain_imag}};
  for (const auto& plane : planes) {
    check.no_overlap(plane.first, plane.second, "filter", filter).no_overlap(plane.first, plane.second, "skip", skip);
    check.no_overlap(plane.first, plane.second, "feedthrough", out.feedthrough)
        .no_overlap(plane.first, plane.second, "fit_error", out.fit_error);
    for (const auto& other : planes)
      if (other.first != plane.first) check.no_overlap(plane.first, plane.second, other.first, other.second);
  }
  check.no_overlap("feedthrough", out.feedthrough, "filter", filter).no_overlap("feedthrough", out.feedthrough, "skip", skip);
  check.no_overlap("fit_error", out.fit_error, "filter", filter).no_overlap("fit_error", out.fit_error, "skip", skip);
  check.no_overlap("fit_error", out.fit_error, "feedthrough", out.feedthrough);
  parallel_for(executor, N * D, 1, [&](index_t begin, index_t end) {
    std::vector<double> h(static_cast<std::size_t>(L));
    for (index_t i = begin; i < end; ++i) {
      const index_t n = i / D, d = i % D;
      for (index_t s = 0; s < L; ++s) h[s] = filter(n, s, d);
      const auto fit = detail::hyena_fit_channel<Deferred>(h, skip.has_value() ? double(skip(n, d)) : 0.0, M,
                                                 options.hankel_rows, options.max_pole_modulus);
      for (index_t k = 0; k < M; ++k) {
        const bool used = k < static_cast<index_t>(fit.pole.size());
        const detail::HyenaComplex lambda = used ? fit.pole[k] : 0.0, gain = used ? std::sqrt(fit.residue[k]) : 0.0;
        out.pole_real(n, d, k) = static_cast<float>(lambda.real());
        out.pole_imag(n, d, k) = static_cast<float>(lambda.imag());
        out.gain_real(n, d, k) = static_cast<float>(gain.real());
        out.gain_imag(n, d, k) = static_cast<float>(gain.imag());
      }
      out.feedthrough(n, d) = static_cast<float>(fit.feedthrough);
      if (out.fit_error.has_value()) out.fit_error(n, d) = static_cast<float>(fit.error);
    }
  });
}

}  // namespace seqmix
