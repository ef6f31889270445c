// The storage of one (batch row, KV head) of a KvCache: its blocks, the entry order over them and
// the fp32 residual window of the newest tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/kv_cache/block.hpp"

namespace seqmix::detail {

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

}  // namespace seqmix::detail
