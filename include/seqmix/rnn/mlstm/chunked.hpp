// mlstm, fast prefill: the chunkwise-parallel form on core/chunkwise's engine (intra-chunk
// quadratic on GEMMs, the state carried between chunks, stabilized in log space), and the
// recurrent form (the step's kernel, token by token). Both equal the recurrence of
// reference.hpp up to rounding; the derivation is in README.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"

namespace seqmix {
namespace detail {

// One (batch, head) state in float: C [DK,DV] row-major, n [DK], m.
struct MlstmState {
  std::vector<float> C, n, q, k, v, num;  // q/k/v/num: one token's operands and h numerator
  float m = 0.f;
  MlstmState(index_t DK, index_t DV)
      : C(static_cast<std::size_t>(DK * DV)), n(static_cast<std::size_t>(DK)), q(static_cast<std::size_t>(DK)),
        k(static_cast<std::size_t>(DK)), v(static_cast<std::size_t>(DV)), num(static_cast<std::size_t>(DV)) {}
};

// One token of the recurrence (q already scaled in s.q): C [DK,DV] (row stride DV) and n decay
// and take the token in the same pass over C that reads the numerator q^T C. C and n may be the
// scratch of `s` or the caller's contiguous state rows (the step updates those in place).
inline void mlstm_token(MlstmState& s, float* C, float* n, float& m, index_t DK, index_t DV, float i, float f,
                        float eps, float* h, index_t hs) {
  const float lf = rnn_log_sigmoid(f);
  const float m_new = std::max(lf + m, i);
  const float fa = std::exp(lf + m - m_new), ia = std::exp(i - m_new);
  float* __restrict num = s.num.data();
  const float* __restrict v = s.v.data();
  for (index_t c = 0; c < DV; ++c) num[c] = 0.f;
  float qn = 0.f;
  // One pass over C: each row decays, takes k_r v and feeds the numerator (explicit vectors: the
  // compiler's -O2 cost model leaves this loop scalar).
  using V = simd::Batch<float>;
  const index_t dv = simd::vector_end(DV);
  const V fa_v(fa);
  for (index_t r = 0; r < DK; ++r) {
    float* __restrict row = C + r * DV;
    const float kr = ia * s.k[static_cast<std::size_t>(r)], qr = s.q[static_cast<std::size_t>(r)];
    n[r] = fa * n[r] + kr;
    qn += qr * n[r];
    const V kr_v(kr), qr_v(qr);
    for (index_t c = 0; c < dv; c += simd::kWidth) {
      const V updated = simd::fma(kr_v, simd::load(v + c), fa_v * simd::load(row + c));
      simd::store(row + c, updated);
      simd::store(num + c, simd::fma(qr_v, updated, simd::load(num + c)));
    }
    for (index_t c = dv; c < DV; ++c) {
      row[c] = fa * row[c] + kr * v[c];
      num[c] += qr * row[c];
    }
  }
  m = m_new;
  const float inv = 1.f / (std::max(std::abs(qn), std::exp(-m_new)) + eps);
  for (index_t c = 0; c < DV; ++c) h[c * hs] = num[c] * inv;
}

// The recurrent prefill of one (batch, head) row: state in, T tokens, state out.
inline void mlstm_recurrent_row(const MlstmInputs& in, const MlstmOutputs& out, const MlstmDims& d, float eps,
                                index_t b, index_t hd, MlstmState& s) {
  const index_t DK = d.DK, DV = d.DV;
  const bool given = in.initial_c.has_value();
  for (index_t r = 0; r < DK; ++r) {
    s.n[static_cast<std::size_t>(r)] = given ? in.initial_n(b, hd, r) : 0.f;
    for (index_t c = 0; c < DV; ++c) s.C[static_cast<std::size_t>(r * DV + c)] = given ? in.initial_c(b, hd, r, c) : 0.f;
  }
  s.m = given ? in.initial_m(b, hd) : 0.f;
  for (index_t t = 0; t < d.T; ++t) {
    for (index_t r = 0; r < DK; ++r) {
      s.q[static_cast<std::size_t>(r)] = d.scale * in.q(b, t, hd, r);
      s.k[static_cast<std::size_t>(r)] = in.k(b, t, hd, r);
    }
    for (index_t c = 0; c < DV; ++c) s.v[static_cast<std::size_t>(c)] = in.v(b, t, hd, c);
    mlstm_token(s, s.C.data(), s.n.data(), s.m, DK, DV, in.i(b, t, hd), in.f(b, t, hd), eps, out.h.ptr(b, t, hd),
                out.h.stride(3));
  }
  if (out.final_c.has_value())
    for (index_t r = 0; r < DK; ++r)
      for (index_t c = 0; c < DV; ++c) out.final_c(b, hd, r, c) = s.C[static_cast<std::size_t>(r * DV + c)];
  if (out.final_n.has_value())
    for (index_t r = 0; r < DK; ++r) out.final_n(b, hd, r) = s.n[static_cast<std::size_t>(r)];
  if (out.final_m.has_value()) out.final_m(b, hd) = s.m;
}

// The chunkwise kernel for core/chunkwise/engine.hpp. Per chunk of L tokens, with b_t the
// cumulative log forget gate from the chunk start (in double: differences of long sums) and
// (C, n, m) the state at the chunk start:
//   a_t = b_t + m                      log-weight of the carried state in token t
//   D_ts = b_t - b_s + i_s  (s <= t)   log-weight of token s's k_s v_s^T in token t
//   m_t = max(a_t, max_s D_ts)         the recurrence's stabilizer, unrolled
//   P = (Q K^T) o exp(D - m_t) (causal),  num = exp(a - m) o (Q C) + P V,  qn = exp(a - m) o (Q n) + P 1
//   h_t = num_t / (max(|qn_t|, exp(-m_t)) + eps)
//   state: m' = m_{L-1}, w_s = exp(D_{L-1,s} - m'), C' = exp(a_{L-1} - m') C + K^T diag(w) V, n' likewise.
// One sequence of a prefill as a dense B = 1 call (a serving call's sequence, cut out by
// mlstm_sequence_calls); its NH heads are items of the parallel work.
struct MlstmSequenceCall {
  MlstmInputs in;
  MlstmOutputs out;
};

// A template only so that its products compile where mlstm is called (docs/compile_time.md).
template <class Deferred>
struct MlstmChunkKernel {
  const MlstmInputs* in;
  const MlstmOutputs* out;
  MlstmDims d;  // d.T: the dense call's; a sequence's own T comes from its views
  float eps;
  index_t chunk;
  // Serving: the call's running sequences, item = sequence * NH + head (null: dense batch rows).
  const std::vector<MlstmSequenceCall>* sequences = nullptr;

  struct Workspace {
    RowMajorMatrix<float> C, Q, K, V, KW, P, num;
    chunkwise::ProductScratch finite_v;  // sized only by a chunk with a non-finite value
    Eigen::VectorXf n, qn, scale_state;
    std::vector<double> cum;
    std::vector<index_t> reset;  // the last token r <= t whose forget gate is -inf, or -1
    std::vector<float> log_i, m_row;
    float m = 0.f;
  };
  struct Head {
    const MlstmInputs* in;    // the item's views: the call's, or its sequence's
    const MlstmOutputs* out;
    index_t b, hd, T;
  };

  Workspace make_workspace() const {
    Workspace ws;
    ws.C.resize(d.DK, d.DV), ws.Q.resize(chunk, d.DK), ws.K.resize(chunk, d.DK), ws.V.resize(chunk, d.DV);
    ws.KW.resize(chunk, d.DK), ws.P.resize(chunk, chunk), ws.num.resize(chunk, d.DV);
    ws.n.resize(d.DK), ws.qn.resize(chunk), ws.scale_state.resize(chunk);
    ws.cum.resize(static_cast<std::size_t>(chunk)), ws.log_i.resize(static_cast<std::size_t>(chunk));
    ws.reset.resize(static_cast<std::size_t>(chunk));
    ws.m_row.resize(static_cast<std::size_t>(chunk));
    return ws;
  }

  Head begin_head(index_t item, Workspace& ws) const {
    Head h{in, out, item / d.NH, item % d.NH, d.T};
    if (sequences != nullptr) {
      const MlstmSequenceCall& call = (*sequences)[static_cast<std::size_t>(item / d.NH)];
      h = Head{&call.in, &call.out, 0, item % d.NH, call.in.q.size(1)};
    }
    const MlstmInputs& src = *h.in;
    const bool given = src.initial_c.has_value();
    for (index_t r = 0; r < d.DK; ++r) {
      ws.n(r) = given ? src.initial_n(h.b, h.hd, r) : 0.f;
      for (index_t c = 0; c < d.DV; ++c) ws.C(r, c) = given ? src.initial_c(h.b, h.hd, r, c) : 0.f;
    }
    ws.m = given ? src.initial_m(h.b, h.hd) : 0.f;
    return h;
  }

  index_t tokens(const Head& h) const { return h.T; }

  void load_chunk(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    for (index_t t = 0; t < L; ++t) {
      const float* q = h.in->q.ptr(h.b, t0 + t, h.hd);
      const float* k = h.in->k.ptr(h.b, t0 + t, h.hd);
      const float* v = h.in->v.ptr(h.b, t0 + t, h.hd);
      const index_t qs = h.in->q.stride(3), ks = h.in->k.stride(3), vs = h.in->v.stride(3);
      for (index_t r = 0; r < d.DK; ++r) ws.Q(t, r) = d.scale * q[r * qs], ws.K(t, r) = k[r * ks];
      for (index_t c = 0; c < d.DV; ++c) ws.V(t, c) = v[c * vs];
      ws.log_i[static_cast<std::size_t>(t)] = h.in->i(h.b, t0 + t, h.hd);
      // A forget gate of -inf (log f = -inf) is a hard reset: the recurrence multiplies the state
      // by exp(-inf) = 0. As a prefix sum it would make b_t - b_s = -inf - (-inf) = NaN for every
      // later pair (s, t) of the chunk, NaN where the recurrence is finite (the non-finite probe,
      // tests/test_nonfinite_lti_rnn.cpp). So the sum restarts at such a token and the pairs
      // across it get the exact log-weight -inf (decay() and state_decay() below).
      const double lf = rnn_log_sigmoid(h.in->f(h.b, t0 + t, h.hd));
      const auto u = static_cast<std::size_t>(t);
      const bool hard_reset = lf == -std::numeric_limits<double>::infinity();
      ws.reset[u] = hard_reset ? t : (t > 0 ? ws.reset[u - 1] : -1);
      ws.cum[u] = hard_reset ? 0.0 : (t > 0 ? ws.cum[u - 1] : 0.0) + lf;
    }
    // Stabilizers m_t, then the decayed causal scores P = (Q K^T) o exp(D - m_t).
    auto Qc = ws.Q.topRows(L);
    auto Kc = ws.K.topRows(L);
    auto P = ws.P.topLeftCorner(L, L);
    P.noalias() = Qc * Kc.transpose();
    for (index_t t = 0; t < L; ++t) {
      double m = state_decay(ws, t) + ws.m;
      for (index_t s = 0; s <= t; ++s) m = std::max(m, decay(ws, t, s) + ws.log_i[static_cast<std::size_t>(s)]);
      ws.m_row[static_cast<std::size_t>(t)] = static_cast<float>(m);
      ws.scale_state(t) = static_cast<float>(std::exp(state_decay(ws, t) + ws.m - m));
      for (index_t s = 0; s <= t; ++s)
        P(t, s) *= static_cast<float>(std::exp(decay(ws, t, s) + ws.log_i[static_cast<std::size_t>(s)] - m));
      for (index_t s = t + 1; s < L; ++s) P(t, s) = 0.f;
    }
  }

  // b_t - b_s (s <= t): -inf when a hard reset lies in (s, t].
  static double decay(const Workspace& ws, index_t t, index_t s) {
    const auto u = static_cast<std::size_t>(t);
    if (ws.reset[u] > s) return -std::numeric_limits<double>::infinity();
    return ws.cum[u] - ws.cum[static_cast<std::size_t>(s)];
  }
  // b_t, the carried state's log-weight: -inf once a hard reset lies in [0, t].
  static double state_decay(const Workspace& ws, index_t t) {
    const auto u = static_cast<std::size_t>(t);
    return ws.reset[u] >= 0 ? -std::numeric_limits<double>::infinity() : ws.cum[u];
  }

  void state_to_output(const Head&, index_t, index_t L, Workspace& ws) const {
    auto num = ws.num.topRows(L);
    num.noalias() = ws.Q.topRows(L) * ws.C;
    num = ws.scale_state.head(L).asDiagonal() * num;
    ws.qn.head(L) = ws.scale_state.head(L).cwiseProduct(ws.Q.topRows(L) * ws.n);
  }

  void intra(const Head&, index_t, index_t L, Workspace& ws) const {
    const auto P = ws.P.topLeftCorner(L, L);
    // num += P V, causal also for a non-finite value (core/chunkwise/causal_product.hpp): one
    // GEMM would multiply the zeros above P's diagonal by a later token's NaN.
    chunkwise::add_lower_product(P, ws.V.topRows(L), ws.num.topRows(L), ws.finite_v);
    ws.qn.head(L) += P.rowwise().sum();
  }

  void update_state(const Head&, index_t, index_t L, Workspace& ws) const {
    const double m_end = ws.m_row[static_cast<std::size_t>(L - 1)];
    const float carry = static_cast<float>(std::exp(state_decay(ws, L - 1) + ws.m - m_end));
    for (index_t s = 0; s < L; ++s) {
      const float w = static_cast<float>(std::exp(decay(ws, L - 1, s) + ws.log_i[static_cast<std::size_t>(s)] - m_end));
      ws.KW.row(s) = w * ws.K.row(s);
    }
    ws.C *= carry;
    ws.C.noalias() += ws.KW.topRows(L).transpose() * ws.V.topRows(L);
    ws.n = carry * ws.n + ws.KW.topRows(L).colwise().sum().transpose();
    ws.m = static_cast<float>(m_end);
  }

  void store_outputs(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    const index_t hs = h.out->h.stride(3);
    for (index_t t = 0; t < L; ++t) {
      const float inv = 1.f / (std::max(std::abs(ws.qn(t)), std::exp(-ws.m_row[static_cast<std::size_t>(t)])) + eps);
      float* dst = h.out->h.ptr(h.b, t0 + t, h.hd);
      for (index_t c = 0; c < d.DV; ++c) dst[c * hs] = ws.num(t, c) * inv;
    }
  }

  void end_head(const Head& h, Workspace& ws) const {
    if (h.out->final_c.has_value())
      for (index_t r = 0; r < d.DK; ++r)
        for (index_t c = 0; c < d.DV; ++c) h.out->final_c(h.b, h.hd, r, c) = ws.C(r, c);
    if (h.out->final_n.has_value())
      for (index_t r = 0; r < d.DK; ++r) h.out->final_n(h.b, h.hd, r) = ws.n(r);
    if (h.out->final_m.has_value()) h.out->final_m(h.b, h.hd) = ws.m;
  }
};

// A serving call: every (running sequence, head) pair of the call in one parallel loop, each
// sequence a dense B = 1 call on its tokens and state rows (in place). One loop instead of one
// call per sequence: many short sequences keep both cores busy without a fork / join per
// sequence (measured in the commit that introduced it, see docs/operators.md, mlstm).
template <class Deferred>
void mlstm_serving(const SequenceMap& map, const MlstmInputs& in, const MlstmOutputs& out, const MlstmDims& d,
                   const MlstmOptions& options, const Executor& executor) {
  std::vector<MlstmSequenceCall> calls;
  calls.reserve(static_cast<std::size_t>(map.sequences()));
  mlstm_for_each_sequence(map, in, out, [&](const MlstmInputs& in1, const MlstmOutputs& out1) {
    calls.push_back({in1, out1});
  });
  const index_t items = static_cast<index_t>(calls.size()) * d.NH;
  if (options.algorithm == MlstmAlgorithm::recurrent) {
    parallel_for(executor, items, 1, [&](index_t begin, index_t end) {
      MlstmState s(d.DK, d.DV);
      for (index_t item = begin; item < end; ++item) {
        const MlstmSequenceCall& c = calls[static_cast<std::size_t>(item / d.NH)];
        MlstmDims d1 = d;
        d1.B = 1, d1.T = c.in.q.size(1);
        mlstm_recurrent_row(c.in, c.out, d1, options.eps, 0, item % d.NH, s);
      }
    });
    return;
  }
  const index_t chunk = std::max<index_t>(1, std::min(options.chunk_size, map.max_tokens()));
  MlstmChunkKernel<Deferred> kernel{nullptr, nullptr, d, options.eps, chunk};
  kernel.sequences = &calls;
  chunkwise::run(kernel, items, 1, chunk, executor);
}

}  // namespace detail

/// mLSTM prefill: h [B,T,NH,DV] and the optional final (c, n, m). options.algorithm chooses the
/// chunkwise-parallel form (default) or the recurrent one; both equal reference::mlstm up to
/// rounding. Threaded over (batch, head) rows; a serving call (in.batch) over its (sequence,
/// head) pairs, all in one parallel loop.
// A template only so that the chunk kernel compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void mlstm(const MlstmInputs& in, const MlstmOutputs& out, const MlstmOptions& options = {},
           const Executor& executor = serial_executor()) {
  detail::check_reversible("mlstm", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::reversed_call(in, out);
    return mlstm<Deferred>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const ArgCheck check("mlstm");
  SequenceMap map;
  const detail::MlstmDims d = detail::validate_mlstm(check, in, out, options, &map);
  if (!detail::rnn_plain_batch(in.batch)) return detail::mlstm_serving<Deferred>(map, in, out, d, options, executor);
  const index_t rows = d.B * d.NH;
  if (options.algorithm == MlstmAlgorithm::recurrent) {
    parallel_for(executor, rows, 1, [&](index_t begin, index_t end) {
      detail::MlstmState s(d.DK, d.DV);
      for (index_t r = begin; r < end; ++r) detail::mlstm_recurrent_row(in, out, d, options.eps, r / d.NH, r % d.NH, s);
    });
    return;
  }
  const index_t chunk = std::max<index_t>(1, std::min(options.chunk_size, d.T));
  const detail::MlstmChunkKernel<Deferred> kernel{&in, &out, d, options.eps, chunk};
  chunkwise::run(kernel, rows, 1, chunk, executor);
}

}  // namespace seqmix
