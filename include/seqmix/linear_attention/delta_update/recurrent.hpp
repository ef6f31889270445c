// The fused token kernel of the delta-rule family: decode steps and the recurrent prefill both
// run it; the delta rule's prefill also advances two tokens per pass over S (advance_pair,
// below). Internal.
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

#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::delta_update {

/// Where the recurrent prefill asks for later tokens' rows: L1 (driver.hpp, kRecurrentRowsAhead:
/// into L2 measured slower).
constexpr int kRowsLocality = 3;

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

/// Two consecutive tokens of the delta rule, as one pass of pair_tile over S. With D1, D2 the
/// decays, S1 = D1 S + k1 u1^T and S2 = D2 S1 + k2 u2^T, every read of S1 or S2 is a read of S
/// plus rank-one corrections:
///   p1 = S^T (w1 k1)                          u1 = beta1 (v1 - p1)
///   p2 = S^T (w1 w2 k2) + (w2 k2 . k1) u1     u2 = beta2 (v2 - p2)
///   o1 = S^T (w1 q1) + (k1 . q1) u1
///   o2 = S^T (w1 w2 q2) + (w2 k1 . q2) u1 + (k2 . q2) u2
///   S2 = D1 D2 S + (w2 k1) u1^T + k2 u2^T
/// (products of vectors elementwise). The four reads share one load of each row of S and the
/// update one load and store: per element 7 vector operations for the two tokens instead of 8,
/// half the loads and stores.
struct PairOperands {
  const float* a = nullptr;   ///< [K] w1 k1
  const float* b = nullptr;   ///< [K] w1 q1
  const float* c = nullptr;   ///< [K] w1 w2 k2
  const float* d = nullptr;   ///< [K] w1 w2 q2
  const float* e = nullptr;   ///< [K] w2 k1
  const float* k2 = nullptr;  ///< [K]
  const float* ww = nullptr;  ///< D1 D2: [K] (ww_stride 1), one value (ww_stride 0), or nullptr (no decay)
  index_t ww_stride = 0;
  const float* v1 = nullptr;  ///< [V]
  const float* v2 = nullptr;  ///< [V]
  float beta1 = 1.f, beta2 = 1.f;
  float k1q1 = 0.f, k1k2 = 0.f, k1q2 = 0.f, k2q2 = 0.f;  ///< k1 . q1, e . k2, e . q2, k2 . q2
  /// Cache lines of later tokens' rows to ask for during the pass: one per row of S in the first
  /// tile's first sweep (advance_pair asks for any beyond K at once). Spread so, they do not queue
  /// behind each other ahead of the pass's own loads as a burst does (driver.hpp, AheadLines).
  detail::PassLines<kRowsLocality> ahead;
};

template <int NB, bool kDecay>
inline void pair_tile(float* S, index_t ldS, index_t K, index_t c0, const PairOperands& x, float* o1, float* o2) {
  static_assert(NB <= 4, "the loops over NB carry #pragma GCC unroll 4");
  using simd::Batch;
  constexpr index_t W = simd::kWidth;
  Batch<float> pa[NB], pb[NB], pc[NB], pd[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) pa[j] = pb[j] = pc[j] = pd[j] = Batch<float>(0.f);
  for (index_t r = 0; r < K; ++r) {
    const float* row = S + r * ldS + c0;
    x.ahead.request(r);
    const Batch<float> ar(x.a[r]), br(x.b[r]), cr(x.c[r]), dr(x.d[r]);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      const Batch<float> s = simd::load(row + j * W);
      pa[j] = simd::fma(ar, s, pa[j]);
      pb[j] = simd::fma(br, s, pb[j]);
      pc[j] = simd::fma(cr, s, pc[j]);
      pd[j] = simd::fma(dr, s, pd[j]);
    }
  }
  const Batch<float> beta1(x.beta1), beta2(x.beta2), k1q1(x.k1q1), k1k2(x.k1k2), k1q2(x.k1q2), k2q2(x.k2q2);
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    pa[j] = beta1 * (simd::load(x.v1 + c0 + j * W) - pa[j]);                        // u1
    pc[j] = beta2 * (simd::load(x.v2 + c0 + j * W) - simd::fma(k1k2, pa[j], pc[j]));  // u2
    simd::store(o1 + c0 + j * W, simd::fma(k1q1, pa[j], pb[j]));
    simd::store(o2 + c0 + j * W, simd::fma(k2q2, pc[j], simd::fma(k1q2, pa[j], pd[j])));
  }
  for (index_t r = 0; r < K; ++r) {
    float* row = S + r * ldS + c0;
    const Batch<float> er(x.e[r]), kr(x.k2[r]), wr(kDecay ? x.ww[r * x.ww_stride] : 1.f);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      Batch<float> s = simd::load(row + j * W);
      s = kDecay ? simd::fma(er, pa[j], wr * s) : simd::fma(er, pa[j], s);
      simd::store(row + j * W, simd::fma(kr, pc[j], s));
    }
  }
}

/// Advances S ([K,V], V a multiple of simd::kWidth) by two tokens; writes o1[0..V), o2[0..V).
inline void advance_pair(float* S, index_t ldS, index_t K, index_t V, const PairOperands& pass, float* o1, float* o2) {
  constexpr index_t W = simd::kWidth;
  const bool decay = pass.ww != nullptr;
  pass.ahead.request_from(K);
  PairOperands x = pass;
  x.ahead = pass.ahead.first(K);
  index_t c = 0;
  for (; c + 4 * W <= V; c += 4 * W, x.ahead = {})
    decay ? pair_tile<4, true>(S, ldS, K, c, x, o1, o2) : pair_tile<4, false>(S, ldS, K, c, x, o1, o2);
  for (; c + W <= V; c += W, x.ahead = {})
    decay ? pair_tile<1, true>(S, ldS, K, c, x, o1, o2) : pair_tile<1, false>(S, ldS, K, c, x, o1, o2);
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

/// Per-thread scratch of the two-token pass: the second token's operands and the pair's
/// combined vectors (PairOperands b, c, d, e, ww). Allocated once per thread and shape.
class PairWorkspace {
 public:
  PairWorkspace(index_t K, index_t V) : second(K, V), buffer_(static_cast<std::size_t>(5 * K)), K_(K) {}
  TokenWorkspace second;
  float* b() { return buffer_.data(); }
  float* c() { return b() + K_; }
  float* d() { return c() + K_; }
  float* e() { return d() + K_; }
  float* ww() { return e() + K_; }

 private:
  AlignedVector<float> buffer_;
  index_t K_;
};

/// Row r's decay of a token: w[r * stride], or 1 with no decay (`decay` false).
inline float token_decay(const TokenOperands& x, bool decay, index_t r) { return decay ? x.w[r * x.w_stride] : 1.f; }

/// The decays of rows [r, r + simd::kWidth) of a token: a broadcast (no decay, or one value) or
/// a vector load.
inline simd::Batch<float> token_decays(const TokenOperands& x, bool decay, index_t r) {
  if (!decay) return simd::Batch<float>(1.f);
  return x.w_stride == 0 ? simd::Batch<float>(x.w[0]) : simd::load(x.w + r);
}

/// The two-token pass's operands of tokens x1 then x2 (delta rule; decays both absent, both one
/// value or both [K]), its combined vectors written into ws (vectorized: at K = V = 64 a scalar
/// loop here took most of what the pass saves).
inline PairOperands pair_operands(const TokenOperands& x1, const TokenOperands& x2, index_t K, PairWorkspace& ws) {
  using simd::Batch;
  PairOperands x;
  x.a = x1.alpha, x.k2 = x2.k, x.v1 = x1.v, x.v2 = x2.v, x.beta1 = x1.beta, x.beta2 = x2.beta;
  const bool decay = x1.w != nullptr;
  const index_t nv = simd::vector_end(K);
  for (index_t r = 0; r < nv; r += simd::kWidth) {
    const Batch<float> w1 = token_decays(x1, decay, r), w2 = token_decays(x2, decay, r), ww = w1 * w2;
    simd::store(ws.b() + r, w1 * simd::load(x1.q + r));
    simd::store(ws.c() + r, w1 * simd::load(x2.alpha + r));  // x2.alpha = w2 k2
    simd::store(ws.d() + r, ww * simd::load(x2.q + r));
    simd::store(ws.e() + r, w2 * simd::load(x1.k + r));
    simd::store(ws.ww() + r, ww);
  }
  for (index_t r = nv; r < K; ++r) {
    const float w1 = token_decay(x1, decay, r), w2 = token_decay(x2, decay, r);
    ws.b()[r] = w1 * x1.q[r];
    ws.c()[r] = w1 * x2.alpha[r];
    ws.d()[r] = w1 * w2 * x2.q[r];
    ws.e()[r] = w2 * x1.k[r];
    ws.ww()[r] = w1 * w2;
  }
  x.b = ws.b(), x.c = ws.c(), x.d = ws.d(), x.e = ws.e();
  if (decay) x.ww = ws.ww(), x.ww_stride = x1.w_stride == 0 && x2.w_stride == 0 ? 0 : 1;
  x.k1q1 = simd::dot(x1.k, x1.q, K);
  x.k1k2 = simd::dot(x.e, x2.k, K);
  x.k1q2 = simd::dot(x.e, x2.q, K);
  x.k2q2 = simd::dot(x2.k, x2.q, K);
  return x;
}

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
