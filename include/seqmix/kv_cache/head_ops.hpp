// Upkeep of one head's storage: flushing the residual window into blocks (ZipCache's split
// included), dropping residual rows, refitting a block's keys, and merging partly filled blocks
// (compaction). The KvCache class calls these with its configuration.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "seqmix/kv_cache/block.hpp"
#include "seqmix/kv_cache/block_edit.hpp"
#include "seqmix/kv_cache/head.hpp"

namespace seqmix::detail {

// Keeps residual rows `rows` (increasing), dropping the others, and releases the memory.
inline void keep_residual(const KvCacheConfig& cfg, KvResidual& r, const KvVector<index_t>& rows) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const index_t e = rows[i], d = static_cast<index_t>(i);
    if (e == d) continue;
    std::copy_n(r.keys.begin() + e * Dk, Dk, r.keys.begin() + d * Dk);
    std::copy_n(r.values.begin() + e * Dv, Dv, r.values.begin() + d * Dv);
    r.positions[d] = r.positions[e];
    r.given_saliency[d] = r.given_saliency[e];
    r.attention_sum[d] = r.attention_sum[e];
    r.attention_queries[d] = r.attention_queries[e];
  }
  const std::size_t n = rows.size();
  r.keys.resize(n * static_cast<std::size_t>(Dk));
  r.values.resize(n * static_cast<std::size_t>(Dv));
  r.positions.resize(n);
  r.given_saliency.resize(n);
  r.attention_sum.resize(n);
  r.attention_queries.resize(n);
}

// Appends residual rows [begin, begin + n) of `from` to `to`.
inline void copy_residual_rows(const KvCacheConfig& cfg, const KvResidual& from, index_t begin, index_t n, KvResidual& to) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  to.keys.insert(to.keys.end(), from.keys.begin() + begin * Dk, from.keys.begin() + (begin + n) * Dk);
  to.values.insert(to.values.end(), from.values.begin() + begin * Dv, from.values.begin() + (begin + n) * Dv);
  auto tail = [&](auto& dst, const auto& src) { dst.insert(dst.end(), src.begin() + begin, src.begin() + begin + n); };
  tail(to.positions, from.positions);
  tail(to.given_saliency, from.given_saliency);
  tail(to.attention_sum, from.attention_sum);
  tail(to.attention_queries, from.attention_queries);
}

// Undoes the newest flush of a head (hd.flushed non-empty): drops the blocks and entries made
// from the newest kept group and puts its rows back in front of the residual window.
inline void unflush_newest(const KvCacheConfig& cfg, KvHead& hd) {
  KvFlushedGroup g = std::move(hd.flushed.back());
  hd.flushed.pop_back();
  hd.blocks.erase(hd.blocks.end() - g.blocks, hd.blocks.end());
  hd.order.erase(hd.order.end() - g.rows.size(), hd.order.end());
  copy_residual_rows(cfg, hd.residual, 0, hd.residual.size(), g.rows);
  hd.residual = std::move(g.rows);
}

// Saliency of residual token e at flush time.
inline float saliency_of(const KvResidual& r, index_t e) {
  if (!std::isnan(r.given_saliency[e])) return r.given_saliency[e];
  if (r.attention_queries[e] > 0.f) return r.attention_sum[e] / r.attention_queries[e];
  return std::numeric_limits<float>::infinity();  // never observed: keep it precise
}

// A block from residual rows rows[0..n) (sorted here, so entries keep increasing positions).
inline KvBlock group_block(const KvCacheConfig& cfg, const KvResidual& r, index_t* rows, index_t n, KvFormat kf,
                           KvFormat vf, index_t head = 0) {
  std::sort(rows, rows + n);
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  KvVector<float> K = kv_vector<float>(cfg.arena, static_cast<std::size_t>(n * Dk));
  KvVector<float> V = kv_vector<float>(cfg.arena, static_cast<std::size_t>(n * Dv));
  KvVector<std::int64_t> pos = kv_vector<std::int64_t>(cfg.arena, static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    std::copy_n(r.keys.begin() + rows[i] * Dk, Dk, K.begin() + i * Dk);
    std::copy_n(r.values.begin() + rows[i] * Dv, Dv, V.begin() + i * Dv);
    pos[i] = r.positions[rows[i]];
  }
  return make_block(cfg, kf, vf, K.data(), Dk, V.data(), Dv, pos.data(), n, head);
}

// Drops the oldest n residual rows (no allocation).
inline void drop_residual_front(const KvCacheConfig& cfg, KvResidual& r, index_t n) noexcept {
  if (n <= 0) return;
  r.keys.erase(r.keys.begin(), r.keys.begin() + n * cfg.key_dim);
  r.values.erase(r.values.begin(), r.values.begin() + n * cfg.value_dim);
  r.positions.erase(r.positions.begin(), r.positions.begin() + n);
  r.given_saliency.erase(r.given_saliency.begin(), r.given_saliency.begin() + n);
  r.attention_sum.erase(r.attention_sum.begin(), r.attention_sum.begin() + n);
  r.attention_queries.erase(r.attention_queries.begin(), r.attention_queries.begin() + n);
}

// Keeps the oldest n residual rows, dropping the newer ones (no allocation).
inline void keep_residual_front(const KvCacheConfig& cfg, KvResidual& r, index_t n) noexcept {
  const std::size_t rows = static_cast<std::size_t>(n);
  r.keys.resize(rows * static_cast<std::size_t>(cfg.key_dim));
  r.values.resize(rows * static_cast<std::size_t>(cfg.value_dim));
  r.positions.resize(rows), r.given_saliency.resize(rows), r.attention_sum.resize(rows), r.attention_queries.resize(rows);
}

// Moves the oldest 32 residual tokens into blocks while the residual holds R + 32 or more.
// Each group is built (and every container it grows reserved) before the head changes, so a
// failed allocation (KvArenaFull) leaves the head valid: the groups flushed so far moved, the
// rest still in the residual window.
inline void flush(const KvCacheConfig& cfg, KvHead& hd) {
  KvResidual& r = hd.residual;
  const index_t Bt = kKvBlockTokens;
  index_t first = 0;
  try {
    while (r.size() - first >= cfg.residual + Bt) {
      KvVector<index_t> rows = kv_vector<index_t>(cfg.arena, static_cast<std::size_t>(Bt));
      std::iota(rows.begin(), rows.end(), first);
      index_t high = Bt;
      if (cfg.mixed) {
        KvVector<float> s = kv_vector<float>(cfg.arena, static_cast<std::size_t>(Bt));
        for (index_t t = 0; t < Bt; ++t) s[t] = saliency_of(r, first + t);
        // Most salient first, ties in append order (std::sort: stable_sort takes a heap buffer).
        std::sort(rows.begin(), rows.end(), [&](index_t a, index_t c) {
          return s[a - first] > s[c - first] || (s[a - first] == s[c - first] && a < c);
        });
        high = static_cast<index_t>(std::ceil(cfg.mixed->salient_fraction * static_cast<float>(Bt)));
      }
      auto made = kv_vector<KvBlock>(cfg.arena);
      made.reserve(2);
      if (high > 0) made.push_back(group_block(cfg, r, rows.data(), high, cfg.key_format, cfg.value_format, hd.kv_head));
      if (high < Bt) made.push_back(group_block(cfg, r, rows.data() + high, Bt - high, cfg.mixed->key_format, cfg.mixed->value_format));
      KvFlushedGroup g(cfg.arena);
      if (cfg.rollback > 0) {  // keep the group's rows to undo this flush (truncate)
        g.blocks = static_cast<index_t>(made.size());
        copy_residual_rows(cfg, r, first, Bt, g.rows);
        hd.flushed.reserve(hd.flushed.size() + 1);
      }
      hd.blocks.reserve(hd.blocks.size() + made.size());
      hd.order.reserve(hd.order.size() + static_cast<std::size_t>(Bt));
      // Commit: nothing below allocates.
      for (KvBlock& blk : made) {
        const std::uint32_t id = static_cast<std::uint32_t>(hd.blocks.size());
        for (index_t i = 0; i < blk.count; ++i) hd.order.push_back({id, static_cast<std::uint32_t>(i)});
        hd.blocks.push_back(std::move(blk));
      }
      // Entry order stays append order even when a group was split over two blocks.
      std::sort(hd.order.end() - Bt, hd.order.end(), [&](const KvSlot& a, const KvSlot& c) {
        return hd.blocks[a.block].positions[a.slot] < hd.blocks[c.block].positions[c.slot];
      });
      if (cfg.rollback > 0) {
        const std::size_t keep = static_cast<std::size_t>((cfg.rollback + Bt - 1) / Bt);
        if (hd.flushed.size() == keep) hd.flushed.erase(hd.flushed.begin());
        hd.flushed.push_back(std::move(g));
      }
      first += Bt;
    }
  } catch (...) {
    drop_residual_front(cfg, r, first);
    throw;
  }
  drop_residual_front(cfg, r, first);
}

// Refits and re-encodes the keys of a block from fp32 rows K [count][Dk]; values untouched.
inline void rebuild_keys(const KvCacheConfig& cfg, KvBlock& blk, const float* K) {
  KvVector<float> V = kv_vector<float>(cfg.arena, static_cast<std::size_t>(blk.count * cfg.value_dim), 0.f);
  KvBlock keys_only = make_block(cfg, blk.key_format, KvFormat::f32, K, cfg.key_dim, V.data(),
                                                 cfg.value_dim, blk.positions.data(), blk.count);
  blk.keys = std::move(keys_only.keys);
  blk.key_params = std::move(keys_only.key_params);
}

// compact() of KvCache on one head (the rules are documented there).
inline void compact_head(const KvCacheConfig& cfg, KvHead& hd) {
  const index_t Bt = kKvBlockTokens, E = static_cast<index_t>(hd.order.size());
  const std::size_t nb = hd.blocks.size();
  // Format pair of each block, and the entries (in entry order) of the partly filled blocks of each.
  KvArena* const A = cfg.arena;
  auto pairs = kv_vector<std::pair<KvFormat, KvFormat>>(A);
  auto pair_of = kv_vector<std::size_t>(A, nb);
  for (std::size_t k = 0; k < nb; ++k) {
    const auto p = std::make_pair(hd.blocks[k].key_format, hd.blocks[k].value_format);
    const auto it = std::find(pairs.begin(), pairs.end(), p);
    pair_of[k] = static_cast<std::size_t>(it - pairs.begin());
    if (it == pairs.end()) pairs.push_back(p);
  }
  auto partial_blocks = kv_vector<index_t>(A, pairs.size(), 0);
  for (std::size_t k = 0; k < nb; ++k)
    if (hd.blocks[k].count < Bt) ++partial_blocks[pair_of[k]];
  auto merge = kv_vector<char>(A, nb, 0);
  bool any = false;
  for (std::size_t k = 0; k < nb; ++k)
    if (hd.blocks[k].count < Bt && partial_blocks[pair_of[k]] >= 2) merge[k] = 1, any = true;
  if (!any) return;
  hd.flushed.clear();  // blocks are renumbered: flushes can no longer be undone

  // Output blocks: the untouched ones and the merged groups, each with its first entry index
  // (blocks stay ordered by their first entry, so a block spans a narrow range of positions).
  struct Out {
    index_t first;
    std::size_t old_block;  // nb: a merged block
    KvVector<KvSlot> sources;
  };
  auto outs = kv_vector<Out>(A);
  auto out_of_block = kv_vector<index_t>(A, nb, -1);
  auto out_of_pair = kv_vector<index_t>(A, pairs.size(), -1);
  auto target = kv_vector<KvSlot>(A, static_cast<std::size_t>(E));  // entry -> (output, slot)
  for (index_t e = 0; e < E; ++e) {
    const KvSlot s = hd.order[e];
    if (!merge[s.block]) {
      if (out_of_block[s.block] < 0) {
        out_of_block[s.block] = static_cast<index_t>(outs.size());
        outs.push_back({e, s.block, kv_vector<KvSlot>(A)});
      }
      target[e] = {static_cast<std::uint32_t>(out_of_block[s.block]), s.slot};
      continue;
    }
    index_t& open = out_of_pair[pair_of[s.block]];
    if (open < 0 || static_cast<index_t>(outs[open].sources.size()) == Bt) {
      open = static_cast<index_t>(outs.size());
      outs.push_back({e, nb, kv_vector<KvSlot>(A)});
    }
    target[e] = {static_cast<std::uint32_t>(open), static_cast<std::uint32_t>(outs[open].sources.size())};
    outs[open].sources.push_back(s);
  }
  // Outputs were created in order of first entry, so their indices are the new block ids.
  auto blocks = kv_vector<KvBlock>(A);
  blocks.reserve(outs.size());
  for (const Out& o : outs)
    blocks.push_back(o.old_block < nb ? std::move(hd.blocks[o.old_block]) : merge_entries(cfg, hd.blocks, o.sources));
  hd.order = std::move(target);
  hd.blocks = std::move(blocks);
}

}  // namespace seqmix::detail
