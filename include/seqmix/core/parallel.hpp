// Threading: operators take an Executor and split their work with parallel_for.
//
//  - serial_executor(): runs everything on the calling thread (the default everywhere).
//  - ThreadPool: a reusable pool (threads are started once, not per call); the calling thread
//    takes part in the work, so ThreadPool(2) uses the caller plus one worker.
//  - CallbackExecutor: adapts a host's own pool through a parallel-for callback.
// There is no global mutable state: concurrent calls on different data are safe.
//
// Nesting and concurrency (deadlock-free by construction): ThreadPool::run never waits for
// another job. A pool runs one job at a time; a run() that finds its pool busy (a job from
// another host thread, or an enclosing job when a task calls run() on its own pool or on a pool
// further up the call chain) runs its tasks inline on the calling thread, in index order, and
// returns when they are done. Waits happen only for the workers helping with the caller's own
// job, and no mutex is held while a task runs, so no cycle of waits (and no lock-order
// inversion, which ThreadSanitizer would report) can form whatever pools tasks call into.
// Results never depend on which way a job ran; only the parallelism does.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"

namespace seqmix {

/// A non-owning reference to a callable, cheaper than std::function (no allocation). The callable
/// must outlive the reference; parallel_for guarantees that by blocking until all tasks finish.
template <class Signature>
class FunctionRef;

/// FunctionRef for a call signature R(Args...).
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  /// References f (not copied: f must outlive this object).
  FunctionRef(F&& f) noexcept  // NOLINT: implicit by design
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  /// Calls the referenced callable.
  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

/// Where an operator runs its parallel tasks: serial_executor(), a ThreadPool or a
/// CallbackExecutor over the host's pool. Every operator takes one as its last argument (default
/// serial_executor()); results do not depend on which (nesting rules: docs/reliability.md).
class Executor {
 public:
  virtual ~Executor() = default;
  /// How many tasks can make progress at once (used to size the split of the work).
  virtual int concurrency() const noexcept = 0;
  /// Calls task(i) once for each i in [0, count) and returns when all calls have finished. Calls
  /// may run concurrently. If tasks throw, the first exception is rethrown here.
  virtual void run(index_t count, FunctionRef<void(index_t)> task) const = 0;
};

/// Runs every task on the calling thread, in index order (the type of serial_executor()).
class SerialExecutor final : public Executor {
 public:
  int concurrency() const noexcept override { return 1; }
  void run(index_t count, FunctionRef<void(index_t)> task) const override {
    for (index_t i = 0; i < count; ++i) task(i);
  }
};

/// The default executor of every operator. Stateless, so sharing it is safe.
inline const Executor& serial_executor() {
  static const SerialExecutor instance;
  return instance;
}

namespace detail {

// Collects the first exception thrown by concurrently running tasks.
class FirstError {
 public:
  void capture() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = std::current_exception();
  }
  bool has_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<bool>(error_);
  }
  void rethrow_if_any() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  mutable std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace detail

/// A reusable pool of worker threads, started once; the calling thread takes part in each run, so
/// ThreadPool(2) is the caller plus one worker. One job at a time: a run() that finds the pool
/// busy (another host thread's job, or a task calling back into its own pool) runs its tasks
/// inline on the calling thread instead of waiting, so nesting cannot deadlock.
class ThreadPool final : public Executor {
 public:
  /// `threads` counts the calling thread; 0 means one per hardware thread.
  explicit ThreadPool(int threads = 0) {
    ArgCheck("ThreadPool").that(threads >= 0, "threads", "must be >= 0 (0 = one per hardware thread), got " + std::to_string(threads));
    if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    concurrency_ = threads;
    workers_.reserve(static_cast<std::size_t>(threads - 1));
    try {
      for (int i = 0; i + 1 < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
    } catch (...) {
      stop_workers();  // the system refused a thread: join those started, then report
      throw;
    }
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() override { stop_workers(); }

  int concurrency() const noexcept override { return concurrency_; }

  /// Runs task(0 .. count-1) on the pool, or inline when the pool is busy (see the top of this
  /// file). Makes no heap allocation.
  void run(index_t count, FunctionRef<void(index_t)> task) const override {
    if (count <= 0) return;
    // Nothing to share, a nested call from one of this pool's tasks, or the pool is running
    // another job: run inline rather than wait for it.
    bool idle = false;
    if (workers_.empty() || count == 1 || current_pool() == this ||
        !active_.compare_exchange_strong(idle, true, std::memory_order_acquire)) {
      run_inline(count, task);
      return;
    }
    Job job(task, count);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    execute(job);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = nullptr;  // late workers no longer join
    }
    // Workers usually finish within microseconds of the caller: spin before sleeping.
    spin_until([this] { return busy_workers_.load(std::memory_order_acquire) == 0; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      finished_.wait(lock, [this] { return busy_workers_.load(std::memory_order_acquire) == 0; });
    }
    active_.store(false, std::memory_order_release);
    job.errors.rethrow_if_any();
  }

 private:
  struct Job {
    Job(FunctionRef<void(index_t)> task_, index_t count_) : task(task_), count(count_) {}
    FunctionRef<void(index_t)> task;
    index_t count;
    std::atomic<index_t> next{0};
    detail::FirstError errors;
  };

  static const ThreadPool*& current_pool() {
    thread_local const ThreadPool* pool = nullptr;
    return pool;
  }

  /// The serial form of run(): same semantics (the first exception stops the remaining tasks).
  static void run_inline(index_t count, FunctionRef<void(index_t)> task) {
    for (index_t i = 0; i < count; ++i) task(i);
  }

  void execute(Job& job) const {
    const ThreadPool* previous = current_pool();
    current_pool() = this;
    for (index_t i = job.next.fetch_add(1); i < job.count; i = job.next.fetch_add(1)) {
      try {
        job.task(i);
      } catch (...) {
        job.errors.capture();
        job.next.store(job.count);  // skip the remaining tasks
      }
    }
    current_pool() = previous;
  }

  void stop_workers() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
    workers_.clear();
  }

  /// Spins for a bounded time (tens of microseconds) until `ready()` holds. Decode steps issue
  /// back-to-back jobs of a few microseconds each; sleeping on a condition variable between them
  /// costs more than the job, so a worker and the caller first spin briefly, then block.
  template <class Ready>
  static void spin_until(Ready ready) {
    for (int i = 0; i < kSpinIterations; ++i) {
      if (ready()) return;
      relax_cpu();
    }
  }

  static void relax_cpu() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  void worker_loop() const {
    std::uint64_t seen_generation = 0;
    for (;;) {
      Job* job = nullptr;
      spin_until([&] {
        return stopping_.load(std::memory_order_acquire) ||
               generation_.load(std::memory_order_acquire) != seen_generation;
      });
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || (job_ != nullptr && generation_ != seen_generation); });
        if (stopping_) return;
        seen_generation = generation_;
        job = job_;
        busy_workers_.fetch_add(1, std::memory_order_acq_rel);
      }
      execute(*job);  // no mutex held while tasks run
      {
        std::lock_guard<std::mutex> lock(mutex_);
        busy_workers_.fetch_sub(1, std::memory_order_acq_rel);
      }
      finished_.notify_all();
    }
  }

  int concurrency_ = 1;
  std::vector<std::thread> workers_;
  /// Guards job_, generation_ and busy_workers_ changes; held only for a few instructions, never
  /// while a task runs or while another mutex is taken.
  mutable std::mutex mutex_;
  mutable std::condition_variable wake_;
  mutable std::condition_variable finished_;
  /// About 20-50 microseconds of pause instructions on current x86 cores.
  static constexpr int kSpinIterations = 2000;

  /// True while a job owns the pool (from its claim to the last helper leaving it).
  mutable std::atomic<bool> active_{false};
  /// Written under mutex_; atomic so that spinning threads may read them without it.
  mutable Job* job_ = nullptr;
  mutable std::atomic<std::uint64_t> generation_{0};
  mutable std::atomic<int> busy_workers_{0};
  std::atomic<bool> stopping_{false};
};

/// Runs seqmix work on a host's own thread pool. The callback must call task(i) for every i in
/// [0, count) (in any order, on any threads) and return only when all calls have finished.
class CallbackExecutor final : public Executor {
 public:
  /// The host's parallel-for: call task(i) for every i in [0, count), return when all are done.
  using ParallelFor = std::function<void(index_t count, const std::function<void(index_t)>& task)>;

  /// `concurrency` (>= 1) sizes the split of the work; a ShapeError if it is < 1 or parallel_for
  /// is empty.
  CallbackExecutor(int concurrency, ParallelFor parallel_for)
      : concurrency_(concurrency), parallel_for_(std::move(parallel_for)) {
    const ArgCheck check("CallbackExecutor");
    check.that(concurrency >= 1, "concurrency", "must be >= 1, got " + std::to_string(concurrency));
    check.that(static_cast<bool>(parallel_for_), "parallel_for", "is an empty callback");
  }

  int concurrency() const noexcept override { return concurrency_; }

  /// Nesting: whether a task may call run() again depends on the host's pool; this adapter adds
  /// no lock of its own. A callback that returns without calling every task exactly once breaks
  /// its contract: run() then throws ShapeError naming 'parallel_for' (the outputs are partial).
  void run(index_t count, FunctionRef<void(index_t)> task) const override {
    if (count <= 0) return;
    detail::FirstError errors;
    std::atomic<index_t> calls{0};
    parallel_for_(count, [&](index_t i) {
      calls.fetch_add(1, std::memory_order_relaxed);
      if (i < 0 || i >= count || errors.has_error()) return;
      try {
        task(i);
      } catch (...) {
        errors.capture();
      }
    });
    errors.rethrow_if_any();
    if (calls.load() != count) {
      ArgCheck("CallbackExecutor").fail("parallel_for", "made " + std::to_string(calls.load()) + " task calls for " +
                                                            std::to_string(count) + " tasks");
    }
  }

 private:
  int concurrency_;
  ParallelFor parallel_for_;
};

/// Splits [0, n) into contiguous blocks of at least `grain` items and calls body(begin, end) for
/// each, spread over the executor. A few blocks per thread balance uneven work without making
/// blocks so small that scheduling dominates.
template <class Body>
void parallel_for(const Executor& executor, index_t n, index_t grain, Body&& body) {
  if (n <= 0) return;
  grain = std::max<index_t>(grain, 1);
  const index_t max_blocks = static_cast<index_t>(executor.concurrency()) * 4;
  const index_t blocks = std::max<index_t>(1, std::min<index_t>((n + grain - 1) / grain, max_blocks));
  if (blocks == 1) {
    body(index_t{0}, n);
    return;
  }
  executor.run(blocks, [&](index_t block) {
    const index_t begin = n * block / blocks;
    const index_t end = n * (block + 1) / blocks;
    if (begin < end) body(begin, end);
  });
}

}  // namespace seqmix
