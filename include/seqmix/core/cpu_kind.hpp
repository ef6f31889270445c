// The kind of core the process runs on, for the few choices that differ between the machines the
// library is tuned on and cannot be read from the compile target: a Zen 4 and a Zen 5 both build
// -march=native with AVX-512, but a Zen 4 runs it on 256-bit units with fewer L1 misses in flight,
// and where a kernel's prefetches should land differs between them (kv_cache/README.md, "On Zen 4").
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace seqmix::detail {

// AMD's CPU family and model from CPUID leaf 1 (family 0x19: Zen 3 / Zen 4, 0x1a: Zen 5); both 0
// on other vendors and other architectures.
struct AmdCpuId {
  unsigned family = 0, model = 0;
};
inline AmdCpuId amd_cpu_id() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return {};
  const bool amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return {};
  const unsigned base = (eax >> 8) & 0xfu, base_model = (eax >> 4) & 0xfu;
  if (base != 0xfu) return {base, base_model};
  return {base + ((eax >> 20) & 0xffu), (((eax >> 16) & 0xfu) << 4) | base_model};
#else
  return {};
#endif
}
inline unsigned amd_cpu_family() noexcept { return amd_cpu_id().family; }

// Whether this is a Zen 5 or later AMD core (full 512-bit units), read once per process.
inline bool amd_zen5_or_later() noexcept {
  static const bool zen5 = amd_cpu_family() >= 0x1a;
  return zen5;
}

}  // namespace seqmix::detail
