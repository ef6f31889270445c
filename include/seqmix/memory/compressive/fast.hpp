// compressive_memory, fast form and streaming step: one task per (batch row, KV head) runs all
// its segments; per segment the keys [compressed ; memory ; segment] are one matrix, the scores of
// the group's query heads one [G * len, n] GEMM with a causal row softmax, the outputs one GEMM.
// README.md has the definition.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/memory/compressive/reference.hpp"

namespace seqmix {

/// The memories of a compressive_memory stream, per (batch row, KV head): a stream fed to
/// compressive_memory_step in pieces that end on segment boundaries equals one
/// compressive_memory call. Rows are stored oldest first, row-major.
struct CompressiveMemoryState {
  index_t batch = 0;      ///< B
  index_t kv_heads = 0;   ///< Hkv
  index_t key_dim = 0;    ///< dk
  index_t value_dim = 0;  ///< dv
  std::vector<std::vector<float>> memory_keys;        ///< per (b * kv_heads + h): the memory's keys [size, dk]
  std::vector<std::vector<float>> memory_values;      ///< per (b * kv_heads + h): the memory's values [size, dv]
  std::vector<std::vector<float>> usage;              ///< per (b * kv_heads + h): attention each memory entry got [size]
  std::vector<std::vector<float>> compressed_keys;    ///< per (b * kv_heads + h): compressed keys [size, dk]
  std::vector<std::vector<float>> compressed_values;  ///< per (b * kv_heads + h): compressed values [size, dv]

  CompressiveMemoryState() = default;
  /// Empty memories for B batch rows, Hkv KV heads, key and value widths dk and dv (each >= 0).
  CompressiveMemoryState(index_t B, index_t Hkv, index_t dk, index_t dv)
      : batch(B), kv_heads(Hkv), key_dim(dk), value_dim(dv) {
    if (B < 0 || Hkv < 0 || dk < 0 || dv < 0)
      throw ShapeError("CompressiveMemoryState", "B", "needs B, Hkv, dk, dv >= 0");
    const auto n = static_cast<std::size_t>(checked_product("CompressiveMemoryState", "B", B, Hkv));
    memory_keys.resize(n), memory_values.resize(n), usage.resize(n);
    compressed_keys.resize(n), compressed_values.resize(n);
  }
  /// Entries in the memory of (b, h).
  index_t memory_size(index_t b, index_t h) const {
    return static_cast<index_t>(usage[static_cast<std::size_t>(b * kv_heads + h)].size());
  }
  /// Entries in the compressed memory of (b, h).
  index_t compressed_size(index_t b, index_t h) const {
    return static_cast<index_t>(compressed_keys[static_cast<std::size_t>(b * kv_heads + h)].size()) /
           std::max<index_t>(key_dim, 1);
  }
};

namespace detail {

/// Compresses the c rows of `rows` (row-major, width w) starting at row r0 into `dst` (appended).
inline void compress_rows(const std::vector<float>& rows, index_t r0, index_t c, index_t w, Compression how,
                          const std::vector<float>& usage, const ConstView<float, 4>& conv, index_t h,
                          std::vector<float>& dst) {
  const std::size_t at = dst.size();
  dst.resize(at + static_cast<std::size_t>(w), 0.f);
  float* out = dst.data() + at;
  const float* src = rows.data() + r0 * w;
  if (how == Compression::most_used) {
    index_t best = 0;
    for (index_t i = 1; i < c; ++i)
      if (usage[static_cast<std::size_t>(r0 + i)] > usage[static_cast<std::size_t>(r0 + best)]) best = i;
    std::copy(src + best * w, src + (best + 1) * w, out);
  } else if (how == Compression::conv) {
    for (index_t i = 0; i < c; ++i)
      for (index_t e = 0; e < w; ++e) {
        float sum = 0;
        for (index_t f = 0; f < w; ++f) sum += conv(h, i, e, f) * src[i * w + f];
        out[e] += sum;
      }
  } else {
    std::copy(src, src + w, out);
    for (index_t i = 1; i < c; ++i)
      for (index_t e = 0; e < w; ++e)
        out[e] = how == Compression::max ? std::fmax(out[e], src[i * w + e]) : out[e] + src[i * w + e];
    if (how == Compression::mean)
      for (index_t e = 0; e < w; ++e) out[e] /= static_cast<float>(c);
  }
}

/// Runs every segment of (b, h) over its memories in `state`. Validated by the caller.
inline void compressive_memory_task(const CompressiveDims& d, const CompressiveMemoryInputs& in,
                                    const CompressiveMemoryOutputs& out, Compression how,
                                    CompressiveMemoryState& state, index_t b, index_t h) {
  const auto slot = static_cast<std::size_t>(b * d.Hkv + h);
  auto &mk = state.memory_keys[slot], &mv = state.memory_values[slot], &usage = state.usage[slot];
  auto &ck = state.compressed_keys[slot], &cv = state.compressed_values[slot];
  RowMajorMatrix<float> K, V, Q, S, O;
  for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
    const index_t len = std::min(d.L, d.T - t0);
    const index_t n_c = static_cast<index_t>(ck.size()) / d.dk, n_m = static_cast<index_t>(usage.size());
    const index_t past = n_c + n_m, n = past + len;
    K.resize(n, d.dk), V.resize(n, d.dv);
    std::copy(ck.begin(), ck.end(), K.data());
    std::copy(mk.begin(), mk.end(), K.data() + n_c * d.dk);
    std::copy(cv.begin(), cv.end(), V.data());
    std::copy(mv.begin(), mv.end(), V.data() + n_c * d.dv);
    for (index_t j = 0; j < len; ++j) {
      for (index_t e = 0; e < d.dk; ++e) K(past + j, e) = in.k(b, t0 + j, h, e);
      for (index_t e = 0; e < d.dv; ++e) V(past + j, e) = in.v(b, t0 + j, h, e);
    }
    Q.resize(d.G * len, d.dk);  // row r = g * len + j
    for (index_t g = 0; g < d.G; ++g)
      for (index_t j = 0; j < len; ++j)
        for (index_t e = 0; e < d.dk; ++e) Q(g * len + j, e) = in.q(b, t0 + j, h * d.G + g, e);
    S.noalias() = d.scale * (Q * K.transpose());
    for (index_t r = 0; r < S.rows(); ++r) {
      const index_t visible = past + r % len + 1;
      auto row = S.row(r);
      row.tail(n - visible).setZero();
      const float top = row.head(visible).maxCoeff();
      softmax_numerators_in_place(row.head(visible), top);
      row.head(visible) /= row.head(visible).sum();
    }
    O.noalias() = S * V;
    for (index_t g = 0; g < d.G; ++g)
      for (index_t j = 0; j < len; ++j)
        for (index_t e = 0; e < d.dv; ++e) out.o(b, t0 + j, h * d.G + g, e) = O(g * len + j, e);
    // Append the segment, then evict whole groups of c and compress them.
    usage.resize(static_cast<std::size_t>(n_m + len), 0.f);
    if (how == Compression::most_used) {
      for (index_t i = n_c; i < n; ++i) usage[static_cast<std::size_t>(i - n_c)] += S.col(i).sum();
    }
    mk.insert(mk.end(), K.data() + past * d.dk, K.data() + n * d.dk);
    mv.insert(mv.end(), V.data() + past * d.dv, V.data() + n * d.dv);
    const index_t size = n_m + len;
    const index_t evict = size > d.n_m ? (size - d.n_m) / d.c * d.c : 0;
    for (index_t g0 = 0; g0 < evict; g0 += d.c) {
      compress_rows(mk, g0, d.c, d.dk, how, usage, in.weights.conv_key, h, ck);
      compress_rows(mv, g0, d.c, d.dv, how, usage, in.weights.conv_value, h, cv);
    }
    mk.erase(mk.begin(), mk.begin() + evict * d.dk), mv.erase(mv.begin(), mv.begin() + evict * d.dv);
    usage.erase(usage.begin(), usage.begin() + evict);
    const index_t drop = std::max<index_t>(0, static_cast<index_t>(ck.size()) / d.dk - d.n_cm);
    ck.erase(ck.begin(), ck.begin() + drop * d.dk), cv.erase(cv.begin(), cv.begin() + drop * d.dv);
  }
}

}  // namespace detail

/// compressive_memory's streaming step: the tokens of in (one or more segments of
/// options.segment) attend to and then update the memories in `state`, so a stream fed in
/// pieces that end on segment boundaries equals one compressive_memory call (with the same
/// options at every step). Validation as compressive_memory, plus a state whose B, Hkv, dk, dv
/// differ from the inputs'; nothing is written then.
inline void compressive_memory_step(CompressiveMemoryState& state, const CompressiveMemoryInputs& in,
                                    const CompressiveMemoryOutputs& out, const CompressiveMemoryOptions& options = {},
                                    const Executor& executor = serial_executor()) {
  const ArgCheck check("compressive_memory_step");
  const auto d = detail::validate_compressive_memory(check, in, out, options);
  check.that(state.batch == d.B && state.kv_heads == d.Hkv && state.key_dim == d.dk && state.value_dim == d.dv &&
                 state.usage.size() == static_cast<std::size_t>(d.B * d.Hkv),
             "state", "was made for other B, Hkv, dk or dv than the inputs'");
  parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
    for (index_t task = begin; task < end; ++task)
      detail::compressive_memory_task(d, in, out, options.compression, state, task / d.Hkv, task % d.Hkv);
  });
}

/// compressive_memory (docs/operators.md section 13): softmax attention of every token over the
/// compressed memory, the memory and its segment's earlier tokens, the memories updated after
/// each segment (FIFO eviction in groups of `rate`, compressed by options.compression), from
/// empty memories; o [B,T,Hq,dv]. Validation (ShapeError, before any write): shapes, Hkv not
/// dividing Hq, a negative segment, memory or compressed, a rate below 1, a non-finite scale, an
/// unknown compression, conv without (or another compression with) weights, o overlapping an
/// input.
inline void compressive_memory(const CompressiveMemoryInputs& in, const CompressiveMemoryOutputs& out,
                               const CompressiveMemoryOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::compressive_reversed_call(in, out);
    return compressive_memory(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const ArgCheck check("compressive_memory");
  const auto d = detail::validate_compressive_memory(check, in, out, options);
  CompressiveMemoryState state(d.B, d.Hkv, d.dk, d.dv);
  compressive_memory_step(state, in, out, options, executor);
}

}  // namespace seqmix
