// Age-based bit schedule for a KvCache (a staircase of formats by token age, as in SAQ-style
// progressive quantization and the "older tokens in fewer bits" caches): a token whose age (the
// row's newest position minus its own) reaches a band's threshold is re-encoded in that band's
// formats, e.g. fp16 -> int8 after 256 tokens -> int4 after 1024 -> int2 values after 4096.
// Unlike the other policies of this folder it acts on the cache's storage (KvCache::
// requantize_older); it evicts nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// One step of the staircase: tokens at least `min_age` old are stored in these formats (or in
/// the formats they already have, when those have fewer bits).
struct AgeBand {
  std::int64_t min_age = 0;                 ///< age threshold (the newest token has age 0)
  KvFormat key_format = KvFormat::int8;     ///< f32, f16, bf16, int8 or int4
  KvFormat value_format = KvFormat::int8;   ///< f32, f16, bf16, int8, int4 or int2
};

/// The staircase: bands in strictly increasing min_age, each with no more bits than the one
/// before (key and value formats separately).
struct AgeSchedule {
  std::vector<AgeBand> bands;  ///< e.g. {{256, int8, int8}, {1024, int4, int4}, {4096, int4, int2}}
};

/// Applies the schedule to every (row, KV head) of the cache: for each band, the blocks whose
/// entries are all at least min_age old (position <= next_position(b) - 1 - min_age) move to the
/// band's formats. Granularity is a block (up to 32 tokens flushed together), so a token enters a
/// band when the newest token of its block does; the fp32 residual window is never touched.
/// Call it after appends (e.g. once per decode step or every few steps); calling it again with
/// no new tokens changes nothing. Everything is validated before any block changes. Returns the
/// entries re-encoded over all heads and bands.
inline index_t apply_age_schedule(KvCache& cache, const AgeSchedule& schedule) {
  const ArgCheck check("kv::apply_age_schedule");
  const auto& bands = schedule.bands;
  for (std::size_t i = 0; i < bands.size(); ++i) {
    const AgeBand& band = bands[i];
    const std::string at = "band " + std::to_string(i);
    if (band.min_age < 0) check.fail("bands", at + " has min_age " + std::to_string(band.min_age) + " < 0");
    if (static_cast<int>(band.key_format) > static_cast<int>(KvFormat::int2) || band.key_format == KvFormat::int2)
      check.fail("bands", at + " has a key format that keys cannot use (f32, f16, bf16, int8 or int4)");
    if (static_cast<int>(band.value_format) > static_cast<int>(KvFormat::int2))
      check.fail("bands", at + " has a value format out of range");
    if (i == 0) continue;
    const AgeBand& prev = bands[i - 1];
    if (band.min_age <= prev.min_age)
      check.fail("bands", "min_age must increase strictly, " + at + " has " + std::to_string(band.min_age) +
                              " after " + std::to_string(prev.min_age));
    if (format_bits(band.key_format) > format_bits(prev.key_format) ||
        format_bits(band.value_format) > format_bits(prev.value_format))
      check.fail("bands", at + " (" + format_name(band.key_format) + " / " + format_name(band.value_format) +
                              ") has more bits than the band before (" + format_name(prev.key_format) + " / " +
                              format_name(prev.value_format) + ")");
  }
  const KvCacheConfig& cfg = cache.config();
  index_t moved = 0;
  for (index_t b = 0; b < cfg.batch; ++b) {
    const std::int64_t newest = cache.next_position(b) - 1;
    // Oldest band first: a block goes straight to the lowest formats its age reaches, and a
    // younger band then finds it with fewer bits already and leaves it.
    for (auto it = bands.rbegin(); it != bands.rend(); ++it) {
      const AgeBand& band = *it;
      if (newest - band.min_age < 0) continue;  // no token that old yet
      for (index_t h = 0; h < cfg.kv_heads; ++h)
        moved += cache.requantize_older(b, h, newest - band.min_age + 1, band.key_format, band.value_format);
    }
  }
  return moved;
}

}  // namespace seqmix::kv
