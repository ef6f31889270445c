// The chunkwise-parallel form shared by the family (README.md in the parent folder derives it).
// Internal.
//
// Per head, tokens are cut into chunks of C. With Bk_i = sum_{s<=i} g_s the within-chunk
// cumulative log-decay of key i (per channel) and Bq_i the query's (Bk_i for an inclusive
// readout, Bk_{i-1} for rwkv6's exclusive one), one chunk does
//   O   = (Q * exp(Bq)) S                                   inter-chunk: the carried state
//   A   = [sum_k Q_ik K_jk exp(Bq_ik - Bk_jk)]_{j<=i}       intra-chunk scores (j<i: rwkv6,
//   O  += A V                                                whose diagonal is q.(u*k))
//   S   = diag(exp(Bk_last)) S + (K * exp(Bk_last - Bk))^T V   state passing
// Every exponent above is <= 0 except inside A, which is computed in a safe way:
//  - scalar gates: A = (Q K^T) * exp(bq_i - bk_j), an exp only where j <= i;
//  - channel gates whose decay over the chunk is at most kAnchorRange: one GEMM on
//    Q*exp(Bq - m) and K*exp(m - Bk) with m half way, so every factor stays within
//    exp(+-kAnchorRange/2);
//  - stronger decays: sub-chunks of kSubChunk. Block (I, J<I) anchors at r = first(I) - 1, which
//    makes both exp(Bq_i - Bk_r) and exp(Bk_r - Bk_j) <= 1; diagonal blocks take the exp of the
//    exact (non-positive) difference for each pair.
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"

namespace seqmix::detail::la {

// 60: with the anchor half way, factors stay within exp(+-30) ~ 1e13, so even masked-out
// products of O(1) inputs are far from fp32 overflow (3e38) and kept ones from underflow.
constexpr float kAnchorRange = 60.f;
// A chunk whose cumulative log-decay falls below -kPrefixRange runs as pieces of decay at most
// kPieceRange each (driver.hpp, ChunkKernel::run_in_pieces): fp32 prefix sums of magnitude
// kPrefixRange + 128 still resolve a difference to ~3e-5, twice that no longer meets the 1e-4
// tolerance of the chunked forms.
constexpr float kPrefixRange = 256.f;
constexpr float kPieceRange = 128.f;
// 16: the diagonal blocks cost C*16/2 pairwise exps; off-diagonal blocks stay GEMMs.
constexpr index_t kSubChunk = 16;

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVector = Eigen::Matrix<float, 1, Eigen::Dynamic>;

// Per-thread scratch of the chunked form, allocated once per parallel block (never per chunk).
struct ChunkWorkspace {
  ChunkWorkspace(index_t C, index_t K, index_t Kf, index_t Vp)
      : Q(C, Kf), Kc(C, Kf), QD(C, Kf), KD(C, Kf), Vc(C, Vp), O(C, Vp), A(C, C), Bq(C, K), Bk(C, K),
        m(K), bonus(C) {}
  RowMatrix Q, Kc;     // [C,Kf] phi(q)*scale, phi(k)
  RowMatrix QD, KD;    // [C,Kf] decayed copies (inter-chunk, anchored intra, state passing)
  RowMatrix Vc, O;     // [C,Vp] values (+ ones column), outputs
  RowMatrix A;         // [C,C] intra-chunk scores
  RowMatrix Bq, Bk;    // [C,K] cumulative log-decays (column 0 only for scalar gates)
  RowVector m;         // [K] anchor
  RowVector bonus;     // [C] rwkv6 diagonal
  chunkwise::ProductScratch finite_values;  // add_lower_product's scratch (non-finite values only)
};

// The chunk loop itself is seqmix::chunkwise's engine (core/chunkwise/engine.hpp); driver.hpp maps its
// hooks onto the steps below.

// Loads chunk [t0, t0+L): features, values, cumulative decays relative to the chunk start.
inline void load_chunk(const HeadProblem& p, index_t t0, index_t L, ChunkWorkspace& ws) {
  for (index_t i = 0; i < L; ++i) {
    apply_feature_map(p.phi, p.q[t0 + i], p.scale, ws.Q.row(i).data());
    apply_feature_map(p.phi, p.k[t0 + i], 1.f, ws.Kc.row(i).data());
    load_value_row(p, t0 + i, ws.Vc.row(i).data());
  }
  if (p.gated()) {
    const index_t n = p.scalar_gate ? 1 : p.K();
    for (index_t i = 0; i < L; ++i) {
      float* bk = ws.Bk.row(i).data();
      const float* prev = i > 0 ? ws.Bk.row(i - 1).data() : nullptr;
      for (index_t c = 0; c < n; ++c) {
        const float g = std::max(p.g(t0 + i, c), kGateFloor);
        bk[c] = prev ? prev[c] + g : g;
      }
      float* bq = ws.Bq.row(i).data();
      for (index_t c = 0; c < n; ++c)
        bq[c] = p.readout == Readout::inclusive ? bk[c] : (prev ? prev[c] : 0.f);
    }
  }
  if (p.readout == Readout::exclusive_bonus) {
    for (index_t i = 0; i < L; ++i) {
      float b = 0.f;
      for (index_t c = 0; c < p.K(); ++c) b += ws.Q(i, c) * p.u(c) * ws.Kc(i, c);
      ws.bonus(i) = b;
    }
  }
}

// O = (Q * exp(Bq)) S: what the tokens of the chunk read from the state carried into it.
inline void chunk_inter(const HeadProblem& p, index_t L, const RowMatrix& S, ChunkWorkspace& ws) {
  auto O = ws.O.topRows(L);
  if (!p.gated()) {
    O.noalias() = ws.Q.topRows(L) * S;
  } else if (p.scalar_gate) {
    O.noalias() = ws.Q.topRows(L) * S;
    O.array().colwise() *= ws.Bq.col(0).head(L).array().exp();
  } else {
    ws.QD.topRows(L).array() = ws.Q.topRows(L).array() * ws.Bq.topRows(L).array().exp();
    O.noalias() = ws.QD.topRows(L) * S;
  }
}

// One score sum_k Q_ik K_jk exp(Bq_ik - Bk_jk), for j <= i (so the exponent is <= 0).
inline float direct_score(const ChunkWorkspace& ws, index_t i, index_t j, index_t K) {
  using simd::Batch;
  const float *q = ws.Q.row(i).data(), *k = ws.Kc.row(j).data();
  const float *bq = ws.Bq.row(i).data(), *bk = ws.Bk.row(j).data();
  Batch<float> acc(0.f);
  const index_t kv = simd::vector_end(K);
  for (index_t c = 0; c < kv; c += simd::kWidth) {
    const Batch<float> decay = simd::exp(simd::load(bq + c) - simd::load(bk + c));
    acc = simd::fma(simd::load(q + c) * simd::load(k + c), decay, acc);
  }
  float sum = simd::reduce_add(acc);
  for (index_t c = kv; c < K; ++c) sum += q[c] * k[c] * std::exp(bq[c] - bk[c]);
  return sum;
}

// Channel gates, strong decay: sub-chunked scores (see the header comment).
inline void intra_channel_subchunked(const HeadProblem& p, index_t L, ChunkWorkspace& ws) {
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  ws.A.topLeftCorner(L, L).setZero();
  for (index_t i0 = 0; i0 < L; i0 += kSubChunk) {
    const index_t n = std::min(kSubChunk, L - i0);
    if (i0 > 0) {
      const auto anchor = ws.Bk.row(i0 - 1);
      ws.QD.middleRows(i0, n).array() =
          ws.Q.middleRows(i0, n).array() * (ws.Bq.middleRows(i0, n).rowwise() - anchor).array().exp();
      ws.KD.topRows(i0).array() =
          ws.Kc.topRows(i0).array() * ((-ws.Bk.topRows(i0)).rowwise() + anchor).array().exp();
      ws.A.block(i0, 0, n, i0).noalias() = ws.QD.middleRows(i0, n) * ws.KD.topRows(i0).transpose();
    }
    for (index_t i = i0; i < i0 + n; ++i)
      for (index_t j = i0; j < (exclusive ? i : i + 1); ++j) ws.A(i, j) = direct_score(ws, i, j, p.K());
  }
}

// Channel gates, moderate decay: one GEMM around the half-way anchor m.
inline void intra_channel_anchored(index_t L, ChunkWorkspace& ws) {
  ws.m = 0.5f * ws.Bk.row(L - 1);
  ws.QD.topRows(L).array() = ws.Q.topRows(L).array() * (ws.Bq.topRows(L).rowwise() - ws.m).array().exp();
  ws.KD.topRows(L).array() = ws.Kc.topRows(L).array() * ((-ws.Bk.topRows(L)).rowwise() + ws.m).array().exp();
  ws.A.topLeftCorner(L, L).noalias() = ws.QD.topRows(L) * ws.KD.topRows(L).transpose();
}

// A = intra-chunk scores, causally masked; then O += A V.
inline void chunk_intra(const HeadProblem& p, index_t L, ChunkWorkspace& ws) {
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  auto A = ws.A.topLeftCorner(L, L);
  if (p.gated() && !p.scalar_gate) {
    const float range = -ws.Bk.row(L - 1).minCoeff();
    if (range <= kAnchorRange)
      intra_channel_anchored(L, ws);
    else
      intra_channel_subchunked(p, L, ws);
  } else {
    A.noalias() = ws.Q.topRows(L) * ws.Kc.topRows(L).transpose();
    if (p.gated()) {
      for (index_t i = 0; i < L; ++i)
        for (index_t j = 0; j <= i; ++j) A(i, j) *= std::exp(ws.Bq(i, 0) - ws.Bk(j, 0));
    }
  }
  // Causal mask (the sub-chunked path wrote zeros there already; cheap to redo).
  for (index_t i = 0; i < L; ++i)
    for (index_t j = exclusive ? i : i + 1; j < L; ++j) A(i, j) = 0.f;
  if (exclusive)
    for (index_t i = 0; i < L; ++i) A(i, i) = ws.bonus(i);
  // O += A V, causal also for non-finite values (core/chunkwise/causal_product.hpp).
  chunkwise::add_lower_product(A, ws.Vc.topRows(L), ws.O.topRows(L), ws.finite_values);
}

// S = diag(exp(Bk_last)) S + (K * exp(Bk_last - Bk))^T V.
inline void chunk_state_update(const HeadProblem& p, index_t L, RowMatrix& S, ChunkWorkspace& ws) {
  if (!p.gated()) {
    S.noalias() += ws.Kc.topRows(L).transpose() * ws.Vc.topRows(L);
  } else if (p.scalar_gate) {
    const float last = ws.Bk(L - 1, 0);
    ws.KD.topRows(L).array() =
        ws.Kc.topRows(L).array().colwise() * (last - ws.Bk.col(0).head(L).array()).exp();
    S *= std::exp(last);
    S.noalias() += ws.KD.topRows(L).transpose() * ws.Vc.topRows(L);
  } else {
    const auto last = ws.Bk.row(L - 1);
    ws.KD.topRows(L).array() = ws.Kc.topRows(L).array() * ((-ws.Bk.topRows(L)).rowwise() + last).array().exp();
    S.array().colwise() *= last.transpose().array().exp();
    S.noalias() += ws.KD.topRows(L).transpose() * ws.Vc.topRows(L);
  }
}

// Writes the chunk's output rows (the engine's store_outputs hook).
inline void store_chunk_outputs(const HeadProblem& p, index_t t0, index_t L, const ChunkWorkspace& ws) {
  for (index_t i = 0; i < L; ++i) store_output_row(p, t0 + i, ws.O.row(i).data());
}

}  // namespace seqmix::detail::la
