// lsh_attention, fast form: the shared hashing (reference.hpp), a counting sort per round, and
// each chunk run through the dense flash kernel (dense/flash.hpp) on gathered rows.
//
// Per (batch row, head), tasks (round r, chunk c) run in parallel: the chunk's queries (qk rows
// in sorted order) and its keys (the normalized qk rows and v rows of chunks c - 1 and c) are
// gathered into contiguous buffers, an additive mask [queries x keys] holds -inf where the
// causal or the self rule hides a key (positions are not monotone in the sorted order, so the
// kernel's own causal rule cannot be used), and flash_block computes (o_r, lse_r) of those rows.
// Each (position, round) has its own partial row, so no two tasks write the same memory; a final
// pass merges a position's rounds by lse (merge_partial_rows, the attention_merge monoid) and
// applies the self rule where no round saw a key.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"  // append_key_tiles
#include "seqmix/attention/block_sparse/gathered.hpp"  // merge_partial_rows
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/lsh/reference.hpp"

namespace seqmix {
namespace detail {

// Per-thread scratch of one (round, chunk) task: flash scratch and gathered rows.
struct LshScratch {
  std::unique_ptr<FlashScratch> flash;
  std::array<index_t, 3> sized{};
  std::vector<float> q, k, v, mask, o, lse;
  LshScratch& fit(index_t L, index_t Dk, index_t Dv) {
    const index_t rows = std::min(L, kFlashRows);
    const std::array<index_t, 3> need{L, Dk, Dv};
    if (!flash || sized != need) {
      flash = std::make_unique<FlashScratch>(rows, Dk, round_up(Dk, simd::kWidth), round_up(Dv, simd::kWidth));
      q.resize(static_cast<std::size_t>(L * Dk));
      k.resize(static_cast<std::size_t>(2 * L * Dk));
      v.resize(static_cast<std::size_t>(2 * L * Dv));
      mask.resize(static_cast<std::size_t>(L * 2 * L));
      o.resize(static_cast<std::size_t>(L * Dv));
      lse.resize(static_cast<std::size_t>(L));
      sized = need;
    }
    return *this;
  }
};

}  // namespace detail

/// Same arguments and results as reference::lsh_attention. Allocates the buckets
/// ([B,H,n_rounds,T] int32), and per (batch row, head) the sorted orders, the normalized keys
/// (T * Dk floats) and the rounds' partial results (T * n_rounds * (Dv + 1) floats), plus one
/// scratch per thread (kept across calls). Threaded over the (round, chunk) tasks of each
/// (batch row, head) and over the positions of the merge.
inline void lsh_attention(const LshInputs& in, const AttentionOutputs& out, const LshOptions& options = {},
                          const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_lsh("lsh_attention", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tq, R = options.n_rounds, L = std::min(options.chunk_len, T), Dk = d.Dk, Dv = d.Dv;
  const index_t chunks = (T + L - 1) / L;
  const float scale = attention_scale(lsh_attention_options(options), Dk);
  Tensor<std::int32_t, 4> buckets({d.B, d.Hq, R, T});
  lsh_buckets(in, buckets.view(), options, executor);
  Tensor<std::int32_t, 2> order({R, T});
  Tensor<float, 2> keys({T, Dk});
  Tensor<float, 3> part_o({T, R, Dv});
  Tensor<float, 2> part_lse({T, R});
  AttentionOptions open;
  open.causal = false;
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();

  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      parallel_for(executor, T, 256, [&](index_t first, index_t last) {  // k_t = qk_t / |qk_t|
        for (index_t t = first; t < last; ++t) {
          float* row = keys.view().ptr(t, 0);
          kv_row_to_float(in.qk.ptr(b, t, h), in.qk.stride(3), Dk, row);
          double norm = 0.0;
          for (index_t c = 0; c < Dk; ++c) norm += static_cast<double>(row[c]) * row[c];
          const float inv = norm > 0.0 ? static_cast<float>(1.0 / std::sqrt(norm)) : 0.f;
          for (index_t c = 0; c < Dk; ++c) row[c] *= inv;
        }
      });
      parallel_for(executor, R, 1, [&](index_t first, index_t last) {
        std::vector<index_t> count;
        for (index_t r = first; r < last; ++r)
          lsh_sort_by_bucket(buckets.view().ptr(b, h, r, 0), T, options.n_buckets, order.view().ptr(r, 0), count);
      });
      executor.run(R * chunks, [&](index_t task) {
        const index_t r = task / chunks, c = task % chunks;
        thread_local LshScratch scratch;
        LshScratch& w = scratch.fit(L, Dk, Dv);
        const std::int32_t* ord = order.view().ptr(r, 0);
        const index_t s0 = c * L, s1 = std::min(T, s0 + L), k0 = std::max<index_t>(0, s0 - L);
        const index_t nq = s1 - s0, nk = s1 - k0;
        for (index_t e = 0; e < nq; ++e)
          kv_row_to_float(in.qk.ptr(b, ord[s0 + e], h), in.qk.stride(3), Dk, w.q.data() + e * Dk);
        for (index_t e = 0; e < nk; ++e) {
          const index_t j = ord[k0 + e];
          std::copy(keys.view().ptr(j, 0), keys.view().ptr(j, 0) + Dk, w.k.data() + e * Dk);
          kv_row_to_float(in.v.ptr(b, j, h), in.v.stride(3), Dv, w.v.data() + e * Dv);
        }
        for (index_t e = 0; e < nq; ++e) {
          const index_t i = ord[s0 + e];
          float* m = w.mask.data() + e * nk;
          for (index_t f = 0; f < nk; ++f) {
            const index_t j = ord[k0 + f];
            m[f] = (j == i || (options.causal && j > i)) ? minus_inf : 0.f;
          }
        }
        AttentionInputs<float> g;
        g.q = ConstView<float, 4>(w.q.data(), {1, nq, 1, Dk});
        g.k = ConstView<float, 4>(w.k.data(), {1, nk, 1, Dk});
        g.v = ConstView<float, 4>(w.v.data(), {1, nk, 1, Dv});
        g.mask = ConstView<float, 3>(w.mask.data(), {1, nq, nk});
        const AttentionOutputs go{TensorView<float, 4>(w.o.data(), {1, nq, 1, Dv}),
                                  TensorView<float, 3>(w.lse.data(), {1, nq, 1})};
        const AttentionDims gd{1, nq, nk, 1, 1, Dk, Dv};
        for (index_t e0 = 0; e0 < nq; e0 += kFlashRows)
          flash_block(g, go, open, gd, scale, 0, 0, e0, std::min(kFlashRows, nq - e0), *w.flash,
                      [&](const index_t*, index_t) {
                        std::vector<KeyTile> tiles;
                        append_key_tiles(0, nk, tiles);
                        return tiles;
                      });
        for (index_t e = 0; e < nq; ++e) {
          const index_t i = ord[s0 + e];
          std::copy(w.o.data() + e * Dv, w.o.data() + (e + 1) * Dv, part_o.view().ptr(i, r, 0));
          part_lse(i, r) = w.lse[static_cast<std::size_t>(e)];
        }
      });
      parallel_for(executor, T, 64, [&](index_t first, index_t last) {
        for (index_t i = first; i < last; ++i) {
          float* o = out.o.ptr(b, i, h);
          float lse = merge_partial_rows(o, out.o.stride(3), minus_inf, part_o.view().ptr(i, 0, 0),
                                         part_lse.view().ptr(i, 0), R, Dv);
          if (lse == minus_inf) {  // no round saw a key: the query attends to itself
            float dot = 0.f;
            for (index_t c = 0; c < Dk; ++c) dot += in.qk(b, i, h, c) * keys(i, c);
            for (index_t c = 0; c < Dv; ++c) o[c * out.o.stride(3)] = in.v(b, i, h, c);
            lse = scale * dot;
          }
          if (out.lse.has_value()) out.lse(b, i, h) = lse;
        }
      });
    }
}

}  // namespace seqmix
