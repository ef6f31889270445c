// seqmix::mom_step, the decode step: the B*E entries of the token run as one slotted step of the
// gated delta rule over the [B*M] rows of the memory states (state_indices = b*M + memory), the
// query repeated per entry; the output is the weighted sum of the entries' reads. Only the routed
// memories are read or written. It validates as a one-token prefill and allocates scratch for
// the repeated queries and the entries' reads (O(B E (K + V)) floats).
#pragma once

#include <vector>

#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/mom/fast.hpp"

namespace seqmix {

namespace detail {

// The view with a token axis of one inserted after the batch axis.
template <class T, std::size_t Rank>
TensorView<T, Rank + 1> with_token_axis(const TensorView<T, Rank>& x) {
  if (!x.has_value()) return {};
  std::array<index_t, Rank + 1> shape{}, strides{};
  shape[0] = x.size(0), strides[0] = x.stride(0);
  shape[1] = 1, strides[1] = x.stride(0);
  for (std::size_t r = 1; r < Rank; ++r) shape[r + 1] = x.size(r), strides[r + 1] = x.stride(r);
  return TensorView<T, Rank + 1>(x.data(), shape, strides);
}

}  // namespace detail

/// One decode token of Mixture-of-Memories (definition: reference.hpp): state [B,M,HV,K,V] is
/// updated in place for the routed memories only.
inline void mom_step(const MomStepInputs& in, const MomStepOutputs& out, const MomOptions& options = {},
                     const Executor& executor = serial_executor()) {
  const ArgCheck check("mom_step");
  MomInputs as_prefill;
  as_prefill.q = detail::with_token_axis(in.q), as_prefill.k = detail::with_token_axis(in.k);
  as_prefill.v = detail::with_token_axis(in.v), as_prefill.beta = detail::with_token_axis(in.beta);
  as_prefill.g_scalar = detail::with_token_axis(in.g_scalar), as_prefill.g = detail::with_token_axis(in.g);
  as_prefill.memory = detail::with_token_axis(in.memory), as_prefill.weight = detail::with_token_axis(in.weight);
  as_prefill.initial_state = out.state;
  check.shape("state", out.state, std::array<index_t, 5>{-1, -1, -1, -1, -1}, "B,M,HV,K,V");
  MomOutputs as_outputs{detail::with_token_axis(out.o), out.state};
  const detail::MomDims d = detail::validate_mom(check, as_prefill, as_outputs, options);
  check.that(out.state.has_value(), "state", "is required (the memories are updated in place)");
  const ConstView<float, 5> state_in(out.state);
  ConstView<float, 4> merged;
  check.that(detail::merge_memory_rows(state_in, &merged), "state",
             "must have its batch and memory dimensions mergeable (stride(0) == M * stride(1)) for the in-place step");
  const index_t rows = d.B * d.E;
  Tensor<float, 3> q({rows, d.HK, d.K}), k({rows, d.HK, d.K}), v({rows, d.HV, d.V}), o({rows, d.HV, d.V});
  Tensor<float, 2> beta({rows, d.HV}), g_scalar;
  Tensor<float, 3> g;
  const bool channel = options.memory.gate == DeltaGate::channel;
  if (channel)
    g = Tensor<float, 3>({rows, d.HV, d.K});
  else
    g_scalar = Tensor<float, 2>({rows, d.HV});
  std::vector<std::int64_t> slots(static_cast<std::size_t>(rows));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t e = 0; e < d.E; ++e) {
      const index_t r = b * d.E + e;
      slots[static_cast<std::size_t>(r)] = b * d.M + in.memory(b, e);
      detail::gather_rows(in.q[b], q.view()[r].data());
      detail::gather_rows(in.k[b][e], k.view()[r].data());
      detail::gather_rows(in.v[b][e], v.view()[r].data());
      detail::gather_rows(in.beta[b][e], beta.view()[r].data());
      if (channel)
        detail::gather_rows(in.g[b][e], g.view()[r].data());
      else
        detail::gather_rows(in.g_scalar[b][e], g_scalar.view()[r].data());
    }
  GatedDeltaRuleStepInputs step{q.view(), k.view(), v.view(), beta.view()};
  if (channel)
    step.g = g.view();
  else
    step.g_scalar = g_scalar.view();
  step.batch.state_indices = slots;
  const TensorView<float, 4> pool(out.state.data(), merged.shape(), merged.strides());
  gated_delta_rule_step(step, {o.view(), pool}, options.memory, executor);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hv = 0; hv < d.HV; ++hv)
      for (index_t c = 0; c < d.V; ++c) {
        double acc = 0;
        for (index_t e = 0; e < d.E; ++e) acc += double(in.weight(b, e)) * double(o.view()(b * d.E + e, hv, c));
        out.o(b, hv, c) = static_cast<float>(acc);
      }
}

}  // namespace seqmix
