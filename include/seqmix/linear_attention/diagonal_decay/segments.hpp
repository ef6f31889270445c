// Time segments of a head's recurrent prefill: the pieces the driver's time split (driver.hpp,
// run_recurrent_segments) is made of. Internal.
//
// The state after token t of tokens that start from S0 is diag(exp(G_t)) S0 + S_t^0, with G_t the
// cumulative floored log-gate from the first token and S_t^0 the state from zero (slice.hpp has
// the same algebra for a caller's slices). A head's tokens cut in segments therefore run in two
// passes. First every segment at once: the first from the head's initial state, each later one
// from zero, keeping its end state S^0 and its log-decay G (summed over its tokens). Then each
// later segment s learns its true start by chaining, S_s = diag(exp(G_{s-1})) S_{s-1} + S^0_{s-1}
// (S_1 the first segment's end), and its outputs gain (scale phi(q_t) exp(G_t))^T S_s (G_{t-1}
// for rwkv6's exclusive readout; the bonus reads only the current token), one product per block of
// tokens; the last segment's end, diag(exp(G)) S_s + S^0, is the head's final state. (Keeping
// the decayed queries from the first pass, made while the rows were in L1, measured no faster
// second pass at gla-1.3b or linear_attention T 8192, and held 32 MiB at the latter.)
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunked.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"

namespace seqmix::detail::la {

// Tokens per GEMM of a segment's correction: 64 rows of decayed queries ([64, K] = 16 KB at
// K = 64) stay in L1 beside the start state they multiply (slice.hpp's kSliceBlock likewise).
constexpr index_t kSegmentBlock = 64;

// out[0..K) += max(g_t, kGateFloor) over tokens [t0, t1) of p (the floor the recurrence applies);
// nothing for an ungated head. A gated head has no feature map, so its Kf is K.
inline void add_log_decay(const HeadProblem& p, index_t t0, index_t t1, float* out) {
  if (!p.gated()) return;
  using simd::Batch;
  const index_t K = p.K(), nv = simd::vector_end(K);
  const Batch<float> floor(kGateFloor);
  for (index_t t = t0; t < t1; ++t) {
    const ConstView<float, 1> g = p.g[t];
    if (g.stride(0) != 1) {  // a scalar gate (stride 0) or strided rows
      for (index_t i = 0; i < K; ++i) out[i] += std::max(g(i), kGateFloor);
      continue;
    }
    const float* row = g.data();
    for (index_t i = 0; i < nv; i += simd::kWidth)
      simd::store(out + i, simd::load(out + i) + xsimd::max(simd::load(row + i), floor));
    for (index_t i = nv; i < K; ++i) out[i] += std::max(row[i], kGateFloor);
  }
}

// row[0..n) *= exp(log_decay[0..n)).
inline void scale_by_decay(const float* log_decay, float* row, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth)
    simd::store(row + i, simd::load(row + i) * simd::exp(simd::load(log_decay + i)));
  for (index_t i = nv; i < n; ++i) row[i] *= std::exp(log_decay[i]);
}

// out[0..Kf) = scale phi(q_t) exp(G_t) for token t of p, G the running log-decay `cumulative`
// [Kf], advanced by token t's gates (before the product; after it for the exclusive readout).
// q_row: K floats for a 16-bit q row.
inline void decayed_query(const HeadProblem& p, index_t t, float* cumulative, float* q_row, float* out) {
  apply_feature_map(p.phi, p.q.row(t, q_row), p.scale, out);  // fp32 rows are read in place
  if (!p.gated()) return;
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  if (!exclusive) add_log_decay(p, t, t + 1, cumulative);
  scale_by_decay(cumulative, out, p.Kf());
  if (exclusive) add_log_decay(p, t, t + 1, cumulative);
}

// A thread's scratch for the second pass: a segment's true start and one block of its correction.
// (the first pass uses cumulative alone).
struct SegmentCorrection {
  RowMatrix start;                  // [Kf, V]
  RowMatrix qd;                     // [kSegmentBlock, Kf]: a block's decayed queries
  RowMatrix read;                   // [kSegmentBlock, V]: what a block's tokens read from start
  AlignedVector<float> cumulative;  // [Kf]: G so far
  AlignedVector<float> q_row;       // [K]: a 16-bit q row widened

  // Sized for heads of Kf x V states and K keys (no-op when they already are).
  void fit(index_t K, index_t Kf, index_t V) {
    start.resize(Kf, V);
    qd.resize(kSegmentBlock, Kf);
    read.resize(kSegmentBlock, V);
    cumulative.resize(static_cast<std::size_t>(Kf));
    q_row.resize(static_cast<std::size_t>(K));
  }
  std::size_t bytes() const {
    return static_cast<std::size_t>(start.size() + qd.size() + read.size()) * sizeof(float) +
           (cumulative.capacity() + q_row.capacity()) * sizeof(float);
  }
};

// start = diag(exp(log_decay)) start + local: a segment's end from its start, its log-decay [Kf]
// and its end state from zero (local, [Kf, V] contiguous).
inline void chain_state(const float* log_decay, const float* local, RowMatrix& start) {
  const index_t V = start.cols();
  for (index_t r = 0; r < start.rows(); ++r) {
    const float d = std::exp(log_decay[r]);
    const simd::Batch<float> decay(d);
    float* row = start.row(r).data();
    const float* add = local + r * V;
    const index_t nv = simd::vector_end(V);
    for (index_t c = 0; c < nv; c += simd::kWidth)
      simd::store(row + c, simd::fma(decay, simd::load(row + c), simd::load(add + c)));
    for (index_t c = nv; c < V; ++c) row[c] = d * row[c] + add[c];
  }
}

// read[j][c0, c0 + NB*kWidth) = sum_r qd[j][r] start[r][c0, ...) for tokens j < NT: the NT*NB
// sums stay in registers (4 x 4 = 16 of the 32 AVX-512 registers) while each row piece of start is
// loaded once for the NT tokens. With Eigen's product of the same [64, K] x [K, V] blocks a
// second-pass task of 2048 tokens (linear_attention, K = V = 64, -O2) took ~260 us, with this
// tile ~230 (one run each, loaded machine).
template <int NT, int NB>
inline void readout_tile(const float* qd, index_t ldq, const float* start, index_t ld, index_t Kf, index_t c0,
                         float* read, index_t ldr) {
  static_assert(NT <= 4 && NB <= 4, "the loops over NT and NB carry #pragma GCC unroll 4");
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> acc[NT][NB];
#pragma GCC unroll 4
  for (int j = 0; j < NT; ++j)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[j][b] = Batch<float>(0.f);
  for (index_t r = 0; r < Kf; ++r) {
    Batch<float> s[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) s[b] = simd::load(start + r * ld + c0 + b * W);
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      const Batch<float> q(qd[j * ldq + r]);
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) acc[j][b] = simd::fma(q, s[b], acc[j][b]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NT; ++j)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) simd::store(read + j * ldr + c0 + b * W, acc[j][b]);
}

// Tokens [j, j + NT) of one block: ws.read's rows = the decayed queries' rows (qd, Kf apart)
// times ws.start, over tiles of NB vectors, the columns past the last whole vector one by one.
template <int NT>
inline void readout_tokens(const float* qd_rows, index_t j, index_t Kf, index_t V, SegmentCorrection& ws) {
  constexpr index_t W = simd::kWidth;
  const float* qd = qd_rows + j * Kf;
  float* read = ws.read.row(j).data();
  const index_t ldq = Kf, ldr = ws.read.cols(), ld = ws.start.cols();
  index_t c = 0;
  for (; c + 4 * W <= V; c += 4 * W) readout_tile<NT, 4>(qd, ldq, ws.start.data(), ld, Kf, c, read, ldr);
  for (; c + W <= V; c += W) readout_tile<NT, 1>(qd, ldq, ws.start.data(), ld, Kf, c, read, ldr);
  for (; c < V; ++c)
    for (int i = 0; i < NT; ++i) {
      float sum = 0.f;
      for (index_t r = 0; r < Kf; ++r) sum += qd[i * ldq + r] * ws.start(r, c);
      read[i * ldr + c] = sum;
    }
}

inline void readout_block(const float* qd_rows, index_t n, index_t Kf, index_t V, SegmentCorrection& ws) {
  index_t j = 0;
  for (; j + 4 <= n; j += 4) readout_tokens<4>(qd_rows, j, Kf, V, ws);
  for (; j < n; ++j) readout_tokens<1>(qd_rows, j, Kf, V, ws);
}

// How far ahead (tokens) the correction asks for the rows it reads (q, gates) and updates (o):
// they lie a token row apart, where the hardware prefetchers stop.
constexpr index_t kReadoutAhead = 16;

// Asks for token t's q and gate rows (to read) and o row (to update) into L2; strided rows are
// left to the hardware.
inline void prefetch_readout_rows(const HeadProblem& p, index_t t) {
  p.q.prefetch(t);
  if (p.gated()) {
    const ConstView<float, 1> g = p.g[t];
    if (g.stride(0) == 1) prefetch_row<false, kAheadLocality>(g.data(), g.size(0));
  }
  const TensorView<float, 1> o = p.o[t];
  if (o.is_last_dim_contiguous()) prefetch_row<true, kAheadLocality>(o.data(), o.size(0));
}

// Adds to tokens [t0, t1) of segment p (its token 0 the segment's first) what they read from the
// segment's true start ws.start [Kf, V]: o_t += (scale phi(q_t) exp(G_t))^T start, G summed from
// token 0 (decayed_query). ws: fit for p.
inline void add_start_readout(const HeadProblem& p, index_t t0, index_t t1, SegmentCorrection& ws) {
  const index_t Kf = p.Kf(), V = p.V();
  float* cumulative = ws.cumulative.data();
  std::fill(cumulative, cumulative + Kf, 0.f);
  add_log_decay(p, 0, t0, cumulative);
  for (index_t t = t0; t < std::min(t1, t0 + kReadoutAhead); ++t) prefetch_readout_rows(p, t);
  for (index_t b0 = t0; b0 < t1; b0 += kSegmentBlock) {
    const index_t n = std::min(kSegmentBlock, t1 - b0);
    for (index_t i = 0; i < n; ++i) {
      if (b0 + i + kReadoutAhead < t1) prefetch_readout_rows(p, b0 + i + kReadoutAhead);
      decayed_query(p, b0 + i, cumulative, ws.q_row.data(), ws.qd.row(i).data());
    }
    readout_block(ws.qd.data(), n, Kf, V, ws);
    for (index_t i = 0; i < n; ++i) {
      const TensorView<float, 1> o = p.o[b0 + i];
      const float* add = ws.read.row(i).data();
      if (o.is_last_dim_contiguous()) {
        simd::axpy(1.f, add, o.data(), V);
        continue;
      }
      for (index_t c = 0; c < V; ++c) o(c) += add[c];
    }
  }
}

}  // namespace seqmix::detail::la
