// selective_scan, fast prefill: vectorized over channels (one lane per channel), every state
// element of a channel group in L1 scratch, a vector exp per (token, state index); threaded over
// (batch, channel group). See README.md in this folder for why channels and not N.
#pragma once

#include <algorithm>
#include <atomic>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/linear.hpp"  // detail::TimeSplitScratch: a per-thread buffer kept across calls
#include "seqmix/core/simd.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"  // detail::load_lanes / store_lanes / silu
#include "seqmix/ssm/selective_scan/reference.hpp"

namespace seqmix {
namespace detail {

// softplus on a vector: log1p(exp(x)), and x itself above 20 (as the scalar detail::softplus).
inline FloatBatch softplus(const FloatBatch& x) noexcept {
  const FloatBatch threshold(20.f);
  // min() keeps exp finite in the lanes that select x anyway.
  return xsimd::select(x > threshold, x, xsimd::log1p(simd::exp(simd::min_keep_nan(x, threshold))));
}

// Per-task scratch, allocated once per task outside the loops: A and h of one channel group,
// transposed to [N][lane] so that state index n of all lanes is one vector.
struct ScanScratch {
  AlignedVector<float> A;  // [N][kWidth]
  AlignedVector<float> h;  // [N][kWidth]
  explicit ScanScratch(index_t N)
      : A(static_cast<std::size_t>(N * simd::kWidth), 0.f), h(static_cast<std::size_t>(N * simd::kWidth), 0.f) {}
};

// Scans channels [d0, d0 + lanes) of batch row b over all T tokens, state indices [n0, n1). All
// lanes share group g. The whole range [0, N) writes y. A part of it (the state evolves
// independently per n; only y sums over n) writes its share of y to `share` [T][kWidth]
// instead: the sum over its n of C h, times the gate, plus the skip in the part with n0 = 0,
// so that y is the plain sum of the shares (combine_shares).
inline void scan_lanes(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                       const SelectiveScanOptions& options, index_t b, index_t d0, index_t lanes, index_t g,
                       index_t n0, index_t n1, float* share, ScanScratch& scratch) {
  const index_t T = in.u.size(1), W = simd::kWidth;
  float* A = scratch.A.data();
  float* h = scratch.h.data();
  for (index_t n = n0; n < n1; ++n)
    for (index_t i = 0; i < W; ++i) {
      A[n * W + i] = i < lanes ? in.A(d0 + i, n) : 0.f;
      h[n * W + i] = i < lanes && in.initial_state.has_value() ? in.initial_state(b, d0 + i, n) : 0.f;
    }
  const FloatBatch delta_bias =
      in.delta_bias.has_value() ? load_lanes(in.delta_bias.ptr(d0), in.delta_bias.stride(0), lanes) : FloatBatch(0.f);
  const FloatBatch skip =
      in.Dskip.has_value() && n0 == 0 ? load_lanes(in.Dskip.ptr(d0), in.Dskip.stride(0), lanes) : FloatBatch(0.f);
  const index_t bn_stride = in.Bm.stride(3), cn_stride = in.Cm.stride(3);
  for (index_t t = 0; t < T; ++t) {
    FloatBatch dt = load_lanes(in.delta.ptr(b, t, d0), in.delta.stride(2), lanes) + delta_bias;
    if (options.delta_softplus) dt = softplus(dt);
    const FloatBatch u = load_lanes(in.u.ptr(b, t, d0), in.u.stride(2), lanes);
    const FloatBatch dt_u = dt * u;
    const float* Bt = in.Bm.ptr(b, t, g);  // [N], stride bn_stride
    const float* Ct = in.Cm.ptr(b, t, g);
    FloatBatch y(0.f);
    for (index_t n = n0; n < n1; ++n) {
      const FloatBatch decay = simd::exp(dt * FloatBatch::load_aligned(A + n * W));
      const FloatBatch hn = simd::fma(decay, FloatBatch::load_aligned(h + n * W), dt_u * FloatBatch(Bt[n * bn_stride]));
      hn.store_aligned(h + n * W);
      y = simd::fma(hn, FloatBatch(Ct[n * cn_stride]), y);
    }
    if (out.token_states.has_value())
      for (index_t i = 0; i < lanes; ++i)
        for (index_t n = n0; n < n1; ++n) out.token_states(b, t, d0 + i, n) = h[n * W + i];
    y = simd::fma(skip, u, y);
    if (in.z.has_value()) y *= silu(load_lanes(in.z.ptr(b, t, d0), in.z.stride(2), lanes));
    if (share != nullptr)
      y.store_aligned(share + t * W);
    else
      store_lanes(out.y.ptr(b, t, d0), out.y.stride(2), lanes, y);
  }
  if (out.final_state.has_value())
    for (index_t i = 0; i < lanes; ++i)
      for (index_t n = n0; n < n1; ++n) out.final_state(b, d0 + i, n) = h[n * W + i];
}

// y of a lane group scanned in `parts` ranges of state indices: the sum of their shares (each
// [T][kWidth], `share_floats` apart from `shares` on).
inline void combine_shares(const SelectiveScanOutputs& out, index_t T, index_t d0, index_t lanes, const float* shares,
                           index_t share_floats, index_t parts) {
  const index_t W = simd::kWidth;
  for (index_t t = 0; t < T; ++t) {
    FloatBatch y = FloatBatch::load_aligned(shares + t * W);
    for (index_t p = 1; p < parts; ++p) y += FloatBatch::load_aligned(shares + p * share_floats + t * W);
    store_lanes(out.y.ptr(0, t, d0), out.y.stride(2), lanes, y);
  }
}

/// How the fast prefill hands its items (sequence, lane group) to the executor's threads.
struct ScanSplit {
  index_t whole = 0;  ///< the first items, each scanned whole
  index_t split = 0;  ///< the last items, each scanned in `parts` ranges of state indices
  index_t parts = 1;  ///< ranges per split item (1: nothing is split)
};

/// The items fill waves of `threads` tasks; when the last wave is at most half full (96 lane
/// groups on 64 threads: 32), its items are cut into ranges of state indices so that the wave
/// fills the cores. A range of N/k indices costs more than 1/k of the item (dt, softplus and the
/// loads are per token, not per n: at N 16 a half costs ~0.75 of the item) but ends the call
/// sooner than the item whole. Ranges keep 2 indices or more. Only from 3 threads on and at most
/// 4 waves (where parallel_for would give one item per task anyway): 1 and 2 threads, and many
/// items, keep parallel_for's blocks.
inline ScanSplit scan_split(index_t items, index_t N, int threads) {
  ScanSplit plan;
  plan.whole = items;
  const index_t P = threads, last_wave = P > 0 ? items % P : 0;
  if (P < 3 || items >= 4 * P || last_wave == 0 || 2 * last_wave > P) return plan;
  const index_t parts = std::min(P / last_wave, N / 2);
  if (parts < 2) return plan;
  plan.whole = items - last_wave;
  plan.split = last_wave;
  plan.parts = parts;
  return plan;
}

}  // namespace detail

/// Fast prefill. Same arguments and results as reference::selective_scan (see reference.hpp); any
/// strides are accepted, unit channel stride is the fast case. A packed or slotted batch is cut
/// into sequences (each a batch of one); the work items are (sequence, channel group), longest
/// sequences first, handed out dynamically. From 3 threads on, when the items' last wave would
/// fill at most half the threads, its items run in ranges of state indices (detail::scan_split).
///
/// Not done: parallel over time (recomputing the decay products in the fix-up pass costs as much
/// as the scan itself; splitting N costs no fix-up).
inline void selective_scan(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                           const SelectiveScanOptions& options = {},
                           const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("selective_scan", in, out);
    return selective_scan(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto call = detail::validate_selective_scan("selective_scan", in, out);
  const index_t D = call.dims.D, N = call.dims.N, G = call.dims.G;
  if (D == 0) return;
  std::vector<detail::ScanSequence> seqs = detail::scan_sequences(in, out, call.map);
  std::stable_sort(seqs.begin(), seqs.end(), [](const detail::ScanSequence& a, const detail::ScanSequence& b) {
    return a.in.u.size(1) > b.in.u.size(1);
  });
  // Channel groups never straddle a B/C group, so each lane group broadcasts one B and C row.
  const index_t per_group = D / G;
  const index_t lane_groups_per_bc_group = (per_group + simd::kWidth - 1) / simd::kWidth;
  const index_t lane_groups = G * lane_groups_per_bc_group;
  const index_t items = static_cast<index_t>(seqs.size()) * lane_groups;
  // Item i: sequence i / lane_groups, its lane group i % lane_groups.
  struct Item {
    const detail::ScanSequence* seq;
    index_t g, d0, lanes;
  };
  auto item_at = [&](index_t i) {
    const index_t k = i % lane_groups, g = k / lane_groups_per_bc_group;
    const index_t offset = (k % lane_groups_per_bc_group) * simd::kWidth;
    return Item{&seqs[static_cast<std::size_t>(i / lane_groups)], g, g * per_group + offset,
                std::min(simd::kWidth, per_group - offset)};
  };
  auto scan_item = [&](const Item& it, index_t n0, index_t n1, float* share, detail::ScanScratch& scratch) {
    detail::scan_lanes(it.seq->in, it.seq->out, options, 0, it.d0, it.lanes, it.g, n0, n1, share, scratch);
  };
  const detail::ScanSplit plan = detail::scan_split(items, N, executor.concurrency());
  if (plan.split == 0) {
    parallel_for(executor, items, 1, [&](index_t begin, index_t end) {
      detail::ScanScratch scratch(N);
      for (index_t i = begin; i < end; ++i) scan_item(item_at(i), 0, N, nullptr, scratch);
    });
    return;
  }
  // Whole items first, then the parts (ThreadPool hands tasks out in index order: the parts fill
  // the last wave). Each part writes its share of y to the caller's kept scratch (fresh pages on
  // every call cost more than the parts gain); the part that finishes an item last adds the
  // shares up.
  const index_t share_floats = seqs.front().in.u.size(1) * simd::kWidth;  // the longest sequence
  const detail::TimeSplitScratch shares(plan.split * plan.parts * share_floats);
  std::vector<std::atomic<index_t>> finished(static_cast<std::size_t>(plan.split));
  executor.run(plan.whole + plan.split * plan.parts, [&](index_t task) {
    detail::ScanScratch scratch(N);
    if (task < plan.whole) return scan_item(item_at(task), 0, N, nullptr, scratch);
    const index_t j = (task - plan.whole) / plan.parts, p = (task - plan.whole) % plan.parts;
    const Item it = item_at(plan.whole + j);
    float* item_shares = shares.data() + j * plan.parts * share_floats;
    scan_item(it, N * p / plan.parts, N * (p + 1) / plan.parts, item_shares + p * share_floats, scratch);
    if (finished[static_cast<std::size_t>(j)].fetch_add(1, std::memory_order_acq_rel) + 1 == plan.parts)
      detail::combine_shares(it.seq->out, it.seq->in.u.size(1), it.d0, it.lanes, item_shares, share_floats, plan.parts);
  });
}

}  // namespace seqmix
