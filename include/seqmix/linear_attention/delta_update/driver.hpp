// Runs a delta_rule / gated_delta_rule prefill or decode step over all (batch, value head)
// pairs: state hand-in and hand-out, per-token loading, the choice between the chunked WY form
// and the recurrent form. Internal.
#pragma once

#include <algorithm>
#include <type_traits>

#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/recurrent.hpp"
#include "seqmix/linear_attention/delta_update/wy.hpp"

namespace seqmix::delta_update {

// Picks the prefill algorithm. Measured on the 2-core AVX-512 (Zen 4) machine this was tuned on
// with bench/bench_delta_rule.cpp (both forms forced; table in README.md): at K = V = 128
// the fused recurrent kernel and the chunked WY form are within 5% of each other (H=32 T=512:
// 20.1 vs 20.1 ms single-thread; H=4 T=1024: 4.15 vs 4.75 ms), and for smaller states or
// per-channel gates the recurrent kernel wins clearly (H=16 K=V=64: 3.5 vs 8.7 ms; KDA T=512:
// 21.8 vs 34.3 ms): its two sweeps per token run from L1 while the chunk GEMMs are small and do
// ~1.4x the flops. Beyond K = 128 the recurrent kernel's column tile (K rows x
// 64 floats) no longer fits the 48 KB L1, so larger scalar-gated states go to the GEMMs
// (not measured: no such model shape in the table).
inline DeltaAlgorithm choose_delta_algorithm(bool channel_gate, index_t T, index_t K, index_t V, index_t chunk) {
  (void)V;
  if (T < chunk || channel_gate) return DeltaAlgorithm::recurrent;
  return K > 128 ? DeltaAlgorithm::chunked : DeltaAlgorithm::recurrent;
}

// Copies the [K,V] state of one head in or out (strided views accepted).
inline void load_state(const ConstView<float, 4>& initial, index_t b, index_t hv, RowMatrix& S) {
  if (!initial.has_value()) {
    S.setZero();
    return;
  }
  const auto s = initial[b][hv];
  for (index_t r = 0; r < S.rows(); ++r) copy_row(s[r], S.row(r).data());
}

inline void store_state(const TensorView<float, 4>& final_state, index_t b, index_t hv, const RowMatrix& S) {
  if (!final_state.has_value()) return;
  const auto s = final_state[b][hv];
  for (index_t r = 0; r < S.rows(); ++r)
    for (index_t c = 0; c < S.cols(); ++c) s(r, c) = S(r, c);
}

// Loads token t of a delta head into the workspace: q (scaled), k, alpha = w * k, decays.
inline TokenOperands load_delta_token(const DeltaHead& p, index_t t, TokenWorkspace& ws) {
  const index_t K = p.K();
  TokenOperands x;
  load_row(p.q[t], p.scale, p.norm, ws.q());
  load_row(p.k[t], 1.f, p.norm, ws.k());
  x.q = ws.q();
  x.k = ws.k();
  const ConstView<float, 1> v = p.v[t];
  if (v.is_last_dim_contiguous()) {
    x.v = v.data();
  } else {
    copy_row(v, ws.v());
    x.v = ws.v();
  }
  x.beta = p.beta(t);
  x.alpha = ws.k();
  if (p.gated()) {
    if (p.scalar_gate) {
      ws.w()[0] = std::exp(p.g(t, 0));
      x.w_stride = 0;
      const float w = ws.w()[0];
      for (index_t r = 0; r < K; ++r) ws.alpha()[r] = w * ws.k()[r];
    } else {
      copy_row(p.g[t], ws.b());
      exp_rows(ws.b(), ws.w(), K);
      multiply_rows(ws.w(), ws.k(), ws.alpha(), K);
      x.w_stride = 1;
    }
    x.w = ws.w();
    x.alpha = ws.alpha();
  }
  return x;
}

// The recurrent prefill of one head on a contiguous state S [K,V].
inline void run_recurrent(const DeltaHead& p, float* S, TokenWorkspace& ws) {
  const bool direct = p.o.is_last_dim_contiguous();
  for (index_t t = 0; t < p.T(); ++t) {
    const TokenOperands x = load_delta_token(p, t, ws);
    float* o = direct ? p.o.ptr(t) : ws.o();
    advance_token(Update::delta, S, p.V(), p.K(), p.V(), x, o);
    if (!direct)
      for (index_t c = 0; c < p.V(); ++c) p.o(t, c) = o[c];
  }
}

struct DeltaPlan {
  index_t B, HV, K, V;
  DeltaAlgorithm algorithm;  // never automatic here
  index_t chunk;
};

// The chunked WY form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp); the state
// S [K,V] lives in the workspace, the steps are wy.hpp's.
template <class MakeHead>
struct WyKernel {
  const DeltaPlan& plan;
  const ConstView<float, 4>& initial_state;
  const TensorView<float, 4>& final_state;
  MakeHead& make_head;

  struct Workspace {
    RowMatrix S;
    WyWorkspace wy;
  };
  struct Head {
    DeltaHead p;
    index_t b, hv;
  };

  Workspace make_workspace() const { return Workspace{RowMatrix(plan.K, plan.V), WyWorkspace(plan.chunk, plan.K, plan.V)}; }
  Head begin_head(index_t item, Workspace& ws) const {
    const index_t b = item / plan.HV, hv = item % plan.HV;
    Head h{make_head(b, hv), b, hv};
    load_state(initial_state, b, hv, ws.S);
    return h;
  }
  index_t tokens(const Head& h) const { return h.p.T(); }
  void load_chunk(const Head& h, index_t t0, index_t L, Workspace& ws) const { wy_load_chunk(h.p, t0, L, ws.wy); }
  void state_to_output(const Head& h, index_t, index_t L, Workspace& ws) const { wy_read_state(h.p, L, ws.S, ws.wy); }
  void intra(const Head&, index_t, index_t L, Workspace& ws) const { wy_intra(L, ws.wy); }
  void update_state(const Head& h, index_t, index_t L, Workspace& ws) const { wy_update_state(h.p, L, ws.S, ws.wy); }
  void store_outputs(const Head& h, index_t t0, index_t L, Workspace& ws) const { wy_store_outputs(h.p, t0, L, ws.wy); }
  void end_head(const Head& h, Workspace& ws) const { store_state(final_state, h.b, h.hv, ws.S); }
};

// Prefill over all heads: make_head(b, hv) returns the DeltaHead of one (batch, value head).
// Each parallel block allocates its state and workspace once and reuses them for all its heads.
// final_state may alias initial_state: a head's state is read completely before it is written.
template <class MakeHead>
void run_prefill(const DeltaPlan& plan, const ConstView<float, 4>& initial_state, const TensorView<float, 4>& final_state,
                 const Executor& executor, MakeHead&& make_head) {
  if (plan.algorithm == DeltaAlgorithm::chunked) {
    const WyKernel<std::remove_reference_t<MakeHead>> kernel{plan, initial_state, final_state, make_head};
    seqmix::chunkwise::run(kernel, plan.B * plan.HV, 1, plan.chunk, executor);
    return;
  }
  parallel_for(executor, plan.B * plan.HV, 1, [&](index_t begin, index_t end) {
    RowMatrix S(plan.K, plan.V);
    TokenWorkspace tok(plan.K, plan.V);
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / plan.HV, hv = task % plan.HV;
      const DeltaHead p = make_head(b, hv);
      load_state(initial_state, b, hv, S);
      run_recurrent(p, S.data(), tok);
      store_state(final_state, b, hv, S);
    }
  });
}

// Decode step over all heads, in place on state [B,HV,K,V]. make_token(b, hv, ws) returns the
// loaded operands of one head; a state whose last dimension is strided is staged through a copy.
template <class MakeToken, class StoreOutput>
void run_step(Update update, index_t B, index_t HV, index_t K, index_t V, const TensorView<float, 4>& state,
              const Executor& executor, MakeToken&& make_token, StoreOutput&& store_output) {
  const bool in_place = state.is_last_dim_contiguous();
  // Waking a pool thread costs a few microseconds, about what one core needs to stream 1 MB of
  // state through this kernel; smaller steps stay on the calling thread.
  const bool parallel = B * HV * K * V >= (index_t{1} << 18);
  parallel_for(parallel ? executor : serial_executor(), B * HV, 1, [&](index_t begin, index_t end) {
    TokenWorkspace ws(K, V);
    AlignedVector<float> staged(in_place ? 0 : static_cast<std::size_t>(K * V));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / HV, hv = task % HV;
      const TokenOperands x = make_token(b, hv, ws);
      const auto s = state[b][hv];
      if (in_place) {
        advance_token(update, s.data(), s.stride(0), K, V, x, ws.o());
      } else {
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) staged[static_cast<std::size_t>(r * V + c)] = s(r, c);
        advance_token(update, staged.data(), V, K, V, x, ws.o());
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = staged[static_cast<std::size_t>(r * V + c)];
      }
      store_output(b, hv, ws.o());
    }
  });
}

}  // namespace seqmix::delta_update
