// Blocks of a head's value columns as tasks: how the linear-attention family's prefills split a
// (sequence, head) item when there are fewer items than threads. Internal.
//
// Every state of the family is S [K, V] with independent columns (the diagonal-decay update
// s_r = w_r s_r + k_r v, the delta rule's u = beta (v - S^T k), rwkv7's S^T a are all per
// column), so a block of columns runs the item's whole algorithm on its columns alone; what
// depends only on q, k and the gates is repeated once per block. Used by delta_update
// (for_each_item) and diagonal_decay (the driver's column blocks).
#pragma once

#include <algorithm>

#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

/// Value columns [begin, begin + width) of an item: the part of its state, values and outputs
/// that one task owns.
struct ValueColumns {
  index_t begin = 0, width = 0;
};

/// How an item's V columns split into `blocks` blocks: whole multiples of `quantum` columns as
/// even as they can be, the wider ones (one quantum more) last, and the last block also takes
/// the columns after the last whole quantum. So V = 97 in 3 blocks of 16-column quanta is
/// 32 + 32 + 33, where equal widths rounded up gave 48 + 48 + 1 (a block of one column
/// repeating all of the item's K-side work, behind a critical path of 48 columns).
struct ValueSplit {
  index_t width = 0;   ///< the widest block's columns (what a block's workspace must hold)
  index_t blocks = 1;
  index_t V = 0;
  index_t narrow = 0;  ///< columns of each block before `wide_from`
  index_t wide_from = 1;  ///< the first block with one quantum more
  index_t quantum = 0;

  ValueColumns block(index_t i) const {
    const index_t begin = i * narrow + std::max<index_t>(0, i - wide_from) * quantum;
    const index_t end = i + 1 == blocks ? V : begin + narrow + (i >= wide_from ? quantum : 0);
    return {begin, end - begin};
  }
};

/// The whole of V as one block.
inline ValueSplit whole_columns(index_t V) { return {V, 1, V, V, 1, 0}; }

/// The blocks of V for `items` (sequences x heads) on `concurrency` threads. Whole when the items
/// give every thread one already (one or two threads never repeat any K-side work) or when V is
/// narrower than two blocks of `min_width`; otherwise about ceil(concurrency / items) blocks but
/// at most floor(V / min_width), in whole quanta (a partial vector costs what a full one does).
/// With `min_width` a multiple of `quantum`, no block is narrower than `min_width`.
inline ValueSplit split_value_columns(index_t items, index_t V, index_t concurrency, index_t quantum,
                                      index_t min_width) {
  if (items <= 0 || items >= concurrency || V < 2 * min_width) return whole_columns(V);
  const index_t blocks = std::min((concurrency + items - 1) / items, V / min_width);
  const index_t quanta = V / quantum;  // whole ones; the last block takes the columns after them
  ValueSplit split{0, blocks, V, quanta / blocks * quantum, blocks - quanta % blocks, quantum};
  for (index_t i = 0; i < blocks; ++i) split.width = std::max(split.width, split.block(i).width);
  return split;
}

}  // namespace seqmix::detail
