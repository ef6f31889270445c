// ttt_linear and ttt_mlp, decode steps: one token per (batch row, head) as a mini-batch of one, the inner
// weights w updated in place. Definition: reference.hpp.
#pragma once

#include <optional>

#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn/ttt/fast.hpp"
#include "seqmix/rnn/ttt/reference.hpp"

namespace seqmix {
namespace detail {

// The steps' per-thread scratch, built on a thread's first call and rebuilt only when the sizes
// change: a step makes no heap allocation after warm-up (tests/alloc/alloc_ttt.cpp).
inline TttLinearScratch& ttt_linear_step_scratch(index_t K) {
  thread_local std::optional<TttLinearScratch> scratch;
  if (!scratch || scratch->K != K) scratch.emplace(K, 1);
  return *scratch;
}

inline TttMlpScratch& ttt_mlp_step_scratch(index_t K, index_t M) {
  thread_local std::optional<TttMlpScratch> scratch;
  if (!scratch || scratch->K != K || scratch->M != M) scratch.emplace(K, M, 1);
  return *scratch;
}

// Token row b's weights row: its slot with batch.state_indices (-1: padding), else b.
inline index_t ttt_step_row(const SequenceBatch& batch, index_t b) {
  return batch.state_indices.has_value() ? batch.state_indices[b] : b;
}

}  // namespace detail

/// One TTT-Linear token per (batch row, head): W -= eta grad l(W; k, v), then z = q + LN(q W)
/// with the updated W (with options.inner_bias = trained also b -= eta dl/dz, out.b [B,H,K] or
/// [P,H,K] in place, and z = q + LN(q W + b)). This is ttt_linear with mini_batch = 1 (and no token_scale: fold a
/// position scale into eta), not a token of a b = 16 prefill: inside a mini-batch of 16 every
/// gradient is taken at the mini-batch's first weights. Threaded over (batch, head) rows. With
/// in.batch.state_indices, w is a pool [P,H,K,K] and row b updates pool row state_indices[b]
/// (-1: padding, untouched); has_initial_state[b] false starts that row from W = 0. No heap
/// allocation after a thread's first call.
template <class Deferred = void>
void ttt_linear_step(const TttLinearStepInputs& in, const TttLinearStepOutputs& out,
                     const TttOptions& options = {}, const Executor& executor = serial_executor()) {
  static const ArgCheck check("ttt_linear_step");
  const detail::TttDims d = detail::validate_ttt_linear_step(check, in, out, options);
  const index_t K = d.K;
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    detail::TttLinearScratch& s = detail::ttt_linear_step_scratch(K);
    s.has_bias = options.inner_bias == TttInnerBias::trained;
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.H, h = row % d.H;
      const index_t p = detail::ttt_step_row(in.batch, b);  // the weights' (pool) row
      if (p < 0) continue;                                   // padding row: z and w untouched
      const bool fresh = in.batch.has_initial_state.has_value() && !in.batch.has_initial_state[b];
      s.ln.load(in.ln_weight, in.ln_bias, h);
      for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j < K; ++j) s.W[static_cast<std::size_t>(i * K + j)] = fresh ? 0.f : out.w(p, h, i, j);
      if (s.has_bias)
        for (index_t j = 0; j < K; ++j) s.bias[static_cast<std::size_t>(j)] = fresh ? 0.f : out.b(p, h, j);
      detail::ttt_load_step(s, in, b, h);
      detail::ttt_linear_minibatch<Deferred>(s, 1, nullptr, options.ln_eps);
      for (index_t j = 0; j < K; ++j) out.z(b, h, j) = s.Zq[static_cast<std::size_t>(j)];
      for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j < K; ++j) out.w(p, h, i, j) = s.W[static_cast<std::size_t>(i * K + j)];
      if (s.has_bias)
        for (index_t j = 0; j < K; ++j) out.b(p, h, j) = s.bias[static_cast<std::size_t>(j)];
    }
  });
}

/// One TTT-MLP token per (batch row, head): (W1, W2) -= eta grad l(W1, W2; k, v), then
/// z = q + LN(gelu(q W1) W2) with the updated weights (with options.inner_bias = trained also
/// b1, b2 -= eta dl/db, out.b1 and out.b2 in place, and z = q + LN(gelu(q W1 + b1) W2 + b2));
/// ttt_mlp with mini_batch = 1 (see
/// ttt_linear_step). Threaded over (batch, head) rows; slots as ttt_linear_step (w1 [P,H,K,M],
/// w2 [P,H,M,K]; has_initial_state refused). No heap allocation after a thread's first call.
template <class Deferred = void>
void ttt_mlp_step(const TttMlpStepInputs& in, const TttMlpStepOutputs& out, const TttOptions& options = {},
                  const Executor& executor = serial_executor()) {
  static const ArgCheck check("ttt_mlp_step");
  index_t M = 0;
  const detail::TttDims d = detail::validate_ttt_mlp_step(check, in, out, options, &M);
  const index_t K = d.K;
  parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
    detail::TttMlpScratch& s = detail::ttt_mlp_step_scratch(K, M);
    s.has_bias = options.inner_bias == TttInnerBias::trained;
    for (index_t row = begin; row < end; ++row) {
      const index_t b = row / d.H, h = row % d.H;
      const index_t p = detail::ttt_step_row(in.batch, b);  // the weights' (pool) row
      if (p < 0) continue;                                   // padding row: z and weights untouched
      s.ln.load(in.ln_weight, in.ln_bias, h);
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          s.W1[static_cast<std::size_t>(i * M + m)] = out.w1(p, h, i, m);
          s.W2[static_cast<std::size_t>(m * K + i)] = out.w2(p, h, m, i);
        }
      if (s.has_bias) {
        for (index_t m = 0; m < M; ++m) s.b1[static_cast<std::size_t>(m)] = out.b1(p, h, m);
        for (index_t j = 0; j < K; ++j) s.b2[static_cast<std::size_t>(j)] = out.b2(p, h, j);
      }
      detail::ttt_load_step(s, in, b, h);
      detail::ttt_mlp_minibatch<Deferred>(s, 1, nullptr, options.ln_eps);
      for (index_t j = 0; j < K; ++j) out.z(b, h, j) = s.Zq[static_cast<std::size_t>(j)];
      for (index_t i = 0; i < K; ++i)
        for (index_t m = 0; m < M; ++m) {
          out.w1(p, h, i, m) = s.W1[static_cast<std::size_t>(i * M + m)];
          out.w2(p, h, m, i) = s.W2[static_cast<std::size_t>(m * K + i)];
        }
      if (s.has_bias) {
        for (index_t m = 0; m < M; ++m) out.b1(p, h, m) = s.b1[static_cast<std::size_t>(m)];
        for (index_t j = 0; j < K; ++j) out.b2(p, h, j) = s.b2[static_cast<std::size_t>(j)];
      }
    }
  });
}

}  // namespace seqmix
