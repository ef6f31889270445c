// State passing across ranks for every recurrent operator with a slice transition (docs/operators.md,
// context parallelism over MPI), on the pattern of mpi::ssd (state_scan.hpp): every rank runs its
// slice from a zero state at once (<op>_slice), one MPI_Exscan of the slice summaries under a
// non-commutative user reduction gives each rank its true initial state, and each rank adds what
// its tokens read from that state without rerunning the slice.
//
//  - diagonal transitions (selective_scan, linear_attention, gated_linear_attention, rwkv6): the
//    summary is (log-decay, state), exscan_diagonal_slices;
//  - matrix transitions (delta_rule, gated_delta_rule / KDA, rwkv7): the summary is a [K,K]
//    transition and a [K,V] state per (batch row, head), composed by matrix products
//    (exscan_matrix_slices); the correction is one [T,K] x [K,V] GEMM per head
//    (correct_matrix_slice);
//  - causal_conv1d: its state is the last W-1 inputs, so there is nothing to scan: each rank sends
//    its last min(T, W-1) inputs to the ranks whose window reaches them (only the next rank when
//    every slice has at least W-1 tokens), runs its slice from a zero window meanwhile, and
//    recomputes its first min(T, W-1) outputs from the true window.
//
// Every call checks its arguments collectively before any exchange (collective.hpp), so a bad
// call fails with the same ShapeError on every rank and no rank waits for the others.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/gated_delta_rule/slice.hpp"
#include "seqmix/linear_attention/gla/slice.hpp"
#include "seqmix/linear_attention/linear_attention/slice.hpp"
#include "seqmix/linear_attention/rwkv6/slice.hpp"
#include "seqmix/linear_attention/rwkv7/slice.hpp"
#include "seqmix/mpi/collective.hpp"
#include "seqmix/mpi/state_scan.hpp"
#include "seqmix/ssm/causal_conv1d/slice.hpp"
#include "seqmix/ssm/selective_scan/slice.hpp"

namespace seqmix {
namespace mpi {

namespace detail {

using StateClock = std::chrono::steady_clock;

inline double seconds_since(StateClock::time_point t) {
  return std::chrono::duration<double>(StateClock::now() - t).count();
}

// A matrix slice summary as one MPI element: int64 count (B*H), int64 K, int64 V, then float
// transition[count*K*K] and float state[count*K*V].
inline std::int64_t matrix_summary_bytes(index_t count, index_t K, index_t V) {
  return 24 + 4 * count * K * (K + V);
}

// MPI's user reduction: inout = in (earlier ranks) followed by inout (later ranks):
// state = T_b S_a + S_b, transition = T_b T_a.
inline void compose_matrix_summaries(void* in, void* inout, int* count, MPI_Datatype* type) {
  int size = 0;
  MPI_Type_size(*type, &size);
  using Map = Eigen::Map<RowMajorMatrix<float>>;
  RowMajorMatrix<float> product;
  for (int e = 0; e < *count; ++e) {
    char* a = static_cast<char*>(in) + static_cast<std::ptrdiff_t>(e) * size;
    char* b = static_cast<char*>(inout) + static_cast<std::ptrdiff_t>(e) * size;
    std::int64_t header[3] = {};
    std::memcpy(header, b, 24);
    const std::int64_t n = header[0], K = header[1], V = header[2];
    float* ta = reinterpret_cast<float*>(a + 24);
    float* tb = reinterpret_cast<float*>(b + 24);
    float* sa = ta + n * K * K;
    float* sb = tb + n * K * K;
    for (std::int64_t m = 0; m < n; ++m) {
      Map Ta(ta + m * K * K, K, K), Tb(tb + m * K * K, K, K);
      Map Sa(sa + m * K * V, K, V), Sb(sb + m * K * V, K, V);
      product.noalias() = Tb * Sa;
      Sb += product;
      product.noalias() = Tb * Ta;
      Tb = product;
    }
  }
}

// The sequence's initial state on rank 0 (zeros elsewhere, or when none is given).
template <std::size_t R>
Tensor<float, R> rank_initial_state(const ConstView<float, R>& given, const std::array<index_t, R>& shape) {
  Tensor<float, R> s0(shape);
  if (given.has_value()) copy(given, s0.view());
  return s0;
}

// The driver of the diagonal operators once the call is checked: run(local, log_decay) runs the
// slice from zero, correct(initial) adds what the slice's outputs read from its true initial state.
template <std::size_t RD, std::size_t RS, class Run, class Correct>
void pass_diagonal_state(MPI_Comm comm, const std::array<index_t, RS>& state_shape, const ConstView<float, RS>& s0_view,
                         const TensorView<float, RS>& final_state, StatePassStats* stats, StateClock::time_point start,
                         Run&& run, Correct&& correct) {
  const int rank = comm_rank(comm);
  std::array<index_t, RD> decay_shape{};
  for (std::size_t d = 0; d < RD; ++d) decay_shape[d] = state_shape[d];
  StatePassStats st;
  st.exchange_seconds = seconds_since(start);  // the collective check
  auto t = StateClock::now();
  Tensor<float, RD> log_decay(decay_shape);
  Tensor<float, RS> local(state_shape), summary(state_shape), initial(state_shape);
  run(local.view(), log_decay.view());
  st.slice_seconds = seconds_since(t);
  t = StateClock::now();
  const bool has_s0 = rank == 0 && s0_view.has_value();
  Tensor<float, RS> s0 = rank_initial_state<RS>(rank == 0 ? s0_view : ConstView<float, RS>(), state_shape);
  compose_diagonal_slices<RD, RS>({}, s0.cview(), log_decay.cview(), local.cview(), {}, summary.view());
  exscan_diagonal_slices<RD, RS>(comm, log_decay.cview(), summary.cview(), initial.view());
  if (rank == 0) initial = std::move(s0);
  st.exchange_seconds += seconds_since(t);
  t = StateClock::now();
  if (rank != 0 || has_s0) correct(initial.cview());
  if (final_state.has_value()) {
    compose_diagonal_slices<RD, RS>({}, initial.cview(), log_decay.cview(), local.cview(), {}, summary.view());
    copy(summary.cview(), final_state);
  }
  st.correct_seconds = seconds_since(t);
  st.bytes_needed = summary.numel() * 4;
  st.bytes_sent = diagonal_summary_bytes(log_decay.numel(), log_decay.numel() > 0 ? summary.numel() / log_decay.numel() : 0);
  if (stats) *stats = st;
}

// The driver of the matrix operators once the call is checked: run(local, readout, transition)
// runs the slice from zero; o is the rank's outputs, corrected by correct_matrix_slice.
template <class Run>
void pass_matrix_state(MPI_Comm comm, const seqmix::detail::la::Dims& d, const ConstView<float, 4>& s0_view,
                       const TensorView<float, 4>& o, const TensorView<float, 4>& final_state, StatePassStats* stats,
                       StateClock::time_point start, const Executor& executor, Run&& run);

}  // namespace detail

/// The exclusive prefix across ranks of matrix slice summaries (the delta rules, RWKV-7).
/// Collective; every rank passes its slice's transition [B,H,K,K] and `state` [B,H,K,V] (its
/// final state from zero; on rank 0, fold the sequence's initial state in first with
/// compose_matrix_slices). `initial` [B,H,K,V] receives the composition of the summaries of ranks
/// 0..r-1, this rank's true initial state; rank 0's is set to zeros. All views contiguous, the
/// same shapes on every rank (checked collectively before the exchange).
inline void exscan_matrix_slices(MPI_Comm comm, const ConstView<float, 4>& transition, const ConstView<float, 4>& state,
                                 const TensorView<float, 4>& initial) {
  const std::string op = "mpi::exscan_matrix_slices";
  const std::vector<detail::AgreedValue> agreed = {{"state (dimension 0)", state.size(0)},
                                                   {"state (dimension 1)", state.size(1)},
                                                   {"state (dimension 2)", state.size(2)},
                                                   {"state (dimension 3)", state.size(3)}};
  detail::collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    check.shape("state", state, state.shape(), "B,H,K,V");
    const std::array<index_t, 4> t_shape{state.size(0), state.size(1), state.size(2), state.size(2)};
    check.shape("transition", transition, t_shape, "B,H,K,K");
    check.shape("initial", initial, state.shape(), "B,H,K,V");
    check.that(state.is_contiguous() && transition.is_contiguous() && initial.is_contiguous(), "state",
               "transition, state and initial must be contiguous");
    check.no_overlap("initial", initial, "state", state).no_overlap("initial", initial, "transition", transition);
  });
  const index_t n = state.size(0) * state.size(1), K = state.size(2), V = state.size(3);
  const std::int64_t bytes = detail::matrix_summary_bytes(n, K, V);
  if (bytes > (std::int64_t{1} << 31) - 1)
    throw ShapeError(op, "state", "is too large for one MPI element (" + std::to_string(bytes) + " bytes)");
  std::vector<char> mine(static_cast<std::size_t>(bytes)), prefix(static_cast<std::size_t>(bytes));
  const std::int64_t header[3] = {n, K, V};
  std::memcpy(mine.data(), header, 24);
  std::memcpy(mine.data() + 24, transition.data(), static_cast<std::size_t>(n * K * K) * 4);
  std::memcpy(mine.data() + 24 + n * K * K * 4, state.data(), static_cast<std::size_t>(n * K * V) * 4);
  detail::exscan_summaries(comm, mine, prefix, &detail::compose_matrix_summaries);
  if (detail::comm_rank(comm) == 0)
    std::fill(initial.data(), initial.data() + initial.numel(), 0.f);
  else
    std::memcpy(initial.data(), prefix.data() + 24 + n * K * K * 4, static_cast<std::size_t>(n * K * V) * 4);
}

namespace detail {

template <class Run>
void pass_matrix_state(MPI_Comm comm, const seqmix::detail::la::Dims& d, const ConstView<float, 4>& s0_view,
                       const TensorView<float, 4>& o, const TensorView<float, 4>& final_state, StatePassStats* stats,
                       StateClock::time_point start, const Executor& executor, Run&& run) {
  const int rank = comm_rank(comm);
  const std::array<index_t, 4> state_shape{d.B, d.HV, d.K, d.V}, t_shape{d.B, d.HV, d.K, d.K};
  StatePassStats st;
  st.exchange_seconds = seconds_since(start);
  auto t = StateClock::now();
  Tensor<float, 4> local(state_shape), summary(state_shape), initial(state_shape), transition(t_shape);
  Tensor<float, 4> readout({d.B, d.T, d.HV, d.K});
  run(local.view(), readout.view(), transition.view());
  st.slice_seconds = seconds_since(t);
  t = StateClock::now();
  const bool has_s0 = rank == 0 && s0_view.has_value();
  Tensor<float, 4> s0 = rank_initial_state<4>(rank == 0 ? s0_view : ConstView<float, 4>(), state_shape);
  compose_matrix_slices({}, s0.cview(), transition.cview(), local.cview(), {}, summary.view());
  exscan_matrix_slices(comm, transition.cview(), summary.cview(), initial.view());
  if (rank == 0) initial = std::move(s0);
  st.exchange_seconds += seconds_since(t);
  t = StateClock::now();
  if (rank != 0 || has_s0) correct_matrix_slice(readout.cview(), transition.cview(), initial.cview(), o, {}, executor);
  if (final_state.has_value()) {
    compose_matrix_slices({}, initial.cview(), transition.cview(), local.cview(), {}, summary.view());
    copy(summary.cview(), final_state);
  }
  st.correct_seconds = seconds_since(t);
  st.bytes_needed = summary.numel() * 4;
  st.bytes_sent = matrix_summary_bytes(d.B * d.HV, d.K, d.V);
  if (stats) *stats = st;
}

// The checks every mpi:: recurrent operator adds to the operator's own: rank 0 alone may pass the
// sequences' initial state, every rank needs a token, a dense batch in forward order, no
// token_states, and the final state (optional) shaped as the state.
template <std::size_t R>
void check_state_pass(const ArgCheck& check, int rank, index_t T, const SequenceBatch& batch, bool reverse,
                      bool token_states, const ConstView<float, R>& initial, const TensorView<float, R>& final_state,
                      const std::array<index_t, R>& state_shape, const char* layout) {
  if (rank != 0 && initial.has_value())
    check.fail("initial_state", "is rank 0's only (the sequences' initial state); rank " + std::to_string(rank) +
                                    " must pass none");
  check.that(T >= 1, "tokens", "this rank has no tokens; every rank needs at least one");
  seqmix::detail::check_context_parallel_call(check, batch, reverse, token_states);
  check.optional_shape("initial_state", initial, state_shape, layout);
  check.optional_shape("final_state", final_state, state_shape, layout);
}

// The collective check every recurrent wrapper makes before any exchange: `validate(check)` runs
// the operator's own validation (and the wrapper's refusals) and returns the slice's token count
// and state shape, which check_state_pass then judges; every rank throws if any rank's call fails.
// Returns the state shape.
template <std::size_t R, class In, class Out, class Validate>
std::array<index_t, R> check_sliced_call(MPI_Comm comm, const std::string& op, const std::vector<AgreedValue>& agreed,
                                         const In& in, const Out& out, bool reverse, const char* layout,
                                         Validate&& validate) {
  const int rank = comm_rank(comm);
  std::array<index_t, R> state_shape{};
  collective_check(comm, op, agreed, [&] {
    const ArgCheck check(op);
    const std::pair<index_t, std::array<index_t, R>> slice = validate(check);
    state_shape = slice.second;
    check_state_pass<R>(check, rank, slice.first, in.batch, reverse, out.token_states.has_value(), in.initial_state,
                        out.final_state, state_shape, layout);
  });
  return state_shape;
}

// The inputs of a slice with its true initial state, for the correction pass.
template <class In, std::size_t R>
In with_initial_state(In slice, const ConstView<float, R>& initial) {
  slice.initial_state = initial;
  return slice;
}

}  // namespace detail

/// selective_scan (Mamba-1) over sequences sliced contiguously by position across the ranks of
/// `comm`; equals one seqmix::selective_scan call over the whole sequences to rounding.
/// Collective. Rank r passes its slice's inputs and outputs ([B, T_r, ...], T_r >= 1, any
/// lengths); rank 0's in.initial_state [B,D,N] (optional) is the sequences' initial state, the
/// other ranks pass none; out.final_state (optional) receives the true state after this rank's
/// slice. Dense batch, forward order, no token_states. Bad calls and ranks disagreeing on shapes
/// or options throw ShapeError on every rank before any exchange.
inline void selective_scan(MPI_Comm comm, const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                           const SelectiveScanOptions& options = {}, const Executor& executor = serial_executor(),
                           StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::selective_scan";
  SelectiveScanInputs zero = in;
  zero.initial_state = {};
  seqmix::detail::ScanDims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"u (batch, dimension 0)", in.u.size(0)},   {"u (channels, dimension 2)", in.u.size(2)},
      {"A (state size, dimension 1)", in.A.size(1)}, {"Bm (groups, dimension 2)", in.Bm.size(2)},
      {"options.delta_softplus", options.delta_softplus}, {"z (given or not)", in.z.has_value()},
      {"Dskip (given or not)", in.Dskip.has_value()}, {"delta_bias (given or not)", in.delta_bias.has_value()}};
  const auto state_shape =
      detail::check_sliced_call<3>(comm, op, agreed, in, out, options.reverse, "B,D,N", [&](const ArgCheck&) {
        d = seqmix::detail::validate_selective_scan(op.c_str(), zero, SelectiveScanOutputs{out.y}).dims;
        return std::pair{d.T, std::array<index_t, 3>{d.B, d.D, d.N}};
      });
  detail::pass_diagonal_state<3, 3>(
      comm, state_shape, in.initial_state, out.final_state, stats, start,
      [&](const TensorView<float, 3>& local, const TensorView<float, 3>& decay) {
        selective_scan_slice(zero, {out.y, local}, decay, options, executor);
      },
      [&](const ConstView<float, 3>& initial) {
        selective_scan_slice_correct(detail::with_initial_state(zero, initial), {out.y}, options, executor);
      });
}

/// linear_attention over sequences sliced contiguously by position across the ranks of `comm`
/// (its transition is the identity, so the exchange is a prefix sum of the slices' states);
/// GQA (HV a multiple of H) as in the operator. State [B,HV,Kf,V]; no normalize, no prefix_len.
/// Otherwise as mpi::selective_scan.
inline void linear_attention(MPI_Comm comm, const LinearAttentionInputs& in, const LinearAttentionOutputs& out,
                             const LinearAttentionOptions& options = {}, const Executor& executor = serial_executor(),
                             StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::linear_attention";
  LinearAttentionInputs zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"q (batch, dimension 0)", in.q.size(0)}, {"q (heads, dimension 2)", in.q.size(2)},
      {"q (key size, dimension 3)", in.q.size(3)}, {"v (value heads, dimension 2)", in.v.size(2)},
      {"v (value size, dimension 3)", in.v.size(3)}, {"options.feature_map", static_cast<int>(options.feature_map)}};
  const auto state_shape =
      detail::check_sliced_call<4>(comm, op, agreed, in, out, options.reverse, "B,HV,Kf,V", [&](const ArgCheck& check) {
        d = seqmix::detail::la::validate_linear_attention(op.c_str(), zero, LinearAttentionOutputs{out.o}, options).d;
        if (options.normalize) check.fail("options.normalize", "is not supported by mpi::linear_attention");
        if (options.prefix_len != 0) check.fail("options.prefix_len", "must be 0 for mpi::linear_attention");
        if (in.initial_normalizer.has_value() || out.final_normalizer.has_value() || out.token_normalizers.has_value())
          check.fail("initial_normalizer", "normalizers are not supported by mpi::linear_attention (leave them empty)");
        return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.Kf, d.V}};
      });
  detail::pass_diagonal_state<3, 4>(
      comm, state_shape, in.initial_state, out.final_state, stats, start,
      [&](const TensorView<float, 4>& local, const TensorView<float, 3>& decay) {
        linear_attention_slice(zero, {out.o, local}, options, executor);
        std::fill(decay.data(), decay.data() + decay.numel(), 0.f);  // the identity transition
      },
      [&](const ConstView<float, 4>& initial) {
        linear_attention_slice_correct(detail::with_initial_state(zero, initial), {out.o}, options, executor);
      });
}

/// gated_linear_attention (GLA; scalar, channel or no gate) over sequences sliced contiguously by
/// position across the ranks of `comm`; GQA as in the operator; state [B,HV,K,V]. Otherwise as
/// mpi::selective_scan.
template <class T>
void gated_linear_attention(MPI_Comm comm, const GatedLinearAttentionInputsOf<T>& in,
                                   const GatedLinearAttentionOutputs& out,
                                   const GatedLinearAttentionOptions& options = {},
                                   const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::gated_linear_attention";
  GatedLinearAttentionInputsOf<T> zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"q (batch, dimension 0)", in.q.size(0)}, {"q (heads, dimension 2)", in.q.size(2)},
      {"q (key size, dimension 3)", in.q.size(3)}, {"v (value heads, dimension 2)", in.v.size(2)},
      {"v (value size, dimension 3)", in.v.size(3)}, {"options.gate", static_cast<int>(options.gate)}};
  const auto state_shape =
      detail::check_sliced_call<4>(comm, op, agreed, in, out, options.reverse, "B,HV,K,V", [&](const ArgCheck&) {
        d = seqmix::detail::la::validate_gla(op.c_str(), zero, GatedLinearAttentionOutputs{out.o}, options, executor).d;
        return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}};
      });
  detail::pass_diagonal_state<3, 4>(
      comm, state_shape, in.initial_state, out.final_state, stats, start,
      [&](const TensorView<float, 4>& local, const TensorView<float, 3>& decay) {
        gated_linear_attention_slice(zero, {out.o, local}, decay, options, executor);
      },
      [&](const ConstView<float, 4>& initial) {
        gated_linear_attention_slice_correct(detail::with_initial_state(zero, initial), {out.o}, options, executor);
      });
}

/// rwkv6 over sequences sliced contiguously by position across the ranks of `comm`; state
/// [B,HV,K,V]. Otherwise as mpi::selective_scan.
template <class T>
void rwkv6(MPI_Comm comm, const Rwkv6InputsOf<T>& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                  const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::rwkv6";
  Rwkv6InputsOf<T> zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"r (batch, dimension 0)", in.r.size(0)}, {"r (heads, dimension 2)", in.r.size(2)},
      {"r (key size, dimension 3)", in.r.size(3)}, {"v (value heads, dimension 2)", in.v.size(2)},
      {"v (value size, dimension 3)", in.v.size(3)}, {"g (gate heads, dimension 2)", in.g.size(2)}};
  const auto state_shape =
      detail::check_sliced_call<4>(comm, op, agreed, in, out, options.reverse, "B,HV,K,V", [&](const ArgCheck&) {
        d = seqmix::detail::la::validate_rwkv6(op.c_str(), zero, Rwkv6Outputs{out.o}, options, executor).d;
        return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}};
      });
  detail::pass_diagonal_state<3, 4>(
      comm, state_shape, in.initial_state, out.final_state, stats, start,
      [&](const TensorView<float, 4>& local, const TensorView<float, 3>& decay) {
        rwkv6_slice(zero, {out.o, local}, decay, options, executor);
      },
      [&](const ConstView<float, 4>& initial) {
        rwkv6_slice_correct(detail::with_initial_state(zero, initial), {out.o}, options, executor);
      });
}

/// gated_delta_rule (Gated DeltaNet with DeltaGate::scalar, KDA with DeltaGate::channel) over
/// sequences sliced contiguously by position across the ranks of `comm`; GQA as in the
/// operator; state [B,HV,K,V]. Each rank's slice also runs the identity run of
/// gated_delta_rule_slice (about a second prefill with V = K); the summaries (a [K,K] transition
/// and a [K,V] state per head) compose by matrix products in one MPI_Exscan. Otherwise as
/// mpi::selective_scan.
template <class T>
void gated_delta_rule(MPI_Comm comm, const GatedDeltaRuleInputsOf<T>& in, const GatedDeltaRuleOutputs& out,
                             const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor(),
                             StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::gated_delta_rule";
  GatedDeltaRuleInputsOf<T> zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"q (batch, dimension 0)", in.q.size(0)}, {"q (heads, dimension 2)", in.q.size(2)},
      {"q (key size, dimension 3)", in.q.size(3)}, {"v (value heads, dimension 2)", in.v.size(2)},
      {"v (value size, dimension 3)", in.v.size(3)}, {"options.gate", static_cast<int>(options.gate)},
      {"options.qk_norm", static_cast<int>(options.qk_norm)}};
  detail::check_sliced_call<4>(comm, op, agreed, in, out, options.reverse, "B,HV,K,V", [&](const ArgCheck& check) {
    d = delta_update::validate_delta(check, delta_update::gated_call(zero, GatedDeltaRuleOutputs{out.o}, options),
                                     executor)
            .d;
    return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}};
  });
  detail::pass_matrix_state(comm, d, in.initial_state, out.o, out.final_state, stats, start, executor,
                            [&](const TensorView<float, 4>& local, const TensorView<float, 4>& readout,
                                const TensorView<float, 4>& transition) {
                              gated_delta_rule_slice(zero, {out.o, local}, readout, transition, options, executor);
                            });
}

/// delta_rule (DeltaNet) over sequences sliced contiguously by position across the ranks of
/// `comm`; as mpi::gated_delta_rule without decay.
template <class T>
void delta_rule(MPI_Comm comm, const DeltaRuleInputsOf<T>& in, const DeltaRuleOutputs& out,
                       const DeltaRuleOptions& options = {}, const Executor& executor = serial_executor(),
                       StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::delta_rule";
  DeltaRuleInputsOf<T> zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"q (batch, dimension 0)", in.q.size(0)}, {"q (heads, dimension 2)", in.q.size(2)},
      {"q (key size, dimension 3)", in.q.size(3)}, {"v (value heads, dimension 2)", in.v.size(2)},
      {"v (value size, dimension 3)", in.v.size(3)}, {"options.qk_norm", static_cast<int>(options.qk_norm)}};
  detail::check_sliced_call<4>(comm, op, agreed, in, out, options.reverse, "B,HV,K,V", [&](const ArgCheck& check) {
    d = delta_update::validate_delta(check, delta_update::ungated_call(zero, DeltaRuleOutputs{out.o}, options),
                                     executor)
            .d;
    return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}};
  });
  detail::pass_matrix_state(comm, d, in.initial_state, out.o, out.final_state, stats, start, executor,
                            [&](const TensorView<float, 4>& local, const TensorView<float, 4>& readout,
                                const TensorView<float, 4>& transition) {
                              delta_rule_slice(zero, {out.o, local}, readout, transition, options, executor);
                            });
}

/// rwkv7 over sequences sliced contiguously by position across the ranks of `comm`; its
/// transition diag(w_t) + b_t a_t^T is a matrix, so it passes state as mpi::gated_delta_rule
/// does. State [B,H,K,V]. Otherwise as mpi::selective_scan.
template <class T>
void rwkv7(MPI_Comm comm, const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out,
                  const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::rwkv7";
  Rwkv7InputsOf<T> zero = in;
  zero.initial_state = {};
  seqmix::detail::la::Dims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"r (batch, dimension 0)", in.r.size(0)}, {"r (heads, dimension 2)", in.r.size(2)},
      {"r (key size, dimension 3)", in.r.size(3)}, {"v (value size, dimension 3)", in.v.size(3)}};
  detail::check_sliced_call<4>(comm, op, agreed, in, out, false, "B,H,K,V", [&](const ArgCheck& check) {
    d = delta_update::validate_rwkv7(check, zero, Rwkv7Outputs{out.o}, executor).d;
    return std::pair{d.T, std::array<index_t, 4>{d.B, d.HV, d.K, d.V}};
  });
  detail::pass_matrix_state(comm, d, in.initial_state, out.o, out.final_state, stats, start, executor,
                            [&](const TensorView<float, 4>& local, const TensorView<float, 4>& readout,
                                const TensorView<float, 4>& transition) {
                              rwkv7_slice(zero, {out.o, local}, readout, transition, executor);
                            });
}

// The fp32 forms (the overloads braced argument lists pick); the templates above take q/k/v
// (r/k/v, rwkv7's a/b) stored as float, seqmix::bf16 or seqmix::f16, their slices run on views of
// the 16-bit tensors.

/// mpi::gated_linear_attention on fp32 inputs (GatedLinearAttentionInputs).
inline void gated_linear_attention(MPI_Comm comm, const GatedLinearAttentionInputs& in,
                                   const GatedLinearAttentionOutputs& out,
                                   const GatedLinearAttentionOptions& options = {},
                                   const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  gated_linear_attention<float>(comm, in, out, options, executor, stats);
}

/// mpi::rwkv6 on fp32 inputs (Rwkv6Inputs).
inline void rwkv6(MPI_Comm comm, const Rwkv6Inputs& in, const Rwkv6Outputs& out, const Rwkv6Options& options = {},
                  const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  rwkv6<float>(comm, in, out, options, executor, stats);
}

/// mpi::gated_delta_rule on fp32 inputs (GatedDeltaRuleInputs).
inline void gated_delta_rule(MPI_Comm comm, const GatedDeltaRuleInputs& in, const GatedDeltaRuleOutputs& out,
                             const GatedDeltaRuleOptions& options = {}, const Executor& executor = serial_executor(),
                             StatePassStats* stats = nullptr) {
  gated_delta_rule<float>(comm, in, out, options, executor, stats);
}

/// mpi::delta_rule on fp32 inputs (DeltaRuleInputs).
inline void delta_rule(MPI_Comm comm, const DeltaRuleInputs& in, const DeltaRuleOutputs& out,
                       const DeltaRuleOptions& options = {}, const Executor& executor = serial_executor(),
                       StatePassStats* stats = nullptr) {
  delta_rule<float>(comm, in, out, options, executor, stats);
}

/// mpi::rwkv7 on fp32 inputs (Rwkv7Inputs).
inline void rwkv7(MPI_Comm comm, const Rwkv7Inputs& in, const Rwkv7Outputs& out,
                  const Executor& executor = serial_executor(), StatePassStats* stats = nullptr) {
  rwkv7<float>(comm, in, out, executor, stats);
}

/// causal_conv1d over sequences sliced contiguously by position across the ranks of `comm`;
/// equals one seqmix::causal_conv1d call over the whole sequences. Collective. Its state is the
/// last W-1 inputs, so no scan: each rank sends its last min(T_r, W-1) inputs (rank 0: its true
/// final window) straight to the later ranks whose window reaches them (the next rank only, when
/// every slice has at least W-1 tokens), runs its slice from a zero window while they travel, and
/// recomputes its first min(T_r, W-1) outputs from the true window (causal_conv1d_slice_correct).
/// Rank 0's in.initial_state [B,W-1,D] (optional) is the sequences' window before the first
/// token; out.final_state (optional) receives the true window after this rank's slice. T_r >= 1
/// on every rank; dense batch, forward order, no token_states, options.dilation 1 and
/// options.lookahead 0; refusals on every rank before any exchange.
inline void causal_conv1d(MPI_Comm comm, const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                          const CausalConv1dOptions& options = {}, const Executor& executor = serial_executor(),
                          StatePassStats* stats = nullptr) {
  const auto start = detail::StateClock::now();
  const std::string op = "mpi::causal_conv1d";
  const int rank = detail::comm_rank(comm), ranks = detail::comm_size(comm);
  CausalConv1dInputs zero = in;
  zero.initial_state = {};
  seqmix::detail::Conv1dDims d{};
  const std::vector<detail::AgreedValue> agreed = {
      {"x (batch, dimension 0)", in.x.size(0)}, {"x (channels, dimension 2)", in.x.size(2)},
      {"weight (taps, dimension 1)", in.weight.size(1)}, {"options.activation", static_cast<int>(options.activation)},
      {"bias (given or not)", in.bias.has_value()}};
  detail::check_sliced_call<3>(comm, op, agreed, in, out, options.reverse, "B,W-1,D", [&](const ArgCheck& check) {
    d = seqmix::detail::validate_causal_conv1d(op.c_str(), zero, CausalConv1dOutputs{out.y}, options).dims;
    if (options.dilation != 1) check.fail("options.dilation", "must be 1 across ranks (not implemented)");
    if (options.lookahead != 0) check.fail("options.lookahead", "must be 0 across ranks (an output would read the next rank's tokens)");
    return std::pair{d.T, std::array<index_t, 3>{d.B, d.W - 1, d.D}};
  });
  StatePassStats st;
  st.exchange_seconds = detail::seconds_since(start);
  const index_t H = d.W - 1;  // halo rows
  st.bytes_needed = d.B * H * d.D * 4;
  if (H == 0) {  // no window: every slice is independent
    auto t = detail::StateClock::now();
    seqmix::causal_conv1d(zero, {out.y, out.final_state}, options, executor);
    st.slice_seconds = detail::seconds_since(t);
    if (stats) *stats = st;
    return;
  }
  // Every rank's token count, then who reads whose rows: rank r's window takes the last
  // min(T_j, H) inputs of ranks j = r-1, r-2, ... until H rows are covered, or rank 0's window.
  auto t = detail::StateClock::now();
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(ranks));
  const std::int64_t my_tokens = d.T;
  MPI_Allgather(&my_tokens, 1, MPI_INT64_T, tokens.data(), 1, MPI_INT64_T, comm);
  const auto sources = [&](int r) {  // oldest first
    std::vector<int> from;
    index_t covered = 0;
    for (int j = r - 1; j >= 0 && covered < H; --j) {
      from.insert(from.begin(), j);
      covered += j == 0 ? H : tokens[static_cast<std::size_t>(j)];
    }
    return from;
  };
  const auto rows_of = [&](int j) { return j == 0 ? H : std::min<index_t>(tokens[static_cast<std::size_t>(j)], H); };
  constexpr int kTag = 7031;
  std::vector<MPI_Request> requests;
  // What this rank sends: rank 0 its true final window (after its own run), the others their
  // last rows at once.
  const index_t my_rows = rows_of(rank);
  std::vector<float> outgoing(static_cast<std::size_t>(d.B * my_rows * d.D));
  std::vector<int> readers;
  for (int r = rank + 1; r < ranks; ++r) {
    const std::vector<int> from = sources(r);
    if (std::find(from.begin(), from.end(), rank) != from.end()) readers.push_back(r);
  }
  const auto send_rows = [&] {
    for (const int r : readers) {
      detail::isend_bytes(outgoing.data(), static_cast<std::int64_t>(outgoing.size()) * 4, r, kTag, comm, requests);
      st.bytes_sent += static_cast<std::int64_t>(outgoing.size()) * 4;
    }
  };
  // Incoming rows, one buffer per source, posted before any work.
  const std::vector<int> from = rank > 0 ? sources(rank) : std::vector<int>{};
  std::vector<std::vector<float>> incoming;
  for (const int j : from) {
    incoming.emplace_back(static_cast<std::size_t>(d.B * rows_of(j) * d.D));
    detail::irecv_bytes(incoming.back().data(), static_cast<std::int64_t>(incoming.back().size()) * 4, j, kTag, comm,
                        requests);
  }
  st.exchange_seconds += detail::seconds_since(t);
  Tensor<float, 3> local({d.B, H, d.D});
  if (rank == 0) {
    t = detail::StateClock::now();
    CausalConv1dInputs first = zero;
    first.initial_state = in.initial_state;
    seqmix::causal_conv1d(first, {out.y, local.view()}, options, executor);
    std::copy(local.data(), local.data() + local.numel(), outgoing.begin());
    st.slice_seconds = detail::seconds_since(t);
    send_rows();
    t = detail::StateClock::now();
    detail::wait_all(requests);
    st.exchange_seconds += detail::seconds_since(t);
    if (out.final_state.has_value()) copy(local.cview(), out.final_state);
    if (stats) *stats = st;
    return;
  }
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < my_rows; ++i)
      for (index_t c = 0; c < d.D; ++c)
        outgoing[static_cast<std::size_t>((b * my_rows + i) * d.D + c)] = in.x(b, d.T - my_rows + i, c);
  send_rows();
  t = detail::StateClock::now();
  causal_conv1d_slice(zero, {out.y, local.view()}, options, executor);
  st.slice_seconds = detail::seconds_since(t);
  t = detail::StateClock::now();
  detail::wait_all(requests);
  st.exchange_seconds += detail::seconds_since(t);
  t = detail::StateClock::now();
  // The true window: the sources' rows oldest first, of which the last H.
  index_t rows = 0;
  for (const int j : from) rows += rows_of(j);
  Tensor<float, 3> window({d.B, H, d.D});
  index_t row = 0;
  for (std::size_t s = 0; s < from.size(); ++s) {
    const index_t n = rows_of(from[s]);
    for (index_t i = 0; i < n; ++i, ++row) {
      const index_t dst = row - (rows - H);
      if (dst < 0) continue;
      for (index_t b = 0; b < d.B; ++b)
        for (index_t c = 0; c < d.D; ++c)
          window(b, dst, c) = incoming[s][static_cast<std::size_t>((b * n + i) * d.D + c)];
    }
  }
  CausalConv1dInputs with_window = zero;
  with_window.initial_state = window.cview();
  causal_conv1d_slice_correct(with_window, {out.y, local.view()}, options, executor);
  if (out.final_state.has_value()) copy(local.cview(), out.final_state);
  st.correct_seconds = detail::seconds_since(t);
  if (stats) *stats = st;
}

}  // namespace mpi
}  // namespace seqmix
