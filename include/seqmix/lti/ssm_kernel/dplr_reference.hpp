// ssm_kernel with a DPLR state matrix (S4, issue 16 item 2): A = Lambda - P Q^* (diagonal plus
// low rank), bilinear or ZOH discretization. This header holds the parameters, their validation, the
// HiPPO-LegS matrix and its DPLR form (LSSL / S4's normal-plus-low-rank decomposition), and the
// readable definition (seqmix::reference::ssm_dplr_kernel: A_bar materialized, powers applied one
// by one in double). The S4 algorithm (Cauchy kernel + Woodbury + inverse FFT) is in
// dplr_kernel.hpp, the recurrent decode step in dplr_step.hpp.
//
//   channel h < H of group g = h / (H / G): Lambda[g] (N complex, Re < 0), P[g], Q[g] ([r,N] complex),
//   A = diag(Lambda) - sum_j P[g,j] Q[g,j]^*,  B[h], C[h] (N complex), dt[h] > 0
//   bilinear: A_bar = (I - dt/2 A)^-1 (I + dt/2 A),  B_bar = (I - dt/2 A)^-1 dt B
//   ZOH:      A_bar = exp(dt A),  B_bar = int_0^dt exp(s A) ds B  (= A^-1 (exp(dt A) - I) B)
//   kernel[l,h] = Re( C A_bar^l B_bar ),   x_t = A_bar x_{t-1} + B_bar u_t,  y_t = Re(C x_t)
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <string>
#include <vector>

#include <Eigen/Eigenvalues>
#include <unsupported/Eigen/MatrixFunctions>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"

namespace seqmix {

/// Continuous parameters of H systems with a DPLR state matrix A = diag(Lambda) - P Q^*. Lambda,
/// P and Q are shared by the H / G channels of a group (G = 1: one A for all channels, G = H: one
/// per channel); channel h belongs to group h / (H / G). Complex values are two planes; an empty
/// imaginary plane means zero. An empty Q means Q = P (S4's form, always dissipative).
struct SsmDplrParams {
  ConstView<float, 2> Lambda_real;       ///< [G,N], must be < 0
  ConstView<float, 2> Lambda_imag = {};  ///< [G,N], optional
  ConstView<float, 3> P_real;            ///< [G,r,N], rank r in 1..4
  ConstView<float, 3> P_imag = {};       ///< [G,r,N], optional
  ConstView<float, 3> Q_real = {};       ///< [G,r,N], optional (empty: Q = P)
  ConstView<float, 3> Q_imag = {};       ///< [G,r,N], optional (only with Q_real)
  ConstView<float, 2> B_real;            ///< [H,N]
  ConstView<float, 2> B_imag = {};       ///< [H,N], optional
  ConstView<float, 2> C_real;            ///< [H,N]
  ConstView<float, 2> C_imag = {};       ///< [H,N], optional
  ConstView<float, 1> dt;                ///< [H], > 0
};

/// The HiPPO-LegS system of size N in double, dense and in DPLR form (LSSL, S4):
/// A[n,k] = -sqrt((2n+1)(2k+1)) for n > k, -(n+1) for n = k, 0 for n < k; B[n] = sqrt(2n+1).
/// A + P P^T (P[n] = sqrt(n + 1/2)) is normal (-1/2 I plus a skew-symmetric matrix) with unitary
/// eigenvectors V: A = V (diag(Lambda) - Pt Pt^*) V^*, Pt = V^* P, Bt = V^* B.
struct HippoLegs {
  index_t N = 0;                                ///< state size
  std::vector<double> A;                        ///< [N*N] row-major, the dense matrix
  std::vector<double> B;                        ///< [N]
  std::vector<double> P;                        ///< [N], the low-rank factor in the original basis
  std::vector<std::complex<double>> Lambda;     ///< [N], eigenvalues -1/2 + i omega
  std::vector<std::complex<double>> V;          ///< [N*N] row-major, unitary, columns are eigenvectors
  std::vector<std::complex<double>> P_tilde;    ///< [N], V^* P
  std::vector<std::complex<double>> B_tilde;    ///< [N], V^* B
};

/// Builds HippoLegs for N >= 1 (the eigenvectors from Eigen's Hermitian solver on i (A + P P^T + I/2)).
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
HippoLegs hippo_legs(index_t N) {
  using Matrix = deferred_t<Eigen::MatrixXcd, Deferred>;
  const ArgCheck check("hippo_legs");
  check.that(N >= 1 && N <= 4096, "N", "must be in [1, 4096], got " + std::to_string(N));
  HippoLegs h;
  h.N = N;
  const auto n2 = static_cast<std::size_t>(N * N);
  h.A.assign(n2, 0.0), h.B.resize(N), h.P.resize(N);
  for (index_t n = 0; n < N; ++n) {
    h.B[n] = std::sqrt(2.0 * n + 1.0), h.P[n] = std::sqrt(n + 0.5);
    for (index_t k = 0; k <= n; ++k)
      h.A[n * N + k] = n == k ? -(n + 1.0) : -std::sqrt((2.0 * n + 1.0) * (2.0 * k + 1.0));
  }
  // S = A + P P^T + I/2 is skew-symmetric; i S is Hermitian with real eigenvalues mu and
  // orthonormal eigenvectors, and S's eigenvalues are -i mu.
  Matrix hermitian(N, N);
  for (index_t n = 0; n < N; ++n)
    for (index_t k = 0; k < N; ++k) {
      const double s = h.A[n * N + k] + h.P[n] * h.P[k] + (n == k ? 0.5 : 0.0);
      hermitian(n, k) = std::complex<double>(0.0, s);
    }
  const Eigen::SelfAdjointEigenSolver<Matrix> solver(hermitian);
  h.Lambda.resize(N), h.V.resize(n2), h.P_tilde.assign(N, 0.0), h.B_tilde.assign(N, 0.0);
  for (index_t j = 0; j < N; ++j) {
    h.Lambda[j] = std::complex<double>(-0.5, -solver.eigenvalues()(j));
    for (index_t n = 0; n < N; ++n) {
      const std::complex<double> v = solver.eigenvectors()(n, j);
      h.V[n * N + j] = v;
      h.P_tilde[j] += std::conj(v) * h.P[n];
      h.B_tilde[j] += std::conj(v) * h.B[n];
    }
  }
  return h;
}

/// Fills S4's HiPPO-LegS initialization in DPLR form: Lambda [G,N], P [G,1,N] (rank 1, Q = P)
/// and B [H,N] from hippo_legs(N), the same in every group and channel. Imaginary planes may be
/// empty only if N = 1 (all values real). C is the caller's (S4 draws it at random).
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
void ssm_init_hippo_legs(const TensorView<float, 2>& Lambda_real, const TensorView<float, 2>& Lambda_imag,
                                const TensorView<float, 3>& P_real, const TensorView<float, 3>& P_imag,
                                const TensorView<float, 2>& B_real, const TensorView<float, 2>& B_imag) {
  const ArgCheck check("ssm_init_hippo_legs");
  check.shape("Lambda_real", Lambda_real, {-1, -1}, "G,N");
  const index_t G = Lambda_real.size(0), N = Lambda_real.size(1);
  check.that(N >= 1, "Lambda_real", "must have N >= 1 states");
  check.shape("B_real", B_real, {-1, N}, "H,N");
  const index_t H = B_real.size(0);
  const bool need_imag = N > 1;
  if (need_imag)
    check.shape("Lambda_imag", Lambda_imag, {G, N}, "G,N")
        .shape("P_imag", P_imag, {G, 1, N}, "G,1,N")
        .shape("B_imag", B_imag, {H, N}, "H,N");
  else
    check.optional_shape("Lambda_imag", Lambda_imag, {G, N}, "G,N")
        .optional_shape("P_imag", P_imag, {G, 1, N}, "G,1,N")
        .optional_shape("B_imag", B_imag, {H, N}, "H,N");
  check.shape("P_real", P_real, {G, 1, N}, "G,1,N");
  const HippoLegs hippo = hippo_legs<Deferred>(N);
  for (index_t g = 0; g < G; ++g)
    for (index_t n = 0; n < N; ++n) {
      Lambda_real(g, n) = static_cast<float>(hippo.Lambda[n].real());
      P_real(g, 0, n) = static_cast<float>(hippo.P_tilde[n].real());
      if (Lambda_imag.has_value()) Lambda_imag(g, n) = static_cast<float>(hippo.Lambda[n].imag());
      if (P_imag.has_value()) P_imag(g, 0, n) = static_cast<float>(hippo.P_tilde[n].imag());
    }
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      B_real(h, n) = static_cast<float>(hippo.B_tilde[n].real());
      if (B_imag.has_value()) B_imag(h, n) = static_cast<float>(hippo.B_tilde[n].imag());
    }
}

namespace detail {

// Largest rank of the low-rank term (the Woodbury systems are r x r, solved on the stack).
constexpr index_t kSsmDplrMaxRank = 4;

struct SsmDplrDims {
  index_t H, N, G, r;
};

inline SsmComplex ssm_dplr_value3(const ConstView<float, 3>& re, const ConstView<float, 3>& im, index_t g, index_t j,
                                  index_t n) {
  return {double(re(g, j, n)), im.has_value() ? double(im(g, j, n)) : 0.0};
}

inline void ssm_dplr_check_finite3(const ArgCheck& check, const char* name, const ConstView<float, 3>& v) {
  for (index_t g = 0; g < v.size(0); ++g)
    for (index_t j = 0; j < v.size(1); ++j)
      for (index_t n = 0; n < v.size(2); ++n)
        if (!std::isfinite(v(g, j, n)))
          check.fail(name, "must be finite, element [" + std::to_string(g) + ", " + std::to_string(j) + ", " +
                               std::to_string(n) + "] is " + std::to_string(v(g, j, n)));
}

// The DPLR system of one group in double: Lambda [N], P and Q [r][N] (Q = P when not given).
struct SsmDplrGroup {
  index_t N = 0, r = 0;
  std::vector<SsmComplex> Lambda, P, Q;  // P, Q: [j * N + n]

  SsmComplex A(index_t n, index_t k) const {  // diag(Lambda) - P Q^*
    SsmComplex a = n == k ? Lambda[n] : SsmComplex(0.0);
    for (index_t j = 0; j < r; ++j) a -= P[j * N + n] * std::conj(Q[j * N + k]);
    return a;
  }
};

inline SsmDplrGroup ssm_dplr_group(const SsmDplrParams& p, index_t g) {
  SsmDplrGroup s;
  s.N = p.Lambda_real.size(1), s.r = p.P_real.size(1);
  s.Lambda.resize(s.N), s.P.resize(s.N * s.r), s.Q.resize(s.N * s.r);
  for (index_t n = 0; n < s.N; ++n) s.Lambda[n] = ssm_value(p.Lambda_real, p.Lambda_imag, g, n);
  for (index_t j = 0; j < s.r; ++j)
    for (index_t n = 0; n < s.N; ++n) {
      s.P[j * s.N + n] = ssm_dplr_value3(p.P_real, p.P_imag, g, j, n);
      s.Q[j * s.N + n] = p.Q_real.has_value() ? ssm_dplr_value3(p.Q_real, p.Q_imag, g, j, n) : s.P[j * s.N + n];
    }
  return s;
}

// Cholesky of -(A + A^*) in double: true if it is positive definite (A dissipative).
inline bool ssm_dplr_dissipative(const SsmDplrGroup& s) {
  const index_t N = s.N;
  std::vector<SsmComplex> m(static_cast<std::size_t>(N * N));
  for (index_t n = 0; n < N; ++n)
    for (index_t k = 0; k < N; ++k) m[n * N + k] = -(s.A(n, k) + std::conj(s.A(k, n)));
  for (index_t k = 0; k < N; ++k) {
    double d = m[k * N + k].real();
    for (index_t j = 0; j < k; ++j) d -= std::norm(m[k * N + j]);
    if (!(d > 0.0)) return false;
    const double root = std::sqrt(d);
    m[k * N + k] = root;
    for (index_t i = k + 1; i < N; ++i) {
      SsmComplex v = m[i * N + k];
      for (index_t j = 0; j < k; ++j) v -= m[i * N + j] * std::conj(m[k * N + j]);
      m[i * N + k] = v / root;
    }
  }
  return true;
}

// Validates the parameters: options (no conjugate pairs), shapes, finiteness,
// Re(Lambda) < 0, dt > 0 and, with an explicit Q, A dissipative (A + A^* negative definite:
// A_bar is then a contraction and the kernel decays). `dissipativity` = false skips that O(G N^3)
// check (the decode step).
inline SsmDplrDims validate_ssm_dplr_params(const ArgCheck& check, const SsmDplrParams& p,
                                            const SsmKernelOptions& options, bool dissipativity = true) {
  check.enum_value("options.discretization", options.discretization, 2)
      .enum_value("options.symmetry", options.symmetry, 2);
  check.that(options.symmetry == SsmStateSymmetry::none, "options.symmetry",
             "must be none for a DPLR A: the low-rank term couples a state with its conjugate, so "
             "the N states are all given (hippo_legs keeps all N eigenvalues)");
  check.shape("Lambda_real", p.Lambda_real, {-1, -1}, "G,N");
  const index_t G = p.Lambda_real.size(0), N = p.Lambda_real.size(1);
  check.that(G >= 1 && N >= 1, "Lambda_real", "must have G >= 1 groups and N >= 1 states");
  check.optional_shape("Lambda_imag", p.Lambda_imag, {G, N}, "G,N");
  check.shape("P_real", p.P_real, {G, -1, N}, "G,r,N");
  const index_t r = p.P_real.size(1);
  check.that(r >= 1 && r <= kSsmDplrMaxRank, "P_real",
             "must have rank r in [1, " + std::to_string(kSsmDplrMaxRank) + "], got " + std::to_string(r));
  check.optional_shape("P_imag", p.P_imag, {G, r, N}, "G,r,N");
  check.optional_shape("Q_real", p.Q_real, {G, r, N}, "G,r,N");
  if (!p.Q_real.has_value())
    check.that(!p.Q_imag.has_value(), "Q_imag", "is given without Q_real (an empty Q means Q = P)");
  check.optional_shape("Q_imag", p.Q_imag, {G, r, N}, "G,r,N");
  check.shape("B_real", p.B_real, {-1, N}, "H,N");
  const index_t H = p.B_real.size(0);
  check.divides(G, H, "Lambda_real", "groups");
  check.optional_shape("B_imag", p.B_imag, {H, N}, "H,N");
  check.shape("C_real", p.C_real, {H, N}, "H,N");
  check.optional_shape("C_imag", p.C_imag, {H, N}, "H,N");
  check.shape("dt", p.dt, {H}, "H");
  const std::pair<const char*, ConstView<float, 2>> planes[] = {
      {"Lambda_real", p.Lambda_real}, {"Lambda_imag", p.Lambda_imag}, {"B_real", p.B_real},
      {"B_imag", p.B_imag},           {"C_real", p.C_real},           {"C_imag", p.C_imag}};
  for (const auto& plane : planes)
    if (plane.second.has_value()) ssm_check_finite(check, plane.first, plane.second);
  const std::pair<const char*, ConstView<float, 3>> factors[] = {
      {"P_real", p.P_real}, {"P_imag", p.P_imag}, {"Q_real", p.Q_real}, {"Q_imag", p.Q_imag}};
  for (const auto& factor : factors)
    if (factor.second.has_value()) ssm_dplr_check_finite3(check, factor.first, factor.second);
  for (index_t g = 0; g < G; ++g)
    for (index_t n = 0; n < N; ++n)
      if (!(p.Lambda_real(g, n) < 0.f))
        check.fail("Lambda_real", "must be < 0 (a stable system: Re(lambda) < 0), element [" + std::to_string(g) +
                                      ", " + std::to_string(n) + "] is " + std::to_string(p.Lambda_real(g, n)));
  for (index_t h = 0; h < H; ++h)
    if (!(p.dt(h) > 0.f) || !std::isfinite(p.dt(h)))
      check.fail("dt", "must be finite and > 0, element [" + std::to_string(h) + "] is " + std::to_string(p.dt(h)));
  if (dissipativity && p.Q_real.has_value())
    for (index_t g = 0; g < G; ++g)
      if (!ssm_dplr_dissipative(ssm_dplr_group(p, g)))
        check.fail("Q_real", "group " + std::to_string(g) +
                                 ": A = Lambda - P Q^* must be dissipative (A + A^* negative definite), which "
                                 "keeps A_bar a contraction; Q = P (an empty Q) always is");
  return {H, N, G, r};
}

// The kernel output: [L,H], overlapping no parameter.
inline void validate_ssm_dplr_output(const ArgCheck& check, const SsmDplrParams& p, const TensorView<float, 2>& kernel,
                                     index_t H) {
  check.shape("kernel", kernel, {-1, H}, "L,H");
  const std::pair<const char*, ConstView<float, 2>> planes[] = {
      {"Lambda_real", p.Lambda_real}, {"Lambda_imag", p.Lambda_imag}, {"B_real", p.B_real},
      {"B_imag", p.B_imag},           {"C_real", p.C_real},           {"C_imag", p.C_imag}};
  for (const auto& plane : planes)
    if (views_overlap(kernel, plane.second))
      check.fail("kernel", std::string("overlaps input '") + plane.first + "'; pass a separate buffer");
  const std::pair<const char*, ConstView<float, 3>> factors[] = {
      {"P_real", p.P_real}, {"P_imag", p.P_imag}, {"Q_real", p.Q_real}, {"Q_imag", p.Q_imag}};
  for (const auto& factor : factors)
    if (views_overlap(kernel, factor.second))
      check.fail("kernel", std::string("overlaps input '") + factor.first + "'; pass a separate buffer");
  if (views_overlap(kernel, p.dt)) check.fail("kernel", "overlaps input 'dt'; pass a separate buffer");
}

// Solves M X = Y in place for a dense n x n complex M (row-major) and `cols` right-hand sides
// Y [n][cols] by Gauss-Jordan elimination with partial pivoting. M is overwritten.
inline void ssm_dplr_solve(std::vector<SsmComplex>& M, std::vector<SsmComplex>& Y, index_t n, index_t cols) {
  for (index_t k = 0; k < n; ++k) {
    index_t pivot = k;
    for (index_t i = k + 1; i < n; ++i)
      if (std::abs(M[i * n + k]) > std::abs(M[pivot * n + k])) pivot = i;
    if (pivot != k) {
      for (index_t j = 0; j < n; ++j) std::swap(M[k * n + j], M[pivot * n + j]);
      for (index_t j = 0; j < cols; ++j) std::swap(Y[k * cols + j], Y[pivot * cols + j]);
    }
    const SsmComplex inv = 1.0 / M[k * n + k];
    for (index_t j = 0; j < n; ++j) M[k * n + j] *= inv;
    for (index_t j = 0; j < cols; ++j) Y[k * cols + j] *= inv;
    for (index_t i = 0; i < n; ++i) {
      if (i == k) continue;
      const SsmComplex f = M[i * n + k];
      if (f == SsmComplex(0.0)) continue;
      for (index_t j = 0; j < n; ++j) M[i * n + j] -= f * M[k * n + j];
      for (index_t j = 0; j < cols; ++j) Y[i * cols + j] -= f * Y[k * cols + j];
    }
  }
}

// Dense bilinear discretization of channel h: A_bar [N*N] row-major and B_bar [N], in double.
// M = I - dt/2 A is invertible: its Hermitian part is I - dt/2 (A + A^*), and for a
// non-dissipative A the solve still runs (pivoted) unless M is exactly singular.
inline void ssm_dplr_dense_discretize(const SsmDplrParams& p, const SsmDplrGroup& s, index_t h,
                                      std::vector<SsmComplex>* A_bar, std::vector<SsmComplex>* B_bar) {
  const index_t N = s.N, cols = N + 1;
  const double dt = p.dt(h);
  std::vector<SsmComplex> M(static_cast<std::size_t>(N * N)), Y(static_cast<std::size_t>(N * cols));
  for (index_t n = 0; n < N; ++n) {
    for (index_t k = 0; k < N; ++k) {
      const SsmComplex a = s.A(n, k), identity = n == k ? 1.0 : 0.0;
      M[n * N + k] = identity - dt / 2.0 * a;
      Y[n * cols + k] = identity + dt / 2.0 * a;
    }
    Y[n * cols + N] = dt * ssm_value(p.B_real, p.B_imag, h, n);
  }
  ssm_dplr_solve(M, Y, N, cols);
  A_bar->resize(static_cast<std::size_t>(N * N)), B_bar->resize(N);
  for (index_t n = 0; n < N; ++n) {
    for (index_t k = 0; k < N; ++k) (*A_bar)[n * N + k] = Y[n * cols + k];
    (*B_bar)[n] = Y[n * cols + N];
  }
}

// Dense ZOH discretization of channel h: A_bar = exp(dt A) and B_bar = int_0^dt exp(s A) ds B,
// both read off one matrix exponential of the (N+1) x (N+1) block matrix dt [[A, B], [0, 0]]
// (Van Loan: its top-right column is the integral), so a singular A needs no special case. The
// exponential is Eigen's MatrixFunctions (Higham's scaling and squaring with Pade approximants
// up to degree 13, in double): about (6 + s) complex (N+1)^3 products, s = log2 of the block's
// norm over 5.4. A = Lambda - P Q^* is not diagonal (and, for HiPPO, far from normal), so no
// per-state closed form exists, and exp(dt A) has no DPLR structure to keep. (A template through
// deferred_t so that the matrix exponential compiles only where a caller needs it.)
template <class Tag>
void ssm_dplr_zoh_discretize(const SsmDplrParams& p, const SsmDplrGroup& s, index_t h,
                             std::vector<SsmComplex>* A_bar, std::vector<SsmComplex>* B_bar) {
  using Matrix = deferred_t<Eigen::MatrixXcd, Tag>;
  const index_t N = s.N;
  const double dt = p.dt(h);
  Matrix block = Matrix::Zero(N + 1, N + 1);
  for (index_t n = 0; n < N; ++n) {
    for (index_t k = 0; k < N; ++k) block(n, k) = dt * s.A(n, k);
    block(n, N) = dt * ssm_value(p.B_real, p.B_imag, h, n);
  }
  const Matrix exponential = block.exp();
  A_bar->resize(static_cast<std::size_t>(N * N)), B_bar->resize(N);
  for (index_t n = 0; n < N; ++n) {
    for (index_t k = 0; k < N; ++k) (*A_bar)[n * N + k] = exponential(n, k);
    (*B_bar)[n] = exponential(n, N);
  }
}

// The dense discrete system of channel h under `options` (A_bar [N*N] row-major, B_bar [N]).
template <class Tag>
void ssm_dplr_discretize(const SsmDplrParams& p, const SsmDplrGroup& s, index_t h, const SsmKernelOptions& options,
                         std::vector<SsmComplex>* A_bar, std::vector<SsmComplex>* B_bar) {
  if (options.discretization == SsmDiscretization::zoh)
    ssm_dplr_zoh_discretize<Tag>(p, s, h, A_bar, B_bar);
  else
    ssm_dplr_dense_discretize(p, s, h, A_bar, B_bar);
}

}  // namespace detail

namespace reference {

/// kernel [L,H] of a DPLR system: the definition. Per channel, A_bar and B_bar are materialized
/// (dense N x N in double: Gauss-Jordan for bilinear, a matrix exponential for ZOH) and v = A_bar^l B_bar is advanced one matrix-vector
/// product at a time: kernel[l,h] = Re(C v). O(N^3 + L N^2) per channel, single-threaded;
/// `executor` is accepted for a uniform signature. Validates like ssm_dplr_kernel.
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
void ssm_dplr_kernel(const SsmDplrParams& params, const TensorView<float, 2>& kernel,
                            const SsmKernelOptions& options = {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                            const Executor& executor = serial_executor()) {
  (void)executor;
  const ArgCheck check("reference::ssm_dplr_kernel");
  const auto dims = detail::validate_ssm_dplr_params(check, params, options);
  detail::validate_ssm_dplr_output(check, params, kernel, dims.H);
  const index_t N = dims.N, per_group = dims.H / dims.G;
  std::vector<detail::SsmComplex> A_bar, v, next(N);
  for (index_t h = 0; h < dims.H; ++h) {
    const detail::SsmDplrGroup s = detail::ssm_dplr_group(params, h / per_group);
    detail::ssm_dplr_discretize<Deferred>(params, s, h, options, &A_bar, &v);
    for (index_t l = 0; l < kernel.size(0); ++l) {
      detail::SsmComplex y = 0.0;
      for (index_t n = 0; n < N; ++n) y += detail::ssm_value(params.C_real, params.C_imag, h, n) * v[n];
      kernel(l, h) = static_cast<float>(y.real());
      for (index_t n = 0; n < N; ++n) {
        detail::SsmComplex sum = 0.0;
        for (index_t k = 0; k < N; ++k) sum += A_bar[n * N + k] * v[k];
        next[n] = sum;
      }
      v.swap(next);
    }
  }
}

}  // namespace reference
}  // namespace seqmix
