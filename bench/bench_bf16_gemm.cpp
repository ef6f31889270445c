// The bf16 GEMM tiles the bf16 dot-product kernels are built on (core/bf16_gemm.hpp), at the
// shapes they are called with, 2 threads each running its own calls:
//
//   bf16_gemm/attention_scores/M256_N64_K128   S = Q K^T of a prefill tile: 64 query rows x 4
//                                               heads of a GQA group, 64 keys, head size 128
//   bf16_gemm/attention_values/M256_N128_K64   acc = alpha acc + P V over 64 keys, Dv 128
//   bf16_gemm/chunk_products/M64_N128_K128     a chunked form's [L x K] x [K x V], chunk 64
//
// GFLOP/s and eff against the bf16 dot peak; `amx` is 1 where gemm_bf16 runs on AMX tiles
// (core/amx_gemm.hpp: an AMX target whose kernel granted the tile state), and
// `speedup_vs_dot` is the vdpbf16ps kernel's CPU time over gemm_bf16's, alternated in the same
// run (1 where there is no AMX: both are the same kernel). K counts bf16 elements (K / 2 pair
// words). Nothing is registered where the target has no AVX512-BF16 (gemm_bf16 does not exist
// there; the callers keep fp32 kernels).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
namespace {

using seqmix::index_t;
namespace st = seqmix::testing;

// One thread's operands: A [M x K/2] and B [K/2 x N] pair words of small bf16 values, C fp32.
struct GemmOperands {
  index_t M, N, Kw;
  std::vector<std::uint32_t> a, b;
  std::vector<float> c, scale;
  GemmOperands(index_t m, index_t n, index_t k)
      : M(m), N(n), Kw(k / 2), a(static_cast<std::size_t>(m * (k / 2))), b(static_cast<std::size_t>((k / 2) * n)),
        c(static_cast<std::size_t>(m * n), 0.5f), scale(static_cast<std::size_t>(m), 0.99f) {
    std::uint32_t x = 12345;
    const auto next = [&] {  // bf16 pairs in about [-1, 1): exponent kept near 0x3f
      x = x * 1664525u + 1013904223u;
      return (0x3f00u | (x >> 25)) | ((0xbf00u | (x >> 18 & 0x7fu)) << 16);
    };
    for (auto& w : a) w = next();
    for (auto& w : b) w = next();
  }
};

constexpr int kCallsPerThread = 64;

template <class Gemm>
void run_on_two_threads(std::vector<GemmOperands>& ops, bool scaled, Gemm&& gemm) {
  seqmix::parallel_for(st::two_thread_pool(), 2, 1, [&](index_t begin, index_t end) {
    for (index_t t = begin; t < end; ++t) {
      GemmOperands& o = ops[static_cast<std::size_t>(t)];
      for (int call = 0; call < kCallsPerThread; ++call)
        gemm(o.a.data(), o.Kw, o.b.data(), o.N, o.c.data(), o.N, o.M, o.N, o.Kw, scaled ? o.scale.data() : nullptr);
    }
  });
}

void gemm_rows(benchmark::State& state, index_t M, index_t N, index_t K, bool scaled) {
  std::vector<GemmOperands> ops{GemmOperands(M, N, K), GemmOperands(M, N, K)};
  const auto dispatched = [](auto... args) { seqmix::detail::gemm_bf16(args...); };
  const auto dot = [](auto... args) { seqmix::detail::gemm_bf16_dot(args...); };
  for (auto _ : state) {
    run_on_two_threads(ops, scaled, dispatched);
    benchmark::DoNotOptimize(ops[0].c.data());
  }
  const auto t = st::alternated_cpu_medians([&] { run_on_two_threads(ops, scaled, dot); },
                                            [&] { run_on_two_threads(ops, scaled, dispatched); });
  state.counters["speedup_vs_dot"] = t[0] / t[1];
  state.counters["amx"] = seqmix::detail::amx_tiles_ready() ? 1 : 0;
  st::report_gflops_bf16(state, 2.0 * kCallsPerThread * 2.0 * static_cast<double>(M * N * K));
}

const bool registered = [] {
  const auto reg = [](const std::string& name, index_t M, index_t N, index_t K, bool scaled) {
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { gemm_rows(s, M, N, K, scaled); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  };
  reg("bf16_gemm/attention_scores/M256_N64_K128", 256, 64, 128, false);
  reg("bf16_gemm/attention_values/M256_N128_K64", 256, 128, 64, true);
  reg("bf16_gemm/chunk_products/M64_N128_K128", 64, 128, 128, false);
  return true;
}();

}  // namespace
#endif
