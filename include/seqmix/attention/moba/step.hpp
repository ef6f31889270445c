// moba_step: moba's decode form. The shared selection (reference.hpp) picks each query's blocks
// from the block means (given by the caller, who keeps them beside the cache and updates a
// block's mean when it completes; or computed, which reads all of K), the chosen blocks and the
// own block up to the query's position become key lists, and topk_attention (gather the listed
// rows, run the dense decode kernel on them) computes the exact attention over them. The cost is
// a read of the Nb means plus (top_k + 1) * block_size rows per query head, against Tk rows for
// dense decode.
#pragma once

#include <algorithm>
#include <cstdint>

#include "seqmix/attention/moba/reference.hpp"
#include "seqmix/attention/topk/fast.hpp"

namespace seqmix {

/// Same arguments and results as reference::moba, for few queries (decode; any Tq is accepted).
/// Allocates the selection ([B,Tq,Hq,top_k] blocks, [B,Tq,Hq,Nb] scores), the key lists
/// ([B,Tq,Hq,(top_k + 1) * block_size] int32) and, without in.block_means, the block means.
template <class KV>
void moba_step(const MobaInputs<KV>& in, const AttentionOutputs& out, const MobaOptions& options = {},
               const Executor& executor = serial_executor()) {
  using namespace detail;
  const MobaDims m = validate_moba("moba_step", in, out, options);
  const AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t bs = options.block_size, K = options.top_k;
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hq, K});
  moba_block_selection(in, blocks.view(), options, executor);
  const index_t capacity = (K + 1) * bs;
  Tensor<std::int32_t, 4> keys({d.B, d.Tq, d.Hq, capacity});
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        std::int32_t* row = keys.view().ptr(b, i, h);
        index_t n = 0;
        for (index_t e = 0; e < K; ++e) {  // selected blocks are earlier than the own block, increasing
          const index_t blk = blocks(b, i, h, e);
          if (blk < 0) continue;
          for (index_t j = blk * bs; j < (blk + 1) * bs; ++j) row[n++] = static_cast<std::int32_t>(j);
        }
        const index_t pos = d.Tk - d.Tq + i;
        for (index_t j = pos / bs * bs; j <= pos; ++j) row[n++] = static_cast<std::int32_t>(j);
        std::fill(row + n, row + capacity, -1);
      }
  TopkAttentionInputs<KV> sparse;
  sparse.q = in.q, sparse.k = in.k, sparse.v = in.v, sparse.indices = keys.cview();
  TopkAttentionOptions topk_options;
  topk_options.scale = options.scale;
  topk_attention(sparse, out, topk_options, executor);
}

}  // namespace seqmix
