// long_conv's direct and FFT forms and the FFT form's bound, timed in thread CPU time on one
// thread (docs/operators.md, long_conv, "Crossover and the FFT form's bound"). CPU time, not wall
// time: on a machine shared by several sessions the benchmarks' real time is mostly waiting.
//
// Built with the benchmarks as seqmix-long-conv-crossover (the test build syntax-checks it), or:
//   g++ -std=c++17 -O2 -march=native -DNDEBUG -I include -I testing -isystem /usr/include/eigen3
//       bench/long_conv_crossover.cpp -pthread -o long_conv_crossover      (one command line)
//   ./long_conv_crossover [--prepared | --passes] [T L]...  (default: the table's rows; the first
//   row also warms up; --prepared: the prepared-form table only; --passes: the prepared call's
//   passes timed one by one, L = T)
//
// Bound: u read + y written + filter read at one core's streaming read rate, plus 3 real
// transforms of N (2.5 N log2 N flops each) and the spectral product (6 (N/2 + 1)) per channel at
// one core's fp32 FMA rate; both rates come from seqmix-machine-limits' kernels, timed here in
// thread CPU time too. The direct form is skipped at T >= 65536 (minutes per call).
//
// Then the prepared form (LongConvFilterSpectrum made once, long_conv(in, spectrum, out)) against
// the FFT form without it, alternated 5 times (3 at T >= 16384), medians: one thread in thread CPU
// time, two threads (the test pool) in process CPU time (both threads' time: what two idle
// cores would take together). Its bound counts two transforms (the input's and the inverse) plus
// the product, and the spectrum read (4 D N bytes) instead of the filter. "x2 / bound" compares
// the two threads' CPU time with the one-core bound, which is the wall time against the two-core
// bound (both rates doubled) when the two cores are idle and the threads balanced.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
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

// One call's input u [1, T, D], filter h [L, D] and output y of a shape (D = 768).
struct Problem {
  static constexpr index_t D = 768;
  seqmix::Tensor<float, 3> u;
  seqmix::Tensor<float, 2> h;
  seqmix::Tensor<float, 3> y;

  explicit Problem(const Shape& shape)
      : u(st::random_tensor<3>({1, shape.T, D}, 1)),
        h(st::random_tensor<2>({shape.L, D}, 2, -0.05f, 0.05f)),
        y({1, shape.T, D}) {}
};

// The FFT form's bound for T tokens of D channels at FFT length N: u and y plus `filter_floats`
// per channel read at the streaming rate, and `transforms` real transforms of N points per channel
// plus the spectral product at the FMA peak. Per call: the filter (L floats) and three transforms;
// with a prepared spectrum: the spectrum (N floats) and two.
double fft_bound_seconds(double T, double D, double N, double filter_floats, int transforms, double gflops, double gbs) {
  const double bytes = 4.0 * D * (2.0 * T + filter_floats);
  const double flop = D * (transforms * 2.5 * N * std::log2(N) + 6 * (N / 2 + 1));
  return bytes / (gbs * 1e9) + flop / (gflops * 1e9);
}

void measure(const Shape& shape, double gflops, double gbs) {
  constexpr index_t D = Problem::D;
  const index_t T = shape.T, L = shape.L;
  Problem p(shape);
  const auto& u = p.u;
  const auto& h = p.h;
  auto& y = p.y;
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
  const double bound = fft_bound_seconds(T, D, N, L, 3, gflops, gbs);
  std::printf("%-7ld %-7ld %11.2f %11.2f %8.2f %7s %10.2f %8.2f\n", static_cast<long>(T), static_cast<long>(L), fft * 1e3,
              direct * 1e3, direct > 0 ? direct / fft : -1.0, automatic_fft ? "fft" : "direct", bound * 1e3, fft / bound);
  std::fflush(stdout);
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Old (FFT form, filter transformed per call) against prepared, alternated; one and two threads.
void measure_prepared(const Shape& shape, double gflops, double gbs) {
  constexpr index_t D = Problem::D;
  const index_t T = shape.T, L = shape.L;
  Problem p(shape);
  const auto& u = p.u;
  const auto& h = p.h;
  auto& y = p.y;
  const seqmix::LongConvFilterSpectrum spectrum(h.view(), {}, {D, T});
  const seqmix::LongConvOptions fft{seqmix::LongConvDirection::causal, seqmix::LongConvMethod::fft};
  const auto old_call = [&](const seqmix::Executor& ex) { seqmix::long_conv({u.view(), h.view()}, {y.view()}, fft, ex); };
  const auto new_call = [&](const seqmix::Executor& ex) {
    seqmix::long_conv({u.view(), h.view()}, spectrum, {y.view()}, fft, ex);
  };
  const auto cpu = [](auto clock, auto call, const seqmix::Executor& ex) {
    const double start = clock();
    call(ex);
    return clock() - start;
  };
  const int rounds = T >= 16384 ? 3 : 5;
  const auto direct_call = [&](const seqmix::Executor& ex) {
    seqmix::long_conv({u.view(), h.view()}, {y.view()}, {seqmix::LongConvDirection::causal, seqmix::LongConvMethod::direct}, ex);
  };
  const bool short_filter = L <= 64;  // the crossover rows: the direct form too
  std::vector<double> old1, new1, old2, new2, direct1;
  old_call(st::two_thread_pool()), new_call(st::two_thread_pool());  // scratch of both settings
  for (int r = 0; r < rounds; ++r) {
    old1.push_back(cpu(thread_cpu_seconds, old_call, seqmix::serial_executor()));
    new1.push_back(cpu(thread_cpu_seconds, new_call, seqmix::serial_executor()));
    old2.push_back(cpu(st::process_cpu_seconds, old_call, st::two_thread_pool()));
    new2.push_back(cpu(st::process_cpu_seconds, new_call, st::two_thread_pool()));
    if (short_filter) direct1.push_back(cpu(thread_cpu_seconds, direct_call, seqmix::serial_executor()));
  }
  const double o1 = median_of(old1), n1 = median_of(new1), o2 = median_of(old2),
               n2 = median_of(new2);
  const bool automatic_fft = seqmix::long_conv_method({u.view(), h.view()}, spectrum, {y.view()}) == seqmix::LongConvMethod::fft;
  const double N = static_cast<double>(spectrum.fft_length());
  const double old_bound = fft_bound_seconds(T, D, N, L, 3, gflops, gbs);
  const double new_bound = fft_bound_seconds(T, D, N, N, 2, gflops, gbs);
  std::printf("%-7ld %-7ld %9.2f %9.2f %7.2f %9.2f %9.2f %7.2f %9.2f %7s %9.2f %9.2f %6.2f %6.2f %6.2f %6.2f\n",
              static_cast<long>(T), static_cast<long>(L), o1 * 1e3, n1 * 1e3, o1 / n1, o2 * 1e3, n2 * 1e3, o2 / n2,
              short_filter ? median_of(direct1) * 1e3 : -1.0, automatic_fft ? "fft" : "direct", old_bound * 1e3, new_bound * 1e3, o1 / old_bound, n1 / new_bound,
              o2 / old_bound, n2 / new_bound);
  std::fflush(stdout);
}

// The prepared form's one-thread call pass by pass (--passes): long_conv_fft_walk's steps for a
// causal call without state (walks of long_conv_prepared_walk_width blocks, the prepared spectrum
// read in place; long_conv_convolve_parts' forward stages, product and inverse stages timed apart),
// each timed in thread CPU time and summed over the walks, medians of 3 calls, against its share
// of the prepared bound: the gather reads u, the first pass does log2(parts) of the forward
// transform's log2 N levels, the parts' forward (inverse) stages the rest of the forward
// (inverse) transform, the product its flops and the spectrum read, the last pass the inverse's
// top levels, the scatter writes y.
void measure_passes(const Shape& shape, double gflops, double gbs) {
  namespace sd = seqmix::detail;
  constexpr index_t D = Problem::D, E = sd::kFftElement;
  const index_t T = shape.T;
  Problem p(shape);
  const seqmix::LongConvFilterSpectrum spectrum(p.h.view(), {}, {D, T});
  const index_t N = spectrum.fft_length(), blocks = (D + E - 1) / E;
  const sd::FftTwiddles& tw = sd::fft_twiddles(N);
  const index_t per = sd::long_conv_prepared_walk_width(blocks, 1, N);
  const seqmix::LongConvInputs in{p.u.view(), p.h.view()};  // no skip or bias: no row weights
  const seqmix::TensorView<float, 3> y = p.y.view();
  // The walks' scratch as the call lays it out and grows it (huge pages), sized for the widest.
  const auto layout_of = [&](const sd::LongConvWalk& walk) { return sd::long_conv_walk_layout(walk, N, T, true); };
  seqmix::AlignedVector<float> x;
  sd::long_conv_grow_scratch(x, layout_of(sd::LongConvWalk{0, per, D, E}).floats(sd::LongConvWalk{0, per, D, E}, N));
  constexpr int kPasses = 7;
  const char* names[kPasses] = {"gather", "first pass", "parts fwd", "product", "parts inv", "last pass", "scatter"};
  std::vector<double> times[kPasses];
  const index_t len = N / sd::long_conv_top_parts(N);
  for (int round = 0; round < 4; ++round) {  // round 0 warms up
    double t[kPasses] = {};
    const auto timed = [&](int pass, auto f) {
      const double start = thread_cpu_seconds();
      f();
      t[pass] += thread_cpu_seconds() - start;
    };
    for (index_t first = 0; first < blocks; first += per) {
      const sd::LongConvWalk walk{first * E, std::min(per, blocks - first), D, E};
      const sd::LongConvWalkLayout layout = layout_of(walk);
      timed(0, [&] { sd::long_conv_gather_rows(in, walk, 0, 0, layout.stride, x.data(), layout.stream); });
      for (index_t k = 0; k < walk.blocks; ++k) {
        const sd::LongConvSignal xk = layout.signal(x.data(), walk, k, N);
        const float* G = spectrum.data() + (first + k) * N * E;
        timed(1, [&] { sd::long_conv_forward_top(T, xk, tw); });
        // long_conv_convolve_parts, its three steps timed apart
        for (index_t part = 0; part < N; part += len) {
          const index_t mirror = tw.mirror[static_cast<std::size_t>(part)] / len * len;
          if (mirror < part) continue;
          timed(2, [&] {
            sd::fft_dif(xk.at(part), len, tw);
            if (mirror != part) sd::fft_dif(xk.at(mirror), len, tw);
          });
          timed(3, [&] { sd::long_conv_spectral_product(xk, G, tw, part, mirror, len); });
          timed(4, [&] {
            sd::fft_dit_inverse(xk.at(part), len, tw);
            if (mirror != part) sd::fft_dit_inverse(xk.at(mirror), len, tw);
          });
        }
        timed(5, [&] { sd::long_conv_inverse_top(xk, tw, 0, T); });
      }
      timed(6, [&] {
        sd::long_conv_scatter_rows(in, y, walk, sd::LongConvRowWeights{}, 0, 0, layout.stride, x.data(), layout.stream);
      });
    }
    if (round > 0)
      for (int pass = 0; pass < kPasses; ++pass) times[pass].push_back(t[pass]);
  }
  const double levels = std::log2(static_cast<double>(N));
  const double top = std::log2(static_cast<double>(sd::long_conv_top_parts(N)));
  const double transform = D * 2.5 * N * levels / (gflops * 1e9), rows = 4.0 * D * T / (gbs * 1e9);
  const double parts = transform * (levels - top) / levels;
  const double bounds[kPasses] = {rows, transform * top / levels, parts,
                                  D * 6 * (N / 2 + 1) / (gflops * 1e9) + 4.0 * D * N / (gbs * 1e9), parts,
                                  transform * top / levels, rows};
  double total = 0, total_bound = 0;
  std::printf("\npasses of the prepared call, T = L = %ld (N = %ld, walks of %ld blocks), one thread, medians of 3\n",
              static_cast<long>(T), static_cast<long>(N), static_cast<long>(per));
  std::printf("%-11s %9s %9s %7s\n", "pass", "ms", "bound_ms", "/bound");
  for (int pass = 0; pass < kPasses; ++pass) {
    const double ms = median_of(times[pass]);
    total += ms, total_bound += bounds[pass];
    std::printf("%-11s %9.2f %9.2f %7.2f\n", names[pass], ms * 1e3, bounds[pass] * 1e3, ms / bounds[pass]);
  }
  std::printf("%-11s %9.2f %9.2f %7.2f\n", "sum", total * 1e3, total_bound * 1e3, total / total_bound);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> shapes = {{256, 256},   {1024, 1024}, {4096, 4096}, {16384, 16384}, {65536, 65536}, {4096, 16},
                               {4096, 64},   {4096, 128},  {4096, 256},  {256, 256},     {128, 128}};
  // --prepared: only the prepared-form table; --passes: only the prepared call pass by pass.
  const bool prepared_only = argc > 1 && std::string(argv[1]) == "--prepared";
  const bool passes_only = argc > 1 && std::string(argv[1]) == "--passes";
  if (prepared_only || passes_only) --argc, ++argv;
  if (argc > 1) {
    shapes.clear();
    for (int a = 1; a + 1 < argc; a += 2) shapes.push_back({std::atol(argv[a]), std::atol(argv[a + 1])});
  }
  const double gflops = fma_gflops(), gbs = read_gbs();
  std::printf("one thread, thread CPU time: fp32 FMA %.1f GFLOP/s, streaming read %.1f GB/s\n", gflops, gbs);
  if (passes_only) {
    for (const Shape& shape : shapes) measure_passes(shape, gflops, gbs);
    return 0;
  }
  std::printf("%-7s %-7s %11s %11s %8s %7s %10s %8s\n", "T", "L", "fft_ms", "direct_ms", "dir/fft", "auto", "bound_ms",
              "fft/bnd");
  if (!prepared_only)
    for (const Shape& shape : shapes) measure(shape, gflops, gbs);
  std::printf("\nprepared spectrum against the FFT form (old), medians; 1t: thread CPU, 2t: both threads' CPU\n");
  std::printf("%-7s %-7s %9s %9s %7s %9s %9s %7s %9s %7s %9s %9s %6s %6s %6s %6s\n", "T", "L", "old1t_ms", "prep1t_ms",
              "old/prp", "old2t_ms", "prep2t_ms", "old/prp", "dir1t_ms", "auto", "oldbnd_ms", "prpbnd_ms", "o/bnd", "p/bnd",
              "o2/bnd", "p2/bnd");
  for (const Shape& shape : shapes) measure_prepared(shape, gflops, gbs);
  return 0;
}
