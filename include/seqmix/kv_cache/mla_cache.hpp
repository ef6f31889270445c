// MlaLatentCache: an owner of MLA's latent cache, as KvCache is for K/V (docs/operators.md
// section 10). Per batch row an ordered list of tokens, each with
//   latent c [d_c]    fp32 / f16 / bf16 values, or int8 / int4 codes with the asymmetric min-max
//                     (scale, min) of kv_cache/quantize.hpp per group of group_size channels of
//                     the token (mla_latent.hpp's rows: the same quantizer and the same codes)
//   rotary key r [d_r] fp32 / f16 / bf16, rotated at the token's position when appended with a
//                     rope table (it carries the position; never quantized)
//   position          int64, strictly increasing within the row
// Every token is stored on its own (no groups across tokens), so truncate(b, position) leaves
// the row exactly as if the dropped tokens had never been appended, at any depth, and a re-append
// stores the same bytes again.
//
//   mla_latent_cache_decode            mla_decode's absorbed kernel reading the rows in place
//                                      (float rows widened, quantized rows decoded, one block of
//                                      64 tokens at a time into the task's buffer; no copy of the
//                                      cache, no allocation after a first call of the same shape)
//   reference::mla_latent_cache_decode reference::mla (naive expanded, double) over each row's
//                                      decoded tokens
// Everything an operation needs is checked before the cache or an output changes. Not
// thread-safe: one writer at a time (decodes may run concurrently with each other).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/mla/reference.hpp"
#include "seqmix/kv_cache/arena.hpp"
#include "seqmix/kv_cache/mla_latent.hpp"

namespace seqmix {

/// What one MlaLatentCache stores and how. Defaults: one row, fp16 latents and rotary keys, one
/// quantization group per token, heap storage.
struct MlaLatentCacheConfig {
  index_t batch = 1;                     ///< cache rows (sequences)
  index_t latent_dim = 0;                ///< d_c (kv_lora_rank)
  index_t rope_dim = 0;                  ///< d_r (qk_rope_head_dim)
  KvFormat format = KvFormat::f16;       ///< latent storage: f32, f16, bf16, int8 or int4
  KvFormat rope_format = KvFormat::f16;  ///< rotary key storage: f32, f16 or bf16
  index_t group_size = 0;                ///< channels per (scale, min) group of an int8 / int4 latent; 0 = the whole row
  /// Caller-provided storage (arena.hpp): every byte the rows hold comes from it (KvArenaFull
  /// when it runs out; the cache is then unchanged); null = the heap. Not owned.
  KvArena* arena = nullptr;
};

/// New tokens for an MlaLatentCache: sequence n appends its first lengths[n] tokens (default T) to
/// cache row rows[n] (default n).
struct MlaCacheAppendInputs {
  ConstView<float, 3> c_kv;    ///< [N, T, d_c]
  ConstView<float, 3> k_rope;  ///< [N, T, d_r], unrotated when rope is given
  /// [N, T] int32 or int64, optional: each token's position, strictly increasing and at or
  /// beyond the row's next_position(); default continues the row.
  IndexTable positions = {};
  IndexList rows = {};     ///< [N], optional: the cache row of sequence n (distinct; -1 = append nothing)
  IndexList lengths = {};  ///< [N], optional: tokens of sequence n, in [0, T] (ragged appends)
  /// Rotary embedding fused into the append, or nullptr: each k_rope row is rotated at its
  /// position in fp32 before it is stored. Must outlive the call.
  const RopeTable* rope = nullptr;
};

class MlaLatentCache;

/// One query per cache row against an MlaLatentCache.
struct MlaCacheDecodeInputs {
  ConstView<float, 3> q_nope;           ///< [batch, H, d_nope]
  ConstView<float, 3> q_rope;           ///< [batch, H, d_r], rotated
  const MlaLatentCache* cache = nullptr;  ///< read only
  MlaWeights weights;                   ///< per-head up-projections
};

/// The latent cache of one MLA layer: per batch row an ordered list of (latent, rotary key,
/// position), with append, truncate / rollback, reset and decoded reads; mla_latent_cache_decode
/// reads it in place. Not thread-safe: one writer at a time.
class MlaLatentCache {
 public:
  /// Bounds of batch, latent_dim, rope_dim and group_size.
  static constexpr index_t kMaxExtent = index_t{1} << 31;
  /// Positions lie in [0, kMaxPosition), as in KvCache.
  static constexpr std::int64_t kMaxPosition = std::int64_t{1} << 62;

  /// An empty cache; ShapeError for an extent out of range or a format the role does not support.
  explicit MlaLatentCache(const MlaLatentCacheConfig& config) : config_(config) {
    const ArgCheck check("MlaLatentCache");
    const auto extent = [&](index_t v, index_t lo, const char* name) {
      if (v < lo || v > kMaxExtent)
        check.fail(name, "must lie in [" + std::to_string(lo) + ", " + std::to_string(kMaxExtent) + "], got " +
                             std::to_string(v));
    };
    extent(config.batch, 1, "config.batch");
    extent(config.latent_dim, 1, "config.latent_dim");
    extent(config.rope_dim, 1, "config.rope_dim");
    extent(config.group_size, 0, "config.group_size");
    const KvFormat f = config.format, r = config.rope_format;
    if (f != KvFormat::f32 && f != KvFormat::f16 && f != KvFormat::bf16 && f != KvFormat::int8 && f != KvFormat::int4)
      check.fail("config.format", std::string("must be f32, f16, bf16, int8 or int4, got ") + format_name(f));
    if (r != KvFormat::f32 && r != KvFormat::f16 && r != KvFormat::bf16)
      check.fail("config.rope_format", std::string("must be f32, f16 or bf16, got ") + format_name(r));
    rows_.reserve(static_cast<std::size_t>(config.batch));
    for (index_t b = 0; b < config.batch; ++b) rows_.emplace_back(config.arena);
    next_position_.assign(static_cast<std::size_t>(config.batch), 0);
    scratch_.resize(static_cast<std::size_t>(std::max(config.latent_dim, config.rope_dim)));
    code_scratch_.resize(static_cast<std::size_t>(config.latent_dim));
  }

  /// The configuration it was built with.
  const MlaLatentCacheConfig& config() const noexcept { return config_; }

  /// Appends each sequence's tokens to its row (in.rows / in.lengths for ragged calls). Shapes,
  /// rows, lengths, positions and the rope table are checked and room is made in every row before
  /// the first token is stored, so a ShapeError or KvArenaFull leaves the cache unchanged.
  void append(const MlaCacheAppendInputs& in) {
    const ArgCheck check("MlaLatentCache::append");
    const index_t dc = config_.latent_dim, dr = config_.rope_dim;
    check.shape("c_kv", in.c_kv, std::array<index_t, 3>{in.rows.has_value() ? -1 : config_.batch, -1, dc}, "N,T,d_c");
    const index_t N = in.c_kv.size(0), T = in.c_kv.size(1);
    check.shape("k_rope", in.k_rope, std::array<index_t, 3>{N, T, dr}, "N,T,d_r");
    in.positions.check_optional_shape(check, "positions", {N, T}, "N,T");
    if (in.positions.dangling()) check.fail("positions", "has a null data pointer");
    for (const auto& [list, name] : {std::pair<const IndexList*, const char*>{&in.rows, "rows"}, {&in.lengths, "lengths"}}) {
      if (!list->has_value()) continue;
      if (list->dangling()) check.fail(name, "has a null data pointer");
      if (list->size() != N)
        check.fail(name, "must hold N = " + std::to_string(N) + " entries, got " + std::to_string(list->size()));
    }
    if (in.rope) detail::check_fused_rope_table(check, *in.rope, dr, detail::FusedRopeUse::keys);
    std::vector<char>& used = used_scratch_;
    used.assign(static_cast<std::size_t>(config_.batch), 0);
    for (index_t n = 0; n < N; ++n) {
      const index_t b = row_of(in, n);
      if (b < -1 || b >= config_.batch)
        check.fail("rows", "entry " + std::to_string(n) + " is " + std::to_string(b) + ", outside [-1, " +
                               std::to_string(config_.batch) + ")");
      if (b < 0) continue;
      if (used[static_cast<std::size_t>(b)])
        check.fail("rows", "names row " + std::to_string(b) + " twice (one sequence per row and call)");
      used[static_cast<std::size_t>(b)] = 1;
      const index_t len = length_of(in, n, T);
      if (len < 0 || len > T)
        check.fail("lengths", "entry " + std::to_string(n) + " is " + std::to_string(len) + ", outside [0, T = " +
                                  std::to_string(T) + "]");
      const std::int64_t start = next_position_[static_cast<std::size_t>(b)];
      for (index_t t = 0; t < len; ++t) {
        const std::int64_t p = in.positions.has_value() ? in.positions(n, t) : start + t;
        const std::int64_t floor = t == 0 ? start : (in.positions.has_value() ? in.positions(n, t - 1) : start + t - 1) + 1;
        if (p < floor || p >= kMaxPosition)
          check.fail("positions", "must be strictly increasing, >= " + std::to_string(floor) + " and < " +
                                      std::to_string(kMaxPosition) + " (sequence " + std::to_string(n) + ", row " +
                                      std::to_string(b) + ", token " + std::to_string(t) + "), got " + std::to_string(p));
        if (in.rope && p >= in.rope->positions())
          check.fail(in.positions.has_value() ? "positions" : "rope",
                     "puts token " + std::to_string(t) + " of row " + std::to_string(b) + " at position " +
                         std::to_string(p) + ", outside the rope table's positions [0, " +
                         std::to_string(in.rope->positions()) + ")");
      }
    }
    // Room first (geometric growth): an allocation failure then leaves every row unchanged.
    for (index_t n = 0; n < N; ++n) {
      const index_t b = row_of(in, n);
      if (b >= 0) reserve(b, size(b) + length_of(in, n, T));
    }
    for (index_t n = 0; n < N; ++n) {
      const index_t b = row_of(in, n);
      if (b < 0) continue;
      Row& row = rows_[static_cast<std::size_t>(b)];
      const index_t len = length_of(in, n, T);
      std::int64_t& next = next_position_[static_cast<std::size_t>(b)];
      for (index_t t = 0; t < len; ++t) {
        const std::int64_t p = in.positions.has_value() ? in.positions(n, t) : next + t;
        store_latent(row, in.c_kv.ptr(n, t), in.c_kv.stride(2));
        store_rope(row, in.k_rope.ptr(n, t), in.k_rope.stride(2), in.rope, static_cast<index_t>(p));
        row.positions.push_back(p);
      }
      if (len > 0) next = row.positions.back() + 1;
    }
  }

  /// Room for `tokens` tokens in row b, so appends up to that size allocate nothing.
  void reserve(index_t b, index_t tokens) {
    check_row("MlaLatentCache::reserve", b);
    if (tokens < 0) throw ShapeError("MlaLatentCache::reserve", "tokens", "must be >= 0, got " + std::to_string(tokens));
    Row& row = rows_[static_cast<std::size_t>(b)];
    const auto grow = [](auto& v, std::size_t n) {
      if (n > v.capacity()) v.reserve(std::max(n, 2 * v.capacity()));
    };
    const std::size_t n = static_cast<std::size_t>(tokens);
    const std::size_t dc = static_cast<std::size_t>(config_.latent_dim), dr = static_cast<std::size_t>(config_.rope_dim);
    switch (config_.format) {
      case KvFormat::f32: grow(row.c_f32, n * dc); break;
      case KvFormat::f16: grow(row.c_f16, n * dc); break;
      case KvFormat::bf16: grow(row.c_bf16, n * dc); break;
      default:
        grow(row.codes, n * static_cast<std::size_t>(row_bytes(config_.format, config_.latent_dim)));
        grow(row.params, n * 2 * static_cast<std::size_t>(groups()));
    }
    switch (config_.rope_format) {
      case KvFormat::f32: grow(row.r_f32, n * dr); break;
      case KvFormat::f16: grow(row.r_f16, n * dr); break;
      default: grow(row.r_bf16, n * dr);
    }
    grow(row.positions, n);
  }

  /// Rolls row b back to `position`: every token at a position >= position is dropped and the
  /// next default position becomes min(next, position). Exact at any depth: the row then equals
  /// one that never held the dropped tokens, and re-appending them stores the same bytes.
  void truncate(index_t b, std::int64_t position) {
    check_row("MlaLatentCache::truncate", b);
    if (position < 0) throw ShapeError("MlaLatentCache::truncate", "position", "must be >= 0, got " + std::to_string(position));
    std::int64_t& next = next_position_[static_cast<std::size_t>(b)];
    if (position >= next) return;
    Row& row = rows_[static_cast<std::size_t>(b)];
    const index_t keep = static_cast<index_t>(std::lower_bound(row.positions.begin(), row.positions.end(), position) -
                                              row.positions.begin());
    resize_row(row, keep);
    next = position;
  }

  /// Keeps the first `tokens` tokens of row b (rollback by length): truncate at the position of
  /// token `tokens`; nothing happens when the row holds no more.
  void truncate_to_size(index_t b, index_t tokens) {
    check_row("MlaLatentCache::truncate_to_size", b);
    if (tokens < 0)
      throw ShapeError("MlaLatentCache::truncate_to_size", "tokens", "must be >= 0, got " + std::to_string(tokens));
    if (tokens < size(b)) truncate(b, rows_[static_cast<std::size_t>(b)].positions[static_cast<std::size_t>(tokens)]);
  }

  /// Empties row b and restarts its positions at 0 (a row handed to a new request); its storage
  /// is released.
  void reset(index_t b) {
    check_row("MlaLatentCache::reset", b);
    rows_[static_cast<std::size_t>(b)] = Row(config_.arena);
    next_position_[static_cast<std::size_t>(b)] = 0;
  }

  /// The position the next appended token of row b gets by default.
  std::int64_t next_position(index_t b) const {
    check_row("MlaLatentCache::next_position", b);
    return next_position_[static_cast<std::size_t>(b)];
  }

  /// Tokens held by row b.
  index_t size(index_t b) const {
    check_row("MlaLatentCache::size", b);
    return static_cast<index_t>(rows_[static_cast<std::size_t>(b)].positions.size());
  }

  /// Positions of row b's tokens, in order (allocates the vector).
  std::vector<std::int64_t> positions(index_t b) const {
    check_row("MlaLatentCache::positions", b);
    const Row& row = rows_[static_cast<std::size_t>(b)];
    return std::vector<std::int64_t>(row.positions.begin(), row.positions.end());
  }

  /// The decoded latents c [size(b), d_c] and rotary keys r [size(b), d_r] of row b (as the
  /// decode reads them: stored values widened to fp32, codes decoded).
  void read(index_t b, const TensorView<float, 2>& c, const TensorView<float, 2>& r) const {
    const ArgCheck check("MlaLatentCache::read");
    check_row("MlaLatentCache::read", b);
    const index_t n = size(b);
    check.shape("c", c, std::array<index_t, 2>{n, config_.latent_dim}, "size(b),d_c");
    check.shape("r", r, std::array<index_t, 2>{n, config_.rope_dim}, "size(b),d_r");
    std::vector<float> cr(static_cast<std::size_t>(config_.latent_dim)), rr(static_cast<std::size_t>(config_.rope_dim));
    for (index_t j = 0; j < n; ++j) {
      read_rows(b, j, 1, cr.data(), rr.data());
      for (index_t e = 0; e < config_.latent_dim; ++e) c(j, e) = cr[static_cast<std::size_t>(e)];
      for (index_t e = 0; e < config_.rope_dim; ++e) r(j, e) = rr[static_cast<std::size_t>(e)];
    }
  }

  /// Bytes one token takes: latent values or codes, quantization parameters, rotary key and
  /// its int64 position.
  index_t bytes_per_token() const noexcept {
    const index_t latent = is_quantized() ? mla_latent_bytes_per_token(config_.format, config_.latent_dim,
                                                                        config_.group_size, 0)
                                          : config_.latent_dim * format_bits(config_.format) / 8;
    return latent + config_.rope_dim * format_bits(config_.rope_format) / 8 +
           static_cast<index_t>(sizeof(std::int64_t));
  }

  /// Bytes of the tokens held (bytes_per_token() x every row's size()).
  std::size_t bytes() const noexcept {
    std::size_t tokens = 0;
    for (const Row& row : rows_) tokens += row.positions.size();
    return tokens * static_cast<std::size_t>(bytes_per_token());
  }

  /// The arena given in the configuration (null: the heap).
  KvArena* arena() const noexcept { return config_.arena; }

  /// \private The fp32 latents [count, d_c] and rotary keys [count, d_r] of tokens [j0, j0 + count)
  /// of row b into c and r (the decode's row reader; arguments not checked).
  void read_rows(index_t b, index_t j0, index_t count, float* c, float* r) const noexcept {
    const Row& row = rows_[static_cast<std::size_t>(b)];
    const index_t dc = config_.latent_dim, dr = config_.rope_dim;
    switch (config_.format) {
      case KvFormat::f32: detail::kv_row_to_float(row.c_f32.data() + j0 * dc, 1, count * dc, c); break;
      case KvFormat::f16: detail::kv_row_to_float(row.c_f16.data() + j0 * dc, 1, count * dc, c); break;
      case KvFormat::bf16: detail::kv_row_to_float(row.c_bf16.data() + j0 * dc, 1, count * dc, c); break;
      default: {
        const index_t rb = row_bytes(config_.format, dc), pg = 2 * groups();
        for (index_t i = 0; i < count; ++i)
          detail::dequantize_latent_row(row.codes.data() + (j0 + i) * rb, row.params.data() + (j0 + i) * pg, dc,
                                        config_.group_size, config_.format, c + i * dc);
      }
    }
    switch (config_.rope_format) {
      case KvFormat::f32: detail::kv_row_to_float(row.r_f32.data() + j0 * dr, 1, count * dr, r); break;
      case KvFormat::f16: detail::kv_row_to_float(row.r_f16.data() + j0 * dr, 1, count * dr, r); break;
      default: detail::kv_row_to_float(row.r_bf16.data() + j0 * dr, 1, count * dr, r);
    }
  }

 private:
  struct Row {
    explicit Row(KvArena* a)
        : c_f32(detail::kv_vector<float>(a)), c_f16(detail::kv_vector<f16>(a)), c_bf16(detail::kv_vector<bf16>(a)),
          r_f32(detail::kv_vector<float>(a)), r_f16(detail::kv_vector<f16>(a)), r_bf16(detail::kv_vector<bf16>(a)),
          codes(detail::kv_vector<std::uint8_t>(a)), params(detail::kv_vector<float>(a)),
          positions(detail::kv_vector<std::int64_t>(a)) {}
    detail::KvVector<float> c_f32;
    detail::KvVector<f16> c_f16;
    detail::KvVector<bf16> c_bf16;
    detail::KvVector<float> r_f32;
    detail::KvVector<f16> r_f16;
    detail::KvVector<bf16> r_bf16;
    detail::KvVector<std::uint8_t> codes;  // int8 / int4: row_bytes per token
    detail::KvVector<float> params;        // int8 / int4: (scale, min) per group per token
    detail::KvVector<std::int64_t> positions;
  };

  bool is_quantized() const noexcept { return config_.format == KvFormat::int8 || config_.format == KvFormat::int4; }
  index_t groups() const noexcept { return quant::group_count(config_.latent_dim, config_.group_size); }
  static index_t row_of(const MlaCacheAppendInputs& in, index_t n) { return in.rows.has_value() ? in.rows[n] : n; }
  static index_t length_of(const MlaCacheAppendInputs& in, index_t n, index_t T) {
    return in.lengths.has_value() ? in.lengths[n] : T;
  }
  void check_row(const char* op, index_t b) const {
    if (b < 0 || b >= config_.batch)
      throw ShapeError(op, "b", "must lie in [0, " + std::to_string(config_.batch) + "), got " + std::to_string(b));
  }

  // Appends one latent (room was reserved).
  void store_latent(Row& row, const float* src, index_t stride) {
    const index_t dc = config_.latent_dim;
    float* tmp = scratch_.data();
    const auto push = [&](auto& v) {
      const std::size_t at = v.size();
      v.resize(at + static_cast<std::size_t>(dc));
      detail::store_kv_row(src, stride, dc, v.data() + at, 1, tmp);
    };
    switch (config_.format) {
      case KvFormat::f32: push(row.c_f32); break;
      case KvFormat::f16: push(row.c_f16); break;
      case KvFormat::bf16: push(row.c_bf16); break;
      default: {
        const std::size_t rb = static_cast<std::size_t>(row_bytes(config_.format, dc)), pg = 2 * static_cast<std::size_t>(groups());
        const std::size_t c0 = row.codes.size(), p0 = row.params.size();
        row.codes.resize(c0 + rb);
        row.params.resize(p0 + pg);
        detail::kv_row_to_float(src, stride, dc, tmp);
        detail::quantize_latent_row(tmp, dc, config_.group_size, config_.format, row.codes.data() + c0,
                                    row.params.data() + p0, code_scratch_.data());
      }
    }
  }

  // Appends one rotary key, rotated at `position` first when `rope` is given (room was reserved).
  void store_rope(Row& row, const float* src, index_t stride, const RopeTable* rope, index_t position) {
    const index_t dr = config_.rope_dim;
    const auto push = [&](auto& v) {
      const std::size_t at = v.size();
      v.resize(at + static_cast<std::size_t>(dr));
      detail::store_kv_row(src, stride, dr, v.data() + at, 1, scratch_.data(), rope, position);
    };
    switch (config_.rope_format) {
      case KvFormat::f32: push(row.r_f32); break;
      case KvFormat::f16: push(row.r_f16); break;
      default: push(row.r_bf16);
    }
  }

  void resize_row(Row& row, index_t tokens) {
    const std::size_t n = static_cast<std::size_t>(tokens);
    const std::size_t dc = static_cast<std::size_t>(config_.latent_dim), dr = static_cast<std::size_t>(config_.rope_dim);
    if (!row.c_f32.empty()) row.c_f32.resize(n * dc);
    if (!row.r_f32.empty()) row.r_f32.resize(n * dr);
    if (!row.c_f16.empty()) row.c_f16.resize(n * dc);
    if (!row.c_bf16.empty()) row.c_bf16.resize(n * dc);
    if (!row.r_f16.empty()) row.r_f16.resize(n * dr);
    if (!row.r_bf16.empty()) row.r_bf16.resize(n * dr);
    if (!row.codes.empty()) row.codes.resize(n * static_cast<std::size_t>(row_bytes(config_.format, config_.latent_dim)));
    if (!row.params.empty()) row.params.resize(n * 2 * static_cast<std::size_t>(groups()));
    row.positions.resize(n);
  }

  MlaLatentCacheConfig config_;
  std::vector<Row> rows_;
  std::vector<std::int64_t> next_position_;
  std::vector<float> scratch_;             // one fp32 row (latent or rotary key)
  std::vector<std::uint8_t> code_scratch_; // one row of unpacked codes
  std::vector<char> used_scratch_;         // rows named by an append
};

namespace detail {

// The decode's arguments; fills every dimension but Tk.
inline MlaDims check_mla_cache_decode(const ArgCheck& check, const MlaCacheDecodeInputs& in,
                                      const MlaDecodeOutputs& out, const MlaOptions& options) {
  if (in.cache == nullptr) check.fail("cache", "is null");
  const MlaLatentCacheConfig& cfg = in.cache->config();
  MlaDims d = check_mla_decode_queries(check, in.q_nope, in.q_rope, in.weights, cfg.latent_dim, cfg.rope_dim, out, options);
  if (d.B != cfg.batch)
    check.fail("q_nope", "must hold one query per cache row (" + std::to_string(cfg.batch) + "), got " + std::to_string(d.B));
  return d;
}

}  // namespace detail

/// The absorbed decode over an MlaLatentCache: mla_decode's results for each row's tokens (one
/// query per row, after every cached token). Checked before any output is written; no allocation
/// after a first call of the same shape.
inline void mla_latent_cache_decode(const MlaCacheDecodeInputs& in, const MlaDecodeOutputs& out,
                                    const MlaOptions& options = {}, const Executor& executor = serial_executor()) {
  static const ArgCheck check("mla_latent_cache_decode");
  detail::MlaDims d = detail::check_mla_cache_decode(check, in, out, options);
  const MlaLatentCache& cache = *in.cache;
  d.Tk = 0;
  for (index_t b = 0; b < d.B; ++b) d.Tk = std::max(d.Tk, cache.size(b));
  const auto length = [&](index_t b) { return cache.size(b); };
  const auto rows = [&](index_t b, index_t j0, index_t count, float* c, float* r) { cache.read_rows(b, j0, count, c, r); };
  detail::mla_decode_run(d, in.q_nope, in.q_rope, in.weights, length, rows, out, executor);
}

namespace reference {

/// reference::mla (naive expanded, in double) over each row's decoded tokens with one query after
/// the last; an empty row gives o = 0 and lse = -inf.
inline void mla_latent_cache_decode(const MlaCacheDecodeInputs& in, const MlaDecodeOutputs& out,
                                    const MlaOptions& options = {}) {
  static const ArgCheck check("reference::mla_latent_cache_decode");
  const detail::MlaDims d = detail::check_mla_cache_decode(check, in, out, options);
  const MlaLatentCache& cache = *in.cache;
  MlaOptions opt = options;
  opt.scale = d.scale;
  opt.causal = true;
  for (index_t b = 0; b < d.B; ++b) {
    const index_t L = cache.size(b);
    if (L == 0) {
      for (index_t h = 0; h < d.H; ++h) {
        for (index_t e = 0; e < d.dv; ++e) out.o(b, h, e) = 0.f;
        if (out.lse.has_value()) out.lse(b, h) = -std::numeric_limits<float>::infinity();
      }
      continue;
    }
    Tensor<float, 3> c({1, L, d.dc}), r({1, L, d.dr});
    cache.read(b, c.view()[0], r.view()[0]);
    Tensor<float, 4> o({1, 1, d.H, d.dv});
    Tensor<float, 3> lse({1, 1, d.H});
    MlaPrefillInputs<float> pin;
    pin.q_nope = ConstView<float, 4>(in.q_nope.ptr(b), {1, 1, d.H, d.dn},
                                     {0, 0, in.q_nope.stride(1), in.q_nope.stride(2)});
    pin.q_rope = ConstView<float, 4>(in.q_rope.ptr(b), {1, 1, d.H, d.dr},
                                     {0, 0, in.q_rope.stride(1), in.q_rope.stride(2)});
    pin.c_kv = c.view(), pin.k_rope = r.view(), pin.weights = in.weights;
    reference::mla(pin, MlaPrefillOutputs{o.view(), lse.view()}, opt);
    for (index_t h = 0; h < d.H; ++h) {
      for (index_t e = 0; e < d.dv; ++e) out.o(b, h, e) = o(0, 0, h, e);
      if (out.lse.has_value()) out.lse(b, h) = lse(0, 0, h);
    }
  }
}

}  // namespace reference

}  // namespace seqmix
