// paged_attention, the fast form: split-KV decode (dense/decode.hpp) for a few queries per
// sequence and tiled prefill (dense/flash.hpp) for longer query chunks, both reading the pages of
// a paged KV cache in place.
//
// Up to kPagedQueryBlock (16) queries of a sequence, decode and speculative verify: a work item
// is (sequence, its queries) with rows [queries x group] per KV head; its visible key tiles are
// split into contiguous pieces spread over the executor, each piece keeps (m, l, acc) per row,
// and the pieces are merged in key order (an item in one piece is finished by its task, from
// per-thread scratch). Only where a tile's rows come from changes from dense decode:
// decode_tile reads key / value row c of head h at rows[c] + h * head_stride (PagedRows), with
// rows[] looked up in the block table once per tile, so pages are read in place (fp16 / bf16
// widened in registers). Tiles are dense decode's width (64 keys at Hkv = 8, D = 128, fp16)
// whatever the page size; the next tile's rows are named to the LineStream as row lists (one
// range per run of rows on one page), which it requests into L2 over the current tile's inner
// loops, and one line per 4 KB of the rows two tiles ahead is requested at the tile's start (pages
// in random places had cost 15-25% against contiguous K/V; pages in order had not).
//
// More queries (chunked prefill of a long chunk against the cached prefix): dense prefill's
// tasks (sequence, KV head, block of up to 256 / group queries), flash_block with its K/V tiles
// gathered page by page into the fp32 tile scratch; tasks run longest first beside the decode
// pieces of the same call. Causal masking (bottom-right), window, sinks, softcap, ALiBi and the
// relative biases come from the same logit rule as dense attention (head scales from the q tile); tiles no query can see are never visited.
//
// No heap allocation after a first call of the same shape: the plan (items, tasks), the partial
// states of split items and every thread's scratch are thread_local and grown on demand. The
// scratch a call touches is small (per thread: one item's rows, or one prefill block; per call:
// the partial states of split items only), so a first call costs little more than a later one.
#pragma once

#include <algorithm>
#include <array>
#include <memory>
#include <tuple>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/paged/reference.hpp"

namespace seqmix {
namespace detail {

// Queries per sequence that still take the decode kernel: 16 queries x group 4 = 64 rows per KV
// head, the speculative-verify size. A sequence with more queries is a prefill chunk.
constexpr index_t kPagedQueryBlock = 16;

// Key / value row c of one head of a paged tile: rows[c] is the row's head-0 element, heads
// follow at head_offset. Used by decode_tile through KvTile<KV, PagedRows<KV>>.
template <class KV>
struct PagedRows {
  const KV* const* rows;
  index_t head_offset;
  const KV* row(index_t c) const noexcept { return rows[c] + head_offset; }
};

// Where keys [j0, j0 + n) of sequence `seq` lie: the head-0 element of each K and V row, looked up
// page by page in the block table.
template <class KV>
struct PagedTileRows {
  const KV* k[kDecodeTile];
  const KV* v[kDecodeTile];
  index_t n = 0;

  template <class Inputs>
  void gather(const Inputs& in, index_t block_size, index_t seq, index_t j0, index_t count) noexcept {
    n = count;
    for (index_t c = 0; c < n;) {
      const index_t j = j0 + c, page = in.block_table(seq, j / block_size), offset = j % block_size;
      const index_t run = std::min(block_size - offset, n - c);
      const KV *kp = in.k_pages.ptr(page, offset), *vp = in.v_pages.ptr(page, offset);
      for (index_t i = 0; i < run; ++i, ++c) {
        k[c] = kp + i * in.k_pages.stride(1);
        v[c] = vp + i * in.v_pages.stride(1);
      }
    }
  }
};

// One (sequence, query block) of a call and its split into pieces.
struct PagedItem {
  index_t seq, q0, nq, L;  // queries [q0, q0 + nq) of sequence seq, whose cache holds L tokens
  TileRange tiles;         // the key tiles its queries can see
  index_t task0, splits;   // its pieces are tasks [task0, task0 + splits)
};

// One piece: tiles [first, last) of an item; its row states start at row0 of the call's partial
// states (split items only; an item in one piece keeps them in its thread's scratch).
struct PagedTask {
  index_t item, first, last, row0;
};

// One prefill task: queries [i0, i0 + nq) of sequence seq against KV head hk.
struct PagedPrefillTask {
  index_t seq, hk, i0, nq;
  double cost;  // (query, key) pairs it can see, for the longest-first order
};

struct PagedWorkspace {
  std::vector<PagedItem> items;
  std::vector<PagedTask> tasks;
  std::vector<PagedPrefillTask> prefill;
  std::vector<SoftmaxRow> states;  // the split items' pieces, [rows] and [rows x Dvp]
  AlignedVector<float> accs;
  // As a task thread: the states of an item left in one piece, [Hkv x rows] and
  // [Hkv x rows x Dvp], reused by every such item the thread runs.
  std::vector<SoftmaxRow> piece_states;
  AlignedVector<float> piece_accs;
  std::vector<index_t> first_row;  // [items + 1]: each split item's first output row in the combine

  static PagedWorkspace& local() {
    thread_local PagedWorkspace workspace;
    return workspace;
  }
};

// The visible key tiles of a TileRange as flash_block's KeyTile runs, without building a list.
struct PagedKeyTiles {
  TileRange range;
  index_t L;

  struct iterator {
    const PagedKeyTiles* tiles;
    index_t t;
    KeyTile operator*() const noexcept {
      const index_t j0 = tiles->range.key(t);
      return {j0, std::min(tiles->range.tile, tiles->L - j0)};
    }
    iterator& operator++() noexcept { return ++t, *this; }
    bool operator!=(const iterator& other) const noexcept { return t != other.t; }
  };
  iterator begin() const noexcept { return {this, 0}; }
  iterator end() const noexcept { return {this, range.count()}; }
};

// Rows whose Hkv heads lie side by side (one contiguous run per key), as the prefetch names them.
template <class KV>
bool heads_packed(const ConstView<KV, 4>& x) noexcept {
  return x.stride(3) == 1 && x.stride(2) == x.size(3);
}

// Requests one line per 4 KB of the K and V rows of keys [j0, j0 + count) into L2: two tiles
// ahead, so every OS page the tile's randomly placed cache pages span has its TLB entry (and a
// first line) on the way before the LineStream of the previous tile walks through it. (Only the
// first line of each cache page had been touched: a page of 16 fp16 tokens at Hkv 8, D 128 is
// 32 KB, eight OS pages; touching all of them measured +6-11%, one thread, loaded.)
template <class KV>
void touch_page_runs(const PagedAttentionInputs<KV>& in, index_t block_size, index_t seq, index_t j0,
                     index_t count) noexcept {
  for (index_t c = 0; c < count;) {
    const index_t j = j0 + c, offset = j % block_size, page = in.block_table(seq, j / block_size);
    const index_t run = std::min(block_size - offset, count - c);
    const char* k = reinterpret_cast<const char*>(in.k_pages.ptr(page, offset));
    const char* v = reinterpret_cast<const char*>(in.v_pages.ptr(page, offset));
    const std::size_t kb = static_cast<std::size_t>(run * in.k_pages.stride(1)) * sizeof(KV);
    const std::size_t vb = static_cast<std::size_t>(run * in.v_pages.stride(1)) * sizeof(KV);
    for (std::size_t at = 0; at < kb; at += 4096) __builtin_prefetch(k + at, 0, 2);
    for (std::size_t at = 0; at < vb; at += 4096) __builtin_prefetch(v + at, 0, 2);
    c += block_size - offset;
  }
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
  // Query i of the call (row qs.i0 + t of q) sits at position L - count + t of its sequence.
  const auto position_of = [&](index_t i) { return item.L - qs.count + (i - qs.i0); };
  for (index_t hk = 0; hk < d.Hkv; ++hk) {
    float* const dst = w.q.data() + hk * w.q_stride;
    if (in.rope || in.head_scales.has_value())
      load_query_rows_rotated(in.q, qs.b, hk, G, qs.i0 + item.q0, item.nq, scale, dst, Dkp, in.rope, position_of,
                              in.head_scales);
    else
      load_query_rows(in.q, qs.b, hk, G, qs.i0 + item.q0, item.nq, scale, dst, Dkp);
  }
  const bool bf16_dot = decode_takes_bf16_dot<KV>(options);  // decode_tile's dot-product tiles
  if (bf16_dot) w.round_queries_bf16(d.Hkv, d.Dk, Dkp, d.Dv);
  for (index_t r = 0; r < M; ++r) {
    w.pos[r] = item.L - qs.count + item.q0 + r / G;
    w.visible[r] = visible_keys(options, w.pos[r], item.L);
  }
  const AttentionDims tile_dims{1, item.nq, item.L, d.Hq, d.Hkv, d.Dk, d.Dv};
  const LogitRule<KV> rule{rule_inputs, options, item.L};
  const bool in_place = in.k_pages.stride(3) == 1 && in.v_pages.stride(3) == 1 && d.Dk % W == 0 && d.Dv % W == 0;
  const bool prefetch = heads_packed(in.k_pages) && heads_packed(in.v_pages);
  const std::size_t k_row = static_cast<std::size_t>(d.Hkv * d.Dk) * sizeof(KV);
  const std::size_t v_row = static_cast<std::size_t>(d.Hkv * d.Dv) * sizeof(KV);
  const auto tile_keys = [&](index_t tile) { return std::min(keys_per_tile, item.L - item.tiles.key(tile)); };
  // This tile's rows and the next one's, which the LineStream requests while this one runs.
  PagedTileRows<KV> buffers[2];
  buffers[0].gather(in, d.block_size, item.seq, item.tiles.key(task.first), tile_keys(task.first));
  for (index_t tile = task.first, current = 0; tile < task.last; ++tile, current ^= 1) {
    const PagedTileRows<KV>& rows = buffers[current];
    PagedTileRows<KV>& next = buffers[current ^ 1];
    const index_t j0 = item.tiles.key(tile), n = rows.n;
    next.n = 0;
    if (tile + 1 < task.last) next.gather(in, d.block_size, item.seq, item.tiles.key(tile + 1), tile_keys(tile + 1));
    LineStream ahead;
    if (prefetch) {
      if (tile + 2 < task.last) touch_page_runs(in, d.block_size, item.seq, item.tiles.key(tile + 2), tile_keys(tile + 2));
      ahead.to_l2 = true;
      ahead.set_rows(0, next.k, static_cast<int>(next.n), k_row);
      ahead.set_rows(1, next.v, static_cast<int>(next.n), v_row);
      ahead.spread_over(decode_tile_steps(tile_dims, n, bf16_dot));
    }
    const bool biased = rule_inputs.alibi_slopes.has_value() || rule_inputs.relative_bias.kind != RelativeBiasKind::none;
    const bool skip_rule = tile_needs_no_rule(options, biased, false, w.visible.data(), M, j0, n, keys_per_tile);
    if constexpr (kv_loads_as_vectors<KV>) {
      if (in_place) {
        const index_t kh = in.k_pages.stride(2), vh = in.v_pages.stride(2);
        const auto in_pages = [&](index_t h) {
          return KvTile<KV, PagedRows<KV>>{{rows.k, h * kh}, {rows.v, h * vh}};
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
        kv_row_to_float(rows.k[c] + h * in.k_pages.stride(2), in.k_pages.stride(3), d.Dk, w.k.data() + c * Dkp);
        kv_row_to_float(rows.v[c] + h * in.v_pages.stride(2), in.v_pages.stride(3), d.Dv, w.v.data() + c * Dvp);
      }
      const auto in_scratch = [&](index_t) { return KvTile<float>{{w.k.data(), Dkp}, {w.v.data(), Dvp}}; };
      decode_tile(rule, tile_dims, w, 0, j0, n, h, h + 1, in_scratch, skip_rule, states, accs, ahead);
    }
  }
}

// Merges the pieces of row `row` of an item (its rows KV head-major: row = hk * nq * G + r) in
// key order and writes its o / lse; row_of(split, hk, r) is the index of row r of KV head hk of
// piece `split` in states / accs.
template <class KV, class RowOf>
void finish_paged_row(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out, const PagedDims& d,
                      const PagedItem& item, index_t row, const SoftmaxRow* states, float* accs, const RowOf& row_of) {
  const PagedQueries qs = paged_queries(in, item.seq);
  const index_t G = d.group(), M = item.nq * G, hk = row / M, r = row % M;
  const index_t i = qs.i0 + item.q0 + r / G, h = hk * G + r % G;
  const float lse = finish_pieces(states, accs, round_up(d.Dv, simd::kWidth), d.Dv, item.splits,
                                  in.sink_logits.has_value() ? in.sink_logits(h) : kNoSink, out.o.ptr(qs.b, i, h),
                                  out.o.stride(3), [&](index_t split) { return row_of(split, hk, r); });
  if (out.lse.has_value()) out.lse(qs.b, i, h) = lse;
}

// One prefill task: dense prefill's flash_block on the sequence's queries, with each K/V tile
// gathered from the pages (page by page) into the fp32 tile scratch.
template <class KV>
void paged_prefill_block(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out, const PagedDims& d,
                         const AttentionOptions& options, float scale, index_t rows_per_block,
                         const PagedPrefillTask& task) {
  const PagedQueries qs = paged_queries(in, task.seq);
  const index_t L = in.cache_seqlens[task.seq], T = kFlashKeyTile;
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth);
  // The sequence as one dense batch row: its queries, and K / V views that carry only the key
  // count L (query i sits at L - count + i); the tiles are read through load_tile below.
  AttentionInputs<KV> one;
  AttentionOutputs one_out;
  sequence_as_dense(in, out, d, qs, one, one_out);
  one.k = ConstView<KV, 4>(in.k_pages.data(), {1, L, d.Hkv, d.Dk}, {0, 0, 0, 0});
  one.v = ConstView<KV, 4>(in.v_pages.data(), {1, L, d.Hkv, d.Dv}, {0, 0, 0, 0});
  const AttentionDims one_dims{1, qs.count, L, d.Hq, d.Hkv, d.Dk, d.Dv};
  // One scratch per thread, kept while the shape holds.
  thread_local std::unique_ptr<FlashScratch> scratch;
  thread_local std::array<index_t, 4> sized{};
  const std::array<index_t, 4> need{rows_per_block, d.Dk, Dkp, Dvp};
  if (!scratch || sized != need) scratch = std::make_unique<FlashScratch>(rows_per_block, d.Dk, Dkp, Dvp), sized = need;
  const index_t hk = task.hk;
  const auto load_tile = [&](index_t j0, index_t n, FlashScratch& w) {
    for (index_t c = 0; c < n;) {  // page by page: K transposed into columns [c, c + run), V rows
      const index_t j = j0 + c, page = in.block_table(task.seq, j / d.block_size), offset = j % d.block_size;
      const index_t run = std::min(d.block_size - offset, n - c);
      load_kv_tile_transposed(in.k_pages, page, hk, offset, run, run, w.kt.data() + c, T, w.row.data());
      load_kv_tile(in.v_pages, page, hk, offset, run, run, w.v.data() + c * Dvp, Dvp);
      c += run;
    }
    if (n < T) {  // zero keys past the tile's end, as the dense loaders do
      for (index_t c = 0; c < d.Dk; ++c) std::fill(w.kt.data() + c * T + n, w.kt.data() + (c + 1) * T, 0.f);
      std::fill(w.v.data() + n * Dvp, w.v.data() + T * Dvp, 0.f);
    }
  };
  const auto select_tiles = [&](const index_t* positions, index_t rows) {
    return PagedKeyTiles{TileRange::of(options, positions, rows, L, T), L};
  };
  flash_block(one, one_out, options, one_dims, scale, 0, hk, task.i0, task.nq, *scratch, select_tiles, load_tile);
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
  const index_t keys_per_tile = decode_tile_keys(d.Hkv * d.Dk * static_cast<index_t>(sizeof(KV)));
  const index_t block_queries = flash_query_block(G, kFlashRows);  // prefill queries per task

  // Plan: decode items and their visible tiles, prefill tasks, then the decode items' pieces in
  // proportion to their tiles (about 4 pieces per thread, none shorter than kMinTilesPerSplit).
  PagedWorkspace& ws = PagedWorkspace::local();
  ws.items.clear();
  ws.prefill.clear();
  index_t total_tiles = 0;
  for (index_t n = 0; n < d.N; ++n) {
    const PagedQueries qs = paged_queries(in, n);
    const index_t L = in.cache_seqlens[n];
    if (qs.count > kPagedQueryBlock) {
      for (index_t i0 = 0; i0 < qs.count; i0 += block_queries) {
        const index_t nq = std::min(block_queries, qs.count - i0);
        index_t keys = dense_options.causal ? L - qs.count + i0 + nq : L;
        if (dense_options.window > 0) keys = std::min(keys, dense_options.window + nq + dense_options.sink_tokens);
        for (index_t hk = 0; hk < d.Hkv; ++hk)
          ws.prefill.push_back({n, hk, i0, nq, static_cast<double>(nq) * static_cast<double>(keys)});
      }
      continue;
    }
    if (qs.count == 0) continue;
    PagedItem item{};
    item.seq = n, item.q0 = 0, item.nq = qs.count, item.L = L;
    index_t pos[kPagedQueryBlock];
    for (index_t i = 0; i < item.nq; ++i) pos[i] = L - qs.count + i;
    item.tiles = TileRange::of(dense_options, pos, item.nq, L, keys_per_tile);
    total_tiles += item.tiles.count();
    ws.items.push_back(item);
  }
  // Longest first (ties in plan order, so the order does not depend on the sort).
  std::sort(ws.prefill.begin(), ws.prefill.end(), [](const PagedPrefillTask& a, const PagedPrefillTask& b) {
    if (a.cost != b.cost) return a.cost > b.cost;
    return std::tie(a.seq, a.i0, a.hk) < std::tie(b.seq, b.i0, b.hk);
  });
  const index_t pieces = 4 * static_cast<index_t>(executor.concurrency());
  ws.tasks.clear();
  index_t rows = 0, piece_rows = 0, most_splits = 1;
  for (index_t it = 0; it < static_cast<index_t>(ws.items.size()); ++it) {
    PagedItem& item = ws.items[it];
    const index_t count = item.tiles.count(), item_rows = d.Hkv * item.nq * G;
    const index_t share = total_tiles > 0 ? (count * pieces + total_tiles - 1) / total_tiles : 1;
    item.splits = std::clamp<index_t>(share, 1, std::max<index_t>(1, count / kMinTilesPerSplit));
    most_splits = std::max(most_splits, item.splits);
    item.task0 = static_cast<index_t>(ws.tasks.size());
    piece_rows = std::max(piece_rows, item_rows);
    for (index_t s = 0; s < item.splits; ++s) {
      ws.tasks.push_back({it, count * s / item.splits, count * (s + 1) / item.splits, item.splits > 1 ? rows : -1});
      if (item.splits > 1) rows += item_rows;
    }
  }
  // Partial states of the split items only (the others finish from their thread's scratch).
  DecodeScratch::grow(ws.states, rows);
  DecodeScratch::grow(ws.accs, rows * Dvp);
  std::fill(ws.states.begin(), ws.states.begin() + rows, SoftmaxRow{});
  std::fill(ws.accs.begin(), ws.accs.begin() + rows * Dvp, 0.f);

  // The logit rule reads ALiBi slopes and the relative bias (and a mask, never given here) from
  // dense inputs.
  AttentionInputs<KV> rule_inputs;
  rule_inputs.alibi_slopes = in.alibi_slopes;
  rule_inputs.relative_bias = in.relative_bias;
  const PagedItem* const items = ws.items.data();
  const PagedTask* const tasks = ws.tasks.data();
  const PagedPrefillTask* const prefill = ws.prefill.data();
  const index_t prefill_tasks = static_cast<index_t>(ws.prefill.size());
  SoftmaxRow* const states = ws.states.data();
  float* const accs = ws.accs.data();
  // Prefill tasks first (the longest work), then the decode pieces.
  executor.run(prefill_tasks + static_cast<index_t>(ws.tasks.size()), [&](index_t t) {
    if (t < prefill_tasks) return paged_prefill_block(in, out, d, dense_options, scale, block_queries * G, prefill[t]);
    const PagedTask& task = tasks[t - prefill_tasks];
    const PagedItem& item = items[task.item];
    if (item.splits > 1) {
      if (task.first < task.last)
        paged_piece(in, d, dense_options, rule_inputs, scale, keys_per_tile, item, task, states + task.row0,
                    accs + task.row0 * Dvp);
      return;
    }
    // Unsplit: the whole item here, from this thread's scratch, and its rows written out.
    // (The calling thread's workspace holds the plan too; these two vectors are not part of it.)
    PagedWorkspace& w = PagedWorkspace::local();
    const index_t item_rows = d.Hkv * item.nq * G;
    DecodeScratch::grow(w.piece_states, piece_rows);
    DecodeScratch::grow(w.piece_accs, piece_rows * Dvp);
    std::fill(w.piece_states.begin(), w.piece_states.begin() + item_rows, SoftmaxRow{});
    std::fill(w.piece_accs.begin(), w.piece_accs.begin() + item_rows * Dvp, 0.f);
    SoftmaxRow* const piece_states = w.piece_states.data();
    float* const piece_accs = w.piece_accs.data();
    if (task.first < task.last)
      paged_piece(in, d, dense_options, rule_inputs, scale, keys_per_tile, item, task, piece_states, piece_accs);
    const index_t M = item.nq * G;
    for (index_t row = 0; row < item_rows; ++row)
      finish_paged_row(in, out, d, item, row, piece_states, piece_accs,
                       [M](index_t, index_t hk, index_t r) { return hk * M + r; });
  });

  // Merge the split items' pieces in key order and write o / lse: their rows laid end to end (an
  // unsplit item has none here), in parallel on many threads (finish_row_groups).
  const index_t item_count = static_cast<index_t>(ws.items.size());
  ws.first_row.assign(1, 0);
  for (const PagedItem& item : ws.items)
    ws.first_row.push_back(ws.first_row.back() + (item.splits > 1 ? d.Hkv * item.nq * G : 0));
  finish_row_groups(executor, ws.first_row.data(), item_count, most_splits, d.Dv, [&](index_t it, index_t row) {
    const PagedItem& item = items[it];
    const index_t M = item.nq * G;
    finish_paged_row(in, out, d, item, row, states, accs, [&](index_t split, index_t hk, index_t r) {
      return tasks[item.task0 + split].row0 + hk * M + r;
    });
  });
}

}  // namespace seqmix
