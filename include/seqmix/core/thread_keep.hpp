// Scratch memory a thread keeps across calls of an op. Internal.
//
// Why: a buffer of a few hundred KiB or more that a call allocates and frees comes back from
// glibc as fresh pages whenever it was mmapped (at or above the mmap threshold) or the heap top
// was trimmed on free; on the measured VM (AMD EPYC Zen 5, 2026-12-06) a first touch costs
// ~12 us per 4 KiB page, a third of some prefills' time. glibc's dynamic threshold hides this
// only until a program fixes it (mallopt(M_MMAP_THRESHOLD), MALLOC_MMAP_THRESHOLD_) or frees
// other large blocks between calls; a kept buffer is faulted in once per thread.
#pragma once

#include <cstddef>
#include <utility>

namespace seqmix::detail {

/// The default bound of one kind of kept scratch per thread: a larger one is freed when its call
/// ends (such a call's own work dwarfs the faults anyway).
constexpr std::size_t kThreadKeepBytes = std::size_t{64} << 20;

/// One Scratch per thread, kept across calls. A call (or parallel block) takes it, uses it, and
/// hands it back when it ends; it is kept if it holds at most Limit bytes, else freed. Taken, not
/// borrowed: a nested call on the same thread finds the slot empty and allocates its own rather
/// than share. Scratch: default-constructible (holding no memory), movable, with
/// `std::size_t bytes() const` (the memory it holds).
template <class Scratch, std::size_t Limit = kThreadKeepBytes>
struct ThreadKept {
  static Scratch take() { return std::exchange(slot(), Scratch{}); }
  static void give_back(Scratch&& scratch) {
    if (scratch.bytes() <= Limit) slot() = std::move(scratch);
  }
  /// Frees what the calling thread keeps; not while a call that took it runs on this thread
  /// (that call would hand it back when it ends).
  static void release() { slot() = Scratch{}; }
  /// The calling thread's kept scratch (tests read its size).
  static Scratch& slot() {
    thread_local Scratch kept;
    return kept;
  }
};

}  // namespace seqmix::detail
