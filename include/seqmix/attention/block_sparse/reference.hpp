// block_sparse_attention (SPEC section 5): dense attention restricted to selected key blocks.
//
// Queries and keys are cut into blocks: query block qb holds queries [qb * block_q,
// min((qb + 1) * block_q, Tq)), key block kb holds keys [kb * block_k, min((kb + 1) * block_k, Tk)).
// For each (batch row, query head, query block) a BlockSparseLayout lists the key blocks it
// attends to. The softmax of a query runs over exactly the keys of its selected blocks, with
// every rule of dense attention (AttentionOptions: scale, causal, window, sink_tokens, softcap;
// AttentionInputs: mask, ALiBi, relative bias, head scales, sink logits, positions, fused rope)
// still applied inside them:
//   o_i = dense attention of query i with s_ij = -inf for every key j outside its selected blocks
// A query whose selected keys are all invisible gets o = 0, lse = -inf, as in dense attention.
//
// This header holds the layout, its validation and reference::block_sparse_attention (the dense
// reference with the block mask added). fast.hpp runs the flash kernel on the selected blocks
// only; patterns.hpp builds the usual layouts (local + global, strided, fixed, power-of-two,
// chunk-diagonal).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// The selected key blocks in compressed-sparse-row form, one row per (batch row, query head,
/// query block):
///   row (b, h, qb) selects key blocks indices[offsets(b', h', qb) .. offsets(b', h', qb + 1))
///   with b' = b if offsets.size(0) == B else 0 (1: one layout shared by every batch row) and
///   h' = h if offsets.size(1) == Hq else 0 (1: shared by every query head).
/// offsets is [Bl, Hl, ceil(Tq / block_q) + 1], non-decreasing; its values index the flat
/// `indices`. The key-block ids of a row are strictly increasing and lie in [0, ceil(Tk / block_k)).
/// Both arrays are int32, as in the block-sparse kernels of the peer systems.
struct BlockSparseLayout {
  /// Queries per query block.
  index_t block_q = 64;
  /// Keys per key block.
  index_t block_k = 64;
  ConstView<std::int32_t, 3> offsets;  ///< [Bl, Hl, Nq + 1]
  ConstView<std::int32_t, 1> indices;  ///< [nnz]
};

namespace detail {

inline index_t ceil_div(index_t a, index_t b) noexcept { return (a + b - 1) / b; }

struct BlockSparseDims {
  AttentionDims attention;
  index_t query_blocks, key_blocks;
};

// Validates the dense arguments and the layout (every index, so a bad layout fails here and not
// as an out-of-range read in a kernel).
template <class KV>
BlockSparseDims validate_block_sparse(const char* op, const AttentionInputs<KV>& in, const BlockSparseLayout& layout,
                                      const AttentionOutputs& out, const AttentionOptions& options) {
  const AttentionDims d = validate_attention(op, in, out, options);
  const ArgCheck check(op);
  check.that(layout.block_q >= 1, "layout.block_q", "must be >= 1, got " + std::to_string(layout.block_q));
  check.that(layout.block_k >= 1, "layout.block_k", "must be >= 1, got " + std::to_string(layout.block_k));
  const index_t Nq = ceil_div(d.Tq, layout.block_q), Nk = ceil_div(d.Tk, layout.block_k);
  const index_t Bl = layout.offsets.size(0) == 1 ? 1 : d.B, Hl = layout.offsets.size(1) == 1 ? 1 : d.Hq;
  check.shape("layout.offsets", layout.offsets, std::array<index_t, 3>{Bl, Hl, Nq + 1}, "B or 1,Hq or 1,Nq+1");
  check.shape("layout.indices", layout.indices, std::array<index_t, 1>{-1}, "nnz");
  const index_t nnz = layout.indices.size(0);
  for (index_t b = 0; b < Bl; ++b)
    for (index_t h = 0; h < Hl; ++h)
      for (index_t qb = 0; qb < Nq; ++qb) {
        const index_t begin = layout.offsets(b, h, qb), end = layout.offsets(b, h, qb + 1);
        // Messages are built only on failure: these loops run once per layout entry.
        const auto where = [&] { return " in row (" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(qb) + ")"; };
        if (!(0 <= begin && begin <= end && end <= nnz))
          check.fail("layout.offsets",
                     "must be non-decreasing within [0, " + std::to_string(nnz) + "], got [" + std::to_string(begin) +
                         ", " + std::to_string(end) + ")" + where());
        for (index_t e = begin; e < end; ++e) {
          const index_t kb = layout.indices(e);
          if (!(0 <= kb && kb < Nk))
            check.fail("layout.indices",
                       "must hold key blocks in [0, " + std::to_string(Nk) + "), got " + std::to_string(kb) + where());
          if (e > begin && layout.indices(e - 1) >= kb)
            check.fail("layout.indices", "must be strictly increasing within a row" + where());
        }
      }
  return {d, Nq, Nk};
}

// First and last entries of the layout row of (b, h, qb).
inline std::pair<index_t, index_t> layout_row(const BlockSparseLayout& layout, index_t b, index_t h, index_t qb) {
  const index_t lb = layout.offsets.size(0) == 1 ? 0 : b, lh = layout.offsets.size(1) == 1 ? 0 : h;
  return {layout.offsets(lb, lh, qb), layout.offsets(lb, lh, qb + 1)};
}

// The inputs of query heads [h0, h0 + count) and their KV head as a stand-alone problem
// (Hq = count, Hkv = 1): what the per-head paths of the block-sparse forms run on.
template <class KV>
AttentionInputs<KV> head_slice(const AttentionInputs<KV>& in, index_t h0, index_t count, index_t hk) {
  AttentionInputs<KV> s = in;
  s.q = in.q.slice(2, h0, count);
  s.k = in.k.slice(2, hk, 1);
  s.v = in.v.slice(2, hk, 1);
  if (in.alibi_slopes.has_value()) s.alibi_slopes = in.alibi_slopes.slice(0, h0, count);
  if (in.sink_logits.has_value()) s.sink_logits = in.sink_logits.slice(0, h0, count);
  if (in.head_scales.has_value()) s.head_scales = in.head_scales.slice(0, h0, count);
  RelativeBias& rb = s.relative_bias;  // the per-head parameters (validated) of the heads kept
  if (rb.kind == RelativeBiasKind::t5 || rb.kind == RelativeBiasKind::distance_table)
    rb.table = rb.table.slice(0, h0, count);
  if (rb.kind == RelativeBiasKind::kerple_log || rb.kind == RelativeBiasKind::kerple_power)
    rb.r1 = rb.r1.slice(0, h0, count), rb.r2 = rb.r2.slice(0, h0, count);
  if (rb.kind == RelativeBiasKind::fire) {
    rb.fire_w1 = rb.fire_w1.slice(0, h0, count), rb.fire_b1 = rb.fire_b1.slice(0, h0, count);
    rb.fire_w2 = rb.fire_w2.slice(0, h0, count), rb.fire_b2 = rb.fire_b2.slice(0, h0, count);
  }
  return s;
}

inline AttentionOutputs head_slice(const AttentionOutputs& out, index_t h0, index_t count) {
  AttentionOutputs s;
  s.o = out.o.slice(2, h0, count);
  if (out.lse.has_value()) s.lse = out.lse.slice(2, h0, count);
  return s;
}

}  // namespace detail

namespace reference {

/// The definition: for each query head, dense reference::attention with an additive mask that is
/// -inf outside the selected blocks (plus the caller's mask, if any). Materializes a [B,Tq,Tk]
/// mask per head; meant for tests.
template <class KV>
void block_sparse_attention(const AttentionInputs<KV>& in, const BlockSparseLayout& layout, const AttentionOutputs& out,
                            const AttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  const auto bs = detail::validate_block_sparse("reference::block_sparse_attention", in, layout, out, options);
  const detail::AttentionDims& d = bs.attention;
  const float minus_inf = -std::numeric_limits<float>::infinity();
  Tensor<float, 3> mask({d.B, d.Tq, d.Tk});
  for (index_t h = 0; h < d.Hq; ++h) {
    for (index_t b = 0; b < d.B; ++b)
      for (index_t i = 0; i < d.Tq; ++i) {
        for (index_t j = 0; j < d.Tk; ++j)
          mask(b, i, j) = minus_inf;
        const auto [begin, end] = detail::layout_row(layout, b, h, i / layout.block_q);
        for (index_t e = begin; e < end; ++e) {
          const index_t j0 = layout.indices(e) * layout.block_k, j1 = std::min(j0 + layout.block_k, d.Tk);
          for (index_t j = j0; j < j1; ++j) mask(b, i, j) = in.mask.has_value() ? in.mask(in.mask.size(0) == 1 ? 0 : b, i, j) : 0.f;
        }
      }
    AttentionInputs<KV> head = detail::head_slice(in, h, 1, h / d.group());
    head.mask = mask.view();
    reference::attention(head, detail::head_slice(out, h, 1), options, executor);
  }
}

}  // namespace reference
}  // namespace seqmix
