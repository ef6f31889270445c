// landmark_step: landmark attention's decode form (the paper's inference with retrieval). A
// query (or a few) reads the Nb landmark keys (kept by the caller beside the cache: the K rows of
// the landmark tokens, or block means updated when a block completes; computed from K when not
// given, which reads all of K), retrieves the top_k earlier blocks by landmark logit, and
// attends its own block plus the retrieved blocks with the grouped softmax. The cost is a read of
// the Nb landmarks plus (top_k + 1) blocks of K/V per query head, against Tk rows for dense
// decode; top_k = number of blocks (or -1) gives the prefill's result exactly.
#pragma once

#include "seqmix/attention/landmark/fast.hpp"

namespace seqmix {

/// Same arguments and results as reference::landmark_attention, for few queries (any Tq is
/// accepted). Allocates the landmark keys unless given, the logits ([Tq, Hq / Hkv, Nb] floats)
/// and one scratch per thread (kept across calls).
template <class KV>
void landmark_step(const LandmarkInputs<KV>& in, const AttentionOutputs& out, const LandmarkOptions& options = {},
                   const Executor& executor = serial_executor()) {
  const detail::LandmarkDims m = detail::validate_landmark("landmark_step", in, out, options);
  detail::landmark_run(in, out, options, m, executor);
}

}  // namespace seqmix
