// nsa, fast prefill: each branch on the existing kernels, then the gated sum.
//  - compressed branch: dense attention (attention_flash) over the compressed K/V, with each
//    query's causal position set to its last visible compressed block (c <= (pos - l + 1) / d),
//    so the dense logit rule is exactly the compressed branch's visibility;
//  - sliding-window branch: dense attention with causal = true, window = w;
//  - selection branch: per (batch row, KV head, chunk of 1024 queries), the queries that
//    selected block j are gathered (every head of the group as rows: the choice is shared) and
//    attend to j's keys under the causal rule (gathered_block_attention); each (query, slot)
//    result has its own partial row, merged per query by lse (merge_partial_rows).
// The selection is nsa_block_selection's, the same as the reference's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seqmix/attention/block_sparse/gathered.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/nsa/reference.hpp"

namespace seqmix {
namespace detail {

// Compressed K/V: the caller's, or mean pooling into `own_k` / `own_v`.
template <class KV>
std::pair<ConstView<KV, 4>, ConstView<KV, 4>> nsa_compressed(const NsaInputs<KV>& in, const NsaDims& n,
                                                             const NsaOptions& options, Tensor<KV, 4>& own_k,
                                                             Tensor<KV, 4>& own_v, const Executor& executor) {
  if (in.compressed_k.has_value()) return {in.compressed_k, in.compressed_v};
  const AttentionDims& d = n.attention;
  own_k = Tensor<KV, 4>({d.B, n.compressed, d.Hkv, d.Dk});
  own_v = Tensor<KV, 4>({d.B, n.compressed, d.Hkv, d.Dv});
  nsa_compress(in.k, in.v, own_k.view(), own_v.view(), options, executor);
  return {own_k.cview(), own_v.cview()};
}

// The compressed and sliding-window branches (dense attention with their visibility rules).
template <class KV>
void nsa_dense_branches(const NsaInputs<KV>& in, const NsaDims& n, const NsaOptions& options,
                        const ConstView<KV, 4>& ck, const ConstView<KV, 4>& cv, const TensorView<float, 4>& o_cmp,
                        const TensorView<float, 4>& o_win, const Executor& executor) {
  const AttentionDims& d = n.attention;
  AttentionOptions causal;
  causal.scale = options.scale, causal.causal = true;
  if (n.compressed > 0) {
    Tensor<std::int64_t, 2> positions({d.B, d.Tq});
    for (index_t b = 0; b < d.B; ++b)
      for (index_t i = 0; i < d.Tq; ++i) positions(b, i) = nsa_compressed_position(d.Tk - d.Tq + i, options);
    AttentionInputs<KV> compressed;
    compressed.q = in.q, compressed.k = ck, compressed.v = cv, compressed.positions = positions.cview();
    attention(compressed, {o_cmp, {}}, causal, executor);
  } else {
    std::fill(o_cmp.data(), o_cmp.data() + o_cmp.numel(), 0.f);  // the caller's contiguous tensor
  }
  AttentionOptions window = causal;
  window.window = options.window;
  attention(nsa_dense_inputs(in), {o_win, {}}, window, executor);
}

// o = g_cmp o_cmp + g_slc o_slc + g_win o_win.
inline void nsa_gated_sum(const ConstView<float, 4>& gates, const ConstView<float, 4>& o_cmp,
                          const ConstView<float, 4>& o_slc, const ConstView<float, 4>& o_win,
                          const TensorView<float, 4>& o, const Executor& executor) {
  const index_t B = o.size(0), Tq = o.size(1), Hq = o.size(2), Dv = o.size(3);
  parallel_for(executor, B * Tq * Hq, 64, [&](index_t first, index_t last) {
    for (index_t r = first; r < last; ++r) {
      const index_t h = r % Hq, i = r / Hq % Tq, b = r / Hq / Tq;
      const float g0 = gates(b, i, h, 0), g1 = gates(b, i, h, 1), g2 = gates(b, i, h, 2);
      for (index_t c = 0; c < Dv; ++c)
        o(b, i, h, c) = g0 * o_cmp(b, i, h, c) + g1 * o_slc(b, i, h, c) + g2 * o_win(b, i, h, c);
    }
  });
}

// The selection branch of prefill, written to o_slc [B,Tq,Hq,Dv].
template <class KV>
void nsa_selected_branch(const NsaInputs<KV>& in, const NsaDims& n, const NsaOptions& options,
                         const ConstView<std::int32_t, 4>& blocks, const TensorView<float, 4>& o_slc,
                         const Executor& executor) {
  const AttentionDims& d = n.attention;
  const index_t G = d.group(), K = options.top_n, bs = options.select_block, Ns = n.select_blocks;
  const index_t chunk = std::min<index_t>(1024, d.Tq), per_task = std::max<index_t>(1, kFlashRows / G);
  AttentionOptions causal;
  causal.scale = options.scale, causal.causal = true;
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = nsa_dense_inputs(in);
  const index_t slots = std::max<index_t>(K, 1);
  Tensor<float, 4> part_o({chunk, G, slots, d.Dv});
  Tensor<float, 3> part_lse({chunk, G, slots});
  std::vector<index_t> offsets(static_cast<std::size_t>(Ns + 1));
  std::vector<std::int32_t> entry_query, entry_slot;
  struct Task {
    index_t block, e0, count;
  };
  std::vector<Task> tasks;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk)
      for (index_t i0 = 0; i0 < d.Tq; i0 += chunk) {
        const index_t rows = std::min(chunk, d.Tq - i0);
        // Queries per block, in query order.
        std::fill(offsets.begin(), offsets.end(), 0);
        for (index_t i = i0; i < i0 + rows; ++i)
          for (index_t e = 0; e < K; ++e)
            if (blocks(b, i, hk, e) >= 0) ++offsets[static_cast<std::size_t>(blocks(b, i, hk, e) + 1)];
        for (std::size_t c = 1; c < offsets.size(); ++c) offsets[c] += offsets[c - 1];
        entry_query.resize(static_cast<std::size_t>(offsets.back()));
        entry_slot.resize(entry_query.size());
        std::vector<index_t> fill(offsets.begin(), offsets.end() - 1);
        for (index_t i = i0; i < i0 + rows; ++i)
          for (index_t e = 0; e < K; ++e) {
            const index_t j = blocks(b, i, hk, e);
            if (j < 0) continue;
            const auto at = static_cast<std::size_t>(fill[static_cast<std::size_t>(j)]++);
            entry_query[at] = static_cast<std::int32_t>(i), entry_slot[at] = static_cast<std::int32_t>(e);
          }
        part_lse.fill(kMinusInf);
        tasks.clear();
        for (index_t j = 0; j < Ns; ++j)
          for (index_t e = offsets[static_cast<std::size_t>(j)]; e < offsets[static_cast<std::size_t>(j + 1)]; e += per_task)
            tasks.push_back({j, e, std::min(per_task, offsets[static_cast<std::size_t>(j + 1)] - e)});
        executor.run(static_cast<index_t>(tasks.size()), [&](index_t t) {
          const Task& task = tasks[static_cast<std::size_t>(t)];
          thread_local GatheredScratch scratch;
          GatheredScratch& w = scratch.fit(per_task * G, d.Dk, d.Dv);
          // Keys past the last gathered query's position are hidden from every row: not visited.
          const index_t last_pos = d.Tk - d.Tq + entry_query[static_cast<std::size_t>(task.e0 + task.count - 1)];
          gathered_block_attention(dense, b, hk, hk * G, G, entry_query.data() + task.e0, task.count, task.block * bs,
                                   std::min({(task.block + 1) * bs, d.Tk, last_pos + 1}), causal, scale, w);
          for (index_t r = 0; r < task.count; ++r) {
            const auto at = static_cast<std::size_t>(task.e0 + r);
            const index_t i = entry_query[at] - i0, e = entry_slot[at];
            for (index_t g = 0; g < G; ++g) {
              std::copy(w.o.data() + (r * G + g) * d.Dv, w.o.data() + (r * G + g + 1) * d.Dv, part_o.view().ptr(i, g, e));
              part_lse(i, g, e) = w.lse[static_cast<std::size_t>(r * G + g)];
            }
          }
        });
        parallel_for(executor, rows * G, 64, [&](index_t first, index_t last) {
          for (index_t r = first; r < last; ++r) {
            const index_t g = r % G, i = r / G;
            merge_partial_rows(o_slc.ptr(b, i0 + i, hk * G + g), o_slc.stride(3), kMinusInf, part_o.view().ptr(i, g, 0),
                               part_lse.view().ptr(i, g), K, d.Dv);
          }
        });
      }
}

}  // namespace detail

/// Same arguments and results as reference::nsa; K/V may be float, f16 or bf16. Allocates the
/// compressed K/V (unless given), the selection, three branch outputs [B,Tq,Hq,Dv], the
/// partial rows of 1024 queries of one group (1024 * G * top_n * (Dv + 1) floats) and one
/// scratch per thread (kept across calls).
template <class KV>
void nsa(const NsaInputs<KV>& in, const TensorView<float, 4>& o, const NsaOptions& options = {},
         const Executor& executor = serial_executor()) {
  using namespace detail;
  const NsaDims n = validate_nsa("nsa", in, o, options);
  const AttentionDims& d = n.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<KV, 4> own_k, own_v;
  const auto compressed = nsa_compressed(in, n, options, own_k, own_v, executor);
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hkv, options.top_n});
  nsa_block_selection(in, compressed.first, blocks.view(), options, executor);
  Tensor<float, 4> o_cmp({d.B, d.Tq, d.Hq, d.Dv}), o_slc({d.B, d.Tq, d.Hq, d.Dv}), o_win({d.B, d.Tq, d.Hq, d.Dv});
  nsa_dense_branches(in, n, options, compressed.first, compressed.second, o_cmp.view(), o_win.view(), executor);
  nsa_selected_branch(in, n, options, blocks.cview(), o_slc.view(), executor);
  nsa_gated_sum(in.gates, o_cmp.cview(), o_slc.cview(), o_win.cview(), o, executor);
}

}  // namespace seqmix
