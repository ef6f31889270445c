// selective_scan, single-token decode step: updates state [B,D,N] in place and writes y [B,D].
//
// The state keeps N contiguous, so the update runs along N (N = 16 is one AVX-512 register),
// with a partial vector for a ragged N tail; the per-channel scalars (softplus of dt, the D skip,
// the silu gate) are computed kWidth channels at a time, so no scalar exp runs anywhere.
#pragma once

#include <algorithm>
#include <array>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"  // detail::load_lanes / store_lanes / silu
#include "seqmix/ssm/selective_scan/fast.hpp"  // detail::softplus on vectors
#include "seqmix/ssm/selective_scan/reference.hpp"

namespace seqmix {
namespace detail {

// Below this many state elements per call a step stays on the calling thread: waking a pool
// worker costs a few microseconds, about what 16K state updates take.
constexpr index_t kScanStepMinParallelWork = 128 * 1024;

// h[n] = exp(dt * A[n]) * h[n] + dt_u * B[n] over one channel's N state elements; returns the
// vector whose lanes sum to sum_n C[n] * h[n]. Vectors along N, the tail as one partial vector.
inline FloatBatch scan_step_channel(float* h, index_t h_stride, const float* A, index_t a_stride, const float* Bn,
                               index_t b_stride, const float* Cn, index_t c_stride, index_t N, float dt,
                               float dt_u) {
  const FloatBatch dt_v(dt), dt_u_v(dt_u);
  FloatBatch acc(0.f);
  for (index_t n = 0; n < N; n += simd::kWidth) {
    const index_t lanes = std::min(simd::kWidth, N - n);
    const FloatBatch decay = simd::exp(dt_v * load_lanes(A + n * a_stride, a_stride, lanes));
    const FloatBatch hn = simd::fma(decay, load_lanes(h + n * h_stride, h_stride, lanes),
                                    dt_u_v * load_lanes(Bn + n * b_stride, b_stride, lanes));
    store_lanes(h + n * h_stride, h_stride, lanes, hn);
    // Padded lanes of C are zero, so they add nothing.
    acc = simd::fma(hn, load_lanes(Cn + n * c_stride, c_stride, lanes), acc);
  }
  return acc;
}

// Channels [d0, d0 + lanes) of batch row b, whose state is row `row` of the state pool.
inline void scan_step_lanes(const SelectiveScanStepInputs& in, const SelectiveScanStepOutputs& out,
                            const SelectiveScanOptions& options, index_t b, index_t row, index_t d0, index_t lanes) {
  const index_t N = in.A.size(1), per_group = in.u.size(1) / in.Bm.size(1);
  FloatBatch dt = load_lanes(in.delta.ptr(b, d0), in.delta.stride(1), lanes);
  if (in.delta_bias.has_value()) dt += load_lanes(in.delta_bias.ptr(d0), in.delta_bias.stride(0), lanes);
  if (options.delta_softplus) dt = softplus(dt);
  const FloatBatch u = load_lanes(in.u.ptr(b, d0), in.u.stride(1), lanes);
  alignas(64) float dt_lanes[simd::kFloatWidth], dt_u_lanes[simd::kFloatWidth];
  dt.store_aligned(dt_lanes);
  (dt * u).store_aligned(dt_u_lanes);
  // Channel i's C.h partial sums in sums[i]; one transposing reduction then sums all lanes at
  // once, about a third of the shuffles of one horizontal sum per channel.
  FloatBatch sums[simd::kFloatWidth];
  for (index_t i = 0; i < simd::kWidth; ++i) {
    if (i >= lanes) {
      sums[i] = FloatBatch(0.f);
      continue;
    }
    const index_t d = d0 + i, g = d / per_group;
    sums[i] = scan_step_channel(out.state.ptr(row, d), out.state.stride(2), in.A.ptr(d), in.A.stride(1),
                                in.Bm.ptr(b, g), in.Bm.stride(2), in.Cm.ptr(b, g), in.Cm.stride(2), N, dt_lanes[i],
                                dt_u_lanes[i]);
  }
  FloatBatch y = simd::reduce_add_rows(sums);
  if (in.Dskip.has_value()) y = simd::fma(load_lanes(in.Dskip.ptr(d0), in.Dskip.stride(0), lanes), u, y);
  if (in.z.has_value()) y *= silu(load_lanes(in.z.ptr(b, d0), in.z.stride(1), lanes));
  store_lanes(out.y.ptr(b, d0), out.y.stride(1), lanes, y);
}

}  // namespace detail

/// Decode step for one token per batch row. Without batch.state_indices state is [B,D,N]; with
/// it, state is the caller's pool [S,D,N], row b uses pool row state_indices[b] in place (-1:
/// padding, y row and state untouched) and has_initial_state[b] false zeroes that row first. No
/// heap allocation. Threaded over (batch, channel group) once the call is large enough to pay for
/// waking a thread.
inline void selective_scan_step(const SelectiveScanStepInputs& in, const SelectiveScanStepOutputs& out,
                                const SelectiveScanOptions& options = {},
                                const Executor& executor = serial_executor()) {
  static const ArgCheck check("selective_scan_step");  // built once: validation allocates nothing
  const auto call = detail::validate_selective_scan_step(check, in, out);
  const index_t B = call.dims.B, D = call.dims.D, N = call.dims.N;
  const index_t groups_per_row = (D + simd::kWidth - 1) / simd::kWidth;
  const index_t groups = B * groups_per_row;
  const index_t tasks = B * D * N >= detail::kScanStepMinParallelWork ? executor.concurrency() : 1;
  auto body = [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t b = i / groups_per_row, d0 = (i % groups_per_row) * simd::kWidth;
      const SequenceSpan seq = call.map[b];
      if (seq.state_row < 0) continue;  // padding row
      const index_t lanes = std::min(simd::kWidth, D - d0);
      if (!seq.read_state)
        for (index_t c = 0; c < lanes; ++c)
          for (index_t n = 0; n < N; ++n) out.state(seq.state_row, d0 + c, n) = 0.f;
      detail::scan_step_lanes(in, out, options, b, seq.state_row, d0, lanes);
    }
  };
  if (tasks <= 1) {
    body(0, groups);
    return;
  }
  // Even split, one block per thread: the work per channel group is uniform.
  executor.run(tasks, [&](index_t task) { body(groups * task / tasks, groups * (task + 1) / tasks); });
}

}  // namespace seqmix
