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
#include <cmath>
#include <cstdint>
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
  const auto [B, T, H, P, N, G] = call.dims;
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
  for (index_t done = 0; done < T; done += remedies.interval) {
    const auto seg = detail::collapse_segment(T, done, remedies.interval, options.reverse);
    SsdInputs part = run;
    part.x = run.x.slice(1, seg.t0, seg.len);
    part.dt = run.dt.slice(1, seg.t0, seg.len);
    part.Bm = run.Bm.slice(1, seg.t0, seg.len);
    part.Cm = run.Cm.slice(1, seg.t0, seg.len);
    if (run.z.has_value()) part.z = run.z.slice(1, seg.t0, seg.len);
    if (done > 0) {  // later intervals start from the carried state, every row of it
      part.initial_state = carry;
      part.batch.has_initial_state = {};
    }
    SsdOutputs part_out{out.y.slice(1, seg.t0, seg.len), carry, {}};
    if (out.token_states.has_value()) part_out.token_states = out.token_states.slice(1, seg.t0, seg.len);
    ssd(part, part_out, options, executor);
    if (seg.len < remedies.interval) break;  // the call ends inside an interval: no normalization
    const index_t last = options.reverse ? seg.t0 : seg.t0 + seg.len - 1;
    parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
      for (index_t bh = begin; bh < end; ++bh) {
        const SequenceSpan s = call.map[bh / H];
        const index_t h = bh % H;
        if (s.state_row < 0) continue;  // padding row
        const double f = detail::collapse_normalize_block(carry.select(0, s.state_row).select(0, h),
                                                          remedies.norm_threshold(h));
        if (out.token_states.has_value())
          detail::collapse_scale_block(out.token_states.select(0, s.batch_row).select(0, last).select(0, h), f);
      }
    });
  }
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
  const index_t B = call.dims.B, H = call.dims.H, G = call.dims.G, N = call.dims.N;
  detail::check_state_collapse(check, remedies, H, "H");
  check.optional_shape("positions", positions, std::array<index_t, 1>{B}, "B");
  if (positions.has_value())
    for (index_t b = 0; b < B; ++b)
      if (positions(b) < 0) check.fail("positions", "must be >= 0, got " + std::to_string(positions(b)) + " at row " + std::to_string(b));

  thread_local std::vector<float> a_prime, b_prime;
  a_prime.resize(static_cast<std::size_t>(H));
  for (index_t h = 0; h < H; ++h) a_prime[static_cast<std::size_t>(h)] = detail::collapse_decay(remedies, in.A(h));
  SsdStepInputs run = in;
  run.A = ConstView<float, 1>(a_prime.data(), {H});
  if (detail::collapse_changes_input(remedies)) {
    b_prime.resize(static_cast<std::size_t>(B * G * N));
    for (index_t b = 0; b < B; ++b)
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < N; ++n) b_prime[static_cast<std::size_t>((b * G + g) * N + n)] = detail::collapse_input(remedies, in.Bm(b, g, n));
    run.Bm = ConstView<float, 3>(b_prime.data(), {B, G, N});
  }
  ssd_step(run, out, options, executor);
  if (!detail::collapse_normalizes(remedies)) return;
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan s = call.map[b];
    if (s.state_row < 0) continue;
    if (positions.has_value() && (positions(b) + 1) % remedies.interval != 0) continue;
    for (index_t h = 0; h < H; ++h)
      detail::collapse_normalize_block(out.state.select(0, s.state_row).select(0, h), remedies.norm_threshold(h));
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
  for (index_t done = 0; done < T; done += remedies.interval) {
    const auto seg = detail::collapse_segment(T, done, remedies.interval, options.reverse);
    SelectiveScanInputs part = run;
    part.u = run.u.slice(1, seg.t0, seg.len);
    part.delta = run.delta.slice(1, seg.t0, seg.len);
    part.Bm = run.Bm.slice(1, seg.t0, seg.len);
    part.Cm = run.Cm.slice(1, seg.t0, seg.len);
    if (run.z.has_value()) part.z = run.z.slice(1, seg.t0, seg.len);
    if (done > 0) {
      part.initial_state = carry;
      part.batch.has_initial_state = {};
    }
    SelectiveScanOutputs part_out{out.y.slice(1, seg.t0, seg.len), carry, {}};
    if (out.token_states.has_value()) part_out.token_states = out.token_states.slice(1, seg.t0, seg.len);
    selective_scan(part, part_out, options, executor);
    if (seg.len < remedies.interval) break;
    const index_t last = options.reverse ? seg.t0 : seg.t0 + seg.len - 1;
    parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
      for (index_t b = begin; b < end; ++b) {
        const SequenceSpan s = call.map[b];
        if (s.state_row < 0) continue;
        for (index_t d = 0; d < D; ++d) {
          const double f = detail::collapse_normalize_block(carry.select(0, s.state_row).select(0, d),
                                                            remedies.norm_threshold(d));
          if (out.token_states.has_value())
            detail::collapse_scale_block(out.token_states.select(0, s.batch_row).select(0, last).select(0, d), f);
        }
      }
    });
  }
}

/// selective_scan_step with the state-collapse remedies; `positions` as in ssd_step_with_remedies.
inline void selective_scan_step_with_remedies(const SelectiveScanStepInputs& in, const SelectiveScanStepOutputs& out,
                                              const SelectiveScanOptions& options, const StateCollapseOptions& remedies,
                                              const ConstView<std::int64_t, 1>& positions = {},
                                              const Executor& executor = serial_executor()) {
  static const ArgCheck check("selective_scan_step_with_remedies");
  const auto call = detail::validate_selective_scan_step(check, in, out);
  const index_t B = call.dims.B, D = call.dims.D, N = call.dims.N, G = call.dims.G;
  detail::check_state_collapse(check, remedies, D, "D");
  check.optional_shape("positions", positions, std::array<index_t, 1>{B}, "B");
  if (positions.has_value())
    for (index_t b = 0; b < B; ++b)
      if (positions(b) < 0) check.fail("positions", "must be >= 0, got " + std::to_string(positions(b)) + " at row " + std::to_string(b));

  thread_local std::vector<float> a_prime, b_prime;
  a_prime.resize(static_cast<std::size_t>(D * N));
  for (index_t d = 0; d < D; ++d)
    for (index_t n = 0; n < N; ++n) a_prime[static_cast<std::size_t>(d * N + n)] = detail::collapse_decay(remedies, in.A(d, n));
  SelectiveScanStepInputs run = in;
  run.A = ConstView<float, 2>(a_prime.data(), {D, N});
  if (detail::collapse_changes_input(remedies)) {
    b_prime.resize(static_cast<std::size_t>(B * G * N));
    for (index_t b = 0; b < B; ++b)
      for (index_t g = 0; g < G; ++g)
        for (index_t n = 0; n < N; ++n) b_prime[static_cast<std::size_t>((b * G + g) * N + n)] = detail::collapse_input(remedies, in.Bm(b, g, n));
    run.Bm = ConstView<float, 3>(b_prime.data(), {B, G, N});
  }
  selective_scan_step(run, out, options, executor);
  if (!detail::collapse_normalizes(remedies)) return;
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan s = call.map[b];
    if (s.state_row < 0) continue;
    if (positions.has_value() && (positions(b) + 1) % remedies.interval != 0) continue;
    for (index_t d = 0; d < D; ++d)
      detail::collapse_normalize_block(out.state.select(0, s.state_row).select(0, d), remedies.norm_threshold(d));
  }
}

}  // namespace seqmix
