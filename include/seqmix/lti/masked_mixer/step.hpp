// masked_mixer, decode step: the output of the newest token is row t of W against the tokens
// 0..t, which the caller keeps (the history is the caller's view, e.g. a growing [B,L,D]
// buffer; the operator carries no state). O(t D) per token and batch row: y[b,c] =
// sum_{s<=t} W[g(c), t, s] history[b,s,c], with t = S-1 for a history of S tokens, so steps over
// growing prefixes of x equal the prefill's rows exactly up to float rounding.
#pragma once

#include <string>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/masked_mixer/reference.hpp"

namespace seqmix {

/// masked_mixer decode-step inputs.
struct MaskedMixerStepInputs {
  ConstView<float, 3> history;  ///< [B,S,D]: tokens 0..S-1 of the sequence, the newest last (S >= 1, S <= L)
  ConstView<float, 3> weight;   ///< [G,L,L], as in the prefill (row S-1 is read, entries s < S)
};

/// masked_mixer decode-step output; y must not overlap an input.
struct MaskedMixerStepOutputs {
  TensorView<float, 2> y;  ///< [B,D]: the output of token S-1
};

/// One decode step of masked_mixer (see step.hpp's header comment). Batch rows split over
/// `executor`. Validates first (shapes, S >= 1, S <= L, G dividing D, finite entries of row S-1
/// up to the diagonal, no overlap) before writing y.
inline void masked_mixer_step(const MaskedMixerStepInputs& in, const MaskedMixerStepOutputs& out,
                              const Executor& executor = serial_executor()) {
  const ArgCheck check("masked_mixer_step");
  check.shape("history", in.history, {-1, -1, -1}, "B,S,D");
  const index_t B = in.history.size(0), S = in.history.size(1), D = in.history.size(2);
  check.shape("weight", in.weight, {-1, -1, -1}, "G,L,L");
  const index_t G = in.weight.size(0), L = in.weight.size(1);
  if (in.weight.size(2) != L) check.fail("weight", "must be square per group ([G,L,L])");
  if (G < 1 || D % G != 0)
    check.fail("weight", "needs G >= 1 groups dividing D = " + std::to_string(D) + ", got G = " + std::to_string(G));
  if (S < 1) check.fail("history", "must hold at least the newest token (S >= 1)");
  if (S > L)
    check.fail("history", "holds S = " + std::to_string(S) + " tokens, more than the weight covers (L = " +
                              std::to_string(L) + ")");
  check.shape("y", out.y, {B, D}, "B,D");
  detail::masked_mixer_check_weight(check, in.weight, S - 1, S);
  check.no_overlap("y", out.y, "history", in.history);
  check.no_overlap("y", out.y, "weight", in.weight);
  if (B == 0 || D == 0) return;
  const index_t group = D / G, t = S - 1;
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    for (index_t b = begin; b < end; ++b) {
      for (index_t c = 0; c < D; ++c) out.y(b, c) = 0.f;
      for (index_t s = 0; s <= t; ++s)
        for (index_t c = 0; c < D; ++c) out.y(b, c) += in.weight(c / group, t, s) * in.history(b, s, c);
    }
  });
}

}  // namespace seqmix
