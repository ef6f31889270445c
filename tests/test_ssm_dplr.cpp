// ssm_dplr_kernel (S4: DPLR A = Lambda - P Q^*, bilinear and ZOH): the HiPPO-LegS matrix against
// its closed form and its DPLR factors against the matrix; the Cauchy + Woodbury kernel against the
// power loop (N in {1, 4, 16, 64}, L in {1, 7, 64, 1000}, r 1 and 2; H across the blocks of the
// power-of-two form's batched float inverse FFT); the ZOH kernel (fast: dense, and from a shared-A
// group's Schur form; reference) against a matrix exponential (Taylor, scaling and squaring) and
// power loop written here with Eigen; the HiPPO kernel against a dense real power loop; the
// recurrent step (plan and per-call forms, both discretizations) against long_conv with the kernel
// (impulse and random input); bad parameters and plans refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "seqmix/core/simd.hpp"
#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::SsmDiscretization;
using seqmix::SsmStateSymmetry;
using seqmix::Tensor;
namespace st = seqmix::testing;
using DplrComplex = std::complex<double>;

// A random DPLR system: Re(Lambda) in [-1, -0.3], Im(Lambda) in [-8, 8], P ~ U(-1,1)/sqrt(N),
// Q = (0.6 + 0.3i) P + a small perturbation (explicit Q, still dissipative) or empty (Q = P).
// Or S4's HiPPO-LegS initialization (rank 1). dt log-uniform in [1e-3, 1e-1].
struct DplrData {
  Tensor<float, 2> Lr, Li, Br, Bi, Cr, Ci;
  Tensor<float, 3> Pr, Pi, Qr, Qi;
  Tensor<float, 1> dt;
  bool explicit_q;

  DplrData(index_t H, index_t G, index_t N, index_t r, bool hippo, bool explicit_q_, std::uint64_t seed)
      : Lr({G, N}), Li({G, N}), Br(st::random_tensor<2>({H, N}, seed)), Bi(st::random_tensor<2>({H, N}, seed + 1)),
        Cr(st::random_tensor<2>({H, N}, seed + 2)), Ci(st::random_tensor<2>({H, N}, seed + 3)), Pr({G, r, N}),
        Pi({G, r, N}), Qr({G, r, N}), Qi({G, r, N}), dt({H}), explicit_q(explicit_q_) {
    if (hippo) {
      seqmix::ssm_init_hippo_legs(Lr.view(), Li.view(), Pr.view(), Pi.view(), Br.view(), Bi.view());
    } else {
      const auto re = st::random_tensor<2>({G, N}, seed + 4, -1.f, -0.3f), im = st::random_tensor<2>({G, N}, seed + 5, -8.f, 8.f);
      const auto pr = st::random_tensor<3>({G, r, N}, seed + 6), pi = st::random_tensor<3>({G, r, N}, seed + 7);
      const auto er = st::random_tensor<3>({G, r, N}, seed + 8, -0.02f, 0.02f);
      const float s = 1.f / std::sqrt(float(N));
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < N; ++n) {
          Lr(g, n) = re(g, n), Li(g, n) = im(g, n);
          for (index_t j = 0; j < r; ++j) {
            Pr(g, j, n) = s * pr(g, j, n), Pi(g, j, n) = s * pi(g, j, n);
            const DplrComplex q = DplrComplex(0.6, 0.3) * DplrComplex(Pr(g, j, n), Pi(g, j, n));
            Qr(g, j, n) = float(q.real()) + s * er(g, j, n), Qi(g, j, n) = float(q.imag());
          }
        }
    }
    const auto u = st::random_tensor<1>({H}, seed + 9, 0.f, 1.f);
    for (index_t h = 0; h < H; ++h) dt(h) = std::exp(std::log(1e-3f) + u(h) * (std::log(1e-1f) - std::log(1e-3f)));
  }

  seqmix::SsmDplrParams params() const {
    seqmix::SsmDplrParams p{Lr.view(), Li.view(), Pr.view(), Pi.view(), {}, {},
                            Br.view(), Bi.view(), Cr.view(), Ci.view(), dt.view()};
    if (explicit_q) p.Q_real = Qr.view(), p.Q_imag = Qi.view();
    return p;
  }
};

double dplr_max_abs(const Tensor<float, 2>& k) {
  double m = 0;
  for (float v : k) m = std::max(m, double(std::abs(v)));
  return m;
}

TEST_CASE("ssm_dplr: the HiPPO-LegS matrix and its DPLR factors match the closed form", "[ssm_kernel]") {
  for (index_t N : {1, 2, 4, 16, 64}) {
    INFO("N=" << N);
    const seqmix::HippoLegs h = seqmix::hippo_legs(N);
    for (index_t n = 0; n < N; ++n) {
      REQUIRE(h.B[n] == Approx(std::sqrt(2.0 * n + 1.0)).epsilon(1e-15));
      for (index_t k = 0; k < N; ++k) {
        const double closed = n > k ? -std::sqrt(2.0 * n + 1.0) * std::sqrt(2.0 * k + 1.0) : n == k ? -(n + 1.0) : 0.0;
        REQUIRE(std::abs(h.A[n * N + k] - closed) <= 1e-12 * (1.0 + std::abs(closed)));
      }
    }
    // V unitary; V (diag(Lambda) - Pt Pt^*) V^* = A; V Bt = B; Re(Lambda) = -1/2.
    const double tol = 1e-10 * N;
    for (index_t n = 0; n < N; ++n) {
      REQUIRE(h.Lambda[n].real() == Approx(-0.5).epsilon(1e-12));
      DplrComplex vb = 0.0;
      for (index_t j = 0; j < N; ++j) vb += h.V[n * N + j] * h.B_tilde[j];
      REQUIRE(std::abs(vb - h.B[n]) <= tol);
      for (index_t k = 0; k < N; ++k) {
        DplrComplex a = 0.0, gram = 0.0;
        for (index_t j = 0; j < N; ++j) {
          gram += std::conj(h.V[j * N + n]) * h.V[j * N + k];
          for (index_t m = 0; m < N; ++m) {
            const DplrComplex inner = (j == m ? h.Lambda[j] : 0.0) - h.P_tilde[j] * std::conj(h.P_tilde[m]);
            a += h.V[n * N + j] * inner * std::conj(h.V[k * N + m]);
          }
        }
        REQUIRE(std::abs(gram - (n == k ? 1.0 : 0.0)) <= tol);
        REQUIRE(std::abs(a - h.A[n * N + k]) <= tol * (1.0 + std::abs(h.A[n * N + k])));
      }
    }
  }
}

TEST_CASE("ssm_dplr: the Cauchy and Woodbury kernel equals the power loop", "[ssm_kernel]") {
  std::uint64_t seed = 100;
  const std::vector<index_t> lengths = st::small_test_scale() ? std::vector<index_t>{1, 7, 64}
                                                              : std::vector<index_t>{1, 7, 64, 1000};
  for (index_t N : {1, 4, 16, 64})
    for (index_t L : lengths)
      for (index_t r : {1, 2}) {
        const bool hippo = r == 1 && (N + L) % 2 == 1, explicit_q = r == 2 && L != 64;
        const index_t H = 3, G = L == 7 ? 3 : 1;
        INFO("N=" << N << " L=" << L << " r=" << r << " hippo=" << hippo << " explicit_q=" << explicit_q);
        const DplrData data(H, G, N, r, hippo, explicit_q, seed += 20);
        Tensor<float, 2> ref({L, H}), fast({L, H});
        seqmix::reference::ssm_dplr_kernel(data.params(), ref.view());
        seqmix::ssm_dplr_kernel(data.params(), fast.view(), {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                                seed % 40 ? st::two_thread_pool() : seqmix::serial_executor());
        const double scale = std::max(1e-3, dplr_max_abs(ref));
        for (index_t l = 0; l < L; ++l)
          for (index_t h = 0; h < H; ++h) {
            INFO("l=" << l << " h=" << h);
            REQUIRE(std::abs(fast(l, h) - ref(l, h)) <= 1e-5 * scale);
          }
      }
}

// Power-of-two L runs the channels in blocks of 2 kWidth through one batched float inverse FFT
// (two real kernels per lane): channel counts below, at and past a block, and L = 2 (the z = -1
// limit and k = 0 only).
TEST_CASE("ssm_dplr: the blocked float inverse transform equals the power loop for every channel", "[ssm_kernel]") {
  std::uint64_t seed = 900;
  const index_t block = 2 * seqmix::simd::kWidth;
  for (index_t H : {index_t(1), block - 1, block, 2 * block + 3})
    for (index_t L : {2, 256}) {
      const index_t N = 8, r = H % 2 == 1 ? 1 : 2;
      INFO("H=" << H << " L=" << L << " r=" << r);
      const DplrData data(H, 1, N, r, r == 1, false, seed += 20);
      Tensor<float, 2> ref({L, H}), fast({L, H});
      seqmix::reference::ssm_dplr_kernel(data.params(), ref.view());
      seqmix::ssm_dplr_kernel(data.params(), fast.view(), {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                              H > block ? st::two_thread_pool() : seqmix::serial_executor());
      const double scale = std::max(1e-3, dplr_max_abs(ref));
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h) {
          INFO("l=" << l << " h=" << h);
          REQUIRE(std::abs(fast(l, h) - ref(l, h)) <= 1e-5 * scale);
        }
    }
}

// Groups of at least kSsmDplrSchurChannels channels take C A_bar^L from the group's Schur form
// (triangular powers, stopped once negligible): both group sizes, ranks 1 and 2, explicit Q,
// HiPPO, odd N (row padding), power-of-two and other L (the batched and the per-channel
// transforms), dt up to 1 (powers that vanish early) and down to 1e-3 (powers that do not).
TEST_CASE("ssm_dplr: the Schur-form C A_bar^L of large groups equals the power loop", "[ssm_kernel]") {
  std::uint64_t seed = 1300;
  const index_t per_group = seqmix::detail::kSsmDplrSchurChannels;
  for (index_t N : {5, 16})
    for (index_t L : {100, 256})
      for (int variant = 0; variant < 3; ++variant) {
        const index_t r = variant == 1 ? 2 : 1, G = variant == 2 ? 1 : 2, H = G * per_group;
        const bool hippo = variant == 2, explicit_q = variant == 1;
        INFO("N=" << N << " L=" << L << " r=" << r << " G=" << G << " hippo=" << hippo);
        DplrData data(H, G, N, r, hippo, explicit_q, seed += 20);
        for (index_t h = 0; h < H; h += 7) data.dt(h) = h % 2 ? 1.f : 1e-3f;
        Tensor<float, 2> ref({L, H}), fast({L, H});
        seqmix::reference::ssm_dplr_kernel(data.params(), ref.view());
        seqmix::ssm_dplr_kernel(data.params(), fast.view(), {SsmDiscretization::bilinear, SsmStateSymmetry::none},
                                st::two_thread_pool());
        const double scale = std::max(1e-3, dplr_max_abs(ref));
        for (index_t l = 0; l < L; ++l)
          for (index_t h = 0; h < H; ++h) {
            INFO("l=" << l << " h=" << h);
            REQUIRE(std::abs(fast(l, h) - ref(l, h)) <= 1e-5 * scale);
          }
      }
}

// exp(M) by a Taylor series of M / 2^s (||M / 2^s||_1 <= 1/2, 30 terms) squared s times: a
// different algorithm from the library's Pade approximants.
Eigen::MatrixXcd dplr_taylor_exp(const Eigen::MatrixXcd& M) {
  int s = 0;
  double norm = M.cwiseAbs().colwise().sum().maxCoeff();
  while (norm > 0.5) norm /= 2, ++s;
  const Eigen::MatrixXcd X = M / std::pow(2.0, s);
  Eigen::MatrixXcd sum = Eigen::MatrixXcd::Identity(M.rows(), M.cols()), term = sum;
  for (int k = 1; k <= 30; ++k) {
    term = (term * X / double(k)).eval();
    sum += term;
  }
  for (int i = 0; i < s; ++i) sum = (sum * sum).eval();
  return sum;
}

// ZOH kernel of channel h in double: A_bar = exp(dt A), B_bar = A^-1 (A_bar - I) B, then the
// powers one matrix-vector product at a time.
std::vector<double> dplr_zoh_kernel(const DplrData& d, index_t h, index_t G, index_t L) {
  const index_t H = d.Br.size(0), N = d.Br.size(1), r = d.Pr.size(1), g = h / (H / G);
  Eigen::MatrixXcd A(N, N);
  Eigen::VectorXcd B(N), C(N);
  for (index_t n = 0; n < N; ++n) {
    B(n) = DplrComplex(d.Br(h, n), d.Bi(h, n)), C(n) = DplrComplex(d.Cr(h, n), d.Ci(h, n));
    for (index_t k = 0; k < N; ++k) {
      DplrComplex a = n == k ? DplrComplex(d.Lr(g, n), d.Li(g, n)) : 0.0;
      for (index_t j = 0; j < r; ++j) {
        const DplrComplex q = d.explicit_q ? DplrComplex(d.Qr(g, j, k), d.Qi(g, j, k)) : DplrComplex(d.Pr(g, j, k), d.Pi(g, j, k));
        a -= DplrComplex(d.Pr(g, j, n), d.Pi(g, j, n)) * std::conj(q);
      }
      A(n, k) = a;
    }
  }
  const double dt = d.dt(h);
  const Eigen::MatrixXcd A_bar = dplr_taylor_exp(dt * A);
  Eigen::VectorXcd v = A.partialPivLu().solve((A_bar - Eigen::MatrixXcd::Identity(N, N)) * B);
  std::vector<double> k(L);
  for (index_t l = 0; l < L; ++l) {
    k[l] = (C.transpose() * v)(0).real();
    v = (A_bar * v).eval();
  }
  return k;
}

// Channel h of `kernel` against `expected` within 1e-5 of its largest magnitude (at least 1e-3).
void require_channel_close(const Tensor<float, 2>& kernel, index_t h, const std::vector<double>& expected) {
  double scale = 1e-3;
  for (double v : expected) scale = std::max(scale, std::abs(v));
  for (index_t l = 0; l < static_cast<index_t>(expected.size()); ++l) {
    INFO("l=" << l << " h=" << h);
    REQUIRE(std::abs(kernel(l, h) - expected[static_cast<std::size_t>(l)]) <= 1e-5 * scale);
  }
}

TEST_CASE("ssm_dplr: the ZOH kernel equals a matrix exponential and power loop", "[ssm_kernel]") {
  std::uint64_t seed = 500;
  const std::vector<index_t> lengths = st::small_test_scale() ? std::vector<index_t>{1, 7, 64}
                                                              : std::vector<index_t>{1, 7, 64, 1000};
  const seqmix::SsmKernelOptions zoh{SsmDiscretization::zoh, SsmStateSymmetry::none};
  for (index_t N : {1, 4, 16, 64})
    for (index_t L : lengths)
      for (index_t r : {1, 2}) {
        const bool hippo = r == 1 && (N + L) % 2 == 1, explicit_q = r == 2 && L != 64;
        const index_t H = 3, G = L == 7 ? 3 : 1;
        INFO("N=" << N << " L=" << L << " r=" << r << " hippo=" << hippo << " explicit_q=" << explicit_q);
        const DplrData data(H, G, N, r, hippo, explicit_q, seed += 20);
        Tensor<float, 2> ref({L, H}), fast({L, H});
        seqmix::reference::ssm_dplr_kernel(data.params(), ref.view(), zoh);
        seqmix::ssm_dplr_kernel(data.params(), fast.view(), zoh,
                                seed % 40 ? st::two_thread_pool() : seqmix::serial_executor());
        for (index_t h = 0; h < H; ++h) {
          const std::vector<double> expected = dplr_zoh_kernel(data, h, G, L);
          require_channel_close(fast, h, expected);
          require_channel_close(ref, h, expected);
        }
      }
}

// Groups of kSsmDplrZohSchurChannels or more channels take ZOH from the group's Schur form
// (triangular exponential and powers); single-channel groups keep the dense exponential. Both in
// one call (groups of 1 and of 3), HiPPO and random A with explicit Q, N = 1 and odd N, dt from
// 1e-7 to 100 (many squarings of the scaled exponential, or ||dt A||_1 near 0).
TEST_CASE("ssm_dplr: the Schur-form ZOH of shared-A groups equals a matrix exponential and power loop",
          "[ssm_kernel]") {
  std::uint64_t seed = 2100;
  const seqmix::SsmKernelOptions zoh{SsmDiscretization::zoh, SsmStateSymmetry::none};
  for (index_t N : {1, 5, 64})
    for (index_t L : {1, 100, 256})
      for (int variant = 0; variant < 2; ++variant) {
        const bool hippo = variant == 0;
        const index_t r = hippo ? 1 : 2;
        for (index_t per_group : {index_t(1), index_t(3)}) {
          const index_t G = 2, H = G * per_group;
          INFO("N=" << N << " L=" << L << " hippo=" << hippo << " per_group=" << per_group);
          DplrData data(H, G, N, r, hippo, !hippo, seed += 20);
          data.dt(0) = 1.f, data.dt(H - 1) = 1e-3f;
          // In a shared group also a huge and a tiny step: many squarings, and ||dt A|| near 0.
          if (per_group > 1) data.dt(1) = 100.f, data.dt(2) = 1e-7f;
          Tensor<float, 2> fast({L, H});
          seqmix::ssm_dplr_kernel(data.params(), fast.view(), zoh, st::two_thread_pool());
          for (index_t h = 0; h < H; ++h) require_channel_close(fast, h, dplr_zoh_kernel(data, h, G, L));
        }
      }
}

TEST_CASE("ssm_dplr: the HiPPO-LegS kernel equals the dense real HiPPO system's power loop", "[ssm_kernel]") {
  const index_t N = 16, L = 300, H = 2;
  const seqmix::HippoLegs hippo = seqmix::hippo_legs(N);
  DplrData data(H, 1, N, 1, true, false, 7);
  // A real C in the original basis, C_dplr = C V so that C_dplr x~ = C x (x = V x~).
  const auto c = st::random_tensor<2>({H, N}, 8);
  for (index_t h = 0; h < H; ++h)
    for (index_t j = 0; j < N; ++j) {
      DplrComplex v = 0.0;
      for (index_t n = 0; n < N; ++n) v += double(c(h, n)) * hippo.V[n * N + j];
      data.Cr(h, j) = float(v.real()), data.Ci(h, j) = float(v.imag());
    }
  Tensor<float, 2> kernel({L, H});
  seqmix::ssm_dplr_kernel(data.params(), kernel.view());
  for (index_t h = 0; h < H; ++h) {
    const double dt = data.dt(h);
    Eigen::MatrixXd A(N, N), I = Eigen::MatrixXd::Identity(N, N);
    Eigen::VectorXd B(N);
    for (index_t n = 0; n < N; ++n) {
      B(n) = std::sqrt(2.0 * n + 1.0);
      for (index_t k = 0; k < N; ++k)
        A(n, k) = n > k ? -std::sqrt((2.0 * n + 1.0) * (2.0 * k + 1.0)) : n == k ? -(n + 1.0) : 0.0;
    }
    const Eigen::PartialPivLU<Eigen::MatrixXd> lu(I - dt / 2 * A);
    const Eigen::MatrixXd A_bar = lu.solve(I + dt / 2 * A);
    Eigen::VectorXd v = lu.solve(dt * B);
    double scale = 0;
    std::vector<double> expected(L);
    for (index_t l = 0; l < L; ++l) {
      double y = 0;
      for (index_t n = 0; n < N; ++n) y += double(c(h, n)) * v(n);
      expected[l] = y, scale = std::max(scale, std::abs(y));
      v = A_bar * v;
    }
    for (index_t l = 0; l < L; ++l) {
      INFO("h=" << h << " l=" << l);
      REQUIRE(std::abs(kernel(l, h) - expected[l]) <= 2e-5 * scale);
    }
  }
}

TEST_CASE("ssm_dplr: the recurrent step equals the convolution with the kernel", "[ssm_kernel]") {
  const index_t B = 2, T = 257, H = 6, N = 16;
  for (int variant = 0; variant < 6; ++variant) {
    const index_t r = variant % 3 == 2 ? 2 : 1, G = variant % 3 == 1 ? 3 : 1;
    const seqmix::SsmKernelOptions options{variant < 3 ? SsmDiscretization::bilinear : SsmDiscretization::zoh,
                                           SsmStateSymmetry::none};
    INFO("variant=" << variant);
    const DplrData data(H, G, N, r, variant % 3 == 0, variant % 3 == 2, 40 + variant);
    Tensor<float, 2> kernel({T, H});
    seqmix::ssm_dplr_kernel(data.params(), kernel.view(), options);
    // Variant 0 steps with the per-call form, the others with a plan built once.
    const seqmix::SsmDplrStepPlan plan = seqmix::ssm_dplr_step_plan(data.params(), options, st::two_thread_pool());
    const Tensor<float, 1> skip = st::random_tensor<1>({H}, 11);
    for (bool impulse : {true, false}) {
      INFO("impulse=" << impulse);
      Tensor<float, 3> u({B, T, H});
      if (impulse) {
        u.fill(0.f);
        for (index_t h = 0; h < H; ++h) u(0, 0, h) = 1.f, u(1, 5, h) = -2.f;
      } else {
        u = st::random_tensor<3>({B, T, H}, 12);
      }
      Tensor<float, 3> y_conv({B, T, H});
      seqmix::long_conv({u.view(), kernel.view(), {}, skip.view()}, {y_conv.view()},
                        {seqmix::LongConvDirection::causal, seqmix::LongConvMethod::fft});
      Tensor<float, 3> xr({B, H, N}), xi({B, H, N}), y_rec({B, T, H});
      xr.fill(0.f), xi.fill(0.f);
      for (index_t t = 0; t < T; ++t) {
        const seqmix::SsmStepOutputs out{y_rec.view().select(1, t), xr.view(), xi.view()};
        if (variant == 0)
          seqmix::ssm_dplr_step({u.view().select(1, t), data.params(), skip.view()}, out, options,
                                st::two_thread_pool());
        else
          seqmix::ssm_dplr_step(plan, u.view().select(1, t), out, skip.view(), st::two_thread_pool());
      }
      if (impulse) {  // row 0 is the kernel plus the skip at t = 0
        for (index_t t = 0; t < T; ++t)
          for (index_t h = 0; h < H; ++h)
            REQUIRE(std::abs(y_rec(0, t, h) - (kernel(t, h) + (t == 0 ? skip(h) : 0.f))) <=
                    2e-5 * (1.0 + std::abs(kernel(0, h))));
      }
      st::require_close("y", y_rec.cview(), y_conv.cview(), 5e-5);
    }
  }
}

TEST_CASE("ssm_dplr: unstable, non-finite and misshapen parameters are refused before any write",
          "[ssm_kernel]") {
  const index_t H = 4, N = 8, L = 16;
  DplrData data(H, 2, N, 2, false, true, 3);
  Tensor<float, 2> kernel({L, H});
  kernel.fill(7.f);
  const seqmix::SsmKernelOptions bilinear{SsmDiscretization::bilinear, SsmStateSymmetry::none};
  const auto refused = [&](const char* argument, const seqmix::SsmDplrParams& p,
                           seqmix::SsmKernelOptions options = {SsmDiscretization::bilinear, SsmStateSymmetry::none}) {
    st::require_shape_error(argument, [&] { seqmix::ssm_dplr_kernel(p, kernel.view(), options); });
    st::require_shape_error(argument, [&] { seqmix::reference::ssm_dplr_kernel(p, kernel.view(), options); });
    for (float v : kernel) REQUIRE(v == 7.f);
  };
  refused("options.symmetry", data.params(), {SsmDiscretization::bilinear, SsmStateSymmetry::conjugate_pairs});
  data.Lr(1, 3) = 0.f;
  refused("Lambda_real", data.params());
  data.Lr(1, 3) = std::numeric_limits<float>::quiet_NaN();
  refused("Lambda_real", data.params());
  data.Lr(1, 3) = -0.5f;
  data.Pi(0, 1, 2) = std::numeric_limits<float>::infinity();
  refused("P_imag", data.params());
  data.Pi(0, 1, 2) = 0.f;
  data.dt(2) = 0.f;
  refused("dt", data.params());
  data.dt(2) = -1.f;
  refused("dt", data.params());
  data.dt(2) = 0.01f;
  // Unstable through the low-rank term: Q = -3 P makes A = Lambda + 3 P P^* (not dissipative).
  Tensor<float, 3> Qr_bad({2, 2, N}), Qi_bad({2, 2, N});
  for (index_t g = 0; g < 2; ++g)
    for (index_t j = 0; j < 2; ++j)
      for (index_t n = 0; n < N; ++n) Qr_bad(g, j, n) = -30.f * data.Pr(g, j, n), Qi_bad(g, j, n) = -30.f * data.Pi(g, j, n);
  seqmix::SsmDplrParams p = data.params();
  p.Q_real = Qr_bad.view(), p.Q_imag = Qi_bad.view();
  refused("Q_real", p);
  // Shapes: rank 5, groups not dividing H, B of the wrong size, Q_imag without Q_real, kernel.
  Tensor<float, 3> P5({2, 5, N});
  P5.fill(0.1f);
  p = data.params(), p.P_real = P5.view(), p.P_imag = {}, p.Q_real = {}, p.Q_imag = {};
  refused("P_real", p);
  Tensor<float, 2> L3({3, N});
  L3.fill(-1.f);
  p = data.params(), p.Lambda_real = L3.view(), p.Lambda_imag = {};
  refused("P_real", p);  // P has G = 2 groups, Lambda 3
  Tensor<float, 2> B_wrong({H, N + 1});
  p = data.params(), p.B_real = B_wrong.view();
  refused("B_real", p);
  p = data.params(), p.Q_real = {};
  refused("Q_imag", p);
  Tensor<float, 2> wrong({L, H + 1});
  st::require_shape_error("kernel", [&] { seqmix::ssm_dplr_kernel(data.params(), wrong.view(), bilinear); });
  st::require_shape_error("kernel", [&] {
    seqmix::ssm_dplr_kernel(data.params(), seqmix::TensorView<float, 2>(data.Cr.data(), {N, H}), bilinear);
  });
  // The step: a wrong state, y overlapping the state, a bad dt; nothing written.
  Tensor<float, 2> u({1, H}), y({1, H});
  Tensor<float, 3> xr({1, H, N}), xi({1, H, N}), xi_bad({1, H, N + 1});
  y.fill(5.f), xr.fill(1.f), xi.fill(1.f);
  st::require_shape_error("state_imag", [&] {
    seqmix::ssm_dplr_step({u.view(), data.params()}, {y.view(), xr.view(), xi_bad.view()}, bilinear);
  });
  st::require_shape_error("y", [&] {
    seqmix::ssm_dplr_step({u.view(), data.params()},
                          {seqmix::TensorView<float, 2>(xr.data(), {1, H}), xr.view(), xi.view()}, bilinear);
  });
  data.dt(1) = std::numeric_limits<float>::infinity();
  st::require_shape_error("dt", [&] {
    seqmix::ssm_dplr_step({u.view(), data.params()}, {y.view(), xr.view(), xi.view()}, bilinear);
  });
  data.dt(1) = 0.02f;
  // The plan form: an empty plan, a u of the wrong width, y overlapping u.
  const seqmix::SsmDplrStepPlan plan = seqmix::ssm_dplr_step_plan(data.params(), bilinear);
  Tensor<float, 2> u_wide({1, H + 1});
  st::require_shape_error("plan", [&] {
    seqmix::ssm_dplr_step(seqmix::SsmDplrStepPlan{}, u.view(), {y.view(), xr.view(), xi.view()});
  });
  st::require_shape_error("u", [&] { seqmix::ssm_dplr_step(plan, u_wide.view(), {y.view(), xr.view(), xi.view()}); });
  st::require_shape_error("y", [&] { seqmix::ssm_dplr_step(plan, y.view(), {y.view(), xr.view(), xi.view()}); });
  st::require_shape_error("state_imag", [&] {
    seqmix::ssm_dplr_step(plan, u.view(), {y.view(), xr.view(), xi_bad.view()});
  });
  for (float v : y) REQUIRE(v == 5.f);
  for (float v : xr) REQUIRE(v == 1.f);
}

}  // namespace
