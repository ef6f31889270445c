// Context parallelism on one machine: one long sequence with few heads, where the operators'
// own split over (sequence, head) leaves threads idle, split by position across the 2-thread
// pool with the slice functions (docs/operators.md section 15) against one call on the same pool.
//
//   cp_threads/<op>/one_call/<shape>   the operator itself on the 2-thread pool (the baseline)
//   cp_threads/<op>/split/<shape>      context_parallel_<op>: 2 slices from zero at once, the
//                                      composed initial states, the corrections at once
// GFLOP/s counts the recurrence's work per token and head (GLA 4KV, ssd 4PN, Gated DeltaNet
// 6KV), the same for both forms, so the ratio of the two is the speed-up.
#include <benchmark/benchmark.h>

#include <string>

#include "seqmix/linear_attention/gated_delta_rule/slice.hpp"
#include "seqmix/linear_attention/gla/slice.hpp"
#include "seqmix/ssm/ssd/slice.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

enum class CpForm { one_call, split };

// One sequence, one head of K = V = 128 (or two Mamba-2 heads): the shape where a call cannot
// use the second core.
struct CpShape {
  const char* name;
  index_t T, H, K, V;
};
const CpShape kGla = {"B1_H1_K128_V128_T16384", 16384, 1, 128, 128};
const CpShape kSsd = {"B1_H2_P64_N128_T16384", 16384, 2, 128, 64};  // K = N, V = P
const CpShape kGdn = {"B1_H1_K128_V128_T8192", 8192, 1, 128, 128};

void cp_gla(benchmark::State& state, CpForm form) {
  const CpShape& s = kGla;
  const Tensor<float, 4> q = st::random_tensor<4>({1, s.T, s.H, s.K}, 1), k = st::random_tensor<4>({1, s.T, s.H, s.K}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({1, s.T, s.H, s.V}, 3);
  const Tensor<float, 4> g = st::random_tensor<4>({1, s.T, s.H, s.K}, 4, -0.1f, 0.f);
  Tensor<float, 4> o({1, s.T, s.H, s.V}), fin({1, s.H, s.K, s.V});
  const seqmix::GatedLinearAttentionInputs in{q.view(), k.view(), v.view(), g.view()};
  for (auto _ : state) {
    if (form == CpForm::one_call)
      seqmix::gated_linear_attention(in, {o.view(), fin.view()}, {}, st::two_thread_pool());
    else
      seqmix::context_parallel_gated_linear_attention(in, {o.view(), fin.view()}, {}, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 4.0 * static_cast<double>(s.T * s.H * s.K * s.V));
}

void cp_ssd(benchmark::State& state, CpForm form) {
  const CpShape& s = kSsd;
  const index_t N = s.K, P = s.V;
  const Tensor<float, 4> x = st::random_tensor<4>({1, s.T, s.H, P}, 1);
  const Tensor<float, 3> dt = st::random_tensor<3>({1, s.T, s.H}, 2, -3.f, 0.f);
  const Tensor<float, 1> A = st::random_tensor<1>({s.H}, 3, -1.f, -0.1f);
  const Tensor<float, 4> Bm = st::random_tensor<4>({1, s.T, 1, N}, 4), Cm = st::random_tensor<4>({1, s.T, 1, N}, 5);
  Tensor<float, 4> y({1, s.T, s.H, P}), fin({1, s.H, P, N});
  const seqmix::SsdInputs in{x.view(), dt.view(), A.view(), Bm.view(), Cm.view()};
  seqmix::SsdOptions options;
  options.dt_softplus = true;
  for (auto _ : state) {
    if (form == CpForm::one_call)
      seqmix::ssd(in, {y.view(), fin.view()}, options, st::two_thread_pool());
    else
      seqmix::context_parallel_ssd(in, {y.view(), fin.view()}, options, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 4.0 * static_cast<double>(s.T * s.H * P * N));
}

void cp_gdn(benchmark::State& state, CpForm form) {
  const CpShape& s = kGdn;
  const Tensor<float, 4> q = st::random_tensor<4>({1, s.T, s.H, s.K}, 1), k = st::random_tensor<4>({1, s.T, s.H, s.K}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({1, s.T, s.H, s.V}, 3);
  const Tensor<float, 3> beta = st::random_tensor<3>({1, s.T, s.H}, 4, 0.f, 1.f);
  const Tensor<float, 3> g = st::random_tensor<3>({1, s.T, s.H}, 5, -0.1f, 0.f);
  Tensor<float, 4> o({1, s.T, s.H, s.V}), fin({1, s.H, s.K, s.V});
  const seqmix::GatedDeltaRuleInputs in{q.view(), k.view(), v.view(), beta.view(), g.view()};
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  for (auto _ : state) {
    if (form == CpForm::one_call)
      seqmix::gated_delta_rule(in, {o.view(), fin.view()}, options, st::two_thread_pool());
    else
      seqmix::context_parallel_gated_delta_rule(in, {o.view(), fin.view()}, options, st::two_thread_pool());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 6.0 * static_cast<double>(s.T * s.H * s.K * s.V));
}

void cp_register() {
  using Run = void (*)(benchmark::State&, CpForm);
  auto add = [](const std::string& op, const char* shape, Run run) {
    for (const CpForm form : {CpForm::one_call, CpForm::split}) {
      const std::string name = "cp_threads/" + op + (form == CpForm::one_call ? "/one_call/" : "/split/") + shape;
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) { run(state, form); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  };
  add("gla", kGla.name, cp_gla);
  add("ssd", kSsd.name, cp_ssd);
  add("gated_delta_rule", kGdn.name, cp_gdn);
}

const int kCpRegistered = (cp_register(), 0);

}  // namespace
