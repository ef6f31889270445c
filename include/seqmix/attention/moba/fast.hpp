// moba, fast prefill: the dense flash kernel (dense/flash.hpp) on the own blocks, and on each
// selected block against the queries that selected it, merged with the online-softmax monoid.
//
// Per (batch row, KV head), after the shared selection (reference.hpp):
//  - own-block tasks: a run of queries in one block, every head of the group as rows (as
//    attention_flash), over keys [own * bs, last position] with the causal rule: its (o, lse)
//    goes to o and a per-call lse buffer;
//  - selected-block tasks: for query head h and block n, the queries that selected n are
//    gathered into a Q tile (up to kFlashRows at a time) and run without a mask over the bs keys
//    of n: MoBA's "gather the queries per block" form, so every K/V tile a task loads is used by
//    every row of it and the cost is (own + top_k) * bs keys per query, as in the definition.
//    Each (query, head, selection slot) result goes to its own partial row (no two tasks write
//    the same row, so no locks);
//  - merge: per (query, head), lse = logsumexp of the parts, o = sum exp(lse_p - lse) o_p.
// Tasks of both kinds run most expensive first through Executor::run.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"  // append_key_tiles
#include "seqmix/attention/block_sparse/gathered.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/moba/reference.hpp"

namespace seqmix {
namespace detail {

// A unit of moba's prefill: own-block rows (queries [i0, i0 + count) x the group's heads) or a
// selected block n of head g against entries [i0, i0 + count) of its gathered query list.
struct MobaTask {
  bool own;
  index_t g, n, i0, count;
  double cost;
};

}  // namespace detail

/// Same arguments and results as reference::moba; K/V may be float, f16 or bf16. Allocates the
/// block means (unless given), the gate scores and selection of one KV head's group
/// ([Tq, G, Nb] floats), its partial results (Tq * G * top_k * (Dv + 1) floats) and one scratch
/// per thread (kept across calls).
template <class KV>
void moba(const MobaInputs<KV>& in, const AttentionOutputs& out, const MobaOptions& options = {},
          const Executor& executor = serial_executor()) {
  using namespace detail;
  const MobaDims m = validate_moba("moba", in, out, options);
  const AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t G = d.group(), bs = options.block_size, K = options.top_k, Nb = m.blocks;
  const AttentionOptions causal = moba_attention_options(options, true), open = moba_attention_options(options, false);
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = moba_dense_inputs(in);

  Tensor<float, 4> own_means;
  ConstView<float, 4> means = in.block_means;
  if (!means.has_value()) {
    own_means = Tensor<float, 4>({d.B, Nb, d.Hkv, d.Dk});
    block_key_summaries(in.k, bs, own_means.view(), {}, {}, executor);
    means = own_means.cview();
  }
  Tensor<float, 3> own_lse({d.B, d.Tq, d.Hq});
  Tensor<float, 4> scores({1, d.Tq, G, Nb});
  Tensor<std::int32_t, 3> chosen({d.Tq, G, std::max<index_t>(K, 1)});
  Tensor<float, 4> part_o({d.Tq, G, std::max<index_t>(K, 1), d.Dv});
  Tensor<float, 3> part_lse({d.Tq, G, std::max<index_t>(K, 1)});
  std::vector<index_t> offsets(static_cast<std::size_t>(G * Nb + 1));
  std::vector<std::int32_t> entry_query, entry_slot;
  std::vector<MobaTask> tasks;
  const index_t bq = flash_query_block(G, d.Tq), rows = std::max(bq * G, kFlashRows);

  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      const index_t h0 = hk * G;
      // Selection of the group's heads (the shared routine's pieces, on this group only).
      MobaInputs<KV> group = in;
      group.q = in.q.slice(0, b, 1);
      moba_gate_scores(group, means.slice(0, b, 1), h0, G, G, scores.view(), executor);
      parallel_for(executor, d.Tq * G, 64, [&](index_t first, index_t last) {
        std::vector<std::pair<float, std::int32_t>> candidates;
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G, own = (d.Tk - d.Tq + i) / bs;
          moba_select_row(scores.view().ptr(0, i, g), scores.view().stride(3), own, K, chosen.view().ptr(i, g), candidates);
        }
      });
      // Queries per (head, block), in query order (the counting sort shared with landmark, infllm).
      group_queries_by_block(chosen.cview(), K, Nb, offsets, entry_query, entry_slot);
      part_lse.fill(kMinusInf);
      // Tasks: own-block runs (never across a block boundary), then gathered selected blocks.
      tasks.clear();
      for (index_t i0 = 0; i0 < d.Tq;) {
        const index_t pos0 = d.Tk - d.Tq + i0, block_end = (pos0 / bs + 1) * bs;
        const index_t nq = std::min({bq, d.Tq - i0, block_end - pos0});
        tasks.push_back({true, 0, pos0 / bs, i0, nq, static_cast<double>(nq * G) * static_cast<double>(pos0 % bs + nq)});
        i0 += nq;
      }
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < Nb; ++n) {
          const index_t e0 = offsets[static_cast<std::size_t>(g * Nb + n)], e1 = offsets[static_cast<std::size_t>(g * Nb + n + 1)];
          for (index_t e = e0; e < e1; e += kFlashRows) {
            const index_t count = std::min(kFlashRows, e1 - e);
            tasks.push_back({false, g, n, e, count, static_cast<double>(count) * static_cast<double>(bs)});
          }
        }
      std::stable_sort(tasks.begin(), tasks.end(), [](const MobaTask& a, const MobaTask& c) { return a.cost > c.cost; });
      const AttentionOutputs own_out{out.o, own_lse.view()};
      executor.run(static_cast<index_t>(tasks.size()), [&](index_t t) {
        const MobaTask& task = tasks[static_cast<std::size_t>(t)];
        thread_local GatheredScratch scratch;
        GatheredScratch& w = scratch.fit(rows, d.Dk, d.Dv);
        if (task.own) {
          const index_t last = d.Tk - d.Tq + task.i0 + task.count;  // one past the last query's position
          flash_block(dense, own_out, causal, d, scale, b, hk, task.i0, task.count, *w.flash,
                      [&](const index_t*, index_t) {
                        std::vector<KeyTile> tiles;
                        append_key_tiles(task.n * bs, std::min(last, d.Tk), tiles);
                        return tiles;
                      });
          return;
        }
        const index_t count = task.count;
        // Chosen blocks are wholly before the query's own block: no causal rule needed.
        gathered_block_attention(dense, b, hk, h0 + task.g, 1, entry_query.data() + task.i0, count, task.n * bs,
                                 std::min((task.n + 1) * bs, d.Tk), open, scale, w);
        for (index_t r = 0; r < count; ++r) {
          const auto at = static_cast<std::size_t>(task.i0 + r);
          const index_t i = entry_query[at], e = entry_slot[at];
          std::copy(w.o.data() + r * d.Dv, w.o.data() + (r + 1) * d.Dv, part_o.view().ptr(i, task.g, e));
          part_lse(i, task.g, e) = w.lse[static_cast<std::size_t>(r)];
        }
      });
      // Merge own and selected parts per (query, head).
      parallel_for(executor, d.Tq * G, 64, [&](index_t first, index_t last) {
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G, h = h0 + g;
          const float lse = merge_partial_rows(out.o.ptr(b, i, h), out.o.stride(3), own_lse(b, i, h),
                                               part_o.view().ptr(i, g, 0), part_lse.view().ptr(i, g), K, d.Dv);
          if (out.lse.has_value()) out.lse(b, i, h) = lse;
        }
      });
    }
}

}  // namespace seqmix
