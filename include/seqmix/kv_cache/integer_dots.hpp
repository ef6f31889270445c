// Decode-attention kernels for quantized blocks: integer dot products on the stored codes.
//
// The fp32 route (widen each code, convert, FMA) spends more instructions converting than
// multiplying: at Tk = 16384, Hq 32, Hkv 8, D 128 it stayed at 1.9 ms for int8 and int4 alike.
// One AVX-512 VNNI instruction (vpdpbusd) multiplies 64 unsigned codes by 64 signed bytes and
// sums them in fours into 16 int32 lanes, so the float operand is rounded to bytes first:
//   x ~ a (h + l / 256),  a = max|x| / 127,  n = round(256 x / a),  h = round(n / 256),  l = n - 256 h,
// two signed bytes per element (h, l in [-128, 127]), |x - a (h + l / 256)| <= a / 512, i.e. a
// relative precision of 2^-16 of the largest element, far below the cache's own rounding
// (int8: 2^-9 of the range) and two instructions per 64 codes instead of 16 FMAs.
//   keys   operand = the query row (times the per-channel key scales, per block), one pair
//          of bytes per channel; lanes = tokens (layout.hpp), so no horizontal sums;
//   values operand = p * scale_t per token (per block, row and value group); lanes = channels.
// The int32 sums are exact; each block's sums are turned into floats once.
// One-byte operands (KvOperandPrecision::one_byte, opt-in): x ~ a b, b = round(x / a) in
// [-127, 127], |x - a b| <= a / 2 (2^-8 of the largest element): one dot product per code instead
// of two. The kernels take it as a template flag (OneByte); the default is the two-byte form.
// Without VNNI (or for group sizes the lanes cannot follow), a quantized block is dequantized
// into an fp32 tile and goes through the float kernels: same results up to that rounding.
// The operand preparations and the value tiles are [[gnu::noinline]]: inlined into the attention
// task's loop, the decode ran ~8% slower (registers allocated over one much larger body).
// The key and value kernels' loops over rows, token vectors and units are unrolled by pragma:
// GCC 12 at -O2 (which unrolls only by pragma) left them rolled, with every int32 accumulator in
// memory (a load and a store around each vpdpbusd), and decoded int8 / int4 1.3-1.9x slower than
// at -O3; at -O3 it unrolled them but kept the value tile's accumulators on the stack.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define SEQMIX_KV_INTEGER_DOTS 1
#else
#define SEQMIX_KV_INTEGER_DOTS 0
#endif

#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/cache.hpp"

namespace seqmix::detail {

constexpr bool kKvIntegerDots = SEQMIX_KV_INTEGER_DOTS == 1;

// Operand bytes and scales of one task (rows = query rows padded to 4; query bytes for up to
// kQuerySlots blocks, weights for up to `blocks` blocks at a time).
constexpr index_t kQuerySlots = 2;
struct IntegerScratch {
  index_t rows = 0, quad_bytes = 0, weight_bytes = 0, groups = 0;
  AlignedVector<std::int8_t> q_hi, q_lo;   // [slot][rows][quad_bytes]: the two bytes of each channel
  AlignedVector<float> q_step;             // [slot][rows]: a of the row
  AlignedVector<float> bias;               // [slot][rows]: q . min (per-channel keys)
  AlignedVector<std::int8_t> w_hi, w_lo;   // [blocks][rows][groups][32 tokens]
  AlignedVector<float> w_step;             // [blocks][rows][groups]
  AlignedVector<float> min_terms;          // [rows][groups][16]: partial sums of p * min
  AlignedVector<float> min_sum;            // [rows][groups]
  IntegerScratch() = default;
  IntegerScratch(index_t rows_padded, index_t Dk, index_t value_groups, index_t blocks)
      : rows(rows_padded), quad_bytes((Dk + 63) / 64 * 64), weight_bytes(value_groups * kKvBlockTokens),
        groups(value_groups),
        q_hi(static_cast<std::size_t>(kQuerySlots * rows_padded * quad_bytes), 0),
        q_lo(static_cast<std::size_t>(kQuerySlots * rows_padded * quad_bytes), 0),
        q_step(static_cast<std::size_t>(kQuerySlots * rows_padded), 0.f),
        bias(static_cast<std::size_t>(kQuerySlots * rows_padded), 0.f),
        w_hi(static_cast<std::size_t>(blocks * rows_padded * weight_bytes), 0),
        w_lo(static_cast<std::size_t>(blocks * rows_padded * weight_bytes), 0),
        w_step(static_cast<std::size_t>(blocks * rows_padded * value_groups), 0.f),
        min_terms(static_cast<std::size_t>(rows_padded * value_groups * 16), 0.f),
        min_sum(static_cast<std::size_t>(rows_padded * value_groups), 0.f) {}
  // Index of row r of query slot `slot` in q_step and bias (times quad_bytes: in q_hi, q_lo).
  index_t query_row(index_t slot, index_t r) const noexcept { return slot * rows + r; }
};

// Whether the integer kernels can follow the block's parameter groups: a key group must hold
// whole channel quads, a value group whole 16-channel vectors.
inline bool integer_keys_supported(const KvBlockView& blk, const KvCacheConfig& cfg) noexcept {
  if (!kKvIntegerDots || !is_quantized(blk.key_format)) return false;
  if (cfg.key_quant == KeyQuant::per_channel) return true;
  const index_t group = cfg.group_size > 0 ? cfg.group_size : cfg.key_dim;
  return group >= cfg.key_dim || group % 4 == 0;
}
inline bool integer_values_supported(const KvBlockView& blk, const KvCacheConfig& cfg) noexcept {
  if (!kKvIntegerDots || !is_quantized(blk.value_format)) return false;
  return cfg.group_size == 0 || cfg.group_size >= cfg.value_dim || cfg.group_size % 16 == 0;
}

// Prefetch steps the integer key kernel takes per block (core/prefetch.hpp): one per channel
// quad per 4 query rows, about a dozen vpdpbusd apart.
inline index_t integer_key_steps(index_t Dk, index_t rows) noexcept { return rows / 4 * ((Dk + 3) / 4); }

#if SEQMIX_KV_INTEGER_DOTS

// Two-term bytes of values given in units of a / 256 (v = 256 x / a, in [-32512, 32512]): n = round(v),
// h = round(n / 256), l = n - 256 h, so a (h + l / 256) = a n / 256 (within a / 512 of x) and h, l fit
// signed bytes. One conversion per 16 values, then 16-bit lanes and packs: the former per-vector
// round, subtract, two conversions and two saturating narrows took most of the per-block
// re-quantization of the query (per-channel keys).
inline __m512i rounded_256ths(__m512 v) noexcept { return _mm512_cvtps_epi32(v); }
// 16-bit lanes n (|n| <= 32512) -> h and l.
inline void split_256ths(__m512i n, __m512i& h, __m512i& l) noexcept {
  h = _mm512_srai_epi16(_mm512_add_epi16(n, _mm512_set1_epi16(128)), 8);
  l = _mm512_sub_epi16(n, _mm512_slli_epi16(h, 8));
}
// packs_epi32 then packs_epi16 of four vectors a, b, c, d leave dword 4k + j = 4 bytes of vector
// j's lanes 4k..4k+3 (the packs work within 128-bit lanes); this puts them back in order.
inline __m512i in_lane_order(__m512i packed) noexcept {
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), packed);
}
// 64 values (4 vectors, in order) -> 64 h bytes and 64 l bytes.
inline void store_two_term(const __m512 (&v)[4], std::int8_t* hi, std::int8_t* lo) noexcept {
  __m512i h0, l0, h1, l1;
  split_256ths(_mm512_packs_epi32(rounded_256ths(v[0]), rounded_256ths(v[1])), h0, l0);
  split_256ths(_mm512_packs_epi32(rounded_256ths(v[2]), rounded_256ths(v[3])), h1, l1);
  _mm512_storeu_si512(hi, in_lane_order(_mm512_packs_epi16(h0, h1)));
  _mm512_storeu_si512(lo, in_lane_order(_mm512_packs_epi16(l0, l1)));
}
// One-byte form: 64 values already in units of a (|v| <= 127) -> 64 bytes round(v).
inline void store_one_term(const __m512 (&v)[4], std::int8_t* out) noexcept {
  const __m512i n01 = _mm512_packs_epi32(rounded_256ths(v[0]), rounded_256ths(v[1]));
  const __m512i n23 = _mm512_packs_epi32(rounded_256ths(v[2]), rounded_256ths(v[3]));
  _mm512_storeu_si512(out, in_lane_order(_mm512_packs_epi16(n01, n23)));
}
// One-byte form of 32 values (2 vectors) -> 32 bytes (the low half of the 4-vector order).
inline void store_one_term(__m512 v0, __m512 v1, std::int8_t* out) noexcept {
  const __m512i n = _mm512_packs_epi32(rounded_256ths(v0), rounded_256ths(v1));
  const __m512i bytes = in_lane_order(_mm512_packs_epi16(n, _mm512_setzero_si512()));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_castsi512_si256(bytes));
}
// 32 values (2 vectors) -> 32 h bytes and 32 l bytes (as vectors h0 h1 l0 l1 of the 4-vector form).
inline void store_two_term(__m512 v0, __m512 v1, std::int8_t* hi, std::int8_t* lo) noexcept {
  __m512i h, l;
  split_256ths(_mm512_packs_epi32(rounded_256ths(v0), rounded_256ths(v1)), h, l);
  const __m512i bytes = in_lane_order(_mm512_packs_epi16(h, l));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), _mm512_castsi512_si256(bytes));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), _mm512_extracti64x4_epi64(bytes, 1));
}


// Lane r (r < 4) = the horizontal reduction of v[r] by op (max or add): the four rows'
// reductions share their shuffles (reduced one by one, they were a long serial chain per block).
template <class Op>
inline __m512 reduce_rows4(const __m512 (&v)[4], Op op) noexcept {
  // Per 128-bit lane: rows 0 1 0 1 and 2 3 2 3, then 0 1 2 3, then across the four lanes.
  const __m512 a = op(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
  const __m512 b = op(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
  __m512 x = op(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  x = op(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(1, 0, 3, 2)));
  return op(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)));
}
inline __m512 max_op(__m512 a, __m512 b) noexcept { return _mm512_max_ps(a, b); }
inline __m512 add_op(__m512 a, __m512 b) noexcept { return _mm512_add_ps(a, b); }

// For the largest magnitudes of four rows (lanes 0-3 of `tops`): units / a per lane (0 when the
// top is 0 or NaN: every byte becomes 0), and a = top / 127 into steps[0..4). units = 256 for the
// two-byte form (values in 256ths of a), 1 for the one-byte form. Divisions on four lanes only (a
// 16-lane division costs several times more).
inline __m512 inverse_steps(__m512 tops, float* steps, float units) noexcept {
  const __m128 t = _mm512_castps512_ps128(tops);
  _mm_storeu_ps(steps, _mm_div_ps(t, _mm_set1_ps(127.f)));
  const __mmask8 positive = _mm_cmp_ps_mask(t, _mm_setzero_ps(), _CMP_GT_OQ);
  return _mm512_zextps128_ps512(_mm_maskz_div_ps(positive, _mm_set1_ps(127.f * units), t));
}
// Units of a per operand value: 256ths for the two-byte form, a itself for the one-byte form.
template <bool OneByte>
constexpr float kOperandUnits = OneByte ? 1.f : 256.f;

// acc + the 4-byte dot products of unsigned `codes` and signed `operand`, per int32 lane
// (vpdpbusd). GCC 12 copies every accumulator twice per loop iteration around the intrinsic
// (the value tile ran at half speed); an asm statement with a tied operand keeps it in place.
inline __m512i dot_u8s8(__m512i acc, __m512i codes, __m512i operand) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(codes), "v"(operand));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, codes, operand);
#endif
}

// The first n lanes of a 16-lane vector (n clamped to [0, 16]).
inline __mmask16 first_lanes(index_t n) noexcept {
  return static_cast<__mmask16>((1u << std::clamp<index_t>(n, 0, 16)) - 1u);
}

inline __m512i broadcast_quad(const std::int8_t* bytes) noexcept {
  std::int32_t v;
  std::memcpy(&v, bytes, 4);
  return _mm512_set1_epi32(v);
}

// Plane p of a 64-byte unit of Bits-bit codes, as 64 bytes.
template <int Bits>
inline __m512i code_plane(__m512i raw, int p) noexcept {
  if constexpr (Bits == 8) {
    (void)p;
    return raw;
  } else {
    const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << Bits) - 1));
    return _mm512_and_si512(_mm512_srli_epi16(raw, static_cast<unsigned>(p * Bits)), mask);
  }
}

// Query bytes of every row for K blocks (block k into query slot k). Per-channel keys:
// q' = q * scale_c, bias = q . min; per-token keys: q itself (the same for every block: done once
// per task by the caller, K = 1). Four rows at a time and K blocks side by side (the caller
// pairs a span's blocks), so their reductions (a serial chain of maximum, division and bytes
// each) overlap. This is ~10% of an int8 / int4 decode in cache, mostly its instruction count:
// pairing took back about a third of it for int4, little for int8. q' is recomputed in the
// second pass rather than stored and reloaded. The loops over blocks and rows are unrolled by
// pragma: GCC 12 left them rolled for K = 2, with the maxima and sums on the stack (slower than
// one block per call). OneByte: one byte per channel into q_hi (q_lo is not written).
template <bool PerChannel, int K, bool OneByte>
[[gnu::noinline]] void prepare_query_bytes(const KvBlockView* const (&blks)[K], index_t Dk, const float* Q,
                                           IntegerScratch& x) {
  const index_t n16 = (Dk + 15) / 16 * 16;
  const float* scales[K];
  for (int k = 0; k < K; ++k) scales[k] = blks[k]->key_params;
  const auto scaled_query = [&](const float* q, int k, index_t c, __mmask16 valid) {
    const __m512 qc = _mm512_maskz_loadu_ps(valid, q + c);
    return PerChannel ? _mm512_mul_ps(qc, _mm512_maskz_loadu_ps(valid, scales[k] + c)) : qc;
  };
  for (index_t r0 = 0; r0 < x.rows; r0 += 4) {
    __m512 top[K][4], bias[K][4];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k)
      for (int r = 0; r < 4; ++r) top[k][r] = bias[k][r] = _mm512_setzero_ps();
    // Channels c .. c + 16 (lanes past Dk masked off). Whole vectors get a constant mask: the
    // mask computed per step took ~6 of the loop's ~50 instructions.
    const auto absorb = [&](index_t c, __mmask16 valid) {
#pragma GCC unroll 2
      for (int k = 0; k < K; ++k) {
        const __m512 mn = PerChannel ? _mm512_maskz_loadu_ps(valid, scales[k] + Dk + c) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const float* q = Q + (r0 + r) * Dk;
          top[k][r] = _mm512_max_ps(top[k][r], _mm512_abs_ps(scaled_query(q, k, c, valid)));
          if (PerChannel) bias[k][r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, q + c), mn, bias[k][r]);
        }
      }
    };
    index_t c1 = 0;
    for (; c1 + 16 <= Dk; c1 += 16) absorb(c1, 0xFFFF);
    if (c1 < n16) absorb(c1, first_lanes(Dk - c1));
    // Lanes 0-3: the four rows' 256 / a, their a into q_step, their q . min into bias.
    __m512 inv[K][4];
#pragma GCC unroll 2
    for (int k = 0; k < K; ++k) {
      float steps[4];
      const __m512 inverses = inverse_steps(reduce_rows4(top[k], max_op), steps, kOperandUnits<OneByte>);
      std::copy(steps, steps + 4, x.q_step.data() + x.query_row(k, r0));
      _mm512_mask_storeu_ps(x.bias.data() + x.query_row(k, r0), 0xF,
                            PerChannel ? reduce_rows4(bias[k], add_op) : _mm512_setzero_ps());
      for (int r = 0; r < 4; ++r) inv[k][r] = _mm512_permutexvar_ps(_mm512_set1_epi32(r), inverses);
    }
    // Rows hold whole 64-byte units; lanes past Dk get 0.
    const auto emit = [&](index_t c, const __mmask16 (&valid)[4]) {
#pragma GCC unroll 2
      for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          __m512 v[4];
          for (int i = 0; i < 4; ++i)
            v[i] = _mm512_mul_ps(scaled_query(Q + (r0 + r) * Dk, k, c + 16 * i, valid[i]), inv[k][r]);
          const index_t at = x.query_row(k, r0 + r) * x.quad_bytes + c;
          if constexpr (OneByte)
            store_one_term(v, x.q_hi.data() + at);
          else
            store_two_term(v, x.q_hi.data() + at, x.q_lo.data() + at);
        }
    };
    index_t c2 = 0;
    for (; c2 + 64 <= Dk; c2 += 64) emit(c2, {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF});
    if (c2 < x.quad_bytes) {
      __mmask16 valid[4];
      for (int i = 0; i < 4; ++i) valid[i] = first_lanes(Dk - c2 - 16 * i);
      emit(c2, valid);
    }
  }
}

// Scores of one block, 4 rows at a time: s[r][t] = scale * q_r . k_t for the block's slots.
// NT = slots / 16 token vectors; a key group spans `group` channels (Dk for per-channel keys).
// The query's bytes are those of query slot `slot` (prepare_query_bytes, the same OneByte).
template <int Bits, int NT, bool OneByte>
void integer_key_scores(const KvBlockView& blk, const KvCacheConfig& cfg, const IntegerScratch& x, index_t slot,
                        const float* qsum, index_t key_groups, float* s, index_t lds, LineStream& ahead) noexcept {
  constexpr int L = 8 / Bits;
  constexpr int kUnits = NT / L;  // 64-byte units per channel quad
  static_assert(NT % L == 0, "a block's slots are whole units");
  const index_t Dk = cfg.key_dim, quads = (Dk + 3) / 4;
  const bool per_token = cfg.key_quant == KeyQuant::per_token;
  const index_t group = per_token && cfg.group_size > 0 ? std::min(cfg.group_size, Dk) : Dk;
  const index_t quads_per_group = (group + 3) / 4;
  const __m512 inv256 = _mm512_set1_ps(1.f / 256.f);
  const std::uint8_t* const keys = blk.keys;
  for (index_t r0 = 0; r0 < x.rows; r0 += 4) {
    // Row pointers in locals: GCC reloaded them from x per channel quad (the prefetch stream's
    // stores may alias them, as far as it knows).
    const std::int8_t* q_hi[4];
    const std::int8_t* q_lo[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      q_hi[r] = x.q_hi.data() + x.query_row(slot, r0 + r) * x.quad_bytes;
      q_lo[r] = x.q_lo.data() + x.query_row(slot, r0 + r) * x.quad_bytes;
    }
    __m512 score[4][NT];
#pragma GCC unroll 8
    for (auto& row : score)
#pragma GCC unroll 8
      for (auto& v : row) v = _mm512_setzero_ps();
    for (index_t g = 0, q0 = 0; q0 < quads; ++g, q0 += quads_per_group) {
      __m512i hi[4][NT], lo[4][NT];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NT; ++v) hi[r][v] = lo[r][v] = _mm512_setzero_si512();
      const index_t q1 = std::min(quads, q0 + quads_per_group);
      for (index_t cq = q0; cq < q1; ++cq) {
        ahead.step();
        const std::uint8_t* unit = keys + cq * kUnits * kCodeUnitBytes;
        __m512i codes[NT];
#pragma GCC unroll 8
        for (int u = 0; u < kUnits; ++u) {
          const __m512i raw = _mm512_load_si512(unit + u * kCodeUnitBytes);
#pragma GCC unroll 8
          for (int p = 0; p < L; ++p) codes[u * L + p] = code_plane<Bits>(raw, p);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const __m512i bh = broadcast_quad(q_hi[r] + 4 * cq);
          const __m512i bl = OneByte ? _mm512_setzero_si512() : broadcast_quad(q_lo[r] + 4 * cq);
#pragma GCC unroll 8
          for (int v = 0; v < NT; ++v) {
            hi[r][v] = dot_u8s8(hi[r][v], codes[v], bh);
            if constexpr (!OneByte) lo[r][v] = dot_u8s8(lo[r][v], codes[v], bl);
          }
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const __m512 step = _mm512_set1_ps(x.q_step[x.query_row(slot, r0 + r)]);
#pragma GCC unroll 8
        for (int v = 0; v < NT; ++v) {
          const __m512 units = OneByte ? _mm512_cvtepi32_ps(hi[r][v])
                                       : _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[r][v]), inv256, _mm512_cvtepi32_ps(hi[r][v]));
          const __m512 dot = _mm512_mul_ps(units, step);
          if (!per_token) {
            score[r][v] = _mm512_add_ps(dot, _mm512_set1_ps(x.bias[x.query_row(slot, r0 + r)]));
          } else {  // + scale_{t,g} * dot + min_{t,g} * sum(q_g)
            const float* scales = blk.key_params + 2 * g * blk.slots + 16 * v;
            const float* mins = scales + blk.slots;
            score[r][v] = _mm512_fmadd_ps(dot, _mm512_load_ps(scales), score[r][v]);
            score[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(qsum[(r0 + r) * key_groups + g]), _mm512_load_ps(mins), score[r][v]);
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NT; ++v) _mm512_storeu_ps(s + (r0 + r) * lds + 16 * v, score[r][v]);
  }
}

// Value weights of a run of blocks (consecutive in a span, same value format; p[j * 32 + t] is
// row r's probability of block j's entry t at p + r * lds): w[j][r][g][t] = p * scale_{t,g} as
// byte pairs with their step (OneByte: single bytes in w_hi), and min_sum[r][g] = sum over the
// run of p * min_{t,g}.
template <bool OneByte>
[[gnu::noinline]] void prepare_value_weights(const KvBlockView* blocks, index_t n, const float* p, index_t lds,
                                                    IntegerScratch& x) {
  static_assert(kKvBlockTokens == 32, "a block's weights are two vectors");
  const index_t groups = x.groups, rows = x.rows;
  std::fill(x.min_terms.begin(), x.min_terms.end(), 0.f);
  for (index_t j = 0; j < n; ++j) {
    const KvBlockView& blk = blocks[j];
    // Parameter rows hold `count` tokens (masked lanes are not read); later probabilities are 0.
    const index_t count = blk.count;
    const __mmask16 m0 = first_lanes(count), m1 = first_lanes(count - 16);
    for (index_t g = 0; g < groups; ++g) {
      const float* scale = blk.value_params + 2 * g * count;
      const float* mins = scale + count;
      const __m512 s0 = _mm512_maskz_loadu_ps(m0, scale), s1 = _mm512_maskz_loadu_ps(m1, scale + 16);
      const __m512 n0 = _mm512_maskz_loadu_ps(m0, mins), n1 = _mm512_maskz_loadu_ps(m1, mins + 16);
      for (index_t r0 = 0; r0 < rows; r0 += 4) {  // four rows, their maxima reduced together
        __m512 w[4][2], top[4];
        for (int r = 0; r < 4; ++r) {
          const float* pr = p + (r0 + r) * lds + j * kKvBlockTokens;
          const __m512 p0 = _mm512_loadu_ps(pr), p1 = _mm512_loadu_ps(pr + 16);
          w[r][0] = _mm512_mul_ps(p0, s0), w[r][1] = _mm512_mul_ps(p1, s1);
          top[r] = _mm512_max_ps(w[r][0], w[r][1]);  // weights are >= 0
          float* mt = x.min_terms.data() + ((r0 + r) * groups + g) * 16;
          _mm512_store_ps(mt, _mm512_fmadd_ps(p1, n1, _mm512_fmadd_ps(p0, n0, _mm512_load_ps(mt))));
        }
        float steps[4];
        const __m512 inverses = inverse_steps(reduce_rows4(top, max_op), steps, kOperandUnits<OneByte>);
        for (int r = 0; r < 4; ++r) {
          const __m512 inv = _mm512_permutexvar_ps(_mm512_set1_epi32(r), inverses);
          const index_t at = (j * rows + r0 + r) * x.weight_bytes + g * kKvBlockTokens;
          if constexpr (OneByte)
            store_one_term(_mm512_mul_ps(w[r][0], inv), _mm512_mul_ps(w[r][1], inv), x.w_hi.data() + at);
          else
            store_two_term(_mm512_mul_ps(w[r][0], inv), _mm512_mul_ps(w[r][1], inv), x.w_hi.data() + at, x.w_lo.data() + at);
          x.w_step[(j * rows + r0 + r) * groups + g] = steps[r] / kOperandUnits<OneByte>;
        }
      }
    }
  }
  for (index_t i = 0; i < rows * groups; ++i) x.min_sum[i] = _mm512_reduce_add_ps(_mm512_load_ps(x.min_terms.data() + i * 16));
}

// acc[r][c] += sum over the run's blocks and tokens of w[r][t] code[t][c] + min_sum[r][group of
// c], for R rows and the channels of kUnits units from u0. Each block's exact int32 sums become
// floats once (times the block's step) into accumulators that stay in registers for the run.
// OneGroup: the tile's channels share one value group, so each row's weight bytes are broadcast
// once per token quad. OneByte: the weights are single bytes (prepare_value_weights<true>).
template <int Bits, int kUnits, int R, bool OneGroup, bool OneByte>
void integer_value_tile(const KvBlockView* blocks, index_t n, index_t Dv, index_t group, index_t u0, index_t r0,
                        const IntegerScratch& x, float* acc, index_t ldacc) noexcept {
  constexpr int L = 8 / Bits, NV = kUnits * L;
  const index_t c0 = 16 * u0 * L;
  index_t vg[NV];  // value group of each vector
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) vg[v] = OneGroup ? 0 : std::min(c0 + 16 * v, Dv - 1) / group;
  __m512 out[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const index_t c = c0 + 16 * v;  // c >= Dv: padding lanes of the last unit, never stored
      out[r][v] = c < Dv ? _mm512_add_ps(_mm512_loadu_ps(acc + (r0 + r) * ldacc + c),
                                         _mm512_set1_ps(x.min_sum[(r0 + r) * x.groups + vg[v]]))
                         : _mm512_setzero_ps();
    }
  for (index_t j = 0; j < n; ++j) {
    const KvBlockView& blk = blocks[j];
    const index_t quads = (blk.count + 3) / 4;
    const std::int8_t* wh0 = x.w_hi.data() + (j * x.rows + r0) * x.weight_bytes;
    const std::int8_t* wl0 = x.w_lo.data() + (j * x.rows + r0) * x.weight_bytes;
    __m512i hi[R][NV], lo[R][NV];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) hi[r][v] = lo[r][v] = _mm512_setzero_si512();
    const std::uint8_t* src = blk.values + u0 * kCodeUnitBytes;
    for (index_t tq = 0; tq < quads; ++tq, src += blk.value_row) {
      __m512i codes[NV];
#pragma GCC unroll 8
      for (int u = 0; u < kUnits; ++u) {
        const __m512i raw = _mm512_load_si512(src + u * kCodeUnitBytes);
#pragma GCC unroll 8
        for (int p = 0; p < L; ++p) codes[u * L + p] = code_plane<Bits>(raw, p);
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const std::int8_t* wh = wh0 + r * x.weight_bytes + 4 * tq;
        const std::int8_t* wl = wl0 + r * x.weight_bytes + 4 * tq;
        if constexpr (OneGroup) {
          const __m512i bh = broadcast_quad(wh), bl = OneByte ? _mm512_setzero_si512() : broadcast_quad(wl);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) {
            hi[r][v] = dot_u8s8(hi[r][v], codes[v], bh);
            if constexpr (!OneByte) lo[r][v] = dot_u8s8(lo[r][v], codes[v], bl);
          }
        } else {
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) {
            hi[r][v] = dot_u8s8(hi[r][v], codes[v], broadcast_quad(wh + vg[v] * kKvBlockTokens));
            if constexpr (!OneByte) lo[r][v] = dot_u8s8(lo[r][v], codes[v], broadcast_quad(wl + vg[v] * kKvBlockTokens));
          }
        }
      }
    }
    const float* steps = x.w_step.data() + (j * x.rows + r0) * x.groups;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        // 256 h + l fits: |h sums| <= 127 * 255 * 32 tokens < 2^23.
        const __m512i total = OneByte ? hi[r][v] : _mm512_add_epi32(_mm512_slli_epi32(hi[r][v], 8), lo[r][v]);
        out[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(steps[r * x.groups + vg[v]]), out[r][v]);
      }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      if (c0 + 16 * v < Dv) _mm512_storeu_ps(acc + (r0 + r) * ldacc + c0 + 16 * v, out[r][v]);
}

template <int Bits, bool OneGroup, bool OneByte>
[[gnu::noinline]] void integer_value_tiles(const KvBlockView* blocks, index_t n, index_t Dv, index_t group,
                                           const IntegerScratch& x, float* acc, index_t ldacc) noexcept {
  constexpr int L = 8 / Bits;
  // 16 int32 and 8 float accumulators per tile: 4 rows x 2 units (int8), 4 rows x 1 unit (int4),
  // 2 rows x 1 unit (int2).
  constexpr int kRows = Bits == 2 ? 2 : 4;
  constexpr int kTileUnits = Bits == 8 ? 2 : 1;
  const index_t units = (Dv + 16 * L - 1) / (16 * L);
  for (index_t r0 = 0; r0 < x.rows; r0 += kRows) {
    index_t u = 0;
    for (; u + kTileUnits <= units; u += kTileUnits)
      integer_value_tile<Bits, kTileUnits, kRows, OneGroup, OneByte>(blocks, n, Dv, group, u, r0, x, acc, ldacc);
    for (; u < units; ++u) integer_value_tile<Bits, 1, kRows, OneGroup, OneByte>(blocks, n, Dv, group, u, r0, x, acc, ldacc);
  }
}

// Probability-weighted values of a run of blocks with the same quantized value format.
template <int Bits, bool OneByte>
void integer_run_values(const KvBlockView* blocks, index_t n, const KvCacheConfig& cfg, const IntegerScratch& x,
                        float* acc, index_t ldacc) noexcept {
  const index_t Dv = cfg.value_dim, group = cfg.group_size > 0 ? std::min(cfg.group_size, Dv) : Dv;
  if (group >= Dv)
    integer_value_tiles<Bits, true, OneByte>(blocks, n, Dv, group, x, acc, ldacc);
  else
    integer_value_tiles<Bits, false, OneByte>(blocks, n, Dv, group, x, acc, ldacc);
}

#endif

}  // namespace seqmix::detail
