// ssd, decode step and recurrent form: the state update of one token, fused into one pass over
// the [P,N] state of a head (decay, rank-1 update and the C read-out together, vectorized over
// N), so the state is read and written exactly once per token. The step is memory-bound on the
// state (B*H*P*N*4 bytes read and written per token); the same kernel, applied T times with the
// state kept in a local buffer, is the recurrent prefill (detail::ssd_recurrent) that
// seqmix::ssd picks for short inputs.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "seqmix/core/half.hpp"
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

// A row of 16-bit storage (bf16 / f16) widened into a contiguous fp32 buffer: how the recurrent
// form and the step load x, Bm and Cm stored as 16-bit, one token's rows at a time.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void ssd_gather(const H* src, index_t stride, index_t n, float* dst) noexcept {
  if (stride == 1 || n <= 1) {
    convert(src, dst, n);  // vectorized
    return;
  }
  for (index_t i = 0; i < n; ++i) dst[i] = src[i * stride].to_float();
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

// The contiguous rows of one token of one head that the recurrent kernels work on: x, u = dt*x,
// z and y [P]; Bn and Cn [N].
struct SsdTokenBuffers {
  float *x, *u, *z, *y, *Bn, *Cn;
};

// Heap scratch for the buffers, allocated once per task of the recurrent prefill (or once per
// thread for a step with heads larger than SsdStackScratch holds).
struct SsdTokenScratch {
  std::vector<float> x, u, z, y, Bn, Cn;
  SsdTokenScratch() = default;
  SsdTokenScratch(index_t P, index_t N) { fit(P, N); }
  void fit(index_t P, index_t N) {
    const auto p = static_cast<std::size_t>(P), n = static_cast<std::size_t>(N);
    if (x.size() < p) x.resize(p), u.resize(p), z.resize(p), y.resize(p);
    if (Bn.size() < n) Bn.resize(n), Cn.resize(n);
  }
  SsdTokenBuffers buffers() { return {x.data(), u.data(), z.data(), y.data(), Bn.data(), Cn.data()}; }
};

// The step's buffers on the stack (6 KiB) for P, N <= 256 (Mamba-2 uses P = 64, N = 128): no
// allocation at all, on whichever thread runs the block.
constexpr index_t kSsdStackRow = 256;
struct SsdStackScratch {
  alignas(64) float x[kSsdStackRow], u[kSsdStackRow], z[kSsdStackRow], y[kSsdStackRow];
  alignas(64) float Bn[kSsdStackRow], Cn[kSsdStackRow];
  SsdTokenBuffers buffers() { return {x, u, z, y, Bn, Cn}; }
};

// A larger head's step buffers: per thread, grown on its first step and reused after.
inline SsdTokenBuffers ssd_thread_buffers(index_t P, index_t N) {
  thread_local SsdTokenScratch scratch;
  scratch.fit(P, N);
  return scratch.buffers();
}

// The token-major views of one (batch, head) at one token, as the recurrent kernels read them;
// E is the storage type of x, Bm and Cm (float, bf16 or f16), widened by ssd_gather.
template <class E>
struct SsdTokenRows {
  const E* x;
  index_t x_stride;  // along P
  const float* z;    // nullptr when there is no gate
  index_t z_stride;
  const E* Bn;
  index_t B_stride;  // along N
  const E* Cn;
  index_t C_stride;
  float dt;  // after bias and softplus
};

// Gathers one token's rows, updates the state and leaves the finished outputs (D and z applied)
// in sc.y. The state is `s` (rows s_row_stride apart, N contiguous) or, when s is null, the
// strided view `strided`.
template <class E>
void ssd_token_all(const SsdTokenRows<E>& rows, float A, float D, float* s, index_t s_row_stride,
                   const TensorView<float, 2>& strided, index_t P, index_t N, const SsdTokenBuffers& sc) {
  ssd_gather(rows.x, rows.x_stride, P, sc.x);
  ssd_gather(rows.Bn, rows.B_stride, N, sc.Bn);
  ssd_gather(rows.Cn, rows.C_stride, N, sc.Cn);
  for (index_t p = 0; p < P; ++p) sc.u[p] = rows.dt * sc.x[p];
  const float decay = std::exp(rows.dt * A);
  if (s)
    ssd_token(s, s_row_stride, P, N, decay, sc.u, sc.Bn, sc.Cn, sc.y);
  else
    ssd_token_strided(strided, decay, sc.u, sc.Bn, sc.Cn, sc.y);
  if (rows.z) ssd_gather(rows.z, rows.z_stride, P, sc.z);
  ssd_finish(sc.y, sc.x, D, rows.z ? sc.z : nullptr, P);
}

// Work below which a call stays on the calling thread: waking a worker costs a few microseconds,
// about what 64K state elements take to update.
constexpr index_t kSsdMinParallelStateWork = 1 << 16;

inline index_t ssd_grain(index_t work_per_item) {
  return std::max<index_t>(1, kSsdMinParallelStateWork / std::max<index_t>(1, work_per_item));
}

// The sequences of a call that have work, longest first (padding sequences dropped). Items are
// (sequence, head) pairs numbered head-major over this order, item = h * count + rank: every
// contiguous block of items parallel_for hands out then holds a similar mix of long and short
// sequences, so the blocks cost about the same.
inline std::vector<SequenceSpan> ssd_sequences(const SequenceMap& map) {
  std::vector<SequenceSpan> seqs;
  seqs.reserve(static_cast<std::size_t>(map.sequences()));
  for (index_t n = 0; n < map.sequences(); ++n)
    if (map[n].state_row >= 0) seqs.push_back(map[n]);
  std::stable_sort(seqs.begin(), seqs.end(),
                   [](const SequenceSpan& a, const SequenceSpan& b) { return a.tokens > b.tokens; });
  return seqs;
}

inline index_t ssd_total_tokens(const std::vector<SequenceSpan>& seqs) {
  index_t total = 0;
  for (const SequenceSpan& s : seqs) total += s.tokens;
  return total;
}

// The recurrent prefill: per (sequence, head), every token through ssd_token with the state in a
// contiguous local buffer (so final_state may alias initial_state), copied out to token_states
// after each token when asked. Threaded over (sequence, head).
template <class E>
void ssd_recurrent(const SsdInputsOf<E>& in, const SsdOutputs& out, const SsdOptions& options, const SsdDims& dims,
                   const SequenceMap& map, const Executor& executor) {
  const index_t H = dims.H, P = dims.P, N = dims.N, heads_per_group = H / dims.G;
  const std::vector<SequenceSpan> seqs = ssd_sequences(map);
  const index_t count = static_cast<index_t>(seqs.size());
  if (count == 0) return;
  const index_t mean_tokens = std::max<index_t>(1, ssd_total_tokens(seqs) / count);
  parallel_for(executor, count * H, ssd_grain(mean_tokens * P * N), [&](index_t begin, index_t end) {
    SsdTokenScratch heap(P, N);
    const SsdTokenBuffers scratch = heap.buffers();
    std::vector<float> state(static_cast<std::size_t>(P * N));
    for (index_t item = begin; item < end; ++item) {
      const SequenceSpan& seq = seqs[static_cast<std::size_t>(item % count)];
      const index_t b = seq.batch_row, h = item / count, g = h / heads_per_group;
      if (seq.read_state)
        for (index_t p = 0; p < P; ++p)
          ssd_gather(in.initial_state.ptr(seq.state_row, h, p), in.initial_state.stride(3), N,
                     &state[static_cast<std::size_t>(p * N)]);
      else
        std::fill(state.begin(), state.end(), 0.f);
      const float A = in.A(h), D = in.D.has_value() ? in.D(h) : 0.f;
      for (index_t t = seq.token_begin; t < seq.token_begin + seq.tokens; ++t) {
        const SsdTokenRows<E> rows{in.x.ptr(b, t, h),  in.x.stride(3),
                                   in.z.has_value() ? in.z.ptr(b, t, h) : nullptr,
                                   in.z.stride(3),     in.Bm.ptr(b, t, g),
                                   in.Bm.stride(3),    in.Cm.ptr(b, t, g),
                                   in.Cm.stride(3),    ssd_dt(in.dt(b, t, h), in.dt_bias, h, options.dt_softplus)};
        ssd_token_all(rows, A, D, state.data(), N, {}, P, N, scratch);
        ssd_scatter(scratch.y, P, out.y.ptr(b, t, h), out.y.stride(3));
        if (out.token_states.has_value())
          for (index_t p = 0; p < P; ++p)
            ssd_scatter(&state[static_cast<std::size_t>(p * N)], N, out.token_states.ptr(b, t, h, p),
                        out.token_states.stride(4));
      }
      if (out.final_state.has_value())
        for (index_t p = 0; p < P; ++p)
          ssd_scatter(&state[static_cast<std::size_t>(p * N)], N, out.final_state.ptr(seq.state_row, h, p),
                      out.final_state.stride(3));
    }
  });
}

// The step on x, Bm and Cm stored as E (float, bf16, f16): see seqmix::ssd_step.
template <class E>
void ssd_step_of(const SsdStepInputsOf<E>& in, const SsdStepOutputs& out, const SsdOptions& options,
                 const Executor& executor) {
  static const ArgCheck check("ssd_step");
  const auto call = validate_ssd_step(check, in, out);
  const index_t B = call.dims.B, H = call.dims.H, P = call.dims.P, N = call.dims.N, heads_per_group = H / call.dims.G;
  const bool contiguous_state = out.state.stride(3) == 1 || N <= 1;
  auto body = [&](index_t begin, index_t end) {
    SsdStackScratch stack;
    const SsdTokenBuffers scratch =
        P <= kSsdStackRow && N <= kSsdStackRow ? stack.buffers() : ssd_thread_buffers(P, N);
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H, g = h / heads_per_group;
      const SequenceSpan seq = call.map[b];
      if (seq.state_row < 0) continue;  // padding row
      const TensorView<float, 2> state = out.state.select(0, seq.state_row).select(0, h);
      if (!seq.read_state)
        for (index_t p = 0; p < P; ++p)
          for (index_t n = 0; n < N; ++n) state(p, n) = 0.f;
      const SsdTokenRows<E> rows{in.x.ptr(b, h),  in.x.stride(2),
                                 in.z.has_value() ? in.z.ptr(b, h) : nullptr,
                                 in.z.stride(2),  in.Bm.ptr(b, g),
                                 in.Bm.stride(2), in.Cm.ptr(b, g),
                                 in.Cm.stride(2), ssd_dt(in.dt(b, h), in.dt_bias, h, options.dt_softplus)};
      ssd_token_all(rows, in.A(h), in.D.has_value() ? in.D(h) : 0.f, contiguous_state ? state.data() : nullptr,
                    state.stride(0), state, P, N, scratch);
      ssd_scatter(scratch.y, P, out.y.ptr(b, h), out.y.stride(2));
    }
  };
  const index_t items = B * H;
  const index_t tasks = std::min<index_t>(executor.concurrency(), items * P * N / kSsdMinParallelStateWork);
  if (tasks <= 1) {
    body(0, items);
    return;
  }
  // One contiguous block of heads per thread, the same blocks every call: a thread then tends to
  // find its part of the state in its own L2 from the previous token (with finer, dynamically
  // claimed blocks the state migrates between cores and the step runs from L3, 1.3x slower).
  executor.run(tasks, [&](index_t task) { body(items * task / tasks, items * (task + 1) / tasks); });
}

}  // namespace detail

/// Decode step for one token per batch row: reads the state, updates it in place and writes
/// y [B,H,P]. Without batch.state_indices state is [B,H,P,N]; with it, state is the caller's pool
/// [S,H,P,N], row b uses pool row state_indices[b] in place (-1: padding, y row and state
/// untouched) and has_initial_state[b] false zeroes that row first. One fused pass over each
/// head's state; threaded over (batch, head) once the state is large enough to pay for waking a
/// thread. No heap allocation for P, N <= 256 (stack buffers); larger heads allocate on a
/// thread's first step only (thread-local scratch).
/// options.dt_softplus applies; the chunk options are ignored.
inline void ssd_step(const SsdStepInputs& in, const SsdStepOutputs& out, const SsdOptions& options = {},
                     const Executor& executor = serial_executor()) {
  detail::ssd_step_of(in, out, options, executor);
}

/// The same on x, Bm and Cm stored as seqmix::bf16 or seqmix::f16 (dt, A, D, z, dt_bias, the
/// state and y stay fp32): each token's rows are widened as they are loaded.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void ssd_step(const SsdStepInputsOf<H>& in, const SsdStepOutputs& out, const SsdOptions& options = {},
              const Executor& executor = serial_executor()) {
  detail::ssd_step_of(in, out, options, executor);
}

}  // namespace seqmix
