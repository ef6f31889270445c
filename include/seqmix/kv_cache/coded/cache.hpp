// Coded KV cache (issue 22 item 5): keys and values stored as product-quantization codes or as
// 1-bit signs with per-group scales, read directly by decode attention (fast.hpp). README.md of
// kv_cache and docs/operators.md section 6 ("vector-quantized and 1-bit storage") describe it.
//
// Product quantization (KvCodeFormat::pq): a row x [D] is split into m sub-vectors of D / m
// channels; sub-vector s is stored as the index of its nearest centroid in codebook (h, s) of the
// row's KV head h (squared Euclidean distance, ties to the lowest index), one byte per sub-space:
//   x'[s] = C[h][s][code_s].
// Codebooks (<= 256 centroids) are given by the caller or fit by fit_pq_codebooks (k-means with a
// fixed seed and iteration count).
//
// 1-bit (KvCodeFormat::sign1): per group of g channels (g = group_size, 0 = the whole row)
//   scale = mean |x_c| over the group,  bit_c = (x_c >= 0),  x'_c = bit_c ? scale : -scale.
// For fixed signs this scale minimizes the squared error of the group (the least-squares scale of
// sign(x) is <|x|, 1> / g).
//
// Non-finite input (docs/reliability.md): a 1-bit group holding a NaN or an inf gets scale NaN,
// so the whole group reads back as NaN; a PQ row with a NaN or an inf in any channel is flagged
// (one byte per token and role), reads back as NaN and makes every attention row that sees it
// NaN, as the fp32 cache would (possibly a little wider: a row, not an element). Codes are never
// computed from a non-finite distance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/coded/codebooks.hpp"

namespace seqmix {

/// Sizes and formats of a CodedKvCache.
struct CodedKvCacheConfig {
  ///@{
  index_t batch = 1, kv_heads = 1, key_dim = 0, value_dim = 0;  ///< B, Hkv, Dk, Dv
  ///@}
  KvCodeFormat format = KvCodeFormat::sign1;  ///< storage of keys and values
  /// sign1: channels per scale group (0 = the whole row).
  index_t group_size = 32;
  /// pq: the codebooks of keys (dim Dk), one per KV head and sub-space.
  PqCodebooks key_codebooks;
  /// pq: the codebooks of values (dim Dv).
  PqCodebooks value_codebooks;
};

/// A KV cache of one attention layer in a coded format (PQ codes or 1-bit signs, see the header
/// comment): per (batch row b, KV head h) `size(b)` entries, appended in order. Decode attention
/// (coded_kv_cache_attention, reference::coded_kv_cache_attention) reads the codes directly.
/// Not thread-safe: one writer at a time.
class CodedKvCache {
 public:
  /// An empty cache; ShapeError for extents below 1, a format out of range, a sign1 group size
  /// below 0, or (pq) codebooks with 0 or more than 256 centroids, a sub-space count that does not
  /// divide the dimension, a wrong head count or size, or a non-finite centroid.
  explicit CodedKvCache(const CodedKvCacheConfig& config) : config_(config) {
    const ArgCheck check("CodedKvCache");
    check.that(config.batch >= 1, "config.batch", "must be >= 1, got " + std::to_string(config.batch))
        .that(config.kv_heads >= 1, "config.kv_heads", "must be >= 1, got " + std::to_string(config.kv_heads))
        .that(config.key_dim >= 1, "config.key_dim", "must be >= 1, got " + std::to_string(config.key_dim))
        .that(config.value_dim >= 1, "config.value_dim", "must be >= 1, got " + std::to_string(config.value_dim));
    check.enum_value("config.format", config.format, 2);
    check.product("config.kv_heads", config.batch, config.kv_heads);
    if (config.format == KvCodeFormat::sign1) {
      check.that(config.group_size >= 0, "config.group_size", "must be >= 0 (0 = the whole row), got " + std::to_string(config.group_size));
    } else {
      detail::check_codebooks(check, config.key_codebooks, config.kv_heads, config.key_dim, "config.key_codebooks");
      detail::check_codebooks(check, config.value_codebooks, config.kv_heads, config.value_dim, "config.value_codebooks");
    }
    heads_.resize(static_cast<std::size_t>(config.batch * config.kv_heads));
    size_.assign(static_cast<std::size_t>(config.batch), 0);
  }

  /// The configuration it was built with.
  const CodedKvCacheConfig& config() const noexcept { return config_; }
  /// Entries of batch row b (the same in every KV head).
  index_t size(index_t b) const { return size_.at(static_cast<std::size_t>(b)); }

  /// Appends T tokens to every row: keys [B, T, Hkv, Dk], values [B, T, Hkv, Dv]. Validated first.
  void append(const ConstView<float, 4>& keys, const ConstView<float, 4>& values) {
    const ArgCheck check("CodedKvCache::append");
    check.shape("keys", keys, {config_.batch, -1, config_.kv_heads, config_.key_dim}, "B,T,Hkv,Dk");
    check.shape("values", values, {config_.batch, keys.size(1), config_.kv_heads, config_.value_dim}, "B,T,Hkv,Dv");
    for (index_t b = 0; b < config_.batch; ++b) append_unchecked(b, keys.slice(0, b, 1), values.slice(0, b, 1));
  }

  /// Appends T tokens to row b only (rows may then hold different numbers of entries): keys
  /// [1, T, Hkv, Dk], values [1, T, Hkv, Dv]. Validated first.
  void append(index_t row, const ConstView<float, 4>& keys, const ConstView<float, 4>& values) {
    const ArgCheck check("CodedKvCache::append");
    if (row < 0 || row >= config_.batch)
      check.fail("row", "must lie in [0, " + std::to_string(config_.batch) + "), got " + std::to_string(row));
    check.shape("keys", keys, {1, -1, config_.kv_heads, config_.key_dim}, "1,T,Hkv,Dk");
    check.shape("values", values, {1, keys.size(1), config_.kv_heads, config_.value_dim}, "1,T,Hkv,Dv");
    append_unchecked(row, keys, values);
  }

  /// Empties every row.
  void clear() {
    for (Head& hd : heads_) hd = Head();
    std::fill(size_.begin(), size_.end(), 0);
  }

  /// Decoded key of entry j of (b, h) into out [Dk] (the stored approximation; NaN where flagged).
  void read_key(index_t b, index_t h, index_t j, float* out) const { read(b, h, j, true, out); }
  /// Decoded value of entry j of (b, h) into out [Dv].
  void read_value(index_t b, index_t h, index_t j, float* out) const { read(b, h, j, false, out); }

  /// Bytes held for the entries: codes, scales and non-finite flags (not the codebooks; see
  /// codebook_bytes()).
  std::size_t bytes() const noexcept {
    std::size_t n = 0;
    for (const Head& hd : heads_)
      n += hd.key_codes.size() + hd.value_codes.size() + hd.flags.size() +
           (hd.key_bits.size() + hd.value_bits.size()) * sizeof(std::uint16_t) +
           (hd.key_scales.size() + hd.value_scales.size()) * sizeof(float);
    return n;
  }
  /// Bytes of the codebooks (pq; 0 for sign1), shared by every entry.
  std::size_t codebook_bytes() const noexcept {
    return (config_.key_codebooks.data.size() + config_.value_codebooks.data.size()) * sizeof(float) *
           (config_.format == KvCodeFormat::pq ? 1 : 0);
  }

  /// Channels per sign1 scale group of keys (group_size, or Dk when it is 0 or larger).
  index_t key_group() const noexcept { return group_of(config_.key_dim); }
  /// Channels per sign1 scale group of values.
  index_t value_group() const noexcept { return group_of(config_.value_dim); }

  /// \cond INTERNAL
  // Storage of one (b, h). pq: key_codes [n][mk], value_codes [n][mv], flags [n] (bit 0: the
  // key row is non-finite, bit 1: the value row). sign1: keys in chunks of 16 tokens,
  // key_bits [chunk][Dk] (bit i of channel c = token 16 chunk + i), key_scales [chunk][Gk][16]
  // (padding tokens: bits 0, scale 0); values token-major, value_bits [n][ceil(Dv / 16)] (bit i
  // of word u = channel 16 u + i), value_scales [n][Gv].
  struct Head {
    std::vector<std::uint8_t> key_codes, value_codes, flags;
    std::vector<std::uint16_t> key_bits, value_bits;
    std::vector<float> key_scales, value_scales;
    bool any_flag = false;
  };
  const Head& head(index_t b, index_t h) const { return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)]; }
  /// \endcond

 private:
  index_t group_of(index_t D) const noexcept {
    return config_.group_size > 0 && config_.group_size < D ? config_.group_size : D;
  }
  Head& head_mut(index_t b, index_t h) { return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)]; }

  void append_unchecked(index_t b, const ConstView<float, 4>& keys, const ConstView<float, 4>& values) {
    const index_t T = keys.size(1), Dk = config_.key_dim, Dv = config_.value_dim, H = config_.kv_heads;
    std::vector<float> k(static_cast<std::size_t>(Dk)), v(static_cast<std::size_t>(Dv));
    for (index_t h = 0; h < H; ++h) {
      Head& hd = head_mut(b, h);
      index_t n = size_[static_cast<std::size_t>(b)];
      for (index_t t = 0; t < T; ++t, ++n) {
        for (index_t c = 0; c < Dk; ++c) k[c] = keys(0, t, h, c);
        for (index_t c = 0; c < Dv; ++c) v[c] = values(0, t, h, c);
        if (config_.format == KvCodeFormat::pq)
          push_pq(hd, h, k.data(), v.data());
        else
          push_sign1(hd, n, k.data(), v.data());
      }
    }
    size_[static_cast<std::size_t>(b)] += T;
  }

  static void push_codes(const PqCodebooks& cb, index_t h, const float* x, std::vector<std::uint8_t>& codes) {
    const index_t d = cb.sub_dim();
    for (index_t s = 0; s < cb.subspaces; ++s)
      codes.push_back(static_cast<std::uint8_t>(detail::nearest_centroid(x + s * d, cb.centroid(h, s, 0), cb.centroids, d)));
  }

  void push_pq(Head& hd, index_t h, const float* k, const float* v) {
    const bool kf = detail::all_finite(k, config_.key_dim), vf = detail::all_finite(v, config_.value_dim);
    if (kf)
      push_codes(config_.key_codebooks, h, k, hd.key_codes);
    else
      hd.key_codes.insert(hd.key_codes.end(), static_cast<std::size_t>(config_.key_codebooks.subspaces), 0);
    if (vf)
      push_codes(config_.value_codebooks, h, v, hd.value_codes);
    else
      hd.value_codes.insert(hd.value_codes.end(), static_cast<std::size_t>(config_.value_codebooks.subspaces), 0);
    const std::uint8_t flag = static_cast<std::uint8_t>((kf ? 0 : 1) | (vf ? 0 : 2));
    hd.flags.push_back(flag);
    hd.any_flag = hd.any_flag || flag != 0;
  }

  // Mean |x| of n channels; NaN when any is NaN or inf.
  static float mean_abs(const float* x, index_t n) noexcept {
    if (!detail::all_finite(x, n)) return std::numeric_limits<float>::quiet_NaN();
    double s = 0.0;
    for (index_t c = 0; c < n; ++c) s += std::abs(static_cast<double>(x[c]));
    return static_cast<float>(s / static_cast<double>(n));
  }

  void push_sign1(Head& hd, index_t n, const float* k, const float* v) {
    const index_t Dk = config_.key_dim, Dv = config_.value_dim, gk = key_group(), gv = value_group();
    const index_t Gk = (Dk + gk - 1) / gk, Gv = (Dv + gv - 1) / gv, W = (Dv + 15) / 16;
    const index_t chunk = n / 16, lane = n % 16;
    if (lane == 0) {
      hd.key_bits.resize(static_cast<std::size_t>((chunk + 1) * Dk), 0);
      hd.key_scales.resize(static_cast<std::size_t>((chunk + 1) * Gk * 16), 0.f);
    }
    for (index_t c = 0; c < Dk; ++c)
      if (k[c] >= 0.f) hd.key_bits[chunk * Dk + c] |= static_cast<std::uint16_t>(1u << lane);
    for (index_t g = 0; g < Gk; ++g)
      hd.key_scales[(chunk * Gk + g) * 16 + lane] = mean_abs(k + g * gk, std::min(gk, Dk - g * gk));
    const std::size_t w0 = hd.value_bits.size();
    hd.value_bits.resize(w0 + static_cast<std::size_t>(W), 0);
    for (index_t c = 0; c < Dv; ++c)
      if (v[c] >= 0.f) hd.value_bits[w0 + c / 16] |= static_cast<std::uint16_t>(1u << (c % 16));
    for (index_t g = 0; g < Gv; ++g) hd.value_scales.push_back(mean_abs(v + g * gv, std::min(gv, Dv - g * gv)));
  }

  void read(index_t b, index_t h, index_t j, bool key, float* out) const {
    const ArgCheck check(key ? "CodedKvCache::read_key" : "CodedKvCache::read_value");
    if (b < 0 || b >= config_.batch || h < 0 || h >= config_.kv_heads || j < 0 || j >= size(b))
      check.fail("entry", "(" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(j) + ") is out of range");
    const Head& hd = head(b, h);
    const index_t D = key ? config_.key_dim : config_.value_dim;
    if (config_.format == KvCodeFormat::pq) {
      const PqCodebooks& cb = key ? config_.key_codebooks : config_.value_codebooks;
      const index_t m = cb.subspaces, d = cb.sub_dim();
      if (hd.flags[j] & (key ? 1 : 2)) {
        std::fill(out, out + D, std::numeric_limits<float>::quiet_NaN());
        return;
      }
      const std::uint8_t* codes = (key ? hd.key_codes.data() : hd.value_codes.data()) + j * m;
      for (index_t s = 0; s < m; ++s) std::copy_n(cb.centroid(h, s, codes[s]), d, out + s * d);
      return;
    }
    if (key) {
      const index_t g = key_group(), G = (D + g - 1) / g, chunk = j / 16, lane = j % 16;
      for (index_t c = 0; c < D; ++c) {
        const float s = hd.key_scales[(chunk * G + c / g) * 16 + lane];
        out[c] = (hd.key_bits[chunk * D + c] >> lane) & 1u ? s : -s;
      }
    } else {
      const index_t g = value_group(), G = (D + g - 1) / g, W = (D + 15) / 16;
      for (index_t c = 0; c < D; ++c) {
        const float s = hd.value_scales[j * G + c / g];
        out[c] = (hd.value_bits[j * W + c / 16] >> (c % 16)) & 1u ? s : -s;
      }
    }
  }

  CodedKvCacheConfig config_;
  std::vector<Head> heads_;
  std::vector<index_t> size_;
};

/// Options of coded_kv_cache_attention.
struct CodedKvAttentionOptions {
  /// Multiplies q.k; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale;
  /// Query i of Tq sits at entry position size(b) - Tq + i and sees the entries up to it (the Tq
  /// newest entries are the queries' own tokens, appended before the call). false: every query
  /// sees every entry of its row.
  bool causal = true;
};

}  // namespace seqmix
