// The machine kind the benchmark reports are kept under (testing/seqmix_testing/limit_probes.hpp):
// AMD's core generation from the CPU family and model, since a cloud machine's model name is often
// only "AMD EPYC" while a Zen 4 and a Zen 5 differ twofold in fp32 peak.
#include <catch2/catch.hpp>

#include "seqmix/core/cpu_kind.hpp"
#include "seqmix_testing/limit_probes.hpp"

using seqmix::testing::limits::amd_core_generation;

TEST_CASE("machine kind: AMD core generation from family and model", "[machine_limits]") {
  CHECK(amd_core_generation(0x17, 0x01) == "Zen");      // Naples
  CHECK(amd_core_generation(0x17, 0x31) == "Zen 2");    // Rome
  CHECK(amd_core_generation(0x19, 0x01) == "Zen 3");    // Milan
  CHECK(amd_core_generation(0x19, 0x11) == "Zen 4");    // Genoa
  CHECK(amd_core_generation(0x19, 0xa0) == "Zen 4");    // Bergamo
  CHECK(amd_core_generation(0x19, 0x61) == "Zen 4");    // Raphael
  CHECK(amd_core_generation(0x19, 0x21) == "Zen 3");    // Vermeer
  CHECK(amd_core_generation(0x1a, 0x02) == "Zen 5");    // Turin
  CHECK(amd_core_generation(0x06, 0x8f).empty());       // not an AMD family
}

TEST_CASE("machine kind: the CPU model names a kind on this machine", "[machine_limits]") {
  const std::string model = seqmix::testing::limits::cpu_model();
  CHECK_FALSE(model.empty());
  if (seqmix::testing::limits::cpuinfo_field("vendor_id") == "AuthenticAMD" &&
      seqmix::testing::limits::cpuinfo_field("model name").find("EPYC") != std::string::npos)
    CHECK(model.find("(Zen") != std::string::npos);
}

TEST_CASE("machine kind: the library's CPUID family matches /proc/cpuinfo", "[machine_limits]") {
  // core/cpu_kind.hpp picks where the KV-cache decode's prefetches land by AMD family; it must read
  // the same family the kernel reports (0 on other vendors).
  const std::string vendor = seqmix::testing::limits::cpuinfo_field("vendor_id");
  const std::string family = seqmix::testing::limits::cpuinfo_field("cpu family");
  if (vendor == "AuthenticAMD" && !family.empty()) {
    CHECK(seqmix::detail::amd_cpu_family() == static_cast<unsigned>(std::stoi(family)));
    CHECK(seqmix::detail::amd_cpu_id().model ==
          static_cast<unsigned>(std::stoi(seqmix::testing::limits::cpuinfo_field("model"))));
    CHECK(seqmix::detail::amd_zen5_or_later() == (std::stoi(family) >= 0x1a));
  } else if (!vendor.empty()) {
    CHECK(seqmix::detail::amd_cpu_family() == 0u);
    CHECK_FALSE(seqmix::detail::amd_zen5_or_later());
  }
}
