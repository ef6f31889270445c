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
// In double per channel: C A_bar^L by repeated squaring, of the upper-triangular Schur form of
// A_bar when the group of channels sharing A is large (ssm_dplr_schur_c_power, O(N^3/6 log L)),
// else of the dense A_bar built from the DPLR structure (O(N^2 r), then Eigen, O(N^3 log L));
// the Cauchy sums for the L frequencies (O(L N (r+1)^2), the rank a template parameter). The inverse FFT: for a power-of-two L, blocks
// of 2 kWidth channels share one batched float transform (ssm_dplr_kernel_block); other lengths
// take Eigen's kissfft in double (mixed radix) per channel. Channels in parallel. ZOH: blocked
// powers of exp(dt A), from the group's Schur form where A is shared (see "ZOH from the group's
// Schur form" below).
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <unsupported/Eigen/FFT>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/batched_fft.hpp"
#include "seqmix/lti/ssm_kernel/dplr_reference.hpp"

namespace seqmix {
namespace detail {

// Frequencies per SIMD batch of doubles (8 with AVX-512, 2 with SSE2).
using SsmDplrBatch = simd::Batch<double>;
constexpr index_t kSsmDplrLanes = static_cast<index_t>(SsmDplrBatch::size);

// C A_bar^L (row vector times matrix power) by binary powering of the dense A_bar. (`Tag`, as
// below, only defers the complex products to the units that call ssm_dplr_kernel.)
template <class Tag>
std::vector<SsmComplex> ssm_dplr_c_power(const std::vector<SsmComplex>& A_bar, const SsmDplrParams& p, index_t h,
                                         index_t N, index_t L) {
  using Matrix = deferred_t<Eigen::Matrix<SsmComplex, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, Tag>;
  Matrix power = Eigen::Map<const Matrix>(A_bar.data(), N, N);
  deferred_t<Eigen::Matrix<SsmComplex, 1, Eigen::Dynamic>, Tag> row(N), next(N);
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

// C A_bar^L through the complex Schur form A = U T U^* (T upper triangular, U unitary) of the
// group's A, computed once per group and shared by its channels: A_bar = U T_bar U^* with the
// upper-triangular T_bar = (I - dt/2 T)^-1 (I + dt/2 T), so C A_bar^L = ((C U) T_bar^L) U^*. A
// product of upper-triangular matrices costs N^3/6 complex multiply-adds against N^3 for the
// dense squarings (Eigen's GEMM), which at N = 64 took a fifth of the bilinear generation. The
// Schur form is unitary, so the powers carry the dense form's rounding. Eigen's ComplexSchur
// costs about 30 dense squarings (8.8 ms at N = 64 on AMD EPYC Zen 5), so groups of fewer than
// kSsmDplrSchurChannels channels keep the dense squarings.
constexpr index_t kSsmDplrSchurChannels = 32;

// The group's Schur factors: U row-major [N][N]; T as real and imaginary planes [N][padded], rows
// padded with zeros to whole batches (padded = N rounded up to kSsmDplrLanes).
struct SsmDplrSchur {
  index_t N = 0, padded = 0;
  std::vector<SsmComplex> U;
  std::vector<double> T_re, T_im;
};

template <class Tag>
SsmDplrSchur ssm_dplr_schur(const SsmDplrGroup& s) {
  using Matrix = deferred_t<Eigen::MatrixXcd, Tag>;
  const index_t N = s.N, padded = (N + kSsmDplrLanes - 1) / kSsmDplrLanes * kSsmDplrLanes;
  Matrix A(N, N);
  for (index_t n = 0; n < N; ++n)
    for (index_t k = 0; k < N; ++k) A(n, k) = s.A(n, k);
  const Eigen::ComplexSchur<Matrix> schur(A);
  SsmDplrSchur f;
  f.N = N, f.padded = padded;
  f.U.resize(static_cast<std::size_t>(N * N));
  f.T_re.assign(static_cast<std::size_t>(N * padded), 0.0), f.T_im.assign(static_cast<std::size_t>(N * padded), 0.0);
  for (index_t n = 0; n < N; ++n)
    for (index_t k = 0; k < N; ++k) {
      f.U[n * N + k] = schur.matrixU()(n, k);
      if (k >= n) f.T_re[n * padded + k] = schur.matrixT()(n, k).real(), f.T_im[n * padded + k] = schur.matrixT()(n, k).imag();
    }
  return f;
}

// out[j] += sum_{k0 <= k <= j} a[k] P[k, j] for every column j < padded, P upper triangular in
// planes [N][padded] (zeros below the diagonal and in the padding): a row vector times the rows
// k0.. of P. Column batch by column batch with the sums in registers; batch c only needs the
// rows k < (c + 1) lanes. The four products of each complex term go to four sums, and even and
// odd rows to separate sets: one chain of two dependent FMAs per sum was latency-bound (an FMA's
// 4 cycles per link).
inline void ssm_dplr_upper_row(const double* a_re, const double* a_im, index_t k0, const double* P_re,
                               const double* P_im, index_t N, index_t padded, double* out_re, double* out_im) {
  using Batch = SsmDplrBatch;
  constexpr index_t W = kSsmDplrLanes;
  for (index_t c = k0 / W * W; c < padded; c += W) {
    Batch rr0(0.0), ii0(0.0), ri0(0.0), ir0(0.0), rr1(0.0), ii1(0.0), ri1(0.0), ir1(0.0);
    const auto term = [&](index_t k, Batch& rr, Batch& ii, Batch& ri, Batch& ir) {
      const Batch pr = simd::load(P_re + k * padded + c), pi = simd::load(P_im + k * padded + c);
      const Batch ar(a_re[k]), ai(a_im[k]);
      rr = simd::fma(ar, pr, rr), ii = simd::fma(ai, pi, ii), ri = simd::fma(ar, pi, ri), ir = simd::fma(ai, pr, ir);
    };
    const index_t k_end = std::min(N, c + W);
    index_t k = k0;
    for (; k + 1 < k_end; k += 2) term(k, rr0, ii0, ri0, ir0), term(k + 1, rr1, ii1, ri1, ir1);
    if (k < k_end) term(k, rr0, ii0, ri0, ir0);
    const Batch re = (rr0 + rr1) - (ii0 + ii1), im = (ri0 + ri1) + (ir0 + ir1);
    simd::store(out_re + c, simd::load(out_re + c) + re), simd::store(out_im + c, simd::load(out_im + c) + im);
  }
}

// Upper-triangular complex matrices of one size as real and imaginary planes [n][padded] (zeros
// below the diagonal and in the padding), the layout ssm_dplr_upper_row reads.
struct SsmUpperPlanes {
  index_t n = 0, padded = 0;
  std::vector<double> re, im;
  void reset(index_t n_, index_t padded_) {
    n = n_, padded = padded_;
    re.assign(static_cast<std::size_t>(n * padded), 0.0), im.assign(static_cast<std::size_t>(n * padded), 0.0);
  }
  double* re_row(index_t i) { return re.data() + i * padded; }
  double* im_row(index_t i) { return im.data() + i * padded; }
};

// out = a b for upper-triangular a, b (out must not alias either).
inline void ssm_upper_product(const SsmUpperPlanes& a, const SsmUpperPlanes& b, SsmUpperPlanes& out) {
  out.reset(a.n, a.padded);
  for (index_t i = 0; i < a.n; ++i)
    ssm_dplr_upper_row(a.re.data() + i * a.padded, a.im.data() + i * a.padded, i, b.re.data(), b.im.data(), a.n,
                       a.padded, out.re_row(i), out.im_row(i));
}

// row = row m for an upper-triangular m (row and next: planes of m.padded entries; next is scratch).
inline void ssm_upper_row_step(std::vector<double>& row_re, std::vector<double>& row_im, const SsmUpperPlanes& m,
                               std::vector<double>& next_re, std::vector<double>& next_im) {
  next_re.assign(static_cast<std::size_t>(m.padded), 0.0), next_im.assign(static_cast<std::size_t>(m.padded), 0.0);
  ssm_dplr_upper_row(row_re.data(), row_im.data(), 0, m.re.data(), m.im.data(), m.n, m.padded, next_re.data(),
                     next_im.data());
  row_re.swap(next_re), row_im.swap(next_im);
}

// C U for channel h (entry j: sum_n C[n] U[n, j]) into planes of `padded` entries, zero past N.
inline void ssm_dplr_c_times_u(const SsmDplrSchur& f, const SsmDplrParams& p, index_t h, index_t padded,
                               std::vector<double>& row_re, std::vector<double>& row_im) {
  const index_t N = f.N;
  row_re.assign(static_cast<std::size_t>(padded), 0.0), row_im.assign(static_cast<std::size_t>(padded), 0.0);
  for (index_t n = 0; n < N; ++n) {
    const SsmComplex c = ssm_value(p.C_real, p.C_imag, h, n);
    for (index_t j = 0; j < N; ++j) {
      const SsmComplex v = c * f.U[n * N + j];
      row_re[j] += v.real(), row_im[j] += v.imag();
    }
  }
}

// Buffers of ssm_dplr_schur_c_power: the triangular power, its square and the rows, as planes.
struct SsmDplrSchurScratch {
  SsmUpperPlanes power, square;
  std::vector<double> row_re, row_im, next_re, next_im;
};

// C A_bar^L for channel h from the group's Schur factors (see SsmDplrSchur).
inline std::vector<SsmComplex> ssm_dplr_schur_c_power(const SsmDplrSchur& f, const SsmDplrParams& p, index_t h,
                                                      index_t L, SsmDplrSchurScratch& w) {
  const index_t N = f.N, padded = f.padded;
  const double half = p.dt(h) / 2.0;
  w.power.reset(N, padded);
  // T_bar = (I - dt/2 T)^-1 (I + dt/2 T) by back substitution, last row first:
  // T_bar[i,:] = ((I + dt/2 T)[i,:] + dt/2 sum_{k>i} T[i,k] T_bar[k,:]) / (1 - dt/2 T[i,i]).
  std::vector<double> scaled_re(static_cast<std::size_t>(padded)), scaled_im(static_cast<std::size_t>(padded));
  for (index_t i = N - 1; i >= 0; --i) {
    const double* t_re = f.T_re.data() + i * padded;
    const double* t_im = f.T_im.data() + i * padded;
    double* out_re = w.power.re_row(i);
    double* out_im = w.power.im_row(i);
    for (index_t k = i; k < N; ++k) {
      scaled_re[k] = half * t_re[k], scaled_im[k] = half * t_im[k];
      out_re[k] = scaled_re[k] + (k == i ? 1.0 : 0.0), out_im[k] = scaled_im[k];
    }
    ssm_dplr_upper_row(scaled_re.data(), scaled_im.data(), i + 1, w.power.re.data(), w.power.im.data(), N, padded,
                       out_re, out_im);
    const SsmComplex d = 1.0 - SsmComplex(scaled_re[i], scaled_im[i]);
    const SsmComplex inv = std::conj(d) / std::norm(d);
    for (index_t k = i; k < N; ++k) {
      const SsmComplex v = SsmComplex(out_re[k], out_im[k]) * inv;
      out_re[k] = v.real(), out_im[k] = v.imag();
    }
  }
  // row = C U, then row T_bar^L by binary powering.
  ssm_dplr_c_times_u(f, p, h, padded, w.row_re, w.row_im);
  double row_norm = 0.0;
  for (index_t j = 0; j < N; ++j) row_norm += w.row_re[j] * w.row_re[j] + w.row_im[j] * w.row_im[j];
  const double negligible = 1e-36 * row_norm;  // squared norms: 1e-18 of ||C U|| = ||C||
  for (index_t e = L; e > 0; e >>= 1) {
    // Every factor still to come is a power of the current one, whose Frobenius norm bounds
    // theirs; once row times it is below 1e-18 ||C||, C A_bar^L is zero to double precision. A
    // stable A_bar's powers decay (with dt = 0.05, L = 16384: ten of the 14 squarings), and the
    // squarings past that point only produce subnormal numbers, each operation on which stalls.
    double power_norm = 0.0, now = 0.0;
    for (index_t i = 0; i < N * padded; ++i) power_norm += w.power.re[i] * w.power.re[i] + w.power.im[i] * w.power.im[i];
    for (index_t j = 0; j < N; ++j) now += w.row_re[j] * w.row_re[j] + w.row_im[j] * w.row_im[j];
    if (power_norm < 1.0 && now * power_norm < negligible) {
      std::fill(w.row_re.begin(), w.row_re.end(), 0.0), std::fill(w.row_im.begin(), w.row_im.end(), 0.0);
      break;
    }
    if (e & 1) ssm_upper_row_step(w.row_re, w.row_im, w.power, w.next_re, w.next_im);
    if (e > 1) {
      ssm_upper_product(w.power, w.power, w.square);
      std::swap(w.power, w.square);
    }
  }
  // (row) U^*: entry n is sum_j row[j] conj(U[n, j]).
  std::vector<SsmComplex> result(static_cast<std::size_t>(N));
  for (index_t n = 0; n < N; ++n) {
    SsmComplex sum = 0.0;
    for (index_t j = 0; j < N; ++j) sum += SsmComplex(w.row_re[j], w.row_im[j]) * std::conj(f.U[n * N + j]);
    result[n] = sum;
  }
  return result;
}

// ---- ZOH from the group's Schur form ------------------------------------------------------------
//
// In the basis of the group's Schur vectors U (A = U T U^*), channel h's Van Loan block
// dt [[T, U^* B], [0, 0]] is upper triangular, and so is its exponential [[T_bar, B~], [0, 1]]:
// T_bar = exp(dt T) = U^* A_bar U and B~ = U^* B_bar. The kernel K[l] = Re(C A_bar^l B_bar) is
// Re((C U) T_bar^l B~), formed by the blocked powers of ssm_dplr_power_kernel_channel on
// triangular factors. Every product is of upper-triangular matrices (n^3/6 complex multiply-adds
// against the n^3 of the dense exponential's and squarings' products), in planes [row][padded]
// kept by the task across channels: the dense form's per-channel matrices and the temporaries of
// Eigen's exponential cost more in page faults and memset than in arithmetic.

// Channels sharing A from which ZOH takes the Schur form (about 30 dense products once per group)
// instead of each channel's dense (N+1)^3 exponential and N^3 squarings (about 15-20 products).
constexpr index_t kSsmDplrZohSchurChannels = 2;

// out = out + s x (s real), both upper triangular.
inline void ssm_upper_add_scaled(SsmUpperPlanes& out, double s, const SsmUpperPlanes& x) {
  for (std::size_t i = 0; i < out.re.size(); ++i) out.re[i] += s * x.re[i], out.im[i] += s * x.im[i];
}

// out[i] = sum_k t[i, k] v[k] for rows i < rows of an upper-triangular t; v and out in planes of
// t.padded entries, v zero from `rows` on (so the column of t past them is not read into the sums).
inline void ssm_upper_times_column(const SsmUpperPlanes& t, index_t rows, const double* v_re, const double* v_im,
                                   double* out_re, double* out_im) {
  using Batch = SsmDplrBatch;
  constexpr index_t W = kSsmDplrLanes;
  for (index_t i = 0; i < rows; ++i) {
    Batch rr(0.0), ii(0.0), ri(0.0), ir(0.0);
    const double *tr = t.re.data() + i * t.padded, *ti = t.im.data() + i * t.padded;
    for (index_t k = i / W * W; k < t.padded; k += W) {  // below the diagonal t is zero
      const Batch a = simd::load(tr + k), c = simd::load(ti + k), x = simd::load(v_re + k), y = simd::load(v_im + k);
      rr = simd::fma(a, x, rr), ii = simd::fma(c, y, ii), ri = simd::fma(a, y, ri), ir = simd::fma(c, x, ir);
    }
    out_re[i] = simd::reduce_add(rr - ii), out_im[i] = simd::reduce_add(ri + ir);
  }
}

// Per-task buffers of the Schur-form ZOH kernel.
struct SsmDplrZohScratch {
  SsmUpperPlanes x, x2, x3, x4, sum, next;
  std::vector<double> row_re, row_im, next_re, next_im;
  Eigen::MatrixXd giant, baby, product;  // [J, 2N] (C U T_bar^(jb) as re | -im), [2N, b], [J, b]
};

// exp(x) in place for an upper-triangular x: scaling by 2^-s until ||x||_1 <= 1, Taylor's series
// to degree 16 (remainder below 1/17! = 2.8e-15 of the unit ball) by Paterson-Stockmeyer in x^4
// (6 products), then s squarings.
inline void ssm_upper_exp(SsmUpperPlanes& x, SsmDplrZohScratch& w) {
  const index_t n = x.n, padded = x.padded;
  double norm = 0.0;  // largest column sum of |x|
  for (index_t j = 0; j < n; ++j) {
    double column = 0.0;
    for (index_t i = 0; i <= j; ++i) column += std::abs(SsmComplex(x.re[i * padded + j], x.im[i * padded + j]));
    norm = std::max(norm, column);
  }
  int squarings = 0;
  while (norm > 1.0) norm /= 2.0, ++squarings;
  const double scale = std::ldexp(1.0, -squarings);
  for (std::size_t i = 0; i < x.re.size(); ++i) x.re[i] *= scale, x.im[i] *= scale;
  ssm_upper_product(x, x, w.x2);
  ssm_upper_product(w.x2, x, w.x3);
  ssm_upper_product(w.x2, w.x2, w.x4);
  // sum_{k<=16} x^k / k! = B0 + x^4 (B1 + x^4 (B2 + x^4 (B3 + x^4 B4))), Bi = sum_{j<4} x^j / (4i+j)!.
  double factorial[17];
  factorial[0] = 1.0;
  for (int k = 1; k <= 16; ++k) factorial[k] = factorial[k - 1] * k;
  const auto add_block = [&](SsmUpperPlanes& out, int i) {
    for (index_t d = 0; d < n; ++d) out.re[d * padded + d] += 1.0 / factorial[4 * i];
    ssm_upper_add_scaled(out, 1.0 / factorial[4 * i + 1], x);
    ssm_upper_add_scaled(out, 1.0 / factorial[4 * i + 2], w.x2);
    ssm_upper_add_scaled(out, 1.0 / factorial[4 * i + 3], w.x3);
  };
  w.sum.reset(n, padded);
  ssm_upper_add_scaled(w.sum, 1.0 / factorial[16], w.x4);
  add_block(w.sum, 3);
  for (int i = 2; i >= 0; --i) {
    ssm_upper_product(w.x4, w.sum, w.next);
    std::swap(w.sum, w.next);
    add_block(w.sum, i);
  }
  for (int s = 0; s < squarings; ++s) {
    ssm_upper_product(w.sum, w.sum, w.next);
    std::swap(w.sum, w.next);
  }
  std::swap(x, w.sum);
}

// The Van Loan block dt [[T, U^* B], [0, 0]] of channel h into e ((N + 1) x (N + 1), upper).
inline void ssm_dplr_van_loan_block(const SsmDplrSchur& f, const SsmDplrParams& p, index_t h, index_t padded,
                                    SsmUpperPlanes& e) {
  const index_t N = f.N;
  const double dt = p.dt(h);
  e.reset(N + 1, padded);
  for (index_t i = 0; i < N; ++i) {
    for (index_t k = i; k < N; ++k) e.re[i * padded + k] = dt * f.T_re[i * f.padded + k], e.im[i * padded + k] = dt * f.T_im[i * f.padded + k];
    SsmComplex b = 0.0;  // (U^* B)[i] = sum_m conj(U[m, i]) B[m]
    for (index_t m = 0; m < N; ++m) b += std::conj(f.U[m * N + i]) * ssm_value(p.B_real, p.B_imag, h, m);
    e.re[i * padded + N] = dt * b.real(), e.im[i * padded + N] = dt * b.imag();
  }
}

// Baby steps T_bar^c B~, c < b, as the columns of w.baby = [re; im] (2N x b), from
// e = [[T_bar, B~], [0, 1]] (B~ is e's last column).
inline void ssm_dplr_baby_steps(const SsmUpperPlanes& e, index_t N, index_t b, SsmDplrZohScratch& w) {
  const index_t padded = e.padded;
  w.baby.resize(2 * N, b);
  w.row_re.assign(static_cast<std::size_t>(padded), 0.0), w.row_im.assign(static_cast<std::size_t>(padded), 0.0);
  w.next_re.assign(static_cast<std::size_t>(padded), 0.0), w.next_im.assign(static_cast<std::size_t>(padded), 0.0);
  for (index_t i = 0; i < N; ++i) w.row_re[i] = e.re[i * padded + N], w.row_im[i] = e.im[i * padded + N];
  for (index_t c = 0; c < b; ++c) {
    if (c > 0) {
      ssm_upper_times_column(e, N, w.row_re.data(), w.row_im.data(), w.next_re.data(), w.next_im.data());
      w.row_re.swap(w.next_re), w.row_im.swap(w.next_im);
    }
    for (index_t i = 0; i < N; ++i) w.baby(i, c) = w.row_re[i], w.baby(N + i, c) = w.row_im[i];
  }
}

// Giant steps (C U) T_bar^(jb), j < J, as the rows [re | -im] of w.giant (J x 2N): their
// product with the baby columns is the real part Re(g v) = g_re v_re - g_im v_im. T_bar^b by
// log2 b squarings of e (the B~ column and the last row ride along: the jump's own last column
// is never read, as the giant rows' entry N stays 0).
inline void ssm_dplr_giant_steps(const SsmDplrSchur& f, const SsmDplrParams& p, index_t h, const SsmUpperPlanes& e,
                                 index_t b, index_t J, SsmDplrZohScratch& w) {
  const index_t N = f.N;
  SsmUpperPlanes& jump = w.x4;
  jump = e;
  for (index_t k = 1; k < b; k *= 2) {
    ssm_upper_product(jump, jump, w.next);
    std::swap(jump, w.next);
  }
  w.giant.resize(J, 2 * N);
  ssm_dplr_c_times_u(f, p, h, e.padded, w.row_re, w.row_im);
  for (index_t j = 0; j < J; ++j) {
    if (j > 0) ssm_upper_row_step(w.row_re, w.row_im, jump, w.next_re, w.next_im);
    for (index_t m = 0; m < N; ++m) w.giant(j, m) = w.row_re[m], w.giant(j, N + m) = -w.row_im[m];
  }
}

// kernel[:, h] under ZOH from the group's Schur factors f (see the block comment above):
// exp of the Van Loan block, then kernel[l] = Re(C U T_bar^l B~) as the product of J giant-step
// rows and b baby-step columns (l = j b + c, b the power of two at or above sqrt(L)).
inline void ssm_dplr_zoh_schur_channel(const SsmDplrSchur& f, const SsmDplrParams& p, index_t h,
                                       const TensorView<float, 2>& kernel, SsmDplrZohScratch& w) {
  const index_t N = f.N, padded = (N + 1 + kSsmDplrLanes - 1) / kSsmDplrLanes * kSsmDplrLanes;
  const index_t L = kernel.size(0);
  SsmUpperPlanes& e = w.x;
  ssm_dplr_van_loan_block(f, p, h, padded, e);
  ssm_upper_exp(e, w);  // e = [[T_bar, B~], [0, 1]]
  index_t b = 1;
  while (b * b < L) b *= 2;
  const index_t J = (L + b - 1) / b;
  ssm_dplr_baby_steps(e, N, b, w);
  ssm_dplr_giant_steps(f, p, h, e, b, J, w);
  w.product.resize(J, b);
  w.product.noalias() = w.giant * w.baby;
  for (index_t l = 0; l < L; ++l) kernel(l, h) = static_cast<float>(w.product(l / b, l % b));
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

// The Cauchy sums of kSsmDplrLanes frequencies of one channel, one frequency per SIMD lane:
// sums[t][q] = sum_n weight[t][n] / (i omega_q - lambda_n) for the (R+1)^2 terms. R is a
// compile-time rank so the term loop unrolls into (R+1)^2 complex accumulators held in registers;
// the weights and lambda_n are broadcast, so each state costs one reciprocal and 4 (R+1)^2 FMAs
// per batch of frequencies, and the lanes need no horizontal reduction.
// acc[t] += weight[t][0] * (rr + i ri) for every term t, unrolled by the fold so the accumulators
// stay in registers (GCC at -O2 kept a loop over them in memory: a store per FMA pair).
template <std::size_t... t>
inline void ssm_dplr_cauchy_terms(std::index_sequence<t...>, const double* weight_re, const double* weight_im,
                                  index_t stride, const SsmDplrBatch& rr, const SsmDplrBatch& ri, SsmDplrBatch* acc_re,
                                  SsmDplrBatch* acc_im) {
  const auto term = [&](std::size_t i) {
    const SsmDplrBatch wr(weight_re[i * stride]), wi(weight_im[i * stride]);
    acc_re[i] = simd::fma(wr, rr, simd::fma(-wi, ri, acc_re[i]));
    acc_im[i] = simd::fma(wr, ri, simd::fma(wi, rr, acc_im[i]));
  };
  (term(t), ...);
}

template <index_t R>
inline void ssm_dplr_cauchy(const double* weight_re, const double* weight_im, const double* lambda_re,
                            const double* lambda_im, index_t N, index_t stride, const double* omega, double* sums_re,
                            double* sums_im) {
  constexpr index_t terms = (R + 1) * (R + 1);
  using Batch = SsmDplrBatch;
  const Batch w = simd::load(omega);
  Batch acc_re[terms], acc_im[terms];
  for (index_t t = 0; t < terms; ++t) acc_re[t] = Batch(0.0), acc_im[t] = Batch(0.0);
  for (index_t n = 0; n < N; ++n) {
    // 1 / (i omega - lambda) = (dr - i di) / (dr^2 + di^2), dr = -Re(lambda) > 0.
    const double dr = -lambda_re[n];
    const Batch di = w - Batch(lambda_im[n]);
    const Batch inv = Batch(1.0) / simd::fma(di, di, Batch(dr * dr));
    const Batch rr = Batch(dr) * inv, ri = -(di * inv);
    ssm_dplr_cauchy_terms(std::make_index_sequence<terms>{}, weight_re + n, weight_im + n, stride, rr, ri, acc_re,
                          acc_im);
  }
  for (index_t t = 0; t < terms; ++t) {
    simd::store(sums_re + t * kSsmDplrLanes, acc_re[t]);
    simd::store(sums_im + t * kSsmDplrLanes, acc_im[t]);
  }
}

// Woodbury for one frequency: k00 - k01 (I + k11)^-1 k10 from the (r+1)^2 Cauchy sums (term
// (1 + i) (r + 1) + (1 + j)); (I + k11) x = k10 solved by Gauss-Jordan on the stack (r <= 4).
inline SsmComplex ssm_dplr_woodbury(const SsmComplex* sums, index_t r) {
  SsmComplex value = sums[0];
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
  return value;
}

// Rank 1 (S4's HiPPO-LegS) in the lanes: (1 + i tan) (k00 - k01 k10 / (1 + k11)) per frequency,
// terms 0..3 = k00, k01, k10, k11; written back over term 0. The scalar form spent more time in
// complex divisions and libgcc's __muldc3 than the Cauchy sums took.
inline void ssm_dplr_woodbury_rank1(double* sums_re, double* sums_im, const double* tan_half) {
  using Batch = SsmDplrBatch;
  constexpr index_t W = kSsmDplrLanes;
  const Batch k00r = simd::load(sums_re), k00i = simd::load(sums_im);
  const Batch k01r = simd::load(sums_re + W), k01i = simd::load(sums_im + W);
  const Batch k10r = simd::load(sums_re + 2 * W), k10i = simd::load(sums_im + 2 * W);
  const Batch mr = simd::load(sums_re + 3 * W) + Batch(1.0), mi = simd::load(sums_im + 3 * W);
  const Batch inv = Batch(1.0) / simd::fma(mr, mr, mi * mi);
  // x = k10 / m = k10 conj(m) / |m|^2
  const Batch xr = simd::fma(k10r, mr, k10i * mi) * inv, xi = simd::fma(k10i, mr, -(k10r * mi)) * inv;
  const Batch vr = k00r - simd::fma(k01r, xr, -(k01i * xi)), vi = k00i - simd::fma(k01r, xi, k01i * xr);
  const Batch t = simd::load(tan_half);
  simd::store(sums_re, simd::fma(-t, vi, vr));
  simd::store(sums_im, simd::fma(t, vr, vi));
}

// Kernel of a dense discrete system (any discretization) by blocked powers, in double:
// kernel[j b + i] = Re((C A_bar^(j b)) (A_bar^i B_bar)). The b columns A_bar^i B_bar (baby steps)
// and the J = ceil(L / b) rows C A_bar^(j b) (giant steps, by A_bar^b formed with log2 b squarings)
// cost (b + J) N^2, and their product, one J x N x b complex GEMM, L N: O(N^3 log b + N^2 sqrt(L)
// + L N) per channel with b ~ sqrt(L), against L N^2 for the power loop. Used for ZOH, whose
// exp(dt A) has no DPLR structure for the Cauchy form.
template <class Tag>
void ssm_dplr_power_kernel_channel(const std::vector<SsmComplex>& A_bar, const std::vector<SsmComplex>& B_bar,
                                   const SsmDplrParams& p, index_t h, const TensorView<float, 2>& kernel) {
  using Matrix = deferred_t<Eigen::Matrix<SsmComplex, Eigen::Dynamic, Eigen::Dynamic>, Tag>;
  const index_t N = static_cast<index_t>(B_bar.size()), L = kernel.size(0);
  index_t b = 1;
  while (b * b < L) b *= 2;
  const index_t J = (L + b - 1) / b;
  const Matrix A = Eigen::Map<const Eigen::Matrix<SsmComplex, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      A_bar.data(), N, N);
  Matrix baby(N, b), giant(J, N), jump = A;
  baby.col(0) = Eigen::Map<const Eigen::Matrix<SsmComplex, Eigen::Dynamic, 1>>(B_bar.data(), N);
  for (index_t i = 1; i < b; ++i) baby.col(i).noalias() = A * baby.col(i - 1);
  for (index_t e = 1; e < b; e *= 2) jump = (jump * jump).eval();  // A_bar^b, b a power of 2
  for (index_t n = 0; n < N; ++n) giant(0, n) = ssm_value(p.C_real, p.C_imag, h, n);
  for (index_t j = 1; j < J; ++j) giant.row(j).noalias() = giant.row(j - 1) * jump;
  const Matrix product = giant * baby;
  for (index_t l = 0; l < L; ++l) kernel(l, h) = static_cast<float>(product(l / b, l % b).real());
}

// Per-task buffers.
struct SsmDplrScratch {
  std::vector<SsmComplex> A_bar, B_bar, spectrum, kernel;
  // Cauchy weights [term][n] (term 0: C~ B; then C~ P_j, Q_i^* B, Q_i^* P_j), real and imaginary
  // planes; tan(pi k/L) padded to whole batches.
  std::vector<double> weight_re, weight_im, lambda_re, lambda_im, tan_lanes;
  std::vector<float> folded;  // Hermitian parts of a block's spectra, [channel][k][re, im]
  SsmDplrSchurScratch schur;
  SsmDplrZohScratch zoh;
  Eigen::FFT<double> fft;
};

// The spectrum K^(z_k), k < L, of channel h (bilinear) into w.spectrum, natural order.
template <class Tag>
void ssm_dplr_spectrum(const SsmDplrParams& p, const SsmDplrGroup& s, const SsmDplrSchur* schur, index_t h,
                       const std::vector<double>& tan_half, index_t L, SsmDplrScratch& w) {
  const index_t N = s.N, r = s.r;
  const index_t padded = N;  // row stride of the weight planes
  const index_t terms = (r + 1) * (r + 1);
  const double dt = p.dt(h);
  std::vector<SsmComplex> c_power;
  if (schur) {
    c_power = ssm_dplr_schur_c_power(*schur, p, h, L, w.schur);
  } else {
    ssm_dplr_structured_discretize(p, s, h, &w.A_bar, &w.B_bar);
    c_power = ssm_dplr_c_power<Tag>(w.A_bar, p, h, N, L);
  }
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
  w.spectrum.resize(L);
  const double two_over_dt = 2.0 / dt;
  constexpr index_t max_terms = (kSsmDplrMaxRank + 1) * (kSsmDplrMaxRank + 1);
  alignas(64) double omega[kSsmDplrLanes], sums_re[max_terms * kSsmDplrLanes], sums_im[max_terms * kSsmDplrLanes];
  const double *wr = w.weight_re.data(), *wi = w.weight_im.data(), *lr = w.lambda_re.data(), *li = w.lambda_im.data();
  // tan_half padded with zeros to whole batches (lanes past L are computed and dropped).
  w.tan_lanes.assign(static_cast<std::size_t>((L + kSsmDplrLanes - 1) / kSsmDplrLanes * kSsmDplrLanes), 0.0);
  std::copy(tan_half.begin(), tan_half.end(), w.tan_lanes.begin());
  const double* tan_lanes = w.tan_lanes.data();
  for (index_t k0 = 0; k0 < L; k0 += kSsmDplrLanes) {
    // z = exp(-2 pi i k/L): g = (2/dt)(1-z)/(1+z) = i (2/dt) tan(pi k/L) (tan_half is 0 at k =
    // L/2 and past L: lanes whose sums are not used).
    for (index_t q = 0; q < kSsmDplrLanes; ++q) omega[q] = two_over_dt * tan_lanes[k0 + q];
    switch (r) {
      case 1: ssm_dplr_cauchy<1>(wr, wi, lr, li, N, padded, omega, sums_re, sums_im); break;
      case 2: ssm_dplr_cauchy<2>(wr, wi, lr, li, N, padded, omega, sums_re, sums_im); break;
      case 3: ssm_dplr_cauchy<3>(wr, wi, lr, li, N, padded, omega, sums_re, sums_im); break;
      default: ssm_dplr_cauchy<4>(wr, wi, lr, li, N, padded, omega, sums_re, sums_im); break;
    }
    if (r == 1) ssm_dplr_woodbury_rank1(sums_re, sums_im, tan_lanes + k0);
    for (index_t q = 0; q < kSsmDplrLanes && k0 + q < L; ++q) {
      const index_t k = k0 + q;
      if (2 * k == L) {  // z = -1: the limit dt/2 C~ B
        w.spectrum[k] = dt / 2.0 * c_tilde_b;
        continue;
      }
      if (r == 1) {
        w.spectrum[k] = SsmComplex(sums_re[q], sums_im[q]);
        continue;
      }
      SsmComplex sums[max_terms];
      for (index_t t = 0; t < terms; ++t)
        sums[t] = SsmComplex(sums_re[t * kSsmDplrLanes + q], sums_im[t * kSsmDplrLanes + q]);
      // 2/(1+z) with z = exp(-2 pi i k/L) is exp(i pi k/L) / cos(pi k/L) = 1 + i tan(pi k/L).
      w.spectrum[k] = SsmComplex(1.0, tan_half[k]) * ssm_dplr_woodbury(sums, r);
    }
  }
}

// The groups' DPLR factors, read once per call, and their Schur forms when the groups are large
// enough to pay for them (bilinear kSsmDplrSchurChannels, ZOH kSsmDplrZohSchurChannels).
struct SsmDplrGroups {
  index_t per_group = 1;
  std::vector<SsmDplrGroup> factors;
  std::vector<SsmDplrSchur> schurs;  // empty: dense squarings
  const SsmDplrGroup& group(index_t h) const { return factors[static_cast<std::size_t>(h / per_group)]; }
  const SsmDplrSchur* schur(index_t h) const {
    return schurs.empty() ? nullptr : &schurs[static_cast<std::size_t>(h / per_group)];
  }
};

template <class Tag>
SsmDplrGroups ssm_dplr_groups(const SsmDplrParams& p, index_t G, index_t H, bool zoh, const Executor& executor) {
  SsmDplrGroups g;
  g.per_group = H / G;
  for (index_t i = 0; i < G; ++i) g.factors.push_back(ssm_dplr_group(p, i));
  if (g.per_group >= (zoh ? kSsmDplrZohSchurChannels : kSsmDplrSchurChannels)) {
    g.schurs.resize(static_cast<std::size_t>(G));
    parallel_for(executor, G, 1, [&](index_t begin, index_t end) {
      for (index_t i = begin; i < end; ++i) g.schurs[static_cast<std::size_t>(i)] = ssm_dplr_schur<Tag>(g.factors[i]);
    });
  }
  return g;
}

// Channel h: kernel[:, h], one channel at a time, the inverse transform by Eigen's kissfft in
// double (any L; the form for lengths that are not powers of two, and for ZOH). (`Tag` defers
// the ZOH matrix exponential, as in dplr_reference.hpp.)
template <class Tag>
void ssm_dplr_kernel_channel(const SsmDplrParams& p, const SsmDplrGroup& s, const SsmDplrSchur* schur, index_t h,
                             bool zoh, const std::vector<double>& tan_half, const TensorView<float, 2>& kernel,
                             SsmDplrScratch& w) {
  const index_t L = kernel.size(0);
  if (zoh && schur) {
    ssm_dplr_zoh_schur_channel(*schur, p, h, kernel, w.zoh);
    return;
  }
  if (zoh) {
    ssm_dplr_zoh_discretize<Tag>(p, s, h, &w.A_bar, &w.B_bar);
    ssm_dplr_power_kernel_channel<Tag>(w.A_bar, w.B_bar, p, h, kernel);
    return;
  }
  ssm_dplr_spectrum<Tag>(p, s, schur, h, tan_half, L, w);
  w.kernel.resize(L);
  if (L == 1)
    w.kernel[0] = w.spectrum[0];
  else
    w.fft.inv(w.kernel.data(), w.spectrum.data(), L);
  for (index_t l = 0; l < L; ++l) kernel(l, h) = static_cast<float>(w.kernel[l].real());
}

// Channels per batched inverse transform: two real kernels per SIMD lane of the float FFT.
constexpr index_t kSsmDplrFftChannels = 2 * simd::kWidth;

// The plan shared by the blocks of a power-of-two L: the float transform's twiddles (the
// process's plan of that length, fft_twiddles, built once as long_conv's are) and the
// bit-reversed position of each frequency (the inverse takes its input in that order).
struct SsmDplrFftPlan {
  const FftTwiddles& twiddles;
  std::vector<index_t> position;  // position[k]: where frequency k goes
  explicit SsmDplrFftPlan(index_t L) : twiddles(fft_twiddles(L)), position(static_cast<std::size_t>(L)) {
    for (index_t k = 0; k < L; ++k) position[static_cast<std::size_t>(k)] = twiddles.reverse(k);
  }
};

// Channels [h0, h0 + count), count <= kSsmDplrFftChannels, for a power-of-two L >= 2: every
// spectrum (double) is folded to its Hermitian part Y_k = (X_k + conj(X_{L-k})) / 2, whose
// inverse DFT is Re(inverse DFT of X), the real kernel. Two such spectra Y_a + i Y_b share one
// lane of the batched float inverse FFT (lti/long_conv/batched_fft.hpp) and come out as K_a + i K_b:
// one radix-2 transform vectorized over 2 kWidth channels instead of one scalar complex
// transform in double per channel (kissfft took about as long as the C A_bar^L squarings). The
// float transform adds about 1e-7 log2 L of the kernel's rms, well under the 1e-5 bound.
template <class Tag>
void ssm_dplr_kernel_block(const SsmDplrParams& p, const SsmDplrGroups& groups, index_t h0, index_t count,
                           const std::vector<double>& tan_half, const SsmDplrFftPlan& plan,
                           const TensorView<float, 2>& kernel, SsmDplrScratch& w, AlignedVector<float>& batch) {
  constexpr index_t W = simd::kWidth;
  const index_t L = kernel.size(0);
  // Folded spectra [channel][k][re, im] in natural order first: scattering each channel straight
  // to the bit-reversed positions cost one cache miss per (channel, frequency), as long as the
  // transform; gathered below, the block pays one miss per frequency.
  w.folded.resize(static_cast<std::size_t>(count * L * 2));
  for (index_t c = 0; c < count; ++c) {
    const index_t h = h0 + c;
    ssm_dplr_spectrum<Tag>(p, groups.group(h), groups.schur(h), h, tan_half, L, w);
    float* out = w.folded.data() + c * L * 2;
    for (index_t k = 0; k < L; ++k) {
      const SsmComplex y = 0.5 * (w.spectrum[k] + std::conj(w.spectrum[(L - k) & (L - 1)]));
      out[2 * k] = static_cast<float>(y.real()), out[2 * k + 1] = static_cast<float>(y.imag());
    }
  }
  // Every lane written (no zero fill of the 2 MB batch at L = 16384 first): lane j holds channel
  // 2j in its real part and channel 2j + 1 in its imaginary part (times i), zero past the block.
  batch.resize(static_cast<std::size_t>(L * kFftElement));
  for (index_t k = 0; k < L; ++k) {
    float* element = batch.data() + plan.position[static_cast<std::size_t>(k)] * kFftElement;
    for (index_t j = 0; j < W; ++j) {
      float re = 0.f, im = 0.f;
      if (2 * j < count) {
        const float* y = w.folded.data() + (2 * j * L + k) * 2;
        re = y[0], im = y[1];
      }
      if (2 * j + 1 < count) {
        const float* y = w.folded.data() + ((2 * j + 1) * L + k) * 2;
        re -= y[1], im += y[0];
      }
      element[j] = re, element[W + j] = im;
    }
  }
  batched_fft_inverse(batch.data(), plan.twiddles);  // unscaled
  const float scale = 1.f / static_cast<float>(L);
  for (index_t l = 0; l < L; ++l) {
    const float* element = batch.data() + l * kFftElement;
    for (index_t c = 0; c < count; ++c) kernel(l, h0 + c) = scale * element[(c % 2 == 1 ? W : 0) + c / 2];
  }
}

}  // namespace detail

/// Kernel [L,H] of a DPLR system (S4): the generating function at the L roots of unity by Cauchy
/// sums with the Woodbury correction, then an inverse FFT of length L (for a power-of-two L a
/// batched float transform over 2 SIMD-width channels, else Eigen's kissfft in double). Same
/// result as reference::ssm_dplr_kernel up to double rounding and, for the float transform,
/// about 1e-7 log2 L of the kernel's rms (tested within 1e-5 of max |kernel|). That is the bilinear
/// form; ZOH has no DPLR structure left, so its kernel comes from exp(dt A) by blocked powers:
/// triangular in the Schur basis of A when kSsmDplrZohSchurChannels or more channels share it,
/// dense for a lone channel. Conjugate pairs are refused (ShapeError); validates shapes, non-finite values,
/// Re(Lambda) >= 0, dt <= 0 and, with an explicit Q, a non-dissipative A, before any write.
/// Cost per channel O(N^3 log L + L N (r+1)^2 + L log L) (N^3/6 log L from a group's Schur form
/// when kSsmDplrSchurChannels or more channels share A), channels in parallel.
/// A template with nothing to choose (`Deferred` stays `void`): Eigen's solvers it uses then
/// compile only where it is called (core/eigen.hpp, deferred_t).
template <class Deferred = void>
void ssm_dplr_kernel(const SsmDplrParams& params, const TensorView<float, 2>& kernel,
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
  const bool zoh = options.discretization == SsmDiscretization::zoh;
  const detail::SsmDplrGroups groups = detail::ssm_dplr_groups<Deferred>(params, dims.G, dims.H, zoh, executor);
  if (!zoh && L >= 2 && (L & (L - 1)) == 0) {
    const detail::SsmDplrFftPlan plan(L);
    const index_t width = detail::kSsmDplrFftChannels, blocks = (dims.H + width - 1) / width;
    // Two tasks per thread, not parallel_for's four: blocks cost the same, and each task's first
    // touch of its 6 MB of scratch (folded spectra and FFT batch at L = 16384) costs page faults.
    const index_t grain = std::max<index_t>(1, blocks / (2 * static_cast<index_t>(executor.concurrency())));
    parallel_for(executor, blocks, grain, [&](index_t begin, index_t end) {
      detail::SsmDplrScratch scratch;
      AlignedVector<float> batch;
      for (index_t b = begin; b < end; ++b)
        detail::ssm_dplr_kernel_block<Deferred>(params, groups, b * width, std::min(width, dims.H - b * width), tan_half,
                                                plan, kernel, scratch, batch);
    });
    return;
  }
  parallel_for(executor, dims.H, 1, [&](index_t begin, index_t end) {
    detail::SsmDplrScratch scratch;
    for (index_t h = begin; h < end; ++h)
      detail::ssm_dplr_kernel_channel<Deferred>(params, groups.group(h), groups.schur(h), h, zoh, tan_half, kernel,
                                                scratch);
  });
}

}  // namespace seqmix
