// landmark attention, fast form: the grouped softmax as weighted parts on the flash kernel.
//
// For a query, the own block's keys up to its position are one part with weight lse_own (its
// log-denominator), and each chosen earlier block n is a part whose normalized output o_n is
// the block's plain softmax attention, with weight l_n (the landmark logit) instead of its lse:
// o = (exp(lse_own) o_own + sum_n exp(l_n) o_n) / Z, Z = exp(lse_own) + sum_n exp(l_n), which is
// the grouped softmax of reference.hpp. Per (batch row, KV head): the landmark logits of the
// group (detail::landmark_logits, shared with the reference), then tasks of a run of queries in
// one own block (up to flash_query_block of them, every head of the group as rows):
//  - own part: gathered_block_attention over [start(own), last position], causal;
//  - every earlier block (top_k = -1): one unmasked gathered_block_attention of all the run's
//    rows over the block's keys (every K/V tile loaded feeds every row);
//  - top_k blocks, decode (landmark_step, or Tq <= 16): per head, the union of the run's chosen
//    blocks, each against the queries that chose it;
//  - top_k blocks, prefill: landmark_run_gathered below (MoBA's form: per (head, block) the
//    queries of the whole sequence that chose it in Q tiles, results in partial rows, folded
//    per row at the end), since a run's rows choose mostly different blocks;
//  - the parts are folded into a running (m, s, a) per row (WeightedPartsAccumulator), so no
//    part is stored and no two tasks write the same row.
// The work is the definition's: (own + chosen blocks) keys per query; with top_k = -1 it is the
// causal triangle of dense attention plus one logit per block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "seqmix/attention/landmark/parts.hpp"
#include "seqmix/attention/landmark/reference.hpp"

namespace seqmix {
namespace detail {

// The queries [0, Tq) cut into runs (first query, count) that stay inside one own block and are
// at most bq long: a run's rows share their own block's keys and its landmark choices' blocks.
inline std::vector<std::pair<index_t, index_t>> landmark_query_runs(const LandmarkDims& m, index_t bq) {
  const AttentionDims& d = m.attention;
  std::vector<std::pair<index_t, index_t>> runs;
  for (index_t i0 = 0; i0 < d.Tq;) {
    const index_t pos0 = d.Tk - d.Tq + i0, end = m.starts[static_cast<std::size_t>(m.block_of(pos0) + 1)];
    const index_t nq = std::min({bq, d.Tq - i0, end - pos0});
    runs.push_back({i0, nq});
    i0 += nq;
  }
  return runs;
}

// The grouped softmax of queries [0, Tq) of every (batch row, KV head), the body of
// landmark_attention and landmark_step after validation.
template <class KV>
void landmark_run(const LandmarkInputs<KV>& in, const AttentionOutputs& out, const LandmarkOptions& options,
                  const LandmarkDims& m, const Executor& executor) {
  const AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t G = d.group(), Nb = m.blocks(), K = options.top_k;
  const AttentionOptions causal = landmark_attention_options(options, true), open = landmark_attention_options(options, false);
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = landmark_dense_inputs(in);
  Tensor<float, 4> own_keys;
  const ConstView<float, 4> lk = landmark_keys(in, m, own_keys, executor);
  const index_t bq = flash_query_block(G, d.Tq), rows = std::max(bq * G, kFlashRows);
  const std::vector<std::pair<index_t, index_t>> runs = landmark_query_runs(m, bq);
  // (batch row, KV head) groups a few at a time: their logits (at most ~4M floats, at least one
  // group), then every run of every group as one parallel set of tasks (decode: one task per group).
  const index_t groups = d.B * d.Hkv, per_group = d.Tq * G * Nb;
  const index_t chunk = std::clamp<index_t>((index_t{1} << 22) / std::max<index_t>(per_group, 1), 1, groups);
  Tensor<float, 4> logits({chunk * d.Tq, 1, G, Nb});
  for (index_t c0 = 0; c0 < groups; c0 += chunk) {
    const index_t c1 = std::min(groups, c0 + chunk);
    for (index_t c = c0; c < c1; ++c) {
      const auto view = TensorView<float, 4>(logits.view().ptr((c - c0) * d.Tq, 0, 0), {1, d.Tq, G, Nb});
      landmark_logits(in.q, lk, m, options, c / d.Hkv, c % d.Hkv, c % d.Hkv * G, G, view, executor);
    }
    const index_t n_runs = static_cast<index_t>(runs.size());
    executor.run((c1 - c0) * n_runs, [&](index_t t) {
      const index_t c = c0 + t / n_runs, b = c / d.Hkv, hk = c % d.Hkv, h0 = hk * G;
      const index_t i0 = runs[static_cast<std::size_t>(t % n_runs)].first, nq = runs[static_cast<std::size_t>(t % n_runs)].second;
      const TensorView<float, 4> lg(logits.view().ptr((c - c0) * d.Tq, 0, 0), {1, d.Tq, G, Nb});
        thread_local BlockPartsScratch scratch;
        BlockPartsScratch& w = scratch;
        GatheredScratch& gw = w.gathered.fit(rows, d.Dk, d.Dv);
        w.parts.reset(nq * G, d.Dv);
        w.queries.resize(static_cast<std::size_t>(nq));
        for (index_t r = 0; r < nq; ++r) w.queries[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(i0 + r);
        const index_t last = d.Tk - d.Tq + i0 + nq, own = m.block_of(last - 1);
        gathered_block_attention(dense, b, hk, h0, G, w.queries.data(), nq, m.starts[static_cast<std::size_t>(own)],
                                 last, causal, scale, gw);
        for (index_t row = 0; row < nq * G; ++row)
          w.parts.add(row, gw.lse[static_cast<std::size_t>(row)], gw.o.data() + row * d.Dv);
        const auto block_keys = [&](index_t n) {
          return std::make_pair(m.starts[static_cast<std::size_t>(n)], m.starts[static_cast<std::size_t>(n + 1)]);
        };
        if (K < 0) {
          for (index_t n = 0; n < own; ++n) {
            const auto [j0, j1] = block_keys(n);
            gathered_block_attention(dense, b, hk, h0, G, w.queries.data(), nq, j0, j1, open, scale, gw);
            for (index_t r = 0; r < nq; ++r)
              for (index_t g = 0; g < G; ++g)
                w.parts.add(r * G + g, lg(0, i0 + r, g, n), gw.o.data() + (r * G + g) * d.Dv);
          }
        } else {
          // Per head: each query's chosen blocks, then the union, each against its choosers.
          std::vector<std::int32_t> chosen_all(static_cast<std::size_t>(nq * std::max<index_t>(K, 1)), -1);
          for (index_t g = 0; g < G; ++g) {
            for (index_t r = 0; r < nq; ++r) {
              landmark_select_row(lg.ptr(0, i0 + r, g), lg.stride(3), own, K, w.chosen,
                                  w.candidates);
              std::fill(chosen_all.begin() + r * K, chosen_all.begin() + (r + 1) * K, -1);
              std::copy(w.chosen.begin(), w.chosen.end(), chosen_all.begin() + r * K);
            }
            std::vector<std::int32_t> blocks(chosen_all.begin(), chosen_all.begin() + nq * K);
            std::sort(blocks.begin(), blocks.end());
            blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
            for (const std::int32_t n : blocks) {
              if (n < 0) continue;
              w.subset.clear();
              for (index_t r = 0; r < nq; ++r)
                for (index_t e = 0; e < K; ++e)
                  if (chosen_all[static_cast<std::size_t>(r * K + e)] == n) w.subset.push_back(static_cast<std::int32_t>(i0 + r));
              const auto [j0, j1] = block_keys(n);
              gathered_block_attention(dense, b, hk, h0 + g, 1, w.subset.data(), static_cast<index_t>(w.subset.size()),
                                       j0, j1, open, scale, gw);
              for (std::size_t e = 0; e < w.subset.size(); ++e) {
                const index_t i = w.subset[e];
                w.parts.add((i - i0) * G + g, lg(0, i, g, n), gw.o.data() + static_cast<index_t>(e) * d.Dv);
              }
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
}

// The prefill with retrieval (top_k >= 0), MoBA's way: per (batch row, KV head), the shared
// selection of every row, then the queries that chose each (head, block) gathered into Q tiles
// of up to kFlashRows rows, one flash call per tile over the block's keys (every K/V tile loaded
// feeds every gathered row, whatever run the queries are in), each result in its own partial
// row (Tq * G * top_k * (Dv + 1) floats for the group); the own parts by runs of queries in one
// block; then per row the own part and its top_k parts folded with their weights.
template <class KV>
void landmark_run_gathered(const LandmarkInputs<KV>& in, const AttentionOutputs& out, const LandmarkOptions& options,
                           const LandmarkDims& m, const Executor& executor) {
  const AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t G = d.group(), Nb = m.blocks(), K = options.top_k, cap = std::max<index_t>(K, 1);
  const AttentionOptions causal = landmark_attention_options(options, true), open = landmark_attention_options(options, false);
  const float scale = attention_scale(causal, d.Dk);
  const AttentionInputs<KV> dense = landmark_dense_inputs(in);
  Tensor<float, 4> own_keys;
  const ConstView<float, 4> lk = landmark_keys(in, m, own_keys, executor);
  const index_t bq = flash_query_block(G, d.Tq), rows = std::max(bq * G, kFlashRows);
  const std::vector<std::pair<index_t, index_t>> runs = landmark_query_runs(m, bq);
  Tensor<float, 4> logits({1, d.Tq, G, Nb});
  Tensor<std::int32_t, 3> chosen({d.Tq, G, cap});
  Tensor<float, 3> own_o({d.Tq, G, d.Dv}), own_lse({d.Tq, G, 1});
  Tensor<float, 4> part_o({d.Tq, G, cap, d.Dv});
  std::vector<index_t> offsets(static_cast<std::size_t>(G * Nb + 1));
  std::vector<std::int32_t> entry_query, entry_slot;
  struct Task {
    index_t kind;  // 0: own run (i0, count); 1: (g, n) entries [i0, i0 + count)
    index_t g, n, i0, count;
  };
  std::vector<Task> tasks;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      const index_t h0 = hk * G;
      landmark_logits(in.q, lk, m, options, b, hk, h0, G, logits.view(), executor);
      parallel_for(executor, d.Tq * G, 64, [&](index_t first, index_t last) {
        std::vector<std::int32_t> row;
        std::vector<std::pair<float, std::int32_t>> candidates;
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G, own = m.block_of(d.Tk - d.Tq + i);
          landmark_select_row(logits.view().ptr(0, i, g), logits.view().stride(3), own, K, row, candidates);
          for (index_t e = 0; e < cap; ++e)
            chosen(i, g, e) = e < static_cast<index_t>(row.size()) ? row[static_cast<std::size_t>(e)] : -1;
        }
      });
      group_queries_by_block(chosen.cview(), K, Nb, offsets, entry_query, entry_slot);
      tasks.clear();
      for (const auto& [i0, nq] : runs) tasks.push_back({0, 0, 0, i0, nq});
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < Nb; ++n) {
          const index_t e0 = offsets[static_cast<std::size_t>(g * Nb + n)], e1 = offsets[static_cast<std::size_t>(g * Nb + n + 1)];
          for (index_t e = e0; e < e1; e += kFlashRows) tasks.push_back({1, g, n, e, std::min(kFlashRows, e1 - e)});
        }
      executor.run(static_cast<index_t>(tasks.size()), [&](index_t t) {
        const Task& task = tasks[static_cast<std::size_t>(t)];
        thread_local GatheredScratch scratch;
        GatheredScratch& gw = scratch.fit(rows, d.Dk, d.Dv);
        if (task.kind == 0) {
          std::vector<std::int32_t> queries(static_cast<std::size_t>(task.count));
          for (index_t r = 0; r < task.count; ++r) queries[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(task.i0 + r);
          const index_t last = d.Tk - d.Tq + task.i0 + task.count, own = m.block_of(last - 1);
          gathered_block_attention(dense, b, hk, h0, G, queries.data(), task.count,
                                   m.starts[static_cast<std::size_t>(own)], last, causal, scale, gw);
          for (index_t r = 0; r < task.count; ++r)
            for (index_t g = 0; g < G; ++g) {
              std::copy(gw.o.data() + (r * G + g) * d.Dv, gw.o.data() + (r * G + g + 1) * d.Dv, own_o.view().ptr(task.i0 + r, g));
              own_lse(task.i0 + r, g, 0) = gw.lse[static_cast<std::size_t>(r * G + g)];
            }
          return;
        }
        gathered_block_attention(dense, b, hk, h0 + task.g, 1, entry_query.data() + task.i0, task.count,
                                 m.starts[static_cast<std::size_t>(task.n)], m.starts[static_cast<std::size_t>(task.n + 1)],
                                 open, scale, gw);
        for (index_t r = 0; r < task.count; ++r) {
          const auto at = static_cast<std::size_t>(task.i0 + r);
          std::copy(gw.o.data() + r * d.Dv, gw.o.data() + (r + 1) * d.Dv,
                    part_o.view().ptr(entry_query[at], task.g, entry_slot[at]));
        }
      });
      parallel_for(executor, d.Tq * G, 64, [&](index_t first, index_t last) {
        WeightedPartsAccumulator acc;
        acc.reset(1, d.Dv);
        for (index_t r = first; r < last; ++r) {
          const index_t g = r % G, i = r / G;
          acc.reset(1, d.Dv);
          acc.add(0, own_lse(i, g, 0), own_o.view().ptr(i, g));
          for (index_t e = 0; e < K; ++e) {
            const index_t n = chosen(i, g, e);
            if (n >= 0) acc.add(0, logits(0, i, g, n), part_o.view().ptr(i, g, e));
          }
          const float lse = acc.finish(0, out.o.ptr(b, i, h0 + g), out.o.stride(3));
          if (out.lse.has_value()) out.lse(b, i, h0 + g) = lse;
        }
      });
    }
}

}  // namespace detail

/// Same arguments and results as reference::landmark_attention; K/V may be float, f16 or bf16.
/// With top_k >= 0 and Tq > 16 the chosen blocks run against their gathered queries (per KV
/// head's group: logits, selection and Tq * (Hq / Hkv) * (top_k + 1) * (Dv + 1) floats of parts);
/// otherwise by runs of queries (logits of a few groups, at most ~4M floats). Allocates the
/// landmark keys (unless given) and one scratch per thread (kept across calls).
template <class KV>
void landmark_attention(const LandmarkInputs<KV>& in, const AttentionOutputs& out, const LandmarkOptions& options = {},
                        const Executor& executor = serial_executor()) {
  const detail::LandmarkDims m = detail::validate_landmark("landmark_attention", in, out, options);
  if (options.top_k >= 0 && m.attention.Tq > 16)
    detail::landmark_run_gathered(in, out, options, m, executor);
  else
    detail::landmark_run(in, out, options, m, executor);
}

}  // namespace seqmix
