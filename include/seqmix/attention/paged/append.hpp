// paged_kv_append: writes new K/V rows into the pages of a paged KV cache (vLLM's
// reshape_and_cache; flash_attn_with_kvcache's k / v arguments), converting fp32 / fp16 / bf16
// input to the pool's storage type.
//
// Where row t of sequence n goes is given one of two ways:
//   slot_mapping [rows]    flat slots, one per token row of k (rows = N * T, or total_T packed):
//                          slot = page * block_size + offset; -1 skips the row (padding).
//   block_table [N, max_blocks] + cache_seqlens [N]
//                          token t of sequence n goes to position cache_seqlens[n] + t, i.e. row
//                          (position % block_size) of page block_table[n, position / block_size].
//                          cache_seqlens counts the tokens cached *before* this append (flash-attn's
//                          meaning); paged_attention afterwards takes cache_seqlens + new tokens.
// New tokens are [N, T, Hkv, D], or packed [1, total_T, Hkv, D] with cu_seqlens [N+1].
// With a rope table the keys are rotated at their positions as they are written (section 10).
// Everything is checked before the first row is written; nothing is allocated after warm-up.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/paged/reference.hpp"

namespace seqmix {

/// Arguments of paged_kv_append: the new K/V rows (fp32, f16 or bf16, converted to the pool's
/// type) and where they go, either flat slots (vLLM's slot_mapping) or after each sequence's
/// cache_seqlens through the block table (flash-attn's k / v arguments).
template <class In = float>
struct PagedKvAppendInputs {
  ConstView<In, 4> k;        ///< [N,T,Hkv,Dk] or [1,total_T,Hkv,Dk]
  ConstView<In, 4> v;        ///< [N,T,Hkv,Dv] or [1,total_T,Hkv,Dv]
  IndexList slot_mapping = {}; ///< [N*T or total_T], optional: flat slots, -1 = skip
  BlockTable block_table;    ///< [N,max_blocks]: used with cache_seqlens when slot_mapping is not given
  IndexList cache_seqlens;   ///< [N]: tokens cached before this append
  IndexList cu_seqlens = {}; ///< [N+1], optional: packed new tokens
  /// Rotary embedding fused into the append (docs/operators.md section 10), or nullptr: each new
  /// key is rotated at its position in fp32 before it is rounded to the pool's type, so the pages
  /// hold rotated keys (what paged_attention with the same table expects). Values are stored as
  /// given. The table must outlive the call.
  const RopeTable* rope = nullptr;
  /// [N*T or total_T], optional: the position of each new token row for the rope. Required with
  /// rope and slot_mapping; with a block table it defaults to cache_seqlens[n] + t.
  IndexList positions = {};
};

/// The pool written to: the same views paged_attention reads.
template <class KV>
struct PagedKvPool {
  TensorView<KV, 4> k_pages;  ///< [num_blocks,block_size,Hkv,Dk]
  TensorView<KV, 4> v_pages;  ///< [num_blocks,block_size,Hkv,Dv]
};

namespace detail {

// The page and row of token row `row` (flattened over k's dims 0 and 1) of sequence n, token t.
struct PagedSlot {
  index_t page, offset;
};

template <class In>
PagedSlot append_slot(const PagedKvAppendInputs<In>& in, index_t block_size, index_t row, index_t n, index_t t) {
  if (in.slot_mapping.has_value()) {
    const index_t slot = in.slot_mapping[row];
    return slot < 0 ? PagedSlot{-1, 0} : PagedSlot{slot / block_size, slot % block_size};
  }
  const index_t pos = in.cache_seqlens[n] + t;
  return {in.block_table(n, pos / block_size), pos % block_size};
}

// The rope position of token row `row` (sequence n, token t): positions[row] if given, else
// the cached length before the append plus t.
template <class In>
index_t append_position(const PagedKvAppendInputs<In>& in, index_t row, index_t n, index_t t) {
  return in.positions.has_value() ? in.positions[row] : in.cache_seqlens[n] + t;
}

// Sequence n's token rows: [row0, row0 + count) of k flattened over dims 0 and 1.
template <class In>
void append_sequence_rows(const PagedKvAppendInputs<In>& in, index_t n, index_t& row0, index_t& count) {
  if (in.cu_seqlens.has_value()) {
    row0 = in.cu_seqlens[n], count = in.cu_seqlens[n + 1] - in.cu_seqlens[n];
  } else {
    row0 = n * in.k.size(1), count = in.k.size(1);
  }
}

// Where the new rows go, over a pool of NB pages of BS tokens: N sequences (from cu_seqlens when
// packed), every slot_mapping entry in [-1, NB * BS), or every sequence's new tokens within its
// pages and the table entries they use in [0, NB). Returns N.
template <class In>
index_t check_append_targets(const ArgCheck& check, const PagedKvAppendInputs<In>& in, index_t NB, index_t BS) {
  const index_t B = in.k.size(0), T = in.k.size(1);
  index_t N = B;
  if (in.cu_seqlens.has_value()) N = packed_sequences(check, in.cu_seqlens, B, T);
  const index_t rows = B * T;
  if (in.slot_mapping.has_value()) {  // else block_table and cache_seqlens are required
    if (in.slot_mapping.dangling()) check.fail("slot_mapping", "has a null data pointer");
    if (in.slot_mapping.size() != rows)
      check.fail("slot_mapping", "must hold one slot per token row (" + std::to_string(rows) + "), got " +
                                     std::to_string(in.slot_mapping.size()));
    for (index_t r = 0; r < rows; ++r) {
      const index_t slot = in.slot_mapping[r];
      if (slot < -1 || slot >= NB * BS)
        check.fail("slot_mapping", "entry " + std::to_string(r) + " is " + std::to_string(slot) + ", outside [-1, " +
                                       std::to_string(NB * BS) + ") (num_blocks x block_size)");
    }
  } else {
    const index_t capacity = check_block_table(check, in.block_table, in.cache_seqlens, N) * BS;
    for (index_t n = 0; n < N; ++n) {
      index_t row0 = 0, count = 0;
      append_sequence_rows(in, n, row0, count);
      const index_t start = in.cache_seqlens[n];
      if (start < 0 || start + count > capacity)
        check.fail("cache_seqlens", "sequence " + std::to_string(n) + " would hold tokens [" + std::to_string(start) +
                                        ", " + std::to_string(start + count) + "), beyond its pages (max_blocks x block_size = " +
                                        std::to_string(capacity) + ")");
      for (index_t blk = start / BS; count > 0 && blk * BS < start + count; ++blk) {
        const index_t page = in.block_table(n, blk);
        if (page < 0 || page >= NB)
          check.fail("block_table", "entry [" + std::to_string(n) + ", " + std::to_string(blk) + "] is " +
                                        std::to_string(page) + ", outside [0, " + std::to_string(NB) + ")");
      }
    }
  }
  return N;
}

// The positions and rope table of an append over N sequences (dense and quantized pages): one
// position per token row, and every rotated row's position inside the table.
template <class In>
void check_append_rope(const ArgCheck& check, const PagedKvAppendInputs<In>& in, index_t N) {
  const index_t B = in.k.size(0), T = in.k.size(1), Dk = in.k.size(3);
  if (in.positions.has_value()) {
    if (in.positions.dangling()) check.fail("positions", "has a null data pointer");
    if (in.positions.size() != B * T)
      check.fail("positions", "must hold one position per token row (" + std::to_string(B * T) + "), got " +
                                  std::to_string(in.positions.size()));
  }
  if (in.rope) {
    const RopeTable& table = *in.rope;
    check_fused_rope_table(check, table, Dk, FusedRopeUse::keys);
    if (!in.positions.has_value() && in.slot_mapping.has_value())
      check.fail("positions", "is required with rope and slot_mapping (a slot does not tell a token's position)");
    for (index_t n = 0; n < N; ++n) {
      index_t row0 = 0, count = 0;
      append_sequence_rows(in, n, row0, count);
      for (index_t t = 0; t < count; ++t) {
        if (in.slot_mapping.has_value() && in.slot_mapping[row0 + t] < 0) continue;  // skipped row
        const index_t p = append_position(in, row0 + t, n, t);
        if (p < 0 || p >= table.positions())
          check.fail(in.positions.has_value() ? "positions" : "cache_seqlens",
                     "puts token row " + std::to_string(row0 + t) + " at position " + std::to_string(p) +
                         ", outside the rope table's positions [0, " + std::to_string(table.positions()) + ")");
      }
    }
  }
}

template <class In, class KV>
index_t validate_paged_kv_append(const PagedKvAppendInputs<In>& in, const PagedKvPool<KV>& pool) {
  static const ArgCheck check("paged_kv_append");
  check.shape("k", in.k, std::array<index_t, 4>{-1, -1, -1, -1}, "N,T,Hkv,Dk");
  const index_t B = in.k.size(0), T = in.k.size(1), Hkv = in.k.size(2), Dk = in.k.size(3);
  check.shape("v", in.v, std::array<index_t, 4>{B, T, Hkv, -1}, "N,T,Hkv,Dv");
  const index_t Dv = in.v.size(3);
  check.shape("k_pages", pool.k_pages, std::array<index_t, 4>{-1, -1, Hkv, Dk}, "num_blocks,block_size,Hkv,Dk");
  const index_t NB = pool.k_pages.size(0), BS = pool.k_pages.size(1);
  if (BS < 1) check.fail("k_pages", "needs a block size (dimension 1) >= 1, got " + std::to_string(BS));
  check.shape("v_pages", pool.v_pages, std::array<index_t, 4>{NB, BS, Hkv, Dv}, "num_blocks,block_size,Hkv,Dv");
  const index_t N = check_append_targets(check, in, NB, BS);
  check_append_rope(check, in, N);
  if (views_overlap(pool.k_pages, pool.v_pages)) check.fail("v_pages", "overlaps k_pages");
  for (const char* name : {"k_pages", "v_pages"}) {
    const bool is_k = name[0] == 'k';
    const bool overlaps = is_k ? views_overlap(pool.k_pages, in.k) || views_overlap(pool.k_pages, in.v)
                               : views_overlap(pool.v_pages, in.k) || views_overlap(pool.v_pages, in.v);
    if (overlaps) check.fail(name, "overlaps the new rows k or v");
  }
  return N;
}

// dst[c * dst_stride] = KV(src[c * src_stride]) for c < n, through fp32 (`tmp`, n floats),
// rotated at `position` in fp32 first when `rope` is given.
template <class In, class KV>
void store_kv_row(const In* src, index_t src_stride, index_t n, KV* dst, index_t dst_stride, float* tmp,
                  const RopeTable* rope = nullptr, index_t position = 0) {
  kv_row_to_float(src, src_stride, n, tmp);
  if (rope) rope_row_in_place(*rope, position, tmp, 1);
  if constexpr (std::is_same_v<KV, float>) {
    if (dst_stride == 1) {
      std::memcpy(dst, tmp, static_cast<std::size_t>(n) * sizeof(float));
      return;
    }
  } else if constexpr (std::is_same_v<KV, f16> || std::is_same_v<KV, bf16>) {
    if (dst_stride == 1) {
      convert(tmp, dst, n);
      return;
    }
  }
  for (index_t c = 0; c < n; ++c) dst[c * dst_stride] = static_cast<KV>(tmp[c]);
}

}  // namespace detail

/// Writes every new K/V row into its page (rounded to the pool's storage type). Rows of different
/// sequences go to different slots, so tokens are spread over the executor.
template <class In, class KV>
void paged_kv_append(const PagedKvAppendInputs<In>& in, const PagedKvPool<KV>& pool,
                     const Executor& executor = serial_executor()) {
  using namespace detail;
  const index_t N = validate_paged_kv_append(in, pool);
  const index_t T = in.k.size(1), Hkv = in.k.size(2), Dk = in.k.size(3), Dv = in.v.size(3);
  const index_t BS = pool.k_pages.size(1);
  parallel_for(executor, N, 1, [&](index_t begin, index_t end) {
    thread_local AlignedVector<float> tmp;
    DecodeScratch::grow(tmp, std::max(Dk, Dv));
    for (index_t n = begin; n < end; ++n) {
      index_t row0 = 0, count = 0;
      append_sequence_rows(in, n, row0, count);
      for (index_t t = 0; t < count; ++t) {
        const index_t row = row0 + t, b = row / std::max<index_t>(T, 1), i = row % std::max<index_t>(T, 1);
        const PagedSlot slot = append_slot(in, BS, row, n, t);
        if (slot.page < 0) continue;
        const index_t position = in.rope ? append_position(in, row, n, t) : 0;
        for (index_t h = 0; h < Hkv; ++h) {
          store_kv_row(in.k.ptr(b, i, h), in.k.stride(3), Dk, pool.k_pages.ptr(slot.page, slot.offset, h),
                       pool.k_pages.stride(3), tmp.data(), in.rope, position);
          store_kv_row(in.v.ptr(b, i, h), in.v.stride(3), Dv, pool.v_pages.ptr(slot.page, slot.offset, h),
                       pool.v_pages.stride(3), tmp.data());
        }
      }
    }
  });
}

}  // namespace seqmix
