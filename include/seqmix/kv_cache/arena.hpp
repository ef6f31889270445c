// Caller-provided storage for KvCache: a fixed buffer the engine owns, carved into 64-byte aligned
// chunks. With `KvCacheConfig::arena` set, every byte a cache holds or uses while appending,
// truncating, evicting or compacting comes from the arena; nothing is taken from the heap after
// construction (the cache object's per-head table itself is made at construction).
//
// Chunks come in power-of-two size classes (64 B, 128 B, ... ): a freed chunk goes to its class's
// free list (kept inside the chunk itself) and is reused by the next request of that class, so
// the steady state of a serving loop (blocks of fixed size made and freed) does not fragment.
// The cost is up to 2x per chunk: size the buffer from bytes_used() / high_water() of a trial
// run. When no chunk is left, allocation throws KvArenaFull (a std::bad_alloc naming the request
// and the arena's state). One arena may back several caches (e.g. every layer of a model); it is
// not thread-safe, like the caches themselves.
//
// The arena never changes how the caller's memory is mapped. For decode, make that buffer a
// seqmix::HugePageBuffer (core/huge_pages.hpp: 2 MiB aligned, marked for transparent huge pages):
// the blocks, 2-16 KiB each, are then read from 2 MiB pages instead of 4 KiB ones: decode at
// Tk 16384 1.08-1.17x faster than from heap blocks, the arena's packing included (kv_cache/README.md,
// "Huge pages"). The heap blocks of a cache without an arena are too small for AlignedAllocator's
// huge-page path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/huge_pages.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Thrown when a KvArena has no chunk left for a request: a std::bad_alloc whose what() names
/// the request and the arena's state. The cache that asked is left valid.
class KvArenaFull : public std::bad_alloc {
 public:
  /// `message`: what what() returns.
  explicit KvArenaFull(std::string message) : message_(std::move(message)) {}
  /// The request and the arena's state.
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

/// Caller-provided storage for KvCache (KvCacheConfig::arena): a fixed buffer carved into 64-byte
/// aligned power-of-two chunks with per-class free lists, so a serving loop's steady state does
/// not fragment (up to 2x per chunk: size the buffer from high_water() of a trial run). One arena
/// may back several caches; not thread-safe, like the caches. For decode, give it a
/// HugePageBuffer: `HugePageBuffer storage(bytes); KvArena arena(storage.data(), storage.size());`
class KvArena {
 public:
  /// Alignment of every chunk, in bytes (one cache line).
  static constexpr std::size_t kAlignment = 64;

  /// `buffer` of `bytes` bytes, owned by the caller and alive as long as any cache using it.
  KvArena(void* buffer, std::size_t bytes) noexcept {
    const auto base = reinterpret_cast<std::uintptr_t>(buffer);
    const std::uintptr_t aligned = (base + kAlignment - 1) / kAlignment * kAlignment;
    begin_ = reinterpret_cast<std::byte*>(aligned);
    end_ = aligned - base <= bytes ? begin_ + (bytes - (aligned - base)) : begin_;
    top_ = begin_;
  }
  KvArena(const KvArena&) = delete;
  KvArena& operator=(const KvArena&) = delete;

  /// A chunk of at least `bytes` bytes (nullptr for 0); KvArenaFull when none is left.
  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    const int k = size_class(bytes);
    if (k < 0) throw full(bytes);
    if (free_[k] != nullptr) {
      void* p = free_[k];
      free_[k] = *static_cast<void**>(p);
      used_ += chunk_bytes(k);
      return p;
    }
    if (static_cast<std::size_t>(end_ - top_) < chunk_bytes(k)) throw full(bytes);
    void* p = top_;
    top_ += chunk_bytes(k);
    used_ += chunk_bytes(k);
    return p;
  }

  /// Returns a chunk from allocate(`bytes`) to its class's free list.
  void deallocate(void* p, std::size_t bytes) noexcept {
    if (p == nullptr || bytes == 0) return;
    const int k = size_class(bytes);
    *static_cast<void**>(p) = free_[k];
    free_[k] = p;
    used_ -= chunk_bytes(k);
  }

  /// Usable bytes of the buffer (after aligning its start).
  std::size_t capacity() const noexcept { return static_cast<std::size_t>(end_ - begin_); }
  /// Bytes in chunks handed out now (rounded up to their class).
  std::size_t bytes_used() const noexcept { return used_; }
  /// Bytes ever carved from the buffer (freed chunks are kept for reuse): the size this workload needs.
  std::size_t high_water() const noexcept { return static_cast<std::size_t>(top_ - begin_); }

 private:
  static constexpr int kClasses = 48;
  static constexpr std::size_t chunk_bytes(int k) noexcept { return kAlignment << k; }
  static int size_class(std::size_t bytes) noexcept {
    for (int k = 0; k < kClasses; ++k)
      if (bytes <= chunk_bytes(k)) return k;
    return -1;
  }

  KvArenaFull full(std::size_t bytes) const {
    return KvArenaFull("seqmix::KvArena: full: a request of " + std::to_string(bytes) + " bytes does not fit (" +
                       std::to_string(high_water()) + " of " + std::to_string(capacity()) + " bytes carved, " +
                       std::to_string(used_) + " in use); give the cache a larger buffer");
  }

  std::byte* begin_ = nullptr;
  std::byte* end_ = nullptr;
  std::byte* top_ = nullptr;
  std::size_t used_ = 0;
  void* free_[kClasses] = {};
};

namespace detail {

// The allocator of every container a KvCache holds: the arena when one is given, else 64-byte
// aligned heap memory (AlignedAllocator). Containers moved or copied keep their arena.
template <class T>
struct KvAllocator {
  using value_type = T;
  using propagate_on_container_copy_assignment = std::true_type;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;

  KvArena* arena = nullptr;

  KvAllocator() = default;
  explicit KvAllocator(KvArena* a) noexcept : arena(a) {}
  template <class U>
  KvAllocator(const KvAllocator<U>& other) noexcept : arena(other.arena) {}  // NOLINT: rebinding

  T* allocate(std::size_t n) {
    if (arena == nullptr) return AlignedAllocator<T>().allocate(n);
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw KvArenaFull("seqmix::KvArena: request size overflows");
    return static_cast<T*>(arena->allocate(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (arena == nullptr)
      AlignedAllocator<T>().deallocate(p, n);
    else
      arena->deallocate(p, n * sizeof(T));
  }
  template <class U>
  bool operator==(const KvAllocator<U>& other) const noexcept { return arena == other.arena; }
  template <class U>
  bool operator!=(const KvAllocator<U>& other) const noexcept { return arena != other.arena; }
};

template <class T>
using KvVector = std::vector<T, KvAllocator<T>>;

// An empty vector drawing from `arena`, optionally sized.
template <class T>
KvVector<T> kv_vector(KvArena* arena, std::size_t n = 0, const T& value = T()) {
  return KvVector<T>(n, value, KvAllocator<T>(arena));
}

}  // namespace detail
}  // namespace seqmix
