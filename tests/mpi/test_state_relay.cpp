// mpi::relay_state: the state reaches each rank in order (a recurrence s <- a s + b per rank
// equals its sequential value on every rank), and a bad call or a throwing run makes every rank
// throw, with no rank left waiting.
#include <catch2/catch.hpp>

#include <cmath>
#include <stdexcept>
#include <string>

#include "seqmix/mpi/state_relay.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;

int relay_rank() { return sm::detail::comm_rank(MPI_COMM_WORLD); }
int relay_ranks() { return sm::detail::comm_size(MPI_COMM_WORLD); }

// Rank r's slice of the toy recurrence: s <- 0.5 s + (r + 1) elementwise (+ the entry's index).
void relay_toy_slice(Tensor<float, 2>& s, int r) {
  for (index_t i = 0; i < s.numel(); ++i) s.data()[i] = 0.5f * s.data()[i] + static_cast<float>(r + 1 + i);
}

}  // namespace

TEST_CASE("mpi relay_state carries the state rank to rank", "[mpi]") {
  const int rank = relay_rank(), ranks = relay_ranks();
  Tensor<float, 2> state({3, 5});
  state.fill(rank == 0 ? 2.f : -99.f);  // only rank 0's initial contents count
  sm::RelayStats stats;
  sm::relay_state(MPI_COMM_WORLD, state.view(), [&] { relay_toy_slice(state, rank); }, &stats);
  Tensor<float, 2> want({3, 5});
  want.fill(2.f);
  for (int r = 0; r <= rank; ++r) relay_toy_slice(want, r);
  for (index_t i = 0; i < state.numel(); ++i) CHECK(state.data()[i] == want.data()[i]);
  CHECK(stats.bytes_received == (rank > 0 ? 15 * 4 : 0));
  CHECK(stats.bytes_sent == (rank + 1 < ranks ? 15 * 4 : 0));
}

TEST_CASE("mpi relay_state refuses bad calls on every rank", "[mpi]") {
  const int rank = relay_rank(), ranks = relay_ranks();
  SECTION("ranks disagree on the state's shape") {
    Tensor<float, 2> state({3, rank == ranks - 1 ? 4 : 5});
    bool ran = false;
    CHECK_THROWS_WITH(sm::relay_state(MPI_COMM_WORLD, state.view(), [&] { ran = true; }),
                      Catch::Contains("differs between ranks"));
    CHECK_FALSE(ran);
  }
  SECTION("a non-contiguous state") {
    Tensor<float, 2> storage({3, 10});
    const seqmix::TensorView<float, 2> strided(storage.data(), {3, 5}, {rank == 0 ? 10 : 5, 1});
    CHECK_THROWS_WITH(sm::relay_state(MPI_COMM_WORLD, strided, [] {}), Catch::Contains("on rank 0"));
  }
  SECTION("run throws on one rank") {
    Tensor<float, 2> state({2, 2});
    int runs = 0;
    const int bad = ranks > 1 ? 1 : 0;
    try {
      sm::relay_state(MPI_COMM_WORLD, state.view(), [&] {
        ++runs;
        if (rank == bad) throw std::runtime_error("slice failed");
      });
      FAIL_CHECK("no exception");
    } catch (const seqmix::ShapeError& e) {
      CHECK(rank != bad);
      CHECK(std::string(e.what()).find("threw on rank " + std::to_string(bad)) != std::string::npos);
    } catch (const std::runtime_error& e) {
      CHECK(rank == bad);
    }
    CHECK(runs == (rank <= bad ? 1 : 0));  // the ranks after it never ran
  }
}
