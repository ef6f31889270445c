// Runs a family op over all (batch, value head) pairs: state hand-in and hand-out, the choice
// between the chunked and the recurrent form, and the in-place decode step. Internal.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunked.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/recurrent.hpp"

namespace seqmix::detail::la {

// The state a prefill starts from and returns. Normalizers are z = sum phi(k) (normalize only).
struct StateIo {
  ConstView<float, 4> initial_state;       // [B,HV,Kf,V], optional
  ConstView<float, 3> initial_normalizer;  // [B,HV,Kf], optional
  TensorView<float, 4> final_state;        // [B,HV,Kf,V], optional
  TensorView<float, 3> final_normalizer;   // [B,HV,Kf], optional
};

struct PrefillPlan {
  index_t B, HV, K, Kf, V;
  bool normalize;
  LinearAttentionAlgorithm algorithm;  // never automatic here
  index_t chunk;
  index_t prefix_len = 0;  // JRT prefix (linear_attention only)
};

// Picks the prefill algorithm for a shape. Measured on the 2-core AVX-512 machine this was
// tuned on (bench/bench_linear_attention.cpp runs both forms forced, README.md has the table):
// while the state of one head fits in ~256 KB (K*V <= 256*256 floats) the recurrent form wins
// for every gate kind, e.g. K=V=64, T=2048, one core: ungated 133 vs 67 GFLOP/s (chunk 64) or
// 81 (chunk 32); scalar gate 139 vs 50-64; channel gate 128 vs 28. Per token it costs 2-3
// vector ops per state element with o and v in registers and the state in L1/L2, while the
// chunked form does 2x the flops for C=K=V=64 (the intra-chunk C x C products) in small GEMMs
// that reach well under half of peak, plus exp-scaled copies of Q and K for decays. For larger
// states (taylor2 features, K=V>256) the chunked GEMMs catch up and keep the state out of the
// per-token loop, so they are used there. Inputs shorter than one chunk always go token by token.
inline LinearAttentionAlgorithm choose_algorithm(GateKind gate, index_t T, index_t Kf, index_t V, index_t chunk) {
  (void)gate;  // the same rule holds for every gate kind on the measured machine
  if (T < chunk) return LinearAttentionAlgorithm::recurrent;
  return Kf * V <= 256 * 256 ? LinearAttentionAlgorithm::recurrent : LinearAttentionAlgorithm::chunked;
}

inline void load_state(const StateIo& io, index_t b, index_t hv, index_t V, RowMatrix& S) {
  S.setZero();
  if (io.initial_state.has_value()) {
    const auto s = io.initial_state[b][hv];
    for (index_t r = 0; r < S.rows(); ++r)
      for (index_t c = 0; c < V; ++c) S(r, c) = s(r, c);
  }
  if (S.cols() > V && io.initial_normalizer.has_value())
    for (index_t r = 0; r < S.rows(); ++r) S(r, V) = io.initial_normalizer(b, hv, r);
}

inline void store_state(const StateIo& io, index_t b, index_t hv, index_t V, const RowMatrix& S) {
  if (io.final_state.has_value()) {
    const auto s = io.final_state[b][hv];
    for (index_t r = 0; r < S.rows(); ++r)
      for (index_t c = 0; c < V; ++c) s(r, c) = S(r, c);
  }
  if (S.cols() > V && io.final_normalizer.has_value())
    for (index_t r = 0; r < S.rows(); ++r) io.final_normalizer(b, hv, r) = S(r, V);
}

// o_t = S^T (phi(q_t) * scale) for every token of p: a read of a fixed state (JRT's prefix).
inline void read_state(const HeadProblem& p, const RowMatrix& S, float* qf, float* row) {
  const index_t Vp = S.cols();
  for (index_t t = 0; t < p.T(); ++t) {
    apply_feature_map(p.phi, p.q[t], p.scale, qf);
    for (index_t c = 0; c < Vp; ++c) row[c] = 0.f;
    for (index_t r = 0; r < S.rows(); ++r) simd::axpy(qf[r], S.row(r).data(), row, Vp);
    store_output_row(p, t, row);
  }
}

// The recurrent prefill of heads [begin, end), interleaved over blocks of tokens: for each block
// of kTokenBlock tokens, every head of the range advances by that block. A token's rows of all
// heads are adjacent in [B,T,H,D] memory, so q/k/v/g are read and o written almost sequentially.
// One head at a time over all T tokens strides through memory (8 KB apart for H=32, K=64) and
// was DRAM-latency-bound once the inputs outgrow L3: T=8192, H=32, K=V=64 ran at 56 GFLOP/s on 2
// threads vs ~210 with blocks of 8. 8 (kTokenBlock, recurrent.hpp): the block's rows of all
// heads stay near in memory, while a head's state (16-64 KB, in L2) is re-read only every 8
// tokens (blocks of 4..64 measured).

template <class MakeHead>
void run_recurrent_heads(const PrefillPlan& plan, const StateIo& io, index_t begin, index_t end, MakeHead& make_head) {
  const index_t Vp = plan.V + (plan.normalize ? 1 : 0);
  const index_t n = end - begin;
  std::vector<HeadProblem> heads;
  std::vector<RowMatrix> states(static_cast<std::size_t>(n), RowMatrix(plan.Kf, Vp));
  RecurrentWorkspace ws(plan.K, plan.Kf, Vp, kTokenBlock);
  heads.reserve(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const index_t task = begin + i;
    heads.push_back(make_head(task / plan.HV, task % plan.HV));
    load_state(io, task / plan.HV, task % plan.HV, plan.V, states[static_cast<std::size_t>(i)]);
  }
  const index_t T = n > 0 ? heads[0].T() : 0;
  for (index_t t0 = 0; t0 < T; t0 += kTokenBlock) {
    const index_t len = std::min(kTokenBlock, T - t0);
    for (index_t i = 0; i < n; ++i)
      run_recurrent(slice_head(heads[static_cast<std::size_t>(i)], t0, len), states[static_cast<std::size_t>(i)].data(), ws);
  }
  for (index_t i = 0; i < n; ++i)
    store_state(io, (begin + i) / plan.HV, (begin + i) % plan.HV, plan.V, states[static_cast<std::size_t>(i)]);
}

// The family's chunked form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp). The
// state S [Kf, Vp] lives in the workspace; the steps are chunked.hpp's.
template <class MakeHead>
struct ChunkKernel {
  const PrefillPlan& plan;
  const StateIo& io;
  MakeHead& make_head;

  struct Workspace {
    RowMatrix S;
    ChunkWorkspace chunk;
    AlignedVector<float> prefix_buffer;  // [Kf + Vp] for the JRT prefix read, else empty
  };
  struct Head {
    HeadProblem p;
    index_t b, hv;
  };

  index_t Vp() const { return plan.V + (plan.normalize ? 1 : 0); }
  Workspace make_workspace() const {
    return Workspace{RowMatrix(plan.Kf, Vp()), ChunkWorkspace(plan.chunk, plan.K, plan.Kf, Vp()),
                     AlignedVector<float>(plan.prefix_len > 0 ? static_cast<std::size_t>(plan.Kf + Vp()) : 0)};
  }
  Head begin_head(index_t item, Workspace& ws) const {
    const index_t b = item / plan.HV, hv = item % plan.HV;
    Head h{make_head(b, hv), b, hv};
    load_state(io, b, hv, plan.V, ws.S);
    return h;
  }
  index_t tokens(const Head& h) const { return h.p.T(); }
  void load_chunk(const Head& h, index_t t0, index_t L, Workspace& ws) const { la::load_chunk(h.p, t0, L, ws.chunk); }
  void state_to_output(const Head& h, index_t, index_t L, Workspace& ws) const { chunk_inter(h.p, L, ws.S, ws.chunk); }
  void intra(const Head& h, index_t, index_t L, Workspace& ws) const { chunk_intra(h.p, L, ws.chunk); }
  void update_state(const Head& h, index_t, index_t L, Workspace& ws) const {
    chunk_state_update(h.p, L, ws.S, ws.chunk);
  }
  void store_outputs(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    store_chunk_outputs(h.p, t0, L, ws.chunk);
  }
  void end_head(const Head& h, Workspace& ws) const { store_state(io, h.b, h.hv, plan.V, ws.S); }
  // JRT: the prefix's causal outputs are overwritten by the read of the full prefix state.
  index_t prefix_tokens(const Head&) const { return plan.prefix_len; }
  void after_prefix(const Head& h, index_t P, Workspace& ws) const {
    read_state(slice_head(h.p, 0, P), ws.S, ws.prefix_buffer.data(), ws.prefix_buffer.data() + plan.Kf);
  }
};

// Prefill: make_head(b, hv) returns the HeadProblem of one (batch, value head). Each parallel
// block allocates its workspace and states once and reuses them for all its heads. final_state
// may alias initial_state: a head's state is read completely before it is written.
template <class MakeHead>
void run_prefill(const PrefillPlan& plan, const StateIo& io, const Executor& executor, MakeHead&& make_head) {
  const index_t Vp = plan.V + (plan.normalize ? 1 : 0);
  const index_t tasks = plan.B * plan.HV;
  if (plan.algorithm == LinearAttentionAlgorithm::chunked) {
    const ChunkKernel<std::remove_reference_t<MakeHead>> kernel{plan, io, make_head};
    seqmix::chunkwise::run(kernel, tasks, 1, plan.chunk, executor);
    return;
  }
  if (plan.prefix_len == 0) {
    // One contiguous range of heads per thread: equal work, and the interleaving needs ranges.
    const index_t per_thread = (tasks + executor.concurrency() - 1) / executor.concurrency();
    parallel_for(executor, tasks, per_thread,
                 [&](index_t begin, index_t end) { run_recurrent_heads(plan, io, begin, end, make_head); });
    return;
  }
  // The recurrent form with a JRT prefix: one head at a time.
  parallel_for(executor, tasks, 1, [&](index_t begin, index_t end) {
    RowMatrix S(plan.Kf, Vp);
    RecurrentWorkspace ws(plan.K, plan.Kf, Vp, kTokenBlock);
    AlignedVector<float> prefix_buffer(static_cast<std::size_t>(plan.Kf + Vp));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / plan.HV, hv = task % plan.HV;
      const HeadProblem p = make_head(b, hv);
      load_state(io, b, hv, plan.V, S);
      const index_t P = std::min(plan.prefix_len, p.T());
      run_recurrent(slice_head(p, 0, P), S.data(), ws);
      read_state(slice_head(p, 0, P), S, prefix_buffer.data(), prefix_buffer.data() + plan.Kf);
      if (P < p.T()) run_recurrent(slice_head(p, P, p.T() - P), S.data(), ws);
      store_state(io, b, hv, plan.V, S);
    }
  });
}

// A rank-1 row as the [1, n] matrix a HeadProblem expects (one token).
template <class T>
TensorView<T, 2> as_token(const TensorView<T, 1>& row) {
  return TensorView<T, 2>(row.data(), {1, row.size(0)}, {0, row.stride(0)});
}

// Decode step, in place on state [B,HV,Kf,V] (and normalizer [B,HV,Kf] when normalizing).
// make_head(b, hv) returns a one-token HeadProblem. A state whose last dimension is strided is
// staged through a contiguous copy.
template <class MakeHead>
void run_step(index_t B, index_t HV, index_t K, index_t Kf, index_t V, bool normalize, const TensorView<float, 4>& state,
              const TensorView<float, 3>& normalizer, const Executor& executor, MakeHead&& make_head) {
  const bool in_place = state.is_last_dim_contiguous();
  // Waking a pool thread costs several microseconds, about what one core needs to stream 1 MB of
  // state (K=V=64 with 64 heads) through this kernel; below 2^19 state elements (2 MB) a step
  // stays on the calling thread. Measured: 32 heads of 64x64 take 6.7 us serially and no less
  // on two threads.
  const bool parallel = B * HV * Kf * V >= (index_t{1} << 19);
  parallel_for(parallel ? executor : serial_executor(), B * HV, 4, [&](index_t begin, index_t end) {
    RecurrentWorkspace ws(K, Kf, V + 1);
    AlignedVector<float> staged(in_place ? 0 : static_cast<std::size_t>(Kf * V));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / HV, hv = task % HV;
      const HeadProblem p = make_head(b, hv);
      const TokenOperands x = load_token(p, 0, ws);
      const bool exclusive = p.readout == Readout::exclusive_bonus;
      const auto s = state[b][hv];
      if (in_place) {
        recurrent_token(s.data(), s.stride(0), Kf, V, x, exclusive, ws.o());
      } else {
        for (index_t r = 0; r < Kf; ++r)
          for (index_t c = 0; c < V; ++c) staged[static_cast<std::size_t>(r * V + c)] = s(r, c);
        recurrent_token(staged.data(), V, Kf, V, x, exclusive, ws.o());
        for (index_t r = 0; r < Kf; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = staged[static_cast<std::size_t>(r * V + c)];
      }
      if (normalize) {
        // z is one more state column with value 1: the same kernel, on a [Kf, 1] state.
        TokenOperands xz = x;
        xz.v = x.v + V;
        const auto z = normalizer[b][hv];
        recurrent_token(z.data(), z.stride(0), Kf, 1, xz, exclusive, ws.o() + V);
      }
      store_output_row(p, 0, ws.o());
    }
  });
}

}  // namespace seqmix::detail::la
