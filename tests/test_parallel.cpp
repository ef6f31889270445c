// Executors and parallel_for: every index runs exactly once on every executor, errors propagate,
// pools are reused (no thread per call), nested and concurrent use neither deadlocks nor mixes
// up work.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::CallbackExecutor;
using seqmix::Executor;
using seqmix::index_t;
using seqmix::ThreadPool;

// A host's own parallel-for: splits [0, count) round-robin over `threads` std::threads started
// for this call (what an application with its own threading would plug in).
CallbackExecutor::ParallelFor host_loop(int threads) {
  return [threads](index_t count, const std::function<void(index_t)>& task) {
    std::vector<std::thread> workers;
    for (int w = 0; w < threads; ++w)
      workers.emplace_back([&, w] {
        for (index_t i = w; i < count; i += threads) task(i);
      });
    for (auto& worker : workers) worker.join();
  };
}

struct ExecutorCase {
  std::string name;
  std::function<std::unique_ptr<Executor>()> make;
  int expected_concurrency;
};

std::vector<ExecutorCase> executor_cases() {
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return {
      {"serial", [] { return std::make_unique<seqmix::SerialExecutor>(); }, 1},
      {"ThreadPool(1)", [] { return std::make_unique<ThreadPool>(1); }, 1},
      {"ThreadPool(2)", [] { return std::make_unique<ThreadPool>(2); }, 2},
      {"ThreadPool(0)", [] { return std::make_unique<ThreadPool>(0); }, hardware},
      {"ThreadPool(4)", [] { return std::make_unique<ThreadPool>(4); }, 4},  // oversubscribed
      {"CallbackExecutor(3 host threads)", [] { return std::make_unique<CallbackExecutor>(3, host_loop(3)); }, 3},
  };
}

// Runs executor.run(count) and checks each index was called exactly once.
void check_run_covers(const Executor& executor, index_t count) {
  CAPTURE(count);
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(count));
  executor.run(count, [&](index_t i) { hits[static_cast<std::size_t>(i)].fetch_add(1); });
  for (index_t i = 0; i < count; ++i) {
    CAPTURE(i);
    REQUIRE(hits[static_cast<std::size_t>(i)].load() == 1);
  }
}

void check_parallel_for_covers(const Executor& executor, index_t n, index_t grain) {
  CAPTURE(n, grain);
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
  std::atomic<int> bad_blocks{0};
  seqmix::parallel_for(executor, n, grain, [&](index_t begin, index_t end) {
    if (begin < 0 || end > n || begin >= end) bad_blocks.fetch_add(1);
    for (index_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
  });
  REQUIRE(bad_blocks.load() == 0);
  for (index_t i = 0; i < n; ++i) {
    CAPTURE(i);
    REQUIRE(hits[static_cast<std::size_t>(i)].load() == 1);
  }
}

}  // namespace

TEST_CASE("every executor runs every index exactly once", "[parallel]") {
  for (const ExecutorCase& c : executor_cases()) {
    CAPTURE(c.name);
    const auto executor = c.make();
    CHECK(executor->concurrency() == c.expected_concurrency);
    for (index_t count : {0, 1, 2, 3, 7, 1000}) check_run_covers(*executor, count);
  }
  check_run_covers(seqmix::serial_executor(), 5);
  CHECK(&seqmix::serial_executor() == &seqmix::serial_executor());  // one shared instance
}

TEST_CASE("parallel_for covers 0..n-1 exactly once for any grain", "[parallel]") {
  for (const ExecutorCase& c : executor_cases()) {
    CAPTURE(c.name);
    const auto executor = c.make();
    for (index_t n : {0, 1, 2, 3, 7, 100, 1001})
      for (index_t grain : {-1, 0, 1, 2, 7, 64, 1000, 5000}) check_parallel_for_covers(*executor, n, grain);
  }
}

TEST_CASE("parallel_for splits large ranges over the pool", "[parallel]") {
  ThreadPool pool(2);
  std::atomic<int> blocks{0};
  seqmix::parallel_for(pool, 1000, 1, [&](index_t, index_t) { blocks.fetch_add(1); });
  CHECK(blocks.load() > 1);
  CHECK(blocks.load() <= 4 * pool.concurrency());
  blocks = 0;
  seqmix::parallel_for(pool, 1000, 1000, [&](index_t begin, index_t end) {  // one grain: one block
    CHECK(begin == 0);
    CHECK(end == 1000);
    blocks.fetch_add(1);
  });
  CHECK(blocks.load() == 1);
}

TEST_CASE("exceptions propagate and the executor stays usable", "[parallel]") {
  for (const ExecutorCase& c : executor_cases()) {
    CAPTURE(c.name);
    const auto executor = c.make();
    for (int round = 0; round < 3; ++round) {
      CAPTURE(round);
      REQUIRE_THROWS_WITH(executor->run(100, [](index_t i) {
                            if (i == 37) throw std::runtime_error("task 37 failed");
                          }),
                          "task 37 failed");
      REQUIRE_THROWS_AS(seqmix::parallel_for(*executor, 1000, 1,
                                             [](index_t begin, index_t end) {
                                               if (begin <= 500 && 500 < end) throw std::out_of_range("block");
                                             }),
                        std::out_of_range);
      check_run_covers(*executor, 1000);  // reusable afterwards
    }
  }
}

TEST_CASE("nested run on the same pool runs inline instead of deadlocking", "[parallel]") {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(20 * 30);
  pool.run(20, [&](index_t outer) {
    pool.run(30, [&](index_t inner) { hits[static_cast<std::size_t>(outer * 30 + inner)].fetch_add(1); });
  });
  for (std::size_t i = 0; i < hits.size(); ++i) {
    CAPTURE(i);
    REQUIRE(hits[i].load() == 1);
  }
  // parallel_for inside parallel_for, as an operator calling a shared stage would.
  std::atomic<index_t> total{0};
  seqmix::parallel_for(pool, 64, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i)
      seqmix::parallel_for(pool, 100, 1, [&](index_t b, index_t e) { total.fetch_add(e - b); });
  });
  CHECK(total.load() == 64 * 100);

  // A different pool nested inside this one is used normally.
  ThreadPool inner_pool(2);
  std::atomic<int> count{0};
  pool.run(4, [&](index_t) { inner_pool.run(10, [&](index_t) { count.fetch_add(1); }); });
  CHECK(count.load() == 40);
}

TEST_CASE("concurrent calls from two host threads on one pool", "[parallel]") {
  ThreadPool pool(2);
  constexpr index_t kCount = 257;
  constexpr int kRounds = 200;
  std::atomic<int> failures{0};
  auto host = [&](index_t offset) {
    for (int round = 0; round < kRounds; ++round) {
      std::vector<index_t> out(static_cast<std::size_t>(kCount), -1);
      pool.run(kCount, [&](index_t i) { out[static_cast<std::size_t>(i)] = offset + i * i; });
      for (index_t i = 0; i < kCount; ++i)
        if (out[static_cast<std::size_t>(i)] != offset + i * i) failures.fetch_add(1);
    }
  };
  std::thread a(host, index_t{0});
  std::thread b(host, index_t{1000000});
  a.join();
  b.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("pools reuse their threads across calls", "[parallel]") {
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    ThreadPool pool(threads);
    std::mutex mutex;
    std::set<std::thread::id> seen;
    for (int call = 0; call < 500; ++call) {
      pool.run(16, [&](index_t) {
        std::lock_guard<std::mutex> lock(mutex);
        seen.insert(std::this_thread::get_id());
      });
    }
    CHECK(seen.size() <= static_cast<std::size_t>(threads));
    if (threads == 1) CHECK(seen == std::set<std::thread::id>{std::this_thread::get_id()});
  }
}

TEST_CASE("invalid executor construction is rejected with ShapeError", "[parallel]") {
  CHECK_THROWS_AS(ThreadPool(-1), seqmix::ShapeError);
  CHECK_THROWS_WITH(ThreadPool(-1), Catch::Contains("seqmix::ThreadPool") && Catch::Contains("'threads'"));
  CHECK_THROWS_AS(ThreadPool(std::numeric_limits<int>::min()), seqmix::ShapeError);
  CHECK_THROWS_AS(CallbackExecutor(0, host_loop(1)), seqmix::ShapeError);
  CHECK_THROWS_AS(CallbackExecutor(-5, host_loop(1)), seqmix::ShapeError);
  CHECK_THROWS_WITH(CallbackExecutor(2, CallbackExecutor::ParallelFor{}), Catch::Contains("'parallel_for'"));
  // ShapeError is a std::invalid_argument, so older catch sites keep working.
  CHECK_THROWS_AS(ThreadPool(-1), std::invalid_argument);
}

TEST_CASE("a callback that skips or repeats tasks is reported", "[parallel]") {
  const CallbackExecutor skips(2, [](index_t count, const std::function<void(index_t)>& task) {
    for (index_t i = 0; i + 1 < count; ++i) task(i);
  });
  CHECK_THROWS_WITH(skips.run(10, [](index_t) {}), Catch::Contains("'parallel_for'") && Catch::Contains("9 task calls"));
  const CallbackExecutor repeats(2, [](index_t count, const std::function<void(index_t)>& task) {
    for (index_t i = 0; i < count; ++i) task(i), task(i);
  });
  CHECK_THROWS_AS(repeats.run(3, [](index_t) {}), seqmix::ShapeError);
}

// Pools calling into each other from tasks, from several host threads at once: the pattern
// ThreadSanitizer flagged as a lock-order inversion when a caller held its pool's submission
// lock while its tasks submitted to the other pool. Every index must run exactly once, and the
// test must finish (a deadlock hangs it).
TEST_CASE("pools nested in each other from several host threads do not deadlock", "[parallel]") {
  ThreadPool a(2), b(2);
  const int rounds = seqmix::testing::small_test_scale() ? 20 : 100;
  constexpr index_t kOuter = 6, kInner = 9;
  std::atomic<int> failures{0};
  // outer pool -> inner pool -> outer pool again, so both orders of the two pools occur.
  auto host = [&](const ThreadPool& outer, const ThreadPool& inner) {
    for (int round = 0; round < rounds; ++round) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(kOuter * kInner * 2));
      outer.run(kOuter, [&](index_t i) {
        inner.run(kInner, [&](index_t j) {
          outer.run(2, [&](index_t k) { hits[static_cast<std::size_t>((i * kInner + j) * 2 + k)].fetch_add(1); });
        });
      });
      for (const auto& hit : hits)
        if (hit.load() != 1) failures.fetch_add(1);
    }
  };
  std::thread t1(host, std::cref(a), std::cref(b));
  std::thread t2(host, std::cref(b), std::cref(a));
  host(a, b);  // the main thread too
  t1.join();
  t2.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("several host threads share one pool, with nested calls and errors", "[parallel]") {
  ThreadPool pool(2);
  const int rounds = seqmix::testing::small_test_scale() ? 30 : 150;
  std::atomic<int> failures{0}, caught{0};
  auto host = [&](int id) {
    for (int round = 0; round < rounds; ++round) {
      std::atomic<index_t> sum{0};
      seqmix::parallel_for(pool, 64, 1, [&](index_t begin, index_t end) {
        for (index_t i = begin; i < end; ++i) pool.run(4, [&](index_t j) { sum.fetch_add(i * 4 + j); });
      });
      if (sum.load() != 256 * 255 / 2) failures.fetch_add(1);
      try {
        pool.run(16, [&](index_t i) {
          if (i == (id + round) % 16) throw std::runtime_error("task failed");
        });
      } catch (const std::runtime_error&) {
        caught.fetch_add(1);
      }
    }
  };
  std::vector<std::thread> hosts;
  for (int id = 0; id < 4; ++id) hosts.emplace_back(host, id);
  for (auto& t : hosts) t.join();
  CHECK(failures.load() == 0);
  CHECK(caught.load() == 4 * rounds);
  check_run_covers(pool, 1000);  // still usable, and parallel again once idle
}
