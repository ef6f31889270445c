// Elementwise nonlinear recurrence h_t = f(h_{t-1}, x_t) and its parallel Newton solution (DEER,
// Lim et al. 2024; ELK, Gonzalez et al. 2024). See README.md for the derivation.
//
// This header holds the argument structs, options, the report, validation, and the readable
// definitions:
//   reference::nonlinear_recurrence          the sequential loop (the definition of h)
//   reference::nonlinear_recurrence_newton   the Newton iteration in plain loops
// Fast forms: fast.hpp (vectorized sequential loop, chunked parallel Newton); decode: step.hpp.
//
// Newton iteration i -> i+1 (h^(i)_{-1} = h0 for every i):
//   J_t = df/dh (h^(i)_{t-1}, x_t)
//   h^(i+1)_t = J_t h^(i+1)_{t-1} + (f(h^(i)_{t-1}, x_t) - J_t h^(i)_{t-1})   (a linear recurrence)
// until max |h^(i+1) - h^(i)| <= tol. The fixed point is the sequential solution whatever J is
// (h = J h + f - J h = f), so J only decides how fast it is reached: clamping it (ELK-style
// damping) cannot change the answer. Exactness also spreads one step per iteration (h^(i)_t is
// exact for t < i), so T iterations always suffice in exact arithmetic.
//
// Serving (inputs.batch, core/batch.hpp): packed streams [1,total_T,D] with cu_seqlens, h0 and
// h_last as rows of a pool [S,D] through state_indices (-1: padding, nothing read or written),
// has_initial_state (false: h0 = 0). Each sequence is solved on its own (chunked/serving.hpp), so
// a packed call equals per-sequence calls bit for bit; the Newton report merges theirs. h itself
// is the state after every token, so a speculative verify needs no token_states: restoring
// h[t] into the slot rolls the sequence back to token t.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/chunked/newton/cells.hpp"
#include "seqmix/chunked/serving.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Arguments of nonlinear_recurrence and nonlinear_recurrence_newton for a cell type (cells.hpp):
/// the cell's per-token input streams, its per-channel parameters and the initial state.
template <class Cell>
struct NonlinearRecurrenceInputs {
  std::array<ConstView<float, 3>, Cell::kInputs> inputs;  ///< each [B,T,D], named by Cell::kInputNames
  std::array<ConstView<float, 1>, Cell::kParams> params;  ///< each [D], named by Cell::kParamNames
  ConstView<float, 2> h0;  ///< [B,D] ([N or S,D] with a batch); empty = zeros
  SequenceBatch batch = {}; ///< optional: cu_seqlens, state_indices, has_initial_state (core/batch.hpp)
};

/// Outputs of nonlinear_recurrence and nonlinear_recurrence_newton.
struct NonlinearRecurrenceOutputs {
  TensorView<float, 3> h;       ///< [B,T,D] every state; must not overlap the inputs
  TensorView<float, 2> h_last = {}; ///< [B,D] ([N or S,D] with a batch) optional: the last state (h0 when
                                ///< T = 0); may be the same view as h0 (a slot pool updated in place)
};

/// Where the threads of the Newton solver split the work.
enum class NewtonSplit {
  /// channels when every thread gets at least detail::newton::kMinChannelsPerTask channels, time otherwise.
  automatic,
  /// Each task owns (batch row, channel block) for all T and iterates on its own: one fused pass
  /// per iteration (f, J and the scan together), no synchronisation between iterations.
  channels,
  /// Each iteration is a chunked scan over time: (1) every chunk evaluates f and J and scans
  /// locally from zero, keeping the running product of J, (2) chunk carries, (3) fix-up
  /// h += P * carry, split over all threads. For few channels, where the sequential loop is
  /// latency-bound (see README.md).
  time,
};

/// What the outputs hold when Newton does not converge.
enum class NewtonFallback {
  /// h (and h_last) are filled with NaN, so an unchecked result cannot pass as valid. Except when
  /// the solve turned non-finite because an input (stream, parameter, h0) holds NaN or inf: h is
  /// then the sequential loop's result, non-finite from that token on (report.used_fallback).
  poison,
  sequential,  ///< h holds the sequential loop's result (report.used_fallback = true)
};

/// Options of nonlinear_recurrence_newton (docs/operators.md section 8; README.md in this folder).
struct NonlinearRecurrenceNewtonOptions {
  float tol = 1e-6f;            ///< stop when max |h^(i+1) - h^(i)| <= tol
  index_t max_iterations = 64;  ///< Newton updates at most
  /// ELK-style damping: clamp J_t to [-jacobian_clamp, jacobian_clamp] (0 = off). Keeps the scan's
  /// running products bounded for expansive cells; the fixed point is unchanged.
  float jacobian_clamp = 0.f;
  /// Start from the content of outputs.h instead of zeros (e.g. the previous solve's result).
  bool warm_start = false;
  /// How threads split the work (automatic by default).
  NewtonSplit split = NewtonSplit::automatic;
  /// Time chunks per iteration for NewtonSplit::time; 0 = one per thread.
  index_t chunks = 0;
  /// What the outputs hold when Newton does not converge: NaN by default (poison).
  NewtonFallback fallback = NewtonFallback::poison;
  /// Run from the last token to the first (core/direction.hpp): h_t = f(h_{t+1}, x_t) with the
  /// same cell, h[t] the state after tokens T-1..t, h0 the state before token T-1, h_last the
  /// state after token 0. A warm start's guess stays in token order. No copy: the views are
  /// reversed. Packed batches are refused (ShapeError); state slots work.
  bool reverse = false;
};

/// Options of the sequential nonlinear_recurrence.
struct NonlinearRecurrenceOptions {
  /// Run from the last token to the first, exactly as NonlinearRecurrenceNewtonOptions::reverse.
  bool reverse = false;
};

/// How a Newton solve ended (NewtonReport::status).
enum class NewtonStatus {
  converged,        ///< max update <= tol
  iteration_limit,  ///< max_iterations updates done, update still > tol
  non_finite,       ///< NaN or inf appeared in f, J or the iterate
};

/// What nonlinear_recurrence_newton returns: how the solve ended and how good its result is.
struct NewtonReport {
  /// How the solve ended.
  NewtonStatus status = NewtonStatus::converged;
  /// status == NewtonStatus::converged.
  bool converged = false;
  index_t iterations = 0;  ///< Newton updates performed (largest over channel-split tasks)
  float max_update = 0.f;  ///< max |h^(i+1) - h^(i)| of the last update
  /// max_t |h_t - f(h_{t-1}, x_t)| of what the outputs hold (NaN when poisoned)
  float residual = 0.f;
  bool used_fallback = false;  ///< outputs hold the sequential loop's result
  std::string message;         ///< empty when converged; says what went wrong otherwise
};

namespace detail::newton {

struct Dims {
  index_t B, T, D;
};

// Checks a call; `seqs` (optional) receives the map from sequences to tokens and state rows.
template <class Cell>
Dims validate(const char* op, const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
              SequenceMap* seqs = nullptr) {
  const ArgCheck check(op);
  check.shape(Cell::kInputNames[0], in.inputs[0], std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  const index_t B = in.inputs[0].size(0), T = in.inputs[0].size(1), D = in.inputs[0].size(2);
  for (int s = 1; s < Cell::kInputs; ++s)
    check.shape(Cell::kInputNames[s], in.inputs[s], std::array<index_t, 3>{B, T, D}, "B,T,D");
  for (int p = 0; p < Cell::kParams; ++p) check.shape(Cell::kParamNames[p], in.params[p], std::array<index_t, 1>{D}, "D");
  // States have one row per batch row, or (packed or slotted) one per sequence or pool slot.
  const bool serving = in.batch.packed() || in.batch.slotted();
  check.optional_shape("h0", in.h0, std::array<index_t, 2>{serving ? -1 : B, D}, serving ? "S,D" : "B,D");
  check.shape("h", out.h, std::array<index_t, 3>{B, T, D}, "B,T,D");
  const index_t rows = in.h0.has_value() ? in.h0.size(0) : serving ? -1 : B;
  check.optional_shape("h_last", out.h_last, std::array<index_t, 2>{rows, D}, serving ? "S,D" : "B,D");
  // -1: no state given (h0 = 0, no h_last), which any batch accepts.
  const SequenceMap map = SequenceMap::make(check, in.batch, B, T, in.h0.has_value(),
                                            in.h0.has_value() ? rows : out.h_last.has_value() ? out.h_last.size(0) : -1);
  for (int s = 0; s < Cell::kInputs; ++s) check.no_overlap("h", out.h, Cell::kInputNames[s], in.inputs[s]);
  for (int p = 0; p < Cell::kParams; ++p) check.no_overlap("h", out.h, Cell::kParamNames[p], in.params[p]);
  check.no_overlap("h", out.h, "h0", in.h0).no_overlap("h", out.h, "h_last", out.h_last);
  if (seqs) *seqs = map;
  return {B, T, D};
}

// The token-indexed arguments of a reverse call (the streams and h) as reversed views; the
// parameters and the states h0 / h_last are not token-indexed and stay as they are.
template <class Cell>
NonlinearRecurrenceInputs<Cell> reversed_inputs(const char* op, const NonlinearRecurrenceInputs<Cell>& in) {
  detail::check_reversible(op, in.batch, true);
  NonlinearRecurrenceInputs<Cell> r = in;
  for (auto& stream : r.inputs) stream = reversed_time_view(stream);
  return r;
}
inline NonlinearRecurrenceOutputs reversed_outputs(const NonlinearRecurrenceOutputs& out) {
  return {reversed_time_view(out.h), out.h_last};
}

// Solves each sequence of a packed or slotted call on its own: solve(inputs, outputs) gets the
// dense B = 1 problem of one sequence (its tokens, its state row or none).
template <class Cell, class Solve>
void solve_per_sequence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                        const SequenceMap& seqs, Solve&& solve) {
  using namespace detail::serving;
  for_each_sequence(seqs, [&](const SequenceSpan& s) {
    NonlinearRecurrenceInputs<Cell> one;
    for (int i = 0; i < Cell::kInputs; ++i) one.inputs[i] = sequence_tokens(in.inputs[i], s);
    one.params = in.params;
    one.h0 = initial_row(in.h0, s);
    solve(one, NonlinearRecurrenceOutputs{sequence_tokens(out.h, s), state_row(out.h_last, s)}, s);
  });
}

inline void validate_options(const char* op, const NonlinearRecurrenceNewtonOptions& o) {
  const ArgCheck check(op);
  check.finite(o.tol, "options.tol").that(o.tol >= 0.f, "options.tol", "must be >= 0, got " + std::to_string(o.tol));
  check.that(o.max_iterations >= 0, "options.max_iterations", "must be >= 0, got " + std::to_string(o.max_iterations));
  check.finite(o.jacobian_clamp, "options.jacobian_clamp")
      .that(o.jacobian_clamp >= 0.f, "options.jacobian_clamp", "must be >= 0 (0 = off)");
  check.that(o.chunks >= 0, "options.chunks", "must be >= 0 (0 = one per thread)");
}

inline float h0_value(const ConstView<float, 2>& h0, index_t b, index_t d) { return h0.has_value() ? h0(b, d) : 0.f; }

inline float clamp_jacobian(float J, float clamp) { return clamp > 0.f ? std::clamp(J, -clamp, clamp) : J; }

inline bool is_finite(float x) { return std::abs(x) <= std::numeric_limits<float>::max(); }

inline std::string failure_message(NewtonStatus status, index_t iterations, float max_update, float tol) {
  if (status == NewtonStatus::non_finite)
    return "Newton iterate became non-finite (NaN or inf) after " + std::to_string(iterations) +
           " iterations; try options.jacobian_clamp or the sequential fallback";
  return "Newton did not converge in " + std::to_string(iterations) + " iterations: last max update " +
         std::to_string(max_update) + " > tol " + std::to_string(tol);
}

// Whether an input stream, a parameter or h0 holds a NaN or inf. A Newton solve that turned
// non-finite on such an input cannot converge (a NaN never settles), yet the definition is
// well defined: the sequential loop's h, non-finite from the token that holds the value on
// (docs/reliability.md). The solvers then return that instead of poisoning every token.
template <class Cell>
bool has_non_finite_input(const NonlinearRecurrenceInputs<Cell>& in, const Dims& d) {
  for (int s = 0; s < Cell::kInputs; ++s)
    for (index_t b = 0; b < d.B; ++b)
      for (index_t t = 0; t < d.T; ++t)
        for (index_t c = 0; c < d.D; ++c)
          if (!std::isfinite(in.inputs[s](b, t, c))) return true;
  for (int s = 0; s < Cell::kParams; ++s)
    for (index_t c = 0; c < d.D; ++c)
      if (!std::isfinite(in.params[s](c))) return true;
  if (in.h0.has_value())
    for (index_t b = 0; b < d.B; ++b)
      for (index_t c = 0; c < d.D; ++c)
        if (!std::isfinite(in.h0(b, c))) return true;
  return false;
}

// Whether a failed solve returns the sequential loop's result: asked for, or forced by a
// non-finite input (has_non_finite_input); the report's message then says so.
template <class Cell>
bool falls_back(const NonlinearRecurrenceInputs<Cell>& in, const Dims& d, const NonlinearRecurrenceNewtonOptions& o,
                NewtonReport& report) {
  if (o.fallback == NewtonFallback::sequential) return true;
  if (report.status != NewtonStatus::non_finite || !has_non_finite_input(in, d)) return false;
  report.message += "; an input holds NaN or inf, so h holds the sequential loop's result";
  return true;
}

template <class Cell>
void load_token(const NonlinearRecurrenceInputs<Cell>& in, index_t b, index_t t, index_t d, float* x, float* p) {
  for (int s = 0; s < Cell::kInputs; ++s) x[s] = in.inputs[s](b, t, d);
  for (int s = 0; s < Cell::kParams; ++s) p[s] = in.params[s](d);
}

// Folds the report of one sequence into a packed call's: the worst status, the most iterations,
// the largest update and residual; the message names the first sequence that failed.
inline void merge_report(NewtonReport& all, const NewtonReport& one, index_t first_token) {
  all.status = std::max(all.status, one.status);
  all.converged = all.status == NewtonStatus::converged;
  all.iterations = std::max(all.iterations, one.iterations);
  all.max_update = std::max(all.max_update, one.max_update);
  all.residual = std::isnan(one.residual) || std::isnan(all.residual) ? std::numeric_limits<float>::quiet_NaN()
                                                                       : std::max(all.residual, one.residual);
  all.used_fallback = all.used_fallback || one.used_fallback;
  if (all.message.empty() && !one.message.empty())
    all.message = "sequence starting at token " + std::to_string(first_token) + ": " + one.message;
}

// Newton over each sequence of a packed or slotted call, reports merged.
template <class Cell, class Newton>
NewtonReport newton_per_sequence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                                 const SequenceMap& seqs, Newton&& newton) {
  NewtonReport all;
  all.converged = true;
  solve_per_sequence(in, out, seqs, [&](const auto& one, const auto& one_out, const SequenceSpan& s) {
    merge_report(all, newton(one, one_out), s.token_begin);
  });
  return all;
}

}  // namespace detail::newton

namespace reference {

/// h_t = f(h_{t-1}, x_t) token by token: the definition (options.reverse: h_t = f(h_{t+1}, x_t)
/// from token T-1 down, see NonlinearRecurrenceOptions).
template <class Cell>
void nonlinear_recurrence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                          const NonlinearRecurrenceOptions& options, const Executor& executor = serial_executor()) {
  (void)executor;
  using namespace detail::newton;
  if (options.reverse)
    return reference::nonlinear_recurrence(reversed_inputs("reference::nonlinear_recurrence", in),
                                           reversed_outputs(out), NonlinearRecurrenceOptions{}, executor);
  SequenceMap seqs;
  const Dims d = validate("reference::nonlinear_recurrence", in, out, &seqs);
  if (seqs.packed() || seqs.slotted()) {
    solve_per_sequence(in, out, seqs, [&](const auto& one, const auto& one_out, const SequenceSpan&) {
      reference::nonlinear_recurrence(one, one_out, NonlinearRecurrenceOptions{}, executor);
    });
    return;
  }
  float x[Cell::kInputs], p[Cell::kParams];
  for (index_t b = 0; b < d.B; ++b)
    for (index_t c = 0; c < d.D; ++c) {
      float h = h0_value(in.h0, b, c);
      for (index_t t = 0; t < d.T; ++t) {
        load_token(in, b, t, c, x, p);
        h = Cell::value(h, x, p);
        out.h(b, t, c) = h;
      }
      if (out.h_last.has_value()) out.h_last(b, c) = h;
    }
}

/// The forward recurrence with default options.
template <class Cell>
void nonlinear_recurrence(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                          const Executor& executor = serial_executor()) {
  reference::nonlinear_recurrence(in, out, NonlinearRecurrenceOptions{}, executor);
}

/// The Newton iteration of the header comment in plain loops (zero initial guess unless
/// warm_start). Same report as the fast form; splits and chunks are ignored.
template <class Cell>
NewtonReport nonlinear_recurrence_newton(const NonlinearRecurrenceInputs<Cell>& in, const NonlinearRecurrenceOutputs& out,
                                         const NonlinearRecurrenceNewtonOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::newton;
  const char* op = "reference::nonlinear_recurrence_newton";
  if (options.reverse)
    return reference::nonlinear_recurrence_newton(detail::newton::reversed_inputs(op, in),
                                                  detail::newton::reversed_outputs(out),
                                                  detail::forward_options(options), executor);
  SequenceMap seqs;
  const Dims d = validate(op, in, out, &seqs);
  validate_options(op, options);
  if (seqs.packed() || seqs.slotted())
    return newton_per_sequence(in, out, seqs, [&](const auto& one, const auto& one_out) {
      return reference::nonlinear_recurrence_newton(one, one_out, options, executor);
    });
  std::vector<float> next(static_cast<std::size_t>(d.T));
  float x[Cell::kInputs], p[Cell::kParams];
  NewtonReport report;
  if (!options.warm_start)
    for (index_t b = 0; b < d.B; ++b)
      for (index_t t = 0; t < d.T; ++t)
        for (index_t c = 0; c < d.D; ++c) out.h(b, t, c) = 0.f;
  bool finite = true;
  float update = d.T > 0 ? std::numeric_limits<float>::infinity() : 0.f;
  while (update > options.tol && report.iterations < options.max_iterations && finite) {
    update = 0.f;
    for (index_t b = 0; b < d.B; ++b)
      for (index_t c = 0; c < d.D; ++c) {
        float prev_new = h0_value(in.h0, b, c);
        for (index_t t = 0; t < d.T; ++t) {
          const float prev_old = t == 0 ? h0_value(in.h0, b, c) : out.h(b, t - 1, c);
          load_token(in, b, t, c, x, p);
          float f, J;
          Cell::eval(prev_old, x, p, f, J);
          J = clamp_jacobian(J, options.jacobian_clamp);
          prev_new = J * prev_new + (f - J * prev_old);
          next[t] = prev_new;
          finite = finite && is_finite(prev_new);
          update = std::max(update, std::abs(prev_new - out.h(b, t, c)));
        }
        for (index_t t = 0; t < d.T; ++t) out.h(b, t, c) = next[t];
      }
    ++report.iterations;
  }
  report.max_update = update;
  report.status = !finite ? NewtonStatus::non_finite
                          : (update <= options.tol ? NewtonStatus::converged : NewtonStatus::iteration_limit);
  report.converged = report.status == NewtonStatus::converged;
  if (!report.converged) {
    report.message = failure_message(report.status, report.iterations, update, options.tol);
    if (falls_back(in, d, options, report)) {
      reference::nonlinear_recurrence<Cell>(in, out, executor);
      report.used_fallback = true;
    }
  }
  // Residual of what the outputs hold.
  float residual = 0.f;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t c = 0; c < d.D; ++c)
      for (index_t t = 0; t < d.T; ++t) {
        load_token(in, b, t, c, x, p);
        const float prev = t == 0 ? h0_value(in.h0, b, c) : out.h(b, t - 1, c);
        const float r = std::abs(out.h(b, t, c) - Cell::value(prev, x, p));
        residual = std::isnan(r) ? r : std::max(residual, r);
      }
  report.residual = residual;
  if (!report.converged && !report.used_fallback) {
    for (index_t b = 0; b < d.B; ++b)
      for (index_t t = 0; t < d.T; ++t)
        for (index_t c = 0; c < d.D; ++c) out.h(b, t, c) = std::numeric_limits<float>::quiet_NaN();
    report.residual = std::numeric_limits<float>::quiet_NaN();
  }
  if (out.h_last.has_value())
    for (index_t b = 0; b < d.B; ++b)
      for (index_t c = 0; c < d.D; ++c) out.h_last(b, c) = d.T > 0 ? out.h(b, d.T - 1, c) : h0_value(in.h0, b, c);
  return report;
}

}  // namespace reference
/// \deprecated Renamed NonlinearRecurrenceNewtonOptions (docs/conventions.md, naming).
using NewtonOptions [[deprecated("renamed seqmix::NonlinearRecurrenceNewtonOptions")]] =
    NonlinearRecurrenceNewtonOptions;

}  // namespace seqmix
