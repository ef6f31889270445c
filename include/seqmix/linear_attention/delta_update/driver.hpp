// Runs a delta_rule / gated_delta_rule prefill item (one sequence and value head) or a decode
// step over all (row, value head) pairs: per-token loading, state hand-in and hand-out, the
// chunked WY form or the recurrent form. Internal.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/delta_update/head.hpp"
#include "seqmix/linear_attention/delta_update/recurrent.hpp"
#include "seqmix/linear_attention/delta_update/sequences.hpp"
#include "seqmix/linear_attention/delta_update/wy.hpp"

namespace seqmix::delta_update {

/// One sequence of a prefill, as choose_delta_algorithm sees it. The gate's kind enters only
/// through its rows (per-channel log-decays are one more row per token, kUncachedRowSteps): with
/// no gate, a scalar gate or per-channel gates the crossover fell at the same points while the
/// rows stayed cached (README.md), each gate's extra work costing both forms alike.
struct DeltaShape {
  index_t tokens;  ///< the sequence's length
  index_t K, V;    ///< key and value head sizes
  index_t heads;   ///< value heads (HV): the sequence's rows of all heads decide whether they stay cached
  index_t chunk;   ///< the chunked form's chunk size
  Bf16Compute compute = Bf16Compute::fp32;  ///< dot: the chunked form's products on bf16 dot products
  index_t input_bytes = 4;    ///< bytes per element of q, k and v (2: bf16 / f16 storage)
  bool channel_gate = false;  ///< per-channel log-decays (KDA): a row of K floats per token and head
  /// The value columns each task of the call runs (run_delta_items splits an item into blocks of
  /// columns when there are fewer items than threads; choice_value_block); 0: all of V.
  index_t value_block = 0;
};

/// The value columns whose work the counts compare: a block of `s.value_block` columns when it
/// is whole 4-vector tiles of the recurrent kernel (64 columns on AVX-512), else all of V. Both
/// forms run each block on its own (the chunked one repeating the chunk's K-side work per
/// block), so a block compares as a call with V = its width. Narrower blocks keep all of V: the
/// counts' 1-vector tiles were not refitted for the two-token pass, where a 1-vector tile costs
/// about a third of a 4-vector one, not the half counted (K = 64 and 128, README.md), and counted
/// at V = 32 they would send K = V = 64's blocks of 32 columns to the chunked form, which measured
/// 1.2-1.4x slower there (two threads, H1).
inline index_t counted_columns(const DeltaShape& s, index_t width) {
  const index_t block = s.value_block;
  if (block <= 0 || block >= s.V || block % (4 * width) != 0) return s.V;
  return block;
}

/// Steps per row of S of a 1-vector column tile in the two-token pass: a third of a 4-vector
/// tile's 4 (recurrent_token_steps).
constexpr double kOneVectorTileSteps = 4.0 / 3.0;

/// The recurrent kernel's cost of one token of one head, in dependent steps (recurrent.hpp): each
/// column tile runs two sweeps over the K rows of S, each row waiting on the previous row's FMA
/// (p += alpha_r S_r, then acc += q_r S_r), so a tile costs 2K steps whatever its width; only a
/// 4-vector tile, bound by its loads, stores and 12 vector operations per row rather than by the
/// chain, costs twice that; a scalar tail column is a tile of its own. `width`: floats per vector
/// (the kernel's tiles are simd::kWidth wide). Measured (one thread, per token and head): 0.036 us
/// at K = V = 16 (32 steps), 0.12-0.13 at 32 (128), 0.25 at 48 (288), 0.23-0.27 at 64 (256),
/// 0.77-1.1 at 96 (768), 1.2-1.5 at 128 (1024, S no longer in L1): about 1 ns per step. The
/// prefill's two-token pass (advance_pair, 1.2x / 1.5x faster at K = V = 64 / 128 alone) left the
/// crossover where these counts put it: re-measured with it (2026-12-07, one and two threads, load
/// 1.5-8), the chunked form still wins at K = V = 128 from 64-256 tokens (recurrent / chunked
/// 0.96-1.05 at T 64, 1.03-1.8 from T 256) and the recurrent kernel at K = V = 64 while the rows
/// stay cached (0.64-0.85). Since 2026-12-08 a 1-vector tile counts a third of a 4-vector one
/// (4K / 3 steps, kOneVectorTileSteps), as the two-token pass runs it (README.md, "Value blocks":
/// 0.8 K ns against 2.4 K ns per tile, Zen 5); counted at half, K = V = 48 went chunked where the
/// recurrent kernel is faster on both kinds measured (recurrent / chunked 0.67-0.93 on Zen 5,
/// 0.68-0.82 on Zen 4: README.md, "On Zen 4 (2026-12-08)").
inline double recurrent_token_steps(index_t K, index_t V, index_t width) {
  const index_t wide = V / (4 * width), narrow = V % (4 * width) / width, tail = V % width;
  const double per_row = 4.0 * static_cast<double>(wide) + kOneVectorTileSteps * static_cast<double>(narrow) +
                         2.0 * static_cast<double>(tail);
  return static_cast<double>(K) * per_row;
}

/// 7.5: the chunked form's flops per vector lane in the time of one recurrent step (120 flops per
/// step on 16 lanes). A step is one FMA latency, 4 cycles, so this is the chunked form at about
/// one vector FMA per cycle, half the FMA peak, which is what its small products reach (README.md,
/// "Where a chunk's time goes"). Fitted, with the next two, on the points measured below. On Zen 4
/// (half the FMA rate per core) both forms take 1.1-1.4 ns per counted step alike (K 48-128), so it holds
/// there too (README.md, "On Zen 4 (2026-12-08)").
constexpr double kChunkedFlopsPerLaneStep = 7.5;

/// 1.5: how much faster the chunked form's flops run on bf16 dot products (Bf16Compute::dot, where
/// the build has them: detail::kNativeBf16Dot). Each instruction does two multiply-adds per lane
/// but the solve, masks and right-hand side stay fp32; fitted on 180 points (scalar gate, K = V
/// from 16 to 128, H 4-32, T 4-2048, one thread: the choice then loses more than 5% at 4, at most
/// 1.12x; counted at fp32's rate it lost more than 20% at 21 points, up to 1.83x, the chunked
/// form winning from 16-32 tokens at K = V = 32 and 64 with these products).
constexpr double kBf16DotFlopsRatio = 1.5;

/// 30 steps: what each token costs the chunked form beside its flops (its rows' loads into the
/// chunk buffers, decays, masks and stores).
constexpr double kChunkedTokenSteps = 30;

/// 700 steps: what each chunk costs beside its flops and tokens (starting its products and
/// solve, decaying and storing the state); it keeps a few tokens on the recurrent kernel.
constexpr double kChunkSteps = 700;

/// The chunked form's cost of a sequence per token and head, in recurrent steps: its flops (the
/// recurrence's 6KV, the scores 2K(L+1), the solve and M U 2VL, for chunks of L tokens) at
/// kChunkedFlopsPerLaneStep, its per-token work and its chunks' fixed costs.
inline double chunked_token_steps(const DeltaShape& s, index_t width) {
  const double T = static_cast<double>(s.tokens), K = static_cast<double>(s.K);
  const double V = static_cast<double>(counted_columns(s, width));
  const double L = static_cast<double>(std::min(s.tokens, s.chunk));
  const double chunks = std::ceil(T / static_cast<double>(s.chunk));
  const double flops = 6 * K * V + 2 * K * (L + 1) + 2 * V * L;
  const bool bf16_dot = s.compute == Bf16Compute::dot && detail::kNativeBf16Dot;
  const double rate = kChunkedFlopsPerLaneStep * static_cast<double>(width) * (bf16_dot ? kBf16DotFlopsRatio : 1.0);
  return flops / rate + kChunkedTokenSteps + kChunkSteps * chunks / T;
}

/// 16 MiB: beyond this many bytes of rows of one sequence (q, k, v, the outputs and per-channel
/// log-decays of all its heads), the rows no longer stay in the cache between the calls that
/// write and read them (the L3 share of the 2-core Zen 5 slice this was measured on), and each
/// token's rows come from memory. The recurrent kernel walks one head's rows from the first token
/// to the last, each row H K elements from the previous one, on a page of its own; even asked for
/// 8 tokens ahead (kRecurrentRowsAhead) they then cost it about 50 ns each, where the chunked form
/// reads a token's rows of all heads of its task together. Measured at K = V = 64, every gate,
/// fp32 and bf16 rows, recurrent / chunked (README.md, "Which prefill runs"): 0.64-0.85 up to 4
/// MiB of rows, 0.73-1.27 at 8-16 MiB (both forms alternated in one process; the automatic
/// choices of an 8 MiB threshold and of none, as separate binaries: 0.74-1.20 at 16 MiB, noisy),
/// 1.00-1.27 at 20-32 MiB, 1.07-1.84 from 64 MiB. (Before the rows were asked for ahead it was
/// 8 MiB.) 32 MiB since the two-token pass asks for its rows during its first sweep (AheadLines,
/// 2026-12-07): recurrent / chunked per token and head 0.76-0.86 at 16 MiB (H16 T1024), 0.78-0.93
/// at 32 MiB (H16 T2048, H32 T1024, H4 T8192; K = V = 32 H16 T4096 0.72-0.76, K = V = 16 H16
/// T8192 0.83-0.99), 1.16-1.58 at 64 MiB (H16 T4096): scalar and per-channel gates and none, one
/// thread, load 4.1-4.2 (README.md, "The rows asked for during the pass"). On Zen 4 (2026-12-08)
/// the scalar gate agrees (chunked 1.08-1.16x faster from 48 MiB), but KDA at 40-60 MiB runs
/// 1.04-1.28x faster recurrent: not fixable by this threshold alone (README.md, "On Zen 4").
constexpr double kCachedRowBytes = 32.0 * (1 << 20);

/// 50 steps (about 50 ns): what each row of a token (q, k, v, output, per-channel log-decays) adds
/// to the recurrent kernel once the rows are not cached. Per row, not per byte: 16-bit rows cost
/// as much as fp32 ones (one page each either way). At K = V = 64 the recurrent kernel's time per
/// token and head rose from 0.22 to 0.47 us between 4 and 64 MiB of rows, the chunked form's from
/// 0.32 to 0.38 us: about 0.19 us more for 4 rows. At K = V = 128 the kernel's own 1.1 us per token
/// hides most of it (0.08 us more), so the term only decides where the kernel is short.
constexpr double kUncachedRowSteps = 50;

/// Bytes of one token's rows of one head: q, k, v in their storage, the fp32 output row and
/// per-channel log-decays.
inline double token_row_bytes(const DeltaShape& s) {
  const double K = static_cast<double>(s.K), V = static_cast<double>(s.V);
  return (2 * K + V) * static_cast<double>(s.input_bytes) + 4 * V + (s.channel_gate ? 4 * K : 0.0);
}

/// The recurrent kernel's cost of a sequence per token and head, in steps: its tiles, plus
/// kUncachedRowSteps per row of a token once the sequence's rows of all heads pass
/// kCachedRowBytes. (From 2026-12-06 to 2026-12-07 the term was left out: measured at load 14-17,
/// other sessions sharing the caches, recurrent / chunked stayed at 0.67-0.75 up to 64 MiB of
/// rows; at load 1.2-8 the chunked form is 1.0-1.8x faster beyond 16 MiB of rows, README.md.)
inline double recurrent_sequence_steps(const DeltaShape& s, index_t width) {
  const double rows = token_row_bytes(s) * static_cast<double>(s.heads) * static_cast<double>(s.tokens);
  const double row_count = s.channel_gate ? 5 : 4;
  return recurrent_token_steps(s.K, counted_columns(s, width), width) +
         (rows > kCachedRowBytes ? kUncachedRowSteps * row_count : 0.0);
}

/// Picks the prefill algorithm of one sequence by comparing the two forms' operation counts
/// (chunked_token_steps against recurrent_sequence_steps), not times, so machines with the same
/// vector width pick alike (the 16-lane AVX-512 EPYC and Xeon). What the counts follow was
/// measured (README.md, "Which prefill runs": both forms alternated in one process, K = V from
/// 16 to 128, K 64 V 128 and K 128 V 64, H 1-32, T 4-16384, no gate, scalar and per-channel
/// gates, fp32 and bf16 rows, one and two threads): the recurrent kernel's time follows its column
/// tiles, not K V, so it wins at K = V = 16 and 64 (one tile per row) and the chunked form at
/// 48, 96 and 128 from a few tokens; at 32 they are within 10% of each other; once the sequence's
/// rows of all heads pass kCachedRowBytes the chunked form wins at every K measured (1.2-1.6x at
/// 32-64 MiB of rows). With value blocks (s.value_block, counted_columns) the tiles and the
/// chunked form's products are a block's: at K = V = 128 split into two blocks of 64 columns (H1
/// on two threads) the recurrent kernel measured 0.79-0.89 of the chunked form's time, where the
/// counts over all of V chose the chunked form. `width`: floats per vector, the build's
/// simd::kWidth unless a test asks for another.
inline DeltaAlgorithm choose_delta_algorithm(const DeltaShape& s, index_t width = simd::kWidth) {
  if (s.tokens <= 0) return DeltaAlgorithm::recurrent;
  return chunked_token_steps(s, width) < recurrent_sequence_steps(s, width) ? DeltaAlgorithm::chunked
                                                                           : DeltaAlgorithm::recurrent;
}

/// The form a stream pins for all its segments (chunked/streaming.hpp): the counts of an endless
/// sequence (s.tokens is ignored) whose rows stay cached. A stream cannot know how long it will
/// run, and each segment's call reads only that segment's rows, which stay in the cache between
/// the producer that writes them and the call; so not recurrent_sequence_steps' charge for rows
/// beyond the cache, which would make a stream differ from one call over a short sequence (the
/// segments must equal that call bit for bit at multiples of the chunk). The stream's traits set
/// s.value_block to the block its calls run on the first segment's executor.
inline DeltaAlgorithm choose_stream_delta_algorithm(DeltaShape s, index_t width = simd::kWidth) {
  s.tokens = std::numeric_limits<index_t>::max();
  return chunked_token_steps(s, width) < recurrent_token_steps(s.K, counted_columns(s, width), width)
             ? DeltaAlgorithm::chunked
             : DeltaAlgorithm::recurrent;
}

/// Loads token t of a delta head into the workspace: q (scaled), k, alpha = w * k, decays.
inline TokenOperands load_delta_token(const DeltaHead& p, index_t t, TokenWorkspace& ws) {
  const index_t K = p.K();
  TokenOperands x;
  load_row(p.q, t, p.scale, p.norm, ws.q());
  load_row(p.k, t, 1.f, p.norm, ws.k());
  x.q = ws.q();
  x.k = ws.k();
  if (p.v.is_float() && p.v.floats()[t].is_last_dim_contiguous()) {
    x.v = p.v.floats()[t].data();  // used in place
  } else {
    p.v.load(t, ws.v());  // strided, or 16-bit storage widened
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

/// 8 tokens: how far ahead the recurrent prefill asks for a token's rows. One head's rows of
/// consecutive tokens lie H K floats apart (4 KB at H16 K64), a page each, where the hardware
/// prefetchers do not follow, and a token's kernel (about 0.25 us at K = V = 64) fills the
/// reorder buffer before the next token's loads issue: unrequested, each row came from L3 or
/// memory in the token's critical path and the rows' loads took as long as the kernel. Measured
/// (one thread, Gated DeltaNet H16 K = V = 64 T1024, recurrent form, load 7-9): none 8.6-10.8 ms,
/// 2 ahead 6.2-6.4, 4 ahead 7.2-8.7, 8 ahead 4.4-5.0, 12 ahead 4.5-4.6, 16 ahead 4.5-4.9; into L2
/// instead of L1 4.6-6.9 (8 ahead 4.9-6.9). 8 tokens of rows (4 rows each, 8 KB at K = V = 64)
/// stay well inside L1 beside the state's column tile.
constexpr index_t kRecurrentRowsAhead = 8;

/// The cache lines of the rows a pair of tokens asks for ahead, handed to the two-token pass
/// (PairOperands::ahead), which asks for one per row of S in its first sweep. Issued in one burst
/// before the pass (24 lines for two tokens at K = V = 64, 8 more for the outputs) they were not
/// there when used once the rows came from memory: at 16 MiB of rows (H16 K = V = 64 T1024) the
/// q and k loads took 40% of the samples and a token 0.38-0.52 us against 0.21 with the rows in
/// L3; spread, 0.25 (README.md, "The rows asked for during the pass"). fp32 rows with unit stride
/// only; 16-bit rows go through InputRows::prefetch as before, and the outputs (asked for with
/// write intent) in a burst. 128 lines: two tokens' four rows at K = V = 256; rows past them are
/// asked for at once.
using AheadLines = detail::LineList<128, kRowsLocality>;

/// Asks for n floats at p into L1: at once, or (lines given) as lines for the pass to ask for.
inline void request_floats(const float* p, index_t n, AheadLines* lines) {
  if (lines) return lines->add_row(p, n * static_cast<index_t>(sizeof(float)));
  detail::prefetch_row<false, kRowsLocality>(p, n);
}

/// Asks for row t of stored rows: fp32 rows into L1 (or into `lines`); 16-bit rows through
/// InputRows::prefetch.
inline void request_row(const detail::la::InputRows& x, index_t t, AheadLines* lines) {
  if (x.is_float() && x.floats()[t].is_last_dim_contiguous())
    return request_floats(x.floats()[t].data(), x.size(1), lines);
  x.prefetch(t);
}

/// Asks for token t's q, k, v rows, its per-channel log-decays and (direct: written in place)
/// its output row. With `lines` (the two-token pass) the read rows' fp32 lines go there instead.
inline void request_token_rows(const DeltaHead& p, index_t t, bool direct, AheadLines* lines = nullptr) {
  request_row(p.q, t, lines);
  request_row(p.k, t, lines);
  request_row(p.v, t, lines);
  if (p.gated() && !p.scalar_gate && p.g[t].is_last_dim_contiguous()) request_floats(p.g[t].data(), p.K(), lines);
  if (direct) detail::prefetch_row<true, kRowsLocality>(p.o.ptr(t), p.V());
}

/// The recurrent prefill of one head on a contiguous state S [K,V]; with `token_states` [T,K,V]
/// given, S is copied there after every token. Without them, and with V a multiple of the
/// vector width, tokens go through S two at a time (advance_pair: half the loads and stores of
/// S, 7 vector operations per element and pair instead of 8; the kernel alone 1.20-1.27x faster
/// at K = V = 64 and 1.49-1.52x at 128, one thread, load 15, README.md).
inline void run_recurrent(const DeltaHead& p, float* S, TokenWorkspace& ws, PairWorkspace& pair,
                          const TensorView<float, 3>& token_states = TensorView<float, 3>()) {
  const bool direct = p.o.is_last_dim_contiguous();
  const index_t K = p.K(), V = p.V(), T = p.T();
  const bool pairs = !token_states.has_value() && V % simd::kWidth == 0;
  index_t t = 0;
  for (; pairs && t + 2 <= T; t += 2) {
    AheadLines ahead;
    if (t + kRecurrentRowsAhead + 1 < T) {
      request_token_rows(p, t + kRecurrentRowsAhead, direct, &ahead);
      request_token_rows(p, t + kRecurrentRowsAhead + 1, direct, &ahead);
    }
    const TokenOperands x1 = load_delta_token(p, t, ws), x2 = load_delta_token(p, t + 1, pair.second);
    float* o1 = direct ? p.o.ptr(t) : ws.o();
    float* o2 = direct ? p.o.ptr(t + 1) : pair.second.o();
    PairOperands x = pair_operands(x1, x2, K, pair);
    x.ahead = ahead.lines();
    advance_pair(S, V, K, V, x, o1, o2);
    if (!direct)
      for (index_t c = 0; c < V; ++c) p.o(t, c) = o1[c], p.o(t + 1, c) = o2[c];
  }
  for (; t < T; ++t) {
    if (t + kRecurrentRowsAhead < T) request_token_rows(p, t + kRecurrentRowsAhead, direct);
    const TokenOperands x = load_delta_token(p, t, ws);
    float* o = direct ? p.o.ptr(t) : ws.o();
    advance_token(Update::delta, S, V, K, V, x, o);
    if (!direct)
      for (index_t c = 0; c < V; ++c) p.o(t, c) = o[c];
    if (token_states.has_value()) store_item_state(token_states[t], S, K, V);
  }
}

/// One (sequence, value head) item of a prefill: its head views and state views.
struct DeltaItem {
  DeltaHead p;
  ConstView<float, 2> initial;        ///< [K,V], empty: start from zeros
  TensorView<float, 2> final_state = {}; ///< [K,V], optional
  TensorView<float, 3> token_states = {}; ///< [T,K,V], optional
  DeltaAlgorithm algorithm;           ///< automatic: run_delta_items chooses on `shape`
  DeltaShape shape{};                 ///< the sequence as choose_delta_algorithm sees it (automatic only)
};

/// The chunked WY form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp): the
/// engine's item number i is items[i] (the caller's array of bound items); the state S [K,V]
/// lives in the per-thread scratch; the steps are wy.hpp's.
struct WyKernel {
  const DeltaItem* items;
  index_t chunk;

  using Workspace = ItemScratch;
  using Head = const DeltaItem*;

  Head begin_head(index_t i, Workspace& ws) const {
    const DeltaItem* item = items + i;
    load_item_state(item->initial, ws.S);
    ws.wy_for(chunk);
    return item;
  }
  index_t tokens(Head h) const { return h->p.T(); }
  void load_chunk(Head h, index_t t0, index_t L, Workspace& ws) const { wy_load_chunk(h->p, t0, L, *ws.wy); }
  void state_to_output(Head h, index_t t0, index_t L, Workspace& ws) const { wy_read_state(h->p, t0, L, ws.S, *ws.wy); }
  void intra(Head, index_t, index_t L, Workspace& ws) const { wy_intra(L, *ws.wy); }
  void update_state(Head h, index_t, index_t L, Workspace& ws) const { wy_update_state(h->p, L, ws.S, *ws.wy); }
  void store_outputs(Head h, index_t t0, index_t L, Workspace& ws) const { wy_store_outputs(h->p, t0, L, *ws.wy); }
  void end_head(Head h, Workspace& ws) const { store_item_state(h->final_state, ws.S.data(), ws.S.rows(), ws.S.cols()); }
};

/// Runs one bound item from its initial state to its final state in `ws`. The state is read
/// completely before anything is written, so final_state may alias initial.
inline void run_delta_item(const DeltaItem& item, index_t chunk, ItemScratch& ws) {
  if (item.algorithm == DeltaAlgorithm::chunked) {
    seqmix::chunkwise::run_item(WyKernel{&item, chunk}, 0, chunk, ws);
    return;
  }
  load_item_state(item.initial, ws.S);
  run_recurrent(item.p, ws.S.data(), *ws.tok, *ws.pair, item.token_states);
  store_item_state(item.final_state, ws.S.data(), ws.S.rows(), ws.S.cols());
}

/// The calling thread's carried states of a task's heads ([K,V] each), kept across calls.
inline std::vector<RowMatrix>& group_states(index_t n, index_t K, index_t V) {
  thread_local std::vector<RowMatrix> states;
  if (static_cast<index_t>(states.size()) < n) states.resize(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) states[static_cast<std::size_t>(i)].resize(K, V);
  return states;
}

/// Runs the items of one task (heads of one sequence, all of V): chunked items chunk by chunk
/// together (chunkwise::run_items_together, each head's state swapped into ws.S), so a token's
/// q/k/v/o rows of all heads are read and written from the same pages. Per head the operations
/// and their order are run_delta_item's. The heads of one sequence share its algorithm (chosen
/// on its length); recurrent ones run one after another.
inline void run_heads_together(const DeltaItem* items, index_t n, index_t chunk, ItemScratch& ws) {
  if (items[0].algorithm != DeltaAlgorithm::chunked) {
    for (index_t i = 0; i < n; ++i) run_delta_item(items[i], chunk, ws);
    return;
  }
  thread_local std::vector<WyKernel::Head> heads;
  seqmix::chunkwise::run_items_together(WyKernel{items, chunk}, 0, n, chunk, heads, group_states(n, ws.K, ws.V), ws);
}

/// Runs every item (all of V) in tasks of `group` heads of one sequence
/// (chunkwise::items_together_group), longest
/// sequences first: run_heads_together on each task's items, bound by bound(it, columns).
template <class Bound>
void run_item_groups(const Executor& executor, index_t sequences, index_t H, index_t K, index_t V, index_t chunk,
                     index_t group, Bound&& bound) {
  const index_t per_sequence = (H + group - 1) / group;
  executor.run(sequences * per_sequence, [&](index_t task) {
    thread_local std::vector<DeltaItem> items;
    const index_t h0 = task % per_sequence * group, n = std::min(group, H - h0);
    items.clear();
    for (index_t h = h0; h < h0 + n; ++h) items.push_back(bound(task / per_sequence * H + h, ValueColumns{0, V}));
    run_heads_together(items.data(), n, chunk, item_scratch(K, V));
  });
}

/// The calling thread's chunk-factor records (wy.hpp's WyFactors) of a call that shares them
/// between value blocks, and each item's first record; kept across calls, grown on demand.
struct FactorStore {
  AlignedVector<float> records;  ///< WyFactors::floats(chunk, K) floats per (item, chunk)
  std::vector<index_t> first;  ///< item i's chunks are records [first[i], first[i + 1])
  std::vector<DeltaItem> items;  ///< each item bound over all of V (pass 1 reads its keys' side)
  // The chunk-parallel form (ChunkSegments): per item its segment count, its first segment and
  // its first readout row; per segment its first chunk, a [K,V] state and a [K,K] transition;
  // per token of a segmented item a readout row [K]; the plan of passes A and C
  // (plan_chunk_segments).
  std::vector<index_t> segments, first_segment, first_row;
  std::vector<char> narrow_first;      ///< item i's first segment runs narrow value blocks (plan_segments)
  std::vector<index_t> segment_start;  ///< each segment's first chunk, item i's from first_segment[i] on
  std::vector<index_t> part_start;     ///< pass C's parts: item i's first chunks from first_part[i] on
  std::vector<index_t> first_part;     ///< item i's parts are [first_part[i], first_part[i + 1])
  std::vector<index_t> first_fix_task;  ///< each item's first task of pass C
  /// Pass A's tasks, longest first: (item, task of the item as ChunkSegments::first_pass numbers them).
  std::vector<std::pair<index_t, index_t>> run_tasks;
  AlignedVector<float> states, transitions, readout;
};

/// The calling thread's FactorStore.
inline FactorStore& factor_store() {
  thread_local FactorStore store;
  return store;
}

/// A thread's workspace for computing chunk factors (no value columns), kept across calls.
inline WyWorkspace& factor_scratch(index_t chunk, index_t K) {
  thread_local std::optional<WyWorkspace> ws;
  if (!ws || ws->KQ.rows() != 2 * chunk || ws->KQ.cols() != K) ws.emplace(chunk, K, 0);
  return *ws;
}

/// Runs chunks [c0, c1) of head p's value block (or of a transition's key block) on S from the
/// chunks' factor records (f0: the head's first). Each chunk first asks for the next chunk's
/// record (57 KB at chunk 32, K = 128) into L2: another task wrote it, so it comes from L3 or
/// memory, and the hardware prefetchers stop at every 4 KB page of it. On a CountingExecutor
/// claiming 64 threads (gdn-h4, K = V = 128, T 1024, loaded AMD EPYC Zen 5) the block tasks that
/// read a segment's records first took 1.7-2x the others; with the request 1.3-1.5x, and the
/// chunk-parallel pass A's work fell 5-8% (docs/parallel_grain.md, the delta-rule bullet).
inline void run_block_chunks(const DeltaHead& p, index_t chunk, float* f0, index_t c0, index_t c1, RowMatrix& S,
                             WyWorkspace& wy) {
  const index_t K = p.K(), stride = WyFactors::floats(chunk, K);
  for (index_t c = c0; c < c1; ++c) {
    const index_t t0 = c * chunk;
    if (c + 1 < c1) detail::prefetch_row<false, 2>(f0 + (c + 1) * stride, stride);
    wy_block_chunk(p, t0, std::min(chunk, p.T() - t0), WyFactors{f0 + c * stride, chunk, K}, S, wy);
  }
}

/// Chunks of a T-token item.
inline index_t item_chunks(index_t T, index_t chunk) { return (T + chunk - 1) / chunk; }

/// Runs a chunked item's value block from the factors of its chunks (the records from `f0` on).
inline void run_delta_block(const DeltaItem& item, index_t chunk, float* f0, ItemScratch& ws) {
  load_item_state(item.initial, ws.S);
  run_block_chunks(item.p, chunk, f0, 0, item_chunks(item.p.T(), chunk), ws.S, ws.wy_for(chunk));
  store_item_state(item.final_state, ws.S.data(), ws.S.rows(), ws.S.cols());
}

/// 3: the fewest value blocks per item for which sharing the chunk factors (run_delta_items)
/// pays. Its records (about 132 KB per chunk at K = 128) are written by the first pass and read
/// by every block from L3 or memory, where the per-block path finds its operands in L1; measured
/// on a CountingExecutor claiming 64 threads (serial, one core's thread CPU time, Gated DeltaNet
/// K = V = 128, loaded AMD EPYC Zen 5): 2 blocks (H32 T512) 36.0 -> 35.0 ms of work, the barrier
/// between the passes then costing more (est. 64-core time 0.48 -> 0.59 ms); 3 blocks (H22
/// T512) 22.5 -> 18.8 ms; 4 blocks (H4 T1024) 13.2 -> 9.6 ms. Never reached with 1 or 2 threads.
constexpr index_t kShareFactorsMinBlocks = 3;

/// 64 MiB: the most a call keeps in its FactorStore, chunk-factor records and the chunk-parallel
/// form's states, transitions and readout (each calling thread keeps its store for its next
/// call). A long prefill with few items would need far more (16 heads at T = 32768,
/// K = 128: 8192 records of 132 KB, 1.1 GB) and read them back from memory in every block, so
/// above this it keeps the per-block path: more work, no retained memory.
constexpr std::size_t kShareFactorsMaxBytes = std::size_t{64} << 20;

/// 256: the fewest tokens per segment of the chunk-parallel form. Beside its chunks, each segment
/// after the first costs its start state, chained through the earlier segments' [K,K]
/// transitions (2 K^2 w flops per step and block of w columns), and its readout correction
/// (2 L K w, L its tokens): against the segment's own state work (the reads by k and q and the
/// update, 6 L K w) a chain step is K / 3L of it, a sixth with L = 256 at K = 128. The ratio
/// counts tokens, not chunks, so the chunk size does not move it (4 chunks of 64, 8 of 32).
constexpr index_t kMinSegmentTokens = 256;

/// Whole chunks of `chunk` tokens that make a segment of at least kMinSegmentTokens (1 for a
/// chunk of 256 tokens or more).
inline index_t min_segment_chunks(index_t chunk) {
  return std::max<index_t>(1, (kMinSegmentTokens + chunk - 1) / chunk);
}

/// Segments per item of the chunk-parallel form for `items` items of `blocks` value blocks and
/// `key_blocks` blocks of a transition's columns on `concurrency` threads: the most for which the
/// first pass's tasks (`blocks` for the first segment, `blocks + key_blocks` for each other) do
/// not outnumber the threads; 1 (no split) when not even two segments fit, which 1 and 2 threads
/// never do.
inline index_t chunk_segments(index_t items, index_t blocks, index_t key_blocks, int concurrency) {
  const index_t per_item = items > 0 ? concurrency / items : 0;
  if (per_item < 2 * blocks + key_blocks) return 1;
  return 1 + (per_item - blocks) / (blocks + key_blocks);
}

/// 0.7: what a chunk of a narrow value block (half the columns, kMinValueBlock / 2) costs
/// against a chunk of a block of kMinValueBlock columns, both from the shared chunk factors: the
/// narrow block runs a one-vector tile and reads the same record. Measured (gdn-h4, K = V = 128,
/// 32 chunks of 32 per task, serial CountingExecutor claiming 64 threads, -O2, load 4, two runs):
/// 152-158 us a task of 16 columns, 216-226 us of 32.
constexpr double kNarrowBlockCost = 0.7;

/// How the chunk-parallel form may split the call's items: `per_item` threads for each (0: no
/// split), `first_blocks` value blocks of the first segment, each chunk of them costing
/// `first_cost` (1, or kNarrowBlockCost for narrow ones), `blocks` value blocks and `key_blocks`
/// blocks of a transition's columns of every other segment.
struct SegmentShape {
  index_t per_item = 0, first_blocks = 1;
  double first_cost = 1.0;
  index_t blocks = 1, key_blocks = 1;
};

/// Appends the first chunk of each segment of an item of `chunks` chunks (0 alone: not split),
/// segments of at least `min_chunks`. Pass A runs `first_blocks` tasks for the first segment and
/// `blocks + key_blocks` (a group) for each other, each over its segment's whole length, so the
/// call ends with its longest task: the first segment's tasks need no transition, and when they
/// are narrow blocks (shape.first_cost < 1) it is longer than the others by 1 / first_cost, so
/// that all tasks take about as long. gdn-h4 (16 threads per item, 32 chunks of 32): 8 narrow
/// blocks + 4 + 4 blocks over 19 + 13 chunks, the tasks 13.3 and 13 chunks of 32 columns long,
/// where 4 + (4 + 4) blocks over 16 + 16 chunks took 16 and left 4 threads idle. Otherwise (or
/// when the later segments would be under `min_chunks`) the segments are equal: as many as the
/// groups fit, each at least `min_chunks`. Returns whether the first segment is the longer one.
inline bool plan_segments(index_t chunks, index_t min_chunks, const SegmentShape& shape, std::vector<index_t>& starts) {
  starts.push_back(0);
  const index_t group = shape.blocks + shape.key_blocks, rest = shape.per_item - shape.first_blocks;
  if (rest < group || chunks < 2 * min_chunks) return false;
  const index_t full = rest / group;  // later segments
  const double first = 1.0 / shape.first_cost;  // the first segment's length in later ones'
  const index_t head = std::lround(static_cast<double>(chunks) * first / (first + static_cast<double>(full)));
  if (first > 1.0 && head < chunks && (chunks - head) / full >= min_chunks) {
    for (index_t s = 0; s < full; ++s) starts.push_back(head + (chunks - head) * s / full);
    return true;
  }
  const index_t equal = std::min(1 + full, chunks / min_chunks);
  for (index_t s = 1; s < equal; ++s) starts.push_back(chunks * s / equal);
  return false;
}

/// 1: pass C's cost of correcting one chunk's outputs (an [L,K] x [K,w] product), the unit of
/// plan_parts; an advance of a start state through a segment (S = A S + B, [K,K] x [K,w]) costs
/// K / L of them.
inline double advance_cost(index_t K, index_t chunk) { return static_cast<double>(K) / static_cast<double>(chunk); }

/// Appends pass C's parts of an item (each part's first chunk, then the end, `chunks`), whose
/// segments after the first start at `starts` [1, n): the fewest parts, at most `parts`, whose
/// costs' maximum is the least. A part from chunk c of segment s first chains the start state
/// through segments 1 .. s - 1 (s - 1 advances: the first segment's final state is stored), then
/// corrects its chunks, advancing once more where it enters a segment, and the part that ends
/// the item advances once more for the final state: so the last part gets fewer chunks (gdn-h4,
/// 13 + 13 + 6 chunks, advance 4 at K = 128, chunk 32: parts of 9, 5 + 1, 4 and 1 chunks, each
/// costing 9, where equal parts of each segment cost 7-13).
inline void plan_parts(const index_t* starts, index_t n, index_t chunks, index_t parts, double advance,
                       std::vector<index_t>& part_start) {
  const auto segment_of = [&](index_t c) {
    index_t s = 1;
    while (s + 1 < n && starts[s + 1] <= c) ++s;
    return s;
  };
  double worst = 0.0;  // the costliest part of the last fill (a part of one chunk may pass `most`)
  const auto fill = [&](double most, std::vector<index_t>* out) {  // greedy parts of cost <= most; their count
    index_t used = 0;
    worst = 0.0;
    for (index_t c = starts[1]; c < chunks; ++used) {
      if (out) out->push_back(c);
      index_t s = segment_of(c), taken = 0;
      double cost = advance * static_cast<double>(s - 1);
      while (c < chunks) {
        const bool enters = taken > 0 && s + 1 < n && c == starts[s + 1];
        const double with = cost + 1.0 + (enters ? advance : 0.0);
        if (taken > 0 && with + (c + 1 == chunks ? advance : 0.0) > most) break;
        cost = with, s += enters ? 1 : 0, ++c, ++taken;
      }
      worst = std::max(worst, cost + (c == chunks ? advance : 0.0));
    }
    return used;
  };
  double low = 0.0, high = static_cast<double>(chunks - starts[1]) + advance * static_cast<double>(n);
  for (int step = 0; step < 12; ++step) {  // the least most-cost that `parts` parts allow (to 1e-2 of a chunk)
    const double mid = 0.5 * (low + high);
    (fill(mid, nullptr) <= parts ? high : low) = mid;
  }
  const index_t at_high = fill(high, nullptr);
  const double least = worst;
  fill(fill(least, nullptr) <= at_high ? least : high, &part_start);  // the fewest parts with that maximum
  part_start.push_back(chunks);
}

/// The value columns each task runs, for the automatic choice (DeltaShape::value_block), given
/// the call's value split and chunk segments: the blocks' width when run_delta_items runs each
/// block on its own from end to end (2 blocks; from kShareFactorsMinBlocks on the chunked form
/// computes the chunk factors once per item, and with segments it splits the sequence, so the
/// whole item's counts stand), else 0 (all of V).
inline index_t choice_value_block(const detail::ValueSplit& split, index_t segments) {
  const bool separate_blocks = split.blocks > 1 && split.blocks < kShareFactorsMinBlocks;
  return separate_blocks && segments < 2 ? split.width : 0;
}

/// The same for a call of `items` (sequence, head) items on `concurrency` threads, from the split
/// run_delta_items makes.
inline index_t choice_value_block(index_t items, index_t K, index_t V, int concurrency) {
  const detail::ValueSplit split = value_blocks(items, V, concurrency);
  const detail::ValueSplit keys = value_blocks(items, K, concurrency);
  return choice_value_block(split, chunk_segments(items, split.blocks, keys.blocks, concurrency));
}

/// The chunk-parallel (sequence-split) form of the chunked fp32 items: when the items' value
/// blocks leave most threads idle, each item's chunks are cut into segments (store.segments)
/// that run at the same time. The update is linear in (S0, v) jointly (slice.hpp), so a segment
/// entering with state S0 gives the outputs and final state of its run from zero plus R S0 and
/// A S0, A [K,K] its transition and R [L,K] its readout: both are what the segment's chunks do
/// to the identity as a state (K columns) with zero values, computed from the same shared chunk
/// records. So:
///  - pass A, parallel over (item, segment, block): the first segment runs for real from the
///    initial state (its outputs final, its final state the next one's start), in narrow value
///    blocks where plan_segments made it the longer one; every other segment runs each value
///    block from zero (outputs and final state local) and each key block of the identity
///    (readout and transition);
///  - pass C, parallel over (item, part of the chunks after the first segment, value block):
///    the part's start state chained through the segments before it (S = A S + B), its chunks'
///    outputs corrected by R S (advancing S where a segment starts), and with the last part the
///    final state A S + B. The parts (plan_parts, balanced by cost, as many as fill the threads
///    at most) keep this pass short: a segment's whole correction on one task took about half of
///    pass A's task time.
/// The correction costs one [L,K] x [K,w] product per block where running the segment again from
/// its start would cost its chunks' whole state work (reads, solves, updates).
struct ChunkSegments {
  FactorStore& store;
  index_t K, V, chunk;
  detail::ValueSplit values, keys;
  detail::ValueSplit narrow;  ///< the first segment's value blocks where store.narrow_first

  /// Item i's first segment's value blocks.
  const detail::ValueSplit& first_values(std::size_t i) const { return store.narrow_first[i] ? narrow : values; }

  index_t segments(std::size_t i) const { return store.segments[i]; }
  /// Chunks [first, last) of segment s of item i.
  index_t first_chunk(std::size_t i, index_t s) const {
    return s < segments(i) ? store.segment_start[static_cast<std::size_t>(store.first_segment[i] + s)]
                           : item_chunks(store.items[i].p.T(), chunk);
  }
  /// Item i's first chunk-factor record.
  float* records(std::size_t i) const { return store.records.data() + store.first[i] * WyFactors::floats(chunk, K); }
  /// Segment s's [K,V] state: the true final state of the first, the zero-start final state of the others.
  float* state(std::size_t i, index_t s) const { return store.states.data() + (store.first_segment[i] + s) * K * V; }
  /// Segment s's transition [K,K] (none for the first segment, whose slot stays unused).
  float* transition(std::size_t i, index_t s) const {
    return store.transitions.data() + (store.first_segment[i] + s) * K * K;
  }
  /// Item i's readout [T, K] (rows of the segments after the first).
  float* readout(std::size_t i) const { return store.readout.data() + store.first_row[i] * K; }

  /// Pass A tasks of item i: its value blocks for the first segment, its value and key blocks for
  /// each other one.
  index_t first_pass_tasks(std::size_t i) const {
    return first_values(i).blocks + (segments(i) - 1) * (values.blocks + keys.blocks);
  }

  /// Pass A, task r of item i (`block`: the item bound to a block of value columns).
  template <class BlockItem>
  void first_pass(std::size_t i, index_t r, BlockItem&& block) const {
    index_t s = 0;
    const detail::ValueSplit* split = &first_values(i);
    if (r >= split->blocks) {
      r -= split->blocks;
      s = 1 + r / (values.blocks + keys.blocks);
      r %= values.blocks + keys.blocks;
      if (r >= values.blocks) return identity_block(i, s, keys.block(r - values.blocks));
      split = &values;
    }
    const ValueColumns cols = split->block(r);
    const DeltaItem item = block(cols);
    ItemScratch& ws = item_scratch(K, cols.width);
    if (s == 0)
      load_item_state(item.initial, ws.S);
    else
      ws.S.setZero();
    run_block_chunks(item.p, chunk, records(i), first_chunk(i, s), first_chunk(i, s + 1), ws.S, ws.wy_for(chunk));
    store_item_state(TensorView<float, 2>(state(i, s) + cols.begin, {K, cols.width}, {V, 1}), ws.S.data(), K,
                     cols.width);
  }

  /// Pass A: key columns `cols` of segment s's readout and transition: the segment's chunks on
  /// the identity's columns with zero values.
  void identity_block(std::size_t i, index_t s, ValueColumns cols) const {
    static const float zero = 0.f;
    DeltaHead p = store.items[i].p;
    p.v = ConstView<float, 2>(&zero, {p.T(), cols.width}, {0, 0});
    p.o = TensorView<float, 2>(readout(i) + cols.begin, {p.T(), cols.width}, {K, 1});
    ItemScratch& ws = item_scratch(K, cols.width);
    ws.S.setZero();
    for (index_t c = 0; c < cols.width; ++c) ws.S(cols.begin + c, c) = 1.f;
    run_block_chunks(p, chunk, records(i), first_chunk(i, s), first_chunk(i, s + 1), ws.S, ws.wy_for(chunk));
    store_item_state(TensorView<float, 2>(transition(i, s) + cols.begin, {K, cols.width}, {K, 1}), ws.S.data(), K,
                     cols.width);
  }

  /// dst [K, w] = columns `cols` of segment s's state [K, V].
  void state_columns(std::size_t i, index_t s, ValueColumns cols, float* dst) const {
    const float* B = state(i, s) + cols.begin;
    for (index_t r = 0; r < K; ++r) std::copy(B + r * V, B + r * V + cols.width, dst + r * cols.width);
  }

  /// next = A S + B over the block's columns (A: segment s's transition, B: its state's columns
  /// from `cols.begin`), S and next [K, w] contiguous.
  void advance(std::size_t i, index_t s, ValueColumns cols, const float* S, float* next) const {
    state_columns(i, s, cols, next);
    small_product({transition(i, s), K, 1}, K, K, S, cols.width, cols.width, next, cols.width, kAdd);
  }

  /// Pass C's parts of item i (plan_parts).
  index_t item_parts(std::size_t i) const { return store.first_part[i + 1] - store.first_part[i]; }
  /// Pass C tasks of item i: its parts of each value block.
  index_t second_pass_tasks(std::size_t i) const { return values.blocks * item_parts(i); }

  /// Pass C, task r of item i: part r / blocks of value block r % blocks. The part's start state
  /// chained from the first segment's final state through the segments before its own, its
  /// chunks' outputs corrected (the state advanced where a segment starts), and, for the part
  /// that ends the item, the final state.
  template <class BlockItem>
  void second_pass(std::size_t i, index_t r, BlockItem&& block) const {
    const index_t* part = store.part_start.data() + store.first_part[i] + i;  // item i's parts' first chunks
    const index_t p = r / values.blocks, c1 = part[p + 1];
    const ValueColumns cols = values.block(r % values.blocks);
    const DeltaItem item = block(cols);
    ItemScratch& ws = item_scratch(K, cols.width);
    const index_t w = cols.width;
    if (static_cast<index_t>(ws.staged.size()) < K * w) ws.staged.resize(static_cast<std::size_t>(K * w));
    float* S = ws.S.data();
    float* next = ws.staged.data();
    state_columns(i, 0, cols, S);  // the first segment's final state: the second one's start
    index_t s = 1;
    for (; first_chunk(i, s + 1) <= part[p]; ++s) {
      advance(i, s, cols, S, next);
      std::swap(S, next);
    }
    for (index_t c = part[p]; c < c1; s += 1) {  // the part's chunks of segment s
      const index_t end = std::min(c1, first_chunk(i, s + 1));
      correct_outputs(i, c, end, item.p, S, w, ws.wy_for(chunk));
      c = end;
      if (c == c1) break;
      advance(i, s, cols, S, next);
      std::swap(S, next);
    }
    if (first_chunk(i, s + 1) == c1 && s + 1 == segments(i) && item.final_state.has_value()) {
      advance(i, s, cols, S, next);
      store_item_state(item.final_state, next, K, w);
    }
  }

  /// The outputs of chunks [c0, c1) (p.o, a block of w columns) += R S0, chunk by chunk through P.
  void correct_outputs(std::size_t i, index_t c0, index_t c1, const DeltaHead& p, const float* S0, index_t w,
                       WyWorkspace& wy) const {
    for (index_t c = c0; c < c1; ++c) {
      const index_t t0 = c * chunk, L = std::min(chunk, p.T() - t0);
      if (c + 1 < c1) detail::prefetch_row<false, 2>(readout(i) + (t0 + L) * K, std::min(chunk, p.T() - t0 - L) * K);
      small_product({readout(i) + t0 * K, K, 1}, L, K, S0, w, w, wy.P.data(), wy.P.cols(), kOverwrite);
      for (index_t t = 0; t < L; ++t) {
        const TensorView<float, 1> o = p.o[t0 + t];
        for (index_t col = 0; col < w; ++col) o(col) += wy.P(t, col);
      }
    }
  }
};


/// Binds every item over all of V into the store with its chunk records' place (shared: chunked
/// fp32; none for the others) and, under the chunk-parallel form's `shape`, its own segments
/// (plan_segments, of at least min_segment_chunks(chunk) chunks; one: not split) and the places of
/// its segment states, transitions and readout rows.
template <class BindItem>
void bind_items(FactorStore& store, index_t items, index_t chunk, const SegmentShape& shape, BindItem&& bind_item) {
  store.items.clear();
  store.first.assign(1, 0);
  store.segments.clear();
  store.first_segment.assign(1, 0);
  store.first_row.assign(1, 0);
  store.segment_start.clear();
  store.narrow_first.clear();
  thread_local std::vector<index_t> starts;
  for (index_t it = 0; it < items; ++it) {
    store.items.push_back(bind_item(it));
    const DeltaItem& item = store.items.back();
    const bool shared = item.algorithm == DeltaAlgorithm::chunked && !item.p.bf16_dot;
    const index_t chunks = shared ? item_chunks(item.p.T(), chunk) : 0;
    starts.clear();
    const bool narrow = plan_segments(chunks, min_segment_chunks(chunk), shape, starts);
    if (!narrow && shape.first_blocks != shape.blocks) {  // equal segments: no narrow blocks
      starts.clear();
      plan_segments(chunks, min_segment_chunks(chunk), {shape.per_item, shape.blocks, 1.0, shape.blocks, shape.key_blocks},
                    starts);
    }
    store.narrow_first.push_back(narrow);
    const index_t own = static_cast<index_t>(starts.size());
    if (own > 1) store.segment_start.insert(store.segment_start.end(), starts.begin(), starts.end());
    store.first.push_back(store.first.back() + chunks);
    store.segments.push_back(own);
    store.first_segment.push_back(store.first_segment.back() + (own > 1 ? own : 0));
    store.first_row.push_back(store.first_row.back() + (own > 1 ? item.p.T() : 0));
  }
}

/// Whether the chunk-factor pass over `store`'s items covers every token of every head of the
/// call: every sequence runs (none is padding) and every item has its chunks' records.
inline bool covers_every_token(const FactorStore& store, const SequenceMap& map, const std::vector<index_t>& order,
                               index_t chunk) {
  if (static_cast<index_t>(order.size()) != map.sequences()) return false;
  for (std::size_t i = 0; i < store.items.size(); ++i)
    if (store.first[i + 1] - store.first[i] != item_chunks(store.items[i].p.T(), chunk)) return false;
  return true;
}

/// Grows v to at least n floats.
inline void reserve_floats(AlignedVector<float>& v, index_t n) {
  if (static_cast<index_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

/// Plans passes A and C of the chunk-parallel form over a call's bound items on `concurrency`
/// threads: pass A's task order (store.run_tasks) and pass C's parts (plan_parts) and task
/// counts. Called right after bind_items, before the factor pass, while the items and the
/// store's vectors are still in cache (after the factor pass writes its records they are not:
/// this planning then cost 3-4 us of the serial part at gdn-h4 against 0.2 us warm).
inline void plan_chunk_segments(const ChunkSegments& plan, int concurrency) {
  FactorStore& store = plan.store;
  const detail::ValueSplit& split = plan.values;
  // Pass A's tasks, longest segment first (a narrow first segment's, then the others), in item
  // order within a length, so that a list schedule ends on its shorter tasks.
  std::vector<std::pair<index_t, index_t>>& tasks = store.run_tasks;
  tasks.clear();
  index_t split_blocks = 0;  // (split item, value block) pairs: pass C's parts share the threads
  const auto add_segment = [&](std::size_t i, index_t s, index_t longest, index_t& next) {  // its tasks if that long
    const bool whole = plan.segments(i) == 1;
    const index_t length = whole ? item_chunks(store.items[i].p.T(), plan.chunk)
                                 : plan.first_chunk(i, s + 1) - plan.first_chunk(i, s);
    if (length < longest) next = std::max(next, length);
    if (length != longest) return;
    const index_t first = whole || s == 0 ? 0 : plan.first_values(i).blocks + (s - 1) * (split.blocks + plan.keys.blocks);
    const index_t count = whole ? split.blocks : s == 0 ? plan.first_values(i).blocks : split.blocks + plan.keys.blocks;
    for (index_t r = first; r < first + count; ++r) tasks.emplace_back(static_cast<index_t>(i), r);
  };
  for (index_t longest = std::numeric_limits<index_t>::max();;) {  // one sweep per distinct length
    index_t next = 0;
    for (std::size_t i = 0; i < store.items.size(); ++i)
      for (index_t s = 0; s < plan.segments(i); ++s) add_segment(i, s, longest, next);
    if (next == 0) break;
    longest = next;
  }
  for (std::size_t i = 0; i < store.items.size(); ++i) split_blocks += plan.segments(i) > 1 ? split.blocks : 0;
  // Pass C's parts, item by item (prefix sums: item i's tasks are [fix_first[i], fix_first[i + 1])).
  const index_t parts = std::max<index_t>(1, concurrency / std::max<index_t>(1, split_blocks));
  std::vector<index_t>& fix_first = store.first_fix_task;
  fix_first.assign(1, 0);
  store.part_start.clear();
  store.first_part.assign(1, 0);
  for (std::size_t i = 0; i < store.items.size(); ++i) {
    const index_t chunks = item_chunks(store.items[i].p.T(), plan.chunk);
    const index_t* starts = store.segment_start.data() + store.first_segment[i];
    const bool as_before = i > 0 && plan.segments(i) > 1 && plan.segments(i) == plan.segments(i - 1) &&
                           chunks == item_chunks(store.items[i - 1].p.T(), plan.chunk) &&
                           std::equal(starts, starts + plan.segments(i), starts - plan.segments(i));
    if (as_before) {  // the same parts as item i - 1 (the heads of one sequence)
      const std::size_t from = static_cast<std::size_t>(store.first_part[i - 1] + static_cast<index_t>(i) - 1);
      for (std::size_t e = from; e < from + static_cast<std::size_t>(plan.item_parts(i - 1)) + 1; ++e)
        store.part_start.push_back(store.part_start[e]);
    } else if (plan.segments(i) > 1) {
      plan_parts(starts, plan.segments(i), chunks, parts, advance_cost(plan.K, plan.chunk), store.part_start);
    } else
      store.part_start.push_back(chunks);  // no parts: the end alone
    store.first_part.push_back(static_cast<index_t>(store.part_start.size()) - static_cast<index_t>(i) - 1);
    fix_first.push_back(fix_first.back() + (plan.segments(i) > 1 ? plan.second_pass_tasks(i) : 0));
  }
}

/// Passes A and C of the chunk-parallel form (ChunkSegments) over a call's bound items, planned
/// (plan_chunk_segments) and pass 1's records written: the items of one segment run
/// whole_block(i, columns) in pass A.
template <class WholeBlock, class Bound>
void run_chunk_segments(const Executor& executor, const ChunkSegments& plan, WholeBlock&& whole_block, Bound&& bound) {
  FactorStore& store = plan.store;
  const index_t K = plan.K, V = plan.V, segment_count = store.first_segment.back();
  reserve_floats(store.states, segment_count * K * V);
  reserve_floats(store.transitions, segment_count * K * K);
  reserve_floats(store.readout, store.first_row.back() * K);
  const detail::ValueSplit& split = plan.values;
  const std::vector<std::pair<index_t, index_t>>& tasks = store.run_tasks;
  const std::vector<index_t>& fix_first = store.first_fix_task;
  const auto locate = [](const std::vector<index_t>& first, index_t j) {
    return static_cast<std::size_t>(std::upper_bound(first.begin(), first.end(), j) - first.begin()) - 1;
  };
  executor.run(static_cast<index_t>(tasks.size()), [&](index_t j) {  // pass A
    const std::size_t i = static_cast<std::size_t>(tasks[static_cast<std::size_t>(j)].first);
    const index_t r = tasks[static_cast<std::size_t>(j)].second;
    if (plan.segments(i) == 1) return whole_block(i, split.block(r));
    plan.first_pass(i, r, [&](ValueColumns cols) { return bound(static_cast<index_t>(i), cols); });
  });
  executor.run(fix_first.back(), [&](index_t j) {  // pass C
    const std::size_t i = locate(fix_first, j);
    plan.second_pass(i, j - fix_first[i], [&](ValueColumns cols) { return bound(static_cast<index_t>(i), cols); });
  });
}

/// Runs every (running sequence n, head h) item of a prefill, bind(n, h, columns) giving the
/// item bound to a block of value columns: whole items when they fill the executor's threads,
/// chunked ones in tasks of several heads of one sequence advancing chunk by chunk together
/// (run_item_groups; one head per task when the heads do not outnumber the threads); else in
/// value blocks (for_each_item), and from kShareFactorsMinBlocks blocks on the chunked fp32
/// items' V-independent chunk factors are computed once per (item, chunk) in a first parallel
/// pass instead of once per block (WyFactors; bf16 dot products and recurrent items keep the
/// whole per-block algorithm). When even the value blocks leave most threads idle
/// (chunk_segments), the chunked fp32 items of enough chunks also run in segments
/// (ChunkSegments), on the same records. An item bound as DeltaAlgorithm::automatic takes the
/// form choose_delta_algorithm names for its `shape` on the columns each of the call's tasks runs
/// (choice_value_block), the same for all its blocks.
///
/// check_elements() checks the call's beta and gate elements (ElementChecks::caller), throwing
/// ShapeError on a bad one; it runs before any task that writes an output or a state. With a
/// chunk-factor pass, which writes only the caller's FactorStore, each of its tasks checks its
/// chunk's beta and gate rows, which it reads anyway, and check_elements() runs after the pass
/// only when a task found a bad one or the pass did not cover every token of every head
/// (padding sequences, items without records): so the serial part of such a call no longer reads
/// beta and the gate (gdn-h4: about 3 us right after a previous call, docs/parallel_grain.md).
template <class Bind, class CheckElements>
void run_delta_items(const Executor& executor, const SequenceMap& map, index_t H, index_t K, index_t V, index_t chunk,
                     Bind&& bind, CheckElements&& check_elements) {
  const std::vector<index_t>& order = longest_first(map);
  const index_t items = static_cast<index_t>(order.size()) * H;
  const int threads = executor.concurrency();
  const detail::ValueSplit split = value_blocks(items, V, threads);
  const detail::ValueSplit keys = value_blocks(items, K, threads);
  const index_t segments = chunk_segments(items, split.blocks, keys.blocks, threads);
  const index_t choice_block = choice_value_block(split, segments);
  const auto bind_chosen = [&](index_t n, index_t h, ValueColumns cols) {  // an automatic item on the block that runs
    DeltaItem item = bind(n, h, cols);
    if (item.algorithm == DeltaAlgorithm::automatic) {
      item.shape.value_block = choice_block;
      item.algorithm = choose_delta_algorithm(item.shape);
    }
    return item;
  };
  const auto bound = [&](index_t it, ValueColumns cols) {  // item `it` of longest_first's order on `cols`
    return bind_chosen(order[static_cast<std::size_t>(it / H)], it % H, cols);
  };
  const auto whole = [&](index_t n, index_t h, ValueColumns cols, ItemScratch& ws) {
    run_delta_item(bind_chosen(n, h, cols), chunk, ws);
  };
  const index_t group =
      split.blocks == 1 && segments < 2 ? seqmix::chunkwise::items_together_group(H, K * V, threads) : 1;
  if (group > 1 && items > 0 && bound(0, ValueColumns{0, V}).algorithm == DeltaAlgorithm::chunked) {
    check_elements();
    return run_item_groups(executor, static_cast<index_t>(order.size()), H, K, V, chunk, group, bound);
  }
  if (split.blocks < kShareFactorsMinBlocks && segments < 2) {
    check_elements();
    return for_each_item(executor, map, H, K, V, whole);
  }

  FactorStore& store = factor_store();  // the caller's (a name, not a capture, would be each thread's own)
  // The first segment in narrow blocks when they double the blocks and still fit beside a group.
  const detail::ValueSplit narrow =
      segments > 1 ? detail::split_value_columns(items, V, threads, simd::kWidth, kMinValueBlock / 2) : split;
  const index_t per_item = segments > 1 ? threads / items : 0;
  const bool narrow_first = narrow.blocks == 2 * split.blocks && per_item >= narrow.blocks + split.blocks + keys.blocks;
  const SegmentShape shape{per_item, narrow_first ? narrow.blocks : split.blocks, narrow_first ? kNarrowBlockCost : 1.0,
                           split.blocks, keys.blocks};
  bind_items(store, items, chunk, shape, [&](index_t it) { return bound(it, ValueColumns{0, V}); });
  const index_t chunks = store.first.back(), stride = WyFactors::floats(chunk, K);
  const index_t segment_count = store.first_segment.back(), rows = store.first_row.back();
  const index_t floats = chunks * stride + segment_count * (K * V + K * K) + rows * K;
  if (chunks == 0 || (split.blocks < kShareFactorsMinBlocks && segment_count == 0) ||
      static_cast<std::size_t>(floats) * sizeof(float) > kShareFactorsMaxBytes) {
    check_elements();
    return for_each_item(executor, map, H, K, V, whole);
  }
  reserve_floats(store.records, chunks * stride);
  const ChunkSegments segmented{store, K, V, chunk, split, keys, narrow};
  if (segment_count > 0) plan_chunk_segments(segmented, threads);

  std::atomic<bool> bad{false};  // a chunk holds a bad beta or gate element
  executor.run(chunks, [&](index_t j) {  // pass 1: (item, chunk) tasks
    const auto next = std::upper_bound(store.first.begin(), store.first.end(), j);
    const std::size_t it = static_cast<std::size_t>(next - store.first.begin()) - 1;
    const DeltaHead& p = store.items[it].p;
    const index_t t0 = (j - store.first[it]) * chunk, L = std::min(chunk, p.T() - t0);
    wy_chunk_factors(p, t0, L, factor_scratch(chunk, K), WyFactors{store.records.data() + j * stride, chunk, K});
    if (chunk_elements_bad(p, t0, L)) bad.store(true, std::memory_order_relaxed);
  });
  if (bad.load(std::memory_order_relaxed) || !covers_every_token(store, map, order, chunk)) check_elements();
  // An item of one segment: its value blocks, each from the item's records when it has them.
  const auto whole_block = [&](std::size_t i, ValueColumns cols) {
    ItemScratch& ws = item_scratch(K, cols.width);
    const DeltaItem item = bound(static_cast<index_t>(i), cols);
    if (store.first[i + 1] > store.first[i])
      run_delta_block(item, chunk, store.records.data() + store.first[i] * stride, ws);
    else
      run_delta_item(item, chunk, ws);
  };
  if (segment_count == 0) {
    for_each_block(executor, items, K, split, [&](index_t it, ValueColumns cols, ItemScratch&) {  // pass 2
      whole_block(static_cast<std::size_t>(it), cols);
    });
    return;
  }

  run_chunk_segments(executor, segmented, whole_block, bound);
}

/// Decode step over all (row, value head) pairs, in place on the pool `state` [S,HV,K,V]:
/// row b uses pool row slots.row(b) (-1: skipped, output untouched), zeroed first when
/// slots.fresh(b). make_token(b, hv, ws) returns the loaded operands of one head; a state whose
/// last dimension is strided is staged through a per-thread copy. No allocation after warm-up.
template <class MakeToken, class StoreOutput>
void run_step(Update update, index_t B, index_t HV, index_t K, index_t V, const TensorView<float, 4>& state,
              const StepSlots& slots, const Executor& executor, MakeToken&& make_token, StoreOutput&& store_output) {
  const bool in_place = state.is_last_dim_contiguous();
  // Waking a pool thread costs a few microseconds, about what one core needs to stream 1 MB of
  // state through this kernel; smaller steps stay on the calling thread.
  const bool parallel = B * HV * K * V >= (index_t{1} << 18);
  parallel_for(parallel ? executor : serial_executor(), B * HV, 1, [&](index_t begin, index_t end) {
    ItemScratch& ws = item_scratch(K, V);
    if (!in_place && static_cast<index_t>(ws.staged.size()) < K * V) ws.staged.resize(static_cast<std::size_t>(K * V));
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / HV, hv = task % HV;
      const index_t row = slots.row(b);
      if (row < 0) continue;
      const auto s = state[row][hv];
      if (slots.fresh(b))
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = 0.f;
      const TokenOperands x = make_token(b, hv, *ws.tok);
      if (in_place) {
        advance_token(update, s.data(), s.stride(0), K, V, x, ws.tok->o());
      } else {
        float* staged = ws.staged.data();
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) staged[r * V + c] = s(r, c);
        advance_token(update, staged, V, K, V, x, ws.tok->o());
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c) s(r, c) = staged[r * V + c];
      }
      store_output(b, hv, ws.tok->o());
    }
  });
}

}  // namespace seqmix::delta_update
