// The recurrent form of the family: one token at a time, vectorized over the value dimension.
// Both the decode steps and the recurrent prefill run this kernel. Internal.
//
// Per token and state row r (a key feature), with s = S[r][:] and the value row v:
//   inclusive (GLA, linear attention):  s = w_r * s + k_r * v;   o += q_r * s
//   exclusive (rwkv6):                  o += q_r * s;            s = w_r * s + k_r * v
// and rwkv6 adds (q . (u * k)) v to o at the end. That is 3 vector ops per state element (2
// without decay), with o and v held in registers across all rows of a column tile.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/detail/head.hpp"

namespace seqmix::detail::la {

// One token's operands, all contiguous.
struct TokenOperands {
  const float* q;      // [Kf], scale folded in
  const float* k;      // [Kf]
  const float* v;      // [ncols]
  const float* w;      // decays exp(g): [Kf] (w_stride 1), one value (w_stride 0), or nullptr
  index_t w_stride;
  float bonus;         // exclusive readout: q . (u * k); 0 otherwise
};

// Columns [c0, c0 + NB*kWidth) of the state, all Kf rows. NB batches of o and v stay in
// registers; 4 batches (64 floats on AVX-512) keep the 3*NB live values below 32 registers.
template <int NB, bool kDecay, bool kExclusive>
inline void recurrent_tile(float* S, index_t ldS, index_t Kf, index_t c0, const TokenOperands& x, float* o) {
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> vv[NB], acc[NB];
  for (int b = 0; b < NB; ++b) {
    vv[b] = simd::load(x.v + c0 + b * W);
    acc[b] = Batch<float>(0.f);
  }
  for (index_t r = 0; r < Kf; ++r) {
    float* row = S + r * ldS + c0;
    const Batch<float> kr(x.k[r]), qr(x.q[r]);
    const Batch<float> wr(kDecay ? x.w[r * x.w_stride] : 1.f);
    for (int b = 0; b < NB; ++b) {
      Batch<float> s = simd::load(row + b * W);
      if constexpr (kExclusive) acc[b] = simd::fma(qr, s, acc[b]);
      if constexpr (kDecay)
        s = simd::fma(kr, vv[b], wr * s);
      else
        s = simd::fma(kr, vv[b], s);
      if constexpr (!kExclusive) acc[b] = simd::fma(qr, s, acc[b]);
      simd::store(row + b * W, s);
    }
  }
  for (int b = 0; b < NB; ++b) {
    if constexpr (kExclusive) acc[b] = simd::fma(Batch<float>(x.bonus), vv[b], acc[b]);
    simd::store(o + c0 + b * W, acc[b]);
  }
}

// The scalar tail: columns [c0, ncols).
template <bool kDecay, bool kExclusive>
inline void recurrent_tail(float* S, index_t ldS, index_t Kf, index_t c0, index_t ncols, const TokenOperands& x,
                           float* o) {
  for (index_t c = c0; c < ncols; ++c) o[c] = kExclusive ? x.bonus * x.v[c] : 0.f;
  for (index_t r = 0; r < Kf; ++r) {
    float* row = S + r * ldS;
    const float wr = kDecay ? x.w[r * x.w_stride] : 1.f;
    for (index_t c = c0; c < ncols; ++c) {
      float s = row[c];
      if constexpr (kExclusive) o[c] += x.q[r] * s;
      s = wr * s + x.k[r] * x.v[c];
      if constexpr (!kExclusive) o[c] += x.q[r] * s;
      row[c] = s;
    }
  }
}

template <bool kDecay, bool kExclusive>
inline void recurrent_token_impl(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands& x, float* o) {
  constexpr index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + 4 * W <= ncols; c += 4 * W) recurrent_tile<4, kDecay, kExclusive>(S, ldS, Kf, c, x, o);
  for (; c + W <= ncols; c += W) recurrent_tile<1, kDecay, kExclusive>(S, ldS, Kf, c, x, o);
  if (c < ncols) recurrent_tail<kDecay, kExclusive>(S, ldS, Kf, c, ncols, x, o);
}

// Advances the state S ([Kf, ncols], rows ldS apart, contiguous columns) by one token and writes
// o[0..ncols). `exclusive` selects the rwkv6 readout.
inline void recurrent_token(float* S, index_t ldS, index_t Kf, index_t ncols, const TokenOperands& x, bool exclusive,
                            float* o) {
  const bool decay = x.w != nullptr;
  if (decay && exclusive) return recurrent_token_impl<true, true>(S, ldS, Kf, ncols, x, o);
  if (decay) return recurrent_token_impl<true, false>(S, ldS, Kf, ncols, x, o);
  if (exclusive) return recurrent_token_impl<false, true>(S, ldS, Kf, ncols, x, o);
  recurrent_token_impl<false, false>(S, ldS, Kf, ncols, x, o);
}

// Per-thread scratch of the recurrent form, allocated once per parallel block.
class RecurrentWorkspace {
 public:
  RecurrentWorkspace(index_t K, index_t Kf, index_t Vp)
      : buffer_(static_cast<std::size_t>(2 * Kf + std::max(Kf, K) + 2 * Vp)), Kf_(Kf), Vp_(Vp) {}
  float* q() { return buffer_.data(); }
  float* k() { return q() + Kf_; }
  float* v() { return k() + Kf_; }
  float* o() { return v() + Vp_; }
  float* w() { return o() + Vp_; }

 private:
  AlignedVector<float> buffer_;
  index_t Kf_, Vp_;
};

// out[0..n) = factor * x[0..n), vectorized (x contiguous).
inline void scale_copy(const float* x, float factor, float* out, index_t n) {
  const simd::Batch<float> f(factor);
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, f * simd::load(x + i));
  for (index_t i = nv; i < n; ++i) out[i] = factor * x[i];
}

// out[0..n) = exp(x[0..n)), vectorized (x contiguous).
inline void exp_copy(const float* x, float* out, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, simd::exp(simd::load(x + i)));
  for (index_t i = nv; i < n; ++i) out[i] = std::exp(x[i]);
}

// Loads token t of a head: phi(q)*scale, phi(k), v (+1 column), decays, bonus. Contiguous rows
// with the identity map are used in place (k, v) or with one vector pass (q, g): this per-token
// work is O(K + V) next to the kernel's O(K V), but with scalar strided loops it cost ~30%.
inline TokenOperands load_token(const HeadProblem& p, index_t t, RecurrentWorkspace& ws) {
  TokenOperands x{};
  const index_t K = p.K();
  const bool identity = p.phi == FeatureMap::identity;
  const ConstView<float, 1> q = p.q[t], k = p.k[t], v = p.v[t];
  if (identity && q.is_last_dim_contiguous())
    scale_copy(q.data(), p.scale, ws.q(), K);
  else
    apply_feature_map(p.phi, q, p.scale, ws.q());
  x.q = ws.q();
  if (identity && k.is_last_dim_contiguous()) {
    x.k = k.data();
  } else {
    apply_feature_map(p.phi, k, 1.f, ws.k());
    x.k = ws.k();
  }
  if (!p.normalize && v.is_last_dim_contiguous()) {
    x.v = v.data();
  } else {
    load_value_row(p, t, ws.v());
    x.v = ws.v();
  }
  if (p.gated()) {
    if (p.scalar_gate) {
      ws.w()[0] = std::exp(std::max(p.g(t, 0), kGateFloor));
      x.w_stride = 0;
    } else {
      const ConstView<float, 1> g = p.g[t];
      if (g.is_last_dim_contiguous()) {
        exp_copy(g.data(), ws.w(), K);
      } else {
        load_gate_row(p, t, ws.w());
        exp_inplace(ws.w(), K);
      }
      x.w_stride = 1;
    }
    x.w = ws.w();
  }
  if (p.readout == Readout::exclusive_bonus) {
    float bonus = 0.f;
    for (index_t i = 0; i < K; ++i) bonus += x.q[i] * p.u(i) * x.k[i];
    x.bonus = bonus;
  }
  return x;
}

// The recurrent prefill of one head on the internal state S [Kf, Vp] (contiguous). Outputs go
// straight into o when its rows are contiguous and need no division.
inline void run_recurrent(const HeadProblem& p, float* S, RecurrentWorkspace& ws) {
  const index_t Kf = p.Kf(), Vp = p.Vp();
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  const bool direct = !p.normalize && p.o.is_last_dim_contiguous();
  for (index_t t = 0; t < p.T(); ++t) {
    const TokenOperands x = load_token(p, t, ws);
    float* o = direct ? p.o.ptr(t) : ws.o();
    recurrent_token(S, Vp, Kf, Vp, x, exclusive, o);
    if (!direct) store_output_row(p, t, o);
  }
}

}  // namespace seqmix::detail::la
