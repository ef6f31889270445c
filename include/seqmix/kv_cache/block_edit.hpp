// Moving entries between blocks without requantizing them: copying one entry, dropping slots of
// a block (retain), and merging entries of several blocks into one (compaction).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "seqmix/kv_cache/block.hpp"
#include "seqmix/kv_cache/head.hpp"

namespace seqmix::detail {

// Copies entry t of `from` into slot i of `to` (same formats, `to` sized by empty_block): key codes
// or floats with any per-token key parameters, the value row with its parameters, the position.
// Codes move exactly; per-channel key parameters belong to the block and are not touched.
inline void copy_entry(const KvBlock& from, index_t t, KvBlock& to, index_t i, const KvCacheConfig& cfg) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  if (from.coded) {
    copy_coded_entry(cfg, from, t, to, i);
    to.positions[i] = from.positions[t];
    return;
  }
  if (is_quantized(from.key_format)) {
    for (index_t c = 0; c < Dk; ++c) set_key_code(to, c, i, key_code(from, c, t));
    if (cfg.key_quant == KeyQuant::per_token) {
      const index_t rows = static_cast<index_t>(from.key_params.size()) / from.slots;
      for (index_t r = 0; r < rows; ++r) to.key_params[r * to.slots + i] = from.key_params[r * from.slots + t];
    }
  } else {
    const std::size_t bytes = static_cast<std::size_t>(format_bits(from.key_format) / 8);
    for (index_t c = 0; c < Dk; ++c)
      std::memcpy(to.keys.data() + c * to.key_row + i * bytes, from.keys.data() + c * from.key_row + t * bytes, bytes);
  }
  if (is_quantized(from.value_format)) {
    for (index_t c = 0; c < Dv; ++c) set_value_code(to, Dv, i, c, value_code(from, Dv, t, c));
    const index_t groups = quant::group_count(Dv, cfg.group_size);
    for (index_t g = 0; g < groups; ++g) set_value_params(to, g, i, value_params(from, g, t));
  } else {
    std::memcpy(to.values.data() + i * to.value_row, from.values.data() + t * from.value_row,
                static_cast<std::size_t>(from.value_row));
  }
  to.positions[i] = from.positions[t];
}

// Keeps the slots marked in `keep` (size count), in order; codes are moved, never requantized.
inline void compact_block(KvBlock& blk, const KvCacheConfig& cfg, const KvVector<char>& keep) {
  KvVector<index_t> kept = kv_vector<index_t>(cfg.arena);
  for (index_t t = 0; t < blk.count; ++t)
    if (keep[t]) kept.push_back(t);
  const index_t n = static_cast<index_t>(kept.size());
  KvBlock out = empty_block(cfg, blk.key_format, blk.value_format, n);
  if (is_quantized(blk.key_format) && cfg.key_quant == KeyQuant::per_channel) out.key_params = blk.key_params;
  for (index_t i = 0; i < n; ++i) copy_entry(blk, kept[i], out, i, cfg);
  set_position_range(out);
  if (n == 0) out.min_position = blk.min_position, out.max_position = blk.max_position;
  blk = std::move(out);
}

// A block holding the entries `src` (in this order, at most kKvBlockTokens, non-empty) of blocks
// that share one key format and one value format. Values (per-token parameters), positions,
// float keys and per-token key codes and parameters are moved exactly. Per-channel quantized keys
// share parameters per block: taken from one source block they keep its parameters and codes;
// gathered from several they are dequantized and refitted over the merged entries (each element
// moves by at most half of the new step: the new range holds every dequantized value, so the new
// scale is at most (max - min) / (2^bits - 1) of the merged keys).
inline KvBlock merge_entries(const KvCacheConfig& cfg, const KvVector<KvBlock>& blocks, const KvVector<KvSlot>& src) {
  const index_t n = static_cast<index_t>(src.size()), Dk = cfg.key_dim, Dv = cfg.value_dim;
  const KvBlock& first = blocks[src[0].block];
  KvBlock blk = empty_block(cfg, first.key_format, first.value_format, n);
  for (index_t i = 0; i < n; ++i) copy_entry(blocks[src[i].block], src[i].slot, blk, i, cfg);
  set_position_range(blk);
  if (!is_quantized(first.key_format) || cfg.key_quant != KeyQuant::per_channel) return blk;
  const bool one_source = std::all_of(src.begin(), src.end(), [&](const KvSlot& s) { return s.block == src[0].block; });
  if (one_source) {
    blk.key_params = first.key_params;
    return blk;
  }
  const index_t group = cfg.group_size > 0 ? cfg.group_size : Dk;
  KvVector<float> K = kv_vector<float>(cfg.arena, static_cast<std::size_t>(n * Dk));
  KvVector<float> V = kv_vector<float>(cfg.arena, static_cast<std::size_t>(n * Dv), 0.f);
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < Dk; ++c) K[i * Dk + c] = key_element(blocks[src[i].block], cfg.key_quant, group, c, src[i].slot);
  KvBlock keys = make_block(cfg, first.key_format, KvFormat::f32, K.data(), Dk, V.data(), Dv, blk.positions.data(), n);
  blk.keys = std::move(keys.keys);
  blk.key_params = std::move(keys.key_params);
  return blk;
}


}  // namespace seqmix::detail
