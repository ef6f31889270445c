// ring_attention: dense softmax attention over a sequence sliced by position across the ranks of
// an MPI communicator (ring attention, Liu et al. 2023), equal to seqmix::attention on the whole
// sequence within rounding.
//
// Each rank holds the q, k, v rows of its slice (ContextSlices: contiguous, or zigzag for causal
// load balance). The K/V blocks travel once around the ring: at step s rank r holds the block of
// rank r - s, posts the nonblocking send of that block to r + 1 and the receive of the next from
// r - 1, and meanwhile runs the local attention of its queries against the block it holds
// (seqmix::attention on each pair of a query segment and a key segment, with the queries'
// positions shifted to the key segment's start, so causal, window, ALiBi and relative biases see
// the global distances). Each pair's (o, lse) is folded into the running result with
// attention_merge, the softmax monoid; the sink logits are merged once at the end. Pairs no query
// can see (a key segment wholly after the queries under causal masking) are skipped, so zigzag
// slices give every rank about the same causal work.
//
// Communication per rank: the K/V of every other rank once (P - 1 blocks sent and received), in
// two buffers of the largest block. The collective argument check (collective.hpp) runs first.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/mpi/collective.hpp"

namespace seqmix {
namespace mpi {

/// What one rank's ring_attention call did (optional output): the bytes it moved and where its
/// time went. `wait_seconds` is the communication the local work did not hide.
struct RingAttentionStats {
  std::int64_t bytes_sent = 0;      ///< K/V bytes this rank sent (P - 1 blocks)
  std::int64_t bytes_received = 0;  ///< K/V bytes this rank received
  double compute_seconds = 0;       ///< local attention and merges
  double wait_seconds = 0;          ///< blocked in MPI_Waitall after the local work of a step
  double total_seconds = 0;         ///< the whole call, collective check included
};

namespace detail {

// Packs a [B, T, H, D] view (any strides) into dst, row-major.
template <class T>
void pack_rows(const ConstView<T, 4>& x, T* dst) {
  for (index_t b = 0; b < x.size(0); ++b)
    for (index_t t = 0; t < x.size(1); ++t)
      for (index_t h = 0; h < x.size(2); ++h)
        for (index_t c = 0; c < x.size(3); ++c) *dst++ = x(b, t, h, c);
}

// Whether any query at positions [q.begin, q.begin + q.length) can see a key of k under the
// masking rules (skipping is only an optimization: attention gives lse = -inf rows otherwise).
inline bool ring_pair_visible(const AttentionOptions& options, const SliceSegment& q, const SliceSegment& k) {
  if (q.length == 0 || k.length == 0) return false;
  const index_t q_last = q.begin + q.length - 1, k_last = k.begin + k.length - 1;
  if (options.causal && k.begin > q_last) return false;
  const bool sinks = options.window > 0 && k.begin < options.sink_tokens;
  // Key j is in the window of query p when j > p - window (and j <= p when causal).
  if (options.window > 0 && !sinks && k_last <= q.begin - options.window) return false;
  return true;
}

inline std::int64_t attention_options_hash(const AttentionOptions& o) {
  std::int64_t h = o.causal ? 1 : 0;
  h = h * 1000003 + o.window;
  h = h * 1000003 + o.sink_tokens;
  float values[2] = {o.scale ? *o.scale : std::numeric_limits<float>::quiet_NaN(), o.softcap};
  std::int32_t bits[2];
  std::memcpy(bits, values, sizeof bits);
  h = h * 1000003 + bits[0];
  return h * 1000003 + bits[1];
}

}  // namespace detail

/// Dense attention over a sequence sliced across the ranks of `comm` (see the top of this file).
/// Collective: every rank of comm calls it with the same slices, shapes and options.
///
/// Rank r passes its local rows: in.q [B, T_r, Hq, Dk], in.k [B, T_r, Hkv, Dk], in.v
/// [B, T_r, Hkv, Dv] and out.o [B, T_r, Hq, Dv] (out.lse [B, T_r, Hq] optional), where
/// T_r = slices.tokens(r) (0 allowed) and local row i sits at global position
/// slices.position(r, i). The result is seqmix::attention over the whole sequence (causal,
/// window, sink tokens, ALiBi, T5 / KERPLE relative bias, softcap, sink logits, head scales,
/// GQA), restricted to rank r's rows. Not supported (ShapeError): mask, positions, packed
/// batches, fused rope (rotate q and k at their global positions first), FIRE (its normalizer
/// reads the absolute position). Any refused argument, or ranks disagreeing on the
/// slices, shapes or options, throws the same ShapeError on every rank before any exchange.
/// `stats` (optional) receives this rank's bytes and timings.
template <class KV>
void ring_attention(MPI_Comm comm, const ContextSlices& slices, const AttentionInputs<KV>& in,
                    const AttentionOutputs& out, const AttentionOptions& options = {},
                    const Executor& executor = serial_executor(), RingAttentionStats* stats = nullptr) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  const std::string op = "mpi::ring_attention";
  const int rank = detail::comm_rank(comm), ranks = detail::comm_size(comm);

  seqmix::detail::AttentionDims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"slices", slices.fingerprint()},
      {"q (batch, dimension 0)", in.q.size(0)},
      {"q (query heads, dimension 2)", in.q.size(2)},
      {"q (head size, dimension 3)", in.q.size(3)},
      {"k (KV heads, dimension 2)", in.k.size(2)},
      {"v (value head size, dimension 3)", in.v.size(3)},
      {"options", detail::attention_options_hash(options)},
      {"alibi_slopes (given or not)", in.alibi_slopes.has_value()},
      {"sink_logits (given or not)", in.sink_logits.has_value()},
      {"relative_bias.kind", static_cast<std::int64_t>(in.relative_bias.kind)},
      {"head_scales (given or not)", in.head_scales.has_value()},
  };
  detail::collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    if (slices.ranks() != ranks)
      check.fail("slices", "describe " + std::to_string(slices.ranks()) + " ranks, the communicator has " +
                               std::to_string(ranks));
    if (in.mask.has_value()) check.fail("mask", "is not supported by ring_attention");
    if (in.positions.has_value())
      check.fail("positions", "is not supported by ring_attention (positions come from the slices)");
    if (in.batch.packed() || in.batch.slotted()) check.fail("batch", "is not supported by ring_attention");
    if (in.rope) check.fail("rope", "is not supported by ring_attention: rotate q and k at their global positions first");
    // Each block is attended with positions shifted to its first key: only biases of the distance
    // pos - j alone survive the shift (FIRE's normalizer reads pos itself).
    const RelativeBiasKind kind = in.relative_bias.kind;
    if (kind != RelativeBiasKind::none && kind != RelativeBiasKind::t5 && kind != RelativeBiasKind::kerple_log &&
        kind != RelativeBiasKind::kerple_power)
      check.fail("relative_bias.kind", "is not supported by ring_attention (only biases of pos - j: T5, KERPLE)");
    const index_t T = slices.tokens(rank);
    check.shape("q", in.q, std::array<index_t, 4>{-1, T, -1, -1}, "B,T_rank,Hq,Dk");
    check.shape("k", in.k, std::array<index_t, 4>{-1, T, -1, -1}, "B,T_rank,Hkv,Dk");
    d = seqmix::detail::validate_attention(check, in, out, options);
  });

  // The local K/V block, packed: [B, T_r, Hkv, Dk] keys then [B, T_r, Hkv, Dv] values.
  const auto block_elems = [&](int r) { return d.B * slices.tokens(r) * d.Hkv * (d.Dk + d.Dv); };
  index_t largest = 0;
  for (int r = 0; r < ranks; ++r) largest = std::max(largest, block_elems(r));
  std::vector<KV> current(static_cast<std::size_t>(largest)), next(static_cast<std::size_t>(largest));
  detail::pack_rows(in.k, current.data());
  detail::pack_rows(in.v, current.data() + d.B * slices.tokens(rank) * d.Hkv * d.Dk);

  // The running result: out.o itself, its lse here (-inf, o = 0: the monoid's identity).
  const index_t T = slices.tokens(rank);
  std::vector<float> lse_acc(static_cast<std::size_t>(d.B * T * d.Hq), seqmix::detail::kMinusInf);
  const TensorView<float, 3> lse_all(lse_acc.data(), {d.B, T, d.Hq});
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < T; ++i)
      for (index_t h = 0; h < d.Hq; ++h)
        for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = 0.f;

  // Scratch of one pair: its (o, lse) and the queries' shifted positions.
  index_t longest = 0;
  for (const SliceSegment& s : slices.segments(rank)) longest = std::max(longest, s.length);
  std::vector<float> o_part(static_cast<std::size_t>(d.B * longest * d.Hq * d.Dv));
  std::vector<float> lse_part(static_cast<std::size_t>(d.B * longest * d.Hq));
  std::vector<std::int64_t> shifted(static_cast<std::size_t>(d.B * longest));

  AttentionInputs<KV> pair = in;  // biases, slopes and head scales pass through unchanged
  pair.sink_logits = {};          // merged once at the end

  RingAttentionStats st;
  const int to = (rank + 1) % ranks, from = (rank + ranks - 1) % ranks;
  std::vector<MPI_Request> requests;
  for (int step = 0; step < ranks; ++step) {
    const int owner = (rank - step + ranks) % ranks;  // whose block `current` holds
    if (step + 1 < ranks) {
      const std::int64_t send = block_elems(owner) * static_cast<std::int64_t>(sizeof(KV));
      const std::int64_t recv = block_elems((owner - 1 + ranks) % ranks) * static_cast<std::int64_t>(sizeof(KV));
      detail::irecv_bytes(next.data(), recv, from, 7021, comm, requests);
      detail::isend_bytes(current.data(), send, to, 7021, comm, requests);
      st.bytes_sent += send;
      st.bytes_received += recv;
    }
    const auto compute_start = clock::now();
    const index_t Tk = slices.tokens(owner);
    const ConstView<KV, 4> k_block(current.data(), {d.B, Tk, d.Hkv, d.Dk});
    const ConstView<KV, 4> v_block(current.data() + d.B * Tk * d.Hkv * d.Dk, {d.B, Tk, d.Hkv, d.Dv});
    for (const SliceSegment& qs : slices.segments(rank))
      for (const SliceSegment& ks : slices.segments(owner)) {
        if (!detail::ring_pair_visible(options, qs, ks)) continue;
        for (index_t b = 0; b < d.B; ++b)
          for (index_t i = 0; i < qs.length; ++i) shifted[static_cast<std::size_t>(b * qs.length + i)] = qs.begin + i - ks.begin;
        AttentionOptions shift = options;  // sink tokens are the first keys of the sequence
        shift.sink_tokens = std::max<index_t>(0, options.sink_tokens - ks.begin);
        pair.q = in.q.slice(1, qs.local, qs.length);
        pair.k = k_block.slice(1, ks.local, ks.length);
        pair.v = v_block.slice(1, ks.local, ks.length);
        pair.positions = ConstView<std::int64_t, 2>(shifted.data(), {d.B, qs.length});
        const TensorView<float, 4> o_pair(o_part.data(), {d.B, qs.length, d.Hq, d.Dv});
        const TensorView<float, 3> lse_pair(lse_part.data(), {d.B, qs.length, d.Hq});
        attention(pair, AttentionOutputs{o_pair, lse_pair}, shift, executor);
        detail::poke(requests);
        const TensorView<float, 4> o_rows = out.o.slice(1, qs.local, qs.length);
        const TensorView<float, 3> lse_rows = lse_all.slice(1, qs.local, qs.length);
        attention_merge(o_rows, lse_rows, o_pair, lse_pair, o_rows, lse_rows, executor);
        detail::poke(requests);
      }
    st.compute_seconds += seconds_since(compute_start);
    const auto wait_start = clock::now();
    detail::wait_all(requests);
    st.wait_seconds += seconds_since(wait_start);
    std::swap(current, next);
  }

  // Sink logits: one more part with o = 0 and lse = sink_h, i.e. a rescaling of every row.
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < T; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        float& lse = lse_all(b, i, h);
        if (in.sink_logits.has_value()) {
          const float sink = in.sink_logits(h), top = std::max(lse, sink);
          const float merged = top + std::log(std::exp(lse - top) + std::exp(sink - top));
          const float w = lse == seqmix::detail::kMinusInf ? 0.f : std::exp(lse - merged);
          for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) *= w;
          lse = merged;
        }
        if (out.lse.has_value()) out.lse(b, i, h) = lse;
      }
  st.total_seconds = seconds_since(start);
  if (stats) *stats = st;
}

}  // namespace mpi
}  // namespace seqmix
