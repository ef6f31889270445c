// The chunkwise engine: the loop shared by every chunked recurrence of the library (linear
// attention / GLA / RWKV-6, the delta-rule WY form, Mamba-2 SSD). Internal; README.md next to
// this file lists which family fills which hook.
//
// Every chunked form computes, per independent item (a (batch, head) pair) and per chunk of at
// most `chunk` tokens, in order:
//   load_chunk       the chunk's operands and whatever intra-chunk work needs no state
//   state_to_output  what the chunk's tokens read from the state carried into the chunk
//   intra            the intra-chunk (chunk-local, parallel over tokens) outputs
//   update_state     state passing: the carried state decayed over the chunk plus its summary
//   store_outputs    the chunk's output rows, out to the caller's tensor
// The engine owns the loops only: items split over the executor, one workspace per parallel
// block (never per item or chunk), chunks of `chunk` tokens with a ragged last one, and the
// state load at the start of an item / store at its end. The numerics stay in the families.
//
// A Kernel is a small const object (it holds the views of one call) with:
//   using Workspace = ...;                      per-thread scratch, state included
//   using Head = ...;                           one item: its views and token count
//   Workspace make_workspace() const;           called once per parallel block
//   Head begin_head(index_t item, Workspace&) const;   binds the item and loads its state
//   index_t tokens(const Head&) const;          T of the item
//   void load_chunk(const Head&, index_t t0, index_t L, Workspace&) const;
//   void state_to_output(const Head&, index_t t0, index_t L, Workspace&) const;
//   void intra(const Head&, index_t t0, index_t L, Workspace&) const;
//   void update_state(const Head&, index_t t0, index_t L, Workspace&) const;
//   void store_outputs(const Head&, index_t t0, index_t L, Workspace&) const;
//   void end_head(const Head&, Workspace&) const;      stores the item's final state
// Optional, for an item whose first tokens form a segment of their own (JRT's prefix in
// linear_attention): `index_t prefix_tokens(const Head&) const` and
// `void after_prefix(const Head&, index_t P, Workspace&) const`; chunks then restart at P.
//
// Aliasing: end_head runs after every chunk of the item, and begin_head of the next item only
// after that, so a final state may alias the initial state as long as begin_head copies the
// item's state completely into the workspace (every family does).
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::chunkwise {

namespace engine_detail {

template <class Kernel, class = void>
struct has_prefix : std::false_type {};

template <class Kernel>
struct has_prefix<Kernel, std::void_t<decltype(std::declval<const Kernel&>().prefix_tokens(
                              std::declval<const typename Kernel::Head&>()))>> : std::true_type {};

}  // namespace engine_detail

/// Runs the L tokens from t0 of one item as one chunk: the kernel's hooks in order, the state
/// carried in the workspace.
template <class Kernel>
void run_chunk(const Kernel& kernel, const typename Kernel::Head& head, index_t t0, index_t L,
               typename Kernel::Workspace& ws) {
  kernel.load_chunk(head, t0, L, ws);
  kernel.state_to_output(head, t0, L, ws);
  kernel.intra(head, t0, L, ws);
  kernel.update_state(head, t0, L, ws);
  kernel.store_outputs(head, t0, L, ws);
}

/// Runs tokens [t_begin, t_end) of one item chunk by chunk, the state carried in the workspace.
/// Chunks start at t_begin + k * chunk; the last one may be shorter.
template <class Kernel>
void run_chunks(const Kernel& kernel, const typename Kernel::Head& head, index_t t_begin, index_t t_end, index_t chunk,
                typename Kernel::Workspace& ws) {
  for (index_t t0 = t_begin; t0 < t_end; t0 += chunk) run_chunk(kernel, head, t0, std::min(chunk, t_end - t0), ws);
}

/// One item from its initial state to its final state.
template <class Kernel>
void run_item(const Kernel& kernel, index_t item, index_t chunk, typename Kernel::Workspace& ws) {
  const typename Kernel::Head head = kernel.begin_head(item, ws);
  const index_t T = kernel.tokens(head);
  index_t P = 0;
  if constexpr (engine_detail::has_prefix<Kernel>::value) {
    P = std::min(kernel.prefix_tokens(head), T);
    if (P > 0) {
      run_chunks(kernel, head, 0, P, chunk, ws);
      kernel.after_prefix(head, P, ws);
    }
  }
  run_chunks(kernel, head, P, T, chunk, ws);
  kernel.end_head(head, ws);
}

/// 2^17 floats (512 KB, half a Zen 5 core's L2): the most carried state a task of items advancing
/// together (run_items_together) keeps, one state per item.
constexpr index_t kItemsTogetherStateFloats = index_t{1} << 17;

/// Items per task of run_items_together: enough that each thread takes one group of a
/// sequence's `items`, as many as keep their states (`state_floats` each) within
/// kItemsTogetherStateFloats.
inline index_t items_together_group(index_t items, index_t state_floats, int concurrency) {
  const index_t fit = std::max<index_t>(1, kItemsTogetherStateFloats / std::max<index_t>(1, state_floats));
  return std::min((items + concurrency - 1) / concurrency, fit);
}

/// Items [first, first + n) that share their tokens (the heads of one sequence) advancing chunk
/// by chunk together: for each chunk, each item runs its hooks with its own carried state, kept
/// in states[i] (ws.S's type and shape, the caller's across tasks) and swapped into ws.S. A
/// token's rows of all those heads sit side by side in [B,T,H,D] memory, so they are read and
/// written from the same pages, where one head over all T touches a page per row. Per item the
/// hooks and their order are run_item's (no prefix). `heads`: the caller's list, refilled.
template <class Kernel, class State>
void run_items_together(const Kernel& kernel, index_t first, index_t n, index_t chunk,
                        std::vector<typename Kernel::Head>& heads, std::vector<State>& states,
                        typename Kernel::Workspace& ws) {
  heads.clear();
  for (index_t i = 0; i < n; ++i) {
    heads.push_back(kernel.begin_head(first + i, ws));  // loads the item's state into ws.S
    ws.S.swap(states[static_cast<std::size_t>(i)]);
  }
  const auto each = [&](auto&& hook) {  // hook(head) with the head's state in ws.S
    for (index_t i = 0; i < n; ++i) {
      ws.S.swap(states[static_cast<std::size_t>(i)]);
      hook(heads[static_cast<std::size_t>(i)]);
      ws.S.swap(states[static_cast<std::size_t>(i)]);
    }
  };
  const index_t T = kernel.tokens(heads.front());
  for (index_t t0 = 0; t0 < T; t0 += chunk) {
    const index_t L = std::min(chunk, T - t0);
    each([&](const typename Kernel::Head& h) { run_chunk(kernel, h, t0, L, ws); });
  }
  each([&](const typename Kernel::Head& h) { kernel.end_head(h, ws); });
}

/// The chunked prefill of `items` independent items over the executor, `grain` items at least
/// per task. Items of one parallel block share one workspace.
template <class Kernel>
void run(const Kernel& kernel, index_t items, index_t grain, index_t chunk, const Executor& executor) {
  parallel_for(executor, items, grain, [&](index_t begin, index_t end) {
    typename Kernel::Workspace ws = kernel.make_workspace();
    for (index_t item = begin; item < end; ++item) run_item(kernel, item, chunk, ws);
  });
}

/// run, with each parallel block's workspace from the memory its thread keeps across calls
/// instead of a fresh make_workspace(): Keep is a core/thread_keep.hpp ThreadKept<Scratch>, and
/// workspace_of(Scratch&) returns the block's Workspace& in it (made or reset there).
template <class Keep, class Kernel, class WorkspaceOf>
void run_kept(const Kernel& kernel, index_t items, index_t grain, index_t chunk, const Executor& executor,
              WorkspaceOf&& workspace_of) {
  parallel_for(executor, items, grain, [&](index_t begin, index_t end) {
    auto scratch = Keep::take();
    typename Kernel::Workspace& ws = workspace_of(scratch);
    for (index_t item = begin; item < end; ++item) run_item(kernel, item, chunk, ws);
    Keep::give_back(std::move(scratch));
  });
}

}  // namespace seqmix::chunkwise
