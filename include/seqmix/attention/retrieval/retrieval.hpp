// Retrieval attention (SPEC section 5; Memorizing Transformers, Unlimiformer, RetrievalAttention):
// queries attend to the top-k entries of an external key/value memory, found by inner product,
// and the result is merged with ordinary local attention through attention_merge.
//
//   o = merge( attention(q, memory entries retrieved for q),  attention(q, local K/V) )
// where the first part is exact softmax attention over the retrieved entries (topk_attention)
// and the merge is the log-sum-exp combination of merge.hpp, so with k >= memory size the
// result equals dense attention over concat(memory, local) (memory keys visible to every query).
//
// Pieces:
//   KeyValueMemory         growable fp32 store of (key, value) rows per KV head, [N, Hkv, D]
//   MemoryIndex            the search interface: top-k entry ids by inner product per
//                          (query, query head); ExactMemoryIndex is exact (blocked, SIMD,
//                          threaded); ANN indexes (IVF, HNSW, ...) implement the same interface
//   retrieval_attention    the memory part, (o, lse) for attention_merge
//   retrieval_attention_merged   memory part + local dense attention, merged
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/topk/fast.hpp"

namespace seqmix {

/// An append-only key/value memory for one sequence: entry n holds keys [Hkv, Dk] and values
/// [Hkv, Dv]. It owns its rows (it is a container, like a KV cache), and views of it stay valid
/// until the next append.
class KeyValueMemory {
 public:
  /// An empty memory of `heads` KV heads with keys of key_dim and values of value_dim floats
  /// (ShapeError if any is not positive).
  KeyValueMemory(index_t heads, index_t key_dim, index_t value_dim) : H_(heads), Dk_(key_dim), Dv_(value_dim) {
    ArgCheck("KeyValueMemory").that(heads > 0 && key_dim > 0 && value_dim > 0, "heads",
                                    "and key/value sizes must be positive");
  }

  /// Appends entries: keys [n, Hkv, Dk], values [n, Hkv, Dv] (any strides).
  void append(const ConstView<float, 3>& keys, const ConstView<float, 3>& values) {
    const ArgCheck check("KeyValueMemory::append");
    check.shape("keys", keys, std::array<index_t, 3>{-1, H_, Dk_}, "n,Hkv,Dk");
    check.shape("values", values, std::array<index_t, 3>{keys.size(0), H_, Dv_}, "n,Hkv,Dv");
    const index_t n0 = size(), n = keys.size(0);
    keys_.resize(static_cast<std::size_t>((n0 + n) * H_ * Dk_));
    values_.resize(static_cast<std::size_t>((n0 + n) * H_ * Dv_));
    copy(keys, TensorView<float, 3>(keys_.data() + n0 * H_ * Dk_, {n, H_, Dk_}));
    copy(values, TensorView<float, 3>(values_.data() + n0 * H_ * Dv_, {n, H_, Dv_}));
  }

  /// Number of entries N.
  index_t size() const noexcept { return static_cast<index_t>(keys_.size()) / (H_ * Dk_); }
  /// Number of KV heads.
  index_t heads() const noexcept { return H_; }
  ///@{
  /// As one batch row of a [1, N, Hkv, D] attention input.
  ConstView<float, 4> keys() const { return ConstView<float, 4>(keys_.data(), {1, size(), H_, Dk_}); }
  ConstView<float, 4> values() const { return ConstView<float, 4>(values_.data(), {1, size(), H_, Dv_}); }

  ///@}
 private:
  index_t H_, Dk_, Dv_;
  AlignedVector<float> keys_, values_;
};

/// Top-k search by inner product. ids[i, h, :] are the entries with the k largest q[i, h] . key
/// (of KV head h / (Hq / Hkv)), strictly increasing, -1 padded when the memory is smaller.
class MemoryIndex {
 public:
  virtual ~MemoryIndex() = default;
  /// q [Tq, Hq, Dk] -> ids [Tq, Hq, k].
  virtual void search(const ConstView<float, 3>& q, const TensorView<std::int32_t, 3>& ids,
                      const Executor& executor) const = 0;
};

/// Exact search over a KeyValueMemory (which it reads, not copies): keys are scored in tiles with
/// the decode score kernel (every query head of a KV head at once) and a running candidate list
/// per row is cut back to the best k whenever it doubles, so the [Tq, Hq, N] score matrix never
/// exists. Ties go to the lower id, as in select_topk.
class ExactMemoryIndex final : public MemoryIndex {
 public:
  /// Searches `memory`, which must outlive the index (entries appended later are searched too).
  explicit ExactMemoryIndex(const KeyValueMemory& memory) : memory_(memory) {}

  void search(const ConstView<float, 3>& q, const TensorView<std::int32_t, 3>& ids,
              const Executor& executor = serial_executor()) const override {
    using namespace detail;
    const ConstView<float, 4> keys = memory_.keys();
    const index_t N = keys.size(1), Hkv = keys.size(2), D = keys.size(3);
    const ArgCheck check("ExactMemoryIndex::search");
    check.shape("q", q, std::array<index_t, 3>{-1, -1, D}, "Tq,Hq,Dk");
    const index_t Tq = q.size(0), Hq = q.size(1);
    check.divides(Hkv, Hq, "q", "query heads, which the memory's KV heads");
    check.shape("ids", ids, std::array<index_t, 3>{Tq, Hq, -1}, "Tq,Hq,k");
    const index_t k = ids.size(2), G = Hq / Hkv, Dp = round_up(D, simd::kWidth), T = kDecodeTile;
    parallel_for(executor, Tq * Hkv, 1, [&](index_t first, index_t last) {
      const index_t rows_padded = round_up(G, kScoreRows);
      AlignedVector<float> qr(static_cast<std::size_t>(rows_padded * Dp), 0.f), kt(static_cast<std::size_t>(T * Dp)),
          s(static_cast<std::size_t>(rows_padded * T));
      std::vector<std::vector<std::pair<float, std::int32_t>>> best(static_cast<std::size_t>(G));
      for (index_t task = first; task < last; ++task) {
        const index_t i = task / Hkv, hk = task % Hkv;
        for (index_t r = 0; r < G; ++r) {
          kv_row_to_float(q.ptr(i, hk * G + r), q.stride(2), D, qr.data() + r * Dp);
          best[r].clear();
        }
        for (index_t j0 = 0; j0 < N; j0 += T) {
          const index_t n = std::min(T, N - j0);
          load_kv_tile(keys, 0, hk, j0, n, T, kt.data(), Dp);
          scores_dot(qr.data(), Dp, rows_padded, kt.data(), Dp, round_up(n, kScoreKeys), Dp, s.data(), T);
          for (index_t r = 0; r < G; ++r) {
            for (index_t c = 0; c < n; ++c) best[r].push_back({s[r * T + c], static_cast<std::int32_t>(j0 + c)});
            if (static_cast<index_t>(best[r].size()) >= 2 * k + T) keep_best(best[r], k);
          }
        }
        for (index_t r = 0; r < G; ++r) {
          keep_best(best[r], k);
          std::sort(best[r].begin(), best[r].end(), [](const auto& a, const auto& b) { return a.second < b.second; });
          std::int32_t* out = ids.ptr(i, hk * G + r);
          for (index_t e = 0; e < k; ++e)
            out[e * ids.stride(2)] = e < static_cast<index_t>(best[r].size()) ? best[r][e].second : -1;
        }
      }
    });
  }

 private:
  /// Keeps the k best (score desc, id asc); NaN scores are dropped.
  static void keep_best(std::vector<std::pair<float, std::int32_t>>& list, index_t k) {
    list.erase(std::remove_if(list.begin(), list.end(), [](const auto& p) { return p.first != p.first; }), list.end());
    if (static_cast<index_t>(list.size()) <= k) return;
    std::nth_element(list.begin(), list.begin() + k, list.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    list.resize(static_cast<std::size_t>(k));
  }

  const KeyValueMemory& memory_;
};

/// Options of retrieval_attention.
struct RetrievalAttentionOptions {
  index_t k = 32;              ///< entries retrieved per (query, query head)
  std::optional<float> scale;  ///< multiplies q.k; std::nullopt means 1/sqrt(Dk)
};

/// The memory part for one sequence: q [1, Tq, Hq, Dk] -> o [1, Tq, Hq, Dv], lse [1, Tq, Hq]
/// (lse is required: it is what attention_merge weighs the parts with). Allocates the id list
/// (Tq * Hq * k ints) per call.
inline void retrieval_attention(const ConstView<float, 4>& q, const KeyValueMemory& memory, const MemoryIndex& index,
                                const AttentionOutputs& out, const RetrievalAttentionOptions& options = {},
                                const Executor& executor = serial_executor()) {
  const ArgCheck check("retrieval_attention");
  check.shape("q", q, std::array<index_t, 4>{1, -1, -1, memory.keys().size(3)}, "1,Tq,Hq,Dk");
  check.that(options.k >= 1, "options.k", "must be >= 1, got " + std::to_string(options.k));
  check.that(out.lse.has_value(), "out.lse", "is required (attention_merge needs it)");
  Tensor<std::int32_t, 4> ids({1, q.size(1), q.size(2), options.k});
  index.search(q.select(0, 0), ids.view().select(0, 0), executor);
  TopkAttentionInputs<float> in;
  in.q = q, in.k = memory.keys(), in.v = memory.values(), in.indices = ids.cview();
  TopkAttentionOptions topk_options;
  topk_options.scale = options.scale;
  topk_attention(in, out, topk_options, executor);
}

/// Memory part + local dense attention (local inputs and options as for seqmix::attention, one
/// batch row), merged: out.o, out.lse (optional). Allocates the two partial results per call.
template <class KV>
void retrieval_attention_merged(const AttentionInputs<KV>& local, const AttentionOptions& local_options,
                                const KeyValueMemory& memory, const MemoryIndex& index, const AttentionOutputs& out,
                                const RetrievalAttentionOptions& options = {},
                                const Executor& executor = serial_executor()) {
  const ArgCheck check("retrieval_attention_merged");
  check.shape("local.q", local.q, std::array<index_t, 4>{1, -1, -1, -1}, "1,Tq,Hq,Dk");
  const index_t Tq = local.q.size(1), Hq = local.q.size(2), Dv = memory.values().size(3);
  check.shape("out.o", out.o, std::array<index_t, 4>{1, Tq, Hq, Dv}, "1,Tq,Hq,Dv");
  check.optional_shape("out.lse", out.lse, std::array<index_t, 3>{1, Tq, Hq}, "1,Tq,Hq");
  Tensor<float, 4> o_memory({1, Tq, Hq, Dv}), o_local({1, Tq, Hq, Dv});
  Tensor<float, 3> lse_memory({1, Tq, Hq}), lse_local({1, Tq, Hq}), lse({1, Tq, Hq});
  RetrievalAttentionOptions memory_options = options;
  if (!memory_options.scale) memory_options.scale = detail::attention_scale(local_options, local.q.size(3));
  retrieval_attention(local.q, memory, index, {o_memory.view(), lse_memory.view()}, memory_options, executor);
  attention(local, {o_local.view(), lse_local.view()}, local_options, executor);
  attention_merge(o_memory.cview(), lse_memory.cview(), o_local.cview(), lse_local.cview(), out.o,
                  out.lse.has_value() ? out.lse : lse.view(), executor);
}

/// \deprecated Renamed RetrievalAttentionOptions (docs/conventions.md, naming).
using RetrievalOptions [[deprecated("renamed seqmix::RetrievalAttentionOptions")]] = RetrievalAttentionOptions;

}  // namespace seqmix
