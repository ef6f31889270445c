// block_sparse_attention, fast form: the dense flash kernel (dense/flash.hpp) run on the selected
// key blocks only, so the cost is proportional to the number of selected blocks.
//
// A task is (batch row, query block, set of query heads sharing a KV head and a layout row): the
// whole group of a KV head when the layout is shared by every head, one head otherwise. Its key
// tiles come from the selected blocks: adjacent selected blocks are merged into runs, each run is
// clipped to the keys some row of the task can see (causal / window / sinks) and cut into tiles
// of kFlashKeyTile keys, so small blocks that are selected together still fill whole tiles.
//
// A fused rope (AttentionInputs::rope) costs what it costs in attention_flash: each task rotates
// its query rows once as it loads them into its q tile, and a key of a selected tile is rotated
// in the row scratch as that tile is widened and transposed, so only the selected keys are
// ever rotated and no pass over q or k happens beforehand.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/attention/dense/flash.hpp"

namespace seqmix {
namespace detail {

// Appends the tiles of keys [j0, j1) to `tiles`.
inline void append_key_tiles(index_t j0, index_t j1, std::vector<KeyTile>& tiles) {
  for (; j0 < j1; j0 += kFlashKeyTile) tiles.push_back({j0, std::min(kFlashKeyTile, j1 - j0)});
}

// Key tiles of one layout row for rows at the given positions: runs of adjacent selected blocks,
// intersected with [0, sink_end) U [lo, hi), the union of what the rows can see.
inline std::vector<KeyTile> selected_key_tiles(const BlockSparseLayout& layout, index_t begin, index_t end,
                                               const AttentionOptions& options, const index_t* positions,
                                               index_t rows, index_t Tk) {
  index_t sink_end = 0, lo = Tk, hi = 0;
  for (index_t r = 0; r < rows; ++r) {
    const VisibleKeys v = visible_keys(options, positions[r], Tk);
    sink_end = std::max(sink_end, v.sink_end);
    if (v.lo < v.hi) lo = std::min(lo, v.lo), hi = std::max(hi, v.hi);
  }
  std::vector<KeyTile> tiles;
  for (index_t e = begin; e < end;) {
    const index_t run_begin = layout.indices(e) * layout.block_k;
    index_t last = layout.indices(e++);
    while (e < end && layout.indices(e) == last + 1) last = layout.indices(e++);
    const index_t run_end = std::min((last + 1) * layout.block_k, Tk);
    append_key_tiles(run_begin, std::min(run_end, sink_end), tiles);  // sink part
    append_key_tiles(std::max({run_begin, lo, sink_end}), std::min(run_end, hi), tiles);
  }
  return tiles;
}

}  // namespace detail

/// Same arguments and results as reference::block_sparse_attention; K/V may be float, f16 or bf16.
/// Allocates one flash scratch per parallel block (rows = block_q x heads per task) and one tile
/// list per task, nothing inside the tile loops.
template <class KV>
void block_sparse_attention(const AttentionInputs<KV>& in, const BlockSparseLayout& layout, const AttentionOutputs& out,
                            const AttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  const auto bs = validate_block_sparse("block_sparse_attention", in, layout, out, options);
  const AttentionDims& d = bs.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const float scale = attention_scale(options, d.Dk);
  // Heads per task: a layout shared by all heads lets a KV head's whole group share each tile.
  const bool per_head = layout.offsets.size(1) != 1 && d.group() > 1;
  const index_t heads = per_head ? 1 : d.group(), head_sets = d.Hq / heads;
  const index_t Dkp = round_up(d.Dk, simd::kWidth), Dvp = round_up(d.Dv, simd::kWidth);
  const index_t bq = layout.block_q;
  // Task t = (batch row, head set, query block), query blocks fastest (as in attention_flash:
  // neighbouring tasks mix cheap and expensive blocks of a causal pattern).
  parallel_for(executor, d.B * head_sets * bs.query_blocks, 1, [&](index_t first, index_t last) {
    FlashScratch scratch(std::min(bq, d.Tq) * heads, d.Dk, Dkp, Dvp);
    for (index_t t = first; t < last; ++t) {
      const index_t qb = t % bs.query_blocks, set = t / bs.query_blocks % head_sets, b = t / bs.query_blocks / head_sets;
      const index_t h0 = set * heads, i0 = qb * bq, nq = std::min(bq, d.Tq - i0);
      // Plain variables, not a structured binding: the tile lambda captures them (C++17).
      const auto row = layout_row(layout, b, h0, qb);
      const auto begin = row.first, end = row.second;
      // The task's heads as a problem of their own with one KV head (hk = 0 below).
      const AttentionInputs<KV> task_in = head_slice(in, h0, heads, h0 / d.group());
      const AttentionOutputs task_out = head_slice(out, h0, heads);
      const AttentionDims task_dims{d.B, d.Tq, d.Tk, heads, 1, d.Dk, d.Dv};
      flash_block(task_in, task_out, options, task_dims, scale, b, 0, i0, nq, scratch,
                  [&](const index_t* positions, index_t rows) {
                    return selected_key_tiles(layout, begin, end, options, positions, rows, d.Tk);
                  });
    }
  });
}

}  // namespace seqmix
