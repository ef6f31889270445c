// Benchmarks of the Mamba-1 pair, causal_conv1d and selective_scan: fast prefill, decode step,
// and the reference as the baseline (names ending in /reference). Two threads throughout.
//
// Counters (Google Benchmark rates, per second of wall time):
//   causal_conv1d  bytes = 4 * (2*B*T*D + D*W + D)                 x in, y out, weight, bias
//                  flops = 2 * B*T*D*W                              one multiply-add per tap
//   conv step      bytes = 4 * (2*B*(W-1)*D + D*W + D + 2*B*D)      state in and out, weight, bias, x, y
//   selective_scan flops = 7 * B*T*D*N   per state element: dt*A, exp (counted as 1), decay*h + dt_u*B
//                                         (3), C*h accumulate (2); the O(B*T*D) terms are left out
//                  bytes = 4 * (4*B*T*D + 2*B*T*G*N + D*N)         u, delta, z in, y out; B, C; A
//   scan step      bytes = 4 * (2*B*D*N + D*N + 2*B*G*N + 4*B*D)    state in and out, A, B, C, u, delta, z, y
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;


void set_rates(benchmark::State& state, double flops, double bytes) {
  using benchmark::Counter;
  if (flops > 0) seqmix::testing::report_gflops(state, flops);
  seqmix::testing::report_gbytes(state, bytes);
}

// --- causal_conv1d ---------------------------------------------------------------------------

struct ConvShape {
  std::string name;
  index_t B, T, D, W;
};

// 3328 = the conv channels of Mamba-2 780M (d_inner 3072 + 2 * d_state 128); 8192 a wide layer.
const ConvShape kConvShapes[] = {
    {"d3328_t515_w4", 1, 515, 3328, 4},
    {"d8192_t937_w4", 1, 937, 8192, 4},
};

struct ConvData {
  Tensor<float, 3> x, state, y, final_state;
  Tensor<float, 2> weight;
  Tensor<float, 1> bias;
  explicit ConvData(const ConvShape& s)
      : x(st::random_tensor<3>({s.B, s.T, s.D}, 1)),
        state(st::random_tensor<3>({s.B, s.W - 1, s.D}, 2)),
        y({s.B, s.T, s.D}),
        final_state({s.B, s.W - 1, s.D}),
        weight(st::random_tensor<2>({s.D, s.W}, 3)),
        bias(st::random_tensor<1>({s.D}, 4)) {}
};

template <bool kReference>
void conv_prefill(benchmark::State& state, ConvShape s) {
  ConvData data(s);
  const seqmix::CausalConv1dInputs in{data.x.view(), data.weight.view(), data.bias.view(), data.state.view(), {}};
  const seqmix::CausalConv1dOutputs out{data.y.view(), data.final_state.view(), {}};
  const seqmix::CausalConv1dOptions options{seqmix::ConvActivation::silu};
  for (auto _ : state) {
    if (kReference)
      seqmix::reference::causal_conv1d(in, out, options, st::two_thread_pool());
    else
      seqmix::causal_conv1d(in, out, options, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  const double btd = double(s.B * s.T * s.D);
  set_rates(state, 2.0 * btd * s.W, 4.0 * (2 * btd + s.D * s.W + s.D));
}

// The reference baseline of a step is a one-token reference prefill carrying the state in place.
template <bool kReference>
void conv_step(benchmark::State& state, ConvShape s) {
  ConvData data(s);
  Tensor<float, 2> y({s.B, s.D});
  const seqmix::CausalConv1dStepInputs in{data.x.view().select(1, 0), data.weight.view(), data.bias.view(), {}};
  const seqmix::CausalConv1dInputs ref_in{data.x.view(), data.weight.view(), data.bias.view(), data.state.view(), {}};
  const seqmix::CausalConv1dOptions options{seqmix::ConvActivation::silu};
  for (auto _ : state) {
    if (kReference)
      seqmix::reference::causal_conv1d(ref_in, {data.y.view(), data.state.view(), {}}, options, st::two_thread_pool());
    else
      seqmix::causal_conv1d_step(in, {y.view(), data.state.view()}, options, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  const double bd = double(s.B * s.D);
  set_rates(state, 2.0 * bd * s.W, 4.0 * (2 * bd * (s.W - 1) + s.D * s.W + s.D + 2 * bd));
}

// --- selective_scan --------------------------------------------------------------------------

struct ScanShape {
  std::string name;
  index_t B, T, D, N, G;
};

ScanShape mamba_130m(index_t T) {
  for (const auto& m : st::ssm_shapes())
    if (m.name == "mamba-130m") return {m.name + "_t" + std::to_string(T), 1, T, m.D, m.N, m.G};
  return {"mamba-130m_t" + std::to_string(T), 1, T, 1536, 16, 1};
}

struct ScanData {
  Tensor<float, 3> u, delta, z, y, state, final_state;
  Tensor<float, 2> A;
  Tensor<float, 4> Bm, Cm;
  Tensor<float, 1> Dskip, delta_bias;
  explicit ScanData(const ScanShape& s)
      : u(st::random_tensor<3>({s.B, s.T, s.D}, 1)),
        delta(st::random_tensor<3>({s.B, s.T, s.D}, 2, -4.f, 0.f)),
        z(st::random_tensor<3>({s.B, s.T, s.D}, 3)),
        y({s.B, s.T, s.D}),
        state(st::random_tensor<3>({s.B, s.D, s.N}, 4)),
        final_state({s.B, s.D, s.N}),
        A(st::random_tensor<2>({s.D, s.N}, 5, -16.f, -1.f)),
        Bm(st::random_tensor<4>({s.B, s.T, s.G, s.N}, 6)),
        Cm(st::random_tensor<4>({s.B, s.T, s.G, s.N}, 7)),
        Dskip(st::random_tensor<1>({s.D}, 8)),
        delta_bias(st::random_tensor<1>({s.D}, 9, -2.f, 0.f)) {}

  seqmix::SelectiveScanInputs inputs() const {
    return {u.view(), delta.view(), A.view(), Bm.view(), Cm.view(), Dskip.view(), z.view(), delta_bias.view(),
            state.view(), {}};
  }
};

// Mamba-1 blocks run with every optional input and softplus on.
seqmix::SelectiveScanOptions mamba_options() {
  seqmix::SelectiveScanOptions options;
  options.delta_softplus = true;
  return options;
}

template <bool kReference>
void scan_prefill(benchmark::State& state, ScanShape s) {
  ScanData data(s);
  const auto in = data.inputs();
  const seqmix::SelectiveScanOutputs out{data.y.view(), data.final_state.view(), {}};
  for (auto _ : state) {
    if (kReference)
      seqmix::reference::selective_scan(in, out, mamba_options(), st::two_thread_pool());
    else
      seqmix::selective_scan(in, out, mamba_options(), st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  const double btd = double(s.B * s.T * s.D);
  set_rates(state, 7.0 * btd * s.N, 4.0 * (4 * btd + 2.0 * s.B * s.T * s.G * s.N + s.D * s.N));
}

template <bool kReference>
void scan_step(benchmark::State& state, ScanShape s) {
  ScanData data(s);
  const auto in = data.inputs();
  seqmix::SelectiveScanStepInputs step{in.u.select(1, 0),  in.delta.select(1, 0), in.A,
                                       in.Bm.select(1, 0), in.Cm.select(1, 0),    in.Dskip,
                                       in.z.select(1, 0),  in.delta_bias,          {}};
  Tensor<float, 2> y({s.B, s.D});
  auto ref_in = in;
  ref_in.initial_state = data.state.view();
  for (auto _ : state) {
    if (kReference)
      seqmix::reference::selective_scan(ref_in, {data.y.view(), data.state.view(), {}}, mamba_options(), st::two_thread_pool());
    else
      seqmix::selective_scan_step(step, {y.view(), data.state.view()}, mamba_options(), st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  const double bd = double(s.B * s.D);
  set_rates(state, 7.0 * bd * s.N, 4.0 * (2 * bd * s.N + s.D * s.N + 2.0 * s.B * s.G * s.N + 4 * bd));
}

// --- serving (issue 14): causal_conv1d_step through state slots ----------------------------------
//   causal_conv1d_step/slots/<shape>/pool96   64 sequences whose conv states sit in a pool of 96
//                                             rows (a shuffled subset: holes between them);
//   .../dense                                 the plain B = 64 step over a [64, W-1, D] state.
// GB/s counts the bytes of the step above (state in and out, weight, bias, x, y), so the two
// compare directly.

constexpr index_t kSlotSequences = 64, kSlotPool = 96;

template <bool kSlots>
void conv_step_slots(benchmark::State& state, ConvShape s) {
  const index_t B = kSlotSequences, S = kSlots ? kSlotPool : kSlotSequences;
  const Tensor<float, 2> x = st::random_tensor<2>({B, s.D}, 1), weight = st::random_tensor<2>({s.D, s.W}, 3);
  const Tensor<float, 1> bias = st::random_tensor<1>({s.D}, 4);
  Tensor<float, 3> pool = st::random_tensor<3>({S, s.W - 1, s.D}, 2);
  Tensor<float, 2> y({B, s.D});
  std::vector<std::int32_t> rows(static_cast<std::size_t>(S));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), std::mt19937_64(5));
  rows.resize(static_cast<std::size_t>(B));
  seqmix::CausalConv1dStepInputs in{x.view(), weight.view(), bias.view(), {}};
  if (kSlots) in.batch.state_indices = rows;
  const seqmix::CausalConv1dOptions options{seqmix::ConvActivation::silu};
  for (auto _ : state) {
    seqmix::causal_conv1d_step(in, {y.view(), pool.view()}, options, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  const double bd = double(B * s.D);
  set_rates(state, 2.0 * bd * s.W, 4.0 * (2 * bd * (s.W - 1) + s.D * s.W + s.D + 2 * bd));
}

const int kRegistered = [] {
  for (const ConvShape& s : kConvShapes) {
    benchmark::RegisterBenchmark(("causal_conv1d/prefill/" + s.name).c_str(), conv_prefill<false>, s)->UseRealTime();
    benchmark::RegisterBenchmark(("causal_conv1d/prefill/" + s.name + "/reference").c_str(), conv_prefill<true>, s)
        ->UseRealTime();
  }
  const ConvShape step_shape{"d3328_w4", 1, 1, 3328, 4};
  benchmark::RegisterBenchmark(("causal_conv1d/step/" + step_shape.name).c_str(), conv_step<false>, step_shape)
      ->UseRealTime();
  // The step's other window widths beside W = 4 (W = 2: one state row and one weight permute per
  // tap on AVX-512; W = 3: two state rows, three permutes per tap as at W = 4).
  for (const ConvShape& narrow : {ConvShape{"d3328_w2", 1, 1, 3328, 2}, ConvShape{"d3328_w3", 1, 1, 3328, 3}})
    benchmark::RegisterBenchmark(("causal_conv1d/step/" + narrow.name).c_str(), conv_step<false>, narrow)->UseRealTime();
  benchmark::RegisterBenchmark(("causal_conv1d/step/" + step_shape.name + "/reference").c_str(), conv_step<true>,
                               step_shape)
      ->UseRealTime();

  const std::string slots = "causal_conv1d_step/slots/" + step_shape.name + "/B64";
  benchmark::RegisterBenchmark((slots + "/pool96").c_str(), conv_step_slots<true>, step_shape)->UseRealTime();
  benchmark::RegisterBenchmark((slots + "/dense").c_str(), conv_step_slots<false>, step_shape)->UseRealTime();

  const ScanShape prefill = mamba_130m(1024);
  benchmark::RegisterBenchmark(("selective_scan/prefill/" + prefill.name).c_str(), scan_prefill<false>, prefill)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("selective_scan/prefill/" + prefill.name + "/reference").c_str(),
                               scan_prefill<true>, prefill)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  const ScanShape step = mamba_130m(1);
  benchmark::RegisterBenchmark("selective_scan/step/mamba-130m", scan_step<false>, step)->UseRealTime();
  benchmark::RegisterBenchmark("selective_scan/step/mamba-130m/reference", scan_step<true>, step)->UseRealTime();
  return 0;
}();

}  // namespace
