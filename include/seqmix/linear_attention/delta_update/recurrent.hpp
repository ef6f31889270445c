// The fused token kernel of the delta-rule family: decode steps and the recurrent prefill both
// run it. Internal.
//
// A token changes the state S [K,V] by a diagonal decay plus rank-one terms that depend on a
// read of the state itself, so it takes two sweeps over each column tile of S:
//   sweep 1   p = S^T alpha                       (alpha = w * k for the delta rule, a for rwkv7)
//   sweep 2   S = diag(w) S + k x^T [+ b p^T];  o = S^T q
// delta rule: x = beta (v - p), i.e. S' = diag(w) S, u = beta (v - S'^T k), S = S' + k u^T;
// rwkv7:      x = v and the extra b p^T term, i.e. S = diag(w) S + b (a^T S) + k v^T.
// The column tile (NB batches, 64 floats on AVX-512) times K rows is 32 KB for K = 128, so the
// second sweep re-reads it from L1: S streams from memory once per token. p, x and o stay in
// registers across the rows of a tile: the loops over the NB batches carry `#pragma GCC unroll`
// because GCC 12 unrolls them completely only at -O3; at -O2 it left them rolled, the arrays in
// memory (a load and a store around every FMA), and the recurrent prefills took 1.7-1.9x their -O3 time.
#pragma once

#include <algorithm>
#include <cmath>

#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::delta_update {

enum class Update {
  delta,  ///< x = beta (v - p), no b term
  rwkv7,  ///< x = v, plus b p^T
};

/// One token's operands, contiguous.
struct TokenOperands {
  const float* q = nullptr;      ///< [K] readout vector (scale folded in); r for rwkv7
  const float* k = nullptr;      ///< [K]
  const float* v = nullptr;      ///< [V]
  const float* alpha = nullptr;  ///< [K] sweep-1 coefficients: w * k (delta) or a (rwkv7)
  const float* b = nullptr;      ///< [K] rwkv7 only
  const float* w = nullptr;      ///< decays exp(g): [K] (w_stride 1), one value (w_stride 0), or nullptr
  index_t w_stride = 0;
  float beta = 1.f;              ///< delta only
};

template <int NB, Update kUpdate, bool kDecay>
inline void token_tile(float* S, index_t ldS, index_t K, index_t c0, const TokenOperands& x, float* o) {
  static_assert(NB <= 4, "the loops over NB carry #pragma GCC unroll 4");
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> p[NB], xv[NB], acc[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) p[j] = Batch<float>(0.f);
  for (index_t r = 0; r < K; ++r) {
    const float* row = S + r * ldS + c0;
    const Batch<float> ar(x.alpha[r]);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) p[j] = simd::fma(ar, simd::load(row + j * W), p[j]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    const Batch<float> v = simd::load(x.v + c0 + j * W);
    xv[j] = kUpdate == Update::delta ? Batch<float>(x.beta) * (v - p[j]) : v;
    acc[j] = Batch<float>(0.f);
  }
  for (index_t r = 0; r < K; ++r) {
    float* row = S + r * ldS + c0;
    const Batch<float> kr(x.k[r]), qr(x.q[r]);
    const Batch<float> wr(kDecay ? x.w[r * x.w_stride] : 1.f);
    const Batch<float> br(kUpdate == Update::rwkv7 ? x.b[r] : 0.f);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      Batch<float> s = simd::load(row + j * W);
      s = kDecay ? simd::fma(kr, xv[j], wr * s) : simd::fma(kr, xv[j], s);
      if constexpr (kUpdate == Update::rwkv7) s = simd::fma(br, p[j], s);
      acc[j] = simd::fma(qr, s, acc[j]);
      simd::store(row + j * W, s);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) simd::store(o + c0 + j * W, acc[j]);
}

/// Scalar columns [c0, V): the ragged tail when V is not a multiple of the batch width.
template <Update kUpdate, bool kDecay>
inline void token_tail(float* S, index_t ldS, index_t K, index_t c0, index_t V, const TokenOperands& x, float* o) {
  for (index_t c = c0; c < V; ++c) {
    float p = 0.f;
    for (index_t r = 0; r < K; ++r) p += x.alpha[r] * S[r * ldS + c];
    const float xc = kUpdate == Update::delta ? x.beta * (x.v[c] - p) : x.v[c];
    float acc = 0.f;
    for (index_t r = 0; r < K; ++r) {
      float& s = S[r * ldS + c];
      const float wr = kDecay ? x.w[r * x.w_stride] : 1.f;
      s = wr * s + x.k[r] * xc;
      if constexpr (kUpdate == Update::rwkv7) s += x.b[r] * p;
      acc += x.q[r] * s;
    }
    o[c] = acc;
  }
}

template <Update kUpdate, bool kDecay>
inline void token_impl(float* S, index_t ldS, index_t K, index_t V, const TokenOperands& x, float* o) {
  constexpr index_t W = simd::kWidth;
  index_t c = 0;
  for (; c + 4 * W <= V; c += 4 * W) token_tile<4, kUpdate, kDecay>(S, ldS, K, c, x, o);
  for (; c + W <= V; c += W) token_tile<1, kUpdate, kDecay>(S, ldS, K, c, x, o);
  if (c < V) token_tail<kUpdate, kDecay>(S, ldS, K, c, V, x, o);
}

/// Advances S ([K,V], rows ldS apart, contiguous columns) by one token; writes o[0..V).
inline void advance_token(Update update, float* S, index_t ldS, index_t K, index_t V, const TokenOperands& x,
                          float* o) {
  const bool decay = x.w != nullptr;
  if (update == Update::delta)
    decay ? token_impl<Update::delta, true>(S, ldS, K, V, x, o) : token_impl<Update::delta, false>(S, ldS, K, V, x, o);
  else
    decay ? token_impl<Update::rwkv7, true>(S, ldS, K, V, x, o) : token_impl<Update::rwkv7, false>(S, ldS, K, V, x, o);
}

/// Per-thread scratch of the token kernel: q, k, alpha, b, w rows and v, o rows. Allocated once
/// per parallel block, reused for every token and head.
class TokenWorkspace {
 public:
  TokenWorkspace(index_t K, index_t V) : buffer_(static_cast<std::size_t>(5 * K + 2 * V)), K_(K), V_(V) {}
  float* q() { return buffer_.data(); }
  float* k() { return q() + K_; }
  float* alpha() { return k() + K_; }
  float* b() { return alpha() + K_; }
  float* w() { return b() + K_; }
  float* v() { return w() + K_; }
  float* o() { return v() + V_; }

 private:
  AlignedVector<float> buffer_;
  index_t K_, V_;
};

/// out[i] = exp(x[i]) over n contiguous floats.
inline void exp_rows(const float* x, float* out, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, simd::exp(simd::load(x + i)));
  for (index_t i = nv; i < n; ++i) out[i] = std::exp(x[i]);
}

/// out[i] = a[i] * b[i] over n contiguous floats.
inline void multiply_rows(const float* a, const float* b, float* out, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, simd::load(a + i) * simd::load(b + i));
  for (index_t i = nv; i < n; ++i) out[i] = a[i] * b[i];
}

}  // namespace seqmix::delta_update
