// Hybrid mixers of the chunked family (BASED, RAT, Infini-attention), 2 threads, B = 1.
// Names: <op>/<prefill|step>/<shape>; the step runs at context T (state prefilled to T tokens and
// rewound after each step so every iteration sees the same context). Each op also runs its
// reference on T = 512 next to the fast form on the same shape (names end in _reference / _fast).
//
// GFLOP/s counts the useful multiply-adds of the definition (2 flops each), per token and head:
//   BASED   linear: 4*Kf*V (state update + read, Kf = 1 + F + F^2) + 2*Kf (normalizer)
//           window: 2*(D + V) * min(t + 1, W)
//   RAT     2*(2*D) * (c + 1) with c = t / L (chunk summaries + own state), per query head;
//           the recurrence (6*D per KV head) is counted too
//   Infini  local: 2*(K + V) * (t % S + 1); memory read 2*K*V + 2*K per query head;
//           memory write 2*K*V per KV head (the delta rule's extra read is not counted)
// based/slots/<shape>_B64: a serving step of 64 sequences in a pool of 64 slots at different
// positions (rows spread over the threads), beside ..._per_row_calls: the same rows as 64 calls
// of one slotted row each (what a slotted step cost when it ran one dense step per row).
// The machine is shared and noisy: run with --benchmark_repetitions=N and read the min.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/chunked/rat/step.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const seqmix::Executor& pool() { return st::two_thread_pool(); }

void set_rate(benchmark::State& state, double flops) {
  seqmix::testing::report_gflops(state, flops);
}

// ---- BASED: H = 16, feature dim F = 16, head dim 64, window 64 (the paper's 360M config) ----
constexpr index_t kBasedH = 16, kBasedF = 16, kBasedD = 64, kBasedW = 64;

double based_flops(index_t t0, index_t T) {
  const double Kf = 1 + kBasedF + kBasedF * kBasedF, V = kBasedD;
  double f = 0;
  for (index_t t = t0; t < t0 + T; ++t)
    f += 4 * Kf * V + 2 * Kf + 2.0 * (kBasedD + V) * static_cast<double>(std::min(t + 1, kBasedW));
  return f * kBasedH;
}

struct BasedProblem {
  index_t T;
  Tensor<float, 4> qf, kf, q, k, v, o;
  Tensor<float, 4> kv, wk, wv;
  Tensor<float, 3> z;
  seqmix::BasedState st_;
  explicit BasedProblem(index_t T_)
      : T(T_),
        qf(st::random_tensor<4>({1, T, kBasedH, kBasedF}, 1)),
        kf(st::random_tensor<4>({1, T, kBasedH, kBasedF}, 2)),
        q(st::random_tensor<4>({1, T, kBasedH, kBasedD}, 3)),
        k(st::random_tensor<4>({1, T, kBasedH, kBasedD}, 4)),
        v(st::random_tensor<4>({1, T, kBasedH, kBasedD}, 5)),
        o({1, T, kBasedH, kBasedD}),
        kv({1, kBasedH, 1 + kBasedF + kBasedF * kBasedF, kBasedD}),
        wk({1, kBasedW, kBasedH, kBasedD}),
        wv({1, kBasedW, kBasedH, kBasedD}),
        z({1, kBasedH, 1 + kBasedF + kBasedF * kBasedF}) {
    st_.kv = kv.view(), st_.normalizer = z.view(), st_.window_k = wk.view(), st_.window_v = wv.view();
  }
  seqmix::BasedInputs inputs() const { return {qf.view(), kf.view(), q.view(), k.view(), v.view()}; }
  seqmix::BasedOptions options() const {
    seqmix::BasedOptions o_;
    o_.window = kBasedW;
    return o_;
  }
};

void BM_based_prefill(benchmark::State& state, index_t T, bool reference) {
  BasedProblem p(T);
  for (auto _ : state) {
    if (reference)
      seqmix::reference::based(p.inputs(), {p.o.view()}, p.options());
    else
      seqmix::based(p.inputs(), {p.o.view()}, p.options(), nullptr, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, based_flops(0, T));
}

void BM_based_step(benchmark::State& state, index_t T) {
  BasedProblem p(T);
  seqmix::based(p.inputs(), {p.o.view()}, p.options(), &p.st_, pool());
  const seqmix::BasedStepInputs in{p.qf.view().select(1, 0), p.kf.view().select(1, 0), p.q.view().select(1, 0),
                                   p.k.view().select(1, 0), p.v.view().select(1, 0)};
  for (auto _ : state) {
    seqmix::based_step(in, {p.o.view().select(1, 0)}, p.st_, p.options(), pool());
    p.st_.position = T;
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, based_flops(T, 1));
}

// B rows of a BASED pool of B slots, slot b at position 100 + 7 b (every window full, ring slots
// differ); each iteration rewinds the positions.
void BM_based_slots(benchmark::State& state, index_t B, bool per_row_calls) {
  const index_t Kf = 1 + kBasedF + kBasedF * kBasedF;
  const Tensor<float, 3> qf = st::random_tensor<3>({B, kBasedH, kBasedF}, 1), kf = st::random_tensor<3>({B, kBasedH, kBasedF}, 2);
  const Tensor<float, 3> q = st::random_tensor<3>({B, kBasedH, kBasedD}, 3), k = st::random_tensor<3>({B, kBasedH, kBasedD}, 4);
  const Tensor<float, 3> v = st::random_tensor<3>({B, kBasedH, kBasedD}, 5);
  Tensor<float, 3> o({B, kBasedH, kBasedD});
  Tensor<float, 4> kv = st::random_tensor<4>({B, kBasedH, Kf, kBasedD}, 6, -0.01f, 0.01f);
  Tensor<float, 3> z = st::random_tensor<3>({B, kBasedH, Kf}, 7, 0.5f, 1.f);
  Tensor<float, 4> wk = st::random_tensor<4>({B, kBasedW, kBasedH, kBasedD}, 8), wv = st::random_tensor<4>({B, kBasedW, kBasedH, kBasedD}, 9);
  Tensor<std::int64_t, 1> positions({B});
  std::vector<std::int32_t> slots(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) slots[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(B - 1 - b);
  seqmix::BasedState pool_state;
  pool_state.kv = kv.view(), pool_state.normalizer = z.view(), pool_state.window_k = wk.view(), pool_state.window_v = wv.view();
  pool_state.positions = positions.view();
  seqmix::BasedOptions options;
  options.window = kBasedW;
  for (auto _ : state) {
    for (index_t b = 0; b < B; ++b) positions(b) = 100 + 7 * b;
    if (per_row_calls) {
      for (index_t b = 0; b < B; ++b) {
        seqmix::BasedStepInputs in{qf.view().slice(0, b, 1), kf.view().slice(0, b, 1), q.view().slice(0, b, 1),
                                   k.view().slice(0, b, 1), v.view().slice(0, b, 1), {}};
        in.batch.state_indices = seqmix::ConstView<std::int32_t, 1>(slots.data() + b, {1}, {1});
        seqmix::based_step(in, {o.view().slice(0, b, 1)}, pool_state, options, pool());
      }
    } else {
      seqmix::BasedStepInputs in{qf.view(), kf.view(), q.view(), k.view(), v.view(), {}};
      in.batch.state_indices = slots;
      seqmix::based_step(in, {o.view()}, pool_state, options, pool());
    }
    benchmark::DoNotOptimize(o.data());
  }
  set_rate(state, based_flops(100 + 7 * B / 2, 1) * static_cast<double>(B));
}

// ---- RAT: H = 16, D = 64, L = 16 ----
constexpr index_t kRatH = 16, kRatD = 64, kRatL = 16;

double rat_flops(index_t t0, index_t T) {
  double f = 0;
  for (index_t t = t0; t < t0 + T; ++t) f += 2.0 * 2 * kRatD * static_cast<double>(t / kRatL + 1) + 6.0 * kRatD;
  return f * kRatH;
}

struct RatProblem {
  index_t T;
  Tensor<float, 4> q, k, v, g, o, ck, cv;
  Tensor<float, 3> kr, vr;
  seqmix::RatState st_;
  explicit RatProblem(index_t T_)
      : T(T_),
        q(st::random_tensor<4>({1, T, kRatH, kRatD}, 1)),
        k(st::random_tensor<4>({1, T, kRatH, kRatD}, 2)),
        v(st::random_tensor<4>({1, T, kRatH, kRatD}, 3)),
        g(st::random_tensor<4>({1, T, kRatH, kRatD}, 4, -1.f, 0.f)),
        o({1, T, kRatH, kRatD}),
        ck({1, T / kRatL + 1, kRatH, kRatD}),
        cv({1, T / kRatL + 1, kRatH, kRatD}),
        kr({1, kRatH, kRatD}),
        vr({1, kRatH, kRatD}),
        st_{ck.view(), cv.view(), kr.view(), vr.view(), 0} {}
  seqmix::RatInputs inputs() const { return {q.view(), k.view(), v.view(), g.view()}; }
  seqmix::RatOptions options() const {
    seqmix::RatOptions o_;
    o_.chunk_size = kRatL;
    return o_;
  }
};

void BM_rat_prefill(benchmark::State& state, index_t T, bool reference) {
  RatProblem p(T);
  for (auto _ : state) {
    if (reference)
      seqmix::reference::rat(p.inputs(), {p.o.view()}, p.options());
    else
      seqmix::rat(p.inputs(), {p.o.view()}, p.options(), nullptr, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, rat_flops(0, T));
}

void BM_rat_step(benchmark::State& state, index_t T) {
  RatProblem p(T);
  seqmix::rat(p.inputs(), {p.o.view()}, p.options(), &p.st_, pool());
  const seqmix::RatStepInputs in{p.q.view().select(1, 0), p.k.view().select(1, 0), p.v.view().select(1, 0),
                                 p.g.view().select(1, 0)};
  for (auto _ : state) {
    seqmix::rat_step(in, {p.o.view().select(1, 0)}, p.st_, p.options(), pool());
    p.st_.position = T;
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, rat_flops(T, 1));
}

// ---- Infini-attention: H = 16, K = V = 64, segment 2048 ----
constexpr index_t kInfH = 16, kInfD = 64, kInfS = 2048;

double infini_flops(index_t t0, index_t T) {
  double f = 0;
  for (index_t t = t0; t < t0 + T; ++t)
    f += kInfH * (2.0 * 2 * kInfD * static_cast<double>(t % kInfS + 1) + 2.0 * kInfD * kInfD + 2 * kInfD) +
         kInfH * 2.0 * kInfD * kInfD;
  return f;
}

struct InfiniProblem {
  index_t T;
  Tensor<float, 4> q, k, v, o, m, sk, sv;
  Tensor<float, 3> z;
  Tensor<float, 1> beta;
  seqmix::InfiniAttentionState st_;
  explicit InfiniProblem(index_t T_)
      : T(T_),
        q(st::random_tensor<4>({1, T, kInfH, kInfD}, 1)),
        k(st::random_tensor<4>({1, T, kInfH, kInfD}, 2)),
        v(st::random_tensor<4>({1, T, kInfH, kInfD}, 3)),
        o({1, T, kInfH, kInfD}),
        m({1, kInfH, kInfD, kInfD}),
        sk({1, kInfS, kInfH, kInfD}),
        sv({1, kInfS, kInfH, kInfD}),
        z({1, kInfH, kInfD}),
        beta(st::random_tensor<1>({kInfH}, 4)),
        st_{m.view(), z.view(), sk.view(), sv.view(), 0} {}
  seqmix::InfiniAttentionInputs inputs() const { return {q.view(), k.view(), v.view(), beta.view()}; }
  seqmix::InfiniAttentionOptions options() const {
    seqmix::InfiniAttentionOptions o_;
    o_.segment = kInfS;
    o_.update = seqmix::InfiniMemoryUpdate::delta;
    return o_;
  }
};

void BM_infini_prefill(benchmark::State& state, index_t T, bool reference) {
  InfiniProblem p(T);
  for (auto _ : state) {
    if (reference)
      seqmix::reference::infini_attention(p.inputs(), {p.o.view()}, p.options());
    else
      seqmix::infini_attention(p.inputs(), {p.o.view()}, p.options(), nullptr, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, infini_flops(0, T));
}

// Step at the last token of a segment minus one (T - 1 = 8191 is the end of segment 3; the step
// runs at position T - 2, with 2046 buffered keys and no memory write): the common, costliest
// non-boundary step.
void BM_infini_step(benchmark::State& state, index_t T) {
  InfiniProblem p(T);
  const auto prefix = p.inputs();
  seqmix::InfiniAttentionInputs head{prefix.q.slice(1, 0, T - 2), prefix.k.slice(1, 0, T - 2),
                                     prefix.v.slice(1, 0, T - 2), prefix.beta};
  seqmix::infini_attention(head, {p.o.view().slice(1, 0, T - 2)}, p.options(), &p.st_, pool());
  const seqmix::InfiniAttentionStepInputs in{p.q.view().select(1, 0), p.k.view().select(1, 0),
                                             p.v.view().select(1, 0), p.beta.view()};
  for (auto _ : state) {
    seqmix::infini_attention_step(in, {p.o.view().select(1, 0)}, p.st_, p.options(), pool());
    p.st_.position = T - 2;
    benchmark::DoNotOptimize(p.o.data());
  }
  set_rate(state, infini_flops(T - 2, 1));
}

constexpr index_t kT = 8192, kSmallT = 512;

const bool registered = [] {
  const auto reg = [](const std::string& name, auto fn, auto... args) {
    benchmark::RegisterBenchmark(name.c_str(), fn, args...)->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  const std::string based = "H16_F16_D64_W64", rat = "H16_D64_L16", infini = "H16_D64_S2048_delta";
  reg("based/prefill/" + based + "_T8192", BM_based_prefill, kT, false);
  reg("based/step/" + based + "_T8192", BM_based_step, kT);
  reg("based/slots/" + based + "_B64", BM_based_slots, index_t{64}, false);
  reg("based/slots/" + based + "_B64_per_row_calls", BM_based_slots, index_t{64}, true);
  reg("based/prefill/" + based + "_T512_fast", BM_based_prefill, kSmallT, false);
  reg("based/prefill/" + based + "_T512_reference", BM_based_prefill, kSmallT, true);
  reg("rat/prefill/" + rat + "_T8192", BM_rat_prefill, kT, false);
  reg("rat/step/" + rat + "_T8192", BM_rat_step, kT);
  reg("rat/prefill/" + rat + "_T512_fast", BM_rat_prefill, kSmallT, false);
  reg("rat/prefill/" + rat + "_T512_reference", BM_rat_prefill, kSmallT, true);
  reg("infini/prefill/" + infini + "_T8192", BM_infini_prefill, kT, false);
  reg("infini/step/" + infini + "_T8192", BM_infini_step, kT);
  reg("infini/prefill/" + infini + "_T512_fast", BM_infini_prefill, kSmallT, false);
  reg("infini/prefill/" + infini + "_T512_reference", BM_infini_prefill, kSmallT, true);
  return true;
}();

}  // namespace
