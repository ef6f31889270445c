// The fast form shared by the recurrent cells (lstm, gru, slstm): what README.md derives.
//
//  1. Input side, all tokens at once: ax = x W_ih^T + b_ih for a chunk of tokens is one GEMM
//     (Eigen), split over batch rows and column blocks of the gates.
//  2. Recurrent side, token by token: the hidden units are cut into blocks (at most one head
//     each); a block keeps its rows of W_hh packed contiguously ([G*n, Dh], all its gates), so a
//     step is one GEMV/GEMM per block, ah = h_{t-1} W_blk^T, followed by the cell's elementwise
//     update of the block's units. Blocks are spread over the executor's threads when a step has
//     enough work to pay for the hand-off (one executor run, i.e. one barrier, per token).
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/rnn/common.hpp"

namespace seqmix {
namespace detail {

// Multiply-adds of one recurrent step (B*G*H*Dh) from which the step is split over threads.
// Measured (bench_rnn lstm/prefill/*_preact, B = 1, T = 512, median of 3-5 runs on a 2-core EPYC
// shared with other jobs): H = 1024 (2^22) 1.25 s on two cores against 1.66 s on one; H = 512
// (2^20) 108 ms against 100 ms; H = 256 36 ms against 19 ms. A per-token hand-off only pays once
// a step is a few hundred microseconds of work; smaller steps stay on the calling thread.
constexpr index_t kRnnParallelWork = 2 * 1024 * 1024;
// Rows (batch x tokens) of one input-projection GEMM: large enough for Eigen's blocking to reach
// its peak, small enough that the [rows, G*H] pre-activations stay a few MB.
constexpr index_t kRnnProjectionRows = 256;
// Gate columns per projection task.
constexpr index_t kRnnProjectionCols = 512;

using RnnRowMap = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
using RnnMutRowMap = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>>;

// A rank-2 view as a row-major Eigen map with unit inner stride, copying into `copy` only when
// the view's columns are strided (Eigen's products want unit inner stride) or its rows run
// backwards.
inline RnnRowMap rnn_rows(const ConstView<float, 2>& v, std::vector<float>& copy) {
  const index_t rows = v.size(0), cols = v.size(1);
  // Rows run backwards in a reversed view (options.reverse): copied too, in view order.
  if ((v.stride(1) == 1 || cols <= 1) && (v.stride(0) >= 0 || rows <= 1))
    return RnnRowMap(v.data(), rows, cols, Eigen::OuterStride<>(v.stride(0) >= 0 ? v.stride(0) : cols));
  copy.resize(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) copy[static_cast<std::size_t>(r * cols + c)] = v(r, c);
  return RnnRowMap(copy.data(), rows, cols, Eigen::OuterStride<>(cols));
}

// ah[b, r] = sum_k w[r, k] h[b, k] (w [R, K] with row stride ldw, unit columns) for several batch
// rows: tiles of 4 rows x 4 batch rows, 16 vector accumulators, each W row loaded once per 4
// batch rows while its 4 rows stay in L1. Eigen's product would pack W again on every token (an
// extra pass over the block's weights per step, measured 4-5x slower per token for B = 2..16 at
// H = 1024); here W is read as it lies. For B = 1, Eigen's GEMV (no packing) is faster and is
// used instead. Ragged tiles repeat the last row and drop its sums.
inline void rnn_block_product(const float* w, index_t ldw, index_t R, index_t K, const float* h, index_t ldh, index_t B,
                              float* ah, index_t ldah) {
  using V = simd::Batch<float>;
  const index_t kv = simd::vector_end(K);
  for (index_t r0 = 0; r0 < R; r0 += 4)
    for (index_t b0 = 0; b0 < B; b0 += 4) {
      const float* wr[4];
      const float* hb[4];
      for (index_t i = 0; i < 4; ++i) {
        wr[i] = w + std::min(r0 + i, R - 1) * ldw;
        hb[i] = h + std::min(b0 + i, B - 1) * ldh;
      }
      V acc[4][4];
      for (auto& row : acc)
        for (V& a : row) a = V(0.f);
      for (index_t k = 0; k < kv; k += simd::kWidth) {
        const V h0 = simd::load(hb[0] + k), h1 = simd::load(hb[1] + k), h2 = simd::load(hb[2] + k),
                h3 = simd::load(hb[3] + k);
        for (index_t i = 0; i < 4; ++i) {
          const V wv = simd::load(wr[i] + k);
          acc[i][0] = simd::fma(wv, h0, acc[i][0]), acc[i][1] = simd::fma(wv, h1, acc[i][1]);
          acc[i][2] = simd::fma(wv, h2, acc[i][2]), acc[i][3] = simd::fma(wv, h3, acc[i][3]);
        }
      }
      for (index_t i = 0; i < std::min<index_t>(4, R - r0); ++i)
        for (index_t j = 0; j < std::min<index_t>(4, B - b0); ++j) {
          float sum = simd::reduce_add(acc[i][j]);
          for (index_t k = kv; k < K; ++k) sum += wr[i][k] * hb[j][k];
          ah[(b0 + j) * ldah + r0 + i] = sum;
        }
    }
}

// Units [j0, j1) of one head, and the scratch of its recurrent product.
struct RnnBlock {
  index_t head, j0, j1;
  std::vector<float> w;   // [G*n, Dh] packed rows of W_hh (empty: read the view)
  std::vector<float> ah;  // [B, G*n] recurrent pre-activations of the current step
  std::vector<float> copy;
};

// Cuts [0, H) into `parts` ranges (multiples of 16 units where possible), then each range at its
// heads' boundaries: every block lies inside one head. Returns the blocks of each part.
inline std::vector<std::vector<RnnBlock>> rnn_blocks(const RnnDims& d, index_t parts) {
  std::vector<std::vector<RnnBlock>> tasks(static_cast<std::size_t>(parts));
  for (index_t p = 0; p < parts; ++p) {
    index_t a = d.H * p / parts, e = d.H * (p + 1) / parts;
    if (p > 0) a = std::min(d.H, (a + 15) / 16 * 16);
    if (p + 1 < parts) e = std::min(d.H, (e + 15) / 16 * 16);
    for (index_t j = a; j < e;) {
      const index_t head = j / d.Dh, end = std::min(e, (head + 1) * d.Dh);
      tasks[static_cast<std::size_t>(p)].push_back({head, j, end, {}, {}, {}});
      j = end;
    }
  }
  return tasks;
}

// A cell run over [B,T] tokens: the prefill, and the step as T = 1 (initial_state and
// final_state then both being the step's state). `pack` copies each block's W_hh rows once
// (worth it from a few tokens on).
template <class Cell>
void rnn_run(const RnnDims& d, const ConstView<float, 3>& x, const ConstView<float, 2>& w_ih,
             const ConstView<float, 2>& w_hh, const ConstView<float, 1>& b_ih, const ConstView<float, 1>& b_hh,
             const ConstView<float, 3>& initial_state, const TensorView<float, 3>& y,
             const TensorView<float, 3>& final_state, bool pack, const Executor& executor) {
  constexpr index_t G = Cell::kGates, S = Cell::kStates;
  const index_t B = d.B, T = d.T, H = d.H, Dh = d.Dh, GH = G * H;
  if (B == 0 || H == 0) return;
  const index_t parts =
      executor.concurrency() > 1 && B * GH * Dh >= kRnnParallelWork ? index_t{executor.concurrency()} : index_t{1};
  std::vector<std::vector<RnnBlock>> tasks = rnn_blocks(d, parts);
  for (auto& blocks : tasks)
    for (RnnBlock& blk : blocks) {
      const index_t n = blk.j1 - blk.j0;
      blk.ah.resize(static_cast<std::size_t>(B * G * n));
      if (!pack) continue;
      blk.w.resize(static_cast<std::size_t>(G * n * Dh));
      for (index_t g = 0; g < G; ++g)
        for (index_t u = 0; u < n; ++u)
          for (index_t k = 0; k < Dh; ++k) blk.w[static_cast<std::size_t>((g * n + u) * Dh + k)] = w_hh(g * H + blk.j0 + u, k);
    }
  std::vector<float> b_hh_dense(static_cast<std::size_t>(GH), 0.f);
  if (b_hh.has_value())
    for (index_t r = 0; r < GH; ++r) b_hh_dense[static_cast<std::size_t>(r)] = b_hh(r);

  // State [S][B][H], double-buffered: a step reads every unit of h_{t-1} while blocks write h_t.
  std::vector<float> state[2];
  for (auto& s : state) s.assign(static_cast<std::size_t>(S * B * H), 0.f);
  if (initial_state.has_value())
    for (index_t k = 0; k < S; ++k)
      for (index_t b = 0; b < B; ++b)
        for (index_t j = 0; j < H; ++j) state[0][static_cast<std::size_t>((k * B + b) * H + j)] = initial_state(b, k, j);
  int cur = 0;

  // Input pre-activations of a chunk of tokens: [B, Tc, G*H].
  const index_t Tc = std::max<index_t>(1, std::min<index_t>(T, kRnnProjectionRows / B));
  std::vector<float> ax(static_cast<std::size_t>(B * Tc * GH));
  std::vector<float> w_ih_copy;
  const bool project = w_ih.has_value();
  RnnRowMap w_ih_map = project ? rnn_rows(w_ih, w_ih_copy) : RnnRowMap(nullptr, 0, 0, Eigen::OuterStride<>(1));
  const index_t col_blocks = (GH + kRnnProjectionCols - 1) / kRnnProjectionCols;

  auto step_block = [&](RnnBlock& blk, index_t t, index_t tt) {
    const index_t n = blk.j1 - blk.j0, c0 = blk.head * Dh;
    const float* h_prev = state[cur].data();  // state 0 is h: [B][H]
    float* next = state[cur ^ 1].data();
    const float* prev = state[cur].data();
    const RnnRowMap hb(h_prev + c0, B, Dh, Eigen::OuterStride<>(H));
    if (pack && B >= 2) {
      rnn_block_product(blk.w.data(), Dh, G * n, Dh, h_prev + c0, H, B, blk.ah.data(), G * n);
    } else if (B >= 2 && w_hh.stride(1) == 1) {
      for (index_t g = 0; g < G; ++g)
        rnn_block_product(w_hh.ptr(g * H + blk.j0), w_hh.stride(0), n, Dh, h_prev + c0, H, B, blk.ah.data() + g * n, G * n);
    } else if (pack) {
      RnnMutRowMap ah(blk.ah.data(), B, G * n, Eigen::OuterStride<>(G * n));
      const RnnRowMap w(blk.w.data(), G * n, Dh, Eigen::OuterStride<>(Dh));
      ah.noalias() = hb * w.transpose();
    } else {
      for (index_t g = 0; g < G; ++g) {
        RnnMutRowMap ah(blk.ah.data() + g * n, B, n, Eigen::OuterStride<>(G * n));
        ah.noalias() = hb * rnn_rows(w_hh.slice(0, g * H + blk.j0, n), blk.copy).transpose();
      }
    }
    for (index_t b = 0; b < B; ++b) {
      const float* ax_row = ax.data() + (b * Tc + tt) * GH;
      const float* ah_row = blk.ah.data() + b * G * n;
      // Vectors of units first (the cell's update on simd lanes), then the ragged tail.
      const index_t nv = simd::vector_end(n);
      for (index_t u = 0; u < nv; u += simd::kWidth) {
        const index_t j = blk.j0 + u;
        RnnBatch a_in[G], a_rec[G], s[S];
        for (index_t g = 0; g < G; ++g) {
          a_in[g] = simd::load(ax_row + g * H + j);
          a_rec[g] = simd::load(ah_row + g * n + u) + simd::load(b_hh_dense.data() + g * H + j);
        }
        for (index_t k = 0; k < S; ++k) s[k] = simd::load(prev + (k * B + b) * H + j);
        Cell::update(a_in, a_rec, s);
        for (index_t k = 0; k < S; ++k) simd::store(next + (k * B + b) * H + j, s[k]);
        if (y.stride(2) == 1) {
          simd::store(y.ptr(b, t, j), s[0]);
        } else {
          alignas(64) float lanes[simd::kFloatWidth];
          s[0].store_aligned(lanes);
          for (index_t l = 0; l < simd::kWidth; ++l) y(b, t, j + l) = lanes[l];
        }
      }
      for (index_t u = nv; u < n; ++u) {
        const index_t j = blk.j0 + u;
        float a_in[G], a_rec[G], s[S];
        for (index_t g = 0; g < G; ++g) {
          a_in[g] = ax_row[g * H + j];
          a_rec[g] = ah_row[g * n + u] + b_hh_dense[static_cast<std::size_t>(g * H + j)];
        }
        for (index_t k = 0; k < S; ++k) s[k] = prev[(k * B + b) * H + j];
        Cell::update(a_in, a_rec, s);
        for (index_t k = 0; k < S; ++k) next[(k * B + b) * H + j] = s[k];
        y(b, t, j) = s[0];
      }
    }
  };

  for (index_t t0 = 0; t0 < T; t0 += Tc) {
    const index_t nt = std::min(Tc, T - t0);
    parallel_for(executor, B * col_blocks, 1, [&](index_t begin, index_t end) {
      std::vector<float> x_copy;
      for (index_t i = begin; i < end; ++i) {
        const index_t b = i / col_blocks, c0 = (i % col_blocks) * kRnnProjectionCols;
        const index_t nc = std::min(kRnnProjectionCols, GH - c0);
        RnnMutRowMap out(ax.data() + b * Tc * GH + c0, nt, nc, Eigen::OuterStride<>(GH));
        const RnnRowMap xs = rnn_rows(x[b].slice(0, t0, nt), x_copy);
        if (project)
          out.noalias() = xs * w_ih_map.middleRows(c0, nc).transpose();
        else
          out = xs.middleCols(c0, nc);
        if (b_ih.has_value())
          for (index_t c = 0; c < nc; ++c) out.col(c).array() += b_ih(c0 + c);
      }
    });
    for (index_t tt = 0; tt < nt; ++tt) {
      const index_t t = t0 + tt;
      auto body = [&](index_t p) {
        for (RnnBlock& blk : tasks[static_cast<std::size_t>(p)]) step_block(blk, t, tt);
      };
      if (parts == 1)
        body(0);
      else
        executor.run(parts, body);
      cur ^= 1;
    }
  }
  if (final_state.has_value())
    for (index_t k = 0; k < S; ++k)
      for (index_t b = 0; b < B; ++b)
        for (index_t j = 0; j < H; ++j) final_state(b, k, j) = state[cur][static_cast<std::size_t>((k * B + b) * H + j)];
}

// Prefill entry shared by the cells.
template <class Cell>
void rnn_prefill(const char* op, const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options,
                 const Executor& executor) {
  const ArgCheck check(op);
  SequenceMap map;
  const RnnDims d = validate_rnn<Cell>(check, in, out, options, &map);
  // A serving call (packed tokens, slots or fresh-state flags): each running sequence as a dense
  // B = 1 call of its own, its state row read and written in place.
  if (!rnn_plain_batch(in.batch))
    return rnn_for_each_sequence(map, in, out, [&](const RnnInputs& in1, const RnnOutputs& out1) {
      rnn_prefill<Cell>(op, in1, out1, options, executor);
    });
  const auto [x, y] = options.reverse ? reversed_call(in, out) : std::make_pair(in, out);
  rnn_run<Cell>(d, x.x, in.w_ih, in.w_hh, in.b_ih, in.b_hh, in.initial_state, y.y, out.final_state, d.T >= 4,
                executor);
}

// Step entry shared by the cells: the run above with one token and the state in place.
template <class Cell>
void rnn_step(const ArgCheck& check, const RnnStepInputs& in, const RnnStepOutputs& out, const RnnOptions& options,
              const Executor& executor) {
  RnnDims d = validate_rnn_step<Cell>(check, in, out, options);
  const ConstView<float, 3> x(in.x.data(), {d.B, 1, in.x.size(1)}, {in.x.stride(0), 0, in.x.stride(1)});
  const TensorView<float, 3> y(out.y.data(), {d.B, 1, d.H}, {out.y.stride(0), 0, out.y.stride(1)});
  if (rnn_plain_batch(in.batch)) {
    rnn_run<Cell>(d, x, in.w_ih, in.w_hh, in.b_ih, in.b_hh, out.state, y, out.state, false, executor);
    return;
  }
  // Slots: the B rows' states gathered into a dense per-thread scratch [B,S,H] (zeros for a fresh
  // or padding row), one batched step (W_hh read once for all rows), then scattered back. Padding
  // rows run on zeros into a scratch y and are written nowhere.
  constexpr index_t S = Cell::kStates;
  const IndexList& slots = in.batch.state_indices;
  const FlagList& has_initial = in.batch.has_initial_state;
  auto row_of = [&](index_t b) { return slots.has_value() ? slots[b] : b; };
  thread_local std::vector<float> gathered, y_padded;
  gathered.assign(static_cast<std::size_t>(d.B * S * d.H), 0.f);
  bool padding = false;
  for (index_t b = 0; b < d.B; ++b) {
    const index_t row = row_of(b);
    padding = padding || row < 0;
    if (row < 0 || (has_initial.has_value() && !has_initial[b])) continue;
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < d.H; ++j) gathered[static_cast<std::size_t>((b * S + k) * d.H + j)] = out.state(row, k, j);
  }
  const TensorView<float, 3> state(gathered.data(), {d.B, S, d.H});
  TensorView<float, 3> y_run = y;
  if (padding) {
    y_padded.resize(static_cast<std::size_t>(d.B * d.H));
    y_run = TensorView<float, 3>(y_padded.data(), {d.B, 1, d.H});
  }
  rnn_run<Cell>(d, x, in.w_ih, in.w_hh, in.b_ih, in.b_hh, state, y_run, state, false, executor);
  for (index_t b = 0; b < d.B; ++b) {
    const index_t row = row_of(b);
    if (row < 0) continue;
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < d.H; ++j) out.state(row, k, j) = gathered[static_cast<std::size_t>((b * S + k) * d.H + j)];
    if (padding)
      for (index_t j = 0; j < d.H; ++j) out.y(b, j) = y_padded[static_cast<std::size_t>(b * d.H + j)];
  }
}

}  // namespace detail
}  // namespace seqmix
