// titans, fast prefill: the chunkwise-parallel exact closed form of the linear memory (default)
// or the recurrent form (the step's kernel, token by token). Threaded over (batch, value head).
//
// The recurrence (reference.hpp) is second order in M: with u_t = 2 theta_t (v_t - M_{t-1}^T k_t)
// (so -theta_t grad_t = k_t u_t^T) and a_t = 1 - alpha_t,
//   S_t = eta_t S_{t-1} + k_t u_t^T,    M_t = a_t M_{t-1} + S_t.
// Inside a chunk that starts from (M0, S0), token j (0-based) sees, by unrolling both,
//   S_j = E_j S0 + sum_{s<=j} e_{j,s} k_s u_s^T
//   M_j = A_j M0 + c_j S0 + sum_{s<=j} w_{j,s} k_s u_s^T
// with the scalar coefficients (no division, so gates of 0 and 1 are safe)
//   A_j = a_j A_{j-1},  E_j = eta_j E_{j-1},  c_j = a_j c_{j-1} + E_j   (A, E = 1 and c = 0 before j = 0)
//   e_{j,s} = eta_j e_{j-1,s},  w_{j,s} = a_j w_{j-1,s} + e_{j,s},      e_{s,s} = w_{s,s} = 1.
// u_j reads M_{j-1}, i.e. the u_s of earlier tokens: the chunk's U [L,V] solves the unit lower
// triangular system
//   U_j + 2 theta_j sum_{s<j} w_{j-1,s} (k_j . k_s) U_s = 2 theta_j (v_j - A_{j-1} M0^T k_j - c_{j-1} S0^T k_j)
// (one triangular solve, as the WY form of the delta rule), then
//   Y = diag(A) Q M0 + diag(c) Q S0 + (W o Q K^T) U           (W lower triangular, diagonal 1)
//   M' = A_{L-1} M0 + c_{L-1} S0 + K^T diag(w_{L-1,.}) U,   S' = E_{L-1} S0 + K^T diag(e_{L-1,.}) U.
// With [M0 | S0] kept as one [K, 2V] matrix, Q [M0|S0] and K [M0|S0] are one GEMM each. This is
// the recurrence itself rearranged, not the paper's mini-batch approximation (which takes every
// gradient of a chunk at the chunk's first memory): it equals reference::titans up to rounding.
// eta = 0 gives e = identity, w_{j,s} = prod_{s<i<=j} a_i, c = 0: the gated delta rule's WY form.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/titans/step.hpp"

namespace seqmix {
namespace detail {

struct TitansChunkWorkspace {
  RowMajorMatrix<float> MS, Q, Kc, Vc, G, P, U, KMS, QMS, Z, Y;
  std::vector<double> a, eta, theta, A_prev, c_prev, A, c, w, e;
  TitansChunkWorkspace(index_t C, index_t K, index_t V)
      : MS(K, 2 * V), Q(C, K), Kc(C, K), Vc(C, V), G(C, C), P(C, C), U(C, V), KMS(C, 2 * V), QMS(C, 2 * V),
        Z(C, 2 * V), Y(C, V) {
    for (auto* x : {&a, &eta, &theta, &A_prev, &c_prev, &A, &c, &w, &e}) x->resize(static_cast<std::size_t>(C));
  }
};

// One (batch, value head) row of the chunked prefill. The workspace is named through `Deferred`
// so that its products compile only where titans is called (docs/compile_time.md).
template <class Deferred>
void titans_chunked_row(const TitansInputs& in, const TitansOutputs& out, const TitansDims& d, index_t chunk, index_t b,
                        index_t hv, deferred_t<TitansChunkWorkspace, Deferred>& ws) {
  const index_t K = d.K, V = d.V, h = hv / d.group();
  for (index_t r = 0; r < K; ++r)
    for (index_t c = 0; c < V; ++c) {
      ws.MS(r, c) = in.initial_memory.has_value() ? in.initial_memory(b, hv, r, c) : 0.f;
      ws.MS(r, V + c) = in.initial_momentum.has_value() ? in.initial_momentum(b, hv, r, c) : 0.f;
    }
  for (index_t t0 = 0; t0 < d.T; t0 += chunk) {
    const index_t L = std::min(chunk, d.T - t0);
    for (index_t j = 0; j < L; ++j) {
      const index_t t = t0 + j;
      for (index_t r = 0; r < K; ++r) ws.Q(j, r) = d.scale * in.q(b, t, h, r), ws.Kc(j, r) = in.k(b, t, h, r);
      for (index_t c = 0; c < V; ++c) ws.Vc(j, c) = in.v(b, t, hv, c);
      ws.a[static_cast<std::size_t>(j)] = 1.0 - double(in.alpha(b, t, hv));
      ws.eta[static_cast<std::size_t>(j)] = in.eta(b, t, hv);
      ws.theta[static_cast<std::size_t>(j)] = in.theta(b, t, hv);
    }
    auto Q = ws.Q.topRows(L);
    auto Kc = ws.Kc.topRows(L);
    auto G = ws.G.topLeftCorner(L, L);
    auto P = ws.P.topLeftCorner(L, L);
    auto U = ws.U.topRows(L);
    ws.KMS.topRows(L).noalias() = Kc * ws.MS;
    ws.QMS.topRows(L).noalias() = Q * ws.MS;
    G.noalias() = Kc * Kc.transpose();
    P.noalias() = Q * Kc.transpose();
    // Coefficients row by row; G becomes the strictly lower system matrix, P the weighted scores.
    double A = 1.0, cc = 0.0, E = 1.0;
    for (index_t j = 0; j < L; ++j) {
      const std::size_t J = static_cast<std::size_t>(j);
      const double aj = ws.a[J], ej = ws.eta[J], two_theta = 2.0 * ws.theta[J];
      ws.A_prev[J] = A, ws.c_prev[J] = cc;
      for (index_t s = 0; s < j; ++s) G(j, s) = static_cast<float>(two_theta * ws.w[static_cast<std::size_t>(s)] * G(j, s));
      for (index_t s = j; s < L; ++s) G(j, s) = 0.f;
      for (index_t s = 0; s < j; ++s) {
        const std::size_t S_ = static_cast<std::size_t>(s);
        ws.e[S_] *= ej;
        ws.w[S_] = aj * ws.w[S_] + ws.e[S_];
      }
      ws.e[J] = 1.0, ws.w[J] = 1.0;
      A *= aj, E *= ej, cc = aj * cc + E;
      ws.A[J] = A, ws.c[J] = cc;
      for (index_t s = 0; s <= j; ++s) P(j, s) *= static_cast<float>(ws.w[static_cast<std::size_t>(s)]);
      for (index_t s = j + 1; s < L; ++s) P(j, s) = 0.f;
      // Right-hand side of row j.
      const float ap = static_cast<float>(ws.A_prev[J]), cp = static_cast<float>(ws.c_prev[J]);
      const float tt = static_cast<float>(two_theta);
      for (index_t col = 0; col < V; ++col)
        U(j, col) = tt * (ws.Vc(j, col) - ap * ws.KMS(j, col) - cp * ws.KMS(j, V + col));
    }
    // Forward substitution and the lower-triangular product written as row axpys: a later
    // token's U (a NaN included) never reaches an earlier row, as in the recurrence (Eigen's
    // blocked triangular kernels multiply the zero half too, which spreads a NaN upwards).
    const index_t us = ws.U.outerStride(), ys = ws.Y.outerStride(), gs = ws.G.outerStride(), ps = ws.P.outerStride();
    float* const u0 = ws.U.data();
    float* const y0 = ws.Y.data();
    using Vec = simd::Batch<float>;
    const index_t vend = simd::vector_end(V);
    for (index_t j = 0; j < L; ++j) {
      float* __restrict uj = u0 + j * us;
      float* __restrict yj = y0 + j * ys;
      const float* grow = ws.G.data() + j * gs;
      const float* prow = ws.P.data() + j * ps;
      // Explicit vectors: GCC's -O2 cost model leaves these runtime-length loops scalar.
      for (index_t col = 0; col < vend; col += simd::kWidth) {
        Vec u = simd::load(uj + col);
        for (index_t s = 0; s < j; ++s) u = simd::fma(Vec(-grow[s]), simd::load(u0 + s * us + col), u);
        simd::store(uj + col, u);
        Vec y(0.f);
        for (index_t s = 0; s <= j; ++s) y = simd::fma(Vec(prow[s]), simd::load(u0 + s * us + col), y);
        simd::store(yj + col, y);
      }
      for (index_t col = vend; col < V; ++col) {
        float u = uj[col];
        for (index_t s = 0; s < j; ++s) u -= grow[s] * u0[s * us + col];
        uj[col] = u;
        float y = 0.f;
        for (index_t s = 0; s <= j; ++s) y += prow[s] * u0[s * us + col];
        yj[col] = y;
      }
    }
    auto Y = ws.Y.topRows(L);
    for (index_t j = 0; j < L; ++j) {
      const float aj = static_cast<float>(ws.A[static_cast<std::size_t>(j)]), cj = static_cast<float>(ws.c[static_cast<std::size_t>(j)]);
      float* dst = out.y.ptr(b, t0 + j, hv);
      const index_t ys = out.y.stride(3);
      for (index_t col = 0; col < V; ++col) dst[col * ys] = Y(j, col) + aj * ws.QMS(j, col) + cj * ws.QMS(j, V + col);
    }
    // State passed on: [M | S] <- [A M + c S | E S] + K^T [diag(w) U | diag(e) U].
    for (index_t s = 0; s < L; ++s) {
      const float ws_ = static_cast<float>(ws.w[static_cast<std::size_t>(s)]);
      const float es_ = static_cast<float>(ws.e[static_cast<std::size_t>(s)]);
      for (index_t col = 0; col < V; ++col) ws.Z(s, col) = ws_ * U(s, col), ws.Z(s, V + col) = es_ * U(s, col);
    }
    const float Af = static_cast<float>(A), cf = static_cast<float>(cc), Ef = static_cast<float>(E);
    ws.MS.leftCols(V) = Af * ws.MS.leftCols(V) + cf * ws.MS.rightCols(V);
    ws.MS.rightCols(V) *= Ef;
    ws.MS.noalias() += Kc.transpose() * ws.Z.topRows(L);
  }
  for (index_t r = 0; r < K; ++r)
    for (index_t c = 0; c < V; ++c) {
      if (out.final_memory.has_value()) out.final_memory(b, hv, r, c) = ws.MS(r, c);
      if (out.final_momentum.has_value()) out.final_momentum(b, hv, r, c) = ws.MS(r, V + c);
    }
}

// One row of the recurrent prefill: the step's token kernel over T tokens.
inline void titans_recurrent_row(const TitansInputs& in, const TitansOutputs& out, const TitansDims& d, index_t b,
                                 index_t hv, TitansToken& s, const TitansOptions& options) {
  const index_t K = d.K, V = d.V, h = hv / d.group();
  s.M.resize(static_cast<std::size_t>(K * V)), s.S.resize(static_cast<std::size_t>(K * V));
  s.lq_sum = -1.0;  // a new row: Moneta's first token sums its initial state
  // No initial memory: zeros, or Memora's uniform point of its simplices.
  const float fresh = options.retention != TitansRetention::softmax_kl ? 0.f
                      : 1.f / static_cast<float>(options.softmax_axis == TitansSoftmaxAxis::key ? K : V);
  for (index_t r = 0; r < K; ++r)
    for (index_t c = 0; c < V; ++c) {
      s.M[static_cast<std::size_t>(r * V + c)] = in.initial_memory.has_value() ? in.initial_memory(b, hv, r, c) : fresh;
      s.S[static_cast<std::size_t>(r * V + c)] = in.initial_momentum.has_value() ? in.initial_momentum(b, hv, r, c) : 0.f;
    }
  for (index_t t = 0; t < d.T; ++t) {
    for (index_t r = 0; r < K; ++r) s.q[static_cast<std::size_t>(r)] = in.q(b, t, h, r), s.k[static_cast<std::size_t>(r)] = in.k(b, t, h, r);
    for (index_t c = 0; c < V; ++c) s.v[static_cast<std::size_t>(c)] = in.v(b, t, hv, c);
    titans_token_any(s, s.M.data(), V, s.S.data(), V, K, V, in.alpha(b, t, hv), in.eta(b, t, hv), in.theta(b, t, hv),
                     d.scale, options, in.huber_delta.has_value() ? in.huber_delta(b, t, hv) : options.huber_delta);
    for (index_t c = 0; c < V; ++c) out.y(b, t, hv, c) = s.y[static_cast<std::size_t>(c)];
  }
  for (index_t r = 0; r < K; ++r)
    for (index_t c = 0; c < V; ++c) {
      if (out.final_memory.has_value()) out.final_memory(b, hv, r, c) = s.M[static_cast<std::size_t>(r * V + c)];
      if (out.final_momentum.has_value()) out.final_momentum(b, hv, r, c) = s.S[static_cast<std::size_t>(r * V + c)];
    }
}

}  // namespace detail

namespace detail {

// One sequence of a prefill as a dense call with B = 1 (a batch row, or a serving call's sequence
// cut out by titans_sequence_call); its HV value heads are units of the parallel work.
struct TitansRowCall {
  TitansInputs in;
  TitansOutputs out;
  TitansDims d;
};

// Runs every (call, value head) row of `calls` (each with B = 1) in one parallel_for, so that a
// packed batch of many short sequences keeps both cores busy; `max_tokens` sizes the chunk workspace.
template <class Deferred>
void titans_run_rows(const std::vector<TitansRowCall>& calls, index_t HV, index_t max_tokens,
                     const TitansOptions& options, const Executor& executor) {
  if (calls.empty()) return;
  const TitansDims& d0 = calls.front().d;
  const index_t rows = static_cast<index_t>(calls.size()) * HV;
  // A Miras loss or retention is not linear in the state: token by token, exact.
  if (options.algorithm == TitansAlgorithm::recurrent || options.loss != TitansLoss::l2 ||
      options.retention != TitansRetention::decay) {
    parallel_for(executor, rows, 1, [&](index_t begin, index_t end) {
      TitansToken s(d0.K, d0.V);
      for (index_t r = begin; r < end; ++r) {
        const TitansRowCall& c = calls[static_cast<std::size_t>(r / HV)];
        titans_recurrent_row(c.in, c.out, c.d, 0, r % HV, s, options);
      }
    });
    return;
  }
  const index_t chunk = std::max<index_t>(1, std::min(options.chunk_size, max_tokens));
  parallel_for(executor, rows, 1, [&](index_t begin, index_t end) {
    deferred_t<TitansChunkWorkspace, Deferred> ws(chunk, d0.K, d0.V);
    for (index_t r = begin; r < end; ++r) {
      const TitansRowCall& c = calls[static_cast<std::size_t>(r / HV)];
      titans_chunked_row<Deferred>(c.in, c.out, c.d, chunk, 0, r % HV, ws);
    }
  });
}

}  // namespace detail

/// Titans (linear memory) prefill: y [B,T,HV,V] and the optional final memory and momentum.
/// options.algorithm chooses the chunkwise-parallel closed form (default) or the recurrent one;
/// both equal reference::titans up to rounding. A Miras loss (options.loss other than l2) or
/// retention (options.retention other than decay) runs the recurrent form, the only exact one.
/// Threaded over (batch, value head) rows. Serving batches (in.batch: packed sequences, state
/// slots, has_initial_state) run every (sequence, value head) row of the call in one parallel
/// loop, each sequence from its own state row; padding sequences (slot -1) are skipped.
// A template only so that the chunk kernel compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void titans(const TitansInputs& in, const TitansOutputs& out, const TitansOptions& options = {},
            const Executor& executor = serial_executor()) {
  const ArgCheck check("titans");
  SequenceMap map;
  const detail::TitansDims d = detail::validate_titans(check, in, out, options, &map);
  if (options.reverse) {
    const auto rev = detail::titans_reversed_call(in, out);
    return titans<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  if (detail::rnn_plain_batch(in.batch)) {
    // Each batch row its own call: rows r = b * HV + hv, as before the serving layout.
    std::vector<detail::TitansRowCall> calls;
    calls.reserve(static_cast<std::size_t>(d.B));
    for (index_t b = 0; b < d.B; ++b) {
      detail::TitansRowCall c{in, out, d};
      // Row b alone: the kernels index batch row 0 of views sliced at b.
      c.in.q = in.q.slice(0, b, 1), c.in.k = in.k.slice(0, b, 1), c.in.v = in.v.slice(0, b, 1);
      c.in.alpha = in.alpha.slice(0, b, 1), c.in.eta = in.eta.slice(0, b, 1), c.in.theta = in.theta.slice(0, b, 1);
      if (in.huber_delta.has_value()) c.in.huber_delta = in.huber_delta.slice(0, b, 1);
      if (in.initial_memory.has_value()) c.in.initial_memory = in.initial_memory.slice(0, b, 1);
      if (in.initial_momentum.has_value()) c.in.initial_momentum = in.initial_momentum.slice(0, b, 1);
      c.out.y = out.y.slice(0, b, 1);
      if (out.final_memory.has_value()) c.out.final_memory = out.final_memory.slice(0, b, 1);
      if (out.final_momentum.has_value()) c.out.final_momentum = out.final_momentum.slice(0, b, 1);
      c.d.B = 1;
      calls.push_back(c);
    }
    return detail::titans_run_rows<Deferred>(calls, d.HV, d.T, options, executor);
  }
  std::vector<detail::TitansRowCall> calls;
  calls.reserve(static_cast<std::size_t>(map.sequences()));
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan s = map[n];
    if (s.state_row < 0) continue;  // padding: nothing read or written
    const auto one = detail::titans_sequence_call(in, out, s);
    detail::TitansDims d1 = d;
    d1.B = 1, d1.T = s.tokens;
    calls.push_back({one.first, one.second, d1});
  }
  detail::titans_run_rows<Deferred>(calls, d.HV, map.max_tokens(), options, executor);
}

}  // namespace seqmix
