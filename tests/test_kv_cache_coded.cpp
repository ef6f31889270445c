// CodedKvCache (kv_cache/coded): product-quantized and 1-bit storage, and decode attention
// reading the codes. PQ with a codebook holding every stored vector equals the fp32 cache; 1-bit
// codes equal a naive quantizer written here; the fast decode equals the reference over ragged
// rows, GQA, Tq = 1 and 3, odd dimensions, both the AVX-512 and the portable paths, 1 and 2
// threads; k-means is deterministic; NaN stays visible; bad parameters get ShapeError first.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/kv_cache/coded/fast.hpp"
#include "seqmix_testing/pq_codebooks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::CodedKvCache;
using seqmix::CodedKvCacheConfig;
using seqmix::index_t;
using seqmix::KvCodeFormat;
using seqmix::PqCodebooks;
using seqmix::Tensor;

CodedKvCacheConfig coded_test_config(index_t B, index_t H, index_t Dk, index_t Dv, KvCodeFormat f) {
  CodedKvCacheConfig c;
  c.batch = B, c.kv_heads = H, c.key_dim = Dk, c.value_dim = Dv, c.format = f;
  return c;
}

double coded_test_max_diff(const Tensor<float, 4>& a, const Tensor<float, 4>& b) {
  double m = 0.0;
  for (index_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(double(a.data()[i]) - double(b.data()[i])));
  return m;
}

}  // namespace

TEST_CASE("coded_kv_cache pq with a codebook holding every vector equals the fp32 cache", "[kv_cache][coded]") {
  const index_t B = 2, T = 37, Hkv = 2, Hq = 6, Dk = 12, Dv = 10;
  const auto k = seqmix::testing::random_tensor<4>({B, T, Hkv, Dk}, 11), v = seqmix::testing::random_tensor<4>({B, T, Hkv, Dv}, 12);
  CodedKvCacheConfig cfg = coded_test_config(B, Hkv, Dk, Dv, KvCodeFormat::pq);
  cfg.key_codebooks = seqmix::testing::exact_pq_codebooks(k, 3);
  cfg.value_codebooks = seqmix::testing::exact_pq_codebooks(v, 5);
  CodedKvCache cache(cfg);
  cache.append(k.cview(), v.cview());
  std::vector<float> row(16);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hkv; ++h)
      for (index_t j = 0; j < T; ++j) {
        cache.read_key(b, h, j, row.data());
        for (index_t c = 0; c < Dk; ++c) REQUIRE(row[c] == k(b, j, h, c));
        cache.read_value(b, h, j, row.data());
        for (index_t c = 0; c < Dv; ++c) REQUIRE(row[c] == v(b, j, h, c));
      }
  CHECK(cache.bytes() == std::size_t(B * Hkv * T * (3 + 5 + 1)));
  for (const index_t Tq : {1, 3}) {
    const auto q = seqmix::testing::random_tensor<4>({B, Tq, Hq, Dk}, 13);
    Tensor<float, 4> dense({B, Tq, Hq, Dv}), fast({B, Tq, Hq, Dv}), ref({B, Tq, Hq, Dv});
    seqmix::AttentionInputs<float> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    seqmix::AttentionOptions causal;
    causal.causal = true;
    seqmix::reference::attention(in, {dense.view(), {}}, causal);
    seqmix::coded_kv_cache_attention(cache, q.cview(), fast.view());
    seqmix::reference::coded_kv_cache_attention(cache, q.cview(), ref.view());
    CHECK(coded_test_max_diff(fast, dense) < 1e-5);
    CHECK(coded_test_max_diff(ref, dense) < 1e-6);
  }
}

TEST_CASE("coded_kv_cache sign1 codes equal a naive sign and mean-abs quantizer", "[kv_cache][coded]") {
  const index_t B = 1, T = 21, H = 2, Dk = 13, Dv = 35;
  auto k = seqmix::testing::random_tensor<4>({B, T, H, Dk}, 21);
  const auto v = seqmix::testing::random_tensor<4>({B, T, H, Dv}, 22);
  k(0, 3, 1, 4) = 0.f;  // zero reads back as +scale
  for (const index_t group : {0, 5, 16, 64}) {
    CodedKvCacheConfig cfg = coded_test_config(B, H, Dk, Dv, KvCodeFormat::sign1);
    cfg.group_size = group;
    CodedKvCache cache(cfg);
    cache.append(k.cview(), v.cview());
    std::vector<float> row(64);
    for (const bool key : {true, false}) {
      const index_t D = key ? Dk : Dv, g = group > 0 && group < D ? group : D;
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < T; ++j) {
          key ? cache.read_key(0, h, j, row.data()) : cache.read_value(0, h, j, row.data());
          for (index_t c0 = 0; c0 < D; c0 += g) {
            const index_t c1 = std::min(D, c0 + g);
            double mean = 0.0;
            for (index_t c = c0; c < c1; ++c) mean += std::abs(double(key ? k(0, j, h, c) : v(0, j, h, c)));
            const float scale = static_cast<float>(mean / double(c1 - c0));
            for (index_t c = c0; c < c1; ++c) {
              const float x = key ? k(0, j, h, c) : v(0, j, h, c);
              REQUIRE(row[c] == (x >= 0.f ? scale : -scale));
            }
          }
        }
    }
    const index_t gk = group > 0 && group < Dk ? group : Dk, gv = group > 0 && group < Dv ? group : Dv;
    const std::size_t per_token = std::size_t((Dk + gk - 1) / gk + (Dv + gv - 1) / gv) * 4 + 2 * ((Dv + 15) / 16);
    // keys: one 16-bit word per channel per 16 tokens, 2 chunks for 21 tokens (the second padded)
    CHECK(cache.bytes() == std::size_t(H) * (std::size_t(T) * per_token + 2 * std::size_t(Dk) * 2 +
                                              11 * std::size_t((Dk + gk - 1) / gk) * 4));
  }
}

TEST_CASE("coded_kv_cache_attention equals its reference over ragged rows, GQA and odd sizes", "[kv_cache][coded]") {
  const seqmix::ThreadPool pool(2);
  struct Shape {
    index_t Hq, Hkv, Dk, Dv, mk, mv;
  };
  const bool small = seqmix::testing::small_test_scale();
  for (const Shape sh : {Shape{4, 2, 16, 16, 8, 4}, Shape{3, 1, 13, 7, 13, 7}, Shape{8, 2, 40, 24, 10, 6}, Shape{2, 1, 8, 136, 4, 8}})
    for (const index_t T : {1, 17, small ? 40 : 130})
      for (const int variant : {0, 1, 2, 3, 4}) {  // pq (fit), sign1 with groups 0, 16, 5, 32
        const index_t B = 2, extra = 5;
        const auto k = seqmix::testing::random_tensor<4>({B, T, sh.Hkv, sh.Dk}, 31 + T),
                   v = seqmix::testing::random_tensor<4>({B, T, sh.Hkv, sh.Dv}, 32 + T);
        const auto k1 = seqmix::testing::random_tensor<4>({1, extra, sh.Hkv, sh.Dk}, 33),
                   v1 = seqmix::testing::random_tensor<4>({1, extra, sh.Hkv, sh.Dv}, 34);
        CodedKvCacheConfig cfg = coded_test_config(B, sh.Hkv, sh.Dk, sh.Dv, variant == 0 ? KvCodeFormat::pq : KvCodeFormat::sign1);
        if (variant == 0) {
          seqmix::PqFitOptions fit;
          fit.centroids = 16, fit.iterations = 3, fit.subspaces = sh.mk;
          cfg.key_codebooks = seqmix::fit_pq_codebooks(k.cview(), fit);
          fit.subspaces = sh.mv, fit.centroids = 256;  // more centroids than points
          cfg.value_codebooks = seqmix::fit_pq_codebooks(v.cview(), fit);
        }
        cfg.group_size = variant == 1 ? 0 : variant == 2 ? 16 : variant == 3 ? 5 : 32;
        CodedKvCache cache(cfg);
        cache.append(k.cview(), v.cview());
        cache.append(1, k1.cview(), v1.cview());  // ragged: row 1 holds T + 5
        REQUIRE(cache.size(0) == T);
        REQUIRE(cache.size(1) == T + extra);
        for (const index_t Tq : {1, 3})
          for (const bool causal : {true, false}) {
            INFO("Hq " << sh.Hq << " Hkv " << sh.Hkv << " Dk " << sh.Dk << " T " << T << " variant " << variant << " Tq " << Tq
                       << " causal " << causal);
            const auto q = seqmix::testing::random_tensor<4>({B, Tq, sh.Hq, sh.Dk}, 35, -2.f, 2.f);
            Tensor<float, 4> ref({B, Tq, sh.Hq, sh.Dv}), fast({B, Tq, sh.Hq, sh.Dv});
            seqmix::CodedKvAttentionOptions options;
            options.causal = causal;
            seqmix::reference::coded_kv_cache_attention(cache, q.cview(), ref.view(), options);
            for (const int mode : {0, 1, 2}) {  // vector serial, vector 2 threads, portable
              const seqmix::Executor& ex = mode == 1 ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
              seqmix::detail::coded_attention(cache, q.cview(), fast.view(), options, ex, mode != 2);
              CHECK(coded_test_max_diff(fast, ref) < 2e-5);
            }
          }
      }
}

TEST_CASE("fit_pq_codebooks is deterministic and exact when centroids outnumber points", "[kv_cache][coded]") {
  const auto x = seqmix::testing::random_tensor<4>({2, 40, 2, 8}, 41);
  seqmix::PqFitOptions fit;
  fit.subspaces = 4, fit.centroids = 8, fit.iterations = 5, fit.seed = 7;
  const seqmix::ThreadPool pool(2);
  const PqCodebooks a = seqmix::fit_pq_codebooks(x.cview(), fit), b = seqmix::fit_pq_codebooks(x.cview(), fit, pool);
  CHECK(a.data == b.data);
  fit.seed = 8;
  CHECK(seqmix::fit_pq_codebooks(x.cview(), fit).data != a.data);
  // Lloyd steps never raise the quantization error: more iterations, no larger error.
  auto error = [&](const PqCodebooks& cb) {
    double e = 0.0;
    for (index_t n = 0; n < 80; ++n)
      for (index_t h = 0; h < 2; ++h)
        for (index_t s = 0; s < 4; ++s) {
          float sub[2] = {x(n / 40, n % 40, h, 2 * s), x(n / 40, n % 40, h, 2 * s + 1)};
          const int kk = seqmix::detail::nearest_centroid(sub, cb.centroid(h, s, 0), cb.centroids, 2);
          e += seqmix::detail::squared_distance(sub, cb.centroid(h, s, kk), 2);
        }
    return e;
  };
  fit.seed = 7, fit.iterations = 0;
  const double e0 = error(seqmix::fit_pq_codebooks(x.cview(), fit));
  fit.iterations = 10;
  const double e10 = error(seqmix::fit_pq_codebooks(x.cview(), fit));
  CHECK(e10 <= e0);
  CHECK(e10 > 0.0);
  fit.centroids = 80;  // every point is a centroid
  CHECK(error(seqmix::fit_pq_codebooks(x.cview(), fit)) == 0.0);
}

TEST_CASE("coded_kv_cache NaN and inf stay visible in the rows that see them", "[kv_cache][coded][nonfinite]") {
  const index_t T = 20, H = 1, D = 16, Tq = 3;
  for (const int variant : {0, 1})
    for (const bool in_value : {false, true})
      for (const float bad : {std::nanf(""), INFINITY}) {
        auto k = seqmix::testing::random_tensor<4>({1, T, H, D}, 51);
        auto v = seqmix::testing::random_tensor<4>({1, T, H, D}, 52);
        CodedKvCacheConfig cfg = coded_test_config(1, H, D, D, variant == 0 ? KvCodeFormat::pq : KvCodeFormat::sign1);
        seqmix::PqFitOptions fit;
        fit.subspaces = 4, fit.centroids = 8;
        if (variant == 0) cfg.key_codebooks = seqmix::fit_pq_codebooks(k.cview(), fit), cfg.value_codebooks = cfg.key_codebooks;
        (in_value ? v : k)(0, T - 2, 0, 3) = bad;  // entry 18: seen by queries 1 and 2 of Tq = 3, not by query 0
        CodedKvCache cache(cfg);
        cache.append(k.cview(), v.cview());
        const auto q = seqmix::testing::random_tensor<4>({1, Tq, 2, D}, 53);
        Tensor<float, 4> fast({1, Tq, 2, D}), ref({1, Tq, 2, D});
        seqmix::coded_kv_cache_attention(cache, q.cview(), fast.view());
        seqmix::reference::coded_kv_cache_attention(cache, q.cview(), ref.view());
        for (const auto* o : {&fast, &ref})
          for (index_t h = 0; h < 2; ++h) {
            INFO("variant " << variant << " value " << in_value << " bad " << bad);
            CHECK(std::isfinite((*o)(0, 0, h, 0)));
            CHECK(std::isnan((*o)(0, 1, h, 0)));
            CHECK(std::isnan((*o)(0, 2, h, 5)));
          }
      }
}

TEST_CASE("coded_kv_cache bad parameters get ShapeError before any change", "[kv_cache][coded][errors]") {
  const auto k = seqmix::testing::random_tensor<4>({1, 8, 1, 8}, 61);
  seqmix::PqFitOptions fit;
  fit.subspaces = 2, fit.centroids = 4;
  const PqCodebooks good = seqmix::fit_pq_codebooks(k.cview(), fit);
  auto with = [&](auto edit) {
    CodedKvCacheConfig cfg = coded_test_config(1, 1, 8, 8, KvCodeFormat::pq);
    cfg.key_codebooks = good, cfg.value_codebooks = good;
    edit(cfg);
    return cfg;
  };
  using C = CodedKvCacheConfig;
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.key_codebooks.centroids = 0, c.key_codebooks.data.clear(); })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.value_codebooks.centroids = 257; })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.key_codebooks.subspaces = 3; })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.key_codebooks.data.pop_back(); })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.key_codebooks.data[3] = std::nanf(""); })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.value_codebooks.kv_heads = 2; })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.format = static_cast<KvCodeFormat>(7); })), seqmix::ShapeError);
  CHECK_THROWS_AS(CodedKvCache(with([](C& c) { c.format = KvCodeFormat::sign1, c.group_size = -1; })), seqmix::ShapeError);
  CHECK_NOTHROW(CodedKvCache(with([](C& c) { c.format = KvCodeFormat::sign1, c.key_codebooks = {}; })));
  for (const index_t centroids : {0, 257}) {
    fit.centroids = centroids;
    CHECK_THROWS_AS(seqmix::fit_pq_codebooks(k.cview(), fit), seqmix::ShapeError);
  }
  fit.centroids = 4, fit.subspaces = 3;
  CHECK_THROWS_AS(seqmix::fit_pq_codebooks(k.cview(), fit), seqmix::ShapeError);
  fit.subspaces = 2, fit.iterations = -1;
  CHECK_THROWS_AS(seqmix::fit_pq_codebooks(k.cview(), fit), seqmix::ShapeError);

  CodedKvCache cache(with([](C&) {}));
  cache.append(k.cview(), k.cview());
  const std::size_t bytes = cache.bytes();
  const auto wrong = seqmix::testing::random_tensor<4>({1, 8, 1, 7}, 62);
  CHECK_THROWS_AS(cache.append(k.cview(), wrong.cview()), seqmix::ShapeError);
  CHECK_THROWS_AS(cache.append(1, k.cview(), k.cview()), seqmix::ShapeError);
  CHECK(cache.size(0) == 8);
  CHECK(cache.bytes() == bytes);
  const auto q = seqmix::testing::random_tensor<4>({1, 1, 3, 8}, 63);  // 3 heads: fine with Hkv 1
  Tensor<float, 4> o({1, 1, 3, 7});
  std::fill(o.data(), o.data() + o.numel(), 5.f);
  CHECK_THROWS_AS(seqmix::coded_kv_cache_attention(cache, q.cview(), o.view()), seqmix::ShapeError);
  seqmix::CodedKvAttentionOptions bad_scale;
  bad_scale.scale = INFINITY;
  Tensor<float, 4> o8({1, 1, 3, 8});
  std::fill(o8.data(), o8.data() + o8.numel(), 5.f);
  CHECK_THROWS_AS(seqmix::coded_kv_cache_attention(cache, q.cview(), o8.view(), bad_scale), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::coded_kv_cache_attention(cache, q.cview(), o8.view(), bad_scale), seqmix::ShapeError);
  for (index_t i = 0; i < o8.numel(); ++i) REQUIRE(o8.data()[i] == 5.f);
  float row[8];
  CHECK_THROWS_AS(cache.read_key(0, 0, 8, row), seqmix::ShapeError);
}
