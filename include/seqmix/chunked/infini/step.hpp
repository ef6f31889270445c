// Infini-attention decode step: the token is appended to the segment buffer at row position % S,
// the split-KV decode attention runs over the buffer's filled rows (all visible: they are this
// segment's past and the token itself), the memory is blended in, and when the token completes
// its segment the buffer is written into the memory and the buffer starts over.
#pragma once

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/chunked/infini/fast.hpp"

namespace seqmix {

/// Advances `state` by one token and writes that token's output. A contiguous state's memory is
/// updated in place; a strided one goes through B*Hkv*(K*V + K) floats of scratch.
inline void infini_attention_step(const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                                  InfiniAttentionState& state, const InfiniAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  using namespace detail::infini;
  const Dims d = validate_step("infini_attention_step", in, out, options, state);
  const index_t S = options.segment, filled = state.position % S;
  for (index_t b = 0; b < d.B; ++b) {
    copy(in.k[b], state.segment_k[b][filled]);
    copy(in.v[b], state.segment_v[b][filled]);
  }
  // [B,H,*] step tensors as [B,1,H,*] sequences.
  const auto seq = [](auto x) {
    using View = TensorView<typename decltype(x)::element_type, 4>;
    return View(x.data(), {x.size(0), 1, x.size(1), x.size(2)}, {x.stride(0), 0, x.stride(1), x.stride(2)});
  };
  AttentionInputs<float> ai;
  ai.q = seq(in.q);
  ai.k = state.segment_k.as_const().slice(1, 0, filled + 1);
  ai.v = state.segment_v.as_const().slice(1, 0, filled + 1);
  AttentionOptions ao;  // every filled row is visible
  ao.scale = local_scale(options, d.K);
  const TensorView<float, 4> o = seq(out.o);
  attention_step(ai, AttentionOutputs{o, {}}, ao, executor);

  const bool completes = filled + 1 == S;
  Memory memory(d, &state);
  if (!completes) {
    // Reading the memory costs H*(K*V + K) FMAs, well below a second thread hand-off (the decode
    // attention above already took one): run it here, with this thread's reused scratch.
    thread_local MemoryScratch w;
    w.fit(d.K, d.V);
    for (index_t task = 0; task < d.B * d.Hkv; ++task)
      mix_memory(ai.q, o, in.beta, task / d.Hkv, task % d.Hkv, d.group(), 0, 1, memory.m(task), memory.norm(task), w);
    ++state.position;
    return;
  }
  parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
    MemoryScratch w(d.K, d.V);
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.Hkv, hk = task % d.Hkv;
      mix_memory(ai.q, o, in.beta, b, hk, d.group(), 0, 1, memory.m(task), memory.norm(task), w);
      absorb_segment(state.segment_k, state.segment_v, b, hk, 0, S, options.update, memory.m(task),
                     memory.norm(task), w);
    }
  });
  memory.store(state);
  ++state.position;
}

}  // namespace seqmix
