// nsa_step: nsa's decode form. The selection and the compressed branch are one pass over the
// compressed K/V (nsa_step_select_compressed); the window branch is dense attention (the
// split-KV decode kernel for a few queries); the selection branch lists the chosen blocks' keys
// up to each query's position and runs topk_attention on them (one selection head per KV head:
// the choice is shared by the group), so a step reads the Nc compressed keys, top_n * l' rows
// and w rows per KV head instead of Tk.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/topk/fast.hpp"

namespace seqmix {
namespace detail {

// The selection and the compressed branch in one pass over the compressed K/V, per (batch row,
// query, KV head) task: each visible compressed key row is widened once and scored against the
// group's G query rows exactly as nsa_block_selection scores it (kv_row_to_float, nsa_dot), so
// nsa_select_row picks the same blocks; the same scores, scaled, are the compressed branch's
// logits, whose softmax weights the compressed values (read once, widened row by row) into
// o_cmp. Done separately, the selection and the decode kernel each read all of compressed_k:
// a third of a step's bytes at Tk = 131072 (Nc = 8191 rows of K~ and of V~ per KV head).
template <class KV>
void nsa_step_select_compressed(const NsaInputs<KV>& in, const NsaDims& n, const NsaOptions& options,
                                const ConstView<KV, 4>& ck, const ConstView<KV, 4>& cv,
                                const TensorView<std::int32_t, 4>& blocks, const TensorView<float, 4>& o_cmp,
                                const Executor& executor) {
  const AttentionDims& d = n.attention;
  const index_t G = d.group(), Nc = std::max<index_t>(n.compressed, 1), Dkp = round_up(d.Dk, simd::kWidth),
                Dvp = round_up(d.Dv, simd::kWidth);
  AttentionOptions scale_only;
  scale_only.scale = options.scale;
  const float scale = attention_scale(scale_only, d.Dk);
  parallel_for(executor, d.B * d.Tq * d.Hkv, 1, [&](index_t first, index_t last) {
    NsaSelectScratch w;
    // q [G, Dkp], one widened key or value row [max(Dkp, Dvp)], scores [G, Nc], acc [G, Dvp]
    AlignedVector<float> q(static_cast<std::size_t>(G * Dkp), 0.f), row(static_cast<std::size_t>(std::max(Dkp, Dvp)), 0.f),
        scores(static_cast<std::size_t>(G * Nc)), acc(static_cast<std::size_t>(G * Dvp));
    std::vector<float> top(static_cast<std::size_t>(G)), total(static_cast<std::size_t>(G));
    for (index_t t = first; t < last; ++t) {
      const index_t hk = t % d.Hkv, i = t / d.Hkv % d.Tq, b = t / d.Hkv / d.Tq, pos = d.Tk - d.Tq + i;
      const index_t visible = std::min(nsa_compressed_position(pos, options) + 1, n.compressed);
      for (index_t g = 0; g < G; ++g) kv_row_to_float(in.q.ptr(b, i, hk * G + g), in.q.stride(3), d.Dk, q.data() + g * Dkp);
      for (index_t c = 0; c < visible; ++c) {
        kv_row_to_float(ck.ptr(b, c, hk), ck.stride(3), d.Dk, row.data());
        for (index_t g = 0; g < G; ++g) scores[static_cast<std::size_t>(g * Nc + c)] = nsa_dot(q.data() + g * Dkp, row.data(), d.Dk);
      }
      nsa_select_row(scores.data(), Nc, G, pos, scale, options, blocks.ptr(b, i, hk), w);
      // o_cmp: softmax(scale * scores) over the visible blocks, 0 when none is.
      std::fill(acc.begin(), acc.end(), 0.f);
      for (index_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * Nc;
        float m = kMinusInf, l = 0.f;
        for (index_t c = 0; c < visible; ++c) m = std::max(m, scale * s[c]);
        // No finite logit (every visible compressed key scored -inf): no weight, as the dense
        // kernel and the reference give, rather than exp(-inf - -inf) = NaN.
        for (index_t c = 0; c < visible; ++c) l += (s[c] = m == kMinusInf ? 0.f : std::exp(scale * s[c] - m));
        top[static_cast<std::size_t>(g)] = m, total[static_cast<std::size_t>(g)] = l;
      }
      for (index_t c = 0; c < visible; ++c) {
        kv_row_to_float(cv.ptr(b, c, hk), cv.stride(3), d.Dv, row.data());
        for (index_t g = 0; g < G; ++g) {
          const simd::Batch<float> p(scores[static_cast<std::size_t>(g * Nc + c)]);
          float* a = acc.data() + g * Dvp;
          for (index_t e = 0; e < Dvp; e += simd::kWidth) simd::store(a + e, simd::fma(p, simd::load(row.data() + e), simd::load(a + e)));
        }
      }
      for (index_t g = 0; g < G; ++g) {
        const float l = total[static_cast<std::size_t>(g)], inv = visible > 0 && l > 0.f ? 1.f / l : 0.f;
        float* o = o_cmp.ptr(b, i, hk * G + g);
        for (index_t e = 0; e < d.Dv; ++e) o[e * o_cmp.stride(3)] = acc[static_cast<std::size_t>(g * Dvp + e)] * inv;
      }
    }
  });
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
  nsa_step_select_compressed(in, n, options, compressed.first, compressed.second, blocks.view(), o_cmp.view(), executor);
  AttentionOptions window;
  window.scale = options.scale, window.causal = true, window.window = options.window;
  attention(nsa_dense_inputs(in), {o_win.view(), {}}, window, executor);
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
