// Heap allocations counted by a replaced global operator new (defined once, in main.cpp of the
// seqmix_alloc_tests executable, so no other program is affected). Hot-path tests warm an
// operator up, then assert that N further calls allocate nothing:
//   seqmix::testing::AllocationCounter counter;
//   for (int i = 0; i < 100; ++i) step(...);
//   CHECK(counter.allocations() == 0);
#pragma once

#include <atomic>
#include <cstddef>

namespace seqmix::testing {

// Total allocations made by any thread since the program started.
std::size_t allocation_count() noexcept;

class AllocationCounter {
 public:
  AllocationCounter() : start_(allocation_count()) {}
  std::size_t allocations() const noexcept { return allocation_count() - start_; }

 private:
  std::size_t start_;
};

// The hot-path check every family runs: `step` kWarmup times (enough for every worker of a pool
// to grow its per-thread scratch), then the allocations of kSteps more calls.
constexpr int kWarmup = 20;
constexpr int kSteps = 100;

template <class Step>
std::size_t allocations_after_warmup(Step&& step) {
  for (int i = 0; i < kWarmup; ++i) step();
  AllocationCounter counter;
  for (int i = 0; i < kSteps; ++i) step();
  return counter.allocations();
}

}  // namespace seqmix::testing
