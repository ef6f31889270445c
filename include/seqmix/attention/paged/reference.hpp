// paged_attention: softmax attention over a paged KV cache (vLLM's block pool, flash-attn's
// flash_attn_with_kvcache with a block table). The readable definition, the argument structs
// and their validation; the fast form is in paged.hpp, the append of new K/V rows in append.hpp.
//
// Memory is the caller's: a pool of pages shared by every sequence,
//   k_pages [num_blocks, block_size, Hkv, Dk],  v_pages [num_blocks, block_size, Hkv, Dv]
// (fp32, fp16 or bf16), and per sequence n its pages in order, block_table[n, 0 .. ceil(L/bs)),
// where L = cache_seqlens[n] counts the cached tokens, the new queries' own K/V included. Key j
// of sequence n is row j % bs of page block_table[n, j / bs]. Entries past a sequence's last
// page are never read (engines pad them with anything).
//
// Queries are [N, Tq, Hq, Dk], or packed [1, total_q, Hq, Dk] with cu_seqlens_q [N+1]. Query i
// of the Tq_n queries of sequence n sits at position L - Tq_n + i (bottom-right: the queries are
// the last Tq_n tokens of the sequence), so Tq_n = 1 is decode and Tq_n > 1 a chunk of prefill
// or a speculative verify against the cached prefix. Then exactly dense attention's rules
// (dense/reference.hpp) over keys [0, L): causal (on by default), window, sink tokens, softcap,
// ALiBi, relative biases, head scales, sink logits, GQA (query head h reads KV head h / (Hq / Hkv)).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Block tables are IndexTables (core/batch.hpp): int32 as vLLM keeps them, or int64.
using BlockTable = IndexTable;

/// The same rules as AttentionOptions; `causal` is on by default because the queries of a paged
/// call are the newest tokens of their sequences.
struct PagedAttentionOptions {
  std::optional<float> scale;  ///< std::nullopt: 1/sqrt(Dk)
  bool causal = true;          ///< a query sees keys up to its own position
  index_t window = 0;          ///< sliding window W (0: none), as AttentionOptions::window
  index_t sink_tokens = 0;     ///< StreamingLLM sinks kept visible by the window
  float softcap = 0.f;         ///< logit soft-capping (0: off)
  /// bf16 pages: Bf16Compute::dot runs the decode tiles (up to 16 queries per sequence) on
  /// AVX512-BF16 dot products, as AttentionOptions::bf16_compute does for attention_step; the
  /// prefill chunks keep fp32 products.
  Bf16Compute bf16_compute = Bf16Compute::fp32;

  /// The same rules as AttentionOptions (what the dense kernels take).
  AttentionOptions dense() const {
    AttentionOptions o;
    o.scale = scale, o.causal = causal, o.window = window, o.sink_tokens = sink_tokens, o.softcap = softcap;
    o.bf16_compute = bf16_compute;
    return o;
  }
};

/// Arguments of paged_attention: queries, the page pools of K and V (KV = float, f16 or bf16)
/// and the block table that maps each sequence's blocks to pages (vLLM's layout).
template <class KV = float>
struct PagedAttentionInputs {
  ConstView<float, 4> q;             ///< [N,Tq,Hq,Dk], or [1,total_q,Hq,Dk] with cu_seqlens_q
  ConstView<KV, 4> k_pages;          ///< [num_blocks,block_size,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v_pages;          ///< [num_blocks,block_size,Hkv,Dv]
  BlockTable block_table;            ///< [N,max_blocks]: page of each block of each sequence
  IndexList cache_seqlens;           ///< [N]: cached tokens per sequence, the queries' own included
  IndexList cu_seqlens_q = {};       ///< [N+1], optional: packed queries (sequence n: [cu[n], cu[n+1]))
  ConstView<float, 1> alibi_slopes = {}; ///< [Hq], optional
  ConstView<float, 1> sink_logits = {}; ///< [Hq], optional
  /// Rotary embedding fused into the kernel (docs/operators.md section 10), or nullptr: query t
  /// of sequence n is rotated at its position cache_seqlens[n] - Tq_n + t in the kernel's q tile.
  /// The keys in the pages are taken as stored rotated (paged_kv_append with the same table
  /// rotates them as it writes). The table must outlive the call.
  const RopeTable* rope = nullptr;
  /// Relative position bias computed in the tile loop (docs/operators.md section 10), as
  /// AttentionInputs::relative_bias: query t of sequence n at position cache_seqlens[n] - Tq_n + t,
  /// key j at j. Kind none by default.
  RelativeBias relative_bias = {};
  /// [Hq], optional: per-head factor on the scale, as AttentionInputs::head_scales.
  ConstView<float, 1> head_scales = {};
};

/// Same layout as q ([N,Tq,Hq,Dv] or packed); must not overlap an input.
struct PagedAttentionOutputs {
  TensorView<float, 4> o;    ///< [N,Tq,Hq,Dv] or [1,total_q,Hq,Dv]
  TensorView<float, 3> lse = {}; ///< [N,Tq,Hq] or [1,total_q,Hq], optional
};

namespace detail {

struct PagedDims {
  index_t N, Hq, Hkv, Dk, Dv, num_blocks, block_size, max_blocks;
  bool packed;
  index_t group() const noexcept { return Hq / Hkv; }
};

// Queries of sequence n: [first query row, count) in q's dims 0/1 (row b = n when dense).
struct PagedQueries {
  index_t b, i0, count;
};

template <class KV>
PagedQueries paged_queries(const PagedAttentionInputs<KV>& in, index_t n) {
  if (in.cu_seqlens_q.has_value()) return {0, in.cu_seqlens_q[n], in.cu_seqlens_q[n + 1] - in.cu_seqlens_q[n]};
  return {n, 0, in.q.size(1)};
}

// block_table [N, max_blocks] and cache_seqlens [N] given with one row / entry per sequence;
// returns max_blocks.
inline index_t check_block_table(const ArgCheck& check, const BlockTable& table, const IndexList& cache_seqlens,
                                 index_t N) {
  if (!table.has_value() && N > 0) check.fail("block_table", "is required ([N, max_blocks])");
  if (table.dangling()) check.fail("block_table", "has a null data pointer");
  if (table.has_value() && table.rows() != N)
    check.fail("block_table", "must have one row per sequence (" + std::to_string(N) + "), got " +
                                  std::to_string(table.rows()));
  if (cache_seqlens.dangling()) check.fail("cache_seqlens", "has a null data pointer");
  if (cache_seqlens.size() != N)
    check.fail("cache_seqlens", "must hold one length per sequence (" + std::to_string(N) + "), got " +
                                    std::to_string(cache_seqlens.size()));
  return table.has_value() ? table.cols() : 0;
}

// The sequences of a paged call over a pool of NB pages of BS tokens: N (from cu_seqlens_q when
// the queries are packed), one block-table row and length per sequence, every length within its
// pages and at least its query count, every used table entry in [0, NB). Returns N and sets
// max_blocks.
inline index_t check_paged_sequences(const ArgCheck& check, const ConstView<float, 4>& q, const IndexList& cu_seqlens_q,
                                     const BlockTable& table, const IndexList& cache_seqlens, index_t NB, index_t BS,
                                     index_t& max_blocks) {
  const bool packed = cu_seqlens_q.has_value();
  const index_t Tq = q.size(1);
  const index_t N = packed ? packed_sequences(check, cu_seqlens_q, q.size(0), Tq) : q.size(0);
  max_blocks = check_block_table(check, table, cache_seqlens, N);
  for (index_t n = 0; n < N; ++n) {
    const index_t L = cache_seqlens[n];
    const index_t queries = packed ? cu_seqlens_q[n + 1] - cu_seqlens_q[n] : Tq;
    if (L < 0 || L > max_blocks * BS)
      check.fail("cache_seqlens", "entry " + std::to_string(n) + " is " + std::to_string(L) + ", outside [0, " +
                                      std::to_string(max_blocks * BS) + "] (max_blocks " + std::to_string(max_blocks) +
                                      " x block_size " + std::to_string(BS) + ")");
    if (queries > L)
      check.fail("q", "sequence " + std::to_string(n) + " has " + std::to_string(queries) +
                          " queries but only " + std::to_string(L) +
                          " cached tokens; the queries' own K/V must be appended first");
    for (index_t blk = 0; blk * BS < L; ++blk) {
      const index_t page = table(n, blk);
      if (page < 0 || page >= NB)
        check.fail("block_table", "entry [" + std::to_string(n) + ", " + std::to_string(blk) + "] is " +
                                      std::to_string(page) + ", outside [0, " + std::to_string(NB) +
                                      ") (the pool has " + std::to_string(NB) + " blocks)");
    }
  }
  return N;
}

// Every argument, every used block table entry and every length is checked here, before any
// output is written; messages are formatted only on failure (no allocation on a good call).
template <class KV>
PagedDims validate_paged_attention(const ArgCheck& check, const PagedAttentionInputs<KV>& in,
                                   const PagedAttentionOutputs& out, const PagedAttentionOptions& options) {
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "N,Tq,Hq,Dk");
  const index_t Bq = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3);
  check.shape("k_pages", in.k_pages, std::array<index_t, 4>{-1, -1, -1, Dk}, "num_blocks,block_size,Hkv,Dk");
  const index_t NB = in.k_pages.size(0), BS = in.k_pages.size(1), Hkv = in.k_pages.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "k_pages", "KV heads (dimension 2)");
  if (BS < 1) check.fail("k_pages", "needs a block size (dimension 1) >= 1, got " + std::to_string(BS));
  check.shape("v_pages", in.v_pages, std::array<index_t, 4>{NB, BS, Hkv, -1}, "num_blocks,block_size,Hkv,Dv");
  const index_t Dv = in.v_pages.size(3);
  const bool packed = in.cu_seqlens_q.has_value();
  index_t max_blocks = 0;
  const index_t N = check_paged_sequences(check, in.q, in.cu_seqlens_q, in.block_table, in.cache_seqlens, NB, BS, max_blocks);
  check.optional_shape("alibi_slopes", in.alibi_slopes, std::array<index_t, 1>{Hq}, "Hq");
  check.optional_shape("sink_logits", in.sink_logits, std::array<index_t, 1>{Hq}, "Hq");
  check.shape("o", out.o, std::array<index_t, 4>{Bq, Tq, Hq, Dv}, "N,Tq,Hq,Dv");
  check.optional_shape("lse", out.lse, std::array<index_t, 3>{Bq, Tq, Hq}, "N,Tq,Hq");
  validate_attention_options(check, options.dense());
  refuse_output_overlap(check, out.o, out.lse, in.q, in.k_pages, in.v_pages, "(q, k_pages or v_pages)");
  validate_relative_bias(check, in.relative_bias, in.head_scales, Hq);
  if (in.rope) {  // queries sit at positions up to cache_seqlens[n] - 1
    const RopeTable& table = *in.rope;
    check_fused_rope_table(check, table, Dk, FusedRopeUse::queries);
    for (index_t n = 0; n < N; ++n)
      if (paged_queries(in, n).count > 0 && in.cache_seqlens[n] > table.positions())
        check.fail("rope", "covers positions [0, " + std::to_string(table.positions()) + "), but sequence " +
                               std::to_string(n) + "'s last query is at position " +
                               std::to_string(in.cache_seqlens[n] - 1));
  }
  return {N, Hq, Hkv, Dk, Dv, NB, BS, max_blocks, packed};
}

// One sequence's queries, output rows and per-head vectors as a dense batch row ([1, count, ...]
// views into q / o / lse); the caller sets dense.k / dense.v ([1, L, Hkv, D]).
template <class KV, class DenseKV>
void sequence_as_dense(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out, const PagedDims& d,
                       const PagedQueries& qs, AttentionInputs<DenseKV>& dense, AttentionOutputs& dense_out) {
  dense.q = ConstView<float, 4>(in.q.ptr(qs.b, qs.i0), {1, qs.count, d.Hq, d.Dk},
                                {0, in.q.stride(1), in.q.stride(2), in.q.stride(3)});
  dense.alibi_slopes = in.alibi_slopes, dense.sink_logits = in.sink_logits;
  dense.relative_bias = in.relative_bias, dense.head_scales = in.head_scales;
  dense.rope = in.rope;  // q only: the pages hold rotated keys
  dense.rope_rotated_keys = std::numeric_limits<index_t>::max();
  dense_out.o = TensorView<float, 4>(out.o.ptr(qs.b, qs.i0), {1, qs.count, d.Hq, d.Dv},
                                     {0, out.o.stride(1), out.o.stride(2), out.o.stride(3)});
  if (out.lse.has_value())
    dense_out.lse = TensorView<float, 3>(out.lse.ptr(qs.b, qs.i0), {1, qs.count, d.Hq},
                                         {0, out.lse.stride(1), out.lse.stride(2)});
}

}  // namespace detail

namespace reference {

/// The definition: each sequence's keys gathered from its pages into a contiguous fp32 cache,
/// then reference::attention with its queries at the end of it. Allocates; single-threaded.
template <class KV>
void paged_attention(const PagedAttentionInputs<KV>& in, const PagedAttentionOutputs& out,
                     const PagedAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_paged_attention(ArgCheck("reference::paged_attention"), in, out, options);
  for (index_t n = 0; n < d.N; ++n) {
    const index_t L = in.cache_seqlens[n];
    const detail::PagedQueries qs = detail::paged_queries(in, n);
    if (qs.count == 0) continue;
    Tensor<float, 4> k({1, L, d.Hkv, d.Dk}), v({1, L, d.Hkv, d.Dv});
    for (index_t j = 0; j < L; ++j) {
      const index_t page = in.block_table(n, j / d.block_size), row = j % d.block_size;
      for (index_t h = 0; h < d.Hkv; ++h) {
        for (index_t c = 0; c < d.Dk; ++c) k(0, j, h, c) = static_cast<float>(in.k_pages(page, row, h, c));
        for (index_t c = 0; c < d.Dv; ++c) v(0, j, h, c) = static_cast<float>(in.v_pages(page, row, h, c));
      }
    }
    AttentionInputs<float> dense;
    AttentionOutputs dense_out;
    detail::sequence_as_dense(in, out, d, qs, dense, dense_out);
    dense.k = k.view(), dense.v = v.view();
    reference::attention(dense, dense_out, options.dense());
  }
}

}  // namespace reference
}  // namespace seqmix
