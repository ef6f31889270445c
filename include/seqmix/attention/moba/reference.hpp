// moba (Mixture of Block Attention, SPEC section 5): causal attention where each query sees its
// own key block plus the top_k earlier blocks whose mean key scores highest against it.
//
// Keys are cut into blocks of `block_size`: block n holds keys [n * bs, min((n + 1) * bs, Tk)).
// Query i sits at pos = Tk - Tq + i (bottom-right, as dense causal attention) in block
// own = pos / bs. Its gate score of an earlier block n < own is q_h . mean(K_n) (K of the query
// head's KV head, no scale); the top_k earlier blocks by score are selected (ties: the lower
// block; NaN / -inf scores never). Attention then runs over
//   S_i = [own * bs, pos]  U  the selected blocks' keys,
//   o = sum_{j in S_i} exp(s_j) v_j / sum_{j in S_i} exp(s_j),  s_j = scale * q . k_j.
// top_k >= own selects every earlier block, so the result is dense causal attention.
//
// Differences from MoBA's published code, on purpose: its moba_topk counts the query's own block,
// here top_k counts the earlier blocks only (moba_topk = top_k + 1). GQA: the published code
// takes q, k, v with one head count (K repeated to the query heads), so each query head selects
// on its own; the same here (the heads of a group do not share a selection).
//
// The selection is one routine (block_key_summaries for the means, topk_scores_exact for the
// scores, detail::moba_select_row for the choice), shared by every form, so the forms choose the
// same blocks bit for bit and differ only in the attention's rounding. This header holds the
// options, validation, moba_block_selection and reference::moba (plain loops in double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of moba, moba_step and reference::moba.
struct MobaOptions {
  /// Keys per block (MoBA's chunk size), >= 1.
  index_t block_size = 512;
  /// Earlier blocks selected per query besides its own, >= 0 (MoBA's moba_topk minus one).
  index_t top_k = 3;
  /// Multiplies q.k in the attention (not in the gate score); std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments (KV: float, f16 or bf16). block_means is optional: the mean key of each block as
/// block_key_summaries(k, block_size, mean, {}, {}) writes it; moba_step reads it instead of
/// averaging the cache at every step (only complete blocks before the query's own are read).
template <class KV = float>
struct MobaInputs {
  ConstView<float, 4> q;                  ///< [B,Tq,Hq,Dk], Tq <= Tk
  ConstView<KV, 4> k;                     ///< [B,Tk,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v;                     ///< [B,Tk,Hkv,Dv]
  ConstView<float, 4> block_means = {};   ///< [B,ceil(Tk/block_size),Hkv,Dk], optional
};

namespace detail {

struct MobaDims {
  AttentionDims attention;
  index_t blocks;  // ceil(Tk / block_size)
};

template <class KV>
AttentionInputs<KV> moba_dense_inputs(const MobaInputs<KV>& in) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v;
  return dense;
}

inline AttentionOptions moba_attention_options(const MobaOptions& options, bool causal) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = causal;
  return o;
}

// Checks of the selection's arguments (options, q / k shapes, Tq <= Tk, block_means).
template <class KV>
index_t validate_moba_selection(const ArgCheck& check, const MobaInputs<KV>& in, const MobaOptions& options) {
  check.that(options.block_size >= 1, "options.block_size", "must be >= 1, got " + std::to_string(options.block_size));
  check.that(options.top_k >= 0, "options.top_k", "must be >= 0, got " + std::to_string(options.top_k));
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,Dk");
  const index_t B = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, -1, -1, Dk}, "B,Tk,Hkv,Dk");
  const index_t Tk = in.k.size(1), Hkv = in.k.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "k", "KV heads (dimension 2)");
  if (Tq > Tk)
    check.fail("q", "needs Tq <= Tk (queries are the last Tq of the Tk keys), got Tq = " + std::to_string(Tq) +
                        ", Tk = " + std::to_string(Tk));
  const index_t blocks = (Tk + options.block_size - 1) / options.block_size;
  check.optional_shape("block_means", in.block_means, std::array<index_t, 4>{B, blocks, Hkv, Dk},
                       "B,ceil(Tk/block_size),Hkv,Dk");
  return blocks;
}

// Validation shared by every form; nothing is written before it passes.
template <class KV>
MobaDims validate_moba(const char* op, const MobaInputs<KV>& in, const AttentionOutputs& out,
                       const MobaOptions& options) {
  const ArgCheck check(op);
  const index_t blocks = validate_moba_selection(check, in, options);
  const AttentionDims d = validate_attention(check, moba_dense_inputs(in), out, moba_attention_options(options, true));
  if (views_overlap(out.o, in.block_means) || views_overlap(out.lse, in.block_means))
    check.fail("o", "overlaps block_means; moba cannot write in place");
  return {d, blocks};
}

// One query's choice: among blocks [0, own) with a score that is not NaN or -inf, the top_k
// best (higher score first, the lower block on ties: a strict order, so the set is unique),
// written to out[0..top_k) in increasing block order and padded with -1. Returns the count.
inline index_t moba_select_row(const float* score, index_t stride, index_t own, index_t top_k, std::int32_t* out,
                               std::vector<std::pair<float, std::int32_t>>& candidates) {
  candidates.clear();
  for (index_t n = 0; n < own; ++n) {
    const float s = score[n * stride];
    if (s > kMinusInf) candidates.push_back({s, static_cast<std::int32_t>(n)});
  }
  const index_t chosen = std::min<index_t>(top_k, static_cast<index_t>(candidates.size()));
  const auto better = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::nth_element(candidates.begin(), candidates.begin() + chosen, candidates.end(), better);
  std::sort(candidates.begin(), candidates.begin() + chosen, [](const auto& a, const auto& b) { return a.second < b.second; });
  for (index_t e = 0; e < top_k; ++e) out[e] = e < chosen ? candidates[e].second : -1;
  return chosen;
}

// Gate scores of query heads [h0, h0 + heads) (one KV head's group, or all) against the block
// means: scores[b, i, r, n] = q[b, i, h0 + r] . means[b, n, (h0 + r) / G].
template <class KV>
void moba_gate_scores(const MobaInputs<KV>& in, const ConstView<float, 4>& means, index_t h0, index_t heads,
                      index_t G, const TensorView<float, 4>& scores, const Executor& executor) {
  const index_t hk0 = h0 / G, hks = (h0 + heads - 1) / G - hk0 + 1;
  topk_scores_exact(in.q.slice(2, h0, heads), means.slice(2, hk0, hks), scores, executor);
}

}  // namespace detail

/// The blocks moba selects: blocks[b, i, h, e] (e < top_k) are the earlier blocks query i of head
/// h attends to besides its own, increasing, padded with -1. Every form uses this selection.
/// Allocates the block means (unless in.block_means is given) and a [B,Tq,Hq,Nb] score tensor.
template <class KV>
void moba_block_selection(const MobaInputs<KV>& in, const TensorView<std::int32_t, 4>& blocks,
                          const MobaOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  const ArgCheck check("moba_block_selection");
  const index_t Nb = validate_moba_selection(check, in, options);
  const index_t B = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Tk = in.k.size(1), Hkv = in.k.size(2),
                Dk = in.q.size(3);
  check.shape("blocks", blocks, std::array<index_t, 4>{B, Tq, Hq, options.top_k}, "B,Tq,Hq,top_k");
  const AttentionDims d{B, Tq, Tk, Hq, Hkv, Dk, 0};
  const MobaDims m{d, Nb};
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<float, 4> own_means;
  ConstView<float, 4> means = in.block_means;
  if (!means.has_value()) {
    own_means = Tensor<float, 4>({d.B, m.blocks, d.Hkv, d.Dk});
    block_key_summaries(in.k, options.block_size, own_means.view(), {}, {}, executor);
    means = own_means.cview();
  }
  Tensor<float, 4> scores({d.B, d.Tq, d.Hq, m.blocks});
  moba_gate_scores(in, means, 0, d.Hq, d.group(), scores.view(), executor);
  parallel_for(executor, d.B * d.Tq * d.Hq, 64, [&](index_t first, index_t last) {
    std::vector<std::pair<float, std::int32_t>> candidates;
    std::vector<std::int32_t> row(static_cast<std::size_t>(options.top_k));
    for (index_t r = first; r < last; ++r) {
      const index_t h = r % d.Hq, i = r / d.Hq % d.Tq, b = r / d.Hq / d.Tq;
      const index_t own = (d.Tk - d.Tq + i) / options.block_size;
      moba_select_row(scores.view().ptr(b, i, h), scores.view().stride(3), own, options.top_k, row.data(), candidates);
      for (index_t e = 0; e < options.top_k; ++e) blocks(b, i, h, e) = row[static_cast<std::size_t>(e)];
    }
  });
}

namespace reference {

/// The definition: the shared selection (moba_block_selection), then for each query and head a
/// plain softmax in double over its own block up to its position and its selected blocks.
/// Single-threaded attention; `executor` runs the selection only.
template <class KV>
void moba(const MobaInputs<KV>& in, const AttentionOutputs& out, const MobaOptions& options = {},
          const Executor& executor = serial_executor()) {
  const detail::MobaDims m = detail::validate_moba("reference::moba", in, out, options);
  const detail::AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  Tensor<std::int32_t, 4> blocks({d.B, d.Tq, d.Hq, options.top_k});
  moba_block_selection(in, blocks.view(), options, executor);
  const double scale = detail::attention_scale(detail::moba_attention_options(options, true), d.Dk);
  const index_t bs = options.block_size;
  std::vector<index_t> keys;
  std::vector<double> s, acc(static_cast<std::size_t>(d.Dv));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t pos = d.Tk - d.Tq + i, hk = h / d.group();
        keys.clear();
        for (index_t e = 0; e < options.top_k; ++e) {
          const index_t n = blocks(b, i, h, e);
          if (n < 0) continue;
          for (index_t j = n * bs; j < (n + 1) * bs; ++j) keys.push_back(j);
        }
        for (index_t j = pos / bs * bs; j <= pos; ++j) keys.push_back(j);
        const double top = detail::reference_listed_logits(in.q, in.k, b, i, h, hk, keys, scale, s);
        const auto value_of = [&](std::size_t e, index_t c) {
          return static_cast<double>(static_cast<float>(in.v(b, keys[e], hk, c)));
        };
        detail::reference_plain_softmax_row(s, top, value_of, out, b, i, h, acc);
      }
}

}  // namespace reference
}  // namespace seqmix
