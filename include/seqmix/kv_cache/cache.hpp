// KvCache: the KV cache of one attention layer (SPEC section 6).
//
// Per (batch row b, KV head h) the cache holds an ordered list of entries, each a key [Dk], a
// value [Dv] and the int64 position it was appended at. Entry order is append order; retain()
// keeps a sorted subset, so the order (and the positions) of the kept entries never change.
//
// Storage of one (b, h):
//   residual : the newest tokens in fp32, token-major. When it holds R + 32 tokens its oldest 32
//              are flushed into quantized / converted blocks (KIVI's full-precision window: the
//              newest R tokens are always exact, and per-channel key parameters are fitted over a
//              whole group of 32 tokens).
//   blocks   : fixed-format blocks of at most 32 entries, each with its own quantization
//              parameters, so dropping a row compacts only its block and never requantizes the
//              others. Float keys are stored channel-major ([Dk][slots]: 16 tokens of a channel
//              per vector, so scores need no horizontal sums), float values token-major
//              ([count][Dv]); quantized codes in the integer kernels' units (layout.hpp): keys as
//              16 tokens x 4 channels, values as 16 channels x 4 tokens per 64 bytes.
//   order    : entry index -> (block, slot) of the block part; residual entries follow.
// Compaction: retain() empties slots of blocks; compact() (called by retain() when the head's
// blocks are less than half full on average) merges partly filled blocks of the same formats
// into full ones, in entry order (see compact()).
// ZipCache mixed precision: when a group of 32 tokens is flushed, the top `salient_fraction` of
// them by saliency go to a block in the high formats, the rest to a block in the low formats.
// Saliency is the caller's per-token score given to append(), or the normalized attention
// (attention received / number of queries that could see the token) gathered by
// observe_attention() while the token sits in the residual window; a token with neither counts
// as salient.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/layout.hpp"
#include "seqmix/kv_cache/quantize.hpp"

namespace seqmix {

enum class KeyQuant : std::uint8_t {
  per_channel,  // KIVI: one (scale, min) per channel per block of up to 32 tokens
  per_token,    // one (scale, min) per token per group of `group_size` channels
};

struct KvMixedPrecision {
  KvFormat key_format = KvFormat::int4;    // formats of the non-salient tokens
  KvFormat value_format = KvFormat::int2;
  float salient_fraction = 0.2f;           // share of each flushed group kept in the high formats
};

struct KvCacheConfig {
  index_t batch = 1, kv_heads = 1, key_dim = 0, value_dim = 0;  // B, Hkv, Dk, Dv
  KvFormat key_format = KvFormat::f16;    // f32, f16, bf16, int8 or int4
  KvFormat value_format = KvFormat::f16;  // f32, f16, bf16, int8, int4 or int2
  KeyQuant key_quant = KeyQuant::per_channel;
  // Channels per quantization group for per-token keys and for values; 0 = the whole row.
  index_t group_size = 0;
  // Full-precision window R: the newest R (up to R + 31) tokens stay fp32.
  index_t residual = 0;
  std::optional<KvMixedPrecision> mixed;  // ZipCache; empty = one precision
};

namespace detail {

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
  AlignedVector<std::uint8_t> keys;    // float: [Dk][key_row], channel-major; quantized: layout.hpp
  // per_channel: [Dk] scales, then [Dk] mins (planar, for vector loads). per_token: [groups][2][slots]: the scales, then the mins, of
  // each token, as vectors over tokens (the score kernel loads them 16 at a time).
  AlignedVector<float> key_params;
  AlignedVector<std::uint8_t> values;        // float: [count][value_row], token-major; quantized: layout.hpp
  // Quantized values: [groups][2][count], each group's token scales, then its token mins, as
  // vectors over tokens (the value kernels load them 16 at a time, masked to count: blocks are
  // made for their final count, and unpadded rows keep ZipCache's small blocks small).
  AlignedVector<float> value_params;
  std::vector<std::int64_t> positions;       // [count]
  std::int64_t min_position = 0, max_position = 0;

  std::size_t bytes() const noexcept {
    return keys.size() + key_params.size() * sizeof(float) + values.size() +
           value_params.size() * sizeof(float) + positions.size() * sizeof(std::int64_t);
  }
};

struct KvResidual {
  std::vector<float> keys, values;       // [n][Dk], [n][Dv]
  std::vector<std::int64_t> positions;   // [n]
  std::vector<float> given_saliency;     // [n], NaN when not given
  std::vector<float> attention_sum, attention_queries;  // [n], from observe_attention
  index_t size() const noexcept { return static_cast<index_t>(positions.size()); }
  std::size_t bytes() const noexcept {
    return (keys.size() + values.size() + given_saliency.size() + attention_sum.size() + attention_queries.size()) *
               sizeof(float) + positions.size() * sizeof(std::int64_t);
  }
};

struct KvSlot {
  std::uint32_t block, slot;
};

struct KvHead {
  std::vector<KvBlock> blocks;
  std::vector<KvSlot> order;  // entry -> slot, for the block part
  KvResidual residual;
  index_t size() const noexcept { return static_cast<index_t>(order.size()) + residual.size(); }
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
inline int key_code(const KvBlock& blk, index_t c, index_t t) noexcept {
  const int bits = format_bits(blk.key_format);
  return read_code(blk.keys.data(), key_code_spot(bits, blk.slots, c, t), bits);
}
inline void set_key_code(KvBlock& blk, index_t c, index_t t, int code) noexcept {
  const int bits = format_bits(blk.key_format);
  write_code(blk.keys.data(), key_code_spot(bits, blk.slots, c, t), bits, code);
}
inline int value_code(const KvBlock& blk, index_t Dv, index_t t, index_t c) noexcept {
  const int bits = format_bits(blk.value_format);
  return read_code(blk.values.data(), value_code_spot(bits, Dv, t, c), bits);
}
inline void set_value_code(KvBlock& blk, index_t Dv, index_t t, index_t c, int code) noexcept {
  const int bits = format_bits(blk.value_format);
  write_code(blk.values.data(), value_code_spot(bits, Dv, t, c), bits, code);
}

// Sizes the key storage of a block for its format and slots (codes zeroed).
inline void allocate_keys(KvBlock& blk, index_t Dk) {
  const KvFormat f = blk.key_format;
  blk.key_row = is_quantized(f) ? 0 : row_bytes(f, blk.slots);
  const index_t bytes = is_quantized(f) ? key_code_bytes(format_bits(f), Dk, blk.slots) : Dk * blk.key_row;
  blk.keys.assign(static_cast<std::size_t>(bytes), 0);
}
inline void allocate_values(KvBlock& blk, index_t Dv, index_t n) {
  const KvFormat f = blk.value_format;
  const int bits = format_bits(f);
  blk.value_row = is_quantized(f) ? value_quad_bytes(bits, Dv) : row_bytes(f, Dv);
  const index_t bytes = is_quantized(f) ? value_code_bytes(bits, Dv, n) : n * blk.value_row;
  blk.values.assign(static_cast<std::size_t>(bytes), 0);
}

// The scale and min of value group g of entry t (quantized values).
inline quant::Params value_params(const KvBlock& blk, index_t g, index_t t) noexcept {
  const float* p = blk.value_params.data() + 2 * g * blk.count + t;
  return {p[0], p[blk.count]};
}
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

inline float key_element(const KvBlock& blk, KeyQuant kq, index_t group, index_t c, index_t t) {
  if (!is_quantized(blk.key_format)) return load_float(blk.key_format, blk.keys.data() + c * blk.key_row, t);
  const int code = key_code(blk, c, t);
  if (kq == KeyQuant::per_channel) {  // planar: Dk scales, then Dk mins
    const index_t Dk = static_cast<index_t>(blk.key_params.size() / 2);
    return quant::decode(code, {blk.key_params[c], blk.key_params[Dk + c]});
  }
  const index_t g = c / group;
  const float* p = blk.key_params.data() + 2 * g * blk.slots;
  return quant::decode(code, {p[t], p[blk.slots + t]});
}

inline void value_row(const KvBlock& blk, index_t group, index_t Dv, index_t t, float* out) {
  if (!is_quantized(blk.value_format)) {
    const std::uint8_t* row = blk.values.data() + t * blk.value_row;
    for (index_t c = 0; c < Dv; ++c) out[c] = load_float(blk.value_format, row, c);
    return;
  }
  const index_t g = group > 0 ? group : Dv;
  for (index_t c = 0; c < Dv; ++c) out[c] = quant::decode(value_code(blk, Dv, t, c), value_params(blk, c / g, t));
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
  KvBlock blk;
  blk.key_format = kf, blk.value_format = vf, blk.count = n;
  const index_t granule = key_slot_granule(kf);
  blk.slots = (n + granule - 1) / granule * granule;
  allocate_keys(blk, cfg.key_dim);
  allocate_values(blk, cfg.value_dim, n);
  if (is_quantized(kf) && cfg.key_quant == KeyQuant::per_token) {
    const index_t rows = 2 * quant::group_count(cfg.key_dim, cfg.group_size > 0 ? cfg.group_size : cfg.key_dim);
    blk.key_params.assign(static_cast<std::size_t>(rows * blk.slots), 0.f);
  }
  if (is_quantized(vf))
    blk.value_params.assign(static_cast<std::size_t>(2 * n * quant::group_count(cfg.value_dim, cfg.group_size)), 0.f);
  blk.positions.assign(static_cast<std::size_t>(n), 0);
  return blk;
}

// A block from n fp32 rows K [n][Dk], V [n][Dv] (row strides ldk, ldv) and their positions.
inline KvBlock make_block(const KvCacheConfig& cfg, KvFormat kf, KvFormat vf, const float* K, index_t ldk,
                          const float* V, index_t ldv, const std::int64_t* pos, index_t n) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  KvBlock blk = empty_block(cfg, kf, vf, n);
  std::copy(pos, pos + n, blk.positions.begin());
  set_position_range(blk);

  std::vector<float> column(static_cast<std::size_t>(blk.slots), 0.f);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(std::max(blk.slots, Dv)), 0);
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

// Copies entry t of `from` into slot i of `to` (same formats, `to` sized by empty_block): key codes
// or floats with any per-token key parameters, the value row with its parameters, the position.
// Codes move exactly; per-channel key parameters belong to the block and are not touched.
inline void copy_entry(const KvBlock& from, index_t t, KvBlock& to, index_t i, const KvCacheConfig& cfg) {
  const index_t Dk = cfg.key_dim, Dv = cfg.value_dim;
  if (is_quantized(from.key_format)) {
    for (index_t c = 0; c < Dk; ++c) set_key_code(to, c, i, key_code(from, c, t));
    if (cfg.key_quant == KeyQuant::per_token) {
      const index_t rows = static_cast<index_t>(from.key_params.size()) / from.slots;
      for (index_t r = 0; r < rows; ++r) to.key_params[r * to.slots + i] = from.key_params[r * from.slots + t];
    }
  } else {
    const std::size_t bytes = static_cast<std::size_t>(format_bits(from.key_format) / 8);
    for (index_t c = 0; c < Dk; ++c)
      std::memcpy(to.keys.data() + c * to.key_row + i * bytes, from.keys.data() + c * from.key_row + t * bytes, bytes);
  }
  if (is_quantized(from.value_format)) {
    for (index_t c = 0; c < Dv; ++c) set_value_code(to, Dv, i, c, value_code(from, Dv, t, c));
    const index_t groups = quant::group_count(Dv, cfg.group_size);
    for (index_t g = 0; g < groups; ++g) set_value_params(to, g, i, value_params(from, g, t));
  } else {
    std::memcpy(to.values.data() + i * to.value_row, from.values.data() + t * from.value_row,
                static_cast<std::size_t>(from.value_row));
  }
  to.positions[i] = from.positions[t];
}

// Keeps the slots marked in `keep` (size count), in order; codes are moved, never requantized.
inline void compact_block(KvBlock& blk, const KvCacheConfig& cfg, const std::vector<char>& keep) {
  std::vector<index_t> kept;
  for (index_t t = 0; t < blk.count; ++t)
    if (keep[t]) kept.push_back(t);
  const index_t n = static_cast<index_t>(kept.size());
  KvBlock out = empty_block(cfg, blk.key_format, blk.value_format, n);
  if (is_quantized(blk.key_format) && cfg.key_quant == KeyQuant::per_channel) out.key_params = blk.key_params;
  for (index_t i = 0; i < n; ++i) copy_entry(blk, kept[i], out, i, cfg);
  set_position_range(out);
  if (n == 0) out.min_position = blk.min_position, out.max_position = blk.max_position;
  blk = std::move(out);
}

// A block holding the entries `src` (in this order, at most kKvBlockTokens, non-empty) of blocks
// that share one key format and one value format. Values (per-token parameters), positions,
// float keys and per-token key codes and parameters are moved exactly. Per-channel quantized keys
// share parameters per block: taken from one source block they keep its parameters and codes;
// gathered from several they are dequantized and refitted over the merged entries (each element
// moves by at most half of the new step: the new range holds every dequantized value, so the new
// scale is at most (max - min) / (2^bits - 1) of the merged keys).
inline KvBlock merge_entries(const KvCacheConfig& cfg, const std::vector<KvBlock>& blocks, const std::vector<KvSlot>& src) {
  const index_t n = static_cast<index_t>(src.size()), Dk = cfg.key_dim, Dv = cfg.value_dim;
  const KvBlock& first = blocks[src[0].block];
  KvBlock blk = empty_block(cfg, first.key_format, first.value_format, n);
  for (index_t i = 0; i < n; ++i) copy_entry(blocks[src[i].block], src[i].slot, blk, i, cfg);
  set_position_range(blk);
  if (!is_quantized(first.key_format) || cfg.key_quant != KeyQuant::per_channel) return blk;
  const bool one_source = std::all_of(src.begin(), src.end(), [&](const KvSlot& s) { return s.block == src[0].block; });
  if (one_source) {
    blk.key_params = first.key_params;
    return blk;
  }
  const index_t group = cfg.group_size > 0 ? cfg.group_size : Dk;
  std::vector<float> K(static_cast<std::size_t>(n * Dk)), V(static_cast<std::size_t>(n * Dv), 0.f);
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < Dk; ++c) K[i * Dk + c] = key_element(blocks[src[i].block], cfg.key_quant, group, c, src[i].slot);
  KvBlock keys = make_block(cfg, first.key_format, KvFormat::f32, K.data(), Dk, V.data(), Dv, blk.positions.data(), n);
  blk.keys = std::move(keys.keys);
  blk.key_params = std::move(keys.key_params);
  return blk;
}

}  // namespace detail

class KvCache {
 public:
  explicit KvCache(const KvCacheConfig& config) : config_(config) {
    const ArgCheck check("KvCache");
    check.that(config.batch >= 1, "config.batch", "must be >= 1, got " + std::to_string(config.batch));
    check.that(config.kv_heads >= 1, "config.kv_heads", "must be >= 1, got " + std::to_string(config.kv_heads));
    check.that(config.key_dim >= 1, "config.key_dim", "must be >= 1, got " + std::to_string(config.key_dim));
    check.that(config.value_dim >= 1, "config.value_dim", "must be >= 1, got " + std::to_string(config.value_dim));
    check.that(config.group_size >= 0, "config.group_size", "must be >= 0 (0: whole row), got " + std::to_string(config.group_size));
    check.that(config.residual >= 0, "config.residual", "must be >= 0, got " + std::to_string(config.residual));
    check_key_format(check, config.key_format, "config.key_format");
    if (config.mixed) {
      check_key_format(check, config.mixed->key_format, "config.mixed.key_format");
      const float f = config.mixed->salient_fraction;
      check.that(f >= 0.f && f <= 1.f, "config.mixed.salient_fraction", "must lie in [0, 1], got " + std::to_string(f));
    }
    heads_.resize(static_cast<std::size_t>(config.batch * config.kv_heads));
    next_position_.assign(static_cast<std::size_t>(config.batch), 0);
  }

  const KvCacheConfig& config() const noexcept { return config_; }

  // keys [B,T,Hkv,Dk], values [B,T,Hkv,Dv]; positions [B,T] (default: continuing from the last
  // appended position of each row, starting at 0), strictly increasing and beyond every position
  // already appended; saliency [B,T,Hkv] (ZipCache score, larger = more salient).
  void append(const ConstView<float, 4>& keys, const ConstView<float, 4>& values,
              const ConstView<std::int64_t, 2>& positions = {}, const ConstView<float, 3>& saliency = {}) {
    const ArgCheck check("KvCache::append");
    const index_t B = config_.batch, H = config_.kv_heads;
    check.shape("keys", keys, {B, -1, H, config_.key_dim}, "B,T,Hkv,Dk");
    const index_t T = keys.size(1);
    check.shape("values", values, {B, T, H, config_.value_dim}, "B,T,Hkv,Dv");
    check.optional_shape("positions", positions, {B, T}, "B,T");
    check.optional_shape("saliency", saliency, {B, T, H}, "B,T,Hkv");
    if (positions.has_value())
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t) {
          const std::int64_t floor = t == 0 ? next_position_[b] : positions(b, t - 1) + 1;
          if (positions(b, t) < floor)
            check.fail("positions", "must be strictly increasing and >= " + std::to_string(floor) + " (row " +
                                        std::to_string(b) + ", token " + std::to_string(t) + "), got " +
                                        std::to_string(positions(b, t)));
        }
    const float no_saliency = std::numeric_limits<float>::quiet_NaN();
    for (index_t b = 0; b < B; ++b) {
      for (index_t h = 0; h < H; ++h) {
        detail::KvResidual& r = head_mut(b, h).residual;
        for (index_t t = 0; t < T; ++t) {
          for (index_t c = 0; c < config_.key_dim; ++c) r.keys.push_back(keys(b, t, h, c));
          for (index_t c = 0; c < config_.value_dim; ++c) r.values.push_back(values(b, t, h, c));
          r.positions.push_back(positions.has_value() ? positions(b, t) : next_position_[b] + t);
          r.given_saliency.push_back(saliency.has_value() ? saliency(b, t, h) : no_saliency);
          r.attention_sum.push_back(0.f);
          r.attention_queries.push_back(0.f);
        }
        flush(head_mut(b, h));
      }
      if (T > 0) next_position_[b] = (positions.has_value() ? positions(b, T - 1) : next_position_[b] + T - 1) + 1;
    }
  }

  // The position the next appended token of row b gets by default.
  std::int64_t next_position(index_t b) const { return next_position_.at(static_cast<std::size_t>(b)); }

  index_t size(index_t b, index_t h) const { return head(b, h).size(); }

  std::vector<std::int64_t> positions(index_t b, index_t h) const {
    const detail::KvHead& hd = head(b, h);
    std::vector<std::int64_t> out;
    out.reserve(static_cast<std::size_t>(hd.size()));
    for (const auto& s : hd.order) out.push_back(hd.blocks[s.block].positions[s.slot]);
    out.insert(out.end(), hd.residual.positions.begin(), hd.residual.positions.end());
    return out;
  }

  // Entry index of a position; ShapeError if it is not (or no longer) in the cache.
  index_t find_position(index_t b, index_t h, std::int64_t position) const {
    const std::vector<std::int64_t> pos = positions(b, h);
    const auto it = std::lower_bound(pos.begin(), pos.end(), position);
    if (it == pos.end() || *it != position)
      throw ShapeError("KvCache::find_position", "position",
                       "= " + std::to_string(position) + " is not in the cache of (b=" + std::to_string(b) +
                           ", h=" + std::to_string(h) + "): evicted or never appended");
    return static_cast<index_t>(it - pos.begin());
  }

  // Dequantized keys / values of every entry, in entry order: out [size(b,h), Dk or Dv].
  void read_keys(index_t b, index_t h, const TensorView<float, 2>& out) const { read(b, h, out, true, "read_keys"); }
  void read_values(index_t b, index_t h, const TensorView<float, 2>& out) const { read(b, h, out, false, "read_values"); }

  // One entry, dequantized (out holds Dk / Dv floats).
  void read_key(index_t b, index_t h, index_t entry, float* out) const {
    const detail::KvHead& hd = head(b, h);
    check_entry("KvCache::read_key", hd, entry);
    if (entry >= static_cast<index_t>(hd.order.size())) {
      const float* src = hd.residual.keys.data() + (entry - hd.order.size()) * config_.key_dim;
      std::copy(src, src + config_.key_dim, out);
      return;
    }
    const detail::KvSlot s = hd.order[entry];
    for (index_t c = 0; c < config_.key_dim; ++c)
      out[c] = detail::key_element(hd.blocks[s.block], config_.key_quant, key_group(), c, s.slot);
  }
  void read_value(index_t b, index_t h, index_t entry, float* out) const {
    const detail::KvHead& hd = head(b, h);
    check_entry("KvCache::read_value", hd, entry);
    if (entry >= static_cast<index_t>(hd.order.size())) {
      const float* src = hd.residual.values.data() + (entry - hd.order.size()) * config_.value_dim;
      std::copy(src, src + config_.value_dim, out);
      return;
    }
    const detail::KvSlot s = hd.order[entry];
    detail::value_row(hd.blocks[s.block], config_.group_size, config_.value_dim, s.slot, out);
  }

  // Keeps the entries whose indices are listed (strictly increasing) and drops the others.
  void retain(index_t b, index_t h, const std::vector<index_t>& kept) {
    const ArgCheck check("KvCache::retain");
    check_head(check, b, h);
    detail::KvHead& hd = head_mut(b, h);
    for (std::size_t i = 0; i < kept.size(); ++i)
      if (kept[i] < 0 || kept[i] >= hd.size() || (i > 0 && kept[i] <= kept[i - 1]))
        check.fail("kept", "must be strictly increasing entry indices in [0, " + std::to_string(hd.size()) +
                               "), got " + std::to_string(kept[i]) + " at index " + std::to_string(i));
    const index_t n_blocks_entries = static_cast<index_t>(hd.order.size());
    std::vector<std::vector<char>> keep(hd.blocks.size());
    for (std::size_t k = 0; k < hd.blocks.size(); ++k) keep[k].assign(static_cast<std::size_t>(hd.blocks[k].count), 0);
    std::vector<index_t> kept_residual;
    for (index_t e : kept) {
      if (e < n_blocks_entries)
        keep[hd.order[e].block][hd.order[e].slot] = 1;
      else
        kept_residual.push_back(e - n_blocks_entries);
    }
    // New slot of every kept slot (its rank among its block's kept slots), and new block ids.
    std::vector<std::vector<std::uint32_t>> new_slot(hd.blocks.size());
    std::vector<std::uint32_t> new_block(hd.blocks.size(), 0);
    std::vector<detail::KvBlock> blocks;
    for (std::size_t k = 0; k < hd.blocks.size(); ++k) {
      new_slot[k].resize(keep[k].size());
      std::uint32_t rank = 0;
      for (std::size_t t = 0; t < keep[k].size(); ++t)
        if (keep[k][t]) new_slot[k][t] = rank++;
      if (rank == 0) continue;
      if (rank != static_cast<std::uint32_t>(hd.blocks[k].count)) detail::compact_block(hd.blocks[k], config_, keep[k]);
      new_block[k] = static_cast<std::uint32_t>(blocks.size());
      blocks.push_back(std::move(hd.blocks[k]));
    }
    std::vector<detail::KvSlot> order;
    for (index_t e : kept)
      if (e < n_blocks_entries) {
        const detail::KvSlot s = hd.order[e];
        order.push_back({new_block[s.block], new_slot[s.block][s.slot]});
      }
    hd.blocks = std::move(blocks);
    hd.order = std::move(order);
    hd.order.shrink_to_fit();
    keep_residual(hd.residual, kept_residual);
    // Scattered eviction leaves many partly filled blocks; merge them once the head's blocks are
    // less than half full on average. Not after every retain: merging per-channel quantized keys
    // requantizes them, and a threshold makes that rare (an entry is requantized at most once per
    // halving of the block fill) while keeping memory within 2x of the packed size.
    if (2 * static_cast<index_t>(hd.order.size()) < detail::kKvBlockTokens * static_cast<index_t>(hd.blocks.size()))
      compact_head(hd);
  }

  // Merges the partly filled blocks of (b, h): per format pair (one pair, or ZipCache's high and
  // low pairs, which never mix), the entries of the blocks holding fewer than 32 are repacked in
  // entry order into full blocks plus at most one partly filled one. Full blocks, and a partly
  // filled block alone in its format pair, are not touched. Entry order, positions and values are
  // preserved exactly, and so are float keys and per-token quantized keys (codes and parameters
  // move). Per-channel quantized keys (KIVI) gathered from several blocks get new per-block
  // parameters: they are dequantized and requantized, adding at most half of the merged block's
  // new step (scale / 2, plus float rounding) per element to their error, and only when blocks
  // merge. Afterwards bytes() is within one block per format pair of the packed size.
  void compact(index_t b, index_t h) {
    const ArgCheck check("KvCache::compact");
    check_head(check, b, h);
    compact_head(head_mut(b, h));
  }

  // compact(b, h) for every batch row and KV head.
  void compact() {
    for (auto& hd : heads_) compact_head(hd);
  }

  // Re-encodes one entry with a new key [Dk] and value [Dv] (merging, compensation tokens). In a
  // per-channel key block this refits that block's key parameters (the other keys of the block
  // are requantized once, an error of at most half their new scale); elsewhere only the entry
  // changes.
  void replace(index_t b, index_t h, index_t entry, const float* key, const float* value) {
    const ArgCheck check("KvCache::replace");
    check_head(check, b, h);
    detail::KvHead& hd = head_mut(b, h);
    check_entry("KvCache::replace", hd, entry);
    check.that(key != nullptr && value != nullptr, "key", "and 'value' must not be null");
    const index_t Dk = config_.key_dim, Dv = config_.value_dim;
    if (entry >= static_cast<index_t>(hd.order.size())) {
      const index_t r = entry - static_cast<index_t>(hd.order.size());
      std::copy(key, key + Dk, hd.residual.keys.begin() + r * Dk);
      std::copy(value, value + Dv, hd.residual.values.begin() + r * Dv);
      return;
    }
    const detail::KvSlot s = hd.order[entry];
    detail::KvBlock& blk = hd.blocks[s.block];
    const index_t t = s.slot;
    // The value row has its own parameters: re-encode it alone.
    if (is_quantized(blk.value_format)) {
      std::vector<std::uint8_t> scratch(static_cast<std::size_t>(Dv));
      detail::encode_value(blk, t, value, Dv, config_.group_size, scratch.data());
    } else {
      detail::store_floats(blk.value_format, value, Dv, blk.values.data() + t * blk.value_row);
    }
    const int bits = format_bits(blk.key_format);
    if (!is_quantized(blk.key_format)) {  // one element per channel row
      for (index_t c = 0; c < Dk; ++c) detail::store_floats(blk.key_format, key + c, 1, blk.keys.data() + c * blk.key_row + t * bits / 8);
    } else if (config_.key_quant == KeyQuant::per_token) {  // the token's own groups
      const index_t group = key_group();
      for (index_t g = 0; g * group < Dk; ++g) {
        const index_t c0 = g * group, c1 = std::min(Dk, c0 + group);
        const quant::Params p = quant::min_max_params(key + c0, c1 - c0, 1, bits);
        blk.key_params[(2 * g) * blk.slots + t] = p.scale;
        blk.key_params[(2 * g + 1) * blk.slots + t] = p.min;
        for (index_t c = c0; c < c1; ++c) detail::set_key_code(blk, c, t, quant::encode(key[c], p, bits));
      }
    } else {
      // Per-channel parameters are shared by the block: refit them over the dequantized keys with
      // this one swapped (the block's other keys move by at most half their new step).
      std::vector<float> K(static_cast<std::size_t>(blk.count * Dk));
      for (index_t r = 0; r < blk.count; ++r)
        for (index_t c = 0; c < Dk; ++c) K[r * Dk + c] = detail::key_element(blk, config_.key_quant, key_group(), c, r);
      std::copy(key, key + Dk, K.begin() + t * Dk);
      rebuild_keys(blk, K.data());
    }
  }

  // ZipCache saliency for tokens still in the residual window: probs [Tq, size(b,h)] are the
  // softmax probabilities of Tq queries at query_positions [Tq] over every entry of (b, h). A
  // residual token accumulates the probability of each query at or after its position.
  void observe_attention(index_t b, index_t h, const ConstView<float, 2>& probs,
                         const ConstView<std::int64_t, 1>& query_positions) {
    const ArgCheck check("KvCache::observe_attention");
    check_head(check, b, h);
    detail::KvHead& hd = head_mut(b, h);
    check.shape("probs", probs, {-1, hd.size()}, "Tq,size(b,h)");
    check.shape("query_positions", query_positions, {probs.size(0)}, "Tq");
    detail::KvResidual& r = hd.residual;
    const index_t first = static_cast<index_t>(hd.order.size());
    for (index_t e = 0; e < r.size(); ++e)
      for (index_t i = 0; i < probs.size(0); ++i)
        if (query_positions(i) >= r.positions[e]) {
          r.attention_sum[e] += probs(i, first + e);
          r.attention_queries[e] += 1.f;
        }
  }

  // Memory held: codes, parameters, positions, the entry map and the residual window.
  std::size_t bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& hd : heads_) {
      for (const auto& blk : hd.blocks) total += blk.bytes();
      total += hd.order.size() * sizeof(detail::KvSlot) + hd.residual.bytes();
    }
    return total;
  }

  index_t total_entries() const noexcept {
    index_t n = 0;
    for (const auto& hd : heads_) n += hd.size();
    return n;
  }

  // bytes() per entry of one (b, h): what a token costs in one KV head.
  double bytes_per_token() const noexcept {
    const index_t n = total_entries();
    return n > 0 ? static_cast<double>(bytes()) / static_cast<double>(n) : 0.0;
  }

  // Channels per per-token key group.
  index_t key_group() const noexcept { return config_.group_size > 0 ? config_.group_size : config_.key_dim; }

  const detail::KvHead& head(index_t b, index_t h) const {
    check_head(ArgCheck("KvCache"), b, h);
    return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)];
  }

 private:
  detail::KvHead& head_mut(index_t b, index_t h) {
    check_head(ArgCheck("KvCache"), b, h);
    return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)];
  }

  static void check_key_format(const ArgCheck& check, KvFormat f, const char* name) {
    check.that(f != KvFormat::int2, name, "int2 is only supported for values (2-bit keys lose the ranking)");
  }

  void check_head(const ArgCheck& check, index_t b, index_t h) const {
    if (b < 0 || b >= config_.batch || h < 0 || h >= config_.kv_heads)
      check.fail("b, h", "= (" + std::to_string(b) + ", " + std::to_string(h) + ") out of range [0, " +
                              std::to_string(config_.batch) + ") x [0, " + std::to_string(config_.kv_heads) + ")");
  }

  static void check_entry(const char* op, const detail::KvHead& hd, index_t entry) {
    if (entry < 0 || entry >= hd.size())
      throw ShapeError(op, "entry", "= " + std::to_string(entry) + " out of range [0, " + std::to_string(hd.size()) + ")");
  }

  void read(index_t b, index_t h, const TensorView<float, 2>& out, bool keys, const char* op) const {
    const ArgCheck check(std::string("KvCache::") + op);
    check_head(check, b, h);
    const detail::KvHead& hd = head(b, h);
    const index_t D = keys ? config_.key_dim : config_.value_dim;
    check.shape("out", out, {hd.size(), D}, keys ? "size(b,h),Dk" : "size(b,h),Dv");
    std::vector<float> row(static_cast<std::size_t>(D));
    for (index_t e = 0; e < hd.size(); ++e) {
      if (keys)
        read_key(b, h, e, row.data());
      else
        read_value(b, h, e, row.data());
      for (index_t c = 0; c < D; ++c) out(e, c) = row[c];
    }
  }

  void compact_head(detail::KvHead& hd) const {
    const index_t Bt = detail::kKvBlockTokens, E = static_cast<index_t>(hd.order.size());
    const std::size_t nb = hd.blocks.size();
    // Format pair of each block, and the entries (in entry order) of the partly filled blocks of each.
    std::vector<std::pair<KvFormat, KvFormat>> pairs;
    std::vector<std::size_t> pair_of(nb);
    for (std::size_t k = 0; k < nb; ++k) {
      const auto p = std::make_pair(hd.blocks[k].key_format, hd.blocks[k].value_format);
      const auto it = std::find(pairs.begin(), pairs.end(), p);
      pair_of[k] = static_cast<std::size_t>(it - pairs.begin());
      if (it == pairs.end()) pairs.push_back(p);
    }
    std::vector<index_t> partial_blocks(pairs.size(), 0);
    for (std::size_t k = 0; k < nb; ++k)
      if (hd.blocks[k].count < Bt) ++partial_blocks[pair_of[k]];
    std::vector<char> merge(nb, 0);
    bool any = false;
    for (std::size_t k = 0; k < nb; ++k)
      if (hd.blocks[k].count < Bt && partial_blocks[pair_of[k]] >= 2) merge[k] = 1, any = true;
    if (!any) return;

    // Output blocks: the untouched ones and the merged groups, each with its first entry index
    // (blocks stay ordered by their first entry, so a block spans a narrow range of positions).
    struct Out {
      index_t first;
      std::size_t old_block;  // nb: a merged block
      std::vector<detail::KvSlot> sources;
    };
    std::vector<Out> outs;
    std::vector<index_t> out_of_block(nb, -1);
    std::vector<index_t> out_of_pair(pairs.size(), -1);
    std::vector<detail::KvSlot> target(static_cast<std::size_t>(E));  // entry -> (output, slot)
    for (index_t e = 0; e < E; ++e) {
      const detail::KvSlot s = hd.order[e];
      if (!merge[s.block]) {
        if (out_of_block[s.block] < 0) {
          out_of_block[s.block] = static_cast<index_t>(outs.size());
          outs.push_back({e, s.block, {}});
        }
        target[e] = {static_cast<std::uint32_t>(out_of_block[s.block]), s.slot};
        continue;
      }
      index_t& open = out_of_pair[pair_of[s.block]];
      if (open < 0 || static_cast<index_t>(outs[open].sources.size()) == Bt) {
        open = static_cast<index_t>(outs.size());
        outs.push_back({e, nb, {}});
      }
      target[e] = {static_cast<std::uint32_t>(open), static_cast<std::uint32_t>(outs[open].sources.size())};
      outs[open].sources.push_back(s);
    }
    // Outputs were created in order of first entry, so their indices are the new block ids.
    std::vector<detail::KvBlock> blocks;
    blocks.reserve(outs.size());
    for (const Out& o : outs)
      blocks.push_back(o.old_block < nb ? std::move(hd.blocks[o.old_block]) : detail::merge_entries(config_, hd.blocks, o.sources));
    hd.order = std::move(target);
    hd.blocks = std::move(blocks);
  }

  // Refits and re-encodes the keys of a block from fp32 rows K [count][Dk]; values untouched.
  void rebuild_keys(detail::KvBlock& blk, const float* K) const {
    std::vector<float> V(static_cast<std::size_t>(blk.count * config_.value_dim), 0.f);
    detail::KvBlock keys_only = detail::make_block(config_, blk.key_format, KvFormat::f32, K, config_.key_dim, V.data(),
                                                   config_.value_dim, blk.positions.data(), blk.count);
    blk.keys = std::move(keys_only.keys);
    blk.key_params = std::move(keys_only.key_params);
  }

  // Saliency of residual token e at flush time.
  static float saliency_of(const detail::KvResidual& r, index_t e) {
    if (!std::isnan(r.given_saliency[e])) return r.given_saliency[e];
    if (r.attention_queries[e] > 0.f) return r.attention_sum[e] / r.attention_queries[e];
    return std::numeric_limits<float>::infinity();  // never observed: keep it precise
  }

  // Moves the oldest 32 residual tokens into blocks while the residual holds R + 32 or more.
  void flush(detail::KvHead& hd) {
    detail::KvResidual& r = hd.residual;
    const index_t Bt = detail::kKvBlockTokens, Dk = config_.key_dim, Dv = config_.value_dim;
    index_t first = 0;
    while (r.size() - first >= config_.residual + Bt) {
      std::vector<index_t> rows(static_cast<std::size_t>(Bt));
      std::iota(rows.begin(), rows.end(), first);
      index_t high = Bt;
      if (config_.mixed) {
        std::vector<float> s(static_cast<std::size_t>(Bt));
        for (index_t t = 0; t < Bt; ++t) s[t] = saliency_of(r, first + t);
        std::stable_sort(rows.begin(), rows.end(), [&](index_t a, index_t c) { return s[a - first] > s[c - first]; });
        high = static_cast<index_t>(std::ceil(config_.mixed->salient_fraction * static_cast<float>(Bt)));
      }
      add_blocks(hd, rows.data(), high, config_.key_format, config_.value_format);
      if (high < Bt) add_blocks(hd, rows.data() + high, Bt - high, config_.mixed->key_format, config_.mixed->value_format);
      // Entry order stays append order even when a group was split over two blocks.
      std::sort(hd.order.end() - Bt, hd.order.end(), [&](const detail::KvSlot& a, const detail::KvSlot& c) {
        return hd.blocks[a.block].positions[a.slot] < hd.blocks[c.block].positions[c.slot];
      });
      first += Bt;
    }
    if (first > 0) {
      std::vector<index_t> rest(static_cast<std::size_t>(r.size() - first));
      std::iota(rest.begin(), rest.end(), first);
      keep_residual(r, rest);
    }
    (void)Dk, (void)Dv;
  }

  // One block from residual rows rows[0..n) (in increasing order of position after sorting).
  void add_blocks(detail::KvHead& hd, index_t* rows, index_t n, KvFormat kf, KvFormat vf) {
    if (n == 0) return;
    std::sort(rows, rows + n);
    const detail::KvResidual& r = hd.residual;
    const index_t Dk = config_.key_dim, Dv = config_.value_dim;
    std::vector<float> K(static_cast<std::size_t>(n * Dk)), V(static_cast<std::size_t>(n * Dv));
    std::vector<std::int64_t> pos(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) {
      std::copy_n(r.keys.begin() + rows[i] * Dk, Dk, K.begin() + i * Dk);
      std::copy_n(r.values.begin() + rows[i] * Dv, Dv, V.begin() + i * Dv);
      pos[i] = r.positions[rows[i]];
    }
    const std::uint32_t id = static_cast<std::uint32_t>(hd.blocks.size());
    hd.blocks.push_back(detail::make_block(config_, kf, vf, K.data(), Dk, V.data(), Dv, pos.data(), n));
    for (index_t i = 0; i < n; ++i) hd.order.push_back({id, static_cast<std::uint32_t>(i)});
  }

  // Keeps residual rows `rows` (increasing), dropping the others, and releases the memory.
  void keep_residual(detail::KvResidual& r, const std::vector<index_t>& rows) const {
    const index_t Dk = config_.key_dim, Dv = config_.value_dim;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const index_t e = rows[i], d = static_cast<index_t>(i);
      if (e == d) continue;
      std::copy_n(r.keys.begin() + e * Dk, Dk, r.keys.begin() + d * Dk);
      std::copy_n(r.values.begin() + e * Dv, Dv, r.values.begin() + d * Dv);
      r.positions[d] = r.positions[e];
      r.given_saliency[d] = r.given_saliency[e];
      r.attention_sum[d] = r.attention_sum[e];
      r.attention_queries[d] = r.attention_queries[e];
    }
    const std::size_t n = rows.size();
    r.keys.resize(n * static_cast<std::size_t>(Dk));
    r.values.resize(n * static_cast<std::size_t>(Dv));
    r.positions.resize(n);
    r.given_saliency.resize(n);
    r.attention_sum.resize(n);
    r.attention_queries.resize(n);
  }

  KvCacheConfig config_;
  std::vector<detail::KvHead> heads_;
  std::vector<std::int64_t> next_position_;
};

// ZipCache's normalized attention saliency: out[j] = sum_i probs[i, j] / #{i : query_positions[i]
// >= key_positions[j]}, the attention a key receives averaged over the queries that could see it
// (plain accumulated attention favours early tokens, which more queries see). probs [Tq, Tk],
// query_positions [Tq], key_positions [Tk], out [Tk]; a key no query sees gets 0.
inline void normalized_attention_saliency(const ConstView<float, 2>& probs, const ConstView<std::int64_t, 1>& query_positions,
                                          const ConstView<std::int64_t, 1>& key_positions, const TensorView<float, 1>& out) {
  const ArgCheck check("normalized_attention_saliency");
  check.shape("probs", probs, {-1, -1}, "Tq,Tk");
  check.shape("query_positions", query_positions, {probs.size(0)}, "Tq");
  check.shape("key_positions", key_positions, {probs.size(1)}, "Tk");
  check.shape("out", out, {probs.size(1)}, "Tk");
  for (index_t j = 0; j < probs.size(1); ++j) {
    double sum = 0.0;
    index_t count = 0;
    for (index_t i = 0; i < probs.size(0); ++i)
      if (query_positions(i) >= key_positions(j)) sum += probs(i, j), ++count;
    out(j) = count > 0 ? static_cast<float>(sum / static_cast<double>(count)) : 0.f;
  }
}

}  // namespace seqmix
