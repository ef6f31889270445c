// infllm, fast form (prefill and decode): after the shared memory update and lookup
// (reference.hpp), the key set of a query is a disjoint union of ranges (initial tokens, the
// local part, the retrieved blocks), so its softmax is the attention_merge monoid of the ranges'
// (o, lse), each computed on the flash kernel (gathered_block_attention) and folded into a
// running (m, s, a) per row (WeightedPartsAccumulator) as it comes. Tasks are runs of queries
// with the same sealed count M(pos) (so the same local start), every head of a KV head's group as
// rows:
//  - initial tokens [0, min(n_init, last)) and the local part [n_init + M * bs, last), causal,
//    one call each for all rows of the run;
//  - retrieved blocks (the shared lookup, per row and head): when every row retrieves every
//    sealed block, one unmasked call per block for all rows; otherwise per head, each block of
//    the union of the run's choices against the queries that chose it.
// With top_k > 0 and Tq > 16 (prefill) the retrieved blocks instead run against their queries
// gathered from the whole call (detail::infllm_run_gathered, MoBA's form), since the rows of a
// run retrieve mostly different blocks.
// Decode (Tq <= kInfllmStepQueries) takes its own form, infllm_step_rows: the initial and local
// parts through the split-KV decode kernel (attention_step with sinks and a window), each
// retrieved block one attention_step call for the heads that chose it. A step reads the M
// representative sets of the memory plus n_init + local rows per KV head and bs rows per
// retrieved (block, KV head), against Tk rows for dense decode.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "seqmix/attention/infllm/reference.hpp"
#include "seqmix/attention/landmark/parts.hpp"

namespace seqmix {

namespace detail {

// The prefill's retrieved blocks MoBA's way (a run's rows retrieve mostly different blocks):
// per (batch row, KV head), the shared lookup of every row, then the queries that retrieved each
// (head, block) gathered into Q tiles of up to kFlashRows rows, one flash call per tile, each
// result in its own partial row (Tq * G * top_k * (Dv + 1) floats for the group); the initial
// and local parts by runs; then per row the parts merged by lse.
template <class KV>
void infllm_run_gathered(const InfllmMemory& memory, const InfllmInputs<KV>& in, const AttentionOutputs& out,
                         const AttentionDims& d, const std::vector<std::pair<index_t, index_t>>& runs,
                         const Executor& executor) {
  const InfllmOptions& opt = memory.options();
  const index_t G = d.group(), bs = opt.block_size, K = opt.top_k, init = opt.init_tokens;
  const index_t Nb = std::max<index_t>(memory.blocks(), 1);
  const AttentionOptions causal = infllm_attention_options(opt, true), open = infllm_attention_options(opt, false);
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = infllm_dense_inputs(in);
  const index_t bq = flash_query_block(G, d.Tq), rows = std::max(bq * G, kFlashRows);
  Tensor<std::int32_t, 3> chosen({d.Tq, G, K});
  Tensor<float, 3> own_o({d.Tq, G, d.Dv}), own_lse({d.Tq, G, 1});
  Tensor<float, 4> part_o({d.Tq, G, K, d.Dv});
  Tensor<float, 3> part_lse({d.Tq, G, K});
  std::vector<index_t> offsets(static_cast<std::size_t>(G * Nb + 1));
  std::vector<std::int32_t> entry_query, entry_slot;
  struct Task {
    index_t kind, g, n, i0, count;  // kind 0: own run (i0, count); 1: (g, n) entries [i0, i0 + count)
  };
  std::vector<Task> tasks;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      const index_t h0 = hk * G;
      parallel_for(executor, d.Tq * G, 16, [&](index_t first, index_t last) {
        std::vector<float> scores;
        std::vector<std::int32_t> row;
        std::vector<std::pair<float, std::int32_t>> candidates;
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G, sealed = memory.blocks_at(d.Tk - d.Tq + i);
          infllm_select_row(memory, in.q.ptr(b, i, h0 + g), in.q.stride(3), b, hk, sealed, scores, row, candidates);
          for (index_t e = 0; e < K; ++e)
            chosen(i, g, e) = e < static_cast<index_t>(row.size()) ? row[static_cast<std::size_t>(e)] : -1;
        }
      });
      group_queries_by_block(chosen.cview(), K, Nb, offsets, entry_query, entry_slot);
      part_lse.fill(kMinusInf);
      tasks.clear();
      for (const auto& [i0, nq] : runs) tasks.push_back({0, 0, 0, i0, nq});
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < Nb; ++n) {
          const index_t e0 = offsets[static_cast<std::size_t>(g * Nb + n)], e1 = offsets[static_cast<std::size_t>(g * Nb + n + 1)];
          for (index_t e = e0; e < e1; e += kFlashRows) tasks.push_back({1, g, n, e, std::min(kFlashRows, e1 - e)});
        }
      executor.run(static_cast<index_t>(tasks.size()), [&](index_t t) {
        const Task& task = tasks[static_cast<std::size_t>(t)];
        thread_local BlockPartsScratch scratch;
        BlockPartsScratch& w = scratch;
        GatheredScratch& gw = w.gathered.fit(rows, d.Dk, d.Dv);
        if (task.kind == 0) {
          const index_t i0 = task.i0, nq = task.count, last = d.Tk - d.Tq + i0 + nq, sealed = memory.blocks_at(last - 1);
          w.parts.reset(nq * G, d.Dv);
          w.queries.resize(static_cast<std::size_t>(nq));
          for (index_t r = 0; r < nq; ++r) w.queries[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(i0 + r);
          for (const auto& [j0, j1] : {std::make_pair(index_t{0}, std::min(init, last)),
                                       std::make_pair(memory.block_start(sealed), last)}) {
            if (j1 <= j0) continue;
            gathered_block_attention(dense, b, hk, h0, G, w.queries.data(), nq, j0, j1, causal, scale, gw);
            for (index_t row = 0; row < nq * G; ++row)
              w.parts.add(row, gw.lse[static_cast<std::size_t>(row)], gw.o.data() + row * d.Dv);
          }
          for (index_t r = 0; r < nq; ++r)
            for (index_t g = 0; g < G; ++g)
              own_lse(i0 + r, g, 0) = w.parts.finish(r * G + g, own_o.view().ptr(i0 + r, g), 1);
          return;
        }
        gathered_block_attention(dense, b, hk, h0 + task.g, 1, entry_query.data() + task.i0, task.count,
                                 memory.block_start(task.n), memory.block_start(task.n) + bs, open, scale, gw);
        for (index_t r = 0; r < task.count; ++r) {
          const auto at = static_cast<std::size_t>(task.i0 + r);
          std::copy(gw.o.data() + r * d.Dv, gw.o.data() + (r + 1) * d.Dv,
                    part_o.view().ptr(entry_query[at], task.g, entry_slot[at]));
          part_lse(entry_query[at], task.g, entry_slot[at]) = gw.lse[static_cast<std::size_t>(r)];
        }
      });
      parallel_for(executor, d.Tq * G, 64, [&](index_t first, index_t last) {
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G;
          float* o = out.o.ptr(b, i, h0 + g);
          for (index_t c = 0; c < d.Dv; ++c) o[c * out.o.stride(3)] = own_o(i, g, c);
          const float lse = merge_partial_rows(o, out.o.stride(3), own_lse(i, g, 0), part_o.view().ptr(i, g, 0),
                                               part_lse.view().ptr(i, g), K, d.Dv);
          if (out.lse.has_value()) out.lse(b, i, h0 + g) = lse;
        }
      });
    }
}

// Queries per call up to which infllm_attention takes the decode form (infllm_step_rows):
// seqmix::attention's own limit for its split-KV decode.
constexpr index_t kInfllmStepQueries = 4;

// Per-thread working set of the decode form's retrieved blocks: the lookup of the group's
// heads, the (block, head) pairs it chose, and one block call's packed query rows and results.
struct InfllmStepScratch {
  std::vector<float> scores, q, o, lse;
  std::vector<std::int32_t> chosen;
  std::vector<std::pair<float, std::int32_t>> candidates;
  std::vector<std::pair<std::int32_t, std::int32_t>> picks;  // (block, head in group), sorted
  WeightedPartsAccumulator parts;
};

// The decode form (Tq <= kInfllmStepQueries), per new query i:
//  - the initial tokens and the local part [n_init + M * bs, pos] are one attention_step call for
//    every batch row and head: keys [0, pos] with a window of pos + 1 - (n_init + M * bs) keys
//    and n_init sinks is exactly that key set, and the split-KV kernel spreads its tiles over the
//    executor and reads f16 / bf16 rows in its dot products;
//  - per (batch row, KV head) task: the shared lookup of the group's G heads, then one
//    attention_step call per retrieved block (bs contiguous keys of the KV head, no mask) for
//    all the heads that chose it, their query rows packed side by side, so each block's K/V
//    rows are read once for the group; the parts are merged by lse (WeightedPartsAccumulator)
//    with the local part's (o, lse).
// The earlier form ran every range through gathered_block_attention once per head of the group
// (each chosen block's 64-key f16 tiles widened to fp32 G times) and the 2048-token window as
// flash tiles for G rows: decode at Tk = 32768 was barely faster than dense decode.
template <class KV>
void infllm_step_rows(const InfllmMemory& memory, const InfllmInputs<KV>& in, const AttentionOutputs& out,
                      const AttentionDims& d, const Executor& executor) {
  const InfllmOptions& opt = memory.options();
  const index_t G = d.group(), bs = opt.block_size, K = opt.top_k;
  AttentionOptions local = infllm_attention_options(opt, true);
  const AttentionOptions open = infllm_attention_options(opt, false);
  Tensor<float, 4> local_o({d.B, 1, d.Hq, d.Dv});  // [B,1,Hq,Dv]: one query's initial + local part
  Tensor<float, 3> local_lse({d.B, 1, d.Hq});
  for (index_t i = 0; i < d.Tq; ++i) {
    const index_t pos = d.Tk - d.Tq + i, sealed = memory.blocks_at(pos), local_start = memory.block_start(sealed);
    // pos < n_init: no window, every key up to pos is an initial token.
    local.window = pos >= local_start ? pos + 1 - local_start : 0;
    local.sink_tokens = local.window > 0 ? opt.init_tokens : 0;
    AttentionInputs<KV> near;
    near.q = in.q.slice(1, i, 1), near.k = in.k.slice(1, 0, pos + 1), near.v = in.v.slice(1, 0, pos + 1);
    attention_step(near, {local_o.view(), local_lse.view()}, local, executor);
    executor.run(d.B * d.Hkv, [&](index_t t) {
      const index_t b = t / d.Hkv, hk = t % d.Hkv, h0 = hk * G;
      thread_local InfllmStepScratch scratch;
      InfllmStepScratch& w = scratch;
      w.parts.reset(G, d.Dv);
      for (index_t g = 0; g < G; ++g) w.parts.add(g, local_lse(b, 0, h0 + g), local_o.view().ptr(b, 0, h0 + g));
      w.picks.clear();
      for (index_t g = 0; g < G && K > 0; ++g) {
        infllm_select_row(memory, in.q.ptr(b, i, h0 + g), in.q.stride(3), b, hk, sealed, w.scores, w.chosen,
                          w.candidates);
        for (const std::int32_t n : w.chosen) w.picks.push_back({n, static_cast<std::int32_t>(g)});
      }
      std::sort(w.picks.begin(), w.picks.end());
      w.q.resize(static_cast<std::size_t>(G * d.Dk));
      w.o.resize(static_cast<std::size_t>(G * d.Dv));
      w.lse.resize(static_cast<std::size_t>(G));
      for (std::size_t e0 = 0; e0 < w.picks.size();) {
        const std::int32_t n = w.picks[e0].first;
        std::size_t e1 = e0;
        for (; e1 < w.picks.size() && w.picks[e1].first == n; ++e1) {
          const index_t row = static_cast<index_t>(e1 - e0), h = h0 + w.picks[e1].second;
          for (index_t c = 0; c < d.Dk; ++c) w.q[static_cast<std::size_t>(row * d.Dk + c)] = in.q(b, i, h, c);
        }
        const index_t rows = static_cast<index_t>(e1 - e0), j0 = memory.block_start(n);
        AttentionInputs<KV> block;  // [1,1,rows,Dk] queries against the block's keys of KV head hk
        block.q = ConstView<float, 4>(w.q.data(), {1, 1, rows, d.Dk});
        block.k = in.k.slice(0, b, 1).slice(1, j0, bs).slice(2, hk, 1);
        block.v = in.v.slice(0, b, 1).slice(1, j0, bs).slice(2, hk, 1);
        attention_step(block, {TensorView<float, 4>(w.o.data(), {1, 1, rows, d.Dv}), TensorView<float, 3>(w.lse.data(), {1, 1, rows})},
                       open, serial_executor());
        for (index_t row = 0; row < rows; ++row)
          w.parts.add(w.picks[e0 + static_cast<std::size_t>(row)].second, w.lse[static_cast<std::size_t>(row)],
                      w.o.data() + row * d.Dv);
        e0 = e1;
      }
      for (index_t g = 0; g < G; ++g) {
        const float lse = w.parts.finish(g, out.o.ptr(b, i, h0 + g), out.o.stride(3));
        if (out.lse.has_value()) out.lse(b, i, h0 + g) = lse;
      }
    });
  }
}

}  // namespace detail

/// Same arguments, memory update and results as reference::infllm_attention; K/V may be float,
/// f16 or bf16. Prefill (a prompt, or a chunk of one) and decode (Tq = 1) alike. Allocates the
/// memory's growth and one scratch per thread (kept across calls).
template <class KV>
void infllm_attention(InfllmMemory& memory, const InfllmInputs<KV>& in, const AttentionOutputs& out,
                      const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_infllm("infllm_attention", memory, in, out);
  memory.append_checked(in.q, in.k, executor);
  if (d.B * d.Tq * d.Hq == 0) return;
  if (d.Tq <= kInfllmStepQueries) {
    infllm_step_rows(memory, in, out, d, executor);
    return;
  }
  const InfllmOptions& opt = memory.options();
  const index_t G = d.group(), bs = opt.block_size, K = opt.top_k, init = opt.init_tokens;
  const AttentionOptions causal = infllm_attention_options(opt, true), open = infllm_attention_options(opt, false);
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = infllm_dense_inputs(in);
  const index_t bq = flash_query_block(G, d.Tq), rows = std::max(bq * G, kFlashRows);
  std::vector<std::pair<index_t, index_t>> runs;  // (first query, count), one M(pos) each
  for (index_t i0 = 0; i0 < d.Tq;) {
    const index_t sealed = memory.blocks_at(d.Tk - d.Tq + i0);
    index_t nq = 1;
    while (nq < bq && i0 + nq < d.Tq && memory.blocks_at(d.Tk - d.Tq + i0 + nq) == sealed) ++nq;
    runs.push_back({i0, nq});
    i0 += nq;
  }
  if (K > 0 && d.Tq > 16) {
    infllm_run_gathered(memory, in, out, d, runs, executor);
    return;
  }
  const index_t n_runs = static_cast<index_t>(runs.size());
  executor.run(d.B * d.Hkv * n_runs, [&](index_t t) {
    const index_t b = t / n_runs / d.Hkv, hk = t / n_runs % d.Hkv, h0 = hk * G;
    const index_t i0 = runs[static_cast<std::size_t>(t % n_runs)].first, nq = runs[static_cast<std::size_t>(t % n_runs)].second;
    const index_t last = d.Tk - d.Tq + i0 + nq, sealed = memory.blocks_at(last - 1);
    thread_local BlockPartsScratch scratch;
    BlockPartsScratch& w = scratch;
    GatheredScratch& gw = w.gathered.fit(rows, d.Dk, d.Dv);
    w.parts.reset(nq * G, d.Dv);
    w.queries.resize(static_cast<std::size_t>(nq));
    for (index_t r = 0; r < nq; ++r) w.queries[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(i0 + r);
    const auto add_all = [&](index_t j0, index_t j1, const AttentionOptions& rule) {
      if (j1 <= j0) return;
      gathered_block_attention(dense, b, hk, h0, G, w.queries.data(), nq, j0, j1, rule, scale, gw);
      for (index_t row = 0; row < nq * G; ++row)
        w.parts.add(row, gw.lse[static_cast<std::size_t>(row)], gw.o.data() + row * d.Dv);
    };
    add_all(0, std::min(init, last), causal);
    add_all(memory.block_start(sealed), last, causal);
    // The shared lookup for every row; when every row retrieves every sealed block (top_k >=
    // M and no non-finite score), one call per block serves all rows of the run.
    const index_t cap = std::max<index_t>(K, 1);
    std::vector<std::int32_t> chosen_all(static_cast<std::size_t>(G * nq * cap), -1);
    bool every = K >= sealed;
    for (index_t g = 0; g < G && K > 0; ++g)
      for (index_t r = 0; r < nq; ++r) {
        infllm_select_row(memory, in.q.ptr(b, i0 + r, h0 + g), in.q.stride(3), b, hk, sealed, w.scores, w.chosen,
                          w.candidates);
        every = every && static_cast<index_t>(w.chosen.size()) == sealed;
        std::copy(w.chosen.begin(), w.chosen.end(), chosen_all.begin() + (g * nq + r) * cap);
      }
    if (every) {
      for (index_t n = 0; n < sealed; ++n) add_all(memory.block_start(n), memory.block_start(n) + bs, open);
    } else if (K > 0) {
      for (index_t g = 0; g < G; ++g) {
        const auto first = chosen_all.begin() + g * nq * cap, past = first + nq * cap;
        std::vector<std::int32_t> blocks(first, past);
        std::sort(blocks.begin(), blocks.end());
        blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
        for (const std::int32_t n : blocks) {
          if (n < 0) continue;
          w.subset.clear();
          for (index_t r = 0; r < nq; ++r)
            for (index_t e = 0; e < cap; ++e)
              if (first[r * cap + e] == n) w.subset.push_back(static_cast<std::int32_t>(i0 + r));
          gathered_block_attention(dense, b, hk, h0 + g, 1, w.subset.data(), static_cast<index_t>(w.subset.size()),
                                   memory.block_start(n), memory.block_start(n) + bs, open, scale, gw);
          for (std::size_t e = 0; e < w.subset.size(); ++e)
            w.parts.add((w.subset[e] - i0) * G + g, gw.lse[e], gw.o.data() + static_cast<index_t>(e) * d.Dv);
        }
      }
    }
    for (index_t r = 0; r < nq; ++r)
      for (index_t g = 0; g < G; ++g) {
        const float lse = w.parts.finish(r * G + g, out.o.ptr(b, i0 + r, h0 + g), out.o.stride(3));
        if (out.lse.has_value()) out.lse(b, i0 + r, h0 + g) = lse;
      }
  });
}

}  // namespace seqmix
