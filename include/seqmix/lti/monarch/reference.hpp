// monarch_mix (Monarch Mixer, Fu et al. 2023, "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based
// Architecture"; issue 16 item 6): sequence mixing over the token axis by order-2 Monarch
// matrices, for each channel.
//
// monarch_mix (non-causal, the caller's blocks). With n = b*b >= T, a length-n vector v is read
// as a b x b row-major matrix (v[r*b + c]); P is the reshape-transpose permutation
// (P v)[c*b + r] = v[r*b + c] (P = P^T for square blocks). Per channel group g:
//
//   M_g = P L_g P^T R_g,    L_g = diag(left[g,0], ..., left[g,b-1]),
//                           R_g = diag(right[g,0], ..., right[g,b-1])   (b blocks of b x b)
//   y[b,:,c] = first T entries of M_{g(c)} (x[b,:,c] zero-padded to n)
//
// i.e. y[m*b + i] = sum_k left[g,i][m,k] sum_j right[g,k][i,j] x[k*b + j]. Every output token
// reads every input token block: non-causal.
//
// monarch_mix_causal: the paper's causal construction (section 5: Monarch matrices as polynomial
// evaluation and interpolation; causality by zero padding to twice the length). With x and the
// filter k zero-padded to n = b*b >= 2T-1 tokens and M_n the Monarch factorization of the n-point
// DFT (R: b-point DFT blocks, L: b-point DFT blocks times the twiddle diagonal),
//
//   y = first T entries of M_n^{-1} ((M_n pad(x)) . (M_n pad(k)))
//     = sum_{s<=t} k[t-s] x[s]       (the padding removes the wrap-around: y[t] reads x[0..t])
//
// options.reverse (monarch_mix_causal only): the same on reversed views of x and y
// (core/direction.hpp), so the product is anti-causal, y[t] = sum_{s>=t} k[s-t] x[s]. monarch_mix
// is non-causal (every output reads every token block) and has no direction: reversing its input
// is a different mixing matrix, not a reverse scan.
//
// The learned-basis variant of the paper (blocks constrained to polynomial bases other than the
// DFT) is not implemented: the caller's parameters are the filter k, as in M2's GPT models,
// whose sequence mixer is this DFT instance with implicit long filters.
//
// This header holds the argument structs, validation and the readable definitions in double:
// the four factors applied literally for monarch_mix, the convolution sum for monarch_mix_causal.
// The fast forms (batched small GEMMs) are in fast.hpp.
#pragma once

#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// monarch_mix's inputs (docs/operators.md, "monarch_mix").
struct MonarchMixInputs {
  ConstView<float, 3> x;      ///< [B,T,D], any strides
  ConstView<float, 4> left;   ///< [G,b,b,b]: block i of L for group g is left[g,i] (b x b); b*b >= T, G divides D, finite
  ConstView<float, 4> right;  ///< [G,b,b,b]: block k of R for group g is right[g,k]; same shape as left, finite
};

/// monarch_mix_causal's inputs (docs/operators.md, "monarch_mix").
struct MonarchMixCausalInputs {
  ConstView<float, 3> x;       ///< [B,T,D], any strides
  ConstView<float, 2> filter;  ///< [L,D]: tap s multiplies x[t-s]; L >= 1, taps s >= T are never read; finite
};

/// monarch_mix_causal's options.
struct MonarchMixCausalOptions {
  /// Run from the last token to the first (core/direction.hpp): x and y are reversed views, not
  /// copies, so y[t] = sum_{s>=t, s-t<L} filter[s-t] x[s] (anti-causal).
  bool reverse = false;
};

/// Output of both operators: y must not overlap an input.
struct MonarchMixOutputs {
  TensorView<float, 3> y;  ///< [B,T,D]
};

namespace detail {

struct MonarchMixDims {
  index_t B, T, D, G, b;
};

template <std::size_t Rank>
inline void monarch_check_finite(const ArgCheck& check, const char* argument, const ConstView<float, Rank>& v) {
  index_t count = 1;
  for (std::size_t d = 0; d < Rank; ++d) count *= v.size(d);
  std::array<index_t, Rank> idx{};
  for (index_t n = 0; n < count; ++n) {
    index_t rest = n;
    for (std::size_t d = Rank; d-- > 0;) {
      idx[d] = rest % v.size(d);
      rest /= v.size(d);
    }
    const float* p = v.data();
    for (std::size_t d = 0; d < Rank; ++d) p += idx[d] * v.stride(d);
    if (!std::isfinite(*p)) {
      std::string at;
      for (std::size_t d = 0; d < Rank; ++d) at += (d ? "," : "") + std::to_string(idx[d]);
      check.fail(argument, "holds a non-finite value at [" + at + "]");
    }
  }
}

inline MonarchMixDims validate_monarch_mix(const char* op, const MonarchMixInputs& in, const MonarchMixOutputs& out) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("left", in.left, {-1, -1, -1, -1}, "G,b,b,b");
  const index_t G = in.left.size(0), b = in.left.size(1);
  if (in.left.size(2) != b || in.left.size(3) != b)
    check.fail("left", "must hold b square blocks of b x b per group ([G,b,b,b]), got " +
                           shape_to_string(in.left.shape()));
  if (b < 1) check.fail("left", "must have blocks of size b >= 1");
  if (G < 1 || D % G != 0)
    check.fail("left", "needs G >= 1 groups dividing D = " + std::to_string(D) + ", got G = " + std::to_string(G));
  if (b * b < T)
    check.fail("left", "has blocks of b = " + std::to_string(b) + ", covering b*b = " + std::to_string(b * b) +
                           " tokens, fewer than T = " + std::to_string(T));
  check.shape("right", in.right, {G, b, b, b}, "G,b,b,b");
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  monarch_check_finite(check, "left", in.left);
  monarch_check_finite(check, "right", in.right);
  check.no_overlap("y", out.y, "x", in.x);
  check.no_overlap("y", out.y, "left", in.left);
  check.no_overlap("y", out.y, "right", in.right);
  return {B, T, D, G, b};
}

inline MonarchMixDims validate_monarch_mix_causal(const char* op, const MonarchMixCausalInputs& in,
                                                  const MonarchMixOutputs& out) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("filter", in.filter, {-1, D}, "L,D");
  if (in.filter.size(0) < 1) check.fail("filter", "must have at least one tap (L >= 1)");
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  monarch_check_finite(check, "filter", in.filter);
  check.no_overlap("y", out.y, "x", in.x);
  check.no_overlap("y", out.y, "filter", in.filter);
  return {B, T, D, D, 0};
}

// A reverse call (options.reverse) as the forward call on reversed views of x and y.
inline std::pair<MonarchMixCausalInputs, MonarchMixOutputs> monarch_causal_reversed_call(MonarchMixCausalInputs in,
                                                                                         MonarchMixOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

// (P v)[c*b + r] = v[r*b + c] on a length b*b vector (its own inverse).
inline void monarch_permute(index_t b, const std::vector<double>& v, std::vector<double>& out) {
  out.assign(v.size(), 0.0);
  for (index_t r = 0; r < b; ++r)
    for (index_t c = 0; c < b; ++c) out[static_cast<std::size_t>(c * b + r)] = v[static_cast<std::size_t>(r * b + c)];
}

// out = diag(blocks[g,0..b)) v in double.
inline void monarch_block_diag(const ConstView<float, 4>& blocks, index_t g, const std::vector<double>& v,
                               std::vector<double>& out) {
  const index_t b = blocks.size(1);
  out.assign(v.size(), 0.0);
  for (index_t k = 0; k < b; ++k)
    for (index_t i = 0; i < b; ++i) {
      double acc = 0.0;
      for (index_t j = 0; j < b; ++j) acc += double(blocks(g, k, i, j)) * v[static_cast<std::size_t>(k * b + j)];
      out[static_cast<std::size_t>(k * b + i)] = acc;
    }
}

}  // namespace detail

namespace reference {

/// The definition of monarch_mix: per (batch row, channel) the zero-padded column, then R, P^T,
/// L and P applied one after the other in double. Single-threaded, `executor` accepted for a
/// uniform signature. Validates first (shapes, b*b >= T, G dividing D, finite blocks, no overlap).
inline void monarch_mix(const MonarchMixInputs& in, const MonarchMixOutputs& out,
                        const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_monarch_mix("reference::monarch_mix", in, out);
  const index_t n = d.b * d.b, group = d.D / d.G;
  std::vector<double> v(static_cast<std::size_t>(n)), w;
  for (index_t bt = 0; bt < d.B; ++bt)
    for (index_t c = 0; c < d.D; ++c) {
      const index_t g = c / group;
      for (index_t t = 0; t < n; ++t) v[static_cast<std::size_t>(t)] = t < d.T ? double(in.x(bt, t, c)) : 0.0;
      detail::monarch_block_diag(in.right, g, v, w);  // R
      detail::monarch_permute(d.b, w, v);             // P^T
      detail::monarch_block_diag(in.left, g, v, w);   // L
      detail::monarch_permute(d.b, w, v);             // P
      for (index_t t = 0; t < d.T; ++t) out.y(bt, t, c) = static_cast<float>(v[static_cast<std::size_t>(t)]);
    }
}

/// The definition of monarch_mix_causal: y[b,t,c] = sum_{s<=t, s<L} filter[s,c] x[b,t-s,c] in
/// double (what the zero-padded Monarch DFT product computes exactly). Single-threaded.
/// Validates first (shapes, L >= 1, finite filter, no overlap). options.reverse: anti-causal, on
/// reversed views (MonarchMixCausalOptions).
inline void monarch_mix_causal(const MonarchMixCausalInputs& in, const MonarchMixOutputs& out,
                               const MonarchMixCausalOptions& options, const Executor& executor = serial_executor()) {
  (void)executor;
  if (options.reverse) {
    const auto rev = detail::monarch_causal_reversed_call(in, out);
    return monarch_mix_causal(rev.first, rev.second, detail::forward_options(options));
  }
  const auto d = detail::validate_monarch_mix_causal("reference::monarch_mix_causal", in, out);
  const index_t L = in.filter.size(0);
  for (index_t bt = 0; bt < d.B; ++bt)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t c = 0; c < d.D; ++c) {
        double acc = 0.0;
        for (index_t s = 0; s <= t && s < L; ++s) acc += double(in.filter(s, c)) * double(in.x(bt, t - s, c));
        out.y(bt, t, c) = static_cast<float>(acc);
      }
}

/// reference::monarch_mix_causal with default options (forward), as before options existed.
inline void monarch_mix_causal(const MonarchMixCausalInputs& in, const MonarchMixOutputs& out,
                               const Executor& executor = serial_executor()) {
  monarch_mix_causal(in, out, MonarchMixCausalOptions{}, executor);
}

}  // namespace reference
}  // namespace seqmix
