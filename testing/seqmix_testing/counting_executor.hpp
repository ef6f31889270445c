// An executor that claims a concurrency (2, 64, ...) but runs every task serially on the calling
// thread, recording how each operator call splits its work: how many tasks each run() gets and
// the thread CPU time of each task. The task counts are what the partition code would hand a
// pool of that size (operators size their split from concurrency() alone); the per-task times
// let a list schedule estimate how busy that many cores would be, without having them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/cpu_clock.hpp"

namespace seqmix::testing {

/// One run() call as the executor saw it.
struct RecordedRun {
  index_t tasks = 0;
  std::vector<double> task_seconds;  // thread CPU time of each task, in index order
  bool nested = false;               // issued from inside another run()'s task
  double span_seconds = 0.0;         // thread CPU time from entering run() to leaving it
};

/// Serial executor with a claimed concurrency that records every run() (see the top of the file).
class CountingExecutor final : public Executor {
 public:
  explicit CountingExecutor(int concurrency) : concurrency_(std::max(1, concurrency)) {}

  int concurrency() const noexcept override { return concurrency_; }

  void run(index_t count, FunctionRef<void(index_t)> task) const override {
    if (count <= 0) return;
    const double entered = thread_cpu_seconds();
    const std::size_t slot = runs_.size();
    runs_.push_back({count, {}, depth_ > 0, 0.0});
    std::vector<double> seconds(static_cast<std::size_t>(count));
    ++depth_;
    const double read = clock_read_seconds();
    for (index_t i = 0; i < count; ++i) {
      const double start = thread_cpu_seconds();
      task(i);
      // About one clock read's cost falls between the two readings.
      seconds[static_cast<std::size_t>(i)] = std::max(0.0, thread_cpu_seconds() - start - read);
    }
    --depth_;
    runs_[slot].task_seconds = std::move(seconds);  // by index: nested runs grew the vector
    runs_[slot].span_seconds = thread_cpu_seconds() - entered;
  }

  const std::vector<RecordedRun>& runs() const { return runs_; }
  void clear() { runs_.clear(); }

 private:
  int concurrency_;
  mutable std::vector<RecordedRun> runs_;
  mutable int depth_ = 0;
};

/// Time to finish `task_seconds` on `workers` cores that take tasks in index order, each task going
/// to the first core that frees up: what ThreadPool's shared task counter does.
inline double list_schedule_seconds(const std::vector<double>& task_seconds, int workers) {
  std::priority_queue<double, std::vector<double>, std::greater<double>> free_at;
  for (int w = 0; w < std::max(1, workers); ++w) free_at.push(0.0);
  double makespan = 0.0;
  for (double t : task_seconds) {
    const double end = free_at.top() + t;
    free_at.pop();
    free_at.push(end);
    makespan = std::max(makespan, end);
  }
  return makespan;
}

/// What one operator call's recorded runs predict for `workers` cores.
struct GrainEstimate {
  double total_seconds = 0.0;     // the whole call on one core: serial part + every task
  double serial_seconds = 0.0;    // outside any run(): runs on one core whatever the pool size
  double parallel_seconds = 0.0;  // the call on `workers` cores: serial part + each run's schedule
  double idle_fraction = 0.0;     // 1 - total / (workers * parallel_seconds)
  double equal_idle_fraction = 0.0;  // the same if every run's tasks were of equal size (counts alone)
};

/// Time of one call's serial part: its thread CPU time outside its top-level run() calls (nested
/// runs are inside their parent's). Measured from each run's entry and exit rather than as the
/// call less its tasks: the clock reads around each task cost more after a task that evicted the
/// caches than the calibrated read, and summed over many tasks that excess read as serial work
/// (about 1% of a decode call, which alone would idle a third of 64 cores).
inline double serial_seconds(const std::vector<RecordedRun>& runs, double call_seconds) {
  double in_runs = 0.0;
  for (const RecordedRun& run : runs)
    if (!run.nested) in_runs += run.span_seconds + clock_read_seconds();  // the entry and exit reads
  return std::max(0.0, call_seconds - in_runs);
}

/// Keeps, task by task, the smaller time of two recordings of the same call (the same runs in the
/// same order), so that another session's burst on a loaded machine does not look like imbalance.
inline void keep_faster(std::vector<RecordedRun>& best, const std::vector<RecordedRun>& again) {
  if (best.size() != again.size()) return;
  for (std::size_t r = 0; r < best.size(); ++r)
    if (best[r].task_seconds.size() != again[r].task_seconds.size()) return;
  for (std::size_t r = 0; r < best.size(); ++r)
    for (std::size_t i = 0; i < best[r].task_seconds.size(); ++i)
      best[r].task_seconds[i] = std::min(best[r].task_seconds[i], again[r].task_seconds[i]);
}

/// Schedules a call's top-level runs on `workers` cores, one run after the other (run() returns
/// only when its tasks are done), after a serial part that no pool can shorten.
inline GrainEstimate estimate_grain(const std::vector<RecordedRun>& runs, double serial, int workers) {
  GrainEstimate e;
  e.serial_seconds = serial;
  double work = serial, schedules = serial, equal = serial;
  for (const RecordedRun& run : runs) {
    if (run.nested) continue;
    double run_work = 0.0;
    for (double t : run.task_seconds) run_work += t;
    work += run_work;
    schedules += list_schedule_seconds(run.task_seconds, workers);
    const index_t waves = (run.tasks + workers - 1) / workers;
    equal += run_work * static_cast<double>(waves) / static_cast<double>(run.tasks);
  }
  e.total_seconds = work;
  e.parallel_seconds = schedules;
  e.idle_fraction = schedules > 0 ? 1.0 - work / (workers * schedules) : 0.0;
  e.equal_idle_fraction = equal > 0 ? 1.0 - work / (workers * equal) : 0.0;
  return e;
}

}  // namespace seqmix::testing
