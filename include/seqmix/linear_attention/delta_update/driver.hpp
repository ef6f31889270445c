// Runs a delta_rule / gated_delta_rule prefill item (one sequence and value head) or a decode
// step over all (row, value head) pairs: per-token loading, state hand-in and hand-out, the
// chunked WY form or the recurrent form. Internal.
#pragma once

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/recurrent.hpp"
#include "seqmix/linear_attention/delta_update/sequences.hpp"
#include "seqmix/linear_attention/delta_update/wy.hpp"

namespace seqmix::delta_update {

/// 8: the fewest tokens for which the chunked form was measured faster with a scalar gate
/// (H32 K64 T8: 0.13 against 0.20 ms for the recurrent kernel, one thread, same run).
constexpr index_t kChunkedMinTokens = 8;

/// Picks the prefill algorithm. Measured with one thread, thread CPU time, both forms in the same
/// run on the loaded 2-core AVX-512 (Zen 5) machine, chunk 64 (README.md, "Which prefill runs"):
/// with a scalar gate or none the chunked WY form on its register-tile products
/// (small_gemm.hpp) is 1.6-2.7x the recurrent kernel from T 8 up (H16 K64 T1024: 1.64 against
/// 2.7 ms per 4 heads; H2 K128 T1024: 2.0 against 5.4 ms); below 8 tokens the chunk's fixed
/// costs stay with the recurrent kernel. Per-channel gates (KDA) keep the recurrent kernel: the
/// chunked form's L x K exps put the two within +-15% of each other, the sign changing between
/// runs of the loaded machine. K, V and the chunk size do not change the choice.
inline DeltaAlgorithm choose_delta_algorithm(bool channel_gate, index_t T, index_t K, index_t V, index_t chunk) {
  (void)K, (void)V, (void)chunk;
  if (channel_gate || T < kChunkedMinTokens) return DeltaAlgorithm::recurrent;
  return DeltaAlgorithm::chunked;
}

/// Loads token t of a delta head into the workspace: q (scaled), k, alpha = w * k, decays.
inline TokenOperands load_delta_token(const DeltaHead& p, index_t t, TokenWorkspace& ws) {
  const index_t K = p.K();
  TokenOperands x;
  load_row(p.q, t, p.scale, p.norm, ws.q());
  load_row(p.k, t, 1.f, p.norm, ws.k());
  x.q = ws.q();
  x.k = ws.k();
  if (p.v.is_float() && p.v.floats()[t].is_last_dim_contiguous()) {
    x.v = p.v.floats()[t].data();  // used in place
  } else {
    p.v.load(t, ws.v());  // strided, or 16-bit storage widened
    x.v = ws.v();
  }
  x.beta = p.beta(t);
  x.alpha = ws.k();
  if (p.gated()) {
    if (p.scalar_gate) {
      ws.w()[0] = std::exp(p.g(t, 0));
      x.w_stride = 0;
      const float w = ws.w()[0];
      for (index_t r = 0; r < K; ++r) ws.alpha()[r] = w * ws.k()[r];
    } else {
      copy_row(p.g[t], ws.b());
      exp_rows(ws.b(), ws.w(), K);
      multiply_rows(ws.w(), ws.k(), ws.alpha(), K);
      x.w_stride = 1;
    }
    x.w = ws.w();
    x.alpha = ws.alpha();
  }
  return x;
}

/// The recurrent prefill of one head on a contiguous state S [K,V]; with `token_states` [T,K,V]
/// given, S is copied there after every token.
inline void run_recurrent(const DeltaHead& p, float* S, TokenWorkspace& ws,
                          const TensorView<float, 3>& token_states = TensorView<float, 3>()) {
  const bool direct = p.o.is_last_dim_contiguous();
  for (index_t t = 0; t < p.T(); ++t) {
    const TokenOperands x = load_delta_token(p, t, ws);
    float* o = direct ? p.o.ptr(t) : ws.o();
    advance_token(Update::delta, S, p.V(), p.K(), p.V(), x, o);
    if (!direct)
      for (index_t c = 0; c < p.V(); ++c) p.o(t, c) = o[c];
    if (token_states.has_value()) store_item_state(token_states[t], S, p.K(), p.V());
  }
}

/// One (sequence, value head) item of a prefill: its head views and state views.
struct DeltaItem {
  DeltaHead p;
  ConstView<float, 2> initial;        ///< [K,V], empty: start from zeros
  TensorView<float, 2> final_state = {}; ///< [K,V], optional
  TensorView<float, 3> token_states = {}; ///< [T,K,V], optional
  DeltaAlgorithm algorithm;           ///< never automatic here
};

/// The chunked WY form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp): the
/// engine's item number is the index into `items` (the caller's list of bound items); the state
/// S [K,V] lives in the per-thread scratch; the steps are wy.hpp's.
struct WyKernel {
  const DeltaItem* item;
  index_t chunk;

  using Workspace = ItemScratch;
  using Head = const DeltaItem*;

  Head begin_head(index_t, Workspace& ws) const {
    load_item_state(item->initial, ws.S);
    ws.wy_for(chunk);
    return item;
  }
  index_t tokens(Head h) const { return h->p.T(); }
  void load_chunk(Head h, index_t t0, index_t L, Workspace& ws) const { wy_load_chunk(h->p, t0, L, *ws.wy); }
  void state_to_output(Head h, index_t, index_t L, Workspace& ws) const { wy_read_state(h->p, L, ws.S, *ws.wy); }
  void intra(Head, index_t, index_t L, Workspace& ws) const { wy_intra(L, *ws.wy); }
  void update_state(Head h, index_t, index_t L, Workspace& ws) const { wy_update_state(h->p, L, ws.S, *ws.wy); }
  void store_outputs(Head h, index_t t0, index_t L, Workspace& ws) const { wy_store_outputs(h->p, t0, L, *ws.wy); }
  void end_head(Head h, Workspace& ws) const { store_item_state(h->final_state, ws.S.data(), ws.S.rows(), ws.S.cols()); }
};

/// Runs one bound item from its initial state to its final state in `ws`. The state is read
/// completely before anything is written, so final_state may alias initial.
inline void run_delta_item(const DeltaItem& item, index_t chunk, ItemScratch& ws) {
  if (item.algorithm == DeltaAlgorithm::chunked) {
    seqmix::chunkwise::run_item(WyKernel{&item, chunk}, 0, chunk, ws);
    return;
  }
  load_item_state(item.initial, ws.S);
  run_recurrent(item.p, ws.S.data(), *ws.tok, item.token_states);
  store_item_state(item.final_state, ws.S.data(), ws.S.rows(), ws.S.cols());
}

/// The calling thread's chunk-factor records (wy.hpp's WyFactors) of a call that shares them
/// between value blocks, and each item's first record; kept across calls, grown on demand.
struct FactorStore {
  AlignedVector<float> records;  ///< WyFactors::floats(chunk, K) floats per (item, chunk)
  std::vector<index_t> first;  ///< item i's chunks are records [first[i], first[i + 1])
  std::vector<DeltaItem> items;  ///< each item bound over all of V (pass 1 reads its keys' side)
};

/// The calling thread's FactorStore.
inline FactorStore& factor_store() {
  thread_local FactorStore store;
  return store;
}

/// A thread's workspace for computing chunk factors (no value columns), kept across calls.
inline WyWorkspace& factor_scratch(index_t chunk, index_t K) {
  thread_local std::optional<WyWorkspace> ws;
  if (!ws || ws->KQ.rows() != 2 * chunk || ws->KQ.cols() != K) ws.emplace(chunk, K, 0);
  return *ws;
}

/// Runs a chunked item's value block from the factors of its chunks (the records from `f0` on).
inline void run_delta_block(const DeltaItem& item, index_t chunk, float* f0, ItemScratch& ws) {
  load_item_state(item.initial, ws.S);
  WyWorkspace& wy = ws.wy_for(chunk);
  const index_t K = item.p.K(), stride = WyFactors::floats(chunk, K);
  for (index_t t0 = 0, c = 0; t0 < item.p.T(); t0 += chunk, ++c) {
    const WyFactors f{f0 + c * stride, chunk, K};
    wy_block_chunk(item.p, t0, std::min(chunk, item.p.T() - t0), f, ws.S, wy);
  }
  store_item_state(item.final_state, ws.S.data(), ws.S.rows(), ws.S.cols());
}

/// 3: the fewest value blocks per item for which sharing the chunk factors (run_delta_items)
/// pays. Its records (about 132 KB per chunk at K = 128) are written by the first pass and read
/// by every block from L3 or memory, where the per-block path finds its operands in L1; measured
/// on a CountingExecutor claiming 64 threads (serial, one core's thread CPU time, Gated DeltaNet
/// K = V = 128, loaded AMD EPYC Zen 5): 2 blocks (H32 T512) 36.0 -> 35.0 ms of work, the barrier
/// between the passes then costing more (est. 64-core time 0.48 -> 0.59 ms); 3 blocks (H22
/// T512) 22.5 -> 18.8 ms; 4 blocks (H4 T1024) 13.2 -> 9.6 ms. Never reached with 1 or 2 threads.
constexpr index_t kShareFactorsMinBlocks = 3;

/// 64 MiB: the most chunk-factor records a call shares (each calling thread keeps its store for
/// its next call). A long prefill with few items would need far more (16 heads at T = 32768,
/// K = 128: 8192 records of 132 KB, 1.1 GB) and read them back from memory in every block, so
/// above this it keeps the per-block path: more work, no retained memory.
constexpr std::size_t kShareFactorsMaxBytes = std::size_t{64} << 20;

/// Runs every (running sequence n, head h) item of a prefill, bind(n, h, columns) giving the
/// item bound to a block of value columns: whole items when they fill the executor's threads;
/// else in value blocks (for_each_item), and from kShareFactorsMinBlocks blocks on the chunked
/// fp32 items' V-independent chunk factors are computed once per (item, chunk) in a first
/// parallel pass instead of once per block (WyFactors; bf16 dot products and recurrent items
/// keep the whole per-block algorithm).
template <class Bind>
void run_delta_items(const Executor& executor, const SequenceMap& map, index_t H, index_t K, index_t V, index_t chunk,
                     Bind&& bind) {
  const std::vector<index_t>& order = longest_first(map);
  const index_t items = static_cast<index_t>(order.size()) * H;
  const detail::ValueSplit split = value_blocks(items, V, executor.concurrency());
  const auto whole = [&](index_t n, index_t h, ValueColumns cols, ItemScratch& ws) {
    run_delta_item(bind(n, h, cols), chunk, ws);
  };
  if (split.blocks < kShareFactorsMinBlocks) return for_each_item(executor, map, H, K, V, whole);

  FactorStore& store = factor_store();  // the caller's (a name, not a capture, would be each thread's own)
  store.items.clear();
  store.first.assign(1, 0);
  for (index_t it = 0; it < items; ++it) {
    store.items.push_back(bind(order[static_cast<std::size_t>(it / H)], it % H, ValueColumns{0, V}));
    const DeltaItem& item = store.items.back();
    const bool shared = item.algorithm == DeltaAlgorithm::chunked && !item.p.bf16_dot;
    store.first.push_back(store.first.back() + (shared ? (item.p.T() + chunk - 1) / chunk : 0));
  }
  const index_t chunks = store.first.back(), stride = WyFactors::floats(chunk, K);
  if (chunks == 0 || static_cast<std::size_t>(chunks * stride) * sizeof(float) > kShareFactorsMaxBytes)
    return for_each_item(executor, map, H, K, V, whole);
  if (static_cast<index_t>(store.records.size()) < chunks * stride) store.records.resize(static_cast<std::size_t>(chunks * stride));

  executor.run(chunks, [&](index_t j) {  // pass 1: (item, chunk) tasks
    const auto next = std::upper_bound(store.first.begin(), store.first.end(), j);
    const std::size_t it = static_cast<std::size_t>(next - store.first.begin()) - 1;
    const DeltaHead& p = store.items[it].p;
    const index_t t0 = (j - store.first[it]) * chunk;
    wy_chunk_factors(p, t0, std::min(chunk, p.T() - t0), factor_scratch(chunk, K),
                     WyFactors{store.records.data() + j * stride, chunk, K});
  });
  for_each_block(executor, items, K, split, [&](index_t it, ValueColumns cols, ItemScratch& ws) {  // pass 2
    const DeltaItem item = bind(order[static_cast<std::size_t>(it / H)], it % H, cols);
    const std::size_t i = static_cast<std::size_t>(it);
    if (store.first[i + 1] > store.first[i])
      run_delta_block(item, chunk, store.records.data() + store.first[i] * stride, ws);
    else
      run_delta_item(item, chunk, ws);
  });
}

/// Decode step over all (row, value head) pairs, in place on the pool `state` [S,HV,K,V]:
/// row b uses pool row slots.row(b) (-1: skipped, output untouched), zeroed first when
/// slots.fresh(b). make_token(b, hv, ws) returns the loaded operands of one head; a state whose
/// last dimension is strided is staged through a per-thread copy. No allocation after warm-up.
template <class MakeToken, class StoreOutput>
void run_step(Update update, index_t B, index_t HV, index_t K, index_t V, const TensorView<float, 4>& state,
              const StepSlots& slots, const Executor& executor, MakeToken&& make_token, StoreOutput&& store_output) {
  const bool in_place = state.is_last_dim_contiguous();
  // Waking a pool thread costs a few microseconds, about what one core needs to stream 1 MB of
  // state through this kernel; smaller steps stay on the calling thread.
  const bool parallel = B * HV * K * V >= (index_t{1} << 18);
  parallel_for(parallel ? executor : serial_executor(), B * HV, 1, [&](index_t begin, index_t end) {
    ItemScratch& ws = item_scratch(K, V);
    if (!in_place && static_cast<index_t>(ws.staged.size()) < K * V) ws.staged.resize(static_cast<std::size_t>(K * V));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / HV, hv = task % HV;
      const index_t row = slots.row(b);
      if (row < 0) continue;
      const auto s = state[row][hv];
      if (slots.fresh(b))
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = 0.f;
      const TokenOperands x = make_token(b, hv, *ws.tok);
      if (in_place) {
        advance_token(update, s.data(), s.stride(0), K, V, x, ws.tok->o());
      } else {
        float* staged = ws.staged.data();
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) staged[r * V + c] = s(r, c);
        advance_token(update, staged, V, K, V, x, ws.tok->o());
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = staged[r * V + c];
      }
      store_output(b, hv, ws.tok->o());
    }
  });
}

}  // namespace seqmix::delta_update
