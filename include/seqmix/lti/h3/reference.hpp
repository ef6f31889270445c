// h3: the H3 layer's mixing (Fu et al. 2023, issue 16 item 4) on projections and SSM kernels the
// caller computed: a shift SSM on k, the outer product with v per head, a diagonal SSM on every
// entry of that product, read out by q.
//
// This header holds the argument structs, their validation and the readable definition
// (seqmix::reference::h3: direct convolutions in double). The fast prefill (the convolutions
// through lti/long_conv) is in fast.hpp.
//
//   q, k, v [B,T,H,P] (P: head size); shift filter [Ls,H*P], diagonal filter [L,H*P], column h*P+i
//   kbar[t,h,i]  = sum_{s<Ls, s<=t} shift[s,h*P+i] k[t-s,h,i]                      (SSM_shift(k))
//   kv[t,h,i,j]  = sum_{s<L,  s<=t} diag[s,h*P+i]  kbar[t-s,h,i] v[t-s,h,j]       (SSM_diag(kbar v^T))
//   y[t,h,j]     = sum_i q[t,h,i] kv[t,h,i,j]
// The SSMs' kernels come from lti/ssm_kernel (the shift SSM's kernel is its C: a short FIR
// filter); an SSM's D term is tap 0 of its filter plus D.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/long_conv/reference.hpp"

namespace seqmix {

/// Options of h3 (docs/operators.md, "h3").
struct H3Options {
  /// How the long convolutions run (long_conv's choice; automatic by default).
  LongConvMethod method = LongConvMethod::automatic;
  /// Run from the last token to the first (core/direction.hpp): q, k, v and y are reversed views,
  /// not copies, so both SSMs are anti-causal (kbar[t] reads k[t..t+Ls-1], kv[t] reads
  /// kbar v^T at t..t+L-1). h3 has no state; the step (h3_step) has no direction.
  bool reverse = false;
};

/// Prefill arguments.
struct H3Inputs {
  ConstView<float, 4> q;             ///< [B,T,H,P]
  ConstView<float, 4> k;             ///< [B,T,H,P]
  ConstView<float, 4> v;             ///< [B,T,H,P]
  ConstView<float, 2> shift_filter;  ///< [Ls,H*P], Ls >= 1: the shift SSM's kernel per key channel (column h*P+i)
  ConstView<float, 2> diag_filter;   ///< [L,H*P], L >= 1: the diagonal SSM's kernel per (head, key index), shared over the value index
};

/// Outputs. y must overlap no input.
struct H3Outputs {
  TensorView<float, 4> y;  ///< [B,T,H,P]
};

namespace detail {

struct H3Dims {
  index_t B, T, H, P, Ls, L;
};

// Validates a prefill call (shared by every form), before anything is written.
inline H3Dims validate_h3(const char* op, const H3Inputs& in, const H3Outputs& out, const H3Options& options) {
  const ArgCheck check(op);
  check.enum_value("options.method", options.method, 3);
  check.shape("q", in.q, {-1, -1, -1, -1}, "B,T,H,P");
  const index_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), P = in.q.size(3);
  check.shape("k", in.k, {B, T, H, P}, "B,T,H,P").shape("v", in.v, {B, T, H, P}, "B,T,H,P");
  const index_t D = check.product("q", H, P);
  check.shape("shift_filter", in.shift_filter, {-1, D}, "Ls,H*P").shape("diag_filter", in.diag_filter, {-1, D}, "L,H*P");
  const index_t Ls = in.shift_filter.size(0), L = in.diag_filter.size(0);
  if (Ls < 1) check.fail("shift_filter", "must have at least one tap (Ls >= 1), got shape " + shape_to_string(in.shift_filter.shape()));
  if (L < 1) check.fail("diag_filter", "must have at least one tap (L >= 1), got shape " + shape_to_string(in.diag_filter.shape()));
  check.shape("y", out.y, {B, T, H, P}, "B,T,H,P");
  check_finite_filter(check, "shift_filter", in.shift_filter);
  check_finite_filter(check, "diag_filter", in.diag_filter);
  check.no_overlap("y", out.y, "q", in.q)
      .no_overlap("y", out.y, "k", in.k)
      .no_overlap("y", out.y, "v", in.v)
      .no_overlap("y", out.y, "shift_filter", in.shift_filter)
      .no_overlap("y", out.y, "diag_filter", in.diag_filter);
  return {B, T, H, P, Ls, L};
}

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments.
inline std::pair<H3Inputs, H3Outputs> h3_reversed_call(H3Inputs in, H3Outputs out) {
  reverse_time_of(in.q, in.k, in.v, out.y);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition with direct convolutions, accumulated in double (the oracle the fast form is
/// tested against). O(B H P (T Ls + P T L)); single-threaded, `executor` accepted for a uniform
/// signature. Validates first.
inline void h3(const H3Inputs& in, const H3Outputs& out, const H3Options& options = {},
               const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::h3_reversed_call(in, out);
    return h3(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_h3("reference::h3", in, out, options);
  const index_t T = dims.T, P = dims.P;
  std::vector<double> kbar(static_cast<std::size_t>(T * P)), acc(static_cast<std::size_t>(P));
  for (index_t b = 0; b < dims.B; ++b)
    for (index_t h = 0; h < dims.H; ++h) {
      for (index_t t = 0; t < T; ++t)
        for (index_t i = 0; i < P; ++i) {
          double sum = 0.0;
          for (index_t s = 0; s < dims.Ls && s <= t; ++s) sum += double(in.shift_filter(s, h * P + i)) * in.k(b, t - s, h, i);
          kbar[static_cast<std::size_t>(t * P + i)] = sum;
        }
      for (index_t t = 0; t < T; ++t) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (index_t i = 0; i < P; ++i)
          for (index_t j = 0; j < P; ++j) {
            double kv = 0.0;
            for (index_t s = 0; s < dims.L && s <= t; ++s)
              kv += double(in.diag_filter(s, h * P + i)) * kbar[static_cast<std::size_t>((t - s) * P + i)] *
                    in.v(b, t - s, h, j);
            acc[static_cast<std::size_t>(j)] += double(in.q(b, t, h, i)) * kv;
          }
        for (index_t j = 0; j < P; ++j) out.y(b, t, h, j) = static_cast<float>(acc[static_cast<std::size_t>(j)]);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
