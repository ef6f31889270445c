// product_key_memory, fast form: only the 2 n_sub sub-keys are scored (an Eigen GEMM per tile of
// tokens and head), then top_k per half, the exact top_k among the candidate sums, softmax, and
// the value rows gathered with SIMD (f16 / bf16 widened in registers). Tokens are split over the
// executor; a task owns its tokens' output rows. README.md has the derivation of exactness.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/memory/product_key/reference.hpp"

namespace seqmix {
namespace detail {

/// acc[c] += w * row[c] for c < n, the row widened to float.
template <class Value>
void pkm_accumulate(float w, const Value* row, float* acc, index_t n) {
  namespace s = simd;
  const s::Batch<float> wv(w);
  const index_t nv = s::vector_end(n);
  for (index_t c = 0; c < nv; c += s::kWidth) {
    s::Batch<float> x;
    if constexpr (std::is_same_v<Value, float>)
      x = s::load(row + c);
    else if constexpr (std::is_same_v<Value, f16>)
      x = s::load_f16(row + c);
    else
      x = s::load_bf16(row + c);
    s::store(acc + c, s::fma(wv, x, s::load(acc + c)));
  }
  for (index_t c = nv; c < n; ++c) acc[c] += w * static_cast<float>(row[c]);
}

/// acc[c] += w * row[c] for an int8 row (w already carries the row's scale). A plain loop: at the
/// benchmark shape the sub-key scoring, not the gather, is the cost (int8, f16 and fp32 tables
/// measured within noise of each other), and the int8 rows read a quarter of the fp32 bytes.
inline void pkm_accumulate(float w, const std::int8_t* row, float* acc, index_t n) {
  for (index_t c = 0; c < n; ++c) acc[c] += w * static_cast<float>(row[c]);
}

/// The best `k` of n scores, best first (pkm_better: higher, then lower index), into idx.
inline void pkm_topk(const float* score, index_t n, index_t k, std::vector<std::int32_t>& all, std::int32_t* idx) {
  all.resize(static_cast<std::size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  const auto better = [&](std::int32_t x, std::int32_t y) { return pkm_better(score[x], x, score[y], y); };
  std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better);
  std::sort(all.begin(), all.begin() + k, better);
  std::copy(all.begin(), all.begin() + k, idx);
}

}  // namespace detail

/// product_key_memory (docs/operators.md section 13): per token and head, the top_k of the
/// n_sub^2 product keys found through the two sub-key tables (exact: the same rows as scoring all
/// N keys), softmax over them, the weighted value rows summed over heads, optionally times
/// silu(gate). Value is float, f16, bf16 or int8 (with value_scales). Cost per token and head: 2 n_sub Dk/2 multiply-adds
/// for the sub-keys, O(k log k) for the candidates, top_k * Dv for the values; independent of N
/// otherwise. Validation (ShapeError, before any write) as described in the header comment.
template <class Value>
void product_key_memory(const ProductKeyMemoryInputs<Value>& in, const ProductKeyMemoryOutputs& out,
                        const ProductKeyMemoryOptions& options = {}, const Executor& executor = serial_executor()) {
  static_assert(std::is_same_v<Value, float> || std::is_same_v<Value, f16> || std::is_same_v<Value, bf16> ||
                    std::is_same_v<Value, std::int8_t>,
                "product_key_memory: values must be float, f16, bf16 or int8 (with value_scales)");
  const ArgCheck check("product_key_memory");
  const auto d = detail::validate_pkm(check, in, out, options);
  if (d.T == 0) return;
  // Tokens per sub-key GEMM: one pass over (and one packing of) a head's sub-keys serves them;
  // 16 rows left Eigen's GEMM spending as long packing the sub-keys as multiplying. Tiles are
  // fixed (tokens [kTile i, kTile i + kTile), kTile = min(64, T)) and always full (a short last
  // tile padded with zero rows), so a token's scores, hence the result, do not depend on the
  // executor's split; a decode call (T = 1) scores one row.
  const index_t kTile = std::min<index_t>(64, d.T);
  const index_t tiles = (d.T + kTile - 1) / kTile;
  parallel_for(executor, tiles, 1, [&](index_t tile_begin, index_t tile_end) {
    RowMajorMatrix<float> qa = RowMajorMatrix<float>::Zero(kTile, d.half), qb = qa, sa(kTile, d.n_sub), sb(kTile, d.n_sub);
    std::vector<std::int32_t> all, ia(static_cast<std::size_t>(d.k)), ib(ia);
    std::vector<std::pair<float, std::int64_t>> cand;
    AlignedVector<float> acc(static_cast<std::size_t>(kTile * d.Dv));
    for (index_t ti = tile_begin; ti < tile_end; ++ti) {
      const index_t t0 = ti * kTile, tile = std::min(kTile, d.T - t0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (index_t h = 0; h < d.H; ++h) {
        for (index_t r = 0; r < tile; ++r)
          for (index_t c = 0; c < d.half; ++c) {
            qa(r, c) = in.query(t0 + r, h, c);
            qb(r, c) = in.query(t0 + r, h, d.half + c);
          }
        const auto ka = as_matrix(in.keys_a[h]), kb = as_matrix(in.keys_b[h]);
        sa.noalias() = qa * ka.transpose();
        sb.noalias() = qb * kb.transpose();
        for (index_t r = 0; r < tile; ++r) {
          const index_t t = t0 + r;
          detail::pkm_topk(sa.row(r).data(), d.n_sub, d.k, all, ia.data());
          detail::pkm_topk(sb.row(r).data(), d.n_sub, d.k, all, ib.data());
          // Candidate (x, y) = x-th best of a with y-th best of b. Every pair (x', y') with x' <= x,
          // y' <= y ranks at least as high (pkm_better, rounding being monotone), so a pair with
          // (x+1)(y+1) > k has k better ones and is never selected: about k ln k candidates.
          cand.clear();
          for (index_t x = 0; x < d.k; ++x)
            for (index_t y = 0; (x + 1) * (y + 1) <= d.k; ++y) {
              const std::int32_t i = ia[static_cast<std::size_t>(x)], j = ib[static_cast<std::size_t>(y)];
              cand.emplace_back(d.scale * (sa(r, i) + sb(r, j)), static_cast<std::int64_t>(i) * d.n_sub + j);
            }
          const auto better = [](const std::pair<float, std::int64_t>& p, const std::pair<float, std::int64_t>& q) {
            return detail::pkm_better(p.first, p.second, q.first, q.second);
          };
          std::partial_sort(cand.begin(), cand.begin() + d.k, cand.end(), better);
          const float top = detail::pkm_rank(cand[0].first);
          float total = 0.f;
          for (index_t x = 0; x < d.k; ++x) total += cand[static_cast<std::size_t>(x)].first = std::exp(cand[static_cast<std::size_t>(x)].first - top);
          float* row_acc = acc.data() + r * d.Dv;
          for (index_t x = 0; x < d.k; ++x) {
            const auto& c = cand[static_cast<std::size_t>(x)];
            const float w = c.first / total;
            if constexpr (std::is_same_v<Value, std::int8_t>)
              detail::pkm_accumulate(w * in.value_scales(c.second), in.values.ptr(c.second, index_t{0}), row_acc, d.Dv);
            else
              detail::pkm_accumulate(w, in.values.ptr(c.second, index_t{0}), row_acc, d.Dv);
            if (out.rows.has_value()) out.rows(t, h, x) = c.second;
            if (out.weights.has_value()) out.weights(t, h, x) = w;
          }
        }
      }
      for (index_t r = 0; r < tile; ++r)
        for (index_t c = 0; c < d.Dv; ++c) {
          const float v = acc[static_cast<std::size_t>(r * d.Dv + c)];
          out.y(t0 + r, c) = in.gate.has_value() ? v * detail::pkm_silu(in.gate(t0 + r, c)) : v;
        }
    }
  });
}

}  // namespace seqmix
