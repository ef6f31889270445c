// selective_scan, fast prefill: vectorized over channels (one lane per channel), every state
// element of a channel group in L1 scratch, a vector exp per (token, state index); threaded over
// (batch, channel group). See README.md in this folder for why channels and not N.
#pragma once

#include <algorithm>
#include <algorithm>
#include <vector>

#include "seqmix/core/parallel.hpp"
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

// Scans channels [d0, d0 + lanes) of batch row b over all T tokens. All lanes share group g.
inline void scan_lanes(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                       const SelectiveScanOptions& options, index_t b, index_t d0, index_t lanes, index_t g,
                       ScanScratch& scratch) {
  const index_t T = in.u.size(1), N = in.A.size(1), W = simd::kWidth;
  float* A = scratch.A.data();
  float* h = scratch.h.data();
  for (index_t n = 0; n < N; ++n)
    for (index_t i = 0; i < W; ++i) {
      A[n * W + i] = i < lanes ? in.A(d0 + i, n) : 0.f;
      h[n * W + i] = i < lanes && in.initial_state.has_value() ? in.initial_state(b, d0 + i, n) : 0.f;
    }
  const FloatBatch delta_bias =
      in.delta_bias.has_value() ? load_lanes(in.delta_bias.ptr(d0), in.delta_bias.stride(0), lanes) : FloatBatch(0.f);
  const FloatBatch skip =
      in.Dskip.has_value() ? load_lanes(in.Dskip.ptr(d0), in.Dskip.stride(0), lanes) : FloatBatch(0.f);
  const index_t bn_stride = in.Bm.stride(3), cn_stride = in.Cm.stride(3);
  for (index_t t = 0; t < T; ++t) {
    FloatBatch dt = load_lanes(in.delta.ptr(b, t, d0), in.delta.stride(2), lanes) + delta_bias;
    if (options.delta_softplus) dt = softplus(dt);
    const FloatBatch u = load_lanes(in.u.ptr(b, t, d0), in.u.stride(2), lanes);
    const FloatBatch dt_u = dt * u;
    const float* Bt = in.Bm.ptr(b, t, g);  // [N], stride bn_stride
    const float* Ct = in.Cm.ptr(b, t, g);
    FloatBatch y(0.f);
    for (index_t n = 0; n < N; ++n) {
      const FloatBatch decay = simd::exp(dt * FloatBatch::load_aligned(A + n * W));
      const FloatBatch hn = simd::fma(decay, FloatBatch::load_aligned(h + n * W), dt_u * FloatBatch(Bt[n * bn_stride]));
      hn.store_aligned(h + n * W);
      y = simd::fma(hn, FloatBatch(Ct[n * cn_stride]), y);
    }
    if (out.token_states.has_value())
      for (index_t i = 0; i < lanes; ++i)
        for (index_t n = 0; n < N; ++n) out.token_states(b, t, d0 + i, n) = h[n * W + i];
    y = simd::fma(skip, u, y);
    if (in.z.has_value()) y *= silu(load_lanes(in.z.ptr(b, t, d0), in.z.stride(2), lanes));
    store_lanes(out.y.ptr(b, t, d0), out.y.stride(2), lanes, y);
  }
  if (out.final_state.has_value())
    for (index_t i = 0; i < lanes; ++i)
      for (index_t n = 0; n < N; ++n) out.final_state(b, d0 + i, n) = h[n * W + i];
}

}  // namespace detail

/// Fast prefill. Same arguments and results as reference::selective_scan (see reference.hpp); any
/// strides are accepted, unit channel stride is the fast case. A packed or slotted batch is cut
/// into sequences (each a batch of one); the work items are (sequence, channel group), longest
/// sequences first, handed out dynamically.
///
/// Not done yet: parallel over time for long T with few channels (it needs the core scan, and
/// recomputing the decay products in the fix-up pass costs as much as the scan itself, so it only
/// pays when B * D / kWidth channel groups are fewer than the threads).
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
  parallel_for(executor, static_cast<index_t>(seqs.size()) * lane_groups, 1, [&](index_t begin, index_t end) {
    detail::ScanScratch scratch(N);
    for (index_t i = begin; i < end; ++i) {
      const detail::ScanSequence& seq = seqs[static_cast<std::size_t>(i / lane_groups)];
      const index_t k = i % lane_groups;
      const index_t g = k / lane_groups_per_bc_group;
      const index_t offset = (k % lane_groups_per_bc_group) * simd::kWidth;
      const index_t lanes = std::min(simd::kWidth, per_group - offset);
      detail::scan_lanes(seq.in, seq.out, options, 0, g * per_group + offset, lanes, g, scratch);
    }
  });
}

}  // namespace seqmix
