// The counting executor behind seqmix-parallel-grain (testing/seqmix_testing/counting_executor.hpp)
// and the causal prefill's task order that it led to (attention/dense/flash.hpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

namespace st = seqmix::testing;
using seqmix::index_t;

st::RecordedRun equal_run(index_t tasks, double seconds) {
  return {tasks, std::vector<double>(static_cast<std::size_t>(tasks), seconds), false, tasks * seconds};
}

// Spins for about `seconds` of this thread's CPU time.
void busy(double seconds) {
  const double end = st::thread_cpu_seconds() + seconds;
  while (st::thread_cpu_seconds() < end) {
  }
}

}  // namespace

TEST_CASE("parallel grain: the counting executor runs every task once and records each run", "[parallel_grain]") {
  st::CountingExecutor ex(64);
  CHECK(ex.concurrency() == 64);
  std::vector<int> calls(300, 0);
  seqmix::parallel_for(ex, 300, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) ++calls[static_cast<std::size_t>(i)];
    if (begin == 0) ex.run(3, [&](index_t) {});  // a nested run inside the first task
  });
  for (int c : calls) CHECK(c == 1);
  REQUIRE(ex.runs().size() == 2);
  CHECK(ex.runs()[0].tasks == 256);  // parallel_for's cap: 4 blocks per thread
  CHECK_FALSE(ex.runs()[0].nested);
  CHECK(ex.runs()[0].task_seconds.size() == 256);
  CHECK(ex.runs()[1].tasks == 3);
  CHECK(ex.runs()[1].nested);
  ex.clear();
  seqmix::parallel_for(ex, 10, 100, [](index_t, index_t) {});  // one block: no run() at all
  CHECK(ex.runs().empty());
}

TEST_CASE("parallel grain: the serial part is the call's time outside its top-level runs", "[parallel_grain]") {
  // Known spans: 10 ms of call, 6 ms inside one top-level run (a nested run inside it does not
  // count twice): 4 ms serial, less the run's two clock reads.
  st::RecordedRun outer = equal_run(4, 1.5e-3), inner = equal_run(2, 1e-3);
  inner.nested = true;
  CHECK(st::serial_seconds({outer, inner}, 10e-3) == Approx(4e-3 - st::clock_read_seconds()));
  CHECK(st::serial_seconds({outer}, 1e-3) == 0.0);  // never negative
  // Measured: about 2 ms of work before a run of 64 tasks of 0.1 ms each. The serial part comes
  // out near 2 ms however many clock reads the tasks took (thread CPU time: only this thread's
  // work counts, so a loaded machine does not move it much). Interrupts and page faults charged
  // to this thread only ever add time, so the smallest of a few tries is the one to bound.
  double serial = 1.0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    st::CountingExecutor ex(64);
    const double start = st::thread_cpu_seconds();
    busy(2e-3);
    ex.run(64, [](index_t) { busy(1e-4); });
    serial = std::min(serial, st::serial_seconds(ex.runs(), st::thread_cpu_seconds() - start));
  }
  CHECK(serial > 1.9e-3);
  CHECK(serial < 2.5e-3);
}

TEST_CASE("parallel grain: list schedules and idle fractions of known task sets", "[parallel_grain]") {
  CHECK(st::list_schedule_seconds({1, 1, 1, 1}, 2) == Approx(2.0));
  CHECK(st::list_schedule_seconds({4, 1, 1, 1, 1}, 2) == Approx(4.0));  // in index order: 4 | 1+1+1+1
  CHECK(st::list_schedule_seconds({1, 1, 1, 1, 4}, 2) == Approx(6.0));  // the long task last: 1+1+4
  // 128 equal tasks fill 64 cores; 96 leave a half-empty second wave; 4 leave 60 cores idle.
  CHECK(st::estimate_grain({equal_run(128, 1e-3)}, 0.0, 64).idle_fraction == Approx(0.0).margin(1e-12));
  CHECK(st::estimate_grain({equal_run(96, 1e-3)}, 0.0, 64).idle_fraction == Approx(0.25));
  CHECK(st::estimate_grain({equal_run(4, 1e-3)}, 0.0, 64).equal_idle_fraction == Approx(60.0 / 64));
  // A serial part as long as the parallel work's 64-core time: half of the call idles 63 cores.
  const st::GrainEstimate e = st::estimate_grain({equal_run(64, 1e-3)}, 1e-3, 64);
  CHECK(e.total_seconds == Approx(65e-3));
  CHECK(e.parallel_seconds == Approx(2e-3));
  CHECK(e.idle_fraction == Approx(1.0 - 65.0 / 128));
  // Unequal tasks: counts alone say 0% idle, the schedule does not.
  st::RecordedRun skewed = equal_run(64, 1e-3);
  skewed.task_seconds[63] = 8e-3;
  const st::GrainEstimate s = st::estimate_grain({skewed}, 0.0, 64);
  CHECK(s.equal_idle_fraction == Approx(0.0).margin(1e-12));
  CHECK(s.idle_fraction == Approx(1.0 - 71.0 / (64 * 8)));
  // Nested runs are part of their parent's task time and are not scheduled again.
  st::RecordedRun nested = equal_run(1000, 1.0);
  nested.nested = true;
  CHECK(st::estimate_grain({equal_run(64, 1e-3), nested}, 0.0, 64).total_seconds == Approx(64e-3));
}

// The causal prefill hands out its (query block, KV head) tasks most expensive first: even and
// odd block counts, a ragged last block, more keys than queries (a cached prefix), one thread
// per task (64 claimed threads) and a real pool, each against the reference.
TEST_CASE("parallel grain: causal query blocks, most expensive first, match the reference", "[parallel_grain]") {
  struct Shape {
    index_t B, Tq, Tk, Hq, Hkv;
  };
  const Shape shapes[] = {
      {1, 256, 256, 4, 1},  // G 4: blocks of 64 rows, 4 blocks
      {2, 317, 317, 4, 1},  // 5 blocks, the last of 61 rows
      {1, 130, 200, 8, 2},  // 3 blocks against a 70-token prefix
      {1, 513, 513, 2, 2},  // G 1: blocks of 256 rows, 3 blocks, the last of 1 row
      {1, 33, 33, 4, 4},    // one block: nothing to pair
  };
  st::CountingExecutor wide(64);
  seqmix::ThreadPool pool(2);
  for (const Shape& s : shapes) {
    const index_t D = 24;
    const auto q = st::random_tensor<4>({s.B, s.Tq, s.Hq, D}, 1);
    const auto k = st::random_tensor<4>({s.B, s.Tk, s.Hkv, D}, 2);
    const auto v = st::random_tensor<4>({s.B, s.Tk, s.Hkv, D}, 3);
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    seqmix::AttentionOptions options;
    options.causal = true;
    seqmix::Tensor<float, 4> ref({s.B, s.Tq, s.Hq, D}), got({s.B, s.Tq, s.Hq, D});
    seqmix::reference::attention(in, {ref.view(), {}}, options);
    for (const seqmix::Executor* ex : {static_cast<const seqmix::Executor*>(&wide), static_cast<const seqmix::Executor*>(&pool)}) {
      got.fill(-1.f);
      seqmix::attention_flash(in, {got.view(), {}}, options, *ex);
      const auto cmp = st::compare(got.cview(), ref.cview(), 1e-4);
      INFO("B=" << s.B << " Tq=" << s.Tq << " Tk=" << s.Tk << " Hq=" << s.Hq << " Hkv=" << s.Hkv
                << " concurrency=" << ex->concurrency() << ": " << cmp.describe());
      CHECK(cmp.ok);
    }
    // Every block once, in non-increasing cost (a ragged last block may cost less than a full one).
    const seqmix::detail::AttentionDims d{s.B, s.Tq, s.Tk, s.Hq, s.Hkv, D, D};
    const index_t bq = seqmix::detail::flash_query_block(s.Hq / s.Hkv, s.Tq);
    const auto order = seqmix::detail::prefill_blocks_by_cost(in, options, d, bq);
    REQUIRE(static_cast<index_t>(order.size()) == s.B * ((s.Tq + bq - 1) / bq));
    std::vector<int> seen(static_cast<std::size_t>(s.B * s.Tq), 0);
    for (std::size_t t = 0; t < order.size(); ++t) {
      ++seen[static_cast<std::size_t>(order[t].b * s.Tq + order[t].i0)];
      if (t > 0) CHECK(order[t].cost <= order[t - 1].cost);
    }
    for (const auto& block : order) CHECK(seen[static_cast<std::size_t>(block.b * s.Tq + block.i0)] == 1);
  }
}
