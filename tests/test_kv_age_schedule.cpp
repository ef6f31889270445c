// Age-based bit schedule (issue 22 item 6): a KvCache appended in chunks with the schedule
// applied after each chunk holds every block in the formats of its age band, the fp32 residual
// untouched; every decoded element is within the sum of the quantization steps it went through
// (per-token and per-channel keys, value groups); attention over the scheduled cache agrees
// with the reference reading it; a second call changes nothing; bad schedules are refused before
// any block changes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/policies/age_schedule.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::Tensor;
namespace st = seqmix::testing;
namespace kv = seqmix::kv;

// Step of a format relative to the range it quantizes (0 for float formats).
double age_step(KvFormat f) {
  return seqmix::is_quantized(f) ? 1.0 / ((1 << seqmix::format_bits(f)) - 1) : 0.0;
}

// The band a block of newest position `newest` belongs to when the row's newest position is `now`.
const kv::AgeBand* age_band_of(const kv::AgeSchedule& s, std::int64_t now, std::int64_t newest) {
  const kv::AgeBand* band = nullptr;
  for (const auto& b : s.bands)
    if (now - newest >= b.min_age) band = &b;
  return band;
}

struct AgeCase {
  seqmix::KeyQuant key_quant;
  index_t group;
  index_t residual;
};

}  // namespace

TEST_CASE("kv age schedule stores each age band in its formats within the error bound", "[kv_cache][age_schedule]") {
  const index_t B = 2, H = 2, Dk = 12, Dv = 20, N = st::small_test_scale() ? 230 : 330, chunk = 7;
  const kv::AgeSchedule schedule{{{32, KvFormat::int8, KvFormat::int8}, {96, KvFormat::int4, KvFormat::int4},
                                  {160, KvFormat::int4, KvFormat::int2}}};
  for (const AgeCase& c : {AgeCase{seqmix::KeyQuant::per_token, 0, 0}, AgeCase{seqmix::KeyQuant::per_channel, 0, 16},
                           AgeCase{seqmix::KeyQuant::per_token, 4, 5}}) {
    INFO("key_quant " << int(c.key_quant) << " group " << c.group << " residual " << c.residual);
    seqmix::KvCacheConfig cfg;
    cfg.batch = B, cfg.kv_heads = H, cfg.key_dim = Dk, cfg.value_dim = Dv;
    cfg.key_format = KvFormat::f16, cfg.value_format = KvFormat::f16;
    cfg.key_quant = c.key_quant, cfg.group_size = c.group, cfg.residual = c.residual;
    seqmix::KvCache cache(cfg);
    Tensor<float, 4> keys = st::random_tensor<4>({B, N, H, Dk}, 71, -2.f, 2.f);
    Tensor<float, 4> values = st::random_tensor<4>({B, N, H, Dv}, 72, -1.f, 3.f);
    seqmix::KvCache plain(cfg);
    for (index_t t0 = 0; t0 < N; t0 += chunk) {
      const index_t n = std::min(chunk, N - t0);
      cache.append(keys.cview().slice(1, t0, n), values.cview().slice(1, t0, n));
      plain.append(keys.cview().slice(1, t0, n), values.cview().slice(1, t0, n));
      kv::apply_age_schedule(cache, schedule);
    }
    CHECK(kv::apply_age_schedule(cache, schedule) == 0);  // nothing new: nothing moves
    // Smaller, except with groups of 4 channels: two fp32 parameters per 4 codes cost more than
    // fp16 (8 + 2 or 4 bytes against 8 per group), so the schedule only pays with wide groups.
    if (c.group == 0) CHECK(cache.bytes() < plain.bytes());

    const std::int64_t now = N - 1;
    Tensor<float, 2> kout({N, Dk}), vout({N, Dv});
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h) {
        REQUIRE(cache.size(b, h) == N);
        const auto& hd = cache.head(b, h);
        index_t block_entries = 0, bands_seen = 0;
        for (const auto& blk : hd.blocks) {
          const std::int64_t newest = *std::max_element(blk.positions.begin(), blk.positions.begin() + blk.count);
          const kv::AgeBand* band = age_band_of(schedule, now, newest);
          CHECK(blk.key_format == (band ? band->key_format : KvFormat::f16));
          CHECK(blk.value_format == (band ? band->value_format : KvFormat::f16));
          block_entries += blk.count;
          bands_seen += band == &schedule.bands.back();
        }
        CHECK(bands_seen > 0);
        CHECK(hd.residual.size() == N - block_entries);
        CHECK(hd.residual.size() <= c.residual + 32);
        cache.read_keys(b, h, kout.view());
        cache.read_values(b, h, vout.view());
        // Bound: every stage a token passed through (f16 rounding, then each band up to its
        // own) adds at most half its step of the range it quantized; the ranges are the
        // token's group (per-token keys, values) or the channel over its flush group of 32
        // (per-channel keys). The decoded range can exceed the original by the earlier errors,
        // hence the 1.1 factor.
        for (index_t j = 0; j < N; ++j) {
          const bool in_block = j < block_entries;
          const kv::AgeBand* band = nullptr;
          double key_steps = 0.0, value_steps = 0.0;
          if (in_block) {
            const std::int64_t newest = std::min<std::int64_t>(now, (j / 32) * 32 + 31);
            band = age_band_of(schedule, now, newest);
            for (const auto& s : schedule.bands) {
              key_steps += age_step(s.key_format) * (s.min_age <= (band ? band->min_age : -1));
              value_steps += age_step(s.value_format) * (s.min_age <= (band ? band->min_age : -1));
            }
          }
          const index_t kg = c.group > 0 ? c.group : Dk, vg = c.group > 0 ? c.group : Dv;
          for (index_t ch = 0; ch < Dk; ++ch) {
            double lo = 1e30, hi = -1e30;
            if (c.key_quant == seqmix::KeyQuant::per_channel) {
              for (index_t t = (j / 32) * 32; t < std::min<index_t>(N, (j / 32) * 32 + 32); ++t)
                lo = std::min<double>(lo, keys(b, t, h, ch)), hi = std::max<double>(hi, keys(b, t, h, ch));
            } else {
              for (index_t g = (ch / kg) * kg; g < std::min(Dk, (ch / kg) * kg + kg); ++g)
                lo = std::min<double>(lo, keys(b, j, h, g)), hi = std::max<double>(hi, keys(b, j, h, g));
            }
            const double x = keys(b, j, h, ch);
            const double bound = in_block ? 0.55 * (hi - lo) * key_steps + std::abs(x) * 1e-3 + 1e-6 : 0.0;
            if (std::abs(kout(j, ch) - x) > bound) FAIL_CHECK("key " << j << "," << ch << " err " << std::abs(kout(j, ch) - x) << " > " << bound);
          }
          for (index_t ch = 0; ch < Dv; ++ch) {
            double lo = 1e30, hi = -1e30;
            for (index_t g = (ch / vg) * vg; g < std::min(Dv, (ch / vg) * vg + vg); ++g)
              lo = std::min<double>(lo, values(b, j, h, g)), hi = std::max<double>(hi, values(b, j, h, g));
            const double x = values(b, j, h, ch);
            const double bound = in_block ? 0.55 * (hi - lo) * value_steps + std::abs(x) * 1e-3 + 1e-6 : 0.0;
            if (std::abs(vout(j, ch) - x) > bound) FAIL_CHECK("value " << j << "," << ch << " err " << std::abs(vout(j, ch) - x) << " > " << bound);
          }
        }
      }

    // The decode kernels read the re-encoded blocks: fast equals the reference over the cache.
    const index_t Hq = 2 * H;
    Tensor<float, 4> q = st::random_tensor<4>({B, 1, Hq, Dk}, 73);
    seqmix::KvCacheAttentionInputs in;
    in.q = q.view(), in.cache = &cache;
    Tensor<float, 4> o({B, 1, Hq, Dv}), o_ref({B, 1, Hq, Dv});
    seqmix::kv_cache_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, {});
    st::require_close("o", o.cview(), o_ref.cview(), 1e-4);

    // Eviction over blocks of several formats: retain (and the compaction it triggers, which
    // merges only blocks of one format pair) keeps every surviving value exactly, and keys too
    // unless per-channel blocks merge.
    cache.read_keys(1, 1, kout.view());
    cache.read_values(1, 1, vout.view());
    std::vector<index_t> kept;
    for (index_t j = 0; j < N; j += 3) kept.push_back(j);
    cache.retain(1, 1, kept);
    const index_t M = static_cast<index_t>(kept.size());
    Tensor<float, 2> kk({M, Dk}), vv({M, Dv});
    cache.read_keys(1, 1, kk.view());
    cache.read_values(1, 1, vv.view());
    bool values_same = true, keys_same = true;
    for (index_t i = 0; i < M; ++i) {
      for (index_t ch = 0; ch < Dv; ++ch) values_same = values_same && vv(i, ch) == vout(kept[i], ch);
      for (index_t ch = 0; ch < Dk; ++ch) keys_same = keys_same && kk(i, ch) == kout(kept[i], ch);
    }
    CHECK(values_same);
    if (c.key_quant == seqmix::KeyQuant::per_token) CHECK(keys_same);
    seqmix::kv_cache_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}}, {});
    st::require_close("o after retain", o.cview(), o_ref.cview(), 1e-4);
  }
}

TEST_CASE("kv age schedule refuses bad bands before any change", "[kv_cache][age_schedule]") {
  seqmix::KvCacheConfig cfg;
  cfg.key_dim = 8, cfg.value_dim = 8;
  seqmix::KvCache cache(cfg);
  Tensor<float, 4> k = st::random_tensor<4>({1, 100, 1, 8}, 5), v = st::random_tensor<4>({1, 100, 1, 8}, 6);
  cache.append(k.cview(), v.cview());
  const std::size_t before = cache.bytes();
  // The first band alone would move blocks; the second band's error must stop the whole call.
  const std::vector<kv::AgeSchedule> bad = {
      {{{10, KvFormat::int8, KvFormat::int8}, {5, KvFormat::int4, KvFormat::int4}}},   // ages not increasing
      {{{10, KvFormat::int4, KvFormat::int4}, {50, KvFormat::int8, KvFormat::int4}}},  // more key bits later
      {{{10, KvFormat::int8, KvFormat::int8}, {50, KvFormat::int2, KvFormat::int2}}},  // int2 keys
      {{{-1, KvFormat::int8, KvFormat::int8}}},                                         // negative age
  };
  for (const auto& s : bad) st::require_shape_error("bands", [&] { kv::apply_age_schedule(cache, s); });
  CHECK(cache.bytes() == before);
  CHECK(cache.head(0, 0).blocks.front().key_format == KvFormat::f16);
  st::require_shape_error("key_format", [&] { cache.requantize_older(0, 0, 50, KvFormat::int2, KvFormat::int2); });
  // Formats only go down: an int8 band over int4 blocks leaves them.
  CHECK(kv::apply_age_schedule(cache, {{{0, KvFormat::int4, KvFormat::int4}}}) == 96);
  CHECK(kv::apply_age_schedule(cache, {{{0, KvFormat::int8, KvFormat::int8}}}) == 0);
  CHECK(cache.head(0, 0).blocks.front().value_format == KvFormat::int4);
}
