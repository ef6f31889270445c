// Mega fast form (definition in reference.hpp).
//
// EMA: the decay is constant over time, so the D*N scalar recurrences need no gates per token;
// the work is 2 FMAs per (token, d, j). The kernel runs channel blocks in parallel (per batch
// row), vectorized across channels d (parameters transposed to [N,D] once), with the N states of
// the block in an L1 scratch and the eta reduction fused into the same pass, writing y, q and k
// directly. It does not call the core linear_scan: that would materialise b_t = gain * x_t and
// all D*N states ([B,T,D,N], 512 MiB at T=8192, D=1024, N=16) and reread them for the eta sum,
// where the fused pass only moves x in and y, q, k out. (A closed form over chunks, y = Toeplitz
// kernel * x within the chunk + the carried state, costs c/2 MACs per token and channel against
// N here, so it only pays for N > c/2.) Time is not split: with a constant decay the carry fix-up
// costs N FMAs per token and channel again, as much as the scan itself.
//
// Attention: block_sparse_attention with the chunk-diagonal pattern (block = chunk), i.e. the
// dense flash kernel run chunk by chunk with the causal rule.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {
namespace detail::mega {

// Per-channel coefficients transposed to [N,D] (channels contiguous) and the affine maps.
struct Coefficients {
  index_t D = 0, N = 0;
  AlignedVector<float> decay, gain, eta;  // [N,D]
  AlignedVector<float> qs, qb, ks, kb;    // [D]
};

inline Coefficients coefficients(const MegaParams& p, index_t D, index_t N) {
  Coefficients c;
  c.D = D, c.N = N;
  const auto n = static_cast<std::size_t>(D * N);
  c.decay.resize(n), c.gain.resize(n), c.eta.resize(n);
  for (index_t d = 0; d < D; ++d)
    for (index_t j = 0; j < N; ++j) {
      const float alpha = sigmoid(p.alpha_logit(d, j)), delta = sigmoid(p.delta_logit(d, j));
      c.decay[j * D + d] = 1.f - alpha * delta;
      c.gain[j * D + d] = alpha * p.beta(d, j);
      c.eta[j * D + d] = p.eta(d, j);
    }
  for (auto [dst, src] : {std::pair{&c.qs, &p.q_scale}, {&c.qb, &p.q_bias}, {&c.ks, &p.k_scale}, {&c.kb, &p.k_bias}}) {
    dst->resize(static_cast<std::size_t>(D));
    for (index_t d = 0; d < D; ++d) (*dst)[d] = (*src)(d);
  }
  return c;
}

// One token of the EMA over channels [d0, d0 + n): state [N][n] (row stride n) updated in place,
// y / q / k written for those channels. x, y, q, k point at channel d0.
inline void ema_token(const Coefficients& c, index_t d0, index_t n, const float* x, float* state, float* y, float* q,
                      float* k) {
  using FB = simd::Batch<float>;
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    const FB xv = simd::load(x + i);
    FB acc(0.f);
    for (index_t j = 0; j < c.N; ++j) {
      const index_t at = j * c.D + d0 + i;
      const FB s = simd::fma(simd::load(c.decay.data() + at), simd::load(state + j * n + i), simd::load(c.gain.data() + at) * xv);
      simd::store(state + j * n + i, s);
      acc = simd::fma(simd::load(c.eta.data() + at), s, acc);
    }
    if (y) simd::store(y + i, acc);
    simd::store(q + i, simd::fma(simd::load(c.qs.data() + d0 + i), acc, simd::load(c.qb.data() + d0 + i)));
    simd::store(k + i, simd::fma(simd::load(c.ks.data() + d0 + i), acc, simd::load(c.kb.data() + d0 + i)));
  }
  for (index_t i = nv; i < n; ++i) {
    float acc = 0.f;
    for (index_t j = 0; j < c.N; ++j) {
      const index_t at = j * c.D + d0 + i;
      float& s = state[j * n + i];
      s = c.decay[at] * s + c.gain[at] * x[i];
      acc += c.eta[at] * s;
    }
    if (y) y[i] = acc;
    q[i] = c.qs[d0 + i] * acc + c.qb[d0 + i];
    k[i] = c.ks[d0 + i] * acc + c.kb[d0 + i];
  }
}

// Channel block width: 4 vectors keep 4 independent FMA chains per j in flight.
constexpr index_t kEmaBlock = 4 * simd::kWidth;

}  // namespace detail::mega

/// Same arguments and results as reference::mega. Scratch: q and k [B,T,D] (2*B*T*D floats),
/// x copied only if its channels are strided.
inline void mega(const MegaInputs& in, const MegaOutputs& out, const MegaOptions& options = {},
                 const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::mega::reversed_call("mega", in, out);
    return seqmix::mega(rev.first, rev.second, detail::forward_options(options), executor);
  }
  using namespace detail::mega;
  if (serving(in, out)) {
    serve("mega", in, out, options,
          [&](const MegaInputs& one, const MegaOutputs& one_out) { seqmix::mega(one, one_out, options, executor); });
    return;
  }
  const Dims d = validate("mega", in, out, options);
  const Coefficients coef = coefficients(in.params, d.D, d.N);
  Tensor<float, 3> x_copy;
  ConstView<float, 3> x = in.x;
  if (!x.is_last_dim_contiguous()) {
    x_copy = Tensor<float, 3>(x.shape());
    copy(x, x_copy.view());
    x = x_copy.cview();
  }
  Tensor<float, 4> q({d.B, d.T, d.H, d.Dk}), k({d.B, d.T, d.H, d.Dk});
  const bool ema_direct = out.ema.has_value() && out.ema.is_last_dim_contiguous();
  const index_t blocks = std::max<index_t>(1, (d.D + kEmaBlock - 1) / kEmaBlock);
  parallel_for(executor, d.B * blocks, 1, [&](index_t first, index_t last) {
    AlignedVector<float> state(static_cast<std::size_t>(d.N * kEmaBlock)), y(static_cast<std::size_t>(kEmaBlock));
    for (index_t task = first; task < last; ++task) {
      const index_t b = task / blocks, d0 = task % blocks * kEmaBlock, n = std::min(kEmaBlock, d.D - d0);
      for (index_t j = 0; j < d.N; ++j)
        for (index_t i = 0; i < n; ++i)
          state[j * n + i] = in.initial_state.has_value() ? in.initial_state(b, d0 + i, j) : 0.f;
      for (index_t t = 0; t < d.T; ++t) {
        float* yrow = ema_direct ? out.ema.ptr(b, t) + d0 : (out.ema.has_value() ? y.data() : nullptr);
        ema_token(coef, d0, n, x.ptr(b, t) + d0, state.data(), yrow, q.data() + (b * d.T + t) * d.D + d0,
                  k.data() + (b * d.T + t) * d.D + d0);
        if (out.ema.has_value() && !ema_direct)
          for (index_t i = 0; i < n; ++i) out.ema(b, t, d0 + i) = y[i];
      }
      if (out.final_state.has_value())
        for (index_t j = 0; j < d.N; ++j)
          for (index_t i = 0; i < n; ++i) out.final_state(b, d0 + i, j) = state[j * n + i];
    }
  });
  if (d.T > 0 && d.H > 0) {
    BlockGrid grid;
    grid.Tq = grid.Tk = d.T, grid.block_q = grid.block_k = d.c;
    ChunkDiagonalPattern chunk;
    chunk.chunk_blocks = 1;
    const BlockPattern pattern = chunk_diagonal_pattern(grid, chunk);
    AttentionOptions attention;
    attention.causal = true;
    attention.scale = scale_of(options, d.Dk);
    AttentionInputs<float> ain;
    ain.q = q.cview(), ain.k = k.cview(), ain.v = in.v;
    block_sparse_attention(ain, pattern.layout(), AttentionOutputs{out.o, {}}, attention, executor);
  }
  const index_t r = d.T % d.c;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t s = 0; s < r; ++s)
      for (index_t h = 0; h < d.H; ++h) {
        if (out.k_cache.has_value())
          for (index_t i = 0; i < d.Dk; ++i) out.k_cache(b, s, h, i) = k(b, d.T - r + s, h, i);
        if (out.v_cache.has_value())
          for (index_t e = 0; e < d.Dv; ++e) out.v_cache(b, s, h, e) = in.v(b, d.T - r + s, h, e);
      }
}

}  // namespace seqmix
