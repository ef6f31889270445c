// long_conv's direct and FFT forms and the FFT form's bound, timed in thread CPU time on one
// thread (docs/operators.md, long_conv, "Crossover and the FFT form's bound"). CPU time, not wall
// time: on a machine shared by several sessions the benchmarks' real time is mostly waiting.
//
// Built with the benchmarks as seqmix-long-conv-crossover (the test build syntax-checks it), or:
//   g++ -std=c++17 -O2 -march=native -DNDEBUG -I include -I testing -isystem /usr/include/eigen3
//       bench/long_conv_crossover.cpp -pthread -o long_conv_crossover      (one command line)
//   ./long_conv_crossover [T L]...      (default: the table's rows; the first row also warms up)
//
// Bound: u read + y written + filter read at one core's streaming read rate, plus 3 real
// transforms of N (2.5 N log2 N flops each) and the spectral product (6 (N/2 + 1)) per channel at
// one core's fp32 FMA rate; both rates come from seqmix-machine-limits' kernels, timed here in
// thread CPU time too. The direct form is skipped at T >= 65536 (minutes per call).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/limit_probes.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace st = seqmix::testing;
using Batch = xsimd::batch<float>;

using st::thread_cpu_seconds;

template <class F>
double best_cpu_seconds(int repetitions, F f) {
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    const double start = thread_cpu_seconds();
    f();
    best = std::min(best, thread_cpu_seconds() - start);
  }
  return best;
}

// limit_probes.hpp's FMA kernel (12 independent chains) on this thread, in GFLOP/s of CPU time,
// the best of 5.
double fma_gflops() {
  double best = 0;
  for (int r = 0; r < 5; ++r) best = std::max(best, st::limits::one_thread_fma_gflops(5000000));
  return best;
}

// limit_probes.hpp's streaming read over 256 MiB on this thread, in GB/s of CPU time.
double read_gbs() {
  const std::size_t floats = std::size_t{64} << 20;
  std::vector<float, xsimd::aligned_allocator<float>> buffer(floats, 1.f);
  const double seconds = best_cpu_seconds(5, [&] {
    Batch a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    const float* p = buffer.data();
    for (std::size_t i = 0; i < floats; i += 4 * Batch::size) {
      a0 += Batch::load_aligned(p + i);
      a1 += Batch::load_aligned(p + i + Batch::size);
      a2 += Batch::load_aligned(p + i + 2 * Batch::size);
      a3 += Batch::load_aligned(p + i + 3 * Batch::size);
    }
    st::limits::g_sink = st::limits::g_sink + seqmix::simd::reduce_add((a0 + a1) + (a2 + a3));
  });
  return static_cast<double>(floats) * 4.0 / seconds / 1e9;
}

struct Shape {
  index_t T, L;
};

void measure(const Shape& shape, double gflops, double gbs) {
  constexpr index_t D = 768;
  const index_t T = shape.T, L = shape.L;
  const seqmix::Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 1);
  const seqmix::Tensor<float, 2> h = st::random_tensor<2>({L, D}, 2, -0.05f, 0.05f);
  seqmix::Tensor<float, 3> y({1, T, D});
  const auto run = [&](seqmix::LongConvMethod method) {
    seqmix::long_conv({u.view(), h.view()}, {y.view()}, {seqmix::LongConvDirection::causal, method});
  };
  const int repetitions = T >= 16384 ? 2 : 4;
  const double fft = best_cpu_seconds(repetitions, [&] { run(seqmix::LongConvMethod::fft); });
  const double direct =
      T >= 65536 ? -1.0 : best_cpu_seconds(T >= 16384 ? 1 : repetitions, [&] { run(seqmix::LongConvMethod::direct); });
  const bool automatic_fft = seqmix::long_conv_method({u.view(), h.view()}, {y.view()}) == seqmix::LongConvMethod::fft;
  const seqmix::detail::LongConvDims dims{1, T, D, L, 0, D};
  const double N = static_cast<double>(seqmix::detail::long_conv_fft_length(dims, false));
  const double bytes = 4.0 * (2.0 * static_cast<double>(T * D) + static_cast<double>(L * D));
  const double flop = static_cast<double>(D) * (3 * 2.5 * N * std::log2(N) + 6 * (N / 2 + 1));
  const double bound = bytes / (gbs * 1e9) + flop / (gflops * 1e9);
  std::printf("%-7ld %-7ld %11.2f %11.2f %8.2f %7s %10.2f %8.2f\n", static_cast<long>(T), static_cast<long>(L), fft * 1e3,
              direct * 1e3, direct > 0 ? direct / fft : -1.0, automatic_fft ? "fft" : "direct", bound * 1e3, fft / bound);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> shapes = {{256, 256},   {1024, 1024}, {4096, 4096}, {16384, 16384}, {65536, 65536}, {4096, 16},
                               {4096, 64},   {4096, 128},  {4096, 256},  {256, 256},     {128, 128}};
  if (argc > 1) {
    shapes.clear();
    for (int a = 1; a + 1 < argc; a += 2) shapes.push_back({std::atol(argv[a]), std::atol(argv[a + 1])});
  }
  const double gflops = fma_gflops(), gbs = read_gbs();
  std::printf("one thread, thread CPU time: fp32 FMA %.1f GFLOP/s, streaming read %.1f GB/s\n", gflops, gbs);
  std::printf("%-7s %-7s %11s %11s %8s %7s %10s %8s\n", "T", "L", "fft_ms", "direct_ms", "dir/fft", "auto", "bound_ms",
              "fft/bnd");
  for (const Shape& shape : shapes) measure(shape, gflops, gbs);
  return 0;
}
