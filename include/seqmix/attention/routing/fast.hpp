// routing_attention, fast form: the shared membership (reference.hpp), then each cluster run
// through the dense flash kernel (dense/flash.hpp) on its gathered members.
//
// Per (batch row, query head), tasks (one per cluster) run in parallel: the member queries and
// the member keys / values (both increasing in position) are gathered into contiguous buffers.
// Causal masking maps onto the kernel's own rule: a member query at position i is given the
// position p = (member keys at positions <= i) - 1 in the gathered key order, so "key index
// <= p" is exactly "key position <= i" (p = -1: no visible key, o = 0, lse = -inf). Every
// (query, cluster) result has its own partial row, laid out by query (compressed rows), so no
// two tasks write the same memory; a final pass merges a query's clusters by lse
// (merge_partial_rows, the attention_merge monoid); a query in no cluster gets o = 0,
// lse = -inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"      // append_key_tiles
#include "seqmix/attention/block_sparse/gathered.hpp"  // merge_partial_rows
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/routing/reference.hpp"

namespace seqmix {
namespace detail {

// Per-thread scratch of one cluster task: flash scratch, gathered rows and positions.
struct RoutingScratch {
  std::unique_ptr<FlashScratch> flash;
  std::array<index_t, 3> sized{};
  std::vector<float> q, k, v, o, lse;
  std::vector<std::int64_t> pos;
  RoutingScratch& fit(index_t w, index_t Dk, index_t Dv) {
    const std::array<index_t, 3> need{w, Dk, Dv};
    if (!flash || sized != need) {
      flash = std::make_unique<FlashScratch>(std::min(w, kFlashRows), Dk, round_up(Dk, simd::kWidth),
                                             round_up(Dv, simd::kWidth));
      q.resize(static_cast<std::size_t>(w * Dk));
      k.resize(static_cast<std::size_t>(w * Dk));
      v.resize(static_cast<std::size_t>(w * Dv));
      o.resize(static_cast<std::size_t>(w * Dv));
      lse.resize(static_cast<std::size_t>(w));
      pos.resize(static_cast<std::size_t>(w));
      sized = need;
    }
    return *this;
  }
};

}  // namespace detail

/// Same arguments and results as reference::routing_attention. Allocates the membership
/// (2 * B * Hq * C * w int32) and per (batch row, query head) the partial results
/// (C * w * (Dv + 1) floats), plus one scratch per thread (kept across calls). Threaded over the
/// clusters of each (batch row, head) and over the queries of the merge.
inline void routing_attention(const RoutingInputs& in, const AttentionOutputs& out, const RoutingOptions& options = {},
                              const Executor& executor = serial_executor()) {
  using namespace detail;
  AttentionDims d{};
  const index_t w = validate_routing("routing_attention", in, out, options, d);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tq, C = in.centroids.size(1), G = d.group(), Dk = d.Dk, Dv = d.Dv;
  Tensor<std::int32_t, 4> qm({d.B, d.Hq, C, w}), km({d.B, d.Hq, C, w});
  routing_clusters(in, qm.view(), km.view(), options, executor);
  const ConstView<float, 4> kk = in.k.has_value() ? in.k : in.q;
  const AttentionOptions rule = routing_attention_options(options);
  const float scale = attention_scale(rule, Dk);
  Tensor<float, 2> part_o({std::max<index_t>(C * w, 1), Dv});
  std::vector<float> part_lse(static_cast<std::size_t>(C * w));
  std::vector<index_t> offsets(static_cast<std::size_t>(T + 1)), slot(static_cast<std::size_t>(C * w));

  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      const index_t hk = h / G;
      // Partial rows by query: offsets[i] .. offsets[i + 1] hold query i's clusters in order.
      std::fill(offsets.begin(), offsets.end(), 0);
      for (index_t c = 0; c < C; ++c)
        for (index_t e = 0; e < w; ++e) ++offsets[static_cast<std::size_t>(qm(b, h, c, e) + 1)];
      for (index_t i = 0; i < T; ++i) offsets[static_cast<std::size_t>(i + 1)] += offsets[static_cast<std::size_t>(i)];
      {
        std::vector<index_t> fill(offsets.begin(), offsets.end() - 1);
        for (index_t c = 0; c < C; ++c)
          for (index_t e = 0; e < w; ++e) slot[static_cast<std::size_t>(c * w + e)] = fill[static_cast<std::size_t>(qm(b, h, c, e))]++;
      }
      executor.run(C, [&](index_t c) {
        thread_local RoutingScratch scratch;
        RoutingScratch& s = scratch.fit(w, Dk, Dv);
        const std::int32_t* qs = qm.view().ptr(b, h, c, 0);
        const std::int32_t* ks = km.view().ptr(b, h, c, 0);
        index_t seen = 0;  // member keys at positions <= the current query's
        for (index_t e = 0; e < w; ++e) {
          const index_t i = qs[e];
          kv_row_to_float(in.q.ptr(b, i, h), in.q.stride(3), Dk, s.q.data() + e * Dk);
          while (seen < w && ks[seen] <= i) ++seen;
          s.pos[static_cast<std::size_t>(e)] = seen - 1;
        }
        for (index_t f = 0; f < w; ++f) {
          const index_t j = ks[f];
          kv_row_to_float(kk.ptr(b, j, hk), kk.stride(3), Dk, s.k.data() + f * Dk);
          kv_row_to_float(in.v.ptr(b, j, hk), in.v.stride(3), Dv, s.v.data() + f * Dv);
        }
        AttentionInputs<float> g;
        g.q = ConstView<float, 4>(s.q.data(), {1, w, 1, Dk});
        g.k = ConstView<float, 4>(s.k.data(), {1, w, 1, Dk});
        g.v = ConstView<float, 4>(s.v.data(), {1, w, 1, Dv});
        g.positions = ConstView<std::int64_t, 2>(s.pos.data(), {1, w});
        const AttentionOutputs go{TensorView<float, 4>(s.o.data(), {1, w, 1, Dv}),
                                  TensorView<float, 3>(s.lse.data(), {1, w, 1})};
        const AttentionDims gd{1, w, w, 1, 1, Dk, Dv};
        for (index_t e0 = 0; e0 < w; e0 += kFlashRows) {
          const index_t rows = std::min(kFlashRows, w - e0);
          // Causal: the rows see member keys [0, last position + 1) only.
          const index_t end = options.causal ? static_cast<index_t>(s.pos[static_cast<std::size_t>(e0 + rows - 1)]) + 1 : w;
          flash_block(g, go, rule, gd, scale, 0, 0, e0, rows, *s.flash, [&](const index_t*, index_t) {
            std::vector<KeyTile> tiles;
            append_key_tiles(0, end, tiles);
            return tiles;
          });
        }
        for (index_t e = 0; e < w; ++e) {
          const auto at = slot[static_cast<std::size_t>(c * w + e)];
          std::copy(s.o.data() + e * Dv, s.o.data() + (e + 1) * Dv, part_o.view().ptr(at, 0));
          part_lse[static_cast<std::size_t>(at)] = s.lse[static_cast<std::size_t>(e)];
        }
      });
      parallel_for(executor, T, 64, [&](index_t first, index_t last) {
        for (index_t i = first; i < last; ++i) {
          const index_t o0 = offsets[static_cast<std::size_t>(i)], n = offsets[static_cast<std::size_t>(i + 1)] - o0;
          const float lse = merge_partial_rows(out.o.ptr(b, i, h), out.o.stride(3), kMinusInf, part_o.data() + o0 * Dv,
                                               part_lse.data() + o0, n, Dv);
          if (out.lse.has_value()) out.lse(b, i, h) = lse;
        }
      });
    }
}

}  // namespace seqmix
