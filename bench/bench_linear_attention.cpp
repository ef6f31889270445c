// Benchmarks of the linear-attention family: gated_linear_attention (channel and scalar gate),
// linear_attention and rwkv6; fast prefill (automatic choice, plus each algorithm forced, which
// is what detail::la::choose_algorithm was tuned from), decode step, and the reference as the
// baseline (names ending in /reference, at a shorter T where the loops are slow). Two threads.
// gated_linear_attention/{prefill,bf16dot/prefill}/h4-k768-t2048[/chunked|/recurrent]: the
// automatic choice and both forms forced at a state between choose_algorithm's thresholds, with
// fp32 and with bf16 dot products (no reference row).
//
// Counters (per second of wall time), independent of the algorithm that ran:
//   prefill  flops = 4 * B*T*HV*K*V     per token and state element: the update k v^T (2) and
//                                        the readout S^T q (2); decays and O(T*K) terms left out
//   step     bytes = 4 * (2*B*HV*K*V + B*(3*H*K + 2*HV*V))   state in and out, q/k/g, v, o
//
// feature_map/<kind>/<shape>-t<T>: the weighted maps count the product's 2 * B*T*H*M*K flops
// (positive_random M = 256, hedgehog M = K, as the papers size them); dpfp (nu = 3) counts the
// bytes of x read and phi written. /reference: the double loops at T = 512.
//
// Serving (issue 14): gated_linear_attention/varlen/... packs 8 sequences of 17..2048 tokens
// (4689 in all) into one call (/packed, states per sequence), beside one dense call over the same
// 4689 tokens (/dense) and the same sequences padded to 2048 (/padded); all three count the flops
// of the 4689 real tokens, so their GFLOP/s compare directly. gated_linear_attention_step/slots
// steps 64 sequences through a 96-row state pool with holes (/slots), beside a plain B=64 step
// (/dense); GB/s counts the same bytes for both.
// gated_linear_attention_step/k1024-v1024 and /k256-v2048: steps on wide states (4 heads, 16 MiB
// and 8 MiB, past L2: rows 4 and 8 KiB apart, the row walk of diagonal_decay/recurrent.hpp),
// GB/s as the step rows.
//
// <op>/bf16/prefill/<shape>-t<T>: the chunked prefill with bf16 dot-product GEMMs
// (bf16_compute = dot, issue 19 item 3; target >= 1.4x fp32), GFLOP/s as prefill with eff against
// the bf16 dot peak, and speedup_vs_f32: the fp32 chunked prefill over this one, from 3 calls of
// each taken alternately after the timed loop, medians of process CPU time (one run's ratio).
// <op>/prefill/<shape>-t<T>/bf16io: the same with q/k/v stored as bf16 (rows widened per chunk),
// speedup_vs_f32 over the fp32-input fp32 prefill, vs_f32_inputs over the fp32-input dot one.
// linear_attention/prefill/<shape>-t<T>/chunked_bf16io: the chunked linear_attention prefill on
// q/k/v stored as bf16 (LinearAttentionInputsOf<bf16>, fp32 products), speedup_vs_f32: the
// fp32-input chunked prefill's CPU time over this one's (st::alternated_cpu_medians).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <string>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/feature_maps/fast.hpp"
#include "seqmix/linear_attention/feature_maps/random.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
namespace st = seqmix::testing;


// Shapes of the algorithm-choice, phase and wide-step rows only (h4-k768: a state of 768 x 768
// floats, choose_algorithm's fp32 threshold since 2026-12-08 (bf16 dot products: 2^18); h4-k1024:
// beyond it; h8-k256: between the model shapes and those; k1024-v1024 and k256-v2048: the
// wide-state steps, 4 heads each).
const std::vector<st::LinearAttentionShape>& choice_shapes() {
  static const std::vector<st::LinearAttentionShape> shapes = {
      {"h8-k256", 8, 256, 256, 8},         {"h4-k768", 4, 768, 768, 4},       {"h4-k1024", 4, 1024, 1024, 4},
      {"k1024-v1024", 4, 1024, 1024, 4}, {"k256-v2048", 4, 256, 2048, 4}};
  return shapes;
}

const st::LinearAttentionShape& shape_named(const std::string& name) {
  for (const auto& s : st::linear_attention_shapes())
    if (s.name == name) return s;
  for (const auto& s : choice_shapes())
    if (s.name == name) return s;
  throw std::invalid_argument("bench_linear_attention: no shape named " + name);
}

double prefill_flops(index_t B, index_t T, const st::LinearAttentionShape& s) { return 4.0 * B * T * s.HV * s.K * s.V; }
double step_bytes(index_t B, const st::LinearAttentionShape& s) {
  return 4.0 * (2.0 * B * s.HV * s.K * s.V + B * (3.0 * s.H * s.K + 2.0 * s.HV * s.V));
}

// Inputs shared by all three ops: q (= r), k, v, a channel gate, a scalar gate, u.
struct Data {
  Tensor<float, 4> q, k, v, g, o, state;
  Tensor<float, 3> gs;
  Tensor<float, 2> u;
  Data(index_t B, index_t T, const st::LinearAttentionShape& s)
      : q(st::random_tensor<4>({B, T, s.H, s.K}, 1)), k(st::random_tensor<4>({B, T, s.H, s.K}, 2)),
        v(st::random_tensor<4>({B, T, s.HV, s.V}, 3)), g({B, T, s.H, s.K}), o({B, T, s.HV, s.V}),
        state({B, s.HV, s.K, s.V}), gs({B, T, s.H}), u(st::random_tensor<2>({s.H, s.K}, 6)) {
    // GLA's gates: logsigmoid(x) / 16 in the paper, i.e. mostly in [-0.3, 0].
    st::fill_log_gate(g.view(), 4, -0.3f, 0.f);
    st::fill_log_gate(gs.view(), 5, -0.3f, 0.f);
  }
  seqmix::GatedLinearAttentionInputs gla(GateKind gate) const {
    seqmix::GatedLinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    if (gate == GateKind::channel) in.g = g.view();
    if (gate == GateKind::scalar) in.g_scalar = gs.view();
    return in;
  }
  seqmix::Rwkv6Inputs rwkv() const { return {q.view(), k.view(), v.view(), g.view(), u.view(), {}}; }
};

enum class Form { fast, chunked, recurrent, reference };

LinearAttentionAlgorithm algorithm_of(Form form) {
  if (form == Form::chunked) return LinearAttentionAlgorithm::chunked;
  if (form == Form::recurrent) return LinearAttentionAlgorithm::recurrent;
  return LinearAttentionAlgorithm::automatic;
}

void gla_prefill(benchmark::State& state, std::string shape, index_t T, GateKind gate, Form form,
                 seqmix::Bf16Compute compute = seqmix::Bf16Compute::fp32) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  seqmix::GatedLinearAttentionOptions options;
  options.gate = gate;
  options.algorithm = algorithm_of(form);
  options.bf16_compute = compute;
  const seqmix::GatedLinearAttentionOutputs out{data.o.view(), data.state.view()};
  for (auto _ : state) {
    if (form == Form::reference)
      seqmix::reference::gated_linear_attention(data.gla(gate), out, options, st::two_thread_pool());
    else
      seqmix::gated_linear_attention(data.gla(gate), out, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gflops(state, prefill_flops(1, T, s));
}

void la_prefill(benchmark::State& state, std::string shape, index_t T, Form form) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  seqmix::LinearAttentionOptions options;
  options.algorithm = algorithm_of(form);
  const seqmix::LinearAttentionInputs in{data.q.view(), data.k.view(), data.v.view(), {}, {}};
  const seqmix::LinearAttentionOutputs out{data.o.view(), data.state.view(), {}};
  for (auto _ : state) {
    if (form == Form::reference)
      seqmix::reference::linear_attention(in, out, options, st::two_thread_pool());
    else
      seqmix::linear_attention(in, out, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gflops(state, prefill_flops(1, T, s));
}

void rwkv6_prefill(benchmark::State& state, std::string shape, index_t T, Form form) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  seqmix::Rwkv6Options options;
  options.algorithm = algorithm_of(form);
  const seqmix::Rwkv6Outputs out{data.o.view(), data.state.view()};
  for (auto _ : state) {
    if (form == Form::reference)
      seqmix::reference::rwkv6(data.rwkv(), out, options, st::two_thread_pool());
    else
      seqmix::rwkv6(data.rwkv(), out, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gflops(state, prefill_flops(1, T, s));
}

void gla_step(benchmark::State& state, std::string shape, GateKind gate) {
  const auto& s = shape_named(shape);
  Data data(1, 1, s);
  seqmix::GatedLinearAttentionOptions options;
  options.gate = gate;
  seqmix::GatedLinearAttentionStepInputs in;
  in.q = data.q.view().select(1, 0), in.k = data.k.view().select(1, 0), in.v = data.v.view().select(1, 0);
  if (gate == GateKind::channel) in.g = data.g.view().select(1, 0);
  if (gate == GateKind::scalar) in.g_scalar = data.gs.view().select(1, 0);
  const seqmix::GatedLinearAttentionStepOutputs out{data.o.view().select(1, 0), data.state.view()};
  for (auto _ : state) {
    seqmix::gated_linear_attention_step(in, out, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gbytes(state, step_bytes(1, s));
}

void rwkv6_step(benchmark::State& state, std::string shape) {
  const auto& s = shape_named(shape);
  Data data(1, 1, s);
  const seqmix::Rwkv6StepInputs in{data.q.view().select(1, 0), data.k.view().select(1, 0), data.v.view().select(1, 0),
                                   data.g.view().select(1, 0), data.u.view()};
  const seqmix::Rwkv6StepOutputs out{data.o.view().select(1, 0), data.state.view()};
  for (auto _ : state) {
    seqmix::rwkv6_step(in, out, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gbytes(state, step_bytes(1, s));
}

// The ragged batch of issue 14's serving benchmark.
const std::vector<index_t> kVarlenLengths = {17, 33, 100, 255, 512, 700, 1024, 2048};

enum class Layout { packed, dense, padded };

void gla_varlen(benchmark::State& state, std::string shape, Layout layout) {
  const auto& s = shape_named(shape);
  const index_t N = static_cast<index_t>(kVarlenLengths.size());
  const index_t total = std::accumulate(kVarlenLengths.begin(), kVarlenLengths.end(), index_t{0});
  const index_t longest = *std::max_element(kVarlenLengths.begin(), kVarlenLengths.end());
  const index_t B = layout == Layout::padded ? N : 1, T = layout == Layout::padded ? longest : total;
  const index_t rows = layout == Layout::dense ? 1 : N;
  Data data(B, T, s);
  Tensor<float, 4> final_state({rows, s.HV, s.K, s.V});
  std::vector<std::int64_t> cu{0};
  for (index_t len : kVarlenLengths) cu.push_back(cu.back() + len);
  seqmix::GatedLinearAttentionInputs in = data.gla(GateKind::channel);
  if (layout == Layout::packed) in.batch.cu_seqlens = cu;
  const seqmix::GatedLinearAttentionOutputs out{data.o.view(), final_state.view()};
  for (auto _ : state) {
    seqmix::gated_linear_attention(in, out, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gflops(state, prefill_flops(1, total, s));
}

// 64 sequences stepped in place in a pool of 96 rows (every third row a hole), or a plain B=64 step.
void gla_step_slots(benchmark::State& state, std::string shape, bool slotted) {
  const auto& s = shape_named(shape);
  const index_t B = 64, S = slotted ? 96 : B;
  Data data(B, 1, s);
  Tensor<float, 4> pool = st::random_tensor<4>({S, s.HV, s.K, s.V}, 7, -0.1f, 0.1f);
  std::vector<std::int32_t> slots;
  for (index_t row = 0; row < S && static_cast<index_t>(slots.size()) < B; ++row)
    if (row % 3 != 1) slots.push_back(static_cast<std::int32_t>(row));
  seqmix::GatedLinearAttentionStepInputs in;
  in.q = data.q.view().select(1, 0), in.k = data.k.view().select(1, 0), in.v = data.v.view().select(1, 0);
  in.g = data.g.view().select(1, 0);
  if (slotted) in.batch.state_indices = slots;
  const seqmix::GatedLinearAttentionStepOutputs out{data.o.view().select(1, 0), pool.view()};
  for (auto _ : state) {
    seqmix::gated_linear_attention_step(in, out, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  seqmix::testing::report_gbytes(state, step_bytes(B, s));
}

void feature_map_bench(benchmark::State& state, std::string shape, index_t T, seqmix::FeatureMapKind kind, bool reference) {
  const auto& s = shape_named(shape);
  const index_t M = kind == seqmix::FeatureMapKind::positive_random ? 256 : s.K;
  const Tensor<float, 4> x = st::random_tensor<4>({1, T, s.H, s.K}, 1);
  Tensor<float, 3> w({s.H, M, s.K});
  for (index_t h = 0; h < s.H; ++h) seqmix::performer_random_features(w.view()[h], 100 + static_cast<std::uint64_t>(h));
  seqmix::FeatureMapOptions options;
  options.kind = kind, options.dpfp_nu = 3;
  options.input_scale = kind == seqmix::FeatureMapKind::positive_random ? 1.f / std::sqrt(std::sqrt(float(s.K))) : 1.f;
  seqmix::FeatureMapInputs in{x.view()};
  if (kind != seqmix::FeatureMapKind::dpfp) in.weight = w.view();
  Tensor<float, 4> phi({1, T, s.H, seqmix::feature_map_dim(options, s.K, M)});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::feature_map(in, {phi.view()}, options);
    else
      seqmix::feature_map(in, {phi.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(phi.data());
  }
  if (kind == seqmix::FeatureMapKind::dpfp)
    seqmix::testing::report_gbytes(state, 4.0 * T * s.H * (s.K + phi.view().size(3)));
  else
    seqmix::testing::report_gflops(state, 2.0 * T * s.H * M * s.K);
}

// The chunked GLA prefill with bf16 dot products, and its speed-up over the fp32 chunked form.
void gla_prefill_bf16(benchmark::State& state, std::string shape, index_t T, GateKind gate) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  seqmix::GatedLinearAttentionOptions f32, dot;
  f32.gate = gate, f32.algorithm = LinearAttentionAlgorithm::chunked;
  dot = f32, dot.bf16_compute = seqmix::Bf16Compute::dot;
  const seqmix::GatedLinearAttentionOutputs out{data.o.view(), data.state.view()};
  for (auto _ : state) {
    seqmix::gated_linear_attention(data.gla(gate), out, dot, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::gated_linear_attention(data.gla(gate), out, f32, st::two_thread_pool()); },
                                            [&] { seqmix::gated_linear_attention(data.gla(gate), out, dot, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  seqmix::testing::report_gflops_bf16(state, prefill_flops(1, T, s));
}

// The chunked linear_attention prefill (identity map) with bf16 dot products, and its speed-up
// over the fp32 chunked form (as gla_prefill_bf16).
void la_prefill_bf16(benchmark::State& state, std::string shape, index_t T) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  seqmix::LinearAttentionOptions f32, dot;
  f32.algorithm = LinearAttentionAlgorithm::chunked;
  dot = f32, dot.bf16_compute = seqmix::Bf16Compute::dot;
  const seqmix::LinearAttentionInputs in{data.q.view(), data.k.view(), data.v.view(), {}, {}};
  const seqmix::LinearAttentionOutputs out{data.o.view(), data.state.view(), {}};
  for (auto _ : state) {
    seqmix::linear_attention(in, out, dot, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::linear_attention(in, out, f32, st::two_thread_pool()); },
                                            [&] { seqmix::linear_attention(in, out, dot, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  seqmix::testing::report_gflops_bf16(state, prefill_flops(1, T, s));
}

// The chunked GLA prefill on q/k/v stored as bf16 (GatedLinearAttentionInputsOf<bf16>: rows widened
// as each chunk loads them) with bf16 dot products. speedup_vs_f32: the fp32-input fp32 chunked
// prefill over this one; vs_f32_inputs: the fp32-input dot-product prefill over this one (what
// the 16-bit loads cost or save). Timed by st::alternated_cpu_medians after the timed loop.
void gla_prefill_bf16_io(benchmark::State& state, std::string shape, index_t T, GateKind gate) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  Tensor<seqmix::bf16, 4> q({1, T, s.H, s.K}), k({1, T, s.H, s.K}), v({1, T, s.HV, s.V});
  seqmix::convert(data.q.data(), q.data(), q.numel()), seqmix::convert(data.k.data(), k.data(), k.numel());
  seqmix::convert(data.v.data(), v.data(), v.numel());
  const seqmix::GatedLinearAttentionInputs in32 = data.gla(gate);
  seqmix::GatedLinearAttentionInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.g = in32.g, in.g_scalar = in32.g_scalar;
  seqmix::GatedLinearAttentionOptions f32, dot;
  f32.gate = gate, f32.algorithm = LinearAttentionAlgorithm::chunked;
  dot = f32, dot.bf16_compute = seqmix::Bf16Compute::dot;
  const seqmix::GatedLinearAttentionOutputs out{data.o.view(), data.state.view()};
  for (auto _ : state) {
    seqmix::gated_linear_attention(in, out, dot, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::gated_linear_attention(in32, out, f32, st::two_thread_pool()); },
                                            [&] { seqmix::gated_linear_attention(in32, out, dot, st::two_thread_pool()); },
                                            [&] { seqmix::gated_linear_attention(in, out, dot, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[2];
  state.counters["vs_f32_inputs"] = t[1] / t[2];
  seqmix::testing::report_gflops_bf16(state, prefill_flops(1, T, s));
}

// The chunked linear_attention prefill on bf16 q/k/v (rows widened per chunk, fp32 products) and
// the fp32-input chunked prefill's CPU time over it (st::alternated_cpu_medians).
void la_prefill_bf16_io(benchmark::State& state, std::string shape, index_t T) {
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  Tensor<seqmix::bf16, 4> q({1, T, s.H, s.K}), k({1, T, s.H, s.K}), v({1, T, s.HV, s.V});
  seqmix::convert(data.q.data(), q.data(), q.numel()), seqmix::convert(data.k.data(), k.data(), k.numel());
  seqmix::convert(data.v.data(), v.data(), v.numel());
  const seqmix::LinearAttentionInputs in32{data.q.view(), data.k.view(), data.v.view(), {}, {}};
  seqmix::LinearAttentionInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  seqmix::LinearAttentionOptions options;
  options.algorithm = LinearAttentionAlgorithm::chunked;
  const seqmix::LinearAttentionOutputs out{data.o.view(), data.state.view(), {}};
  for (auto _ : state) {
    seqmix::linear_attention(in, out, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::linear_attention(in32, out, options, st::two_thread_pool()); },
                                            [&] { seqmix::linear_attention(in, out, options, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  seqmix::testing::report_gflops(state, prefill_flops(1, T, s));
}

// <op>/phases/<shape>-t<T>: the fp32 chunked form's steps (diagonal_decay/chunked.hpp) timed one
// by one on the calling thread in thread CPU time, every head advancing chunk by chunk as in the
// prefill (chunk 64), beside one core's FMA rate timed the same way before and after each
// iteration (12 independent FMA chains, as machine_limits; the best of those runs). Thread
// CPU time because wall time on the shared machine is mostly waiting. Counters, averaged over the
// iterations: <step>_share, the step's part of the summed step time (load: features, values,
// cumulative gates; inter: what the chunk reads from the state; intra: scores, decays, mask,
// A V; update: state passing; store: output rows); <step>_eff for the three GEMM steps, their
// GEMM flops (inter and update 2 L K V per chunk, intra 2 L^2 (K + V): the full L x L products)
// per second over the FMA rate; eff_total, the prefill's counted flops (4 T K V per head, as the
// prefill rows) per summed second over the FMA rate; fma_gflops, the rate itself; clock_us, one
// clock read, subtracted from every timed step.
enum class PhaseOp { gla, simple_gla, ungated, rwkv6 };

void chunk_phases(benchmark::State& state, std::string shape, index_t T, PhaseOp op) {
  namespace la = seqmix::detail::la;
  const auto& s = shape_named(shape);
  Data data(1, T, s);
  const index_t C = 64, K = s.K, V = s.V;
  std::vector<la::HeadProblem> heads;
  for (index_t hv = 0; hv < s.HV; ++hv) {
    const index_t h = hv / (s.HV / s.H);
    la::HeadProblem p;
    p.q = seqmix::ConstView<float, 2>(data.q.view()[0].select(1, h));
    p.k = seqmix::ConstView<float, 2>(data.k.view()[0].select(1, h));
    p.v = seqmix::ConstView<float, 2>(data.v.view()[0].select(1, hv));
    p.o = data.o.view()[0].select(1, hv);
    p.scale = op == PhaseOp::rwkv6 ? 1.f : 1.f / std::sqrt(static_cast<float>(K));
    if (op == PhaseOp::gla || op == PhaseOp::rwkv6) p.g = data.g.view()[0].select(1, h);
    if (op == PhaseOp::simple_gla) {
      const auto g = data.gs.view()[0].select(1, h);
      p.g = seqmix::ConstView<float, 2>(g.data(), {T, K}, {g.stride(0), 0});
      p.scalar_gate = true;
    }
    if (op == PhaseOp::rwkv6) {
      p.u = data.u.view()[h];
      p.readout = la::Readout::exclusive_bonus;
    }
    heads.push_back(p);
  }
  la::ChunkWorkspace ws(C, K, K, V);
  std::vector<la::RowMatrix> S(heads.size(), la::RowMatrix(K, V));
  // One clock read costs about a microsecond here (a system call under the hypervisor), against
  // ~5-20 us per step at K = 64: each interval is charged that cost once, so it is subtracted.
  const double clock_cost = st::clock_read_seconds();
  double seconds[5] = {0, 0, 0, 0, 0}, fma = 0;
  for (auto _ : state) {
    fma = std::max(fma, st::limits::one_thread_fma_gflops(2000000));
    for (auto& x : S) x.setZero();
    for (index_t t0 = 0; t0 < T; t0 += C) {
      const index_t L = std::min(C, T - t0);
      for (std::size_t i = 0; i < heads.size(); ++i) {
        const la::HeadProblem& p = heads[i];
        double t[6];
        t[0] = st::thread_cpu_seconds();
        la::load_chunk(p, t0, L, ws);
        t[1] = st::thread_cpu_seconds();
        la::chunk_inter(p, L, S[i], ws);
        t[2] = st::thread_cpu_seconds();
        la::chunk_intra(p, L, ws);
        t[3] = st::thread_cpu_seconds();
        la::chunk_state_update(p, L, S[i], ws);
        t[4] = st::thread_cpu_seconds();
        la::store_chunk_outputs(p, t0, L, ws);
        t[5] = st::thread_cpu_seconds();
        for (int k = 0; k < 5; ++k) seconds[k] += std::max(0.0, t[k + 1] - t[k] - clock_cost);
      }
    }
    benchmark::DoNotOptimize(data.o.data());
    fma = std::max(fma, st::limits::one_thread_fma_gflops(2000000));
  }
  const double n = static_cast<double>(state.iterations()), HV = static_cast<double>(s.HV);
  const double total = seconds[0] + seconds[1] + seconds[2] + seconds[3] + seconds[4];
  const double state_flops = 2.0 * T * K * V * HV * n, intra_flops = 2.0 * T * C * (K + V) * HV * n;
  const char* names[5] = {"load", "inter", "intra", "update", "store"};
  for (int k = 0; k < 5; ++k) state.counters[std::string(names[k]) + "_share"] = seconds[k] / total;
  state.counters["inter_eff"] = state_flops / seconds[1] / 1e9 / fma;
  state.counters["intra_eff"] = intra_flops / seconds[2] / 1e9 / fma;
  state.counters["update_eff"] = state_flops / seconds[3] / 1e9 / fma;
  state.counters["eff_total"] = prefill_flops(1, T, s) * n / total / 1e9 / fma;
  state.counters["fma_gflops"] = fma;
  state.counters["clock_us"] = clock_cost * 1e6;
}

// Registers one prefill benchmark per form; the reference runs at t_reference tokens.
template <class Fn>
void register_prefill(const std::string& op, const std::string& shape, index_t T, index_t t_reference, Fn fn) {
  const std::string base = op + "/prefill/" + shape + "-t" + std::to_string(T);
  benchmark::RegisterBenchmark(base.c_str(), [=](benchmark::State& s) { fn(s, T, Form::fast); })->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark((base + "/chunked").c_str(), [=](benchmark::State& s) { fn(s, T, Form::chunked); })->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark((base + "/recurrent").c_str(), [=](benchmark::State& s) { fn(s, T, Form::recurrent); })->UseRealTime()->Unit(benchmark::kMillisecond);
  const std::string ref = op + "/prefill/" + shape + "-t" + std::to_string(t_reference) + "/reference";
  benchmark::RegisterBenchmark(ref.c_str(), [=](benchmark::State& s) { fn(s, t_reference, Form::reference); })->UseRealTime()->Unit(benchmark::kMillisecond);
}

// Registers the automatic choice and both forms forced, without a reference row (choose_algorithm's
// thresholds: linear_attention README, "Choosing the algorithm").
template <class Fn>
void register_forced(const std::string& base, Fn fn) {
  const std::pair<const char*, Form> forms[] = {{"", Form::fast}, {"/chunked", Form::chunked}, {"/recurrent", Form::recurrent}};
  for (const auto& [suffix, form] : forms)
    benchmark::RegisterBenchmark((base + suffix).c_str(), [=, form = form](benchmark::State& s) { fn(s, form); })
        ->UseRealTime()->Unit(benchmark::kMillisecond);
}

const int kRegistered = [] {
  for (std::string shape : {"gla-1.3b", "gla-k128"})
    register_prefill("gated_linear_attention", shape, 512, 512,
                     [shape](benchmark::State& s, index_t T, Form f) { gla_prefill(s, shape, T, GateKind::channel, f); });
  register_prefill("gated_linear_attention", "gla-1.3b", 8192, 512, [](benchmark::State& s, index_t T, Form f) {
    gla_prefill(s, "gla-1.3b", T, GateKind::channel, f);
  });
  register_prefill("simple_gla", "gla-1.3b", 8192, 512, [](benchmark::State& s, index_t T, Form f) {
    gla_prefill(s, "gla-1.3b", T, GateKind::scalar, f);
  });
  register_prefill("linear_attention", "gla-1.3b", 8192, 512,
                   [](benchmark::State& s, index_t T, Form f) { la_prefill(s, "gla-1.3b", T, f); });
  benchmark::RegisterBenchmark("linear_attention/prefill/gla-1.3b-t8192/chunked_bf16io",
                               [](benchmark::State& s) { la_prefill_bf16_io(s, "gla-1.3b", 8192); })
      ->UseRealTime()->Unit(benchmark::kMillisecond);
  register_prefill("rwkv6", "rwkv-h32-k64", 512, 512,
                   [](benchmark::State& s, index_t T, Form f) { rwkv6_prefill(s, "rwkv-h32-k64", T, f); });
  // A state of 768 x 768: recurrent with fp32 products, chunked with bf16 dot products.
  register_forced("gated_linear_attention/prefill/h4-k768-t2048",
                  [](benchmark::State& s, Form f) { gla_prefill(s, "h4-k768", 2048, GateKind::channel, f); });
  register_forced("gated_linear_attention/bf16dot/prefill/h4-k768-t2048", [](benchmark::State& s, Form f) {
    gla_prefill(s, "h4-k768", 2048, GateKind::channel, f, seqmix::Bf16Compute::dot);
  });
  // A state of 1024 x 1024, at the fp32 threshold: GLA beside rwkv6 (the same chunked steps).
  register_forced("gated_linear_attention/prefill/h4-k1024-t1024",
                  [](benchmark::State& s, Form f) { gla_prefill(s, "h4-k1024", 1024, GateKind::channel, f); });
  register_forced("rwkv6/prefill/h4-k1024-t1024",
                  [](benchmark::State& s, Form f) { rwkv6_prefill(s, "h4-k1024", 1024, f); });
  // bf16 dot products (issue 19 item 3; target >= 1.4x the fp32 chunked prefill).
  for (const auto& [op, gate] : {std::pair<const char*, GateKind>{"gated_linear_attention", GateKind::channel},
                                 std::pair<const char*, GateKind>{"simple_gla", GateKind::scalar}})
    for (const auto& [shape, T] : {std::pair<const char*, index_t>{"gla-k128", 4096}, {"gla-1.3b", 8192}})
      benchmark::RegisterBenchmark((std::string(op) + "/bf16/prefill/" + shape + "-t" + std::to_string(T)).c_str(),
                                   [shape = std::string(shape), T = T, gate = gate](benchmark::State& s) {
                                     gla_prefill_bf16(s, shape, T, gate);
                                   })
          ->UseRealTime()->Unit(benchmark::kMillisecond);
  for (const auto& [shape, T] : {std::pair<const char*, index_t>{"gla-k128", 4096}, {"gla-1.3b", 8192}})
    benchmark::RegisterBenchmark((std::string("linear_attention/bf16/prefill/") + shape + "-t" + std::to_string(T)).c_str(),
                                 [shape = std::string(shape), T = T](benchmark::State& s) { la_prefill_bf16(s, shape, T); })
        ->UseRealTime()->Unit(benchmark::kMillisecond);
  // bf16 storage of q/k/v as well (issue 19 item 3).
  for (const auto& [op, gate] : {std::pair<const char*, GateKind>{"gated_linear_attention", GateKind::channel},
                                 std::pair<const char*, GateKind>{"simple_gla", GateKind::scalar}})
    for (const auto& [shape, T] : {std::pair<const char*, index_t>{"gla-k128", 4096}, {"gla-1.3b", 8192}})
      benchmark::RegisterBenchmark((std::string(op) + "/prefill/" + shape + "-t" + std::to_string(T) + "/bf16io").c_str(),
                                   [shape = std::string(shape), T = T, gate = gate](benchmark::State& s) {
                                     gla_prefill_bf16_io(s, shape, T, gate);
                                   })
          ->UseRealTime()->Unit(benchmark::kMillisecond);
  // The chunked form's phase split (chunk_phases): docs/operators.md, GLA, quotes it.
  const std::pair<const char*, PhaseOp> phase_ops[] = {{"gated_linear_attention", PhaseOp::gla},
                                                       {"simple_gla", PhaseOp::simple_gla},
                                                       {"ungated_linear_attention", PhaseOp::ungated}};
  for (const auto& [name, op] : phase_ops)
    for (const auto& [shape, T] : {std::pair<const char*, index_t>{"gla-1.3b", 8192}, {"gla-k128", 4096}})
      benchmark::RegisterBenchmark((std::string(name) + "/phases/" + shape + "-t" + std::to_string(T)).c_str(),
                                   [shape = std::string(shape), T = T, op = op](benchmark::State& s) {
                                     chunk_phases(s, shape, T, op);
                                   })
          ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("rwkv6/phases/rwkv-h32-k64-t8192",
                               [](benchmark::State& s) { chunk_phases(s, "rwkv-h32-k64", 8192, PhaseOp::rwkv6); })
      ->Unit(benchmark::kMillisecond);
  // GLA beside rwkv6 at wider states, where the two chunked forms came apart (chunkgla).
  for (const auto& [name, op] : {std::pair<const char*, PhaseOp>{"gated_linear_attention", PhaseOp::gla},
                                 std::pair<const char*, PhaseOp>{"rwkv6", PhaseOp::rwkv6}})
    for (const char* shape : {"h8-k256", "h4-k1024"})
      benchmark::RegisterBenchmark((std::string(name) + "/phases/" + shape + "-t1024").c_str(),
                                   [shape = std::string(shape), op = op](benchmark::State& s) {
                                     chunk_phases(s, shape, 1024, op);
                                   })
          ->Unit(benchmark::kMillisecond);
  for (std::string shape : {"gla-1.3b", "gla-k128"})
    benchmark::RegisterBenchmark(("gated_linear_attention/step/" + shape).c_str(),
                                 [shape](benchmark::State& s) { gla_step(s, shape, GateKind::channel); })
        ->UseRealTime()->Unit(benchmark::kMicrosecond);
  for (std::string shape : {"k1024-v1024", "k256-v2048"})
    benchmark::RegisterBenchmark(("gated_linear_attention_step/" + shape).c_str(),
                                 [shape](benchmark::State& s) { gla_step(s, shape, GateKind::channel); })
        ->UseRealTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("simple_gla/step/gla-1.3b", [](benchmark::State& s) { gla_step(s, "gla-1.3b", GateKind::scalar); })
      ->UseRealTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("rwkv6/step/rwkv-h32-k64", [](benchmark::State& s) { rwkv6_step(s, "rwkv-h32-k64"); })
      ->UseRealTime()->Unit(benchmark::kMicrosecond);
  const std::pair<const char*, seqmix::FeatureMapKind> maps[] = {{"dpfp", seqmix::FeatureMapKind::dpfp},
                                                                   {"positive_random", seqmix::FeatureMapKind::positive_random},
                                                                   {"hedgehog", seqmix::FeatureMapKind::hedgehog}};
  for (const auto& [name, kind] : maps)
    for (const bool reference : {false, true}) {
      const index_t T = reference ? 512 : 4096;
      benchmark::RegisterBenchmark((std::string("feature_map/") + name + "/gla-1.3b-t" + std::to_string(T) + (reference ? "/reference" : "")).c_str(),
                                   [kind = kind, T, reference](benchmark::State& s) { feature_map_bench(s, "gla-1.3b", T, kind, reference); })
          ->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  const std::pair<const char*, Layout> layouts[] = {{"packed", Layout::packed}, {"dense", Layout::dense}, {"padded", Layout::padded}};
  for (const auto& [name, layout] : layouts)
    benchmark::RegisterBenchmark((std::string("gated_linear_attention/varlen/gla-1.3b-n8-t4689/") + name).c_str(),
                                 [layout = layout](benchmark::State& s) { gla_varlen(s, "gla-1.3b", layout); })
        ->UseRealTime()->Unit(benchmark::kMillisecond);
  for (const bool slotted : {true, false})
    benchmark::RegisterBenchmark(std::string("gated_linear_attention_step/slots/gla-1.3b-b64/").append(slotted ? "slots" : "dense").c_str(),
                                 [slotted](benchmark::State& s) { gla_step_slots(s, "gla-1.3b", slotted); })
        ->UseRealTime()->Unit(benchmark::kMicrosecond);
  return 0;
}();

}  // namespace
