// memory_tokens: segment recurrence with memory tokens (RMT, Bulatov et al. 2022), with HMT's
// recall of past segment memories as an option (He et al. 2024; issue 22 item 2). README.md has
// the definition and what is taken from each paper.
//
// This header holds the options, the argument structs, their validation and the readable
// definition (seqmix::reference::memory_tokens: one layer call per batch row and segment, the
// recall in double). The fast form (the whole batch per layer call, threaded copies) is fast.hpp.
//
//   x [B,T,D] tokens, memory [B,M,D] the memory tokens before the first segment (M may be 0).
//   The tokens are cut into segments of `segment` tokens (0: one segment). For each segment s of
//   len tokens, with mem the memory before it:
//     read   = mem                                   (recall == 0)
//            = sum_i softmax_i(scale <mean_t x[t] W_q, mean_m C_i[m] W_k>) C_i   (recall == N >= 1;
//              W_q, W_k [D,R]: the caller's recall projections, identity when not given)
//              over C_i, the last N memories (the initial one and each written one)
//     in     = [read ; x[segment] ; mem]             [M + len + M, D]
//     out    = layer(in)                             the caller's layer, same shape
//     y[segment] = out[M, M + len),   mem' = out[M + len, 2M + len)
//   final_memory = the memory after the last segment. With recall == 1, read == mem.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of memory_tokens (docs/operators.md section 13).
struct MemoryTokensOptions {
  /// Tokens per segment; 0: all T in one segment.
  index_t segment = 0;
  /// HMT-style recall: 0 (off) reads the carried memory; N >= 1 reads a softmax mix of the last N
  /// memories (the initial one and every written one), keyed by their mean row and queried by the
  /// segment's mean token. N = 1 equals 0. Needs M >= 1.
  index_t recall = 0;
  /// Multiplies the recall scores; 0 means 1 / sqrt(D) (1 / sqrt(R) with recall projections).
  float recall_scale = 0.f;
  /// Run from the last token to the first (core/direction.hpp): x and y are reached through
  /// reversed views, not copied, so segments are cut from token T-1, the layer sees each
  /// segment's tokens in processing order (last first) and final_memory is the memory written by
  /// the segment holding token 0.
  bool reverse = false;
};

/// Inputs of memory_tokens.
struct MemoryTokensInputs {
  ConstView<float, 3> x;       ///< [B,T,D]
  ConstView<float, 3> memory;  ///< [B,M,D]: the memory tokens before the first segment; M may be 0
  /// [D,R], optional (with recall_key): HMT's learned query projection; the recall then scores
  /// <mean_t x W_q, mean_m C_i W_k> instead of the plain dot product of the means.
  ConstView<float, 2> recall_query = {};
  ConstView<float, 2> recall_key = {};  ///< [D,R], optional (with recall_query): the key projection
};

/// Outputs of memory_tokens. Neither may overlap an input or the other.
struct MemoryTokensOutputs {
  TensorView<float, 3> y;             ///< [B,T,D]: the layer's outputs at the segment tokens
  TensorView<float, 3> final_memory;  ///< [B,M,D]: the memory written by the last segment
};

namespace detail {

struct MemoryTokensDims {
  index_t B, T, M, D, L, recall;
  index_t R;  // columns of the recall projections (0: none)
  float scale;
};

// `with_final`: false for memory_tokens_step, whose memory is the state's (written in place).
inline MemoryTokensDims validate_memory_tokens(const ArgCheck& check, const MemoryTokensInputs& in,
                                               const MemoryTokensOutputs& out, const MemoryTokensOptions& options,
                                               bool with_final = true) {
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  MemoryTokensDims d{};
  d.B = in.x.size(0), d.T = in.x.size(1), d.D = in.x.size(2);
  check.that(d.D >= 1, "x", "needs D >= 1");
  check.shape("memory", in.memory, {d.B, -1, d.D}, "B,M,D");
  d.M = in.memory.size(1);
  check.that(options.segment >= 0, "segment", "must be >= 0, got " + std::to_string(options.segment));
  d.L = options.segment == 0 ? std::max<index_t>(d.T, 1) : options.segment;
  check.that(options.recall >= 0, "recall", "must be >= 0, got " + std::to_string(options.recall));
  check.that(options.recall == 0 || d.M >= 1, "recall", "needs memory tokens (M >= 1)");
  d.recall = options.recall;
  check.finite(options.recall_scale, "recall_scale");
  d.R = 0;
  if (in.recall_query.has_value() || in.recall_key.has_value()) {
    check.that(options.recall >= 1, in.recall_query.has_value() ? "recall_query" : "recall_key",
               "is only used with recall >= 1");
    check.shape("recall_query", in.recall_query, {d.D, -1}, "D,R");
    d.R = in.recall_query.size(1);
    check.that(d.R >= 1, "recall_query", "needs R >= 1 columns");
    check.shape("recall_key", in.recall_key, {d.D, d.R}, "D,R");
  }
  const index_t score_dim = d.R > 0 ? d.R : d.D;
  d.scale = options.recall_scale == 0.f ? 1.f / std::sqrt(static_cast<float>(score_dim)) : options.recall_scale;
  check.product("memory", d.B, 2 * d.M + std::min(d.L, std::max<index_t>(d.T, 1)), d.D);  // the layer's input fits
  check.shape("y", out.y, {d.B, d.T, d.D}, "B,T,D");
  check.no_overlap("y", out.y, "x", in.x).no_overlap("y", out.y, "memory", in.memory);
  if (!with_final) return d;
  check.shape("final_memory", out.final_memory, {d.B, d.M, d.D}, "B,M,D");
  check.no_overlap("final_memory", out.final_memory, "x", in.x)
      .no_overlap("final_memory", out.final_memory, "memory", in.memory)
      .no_overlap("final_memory", out.final_memory, "y", out.y);
  return d;
}

// A reverse call (options.reverse) as the forward call on reversed views of x and y.
inline std::pair<MemoryTokensInputs, MemoryTokensOutputs> memory_tokens_reversed_call(MemoryTokensInputs in,
                                                                                     MemoryTokensOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

}  // namespace detail

/// The layer memory_tokens calls once per segment: it reads `in` [B', M + len + M, D] (read
/// memory, segment tokens, write memory) and must write every element of `out` (same shape).
/// Both views are contiguous and do not overlap; `in` is valid for the call only.
using MemoryTokensLayer = FunctionRef<void(const ConstView<float, 3>&, const TensorView<float, 3>&)>;

namespace reference {

/// memory_tokens by its definition: per batch row and segment, the layer's input built by loops,
/// one layer call with B' = 1, the recall in double. For tests. Validation as memory_tokens.
inline void memory_tokens(const MemoryTokensInputs& in, const MemoryTokensOutputs& out, MemoryTokensLayer layer,
                          const MemoryTokensOptions& options = {}) {
  if (options.reverse) {
    const auto rev = detail::memory_tokens_reversed_call(in, out);
    return memory_tokens(rev.first, rev.second, layer, detail::forward_options(options));
  }
  const ArgCheck check("reference::memory_tokens");
  const auto d = detail::validate_memory_tokens(check, in, out, options);
  using Rows = std::vector<std::vector<double>>;
  for (index_t b = 0; b < d.B; ++b) {
    Rows mem(static_cast<std::size_t>(d.M), std::vector<double>(static_cast<std::size_t>(d.D)));
    for (index_t m = 0; m < d.M; ++m)
      for (index_t c = 0; c < d.D; ++c) mem[m][c] = in.memory(b, m, c);
    std::vector<Rows> past{mem};  // the recall's cache: the last `recall` memories
    for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
      const index_t len = std::min(d.L, d.T - t0), n = 2 * d.M + len;
      Rows read = mem;
      if (d.recall >= 1) {
        std::vector<double> query(static_cast<std::size_t>(d.D), 0.0), score;
        for (index_t t = t0; t < t0 + len; ++t)
          for (index_t c = 0; c < d.D; ++c) query[c] += in.x(b, t, c) / static_cast<double>(len);
        double top = -INFINITY, total = 0;
        // q . k with q the segment's mean token and k an entry's mean row, each through its
        // projection when the caller gives them (x W, x a row vector).
        auto project = [&](const std::vector<double>& x, const ConstView<float, 2>& w) {
          if (d.R == 0) return x;
          std::vector<double> out(static_cast<std::size_t>(d.R), 0.0);
          for (index_t c = 0; c < d.D; ++c)
            for (index_t r = 0; r < d.R; ++r) out[r] += x[c] * w(c, r);
          return out;
        };
        const std::vector<double> q = project(query, in.recall_query);
        for (const auto& entry : past) {
          std::vector<double> mean(static_cast<std::size_t>(d.D), 0.0);
          for (index_t m = 0; m < d.M; ++m)
            for (index_t c = 0; c < d.D; ++c) mean[c] += entry[m][c] / static_cast<double>(d.M);
          const std::vector<double> k = project(mean, in.recall_key);
          double dot = 0;
          for (std::size_t r = 0; r < k.size(); ++r) dot += q[r] * k[r];
          score.push_back(d.scale * dot);
          top = std::fmax(top, score.back());
        }
        for (auto& e : score) total += e = std::exp(e - top);
        for (index_t m = 0; m < d.M; ++m)
          for (index_t c = 0; c < d.D; ++c) {
            double sum = 0;
            for (std::size_t i = 0; i < past.size(); ++i) sum += score[i] / total * past[i][m][c];
            read[m][c] = sum;
          }
      }
      Tensor<float, 3> layer_in({1, n, d.D}), layer_out({1, n, d.D});
      for (index_t m = 0; m < d.M; ++m)
        for (index_t c = 0; c < d.D; ++c) {
          layer_in.view()(0, m, c) = static_cast<float>(read[m][c]);
          layer_in.view()(0, d.M + len + m, c) = static_cast<float>(mem[m][c]);
        }
      for (index_t j = 0; j < len; ++j)
        for (index_t c = 0; c < d.D; ++c) layer_in.view()(0, d.M + j, c) = in.x(b, t0 + j, c);
      layer(layer_in.cview(), layer_out.view());
      for (index_t j = 0; j < len; ++j)
        for (index_t c = 0; c < d.D; ++c) out.y(b, t0 + j, c) = layer_out.view()(0, d.M + j, c);
      for (index_t m = 0; m < d.M; ++m)
        for (index_t c = 0; c < d.D; ++c) mem[m][c] = layer_out.view()(0, d.M + len + m, c);
      if (d.recall >= 1) {
        past.push_back(mem);
        if (static_cast<index_t>(past.size()) > d.recall) past.erase(past.begin());
      }
    }
    for (index_t m = 0; m < d.M; ++m)
      for (index_t c = 0; c < d.D; ++c) out.final_memory(b, m, c) = static_cast<float>(mem[m][c]);
  }
}

}  // namespace reference
}  // namespace seqmix
