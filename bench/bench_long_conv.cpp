// Long convolution benchmarks (issue 16), 2 threads, D = 768 channels (Hyena / H3 at GPT-2
// width), one filter per channel as long as the sequence (L = T) unless the name says otherwise:
//
//   long_conv/<fft|direct>/D768_T<T>_L<L>   the two prefill forms, T in {1024, 4096, 16384, 65536}
//   long_conv/auto/D768_T<T>_L<L>           the automatic choice (should track the cheaper one)
//   long_conv/prepared/D768_T<T>_L<L>       the FFT form with a prepared filter spectrum
//                                          (LongConvFilterSpectrum, made once outside the loop): two
//                                          transforms per channel; compare with long_conv/fft
//   long_conv/reference/D768_T256_L256      the reference (double loops), the baseline
//   long_conv/step/D768_L<L>                one decode step against an L-1 row state
//   ssm_kernel/prefill/H768_N64_T16384     S4D kernel generation (complex diagonal A, ZOH), GFLOP/s at
//                                          8 flops per (l, h, n): a complex multiply and a complex FMA
//   ssm_kernel/reference/H16_N64_T1024     the double Vandermonde loop, the baseline
//   ssm_kernel/step/B1_H768_N64            one recurrent decode step
//   ssm_dplr_kernel/prefill/H768_N64_T16384 S4 kernel generation (DPLR A from HiPPO-LegS, rank 1, one A
//                                          shared by all channels): Cauchy sums + Woodbury + inverse FFT
//                                          in double; GFLOP/s counted as the diagonal kernel's 8 L H N,
//                                          so the figure compares the two generations' time directly
//   ssm_dplr_kernel/prefill_zoh/H768_N64_T16384 the same system under ZOH (matrix exponential per
//                                          channel, blocked powers)
//   ssm_dplr_kernel/reference/H16_N64_T1024 the dense power loop (double), the baseline
//   ssm_dplr_kernel/step/B1_H768_N64       one DPLR decode step from a plan built once (structured,
//                                          O(N r) per channel)
//   s5/prefill/T4096_H512_P256             S5 prefill (GEMMs + associative scan), GFLOP/s counting the
//                                          two complex projections, 16 T H P flops
//   s5/step/B1_H512_P256                   one decode step
// The crossover: short filters (L = 16, 64, 256 at T = 4096) and L = T at every T.
// GFLOP/s counts each form's own work: direct 2 * D * sum_t min(L, t+1); FFT 3 real transforms of
// N per channel at 2.5 N log2 N each plus the product, 6 (N/2+1) per channel. GB/s: u read, y
// written once (4 bytes each) and the filter read once. The prepared form: 2 transforms plus the
// product, and the spectrum (D N floats) read instead of the filter.
#include <benchmark/benchmark.h>

#include <cmath>
#include <string>

#include "seqmix/lti.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LongConvMethod;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr index_t kD = 768;

double direct_flop(index_t T, index_t L) {
  double taps = 0;
  for (index_t t = 0; t < T; ++t) taps += static_cast<double>(std::min(L, t + 1));
  return 2.0 * kD * taps;
}

double fft_flop(index_t T, index_t L) {
  const seqmix::detail::LongConvDims dims{1, T, kD, L, 0, kD};
  const double N = static_cast<double>(seqmix::detail::long_conv_fft_length(dims, false));
  return kD * (3 * 2.5 * N * std::log2(N) + 6 * (N / 2 + 1));
}

double prepared_flop(index_t T, index_t L) {
  const seqmix::detail::LongConvDims dims{1, T, kD, L, 0, kD};
  const double N = static_cast<double>(seqmix::detail::long_conv_fft_length(dims, false));
  return kD * (2 * 2.5 * N * std::log2(N) + 6 * (N / 2 + 1));
}

enum class Form { fft, direct, automatic, reference, prepared };

void prefill(benchmark::State& state, index_t T, index_t L, Form form) {
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, kD}, 1);
  const Tensor<float, 2> h = st::random_tensor<2>({L, kD}, 2, -0.05f, 0.05f);
  Tensor<float, 3> y({1, T, kD});
  const LongConvMethod method =
      form == Form::fft ? LongConvMethod::fft : form == Form::direct ? LongConvMethod::direct : LongConvMethod::automatic;
  seqmix::LongConvFilterSpectrum spectrum;
  if (form == Form::prepared) spectrum = seqmix::LongConvFilterSpectrum(h.view(), {}, {kD, T}, st::two_thread_pool());
  for (auto _ : state) {
    if (form == Form::reference)
      seqmix::reference::long_conv({u.view(), h.view()}, {y.view()});
    else if (form == Form::prepared)
      seqmix::long_conv({u.view(), h.view()}, spectrum, {y.view()}, {seqmix::LongConvDirection::causal, LongConvMethod::fft},
                        st::two_thread_pool());
    else
      seqmix::long_conv({u.view(), h.view()}, {y.view()}, {seqmix::LongConvDirection::causal, method},
                        st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  bool fft = form == Form::fft;
  if (form == Form::automatic)
    fft = seqmix::long_conv_method({u.view(), h.view()}, {y.view()}) == LongConvMethod::fft;
  if (form == Form::prepared) {
    const double N = static_cast<double>(spectrum.fft_length());
    return st::report_throughput(state, prepared_flop(T, L), 4.0 * (2.0 * T * kD + N * kD));
  }
  const double bytes = 4.0 * (2.0 * T * kD + static_cast<double>(L) * kD);
  st::report_throughput(state, fft ? fft_flop(T, L) : direct_flop(T, L), bytes);
}

void step(benchmark::State& state, index_t L) {
  const Tensor<float, 2> u = st::random_tensor<2>({1, kD}, 1);
  const Tensor<float, 2> h = st::random_tensor<2>({L, kD}, 2, -0.05f, 0.05f);
  Tensor<float, 3> conv_state = st::random_tensor<3>({1, L - 1, kD}, 3);
  Tensor<float, 2> y({1, kD});
  for (auto _ : state) {
    seqmix::long_conv_step({u.view(), h.view()}, {y.view(), conv_state.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  // Reads the filter and the state, writes the state again (the shift).
  st::report_throughput(state, 2.0 * L * kD, 4.0 * 3.0 * L * kD);
}

void kernel(benchmark::State& state, index_t H, index_t N, index_t T, bool reference) {
  Tensor<float, 2> A_real({H, N}), A_imag({H, N}), k({T, H});
  seqmix::ssm_init_diagonal(seqmix::SsmInit::s4d_lin, A_real.view(), A_imag.view());
  const Tensor<float, 2> B = st::random_tensor<2>({H, N}, 1), C_re = st::random_tensor<2>({H, N}, 2),
                         C_im = st::random_tensor<2>({H, N}, 3);
  const Tensor<float, 1> dt = st::random_tensor<1>({H}, 4, 0.001f, 0.1f);
  const seqmix::SsmParams p{A_real.view(), A_imag.view(), B.view(), {}, C_re.view(), C_im.view(), dt.view()};
  for (auto _ : state) {
    if (reference)
      seqmix::reference::ssm_kernel(p, k.view());
    else
      seqmix::ssm_kernel(p, k.view(), {}, st::two_thread_pool());
    benchmark::DoNotOptimize(k.data());
  }
  st::report_throughput(state, 8.0 * T * H * N, 4.0 * T * H);
}

void ssm_step(benchmark::State& state, index_t H, index_t N) {
  const Tensor<float, 2> u = st::random_tensor<2>({1, H}, 1), C = st::random_tensor<2>({H, N}, 2);
  const Tensor<float, 2> Ar = st::random_tensor<2>({H, N}, 3, 0.5f, 0.9f), Ai = st::random_tensor<2>({H, N}, 4, -0.1f, 0.1f),
                         Br = st::random_tensor<2>({H, N}, 5), Bi = st::random_tensor<2>({H, N}, 6);
  Tensor<float, 3> xr({1, H, N}), xi({1, H, N});
  Tensor<float, 2> y({1, H});
  for (auto _ : state) {
    seqmix::ssm_step({u.view(), Ar.view(), Ai.view(), Br.view(), Bi.view(), C.view()}, {y.view(), xr.view(), xi.view()},
                     {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  // Reads the system (5 planes) and the state, writes the state.
  st::report_throughput(state, 10.0 * H * N, 4.0 * 9.0 * H * N);
}

// S4's layout: HiPPO-LegS in DPLR form (rank 1, Q = P) shared by the H channels, random complex C.
struct DplrBenchSystem {
  Tensor<float, 2> Lr, Li, Br, Bi, Cr, Ci;
  Tensor<float, 3> Pr, Pi;
  Tensor<float, 1> dt;
  DplrBenchSystem(index_t H, index_t N)
      : Lr({1, N}), Li({1, N}), Br({H, N}), Bi({H, N}), Cr(st::random_tensor<2>({H, N}, 2)),
        Ci(st::random_tensor<2>({H, N}, 3)), Pr({1, 1, N}), Pi({1, 1, N}), dt(st::random_tensor<1>({H}, 4, 0.001f, 0.1f)) {
    seqmix::ssm_init_hippo_legs(Lr.view(), Li.view(), Pr.view(), Pi.view(), Br.view(), Bi.view());
  }
  seqmix::SsmDplrParams params() const {
    return {Lr.view(), Li.view(), Pr.view(), Pi.view(), {}, {}, Br.view(), Bi.view(), Cr.view(), Ci.view(), dt.view()};
  }
};

void dplr_kernel(benchmark::State& state, index_t H, index_t N, index_t T, bool reference,
                 seqmix::SsmDiscretization discretization = seqmix::SsmDiscretization::bilinear) {
  const DplrBenchSystem system(H, N);
  Tensor<float, 2> k({T, H});
  const seqmix::SsmKernelOptions options{discretization, seqmix::SsmStateSymmetry::none};
  for (auto _ : state) {
    if (reference)
      seqmix::reference::ssm_dplr_kernel(system.params(), k.view(), options);
    else
      seqmix::ssm_dplr_kernel(system.params(), k.view(), options, st::two_thread_pool());
    benchmark::DoNotOptimize(k.data());
  }
  st::report_throughput(state, 8.0 * T * H * N, 4.0 * T * H);
}

void dplr_step(benchmark::State& state, index_t H, index_t N) {
  const DplrBenchSystem system(H, N);
  const Tensor<float, 2> u = st::random_tensor<2>({1, H}, 1);
  Tensor<float, 3> xr({1, H, N}), xi({1, H, N});
  xr.fill(0.f), xi.fill(0.f);
  Tensor<float, 2> y({1, H});
  // The plan (D and the Woodbury matrix per channel) is built once, as a decode loop would.
  const seqmix::SsmDplrStepPlan plan = seqmix::ssm_dplr_step_plan(
      system.params(), {seqmix::SsmDiscretization::bilinear, seqmix::SsmStateSymmetry::none}, st::two_thread_pool());
  for (auto _ : state) {
    seqmix::ssm_dplr_step(plan, u.view(), {y.view(), xr.view(), xi.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  st::report_throughput(state, 10.0 * H * N, 4.0 * 8.0 * H * N);
}

void s5(benchmark::State& state, index_t T, index_t H, index_t P, bool step) {
  const Tensor<float, 1> L_re = st::random_tensor<1>({P}, 1, -1.f, -0.1f), L_im = st::random_tensor<1>({P}, 2),
                         dt = st::random_tensor<1>({P}, 3, 0.001f, 0.1f);
  const Tensor<float, 2> B_re = st::random_tensor<2>({P, H}, 4), B_im = st::random_tensor<2>({P, H}, 5),
                         C_re = st::random_tensor<2>({H, P}, 6), C_im = st::random_tensor<2>({H, P}, 7);
  const seqmix::S5Params p{L_re.view(), L_im.view(), B_re.view(), B_im.view(), C_re.view(), C_im.view(), dt.view()};
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, H}, 8);
  Tensor<float, 3> y({1, T, H});
  Tensor<float, 2> s_re({1, P}), s_im({1, P});
  for (auto _ : state) {
    if (step)
      seqmix::s5_step(p, {u.view().select(1, 0)}, {y.view().select(1, 0), s_re.view(), s_im.view()});
    else
      seqmix::s5(p, {u.view()}, {y.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double tokens = step ? 1.0 : static_cast<double>(T);
  st::report_throughput(state, 16.0 * tokens * H * P, 4.0 * (2.0 * tokens * H + 4.0 * H * P));
}

void register_all() {
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  const auto shape = [](index_t T, index_t L) { return "D768_T" + std::to_string(T) + "_L" + std::to_string(L); };
  for (index_t T : {1024, 4096, 16384, 65536}) {
    add("long_conv/fft/" + shape(T, T), [=](benchmark::State& s) { prefill(s, T, T, Form::fft); });
    add("long_conv/prepared/" + shape(T, T), [=](benchmark::State& s) { prefill(s, T, T, Form::prepared); });
    if (T <= 16384)  // 65536^2 / 2 * 768 taps: about a minute per iteration
      add("long_conv/direct/" + shape(T, T), [=](benchmark::State& s) { prefill(s, T, T, Form::direct); });
    add("long_conv/auto/" + shape(T, T), [=](benchmark::State& s) { prefill(s, T, T, Form::automatic); });
  }
  for (index_t L : {16, 64, 128, 256, 512}) {
    add("long_conv/fft/" + shape(4096, L), [=](benchmark::State& s) { prefill(s, 4096, L, Form::fft); });
    if (L <= 64) add("long_conv/prepared/" + shape(4096, L), [=](benchmark::State& s) { prefill(s, 4096, L, Form::prepared); });
    add("long_conv/direct/" + shape(4096, L), [=](benchmark::State& s) { prefill(s, 4096, L, Form::direct); });
  }
  add("long_conv/reference/" + shape(256, 256), [](benchmark::State& s) { prefill(s, 256, 256, Form::reference); });
  for (index_t L : {4, 1024, 16384})
    benchmark::RegisterBenchmark(("long_conv/step/D768_L" + std::to_string(L)).c_str(),
                                 [=](benchmark::State& s) { step(s, L); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  add("s5/prefill/T4096_H512_P256", [](benchmark::State& s) { s5(s, 4096, 512, 256, false); });
  benchmark::RegisterBenchmark("s5/step/B1_H512_P256", [](benchmark::State& s) { s5(s, 1, 512, 256, true); })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  add("ssm_kernel/prefill/H768_N64_T16384", [](benchmark::State& s) { kernel(s, 768, 64, 16384, false); });
  add("ssm_kernel/reference/H16_N64_T1024", [](benchmark::State& s) { kernel(s, 16, 64, 1024, true); });
  benchmark::RegisterBenchmark("ssm_kernel/step/B1_H768_N64", [](benchmark::State& s) { ssm_step(s, 768, 64); })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  add("ssm_dplr_kernel/prefill/H768_N64_T16384", [](benchmark::State& s) { dplr_kernel(s, 768, 64, 16384, false); });
  add("ssm_dplr_kernel/prefill_zoh/H768_N64_T16384", [](benchmark::State& s) {
    dplr_kernel(s, 768, 64, 16384, false, seqmix::SsmDiscretization::zoh);
  });
  add("ssm_dplr_kernel/reference/H16_N64_T1024", [](benchmark::State& s) { dplr_kernel(s, 16, 64, 1024, true); });
  benchmark::RegisterBenchmark("ssm_dplr_kernel/step/B1_H768_N64", [](benchmark::State& s) { dplr_step(s, 768, 64); })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

const int kRegistered = (register_all(), 0);

}  // namespace
