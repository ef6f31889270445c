// topk_attention, fast form: gather the selected K/V rows, then the dense split-KV decode kernel.
//
// A task is (batch row, query, selection head). For each KV head its query heads read, the
// selected rows of K and V are converted into contiguous fp32 scratch ([n, 1, 1, D]: the
// gathered keys in increasing order) and attention_step runs those query heads on them with
// no visibility rule (selection already applied it). The gather reads n rows where dense decode
// reads Tk, which is where the saving comes from; the kernel itself is the dense one, so the
// attention over the selected keys is exact.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/prefetch.hpp"

namespace seqmix {
namespace detail {

// Rows the gather prefetches ahead: 16 rows x 2 (K, V) x a few lines keeps the ~100 line fill
// buffers of a core busy without evicting rows before their use.
constexpr index_t kGatherAhead = 16;

// Per-thread scratch of topk_attention: the gathered K and V rows in their storage type (the
// decode kernel widens fp16 / bf16 in registers). Kept per thread and grown, never shrunk or
// zeroed: allocating it per call mapped and zero-filled 2 MB per thread per decode step, which
// cost more than the attention itself at k = 2048.
template <class KV>
struct TopkScratch {
  AlignedVector<KV> k, v;
  void fit(index_t capacity, index_t Dk, index_t Dv) {
    const auto grow = [](AlignedVector<KV>& x, index_t n) {
      if (x.size() < static_cast<std::size_t>(n)) x.resize(static_cast<std::size_t>(n));
    };
    grow(k, std::max<index_t>(capacity, 1) * Dk);
    grow(v, std::max<index_t>(capacity, 1) * Dv);
  }
};

template <class KV>
TopkScratch<KV>& topk_scratch(index_t capacity, index_t Dk, index_t Dv) {
  thread_local TopkScratch<KV> scratch;
  scratch.fit(capacity, Dk, Dv);
  return scratch;
}

// Copies one K or V row (any element stride) into a contiguous row of the scratch.
template <class KV>
inline void copy_row(const KV* src, index_t stride, index_t n, KV* dst) noexcept {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(KV));
    return;
  }
  for (index_t c = 0; c < n; ++c) dst[c] = src[c * stride];
}

// One task: query i of batch row b, selection head sel, with `inner` running the decode kernel
// (serial when tasks are spread over threads, the caller's executor when there is one task).
template <class KV>
void topk_task(const TopkAttentionInputs<KV>& in, const AttentionOutputs& out, const TopkAttentionOptions& options,
               const TopkDims& t, index_t b, index_t i, index_t sel, TopkScratch<KV>& w, const Executor& inner) {
  const AttentionDims& d = t.attention;
  const index_t G = d.group(), Gs = t.heads_per_selection();
  // The selected keys of this row: a prefix of the slots (select_topk pads with -1 at the end),
  // but any -1 is skipped so hand-made lists work too.
  const std::int32_t* slots = in.indices.ptr(b, i, sel);
  const index_t stride = in.indices.stride(3);
  for (index_t hk = sel * Gs / G; hk < d.Hkv && hk * G < (sel + 1) * Gs; ++hk) {
    const HeadRange heads = heads_of(sel, Gs, hk, G);
    if (heads.h0 >= heads.h1) continue;
    index_t n = 0;
    for (index_t e = 0; e < t.capacity; ++e) {
      const index_t j = slots[e * stride];
      if (j < 0) continue;
      // Selected rows are scattered (a KV head's rows are Hkv * D apart): without a prefetch
      // each row costs a full memory latency. kGatherAhead rows in flight hide most of it.
      if (e + kGatherAhead < t.capacity && slots[(e + kGatherAhead) * stride] >= 0) {
        const index_t ahead = slots[(e + kGatherAhead) * stride];
        prefetch_row(in.k.ptr(b, ahead, hk), d.Dk * in.k.stride(3));
        prefetch_row(in.v.ptr(b, ahead, hk), d.Dv * in.v.stride(3));
      }
      copy_row(in.k.ptr(b, j, hk), in.k.stride(3), d.Dk, w.k.data() + n * d.Dk);
      copy_row(in.v.ptr(b, j, hk), in.v.stride(3), d.Dv, w.v.data() + n * d.Dv);
      ++n;
    }
    const index_t count = heads.h1 - heads.h0;
    AttentionInputs<KV> gathered;
    gathered.q = in.q.slice(0, b, 1).slice(1, i, 1).slice(2, heads.h0, count);
    gathered.k = ConstView<KV, 4>(w.k.data(), {1, n, 1, d.Dk});
    gathered.v = ConstView<KV, 4>(w.v.data(), {1, n, 1, d.Dv});
    if (in.sink_logits.has_value()) gathered.sink_logits = in.sink_logits.slice(0, heads.h0, count);
    AttentionOutputs part;
    part.o = out.o.slice(0, b, 1).slice(1, i, 1).slice(2, heads.h0, count);
    if (out.lse.has_value()) part.lse = out.lse.slice(0, b, 1).slice(1, i, 1).slice(2, heads.h0, count);
    attention_step(gathered, part, as_attention_options(options), inner);
  }
}

}  // namespace detail

/// Same arguments and results as reference::topk_attention. Each thread keeps one gather scratch
/// (capacity x (Dk + Dv) elements of KV) across calls; the decode kernel allocates its small
/// per-call state.
template <class KV>
void topk_attention(const TopkAttentionInputs<KV>& in, const AttentionOutputs& out,
                    const TopkAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  const auto t = validate_topk_attention("topk_attention", in, out, options);
  const AttentionDims& d = t.attention;
  const index_t tasks = d.B * d.Tq * t.Hs;
  if (tasks * d.Hq == 0) return;
  // Few tasks (one token, one selection head): split each task's keys over the threads instead.
  const bool split_inside = tasks < 2 * executor.concurrency();
  const Executor& inner = split_inside ? executor : serial_executor();
  const auto run = [&](index_t first, index_t last) {
    TopkScratch<KV>& scratch = topk_scratch<KV>(t.capacity, d.Dk, d.Dv);
    for (index_t task = first; task < last; ++task)
      topk_task(in, out, options, t, task / t.Hs / d.Tq, task / t.Hs % d.Tq, task % t.Hs, scratch, inner);
  };
  if (split_inside)
    run(0, tasks);
  else
    parallel_for(executor, tasks, 1, run);
}

}  // namespace seqmix
