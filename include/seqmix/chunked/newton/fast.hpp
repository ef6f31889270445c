// Fast forms of the elementwise nonlinear recurrence (definitions in reference.hpp, derivation in
// README.md):
//   nonlinear_recurrence           the sequential loop, SIMD across channels, threads across
//                                  (batch row, channel block); the baseline Newton must beat
//   nonlinear_recurrence_newton    parallel Newton: each iteration is one linear recurrence
//                                  h_t = J_t h_{t-1} + b_t, solved by a scan fused with the
//                                  evaluation of f and J (no J or b array is ever stored)
//
// Each Newton update is written h_new_t = f_t + J_t (h_new_{t-1} - h_old_{t-1}): the same linear
// recurrence as J h_new + (f - J h_old), but at the fixed point (h_new = h_old) it is exactly f, so
// the converged result carries no cancellation error.
//
// Two ways to split an iteration over threads (NewtonSplit):
//   channels  a task owns (batch row, channel block) for all T, updates h in place in one pass
//             (f, J, scan, update size), and iterates to its own convergence.
//   time      chunked scan with a fix-up, run on the update delta = h_new - h_old (its input is
//             the residual f - h_old, small near convergence, so the regrouped sums stay
//             accurate): pass 1 evaluates f and J on every chunk at once and scans each chunk
//             from zero, storing the local delta and the running product P_t = J_t ... J_{t0} of
//             its chunk; pass 2 chains the chunk carries; pass 3 adds P_t * carry to every row of
//             chunks 1.. and h_old, an elementwise pass split over all threads.
//             The expensive part (f and J: exps and divisions) runs once, in parallel over chunks.
// The core linear_scan (core/scan/linear.hpp) has the same three-pass structure, but it takes J
// and b as arrays: calling it would mean writing J and b out and reading them back (8 more bytes
// per element and iteration) and a separate pass for f and J; the fused passes here avoid both.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {
namespace detail::newton {

using FBatch = simd::Batch<float>;

// Below this many channels per thread the sequential loop's dependency chain through f (two exps
// and two divisions per step, about 100+ cycles) is no longer hidden by independent channels, and
// splitting time instead pays off.
constexpr index_t kMinChannelsPerTask = 4 * simd::kWidth;

template <class V>
V load_v(const float* p) {
  if constexpr (std::is_same_v<V, float>)
    return *p;
  else
    return simd::load(p);
}
inline void store_v(float* p, float v) { *p = v; }
inline void store_v(float* p, const FBatch& v) { simd::store(p, v); }
inline float abs_v(float x) { return std::abs(x); }
inline FBatch abs_v(const FBatch& x) { return xsimd::abs(x); }
inline float max_v(float a, float b) { return a > b ? a : b; }
inline FBatch max_v(const FBatch& a, const FBatch& b) { return xsimd::max(a, b); }
inline float fma_v(float a, float b, float c) { return a * b + c; }
inline FBatch fma_v(const FBatch& a, const FBatch& b, const FBatch& c) { return simd::fma(a, b, c); }
template <class V>
V clamp_v(const V& J, float clamp) {
  if (clamp <= 0.f) return J;
  if constexpr (std::is_same_v<V, float>)
    return std::clamp(J, -clamp, clamp);
  else
    return xsimd::min(xsimd::max(J, FBatch(-clamp)), FBatch(clamp));
}
// 1 where x is NaN or +-inf, else 0 (NaN fails every comparison).
inline float bad_v(float x) { return std::abs(x) <= std::numeric_limits<float>::max() ? 0.f : 1.f; }
inline FBatch bad_v(const FBatch& x) {
  return xsimd::select(xsimd::abs(x) <= FBatch(std::numeric_limits<float>::max()), FBatch(0.f), FBatch(1.f));
}
inline float reduce_max_v(float x) { return x; }
inline float reduce_max_v(const FBatch& x) { return simd::reduce_max(x); }

// body(i, V{}) for the vector part of [0, n) (V = FBatch) and the scalar tail (V = float).
template <class Body>
void over_channels(index_t n, Body&& body) {
  index_t i = 0;
  for (; i + simd::kWidth <= n; i += simd::kWidth) body(i, FBatch(0.f));
  for (; i < n; ++i) body(i, 0.f);
}

// over_channels from the top down: the scalar tail first, then the vectors, the last first. The
// time loops of a reverse call (negative time stride) walk the rows downwards; reading each row
// downwards too makes one descending stream, which the hardware prefetchers follow. Read upwards,
// the reverse sequential loop took about twice the forward's CPU time once the streams left the
// caches (B1 T16384 D256; software prefetches of rows ahead did not help). Channels are
// independent, so the order changes no result.
template <class Body>
void over_channels_down(index_t n, Body&& body) {
  const index_t vectors_end = n / simd::kWidth * simd::kWidth;
  for (index_t i = n - 1; i >= vectors_end; --i) body(i, 0.f);
  for (index_t i = vectors_end - simd::kWidth; i >= 0; i -= simd::kWidth) body(i, FBatch(0.f));
}

// body over the channels of a row in the direction the rows go (see over_channels_down).
template <class Body>
void over_channels_along(bool rows_go_down, index_t n, Body&& body) {
  if (rows_go_down)
    over_channels_down(n, body);
  else
    over_channels(n, body);
}

// Running maxima of one task: the update size and a non-finite flag.
struct Tally {
  float update = 0.f;
  bool bad = false;
  void merge(const Tally& o) { update = std::max(update, o.update), bad = bad || o.bad; }
};

// Channel-contiguous copies of the arguments. Row (b, t) of stream s starts at
// in[s] + b * in_b[s] + t * in_t[s]; parameters and h0 are dense [D] / [B,D] copies.
template <class Cell>
struct Problem {
  index_t B = 0, T = 0, D = 0;
  const float* in[Cell::kInputs];
  index_t in_b[Cell::kInputs], in_t[Cell::kInputs];
  AlignedVector<float> params;  // [kParams, D]
  AlignedVector<float> h0;      // [B, D]
  float jacobian_clamp = 0.f;

  const float* input_row(int s, index_t b, index_t t) const { return in[s] + b * in_b[s] + t * in_t[s]; }
  const float* param(int p) const { return params.data() + p * D; }
  // Whether the first stream's rows go down in memory (a reverse call's reversed views).
  bool rows_go_down() const { return in_t[0] < 0; }
  const float* initial(index_t b) const { return h0.data() + b * D; }

  // f and J for channels [i, i + width(V)) of row (b, t) from the previous state `prev`.
  template <class V>
  void eval(index_t b, index_t t, index_t i, const V& prev, V& f, V& J) const {
    V x[Cell::kInputs], p[Cell::kParams];
    for (int s = 0; s < Cell::kInputs; ++s) x[s] = load_v<V>(input_row(s, b, t) + i);
    for (int s = 0; s < Cell::kParams; ++s) p[s] = load_v<V>(param(s) + i);
    Cell::eval(prev, x, p, f, J);
    J = clamp_v(J, jacobian_clamp);
  }
  template <class V>
  V value(index_t b, index_t t, index_t i, const V& prev) const {
    V x[Cell::kInputs], p[Cell::kParams];
    for (int s = 0; s < Cell::kInputs; ++s) x[s] = load_v<V>(input_row(s, b, t) + i);
    for (int s = 0; s < Cell::kParams; ++s) p[s] = load_v<V>(param(s) + i);
    return Cell::value(prev, x, p);
  }
};

// A [B,T,D] buffer with contiguous channels: row (b, t) at data + b * sb + t * st.
struct Rows {
  float* data = nullptr;
  index_t sb = 0, st = 0;
  float* row(index_t b, index_t t) const { return data + b * sb + t * st; }
};

template <class Cell>
Problem<Cell> make_problem(const NonlinearRecurrenceInputs<Cell>& in, const Dims& d, float jacobian_clamp,
                           std::vector<Tensor<float, 3>>& copies) {
  Problem<Cell> p;
  p.B = d.B, p.T = d.T, p.D = d.D, p.jacobian_clamp = jacobian_clamp;
  for (int s = 0; s < Cell::kInputs; ++s) {
    ConstView<float, 3> view = in.inputs[s];
    if (!view.is_last_dim_contiguous()) {  // rare: strided channels; copy once
      copies.emplace_back(view.shape());
      copy(view, copies.back().view());
      view = copies.back().cview();
    }
    p.in[s] = view.data(), p.in_b[s] = view.stride(0), p.in_t[s] = view.stride(1);
  }
  p.params.resize(static_cast<std::size_t>(Cell::kParams * d.D));
  for (int s = 0; s < Cell::kParams; ++s)
    for (index_t c = 0; c < d.D; ++c) p.params[s * d.D + c] = in.params[s](c);
  p.h0.assign(static_cast<std::size_t>(d.B * d.D), 0.f);
  if (in.h0.has_value())
    for (index_t b = 0; b < d.B; ++b)
      for (index_t c = 0; c < d.D; ++c) p.h0[b * d.D + c] = in.h0(b, c);
  return p;
}

// Channel blocks of whole vectors, at least kMinChannelsPerTask wide unless D is smaller.
inline index_t channel_blocks(index_t D, int threads) {
  const index_t vectors = std::max<index_t>(1, (D + simd::kWidth - 1) / simd::kWidth);
  const index_t min_vectors = kMinChannelsPerTask / simd::kWidth;
  return std::max<index_t>(1, std::min<index_t>(vectors / min_vectors, threads));
}
inline index_t block_begin(index_t D, index_t blocks, index_t k) {
  const index_t vectors = (D + simd::kWidth - 1) / simd::kWidth;
  return std::min(D, vectors * k / blocks * simd::kWidth);
}

// The sequential loop over rows [0, T) of channels [d0, d1) of batch row b.
template <class Cell>
void sequential_block(const Problem<Cell>& p, const Rows& h, index_t b, index_t d0, index_t d1, float* state) {
  std::copy(p.initial(b) + d0, p.initial(b) + d1, state);
  for (index_t t = 0; t < p.T; ++t) {
    float* out = h.row(b, t);
    over_channels_along(p.rows_go_down(), d1 - d0, [&](index_t i, auto tag) {
      using V = decltype(tag);
      const V next = p.value(b, t, d0 + i, load_v<V>(state + i));
      store_v(state + i, next);
      store_v(out + d0 + i, next);
    });
  }
}

// One Newton update of channels [d0, d1) of batch row b over all T, in place in h (channel split).
// prev_old / prev_new: scratch rows of d1 - d0 floats.
template <class Cell, bool kZeroOld>
Tally fused_update(const Problem<Cell>& p, const Rows& h, index_t b, index_t d0, index_t d1, float* prev_old,
                   float* prev_new) {
  const index_t n = d1 - d0;
  std::copy(p.initial(b) + d0, p.initial(b) + d1, prev_old);
  std::copy(p.initial(b) + d0, p.initial(b) + d1, prev_new);
  FBatch update(0.f), bad(0.f);
  float update_s = 0.f, bad_s = 0.f;
  for (index_t t = 0; t < p.T; ++t) {
    float* row = h.row(b, t) + d0;
    over_channels_along(p.rows_go_down(), n, [&](index_t i, auto tag) {
      using V = decltype(tag);
      const V po = load_v<V>(prev_old + i), pn = load_v<V>(prev_new + i);
      const V old = kZeroOld ? V(0.f) : load_v<V>(row + i);
      V f, J;
      p.eval(b, t, d0 + i, po, f, J);
      const V next = fma_v(J, pn - po, f);
      store_v(row + i, next);
      store_v(prev_old + i, old);
      store_v(prev_new + i, next);
      if constexpr (std::is_same_v<V, float>)
        update_s = max_v(update_s, abs_v(next - old)), bad_s = max_v(bad_s, bad_v(next));
      else
        update = max_v(update, abs_v(next - old)), bad = max_v(bad, bad_v(next));
    });
  }
  Tally tally;
  tally.update = std::max(update_s, n >= simd::kWidth ? reduce_max_v(update) : 0.f);
  tally.bad = std::max(bad_s, n >= simd::kWidth ? reduce_max_v(bad) : 0.f) > 0.f;
  return tally;
}

// Time split, pass 1, chunk [t0, t1) of batch row b, all channels. The scan runs on the update
// delta_t = h_new_t - h_old_t, which obeys delta_t = J_t delta_{t-1} + (f_t - h_old_t): its input
// is the current residual, so near convergence every quantity in the chunked scan is small and
// the regrouping of the chunks adds rounding relative to the update, not to h. Chunk 0 starts from
// delta = 0 (h0 is exact) and writes h_new for good; later chunks write their local delta
// (from zero) to `next` and the running product of J to `prod`.
template <class Cell, bool kZeroOld>
Tally chunk_scan(const Problem<Cell>& p, const Rows& old, const Rows& next, const Rows& prod, index_t b, index_t t0,
                 index_t t1, bool first, float* delta, float* running) {
  const index_t D = p.D;
  std::fill(delta, delta + D, 0.f);
  if (!first) std::fill(running, running + D, 1.f);
  Tally tally;
  FBatch update(0.f), bad(0.f);
  for (index_t t = t0; t < t1; ++t) {
    const float* prev_row = t == 0 ? p.initial(b) : (kZeroOld ? nullptr : old.row(b, t - 1));
    const float* old_row = kZeroOld ? nullptr : old.row(b, t);
    float* out = next.row(b, t);
    over_channels_along(p.rows_go_down(), D, [&](index_t i, auto tag) {
      using V = decltype(tag);
      const V po = prev_row ? load_v<V>(prev_row + i) : V(0.f);
      const V o = kZeroOld ? V(0.f) : load_v<V>(old_row + i);
      V f, J;
      p.eval(b, t, i, po, f, J);
      const V d = fma_v(J, load_v<V>(delta + i), f - o);
      store_v(delta + i, d);
      if (first) {
        const V h = o + d;
        store_v(out + i, h);
        if constexpr (std::is_same_v<V, float>)
          tally.update = std::max(tally.update, std::abs(d)), tally.bad = tally.bad || bad_v(h) > 0.f;
        else
          update = max_v(update, abs_v(d)), bad = max_v(bad, bad_v(h));
      } else {
        store_v(out + i, d);
        const V r = J * load_v<V>(running + i);
        store_v(running + i, r);
        store_v(prod.row(b, t) + i, r);
      }
    });
  }
  if (first && D >= simd::kWidth) {
    tally.update = std::max(tally.update, reduce_max_v(update));
    tally.bad = tally.bad || reduce_max_v(bad) > 0.f;
  }
  return tally;
}

// Time split, pass 3 for one row: delta = local + prod * carry, next = old + delta.
template <bool kZeroOld>
void fix_row(const float* old, float* next, const float* prod, const float* carry, index_t D, bool rows_go_down,
             Tally& tally) {
  FBatch update(0.f), bad(0.f);
  over_channels_along(rows_go_down, D, [&](index_t i, auto tag) {
    using V = decltype(tag);
    const V d = fma_v(load_v<V>(prod + i), load_v<V>(carry + i), load_v<V>(next + i));
    const V h = kZeroOld ? d : load_v<V>(old + i) + d;
    store_v(next + i, h);
    if constexpr (std::is_same_v<V, float>)
      tally.update = std::max(tally.update, std::abs(d)), tally.bad = tally.bad || bad_v(h) > 0.f;
    else
      update = max_v(update, abs_v(d)), bad = max_v(bad, bad_v(h));
  });
  if (D >= simd::kWidth) {
    tally.update = std::max(tally.update, reduce_max_v(update));
    tally.bad = tally.bad || reduce_max_v(bad) > 0.f;
  }
}

// One Newton update over time chunks `bounds`, reading `old` and writing `next` (time split).
template <class Cell, bool kZeroOld>
Tally chunked_update(const Problem<Cell>& p, const Rows& old, const Rows& next, const Rows& prod,
                     const std::vector<index_t>& bounds, AlignedVector<float>& carry, const Executor& executor) {
  const index_t chunks = static_cast<index_t>(bounds.size()) - 1, D = p.D, B = p.B;
  std::vector<Tally> tallies(static_cast<std::size_t>(std::max<index_t>(chunks, 4 * executor.concurrency())));
  executor.run(chunks, [&](index_t c) {
    AlignedVector<float> local(static_cast<std::size_t>(D)), running(static_cast<std::size_t>(D));
    for (index_t b = 0; b < B; ++b)
      tallies[c].merge(chunk_scan<Cell, kZeroOld>(p, old, next, prod, b, bounds[c], bounds[c + 1], c == 0,
                                                  local.data(), running.data()));
  });
  Tally total;
  for (index_t c = 0; c < chunks; ++c) total.merge(tallies[c]);
  if (chunks < 2) return total;
  // carry[c][b]: the true delta entering chunk c (c >= 1) = P(c-1) carry[c-1] + local delta at the end of c-1.
  for (index_t b = 0; b < B; ++b) {
    {  // chunk 0 wrote h_new, the carry is its delta
      const index_t t = bounds[1] - 1;
      for (index_t i = 0; i < D; ++i) carry[(1 * B + b) * D + i] = next.row(b, t)[i] - (kZeroOld ? 0.f : old.row(b, t)[i]);
    }
    for (index_t c = 1; c + 1 < chunks; ++c) {
      const index_t t = bounds[c + 1] - 1;
      const float *P = prod.row(b, t), *L = next.row(b, t), *in = carry.data() + (c * B + b) * D;
      float* out = carry.data() + ((c + 1) * B + b) * D;
      for (index_t i = 0; i < D; ++i) out[i] = P[i] * in[i] + L[i];
    }
  }
  // Pass 3 over the rows (b, t) with t >= bounds[1], split evenly over the threads.
  const index_t rows_per_b = p.T - bounds[1], rows = B * rows_per_b;
  std::fill(tallies.begin(), tallies.end(), Tally{});
  const index_t tasks = std::min<index_t>(static_cast<index_t>(tallies.size()), std::max<index_t>(1, rows / 64));
  executor.run(tasks, [&](index_t k) {
    for (index_t r = rows * k / tasks; r < rows * (k + 1) / tasks; ++r) {
      const index_t b = r / rows_per_b, t = bounds[1] + r % rows_per_b;
      const index_t c = static_cast<index_t>(std::upper_bound(bounds.begin(), bounds.end(), t) - bounds.begin()) - 1;
      fix_row<kZeroOld>(kZeroOld ? nullptr : old.row(b, t), next.row(b, t), prod.row(b, t),
                        carry.data() + (c * B + b) * D, D, p.rows_go_down(), tallies[k]);
    }
  });
  for (const Tally& t : tallies) total.merge(t);
  return total;
}

// max_t |h_t - f(h_{t-1}, x_t)| over everything, NaN if any term is not finite.
template <class Cell>
float residual(const Problem<Cell>& p, const Rows& h, const Executor& executor) {
  const index_t rows = p.B * p.T;
  if (rows == 0) return 0.f;
  const index_t tasks = std::min<index_t>(4 * executor.concurrency(), std::max<index_t>(1, rows / 64));
  std::vector<Tally> tallies(static_cast<std::size_t>(tasks));
  executor.run(tasks, [&](index_t k) {
    for (index_t r = rows * k / tasks; r < rows * (k + 1) / tasks; ++r) {
      const index_t b = r / p.T, t = r % p.T;
      const float* prev = t == 0 ? p.initial(b) : h.row(b, t - 1);
      const float* cur = h.row(b, t);
      over_channels_along(p.rows_go_down(), p.D, [&](index_t i, auto tag) {
        using V = decltype(tag);
        const V e = abs_v(load_v<V>(cur + i) - p.value(b, t, i, load_v<V>(prev + i)));
        tallies[k].update = std::max(tallies[k].update, reduce_max_v(e));
        tallies[k].bad = tallies[k].bad || reduce_max_v(bad_v(e)) > 0.f;
      });
    }
  });
  Tally total;
  for (const Tally& t : tallies) total.merge(t);
  return total.bad ? std::numeric_limits<float>::quiet_NaN() : total.update;
}

template <class Cell>
void run_sequential(const Problem<Cell>& p, const Rows& h, const Executor& executor) {
  const index_t blocks = channel_blocks(p.D, executor.concurrency());
  executor.run(p.B * blocks, [&](index_t task) {
    const index_t b = task / blocks, k = task % blocks;
    const index_t d0 = block_begin(p.D, blocks, k), d1 = block_begin(p.D, blocks, k + 1);
    AlignedVector<float> state(static_cast<std::size_t>(std::max<index_t>(d1 - d0, 1)));
    if (d1 > d0) sequential_block(p, h, b, d0, d1, state.data());
  });
}

inline bool use_time_split(NewtonSplit split, index_t B, index_t D, int threads) {
  if (split != NewtonSplit::automatic) return split == NewtonSplit::time;
  return threads > 1 && B * D < threads * kMinChannelsPerTask;
}

// Channel split: every (batch row, channel block) iterates on its own.
template <class Cell>
void newton_channels(const Problem<Cell>& p, const Rows& h, const NonlinearRecurrenceNewtonOptions& o,
                     const Executor& executor, NewtonReport& report) {
  const index_t blocks = channel_blocks(p.D, executor.concurrency()), tasks = p.B * blocks;
  std::vector<Tally> last(static_cast<std::size_t>(tasks));
  std::vector<index_t> iterations(static_cast<std::size_t>(tasks), 0);
  executor.run(tasks, [&](index_t task) {
    const index_t b = task / blocks, k = task % blocks;
    const index_t d0 = block_begin(p.D, blocks, k), d1 = block_begin(p.D, blocks, k + 1);
    if (d1 <= d0 || p.T == 0) return;
    AlignedVector<float> prev_old(static_cast<std::size_t>(d1 - d0)), prev_new(static_cast<std::size_t>(d1 - d0));
    Tally& tally = last[task];
    tally.update = std::numeric_limits<float>::infinity();
    for (index_t& it = iterations[task]; it < o.max_iterations && tally.update > o.tol && !tally.bad; ++it) {
      const bool zero = it == 0 && !o.warm_start;
      tally = zero ? fused_update<Cell, true>(p, h, b, d0, d1, prev_old.data(), prev_new.data())
                   : fused_update<Cell, false>(p, h, b, d0, d1, prev_old.data(), prev_new.data());
    }
  });
  Tally total;
  for (index_t task = 0; task < tasks; ++task) {
    if (p.T > 0 && iterations[task] == 0) last[task].update = std::numeric_limits<float>::infinity();
    total.merge(last[task]);
    report.iterations = std::max(report.iterations, iterations[task]);
  }
  report.max_update = p.T > 0 ? total.update : 0.f;
  report.status = total.bad ? NewtonStatus::non_finite
                            : (report.max_update <= o.tol ? NewtonStatus::converged : NewtonStatus::iteration_limit);
}

// Time split: every iteration is one chunked scan over the whole problem.
template <class Cell>
void newton_time(const Problem<Cell>& p, const Rows& h, const NonlinearRecurrenceNewtonOptions& o,
                 const Executor& executor, NewtonReport& report) {
  const index_t chunks = std::clamp<index_t>(o.chunks > 0 ? o.chunks : executor.concurrency(), 1, std::max<index_t>(p.T, 1));
  std::vector<index_t> bounds(static_cast<std::size_t>(chunks + 1));
  for (index_t c = 0; c <= chunks; ++c) bounds[c] = p.T * c / chunks;
  // Second buffer for the ping-pong between iterates, product rows, chunk carries.
  const index_t BT = p.B * p.T;
  AlignedVector<float> other(static_cast<std::size_t>(BT * p.D));
  AlignedVector<float> prod(static_cast<std::size_t>(chunks > 1 ? BT * p.D : 0));
  AlignedVector<float> carry(static_cast<std::size_t>((chunks + 1) * p.B * p.D));
  // The scratch rows run in h's direction (a reverse call's h goes down), so that every pass reads
  // and writes one way (see over_channels_down).
  const auto like_h = [&](AlignedVector<float>& buffer) {
    if (buffer.empty() || h.st >= 0) return Rows{buffer.data(), p.T * p.D, p.D};
    return Rows{buffer.data() + (p.T - 1) * p.D, p.T * p.D, -p.D};
  };
  const Rows buffers[2] = {h, like_h(other)};
  const Rows prod_rows = like_h(prod);
  int current = 0;  // buffers[current] holds the current iterate
  Tally tally;
  tally.update = p.T > 0 ? std::numeric_limits<float>::infinity() : 0.f;
  while (report.iterations < o.max_iterations && tally.update > o.tol && !tally.bad) {
    const bool zero = report.iterations == 0 && !o.warm_start;
    const Rows &old = buffers[current], &next = buffers[1 - current];
    tally = zero ? chunked_update<Cell, true>(p, old, next, prod_rows, bounds, carry, executor)
                 : chunked_update<Cell, false>(p, old, next, prod_rows, bounds, carry, executor);
    current = 1 - current;
    ++report.iterations;
  }
  if (current == 1)  // the last iterate is in the scratch buffer
    parallel_for(executor, p.B * p.T, 256, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r)
        std::copy(buffers[1].row(r / p.T, r % p.T), buffers[1].row(r / p.T, r % p.T) + p.D, h.row(r / p.T, r % p.T));
    });
  report.max_update = tally.update;
  report.status = tally.bad ? NewtonStatus::non_finite
                            : (tally.update <= o.tol ? NewtonStatus::converged : NewtonStatus::iteration_limit);
}

template <class Cell, class Solve>
void with_contiguous_output(const NonlinearRecurrenceOutputs& out, const Dims& d, Solve&& solve) {
  if (out.h.is_last_dim_contiguous() || d.D <= 1) {
    solve(Rows{out.h.data(), out.h.stride(0), out.h.stride(1)});
    return;
  }
  Tensor<float, 3> tmp({d.B, d.T, d.D});
  solve(Rows{tmp.data(), d.T * d.D, d.D});
  copy(tmp.cview(), out.h);
}

inline void write_last(const NonlinearRecurrenceOutputs& out, const ConstView<float, 2>& h0, const Dims& d) {
  if (!out.h_last.has_value()) return;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t c = 0; c < d.D; ++c) out.h_last(b, c) = d.T > 0 ? out.h(b, d.T - 1, c) : h0_value(h0, b, c);
}

}  // namespace detail::newton

/// The sequential loop h_t = f(h_{t-1}, x_t), vectorized across channels and threaded across
/// (batch row, channel block). Same arguments and results as reference::nonlinear_recurrence;
/// options.reverse runs from token T-1 down through reversed views (NonlinearRecurrenceOptions).
template <class Cell>
void nonlinear_recurrence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                          const NonlinearRecurrenceOptions& options, const Executor& executor = serial_executor()) {
  using namespace detail::newton;
  if (options.reverse)
    return seqmix::nonlinear_recurrence(reversed_inputs("nonlinear_recurrence", in), reversed_outputs(out),
                                        NonlinearRecurrenceOptions{}, executor);
  SequenceMap seqs;
  const Dims d = validate("nonlinear_recurrence", in, out, &seqs);
  if (seqs.packed() || seqs.slotted()) {
    solve_per_sequence(in, out, seqs, [&](const auto& one, const auto& one_out, const SequenceSpan&) {
      seqmix::nonlinear_recurrence(one, one_out, NonlinearRecurrenceOptions{}, executor);
    });
    return;
  }
  std::vector<Tensor<float, 3>> copies;
  const Problem<Cell> p = make_problem(in, d, 0.f, copies);
  with_contiguous_output<Cell>(out, d, [&](const Rows& h) { run_sequential(p, h, executor); });
  write_last(out, in.h0, d);
}

/// The forward sequential loop with default options.
template <class Cell>
void nonlinear_recurrence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                          const Executor& executor = serial_executor()) {
  seqmix::nonlinear_recurrence(in, out, NonlinearRecurrenceOptions{}, executor);
}

/// Parallel Newton solution of h_t = f(h_{t-1}, x_t) (see the header comment and README.md).
/// Returns the report: status, iterations, last update size, residual of the returned h. When
/// Newton fails (iteration cap, NaN/inf), h holds NaN or the sequential result (options.fallback),
/// never a silently wrong iterate. Scratch: with the time split, two [B,T,D] buffers.
/// options.reverse solves h_t = f(h_{t+1}, x_t) from token T-1 down on reversed views (no copy).
template <class Cell>
NewtonReport nonlinear_recurrence_newton(const NonlinearRecurrenceInputs<Cell>& in,
                                         const NonlinearRecurrenceOutputs& out,
                                         const NonlinearRecurrenceNewtonOptions& options = {},
                                         const Executor& executor = serial_executor()) {
  using namespace detail::newton;
  const char* op = "nonlinear_recurrence_newton";
  if (options.reverse)
    return seqmix::nonlinear_recurrence_newton(reversed_inputs(op, in), reversed_outputs(out),
                                               detail::forward_options(options), executor);
  SequenceMap seqs;
  const Dims d = validate(op, in, out, &seqs);
  validate_options(op, options);
  if (seqs.packed() || seqs.slotted())
    return newton_per_sequence(in, out, seqs, [&](const auto& one, const auto& one_out) {
      return seqmix::nonlinear_recurrence_newton(one, one_out, options, executor);
    });
  std::vector<Tensor<float, 3>> copies;
  const Problem<Cell> p = make_problem(in, d, options.jacobian_clamp, copies);
  NewtonReport report;
  if (d.B * d.T * d.D == 0) {  // nothing to solve
    report.converged = true;
    write_last(out, in.h0, d);
    return report;
  }
  with_contiguous_output<Cell>(out, d, [&](const Rows& h) {
    if (options.warm_start && !out.h.is_last_dim_contiguous() && d.D > 1)  // the guess lives in out.h
      for (index_t b = 0; b < d.B; ++b)
        for (index_t t = 0; t < d.T; ++t)
          for (index_t c = 0; c < d.D; ++c) h.row(b, t)[c] = out.h(b, t, c);
    if (use_time_split(options.split, d.B, d.D, executor.concurrency()))
      newton_time(p, h, options, executor, report);
    else
      newton_channels(p, h, options, executor, report);
    report.converged = report.status == NewtonStatus::converged;
    if (!report.converged) {
      report.message = failure_message(report.status, report.iterations, report.max_update, options.tol);
      if (falls_back(in, d, options, report)) {
        run_sequential(p, h, executor);
        report.used_fallback = true;
      }
    }
    if (report.converged || report.used_fallback) {
      report.residual = residual(p, h, executor);
    } else {
      for (index_t b = 0; b < d.B; ++b)
        for (index_t t = 0; t < d.T; ++t) std::fill(h.row(b, t), h.row(b, t) + d.D, std::numeric_limits<float>::quiet_NaN());
      report.residual = std::numeric_limits<float>::quiet_NaN();
    }
  });
  write_last(out, in.h0, d);
  return report;
}

}  // namespace seqmix
