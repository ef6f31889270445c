// ssd (Mamba-2) benchmarks on the named model shapes: prefill (automatic choice, and each
// algorithm and chunk size forced), the decode step, and the reference recurrence as baseline.
//
// Counters:
//   GFLOP/s = 5 * B*T*H*P*N / time: the recurrence's work per token and state element (decay
//             multiply, rank-1 update FMA, read-out FMA). The same count for every algorithm, so
//             the rates compare; the chunked form does about 4*P*N + L*P per token and head.
//   GB/s    (step) = 2 * B*H*P*N*4 / time: the state read and written once per token, which is
//             what bounds the step.
//
// Serving cases (issue 14), each beside its non-ragged form in the same run:
//   ssd/varlen/<shape>/packed   8 sequences of {17, 33, 100, 255, 512, 700, 1024, 2048} tokens
//                               in one packed call (cu_seqlens); .../dense is one call over the
//                               same 4689 tokens, .../padded the 8 sequences padded to 2048.
//                               GFLOP/s counts the real tokens only, so the rates compare.
//   ssd_step/slots/<shape>      64 sequences whose states sit in a pool of 96 rows (holes between
//                               them, rows in shuffled order); .../dense is a plain B = 64 step.
//
// ssd/prefill/<shape>/T4096/chunked_bf16io: the chunked prefill on x, Bm and Cm stored as bf16
// (SsdInputsOf<bf16>, rows widened per chunk; issue 19 item 3), counter speedup_vs_f32: the
// fp32-input chunked prefill's time over this one's, process CPU time alternated after the timed
// loop (st::alternated_cpu_medians; one run's ratio).
// ssd/bf16/prefill/<shape>/T<T>: the same with SsdOptions::bf16_compute = dot (the output product
// on AVX512-BF16 dot products where the target has them), speedup_vs_f32 likewise.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;


// One problem with Mamba-2-like data: softplus(dt + dt_bias) in about [0.001, 0.1], D and z on.
struct Problem {
  index_t B, T, H, P, N, G;
  Tensor<float, 4> x, z, Bm, Cm, state, y;
  Tensor<float, 3> dt;
  Tensor<float, 1> A, D, dt_bias;

  Problem(index_t B_, index_t T_, const st::SsmShape& s)
      : B(B_), T(T_), H(s.H), P(s.P), N(s.N), G(s.G),
        x(st::random_tensor<4>({B, T, H, P}, 1)),
        z(st::random_tensor<4>({B, T, H, P}, 2)),
        Bm(st::random_tensor<4>({B, T, G, N}, 3)),
        Cm(st::random_tensor<4>({B, T, G, N}, 4)),
        state(st::random_tensor<4>({B, H, P, N}, 5)),
        y({B, T, H, P}),
        dt(st::random_tensor<3>({B, T, H}, 6, -1.f, 1.f)),
        A(st::random_tensor<1>({H}, 7, -16.f, -1.f)),
        D(st::random_tensor<1>({H}, 8)),
        dt_bias(st::random_tensor<1>({H}, 9, -6.f, -2.5f)) {}

  seqmix::SsdInputs inputs() const {
    return {x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view(), dt_bias.view(), state.view(), {}};
  }
  seqmix::SsdStepInputs step_inputs() const {
    return {x.view().select(1, 0), dt.view().select(1, 0), A.view(),       Bm.view().select(1, 0),
            Cm.view().select(1, 0), D.view(),              z.view().select(1, 0), dt_bias.view(), {}};
  }
  double state_elements() const { return static_cast<double>(B * H * P * N); }
};

seqmix::SsdOptions options(seqmix::SsdAlgorithm algorithm, index_t chunk = seqmix::SsdOptions{}.chunk_size) {
  seqmix::SsdOptions o;
  o.dt_softplus = true;
  o.algorithm = algorithm;
  o.chunk_size = chunk;
  return o;
}

void set_flop_rate(benchmark::State& state, const Problem& p) {
  seqmix::testing::report_gflops(state, 5.0 * p.T * p.state_elements());
}

void prefill(benchmark::State& state, const st::SsmShape& shape, index_t T, seqmix::SsdOptions o) {
  Problem p(1, T, shape);
  Tensor<float, 4> final_state({p.B, p.H, p.P, p.N});
  for (auto _ : state) {
    seqmix::ssd(p.inputs(), {p.y.view(), final_state.view(), {}}, o, st::two_thread_pool());
    benchmark::DoNotOptimize(p.y.data());
  }
  set_flop_rate(state, p);
}

void prefill_reference(benchmark::State& state, const st::SsmShape& shape, index_t T) {
  Problem p(1, T, shape);
  Tensor<float, 4> final_state({p.B, p.H, p.P, p.N});
  for (auto _ : state) {
    seqmix::reference::ssd(p.inputs(), {p.y.view(), final_state.view(), {}}, options(seqmix::SsdAlgorithm::automatic));
    benchmark::DoNotOptimize(p.y.data());
  }
  set_flop_rate(state, p);
}

void step(benchmark::State& state, const st::SsmShape& shape) {
  Problem p(1, 1, shape);
  Tensor<float, 3> y({p.B, p.H, p.P});
  for (auto _ : state) {
    seqmix::ssd_step(p.step_inputs(), {y.view(), p.state.view()}, options(seqmix::SsdAlgorithm::automatic), st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  set_flop_rate(state, p);
  seqmix::testing::report_gbytes(state, 2.0 * 4.0 * p.state_elements());
}

// ---- serving (issue 14) ------------------------------------------------------------------------

const std::vector<index_t> kVarlenLengths = {17, 33, 100, 255, 512, 700, 1024, 2048};

index_t total_tokens() { return std::accumulate(kVarlenLengths.begin(), kVarlenLengths.end(), index_t{0}); }

void set_token_flop_rate(benchmark::State& state, const st::SsmShape& s, index_t tokens) {
  seqmix::testing::report_gflops(state, 5.0 * tokens * s.H * s.P * s.N);
}

// The 8 sequences packed as [1, 4689, ...], states in rows 0..7 of a pool of 8.
void varlen_packed(benchmark::State& state, const st::SsmShape& shape) {
  const index_t total = total_tokens(), N = static_cast<index_t>(kVarlenLengths.size());
  Problem p(1, total, shape);
  std::vector<std::int64_t> cu(1, 0);
  for (index_t l : kVarlenLengths) cu.push_back(cu.back() + l);
  Tensor<float, 4> pool = st::random_tensor<4>({N, p.H, p.P, p.N}, 10);
  seqmix::SsdInputs in = p.inputs();
  in.initial_state = pool.view();
  in.batch.cu_seqlens = cu;
  for (auto _ : state) {
    seqmix::ssd(in, {p.y.view(), pool.view(), {}}, options(seqmix::SsdAlgorithm::automatic), st::two_thread_pool());
    benchmark::DoNotOptimize(p.y.data());
  }
  set_token_flop_rate(state, shape, total);
}

// One dense sequence of the same 4689 tokens.
void varlen_dense(benchmark::State& state, const st::SsmShape& shape) {
  prefill(state, shape, total_tokens(), options(seqmix::SsdAlgorithm::automatic));
}

// The 8 sequences padded to [8, 2048]: what an engine without varlen runs.
void varlen_padded(benchmark::State& state, const st::SsmShape& shape) {
  const index_t T = *std::max_element(kVarlenLengths.begin(), kVarlenLengths.end());
  Problem p(static_cast<index_t>(kVarlenLengths.size()), T, shape);
  Tensor<float, 4> final_state({p.B, p.H, p.P, p.N});
  for (auto _ : state) {
    seqmix::ssd(p.inputs(), {p.y.view(), final_state.view(), {}}, options(seqmix::SsdAlgorithm::automatic),
                st::two_thread_pool());
    benchmark::DoNotOptimize(p.y.data());
  }
  set_token_flop_rate(state, shape, total_tokens());  // useful tokens, as the packed case
}

constexpr index_t kStepSequences = 64, kStepPool = 96;

// Slots of 64 sequences in a pool of 96: a random subset in shuffled order, so holes sit
// between the rows a step touches.
std::vector<std::int32_t> pool_slots(std::uint64_t seed) {
  std::vector<std::int32_t> rows(kStepPool);
  std::iota(rows.begin(), rows.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(kStepSequences);
  return rows;
}

void set_state_rate(benchmark::State& state, const st::SsmShape& s) {
  seqmix::testing::report_gbytes(state, 2.0 * 4.0 * kStepSequences * s.H * s.P * s.N);
}

void step_slots(benchmark::State& state, const st::SsmShape& shape) {
  Problem p(kStepSequences, 1, shape);
  Tensor<float, 4> pool = st::random_tensor<4>({kStepPool, p.H, p.P, p.N}, 11);
  const std::vector<std::int32_t> slots = pool_slots(12);
  Tensor<float, 3> y({p.B, p.H, p.P});
  seqmix::SsdStepInputs in = p.step_inputs();
  in.batch.state_indices = slots;
  for (auto _ : state) {
    seqmix::ssd_step(in, {y.view(), pool.view()}, options(seqmix::SsdAlgorithm::automatic), st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  set_state_rate(state, shape);
}

void step_dense(benchmark::State& state, const st::SsmShape& shape) {
  Problem p(kStepSequences, 1, shape);
  Tensor<float, 3> y({p.B, p.H, p.P});
  for (auto _ : state) {
    seqmix::ssd_step(p.step_inputs(), {y.view(), p.state.view()}, options(seqmix::SsdAlgorithm::automatic),
                     st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  set_state_rate(state, shape);
}

// The chunked prefill on bf16 x, Bm, Cm, and the fp32-input chunked prefill's CPU time over it.
void prefill_bf16io(benchmark::State& state, const st::SsmShape& shape, index_t T,
                    seqmix::Bf16Compute compute = seqmix::Bf16Compute::fp32) {
  Problem p(1, T, shape);
  Tensor<float, 4> final_state({p.B, p.H, p.P, p.N});
  Tensor<seqmix::bf16, 4> x(p.x.shape()), Bm(p.Bm.shape()), Cm(p.Cm.shape());
  seqmix::convert(p.x.data(), x.data(), x.numel()), seqmix::convert(p.Bm.data(), Bm.data(), Bm.numel());
  seqmix::convert(p.Cm.data(), Cm.data(), Cm.numel());
  const seqmix::SsdInputs in32 = p.inputs();
  seqmix::SsdInputsOf<seqmix::bf16> in;
  in.x = x.cview(), in.Bm = Bm.cview(), in.Cm = Cm.cview(), in.dt = in32.dt, in.A = in32.A, in.D = in32.D;
  in.z = in32.z, in.dt_bias = in32.dt_bias, in.initial_state = in32.initial_state;
  const seqmix::SsdOptions o32 = options(seqmix::SsdAlgorithm::chunked);
  seqmix::SsdOptions o = o32;
  o.bf16_compute = compute;
  const seqmix::SsdOutputs out{p.y.view(), final_state.view(), {}};
  for (auto _ : state) {
    seqmix::ssd(in, out, o, st::two_thread_pool());
    benchmark::DoNotOptimize(p.y.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::ssd(in32, out, o32, st::two_thread_pool()); },
                                            [&] { seqmix::ssd(in, out, o, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  set_flop_rate(state, p);
}

const st::SsmShape& shape_named(const std::string& name) {
  for (const auto& s : st::ssm_shapes())
    if (s.name == name) return s;
  throw std::invalid_argument("bench_ssd: no SSM shape named " + name);
}

// Registered at startup so the shape table supplies the names.
const int kRegistered = [] {
  using seqmix::SsdAlgorithm;
  for (const char* name : {"mamba2-780m", "ssd-h128-p80"}) {
    const st::SsmShape& s = shape_named(name);
    const std::string base = std::string("ssd/prefill/") + name + "/T512";
    benchmark::RegisterBenchmark(base.c_str(), prefill, s, 512, options(SsdAlgorithm::automatic))->UseRealTime();
    benchmark::RegisterBenchmark((base + "/recurrent").c_str(), prefill, s, 512, options(SsdAlgorithm::recurrent))
        ->UseRealTime();
    for (index_t chunk : {32, 64, 128})
      benchmark::RegisterBenchmark((base + "/chunked/L" + std::to_string(chunk)).c_str(), prefill, s, 512,
                                   options(SsdAlgorithm::chunked, chunk))
          ->UseRealTime();
    // The reference is single-threaded and ~100x slower: a shorter prompt keeps the run short.
    benchmark::RegisterBenchmark((std::string("ssd/prefill/") + name + "/T128/reference").c_str(),
                                 prefill_reference, s, 128)
        ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("ssd/step/") + name).c_str(), step, s)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("ssd/prefill/") + name + "/T4096/chunked_bf16io").c_str(), prefill_bf16io,
                                 s, 4096, seqmix::Bf16Compute::fp32)
        ->UseRealTime();
    for (index_t T : {512, 4096})
      benchmark::RegisterBenchmark((std::string("ssd/bf16/prefill/") + name + "/T" + std::to_string(T)).c_str(),
                                   prefill_bf16io, s, T, seqmix::Bf16Compute::dot)
          ->UseRealTime();
  }
  const st::SsmShape& serving = shape_named("mamba2-780m");  // H = 48, P = 64, N = 128
  const std::string varlen = "ssd/varlen/mamba2-780m/8seq";
  benchmark::RegisterBenchmark((varlen + "/packed").c_str(), varlen_packed, serving)->UseRealTime();
  benchmark::RegisterBenchmark((varlen + "/dense").c_str(), varlen_dense, serving)->UseRealTime();
  benchmark::RegisterBenchmark((varlen + "/padded").c_str(), varlen_padded, serving)->UseRealTime();
  const std::string slots = "ssd_step/slots/mamba2-780m/B64";
  benchmark::RegisterBenchmark((slots + "/pool96").c_str(), step_slots, serving)->UseRealTime();
  benchmark::RegisterBenchmark((slots + "/dense").c_str(), step_dense, serving)->UseRealTime();
  return 0;
}();

}  // namespace
