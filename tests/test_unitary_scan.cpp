// matrix_scan's complex unitary case (unitary_transitions): the blocks are the real form of a
// unitary U that solves the Cayley equation (I - S) U = (I + S) with S = i G from the caller's
// parameters; the real blocks are orthogonal to float rounding; N = 1 is the phase e^{i 2 atan
// theta}; matrix_scan over them equals the complex recurrence z_t = U_t z_{t-1} + x_t computed
// here in complex double, and with x = 0 keeps |z| to rounding over up to 65536 tokens; bad
// arguments are refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

#include "seqmix/ssm.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;
using UnitaryComplex = std::complex<double>;

// U of block (b, t, h) read back from the real form [[Re U, -Im U], [Im U, Re U]], after checking
// that the four quadrants agree exactly (they are written from the same rounded values).
std::vector<UnitaryComplex> unitary_read_block(const Tensor<float, 5>& A, index_t b, index_t t, index_t h) {
  const index_t N = A.size(3) / 2;
  std::vector<UnitaryComplex> U(static_cast<std::size_t>(N * N));
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < N; ++j) {
      REQUIRE(A(b, t, h, i, j) == A(b, t, h, N + i, N + j));
      REQUIRE(A(b, t, h, i, N + j) == -A(b, t, h, N + i, j));
      U[static_cast<std::size_t>(i * N + j)] = UnitaryComplex(A(b, t, h, i, j), A(b, t, h, N + i, j));
    }
  return U;
}

// S = i G from the parameters as the header comment defines G (written out here again).
std::vector<UnitaryComplex> unitary_generator(const Tensor<float, 4>& theta, index_t b, index_t t, index_t h,
                                              index_t N) {
  std::vector<UnitaryComplex> G(static_cast<std::size_t>(N * N));
  for (index_t j = 0; j < N; ++j) G[static_cast<std::size_t>(j * N + j)] = theta(b, t, h, j);
  index_t k = N;
  for (index_t p = 0; p < N; ++p)
    for (index_t q = p + 1; q < N; ++q, k += 2) {
      G[static_cast<std::size_t>(p * N + q)] = UnitaryComplex(theta(b, t, h, k), theta(b, t, h, k + 1));
      G[static_cast<std::size_t>(q * N + p)] = UnitaryComplex(theta(b, t, h, k), -theta(b, t, h, k + 1));
    }
  for (auto& g : G) g *= UnitaryComplex(0.0, 1.0);
  return G;
}

}  // namespace

TEST_CASE("unitary_transitions solve the Cayley equation and are unitary", "[matrix_scan][unitary]") {
  for (const index_t N : {1, 2, 3, 5, 8}) {
    INFO("N=" << N);
    const index_t B = 2, T = 9, H = 2;
    const Tensor<float, 4> theta = st::random_tensor<4>({B, T, H, N * N}, 700 + std::uint64_t(N), -2.f, 2.f);
    Tensor<float, 5> A({B, T, H, 2 * N, 2 * N});
    seqmix::unitary_transitions(theta.view(), A.view(), st::two_thread_pool());
    double cayley = 0.0, unitary = 0.0, orthogonal = 0.0;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < H; ++h) {
          const auto U = unitary_read_block(A, b, t, h);
          const auto S = unitary_generator(theta, b, t, h, N);
          for (index_t i = 0; i < N; ++i)
            for (index_t j = 0; j < N; ++j) {
              // (I - S) U - (I + S), and U^H U - I.
              UnitaryComplex lhs = 0.0, uhu = 0.0;
              for (index_t k = 0; k < N; ++k) {
                const UnitaryComplex ik = i == k ? 1.0 : 0.0;
                lhs += (ik - S[static_cast<std::size_t>(i * N + k)]) * U[static_cast<std::size_t>(k * N + j)];
                uhu += std::conj(U[static_cast<std::size_t>(k * N + i)]) * U[static_cast<std::size_t>(k * N + j)];
              }
              const UnitaryComplex rhs = (i == j ? 1.0 : 0.0) + S[static_cast<std::size_t>(i * N + j)];
              cayley = std::max(cayley, std::abs(lhs - rhs));
              unitary = std::max(unitary, std::abs(uhu - (i == j ? 1.0 : 0.0)));
            }
          // The real form itself: A^T A = I.
          for (index_t i = 0; i < 2 * N; ++i)
            for (index_t j = 0; j < 2 * N; ++j) {
              double s = 0.0;
              for (index_t k = 0; k < 2 * N; ++k) s += double(A(b, t, h, k, i)) * A(b, t, h, k, j);
              orthogonal = std::max(orthogonal, std::fabs(s - (i == j ? 1.0 : 0.0)));
            }
        }
    // float rounding of U's entries, times |I - S| (entries up to ~2N) for the Cayley residual.
    CHECK(cayley < 1e-6 * (1.0 + 4.0 * double(N)));
    CHECK(unitary < 1e-6);
    CHECK(orthogonal < 1e-6);
  }
  // N = 1: the phase e^{i phi}, phi = 2 atan(theta).
  Tensor<float, 4> theta({1, 1, 1, 1});
  theta(0, 0, 0, 0) = 0.6f;
  Tensor<float, 5> A({1, 1, 1, 2, 2});
  seqmix::unitary_transitions(theta.view(), A.view());
  const double phi = 2.0 * std::atan(0.6);
  CHECK(A(0, 0, 0, 0, 0) == Approx(std::cos(phi)).margin(1e-7));
  CHECK(A(0, 0, 0, 1, 0) == Approx(std::sin(phi)).margin(1e-7));
  CHECK(A(0, 0, 0, 0, 1) == Approx(-std::sin(phi)).margin(1e-7));
}

TEST_CASE("matrix_scan over unitary blocks equals the complex recurrence", "[matrix_scan][unitary]") {
  for (const index_t N : {1, 2, 4, 8}) {
    INFO("N=" << N);
    const index_t B = 2, T = 53, H = 3, N2 = 2 * N;
    const Tensor<float, 4> theta = st::random_tensor<4>({B, T, H, N * N}, 800 + std::uint64_t(N), -1.5f, 1.5f);
    Tensor<float, 5> A({B, T, H, N2, N2});
    seqmix::unitary_transitions(theta.view(), A.view());
    const Tensor<float, 4> x = st::random_tensor<4>({B, T, H, N2}, 810 + std::uint64_t(N));
    const Tensor<float, 3> h0 = st::random_tensor<3>({B, H, N2}, 820 + std::uint64_t(N));
    Tensor<float, 4> h_all({B, T, H, N2});
    seqmix::matrix_scan({A.cview(), x.cview(), h0.cview()}, {h_all.view(), {}});
    double worst = 0.0;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h) {
        std::vector<UnitaryComplex> z(static_cast<std::size_t>(N)), next(static_cast<std::size_t>(N));
        for (index_t i = 0; i < N; ++i) z[static_cast<std::size_t>(i)] = UnitaryComplex(h0(b, h, i), h0(b, h, N + i));
        for (index_t t = 0; t < T; ++t) {
          const auto U = unitary_read_block(A, b, t, h);
          for (index_t i = 0; i < N; ++i) {
            UnitaryComplex s(x(b, t, h, i), x(b, t, h, N + i));
            for (index_t j = 0; j < N; ++j) s += U[static_cast<std::size_t>(i * N + j)] * z[static_cast<std::size_t>(j)];
            next[static_cast<std::size_t>(i)] = s;
          }
          z.swap(next);
          for (index_t i = 0; i < N; ++i) {
            worst = std::max(worst, std::fabs(h_all(b, t, h, i) - z[static_cast<std::size_t>(i)].real()));
            worst = std::max(worst, std::fabs(h_all(b, t, h, N + i) - z[static_cast<std::size_t>(i)].imag()));
          }
        }
      }
    // |z| grows like sqrt(t) (a random walk of unit-scale inputs); float rounding relative to it.
    CHECK(worst < 2e-5 * std::sqrt(double(T)) * double(N));
  }
}

TEST_CASE("matrix_scan over unitary blocks keeps the norm for 65536 tokens", "[matrix_scan][unitary]") {
  for (const index_t N : {1, 2, 4}) {
    const index_t T = st::small_test_scale() ? 4096 : 65536, H = 1, N2 = 2 * N;
    INFO("N=" << N << " T=" << T);
    const Tensor<float, 4> theta = st::random_tensor<4>({1, T, H, N * N}, 900 + std::uint64_t(N), -3.f, 3.f);
    Tensor<float, 5> A({1, T, H, N2, N2});
    seqmix::unitary_transitions(theta.view(), A.view(), st::two_thread_pool());
    const Tensor<float, 4> x({1, T, H, N2});  // zeros: the state only rotates
    const Tensor<float, 3> h0 = st::random_tensor<3>({1, H, N2}, 910 + std::uint64_t(N));
    for (const auto split : {seqmix::MatrixScanSplit::heads, seqmix::MatrixScanSplit::time}) {
      seqmix::MatrixScanOptions options;
      options.split = split;
      Tensor<float, 3> last({1, H, N2});
      seqmix::matrix_scan({A.cview(), x.cview(), h0.cview()}, {{}, last.view()}, options, st::two_thread_pool());
      for (index_t h = 0; h < H; ++h) {
        double n0 = 0.0, n1 = 0.0;
        for (index_t i = 0; i < N2; ++i)
          n0 += double(h0(0, h, i)) * h0(0, h, i), n1 += double(last(0, h, i)) * last(0, h, i);
        INFO("split " << static_cast<int>(split) << " head " << h << " |h0| " << std::sqrt(n0) << " |h_T| "
                      << std::sqrt(n1));
        // A random walk of T roundings of a unit-norm map, about 2N eps each.
        CHECK(std::fabs(std::sqrt(n1) - std::sqrt(n0)) <= 1e-6 * double(N2) * std::sqrt(double(T)) * std::sqrt(n0));
      }
    }
  }
}

TEST_CASE("unitary_transitions refuse bad arguments before any write", "[matrix_scan][unitary][errors]") {
  const index_t B = 1, T = 3, H = 2, N = 2;
  Tensor<float, 4> theta = st::random_tensor<4>({B, T, H, N * N}, 950);
  Tensor<float, 5> A({B, T, H, 2 * N, 2 * N});
  A.fill(-7.f);
  Tensor<float, 5> odd({B, T, H, 3, 3});
  odd.fill(-7.f);
  st::require_shape_error("A", [&] { seqmix::unitary_transitions(theta.view(), odd.view()); });
  const Tensor<float, 4> theta_short({B, T, H, N * N - 1});
  st::require_shape_error("theta", [&] { seqmix::unitary_transitions(theta_short.view(), A.view()); });
  theta(0, 2, 1, 3) = std::nanf("");
  st::require_shape_error("theta", [&] { seqmix::unitary_transitions(theta.view(), A.view()); });
  theta(0, 2, 1, 3) = INFINITY;
  st::require_shape_error("theta", [&] { seqmix::unitary_transitions(theta.view(), A.view()); });
  for (const float v : A) REQUIRE(v == -7.f);
  for (const float v : odd) REQUIRE(v == -7.f);
}
