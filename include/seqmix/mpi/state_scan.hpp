// State passing for the recurrent operators in parallel across ranks (docs/operators.md sections
// 15 and 17): every rank runs its slice from a zero state at once (<op>_slice: zero-state
// outputs, local final state s, transition T), the ranks form the exclusive prefix of the slice
// summaries with one MPI_Exscan under a user-defined, non-commutative reduction
//   (T2, s2) after (T1, s1) = (T2 T1, T2 s1 + s2),
// which is each rank's true initial state, and each rank adds what its tokens read from that
// state (<op>_slice_correct) without rerunning the slice. One summary per rank moves (log P
// rounds inside the Exscan), against the whole slice's state per token a rerun would cost.
//
// exscan_diagonal_slices is the transport for the diagonal transitions (a log-decay broadcast
// over the state's trailing dimensions); mpi::ssd is the first operator on it.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/mpi/collective.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/slice.hpp"

namespace seqmix {
namespace mpi {

/// What one rank's state-passing call did (optional output of the mpi:: recurrent operators).
struct StatePassStats {
  std::int64_t bytes_sent = 0;      ///< payload this rank contributed to the exchange (its summary or halo rows)
  std::int64_t bytes_needed = 0;    ///< what the algorithm needs per rank: one state (or W-1 input rows)
  double slice_seconds = 0;         ///< the slice from a zero state (with the transition)
  double exchange_seconds = 0;      ///< the collective check and the exchange (MPI_Exscan or halo wait)
  double correct_seconds = 0;       ///< the correction from the true initial state
};

namespace detail {

// A diagonal slice summary as one MPI element: int64 rows, int64 inner, float log_decay[rows],
// float state[rows * inner]. Self-describing, so the reduction needs no global.
inline std::int64_t diagonal_summary_bytes(index_t rows, index_t inner) {
  return 16 + 4 * (rows + rows * inner);
}

// MPI's user reduction: inout = in (earlier ranks) followed by inout (later ranks).
inline void compose_diagonal_summaries(void* in, void* inout, int* count, MPI_Datatype* type) {
  int size = 0;
  MPI_Type_size(*type, &size);
  for (int e = 0; e < *count; ++e) {
    char* a = static_cast<char*>(in) + static_cast<std::ptrdiff_t>(e) * size;
    char* b = static_cast<char*>(inout) + static_cast<std::ptrdiff_t>(e) * size;
    std::int64_t rows = 0, inner = 0;
    std::memcpy(&rows, b, 8);
    std::memcpy(&inner, b + 8, 8);
    float* da = reinterpret_cast<float*>(a + 16);
    float* db = reinterpret_cast<float*>(b + 16);
    const float* sa = da + rows;
    float* sb = db + rows;
    for (std::int64_t r = 0; r < rows; ++r) {
      const float decay = std::exp(db[r]);
      for (std::int64_t c = r * inner; c < (r + 1) * inner; ++c) sb[c] = decay * sa[c] + sb[c];
      db[r] += da[r];
    }
  }
}

}  // namespace detail

/// The exclusive prefix across ranks of diagonal slice summaries. Collective; every rank passes
/// its slice's transition `log_decay` [d_0..d_{RD-1}] and `state` [d_0..d_{RS-1}] (the slice's
/// final state from zero; on rank 0, fold the sequence's initial state in first with
/// compose_diagonal_slices, so it reaches every rank). `initial` (same shape as state) receives
/// the composition of the summaries of ranks 0..r-1, this rank's true initial state; rank 0's is
/// set to zeros. All views contiguous, the same shapes on every rank (checked collectively).
template <std::size_t RD, std::size_t RS>
void exscan_diagonal_slices(MPI_Comm comm, const ConstView<float, RD>& log_decay, const ConstView<float, RS>& state,
                            const TensorView<float, RS>& initial) {
  const std::string op = "mpi::exscan_diagonal_slices";
  std::vector<detail::AgreedValue> agreed;
  static const char* const names[6] = {"state (dimension 0)", "state (dimension 1)", "state (dimension 2)",
                                       "state (dimension 3)", "state (dimension 4)", "state (dimension 5)"};
  static_assert(RD >= 1 && RD <= RS && RS <= 6, "exscan_diagonal_slices: decay rank <= state rank <= 6");
  for (std::size_t d = 0; d < RS; ++d) agreed.push_back({names[d], state.size(d)});
  detail::collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    std::array<index_t, RD> decay_shape{};
    for (std::size_t d = 0; d < RD; ++d) decay_shape[d] = state.size(d);
    check.shape("state", state, state.shape(), "state");
    check.shape("log_decay", log_decay, decay_shape, "the state's leading dimensions");
    check.shape("initial", initial, state.shape(), "the state's shape");
    check.that(state.is_contiguous() && log_decay.is_contiguous() && initial.is_contiguous(), "state",
               "log_decay, state and initial must be contiguous");
    check.no_overlap("initial", initial, "state", state).no_overlap("initial", initial, "log_decay", log_decay);
  });
  const index_t rows = log_decay.numel(), inner = rows > 0 ? state.numel() / rows : 0;
  const std::int64_t bytes = detail::diagonal_summary_bytes(rows, inner);
  if (bytes > (std::int64_t{1} << 31) - 1)
    throw ShapeError(op, "state", "is too large for one MPI element (" + std::to_string(bytes) + " bytes)");
  std::vector<char> mine(static_cast<std::size_t>(bytes)), prefix(static_cast<std::size_t>(bytes));
  const std::int64_t header[2] = {rows, inner};
  std::memcpy(mine.data(), header, 16);
  std::memcpy(mine.data() + 16, log_decay.data(), static_cast<std::size_t>(rows) * 4);
  std::memcpy(mine.data() + 16 + rows * 4, state.data(), static_cast<std::size_t>(rows * inner) * 4);

  detail::exscan_summaries(comm, mine, prefix, &detail::compose_diagonal_summaries);

  if (detail::comm_rank(comm) == 0)
    std::fill(initial.data(), initial.data() + initial.numel(), 0.f);
  else
    std::memcpy(initial.data(), prefix.data() + 16 + rows * 4, static_cast<std::size_t>(rows * inner) * 4);
}

/// ssd (Mamba-2) over one sequence batch sliced contiguously by position across the ranks of
/// `comm`, equal to one seqmix::ssd call over the whole sequences to rounding. Collective. Rank r
/// passes the inputs and outputs of its slice ([B, T_r, ...], T_r >= 1, any lengths); rank 0's
/// in.initial_state [B,H,P,N] (optional) is the sequences' initial state and the other ranks pass
/// none; out.final_state (optional) receives the true state after this rank's slice (on the last
/// rank, the sequences' final state). Every rank runs ssd_slice at once, one MPI_Exscan forms
/// each rank's initial state, ssd_slice_correct finishes the outputs. Dense batch only; no
/// token_states; `stats` (optional) receives this rank's bytes and phase times. Refusals and ranks disagreeing on shapes or options throw ShapeError on every
/// rank before any exchange.
inline void ssd(MPI_Comm comm, const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  using clock = std::chrono::steady_clock;
  const auto since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  auto t = clock::now();
  StatePassStats st;
  const std::string op = "mpi::ssd";
  const int rank = detail::comm_rank(comm);
  SsdInputs zero = in;
  zero.initial_state = {};
  seqmix::detail::SsdDims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"x (batch, dimension 0)", in.x.size(0)}, {"x (heads, dimension 2)", in.x.size(2)},
      {"x (head size, dimension 3)", in.x.size(3)}, {"Bm (groups, dimension 2)", in.Bm.size(2)},
      {"Bm (state size, dimension 3)", in.Bm.size(3)}, {"options.dt_softplus", options.dt_softplus},
      {"z (given or not)", in.z.has_value()}, {"D (given or not)", in.D.has_value()},
      {"dt_bias (given or not)", in.dt_bias.has_value()}};
  detail::collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    if (rank != 0 && in.initial_state.has_value())
      check.fail("initial_state", "is rank 0's only (the sequences' initial state); rank " + std::to_string(rank) +
                                      " must pass none");
    check.that(in.x.size(1) >= 1, "x", "has no tokens on this rank; every rank needs at least one");
    check.that(!options.reverse, "options.reverse", "is not supported by mpi::ssd (the ranks hold the sequence in order)");
    SsdOutputs local = out;
    local.final_state = {};
    d = seqmix::detail::validate_ssd(op.c_str(), zero, local, options).dims;
    seqmix::detail::check_slice_batch(check, in.batch);
    check.that(!out.token_states.has_value(), "token_states", "is not supported by mpi::ssd");
    const std::array<index_t, 4> state_shape{d.B, d.H, d.P, d.N};
    check.optional_shape("initial_state", in.initial_state, state_shape, "B,H,P,N");
    check.optional_shape("final_state", out.final_state, state_shape, "B,H,P,N");
  });

  st.exchange_seconds = since(t);
  t = clock::now();
  Tensor<float, 2> log_decay({d.B, d.H});
  Tensor<float, 4> local({d.B, d.H, d.P, d.N}), summary({d.B, d.H, d.P, d.N}), initial({d.B, d.H, d.P, d.N});
  ssd_slice(zero, SsdOutputs{out.y, local.view()}, log_decay.view(), options, executor);
  st.slice_seconds = since(t);
  t = clock::now();
  // Rank 0 folds the sequences' initial state into its summary: its true final state.
  Tensor<float, 4> s0({d.B, d.H, d.P, d.N});
  const bool has_s0 = rank == 0 && in.initial_state.has_value();
  if (has_s0) copy(in.initial_state, s0.view());
  compose_diagonal_slices<2, 4>({}, s0.cview(), log_decay.cview(), local.cview(), {}, summary.view());
  exscan_diagonal_slices<2, 4>(comm, log_decay.cview(), summary.cview(), initial.view());
  if (rank == 0) initial = std::move(s0);
  st.exchange_seconds += since(t);
  t = clock::now();
  if (rank != 0 || has_s0) {
    SsdInputs with_initial = zero;
    with_initial.initial_state = initial.cview();
    ssd_slice_correct(with_initial, SsdOutputs{out.y}, options, executor);
  }
  if (out.final_state.has_value()) {
    compose_diagonal_slices<2, 4>({}, initial.cview(), log_decay.cview(), local.cview(), {}, summary.view());
    copy(summary.cview(), out.final_state);
  }
  st.correct_seconds = since(t);
  st.bytes_needed = summary.numel() * 4;
  st.bytes_sent = detail::diagonal_summary_bytes(d.B * d.H, d.P * d.N);
  if (stats) *stats = st;
}

}  // namespace mpi
}  // namespace seqmix
