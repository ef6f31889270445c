// State-collapse remedies for selective SSMs (issue 23 item 5; Chen et al. 2024, "Stuffed Mamba:
// State Collapse and State Capacity of RNN-Based Long-Context Modeling", section 5): a model
// trained on short contexts lets its state grow past anything it saw in training once the input
// is longer, and its outputs collapse. Two inference-time remedies, as options of ssd and
// selective_scan:
//
//   stronger forgetting ("forget more, remember less"): run with A' = decay_scale * A + decay_offset
//     (a faster decay for decay_scale > 1 or decay_offset < 0) and B' = input_scale * min(B,
//     input_clip) (less written per token);
//   state normalization: after every `interval` tokens of a sequence, a state whose Frobenius norm
//     exceeds its threshold is scaled down to that norm (ssd: each head's [P,N] state, threshold
//     per head; selective_scan: each channel's [N] state, threshold per channel). The paper's code
//     normalizes after every chunk of 128 tokens in prefill and may do so after every decode step.
//
// This header: the options, their validation and the references (plain loops of the definition).
// The fast forms and the decode steps are in collapse.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/ssd/reference.hpp"

namespace seqmix {

/// The state-collapse remedies (docs/operators.md section 18). The defaults change nothing.
struct StateCollapseOptions {
  /// A' = decay_scale * A + decay_offset; finite and > 0 (> 1 forgets faster).
  float decay_scale = 1.f;
  /// Added to the scaled A; finite and <= 0 (< 0 forgets faster), so A' stays a decay.
  float decay_offset = 0.f;
  /// B' = input_scale * min(B, input_clip); finite and >= 0 (< 1 remembers less of each token).
  float input_scale = 1.f;
  /// Upper clip of B before input_scale (+inf: none); not NaN.
  float input_clip = std::numeric_limits<float>::infinity();
  /// Optional state-norm thresholds, each finite and > 0: [H] for ssd (one per head's [P,N]
  /// state), [D] for selective_scan (one per channel's [N] state). Empty: no normalization.
  ConstView<float, 1> norm_threshold = {};
  /// Tokens of a sequence between two normalizations (>= 1): the state is normalized after
  /// tokens interval, 2 interval, ... of each call (counted in processing order, so from the end
  /// with reverse). Segments of a multiple of `interval` tokens therefore equal one call.
  index_t interval = 128;
};

namespace detail {

/// True when the remedies change B (a copy of B is needed).
inline bool collapse_changes_input(const StateCollapseOptions& o) {
  return o.input_scale != 1.f || o.input_clip < std::numeric_limits<float>::infinity();
}

/// True when the state is normalized.
inline bool collapse_normalizes(const StateCollapseOptions& o) { return o.norm_threshold.has_value(); }

/// The remedied decay rate and input coefficient.
inline float collapse_decay(const StateCollapseOptions& o, float a) { return o.decay_scale * a + o.decay_offset; }
inline float collapse_input(const StateCollapseOptions& o, float b) { return o.input_scale * std::min(b, o.input_clip); }

/// The options' checks; `units` is H (ssd) or D (selective_scan). Allocation-free on success
/// (the steps validate on every token).
inline void check_state_collapse(const ArgCheck& check, const StateCollapseOptions& o, index_t units,
                                 const char* units_name) {
  check.finite(o.decay_scale, "remedies.decay_scale");
  if (!(o.decay_scale > 0.f)) check.fail("remedies.decay_scale", "must be > 0, got " + std::to_string(o.decay_scale));
  check.finite(o.decay_offset, "remedies.decay_offset");
  if (!(o.decay_offset <= 0.f))
    check.fail("remedies.decay_offset", "must be <= 0 (A' must stay a decay), got " + std::to_string(o.decay_offset));
  check.finite(o.input_scale, "remedies.input_scale");
  if (!(o.input_scale >= 0.f)) check.fail("remedies.input_scale", "must be >= 0, got " + std::to_string(o.input_scale));
  if (std::isnan(o.input_clip)) check.fail("remedies.input_clip", "must not be NaN");
  if (!(o.interval >= 1)) check.fail("remedies.interval", "must be >= 1, got " + std::to_string(o.interval));
  if (!o.norm_threshold.has_value()) return;
  check.shape("remedies.norm_threshold", o.norm_threshold, std::array<index_t, 1>{units}, units_name);
  for (index_t i = 0; i < units; ++i) {
    const float tau = o.norm_threshold(i);
    if (!(std::isfinite(tau) && tau > 0.f))
      check.fail("remedies.norm_threshold",
                 "must be finite and > 0, got " + std::to_string(tau) + " at " + std::to_string(i));
  }
}

/// Packed sequences would each need their own interval count through the segmented fast form;
/// refused (run them one call per sequence).
inline void check_collapse_batch(const ArgCheck& check, const SequenceBatch& batch) {
  if (batch.packed())
    check.fail("batch.cu_seqlens", "packed sequences are not supported with state-collapse remedies "
                                   "(call once per sequence; dense batches and state slots are)");
}

/// The factor that brings a state of Frobenius norm `norm` within `tau` (1 when it is already).
/// A NaN norm keeps its state (NaN stays NaN); an inf norm gives 0 (inf * 0 = NaN: still non-finite).
inline double collapse_norm_factor(double norm, double tau) { return norm > tau ? tau / norm : 1.0; }

}  // namespace detail

namespace reference {

/// ssd with the state-collapse remedies: the recurrence of reference::ssd with A' and B', and
/// each head's state scaled to its threshold after every `interval` tokens of a sequence.
/// Dense batches and state slots (not packed sequences); reverse and token_states as in ssd
/// (token_states hold the normalized state at the tokens that end an interval).
inline void ssd_with_remedies(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options,
                              const StateCollapseOptions& remedies, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    detail::check_collapse_batch(ArgCheck("reference::ssd_with_remedies"), in.batch);
    const auto rev = detail::reversed_call("reference::ssd_with_remedies", in, out);
    return ssd_with_remedies(rev.first, rev.second, detail::forward_options(options), remedies, executor);
  }
  (void)executor;
  const ArgCheck check("reference::ssd_with_remedies");
  const auto call = detail::validate_ssd("reference::ssd_with_remedies", in, out, options);
  const index_t H = call.dims.H, P = call.dims.P, N = call.dims.N, G = call.dims.G;
  detail::check_state_collapse(check, remedies, H, "H");
  detail::check_collapse_batch(check, in.batch);
  const index_t heads_per_group = H / G, state_n = N;
  std::vector<double> state(static_cast<std::size_t>(P * N));
  auto s = [&](index_t p, index_t n) -> double& { return state[static_cast<std::size_t>(p * state_n + n)]; };
  for (index_t q = 0; q < call.map.sequences(); ++q) {
    const SequenceSpan seq = call.map[q];
    if (seq.state_row < 0) continue;
    const index_t b = seq.batch_row;
    for (index_t h = 0; h < H; ++h) {
      const index_t g = h / heads_per_group;
      const double a = detail::collapse_decay(remedies, in.A(h));
      for (index_t p = 0; p < P; ++p)
        for (index_t n = 0; n < N; ++n) s(p, n) = seq.read_state ? in.initial_state(seq.state_row, h, p, n) : 0.0;
      for (index_t i = 0; i < seq.tokens; ++i) {
        const index_t t = seq.token_begin + i;
        const double dt = detail::ssd_dt(in.dt(b, t, h), in.dt_bias, h, options.dt_softplus);
        const double decay = std::exp(dt * a);
        for (index_t p = 0; p < P; ++p)
          for (index_t n = 0; n < N; ++n)
            s(p, n) = decay * s(p, n) + dt * in.x(b, t, h, p) * detail::collapse_input(remedies, in.Bm(b, t, g, n));
        // The output reads the state before this token's normalization (the paper normalizes
        // between chunks).
        for (index_t p = 0; p < P; ++p) {
          double y = 0.0;
          for (index_t n = 0; n < N; ++n) y += s(p, n) * in.Cm(b, t, g, n);
          if (in.D.has_value()) y += static_cast<double>(in.D(h)) * in.x(b, t, h, p);
          if (in.z.has_value()) y *= detail::ssd_silu(in.z(b, t, h, p));
          out.y(b, t, h, p) = static_cast<float>(y);
        }
        if (detail::collapse_normalizes(remedies) && (i + 1) % remedies.interval == 0) {
          double sum = 0.0;
          for (const double v : state) sum += v * v;
          const double f = detail::collapse_norm_factor(std::sqrt(sum), remedies.norm_threshold(h));
          for (double& v : state) v *= f;
        }
        if (out.token_states.has_value())
          for (index_t p = 0; p < P; ++p)
            for (index_t n = 0; n < N; ++n) out.token_states(b, t, h, p, n) = static_cast<float>(s(p, n));
      }
      if (out.final_state.has_value())
        for (index_t p = 0; p < P; ++p)
          for (index_t n = 0; n < N; ++n) out.final_state(seq.state_row, h, p, n) = static_cast<float>(s(p, n));
    }
  }
}

/// selective_scan with the state-collapse remedies: A' and B' in the recurrence, each channel's
/// [N] state scaled to its threshold after every `interval` tokens of a sequence. Dense batches
/// and state slots; reverse and token_states as in selective_scan.
inline void selective_scan_with_remedies(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                                         const SelectiveScanOptions& options, const StateCollapseOptions& remedies,
                                         const Executor& executor = serial_executor()) {
  if (options.reverse) {
    detail::check_collapse_batch(ArgCheck("reference::selective_scan_with_remedies"), in.batch);
    const auto rev = detail::reversed_call("reference::selective_scan_with_remedies", in, out);
    return selective_scan_with_remedies(rev.first, rev.second, detail::forward_options(options), remedies, executor);
  }
  (void)executor;
  const ArgCheck check("reference::selective_scan_with_remedies");
  const auto call = detail::validate_selective_scan("reference::selective_scan_with_remedies", in, out);
  const index_t D = call.dims.D, N = call.dims.N, G = call.dims.G;
  detail::check_state_collapse(check, remedies, D, "D");
  detail::check_collapse_batch(check, in.batch);
  const index_t per_group = D > 0 ? D / G : 1;
  std::vector<double> state(static_cast<std::size_t>(N));
  for (index_t q = 0; q < call.map.sequences(); ++q) {
    const SequenceSpan seq = call.map[q];
    if (seq.state_row < 0) continue;
    const index_t b = seq.batch_row;
    for (index_t d = 0; d < D; ++d) {
      const index_t g = d / per_group;
      for (index_t n = 0; n < N; ++n) state[static_cast<std::size_t>(n)] = seq.read_state ? in.initial_state(seq.state_row, d, n) : 0.0;
      for (index_t i = 0; i < seq.tokens; ++i) {
        const index_t t = seq.token_begin + i;
        double dt = in.delta(b, t, d);
        if (in.delta_bias.has_value()) dt += in.delta_bias(d);
        if (options.delta_softplus) dt = detail::softplus(static_cast<float>(dt));
        const double u = in.u(b, t, d);
        double y = 0.0;
        for (index_t n = 0; n < N; ++n) {
          double& h = state[static_cast<std::size_t>(n)];
          h = std::exp(dt * detail::collapse_decay(remedies, in.A(d, n))) * h +
              dt * detail::collapse_input(remedies, in.Bm(b, t, g, n)) * u;
          y += h * in.Cm(b, t, g, n);
        }
        if (in.Dskip.has_value()) y += static_cast<double>(in.Dskip(d)) * u;
        if (in.z.has_value()) y *= detail::scan_silu(in.z(b, t, d));
        out.y(b, t, d) = static_cast<float>(y);
        if (detail::collapse_normalizes(remedies) && (i + 1) % remedies.interval == 0) {
          double sum = 0.0;
          for (const double v : state) sum += v * v;
          const double f = detail::collapse_norm_factor(std::sqrt(sum), remedies.norm_threshold(d));
          for (double& v : state) v *= f;
        }
        if (out.token_states.has_value())
          for (index_t n = 0; n < N; ++n) out.token_states(b, t, d, n) = static_cast<float>(state[static_cast<std::size_t>(n)]);
      }
      if (out.final_state.has_value())
        for (index_t n = 0; n < N; ++n) out.final_state(seq.state_row, d, n) = static_cast<float>(state[static_cast<std::size_t>(n)]);
    }
  }
}

}  // namespace reference
}  // namespace seqmix
