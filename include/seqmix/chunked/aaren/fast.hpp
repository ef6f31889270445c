// Aaren fast form (definition in reference.hpp): the online-softmax recurrence, vectorized over
// Dv, one exp per token (only the side of the max that moved is rescaled).
//
// Threads: (batch, head) pairs are independent, so with enough of them each task streams a block
// of heads in one token-major pass (AarenSplit::heads; see run_tokens for why token-major). With fewer pairs than threads the sequence is cut into
// chunks (AarenSplit::time), the associative-scan structure of core/scan/associative.hpp:
//   pass 1  chunk 0 runs for good from the initial state; every other chunk but the last is
//           reduced to its own (m, l, acc) from the empty state,
//   pass 2  the chunk summaries are scanned with the core associative_scan over the
//           OnlineSoftmax monoid (core/scan/monoids.hpp), one scalar scan per value channel
//           (m and l come out identical in every channel; the scans are tiny: one element per chunk),
//   pass 3  every chunk after the first reruns from its carry, writing o.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/core/scan/associative.hpp"
#include "seqmix/core/scan/monoids.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {
namespace detail::aaren {

// The running online-softmax state of one (batch, head); acc has Dv floats.
struct Running {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.f;
  float* acc = nullptr;
};

// acc = acc * c + w * v over n floats.
inline void rescale_add(float* acc, float c, float w, const float* v, index_t n) {
  const simd::Batch<float> cb(c), wb(w);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth)
    simd::store(acc + j, simd::fma(wb, simd::load(v + j), cb * simd::load(acc + j)));
  for (index_t j = nv; j < n; ++j) acc[j] = acc[j] * c + w * v[j];
}

inline void scale_into(float* out, const float* acc, float r, index_t n) {
  const simd::Batch<float> rb(r);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth) simd::store(out + j, rb * simd::load(acc + j));
  for (index_t j = nv; j < n; ++j) out[j] = r * acc[j];
}

// Adds token (logit s, value v) to the state: one exp, on whichever side is now below the max.
// Non-finite logits follow attention's policy (docs/reliability.md): a -inf logit has weight 0 and
// takes no part (its v neither), a +inf one makes the state NaN (its weight exp(s - m) is
// inf / inf, not the one-hot limit), and a NaN one makes l NaN.
inline void absorb(Running& st, float s, const float* v, index_t Dv) {
  if (s == -std::numeric_limits<float>::infinity()) return;
  if (s > st.m) {
    const float c = std::exp(st.m - s);  // 0 for the empty state (m = -inf)
    const float w = s == std::numeric_limits<float>::infinity() ? std::numeric_limits<float>::quiet_NaN() : 1.f;
    st.l = st.l * c + w;
    rescale_add(st.acc, c, w, v, Dv);
    st.m = s;
  } else {
    const float w = std::exp(s - st.m);
    st.l += w;
    simd::axpy(w, v, st.acc, Dv);
  }
}

// 1 / l, and 0 while no token has weight (l = 0: every logit so far -inf), where the output is
// 0 as in the reference; a NaN l stays NaN.
inline float output_scale(float l) { return l == 0.f ? 0.f : 1.f / l; }

// Rows of k / v / o with a contiguous last dimension, or copied into `row` scratch otherwise.
inline const float* row_of(const ConstView<float, 4>& x, index_t b, index_t t, index_t h, float* row) {
  if (x.is_last_dim_contiguous()) return x.ptr(b, t, h);
  for (index_t j = 0; j < x.size(3); ++j) row[j] = x(b, t, h, j);
  return row;
}

// Runs tokens [t0, t1) of heads [h0, h1) of batch row b through st[0 .. h1-h0), writing o when
// `write`. Token-major with the heads inside, so k, v and o are walked in address order: one
// head's rows alone lie H*D floats apart (4 KB at H = 16, D = 64, one row per page), which the
// hardware prefetchers do not follow, and the pass became latency-bound (29.5 ms for 100 MB at
// T = 8192). The heads' exp chains are independent, so they also overlap.
// scratch: Dk + 2*Dv floats, plus (h1 - h0)*Dk when the query rows are strided. With `keep`, the
// state after each token is copied to token_states as well.
inline void run_tokens(const AarenInputs& in, const AarenOutputs& out, const Dims& d, float scale, index_t b,
                       index_t h0, index_t h1, index_t t0, index_t t1, Running* st, bool write, float* scratch,
                       bool keep = false) {
  float *krow = scratch, *vrow = scratch + d.Dk, *orow = scratch + d.Dk + d.Dv, *qcopy = orow + d.Dv;
  const bool q_contiguous = in.query.is_last_dim_contiguous();
  if (!q_contiguous)
    for (index_t h = h0; h < h1; ++h)
      for (index_t c = 0; c < d.Dk; ++c) qcopy[(h - h0) * d.Dk + c] = in.query(h, c);
  const bool o_contiguous = out.o.is_last_dim_contiguous();
  for (index_t t = t0; t < t1; ++t)
    for (index_t h = h0; h < h1; ++h) {
      Running& s = st[h - h0];
      const float* q = q_contiguous ? in.query.ptr(h) : qcopy + (h - h0) * d.Dk;
      const float logit = scale * simd::dot(q, row_of(in.k, b, t, h, krow), d.Dk);
      absorb(s, logit, row_of(in.v, b, t, h, vrow), d.Dv);
      if (keep) {
        out.token_states.m(b, t, h) = s.m, out.token_states.l(b, t, h) = s.l;
        for (index_t j = 0; j < d.Dv; ++j) out.token_states.acc(b, t, h, j) = s.acc[j];
      }
      if (!write) continue;
      float* o = o_contiguous ? out.o.ptr(b, t, h) : orow;
      scale_into(o, s.acc, output_scale(s.l), d.Dv);
      if (!o_contiguous)
        for (index_t j = 0; j < d.Dv; ++j) out.o(b, t, h, j) = orow[j];
    }
}

// Loads head h of state row `row` (the empty state when `read` is false).
inline void load_initial(const AarenInputs& in, index_t row, index_t h, index_t Dv, Running& st, bool read) {
  if (!read || !in.initial_state.m.has_value()) {
    st.m = -std::numeric_limits<float>::infinity(), st.l = 0.f;
    std::fill(st.acc, st.acc + Dv, 0.f);
    return;
  }
  st.m = in.initial_state.m(row, h), st.l = in.initial_state.l(row, h);
  for (index_t j = 0; j < Dv; ++j) st.acc[j] = in.initial_state.acc(row, h, j);
}

// Copies the state out at the end (reads everything first, so the final state may alias the initial one).
inline void store_final(const AarenOutputs& out, index_t row, index_t h, index_t Dv, const Running& st) {
  if (!out.final_state.m.has_value()) return;
  out.final_state.m(row, h) = st.m, out.final_state.l(row, h) = st.l;
  for (index_t j = 0; j < Dv; ++j) out.final_state.acc(row, h, j) = st.acc[j];
}

inline bool use_time_split(AarenSplit split, index_t pairs, int threads) {
  if (split != AarenSplit::automatic) return split == AarenSplit::time;
  return threads > 1 && pairs < 2 * threads;
}

// The sequences that run (not padding), longest first so short ones fill the end of the call.
inline std::vector<index_t> running_sequences(const SequenceMap& seqs) {
  std::vector<index_t> order;
  for (index_t n = 0; n < seqs.sequences(); ++n)
    if (seqs[n].state_row >= 0) order.push_back(n);
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return seqs[a].tokens > seqs[b].tokens; });
  return order;
}

}  // namespace detail::aaren

/// Aaren prefill (reference::aaren is the definition): o_t is softmax attention of each head's
/// query over tokens 0..t, resumed from `initial_state` when given. Threaded over heads or time
/// (options.split).
inline void aaren(const AarenInputs& inputs, const AarenOutputs& out, const AarenOptions& options = {},
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::aaren::reversed_call("aaren", inputs, out);
    return aaren(rev.first, rev.second, detail::forward_options(options), executor);
  }
  using namespace detail::aaren;
  const AarenInputs in = current(inputs);
  // No structured binding: clang (C++17) refuses to capture one in the lambdas below.
  const Call call = validate("aaren", in, out, options);
  const Dims& d = call.d;
  const SequenceMap& seqs = call.seqs;
  const float scale = scale_of(options, d.Dk);
  const index_t pairs = d.B * d.H, scratch_floats = d.Dk + 2 * d.Dv;  // run_tokens' rows
  if (pairs == 0 || d.H == 0) return;
  // The time split serves one dense batch; packed or slotted calls and token_states go by heads
  // (a (sequence, head) pair then computes exactly what a dense call of that sequence alone does
  // by heads, so results are bit-identical to per-sequence calls with AarenSplit::heads).
  const bool serving = seqs.packed() || seqs.slotted() || has_state(out.token_states);
  if (serving || !use_time_split(options.split, pairs, executor.concurrency()) || d.T < 2) {
    // Tasks are (sequence, block of heads): as many blocks per sequence as it takes to give
    // every thread one task, each as wide as possible so its rows stay long contiguous runs.
    const std::vector<index_t> order = running_sequences(seqs);
    const index_t N = static_cast<index_t>(order.size());
    if (N == 0) return;
    const index_t blocks = std::clamp<index_t>((executor.concurrency() + N - 1) / N, 1, d.H);
    const bool keep = has_state(out.token_states);
    parallel_for(executor, N * blocks, 1, [&](index_t task0, index_t task1) {
      const index_t widest = (d.H + blocks - 1) / blocks;
      std::vector<float> scratch(static_cast<std::size_t>(scratch_floats + widest * (d.Dk + d.Dv)));
      std::vector<Running> st(static_cast<std::size_t>(widest));
      for (index_t task = task0; task < task1; ++task) {
        const SequenceSpan s = seqs[order[static_cast<std::size_t>(task / blocks)]];
        const index_t blk = task % blocks, h0 = d.H * blk / blocks, h1 = d.H * (blk + 1) / blocks;
        float* accs = scratch.data() + scratch_floats + widest * d.Dk;
        for (index_t h = h0; h < h1; ++h) {
          st[h - h0].acc = accs + (h - h0) * d.Dv;
          load_initial(in, s.state_row, h, d.Dv, st[h - h0], s.read_state);
        }
        run_tokens(in, out, d, scale, s.batch_row, h0, h1, s.token_begin, s.token_begin + s.tokens, st.data(), true,
                   scratch.data(), keep);
        for (index_t h = h0; h < h1; ++h) store_final(out, s.state_row, h, d.Dv, st[h - h0]);
      }
    });
    return;
  }
  const index_t chunks = std::clamp<index_t>(options.chunks > 0 ? options.chunks : executor.concurrency() + 1, 2, d.T);
  std::vector<index_t> bounds(static_cast<std::size_t>(chunks + 1));
  for (index_t c = 0; c <= chunks; ++c) bounds[c] = d.T * c / chunks;
  // summary[p][c]: (m, l) and acc [Dv] of chunk c alone; chunk 0's entry holds the state after it.
  std::vector<float> sm(static_cast<std::size_t>(pairs * chunks)), sl(sm.size());
  std::vector<float> sacc(static_cast<std::size_t>(pairs * chunks * d.Dv));
  auto summary = [&](index_t p, index_t c) {
    Running st;
    st.acc = sacc.data() + (p * chunks + c) * d.Dv;
    return st;
  };
  executor.run(pairs * (chunks - 1), [&](index_t task) {
    const index_t p = task / (chunks - 1), c = task % (chunks - 1);
    std::vector<float> scratch(static_cast<std::size_t>(scratch_floats + d.Dk));
    Running st = summary(p, c);
    if (c == 0)
      load_initial(in, p / d.H, p % d.H, d.Dv, st, true);
    else
      std::fill(st.acc, st.acc + d.Dv, 0.f);
    run_tokens(in, out, d, scale, p / d.H, p % d.H, p % d.H + 1, bounds[c], bounds[c + 1], &st, c == 0, scratch.data());
    sm[p * chunks + c] = st.m, sl[p * chunks + c] = st.l;
  });
  // Pass 2: carry[c] = state before chunk c = prefix of the summaries 0..c-1, per value channel.
  const index_t carries = chunks - 1;  // carries for chunks 1 .. chunks-1
  std::vector<float> cm(static_cast<std::size_t>(pairs * carries)), cl(cm.size());
  std::vector<float> cacc(static_cast<std::size_t>(pairs * carries * d.Dv));
  parallel_for(executor, pairs, 1, [&](index_t p0, index_t p1) {
    std::vector<OnlineSoftmaxState> items(static_cast<std::size_t>(carries));
    for (index_t p = p0; p < p1; ++p)
      for (index_t j = 0; j < std::max<index_t>(d.Dv, 1); ++j) {
        for (index_t c = 0; c < carries; ++c)
          items[c] = {sm[p * chunks + c], sl[p * chunks + c], d.Dv > 0 ? sacc[(p * chunks + c) * d.Dv + j] : 0.f};
        associative_scan(OnlineSoftmax{}, items.data(), items.data(), carries);
        for (index_t c = 0; c < carries; ++c) {
          cm[p * carries + c] = items[c].m, cl[p * carries + c] = items[c].l;
          if (d.Dv > 0) cacc[(p * carries + c) * d.Dv + j] = items[c].acc;
        }
      }
  });
  executor.run(pairs * carries, [&](index_t task) {
    const index_t p = task / carries, c = task % carries + 1;
    std::vector<float> scratch(static_cast<std::size_t>(scratch_floats + d.Dk));
    Running st;
    st.acc = cacc.data() + (p * carries + c - 1) * d.Dv;  // updated in place; only this task reads it
    st.m = cm[p * carries + c - 1], st.l = cl[p * carries + c - 1];
    run_tokens(in, out, d, scale, p / d.H, p % d.H, p % d.H + 1, bounds[c], bounds[c + 1], &st, true, scratch.data());
    if (c == chunks - 1) store_final(out, p / d.H, p % d.H, d.Dv, st);
  });
}

}  // namespace seqmix
