// The four step batches a family's decode steps are counted on (allocation tests): dense
// (kStepRows token rows, one state row each) or slotted (the same rows through the slots of a
// kStepPool-row pool: a padding row, holes, one fresh sequence), each serially and on
// ThreadPool(2). for_each_step_batch calls body(batch, state_rows, executor, slotted, threaded).
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/testing.hpp"

namespace seqmix::testing {

constexpr index_t kStepRows = 4, kStepPool = 9;

template <class Body>
void for_each_step_batch(Body&& body) {
  static const std::vector<std::int32_t> slots = {6, -1, 2, 0};
  static const std::vector<std::uint8_t> init = {1, 1, 0, 1};
  for (const bool slotted : {false, true})
    for (const bool threaded : {false, true}) {
      SequenceBatch batch;
      if (slotted) batch.state_indices = slots, batch.has_initial_state = init;
      const Executor& ex = threaded ? static_cast<const Executor&>(two_thread_pool()) : serial_executor();
      body(batch, slotted ? kStepPool : kStepRows, ex, slotted, threaded);
    }
}

}  // namespace seqmix::testing
