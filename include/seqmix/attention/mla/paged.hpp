// mla over a paged latent cache (docs/operators.md section 10): the latents c [d_c] and rotary
// keys r [d_r] of each token live in pages of block_size tokens, c_pages [num_blocks,
// block_size, d_c] and r_pages [num_blocks, block_size, d_r] (fp32, f16 or bf16), and token j of
// sequence n is row j % block_size of page block_table[n, j / block_size], as in
// paged_attention (vLLM / flash-attn's block tables).
//
//   mla_paged_append  writes new tokens' latents after each sequence's cache_seqlens (the tokens
//                     cached before the append), rotating k_rope at its position with an
//                     optional rope table, so the pages hold rotated keys.
//   mla_paged_decode  the absorbed decode of mla_decode, reading each sequence's first
//                     cache_seqlens[n] tokens through its block table (one block of 64 rows at
//                     a time, never a gathered copy of the cache). Same results as mla_decode
//                     over the same tokens laid out densely, bit for bit.
// Everything is checked before the first row or output is written; decode allocates nothing
// after a first call of the same shape, append nothing at all.
#pragma once

#include <string>

#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/positional/rope/fast.hpp"

namespace seqmix {

/// New tokens for a latent cache: their latents and (unrotated, when rope is given) rotary keys,
/// appended after the cache_seqlens[n] tokens each sequence already holds.
struct MlaLatentAppendInputs {
  ConstView<float, 3> c_kv;    ///< [N, T, d_c]
  ConstView<float, 3> k_rope;  ///< [N, T, d_r]
  /// [N, max_blocks]: token position p of sequence n goes to row p % block_size of page
  /// block_table[n, p / block_size]. Required by mla_paged_append; for the dense quantized
  /// latent cache (kv_cache/mla_latent.hpp) not given means row n, position p.
  BlockTable block_table = {};
  IndexList cache_seqlens;  ///< [N]: tokens cached before this append
  /// Rotary embedding fused into the append, or nullptr: k_rope of token t of sequence n is
  /// rotated at position cache_seqlens[n] + t before it is stored. Must outlive the call.
  const RopeTable* rope = nullptr;
};

/// The pages mla_paged_append writes and mla_paged_decode reads.
template <class C = float>
struct MlaPagedLatentPool {
  TensorView<C, 3> c_pages;  ///< [num_blocks, block_size, d_c]
  TensorView<C, 3> r_pages;  ///< [num_blocks, block_size, d_r]
};

/// One query per sequence against its paged latent cache.
template <class C = float>
struct MlaPagedDecodeInputs {
  ConstView<float, 3> q_nope;  ///< [N, H, d_nope]
  ConstView<float, 3> q_rope;  ///< [N, H, d_r], rotated
  ConstView<C, 3> c_pages;     ///< [num_blocks, block_size, d_c]
  ConstView<C, 3> r_pages;     ///< [num_blocks, block_size, d_r]
  BlockTable block_table;      ///< [N, max_blocks]
  IndexList cache_seqlens;     ///< [N]: cached tokens of each sequence, <= max_blocks * block_size
  MlaWeights weights;          ///< per-head up-projections
};

namespace detail {

// Where position p of sequence n lives: (page, row) through the block table, or (n, p) densely.
struct MlaSlot {
  index_t x, y;
};
inline MlaSlot mla_slot(const BlockTable& table, index_t Y, index_t n, index_t p) {
  return table.has_value() ? MlaSlot{table(n, p / Y), p % Y} : MlaSlot{n, p};
}

// An append of new latents into X x Y rows of d_c / d_r (pages X of Y tokens with a block
// table, else sequences X of Y positions): shapes, lengths, every used table entry, the rope
// table and every rotated position. Returns N. No allocation on success.
inline index_t check_mla_latent_append(const ArgCheck& check, const MlaLatentAppendInputs& in, index_t X, index_t Y,
                                       index_t dc, index_t dr, bool table_required) {
  check.shape("c_kv", in.c_kv, std::array<index_t, 3>{-1, -1, dc}, "N,T,d_c");
  const index_t N = in.c_kv.size(0), T = in.c_kv.size(1);
  check.shape("k_rope", in.k_rope, std::array<index_t, 3>{N, T, dr}, "N,T,d_r");
  if (table_required && !in.block_table.has_value() && N > 0) check.fail("block_table", "is required ([N, max_blocks])");
  index_t capacity = Y;
  if (in.block_table.has_value()) {
    capacity = check_block_table(check, in.block_table, in.cache_seqlens, N) * Y;
  } else {
    if (in.cache_seqlens.dangling()) check.fail("cache_seqlens", "has a null data pointer");
    if (in.cache_seqlens.size() != N)
      check.fail("cache_seqlens", "must hold one length per sequence (" + std::to_string(N) + "), got " +
                                      std::to_string(in.cache_seqlens.size()));
    if (N > X)
      check.fail("c_kv", "has " + std::to_string(N) + " sequences, more than the cache's " + std::to_string(X) + " rows");
  }
  if (in.rope) check_fused_rope_table(check, *in.rope, dr, FusedRopeUse::keys);
  for (index_t n = 0; n < N; ++n) {
    const index_t start = in.cache_seqlens[n];
    if (start < 0 || start + T > capacity)
      check.fail("cache_seqlens", "sequence " + std::to_string(n) + " would hold tokens [" + std::to_string(start) +
                                      ", " + std::to_string(start + T) + "), outside its " + std::to_string(capacity) +
                                      " rows" + (in.block_table.has_value() ? " (max_blocks x block_size)" : ""));
    if (in.block_table.has_value())
      for (index_t blk = start / Y; T > 0 && blk * Y < start + T; ++blk) {
        const index_t page = in.block_table(n, blk);
        if (page < 0 || page >= X)
          check.fail("block_table", "entry [" + std::to_string(n) + ", " + std::to_string(blk) + "] is " +
                                        std::to_string(page) + ", outside [0, " + std::to_string(X) + ")");
      }
    if (in.rope && T > 0 && start + T > in.rope->positions())
      check.fail("cache_seqlens", "puts sequence " + std::to_string(n) + "'s last new token at position " +
                                      std::to_string(start + T - 1) + ", outside the rope table's positions [0, " +
                                      std::to_string(in.rope->positions()) + ")");
  }
  return N;
}

// The lengths and used table entries of a paged decode over NB pages of BS tokens.
inline void check_mla_paged_lengths(const ArgCheck& check, const BlockTable& table, const IndexList& cache_seqlens,
                                    index_t N, index_t NB, index_t BS) {
  const index_t max_blocks = check_block_table(check, table, cache_seqlens, N);
  for (index_t n = 0; n < N; ++n) {
    const index_t L = cache_seqlens[n];
    if (L < 0 || L > max_blocks * BS)
      check.fail("cache_seqlens", "entry " + std::to_string(n) + " is " + std::to_string(L) + ", outside [0, " +
                                      std::to_string(max_blocks * BS) + "] (max_blocks x block_size)");
    for (index_t blk = 0; blk * BS < L; ++blk) {
      const index_t page = table(n, blk);
      if (page < 0 || page >= NB)
        check.fail("block_table", "entry [" + std::to_string(n) + ", " + std::to_string(blk) + "] is " +
                                      std::to_string(page) + ", outside [0, " + std::to_string(NB) + ")");
    }
  }
}

// Shapes of the queries, weights and outputs of a decode with N sequences; fills d except Tk.
inline MlaDims check_mla_decode_queries(const ArgCheck& check, const ConstView<float, 3>& q_nope,
                                        const ConstView<float, 3>& q_rope, const MlaWeights& weights, index_t dc,
                                        index_t dr, const MlaDecodeOutputs& out, const MlaOptions& options) {
  check.shape("q_nope", q_nope, std::array<index_t, 3>{-1, -1, -1}, "N,H,d_nope");
  const index_t N = q_nope.size(0), H = q_nope.size(1), dn = q_nope.size(2);
  check.shape("q_rope", q_rope, std::array<index_t, 3>{N, H, dr}, "N,H,d_r");
  MlaDims d = validate_mla_weights(check, weights, H, dn, dc, options);
  check.shape("o", out.o, std::array<index_t, 3>{N, H, d.dv}, "N,H,d_v");
  check.optional_shape("lse", out.lse, std::array<index_t, 2>{N, H}, "N,H");
  if (views_overlap(out.o, q_nope) || views_overlap(out.o, q_rope)) check.fail("o", "overlaps an input");
  if (views_overlap(out.lse, q_nope) || views_overlap(out.lse, q_rope) || views_overlap(out.lse, out.o))
    check.fail("lse", "overlaps an input or o");
  d.B = N, d.Tq = 1, d.H = H, d.dn = dn, d.dr = dr, d.dc = dc;
  d.scale = options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(dn + dr));
  return d;
}

}  // namespace detail

/// Writes the new tokens' latents and rotary keys (rounded to the pool's type; k_rope rotated
/// first when in.rope is given) into their pages. Everything is checked before the first write.
template <class C>
void mla_paged_append(const MlaLatentAppendInputs& in, const MlaPagedLatentPool<C>& pool,
                      const Executor& executor = serial_executor()) {
  static const ArgCheck check("mla_paged_append");
  check.shape("c_pages", pool.c_pages, std::array<index_t, 3>{-1, -1, -1}, "num_blocks,block_size,d_c");
  const index_t NB = pool.c_pages.size(0), BS = pool.c_pages.size(1), dc = pool.c_pages.size(2);
  if (BS < 1) check.fail("c_pages", "needs a block size (dimension 1) >= 1, got " + std::to_string(BS));
  check.shape("r_pages", pool.r_pages, std::array<index_t, 3>{NB, BS, -1}, "num_blocks,block_size,d_r");
  const index_t dr = pool.r_pages.size(2);
  const index_t N = detail::check_mla_latent_append(check, in, NB, BS, dc, dr, true);
  if (views_overlap(pool.c_pages, pool.r_pages)) check.fail("r_pages", "overlaps c_pages");
  if (views_overlap(pool.c_pages, in.c_kv) || views_overlap(pool.c_pages, in.k_rope) ||
      views_overlap(pool.r_pages, in.c_kv) || views_overlap(pool.r_pages, in.k_rope))
    check.fail("c_pages", "or r_pages overlaps the new rows c_kv or k_rope");
  const index_t T = in.c_kv.size(1);
  parallel_for(executor, N, 1, [&](index_t begin, index_t end) {
    thread_local AlignedVector<float> tmp;
    detail::DecodeScratch::grow(tmp, std::max(dc, dr));
    for (index_t n = begin; n < end; ++n)
      for (index_t t = 0; t < T; ++t) {
        const index_t p = in.cache_seqlens[n] + t;
        const detail::MlaSlot s = detail::mla_slot(in.block_table, BS, n, p);
        detail::store_kv_row(in.c_kv.ptr(n, t), in.c_kv.stride(2), dc, pool.c_pages.ptr(s.x, s.y),
                             pool.c_pages.stride(2), tmp.data());
        detail::store_kv_row(in.k_rope.ptr(n, t), in.k_rope.stride(2), dr, pool.r_pages.ptr(s.x, s.y),
                             pool.r_pages.stride(2), tmp.data(), in.rope, p);
      }
  });
}

/// The absorbed decode over a paged latent cache: mla_decode's results for each sequence's first
/// cache_seqlens[n] tokens, read through its block table. Checked before any output is written;
/// no allocation after a first call of the same shape.
template <class C>
void mla_paged_decode(const MlaPagedDecodeInputs<C>& in, const MlaDecodeOutputs& out, const MlaOptions& options = {},
                      const Executor& executor = serial_executor()) {
  static const ArgCheck check("mla_paged_decode");
  check.shape("c_pages", in.c_pages, std::array<index_t, 3>{-1, -1, -1}, "num_blocks,block_size,d_c");
  const index_t NB = in.c_pages.size(0), BS = in.c_pages.size(1), dc = in.c_pages.size(2);
  if (BS < 1) check.fail("c_pages", "needs a block size (dimension 1) >= 1, got " + std::to_string(BS));
  check.shape("r_pages", in.r_pages, std::array<index_t, 3>{NB, BS, -1}, "num_blocks,block_size,d_r");
  detail::MlaDims d =
      detail::check_mla_decode_queries(check, in.q_nope, in.q_rope, in.weights, dc, in.r_pages.size(2), out, options);
  detail::check_mla_paged_lengths(check, in.block_table, in.cache_seqlens, d.B, NB, BS);
  if (views_overlap(out.o, in.c_pages) || views_overlap(out.o, in.r_pages)) check.fail("o", "overlaps the pages");
  if (views_overlap(out.lse, in.c_pages) || views_overlap(out.lse, in.r_pages)) check.fail("lse", "overlaps the pages");
  d.Tk = 0;
  for (index_t n = 0; n < d.B; ++n) d.Tk = std::max(d.Tk, in.cache_seqlens[n]);
  const auto length = [&](index_t n) { return in.cache_seqlens[n]; };
  const auto rows = [&](index_t n, index_t j0, index_t count, float* c, float* r) {
    for (index_t i = 0; i < count; ++i) {
      const detail::MlaSlot s = detail::mla_slot(in.block_table, BS, n, j0 + i);
      detail::kv_row_to_float(in.c_pages.ptr(s.x, s.y), in.c_pages.stride(2), d.dc, c + i * d.dc);
      detail::kv_row_to_float(in.r_pages.ptr(s.x, s.y), in.r_pages.stride(2), d.dr, r + i * d.dr);
    }
  };
  detail::mla_decode_run(d, in.q_nope, in.q_rope, in.weights, length, rows, out, executor);
}

}  // namespace seqmix
