// The fast forms and the decode steps of the state-collapse remedies (collapse_reference.hpp has
// the options, the definition and the references).
//
// Stronger forgetting only changes the parameters, so the fast forms run the library's own ssd
// and selective_scan on A' (a copy of A: [H] or [D,N]) and, when B changes, on a copy of B
// ([B,T,G,N], small beside x: G N against H P or D values per token). Normalization is a
// nonlinearity between intervals, so with a threshold the call runs interval by interval, each
// segment starting from the state the previous one left (normalized), which keeps the chunked
// ssd and the vectorized scan inside every segment.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/long_context/collapse_reference.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace seqmix {
namespace detail {

/// Applies fn to every element of a state block: one channel's [N] state or one head's [P,N].
template <class Fn>
void collapse_for_each(const TensorView<float, 1>& s, Fn&& fn) {
  for (index_t n = 0; n < s.size(0); ++n) fn(s(n));
}
template <class Fn>
void collapse_for_each(const TensorView<float, 2>& s, Fn&& fn) {
  for (index_t p = 0; p < s.size(0); ++p)
    for (index_t n = 0; n < s.size(1); ++n) fn(s(p, n));
}

/// Scales a state block to Frobenius norm `tau` when it is larger; returns the factor applied.
template <std::size_t R>
double collapse_normalize_block(const TensorView<float, R>& s, float tau) {
  double sum = 0.0;
  collapse_for_each(s, [&](float& v) { sum += static_cast<double>(v) * v; });
  const double f = collapse_norm_factor(std::sqrt(sum), tau);
  if (f != 1.0) collapse_for_each(s, [&](float& v) { v = static_cast<float>(v * f); });
  return f;
}

/// Scales a state block by f (the token_states row of the token that ended an interval).
template <std::size_t R>
void collapse_scale_block(const TensorView<float, R>& s, double f) {
  if (f != 1.0) collapse_for_each(s, [&](float& v) { v = static_cast<float>(v * f); });
}

/// B' = input_scale * min(B, input_clip) into `dst` (same shape as B, contiguous).
inline void collapse_copy_input(const ConstView<float, 4>& Bm, const StateCollapseOptions& o, std::vector<float>& dst,
                                const Executor& executor) {
  const index_t B = Bm.size(0), T = Bm.size(1), G = Bm.size(2), N = Bm.size(3);
  dst.resize(static_cast<std::size_t>(B * T * G * N));
  parallel_for(executor, B * T, 64, [&](index_t begin, index_t end) {
    for (index_t bt = begin; bt < end; ++bt) {
      const index_t b = bt / T, t = bt % T;
      float* row = dst.data() + bt * G * N;
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < N; ++n) row[g * N + n] = collapse_input(o, Bm(b, t, g, n));
    }
  });
}

/// The bounds of the segment that processes tokens [done, done + len) in processing order.
struct CollapseSegment {
  index_t t0, len;
};

inline CollapseSegment collapse_segment(index_t T, index_t done, index_t interval, bool reverse) {
  const index_t len = std::min(interval, T - done);
  return {reverse ? T - done - len : done, len};
}

/// Runs a call interval by interval: segment(t0, len, first) runs the operator on tokens
/// [t0, t0 + len) (first: from the call's own initial state, else from the carried one), and
/// normalize(last) normalizes the carried state after an interval that ended at token `last`.
template <class Segment, class Normalize>
void collapse_run_intervals(index_t T, index_t interval, bool reverse, Segment&& segment, Normalize&& normalize) {
  for (index_t done = 0; done < T; done += interval) {
    const auto seg = collapse_segment(T, done, interval, reverse);
    segment(seg.t0, seg.len, done == 0);
    if (seg.len < interval) break;  // the call ends inside an interval: no normalization
    normalize(reverse ? seg.t0 : seg.t0 + seg.len - 1);
  }
}

/// A token-indexed view's tokens [t0, t0 + len) (an empty view stays empty).
template <class View>
View collapse_slice(const View& view, index_t t0, index_t len) {
  return view.has_value() ? view.slice(1, t0, len) : view;
}

/// Normalizes each unit (head or channel) of one sequence's state, unit i against tau(i), and
/// scales the same unit of `token_row` (the token_states of the token that ended the interval,
/// optional) by the same factor.
template <std::size_t R>
void collapse_normalize_units(const TensorView<float, R>& state_row, const ConstView<float, 1>& tau,
                              const TensorView<float, R>& token_row) {
  for (index_t i = 0; i < state_row.size(0); ++i) {
    const double f = collapse_normalize_block(state_row.select(0, i), tau(i));
    if (token_row.has_value()) collapse_scale_block(token_row.select(0, i), f);
  }
}

/// The steps' optional positions [B]: tokens each row's state has seen, >= 0.
inline void check_collapse_positions(const ArgCheck& check, const ConstView<std::int64_t, 1>& positions, index_t B) {
  check.optional_shape("positions", positions, std::array<index_t, 1>{B}, "B");
  if (!positions.has_value()) return;
  for (index_t b = 0; b < B; ++b)
    if (positions(b) < 0)
      check.fail("positions", "must be >= 0, got " + std::to_string(positions(b)) + " at row " + std::to_string(b));
}

/// True when a step's token ends an interval of row b (every step without positions).
inline bool collapse_step_ends_interval(const ConstView<std::int64_t, 1>& positions, index_t b, index_t interval) {
  return !positions.has_value() || (positions(b) + 1) % interval == 0;
}

/// A step's B' [B,G,N] in `dst` (a thread's buffer: no allocation once it has grown).
inline ConstView<float, 3> collapse_step_input(const ConstView<float, 3>& Bm, const StateCollapseOptions& o,
                                               std::vector<float>& dst) {
  const index_t B = Bm.size(0), G = Bm.size(1), N = Bm.size(2);
  dst.resize(static_cast<std::size_t>(B * G * N));
  for (index_t b = 0; b < B; ++b)
    for (index_t g = 0; g < G; ++g)
      for (index_t n = 0; n < N; ++n) dst[static_cast<std::size_t>((b * G + g) * N + n)] = collapse_input(o, Bm(b, g, n));
  return ConstView<float, 3>(dst.data(), {B, G, N});
}

}  // namespace detail

/// ssd with the state-collapse remedies (docs/operators.md section 18): the chunked or recurrent
/// ssd on A' and B', interval by interval when a norm threshold is given. Same arguments as ssd
/// plus `remedies`; dense batches and state slots (packed sequences are refused), reverse and
/// token_states supported. With state slots and a threshold, final_state (the pool the
/// intervals carry) is required. Everything is validated before any write.
inline void ssd_with_remedies(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options,
                              const StateCollapseOptions& remedies, const Executor& executor = serial_executor()) {
  static constexpr const char* op = "ssd_with_remedies";
  const ArgCheck check(op);
  const auto call = detail::validate_ssd(op, in, out, options);
  const index_t B = call.dims.B, T = call.dims.T, H = call.dims.H, P = call.dims.P, N = call.dims.N, G = call.dims.G;
  detail::check_state_collapse(check, remedies, H, "H");
  detail::check_collapse_batch(check, in.batch);
  const bool normalize = detail::collapse_normalizes(remedies);
  if (normalize && in.batch.slotted())
    check.that(out.final_state.has_value(), "final_state",
               "is required with state slots and remedies.norm_threshold (the pool the intervals carry)");

  std::vector<float> a_prime(static_cast<std::size_t>(H)), b_prime;
  for (index_t h = 0; h < H; ++h) a_prime[static_cast<std::size_t>(h)] = detail::collapse_decay(remedies, in.A(h));
  SsdInputs run = in;
  run.A = ConstView<float, 1>(a_prime.data(), {H});
  if (detail::collapse_changes_input(remedies)) {
    detail::collapse_copy_input(in.Bm, remedies, b_prime, executor);
    run.Bm = ConstView<float, 4>(b_prime.data(), {B, T, G, N});
  }
  if (!normalize || T == 0) return ssd(run, out, options, executor);

  // The state the intervals carry: final_state, or scratch when the caller does not want it.
  std::vector<float> scratch;
  TensorView<float, 4> carry = out.final_state;
  if (!carry.has_value()) {
    scratch.assign(static_cast<std::size_t>(B * H * P * N), 0.f);
    carry = TensorView<float, 4>(scratch.data(), {B, H, P, N});
  }
  auto segment = [&](index_t t0, index_t len, bool first) {
    SsdInputs part = run;
    part.x = run.x.slice(1, t0, len), part.dt = run.dt.slice(1, t0, len);
    part.Bm = run.Bm.slice(1, t0, len), part.Cm = run.Cm.slice(1, t0, len), part.z = detail::collapse_slice(run.z, t0, len);
    if (!first) {  // later intervals start from the carried state, every row of it
      part.initial_state = carry;
      part.batch.has_initial_state = {};
    }
    ssd(part, {out.y.slice(1, t0, len), carry, detail::collapse_slice(out.token_states, t0, len)}, options, executor);
  };
  auto normalize_after = [&](index_t last) {
    parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
      for (index_t b = begin; b < end; ++b) {
        const SequenceSpan s = call.map[b];
        if (s.state_row < 0) continue;  // padding row
        const auto tokens = out.token_states.has_value() ? out.token_states.select(0, s.batch_row).select(0, last)
                                                         : TensorView<float, 3>();
        detail::collapse_normalize_units(carry.select(0, s.state_row), remedies.norm_threshold, tokens);
      }
    });
  };
  detail::collapse_run_intervals(T, remedies.interval, options.reverse, segment, normalize_after);
}

/// ssd_step with the state-collapse remedies: one token on A' and B', then the state of each row
/// is normalized when the token ends an interval: `positions` [B] (int64, optional) holds the
/// tokens each row's state has seen before this one, and row b is normalized when
/// (positions[b] + 1) % interval == 0; without it every step normalizes (the paper's decode
/// option). A prefill of a multiple of `interval` tokens followed by steps at positions
/// T, T+1, ... equals one call. Allocation-free after the first call of a thread at a size.
inline void ssd_step_with_remedies(const SsdStepInputs& in, const SsdStepOutputs& out, const SsdOptions& options,
                                   const StateCollapseOptions& remedies,
                                   const ConstView<std::int64_t, 1>& positions = {},
                                   const Executor& executor = serial_executor()) {
  static const ArgCheck check("ssd_step_with_remedies");
  const auto call = detail::validate_ssd_step(check, in, out);
  const index_t B = call.dims.B, H = call.dims.H;
  detail::check_state_collapse(check, remedies, H, "H");
  detail::check_collapse_positions(check, positions, B);

  thread_local std::vector<float> a_prime, b_prime;
  a_prime.resize(static_cast<std::size_t>(H));
  for (index_t h = 0; h < H; ++h) a_prime[static_cast<std::size_t>(h)] = detail::collapse_decay(remedies, in.A(h));
  SsdStepInputs run = in;
  run.A = ConstView<float, 1>(a_prime.data(), {H});
  if (detail::collapse_changes_input(remedies)) run.Bm = detail::collapse_step_input(in.Bm, remedies, b_prime);
  ssd_step(run, out, options, executor);
  if (!detail::collapse_normalizes(remedies)) return;
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan s = call.map[b];
    if (s.state_row >= 0 && detail::collapse_step_ends_interval(positions, b, remedies.interval))
      detail::collapse_normalize_units(out.state.select(0, s.state_row), remedies.norm_threshold, TensorView<float, 3>());
  }
}

/// selective_scan with the state-collapse remedies (docs/operators.md section 18): the
/// vectorized scan on A' ([D,N] copy) and B', interval by interval when a norm threshold is given
/// (each channel's [N] state against its threshold). Same contract as ssd_with_remedies.
inline void selective_scan_with_remedies(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                                         const SelectiveScanOptions& options, const StateCollapseOptions& remedies,
                                         const Executor& executor = serial_executor()) {
  static constexpr const char* op = "selective_scan_with_remedies";
  const ArgCheck check(op);
  const auto call = detail::validate_selective_scan(op, in, out);
  const index_t B = call.dims.B, T = call.dims.T, D = call.dims.D, N = call.dims.N, G = call.dims.G;
  detail::check_state_collapse(check, remedies, D, "D");
  detail::check_collapse_batch(check, in.batch);
  const bool normalize = detail::collapse_normalizes(remedies);
  if (normalize && in.batch.slotted())
    check.that(out.final_state.has_value(), "final_state",
               "is required with state slots and remedies.norm_threshold (the pool the intervals carry)");

  std::vector<float> a_prime(static_cast<std::size_t>(D * N)), b_prime;
  for (index_t d = 0; d < D; ++d)
    for (index_t n = 0; n < N; ++n) a_prime[static_cast<std::size_t>(d * N + n)] = detail::collapse_decay(remedies, in.A(d, n));
  SelectiveScanInputs run = in;
  run.A = ConstView<float, 2>(a_prime.data(), {D, N});
  if (detail::collapse_changes_input(remedies)) {
    detail::collapse_copy_input(in.Bm, remedies, b_prime, executor);
    run.Bm = ConstView<float, 4>(b_prime.data(), {B, T, G, N});
  }
  if (!normalize || T == 0) return selective_scan(run, out, options, executor);

  std::vector<float> scratch;
  TensorView<float, 3> carry = out.final_state;
  if (!carry.has_value()) {
    scratch.assign(static_cast<std::size_t>(B * D * N), 0.f);
    carry = TensorView<float, 3>(scratch.data(), {B, D, N});
  }
  auto segment = [&](index_t t0, index_t len, bool first) {
    SelectiveScanInputs part = run;
    part.u = run.u.slice(1, t0, len), part.delta = run.delta.slice(1, t0, len);
    part.Bm = run.Bm.slice(1, t0, len), part.Cm = run.Cm.slice(1, t0, len), part.z = detail::collapse_slice(run.z, t0, len);
    if (!first) {
      part.initial_state = carry;
      part.batch.has_initial_state = {};
    }
    selective_scan(part, {out.y.slice(1, t0, len), carry, detail::collapse_slice(out.token_states, t0, len)}, options,
                   executor);
  };
  auto normalize_after = [&](index_t last) {
    parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
      for (index_t b = begin; b < end; ++b) {
        const SequenceSpan s = call.map[b];
        if (s.state_row < 0) continue;
        const auto tokens = out.token_states.has_value() ? out.token_states.select(0, s.batch_row).select(0, last)
                                                         : TensorView<float, 2>();
        detail::collapse_normalize_units(carry.select(0, s.state_row), remedies.norm_threshold, tokens);
      }
    });
  };
  detail::collapse_run_intervals(T, remedies.interval, options.reverse, segment, normalize_after);
}

/// selective_scan_step with the state-collapse remedies; `positions` as in ssd_step_with_remedies.
inline void selective_scan_step_with_remedies(const SelectiveScanStepInputs& in, const SelectiveScanStepOutputs& out,
                                              const SelectiveScanOptions& options, const StateCollapseOptions& remedies,
                                              const ConstView<std::int64_t, 1>& positions = {},
                                              const Executor& executor = serial_executor()) {
  static const ArgCheck check("selective_scan_step_with_remedies");
  const auto call = detail::validate_selective_scan_step(check, in, out);
  const index_t B = call.dims.B, D = call.dims.D, N = call.dims.N;
  detail::check_state_collapse(check, remedies, D, "D");
  detail::check_collapse_positions(check, positions, B);

  thread_local std::vector<float> a_prime, b_prime;
  a_prime.resize(static_cast<std::size_t>(D * N));
  for (index_t d = 0; d < D; ++d)
    for (index_t n = 0; n < N; ++n) a_prime[static_cast<std::size_t>(d * N + n)] = detail::collapse_decay(remedies, in.A(d, n));
  SelectiveScanStepInputs run = in;
  run.A = ConstView<float, 2>(a_prime.data(), {D, N});
  if (detail::collapse_changes_input(remedies)) run.Bm = detail::collapse_step_input(in.Bm, remedies, b_prime);
  selective_scan_step(run, out, options, executor);
  if (!detail::collapse_normalizes(remedies)) return;
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan s = call.map[b];
    if (s.state_row >= 0 && detail::collapse_step_ends_interval(positions, b, remedies.interval))
      detail::collapse_normalize_units(out.state.select(0, s.state_row), remedies.norm_threshold, TensorView<float, 2>());
  }
}

}  // namespace seqmix
