// ssd: Mamba-2's state-space duality layer (SPEC section 3; the semantics of mamba_ssm's
// ssd_minimal / mamba_chunk_scan_combined, token-major).
//
// This header holds the readable definition (seqmix::reference::ssd), the argument structs and
// options shared by all three forms, and their validation. The fast prefill is in chunked.hpp,
// the single-token decode step in step.hpp; README.md derives the chunked form.
//
//   dt[b,t,h]   = dt[b,t,h] + dt_bias[h], then softplus(dt) if options.dt_softplus
//   h[p][n]     = exp(dt * A[h]) * h[p][n] + dt * x[b,t,h,p] * Bm[b,t,g,n]   (g = h / (H/G))
//   y[b,t,h,p]  = sum_n h[p][n] * Cm[b,t,g,n] + D[h] * x[b,t,h,p], then * silu(z[b,t,h,p])
//   final_state = h after the last token ([B,H,P,N]); h starts from initial_state (zero if absent)
//
// Serving (README.md, "Serving"): `batch` packs sequences (cu_seqlens) and maps them to rows of
// a state pool (state_indices, has_initial_state); `token_states` keeps the state after every
// token for a speculative verify.
#pragma once

#include <array>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/serving.hpp"

namespace seqmix {

/// Which prefill algorithm seqmix::ssd runs. Both compute the same function (to rounding).
enum class SsdAlgorithm {
  automatic,  ///< chunked for long inputs, recurrent for short ones (see detail::ssd_use_chunked)
  chunked,    ///< the SSD block decomposition on GEMMs (chunked.hpp, README.md)
  recurrent,  ///< token by token, vectorized over N: the decode step's kernel applied T times
};

/// Options of ssd and ssd_step (docs/operators.md section 3).
struct SsdOptions {
  /// Apply softplus(x) = log1p(exp(x)) (x itself for x > 20) to dt + dt_bias, as mamba_ssm's
  /// dt_softplus flag does. Off by default, as there.
  bool dt_softplus = false;
  /// Tokens per chunk of the chunked algorithm. 32 measured best on AVX-512 at P = 64..80,
  /// N = 128 (3-6% ahead of 64, 15% ahead of 128): per token the chunked form costs
  /// 2P(N + L) + 2PN flops, so a shorter chunk does less work, until the per-chunk O(P*N) costs
  /// (decaying and re-packing the state) take over. Any value >= 1 is accepted; it changes
  /// rounding only.
  index_t chunk_size = 32;
  /// Prefill algorithm; automatic picks by input length (the step ignores it).
  SsdAlgorithm algorithm = SsdAlgorithm::automatic;
  /// Run from the last token to the first (core/direction.hpp): the token-indexed views are
  /// reversed, not copied, and states mean the same thing mirrored (final_state: after token 0;
  /// token_states[t]: after tokens T-1..t). Dense batches and state slots only (not cu_seqlens).
  bool reverse = false;
  /// bf16 x, Bm, Cm and the chunked form only: Bf16Compute::dot runs each chunk's output product
  /// (the state read-out and the intra-chunk term) on AVX512-BF16 dot products, its fp32
  /// operands rounded to bf16, where the target has them and P is a multiple of 16; fp32
  /// products elsewhere (and for fp32 / f16 inputs). States and accumulation stay fp32.
  /// Accuracy: docs/operators.md section 3.
  Bf16Compute bf16_compute = Bf16Compute::fp32;
};

/// Prefill arguments. Optional views are empty (default-constructed) when not given. E is the
/// storage type of x, Bm and Cm (SSD's v, k and q): float (SsdInputs), or seqmix::bf16 /
/// seqmix::f16, which every form widens row by row as it loads each chunk or token (no fp32 copy
/// of the inputs); dt, A, D, z, dt_bias, states and outputs stay fp32.
template <class E>
struct SsdInputsOf {
  static_assert(std::is_same_v<E, float> || std::is_same_v<E, bf16> || std::is_same_v<E, f16>,
                "SsdInputsOf: x, Bm and Cm are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<E, 4> x;                  ///< [B,T,H,P]
  ConstView<float, 3> dt;             ///< [B,T,H], before bias and softplus
  ConstView<float, 1> A;              ///< [H], <= 0 (Mamba-2 uses A = -exp(A_log))
  ConstView<E, 4> Bm;                 ///< [B,T,G,N], G divides H; head h uses group h / (H/G)
  ConstView<E, 4> Cm;                 ///< [B,T,G,N]
  ConstView<float, 1> D = {};         ///< [H], optional skip connection
  ConstView<float, 4> z = {};         ///< [B,T,H,P], optional gate: y *= silu(z)
  ConstView<float, 1> dt_bias = {};   ///< [H], optional
  ConstView<float, 4> initial_state = {}; ///< [N or S, H,P,N], optional (zero state if absent)
  SequenceBatch batch = {};           ///< optional: packed sequences, state slots (core/batch.hpp)
};

/// Prefill arguments with fp32 x, Bm and Cm (SsdInputsOf).
using SsdInputs = SsdInputsOf<float>;

/// y must not overlap any input (ShapeError). final_state may be the very same view as
/// initial_state (the state is then carried in place, e.g. a slot pool).
struct SsdOutputs {
  TensorView<float, 4> y;            ///< [B,T,H,P]
  TensorView<float, 4> final_state = {}; ///< [N or S, H,P,N], optional
  /// [Bt,Tt,H,P,N], optional (speculative verify): the state after each token. [Bt,Tt] are x's
  /// first two dims. Given, the prefill runs the recurrent form.
  TensorView<float, 5> token_states = {};
};

/// Decode-step arguments: one token per batch row. E: the storage type of x, Bm and Cm (float,
/// seqmix::bf16 or seqmix::f16; the token's rows are widened as they are loaded).
template <class E>
struct SsdStepInputsOf {
  static_assert(std::is_same_v<E, float> || std::is_same_v<E, bf16> || std::is_same_v<E, f16>,
                "SsdStepInputsOf: x, Bm and Cm are stored as float, seqmix::bf16 or seqmix::f16");
  ConstView<E, 3> x;            ///< [B,H,P]
  ConstView<float, 2> dt;       ///< [B,H]
  ConstView<float, 1> A;        ///< [H]
  ConstView<E, 3> Bm;           ///< [B,G,N]
  ConstView<E, 3> Cm;           ///< [B,G,N]
  ConstView<float, 1> D = {};   ///< [H], optional
  ConstView<float, 3> z = {};   ///< [B,H,P], optional
  ConstView<float, 1> dt_bias = {}; ///< [H], optional
  SequenceBatch batch = {};     ///< optional: state_indices [B] into the state pool, has_initial_state [B]
};

/// Decode-step arguments with fp32 x, Bm and Cm (SsdStepInputsOf).
using SsdStepInputs = SsdStepInputsOf<float>;

/// y must not overlap state or any input.
struct SsdStepOutputs {
  TensorView<float, 3> y;      ///< [B,H,P]
  TensorView<float, 4> state;  ///< [B or S, H,P,N], read and then updated in place (required)
};

namespace detail {

struct SsdDims {
  index_t B, T, H, P, N, G;
};

// softplus as mamba_ssm computes it: the identity above 20, where log1p(exp(x)) == x in fp32.
inline float ssd_softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

inline float ssd_silu(float v) { return v / (1.f + std::exp(-v)); }

// The effective step size of head h: bias, then the optional softplus.
inline float ssd_dt(float dt, const ConstView<float, 1>& dt_bias, index_t h, bool softplus) {
  if (dt_bias.has_value()) dt += dt_bias(h);
  return softplus ? ssd_softplus(dt) : dt;
}

// Checks shared by prefill and step: A finite and <= 0 (a positive A makes the state grow
// without bound and the chunked form's decays overflow), and the option values.
// The message is built only on failure: the step validates on every token and must not allocate.
inline void check_ssd_parameters(const ArgCheck& check, const ConstView<float, 1>& A) {
  for (index_t h = 0; h < A.size(0); ++h) {
    check.finite(A(h), "A");
    if (!(A(h) <= 0.f))
      check.fail("A", "must be <= 0 (a decay rate), got " + std::to_string(A(h)) + " at head " + std::to_string(h));
  }
}

// A validated call: the sizes and the map from sequences to tokens and state rows.
struct SsdCall {
  SsdDims dims;
  SequenceMap map;
};

template <class E>
SsdCall validate_ssd(const char* op, const SsdInputsOf<E>& in, const SsdOutputs& out, const SsdOptions& options) {
  const ArgCheck check(op);
  const index_t B = in.x.size(0), T = in.x.size(1), H = in.x.size(2), P = in.x.size(3);
  const index_t G = in.Bm.size(2), N = in.Bm.size(3);
  check.shape("x", in.x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,P");
  check.shape("dt", in.dt, std::array<index_t, 3>{B, T, H}, "B,T,H");
  check.shape("A", in.A, std::array<index_t, 1>{H}, "H");
  check.shape("Bm", in.Bm, std::array<index_t, 4>{B, T, -1, -1}, "B,T,G,N");
  if (H > 0) check.divides(G, H, "Bm", "groups (dimension 2)");
  check.shape("Cm", in.Cm, std::array<index_t, 4>{B, T, G, N}, "B,T,G,N");
  check.optional_shape("D", in.D, std::array<index_t, 1>{H}, "H");
  check.optional_shape("z", in.z, std::array<index_t, 4>{B, T, H, P}, "B,T,H,P");
  check.optional_shape("dt_bias", in.dt_bias, std::array<index_t, 1>{H}, "H");
  check.optional_shape("initial_state", in.initial_state, std::array<index_t, 4>{-1, H, P, N}, "N,H,P,N");
  check.shape("y", out.y, std::array<index_t, 4>{B, T, H, P}, "B,T,H,P");
  const index_t rows = in.initial_state.has_value() ? in.initial_state.size(0) : -1;
  check.optional_shape("final_state", out.final_state, std::array<index_t, 4>{rows, H, P, N}, "N,H,P,N");
  check.optional_shape("token_states", out.token_states, std::array<index_t, 5>{B, T, H, P, N}, "Bt,Tt,H,P,N");
  if (options.chunk_size < 1)  // the message is formatted only on failure
    check.fail("options.chunk_size", "must be >= 1, got " + std::to_string(options.chunk_size));
  check_enum(check.op(), "options.algorithm", options.algorithm, 3);
  check_enum(check.op(), "options.bf16_compute", options.bf16_compute, 2);
  check_ssd_parameters(check, in.A);
  const index_t state_rows = rows >= 0 ? rows : (out.final_state.has_value() ? out.final_state.size(0) : -1);
  const SequenceMap map = SequenceMap::make(check, in.batch, B, T, in.initial_state.has_value(), state_rows);
  check_prefill_aliasing(check, out.y, in.initial_state, out.final_state, out.token_states, named("x", in.x),
                         named("dt", in.dt), named("Bm", in.Bm), named("Cm", in.Cm), named("z", in.z));
  return {{B, T, H, P, N, G}, map};
}

struct SsdStepCall {
  SsdDims dims;
  StepSlots map;
};

// Allocation-free on success (it runs on every token).
template <class E>
SsdStepCall validate_ssd_step(const ArgCheck& check, const SsdStepInputsOf<E>& in, const SsdStepOutputs& out) {
  const index_t B = in.x.size(0), H = in.x.size(1), P = in.x.size(2);
  const index_t G = in.Bm.size(1), N = in.Bm.size(2);
  check.shape("x", in.x, std::array<index_t, 3>{-1, -1, -1}, "B,H,P");
  check.shape("dt", in.dt, std::array<index_t, 2>{B, H}, "B,H");
  check.shape("A", in.A, std::array<index_t, 1>{H}, "H");
  check.shape("Bm", in.Bm, std::array<index_t, 3>{B, -1, -1}, "B,G,N");
  if (H > 0) check.divides(G, H, "Bm", "groups (dimension 1)");
  check.shape("Cm", in.Cm, std::array<index_t, 3>{B, G, N}, "B,G,N");
  check.optional_shape("D", in.D, std::array<index_t, 1>{H}, "H");
  check.optional_shape("z", in.z, std::array<index_t, 3>{B, H, P}, "B,H,P");
  check.optional_shape("dt_bias", in.dt_bias, std::array<index_t, 1>{H}, "H");
  check.shape("y", out.y, std::array<index_t, 3>{B, H, P}, "B,H,P");
  check.shape("state", out.state, std::array<index_t, 4>{-1, H, P, N}, "S,H,P,N");
  check_ssd_parameters(check, in.A);
  const StepSlots map = ssm_step_slots(check, in.batch, B, out.state.size(0));
  check_step_aliasing(check, out.y, named("state", out.state), named("x", in.x), named("dt", in.dt), named("Bm", in.Bm),
                      named("Cm", in.Cm), named("z", in.z));
  return {{B, 1, H, P, N, G}, map};
}

// A reverse call as the forward call on reversed views (core/direction.hpp).
template <class E>
std::pair<SsdInputsOf<E>, SsdOutputs> reversed_call(const char* op, SsdInputsOf<E> in, SsdOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.x, in.dt, in.Bm, in.Cm, in.z, out.y, out.token_states);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, sequence by sequence. Single-threaded; `executor` is accepted
/// for a uniform signature. The state of one (sequence, head) lives in a local buffer, so
/// final_state may alias initial_state. x, Bm and Cm may be stored as float, bf16 or f16
/// (SsdInputsOf): each value is widened where it is read.
template <class E>
void ssd(const SsdInputsOf<E>& in, const SsdOutputs& out, const SsdOptions& options = {},
         const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("reference::ssd", in, out);
    // Qualified: unqualified, argument-dependent lookup would also find the fast 16-bit overload.
    return reference::ssd<E>(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const auto call = detail::validate_ssd("reference::ssd", in, out, options);
  const auto [B, T_all, H, P, N, G] = call.dims;
  (void)B, (void)T_all;
  const index_t heads_per_group = H / G;
  std::vector<float> state(static_cast<std::size_t>(P * N));
  // N through a plain variable: a lambda may not capture a structured binding before C++20
  // (clang rejects it).
  const index_t state_n = N;
  auto s = [&](index_t p, index_t n) -> float& { return state[static_cast<std::size_t>(p * state_n + n)]; };
  for (index_t q = 0; q < call.map.sequences(); ++q) {
    const SequenceSpan seq = call.map[q];
    if (seq.state_row < 0) continue;  // padding sequence: nothing read or written
    const index_t b = seq.batch_row;
    for (index_t h = 0; h < H; ++h) {
      const index_t g = h / heads_per_group;
      for (index_t p = 0; p < P; ++p)
        for (index_t n = 0; n < N; ++n) s(p, n) = seq.read_state ? in.initial_state(seq.state_row, h, p, n) : 0.f;
      for (index_t t = seq.token_begin; t < seq.token_begin + seq.tokens; ++t) {
        const float dt = detail::ssd_dt(in.dt(b, t, h), in.dt_bias, h, options.dt_softplus);
        const float decay = std::exp(dt * in.A(h));
        for (index_t p = 0; p < P; ++p) {
          const float x = static_cast<float>(in.x(b, t, h, p));
          float y = 0.f;
          for (index_t n = 0; n < N; ++n) {
            s(p, n) = decay * s(p, n) + dt * x * static_cast<float>(in.Bm(b, t, g, n));
            y += s(p, n) * static_cast<float>(in.Cm(b, t, g, n));
          }
          if (in.D.has_value()) y += in.D(h) * x;
          if (in.z.has_value()) y *= detail::ssd_silu(in.z(b, t, h, p));
          out.y(b, t, h, p) = y;
        }
        if (out.token_states.has_value())
          for (index_t p = 0; p < P; ++p)
            for (index_t n = 0; n < N; ++n) out.token_states(b, t, h, p, n) = s(p, n);
      }
      if (out.final_state.has_value())
        for (index_t p = 0; p < P; ++p)
          for (index_t n = 0; n < N; ++n) out.final_state(seq.state_row, h, p, n) = s(p, n);
    }
  }
}

/// The definition on fp32 x, Bm and Cm (the overload braced argument lists pick).
inline void ssd(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                const Executor& executor = serial_executor()) {
  ssd<float>(in, out, options, executor);
}

}  // namespace reference
}  // namespace seqmix
