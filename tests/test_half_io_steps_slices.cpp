// The 16-bit q/k/v storage of the wrappers around the GLA and delta-rule prefills
// (docs/operators.md section 4, half storage): gated_linear_attention_step / simple_gla_step
// after a 16-bit prefill, context_parallel_gated_linear_attention (its slices and corrections),
// context_parallel_gated_delta_rule and delta_rule_slice on bf16 / f16 q, k and v, each:
//  - against fp32 inputs holding the same rounded values through the same wrapper: the same
//    arithmetic after each row's load, so within 1e-6 normwise per (sequence, head);
//  - against fp32 inputs holding the unrounded originals: within the documented bound (2^-6 for
//    bf16 storage, 2^-9 for f16 storage), outputs and final states;
//  - against one 16-bit prefill over all the tokens (another summation order: 1e-5, 2e-4 for the
//    context-parallel composition as in test_context_parallel).
// Ragged shapes: odd K and V, GQA, B = 2, T not a multiple of the chunk or the slice count, an
// initial state. The streaming wrapper (run_in_segments) on 16-bit GLA and Gated DeltaNet inputs
// against one 16-bit call.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "seqmix/chunked/streaming.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/slice.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/slice.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// The shape every case here uses: B 2, T 83 (prime), q/k heads 2, value heads 4, K 33, V 20.
constexpr index_t kB = 2, kT = 83, kH = 2, kHV = 4, kK = 33, kV = 20;

template <class H>
double half_bound() {
  return std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
}

// Both gates of a GLA case and its initial state.
struct GlaGates {
  Tensor<float, 4> g{{kB, kT, kHV, kK}};
  Tensor<float, 3> gs{{kB, kT, kHV}};
  Tensor<float, 4> s0;
  explicit GlaGates(std::uint64_t seed) : s0(st::random_tensor<4>({kB, kHV, kK, kV}, seed + 2, -0.5f, 0.5f)) {
    st::fill_log_gate(g.view(), seed, -0.1f, 0.f);
    st::fill_log_gate(gs.view(), seed + 1, -0.1f, 0.f);
  }
};

// GLA over tokens [0, T1) as one prefill (chunked), then [T1, T) one step each (T1 = T: the
// prefill alone), q/k/v of storage type T.
template <class T>
st::HalfIoResult gla_prefill_then_steps(index_t T1, seqmix::GateKind gate, const Tensor<T, 4>& q, const Tensor<T, 4>& k,
                                        const Tensor<T, 4>& v, const GlaGates& x) {
  st::HalfIoResult r{Tensor<float, 4>({kB, kT, kHV, kV}), Tensor<float, 4>({kB, kHV, kK, kV})};
  seqmix::GatedLinearAttentionOptions options;
  options.gate = gate, options.chunk_size = 16, options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
  const bool channel = gate == seqmix::GateKind::channel;
  seqmix::GatedLinearAttentionInputsOf<T> in;
  in.q = q.cview().slice(1, 0, T1), in.k = k.cview().slice(1, 0, T1), in.v = v.cview().slice(1, 0, T1);
  if (channel) in.g = x.g.cview().slice(1, 0, T1);
  if (!channel) in.g_scalar = x.gs.cview().slice(1, 0, T1);
  in.initial_state = x.s0.cview();
  seqmix::gated_linear_attention(in, {r.o.view().slice(1, 0, T1), r.s.view()}, options);
  for (index_t t = T1; t < kT; ++t) {
    seqmix::GatedLinearAttentionStepInputsOf<T> step;
    step.q = q.cview().select(1, t), step.k = k.cview().select(1, t), step.v = v.cview().select(1, t);
    if (channel) step.g = x.g.cview().select(1, t);
    if (!channel) step.g_scalar = x.gs.cview().select(1, t);
    if (channel)
      seqmix::gated_linear_attention_step(step, {r.o.view().select(1, t), r.s.view()}, options);
    else
      seqmix::simple_gla_step(step, {r.o.view().select(1, t), r.s.view()}, options);
  }
  return r;
}

template <class H>
void gla_step_half_check(std::uint64_t seed) {
  const st::HalfStored<H> q({kB, kT, kH, kK}, seed), k({kB, kT, kH, kK}, seed + 1), v({kB, kT, kHV, kV}, seed + 2);
  const GlaGates x(seed + 3);
  const index_t T1 = 50;
  for (const seqmix::GateKind gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar}) {
    INFO((gate == seqmix::GateKind::channel ? "gated_linear_attention_step" : "simple_gla_step")
         << " after a prefill of 50 tokens, 33 steps, seed " << seed);
    const st::HalfIoResult half = gla_prefill_then_steps(T1, gate, q.half, k.half, v.half, x);
    st::check_half_io(half, gla_prefill_then_steps(T1, gate, q.rounded, k.rounded, v.rounded, x),
                      gla_prefill_then_steps(T1, gate, q.orig, k.orig, v.orig, x), half_bound<H>());
    const st::HalfIoResult one = gla_prefill_then_steps(kT, gate, q.half, k.half, v.half, x);
    CHECK(st::per_head_relative_error(half.o, one.o, 2) <= 1e-5);
    CHECK(st::per_head_relative_error(half.s, one.s, 1) <= 1e-5);
  }
}

// context_parallel_gated_linear_attention (slices > 0) or gated_linear_attention (slices 0) with
// the channel gate, q/k/v of storage type T, on the 2-thread pool.
template <class T>
st::HalfIoResult gla_context_parallel_run(index_t slices, const Tensor<T, 4>& q, const Tensor<T, 4>& k,
                                          const Tensor<T, 4>& v, const GlaGates& x) {
  st::HalfIoResult r{Tensor<float, 4>({kB, kT, kHV, kV}), Tensor<float, 4>({kB, kHV, kK, kV})};
  seqmix::GatedLinearAttentionInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.g = x.g.cview(), in.initial_state = x.s0.cview();
  seqmix::GatedLinearAttentionOptions options;
  options.chunk_size = 16;
  if (slices == 0)
    seqmix::gated_linear_attention(in, {r.o.view(), r.s.view()}, options, st::two_thread_pool());
  else
    seqmix::context_parallel_gated_linear_attention(in, {r.o.view(), r.s.view()}, options, st::two_thread_pool(),
                                                    slices);
  return r;
}

// A context-parallel form on 16-bit q / k / v (run(slices, q, k, v, args), slices 0: the one-call
// form) against the same form on the rounded and the original values, and against one call.
template <class H, class Args, class Run>
void context_parallel_half_check(const char* name, std::uint64_t seed, Run run) {
  const st::HalfStored<H> q({kB, kT, kH, kK}, seed), k({kB, kT, kH, kK}, seed + 1), v({kB, kT, kHV, kV}, seed + 2);
  const Args x(seed + 3);
  for (const index_t slices : {2, 3, 7}) {
    INFO(name << ", " << slices << " slices, seed " << seed);
    const st::HalfIoResult half = run(slices, q.half, k.half, v.half, x);
    st::check_half_io(half, run(slices, q.rounded, k.rounded, v.rounded, x), run(slices, q.orig, k.orig, v.orig, x),
                      half_bound<H>());
    const st::HalfIoResult one = run(0, q.half, k.half, v.half, x);
    CHECK(st::per_head_relative_error(half.o, one.o, 2) <= 2e-4);
    CHECK(st::per_head_relative_error(half.s, one.s, 1) <= 2e-4);
  }
}

// The fp32-only arguments of a Gated DeltaNet case.
struct DeltaArgs {
  Tensor<float, 3> beta, gs;
  Tensor<float, 4> s0;
  explicit DeltaArgs(std::uint64_t seed)
      : beta(st::random_tensor<3>({kB, kT, kHV}, seed, 0.f, 1.f)),
        gs({kB, kT, kHV}),
        s0(st::random_tensor<4>({kB, kHV, kK, kV}, seed + 2, -0.5f, 0.5f)) {
    st::fill_log_gate(gs.view(), seed + 1, -0.1f, 0.f);
  }
};

// context_parallel_gated_delta_rule (slices > 0) or gated_delta_rule (slices 0), scalar gate and
// l2-normalized q/k, q/k/v of storage type T, on the 2-thread pool.
template <class T>
st::HalfIoResult delta_context_parallel_run(index_t slices, const Tensor<T, 4>& q, const Tensor<T, 4>& k,
                                            const Tensor<T, 4>& v, const DeltaArgs& x) {
  st::HalfIoResult r{Tensor<float, 4>({kB, kT, kHV, kV}), Tensor<float, 4>({kB, kHV, kK, kV})};
  seqmix::GatedDeltaRuleInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = x.beta.cview(), in.g_scalar = x.gs.cview();
  in.initial_state = x.s0.cview();
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2, options.chunk_size = 16;
  if (slices == 0)
    seqmix::gated_delta_rule(in, {r.o.view(), r.s.view()}, options, st::two_thread_pool());
  else
    seqmix::context_parallel_gated_delta_rule(in, {r.o.view(), r.s.view()}, options, st::two_thread_pool(), slices);
  return r;
}

// delta_rule_slice's four results (outputs, local final state, readout, transition).
struct SliceResult {
  Tensor<float, 4> o, s, readout, transition;
  SliceResult() : o({kB, kT, kHV, kV}), s({kB, kHV, kK, kV}), readout({kB, kT, kHV, kK}), transition({kB, kHV, kK, kK}) {}
};

template <class T>
SliceResult delta_slice_run(const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                            const Tensor<float, 3>& beta) {
  SliceResult r;
  seqmix::DeltaRuleInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = beta.cview();
  seqmix::DeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2, options.chunk_size = 16;
  seqmix::delta_rule_slice(in, {r.o.view(), r.s.view()}, r.readout.view(), r.transition.view(), options);
  return r;
}

// GLA (channel gate) and Gated DeltaNet on bf16 q/k/v through run_in_segments (segment lengths
// 16, a multiple of the chunk, and 29, not one) against one call on the same inputs.
void streaming_half_check(std::uint64_t seed) {
  using seqmix::bf16;
  const st::HalfStored<bf16> q({kB, kT, kH, kK}, seed), k({kB, kT, kH, kK}, seed + 1), v({kB, kT, kHV, kV}, seed + 2);
  const GlaGates x(seed + 3);
  const DeltaArgs y(seed + 4);
  for (const index_t segment : {16, 29}) {
    INFO("run_in_segments, segments of " << segment << " tokens, seed " << seed);
    seqmix::GatedLinearAttentionInputsOf<bf16> gla;
    gla.q = q.half.cview(), gla.k = k.half.cview(), gla.v = v.half.cview(), gla.g = x.g.cview();
    gla.initial_state = x.s0.cview();
    seqmix::GatedLinearAttentionOptions gla_options;
    gla_options.chunk_size = 16, gla_options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
    st::HalfIoResult seg{Tensor<float, 4>({kB, kT, kHV, kV}), Tensor<float, 4>({kB, kHV, kK, kV})};
    st::HalfIoResult one{Tensor<float, 4>({kB, kT, kHV, kV}), Tensor<float, 4>({kB, kHV, kK, kV})};
    seqmix::run_in_segments(gla, {seg.o.view(), seg.s.view()}, gla_options, segment, st::two_thread_pool());
    seqmix::gated_linear_attention(gla, {one.o.view(), one.s.view()}, gla_options, st::two_thread_pool());
    CHECK(st::per_head_relative_error(seg.o, one.o, 2) <= 1e-5);
    CHECK(st::per_head_relative_error(seg.s, one.s, 1) <= 1e-5);
    seqmix::GatedDeltaRuleInputsOf<bf16> gdr;
    gdr.q = q.half.cview(), gdr.k = k.half.cview(), gdr.v = v.half.cview(), gdr.beta = y.beta.cview();
    gdr.g_scalar = y.gs.cview(), gdr.initial_state = y.s0.cview();
    seqmix::GatedDeltaRuleOptions gdr_options;
    gdr_options.qk_norm = seqmix::QkNorm::l2, gdr_options.chunk_size = 16;
    seqmix::run_in_segments(gdr, {seg.o.view(), seg.s.view()}, gdr_options, segment, st::two_thread_pool());
    seqmix::gated_delta_rule(gdr, {one.o.view(), one.s.view()}, gdr_options, st::two_thread_pool());
    CHECK(st::per_head_relative_error(seg.o, one.o, 2) <= 1e-5);
    CHECK(st::per_head_relative_error(seg.s, one.s, 1) <= 1e-5);
  }
}

}  // namespace

TEST_CASE("streaming gla and gated delta rule with bf16 q, k and v: segments equal one call",
          "[gla][gated_delta_rule][streaming][bf16]") {
  streaming_half_check(8500);
}

TEST_CASE("gla steps with bf16 or f16 q, k and v after a 16-bit prefill: equal to fp32 of the same values and to one prefill",
          "[gla][bf16][f16]") {
  gla_step_half_check<seqmix::bf16>(8100);
  gla_step_half_check<seqmix::f16>(8150);
}

TEST_CASE("context parallel gla with bf16 or f16 q, k and v: equal to fp32 of the same values and to one call",
          "[gla][context_parallel][bf16][f16]") {
  const auto gla = [](index_t slices, const auto& q, const auto& k, const auto& v, const GlaGates& x) {
    return gla_context_parallel_run(slices, q, k, v, x);
  };
  context_parallel_half_check<seqmix::bf16, GlaGates>("context_parallel_gated_linear_attention", 8200, gla);
  context_parallel_half_check<seqmix::f16, GlaGates>("context_parallel_gated_linear_attention", 8250, gla);
}

TEST_CASE("context parallel gated delta rule with bf16 or f16 q, k and v: equal to fp32 of the same values and to one call",
          "[gated_delta_rule][context_parallel][bf16][f16]") {
  const auto delta = [](index_t slices, const auto& q, const auto& k, const auto& v, const DeltaArgs& x) {
    return delta_context_parallel_run(slices, q, k, v, x);
  };
  context_parallel_half_check<seqmix::bf16, DeltaArgs>("context_parallel_gated_delta_rule", 8300, delta);
  context_parallel_half_check<seqmix::f16, DeltaArgs>("context_parallel_gated_delta_rule", 8350, delta);
}

TEST_CASE("delta_rule_slice with bf16 q, k and v: outputs, state, readout and transition equal to fp32 of the same values",
          "[delta_rule][bf16]") {
  const st::HalfStored<seqmix::bf16> q({kB, kT, kH, kK}, 8400), k({kB, kT, kH, kK}, 8401), v({kB, kT, kHV, kV}, 8402);
  const auto beta = st::random_tensor<3>({kB, kT, kHV}, 8403, 0.f, 1.f);
  const SliceResult half = delta_slice_run(q.half, k.half, v.half, beta);
  const SliceResult same = delta_slice_run(q.rounded, k.rounded, v.rounded, beta);
  CHECK(st::per_head_relative_error(half.o, same.o, 2) <= 1e-6);
  CHECK(st::per_head_relative_error(half.s, same.s, 1) <= 1e-6);
  CHECK(st::per_head_relative_error(half.readout, same.readout, 2) <= 1e-6);
  CHECK(st::per_head_relative_error(half.transition, same.transition, 1) <= 1e-6);
}
