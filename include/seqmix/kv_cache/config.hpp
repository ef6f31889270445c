// KvCacheConfig: what one KvCache stores and how (SPEC section 6). The storage it describes is
// explained in cache.hpp and README.md.
#pragma once

#include <cstdint>
#include <optional>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache/arena.hpp"
#include "seqmix/kv_cache/coded/codebooks.hpp"
#include "seqmix/kv_cache/quantize.hpp"
#include "seqmix/positional/rope/table.hpp"

namespace seqmix {

/// How quantized keys are grouped (values are always per token).
enum class KeyQuant : std::uint8_t {
  per_channel,  ///< KIVI: one (scale, min) per channel per block of up to 32 tokens
  per_token,    ///< one (scale, min) per token per group of `group_size` channels
};

/// ZipCache mixed precision: the salient tokens of each flushed group keep the config's formats,
/// the others get these lower ones.
struct KvMixedPrecision {
  KvFormat key_format = KvFormat::int4;    ///< formats of the non-salient tokens
  /// Format of the non-salient values.
  KvFormat value_format = KvFormat::int2;
  float salient_fraction = 0.2f;           ///< share of each flushed group kept in the high formats
};

/// Coded storage of a KvCache's blocks (issue 22 item 5; docs/operators.md section 6): every
/// flushed block keeps its keys and values as product-quantization codes or as 1-bit signs with
/// per-group scales instead of KvCacheConfig::key_format / value_format (which are then unused).
/// The residual window, positions, truncate / rollback, retain, compaction and replace work as for
/// the other formats, and kv_cache_attention reads the codes directly (lookup-table scores,
/// centroid-summed values, masked adds over sign bits: coded/kernels.hpp).
struct KvCodedStorage {
  KvCodeFormat format = KvCodeFormat::sign1;  ///< pq or sign1
  /// sign1: channels per scale group (0 = the whole row).
  index_t group_size = 32;
  /// pq: codebooks of keys (dim Dk) per KV head and sub-space (given, or fit_pq_codebooks on a prefill).
  PqCodebooks key_codebooks;
  /// pq: codebooks of values (dim Dv).
  PqCodebooks value_codebooks;
};

/// What one KvCache stores and how (docs/operators.md section 6). Defaults: one row, one head,
/// fp16 keys and values, no residual window, no rollback rows, heap storage.
struct KvCacheConfig {
  ///@{
  index_t batch = 1, kv_heads = 1, key_dim = 0, value_dim = 0;  ///< B, Hkv, Dk, Dv
  ///@}
  KvFormat key_format = KvFormat::f16;    ///< f32, f16, bf16, int8 or int4
  KvFormat value_format = KvFormat::f16;  ///< f32, f16, bf16, int8, int4 or int2
  /// Key grouping for integer key formats (KIVI's per-channel by default).
  KeyQuant key_quant = KeyQuant::per_channel;
  /// Channels per quantization group for per-token keys and for values; 0 = the whole row.
  index_t group_size = 0;
  /// Full-precision window R: the newest R (up to R + 31) tokens stay fp32.
  index_t residual = 0;
  std::optional<KvMixedPrecision> mixed;  ///< ZipCache; empty = one precision
  /// Exact rollback depth W: truncate() of up to W newest tokens leaves the cache exactly as if
  /// they had never been appended, in every format (the fp32 rows of the newest ceil(W / 32)
  /// flushed groups are kept to undo their flush). Deeper truncation drops entries without
  /// restoring them (the survivors keep their codes). 0 = no rows kept.
  index_t rollback = 0;
  /// Caller-provided storage (arena.hpp): every byte the cache holds or uses after construction
  /// comes from this arena (KvArenaFull when it runs out); null = the heap. Not owned.
  KvArena* arena = nullptr;
  /// Coded block storage (PQ codes or 1-bit signs) instead of key_format / value_format; empty =
  /// the formats. Not combinable with `mixed`.
  std::optional<KvCodedStorage> coded;
};

/// One ragged append (KvCache::append): tokens of several sequences, each to its own cache row.
struct KvAppendInputs {
  ConstView<float, 4> keys;             ///< [Bt, T, Hkv, Dk]: dense [B, T] or packed [1, total_T]
  ConstView<float, 4> values;           ///< [Bt, T, Hkv, Dv]
  IndexTable positions = {};            ///< [Bt, T] int32 or int64, optional: default continues each row
  ConstView<float, 3> saliency = {};    ///< [Bt, T, Hkv], optional (ZipCache)
  /// cu_seqlens [N+1]: sequence n appends tokens [cu[n], cu[n+1]) of the packed tensors.
  /// state_indices [N]: the cache row (in [0, config.batch)) each sequence appends to; -1 = a
  /// padding sequence, nothing appended. Without it sequence n appends to row n (N = batch).
  /// has_initial_state [N] false: the row is emptied first (reset(): a new request in the row).
  SequenceBatch batch = {};
  /// Rotary embedding fused into the append (docs/operators.md section 10), or nullptr: each new
  /// key is rotated at its position (given or default) before it is stored, so the cache holds
  /// rotated keys; values are stored as given. The table must outlive the call.
  const RopeTable* rope = nullptr;
};

}  // namespace seqmix
