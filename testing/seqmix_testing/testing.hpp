// Umbrella for the shared test and benchmark helpers.
#pragma once

#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/model_shapes.hpp"
#include "seqmix_testing/random.hpp"

#include <cstdlib>
#include <cstring>

#include "seqmix/core/parallel.hpp"

namespace seqmix::testing {

// CI's sanitizer build sets SEQMIX_TEST_SCALE=small: the largest sweeps shrink there so the
// instrumented suite stays fast. Tests use it to drop only their biggest shapes.
inline bool small_test_scale() {
  const char* scale = std::getenv("SEQMIX_TEST_SCALE");
  return scale != nullptr && std::strcmp(scale, "small") == 0;
}

// The pool the benchmarks and threaded tests run on: the machine's two cores (the caller plus one worker),
// created once so no benchmark pays for thread start-up.
inline const ThreadPool& two_thread_pool() {
  static const ThreadPool pool(2);
  return pool;
}

}  // namespace seqmix::testing
