// seqmix::mom, the fast prefill: the entries routed to each memory are gathered in token order
// into one packed batch (a sequence per (batch row, memory), cu_seqlens), run by the gated delta
// rule's fast prefill in one call (threaded over sequences and heads, each memory's sequence on
// the form delta_update::choose_delta_algorithm picks for its own tokens: the chunked WY form, or
// the recurrent kernel, e.g. at K = V = 64 up to about 8 MiB of rows per memory), and the reads
// are scattered back as the weighted sum per token. Each memory thus runs a dense recurrence
// over its own tokens only, which is MoM's "chunk by grouping each memory's tokens";
// the gather and scatter copy O(T E (K + V)) floats against the recurrence's O(T E K V) work.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/mom/reference.hpp"

namespace seqmix {

namespace detail {

// Copies row `src` (any strides) into n contiguous floats.
template <std::size_t Rank>
void gather_rows(const ConstView<float, Rank>& src, float* dst) {
  if constexpr (Rank == 1) {
    for (index_t i = 0; i < src.size(0); ++i) dst[i] = src(i);
  } else {
    index_t inner = 1;
    for (std::size_t r = 1; r < Rank; ++r) inner *= src.size(r);
    for (index_t i = 0; i < src.size(0); ++i) gather_rows(src[i], dst + i * inner);
  }
}

// A [B,M,...] state view as [B*M,...] rows, when its two leading strides allow it.
inline bool merge_memory_rows(const ConstView<float, 5>& s, ConstView<float, 4>* merged) {
  if (!s.has_value()) return true;
  if (s.size(0) > 1 && s.stride(0) != s.size(1) * s.stride(1)) return false;
  *merged = ConstView<float, 4>(s.data(), {s.size(0) * s.size(1), s.size(2), s.size(3), s.size(4)},
                                {s.stride(1), s.stride(2), s.stride(3), s.stride(4)});
  return true;
}

// Packed copies of every entry, grouped by (batch row, memory) in token order. The buffers are
// the calling thread's and kept between calls: fresh ones cost a first touch of every page (tens
// of MB at model shapes), which measured as much as the recurrence itself.
struct MomPacked {
  std::vector<float> q, k, v, g, beta, o;
  std::vector<std::int64_t> cu_seqlens, position, next;  // position[(b*T + t)*E + e] = packed row
};

inline void pack_mom(const MomInputs& in, const MomOptions& options, const MomDims& d, MomPacked& p) {
  const index_t rows = d.B * d.T * d.E, sequences = d.B * d.M;
  const bool channel = options.memory.gate == DeltaGate::channel;
  p.cu_seqlens.assign(static_cast<std::size_t>(sequences + 1), 0);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t e = 0; e < d.E; ++e) ++p.cu_seqlens[static_cast<std::size_t>(b * d.M + in.memory(b, t, e) + 1)];
  for (index_t s = 0; s < sequences; ++s) p.cu_seqlens[static_cast<std::size_t>(s + 1)] += p.cu_seqlens[static_cast<std::size_t>(s)];
  p.next.assign(p.cu_seqlens.begin(), p.cu_seqlens.end() - 1);
  auto size = [&](std::vector<float>& buffer, index_t per_row) { buffer.resize(static_cast<std::size_t>(rows * per_row)); };
  size(p.q, d.HK * d.K), size(p.k, d.HK * d.K), size(p.v, d.HV * d.V), size(p.o, d.HV * d.V), size(p.beta, d.HV);
  size(p.g, channel ? d.HV * d.K : d.HV);
  p.position.resize(static_cast<std::size_t>(rows));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t e = 0; e < d.E; ++e) {
        const index_t row = p.next[static_cast<std::size_t>(b * d.M + in.memory(b, t, e))]++;
        p.position[static_cast<std::size_t>((b * d.T + t) * d.E + e)] = row;
        gather_rows(in.q[b][t], p.q.data() + row * d.HK * d.K);
        gather_rows(in.k[b][t][e], p.k.data() + row * d.HK * d.K);
        gather_rows(in.v[b][t][e], p.v.data() + row * d.HV * d.V);
        gather_rows(in.beta[b][t][e], p.beta.data() + row * d.HV);
        if (channel)
          gather_rows(in.g[b][t][e], p.g.data() + row * d.HV * d.K);
        else
          gather_rows(in.g_scalar[b][t][e], p.g.data() + row * d.HV);
      }
}

}  // namespace detail

/// Mixture-of-Memories prefill (definition: reference.hpp). Threads: the gated delta rule's,
/// over the (batch row, memory) sequences and heads.
inline void mom(const MomInputs& in, const MomOutputs& out, const MomOptions& options = {},
                const Executor& executor = serial_executor()) {
  if (options.memory.reverse) {
    const auto rev = detail::mom_reversed_call(in, out, options);
    return mom(rev.in, rev.out, rev.options, executor);
  }
  const ArgCheck check("mom");
  const detail::MomDims d = detail::validate_mom(check, in, out, options);
  thread_local detail::MomPacked p;
  detail::pack_mom(in, options, d, p);
  const index_t rows = d.B * d.T * d.E;
  // States as [B*M] rows of the packed call: views when the layout allows, else copies.
  ConstView<float, 4> initial;
  Tensor<float, 4> initial_copy, final_copy;
  if (!detail::merge_memory_rows(in.initial_state, &initial)) {
    initial_copy = Tensor<float, 4>({d.B * d.M, d.HV, d.K, d.V});
    for (index_t b = 0; b < d.B; ++b)
      for (index_t m = 0; m < d.M; ++m) detail::gather_rows(in.initial_state[b][m], initial_copy.view()[b * d.M + m].data());
    initial = initial_copy.view();
  }
  ConstView<float, 4> final_view;
  TensorView<float, 4> final_rows;
  const bool final_merged = detail::merge_memory_rows(ConstView<float, 5>(out.final_state), &final_view);
  if (out.final_state.has_value()) {
    if (final_merged) {
      final_rows = TensorView<float, 4>(out.final_state.data(), final_view.shape(), final_view.strides());
    } else {
      final_copy = Tensor<float, 4>({d.B * d.M, d.HV, d.K, d.V});
      final_rows = final_copy.view();
    }
  }
  GatedDeltaRuleInputs packed;
  packed.q = ConstView<float, 4>(p.q.data(), {1, rows, d.HK, d.K});
  packed.k = ConstView<float, 4>(p.k.data(), {1, rows, d.HK, d.K});
  packed.v = ConstView<float, 4>(p.v.data(), {1, rows, d.HV, d.V});
  packed.beta = ConstView<float, 3>(p.beta.data(), {1, rows, d.HV});
  if (options.memory.gate == DeltaGate::channel)
    packed.g = ConstView<float, 4>(p.g.data(), {1, rows, d.HV, d.K});
  else
    packed.g_scalar = ConstView<float, 3>(p.g.data(), {1, rows, d.HV});
  const TensorView<float, 4> packed_o(p.o.data(), {1, rows, d.HV, d.V});
  packed.initial_state = initial;
  packed.batch.cu_seqlens = p.cu_seqlens;
  gated_delta_rule(packed, {packed_o, final_rows}, options.memory, executor);
  // A memory no token routed to keeps its state (the packed call may leave an empty sequence's
  // final row unwritten).
  if (final_rows.has_value())
    for (index_t s = 0; s < d.B * d.M; ++s) {
      if (p.cu_seqlens[static_cast<std::size_t>(s + 1)] != p.cu_seqlens[static_cast<std::size_t>(s)]) continue;
      const TensorView<float, 3> row = final_rows[s];
      for (index_t hv = 0; hv < d.HV; ++hv)
        for (index_t r = 0; r < d.K; ++r)
          for (index_t c = 0; c < d.V; ++c) row(hv, r, c) = initial.has_value() ? initial(s, hv, r, c) : 0.f;
    }
  if (final_copy.numel() > 0)
    for (index_t b = 0; b < d.B; ++b)
      for (index_t m = 0; m < d.M; ++m) {
        const TensorView<float, 3> dst = out.final_state[b][m];
        for (index_t hv = 0; hv < d.HV; ++hv)
          for (index_t r = 0; r < d.K; ++r)
            for (index_t c = 0; c < d.V; ++c) dst(hv, r, c) = final_copy.view()(b * d.M + m, hv, r, c);
      }
  // o_t = sum_e weight * read, entries in order (as the reference sums them), in double.
  const index_t width = d.HV * d.V;
  std::vector<double> acc(static_cast<std::size_t>(width));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (index_t e = 0; e < d.E; ++e) {
        const double w = in.weight(b, t, e);
        const float* read = p.o.data() + p.position[static_cast<std::size_t>((b * d.T + t) * d.E + e)] * width;
        for (index_t i = 0; i < width; ++i) acc[static_cast<std::size_t>(i)] += w * double(read[i]);
      }
      for (index_t hv = 0; hv < d.HV; ++hv)
        for (index_t c = 0; c < d.V; ++c) out.o(b, t, hv, c) = static_cast<float>(acc[static_cast<std::size_t>(hv * d.V + c)]);
    }
}

}  // namespace seqmix
