// Argument checks shared by the family's entry points. Internal.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/qkv_check.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la {

// Sizes of a family call (core/qkv_check.hpp, shared with Titans).
using Dims = QkvDims;

// What a prefill's validation resolves: the sizes and the sequences of the call.
struct PrefillCheck {
  Dims d;
  SequenceMap seqs;
};

using detail::check_qkv;
using detail::check_qkv_step;

// A per-head input (gate or bonus) may have H heads (shared like q/k) or HV (one per value head).
// The message is built only on failure: formatting it every call cost ~5% of a decode step.
template <class Shape>
void check_head_count(const ArgCheck& check, const char* argument, index_t heads, const Dims& d, const Shape& shape) {
  if (heads == d.H || heads == d.HV) return;
  check.fail(argument,
             "must have H = " + std::to_string(d.H) + " or HV = " + std::to_string(d.HV) + " heads, got shape " +
                 shape_to_string(shape));
}

// The head of an H- or HV-headed input that value head hv uses.
inline index_t head_for(index_t heads, index_t hv, const Dims& d) { return heads == d.HV ? hv : hv / d.heads_per_qk(); }

inline float check_scale(const ArgCheck& check, const std::optional<float>& scale, index_t K) {
  const float value = scale ? *scale : 1.f / std::sqrt(static_cast<float>(K));
  check.finite(value, "options.scale");
  return value;
}

inline void check_chunk(const ArgCheck& check, index_t chunk) {
  if (chunk < 1 || chunk > 4096) check.fail("options.chunk_size", "must be in [1, 4096], got " + std::to_string(chunk));
}

// An out-of-range algorithm would run neither form's checks nor pick a form (issue 24 item 1).
inline void check_algorithm(const ArgCheck& check, LinearAttentionAlgorithm algorithm) {
  check_enum(check.op(), "options.algorithm", algorithm, 3);
}

// The chunked forms' product precision (GLA and the delta rules): fp32 or dot.
inline void check_bf16_compute(const ArgCheck& check, Bf16Compute compute) {
  check_enum(check.op(), "options.bf16_compute", compute, 2);
}

// The initial / final state pair of a prefill, each optional, [S,HV,Kf,V] with S one row per
// sequence or a pool of slots: checks their shapes agree and returns S (-1 if neither is given).
inline index_t check_state_pair(const ArgCheck& check, const char* initial_name, const ConstView<float, 4>& initial,
                                const char* final_name, const TensorView<float, 4>& final_state, const Dims& d) {
  check.optional_shape(initial_name, initial, std::array<index_t, 4>{-1, d.HV, d.Kf, d.V}, "S,HV,Kf,V");
  const index_t rows = initial.has_value() ? initial.size(0) : -1;
  check.optional_shape(final_name, final_state, std::array<index_t, 4>{rows, d.HV, d.Kf, d.V}, "S,HV,Kf,V");
  return initial.has_value() ? rows : final_state.has_value() ? final_state.size(0) : -1;
}

// Same for a [S,HV,Kf] normalizer pair; `rows` is the state pair's S (-1: not given).
inline index_t check_normalizer_pair(const ArgCheck& check, const ConstView<float, 3>& initial,
                                     const TensorView<float, 3>& final_z, index_t rows, const Dims& d) {
  check.optional_shape("initial_normalizer", initial, std::array<index_t, 3>{rows, d.HV, d.Kf}, "S,HV,Kf");
  if (rows < 0 && initial.has_value()) rows = initial.size(0);
  check.optional_shape("final_normalizer", final_z, std::array<index_t, 3>{rows, d.HV, d.Kf}, "S,HV,Kf");
  return rows >= 0 ? rows : final_z.has_value() ? final_z.size(0) : -1;
}

// token_states [B,T,HV,Kf,V] (the token tensors' first two dims), optional.
inline void check_token_states(const ArgCheck& check, const TensorView<float, 5>& token_states, const Dims& d) {
  check.optional_shape("token_states", token_states, std::array<index_t, 5>{d.B, d.T, d.HV, d.Kf, d.V},
                       "B,T,HV,Kf,V");
}

// Refuses an output that shares memory with any of `inputs` (the family computes outputs while
// it still reads its inputs; only a final state may alias its initial state).
template <class Out, class... In>
void check_no_overlap(const ArgCheck& check, const char* out_name, const Out& out, const In&... inputs) {
  const bool overlap = (views_overlap(out, inputs) || ...);
  if (overlap) check.fail(out_name, "must not overlap an input view (it is written while the inputs are read)");
}

// The batch of a decode step over B token rows and a state pool of S rows: no cu_seqlens, slots
// and flags one per row (SequenceMap::make, which allocates nothing on valid input).
inline void check_step_batch(const ArgCheck& check, const SequenceBatch& batch, index_t B, index_t S) {
  if (batch.packed())
    check.fail("cu_seqlens", "must be empty for a decode step (one token per batch row; state_indices maps rows)");
  SequenceMap::make(check, batch, B, 1, true, S);
}

}  // namespace seqmix::detail::la
