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
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "seqmix/core/simd.hpp"

#if defined(__AVX512BF16__) || defined(__AVX512VNNI__) || defined(__AMX_TILE__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Settings {
  bool quick = false;
  int threads = 1;
  int repetitions = 5;
};

// Runs body(thread) on `threads` threads at once and returns the wall time in seconds.
template <class Body>
double timed_on_threads(int threads, Body body) {
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
double best_of(const Settings& s, Rate rate) {
  double best = 0;
  for (int r = 0; r < s.repetitions; ++r) best = std::max(best, rate());
  return best;
}

std::atomic<double> g_sink{0};  // keeps every kernel's result alive

// 12 independent FMA chains: enough to cover the FMA latency (4 cycles) times two ports.
double fp32_fma_gflops(const Settings& s) {
  using batch = xsimd::batch<float>;
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      batch acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = batch(static_cast<float>(i));
      const batch b(1.0000001f), c(1e-7f);
      for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = xsimd::fma(acc[i], b, c);
      batch sum = acc[0];
      for (int i = 1; i < 12; ++i) sum += acc[i];
      g_sink = g_sink + seqmix::simd::reduce_add(sum);
    });
    return s.threads * iterations * 12.0 * batch::size * 2.0 / seconds / 1e9;
  });
}

#if defined(__AVX512BF16__)
// vdpbf16ps: per 32-bit lane, two bf16 products added to an fp32 accumulator (4 flops a lane).
double bf16_dot_gflops(const Settings& s) {
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      __m512 acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
      const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
      for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
      __m512 sum = acc[0];
      for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
      g_sink = g_sink + _mm512_reduce_add_ps(sum);
    });
    return s.threads * iterations * 12.0 * 16 * 4 / seconds / 1e9;
  });
}
#endif

#if defined(__AVX512VNNI__)
// vpdpbusd: per 32-bit lane, four u8 x s8 products added to an int32 accumulator (8 ops a lane).
double int8_dot_gops(const Settings& s) {
  const long iterations = s.quick ? 200000 : 20000000;
  return best_of(s, [&] {
    const double seconds = timed_on_threads(s.threads, [&](int) {
      __m512i acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
      const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
      for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
      __m512i sum = acc[0];
      for (int i = 1; i < 12; ++i) sum = _mm512_add_epi32(sum, acc[i]);
      g_sink = g_sink + _mm512_reduce_add_epi32(sum);
    });
    return s.threads * iterations * 12.0 * 16 * 8 / seconds / 1e9;
  });
}
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__) && defined(__linux__)
// Linux hands out the AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18).
bool request_amx() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0;
}

// Palette 1: tiles 0-3 accumulate [16 rows x 16 fp32/int32], tiles 4-5 hold A [16 x 64 bytes],
// tiles 6-7 hold B [16 x 64 bytes]. Each tile product is 16 x 16 x 32 bf16 MACs (or 16 x 16 x 64
// int8 MACs): 2 ops per MAC.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

template <bool Int8>
double amx_rate(const Settings& s) {
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
double stream_read_gbs(const Settings& s) {
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

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown";
}

// The CPU flags that decide which kernels can run, as the kernel reports them.
std::string cpu_flags() {
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

}  // namespace

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
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__) && defined(__linux__)
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
