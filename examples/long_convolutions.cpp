// Long convolutions two ways (issue 16 item 7): a Hyena block of order 2 and an S4D layer on one
// long sequence, prefilled by FFT (hyena / long_conv) and generated token by token by a
// recurrence (the distilled modal Hyena of hyena_distill, S4D's own diagonal state by ssm_step).
// For each it prints the cost per token of both paths and the relative L2 error between them;
// for Hyena also the exact O(L D) decode step (hyena_step, timed on a few tokens) and, at
// distillation orders 8/16/32/64, the fit error of the filters and the output error against FFT,
// both for generation over the whole sequence and for the last 256 tokens generated after an
// exact FFT prompt whose modal states hyena_distilled_prefill handed to the step.
//
// The Hyena filters are synthetic but of the Hyena kind: a sine of a mixture of positional
// sinusoids, times an exponential window whose decay varies over channels, as its implicit
// filter MLP and window produce. The S4D layer uses the S4D-Lin initialization, B = 1, random C
// and dt log-uniform in [1e-3, 1e-1].
//
// Usage: seqmix_example_long_convolutions [T] [D]   (defaults T = 16384, D = 8; a few seconds)
// Timings are single runs on whatever the machine is doing: orders of magnitude (bench/ has the
// benchmarks hyena/prefill/... and hyena/step_distilled/...).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/distill.hpp"
#include "seqmix/lti/hyena/fast.hpp"
#include "seqmix/lti/hyena/step.hpp"
#include "seqmix/lti/hyena/prefill_distilled.hpp"
#include "seqmix/lti/hyena/step_distilled.hpp"
#include "seqmix/lti/long_conv/fast.hpp"
#include "seqmix/lti/ssm_kernel/kernel.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

template <std::size_t Rank>
Tensor<float, Rank> random_tensor(const std::array<index_t, Rank>& shape, std::mt19937& rng, float scale = 1.f) {
  Tensor<float, Rank> t(shape);
  std::normal_distribution<float> normal(0.f, scale);
  for (float& value : t) value = normal(rng);
  return t;
}

// Hyena-kind filters [N,L,D] (see the header comment), each scaled by 1/sqrt(L).
Tensor<float, 3> hyena_kind_filters(index_t N, index_t L, index_t D, std::mt19937& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const double pi = 3.14159265358979323846;
  Tensor<float, 3> h({N, L, D});
  for (index_t n = 0; n < N; ++n)
    for (index_t d = 0; d < D; ++d) {
      double amp[4], freq[4], phase[4];
      for (int j = 0; j < 4; ++j) amp[j] = 0.3 + unit(rng), freq[j] = 1.0 + 7.0 * unit(rng), phase[j] = 2 * pi * unit(rng);
      const double decay = (3.0 + 27.0 * unit(rng)) / double(L), bias = 0.2 * (unit(rng) - 0.5);
      for (index_t t = 0; t < L; ++t) {
        double mix = 0.0;
        for (int j = 0; j < 4; ++j) mix += amp[j] * std::sin(2 * pi * freq[j] * double(t) / double(L) + phase[j]);
        h(n, t, d) = static_cast<float>((std::sin(mix) + bias) * std::exp(-decay * double(t)) / std::sqrt(double(L)));
      }
    }
  return h;
}

template <std::size_t Rank>
double relative_error(const Tensor<float, Rank>& a, const Tensor<float, Rank>& ref) {
  double err = 0.0, norm = 0.0;
  for (index_t i = 0; i < a.numel(); ++i) {
    const double diff = double(a.data()[i]) - double(ref.data()[i]);
    err += diff * diff, norm += double(ref.data()[i]) * double(ref.data()[i]);
  }
  return std::sqrt(err / std::max(norm, 1e-300));
}

void hyena_block(index_t T, index_t D, const seqmix::Executor& pool) {
  const index_t N = 2;
  std::mt19937 rng(1);
  const Tensor<float, 3> v = random_tensor<3>({1, T, D}, rng);
  const Tensor<float, 4> x = random_tensor<4>({N, 1, T, D}, rng);
  const Tensor<float, 3> h = hyena_kind_filters(N, T, D, rng);
  const Tensor<float, 2> skip = random_tensor<2>({N, D}, rng, 0.5f);
  Tensor<float, 3> y_fft({1, T, D}), scratch({1, T, D});
  auto start = Clock::now();
  seqmix::hyena({v.view(), x.view(), h.view(), skip.view()}, {y_fft.view(), scratch.view()},
                {seqmix::LongConvMethod::fft}, pool);
  const double prefill = seconds_since(start);
  std::printf("Hyena, order 2, T = %ld, D = %ld, filters of L = T taps\n", long(T), long(D));
  std::printf("  FFT prefill                  %10.3f us/token\n", 1e6 * prefill / double(T));

  // The exact decode step keeps the last L-1 rows of every order: O(N L D) per token. A few
  // steps past a zero history are enough to time it.
  {
    const index_t steps = std::min<index_t>(T, 16);
    Tensor<float, 4> state({N, 1, T - 1, D});
    Tensor<float, 2> y_row({1, D}), row_scratch({1, D});
    start = Clock::now();
    for (index_t t = 0; t < steps; ++t)
      seqmix::hyena_step({v.view().select(1, t), x.view().select(2, t), h.view(), skip.view()},
                         {y_row.view(), state.view(), row_scratch.view()}, pool);
    std::printf("  exact step (hyena_step)      %10.3f us/token   (history of %ld rows per order)\n",
                1e6 * seconds_since(start) / double(steps), long(T - 1));
  }

  std::printf("  distilled recurrence, modal state of M complex modes per channel:\n");
  std::printf("      M   distill s   fit error max / mean   step us/token   output error vs FFT   after handoff\n");
  for (index_t M : {8, 16, 32, 64}) {
    if (2 * M > T) break;
    Tensor<float, 3> pr({N, D, M}), pi({N, D, M}), gr({N, D, M}), gi({N, D, M});
    Tensor<float, 2> feedthrough({N, D}), fit_error({N, D});
    start = Clock::now();
    seqmix::hyena_distill(h.view(), skip.view(),
                          {pr.view(), pi.view(), gr.view(), gi.view(), feedthrough.view(), fit_error.view()}, {M}, pool);
    const double distill = seconds_since(start);
    double worst = 0.0, mean = 0.0;
    for (float e : fit_error) worst = std::max(worst, double(e)), mean += double(e) / double(fit_error.numel());
    // Generation from a zero state over the whole sequence: the same outputs as the prefill, up
    // to the fit.
    Tensor<float, 4> sr({N, 1, D, M}), si({N, 1, D, M});
    Tensor<float, 3> y_rec({1, T, D});
    Tensor<float, 2> row_scratch({1, D});
    const seqmix::HyenaModalFilters filters{pr.view(), pi.view(), gr.view(), gi.view(), feedthrough.view()};
    start = Clock::now();
    for (index_t t = 0; t < T; ++t)
      seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), filters},
                                   {y_rec.view().select(1, t), sr.view(), si.view(), row_scratch.view()});
    const double steps = seconds_since(start);
    // Prompt by FFT, then generation: hyena_distilled_prefill runs the first T - G tokens exactly
    // and hands each order's modal state to the step, which decodes the last G tokens.
    const index_t G = std::min<index_t>(T - 1, 256), P = T - G;
    Tensor<float, 3> y_hand({1, T, D});
    Tensor<float, 4> hr({N, 1, D, M}), hi({N, 1, D, M});
    seqmix::hyena_distilled_prefill({v.view().slice(1, 0, P), x.view().slice(2, 0, P), h.view().slice(1, 0, P),
                                     skip.view()},
                                    filters, {y_hand.view().slice(1, 0, P), hr.view(), hi.view()},
                                    {seqmix::LongConvMethod::fft}, pool);
    for (index_t t = P; t < T; ++t)
      seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), filters},
                                   {y_hand.view().select(1, t), hr.view(), hi.view(), row_scratch.view()});
    Tensor<float, 3> hand_tail({1, G, D}), fft_tail({1, G, D});
    seqmix::copy(y_hand.view().slice(1, P, G).as_const(), hand_tail.view());
    seqmix::copy(y_fft.view().slice(1, P, G).as_const(), fft_tail.view());
    std::printf("   %4ld   %9.2f   %9.2e / %8.2e   %13.3f   %19.2e   %13.2e\n", long(M), distill, worst, mean,
                1e6 * steps / double(T), relative_error(y_rec, y_fft), relative_error(hand_tail, fft_tail));
  }
}

void s4d_layer(index_t T, index_t D, const seqmix::Executor& pool) {
  const index_t Ns = 64;
  std::mt19937 rng(2);
  Tensor<float, 2> A_real({D, Ns}), A_imag({D, Ns}), B_real({D, Ns}), C_real({D, Ns}), C_imag({D, Ns});
  Tensor<float, 1> dt({D}), skip({D});
  seqmix::ssm_init_diagonal(seqmix::SsmInit::s4d_lin, A_real.view(), A_imag.view());
  B_real.fill(1.f);
  std::normal_distribution<float> normal(0.f, std::sqrt(0.5f));
  for (float& c : C_real) c = normal(rng);
  for (float& c : C_imag) c = normal(rng);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (float& value : dt) value = static_cast<float>(std::exp(std::log(1e-3) + unit(rng) * (std::log(1e-1) - std::log(1e-3))));
  for (float& value : skip) value = normal(rng);
  const Tensor<float, 3> u = random_tensor<3>({1, T, D}, rng);
  const seqmix::SsmParams params{A_real.view(), A_imag.view(), B_real.view(), {}, C_real.view(), C_imag.view(), dt.view()};
  seqmix::SsmKernelOptions options;
  options.symmetry = seqmix::SsmStateSymmetry::conjugate_pairs;

  // Prefill: the length-T kernel, then one FFT long convolution.
  Tensor<float, 2> kernel({T, D});
  Tensor<float, 3> y_fft({1, T, D});
  auto start = Clock::now();
  seqmix::ssm_kernel(params, kernel.view(), options, pool);
  const double kernel_time = seconds_since(start);
  start = Clock::now();
  seqmix::long_conv({u.view(), kernel.view(), {}, skip.view()}, {y_fft.view()},
                    {seqmix::LongConvDirection::causal, seqmix::LongConvMethod::fft}, pool);
  const double conv_time = seconds_since(start);

  // Generation: the discretized diagonal system, one ssm_step per token.
  Tensor<float, 2> Ar({D, Ns}), Ai({D, Ns}), Br({D, Ns}), Bi({D, Ns});
  seqmix::ssm_discretize(params, {Ar.view(), Ai.view(), Br.view(), Bi.view()}, options);
  Tensor<float, 3> sr({1, D, Ns}), si({1, D, Ns}), y_rec({1, T, D});
  start = Clock::now();
  for (index_t t = 0; t < T; ++t)
    seqmix::ssm_step({u.view().select(1, t), Ar.view(), Ai.view(), Br.view(), Bi.view(), C_real.view(), C_imag.view(),
                      skip.view()},
                     {y_rec.view().select(1, t), sr.view(), si.view()}, options);
  const double steps = seconds_since(start);
  std::printf("S4D layer (S4D-Lin, N = %ld conjugate pairs, ZOH), T = %ld, D = %ld\n", long(Ns), long(T), long(D));
  std::printf("  kernel + FFT prefill         %10.3f us/token   (kernel %.3f s, convolution %.3f s)\n",
              1e6 * (kernel_time + conv_time) / double(T), kernel_time, conv_time);
  std::printf("  recurrent step (ssm_step)    %10.3f us/token\n", 1e6 * steps / double(T));
  std::printf("  relative error, recurrence vs FFT: %.2e\n", relative_error(y_rec, y_fft));
}

}  // namespace

int main(int argc, char** argv) {
  const index_t T = argc > 1 ? std::atol(argv[1]) : 16384, D = argc > 2 ? std::atol(argv[2]) : 8;
  if (T < 2 || D < 1) {
    std::fprintf(stderr, "usage: %s [T >= 2] [D >= 1]\n", argv[0]);
    return 2;
  }
  seqmix::ThreadPool pool(2);
  hyena_block(T, D, pool);
  std::printf("\n");
  s4d_layer(T, D, pool);
  return 0;
}
