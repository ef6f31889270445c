// KV cache serving forms (issue 14 item 3, issue 24): ragged append of packed sequences into
// cache rows against per-row appends, truncate (speculative rollback) against never having
// appended, bad configurations and positions refused before any change, and non-finite values
// kept visible by the quantized formats (against the fp32 cache).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvCache;
using seqmix::KvCacheConfig;
using seqmix::KvFormat;
using seqmix::KeyQuant;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Storage {
  const char* name;
  KvFormat key, value;
  KeyQuant key_quant;
  index_t group, residual;
  bool mixed;
};

const std::vector<Storage>& storages() {
  static const std::vector<Storage> table = {
      {"fp32", KvFormat::f32, KvFormat::f32, KeyQuant::per_channel, 0, 0, false},
      {"fp16 R=8", KvFormat::f16, KvFormat::f16, KeyQuant::per_channel, 0, 8, false},
      {"int8 per-channel", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, false},
      {"int4 per-channel R=40", KvFormat::int4, KvFormat::int4, KeyQuant::per_channel, 0, 40, false},
      {"int4 per-token g=7 int2", KvFormat::int4, KvFormat::int2, KeyQuant::per_token, 7, 0, false},
      {"int8 per-token g=16 R=5", KvFormat::int8, KvFormat::int8, KeyQuant::per_token, 16, 5, false},
      {"zipcache int8/int4", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, true},
  };
  return table;
}

KvCacheConfig make_config(const Storage& s, index_t B, index_t H, index_t Dk, index_t Dv, index_t rollback) {
  KvCacheConfig cfg;
  cfg.batch = B, cfg.kv_heads = H, cfg.key_dim = Dk, cfg.value_dim = Dv;
  cfg.key_format = s.key, cfg.value_format = s.value, cfg.key_quant = s.key_quant;
  cfg.group_size = s.group, cfg.residual = s.residual, cfg.rollback = rollback;
  if (s.mixed) cfg.mixed = seqmix::KvMixedPrecision{};
  return cfg;
}

// Everything observable of one (b, h): positions, dequantized keys and values, bit for bit.
void require_same_head(const KvCache& a, const KvCache& b, index_t ra, index_t rb, index_t h) {
  REQUIRE(a.size(ra, h) == b.size(rb, h));
  REQUIRE(a.positions(ra, h) == b.positions(rb, h));
  const index_t n = a.size(ra, h), Dk = a.config().key_dim, Dv = a.config().value_dim;
  Tensor<float, 2> ka({n, Dk}), kb({n, Dk}), va({n, Dv}), vb({n, Dv});
  a.read_keys(ra, h, ka.view()), b.read_keys(rb, h, kb.view());
  a.read_values(ra, h, va.view()), b.read_values(rb, h, vb.view());
  for (index_t e = 0; e < n; ++e) {
    INFO("entry " << e << " of " << n);
    for (index_t c = 0; c < Dk; ++c) REQUIRE(ka(e, c) == kb(e, c));
    for (index_t c = 0; c < Dv; ++c) REQUIRE(va(e, c) == vb(e, c));
  }
  REQUIRE(a.head(ra, h).blocks.size() == b.head(rb, h).blocks.size());
  REQUIRE(a.head(ra, h).residual.size() == b.head(rb, h).residual.size());
}

// Decode attention of one query row per cache row, fast form.
Tensor<float, 4> decode(const KvCache& cache, const Tensor<float, 4>& q) {
  seqmix::KvCacheAttentionInputs in;
  in.q = q.cview(), in.cache = &cache;
  Tensor<float, 4> o({q.size(0), 1, q.size(2), cache.config().value_dim});
  seqmix::AttentionOptions opt;
  opt.causal = false;
  seqmix::kv_cache_attention(in, {o.view(), {}}, opt, st::two_thread_pool());
  return o;
}

// A dense [1, T, H, D] slice of a packed [1, total, H, D] tensor.
seqmix::ConstView<float, 4> tokens(const Tensor<float, 4>& x, index_t t0, index_t n) { return x.cview().slice(1, t0, n); }

TEST_CASE("kv cache ragged append equals per-row appends", "[kv_cache][serving]") {
  const index_t H = 2, Dk = 20, Dv = 24, S = 6;
  std::mt19937 rng(7);
  for (const Storage& s : storages()) {
    INFO(s.name);
    KvCache ragged(make_config(s, S, H, Dk, Dv, 0)), rows(make_config(s, S, H, Dk, Dv, 0));
    for (int round = 0; round < 4; ++round) {
      // N sequences to distinct rows (some padding), lengths 0..70 (1, 31, 32, 33 included).
      const index_t N = 4;
      std::vector<std::int64_t> slots = {3, -1, 0, 5};
      if (round % 2) slots = {1, 3, -1, 2};
      const std::vector<index_t> len_choices = {0, 1, 31, 32, 33, 70, 5};
      std::vector<std::int32_t> cu(1, 0);
      for (index_t n = 0; n < N; ++n) cu.push_back(cu.back() + static_cast<std::int32_t>(len_choices[(rng() % len_choices.size())]));
      std::vector<std::uint8_t> fresh = {1, 1, static_cast<std::uint8_t>(round == 2 ? 0 : 1), 1};
      const index_t total = cu.back();
      auto k = st::random_tensor<4>({1, total, H, Dk}, 100 + round), v = st::random_tensor<4>({1, total, H, Dv}, 200 + round);
      auto sal = st::random_tensor<3>({1, total, H}, 300 + round, 0.f, 1.f);
      seqmix::KvAppendInputs in;
      in.keys = k.cview(), in.values = v.cview(), in.saliency = sal.cview();
      in.batch.cu_seqlens = cu, in.batch.state_indices = slots, in.batch.has_initial_state = fresh;
      ragged.append(in);
      // The same, one row at a time through the slot form with one sequence each.
      for (index_t n = 0; n < N; ++n) {
        if (slots[n] < 0) continue;
        if (!fresh[n]) rows.reset(slots[n]);
        std::vector<std::int32_t> cu1 = {0, cu[n + 1] - cu[n]};
        std::vector<std::int64_t> slot1 = {slots[n]};
        seqmix::KvAppendInputs one;
        one.keys = tokens(k, cu[n], cu1[1]), one.values = tokens(v, cu[n], cu1[1]);
        one.saliency = sal.cview().slice(1, cu[n], cu1[1]);
        one.batch.cu_seqlens = cu1, one.batch.state_indices = slot1;
        rows.append(one);
      }
      for (index_t b = 0; b < S; ++b) {
        REQUIRE(ragged.next_position(b) == rows.next_position(b));
        for (index_t h = 0; h < H; ++h) require_same_head(ragged, rows, b, b, h);
      }
    }
  }
}

TEST_CASE("kv cache dense append with slots maps token rows to cache rows", "[kv_cache][serving]") {
  const index_t H = 1, D = 8, T = 40;
  KvCacheConfig cfg = make_config(storages()[2], 3, H, D, D, 0);
  KvCache slotted(cfg), plain(cfg);
  auto k = st::random_tensor<4>({2, T, H, D}, 1), v = st::random_tensor<4>({2, T, H, D}, 2);
  seqmix::KvAppendInputs in;
  in.keys = k.cview(), in.values = v.cview();
  std::vector<std::int64_t> slots = {2, 0};
  in.batch.state_indices = slots;
  slotted.append(in);
  auto k3 = st::random_tensor<4>({3, T, H, D}, 0), v3 = st::random_tensor<4>({3, T, H, D}, 0);
  for (index_t t = 0; t < T; ++t)
    for (index_t c = 0; c < D; ++c) {
      k3(2, t, 0, c) = k(0, t, 0, c), v3(2, t, 0, c) = v(0, t, 0, c);
      k3(0, t, 0, c) = k(1, t, 0, c), v3(0, t, 0, c) = v(1, t, 0, c);
    }
  plain.append(k3.cview(), v3.cview());
  plain.reset(1);
  for (index_t b = 0; b < 3; ++b) require_same_head(slotted, plain, b, b, 0);
  CHECK(slotted.size(1, 0) == 0);
}

// Speculative decoding: a prompt, then rounds of (append a draft, truncate to the accepted
// length, append the correction); against a cache that only ever got the accepted tokens.
TEST_CASE("kv cache truncate then re-append equals never having appended", "[kv_cache][serving]") {
  const index_t H = 2, Dk = 16, Dv = 12, B = 2;
  const int rounds = st::small_test_scale() ? 6 : 14;
  for (const Storage& s : storages())
    for (index_t W : {16, 40}) {
      INFO(s.name << " rollback=" << W);
      KvCache spec(make_config(s, B, H, Dk, Dv, W)), clean(make_config(s, B, H, Dk, Dv, W));
      std::mt19937 rng(static_cast<unsigned>(W));
      index_t seed = 1;
      auto append_both = [&](index_t b, index_t n, bool to_clean) {
        auto k = st::random_tensor<4>({1, n, H, Dk}, static_cast<std::uint64_t>(seed++));
        auto v = st::random_tensor<4>({1, n, H, Dv}, static_cast<std::uint64_t>(seed++));
        auto sal = st::random_tensor<3>({1, n, H}, static_cast<std::uint64_t>(seed++), 0.f, 1.f);
        std::vector<std::int32_t> cu = {0, static_cast<std::int32_t>(n)};
        std::vector<std::int64_t> slot = {b};
        seqmix::KvAppendInputs in;
        in.keys = k.cview(), in.values = v.cview(), in.saliency = sal.cview();
        in.batch.cu_seqlens = cu, in.batch.state_indices = slot;
        spec.append(in);
        if (to_clean) clean.append(in);
      };
      for (index_t b = 0; b < B; ++b) append_both(b, 30 + 37 * b, true);
      for (int r = 0; r < rounds; ++r)
        for (index_t b = 0; b < B; ++b) {
          const index_t draft = 1 + static_cast<index_t>(rng() % static_cast<unsigned>(W));
          const index_t accepted = static_cast<index_t>(rng() % static_cast<unsigned>(draft + 1));
          const std::int64_t base = spec.next_position(b);
          // Accepted draft tokens go to both caches in the same call; the rejected rest only to spec.
          if (accepted > 0) append_both(b, accepted, true);
          append_both(b, draft - accepted, false);
          spec.truncate(b, base + accepted);
          REQUIRE(spec.next_position(b) == clean.next_position(b));
          for (index_t h = 0; h < H; ++h) require_same_head(spec, clean, b, b, h);
          append_both(b, 1 + static_cast<index_t>(rng() % 3), true);  // the correction token(s)
        }
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < H; ++h) require_same_head(spec, clean, b, b, h);
      auto q = st::random_tensor<4>({B, 1, 2 * H, Dk}, 99);
      const auto o1 = decode(spec, q), o2 = decode(clean, q);
      for (index_t i = 0; i < o1.numel(); ++i) REQUIRE(o1.data()[i] == o2.data()[i]);
    }
}

TEST_CASE("kv cache truncate beyond the rollback depth drops entries and keeps the rest", "[kv_cache][serving]") {
  for (const Storage& s : storages()) {
    INFO(s.name);
    KvCache cache(make_config(s, 1, 1, 8, 8, 0));
    auto k = st::random_tensor<4>({1, 150, 1, 8}, 1), v = st::random_tensor<4>({1, 150, 1, 8}, 2);
    cache.append(k.cview(), v.cview());
    Tensor<float, 2> before({150, 8});
    cache.read_keys(0, 0, before.view());
    cache.truncate(0, 70);
    REQUIRE(cache.size(0, 0) == 70);
    REQUIRE(cache.next_position(0) == 70);
    Tensor<float, 2> after({70, 8});
    cache.read_keys(0, 0, after.view());
    if (!s.mixed)  // ZipCache's partly emptied blocks merge (retain's compaction threshold)
      for (index_t e = 0; e < 70; ++e)
        for (index_t c = 0; c < 8; ++c) REQUIRE(after(e, c) == before(e, c));
    cache.truncate(0, 200);  // nothing at or past 200: no change
    REQUIRE(cache.size(0, 0) == 70);
    cache.truncate(0, 0);
    REQUIRE(cache.size(0, 0) == 0);
    cache.append(k.cview(), v.cview());
    REQUIRE(cache.size(0, 0) == 150);
  }
}

// ---- caller-provided storage ------------------------------------------------------------------

// The same operations on a cache in an arena and on one on the heap give the same cache; a full
// arena is refused with KvArenaFull, leaving the cache usable.
TEST_CASE("kv cache in a caller arena equals the heap cache", "[kv_cache][serving][arena]") {
  const index_t H = 2, Dk = 16, Dv = 16, B = 3;
  for (const Storage& s : storages()) {
    INFO(s.name);
    std::vector<std::uint8_t> buffer(8u << 20);
    seqmix::KvArena arena(buffer.data(), buffer.size());
    KvCacheConfig cfg = make_config(s, B, H, Dk, Dv, 24);
    KvCache heap(cfg);
    cfg.arena = &arena;
    KvCache owned(cfg);
    REQUIRE(owned.arena() == &arena);
    auto k = st::random_tensor<4>({B, 150, H, Dk}, 1), v = st::random_tensor<4>({B, 150, H, Dv}, 2);
    auto sal = st::random_tensor<3>({B, 150, H}, 3, 0.f, 1.f);
    for (KvCache* c : {&heap, &owned}) {
      c->append(k.cview().slice(1, 0, 100), v.cview().slice(1, 0, 100), {}, sal.cview().slice(1, 0, 100));
      c->truncate(1, 90);
      c->append(k.cview().slice(1, 100, 50), v.cview().slice(1, 100, 50), {}, sal.cview().slice(1, 100, 50));
      c->retain(0, 1, {0, 3, 5, 40, 41, 90, 120, 130});
      c->truncate(2, 20);
      c->reset(1);
      c->compact();
    }
    REQUIRE(arena.bytes_used() > 0);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h) require_same_head(owned, heap, b, b, h);
  }
  // A small arena runs out: KvArenaFull names the arena; the rows appended before stay readable.
  std::vector<std::uint8_t> small(64 << 10);
  seqmix::KvArena arena(small.data(), small.size());
  KvCacheConfig cfg = make_config(storages()[2], 1, 1, 64, 64, 0);
  cfg.arena = &arena;
  KvCache cache(cfg);
  auto k = st::random_tensor<4>({1, 32, 1, 64}, 1), v = st::random_tensor<4>({1, 32, 1, 64}, 2);
  index_t appended = 0;
  bool full = false;
  for (int i = 0; i < 100 && !full; ++i) {
    try {
      cache.append(k.cview(), v.cview());
      appended += 32;
    } catch (const seqmix::KvArenaFull& e) {
      full = true;
      CHECK(std::string(e.what()).find("KvArena") != std::string::npos);
    }
  }
  REQUIRE(full);
  REQUIRE(cache.size(0, 0) >= appended);
  Tensor<float, 2> keys({cache.size(0, 0), 64});
  cache.read_keys(0, 0, keys.view());
  cache.truncate(0, appended);  // give back what the failed call left
  REQUIRE(cache.size(0, 0) == appended);
}

// ---- bad input ---------------------------------------------------------------------------------

TEST_CASE("kv cache refuses absurd configurations", "[kv_cache][serving]") {
  KvCacheConfig ok;
  ok.key_dim = 8, ok.value_dim = 8;
  REQUIRE_NOTHROW(KvCache(ok));
  auto refuse = [](const char* arg, KvCacheConfig cfg) { st::require_shape_error(arg, [&] { KvCache c(cfg); }); };
  KvCacheConfig c = ok;
  c.kv_heads = index_t{1} << 62;
  refuse("config.kv_heads", c);
  c = ok, c.batch = index_t{1} << 30, c.kv_heads = index_t{1} << 30;
  refuse("config.kv_heads", c);
  c = ok, c.key_dim = index_t{1} << 40;
  refuse("config.key_dim", c);
  c = ok, c.value_dim = -3;
  refuse("config.value_dim", c);
  c = ok, c.residual = std::numeric_limits<index_t>::max();
  refuse("config.residual", c);
  c = ok, c.rollback = -1;
  refuse("config.rollback", c);
  c = ok, c.key_format = static_cast<KvFormat>(17);
  refuse("config.key_format", c);
  c = ok, c.value_format = static_cast<KvFormat>(9);
  refuse("config.value_format", c);
  c = ok, c.key_quant = static_cast<KeyQuant>(9);
  refuse("config.key_quant", c);
  c = ok, c.key_format = KvFormat::int2;
  refuse("config.key_format", c);
  c = ok, c.mixed = seqmix::KvMixedPrecision{}, c.mixed->value_format = static_cast<KvFormat>(200);
  refuse("config.mixed.value_format", c);
}

TEST_CASE("kv cache bad appends and truncates change nothing", "[kv_cache][serving]") {
  const index_t H = 1, D = 8;
  KvCacheConfig cfg = make_config(storages()[3], 3, H, D, D, 16);
  KvCache cache(cfg), copy(cfg);
  auto k = st::random_tensor<4>({3, 50, H, D}, 1), v = st::random_tensor<4>({3, 50, H, D}, 2);
  cache.append(k.cview(), v.cview());
  copy.append(k.cview(), v.cview());
  auto unchanged = [&] {
    for (index_t b = 0; b < 3; ++b) {
      REQUIRE(cache.next_position(b) == copy.next_position(b));
      require_same_head(cache, copy, b, b, 0);
    }
  };
  auto kp = st::random_tensor<4>({1, 10, H, D}, 3), vp = st::random_tensor<4>({1, 10, H, D}, 4);
  auto packed = [&](std::vector<std::int32_t> cu, std::vector<std::int64_t> slots) {
    seqmix::KvAppendInputs in;
    in.keys = kp.cview(), in.values = vp.cview();
    in.batch.cu_seqlens = cu, in.batch.state_indices = slots;
    cache.append(in);
  };
  st::require_shape_error("state_indices", [&] { packed({0, 4, 10}, {0, 3}); });   // row out of range
  st::require_shape_error("state_indices", [&] { packed({0, 4, 10}, {1, 1}); });   // one row twice
  st::require_shape_error("cu_seqlens", [&] { packed({0, 6, 4, 10}, {0, 1, 2}); });  // decreasing
  st::require_shape_error("cu_seqlens", [&] { packed({0, 4, 9}, {0, 1}); });       // not total_T
  unchanged();
  // Positions: not increasing in the second sequence, at or past 2^62, default overflow.
  Tensor<std::int64_t, 2> pos({1, 10});
  for (index_t t = 0; t < 10; ++t) pos(0, t) = 100 + t;
  pos(0, 7) = 50;
  seqmix::KvAppendInputs in;
  in.keys = kp.cview(), in.values = vp.cview(), in.positions = pos.cview();
  std::vector<std::int32_t> cu = {0, 4, 10};
  std::vector<std::int64_t> slots = {0, 2};
  in.batch.cu_seqlens = cu, in.batch.state_indices = slots;
  st::require_shape_error("positions", [&] { cache.append(in); });
  pos(0, 7) = 107;
  pos(0, 9) = std::numeric_limits<std::int64_t>::max();
  st::require_shape_error("positions", [&] { cache.append(in); });
  unchanged();
  // Append one token at 2^62 - 1 (the last position), then any default position overflows.
  KvCache edge(cfg);
  Tensor<std::int64_t, 2> last({3, 1});
  for (index_t b = 0; b < 3; ++b) last(b, 0) = KvCache::kMaxPosition - 1;
  edge.append(k.cview().slice(1, 0, 1), v.cview().slice(1, 0, 1), last.cview());
  REQUIRE(edge.next_position(0) == KvCache::kMaxPosition);
  st::require_shape_error("positions", [&] { edge.append(k.cview().slice(1, 0, 1), v.cview().slice(1, 0, 1)); });
  REQUIRE(edge.size(0, 0) == 1);
  // Truncate: bad row, negative position.
  st::require_shape_error("b, h", [&] { cache.truncate(3, 0); });
  st::require_shape_error("position", [&] { cache.truncate(0, -1); });
  unchanged();
}

// ---- non-finite values ---------------------------------------------------------------------------

// A NaN or inf key or value stays visible in every format: the dequantized group (or element)
// is non-finite, and decode attention is non-finite exactly where the fp32 cache's is.
TEST_CASE("kv cache quantized formats keep NaN and inf visible", "[kv_cache][serving][nonfinite]") {
  const index_t H = 2, Dk = 32, Dv = 32, T = 70;
  const float bads[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  for (const Storage& s : storages())
    for (float bad : bads)
      for (bool in_key : {true, false}) {
        INFO(s.name << " bad=" << bad << (in_key ? " key" : " value"));
        auto k = st::random_tensor<4>({1, T, H, Dk}, 1), v = st::random_tensor<4>({1, T, H, Dv}, 2);
        if (in_key)
          k(0, 9, 1, 5) = bad;
        else
          v(0, 9, 1, 5) = bad;
        KvCache cache(make_config(s, 1, H, Dk, Dv, 0));
        KvCache exact(make_config({"fp32", KvFormat::f32, KvFormat::f32, KeyQuant::per_channel, 0, 0, false}, 1, H, Dk, Dv, 0));
        cache.append(k.cview(), v.cview());
        exact.append(k.cview(), v.cview());
        Tensor<float, 2> out({T, in_key ? Dk : Dv});
        if (in_key)
          cache.read_keys(0, 1, out.view());
        else
          cache.read_values(0, 1, out.view());
        REQUIRE_FALSE(std::isfinite(out(9, 5)));
        // Other entries stay finite, except the channel's block-wide parameters of KIVI keys.
        const bool block_wide = in_key && seqmix::is_quantized(s.key) && s.key_quant == KeyQuant::per_channel;
        for (index_t e = 0; e < T; ++e)
          if (e != 9 && !block_wide) REQUIRE(std::isfinite(out(e, 5)));
        auto q = st::random_tensor<4>({1, 1, 2 * H, Dk}, 5);
        const auto o = decode(cache, q), o_exact = decode(exact, q);
        for (index_t hq = 0; hq < 2 * H; ++hq)
          for (index_t c = 0; c < Dv; ++c) {
            INFO("hq=" << hq << " c=" << c << " fp32 " << o_exact(0, 0, hq, c) << " cache " << o(0, 0, hq, c));
            if (!std::isfinite(o_exact(0, 0, hq, c))) REQUIRE_FALSE(std::isfinite(o(0, 0, hq, c)));
            if (hq / 2 != 1) REQUIRE(std::isfinite(o(0, 0, hq, c)));
          }
      }
}

TEST_CASE("kv cache int8 rows near the float range dequantize finite", "[kv_cache][serving][nonfinite]") {
  const index_t D = 16, T = 40;
  for (KeyQuant kq : {KeyQuant::per_channel, KeyQuant::per_token})
    for (KvFormat f : {KvFormat::int8, KvFormat::int4}) {
      KvCacheConfig cfg;
      cfg.key_dim = D, cfg.value_dim = D, cfg.key_format = f, cfg.value_format = f, cfg.key_quant = kq;
      KvCache cache(cfg);
      auto k = st::random_tensor<4>({1, T, 1, D}, 1), v = st::random_tensor<4>({1, T, 1, D}, 2);
      for (index_t t = 0; t < T; ++t) {
        k(0, t, 0, 3) = 3e38f, k(0, t, 0, 4) = -3e38f;
        v(0, t, 0, 3) = (t % 2 ? 3e38f : -3e38f), v(0, t, 0, 4) = -3e38f;
      }
      cache.append(k.cview(), v.cview());
      Tensor<float, 2> K({T, D}), V({T, D});
      cache.read_keys(0, 0, K.view());
      cache.read_values(0, 0, V.view());
      for (index_t t = 0; t < T; ++t)
        for (index_t c = 0; c < D; ++c) {
          INFO(seqmix::format_name(f) << " t=" << t << " c=" << c);
          REQUIRE(std::isfinite(K(t, c)));
          REQUIRE(std::isfinite(V(t, c)));
        }
      // The extremes come back within one step of themselves.
      CHECK(V(1, 3) > 2.9e38f);
      CHECK(V(0, 4) < -2.9e38f);
    }
}

}  // namespace
