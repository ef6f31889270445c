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
//
// The parts: config.hpp (KvCacheConfig), block.hpp (one block: element access, construction),
// head.hpp (the storage of one (b, h)), block_edit.hpp (moving entries between blocks),
// head_ops.hpp (flush, residual upkeep, compaction), saliency.hpp; this file is the KvCache class
// and includes them all.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/block.hpp"
#include "seqmix/kv_cache/block_edit.hpp"
#include "seqmix/kv_cache/config.hpp"
#include "seqmix/kv_cache/head.hpp"
#include "seqmix/kv_cache/head_ops.hpp"
#include "seqmix/kv_cache/quantize.hpp"
#include "seqmix/kv_cache/requantize.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix/kv_cache/saliency.hpp"

namespace seqmix {

/// The KV cache of one attention layer (docs/operators.md section 6): per (batch row, KV head) an
/// ordered list of entries (key, value, int64 position) in the configured storage formats, with
/// append, truncate / rollback, retain (eviction), compaction and dequantizing reads;
/// kv_cache_attention reads it directly. Not thread-safe: one writer at a time.
class KvCache {
 public:
  /// An empty cache; ShapeError for an extent out of range or a format the role does not support.
  explicit KvCache(const KvCacheConfig& config) : config_(config) {
    const ArgCheck check("KvCache");
    // Each extent is bounded so that every size and byte count derived from it (heads, block
    // bytes = 32 * dim * 4, residual + 32) is far from overflowing index_t.
    auto extent = [&](index_t v, index_t lo, index_t hi, const char* name) {
      if (v < lo || v > hi)
        check.fail(name, "must lie in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
    };
    extent(config.batch, 1, kMaxExtent, "config.batch");
    extent(config.kv_heads, 1, kMaxExtent, "config.kv_heads");
    extent(config.key_dim, 1, kMaxDim, "config.key_dim");
    extent(config.value_dim, 1, kMaxDim, "config.value_dim");
    extent(config.group_size, 0, kMaxDim, "config.group_size");
    extent(config.residual, 0, kMaxExtent, "config.residual");
    extent(config.rollback, 0, kMaxExtent, "config.rollback");
    if (config.batch > kMaxExtent / config.kv_heads)
      check.fail("config.kv_heads", "times config.batch must be <= " + std::to_string(kMaxExtent) + ", got " +
                                        std::to_string(config.kv_heads) + " x " + std::to_string(config.batch));
    check_format(check, config.key_format, "config.key_format", true);
    check_format(check, config.value_format, "config.value_format", false);
    check.that(config.key_quant == KeyQuant::per_channel || config.key_quant == KeyQuant::per_token, "config.key_quant",
               "is out of range (" + std::to_string(static_cast<int>(config.key_quant)) + ")");
    if (config.mixed) {
      check_format(check, config.mixed->key_format, "config.mixed.key_format", true);
      check_format(check, config.mixed->value_format, "config.mixed.value_format", false);
      const float f = config.mixed->salient_fraction;
      check.that(f >= 0.f && f <= 1.f, "config.mixed.salient_fraction", "must lie in [0, 1], got " + std::to_string(f));
    }
    if (config.coded) {
      const KvCodedStorage& cs = *config.coded;
      check.that(!config.mixed, "config.coded", "cannot be combined with config.mixed (ZipCache's two formats)");
      check.enum_value("config.coded.format", cs.format, 2);
      if (cs.format == KvCodeFormat::sign1)
        check.that(cs.group_size >= 0, "config.coded.group_size",
                   "must be >= 0 (0 = the whole row), got " + std::to_string(cs.group_size));
      else {
        detail::check_codebooks(check, cs.key_codebooks, config.kv_heads, config.key_dim, "config.coded.key_codebooks");
        detail::check_codebooks(check, cs.value_codebooks, config.kv_heads, config.value_dim, "config.coded.value_codebooks");
      }
    }
    heads_.reserve(static_cast<std::size_t>(config.batch * config.kv_heads));
    for (index_t i = 0; i < config.batch * config.kv_heads; ++i) {
      heads_.emplace_back(config.arena);
      heads_.back().kv_head = i % config.kv_heads;
    }
    next_position_.assign(static_cast<std::size_t>(config.batch), 0);
  }

  /// Positions lie in [0, kMaxPosition): far enough from INT64_MAX that position arithmetic
  /// (next position, window and ALiBi distances) cannot overflow.
  static constexpr std::int64_t kMaxPosition = std::int64_t{1} << 62;
  /// Bounds of batch, kv_heads (and their product), residual and rollback; of key_dim, value_dim
  /// and group_size.
  ///@{
  static constexpr index_t kMaxExtent = index_t{1} << 31, kMaxDim = index_t{1} << 24;

  ///@}
  /// The configuration it was built with.
  const KvCacheConfig& config() const noexcept { return config_; }

  /// keys [B,T,Hkv,Dk], values [B,T,Hkv,Dv]; positions [B,T] (default: continuing from the last
  /// appended position of each row, starting at 0), strictly increasing and beyond every position
  /// already appended; saliency [B,T,Hkv] (ZipCache score, larger = more salient).
  void append(const ConstView<float, 4>& keys, const ConstView<float, 4>& values,
              const IndexTable& positions = {}, const ConstView<float, 3>& saliency = {}) {
    KvAppendInputs in;
    in.keys = keys, in.values = values, in.positions = positions, in.saliency = saliency;
    append(in);
  }

  /// Ragged append (KvAppendInputs): each sequence of in.batch appends its own number of tokens
  /// to its own cache row in one call. Everything is validated before any row changes.
  void append(const KvAppendInputs& in) {
    const ArgCheck check("KvCache::append");
    const index_t H = config_.kv_heads;
    const bool rows_are_sequences = !in.batch.packed() && !in.batch.slotted();
    check.shape("keys", in.keys, {rows_are_sequences ? config_.batch : -1, -1, H, config_.key_dim}, "Bt,T,Hkv,Dk");
    const index_t Bt = in.keys.size(0), T = in.keys.size(1);
    check.shape("values", in.values, {Bt, T, H, config_.value_dim}, "Bt,T,Hkv,Dv");
    in.positions.check_optional_shape(check, "positions", {Bt, T}, "Bt,T");
    check.optional_shape("saliency", in.saliency, {Bt, T, H}, "Bt,T,Hkv");
    // Dense rows without slots need no map (and SequenceMap::make builds message strings on
    // every call: this keeps the plain decode append free of heap allocation).
    const bool ragged = !rows_are_sequences || in.batch.has_initial_state.has_value();
    const SequenceMap map = ragged ? SequenceMap::make("KvCache::append", in.batch, Bt, T, true, config_.batch) : SequenceMap();
    const index_t N = ragged ? map.sequences() : Bt;
    const auto span = [&](index_t n) {
      if (ragged) return map[n];
      SequenceSpan s;
      s.batch_row = n, s.token_begin = 0, s.tokens = T, s.state_row = n, s.read_state = true;
      return s;
    };
    if (in.rope) detail::check_fused_rope_table(check, *in.rope, config_.key_dim, detail::FusedRopeUse::keys);
    for (index_t n = 0; n < N; ++n) {
      const SequenceSpan s = span(n);
      if (s.state_row < 0) continue;
      const std::int64_t start = s.read_state ? next_position_[s.state_row] : 0;
      if (!in.positions.has_value()) {
        if (s.tokens > kMaxPosition - start)
          check.fail("positions", "would pass " + std::to_string(kMaxPosition) + " in row " + std::to_string(s.state_row) +
                                      " (next position " + std::to_string(start) + ", " + std::to_string(s.tokens) + " tokens)");
        if (in.rope && s.tokens > 0 && start + s.tokens > in.rope->positions())
          check.fail("rope", "covers positions [0, " + std::to_string(in.rope->positions()) + "), but row " +
                                 std::to_string(s.state_row) + " would append up to position " +
                                 std::to_string(start + s.tokens - 1));
        continue;
      }
      for (index_t t = 0; t < s.tokens; ++t) {
        const std::int64_t p = in.positions(s.batch_row, s.token_begin + t);
        const std::int64_t floor = t == 0 ? start : in.positions(s.batch_row, s.token_begin + t - 1) + 1;
        if (p < floor || p >= kMaxPosition)
          check.fail("positions", "must be strictly increasing, >= " + std::to_string(floor) + " and < " +
                                      std::to_string(kMaxPosition) + " (row " + std::to_string(s.state_row) + ", token " +
                                      std::to_string(s.token_begin + t) + "), got " + std::to_string(p));
        if (in.rope && p >= in.rope->positions())
          check.fail("positions", "entry " + std::to_string(s.token_begin + t) + " of row " + std::to_string(s.batch_row) +
                                      " is " + std::to_string(p) + ", outside the rope table's positions [0, " +
                                      std::to_string(in.rope->positions()) + ")");
      }
    }
    // Room for every sequence's tokens first: an allocation failure (KvArenaFull with an arena)
    // then changes nothing. A failure while flushing (after every token is in) leaves the tokens
    // appended, some still in the residual window (exact; the next append flushes them).
    for (index_t n = 0; n < N; ++n) {
      const SequenceSpan s = span(n);
      if (s.state_row < 0) continue;
      for (index_t h = 0; h < H; ++h) {
        detail::KvResidual& r = head_mut(s.state_row, h).residual;
        const std::size_t rows = static_cast<std::size_t>((s.read_state ? r.size() : 0) + s.tokens);
        const auto grow = [](auto& v, std::size_t n) {  // geometric, like push_back
          if (n > v.capacity()) v.reserve(std::max(n, 2 * v.capacity()));
        };
        grow(r.keys, rows * static_cast<std::size_t>(config_.key_dim));
        grow(r.values, rows * static_cast<std::size_t>(config_.value_dim));
        grow(r.positions, rows), grow(r.given_saliency, rows), grow(r.attention_sum, rows), grow(r.attention_queries, rows);
      }
    }
    const float no_saliency = std::numeric_limits<float>::quiet_NaN();
    for (index_t n = 0; n < N; ++n) {
      const SequenceSpan s = span(n);
      if (s.state_row < 0) continue;
      const index_t b = s.state_row, r0 = s.batch_row, t0 = s.token_begin, T1 = s.tokens;
      if (!s.read_state) clear_row(b);
      for (index_t h = 0; h < H; ++h) {
        detail::KvResidual& r = head_mut(b, h).residual;
        for (index_t t = t0; t < t0 + T1; ++t) {
          for (index_t c = 0; c < config_.key_dim; ++c) r.keys.push_back(in.keys(r0, t, h, c));
          for (index_t c = 0; c < config_.value_dim; ++c) r.values.push_back(in.values(r0, t, h, c));
          r.positions.push_back(in.positions.has_value() ? in.positions(r0, t) : next_position_[b] + (t - t0));
          if (in.rope)  // the row just stored, rotated where it lies (room was reserved above)
            detail::rope_row_in_place(*in.rope, static_cast<index_t>(r.positions.back()),
                              r.keys.data() + r.keys.size() - static_cast<std::size_t>(config_.key_dim), 1);
          r.given_saliency.push_back(in.saliency.has_value() ? in.saliency(r0, t, h) : no_saliency);
          r.attention_sum.push_back(0.f);
          r.attention_queries.push_back(0.f);
        }
      }
      if (T1 > 0) next_position_[b] = (in.positions.has_value() ? in.positions(r0, t0 + T1 - 1) : next_position_[b] + T1 - 1) + 1;
    }
    for (index_t n = 0; n < N; ++n)
      if (span(n).state_row >= 0)
        for (index_t h = 0; h < H; ++h) detail::flush(config_, head_mut(span(n).state_row, h));
  }

  /// Rolls row b back to `position` (speculative rollback): every entry at a position >= position
  /// is dropped in every KV head, and the next default position becomes min(next, position).
  /// Within config.rollback newest tokens the cache is left exactly as if the dropped tokens had
  /// never been appended (flushes they caused are undone from the kept fp32 rows), so truncate then
  /// re-append equals appending only the kept tokens, bit for bit, in every format. Deeper, or
  /// after retain() / compact() / replace() on the head, the entries are dropped and the surviving
  /// block entries keep their codes.
  void truncate(index_t b, std::int64_t position) {
    if (b < 0 || b >= config_.batch) check_head(ArgCheck("KvCache::truncate"), b, 0);  // throws
    if (position < 0) throw ShapeError("KvCache::truncate", "position", "must be >= 0, got " + std::to_string(position));
    if (position >= next_position_[b]) return;
    for (index_t h = 0; h < config_.kv_heads; ++h) truncate_head(head_mut(b, h), position);
    next_position_[b] = position;
  }

  /// Empties row b (every KV head) and restarts its positions at 0: a row handed to a new request.
  void reset(index_t b) {
    check_head(ArgCheck("KvCache::reset"), b, 0);
    for (index_t h = 0; h < config_.kv_heads; ++h) {
      head_mut(b, h) = detail::KvHead(config_.arena);
      head_mut(b, h).kv_head = h;
    }
    next_position_[b] = 0;
  }

  /// The arena given in the configuration (null: the heap).
  KvArena* arena() const noexcept { return config_.arena; }

  /// The position the next appended token of row b gets by default.
  std::int64_t next_position(index_t b) const { return next_position_.at(static_cast<std::size_t>(b)); }

  /// Number of entries of (b, h).
  index_t size(index_t b, index_t h) const { return head(b, h).size(); }

  /// Positions of the entries of (b, h), in entry order (allocates the vector).
  std::vector<std::int64_t> positions(index_t b, index_t h) const {
    const detail::KvHead& hd = head(b, h);
    std::vector<std::int64_t> out;
    out.reserve(static_cast<std::size_t>(hd.size()));
    for (const auto& s : hd.order) out.push_back(hd.blocks[s.block].positions[s.slot]);
    out.insert(out.end(), hd.residual.positions.begin(), hd.residual.positions.end());
    return out;
  }

  /// Entry index of a position; ShapeError if it is not (or no longer) in the cache.
  index_t find_position(index_t b, index_t h, std::int64_t position) const {
    const std::vector<std::int64_t> pos = positions(b, h);
    const auto it = std::lower_bound(pos.begin(), pos.end(), position);
    if (it == pos.end() || *it != position)
      throw ShapeError("KvCache::find_position", "position",
                       "= " + std::to_string(position) + " is not in the cache of (b=" + std::to_string(b) +
                           ", h=" + std::to_string(h) + "): evicted or never appended");
    return static_cast<index_t>(it - pos.begin());
  }

  ///@{
  /// Dequantized keys / values of every entry, in entry order: out [size(b,h), Dk or Dv].
  void read_keys(index_t b, index_t h, const TensorView<float, 2>& out) const { read(b, h, out, true, "read_keys"); }
  void read_values(index_t b, index_t h, const TensorView<float, 2>& out) const { read(b, h, out, false, "read_values"); }

  ///@}
  ///@{
  /// One entry, dequantized (out holds Dk / Dv floats).
  void read_key(index_t b, index_t h, index_t entry, float* out) const {
    const detail::KvHead& hd = head(b, h);
    check_entry("KvCache::read_key", hd, entry);
    if (entry >= static_cast<index_t>(hd.order.size())) {
      const float* src = hd.residual.keys.data() + (entry - hd.order.size()) * config_.key_dim;
      std::copy(src, src + config_.key_dim, out);
      return;
    }
    const detail::KvSlot s = hd.order[entry];
    if (config_.coded) return detail::decode_coded_entry(config_, h, detail::view_of(hd.blocks[s.block]), s.slot, true, out);
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
    if (config_.coded) return detail::decode_coded_entry(config_, h, detail::view_of(hd.blocks[s.block]), s.slot, false, out);
    detail::value_row(hd.blocks[s.block], config_.group_size, config_.value_dim, s.slot, out);
  }

  ///@}
  /// Keeps the entries whose indices are listed (strictly increasing) and drops the others.
  void retain(index_t b, index_t h, const std::vector<index_t>& kept) {
    const ArgCheck check("KvCache::retain");
    check_head(check, b, h);
    detail::KvHead& hd = head_mut(b, h);
    for (std::size_t i = 0; i < kept.size(); ++i)
      if (kept[i] < 0 || kept[i] >= hd.size() || (i > 0 && kept[i] <= kept[i - 1]))
        check.fail("kept", "must be strictly increasing entry indices in [0, " + std::to_string(hd.size()) +
                               "), got " + std::to_string(kept[i]) + " at index " + std::to_string(i));
    retain_head(hd, kept.data(), static_cast<index_t>(kept.size()));
  }

  /// Merges the partly filled blocks of (b, h): per format pair (one pair, or ZipCache's high and
  /// low pairs, which never mix), the entries of the blocks holding fewer than 32 are repacked in
  /// entry order into full blocks plus at most one partly filled one. Full blocks, and a partly
  /// filled block alone in its format pair, are not touched. Entry order, positions and values are
  /// preserved exactly, and so are float keys and per-token quantized keys (codes and parameters
  /// move). Per-channel quantized keys (KIVI) gathered from several blocks get new per-block
  /// parameters: they are dequantized and requantized, adding at most half of the merged block's
  /// new step (scale / 2, plus float rounding) per element to their error, and only when blocks
  /// merge. Afterwards bytes() is within one block per format pair of the packed size.
  void compact(index_t b, index_t h) {
    const ArgCheck check("KvCache::compact");
    check_head(check, b, h);
    detail::compact_head(config_, head_mut(b, h));
  }

  /// compact(b, h) for every batch row and KV head.
  void compact() {
    for (auto& hd : heads_) detail::compact_head(config_, hd);
  }

  /// Re-encodes one entry with a new key [Dk] and value [Dv] (merging, compensation tokens). In a
  /// per-channel key block this refits that block's key parameters (the other keys of the block
  /// are requantized once, an error of at most half their new scale); elsewhere only the entry
  /// changes.
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
    hd.flushed.clear();  // a flushed entry changes: its kept fp32 row is stale
    const detail::KvSlot s = hd.order[entry];
    detail::KvBlock& blk = hd.blocks[s.block];
    const index_t t = s.slot;
    if (blk.coded) {  // codes of one entry: re-encoded alone
      detail::encode_coded_entry(config_, h, blk, t, key, value);
      return;
    }
    // The value row has its own parameters: re-encode it alone.
    if (is_quantized(blk.value_format)) {
      auto scratch = detail::kv_vector<std::uint8_t>(config_.arena, static_cast<std::size_t>(Dv));
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
      auto K = detail::kv_vector<float>(config_.arena, static_cast<std::size_t>(blk.count * Dk));
      for (index_t r = 0; r < blk.count; ++r)
        for (index_t c = 0; c < Dk; ++c) K[r * Dk + c] = detail::key_element(blk, config_.key_quant, key_group(), c, r);
      std::copy(key, key + Dk, K.begin() + t * Dk);
      detail::rebuild_keys(config_, blk, K.data());
    }
  }

  /// ZipCache saliency for tokens still in the residual window: probs [Tq, size(b,h)] are the
  /// softmax probabilities of Tq queries at query_positions [Tq] over every entry of (b, h). A
  /// residual token accumulates the probability of each query at or after its position.
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

  /// Re-encodes, in (b, h), every block whose entries are all at positions < before_position in
  /// lower-bit formats: a block's key (value) format becomes key_format (value_format) when that
  /// has fewer bits, else it stays. The entries are decoded with the block's parameters and
  /// quantized again with new ones (the existing quantizers; error adds at most half of the new
  /// step). The residual window and newer blocks are untouched; positions and order are kept;
  /// exact rollback is no longer possible past this call. Returns the entries re-encoded.
  /// The age-based bit schedule (policies/age_schedule.hpp) calls it per age band.
  index_t requantize_older(index_t b, index_t h, std::int64_t before_position, KvFormat key_format,
                           KvFormat value_format) {
    const ArgCheck check("KvCache::requantize_older");
    check_head(check, b, h);
    check.that(!config_.coded, "config.coded", "is set: coded storage (pq / sign1) has no lower-bit formats to move to");
    check_format(check, key_format, "key_format", true);
    check_format(check, value_format, "value_format", false);
    return detail::requantize_older(config_, head_mut(b, h), before_position, key_format, value_format);
  }

  /// Memory held: codes, parameters, positions, the entry map, the residual window and the rows
  /// kept for rollback.
  std::size_t bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& hd : heads_) {
      for (const auto& blk : hd.blocks) total += blk.bytes();
      total += hd.order.size() * sizeof(detail::KvSlot) + hd.residual.bytes();
      for (const auto& g : hd.flushed) total += g.rows.bytes();  // rollback rows (config.rollback)
    }
    return total;
  }

  /// Bytes of the pq codebooks of coded storage (KvCacheConfig::coded), shared by every entry and
  /// not counted by bytes(); 0 otherwise.
  std::size_t codebook_bytes() const noexcept {
    if (!config_.coded || config_.coded->format != KvCodeFormat::pq) return 0;
    return (config_.coded->key_codebooks.data.size() + config_.coded->value_codebooks.data.size()) * sizeof(float);
  }

  /// Entries over every (b, h).
  index_t total_entries() const noexcept {
    index_t n = 0;
    for (const auto& hd : heads_) n += hd.size();
    return n;
  }

  /// bytes() per entry of one (b, h): what a token costs in one KV head.
  double bytes_per_token() const noexcept {
    const index_t n = total_entries();
    return n > 0 ? static_cast<double>(bytes()) / static_cast<double>(n) : 0.0;
  }

  /// Channels per per-token key group.
  index_t key_group() const noexcept { return config_.group_size > 0 ? config_.group_size : config_.key_dim; }

  /// \private Storage of (b, h), read by kv_cache_attention and the policies (internal).
  const detail::KvHead& head(index_t b, index_t h) const {
    check_head(ArgCheck("KvCache"), b, h);
    return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)];
  }

 private:
  detail::KvHead& head_mut(index_t b, index_t h) {
    check_head(ArgCheck("KvCache"), b, h);
    return heads_[static_cast<std::size_t>(b * config_.kv_heads + h)];
  }

  static void check_format(const ArgCheck& check, KvFormat f, const char* name, bool key) {
    check.that(static_cast<int>(f) <= static_cast<int>(KvFormat::int2), name,
               "is out of range (" + std::to_string(static_cast<int>(f)) + ")");
    if (key) check.that(f != KvFormat::int2, name, "int2 is only supported for values (2-bit keys lose the ranking)");
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

  /// retain() on one head, after validation: kept[0..n) strictly increasing entry indices.
  void retain_head(detail::KvHead& hd, const index_t* kept, index_t n) {
    KvArena* const A = config_.arena;
    hd.flushed.clear();  // entries change: flushes can no longer be undone
    const index_t n_blocks_entries = static_cast<index_t>(hd.order.size());
    auto keep = detail::kv_vector<detail::KvVector<char>>(A);
    keep.reserve(hd.blocks.size());
    for (std::size_t k = 0; k < hd.blocks.size(); ++k)
      keep.push_back(detail::kv_vector<char>(A, static_cast<std::size_t>(hd.blocks[k].count), 0));
    auto kept_residual = detail::kv_vector<index_t>(A);
    for (index_t i = 0; i < n; ++i) {
      const index_t e = kept[i];
      if (e < n_blocks_entries)
        keep[hd.order[e].block][hd.order[e].slot] = 1;
      else
        kept_residual.push_back(e - n_blocks_entries);
    }
    // New slot of every kept slot (its rank among its block's kept slots), and new block ids.
    auto new_slot = detail::kv_vector<detail::KvVector<std::uint32_t>>(A);
    new_slot.reserve(hd.blocks.size());
    auto new_block = detail::kv_vector<std::uint32_t>(A, hd.blocks.size(), 0);
    auto blocks = detail::kv_vector<detail::KvBlock>(A);
    for (std::size_t k = 0; k < hd.blocks.size(); ++k) {
      new_slot.push_back(detail::kv_vector<std::uint32_t>(A, keep[k].size(), 0));
      std::uint32_t rank = 0;
      for (std::size_t t = 0; t < keep[k].size(); ++t)
        if (keep[k][t]) new_slot[k][t] = rank++;
      if (rank == 0) continue;
      if (rank != static_cast<std::uint32_t>(hd.blocks[k].count)) detail::compact_block(hd.blocks[k], config_, keep[k]);
      new_block[k] = static_cast<std::uint32_t>(blocks.size());
      blocks.push_back(std::move(hd.blocks[k]));
    }
    auto order = detail::kv_vector<detail::KvSlot>(A);
    for (index_t i = 0; i < n; ++i)
      if (kept[i] < n_blocks_entries) {
        const detail::KvSlot s = hd.order[kept[i]];
        order.push_back({new_block[s.block], new_slot[s.block][s.slot]});
      }
    hd.blocks = std::move(blocks);
    hd.order = std::move(order);
    hd.order.shrink_to_fit();
    detail::keep_residual(config_, hd.residual, kept_residual);
    // Scattered eviction leaves many partly filled blocks; merge them once the head's blocks are
    // less than half full on average. Not after every retain: merging per-channel quantized keys
    // requantizes them, and a threshold makes that rare (an entry is requantized at most once per
    // halving of the block fill) while keeping memory within 2x of the packed size.
    if (2 * static_cast<index_t>(hd.order.size()) < detail::kKvBlockTokens * static_cast<index_t>(hd.blocks.size()))
      detail::compact_head(config_, hd);
  }


  /// Empties row b keeping its storage's capacity (append of a new request: no reallocation).
  void clear_row(index_t b) {
    for (index_t h = 0; h < config_.kv_heads; ++h) {
      detail::KvHead& hd = head_mut(b, h);
      hd.blocks.clear(), hd.order.clear(), hd.flushed.clear();
      detail::drop_residual_front(config_, hd.residual, hd.residual.size());
    }
    next_position_[b] = 0;
  }

  void truncate_head(detail::KvHead& hd, std::int64_t position) {
    // Entries in order have increasing positions: count those below `position`.
    index_t kept = 0;
    for (const auto& s : hd.order) kept += hd.blocks[s.block].positions[s.slot] < position ? 1 : 0;
    for (const std::int64_t p : hd.residual.positions) kept += p < position ? 1 : 0;
    // Tokens a cache of `kept` appended tokens has flushed into blocks (groups of 32 leave the
    // residual window while it holds R + 32 or more).
    const index_t Bt = detail::kKvBlockTokens, R = config_.residual;
    const index_t flushed = kept >= R ? (kept - R) / Bt * Bt : 0;
    while (!hd.flushed.empty() && (static_cast<index_t>(hd.order.size()) > flushed ||
                                   hd.flushed.back().rows.positions.back() >= position))
      detail::unflush_newest(config_, hd);
    if (kept >= static_cast<index_t>(hd.order.size())) {
      detail::keep_residual_front(config_, hd.residual, kept - static_cast<index_t>(hd.order.size()));
      return;
    }
    auto rows = detail::kv_vector<index_t>(config_.arena, static_cast<std::size_t>(kept));
    std::iota(rows.begin(), rows.end(), index_t{0});
    retain_head(hd, rows.data(), kept);
  }

  void read(index_t b, index_t h, const TensorView<float, 2>& out, bool keys, const char* op) const {
    const ArgCheck check(std::string("KvCache::") + op);
    check_head(check, b, h);
    const detail::KvHead& hd = head(b, h);
    const index_t D = keys ? config_.key_dim : config_.value_dim;
    check.shape("out", out, {hd.size(), D}, keys ? "size(b,h),Dk" : "size(b,h),Dv");
    auto row = detail::kv_vector<float>(config_.arena, static_cast<std::size_t>(D));
    for (index_t e = 0; e < hd.size(); ++e) {
      if (keys)
        read_key(b, h, e, row.data());
      else
        read_value(b, h, e, row.data());
      for (index_t c = 0; c < D; ++c) out(e, c) = row[c];
    }
  }

  KvCacheConfig config_;
  std::vector<detail::KvHead> heads_;
  std::vector<std::int64_t> next_position_;
};

}  // namespace seqmix
