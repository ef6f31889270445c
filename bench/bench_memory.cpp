// Product-key memory benchmarks, 2 threads.
//
//   pkm_<dtype>/T4096_N1M_Dv512_H4_k32_Dk512   product_key_memory over 4096 tokens, a value table
//                    of N = 1024^2 = 1M rows of 512 (int8: 0.5 GiB, fp16/bf16: 1 GiB, fp32: 2 GiB), 4 heads,
//                    top-32 per head, Dk = 512 (two sub-key tables of 1024 x 256 per head)
//   pkm_reference/T64_N4096_Dv128_H2_k8_Dk64     reference (exhaustive search) beside
//   pkm_f32/T64_N4096_Dv128_H2_k8_Dk64           the fast form on the same small shape
// GB/s = value bytes gathered (T * H * k * Dv * sizeof(value)) / time: the part that streams from
// memory (random rows of a table far larger than the cache); GFLOP/s = the sub-key scoring,
// 2 * T * H * 2 * n_sub * Dk/2 / time; "eff" is the larger fraction of the machine's limits.
//
//   slot_memory/<gate>/B1_T4096_S64_D512_H8_seg512   slot_memory over 4096 tokens in segments of
//                    512, 64 slots of 512 channels, 8 heads (input_forget and lm2 gates)
//   slot_memory_reference/input_forget/B1_T256_S16_D64_H4_seg64 and slot_memory/input_forget/...:
//                    the reference (double loops) beside the fast form on a small shape
// GFLOP/s = 2 * (4 T S D + (T / seg) 2 S D^2 (+ T D^2 for lm2)) / time: attentions and gates.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "seqmix/core/parallel.hpp"
#include "seqmix/memory.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct PkmShape {
  index_t T, H, Dk, n_sub, Dv, k;
};

const PkmShape kLarge = {4096, 4, 512, 1024, 512, 32};
const PkmShape kSmall = {64, 2, 64, 64, 128, 8};

// A cheap deterministic fill for the 1M-row table (random_tensor would take seconds per GiB).
// int8 tables get codes from the same generator and one scale per row (0.5 / 127: the values'
// range), as quantize_pkm_values would give them.
template <class Value>
std::unique_ptr<Tensor<Value, 2>> make_values(const PkmShape& s) {
  auto v = std::make_unique<Tensor<Value, 2>>(std::array<index_t, 2>{s.n_sub * s.n_sub, s.Dv});
  std::uint32_t x = 12345u;
  for (auto& e : *v) {
    x = x * 1664525u + 1013904223u;
    const float value = static_cast<float>(x >> 8) * (1.f / 16777216.f) - 0.5f;
    if constexpr (std::is_same_v<Value, std::int8_t>)
      e = static_cast<std::int8_t>(std::lround(value * 254.f));
    else
      e = Value(value);
  }
  return v;
}

template <class Value>
void run(benchmark::State& state, const PkmShape& s, bool reference) {
  const auto q = st::random_tensor<3>({s.T, s.H, s.Dk}, 1);
  const auto ka = st::random_tensor<3>({s.H, s.n_sub, s.Dk / 2}, 2);
  const auto kb = st::random_tensor<3>({s.H, s.n_sub, s.Dk / 2}, 3);
  const auto values = make_values<Value>(s);
  const auto gate = st::random_tensor<2>({s.T, s.Dv}, 4);
  Tensor<float, 2> y({s.T, s.Dv});
  seqmix::ProductKeyMemoryInputs<Value> in{q.cview(), ka.cview(), kb.cview(), values->cview(), gate.cview()};
  Tensor<float, 1> scales({s.n_sub * s.n_sub});
  if constexpr (std::is_same_v<Value, std::int8_t>) {
    for (auto& scale : scales) scale = 0.5f / 127.f;
    in.value_scales = scales.cview();
  }
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = s.k;
  for (auto _ : state) {
    if (reference)
      seqmix::reference::product_key_memory(in, {y.view()}, options);
    else
      seqmix::product_key_memory(in, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(s.T * s.H * s.k * s.Dv) * sizeof(Value);
  const double flop = 2.0 * static_cast<double>(s.T * s.H) * 2.0 * static_cast<double>(s.n_sub * (s.Dk / 2));
  st::report_throughput(state, flop, bytes);
  // Microseconds per token: an inverted rate of T * 1e-6 per iteration.
  state.counters["us/token"] = benchmark::Counter(static_cast<double>(s.T) * 1e-6,
                                                  benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void pkm_f16(benchmark::State& state, const PkmShape& s) { run<seqmix::f16>(state, s, false); }
void pkm_bf16(benchmark::State& state, const PkmShape& s) { run<seqmix::bf16>(state, s, false); }
void pkm_f32(benchmark::State& state, const PkmShape& s) { run<float>(state, s, false); }
void pkm_int8(benchmark::State& state, const PkmShape& s) { run<std::int8_t>(state, s, false); }
void pkm_reference(benchmark::State& state, const PkmShape& s) { run<float>(state, s, true); }

}  // namespace

BENCHMARK_CAPTURE(pkm_int8, int8/T4096_N1M_Dv512_H4_k32_Dk512, kLarge)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(pkm_f16, f16/T4096_N1M_Dv512_H4_k32_Dk512, kLarge)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(pkm_bf16, bf16/T4096_N1M_Dv512_H4_k32_Dk512, kLarge)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(pkm_f32, f32/T4096_N1M_Dv512_H4_k32_Dk512, kLarge)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(pkm_reference, reference/T64_N4096_Dv128_H2_k8_Dk64, kSmall)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(pkm_f32, f32/T64_N4096_Dv128_H2_k8_Dk64, kSmall)->Unit(benchmark::kMillisecond)->UseRealTime();

namespace {

struct SlotShape {
  index_t B, T, S, D, H, segment;
};

const SlotShape kSlotLarge = {1, 4096, 64, 512, 8, 512};
const SlotShape kSlotSmall = {1, 256, 16, 64, 4, 64};

void run_slot(benchmark::State& state, const SlotShape& s, seqmix::SlotGate gate, bool reference) {
  const auto x = st::random_tensor<3>({s.B, s.T, s.D}, 1), memory = st::random_tensor<3>({s.B, s.S, s.D}, 2);
  const auto wi = st::random_tensor<2>({s.D, s.D}, 3, -0.05f, 0.05f), wf = st::random_tensor<2>({s.D, s.D}, 4, -0.05f, 0.05f),
             wo = st::random_tensor<2>({s.D, s.D}, 5, -0.05f, 0.05f);
  const auto bi = st::random_tensor<1>({s.D}, 6), bf = st::random_tensor<1>({s.D}, 7), bo = st::random_tensor<1>({s.D}, 8);
  seqmix::SlotMemoryInputs in{x.cview(), memory.cview(), {wi.cview(), bi.cview(), wf.cview(), bf.cview()}};
  if (gate == seqmix::SlotGate::lm2) in.weights.w_output = wo.cview(), in.weights.b_output = bo.cview();
  seqmix::SlotMemoryOptions options;
  options.gate = gate, options.heads = s.H, options.segment = s.segment;
  Tensor<float, 3> y({s.B, s.T, s.D}), final_memory({s.B, s.S, s.D});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::slot_memory(in, {y.view(), final_memory.view()}, options);
    else
      seqmix::slot_memory(in, {y.view(), final_memory.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double segments = static_cast<double>((s.T + s.segment - 1) / s.segment);
  const double D = static_cast<double>(s.D), T = static_cast<double>(s.B * s.T);
  const double flop = 2.0 * (4.0 * T * static_cast<double>(s.S) * D + segments * 2.0 * static_cast<double>(s.B * s.S) * D * D +
                             (gate == seqmix::SlotGate::lm2 ? T * D * D : 0.0));
  st::report_throughput(state, flop, 0.0);
}

void slot_input_forget(benchmark::State& state, const SlotShape& s) { run_slot(state, s, seqmix::SlotGate::input_forget, false); }
void slot_lm2(benchmark::State& state, const SlotShape& s) { run_slot(state, s, seqmix::SlotGate::lm2, false); }
void slot_reference(benchmark::State& state, const SlotShape& s) { run_slot(state, s, seqmix::SlotGate::input_forget, true); }

}  // namespace

BENCHMARK_CAPTURE(slot_input_forget, slot_memory/input_forget/B1_T4096_S64_D512_H8_seg512, kSlotLarge)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(slot_lm2, slot_memory/lm2/B1_T4096_S64_D512_H8_seg512, kSlotLarge)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(slot_reference, slot_memory_reference/input_forget/B1_T256_S16_D64_H4_seg64, kSlotSmall)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(slot_input_forget, slot_memory/input_forget/B1_T256_S16_D64_H4_seg64, kSlotSmall)->Unit(benchmark::kMillisecond)->UseRealTime();
