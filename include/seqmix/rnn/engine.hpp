// The fast form shared by the recurrent cells (lstm, gru, slstm): what README.md derives.
//
//  1. Input side, all tokens at once: ax = x W_ih^T + b_ih for a chunk of tokens is one GEMM
//     (Eigen), split over batch rows and column blocks of the gates.
//  2. Recurrent side, token by token: the hidden units are cut into blocks (at most one head
//     each); a block keeps its rows of W_hh packed contiguously ([G*n, Dh], all its gates), so a
//     step is one GEMV/GEMM per block, ah = h_{t-1} W_blk^T, followed by the cell's elementwise
//     update of the block's units. Blocks are spread over the executor's threads when a step has
//     enough work to pay for the hand-off (one executor run, i.e. one barrier, per token).
//  3. Serving (packed sequences, slots): the running sequences are the rows of one run, longest
//     first, each with its own token count; at token t only the prefix of rows still running
//     takes part, so W_hh is read once per token for all of them rather than once per sequence.
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
// used instead. Ragged tiles repeat the last row and drop its sums. The fixed-count loops state
// their unrolling: GCC 12 at -O2 unrolls only by pragma, and a rolled row loop indexes acc at run
// time, which keeps the 16 accumulators in memory (a load and a store around every FMA).
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
#pragma GCC unroll 4
      for (auto& row : acc)
#pragma GCC unroll 4
        for (V& a : row) a = V(0.f);
      for (index_t k = 0; k < kv; k += simd::kWidth) {
        const V h0 = simd::load(hb[0] + k), h1 = simd::load(hb[1] + k), h2 = simd::load(hb[2] + k),
                h3 = simd::load(hb[3] + k);
#pragma GCC unroll 4
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

// The scratch of rnn_run: the blocks (packed W_hh rows, recurrent pre-activations), b_hh as a
// dense row, the double-buffered state and the input pre-activations of a chunk of tokens. A
// prefill builds one per call; the step keeps one per thread and reuses it, so that a step of an
// unchanged shape allocates nothing (the blocks are re-cut only when H, Dh or the split change,
// and the vectors only grow).
struct RnnWorkspace {
  index_t H = -1, Dh = -1, parts = -1;
  std::vector<std::vector<RnnBlock>> tasks;
  std::vector<float> b_hh_dense, state[2], ax, w_ih_copy;

  void prepare(const RnnDims& d, index_t G, index_t S, index_t n_parts, index_t Tc) {
    if (d.H != H || d.Dh != Dh || n_parts != parts) {
      tasks = rnn_blocks(d, n_parts);
      H = d.H, Dh = d.Dh, parts = n_parts;
    }
    for (auto& blocks : tasks)
      for (RnnBlock& blk : blocks) blk.ah.resize(static_cast<std::size_t>(d.B * G * (blk.j1 - blk.j0)));
    for (auto& st : state) st.assign(static_cast<std::size_t>(S * d.B * d.H), 0.f);
    ax.resize(static_cast<std::size_t>(d.B * Tc * G * d.H));
  }
};

// The rows of a dense run: every row has T tokens, x [B,T,I], y [B,T,H], states [B,S,H]
// (initial and final optional; they may be the same view).
struct RnnDenseRows {
  ConstView<float, 3> x;
  TensorView<float, 3> y;
  ConstView<float, 3> initial;
  TensorView<float, 3> final_state;
  index_t T;
  index_t tokens(index_t) const { return T; }
  ConstView<float, 2> x_row(index_t b) const { return x[b]; }
  TensorView<float, 2> y_row(index_t b) const { return y[b]; }
  ConstView<float, 2> initial_row(index_t b) const { return initial.has_value() ? initial[b] : ConstView<float, 2>(); }
  TensorView<float, 2> final_row(index_t b) const {
    return final_state.has_value() ? final_state[b] : TensorView<float, 2>();
  }
};

// The rows of a packed serving run: one row per running sequence, its own tokens x [T_b,I] and
// y [T_b,H] and state rows [S,H] (empty: zeros / not written), rows ordered by decreasing T_b,
// so that the rows still running at token t are a prefix [0, B_t) of the batch.
struct RnnPackedRows {
  std::vector<index_t> T;
  std::vector<ConstView<float, 2>> x, initial;
  std::vector<TensorView<float, 2>> y, final_state;
  index_t tokens(index_t b) const { return T[static_cast<std::size_t>(b)]; }
  ConstView<float, 2> x_row(index_t b) const { return x[static_cast<std::size_t>(b)]; }
  TensorView<float, 2> y_row(index_t b) const { return y[static_cast<std::size_t>(b)]; }
  ConstView<float, 2> initial_row(index_t b) const { return initial[static_cast<std::size_t>(b)]; }
  TensorView<float, 2> final_row(index_t b) const { return final_state[static_cast<std::size_t>(b)]; }
};

// A cell run over B rows of tokens (`Rows`: RnnDenseRows or RnnPackedRows, T = d.T the longest
// row): the prefill, and the step as T = 1 (initial and final state then both being the step's
// state). Row b takes part in tokens [0, tokens(b)); rows are ordered by decreasing length, so at
// token t the recurrent products and updates run over the running prefix of rows only, and a
// row's final state is written when it stops. `pack` copies each block's W_hh rows once (worth
// it from a few tokens on).
template <class Cell, class Rows>
void rnn_run(const RnnDims& d, const Rows& rows, const ConstView<float, 2>& w_ih, const ConstView<float, 2>& w_hh,
             const ConstView<float, 1>& b_ih, const ConstView<float, 1>& b_hh, bool pack, const Executor& executor,
             RnnWorkspace& ws) {
  constexpr index_t G = Cell::kGates, S = Cell::kStates;
  const index_t B = d.B, T = d.T, H = d.H, Dh = d.Dh, GH = G * H;
  if (B == 0 || H == 0) return;
  const index_t parts =
      executor.concurrency() > 1 && B * GH * Dh >= kRnnParallelWork ? index_t{executor.concurrency()} : index_t{1};
  // Input pre-activations of a chunk of tokens: ax [B, Tc, G*H].
  const index_t Tc = std::max<index_t>(1, std::min<index_t>(T, kRnnProjectionRows / B));
  ws.prepare(d, G, S, parts, Tc);
  std::vector<std::vector<RnnBlock>>& tasks = ws.tasks;
  if (pack)
    for (auto& blocks : tasks)
      for (RnnBlock& blk : blocks) {
        const index_t n = blk.j1 - blk.j0;
        blk.w.resize(static_cast<std::size_t>(G * n * Dh));
        for (index_t g = 0; g < G; ++g)
          for (index_t u = 0; u < n; ++u)
            for (index_t k = 0; k < Dh; ++k)
              blk.w[static_cast<std::size_t>((g * n + u) * Dh + k)] = w_hh(g * H + blk.j0 + u, k);
      }
  std::vector<float>& b_hh_dense = ws.b_hh_dense;
  b_hh_dense.assign(static_cast<std::size_t>(GH), 0.f);
  if (b_hh.has_value())
    for (index_t r = 0; r < GH; ++r) b_hh_dense[static_cast<std::size_t>(r)] = b_hh(r);

  // State [S][B][H], double-buffered: a step reads every unit of h_{t-1} while blocks write h_t.
  std::vector<float>* state = ws.state;
  for (index_t b = 0; b < B; ++b) {
    const ConstView<float, 2> init = rows.initial_row(b);
    if (init.has_value())
      for (index_t k = 0; k < S; ++k)
        for (index_t j = 0; j < H; ++j) state[0][static_cast<std::size_t>((k * B + b) * H + j)] = init(k, j);
  }
  int cur = 0;
  // Rows [Bt, running) stop before token t: their state after their last token goes out now.
  index_t running = B;
  auto finish_rows = [&](index_t Bt) {
    for (index_t b = Bt; b < running; ++b) {
      const TensorView<float, 2> fin = rows.final_row(b);
      if (!fin.has_value()) continue;
      for (index_t k = 0; k < S; ++k)
        for (index_t j = 0; j < H; ++j) fin(k, j) = state[cur][static_cast<std::size_t>((k * B + b) * H + j)];
    }
    running = Bt;
  };

  std::vector<float>& ax = ws.ax;
  const bool project = w_ih.has_value();
  RnnRowMap w_ih_map = project ? rnn_rows(w_ih, ws.w_ih_copy) : RnnRowMap(nullptr, 0, 0, Eigen::OuterStride<>(1));
  const index_t col_blocks = (GH + kRnnProjectionCols - 1) / kRnnProjectionCols;

  // One block's recurrent product and update for the Bt running rows at token t (tt in the chunk).
  auto step_block = [&](RnnBlock& blk, index_t t, index_t tt, index_t Bt) {
    const index_t n = blk.j1 - blk.j0, c0 = blk.head * Dh;
    const float* h_prev = state[cur].data();  // state 0 is h: [B][H]
    float* next = state[cur ^ 1].data();
    const float* prev = state[cur].data();
    const RnnRowMap hb(h_prev + c0, Bt, Dh, Eigen::OuterStride<>(H));
    if (pack && Bt >= 2) {
      rnn_block_product(blk.w.data(), Dh, G * n, Dh, h_prev + c0, H, Bt, blk.ah.data(), G * n);
    } else if (Bt >= 2 && w_hh.stride(1) == 1) {
      for (index_t g = 0; g < G; ++g)
        rnn_block_product(w_hh.ptr(g * H + blk.j0), w_hh.stride(0), n, Dh, h_prev + c0, H, Bt, blk.ah.data() + g * n, G * n);
    } else if (pack) {
      RnnMutRowMap ah(blk.ah.data(), Bt, G * n, Eigen::OuterStride<>(G * n));
      const RnnRowMap w(blk.w.data(), G * n, Dh, Eigen::OuterStride<>(Dh));
      ah.noalias() = hb * w.transpose();
    } else {
      for (index_t g = 0; g < G; ++g) {
        RnnMutRowMap ah(blk.ah.data() + g * n, Bt, n, Eigen::OuterStride<>(G * n));
        ah.noalias() = hb * rnn_rows(w_hh.slice(0, g * H + blk.j0, n), blk.copy).transpose();
      }
    }
    for (index_t b = 0; b < Bt; ++b) {
      const float* ax_row = ax.data() + (b * Tc + tt) * GH;
      const float* ah_row = blk.ah.data() + b * G * n;
      const TensorView<float, 2> y = rows.y_row(b);  // [T_b, H]
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
        if (y.stride(1) == 1) {
          simd::store(y.ptr(t, j), s[0]);
        } else {
          alignas(64) float lanes[simd::kFloatWidth];
          s[0].store_aligned(lanes);
          for (index_t l = 0; l < simd::kWidth; ++l) y(t, j + l) = lanes[l];
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
        y(t, j) = s[0];
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
        const index_t ntb = std::min(nt, rows.tokens(b) - t0);  // row b's tokens in this chunk
        if (ntb <= 0) continue;
        RnnMutRowMap out(ax.data() + b * Tc * GH + c0, ntb, nc, Eigen::OuterStride<>(GH));
        const RnnRowMap xs = rnn_rows(rows.x_row(b).slice(0, t0, ntb), x_copy);
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
      index_t Bt = running;
      while (Bt > 0 && rows.tokens(Bt - 1) <= t) --Bt;
      finish_rows(Bt);
      auto body = [&](index_t p) {
        for (RnnBlock& blk : tasks[static_cast<std::size_t>(p)]) step_block(blk, t, tt, Bt);
      };
      if (parts == 1)
        body(0);
      else
        executor.run(parts, body);
      cur ^= 1;
    }
  }
  finish_rows(0);
}

// The running sequences of a validated serving call as the rows of one batched run, ordered by
// decreasing length (ties in call order). Padding sequences (state row -1) are left out: their
// outputs stay untouched.
inline RnnPackedRows rnn_packed_rows(const SequenceMap& map, const RnnInputs& in, const RnnOutputs& out) {
  std::vector<SequenceSpan> spans;
  for (index_t n = 0; n < map.sequences(); ++n)
    if (map[n].state_row >= 0) spans.push_back(map[n]);
  std::stable_sort(spans.begin(), spans.end(),
                   [](const SequenceSpan& a, const SequenceSpan& b) { return a.tokens > b.tokens; });
  RnnPackedRows rows;
  for (const SequenceSpan& s : spans) {
    rows.T.push_back(s.tokens);
    rows.x.push_back(rnn_sequence_rows(in.x, s)[0]);
    rows.y.push_back(rnn_sequence_rows(out.y, s)[0]);
    const ConstView<float, 3> init = rnn_state_row(in.initial_state, s, s.read_state);
    rows.initial.push_back(init.has_value() ? init[0] : ConstView<float, 2>());
    const TensorView<float, 3> fin = rnn_state_row(out.final_state, s, true);
    rows.final_state.push_back(fin.has_value() ? fin[0] : TensorView<float, 2>());
  }
  return rows;
}

// Prefill entry shared by the cells.
template <class Cell>
void rnn_prefill(const char* op, const RnnInputs& in, const RnnOutputs& out, const RnnOptions& options,
                 const Executor& executor) {
  const ArgCheck check(op);
  SequenceMap map;
  const RnnDims d = validate_rnn<Cell>(check, in, out, options, &map);
  RnnWorkspace ws;
  // reverse (refused with cu_seqlens): every row runs its T tokens through reversed views.
  const auto [x, y] = options.reverse ? reversed_call(in, out) : std::make_pair(in, out);
  // A serving call (packed tokens, slots or fresh-state flags): the running sequences as the rows
  // of one batched run, longest first, so that each token's recurrent step reads W_hh once for
  // all sequences still running; state rows read and written in place.
  if (!rnn_plain_batch(in.batch)) {
    const RnnPackedRows rows = rnn_packed_rows(map, x, y);
    RnnDims dp = d;
    dp.B = static_cast<index_t>(rows.T.size());
    dp.T = dp.B > 0 ? rows.T[0] : 0;
    rnn_run<Cell>(dp, rows, in.w_ih, in.w_hh, in.b_ih, in.b_hh, dp.T >= 4, executor, ws);
    return;
  }
  const RnnDenseRows rows{x.x, y.y, in.initial_state, out.final_state, d.T};
  rnn_run<Cell>(d, rows, in.w_ih, in.w_hh, in.b_ih, in.b_hh, d.T >= 4, executor, ws);
}

// Step entry shared by the cells: the run above with one token and the state in place.
template <class Cell>
void rnn_step(const ArgCheck& check, const RnnStepInputs& in, const RnnStepOutputs& out, const RnnOptions& options,
              const Executor& executor) {
  RnnDims d = validate_rnn_step<Cell>(check, in, out, options);
  const ConstView<float, 3> x(in.x.data(), {d.B, 1, in.x.size(1)}, {in.x.stride(0), 0, in.x.stride(1)});
  const TensorView<float, 3> y(out.y.data(), {d.B, 1, d.H}, {out.y.stride(0), 0, out.y.stride(1)});
  // The per-thread scratch of this cell's steps: no heap allocation after warm-up
  // (tests/alloc/alloc_cells.cpp).
  thread_local RnnWorkspace ws;
  if (rnn_plain_batch(in.batch)) {
    rnn_run<Cell>(d, RnnDenseRows{x, y, out.state, out.state, 1}, in.w_ih, in.w_hh, in.b_ih, in.b_hh, false, executor, ws);
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
  rnn_run<Cell>(d, RnnDenseRows{x, y_run, state, state, 1}, in.w_ih, in.w_hh, in.b_ih, in.b_hh, false, executor, ws);
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
