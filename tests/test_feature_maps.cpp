// feature_map (DPFP, Performer's positive random features, Hedgehog) and linear_attention's fused
// DPFP maps: the reference against loops written from the papers' definitions, the fast form
// against the reference, the fused maps against the pre-pass, FAVOR+ against the softmax kernel
// it estimates, the random projection's properties, non-finite rows and bad arguments.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "seqmix/linear_attention/feature_maps/fast.hpp"
#include "seqmix/linear_attention/feature_maps/random.hpp"
#include "seqmix/linear_attention/feature_maps/reference.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::FeatureMapKind;
using seqmix::FeatureMapOptions;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// DPFP as the paper writes it in tensor operations: r = cat(relu(x), relu(-x)); for j = 1..nu,
// roll r right by j places (element i moves to i + j) and multiply with r; concatenate.
std::vector<double> fm_dpfp_by_rolls(const std::vector<double>& x, index_t nu) {
  const index_t K = static_cast<index_t>(x.size()), n = 2 * K;
  std::vector<double> r(static_cast<std::size_t>(n)), out;
  for (index_t i = 0; i < K; ++i) r[i] = std::max(x[i], 0.0), r[K + i] = std::max(-x[i], 0.0);
  for (index_t j = 1; j <= nu; ++j) {
    std::vector<double> rolled(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) rolled[(i + j) % n] = r[i];
    for (index_t i = 0; i < n; ++i) out.push_back(r[i] * rolled[i]);
  }
  return out;
}

struct FmCase {
  FeatureMapKind kind;
  index_t B, T, H, K, M, Hw;
  bool bias, row_max;
  float scale;
  index_t nu;
};

Tensor<float, 4> fm_run(const FmCase& c, const Tensor<float, 4>& x, const Tensor<float, 3>& w, const Tensor<float, 2>& b,
                        bool reference, const seqmix::Executor& executor = seqmix::serial_executor()) {
  FeatureMapOptions o;
  o.kind = c.kind, o.dpfp_nu = c.nu, o.input_scale = c.scale, o.subtract_row_max = c.row_max;
  seqmix::FeatureMapInputs in;
  in.x = x.view();
  if (c.kind != FeatureMapKind::dpfp) in.weight = w.view();
  if (c.bias) in.bias = b.view();
  Tensor<float, 4> phi({c.B, c.T, c.H, seqmix::feature_map_dim(o, c.K, c.M)});
  if (reference)
    seqmix::reference::feature_map(in, {phi.view()}, o);
  else
    seqmix::feature_map(in, {phi.view()}, o, executor);
  return phi;
}

struct FmData {
  Tensor<float, 4> x;
  Tensor<float, 3> w;
  Tensor<float, 2> b;
  FmData(const FmCase& c, std::uint64_t seed)
      : x(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed, -1.5f, 1.5f)),
        w(st::random_tensor<3>({c.Hw, c.M, c.K}, seed + 1, -1.f, 1.f)),
        b(st::random_tensor<2>({c.Hw, c.M}, seed + 2, -0.5f, 0.5f)) {}
};

}  // namespace

TEST_CASE("feature_map reference DPFP equals the paper's roll formulation", "[feature_map]") {
  for (index_t K : {1, 3, 8})
    for (index_t nu = 1; nu <= std::min<index_t>(3, 2 * K - 1); ++nu) {
      const FmCase c{FeatureMapKind::dpfp, 2, 3, 2, K, 0, 1, false, false, 0.7f, nu};
      const FmData data(c, 11 + K);
      const Tensor<float, 4> phi = fm_run(c, data.x, data.w, data.b, true);
      for (index_t b = 0; b < c.B; ++b)
        for (index_t t = 0; t < c.T; ++t)
          for (index_t h = 0; h < c.H; ++h) {
            std::vector<double> x;
            for (index_t k = 0; k < K; ++k) x.push_back(0.7 * static_cast<double>(data.x.view()(b, t, h, k)));
            const std::vector<double> want = fm_dpfp_by_rolls(x, nu);
            REQUIRE(static_cast<index_t>(want.size()) == 2 * nu * K);
            for (std::size_t i = 0; i < want.size(); ++i)
              REQUIRE(phi.view()(b, t, h, static_cast<index_t>(i)) == Approx(want[i]).margin(1e-6));
          }
    }
}

TEST_CASE("feature_map reference positive random and hedgehog follow their formulas", "[feature_map]") {
  const index_t K = 4, M = 5;
  const FmCase pr{FeatureMapKind::positive_random, 1, 2, 1, K, M, 1, false, false, 0.5f, 1};
  const FmData data(pr, 5);
  const Tensor<float, 4> phi = fm_run(pr, data.x, data.w, data.b, true);
  FmCase hh = pr;
  hh.kind = FeatureMapKind::hedgehog, hh.bias = true;
  const Tensor<float, 4> soft = fm_run(hh, data.x, data.w, data.b, true);
  for (index_t t = 0; t < 2; ++t) {
    double n2 = 0, z[M];
    for (index_t k = 0; k < K; ++k) n2 += std::pow(0.5 * data.x.view()(0, t, 0, k), 2);
    for (index_t j = 0; j < M; ++j) {
      z[j] = 0;
      for (index_t k = 0; k < K; ++k) z[j] += data.w.view()(0, j, k) * 0.5 * data.x.view()(0, t, 0, k);
      REQUIRE(phi.view()(0, t, 0, j) == Approx(std::exp(z[j] - n2 / 2) / std::sqrt(5.0)).epsilon(1e-6));
    }
    double sp = 0, sn = 0;
    for (index_t j = 0; j < M; ++j) sp += std::exp(z[j] + data.b.view()(0, j)), sn += std::exp(-z[j] - data.b.view()(0, j));
    for (index_t j = 0; j < M; ++j) {
      REQUIRE(soft.view()(0, t, 0, j) == Approx(std::exp(z[j] + data.b.view()(0, j)) / sp).epsilon(1e-6));
      REQUIRE(soft.view()(0, t, 0, M + j) == Approx(std::exp(-z[j] - data.b.view()(0, j)) / sn).epsilon(1e-6));
    }
  }
}

TEST_CASE("feature_map fast form equals the reference over a shape sweep", "[feature_map]") {
  seqmix::ThreadPool pool(2);
  const std::vector<FmCase> cases = {
      {FeatureMapKind::dpfp, 1, 1, 1, 1, 0, 1, false, false, 1.f, 1},
      {FeatureMapKind::dpfp, 2, 17, 3, 5, 0, 1, false, false, 1.f, 3},
      {FeatureMapKind::dpfp, 1, 130, 2, 16, 0, 1, false, false, 0.5f, 2},
      {FeatureMapKind::positive_random, 1, 1, 1, 3, 7, 1, false, false, 1.f, 1},
      {FeatureMapKind::positive_random, 2, 17, 3, 5, 64, 3, false, false, 0.6687f, 1},
      {FeatureMapKind::positive_random, 1, 130, 2, 16, 33, 1, false, true, 0.5f, 1},
      {FeatureMapKind::hedgehog, 1, 1, 1, 3, 7, 1, true, false, 1.f, 1},
      {FeatureMapKind::hedgehog, 2, 65, 3, 16, 16, 3, true, false, 1.f, 1},
      {FeatureMapKind::hedgehog, 1, 130, 2, 5, 9, 1, false, false, 2.f, 1},
  };
  std::uint64_t seed = 100;
  for (const FmCase& c : cases) {
    const FmData data(c, ++seed);
    INFO("kind " << static_cast<int>(c.kind) << " B=" << c.B << " T=" << c.T << " H=" << c.H << " K=" << c.K
                 << " M=" << c.M << " Hw=" << c.Hw);
    const Tensor<float, 4> ref = fm_run(c, data.x, data.w, data.b, true);
    st::require_close("serial", fm_run(c, data.x, data.w, data.b, false).view(), ref.view(), 2e-6);
    st::require_close("2 threads", fm_run(c, data.x, data.w, data.b, false, pool).view(), ref.view(), 2e-6);
  }
}

TEST_CASE("feature_map writes strided outputs and reads strided inputs", "[feature_map]") {
  const FmCase c{FeatureMapKind::hedgehog, 2, 9, 2, 6, 4, 2, true, false, 1.f, 1};
  const FmData data(c, 77);
  const Tensor<float, 4> want = fm_run(c, data.x, data.w, data.b, true);
  // x as every other head of a wider tensor, phi as a column block of a wider one.
  Tensor<float, 4> wide_x({c.B, c.T, 2 * c.H, c.K}), wide_phi({c.B, c.T, c.H, 3 * 2 * c.M});
  const auto x_view = wide_x.view().slice(2, 0, c.H);
  for (index_t b = 0; b < c.B; ++b)
    for (index_t t = 0; t < c.T; ++t)
      for (index_t h = 0; h < c.H; ++h)
        for (index_t k = 0; k < c.K; ++k) x_view(b, t, h, k) = data.x.view()(b, t, h, k);
  FeatureMapOptions o;
  o.kind = c.kind;
  const auto phi = wide_phi.view().slice(3, 2 * c.M, 2 * c.M);
  seqmix::feature_map({x_view, data.w.view(), data.b.view()}, {phi}, o);
  st::require_close("strided", seqmix::TensorView<const float, 4>(phi), want.view(), 2e-6);
}

TEST_CASE("linear_attention's fused DPFP maps equal the feature_map pre-pass", "[feature_map][linear_attention]") {
  const seqmix::FeatureMap maps[] = {seqmix::FeatureMap::dpfp1, seqmix::FeatureMap::dpfp2, seqmix::FeatureMap::dpfp3};
  const index_t B = 2, T = 37, H = 2, HV = 4, K = 6, V = 5;
  const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, 1), k = st::random_tensor<4>({B, T, H, K}, 2),
                         v = st::random_tensor<4>({B, T, HV, V}, 3);
  for (index_t nu = 1; nu <= 3; ++nu) {
    INFO("nu " << nu);
    const seqmix::FeatureMap map = maps[nu - 1];
    const index_t Kf = seqmix::feature_dim(map, K);
    REQUIRE(Kf == 2 * nu * K);
    FeatureMapOptions fo;
    fo.dpfp_nu = nu;
    Tensor<float, 4> pq({B, T, H, Kf}), pk({B, T, H, Kf});
    seqmix::feature_map({q.view()}, {pq.view()}, fo);
    seqmix::feature_map({k.view()}, {pk.view()}, fo);
    // The fused map scales q by 1/sqrt(K) of the raw key size; give the pre-pass run the same.
    seqmix::LinearAttentionOptions plain;
    plain.scale = 1.f / std::sqrt(static_cast<float>(K));
    Tensor<float, 4> want({B, T, HV, V}), want_state({B, HV, Kf, V});
    seqmix::reference::linear_attention({pq.view(), pk.view(), v.view()}, {want.view(), want_state.view()}, plain);
    seqmix::LinearAttentionOptions fused = plain;
    fused.feature_map = map;
    fused.scale.reset();
    for (auto algorithm : {seqmix::LinearAttentionAlgorithm::chunked, seqmix::LinearAttentionAlgorithm::recurrent}) {
      fused.algorithm = algorithm;
      fused.chunk_size = 16;
      Tensor<float, 4> o({B, T, HV, V}), state({B, HV, Kf, V});
      seqmix::linear_attention({q.view(), k.view(), v.view()}, {o.view(), state.view()}, fused);
      st::require_close("o", o.view(), want.view(), 2e-5);
      st::require_close("state", state.view(), want_state.view(), 2e-5);
    }
    Tensor<float, 4> ref_o({B, T, HV, V});
    seqmix::reference::linear_attention({q.view(), k.view(), v.view()}, {ref_o.view()}, fused);
    st::require_close("reference fused", ref_o.view(), want.view(), 2e-5);
    // Decode: the last token as a step from the state after T - 1 tokens.
    Tensor<float, 4> o1({B, T - 1, HV, V}), s1({B, HV, Kf, V});
    seqmix::linear_attention({q.view().slice(1, 0, T - 1), k.view().slice(1, 0, T - 1), v.view().slice(1, 0, T - 1)},
                             {o1.view(), s1.view()}, fused);
    Tensor<float, 3> step_o({B, HV, V});
    auto last = [&](const Tensor<float, 4>& x) {
      const auto st4 = x.view().strides();
      return seqmix::ConstView<float, 3>(x.data() + (T - 1) * st4[1], {B, x.view().size(2), x.view().size(3)},
                                         {st4[0], st4[2], st4[3]});
    };
    seqmix::linear_attention_step({last(q), last(k), last(v)}, {step_o.view(), s1.view()}, fused);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < HV; ++h)
        for (index_t j = 0; j < V; ++j) REQUIRE(step_o.view()(b, h, j) == Approx(want.view()(b, T - 1, h, j)).margin(2e-5));
  }
}

TEST_CASE("performer_random_features draws orthogonal blocks deterministically", "[feature_map]") {
  const index_t M = 40, K = 16;
  Tensor<float, 2> w({M, K}), again({M, K}), other({M, K}), plain({M, K});
  seqmix::performer_random_features(w.view(), 7);
  seqmix::performer_random_features(again.view(), 7);
  seqmix::performer_random_features(other.view(), 8);
  seqmix::performer_random_features(plain.view(), 7, false);
  REQUIRE(std::memcmp(w.data(), again.data(), sizeof(float) * M * K) == 0);
  REQUIRE(std::memcmp(w.data(), other.data(), sizeof(float) * M * K) != 0);
  REQUIRE(std::memcmp(w.data(), plain.data(), sizeof(float) * M * K) != 0);
  double mean_norm2 = 0;
  for (index_t i = 0; i < M; ++i) {
    double ni = 0;
    for (index_t k = 0; k < K; ++k) ni += double(w.view()(i, k)) * w.view()(i, k);
    mean_norm2 += ni / M;
    for (index_t j = i + 1; j < M && j / K == i / K; ++j) {  // rows of one block
      double dot = 0, nj = 0;
      for (index_t k = 0; k < K; ++k) dot += double(w.view()(i, k)) * w.view()(j, k), nj += double(w.view()(j, k)) * w.view()(j, k);
      REQUIRE(std::abs(dot) / std::sqrt(ni * nj) < 1e-6);
    }
  }
  // E|w|^2 = K for chi-distributed norms; 40 draws of chi^2_16 / 40 have a standard deviation of 0.9.
  REQUIRE(mean_norm2 > K - 4.0);
  REQUIRE(mean_norm2 < K + 4.0);
}

TEST_CASE("positive random features estimate the softmax kernel and FAVOR+ approximates softmax attention",
          "[feature_map][linear_attention]") {
  const index_t T = 48, K = 8, M = 2048, V = 4;
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, 1, K}, 31, -1.f, 1.f), k = st::random_tensor<4>({1, T, 1, K}, 32, -1.f, 1.f),
                         v = st::random_tensor<4>({1, T, 1, V}, 33);
  Tensor<float, 3> w({1, M, K});
  seqmix::performer_random_features(w.view()[0], 2024);
  FeatureMapOptions o;
  o.kind = FeatureMapKind::positive_random;
  o.input_scale = static_cast<float>(std::pow(double(K), -0.25));
  Tensor<float, 4> pq({1, T, 1, M}), pk({1, T, 1, M});
  seqmix::feature_map({q.view(), w.view()}, {pk.view()}, o);  // overwritten below; checks a reused output
  seqmix::feature_map({k.view(), w.view()}, {pk.view()}, o);
  FeatureMapOptions oq = o;
  oq.subtract_row_max = true;  // a per-query factor: cancels under normalize
  seqmix::feature_map({q.view(), w.view()}, {pq.view()}, oq);
  seqmix::LinearAttentionOptions la;
  la.normalize = true;
  la.scale = 1.f;
  Tensor<float, 4> o_lin({1, T, 1, V});
  seqmix::linear_attention({pq.view(), pk.view(), v.view()}, {o_lin.view()}, la);
  double worst = 0;
  for (index_t t = 0; t < T; ++t) {
    double den = 0, num[V] = {0, 0, 0, 0};
    for (index_t s = 0; s <= t; ++s) {
      double dot = 0;
      for (index_t c = 0; c < K; ++c) dot += double(q.view()(0, t, 0, c)) * k.view()(0, s, 0, c);
      const double p = std::exp(dot / std::sqrt(double(K)));
      den += p;
      for (index_t j = 0; j < V; ++j) num[j] += p * v.view()(0, s, 0, j);
    }
    for (index_t j = 0; j < V; ++j) worst = std::max(worst, std::abs(num[j] / den - o_lin.view()(0, t, 0, j)));
  }
  INFO("max |FAVOR+ - softmax attention| = " << worst);
  // The estimator's error with 2048 orthogonal features at these logits is ~0.01; 0.05 leaves room.
  REQUIRE(worst < 0.05);
}

TEST_CASE("feature_map keeps a non-finite input in its own row", "[feature_map][nonfinite]") {
  for (FeatureMapKind kind : {FeatureMapKind::dpfp, FeatureMapKind::positive_random, FeatureMapKind::hedgehog})
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      const FmCase c{kind, 2, 70, 2, 5, 6, 1, kind == FeatureMapKind::hedgehog, false, 1.f, 2};
      FmData data(c, 9);
      const Tensor<float, 4> clean = fm_run(c, data.x, data.w, data.b, false);
      data.x.view()(1, 40, 1, 2) = bad;
      const Tensor<float, 4> fast = fm_run(c, data.x, data.w, data.b, false);
      const Tensor<float, 4> ref = fm_run(c, data.x, data.w, data.b, true);
      INFO("kind " << static_cast<int>(kind) << " value " << bad);
      for (index_t b = 0; b < c.B; ++b)
        for (index_t t = 0; t < c.T; ++t)
          for (index_t h = 0; h < c.H; ++h)
            for (index_t j = 0; j < fast.view().size(3); ++j) {
              const float f = fast.view()(b, t, h, j), r = ref.view()(b, t, h, j);
              REQUIRE(std::isnan(f) == std::isnan(r));
              REQUIRE(std::isinf(f) == std::isinf(r));
              if (b != 1 || t != 40 || h != 1) REQUIRE(std::memcmp(&f, &clean.view()(b, t, h, j), sizeof(float)) == 0);
            }
    }
}

TEST_CASE("feature_map refuses bad arguments before writing", "[feature_map][validation]") {
  const Tensor<float, 4> x = st::random_tensor<4>({1, 4, 3, 5}, 1);
  const Tensor<float, 3> w = st::random_tensor<3>({1, 6, 5}, 2), w2 = st::random_tensor<3>({2, 6, 5}, 3);
  Tensor<float, 3> w_nan = st::random_tensor<3>({1, 6, 5}, 2);
  w_nan.view()(0, 3, 1) = NAN;
  const Tensor<float, 2> bias({1, 6});
  Tensor<float, 4> phi({1, 4, 3, 12});
  for (index_t i = 0; i < phi.view().numel(); ++i) phi.data()[i] = 42.f;
  auto run = [&](seqmix::FeatureMapInputs in, FeatureMapOptions o, seqmix::TensorView<float, 4> out) {
    seqmix::feature_map(in, {out}, o);
  };
  FeatureMapOptions hedgehog;
  hedgehog.kind = FeatureMapKind::hedgehog;
  FeatureMapOptions random = hedgehog;
  random.kind = FeatureMapKind::positive_random;
  FeatureMapOptions dpfp;
  dpfp.dpfp_nu = 0;
  st::require_shape_error("options.dpfp_nu", [&] { run({x.view()}, dpfp, phi.view()); });
  dpfp.dpfp_nu = 10;
  st::require_shape_error("options.dpfp_nu", [&] { run({x.view()}, dpfp, phi.view()); });
  dpfp.dpfp_nu = 1;
  st::require_shape_error("weight", [&] { run({x.view(), w.view()}, dpfp, phi.view()); });
  dpfp.input_scale = 0.f;
  st::require_shape_error("options.input_scale", [&] { run({x.view()}, dpfp, phi.view()); });
  FeatureMapOptions bad_kind;
  bad_kind.kind = static_cast<FeatureMapKind>(9);
  st::require_shape_error("options.kind", [&] { run({x.view()}, bad_kind, phi.view()); });
  st::require_shape_error("weight", [&] { run({x.view()}, hedgehog, phi.view()); });
  st::require_shape_error("weight", [&] { run({x.view(), w2.view()}, hedgehog, phi.view()); });  // Hw = 2, H = 3
  st::require_shape_error("weight", [&] { run({x.view(), w_nan.view()}, hedgehog, phi.view()); });
  st::require_shape_error("bias", [&] { run({x.view(), w.view(), bias.view()}, random, phi.view()); });
  st::require_shape_error("phi", [&] { run({x.view(), w.view()}, random, phi.view()); });  // Kf = 6, phi has 12
  const Tensor<float, 3> w_zero({1, 0, 5});
  st::require_shape_error("weight", [&] { run({x.view(), w_zero.view()}, hedgehog, phi.view()); });
  for (index_t i = 0; i < phi.view().numel(); ++i) REQUIRE(phi.data()[i] == 42.f);
  // An output that overlaps x.
  Tensor<float, 4> shared({1, 4, 3, 12});
  const seqmix::ConstView<float, 4> x_in(shared.data(), {1, 4, 3, 5});
  st::require_shape_error("phi", [&] { run({x_in, w.view()}, hedgehog, shared.view()); });
  seqmix::LinearAttentionOptions la;
  la.feature_map = static_cast<seqmix::FeatureMap>(7);
  Tensor<float, 4> o({1, 4, 3, 5});
  st::require_shape_error("options.feature_map", [&] { seqmix::linear_attention({x.view(), x.view(), x.view()}, {o.view()}, la); });
}

TEST_CASE("linear_attention with a fused DPFP map keeps a NaN key out of earlier tokens", "[feature_map][nonfinite]") {
  const index_t B = 1, T = 40, H = 1, K = 4, V = 3;
  Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, 4), k = st::random_tensor<4>({B, T, H, K}, 5),
                   v = st::random_tensor<4>({B, T, H, V}, 6);
  seqmix::LinearAttentionOptions options;
  options.feature_map = seqmix::FeatureMap::dpfp2;
  options.chunk_size = 16;
  options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
  Tensor<float, 4> clean({B, T, H, V}), dirty({B, T, H, V});
  seqmix::linear_attention({q.view(), k.view(), v.view()}, {clean.view()}, options);
  k.view()(0, 21, 0, 1) = NAN;  // mid-chunk: tokens 16..20 share its chunk
  seqmix::linear_attention({q.view(), k.view(), v.view()}, {dirty.view()}, options);
  for (index_t t = 0; t < T; ++t)
    for (index_t j = 0; j < V; ++j) {
      INFO("t " << t);
      if (t < 21)
        REQUIRE(std::memcmp(&dirty.view()(0, t, 0, j), &clean.view()(0, t, 0, j), sizeof(float)) == 0);
      else
        REQUIRE(std::isnan(dirty.view()(0, t, 0, j)));
    }
}
