// ssm_dplr_kernel: S4's kernel generation for a DPLR state matrix A = Lambda - P Q^*, bilinear.
//
// The truncated generating function of the kernel, sum_{l<L} K_l z^l = C (I - A_bar^L z^L)
// (I - A_bar z)^-1 B_bar, evaluated at the L roots of unity z_k = exp(-2 pi i k / L) (z^L = 1) is
// the DFT of the kernel. With C~ = C (I - A_bar^L) and the bilinear A_bar, B_bar:
//
//   K^(z) = C~ (I - A_bar z)^-1 B_bar = 2/(1+z) C~ (g(z) - A)^-1 B,   g(z) = (2/dt) (1-z)/(1+z)
//
// and, A = Lambda - P Q^* with R = (g - Lambda)^-1 diagonal, Woodbury's identity gives
//
//   C~ (g - A)^-1 B = k00 - k01 (I + k11)^-1 k10,
//   k00 = C~ R B, k01 = C~ R P, k10 = Q^* R B, k11 = Q^* R P (r x r),
//
// each a Cauchy sum sum_n a_n b_n / (g - lambda_n). At z = -1 (L even, k = L/2) g is infinite and
// the limit is K^ = dt/2 C~ B. The inverse DFT of K^ is the complex kernel; its real part is K.
//
// All of it in double per channel: the dense A_bar from the DPLR structure (O(N^2 r)), C A_bar^L
// by repeated squaring of it (Eigen, O(N^3 log L)), the Cauchy sums for the L frequencies
// (O(L N (r+1)^2), the rank a template parameter), one inverse FFT of length L (Eigen's kissfft,
// any length: mixed radix). Channels in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include <Eigen/Core>
#include <unsupported/Eigen/FFT>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/dplr_reference.hpp"

namespace seqmix {
namespace detail {

// States summed side by side (independent partial sums the compiler can keep in SIMD registers).
constexpr index_t kSsmDplrLanes = 8;

// C A_bar^L (row vector times matrix power) by binary powering of the dense A_bar.
inline std::vector<SsmComplex> ssm_dplr_c_power(const std::vector<SsmComplex>& A_bar, const SsmDplrParams& p, index_t h,
                                                index_t N, index_t L) {
  using Matrix = Eigen::Matrix<SsmComplex, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Matrix power = Eigen::Map<const Matrix>(A_bar.data(), N, N);
  Eigen::Matrix<SsmComplex, 1, Eigen::Dynamic> row(N), next(N);
  for (index_t n = 0; n < N; ++n) row(n) = ssm_value(p.C_real, p.C_imag, h, n);
  Matrix square(N, N);
  for (index_t e = L; e > 0; e >>= 1) {
    if (e & 1) {
      next.noalias() = row * power;
      row = next;
    }
    if (e > 1) {
      square.noalias() = power * power;
      power.swap(square);
    }
  }
  return {row.data(), row.data() + N};
}

// The dense bilinear A_bar and B_bar of channel h from the DPLR structure in O(N^2 r) (the
// reference's Gauss-Jordan is O(N^3)): with D = (I - dt/2 Lambda)^-1 and the r x r
// S = (2/dt I + Q^* D P)^-1, Woodbury gives M^-1 = (I - dt/2 A)^-1 = D - U W with U = D P S and
// W = Q^* D; then A_bar = M^-1 (diag(1 + dt/2 Lambda) - dt/2 P Q^*) and B_bar = dt M^-1 B.
inline void ssm_dplr_structured_discretize(const SsmDplrParams& p, const SsmDplrGroup& s, index_t h,
                                           std::vector<SsmComplex>* A_bar, std::vector<SsmComplex>* B_bar) {
  const index_t N = s.N, r = s.r;
  const double dt = p.dt(h);
  std::vector<SsmComplex> D(N), U(static_cast<std::size_t>(N * r)), W(static_cast<std::size_t>(r * N));
  std::vector<SsmComplex> S(static_cast<std::size_t>(r * r)), Sinv(static_cast<std::size_t>(r * r), 0.0);
  for (index_t n = 0; n < N; ++n) D[n] = 1.0 / (1.0 - dt / 2.0 * s.Lambda[n]);
  for (index_t i = 0; i < r; ++i) {
    S[i * r + i] = 1.0;
    for (index_t j = 0; j < r; ++j) {
      SsmComplex sum = i == j ? 2.0 / dt : 0.0;
      for (index_t n = 0; n < N; ++n) sum += std::conj(s.Q[i * N + n]) * D[n] * s.P[j * N + n];
      Sinv[i * r + j] = sum;
    }
  }
  ssm_dplr_solve(Sinv, S, r, r);  // S = Sinv^-1
  for (index_t n = 0; n < N; ++n)
    for (index_t i = 0; i < r; ++i) {
      SsmComplex sum = 0.0;
      for (index_t j = 0; j < r; ++j) sum += s.P[j * N + n] * S[j * r + i];
      U[n * r + i] = D[n] * sum;
    }
  for (index_t i = 0; i < r; ++i)
    for (index_t k = 0; k < N; ++k) W[i * N + k] = std::conj(s.Q[i * N + k]) * D[k];
  // WP = W P (r x r), WB = W B (r).
  SsmComplex WP[kSsmDplrMaxRank][kSsmDplrMaxRank] = {}, WB[kSsmDplrMaxRank] = {};
  for (index_t i = 0; i < r; ++i)
    for (index_t k = 0; k < N; ++k) {
      for (index_t j = 0; j < r; ++j) WP[i][j] += W[i * N + k] * s.P[j * N + k];
      WB[i] += W[i * N + k] * ssm_value(p.B_real, p.B_imag, h, k);
    }
  A_bar->assign(static_cast<std::size_t>(N * N), 0.0), B_bar->resize(N);
  for (index_t n = 0; n < N; ++n) {
    // MP[j] = (M^-1 P)[n, j]; row n of M^-1 is D_n e_n - U[n,:] W.
    SsmComplex MP[kSsmDplrMaxRank], bar = D[n] * ssm_value(p.B_real, p.B_imag, h, n);
    for (index_t j = 0; j < r; ++j) {
      MP[j] = D[n] * s.P[j * N + n];
      for (index_t i = 0; i < r; ++i) MP[j] -= U[n * r + i] * WP[i][j];
    }
    for (index_t i = 0; i < r; ++i) bar -= U[n * r + i] * WB[i];
    (*B_bar)[n] = dt * bar;
    SsmComplex* row = A_bar->data() + n * N;
    for (index_t k = 0; k < N; ++k) {
      SsmComplex minv = n == k ? D[n] : SsmComplex(0.0), low = 0.0;
      for (index_t i = 0; i < r; ++i) minv -= U[n * r + i] * W[i * N + k];
      for (index_t j = 0; j < r; ++j) low += MP[j] * std::conj(s.Q[j * N + k]);
      row[k] = minv * (1.0 + dt / 2.0 * s.Lambda[k]) - dt / 2.0 * low;
    }
  }
}

// The Cauchy sums of all L' frequencies of one channel: sums[t] = sum_n weight[t][n] / (i omega -
// lambda_n) for the (R+1)^2 terms, R a compile-time rank so the term loop unrolls and the lanes
// vectorize.
template <index_t R>
inline void ssm_dplr_cauchy(const double* weight_re, const double* weight_im, const double* lambda_re,
                            const double* lambda_im, index_t padded, double omega, SsmComplex* sums) {
  constexpr index_t terms = (R + 1) * (R + 1);
  double acc_re[terms][kSsmDplrLanes] = {}, acc_im[terms][kSsmDplrLanes] = {};
  for (index_t n0 = 0; n0 < padded; n0 += kSsmDplrLanes) {
    double rr[kSsmDplrLanes], ri[kSsmDplrLanes];
    for (index_t q = 0; q < kSsmDplrLanes; ++q) {  // R = 1 / (i omega - lambda)
      const double dr = -lambda_re[n0 + q], di = omega - lambda_im[n0 + q];
      const double inv = 1.0 / (dr * dr + di * di);
      rr[q] = dr * inv, ri[q] = -di * inv;
    }
    for (index_t t = 0; t < terms; ++t) {
      const double* wr = weight_re + t * padded + n0;
      const double* wi = weight_im + t * padded + n0;
      for (index_t q = 0; q < kSsmDplrLanes; ++q) {
        acc_re[t][q] += wr[q] * rr[q] - wi[q] * ri[q];
        acc_im[t][q] += wr[q] * ri[q] + wi[q] * rr[q];
      }
    }
  }
  for (index_t t = 0; t < terms; ++t) {
    double re = 0.0, im = 0.0;
    for (index_t q = 0; q < kSsmDplrLanes; ++q) re += acc_re[t][q], im += acc_im[t][q];
    sums[t] = SsmComplex(re, im);
  }
}

// Per-task buffers.
struct SsmDplrScratch {
  std::vector<SsmComplex> A_bar, B_bar, spectrum, kernel;
  // Cauchy weights [term][n] (term 0: C~ B; then C~ P_j, Q_i^* B, Q_i^* P_j), real and imaginary
  // planes padded to a multiple of kSsmDplrLanes with zero weights.
  std::vector<double> weight_re, weight_im, lambda_re, lambda_im;
  Eigen::FFT<double> fft;
};

// Channel h: kernel[:, h].
inline void ssm_dplr_kernel_channel(const SsmDplrParams& p, const SsmDplrGroup& s, index_t h,
                                    const std::vector<double>& tan_half, const TensorView<float, 2>& kernel,
                                    SsmDplrScratch& w) {
  const index_t N = s.N, r = s.r, L = kernel.size(0);
  const index_t padded = (N + kSsmDplrLanes - 1) / kSsmDplrLanes * kSsmDplrLanes;
  const index_t terms = (r + 1) * (r + 1);
  const double dt = p.dt(h);
  ssm_dplr_structured_discretize(p, s, h, &w.A_bar, &w.B_bar);
  const std::vector<SsmComplex> c_power = ssm_dplr_c_power(w.A_bar, p, h, N, L);
  // Weights: a_n b_n with a in {C~, Q_i^*} and b in {B, P_j}; term index (1 + i) * (r + 1) + (1 + j)
  // with i = -1 for C~ and j = -1 for B.
  w.weight_re.assign(static_cast<std::size_t>(terms * padded), 0.0);
  w.weight_im.assign(static_cast<std::size_t>(terms * padded), 0.0);
  w.lambda_re.assign(static_cast<std::size_t>(padded), -1.0);
  w.lambda_im.assign(static_cast<std::size_t>(padded), 0.0);
  SsmComplex c_tilde_b = 0.0;
  for (index_t n = 0; n < N; ++n) {
    const SsmComplex c_tilde = ssm_value(p.C_real, p.C_imag, h, n) - c_power[n];
    const SsmComplex b = ssm_value(p.B_real, p.B_imag, h, n);
    c_tilde_b += c_tilde * b;
    w.lambda_re[n] = s.Lambda[n].real(), w.lambda_im[n] = s.Lambda[n].imag();
    for (index_t i = -1; i < r; ++i)
      for (index_t j = -1; j < r; ++j) {
        const SsmComplex a = i < 0 ? c_tilde : std::conj(s.Q[i * N + n]);
        const SsmComplex v = a * (j < 0 ? b : s.P[j * N + n]);
        const std::size_t at = static_cast<std::size_t>(((1 + i) * (r + 1) + (1 + j)) * padded + n);
        w.weight_re[at] = v.real(), w.weight_im[at] = v.imag();
      }
  }
  w.spectrum.resize(L), w.kernel.resize(L);
  const double two_over_dt = 2.0 / dt;
  for (index_t k = 0; k < L; ++k) {
    if (2 * k == L) {  // z = -1: the limit dt/2 C~ B
      w.spectrum[k] = dt / 2.0 * c_tilde_b;
      continue;
    }
    // z = exp(-2 pi i k/L): g = (2/dt)(1-z)/(1+z) = i (2/dt) tan(pi k/L).
    const double omega = two_over_dt * tan_half[k];
    SsmComplex sums[(kSsmDplrMaxRank + 1) * (kSsmDplrMaxRank + 1)];
    const double *wr = w.weight_re.data(), *wi = w.weight_im.data(), *lr = w.lambda_re.data(), *li = w.lambda_im.data();
    switch (r) {
      case 1: ssm_dplr_cauchy<1>(wr, wi, lr, li, padded, omega, sums); break;
      case 2: ssm_dplr_cauchy<2>(wr, wi, lr, li, padded, omega, sums); break;
      case 3: ssm_dplr_cauchy<3>(wr, wi, lr, li, padded, omega, sums); break;
      default: ssm_dplr_cauchy<4>(wr, wi, lr, li, padded, omega, sums); break;
    }
    // Woodbury: k00 - k01 (I + k11)^-1 k10; (I + k11) x = k10 solved by Gauss-Jordan (r <= 4).
    SsmComplex value = sums[0];
    if (r > 0) {
      SsmComplex m[kSsmDplrMaxRank][kSsmDplrMaxRank + 1];
      for (index_t i = 0; i < r; ++i) {
        for (index_t j = 0; j < r; ++j) m[i][j] = sums[(1 + i) * (r + 1) + (1 + j)] + (i == j ? 1.0 : 0.0);
        m[i][r] = sums[(1 + i) * (r + 1)];
      }
      for (index_t c = 0; c < r; ++c) {
        index_t pivot = c;
        for (index_t i = c + 1; i < r; ++i)
          if (std::norm(m[i][c]) > std::norm(m[pivot][c])) pivot = i;
        for (index_t j = 0; j <= r; ++j) std::swap(m[c][j], m[pivot][j]);
        const SsmComplex inv = std::conj(m[c][c]) / std::norm(m[c][c]);  // no library complex division
        for (index_t j = c; j <= r; ++j) m[c][j] *= inv;
        for (index_t i = 0; i < r; ++i)
          if (i != c) {
            const SsmComplex f = m[i][c];
            for (index_t j = c; j <= r; ++j) m[i][j] -= f * m[c][j];
          }
      }
      for (index_t j = 0; j < r; ++j) value -= sums[1 + j] * m[j][r];
    }
    // 2/(1+z) with z = exp(-2 pi i k/L) is exp(i pi k/L) / cos(pi k/L) = 1 + i tan(pi k/L).
    w.spectrum[k] = SsmComplex(1.0, tan_half[k]) * value;
  }
  if (L == 1)
    w.kernel[0] = w.spectrum[0];
  else
    w.fft.inv(w.kernel.data(), w.spectrum.data(), L);
  for (index_t l = 0; l < L; ++l) kernel(l, h) = static_cast<float>(w.kernel[l].real());
}

}  // namespace detail

/// Kernel [L,H] of a DPLR system (S4): the generating function at the L roots of unity by Cauchy
/// sums with the Woodbury correction, then an inverse FFT of length L. Same result as
/// reference::ssm_dplr_kernel up to double rounding (stored as float). Bilinear only (ZOH and
/// conjugate pairs are refused with a ShapeError); validates shapes, non-finite values,
/// Re(Lambda) >= 0, dt <= 0 and, with an explicit Q, a non-dissipative A, before any write.
/// Cost per channel O(N^2 r + N^3 log L + L N (r+1)^2 + L log L), channels in parallel.
inline void ssm_dplr_kernel(const SsmDplrParams& params, const TensorView<float, 2>& kernel,
                            const SsmKernelOptions& options = {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                            const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_dplr_kernel");
  const auto dims = detail::validate_ssm_dplr_params(check, params, options);
  detail::validate_ssm_dplr_output(check, params, kernel, dims.H);
  const index_t L = kernel.size(0);
  if (L == 0 || dims.H == 0) return;
  // tan(pi k / L): g(z_k) = i (2/dt) tan(pi k/L); k = L/2 (z = -1) is handled apart.
  std::vector<double> tan_half(static_cast<std::size_t>(L), 0.0);
  const double pi = 3.14159265358979323846;
  for (index_t k = 0; k < L; ++k)
    if (2 * k != L) tan_half[k] = std::tan(pi * double(k) / double(L));
  const index_t per_group = dims.H / dims.G;
  parallel_for(executor, dims.H, 1, [&](index_t begin, index_t end) {
    detail::SsmDplrScratch scratch;
    for (index_t h = begin; h < end; ++h)
      detail::ssm_dplr_kernel_channel(params, detail::ssm_dplr_group(params, h / per_group), h, tan_half, kernel,
                                      scratch);
  });
}

}  // namespace seqmix
