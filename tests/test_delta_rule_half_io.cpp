// gated_delta_rule (scalar gate: Gated DeltaNet; channel gate: KDA) and delta_rule on q/k/v stored
// as bf16 or f16 (GatedDeltaRuleInputsOf / DeltaRuleInputsOf) against fp32 inputs
// (docs/operators.md section 4, half storage):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs and final states within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, value head) normwise relative
//    error of outputs and final states within the documented bound (2^-6 for bf16 storage, also
//    with bf16 dot products; 2^-9 for f16 storage with fp32 products).
// The steps (gated_delta_rule_step, delta_rule_step) the same way over a run of decode tokens.
// Ragged shapes: T = 1, 65 and 1000 (default scale), chunk sizes not dividing T, odd K and V, GQA,
// B > 1, an initial state, packed sequences; chunked and recurrent forms; the reference. On a
// target without AVX512-BF16, Bf16Compute::dot falls back to fp32 and the same bounds hold.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

std::vector<st::HalfIoCase> delta_half_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 1, 16, 16, 64, false},    // T = 1
      {2, 65, 2, 4, 33, 20, 64, false},   // one full chunk and one token, odd K, GQA, B = 2
      {1, 129, 1, 2, 24, 45, 32, false},  // several chunks, ragged last one, odd V
      {1, 90, 2, 2, 24, 32, 16, true},    // packed sequences
  };
  if (!st::small_test_scale()) cases.push_back({1, 1000, 1, 2, 64, 64, 48, false});  // 48 does not divide 1000
  return cases;
}

// Which operator and gate a run uses.
enum class DeltaOp { gated_scalar, gated_channel, ungated };
enum class DeltaEntry { fast, reference };

// The fp32-only arguments every run of one case shares.
struct DeltaShared {
  seqmix::ConstView<float, 3> beta, g_scalar;
  seqmix::ConstView<float, 4> g, initial_state;
  seqmix::SequenceBatch batch;
};

template <class T>
st::HalfIoResult delta_half_run(DeltaOp op, DeltaEntry e, const st::HalfIoCase& c, const Tensor<T, 4>& q,
                               const Tensor<T, 4>& k, const Tensor<T, 4>& v, const DeltaShared& shared,
                               const seqmix::GatedDeltaRuleOptions& options, const seqmix::Executor& executor) {
  const index_t N = shared.initial_state.size(0), B = q.size(0);
  st::HalfIoResult r{Tensor<float, 4>({B, c.T, c.HV, c.V}), Tensor<float, 4>({N, c.HV, c.K, c.V})};
  if (op == DeltaOp::ungated) {
    seqmix::DeltaRuleInputsOf<T> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = shared.beta;
    in.initial_state = shared.initial_state, in.batch = shared.batch;
    seqmix::DeltaRuleOptions o;
    o.qk_norm = options.qk_norm, o.chunk_size = options.chunk_size, o.algorithm = options.algorithm;
    o.bf16_compute = options.bf16_compute;
    const seqmix::DeltaRuleOutputs out{r.o.view(), r.s.view()};
    if (e == DeltaEntry::reference)
      seqmix::reference::delta_rule(in, out, o, executor);
    else
      seqmix::delta_rule(in, out, o, executor);
    return r;
  }
  seqmix::GatedDeltaRuleInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = shared.beta;
  if (op == DeltaOp::gated_scalar) in.g_scalar = shared.g_scalar;
  if (op == DeltaOp::gated_channel) in.g = shared.g;
  in.initial_state = shared.initial_state, in.batch = shared.batch;
  seqmix::GatedDeltaRuleOptions o = options;
  o.gate = op == DeltaOp::gated_channel ? seqmix::DeltaGate::channel : seqmix::DeltaGate::scalar;
  const seqmix::GatedDeltaRuleOutputs out{r.o.view(), r.s.view()};
  if (e == DeltaEntry::reference)
    seqmix::reference::gated_delta_rule(in, out, o, executor);
  else
    seqmix::gated_delta_rule(in, out, o, executor);
  return r;
}

const char* delta_op_name(DeltaOp op) {
  switch (op) {
    case DeltaOp::gated_scalar: return "gated_delta_rule scalar";
    case DeltaOp::gated_channel: return "gated_delta_rule channel";
    case DeltaOp::ungated: break;
  }
  return "delta_rule";
}

template <class H>
void delta_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  using seqmix::DeltaAlgorithm;
  const std::vector<std::int32_t> cu = st::half_io_cu_seqlens(c.T);
  const index_t N = c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B, B = c.packed ? 1 : c.B;
  const st::HalfStored<H> q({B, c.T, c.H, c.K}, seed), k({B, c.T, c.H, c.K}, seed + 1),
      v({B, c.T, c.HV, c.V}, seed + 2);
  Tensor<float, 4> g({B, c.T, c.HV, c.K});
  Tensor<float, 3> gs({B, c.T, c.HV});
  st::fill_log_gate(g.view(), seed + 3, -0.1f, 0.f);
  st::fill_log_gate(gs.view(), seed + 4, -0.1f, 0.f);
  const auto beta = st::random_tensor<3>({B, c.T, c.HV}, seed + 5, 0.f, 1.f);
  const auto s0 = st::random_tensor<4>({N, c.HV, c.K, c.V}, seed + 6, -0.5f, 0.5f);
  DeltaShared shared{beta.cview(), gs.cview(), g.cview(), s0.cview(), {}};
  if (c.packed) shared.batch.cu_seqlens = cu;
  const bool bf16 = std::is_same_v<H, seqmix::bf16>;
  const double bound = bf16 ? 1.0 / 64 : 1.0 / 512;
  for (const DeltaOp op : {DeltaOp::gated_scalar, DeltaOp::gated_channel, DeltaOp::ungated})
    for (const DeltaAlgorithm algorithm : {DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent})
      for (const seqmix::Bf16Compute compute : {seqmix::Bf16Compute::fp32, seqmix::Bf16Compute::dot})
        for (const DeltaEntry e : {DeltaEntry::fast, DeltaEntry::reference}) {
          if (e == DeltaEntry::reference && (algorithm != DeltaAlgorithm::chunked || compute != seqmix::Bf16Compute::fp32))
            continue;  // the reference has no algorithm or compute choice
          if (compute == seqmix::Bf16Compute::dot && (!bf16 || algorithm != DeltaAlgorithm::chunked))
            continue;  // dot products: bf16 storage, chunked form only
          seqmix::GatedDeltaRuleOptions options;
          options.qk_norm = seqmix::QkNorm::l2;  // as the models run it: keeps beta ||k||^2 <= 1
          options.chunk_size = c.chunk, options.algorithm = algorithm, options.bf16_compute = compute;
          INFO(c.describe() << " " << delta_op_name(op)
                            << (algorithm == DeltaAlgorithm::chunked ? " chunked" : " recurrent")
                            << (compute == seqmix::Bf16Compute::dot ? " dot" : " fp32")
                            << (e == DeltaEntry::reference ? " reference" : " fast") << " seed " << seed);
          st::check_half_io(delta_half_run(op, e, c, q.half, k.half, v.half, shared, options, executor),
                            delta_half_run(op, e, c, q.rounded, k.rounded, v.rounded, shared, options, executor),
                            delta_half_run(op, e, c, q.orig, k.orig, v.orig, shared, options, executor), bound);
        }
}

// Decode tokens [0, T) of one case through the step with q/k/v of storage type T; the state
// starts from s0 and is carried from token to token. Returns outputs [B,T,HV,V] and the state.
template <class T>
st::HalfIoResult delta_step_run(DeltaOp op, const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                               const Tensor<float, 3>& beta, const Tensor<float, 3>& gs, const Tensor<float, 4>& g,
                               const Tensor<float, 4>& s0) {
  const index_t B = q.size(0), T_ = q.size(1), HV = v.size(2), V = v.size(3);
  st::HalfIoResult r{Tensor<float, 4>({B, T_, HV, V}), Tensor<float, 4>(s0.shape())};
  std::copy(s0.data(), s0.data() + s0.numel(), r.s.data());
  for (index_t t = 0; t < T_; ++t) {
    const seqmix::TensorView<float, 3> o = r.o.view().select(1, t);
    const auto qt = q.cview().select(1, t), kt = k.cview().select(1, t), vt = v.cview().select(1, t);
    const auto bt = beta.cview().select(1, t);
    if (op == DeltaOp::ungated) {
      seqmix::DeltaRuleOptions options;
      options.qk_norm = seqmix::QkNorm::l2;
      seqmix::delta_rule_step(seqmix::DeltaRuleStepInputsOf<T>{qt, kt, vt, bt}, {o, r.s.view()}, options);
      continue;
    }
    seqmix::GatedDeltaRuleStepInputsOf<T> in{qt, kt, vt, bt};
    seqmix::GatedDeltaRuleOptions options;
    options.qk_norm = seqmix::QkNorm::l2;
    if (op == DeltaOp::gated_channel) {
      options.gate = seqmix::DeltaGate::channel;
      in.g = g.cview().select(1, t);
    } else {
      in.g_scalar = gs.cview().select(1, t);
    }
    seqmix::gated_delta_rule_step(in, {o, r.s.view()}, options);
  }
  return r;
}

template <class H>
void delta_step_half_check(std::uint64_t seed) {
  const index_t B = 3, T = 40, HK = 2, HV = 4, K = 33, V = 20;
  const st::HalfStored<H> q({B, T, HK, K}, seed), k({B, T, HK, K}, seed + 1), v({B, T, HV, V}, seed + 2);
  Tensor<float, 4> g({B, T, HV, K});
  Tensor<float, 3> gs({B, T, HV});
  st::fill_log_gate(g.view(), seed + 3, -0.1f, 0.f);
  st::fill_log_gate(gs.view(), seed + 4, -0.1f, 0.f);
  const auto beta = st::random_tensor<3>({B, T, HV}, seed + 5, 0.f, 1.f);
  const auto s0 = st::random_tensor<4>({B, HV, K, V}, seed + 6, -0.5f, 0.5f);
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  for (const DeltaOp op : {DeltaOp::gated_scalar, DeltaOp::gated_channel, DeltaOp::ungated}) {
    INFO(delta_op_name(op) << " step, B=3 T=40 HK=2 HV=4 K=33 V=20 seed " << seed);
    st::check_half_io(delta_step_run(op, q.half, k.half, v.half, beta, gs, g, s0),
                      delta_step_run(op, q.rounded, k.rounded, v.rounded, beta, gs, g, s0),
                      delta_step_run(op, q.orig, k.orig, v.orig, beta, gs, g, s0), bound);
  }
}

}  // namespace

TEST_CASE("delta rule steps with bf16 or f16 q, k and v: equal to fp32 inputs of the same values, within the bound",
          "[gated_delta_rule][delta_rule][bf16][f16]") {
  delta_step_half_check<seqmix::bf16>(6900);
  delta_step_half_check<seqmix::f16>(6950);
  // A bad shape is refused before the state or the output is touched.
  Tensor<seqmix::bf16, 3> q({1, 2, 8}), k({1, 2, 8}), v({1, 3, 8});  // HV = 3 not a multiple of HK = 2
  Tensor<float, 2> beta({1, 3}), gs({1, 3});
  Tensor<float, 3> o({1, 3, 8});
  Tensor<float, 4> state({1, 3, 8, 8});
  std::fill(o.data(), o.data() + o.numel(), 3.f), std::fill(state.data(), state.data() + state.numel(), 3.f);
  seqmix::GatedDeltaRuleStepInputsOf<seqmix::bf16> in{q.cview(), k.cview(), v.cview(), beta.cview(), gs.cview()};
  CHECK_THROWS_AS(seqmix::gated_delta_rule_step(in, {o.view(), state.view()}), seqmix::ShapeError);
  const seqmix::DeltaRuleStepInputsOf<seqmix::bf16> un{q.cview(), k.cview(), v.cview(), beta.cview()};
  CHECK_THROWS_AS(seqmix::delta_rule_step(un, {o.view(), state.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
  REQUIRE(std::all_of(state.data(), state.data() + state.numel(), [](float x) { return x == 3.f; }));
}

TEST_CASE("delta rules with bf16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[gated_delta_rule][delta_rule][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 6100;
  for (const st::HalfIoCase& c : delta_half_cases()) delta_half_check<seqmix::bf16>(c, seed += 10, pool);
}

TEST_CASE("delta rules with f16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[gated_delta_rule][delta_rule][f16]") {
  std::uint64_t seed = 6500;
  for (const st::HalfIoCase& c : delta_half_cases()) delta_half_check<seqmix::f16>(c, seed += 10, seqmix::serial_executor());
}

TEST_CASE("delta rules with bf16 q, k and v: reverse takes them, a bad shape is refused before any write",
          "[gated_delta_rule][delta_rule][bf16]") {
  Tensor<seqmix::bf16, 4> q({1, 9, 2, 8}), k({1, 9, 2, 8}), v({1, 9, 3, 8});  // HV = 3 not a multiple of H = 2
  Tensor<float, 3> beta({1, 9, 3}), gs({1, 9, 3});
  st::fill_uniform(beta.view(), 76, 0.f, 1.f);
  st::fill_log_gate(gs.view(), 77, -0.1f, 0.f);
  Tensor<float, 4> o({1, 9, 3, 8});
  std::fill(o.data(), o.data() + o.numel(), 3.f);
  seqmix::GatedDeltaRuleInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = beta.cview(), in.g_scalar = gs.cview();
  seqmix::DeltaRuleInputsOf<seqmix::bf16> un;
  un.q = q.cview(), un.k = k.cview(), un.v = v.cview(), un.beta = beta.cview();
  CHECK_THROWS_AS(seqmix::gated_delta_rule(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::gated_delta_rule(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::delta_rule(un, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::delta_rule(un, {o.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
  // A good shape, reversed: bf16 storage equals fp32 inputs holding the same values.
  const st::HalfStored<seqmix::bf16> q2({1, 9, 2, 8}, 78), k2({1, 9, 2, 8}, 79), v2({1, 9, 2, 8}, 80);
  Tensor<float, 4> o16({1, 9, 2, 8}), o32({1, 9, 2, 8});
  Tensor<float, 3> beta2({1, 9, 2}), gs2({1, 9, 2});
  st::fill_uniform(beta2.view(), 81, 0.f, 1.f);
  st::fill_log_gate(gs2.view(), 82, -0.1f, 0.f);
  in.q = q2.half.cview(), in.k = k2.half.cview(), in.v = v2.half.cview(), in.beta = beta2.cview(), in.g_scalar = gs2.cview();
  seqmix::GatedDeltaRuleInputs in32;
  in32.q = q2.rounded.cview(), in32.k = k2.rounded.cview(), in32.v = v2.rounded.cview(), in32.beta = beta2.cview(), in32.g_scalar = gs2.cview();
  seqmix::GatedDeltaRuleOptions reverse;
  reverse.reverse = true, reverse.qk_norm = seqmix::QkNorm::l2;
  seqmix::gated_delta_rule(in, {o16.view()}, reverse);
  seqmix::gated_delta_rule(in32, {o32.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  seqmix::reference::gated_delta_rule(in, {o16.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-5);
  seqmix::DeltaRuleOptions ureverse;
  ureverse.reverse = true, ureverse.qk_norm = seqmix::QkNorm::l2;
  un.q = q2.half.cview(), un.k = k2.half.cview(), un.v = v2.half.cview(), un.beta = beta2.cview();
  seqmix::DeltaRuleInputs un32;
  un32.q = q2.rounded.cview(), un32.k = k2.rounded.cview(), un32.v = v2.rounded.cview(), un32.beta = beta2.cview();
  seqmix::delta_rule(un, {o16.view()}, ureverse);
  seqmix::delta_rule(un32, {o32.view()}, ureverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  seqmix::reference::delta_rule(un, {o16.view()}, ureverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-5);
}
