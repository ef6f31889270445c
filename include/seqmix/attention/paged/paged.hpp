// paged_attention, the fast form: split-KV decode (dense/decode.hpp) over the pages of a paged
// KV cache.
//
// The kernel is dense decode's: a work item is (sequence, block of up to 16 queries) with rows
// [queries x group] per KV head, its visible key tiles are split into contiguous pieces spread
// over the executor, each piece keeps (m, l, acc) per row, and the pieces are merged in key
// order. Only where a tile's rows come from changes: decode_tile reads key / value row c of
// head h at rows[c] + h * head_stride (PagedRows), with rows[] looked up in the block table once
// per tile, so pages are read in place (fp16 / bf16 widened in registers) at the bandwidth of
// contiguous decode. Tiles start at multiples of their width and span at most two pages when
// block_size >= tile / 2, so the next tile's K and V are four byte ranges, which the LineStream
// prefetch names while the current tile is computed.
//
// Multi-token queries (chunked prefill against the cached prefix, speculative verify) run the
// same kernel with up to 16 queries x group rows per item; causal masking inside the last tiles
// comes from the logit rule, tiles no query can see are never visited.
//
// No heap allocation after a first call of the same shape: the plan (items, tasks), the partial
// states and every thread's scratch are thread_local and grown on demand.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/paged/reference.hpp"

namespace seqmix {
namespace detail {

// Queries per work item: 16 queries x group 4 = 64 rows per KV head, the speculative-verify
// size; longer query chunks become several items (each still reads its tiles once for 64 rows).
constexpr index_t kPagedQueryBlock = 16;

// Key / value row c of one head of a paged tile: rows[c] is the row's head-0 element, heads
// follow at head_offset. Used by decode_tile through KvTile<KV, PagedRows<KV>>.
template <class KV>
struct PagedRows {
  const KV* const* rows;
  index_t head_offset;
  const KV* row(index_t c) const noexcept { return rows[c] + head_offset; }
};

// Keys per tile: dense decode's choice (about 128 KB of K), but at most two pages per tile when
// pages are small (block_size 16: 32 keys), so the next tile fits the LineStream's four ranges;
// at least 16 keys (pages of 1-7 keys then prefetch their first two pages only).
inline index_t paged_tile_keys(index_t block_size, index_t row_bytes) noexcept {
  const index_t keys = decode_tile_keys(row_bytes);
  if (2 * block_size >= keys) return keys;
  return std::max<index_t>(2 * block_size, std::min<index_t>(16, keys));
}

// One (sequence, query block) of a call and its split into pieces.
struct PagedItem {
  index_t seq, q0, nq, L;  // queries [q0, q0 + nq) of sequence seq, whose cache holds L tokens
  TileRange tiles;         // the key tiles its queries can see
  index_t task0, splits;   // its pieces are tasks [task0, task0 + splits)
};

// One piece: tiles [first, last) of an item; its row states start at row0.
struct PagedTask {
  index_t item, first, last, row0;
};

struct PagedWorkspace {
  std::vector<PagedItem> items;
  std::vector<PagedTask> tasks;
  std::vector<SoftmaxRow> states;
  AlignedVector<float> accs;

  static PagedWorkspace& local() {
    thread_local PagedWorkspace workspace;
    return workspace;
  }
};

template <class KV>
bool pages_packed(const ConstView<KV, 4>& x) noexcept {
  return x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) == x.size(2) * x.size(3);
}

// The next tile's K and V rows as up to four byte ranges (two pages each), requested over the
// current tile's inner loops like dense decode's next_tile_lines.
template <class KV>
LineStream paged_tile_lines(const PagedAttentionInputs<KV>& in, const PagedDims& d, index_t seq, index_t next_j0,
                            index_t next_n, const AttentionDims& tile_dims, index_t n) {
  LineStream lines;
  if (next_n <= 0 || !pages_packed(in.k_pages) || !pages_packed(in.v_pages)) return lines;
  const std::size_t k_row = static_cast<std::size_t>(d.Hkv * d.Dk) * sizeof(KV);
  const std::size_t v_row = static_cast<std::size_t>(d.Hkv * d.Dv) * sizeof(KV);
  index_t j = next_j0;
  for (int range = 0; range < 2 && j < next_j0 + next_n; ++range) {
    const index_t page = in.block_table(seq, j / d.block_size), offset = j % d.block_size;
    const index_t count = std::min(d.block_size - offset, next_j0 + next_n - j);
    lines.set(range, in.k_pages.ptr(page, offset), static_cast<std::size_t>(count) * k_row);
    lines.set(range + 2, in.v_pages.ptr(page, offset), static_cast<std::size_t>(count) * v_row);
    j += count;
  }
  lines.spread_over(decode_tile_steps(tile_dims, n));
  return lines;
}

// Runs one piece: the item's query rows against tiles [first, last), into its row states.
template <class KV>
void paged_piece(const PagedAttentionInputs<KV>& in, const PagedDims& d, const AttentionOptions& options,
                 const AttentionInputs<KV>& rule_inputs, float scale, index_t keys_per_tile, const PagedItem& item,
                 const PagedTask& task, SoftmaxRow* states, float* accs) {
  const index_t G = d.group(), M = item.nq * G, W = simd::kWidth;
  const index_t Dkp = round_up(d.Dk, W), Dvp = round_up(d.Dv, W);
  const PagedQueries qs = paged_queries(in, item.seq);
  DecodeScratch& w = DecodeScratch::local();
  w.reserve(d.Hkv, M, Dkp, Dvp);
  for (index_t hk = 0; hk < d.Hkv; ++hk)
    load_query_rows(in.q, qs.b, hk, G, qs.i0 + item.q0, item.nq, scale, w.q.data() + hk * w.q_stride, Dkp);
  for (index_t r = 0; r < M; ++r) {
    w.pos[r] = item.L - qs.count + item.q0 + r / G;
    w.visible[r] = visible_keys(options, w.pos[r], item.L);
  }
  const AttentionDims tile_dims{1, item.nq, item.L, d.Hq, d.Hkv, d.Dk, d.Dv};
  const LogitRule<KV> rule{rule_inputs, options, item.L};
  const bool in_place = in.k_pages.stride(3) == 1 && in.v_pages.stride(3) == 1 && d.Dk % W == 0 && d.Dv % W == 0;
  const KV* k_rows[kDecodeTile];
  const KV* v_rows[kDecodeTile];
  for (index_t tile = task.first; tile < task.last; ++tile) {
    const index_t j0 = item.tiles.key(tile), n = std::min(keys_per_tile, item.L - j0);
    for (index_t c = 0; c < n;) {  // row pointers, page by page
      const index_t j = j0 + c, page = in.block_table(item.seq, j / d.block_size), offset = j % d.block_size;
      const index_t count = std::min(d.block_size - offset, n - c);
      const KV *k = in.k_pages.ptr(page, offset), *v = in.v_pages.ptr(page, offset);
      for (index_t i = 0; i < count; ++i, ++c) {
        k_rows[c] = k + i * in.k_pages.stride(1);
        v_rows[c] = v + i * in.v_pages.stride(1);
      }
    }
    const bool skip_rule = tile_needs_no_rule(options, rule_inputs.alibi_slopes.has_value(), false, w.visible.data(), M,
                                              j0, n, keys_per_tile);
    const index_t next_j0 = tile + 1 < task.last ? item.tiles.key(tile + 1) : 0;
    const index_t next_n = tile + 1 < task.last ? std::min(keys_per_tile, item.L - next_j0) : 0;
    LineStream ahead = paged_tile_lines(in, d, item.seq, next_j0, next_n, tile_dims, n);
    if constexpr (kv_loads_as_vectors<KV>) {
      if (in_place) {
        const index_t kh = in.k_pages.stride(2), vh = in.v_pages.stride(2);
        const auto in_pages = [&](index_t h) {
          return KvTile<KV, PagedRows<KV>>{{k_rows, h * kh}, {v_rows, h * vh}};
        };
        decode_tile(rule, tile_dims, w, 0, j0, n, 0, d.Hkv, in_pages, skip_rule, states, accs, ahead);
        continue;
      }
    }
    // Strided features, a head size that is not a multiple of the width, or another storage
    // type: one head at a time through fp32 copies, zero-padded to whole vectors.
    for (index_t h = 0; h < d.Hkv; ++h) {
      std::fill(w.k.begin(), w.k.begin() + kDecodeTile * Dkp, 0.f);
      std::fill(w.v.begin(), w.v.begin() + kDecodeTile * Dvp, 0.f);
      for (index_t c = 0; c < n; ++c) {
        kv_row_to_float(k_rows[c] + h * in.k_pages.stride(2), in.k_pages.stride(3), d.Dk, w.k.data() + c * Dkp);
        kv_row_to_float(v_rows[c] + h * in.v_pages.stride(2), in.v_pages.stride(3), d.Dv, w.v.data() + c * Dvp);
      }
      const auto in_scratch = [&](index_t) { return KvTile<float>{{w.k.data(), Dkp}, {w.v.data(), Dvp}}; };
      decode_tile(rule, tile_dims, w, 0, j0, n, h, h + 1, in_scratch, skip_rule, states, accs, ahead);
    }
  }
}

template <class KV>
PagedDims validate_paged_attention_fast(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out,
                                        const PagedAttentionOptions& options) {
  static const ArgCheck check("paged_attention");
  return validate_paged_attention(check, in, out, options);
}

}  // namespace detail

/// Attention over a paged KV cache (reference.hpp has the definition): same arguments and results
/// as reference::paged_attention. Every argument and every used block-table entry is checked
/// before any output is written (ShapeError). No heap allocation after a warm-up call.
template <class KV>
void paged_attention(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out,
                     const PagedAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  const PagedDims d = validate_paged_attention_fast(in, out, options);
  if (d.N == 0 || d.Hq == 0) return;
  const AttentionOptions dense_options = options.dense();
  const float scale = attention_scale(dense_options, d.Dk);
  const index_t G = d.group(), Dvp = round_up(d.Dv, simd::kWidth);
  const index_t keys_per_tile = paged_tile_keys(d.block_size, d.Hkv * d.Dk * static_cast<index_t>(sizeof(KV)));

  // Plan: items and their visible tiles, then pieces in proportion to each item's tiles (about
  // 4 pieces per thread over the whole call, none shorter than kMinTilesPerSplit tiles).
  PagedWorkspace& ws = PagedWorkspace::local();
  ws.items.clear();
  index_t total_tiles = 0;
  for (index_t n = 0; n < d.N; ++n) {
    const PagedQueries qs = paged_queries(in, n);
    const index_t L = in.cache_seqlens[n];
    for (index_t q0 = 0; q0 < qs.count; q0 += kPagedQueryBlock) {
      PagedItem item{};
      item.seq = n, item.q0 = q0, item.nq = std::min(kPagedQueryBlock, qs.count - q0), item.L = L;
      index_t pos[kPagedQueryBlock];
      for (index_t i = 0; i < item.nq; ++i) pos[i] = L - qs.count + q0 + i;
      item.tiles = TileRange::of(dense_options, pos, item.nq, L, keys_per_tile);
      total_tiles += item.tiles.count();
      ws.items.push_back(item);
    }
  }
  const index_t pieces = 4 * static_cast<index_t>(executor.concurrency());
  ws.tasks.clear();
  index_t rows = 0;
  for (index_t it = 0; it < static_cast<index_t>(ws.items.size()); ++it) {
    PagedItem& item = ws.items[it];
    const index_t count = item.tiles.count();
    const index_t share = total_tiles > 0 ? (count * pieces + total_tiles - 1) / total_tiles : 1;
    item.splits = std::clamp<index_t>(share, 1, std::max<index_t>(1, count / kMinTilesPerSplit));
    item.task0 = static_cast<index_t>(ws.tasks.size());
    for (index_t s = 0; s < item.splits; ++s) {
      ws.tasks.push_back({it, count * s / item.splits, count * (s + 1) / item.splits, rows});
      rows += d.Hkv * item.nq * G;
    }
  }
  DecodeScratch::grow(ws.states, rows);
  DecodeScratch::grow(ws.accs, rows * Dvp);
  std::fill(ws.states.begin(), ws.states.begin() + rows, SoftmaxRow{});
  std::fill(ws.accs.begin(), ws.accs.begin() + rows * Dvp, 0.f);

  // The logit rule reads ALiBi slopes (and a mask, never given here) from dense inputs.
  AttentionInputs<KV> rule_inputs;
  rule_inputs.alibi_slopes = in.alibi_slopes;
  const PagedItem* const items = ws.items.data();
  const PagedTask* const tasks = ws.tasks.data();
  SoftmaxRow* const states = ws.states.data();
  float* const accs = ws.accs.data();
  executor.run(static_cast<index_t>(ws.tasks.size()), [&](index_t t) {
    const PagedTask& task = tasks[t];
    if (task.first == task.last) return;
    paged_piece(in, d, dense_options, rule_inputs, scale, keys_per_tile, items[task.item], task,
                states + task.row0, accs + task.row0 * Dvp);
  });

  // Merge every item's pieces in key order and write o / lse.
  const bool has_sink = in.sink_logits.has_value();
  for (const PagedItem& item : ws.items) {
    const PagedQueries qs = paged_queries(in, item.seq);
    const index_t M = item.nq * G;
    for (index_t hk = 0; hk < d.Hkv; ++hk)
      for (index_t r = 0; r < M; ++r) {
        const index_t i = qs.i0 + item.q0 + r / G, h = hk * G + r % G;
        const float lse = finish_pieces(states, accs, Dvp, d.Dv, item.splits, has_sink ? in.sink_logits(h) : kNoSink,
                                        out.o.ptr(qs.b, i, h), out.o.stride(3), [&](index_t split) {
                                          return tasks[item.task0 + split].row0 + hk * M + r;
                                        });
        if (out.lse.has_value()) out.lse(qs.b, i, h) = lse;
      }
  }
}

}  // namespace seqmix
