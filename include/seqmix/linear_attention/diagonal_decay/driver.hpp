// Runs a family op over all (sequence, value head) pairs of a dense or packed batch: state
// hand-in and hand-out (per sequence or through slots of a pool), the choice between the chunked
// and the recurrent form, and the in-place decode step. Internal.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/core/thread_keep.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunked.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"
#include "seqmix/linear_attention/diagonal_decay/recurrent.hpp"
#include "seqmix/linear_attention/diagonal_decay/segments.hpp"
#include "seqmix/linear_attention/diagonal_decay/validate.hpp"
#include "seqmix/linear_attention/value_columns.hpp"

namespace seqmix::detail::la {

// The state a prefill starts from and returns. Rows are state rows (SequenceSpan::state_row): one
// per sequence, or a pool of slots. Normalizers are z = sum phi(k) (normalize only).
struct StateIo {
  ConstView<float, 4> initial_state;       // [S,HV,Kf,V], optional
  ConstView<float, 3> initial_normalizer;  // [S,HV,Kf], optional
  TensorView<float, 4> final_state;        // [S,HV,Kf,V], optional
  TensorView<float, 3> final_normalizer;   // [S,HV,Kf], optional
  TensorView<float, 5> token_states = {};  // [Bt,Tt,HV,Kf,V], optional: the state after each token
  TensorView<float, 4> token_normalizers = {}; // [Bt,Tt,HV,Kf], optional (normalize only): z after each token
};

struct PrefillPlan {
  SequenceMap seqs;  // sequences -> token ranges and state rows, validated
  index_t HV, K, Kf, V;
  bool normalize;
  LinearAttentionAlgorithm algorithm;  // never automatic here
  index_t chunk;
  index_t prefix_len = 0;  // JRT prefix (linear_attention only), per sequence
};

// How a head's V value columns split into tasks (value_columns.hpp). Heads x sequences below the
// executor's concurrency left threads idle (32 heads on 64 threads: half of them); blocks of
// columns give each thread a task then. Blocks are multiples of kMinColumnBlock = 16 columns (one
// AVX-512 vector: a partial vector costs what a full one does in the recurrent kernel's column
// tiles), at least 16 wide; narrower, the per-token K-side work each block repeats (q, k, gates;
// in the chunked form the q k^T scores) outweighs the columns' own. Judged by the estimated 64-core
// time, not the idle fraction (docs/parallel_grain.md, the diagonal-decay bullet): at the README's
// shapes 2 blocks per head finish in 0.51-0.70x the time of whole heads (a head alone reads its
// rows 8 KB apart, without the one-thread interleaving, so 2 blocks cost only 1.3-1.6x its
// work), while 4 blocks of 16 (more tasks than threads) cost 1.2-2.6x the 2 blocks' work and
// finish later: no more blocks than fill the threads.
constexpr index_t kMinColumnBlock = 16;

inline ValueSplit split_columns(index_t items, index_t V, index_t concurrency) {
  return split_value_columns(items, V, concurrency, kMinColumnBlock, kMinColumnBlock);
}

// The value columns each task of a prefill carries (split_columns of the sequences that run).
inline index_t task_columns(const SequenceMap& seqs, index_t HV, index_t V, const Executor& executor) {
  index_t running = 0;
  for (index_t n = 0; n < seqs.sequences(); ++n) running += seqs[n].state_row >= 0 ? 1 : 0;
  return split_columns(running * HV, V, executor.concurrency()).width;
}

// Picks the prefill algorithm for a shape (T: the longest sequence of the call; Kf x V: the state
// one task carries, V from task_columns; bf16_dot: Bf16Compute::dot asked for, which only the
// chunked form's products use). Measured with both forms forced after the chunked form's register
// tiles (AMD EPYC Zen 5, 2026-12-05, loaded; table in linear_attention/README.md "Choosing the
// algorithm"): every gate kind, normalize on and off, T 512 .. 8192, one and two threads, fp32
// and bf16 inputs. Chunked over recurrent time with fp32 products: 1.2-2.8 at K = V = 64 .. 256,
// 1.00-1.31 at 512, 0.85-1.28 at 768 (chunked ahead on one thread, behind with normalize or on
// two threads), 1.03-1.04 at 896 and 1008, 0.33-0.56 at 1024, where the recurrent kernel ran at ~40
// GFLOP/s (rows 4 KiB apart; state_row_stride, recurrent.hpp, pads them since). Re-measured at 1024
// after that fix (2026-12-06, loaded, H = 4, T = 1024): 1.13-1.43 for GLA and linear attention on
// one thread, 1.21-1.38 on two, rwkv6 0.68 and 0.96; at 1536 x 1536 and 1024 x 2048 (one thread)
// 1.25-1.53, rwkv6 0.41-0.44. Those chunked times held a page-fault cost that run_chunked_heads
// no longer pays (a second state per parallel block); after it (2026-12-06, loaded, H = 4,
// T = 1024): 0.73-0.82 at 1024 on one thread, 0.80-0.93 on two, for every gate kind and rwkv6
// alike, normalize 1.03 / 1.18 (its chunked steps run Eigen's products, V + 1 columns); 768:
// 0.56-0.73 and 0.85-0.93, normalize 0.84 / 1.07. The chunked form from 2^20 floats for every
// op. After the recurrent driver stopped allocating per call too (RecurrentPrefillScratch), the
// two forms tie at 768 and 1024 (one and two threads, nearly idle; README), so 2^20 stays. With bf16 dot products (the
// chunked form's GEMMs at up to twice the fp32 rate): 1.1-2.2 at 64, 0.94-1.41 at 128, 0.81-1.21 at
// 256, 0.61-0.78 at 512, 0.44-0.72 at 768: the chunked form from 2^19 floats (2 MiB). On the Xeon
// (Sapphire Rapids, ~340 GFLOP/s and ~25 GB/s on 2 cores against Zen 5's 458 and 58.8; not
// measured): the recurrent form re-reads the whole state every kTokenBlock = 16 tokens (0.5 Kf V
// bytes per token for 4 Kf V flops), the chunked form once per 64-token chunk (4x fewer bytes per
// flop), so a state beyond L2 costs the recurrent form more there and moves the crossover towards
// the chunked form. Both thresholds lie at or beyond either kind's L2 (Zen 5: 1 MiB, Sapphire
// Rapids: 2 MiB = 2^19 floats), where that shift only helps the chunked form; the Xeon's bf16 dot
// rate against its fp32 FMAs is not known here (with no gain, 768 x 768 would fall back to about
// the fp32 tie). Moved on Zen 4 (2026-12-08; README, "On Zen 4"), chunked / recurrent: fp32
// 0.81-0.97 at 768 (one and two threads, every gate, rwkv6; Zen 5: a tie), 0.92-1.13 at 512 and
// 1.12-1.17 for a K = V = 1024 head split into two tasks of 1024 x 512 (2^19 floats), so fp32 goes
// chunked from 768 x 768 floats; bf16 dots 0.55-0.72 at 512 (Zen 5 0.61-0.78), so from 2^18 (a
// 1 MiB state: the Xeon, whose L2 keeps it, is still not measured). Inputs shorter than one chunk
// always go token by token (callers keeping token_states force it).
constexpr index_t kChunkedStateFloats = index_t{768} * 768;
constexpr index_t kChunkedStateFloatsBf16Dot = index_t{1} << 18;

inline LinearAttentionAlgorithm choose_algorithm(GateKind gate, index_t T, index_t Kf, index_t V, index_t chunk,
                                                 bool bf16_dot) {
  (void)gate;  // the same thresholds hold for every gate kind and for rwkv6 on Zen 4 and Zen 5
  if (T < chunk) return LinearAttentionAlgorithm::recurrent;
  // Where the target lacks AVX512-BF16, Bf16Compute::dot runs the fp32 products.
  const index_t threshold = bf16_dot && kNativeBf16Dot ? kChunkedStateFloatsBf16Dot : kChunkedStateFloats;
  return Kf * V >= threshold ? LinearAttentionAlgorithm::chunked : LinearAttentionAlgorithm::recurrent;
}

// The sequences that run (padding ones, state_row -1, do not), longest first: items handed out in
// this order leave short ones for the end, so both cores stay busy until the call finishes.
inline std::vector<index_t> sequence_order(const SequenceMap& seqs) {
  std::vector<index_t> order;
  order.reserve(static_cast<std::size_t>(seqs.sequences()));
  for (index_t n = 0; n < seqs.sequences(); ++n)
    if (seqs[n].state_row >= 0) order.push_back(n);
  if (seqs.packed())
    std::stable_sort(order.begin(), order.end(),
                     [&](index_t a, index_t b) { return seqs[a].tokens > seqs[b].tokens; });
  return order;
}

// Value head hv of one sequence: the batch row's head cut to the sequence's tokens.
template <class MakeHead>
HeadProblem sequence_head(MakeHead& make_head, const SequenceSpan& s, index_t hv) {
  return slice_head(make_head(s.batch_row, hv), s.token_begin, s.tokens);
}

// A head's state [Kf, V (+1: z)] as the functions below take it: a whole matrix, or the leading
// columns of a wider one (a recurrent prefill's state, rows state_row_stride apart).
using StateRef = Eigen::Ref<RowMatrix>;
using ConstStateRef = Eigen::Ref<const RowMatrix>;

// Loads value columns cols of head hv's state into S [Kf, cols.width (+1: z)], zeros for a
// sequence without a state to read.
inline void load_state(const StateIo& io, const SequenceSpan& s, index_t hv, ValueColumns cols, StateRef S) {
  S.setZero();
  if (!s.read_state) return;
  if (io.initial_state.has_value()) {
    const auto src = io.initial_state[s.state_row][hv];
    for (index_t r = 0; r < S.rows(); ++r)
      for (index_t c = 0; c < cols.width; ++c) S(r, c) = src(r, cols.begin + c);
  }
  if (S.cols() > cols.width && io.initial_normalizer.has_value())
    for (index_t r = 0; r < S.rows(); ++r) S(r, cols.width) = io.initial_normalizer(s.state_row, hv, r);
}

inline void load_state(const StateIo& io, const SequenceSpan& s, index_t hv, index_t V, StateRef S) {
  load_state(io, s, hv, ValueColumns{0, V}, S);
}

// Stores S back to value columns cols of head hv's final state. Every block of a split head
// carries the same z column; the first block alone writes it.
inline void store_state(const StateIo& io, const SequenceSpan& s, index_t hv, ValueColumns cols,
                        const ConstStateRef& S) {
  if (io.final_state.has_value()) {
    // Contiguous rows are copied as rows: element by element through the view this held ~3% of
    // the samples of gla-1.3b-t512 on one thread (perf).
    const auto dst = io.final_state[s.state_row][hv];
    const bool contiguous = cols.width > 0 && dst.is_last_dim_contiguous();
    for (index_t r = 0; r < S.rows(); ++r) {
      if (contiguous)
        std::copy(S.row(r).data(), S.row(r).data() + cols.width, dst.ptr(r, cols.begin));
      else
        for (index_t c = 0; c < cols.width; ++c) dst(r, cols.begin + c) = S(r, c);
    }
  }
  if (cols.begin == 0 && S.cols() > cols.width && io.final_normalizer.has_value())
    for (index_t r = 0; r < S.rows(); ++r) io.final_normalizer(s.state_row, hv, r) = S(r, cols.width);
}

inline void store_state(const StateIo& io, const SequenceSpan& s, index_t hv, index_t V, const ConstStateRef& S) {
  store_state(io, s, hv, ValueColumns{0, V}, S);
}

// o_t = S^T (phi(q_t) * scale) for every token of p: a read of a fixed state (JRT's prefix).
// qf holds Kf floats, row max(Vp, K): a 16-bit q row is widened there before its feature map.
inline void read_state(const HeadProblem& p, const ConstStateRef& S, float* qf, float* row) {
  const index_t Vp = S.cols();
  for (index_t t = 0; t < p.T(); ++t) {
    apply_feature_map(p.phi, p.q.row(t, row), p.scale, qf);
    for (index_t c = 0; c < Vp; ++c) row[c] = 0.f;
    for (index_t r = 0; r < S.rows(); ++r) simd::axpy(qf[r], S.row(r).data(), row, Vp);
    store_output_row(p, t, row);
  }
}

// The recurrent prefill of one head one token at a time on S (its first p.Vp() columns), the state
// after token t copied to states[t] ([T, Kf, V]) and the normalizer (column V of S) to
// normalizers[t] ([T, Kf]), each when given. One token at a time takes the plain update, the
// blocked prefill lazy decay windows (recurrent.hpp), so outputs and final states equal those of a
// call without token_states to rounding (bit for bit without decays).
inline void run_recurrent_keeping_states(const HeadProblem& p, RowMatrix& S, RecurrentWorkspace& ws,
                                         const TensorView<float, 3>& states, const TensorView<float, 2>& normalizers) {
  const index_t Kf = p.Kf(), Vp = p.Vp(), V = p.V();
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  const bool direct = !p.normalize && p.o.is_last_dim_contiguous();
  for (index_t t = 0; t < p.T(); ++t) {
    const TokenOperands x = load_token(p, t, ws, 0);
    float* o = direct ? p.o.ptr(t) : ws.o(0);
    recurrent_token(S.data(), S.cols(), Kf, Vp, x, exclusive, o);
    if (!direct) store_output_row(p, t, o);
    if (states.has_value()) {
      const auto dst = states[t];
      for (index_t r = 0; r < Kf; ++r)
        for (index_t c = 0; c < V; ++c) dst(r, c) = S(r, c);
    }
    if (normalizers.has_value() && Vp > V)
      for (index_t r = 0; r < Kf; ++r) normalizers(t, r) = S(r, V);
  }
}

// The recurrent prefill of value heads [hv0, hv1) of one sequence, interleaved over blocks of
// tokens: for each block of kTokenBlock tokens, every head of the range advances by that block. A
// token's rows of all heads are adjacent in [B,T,H,D] memory, so q/k/v/g are read and o written
// almost sequentially. One head at a time over all T tokens strides through memory (8 KB apart
// for H=32, K=64) and was DRAM-latency-bound once the inputs outgrow L3: T=8192, H=32, K=V=64 ran
// at 56 GFLOP/s on 2 threads vs ~210 with blocks of 8. 16 (kTokenBlock, recurrent.hpp): the
// block's rows of all heads stay near in memory, while a head's state (16-64 KB, in L2) is
// re-read only every 16 tokens (blocks of 4..64 measured with 8 chosen before the lazy decay
// windows, which end with their block, made 16 faster at K = 128). `states` holds hv1 - hv0 matrices,
// resized to rows state_row_stride apart, of which the first cols.width (+1: z) columns are used.
// Only value columns cols of each head run (all of them unless the head is split, ValueSplit);
// token_states need them all.
template <class MakeHead>
void run_recurrent_heads(const PrefillPlan& plan, const StateIo& io, const SequenceSpan& s, index_t hv0, index_t hv1,
                         ValueColumns cols, MakeHead& make_head, std::vector<HeadProblem>& heads,
                         std::vector<RowMatrix>& states, RecurrentWorkspace& ws) {
  const index_t n = hv1 - hv0;
  heads.clear();
  for (index_t i = 0; i < n; ++i) {
    RowMatrix& S = states[static_cast<std::size_t>(i)];
    heads.push_back(value_columns(sequence_head(make_head, s, hv0 + i), cols));
    const index_t width = cols.width + (plan.normalize ? 1 : 0);
    S.resize(plan.Kf, state_row_stride(width));  // no-op unless the row stride changed
    load_state(io, s, hv0 + i, cols, S.leftCols(width));
  }
  if (io.token_states.has_value() || io.token_normalizers.has_value()) {
    for (index_t i = 0; i < n; ++i) {
      TensorView<float, 3> kept;
      TensorView<float, 2> kept_z;
      if (io.token_states.has_value())
        kept = io.token_states[s.batch_row].slice(0, s.token_begin, s.tokens).select(1, hv0 + i);
      if (io.token_normalizers.has_value())
        kept_z = io.token_normalizers[s.batch_row].slice(0, s.token_begin, s.tokens).select(1, hv0 + i);
      run_recurrent_keeping_states(heads[static_cast<std::size_t>(i)], states[static_cast<std::size_t>(i)], ws, kept,
                                   kept_z);
    }
  } else {
    // Each head's block requests the rows of the next head's (the next block's first head's after
    // the last head) while it loads its own.
    auto block_of = [&](index_t i, index_t t0) {
      return slice_head(heads[static_cast<std::size_t>(i)], t0, std::min(kTokenBlock, s.tokens - t0));
    };
    for (index_t t0 = 0; t0 < s.tokens; t0 += kTokenBlock) {
      HeadProblem current = block_of(0, t0);
      for (index_t i = 0; i < n; ++i) {
        const index_t t_next = i + 1 < n ? t0 : t0 + kTokenBlock;
        const bool has_next = t_next < s.tokens;
        HeadProblem next = has_next ? block_of((i + 1) % n, t_next) : current;
        RowMatrix& S = states[static_cast<std::size_t>(i)];
        run_recurrent(current, S.data(), S.cols(), ws, has_next ? &next : nullptr);
        current = std::move(next);
      }
    }
  }
  for (index_t i = 0; i < n; ++i)
    store_state(io, s, hv0 + i, cols,
                states[static_cast<std::size_t>(i)].leftCols(cols.width + (plan.normalize ? 1 : 0)));
}

// The chunked form's workspace of one parallel block: the state S [Kf, Vp] and the chunk's
// matrices (chunked.hpp).
struct ChunkTaskWorkspace {
  RowMatrix S;
  ChunkWorkspace chunk;
  AlignedVector<float> prefix_buffer;  // [Kf + max(Vp, K)] for the JRT prefix read (read_state), else empty
  bool in_pieces = false;              // the current chunk runs as pieces (run_in_pieces)
  std::vector<index_t> piece_ends;     // their ends (capacity: the chunk size)
  index_t group_first = 0, group_end = 0;  // value heads [first, end) advancing together, else empty

  // Reused from a kept one (ChunkedPrefillScratch) only for the same dimensions, after reset()
  // puts back the constructor's values (S is loaded by begin_head before it is read).
  bool fits(index_t C, index_t K, index_t Kf, index_t Vp, index_t prefix_floats) const {
    return S.rows() == Kf && S.cols() == Vp && chunk.fits(C, K, Kf, Vp) &&
           static_cast<index_t>(prefix_buffer.size()) == prefix_floats;
  }
  void reset() {
    chunk.reset();
    std::fill(prefix_buffer.begin(), prefix_buffer.end(), 0.f);
    in_pieces = false;
    piece_ends.clear();
    group_first = group_end = 0;
  }
  std::size_t bytes() const {
    return static_cast<std::size_t>(S.size()) * sizeof(float) + chunk.bytes() + prefix_buffer.size() * sizeof(float) +
           piece_ends.capacity() * sizeof(index_t);
  }
};

// The family's chunked form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp). Item
// i is value head i % HV of sequence order[i / HV]; each sequence is chunked on its own grid. The
// state S [Kf, Vp] lives in the workspace; the steps are chunked.hpp's.
template <class MakeHead>
struct ChunkKernel {
  const PrefillPlan& plan;
  const StateIo& io;
  const std::vector<index_t>& order;
  MakeHead& make_head;

  using Workspace = ChunkTaskWorkspace;
  struct Head {
    HeadProblem p;
    SequenceSpan s;
    index_t hv;
    ValueColumns cols;  // the head's value columns this item runs (ValueSplit)
  };

  // State columns of a block of `columns` value columns (all V by default).
  index_t Vp(index_t columns) const { return columns + (plan.normalize ? 1 : 0); }
  Workspace make_workspace() const { return make_workspace(plan.V); }
  // The workspace of items of `columns` value columns: its matrices are that wide.
  Workspace make_workspace(index_t columns) const {
    Workspace ws{RowMatrix(plan.Kf, Vp(columns)), ChunkWorkspace(plan.chunk, plan.K, plan.Kf, Vp(columns)),
                 AlignedVector<float>(static_cast<std::size_t>(prefix_floats(columns))), false, {}};
    ws.piece_ends.reserve(static_cast<std::size_t>(plan.chunk));
    return ws;
  }
  index_t prefix_floats(index_t columns) const {  // read_state's buffer
    return plan.prefix_len > 0 ? plan.Kf + std::max(Vp(columns), plan.K) : 0;
  }
  // make_workspace(columns) in `kept`: the one kept there, reset, when it has those dimensions.
  Workspace& workspace_in(std::optional<Workspace>& kept, index_t columns) const {
    if (kept && kept->fits(plan.chunk, plan.K, plan.Kf, Vp(columns), prefix_floats(columns)))
      kept->reset();
    else
      kept.emplace(make_workspace(columns));
    return *kept;
  }
  Head begin_head(index_t item, Workspace& ws) const { return begin_head(item, ws, ValueColumns{0, plan.V}); }
  // Value columns cols of item's head; ws must be make_workspace(cols.width)'s.
  Head begin_head(index_t item, Workspace& ws, ValueColumns cols) const {
    const SequenceSpan s = plan.seqs[order[static_cast<std::size_t>(item / plan.HV)]];
    const index_t hv = item % plan.HV;
    Head h{value_columns(sequence_head(make_head, s, hv), cols), s, hv, cols};
    load_state(io, s, hv, cols, ws.S);
    return h;
  }
  index_t tokens(const Head& h) const { return h.p.T(); }
  void load_chunk(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    la::load_chunk(h.p, t0, L, ws.chunk);
    request_next_rows(h, t0, L, ws);
    ws.in_pieces = h.p.gated() && -ws.chunk.Bk.row(L - 1).head(h.p.scalar_gate ? 1 : h.p.K()).minCoeff() > kPrefixRange;
  }
  // In a group advancing together (run_items_together) the next head loads these tokens' rows next,
  // and the group's first head the next chunk's after the last: ask for them into L2 now, so they
  // arrive while this head's products run. A head's rows are H K floats apart, a new 4 KiB page
  // every row or two, where the hardware prefetchers stop; the rows' first touch was a third of a
  // bf16 chunked call at gla-1.3b (perf, one thread).
  void request_next_rows(const Head& h, index_t t0, index_t L, const Workspace& ws) const {
    if (h.hv < ws.group_first || h.hv >= ws.group_end || ws.group_end - ws.group_first < 2) return;
    const bool last = h.hv + 1 == ws.group_end;
    const index_t next_t0 = last ? t0 + L : t0;
    const index_t next_end = std::min(next_t0 + L, h.p.T());
    if (next_t0 >= next_end) return;
    const HeadProblem next = sequence_head(make_head, h.s, last ? ws.group_first : h.hv + 1);
    for (index_t t = next_t0; t < next_end; ++t) prefetch_token(next, t);
  }
  void state_to_output(const Head& h, index_t, index_t L, Workspace& ws) const {
    if (!ws.in_pieces) chunk_inter(h.p, L, ws.S, ws.chunk);
  }
  void intra(const Head& h, index_t, index_t L, Workspace& ws) const {
    if (!ws.in_pieces) chunk_intra(h.p, L, ws.chunk);
  }
  void update_state(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    if (ws.in_pieces)
      run_in_pieces(h.p, t0, L, ws);
    else
      chunk_state_update(h.p, L, ws.S, ws.chunk);
  }
  void store_outputs(const Head& h, index_t t0, index_t L, Workspace& ws) const {
    if (!ws.in_pieces) store_chunk_outputs(h.p, t0, L, ws.chunk);
  }

  // A chunk whose cumulative log-decay falls below -kPrefixRange: its prefix sums Bk are too
  // large for fp32 to resolve the small differences of nearby tokens (ulp(3600) = 2.4e-4, so
  // resets of -100 every 7th token at chunk 256 were 4.5e-4 off). It runs as consecutive
  // pieces, each as long as its own decay stays within kPieceRange (at least one token), with
  // the state handed from piece to piece; prefix sums then stay below kPieceRange + 128 (one
  // floored gate), resolved to ~3e-5. Pairs of tokens in different pieces are more than
  // kPieceRange apart in log-decay, where exp() has long underflowed, so nothing is lost.
  void run_in_pieces(const HeadProblem& p, index_t t0, index_t L, Workspace& ws) const {
    // Piece ends first (the chunk-relative sums are coarse but only decide where pieces end),
    // since loading a piece overwrites them.
    const index_t channels = p.scalar_gate ? 1 : p.K();
    ws.piece_ends.clear();
    for (index_t begin = 0; begin < L;) {
      const auto Bk = ws.chunk.Bk.leftCols(channels);
      index_t end = begin + 1;
      const auto reach = [&](index_t e) {  // decay over [begin, e], per channel, at most
        return begin > 0 ? (Bk.row(begin - 1) - Bk.row(e)).maxCoeff() : -Bk.row(e).minCoeff();
      };
      while (end < L && reach(end) <= kPieceRange) ++end;
      ws.piece_ends.push_back(end);
      begin = end;
    }
    index_t begin = 0;
    for (const index_t end : ws.piece_ends) {
      const index_t n = end - begin;
      la::load_chunk(p, t0 + begin, n, ws.chunk);
      chunk_inter(p, n, ws.S, ws.chunk);
      chunk_intra(p, n, ws.chunk);
      chunk_state_update(p, n, ws.S, ws.chunk);
      store_chunk_outputs(p, t0 + begin, n, ws.chunk);
      begin = end;
    }
  }
  void end_head(const Head& h, Workspace& ws) const { store_state(io, h.s, h.hv, h.cols, ws.S); }
  // JRT: the prefix's causal outputs are overwritten by the read of the full prefix state.
  index_t prefix_tokens(const Head&) const { return plan.prefix_len; }
  void after_prefix(const Head& h, index_t P, Workspace& ws) const {
    read_state(slice_head(h.p, 0, P), ws.S, ws.prefix_buffer.data(), ws.prefix_buffer.data() + plan.Kf);
  }
};

// The chunked prefill's memory per parallel block (its workspace and a group's states), kept by
// each thread across calls (core/thread_keep.hpp). Allocated per block, it faulted fresh pages in
// on every call wherever glibc handed it back: GLA at H 4, K = V = 1024, T 1024 (6.5 MiB per
// block) took 6440 faults and ~250 ms per call with MALLOC_MMAP_THRESHOLD_=131072 against 0 and
// ~137 ms under glibc's dynamic threshold (AMD EPYC Zen 5, loaded, process CPU time, medians of
// 3); gla-1.3b T 8192 (a group of 32 states of 16 KiB) 102 faults per call either way. Reused
// only for the same dimensions (ChunkTaskWorkspace::fits); a call of another shape replaces it.
struct ChunkedPrefillScratch {
  std::optional<ChunkTaskWorkspace> whole;   // of the block's whole-width tasks
  std::optional<ChunkTaskWorkspace> narrow;  // of the narrower last column block (ValueSplit)
  std::vector<RowMatrix> states;             // a group's carried states (run_items_together)

  std::size_t bytes() const {
    std::size_t n = (whole ? whole->bytes() : 0) + (narrow ? narrow->bytes() : 0);
    for (const RowMatrix& S : states) n += static_cast<std::size_t>(S.size()) * sizeof(float);
    return n;
  }
};
using ChunkedPrefillKeep = ThreadKept<ChunkedPrefillScratch>;

// Fewer heads x sequences than threads: one task per (sequence, head, block of value columns),
// the head's chunks in order. Every block repeats the head's K-side work (loads, gates, the
// intra-chunk scores); see the diagonal_decay bullet of docs/parallel_grain.md for its cost.
template <class Kernel>
void run_chunked_column_blocks(const Kernel& kernel, const PrefillPlan& plan, index_t sequences,
                               const ValueSplit& split, const Executor& executor) {
  parallel_for(executor, sequences * plan.HV * split.blocks, 1, [&](index_t begin, index_t end) {
    ChunkedPrefillScratch scratch = ChunkedPrefillKeep::take();
    ChunkTaskWorkspace *whole = nullptr, *narrow = nullptr;  // set up on first use in this block
    for (index_t task = begin; task < end; ++task) {
      const ValueColumns cols = split.block(task % split.blocks);
      const bool is_whole = cols.width == split.width;  // else the narrower last block
      ChunkTaskWorkspace*& ws = is_whole ? whole : narrow;
      if (!ws) ws = &kernel.workspace_in(is_whole ? scratch.whole : scratch.narrow, cols.width);
      const typename Kernel::Head h = kernel.begin_head(task / split.blocks, *ws, cols);
      const index_t T = kernel.tokens(h);
      seqmix::chunkwise::run_chunks(kernel, h, 0, T, plan.chunk, *ws);
      kernel.end_head(h, *ws);
    }
    ChunkedPrefillKeep::give_back(std::move(scratch));
  });
}

// The chunked form over tasks of `group` value heads of one sequence that advance chunk by chunk
// together: for each chunk, every head of the task runs its steps (the kernel's hooks, with that
// head's state swapped into the one workspace). A token's rows of all heads are adjacent in
// [B,T,H,D] memory, so the heads of a task read q/k/v/g and write o almost sequentially; one
// head at a time over all T strides through memory H*D elements apart. Measured at gla-1.3b-t8192
// (one thread, thread CPU time, machine loaded): loading the chunks' rows 56-74 -> 45 ms, storing
// the outputs 24-37 -> 16 ms (the GEMM steps unchanged at ~115 ms); the call 196 -> 150 ms.
// The group keeps its states within ~512 KB (L2) and leaves a task per thread; JRT prefixes go
// through the engine one head at a time (ChunkKernel::prefix_tokens). Fewer heads x sequences than
// threads: run_chunked_column_blocks.
template <class Kernel>
void run_chunked_heads(const Kernel& kernel, const PrefillPlan& plan, index_t sequences, const Executor& executor) {
  const ValueSplit split = split_columns(sequences * plan.HV, plan.V, executor.concurrency());
  if (split.blocks > 1) return run_chunked_column_blocks(kernel, plan, sequences, split, executor);
  const index_t state_floats = plan.Kf * (plan.V + (plan.normalize ? 1 : 0));
  const index_t group = seqmix::chunkwise::items_together_group(plan.HV, state_floats, executor.concurrency());
  const index_t per_sequence = (plan.HV + group - 1) / group;
  parallel_for(executor, sequences * per_sequence, 1, [&](index_t begin, index_t end) {
    ChunkedPrefillScratch scratch = ChunkedPrefillKeep::take();
    ChunkTaskWorkspace& ws = kernel.workspace_in(scratch.whole, plan.V);
    // Groups of one head (states over 2^16 floats, or one head per thread) run in ws.S: the swapped
    // copies would be one more state-sized buffer per thread (4 MiB at K = V = 1024). A group's
    // states are ws.S's shape; their values are loaded by begin_head before they are read.
    std::vector<RowMatrix>& states = scratch.states;
    states.resize(static_cast<std::size_t>(group > 1 ? group : 0));
    for (RowMatrix& S : states) S.resize(ws.S.rows(), ws.S.cols());  // no-op for a kept one of that shape
    std::vector<typename Kernel::Head> heads;
    heads.reserve(static_cast<std::size_t>(group));
    for (index_t task = begin; task < end; ++task) {
      const index_t first = task / per_sequence * plan.HV + task % per_sequence * group;  // kernel item
      const index_t n = std::min(group, plan.HV - task % per_sequence * group);
      if (group == 1) {
        seqmix::chunkwise::run_item(kernel, first, plan.chunk, ws);
      } else {
        ws.group_first = first % plan.HV, ws.group_end = ws.group_first + n;
        seqmix::chunkwise::run_items_together(kernel, first, n, plan.chunk, heads, states, ws);
        ws.group_first = ws.group_end = 0;
      }
    }
    ChunkedPrefillKeep::give_back(std::move(scratch));
  });
}

// The recurrent prefill's memory per parallel block (the group's working states and the token
// operands), kept by each thread across calls. Allocated per block, it came back from glibc as fresh
// pages on every call once states were large: freeing ~20 MB at the end of a call trims the heap,
// and on the measured VM a first touch costs ~12 us per 4 KiB page. GLA at H 4, K = V = 1024,
// T 1024, recurrent form: 5168 page faults per call on one thread, 276 ms, against 0 faults and
// 170 ms with glibc told to keep freed memory (AMD EPYC Zen 5, process CPU time, medians of 3
// alternated runs; linear attention 267 -> 143, rwkv6 238 -> 196). A thread keeps at most
// kThreadKeepBytes (64 MiB); a block that needed more frees its memory when it ends.
struct RecurrentPrefillScratch {
  std::vector<RowMatrix> states;
  AlignedVector<float> tokens;  // RecurrentWorkspace's slots

  std::size_t bytes() const {
    std::size_t n = tokens.capacity();
    for (const RowMatrix& S : states) n += static_cast<std::size_t>(S.size());
    return n * sizeof(float);
  }
};
using RecurrentPrefillKeep = ThreadKept<RecurrentPrefillScratch>;

// The recurrent prefill's time split (segments.hpp has the algebra): when a call's (sequence,
// head) items are fewer than the threads, each head's tokens run as `segments` segments of whole
// kTokenBlock blocks, all at once from zero (the first from the initial state), then each later
// segment's outputs are corrected by what they read from its true start, in `parts` tasks of its
// tokens. Against the value-column blocks it replaces there, a segment task reads each token's
// q / k / gate rows once for all V columns, where every column block re-read and re-prepared them.
// Measured with the tool (docs/parallel_grain.md, the diagonal-decay bullet).
struct TimeSplit {
  index_t segments = 1;  // per item, at most (a short sequence has fewer)
  index_t parts = 1;     // second-pass tasks per later segment

  // A segment's tokens in a sequence of `tokens`: whole token blocks, at least one.
  index_t length(index_t tokens) const {
    const index_t even = (tokens + segments - 1) / segments;
    return std::max(kTokenBlock, (even + kTokenBlock - 1) / kTokenBlock * kTokenBlock);
  }
  index_t count(index_t tokens) const { return std::max<index_t>(1, (tokens + length(tokens) - 1) / length(tokens)); }
};

// Above two threads only: one and two threads keep the tasks they had (a call with one item on
// two threads splits its columns). 512 tokens: below, the split finished later than the column
// blocks on the tool's estimate (GLA, H 32, K = V = 64, 64 claimed threads, thread CPU times of a
// serial counting executor, loaded machine; a variant that also kept the decayed queries from the
// first pass, whose second pass read no q or gate rows: T 512 1.1-1.15x the blocks' time, T 1024
// 0.92-1.01x, T 2048 0.82-0.90x, T 4096 0.82-0.84x; this form, 3 alternated runs: T 1024 and 2048
// 1.01x, linear_attention T 8192 (no gate) 0.76x): the second pass is one more run whose slowest
// task adds to the first's, and on that executor a head's second column block finds the head's
// rows in cache from its first, which short heads make a large share. 2^16 floats (256 KiB): a segment
// task carries the whole state, which then stays in L2 (1 MiB on Zen 5) beside the rows; wider
// states keep the column blocks (not measured beyond K = V = 128).
constexpr int kMinThreadsToSplitTime = 3;
constexpr index_t kMinSegmentTokens = 512;
constexpr index_t kMaxSegmentStateFloats = index_t{1} << 16;

// The time split of `items` items whose longest sequence has `longest` tokens: as many segments
// as give every thread a first-pass task, and as many parts as give it a second-pass one.
inline TimeSplit time_split(index_t items, index_t longest, index_t state_floats, index_t concurrency) {
  TimeSplit split;
  if (concurrency < kMinThreadsToSplitTime || items <= 0 || items >= concurrency ||
      state_floats > kMaxSegmentStateFloats)
    return split;
  split.segments = std::min((concurrency + items - 1) / items, longest / kMinSegmentTokens);
  if (split.segments < 2) return TimeSplit{};
  const index_t later = items * (split.segments - 1);
  split.parts = std::max<index_t>(
      1, std::min((concurrency + later - 1) / later, split.length(longest) / kSegmentBlock));
  return split;
}

// The first pass's results, kept by the calling thread across calls (see RecurrentPrefillScratch
// for why): each (item, segment)'s end state from its start (zero after the first) and log-decay.
struct SegmentStates {
  AlignedVector<float> local;      // [items, segments, Kf, V]
  AlignedVector<float> log_decay;  // [items, segments, Kf]

  std::size_t bytes() const { return (local.capacity() + log_decay.capacity()) * sizeof(float); }
};
using SegmentStatesKeep = ThreadKept<SegmentStates>;

// Segment p on S (rows S.cols() apart), one token block at a time (each block requests the next
// block's rows while it runs, as run_recurrent_heads does for one head); the segment's log-decay
// is summed into `log_decay` [Kf] block by block, while the gate rows are in L1.
inline void run_segment(const HeadProblem& p, RowMatrix& S, RecurrentWorkspace& ws, float* log_decay) {
  std::fill(log_decay, log_decay + p.Kf(), 0.f);
  for (index_t t0 = 0; t0 < p.T(); t0 += kTokenBlock) {
    const index_t n = std::min(kTokenBlock, p.T() - t0);
    const bool has_next = t0 + n < p.T();
    const HeadProblem block = slice_head(p, t0, n);
    const HeadProblem next = has_next ? slice_head(p, t0 + n, std::min(kTokenBlock, p.T() - t0 - n)) : block;
    run_recurrent(block, S.data(), S.cols(), ws, has_next ? &next : nullptr);
    add_log_decay(p, t0, t0 + n, log_decay);
  }
}

using SegmentCorrectionKeep = ThreadKept<SegmentCorrection>;

// The recurrent prefill split in time (TimeSplit): first pass, one task per (item, segment);
// second pass, one per (item, later segment, part). Items are (sequence in `order`, value head).
// Not with normalize (o is divided by q . z, which the correction would change) or token_states.
template <class MakeHead>
void run_recurrent_segments(const PrefillPlan& plan, const StateIo& io, const std::vector<index_t>& order,
                            const TimeSplit& split, const Executor& executor, MakeHead& make_head) {
  const index_t items = static_cast<index_t>(order.size()) * plan.HV;
  const index_t Kf = plan.Kf, V = plan.V, state = Kf * V, segments = split.segments;
  const index_t later = segments - 1, parts = split.parts;
  SegmentStates kept = SegmentStatesKeep::take();
  kept.local.resize(static_cast<std::size_t>(items * segments * state));
  kept.log_decay.resize(static_cast<std::size_t>(items * segments * Kf));
  float* const local = kept.local.data();
  float* const log_decay = kept.log_decay.data();
  const auto span_of = [&](index_t item) { return plan.seqs[order[static_cast<std::size_t>(item / plan.HV)]]; };
  // Segment j of item's head.
  const auto segment = [&](index_t item, index_t j) {
    const SequenceSpan s = span_of(item);
    const index_t length = split.length(s.tokens), t0 = j * length;
    return slice_head(sequence_head(make_head, s, item % plan.HV), t0, std::min(length, s.tokens - t0));
  };
  parallel_for(executor, items * segments, 1, [&](index_t begin, index_t end) {
    RecurrentPrefillScratch scratch = RecurrentPrefillKeep::take();
    scratch.states.resize(1);
    RowMatrix& S = scratch.states.front();
    S.resize(Kf, state_row_stride(V));  // no-op for a kept one of that shape
    RecurrentWorkspace ws(plan.K, Kf, V, kTokenBlock, &scratch.tokens);
    for (index_t task = begin; task < end; ++task) {
      const index_t item = task / segments, j = task % segments;
      const SequenceSpan s = span_of(item);
      const index_t count = split.count(s.tokens), hv = item % plan.HV, slot = item * segments + j;
      if (j >= count) continue;
      if (j == 0)
        load_state(io, s, hv, V, S.leftCols(V));
      else
        S.leftCols(V).setZero();
      run_segment(segment(item, j), S, ws, log_decay + slot * Kf);
      if (count == 1)
        store_state(io, s, hv, V, S.leftCols(V));
      else
        Eigen::Map<RowMatrix>(local + slot * state, Kf, V) = S.leftCols(V);
    }
    RecurrentPrefillKeep::give_back(std::move(scratch));
  });
  parallel_for(executor, items * later * parts, 1, [&](index_t begin, index_t end) {
    SegmentCorrection ws = SegmentCorrectionKeep::take();
    ws.fit(plan.K, Kf, V);
    for (index_t task = begin; task < end; ++task) {
      const index_t item = task / (later * parts), j = 1 + task / parts % later, part = task % parts;
      const SequenceSpan s = span_of(item);
      const index_t count = split.count(s.tokens);
      if (j >= count) continue;
      const index_t first = item * segments;  // the item's slot of segment 0
      ws.start = Eigen::Map<const RowMatrix>(local + first * state, Kf, V);
      for (index_t m = 1; m < j; ++m) chain_state(log_decay + (first + m) * Kf, local + (first + m) * state, ws.start);
      const HeadProblem p = segment(item, j);
      const index_t per_part = (p.T() + parts - 1) / parts;
      const index_t t0 = std::min(p.T(), part * per_part), t1 = std::min(p.T(), t0 + per_part);
      add_start_readout(p, t0, t1, ws);
      if (j + 1 == count && part == 0) {  // the head's final state: the last segment's end
        chain_state(log_decay + (first + j) * Kf, local + (first + j) * state, ws.start);
        store_state(io, s, item % plan.HV, V, ws.start);
      }
    }
    SegmentCorrectionKeep::give_back(std::move(ws));
  });
  SegmentStatesKeep::give_back(std::move(kept));
}

// Prefill: make_head(b, hv) returns the HeadProblem of one (batch row, value head) over all T
// tokens of the row; the driver cuts it to each sequence of plan.seqs. Each parallel block
// sets up its workspace and states once (the recurrent form's from the thread's kept
// RecurrentPrefillScratch) and reuses them for all its heads. final_state may
// alias initial_state: a head's state is read completely before it is written, and no two
// sequences share a state row (SequenceMap refuses a slot named twice).
template <class MakeHead>
void run_prefill(const PrefillPlan& plan, const StateIo& io, const Executor& executor, MakeHead&& make_head) {
  const index_t Vp = plan.V + (plan.normalize ? 1 : 0);
  const std::vector<index_t> order = sequence_order(plan.seqs);
  const index_t sequences = static_cast<index_t>(order.size());
  if (plan.algorithm == LinearAttentionAlgorithm::chunked) {
    const ChunkKernel<std::remove_reference_t<MakeHead>> kernel{plan, io, order, make_head};
    const auto whole_width = [&](ChunkedPrefillScratch& scratch) -> ChunkTaskWorkspace& {
      return kernel.workspace_in(scratch.whole, plan.V);
    };
    if (plan.prefix_len > 0)  // JRT prefix (linear_attention): one head at a time (ChunkKernel::prefix_tokens)
      seqmix::chunkwise::run_kept<ChunkedPrefillKeep>(kernel, sequences * plan.HV, 1, plan.chunk, executor,
                                                      whole_width);
    else
      run_chunked_heads(kernel, plan, sequences, executor);
    return;
  }
  const bool keeps_tokens = io.token_states.has_value() || io.token_normalizers.has_value();
  if (plan.prefix_len == 0 && !keeps_tokens && !plan.normalize) {
    index_t longest = 0;
    for (const index_t n : order) longest = std::max(longest, plan.seqs[n].tokens);
    const TimeSplit time = time_split(sequences * plan.HV, longest, plan.Kf * plan.V, executor.concurrency());
    if (time.segments > 1) return run_recurrent_segments(plan, io, order, time, executor, make_head);
  }
  if (plan.prefix_len == 0) {
    // Tasks of `group` value heads of one sequence (heads of one sequence share its tokens, which
    // the interleaving needs). A dense batch of one row splits into one range per thread as before;
    // ragged batches give several tasks per thread, longest sequences first. Fewer heads than
    // threads: one head per task (group 1), split into blocks of value columns.
    const index_t group = (plan.HV + executor.concurrency() - 1) / executor.concurrency();
    const index_t per_sequence = (plan.HV + group - 1) / group;
    const ValueSplit split =
        keeps_tokens ? whole_columns(plan.V) : split_columns(sequences * plan.HV, plan.V, executor.concurrency());
    parallel_for(executor, sequences * per_sequence * split.blocks, 1, [&](index_t begin, index_t end) {
      std::vector<HeadProblem> heads;
      heads.reserve(static_cast<std::size_t>(group));
      RecurrentPrefillScratch scratch = RecurrentPrefillKeep::take();
      scratch.states.resize(static_cast<std::size_t>(group));  // each sized by run_recurrent_heads
      RecurrentWorkspace ws(plan.K, plan.Kf, Vp, kTokenBlock, &scratch.tokens);
      index_t used = 0;  // states this block's tasks used; a kept larger group's others are dropped
      for (index_t task = begin; task < end; ++task) {
        const index_t heads_task = task / split.blocks;
        const SequenceSpan s = plan.seqs[order[static_cast<std::size_t>(heads_task / per_sequence)]];
        const index_t hv0 = heads_task % per_sequence * group, hv1 = std::min(plan.HV, hv0 + group);
        used = std::max(used, hv1 - hv0);
        run_recurrent_heads(plan, io, s, hv0, hv1, split.block(task % split.blocks), make_head, heads,
                            scratch.states, ws);
      }
      scratch.states.resize(static_cast<std::size_t>(used));
      RecurrentPrefillKeep::give_back(std::move(scratch));
    });
    return;
  }
  // The recurrent form with a JRT prefix: one head at a time, its state and token operands from
  // the thread's kept RecurrentPrefillScratch.
  parallel_for(executor, sequences * plan.HV, 1, [&](index_t begin, index_t end) {
    RecurrentPrefillScratch scratch = RecurrentPrefillKeep::take();
    scratch.states.resize(1);
    RowMatrix& padded = scratch.states.front();
    padded.resize(plan.Kf, state_row_stride(Vp));  // no-op for a kept one of that shape
    auto S = padded.leftCols(Vp);
    RecurrentWorkspace ws(plan.K, plan.Kf, Vp, kTokenBlock, &scratch.tokens);
    AlignedVector<float> prefix_buffer(static_cast<std::size_t>(plan.Kf + std::max(Vp, plan.K)));
    for (index_t task = begin; task < end; ++task) {
      const SequenceSpan s = plan.seqs[order[static_cast<std::size_t>(task / plan.HV)]];
      const index_t hv = task % plan.HV;
      const HeadProblem p = sequence_head(make_head, s, hv);
      load_state(io, s, hv, plan.V, S);
      const index_t P = std::min(plan.prefix_len, p.T());
      run_recurrent(slice_head(p, 0, P), padded.data(), padded.cols(), ws);
      read_state(slice_head(p, 0, P), S, prefix_buffer.data(), prefix_buffer.data() + plan.Kf);
      if (P < p.T()) run_recurrent(slice_head(p, P, p.T() - P), padded.data(), padded.cols(), ws);
      store_state(io, s, hv, plan.V, S);
    }
    RecurrentPrefillKeep::give_back(std::move(scratch));
  });
}

// A rank-1 row as the [1, n] matrix a HeadProblem expects (one token).
template <class T>
TensorView<T, 2> as_token(const TensorView<T, 1>& row) {
  return TensorView<T, 2>(row.data(), {1, row.size(0)}, {0, row.stride(0)});
}

// The one-token head of a step's batch row b and value head hv: the q/k rows of its q/k head
// (r for rwkv6), its v row and output row. Gates, maps and readout are the op's to add. E: the
// storage type of q/k/v (float, bf16, f16; InputRows widens 16-bit rows as the token loads).
template <class E>
HeadProblem step_head(const ConstView<E, 3>& q, const ConstView<E, 3>& k, const ConstView<E, 3>& v,
                      const TensorView<float, 3>& o, const Dims& d, index_t b, index_t hv) {
  HeadProblem p;
  const index_t h = hv / d.heads_per_qk();
  p.q = as_token(q[b][h]);
  p.k = as_token(k[b][h]);
  p.v = as_token(v[b][hv]);
  p.o = as_token(o[b][hv]);
  return p;
}

// Decode step, in place on the state pool [S,HV,Kf,V] (and normalizer [S,HV,Kf] when
// normalizing). make_head(b, hv) returns the one-token HeadProblem of batch row b. Row b steps
// pool row state_indices[b] (b without slots; -1: skipped, output untouched), zeroed first when
// has_initial_state[b] is false. `batch` is validated (check_step_batch). A state whose last
// dimension is strided is staged through a contiguous copy. Allocates nothing.
template <class MakeHead>
void run_step(index_t B, index_t HV, index_t K, index_t Kf, index_t V, bool normalize, const TensorView<float, 4>& state,
              const TensorView<float, 3>& normalizer, const SequenceBatch& batch, const Executor& executor,
              MakeHead&& make_head) {
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
      const index_t row = batch.slotted() ? batch.state_indices[b] : b;
      if (row < 0) continue;
      const auto s = state[row][hv];
      const bool fresh = batch.has_initial_state.has_value() && !batch.has_initial_state[b];
      if (fresh) {
        for (index_t r = 0; r < Kf; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = 0.f;
        if (normalize)
          for (index_t r = 0; r < Kf; ++r) normalizer(row, hv, r) = 0.f;
      }
      const HeadProblem p = make_head(b, hv);
      const TokenOperands x = load_token(p, 0, ws);
      const bool exclusive = p.readout == Readout::exclusive_bonus;
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
        const auto z = normalizer[row][hv];
        recurrent_token(z.data(), z.stride(0), Kf, 1, xz, exclusive, ws.o() + V);
      }
      store_output_row(p, 0, ws.o());
    }
  });
}

}  // namespace seqmix::detail::la

namespace seqmix {

/// Frees the memory the calling thread keeps for the prefills of the diagonal-decay family
/// (gated_linear_attention, simple GLA, linear_attention, rwkv6), kept across calls so that a call
/// does not fault fresh pages in: for the recurrent form the working states of the heads one
/// parallel block runs and their token operands, for the chunked form a block's workspace (state
/// and chunk matrices) and its group's states, and for the recurrent form's time split (more
/// threads than sequences x heads) the segments' end states, on the calling thread, and a
/// correction's scratch. At most 64 MiB per thread for each (a call that needs more frees its
/// memory when it ends). Each thread that ran such a block (the caller's and every pool worker)
/// keeps its own. Call it when the memory is wanted elsewhere; not while such a call runs on this
/// thread. The next call allocates again.
inline void linear_attention_release_thread_scratch() {
  detail::la::RecurrentPrefillKeep::release();
  detail::la::ChunkedPrefillKeep::release();
  detail::la::SegmentStatesKeep::release();
  detail::la::SegmentCorrectionKeep::release();
}

}  // namespace seqmix
