// Paged KV cache in the KvCache's compressed formats: paged_kv_append writes fp32 / fp16 / bf16
// K/V into quantized pages, paged_attention reads them in place with the KvCache's decode
// kernels (kv_cache/attention.hpp, integer_dots.hpp). Same addressing as the plain pool
// (reference.hpp): block_table [N, max_blocks], cache_seqlens [N] (before an append, after it
// for attention), queries [N, Tq] or packed with cu_seqlens_q, Tq = 1 .. any (blocks of 16).
//
// Groups and the fp32 tail (KIVI's layout, as KvCache keeps it with residual = 0):
//   * Tokens are quantized in groups of kKvGroupTokens = 32 consecutive positions, the KvCache's
//     block: per-channel keys (KIVI) fit one (scale, min) per channel over the group, per-token
//     keys and values one per token and channel group. A page holds block_size tokens: a
//     multiple of 32 (pages of 32, 64, 128 ...) holds block_size / 32 whole groups; pages of 16
//     or 8 tokens hold one part of a group each (below: its image is cut between pages).
//   * The newest L % 32 tokens of a sequence (its incomplete group) are exact fp32 rows in a
//     per-sequence tail, tail_k / tail_v [S, 32, Hkv, D] (caller memory; sequence n of a call
//     uses row tail_indices[n], or n). When an append fills position 32 g + 31, group g is
//     quantized from the tail into its page (by the KvCache's own make_block) and the tail
//     starts over. So the pool and the tail together equal a KvCache (residual 0, same formats,
//     positions 0 .. L-1) holding the same tokens, and attention over them equals
//     kv_cache_attention on that cache bit for bit (same pieces, same kernels, same merge order).
//   Engines keep a sequence's tail row for the life of the request, like its state slot; the
//   first group is quantized once 32 tokens exist, the attention then reads 32 codes per head
//   per group where the tail held 32 fp32 rows.
//
// Page layout ([num_blocks, page_bytes] bytes, 64-byte aligned rows; quantized_page_bytes):
//   a 64-byte header (format, group size, block size, Hkv, Dk, Dv: written with the page's first
//   group, checked by every later call that reads a group of the page), then for each KV head h
//   and group s of the page a block image [h][s] of 64-byte aligned sections:
//     key codes | key parameters | value codes | value parameters
//   in the KvCache block layouts (kv_cache/layout.hpp, block.hpp): keys in channel-quad units,
//   per-channel (scale, min) planar [2][Dk] or per-token [groups][2][32], values in token-quad
//   units with [groups][2][32] parameters. Positions are not stored (token j is position j).
//   Pages smaller than a group (16 or 8 tokens) split each group's image by section: a group's
//   32 tokens lie in 32 / block_size consecutive pages of its sequence, and part p of its image
//   (per KV head) goes to the p-th of them: with pages of 16, key codes and parameters in the
//   first, value codes and parameters in the second; with pages of 8, one section per page. The
//   kernels read a group through pointers to its four sections, so where they lie changes
//   nothing in the arithmetic (results equal the KvCache's bit for bit whatever the page size).
//   A section is never cut (the integer kernels read it as one array), so a group can spread
//   over at most 4 pages: block sizes 1, 2, 4 (and any other that is not 8, 16 or a multiple of
//   32) are refused. A part's page is sized for the largest part (pages of 16 with int8 keys and
//   int2 values carry the keys' size twice).
//
// Not supported: ZipCache mixed precision (one format pair per pool), slot_mapping appends (a
// group is quantized when its sequence's 32nd token arrives, which needs the sequence), int2 keys.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/kv_cache/attention.hpp"

namespace seqmix {

/// Tokens per quantization group: the KvCache's block (per-channel key parameters span it).
constexpr index_t kKvGroupTokens = detail::kKvBlockTokens;

/// The formats of a quantized pool (the KvCache's; kv_cache/README.md).
struct QuantizedPageFormat {
  KvFormat key_format = KvFormat::int8;    ///< int8, int4 (or f32 / f16 / bf16)
  KvFormat value_format = KvFormat::int8;  ///< int8, int4, int2 (or f32 / f16 / bf16)
  KeyQuant key_quant = KeyQuant::per_channel;  ///< per_channel (KIVI) or per_token keys
  index_t group_size = 0;  ///< channels per parameter group (per-token keys, values); 0 = whole row
};

/// A quantized page pool and the per-sequence fp32 tails, all caller memory (views).
struct QuantizedKvPages {
  TensorView<std::uint8_t, 2> pages;  ///< [num_blocks, page_bytes]: quantized_page_bytes(), 64-byte aligned
  index_t block_size = 0;             ///< tokens per page: 8, 16 or a multiple of kKvGroupTokens
  TensorView<float, 4> tail_k;        ///< [S, 32, Hkv, Dk]: each sequence's incomplete group (features contiguous)
  TensorView<float, 4> tail_v;        ///< [S, 32, Hkv, Dv]
  IndexList tail_indices = {};        ///< [N] of this call, optional: the tail row of sequence n (default n)
  QuantizedPageFormat format;         ///< what the pages hold (checked against each page header)
};

/// Attention inputs: as PagedAttentionInputs, with the quantized pool in place of k/v pages.
struct QuantizedPagedAttentionInputs {
  ConstView<float, 4> q;             ///< [N,Tq,Hq,Dk], or [1,total_q,Hq,Dk] with cu_seqlens_q
  QuantizedKvPages pages;            ///< read only here
  BlockTable block_table;            ///< [N,max_blocks]
  IndexList cache_seqlens;           ///< [N]: cached tokens, the queries' own included
  IndexList cu_seqlens_q = {};       ///< [N+1], optional
  ConstView<float, 1> alibi_slopes = {}; ///< [Hq], optional
  ConstView<float, 1> sink_logits = {}; ///< [Hq], optional
  /// Rotary embedding of q in the kernel (PagedAttentionInputs::rope): query t of sequence n at
  /// cache_seqlens[n] - Tq_n + t; the pages hold keys rotated by the append. nullptr: none.
  const RopeTable* rope = nullptr;
  /// Relative position bias (PagedAttentionInputs::relative_bias), key j at position j, computed
  /// per visible logit; kind none by default.
  RelativeBias relative_bias = {};
  ConstView<float, 1> head_scales = {}; ///< [Hq], optional: per-head factor on the scale
  /// Byte rounding of the integer kernels' operands (KvCacheAttentionInputs::operand_precision):
  /// two_byte by default; one_byte gives kv_cache_attention's one-byte result, bit for bit.
  KvOperandPrecision operand_precision = KvOperandPrecision::two_byte;
};

namespace detail {

// The KvCache configuration whose blocks a pool's pages hold.
inline KvCacheConfig page_config(const QuantizedPageFormat& f, index_t Hkv, index_t Dk, index_t Dv) {
  KvCacheConfig cfg;
  cfg.batch = 1, cfg.kv_heads = Hkv, cfg.key_dim = Dk, cfg.value_dim = Dv;
  cfg.key_format = f.key_format, cfg.value_format = f.value_format, cfg.key_quant = f.key_quant;
  cfg.group_size = f.group_size;
  return cfg;
}

constexpr index_t kPageHeaderBytes = 64;
constexpr std::uint32_t kPageMagic = 0x5153564bu;  // "KVSQ"

struct PageHeader {
  std::uint32_t magic;
  std::uint8_t key_format, value_format, key_quant, unused;
  std::int32_t group_size, block_size, kv_heads, key_dim, value_dim;
};

inline index_t align64(index_t bytes) noexcept { return (bytes + 63) / 64 * 64; }

// Block sizes a quantized pool can have: multiples of the group, or 16 / 8 (a group's four image
// sections over 2 / 4 pages; a section is never cut).
inline bool quantized_block_size_ok(index_t block_size) noexcept {
  return block_size > 0 && (block_size % kKvGroupTokens == 0 || block_size == kKvGroupTokens / 2 ||
                            block_size == kKvGroupTokens / 4);
}

// Where each group's block image sits in the pages. The image has four sections (key codes, key
// parameters, value codes, value parameters, each 64-byte aligned); `parts` pages hold one group
// (1 when pages hold whole groups), part p holding sections [4p / parts, 4(p + 1) / parts).
struct QuantizedPageLayout {
  static constexpr int kSections = 4;
  KvBlockSizes z{};
  KvFormat key_format{}, value_format{};
  index_t section_part[kSections] = {}, section_at[kSections] = {};  // which part, offset in it
  index_t parts = 1, part_bytes = 0;  // pages per group, bytes of one head's part
  index_t image_bytes = 0;            // one head's whole image (the four sections)
  index_t groups = 0, page_bytes = 0;  // groups (or parts of groups) per page

  QuantizedPageLayout(const KvCacheConfig& cfg, index_t block_size)
      : z(block_sizes(cfg, cfg.key_format, cfg.value_format, kKvGroupTokens)),
        key_format(cfg.key_format),
        value_format(cfg.value_format) {
    const index_t bytes[kSections] = {align64(z.key_bytes), align64(z.key_params * 4), align64(z.value_bytes),
                                      align64(z.value_params * 4)};
    parts = block_size > 0 && block_size < kKvGroupTokens ? kKvGroupTokens / block_size : 1;
    if (parts > kSections) parts = kSections;  // refused by check_group_block_size before use
    index_t offset = 0;
    for (int i = 0; i < kSections; ++i) {
      section_part[i] = i * parts / kSections;
      if (i > 0 && section_part[i] != section_part[i - 1]) offset = 0;
      section_at[i] = offset;
      offset += bytes[i];
      image_bytes += bytes[i];
      part_bytes = std::max(part_bytes, offset);
    }
    groups = parts > 1 ? 1 : std::max<index_t>(block_size / kKvGroupTokens, 0);
    page_bytes = kPageHeaderBytes + cfg.kv_heads * groups * part_bytes;
  }
  index_t image_at(index_t h, index_t s) const noexcept { return kPageHeaderBytes + (h * groups + s) * part_bytes; }

  // Where section i of head h's image of a group lies: `page[p]` is the page of part p (a single
  // page when pages hold whole groups), s the group's index in its page.
  template <class Byte>
  Byte* section(Byte* const* page, index_t h, index_t s, int i) const noexcept {
    return page[section_part[i]] + image_at(h, s) + section_at[i];
  }

  // Group s of head h (its parts in pages page[0 .. parts)) as a block of 32 entries at positions
  // [p0, p0 + 32) (`positions`).
  KvBlockView view(const std::uint8_t* const* page, index_t h, index_t s, const std::int64_t* positions) const noexcept {
    KvBlockView v;
    v.key_format = key_format, v.value_format = value_format;
    v.count = kKvGroupTokens, v.slots = z.slots, v.key_row = z.key_row, v.value_row = z.value_row;
    v.keys = section(page, h, s, 0), v.key_bytes = static_cast<std::size_t>(z.key_bytes);
    v.key_params = reinterpret_cast<const float*>(section(page, h, s, 1));
    v.key_param_count = static_cast<std::size_t>(z.key_params);
    v.values = section(page, h, s, 2), v.value_bytes = static_cast<std::size_t>(z.value_bytes);
    v.value_params = reinterpret_cast<const float*>(section(page, h, s, 3));
    v.value_param_count = static_cast<std::size_t>(z.value_params);
    v.positions = positions, v.min_position = positions[0], v.max_position = positions[kKvGroupTokens - 1];
    return v;
  }
};

inline PageHeader page_header(const KvCacheConfig& cfg, index_t block_size) noexcept {
  PageHeader h{};
  h.magic = kPageMagic;
  h.key_format = static_cast<std::uint8_t>(cfg.key_format), h.value_format = static_cast<std::uint8_t>(cfg.value_format);
  h.key_quant = static_cast<std::uint8_t>(cfg.key_quant);
  h.group_size = static_cast<std::int32_t>(cfg.group_size), h.block_size = static_cast<std::int32_t>(block_size);
  h.kv_heads = static_cast<std::int32_t>(cfg.kv_heads);
  h.key_dim = static_cast<std::int32_t>(cfg.key_dim), h.value_dim = static_cast<std::int32_t>(cfg.value_dim);
  return h;
}

// Pages hold whole quantization groups, or a group's image over 2 or 4 pages (checked first: the
// table checks divide by it).
inline void check_group_block_size(const ArgCheck& check, index_t block_size) {
  if (!quantized_block_size_ok(block_size))
    check.fail("block_size", "must be 8, 16 or a multiple of the quantization group (" + std::to_string(kKvGroupTokens) +
                                 " tokens), got " + std::to_string(block_size) +
                                 ": a group's image has 4 sections (key codes, key parameters, value codes, value "
                                 "parameters) that are never cut, so a group spans at most 4 pages");
}

// The pool's own checks (shapes, formats, alignment, tails); returns the layout. Hkv, Dk, Dv from
// the tails.
inline QuantizedPageLayout check_quantized_pool(const ArgCheck& check, const QuantizedKvPages& p, index_t N) {
  check.enum_value("format.key_format", p.format.key_format, 6);
  check.enum_value("format.value_format", p.format.value_format, 6);
  check.enum_value("format.key_quant", p.format.key_quant, 2);
  if (p.format.key_format == KvFormat::int2) check.fail("format.key_format", "int2 is for values only (as in KvCache)");
  if (p.format.group_size < 0 || p.format.group_size > (index_t{1} << 24))
    check.fail("format.group_size", "must be in [0, 2^24], got " + std::to_string(p.format.group_size));
  check.shape("tail_k", p.tail_k, std::array<index_t, 4>{-1, kKvGroupTokens, -1, -1}, "S,32,Hkv,Dk");
  const index_t S = p.tail_k.size(0), Hkv = p.tail_k.size(2), Dk = p.tail_k.size(3);
  check.shape("tail_v", p.tail_v, std::array<index_t, 4>{S, kKvGroupTokens, Hkv, -1}, "S,32,Hkv,Dv");
  const index_t Dv = p.tail_v.size(3);
  if (p.tail_k.stride(3) != 1 || p.tail_v.stride(3) != 1)
    check.fail(p.tail_k.stride(3) != 1 ? "tail_k" : "tail_v", "needs contiguous features (stride 1 in dimension 3)");
  const KvCacheConfig cfg = page_config(p.format, Hkv, Dk, Dv);
  const QuantizedPageLayout layout(cfg, p.block_size);
  check.shape("pages", p.pages, std::array<index_t, 2>{-1, layout.page_bytes}, "num_blocks,page_bytes");
  if (p.pages.size(0) > 0 && (p.pages.stride(1) != 1 || p.pages.stride(0) % 64 != 0 ||
                              reinterpret_cast<std::uintptr_t>(p.pages.data()) % 64 != 0))
    check.fail("pages", "needs contiguous, 64-byte aligned page rows (data and row stride multiples of 64)");
  if (p.tail_indices.dangling()) check.fail("tail_indices", "has a null data pointer");
  const index_t rows = p.tail_indices.has_value() ? p.tail_indices.size() : N;
  if (rows != N)
    check.fail("tail_indices", "must hold one tail row per sequence (" + std::to_string(N) + "), got " + std::to_string(rows));
  for (index_t n = 0; n < N; ++n) {
    const index_t r = p.tail_indices.has_value() ? p.tail_indices[n] : n;
    if (r < 0 || r >= S)
      check.fail("tail_indices", "entry " + std::to_string(n) + " is " + std::to_string(r) + ", outside [0, " +
                                     std::to_string(S) + ") (rows of tail_k)");
  }
  if (views_overlap(p.tail_k, p.tail_v)) check.fail("tail_v", "overlaps tail_k");
  if (views_overlap(p.pages, p.tail_k) || views_overlap(p.pages, p.tail_v)) check.fail("pages", "overlaps tail_k or tail_v");
  return layout;
}

inline index_t tail_row(const QuantizedKvPages& p, index_t n) { return p.tail_indices.has_value() ? p.tail_indices[n] : n; }

// Every page holding a part of groups [first_group, last_group) of sequence n must carry this
// pool's header: a pool written in another format (or never written) is refused.
inline void check_page_headers(const ArgCheck& check, const QuantizedKvPages& p, const PageHeader& want,
                               const BlockTable& table, index_t n, index_t first_group, index_t last_group) {
  const index_t first = first_group * kKvGroupTokens / p.block_size;
  const index_t blocks = (last_group * kKvGroupTokens + p.block_size - 1) / p.block_size;
  for (index_t blk = first; blk < blocks; ++blk) {
    const index_t page = table(n, blk);
    if (page < 0 || page >= p.pages.size(0))
      check.fail("block_table", "entry [" + std::to_string(n) + ", " + std::to_string(blk) + "] is " +
                                    std::to_string(page) + ", outside [0, " + std::to_string(p.pages.size(0)) + ")");
    if (std::memcmp(p.pages.ptr(page, 0), &want, sizeof(PageHeader)) == 0) continue;
    PageHeader got;
    std::memcpy(&got, p.pages.ptr(page, 0), sizeof(PageHeader));
    const bool ours = got.magic == kPageMagic && got.key_format < 6 && got.value_format < 6;
    check.fail("pages", "page " + std::to_string(page) + " (sequence " + std::to_string(n) + ", block " +
                            std::to_string(blk) + ") holds " +
                            (ours ? std::string(format_name(static_cast<KvFormat>(got.key_format))) + "/" +
                                        format_name(static_cast<KvFormat>(got.value_format)) + " block_size " +
                                        std::to_string(got.block_size) + " group_size " + std::to_string(got.group_size) +
                                        " Hkv " + std::to_string(got.kv_heads) + " Dk " + std::to_string(got.key_dim) +
                                        " Dv " + std::to_string(got.value_dim) + (got.key_quant ? " per-token" : " per-channel")
                                  : std::string("no quantized group")) +
                            ", this call's format is " + format_name(static_cast<KvFormat>(want.key_format)) + "/" +
                            format_name(static_cast<KvFormat>(want.value_format)) + " block_size " +
                            std::to_string(want.block_size) + " (a format mismatch, or a table entry pointing at a page "
                            "this sequence never wrote)");
  }
}

// The same for every quantized group of tokens [0, L) (groups 0 .. L / 32 - 1).
inline void check_page_headers(const ArgCheck& check, const QuantizedKvPages& p, const PageHeader& want,
                               const BlockTable& table, index_t n, index_t L) {
  check_page_headers(check, p, want, table, n, 0, L / kKvGroupTokens);
}

// Positions 0, 1, 2, ... for the blocks' and tails' key positions (grown on the calling thread
// before any task reads it; to a power of two, at least 4096, so a decode loop rarely grows it).
inline const std::int64_t* iota_positions(index_t n) {
  thread_local std::vector<std::int64_t> positions;
  if (static_cast<index_t>(positions.size()) < n) {
    const index_t old = static_cast<index_t>(positions.size());
    index_t size = 4096;
    while (size < n) size *= 2;
    positions.resize(static_cast<std::size_t>(size));
    for (index_t i = old; i < static_cast<index_t>(positions.size()); ++i) positions[static_cast<std::size_t>(i)] = i;
  }
  return positions.data();
}

// make_block (the KvCache quantizer) builds a KvBlock, copied into the page: its vectors come from
// a KvArena over a slice of the calling thread's buffer, one slice per sequence of the call (so
// whichever thread runs a sequence, nothing is taken from the heap after a first call of the
// shape). Power-of-two chunk classes: up to 2x per vector, room for two blocks.
inline index_t group_arena_bytes(const QuantizedPageLayout& layout, index_t Dv) noexcept {
  return 4 * (layout.image_bytes + 8 * kKvGroupTokens + 4 * layout.z.slots + Dv) + 4096;
}
inline std::uint8_t* group_arena_buffer(index_t bytes) {
  thread_local std::vector<std::uint8_t> buffer;
  if (static_cast<index_t>(buffer.size()) < bytes) buffer.resize(static_cast<std::size_t>(bytes));
  return buffer.data();
}

// Copies a block's vector into a page image; an empty vector (a float format has no parameters)
// may have no data pointer, which memcpy must not be given even for 0 bytes.
template <class Vector>
void copy_bytes(std::uint8_t* to, const Vector& from) {
  if (!from.empty()) std::memcpy(to, from.data(), from.size() * sizeof(from[0]));
}

// The pages of group g's parts (layout.parts of them) in `page`, and the group's index in its page.
template <class Pool, class Byte>
index_t group_pages(const Pool& pages, index_t block_size, const QuantizedPageLayout& layout, const BlockTable& table,
                    index_t n, index_t g, Byte** page) {
  const index_t first = g * kKvGroupTokens;
  for (index_t p = 0; p < layout.parts; ++p) page[p] = pages.ptr(table(n, first / block_size + p), 0);
  return layout.parts > 1 ? 0 : (first % block_size) / kKvGroupTokens;
}

// Quantizes group g of sequence n (its 32 rows in the tail) into its page(s): one KvCache block
// per KV head, made by make_block and copied section by section into the group's parts.
inline void flush_group(const QuantizedKvPages& p, const QuantizedPageLayout& layout, const KvCacheConfig& cfg,
                        const PageHeader& header, const BlockTable& table, index_t n, index_t g, index_t tail,
                        const std::int64_t* positions) {
  const index_t Hkv = cfg.kv_heads;
  std::uint8_t* page[QuantizedPageLayout::kSections];
  const index_t s = group_pages(p.pages, p.block_size, layout, table, n, g, page);
  for (index_t h = 0; h < Hkv; ++h) {
    const KvBlock blk = make_block(cfg, cfg.key_format, cfg.value_format, p.tail_k.ptr(tail, 0, h), p.tail_k.stride(1),
                                   p.tail_v.ptr(tail, 0, h), p.tail_v.stride(1), positions, kKvGroupTokens);
    copy_bytes(layout.section(page, h, s, 0), blk.keys);
    copy_bytes(layout.section(page, h, s, 1), blk.key_params);
    copy_bytes(layout.section(page, h, s, 2), blk.values);
    copy_bytes(layout.section(page, h, s, 3), blk.value_params);
  }
  for (index_t part = 0; part < layout.parts; ++part) std::memcpy(page[part], &header, sizeof(PageHeader));
}

// One (sequence, query block) of a quantized paged call and its pieces.
struct QuantizedItem {
  index_t seq, q0, nq, L, rows;  // rows: nq * G padded to kKvRows
  index_t piece0;                // pieces of KV head hk: [piece0 + first[hk], ...) see QuantizedPiece
};

struct QuantizedPiece {
  index_t item, hk, first, last;  // groups [first, last) of the item's sequence
  bool tail;                      // the sequence's fp32 tail goes with the head's last piece
  index_t row0;                   // its row states start here
};

struct QuantizedWorkspace {
  std::vector<QuantizedItem> items;
  std::vector<QuantizedPiece> pieces;
  std::vector<index_t> head_pieces;  // [items * Hkv + 1]: first piece of each (item, KV head)
  std::vector<index_t> first_row;    // [items + 1]: each item's first output row in the combine
  std::vector<SoftmaxRow> states;
  AlignedVector<float> accs;
  static QuantizedWorkspace& local() {
    thread_local QuantizedWorkspace w;
    return w;
  }
};

struct QuantizedDims {
  index_t N, Hq, Hkv, Dk, Dv, max_blocks;
};

inline const ArgCheck& quantized_paged_attention_check() {
  static const ArgCheck check("paged_attention (quantized pages)");
  return check;
}

// Every argument and every used table entry; the pages' headers are checked by the pieces' tasks
// that read them (check_page_headers), before the merge writes any output.
inline QuantizedDims validate_quantized_paged_attention(const QuantizedPagedAttentionInputs& in,
                                                        const PagedAttentionOutputs& out,
                                                        const PagedAttentionOptions& options,
                                                        QuantizedPageLayout* layout) {
  const ArgCheck& check = quantized_paged_attention_check();
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "N,Tq,Hq,Dk");
  const index_t Bq = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2);
  index_t max_blocks = 0;
  const index_t NB = in.pages.pages.size(0);
  check_group_block_size(check, in.pages.block_size);
  const index_t N = check_paged_sequences(check, in.q, in.cu_seqlens_q, in.block_table, in.cache_seqlens, NB,
                                          in.pages.block_size, max_blocks);
  *layout = check_quantized_pool(check, in.pages, N);
  const index_t Hkv = in.pages.tail_k.size(2), Dk = in.pages.tail_k.size(3), Dv = in.pages.tail_v.size(3);
  if (in.q.size(3) != Dk)
    check.fail("q", "has head size " + std::to_string(in.q.size(3)) + ", the pool's keys " + std::to_string(Dk));
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "tail_k", "KV heads (dimension 2)");
  check.optional_shape("alibi_slopes", in.alibi_slopes, std::array<index_t, 1>{Hq}, "Hq");
  check.optional_shape("sink_logits", in.sink_logits, std::array<index_t, 1>{Hq}, "Hq");
  check.shape("o", out.o, std::array<index_t, 4>{Bq, Tq, Hq, Dv}, "N,Tq,Hq,Dv");
  check.optional_shape("lse", out.lse, std::array<index_t, 3>{Bq, Tq, Hq}, "N,Tq,Hq");
  validate_attention_options(check, options.dense());
  validate_relative_bias(check, in.relative_bias, in.head_scales, Hq);
  check_operand_precision(check, in.operand_precision);
  if (in.rope) {  // queries sit at positions up to cache_seqlens[n] - 1
    check_fused_rope_table(check, *in.rope, Dk, FusedRopeUse::queries);
    for (index_t n = 0; n < N; ++n) {
      const index_t count = in.cu_seqlens_q.has_value() ? in.cu_seqlens_q[n + 1] - in.cu_seqlens_q[n] : Tq;
      if (count > 0 && in.cache_seqlens[n] > in.rope->positions())
        check.fail("rope", "covers positions [0, " + std::to_string(in.rope->positions()) + "), but sequence " +
                               std::to_string(n) + "'s last query is at position " +
                               std::to_string(in.cache_seqlens[n] - 1));
    }
  }
  refuse_output_overlap(check, out.o, out.lse, in.q, in.pages.pages, in.pages.tail_k, "(q, pages or tail_k)");
  refuse_output_overlap(check, out.o, out.lse, in.q, in.pages.tail_v, in.pages.tail_v, "(q or tail_v)");
  return {N, Hq, Hkv, Dk, Dv, max_blocks};
}

}  // namespace detail

/// Bytes of one page of a quantized pool (the second dimension of QuantizedKvPages::pages).
inline index_t quantized_page_bytes(const QuantizedPageFormat& format, index_t block_size, index_t kv_heads,
                                    index_t key_dim, index_t value_dim) {
  return detail::QuantizedPageLayout(detail::page_config(format, kv_heads, key_dim, value_dim), block_size).page_bytes;
}

/// Appends new K/V rows (fp32 / fp16 / bf16) to quantized pages: each token goes to its
/// sequence's fp32 tail at position % 32; a token at position 32 g + 31 completes group g, which
/// is quantized into page block_table[n, 32 g / block_size]. block_table and cache_seqlens
/// (tokens cached before the append) are required; every argument, every used table entry and
/// the header of every page already holding a group are checked before anything is written.
/// With in.rope each key is rotated at its position (in.positions, else cache_seqlens[n] + t)
/// in the fp32 tail, before its group is quantized.
/// Sequences are spread over the executor; nothing is allocated after a first call of the shape.
template <class In>
void paged_kv_append(const PagedKvAppendInputs<In>& in, const QuantizedKvPages& pool,
                     const Executor& executor = serial_executor()) {
  using namespace detail;
  static const ArgCheck check("paged_kv_append (quantized pages)");
  check.shape("k", in.k, std::array<index_t, 4>{-1, -1, -1, -1}, "N,T,Hkv,Dk");
  const index_t B = in.k.size(0), T = in.k.size(1), Hkv = in.k.size(2), Dk = in.k.size(3);
  check.shape("v", in.v, std::array<index_t, 4>{B, T, Hkv, -1}, "N,T,Hkv,Dv");
  const index_t Dv = in.v.size(3);
  if (in.slot_mapping.has_value())
    check.fail("slot_mapping", "is not supported by quantized pages: give block_table and cache_seqlens (a group is "
                               "quantized when its sequence's 32nd token arrives)");
  check_group_block_size(check, pool.block_size);
  const index_t N = check_append_targets(check, in, pool.pages.size(0), pool.block_size);
  const QuantizedPageLayout layout = check_quantized_pool(check, pool, N);
  check_append_rope(check, in, N);
  check.shape("tail_k", pool.tail_k, std::array<index_t, 4>{-1, kKvGroupTokens, Hkv, Dk}, "S,32,Hkv,Dk (Hkv, Dk of k)");
  check.shape("tail_v", pool.tail_v, std::array<index_t, 4>{-1, kKvGroupTokens, Hkv, Dv}, "S,32,Hkv,Dv (Hkv, Dv of v)");
  for (index_t n = 0; n < N; ++n)
    for (index_t m = 0; m < n && pool.tail_indices.has_value(); ++m)
      if (pool.tail_indices[m] == pool.tail_indices[n])
        check.fail("tail_indices", "entries " + std::to_string(m) + " and " + std::to_string(n) + " are both " +
                                       std::to_string(pool.tail_indices[n]) + " (two sequences cannot share a tail)");
  for (const char* name : {"pages", "tail_k", "tail_v"}) {
    const bool overlaps = name[0] == 'p'   ? views_overlap(pool.pages, in.k) || views_overlap(pool.pages, in.v)
                          : name[5] == 'k' ? views_overlap(pool.tail_k, in.k) || views_overlap(pool.tail_k, in.v)
                                           : views_overlap(pool.tail_v, in.k) || views_overlap(pool.tail_v, in.v);
    if (overlaps) check.fail(name, "overlaps the new rows k or v");
  }
  const KvCacheConfig cfg = page_config(pool.format, Hkv, Dk, Dv);
  const PageHeader header = page_header(cfg, pool.block_size);
  for (index_t n = 0; n < N; ++n) check_page_headers(check, pool, header, in.block_table, n, in.cache_seqlens[n]);

  index_t longest = 0;
  for (index_t n = 0; n < N; ++n) {
    index_t row0 = 0, count = 0;
    append_sequence_rows(in, n, row0, count);
    longest = std::max(longest, in.cache_seqlens[n] + count);
  }
  const std::int64_t* positions = iota_positions(longest + kKvGroupTokens);
  const index_t slice = group_arena_bytes(layout, Dv);
  std::uint8_t* const arenas = group_arena_buffer(N * slice);
  parallel_for(executor, N, 1, [&](index_t begin, index_t end) {
    for (index_t n = begin; n < end; ++n) {
      KvArena arena(arenas + n * slice, static_cast<std::size_t>(slice));
      KvCacheConfig sequence_cfg = cfg;
      sequence_cfg.arena = &arena;
      index_t row0 = 0, count = 0;
      append_sequence_rows(in, n, row0, count);
      const index_t tail = tail_row(pool, n), start = in.cache_seqlens[n];
      for (index_t t = 0; t < count; ++t) {
        const index_t row = row0 + t, b = row / std::max<index_t>(T, 1), i = row % std::max<index_t>(T, 1);
        const index_t pos = start + t, slot = pos % kKvGroupTokens;
        for (index_t h = 0; h < Hkv; ++h) {
          float* key = pool.tail_k.ptr(tail, slot, h);
          kv_row_to_float(in.k.ptr(b, i, h), in.k.stride(3), Dk, key);
          // Rotated in the fp32 tail, before the group is quantized (PagedKvAppendInputs::rope).
          if (in.rope) rope_row_in_place(*in.rope, append_position(in, row, n, t), key, 1);
          kv_row_to_float(in.v.ptr(b, i, h), in.v.stride(3), Dv, pool.tail_v.ptr(tail, slot, h));
        }
        if (slot + 1 < kKvGroupTokens) continue;
        const index_t first = pos + 1 - kKvGroupTokens;
        flush_group(pool, layout, sequence_cfg, header, in.block_table, n, first / kKvGroupTokens, tail, positions + first);
      }
    }
  });
}

/// Attention over quantized pages (decode and chunks of queries at the end of each sequence):
/// the rules of paged_attention, and the result of kv_cache_attention over a KvCache (residual 0,
/// the pool's formats) holding the same tokens, bit for bit (same kernels, pieces and merge).
/// Every argument, every used table entry and every read page's header are checked before any
/// output is written. No heap allocation after a first call of the same shape.
inline void paged_attention(const QuantizedPagedAttentionInputs& in, const PagedAttentionOutputs& out,
                            const PagedAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  QuantizedPageLayout layout(KvCacheConfig{}, kKvGroupTokens);
  const QuantizedDims d = validate_quantized_paged_attention(in, out, options, &layout);
  if (d.N == 0 || d.Hq == 0) return;
  const KvCacheConfig cfg = page_config(in.pages.format, d.Hkv, d.Dk, d.Dv);
  const AttentionOptions dense_options = options.dense();
  const float scale = attention_scale(dense_options, d.Dk);
  const index_t G = d.Hq / d.Hkv, BS = in.pages.block_size;
  const index_t key_group = cfg.group_size > 0 ? std::min(cfg.group_size, d.Dk) : d.Dk;
  const index_t key_groups = quant::group_count(d.Dk, key_group), value_groups = quant::group_count(d.Dv, cfg.group_size);
  const bool per_token_keys = cfg.key_quant == KeyQuant::per_token;
  const index_t ldacc = round_up(d.Dv, simd::kWidth);

  // Items of up to kPagedQueryBlock queries; each (item, KV head)'s groups in pieces as
  // kv_cache_attention splits a cache row's blocks (at least 8 groups, about 16 pieces per
  // thread), the tail with the last.
  QuantizedWorkspace& ws = QuantizedWorkspace::local();
  ws.items.clear(), ws.pieces.clear(), ws.head_pieces.clear();
  index_t capacity = kKvRows, longest = 0;
  for (index_t n = 0; n < d.N; ++n) {
    const PagedQueries qs = in.cu_seqlens_q.has_value()
                                ? PagedQueries{0, in.cu_seqlens_q[n], in.cu_seqlens_q[n + 1] - in.cu_seqlens_q[n]}
                                : PagedQueries{n, 0, in.q.size(1)};
    const index_t L = in.cache_seqlens[n];
    longest = std::max(longest, L);
    for (index_t q0 = 0; q0 < qs.count; q0 += kPagedQueryBlock) {
      const index_t nq = std::min(kPagedQueryBlock, qs.count - q0), rows = round_up(nq * G, kKvRows);
      ws.items.push_back({n, q0, nq, L, rows, 0});
      capacity = std::max(capacity, rows);
    }
  }
  const index_t item_count = static_cast<index_t>(ws.items.size());
  if (item_count == 0) return;
  const index_t wanted = std::max<index_t>(1, (16 * executor.concurrency() + item_count * d.Hkv - 1) / (item_count * d.Hkv));
  constexpr index_t kMinGroupsPerPiece = 8;  // kv_cache_attention's kMinBlocksPerPiece
  // At most `wanted` pieces per (item, head) whatever the lengths: reserved so that a decode loop
  // whose sequences grow (and split into more pieces) allocates nothing.
  const std::size_t most_pieces = static_cast<std::size_t>(item_count * d.Hkv * wanted);
  ws.pieces.reserve(most_pieces);
  ws.states.reserve(most_pieces * static_cast<std::size_t>(capacity));
  ws.accs.reserve(most_pieces * static_cast<std::size_t>(capacity * ldacc));
  index_t row_total = 0, most_split = 1;
  for (index_t it = 0; it < item_count; ++it) {
    QuantizedItem& item = ws.items[static_cast<std::size_t>(it)];
    const index_t groups = item.L / kKvGroupTokens;
    const index_t split = std::clamp<index_t>(groups / kMinGroupsPerPiece, 1, wanted);
    most_split = std::max(most_split, split);
    item.piece0 = static_cast<index_t>(ws.pieces.size());
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      ws.head_pieces.push_back(static_cast<index_t>(ws.pieces.size()));
      for (index_t p = 0; p < split; ++p) {
        ws.pieces.push_back({it, hk, groups * p / split, groups * (p + 1) / split, p == split - 1, row_total});
        row_total += item.rows;
      }
    }
  }
  ws.head_pieces.push_back(static_cast<index_t>(ws.pieces.size()));
  ws.states.assign(static_cast<std::size_t>(row_total), SoftmaxRow());
  ws.accs.assign(static_cast<std::size_t>(row_total * ldacc), 0.f);
  const std::int64_t* positions = iota_positions(longest + kKvGroupTokens);

  const QuantizedItem* const items = ws.items.data();
  const QuantizedPiece* const pieces = ws.pieces.data();
  SoftmaxRow* const states = ws.states.data();
  float* const accs = ws.accs.data();
  KvScratchSet& scratch = KvScratchSet::local();
  scratch.prepare(executor.concurrency() + 1, capacity, d.Dk, d.Dv, key_groups, value_groups);
  // The headers of the pages the pieces read, in the pieces' tasks rather than on the caller
  // before them (~100 ns a cold page, 0.26-0.53 ms for 4096 pages of 16 while the pool waited):
  // the first KV head's pieces of each sequence's first query block cover all its groups. A bad
  // page throws before the merge below, so o / lse are left as they were.
  const PageHeader header = page_header(cfg, in.pages.block_size);
  const ArgCheck& check = quantized_paged_attention_check();
  parallel_for(executor, static_cast<index_t>(ws.pieces.size()), 1, [&](index_t begin, index_t end) {
    for (index_t pi = begin; pi < end; ++pi) {
      const QuantizedPiece& piece = pieces[pi];
      const QuantizedItem& item = items[piece.item];
      if (piece.hk == 0 && item.q0 == 0)
        check_page_headers(check, in.pages, header, in.block_table, item.seq, piece.first, piece.last);
    }
    index_t slot = 0;
    KvScratch& w = scratch.acquire(slot);
    for (index_t pi = begin; pi < end; ++pi) {
      const QuantizedPiece& piece = pieces[pi];
      const QuantizedItem& item = items[piece.item];
      const PagedQueries qs = in.cu_seqlens_q.has_value() ? PagedQueries{0, in.cu_seqlens_q[item.seq], 0}
                                                          : PagedQueries{item.seq, 0, 0};
      const index_t count = in.cu_seqlens_q.has_value() ? in.cu_seqlens_q[item.seq + 1] - qs.i0 : in.q.size(1);
      w.use_rows(item.rows);
      kv_load_query_rows(w, in.q, qs.b, qs.i0 + item.q0, piece.hk, G, item.nq * G, scale, key_group, key_groups,
                         per_token_keys, [&](index_t i) { return item.L - count + item.q0 + i; }, in.rope,
                         in.head_scales);
      KvTailRows tail;
      if (piece.tail) {
        const index_t row = tail_row(in.pages, item.seq), full = item.L / kKvGroupTokens * kKvGroupTokens;
        tail = {in.pages.tail_k.ptr(row, 0, piece.hk), in.pages.tail_k.stride(1), in.pages.tail_v.ptr(row, 0, piece.hk),
                in.pages.tail_v.stride(1), positions + full, item.L - full};
      }
      const auto group_at = [&](index_t g) {
        const std::uint8_t* page[QuantizedPageLayout::kSections];
        const index_t s = group_pages(in.pages.pages, BS, layout, in.block_table, item.seq, g, page);
        return layout.view(page, piece.hk, s, positions + g * kKvGroupTokens);
      };
      kv_attend_piece(cfg, dense_options, in.alibi_slopes, piece.hk, G, item.nq * G, w, group_at, piece.first,
                      piece.last, tail, states + piece.row0, accs + piece.row0 * ldacc, &in.relative_bias,
                      in.operand_precision);
    }
    scratch.release(slot);
  });

  // Merge each (item, KV head)'s pieces in key order and write o / lse: the items' rows
  // (KV head-major) laid end to end, in parallel on many threads (finish_row_groups).
  ws.first_row.assign(1, 0);
  for (index_t it = 0; it < item_count; ++it) ws.first_row.push_back(ws.first_row.back() + d.Hkv * items[it].nq * G);
  const bool has_sink = in.sink_logits.has_value();
  finish_row_groups(executor, ws.first_row.data(), item_count, most_split, d.Dv, [&](index_t it, index_t row) {
    const QuantizedItem& item = items[it];
    const index_t M = item.nq * G, hk = row / M, r = row % M;
    const index_t b = in.cu_seqlens_q.has_value() ? 0 : item.seq;
    const index_t i = (in.cu_seqlens_q.has_value() ? in.cu_seqlens_q[item.seq] : 0) + item.q0 + r / G, h = hk * G + r % G;
    const index_t p0 = ws.head_pieces[static_cast<std::size_t>(it * d.Hkv + hk)];
    const index_t p1 = ws.head_pieces[static_cast<std::size_t>(it * d.Hkv + hk + 1)];
    const float lse = finish_pieces(states, accs, ldacc, d.Dv, p1 - p0, has_sink ? in.sink_logits(h) : kNoSink,
                                    out.o.ptr(b, i, h), out.o.stride(3),
                                    [&](index_t p) { return pieces[p0 + p].row0 + r; });
    if (out.lse.has_value()) out.lse(b, i, h) = lse;
  });
}

}  // namespace seqmix
