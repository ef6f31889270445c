// Throughput counters for the benchmarks, each with its efficiency against the limit of the
// machine it runs on (issue 19): absolute times mean nothing across the project's machines (an
// AVX-512 EPYC one session, a Sapphire Rapids Xeon the next), a fraction of the limit does.
//
//   report_throughput(state, flop, bytes)  per iteration: "GFLOP/s" and/or "GB/s", and "eff",
//                                          the larger of flop / fp32 FMA peak and bytes /
//                                          streaming bandwidth (the limit the kernel is closest
//                                          to, i.e. the one that binds)
//
// The limits come from the JSON of `seqmix-machine-limits --json` when the environment variable
// SEQMIX_MACHINE_LIMITS names that file (bench_summary and scripts/bench_report.sh do so, so
// every program of a run divides by the same figures), else they are measured once when the
// program starts (about half a second). Either way they are written into the benchmark's context
// (the header of the console output and the "context" object of --benchmark_format=json).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <benchmark/benchmark.h>

#include "seqmix_testing/limit_probes.hpp"

namespace seqmix::testing {

struct BenchLimits {
  double fp32_fma_gflops = 0;  ///< all cores
  double stream_read_gbs = 0;  ///< all cores
  double bf16_dot_gflops = 0;  ///< all cores, AVX512-BF16 dot products; 0 where the target has none
  std::string source;          ///< the JSON file they were read from, or "measured"
};

namespace bench_detail {

// The number after "key": in a flat JSON object (the tool's own output), or 0.
inline double json_number(const std::string& text, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  const auto at = text.find(quoted);
  if (at == std::string::npos) return 0;
  const auto colon = text.find(':', at + quoted.size());
  if (colon == std::string::npos) return 0;
  return std::strtod(text.c_str() + colon + 1, nullptr);
}

inline BenchLimits read_or_measure_limits() {
  BenchLimits limits;
  if (const char* path = std::getenv("SEQMIX_MACHINE_LIMITS"); path != nullptr && *path != '\0') {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    limits.fp32_fma_gflops = json_number(text.str(), "fp32_fma_gflops");
    limits.stream_read_gbs = json_number(text.str(), "stream_read_gbs");
    limits.bf16_dot_gflops = std::max(0.0, json_number(text.str(), "bf16_dot_gflops"));
    limits.source = path;
    if (limits.fp32_fma_gflops > 0 && limits.stream_read_gbs > 0) return limits;
    std::fprintf(stderr, "SEQMIX_MACHINE_LIMITS=%s has no fp32_fma_gflops / stream_read_gbs; measuring\n", path);
  }
  limits::Settings settings;
  settings.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  settings.repetitions = 3;
  limits.fp32_fma_gflops = limits::fp32_fma_gflops(settings);
  limits.stream_read_gbs = limits::stream_read_gbs(settings);
#if defined(__AVX512BF16__)
  limits.bf16_dot_gflops = limits::bf16_dot_gflops(settings);
#endif
  limits.source = "measured";
  return limits;
}

inline const BenchLimits& limits_in_context() {
  static const BenchLimits limits = [] {
    BenchLimits l = read_or_measure_limits();
    benchmark::AddCustomContext("cpu_model", limits::cpu_model());
    benchmark::AddCustomContext("fp32_fma_gflops", std::to_string(l.fp32_fma_gflops));
    benchmark::AddCustomContext("stream_read_gbs", std::to_string(l.stream_read_gbs));
    benchmark::AddCustomContext("bf16_dot_gflops", std::to_string(l.bf16_dot_gflops));
    benchmark::AddCustomContext("limits_source", l.source);
    return l;
  }();
  return limits;
}

// Measured (or read) before main, so the context printed before the first benchmark holds them.
inline const bool limits_registered = (limits_in_context(), true);

}  // namespace bench_detail

/// The limits every "eff" counter of this program divides by.
inline const BenchLimits& bench_limits() { return bench_detail::limits_in_context(); }

/// Sets "GFLOP/s" (when flop_per_iteration > 0), "GB/s" (when bytes_per_iteration > 0) and "eff",
/// the larger fraction of the two limits (also across several calls for one benchmark).
inline void report_throughput(benchmark::State& state, double flop_per_iteration, double bytes_per_iteration) {
  using benchmark::Counter;
  const BenchLimits& limits = bench_limits();
  double eff = 0;  // per iteration, in units of "one second at the limit"
  if (flop_per_iteration > 0) {
    state.counters["GFLOP/s"] = Counter(flop_per_iteration * 1e-9, Counter::kIsIterationInvariantRate);
    eff = std::max(eff, flop_per_iteration * 1e-9 / limits.fp32_fma_gflops);
  }
  if (bytes_per_iteration > 0) {
    state.counters["GB/s"] = Counter(bytes_per_iteration * 1e-9, Counter::kIsIterationInvariantRate);
    eff = std::max(eff, bytes_per_iteration * 1e-9 / limits.stream_read_gbs);
  }
  // A kernel reported twice (flop, then bytes) keeps the larger fraction.
  const auto previous = state.counters.find("eff");
  if (previous != state.counters.end()) eff = std::max(eff, previous->second.value);
  if (eff > 0) state.counters["eff"] = Counter(eff, Counter::kIsIterationInvariantRate);
}

/// "GFLOP/s" and its "eff" against the fp32 FMA peak.
inline void report_gflops(benchmark::State& state, double flop_per_iteration) {
  report_throughput(state, flop_per_iteration, 0);
}

/// "GFLOP/s" of a kernel computing with bf16 dot products, its "eff" against the bf16 dot peak
/// (the fp32 FMA peak where the target has no AVX512-BF16, as the kernel then runs in fp32).
inline void report_gflops_bf16(benchmark::State& state, double flop_per_iteration) {
  using benchmark::Counter;
  const BenchLimits& limits = bench_limits();
  const double peak = limits.bf16_dot_gflops > 0 ? limits.bf16_dot_gflops : limits.fp32_fma_gflops;
  state.counters["GFLOP/s"] = Counter(flop_per_iteration * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["eff"] = Counter(flop_per_iteration * 1e-9 / peak, Counter::kIsIterationInvariantRate);
}

/// "GB/s" and its "eff" against the streaming read bandwidth.
inline void report_gbytes(benchmark::State& state, double bytes_per_iteration) {
  report_throughput(state, 0, bytes_per_iteration);
}

}  // namespace seqmix::testing
