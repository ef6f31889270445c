// Thread CPU time, the clock the project times with on shared machines: other sessions' load
// inflates it far less than wall time. Shared by the counting executor, the machine limits'
// one-thread rates and the benchmarks that time phases of a call.
#pragma once

#include <algorithm>
#include <ctime>

namespace seqmix::testing {

/// Thread CPU time of the calling thread, in seconds.
inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// CPU time of the whole process (every thread of a pool), in seconds: for calls that run on
/// several threads.
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// What one thread_cpu_seconds() costs (a system call: about 1.4 us on the project's machines,
/// which would otherwise show up as 2.8 us of serial work per timed piece). Measured once, the
/// fastest of a few batches.
inline double clock_read_seconds() {
  static const double cost = [] {
    double best = 1.0;
    for (int batch = 0; batch < 5; ++batch) {
      const double start = thread_cpu_seconds();
      for (int i = 0; i < 64; ++i) (void)thread_cpu_seconds();
      best = std::min(best, (thread_cpu_seconds() - start) / 65.0);
    }
    return best;
  }();
  return cost;
}

}  // namespace seqmix::testing
