// Large buffers in transparent huge pages (2 MiB) where Linux offers them.
//
// Why: decode reads a whole KV cache once per token, a stream of hundreds of MiB. In 4 KiB pages
// a 512 MiB cache is ~131k pages, each a TLB miss and a stop for the hardware prefetchers (they
// do not cross a 4 KiB page); in 2 MiB pages it is 256. Dense decode at Tk 16384-65536 took
// 1.04-1.06x (fp32) and 1.14-1.16x (fp16) the CPU time in 4 KiB pages (loaded machine;
// include/seqmix/attention/README.md, "Huge pages"). Linux serves huge pages to a range only
// when asked (THP mode `madvise`, the common default) and only for whole 2 MiB pages aligned to
// 2 MiB, so a large buffer is placed on a 2 MiB boundary and marked with madvise(MADV_HUGEPAGE)
// before its first touch.
//
// The mark is advice: where the kernel does not act on it (THP `never`, no free huge page, not
// Linux) the buffer is ordinary memory, with the same contents and lifetime. On Linux such a
// buffer is a mapping of its own (mmap, munmap on release), so memory and mark go back to the
// system with it; elsewhere, and for small buffers, a heap block (posix_memalign / std::free).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
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
// std::aligned_alloc wants a multiple of the alignment.
inline void* aligned_block(std::size_t alignment, std::size_t bytes) noexcept {
#if defined(__unix__) || defined(__APPLE__)
  void* p = nullptr;
  return posix_memalign(&p, alignment, bytes) == 0 ? p : nullptr;
#else
  return std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
#endif
}

#if defined(__linux__)
// `bytes` rounded up to whole pages of the system (4 KiB on x86-64): a mapping's length.
inline std::size_t whole_pages(std::size_t bytes) noexcept {
  const long page = sysconf(_SC_PAGESIZE);
  const std::size_t p = page > 0 ? static_cast<std::size_t>(page) : 4096;
  return (bytes + p - 1) / p * p;
}
#endif

// A mapping of its own for `bytes` bytes, starting on a 2 MiB boundary and marked for huge pages
// (Linux; elsewhere a 2 MiB-aligned heap block). Its own mapping, not a heap block, so the memory
// and the mark go back to the system with unmap_huge: a heap block would leave the mark on the
// heap range (glibc serves blocks below its mmap threshold, which grows to 32 MiB, from the heap),
// and later small allocations there would fault in whole 2 MiB pages. Freshly mapped memory is
// faulted in on first touch, 2 MiB at a time. nullptr when refused.
inline void* map_huge(std::size_t bytes) noexcept {
#if defined(__linux__)
  const std::size_t length = whole_pages(bytes);
  if (length < bytes || length > static_cast<std::size_t>(-1) - kHugePageBytes) return nullptr;
  // Over-map by 2 MiB, then give back what lies before the first 2 MiB boundary and after the end.
  void* raw = mmap(nullptr, length + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t begin = (start + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const std::uintptr_t end = begin + length, raw_end = start + length + kHugePageBytes;
  if (begin > start) munmap(raw, begin - start);
  if (raw_end > end) munmap(reinterpret_cast<void*>(end), raw_end - end);
  advise_huge_pages(reinterpret_cast<void*>(begin), length);
  return reinterpret_cast<void*>(begin);
#else
  return aligned_block(kHugePageBytes, bytes);
#endif
}

// Releases a map_huge(`bytes`) block (the same `bytes`).
inline void unmap_huge(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return;
#if defined(__linux__)
  munmap(p, whole_pages(bytes));
#else
  (void)bytes;
  std::free(p);
#endif
}

}  // namespace detail

/// `bytes` bytes at a multiple of `alignment` (a power of two from sizeof(void*) up to 2 MiB);
/// from kHugePageMinBytes on a mapping of its own at a multiple of 2 MiB, marked for huge pages.
/// The size is not rounded up to 2 MiB: the last partial huge page stays in 4 KiB pages, so a
/// buffer never holds more memory than it asked for (the 2 MiB of over-mapping that aligns it is
/// unmapped at once). Release with deallocate_maybe_huge and the same `bytes`; nullptr when
/// refused (and for 0).
inline void* allocate_maybe_huge(std::size_t bytes, std::size_t alignment) noexcept {
  if (bytes == 0 || bytes > static_cast<std::size_t>(-1) - 2 * kHugePageBytes) return nullptr;
  return bytes >= kHugePageMinBytes ? detail::map_huge(bytes) : detail::aligned_block(alignment, bytes);
}

/// Releases allocate_maybe_huge(`bytes`, ...): the size decides, as it did there, whether the
/// block is a mapping or a heap block.
inline void deallocate_maybe_huge(void* p, std::size_t bytes) noexcept {
  if (bytes >= kHugePageMinBytes)
    detail::unmap_huge(p, bytes);
  else
    std::free(p);
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
    data_ = detail::map_huge(rounded);
    if (data_ == nullptr) throw std::bad_alloc();
    size_ = rounded;
    huge_ = advise_huge_pages(data_, size_);  // again, for what it reports (map_huge marked it)
  }
  /// Takes other's mapping; other is left empty.
  HugePageBuffer(HugePageBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        huge_(std::exchange(other.huge_, false)) {}
  /// Releases this buffer's mapping, then takes other's; other is left empty.
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept {
    if (this != &other) {
      detail::unmap_huge(data_, size_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      huge_ = std::exchange(other.huge_, false);
    }
    return *this;
  }
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  ~HugePageBuffer() { detail::unmap_huge(data_, size_); }

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
