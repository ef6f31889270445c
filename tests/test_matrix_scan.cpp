// matrix_scan: the fast prefill (heads and time splits, packed and strided blocks) and the step
// against the double recurrence for block sizes 1..16; the matrix monoid under associative_scan;
// orthogonal transitions keep |h| to rounding; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/core/scan.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::MatrixScanSplit;
using seqmix::Tensor;
namespace st = seqmix::testing;

// A contracting system: A = 0.5 I + U(-0.5, 0.5) / N has row sums of |A| at most 1.
struct MatrixScanData {
  Tensor<float, 5> A;
  Tensor<float, 4> x;
  Tensor<float, 3> h0;

  MatrixScanData(index_t B, index_t T, index_t H, index_t N, std::uint64_t seed)
      : A(st::random_tensor<5>({B, T, H, N, N}, seed, -0.5f / float(N), 0.5f / float(N))),
        x(st::random_tensor<4>({B, T, H, N}, seed + 1)),
        h0(st::random_tensor<3>({B, H, N}, seed + 2)) {
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t i = 0; i < N; ++i) A(b, t, h, i, i) += 0.5f;
  }
};

struct MatrixScanCase {
  index_t B, T, H, N;
};

void matrix_scan_compare(const MatrixScanData& d, bool with_h0, const seqmix::MatrixScanOptions& options,
                         const seqmix::Executor& executor, double tol) {
  const index_t B = d.A.size(0), T = d.A.size(1), H = d.A.size(2), N = d.A.size(3);
  seqmix::MatrixScanInputs in{d.A.view(), d.x.view(), with_h0 ? d.h0.cview() : seqmix::ConstView<float, 3>{}};
  Tensor<float, 4> h_all({B, T, H, N}), ref_all({B, T, H, N});
  Tensor<float, 3> h_last({B, H, N}), ref_last({B, H, N});
  seqmix::reference::matrix_scan(in, {ref_all.view(), ref_last.view()});
  seqmix::matrix_scan(in, {h_all.view(), h_last.view()}, options, executor);
  st::require_close("h_all", h_all.cview(), ref_all.cview(), tol);
  st::require_close("h_last", h_last.cview(), ref_last.cview(), tol);
  // Last state only (the time split then reduces every chunk and has no pass 3).
  Tensor<float, 3> only_last({B, H, N});
  seqmix::matrix_scan(in, {{}, only_last.view()}, options, executor);
  st::require_close("h_last alone", only_last.cview(), ref_last.cview(), tol);
}

TEST_CASE("matrix_scan: fast prefill matches the double recurrence for blocks 1..16", "[matrix_scan]") {
  const auto& pool = st::two_thread_pool();
  for (index_t N = 1; N <= 16; ++N) {
    const MatrixScanCase cases[] = {{1, 1, 1, N}, {2, 37, 3, N}, {1, 300, 1, N}};
    for (const auto& c : cases) {
      INFO("B=" << c.B << " T=" << c.T << " H=" << c.H << " N=" << c.N);
      const MatrixScanData d(c.B, c.T, c.H, c.N, 100 + static_cast<std::uint64_t>(N));
      seqmix::MatrixScanOptions heads, time;
      heads.split = MatrixScanSplit::heads;
      time.split = MatrixScanSplit::time;
      time.chunk_size = 29;  // ragged chunks, many more than threads
      matrix_scan_compare(d, true, heads, seqmix::serial_executor(), 1e-5);
      matrix_scan_compare(d, false, heads, pool, 1e-5);
      matrix_scan_compare(d, true, time, pool, 1e-5);
      matrix_scan_compare(d, false, {}, pool, 1e-5);
    }
  }
}

TEST_CASE("matrix_scan: long sequences on the time split (4x4 and 16x16 blocks)", "[matrix_scan]") {
  const index_t T = st::small_test_scale() ? 4096 : 65536;
  for (const index_t N : {4, 16}) {
    INFO("T=" << T << " N=" << N);
    const MatrixScanData d(1, T, 1, N, 7);
    seqmix::MatrixScanOptions time;
    time.split = MatrixScanSplit::time;
    matrix_scan_compare(d, true, time, st::two_thread_pool(), 1e-5);
  }
}

TEST_CASE("matrix_scan: the time split's rescale test reads the product's peak as std::max does", "[matrix_scan]") {
  // matrix_scan_abs_peak is vectorized; a NaN entry must be passed over (std::max(peak, NaN) keeps
  // peak) wherever it falls, or a product holding one would never be rescaled again.
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (index_t count = 1; count <= 70; ++count)
    for (index_t special = -1; special < count; ++special) {
      std::vector<float> prod(static_cast<std::size_t>(count));
      for (index_t i = 0; i < count; ++i) prod[static_cast<std::size_t>(i)] = std::ldexp(float(i % 7) - 3.f, -70);
      if (special >= 0) prod[static_cast<std::size_t>(special)] = special % 3 == 0 ? nan : special % 3 == 1 ? -inf : -1.f;
      float expected = 0.f;
      for (const float v : prod) expected = std::max(expected, std::fabs(v));
      INFO("count=" << count << " special=" << special);
      CHECK(seqmix::detail::matrix_scan_abs_peak(prod.data(), count) == expected);
    }
}

TEST_CASE("matrix_scan: strided (non-packed) blocks take the scalar kernel", "[matrix_scan]") {
  const index_t B = 2, T = 33, H = 3, N = 4;
  const MatrixScanData d(B, T, H, N, 11);
  // The transposed blocks: strides of the last two dims swapped.
  auto s = d.A.cview().strides();
  std::swap(s[3], s[4]);
  const seqmix::ConstView<float, 5> At(d.A.data(), d.A.shape(), s);
  seqmix::MatrixScanInputs in{At, d.x.view(), d.h0.view()};
  Tensor<float, 4> h_all({B, T, H, N}), ref_all({B, T, H, N});
  seqmix::reference::matrix_scan(in, {ref_all.view(), {}});
  for (const auto split : {MatrixScanSplit::heads, MatrixScanSplit::time}) {
    seqmix::MatrixScanOptions options;
    options.split = split;
    options.chunk_size = 8;
    seqmix::matrix_scan(in, {h_all.view(), {}}, options, st::two_thread_pool());
    st::require_close("h_all", h_all.cview(), ref_all.cview(), 1e-5);
  }
}

TEST_CASE("matrix_scan: prefill then steps equals one call, h_last may be h0", "[matrix_scan]") {
  for (const index_t N : {3, 5, 16}) {
    const index_t B = 2, T = 40, H = 3, split_at = 25;
    INFO("N=" << N);
    const MatrixScanData d(B, T, H, N, 21);
    Tensor<float, 3> full_last({B, H, N});
    seqmix::reference::matrix_scan({d.A.view(), d.x.view(), d.h0.view()}, {{}, full_last.view()});
    // The prefill carries the state in place (h_last is the very h0 view), then one step a token.
    Tensor<float, 3> state = d.h0;
    seqmix::matrix_scan({d.A.cview().slice(1, 0, split_at), d.x.cview().slice(1, 0, split_at), state.cview()},
                        {{}, state.view()});
    for (index_t t = split_at; t < T; ++t)
      seqmix::matrix_scan_step({d.A.cview().select(1, t), d.x.cview().select(1, t)}, state.view(),
                               st::two_thread_pool());
    st::require_close("state", state.cview(), full_last.cview(), 1e-5);
  }
}

TEST_CASE("matrix_scan: the matrix monoid under associative_scan equals the sequential fold", "[matrix_scan]") {
  constexpr int N = 3;
  const index_t T = 5000;  // above the generic scan's parallel threshold
  const MatrixScanData d(1, T, 1, N, 31);
  std::vector<seqmix::MatrixAffineMap<N>> maps(static_cast<std::size_t>(T));
  for (index_t t = 0; t < T; ++t)
    for (int i = 0; i < N; ++i) {
      maps[t].x[i] = d.x(0, t, 0, i);
      for (int j = 0; j < N; ++j) maps[t].A[i * N + j] = d.A(0, t, 0, i, j);
    }
  seqmix::associative_scan(seqmix::MatrixAffineMonoid<N>(), maps.data(), maps.data(), T, st::two_thread_pool());
  Tensor<float, 4> ref({1, T, 1, N});
  seqmix::reference::matrix_scan({d.A.view(), d.x.view(), d.h0.view()}, {ref.view(), {}});
  Tensor<float, 4> got({1, T, 1, N});
  for (index_t t = 0; t < T; ++t)
    for (int i = 0; i < N; ++i) {
      float s = maps[t].x[i];
      for (int j = 0; j < N; ++j) s += maps[t].A[i * N + j] * d.h0(0, 0, j);
      got(0, t, 0, i) = s;
    }
  st::require_close("prefix maps applied to h0", got.cview(), ref.cview(), 1e-5);
}

TEST_CASE("matrix_scan: orthogonal transitions preserve the norm", "[matrix_scan]") {
  for (const auto kind : {seqmix::OrthogonalParametrization::cayley, seqmix::OrthogonalParametrization::givens})
    for (const index_t N : {1, 2, 4, 7, 16}) {
      // 65536 tokens where building the blocks is cheap; Cayley's solve at N = 16 costs ~10 us.
      const index_t T = st::small_test_scale() ? 1024 : N <= 4 ? 65536 : 4096;
      INFO("T=" << T << " N=" << N << " parametrization " << static_cast<int>(kind));
      const index_t H = 2, K = N * (N - 1) / 2;
      const Tensor<float, 4> theta = st::random_tensor<4>({1, T, H, K}, 41, -3.f, 3.f);
      Tensor<float, 5> A({1, T, H, N, N});
      seqmix::OrthogonalOptions options;
      options.parametrization = kind;
      seqmix::orthogonal_transitions(theta.view(), A.view(), options, st::two_thread_pool());
      // A^T A = I to float rounding, on a few blocks.
      double worst = 0.0;
      for (const index_t t : {index_t{0}, T / 2, T - 1})
        for (index_t i = 0; i < N; ++i)
          for (index_t j = 0; j < N; ++j) {
            double s = 0.0;
            for (index_t k = 0; k < N; ++k) s += double(A(0, t, 1, k, i)) * A(0, t, 1, k, j);
            worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
          }
      CHECK(worst < 1e-6);
      // With x = 0 the state only rotates: |h_T| = |h0| up to T roundings of a unit-norm map.
      const Tensor<float, 4> x({1, T, H, N});  // zeros
      const Tensor<float, 3> h0 = st::random_tensor<3>({1, H, N}, 43);
      Tensor<float, 3> last({1, H, N});
      seqmix::matrix_scan({A.view(), x.view(), h0.view()}, {{}, last.view()});
      for (index_t h = 0; h < H; ++h) {
        double n0 = 0.0, n1 = 0.0;
        for (index_t i = 0; i < N; ++i) n0 += double(h0(0, h, i)) * h0(0, h, i), n1 += double(last(0, h, i)) * last(0, h, i);
        // Each step rounds by about N eps in a random direction: a random walk of T steps.
        CHECK(std::fabs(std::sqrt(n1) - std::sqrt(n0)) <= 1e-6 * double(N) * std::sqrt(double(T)) * std::sqrt(n0));
      }
    }
}

TEST_CASE("matrix_scan: Givens and Cayley blocks match their definitions", "[matrix_scan]") {
  // N = 2: both are the rotation by an angle: Givens by theta, Cayley by 2 atan(theta).
  const float theta_value = 0.7f;
  const Tensor<float, 4> theta = [&] {
    Tensor<float, 4> t({1, 1, 1, 1});
    t(0, 0, 0, 0) = theta_value;
    return t;
  }();
  for (const auto kind : {seqmix::OrthogonalParametrization::cayley, seqmix::OrthogonalParametrization::givens}) {
    Tensor<float, 5> A({1, 1, 1, 2, 2});
    seqmix::OrthogonalOptions options;
    options.parametrization = kind;
    seqmix::orthogonal_transitions(theta.view(), A.view(), options);
    const double angle = kind == seqmix::OrthogonalParametrization::givens ? theta_value : 2.0 * std::atan(theta_value);
    CHECK(A(0, 0, 0, 0, 0) == Approx(std::cos(angle)).margin(1e-7));
    CHECK(A(0, 0, 0, 0, 1) == Approx(-std::sin(angle)).margin(1e-7));
    CHECK(A(0, 0, 0, 1, 0) == Approx(std::sin(angle)).margin(1e-7));
    CHECK(A(0, 0, 0, 1, 1) == Approx(std::cos(angle)).margin(1e-7));
  }
}

TEST_CASE("matrix_scan: bad arguments refused before any write", "[matrix_scan]") {
  const index_t B = 2, T = 5, H = 2, N = 3;
  const MatrixScanData d(B, T, H, N, 51);
  Tensor<float, 4> h_all({B, T, H, N});
  Tensor<float, 3> h_last({B, H, N});
  h_all.fill(-7.f), h_last.fill(-7.f);
  const auto untouched = [&] {
    for (const float v : h_all) REQUIRE(v == -7.f);
    for (const float v : h_last) REQUIRE(v == -7.f);
  };
  const Tensor<float, 5> A_rect({B, T, H, N, N + 1});
  const Tensor<float, 4> x_short({B, T - 1, H, N});
  const Tensor<float, 3> h0_bad({B, H + 1, N});
  st::require_shape_error("A", [&] { seqmix::matrix_scan({A_rect.view(), d.x.view()}, {h_all.view(), h_last.view()}); });
  st::require_shape_error("x", [&] { seqmix::matrix_scan({d.A.view(), x_short.view()}, {h_all.view(), h_last.view()}); });
  st::require_shape_error("h0", [&] { seqmix::matrix_scan({d.A.view(), d.x.view(), h0_bad.view()}, {h_all.view(), h_last.view()}); });
  st::require_shape_error("h_all", [&] { seqmix::matrix_scan({d.A.view(), d.x.view()}, {}); });
  seqmix::MatrixScanOptions bad;
  bad.chunk_size = -1;
  st::require_shape_error("options.chunk_size", [&] { seqmix::matrix_scan({d.A.view(), d.x.view()}, {h_all.view(), {}}, bad); });
  untouched();
  // An output over an input: h_all written on top of x.
  Tensor<float, 4> x_copy = d.x;
  st::require_shape_error("h_all", [&] { seqmix::matrix_scan({d.A.view(), x_copy.view()}, {x_copy.view(), {}}); });
  Tensor<float, 3> state({B, H, N});
  state.fill(-7.f);
  st::require_shape_error("x", [&] {
    seqmix::matrix_scan_step({d.A.cview().select(1, 0), h0_bad.view()}, state.view());
  });
  for (const float v : state) REQUIRE(v == -7.f);
  Tensor<float, 4> theta({B, T, H, 3});
  theta(1, 2, 1, 0) = std::nanf("");
  Tensor<float, 5> A_out({B, T, H, N, N});
  A_out.fill(-7.f);
  st::require_shape_error("theta", [&] { seqmix::orthogonal_transitions(theta.view(), A_out.view()); });
  const Tensor<float, 4> theta_wrong({B, T, H, 2});
  st::require_shape_error("theta", [&] { seqmix::orthogonal_transitions(theta_wrong.view(), A_out.view()); });
  for (const float v : A_out) REQUIRE(v == -7.f);
}

}  // namespace
