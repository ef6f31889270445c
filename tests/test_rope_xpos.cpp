// xPos decay on the rotary embedding (issue 15 item 1: "a decay option as in FlexRoPE if it stays a
// per-frequency factor"): RopeConfig::xpos_scale_base > 0 multiplies pair i of a query at p by
// zeta_i^((p - c) / scale_base) and of a key by its inverse, zeta_i = (2i/R + gamma) / (1 + gamma).
//   - rope / reference::rope with the query and key tables equal a double loop written from the
//     formula (both layouts, partial rotary, a scaled scheme),
//   - the score q_i . k_j depends on i - j only: shifting both positions leaves it unchanged up
//     to rounding, and it decays with the distance for equal vectors,
//   - fused: KvCache::append with the key table then kv_cache_attention with the query table, and
//     attention_step over keys rotated with the key table (rope_rotated_keys = Tk), equal rope()
//     on q and k then the plain forms,
//   - bad configurations and a table used on the wrong side are refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/attention.hpp"
#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/positional.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

seqmix::RopeConfig xpos_config(index_t R, seqmix::RopeLayout layout, seqmix::XposRole role, double center = 0.0) {
  seqmix::RopeConfig c;
  c.rotary_dim = R, c.layout = layout;
  c.xpos_scale_base = 512.0, c.xpos_role = role, c.xpos_center = center;
  return c;
}

// The formula in double: rotation of pair i by p * inv_freq[i] and the xPos factor.
double xpos_expected(const seqmix::RopeTable& t, const std::vector<double>& x, index_t p, index_t d) {
  const auto& c = t.config();
  const index_t R = c.rotary_dim, half = R / 2;
  if (d >= R) return x[static_cast<std::size_t>(d)];
  const bool inter = c.layout == seqmix::RopeLayout::interleaved;
  const index_t i = inter ? d / 2 : d % half;
  const index_t ia = inter ? 2 * i : i, ib = inter ? 2 * i + 1 : i + half;
  const double zeta = (2.0 * static_cast<double>(i) / static_cast<double>(R) + c.xpos_gamma) / (1.0 + c.xpos_gamma);
  const double e = (static_cast<double>(p) - c.xpos_center) / c.xpos_scale_base;
  const double scale = t.attention_factor() * std::pow(zeta, c.xpos_role == seqmix::XposRole::query ? e : -e);
  const double angle = static_cast<double>(p) * t.inv_freq()[static_cast<std::size_t>(i)];
  const double a = x[static_cast<std::size_t>(ia)], b = x[static_cast<std::size_t>(ib)];
  return scale * (d == ia ? a * std::cos(angle) - b * std::sin(angle) : b * std::cos(angle) + a * std::sin(angle));
}

}  // namespace

TEST_CASE("rope with xPos decay equals the formula and scores depend on the distance only", "[rope][xpos]") {
  const index_t T = 40, H = 2, D = 24;
  for (const auto layout : {seqmix::RopeLayout::half_split, seqmix::RopeLayout::interleaved})
    for (const index_t R : {D, index_t{16}})
      for (const double center : {0.0, 1000.0}) {
        INFO("layout " << static_cast<int>(layout) << " R " << R << " center " << center);
        auto qc = xpos_config(R, layout, seqmix::XposRole::query, center), kc = qc;
        kc.xpos_role = seqmix::XposRole::key;
        qc.scheme = kc.scheme = seqmix::RopeScheme::linear, qc.factor = kc.factor = 2.0;
        const seqmix::RopeTable tq(qc, 2048), tk(kc, 2048);
        const auto x = st::random_tensor<4>({1, T, H, D}, 11);
        std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
        for (index_t t = 0; t < T; ++t) pos[static_cast<std::size_t>(t)] = 37 * t + 3;  // up to 1446
        for (const seqmix::RopeTable* table : {&tq, &tk}) {
          Tensor<float, 4> fast({1, T, H, D}), ref({1, T, H, D});
          seqmix::rope(*table, {x.view(), pos}, {fast.view()});
          seqmix::reference::rope(*table, {x.view(), pos}, {ref.view()});
          for (index_t t = 0; t < T; ++t)
            for (index_t h = 0; h < H; ++h) {
              std::vector<double> row(static_cast<std::size_t>(D));
              for (index_t d = 0; d < D; ++d) row[static_cast<std::size_t>(d)] = x(0, t, h, d);
              for (index_t d = 0; d < D; ++d) {
                const double want = xpos_expected(*table, row, pos[static_cast<std::size_t>(t)], d);
                REQUIRE(std::abs(ref(0, t, h, d) - want) <= 1e-6 * (1 + std::abs(want)));
                REQUIRE(std::abs(fast(0, t, h, d) - want) <= 2e-5 * (1 + std::abs(want)));
              }
            }
        }
        // Scores: q at i, k at j, against the same vectors at i + 500, j + 500.
        const auto q = st::random_tensor<4>({1, 1, 1, D}, 12), k = st::random_tensor<4>({1, 1, 1, D}, 13);
        const auto score = [&](index_t i, index_t j) {
          Tensor<float, 4> qr({1, 1, 1, D}), kr({1, 1, 1, D});
          const std::vector<std::int64_t> pi = {i}, pj = {j};
          seqmix::reference::rope(tq, {q.view(), pi}, {qr.view()});
          seqmix::reference::rope(tk, {k.view(), pj}, {kr.view()});
          double s = 0;
          for (index_t d = 0; d < D; ++d) s += static_cast<double>(qr(0, 0, 0, d)) * kr(0, 0, 0, d);
          return s;
        };
        for (const auto& ij : {std::pair<index_t, index_t>{10, 3}, {700, 0}, {5, 900}, {1200, 1199}}) {
          const double a = score(ij.first, ij.second), b = score(ij.first + 500, ij.second + 500);
          INFO("i " << ij.first << " j " << ij.second << ": " << a << " vs " << b);
          REQUIRE(std::abs(a - b) <= 1e-5 * (1 + std::abs(a)));
        }
        // Equal q and k: |score| at distance 0 is ||x||^2 (each pair's factors cancel), and the
        // xPos factor zeta^(d/scale_base) < 1 shrinks each pair's contribution with the distance.
        double norm = 0;
        for (index_t d = 0; d < D; ++d) norm += static_cast<double>(q(0, 0, 0, d)) * q(0, 0, 0, d);
        Tensor<float, 4> q0({1, 1, 1, D}), k0({1, 1, 1, D});
        const std::vector<std::int64_t> p0 = {800};
        seqmix::reference::rope(tq, {q.view(), p0}, {q0.view()});
        seqmix::reference::rope(tk, {q.view(), p0}, {k0.view()});
        double s0 = 0;
        for (index_t d = 0; d < D; ++d) s0 += static_cast<double>(q0(0, 0, 0, d)) * k0(0, 0, 0, d);
        REQUIRE(std::abs(s0 - norm) <= 1e-5 * norm);
      }
}

TEST_CASE("fused rope with xPos tables equals rope then the plain forms", "[rope][xpos][kv_cache]") {
  const index_t B = 2, Hq = 4, Hkv = 2, D = 32, Tk = 90, Tq = 3;
  auto qc = xpos_config(D, seqmix::RopeLayout::half_split, seqmix::XposRole::query, 64.0), kc = qc;
  kc.xpos_role = seqmix::XposRole::key;
  const seqmix::RopeTable tq(qc, 256), tk(kc, 256);
  const auto k = st::random_tensor<4>({B, Tk, Hkv, D}, 21), v = st::random_tensor<4>({B, Tk, Hkv, D}, 22);
  const auto q = st::random_tensor<4>({B, Tq, Hq, D}, 23);
  // rope() on each side, then plain attention over the rotated tensors.
  Tensor<float, 4> kr({B, Tk, Hkv, D}), qr({B, Tq, Hq, D});
  seqmix::rope(tk, {k.view(), {}}, {kr.view()});
  std::vector<std::int64_t> qpos;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i) qpos.push_back(Tk - Tq + i);
  seqmix::rope(tq, {q.view(), qpos}, {qr.view()});
  seqmix::AttentionInputs<float> plain;
  plain.q = qr.view(), plain.k = kr.view(), plain.v = v.view();
  Tensor<float, 4> want({B, Tq, Hq, D}), o({B, Tq, Hq, D});
  seqmix::reference::attention(plain, {want.view()});
  // attention_step with the query table over keys rotated with the key table.
  seqmix::AttentionInputs<float> fused;
  fused.q = q.view(), fused.k = kr.view(), fused.v = v.view(), fused.rope = &tq, fused.rope_rotated_keys = Tk;
  seqmix::attention_step(fused, {o.view()});
  st::require_close("attention_step, xPos query table", o.cview(), want.cview(), 1e-5);
  seqmix::attention(fused, {o.view()});
  st::require_close("attention, xPos query table", o.cview(), want.cview(), 1e-5);
  // KvCache appending with the key table, kv_cache_attention with the query table.
  seqmix::KvCacheConfig cfg;
  cfg.batch = B, cfg.kv_heads = Hkv, cfg.key_dim = D, cfg.value_dim = D, cfg.key_format = seqmix::KvFormat::f32,
  cfg.value_format = seqmix::KvFormat::f32;
  seqmix::KvCache cache(cfg);
  seqmix::KvAppendInputs app;
  app.keys = k.view(), app.values = v.view(), app.rope = &tk;
  cache.append(app);
  seqmix::KvCacheAttentionInputs kin;
  kin.q = q.view(), kin.cache = &cache, kin.rope = &tq;
  seqmix::kv_cache_attention(kin, {o.view()});
  st::require_close("kv_cache_attention, xPos tables", o.cview(), want.cview(), 1e-5);
  seqmix::reference::kv_cache_attention(kin, {o.view()});
  st::require_close("reference::kv_cache_attention, xPos tables", o.cview(), want.cview(), 1e-5);
}

TEST_CASE("xPos configurations and tables on the wrong side are refused before writing", "[rope][xpos][errors]") {
  const index_t D = 16;
  auto c = xpos_config(D, seqmix::RopeLayout::half_split, seqmix::XposRole::query);
  for (const double bad : {-1.0, std::nan("")}) {
    auto b = c;
    b.xpos_scale_base = bad;
    REQUIRE_THROWS_AS(seqmix::RopeTable(b, 8), seqmix::ShapeError);
  }
  auto g = c;
  g.xpos_gamma = 0.0;
  REQUIRE_THROWS_AS(seqmix::RopeTable(g, 8), seqmix::ShapeError);
  g = c, g.xpos_center = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(seqmix::RopeTable(g, 8), seqmix::ShapeError);
  g = c, g.xpos_role = static_cast<seqmix::XposRole>(5);
  REQUIRE_THROWS_AS(seqmix::RopeTable(g, 8), seqmix::ShapeError);
  // Factors beyond float's range: zeta_0 = 0.4 / 1.4, so 0.2857^(p / 512) underflows near p = 36,000.
  REQUIRE_THROWS_AS(seqmix::RopeTable(c, 1 << 20), seqmix::ShapeError);
  auto centred = c;
  centred.xpos_center = 1000000.0;  // the same table is fine around its centre ... but not from 0
  REQUIRE_THROWS_AS(seqmix::RopeTable(centred, 1000010), seqmix::ShapeError);

  auto kc = c;
  kc.xpos_role = seqmix::XposRole::key;
  const seqmix::RopeTable tq(c, 64), tk(kc, 64);
  const auto q = st::random_tensor<4>({1, 3, 2, D}, 31), k = st::random_tensor<4>({1, 10, 1, D}, 32);
  Tensor<float, 4> o({1, 3, 2, D});
  o.fill(7.f);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = k.view(), in.rope = &tq;  // keys still to rotate: both sides
  st::require_shape_error("rope", [&] { seqmix::attention(in, {o.view()}); });
  st::require_shape_error("rope", [&] { seqmix::reference::attention(in, {o.view()}); });
  in.rope = &tk, in.rope_rotated_keys = 10;  // a key table rotating queries
  st::require_shape_error("rope", [&] { seqmix::attention_step(in, {o.view()}); });
  for (float x : o) REQUIRE(x == 7.f);
  seqmix::KvCacheConfig cfg;
  cfg.kv_heads = 1, cfg.key_dim = D, cfg.value_dim = D;
  seqmix::KvCache cache(cfg);
  seqmix::KvAppendInputs app;
  app.keys = k.view(), app.values = k.view(), app.rope = &tq;  // a query table rotating keys
  st::require_shape_error("rope", [&] { cache.append(app); });
  REQUIRE(cache.size(0, 0) == 0);
  app.rope = &tk;
  cache.append(app);
  seqmix::KvCacheAttentionInputs kin;
  kin.q = q.view(), kin.cache = &cache, kin.rope = &tk;
  st::require_shape_error("rope", [&] { seqmix::kv_cache_attention(kin, {o.view()}); });
  for (float x : o) REQUIRE(x == 7.f);
}
