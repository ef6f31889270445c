// hyena: the fast prefill (each method of its long convolutions) against the reference (direct
// convolutions in double) over T, orders 1-3, odd channel counts, filter lengths, skip on and
// off, gating projections strided out of one [B,T,(N+1)D] buffer; bad arguments refused before
// any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LongConvMethod;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct HyenaCase {
  index_t N, B, T, D, L;
  bool skip, scratch;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "N=" << N << " B=" << B << " T=" << T << " D=" << D << " L=" << L << " skip=" << skip
      << " scratch=" << scratch << " seed=" << seed;
    return s.str();
  }
};

// The projections come from one [B,T,(N+1)D] buffer, as an in-projection GEMM writes them: v is
// its first D columns, x_n the (n+1)-th block, so x is a strided [N,B,T,D] view. Filters scaled by
// 1/sqrt(L) keep every order's output O(1).
struct HyenaData {
  Tensor<float, 3> proj;
  Tensor<float, 3> h;
  Tensor<float, 2> skip;
  seqmix::ConstView<float, 3> v;
  seqmix::ConstView<float, 4> x;

  explicit HyenaData(const HyenaCase& c)
      : proj(st::random_tensor<3>({c.B, c.T, (c.N + 1) * c.D}, c.seed)),
        h(st::random_tensor<3>({c.N, c.L, c.D}, c.seed + 1, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))),
        skip(st::random_tensor<2>({c.N, c.D}, c.seed + 2)) {
    const index_t row = (c.N + 1) * c.D;
    v = seqmix::ConstView<float, 3>(proj.data(), {c.B, c.T, c.D}, {c.T * row, row, 1});
    x = seqmix::ConstView<float, 4>(proj.data() + c.D, {c.N, c.B, c.T, c.D}, {c.D, c.T * row, row, 1});
  }

  seqmix::HyenaInputs inputs(const HyenaCase& c) const {
    seqmix::HyenaInputs in{v, x, h.view()};
    if (c.skip) in.skip = skip.view();
    return in;
  }
};

// T from the brief's list, orders 1-3, odd D across the SIMD width, filters of length T, about T/2
// and 3 taps.
std::vector<HyenaCase> hyena_cases() {
  std::vector<HyenaCase> cases;
  std::uint64_t seed = 1;
  const index_t Ds[] = {1, 3, 17, 33, 5};
  for (index_t T : {1, 7, 64, 1000})
    for (index_t N = 1; N <= 3; ++N)
      for (index_t L : {T, std::max<index_t>(1, T / 2 + 1), std::min<index_t>(3, T)}) {
        const index_t D = T >= 1000 ? 5 : Ds[seed % 5];
        cases.push_back({N, seed % 3 == 0 ? 2 : 1, T, D, L, bool(seed & 1), bool(seed & 2), seed});
        ++seed;
      }
  cases.push_back({2, 2, 300, 129, 300, true, true, 99});  // more channels than a FFT block
  return cases;
}

TEST_CASE("hyena: the fast prefill matches the reference", "[hyena]") {
  for (const HyenaCase& c : hyena_cases()) {
    INFO(c.describe());
    const HyenaData data(c);
    Tensor<float, 3> ref({c.B, c.T, c.D});
    seqmix::reference::hyena(data.inputs(c), {ref.view()});
    for (LongConvMethod method : {LongConvMethod::direct, LongConvMethod::fft, LongConvMethod::automatic}) {
      INFO("method " << int(method));
      Tensor<float, 3> y({c.B, c.T, c.D}), scratch({c.B, c.T, c.D});
      seqmix::HyenaOutputs out{y.view()};
      if (c.scratch) out.scratch = scratch.view();
      seqmix::hyena(data.inputs(c), out, {method}, c.seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("y", y.cview(), ref.cview(), 3e-5);
    }
  }
}

TEST_CASE("hyena: order 1 is long_conv gated by x_1", "[hyena]") {
  const index_t B = 2, T = 37, D = 9;
  const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, 1), h = st::random_tensor<3>({1, T, D}, 2);
  const Tensor<float, 4> x = st::random_tensor<4>({1, B, T, D}, 3);
  const Tensor<float, 2> skip = st::random_tensor<2>({1, D}, 4);
  Tensor<float, 3> y({B, T, D}), conv({B, T, D});
  seqmix::reference::hyena({v.view(), x.view(), h.view(), skip.view()}, {y.view()});
  seqmix::reference::long_conv({v.view(), h.view()[0], {}, skip.view()[0]}, {conv.view()});
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) REQUIRE(y(b, t, d) == Approx(x(0, b, t, d) * conv(b, t, d)).margin(1e-6));
}

// Prefill segments and decode steps, the state of every order carried in one buffer, equal one
// call without a state (fast and reference prefill; filters shorter than, equal to and longer
// than the pieces).
TEST_CASE("hyena: segments and steps with the state carried equal one call", "[hyena]") {
  const index_t B = 2, T = 50, D = 7;
  std::uint64_t seed = 40;
  for (index_t N = 1; N <= 3; ++N)
    for (index_t L : {index_t(1), index_t(9), T}) {
      for (bool reference : {false, true}) {
        INFO("N=" << N << " L=" << L << " reference=" << reference);
        const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, seed), h = st::random_tensor<3>({N, L, D}, seed + 1, -0.3f, 0.3f);
        const Tensor<float, 4> x = st::random_tensor<4>({N, B, T, D}, seed + 2);
        const Tensor<float, 2> skip = st::random_tensor<2>({N, D}, seed + 3);
        ++seed;
        Tensor<float, 3> ref({B, T, D}), y({B, T, D});
        seqmix::reference::hyena({v.view(), x.view(), h.view(), skip.view()}, {ref.view()});
        Tensor<float, 4> state({N, B, L - 1, D});
        // Two prefill segments [0, 20) and [20, 35), then steps.
        for (const auto& piece : {std::make_pair(index_t(0), index_t(20)), std::make_pair(index_t(20), index_t(15))}) {
          seqmix::HyenaInputs in{v.view().slice(1, piece.first, piece.second), x.view().slice(2, piece.first, piece.second),
                                 h.view(), skip.view()};
          if (piece.first > 0) in.initial_state = state.view();
          const seqmix::HyenaOutputs out{y.view().slice(1, piece.first, piece.second), {}, state.view()};
          if (reference)
            seqmix::reference::hyena(in, out);
          else
            seqmix::hyena(in, out, {}, st::two_thread_pool());
        }
        for (index_t t = 35; t < T; ++t)
          seqmix::hyena_step({v.view().select(1, t), x.view().select(2, t), h.view(), skip.view()},
                             {y.view().select(1, t), state.view()});
        st::require_close("y", y.cview(), ref.cview(), 3e-5);
      }
    }
}

TEST_CASE("hyena: bad arguments are refused before any write", "[hyena]") {
  const index_t N = 2, B = 2, T = 16, D = 5;
  const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, 1), h = st::random_tensor<3>({N, T, D}, 2);
  const Tensor<float, 4> x = st::random_tensor<4>({N, B, T, D}, 3);
  const Tensor<float, 2> skip({N, D});
  Tensor<float, 3> y({B, T, D}), scratch({B, T, D});
  y.fill(7.f);
  scratch.fill(7.f);
  const Tensor<float, 4> x_short({N, B, T - 1, D}), no_orders({0, B, T, D});
  const Tensor<float, 3> h_orders({N + 1, T, D}), h_empty({N, 0, D}), h_wide({N, T, D + 1});
  const Tensor<float, 2> skip_wrong({N - 1, D});
  Tensor<float, 3> y_wrong({B, T, D + 1}), scratch_wrong({B, T + 1, D});
  for (LongConvMethod m : {LongConvMethod::automatic, LongConvMethod::direct, LongConvMethod::fft}) {
    const seqmix::HyenaOptions opt{m};
    st::require_shape_error("x", [&] { seqmix::hyena({v.view(), x_short.view(), h.view()}, {y.view()}, opt); });
    st::require_shape_error("x", [&] { seqmix::hyena({v.view(), no_orders.view(), h.view()}, {y.view()}, opt); });
    st::require_shape_error("filter", [&] { seqmix::hyena({v.view(), x.view(), h_orders.view()}, {y.view()}, opt); });
    st::require_shape_error("filter", [&] { seqmix::hyena({v.view(), x.view(), h_empty.view()}, {y.view()}, opt); });
    st::require_shape_error("filter", [&] { seqmix::hyena({v.view(), x.view(), h_wide.view()}, {y.view()}, opt); });
    st::require_shape_error("skip",
                            [&] { seqmix::hyena({v.view(), x.view(), h.view(), skip_wrong.view()}, {y.view()}, opt); });
    st::require_shape_error("y", [&] { seqmix::hyena({v.view(), x.view(), h.view()}, {y_wrong.view()}, opt); });
    st::require_shape_error(
        "scratch", [&] { seqmix::hyena({v.view(), x.view(), h.view()}, {y.view(), scratch_wrong.view()}, opt); });
    // Aliasing: y over v, scratch over y.
    Tensor<float, 3> v_copy = v;
    st::require_shape_error("y", [&] { seqmix::hyena({v_copy.view(), x.view(), h.view()}, {v_copy.view()}, opt); });
    st::require_shape_error("scratch", [&] { seqmix::hyena({v.view(), x.view(), h.view()}, {y.view(), y.view()}, opt); });
    // A non-finite tap or skip of the last order is found before the first order writes y.
    Tensor<float, 3> bad = h;
    bad(N - 1, T - 1, D - 1) = std::numeric_limits<float>::quiet_NaN();
    st::require_shape_error("filter", [&] { seqmix::hyena({v.view(), x.view(), bad.view()}, {y.view(), scratch.view()}, opt); });
    Tensor<float, 2> bad_skip = skip;
    bad_skip(N - 1, 0) = std::numeric_limits<float>::infinity();
    st::require_shape_error(
        "skip", [&] { seqmix::hyena({v.view(), x.view(), h.view(), bad_skip.view()}, {y.view(), scratch.view()}, opt); });
    st::require_shape_error("options.method", [&] {
      seqmix::hyena({v.view(), x.view(), h.view()}, {y.view()}, {static_cast<LongConvMethod>(9)});
    });
    for (float value : y) REQUIRE(value == 7.f);
    for (float value : scratch) REQUIRE(value == 7.f);
  }
  // States: wrong shapes, a final state overlapping the initial one without being it.
  Tensor<float, 4> state({N, B, T - 1, D}), state_wrong({N, B, T, D});
  state.fill(7.f);
  st::require_shape_error("initial_state", [&] {
    seqmix::hyena({v.view(), x.view(), h.view(), {}, state_wrong.view()}, {y.view()});
  });
  st::require_shape_error("final_state", [&] {
    seqmix::hyena({v.view(), x.view(), h.view()}, {y.view(), {}, state_wrong.view()});
  });
  st::require_shape_error("final_state", [&] {
    seqmix::hyena({v.view(), x.view(), h.view(), {}, state_wrong.view().slice(2, 0, T - 1)},
                  {y.view(), {}, state_wrong.view().slice(2, 1, T - 1)});
  });
  // The step: shapes, a bad tap of the last order, aliasing; nothing written.
  Tensor<float, 2> y1({B, D});
  y1.fill(7.f);
  Tensor<float, 3> bad = h;
  bad(N - 1, 0, 0) = std::numeric_limits<float>::quiet_NaN();
  st::require_shape_error("state", [&] {
    seqmix::hyena_step({v.view().select(1, 0), x.view().select(2, 0), h.view()}, {y1.view(), state_wrong.view()});
  });
  st::require_shape_error("x", [&] {
    seqmix::hyena_step({v.view().select(1, 0), x_short.view().select(2, 0).slice(1, 0, 1), h.view()},
                       {y1.view(), state.view()});
  });
  st::require_shape_error("filter", [&] {
    seqmix::hyena_step({v.view().select(1, 0), x.view().select(2, 0), bad.view()}, {y1.view(), state.view()});
  });
  st::require_shape_error("y", [&] {
    seqmix::hyena_step({v.view().select(1, 0), x.view().select(2, 0), h.view()},
                       {state.view().select(0, 0).select(1, 0), state.view()});
  });
  for (float value : y1) REQUIRE(value == 7.f);
  for (float value : state) REQUIRE(value == 7.f);
  // The reference validates the same way.
  st::require_shape_error("x", [&] { seqmix::reference::hyena({v.view(), x_short.view(), h.view()}, {y.view()}); });
  for (float value : y) REQUIRE(value == 7.f);
}

}  // namespace
