// Infini-attention decode step: the token is appended to the segment buffer at row position % S,
// the split-KV decode attention runs over the buffer's filled rows (all visible: they are this
// segment's past and the token itself), the memory is blended in, and when the token completes
// its segment the buffer is written into the memory and the buffer starts over.
#pragma once

#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/chunked/infini/fast.hpp"

namespace seqmix {

namespace detail::infini {

// One token of every row of a validated dense call (state rows = batch rows, one position).
inline void step_rows(const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                      InfiniAttentionState& state, const InfiniAttentionOptions& options, const Dims& d,
                      const Executor& executor) {
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
  // One scratch per task, owned by the calling thread and sized here, so that no pool worker
  // grows one of its own during a step (steps allocate nothing after the caller's first).
  thread_local std::vector<MemoryScratch> per_task;
  if (per_task.size() < static_cast<std::size_t>(d.B * d.Hkv)) per_task.resize(static_cast<std::size_t>(d.B * d.Hkv));
  for (index_t task = 0; task < d.B * d.Hkv; ++task) {
    per_task[static_cast<std::size_t>(task)].fit(d.K, d.V);
    per_task[static_cast<std::size_t>(task)].update.resize(static_cast<std::size_t>(S * d.V));
  }
  MemoryScratch* const scratch = per_task.data();  // the caller's, not a worker's thread_local
  parallel_for(executor, d.B * d.Hkv, 1, [&, scratch](index_t begin, index_t end) {
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.Hkv, hk = task % d.Hkv;
      MemoryScratch& w = scratch[task];
      mix_memory(ai.q, o, in.beta, b, hk, d.group(), 0, 1, memory.m(task), memory.norm(task), w);
      absorb_segment(state.segment_k, state.segment_v, b, hk, 0, S, options.update, memory.m(task),
                     memory.norm(task), w);
    }
  });
  memory.store(state);
  ++state.position;
}

// A serving step: row b advances state row slots[b] (pool [S,...]) from its own position
// state.positions[row]; validated as a whole before any write, then one dense step per row (a
// fresh row's memory cleared first). No allocation on a valid call after warm-up.
inline void serve_step(const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                       InfiniAttentionState& state, const InfiniAttentionOptions& options, const Executor& executor) {
  static const ArgCheck check("infini_attention_step");  // a static: building an ArgCheck allocates its name
  const Dims d = step_dims(check, in, out, options);
  const index_t B = d.B, S = state.memory.size(0);
  Dims pool = d;
  pool.B = S;
  check_state_shapes(check, state, options, pool);
  detail::serving::check_position_pool(check, state.positions, S);
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, B, S);
  detail::serving::check_start_positions(check, state.positions, rows, B);
  const auto refuse_overlap = [&](const char* name, const ConstView<float, 3>& x) {
    check.no_overlap("o", out.o, name, x).no_overlap("state.memory", state.memory, name, x);
    check.no_overlap("state.normalizer", state.normalizer, name, x);
    check.no_overlap("state.segment_k", state.segment_k, name, x).no_overlap("state.segment_v", state.segment_v, name, x);
  };
  refuse_overlap("q", in.q), refuse_overlap("k", in.k), refuse_overlap("v", in.v);
  check.no_overlap("o", out.o, "state.memory", state.memory).no_overlap("o", out.o, "state.normalizer", state.normalizer);
  check.no_overlap("o", out.o, "state.segment_k", state.segment_k).no_overlap("o", out.o, "state.segment_v", state.segment_v);
  Dims one_row = d;
  one_row.B = 1;
  detail::serving::run_step_rows(check, rows, B, state, state_row, [&](index_t b, InfiniAttentionState& one) {
    const InfiniAttentionStepInputs in1{in.q.slice(0, b, 1), in.k.slice(0, b, 1), in.v.slice(0, b, 1), in.beta, {}};
    step_rows(in1, InfiniAttentionStepOutputs{out.o.slice(0, b, 1)}, one, options, one_row, serial_executor());
  }, executor);
}

}  // namespace detail::infini

/// Advances `state` by one token and writes that token's output. A contiguous state's memory is
/// updated in place; a strided one goes through B*Hkv*(K*V + K) floats of scratch.
/// Serving (in.batch, or state.positions given): state rows are pool slots at their own positions
/// (docs/operators.md section 9.2); batched decode of sequences at different positions is one call.
inline void infini_attention_step(const InfiniAttentionStepInputs& in, const InfiniAttentionStepOutputs& out,
                                  InfiniAttentionState& state, const InfiniAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  using namespace detail::infini;
  if (detail::serving::uses_positions(in.batch, state.positions.has_value())) {
    serve_step(in, out, state, options, executor);
    return;
  }
  step_rows(in, out, state, options, validate_step("infini_attention_step", in, out, options, state), executor);
}

}  // namespace seqmix
