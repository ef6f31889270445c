// Hyena and H3 prefill benchmarks (issue 16 items 4-5), 2 threads, at GPT-2 width (D = 768; H3
// with 12 heads of P = 64), filters as long as the sequence:
//
//   hyena/prefill/D768_T<T>_N2     order-2 Hyena, T in {4096, 16384}
//   hyena/reference/D768_T256_N2   the reference (double loops), the baseline
//   hyena/step_distilled/D768_T16384_N2_M16  one decode token through the distilled modal
//                                  recurrence (hyena_distilled_step, 16 complex modes per channel)
//   hyena/step/D768_T16384_N2      one decode token through the exact step (hyena_step: O(N L D)
//                                  against a history of L-1 = 16383 rows per order), the baseline
//   h3/prefill/H12_P64_T<T>        H3 with a 4-tap shift kernel, T in {1024, 4096}
//   h3/reference/H1_P64_T128       the reference, the baseline (one head)
//   fnet/prefill/D768_T<T>         FNet's 2-D DFT (Eigen FFT), T in {1024, 4096}
//   fnet/reference/D64_T256        the reference (DFT sums in double), the baseline
//   base_conv/prefill/D768_T<T>    BaseConv (GEMM + long_conv with L = T + gate), T in {1024, 4096}
//   base_conv/reference/D64_T256   the reference, the baseline
//   lightweight_conv/prefill/D768_T<T>_H12_K<K>   causal, T = 4096, K in {7, 31}; _centered: K = 31
//   lightweight_conv/step/B16_D768_H12_K<K>      one causal decode token for 16 rows
//   lightweight_conv/reference/D768_T512_H12_K7  the reference (double loops), the baseline
//   dynamic_conv/prefill|step|reference/...      the same shapes, logits [B,T,H,K] per position
// For the local convolutions GFLOP/s counts 2 K flops per output plus, for dynamic_conv, 4 per
// logit (max, exp, sum, scale); GB/s x read and y written once (and the logits; a step also
// reads and rewrites its [B,K-1,D] state): the prefill is bandwidth-bound for small K.
//   masked_mixer/prefill/G12_D768_T<T>   blocked lower-triangular mixing, 12 matrices, T in {1024, 4096}
//   masked_mixer/{prefill,reference}/G1_D64_T256   the fast form and its baseline at one shape
//   monarch_mix/prefill/G12_D768_T<T>    order-2 Monarch over tokens (b = 32, 64), T in {1024, 4096}
//   monarch_mix/{prefill,reference}/G1_D64_T256    the fast form and its baseline (b = 16)
//   monarch_mix_causal/prefill/D768_T<T> the zero-padded Monarch DFT product, T in {1024, 4096}
//   monarch_mix_causal/long_conv/D768_T4096  the same map by long_conv (its FFT), for comparison
//   monarch_mix_causal/{prefill,reference}/D64_T256  the fast form and its baseline
//   hyper_mixer/prefill/D768_T<T>_M768_E256  HyperMixer with hidden 768 and mixing width 256
//   hyper_mixer/{prefill,reference}/D64_T256_M64_E32  the fast form and its baseline
// GFLOP/s counts the FFT work of the long convolutions (3 transforms of N per channel at
// 2.5 N log2 N plus the product, as bench_long_conv.cpp counts it) and the elementwise passes;
// GB/s the projections read and y written once.
#include <benchmark/benchmark.h>

#include <cmath>
#include <string>

#include "seqmix/lti.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// FFT flops of one causal convolution of T steps over `channels` channels with an L = T filter.
double conv_flop(index_t T, double channels) {
  const double N = static_cast<double>(seqmix::detail::long_conv_fft_size(2 * T - 1));
  return channels * (3 * 2.5 * N * std::log2(N) + 6 * (N / 2 + 1));
}

void hyena(benchmark::State& state, index_t T, index_t N, bool reference) {
  const index_t D = 768;
  const Tensor<float, 3> v = st::random_tensor<3>({1, T, D}, 1);
  const Tensor<float, 4> x = st::random_tensor<4>({N, 1, T, D}, 2);
  const Tensor<float, 3> h = st::random_tensor<3>({N, T, D}, 3, -0.02f, 0.02f);
  Tensor<float, 3> y({1, T, D}), scratch({1, T, D});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::hyena({v.view(), x.view(), h.view()}, {y.view(), scratch.view()});
    else
      seqmix::hyena({v.view(), x.view(), h.view()}, {y.view(), scratch.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double flop = reference ? N * D * double(T) * double(T + 1) + N * D * double(T)
                                : N * (conv_flop(T, D) + double(T) * D);
  st::report_throughput(state, flop, 4.0 * (N + 2) * double(T) * D);
}

// One decode token of order-2 Hyena at D = 768 after filters of T taps: the exact step against
// the [N,1,T-1,D] history, or the distilled recurrence with M modes. The distillation runs once in
// the setup on 16 distinct Hyena-kind filters (decaying windowed sinusoid mixtures), tiled over
// the 768 channels: the step's cost does not depend on the fitted values, and fitting 1536
// filters of 16384 taps would take minutes of setup.
void hyena_decode(benchmark::State& state, index_t T, index_t M, bool distilled) {
  const index_t N = 2, D = 768, distinct = 16;
  const Tensor<float, 2> v = st::random_tensor<2>({1, D}, 1);
  const Tensor<float, 3> x = st::random_tensor<3>({N, 1, D}, 2);
  Tensor<float, 2> y({1, D}), scratch({1, D});
  if (!distilled) {
    const Tensor<float, 3> h = st::random_tensor<3>({N, T, D}, 3, -0.02f, 0.02f);
    Tensor<float, 4> history({N, 1, T - 1, D});
    for (auto _ : state) {
      seqmix::hyena_step({v.view(), x.view(), h.view()}, {y.view(), history.view(), scratch.view()}, st::two_thread_pool());
      benchmark::DoNotOptimize(y.data());
    }
    st::report_throughput(state, 2.0 * N * double(T) * D, 4.0 * N * 2.0 * double(T) * D);
    return;
  }
  Tensor<float, 3> h({N, T, distinct});
  for (index_t n = 0; n < N; ++n)
    for (index_t d = 0; d < distinct; ++d) {
      const double decay = (3.0 + 27.0 * double(d) / distinct) / double(T), f1 = 1.0 + d % 5, f2 = 2.5 + n + d % 3;
      for (index_t t = 0; t < T; ++t) {
        const double z = 6.283185307179586 * double(t) / double(T);
        h(n, t, d) = static_cast<float>(std::sin(0.8 * std::sin(f1 * z) + 0.6 * std::sin(f2 * z + d)) * std::exp(-decay * double(t)));
      }
    }
  Tensor<float, 3> pr({N, distinct, M}), pi({N, distinct, M}), gr({N, distinct, M}), gi({N, distinct, M});
  Tensor<float, 2> ft({N, distinct});
  seqmix::hyena_distill(h.view(), {}, {pr.view(), pi.view(), gr.view(), gi.view(), ft.view()}, {M}, st::two_thread_pool());
  Tensor<float, 3> Pr({N, D, M}), Pi({N, D, M}), Gr({N, D, M}), Gi({N, D, M});
  Tensor<float, 2> Ft({N, D});
  for (index_t n = 0; n < N; ++n)
    for (index_t d = 0; d < D; ++d) {
      Ft(n, d) = ft(n, d % distinct);
      for (index_t k = 0; k < M; ++k) {
        Pr(n, d, k) = pr(n, d % distinct, k), Pi(n, d, k) = pi(n, d % distinct, k);
        Gr(n, d, k) = gr(n, d % distinct, k), Gi(n, d, k) = gi(n, d % distinct, k);
      }
    }
  Tensor<float, 4> sr({N, 1, D, M}), si({N, 1, D, M});
  const seqmix::HyenaModalFilters filters{Pr.view(), Pi.view(), Gr.view(), Gi.view(), Ft.view()};
  for (auto _ : state) {
    seqmix::hyena_distilled_step({v.view(), x.view(), filters}, {y.view(), sr.view(), si.view(), scratch.view()},
                                 st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  // 8 flops per complex mode (state update and output), the state read and written once.
  st::report_throughput(state, 8.0 * N * D * M, 4.0 * N * D * M * 4.0);
}

void h3(benchmark::State& state, index_t T, index_t H, bool reference) {
  const index_t P = 64, D = H * P, Ls = 4;
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, P}, 1), k = st::random_tensor<4>({1, T, H, P}, 2),
                         v = st::random_tensor<4>({1, T, H, P}, 3);
  const Tensor<float, 2> shift = st::random_tensor<2>({Ls, D}, 4), diag = st::random_tensor<2>({T, D}, 5, -0.02f, 0.02f);
  Tensor<float, 4> y({1, T, H, P});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::h3({q.view(), k.view(), v.view(), shift.view(), diag.view()}, {y.view()});
    else
      seqmix::h3({q.view(), k.view(), v.view(), shift.view(), diag.view()}, {y.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double products = double(D) * P;  // (h, i, j) channels of the diagonal SSM
  const double flop = reference ? products * double(T) * double(T + 1) * 1.5 + 2.0 * D * T * Ls
                                : conv_flop(T, products) + 4.0 * products * T + 2.0 * D * T * Ls;
  st::report_throughput(state, flop, 4.0 * 4.0 * double(T) * D);
}

void fnet(benchmark::State& state, index_t T, index_t D, bool reference) {
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  Tensor<float, 3> y({1, T, D});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::fnet({x.view()}, {y.view()});
    else
      seqmix::fnet({x.view()}, {y.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  // Reference: 4 flops per term of both DFT sums; fast: real FFTs of D per token, complex FFTs of T
  // per feature at 2.5 N log2 N and 5 N log2 N.
  const double flop = reference ? 4.0 * T * D * double(T + D)
                                : double(T) * D * (2.5 * std::log2(double(D)) + 5.0 * std::log2(double(T)));
  st::report_throughput(state, flop, 2.0 * 4.0 * double(T) * D);
}

void base_conv(benchmark::State& state, index_t T, index_t D, bool reference) {
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 1);
  const float scale = 1.f / std::sqrt(float(D));
  const Tensor<float, 2> w1 = st::random_tensor<2>({D, D}, 2, -scale, scale), w2 = st::random_tensor<2>({D, D}, 3, -scale, scale);
  const Tensor<float, 2> h = st::random_tensor<2>({T, D}, 4, -0.02f, 0.02f);
  Tensor<float, 3> y({1, T, D});
  const seqmix::BaseConvInputs in{u.view(), w1.view(), w2.view(), h.view()};
  for (auto _ : state) {
    if (reference)
      seqmix::reference::base_conv(in, {y.view()});
    else
      seqmix::base_conv(in, {y.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double gemm = 4.0 * T * double(D) * D;
  const double flop = reference ? gemm + D * double(T) * double(T + 1) + double(T) * D : gemm + conv_flop(T, D) + double(T) * D;
  st::report_throughput(state, flop, 4.0 * (2.0 * T * D + 2.0 * D * D));
}

// lightweight_conv (dynamic = false) or dynamic_conv over [1,T,D] with H heads of K taps.
void local_conv(benchmark::State& state, index_t T, index_t K, bool dynamic, bool centered, bool reference) {
  const index_t D = 768, H = 12;
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  const Tensor<float, 2> weight = st::random_tensor<2>({H, K}, 2);
  const Tensor<float, 4> logits = st::random_tensor<4>({1, T, H, K}, 3);
  Tensor<float, 3> y({1, T, D});
  seqmix::LocalConvOptions options;
  options.padding = centered ? seqmix::LocalConvPadding::centered : seqmix::LocalConvPadding::causal;
  for (auto _ : state) {
    if (dynamic && reference)
      seqmix::reference::dynamic_conv({x.view(), logits.view()}, {y.view()}, options);
    else if (dynamic)
      seqmix::dynamic_conv({x.view(), logits.view()}, {y.view()}, options, st::two_thread_pool());
    else if (reference)
      seqmix::reference::lightweight_conv({x.view(), weight.view()}, {y.view()}, options);
    else
      seqmix::lightweight_conv({x.view(), weight.view()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double logit_count = dynamic ? double(T) * H * K : 0.0;
  st::report_throughput(state, 2.0 * K * double(T) * D + 4.0 * logit_count, 4.0 * (2.0 * double(T) * D + logit_count));
}

// One causal decode step of lightweight_conv or dynamic_conv for B rows, the state carried.
void local_conv_step(benchmark::State& state, index_t B, index_t K, bool dynamic) {
  const index_t D = 768, H = 12;
  const Tensor<float, 2> x = st::random_tensor<2>({B, D}, 1), weight = st::random_tensor<2>({H, K}, 2);
  const Tensor<float, 3> logits = st::random_tensor<3>({B, H, K}, 3);
  Tensor<float, 2> y({B, D});
  Tensor<float, 3> carried = st::random_tensor<3>({B, K - 1, D}, 4);
  for (auto _ : state) {
    if (dynamic)
      seqmix::dynamic_conv_step({x.view(), logits.view()}, {y.view(), carried.view()}, st::two_thread_pool());
    else
      seqmix::lightweight_conv_step({x.view(), weight.view()}, {y.view(), carried.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double logit_count = dynamic ? double(B) * H * K : 0.0;
  st::report_throughput(state, 2.0 * K * double(B) * D + 4.0 * logit_count,
                        4.0 * (2.0 * double(B) * D + 2.0 * double(B) * (K - 1) * D + logit_count));
}

void masked_mixer(benchmark::State& state, index_t T, index_t D, index_t G, bool reference) {
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  const Tensor<float, 3> w = st::random_tensor<3>({G, T, T}, 2, -0.05f, 0.05f);
  Tensor<float, 3> y({1, T, D});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::masked_mixer({x.view(), w.view()}, {y.view()});
    else
      seqmix::masked_mixer({x.view(), w.view()}, {y.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  st::report_throughput(state, double(T) * double(T + 1) * D, 4.0 * (2.0 * T * D + G * double(T) * T / 2));
}

void monarch_mix(benchmark::State& state, index_t T, index_t D, index_t G, bool reference) {
  index_t b = 1;
  while (b * b < T) ++b;
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  const float scale = 1.f / std::sqrt(float(b));
  const Tensor<float, 4> left = st::random_tensor<4>({G, b, b, b}, 2, -scale, scale),
                         right = st::random_tensor<4>({G, b, b, b}, 3, -scale, scale);
  Tensor<float, 3> y({1, T, D});
  for (auto _ : state) {
    if (reference)
      seqmix::reference::monarch_mix({x.view(), left.view(), right.view()}, {y.view()});
    else
      seqmix::monarch_mix({x.view(), left.view(), right.view()}, {y.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  st::report_throughput(state, 4.0 * double(b * b) * b * D, 4.0 * (2.0 * T * D + 2.0 * G * b * b * b));
}

// form: 0 the Monarch DFT product, 1 the reference, 2 long_conv on the same filter.
void monarch_mix_causal(benchmark::State& state, index_t T, index_t D, int form) {
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  const Tensor<float, 2> h = st::random_tensor<2>({T, D}, 2, -0.02f, 0.02f);
  Tensor<float, 3> y({1, T, D});
  for (auto _ : state) {
    if (form == 1)
      seqmix::reference::monarch_mix_causal({x.view(), h.view()}, {y.view()});
    else if (form == 2)
      seqmix::long_conv({x.view(), h.view()}, {y.view()}, {}, st::two_thread_pool());
    else
      seqmix::monarch_mix_causal({x.view(), h.view()}, {y.view()}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  // Fast: 3 transforms (filter, x, inverse) of 2 complex GEMM stages, n b complex multiply-adds
  // (8 flops) per channel each; reference and long_conv: the convolution sum / FFT counts.
  index_t b = 1;
  while (b * b < 2 * T - 1) ++b;
  const double flop = form == 0 ? 3.0 * 2.0 * 8.0 * double(b * b) * b * D
                                : form == 1 ? double(T) * double(T + 1) * D : conv_flop(T, D);
  st::report_throughput(state, flop, 4.0 * 3.0 * double(T) * D);
}

void hyper_mixer(benchmark::State& state, index_t T, index_t D, index_t M, index_t E, bool reference) {
  const Tensor<float, 3> x = st::random_tensor<3>({1, T, D}, 1);
  const float sd = 1.f / std::sqrt(float(D)), sm = 1.f / std::sqrt(float(M));
  const Tensor<float, 2> a1 = st::random_tensor<2>({D, M}, 2, -sd, sd), b1 = st::random_tensor<2>({M, E}, 3, -sm, sm),
                         a2 = st::random_tensor<2>({D, M}, 4, -sd, sd), b2 = st::random_tensor<2>({M, E}, 5, -sm, sm);
  Tensor<float, 3> y({1, T, D});
  const seqmix::HyperMixerInputs in{x.view(), {a1.view(), {}, b1.view(), {}}, {a2.view(), {}, b2.view(), {}}};
  for (auto _ : state) {
    if (reference)
      seqmix::reference::hyper_mixer(in, {y.view()});
    else
      seqmix::hyper_mixer(in, {y.view()}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
  }
  const double flop = 2.0 * (2.0 * T * D * M + 2.0 * T * M * E) + 4.0 * T * E * D;
  st::report_throughput(state, flop, 4.0 * (2.0 * T * D + 2.0 * (D * M + M * E)));
}

void register_all() {
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (index_t T : {4096, 16384})
    add("hyena/prefill/D768_T" + std::to_string(T) + "_N2", [=](benchmark::State& s) { hyena(s, T, 2, false); });
  add("hyena/reference/D768_T256_N2", [](benchmark::State& s) { hyena(s, 256, 2, true); });
  add("hyena/step_distilled/D768_T16384_N2_M16", [](benchmark::State& s) { hyena_decode(s, 16384, 16, true); });
  add("hyena/step/D768_T16384_N2", [](benchmark::State& s) { hyena_decode(s, 16384, 0, false); });
  for (index_t T : {1024, 4096})
    add("h3/prefill/H12_P64_T" + std::to_string(T), [=](benchmark::State& s) { h3(s, T, 12, false); });
  add("h3/reference/H1_P64_T128", [](benchmark::State& s) { h3(s, 128, 1, true); });
  for (index_t T : {1024, 4096})
    add("fnet/prefill/D768_T" + std::to_string(T), [=](benchmark::State& s) { fnet(s, T, 768, false); });
  add("fnet/reference/D64_T256", [](benchmark::State& s) { fnet(s, 256, 64, true); });
  for (index_t T : {1024, 4096})
    add("base_conv/prefill/D768_T" + std::to_string(T), [=](benchmark::State& s) { base_conv(s, T, 768, false); });
  add("base_conv/reference/D64_T256", [](benchmark::State& s) { base_conv(s, 256, 64, true); });
  for (index_t T : {1024, 4096})
    add("masked_mixer/prefill/G12_D768_T" + std::to_string(T), [=](benchmark::State& s) { masked_mixer(s, T, 768, 12, false); });
  add("masked_mixer/prefill/G1_D64_T256", [](benchmark::State& s) { masked_mixer(s, 256, 64, 1, false); });
  add("masked_mixer/reference/G1_D64_T256", [](benchmark::State& s) { masked_mixer(s, 256, 64, 1, true); });
  for (index_t T : {1024, 4096})
    add("monarch_mix/prefill/G12_D768_T" + std::to_string(T), [=](benchmark::State& s) { monarch_mix(s, T, 768, 12, false); });
  add("monarch_mix/prefill/G1_D64_T256", [](benchmark::State& s) { monarch_mix(s, 256, 64, 1, false); });
  add("monarch_mix/reference/G1_D64_T256", [](benchmark::State& s) { monarch_mix(s, 256, 64, 1, true); });
  for (index_t T : {1024, 4096})
    add("monarch_mix_causal/prefill/D768_T" + std::to_string(T), [=](benchmark::State& s) { monarch_mix_causal(s, T, 768, 0); });
  add("monarch_mix_causal/long_conv/D768_T4096", [](benchmark::State& s) { monarch_mix_causal(s, 4096, 768, 2); });
  add("monarch_mix_causal/prefill/D64_T256", [](benchmark::State& s) { monarch_mix_causal(s, 256, 64, 0); });
  add("monarch_mix_causal/reference/D64_T256", [](benchmark::State& s) { monarch_mix_causal(s, 256, 64, 1); });
  for (index_t T : {1024, 4096})
    add("hyper_mixer/prefill/D768_T" + std::to_string(T) + "_M768_E256",
        [=](benchmark::State& s) { hyper_mixer(s, T, 768, 768, 256, false); });
  add("hyper_mixer/prefill/D64_T256_M64_E32", [](benchmark::State& s) { hyper_mixer(s, 256, 64, 64, 32, false); });
  add("hyper_mixer/reference/D64_T256_M64_E32", [](benchmark::State& s) { hyper_mixer(s, 256, 64, 64, 32, true); });
  for (const bool dynamic : {false, true}) {
    const std::string op = dynamic ? "dynamic_conv" : "lightweight_conv";
    for (index_t K : {7, 31})
      add(op + "/prefill/D768_T4096_H12_K" + std::to_string(K),
          [=](benchmark::State& s) { local_conv(s, 4096, K, dynamic, false, false); });
    add(op + "/prefill/D768_T4096_H12_K31_centered",
        [=](benchmark::State& s) { local_conv(s, 4096, 31, dynamic, true, false); });
    add(op + "/reference/D768_T512_H12_K7", [=](benchmark::State& s) { local_conv(s, 512, 7, dynamic, false, true); });
    for (index_t K : {7, 31})
      benchmark::RegisterBenchmark((op + "/step/B16_D768_H12_K" + std::to_string(K)).c_str(),
                                   [=](benchmark::State& s) { local_conv_step(s, 16, K, dynamic); })
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
  }
}

const int kRegistered = (register_all(), 0);

}  // namespace
