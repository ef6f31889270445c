// normalized_decay_gates (LightNet's normalized decay as GLA gates): GLA run on the converted gates
// and weighted keys equals the naive double loop over the normalized weights exp(f_s) / Z_t, for
// channel and scalar gates, moderate and extreme f (up to +-3e38); prefill pieces carrying the
// running normalizer equal one call; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/normalized_decay.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// f drawn from [lo, hi], plus every 7th token an outlier of `spike` (0: none).
Tensor<float, 4> normdecay_f(index_t B, index_t T, index_t H, index_t C, float lo, float hi, float spike,
                             std::uint64_t seed) {
  Tensor<float, 4> f = st::random_tensor<4>({B, T, H, C}, seed, lo, hi);
  if (spike != 0.f)
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 3; t < T; t += 7)
        for (index_t h = 0; h < H; ++h)
          for (index_t c = 0; c < C; ++c) f(b, t, h, c) = (t / 7) % 2 ? spike : -spike;
  return f;
}

// The definition: o_t = scale sum_k q_t[k] sum_{s<=t} (exp(f_s[k] - M) / sum_{r<=t} exp(f_r[k] - M))
// k_s[k] v_s, M the running max (channel c = k, or c = 0 shared by the head's channels).
Tensor<float, 4> normdecay_naive(const Tensor<float, 4>& q, const Tensor<float, 4>& k, const Tensor<float, 4>& v,
                                 const Tensor<float, 4>& f, float scale) {
  const index_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3), C = f.size(3);
  Tensor<float, 4> o({B, T, H, V});
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t t = 0; t < T; ++t) {
        std::vector<double> acc(static_cast<std::size_t>(V), 0.0);
        for (index_t kk = 0; kk < K; ++kk) {
          const index_t c = C == 1 ? 0 : kk;
          double m = -std::numeric_limits<double>::infinity(), z = 0.0;
          for (index_t s = 0; s <= t; ++s) m = std::max(m, double(f(b, s, h, c)));
          for (index_t s = 0; s <= t; ++s) z += std::exp(double(f(b, s, h, c)) - m);
          for (index_t s = 0; s <= t; ++s) {
            const double w = std::exp(double(f(b, s, h, c)) - m) / z;
            for (index_t j = 0; j < V; ++j) acc[j] += double(q(b, t, h, kk)) * w * k(b, s, h, kk) * v(b, s, h, j);
          }
        }
        for (index_t j = 0; j < V; ++j) o(b, t, h, j) = static_cast<float>(scale * acc[j]);
      }
  return o;
}

// Converts f, scales k, runs GLA (form chosen by `fast`); channel gates when f has K columns.
Tensor<float, 4> normdecay_gla(const Tensor<float, 4>& q, const Tensor<float, 4>& k, const Tensor<float, 4>& v,
                               const Tensor<float, 4>& f, bool fast) {
  const index_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  const bool channel = f.size(3) == K;
  Tensor<float, 4> kw = k, o({B, T, H, V});
  seqmix::GatedLinearAttentionInputs in;
  seqmix::GatedLinearAttentionOptions options;
  Tensor<float, 4> g4({B, T, H, K}), w4({B, T, H, K});
  Tensor<float, 3> g3({B, T, H}), w3({B, T, H});
  if (channel) {
    seqmix::normalized_decay_gates<4>({f.view(), g4.view(), w4.view()}, st::two_thread_pool());
    for (index_t i = 0; i < kw.numel(); ++i) kw.data()[i] *= w4.data()[i];
    in.g = g4.view();
    options.gate = GateKind::channel;
  } else {
    const seqmix::ConstView<float, 3> f3 = f.cview().select(3, 0);
    seqmix::normalized_decay_gates<3>({f3, g3.view(), w3.view()});
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t i = 0; i < K; ++i) kw(b, t, h, i) *= w3(b, t, h);
    in.g_scalar = g3.view();
    options.gate = GateKind::scalar;
  }
  in.q = q.view(), in.k = kw.view(), in.v = v.view();
  if (fast)
    seqmix::gated_linear_attention(in, {o.view()}, options, st::two_thread_pool());
  else
    seqmix::reference::gated_linear_attention(in, {o.view()}, options);
  return o;
}

TEST_CASE("normalized_decay: GLA on the converted gates equals the normalized sum", "[normalized_decay]") {
  struct Range {
    float lo, hi, spike;
  };
  // Moderate; wide (exp overflows float from 89 on); outliers up to 3e38 every 7th token.
  const Range ranges[] = {{-3.f, 3.f, 0.f}, {-1e4f, 1e4f, 0.f}, {-2.f, 2.f, 3e38f}, {-2.f, 2.f, 500.f}};
  const index_t B = 2, T = 75, H = 2, K = 8, V = 5;
  for (const Range& r : ranges)
    for (const index_t C : {K, index_t{1}}) {
      INFO("f in [" << r.lo << ", " << r.hi << "] spike " << r.spike << (C == 1 ? " scalar" : " channel"));
      const auto q = st::random_tensor<4>({B, T, H, K}, 1), k = st::random_tensor<4>({B, T, H, K}, 2);
      const auto v = st::random_tensor<4>({B, T, H, V}, 3);
      const auto f = normdecay_f(B, T, H, C, r.lo, r.hi, r.spike, 4);
      const auto ref = normdecay_naive(q, k, v, f, 1.f / std::sqrt(float(K)));
      const auto recurrent = normdecay_gla(q, k, v, f, false);
      const auto chunked = normdecay_gla(q, k, v, f, true);
      st::require_close("reference GLA", recurrent.cview(), ref.cview(), 1e-5);
      st::require_close("chunked GLA", chunked.cview(), ref.cview(), 1e-4);
    }
}

TEST_CASE("normalized_decay: gates in log space, pieces carrying the running normalizer equal one call",
          "[normalized_decay]") {
  const index_t B = 2, T = 40, H = 3, split_at = 17;
  const Tensor<float, 4> f = normdecay_f(B, T, H, 1, -50.f, 50.f, 1e30f, 9);
  const seqmix::ConstView<float, 3> f3 = f.cview().select(3, 0);
  Tensor<float, 3> g({B, T, H}), w({B, T, H});
  seqmix::normalized_decay_gates<3>({f3, g.view(), w.view()});
  // Against log Z_{t-1} - log Z_t and exp(f_t) / Z_t formed naively with the running max.
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t t = 1; t < T; ++t) {
        double m = -std::numeric_limits<double>::infinity();
        for (index_t s = 0; s <= t; ++s) m = std::max(m, double(f3(b, s, h)));
        double z_prev = 0.0, z = 0.0;
        for (index_t s = 0; s < t; ++s) z_prev += std::exp(double(f3(b, s, h)) - m);
        z = z_prev + std::exp(double(f3(b, t, h)) - m);
        const double g_ref = z_prev > 0.0 ? std::log(z_prev / z) : -std::numeric_limits<double>::infinity();
        const double w_ref = std::exp(double(f3(b, t, h)) - m) / z;
        INFO("b=" << b << " h=" << h << " t=" << t);
        CHECK(g(b, t, h) <= 0.f);
        if (g_ref > -80.0) CHECK(g(b, t, h) == Approx(g_ref).margin(1e-6));
        if (g_ref < -88.0) CHECK(g(b, t, h) == -88.f);  // the floor (normalized_decay.hpp)
        CHECK(w(b, t, h) == Approx(w_ref).margin(1e-7));
      }
  // Two pieces with the running normalizer (max, sum) carried in place equal one call.
  Tensor<float, 3> g2({B, T, H}), w2({B, T, H});
  Tensor<float, 2> m({B, H}), z({B, H});  // z starts at 0: fresh rows
  m.fill(-std::numeric_limits<float>::infinity());
  seqmix::normalized_decay_gates<3>({f3.slice(1, 0, split_at), g2.view().slice(1, 0, split_at),
                                     w2.view().slice(1, 0, split_at), m.view(), z.view()});
  seqmix::normalized_decay_gates<3>({f3.slice(1, split_at, T - split_at), g2.view().slice(1, split_at, T - split_at),
                                     w2.view().slice(1, split_at, T - split_at), m.view(), z.view()});
  st::require_close("g in pieces", g2.cview(), g.cview(), 1e-6);
  st::require_close("w in pieces", w2.cview(), w.cview(), 1e-6);
}

TEST_CASE("normalized_decay: bad arguments refused before any write", "[normalized_decay]") {
  const index_t B = 2, T = 5, H = 3, K = 4;
  Tensor<float, 4> f = st::random_tensor<4>({B, T, H, K}, 1), g({B, T, H, K}), w({B, T, H, K});
  Tensor<float, 3> m({B, H, K}), z({B, H, K});
  g.fill(-7.f), w.fill(-7.f), m.fill(0.f), z.fill(1.f);
  Tensor<float, 4> g_short({B, T - 1, H, K});
  Tensor<float, 3> m_bad({B, H + 1, K});
  st::require_shape_error("log_decay", [&] { seqmix::normalized_decay_gates<4>({f.view(), g_short.view(), w.view()}); });
  st::require_shape_error("running_max", [&] { seqmix::normalized_decay_gates<4>({f.view(), g.view(), w.view(), m_bad.view(), z.view()}); });
  st::require_shape_error("running_sum", [&] { seqmix::normalized_decay_gates<4>({f.view(), g.view(), w.view(), m.view(), {}}); });
  st::require_shape_error("weight", [&] { seqmix::normalized_decay_gates<4>({f.view(), g.view(), g.view()}); });
  f(1, 2, 0, 3) = std::numeric_limits<float>::infinity();
  st::require_shape_error("f", [&] { seqmix::normalized_decay_gates<4>({f.view(), g.view(), w.view(), m.view(), z.view()}); });
  f(1, 2, 0, 3) = 0.f;
  z(0, 1, 1) = 0.5f;  // a sum below 1 with a finite max is no valid normalizer
  st::require_shape_error("running_max", [&] { seqmix::normalized_decay_gates<4>({f.view(), g.view(), w.view(), m.view(), z.view()}); });
  for (const float x : g) REQUIRE(x == -7.f);
  for (const float x : w) REQUIRE(x == -7.f);
}

}  // namespace
