// dmc (Dynamic Memory Compression): the fast prefill and the decode step against the reference
// (per-token loops in double) over ragged shapes, GQA, B > 1, fractional decisions, continued
// caches, 1 and 2 threads; all-append against plain causal attention and KvCache decode; a merge
// computed by hand; prefill then steps against one prefill; bad input refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/attention.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/kv_cache/dmc/reference.hpp"
#include "seqmix/kv_cache/dmc/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DmcCache;
using seqmix::DmcCacheConfig;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct DmcTestShape {
  index_t B, T, Hq, Hkv, Dk, Dv;
};

// Random inputs of a prefill. alpha: uniform in [0, 1] (fractional values are rounded), so about
// half the tokens merge; omega in [0.05, 1] (the paper's sigmoid range).
struct DmcTestData {
  Tensor<float, 4> q, k, v;
  Tensor<float, 3> alpha, omega;
  DmcTestData(const DmcTestShape& s, std::uint64_t seed, float alpha_hi = 1.f)
      : q(st::random_tensor<4>({s.B, s.T, s.Hq, s.Dk}, seed, -2.f, 2.f)),
        k(st::random_tensor<4>({s.B, s.T, s.Hkv, s.Dk}, seed + 1)),
        v(st::random_tensor<4>({s.B, s.T, s.Hkv, s.Dv}, seed + 2)),
        alpha(st::random_tensor<3>({s.B, s.T, s.Hkv}, seed + 3, 0.f, alpha_hi)),
        omega(st::random_tensor<3>({s.B, s.T, s.Hkv}, seed + 4, 0.05f, 1.f)) {}
  seqmix::DmcInputs inputs(index_t t0, index_t len) const {
    return {q.cview().slice(1, t0, len), k.cview().slice(1, t0, len), v.cview().slice(1, t0, len),
            alpha.cview().slice(1, t0, len), omega.cview().slice(1, t0, len)};
  }
};

DmcCacheConfig dmc_test_config(const DmcTestShape& s, index_t capacity) {
  DmcCacheConfig c;
  c.batch = s.B, c.kv_heads = s.Hkv, c.key_dim = s.Dk, c.value_dim = s.Dv, c.capacity = capacity;
  return c;
}

// Slot counts, importances, keys and values of two caches agree within tol (exactly when 0).
void require_same_dmc_cache(const DmcCache& a, const DmcCache& b, double tol) {
  const auto& c = a.config();
  for (index_t bi = 0; bi < c.batch; ++bi) {
    REQUIRE(a.tokens(bi) == b.tokens(bi));
    for (index_t h = 0; h < c.kv_heads; ++h) {
      CAPTURE(bi, h);
      REQUIRE(a.size(bi, h) == b.size(bi, h));
      if (a.size(bi, h) == 0) continue;
      st::require_close("keys", a.keys(bi, h), b.keys(bi, h), tol);
      st::require_close("values", a.values(bi, h), b.values(bi, h), tol);
      st::require_close("importance", a.importance(bi, h), b.importance(bi, h), tol);
    }
  }
}

}  // namespace

TEST_CASE("dmc_attention and dmc_decode_step equal the per-token reference", "[dmc]") {
  const DmcTestShape shapes[] = {
      {1, 1, 1, 1, 1, 1},    {1, 7, 2, 2, 8, 5},     {2, 33, 4, 2, 17, 9},  {3, 70, 6, 3, 16, 16},
      {1, 130, 4, 1, 33, 65},  // a group of 4 query heads on one KV head; slots beyond one 64-tile
      {2, 65, 2, 1, 64, 12},
  };
  std::uint64_t seed = 500;
  for (const auto& s : shapes) {
    for (const float alpha_hi : {0.f, 1.f}) {  // 0: every token appends
      CAPTURE(s.B, s.T, s.Hq, s.Hkv, s.Dk, s.Dv, alpha_hi, seed);
      const DmcTestData data(s, seed, alpha_hi);
      seed += 10;
      const auto cfg = dmc_test_config(s, s.T + 2);
      DmcCache ref(cfg), fast(cfg), threaded(cfg), chunked(cfg), stepped(cfg);
      Tensor<float, 4> o_ref({s.B, s.T, s.Hq, s.Dv}), o({s.B, s.T, s.Hq, s.Dv}), o2(o_ref.shape()), o3(o_ref.shape());
      seqmix::reference::dmc_attention(data.inputs(0, s.T), ref, o_ref.view());
      seqmix::dmc_attention(data.inputs(0, s.T), fast, o.view());
      seqmix::dmc_attention(data.inputs(0, s.T), threaded, o2.view(), {}, st::two_thread_pool());
      st::require_close("o", o.cview(), o_ref.cview(), 2e-5);
      require_same_dmc_cache(fast, ref, 1e-5);
      require_same_dmc_cache(threaded, fast, 0.0);  // a task owns its heads: threads change nothing
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o2.data()[i] == o.data()[i]);
      // Two chunks (the second continues the cache) and token-by-token steps give the same bits.
      const index_t cut = s.T / 3;
      seqmix::dmc_attention(data.inputs(0, cut), chunked, o3.view().slice(1, 0, cut));
      seqmix::dmc_attention(data.inputs(cut, s.T - cut), chunked, o3.view().slice(1, cut, s.T - cut), {},
                            st::two_thread_pool());
      require_same_dmc_cache(chunked, fast, 0.0);
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o3.data()[i] == o.data()[i]);
      Tensor<float, 3> o_step({s.B, s.Hq, s.Dv});
      for (index_t t = 0; t < s.T; ++t) {
        seqmix::DmcStepInputs step;
        // [B,1,H,D] -> [B,H,D] views of token t.
        step.q = seqmix::ConstView<float, 3>(data.q.data() + t * data.q.cview().stride(1), {s.B, s.Hq, s.Dk},
                                             {data.q.cview().stride(0), s.Dk, 1});
        step.k = seqmix::ConstView<float, 3>(data.k.data() + t * data.k.cview().stride(1), {s.B, s.Hkv, s.Dk},
                                             {data.k.cview().stride(0), s.Dk, 1});
        step.v = seqmix::ConstView<float, 3>(data.v.data() + t * data.v.cview().stride(1), {s.B, s.Hkv, s.Dv},
                                             {data.v.cview().stride(0), s.Dv, 1});
        step.alpha = seqmix::ConstView<float, 2>(data.alpha.data() + t * s.Hkv, {s.B, s.Hkv}, {s.T * s.Hkv, 1});
        step.omega = seqmix::ConstView<float, 2>(data.omega.data() + t * s.Hkv, {s.B, s.Hkv}, {s.T * s.Hkv, 1});
        seqmix::dmc_decode_step(step, stepped, o_step.view(), {}, t % 2 ? static_cast<const seqmix::Executor&>(st::two_thread_pool()) : seqmix::serial_executor());
        for (index_t b = 0; b < s.B; ++b)
          for (index_t h = 0; h < s.Hq; ++h)
            for (index_t c = 0; c < s.Dv; ++c) REQUIRE(o_step(b, h, c) == o(b, t, h, c));
      }
      require_same_dmc_cache(stepped, fast, 0.0);
      for (index_t b = 0; b < s.B; ++b)
        for (index_t h = 0; h < s.Hkv; ++h) {
          if (alpha_hi == 0.f) REQUIRE(fast.size(b, h) == s.T);
          if (alpha_hi == 1.f && s.T >= 7) REQUIRE(fast.size(b, h) < s.T);  // merges did happen
        }
    }
  }
}

TEST_CASE("dmc with every token appended equals causal attention and KvCache decode", "[dmc]") {
  const DmcTestShape s{2, 23, 6, 2, 12, 7};
  const DmcTestData data(s, 700, 0.f);
  DmcCache cache(dmc_test_config(s, s.T + 1));
  Tensor<float, 4> o({s.B, s.T, s.Hq, s.Dv}), o_dense({s.B, s.T, s.Hq, s.Dv});
  seqmix::dmc_attention(data.inputs(0, s.T), cache, o.view());
  seqmix::AttentionInputs<float> dense;
  dense.q = data.q.cview(), dense.k = data.k.cview(), dense.v = data.v.cview();
  seqmix::AttentionOptions causal;
  causal.causal = true;
  seqmix::reference::attention(dense, {o_dense.view(), {}}, causal);
  st::require_close("o vs causal attention", o.cview(), o_dense.cview(), 2e-5);

  // One more decode token against an fp32 KvCache holding the same T + 1 entries.
  seqmix::KvCacheConfig kv_cfg;
  kv_cfg.batch = s.B, kv_cfg.kv_heads = s.Hkv, kv_cfg.key_dim = s.Dk, kv_cfg.value_dim = s.Dv;
  kv_cfg.key_format = seqmix::KvFormat::f32, kv_cfg.value_format = seqmix::KvFormat::f32;
  seqmix::KvCache kv(kv_cfg);
  const auto q1 = st::random_tensor<4>({s.B, 1, s.Hq, s.Dk}, 710, -2.f, 2.f);
  const auto k1 = st::random_tensor<4>({s.B, 1, s.Hkv, s.Dk}, 711);
  const auto v1 = st::random_tensor<4>({s.B, 1, s.Hkv, s.Dv}, 712);
  kv.append(data.k.cview(), data.v.cview());
  kv.append(k1.cview(), v1.cview());
  Tensor<float, 2> zeros({s.B, s.Hkv}), ones({s.B, s.Hkv});
  for (auto& x : ones) x = 1.f;
  seqmix::DmcStepInputs step;
  step.alpha = zeros.cview(), step.omega = ones.cview();
  step.q = seqmix::ConstView<float, 3>(q1.data(), {s.B, s.Hq, s.Dk});
  step.k = seqmix::ConstView<float, 3>(k1.data(), {s.B, s.Hkv, s.Dk});
  step.v = seqmix::ConstView<float, 3>(v1.data(), {s.B, s.Hkv, s.Dv});
  Tensor<float, 3> o_step({s.B, s.Hq, s.Dv});
  seqmix::dmc_decode_step(step, cache, o_step.view(), {}, st::two_thread_pool());
  seqmix::KvCacheAttentionInputs kv_in;
  kv_in.q = q1.cview(), kv_in.cache = &kv;
  Tensor<float, 4> o_kv({s.B, 1, s.Hq, s.Dv});
  seqmix::kv_cache_attention(kv_in, {o_kv.view(), {}});
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t c = 0; c < s.Dv; ++c) CHECK(o_step(b, h, c) == Approx(o_kv(b, 0, h, c)).margin(2e-5));
  CHECK(cache.size(1, 1) == s.T + 1);
  CHECK(cache.tokens(0) == s.T + 1);
}

TEST_CASE("dmc merge computed by hand", "[dmc]") {
  // One KV head, two query heads, Dk = Dv = 2. Tokens: append k0 (omega 1), merge k1 (omega 3),
  // append k2 (omega 2), merge with alpha 0.5 (rounds to merge) k3 (omega 2).
  DmcCacheConfig cfg;
  cfg.key_dim = 2, cfg.value_dim = 2, cfg.capacity = 2;
  DmcCache cache(cfg);
  const float k[4][2] = {{1, 0}, {5, 4}, {0, 2}, {2, 0}};
  const float v[4][2] = {{2, 2}, {6, -2}, {1, 0}, {3, 4}};
  const float alpha[4] = {1.f, 1.f, 0.2f, 0.5f};  // the first merges into nothing: it appends
  const float omega[4] = {1.f, 3.f, 2.f, 2.f};
  Tensor<float, 4> q({1, 4, 2, 2}), K({1, 4, 1, 2}), V({1, 4, 1, 2}), o({1, 4, 2, 2});
  Tensor<float, 3> A({1, 4, 1}), W({1, 4, 1});
  for (index_t t = 0; t < 4; ++t) {
    for (index_t c = 0; c < 2; ++c) K(0, t, 0, c) = k[t][c], V(0, t, 0, c) = v[t][c];
    A(0, t, 0) = alpha[t], W(0, t, 0) = omega[t];
    q(0, t, 0, 0) = 1, q(0, t, 0, 1) = 0;   // head 0 scores the first channel
    q(0, t, 1, 0) = 0, q(0, t, 1, 1) = 0;   // head 1: all scores 0, a plain average of the slots
  }
  seqmix::DmcOptions options;
  options.scale = 1.f;
  seqmix::dmc_attention({q.cview(), K.cview(), V.cview(), A.cview(), W.cview()}, cache, o.view(), options);
  // After token 1: one slot, key (1*1 + 3*5)/4 = 4, (0 + 3*4)/4 = 3; value (2 + 18)/4 = 5, (2 - 6)/4 = -1.
  // After token 2: slots {(4,3) z 4, (0,2) z 2}. After token 3: slot 1 = (2*(0,2) + 2*(2,0))/4 = (1,1), z 4.
  REQUIRE(cache.size(0, 0) == 2);
  CHECK(cache.keys(0, 0)(0, 0) == Approx(4.f));
  CHECK(cache.keys(0, 0)(0, 1) == Approx(3.f));
  CHECK(cache.values(0, 0)(0, 0) == Approx(5.f));
  CHECK(cache.values(0, 0)(0, 1) == Approx(-1.f));
  CHECK(cache.importance(0, 0)(0) == Approx(4.f));
  CHECK(cache.keys(0, 0)(1, 0) == Approx(1.f));
  CHECK(cache.keys(0, 0)(1, 1) == Approx(1.f));
  CHECK(cache.values(0, 0)(1, 0) == Approx(2.f));  // (2*1 + 2*3)/4
  CHECK(cache.values(0, 0)(1, 1) == Approx(2.f));  // (0 + 2*4)/4
  CHECK(cache.importance(0, 0)(1) == Approx(4.f));
  // Token 0: one slot = v0. Token 1: one slot = (5,-1) for both heads.
  CHECK(o(0, 0, 0, 0) == Approx(2.f));
  CHECK(o(0, 1, 0, 0) == Approx(5.f));
  CHECK(o(0, 1, 1, 1) == Approx(-1.f));
  // Token 2 sees {(4,3)->(5,-1), (0,2)->(1,0)}: head 0 weights e^4 : e^0, head 1 halves.
  const double w = std::exp(4.0) / (std::exp(4.0) + 1.0);
  CHECK(o(0, 2, 0, 0) == Approx(w * 5 + (1 - w) * 1));
  CHECK(o(0, 2, 0, 1) == Approx(w * -1 + (1 - w) * 0));
  CHECK(o(0, 2, 1, 0) == Approx(3.f));
  CHECK(o(0, 2, 1, 1) == Approx(-0.5f));
  // Token 3 sees {(4,3)->(5,-1), (1,1)->(2,2)}: head 0 weights e^4 : e^1.
  const double w3 = std::exp(4.0) / (std::exp(4.0) + std::exp(1.0));
  CHECK(o(0, 3, 0, 0) == Approx(w3 * 5 + (1 - w3) * 2));
  CHECK(o(0, 3, 0, 1) == Approx(w3 * -1 + (1 - w3) * 2));
  CHECK(o(0, 3, 1, 0) == Approx(3.5f));
  CHECK(o(0, 3, 1, 1) == Approx(0.5f));
  CHECK(cache.tokens(0) == 4);
  CHECK(cache.bytes() == 2 * sizeof(float) * 5);
}

TEST_CASE("dmc bad input is refused before the output or the cache changes", "[dmc]") {
  const DmcTestShape s{2, 5, 4, 2, 8, 6};
  const DmcTestData data(s, 800);
  const auto cfg = dmc_test_config(s, 8);
  DmcCache cache(cfg), untouched(cfg);
  Tensor<float, 4> o({s.B, s.T, s.Hq, s.Dv});
  // Give the caches a history so an unwanted write would show.
  seqmix::dmc_attention(data.inputs(0, 2), cache, o.view().slice(1, 0, 2));
  seqmix::dmc_attention(data.inputs(0, 2), untouched, o.view().slice(1, 0, 2));
  const auto expect_refused = [&](const char* argument, const seqmix::DmcInputs& in) {
    for (auto& x : o) x = 42.f;
    st::require_shape_error(argument, [&] { seqmix::dmc_attention(in, cache, o.view().slice(1, 0, in.q.size(1))); });
    st::require_shape_error(argument, [&] { seqmix::reference::dmc_attention(in, cache, o.view().slice(1, 0, in.q.size(1))); });
    for (const float x : o) REQUIRE(x == 42.f);
    require_same_dmc_cache(cache, untouched, 0.0);
  };
  for (const float bad : {1.5f, -0.25f, std::numeric_limits<float>::quiet_NaN()}) {
    CAPTURE(bad);
    DmcTestData d2(s, 800);
    d2.alpha(1, 3, 1) = bad;
    expect_refused("alpha", d2.inputs(0, s.T));
  }
  for (const float bad : {0.f, -1.f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    CAPTURE(bad);
    DmcTestData d2(s, 800);
    d2.omega(0, 4, 0) = bad;
    expect_refused("omega", d2.inputs(0, s.T));
  }
  {  // every head holds 1 or 2 slots: 8 more appends exceed the capacity of 8 on each head
    Tensor<float, 4> q8({s.B, 8, s.Hq, s.Dk}), k8({s.B, 8, s.Hkv, s.Dk}), v8({s.B, 8, s.Hkv, s.Dv});
    Tensor<float, 3> a8({s.B, 8, s.Hkv}), w8({s.B, 8, s.Hkv});
    for (auto& x : a8) x = 1.f;
    for (index_t t = 0; t < 8; ++t) a8(1, t, 1) = 0.f;  // only (b 1, head 1) appends
    for (auto& x : w8) x = 1.f;
    Tensor<float, 4> o8({s.B, 8, s.Hq, s.Dv});
    for (auto& x : o8) x = 42.f;
    const seqmix::DmcInputs in{q8.cview(), k8.cview(), v8.cview(), a8.cview(), w8.cview()};
    st::require_shape_error("cache", [&] { seqmix::dmc_attention(in, cache, o8.view()); });
    for (const float x : o8) REQUIRE(x == 42.f);
    require_same_dmc_cache(cache, untouched, 0.0);
    // As many appends as fit are accepted and fill that head exactly; the merging heads keep their count.
    const index_t room = cfg.capacity - untouched.size(1, 1), merged = untouched.size(0, 0);
    seqmix::dmc_attention({q8.cview().slice(1, 0, room), k8.cview().slice(1, 0, room), v8.cview().slice(1, 0, room),
                           a8.cview().slice(1, 0, room), w8.cview().slice(1, 0, room)},
                          untouched, o8.view().slice(1, 0, room));
    CHECK(untouched.size(1, 1) == cfg.capacity);
    CHECK(untouched.size(0, 0) == merged);
  }
  DmcCache fresh(cfg), fresh_copy(cfg);
  {  // shapes: q heads not a multiple of Hkv, k with the wrong Dk, o of the wrong shape
    const auto q3 = st::random_tensor<4>({s.B, s.T, 3, s.Dk}, 1);
    auto in = data.inputs(0, s.T);
    in.q = q3.cview();
    st::require_shape_error("q", [&] { seqmix::dmc_attention(in, fresh, o.view()); });
    const auto k_bad = st::random_tensor<4>({s.B, s.T, s.Hkv, s.Dk + 1}, 2);
    in = data.inputs(0, s.T);
    in.k = k_bad.cview();
    st::require_shape_error("k", [&] { seqmix::dmc_attention(in, fresh, o.view()); });
    Tensor<float, 4> o_bad({s.B, s.T, s.Hq, s.Dv + 1});
    st::require_shape_error("o", [&] { seqmix::dmc_attention(data.inputs(0, s.T), fresh, o_bad.view()); });
    seqmix::DmcOptions nan_scale;
    nan_scale.scale = std::numeric_limits<float>::quiet_NaN();
    st::require_shape_error("scale", [&] { seqmix::dmc_attention(data.inputs(0, s.T), fresh, o.view(), nan_scale); });
    require_same_dmc_cache(fresh, fresh_copy, 0.0);
    CHECK(fresh.size(1, 1) == 0);
  }
  {  // the step: a bad alpha, and a full cache
    Tensor<float, 3> q1({s.B, s.Hq, s.Dk}), k1({s.B, s.Hkv, s.Dk}), v1({s.B, s.Hkv, s.Dv}), o1({s.B, s.Hq, s.Dv});
    Tensor<float, 2> a1({s.B, s.Hkv}), w1({s.B, s.Hkv});
    for (auto& x : w1) x = 1.f;
    for (auto& x : a1) x = 0.f;
    for (auto& x : o1) x = 42.f;
    a1(1, 0) = 2.f;
    const seqmix::DmcStepInputs step{q1.cview(), k1.cview(), v1.cview(), a1.cview(), w1.cview()};
    st::require_shape_error("alpha", [&] { seqmix::dmc_decode_step(step, cache, o1.view()); });
    a1(1, 0) = 0.f;
    DmcCacheConfig tiny = cfg;
    tiny.capacity = 1;
    DmcCache full(tiny);
    seqmix::dmc_decode_step(step, full, o1.view());
    for (auto& x : o1) x = 42.f;
    a1(0, 1) = 1.f;  // this head merges and would fit; the others append into a full cache
    st::require_shape_error("cache", [&] { seqmix::dmc_decode_step(step, full, o1.view()); });
    for (const float x : o1) REQUIRE(x == 42.f);
    CHECK(full.tokens(0) == 1);
    CHECK(full.size(0, 1) == 1);
  }
  DmcCacheConfig zero = cfg;
  zero.capacity = 0;
  st::require_shape_error("capacity", [&] { DmcCache c(zero); });
}
