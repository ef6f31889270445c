// libFuzzer entry point of one target, chosen at compile time by SEQMIX_FUZZ_TARGET (e.g.
// -DSEQMIX_FUZZ_TARGET=fuzz_scan); scripts/fuzz.sh builds one binary per target with clang and
// -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>

#include "fuzz.hpp"

#ifndef SEQMIX_FUZZ_TARGET
#error "define SEQMIX_FUZZ_TARGET to one of the fuzz_* functions of fuzz.hpp"
#endif

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return seqmix::fuzz::SEQMIX_FUZZ_TARGET(data, size);
}
