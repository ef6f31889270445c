// masked_mixer (issue 16 item 6): token mixing by a learned T x T matrix under a causal
// (lower-triangular) mask, one matrix per channel group (G = 1: shared by all channels; G = H:
// one per head; G = D: one per channel; channel c is in group c / (D/G)).
//
//   y[b,t,c] = sum_{s<=t} W[g(c), t, s] x[b,s,c]          W [G,L,L], L >= T
//
// The caller's W is trained for sequences up to L tokens; a call on T <= L tokens uses its
// leading T x T block. Entries above the diagonal (s > t) are never read: the mask is part of
// the operator, so y[t] depends on x[0..t] only. This header holds the argument structs, their
// validation and the readable definition (double loops in double precision); the blocked fast
// form is in fast.hpp, the decode step (row t of W against the caller's history) in step.hpp.
#pragma once

#include <cmath>
#include <string>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// masked_mixer's inputs (docs/operators.md, "masked_mixer").
struct MaskedMixerInputs {
  ConstView<float, 3> x;       ///< [B,T,D], any strides
  ConstView<float, 3> weight;  ///< [G,L,L]: mixing matrices, L >= T, G divides D; only s <= t < T is read (finite)
};

/// masked_mixer's options.
struct MaskedMixerOptions {
  /// Run from the last token to the first (core/direction.hpp): x and y are reversed views, not
  /// copies, so y[t] = sum_{s>=t} W[g, T-1-t, T-1-s] x[s] (the mask anti-causal; W is indexed in
  /// processing order). masked_mixer_step has no direction.
  bool reverse = false;
};

/// masked_mixer's output: y must not overlap an input.
struct MaskedMixerOutputs {
  TensorView<float, 3> y;  ///< [B,T,D]
};

namespace detail {

struct MaskedMixerDims {
  index_t B, T, D, G, L;
};

// Rows t < T of weight[g], entries s <= t: finite (the entries the operator reads).
inline void masked_mixer_check_weight(const ArgCheck& check, const ConstView<float, 3>& w, index_t rows_begin,
                                      index_t rows_end) {
  for (index_t g = 0; g < w.size(0); ++g)
    for (index_t t = rows_begin; t < rows_end; ++t)
      for (index_t s = 0; s <= t; ++s)
        if (!std::isfinite(w(g, t, s)))
          check.fail("weight", "holds a non-finite value at [" + std::to_string(g) + "," + std::to_string(t) + "," +
                                   std::to_string(s) + "] (on or below the diagonal, where the operator reads)");
}

// Shapes, G | D, L >= T, finite read entries and overlap, before anything is written.
inline MaskedMixerDims validate_masked_mixer(const char* op, const MaskedMixerInputs& in,
                                             const MaskedMixerOutputs& out) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("weight", in.weight, {-1, -1, -1}, "G,L,L");
  const index_t G = in.weight.size(0), L = in.weight.size(1);
  if (in.weight.size(2) != L)
    check.fail("weight", "must be square per group ([G,L,L]), got [" + std::to_string(G) + "," + std::to_string(L) +
                             "," + std::to_string(in.weight.size(2)) + "]");
  if (G < 1 || D % G != 0)
    check.fail("weight", "needs G >= 1 groups dividing D = " + std::to_string(D) + ", got G = " + std::to_string(G));
  if (L < T)
    check.fail("weight", "covers L = " + std::to_string(L) + " tokens, fewer than the sequence (T = " +
                             std::to_string(T) + ")");
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  masked_mixer_check_weight(check, in.weight, 0, T);
  check.no_overlap("y", out.y, "x", in.x);
  check.no_overlap("y", out.y, "weight", in.weight);
  return {B, T, D, G, L};
}

}  // namespace detail

namespace detail {

// A reverse call (options.reverse) as the forward call on reversed views of x and y.
inline std::pair<MaskedMixerInputs, MaskedMixerOutputs> masked_mixer_reversed_call(MaskedMixerInputs in,
                                                                                   MaskedMixerOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition of masked_mixer: for every (b, t, c) the masked row sum in double.
/// Single-threaded, `executor` accepted for a uniform signature. Validates first (shapes, G
/// dividing D, L >= T, finite entries on and below the diagonal, no overlap). options.reverse:
/// anti-causal, on reversed views (MaskedMixerOptions).
inline void masked_mixer(const MaskedMixerInputs& in, const MaskedMixerOutputs& out, const MaskedMixerOptions& options,
                         const Executor& executor = serial_executor()) {
  (void)executor;
  if (options.reverse) {
    const auto rev = detail::masked_mixer_reversed_call(in, out);
    return masked_mixer(rev.first, rev.second, detail::forward_options(options));
  }
  const auto d = detail::validate_masked_mixer("reference::masked_mixer", in, out);
  const index_t group = d.D / d.G;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t c = 0; c < d.D; ++c) {
        double acc = 0.0;
        for (index_t s = 0; s <= t; ++s) acc += double(in.weight(c / group, t, s)) * double(in.x(b, s, c));
        out.y(b, t, c) = static_cast<float>(acc);
      }
}

/// reference::masked_mixer with default options (forward), as before options existed.
inline void masked_mixer(const MaskedMixerInputs& in, const MaskedMixerOutputs& out,
                         const Executor& executor = serial_executor()) {
  masked_mixer(in, out, MaskedMixerOptions{}, executor);
}

}  // namespace reference
}  // namespace seqmix
