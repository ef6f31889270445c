// matrix_scan's unitary case: orthogonal transitions built from caller parameters, so that
// h_t = A_t h_{t-1} keeps |h| to rounding (URN-style recurrences; real orthogonal, det +1).
//
// K = N (N - 1) / 2 parameters per block, theta_k for the plane pairs (p, q), p < q, in row-major
// order of the strict upper triangle: (0,1), (0,2), ..., (0,N-1), (1,2), ..., (N-2,N-1).
//   cayley  S skew-symmetric with S[q][p] = theta_k, S[p][q] = -theta_k (the generator of the
//           Givens rotation below, so for N = 2 both rotate by an angle: theta, 2 atan(theta));
//           A = (I - S)^{-1} (I + S)   (I - S is always invertible: S has imaginary eigenvalues)
//   givens  A = G_K ... G_2 G_1, G_k the rotation by theta_k in plane (p, q):
//           (G h)[p] = cos h[p] - sin h[q],  (G h)[q] = sin h[p] + cos h[q]
// Both are computed in double and rounded once to float, so A^T A = I to float rounding.
//
// The complex unitary case (unitary_transitions): a complex state z in C^N under z_t = U_t z_{t-1}
// + x_t, U_t unitary, runs through matrix_scan in its real form: h = (Re z_0..Re z_{N-1},
// Im z_0..Im z_{N-1}), a 2N-vector, and the real 2N x 2N block [[Re U, -Im U], [Im U, Re U]],
// which is orthogonal exactly when U is unitary. N^2 parameters per block define a Hermitian
// generator G: theta[j] = G[j][j] for j < N, then for each pair p < q in the order above two
// parameters (re, im) with G[p][q] = re + i im, G[q][p] = re - i im. With S = i G (skew-Hermitian)
//           U = (I - S)^{-1} (I + S)            (the complex Cayley transform; N = 1 gives the
//                                                phase e^{i phi}, phi = 2 atan(theta))
// solved in complex double and rounded once to float, so A^T A = I to float rounding again.
#pragma once

#include <cmath>
#include <complex>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How orthogonal_transitions maps parameters to an orthogonal block (header comment).
enum class OrthogonalParametrization {
  cayley,  ///< A = (I - S)^{-1} (I + S), S skew-symmetric from the K parameters
  givens,  ///< A = G_K ... G_1, one plane rotation per parameter (angle in radians)
};

/// Options of orthogonal_transitions.
struct OrthogonalOptions {
  /// Cayley transform (default) or a product of Givens rotations.
  OrthogonalParametrization parametrization = OrthogonalParametrization::cayley;
};

namespace detail {

// Solves M X = R in place for N x N row-major matrices (M in `work`, destroyed; R in `rhs`,
// overwritten by X) by Gauss-Jordan with partial pivoting: the Cayley transforms' solve, real
// (orthogonal blocks) or complex (unitary blocks).
template <class Scalar>
void gauss_jordan_solve(Scalar* work, Scalar* rhs, index_t N) {
  for (index_t col = 0; col < N; ++col) {
    index_t pivot = col;
    for (index_t r = col + 1; r < N; ++r)
      if (std::abs(work[r * N + col]) > std::abs(work[pivot * N + col])) pivot = r;
    if (pivot != col)
      for (index_t j = 0; j < N; ++j) {
        std::swap(work[col * N + j], work[pivot * N + j]);
        std::swap(rhs[col * N + j], rhs[pivot * N + j]);
      }
    const Scalar inv = Scalar(1.0) / work[col * N + col];
    for (index_t j = 0; j < N; ++j) work[col * N + j] *= inv, rhs[col * N + j] *= inv;
    for (index_t r = 0; r < N; ++r) {
      if (r == col) continue;
      const Scalar f = work[r * N + col];
      if (f == Scalar(0.0)) continue;
      for (index_t j = 0; j < N; ++j) work[r * N + j] -= f * work[col * N + j], rhs[r * N + j] -= f * rhs[col * N + j];
    }
  }
}

// One block, in double: A (row-major N x N) from theta (K values). work holds N * N doubles.
inline void orthogonal_block(const double* theta, index_t N, OrthogonalParametrization kind, double* A,
                             double* work) {
  for (index_t i = 0; i < N * N; ++i) A[i] = 0.0;
  for (index_t i = 0; i < N; ++i) A[i * N + i] = 1.0;
  if (kind == OrthogonalParametrization::givens) {
    index_t k = 0;
    for (index_t p = 0; p < N; ++p)
      for (index_t q = p + 1; q < N; ++q, ++k) {
        const double c = std::cos(theta[k]), s = std::sin(theta[k]);
        for (index_t j = 0; j < N; ++j) {  // left-multiply: rows p and q mix
          const double ap = A[p * N + j], aq = A[q * N + j];
          A[p * N + j] = c * ap - s * aq;
          A[q * N + j] = s * ap + c * aq;
        }
      }
    return;
  }
  // Cayley: solve (I - S) A = (I + S) by Gauss-Jordan with partial pivoting; M = I - S in work.
  for (index_t i = 0; i < N * N; ++i) work[i] = 0.0;
  for (index_t i = 0; i < N; ++i) work[i * N + i] = 1.0;
  index_t k = 0;
  for (index_t p = 0; p < N; ++p)
    for (index_t q = p + 1; q < N; ++q, ++k) {
      work[p * N + q] = theta[k], work[q * N + p] = -theta[k];  // I - S
      A[p * N + q] = -theta[k], A[q * N + p] = theta[k];        // I + S
    }
  gauss_jordan_solve(work, A, N);
}

// One complex block, in double: U (row-major N x N) from theta (N^2 values), the Cayley transform
// of S = i G (header comment). work holds N * N complex values.
inline void unitary_block(const double* theta, index_t N, std::complex<double>* U, std::complex<double>* work) {
  using C = std::complex<double>;
  // work = I - S, U = I + S, S = i G: S[j][j] = i theta_j, S[p][q] = i (re + i im) = -im + i re,
  // S[q][p] = i (re - i im) = im + i re.
  for (index_t i = 0; i < N * N; ++i) work[i] = U[i] = C(0.0, 0.0);
  for (index_t j = 0; j < N; ++j) {
    const C sjj(0.0, theta[j]);
    work[j * N + j] = 1.0 - sjj, U[j * N + j] = 1.0 + sjj;
  }
  index_t k = N;
  for (index_t p = 0; p < N; ++p)
    for (index_t q = p + 1; q < N; ++q, k += 2) {
      const double re = theta[k], im = theta[k + 1];
      const C spq(-im, re), sqp(im, re);
      work[p * N + q] = -spq, work[q * N + p] = -sqp;
      U[p * N + q] = spq, U[q * N + p] = sqp;
    }
  // Solve (I - S) U = (I + S) by Gauss-Jordan with partial pivoting (I - S is invertible: the
  // eigenvalues of S are imaginary).
  gauss_jordan_solve(work, U, N);
}

// Refuses a non-finite parameter, naming its index; before any write.
inline void check_finite_parameters(const ArgCheck& check, const ConstView<float, 4>& theta) {
  for (index_t b = 0; b < theta.size(0); ++b)
    for (index_t t = 0; t < theta.size(1); ++t)
      for (index_t h = 0; h < theta.size(2); ++h)
        for (index_t k = 0; k < theta.size(3); ++k)
          if (!std::isfinite(theta(b, t, h, k)))
            check.fail("theta", "must be finite, element [" + std::to_string(b) + "," + std::to_string(t) + "," +
                                    std::to_string(h) + "," + std::to_string(k) + "] is " +
                                    std::to_string(theta(b, t, h, k)));
}

}  // namespace detail

/// Orthogonal N x N blocks from parameters (definitions in the header comment):
///   theta  [B,T,H,K]    K = N (N - 1) / 2, finite
///   A      [B,T,H,N,N]  written; feeds matrix_scan (A(i, j) maps h[j] into h[i])
/// N comes from A's shape (N = 1 gives K = 0 and A = [1]). A must not overlap theta. Parallel
/// over blocks; O(N^3) per block (Cayley's solve), O(N^3) for Givens' K row rotations.
inline void orthogonal_transitions(ConstView<float, 4> theta, TensorView<float, 5> A,
                                   const OrthogonalOptions& options = {},
                                   const Executor& executor = serial_executor()) {
  const ArgCheck check("orthogonal_transitions");
  check.enum_value("options.parametrization", options.parametrization, 2);
  check.shape("A", A, {-1, -1, -1, -1, -1}, "B,T,H,N,N");
  const index_t B = A.size(0), T = A.size(1), H = A.size(2), N = A.size(3);
  if (N < 1 || A.size(4) != N)
    check.fail("A", "must hold square blocks of size N >= 1, got shape " + shape_to_string(A.shape()));
  const index_t K = N * (N - 1) / 2;
  check.shape("theta", theta, {B, T, H, K}, "B,T,H,K = N(N-1)/2");
  check.no_overlap("A", A, "theta", theta);
  detail::check_finite_parameters(check, theta);  // before any write
  parallel_for(executor, B * T * H, 256, [&](index_t r0, index_t r1) {
    std::vector<double> params(static_cast<std::size_t>(K)), block(static_cast<std::size_t>(N * N)),
        work(static_cast<std::size_t>(N * N));
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / (T * H), t = r / H % T, h = r % H;
      for (index_t k = 0; k < K; ++k) params[k] = theta(b, t, h, k);
      detail::orthogonal_block(params.data(), N, options.parametrization, block.data(), work.data());
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < N; ++j) A(b, t, h, i, j) = static_cast<float>(block[i * N + j]);
    }
  });
}

/// Complex unitary N x N blocks in matrix_scan's real form (definitions in the header comment):
///   theta  [B,T,H,N^2]      the Hermitian generator's parameters, finite
///   A      [B,T,H,2N,2N]    written: [[Re U, -Im U], [Im U, Re U]], U = (I - iG)^{-1} (I + iG)
/// A complex state z [N] is the real 2N-vector (Re z, Im z) for matrix_scan's x, h0 and outputs.
/// N comes from A's shape (2N, N >= 1). A must not overlap theta. Parallel over blocks; O(N^3)
/// complex operations per block.
inline void unitary_transitions(ConstView<float, 4> theta, TensorView<float, 5> A,
                                const Executor& executor = serial_executor()) {
  const ArgCheck check("unitary_transitions");
  check.shape("A", A, {-1, -1, -1, -1, -1}, "B,T,H,2N,2N");
  const index_t B = A.size(0), T = A.size(1), H = A.size(2), N2 = A.size(3);
  if (N2 < 2 || N2 % 2 != 0 || A.size(4) != N2)
    check.fail("A", "must hold square blocks of an even size 2N >= 2 (the real form of N x N complex blocks), got shape " +
                        shape_to_string(A.shape()));
  const index_t N = N2 / 2;
  check.shape("theta", theta, {B, T, H, N * N}, "B,T,H,N^2");
  check.no_overlap("A", A, "theta", theta);
  detail::check_finite_parameters(check, theta);  // before any write
  parallel_for(executor, B * T * H, 256, [&](index_t r0, index_t r1) {
    std::vector<double> params(static_cast<std::size_t>(N * N));
    std::vector<std::complex<double>> U(static_cast<std::size_t>(N * N)), work(static_cast<std::size_t>(N * N));
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / (T * H), t = r / H % T, h = r % H;
      for (index_t k = 0; k < N * N; ++k) params[k] = theta(b, t, h, k);
      detail::unitary_block(params.data(), N, U.data(), work.data());
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < N; ++j) {
          const float re = static_cast<float>(U[i * N + j].real()), im = static_cast<float>(U[i * N + j].imag());
          A(b, t, h, i, j) = re, A(b, t, h, i, N + j) = -im;
          A(b, t, h, N + i, j) = im, A(b, t, h, N + i, N + j) = re;
        }
    }
  });
}

}  // namespace seqmix
