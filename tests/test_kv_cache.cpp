// KV cache: quantization error bounds and packing, the cache object (append, residual flush,
// retain, replace, mixed precision, memory accounting, errors) and decode attention over the
// cache against (a) its reference form over the same cache and (b) fp32 reference::attention
// on the uncompressed K/V within the bound the storage implies (README.md in kv_cache/).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvCache;
using seqmix::KvCacheConfig;
using seqmix::KvFormat;
using seqmix::KeyQuant;
using seqmix::Tensor;
namespace st = seqmix::testing;
namespace quant = seqmix::quant;

// ---- quantization and packing ------------------------------------------------------------------

// Quantizes x in groups (0: one group) and decodes it again; params per group.
std::vector<float> round_trip(const std::vector<float>& x, index_t group, int bits, std::vector<quant::Params>& params) {
  const index_t n = static_cast<index_t>(x.size()), g = group > 0 ? group : n;
  params.assign(static_cast<std::size_t>(quant::group_count(n, group)), {});
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(n));
  std::vector<float> y(static_cast<std::size_t>(n));
  for (index_t k = 0, c0 = 0; c0 < n; ++k, c0 += g) {
    const index_t len = std::min(g, n - c0);
    params[k] = quant::min_max_params(x.data() + c0, len, 1, bits);
    quant::encode_codes(x.data() + c0, len, params[k], bits, codes.data() + c0);
  }
  for (index_t i = 0; i < n; ++i) {
    REQUIRE(codes[i] <= quant::code_max(bits));
    y[i] = quant::decode(codes[i], params[i / g]);
  }
  return y;
}

TEST_CASE("kv quantize error is at most half a step per group", "[kv_cache]") {
  for (int bits : {8, 4, 2})
    for (index_t n : {1, 5, 16, 31, 32, 33, 100, 128})
      for (index_t group : {0, 7, 16, 32}) {
        std::vector<float> x(n);
        std::mt19937 rng(static_cast<unsigned>(bits * 1000 + n * 10 + group));
        std::normal_distribution<float> dist(0.3f, 2.f);
        for (auto& v : x) v = dist(rng);
        std::vector<quant::Params> params;
        const std::vector<float> y = round_trip(x, group, bits, params);
        const index_t g = group > 0 ? group : n;
        for (index_t i = 0; i < n; ++i) {
          INFO("bits=" << bits << " n=" << n << " group=" << group << " i=" << i);
          REQUIRE(std::abs(x[i] - y[i]) <= quant::error_bound(params[i / g]));
        }
      }
}

TEST_CASE("kv quantize constant group has scale 0 and is exact", "[kv_cache]") {
  for (int bits : {8, 4, 2}) {
    std::vector<quant::Params> params;
    const std::vector<float> y = round_trip(std::vector<float>(37, -1.25f), 0, bits, params);
    CHECK(params[0].scale == 0.f);
    for (float v : y) REQUIRE(v == -1.25f);
  }
}

// Every (token, channel) of a block's key or value codes has its own bits, inside the block's
// bytes, and the bytes are exactly the codes when the shape fills whole units.
TEST_CASE("kv code layouts round trip and pack densely", "[kv_cache]") {
  namespace d = seqmix::detail;
  for (int bits : {8, 4, 2})
    for (index_t D : {1, 5, 16, 37, 64, 128})
      for (const bool keys : {true, false}) {
        if (keys && bits == 2) continue;  // keys are int8 or int4
        const index_t slots = keys ? d::lanes_per_unit(bits) * 2 : 30;  // values: n tokens, not a multiple of 4
        const index_t bytes = keys ? d::key_code_bytes(bits, D, slots) : d::value_code_bytes(bits, D, slots);
        std::vector<std::uint8_t> block(static_cast<std::size_t>(bytes + 4), 0xAB), codes;
        for (index_t i = 0; i < bytes; ++i) block[i] = 0;
        std::mt19937 rng(static_cast<unsigned>(D * 7 + bits + keys));
        const auto spot = [&](index_t t, index_t c) {
          return keys ? d::key_code_spot(bits, slots, c, t) : d::value_code_spot(bits, D, t, c);
        };
        for (index_t t = 0; t < slots; ++t)
          for (index_t c = 0; c < D; ++c) {
            codes.push_back(static_cast<std::uint8_t>(rng() & quant::code_max(bits)));
            REQUIRE(spot(t, c).byte < static_cast<std::size_t>(bytes));
            d::write_code(block.data(), spot(t, c), bits, codes.back());
          }
        INFO("bits=" << bits << " D=" << D << (keys ? " keys" : " values"));
        for (index_t i = bytes; i < bytes + 4; ++i) REQUIRE(block[i] == 0xAB);  // nothing past the end
        for (index_t t = 0, k = 0; t < slots; ++t)
          for (index_t c = 0; c < D; ++c, ++k) REQUIRE(d::read_code(block.data(), spot(t, c), bits) == codes[k]);
        if (D % d::lanes_per_unit(bits) == 0 || (keys && D % 4 == 0))
          if (keys || slots % 4 == 0) CHECK(bytes * 8 == slots * D * bits);
      }
  // Dense where the shapes fill whole units (keys: channel quads; values: token quads and units).
  CHECK(d::key_code_bytes(4, 128, 32) == 128 * 32 / 2);
  CHECK(d::value_code_bytes(2, 128, 32) == 128 * 32 / 4);
}

// ---- cache object ------------------------------------------------------------------------------

struct Storage {
  const char* name;
  KvFormat key, value;
  KeyQuant key_quant;
  index_t group;
  index_t residual;
  bool mixed;
};

const std::vector<Storage>& storages() {
  static const std::vector<Storage> table = {
      {"fp32", KvFormat::f32, KvFormat::f32, KeyQuant::per_channel, 0, 0, false},
      {"fp16", KvFormat::f16, KvFormat::f16, KeyQuant::per_channel, 0, 0, false},
      {"bf16", KvFormat::bf16, KvFormat::bf16, KeyQuant::per_channel, 0, 0, false},
      {"int8 per-channel", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, false},
      {"int4 per-channel R=32", KvFormat::int4, KvFormat::int4, KeyQuant::per_channel, 0, 32, false},
      {"int8 per-token g=16", KvFormat::int8, KvFormat::int8, KeyQuant::per_token, 16, 0, false},
      {"int4 per-token g=7", KvFormat::int4, KvFormat::int2, KeyQuant::per_token, 7, 0, false},
      {"int4 keys int2 values", KvFormat::int4, KvFormat::int2, KeyQuant::per_channel, 0, 0, false},
      {"int8 per-token g=32", KvFormat::int8, KvFormat::int8, KeyQuant::per_token, 32, 0, false},
      {"zipcache int8/int4", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, true},
  };
  return table;
}

// Tolerance of kv_cache_attention against its reference over the same cache: float rounding,
// and for quantized storage where the integer kernels run, their operand rounding (query and
// probability weights to 16 bits in two bytes, 2^-16 of each row's largest operand:
// integer_dots.hpp). The worst seen over these sweeps is 1.5e-5.
double reference_tolerance(const Storage& s) {
  const bool quantized = seqmix::is_quantized(s.key) || seqmix::is_quantized(s.value);
  return seqmix::detail::kKvIntegerDots && quantized ? 1e-4 : 1e-5;
}

KvCacheConfig make_config(const Storage& s, index_t B, index_t H, index_t Dk, index_t Dv) {
  KvCacheConfig c;
  c.batch = B, c.kv_heads = H, c.key_dim = Dk, c.value_dim = Dv;
  c.key_format = s.key, c.value_format = s.value, c.key_quant = s.key_quant;
  c.group_size = s.group, c.residual = s.residual;
  if (s.mixed) c.mixed = seqmix::KvMixedPrecision{KvFormat::int4, KvFormat::int4, 0.25f};
  return c;
}

// Largest elementwise storage error of a format for data with |x| <= amax (range <= 2 amax).
double format_error(KvFormat f, double amax) {
  switch (f) {
    case KvFormat::f32: return 0.0;
    case KvFormat::f16: return amax * std::ldexp(1.0, -11);
    case KvFormat::bf16: return amax * std::ldexp(1.0, -8);
    default: return 2.0 * amax / quant::code_max(seqmix::format_bits(f)) / 2.0 * (1 + 1e-5) + 1e-6;
  }
}

// What compaction may add to a key read back: 0 where codes and parameters move (float formats,
// per-token keys), else half a step of the merged block, <= format_error of the coarsest key
// format (the merged range lies within the range of the dequantized keys, |x| <= amax).
double requantization_bound(const Storage& s, double amax) {
  if (!seqmix::is_quantized(s.key) || s.key_quant == KeyQuant::per_token) return 0.0;
  return format_error(s.mixed ? KvFormat::int4 : s.key, amax);
}

Tensor<float, 2> read_all(const KvCache& cache, index_t b, index_t h, bool keys) {
  const index_t D = keys ? cache.config().key_dim : cache.config().value_dim;
  Tensor<float, 2> out({cache.size(b, h), D});
  if (keys)
    cache.read_keys(b, h, out.view());
  else
    cache.read_values(b, h, out.view());
  return out;
}

TEST_CASE("kv cache stores every format within its bound", "[kv_cache]") {
  for (const Storage& s : storages())
    for (index_t D : {5, 64, 100}) {
      const index_t B = 2, H = 2, T = 77;
      KvCache cache(make_config(s, B, H, D, D + 3));
      auto k = st::random_tensor<4>({B, T, H, D}, 1), v = st::random_tensor<4>({B, T, H, D + 3}, 2);
      cache.append(k.view(), v.view());
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < H; ++h) {
          REQUIRE(cache.size(b, h) == T);
          const auto K = read_all(cache, b, h, true), V = read_all(cache, b, h, false);
          const double ek = format_error(s.mixed ? KvFormat::int4 : s.key, 1.0);
          const double ev = format_error(s.mixed ? KvFormat::int4 : s.value, 1.0);
          for (index_t t = 0; t < T; ++t) {
            INFO(s.name << " D=" << D << " b=" << b << " h=" << h << " t=" << t);
            for (index_t c = 0; c < D; ++c) REQUIRE(std::abs(K(t, c) - k(b, t, h, c)) <= ek);
            for (index_t c = 0; c < D + 3; ++c) REQUIRE(std::abs(V(t, c) - v(b, t, h, c)) <= ev);
          }
          const auto pos = cache.positions(b, h);
          for (index_t t = 0; t < T; ++t) REQUIRE(pos[t] == t);
        }
    }
}

TEST_CASE("kv cache append in pieces equals append at once", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 150, D = 40;
    KvCache whole(make_config(s, 1, 2, D, D)), pieces(make_config(s, 1, 2, D, D));
    auto k = st::random_tensor<4>({1, T, 2, D}, 3), v = st::random_tensor<4>({1, T, 2, D}, 4);
    whole.append(k.view(), v.view());
    for (index_t t0 = 0, step = 1; t0 < T; t0 += step, step = step % 37 + 5) {
      const index_t n = std::min(step, T - t0);
      pieces.append(k.view().slice(1, t0, n), v.view().slice(1, t0, n));
    }
    INFO(s.name);
    REQUIRE(pieces.bytes() == whole.bytes());
    for (index_t h = 0; h < 2; ++h) {
      const auto a = read_all(whole, 0, h, true), b = read_all(pieces, 0, h, true);
      const auto c = read_all(whole, 0, h, false), d = read_all(pieces, 0, h, false);
      REQUIRE(std::equal(a.begin(), a.end(), b.begin()));
      REQUIRE(std::equal(c.begin(), c.end(), d.begin()));
    }
  }
}

TEST_CASE("kv cache residual window stays exact and flushes in groups of 32", "[kv_cache]") {
  Storage s{"int4 R=40", KvFormat::int4, KvFormat::int4, KeyQuant::per_channel, 0, 40, false};
  KvCache cache(make_config(s, 1, 1, 16, 16));
  auto k = st::random_tensor<4>({1, 100, 1, 16}, 5), v = st::random_tensor<4>({1, 100, 1, 16}, 6);
  for (index_t t = 0; t < 100; ++t) {
    cache.append(k.view().slice(1, t, 1), v.view().slice(1, t, 1));
    const index_t n = t + 1;
    // Flushes happen when the residual reaches R + 32 = 72 tokens.
    const index_t flushed = n < 72 ? 0 : (n - 72) / 32 * 32 + 32;
    REQUIRE(cache.head(0, 0).residual.size() == n - flushed);
    REQUIRE(cache.head(0, 0).blocks.size() == static_cast<std::size_t>(flushed / 32));
  }
  const auto K = read_all(cache, 0, 0, true);
  for (index_t t = 32; t < 100; ++t)  // the residual: bit-exact
    for (index_t c = 0; c < 16; ++c) REQUIRE(K(t, c) == k(0, t, 0, c));
}

TEST_CASE("kv cache retain keeps exactly the named entries", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 130, D = 33;
    KvCache cache(make_config(s, 2, 1, D, D));
    auto k = st::random_tensor<4>({2, T, 1, D}, 7), v = st::random_tensor<4>({2, T, 1, D}, 8);
    cache.append(k.view(), v.view());
    const auto K0 = read_all(cache, 1, 0, true), V0 = read_all(cache, 1, 0, false);
    const auto P0 = cache.positions(1, 0);
    std::vector<index_t> kept;
    for (index_t e = 0; e < T; ++e)
      if (e < 4 || e % 7 == 3 || e >= T - 20) kept.push_back(e);
    cache.retain(1, 0, kept);
    INFO(s.name);
    REQUIRE(cache.size(1, 0) == static_cast<index_t>(kept.size()));
    REQUIRE(cache.size(0, 0) == T);
    const auto K = read_all(cache, 1, 0, true), V = read_all(cache, 1, 0, false);
    const auto P = cache.positions(1, 0);
    // retain compacts here (the blocks end up less than half full): exact except per-channel
    // quantized keys gathered from several blocks, requantized within half of the new step.
    const double requant = requantization_bound(s, 1.0);
    for (std::size_t i = 0; i < kept.size(); ++i) {
      REQUIRE(P[i] == P0[kept[i]]);
      for (index_t c = 0; c < D; ++c) {
        if (requant == 0.0)
          REQUIRE(K(i, c) == K0(kept[i], c));  // codes moved, never requantized
        else
          REQUIRE(std::abs(K(i, c) - K0(kept[i], c)) <= requant);
        REQUIRE(V(i, c) == V0(kept[i], c));
      }
      REQUIRE(cache.find_position(1, 0, P0[kept[i]]) == static_cast<index_t>(i));
    }
    st::require_shape_error("position", [&] { cache.find_position(1, 0, 5); });  // evicted
    cache.retain(1, 0, {});
    REQUIRE(cache.size(1, 0) == 0);
  }
}

TEST_CASE("kv cache compact packs sparse survivors into full blocks", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 1000, Dk = 33, Dv = 20, H = 2;
    KvCache cache(make_config(s, 1, H, Dk, Dv));
    auto k = st::random_tensor<4>({1, T, H, Dk}, 41), v = st::random_tensor<4>({1, T, H, Dv}, 42);
    cache.append(k.view(), v.view());
    INFO(s.name);
    for (index_t h = 0; h < H; ++h) {
      const auto K0 = read_all(cache, 0, h, true), V0 = read_all(cache, 0, h, false);
      const auto P0 = cache.positions(0, h);
      // Full-block cost per format pair before eviction, and the block-part bytes.
      using Pair = std::pair<KvFormat, KvFormat>;
      std::map<Pair, std::size_t> block_bytes, bytes_before, entries_before;
      for (const auto& blk : cache.head(0, h).blocks) {
        const Pair p{blk.key_format, blk.value_format};
        block_bytes[p] = std::max(block_bytes[p], blk.bytes());
        bytes_before[p] += blk.bytes(), entries_before[p] += static_cast<std::size_t>(blk.count);
      }
      std::vector<index_t> kept;  // ~8% scattered, plus sinks and the newest 24
      for (index_t e = 0; e < T; ++e)
        if (e < 4 || e % (13 + h) == 6 || e >= T - 24) kept.push_back(e);
      cache.retain(0, h, kept);
      cache.compact(0, h);
      cache.compact(0, h);  // idempotent
      const auto& hd = cache.head(0, h);
      // At most one partly filled block per format pair; slots in entry order.
      std::map<Pair, index_t> partial, entries_after;
      std::map<Pair, std::size_t> bytes_after;
      for (const auto& blk : hd.blocks) {
        const Pair p{blk.key_format, blk.value_format};
        REQUIRE(blk.count >= 1);
        if (blk.count < 32) ++partial[p];
        entries_after[p] += blk.count;
        bytes_after[p] += blk.bytes();
        for (index_t t = 1; t < blk.count; ++t) REQUIRE(blk.positions[t] > blk.positions[t - 1]);
      }
      for (const auto& [p, n] : partial) REQUIRE(n <= 1);
      // Bytes of the block part: the kept share of the pair's bytes before eviction plus at most
      // one (padded, own parameters) block per pair.
      for (const auto& [p, bytes] : bytes_after) {
        const double packed = double(entries_after[p]) / double(entries_before[p]) * double(bytes_before[p]);
        INFO("pair bytes " << bytes << " packed " << packed << " block " << block_bytes[p]);
        REQUIRE(double(bytes) <= packed + double(block_bytes[p]));
      }
      // Every entry reads back with its position; values exactly, keys exactly or within the
      // requantization bound (and within two storage steps of the original fp32 key).
      REQUIRE(cache.size(0, h) == static_cast<index_t>(kept.size()));
      const auto K = read_all(cache, 0, h, true), V = read_all(cache, 0, h, false);
      const auto P = cache.positions(0, h);
      const double requant = requantization_bound(s, 1.0);
      const double storage = format_error(s.mixed ? KvFormat::int4 : s.key, 1.0);
      for (std::size_t i = 0; i < kept.size(); ++i) {
        REQUIRE(P[i] == P0[kept[i]]);
        REQUIRE(cache.find_position(0, h, P[i]) == static_cast<index_t>(i));
        for (index_t c = 0; c < Dv; ++c) REQUIRE(V(i, c) == V0(kept[i], c));
        for (index_t c = 0; c < Dk; ++c) {
          if (requant == 0.0) {
            REQUIRE(K(i, c) == K0(kept[i], c));
          } else {
            REQUIRE(std::abs(K(i, c) - K0(kept[i], c)) <= requant);
            REQUIRE(std::abs(K(i, c) - k(0, kept[i], h, c)) <= storage + requant);
          }
        }
      }
    }
    // The fp32 cache after compaction costs the packed figure: (kept / 32 rounded up) blocks.
    if (s.key == KvFormat::f32 && s.residual == 0) {
      const auto& hd = cache.head(0, 0);
      REQUIRE(static_cast<index_t>(hd.blocks.size()) == (static_cast<index_t>(hd.order.size()) + 31) / 32);
    }
  }
}

TEST_CASE("kv cache attention after compaction matches the reference and the uncompacted cache", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 400, Dk = 48, Dv = 40, Hq = 4, Hkv = 2;
    KvCacheConfig cfg = make_config(s, 1, Hkv, Dk, Dv);
    KvCache cache(cfg), loose(cfg);
    auto k = st::random_tensor<4>({1, T, Hkv, Dk}, 43), v = st::random_tensor<4>({1, T, Hkv, Dv}, 44);
    auto q = st::random_tensor<4>({1, 3, Hq, Dk}, 45, -2.f, 2.f);
    cache.append(k.view(), v.view());
    loose.append(k.view(), v.view());
    for (index_t h = 0; h < Hkv; ++h) {
      std::vector<index_t> kept;  // dense enough (> half) that retain alone does not compact
      for (index_t e = 0; e < T; ++e)
        if (e % 5 != 2 - h) kept.push_back(e);
      cache.retain(0, h, kept);
      loose.retain(0, h, kept);
    }
    const std::size_t before = cache.bytes();
    REQUIRE(loose.bytes() == before);
    cache.compact();
    INFO(s.name);
    // ZipCache's salient blocks are a quarter full by design, so retain has compacted both.
    if (!s.mixed) CHECK(cache.bytes() < before);
    seqmix::AttentionOptions opt;
    opt.causal = true;
    opt.window = 150;
    opt.sink_tokens = 3;
    seqmix::KvCacheAttentionInputs in, in_loose;
    in.q = q.view(), in.cache = &cache;
    in_loose.q = q.view(), in_loose.cache = &loose;
    Tensor<std::int64_t, 2> qpos({1, 3});
    qpos(0, 0) = 90, qpos(0, 1) = 260, qpos(0, 2) = T - 1;
    in.positions = qpos.view(), in_loose.positions = qpos.view();
    Tensor<float, 4> o({1, 3, Hq, Dv}), o_ref({1, 3, Hq, Dv}), o_loose({1, 3, Hq, Dv});
    seqmix::kv_cache_attention(in, {o.view(), {}}, opt, st::two_thread_pool());
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, opt);
    seqmix::kv_cache_attention(in_loose, {o_loose.view(), {}}, opt, st::two_thread_pool());
    st::require_close("o", o.cview(), o_ref.cview(), reference_tolerance(s));
    // Lossless compaction changes nothing but the summation order.
    if (requantization_bound(s, 1.0) == 0.0) st::require_close("o vs uncompacted", o.cview(), o_loose.cview(), 1e-5);
  }
}

TEST_CASE("kv cache replace re-encodes one entry", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 70, D = 24;
    KvCache cache(make_config(s, 1, 1, D, D));
    auto k = st::random_tensor<4>({1, T, 1, D}, 9), v = st::random_tensor<4>({1, T, 1, D}, 10);
    cache.append(k.view(), v.view());
    const auto K0 = read_all(cache, 0, 0, true), V0 = read_all(cache, 0, 0, false);
    std::vector<float> key(D), value(D);
    for (index_t c = 0; c < D; ++c) key[c] = 0.5f - 0.03f * c, value[c] = 0.02f * c - 0.2f;
    for (index_t e : {3, 40, 69}) {
      cache.replace(0, 0, e, key.data(), value.data());
      const auto K = read_all(cache, 0, 0, true), V = read_all(cache, 0, 0, false);
      const double ek = format_error(s.mixed ? KvFormat::int4 : s.key, 1.0);
      const double ev = format_error(s.mixed ? KvFormat::int4 : s.value, 1.0);
      INFO(s.name << " entry " << e);
      for (index_t c = 0; c < D; ++c) {
        REQUIRE(std::abs(K(e, c) - key[c]) <= ek);
        REQUIRE(std::abs(V(e, c) - value[c]) <= ev);
      }
      // Per-token storage: the other entries are untouched.
      if (s.key_quant == KeyQuant::per_token || !seqmix::is_quantized(s.key))
        for (index_t t = 0; t < T; ++t)
          if (t != 3 && t != 40 && t != 69)
            for (index_t c = 0; c < D; ++c) REQUIRE(K(t, c) == K0(t, c));
    }
  }
}

TEST_CASE("kv cache bytes accounting", "[kv_cache]") {
  Storage s{"fp16", KvFormat::f16, KvFormat::f16, KeyQuant::per_channel, 0, 0, false};
  KvCache cache(make_config(s, 1, 1, 16, 16));
  auto k = st::random_tensor<4>({1, 70, 1, 16}, 11), v = st::random_tensor<4>({1, 70, 1, 16}, 12);
  cache.append(k.view(), v.view());
  // 2 blocks: keys 16*32*2 + values 32*16*2 + positions 32*8 each; entry map 64*8; residual of
  // 6 tokens: (16 + 16 + 3) floats + one int64 each.
  const std::size_t block = 16 * 32 * 2 + 32 * 16 * 2 + 32 * 8;
  REQUIRE(cache.bytes() == 2 * block + 64 * 8 + 6 * (35 * 4 + 8));
  // int4 keys per channel, int2 values, D = 128: codes 64 + 32 bytes a token plus parameters.
  Storage q{"int4", KvFormat::int4, KvFormat::int2, KeyQuant::per_channel, 0, 0, false};
  KvCache small(make_config(q, 1, 1, 128, 128));
  auto k2 = st::random_tensor<4>({1, 1024, 1, 128}, 13), v2 = st::random_tensor<4>({1, 1024, 1, 128}, 14);
  small.append(k2.view(), v2.view());
  const double expected = 64 + 32 + (2 * 128 * 4) / 32.0 + 8 /*value params*/ + 8 /*pos*/ + 8 /*map*/;
  REQUIRE(small.bytes_per_token() == Approx(expected));
}

TEST_CASE("kv cache streaming 100000 tokens under a budget keeps memory bounded", "[kv_cache]") {
  Storage s{"int4 R=32", KvFormat::int4, KvFormat::int4, KeyQuant::per_channel, 0, 32, false};
  const index_t D = 16, budget = 256, sinks = 4;
  KvCache cache(make_config(s, 1, 2, D, D));
  const index_t total = st::small_test_scale() ? 20000 : 100000;
  auto k = st::random_tensor<4>({1, 64, 2, D}, 15), v = st::random_tensor<4>({1, 64, 2, D}, 16);
  std::size_t peak = 0;
  for (index_t t0 = 0; t0 < total; t0 += 64) {
    for (index_t j = 0; j < 64; j += 16) cache.append(k.view().slice(1, j, 16), v.view().slice(1, j, 16));
    for (index_t h = 0; h < 2; ++h) {  // StreamingLLM-style: sinks + the most recent
      const index_t n = cache.size(0, h);
      if (n <= budget) continue;
      std::vector<index_t> kept;
      for (index_t e = 0; e < sinks; ++e) kept.push_back(e);
      for (index_t e = n - (budget - sinks); e < n; ++e) kept.push_back(e);
      cache.retain(0, h, kept);
      if (h == 1) cache.compact(0, h);  // head 1 also merges the sinks' block every round
      REQUIRE(cache.size(0, h) == budget);
    }
    peak = std::max(peak, cache.bytes());
  }
  for (index_t h = 0; h < 2; ++h) {
    const auto pos = cache.positions(0, h);
    REQUIRE(pos.front() == 0);
    REQUIRE(pos.back() == (total + 63) / 64 * 64 - 1);
  }
  const auto& hd = cache.head(0, 1);
  for (std::size_t k = 0; k < hd.blocks.size(); ++k) REQUIRE(hd.blocks[k].count == 32);  // 4 sinks + 220 = 7 blocks
  // Per head: at most R + 31 fp32 residual tokens ((2 D + 3) * 4 + 8 bytes each), budget + 64
  // tokens in int4 blocks (D/2 key + D/2 value code bytes, 8 value parameters, 8 position, 8 map,
  // 2 D * 4 / 32 per-channel key parameters), plus two partly filled blocks' worth of slack.
  const index_t residual_token = (2 * D + 3) * 4 + 8, block_token = D + 8 + 8 + 8 + 2 * D * 4 / 32;
  const index_t per_head = (32 + 31) * residual_token + (budget + 64 + 2 * 32) * block_token;
  INFO("peak " << peak << " bound " << 2 * per_head);
  REQUIRE(peak <= static_cast<std::size_t>(2 * per_head));
}

TEST_CASE("kv cache mixed precision keeps the salient tokens in the high format", "[kv_cache]") {
  Storage s{"zip", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, true};
  KvCache cache(make_config(s, 1, 1, 32, 32));
  auto k = st::random_tensor<4>({1, 64, 1, 32}, 17), v = st::random_tensor<4>({1, 64, 1, 32}, 18);
  Tensor<float, 3> sal({1, 64, 1});
  for (index_t t = 0; t < 64; ++t) sal(0, t, 0) = (t % 5 == 0) ? 10.f + t : 0.f;
  cache.append(k.view(), v.view(), {}, sal.view());
  const auto& hd = cache.head(0, 0);
  // Each group of 32: ceil(0.25 * 32) = 8 high, 24 low; the 7 (or 6) tokens t % 5 == 0 among them.
  REQUIRE(hd.blocks.size() == 4);
  index_t high = 0;
  for (const auto& blk : hd.blocks) high += blk.key_format == KvFormat::int8 ? blk.count : 0;
  REQUIRE(high == 16);
  for (std::size_t e = 0; e < hd.order.size(); ++e)
    if (e % 5 == 0) REQUIRE(hd.blocks[hd.order[e].block].value_format == KvFormat::int8);
  const auto P = cache.positions(0, 0);
  for (index_t t = 0; t < 64; ++t) REQUIRE(P[t] == t);

  // Saliency from observed attention: normalized by the number of queries that saw the token.
  Tensor<float, 2> probs({2, 3});
  Tensor<std::int64_t, 1> qpos({2}), kpos({3});
  Tensor<float, 1> out({3});
  qpos(0) = 1, qpos(1) = 2, kpos(0) = 0, kpos(1) = 1, kpos(2) = 2;
  probs(0, 0) = 0.5f, probs(0, 1) = 0.5f, probs(0, 2) = 0.f, probs(1, 0) = 0.2f, probs(1, 1) = 0.2f, probs(1, 2) = 0.6f;
  seqmix::normalized_attention_saliency(probs.view(), qpos.view(), kpos.view(), out.view());
  CHECK(out(0) == Approx(0.35f));
  CHECK(out(1) == Approx(0.35f));
  CHECK(out(2) == Approx(0.6f));
}

TEST_CASE("kv cache errors on misuse", "[kv_cache]") {
  Storage s{"int8", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, false};
  KvCache cache(make_config(s, 2, 2, 8, 8));
  auto k = st::random_tensor<4>({2, 3, 2, 8}, 19), v = st::random_tensor<4>({2, 3, 2, 8}, 20);
  auto bad_k = st::random_tensor<4>({2, 3, 2, 7}, 19), bad_v = st::random_tensor<4>({2, 4, 2, 8}, 20);
  st::require_shape_error("keys", [&] { cache.append(bad_k.view(), v.view()); });
  st::require_shape_error("values", [&] { cache.append(k.view(), bad_v.view()); });
  Tensor<std::int64_t, 2> pos({2, 3});
  for (index_t b = 0; b < 2; ++b) pos(b, 0) = 5, pos(b, 1) = 4, pos(b, 2) = 9;
  st::require_shape_error("positions", [&] { cache.append(k.view(), v.view(), pos.view()); });
  REQUIRE(cache.size(0, 0) == 0);  // nothing appended by the failed calls
  cache.append(k.view(), v.view());
  st::require_shape_error("kept", [&] { cache.retain(0, 0, {2, 1}); });
  st::require_shape_error("kept", [&] { cache.retain(0, 0, {0, 3}); });
  st::require_shape_error("b, h", [&] { cache.retain(2, 0, {}); });
  st::require_shape_error("position", [&] { cache.find_position(0, 0, 17); });
  st::require_shape_error("entry", [&] {
    std::vector<float> x(8);
    cache.replace(0, 0, 3, x.data(), x.data());
  });
  Tensor<float, 2> out({2, 8});
  st::require_shape_error("out", [&] { cache.read_keys(0, 0, out.view()); });
  KvCacheConfig c = make_config(s, 1, 1, 8, 8);
  c.key_format = KvFormat::int2;
  st::require_shape_error("config.key_format", [&] { KvCache bad(c); });
  // Attention: q with the wrong Dk, Hq not a multiple of Hkv.
  Tensor<float, 4> q({2, 1, 4, 9}), q3({2, 1, 3, 8}), o({2, 1, 4, 8});
  seqmix::KvCacheAttentionInputs in;
  in.cache = &cache, in.q = q.view();
  st::require_shape_error("q", [&] { seqmix::kv_cache_attention(in, {o.view(), {}}); });
  in.q = q3.view();
  st::require_shape_error("q", [&] { seqmix::kv_cache_attention(in, {o.view(), {}}); });
}

// ---- attention over the cache ------------------------------------------------------------------

struct AttnCase {
  const char* name;
  index_t B, Tq, T, Hq, Hkv, Dk, Dv;
  bool causal;
  index_t window, sinks;
  float softcap;
  bool alibi, sink_logits;
};

const std::vector<AttnCase>& attn_cases() {
  static const std::vector<AttnCase> table = {
      {"decode GQA4 D128", 1, 1, 300, 8, 2, 128, 128, true, 0, 0, 0.f, false, false},
      {"decode Hq=Hkv odd D", 2, 1, 77, 3, 3, 37, 45, true, 0, 0, 0.f, false, true},
      {"Tq>1 causal GQA2", 2, 5, 130, 4, 2, 64, 64, true, 0, 0, 0.f, false, false},
      {"window + sinks", 1, 3, 200, 6, 2, 48, 40, true, 50, 4, 0.f, true, false},
      {"softcap alibi non-causal", 1, 2, 65, 4, 1, 20, 33, false, 0, 0, 5.f, true, true},
      {"short T=1", 1, 1, 1, 2, 1, 16, 16, true, 0, 0, 0.f, false, false},
      // 47 blocks per head: several spans of 8 blocks in several pieces, the last span partial.
      {"long decode GQA4", 1, 1, 1500, 8, 2, 64, 64, true, 0, 0, 0.f, false, false},
      // Blocks wholly outside the window are skipped, so spans gather non-adjacent blocks.
      {"long window + sinks", 1, 2, 1100, 4, 1, 32, 32, true, 300, 40, 0.f, false, false},
  };
  return table;
}

// One attn_cases() row over one storage: a cache holding random K/V, the query, ALiBi slopes and
// sink logits, and the call's options and inputs; seeds seed, seed + 1, ... Not copied: `in`
// points at `cache`.
struct AttnSetup {
  KvCache cache;
  Tensor<float, 4> k, v, q;
  Tensor<float, 1> slopes, sinks;
  seqmix::AttentionOptions opt;
  seqmix::KvCacheAttentionInputs in;

  AttnSetup(const AttnCase& ac, const Storage& s, std::uint64_t seed)
      : cache(make_config(s, ac.B, ac.Hkv, ac.Dk, ac.Dv)),
        k(st::random_tensor<4>({ac.B, ac.T, ac.Hkv, ac.Dk}, seed)),
        v(st::random_tensor<4>({ac.B, ac.T, ac.Hkv, ac.Dv}, seed + 1)),
        q(st::random_tensor<4>({ac.B, ac.Tq, ac.Hq, ac.Dk}, seed + 2, -2.f, 2.f)),
        slopes(st::random_tensor<1>({ac.Hq}, seed + 3, 0.f, 0.1f)),
        sinks(st::random_tensor<1>({ac.Hq}, seed + 4)) {
    cache.append(k.view(), v.view());
    opt.causal = ac.causal, opt.window = ac.window, opt.sink_tokens = ac.sinks, opt.softcap = ac.softcap;
    in.q = q.view(), in.cache = &cache;
    if (ac.alibi) in.alibi_slopes = slopes.view();
    if (ac.sink_logits) in.sink_logits = sinks.view();
  }
  AttnSetup(const AttnSetup&) = delete;
  AttnSetup& operator=(const AttnSetup&) = delete;
};

TEST_CASE("kv cache attention matches its reference and fp32 attention within the storage bound", "[kv_cache]") {
  const seqmix::Executor& pool = st::two_thread_pool();
  for (const AttnCase& ac : attn_cases())
    for (const Storage& s : storages()) {
      AttnSetup setup(ac, s, 21);
      const Tensor<float, 4> &k = setup.k, &v = setup.v, &q = setup.q;
      const Tensor<float, 1> &slopes = setup.slopes, &sinks = setup.sinks;
      const seqmix::AttentionOptions& opt = setup.opt;
      const seqmix::KvCacheAttentionInputs& in = setup.in;
      const KvCache& cache = setup.cache;
      Tensor<float, 4> o({ac.B, ac.Tq, ac.Hq, ac.Dv}), o_ref({ac.B, ac.Tq, ac.Hq, ac.Dv}), o_dense({ac.B, ac.Tq, ac.Hq, ac.Dv});
      Tensor<float, 3> lse({ac.B, ac.Tq, ac.Hq}), lse_ref({ac.B, ac.Tq, ac.Hq});
      seqmix::kv_cache_attention(in, {o.view(), lse.view()}, opt, pool);
      seqmix::reference::kv_cache_attention(in, {o_ref.view(), lse_ref.view()}, opt);
      INFO(ac.name << " / " << s.name);
      st::require_close("o vs reference over the cache", o.cview(), o_ref.cview(), reference_tolerance(s));
      st::require_close("lse vs reference over the cache", lse.cview(), lse_ref.cview(), reference_tolerance(s));

      // (b) against fp32 attention on the original K/V. Score error <= scale * |q|_1 * max|dk|
      // = eps; softmax weights move by a factor within exp(+-2 eps), so
      // |do| <= (exp(2 eps) - 1) max|v| + max|dv| (README.md).
      seqmix::AttentionInputs<float> din;
      din.q = q.view(), din.k = k.view(), din.v = v.view();
      if (ac.alibi) din.alibi_slopes = slopes.view();
      if (ac.sink_logits) din.sink_logits = sinks.view();
      seqmix::reference::attention(din, {o_dense.view(), {}}, opt);
      double dk = 0, dv = 0, q1 = 0;
      for (index_t b = 0; b < ac.B; ++b)
        for (index_t h = 0; h < ac.Hkv; ++h) {
          const auto K = read_all(cache, b, h, true), V = read_all(cache, b, h, false);
          for (index_t t = 0; t < ac.T; ++t) {
            for (index_t c = 0; c < ac.Dk; ++c) dk = std::max(dk, double(std::abs(K(t, c) - k(b, t, h, c))));
            for (index_t c = 0; c < ac.Dv; ++c) dv = std::max(dv, double(std::abs(V(t, c) - v(b, t, h, c))));
          }
        }
      for (index_t b = 0; b < ac.B; ++b)
        for (index_t i = 0; i < ac.Tq; ++i)
          for (index_t h = 0; h < ac.Hq; ++h) {
            double n1 = 0;
            for (index_t c = 0; c < ac.Dk; ++c) n1 += std::abs(q(b, i, h, c));
            q1 = std::max(q1, n1);
          }
      const double eps = q1 / std::sqrt(double(ac.Dk)) * dk;
      const double bound = std::expm1(2 * eps) * 1.0 + dv + 1e-5;
      double worst = 0;
      for (index_t i = 0; i < o.numel(); ++i) worst = std::max(worst, double(std::abs(o.data()[i] - o_dense.data()[i])));
      INFO("worst " << worst << " bound " << bound << " (eps " << eps << ", max|dk| " << dk << ", max|dv| " << dv << ")");
      REQUIRE(worst <= bound);
    }
}

TEST_CASE("kv cache attention after eviction and replace matches the reference", "[kv_cache]") {
  for (const Storage& s : storages()) {
    const index_t T = 260, Dk = 64, Dv = 48, Hq = 8, Hkv = 2;
    KvCache cache(make_config(s, 1, Hkv, Dk, Dv));
    auto k = st::random_tensor<4>({1, T, Hkv, Dk}, 26), v = st::random_tensor<4>({1, T, Hkv, Dv}, 27);
    auto q = st::random_tensor<4>({1, 2, Hq, Dk}, 28, -2.f, 2.f);
    cache.append(k.view(), v.view());
    for (index_t h = 0; h < Hkv; ++h) {
      std::vector<index_t> kept;
      for (index_t e = 0; e < T; ++e)
        if (e < 4 || (e * (h + 3)) % 5 == 1 || e >= T - 40) kept.push_back(e);
      cache.retain(0, h, kept);
      std::vector<float> key(Dk, 0.1f), value(Dv, -0.3f);
      cache.replace(0, h, 5, key.data(), value.data());
    }
    seqmix::AttentionOptions opt;
    opt.causal = true;
    seqmix::KvCacheAttentionInputs in;
    in.q = q.view(), in.cache = &cache;
    Tensor<std::int64_t, 2> qpos({1, 2});
    qpos(0, 0) = 200, qpos(0, 1) = T - 1;  // explicit positions: the first query sees part of the cache
    in.positions = qpos.view();
    Tensor<float, 4> o({1, 2, Hq, Dv}), o_ref({1, 2, Hq, Dv}), o_serial({1, 2, Hq, Dv});
    seqmix::kv_cache_attention(in, {o.view(), {}}, opt, st::two_thread_pool());
    seqmix::kv_cache_attention(in, {o_serial.view(), {}}, opt);
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, opt);
    INFO(s.name);
    st::require_close("o", o.cview(), o_ref.cview(), reference_tolerance(s));
    st::require_close("o threads vs serial", o.cview(), o_serial.cview(), 1e-6);
  }
}

TEST_CASE("kv cache attention row with no visible key gives zeros", "[kv_cache]") {
  Storage s{"int8", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, false};
  KvCache cache(make_config(s, 1, 1, 16, 16));
  auto k = st::random_tensor<4>({1, 40, 1, 16}, 29), v = st::random_tensor<4>({1, 40, 1, 16}, 30);
  Tensor<std::int64_t, 2> kpos({1, 40});
  for (index_t t = 0; t < 40; ++t) kpos(0, t) = 100 + t;
  cache.append(k.view(), v.view(), kpos.view());
  REQUIRE(cache.next_position(0) == 140);
  auto q = st::random_tensor<4>({1, 1, 2, 16}, 31);
  Tensor<std::int64_t, 2> qpos({1, 1});
  qpos(0, 0) = 50;
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache, in.positions = qpos.view();
  seqmix::AttentionOptions opt;
  opt.causal = true;
  Tensor<float, 4> o({1, 1, 2, 16});
  Tensor<float, 3> lse({1, 1, 2});
  o.fill(7.f);
  seqmix::kv_cache_attention(in, {o.view(), lse.view()}, opt);
  for (float x : o) REQUIRE(x == 0.f);
  REQUIRE(lse(0, 0, 0) == -std::numeric_limits<float>::infinity());
}


// ---- one-byte operands (KvOperandPrecision::one_byte) ------------------------------------------

// Bound of one-byte operands against the reference over the same cache (kv_cache/README.md,
// "One-byte operands"): a key operand byte is within a / 2 of q_c scale_c (a = max / 127), so a
// logit moves by at most Dk max|q| Rk / 254 (Rk: the largest key group's range); a weight byte is
// within a / 2 of p_t scale_t (a: the block's largest weight / 127), so an output channel moves
// by at most 32 Rv / 254 (the blocks' largest probabilities sum to <= 1). q is taken with the
// softmax scale. Float key / value formats round nothing.
double one_byte_bound(const Storage& s, index_t Dk, double q_max, double key_range, double value_range,
                      double value_max) {
  const bool keys = seqmix::is_quantized(s.key) || s.mixed, values = seqmix::is_quantized(s.value) || s.mixed;
  const double eps = keys ? double(Dk) * q_max * key_range / 254.0 : 0.0;
  const double dv = values ? 32.0 * value_range / 254.0 : 0.0;
  return std::expm1(2 * eps) * value_max + dv + reference_tolerance(s);
}

// What one-byte operands measured over these sweeps (uniform data in [-1, 1], outputs <= 1): the
// worst |o - reference| over the cache was 7.2e-3 (Tk 1029: 1.0e-3); tested at 2e-2 beside the worst-case bound.
constexpr double kOneByteTypical = 2e-2;

TEST_CASE("kv cache attention with one-byte operands stays within its bound", "[kv_cache]") {
  for (const AttnCase& ac : attn_cases())
    for (const Storage& s : storages()) {
      AttnSetup setup(ac, s, 41);
      const auto& q = setup.q;
      const seqmix::AttentionOptions& opt = setup.opt;
      seqmix::KvCacheAttentionInputs in = setup.in;
      const index_t B = ac.B, Tq = ac.Tq, Hq = ac.Hq, Dv = ac.Dv;
      Tensor<float, 4> o_ref({B, Tq, Hq, Dv}), o_two({B, Tq, Hq, Dv}), o1({B, Tq, Hq, Dv}), o2({B, Tq, Hq, Dv});
      seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, opt);
      seqmix::kv_cache_attention(in, {o_two.view(), {}}, opt);
      in.operand_precision = seqmix::KvOperandPrecision::one_byte;
      seqmix::kv_cache_attention(in, {o1.view(), {}}, opt);
      seqmix::kv_cache_attention(in, {o2.view(), {}}, opt, st::two_thread_pool());
      double q_max = 0;
      for (float x : q) q_max = std::max(q_max, double(std::abs(x)));
      q_max /= std::sqrt(double(ac.Dk));
      // Data in [-1, 1]: every group's range <= 2, |v| <= 1 (plus float rounding).
      const double bound = one_byte_bound(s, ac.Dk, q_max, 2.0 + 1e-5, 2.0 + 1e-5, 1.0 + 1e-5);
      INFO(ac.name << " / " << s.name << " (one-byte bound " << bound << ")");
      for (const Tensor<float, 4>* o : {&o1, &o2})
        st::require_close("o one-byte vs reference over the cache", o->cview(), o_ref.cview(), std::min(bound, kOneByteTypical));
      // Where no integer kernel runs (float blocks, or no VNNI) nothing is rounded: bit for bit
      // the two-byte result.
      if (!seqmix::detail::kKvIntegerDots || (!seqmix::is_quantized(s.key) && !seqmix::is_quantized(s.value)))
        for (index_t i = 0; i < o1.numel(); ++i) REQUIRE(o1.data()[i] == o_two.data()[i]);
    }
}

TEST_CASE("kv cache attention one-byte operands with Tk 1024 GQA and B 2 on one and two threads", "[kv_cache]") {
  // A longer cache than attn_cases(): 32 blocks per head, several pieces per head on 2 threads,
  // a ragged tail of 5 tokens; int8 and int4 at D 128, the bench's storage.
  for (KvFormat f : {KvFormat::int8, KvFormat::int4}) {
    const index_t B = 2, T = 1029, Hq = 8, Hkv = 2, D = 128;
    Storage s{"q", f, f, KeyQuant::per_channel, 0, 0, false};
    KvCache cache(make_config(s, B, Hkv, D, D));
    auto k = st::random_tensor<4>({B, T, Hkv, D}, 46), v = st::random_tensor<4>({B, T, Hkv, D}, 47);
    auto q = st::random_tensor<4>({B, 1, Hq, D}, 48, -2.f, 2.f);
    cache.append(k.view(), v.view());
    seqmix::KvCacheAttentionInputs in;
    in.q = q.view(), in.cache = &cache, in.operand_precision = seqmix::KvOperandPrecision::one_byte;
    seqmix::AttentionOptions opt;
    opt.causal = true;
    Tensor<float, 4> o_ref({B, 1, Hq, D}), o1({B, 1, Hq, D}), o2({B, 1, Hq, D});
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, opt);
    seqmix::kv_cache_attention(in, {o1.view(), {}}, opt);
    seqmix::kv_cache_attention(in, {o2.view(), {}}, opt, st::two_thread_pool());
    INFO(seqmix::format_name(f));
    st::require_close("o one thread", o1.cview(), o_ref.cview(), kOneByteTypical);
    st::require_close("o two threads", o2.cview(), o_ref.cview(), kOneByteTypical);
    // The rounding is really one byte: it moves the result by more than two-byte operands do.
    double moved = 0;
    for (index_t i = 0; i < o1.numel(); ++i) moved = std::max(moved, double(std::abs(o1.data()[i] - o_ref.data()[i])));
    if (seqmix::detail::kKvIntegerDots) REQUIRE(moved > 1e-4);
  }
}

TEST_CASE("kv cache attention rejects an unknown operand precision before writing", "[kv_cache]") {
  Storage s{"int8", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0, 0, false};
  KvCache cache(make_config(s, 1, 1, 16, 16));
  auto k = st::random_tensor<4>({1, 40, 1, 16}, 49), v = st::random_tensor<4>({1, 40, 1, 16}, 50);
  cache.append(k.view(), v.view());
  auto q = st::random_tensor<4>({1, 1, 2, 16}, 51);
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache, in.operand_precision = static_cast<seqmix::KvOperandPrecision>(7);
  Tensor<float, 4> o({1, 1, 2, 16});
  o.fill(7.f);
  st::require_shape_error("operand_precision", [&] { seqmix::kv_cache_attention(in, {o.view(), {}}); });
  st::require_shape_error("operand_precision", [&] { seqmix::reference::kv_cache_attention(in, {o.view(), {}}); });
  for (float x : o) REQUIRE(x == 7.f);
}

}  // namespace
