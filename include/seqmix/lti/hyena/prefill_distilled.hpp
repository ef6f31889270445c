// hyena, prefill handing off to the distilled recurrence (issue 16 item 5, "prefill by FFT and
// generation by the distilled recurrence"): the prompt runs through the exact operator (each
// order's long convolution on the original filters, FFT for long ones, as seqmix::hyena), and
// each order's modal state after the prompt is built from the z_n that order convolved:
//
//   state[n,b,d,k] = sum_{s<T} lambda_k^(T-1-s) g_k z_n[b,s,d]      (the state hyena_distilled_step
//                                                                    holds after token T-1)
//
// by the recurrence s <- lambda s + g z over the T tokens (O(T M) per channel, in double, the
// modes in xsimd batches, the channels split over the executor). Decode then continues with
// hyena_distilled_step from that state. When the filters are exactly the modal ones the handoff
// then the steps equal the distilled step run from token 0; otherwise the prompt's outputs are
// exact and the decoded ones carry the fit error of the modes.
//
// options.reverse (as hyena's): the prompt runs from its last token to its first on reversed views
// (anti-causal orders), and the handed-over state is the one after token 0 in processing order
// (having consumed tokens T-1, ..., 0), so hyena_distilled_step continues the reverse stream: the
// next token it is given is the one before the prompt.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/fast.hpp"
#include "seqmix/lti/hyena/reference.hpp"
#include "seqmix/lti/hyena/step_distilled.hpp"

namespace seqmix {

/// Outputs of hyena_distilled_prefill.
struct HyenaDistilledPrefillOutputs {
  TensorView<float, 3> y;             ///< [B,T,D]: hyena's output on the original filters
  TensorView<float, 4> state_real;    ///< [N,B,D,M]: each order's modal state after token T-1 (after token 0 with options.reverse; written, not read)
  TensorView<float, 4> state_imag;    ///< [N,B,D,M]
  TensorView<float, 3> scratch = {};  ///< [B,T,D], optional: z_n between orders for N >= 2 (allocated per call when absent)
};

namespace detail {

// Channels per task of the modal-state accumulation.
constexpr index_t kHyenaHandoffChannels = 64;

// state[b, d0:d1, :] of one order from z [B,T,D]: s_k <- lambda_k s_k + g_k z[t] over every
// token, in double, written once at the end.
inline void hyena_handoff_state(const ConstView<float, 3>& z, const HyenaModalFilters& f, index_t n, index_t b,
                                index_t d0, index_t d1, const TensorView<float, 3>& state_real,
                                const TensorView<float, 3>& state_imag) {
  constexpr index_t kDoubleWidth = static_cast<index_t>(simd::Batch<double>::size);
  const index_t T = z.size(1), M = f.pole_real.size(2), C = d1 - d0;
  const std::size_t size = static_cast<std::size_t>(C * M);
  std::vector<double> pr(size), pi(size), gr(size), gi(size), sr(size, 0.0), si(size, 0.0);
  for (index_t c = 0; c < C; ++c)
    for (index_t k = 0; k < M; ++k) {
      const std::size_t i = static_cast<std::size_t>(c * M + k);
      pr[i] = f.pole_real(n, d0 + c, k), pi[i] = f.pole_imag(n, d0 + c, k);
      gr[i] = f.gain_real(n, d0 + c, k), gi[i] = f.gain_imag(n, d0 + c, k);
    }
  for (index_t t = 0; t < T; ++t)
    for (index_t c = 0; c < C; ++c) {
      const double u = z(b, t, d0 + c);
      double* __restrict r = sr.data() + c * M;
      double* __restrict m = si.data() + c * M;
      const double* a = pr.data() + c * M;
      const double* w = pi.data() + c * M;
      const double* p = gr.data() + c * M;
      const double* q = gi.data() + c * M;
      index_t k = 0;
      // Batches of modes: GCC -O2 leaves this loop of runtime length M scalar (measured 1.3-1.5x
      // slower than -O3 over the whole prefill), so its lanes are spelled out.
      const simd::Batch<double> uv(u);
      for (; k + kDoubleWidth <= M; k += kDoubleWidth) {
        const auto ak = simd::load(a + k), wk = simd::load(w + k), rk = simd::load(r + k), mk = simd::load(m + k);
        simd::store(r + k, simd::fma(simd::load(p + k), uv, xsimd::fnma(wk, mk, ak * rk)));
        simd::store(m + k, simd::fma(simd::load(q + k), uv, simd::fma(wk, rk, ak * mk)));
      }
      for (; k < M; ++k) {
        const double re = a[k] * r[k] - w[k] * m[k] + p[k] * u;
        m[k] = a[k] * m[k] + w[k] * r[k] + q[k] * u;
        r[k] = re;
      }
    }
  for (index_t c = 0; c < C; ++c)
    for (index_t k = 0; k < M; ++k) {
      state_real(b, d0 + c, k) = static_cast<float>(sr[static_cast<std::size_t>(c * M + k)]);
      state_imag(b, d0 + c, k) = static_cast<float>(si[static_cast<std::size_t>(c * M + k)]);
    }
}

// A reverse call as the forward call on reversed views of the token-indexed arguments (v, y,
// scratch; x along its dimension 2); the states are per sequence, not per token.
inline std::pair<HyenaInputs, HyenaDistilledPrefillOutputs> hyena_distilled_reversed_call(
    HyenaInputs in, HyenaDistilledPrefillOutputs out) {
  reverse_time_of(in.v, out.y, out.scratch);
  in.x = reversed_view(in.x, 2);
  return {in, out};
}

}  // namespace detail

/// Prefill of T prompt tokens for distilled decoding: y as seqmix::hyena computes it on the
/// original filters (in.filter, in.skip; `options.method` as for hyena), and state_real/imag as
/// the modal state of `filters` (from hyena_distill of the same filters) after the prompt, so
/// hyena_distilled_step continues at token T. The sequence starts at token 0: in.initial_state
/// must be empty (the modal state of an earlier history is not known). Validates everything
/// (hyena's checks, the modal filters' shapes, finite values and |pole| < 1, the state shapes,
/// overlaps) before the first write. Cost: hyena's prefill plus O(N B T D M) for the states.
/// options.reverse: the prompt runs from token T-1 to token 0 (reversed views, no copy; each order
/// anti-causal), the states are the ones after token 0, and hyena_distilled_step then continues
/// with the token before the prompt (the reverse stream), as one reverse hyena call would.
inline void hyena_distilled_prefill(const HyenaInputs& in, const HyenaModalFilters& filters,
                                    const HyenaDistilledPrefillOutputs& out, const HyenaOptions& options = {},
                                    const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::hyena_distilled_reversed_call(in, out);
    return hyena_distilled_prefill(rev.first, filters, rev.second, detail::forward_options(options), executor);
  }
  const char* op = "hyena_distilled_prefill";
  const ArgCheck check(op);
  const auto dims = detail::validate_hyena(op, in, {out.y, out.scratch}, options);
  const index_t N = dims.N, B = dims.B, D = dims.D;
  if (in.initial_state.has_value())
    check.fail("initial_state", "must be empty: the handoff starts the sequence at token 0");
  const index_t M = detail::hyena_check_modal_filters(check, filters, N, D);
  check.shape("state_real", out.state_real, {N, B, D, M}, "N,B,D,M")
      .shape("state_imag", out.state_imag, {N, B, D, M}, "N,B,D,M");
  const std::pair<const char*, TensorView<float, 4>> states[] = {{"state_real", out.state_real},
                                                                 {"state_imag", out.state_imag}};
  for (const auto& s : states) {
    detail::hyena_check_no_input(check, s.first, s.second, in.v, in.x, in.filter, in.skip);
    check.no_overlap(s.first, s.second, "y", out.y).no_overlap(s.first, s.second, "scratch", out.scratch);
    check.no_overlap(s.first, s.second, "filters.pole_real", filters.pole_real)
        .no_overlap(s.first, s.second, "filters.pole_imag", filters.pole_imag)
        .no_overlap(s.first, s.second, "filters.gain_real", filters.gain_real)
        .no_overlap(s.first, s.second, "filters.gain_imag", filters.gain_imag)
        .no_overlap(s.first, s.second, "filters.feedthrough", filters.feedthrough);
  }
  check.no_overlap("state_imag", out.state_imag, "state_real", out.state_real);

  Tensor<float, 3> owned;
  TensorView<float, 3> scratch = out.scratch;
  if (N >= 2 && !scratch.has_value()) {
    owned = Tensor<float, 3>({B, dims.T, D});
    scratch = owned.view();
  }
  const index_t blocks = (D + detail::kHyenaHandoffChannels - 1) / detail::kHyenaHandoffChannels;
  // Order n writes to y when N - 1 - n is even, so order N - 1 ends in y (as seqmix::hyena).
  ConstView<float, 3> z = in.v;
  LongConvOptions conv;
  conv.method = options.method;
  for (index_t n = 0; n < N; ++n) {
    // The modal state of order n from its input z_n, before the next order may overwrite it.
    parallel_for(executor, B * blocks, 1, [&](index_t begin, index_t end) {
      for (index_t i = begin; i < end; ++i) {
        const index_t b = i / blocks, d0 = (i % blocks) * detail::kHyenaHandoffChannels;
        detail::hyena_handoff_state(z, filters, n, b, d0, std::min(D, d0 + detail::kHyenaHandoffChannels),
                                    out.state_real.select(0, n), out.state_imag.select(0, n));
      }
    });
    const TensorView<float, 3> target = (N - 1 - n) % 2 == 0 ? out.y : scratch;
    LongConvInputs args{z, in.filter.select(0, n)};
    if (in.skip.has_value()) args.skip = in.skip.select(0, n);
    long_conv(args, {target}, conv, executor);
    detail::hyena_gate(in.x.select(0, n), target, executor);
    z = target;
  }
}

}  // namespace seqmix
