// ZipCache's normalized attention saliency over a whole prompt (the quantity KvCache gathers
// per residual token with observe_attention).
#pragma once

#include <cstdint>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// ZipCache's normalized attention saliency: out[j] = sum_i probs[i, j] / #{i : query_positions[i]
/// >= key_positions[j]}, the attention a key receives averaged over the queries that could see it
/// (plain accumulated attention favours early tokens, which more queries see). probs [Tq, Tk],
/// query_positions [Tq], key_positions [Tk], out [Tk]; a key no query sees gets 0.
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
