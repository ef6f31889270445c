// Decode attention over a KvCache, reading the compressed blocks directly (SPEC sections 5, 6).
//
// Same semantics as seqmix::attention, with keys at their stored positions p_j:
//   pos_i    = positions[b,i] if given, else cache.next_position(b) - Tq + i (the queries are the
//              last Tq appended tokens, as bottom-right alignment does for a dense K/V)
//   s_ij     = scale * head_scales[h] * q_i . k_j;  softcap;  -= alibi_slopes[h] * |pos_i - p_j|;
//              += relative_bias(h, pos_i, p_j)  (T5 / KERPLE / FIRE at the stored key positions)
//   visible  = (!causal || p_j <= pos_i) && (window == 0 || p_j > pos_i - window || p_j < sink_tokens)
//   o, lse   as in attention (sink_logits, rows without a visible key give 0 / -inf).
// No additive mask: a cache has no fixed key axis to lay one over.
//
// No fp32 copy of the cache. Per block, for the G*Tq query rows that share a KV head (scaled by
// `scale`):
//   per-channel keys  k = min_c + scale_c * code:  s = sum_c (q_c scale_c) code_c + sum_c q_c min_c;
//   per-token keys    s = sum_g [ scale_g * (q_g . code_g) + min_g * sum(q_g) ];
//   values            acc += (p * scale_t) * code_t, and sum_t p * min_t added once per span.
// Quantized blocks: integer dot products on the codes (integer_dots.hpp). Float blocks: keys are
// channel-major, so each 16-token vector of one channel feeds one FMA per query row (G = 4 rows
// at once); values are token-major, so each 16-channel vector of a token feeds the G rows. The
// blocks of every (b, KV head) are split into pieces spread over the executor, and the pieces'
// online-softmax states are combined with the attention_merge monoid (merge.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/cpu_kind.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/kv_cache/coded/kernels.hpp"
#include "seqmix/kv_cache/integer_dots.hpp"

namespace seqmix {

/// How the integer kernels round their float operand (the query times the key scales, and the
/// softmax weights times the value scales) to bytes for the u8 x s8 dot products over quantized
/// blocks (integer_dots.hpp). Float blocks, the residual window and builds without AVX-512 VNNI
/// do not round, whatever the choice.
enum class KvOperandPrecision {
  /// x ~ a (h + l / 256), a = max|x| / 127: error <= a / 512 (2^-16 of the row's largest
  /// operand); two dot products per code. The default.
  two_byte,
  /// x ~ a b, one signed byte: error <= a / 2 (2^-8 of the row's largest operand), one dot
  /// product per code. Opt-in: the rounding is of the order of an int8 cache's own storage error
  /// (measured figures: kv_cache/README.md, "One-byte operands").
  one_byte,
};

/// Arguments of kv_cache_attention (docs/operators.md sections 5 and 6). Optional views are
/// empty when not given.
struct KvCacheAttentionInputs {
  ConstView<float, 4> q;                  ///< [B,Tq,Hq,Dk], Hq a multiple of the cache's Hkv
  /// The cache read (required; not modified).
  const KvCache* cache = nullptr;
  ConstView<float, 1> alibi_slopes;       ///< [Hq]
  ConstView<float, 1> sink_logits;        ///< [Hq]
  IndexTable positions;                   ///< [B,Tq] int32 or int64: absolute query positions
  /// Rotary embedding fused into the kernel (docs/operators.md section 10), or nullptr: each
  /// query is rotated at its position in the kernel's q rows; the cache holds keys rotated by
  /// KvCache::append with the same table. The table must outlive the call.
  const RopeTable* rope = nullptr;
  /// Relative position bias (AttentionInputs::relative_bias), taken at each key's stored
  /// position, computed per logit inside the block loop; kind none by default.
  RelativeBias relative_bias = {};
  /// [Hq], optional: per-head factor on the scale (AttentionInputs::head_scales).
  ConstView<float, 1> head_scales = {};
  /// Byte rounding of the integer kernels' operands (two_byte: unchanged results, bit for bit).
  KvOperandPrecision operand_precision = KvOperandPrecision::two_byte;
};

namespace detail {

// An operand precision outside the enum (a cast integer) is refused before anything is read.
inline void check_operand_precision(const ArgCheck& check, KvOperandPrecision precision) {
  if (precision != KvOperandPrecision::two_byte && precision != KvOperandPrecision::one_byte)
    check.fail("operand_precision", "must be two_byte or one_byte, got " + std::to_string(static_cast<int>(precision)));
}

struct KvAttentionDims {
  index_t B, Tq, Hq, Hkv, Dk, Dv;
  index_t group() const noexcept { return Hq / Hkv; }
};

// `check` names the operator; callers keep it thread_local so that validation allocates nothing
// (ArgCheck holds the name as a std::string).
inline KvAttentionDims validate_kv_attention(const ArgCheck& check, const KvCacheAttentionInputs& in, const AttentionOutputs& out,
                                             const AttentionOptions& options) {
  if (in.cache == nullptr) check.fail("cache", "must not be null");
  const KvCacheConfig& cfg = in.cache->config();
  check.shape("q", in.q, {cfg.batch, -1, -1, cfg.key_dim}, "B,Tq,Hq,Dk");
  const index_t B = cfg.batch, Tq = in.q.size(1), Hq = in.q.size(2);
  check.divides(cfg.kv_heads, Hq, "q", "cache KV heads");
  check.optional_shape("alibi_slopes", in.alibi_slopes, {Hq}, "Hq");
  check.optional_shape("sink_logits", in.sink_logits, {Hq}, "Hq");
  validate_relative_bias(check, in.relative_bias, in.head_scales, Hq);
  in.positions.check_optional_shape(check, "positions", {B, Tq}, "B,Tq");
  in.positions.check_position_range(check, "positions");
  check.shape("o", out.o, {B, Tq, Hq, cfg.value_dim}, "B,Tq,Hq,Dv");
  check.optional_shape("lse", out.lse, {B, Tq, Hq}, "B,Tq,Hq");
  if (options.scale) check.finite(*options.scale, "options.scale");
  check.finite(options.softcap, "options.softcap");
  // Messages are formatted only on failure (no allocation on the decode path).
  if (!(options.softcap >= 0.f)) check.fail("options.softcap", "must be >= 0 (0 disables it), got " + std::to_string(options.softcap));
  if (options.window < 0) check.fail("options.window", "must be >= 0 (0 disables it), got " + std::to_string(options.window));
  if (options.sink_tokens < 0) check.fail("options.sink_tokens", "must be >= 0, got " + std::to_string(options.sink_tokens));
  check_operand_precision(check, in.operand_precision);
  if (in.rope) {  // every query position inside the table
    check_fused_rope_table(check, *in.rope, cfg.key_dim, FusedRopeUse::queries);
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < Tq; ++i) {
        const std::int64_t p = in.positions.has_value() ? in.positions(b, i) : in.cache->next_position(b) - Tq + i;
        if (p < 0 || p >= in.rope->positions())
          check.fail(in.positions.has_value() ? "positions" : "rope",
                     "puts query " + std::to_string(i) + " of row " + std::to_string(b) + " at position " +
                         std::to_string(p) + ", outside the rope table's positions [0, " +
                         std::to_string(in.rope->positions()) + ")");
      }
  }
  return {B, Tq, Hq, cfg.kv_heads, cfg.key_dim, cfg.value_dim};
}

inline std::int64_t kv_query_position(const KvCacheAttentionInputs& in, index_t b, index_t i) {
  return in.positions.has_value() ? in.positions(b, i) : in.cache->next_position(b) - in.q.size(1) + i;
}

inline bool kv_visible(const AttentionOptions& o, std::int64_t key, std::int64_t query) noexcept {
  return (!o.causal || key <= query) && (o.window == 0 || key > query - o.window || key < o.sink_tokens);
}

}  // namespace detail

namespace reference {

/// The definition over the cache, entry by entry (each read through KvCache::read_key /
/// read_value, i.e. dequantized), accumulated in double. Single-threaded.
inline void kv_cache_attention(const KvCacheAttentionInputs& in, const AttentionOutputs& out,
                               const AttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_kv_attention(ArgCheck("reference::kv_cache_attention"), in, out, options);
  const KvCache& cache = *in.cache;
  const double scale = detail::attention_scale(options, d.Dk), minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<float> k(static_cast<std::size_t>(d.Dk)), v(static_cast<std::size_t>(d.Dv));
  std::vector<double> acc(static_cast<std::size_t>(d.Dv)), logits, query(static_cast<std::size_t>(d.Dk));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t hk = h / d.group(), n = cache.size(b, hk);
        const std::int64_t pos = detail::kv_query_position(in, b, i);
        for (index_t c = 0; c < d.Dk; ++c) query[c] = static_cast<double>(in.q(b, i, h, c));
        if (in.rope) detail::rope_row_double(*in.rope, static_cast<index_t>(pos), query.data());
        const std::vector<std::int64_t> key_pos = cache.positions(b, hk);
        logits.assign(static_cast<std::size_t>(n), minus_inf);
        double max_logit = minus_inf;
        for (index_t j = 0; j < n; ++j) {
          if (!detail::kv_visible(options, key_pos[j], pos)) continue;
          cache.read_key(b, hk, j, k.data());
          double s = 0.0;
          for (index_t c = 0; c < d.Dk; ++c) s += query[c] * k[c];
          s *= scale;
          if (in.head_scales.has_value()) s *= in.head_scales(h);
          if (options.softcap > 0.f) s = options.softcap * std::tanh(s / options.softcap);
          if (in.alibi_slopes.has_value()) s -= in.alibi_slopes(h) * std::abs(static_cast<double>(pos - key_pos[j]));
          s += detail::relative_bias_value(in.relative_bias, h, static_cast<index_t>(pos), static_cast<index_t>(key_pos[j]));
          logits[j] = s;
          max_logit = std::max(max_logit, s);
        }
        double denominator = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        if (max_logit > minus_inf)
          for (index_t j = 0; j < n; ++j) {
            if (logits[j] == minus_inf) continue;
            const double p = std::exp(logits[j] - max_logit);
            denominator += p;
            cache.read_value(b, hk, j, v.data());
            for (index_t c = 0; c < d.Dv; ++c) acc[c] += p * v[c];
          }
        double lse = max_logit > minus_inf ? max_logit + std::log(denominator) : minus_inf;
        if (in.sink_logits.has_value()) {
          const double sink = in.sink_logits(h), top = std::max(lse, sink);
          lse = top + std::log(std::exp(lse - top) + std::exp(sink - top));
        }
        for (index_t c = 0; c < d.Dv; ++c)
          out.o(b, i, h, c) = max_logit > minus_inf ? static_cast<float>(acc[c] * std::exp(max_logit - lse)) : 0.f;
        if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(lse);
      }
}

}  // namespace reference

namespace detail {

using KvF = simd::Batch<float>;
constexpr index_t kKvRows = 4;  // query rows per register block (the GQA group of 4 in Llama-style models)
// Blocks whose scores go through one online-softmax step: the per-row maximum, exponentials,
// sum and accumulator rescale are paid once per span instead of once per 32-token block.
constexpr index_t kKvSpanBlocks = 8;
// Rows of one (b, KV head) task are processed in groups of kKvRows (padded with zero queries).

// The token vector v (kWidth tokens) of one key channel row of a float block, as fp32.
template <KvFormat F>
inline KvF load_key_vector(const std::uint8_t* row, index_t v) noexcept {
  const index_t e = v * simd::kWidth;
  if constexpr (F == KvFormat::f16) return simd::load_f16(reinterpret_cast<const f16*>(row) + e);
  if constexpr (F == KvFormat::bf16) return simd::load_bf16(reinterpret_cast<const bf16*>(row) + e);
  return simd::load(reinterpret_cast<const float*>(row) + e);
}

// acc[r][t] += sum_c Q[r][c] * key[c][token vector t], for kKvRows rows.
// The float kernels' loops over rows and vectors state their unrolling (here, in block_scores and
// in value_chunk): GCC 12 at -O2 left them rolled, with every accumulator in memory (a load, an
// FMA and a store per vector and channel); the same FMAs in the same order once unrolled.
template <KvFormat F, int NT>
inline void key_dots(const std::uint8_t* keys, index_t key_row, index_t Dk, const float* Q, index_t ldq,
                     KvF (&acc)[kKvRows][NT], LineStream& ahead) noexcept {
  for (index_t c = 0; c < Dk; ++c) {
    ahead.step();
    const std::uint8_t* row = keys + c * key_row;
    KvF k[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) k[t] = load_key_vector<F>(row, t);
#pragma GCC unroll 4
    for (index_t r = 0; r < kKvRows; ++r) {
      const KvF q = simd::in_register(KvF(Q[r * ldq + c]));
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) acc[r][t] = simd::fma(q, k[t], acc[r][t]);
    }
  }
}

// Steps of the float kernels' key_dots: one per channel per 4 query rows.
inline index_t float_key_steps(const KvCacheConfig& cfg, index_t rows) noexcept {
  return (rows + kKvRows - 1) / kKvRows * cfg.key_dim;
}

// Lines requested from inside a block's key kernel (see core/prefetch.hpp): the keys of the
// next block to be scored, the key parameters of the block after it (the query operands of
// per-channel keys are made for two blocks at a time, before the first's key loop: see
// any_block_scores) and this block's values, read after the span's softmax step. Each block is
// its own few-KB allocations, where the hardware prefetchers, which stop at page boundaries,
// keep restarting.
inline LineStream key_phase_lines(const KvBlockView* next, const KvBlockView* after_next, const KvBlockView& blk,
                                  const KvCacheConfig& cfg, index_t rows) noexcept {
  LineStream lines;
  if (after_next) lines.set(0, after_next->key_params, after_next->key_param_count * sizeof(float));
  if (next) lines.set(1, next->keys, next->key_bytes);
  lines.set(2, blk.values, blk.value_bytes);
  lines.set(3, blk.value_params, blk.value_param_count * sizeof(float));
  // Steps the key kernels take: the integer kernel counts its own.
  const index_t key_steps = integer_keys_supported(blk, cfg) ? integer_key_steps(cfg.key_dim, rows)
                                                             : float_key_steps(cfg, rows);
  // Into L2 except on Zen 5 (core/cpu_kind.hpp), as unit_order_block's: on Zen 4 the int8 / int4
  // decodes at Tk 16384 ran 1.6-2.0x faster so (int8 2.96-3.20 -> 1.53-1.62 ms, cold 3.64-4.01 ->
  // 2.29-2.55, int4 cold 2.83-3.03 -> 1.63-1.82; bench_kv_cache, 2 threads, 3 alternated runs, load
  // 1.1, 2026-12-08); Zen 5 keeps the L1 requests it was tuned with.
  lines.to_l2 = !amd_zen5_or_later();
  lines.spread_over(static_cast<std::size_t>(key_steps));
  return lines;
}

// fp32 blocks (and, except on Zen 5, fp16 and bf16 blocks) read their bytes in a fixed order of
// units, each one allocation (16 KB fp32, 8 KB fp16 / bf16 at D 128): the keys of the span's
// blocks, then their values, then the next span's keys. Each phase (one unit) requests the next
// unit, spread over its steps, at the rate the kernel consumes it. (key_phase_lines put the next
// keys and this block's values, twice the bytes the key loop reads, on the key loop and nothing
// on the value loop: fp32 in cache spent a third of its key loop waiting on prefetches, old / new
// 1.03-1.17x on Zen 5.) Where the requests go differs by machine, so it is chosen at run time
// (core/cpu_kind.hpp): on Zen 4 requests into L1 wait for the core's L1 miss buffers, and the
// unit order into L2 ran fp32, fp16 and bf16 at Tk 16384 1.2-1.8x faster; on Zen 5 fp32 measured
// 1.17x with its units into L1 against 1.06x into L2, and fp16 / bf16 in this order 0.88-1.09x,
// so a Zen 5 keeps fp32 into L1 and key_phase_lines for fp16 / bf16 (kv_cache/README.md, "fp32
// and fp16 decode", "On Zen 4"). Other machines (the Xeon: not measured) take Zen 4's choice.
inline bool unit_order_block(const KvBlockView& blk) noexcept {
  if (blk.coded || blk.key_format != blk.value_format) return false;
  if (blk.key_format == KvFormat::f32) return true;
  return (blk.key_format == KvFormat::f16 || blk.key_format == KvFormat::bf16) && !amd_zen5_or_later();
}
// Steps of the float kernels' value_chunk: one per token per 4 query rows and column chunk
// (block_values).
inline index_t float_value_steps(const KvCacheConfig& cfg, index_t rows, index_t count) noexcept {
  const index_t W = simd::kWidth, vec_end = simd::vector_end(cfg.value_dim);
  const index_t chunks = vec_end / (4 * W) + (vec_end % (4 * W)) / W;
  return (rows + kKvRows - 1) / kKvRows * chunks * count;
}
// The lines of unit u of a span of n blocks (u < n: keys of span[u]; u < 2n: values of
// span[u - n]; u = 2n: keys of `next`, the block after the span, or none), over `steps` steps.
inline LineStream unit_lines(const KvBlockView* span, index_t n, const KvBlockView* next, index_t u,
                                  std::size_t steps) noexcept {
  LineStream lines;
  if (u >= n && u < 2 * n) {
    lines.set(0, span[u - n].values, span[u - n].value_bytes);
  } else {
    const KvBlockView* blk = u < n ? &span[u] : next;
    if (blk) lines.set(0, blk->keys, blk->key_bytes);
  }
  lines.to_l2 = !amd_zen5_or_later();  // see unit_order_block
  lines.spread_over(steps);
  return lines;
}
// span[j]'s key phase (unit j) and value phase (unit n + j).
inline LineStream unit_key_lines(const KvBlockView* span, index_t n, index_t j, const KvBlockView* next,
                                 const KvCacheConfig& cfg, index_t rows) noexcept {
  return unit_lines(span, n, next, j + 1, static_cast<std::size_t>(float_key_steps(cfg, rows)));
}
inline LineStream unit_value_lines(const KvBlockView* span, index_t n, index_t j, const KvBlockView* next,
                                   const KvCacheConfig& cfg, index_t rows) noexcept {
  return unit_lines(span, n, next, n + j + 1, static_cast<std::size_t>(float_value_steps(cfg, rows, span[j].count)));
}

// Per-task scratch, for up to `capacity` query rows (rows: those of the current piece, a multiple
// of kKvRows; padding rows hold zero queries).
struct KvScratch {
  index_t rows, capacity, lds, ldacc;
  AlignedVector<float> q, qsum, s;
  std::vector<std::int64_t> pos;
  IntegerScratch ints;             // operand bytes of the integer kernels
  bool query_bytes_ready = false;  // per-token keys: the query's bytes, made once per task
  bool next_query_ready = false;   // per-channel keys: the next block's query bytes are in slot 1
  bool one_byte = false;           // KvOperandPrecision::one_byte for the current piece
  KvBlock key_tile, value_tile;    // quantized blocks as fp32, where the integer kernels do not apply
  AlignedVector<float> saved_acc;  // the accumulators before a span's values (guard_hidden_values)
  AlignedVector<float> value_buf;  // one dequantized value row
  // Coded storage (KvCacheConfig::coded), sized on first use and kept (no allocation after it):
  // the KV head of the piece, whether the per-piece query tables below are made, the pq lookup
  // tables [rows / 4][mk][Kk][4] and value histograms [rows][mv][Kv] (the softmax weights summed
  // per sub-space and centroid; rescaled with the accumulators, applied to the centroids at the
  // piece's end), the sign1 query sums [rows][Gk] and one row's value sums.
  index_t head = 0;
  bool coded_ready = false;
  AlignedVector<float> pq_table, pq_hist, sign1_qsum, sign1_out, sign1_tot;
  KvScratch(index_t rows_padded, index_t Dk, index_t Dv, index_t key_groups, index_t value_groups)
      : rows(rows_padded), capacity(rows_padded), lds(kKvSpanBlocks * kKvBlockTokens), ldacc((Dv + simd::kWidth - 1) / simd::kWidth * simd::kWidth),
        q(static_cast<std::size_t>(rows_padded * Dk), 0.f),
        qsum(static_cast<std::size_t>(rows_padded * key_groups), 0.f),
        s(static_cast<std::size_t>(rows_padded * kKvSpanBlocks * kKvBlockTokens), 0.f),
        pos(static_cast<std::size_t>(rows_padded), 0),
        saved_acc(static_cast<std::size_t>(rows_padded * ldacc), 0.f),
        value_buf(static_cast<std::size_t>(Dv), 0.f) {
    if (kKvIntegerDots) ints = IntegerScratch(rows_padded, Dk, value_groups, kKvSpanBlocks);
  }
  // Pieces with fewer rows than the capacity (the integer kernels' operand strides follow rows).
  void use_rows(index_t n) noexcept { rows = n, ints.rows = n; }
};

// The scratch of one call's tasks, owned by the calling thread and built there, before the tasks
// run, for these dimensions (kept across calls: a decode loop allocates nothing after its first
// call). A task takes a free scratch and gives it back; there is one per thread that can run a
// task at once. (A thread_local scratch per worker, as before, was built by a pool worker inside
// whichever call it first joined: under load, after any number of warm-up calls, the sporadic
// allocations tests/alloc saw.)
class KvScratchSet {
 public:
  static KvScratchSet& local() {
    thread_local KvScratchSet set;
    return set;
  }
  // `slots` scratches of `rows` rows (their padding rows are zeroed per piece).
  void prepare(index_t slots, index_t rows, index_t Dk, index_t Dv, index_t key_groups, index_t value_groups) {
    const index_t want[5] = {rows, Dk, Dv, key_groups, value_groups};
    if (!std::equal(want, want + 5, key_) || static_cast<index_t>(items_.size()) < slots) {
      items_.clear();
      for (index_t i = 0; i < slots; ++i) items_.push_back(std::make_unique<KvScratch>(rows, Dk, Dv, key_groups, value_groups));
      busy_ = std::make_unique<std::atomic<bool>[]>(items_.size());
      std::copy(want, want + 5, key_);
    }
    for (index_t i = 0; i < static_cast<index_t>(items_.size()); ++i) {
      items_[static_cast<std::size_t>(i)]->use_rows(rows);
      busy_[static_cast<std::size_t>(i)].store(false, std::memory_order_relaxed);
    }
  }
  // A free scratch (waits while all are taken, which more concurrent tasks than slots would cause).
  KvScratch& acquire(index_t& slot) noexcept {
    for (;;)
      for (std::size_t i = 0; i < items_.size(); ++i)
        if (!busy_[i].load(std::memory_order_relaxed) && !busy_[i].exchange(true, std::memory_order_acquire)) {
          slot = static_cast<index_t>(i);
          return *items_[i];
        }
  }
  void release(index_t slot) noexcept { busy_[static_cast<std::size_t>(slot)].store(false, std::memory_order_release); }

 private:
  std::vector<std::unique_ptr<KvScratch>> items_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
  index_t key_[5] = {-1, -1, -1, -1, -1};
};

// Scores of one float block for every row: s[r * w.lds + t] = scale * q_r . k_t for t < slots
// (garbage beyond count).
template <KvFormat F, int NT>
void block_scores(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, float* s, LineStream& ahead) {
  const index_t Dk = cfg.key_dim;
  for (index_t r0 = 0; r0 < w.rows; r0 += kKvRows) {
    KvF acc[kKvRows][NT];
#pragma GCC unroll 4
    for (auto& a : acc)
#pragma GCC unroll 8
      for (auto& x : a) x = KvF(0.f);
    key_dots<F, NT>(blk.keys, blk.key_row, Dk, w.q.data() + r0 * Dk, Dk, acc, ahead);
#pragma GCC unroll 4
    for (index_t r = 0; r < kKvRows; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) simd::store(s + (r0 + r) * w.lds + t * simd::kWidth, acc[r][t]);
  }
}

template <KvFormat F>
void block_scores_dispatch(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, float* s, LineStream& ahead) {
  switch (blk.slots / simd::kWidth) {
    case 1: block_scores<F, 1>(blk, cfg, w, s, ahead); break;
    case 2: block_scores<F, 2>(blk, cfg, w, s, ahead); break;
    case 4: block_scores<F, 4>(blk, cfg, w, s, ahead); break;
    case 8: block_scores<F, 8>(blk, cfg, w, s, ahead); break;
    default: break;
  }
}

// acc[r] += sum_t p[r][t] * v_t over a float block's `count` tokens, for kKvRows rows.
// kStream: the loop steps `ahead` once per token (fp32 / fp16 / bf16 blocks, unit_order_block);
// without it the loop of dequantized tiles, which have no stream there (an idle stream, one
// compare per token, measured 0.93x on fp16 on Zen 5).
template <KvFormat F, int NV, bool kStream>
void value_chunk(const KvBlockView& blk, index_t count, index_t c0, const float* p, index_t lds, float* acc,
                 index_t ldacc, LineStream* ahead) noexcept {
  KvF a[kKvRows][NV];
#pragma GCC unroll 4
  for (index_t r = 0; r < kKvRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[r][v] = simd::load(acc + r * ldacc + c0 + v * simd::kWidth);
  for (index_t t = 0; t < count; ++t) {
    if constexpr (kStream) ahead->step();
    const std::uint8_t* row = blk.values + t * blk.value_row;
    KvF x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = load_key_vector<F>(row, c0 / simd::kWidth + v);  // same layout along the row
    // Each row's weight is broadcast once per token into a register and feeds NV FMAs.
#pragma GCC unroll 4
    for (index_t r = 0; r < kKvRows; ++r) {
      const KvF w = simd::in_register(KvF(p[r * lds + t]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] = simd::fma(w, x[v], a[r][v]);
    }
  }
#pragma GCC unroll 4
  for (index_t r = 0; r < kKvRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) simd::store(acc + r * ldacc + c0 + v * simd::kWidth, a[r][v]);
}

// kStream: ahead (not null) is stepped once per token (fp32 / fp16 / bf16 blocks, unit_value_lines).
template <KvFormat F, bool kStream = false>
void block_values(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, const float* s, float* acc,
                  LineStream* ahead = nullptr) {
  const index_t Dv = cfg.value_dim, W = simd::kWidth, count = blk.count, vec_end = simd::vector_end(Dv);
  for (index_t r0 = 0; r0 < w.rows; r0 += kKvRows) {
    const float* p = s + r0 * w.lds;
    float* acc_rows = acc + r0 * w.ldacc;
    index_t c = 0;
    for (; c + 4 * W <= vec_end; c += 4 * W) value_chunk<F, 4, kStream>(blk, count, c, p, w.lds, acc_rows, w.ldacc, ahead);
    for (; c + W <= vec_end; c += W) value_chunk<F, 1, kStream>(blk, count, c, p, w.lds, acc_rows, w.ldacc, ahead);
    for (index_t t = 0; t < count && c < Dv; ++t) {  // tail channels
      const std::uint8_t* row = blk.values + t * blk.value_row;
      for (index_t r = 0; r < kKvRows; ++r)
        for (index_t cc = c; cc < Dv; ++cc) acc_rows[r * w.ldacc + cc] += p[r * w.lds + t] * load_float(F, row, cc);
    }
  }
}

template <class Fn>
void dispatch_float_format(KvFormat f, Fn&& fn) {
  switch (f) {
    case KvFormat::f16: fn(std::integral_constant<KvFormat, KvFormat::f16>{}); break;
    case KvFormat::bf16: fn(std::integral_constant<KvFormat, KvFormat::bf16>{}); break;
    default: fn(std::integral_constant<KvFormat, KvFormat::f32>{}); break;
  }
}

// A quantized block's keys / values as an fp32 tile in the float kernels' layouts (builds
// without integer dot products, and group sizes those kernels cannot follow).
inline KvBlockView float_key_tile(const KvBlockView& blk, const KvCacheConfig& cfg, KvBlock& tile) {
  const index_t Dk = cfg.key_dim, group = cfg.group_size > 0 ? cfg.group_size : Dk;
  tile.key_format = KvFormat::f32, tile.count = blk.count, tile.slots = blk.slots;
  tile.key_row = blk.slots * static_cast<index_t>(sizeof(float));
  tile.keys.assign(static_cast<std::size_t>(Dk * tile.key_row), 0);
  for (index_t c = 0; c < Dk; ++c) {
    float* row = reinterpret_cast<float*>(tile.keys.data() + c * tile.key_row);
    for (index_t t = 0; t < blk.count; ++t) row[t] = key_element(blk, cfg.key_quant, group, c, t);
  }
  return view_of(tile);
}
inline KvBlockView float_value_tile(const KvBlockView& blk, const KvCacheConfig& cfg, KvBlock& tile) {
  const index_t Dv = cfg.value_dim;
  tile.value_format = KvFormat::f32, tile.count = blk.count, tile.slots = blk.slots;
  tile.value_row = Dv * static_cast<index_t>(sizeof(float));
  tile.values.assign(static_cast<std::size_t>(blk.count * tile.value_row), 0);
  for (index_t t = 0; t < blk.count; ++t)
    value_row(blk, cfg.group_size, Dv, t, reinterpret_cast<float*>(tile.values.data() + t * tile.value_row));
  return view_of(tile);
}

// Scores of any block into s (row stride w.lds).
// Scores of a coded block (KvCacheConfig::coded) straight from its codes, 4 rows at a time: pq by
// lookups in the piece's tables (made at the first block), sign1 by masked adds over the bits.
inline void coded_block_scores(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, float* s) {
  const KvCodedDims d = coded_dims(cfg);
  const index_t Dk = cfg.key_dim, tile = d.mk * d.Kk * kCodedRows;
  if (!w.coded_ready) {
    for (index_t r0 = 0; r0 < w.rows; r0 += kCodedRows) {
      if (d.pq) {
        pq_table(cfg.coded->key_codebooks, w.head, w.q.data() + r0 * Dk, Dk, w.pq_table.data() + (r0 / kCodedRows) * tile);
        continue;
      }
      for (index_t r = r0; r < r0 + kCodedRows; ++r)
        for (index_t g = 0; g < d.Gk; ++g) {
          float sum = 0.f;
          for (index_t c = g * d.gk; c < std::min(Dk, (g + 1) * d.gk); ++c) sum += w.q[r * Dk + c];
          w.sign1_qsum[r * d.Gk + g] = sum;
        }
    }
    w.coded_ready = true;
  }
  for (index_t r0 = 0; r0 < w.rows; r0 += kCodedRows) {
    float* out = s + r0 * w.lds;
    if (!d.pq) {
      sign1_scores(coded_bits(blk.keys), blk.key_params, blk.count, w.q.data() + r0 * Dk, Dk, d.gk,
                   w.sign1_qsum.data() + r0 * d.Gk, out, w.lds, true);
      continue;
    }
    pq_lookup_scores(w.pq_table.data() + (r0 / kCodedRows) * tile, d.mk, d.Kk, blk.keys, blk.count, out, w.lds);
    for (std::size_t t = 0; t < blk.key_param_count; ++t)  // flagged (non-finite) keys
      if (std::isnan(blk.key_params[t]))
        for (index_t r = 0; r < kCodedRows; ++r) out[r * w.lds + static_cast<index_t>(t)] = blk.key_params[t];
  }
}

// Values of a coded block: pq adds each weight to its sub-spaces' centroid bins of the row's
// histogram (a flagged value row adds NaN where its weight is not 0); sign1 sums the masked
// weights per row (coded/kernels.hpp) into the accumulators.
inline void coded_block_values(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, const float* p, float* acc) {
  const KvCodedDims d = coded_dims(cfg);
  for (index_t r = 0; r < w.rows; ++r) {
    const float* pr = p + r * w.lds;
    if (d.pq) {
      float* hist = w.pq_hist.data() + r * d.mv * d.Kv;
      for (index_t t = 0; t < blk.count; ++t) {
        const float x = pr[t];
        if (x == 0.f) continue;
        const std::uint8_t* c = blk.values + t * d.mv;
        const float flag = blk.value_param_count > 0 ? blk.value_params[t] : 0.f;  // NaN: the row reads as NaN
        for (index_t sp = 0; sp < d.mv; ++sp) hist[sp * d.Kv + c[sp]] += x + flag;
      }
      continue;
    }
    float* out = w.sign1_out.data();
    sign1_values(coded_bits(blk.values), blk.value_params, blk.count, pr, cfg.value_dim, d.gv, w.sign1_tot.data(), out, true);
    float* a = acc + r * w.ldacc;
    for (index_t c = 0; c < cfg.value_dim; ++c) a[c] += out[c];
  }
}

// Calls f with std::true_type for the one-byte operand form (w.one_byte), std::false_type for the
// two-byte form: the integer kernels take it as a template flag.
template <class F>
void with_operand_bytes(const KvScratch& w, F&& f) {
  if (w.one_byte)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// Whether a block's scores go through the integer key kernel.
inline bool integer_key_block(const KvBlockView& blk, const KvCacheConfig& cfg) noexcept {
  return !blk.coded && integer_keys_supported(blk, cfg);
}

// Scores of block j of a span of n (s: its score columns). Per-channel keys need the query's
// bytes per block: they are made for blocks j and j + 1 together when both take the integer
// kernel (two independent chains side by side), and block j + 1 then finds them in slot 1.
inline void any_block_scores(const KvBlockView* span, index_t n, index_t j, const KvCacheConfig& cfg, KvScratch& w,
                             float* s, LineStream& ahead) {
  const KvBlockView& blk = span[j];
  if (blk.coded) {
    coded_block_scores(blk, cfg, w, s);
    return;
  }
  if (!is_quantized(blk.key_format)) {
    dispatch_float_format(blk.key_format, [&](auto f) { block_scores_dispatch<decltype(f)::value>(blk, cfg, w, s, ahead); });
    return;
  }
  if (!integer_keys_supported(blk, cfg)) {
    block_scores_dispatch<KvFormat::f32>(float_key_tile(blk, cfg, w.key_tile), cfg, w, s, ahead);
    return;
  }
#if SEQMIX_KV_INTEGER_DOTS
  index_t slot = 0;
  if (cfg.key_quant == KeyQuant::per_channel) {
    if (w.next_query_ready) {
      slot = 1, w.next_query_ready = false;
    } else if (j + 1 < n && integer_key_block(span[j + 1], cfg)) {
      const KvBlockView* const pair[2] = {&blk, &span[j + 1]};
      with_operand_bytes(w, [&](auto one_byte) { prepare_query_bytes<true, 2, decltype(one_byte)::value>(pair, cfg.key_dim, w.q.data(), w.ints); });
      w.next_query_ready = true;
    } else {
      const KvBlockView* const one[1] = {&blk};
      with_operand_bytes(w, [&](auto one_byte) { prepare_query_bytes<true, 1, decltype(one_byte)::value>(one, cfg.key_dim, w.q.data(), w.ints); });
    }
  } else if (!w.query_bytes_ready) {
    const KvBlockView* const one[1] = {&blk};
    with_operand_bytes(w, [&](auto one_byte) { prepare_query_bytes<false, 1, decltype(one_byte)::value>(one, cfg.key_dim, w.q.data(), w.ints); });
    w.query_bytes_ready = true;
  }
  const index_t key_groups = quant::group_count(cfg.key_dim, cfg.group_size > 0 ? cfg.group_size : cfg.key_dim);
  const float* qsum = w.qsum.data();
  with_operand_bytes(w, [&](auto one_byte) {
    if (blk.key_format == KvFormat::int4)
      integer_key_scores<4, 2, decltype(one_byte)::value>(blk, cfg, w.ints, slot, qsum, key_groups, s, w.lds, ahead);
    else if (blk.slots == 16)
      integer_key_scores<8, 1, decltype(one_byte)::value>(blk, cfg, w.ints, slot, qsum, key_groups, s, w.lds, ahead);
    else
      integer_key_scores<8, 2, decltype(one_byte)::value>(blk, cfg, w.ints, slot, qsum, key_groups, s, w.lds, ahead);
  });
#else
  (void)n, (void)j;
#endif
}

// Probability-weighted values of one float block, or of a quantized one the integer kernels
// cannot follow, into the accumulators (p: the block's probabilities, row stride w.lds).
inline void any_block_values(const KvBlockView& blk, const KvCacheConfig& cfg, KvScratch& w, const float* p, float* acc) {
  if (blk.coded) {
    coded_block_values(blk, cfg, w, p, acc);
    return;
  }
  if (!is_quantized(blk.value_format)) {
    dispatch_float_format(blk.value_format, [&](auto f) { block_values<decltype(f)::value>(blk, cfg, w, p, acc); });
    return;
  }
  // The tile holds dequantized values, min included.
  block_values<KvFormat::f32>(float_value_tile(blk, cfg, w.value_tile), cfg, w, p, acc);
}

// Values of a span's n blocks (block j's probabilities at w.s + 32 j): runs of blocks with the
// same quantized value format go through the integer kernels together, the rest block by block.
// next: the block read after the span, or null (its keys are requested during the values of an
// fp32 / fp16 / bf16 span's last block).
inline void span_values(const KvBlockView* span, index_t n, const KvBlockView* next, const KvCacheConfig& cfg,
                        KvScratch& w, float* acc) {
  for (index_t j = 0; j < n;) {
    const KvBlockView& blk = span[j];
    const float* p = w.s.data() + j * kKvBlockTokens;
    if (!integer_values_supported(blk, cfg)) {
      if (unit_order_block(blk)) {
        LineStream ahead = unit_value_lines(span, n, j, next, cfg, w.rows);
        if (blk.value_format == KvFormat::f16)
          block_values<KvFormat::f16, true>(blk, cfg, w, p, acc, &ahead);
        else if (blk.value_format == KvFormat::bf16)
          block_values<KvFormat::bf16, true>(blk, cfg, w, p, acc, &ahead);
        else
          block_values<KvFormat::f32, true>(blk, cfg, w, p, acc, &ahead);
      } else {
        any_block_values(blk, cfg, w, p, acc);
      }
      ++j;
      continue;
    }
    index_t end = j + 1;
    while (end < n && span[end].value_format == blk.value_format) ++end;
#if SEQMIX_KV_INTEGER_DOTS
    with_operand_bytes(w, [&](auto one_byte) {
      constexpr bool kOneByte = decltype(one_byte)::value;
      prepare_value_weights<kOneByte>(span + j, end - j, p, w.lds, w.ints);
      switch (blk.value_format) {
        case KvFormat::int8: integer_run_values<8, kOneByte>(span + j, end - j, cfg, w.ints, acc, w.ldacc); break;
        case KvFormat::int4: integer_run_values<4, kOneByte>(span + j, end - j, cfg, w.ints, acc, w.ldacc); break;
        default: integer_run_values<2, kOneByte>(span + j, end - j, cfg, w.ints, acc, w.ldacc); break;
      }
    });
#endif
    j = end;
  }
}

// Hidden keys (masked by causality or the window inside a visible block) have weight exactly 0,
// and 0 * NaN or 0 * inf in such a key's value would reach the row through the block-wide value
// kernels. Where a row's accumulators turn non-finite in a span while they were finite before,
// the row is redone from the saved accumulators token by token, leaving out the zero weights: it
// stays non-finite only if a key it sees carries the non-finite value (docs/reliability.md).
inline void guard_hidden_values(const KvBlockView* span, index_t n, const KvCacheConfig& cfg, KvScratch& w, index_t M,
                                float* acc) {
  const index_t Dv = cfg.value_dim;
  const auto finite = [Dv](const float* row) {
    for (index_t c = 0; c < Dv; ++c)
      if (!std::isfinite(row[c])) return false;
    return true;
  };
  for (index_t r = 0; r < M; ++r) {
    float* row = acc + r * w.ldacc;
    const float* saved = w.saved_acc.data() + r * w.ldacc;
    if (finite(row) || !finite(saved)) continue;
    std::copy(saved, saved + Dv, row);
    for (index_t j = 0; j < n; ++j)
      for (index_t t = 0; t < span[j].count; ++t) {
        const float p = w.s[static_cast<std::size_t>(r * w.lds + j * kKvBlockTokens + t)];
        if (p == 0.f) continue;
        if (span[j].coded)
          decode_coded_entry(cfg, w.head, span[j], t, false, w.value_buf.data());
        else
          value_row(span[j], cfg.group_size, Dv, t, w.value_buf.data());
        for (index_t c = 0; c < Dv; ++c) row[c] += p * w.value_buf[static_cast<std::size_t>(c)];
      }
  }
}

// Whether some row's weight of an entry of the span (block j's first count columns) is exactly 0:
// without one, guard_hidden_values has nothing to redo, and its copy and scan (a scalar pass over
// every accumulator per span) are skipped.
inline bool span_has_zero_weight(const KvBlockView* span, index_t n, const KvScratch& w, index_t M) noexcept {
  for (index_t j = 0; j < n; ++j)
    if (has_zero_weight(w.s.data() + j * kKvBlockTokens, w.lds, M, span[j].count)) return true;
  return false;
}

// Logit rule on one row of a block's scores (positions of its `count` keys; the rest of `width`
// -> -inf). `plain`: every key is visible and no logit transform applies, so only the fill runs.
// `bias` (or null): the relative bias of query head h, relative_bias_value per logit.
inline void kv_logit_rule(float* s, const std::int64_t* key_pos, index_t count, index_t width, std::int64_t qpos,
                          const AttentionOptions& options, bool alibi, float slope, bool plain,
                          const RelativeBias* bias = nullptr, index_t h = 0) {
  for (index_t t = 0; t < count && !plain; ++t) {
    if (!kv_visible(options, key_pos[t], qpos)) {
      s[t] = kMinusInf;
      continue;
    }
    if (options.softcap > 0.f) s[t] = options.softcap * std::tanh(s[t] / options.softcap);
    if (alibi) s[t] -= slope * static_cast<float>(std::abs(qpos - key_pos[t]));
    if (bias)
      s[t] += static_cast<float>(relative_bias_value(*bias, h, static_cast<index_t>(qpos), static_cast<index_t>(key_pos[t])));
  }
  std::fill(s + count, s + width, kMinusInf);
}

// One segment of a span: kKvBlockTokens score columns holding `count` keys at `positions`
// (increasing: append checks it, and blocks keep entry order), all within [lo, hi]. The range
// is the block's own (KvBlockView::min_position / max_position), so the common all-visible case
// never reads the positions: they are a separate allocation per block, not prefetched, and
// reading their first and last entries took ~1.6% of a long int4 decode in cache misses.
struct KvSegment {
  const std::int64_t* positions;
  index_t count;
  std::int64_t lo, hi;
};

struct KvPiece {
  index_t b, hk, first_block, last_block;
  bool residual;
};


// The fp32 rows of one (sequence, KV head) kept beside its blocks: a KvCache's residual window,
// or the tail of a paged pool's incomplete group. Row t: keys + t * key_stride (Dk floats),
// values + t * value_stride (Dv floats), at positions[t].
struct KvTailRows {
  const float* keys = nullptr;
  index_t key_stride = 0;
  const float* values = nullptr;
  index_t value_stride = 0;
  const std::int64_t* positions = nullptr;
  index_t size = 0;
};

// A piece's query rows into w: row r = i * G + g is query i0 + i of batch row b, head hk * G + g,
// times `scale` (and head_scales[h] when given; rotated at position(i) first when `rope` is
// given); per-token keys also get each key group's sum; w.pos[r] = position(i). Padding rows
// [M, w.rows) are zero queries.
template <class Position>
void kv_load_query_rows(KvScratch& w, const ConstView<float, 4>& q, index_t b, index_t i0, index_t hk, index_t G,
                        index_t M, float base_scale, index_t key_group, index_t key_groups, bool per_token_keys,
                        Position&& position, const RopeTable* rope = nullptr, const ConstView<float, 1>& head_scales = {}) {
  const index_t Dk = q.size(3);
  for (index_t r = 0; r < M; ++r) {
    const index_t i = r / G, h = hk * G + r % G;
    const float scale = head_scales.has_value() ? base_scale * head_scales(h) : base_scale;
    float* row = w.q.data() + r * Dk;
    const float* src = q.ptr(b, i0 + i, h, index_t{0});  // one checked index per row, not per element
    const index_t step = q.stride(3);
    if (rope) {
      for (index_t c = 0; c < Dk; ++c) row[c] = src[c * step];
      rope_row_in_place(*rope, static_cast<index_t>(position(i)), row, 1);
      for (index_t c = 0; c < Dk; ++c) row[c] *= scale;
    } else {
      for (index_t c = 0; c < Dk; ++c) row[c] = scale * src[c * step];
    }
    for (index_t g = 0; g < key_groups && per_token_keys; ++g) {  // the min terms of per-token keys
      float sum = 0.f;
      const index_t g1 = std::min(Dk, (g + 1) * key_group);
      for (index_t c = g * key_group; c < g1; ++c) sum += w.q[r * Dk + c];
      w.qsum[r * key_groups + g] = sum;
    }
    w.pos[r] = position(i);
  }
  std::fill(w.q.begin() + M * Dk, w.q.begin() + w.rows * Dk, 0.f);
  std::fill(w.qsum.begin() + M * key_groups, w.qsum.begin() + w.rows * key_groups, 0.f);
  w.query_bytes_ready = false;
  w.next_query_ready = false;
  w.coded_ready = false;
}

// One piece of one (sequence, KV head): blocks [first, last) (block_at(k) gives block k as a
// KvBlockView, positions increasing), then the tail rows, into the rows' online-softmax states
// and accumulators (row r: state[r], acc + r * w.ldacc). The query rows are in w
// (kv_load_query_rows); alibi slopes and the relative bias (`bias`, or null) are those of heads
// hk * G + g. `precision`: the integer kernels' operand bytes. Used by kv_cache_attention and by
// paged_attention over quantized pages (kv_cache/paged.hpp, two-byte operands).
template <class BlockAt>
void kv_attend_piece(const KvCacheConfig& cfg, const AttentionOptions& options, const ConstView<float, 1>& alibi_slopes,
                     index_t hk, index_t G, index_t M, KvScratch& w, BlockAt&& block_at, index_t first, index_t last,
                     const KvTailRows& tail, SoftmaxRow* state, float* acc, const RelativeBias* bias = nullptr,
                     KvOperandPrecision precision = KvOperandPrecision::two_byte) {
  if (bias && bias->kind == RelativeBiasKind::none) bias = nullptr;
  // The query bytes of this piece are made after this (kv_load_query_rows cleared them).
  w.one_byte = precision == KvOperandPrecision::one_byte;
  const bool alibi = alibi_slopes.has_value();
  const index_t ldacc = w.ldacc, Dk = cfg.key_dim, Dv = cfg.value_dim;
  // Coded storage: this piece's KV head, and the scratch of its kernels (grown once, then kept).
  const bool pq = cfg.coded && cfg.coded->format == KvCodeFormat::pq;
  w.head = hk;
  w.coded_ready = false;
  if (cfg.coded) {
    const KvCodedDims cd = coded_dims(cfg);
    if (pq) {
      w.pq_table.resize(static_cast<std::size_t>(w.rows * cd.mk * cd.Kk));
      w.pq_hist.assign(static_cast<std::size_t>(w.rows * cd.mv * cd.Kv), 0.f);
    } else {
      w.sign1_qsum.resize(static_cast<std::size_t>(w.rows * cd.Gk));
      w.sign1_out.resize(static_cast<std::size_t>(cd.W * 16));
      w.sign1_tot.resize(static_cast<std::size_t>(cd.Gv));
    }
  }
  const index_t hist_row = pq ? coded_dims(cfg).mv * coded_dims(cfg).Kv : 0;
  std::int64_t qmin = w.pos[0], qmax = w.pos[0];
  for (index_t r = 0; r < M; ++r) qmin = std::min(qmin, w.pos[r]), qmax = std::max(qmax, w.pos[r]);
  // True when every key in [lo, hi] is visible to every query row and no logit transform
  // applies (the common decode case): the per-key rule is skipped.
  const auto plain_range = [&](std::int64_t lo, std::int64_t hi) {
    if (options.softcap > 0.f || alibi || bias) return false;
    return (!options.causal || hi <= qmin) &&
           (options.window == 0 || lo > qmax - options.window || hi < options.sink_tokens);
  };
  // The span's segments take the logit rule, then one online-softmax step per row over all
  // of them; w.s then holds the probabilities.
  const auto softmax_span = [&](const KvSegment* segs, index_t n) {
    const index_t width = n * kKvBlockTokens;
    for (index_t r = 0; r < M; ++r) {
      const float slope = alibi ? alibi_slopes(hk * G + r % G) : 0.f;
      float* s = w.s.data() + r * w.lds;
      for (index_t j = 0; j < n; ++j) {
        const KvSegment& seg = segs[j];
        const bool plain = plain_range(seg.lo, seg.hi);
        kv_logit_rule(s + j * kKvBlockTokens, seg.positions, seg.count, kKvBlockTokens, w.pos[r], options, alibi,
                      slope, plain, bias, hk * G + r % G);
      }
      const float alpha = online_softmax_tile(s, width, state[r].m, state[r].l);
      if (alpha != 1.f) {
        scale_row(acc + r * ldacc, ldacc, alpha);
        if (pq) scale_row(w.pq_hist.data() + r * hist_row, hist_row, alpha);
      }
    }
    for (index_t r = M; r < w.rows; ++r) std::fill(w.s.begin() + r * w.lds, w.s.begin() + (r + 1) * w.lds, 0.f);
  };
  // A block no query row can see (causal, or window without sinks) is skipped whole.
  const auto skipped = [&](const KvBlockView& blk) {
    const bool after_every_query = options.causal && blk.min_position > qmax;
    const bool before_every_window = options.window > 0 && blk.max_position <= qmin - options.window &&
                                     blk.min_position >= options.sink_tokens;
    return blk.count == 0 || after_every_query || before_every_window;
  };
  // Spans of up to kKvSpanBlocks blocks: scores of each, the softmax step, values of each.
  KvBlockView span[kKvSpanBlocks];
  KvSegment segs[kKvSpanBlocks];
  index_t k = first;
  while (true) {
    index_t n = 0;
    for (; k < last && n < kKvSpanBlocks; ++k) {
      const KvBlockView blk = block_at(k);
      if (!skipped(blk)) span[n++] = blk;
    }
    if (n == 0) break;
    // The blocks after the span (for the prefetches of its last two blocks; a skipped one only
    // costs a wasted prefetch).
    KvBlockView after[2];
    for (index_t i = 0; i < 2 && k + i < last; ++i) after[i] = block_at(k + i);
    const auto upcoming = [&](index_t i) -> const KvBlockView* {
      return i < n ? &span[i] : k + (i - n) < last ? &after[i - n] : nullptr;
    };
    for (index_t j = 0; j < n; ++j) {
      LineStream ahead = unit_order_block(span[j]) ? unit_key_lines(span, n, j, upcoming(n), cfg, w.rows)
                                             : key_phase_lines(upcoming(j + 1), upcoming(j + 2), span[j], cfg, w.rows);
      segs[j] = {span[j].positions, span[j].count, span[j].min_position, span[j].max_position};
      any_block_scores(span, n, j, cfg, w, w.s.data() + j * kKvBlockTokens, ahead);
    }
    w.next_query_ready = false;
    softmax_span(segs, n);
    // Only a zero weight lets the block-wide value kernels put 0 * NaN into a row.
    const bool guard = span_has_zero_weight(span, n, w, M);
    if (guard)
      for (index_t r = 0; r < M; ++r)
        std::copy(acc + r * w.ldacc, acc + r * w.ldacc + cfg.value_dim, w.saved_acc.data() + r * w.ldacc);
    span_values(span, n, upcoming(n), cfg, w, acc);
    if (guard) guard_hidden_values(span, n, cfg, w, M, acc);
  }
  if (pq) {  // the pq histograms onto the value centroids: o_r[s] += sum_k W[s][k] C_v[h][s][k]
    const PqCodebooks& cb = cfg.coded->value_codebooks;
    const index_t K = cb.centroids, sd = cb.sub_dim();
    for (index_t r = 0; r < M; ++r)
      for (index_t sp = 0; sp < cb.subspaces; ++sp)
        for (index_t k = 0; k < K; ++k) {
          const float x = w.pq_hist[static_cast<std::size_t>(r * hist_row + sp * K + k)];
          if (x != 0.f) simd::axpy(x, cb.centroid(hk, sp, k), acc + r * ldacc + sp * sd, sd);
        }
  }
  for (index_t t0 = 0; t0 < tail.size; t0 += kKvBlockTokens) {
    const index_t n = std::min(kKvBlockTokens, tail.size - t0);
    for (index_t r = 0; r < M; ++r)
      for (index_t t = 0; t < n; ++t)
        w.s[r * w.lds + t] = simd::dot(w.q.data() + r * Dk, tail.keys + (t0 + t) * tail.key_stride, Dk);
    const KvSegment seg{tail.positions + t0, n, tail.positions[t0], tail.positions[t0 + n - 1]};
    softmax_span(&seg, 1);
    for (index_t r = 0; r < M; ++r)
      for (index_t t = 0; t < n; ++t) {
        const float p = w.s[r * w.lds + t];
        if (p != 0.f) simd::axpy(p, tail.values + (t0 + t) * tail.value_stride, acc + r * ldacc, Dv);
      }
  }
}
}  // namespace detail

/// Fast decode attention over the cache. Meant for Tq = 1 (or a few draft tokens); any Tq works.
/// Allocates the pieces' partial states (pieces * Tq * Hq * (Dv + 2) floats) and one scratch per
/// parallel block.
inline void kv_cache_attention(const KvCacheAttentionInputs& in, const AttentionOutputs& out,
                               const AttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  thread_local const ArgCheck check("kv_cache_attention");
  const auto d = validate_kv_attention(check, in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const KvCache& cache = *in.cache;
  const KvCacheConfig& cfg = cache.config();
  const index_t G = d.group(), M = d.Tq * G, rows = (M + kKvRows - 1) / kKvRows * kKvRows;
  const index_t key_groups = quant::group_count(d.Dk, cache.key_group());
  const index_t value_groups = quant::group_count(d.Dv, cfg.group_size);
  const float scale = attention_scale(options, d.Dk);

  // Pieces: a (b, KV head)'s blocks in contiguous runs of at least 8 (256 tokens), enough of them
  // for about 16 pieces per thread, so the pool's dynamic scheduling evens out the finish (with 4,
  // one head per piece at Hkv 8, a core idled for most of a piece: int8 Tk 16384 2.10 -> 1.36 ms;
  // one per thread on many threads: decode_pieces_per_thread); the residual goes with the last
  // piece.
  constexpr index_t kMinBlocksPerPiece = 8;
  const int threads = executor.concurrency();
  const index_t wanted = std::max<index_t>(
      1, (decode_pieces_per_thread(threads, 16) * threads + d.B * d.Hkv - 1) / (d.B * d.Hkv));
  // Per-call tables in thread_local storage, grown on demand: no allocation after warm-up.
  // (References: the tasks below run on other threads, whose thread_locals are not these.)
  thread_local std::vector<KvPiece> t_pieces;
  thread_local std::vector<index_t> t_first_piece;
  std::vector<KvPiece>& pieces = t_pieces;
  std::vector<index_t>& first_piece = t_first_piece;
  // At most `wanted` pieces per (b, KV head): reserved, so a cache that grows between calls (and
  // splits into more pieces) allocates nothing once the tables reached that size.
  pieces.reserve(static_cast<std::size_t>(d.B * d.Hkv * wanted));
  pieces.clear();
  first_piece.assign(static_cast<std::size_t>(d.B * d.Hkv + 1), 0);
  index_t most_pieces = 1;  // of one (b, KV head): sizes the combine's tasks
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      first_piece[b * d.Hkv + hk] = static_cast<index_t>(pieces.size());
      const index_t nb = static_cast<index_t>(cache.head(b, hk).blocks.size());
      // pq storage: one piece per (b, KV head), as each piece builds its lookup tables and applies
      // its centroid histograms once (K * (Dk + Dv) per query row, independent of the length).
      const bool pq = cfg.coded && cfg.coded->format == KvCodeFormat::pq;
      const index_t split = pq ? 1 : std::clamp<index_t>(nb / kMinBlocksPerPiece, 1, wanted);
      most_pieces = std::max(most_pieces, split);
      for (index_t p = 0; p < split; ++p) pieces.push_back({b, hk, nb * p / split, nb * (p + 1) / split, p == split - 1});
    }
  first_piece[d.B * d.Hkv] = static_cast<index_t>(pieces.size());
  const index_t ldacc = (d.Dv + simd::kWidth - 1) / simd::kWidth * simd::kWidth;
  thread_local std::vector<SoftmaxRow> t_states;
  thread_local AlignedVector<float> t_accs;
  std::vector<SoftmaxRow>& states = t_states;
  AlignedVector<float>& accs = t_accs;
  states.reserve(pieces.capacity() * static_cast<std::size_t>(rows));
  accs.reserve(pieces.capacity() * static_cast<std::size_t>(rows * ldacc));
  // Sized only: each piece starts its own rows in the parallel pass (start_rows).
  states.resize(pieces.size() * static_cast<std::size_t>(rows));
  accs.resize(pieces.size() * static_cast<std::size_t>(rows * ldacc));

  const bool per_token_keys = cfg.key_quant == KeyQuant::per_token;
  KvScratchSet& scratch = KvScratchSet::local();
  scratch.prepare(executor.concurrency() + 1, rows, d.Dk, d.Dv, key_groups, value_groups);
  parallel_for(executor, static_cast<index_t>(pieces.size()), 1, [&](index_t begin, index_t end) {
    index_t slot = 0;
    KvScratch& w = scratch.acquire(slot);
    for (index_t pi = begin; pi < end; ++pi) {
      const KvPiece& piece = pieces[pi];
      const KvHead& hd = cache.head(piece.b, piece.hk);
      start_rows(states.data() + pi * rows, accs.data() + pi * rows * ldacc, rows, ldacc);
      kv_load_query_rows(w, in.q, piece.b, 0, piece.hk, G, M, scale, cache.key_group(), key_groups, per_token_keys,
                         [&](index_t i) { return kv_query_position(in, piece.b, i); }, in.rope, in.head_scales);
      KvTailRows tail;
      if (piece.residual) {
        const KvResidual& res = hd.residual;
        tail = {res.keys.data(), d.Dk, res.values.data(), d.Dv, res.positions.data(), res.size()};
      }
      kv_attend_piece(
          cfg, options, in.alibi_slopes, piece.hk, G, M, w,
          [&](index_t k) { return view_of(hd.blocks[static_cast<std::size_t>(k)]); }, piece.first_block,
          piece.last_block, tail, states.data() + pi * rows, accs.data() + pi * rows * ldacc, &in.relative_bias,
          in.operand_precision);
    }
    scratch.release(slot);
  });

  // Combine each row's pieces in key order and write o / lse (rows in parallel on many threads:
  // combine_grain).
  const bool has_sink = in.sink_logits.has_value();
  const index_t out_rows = d.B * d.Hkv * M;
  parallel_for(executor, out_rows, combine_grain(threads, out_rows, most_pieces, d.Dv), [&](index_t begin, index_t end) {
    for (index_t row = begin; row < end; ++row) {
      const index_t head = row / M, r = row % M, b = head / d.Hkv, hk = head % d.Hkv;
      const index_t p0 = first_piece[head], p1 = first_piece[head + 1];
      const index_t i = r / G, h = hk * G + r % G;
      const float lse = finish_pieces(states.data(), accs.data(), ldacc, d.Dv, p1 - p0,
                                      has_sink ? in.sink_logits(h) : kNoSink, out.o.ptr(b, i, h), out.o.stride(3),
                                      [&](index_t p) { return (p0 + p) * rows + r; });
      if (out.lse.has_value()) out.lse(b, i, h) = lse;
    }
  });
}

}  // namespace seqmix
