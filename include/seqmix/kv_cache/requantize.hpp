// Re-encoding whole blocks of a KvCache head in lower-bit formats (the age-based bit schedule,
// policies/age_schedule.hpp): each entry is decoded to fp32 with the block's own parameters and
// the block is rebuilt by make_block in the new formats, with new parameters fitted to the decoded
// rows. Only formats with fewer bits replace the old ones; positions and entry order are kept.
#pragma once

#include <algorithm>
#include <cstdint>

#include "seqmix/kv_cache/block.hpp"
#include "seqmix/kv_cache/head.hpp"

namespace seqmix::detail {

// The format a block moves to: the target when it has fewer bits than the current one.
inline KvFormat lowered_format(KvFormat current, KvFormat target) noexcept {
  return format_bits(target) < format_bits(current) ? target : current;
}

// Rebuilds every block of hd whose newest entry is at a position < before_position in
// (lowered) formats; returns the number of entries re-encoded. The rollback rows no longer
// describe the blocks afterwards, so they are dropped when anything changed (as compaction does).
inline index_t requantize_older(const KvCacheConfig& cfg, KvHead& hd, std::int64_t before_position, KvFormat key_format,
                                KvFormat value_format) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  const index_t group = cfg.group_size > 0 ? cfg.group_size : Dk;
  index_t moved = 0;
  KvVector<float> K = kv_vector<float>(cfg.arena), V = kv_vector<float>(cfg.arena);
  for (KvBlock& blk : hd.blocks) {
    if (blk.count == 0) continue;
    const std::int64_t newest = *std::max_element(blk.positions.begin(), blk.positions.begin() + blk.count);
    if (newest >= before_position) continue;
    const KvFormat kf = lowered_format(blk.key_format, key_format), vf = lowered_format(blk.value_format, value_format);
    if (kf == blk.key_format && vf == blk.value_format) continue;
    K.assign(static_cast<std::size_t>(blk.count * Dk), 0.f);
    V.assign(static_cast<std::size_t>(blk.count * Dv), 0.f);
    for (index_t t = 0; t < blk.count; ++t) {
      for (index_t c = 0; c < Dk; ++c) K[t * Dk + c] = key_element(blk, cfg.key_quant, group, c, t);
      value_row(blk, cfg.group_size, Dv, t, V.data() + t * Dv);
    }
    KvBlock next = make_block(cfg, kf, vf, K.data(), Dk, V.data(), Dv, blk.positions.data(), blk.count);
    blk = std::move(next);
    moved += blk.count;
  }
  if (moved > 0) hd.flushed.clear();
  return moved;
}

}  // namespace seqmix::detail
