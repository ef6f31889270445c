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

#include <cstddef>

namespace seqmix::detail {

// Up to kRanges byte ranges, handed out `per_step` cache lines per step() call, in order.
struct LineStream {
  static constexpr int kRanges = 4;
  const char* cur[kRanges] = {};
  const char* end[kRanges] = {};
  int next_range = 0;
  int per_step = 0;

  void set(int range, const void* p, std::size_t bytes) noexcept {
    cur[range] = static_cast<const char*>(p);
    end[range] = cur[range] + (p ? bytes : 0);
  }

  // per_step = ceil(lines / steps): the lines of all ranges are requested by the time the
  // kernel has made `steps` calls to step().
  void spread_over(std::size_t steps) noexcept {
    std::size_t lines = 0;
    for (int r = 0; r < kRanges; ++r) lines += static_cast<std::size_t>(end[r] - cur[r] + 63) / 64;
    per_step = steps == 0 ? 0 : static_cast<int>((lines + steps - 1) / steps);
  }

  void step() noexcept {
    for (int i = 0; i < per_step; ++i) {
      while (next_range < kRanges && cur[next_range] >= end[next_range]) ++next_range;
      if (next_range == kRanges) return;
      __builtin_prefetch(cur[next_range], 0, 3);
      cur[next_range] += 64;
    }
  }
};

}  // namespace seqmix::detail
