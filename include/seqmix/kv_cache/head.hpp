// The storage of one (batch row, KV head) of a KvCache: its blocks, the entry order over them and
// the fp32 residual window of the newest tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/kv_cache/arena.hpp"
#include "seqmix/kv_cache/block.hpp"

namespace seqmix::detail {

struct KvResidual {
  KvResidual() = default;
  explicit KvResidual(KvArena* a)
      : keys(KvAllocator<float>(a)), values(KvAllocator<float>(a)), positions(KvAllocator<std::int64_t>(a)),
        given_saliency(KvAllocator<float>(a)), attention_sum(KvAllocator<float>(a)), attention_queries(KvAllocator<float>(a)) {}

  KvVector<float> keys, values;       // [n][Dk], [n][Dv]
  KvVector<std::int64_t> positions;   // [n]
  KvVector<float> given_saliency;     // [n], NaN when not given
  KvVector<float> attention_sum, attention_queries;  // [n], from observe_attention
  index_t size() const noexcept { return static_cast<index_t>(positions.size()); }
  std::size_t bytes() const noexcept {
    return (keys.size() + values.size() + given_saliency.size() + attention_sum.size() + attention_queries.size()) *
               sizeof(float) + positions.size() * sizeof(std::int64_t);
  }
};

struct KvSlot {
  std::uint32_t block, slot;
};

// The fp32 rows of one flushed group of 32 residual tokens, as they were when flushed (saliency
// state included), and the number of blocks (1, or 2 with ZipCache) made from them. Kept for the
// newest groups only, so that truncate() can put them back into the residual window exactly.
struct KvFlushedGroup {
  explicit KvFlushedGroup(KvArena* a) : rows(a) {}
  KvResidual rows;
  index_t blocks = 0;
};

struct KvHead {
  KvHead() = default;
  explicit KvHead(KvArena* a)
      : blocks(KvAllocator<KvBlock>(a)), order(KvAllocator<KvSlot>(a)), residual(a), flushed(KvAllocator<KvFlushedGroup>(a)) {}

  KvVector<KvBlock> blocks;
  KvVector<KvSlot> order;  // entry -> slot, for the block part
  KvResidual residual;
  // The newest flushed groups, oldest first (at most ceil(config.rollback / 32) of them). Their
  // blocks are the last `blocks` of `blocks` and their entries the last 32 each of `order`;
  // retain(), compact() and replace() break that and clear it.
  KvVector<KvFlushedGroup> flushed;
  index_t kv_head = 0;  // which KV head this is (coded storage: the pq codebooks it uses)
  index_t size() const noexcept { return static_cast<index_t>(order.size()) + residual.size(); }
};

}  // namespace seqmix::detail
