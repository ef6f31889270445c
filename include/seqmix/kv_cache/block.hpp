// One storage block of a KvCache head: up to 32 entries in one key format and one value format,
// with their own quantization parameters (layout and formats: cache.hpp, layout.hpp). Element
// access, and building a block from fp32 rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/arena.hpp"
#include "seqmix/kv_cache/config.hpp"
#include "seqmix/kv_cache/layout.hpp"
#include "seqmix/kv_cache/quantize.hpp"

namespace seqmix::detail {

// Entries per block, and the key-slot granularity: whole 16-token vectors for float keys, whole
// code units for quantized ones (layout.hpp), so the kernels need no tails.
constexpr index_t kKvBlockTokens = 32;
inline index_t key_slot_granule(KvFormat f) noexcept { return is_quantized(f) ? lanes_per_unit(format_bits(f)) : 16; }

struct KvBlock {
  KvFormat key_format = KvFormat::f32, value_format = KvFormat::f32;
  index_t count = 0;  // entries held
  index_t slots = 0;  // key slots per channel row, count rounded up to the granule
  // Float formats: bytes of one key channel row / one value row. Quantized: key_row is 0 and
  // value_row is the bytes of one token quad (layout.hpp).
  index_t key_row = 0, value_row = 0;
  // Coded storage (KvCacheConfig::coded; the formats above are then f32 and unused): keys,
  // values and their params hold the codes laid out as described at coded_block_sizes.
  bool coded = false;
  KvBlock() = default;
  explicit KvBlock(KvArena* a)
      : keys(KvAllocator<std::uint8_t>(a)), key_params(KvAllocator<float>(a)), values(KvAllocator<std::uint8_t>(a)),
        value_params(KvAllocator<float>(a)), positions(KvAllocator<std::int64_t>(a)) {}

  KvVector<std::uint8_t> keys;    // float: [Dk][key_row], channel-major; quantized: layout.hpp
  // per_channel: [Dk] scales, then [Dk] mins (planar, for vector loads). per_token: [groups][2][slots]: the scales, then the mins, of
  // each token, as vectors over tokens (the score kernel loads them 16 at a time).
  KvVector<float> key_params;
  KvVector<std::uint8_t> values;        // float: [count][value_row], token-major; quantized: layout.hpp
  // Quantized values: [groups][2][count], each group's token scales, then its token mins, as
  // vectors over tokens (the value kernels load them 16 at a time, masked to count: blocks are
  // made for their final count, and unpadded rows keep ZipCache's small blocks small).
  KvVector<float> value_params;
  KvVector<std::int64_t> positions;       // [count]
  std::int64_t min_position = 0, max_position = 0;

  std::size_t bytes() const noexcept {
    return keys.size() + key_params.size() * sizeof(float) + values.size() +
           value_params.size() * sizeof(float) + positions.size() * sizeof(std::int64_t);
  }
};

// What the decode kernels read of a block, as plain pointers: a KvBlock's vectors (view_of), or
// a quantized page of caller memory (kv_cache/paged.hpp) laid out the same way. Key and
// value codes and per-token key parameters are 64-byte aligned (the integer kernels' aligned loads).
struct KvBlockView {
  KvFormat key_format = KvFormat::f32, value_format = KvFormat::f32;
  index_t count = 0, slots = 0, key_row = 0, value_row = 0;  // as KvBlock
  bool coded = false;                                        // as KvBlock
  const std::uint8_t* keys = nullptr;
  std::size_t key_bytes = 0;
  const float* key_params = nullptr;
  std::size_t key_param_count = 0;
  const std::uint8_t* values = nullptr;
  std::size_t value_bytes = 0;
  const float* value_params = nullptr;
  std::size_t value_param_count = 0;
  const std::int64_t* positions = nullptr;  // [count]
  std::int64_t min_position = 0, max_position = 0;
};

inline KvBlockView view_of(const KvBlock& b) noexcept {
  KvBlockView v;
  v.key_format = b.key_format, v.value_format = b.value_format;
  v.count = b.count, v.slots = b.slots, v.key_row = b.key_row, v.value_row = b.value_row;
  v.coded = b.coded;
  v.keys = b.keys.data(), v.key_bytes = b.keys.size();
  v.key_params = b.key_params.data(), v.key_param_count = b.key_params.size();
  v.values = b.values.data(), v.value_bytes = b.values.size();
  v.value_params = b.value_params.data(), v.value_param_count = b.value_params.size();
  v.positions = b.positions.data(), v.min_position = b.min_position, v.max_position = b.max_position;
  return v;
}

// Storage sizes of a block of n entries in these formats (what empty_block allocates).
struct KvBlockSizes {
  index_t slots, key_row, value_row, key_bytes, key_params, value_bytes, value_params;
};

// ---- element access ---------------------------------------------------------------------------

inline float load_float(KvFormat f, const std::uint8_t* row, index_t i) noexcept {
  switch (f) {
    case KvFormat::f32: {
      float x;
      std::memcpy(&x, row + 4 * i, 4);
      return x;
    }
    case KvFormat::f16: {
      std::uint16_t b;
      std::memcpy(&b, row + 2 * i, 2);
      return f16_to_float(b);
    }
    case KvFormat::bf16: {
      std::uint16_t b;
      std::memcpy(&b, row + 2 * i, 2);
      return bf16_to_float(b);
    }
    default: return 0.f;
  }
}

inline void store_floats(KvFormat f, const float* x, index_t n, std::uint8_t* row) noexcept {
  switch (f) {
    case KvFormat::f32: std::memcpy(row, x, static_cast<std::size_t>(n) * 4); break;
    case KvFormat::f16: convert(x, reinterpret_cast<f16*>(row), n); break;
    case KvFormat::bf16: convert(x, reinterpret_cast<bf16*>(row), n); break;
    default: break;
  }
}

// Codes of quantized blocks, one at a time (construction, compaction, reads; layout.hpp).
inline int key_code(const KvBlockView& blk, index_t c, index_t t) noexcept {
  const int bits = format_bits(blk.key_format);
  return read_code(blk.keys, key_code_spot(bits, blk.slots, c, t), bits);
}
inline int key_code(const KvBlock& blk, index_t c, index_t t) noexcept { return key_code(view_of(blk), c, t); }
inline void set_key_code(KvBlock& blk, index_t c, index_t t, int code) noexcept {
  const int bits = format_bits(blk.key_format);
  write_code(blk.keys.data(), key_code_spot(bits, blk.slots, c, t), bits, code);
}
inline int value_code(const KvBlockView& blk, index_t Dv, index_t t, index_t c) noexcept {
  const int bits = format_bits(blk.value_format);
  return read_code(blk.values, value_code_spot(bits, Dv, t, c), bits);
}
inline int value_code(const KvBlock& blk, index_t Dv, index_t t, index_t c) noexcept { return value_code(view_of(blk), Dv, t, c); }
inline void set_value_code(KvBlock& blk, index_t Dv, index_t t, index_t c, int code) noexcept {
  const int bits = format_bits(blk.value_format);
  write_code(blk.values.data(), value_code_spot(bits, Dv, t, c), bits, code);
}

// ---- coded storage (KvCacheConfig::coded) ------------------------------------------------------
//
// A coded block of n entries (slots = n rounded up to 16):
//   pq     keys   [n][mk] codes (one byte per key sub-space), values [n][mv] codes;
//          key_params / value_params empty, or [n] floats 0 / NaN once an entry's key / value row
//          was non-finite (that row then reads back as NaN and makes the rows that see it NaN).
//   sign1  keys   bits [slots / 16][Dk] uint16 (bit i of channel c = sign of entry 16 chunk + i),
//          key_params   scales [slots / 16][Gk][16] (mean |x| of each group; padding lanes 0);
//          values bits [n][ceil(Dv / 16)] uint16 (bit i of word u = channel 16 u + i),
//          value_params scales [n][Gv].
// The same layouts as CodedKvCache's heads (coded/cache.hpp), cut into blocks, so the kernels of
// coded/kernels.hpp read them.
struct KvCodedDims {
  bool pq = false;
  index_t mk = 0, mv = 0, Kk = 0, Kv = 0;  // pq: sub-spaces and centroids of keys / values
  index_t gk = 1, gv = 1, Gk = 0, Gv = 0;  // sign1: group sizes and group counts
  index_t W = 0;                           // sign1: uint16 words of one value row
};

inline KvCodedDims coded_dims(const KvCacheConfig& cfg) noexcept {
  KvCodedDims d;
  const KvCodedStorage& cs = *cfg.coded;
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  d.pq = cs.format == KvCodeFormat::pq;
  d.mk = cs.key_codebooks.subspaces, d.mv = cs.value_codebooks.subspaces;
  d.Kk = cs.key_codebooks.centroids, d.Kv = cs.value_codebooks.centroids;
  d.gk = cs.group_size > 0 && cs.group_size < Dk ? cs.group_size : Dk;
  d.gv = cs.group_size > 0 && cs.group_size < Dv ? cs.group_size : Dv;
  d.Gk = (Dk + d.gk - 1) / d.gk, d.Gv = (Dv + d.gv - 1) / d.gv, d.W = (Dv + 15) / 16;
  return d;
}

inline KvBlockSizes coded_block_sizes(const KvCacheConfig& cfg, index_t n) noexcept {
  const KvCodedDims d = coded_dims(cfg);
  KvBlockSizes z{};
  z.slots = (n + 15) / 16 * 16;
  if (d.pq) {
    z.key_bytes = n * d.mk, z.value_bytes = n * d.mv;
  } else {
    z.key_bytes = z.slots / 16 * cfg.key_dim * 2, z.key_params = z.slots / 16 * d.Gk * 16;
    z.value_bytes = n * d.W * 2, z.value_params = n * d.Gv;
  }
  return z;
}

inline const std::uint16_t* coded_bits(const std::uint8_t* p) noexcept { return reinterpret_cast<const std::uint16_t*>(p); }
inline std::uint16_t* coded_bits(std::uint8_t* p) noexcept { return reinterpret_cast<std::uint16_t*>(p); }

// Mean |x| of n channels (the sign1 scale, accumulated in double); NaN when any is NaN or inf.
inline float coded_mean_abs(const float* x, index_t n) noexcept {
  if (!all_finite(x, n)) return std::numeric_limits<float>::quiet_NaN();
  double s = 0.0;
  for (index_t c = 0; c < n; ++c) s += std::abs(static_cast<double>(x[c]));
  return static_cast<float>(s / static_cast<double>(n));
}

// Marks (or clears) the non-finite flag of entry t of a pq block (params: key_params or
// value_params), allocating the flags on the first flagged entry.
inline void set_coded_flag(KvVector<float>& params, index_t count, index_t t, bool flagged) {
  if (params.empty() && !flagged) return;
  if (params.empty()) params.assign(static_cast<std::size_t>(count), 0.f);
  params[static_cast<std::size_t>(t)] = flagged ? std::numeric_limits<float>::quiet_NaN() : 0.f;
}

// Encodes key k [Dk] and value v [Dv] of KV head h into entry t of a coded block.
inline void encode_coded_entry(const KvCacheConfig& cfg, index_t h, KvBlock& blk, index_t t, const float* k, const float* v) {
  const KvCodedDims d = coded_dims(cfg);
  const KvCodedStorage& cs = *cfg.coded;
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  if (d.pq) {
    const auto codes = [&](const PqCodebooks& cb, const float* x, index_t D, std::uint8_t* out, KvVector<float>& flags) {
      const bool finite = all_finite(x, D);
      const index_t sd = cb.sub_dim();
      for (index_t sp = 0; sp < cb.subspaces; ++sp)
        out[sp] = finite ? static_cast<std::uint8_t>(nearest_centroid(x + sp * sd, cb.centroid(h, sp, 0), cb.centroids, sd)) : 0;
      set_coded_flag(flags, blk.count, t, !finite);
    };
    codes(cs.key_codebooks, k, Dk, blk.keys.data() + t * d.mk, blk.key_params);
    codes(cs.value_codebooks, v, Dv, blk.values.data() + t * d.mv, blk.value_params);
    return;
  }
  const index_t chunk = t / 16, lane = t % 16;
  std::uint16_t* kb = coded_bits(blk.keys.data()) + chunk * Dk;
  const std::uint16_t bit = static_cast<std::uint16_t>(1u << lane);
  for (index_t c = 0; c < Dk; ++c) kb[c] = static_cast<std::uint16_t>(k[c] >= 0.f ? kb[c] | bit : kb[c] & ~bit);
  for (index_t g = 0; g < d.Gk; ++g)
    blk.key_params[static_cast<std::size_t>((chunk * d.Gk + g) * 16 + lane)] = coded_mean_abs(k + g * d.gk, std::min(d.gk, Dk - g * d.gk));
  std::uint16_t* vb = coded_bits(blk.values.data()) + t * d.W;
  std::fill(vb, vb + d.W, std::uint16_t{0});
  for (index_t c = 0; c < Dv; ++c)
    if (v[c] >= 0.f) vb[c / 16] = static_cast<std::uint16_t>(vb[c / 16] | (1u << (c % 16)));
  for (index_t g = 0; g < d.Gv; ++g)
    blk.value_params[static_cast<std::size_t>(t * d.Gv + g)] = coded_mean_abs(v + g * d.gv, std::min(d.gv, Dv - g * d.gv));
}

// Decoded key (key = true, out [Dk]) or value (out [Dv]) of entry t of a coded block of KV head h.
inline void decode_coded_entry(const KvCacheConfig& cfg, index_t h, const KvBlockView& blk, index_t t, bool key, float* out) {
  const KvCodedDims d = coded_dims(cfg);
  const index_t D = key ? cfg.key_dim : cfg.value_dim;
  if (d.pq) {
    const PqCodebooks& cb = key ? cfg.coded->key_codebooks : cfg.coded->value_codebooks;
    const float* flags = key ? blk.key_params : blk.value_params;
    const std::size_t nflags = key ? blk.key_param_count : blk.value_param_count;
    if (nflags > 0 && std::isnan(flags[t])) {
      std::fill(out, out + D, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    const std::uint8_t* codes = (key ? blk.keys : blk.values) + t * cb.subspaces;
    const index_t sd = cb.sub_dim();
    for (index_t sp = 0; sp < cb.subspaces; ++sp) std::copy_n(cb.centroid(h, sp, codes[sp]), sd, out + sp * sd);
    return;
  }
  if (key) {
    const index_t chunk = t / 16, lane = t % 16;
    const std::uint16_t* kb = coded_bits(blk.keys) + chunk * D;
    for (index_t c = 0; c < D; ++c) {
      const float s = blk.key_params[(chunk * d.Gk + c / d.gk) * 16 + lane];
      out[c] = (kb[c] >> lane) & 1u ? s : -s;
    }
  } else {
    const std::uint16_t* vb = coded_bits(blk.values) + t * d.W;
    for (index_t c = 0; c < D; ++c) {
      const float s = blk.value_params[t * d.Gv + c / d.gv];
      out[c] = (vb[c / 16] >> (c % 16)) & 1u ? s : -s;
    }
  }
}

// Copies entry t of coded block `from` into slot i of coded block `to` (codes move exactly).
inline void copy_coded_entry(const KvCacheConfig& cfg, const KvBlock& from, index_t t, KvBlock& to, index_t i) {
  const KvCodedDims d = coded_dims(cfg);
  const index_t Dk = cfg.key_dim;
  if (d.pq) {
    std::copy_n(from.keys.data() + t * d.mk, d.mk, to.keys.data() + i * d.mk);
    std::copy_n(from.values.data() + t * d.mv, d.mv, to.values.data() + i * d.mv);
    set_coded_flag(to.key_params, to.count, i, !from.key_params.empty() && std::isnan(from.key_params[t]));
    set_coded_flag(to.value_params, to.count, i, !from.value_params.empty() && std::isnan(from.value_params[t]));
    return;
  }
  const std::uint16_t* fb = coded_bits(from.keys.data()) + (t / 16) * Dk;
  std::uint16_t* tb = coded_bits(to.keys.data()) + (i / 16) * Dk;
  const index_t fl = t % 16, tl = i % 16;
  for (index_t c = 0; c < Dk; ++c) {
    const unsigned b = (fb[c] >> fl) & 1u;
    tb[c] = static_cast<std::uint16_t>((tb[c] & ~(1u << tl)) | (b << tl));
  }
  for (index_t g = 0; g < d.Gk; ++g)
    to.key_params[static_cast<std::size_t>(((i / 16) * d.Gk + g) * 16 + tl)] =
        from.key_params[static_cast<std::size_t>(((t / 16) * d.Gk + g) * 16 + fl)];
  std::copy_n(coded_bits(from.values.data()) + t * d.W, d.W, coded_bits(to.values.data()) + i * d.W);
  std::copy_n(from.value_params.data() + t * d.Gv, d.Gv, to.value_params.data() + i * d.Gv);
}

inline KvBlockSizes block_sizes(const KvCacheConfig& cfg, KvFormat kf, KvFormat vf, index_t n) noexcept {
  if (cfg.coded) return coded_block_sizes(cfg, n);
  KvBlockSizes z{};
  const index_t granule = key_slot_granule(kf), Dk = cfg.key_dim, Dv = cfg.value_dim;
  z.slots = (n + granule - 1) / granule * granule;
  z.key_row = is_quantized(kf) ? 0 : row_bytes(kf, z.slots);
  z.key_bytes = is_quantized(kf) ? key_code_bytes(format_bits(kf), Dk, z.slots) : Dk * z.key_row;
  if (is_quantized(kf))
    z.key_params = cfg.key_quant == KeyQuant::per_token
                       ? 2 * quant::group_count(Dk, cfg.group_size > 0 ? cfg.group_size : Dk) * z.slots
                       : 2 * Dk;
  z.value_row = is_quantized(vf) ? value_quad_bytes(format_bits(vf), Dv) : row_bytes(vf, Dv);
  z.value_bytes = is_quantized(vf) ? value_code_bytes(format_bits(vf), Dv, n) : n * z.value_row;
  z.value_params = is_quantized(vf) ? 2 * n * quant::group_count(Dv, cfg.group_size) : 0;
  return z;
}

// The scale and min of value group g of entry t (quantized values).
inline quant::Params value_params(const KvBlockView& blk, index_t g, index_t t) noexcept {
  const float* p = blk.value_params + 2 * g * blk.count + t;
  return {p[0], p[blk.count]};
}
inline quant::Params value_params(const KvBlock& blk, index_t g, index_t t) noexcept { return value_params(view_of(blk), g, t); }
inline void set_value_params(KvBlock& blk, index_t g, index_t t, quant::Params params) noexcept {
  float* p = blk.value_params.data() + 2 * g * blk.count + t;
  p[0] = params.scale, p[blk.count] = params.min;
}

// Quantizes x [Dv] into value row t of a block: its group parameters and its codes. `scratch`
// holds Dv bytes.
inline void encode_value(KvBlock& blk, index_t t, const float* x, index_t Dv, index_t group, std::uint8_t* scratch) {
  const int bits = format_bits(blk.value_format);
  const index_t g = group > 0 ? group : Dv, groups = quant::group_count(Dv, group);
  for (index_t k = 0; k < groups; ++k) {
    const index_t c0 = k * g, len = std::min(g, Dv - c0);
    const quant::Params params = quant::min_max_params(x + c0, len, 1, bits);
    set_value_params(blk, k, t, params);
    quant::encode_codes(x + c0, len, params, bits, scratch + c0);
  }
  for (index_t c = 0; c < Dv; ++c) set_value_code(blk, Dv, t, c, scratch[c]);
}

inline float key_element(const KvBlockView& blk, KeyQuant kq, index_t group, index_t c, index_t t) {
  if (!is_quantized(blk.key_format)) return load_float(blk.key_format, blk.keys + c * blk.key_row, t);
  const int code = key_code(blk, c, t);
  if (kq == KeyQuant::per_channel) {  // planar: Dk scales, then Dk mins
    const index_t Dk = static_cast<index_t>(blk.key_param_count / 2);
    return quant::decode(code, {blk.key_params[c], blk.key_params[Dk + c]});
  }
  const index_t g = c / group;
  const float* p = blk.key_params + 2 * g * blk.slots;
  return quant::decode(code, {p[t], p[blk.slots + t]});
}
inline float key_element(const KvBlock& blk, KeyQuant kq, index_t group, index_t c, index_t t) {
  return key_element(view_of(blk), kq, group, c, t);
}

inline void value_row(const KvBlockView& blk, index_t group, index_t Dv, index_t t, float* out) {
  if (!is_quantized(blk.value_format)) {
    const std::uint8_t* row = blk.values + t * blk.value_row;
    for (index_t c = 0; c < Dv; ++c) out[c] = load_float(blk.value_format, row, c);
    return;
  }
  const index_t g = group > 0 ? group : Dv;
  for (index_t c = 0; c < Dv; ++c) out[c] = quant::decode(value_code(blk, Dv, t, c), value_params(blk, c / g, t));
}
inline void value_row(const KvBlock& blk, index_t group, index_t Dv, index_t t, float* out) {
  value_row(view_of(blk), group, Dv, t, out);
}

// ---- block construction -----------------------------------------------------------------------

inline void set_position_range(KvBlock& blk) noexcept {
  if (blk.count == 0) return;
  blk.min_position = *std::min_element(blk.positions.begin(), blk.positions.end());
  blk.max_position = *std::max_element(blk.positions.begin(), blk.positions.end());
}

// An empty block for n entries of these formats: storage sized and zeroed, per-token key and
// value parameters and positions sized (per-channel key parameters are left to the caller).
inline KvBlock empty_block(const KvCacheConfig& cfg, KvFormat kf, KvFormat vf, index_t n) {
  KvBlock blk(cfg.arena);
  blk.key_format = kf, blk.value_format = vf, blk.count = n;
  const KvBlockSizes z = block_sizes(cfg, kf, vf, n);
  blk.slots = z.slots, blk.key_row = z.key_row, blk.value_row = z.value_row;
  blk.keys.assign(static_cast<std::size_t>(z.key_bytes), 0);
  blk.values.assign(static_cast<std::size_t>(z.value_bytes), 0);
  if (cfg.coded) {  // formats unused; sign1 scales sized (pq flags are made on demand)
    blk.coded = true, blk.key_format = blk.value_format = KvFormat::f32;
    blk.key_params.assign(static_cast<std::size_t>(z.key_params), 0.f);
    blk.value_params.assign(static_cast<std::size_t>(z.value_params), 0.f);
    blk.positions.assign(static_cast<std::size_t>(n), 0);
    return blk;
  }
  if (is_quantized(kf) && cfg.key_quant == KeyQuant::per_token) blk.key_params.assign(static_cast<std::size_t>(z.key_params), 0.f);
  if (is_quantized(vf)) blk.value_params.assign(static_cast<std::size_t>(z.value_params), 0.f);
  blk.positions.assign(static_cast<std::size_t>(n), 0);
  return blk;
}

// A block from n fp32 rows K [n][Dk], V [n][Dv] (row strides ldk, ldv) and their positions.
// Coded storage (cfg.coded) encodes them with the codebooks of KV head `head` (formats unused).
inline KvBlock make_block(const KvCacheConfig& cfg, KvFormat kf, KvFormat vf, const float* K, index_t ldk,
                          const float* V, index_t ldv, const std::int64_t* pos, index_t n, index_t head = 0) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  KvBlock blk = empty_block(cfg, kf, vf, n);
  std::copy(pos, pos + n, blk.positions.begin());
  set_position_range(blk);
  if (cfg.coded) {
    for (index_t t = 0; t < n; ++t) encode_coded_entry(cfg, head, blk, t, K + t * ldk, V + t * ldv);
    return blk;
  }

  KvVector<float> column = kv_vector<float>(cfg.arena, static_cast<std::size_t>(blk.slots), 0.f);
  KvVector<std::uint8_t> codes = kv_vector<std::uint8_t>(cfg.arena, static_cast<std::size_t>(std::max(blk.slots, Dv)), 0);
  const int kbits = format_bits(kf);
  if (is_quantized(kf) && cfg.key_quant == KeyQuant::per_token) {
    const index_t group = cfg.group_size > 0 ? cfg.group_size : Dk, groups = quant::group_count(Dk, group);
    for (index_t t = 0; t < n; ++t)
      for (index_t g = 0; g < groups; ++g) {
        const quant::Params p = quant::min_max_params(K + t * ldk + g * group, std::min(group, Dk - g * group), 1, kbits);
        blk.key_params[(2 * g) * blk.slots + t] = p.scale;
        blk.key_params[(2 * g + 1) * blk.slots + t] = p.min;
      }
    for (index_t c = 0; c < Dk; ++c) {
      const float* p = blk.key_params.data() + 2 * (c / group) * blk.slots;
      for (index_t t = 0; t < n; ++t) set_key_code(blk, c, t, quant::encode(K[t * ldk + c], {p[t], p[blk.slots + t]}, kbits));
    }
  } else {
    if (is_quantized(kf)) blk.key_params.assign(static_cast<std::size_t>(2 * Dk), 0.f);
    for (index_t c = 0; c < Dk; ++c) {
      for (index_t t = 0; t < n; ++t) column[t] = K[t * ldk + c];
      if (!is_quantized(kf)) {
        store_floats(kf, column.data(), blk.slots, blk.keys.data() + c * blk.key_row);
        continue;
      }
      const quant::Params p = quant::min_max_params(column.data(), n, 1, kbits);
      blk.key_params[c] = p.scale, blk.key_params[Dk + c] = p.min;  // planar, for vector loads
      quant::encode_codes(column.data(), n, p, kbits, codes.data());
      for (index_t t = 0; t < n; ++t) set_key_code(blk, c, t, codes[t]);
    }
  }

  for (index_t t = 0; t < n; ++t) {
    if (is_quantized(vf))
      encode_value(blk, t, V + t * ldv, Dv, cfg.group_size, codes.data());
    else
      store_floats(vf, V + t * ldv, Dv, blk.values.data() + t * blk.value_row);
  }
  return blk;
}

}  // namespace seqmix::detail
