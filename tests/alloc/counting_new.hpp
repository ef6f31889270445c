// Heap allocations counted by a replaced global operator new (defined once, in main.cpp of the
// seqmix_alloc_tests executable, so no other program is affected). Hot-path tests warm an
// operator up, then assert that N further calls allocate nothing:
//   seqmix::testing::AllocationCounter counter;
//   for (int i = 0; i < 100; ++i) step(...);
//   CHECK(counter.allocations() == 0);
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <thread>

#include "seqmix/core/parallel.hpp"

namespace seqmix::testing {

// Total allocations made by any thread since the program started.
std::size_t allocation_count() noexcept;

// Allocations of at least kLargeAllocationBytes, the ones a prefill keeps per thread across calls
// instead (core/thread_keep.hpp: glibc may hand such blocks back as fresh pages, faulted in again
// on every call). A prefill's small per-call bookkeeping (its sequence map and plans) stays below.
constexpr std::size_t kLargeAllocationBytes = std::size_t{64} << 10;
std::size_t large_allocation_count() noexcept;

class AllocationCounter {
 public:
  AllocationCounter() : start_(allocation_count()) {}
  std::size_t allocations() const noexcept { return allocation_count() - start_; }

 private:
  std::size_t start_;
};

// Calls `step` `calls` times in a row on every thread of `executor`, one thread after the other.
// An operator keeps per-thread scratch that a thread grows in its first task, and ordinary
// warm-up calls cannot make a pool's worker take one: when the caller runs every task before the
// worker wakes (small calls, a busy machine), the worker's first task, and its allocations, come
// during the count (CI saw 3 allocations in 100 calls so). Here each thread takes one task of a
// job that waits until all of them have started, and calls `step` from it: a ThreadPool runs a
// call made from inside its own task inline, on that thread, which grows that thread's scratch.
// Several calls in a row, because some work comes only at some positions (RAT attends to its
// finished chunks from position L on, Infini-attention folds a segment every S tokens): each
// thread must have passed every phase itself (CI saw 6 allocations in rat_step when one had not).
template <class Step>
void run_on_every_thread(const seqmix::Executor& executor, Step&& step, int calls) {
  const int threads = executor.concurrency();
  std::atomic<int> started{0};
  std::mutex one_at_a_time;  // the calls share their outputs and state
  executor.run(threads, [&](seqmix::index_t) {
    started.fetch_add(1);
    // A pool that is not free runs this job inline: then nobody else comes, so stop waiting.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (started.load() < threads && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    const std::lock_guard<std::mutex> lock(one_at_a_time);
    for (int i = 0; i < calls; ++i) step();
  });
}

// The hot-path check every family runs: kWarmup calls of `step` on every thread of `executor`
// (longer than the period of any position-dependent work in the tests), kWarmup more from the
// caller (which hand tasks to the pool: what the caller owns and concurrent tasks take, such as a
// second scratch, grows there), then the allocations of kSteps more calls.
constexpr int kWarmup = 20;
constexpr int kSteps = 100;

template <class Step>
std::size_t allocations_after_warmup(const seqmix::Executor& executor, Step&& step) {
  run_on_every_thread(executor, step, kWarmup);
  for (int i = 0; i < kWarmup; ++i) step();
  AllocationCounter counter;
  for (int i = 0; i < kSteps; ++i) step();
  return counter.allocations();
}

// The same warm-up, then the allocations of at least kLargeAllocationBytes made by kSteps more calls.
template <class Step>
std::size_t large_allocations_after_warmup(const seqmix::Executor& executor, Step&& step) {
  run_on_every_thread(executor, step, kWarmup);
  for (int i = 0; i < kWarmup; ++i) step();
  const std::size_t start = large_allocation_count();
  for (int i = 0; i < kSteps; ++i) step();
  return large_allocation_count() - start;
}

// How many times allocations_after_warmup calls `step` (for tests that count what the calls append).
inline int calls_of_allocations_after_warmup(const seqmix::Executor& executor) {
  return (executor.concurrency() + 1) * kWarmup + kSteps;
}

}  // namespace seqmix::testing
