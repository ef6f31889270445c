// KvCache with coded storage (KvCacheConfig::coded, issue 22 item 5): product-quantized and 1-bit
// blocks inside the KvCache, with its residual window, positions, truncate / rollback, retain and
// compaction, read by kv_cache_attention straight from the codes. PQ with a codebook holding every
// vector equals fp32 storage; sign1 entries equal CodedKvCache's codes; fast decode equals the
// reference over GQA, Tq 1 and 3, windows; rollback then re-append equals never appending;
// eviction keeps the same tokens as fp32 storage; NaN stays visible; bad input changes nothing.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/coded/cache.hpp"
#include "seqmix/kv_cache/policies/eviction.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/pq_codebooks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvCache;
using seqmix::KvCacheConfig;
using seqmix::KvCodeFormat;
using seqmix::PqCodebooks;
using seqmix::Tensor;
namespace st = seqmix::testing;

KvCacheConfig cstore_config(index_t B, index_t H, index_t Dk, index_t Dv, index_t residual, index_t rollback = 0) {
  KvCacheConfig c;
  c.batch = B, c.kv_heads = H, c.key_dim = Dk, c.value_dim = Dv, c.residual = residual, c.rollback = rollback;
  c.key_format = c.value_format = seqmix::KvFormat::f32;
  return c;
}

KvCacheConfig cstore_sign1(KvCacheConfig c, index_t group) {
  seqmix::KvCodedStorage s;
  s.format = KvCodeFormat::sign1, s.group_size = group;
  c.coded = s;
  return c;
}

KvCacheConfig cstore_pq(KvCacheConfig c, PqCodebooks kc, PqCodebooks vc) {
  seqmix::KvCodedStorage s;
  s.format = KvCodeFormat::pq, s.key_codebooks = std::move(kc), s.value_codebooks = std::move(vc);
  c.coded = s;
  return c;
}

Tensor<float, 2> cstore_read(const KvCache& c, index_t b, index_t h, bool keys) {
  Tensor<float, 2> out({c.size(b, h), keys ? c.config().key_dim : c.config().value_dim});
  if (keys)
    c.read_keys(b, h, out.view());
  else
    c.read_values(b, h, out.view());
  return out;
}

// Fast decode (2 threads) and the reference, Tq queries at the newest positions.
void cstore_decode(const KvCache& c, const Tensor<float, 4>& q, const seqmix::AttentionOptions& opt, Tensor<float, 4>& o,
                   Tensor<float, 4>& o_ref) {
  seqmix::KvCacheAttentionInputs in;
  in.q = q.cview(), in.cache = &c;
  o = Tensor<float, 4>({q.size(0), q.size(1), q.size(2), c.config().value_dim});
  o_ref = Tensor<float, 4>({q.size(0), q.size(1), q.size(2), c.config().value_dim});
  seqmix::kv_cache_attention(in, {o.view(), {}}, opt, st::two_thread_pool());
  seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, opt);
}

void cstore_require_same(const KvCache& a, const KvCache& b, index_t h, index_t row) {
  REQUIRE(a.positions(row, h) == b.positions(row, h));
  const auto ka = cstore_read(a, row, h, true), kb = cstore_read(b, row, h, true);
  const auto va = cstore_read(a, row, h, false), vb = cstore_read(b, row, h, false);
  for (index_t i = 0; i < ka.numel(); ++i) REQUIRE(ka.data()[i] == kb.data()[i]);
  for (index_t i = 0; i < va.numel(); ++i) REQUIRE(va.data()[i] == vb.data()[i]);
  REQUIRE(a.head(row, h).residual.size() == b.head(row, h).residual.size());
}

}  // namespace

TEST_CASE("kv cache pq storage with a codebook holding every vector equals fp32 storage", "[kv_cache][coded]") {
  const index_t B = 2, T = 70, Hkv = 2, Hq = 6, Dk = 12, Dv = 10;
  const auto k = st::random_tensor<4>({B, T, Hkv, Dk}, 31), v = st::random_tensor<4>({B, T, Hkv, Dv}, 32);
  for (index_t R : {0, 5}) {
    INFO("residual " << R);
    KvCache fp(cstore_config(B, Hkv, Dk, Dv, R));
    KvCache pq(cstore_pq(cstore_config(B, Hkv, Dk, Dv, R), st::exact_pq_codebooks(k, 3), st::exact_pq_codebooks(v, 5)));
    fp.append(k.cview(), v.cview());
    pq.append(k.cview(), v.cview());
    REQUIRE(pq.head(0, 0).blocks.size() == 2);
    REQUIRE(pq.codebook_bytes() == (2 * 256 * 12 + 2 * 256 * 10) * sizeof(float));
    REQUIRE(pq.bytes() < fp.bytes());
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hkv; ++h) cstore_require_same(pq, fp, h, b);
    for (index_t Tq : {1, 3}) {
      const auto q = st::random_tensor<4>({B, Tq, Hq, Dk}, 33 + Tq, -2.f, 2.f);
      seqmix::AttentionOptions opt;
      Tensor<float, 4> o, o_ref, f, f_ref;
      cstore_decode(pq, q, opt, o, o_ref);
      cstore_decode(fp, q, opt, f, f_ref);
      st::require_close("pq fast vs fp32 fast", o.cview(), f.cview(), 1e-5);
      st::require_close("pq fast vs pq reference", o.cview(), o_ref.cview(), 1e-5);
    }
  }
}

TEST_CASE("kv cache sign1 storage holds CodedKvCache codes and decodes like its reference", "[kv_cache][coded]") {
  const index_t B = 2, T = 75, Hkv = 2, Hq = 8, Dk = 20, Dv = 36;
  const auto k = st::random_tensor<4>({B, T, Hkv, Dk}, 41), v = st::random_tensor<4>({B, T, Hkv, Dv}, 42);
  for (index_t group : {0, 4, 16}) {
    INFO("group " << group);
    KvCache cache(cstore_sign1(cstore_config(B, Hkv, Dk, Dv, 3), group));
    cache.append(k.cview().slice(1, 0, 50), v.cview().slice(1, 0, 50));  // two appends: flushes across them
    cache.append(k.cview().slice(1, 50, T - 50), v.cview().slice(1, 50, T - 50));
    seqmix::CodedKvCacheConfig cc;
    cc.batch = B, cc.kv_heads = Hkv, cc.key_dim = Dk, cc.value_dim = Dv, cc.format = KvCodeFormat::sign1, cc.group_size = group;
    seqmix::CodedKvCache plain(cc);
    plain.append(k.cview(), v.cview());
    std::vector<float> kr(Dk), vr(Dv);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hkv; ++h) {
        const auto K = cstore_read(cache, b, h, true), V = cstore_read(cache, b, h, false);
        const index_t flushed = static_cast<index_t>(cache.head(b, h).order.size());
        REQUIRE(flushed == 64);
        for (index_t e = 0; e < T; ++e) {
          plain.read_key(b, h, e, kr.data()), plain.read_value(b, h, e, vr.data());
          for (index_t c = 0; c < Dk; ++c) REQUIRE(K(e, c) == (e < flushed ? kr[c] : k(b, e, h, c)));
          for (index_t c = 0; c < Dv; ++c) REQUIRE(V(e, c) == (e < flushed ? vr[c] : v(b, e, h, c)));
        }
      }
    for (index_t Tq : {1, 3}) {
      const auto q = st::random_tensor<4>({B, Tq, Hq, Dk}, 43 + Tq, -2.f, 2.f);
      seqmix::AttentionOptions opt;
      if (Tq == 3) opt.window = 40, opt.sink_tokens = 4;
      Tensor<float, 4> o, o_ref;
      cstore_decode(cache, q, opt, o, o_ref);
      st::require_close("sign1 fast vs reference", o.cview(), o_ref.cview(), 1e-4);
    }
  }
}

TEST_CASE("kv cache coded storage rollback then re-append equals never appending", "[kv_cache][coded]") {
  const index_t B = 2, H = 2, Dk = 16, Dv = 12, W = 40;
  const int rounds = st::small_test_scale() ? 4 : 10;
  const auto train = st::random_tensor<4>({1, 200, H, Dk}, 51), vtrain = st::random_tensor<4>({1, 200, H, Dv}, 52);
  seqmix::PqFitOptions fo;
  fo.subspaces = 4, fo.centroids = 16, fo.iterations = 2;
  const PqCodebooks kc = seqmix::fit_pq_codebooks(train.cview(), fo, seqmix::serial_executor());
  fo.subspaces = 3;
  const PqCodebooks vc = seqmix::fit_pq_codebooks(vtrain.cview(), fo, seqmix::serial_executor());
  for (int f = 0; f < 2; ++f) {
    INFO((f == 0 ? "pq" : "sign1"));
    const KvCacheConfig base = cstore_config(B, H, Dk, Dv, 4, W);
    const KvCacheConfig cfg = f == 0 ? cstore_pq(base, kc, vc) : cstore_sign1(base, 8);
    KvCache spec(cfg), clean(cfg);
    std::mt19937 rng(7);
    std::uint64_t seed = 100;
    auto append = [&](index_t b, index_t n, bool to_clean) {
      const auto k = st::random_tensor<4>({1, n, H, Dk}, seed++), v = st::random_tensor<4>({1, n, H, Dv}, seed++);
      std::vector<std::int32_t> cu = {0, static_cast<std::int32_t>(n)};
      std::vector<std::int64_t> slot = {b};
      seqmix::KvAppendInputs in;
      in.keys = k.cview(), in.values = v.cview();
      in.batch.cu_seqlens = cu, in.batch.state_indices = slot;
      spec.append(in);
      if (to_clean) clean.append(in);
    };
    for (index_t b = 0; b < B; ++b) append(b, 30 + 37 * b, true);
    for (int r = 0; r < rounds; ++r)
      for (index_t b = 0; b < B; ++b) {
        const index_t draft = 1 + static_cast<index_t>(rng() % W);
        const index_t accepted = static_cast<index_t>(rng() % static_cast<unsigned>(draft + 1));
        const std::int64_t at = spec.next_position(b);
        if (accepted > 0) append(b, accepted, true);
        append(b, draft - accepted, false);
        spec.truncate(b, at + accepted);
        for (index_t h = 0; h < H; ++h) cstore_require_same(spec, clean, h, b);
        append(b, 1 + static_cast<index_t>(rng() % 3), true);
      }
    REQUIRE(spec.bytes() == clean.bytes());
    const auto q = st::random_tensor<4>({B, 1, 2 * H, Dk}, 9);
    seqmix::AttentionOptions opt;
    Tensor<float, 4> o1, r1, o2, r2;
    cstore_decode(spec, q, opt, o1, r1);
    cstore_decode(clean, q, opt, o2, r2);
    for (index_t i = 0; i < o1.numel(); ++i) REQUIRE(o1.data()[i] == o2.data()[i]);
    st::require_close("coded fast vs reference after rollbacks", o1.cview(), r1.cview(), 1e-4);
  }
}

TEST_CASE("kv cache coded storage eviction keeps the same tokens as fp32 storage", "[kv_cache][coded]") {
  const index_t B = 1, T = 150, H = 2, Dk = 12, Dv = 8;
  const auto k = st::random_tensor<4>({B, T, H, Dk}, 61), v = st::random_tensor<4>({B, T, H, Dv}, 62);
  KvCache fp(cstore_config(B, H, Dk, Dv, 6));
  KvCache pq(cstore_pq(cstore_config(B, H, Dk, Dv, 6), st::exact_pq_codebooks(k, 4), st::exact_pq_codebooks(v, 2)));
  KvCache s1(cstore_sign1(cstore_config(B, H, Dk, Dv, 6), 0));
  for (KvCache* c : {&fp, &pq, &s1}) c->append(k.cview(), v.cview());
  seqmix::kv::Budget budget;
  budget.capacity = 50, budget.sink_tokens = 4, budget.recent = 8;
  // Key-norm eviction scored on each cache's own stored keys (pq: exact, so the same set).
  const auto kept_of = [&](const KvCache& c) {
    Tensor<float, 4> keys({B, T, H, Dk});
    for (index_t h = 0; h < H; ++h) {
      const auto K = cstore_read(c, 0, h, true);
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < Dk; ++d) keys(0, t, h, d) = K(t, d);
    }
    return seqmix::kv::key_norm(keys.cview(), budget);
  };
  const auto kept_fp = kept_of(fp), kept_pq = kept_of(pq);
  // Accumulated-attention (h2o) eviction from one score table for fp32 and sign1.
  const auto scores = st::random_tensor<3>({B, H, T}, 63, 0.f, 1.f);
  const auto kept_h2o = seqmix::kv::h2o(scores.cview(), budget);
  KvCache fp2(cstore_config(B, H, Dk, Dv, 6));
  fp2.append(k.cview(), v.cview());
  for (index_t h = 0; h < H; ++h) {
    REQUIRE(kept_fp(0, h) == kept_pq(0, h));
    fp.retain(0, h, kept_fp(0, h));
    pq.retain(0, h, kept_pq(0, h));
    fp2.retain(0, h, kept_h2o(0, h));
    s1.retain(0, h, kept_h2o(0, h));
    REQUIRE(pq.positions(0, h) == fp.positions(0, h));
    REQUIRE(s1.positions(0, h) == fp2.positions(0, h));
    REQUIRE(pq.size(0, h) == 50);
  }
  const auto q = st::random_tensor<4>({B, 1, 2 * H, Dk}, 64, -2.f, 2.f);
  seqmix::AttentionOptions opt;
  Tensor<float, 4> o, o_ref, f, f_ref;
  cstore_decode(pq, q, opt, o, o_ref);
  cstore_decode(fp, q, opt, f, f_ref);
  st::require_close("pq after eviction vs fp32 after eviction", o.cview(), f.cview(), 1e-5);
  cstore_decode(s1, q, opt, o, o_ref);
  st::require_close("sign1 after eviction vs its reference", o.cview(), o_ref.cview(), 1e-4);
  // replace: an entry takes another entry's row (pq: exact; sign1: the same codes).
  for (KvCache* c : {&pq, &s1}) {
    std::vector<float> kr(Dk), vr(Dv), k2(Dk), v2(Dv);
    for (index_t t = 0; t < Dk; ++t) kr[t] = k(0, 0, 1, t);
    for (index_t t = 0; t < Dv; ++t) vr[t] = v(0, 0, 1, t);
    c->replace(0, 1, 5, kr.data(), vr.data());
    c->read_key(0, 1, 5, k2.data()), c->read_key(0, 1, 0, kr.data());
    c->read_value(0, 1, 5, v2.data()), c->read_value(0, 1, 0, vr.data());
    REQUIRE(k2 == kr);
    REQUIRE(v2 == vr);
  }
}

TEST_CASE("kv cache pq storage keeps a NaN value visible to the rows that see it", "[kv_cache][coded][nonfinite]") {
  const index_t T = 40, Dk = 8, Dv = 8;
  auto k = st::random_tensor<4>({1, T, 1, Dk}, 71), v = st::random_tensor<4>({1, T, 1, Dv}, 72);
  seqmix::PqFitOptions fo;
  fo.subspaces = 2, fo.centroids = 8;
  const auto kc = seqmix::fit_pq_codebooks(k.cview(), fo), vc = seqmix::fit_pq_codebooks(v.cview(), fo);
  v(0, 20, 0, 3) = std::nanf("");
  KvCache c(cstore_pq(cstore_config(1, 1, Dk, Dv, 0), kc, vc));
  c.append(k.cview(), v.cview());
  std::vector<float> row(Dv);
  c.read_value(0, 0, 20, row.data());
  REQUIRE(std::isnan(row[0]));
  c.read_value(0, 0, 19, row.data());
  REQUIRE(std::isfinite(row[0]));
  seqmix::AttentionOptions opt;
  opt.window = 10;  // the newest query sees positions 30..39 only
  const auto q = st::random_tensor<4>({1, 1, 1, Dk}, 73);
  Tensor<float, 4> o, o_ref;
  cstore_decode(c, q, opt, o, o_ref);
  for (index_t i = 0; i < Dv; ++i) REQUIRE(std::isfinite(o.data()[i]));
  opt.window = 0;
  cstore_decode(c, q, opt, o, o_ref);
  for (index_t i = 0; i < Dv; ++i) REQUIRE(std::isnan(o.data()[i]));
}

TEST_CASE("kv cache coded storage refuses bad parameters before any change", "[kv_cache][coded][errors]") {
  const index_t H = 2, Dk = 8, Dv = 6;
  const auto k = st::random_tensor<4>({1, 40, H, Dk}, 81), v = st::random_tensor<4>({1, 40, H, Dv}, 82);
  seqmix::PqFitOptions fo;
  fo.subspaces = 2, fo.centroids = 4;
  const auto kc = seqmix::fit_pq_codebooks(k.cview(), fo), vc = seqmix::fit_pq_codebooks(v.cview(), fo);
  const KvCacheConfig base = cstore_config(1, H, Dk, Dv, 0);
  REQUIRE_NOTHROW(KvCache(cstore_pq(base, kc, vc)));
  auto bad = [&](auto edit) {
    KvCacheConfig c = cstore_pq(base, kc, vc);
    edit(*c.coded, c);
    REQUIRE_THROWS_AS(KvCache(c), seqmix::ShapeError);
  };
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.key_codebooks.centroids = 0; });             // codebook size 0
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.value_codebooks.centroids = 300; });         // > 256
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.key_codebooks.subspaces = 3; });             // does not divide 8
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.value_codebooks.kv_heads = 1; });            // wrong head count
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.key_codebooks.data.pop_back(); });           // wrong size
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.key_codebooks.data[3] = std::nanf(""); });   // non-finite centroid
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.format = static_cast<KvCodeFormat>(7); });   // format out of range
  bad([](seqmix::KvCodedStorage& s, KvCacheConfig&) { s.format = KvCodeFormat::sign1, s.group_size = -1; });
  bad([](seqmix::KvCodedStorage&, KvCacheConfig& c) { c.mixed = seqmix::KvMixedPrecision{}; });     // ZipCache + coded

  KvCache cache(cstore_pq(base, kc, vc));
  cache.append(k.cview(), v.cview());
  const auto before = cstore_read(cache, 0, 1, true);
  const std::size_t bytes = cache.bytes();
  const auto k_wrong = st::random_tensor<4>({1, 3, H, Dk + 1}, 83);
  REQUIRE_THROWS_AS(cache.append(k_wrong.cview(), v.cview().slice(1, 0, 3)), seqmix::ShapeError);
  REQUIRE_THROWS_AS(cache.requantize_older(0, 1, 100, seqmix::KvFormat::int4, seqmix::KvFormat::int2), seqmix::ShapeError);
  REQUIRE_THROWS_AS(cache.retain(0, 1, {3, 2}), seqmix::ShapeError);
  REQUIRE(cache.bytes() == bytes);
  const auto after = cstore_read(cache, 0, 1, true);
  for (index_t i = 0; i < before.numel(); ++i) REQUIRE(before.data()[i] == after.data()[i]);
}
