// core/huge_pages.hpp and AlignedAllocator's large-buffer path: alignment, sizes around the
// threshold, release (a large block's mapping gone with it), the madvise mark confined to whole
// 2 MiB pages of the range (read back from /proc/self/smaps), and the buffer offered for
// caller-owned KV memory.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/huge_pages.hpp"
#include "seqmix/core/tensor.hpp"

namespace {

using seqmix::kHugePageBytes;
using seqmix::kHugePageMinBytes;

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// Linux with transparent huge pages compiled in: madvise(MADV_HUGEPAGE) is then accepted in every
// THP mode (the mode decides whether pages come, not whether the mark is taken).
bool kernel_has_thp() {
#if defined(__linux__)
  return static_cast<bool>(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"));
#else
  return false;
#endif
}

// Whether the mapping holding `p` carries the huge-page mark ("hg" in its VmFlags line of
// /proc/self/smaps); false when there is no such mapping or file.
bool marked_huge(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(':') > line.find(' ')) {
      inside = lo <= address(p) && address(p) < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      std::istringstream flags(line.substr(8));
      std::string flag;
      while (flags >> flag)
        if (flag == "hg") return true;
      return false;
    }
  }
  return false;
}

// Whether some mapping of the process holds `p` (a line "lo-hi ..." of /proc/self/maps around it).
bool mapped(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && lo <= address(p) && address(p) < hi) return true;
  }
  return false;
}

// Writes the first and last byte of every 4 KiB page, so an allocation too small would fault.
void touch(void* p, std::size_t bytes) {
  auto* c = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < bytes; i += 4096) c[i] = 1;
  c[bytes - 1] = 2;
}

}  // namespace

TEST_CASE("allocate_maybe_huge places small buffers at the asked alignment and large ones on 2 MiB", "[core][huge_pages]") {
  const std::size_t sizes[] = {64, 4096, kHugePageBytes, kHugePageMinBytes - 64, kHugePageMinBytes,
                               kHugePageMinBytes + 64, 5 * kHugePageBytes + 4160};
  for (const std::size_t bytes : sizes) {
    INFO("bytes " << bytes);
    void* p = seqmix::allocate_maybe_huge(bytes, 64);
    REQUIRE(p != nullptr);
    const std::uintptr_t expected = bytes >= kHugePageMinBytes ? kHugePageBytes : 64;
    CHECK(address(p) % expected == 0);
    touch(p, bytes);
    if (bytes >= kHugePageMinBytes && kernel_has_thp()) {
      CHECK(marked_huge(p));
      CHECK(marked_huge(static_cast<char*>(p) + bytes / kHugePageBytes * kHugePageBytes - 1));
    }
    seqmix::deallocate_maybe_huge(p, bytes);
  }
}

TEST_CASE("a large block is a mapping of its own, gone when released", "[core][huge_pages]") {
#if defined(__linux__)
  const std::size_t bytes = kHugePageMinBytes + 3 * 4096 + 64;
  void* p = seqmix::allocate_maybe_huge(bytes, 64);
  REQUIRE(p != nullptr);
  touch(p, bytes);
  CHECK(mapped(p));
  CHECK(mapped(static_cast<char*>(p) + bytes - 1));
  seqmix::deallocate_maybe_huge(p, bytes);
  // Nothing of this thread maps anything in between, so the range stays unmapped.
  CHECK_FALSE(mapped(p));
  CHECK_FALSE(mapped(static_cast<char*>(p) + bytes - 1));
#endif
}

TEST_CASE("allocate_maybe_huge refuses zero and sizes that would overflow", "[core][huge_pages]") {
  CHECK(seqmix::allocate_maybe_huge(0, 64) == nullptr);
  CHECK(seqmix::allocate_maybe_huge(static_cast<std::size_t>(-1), 64) == nullptr);
  CHECK(seqmix::allocate_maybe_huge(static_cast<std::size_t>(-1) - kHugePageBytes + 1, 64) == nullptr);
}

TEST_CASE("advise_huge_pages marks only the whole 2 MiB pages inside its range", "[core][huge_pages]") {
  CHECK_FALSE(seqmix::advise_huge_pages(nullptr, kHugePageMinBytes));
  void* block = nullptr;
  REQUIRE(posix_memalign(&block, kHugePageBytes, 4 * kHugePageBytes) == 0);
  char* base = static_cast<char*>(block);
  // Less than one whole huge page in range: nothing to mark.
  CHECK_FALSE(seqmix::advise_huge_pages(base + 4096, kHugePageBytes));
  // [base + 4 KiB, base + 4 MiB + 4 KiB) holds one whole huge page, [base + 2 MiB, base + 4 MiB).
  const bool took = seqmix::advise_huge_pages(base + 4096, 2 * kHugePageBytes);
  CHECK(took == kernel_has_thp());
  if (took) {
    CHECK_FALSE(marked_huge(base));
    CHECK_FALSE(marked_huge(base + kHugePageBytes - 1));
    CHECK(marked_huge(base + kHugePageBytes));
    CHECK(marked_huge(base + 2 * kHugePageBytes - 1));
    CHECK_FALSE(marked_huge(base + 2 * kHugePageBytes));
  }
  touch(block, 4 * kHugePageBytes);
  std::free(block);
}

TEST_CASE("AlignedAllocator keeps 64-byte buffers small and puts large ones on huge pages", "[core][huge_pages]") {
  const std::size_t threshold_floats = kHugePageMinBytes / sizeof(float);
  const std::size_t counts[] = {1, 15, 16, 17, threshold_floats - 16, threshold_floats, threshold_floats + 1,
                                3 * threshold_floats + 7};
  for (const std::size_t n : counts) {
    INFO("floats " << n);
    seqmix::AlignedVector<float> v(n, 1.5f);
    const std::size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    CHECK(address(v.data()) % (bytes >= kHugePageMinBytes ? kHugePageBytes : 64) == 0);
    CHECK(v.front() == 1.5f);
    CHECK(v.back() == 1.5f);
    v.back() = 2.5f;
    seqmix::AlignedVector<float> moved = std::move(v);  // freed once, by the vector that owns it
    CHECK(moved.back() == 2.5f);
  }
  const seqmix::Tensor<double, 2> t({1024, 1024 + 3});  // 8 MiB + 24 KiB, zeroed
  CHECK(address(t.data()) % kHugePageBytes == 0);
  CHECK(t.data()[0] == 0.0);
  CHECK(t.data()[t.numel() - 1] == 0.0);
}

TEST_CASE("HugePageBuffer rounds to whole huge pages, is 2 MiB aligned and moves", "[core][huge_pages]") {
  const seqmix::HugePageBuffer empty(0);
  CHECK(empty.data() == nullptr);
  CHECK(empty.size() == 0);
  CHECK_FALSE(empty.advised());

  seqmix::HugePageBuffer a(kHugePageBytes + 1);
  REQUIRE(a.data() != nullptr);
  CHECK(a.size() == 2 * kHugePageBytes);
  CHECK(address(a.data()) % kHugePageBytes == 0);
  CHECK(a.advised() == kernel_has_thp());
  if (a.advised()) CHECK(marked_huge(static_cast<char*>(a.data()) + a.size() - 1));
  touch(a.data(), a.size());

  const void* where = a.data();
  seqmix::HugePageBuffer b(std::move(a));
  CHECK(a.data() == nullptr);
  CHECK(a.size() == 0);
  CHECK(b.data() == where);
  seqmix::HugePageBuffer c(64);
  CHECK(c.size() == kHugePageBytes);
  c = std::move(b);  // c's first buffer freed here
  CHECK(c.data() == where);
  CHECK(c.size() == 2 * kHugePageBytes);
  CHECK_THROWS_AS(seqmix::HugePageBuffer(static_cast<std::size_t>(-1)), std::bad_alloc);
}
