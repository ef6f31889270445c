// Attention of gathered queries over one key block: the kernel of the content-based sparse forms
// (moba, nsa) whose selection differs from query to query.
//
// When each query picks its own key blocks, a query block shares no tile list, so the flash
// kernel is run the other way round: the queries that picked block n are gathered into one Q
// tile and attend to n's keys, so every K/V tile loaded feeds every gathered row (MoBA's
// "varlen over gathered queries" form). The caller merges each query's per-block (o, lse)
// results with the attention_merge monoid.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <cstdint>
#include <memory>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"  // append_key_tiles
#include "seqmix/attention/dense/flash.hpp"

namespace seqmix {
namespace detail {

// Per-thread scratch of gathered_block_attention: the flash scratch, the gathered Q rows, their
// positions and the (o, lse) results. Kept per thread (thread_local at the caller) and rebuilt
// only when the shape changes.
struct GatheredScratch {
  std::unique_ptr<FlashScratch> flash;
  std::array<index_t, 3> sized{};
  AlignedVector<float> q, o, lse;
  std::vector<std::int64_t> pos;
  GatheredScratch& fit(index_t rows, index_t Dk, index_t Dv) {
    const std::array<index_t, 3> need{rows, Dk, Dv};
    if (!flash || sized != need) {
      flash = std::make_unique<FlashScratch>(rows, Dk, round_up(Dk, simd::kWidth), round_up(Dv, simd::kWidth));
      q.resize(static_cast<std::size_t>(rows * Dk));
      o.resize(static_cast<std::size_t>(rows * Dv));
      lse.resize(static_cast<std::size_t>(rows));
      pos.resize(static_cast<std::size_t>(rows));
      sized = need;
    }
    return *this;
  }
};

// Queries queries[0..count) of batch row b (query heads [h0, h0 + heads), all reading KV head
// hk) against keys [j0, j1) of that KV head, each query at its own position (Tk - Tq + i) under
// options' causal rule. count * heads <= the rows w was fitted for. Results: w.o rows
// (r * heads + g) of Dv floats and w.lse, in the order of queries x heads.
template <class KV>
void gathered_block_attention(const AttentionInputs<KV>& in, index_t b, index_t hk, index_t h0, index_t heads,
                              const std::int32_t* queries, index_t count, index_t j0, index_t j1,
                              const AttentionOptions& options, float scale, GatheredScratch& w) {
  const index_t Dk = in.q.size(3), Dv = in.v.size(3), Tq = in.q.size(1), Tk = in.k.size(1);
  for (index_t r = 0; r < count; ++r) {
    for (index_t g = 0; g < heads; ++g)
      kv_row_to_float(in.q.ptr(b, queries[r], h0 + g), in.q.stride(3), Dk, w.q.data() + (r * heads + g) * Dk);
    w.pos[static_cast<std::size_t>(r)] = Tk - Tq + queries[r];
  }
  AttentionInputs<KV> gathered;
  gathered.q = ConstView<float, 4>(w.q.data(), {1, count, heads, Dk});
  gathered.k = in.k.slice(0, b, 1).slice(2, hk, 1);
  gathered.v = in.v.slice(0, b, 1).slice(2, hk, 1);
  gathered.positions = ConstView<std::int64_t, 2>(w.pos.data(), {1, count});
  const AttentionOutputs out{TensorView<float, 4>(w.o.data(), {1, count, heads, Dv}),
                             TensorView<float, 3>(w.lse.data(), {1, count, heads})};
  const AttentionDims dims{1, count, Tk, heads, 1, Dk, Dv};
  flash_block(gathered, out, options, dims, scale, 0, 0, 0, count, *w.flash, [&](const index_t*, index_t) {
    std::vector<KeyTile> tiles;
    append_key_tiles(j0, j1, tiles);
    return tiles;
  });
}


// The queries of one KV head's group sorted by the key block they chose (a counting sort), for
// the gathered form of the content-based sparse prefills (moba, landmark, infllm):
// chosen(i, g, e) for e < slots is the block picked by query i, head g of the group in selection
// slot e (negative: no block). On return, for head g and block n the entries
// [offsets[g * Nb + n], offsets[g * Nb + n + 1]) of entry_query / entry_slot hold, in query
// order, the queries that chose n and the slot they chose it in. offsets gets G * Nb + 1 entries.
inline void group_queries_by_block(const ConstView<std::int32_t, 3>& chosen, index_t slots, index_t Nb,
                                   std::vector<index_t>& offsets, std::vector<std::int32_t>& entry_query,
                                   std::vector<std::int32_t>& entry_slot) {
  const index_t Tq = chosen.size(0), G = chosen.size(1);
  offsets.assign(static_cast<std::size_t>(G * Nb + 1), 0);
  for (index_t i = 0; i < Tq; ++i)
    for (index_t g = 0; g < G; ++g)
      for (index_t e = 0; e < slots; ++e)
        if (chosen(i, g, e) >= 0) ++offsets[static_cast<std::size_t>(g * Nb + chosen(i, g, e) + 1)];
  for (std::size_t c = 1; c < offsets.size(); ++c) offsets[c] += offsets[c - 1];
  entry_query.resize(static_cast<std::size_t>(offsets.back()));
  entry_slot.resize(entry_query.size());
  std::vector<index_t> fill(offsets.begin(), offsets.end() - 1);
  for (index_t i = 0; i < Tq; ++i)
    for (index_t g = 0; g < G; ++g)
      for (index_t e = 0; e < slots; ++e) {
        const index_t n = chosen(i, g, e);
        if (n < 0) continue;
        const auto at = static_cast<std::size_t>(fill[static_cast<std::size_t>(g * Nb + n)]++);
        entry_query[at] = static_cast<std::int32_t>(i), entry_slot[at] = static_cast<std::int32_t>(e);
      }
}


// Merges a row's parts with the attention_merge monoid, in place: o (stride o_stride) holds a
// part with log-denominator own_lse (kMinusInf: o holds nothing and is overwritten), and
// parts e < count hold (part_o + e * Dv, part_lse[e]); kMinusInf parts are empty. Returns the
// merged lse. No part at all gives o = 0, lse = -inf; a NaN lse gives NaN o and lse.
inline float merge_partial_rows(float* o, index_t o_stride, float own_lse, const float* part_o, const float* part_lse,
                                index_t count, index_t Dv) noexcept {
  float top = own_lse;
  bool nan = std::isnan(top);
  for (index_t e = 0; e < count; ++e) nan = nan || std::isnan(part_lse[e]), top = std::max(top, part_lse[e]);
  if (nan || top == kMinusInf) {
    const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.f;
    for (index_t c = 0; c < Dv; ++c) o[c * o_stride] = fill;
    return nan ? fill : kMinusInf;
  }
  const float w_own = own_lse == kMinusInf ? 0.f : std::exp(own_lse - top);
  float total = w_own;
  for (index_t c = 0; c < Dv; ++c) o[c * o_stride] = w_own == 0.f ? 0.f : o[c * o_stride] * w_own;
  for (index_t e = 0; e < count; ++e) {
    if (part_lse[e] == kMinusInf) continue;
    const float wp = std::exp(part_lse[e] - top);
    total += wp;
    for (index_t c = 0; c < Dv; ++c) o[c * o_stride] += wp * part_o[e * Dv + c];
  }
  const float inv = 1.f / total;
  for (index_t c = 0; c < Dv; ++c) o[c * o_stride] *= inv;
  return top + std::log(total);
}

}  // namespace detail
}  // namespace seqmix
