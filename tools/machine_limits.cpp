// seqmix-machine-limits: the limits of the machine the benchmarks run on, measured on all cores,
// so that every benchmark figure can be quoted as a fraction of them (the project's machines
// differ from session to session: an AVX-512 EPYC one day, a Sapphire Rapids Xeon the next).
//
//   fp32 FMA peak       GFLOP/s, vector FMAs on independent accumulators (xsimd's widest batch)
//   bf16 dot peak       GFLOP/s through AVX512-BF16 vdpbf16ps, where the build target has it
//   int8 dot peak       GOP/s through AVX512-VNNI vpdpbusd, where the build target has it
//   AMX bf16 / int8     GFLOP/s / GOP/s through tile dot products, where the target has AMX and
//                       the kernel grants the tile state
//   streaming read      GB/s, a 512 MiB buffer summed by every core
//
// Each figure is the best of several repetitions (a shared machine's neighbours only ever slow
// a run down). Prints a table, or JSON with --json; --quick shortens every measurement (for the
// test that checks the tool runs).
#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "seqmix_testing/limit_probes.hpp"

using namespace seqmix::testing::limits;

int main(int argc, char** argv) {
  Settings s;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      json = true;
    } else if (arg == "--quick") {
      s.quick = true;
      s.repetitions = 2;
    } else {
      std::fprintf(stderr, "usage: %s [--json] [--quick]\n", argv[0]);
      return 2;
    }
  }
  s.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  struct Limit {
    const char* key;
    const char* unit;
    double value;  // < 0: not available in this build or on this CPU
  };
  std::vector<Limit> limits;
  limits.push_back({"fp32_fma_gflops", "GFLOP/s", fp32_fma_gflops(s)});
#if defined(__AVX512BF16__)
  limits.push_back({"bf16_dot_gflops", "GFLOP/s", bf16_dot_gflops(s)});
#else
  limits.push_back({"bf16_dot_gflops", "GFLOP/s", -1});
#endif
#if defined(__AVX512VNNI__)
  limits.push_back({"int8_dot_gops", "GOP/s", int8_dot_gops(s)});
#else
  limits.push_back({"int8_dot_gops", "GOP/s", -1});
#endif
#if defined(SEQMIX_AMX_BF16) && (defined(__AMX_INT8__) || defined(__AMXINT8__))
  const bool amx = request_amx();
  limits.push_back({"amx_bf16_gflops", "GFLOP/s", amx ? amx_rate<false>(s) : -1});
  limits.push_back({"amx_int8_gops", "GOP/s", amx ? amx_rate<true>(s) : -1});
#else
  limits.push_back({"amx_bf16_gflops", "GFLOP/s", -1});
  limits.push_back({"amx_int8_gops", "GOP/s", -1});
#endif
  limits.push_back({"stream_read_gbs", "GB/s", stream_read_gbs(s)});

  const std::string model = cpu_model(), flags = cpu_flags();
  if (json) {
    std::printf("{\n  \"cpu_model\": \"%s\",\n  \"cpu_flags\": \"%s\",\n  \"simd\": \"%s\",\n  \"threads\": %d", model.c_str(),
                flags.c_str(), xsimd::default_arch::name(), s.threads);
    for (const Limit& l : limits) {
      if (l.value < 0)
        std::printf(",\n  \"%s\": null", l.key);
      else
        std::printf(",\n  \"%s\": %.1f", l.key, l.value);
    }
    std::printf("\n}\n");
  } else {
    std::printf("machine limits on %d threads: %s (%s; built for %s)\n", s.threads, model.c_str(), flags.c_str(),
                xsimd::default_arch::name());
    for (const Limit& l : limits) {
      if (l.value < 0)
        std::printf("  %-18s n/a (not in this build's target or not granted)\n", l.key);
      else
        std::printf("  %-18s %9.1f %s\n", l.key, l.value, l.unit);
    }
  }
  return g_sink.load() == 1234.5 ? 1 : 0;  // never true; keeps the kernels from being optimized away
}
