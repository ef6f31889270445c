// nsa_step: nsa's decode form. The compressed and window branches are dense attention (the
// split-KV decode kernel for a few queries); the selection branch lists the chosen blocks' keys
// up to each query's position and runs topk_attention on them (one selection head per KV head:
// the choice is shared by the group), so a step reads the Nc compressed keys, top_n * l' rows
// and w rows per KV head instead of Tk.
#pragma once

#include <algorithm>
#include <cstdint>

#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/topk/fast.hpp"

namespace seqmix {

/// Same arguments and results as reference::nsa, for few queries (decode; any Tq is accepted).
/// Give compressed_k / compressed_v kept beside the cache (a new compressed block every d
/// tokens), or they are pooled from all of K and V at every call. Allocates the selection, the
/// key lists ([B,Tq,Hkv,top_n * select_block] int32) and three branch outputs.
template <class KV>
void nsa_step(const NsaInputs<KV>& in, const TensorView<float, 4>& o, const NsaOptions& options = {},
              const Executor& executor = serial_executor()) {
  using namespace detail;
  const NsaDims n = validate_nsa("nsa_step", in, o, options);
  const AttentionDims& d = n.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<KV, 4> own_k, own_v;
  const auto compressed = nsa_compressed(in, n, options, own_k, own_v, executor);
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hkv, options.top_n});
  nsa_block_selection(in, compressed.first, blocks.view(), options, executor);
  Tensor<float, 4> o_cmp({d.B, d.Tq, d.Hq, d.Dv}), o_slc({d.B, d.Tq, d.Hq, d.Dv}), o_win({d.B, d.Tq, d.Hq, d.Dv});
  nsa_dense_branches(in, n, options, compressed.first, compressed.second, o_cmp.view(), o_win.view(), executor);
  const index_t bs = options.select_block, capacity = std::max<index_t>(options.top_n * bs, 1);
  Tensor<std::int32_t, 4> keys({d.B, d.Tq, d.Hkv, capacity});
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t hk = 0; hk < d.Hkv; ++hk) {
        std::int32_t* row = keys.view().ptr(b, i, hk);
        const index_t pos = d.Tk - d.Tq + i;
        index_t count = 0;
        for (index_t e = 0; e < options.top_n; ++e) {  // increasing blocks: increasing keys
          const index_t blk = blocks(b, i, hk, e);
          if (blk < 0) continue;
          for (index_t j = blk * bs; j < std::min((blk + 1) * bs, pos + 1); ++j) row[count++] = static_cast<std::int32_t>(j);
        }
        std::fill(row + count, row + capacity, -1);
      }
  TopkAttentionInputs<KV> sparse;
  sparse.q = in.q, sparse.k = in.k, sparse.v = in.v, sparse.indices = keys.cview();
  TopkAttentionOptions topk_options;
  topk_options.scale = options.scale;
  topk_attention(sparse, {o_slc.view(), {}}, topk_options, executor);
  nsa_gated_sum(in.gates, o_cmp.cview(), o_slc.cview(), o_win.cview(), o, executor);
}

}  // namespace seqmix
