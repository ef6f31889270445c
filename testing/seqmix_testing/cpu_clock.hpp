// Thread CPU time, the clock the project times with on shared machines: other sessions' load
// inflates it far less than wall time. Shared by the counting executor, the machine limits'
// one-thread rates and the benchmarks that time phases of a call.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <ctime>
#include <tuple>
#include <vector>

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

/// The median process CPU time per call of each of `calls`, sampled alternately after a
/// benchmark's timed loop (5 rounds; the benchmarks' speed-up counters are ratios of these). A
/// sample is a batch of calls of about 0.1 s (sized by the first callable), not one call: the
/// process CPU clock advances a pool's other threads by scheduler ticks (4 ms here), so calls of
/// a few ms read up to 4x apart (a bf16 decode with fp32 products at 5.2 ms of process CPU in
/// 1.8 ms of wall time on 2 threads, 2026-12-07).
template <class... Calls>
std::array<double, sizeof...(Calls)> alternated_cpu_medians(const Calls&... calls) {
  constexpr std::size_t n = sizeof...(Calls);
  const auto per_call = [](const auto& call, int count) {
    const double start = process_cpu_seconds();
    for (int c = 0; c < count; ++c) call();
    return (process_cpu_seconds() - start) / count;
  };
  const double first = per_call(std::get<0>(std::forward_as_tuple(calls...)), 1);
  const int count = std::max(1, static_cast<int>(0.1 / std::max(first, 1e-5)));
  std::array<std::vector<double>, n> samples;
  for (int round = 0; round < 5; ++round) {
    std::size_t i = 0;
    (samples[i++].push_back(per_call(calls, count)), ...);
  }
  std::array<double, n> medians{};
  for (std::size_t i = 0; i < n; ++i) {
    std::sort(samples[i].begin(), samples[i].end());
    medians[i] = samples[i][samples[i].size() / 2];
  }
  return medians;
}

}  // namespace seqmix::testing
