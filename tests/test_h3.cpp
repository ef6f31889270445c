// h3: the fast prefill (each method of its long convolutions) against the reference (direct
// convolutions in double) over T, heads, head sizes on both sides of the value-block width,
// shift and diagonal filter lengths, q/k/v strided out of one [B,T,3HP] projection; bad
// arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/h3_case.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LongConvMethod;
using seqmix::Tensor;
namespace st = seqmix::testing;

using st::H3Case;

// q, k, v are column blocks of one [B,T,3HP] buffer (strided [B,T,H,P] views). The diagonal
// filter is scaled by 1/sqrt(L) so outputs stay O(P) at every length.
struct H3Data {
  Tensor<float, 3> proj;
  Tensor<float, 2> shift, diag;

  explicit H3Data(const H3Case& c)
      : proj(st::random_tensor<3>({c.B, c.T, 3 * c.H * c.P}, c.seed)),
        shift(st::random_tensor<2>({c.Ls, c.H * c.P}, c.seed + 1)),
        diag(st::random_tensor<2>({c.L, c.H * c.P}, c.seed + 2, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))) {}

  seqmix::ConstView<float, 4> part(const H3Case& c, index_t which) const {
    const index_t row = 3 * c.H * c.P;
    return seqmix::ConstView<float, 4>(proj.data() + which * c.H * c.P, {c.B, c.T, c.H, c.P}, {c.T * row, row, c.P, 1});
  }
  seqmix::H3Inputs inputs(const H3Case& c) const { return {part(c, 0), part(c, 1), part(c, 2), shift.view(), diag.view()}; }
};

// P = 17 and 20 split the values into a full and a partial block (256 / P columns per block).
std::vector<H3Case> h3_cases() {
  std::vector<H3Case> cases;
  std::uint64_t seed = 1;
  const index_t Ps[] = {1, 3, 5, 8, 17};
  for (index_t T : {1, 7, 64, 300})
    for (index_t L : {T, std::max<index_t>(1, T / 2 + 1), std::min<index_t>(3, T)}) {
      const index_t P = Ps[seed % 5];
      cases.push_back({seed % 3 == 0 ? 2 : 1, T, 1 + index_t(seed % 3), P, 1 + index_t(seed % 4), L, seed});
      ++seed;
    }
  cases.push_back({2, 100, 2, 20, 4, 100, 98});
  cases.push_back({1, 65, 1, 64, 2, 65, 99});  // 64-wide heads: blocks of 4 value columns
  return cases;
}

TEST_CASE("h3: the fast prefill matches the reference", "[h3]") {
  for (const H3Case& c : h3_cases()) {
    INFO(c.describe());
    const H3Data data(c);
    Tensor<float, 4> ref({c.B, c.T, c.H, c.P});
    seqmix::reference::h3(data.inputs(c), {ref.view()});
    for (LongConvMethod method : {LongConvMethod::direct, LongConvMethod::fft, LongConvMethod::automatic}) {
      INFO("method " << int(method));
      Tensor<float, 4> y({c.B, c.T, c.H, c.P});
      seqmix::h3(data.inputs(c), {y.view()}, {method}, c.seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("y", y.cview(), ref.cview(), 3e-5);
    }
  }
}

TEST_CASE("h3: one head of size 1 is q * diag (*) ((shift (*) k) v)", "[h3]") {
  const index_t T = 23;
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, 1, 1}, 1), k = st::random_tensor<4>({1, T, 1, 1}, 2),
                         v = st::random_tensor<4>({1, T, 1, 1}, 3);
  const Tensor<float, 2> shift = st::random_tensor<2>({3, 1}, 4), diag = st::random_tensor<2>({T, 1}, 5);
  Tensor<float, 4> y({1, T, 1, 1});
  seqmix::h3({q.view(), k.view(), v.view(), shift.view(), diag.view()}, {y.view()});
  for (index_t t = 0; t < T; ++t) {
    double kv = 0.0;
    for (index_t s = 0; s <= t; ++s) {
      double kbar = 0.0;
      for (index_t r = 0; r < 3 && r <= t - s; ++r) kbar += double(shift(r, 0)) * k(0, t - s - r, 0, 0);
      kv += double(diag(s, 0)) * kbar * v(0, t - s, 0, 0);
    }
    REQUIRE(y(0, t, 0, 0) == Approx(q(0, t, 0, 0) * kv).margin(1e-5));
  }
}

TEST_CASE("h3: bad arguments are refused before any write", "[h3]") {
  const index_t B = 2, T = 12, H = 2, P = 3;
  const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, P}, 1), k = st::random_tensor<4>({B, T, H, P}, 2),
                         v = st::random_tensor<4>({B, T, H, P}, 3), k_wrong({B, T, H, P + 1});
  const Tensor<float, 2> shift = st::random_tensor<2>({4, H * P}, 4), diag = st::random_tensor<2>({T, H * P}, 5);
  const Tensor<float, 2> wide({T, H * P + 1}), empty({0, H * P});
  Tensor<float, 4> y({B, T, H, P}), y_wrong({B, T + 1, H, P});
  y.fill(7.f);
  for (LongConvMethod m : {LongConvMethod::automatic, LongConvMethod::direct, LongConvMethod::fft}) {
    const seqmix::H3Options opt{m};
    st::require_shape_error("k", [&] { seqmix::h3({q.view(), k_wrong.view(), v.view(), shift.view(), diag.view()}, {y.view()}, opt); });
    st::require_shape_error("shift_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), wide.view(), diag.view()}, {y.view()}, opt); });
    st::require_shape_error("shift_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), empty.view(), diag.view()}, {y.view()}, opt); });
    st::require_shape_error("diag_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), shift.view(), wide.view()}, {y.view()}, opt); });
    st::require_shape_error("diag_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), shift.view(), empty.view()}, {y.view()}, opt); });
    st::require_shape_error("y", [&] { seqmix::h3({q.view(), k.view(), v.view(), shift.view(), diag.view()}, {y_wrong.view()}, opt); });
    Tensor<float, 4> q_copy = q;
    st::require_shape_error("y", [&] { seqmix::h3({q_copy.view(), k.view(), v.view(), shift.view(), diag.view()}, {q_copy.view()}, opt); });
    Tensor<float, 2> bad = diag;
    bad(T - 1, H * P - 1) = std::numeric_limits<float>::quiet_NaN();
    st::require_shape_error("diag_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), shift.view(), bad.view()}, {y.view()}, opt); });
    Tensor<float, 2> bad_shift = shift;
    bad_shift(0, 0) = std::numeric_limits<float>::infinity();
    st::require_shape_error("shift_filter", [&] { seqmix::h3({q.view(), k.view(), v.view(), bad_shift.view(), diag.view()}, {y.view()}, opt); });
    for (float value : y) REQUIRE(value == 7.f);
  }
  st::require_shape_error("options.method", [&] {
    seqmix::h3({q.view(), k.view(), v.view(), shift.view(), diag.view()}, {y.view()}, {static_cast<LongConvMethod>(5)});
  });
  st::require_shape_error("k", [&] { seqmix::reference::h3({q.view(), k_wrong.view(), v.view(), shift.view(), diag.view()}, {y.view()}); });
  for (float value : y) REQUIRE(value == 7.f);
}

}  // namespace

TEST_CASE("h3_step over a sequence equals the prefill with the SSM's kernel", "[h3]") {
  const index_t B = 2, T = 40, H = 2, P = 3, Ls = 3, N = 4, D = H * P;
  Tensor<float, 2> A_real({D, N}), A_imag({D, N}), B_real({D, N}), C_real = st::random_tensor<2>({D, N}, 51),
                   C_imag = st::random_tensor<2>({D, N}, 52);
  Tensor<float, 1> dt({D}), skip = st::random_tensor<1>({D}, 53);
  seqmix::ssm_init_diagonal(seqmix::SsmInit::s4d_lin, A_real.view(), A_imag.view());
  for (index_t c = 0; c < D; ++c) {
    dt(c) = 0.05f + 0.03f * static_cast<float>(c);
    for (index_t n = 0; n < N; ++n) B_real(c, n) = 1.f;
  }
  const seqmix::SsmParams params{A_real.cview(), A_imag.cview(), B_real.cview(), {}, C_real.cview(), C_imag.cview(), dt.cview()};
  // Prefill: the diagonal SSM as its kernel (tap 0 carries the skip), the shift SSM as a filter.
  Tensor<float, 2> diag({T, D});
  seqmix::reference::ssm_kernel(params, diag.view());
  for (index_t c = 0; c < D; ++c) diag(0, c) += skip(c);
  const auto shift = st::random_tensor<2>({Ls, D}, 54);
  const auto q = st::random_tensor<4>({B, T, H, P}, 55), k = st::random_tensor<4>({B, T, H, P}, 56),
             v = st::random_tensor<4>({B, T, H, P}, 57);
  Tensor<float, 4> want({B, T, H, P});
  seqmix::reference::h3({q.cview(), k.cview(), v.cview(), shift.cview(), diag.cview()}, {want.view()});
  // Decode: the discretized system stepped token by token.
  Tensor<float, 2> Ab_r({D, N}), Ab_i({D, N}), Bb_r({D, N}), Bb_i({D, N});
  seqmix::ssm_discretize(params, {Ab_r.view(), Ab_i.view(), Bb_r.view(), Bb_i.view()});
  Tensor<float, 3> shift_state({B, Ls - 1, D}), y({B, H, P});
  Tensor<float, 4> xr({B, D, P, N}), xi({B, D, P, N});
  auto token = [&](const Tensor<float, 4>& x, index_t t) {
    return seqmix::ConstView<float, 3>(x.data() + t * H * P, {B, H, P}, {T * H * P, P, 1});
  };
  double worst = 0, scale = 1;
  for (index_t t = 0; t < T; ++t) {
    seqmix::H3StepInputs in{token(q, t), token(k, t), token(v, t), shift.cview(), Ab_r.cview(), Ab_i.cview(),
                            Bb_r.cview(), Bb_i.cview(), C_real.cview(), C_imag.cview(), skip.cview()};
    seqmix::h3_step(in, {y.view(), shift_state.view(), xr.view(), xi.view()}, {}, st::two_thread_pool());
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < P; ++j) {
          worst = std::max(worst, std::abs(double(y(b, h, j)) - want(b, t, h, j)));
          scale = std::max(scale, std::abs(double(want(b, t, h, j))));
        }
  }
  INFO("max |step - prefill| = " << worst << " at outputs up to " << scale);
  REQUIRE(worst <= 1e-4 * scale);
  // A bad state shape is refused before the state or y changes.
  Tensor<float, 3> wrong({B, Ls, D});
  const float y0 = y(0, 0, 0), x0 = xr(0, 0, 0, 0);
  seqmix::H3StepInputs in{token(q, 0), token(k, 0), token(v, 0), shift.cview(), Ab_r.cview(), Ab_i.cview(),
                          Bb_r.cview(), Bb_i.cview(), C_real.cview(), C_imag.cview(), skip.cview()};
  st::require_shape_error("shift_state", [&] { seqmix::h3_step(in, {y.view(), wrong.view(), xr.view(), xi.view()}); });
  Tensor<float, 2> A_short({D, N - 1});
  seqmix::H3StepInputs bad = in;
  bad.A_bar_imag = A_short.cview();
  st::require_shape_error("A_bar_imag", [&] { seqmix::h3_step(bad, {y.view(), shift_state.view(), xr.view(), xi.view()}); });
  REQUIRE(y(0, 0, 0) == y0);
  REQUIRE(xr(0, 0, 0, 0) == x0);
}
