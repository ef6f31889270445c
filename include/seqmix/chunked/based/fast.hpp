// BASED, the fast prefill: both branches run on the library's existing kernels.
//   linear branch  seqmix::linear_attention (taylor2 feature map, chunked GEMM form), writing o and
//                  updating the state in place (its final view may alias its initial one)
//   window branch  seqmix::attention (tiled flash prefill, causal + window W) into a scratch,
//                  added to o afterwards
// With a state that already holds history, only the first W-1 queries can see it: those run
// against [history ; their own keys] copied into a small contiguous scratch, the rest against
// the call's own keys (bottom-right alignment places them correctly). See README.md.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"

namespace seqmix {

namespace detail::based {

// The algorithm is the library's automatic choice, the token-by-token form: at F = 16, V = 64,
// T = 4096 (one thread, CPU time, 2026-12-05; README.md) 61 against the chunked form's 72 ms with
// the feature-sum normalization, 36 against 70 ms without.
inline LinearAttentionOptions linear_options(const BasedOptions& options, index_t F) {
  LinearAttentionOptions lo;
  lo.feature_map = FeatureMap::taylor2;
  lo.normalize = options.normalization == BasedNormalization::feature_sum;
  lo.scale = linear_scale(options, F);
  lo.chunk_size = options.chunk_size;
  return lo;
}

inline AttentionOptions window_options(const BasedOptions& options, index_t D) {
  AttentionOptions ao;
  ao.causal = true;
  ao.window = options.window;
  ao.scale = window_scale(options, D);
  return ao;
}

// o += add, both [B,T,H,V] (o may be strided; add is a contiguous scratch).
inline void add_into(const TensorView<float, 4>& o, const ConstView<float, 4>& add, const Executor& executor) {
  const index_t B = o.size(0), T = o.size(1), H = o.size(2), V = o.size(3);
  parallel_for(executor, B * T, std::max<index_t>(1, 16384 / std::max<index_t>(H * V, 1)), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / T, t = r % T;
      for (index_t h = 0; h < H; ++h) {
        const float* src = add.data() + ((b * T + t) * H + h) * V;
        float* dst = o.ptr(b, t, h);
        if (o.stride(3) == 1)
          simd::axpy(1.f, src, dst, V);
        else
          for (index_t c = 0; c < V; ++c) dst[c * o.stride(3)] += src[c];
      }
    }
  });
}

// Copies tokens [t0, t0 + n) of x into ring slots (position0 + t) % W of ring, for the last
// min(n, W) of them only (earlier ones would be overwritten anyway).
inline void write_ring(const ConstView<float, 4>& x, index_t t0, index_t n, index_t position0,
                       const TensorView<float, 4>& ring) {
  const index_t W = ring.size(1);
  for (index_t t = t0 + std::max<index_t>(0, n - W); t < t0 + n; ++t)
    for (index_t b = 0; b < x.size(0); ++b)
      copy(x[b][t], ring[b][(position0 + t - t0) % W]);
}

// The window branch of a prefill into scratch o_sw [B,T,H,V].
inline void window_prefill(const BasedInputs& in, const TensorView<float, 4>& o_sw, const BasedOptions& options,
                           const BasedState* state, const Dims& d, const Executor& executor) {
  const AttentionOptions ao = window_options(options, d.D);
  const index_t W = options.window;
  const index_t hist = state ? std::min(state->position, W - 1) : 0;
  const index_t n1 = hist > 0 ? std::min(d.T, W - 1) : 0;
  if (n1 > 0) {
    // [history ; tokens 0..n1) in token order, for the first n1 queries.
    Tensor<float, 4> kc({d.B, hist + n1, d.H, d.D}), vc({d.B, hist + n1, d.H, d.V});
    for (index_t b = 0; b < d.B; ++b) {
      for (index_t j = 0; j < hist; ++j) {
        const index_t slot = (state->position - hist + j) % W;
        copy(state->window_k.as_const()[b][slot], kc.view()[b][j]);
        copy(state->window_v.as_const()[b][slot], vc.view()[b][j]);
      }
      for (index_t j = 0; j < n1; ++j) {
        copy(in.k[b][j], kc.view()[b][hist + j]);
        copy(in.v[b][j], vc.view()[b][hist + j]);
      }
    }
    AttentionInputs<float> ai;
    ai.q = in.q.slice(1, 0, n1), ai.k = kc.view(), ai.v = vc.view();
    attention(ai, AttentionOutputs{o_sw.slice(1, 0, n1), {}}, ao, executor);
  }
  if (n1 < d.T) {
    AttentionInputs<float> ai;
    ai.q = in.q.slice(1, n1, d.T - n1), ai.k = in.k, ai.v = in.v;
    attention(ai, AttentionOutputs{o_sw.slice(1, n1, d.T - n1), {}}, ao, executor);
  }
}

}  // namespace detail::based

/// BASED prefill (definition: reference::based). `state`, if given, is read as the initial state
/// and overwritten with the final one, so prefill-then-steps and split calls equal one call.
/// Scratch: one [B,T,H,V] buffer for the window branch (plus 2*(W-1) rows when resuming).
// A template only so that its Eigen products compile where it is called (docs/compile_time.md).
template <class Deferred = void>
void based(const BasedInputs& in, const BasedOutputs& out, const BasedOptions& options = {},
           BasedState* state = nullptr, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::based::reversed_call("based", in, out);
    return seqmix::based<Deferred>(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  using namespace detail::based;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("based", in, out, options, state, [&](const BasedInputs& one, const BasedOutputs& one_out, BasedState* s) {
      seqmix::based<Deferred>(one, one_out, options, s, executor);
    });
    return;
  }
  const Dims d = validate("based", in, out, options, state);
  if (d.B * d.T * d.H == 0) return;
  // Linear branch straight into o (state read and written in place).
  LinearAttentionInputs li;
  li.q = in.q_feat, li.k = in.k_feat, li.v = in.v;
  LinearAttentionOutputs lout;
  lout.o = out.o;
  if (state) {
    li.initial_state = state->kv;
    lout.final_state = state->kv;
    if (options.normalization == BasedNormalization::feature_sum) {
      li.initial_normalizer = state->normalizer;
      lout.final_normalizer = state->normalizer;
    }
  }
  linear_attention<Deferred>(li, lout, linear_options(options, d.F), executor);
  // Window branch, then the sum.
  Tensor<float, 4> o_sw({d.B, d.T, d.H, d.V});
  window_prefill(in, o_sw.view(), options, state, d, executor);
  add_into(out.o, o_sw.cview(), executor);
  if (state) {
    write_ring(in.k, 0, d.T, state->position, state->window_k);
    write_ring(in.v, 0, d.T, state->position, state->window_v);
    state->position += d.T;
  }
}

}  // namespace seqmix
