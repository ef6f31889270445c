// Weighted parts of a query row, merged as they come: the combining step of landmark attention
// and infllm, whose per-query key sets are unions of key ranges computed on the flash kernel.
//
// A row's result is o = sum_p exp(w_p) o_p / sum_p exp(w_p) over parts p, each a normalized
// attention output o_p over one key range with a log-weight w_p. For the plain softmax over a
// disjoint union of ranges w_p is the part's lse (the attention_merge monoid); landmark
// attention gives an earlier block the landmark's logit instead (the grouped softmax). The
// accumulator keeps per row the running maximum m, s = sum exp(w_p - m) and
// a = sum exp(w_p - m) o_p, so parts can arrive in any order, one block at a time, without
// storing them.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/attention/block_sparse/gathered.hpp"

namespace seqmix {
namespace detail {

struct WeightedPartsAccumulator {
  index_t Dv = 0;
  std::vector<float> m, s, a;
  std::vector<char> nan;

  void reset(index_t rows, index_t dv) {
    Dv = dv;
    m.assign(static_cast<std::size_t>(rows), kMinusInf);
    s.assign(static_cast<std::size_t>(rows), 0.f);
    a.assign(static_cast<std::size_t>(rows * dv), 0.f);
    nan.assign(static_cast<std::size_t>(rows), 0);
  }

  // Adds part (o, weight) to row r; an empty part (weight -inf) adds nothing, a NaN weight
  // makes the row NaN.
  void add(index_t r, float weight, const float* o) {
    const auto at = static_cast<std::size_t>(r);
    if (std::isnan(weight)) nan[at] = 1;
    if (nan[at] || weight == kMinusInf) return;
    float* acc = a.data() + r * Dv;
    if (weight > m[at]) {
      const float shrink = m[at] == kMinusInf ? 0.f : std::exp(m[at] - weight);
      s[at] *= shrink;
      for (index_t c = 0; c < Dv; ++c) acc[c] *= shrink;
      m[at] = weight;
    }
    const float p = std::exp(weight - m[at]);
    s[at] += p;
    for (index_t c = 0; c < Dv; ++c) acc[c] += p * o[c];
  }

  // Writes row r's result: o = a / s and returns lse = m + log s (a row without parts gives
  // o = 0, lse = -inf; a NaN part gives NaN).
  float finish(index_t r, float* o, index_t o_stride) const {
    const auto at = static_cast<std::size_t>(r);
    if (nan[at] || m[at] == kMinusInf) {
      const float fill = nan[at] ? std::numeric_limits<float>::quiet_NaN() : 0.f;
      for (index_t c = 0; c < Dv; ++c) o[c * o_stride] = fill;
      return nan[at] ? fill : kMinusInf;
    }
    const float inv = 1.f / s[at];
    const float* acc = a.data() + r * Dv;
    for (index_t c = 0; c < Dv; ++c) o[c * o_stride] = acc[c] * inv;
    return m[at] + std::log(s[at]);
  }
};

// Per-thread working set of the landmark / infllm tasks.
struct BlockPartsScratch {
  GatheredScratch gathered;
  WeightedPartsAccumulator parts;
  std::vector<std::int32_t> queries, subset;
  std::vector<float> scores;
  std::vector<std::pair<float, std::int32_t>> candidates;
  std::vector<std::int32_t> chosen;
};

}  // namespace detail
}  // namespace seqmix
