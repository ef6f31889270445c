// ssd, decode step and recurrent form: the state update of one token, fused into one pass over
// the [P,N] state of a head (decay, rank-1 update and the C read-out together, vectorized over
// N), so the state is read and written exactly once per token. The step is memory-bound on the
// state (B*H*P*N*4 bytes read and written per token); the same kernel, applied T times with the
// state kept in a local buffer, is the recurrent prefill (detail::ssd_recurrent) that
// seqmix::ssd picks for short inputs.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/ssm/ssd/reference.hpp"

namespace seqmix {
namespace detail {

using SsdBatch = simd::Batch<float>;

// Strided row <-> contiguous buffer: kernels work on contiguous rows only.
inline void ssd_gather(const float* src, index_t stride, index_t n, float* dst) noexcept {
  if (stride == 1) {
    std::copy(src, src + n, dst);
    return;
  }
  for (index_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

inline void ssd_scatter(const float* src, index_t n, float* dst, index_t stride) noexcept {
  if (stride == 1) {
    std::copy(src, src + n, dst);
    return;
  }
  for (index_t i = 0; i < n; ++i) dst[i * stride] = src[i];
}

// One token of one head, for 4 state rows at once. The 4 rows share every load of B and C and
// keep 4 independent accumulators, so the loop is bound by throughput, not by latency:
//   s[r][n] = decay * s[r][n] + u[r] * Bn[n];   y[r] = sum_n s[r][n] * Cn[n]
// In the step that throughput is the state's traffic from L2/L3 (one load and one store per
// element); the 4 horizontal sums at the end cost nothing measurable there (timed without them).
inline void ssd_token_rows4(float* s, index_t row_stride, index_t N, float decay, const float* u,
                            const float* Bn, const float* Cn, float* y) noexcept {
  float* s0 = s;
  float* s1 = s + row_stride;
  float* s2 = s + 2 * row_stride;
  float* s3 = s + 3 * row_stride;
  const SsdBatch a(decay), u0(u[0]), u1(u[1]), u2(u[2]), u3(u[3]);
  SsdBatch y0(0.f), y1(0.f), y2(0.f), y3(0.f);
  const index_t nv = simd::vector_end(N);
  for (index_t n = 0; n < nv; n += simd::kWidth) {
    const SsdBatch b = simd::load(Bn + n), c = simd::load(Cn + n);
    const SsdBatch h0 = simd::fma(a, simd::load(s0 + n), u0 * b);
    const SsdBatch h1 = simd::fma(a, simd::load(s1 + n), u1 * b);
    const SsdBatch h2 = simd::fma(a, simd::load(s2 + n), u2 * b);
    const SsdBatch h3 = simd::fma(a, simd::load(s3 + n), u3 * b);
    simd::store(s0 + n, h0), simd::store(s1 + n, h1), simd::store(s2 + n, h2), simd::store(s3 + n, h3);
    y0 = simd::fma(h0, c, y0), y1 = simd::fma(h1, c, y1), y2 = simd::fma(h2, c, y2), y3 = simd::fma(h3, c, y3);
  }
  float r[4] = {simd::reduce_add(y0), simd::reduce_add(y1), simd::reduce_add(y2), simd::reduce_add(y3)};
  float* rows[4] = {s0, s1, s2, s3};
  for (int k = 0; k < 4; ++k)
    for (index_t n = nv; n < N; ++n) {
      rows[k][n] = decay * rows[k][n] + u[k] * Bn[n];
      r[k] += rows[k][n] * Cn[n];
    }
  for (int k = 0; k < 4; ++k) y[k] = r[k];
}

inline void ssd_token_row(float* s, index_t N, float decay, float u, const float* Bn, const float* Cn,
                          float* y) noexcept {
  const SsdBatch a(decay), uv(u);
  SsdBatch acc(0.f);
  const index_t nv = simd::vector_end(N);
  for (index_t n = 0; n < nv; n += simd::kWidth) {
    const SsdBatch h = simd::fma(a, simd::load(s + n), uv * simd::load(Bn + n));
    simd::store(s + n, h);
    acc = simd::fma(h, simd::load(Cn + n), acc);
  }
  float r = simd::reduce_add(acc);
  for (index_t n = nv; n < N; ++n) {
    s[n] = decay * s[n] + u * Bn[n];
    r += s[n] * Cn[n];
  }
  *y = r;
}

// One token of one head: state s [P,N] (rows `row_stride` apart, N contiguous), u[p] = dt*x[p],
// contiguous Bn, Cn [N]; writes y[p] = sum_n s[p][n] * Cn[n] (before D and z).
inline void ssd_token(float* s, index_t row_stride, index_t P, index_t N, float decay, const float* u,
                      const float* Bn, const float* Cn, float* y) noexcept {
  index_t p = 0;
  for (; p + 4 <= P; p += 4) ssd_token_rows4(s + p * row_stride, row_stride, N, decay, u + p, Bn, Cn, y + p);
  for (; p < P; ++p) ssd_token_row(s + p * row_stride, N, decay, u[p], Bn, Cn, y + p);
}

// Same update for a state whose N dimension is strided (a rare caller layout): plain loops.
inline void ssd_token_strided(const TensorView<float, 2>& s, float decay, const float* u, const float* Bn,
                              const float* Cn, float* y) noexcept {
  for (index_t p = 0; p < s.size(0); ++p) {
    float r = 0.f;
    for (index_t n = 0; n < s.size(1); ++n) {
      float& h = s(p, n);
      h = decay * h + u[p] * Bn[n];
      r += h * Cn[n];
    }
    y[p] = r;
  }
}

// y[p] = (y[p] + D * x[p]) * silu(z[p]) over contiguous rows; z == nullptr means no gate.
inline void ssd_finish(float* y, const float* x, float D, const float* z, index_t P) noexcept {
  const SsdBatch d(D), one(1.f);
  const index_t pv = simd::vector_end(P);
  for (index_t p = 0; p < pv; p += simd::kWidth) {
    SsdBatch v = simd::fma(d, simd::load(x + p), simd::load(y + p));
    if (z) {
      const SsdBatch g = simd::load(z + p);
      v = v * (g / (one + simd::exp(-g)));
    }
    simd::store(y + p, v);
  }
  for (index_t p = pv; p < P; ++p) {
    float v = y[p] + D * x[p];
    if (z) v *= ssd_silu(z[p]);
    y[p] = v;
  }
}

// Per-task scratch of the recurrent kernels: one token's rows of one head, contiguous.
struct SsdTokenScratch {
  std::vector<float> x, u, z, y, Bn, Cn;
  SsdTokenScratch(index_t P, index_t N)
      : x(static_cast<std::size_t>(P)),
        u(static_cast<std::size_t>(P)),
        z(static_cast<std::size_t>(P)),
        y(static_cast<std::size_t>(P)),
        Bn(static_cast<std::size_t>(N)),
        Cn(static_cast<std::size_t>(N)) {}
};

// The token-major views of one (batch, head) at one token, as the recurrent kernels read them.
struct SsdTokenRows {
  const float* x;
  index_t x_stride;  // along P
  const float* z;    // nullptr when there is no gate
  index_t z_stride;
  const float* Bn;
  index_t B_stride;  // along N
  const float* Cn;
  index_t C_stride;
  float dt;  // after bias and softplus
};

// Gathers one token's rows, updates the state and leaves the finished outputs (D and z applied)
// in sc.y. The state is `s` (rows s_row_stride apart, N contiguous) or, when s is null, the
// strided view `strided`.
inline void ssd_token_all(const SsdTokenRows& rows, float A, float D, float* s, index_t s_row_stride,
                          const TensorView<float, 2>& strided, index_t P, index_t N, SsdTokenScratch& sc) {
  ssd_gather(rows.x, rows.x_stride, P, sc.x.data());
  ssd_gather(rows.Bn, rows.B_stride, N, sc.Bn.data());
  ssd_gather(rows.Cn, rows.C_stride, N, sc.Cn.data());
  for (index_t p = 0; p < P; ++p) sc.u[p] = rows.dt * sc.x[p];
  const float decay = std::exp(rows.dt * A);
  if (s)
    ssd_token(s, s_row_stride, P, N, decay, sc.u.data(), sc.Bn.data(), sc.Cn.data(), sc.y.data());
  else
    ssd_token_strided(strided, decay, sc.u.data(), sc.Bn.data(), sc.Cn.data(), sc.y.data());
  if (rows.z) ssd_gather(rows.z, rows.z_stride, P, sc.z.data());
  ssd_finish(sc.y.data(), sc.x.data(), D, rows.z ? sc.z.data() : nullptr, P);
}

// Work below which a call stays on the calling thread: waking a worker costs a few microseconds,
// about what 64K state elements take to update.
constexpr index_t kSsdMinParallelStateWork = 1 << 16;

inline index_t ssd_grain(index_t work_per_item) {
  return std::max<index_t>(1, kSsdMinParallelStateWork / std::max<index_t>(1, work_per_item));
}

// The recurrent prefill: per (batch, head), every token through ssd_token with the state in a
// contiguous local buffer (so final_state may alias initial_state). Threaded over (b, h).
inline void ssd_recurrent(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options, const SsdDims& dims,
                          const Executor& executor) {
  const auto [B, T, H, P, N, G] = dims;
  const index_t heads_per_group = H / G;
  parallel_for(executor, B * H, ssd_grain(T * P * N), [&](index_t begin, index_t end) {
    SsdTokenScratch scratch(P, N);
    std::vector<float> state(static_cast<std::size_t>(P * N));
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H, g = h / heads_per_group;
      if (in.initial_state.has_value())
        for (index_t p = 0; p < P; ++p)
          ssd_gather(in.initial_state.ptr(b, h, p), in.initial_state.stride(3), N, &state[static_cast<std::size_t>(p * N)]);
      else
        std::fill(state.begin(), state.end(), 0.f);
      const float A = in.A(h), D = in.D.has_value() ? in.D(h) : 0.f;
      for (index_t t = 0; t < T; ++t) {
        const SsdTokenRows rows{in.x.ptr(b, t, h),  in.x.stride(3),
                                in.z.has_value() ? in.z.ptr(b, t, h) : nullptr,
                                in.z.stride(3),     in.Bm.ptr(b, t, g),
                                in.Bm.stride(3),    in.Cm.ptr(b, t, g),
                                in.Cm.stride(3),    ssd_dt(in.dt(b, t, h), in.dt_bias, h, options.dt_softplus)};
        ssd_token_all(rows, A, D, state.data(), N, {}, P, N, scratch);
        ssd_scatter(scratch.y.data(), P, out.y.ptr(b, t, h), out.y.stride(3));
      }
      if (out.final_state.has_value())
        for (index_t p = 0; p < P; ++p)
          ssd_scatter(&state[static_cast<std::size_t>(p * N)], N, out.final_state.ptr(b, h, p), out.final_state.stride(3));
    }
  });
}

}  // namespace detail

// Decode step for one token per batch row: reads state [B,H,P,N], updates it in place and
// writes y [B,H,P]. One fused pass over each head's state; threaded over (batch, head) once
// the state is large enough to pay for waking a thread. options.dt_softplus applies; the
// chunk options are ignored.
inline void ssd_step(const SsdStepInputs& in, const SsdStepOutputs& out, const SsdOptions& options = {},
                     const Executor& executor = serial_executor()) {
  const auto dims = detail::validate_ssd_step("ssd_step", in, out);
  const index_t B = dims.B, H = dims.H, P = dims.P, N = dims.N, heads_per_group = H / dims.G;
  const bool contiguous_state = out.state.stride(3) == 1 || N <= 1;
  auto body = [&](index_t begin, index_t end) {
    detail::SsdTokenScratch scratch(P, N);
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H, g = h / heads_per_group;
      const detail::SsdTokenRows rows{in.x.ptr(b, h),  in.x.stride(2),
                                      in.z.has_value() ? in.z.ptr(b, h) : nullptr,
                                      in.z.stride(2),  in.Bm.ptr(b, g),
                                      in.Bm.stride(2), in.Cm.ptr(b, g),
                                      in.Cm.stride(2), detail::ssd_dt(in.dt(b, h), in.dt_bias, h, options.dt_softplus)};
      const TensorView<float, 2> state = out.state.select(0, b).select(0, h);
      detail::ssd_token_all(rows, in.A(h), in.D.has_value() ? in.D(h) : 0.f,
                            contiguous_state ? state.data() : nullptr, state.stride(0), state, P, N, scratch);
      detail::ssd_scatter(scratch.y.data(), P, out.y.ptr(b, h), out.y.stride(2));
    }
  };
  const index_t items = B * H;
  const index_t tasks = std::min<index_t>(executor.concurrency(), items * P * N / detail::kSsdMinParallelStateWork);
  if (tasks <= 1) {
    body(0, items);
    return;
  }
  // One contiguous block of heads per thread, the same blocks every call: a thread then tends to
  // find its part of the state in its own L2 from the previous token (with finer, dynamically
  // claimed blocks the state migrates between cores and the step runs from L3, 1.3x slower).
  executor.run(tasks, [&](index_t task) { body(items * task / tasks, items * (task + 1) / tasks); });
}

}  // namespace seqmix
