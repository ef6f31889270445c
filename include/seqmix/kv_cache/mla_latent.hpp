// MLA's latent cache through the KvCache quantizers (docs/operators.md section 10): each token's
// latent c [d_c] is stored as int8 or int4 codes with the asymmetric min-max parameters of
// kv_cache/quantize.hpp per group of group_size channels of that token (per-token groups, as
// KvCache's per_token keys and its values; 0 = the whole row one group):
//   codes  [X, Y, row_bytes(format, d_c)]   int8: one byte per channel; int4: channel 2i in the
//                                           low nibble of byte i, 2i + 1 in the high nibble
//   params [X, Y, groups, 2]                (scale, min) of each group
//   k_rope [X, Y, d_r]                      the shared rotary key, fp32 / f16 / bf16 (not quantized:
//                                           it carries the position, and is 1/8 of the latent)
// X, Y are sequences x positions (dense) or pages x block_size (paged, with a block table, token
// p of sequence n at row p % Y of page block_table[n, p / Y]).
//
//   mla_latent_append  quantizes the new tokens' fp32 latents into their rows (k_rope rounded to
//                      its type, rotated first with a rope table), after cache_seqlens[n] tokens.
//   mla_latent_decode  mla_decode's absorbed form over the quantized cache: each block of 64
//                      rows is decoded to fp32 in the task's block buffer as it is read (never a
//                      dequantized copy of the cache). Its results equal reference::mla over the
//                      decoded latents (mla_latent_dequantize); against the fp32 latents they
//                      differ by the quantization error, |c - c'| <= scale / 2 per element.
// Bytes per token: row_bytes(format, d_c) + 8 * groups + d_r * sizeof(R), e.g. d_c = 512,
// d_r = 64, one group: int8 648, int4 392 against fp16's 1152.
// Everything is checked before the first row or output is written; decode allocates nothing after
// a first call of the same shape.
#pragma once

#include <cstdint>
#include <string>

#include "seqmix/attention/mla/paged.hpp"
#include "seqmix/kv_cache/quantize.hpp"

namespace seqmix {

/// The storage of a quantized latent cache (the header comment gives the layout). Appends write
/// it; decodes only read it.
template <class R = f16>
struct MlaQuantizedLatents {
  KvFormat format = KvFormat::int8;  ///< int8 or int4
  index_t group_size = 0;            ///< channels per (scale, min) group of a token; 0 = the whole row
  TensorView<std::uint8_t, 3> codes; ///< [X, Y, row_bytes(format, d_c)]
  TensorView<float, 4> params;       ///< [X, Y, groups, 2]: (scale, min) per group
  TensorView<R, 3> k_rope;           ///< [X, Y, d_r]
  index_t latent_dim = 0;            ///< d_c
};

/// One query per sequence against a quantized latent cache, dense (no block table: sequence n
/// is row n, Y positions) or paged (block_table [N, max_blocks]).
template <class R = f16>
struct MlaLatentDecodeInputs {
  ConstView<float, 3> q_nope;      ///< [N, H, d_nope]
  ConstView<float, 3> q_rope;      ///< [N, H, d_r], rotated
  MlaQuantizedLatents<R> cache;    ///< read only
  BlockTable block_table = {};     ///< [N, max_blocks], optional: paged rows
  IndexList cache_seqlens = {};    ///< [N]: cached tokens (required when paged; dense default Y)
  MlaWeights weights;              ///< per-head up-projections
};

/// Bytes one token takes in a quantized latent cache (codes, parameters and rotary key).
inline index_t mla_latent_bytes_per_token(KvFormat format, index_t d_c, index_t group_size, index_t d_r,
                                          index_t rope_bytes = 2) noexcept {
  return row_bytes(format, d_c) + 2 * static_cast<index_t>(sizeof(float)) * quant::group_count(d_c, group_size) +
         d_r * rope_bytes;
}

namespace detail {

// The storage's shapes: format, group size, codes / params / k_rope agreeing on X, Y, d_c, d_r.
template <class R>
void check_mla_quantized_latents(const ArgCheck& check, const MlaQuantizedLatents<R>& s) {
  if (s.format != KvFormat::int8 && s.format != KvFormat::int4)
    check.fail("cache.format", std::string("must be int8 or int4 for a quantized latent cache, got ") +
                                   format_name(s.format) + " (float latents: mla_decode / mla_paged_decode)");
  if (s.latent_dim < 1) check.fail("cache.latent_dim", "must be >= 1 (d_c), got " + std::to_string(s.latent_dim));
  if (s.group_size < 0) check.fail("cache.group_size", "must be >= 0, got " + std::to_string(s.group_size));
  const index_t groups = quant::group_count(s.latent_dim, s.group_size);
  check.shape("cache.codes", s.codes, std::array<index_t, 3>{-1, -1, row_bytes(s.format, s.latent_dim)},
              "X,Y,row_bytes(format,d_c)");
  const index_t X = s.codes.size(0), Y = s.codes.size(1);
  if (Y < 1) check.fail("cache.codes", "needs Y (dimension 1, positions or block size) >= 1");
  check.shape("cache.params", s.params, std::array<index_t, 4>{X, Y, groups, 2}, "X,Y,groups,2");
  check.shape("cache.k_rope", s.k_rope, std::array<index_t, 3>{X, Y, -1}, "X,Y,d_r");
  if (s.codes.stride(2) != 1) check.fail("cache.codes", "must be contiguous in its last dimension");
  if (s.params.stride(3) != 1 || (groups > 1 && s.params.stride(2) != 2))
    check.fail("cache.params", "must be contiguous in its last two dimensions (groups, 2)");
  if (views_overlap(s.codes, s.params) || views_overlap(s.codes, s.k_rope) || views_overlap(s.params, s.k_rope))
    check.fail("cache", "codes, params and k_rope must not overlap");
}

// Quantizes one fp32 latent row x [d_c] into codes / params (`tmp`: d_c bytes of scratch).
inline void quantize_latent_row(const float* x, index_t dc, index_t group, KvFormat format, std::uint8_t* codes,
                                float* params, std::uint8_t* tmp) {
  const int bits = format_bits(format);
  const index_t groups = quant::group_count(dc, group), width = group > 0 ? group : dc;
  for (index_t g = 0; g < groups; ++g) {
    const index_t c0 = g * width, n = std::min(width, dc - c0);
    const quant::Params p = quant::min_max_params(x + c0, n, 1, bits);
    params[2 * g] = p.scale, params[2 * g + 1] = p.min;
    quant::encode_codes(x + c0, n, p, bits, tmp + c0);
  }
  if (bits == 8) {
    std::memcpy(codes, tmp, static_cast<std::size_t>(dc));
  } else {
    for (index_t i = 0; 2 * i < dc; ++i)
      codes[i] = static_cast<std::uint8_t>(tmp[2 * i] | (2 * i + 1 < dc ? tmp[2 * i + 1] << 4 : 0));
  }
}

// Decodes one quantized latent row into dst [d_c].
inline void dequantize_latent_row(const std::uint8_t* codes, const float* params, index_t dc,
                                  index_t group, KvFormat format, float* dst) noexcept {
  const int bits = format_bits(format);
  const index_t groups = quant::group_count(dc, group), width = group > 0 ? group : dc;
  for (index_t g = 0; g < groups; ++g) {
    const index_t c0 = g * width, c1 = std::min(dc, c0 + width);
    const quant::Params p{params[2 * g], params[2 * g + 1]};
    // Plain min + scale * code where it cannot overflow (every ordinary group), else quant::decode.
    const bool plain = std::isfinite(p.min) && std::isfinite(p.scale) && !quant::wide_group(p, bits);
    if (bits == 8) {
      if (plain)
        for (index_t c = c0; c < c1; ++c) dst[c] = p.min + p.scale * static_cast<float>(codes[c]);
      else
        for (index_t c = c0; c < c1; ++c) dst[c] = quant::decode(codes[c], p);
    } else {
      for (index_t c = c0; c < c1; ++c) {
        const int code = (codes[c / 2] >> (4 * (c & 1))) & 0xF;
        dst[c] = plain ? p.min + p.scale * static_cast<float>(code) : quant::decode(code, p);
      }
    }
  }
}

}  // namespace detail

/// Quantizes the new tokens' latents into the cache (k_rope rounded to R, rotated first with
/// in.rope), each after its sequence's cache_seqlens[n] tokens, through in.block_table when given.
/// Everything is checked before the first write; nothing is allocated after a first call.
template <class R>
void mla_latent_append(const MlaLatentAppendInputs& in, const MlaQuantizedLatents<R>& cache,
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("mla_latent_append");
  detail::check_mla_quantized_latents(check, cache);
  const index_t X = cache.codes.size(0), Y = cache.codes.size(1), dc = cache.latent_dim, dr = cache.k_rope.size(2);
  const index_t N = detail::check_mla_latent_append(check, in, X, Y, dc, dr, false);
  for (const auto* input : {&in.c_kv, &in.k_rope})
    if (views_overlap(cache.codes, *input) || views_overlap(cache.params, *input) || views_overlap(cache.k_rope, *input))
      check.fail("cache", "overlaps the new rows c_kv or k_rope");
  const index_t T = in.c_kv.size(1);
  parallel_for(executor, N, 1, [&](index_t begin, index_t end) {
    thread_local AlignedVector<float> tmp;
    thread_local std::vector<std::uint8_t> codes;
    detail::DecodeScratch::grow(tmp, std::max(dc, dr));
    if (static_cast<index_t>(codes.size()) < dc) codes.resize(static_cast<std::size_t>(dc));
    for (index_t n = begin; n < end; ++n)
      for (index_t t = 0; t < T; ++t) {
        const index_t p = in.cache_seqlens[n] + t;
        const detail::MlaSlot s = detail::mla_slot(in.block_table, Y, n, p);
        detail::kv_row_to_float(in.c_kv.ptr(n, t), in.c_kv.stride(2), dc, tmp.data());
        detail::quantize_latent_row(tmp.data(), dc, cache.group_size, cache.format, cache.codes.ptr(s.x, s.y),
                                    cache.params.ptr(s.x, s.y), codes.data());
        detail::store_kv_row(in.k_rope.ptr(n, t), in.k_rope.stride(2), dr, cache.k_rope.ptr(s.x, s.y),
                             cache.k_rope.stride(2), tmp.data(), in.rope, p);
      }
  });
}

/// The decoded latents of rows [X, Y] of a quantized cache into out [X, Y, d_c] (for references
/// and inspection; the decode never makes this copy).
template <class R>
void mla_latent_dequantize(const MlaQuantizedLatents<R>& cache, const TensorView<float, 3>& out) {
  static const ArgCheck check("mla_latent_dequantize");
  detail::check_mla_quantized_latents(check, cache);
  const index_t X = cache.codes.size(0), Y = cache.codes.size(1);
  check.shape("out", out, std::array<index_t, 3>{X, Y, cache.latent_dim}, "X,Y,d_c");
  if (views_overlap(out, cache.codes) || views_overlap(out, cache.params)) check.fail("out", "overlaps the cache");
  std::vector<float> row(static_cast<std::size_t>(cache.latent_dim));
  for (index_t x = 0; x < X; ++x)
    for (index_t y = 0; y < Y; ++y) {
      detail::dequantize_latent_row(cache.codes.ptr(x, y), cache.params.ptr(x, y),
                                    cache.latent_dim, cache.group_size, cache.format, row.data());
      for (index_t c = 0; c < cache.latent_dim; ++c) out(x, y, c) = row[static_cast<std::size_t>(c)];
    }
}

/// The absorbed decode over a quantized latent cache (dense or paged): mla_decode's computation
/// with each block of rows decoded as it is read. Checked before any output is written; no
/// allocation after a first call of the same shape.
template <class R>
void mla_latent_decode(const MlaLatentDecodeInputs<R>& in, const MlaDecodeOutputs& out, const MlaOptions& options = {},
                       const Executor& executor = serial_executor()) {
  static const ArgCheck check("mla_latent_decode");
  const MlaQuantizedLatents<R>& s = in.cache;
  detail::check_mla_quantized_latents(check, s);
  const index_t X = s.codes.size(0), Y = s.codes.size(1);
  detail::MlaDims d = detail::check_mla_decode_queries(check, in.q_nope, in.q_rope, in.weights, s.latent_dim,
                                                       s.k_rope.size(2), out, options);
  if (in.block_table.has_value() || d.B == 0) {
    detail::check_mla_paged_lengths(check, in.block_table, in.cache_seqlens, d.B, X, Y);
  } else {
    if (d.B > X) check.fail("q_nope", "has " + std::to_string(d.B) + " sequences, more than the cache's " + std::to_string(X) + " rows");
    const IndexList& lens = in.cache_seqlens;
    if (lens.has_value()) {
      if (lens.dangling()) check.fail("cache_seqlens", "has a null data pointer");
      if (lens.size() != d.B)
        check.fail("cache_seqlens", "must hold N = " + std::to_string(d.B) + " entries, got " + std::to_string(lens.size()));
      for (index_t n = 0; n < d.B; ++n)
        if (lens[n] < 0 || lens[n] > Y)
          check.fail("cache_seqlens", "entry " + std::to_string(n) + " is " + std::to_string(lens[n]) +
                                          ", outside [0, Y = " + std::to_string(Y) + "]");
    }
  }
  for (const char* name : {"o", "lse"}) {
    const bool is_o = name[0] == 'o';
    const bool overlaps = is_o ? views_overlap(out.o, s.codes) || views_overlap(out.o, s.params) || views_overlap(out.o, s.k_rope)
                               : views_overlap(out.lse, s.codes) || views_overlap(out.lse, s.params) ||
                                     views_overlap(out.lse, s.k_rope);
    if (overlaps) check.fail(name, "overlaps the cache");
  }
  const auto length = [&](index_t n) { return in.cache_seqlens.has_value() ? in.cache_seqlens[n] : Y; };
  d.Tk = 0;
  for (index_t n = 0; n < d.B; ++n) d.Tk = std::max(d.Tk, length(n));
  const index_t dc = d.dc, dr = d.dr;
  const auto rows = [&](index_t n, index_t j0, index_t count, float* c, float* r) {
    for (index_t i = 0; i < count; ++i) {
      const detail::MlaSlot slot = detail::mla_slot(in.block_table, Y, n, j0 + i);
      detail::dequantize_latent_row(s.codes.ptr(slot.x, slot.y), s.params.ptr(slot.x, slot.y), dc,
                                    s.group_size, s.format, c + i * dc);
      detail::kv_row_to_float(s.k_rope.ptr(slot.x, slot.y), s.k_rope.stride(2), dr, r + i * dr);
    }
  };
  detail::mla_decode_run(d, in.q_nope, in.q_rope, in.weights, length, rows, out, executor);
}

}  // namespace seqmix
