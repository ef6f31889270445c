// relay_state: the exact, sequential way to carry a recurrent operator's state across the ranks
// of a contiguous slicing. Rank r waits for rank r - 1's final state, runs its slice from it and
// passes its own final state on to rank r + 1, so the ranks run one after another (a pipeline:
// with several independent sequences or layers in flight they overlap; for one sequence and one
// layer there is no speed-up). It works for every operator that takes an initial state and
// returns a final one, with no extra arithmetic; one state per rank crosses the network.
//
// The parallel form (every rank runs its slice from a zero state at once, an exclusive scan of
// the slices' transitions across ranks, then a correction of each slice's outputs) needs the
// operator's slice transition; where a family provides it, prefer it.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "seqmix/core/tensor.hpp"
#include "seqmix/mpi/collective.hpp"

namespace seqmix {
namespace mpi {

/// What one rank's relay_state call did (optional output).
struct RelayStats {
  std::int64_t bytes_sent = 0;      ///< the final state sent to the next rank (0 on the last rank)
  std::int64_t bytes_received = 0;  ///< the initial state received from the previous rank (0 on rank 0)
  double wait_seconds = 0;          ///< blocked until the previous rank's state arrived
  double run_seconds = 0;           ///< in `run`
};

/// Runs `run()` on every rank of `comm` in rank order, carrying `state` (any shape, contiguous,
/// the same shape on every rank) from each rank to the next: rank 0 starts from the contents of
/// its `state`; rank r > 0 first overwrites its `state` with rank r - 1's. `run` must run the
/// rank's slice from `state` and leave its final state in `state` (the operators accept the same
/// view as initial_state and final_state). On return, the last rank's `state` is the final state
/// of the whole sequence. Collective; a rank whose state has another shape, or is not contiguous,
/// makes every rank throw ShapeError before any exchange. If `run` throws on a rank, that rank
/// rethrows its exception, the ranks after it skip their run, and every other rank throws
/// ShapeError naming the rank (never a hang). `stats` (optional) receives this rank's bytes and
/// timings.
template <std::size_t Rank, class Run>
void relay_state(MPI_Comm comm, const TensorView<float, Rank>& state, Run&& run, RelayStats* stats = nullptr) {
  using clock = std::chrono::steady_clock;
  const std::string op = "mpi::relay_state";
  std::vector<detail::AgreedValue> agreed;
  static const char* const names[8] = {"state (dimension 0)", "state (dimension 1)", "state (dimension 2)",
                                       "state (dimension 3)", "state (dimension 4)", "state (dimension 5)",
                                       "state (dimension 6)", "state (dimension 7)"};
  static_assert(Rank <= 8, "relay_state: states of rank up to 8");
  for (std::size_t d = 0; d < Rank; ++d) agreed.push_back({names[d], state.size(d)});
  detail::collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    check.layout("state", state);
    if (!state.is_contiguous()) check.fail("state", "must be contiguous (it is sent as one buffer)");
    if (state.data() == nullptr && state.numel() > 0) check.fail("state", "has a null data pointer");
  });
  const int rank = detail::comm_rank(comm), ranks = detail::comm_size(comm);
  const std::int64_t bytes = state.numel() * static_cast<std::int64_t>(sizeof(float));
  RelayStats st;
  std::vector<MPI_Request> requests;
  // A failure travels with the state: a rank whose `run` threw (or whose predecessor failed) sends
  // the lowest failed rank instead of a state, the ranks after it skip their run, and a last
  // MPI_Allreduce tells the ranks before it, so every rank throws and none waits forever.
  std::int32_t failed = ranks;  // lowest rank that failed so far; ranks = none
  std::exception_ptr error;
  auto t = clock::now();
  if (rank > 0) {
    MPI_Recv(&failed, 1, MPI_INT32_T, rank - 1, 7022, comm, MPI_STATUS_IGNORE);
    if (failed == ranks) {
      detail::irecv_bytes(state.data(), bytes, rank - 1, 7023, comm, requests);
      detail::wait_all(requests);
      st.bytes_received = bytes;
    }
  }
  st.wait_seconds = std::chrono::duration<double>(clock::now() - t).count();
  t = clock::now();
  if (failed == ranks) {
    try {
      run();
    } catch (...) {
      error = std::current_exception();
      failed = rank;
    }
  }
  st.run_seconds = std::chrono::duration<double>(clock::now() - t).count();
  if (rank + 1 < ranks) {
    MPI_Send(&failed, 1, MPI_INT32_T, rank + 1, 7022, comm);
    if (failed == ranks) {
      detail::isend_bytes(state.data(), bytes, rank + 1, 7023, comm, requests);
      detail::wait_all(requests);
      st.bytes_sent = bytes;
    }
  }
  std::int32_t first_failed = failed;
  MPI_Allreduce(&failed, &first_failed, 1, MPI_INT32_T, MPI_MIN, comm);
  if (error) std::rethrow_exception(error);
  if (first_failed < ranks)
    throw ShapeError(op, "run", "threw on rank " + std::to_string(first_failed) +
                                    " (its own error says why); the ranks after it did not run");
  if (stats) *stats = st;
}

}  // namespace mpi
}  // namespace seqmix
