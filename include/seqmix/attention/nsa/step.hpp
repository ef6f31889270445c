// nsa_step: nsa's decode form. Per query, the selection scores each visible compressed key once
// against the group's rows (nsa_select_query: the decode kernel's dot form over the compressed
// keys in address order, split across the executor), and the compressed branch reuses those
// scores (nsa_step_compressed_branch: P V only); the window branch is dense attention (the
// split-KV decode kernel for a few queries); the selection branch lists the chosen blocks' keys
// up to each query's position and runs topk_attention on them (one selection head per KV head:
// the choice is shared by the group), so a step reads the Nc compressed keys, top_n * l' rows
// and w rows per KV head instead of Tk. At Tk = 131072 (Hq 32, Hkv 8, D 128, fp16; CPU time
// on a loaded 2-core AMD EPYC) the selection took about 4 ms of a 9-11 ms step, the compressed
// P V about 3 ms, the window 0.4 ms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/topk/fast.hpp"

namespace seqmix {
namespace detail {

// The compressed branch from the selection's scores (w.scores, see nsa_select_query): p =
// exp(scale * s - max) by the selection's own nsa_softmax_numerators, then o_cmp = P V / sum p
// over the visible compressed values, so decode scores each compressed key once (the dense
// kernel on K~ would score them again: about half of its time). Values go in chunks of 64 keys
// with the heads inside (address order, the next chunk's lines requested ahead), one
// accumulator set per executor slice, summed in slice order. No finite logit (max -inf): no
// weight, o_cmp = 0, as the dense kernel and the reference give.
template <class KV>
void nsa_step_compressed_branch(const ConstView<KV, 4>& cv, const NsaDims& n, const NsaOptions& options, float scale,
                                index_t b, index_t i, NsaQueryScratch& w, const TensorView<float, 4>& o_cmp,
                                const Executor& executor) {
  constexpr index_t kChunk = NonFiniteKeys::kMax;
  const AttentionDims& d = n.attention;
  const index_t G = d.group(), M = round_up(G, kScoreRows), Dv = d.Dv, H = d.Hkv;
  const index_t lds = round_up(std::max<index_t>(n.compressed, 1), kScoreKeys);
  const index_t visible = std::max<index_t>(nsa_compressed_position(d.Tk - d.Tq + i, options) + 1, 0);
  std::vector<float> total(static_cast<std::size_t>(H * M), 0.f);
  for (index_t r = 0; r < H * M; ++r) {
    if (r % M >= G || visible == 0) continue;
    float* s = w.scores.data() + r * lds;
    float m = kMinusInf;
    const float l = nsa_softmax_numerators(s, visible, scale, s, &m);
    if (m == kMinusInf) std::fill(s, s + visible, 0.f);
    total[static_cast<std::size_t>(r)] = m == kMinusInf ? 0.f : l;
  }
  const index_t chunks = (visible + kChunk - 1) / kChunk;
  const index_t slices = std::max<index_t>(1, std::min<index_t>(executor.concurrency(), chunks));
  const index_t per_slice = (chunks + slices - 1) / std::max<index_t>(slices, 1);
  const auto acc_size = static_cast<std::size_t>(H * M * Dv);
  AlignedVector<float> accs(static_cast<std::size_t>(slices) * acc_size, 0.f);
  const bool packed = cv.stride(3) == 1 && cv.stride(2) == Dv && cv.stride(1) == H * Dv;
  executor.run(slices, [&](index_t slice) {
    float* acc = accs.data() + static_cast<std::size_t>(slice) * acc_size;
    for (index_t ch = slice * per_slice; ch < std::min(chunks, (slice + 1) * per_slice); ++ch) {
      const index_t c0 = ch * kChunk, cn = std::min(kChunk, visible - c0);
      LineStream ahead;
      if (packed && c0 + cn < visible) {
        const index_t next = std::min(kChunk, visible - c0 - cn);
        ahead.set(0, cv.ptr(b, c0 + cn, 0), static_cast<std::size_t>(next * H * Dv) * sizeof(KV));
        ahead.spread_over(static_cast<std::size_t>(H * (M / kScoreRows) * cn * ((Dv + kPvVectors * simd::kWidth - 1) / (kPvVectors * simd::kWidth))));
      }
      for (index_t hk = 0; hk < H; ++hk)
        accumulate_pv_guarded(w.scores.data() + hk * M * lds + c0, lds, G, KvRows<KV>{cv.ptr(b, c0, hk), cv.stride(1)}, cn,
                              Dv, acc + hk * M * Dv, Dv, &ahead);
    }
  });
  for (index_t hk = 0; hk < H; ++hk)
    for (index_t g = 0; g < G; ++g) {
      const float l = total[static_cast<std::size_t>(hk * M + g)], inv = l > 0.f ? 1.f / l : 0.f;
      float* o = o_cmp.ptr(b, i, hk * G + g);
      for (index_t e = 0; e < Dv; ++e) {
        float sum = 0.f;
        for (index_t t = 0; t < slices; ++t) sum += accs[static_cast<std::size_t>(t) * acc_size + static_cast<std::size_t>((hk * M + g) * Dv + e)];
        o[e * o_cmp.stride(3)] = sum * inv;
      }
    }
}

}  // namespace detail

/// Same arguments and results as reference::nsa, for few queries (decode; any Tq is accepted).
/// Give compressed_k / compressed_v kept beside the cache (a new compressed block every d
/// tokens), or they are pooled from all of K and V at every call. Allocates the selection, the
/// key lists ([B,Tq,Hkv,top_n * select_block] int32) and three branch outputs.
template <class KV>
void nsa_step(const NsaInputs<KV>& in, const TensorView<float, 4>& o, const NsaOptions& options = {},
              const Executor& executor = serial_executor()) {
  using namespace detail;
  const NsaDims n = validate_nsa("nsa_step", in, o, options);
  const AttentionDims& d = n.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<KV, 4> own_k, own_v;
  const auto compressed = nsa_compressed(in, n, options, own_k, own_v, executor);
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hkv, options.top_n});
  Tensor<float, 4> o_cmp({d.B, d.Tq, d.Hq, d.Dv}), o_slc({d.B, d.Tq, d.Hq, d.Dv}), o_win({d.B, d.Tq, d.Hq, d.Dv});
  const ConstView<KV, 4>& ck = compressed.first, &cv = compressed.second;
  // The fused compressed branch reads whole SIMD rows of K~ and V~ (the dense kernel's rule).
  const index_t W = simd::kWidth;
  if (d.Dk % W == 0 && d.Dv % W == 0 && ck.stride(3) == 1 && cv.stride(3) == 1) {
    AttentionOptions scale_only;
    scale_only.scale = options.scale;
    const float scale = attention_scale(scale_only, d.Dk);
    NsaQueryScratch w;
    w.q.assign(static_cast<std::size_t>(d.Hkv * round_up(d.group(), kScoreRows) * d.Dk), 0.f);
    w.scores.resize(static_cast<std::size_t>(d.Hkv * round_up(d.group(), kScoreRows) *
                                             round_up(std::max<index_t>(n.compressed, 1), kScoreKeys)));
    for (index_t b = 0; b < d.B; ++b)
      for (index_t i = 0; i < d.Tq; ++i) {
        nsa_select_query(in, ck, n, options, scale, b, i, blocks.view(), w, executor);
        nsa_step_compressed_branch(cv, n, options, scale, b, i, w, o_cmp.view(), executor);
      }
    AttentionOptions window;
    window.scale = options.scale, window.causal = true, window.window = options.window;
    attention(nsa_dense_inputs(in), {o_win.view(), {}}, window, executor);
  } else {
    nsa_block_selection(in, ck, blocks.view(), options, executor);
    nsa_dense_branches(in, n, options, ck, cv, o_cmp.view(), o_win.view(), executor);
  }
  const index_t bs = options.select_block, capacity = std::max<index_t>(options.top_n * bs, 1);
  Tensor<std::int32_t, 4> keys({d.B, d.Tq, d.Hkv, capacity});
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t hk = 0; hk < d.Hkv; ++hk) {
        std::int32_t* row = keys.view().ptr(b, i, hk);
        const index_t pos = d.Tk - d.Tq + i;
        index_t count = 0;
        for (index_t e = 0; e < options.top_n; ++e) {  // increasing blocks: increasing keys
          const index_t blk = blocks(b, i, hk, e);
          if (blk < 0) continue;
          for (index_t j = blk * bs; j < std::min((blk + 1) * bs, pos + 1); ++j) row[count++] = static_cast<std::int32_t>(j);
        }
        std::fill(row + count, row + capacity, -1);
      }
  TopkAttentionInputs<KV> sparse;
  sparse.q = in.q, sparse.k = in.k, sparse.v = in.v, sparse.indices = keys.cview();
  TopkAttentionOptions topk_options;
  topk_options.scale = options.scale;
  topk_attention(sparse, {o_slc.view(), {}}, topk_options, executor);
  nsa_gated_sum(in.gates, o_cmp.cview(), o_slc.cview(), o_win.cview(), o, executor);
}

}  // namespace seqmix
