// The limits of the machine the benchmarks run on (fp32 FMA, AVX512-BF16 and VNNI dot products,
// AMX tiles, streaming read bandwidth), measured on all cores. Shared by seqmix-machine-limits
// (tools/machine_limits.cpp) and the benchmarks' efficiency counters (bench_counters.hpp), so
// both quote the same definition of "the limit".
//
// Each figure is the best of several repetitions: a shared machine's neighbours only ever slow a
// run down.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "seqmix/core/amx_gemm.hpp"
#include "seqmix/core/cpu_kind.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix_testing/cpu_clock.hpp"

#if defined(__AVX512BF16__) || defined(__AVX512VNNI__) || defined(SEQMIX_AMX_BF16)
#include <immintrin.h>
#endif

namespace seqmix::testing::limits {


using Clock = std::chrono::steady_clock;

// How long each measurement runs. `quick` shortens every loop (for the test that checks the tool
// runs); the benchmarks use the default lengths with fewer repetitions.
struct Settings {
  bool quick = false;
  int threads = 1;
  int repetitions = 5;
};

// Runs body(thread) on `threads` threads at once and returns the wall time in seconds.
template <class Body>
inline double timed_on_threads(int threads, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  Clock::time_point start;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      body(t);
    });
  while (ready.load() < threads) {
  }
  start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& w : workers) w.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

template <class Rate>
inline double best_of(const Settings& s, Rate rate) {
  double best = 0;
  for (int r = 0; r < s.repetitions; ++r) best = std::max(best, rate());
  return best;
}

inline std::atomic<double> g_sink{0};  // keeps every kernel's result alive

// Advances 12 independent chains by one step each. The chains are named by constant indices (a
// fold, not a loop) so that the compiler keeps them in registers at every optimization level: with
// a loop over the array, g++ -O2 did not unroll it and kept the accumulators in memory, and the
// FMA kernel measured 35-67 instead of about 225 GFLOP/s per core (AMD EPYC Zen 5).
constexpr int kChains = 12;

template <class V, class Step, std::size_t... I>
inline void advance_chains(V (&acc)[kChains], const Step& step, std::index_sequence<I...>) noexcept {
  ((acc[I] = step(acc[I])), ...);
}

template <class V, class Step>
inline void advance_chains(V (&acc)[kChains], const Step& step) noexcept {
  advance_chains(acc, step, std::make_index_sequence<kChains>{});
}

// 12 independent FMA chains of `iterations` steps on the calling thread: enough chains to cover
// the FMA latency (4 cycles) times two ports.
inline void fma_chains(long iterations) {
  using batch = xsimd::batch<float>;
  batch acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = batch(static_cast<float>(i));
  const batch b(1.0000001f), c(1e-7f);
  for (long it = 0; it < iterations; ++it)
    advance_chains(acc, [&](const batch& a) { return xsimd::fma(a, b, c); });
  batch sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum += acc[i];
  g_sink = g_sink + seqmix::simd::reduce_add(sum);
}

// The flops fma_chains(iterations) does.
inline double fma_chain_flops(long iterations) {
  return iterations * double(kChains) * xsimd::batch<float>::size * 2.0;
}

inline double fp32_fma_gflops(const Settings& s) {
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) { fma_chains(iterations); });
    return s.threads * fma_chain_flops(iterations) / seconds / 1e9;
  });
}

/// One core's fp32 FMA rate in GFLOP/s of this thread's CPU time: the rate a benchmark timing
/// its own phases in thread CPU time compares them with, in the same run.
inline double one_thread_fma_gflops(long iterations) {
  const double start = thread_cpu_seconds();
  fma_chains(iterations);
  return fma_chain_flops(iterations) / (thread_cpu_seconds() - start) / 1e9;
}

#if defined(__AVX512BF16__)
// vdpbf16ps: per 32-bit lane, two bf16 products added to an fp32 accumulator (4 flops a lane).
inline double bf16_dot_gflops(const Settings& s) {
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      __m512 acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
      const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
      for (long it = 0; it < iterations; ++it)
        advance_chains(acc, [&](const __m512& x) { return _mm512_dpbf16_ps(x, a, a); });
      __m512 sum = acc[0];
      for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
      g_sink = g_sink + _mm512_reduce_add_ps(sum);
    });
    return s.threads * iterations * double(kChains) * 16 * 4 / seconds / 1e9;
  });
}
#endif

#if defined(__AVX512VNNI__)
// vpdpbusd: per 32-bit lane, four u8 x s8 products added to an int32 accumulator (8 ops a lane).
inline double int8_dot_gops(const Settings& s) {
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      __m512i acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_epi32(i);
      const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
      for (long it = 0; it < iterations; ++it)
        advance_chains(acc, [&](const __m512i& x) { return _mm512_dpbusd_epi32(x, a, b); });
      __m512i sum = acc[0];
      for (int i = 1; i < kChains; ++i) sum = _mm512_add_epi32(sum, acc[i]);
      g_sink = g_sink + _mm512_reduce_add_epi32(sum);
    });
    return s.threads * iterations * double(kChains) * 16 * 8 / seconds / 1e9;
  });
}
#endif

#if defined(SEQMIX_AMX_BF16) && (defined(__AMX_INT8__) || defined(__AMXINT8__))
// Linux hands out the AMX tile state only on request: the library's own request (amx_gemm.hpp).
inline bool request_amx() { return seqmix::detail::amx_tiles_ready(); }

// Palette 1: tiles 0-3 accumulate [16 rows x 16 fp32/int32], tiles 4-5 hold A [16 x 64 bytes],
// tiles 6-7 hold B [16 x 64 bytes]. Each tile product is 16 x 16 x 32 bf16 MACs (or 16 x 16 x 64
// int8 MACs): 2 ops per MAC.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

template <bool Int8>
inline double amx_rate(const Settings& s) {
  const long iterations = s.quick ? 20000 : 2000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      if (!request_amx()) return;
      TileConfig config;
      for (int t = 0; t < 8; ++t) {
        config.colsb[t] = 64;
        config.rows[t] = 16;
      }
      _tile_loadconfig(&config);
      alignas(64) std::uint8_t operand[16 * 64];
      std::memset(operand, 1, sizeof operand);
      alignas(64) std::int32_t out[16 * 16];
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      _tile_loadd(4, operand, 64);
      _tile_loadd(5, operand, 64);
      _tile_loadd(6, operand, 64);
      _tile_loadd(7, operand, 64);
      for (long it = 0; it < iterations; ++it) {
        if constexpr (Int8) {
          _tile_dpbssd(0, 4, 6);
          _tile_dpbssd(1, 4, 7);
          _tile_dpbssd(2, 5, 6);
          _tile_dpbssd(3, 5, 7);
        } else {
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, out, 64);
      _tile_release();
      g_sink = g_sink + out[0];
    });
    const double macs_per_product = Int8 ? 16.0 * 16 * 64 : 16.0 * 16 * 32;
    return s.threads * iterations * 4.0 * macs_per_product * 2 / seconds / 1e9;
  });
}
#endif

// Every core sums its share of one buffer: the read bandwidth a memory-bound decode can reach.
inline double stream_read_gbs(const Settings& s) {
  using batch = xsimd::batch<float>;
  const std::size_t floats = (s.quick ? std::size_t{8} : std::size_t{128}) << 20;  // 32 MiB / 512 MiB
  std::vector<float, xsimd::aligned_allocator<float>> buffer(floats, 1.f);
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int t) {
      const std::size_t per = floats / static_cast<std::size_t>(s.threads) / (4 * batch::size) * (4 * batch::size);
      const float* p = buffer.data() + per * static_cast<std::size_t>(t);
      batch a0(0.f), a1(0.f), a2(0.f), a3(0.f);
      for (std::size_t i = 0; i < per; i += 4 * batch::size) {
        a0 += batch::load_aligned(p + i);
        a1 += batch::load_aligned(p + i + batch::size);
        a2 += batch::load_aligned(p + i + 2 * batch::size);
        a3 += batch::load_aligned(p + i + 3 * batch::size);
      }
      g_sink = g_sink + seqmix::simd::reduce_add((a0 + a1) + (a2 + a3));
    });
    return floats * sizeof(float) / seconds / 1e9;
  });
}

// The value of the first "key : value" line of /proc/cpuinfo, or "" when there is none.
inline std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0 && line.find_first_not_of(" \t", key.size()) == line.find(':')) {
      const auto colon = line.find(':');
      return colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    }
  return "";
}

// AMD's core generation from the CPU family and model. Cloud machines often show only "AMD EPYC" as
// the model name, yet a Zen 4 (AVX-512 on 256-bit units) has half a Zen 5's fp32 peak: reports kept per
// machine kind must tell them apart. "" when the family is not one of these.
inline std::string amd_core_generation(int family, int model) {
  if (family == 0x17) return model >= 0x30 ? "Zen 2" : "Zen";
  if (family == 0x1a) return "Zen 5";
  if (family != 0x19) return "";
  const bool zen4 = (model >= 0x10 && model <= 0x1f) || (model >= 0x60 && model <= 0x7f) || (model >= 0xa0 && model <= 0xaf);
  return zen4 ? "Zen 4" : "Zen 3";
}

// The CPU's model name, with the core generation appended for AMD (e.g. "AMD EPYC (Zen 4)"), from
// the same CPUID family and model the library's run-time choices read (core/cpu_kind.hpp).
inline std::string cpu_model() {
  const std::string name = cpuinfo_field("model name");
  if (name.empty()) return "unknown";
  const seqmix::detail::AmdCpuId id = seqmix::detail::amd_cpu_id();
  const std::string generation = amd_core_generation(static_cast<int>(id.family), static_cast<int>(id.model));
  return generation.empty() ? name : name + " (" + generation + ")";
}

// The CPU flags that decide which kernels can run, as the kernel reports them.
inline std::string cpu_flags() {
  static const char* const interesting[] = {"avx2",        "fma",        "avx512f",   "avx512bw",  "avx512_vnni",
                                            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"};
  std::ifstream in("/proc/cpuinfo");
  std::string line, found;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      const std::string padded = " " + line.substr(line.find(':') + 1) + " ";
      for (const char* flag : interesting)
        if (padded.find(std::string(" ") + flag + " ") != std::string::npos) found += (found.empty() ? "" : " ") + std::string(flag);
      break;
    }
  return found;
}

}  // namespace seqmix::testing::limits
