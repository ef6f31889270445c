// lem, fast prefill (../README.md, "LEM"):
//
//  1. Input side, all tokens at once: ax = x W_ih^T + b_ih [B, Tc, 4H] for a chunk of tokens is
//     one GEMM (Eigen), split over batch rows and column blocks, as for lstm.
//  2. Recurrent side, token by token, in two dependent phases over blocks of hidden units:
//     A. the block's rows of the three y-gates of W_hh, packed as one [3n, H] matrix, times
//        y_{t-1}: one product per block, then dtb, dtz and z_t of its units;
//     B. the block's rows of W_z [n, H] times z_t (every unit of z_t: phase A must be complete
//        on all blocks), then y_t of its units.
//     With two cores each phase is one executor run (a barrier), two per token instead of the
//     one of lstm/gru: z_t is needed whole before any y_t.
// z and y are updated in place: phase A reads y and writes only its own units of z, phase B
// reads z and writes only its own units of y.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/rnn/engine.hpp"
#include "seqmix/rnn/lem/reference.hpp"

namespace seqmix {
namespace detail {

// out[b, r] = sum_k w[r, k] h[b, k] for B rows: the tiled kernel of the cells for B >= 2, Eigen's
// GEMV (no packing) for one row, as in engine.hpp. (`Deferred`, here and below: the products
// compile only where lem or lem_step is called, docs/compile_time.md.)
template <class Deferred>
void lem_product(const float* w, index_t ldw, index_t R, index_t K, const float* h, index_t ldh, index_t B, float* out,
                 index_t ldo) {
  using Map = deferred_t<RnnRowMap, Deferred>;
  if (B >= 2) return rnn_block_product(w, ldw, R, K, h, ldh, B, out, ldo);
  deferred_t<RnnMutRowMap, Deferred> o(out, 1, R, Eigen::OuterStride<>(ldo));
  o.noalias() = Map(h, 1, K, Eigen::OuterStride<>(ldh)) * Map(w, R, K, Eigen::OuterStride<>(ldw)).transpose();
}

// Units [j0, j1) and their weights: either packed copies (wa [3n, H]: gate-major rows of W_hh;
// wz [n, H]: rows of W_z) or pointers into the callers' (unit-stride) matrices.
struct LemBlock {
  index_t j0 = 0, j1 = 0;
  std::vector<float> wa, wz;
  std::vector<float> ah, az;  // [B, 3n] and [B, n] products of the current token
};

// The arguments of a run over B rows of T tokens (the step is T = 1 with the state as both
// initial and final state).
struct LemRun {
  ConstView<float, 3> x;  // [B,T,I] or [B,T,4H]
  TensorView<float, 3> y;
  ConstView<float, 3> initial;
  TensorView<float, 3> final_state;
  ConstView<float, 2> w_ih, w_hh, w_z;
  ConstView<float, 1> b_ih, b_hh, b_z;
  float dt;
};

// The scratch of lem_run: blocks (packed weights, products), copies of strided weights, dense
// biases, the states, dtb and the input pre-activations; plus the step's gathered slot rows. A
// prefill builds one per call; the step keeps one per thread, so a step of an unchanged shape
// makes no heap allocation after warm-up (the vectors only grow; tests/alloc/alloc_lem.cpp).
struct LemWorkspace {
  std::vector<LemBlock> blocks;
  std::vector<float> w_hh_copy, w_z_copy, w_ih_copy, b_hh, b_z, y, z, dtb, ax, gathered, y_scratch;
};

// Input pre-activations of tokens [t0, t0 + nt) of every row into ax [B, Tc, 4H].
template <class Deferred>
void lem_project(const LemRun& r, const RnnDims& d, index_t t0, index_t nt, index_t Tc,
                 const deferred_t<RnnRowMap, Deferred>* w_ih, std::vector<float>& ax, const Executor& executor) {
  const index_t GH = kLemInputGates * d.H;
  const index_t col_blocks = (GH + kRnnProjectionCols - 1) / kRnnProjectionCols;
  parallel_for(executor, d.B * col_blocks, 1, [&](index_t begin, index_t end) {
    std::vector<float> x_copy;
    for (index_t i = begin; i < end; ++i) {
      const index_t b = i / col_blocks, c0 = (i % col_blocks) * kRnnProjectionCols;
      const index_t nc = std::min(kRnnProjectionCols, GH - c0);
      deferred_t<RnnMutRowMap, Deferred> out(ax.data() + b * Tc * GH + c0, nt, nc, Eigen::OuterStride<>(GH));
      const deferred_t<RnnRowMap, Deferred> xs = rnn_rows(r.x[b].slice(0, t0, nt), x_copy);
      if (w_ih != nullptr)
        out.noalias() = xs * w_ih->middleRows(c0, nc).transpose();
      else
        out = xs.middleCols(c0, nc);
      if (r.b_ih.has_value())
        for (index_t c = 0; c < nc; ++c) out.col(c).array() += r.b_ih(c0 + c);
    }
  });
}

// Writes `v` (a vector of units starting at unit j) into row t of y [T, H], strided or not.
inline void lem_store_y(const TensorView<float, 2>& y, index_t t, index_t j, const RnnBatch& v) {
  if (y.stride(1) == 1) return simd::store(y.ptr(t, j), v);
  alignas(64) float lanes[simd::kFloatWidth];
  v.store_aligned(lanes);
  for (index_t l = 0; l < simd::kWidth; ++l) y(t, j + l) = lanes[l];
}

// The run: validated arguments, B rows of T tokens. `pack` copies each block's weights once
// (worth it from a few tokens on); otherwise the matrices are read where they lie (copied once
// only when their columns are strided).
template <class Deferred>
void lem_run(const LemRun& r, const RnnDims& d, bool pack, const Executor& executor, LemWorkspace& ws) {
  const index_t B = d.B, T = d.T, H = d.H, GH = kLemInputGates * H;
  if (B == 0 || H == 0 || T == 0) {
    // No token: the final state is the initial one (zeros without it).
    if (r.final_state.has_value() && r.final_state.data() != r.initial.data())
      for (index_t b = 0; b < B; ++b)
        for (index_t k = 0; k < kLemStates; ++k)
          for (index_t j = 0; j < H; ++j) r.final_state(b, k, j) = r.initial.has_value() ? r.initial(b, k, j) : 0.f;
    return;
  }
  // Multiply-adds of a token (both phases) against the engine's threshold for a per-token split.
  const index_t parts = executor.concurrency() > 1 && B * 4 * H * H >= kRnnParallelWork ? index_t{executor.concurrency()}
                                                                                          : index_t{1};
  std::vector<LemBlock>& blocks = ws.blocks;
  blocks.resize(static_cast<std::size_t>(parts));
  for (index_t p = 0; p < parts; ++p) {
    LemBlock& blk = blocks[static_cast<std::size_t>(p)];
    blk.j0 = p == 0 ? 0 : std::min(H, (H * p / parts + 15) / 16 * 16);
    blk.j1 = p + 1 == parts ? H : std::min(H, (H * (p + 1) / parts + 15) / 16 * 16);
  }
  const RnnRowMap w_hh = rnn_rows(r.w_hh, ws.w_hh_copy), w_z = rnn_rows(r.w_z, ws.w_z_copy);
  for (LemBlock& blk : blocks) {
    const index_t n = blk.j1 - blk.j0;
    blk.ah.resize(static_cast<std::size_t>(B * 3 * n));
    blk.az.resize(static_cast<std::size_t>(B * n));
    if (!pack) continue;
    blk.wa.resize(static_cast<std::size_t>(3 * n * H));
    blk.wz.resize(static_cast<std::size_t>(n * H));
    for (index_t g = 0; g < kLemRecurrentGates; ++g)
      for (index_t u = 0; u < n; ++u)
        for (index_t k = 0; k < H; ++k) blk.wa[static_cast<std::size_t>((g * n + u) * H + k)] = w_hh(g * H + blk.j0 + u, k);
    for (index_t u = 0; u < n; ++u)
      for (index_t k = 0; k < H; ++k) blk.wz[static_cast<std::size_t>(u * H + k)] = w_z(blk.j0 + u, k);
  }
  std::vector<float>& b_hh = ws.b_hh;
  std::vector<float>& b_z = ws.b_z;
  b_hh.assign(static_cast<std::size_t>(kLemRecurrentGates * H), 0.f);
  b_z.assign(static_cast<std::size_t>(H), 0.f);
  for (index_t i = 0; r.b_hh.has_value() && i < kLemRecurrentGates * H; ++i) b_hh[static_cast<std::size_t>(i)] = r.b_hh(i);
  for (index_t i = 0; r.b_z.has_value() && i < H; ++i) b_z[static_cast<std::size_t>(i)] = r.b_z(i);

  // State [B][H] each, and dtb of the current token (phase A to phase B).
  std::vector<float>& y = ws.y;
  std::vector<float>& z = ws.z;
  std::vector<float>& dtb = ws.dtb;
  for (std::vector<float>* v : {&y, &z, &dtb}) v->assign(static_cast<std::size_t>(B * H), 0.f);
  if (r.initial.has_value())
    for (index_t b = 0; b < B; ++b)
      for (index_t j = 0; j < H; ++j)
        y[static_cast<std::size_t>(b * H + j)] = r.initial(b, 0, j), z[static_cast<std::size_t>(b * H + j)] = r.initial(b, 1, j);

  const index_t Tc = std::max<index_t>(1, std::min<index_t>(T, kRnnProjectionRows / B));
  std::vector<float>& ax = ws.ax;
  ax.resize(static_cast<std::size_t>(B * Tc * GH));
  const RnnRowMap w_ih =
      r.w_ih.has_value() ? rnn_rows(r.w_ih, ws.w_ih_copy) : RnnRowMap(nullptr, 0, 0, Eigen::OuterStride<>(1));
  const float dt = r.dt;
  using V = RnnBatch;

  // Phase A of one block: dtb and z_t of its units.
  auto phase_a = [&](LemBlock& blk, index_t tt) {
    const index_t n = blk.j1 - blk.j0;
    if (pack)
      lem_product<Deferred>(blk.wa.data(), H, 3 * n, H, y.data(), H, B, blk.ah.data(), 3 * n);
    else
      for (index_t g = 0; g < kLemRecurrentGates; ++g)
        lem_product<Deferred>(w_hh.data() + (g * H + blk.j0) * w_hh.outerStride(), w_hh.outerStride(), n, H, y.data(),
                              H, B, blk.ah.data() + g * n, 3 * n);
    for (index_t b = 0; b < B; ++b) {
      const float* a = ax.data() + (b * Tc + tt) * GH;  // [dtb, dt, y target, z target] x H
      const float* ah = blk.ah.data() + b * 3 * n;      // [dtb, dt, z target] x n
      float* zb = z.data() + b * H;
      float* rb = dtb.data() + b * H;
      const index_t nv = simd::vector_end(n);
      for (index_t u = 0; u < nv; u += simd::kWidth) {
        const index_t j = blk.j0 + u;
        const V pre_b = simd::load(a + j) + simd::load(ah + u) + simd::load(b_hh.data() + j);
        const V pre_z = simd::load(a + H + j) + simd::load(ah + n + u) + simd::load(b_hh.data() + H + j);
        const V tgt = simd::load(a + 3 * H + j) + simd::load(ah + 2 * n + u) + simd::load(b_hh.data() + 2 * H + j);
        simd::store(rb + j, lem_rate(pre_b, dt));
        simd::store(zb + j, lem_blend(simd::load(zb + j), lem_rate(pre_z, dt), tgt));
      }
      for (index_t u = nv; u < n; ++u) {
        const index_t j = blk.j0 + u;
        const std::size_t uj = static_cast<std::size_t>(j);
        rb[j] = lem_rate(a[j] + ah[u] + b_hh[uj], dt);
        const float rate = lem_rate(a[H + j] + ah[n + u] + b_hh[uj + static_cast<std::size_t>(H)], dt);
        zb[j] = lem_blend(zb[j], rate, a[3 * H + j] + ah[2 * n + u] + b_hh[uj + static_cast<std::size_t>(2 * H)]);
      }
    }
  };
  // Phase B of one block: y_t of its units from all of z_t.
  auto phase_b = [&](LemBlock& blk, index_t t, index_t tt) {
    const index_t n = blk.j1 - blk.j0;
    if (pack)
      lem_product<Deferred>(blk.wz.data(), H, n, H, z.data(), H, B, blk.az.data(), n);
    else
      lem_product<Deferred>(w_z.data() + blk.j0 * w_z.outerStride(), w_z.outerStride(), n, H, z.data(), H, B,
                            blk.az.data(), n);
    for (index_t b = 0; b < B; ++b) {
      const float* a = ax.data() + (b * Tc + tt) * GH + 2 * H;  // y targets' input side
      const float* az = blk.az.data() + b * n;
      float* yb = y.data() + b * H;
      const float* rb = dtb.data() + b * H;
      const TensorView<float, 2> out = r.y[b];
      const index_t nv = simd::vector_end(n);
      for (index_t u = 0; u < nv; u += simd::kWidth) {
        const index_t j = blk.j0 + u;
        const V tgt = simd::load(a + j) + simd::load(az + u) + simd::load(b_z.data() + j);
        const V v = lem_blend(simd::load(yb + j), simd::load(rb + j), tgt);
        simd::store(yb + j, v);
        lem_store_y(out, t, j, v);
      }
      for (index_t u = nv; u < n; ++u) {
        const index_t j = blk.j0 + u;
        yb[j] = lem_blend(yb[j], rb[j], a[j] + az[u] + b_z[static_cast<std::size_t>(j)]);
        out(t, j) = yb[j];
      }
    }
  };

  for (index_t t0 = 0; t0 < T; t0 += Tc) {
    const index_t nt = std::min(Tc, T - t0);
    lem_project<Deferred>(r, d, t0, nt, Tc, r.w_ih.has_value() ? &w_ih : nullptr, ax, executor);
    for (index_t tt = 0; tt < nt; ++tt) {
      if (parts == 1) {
        phase_a(blocks[0], tt);
        phase_b(blocks[0], t0 + tt, tt);
      } else {
        executor.run(parts, [&](index_t p) { phase_a(blocks[static_cast<std::size_t>(p)], tt); });
        executor.run(parts, [&](index_t p) { phase_b(blocks[static_cast<std::size_t>(p)], t0 + tt, tt); });
      }
    }
  }
  if (r.final_state.has_value())
    for (index_t b = 0; b < B; ++b)
      for (index_t j = 0; j < H; ++j)
        r.final_state(b, 0, j) = y[static_cast<std::size_t>(b * H + j)], r.final_state(b, 1, j) = z[static_cast<std::size_t>(b * H + j)];
}

}  // namespace detail

/// LEM prefill over x [B,T,I] (or [B,T,4H] pre-activations without w_ih): y [B,T,H] and the
/// final (y, z). Same arguments and results as reference::lem, up to rounding. Threads split
/// the hidden units when a token has enough work (both phases, ../README.md).
// A template only so that the run compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void lem(const LemInputs& in, const RnnOutputs& out, const LemOptions& options = {},
         const Executor& executor = serial_executor()) {
  const ArgCheck check("lem");
  SequenceMap map;
  const detail::RnnDims d = detail::validate_lem(check, in, out, options, &map);
  // A serving call: each running sequence as a dense B = 1 run of its own tokens and state row.
  if (!detail::rnn_plain_batch(in.batch))
    return detail::lem_for_each_sequence(map, in, out, [&](const LemInputs& in1, const RnnOutputs& out1) {
      lem<Deferred>(in1, out1, options, executor);
    });
  detail::LemRun r{in.x, out.y, in.initial_state, out.final_state, in.w_ih, in.w_hh, in.w_z,
                   in.b_ih, in.b_hh, in.b_z, options.dt};
  if (options.reverse) detail::reverse_time_of(r.x, r.y);
  detail::LemWorkspace ws;
  detail::lem_run<Deferred>(r, d, d.T >= 4, executor, ws);
}

}  // namespace seqmix
