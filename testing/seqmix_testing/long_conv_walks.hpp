// The walk-width sweep both long_conv wide-walk tests run (test_long_conv.cpp for calls without a
// prepared spectrum, test_long_conv_prepared.cpp for prepared ones). Include after
// <catch2/catch.hpp>.
#pragma once

#include "seqmix/lti.hpp"

namespace seqmix::testing {

// The first FFT length whose block (N E floats) passes twice kLongConvFftWalkCacheBytes: from
// there a block's signal stays in no cache and the walks go wide.
inline index_t long_conv_first_wide_N() {
  namespace sd = seqmix::detail;
  return 4 * sd::kLongConvFftWalkCacheBytes / (sd::kFftElement * static_cast<index_t>(sizeof(float)));
}

// Checks width(blocks, threads, N) over FFT lengths on both sides of the first wide N, block
// counts and thread counts: below it, below(blocks, threads, N) (the cache-sized walks); from it,
// walks whose scratch (held_per_block blocks of N E floats each per channel block) stays within
// kLongConvFftWideWalkBytes unless a walk is one block, none longer than a thread's share, and
// the blocks spread evenly.
template <class Width, class Below>
void check_wide_walk_widths(Width width, Below below, index_t held_per_block) {
  namespace sd = seqmix::detail;
  const index_t wide_N = long_conv_first_wide_N();
  for (index_t N : {wide_N / 2, wide_N, 4 * wide_N, 64 * wide_N})
    for (index_t blocks : {1, 5, 24, 100})
      for (int threads : {1, 2, 3, 64}) {
        INFO("N = " << N << ", blocks = " << blocks << ", threads = " << threads);
        const index_t per = width(blocks, threads, N), walks = (blocks + per - 1) / per;
        const index_t block = N * sd::kFftElement * static_cast<index_t>(sizeof(float));
        CHECK(per >= 1);
        CHECK(per <= blocks);
        if (N < wide_N) {
          CHECK(per == below(blocks, threads, N));
          continue;
        }
        if (per > 1) CHECK(held_per_block * per * block <= sd::kLongConvFftWideWalkBytes);
        CHECK(per <= (blocks + threads - 1) / threads);  // no walk longer than a thread's share
        CHECK(walks * per - blocks < walks);  // even: the last walk at most one block short of a block per walk
      }
}

}  // namespace seqmix::testing
