// The fast prefill of linear_attention: feature maps are applied while each chunk (or token) is
// loaded, the normalizer z rides along as one more value column, and JRT's prefix is a prefill of
// the prefix followed by one read of its final state. Multi-threaded over (sequence, value head);
// dense or packed batches, states per sequence or in slots (see GatedLinearAttentionInputs).
#pragma once

#include <type_traits>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"

namespace seqmix {

namespace detail::la {

// The HeadProblem of value head hv of batch row b; E is q/k/v's storage type (InputRows widens it).
template <class E>
HeadProblem linear_attention_head(const ConstView<E, 4>& q, const ConstView<E, 4>& k, const ConstView<E, 4>& v,
                                  const TensorView<float, 4>& o, const LinearAttentionOptions& options, float scale,
                                  const Dims& d, index_t b, index_t hv) {
  HeadProblem p;
  const index_t h = hv / d.heads_per_qk();
  p.q = q[b].select(1, h);
  p.k = k[b].select(1, h);
  p.v = v[b].select(1, hv);
  p.o = o[b].select(1, hv);
  p.phi = options.feature_map;
  p.scale = scale;
  p.normalize = options.normalize;
  return p;
}

// The prefill on q/k/v stored as T (float, bf16, f16): the rows are widened as each chunk or
// token is loaded (InputRows), before the feature map; everything after that is the fp32 computation.
template <class T>
void linear_attention_prefill(const LinearAttentionInputsOf<T>& in, const LinearAttentionOutputs& out,
                              const LinearAttentionOptions& options, const Executor& executor) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("linear_attention", in, out);
    return linear_attention_prefill(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto [checked_dims, seqs] = validate_linear_attention("linear_attention", in, out, options);
  const auto d = checked_dims;  // lambdas below capture d: C++17 cannot capture a structured binding
  // Validated above; a static ArgCheck: building one per call allocates its name.
  static const ArgCheck scale_check("linear_attention");
  const float scale = check_scale(scale_check, options.scale, d.K);
  PrefillPlan plan{seqs, d.HV, d.K, d.Kf, d.V, options.normalize, options.algorithm, options.chunk_size,
                   options.prefix_len};
  if (out.token_states.has_value() || out.token_normalizers.has_value()) plan.algorithm = LinearAttentionAlgorithm::recurrent;
  if (plan.algorithm == LinearAttentionAlgorithm::automatic)
    // A JRT prefix runs whole heads (run_prefill splits no columns then).
    plan.algorithm = choose_algorithm(GateKind::none, seqs.max_tokens(), d.Kf,
                                      plan.prefix_len > 0 ? d.V : task_columns(seqs, d.HV, d.V, executor),
                                      options.chunk_size, options.bf16_compute == Bf16Compute::dot);
  const StateIo io{in.initial_state, in.initial_normalizer, out.final_state, out.final_normalizer, out.token_states,
                   out.token_normalizers};
  run_prefill(plan, io, executor, [&](index_t b, index_t hv) {
    HeadProblem p = linear_attention_head(in.q, in.k, in.v, out.o, options, scale, d, b, hv);
    p.bf16_dot = options.bf16_compute == Bf16Compute::dot;
    return p;
  });
}

}  // namespace detail::la

/// Linear attention prefill with a feature map, the optional normalizer and JRT's prefix
/// (reference::linear_attention is the definition). Final views may be their initial views (in
/// place). Threaded over (sequence, value head).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void linear_attention(const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                      const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::la::linear_attention_prefill<deferred_t<float, Deferred>>(in, out, options, executor);
}

/// The same on q/k/v stored as seqmix::bf16 or seqmix::f16 (states, normalizers and outputs fp32):
/// each chunk's (or token's) rows are widened as they are loaded, before the feature map, never
/// the whole tensor. docs/operators.md (section 4, half storage) gives the accuracy against fp32.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void linear_attention(const LinearAttentionInputsOf<H>& in, const LinearAttentionOutputs& out,
                      const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor()) {
  detail::la::linear_attention_prefill(in, out, options, executor);
}

}  // namespace seqmix
