// selective_scan: Mamba-1's selective state-space scan (SPEC section 3; the semantics of
// mamba_ssm's selective_scan_ref, but token-major).
//
// This header holds the readable definition (seqmix::reference::selective_scan), the argument
// structs shared by all three forms, and their validation. The fast prefill is in fast.hpp, the
// single-token decode step in step.hpp.
//
//   dt[b,t,d]   = delta[b,t,d] + delta_bias[d], then softplus(dt) if options.delta_softplus
//   h[d][n]     = exp(dt * A[d][n]) * h[d][n] + dt * Bm[b,t,g,n] * u[b,t,d]   (g = d / (D/G))
//   y[b,t,d]    = sum_n Cm[b,t,g,n] * h[d][n] + Dskip[d] * u[b,t,d], then * silu(z[b,t,d])
//   final_state = h after the last token ([B,D,N]); h starts from initial_state (zero if absent)
//
// Serving (ssd/README.md, "Serving", applies unchanged): `batch` packs sequences (cu_seqlens)
// and maps them to rows of a state pool (state_indices, has_initial_state); `token_states`
// keeps the state after every token for a speculative verify.
#pragma once

#include <cmath>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/serving.hpp"

namespace seqmix {

/// Options of selective_scan and selective_scan_step (docs/operators.md section 3).
struct SelectiveScanOptions {
  /// Apply softplus(x) = log1p(exp(x)) (x itself for x > 20) to delta + delta_bias, as mamba_ssm's
  /// delta_softplus flag does. Off by default, as there.
  bool delta_softplus = false;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
};

/// Prefill arguments. Optional views are empty (default-constructed) when not given.
struct SelectiveScanInputs {
  ConstView<float, 3> u;              ///< [B,T,D]
  ConstView<float, 3> delta;          ///< [B,T,D]
  ConstView<float, 2> A;              ///< [D,N], normally negative
  ConstView<float, 4> Bm;             ///< [B,T,G,N], G divides D; channel d uses group d / (D/G)
  ConstView<float, 4> Cm;             ///< [B,T,G,N]
  ConstView<float, 1> Dskip = {};     ///< [D], optional skip connection
  ConstView<float, 3> z = {};         ///< [B,T,D], optional gate: y *= silu(z)
  ConstView<float, 1> delta_bias = {}; ///< [D], optional
  ConstView<float, 3> initial_state = {}; ///< [N or S, D, N], optional
  SequenceBatch batch = {};           ///< optional: packed sequences, state slots (core/batch.hpp)
};

/// y must not overlap any input. final_state may be the very same view as initial_state (the
/// state is then carried in place).
struct SelectiveScanOutputs {
  TensorView<float, 3> y;            ///< [B,T,D]
  TensorView<float, 3> final_state = {}; ///< [N or S, D, N], optional
  /// [Bt,Tt,D,N], optional (speculative verify): the state after each token; [Bt,Tt] are u's
  /// first two dims.
  TensorView<float, 4> token_states = {};
};

/// Decode-step arguments: one token per batch row.
struct SelectiveScanStepInputs {
  ConstView<float, 2> u;           ///< [B,D]
  ConstView<float, 2> delta;       ///< [B,D]
  ConstView<float, 2> A;           ///< [D,N]
  ConstView<float, 3> Bm;          ///< [B,G,N]
  ConstView<float, 3> Cm;          ///< [B,G,N]
  ConstView<float, 1> Dskip = {};  ///< [D], optional
  ConstView<float, 2> z = {};      ///< [B,D], optional
  ConstView<float, 1> delta_bias = {}; ///< [D], optional
  SequenceBatch batch = {};        ///< optional: state_indices [B] into the state pool, has_initial_state [B]
};

/// y must not overlap state or any input.
struct SelectiveScanStepOutputs {
  TensorView<float, 2> y;      ///< [B,D]
  TensorView<float, 3> state;  ///< [B or S, D, N], read and then updated in place (required)
};

namespace detail {

struct ScanDims {
  index_t B, T, D, N, G;
};

// softplus as mamba_ssm computes it: the identity above 20, where log1p(exp(x)) == x in fp32.
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

inline float scan_silu(float v) { return v / (1.f + std::exp(-v)); }

// A validated call: the sizes and the map from sequences to tokens and state rows.
struct ScanCall {
  ScanDims dims;
  SequenceMap map;
};

inline ScanCall validate_selective_scan(const char* op, const SelectiveScanInputs& in, const SelectiveScanOutputs& out) {
  const ArgCheck check(op);
  const index_t B = in.u.size(0), T = in.u.size(1), D = in.u.size(2);
  const index_t N = in.A.size(1), G = in.Bm.size(2);
  check.shape("u", in.u, std::array<index_t, 3>{-1, -1, -1}, "B,T,D");
  check.shape("delta", in.delta, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.shape("A", in.A, std::array<index_t, 2>{D, -1}, "D,N");
  check.shape("Bm", in.Bm, std::array<index_t, 4>{B, T, -1, N}, "B,T,G,N");
  if (D > 0) check.divides(G, D, "Bm", "groups (dimension 2)");
  check.shape("Cm", in.Cm, std::array<index_t, 4>{B, T, G, N}, "B,T,G,N");
  check.optional_shape("Dskip", in.Dskip, std::array<index_t, 1>{D}, "D");
  check.optional_shape("z", in.z, std::array<index_t, 3>{B, T, D}, "B,T,D");
  check.optional_shape("delta_bias", in.delta_bias, std::array<index_t, 1>{D}, "D");
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 3>{-1, D, N}, "N,D,N");
  check.shape("y", out.y, std::array<index_t, 3>{B, T, D}, "B,T,D");
  // A NaN or infinite A poisons every later token; reading [D,N] once is cheap next to the scan
  // when vectorized (element by element it took ~30 us at D 1536, N 16: serial time before the
  // scan's tasks, an eighth of the call on 64 cores).
  if (in.A.stride(1) != 1 || !simd::rows_finite(in.A.data(), D, N, in.A.stride(0)))
    for (index_t d = 0; d < D; ++d)
      for (index_t n = 0; n < N; ++n) check.finite(in.A(d, n), "A");
  const index_t rows = in.initial_state.has_value() ? in.initial_state.size(0) : -1;
  check.optional_shape("final_state", out.final_state, std::array<index_t, 3>{rows, D, N}, "N,D,N");
  check.optional_shape("token_states", out.token_states, std::array<index_t, 4>{B, T, D, N}, "Bt,Tt,D,N");
  const index_t state_rows = rows >= 0 ? rows : (out.final_state.has_value() ? out.final_state.size(0) : -1);
  const SequenceMap map = SequenceMap::make(op, in.batch, B, T, in.initial_state.has_value(), state_rows);
  check_prefill_aliasing(check, out.y, in.initial_state, out.final_state, out.token_states, named("u", in.u),
                         named("delta", in.delta), named("Bm", in.Bm), named("Cm", in.Cm), named("z", in.z));
  return {{B, T, D, N, G}, map};
}

// A reverse call as the forward call on reversed views (core/direction.hpp).
inline std::pair<SelectiveScanInputs, SelectiveScanOutputs> reversed_call(const char* op, SelectiveScanInputs in,
                                                                          SelectiveScanOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.u, in.delta, in.Bm, in.Cm, in.z, out.y, out.token_states);
  return {in, out};
}

struct ScanStepCall {
  ScanDims dims;
  StepSlots map;
};

// Allocation-free on success (it runs on every token).
inline ScanStepCall validate_selective_scan_step(const ArgCheck& check, const SelectiveScanStepInputs& in,
                                             const SelectiveScanStepOutputs& out) {
  const index_t B = in.u.size(0), D = in.u.size(1);
  const index_t N = in.A.size(1), G = in.Bm.size(1);
  check.shape("u", in.u, std::array<index_t, 2>{-1, -1}, "B,D");
  check.shape("delta", in.delta, std::array<index_t, 2>{B, D}, "B,D");
  check.shape("A", in.A, std::array<index_t, 2>{D, -1}, "D,N");
  check.shape("Bm", in.Bm, std::array<index_t, 3>{B, -1, N}, "B,G,N");
  if (D > 0) check.divides(G, D, "Bm", "groups (dimension 1)");
  check.shape("Cm", in.Cm, std::array<index_t, 3>{B, G, N}, "B,G,N");
  check.optional_shape("Dskip", in.Dskip, std::array<index_t, 1>{D}, "D");
  check.optional_shape("z", in.z, std::array<index_t, 2>{B, D}, "B,D");
  check.optional_shape("delta_bias", in.delta_bias, std::array<index_t, 1>{D}, "D");
  check.shape("state", out.state, std::array<index_t, 3>{-1, D, N}, "S,D,N");
  check.shape("y", out.y, std::array<index_t, 2>{B, D}, "B,D");
  const StepSlots map = ssm_step_slots(check, in.batch, B, out.state.size(0));
  check_step_aliasing(check, out.y, named("state", out.state), named("u", in.u), named("delta", in.delta), named("Bm", in.Bm),
                      named("Cm", in.Cm), named("z", in.z));
  return {{B, 1, D, N, G}, map};
}

// One sequence of a call as a batch of one: its token rows, the state row it starts from (empty
// for zeros) and the outputs it writes. Padding sequences are left out.
struct ScanSequence {
  SelectiveScanInputs in;
  SelectiveScanOutputs out;
};

inline std::vector<ScanSequence> scan_sequences(const SelectiveScanInputs& in, const SelectiveScanOutputs& out,
                                                const SequenceMap& map) {
  std::vector<ScanSequence> seqs;
  seqs.reserve(static_cast<std::size_t>(map.sequences()));
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan span = map[n];
    if (span.state_row < 0) continue;
    ScanSequence s{in, out};
    s.in.batch = {};
    s.in.u = sequence_tokens(in.u, span);
    s.in.delta = sequence_tokens(in.delta, span);
    s.in.Bm = sequence_tokens(in.Bm, span);
    s.in.Cm = sequence_tokens(in.Cm, span);
    s.in.z = sequence_tokens(in.z, span);
    s.in.initial_state = span.read_state ? state_row(in.initial_state, span.state_row) : ConstView<float, 3>();
    s.out.y = sequence_tokens(out.y, span);
    s.out.final_state = state_row(out.final_state, span.state_row);
    s.out.token_states = sequence_tokens(out.token_states, span);
    seqs.push_back(s);
  }
  return seqs;
}

}  // namespace detail

namespace reference {

/// The definition, token by token, one sequence (a batch of one) at a time. Single-threaded;
/// `executor` is accepted for a uniform signature. The state of one (sequence, channel) lives in a
/// local buffer, so final_state may alias initial_state.
inline void selective_scan(const SelectiveScanInputs& in_all, const SelectiveScanOutputs& out_all,
                           const SelectiveScanOptions& options = {},
                           const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::selective_scan", in_all, out_all);
    return selective_scan(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const auto call = detail::validate_selective_scan("reference::selective_scan", in_all, out_all);
  const index_t D = call.dims.D, N = call.dims.N, channels_per_group = D / call.dims.G;
  std::vector<float> h(static_cast<std::size_t>(N));
  for (const detail::ScanSequence& seq : detail::scan_sequences(in_all, out_all, call.map)) {
    const SelectiveScanInputs& in = seq.in;
    const SelectiveScanOutputs& out = seq.out;
    const index_t T = in.u.size(1);
    for (index_t d = 0; d < D; ++d) {
      const index_t g = d / channels_per_group;
      for (index_t n = 0; n < N; ++n) h[n] = in.initial_state.has_value() ? in.initial_state(0, d, n) : 0.f;
      for (index_t t = 0; t < T; ++t) {
        float dt = in.delta(0, t, d) + (in.delta_bias.has_value() ? in.delta_bias(d) : 0.f);
        if (options.delta_softplus) dt = detail::softplus(dt);
        const float u = in.u(0, t, d);
        float y = 0.f;
        for (index_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * in.A(d, n)) * h[n] + dt * in.Bm(0, t, g, n) * u;
          y += in.Cm(0, t, g, n) * h[n];
        }
        if (in.Dskip.has_value()) y += in.Dskip(d) * u;
        if (in.z.has_value()) y *= detail::scan_silu(in.z(0, t, d));
        out.y(0, t, d) = y;
        if (out.token_states.has_value())
          for (index_t n = 0; n < N; ++n) out.token_states(0, t, d, n) = h[n];
      }
      if (out.final_state.has_value())
        for (index_t n = 0; n < N; ++n) out.final_state(0, d, n) = h[n];
    }
  }
}

}  // namespace reference
}  // namespace seqmix
