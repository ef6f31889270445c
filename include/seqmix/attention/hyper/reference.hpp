// hyper_attention (HyperAttention, Han et al. 2023, SPEC section 5): attention approximated by
// the heavy entries that sortLSH finds plus uniformly sampled columns for the rest, with the
// paper's causal recursion.
//
// Non-causal part, queries Q (nq rows) over keys K (nk rows):
//  - sortLSH: every row x is hashed by n_hashes random hyperplanes r_1..r_n (N(0, 1) entries
//    drawn from `seed`): code = sum_t [r_t . x > 0] 2^t. Codes are ordered along the Gray code
//    (rank = the code's index in the Gray sequence, so neighbouring ranks differ in one bit: one
//    hyperplane), and Q and K are each sorted by rank (stable: equal ranks keep their order).
//  - heavy blocks: the query at sorted position p attends exactly to the keys at sorted positions
//    [c bs, (c + 1) bs), c = p / bs (the diagonal blocks of the sorted order);
//  - residual: sample_size columns s_1..s_m are drawn uniformly with replacement from the sorted
//    key positions [0, nk); the query also attends to every drawn column outside its own block,
//    each with weight nk / m (a logit shifted by log(nk / m)), the paper's unbiased estimate of
//    the columns the block missed;
//  - both parts are one softmax over their union (the paper's combination of the two (o, lse)
//    pairs by their LSE).
//  With nq <= min_seq_len the part is exact attention instead (the paper's small-input rule).
//
// Causal (Tq = Tk = n): n <= min_seq_len gives exact causal attention; otherwise the sequence is
// split at h = ceil(n / 2): the two diagonal halves [0, h) and [h, n) recursively, and the
// off-diagonal block (queries [h, n) over keys [0, h), every key before every query) by the
// non-causal part above, merged into the second half's rows by LSE. (The paper pads odd n with a
// zero row to split evenly; the uneven split here keeps every row real.)
//
// Draws: the hyperplanes are shared by every batch row and head. The columns of a non-causal part
// are drawn per (batch row, KV head, part), so the query heads of a GQA group share them (the
// keys, their sort and the samples belong to the KV head; each query head sorts its own queries).
// A part is named by its first query and first key (qlo, klo); the s-th column is
// splitmix64(seed, b, hk, qlo, klo, s) mod nk. Every form computes the codes in double by the same
// routine and draws through the same function, so the forms pick the same blocks and columns bit
// for bit and differ only in the attention's rounding.
//
// Degenerate settings: min_seq_len >= Tq, or block_size >= Tk (then every key is in the query's
// block and every drawn column is masked), give exact attention.
//
// This header holds the options, validation, the shared hashing / sorting / sampling and
// reference::hyper_attention (plain loops in double over the recursion).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of hyper_attention and reference::hyper_attention.
struct HyperAttentionOptions {
  /// Rows of a heavy block of the sorted order, >= 1 (the paper's block_size).
  index_t block_size = 256;
  /// Uniformly sampled key columns per non-causal part, >= 0 (the paper's sample_size).
  index_t sample_size = 256;
  /// Random hyperplanes of sortLSH, in [1, 24] (the paper's lsh_num_projs).
  index_t n_hashes = 7;
  /// Parts with at most this many queries run exact attention, >= 1 (the paper's min_seq_len).
  index_t min_seq_len = 2048;
  /// Causal self-attention (Tq = Tk) by the paper's recursion; false: one non-causal part.
  bool causal = true;
  /// Seed of the hyperplanes and of the sampled columns.
  std::uint64_t seed = 0;
  /// Multiplies q.k; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments (KV: float, f16 or bf16).
template <class KV = float>
struct HyperAttentionInputs {
  ConstView<float, 4> q;  ///< [B,Tq,Hq,Dk] (causal: Tq = Tk)
  ConstView<KV, 4> k;     ///< [B,Tk,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v;     ///< [B,Tk,Hkv,Dv]
};

namespace detail {

template <class KV>
AttentionInputs<KV> hyper_dense_inputs(const HyperAttentionInputs<KV>& in) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v;
  return dense;
}

inline AttentionOptions hyper_attention_options(const HyperAttentionOptions& options, bool causal) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = causal;
  return o;
}

// Validation shared by every form; nothing is written before it passes.
template <class KV>
AttentionDims validate_hyper_attention(const char* op, const HyperAttentionInputs<KV>& in, const AttentionOutputs& out,
                                       const HyperAttentionOptions& options) {
  const ArgCheck check(op);
  check.that(options.block_size >= 1, "options.block_size", "must be >= 1, got " + std::to_string(options.block_size));
  check.that(options.sample_size >= 0, "options.sample_size", "must be >= 0, got " + std::to_string(options.sample_size));
  check.that(options.n_hashes >= 1 && options.n_hashes <= 24, "options.n_hashes",
             "must be in [1, 24], got " + std::to_string(options.n_hashes));
  check.that(options.min_seq_len >= 1, "options.min_seq_len", "must be >= 1, got " + std::to_string(options.min_seq_len));
  const AttentionDims d =
      validate_attention(check, hyper_dense_inputs(in), out, hyper_attention_options(options, options.causal));
  if (options.causal && d.Tq != d.Tk)
    check.fail("q", "causal hyper_attention is self-attention: needs Tq = Tk, got Tq = " + std::to_string(d.Tq) +
                        ", Tk = " + std::to_string(d.Tk));
  return d;
}

inline std::uint64_t hyper_splitmix(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The hyperplanes [n_hashes x Dk], N(0, 1) entries by Box-Muller on splitmix64(seed, entry).
inline std::vector<double> hyper_hyperplanes(std::uint64_t seed, index_t n_hashes, index_t Dk) {
  std::vector<double> planes(static_cast<std::size_t>(n_hashes * Dk));
  const double two_pi = 6.283185307179586476925286766559;
  for (std::size_t e = 0; e < planes.size(); ++e) {
    const std::uint64_t a = hyper_splitmix(hyper_splitmix(seed ^ 0x6879706572ull) + 2 * e);
    const std::uint64_t b = hyper_splitmix(hyper_splitmix(seed ^ 0x6879706572ull) + 2 * e + 1);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
    planes[e] = std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
  }
  return planes;
}

// Index of a code in the Gray sequence (the inverse Gray map).
inline std::int32_t hyper_gray_rank(std::uint32_t code) noexcept {
  for (std::uint32_t shift = 1; shift < 32; shift <<= 1) code ^= code >> shift;
  return static_cast<std::int32_t>(code);
}

// ranks[b, t, h] = Gray rank of the sortLSH code of x[b, t, h, :] (dot products in double).
template <class T>
void hyper_ranks(const ConstView<T, 4>& x, const std::vector<double>& planes, index_t n_hashes,
                 const TensorView<std::int32_t, 3>& ranks, const Executor& executor) {
  const index_t B = x.size(0), T_ = x.size(1), H = x.size(2), D = x.size(3);
  parallel_for(executor, B * T_ * H, 256, [&](index_t first, index_t last) {
    std::vector<double> row(static_cast<std::size_t>(D));
    for (index_t r = first; r < last; ++r) {
      const index_t h = r % H, t = r / H % T_, b = r / H / T_;
      for (index_t c = 0; c < D; ++c) row[static_cast<std::size_t>(c)] = static_cast<float>(x(b, t, h, c));
      std::uint32_t code = 0;
      for (index_t p = 0; p < n_hashes; ++p) {
        double dot = 0.0;
        const double* plane = planes.data() + p * D;
        for (index_t c = 0; c < D; ++c) dot += plane[c] * row[static_cast<std::size_t>(c)];
        if (dot > 0.0) code |= 1u << p;
      }
      ranks(b, t, h) = hyper_gray_rank(code);
    }
  });
}

// order[0..n) = the rows lo..lo+n-1 of head h, batch row b, sorted by rank (stable).
inline void hyper_sorted_rows(const TensorView<std::int32_t, 3>& ranks, index_t b, index_t h, index_t lo, index_t n,
                              std::vector<index_t>& order) {
  order.resize(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), lo);
  std::stable_sort(order.begin(), order.end(), [&](index_t x, index_t y) { return ranks(b, x, h) < ranks(b, y, h); });
}

// The s-th sampled sorted-key position of the non-causal part (qlo, klo) of (b, hk), in [0, nk).
inline index_t hyper_sample(std::uint64_t seed, index_t b, index_t hk, index_t qlo, index_t klo, index_t s, index_t nk) {
  std::uint64_t x = hyper_splitmix(seed ^ 0x73616d706c65ull);
  for (const index_t part : {b, hk, qlo, klo, s}) x = hyper_splitmix(x ^ static_cast<std::uint64_t>(part));
  return static_cast<index_t>(x % static_cast<std::uint64_t>(nk));
}

// A non-causal part: queries [qlo, qlo + nq) over keys [klo, klo + nk).
struct HyperPart {
  index_t qlo, nq, klo, nk;
};

// The causal recursion over [lo, lo + n): exact leaves (square, causal) and approximate
// off-diagonal parts, in recursion order.
inline void hyper_causal_plan(index_t lo, index_t n, index_t min_seq_len, std::vector<HyperPart>& leaves,
                              std::vector<HyperPart>& parts) {
  if (n <= min_seq_len) {
    if (n > 0) leaves.push_back({lo, n, lo, n});
    return;
  }
  const index_t h = (n + 1) / 2;
  hyper_causal_plan(lo, h, min_seq_len, leaves, parts);
  hyper_causal_plan(lo + h, n - h, min_seq_len, leaves, parts);
  parts.push_back({lo + h, n - h, lo, h});
}

}  // namespace detail

namespace reference {

/// The definition: the shared hashing and draws, then per (batch row, query head) the recursion
/// in plain loops in double (each part one softmax per query over its keys, parts merged by LSE).
/// Single-threaded attention; `executor` runs the hashing only.
template <class KV>
void hyper_attention(const HyperAttentionInputs<KV>& in, const AttentionOutputs& out,
                     const HyperAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_hyper_attention("reference::hyper_attention", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const double scale = attention_scale(hyper_attention_options(options, options.causal), d.Dk);
  const double minus_inf = -std::numeric_limits<double>::infinity();
  const index_t bs = options.block_size, S = options.sample_size;
  const std::vector<double> planes = hyper_hyperplanes(options.seed, options.n_hashes, d.Dk);
  Tensor<std::int32_t, 3> qrank({d.B, d.Tq, d.Hq}), krank({d.B, d.Tk, d.Hkv});
  hyper_ranks(in.q, planes, options.n_hashes, qrank.view(), executor);
  hyper_ranks(in.k, planes, options.n_hashes, krank.view(), executor);

  std::vector<double> o(static_cast<std::size_t>(d.Tq * d.Dv)), lse(static_cast<std::size_t>(d.Tq));
  std::vector<double> s, w(static_cast<std::size_t>(d.Dv));
  std::vector<index_t> keys, qorder, korder;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      const index_t hk = h / d.group();
      // Softmax of query i over `keys` with logit offsets `shift` (0 or log weight), merged by LSE
      // into (o, lse) of row i (initially o = 0, lse = -inf).
      std::vector<double> shift;
      const auto merge_row = [&](index_t i) {
        reference_listed_logits(in.q, in.k, b, i, h, hk, keys, scale, s);
        double top = minus_inf;
        for (std::size_t e = 0; e < keys.size(); ++e) s[e] += shift[e], top = std::max(top, s[e]);
        if (keys.empty() || top == minus_inf) return;
        const double l = reference_softmax_sum(
            s, top, [&](std::size_t e, index_t c) { return static_cast<double>(static_cast<float>(in.v(b, keys[e], hk, c))); }, w);
        const double part = top + std::log(l), old = lse[static_cast<std::size_t>(i)];
        const double next = std::max(part, old) + std::log1p(std::exp(-std::abs(part - old)));
        for (index_t c = 0; c < d.Dv; ++c) {
          double& oc = o[static_cast<std::size_t>(i * d.Dv + c)];
          oc = (old == minus_inf ? 0.0 : oc * std::exp(old - next)) + w[static_cast<std::size_t>(c)] / l * std::exp(part - next);
        }
        lse[static_cast<std::size_t>(i)] = next;
      };
      const auto exact = [&](const HyperPart& p, bool causal) {
        for (index_t i = p.qlo; i < p.qlo + p.nq; ++i) {
          keys.clear();
          for (index_t j = p.klo; j < p.klo + p.nk && (!causal || j - p.klo <= i - p.qlo); ++j) keys.push_back(j);
          shift.assign(keys.size(), 0.0);
          merge_row(i);
        }
      };
      const auto approximate = [&](const HyperPart& p) {
        if (p.nq <= options.min_seq_len || p.nk == 0) return exact(p, false);
        hyper_sorted_rows(qrank.view(), b, h, p.qlo, p.nq, qorder);
        hyper_sorted_rows(krank.view(), b, hk, p.klo, p.nk, korder);
        const double log_weight = std::log(static_cast<double>(p.nk) / static_cast<double>(S > 0 ? S : 1));
        for (index_t sp = 0; sp < p.nq; ++sp) {
          const index_t c = sp / bs;
          keys.clear(), shift.clear();
          for (index_t kp = c * bs; kp < std::min((c + 1) * bs, p.nk); ++kp) keys.push_back(korder[static_cast<std::size_t>(kp)]), shift.push_back(0.0);
          for (index_t t = 0; t < S; ++t) {
            const index_t kp = hyper_sample(options.seed, b, hk, p.qlo, p.klo, t, p.nk);
            if (kp / bs == c) continue;
            keys.push_back(korder[static_cast<std::size_t>(kp)]), shift.push_back(log_weight);
          }
          merge_row(qorder[static_cast<std::size_t>(sp)]);
        }
      };
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(lse.begin(), lse.end(), minus_inf);
      if (options.causal) {
        std::vector<HyperPart> leaves, parts;
        hyper_causal_plan(0, d.Tq, options.min_seq_len, leaves, parts);
        for (const HyperPart& p : leaves) exact(p, true);
        for (const HyperPart& p : parts) approximate(p);
      } else {
        approximate({0, d.Tq, 0, d.Tk});
      }
      for (index_t i = 0; i < d.Tq; ++i) {
        const double l = lse[static_cast<std::size_t>(i)];
        for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = static_cast<float>(o[static_cast<std::size_t>(i * d.Dv + c)]);
        if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(l);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
