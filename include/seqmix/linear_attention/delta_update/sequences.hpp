// Serving plumbing of the delta-rule family (delta_rule, gated_delta_rule / KDA, rwkv7): how a
// packed or slotted call maps its (sequence, head) items to views, the per-thread scratch the
// items run in, the step's slot check and the aliasing checks. Internal.
//
// A prefill resolves its SequenceBatch once (core/batch.hpp) and then works item by item: item
// i is (sequence order[i / H], head i % H) with the sequences sorted longest first, so the
// executor's dynamic hand-out starts the longest items first and both cores finish together.
// Each item sees only its own tokens: the sequence's token rows sliced out as a B = 1 call, its
// state row of the pool (or none), its rows of token_states.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/recurrent.hpp"
#include "seqmix/linear_attention/delta_update/wy.hpp"
#include "seqmix/linear_attention/value_columns.hpp"

namespace seqmix::delta_update {

/// Token rows of one sequence of a [Bt, Tt, ...] tensor as a [1, tokens, ...] view (empty stays empty).
template <class T, std::size_t R>
TensorView<T, R> sequence_rows(const TensorView<T, R>& x, const SequenceSpan& s) {
  if (!x.has_value()) return x;
  return x.slice(0, s.batch_row, 1).slice(1, s.token_begin, s.tokens);
}

/// The state row of one sequence as a [1, ...] view; empty when `use` is false or there is none.
template <class T, std::size_t R>
TensorView<T, R> state_row(const TensorView<T, R>& x, const SequenceSpan& s, bool use) {
  if (!x.has_value() || !use || s.state_row < 0) return TensorView<T, R>();
  return x.slice(0, s.state_row, 1);
}

/// The sequences of a call that run (padding sequences, state row -1, are left out), longest
/// first; ties keep their order so the split is deterministic. Written into a per-thread list
/// reused across calls.
inline const std::vector<index_t>& longest_first(const SequenceMap& map) {
  thread_local std::vector<index_t> order;
  order.clear();
  for (index_t n = 0; n < map.sequences(); ++n)
    if (map[n].state_row >= 0) order.push_back(n);
  std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
    const index_t ta = map[a].tokens, tb = map[b].tokens;
    return ta != tb ? ta > tb : a < b;
  });
  return order;
}

/// Per-thread scratch of one item: the state [K,V], the token kernel's rows and (when a chunked
/// item needs it) the WY workspace. Grown on demand and kept across calls, so steps and repeated
/// prefills of one shape allocate nothing after the first call.
struct ItemScratch {
  RowMatrix S;
  std::optional<TokenWorkspace> tok;
  std::optional<PairWorkspace> pair;  ///< the recurrent prefill's two-token pass
  std::optional<WyWorkspace> wy;
  index_t K = 0, V = 0, wy_chunk = 0;
  AlignedVector<float> staged;  ///< a strided step state, copied in and out

  void ensure(index_t k, index_t v) {
    if (k == K && v == V) return;
    S.resize(k, v);
    tok.emplace(k, v);
    pair.emplace(k, v);
    wy.reset();
    wy_chunk = 0;
    K = k, V = v;
  }
  WyWorkspace& wy_for(index_t chunk) {
    if (wy_chunk != chunk) {
      wy.emplace(chunk, K, V);
      wy_chunk = chunk;
    }
    return *wy;
  }
};

/// The calling thread's scratch for items of K rows and V columns. Two are kept: a call split
/// into value blocks (for_each_item) has blocks of one width and, when V is not a multiple of
/// it, a narrower last one; a thread that takes both kinds reuses each without reallocating.
inline ItemScratch& item_scratch(index_t K, index_t V) {
  thread_local ItemScratch scratch[2];
  thread_local int last = 0;
  for (int i : {last, 1 - last})
    if (scratch[i].K == K && scratch[i].V == V) return scratch[last = i];
  last = 1 - last;  // the one used less recently
  scratch[last].ensure(K, V);
  return scratch[last];
}

/// S = the [K,V] view `initial` (any strides), or zeros when it is empty.
inline void load_item_state(const ConstView<float, 2>& initial, RowMatrix& S) {
  if (!initial.has_value()) {
    S.setZero();
    return;
  }
  for (index_t r = 0; r < S.rows(); ++r) copy_row(initial[r], S.row(r).data());
}

/// The [K,V] state S out to `dst` (any strides); nothing when `dst` is empty.
inline void store_item_state(const TensorView<float, 2>& dst, const float* S, index_t K, index_t V) {
  if (!dst.has_value()) return;
  for (index_t r = 0; r < K; ++r) {
    const TensorView<float, 1> row = dst[r];
    if (row.is_last_dim_contiguous())
      std::copy(S + r * V, S + (r + 1) * V, row.data());
    else
      for (index_t c = 0; c < V; ++c) row(c) = S[r * V + c];
  }
}

using detail::ValueColumns;

/// 32: the narrowest value block: two AVX-512 vectors, the width of the WY products' register
/// tile (core/small_gemm.hpp, 6 rows x 2 vectors); narrower blocks would leave the tile half
/// empty while repeating the chunk's V-independent work (the WY form's scores, masks and
/// triangular factor) once more per block.
constexpr index_t kMinValueBlock = 32;

/// The blocks of value columns of a call's items (value_columns.hpp): whole vectors, at least
/// kMinValueBlock, all of V when the items give each of the executor's threads one.
inline detail::ValueSplit value_blocks(index_t items, index_t V, int concurrency) {
  return detail::split_value_columns(items, V, concurrency, simd::kWidth, kMinValueBlock);
}

/// Runs block(it, columns, scratch) for every item it < items and block of value columns of
/// `split`, one task per block handed out dynamically by the executor, an item's blocks one after
/// another; `scratch` is sized for the block's columns.
template <class Block>
void for_each_block(const Executor& executor, index_t items, index_t K, const detail::ValueSplit& split, Block&& block) {
  executor.run(items * split.blocks, [&](index_t i) {
    const ValueColumns columns = split.block(i % split.blocks);
    block(i / split.blocks, columns, item_scratch(K, columns.width));
  });
}

/// Runs item(n, h, columns, scratch) for every (running sequence n, head h) and block of value
/// columns (value_blocks), longest sequences first (item it is sequence order[it / H], head
/// it % H of longest_first's order); `scratch` is sized for the block's columns.
template <class Item>
void for_each_item(const Executor& executor, const SequenceMap& map, index_t H, index_t K, index_t V, Item&& item) {
  const std::vector<index_t>& order = longest_first(map);
  const index_t items = static_cast<index_t>(order.size()) * H;
  for_each_block(executor, items, K, value_blocks(items, V, executor.concurrency()),
                 [&](index_t it, ValueColumns columns, ItemScratch& ws) {
                   item(order[static_cast<std::size_t>(it / H)], it % H, columns, ws);
                 });
}

/// The state tensors' row count (N, or the pool's S with slots), -1 when no state is given.
template <class Initial, class Final>
index_t state_rows(const ArgCheck& check, const Initial& initial, const Final& final_state) {
  if (initial.has_value() && final_state.has_value() && initial.size(0) != final_state.size(0))
    check.fail("final_state", "must have as many rows as initial_state (" + std::to_string(initial.size(0)) +
                                  "), got " + std::to_string(final_state.size(0)));
  if (initial.has_value()) return initial.size(0);
  return final_state.has_value() ? final_state.size(0) : -1;
}

/// Same views (data, shape, strides): an in-place update the ops allow for states.
template <class A, class B, std::size_t R>
bool same_view(const TensorView<A, R>& a, const TensorView<B, R>& b) {
  if (static_cast<const void*>(a.data()) != static_cast<const void*>(b.data())) return false;
  for (std::size_t d = 0; d < R; ++d)
    if (a.size(d) != b.size(d) || a.stride(d) != b.stride(d)) return false;
  return true;
}

/// ShapeError when output `out` shares memory with `other`.
template <class A, std::size_t RA, class B, std::size_t RB>
void refuse_overlap(const ArgCheck& check, const char* out_name, const TensorView<A, RA>& out, const char* other_name,
                    const TensorView<B, RB>& other) {
  if (views_overlap(out, other))
    check.fail(out_name, std::string("must not overlap ") + other_name + " (the op reads it while writing)");
}

/// A named input view for check_prefill_aliasing.
template <class View>
std::pair<const char*, View> named(const char* name, const View& view) {
  return {name, view};
}

/// A prefill's outputs o, final_state and token_states may not share memory with any input nor
/// with each other; final_state may be initial_state as the same view (updated in place), never
/// overlap it otherwise.
template <class... Named>
void check_prefill_aliasing(const ArgCheck& check, const TensorView<float, 4>& o, const TensorView<float, 4>& final_state,
                            const TensorView<float, 5>& token_states, const ConstView<float, 4>& initial,
                            const Named&... inputs) {
  const auto against_inputs = [&](const char* name, const auto& out) {
    (refuse_overlap(check, name, out, inputs.first, inputs.second), ...);
  };
  against_inputs("o", o);
  against_inputs("final_state", final_state);
  against_inputs("token_states", token_states);
  refuse_overlap(check, "o", o, "initial_state", initial);
  refuse_overlap(check, "o", o, "final_state", final_state);
  refuse_overlap(check, "o", o, "token_states", token_states);
  refuse_overlap(check, "token_states", token_states, "initial_state", initial);
  refuse_overlap(check, "token_states", token_states, "final_state", final_state);
  if (!same_view(initial, final_state))
    refuse_overlap(check, "final_state", final_state, "initial_state (other than as the same view)", initial);
}

/// The slots of a step: token row b uses pool row row(b); fresh(b) says it starts from zeros.
struct StepSlots {
  IndexList indices;
  FlagList has_initial_state;
  index_t row(index_t b) const { return indices.has_value() ? indices[b] : b; }
  bool fresh(index_t b) const { return has_initial_state.has_value() && !has_initial_state[b]; }
};

/// Checks a step's batch against B token rows and a pool of S rows (no allocation on valid input).
inline StepSlots check_step_slots(const ArgCheck& check, const SequenceBatch& batch, index_t B, index_t S) {
  if (batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
  SequenceMap::make(check, batch, B, 1, true, S);  // slots and flags; no allocation when valid
  return StepSlots{batch.state_indices, batch.has_initial_state};
}

}  // namespace seqmix::delta_update
