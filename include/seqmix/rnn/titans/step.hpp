// titans, decode step: one token per batch row, memory M and momentum S [B,HV,K,V] updated in
// place. Per (batch, value head) two sweeps: the first reads err = M^T k - v, the second updates
// S and M row by row and accumulates y = M^T q while the rows are in L1. Threaded over B*HV.
// The recurrent prefill (chunked.hpp) runs the same token kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/rnn/titans/reference.hpp"

namespace seqmix {
namespace detail {

// One (batch, head) token: scratch for the token's operands.
struct TitansToken {
  std::vector<float> q, k, v, err, y, M, S;  // M, S: a contiguous copy when the state's rows are strided
  // Moneta (TitansRetention::lq_normalized): sum |A|^q of the state as the previous token left it,
  // so the recurrent prefill sums once per token; < 0 when unknown (a row's first token, a step).
  double lq_sum = -1.0;
  TitansToken(index_t K, index_t V)
      : q(static_cast<std::size_t>(K)), k(static_cast<std::size_t>(K)), v(static_cast<std::size_t>(V)),
        err(static_cast<std::size_t>(V)), y(static_cast<std::size_t>(V)) {}
};

// The recurrence on one token: M, S [K,V] with row strides ms, ss (unit column stride); q, k, v,
// err and y in `s`. y = scale * M_t^T q.
inline void titans_token(TitansToken& s, float* M, index_t ms, float* S, index_t ss, index_t K, index_t V, float alpha,
                         float eta, float theta, float scale, TitansLoss loss = TitansLoss::l2, float delta = 1.f) {
  using Vec = simd::Batch<float>;
  const index_t vend = simd::vector_end(V);
  float* __restrict err = s.err.data();
  float* __restrict y = s.y.data();
  const float* __restrict v = s.v.data();
  for (index_t c = 0; c < V; ++c) err[c] = -v[c], y[c] = 0.f;
  for (index_t r = 0; r < K; ++r) {
    const float* __restrict row = M + r * ms;
    const Vec kr(s.k[static_cast<std::size_t>(r)]);
    for (index_t c = 0; c < vend; c += simd::kWidth) simd::store(err + c, simd::fma(kr, simd::load(row + c), simd::load(err + c)));
    for (index_t c = vend; c < V; ++c) err[c] += s.k[static_cast<std::size_t>(r)] * row[c];
  }
  // err becomes f'(err) / 2 (l2: err itself), so that the update below is S = eta S - 2 theta k err^T.
  if (loss != TitansLoss::l2)
    for (index_t c = 0; c < V; ++c) err[c] = 0.5f * titans_loss_grad<float>(loss, err[c], delta);
  const float a = 1.f - alpha;
  const Vec a_v(a), eta_v(eta);
  for (index_t r = 0; r < K; ++r) {
    float* __restrict mrow = M + r * ms;
    float* __restrict srow = S + r * ss;
    const float g = -2.f * theta * s.k[static_cast<std::size_t>(r)], qr = s.q[static_cast<std::size_t>(r)];
    const Vec g_v(g), q_v(qr);
    for (index_t c = 0; c < vend; c += simd::kWidth) {
      const Vec sn = simd::fma(g_v, simd::load(err + c), eta_v * simd::load(srow + c));
      const Vec mn = simd::fma(a_v, simd::load(mrow + c), sn);
      simd::store(srow + c, sn);
      simd::store(mrow + c, mn);
      simd::store(y + c, simd::fma(q_v, mn, simd::load(y + c)));
    }
    for (index_t c = vend; c < V; ++c) {
      srow[c] = eta * srow[c] + g * err[c];
      mrow[c] = a * mrow[c] + srow[c];
      y[c] += qr * mrow[c];
    }
  }
  for (index_t c = 0; c < V; ++c) y[c] *= scale;
}

// Memora's softmax over each slice of the [K,V] memory M (row stride ms) in place, then
// y = scale * M^T q. colmax, colsum: V floats of scratch (the key axis only).
inline void titans_softmax_read(float* M, index_t ms, index_t K, index_t V, TitansSoftmaxAxis axis, const float* q,
                                float scale, float* y, float* colmax, float* colsum) {
  for (index_t c = 0; c < V; ++c) y[c] = 0.f;
  if (axis == TitansSoftmaxAxis::value) {
    for (index_t r = 0; r < K; ++r) {
      float* row = M + r * ms;
      float mx = row[0], sum = 0.f;
      for (index_t c = 1; c < V; ++c) mx = std::max(mx, row[c]);
      for (index_t c = 0; c < V; ++c) sum += (row[c] = std::exp(row[c] - mx));
      const float inv = 1.f / sum, qr = q[r];
      for (index_t c = 0; c < V; ++c) row[c] *= inv, y[c] += qr * row[c];
    }
  } else {
    // Column slices, kept row-major: a max pass, an exp pass, a normalize-and-read pass.
    for (index_t c = 0; c < V; ++c) colmax[c] = M[c], colsum[c] = 0.f;
    for (index_t r = 1; r < K; ++r)
      for (index_t c = 0; c < V; ++c) colmax[c] = std::max(colmax[c], M[r * ms + c]);
    using Vec = simd::Batch<float>;
    const index_t vend = simd::vector_end(V);
    for (index_t r = 0; r < K; ++r) {
      float* row = M + r * ms;
      for (index_t c = 0; c < vend; c += simd::kWidth) {
        const Vec e = simd::exp(simd::load(row + c) - simd::load(colmax + c));
        simd::store(row + c, e);
        simd::store(colsum + c, simd::load(colsum + c) + e);
      }
      for (index_t c = vend; c < V; ++c) colsum[c] += (row[c] = std::exp(row[c] - colmax[c]));
    }
    for (index_t c = 0; c < V; ++c) colsum[c] = 1.f / colsum[c];
    for (index_t r = 0; r < K; ++r) {
      float* row = M + r * ms;
      const float qr = q[r];
      for (index_t c = 0; c < V; ++c) row[c] *= colsum[c], y[c] += qr * row[c];
    }
  }
  for (index_t c = 0; c < V; ++c) y[c] *= scale;
}

// The recurrence with a Miras retention (TitansRetention::lq_normalized or softmax_kl) on one
// token, as titans_token; M holds Moneta's accumulator A or Memora's W. Scalar loops (the exp /
// log / pow per entry dominate); the error pass also sums |A|^q for the read factor of A_{t-1},
// the update pass that of A_t (the error pass reuses s.lq_sum when the previous token left it).
// Moneta's sums run in double (|A|^4 leaves float's range early).
inline void titans_token_retained(TitansToken& s, float* M, index_t ms, float* S, index_t ss, index_t K, index_t V,
                                  float alpha, float eta, float theta, float scale, const TitansOptions& options,
                                  float delta) {
  const bool moneta = options.retention == TitansRetention::lq_normalized;
  const double q = options.retention_q;
  float* err = s.err.data();
  float* y = s.y.data();
  const float* v = s.v.data();
  const float* k = s.k.data();
  for (index_t c = 0; c < V; ++c) err[c] = 0.f, y[c] = 0.f;
  const bool known = s.lq_sum >= 0.0;
  double sum = known ? s.lq_sum : 0.0;
  for (index_t r = 0; r < K; ++r) {
    const float* row = M + r * ms;
    const float kr = k[r];
    for (index_t c = 0; c < V; ++c) err[c] += kr * row[c];
    if (moneta && !known)
      for (index_t c = 0; c < V; ++c) sum += titans_abs_pow<double>(row[c], q);
  }
  const float f = moneta ? static_cast<float>(titans_lq_read_factor(sum, q)) : 1.f;
  for (index_t c = 0; c < V; ++c) err[c] = titans_loss_grad<float>(options.loss, f * err[c] - v[c], delta);
  const float a = 1.f - alpha;
  double sum_new = 0.0;
  for (index_t r = 0; r < K; ++r) {
    float* mrow = M + r * ms;
    float* srow = S + r * ss;
    const float g = -theta * k[r], qr = s.q[static_cast<std::size_t>(r)];
    for (index_t c = 0; c < V; ++c) srow[c] = eta * srow[c] + g * err[c];
    if (moneta) {
      for (index_t c = 0; c < V; ++c) {
        mrow[c] = a * mrow[c] + srow[c];
        sum_new += titans_abs_pow<double>(mrow[c], q);
        y[c] += qr * mrow[c];
      }
    } else if (a == 0.f) {
      for (index_t c = 0; c < V; ++c) mrow[c] = srow[c];  // log W forgotten entirely (0 * log 0 would be NaN)
    } else {
      for (index_t c = 0; c < V; ++c) mrow[c] = a * std::log(mrow[c]) + srow[c];
    }
  }
  if (moneta) {
    s.lq_sum = sum_new;
    const float fy = scale * static_cast<float>(titans_lq_read_factor(sum_new, q));
    for (index_t c = 0; c < V; ++c) y[c] *= fy;
    return;
  }
  // err and v are spent: they serve as the column scratch.
  titans_softmax_read(M, ms, K, V, options.softmax_axis, s.q.data(), scale, y, err, s.v.data());
}

// One token with the retention of `options`: titans_token (decay) or titans_token_retained.
inline void titans_token_any(TitansToken& s, float* M, index_t ms, float* S, index_t ss, index_t K, index_t V,
                             float alpha, float eta, float theta, float scale, const TitansOptions& options, float delta) {
  if (options.retention == TitansRetention::decay)
    titans_token(s, M, ms, S, ss, K, V, alpha, eta, theta, scale, options.loss, delta);
  else
    titans_token_retained(s, M, ms, S, ss, K, V, alpha, eta, theta, scale, options, delta);
}

// The step's per-thread token scratch, built on a thread's first call and rebuilt only when K or
// V change (the strided-state copies M, S grow once): no heap allocation after warm-up
// (tests/alloc/alloc_titans.cpp).
inline TitansToken& titans_step_scratch(index_t K, index_t V) {
  thread_local std::optional<TitansToken> scratch;
  if (!scratch || scratch->q.size() != static_cast<std::size_t>(K) || scratch->v.size() != static_cast<std::size_t>(V))
    scratch.emplace(K, V);
  return *scratch;
}

// A fresh sequence's state (has_initial_state false): zero momentum and memory, Memora's uniform
// memory (TitansRetention::softmax_kl), as a prefill without initial states starts.
inline void titans_reset_state(const TensorView<float, 2>& M, const TensorView<float, 2>& S, const TitansOptions& options) {
  const index_t K = M.size(0), V = M.size(1);
  const float fresh = options.retention != TitansRetention::softmax_kl ? 0.f
                      : 1.f / static_cast<float>(options.softmax_axis == TitansSoftmaxAxis::key ? K : V);
  for (index_t r = 0; r < K; ++r)
    for (index_t c = 0; c < V; ++c) M(r, c) = fresh, S(r, c) = 0.f;
}

}  // namespace detail

/// One decode token per batch row: y = scale * M_t^T q with M and S updated in place (the
/// recurrence of reference.hpp). Threaded over (batch, value head). With in.batch.state_indices
/// the states are pools [P,HV,K,V] and row b updates pool row state_indices[b] (-1: padding, its
/// y and states untouched); in.batch.has_initial_state[b] false resets row b's state first.
inline void titans_step(const TitansStepInputs& in, const TitansStepOutputs& out, const TitansOptions& options = {},
                        const Executor& executor = serial_executor()) {
  static const ArgCheck check("titans_step");
  const detail::TitansDims d = detail::validate_titans_step(check, in, out, options);
  const index_t K = d.K, V = d.V;
  parallel_for(executor, d.B * d.HV, 1, [&](index_t begin, index_t end) {
    detail::TitansToken& s = detail::titans_step_scratch(K, V);
    for (index_t item = begin; item < end; ++item) {
      const index_t b = item / d.HV, hv = item % d.HV, h = hv / d.group();
      const index_t p = in.batch.slotted() ? in.batch.state_indices[b] : b;  // the states' (pool) row
      if (p < 0) continue;                                                 // padding row: untouched
      const TensorView<float, 2> M = out.memory[p][hv], S = out.momentum[p][hv];
      if (in.batch.has_initial_state.has_value() && !in.batch.has_initial_state[b]) detail::titans_reset_state(M, S, options);
      for (index_t r = 0; r < K; ++r) s.q[static_cast<std::size_t>(r)] = in.q(b, h, r), s.k[static_cast<std::size_t>(r)] = in.k(b, h, r);
      for (index_t c = 0; c < V; ++c) s.v[static_cast<std::size_t>(c)] = in.v(b, hv, c);
      s.lq_sum = -1.0;  // the state comes from outside
      const bool direct = M.stride(1) == 1 && S.stride(1) == 1;
      float* mp = M.data();
      float* sp = S.data();
      index_t ms = M.stride(0), ss = S.stride(0);
      if (!direct) {
        s.M.resize(static_cast<std::size_t>(K * V)), s.S.resize(static_cast<std::size_t>(K * V));
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c)
            s.M[static_cast<std::size_t>(r * V + c)] = M(r, c), s.S[static_cast<std::size_t>(r * V + c)] = S(r, c);
        mp = s.M.data(), sp = s.S.data(), ms = ss = V;
      }
      detail::titans_token_any(s, mp, ms, sp, ss, K, V, in.alpha(b, hv), in.eta(b, hv), in.theta(b, hv), d.scale,
                               options, in.huber_delta.has_value() ? in.huber_delta(b, hv) : options.huber_delta);
      if (!direct)
        for (index_t r = 0; r < K; ++r)
          for (index_t c = 0; c < V; ++c)
            M(r, c) = s.M[static_cast<std::size_t>(r * V + c)], S(r, c) = s.S[static_cast<std::size_t>(r * V + c)];
      for (index_t c = 0; c < V; ++c) out.y(b, hv, c) = s.y[static_cast<std::size_t>(c)];
    }
  });
}

}  // namespace seqmix
