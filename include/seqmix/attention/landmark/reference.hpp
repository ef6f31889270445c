// landmark attention (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite
// Context Length for Transformers"), with DHSA-style variable-length chunks.
//
// Keys are cut into blocks: fixed blocks of `block_size` (block n = keys
// [n * bs, min((n + 1) * bs, Tk))), or the caller's chunks (chunk_starts[n] is the first key of
// chunk n; chunk n ends where chunk n + 1 starts, the last at Tk). Each block has a landmark key
// lk_n: the caller's (landmark_k, e.g. the K rows of the paper's landmark tokens, sliced out of
// the sequence) or, when not given, the block's mean key. Query i sits at pos = Tk - Tq + i in
// block own(pos). Logits s_j = scale * q . k_j of keys and l_n = scale * c_n * q . lk_n of
// landmarks, with c_n = sqrt(len_n) when options.length_scaling (DHSA's scaling of chunk scores
// by the square root of the chunk length) and 1 otherwise. The grouped softmax:
//   Z = sum_{j in own block, j <= pos} exp(s_j) + sum_{n in S} exp(l_n),
//   weight of key j of the own block      = exp(s_j) / Z,
//   weight of key j of a block n in S      = exp(l_n) / Z * softmax_{j' in n}(s_j')_j,
//   o = sum_j weight_j v_j,  lse = log Z,
// so the landmark's score is the gate of its block, and the landmark carries no value. S is
// every earlier block (n < own) with top_k = -1 (the paper's training form), or the top_k
// earlier blocks by l_n (the paper's inference-time retrieval; ties to the lower block, NaN /
// -inf logits never chosen). Blocks of one token whose landmark keys are the keys themselves
// (landmarks = all tokens) give dense causal attention; one block (block_size >= Tk) too.
//
// Differences from the paper, on purpose: the paper's landmark rows sit inside K/V at the end of
// each block and its causal mask hides them from ordinary attention; here they are a separate
// argument (one layout for fixed and variable blocks, no rows to skip in the cache). Retrieval is
// per query head (the paper's top-k is also per head). The paper's own block also contains the
// landmark of the current block, which a query before the block's end cannot see: the same here.
//
// The logits of the selection come from one routine (detail::landmark_logits) and the choice
// from detail::moba_select_row, so every form chooses the same blocks bit for bit. This header
// holds the options, validation and reference::landmark_attention (plain loops in double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/moba/reference.hpp"  // moba_select_row
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of landmark_attention, landmark_step and reference::landmark_attention.
struct LandmarkOptions {
  /// Keys per block when the caller gives no chunk_starts, >= 1.
  index_t block_size = 64;
  /// Earlier blocks retrieved per query by landmark logit, in [0, number of blocks];
  /// -1 = every earlier block (the grouped softmax of the paper's training).
  index_t top_k = -1;
  /// Multiply landmark logits by sqrt(block length) (DHSA's chunk-score scaling).
  bool length_scaling = false;
  /// Multiplies q.k and q.lk; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments (KV: float, f16 or bf16). Without chunk_starts, blocks are block_size keys each.
template <class KV = float>
struct LandmarkInputs {
  ConstView<float, 4> q;                      ///< [B,Tq,Hq,Dk], Tq <= Tk
  ConstView<KV, 4> k;                         ///< [B,Tk,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v;                         ///< [B,Tk,Hkv,Dv]
  ConstView<float, 4> landmark_k = {};        ///< [B,Nb,Hkv,Dk], optional (default: block mean keys)
  ConstView<std::int32_t, 1> chunk_starts = {};  ///< [Nb], optional: 0 first, increasing, < Tk
};

namespace detail {

struct LandmarkDims {
  AttentionDims attention;
  std::vector<index_t> starts;  // Nb + 1 entries, the last = Tk
  index_t blocks() const noexcept { return static_cast<index_t>(starts.size()) - 1; }
  index_t block_of(index_t pos) const {
    return static_cast<index_t>(std::upper_bound(starts.begin(), starts.end() - 1, pos) - starts.begin()) - 1;
  }
};

template <class KV>
AttentionInputs<KV> landmark_dense_inputs(const LandmarkInputs<KV>& in) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v;
  return dense;
}

inline AttentionOptions landmark_attention_options(const LandmarkOptions& options, bool causal) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = causal;
  return o;
}

// Validation shared by every form; nothing is written before it passes.
template <class KV>
LandmarkDims validate_landmark(const char* op, const LandmarkInputs<KV>& in, const AttentionOutputs& out,
                               const LandmarkOptions& options) {
  const ArgCheck check(op);
  check.that(options.block_size >= 1, "options.block_size", "must be >= 1, got " + std::to_string(options.block_size));
  const AttentionDims d =
      validate_attention(check, landmark_dense_inputs(in), out, landmark_attention_options(options, true));
  if (d.Tq > d.Tk)
    check.fail("q", "needs Tq <= Tk (queries are the last Tq of the Tk keys), got Tq = " + std::to_string(d.Tq) +
                        ", Tk = " + std::to_string(d.Tk));
  LandmarkDims m{d, {}};
  if (in.chunk_starts.has_value()) {
    check.shape("chunk_starts", in.chunk_starts, std::array<index_t, 1>{-1}, "Nb");
    const index_t n = in.chunk_starts.size(0);
    if (d.Tk > 0 && (n == 0 || in.chunk_starts(0) != 0))
      check.fail("chunk_starts", "must start with 0 (the first chunk begins at key 0)");
    for (index_t c = 0; c < n; ++c) {
      const index_t s = in.chunk_starts(c);
      if (s >= d.Tk || (c > 0 && s <= in.chunk_starts(c - 1)))
        check.fail("chunk_starts", "must be strictly increasing and < Tk = " + std::to_string(d.Tk) + ", entry " +
                                       std::to_string(c) + " is " + std::to_string(s));
      m.starts.push_back(s);
    }
  } else {
    for (index_t s = 0; s < d.Tk; s += options.block_size) m.starts.push_back(s);
  }
  m.starts.push_back(d.Tk);
  const index_t Nb = m.blocks();
  check.that(options.top_k >= -1 && options.top_k <= Nb, "options.top_k",
             "must be -1 (all earlier blocks) or in [0, " + std::to_string(Nb) + "] (the number of blocks), got " +
                 std::to_string(options.top_k));
  check.optional_shape("landmark_k", in.landmark_k, std::array<index_t, 4>{d.B, Nb, d.Hkv, d.Dk}, "B,Nb,Hkv,Dk");
  if (views_overlap(out.o, in.landmark_k) || views_overlap(out.lse, in.landmark_k))
    check.fail("o", "overlaps landmark_k; landmark attention cannot write in place");
  return m;
}

// The landmark keys: the caller's, or the mean key of each block (summed in double).
template <class KV>
ConstView<float, 4> landmark_keys(const LandmarkInputs<KV>& in, const LandmarkDims& m, Tensor<float, 4>& own,
                                  const Executor& executor) {
  if (in.landmark_k.has_value()) return in.landmark_k;
  const AttentionDims& d = m.attention;
  own = Tensor<float, 4>({d.B, m.blocks(), d.Hkv, d.Dk});
  parallel_for(executor, d.B * m.blocks() * d.Hkv, 8, [&](index_t first, index_t last) {
    std::vector<double> sum(static_cast<std::size_t>(d.Dk));
    for (index_t r = first; r < last; ++r) {
      const index_t hk = r % d.Hkv, n = r / d.Hkv % m.blocks(), b = r / d.Hkv / m.blocks();
      const index_t j0 = m.starts[static_cast<std::size_t>(n)], j1 = m.starts[static_cast<std::size_t>(n + 1)];
      std::fill(sum.begin(), sum.end(), 0.0);
      for (index_t j = j0; j < j1; ++j)
        for (index_t c = 0; c < d.Dk; ++c) sum[static_cast<std::size_t>(c)] += static_cast<float>(in.k(b, j, hk, c));
      for (index_t c = 0; c < d.Dk; ++c)
        own(b, n, hk, c) = static_cast<float>(sum[static_cast<std::size_t>(c)] / static_cast<double>(j1 - j0));
    }
  });
  return own.cview();
}

// The landmark factor c_n of block n: sqrt(len_n) with length_scaling, else 1.
inline double landmark_factor(const LandmarkDims& m, const LandmarkOptions& options, index_t n) {
  if (!options.length_scaling) return 1.0;
  return std::sqrt(static_cast<double>(m.starts[static_cast<std::size_t>(n + 1)] - m.starts[static_cast<std::size_t>(n)]));
}

// Landmark logits of batch row b, query heads [h0, h0 + G) (KV head hk's group):
// logits[0, i, g, n] = (scale * c_n) * (q[b, i, h0 + g] . lk[b, n, hk]), in float. The one
// routine every form selects with.
inline void landmark_logits(const ConstView<float, 4>& q, const ConstView<float, 4>& lk, const LandmarkDims& m,
                            const LandmarkOptions& options, index_t b, index_t hk, index_t h0, index_t G,
                            const TensorView<float, 4>& logits, const Executor& executor) {
  const AttentionDims& d = m.attention;
  topk_scores_exact(q.slice(0, b, 1).slice(2, h0, G), lk.slice(0, b, 1).slice(2, hk, 1), logits, executor);
  const float scale = attention_scale(landmark_attention_options(options, true), d.Dk);
  std::vector<float> factor(static_cast<std::size_t>(m.blocks()));
  for (index_t n = 0; n < m.blocks(); ++n)
    factor[static_cast<std::size_t>(n)] = static_cast<float>(scale * landmark_factor(m, options, n));
  for (index_t i = 0; i < d.Tq; ++i)
    for (index_t g = 0; g < G; ++g) {
      float* row = logits.ptr(0, i, g);
      for (index_t n = 0; n < m.blocks(); ++n) row[n * logits.stride(3)] *= factor[static_cast<std::size_t>(n)];
    }
}

// The earlier blocks a query attends through their landmarks: all n < own (top_k = -1) or the
// top_k by logit (moba_select_row's strict order). Writes them increasing to `chosen`.
inline void landmark_select_row(const float* logits, index_t stride, index_t own, index_t top_k,
                                std::vector<std::int32_t>& chosen,
                                std::vector<std::pair<float, std::int32_t>>& candidates) {
  chosen.clear();
  if (top_k < 0) {
    for (index_t n = 0; n < own; ++n) chosen.push_back(static_cast<std::int32_t>(n));
    return;
  }
  chosen.resize(static_cast<std::size_t>(std::max<index_t>(top_k, 1)));
  const index_t count = moba_select_row(logits, stride, own, top_k, chosen.data(), candidates);
  chosen.resize(static_cast<std::size_t>(count));
}

}  // namespace detail

namespace reference {

/// The definition: the shared selection, then per query and head the grouped softmax in double
/// (the own block's keys and the chosen landmarks in one softmax, each landmark's weight shared
/// out over its block by the softmax within the block). Single-threaded attention; `executor`
/// runs the landmark logits only.
template <class KV>
void landmark_attention(const LandmarkInputs<KV>& in, const AttentionOutputs& out, const LandmarkOptions& options = {},
                        const Executor& executor = serial_executor()) {
  using namespace detail;
  const LandmarkDims m = validate_landmark("reference::landmark_attention", in, out, options);
  const AttentionDims& d = m.attention;
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t G = d.group(), Nb = m.blocks();
  Tensor<float, 4> own_keys;
  const ConstView<float, 4> lk = landmark_keys(in, m, own_keys, executor);
  const double scale = attention_scale(landmark_attention_options(options, true), d.Dk);
  Tensor<float, 4> logits({1, d.Tq, G, Nb});
  std::vector<std::int32_t> chosen;
  std::vector<std::pair<float, std::int32_t>> candidates;
  std::vector<double> s, acc(static_cast<std::size_t>(d.Dv)), part(static_cast<std::size_t>(d.Dv));
  std::vector<index_t> keys;
  const auto dot = [&](index_t b, index_t i, index_t h, const auto& key_of) {
    double x = 0.0;
    for (index_t c = 0; c < d.Dk; ++c) x += static_cast<double>(in.q(b, i, h, c)) * key_of(c);
    return x;
  };
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk) {
      landmark_logits(in.q, lk, m, options, b, hk, hk * G, G, logits.view(), executor);
      for (index_t i = 0; i < d.Tq; ++i)
        for (index_t g = 0; g < G; ++g) {
          const index_t h = hk * G + g, pos = d.Tk - d.Tq + i, own = m.block_of(pos);
          landmark_select_row(logits.view().ptr(0, i, g), logits.view().stride(3), own, options.top_k, chosen,
                              candidates);
          // Top-level terms: the own block's keys, then the chosen landmarks.
          std::vector<double> top_terms;
          const index_t j0 = m.starts[static_cast<std::size_t>(own)];
          for (index_t j = j0; j <= pos; ++j)
            top_terms.push_back(scale * dot(b, i, h, [&](index_t c) { return static_cast<double>(static_cast<float>(in.k(b, j, hk, c))); }));
          for (const std::int32_t n : chosen)
            top_terms.push_back(scale * landmark_factor(m, options, n) *
                                dot(b, i, h, [&](index_t c) { return static_cast<double>(lk(b, n, hk, c)); }));
          double top = -HUGE_VAL;
          bool nan = false;
          for (const double x : top_terms) top = std::max(top, x), nan = nan || std::isnan(x);
          if (nan || top == HUGE_VAL) {
            for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = NAN;
            if (out.lse.has_value()) out.lse(b, i, h) = NAN;
            continue;
          }
          double z = 0.0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (index_t j = j0; j <= pos; ++j) {
            const double p = std::exp(top_terms[static_cast<std::size_t>(j - j0)] - top);
            z += p;
            for (index_t c = 0; c < d.Dv; ++c)
              acc[static_cast<std::size_t>(c)] += p * static_cast<double>(static_cast<float>(in.v(b, j, hk, c)));
          }
          for (std::size_t e = 0; e < chosen.size(); ++e) {
            const index_t n = chosen[e];
            const double gate = std::exp(top_terms[static_cast<std::size_t>(pos - j0 + 1) + e] - top);
            z += gate;
            const index_t a0 = m.starts[static_cast<std::size_t>(n)], a1 = m.starts[static_cast<std::size_t>(n + 1)];
            keys.resize(static_cast<std::size_t>(a1 - a0));
            for (index_t j = a0; j < a1; ++j) keys[static_cast<std::size_t>(j - a0)] = j;
            const double inner_top = reference_listed_logits(in.q, in.k, b, i, h, hk, keys, scale, s);
            const double inner = reference_softmax_sum(
                s, inner_top, [&](std::size_t e, index_t c) { return static_cast<double>(static_cast<float>(in.v(b, keys[e], hk, c))); },
                part);
            for (index_t c = 0; c < d.Dv; ++c)
              acc[static_cast<std::size_t>(c)] += gate * part[static_cast<std::size_t>(c)] / inner;
          }
          for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = static_cast<float>(acc[static_cast<std::size_t>(c)] / z);
          if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(top + std::log(z));
        }
    }
}

}  // namespace reference
}  // namespace seqmix
