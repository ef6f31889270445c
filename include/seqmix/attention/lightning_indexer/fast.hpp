// lightning_indexer, fast form: the same tiled GEMM as attention's prefill. A task is a block of
// queries of one batch row; its [queries x Hi] rows times a transposed key tile give every
// head's q.k at once, then relu and the weighted sum over heads run along the key lanes.
#pragma once

#include <algorithm>

#include "seqmix/attention/dense/decode.hpp"  // detail::gemm, load_kv_tile_transposed
#include "seqmix/attention/lightning_indexer/reference.hpp"

namespace seqmix {
namespace detail {

// 64 keys x 256 rows, as attention's prefill tile (flash.hpp) for the same reasons.
constexpr index_t kIndexerKeyTile = 64;
constexpr index_t kIndexerRows = 256;

// out[c] = sum_h w[h] * relu(S[h][c]) for the T = 64 keys of a tile, along the lanes. relu keeps
// a NaN (as the reference's std::max(dot, 0) does): the vector max returns its second operand
// for a NaN, which turned a NaN score into 0 (docs/reliability.md).
inline void weighted_relu_sum(const float* S, index_t lds, const float* w, index_t w_stride, index_t H, float* out) {
  const simd::Batch<float> zero(0.f);
  for (index_t c = 0; c < kIndexerKeyTile; c += simd::kWidth) {
    simd::Batch<float> acc(0.f);
    for (index_t h = 0; h < H; ++h) {
      const simd::Batch<float> s = simd::load(S + h * lds + c);
      acc = simd::fma(simd::Batch<float>(w[h * w_stride]), xsimd::select(s < zero, zero, s), acc);
    }
    simd::store(out + c, acc);
  }
}

}  // namespace detail

/// Same arguments and results as reference::lightning_indexer; any strides. Allocates one
/// scratch per parallel block, none inside the loops.
inline void lightning_indexer(const LightningIndexerInputs& in, const TensorView<float, 3>& scores,
                              const LightningIndexerOptions& options = {},
                              const Executor& executor = serial_executor()) {
  using namespace detail;
  const auto d = validate_lightning_indexer("lightning_indexer", in, scores);
  if (d.B * d.T * d.Tk == 0) return;
  const index_t T = kIndexerKeyTile, Dp = round_up(d.Di, simd::kWidth);
  const index_t tq = std::clamp<index_t>(kIndexerRows / std::max<index_t>(d.Hi, 1), 1, d.T);
  const index_t blocks = (d.T + tq - 1) / tq;
  // k as a one-head [B,Tk,1,Di] view, the layout the attention tile loaders take.
  const ConstView<float, 4> k4(in.k.data(), {d.B, d.Tk, 1, d.Di}, {in.k.stride(0), in.k.stride(1), 0, in.k.stride(2)});
  parallel_for(executor, d.B * blocks, 1, [&](index_t begin, index_t end) {
    const index_t rows = tq * d.Hi;
    AlignedVector<float> q(static_cast<std::size_t>(rows * Dp)), kt(static_cast<std::size_t>(d.Di * T)),
        s(static_cast<std::size_t>(rows * T)), row(static_cast<std::size_t>(d.Di)), line(static_cast<std::size_t>(T));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / blocks, t0 = task % blocks * tq, nt = std::min(tq, d.T - t0), M = nt * d.Hi;
      // Query rows t * Hi + h: load_query_rows with every head in one group, scale 1.
      // With a rope, each row is rotated at its position as it is loaded (once per call).
      if (in.rope.table)
        load_query_rows_rotated(in.q, b, 0, d.Hi, t0, nt, 1.f, q.data(), Dp, in.rope.table,
                                [&](index_t t) { return query_rope_position(in.rope, b, t, d.T, d.Tk); });
      else
        load_query_rows(in.q, b, 0, d.Hi, t0, nt, 1.f, q.data(), Dp);
      // Causal: the last query of the block sees keys up to Tk - T + t0 + nt - 1.
      const index_t key_end = options.causal ? std::clamp<index_t>(d.Tk - d.T + t0 + nt, 0, d.Tk) : d.Tk;
      for (index_t j0 = 0; j0 < key_end; j0 += T) {
        const index_t n = std::min(T, d.Tk - j0);
        load_kv_tile_transposed(k4, b, 0, j0, n, T, kt.data(), T, row.data());
        gemm(q.data(), Dp, kt.data(), T, s.data(), T, M, T, d.Di, nullptr);
        for (index_t t = 0; t < nt; ++t) {
          weighted_relu_sum(s.data() + t * d.Hi * T, T, in.weights.ptr(b, t0 + t), in.weights.stride(2), d.Hi,
                            line.data());
          float* out = scores.ptr(b, t0 + t, j0);
          for (index_t c = 0; c < n; ++c) out[c * scores.stride(2)] = line[c];
        }
      }
      // Keys no query of the block can see, then the causal triangle inside the visited tiles.
      for (index_t t = 0; t < nt; ++t) {
        const index_t visible_end = options.causal ? std::clamp<index_t>(d.Tk - d.T + t0 + t + 1, 0, d.Tk) : d.Tk;
        for (index_t j = visible_end; j < d.Tk; ++j) scores(b, t0 + t, j) = kMinusInf;
      }
    }
  });
}

}  // namespace seqmix
