// Software prefetch spread over a kernel's inner loop.
//
// Measured on the 2-core AVX-512 machines this library is tuned on: a core streams ~63 GB/s
// through plain sequential loads, but a decode kernel that interleaves loads with FMAs reaches
// half of that or less. The hardware prefetchers stop at 4 KB page boundaries, and in the
// memory layouts of decode (one head's key rows 2 KB apart, a KV cache made of few-KB blocks)
// they never get far ahead. Naming the next tile's lines with software prefetches helps only
// when the requests are spread out: issued in one burst they queue behind the few misses a core
// can have in flight and stall the arithmetic behind them (fp16 decode, Tk = 16384, one core:
// 4.5 ms with bursts, 2.8 ms spread over the inner loop).
#pragma once

#include <algorithm>
#include <cstddef>

namespace seqmix::detail {

// Asks for the cache lines of `count` elements from p ahead of their use, in one burst: a few
// rows a kernel reads soon (kWrite: writes soon), not a tile (that is PrefetchStream's job).
// kLocality as __builtin_prefetch's: 3 into L1, 2 into L2 only (rows needed a while later, whose
// lines would evict the kernel's current L1 working set).
template <bool kWrite = false, int kLocality = 3, class T>
inline void prefetch_row(const T* p, std::ptrdiff_t count) noexcept {
  const char* bytes = reinterpret_cast<const char*>(p);
  const std::ptrdiff_t n = count * static_cast<std::ptrdiff_t>(sizeof(T));
  for (std::ptrdiff_t offset = 0; offset < n; offset += 64)
    __builtin_prefetch(bytes + offset, kWrite ? 1 : 0, kLocality);
}

// Cache lines of rows a kernel reads later (the next tokens' or the next head's), for one pass
// of a recurrent kernel to ask for, one per row of the state in its first sweep, so the requests
// trickle out among the pass's FMAs; issued in a burst before the pass they queued ahead of its
// own loads (delta_update/README.md, "The rows asked for during the pass"; linear_attention/
// README.md). kLocality as prefetch_row's; a span of a LineList.
template <int kLocality>
struct PassLines {
  const char* const* line = nullptr;
  std::ptrdiff_t count = 0;

  // Asks for line r, if the span has one: a pass calls it once per row r of its first sweep.
  [[gnu::always_inline]] void request(std::ptrdiff_t r) const noexcept {
    if (r < count) __builtin_prefetch(line[r], 0, kLocality);
  }
  // The lines a pass over `rows` rows asks for: the first `rows`.
  PassLines first(std::ptrdiff_t rows) const noexcept { return {line, std::min(count, rows)}; }
  // Asks at once for lines [from, count): those no pass reached.
  void request_from(std::ptrdiff_t from) const noexcept {
    for (std::ptrdiff_t i = from; i < count; ++i) __builtin_prefetch(line[i], 0, kLocality);
  }
};

// Up to kCapacity cache-line addresses of rows, collected for passes to ask for (PassLines); a
// row added to a full list is asked for at once. The array is left uninitialized: the delta rule
// fills a list per pair of tokens, and only `count` of it is read.
template <std::ptrdiff_t kCapacity, int kLocality>
struct LineList {
  const char* line[kCapacity];
  std::ptrdiff_t count = 0;

  // Adds the lines of `bytes` bytes from p.
  void add_row(const void* p, std::ptrdiff_t bytes) noexcept {
    const char* start = static_cast<const char*>(p);
    for (std::ptrdiff_t offset = 0; offset < bytes; offset += 64)
      if (count < kCapacity)
        line[count++] = start + offset;
      else
        __builtin_prefetch(start + offset, 0, kLocality);
  }
  // Lines [from, from + n) of the list, as far as it has them; from <= count, unchecked: with
  // `from` clamped too, GCC 12 built the two bounds in a vector register through a stack slot
  // whose reload stalled per pass (77% of recurrent_block_lazy's samples), and GLA's recurrent
  // prefill ran 0.95x (gla-1.3b T512, one thread, AMD EPYC Zen 4, load 4.7).
  PassLines<kLocality> lines(std::ptrdiff_t from = 0, std::ptrdiff_t n = kCapacity) const noexcept {
    return {line + from, std::min(n, count - from)};
  }
};

// Up to kRanges byte ranges, then up to kLists lists of equally long rows (a paged cache's key
// rows, wherever their pages are), handed out `per_step` cache lines per step() call, in order.
// step() sits in inner loops, so its common path is one compare, a prefetch and an add (a
// version that searched the ranges on every call took 14% of a quantized KV-cache decode); rows
// that follow each other in memory are requested as one range.
struct LineStream {
  static constexpr int kRanges = 4;
  static constexpr int kLists = 2;
  const char* start[kRanges] = {};
  const char* end[kRanges] = {};
  const void* const* rows[kLists] = {};  // row list l: rows[l][0 .. row_count[l]), row_bytes[l] each
  int row_count[kLists] = {};
  std::size_t row_bytes[kLists] = {};
  const char* next = nullptr;  // the line to request next, in range `range`
  const char* stop = nullptr;  // end of that range
  int range = -1;              // the fixed range being requested (kRanges - 1 once past them)
  int list = 0, row = 0;       // then the row list and its next row
  int per_step = 0;
  // Where the lines go: L1 (prefetcht0, the default) or L2 only (prefetcht1). A tile of a few
  // hundred KB requested into a 32-48 KB L1 evicts the current tile's queries, logits and
  // accumulators; the paged decode kernel measured 15-25% faster with L2 (see paged/paged.hpp).
  bool to_l2 = false;

  void set(int r, const void* p, std::size_t bytes) noexcept {
    start[r] = static_cast<const char*>(p);
    end[r] = start[r] + (p ? bytes : 0);
  }

  // Row list l: `count` rows of `bytes` each at p[0 .. count). The pointer array must outlive
  // the stream's use. (Any object pointer array is read as an array of addresses.)
  template <class T>
  void set_rows(int l, const T* const* p, int count, std::size_t bytes) noexcept {
    rows[l] = reinterpret_cast<const void* const*>(p), row_count[l] = p ? count : 0, row_bytes[l] = bytes;
  }

  // per_step = ceil(lines / steps): the lines of all ranges are requested by the time the
  // kernel has made `steps` calls to step().
  void spread_over(std::size_t steps) noexcept {
    std::size_t lines = 0;
    for (int r = 0; r < kRanges; ++r) lines += static_cast<std::size_t>(end[r] - start[r] + 63) / 64;
    for (int l = 0; l < kLists; ++l) lines += static_cast<std::size_t>(row_count[l]) * ((row_bytes[l] + 63) / 64);
    per_step = steps == 0 ? 0 : static_cast<int>((lines + steps - 1) / steps);
    range = -1, list = 0, row = 0;
    next = stop = nullptr;
    next_range();
  }

  // Always inlined: a call in a kernel's inner loop makes every vector register live across it
  // a store and a reload (no vector register survives a call in the x86-64 ABI), and GCC at -O2
  // did not inline step() (the decode kernels' 16 accumulators went through memory per step).
  [[gnu::always_inline]] void step() noexcept {
    if (to_l2)
      step_to<2>();
    else
      step_to<3>();
  }

  template <int Locality>
  [[gnu::always_inline]] void step_to() noexcept {
    const char* line = next;  // a local, so the loop does not store to *this per line
    // Common case: the step's lines all lie in the current range, so one bound check serves
    // them (the checked loop below cost ~7 instructions per line, about as many as the int4
    // key kernel's arithmetic per channel quad).
    const std::ptrdiff_t bytes = static_cast<std::ptrdiff_t>(per_step) * 64;
    if (stop - line >= bytes) {
      for (std::ptrdiff_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(line + offset, 0, Locality);
      next = line + bytes;
      return;
    }
    for (int i = 0; i < per_step; ++i, line += 64) {
      if (line >= stop) {
        if (!next_range()) return;
        line = next;
      }
      __builtin_prefetch(line, 0, Locality);
    }
    next = line;
  }

  // Moves to the next non-empty range (a fixed range, or a run of rows that follow each other
  // in memory); when none is left, later steps do nothing.
  bool next_range() noexcept {
    while (range + 1 < kRanges)
      if (++range, start[range] < end[range]) {
        next = start[range], stop = end[range];
        return true;
      }
    for (; list < kLists; ++list, row = 0) {
      if (row >= row_count[list] || row_bytes[list] == 0) continue;
      next = static_cast<const char*>(rows[list][row]);
      stop = next + row_bytes[list];
      for (++row; row < row_count[list] && static_cast<const char*>(rows[list][row]) == stop; ++row) stop += row_bytes[list];
      return true;
    }
    per_step = 0;
    return false;
  }
};

}  // namespace seqmix::detail
