// Benchmarks of the chunked-scan mixers: Mega (damped EMA + chunk-diagonal attention), Aaren
// (attention as a scan) and the parallel Newton solver against the sequential loop. Two threads
// (the caller plus one worker) unless the name ends in /reference (the plain-loop baseline, one
// thread). The machine is shared: run with --benchmark_repetitions=5 and read the minimum.
//
// Counters:
//   mega     GFLOP/s: EMA 4*D*N per token + attention 4*c/2*D (q.k and p.v, causal half chunk) per token
//   aaren    GB/s: k and v read, o written once (4*H*(Dk+2*Dv) bytes per token)
//   newton   iterations of the last run, and GB/s of the sequential loop's ideal traffic
//
// Serving cases (issue 14): <op>/varlen packs 8 sequences of 17..2048 tokens (4689 in all) with
// cu_seqlens and states in slots, beside one dense call over the same number of tokens
// (/dense_same_tokens); aaren_step/slots decodes 64 rows through a pool of 96 slots with holes
// beside a plain B=64 step. GB/s on real tokens (varlen) or on the state read and written (step).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/chunked/aaren/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const seqmix::ThreadPool& pool() { return st::two_thread_pool(); }


// Mega: T=8192, D=1024, N=16, chunk 128, H=1 (Mega's single attention head over Z, Dk=1024) and
// Dv=1024; the step at position 8192+64 (half a chunk in the cache).
struct MegaBench {
  index_t B = 1, T, D = 1024, N = 16, H = 1, Dv = 1024, c = 128;
  Tensor<float, 3> x;
  Tensor<float, 4> v, o;
  Tensor<float, 2> alpha, delta, beta, eta;
  Tensor<float, 1> qs, qb, ks, kb;
  explicit MegaBench(index_t T_)
      : T(T_), x(st::random_tensor<3>({1, T_, 1024}, 1)), v(st::random_tensor<4>({1, T_, 1, 1024}, 2)), o({1, T_, 1, 1024}),
        alpha(st::random_tensor<2>({1024, 16}, 3, -3.f, 3.f)), delta(st::random_tensor<2>({1024, 16}, 4, -3.f, 3.f)),
        beta(st::random_tensor<2>({1024, 16}, 5)), eta(st::random_tensor<2>({1024, 16}, 6)),
        qs(st::random_tensor<1>({1024}, 7)), qb(st::random_tensor<1>({1024}, 8)), ks(st::random_tensor<1>({1024}, 9)),
        kb(st::random_tensor<1>({1024}, 10)) {}
  seqmix::MegaParams params() const {
    return {alpha.cview(), delta.cview(), beta.cview(), eta.cview(), qs.cview(), qb.cview(), ks.cview(), kb.cview()};
  }
  double flops_per_token() const { return 4.0 * D * N + 4.0 * (c / 2.0) * D; }
};

void BM_mega_prefill(benchmark::State& state, bool reference) {
  MegaBench m(8192);
  seqmix::MegaOptions options;
  options.chunk_size = m.c;
  const seqmix::MegaInputs in{m.x.cview(), m.v.cview(), m.params(), {}};
  for (auto _ : state) {
    if (reference)
      seqmix::reference::mega(in, {m.o.view(), {}, {}, {}, {}}, options);
    else
      seqmix::mega(in, {m.o.view(), {}, {}, {}, {}}, options, pool());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, m.flops_per_token() * m.T);
}

void BM_mega_step(benchmark::State& state) {
  MegaBench m(1);
  seqmix::MegaOptions options;
  options.chunk_size = m.c;
  Tensor<float, 3> ema({1, m.D, m.N}), o({1, 1, m.Dv});
  Tensor<float, 4> kc({1, m.c, 1, m.D}), vc({1, m.c, 1, m.Dv});
  ema.fill(0.f), kc.fill(0.f), vc.fill(0.f);
  const seqmix::MegaStepInputs in{m.x.cview().select(1, 0), m.v.cview().select(1, 0), m.params(), 8192 + 64};
  for (auto _ : state) {
    seqmix::mega_step(in, o.view(), {ema.view(), kc.view(), vc.view()}, options, pool());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, (4.0 * m.D * m.N + 4.0 * 65 * m.D));
}

// Aaren: T=8192, H=16, Dk=Dv=64.
struct AarenBench {
  index_t B = 1, T, H = 16, D = 64;
  Tensor<float, 2> query;
  Tensor<float, 4> k, v, o;
  explicit AarenBench(index_t T_)
      : T(T_), query(st::random_tensor<2>({16, 64}, 1)), k(st::random_tensor<4>({1, T_, 16, 64}, 2)),
        v(st::random_tensor<4>({1, T_, 16, 64}, 3)), o({1, T_, 16, 64}) {}
};

void BM_aaren_prefill(benchmark::State& state, int form) {  // 0 fast, 1 fast time split, 2 reference
  AarenBench a(form == 2 ? 1024 : 8192);  // the O(T^2) reference runs on T=1024 (cost x64 smaller)
  seqmix::AarenOptions options;
  if (form == 1) options.split = seqmix::AarenSplit::time;
  const seqmix::AarenInputs in{a.query.cview(), a.k.cview(), a.v.cview(), {}, {}};
  for (auto _ : state) {
    if (form == 2)
      seqmix::reference::aaren(in, {a.o.view(), {}, {}}, options);
    else
      seqmix::aaren(in, {a.o.view(), {}, {}}, options, pool());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 4.0 * a.H * 3 * a.D * a.T);
}

void BM_aaren_step(benchmark::State& state) {
  AarenBench a(1);
  Tensor<float, 2> m({1, 16}), l({1, 16});
  Tensor<float, 3> acc({1, 16, 64}), o({1, 16, 64});
  const seqmix::AarenState s{m.view(), l.view(), acc.view()};
  seqmix::aaren_reset_state(s);
  for (auto _ : state) {
    seqmix::aaren_step({a.query.cview(), a.k.cview().select(1, 0), a.v.cview().select(1, 0), {}}, o.view(), s, {}, pool());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 4.0 * 16 * 3 * 64);
}

// The serving batch of the varlen cases: 8 sequences packed, each in its own slot of a pool of
// 12 rows (holes at 1, 4, 7, 10), all starting from their slot's state.
struct VarlenBatch {
  std::vector<std::int64_t> cu{0}, slots;
  std::vector<std::uint8_t> init;
  index_t total = 0, pool_rows = 12;
  VarlenBatch() {
    const index_t lengths[] = {17, 33, 100, 255, 512, 700, 1024, 2048};
    const std::int64_t rows[] = {0, 2, 3, 5, 6, 8, 9, 11};
    for (int n = 0; n < 8; ++n) {
      cu.push_back(cu.back() + lengths[n]);
      slots.push_back(rows[n]);
      init.push_back(1);
    }
    total = cu.back();
  }
  seqmix::SequenceBatch batch() const {
    seqmix::SequenceBatch b;
    b.cu_seqlens = cu;
    b.state_indices = slots;
    b.has_initial_state = init;
    return b;
  }
};

void BM_aaren_varlen(benchmark::State& state, bool packed) {
  const VarlenBatch vb;
  const index_t H = 16, D = 64;
  AarenBench a(vb.total);
  Tensor<float, 2> m = st::random_tensor<2>({vb.pool_rows, H}, 4), l = st::random_tensor<2>({vb.pool_rows, H}, 5, 1.f, 2.f);
  Tensor<float, 3> acc = st::random_tensor<3>({vb.pool_rows, H, D}, 6);
  seqmix::AarenInputs in{a.query.cview(), a.k.cview(), a.v.cview(), {}, {}};
  seqmix::AarenOutputs out{a.o.view(), {}, {}};
  if (packed) {
    in.initial_state = {m.cview(), l.cview(), acc.cview()};
    in.batch = vb.batch();
    out.final_state = {m.view(), l.view(), acc.view()};
  }
  for (auto _ : state) {
    seqmix::aaren(in, out, {}, pool());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 4.0 * H * 3 * D * vb.total);
}

void BM_aaren_step_slots(benchmark::State& state, bool slotted) {
  const index_t B = 64, S = 96, H = 16, D = 64;
  const Tensor<float, 2> query = st::random_tensor<2>({H, D}, 1);
  const Tensor<float, 3> k = st::random_tensor<3>({B, H, D}, 2), v = st::random_tensor<3>({B, H, D}, 3);
  const index_t rows = slotted ? S : B;
  Tensor<float, 2> m = st::random_tensor<2>({rows, H}, 4), l = st::random_tensor<2>({rows, H}, 5, 1.f, 2.f);
  Tensor<float, 3> acc = st::random_tensor<3>({rows, H, D}, 6), o({B, H, D});
  std::vector<std::int32_t> slots(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) slots[static_cast<std::size_t>(b)] = static_cast<std::int32_t>((b * 3) / 2);  // holes
  seqmix::AarenStepInputs in{query.cview(), k.cview(), v.cview(), {}};
  if (slotted) in.batch.state_indices = slots;
  const seqmix::AarenState s{m.view(), l.view(), acc.view()};
  for (auto _ : state) {
    seqmix::aaren_step(in, o.view(), s, {}, pool());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 2.0 * 4.0 * B * H * (D + 2));  // the state, read and written
}

// Newton vs the sequential loop, B=1. Inputs in [-1,1], recurrent weights in [-1,1]; the LSTM's
// forget-gate peephole wf in [-1,0] (a positive peephole lets the true cell state grow without
// bound over 65536 steps).
template <class Cell>
struct NewtonBench {
  std::vector<Tensor<float, 3>> streams;
  std::vector<Tensor<float, 1>> params;
  Tensor<float, 3> h;
  NewtonBench(index_t T, index_t D) : h({1, T, D}) {
    for (int s = 0; s < Cell::kInputs; ++s) streams.push_back(st::random_tensor<3>({1, T, D}, 20 + s));
    for (int s = 0; s < Cell::kParams; ++s) params.push_back(st::random_tensor<1>({D}, 30 + s, -1.f, s == 1 && Cell::kParams == 3 ? 0.f : 1.f));
  }
  seqmix::NonlinearRecurrenceInputs<Cell> inputs() const {
    seqmix::NonlinearRecurrenceInputs<Cell> in;
    for (int s = 0; s < Cell::kInputs; ++s) in.inputs[s] = streams[s].cview();
    for (int s = 0; s < Cell::kParams; ++s) in.params[s] = params[s].cview();
    return in;
  }
};

template <class Cell>
void BM_newton(benchmark::State& state, index_t T, index_t D, int form) {  // 0 newton, 1 sequential, 2 reference
  NewtonBench<Cell> n(T, D);
  const auto in = n.inputs();
  seqmix::NewtonReport report;
  for (auto _ : state) {
    if (form == 0)
      report = seqmix::nonlinear_recurrence_newton<Cell>(in, {n.h.view(), {}}, {}, pool());
    else if (form == 1)
      seqmix::nonlinear_recurrence<Cell>(in, {n.h.view(), {}}, pool());
    else
      seqmix::reference::nonlinear_recurrence<Cell>(in, {n.h.view(), {}});
    benchmark::ClobberMemory();
  }
  if (form == 0) {
    state.counters["iterations"] = static_cast<double>(report.iterations);
    state.counters["converged"] = report.converged ? 1 : 0;
  }
  st::report_gbytes(state, 4.0 * (Cell::kInputs + 1) * T * D);
}

// The sequential loop over 8 packed sequences in slots against one dense call over as many tokens.
void BM_recurrence_varlen(benchmark::State& state, bool packed) {
  using Cell = seqmix::MinGruCell;
  const VarlenBatch vb;
  const index_t D = 256;
  NewtonBench<Cell> n(vb.total, D);
  auto in = n.inputs();
  Tensor<float, 2> h_pool = st::random_tensor<2>({vb.pool_rows, D}, 40);
  seqmix::NonlinearRecurrenceOutputs out{n.h.view(), {}};
  if (packed) {
    in.h0 = h_pool.cview();
    in.batch = vb.batch();
    out.h_last = h_pool.view();
  }
  for (auto _ : state) {
    seqmix::nonlinear_recurrence<Cell>(in, out, pool());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 4.0 * (Cell::kInputs + 1) * vb.total * D);
}

template <class Cell>
void register_newton() {
  for (index_t D : {16, 64, 256})
    for (index_t T : {1024, 65536}) {
      const std::string shape = "D" + std::to_string(D) + "_T" + std::to_string(T);
      const std::string base = std::string("newton/") + Cell::kName + "/";
      benchmark::RegisterBenchmark((base + shape).c_str(), BM_newton<Cell>, T, D, 0)->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark((base + shape + "/sequential").c_str(), BM_newton<Cell>, T, D, 1)->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark((base + shape + "/reference").c_str(), BM_newton<Cell>, T, D, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
    }
}

const bool registered = [] {
  benchmark::RegisterBenchmark("mega/prefill/T8192_D1024_N16_c128", BM_mega_prefill, false)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("mega/prefill/T8192_D1024_N16_c128/reference", BM_mega_prefill, true)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
  benchmark::RegisterBenchmark("mega/step/D1024_N16_c128", BM_mega_step)->Unit(benchmark::kMicrosecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/prefill/T8192_H16_D64", BM_aaren_prefill, 0)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/prefill/T8192_H16_D64/time_split", BM_aaren_prefill, 1)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/prefill/T1024_H16_D64/reference", BM_aaren_prefill, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/step/H16_D64", BM_aaren_step)->Unit(benchmark::kMicrosecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/varlen/8seq_4689tok_H16_D64", BM_aaren_varlen, true)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren/varlen/8seq_4689tok_H16_D64/dense_same_tokens", BM_aaren_varlen, false)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren_step/slots/B64_S96_H16_D64", BM_aaren_step_slots, true)->Unit(benchmark::kMicrosecond)->UseRealTime();
  benchmark::RegisterBenchmark("aaren_step/slots/B64_H16_D64/plain", BM_aaren_step_slots, false)->Unit(benchmark::kMicrosecond)->UseRealTime();
  benchmark::RegisterBenchmark("nonlinear_recurrence/varlen/mingru_8seq_4689tok_D256", BM_recurrence_varlen, true)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("nonlinear_recurrence/varlen/mingru_8seq_4689tok_D256/dense_same_tokens", BM_recurrence_varlen, false)->Unit(benchmark::kMillisecond)->UseRealTime();
  register_newton<seqmix::MinGruCell>();
  register_newton<seqmix::DiagLstmCell>();
  return true;
}();

}  // namespace
