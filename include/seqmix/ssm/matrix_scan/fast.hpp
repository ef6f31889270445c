// matrix_scan, fast prefill: h_t = A_t h_{t-1} + x_t per (batch row, head) with N x N blocks
// (definition: reference::matrix_scan in reference.hpp).
//
// Kernels are templates on the block size for N = 1, 2, 3, 4, 8 and 16 (fully unrolled; rows of
// a block are contiguous, so the products vectorize), and one strided runtime-N kernel for every
// other size and for views whose blocks are not contiguous. With N a multiple of the vector
// width (16 on AVX-512), a matrix-vector product is W row products reduced by one transposing
// horizontal add (simd::reduce_add_rows) instead of W separate horizontal sums.
//
// Threads (MatrixScanSplit):
//   heads  one task per (batch row, head): the sequential recurrence, N^2 FMAs per token.
//   time   the chunked scan over the matrix monoid (MatrixAffineMonoid): pass 1 scans chunk 0 for
//          good and reduces every other chunk to its map (prod of A: N^3 FMAs per token, local
//          state from zero: N^2), pass 2 applies the maps to the carries serially, pass 3
//          rescans chunks 1.. from their carries. The products cost N times the recurrence, but
//          they have no token-to-token dependency through the state (the recurrence is a chain
//          of dependent dot products, latency bound), so for small N the extra work runs in the
//          latency shadow. Chosen automatically only for N <= kMaxTimeSplitN and at least
//          kMinTimeSplitThreads threads (measured: see docs/operators.md, "matrix_scan").
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/matrix_scan/reference.hpp"

namespace seqmix {
namespace detail {

// Below this chunk length the two extra synchronisations and the serial carry pass show.
constexpr index_t kMinMatrixScanChunk = 1024;
// Largest block for which MatrixScanSplit::automatic uses the time split (see the header comment
// and the benchmark figures in docs/operators.md).
constexpr index_t kMaxTimeSplitN = 4;
// Measured at N = 4 (T = 65536, one thread): reducing a chunk costs about twice scanning it, so
// with p threads the split takes 3 T / (p + 1) scan-times: a gain from 3 threads on, none at 2.
constexpr int kMinTimeSplitThreads = 3;

// One (batch row, head) across time: the block of token t starts at A + t * A_t, and so on.
// Element (i, j) of a block is at A_i * i + A_j * j; h is null when h_all is not wanted.
struct MatrixScanHead {
  const float* A;
  index_t A_t, A_i, A_j;
  const float* x;
  index_t x_t, x_i;
  float* h;
  index_t h_t, h_i;
};

inline MatrixScanHead matrix_scan_head(const MatrixScanInputs& in, const MatrixScanOutputs& out, index_t b,
                                       index_t head) {
  MatrixScanHead s{in.A.data() + b * in.A.stride(0) + head * in.A.stride(2), in.A.stride(1), in.A.stride(3),
                   in.A.stride(4), in.x.data() + b * in.x.stride(0) + head * in.x.stride(2), in.x.stride(1),
                   in.x.stride(3), nullptr, 0, 0};
  if (out.h_all.has_value())
    s.h = out.h_all.data() + b * out.h_all.stride(0) + head * out.h_all.stride(2), s.h_t = out.h_all.stride(1),
    s.h_i = out.h_all.stride(3);
  return s;
}

// The fixed-N kernels need rows of a block contiguous and packed, and unit element strides.
inline bool matrix_scan_packed(const MatrixScanHead& s, index_t N) {
  return (N == 1 || (s.A_j == 1 && s.A_i == N && s.x_i == 1)) && (s.h == nullptr || N == 1 || s.h_i == 1);
}

// out = A h + x for a packed kN x kN block. out must not alias h. The smallest blocks' loops state
// their unrolling: g++ -O2 leaves them rolled, which made a program built at -O2 1.36x slower at
// N = 4.
template <int kN>
inline void matrix_scan_matvec(const float* A, const float* h, const float* x, float* out) {
  constexpr int W = static_cast<int>(simd::kWidth);
  if constexpr (kN % W == 0) {
    constexpr int V = kN / W;
    simd::Batch<float> hv[V];
    for (int v = 0; v < V; ++v) hv[v] = simd::load(h + v * W);
    for (int g = 0; g < kN; g += W) {
      simd::Batch<float> rows[W];  // unrolling this loop measured slower at -O2 (1.37x at N = 16)
      for (int r = 0; r < W; ++r) {
        const float* row = A + (g + r) * kN;
        simd::Batch<float> acc = simd::load(row) * hv[0];
        for (int v = 1; v < V; ++v) acc = simd::fma(simd::load(row + v * W), hv[v], acc);
        rows[r] = acc;
      }
      simd::store(out + g, simd::reduce_add_rows(rows) + simd::load(x + g));
    }
  } else if constexpr (kN <= 4) {
#pragma GCC unroll 4
    for (int i = 0; i < kN; ++i) {
      float s = x[i];
#pragma GCC unroll 4
      for (int j = 0; j < kN; ++j) s += A[i * kN + j] * h[j];
      out[i] = s;
    }
  } else {  // kN = 8 below AVX-512: left to the vectorizer (unrolled it measured 1.4x slower at -O3)
    for (int i = 0; i < kN; ++i) {
      float s = x[i];
      for (int j = 0; j < kN; ++j) s += A[i * kN + j] * h[j];
      out[i] = s;
    }
  }
}

// out = A P for packed kN x kN blocks, row by row (each row of out a sum of rows of P, so the
// inner loop runs along contiguous rows and vectorizes). out must not alias P.
template <int kN>
inline void matrix_scan_matmul(const float* A, const float* P, float* out) {
  constexpr int W = static_cast<int>(simd::kWidth);
  if constexpr (kN % W == 0) {
    constexpr int V = kN / W;
    for (int i = 0; i < kN; ++i) {
      simd::Batch<float> acc[V];
      for (int v = 0; v < V; ++v) acc[v] = simd::Batch<float>(0.f);
      for (int k = 0; k < kN; ++k) {
        const simd::Batch<float> a(A[i * kN + k]);
        for (int v = 0; v < V; ++v) acc[v] = simd::fma(a, simd::load(P + k * kN + v * W), acc[v]);
      }
      for (int v = 0; v < V; ++v) simd::store(out + i * kN + v * W, acc[v]);
    }
    return;
  }
  for (int i = 0; i < kN; ++i) {
    float row[kN] = {};
    for (int k = 0; k < kN; ++k) {
      const float a = A[i * kN + k];
      for (int j = 0; j < kN; ++j) row[j] += a * P[k * kN + j];
    }
    for (int j = 0; j < kN; ++j) out[i * kN + j] = row[j];
  }
}

// Tokens [t0, t1) from `state` (N floats, updated), h_all written if wanted. kN = 0: any N and
// strides. scratch holds N floats.
template <int kN>
void matrix_scan_rows(const MatrixScanHead& s, index_t N, float* state, float* scratch, index_t t0, index_t t1) {
  for (index_t t = t0; t < t1; ++t) {
    const float* A = s.A + t * s.A_t;
    const float* x = s.x + t * s.x_t;
    if constexpr (kN > 0) {
      matrix_scan_matvec<kN>(A, state, x, scratch);
      for (int i = 0; i < kN; ++i) state[i] = scratch[i];
    } else {
      for (index_t i = 0; i < N; ++i) {
        float acc = x[i * s.x_i];
        for (index_t j = 0; j < N; ++j) acc += A[i * s.A_i + j * s.A_j] * state[j];
        scratch[i] = acc;
      }
      std::copy(scratch, scratch + N, state);
    }
    if (s.h != nullptr)
      for (index_t i = 0; i < N; ++i) s.h[t * s.h_t + i * s.h_i] = state[i];
  }
}

// A chunk's product of contracting blocks shrinks geometrically: over thousands of tokens it
// would pass through subnormal floats (each operation ~100x slower) and then vanish, though
// prod * carry still matters where the carry is huge. So the product is kept as prod * 2^-scale:
// whenever its largest entry falls below 2^-kProdRescaleBits it is multiplied by
// 2^kProdRescaleBits (exact) and scale grows by that much.
constexpr int kProdRescaleBits = 64;

// The largest |prod[i]|, NaN entries passed over (std::max's rule). Written with vectors: the
// time split runs it after every token's product, and g++ -O2 does not vectorize the plain
// loop's reduction (it made the split 2.3x slower than at -O3 at N = 16).
inline float matrix_scan_abs_peak(const float* prod, index_t count) {
  simd::Batch<float> peaks(0.f);
  const index_t vectors = simd::vector_end(count);
  for (index_t i = 0; i < vectors; i += simd::kWidth) {
    const simd::Batch<float> a = simd::abs(simd::load(prod + i));
    peaks = xsimd::select(peaks < a, a, peaks);
  }
  float peak = simd::reduce_max(peaks);
  for (index_t i = vectors; i < count; ++i) peak = std::max(peak, std::fabs(prod[i]));
  return peak;
}

inline void matrix_scan_rescale(float* prod, index_t count, int* scale) {
  const float peak = matrix_scan_abs_peak(prod, count);
  if (peak == 0.f || !(peak < std::ldexp(1.f, -kProdRescaleBits))) return;
  const float factor = std::ldexp(1.f, kProdRescaleBits);
  for (index_t i = 0; i < count; ++i) prod[i] *= factor;
  *scale += kProdRescaleBits;
}

// Reduces tokens [t0, t1) to the map h -> 2^-scale prod h + local. scratch holds N * N + N floats.
template <int kN>
void matrix_scan_reduce(const MatrixScanHead& s, index_t N, float* prod, int* scale, float* local, float* scratch,
                        index_t t0, index_t t1) {
  *scale = 0;
  std::fill(prod, prod + N * N, 0.f);
  for (index_t i = 0; i < N; ++i) prod[i * N + i] = 1.f;
  std::fill(local, local + N, 0.f);
  float* next = scratch;  // N * N
  for (index_t t = t0; t < t1; ++t) {
    const float* A = s.A + t * s.A_t;
    if constexpr (kN > 0) {
      matrix_scan_matmul<kN>(A, prod, next);
      std::copy(next, next + kN * kN, prod);
      matrix_scan_rescale(prod, kN * kN, scale);
    } else {
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < N; ++j) {
          float acc = 0.f;
          for (index_t k = 0; k < N; ++k) acc += A[i * s.A_i + k * s.A_j] * prod[k * N + j];
          next[i * N + j] = acc;
        }
      std::copy(next, next + N * N, prod);
      matrix_scan_rescale(prod, N * N, scale);
    }
  }
  // The local state: the recurrence from zero (its own pass keeps the matmul loop free of the
  // matvec's dependency chain).
  matrix_scan_rows<kN>(MatrixScanHead{s.A, s.A_t, s.A_i, s.A_j, s.x, s.x_t, s.x_i, nullptr, 0, 0}, N, local,
                       scratch, t0, t1);
}

struct MatrixScanArgs {
  const MatrixScanInputs& in;
  const MatrixScanOutputs& out;
  index_t B, T, H, N;

  void load_state(index_t b, index_t head, float* state) const {
    for (index_t i = 0; i < N; ++i) state[i] = in.h0.has_value() ? in.h0(b, head, i) : 0.f;
  }
  void store_last(index_t b, index_t head, const float* state) const {
    if (out.h_last.has_value())
      for (index_t i = 0; i < N; ++i) out.h_last(b, head, i) = state[i];
  }
};

template <int kN>
void matrix_scan_heads(const MatrixScanArgs& a, const Executor& executor) {
  parallel_for(executor, a.B * a.H, 1, [&](index_t p0, index_t p1) {
    AlignedVector<float> state(static_cast<std::size_t>(2 * a.N));
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / a.H, head = p % a.H;
      a.load_state(b, head, state.data());
      const MatrixScanHead s = matrix_scan_head(a.in, a.out, b, head);
      if (kN > 0 && !matrix_scan_packed(s, a.N))
        matrix_scan_rows<0>(s, a.N, state.data(), state.data() + a.N, 0, a.T);
      else
        matrix_scan_rows<kN>(s, a.N, state.data(), state.data() + a.N, 0, a.T);
      a.store_last(b, head, state.data());
    }
  });
}

template <int kN>
void matrix_scan_time(const MatrixScanArgs& a, index_t chunk_size, const Executor& executor) {
  const index_t T = a.T, N = a.N, P = a.B * a.H;
  std::vector<index_t> bounds;
  if (chunk_size > 0) {
    for (index_t t = 0; t < T; t += chunk_size) bounds.push_back(t);
  } else {
    const index_t chunks = executor.concurrency() + 1;  // pass 1 and pass 3 each keep every thread busy
    for (index_t c = 0; c < chunks; ++c) bounds.push_back(T * c / chunks);
  }
  if (bounds.empty()) bounds.push_back(0);
  bounds.push_back(T);
  const index_t chunks = static_cast<index_t>(bounds.size()) - 1;
  if (chunks < 2) return matrix_scan_heads<kN>(a, executor);
  const bool rescan = a.out.h_all.has_value();
  // carry[c][p]: the state entering chunk c of (batch row, head) p; pass 1 leaves chunk c-1's
  // local state there. prod[c][p]: the product of chunk c's blocks.
  AlignedVector<float> carry(static_cast<std::size_t>((chunks + 1) * P * N));
  AlignedVector<float> prod(static_cast<std::size_t>(chunks * P * N * N));
  std::vector<int> scale(static_cast<std::size_t>(chunks * P));  // prod[c][p] is 2^-scale[c][p] times that
  const auto head_of = [&](index_t p) { return matrix_scan_head(a.in, a.out, p / a.H, p % a.H); };
  const auto kernel_n = [&](const MatrixScanHead& s) { return kN > 0 && matrix_scan_packed(s, N); };
  const index_t reduced = rescan ? chunks - 1 : chunks;  // a rescanned last chunk needs no map
  executor.run(reduced, [&](index_t c) {
    AlignedVector<float> scratch(static_cast<std::size_t>(N * N + N));
    for (index_t p = 0; p < P; ++p) {
      const MatrixScanHead s = head_of(p);
      float* local = carry.data() + ((c + 1) * P + p) * N;
      if (c == 0) {
        a.load_state(p / a.H, p % a.H, local);
        if (kernel_n(s))
          matrix_scan_rows<kN>(s, N, local, scratch.data(), bounds[0], bounds[1]);
        else
          matrix_scan_rows<0>(s, N, local, scratch.data(), bounds[0], bounds[1]);
      } else {
        float* pr = prod.data() + (c * P + p) * N * N;
        if (kernel_n(s))
          matrix_scan_reduce<kN>(s, N, pr, &scale[c * P + p], local, scratch.data(), bounds[c], bounds[c + 1]);
        else
          matrix_scan_reduce<0>(s, N, pr, &scale[c * P + p], local, scratch.data(), bounds[c], bounds[c + 1]);
      }
    }
  });
  // Pass 2: carry[c+1] = 2^-scale prod[c] carry[c] + local[c], serially over chunks (in double,
  // so the unscaled product neither overflows nor underflows before the scale is applied).
  for (index_t c = 1; c < reduced; ++c)
    for (index_t p = 0; p < P; ++p) {
      const float* pr = prod.data() + (c * P + p) * N * N;
      const float* in = carry.data() + (c * P + p) * N;
      float* out = carry.data() + ((c + 1) * P + p) * N;
      for (index_t i = 0; i < N; ++i) {
        double acc = 0.0;
        for (index_t j = 0; j < N; ++j) acc += double(pr[i * N + j]) * in[j];
        out[i] = static_cast<float>(std::ldexp(acc, -scale[c * P + p]) + out[i]);
      }
    }
  if (rescan) {
    executor.run(chunks - 1, [&](index_t task) {
      const index_t c = task + 1;  // rescans from carry[c] in place; no other task reads it
      AlignedVector<float> scratch(static_cast<std::size_t>(N));
      for (index_t p = 0; p < P; ++p) {
        const MatrixScanHead s = head_of(p);
        float* state = carry.data() + (c * P + p) * N;
        if (kernel_n(s))
          matrix_scan_rows<kN>(s, N, state, scratch.data(), bounds[c], bounds[c + 1]);
        else
          matrix_scan_rows<0>(s, N, state, scratch.data(), bounds[c], bounds[c + 1]);
      }
    });
  }
  const float* last = carry.data() + (rescan ? chunks - 1 : chunks) * P * N;
  for (index_t p = 0; p < P; ++p) a.store_last(p / a.H, p % a.H, last + p * N);
}

inline MatrixScanSplit choose_matrix_split(MatrixScanSplit requested, index_t heads, index_t T, index_t N,
                                           int threads) {
  if (requested != MatrixScanSplit::automatic) return requested;
  if (threads < kMinTimeSplitThreads || heads >= threads || N > kMaxTimeSplitN ||
      T < (threads + 1) * kMinMatrixScanChunk)
    return MatrixScanSplit::heads;
  return MatrixScanSplit::time;
}

// Calls f(std::integral_constant<int, kN>) with kN = N for the block sizes that have unrolled
// kernels, kN = 0 (any N, strided) otherwise: the one place that lists them.
template <class F>
void with_block_size(index_t N, F&& f) {
  switch (N) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    case 4: return f(std::integral_constant<int, 4>());
    case 8: return f(std::integral_constant<int, 8>());
    case 16: return f(std::integral_constant<int, 16>());
    default: return f(std::integral_constant<int, 0>());
  }
}

template <int kN>
void matrix_scan_dispatch(const MatrixScanArgs& a, const MatrixScanOptions& options, const Executor& executor) {
  if (choose_matrix_split(options.split, a.B * a.H, a.T, a.N, executor.concurrency()) == MatrixScanSplit::time)
    matrix_scan_time<kN>(a, options.chunk_size, executor);
  else
    matrix_scan_heads<kN>(a, executor);
}

}  // namespace detail

/// Fast prefill: same arguments and results as reference::matrix_scan (float arithmetic, so equal
/// up to rounding; the time split regroups the products). Vectorized kernels for N = 1, 2, 3, 4,
/// 8, 16 with packed blocks (A's last two strides N and 1, x's and h_all's last stride 1), a
/// scalar kernel otherwise. Scratch: O(N) floats per task; the time split adds (N^2 + N) floats
/// per chunk and head. h_last may be the very h0 view. Non-finite values: the time split forms
/// prod * carry, so where the sequential recurrence overflows it may give NaN instead of inf.
inline void matrix_scan(const MatrixScanInputs& in, const MatrixScanOutputs& out, const MatrixScanOptions& options = {},
                        const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call(in, out);
    return matrix_scan(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto [B, T, H, N] = detail::validate_matrix_scan("matrix_scan", in, out, options);
  const detail::MatrixScanArgs args{in, out, B, T, H, N};
  detail::with_block_size(N, [&](auto kN) { detail::matrix_scan_dispatch<decltype(kN)::value>(args, options, executor); });
}

}  // namespace seqmix
