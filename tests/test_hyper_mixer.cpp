// hyper_mixer (HyperMixer's token-mixing MLP with hypernetwork-generated weights, Mai et al.
// 2023): the GEMM form against the double loops over ragged T (T = 1, blocks spanning batch
// rows), B > 1, odd widths, both activations, with and without positions and biases; a hand
// case; token permutation equivariance without positions; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct HyperMixTestNet {
  Tensor<float, 2> w_in, w_out;
  Tensor<float, 1> b_in, b_out;
  seqmix::HyperMixerNetwork view(bool biases) const {
    return {w_in.cview(), biases ? b_in.cview() : seqmix::ConstView<float, 1>{}, w_out.cview(),
            biases ? b_out.cview() : seqmix::ConstView<float, 1>{}};
  }
};

HyperMixTestNet hypermix_random_net(index_t D, index_t M, index_t E, std::uint64_t seed) {
  const float a = 1.f / std::sqrt(float(D)), b = 1.f / std::sqrt(float(M));
  return {st::random_tensor<2>({D, M}, seed, -a, a), st::random_tensor<2>({M, E}, seed + 1, -b, b),
          st::random_tensor<1>({M}, seed + 2, -0.1f, 0.1f), st::random_tensor<1>({E}, seed + 3, -0.1f, 0.1f)};
}

}  // namespace

TEST_CASE("hyper_mixer: the GEMM form matches the definition", "[hyper_mixer]") {
  std::uint64_t seed = 1730;
  for (index_t T : {1, 5, 70})
    for (const auto act : {seqmix::HyperMixerActivation::gelu, seqmix::HyperMixerActivation::relu})
      for (int variant = 0; variant < 2; ++variant) {
        const index_t B = 3, D = 7, E = 5;
        const bool extras = variant == 1;  // biases and positions
        INFO("T=" << T << " relu=" << int(act) << " extras=" << extras);
        const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, seed++);
        const HyperMixTestNet n1 = hypermix_random_net(D, 9, E, seed), n2 = hypermix_random_net(D, 3, E, seed + 10);
        seed += 20;
        const Tensor<float, 2> pos = st::random_tensor<2>({T + 2, D}, seed++);
        seqmix::HyperMixerInputs in{x.cview(), n1.view(extras), n2.view(extras)};
        if (extras) in.positions = pos.cview();
        Tensor<float, 3> ref({B, T, D}), y({B, T, D});
        seqmix::reference::hyper_mixer(in, {ref.view()}, {act});
        seqmix::hyper_mixer(in, {y.view()}, {act}, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
        st::require_close("hyper_mixer y", y.cview(), ref.cview(), 1e-5);
      }
  // A strided x and a width beyond one channel run (D = 300).
  const Tensor<float, 3> wide = st::random_tensor<3>({2, 9, 600}, 1790);
  const seqmix::ConstView<float, 3> xs(wide.data(), {2, 9, 300}, {9 * 600, 600, 2});
  Tensor<float, 3> packed({2, 9, 300}), ref({2, 9, 300}), y({2, 9, 300});
  for (index_t b = 0; b < 2; ++b)
    for (index_t t = 0; t < 9; ++t)
      for (index_t c = 0; c < 300; ++c) packed(b, t, c) = xs(b, t, c);
  const HyperMixTestNet n = hypermix_random_net(300, 4, 6, 1791);
  seqmix::reference::hyper_mixer({packed.cview(), n.view(true), n.view(false)}, {ref.view()});
  seqmix::hyper_mixer({xs, n.view(true), n.view(false)}, {y.view()}, {}, st::two_thread_pool());
  st::require_close("hyper_mixer strided", y.cview(), ref.cview(), 1e-5);
}

TEST_CASE("hyper_mixer: a hand case and token permutation equivariance", "[hyper_mixer]") {
  // D = 1, M = 1, E = 1, ReLU, identity hypernetworks: W_1 = W_2 = relu(x), so
  // y[t] = relu(x[t]) * relu(sum_s relu(x[s]) x[s]).
  Tensor<float, 3> x({1, 3, 1}), y({1, 3, 1});
  x(0, 0, 0) = 2.f, x(0, 1, 0) = -1.f, x(0, 2, 0) = 3.f;
  Tensor<float, 2> one({1, 1});
  one(0, 0) = 1.f;
  const seqmix::HyperMixerNetwork id{one.cview(), {}, one.cview(), {}};
  seqmix::hyper_mixer({x.cview(), id, id}, {y.view()}, {seqmix::HyperMixerActivation::relu});
  REQUIRE(y(0, 0, 0) == Approx(2.f * 13.f));
  REQUIRE(y(0, 1, 0) == Approx(0.f).margin(1e-6));
  REQUIRE(y(0, 2, 0) == Approx(3.f * 13.f));
  // Without positions, permuting the tokens permutes the outputs (HyperMixer's inductive bias).
  const index_t T = 11, D = 6;
  const Tensor<float, 3> xa = st::random_tensor<3>({1, T, D}, 31);
  Tensor<float, 3> xb({1, T, D}), ya({1, T, D}), yb({1, T, D});
  for (index_t t = 0; t < T; ++t)
    for (index_t c = 0; c < D; ++c) xb(0, t, c) = xa(0, (t * 4) % T, c);
  const HyperMixTestNet n1 = hypermix_random_net(D, 5, 3, 32), n2 = hypermix_random_net(D, 5, 3, 36);
  seqmix::hyper_mixer({xa.cview(), n1.view(true), n2.view(true)}, {ya.view()});
  seqmix::hyper_mixer({xb.cview(), n1.view(true), n2.view(true)}, {yb.view()});
  for (index_t t = 0; t < T; ++t)
    for (index_t c = 0; c < D; ++c) REQUIRE(yb(0, t, c) == Approx(ya(0, (t * 4) % T, c)).margin(1e-5));
}

TEST_CASE("hyper_mixer: bad arguments refused before any write", "[hyper_mixer][errors]") {
  const index_t B = 2, T = 5, D = 6;
  const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, 3);
  Tensor<float, 3> y({B, T, D});
  for (index_t i = 0; i < 60; ++i) y.data()[i] = 42.f;
  HyperMixTestNet n1 = hypermix_random_net(D, 4, 3, 40);
  const HyperMixTestNet n2 = hypermix_random_net(D, 4, 3, 44), wrong_e = hypermix_random_net(D, 4, 2, 48),
                        wrong_d = hypermix_random_net(D - 1, 4, 3, 52);
  const auto run = [&](const seqmix::HyperMixerInputs& in, const seqmix::HyperMixerOptions& o = {}) {
    seqmix::hyper_mixer(in, {y.view()}, o);
  };
  st::require_shape_error("hyper2.w_out", [&] { run({x.cview(), n1.view(true), wrong_e.view(true)}); });
  st::require_shape_error("hyper1.w_in", [&] { run({x.cview(), wrong_d.view(true), n2.view(true)}); });
  const Tensor<float, 2> pos_short({T - 1, D}), pos_d({T, D + 1});
  st::require_shape_error("positions", [&] {
    run({x.cview(), n1.view(true), n2.view(true), pos_short.cview()});
  });
  st::require_shape_error("positions", [&] { run({x.cview(), n1.view(true), n2.view(true), pos_d.cview()}); });
  st::require_shape_error("options.activation", [&] {
    run({x.cview(), n1.view(true), n2.view(true)}, {static_cast<seqmix::HyperMixerActivation>(7)});
  });
  const Tensor<float, 1> b_bad({5});
  seqmix::HyperMixerNetwork bad_bias = n1.view(true);
  bad_bias.b_in = b_bad.cview();
  st::require_shape_error("hyper1.b_in", [&] { run({x.cview(), bad_bias, n2.view(true)}); });
  n1.b_out(2) = std::numeric_limits<float>::quiet_NaN();
  st::require_shape_error("hyper1.b_out", [&] { run({x.cview(), n1.view(true), n2.view(true)}); });
  st::require_shape_error("hyper1.b_out", [&] {
    seqmix::reference::hyper_mixer({x.cview(), n1.view(true), n2.view(true)}, {y.view()});
  });
  Tensor<float, 3> ybad({B, T, D + 1});
  st::require_shape_error("y", [&] { seqmix::hyper_mixer({x.cview(), n2.view(true), n2.view(true)}, {ybad.view()}); });
  for (index_t i = 0; i < 60; ++i) REQUIRE(y.data()[i] == 42.f);
  Tensor<float, 3> buf = st::random_tensor<3>({B, T, D}, 60);
  st::require_shape_error("y", [&] { seqmix::hyper_mixer({buf.cview(), n2.view(true), n2.view(true)}, {buf.view()}); });
}
