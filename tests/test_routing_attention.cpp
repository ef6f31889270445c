// routing_attention (Routing Transformer): the fast form against reference::routing_attention over
// T in {1, 64, 65, 1000, 5000}, D in {64, 128}, GQA 1 and 4, shared QK, B = 2, causal and not; one
// cluster with w = T equals dense causal attention; the membership rule (balanced top-w per
// centroid, ties to the lower position) on a hand-made case; queries in no cluster give zeros;
// the EMA centroid update on a hand-made case; bad arguments (non-finite centroids, negative
// cluster size) refused with the outputs untouched.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/routing/fast.hpp"
#include "seqmix/attention/routing/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct RoutingCase {
  index_t B, T, Hq, Hkv, D, C, w;  // Hkv = 0: shared QK
  bool causal;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " C=" << C << " w=" << w
      << " causal=" << causal;
    return s.str();
  }
};

struct RoutingOutputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  RoutingOutputs(index_t B, index_t T, index_t H, index_t D) : o({B, T, H, D}), lse({B, T, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

void routing_check_same(const std::string& what, RoutingOutputs& got, RoutingOutputs& want) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), 1e-4);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), 1e-4);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

// Unit-length random centroids [H, C, D].
Tensor<float, 3> routing_unit_centroids(index_t H, index_t C, index_t D, std::uint64_t seed) {
  Tensor<float, 3> mu = st::random_tensor<3>({H, C, D}, seed);
  for (index_t h = 0; h < H; ++h)
    for (index_t c = 0; c < C; ++c) {
      double n = 0;
      for (index_t x = 0; x < D; ++x) n += static_cast<double>(mu(h, c, x)) * mu(h, c, x);
      for (index_t x = 0; x < D; ++x) mu(h, c, x) = static_cast<float>(mu(h, c, x) / std::sqrt(n));
    }
  return mu;
}

// The fast form (2 threads and serial) against the reference on each case (seeds from seed0).
template <std::size_t N>
void routing_fast_matches_reference(const RoutingCase (&cases)[N], std::uint64_t seed0) {
  seqmix::ThreadPool pool(2);
  const bool small = st::small_test_scale();
  std::uint64_t seed = seed0;
  for (const RoutingCase& c : cases) {
    if (small && c.T > 300) continue;
    seed += 10;
    const index_t Hkv = c.Hkv == 0 ? c.Hq : c.Hkv;
    const Tensor<float, 4> q = st::random_tensor<4>({c.B, c.T, c.Hq, c.D}, seed + 1);
    const Tensor<float, 4> k = st::random_tensor<4>({c.B, c.T, Hkv, c.D}, seed + 2);
    const Tensor<float, 4> v = st::random_tensor<4>({c.B, c.T, Hkv, c.D}, seed + 3);
    const Tensor<float, 3> mu = routing_unit_centroids(c.Hq, c.C, c.D, seed + 4);
    seqmix::RoutingInputs in{q.cview(), c.Hkv == 0 ? seqmix::ConstView<float, 4>{} : k.cview(), v.cview(), mu.cview()};
    seqmix::RoutingOptions opt;
    opt.cluster_size = c.w, opt.causal = c.causal;
    RoutingOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), serial(c.B, c.T, c.Hq, c.D);
    seqmix::reference::routing_attention(in, want.view(), opt);
    seqmix::routing_attention(in, fast.view(), opt, pool);
    seqmix::routing_attention(in, serial.view(), opt);
    routing_check_same("routing_attention " + c.describe(), fast, want);
    routing_check_same("routing_attention serial " + c.describe(), serial, want);
  }
}

}  // namespace

TEST_CASE("routing_attention: fast form matches the reference", "[routing_attention]") {
  const RoutingCase cases[] = {
      {1, 1, 2, 1, 64, 3, 0, true},      {2, 64, 4, 1, 64, 4, 0, true},    {1, 65, 4, 0, 128, 4, 0, true},
      {1, 65, 2, 2, 64, 3, 30, false},   {1, 1000, 4, 1, 64, 8, 0, true},  {1, 1000, 2, 0, 128, 32, 0, true},
      {2, 300, 4, 2, 64, 5, 100, true},  {1, 200, 2, 2, 64, 4, 20, true},
  };
  routing_fast_matches_reference(cases, 500);
}

TEST_CASE("routing_attention: fast form matches the reference at T 5000", "[routing_attention]") {
  const RoutingCase cases[] = {{1, 5000, 2, 1, 64, 71, 0, true}};
  routing_fast_matches_reference(cases, 1000);
}

TEST_CASE("routing_attention: one cluster of every token is dense causal attention", "[routing_attention]") {
  seqmix::ThreadPool pool(2);
  const index_t B = 2, T = 65, Hq = 4, Hkv = 2, D = 64;
  const Tensor<float, 4> q = st::random_tensor<4>({B, T, Hq, D}, 71), k = st::random_tensor<4>({B, T, Hkv, D}, 72),
                         v = st::random_tensor<4>({B, T, Hkv, D}, 73);
  const Tensor<float, 3> mu = routing_unit_centroids(Hq, 1, D, 74);
  seqmix::AttentionInputs<float> dense;
  dense.q = q.cview(), dense.k = k.cview(), dense.v = v.cview();
  seqmix::AttentionOptions causal;
  causal.causal = true;
  RoutingOutputs want(B, T, Hq, D), got(B, T, Hq, D), got_ref(B, T, Hq, D);
  seqmix::reference::attention(dense, want.view(), causal);
  const seqmix::RoutingInputs in{q.cview(), k.cview(), v.cview(), mu.cview()};
  seqmix::routing_attention(in, got.view(), {}, pool);  // C = 1: w = ceil(T / 1) = T
  seqmix::reference::routing_attention(in, got_ref.view(), {});
  routing_check_same("fast vs dense", got, want);
  routing_check_same("reference vs dense", got_ref, want);
}

TEST_CASE("routing_attention: balanced membership and zeros for unselected queries", "[routing_attention]") {
  // D = 2, one head, two centroids e0 = (1, 0) and e1 = (0, 1), w = 2. Unit scores against e0 are
  // the rows' cosines with the x axis.
  Tensor<float, 4> q({1, 5, 1, 2});
  const float rows[5][2] = {{1, 0}, {0, 1}, {2, 0}, {-1, -1}, {3, 3}};
  for (index_t i = 0; i < 5; ++i) q(0, i, 0, 0) = rows[i][0], q(0, i, 0, 1) = rows[i][1];
  Tensor<float, 3> mu({1, 2, 2});
  mu.fill(0.f);
  mu(0, 0, 0) = 1.f, mu(0, 1, 1) = 1.f;
  const seqmix::RoutingInputs in{q.cview(), {}, q.cview(), mu.cview()};
  seqmix::RoutingOptions opt;
  opt.cluster_size = 2;
  Tensor<std::int32_t, 4> qm({1, 1, 2, 2}), km({1, 1, 2, 2});
  seqmix::routing_clusters(in, qm.view(), km.view(), opt);
  // e0: positions 0 and 2 (cosine 1, a tie kept in position order); e1: 1 (cosine 1), then 4.
  CHECK(qm(0, 0, 0, 0) == 0);
  CHECK(qm(0, 0, 0, 1) == 2);
  CHECK(qm(0, 0, 1, 0) == 1);
  CHECK(qm(0, 0, 1, 1) == 4);
  for (index_t e = 0; e < 4; ++e) CHECK(km.data()[e] == qm.data()[e]);  // shared QK
  // Position 3 is in no cluster: zeros and lse = -inf in both forms.
  RoutingOutputs fast(1, 5, 1, 2), ref(1, 5, 1, 2);
  seqmix::routing_attention(in, fast.view(), opt);
  seqmix::reference::routing_attention(in, ref.view(), opt);
  for (RoutingOutputs* r : {&fast, &ref}) {
    CHECK(r->o(0, 3, 0, 0) == 0.f);
    CHECK(r->o(0, 3, 0, 1) == 0.f);
    CHECK(r->lse(0, 3, 0) == -INFINITY);
    // Position 2 (cluster e0 with keys 0, 2) attends to keys 0 and 2: a softmax of two.
    CHECK(std::isfinite(r->lse(0, 2, 0)));
  }
  routing_check_same("membership case", fast, ref);
}

TEST_CASE("routing_attention: EMA centroid update", "[routing_attention]") {
  // One head, centroids (1, 0) and (0, 1). Unit rows: (2, 0.2) -> cluster 0; (0.1, -3) has dots
  // 0.033 with e0 and -0.999 with e1 -> cluster 0; (0, 5) -> cluster 1.
  Tensor<float, 4> x({1, 3, 1, 2});
  const float rows[3][2] = {{2, 0.2f}, {0.1f, -3}, {0, 5}};
  for (index_t i = 0; i < 3; ++i) x(0, i, 0, 0) = rows[i][0], x(0, i, 0, 1) = rows[i][1];
  Tensor<float, 3> mu({1, 2, 2});
  mu.fill(0.f);
  mu(0, 0, 0) = 1.f, mu(0, 1, 1) = 1.f;
  const float decay = 0.5f;
  seqmix::routing_update_centroids(mu.view(), x.cview(), decay);
  const auto unit = [](double a, double b, int c) { return (c == 0 ? a : b) / std::sqrt(a * a + b * b); };
  // Cluster 0: mean of the unit rows 0 and 1.
  const double u0x = unit(2, 0.2, 0), u0y = unit(2, 0.2, 1), u1x = unit(0.1, -3, 0), u1y = unit(0.1, -3, 1);
  const double m0x = 0.5 * 1 + 0.5 * (u0x + u1x) / 2, m0y = 0.5 * 0 + 0.5 * (u0y + u1y) / 2;
  CHECK(mu(0, 0, 0) == Approx(unit(m0x, m0y, 0)).margin(1e-6));
  CHECK(mu(0, 0, 1) == Approx(unit(m0x, m0y, 1)).margin(1e-6));
  // Cluster 1: the unit row (0, 1) itself, so the centroid stays (0, 1).
  CHECK(mu(0, 1, 0) == Approx(0.0).margin(1e-7));
  CHECK(mu(0, 1, 1) == Approx(1.0).margin(1e-7));
  // Bad decay or non-finite centroids: refused, centroids untouched.
  const Tensor<float, 3> before = [&] {
    Tensor<float, 3> t({1, 2, 2});
    for (index_t e = 0; e < 4; ++e) t.data()[e] = mu.data()[e];
    return t;
  }();
  st::require_shape_error("decay", [&] { seqmix::routing_update_centroids(mu.view(), x.cview(), 1.5f); });
  Tensor<float, 3> bad({1, 2, 2});
  bad.fill(0.f);
  bad(0, 1, 0) = INFINITY;
  st::require_shape_error("centroids", [&] { seqmix::routing_update_centroids(bad.view(), x.cview(), 0.9f); });
  for (index_t e = 0; e < 4; ++e) CHECK(mu.data()[e] == before.data()[e]);
}

TEST_CASE("routing_attention: bad arguments are refused before any output", "[routing_attention]") {
  const index_t T = 16, H = 2, D = 8;
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, D}, 81), v = st::random_tensor<4>({1, T, H, D}, 82);
  const Tensor<float, 4> k3 = st::random_tensor<4>({1, T, 3, D}, 83), v3 = st::random_tensor<4>({1, T, 3, D}, 84);
  Tensor<float, 3> mu = routing_unit_centroids(H, 2, D, 85);
  Tensor<float, 3> mu_nan = routing_unit_centroids(H, 2, D, 85);
  mu_nan(1, 1, 3) = NAN;
  const Tensor<float, 3> mu_wrong = routing_unit_centroids(H + 1, 2, D, 86);
  const Tensor<float, 3> mu_empty({H, 0, D});
  RoutingOutputs out(1, T, H, D);
  for (const bool reference : {false, true}) {
    const auto call = [&](const seqmix::RoutingInputs& in, const seqmix::RoutingOptions& opt) {
      if (reference)
        seqmix::reference::routing_attention(in, out.view(), opt);
      else
        seqmix::routing_attention(in, out.view(), opt);
    };
    st::require_shape_error("centroids", [&] { call({q.cview(), {}, v.cview(), mu_nan.cview()}, {}); });
    st::require_shape_error("centroids", [&] { call({q.cview(), {}, v.cview(), mu_wrong.cview()}, {}); });
    st::require_shape_error("centroids", [&] { call({q.cview(), {}, v.cview(), mu_empty.cview()}, {}); });
    seqmix::RoutingOptions neg;
    neg.cluster_size = -1;
    st::require_shape_error("options.cluster_size", [&] { call({q.cview(), {}, v.cview(), mu.cview()}, neg); });
    st::require_shape_error("k", [&] { call({q.cview(), k3.cview(), v3.cview(), mu.cview()}, {}); });
    st::require_shape_error("v", [&] { call({q.cview(), {}, v3.cview(), mu.cview()}, {}); });
  }
  for (index_t e = 0; e < out.o.numel(); ++e) REQUIRE(std::isnan(out.o.data()[e]));
  for (index_t e = 0; e < out.lse.numel(); ++e) REQUIRE(std::isnan(out.lse.data()[e]));
}
