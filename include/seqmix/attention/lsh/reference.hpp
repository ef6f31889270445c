// lsh_attention (Reformer, Kitaev et al. 2020, SPEC section 5): shared-QK attention restricted
// by angular locality-sensitive hashing.
//
// Inputs qk [B,T,H,Dk] (one tensor for queries and keys, as Reformer) and v [B,T,H,Dv]. The
// keys are the normalized queries, k_j = qk_j / |qk_j| (a zero row stays zero); the queries are
// qk as given. Per hash round r < n_rounds with the rotation R_r [Dk, n_buckets / 2]:
//   bucket_r(t) = argmax([qk_t R_r ; -qk_t R_r])          (ties: the lower index)
// Positions are stably sorted by (bucket, position) and the sorted order is cut into chunks of
// chunk_len (the last one may be shorter). The query at sorted index s, chunk c = s / chunk_len,
// sees the keys at sorted indices [(c - 1) chunk_len, (c + 1) chunk_len) (its chunk and the
// previous one; chunk 0 has no previous one) with
//   position j <= position i (causal) and j != i (no attention to itself),
// and round r gives (o_r, lse_r) = the softmax over those keys of s_ij = scale * qk_i . k_j
// (o_r = 0, lse_r = -inf when there is none). The rounds are combined by their lse:
//   lse = log sum_r exp(lse_r),  o = sum_r exp(lse_r - lse) o_r.
// Self rule: when no round has any visible key (only the first position under causal masking
// with one bucket, or a query alone in its chunks), the query attends to itself alone:
// o = v_i, lse = scale * qk_i . k_i. This is the limit of Reformer's published code, which gives
// the self logit a -1e5 penalty instead of -inf: there a round holding other keys gives the self
// key weight exp(-1e5) = 0, and a round with the self key alone gets that weight against the
// other rounds, so it counts only when every round is alone.
//
// Differences from the published code, on purpose: the first chunk does not wrap around to the
// last one (the code rolls the chunks; under causal masking the wrapped keys are mostly hidden
// anyway); a key in several rounds is counted once per round (no duplicate correction, as the
// released code); the rotations are shared by every batch row and head. Only shared QK is
// accepted (there is no separate K: the hash must put a query and its own key in one bucket);
// hence no GQA either (v has the heads of qk).
//
// Hashing is one routine, lsh_buckets (Eigen GEMM of each (batch row, head) against R_r, argmax
// in a fixed order), used by every form, so the forms sort identically and differ only in the
// attention's rounding, never by a flipped near-tie of the argmax. This header holds the
// options, validation, lsh_rotations, lsh_buckets and reference::lsh_attention (plain loops in
// double over the definition above).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of lsh_attention and reference::lsh_attention (Reformer's names).
struct LshOptions {
  /// Buckets per round, even and >= 2 (the rotation has n_buckets / 2 columns).
  index_t n_buckets = 64;
  /// Hash rounds, >= 1; their results are combined by lse.
  index_t n_rounds = 4;
  /// Positions per chunk of the sorted order, >= 1; a query sees its chunk and the previous one.
  index_t chunk_len = 64;
  /// Only keys at positions <= the query's (Reformer's causal language model).
  bool causal = true;
  /// Seed of the random rotations when LshInputs::rotations is not given.
  std::uint64_t seed = 0;
  /// Multiplies qk_i . k_j; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments of lsh_attention. rotations is optional: [n_rounds, Dk, n_buckets / 2], e.g. from
/// lsh_rotations (absent: lsh_rotations(Dk, options) is drawn at every call).
struct LshInputs {
  ConstView<float, 4> qk;              ///< [B,T,H,Dk] queries; the keys are these rows normalized
  ConstView<float, 4> v;               ///< [B,T,H,Dv]
  ConstView<float, 3> rotations = {};  ///< [n_rounds, Dk, n_buckets/2], optional
};

/// Reformer's random rotations: n_rounds matrices [Dk, n_buckets / 2] of independent standard
/// normal entries drawn from options.seed (std::mt19937_64 and a Box-Muller transform written
/// here, so the draw is the same on every platform and standard library).
inline Tensor<float, 3> lsh_rotations(index_t Dk, const LshOptions& options) {
  const ArgCheck check("lsh_rotations");
  check.that(Dk >= 1, "Dk", "must be >= 1, got " + std::to_string(Dk));
  check.that(options.n_rounds >= 1, "options.n_rounds", "must be >= 1, got " + std::to_string(options.n_rounds));
  check.that(options.n_buckets >= 2 && options.n_buckets % 2 == 0, "options.n_buckets",
             "must be even and >= 2, got " + std::to_string(options.n_buckets));
  Tensor<float, 3> r({options.n_rounds, Dk, options.n_buckets / 2});
  std::mt19937_64 engine(options.seed);
  const auto uniform = [&] {  // in (0, 1]: 53 random bits
    return (static_cast<double>(engine() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  };
  constexpr double two_pi = 6.283185307179586;
  for (index_t e = 0; e < r.numel(); e += 2) {
    const double radius = std::sqrt(-2.0 * std::log(uniform())), angle = two_pi * uniform();
    r.data()[e] = static_cast<float>(radius * std::cos(angle));
    if (e + 1 < r.numel()) r.data()[e + 1] = static_cast<float>(radius * std::sin(angle));
  }
  return r;
}

namespace detail {

inline AttentionInputs<float> lsh_dense_inputs(const LshInputs& in) {
  AttentionInputs<float> dense;
  dense.q = in.qk, dense.k = in.qk, dense.v = in.v;
  return dense;
}

inline AttentionOptions lsh_attention_options(const LshOptions& options) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = options.causal;
  return o;
}

// Checks of the options, qk and the rotations (everything lsh_buckets reads).
inline void validate_lsh_hashing(const ArgCheck& check, const LshInputs& in, const LshOptions& options) {
  check.that(options.n_buckets >= 2 && options.n_buckets % 2 == 0, "options.n_buckets",
             "must be even and >= 2 (argmax over [xR; -xR]), got " + std::to_string(options.n_buckets));
  check.that(options.n_rounds >= 1, "options.n_rounds", "must be >= 1, got " + std::to_string(options.n_rounds));
  check.that(options.chunk_len >= 1, "options.chunk_len", "must be >= 1, got " + std::to_string(options.chunk_len));
  check.shape("qk", in.qk, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,Dk");
  check.optional_shape("rotations", in.rotations,
                       std::array<index_t, 3>{options.n_rounds, in.qk.size(3), options.n_buckets / 2},
                       "n_rounds,Dk,n_buckets/2");
  if (in.rotations.has_value()) {
    bool finite = true;
    for (index_t r = 0; r < in.rotations.size(0); ++r)
      for (index_t c = 0; c < in.rotations.size(1); ++c)
        for (index_t e = 0; e < in.rotations.size(2); ++e) finite = finite && std::isfinite(in.rotations(r, c, e));
    check.that(finite, "rotations", "must be finite");
  }
}

// Validation shared by every form; nothing is written before it passes.
inline AttentionDims validate_lsh(const char* op, const LshInputs& in, const AttentionOutputs& out,
                                  const LshOptions& options) {
  const ArgCheck check(op);
  validate_lsh_hashing(check, in, options);
  check.shape("v", in.v, std::array<index_t, 4>{in.qk.size(0), in.qk.size(1), in.qk.size(2), -1}, "B,T,H,Dv");
  const AttentionDims d = validate_attention(check, lsh_dense_inputs(in), out, lsh_attention_options(options));
  if (views_overlap(out.o, in.rotations) || views_overlap(out.lse, in.rotations))
    check.fail("o", "overlaps rotations; lsh_attention cannot write in place");
  return d;
}

// Stable order of positions [0, T) by bucket (counting sort: positions of one bucket stay in
// increasing order), written to order[0..T).
inline void lsh_sort_by_bucket(const std::int32_t* bucket, index_t T, index_t n_buckets, std::int32_t* order,
                               std::vector<index_t>& count) {
  count.assign(static_cast<std::size_t>(n_buckets + 1), 0);
  for (index_t t = 0; t < T; ++t) ++count[static_cast<std::size_t>(bucket[t] + 1)];
  for (index_t n = 1; n <= n_buckets; ++n) count[static_cast<std::size_t>(n)] += count[static_cast<std::size_t>(n - 1)];
  for (index_t t = 0; t < T; ++t) order[count[static_cast<std::size_t>(bucket[t])]++] = static_cast<std::int32_t>(t);
}

}  // namespace detail

/// The buckets of every round: buckets[b, h, r, t] = argmax([qk R_r; -qk R_r]) (ties: the lower
/// index, NaN never wins), with R = in.rotations or lsh_rotations(Dk, options). Every form hashes
/// through this routine (Eigen GEMM per (batch row, head, round), threaded over them).
inline void lsh_buckets(const LshInputs& in, const TensorView<std::int32_t, 4>& buckets, const LshOptions& options = {},
                        const Executor& executor = serial_executor()) {
  const ArgCheck check("lsh_buckets");
  detail::validate_lsh_hashing(check, in, options);
  const index_t B = in.qk.size(0), T = in.qk.size(1), H = in.qk.size(2), Dk = in.qk.size(3), R = options.n_rounds,
                half = options.n_buckets / 2;
  check.shape("buckets", buckets, std::array<index_t, 4>{B, H, R, T}, "B,H,n_rounds,T");
  if (B * H * T == 0) return;
  Tensor<float, 3> own;
  ConstView<float, 3> rot = in.rotations;
  if (!rot.has_value()) {
    own = lsh_rotations(Dk, options);
    rot = own.cview();
  }
  parallel_for(executor, B * H * R, 1, [&](index_t first, index_t last) {
    RowMajorMatrix<float> x, proj;
    for (index_t task = first; task < last; ++task) {
      const index_t r = task % R, h = task / R % H, b = task / R / H;
      x.resize(T, Dk);
      const index_t stride = in.qk.stride(3);
      for (index_t t = 0; t < T; ++t) {
        const float* src = in.qk.ptr(b, t, h);
        for (index_t c = 0; c < Dk; ++c) x(t, c) = src[c * stride];
      }
      RowMajorMatrix<float> rm(Dk, half);
      for (index_t c = 0; c < Dk; ++c)
        for (index_t e = 0; e < half; ++e) rm(c, e) = rot(r, c, e);
      proj.noalias() = x * rm;
      for (index_t t = 0; t < T; ++t) {
        std::int32_t best = 0;
        float top = -std::numeric_limits<float>::infinity();
        bool any = false;
        for (index_t e = 0; e < 2 * half; ++e) {
          const float s = e < half ? proj(t, e) : -proj(t, e - half);
          if (!(s != s) && (!any || s > top)) top = s, best = static_cast<std::int32_t>(e), any = true;
        }
        buckets(b, h, r, t) = best;
      }
    }
  });
}

namespace reference {

/// The definition (see the top of this file): the shared hashing (lsh_buckets), then per round a
/// stable sort, the chunks, and for each query a plain softmax in double over its visible keys;
/// rounds combined by lse in double. Single-threaded attention; `executor` runs the hashing only.
inline void lsh_attention(const LshInputs& in, const AttentionOutputs& out, const LshOptions& options = {},
                          const Executor& executor = serial_executor()) {
  const detail::AttentionDims d = detail::validate_lsh("reference::lsh_attention", in, out, options);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tq, R = options.n_rounds, L = options.chunk_len;
  Tensor<std::int32_t, 4> buckets({d.B, d.Hq, R, T});
  lsh_buckets(in, buckets.view(), options, executor);
  const double scale = detail::attention_scale(detail::lsh_attention_options(options), d.Dk);
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<std::int32_t> order(static_cast<std::size_t>(T));
  std::vector<std::pair<std::int32_t, std::int32_t>> keyed(static_cast<std::size_t>(T));
  std::vector<double> keys(static_cast<std::size_t>(T * d.Dk)), round_o(static_cast<std::size_t>(R * T * d.Dv)),
      round_lse(static_cast<std::size_t>(R * T)), s;
  std::vector<index_t> seen;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      for (index_t t = 0; t < T; ++t) {  // k_t = qk_t / |qk_t|
        double norm = 0.0;
        for (index_t c = 0; c < d.Dk; ++c) norm += static_cast<double>(in.qk(b, t, h, c)) * in.qk(b, t, h, c);
        norm = std::sqrt(norm);
        for (index_t c = 0; c < d.Dk; ++c)
          keys[static_cast<std::size_t>(t * d.Dk + c)] = norm > 0.0 ? in.qk(b, t, h, c) / norm : 0.0;
      }
      const auto logit = [&](index_t i, index_t j) {
        double dot = 0.0;
        for (index_t c = 0; c < d.Dk; ++c) dot += static_cast<double>(in.qk(b, i, h, c)) * keys[static_cast<std::size_t>(j * d.Dk + c)];
        return scale * dot;
      };
      for (index_t r = 0; r < R; ++r) {
        for (index_t t = 0; t < T; ++t) keyed[static_cast<std::size_t>(t)] = {buckets(b, h, r, t), static_cast<std::int32_t>(t)};
        std::sort(keyed.begin(), keyed.end());  // by (bucket, position)
        for (index_t t = 0; t < T; ++t) order[static_cast<std::size_t>(t)] = keyed[static_cast<std::size_t>(t)].second;
        for (index_t si = 0; si < T; ++si) {
          const index_t i = order[static_cast<std::size_t>(si)], c = si / L;
          seen.clear();
          for (index_t sj = std::max<index_t>(0, (c - 1) * L); sj < std::min(T, (c + 1) * L); ++sj) {
            const index_t j = order[static_cast<std::size_t>(sj)];
            if (j != i && (!options.causal || j <= i)) seen.push_back(j);
          }
          s.assign(seen.size(), 0.0);
          double top = -inf;
          for (std::size_t e = 0; e < seen.size(); ++e) s[e] = logit(i, seen[e]), top = std::max(top, s[e]);
          double* o = round_o.data() + (r * T + i) * d.Dv;
          std::fill(o, o + d.Dv, 0.0);
          double l = 0.0;
          for (std::size_t e = 0; e < seen.size(); ++e) {
            const double p = std::exp(s[e] - top);
            l += p;
            for (index_t c2 = 0; c2 < d.Dv; ++c2) o[c2] += p * in.v(b, seen[e], h, c2);
          }
          for (index_t c2 = 0; c2 < d.Dv && l > 0.0; ++c2) o[c2] /= l;
          round_lse[static_cast<std::size_t>(r * T + i)] = seen.empty() ? -inf : top + std::log(l);
        }
      }
      for (index_t i = 0; i < T; ++i) {
        double top = -inf;
        for (index_t r = 0; r < R; ++r) top = std::max(top, round_lse[static_cast<std::size_t>(r * T + i)]);
        if (top == -inf) {  // no round has a key: the query attends to itself
          for (index_t c = 0; c < d.Dv; ++c) out.o(b, i, h, c) = in.v(b, i, h, c);
          if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(logit(i, i));
          continue;
        }
        double total = 0.0;
        for (index_t r = 0; r < R; ++r) total += std::exp(round_lse[static_cast<std::size_t>(r * T + i)] - top);
        for (index_t c = 0; c < d.Dv; ++c) {
          double acc = 0.0;
          for (index_t r = 0; r < R; ++r)
            acc += std::exp(round_lse[static_cast<std::size_t>(r * T + i)] - top) * round_o[static_cast<std::size_t>((r * T + i) * d.Dv + c)];
          out.o(b, i, h, c) = static_cast<float>(acc / total);
        }
        if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(top + std::log(total));
      }
    }
}

}  // namespace reference
}  // namespace seqmix
