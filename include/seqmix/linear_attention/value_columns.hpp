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

/// How an item's V columns split into blocks: `blocks` of `width` columns, the last one
/// narrower when V is not a multiple of `width`.
struct ValueSplit {
  index_t width = 0;
  index_t blocks = 1;
  index_t V = 0;

  ValueColumns block(index_t i) const { return {i * width, std::min(width, V - i * width)}; }
};

/// The whole of V as one block.
inline ValueSplit whole_columns(index_t V) { return {V, 1, V}; }

/// The blocks of V for `items` (sequences x heads) on `concurrency` threads. Whole when the items
/// give every thread one already (one or two threads never repeat any K-side work) or when V is
/// narrower than two blocks of `min_width`; otherwise about ceil(concurrency / items) blocks but
/// at most floor(V / min_width), each a multiple of `quantum` columns (a partial vector costs what
/// a full one does), so no block but the last is narrower than `min_width`.
inline ValueSplit split_value_columns(index_t items, index_t V, index_t concurrency, index_t quantum,
                                      index_t min_width) {
  if (items <= 0 || items >= concurrency || V < 2 * min_width) return whole_columns(V);
  const index_t wanted = std::min((concurrency + items - 1) / items, V / min_width);
  const index_t width = ((V + wanted - 1) / wanted + quantum - 1) / quantum * quantum;
  return {width, (V + width - 1) / width, V};
}

}  // namespace seqmix::detail
