// Large buffers in transparent huge pages (2 MiB) where Linux offers them.
//
// Why: decode reads a whole KV cache once per token, a stream of hundreds of MiB. In 4 KiB pages
// a 512 MiB cache is ~131k pages, each a TLB miss and a stop for the hardware prefetchers (they
// do not cross a 4 KiB page); in 2 MiB pages it is 256. Dense decode at Tk 65536 took 1.21x (fp32)
// and 1.43x (fp16) the CPU time in 4 KiB pages (include/seqmix/attention/README.md, "Huge
// pages"). Linux serves huge pages to a range only when asked (THP mode `madvise`, the common
// default) and only for whole 2 MiB pages aligned to 2 MiB, so a large buffer is placed on a
// 2 MiB boundary and marked with madvise(MADV_HUGEPAGE) before its first touch.
//
// The mark is advice: where the kernel does not act on it (THP `never`, no free huge page, not
// Linux) the buffer is ordinary memory, with the same contents and lifetime. Allocation goes
// through posix_memalign (std::aligned_alloc off POSIX) and release through std::free, so the
// pointer freed is the one allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace seqmix {

/// Size and alignment of a transparent huge page on x86-64 and most arm64 Linux kernels.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// Allocations of this many bytes and more are placed on a 2 MiB boundary and marked for huge
/// pages. 4 MiB: at least one whole huge page then backs every such buffer and the 2 MiB
/// alignment never costs more than half the buffer's size in address space (untouched, so no
/// memory); a smaller buffer saves at most a few hundred TLB entries, which its madvise call and
/// alignment slack would outweigh.
inline constexpr std::size_t kHugePageMinBytes = std::size_t{4} << 20;

/// Marks the whole 2 MiB pages inside [p, p + bytes) for transparent huge pages. Advice only:
/// returns whether the kernel took the mark (false off Linux, on a kernel without THP, or when the
/// range holds no whole huge page); a failure changes nothing else. Never marks a byte outside the
/// range.
inline bool advise_huge_pages(void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (p == nullptr || last <= first) return false;
  return madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0;
#else
  (void)p, (void)bytes;
  return false;
#endif
}

namespace detail {

// `bytes` bytes at a multiple of `alignment` (a power of two, at least sizeof(void*)), freed by
// std::free; nullptr when refused. posix_memalign where there is one: it takes any size, where
// std::aligned_alloc wants a multiple of the alignment (2 MiB would round a 5 MiB buffer to 6).
inline void* aligned_block(std::size_t alignment, std::size_t bytes) noexcept {
#if defined(__unix__) || defined(__APPLE__)
  void* p = nullptr;
  return posix_memalign(&p, alignment, bytes) == 0 ? p : nullptr;
#else
  return std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
#endif
}

}  // namespace detail

/// `bytes` bytes at a multiple of `alignment` (a power of two from sizeof(void*) up to 2 MiB);
/// from kHugePageMinBytes on at a multiple of 2 MiB and marked for huge pages. The size is not
/// rounded up to 2 MiB: the last partial huge page stays in 4 KiB pages, so a buffer never holds
/// more memory than it asked for (the alignment's slack before it goes back to the allocator, or
/// is address space never touched). Free with std::free; nullptr when refused (and for 0).
inline void* allocate_maybe_huge(std::size_t bytes, std::size_t alignment) noexcept {
  if (bytes == 0 || bytes > static_cast<std::size_t>(-1) - kHugePageBytes) return nullptr;
  const bool huge = bytes >= kHugePageMinBytes;
  void* p = detail::aligned_block(huge ? kHugePageBytes : alignment, bytes);
  // glibc places a buffer this large in its own mapping, unmapped with it; when it reuses its
  // heap instead (its mmap threshold grows up to 32 MiB), the mark outlives the buffer and only
  // lets later allocations in that range be backed by huge pages too: no data is affected.
  if (p != nullptr && huge) advise_huge_pages(p, bytes);
  return p;
}

/// An owning buffer for memory the caller hands to the library, such as a KvArena's storage:
/// `bytes` bytes at a 2 MiB boundary, marked for transparent huge pages (whatever its size), the
/// way a serving engine allocates its KV memory. Contents uninitialised; move-only.
///
///     seqmix::HugePageBuffer storage(bytes);
///     seqmix::KvArena arena(storage.data(), storage.size());
class HugePageBuffer {
 public:
  HugePageBuffer() = default;
  /// `bytes` bytes (none for 0); std::bad_alloc when the system refuses.
  explicit HugePageBuffer(std::size_t bytes) {
    if (bytes == 0) return;
    if (bytes > static_cast<std::size_t>(-1) - kHugePageBytes) throw std::bad_alloc();
    // Rounded up to whole huge pages: the caller asked for huge pages, and its last one would
    // otherwise stay in 4 KiB pages. At most 2 MiB more than asked.
    const std::size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    data_ = detail::aligned_block(kHugePageBytes, rounded);
    if (data_ == nullptr) throw std::bad_alloc();
    size_ = rounded;
    huge_ = advise_huge_pages(data_, size_);
  }
  HugePageBuffer(HugePageBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        huge_(std::exchange(other.huge_, false)) {}
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      huge_ = std::exchange(other.huge_, false);
    }
    return *this;
  }
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  ~HugePageBuffer() { std::free(data_); }

  /// The buffer (nullptr when empty), 2 MiB aligned.
  void* data() const noexcept { return data_; }
  /// Its size in bytes: the request rounded up to whole 2 MiB pages.
  std::size_t size() const noexcept { return size_; }
  /// Whether the kernel took the huge-page advice (it may still back pages in 4 KiB when it has
  /// no free huge page; /proc/self/smaps_rollup's AnonHugePages says what it gave).
  bool advised() const noexcept { return huge_; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  bool huge_ = false;
};

}  // namespace seqmix
