// hyper_attention, fast prefill: the exact leaves of the recursion by the dense flash kernel, the
// approximate parts by gathered tiles, merged into the output rows by LSE.
//
// The draws, codes and sorts are the shared ones of reference.hpp, so the fast form attends to
// exactly the keys of the definition. In a non-causal part every query of sorted block c (of a
// KV head's group, whatever its query head) sees the same keys: the keys of sorted block c plus
// the drawn columns outside block c (the block and the samples belong to the KV head). So a task
// is one (batch row, KV head, block c): its key set is gathered once into a contiguous K / V tile
// (with a logit offset per key: 0, or log(nk / sample_size) for a drawn column), and every query
// of the block, for each head of the group, runs over it four rows at a time (each K / V row is
// loaded once per four queries). The part's (o, lse) of a row is merged into the row's running
// (o, lse) (the leaf wrote it first): lse = logaddexp, o = weighted sum.
// Cost per query and head: min_seq_len / 2 keys at the leaf plus (block_size + sample_size) per
// level of the recursion, about log2(T / min_seq_len) levels.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/hyper/reference.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {
namespace detail {

// Merges a part (po[0..Dv), plse) into the row (o with stride os, lse).
inline void hyper_merge_row(float* o, index_t os, float& lse, const float* po, float plse, index_t Dv) noexcept {
  if (plse == -std::numeric_limits<float>::infinity()) return;
  const float old = lse;
  if (old == -std::numeric_limits<float>::infinity()) {
    for (index_t c = 0; c < Dv; ++c) o[c * os] = po[c];
    lse = plse;
    return;
  }
  const float next = std::max(old, plse) + std::log1p(std::exp(-std::abs(old - plse)));
  const float a = std::exp(old - next), b = std::exp(plse - next);
  for (index_t c = 0; c < Dv; ++c) o[c * os] = a * o[c * os] + b * po[c];
  lse = next;
}

// Per-thread buffers of an approximate part's task.
struct HyperScratch {
  std::vector<float> kt, vt, shift, q, s, acc;
  std::vector<index_t> rows;
};

// Softmax attention of n (<= 4) contiguous query rows q[r * Dk] over the nk gathered keys
// kt[j * Dk] / values vt[j * Dv] with logit offsets shift[j]: o[r * Dv] = the rows' outputs,
// lse[r] their log denominators. s: 4 * nk floats of scratch.
inline void hyper_rows_over_tile(const float* q, index_t n, const float* kt, const float* vt, const float* shift,
                                 index_t nk, index_t Dk, index_t Dv, float scale, float* s, float* o, float* lse) {
  using simd::Batch;
  const std::ptrdiff_t nv = simd::vector_end(Dk);
  for (index_t j = 0; j < nk; ++j) {
    const float* kr = kt + j * Dk;
    Batch<float> a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    for (std::ptrdiff_t c = 0; c < nv; c += simd::kWidth) {
      const Batch<float> kc = simd::load(kr + c);
      a0 = simd::fma(simd::load(q + c), kc, a0);
      if (n > 1) a1 = simd::fma(simd::load(q + Dk + c), kc, a1);
      if (n > 2) a2 = simd::fma(simd::load(q + 2 * Dk + c), kc, a2);
      if (n > 3) a3 = simd::fma(simd::load(q + 3 * Dk + c), kc, a3);
    }
    float d[4] = {simd::reduce_add(a0), simd::reduce_add(a1), simd::reduce_add(a2), simd::reduce_add(a3)};
    for (std::ptrdiff_t c = nv; c < Dk; ++c)
      for (index_t r = 0; r < n; ++r) d[r] += q[r * Dk + c] * kr[c];
    for (index_t r = 0; r < n; ++r) s[r * nk + j] = d[r] * scale + shift[j];
  }
  for (index_t r = 0; r < n; ++r) {
    float* sr = s + r * nk;
    float top = -std::numeric_limits<float>::infinity();
    for (index_t j = 0; j < nk; ++j) top = std::max(top, sr[j]);
    float* orow = o + r * Dv;
    std::fill(orow, orow + Dv, 0.f);
    if (!(top > -std::numeric_limits<float>::infinity())) {
      lse[r] = std::isnan(top) ? top : -std::numeric_limits<float>::infinity();
      continue;
    }
    float l = 0.f;
    for (index_t j = 0; j < nk; ++j) l += (sr[j] = std::exp(sr[j] - top));
    lse[r] = top + std::log(l);
    const float inv = 1.f / l;
    for (index_t j = 0; j < nk; ++j) sr[j] *= inv;
  }
  const std::ptrdiff_t vv = simd::vector_end(Dv);
  for (index_t j = 0; j < nk; ++j) {
    const float* vr = vt + j * Dv;
    const float p0 = s[j], p1 = n > 1 ? s[nk + j] : 0.f, p2 = n > 2 ? s[2 * nk + j] : 0.f, p3 = n > 3 ? s[3 * nk + j] : 0.f;
    for (std::ptrdiff_t c = 0; c < vv; c += simd::kWidth) {
      const Batch<float> vc = simd::load(vr + c);
      simd::store(o + c, simd::fma(Batch<float>(p0), vc, simd::load(o + c)));
      if (n > 1) simd::store(o + Dv + c, simd::fma(Batch<float>(p1), vc, simd::load(o + Dv + c)));
      if (n > 2) simd::store(o + 2 * Dv + c, simd::fma(Batch<float>(p2), vc, simd::load(o + 2 * Dv + c)));
      if (n > 3) simd::store(o + 3 * Dv + c, simd::fma(Batch<float>(p3), vc, simd::load(o + 3 * Dv + c)));
    }
    for (std::ptrdiff_t c = vv; c < Dv; ++c) {
      const float pr[4] = {p0, p1, p2, p3};
      for (index_t r = 0; r < n; ++r) o[r * Dv + c] += pr[r] * vr[c];
    }
  }
}

// One non-causal part merged into `all` (whose rows hold the part's queries' running results).
template <class KV>
void hyper_fast_part(const HyperAttentionInputs<KV>& in, const AttentionOutputs& all, const HyperAttentionOptions& options,
                     const AttentionDims& d, const HyperPart& p, const TensorView<std::int32_t, 3>& qrank,
                     const TensorView<std::int32_t, 3>& krank, const Executor& executor) {
  if (p.nq == 0 || p.nk == 0) return;
  const float scale = attention_scale(hyper_attention_options(options, false), d.Dk);
  if (p.nq <= options.min_seq_len) {
    AttentionInputs<KV> sub = hyper_dense_inputs(in);
    sub.q = in.q.slice(1, p.qlo, p.nq), sub.k = in.k.slice(1, p.klo, p.nk), sub.v = in.v.slice(1, p.klo, p.nk);
    Tensor<float, 4> po({d.B, p.nq, d.Hq, d.Dv});
    Tensor<float, 3> pl({d.B, p.nq, d.Hq});
    attention(sub, AttentionOutputs{po.view(), pl.view()}, hyper_attention_options(options, false), executor);
    parallel_for(executor, d.B * p.nq * d.Hq, 64, [&](index_t first, index_t last) {
      for (index_t r = first; r < last; ++r) {
        const index_t h = r % d.Hq, i = r / d.Hq % p.nq, b = r / d.Hq / p.nq;
        hyper_merge_row(all.o.ptr(b, p.qlo + i, h, 0), all.o.stride(3), all.lse(b, p.qlo + i, h), po.view().ptr(b, i, h, 0),
                        pl(b, i, h), d.Dv);
      }
    });
    return;
  }
  const index_t G = d.group(), bs = options.block_size, S = options.sample_size;
  const index_t blocks = (p.nq + bs - 1) / bs;
  const float log_weight = static_cast<float>(std::log(static_cast<double>(p.nk) / static_cast<double>(S > 0 ? S : 1)));
  std::vector<index_t> korder, samples(static_cast<std::size_t>(S));
  std::vector<std::vector<index_t>> qorder(static_cast<std::size_t>(G));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      hyper_sorted_rows(krank, b, hk, p.klo, p.nk, korder);
      parallel_for(executor, G, 1, [&](index_t first, index_t last) {
        for (index_t g = first; g < last; ++g)
          hyper_sorted_rows(qrank, b, hk * G + g, p.qlo, p.nq, qorder[static_cast<std::size_t>(g)]);
      });
      for (index_t t = 0; t < S; ++t) samples[static_cast<std::size_t>(t)] = hyper_sample(options.seed, b, hk, p.qlo, p.klo, t, p.nk);
      executor.run(blocks, [&](index_t c) {
        thread_local HyperScratch w;
        // The block's key set: sorted keys [c bs, (c + 1) bs) and the drawn columns outside it.
        w.rows.clear(), w.shift.clear();
        for (index_t kp = c * bs; kp < std::min((c + 1) * bs, p.nk); ++kp)
          w.rows.push_back(korder[static_cast<std::size_t>(kp)]), w.shift.push_back(0.f);
        for (const index_t kp : samples)
          if (kp / bs != c) w.rows.push_back(korder[static_cast<std::size_t>(kp)]), w.shift.push_back(log_weight);
        const index_t nk = static_cast<index_t>(w.rows.size());
        w.kt.resize(static_cast<std::size_t>(nk * d.Dk)), w.vt.resize(static_cast<std::size_t>(nk * d.Dv));
        for (index_t j = 0; j < nk; ++j) {
          const index_t row = w.rows[static_cast<std::size_t>(j)];
          for (index_t e = 0; e < d.Dk; ++e) w.kt[static_cast<std::size_t>(j * d.Dk + e)] = static_cast<float>(in.k(b, row, hk, e));
          for (index_t e = 0; e < d.Dv; ++e) w.vt[static_cast<std::size_t>(j * d.Dv + e)] = static_cast<float>(in.v(b, row, hk, e));
        }
        w.q.resize(static_cast<std::size_t>(4 * d.Dk)), w.acc.resize(static_cast<std::size_t>(4 * d.Dv + 4));
        w.s.resize(static_cast<std::size_t>(4 * std::max<index_t>(nk, 1)));
        const index_t q_end = std::min((c + 1) * bs, p.nq);
        for (index_t g = 0; g < G; ++g) {
          const index_t h = hk * G + g;
          const std::vector<index_t>& order = qorder[static_cast<std::size_t>(g)];
          for (index_t sp = c * bs; sp < q_end; sp += 4) {
            const index_t n = std::min<index_t>(4, q_end - sp);
            for (index_t r = 0; r < n; ++r)
              for (index_t e = 0; e < d.Dk; ++e)
                w.q[static_cast<std::size_t>(r * d.Dk + e)] = in.q(b, order[static_cast<std::size_t>(sp + r)], h, e);
            float* lse = w.acc.data() + 4 * d.Dv;
            hyper_rows_over_tile(w.q.data(), n, w.kt.data(), w.vt.data(), w.shift.data(), nk, d.Dk, d.Dv, scale, w.s.data(),
                                 w.acc.data(), lse);
            for (index_t r = 0; r < n; ++r) {
              const index_t i = order[static_cast<std::size_t>(sp + r)];
              hyper_merge_row(all.o.ptr(b, i, h, 0), all.o.stride(3), all.lse(b, i, h), w.acc.data() + r * d.Dv, lse[r], d.Dv);
            }
          }
        }
      });
    }
}

}  // namespace detail

/// Same arguments and results as reference::hyper_attention; K/V may be float, f16 or bf16. The
/// exact leaves run the dense flash kernel (attention) on slices of the sequence; each
/// approximate part allocates the sort orders of one KV head ((G + 1) * T indices) and one
/// gathered key tile per thread ((block_size + sample_size) * (Dk + Dv) floats, kept across
/// calls). Allocates the codes ([B,Tq,Hq] and [B,Tk,Hkv] int32) and, when out.lse is not given, a
/// [B,Tq,Hq] lse buffer.
template <class KV>
void hyper_attention(const HyperAttentionInputs<KV>& in, const AttentionOutputs& out, const HyperAttentionOptions& options = {},
                     const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_hyper_attention("hyper_attention", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const std::vector<double> planes = hyper_hyperplanes(options.seed, options.n_hashes, d.Dk);
  Tensor<std::int32_t, 3> qrank({d.B, d.Tq, d.Hq}), krank({d.B, d.Tk, d.Hkv});
  hyper_ranks(in.q, planes, options.n_hashes, qrank.view(), executor);
  hyper_ranks(in.k, planes, options.n_hashes, krank.view(), executor);
  Tensor<float, 3> own_lse;
  TensorView<float, 3> lse = out.lse;
  if (!lse.has_value()) {
    own_lse = Tensor<float, 3>({d.B, d.Tq, d.Hq});
    lse = own_lse.view();
  }
  const AttentionOutputs all{out.o, lse};
  if (options.causal) {
    std::vector<HyperPart> leaves, parts;
    hyper_causal_plan(0, d.Tq, options.min_seq_len, leaves, parts);
    for (const HyperPart& p : leaves) {
      AttentionInputs<KV> sub = hyper_dense_inputs(in);
      sub.q = in.q.slice(1, p.qlo, p.nq), sub.k = in.k.slice(1, p.klo, p.nk), sub.v = in.v.slice(1, p.klo, p.nk);
      attention(sub, AttentionOutputs{out.o.slice(1, p.qlo, p.nq), lse.slice(1, p.qlo, p.nq)},
                hyper_attention_options(options, true), executor);
    }
    for (const HyperPart& p : parts) hyper_fast_part(in, all, options, d, p, qrank.view(), krank.view(), executor);
    return;
  }
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = 0.f;
        lse(b, i, h) = -std::numeric_limits<float>::infinity();
      }
  hyper_fast_part(in, all, options, d, HyperPart{0, d.Tq, 0, d.Tk}, qrank.view(), krank.view(), executor);
}

}  // namespace seqmix
