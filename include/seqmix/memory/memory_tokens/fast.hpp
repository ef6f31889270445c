// memory_tokens, fast form: one layer call per segment over the whole batch ([B, M + len + M, D]),
// the input built and the outputs copied out by tasks over the batch rows, the recall as dot
// products in fp32 with a double softmax. README.md has the definition.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/memory/memory_tokens/reference.hpp"

namespace seqmix {

namespace detail {

// One token row of D channels, src to dst with the given channel strides. The segment copies go
// row by row through a row pointer: the reverse option hands memory_tokens views with a negative
// token stride, and the per-element multi-index access (offsets recomputed from three strides)
// did not vectorize; a row is contiguous in either direction, so it is one memcpy-like loop
// whatever the token order.
inline void copy_row(const float* src, index_t src_stride, index_t D, float* dst, index_t dst_stride) {
  if (src_stride == 1 && dst_stride == 1) {
    std::copy(src, src + D, dst);
    return;
  }
  for (index_t c = 0; c < D; ++c) dst[c * dst_stride] = src[c * src_stride];
}

// The segments of in.x from the carried memory `mem` [B,M,D] and the recall's cache `past` (the
// last `recall` memories, oldest first), both updated in place; y as memory_tokens.
inline void memory_tokens_run(const MemoryTokensDims& d, const MemoryTokensInputs& in, const TensorView<float, 3>& y,
                              MemoryTokensLayer layer, const Executor& executor, Tensor<float, 3>& mem,
                              std::vector<Tensor<float, 3>>& past) {
  const MemoryTokensOutputs out{y, {}};
  Tensor<float, 3> layer_in, layer_out;
  index_t allocated = -1;  // the segment length layer_in / layer_out are sized for
  for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
    const index_t len = std::min(d.L, d.T - t0), n = 2 * d.M + len;
    if (allocated != len) {
      layer_in = Tensor<float, 3>({d.B, n, d.D}), layer_out = Tensor<float, 3>({d.B, n, d.D});
      allocated = len;
    }
    parallel_for(executor, d.B, 1, [&](index_t begin, index_t end) {
      std::vector<double> weight(past.size());
      std::vector<float> query(static_cast<std::size_t>(d.D)), mean(static_cast<std::size_t>(d.D)), q_proj, k_proj;
      for (index_t b = begin; b < end; ++b) {
        float* dst = layer_in.data() + b * n * d.D;
        const float* carried = mem.data() + b * d.M * d.D;
        for (index_t j = 0; j < len; ++j) copy_row(in.x.ptr(b, t0 + j), in.x.stride(2), d.D, dst + (d.M + j) * d.D, 1);
        std::copy(carried, carried + d.M * d.D, dst + (d.M + len) * d.D);
        if (d.recall == 0) {
          std::copy(carried, carried + d.M * d.D, dst);
          continue;
        }
        std::fill(query.begin(), query.end(), 0.f);
        for (index_t j = 0; j < len; ++j)
          for (index_t c = 0; c < d.D; ++c) query[c] += dst[(d.M + j) * d.D + c];
        for (auto& value : query) value /= static_cast<float>(len);
        // Scores <q, k_i>: q the segment's mean token, k_i entry i's mean row, each through the
        // caller's projection when given.
        auto project = [&](const std::vector<float>& x, const ConstView<float, 2>& w, std::vector<float>& out) {
          if (d.R == 0) {
            out = x;
            return;
          }
          out.assign(static_cast<std::size_t>(d.R), 0.f);
          for (index_t c = 0; c < d.D; ++c)
            for (index_t r = 0; r < d.R; ++r) out[r] += x[c] * w(c, r);
        };
        project(query, in.recall_query, q_proj);
        double top = -INFINITY, total = 0;
        for (std::size_t i = 0; i < past.size(); ++i) {
          const float* entry = past[i].data() + b * d.M * d.D;
          std::fill(mean.begin(), mean.end(), 0.f);
          for (index_t e = 0; e < d.M * d.D; ++e) mean[e % d.D] += entry[e];
          for (auto& value : mean) value /= static_cast<float>(d.M);
          project(mean, in.recall_key, k_proj);
          float dot = 0;
          for (std::size_t r = 0; r < k_proj.size(); ++r) dot += q_proj[r] * k_proj[r];
          weight[i] = static_cast<double>(d.scale) * dot;
          top = std::fmax(top, weight[i]);
        }
        for (auto& w : weight) total += w = std::exp(w - top);
        for (index_t e = 0; e < d.M * d.D; ++e) {
          double sum = 0;
          for (std::size_t i = 0; i < past.size(); ++i) sum += weight[i] / total * past[i].data()[b * d.M * d.D + e];
          dst[e] = static_cast<float>(sum);
        }
      }
    });
    layer(layer_in.cview(), layer_out.view());
    parallel_for(executor, d.B, 1, [&](index_t begin, index_t end) {
      for (index_t b = begin; b < end; ++b) {
        const float* src = layer_out.data() + b * n * d.D;
        for (index_t j = 0; j < len; ++j) copy_row(src + (d.M + j) * d.D, 1, d.D, out.y.ptr(b, t0 + j), out.y.stride(2));
        std::copy(src + (d.M + len) * d.D, src + n * d.D, mem.data() + b * d.M * d.D);
      }
    });
    if (d.recall >= 1) {
      if (static_cast<index_t>(past.size()) == d.recall) past.erase(past.begin());
      past.push_back(mem);
    }
  }
}

}  // namespace detail

/// memory_tokens (docs/operators.md section 13): runs `layer` over the segments of x with M
/// memory tokens prepended (read) and appended (write), carrying what the layer writes at the
/// appended tokens to the next segment; y [B,T,D] and final_memory [B,M,D]. The layer gets the
/// whole batch per call. Validation (ShapeError, before any write and before the layer runs):
/// shapes, a negative segment or recall, recall without memory tokens, a non-finite
/// recall_scale, recall projections of the wrong shape or without recall, outputs overlapping
/// inputs or each other. An exception of the layer propagates
/// (y may then hold the earlier segments).
inline void memory_tokens(const MemoryTokensInputs& in, const MemoryTokensOutputs& out, MemoryTokensLayer layer,
                          const MemoryTokensOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::memory_tokens_reversed_call(in, out);
    return memory_tokens(rev.first, rev.second, layer, detail::forward_options(options), executor);
  }
  const ArgCheck check("memory_tokens");
  const auto d = detail::validate_memory_tokens(check, in, out, options);
  // mem: the carried memory [B,M,D]; past: the recall's ring of the last `recall` memories.
  Tensor<float, 3> mem({d.B, d.M, d.D});
  for (index_t b = 0; b < d.B; ++b)
    for (index_t m = 0; m < d.M; ++m)
      for (index_t c = 0; c < d.D; ++c) mem.view()(b, m, c) = in.memory(b, m, c);
  std::vector<Tensor<float, 3>> past;
  if (d.recall >= 1) past.push_back(mem);
  detail::memory_tokens_run(d, in, out.y, layer, executor, mem, past);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t m = 0; m < d.M; ++m)
      for (index_t c = 0; c < d.D; ++c) out.final_memory(b, m, c) = mem.view()(b, m, c);
}


/// The state memory_tokens_step carries between calls: the memory written by the last segment
/// [B,M,D] and, with HMT recall, the recall's cache (the last `recall` memories, oldest first;
/// the initial memory counts, as in memory_tokens). Starts from an initial memory.
class MemoryTokensState {
 public:
  /// memory [B,M,D] before the first segment (copied); recall as MemoryTokensOptions::recall.
  /// ShapeError for an empty batch or width, recall < 0, or recall without memory tokens.
  MemoryTokensState(const ConstView<float, 3>& memory, index_t recall) : recall_(recall) {
    const ArgCheck check("MemoryTokensState");
    check.shape("memory", memory, {-1, -1, -1}, "B,M,D");
    check.that(memory.size(0) >= 1 && memory.size(2) >= 1, "memory", "needs B >= 1 and D >= 1");
    check.that(recall >= 0, "recall", "must be >= 0, got " + std::to_string(recall));
    check.that(recall == 0 || memory.size(1) >= 1, "recall", "needs memory tokens (M >= 1)");
    memory_ = Tensor<float, 3>({memory.size(0), memory.size(1), memory.size(2)});
    for (index_t b = 0; b < memory.size(0); ++b)
      for (index_t m = 0; m < memory.size(1); ++m)
        for (index_t c = 0; c < memory.size(2); ++c) memory_.view()(b, m, c) = memory(b, m, c);
    if (recall >= 1) past_.push_back(memory_);
  }
  /// The carried memory [B,M,D] (what memory_tokens returns as final_memory).
  ConstView<float, 3> memory() const noexcept { return memory_.cview(); }
  /// The recall's cache size N it was made for (0: no recall).
  index_t recall() const noexcept { return recall_; }
  /// Memories in the recall's cache now (at most recall()).
  index_t cached() const noexcept { return static_cast<index_t>(past_.size()); }

  /// \cond INTERNAL
  Tensor<float, 3>& memory_mut() noexcept { return memory_; }
  std::vector<Tensor<float, 3>>& past_mut() noexcept { return past_; }
  /// \endcond

 private:
  index_t recall_ = 0;
  Tensor<float, 3> memory_;
  std::vector<Tensor<float, 3>> past_;
};

/// memory_tokens continued from a state: x [B,T,D] (the next tokens; cut into segments of
/// options.segment, 0 = one segment) runs from the state's memory and recall cache, y [B,T,D]
/// gets the layer's outputs, and the state then holds the memory and recall cache after the last
/// segment. So a decode loop calls it once per segment, and memory_tokens over a stream equals
/// memory_tokens_step over its pieces when every piece but the last holds a whole number of
/// segments (same arithmetic, bit for bit). in.memory must be empty (the state holds it);
/// in.recall_query / recall_key and options as memory_tokens, options.recall equal to
/// state.recall(), options.reverse false. ShapeError before any write and before the layer runs. An exception of the
/// layer propagates; the state then holds the segments finished before it.
inline void memory_tokens_step(MemoryTokensState& state, const MemoryTokensInputs& in, const TensorView<float, 3>& y,
                               MemoryTokensLayer layer, const MemoryTokensOptions& options = {},
                               const Executor& executor = serial_executor()) {
  const ArgCheck check("memory_tokens_step");
  check.that(!in.memory.has_value(), "memory", "must be empty: the state carries the memory");
  check.that(!options.reverse, "options.reverse", "is not supported by the step (a stream is continued forward)");
  check.that(options.recall == state.recall(), "options.recall",
             "must equal the state's recall (" + std::to_string(state.recall()) + "), got " + std::to_string(options.recall));
  MemoryTokensInputs with_state = in;
  with_state.memory = state.memory();
  const auto d = detail::validate_memory_tokens(check, with_state, {y, {}}, options, false);
  detail::memory_tokens_run(d, with_state, y, layer, executor, state.memory_mut(), state.past_mut());
}

}  // namespace seqmix
