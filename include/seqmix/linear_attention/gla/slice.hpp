// State passing across slices of one sequence for gated_linear_attention (and simple_gla,
// retention, ungated_linear_attention through options.gate): run a slice from a zero state with
// its transition, compose slices (compose_diagonal_slices, core/slice_state.hpp), and correct a
// slice's outputs and final state from its true initial state without rerunning it.
// diagonal_decay/slice.hpp has the derivation.
#pragma once

#include <vector>

#include <type_traits>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/diagonal_decay/slice.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"

namespace seqmix {

/// Runs gated_linear_attention on one slice of longer sequences from a zero state: out.o gets
/// the slice's outputs as if nothing came before it, out.final_state [B,HV,K,V] (required) its
/// local final state, and log_decay [B,HV,K] its transition, the sum of the slice's log-decays
/// per key channel (zeros for GateKind::none). A dense batch only (in.batch empty), no
/// in.initial_state, no token_states. Compose slices with compose_diagonal_slices and finish one
/// with gated_linear_attention_slice_correct.
/// q/k/v may be stored as float, seqmix::bf16 or seqmix::f16 (GatedLinearAttentionInputsOf; the
/// run widens each chunk's rows as it loads them).
template <class T>
void gated_linear_attention_slice(const GatedLinearAttentionInputsOf<T>& in, const GatedLinearAttentionOutputs& out,
                                  const TensorView<float, 3>& log_decay, const GatedLinearAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "gated_linear_attention_slice";
  const ArgCheck check(op);
  const Dims d = validate_gla(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, options.reverse, in.initial_state, out.final_state, out.token_states.has_value(), d,
                   false);
  check.shape("log_decay", log_decay, std::array<index_t, 3>{d.B, d.HV, d.K}, "B,HV,K");
  check_no_overlap(check, "log_decay", log_decay, in.q, in.k, in.v, in.g, in.g_scalar, out.o, out.final_state);
  gated_linear_attention(in, out, options, executor);
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_slice_log_decays(d, log_decay, executor, [&](index_t b, index_t hv) {
    return gla_head(in, out, options.gate, 1.f, d, b, hv, fixed_gates.empty() ? nullptr : fixed_gates.data() + hv);
  });
}

/// Finishes a slice run by gated_linear_attention_slice once its true initial state is known:
/// in.initial_state [B,HV,K,V] (required) is that state; out.o holds the slice's zero-state
/// outputs and gains what each token reads from it, one GEMM of the decayed queries per block of
/// tokens; out.final_state, when given, holds the local final state and becomes the true one
/// (it must not overlap initial_state). Reads q and the gate only; k and v are checked, not read.
/// The result equals one gated_linear_attention call over the whole sequence, to rounding.
/// 16-bit q rows are widened one at a time as the correction reads them.
template <class T>
void gated_linear_attention_slice_correct(const GatedLinearAttentionInputsOf<T>& in, const GatedLinearAttentionOutputs& out,
                                          const GatedLinearAttentionOptions& options = {},
                                          const Executor& executor = serial_executor()) {
  using namespace detail::la;
  const char* op = "gated_linear_attention_slice_correct";
  const ArgCheck check(op);
  const Dims d = validate_gla(op, in, out, options, executor).d;
  check_slice_call(check, in.batch, options.reverse, in.initial_state, out.final_state, out.token_states.has_value(), d,
                   true);
  const float scale = check_scale(check, options.scale, d.K);
  const std::vector<float> fixed_gates = retnet_gates(options.gate, d.HV);
  run_slice_correction(d, in.initial_state, out.final_state, executor, [&](index_t b, index_t hv) {
    return gla_head(in, out, options.gate, scale, d, b, hv, fixed_gates.empty() ? nullptr : fixed_gates.data() + hv);
  });
}

/// gated_linear_attention over long sequences split by position across the executor's threads:
/// each of `slices` pieces (0: one per thread; cut at T*i/slices) runs from a zero state at the
/// same time (gated_linear_attention_slice), the pieces' initial states follow by composing their
/// summaries in order, and each piece is corrected (gated_linear_attention_slice_correct), so the
/// result equals one gated_linear_attention call to rounding. Worth it when B * HV is too small
/// to keep the threads busy (one long sequence); scratch: two [B,HV,K,V] states per slice. A
/// dense batch only, no token_states; final_state may be the initial_state view. q/k/v may be
/// stored as float, seqmix::bf16 or seqmix::f16 (the pieces are views of them, not copies).
template <class T>
void context_parallel_gated_linear_attention(const GatedLinearAttentionInputsOf<T>& in,
                                             const GatedLinearAttentionOutputs& out,
                                             const GatedLinearAttentionOptions& options = {},
                                             const Executor& executor = serial_executor(), index_t slices = 0) {
  using namespace detail::la;
  const char* op = "context_parallel_gated_linear_attention";
  const ArgCheck check(op);
  const Dims d = validate_gla(op, in, out, options, executor).d;
  detail::check_context_parallel_call(check, in.batch, options.reverse, out.token_states.has_value());
  const index_t P = detail::context_slices(slices, d.T, executor);
  if (P <= 1) {
    gated_linear_attention(in, out, options, executor);
    return;
  }
  const auto piece = [&](index_t begin, index_t n) {
    GatedLinearAttentionInputsOf<T> s = in;
    s.q = in.q.slice(1, begin, n), s.k = in.k.slice(1, begin, n), s.v = in.v.slice(1, begin, n);
    if (in.g.has_value()) s.g = in.g.slice(1, begin, n);
    if (in.g_scalar.has_value()) s.g_scalar = in.g_scalar.slice(1, begin, n);
    s.initial_state = {};
    return s;
  };
  detail::context_parallel_states(
      d.T, P, executor, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}, std::array<index_t, 3>{d.B, d.HV, d.K},
      in.initial_state, out.final_state,
      [&](index_t begin, index_t n, const TensorView<float, 4>& local, const TensorView<float, 3>& decay) {
        gated_linear_attention_slice(piece(begin, n), {out.o.slice(1, begin, n), local}, decay, options);
      },
      [](const TensorView<float, 4>& start, const TensorView<float, 3>& decay, const TensorView<float, 4>& local,
         const TensorView<float, 4>& next) { compose_diagonal_slices<3, 4>({}, start, decay, local, {}, next); },
      [&](index_t, index_t begin, index_t n, const TensorView<float, 4>& start, const TensorView<float, 3>&,
          const TensorView<float, 4>& final_state) {
        GatedLinearAttentionInputsOf<T> s = piece(begin, n);
        s.initial_state = start;
        gated_linear_attention_slice_correct(s, {out.o.slice(1, begin, n), final_state}, options);
      });
}

/// gated_linear_attention_slice on fp32 q/k/v (the overload braced argument lists pick).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md);
// over a bool so that `gated_linear_attention_slice<float>` still names the form above.
template <bool Deferred = true>
void gated_linear_attention_slice(const GatedLinearAttentionInputs& in, const GatedLinearAttentionOutputs& out,
                                  const TensorView<float, 3>& log_decay,
                                  const GatedLinearAttentionOptions& options = {},
                                  const Executor& executor = serial_executor()) {
  gated_linear_attention_slice<deferred_t<float, std::bool_constant<Deferred>>>(in, out, log_decay, options, executor);
}

/// gated_linear_attention_slice_correct on fp32 q/k/v (the overload braced argument lists pick).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md);
// over a bool so that `gated_linear_attention_slice_correct<float>` still names the form above.
template <bool Deferred = true>
void gated_linear_attention_slice_correct(const GatedLinearAttentionInputs& in,
                                          const GatedLinearAttentionOutputs& out,
                                          const GatedLinearAttentionOptions& options = {},
                                          const Executor& executor = serial_executor()) {
  gated_linear_attention_slice_correct<deferred_t<float, std::bool_constant<Deferred>>>(in, out, options, executor);
}

/// context_parallel_gated_linear_attention on fp32 q/k/v (the overload braced argument lists pick).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md);
// over a bool so that `context_parallel_gated_linear_attention<float>` still names the form above.
template <bool Deferred = true>
void context_parallel_gated_linear_attention(const GatedLinearAttentionInputs& in,
                                             const GatedLinearAttentionOutputs& out,
                                             const GatedLinearAttentionOptions& options = {},
                                             const Executor& executor = serial_executor(), index_t slices = 0) {
  using Float = deferred_t<float, std::bool_constant<Deferred>>;
  context_parallel_gated_linear_attention<Float>(in, out, options, executor, slices);
}

}  // namespace seqmix
