// Benchmarks of the delta-rule family on 2 threads (seqmix::ThreadPool(2)), names
// <op>/<prefill|step>/<shape>[/<form>]. Prefill reports GFLOP/s counting the recurrence's
// arithmetic, whatever the algorithm does:
//   delta / gated delta / KDA: 6 * B*T*HV*K*V  (S'^T k: 2KV, k u^T added: 2KV, S^T q: 2KV)
//   rwkv7:                     8 * B*T*H*K*V   (a^T S, b p^T, k v^T, S^T r: 2KV each)
// Steps report GB/s of state traffic, 2 * B*HV*K*V*4 bytes (the state is read and written once).
// The reference runs as a baseline on a shorter T (it is a double-precision loop), named so.
// gated_delta_rule/prefill/<shape> (automatic): recurrent_over_auto and chunked_over_auto, each
// forced form's process CPU time over the automatic call's, alternated on the same inputs after
// the timed loop (st::alternated_cpu_medians); h1_k128_t1024 runs in two value blocks.
// mom/prefill/m8_top2_h16_k64_t1024: Mixture-of-Memories with 8 memories, top-2 routes per token;
// GFLOP/s counts the gated delta rule's 6 K V per head on the T*E routed entries, so it compares
// directly with gated_delta_rule/prefill/h16_k64_t2048 (the same entries as one sequence).
// <op>/bf16/prefill/<shape>: the chunked WY prefill with bf16 dot-product GEMMs (bf16_compute =
// dot, issue 19 item 3; target >= 1.4x fp32), eff against the bf16 dot peak, and speedup_vs_f32:
// the fp32 chunked prefill over this one, process CPU time alternated after the timed loop
// (st::alternated_cpu_medians: medians of 5 batches of about 0.1 s).
// gated_delta_rule/prefill/<shape>/chunked_bf16io and gated_delta_rule/bf16/prefill/<shape>/bf16io:
// the chunked prefill on q/k/v stored as bf16 (GatedDeltaRuleInputsOf<bf16>, rows widened per
// chunk) with fp32 products and with bf16 dot products; speedup_vs_f32: the fp32-input fp32
// chunked prefill over this one, vs_f32_inputs: the fp32-input prefill with the same products
// over this one (the cost of the widening), as st::alternated_cpu_medians times them.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/mom/fast.hpp"
#include "seqmix/linear_attention/mom/reference.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaAlgorithm;
using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// Inputs of a gated delta rule prefill with B = 1, HK = HV = H, K = V.
struct GdrBenchData {
  Tensor<float, 4> q, k, v, g, o, state;
  Tensor<float, 3> beta, gs;
  GdrBenchData(index_t T, index_t H, index_t K, DeltaGate gate)
      : q(st::random_tensor<4>({1, T, H, K}, 1)), k(st::random_tensor<4>({1, T, H, K}, 2)),
        v(st::random_tensor<4>({1, T, H, K}, 3)), o({1, T, H, K}), state({1, H, K, K}),
        beta(st::random_tensor<3>({1, T, H}, 4, 0.f, 1.f)) {
    st::normalize_rows(q);
    st::normalize_rows(k);
    if (gate == DeltaGate::channel) {
      g = Tensor<float, 4>({1, T, H, K});
      st::fill_log_gate(g.view(), 5, -0.1f, 0.f);
    } else {
      gs = Tensor<float, 3>({1, T, H});
      st::fill_log_gate(gs.view(), 5, -0.1f, 0.f);
    }
  }
  seqmix::GatedDeltaRuleInputs inputs() const {
    seqmix::GatedDeltaRuleInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view();
    if (g.numel()) in.g = g.view();
    if (gs.numel()) in.g_scalar = gs.view();
    return in;
  }
};

void set_prefill_counters(benchmark::State& state, double flops) {
  seqmix::testing::report_gflops(state, flops);
}

// Sets the automatic choice's counters: each forced form's time over the automatic call's, the three
// alternated on the same inputs (process CPU time, medians: st::alternated_cpu_medians). The rows
// themselves time each form on its own inputs, one row after another: at h16_k64_t1024 the
// automatic row once read 7% slower than the forced recurrent row although it runs the same code,
// where alternated in one process the two are within 2% (README.md of delta_update, "Which
// prefill runs").
void set_choice_counters(benchmark::State& state, GdrBenchData& data, seqmix::GatedDeltaRuleOptions options) {
  const auto call = [&](DeltaAlgorithm algorithm) {
    options.algorithm = algorithm;
    seqmix::gated_delta_rule(data.inputs(), {data.o.view(), data.state.view()}, options, st::two_thread_pool());
  };
  const auto t = st::alternated_cpu_medians([&] { call(DeltaAlgorithm::automatic); },
                                            [&] { call(DeltaAlgorithm::recurrent); },
                                            [&] { call(DeltaAlgorithm::chunked); });
  state.counters["recurrent_over_auto"] = t[1] / t[0];
  state.counters["chunked_over_auto"] = t[2] / t[0];
}

void gdr_prefill(benchmark::State& state, index_t T, index_t H, index_t K, DeltaGate gate, DeltaAlgorithm algorithm,
                 bool reference, bool choice_counters = false) {
  GdrBenchData data(T, H, K, gate);
  seqmix::GatedDeltaRuleOptions options;
  options.gate = gate;
  options.algorithm = algorithm;
  for (auto _ : state) {
    if (reference)
      seqmix::reference::gated_delta_rule(data.inputs(), {data.o.view(), data.state.view()}, options);
    else
      seqmix::gated_delta_rule(data.inputs(), {data.o.view(), data.state.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  if (choice_counters) set_choice_counters(state, data, options);
  set_prefill_counters(state, 6.0 * T * H * K * K);
}

// The chunked prefill with bf16 dot products, and its speed-up over the fp32 chunked form.
void gdr_prefill_bf16(benchmark::State& state, index_t T, index_t H, index_t K, DeltaGate gate) {
  GdrBenchData data(T, H, K, gate);
  seqmix::GatedDeltaRuleOptions f32, dot;
  f32.gate = gate, f32.algorithm = DeltaAlgorithm::chunked;
  dot = f32, dot.bf16_compute = seqmix::Bf16Compute::dot;
  for (auto _ : state) {
    seqmix::gated_delta_rule(data.inputs(), {data.o.view(), data.state.view()}, dot, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  const auto call = [&](const seqmix::GatedDeltaRuleOptions& o) {
    seqmix::gated_delta_rule(data.inputs(), {data.o.view(), data.state.view()}, o, st::two_thread_pool());
  };
  const auto t = st::alternated_cpu_medians([&] { call(f32); }, [&] { call(dot); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  seqmix::testing::report_gflops_bf16(state, 6.0 * T * H * K * K);
}

// The chunked prefill on bf16 q/k/v with `compute` products, against fp32 inputs (see the header).
void gdr_prefill_bf16_io(benchmark::State& state, index_t T, index_t H, index_t K, seqmix::Bf16Compute compute) {
  const GdrBenchData data(T, H, K, DeltaGate::scalar);
  Tensor<seqmix::bf16, 4> q({1, T, H, K}), k({1, T, H, K}), v({1, T, H, K});
  seqmix::convert(data.q.data(), q.data(), q.numel()), seqmix::convert(data.k.data(), k.data(), k.numel());
  seqmix::convert(data.v.data(), v.data(), v.numel());
  const seqmix::GatedDeltaRuleInputs in32 = data.inputs();
  seqmix::GatedDeltaRuleInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.beta = in32.beta, in.g_scalar = in32.g_scalar;
  seqmix::GatedDeltaRuleOptions f32, same;
  f32.algorithm = DeltaAlgorithm::chunked;
  same = f32, same.bf16_compute = compute;
  Tensor<float, 4> o({1, T, H, K}), s({1, H, K, K});
  const seqmix::GatedDeltaRuleOutputs out{o.view(), s.view()};
  for (auto _ : state) {
    seqmix::gated_delta_rule(in, out, same, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::gated_delta_rule(in32, out, f32, st::two_thread_pool()); },
                                            [&] { seqmix::gated_delta_rule(in32, out, same, st::two_thread_pool()); },
                                            [&] { seqmix::gated_delta_rule(in, out, same, st::two_thread_pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[2];
  state.counters["vs_f32_inputs"] = t[1] / t[2];
  if (compute == seqmix::Bf16Compute::dot)
    seqmix::testing::report_gflops_bf16(state, 6.0 * T * H * K * K);
  else
    set_prefill_counters(state, 6.0 * T * H * K * K);
}

// gated_delta_rule/phases/<shape> and kda/phases/<shape>[/c32]: the fp32 chunked WY form of a
// scalar-gated / per-channel-gated head (q/k L2 normalized in the kernel, chunk 64 or 32) run
// through wy.hpp's five steps with each step timed in thread CPU time, one thread, all heads
// advancing chunk by chunk; beside it one core's FMA rate timed in the same run. Counters:
// <step>_share of the summed time (scores: load, q/k L2 norm, gates, the lower-triangle scores
// and the mask, and under a per-channel gate the decayed keys and queries of every step; read: the decayed (K;Q) S; intra: right-hand
// side, triangular solve and O += M U; update: state passing; store: output rows); <step>_eff,
// the step's flops (scores 2 K L (L+1), read 4 L K V, intra 2 V L^2, update 2 L K V per chunk)
// per second over the FMA rate; eff_6kv, the recurrence's 6 K V per token over the summed time
// and the FMA rate; fma_gflops; clock_us, one clock read, subtracted from every timed step.
void gdr_phases(benchmark::State& state, index_t T, index_t H, index_t K, DeltaGate gate = DeltaGate::scalar,
                index_t C = 64) {
  namespace du = seqmix::delta_update;
  GdrBenchData data(T, H, K, gate);
  const index_t V = K;
  std::vector<du::DeltaHead> heads;
  for (index_t h = 0; h < H; ++h) {
    du::DeltaHead p;
    p.q = seqmix::ConstView<float, 2>(data.q.view()[0].select(1, h));
    p.k = seqmix::ConstView<float, 2>(data.k.view()[0].select(1, h));
    p.v = seqmix::ConstView<float, 2>(data.v.view()[0].select(1, h));
    p.beta = data.beta.view()[0].select(1, h);
    p.o = data.o.view()[0].select(1, h);
    p.scalar_gate = gate == DeltaGate::scalar;
    if (p.scalar_gate) {
      const auto g = data.gs.view()[0].select(1, h);
      p.g = seqmix::ConstView<float, 2>(g.data(), {T, K}, {g.stride(0), 0});
    } else {
      p.g = seqmix::ConstView<float, 2>(data.g.view()[0].select(1, h));
    }
    p.scale = 1.f / std::sqrt(static_cast<float>(K));
    p.norm = seqmix::QkNorm::l2;
    heads.push_back(p);
  }
  du::WyWorkspace ws(C, K, V);
  std::vector<du::RowMatrix> S(heads.size(), du::RowMatrix(K, V));
  const double clock_cost = st::clock_read_seconds();
  double seconds[5] = {0, 0, 0, 0, 0}, fma = 0;
  for (auto _ : state) {
    fma = std::max(fma, st::limits::one_thread_fma_gflops(2000000));
    for (auto& x : S) x.setZero();
    for (index_t t0 = 0; t0 < T; t0 += C) {
      const index_t L = std::min(C, T - t0);
      for (std::size_t i = 0; i < heads.size(); ++i) {
        const du::DeltaHead& p = heads[i];
        double t[6];
        t[0] = st::thread_cpu_seconds();
        du::wy_load_chunk(p, t0, L, ws);
        t[1] = st::thread_cpu_seconds();
        du::wy_read_state(p, t0, L, S[i], ws);
        t[2] = st::thread_cpu_seconds();
        du::wy_intra(L, ws);
        t[3] = st::thread_cpu_seconds();
        du::wy_update_state(p, L, S[i], ws);
        t[4] = st::thread_cpu_seconds();
        du::wy_store_outputs(p, t0, L, ws);
        t[5] = st::thread_cpu_seconds();
        for (int k = 0; k < 5; ++k) seconds[k] += std::max(0.0, t[k + 1] - t[k] - clock_cost);
      }
    }
    benchmark::DoNotOptimize(data.o.data());
    fma = std::max(fma, st::limits::one_thread_fma_gflops(2000000));
  }
  // Flops per head over all chunks (full chunks; the last may be shorter, counted as full).
  const double runs = static_cast<double>(state.iterations()) * static_cast<double>(H);
  const double chunks = static_cast<double>((T + C - 1) / C), L = static_cast<double>(C);
  const double flops[5] = {chunks * 2.0 * K * L * (L + 1) * runs, chunks * 4.0 * L * K * V * runs,
                           chunks * 2.0 * V * L * L * runs, chunks * 2.0 * L * K * V * runs, 0.0};
  const char* names[5] = {"scores", "read", "intra", "update", "store"};
  const double total = seconds[0] + seconds[1] + seconds[2] + seconds[3] + seconds[4];
  for (int k = 0; k < 5; ++k) {
    state.counters[std::string(names[k]) + "_share"] = seconds[k] / total;
    if (flops[k] > 0) state.counters[std::string(names[k]) + "_eff"] = flops[k] / seconds[k] / 1e9 / fma;
  }
  state.counters["eff_6kv"] = 6.0 * T * K * V * runs / total / 1e9 / fma;
  state.counters["fma_gflops"] = fma;
  state.counters["clock_us"] = clock_cost * 1e6;
}

void gdr_step(benchmark::State& state, index_t H, index_t K, DeltaGate gate) {
  GdrBenchData data(1, H, K, gate);
  seqmix::GatedDeltaRuleOptions options;
  options.gate = gate;
  seqmix::GatedDeltaRuleStepInputs in;
  in.q = data.q.view().select(1, 0), in.k = data.k.view().select(1, 0), in.v = data.v.view().select(1, 0);
  in.beta = data.beta.view().select(1, 0);
  if (gate == DeltaGate::channel) in.g = data.g.view().select(1, 0);
  if (gate == DeltaGate::scalar) in.g_scalar = data.gs.view().select(1, 0);
  st::fill_uniform(data.state.view(), 9, -0.1f, 0.1f);
  for (auto _ : state) {
    seqmix::gated_delta_rule_step(in, {data.o.view().select(1, 0), data.state.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.state.data());
  }
  seqmix::testing::report_gbytes(state, 2.0 * H * K * K * 4);
}

void delta_prefill(benchmark::State& state, index_t T, index_t H, index_t K, DeltaAlgorithm algorithm) {
  GdrBenchData data(T, H, K, DeltaGate::scalar);
  seqmix::DeltaRuleInputs in;
  in.q = data.q.view(), in.k = data.k.view(), in.v = data.v.view(), in.beta = data.beta.view();
  seqmix::DeltaRuleOptions options;
  options.algorithm = algorithm;
  for (auto _ : state) {
    seqmix::delta_rule(in, {data.o.view(), data.state.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  set_prefill_counters(state, 6.0 * T * H * K * K);
}

struct Rwkv7BenchData {
  Tensor<float, 4> r, k, v, a, b, g, o, state;
  Rwkv7BenchData(index_t T, index_t H, index_t K)
      : r(st::random_tensor<4>({1, T, H, K}, 1)), k(st::random_tensor<4>({1, T, H, K}, 2)),
        v(st::random_tensor<4>({1, T, H, K}, 3)), a(st::random_tensor<4>({1, T, H, K}, 4)),
        b(st::random_tensor<4>({1, T, H, K}, 5)), g({1, T, H, K}), o({1, T, H, K}), state({1, H, K, K}) {
    st::normalize_rows(k);
    // RWKV-7's a = -kappa, b = kappa * lr keeps the transition contractive.
    st::normalize_rows(a);
    for (index_t i = 0; i < a.numel(); ++i) b.data()[i] = -0.5f * a.data()[i];
    st::fill_log_gate(g.view(), 6, -0.5f, 0.f);
  }
  seqmix::Rwkv7Inputs inputs() const {
    return {r.view(), k.view(), v.view(), a.view(), b.view(), g.view(), seqmix::ConstView<float, 4>()};
  }
};

void rwkv7_prefill(benchmark::State& state, index_t T, index_t H, index_t K, bool reference) {
  Rwkv7BenchData data(T, H, K);
  for (auto _ : state) {
    if (reference)
      seqmix::reference::rwkv7(data.inputs(), {data.o.view(), data.state.view()});
    else
      seqmix::rwkv7(data.inputs(), {data.o.view(), data.state.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  set_prefill_counters(state, 8.0 * T * H * K * K);
}

void rwkv7_step(benchmark::State& state, index_t H, index_t K) {
  Rwkv7BenchData data(1, H, K);
  seqmix::Rwkv7StepInputs in;
  auto row = [](const Tensor<float, 4>& x) { return x.view().select(1, 0); };
  in.r = row(data.r), in.k = row(data.k), in.v = row(data.v), in.a = row(data.a), in.b = row(data.b);
  in.g = row(data.g);
  st::fill_uniform(data.state.view(), 9, -0.1f, 0.1f);
  for (auto _ : state) {
    seqmix::rwkv7_step(in, {data.o.view().select(1, 0), data.state.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(data.state.data());
  }
  seqmix::testing::report_gbytes(state, 2.0 * H * K * K * 4);
}

// Serving shapes (issue 14): 8 sequences of these lengths, 4689 tokens.
const std::vector<index_t> kVarlenLengths = {17, 33, 100, 255, 512, 700, 1024, 2048};

// Varlen prefill of kVarlenLengths with H heads, K = V, three ways over the same tokens:
// "packed" (cu_seqlens, per-sequence states), "dense" (one B = 1 call over all 4689 tokens as
// one sequence: the cost to match), "padded" (B = 8, every sequence padded to 2048). GFLOP/s
// count the real tokens only, so the three are directly comparable.
enum class VarlenForm { packed, dense, padded };

void gdr_varlen(benchmark::State& state, index_t H, index_t K, DeltaGate gate, VarlenForm form) {
  const index_t N = static_cast<index_t>(kVarlenLengths.size());
  std::vector<std::int64_t> cu{0};
  for (index_t len : kVarlenLengths) cu.push_back(cu.back() + len);
  const index_t total = cu.back(), longest = 2048;
  const index_t B = form == VarlenForm::padded ? N : 1, T = form == VarlenForm::padded ? longest : total;
  GdrBenchData data(B * T, H, K, gate);  // [1, B*T, ...], viewed as [B, T, ...] below
  auto as_bt = [&](auto& x) {
    auto shape = x.shape();
    shape[0] = B, shape[1] = T;
    return std::remove_cv_t<std::remove_reference_t<decltype(x.view())>>(x.data(), shape);
  };
  seqmix::GatedDeltaRuleInputs in;
  in.q = as_bt(data.q), in.k = as_bt(data.k), in.v = as_bt(data.v), in.beta = as_bt(data.beta);
  if (gate == DeltaGate::channel) in.g = as_bt(data.g);
  if (gate == DeltaGate::scalar) in.g_scalar = as_bt(data.gs);
  const index_t states = form == VarlenForm::dense ? 1 : N;
  Tensor<float, 4> final_state({states, H, K, K});
  if (form == VarlenForm::packed) in.batch.cu_seqlens = cu;
  seqmix::GatedDeltaRuleOptions options;
  options.gate = gate;
  for (auto _ : state) {
    seqmix::gated_delta_rule(in, {as_bt(data.o), final_state.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(data.o.data());
  }
  set_prefill_counters(state, 6.0 * total * H * K * K);
}

// Batched decode of 64 sequences whose states sit in a pool of 96 rows (holes between them,
// slots shuffled), one call; beside it the plain step on a dense [64,H,K,V] state. GB/s count
// the state bytes read and written, 2 * 64*H*K*V*4.
void gdr_step_slots(benchmark::State& state, index_t H, index_t K, DeltaGate gate, bool slots) {
  const index_t B = 64, S = slots ? 96 : B;
  GdrBenchData data(B, H, K, gate);  // token b of data is row b of the step
  Tensor<float, 4> pool({S, H, K, K});
  st::fill_uniform(pool.view(), 9, -0.1f, 0.1f);
  std::vector<std::int32_t> rows(static_cast<std::size_t>(S));
  for (index_t i = 0; i < S; ++i) rows[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  std::shuffle(rows.begin(), rows.end(), std::mt19937_64(7));
  rows.resize(static_cast<std::size_t>(B));
  seqmix::GatedDeltaRuleOptions options;
  options.gate = gate;
  seqmix::GatedDeltaRuleStepInputs in;
  in.q = data.q.view()[0], in.k = data.k.view()[0], in.v = data.v.view()[0], in.beta = data.beta.view()[0];
  if (gate == DeltaGate::channel) in.g = data.g.view()[0];
  if (gate == DeltaGate::scalar) in.g_scalar = data.gs.view()[0];
  if (slots) in.batch.state_indices = rows;
  for (auto _ : state) {
    seqmix::gated_delta_rule_step(in, {data.o.view()[0], pool.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(pool.data());
  }
  seqmix::testing::report_gbytes(state, 2.0 * B * H * K * K * 4);
}

// Mixture-of-Memories: M memories, E routes per token drawn as distinct ids, B = 1, HK = HV = H.
void mom_prefill(benchmark::State& state, index_t T, index_t E, index_t M, index_t H, index_t K, bool reference) {
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, K}, 1);
  Tensor<float, 4> k4 = st::random_tensor<4>({1, T * E, H, K}, 2);
  st::normalize_rows(k4);
  const Tensor<float, 5> v = st::random_tensor<5>({1, T, E, H, K}, 3);
  const Tensor<float, 4> beta = st::random_tensor<4>({1, T, E, H}, 4, 0.f, 1.f);
  Tensor<float, 4> gs({1, T, E, H});
  st::fill_log_gate(gs.view(), 5, -0.1f, 0.f);
  Tensor<std::int32_t, 3> memory({1, T, E});
  Tensor<float, 3> weight({1, T, E});
  std::mt19937_64 rng(6);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(M));
  for (index_t t = 0; t < T; ++t) {
    for (index_t m = 0; m < M; ++m) ids[static_cast<std::size_t>(m)] = static_cast<std::int32_t>(m);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (index_t e = 0; e < E; ++e) memory.view()(0, t, e) = ids[static_cast<std::size_t>(e)], weight.view()(0, t, e) = 1.f / E;
  }
  seqmix::MomInputs in;
  in.q = q.view(), in.k = seqmix::ConstView<float, 5>(k4.data(), {1, T, E, H, K}), in.v = v.view(), in.beta = beta.view();
  in.g_scalar = gs.view(), in.memory = memory.view(), in.weight = weight.view();
  Tensor<float, 4> o({1, T, H, K});
  Tensor<float, 5> s({1, M, H, K, K});
  seqmix::MomOptions options;
  options.memories = M;
  for (auto _ : state) {
    if (reference)
      seqmix::reference::mom(in, {o.view(), s.view()}, options);
    else
      seqmix::mom(in, {o.view(), s.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  set_prefill_counters(state, 6.0 * T * E * H * K * K);
}

void register_all() {
  using seqmix::DeltaAlgorithm;
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  const DeltaAlgorithm autom = DeltaAlgorithm::automatic, chunked = DeltaAlgorithm::chunked,
                       recurrent = DeltaAlgorithm::recurrent;
  // Targets (issue #5): h32 t512 <= 10 ms, h32 t1024 <= 20 ms, h4 t1024 <= 3 ms.
  struct Shape { const char* name; index_t T, H, K; };
  for (const Shape& s : {Shape{"h32_k128_t512", 512, 32, 128}, Shape{"h32_k128_t1024", 1024, 32, 128},
                         Shape{"h4_k128_t1024", 1024, 4, 128}, Shape{"h16_k64_t1024", 1024, 16, 64}}) {
    const std::string base = std::string("gated_delta_rule/prefill/") + s.name;
    reg(base, [s, autom](benchmark::State& st) { gdr_prefill(st, s.T, s.H, s.K, DeltaGate::scalar, autom, false, true); });
    reg(base + "/chunked", [s, chunked](benchmark::State& st) { gdr_prefill(st, s.T, s.H, s.K, DeltaGate::scalar, chunked, false); });
    reg(base + "/recurrent", [s, recurrent](benchmark::State& st) { gdr_prefill(st, s.T, s.H, s.K, DeltaGate::scalar, recurrent, false); });
  }
  // One head on two threads: two blocks of 64 value columns, on which the choice counts (issue 19 item 4).
  reg("gated_delta_rule/prefill/h1_k128_t1024",
      [autom](benchmark::State& st) { gdr_prefill(st, 1024, 1, 128, DeltaGate::scalar, autom, false, true); });
  // The chunked form's phase split against one core's FMA rate (issue 19 item 4).
  reg("gated_delta_rule/phases/h16_k64_t1024", [](benchmark::State& st) { gdr_phases(st, 1024, 16, 64); });
  reg("gated_delta_rule/phases/h32_k128_t1024", [](benchmark::State& st) { gdr_phases(st, 1024, 32, 128); });
  reg("gated_delta_rule/phases/h32_k128_t512", [](benchmark::State& st) { gdr_phases(st, 512, 32, 128); });
  reg("kda/phases/h32_k128_t512", [](benchmark::State& st) { gdr_phases(st, 512, 32, 128, DeltaGate::channel); });
  reg("kda/phases/h32_k128_t512/c32",
      [](benchmark::State& st) { gdr_phases(st, 512, 32, 128, DeltaGate::channel, 32); });
  // bf16 dot products (issue 19 item 3; target >= 1.4x the fp32 chunked prefill).
  reg("gated_delta_rule/bf16/prefill/h32_k128_t1024",
      [](benchmark::State& st) { gdr_prefill_bf16(st, 1024, 32, 128, DeltaGate::scalar); });
  reg("gated_delta_rule/bf16/prefill/h16_k64_t2048",
      [](benchmark::State& st) { gdr_prefill_bf16(st, 2048, 16, 64, DeltaGate::scalar); });
  reg("kda/bf16/prefill/h32_k128_t1024", [](benchmark::State& st) { gdr_prefill_bf16(st, 1024, 32, 128, DeltaGate::channel); });
  // bf16 storage of q/k/v (issue 19 item 3), with fp32 and with bf16 dot products.
  reg("gated_delta_rule/prefill/h16_k128_t4096/chunked_bf16io",
      [](benchmark::State& st) { gdr_prefill_bf16_io(st, 4096, 16, 128, seqmix::Bf16Compute::fp32); });
  reg("gated_delta_rule/bf16/prefill/h16_k128_t4096/bf16io",
      [](benchmark::State& st) { gdr_prefill_bf16_io(st, 4096, 16, 128, seqmix::Bf16Compute::dot); });
  reg("gated_delta_rule/prefill/h32_k128_t64/reference",
      [autom](benchmark::State& st) { gdr_prefill(st, 64, 32, 128, DeltaGate::scalar, autom, true); });
  reg("mom/prefill/m8_top2_h16_k64_t1024", [](benchmark::State& st) { mom_prefill(st, 1024, 2, 8, 16, 64, false); });
  reg("mom/prefill/m8_top2_h16_k64_t64/reference", [](benchmark::State& st) { mom_prefill(st, 64, 2, 8, 16, 64, true); });
  reg("gated_delta_rule/prefill/h16_k64_t2048", [autom](benchmark::State& st) { gdr_prefill(st, 2048, 16, 64, DeltaGate::scalar, autom, false); });
  reg("delta_rule/prefill/h32_k128_t512", [autom](benchmark::State& st) { delta_prefill(st, 512, 32, 128, autom); });
  // Targets: step h32 k128 <= 70 us, h16 k64 <= 12 us.
  reg("gated_delta_rule/step/h32_k128", [](benchmark::State& st) { gdr_step(st, 32, 128, DeltaGate::scalar); });
  reg("gated_delta_rule/step/h16_k64", [](benchmark::State& st) { gdr_step(st, 16, 64, DeltaGate::scalar); });
  // KDA targets: prefill h32 k128 t64 <= 2.5 ms, step <= 90 us.
  reg("kda/prefill/h32_k128_t64", [autom](benchmark::State& st) { gdr_prefill(st, 64, 32, 128, DeltaGate::channel, autom, false); });
  reg("kda/prefill/h32_k128_t64/chunked", [chunked](benchmark::State& st) { gdr_prefill(st, 64, 32, 128, DeltaGate::channel, chunked, false); });
  reg("kda/prefill/h32_k128_t512", [autom](benchmark::State& st) { gdr_prefill(st, 512, 32, 128, DeltaGate::channel, autom, false); });
  reg("kda/prefill/h32_k128_t512/chunked", [chunked](benchmark::State& st) { gdr_prefill(st, 512, 32, 128, DeltaGate::channel, chunked, false); });
  reg("kda/prefill/h32_k128_t64/reference", [autom](benchmark::State& st) { gdr_prefill(st, 64, 32, 128, DeltaGate::channel, autom, true); });
  reg("kda/step/h32_k128", [](benchmark::State& st) { gdr_step(st, 32, 128, DeltaGate::channel); });
  // rwkv7 targets: prefill h32 k64 t512 <= 2.5 ms, step <= 8 us.
  reg("rwkv7/prefill/h32_k64_t512", [](benchmark::State& st) { rwkv7_prefill(st, 512, 32, 64, false); });
  // 16 MiB of rows per input: the rows come from memory (delta_update/README.md, rwkv7 pairs).
  reg("rwkv7/prefill/h32_k64_t2048", [](benchmark::State& st) { rwkv7_prefill(st, 2048, 32, 64, false); });
  reg("rwkv7/prefill/h32_k64_t64/reference", [](benchmark::State& st) { rwkv7_prefill(st, 64, 32, 64, true); });
  reg("rwkv7/step/h32_k64", [](benchmark::State& st) { rwkv7_step(st, 32, 64); });
  // Serving (issue 14): varlen within 15% of the dense call and faster than padding; slotted
  // decode at >= 70% of streaming bandwidth, beside the plain B = 64 step.
  for (auto form : {std::pair<VarlenForm, const char*>{VarlenForm::packed, "packed"}, {VarlenForm::dense, "dense"},
                    {VarlenForm::padded, "padded"}}) {
    reg(std::string("gated_delta_rule/varlen/h16_k128/") + form.second,
        [form](benchmark::State& st) { gdr_varlen(st, 16, 128, DeltaGate::scalar, form.first); });
    reg(std::string("kda/varlen/h16_k128/") + form.second,
        [form](benchmark::State& st) { gdr_varlen(st, 16, 128, DeltaGate::channel, form.first); });
  }
  reg("gated_delta_rule_step/slots/b64_h16_k128", [](benchmark::State& st) { gdr_step_slots(st, 16, 128, DeltaGate::scalar, true); });
  reg("gated_delta_rule_step/slots/b64_h16_k128/dense", [](benchmark::State& st) { gdr_step_slots(st, 16, 128, DeltaGate::scalar, false); });
  reg("kda_step/slots/b64_h16_k128", [](benchmark::State& st) { gdr_step_slots(st, 16, 128, DeltaGate::channel, true); });
  reg("kda_step/slots/b64_h16_k128/dense", [](benchmark::State& st) { gdr_step_slots(st, 16, 128, DeltaGate::channel, false); });
}

const int kRegistered = (register_all(), 0);

}  // namespace
