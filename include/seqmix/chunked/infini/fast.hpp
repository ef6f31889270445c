// Infini-attention, the fast prefill. The input is cut at segment boundaries into pieces; per piece:
//   1. local attention: seqmix::attention (tiled flash prefill, causal) over the piece's segment
//      keys: the call's own rows, or, when resuming a segment a state left unfinished, the
//      state's segment buffer with the piece appended to it;
//   2. memory: per (batch, KV head) task, sigma(q) M and sigma(q).z for every query head of the
//      group (M [K,V] stays in L1 at K = V = 64), blended into o with the head's gate; then, if
//      the piece completes its segment, the segment is written into M and z.
// Local attention costs O(S) per token against O(K V) for the memory, so step 1 dominates and
// runs on the library's best kernel. See README.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

namespace detail::infini {

// The compressive memory of every (batch, KV head) as contiguous fp32 rows (M: K rows of V
// floats, z: K floats per task), so the kernels run on whole vectors. A contiguous state is used
// in place; a strided one is copied in and back out.
struct Memory {
  index_t K, V;
  AlignedVector<float> own_m, own_z;
  float* M = nullptr;
  float* z = nullptr;
  bool borrowed = false;

  // Zero memory (no state), or the state's memory.
  Memory(const Dims& d, const InfiniAttentionState* s) : K(d.K), V(d.V) {
    if (s && s->memory.is_contiguous() && s->normalizer.is_contiguous()) {
      M = s->memory.data(), z = s->normalizer.data(), borrowed = true;
      return;
    }
    own_m.assign(static_cast<std::size_t>(d.B * d.Hkv * d.K * d.V), 0.f);
    own_z.assign(static_cast<std::size_t>(d.B * d.Hkv * d.K), 0.f);
    M = own_m.data(), z = own_z.data();
    if (s) for_each(*s, [](float& mine, float& theirs) { mine = theirs; });
  }
  float* m(index_t task) const { return M + task * K * V; }
  float* norm(index_t task) const { return z + task * K; }

  // Writes a copied memory back into the state.
  void store(const InfiniAttentionState& s) {
    if (!borrowed) for_each(s, [](float& mine, float& theirs) { theirs = mine; });
  }

 private:
  template <class F>
  void for_each(const InfiniAttentionState& s, F f) {
    const index_t B = s.memory.size(0), Hkv = s.memory.size(1);
    for (index_t task = 0; task < B * Hkv; ++task)
      for (index_t r = 0; r < K; ++r) {
        f(norm(task)[r], s.normalizer(task / Hkv, task % Hkv, r));
        for (index_t c = 0; c < V; ++c) f(m(task)[r * V + c], s.memory(task / Hkv, task % Hkv, r, c));
      }
  }
};

// Per-task scratch: sigma of one row [K], a [V] accumulator, the delta rule's corrected values.
struct MemoryScratch {
  std::vector<float> sig, acc, update;
  MemoryScratch() = default;
  MemoryScratch(index_t K, index_t V) { fit(K, V); }
  // Sizes sig / acc for K, V; reallocates only when they grow (the step keeps one per thread).
  void fit(index_t K, index_t V) {
    sig.resize(static_cast<std::size_t>(K)), acc.resize(static_cast<std::size_t>(V));
  }
};

// out = sigma(x) = elu(x) + 1, vectorized for unit stride (the step calls it once per query head).
inline void sigma_row(const float* x, index_t stride, index_t K, float* out) {
  index_t r = 0;
  if (stride == 1) {
    using FB = simd::Batch<float>;
    const FB zero(0.f), one(1.f);
    for (; r < simd::vector_end(K); r += simd::kWidth) {
      const FB v = simd::load(x + r);
      simd::store(out + r, xsimd::select(v > zero, v + one, simd::exp(simd::min_keep_nan(v, zero))));
    }
  }
  for (; r < K; ++r) out[r] = sigma(x[r * stride]);
}

// Scales sig by a power of two so that its largest finite element lies in [0.5, 1) when it is
// far from 1. The retrieval is a ratio, homogeneous in sigma(x), and a power-of-two scale is exact,
// so the result is unchanged bit for bit, except that a query like x = -100 (sigma = exp(-100), a
// subnormal float) no longer makes 1 / (sigma . z) overflow to inf while the reference stays finite.
inline void normalize_sigma(float* sig, index_t K) {
  float largest = 0.f;
  for (index_t r = 0; r < K; ++r) largest = std::max(largest, sig[r]);  // NaN lanes are skipped
  if (!(largest > 0.f) || !std::isfinite(largest)) return;
  int exponent = 0;
  std::frexp(largest, &exponent);
  if (exponent >= -20 && exponent <= 20) return;
  for (index_t r = 0; r < K; ++r) sig[r] = std::ldexp(sig[r], -exponent);
}

// acc = sigma(x)^T M / (sigma(x).z) (0 when the denominator is 0, NaN when it is NaN); sig holds
// sigma(x), up to a power-of-two scale, on return.
inline void retrieve(const float* x, index_t x_stride, const float* M, const float* z, index_t K, index_t V,
                     MemoryScratch& w) {
  sigma_row(x, x_stride, K, w.sig.data());
  normalize_sigma(w.sig.data(), K);
  std::fill(w.acc.begin(), w.acc.end(), 0.f);
  const float den = simd::dot(w.sig.data(), z, K);
  // An unread memory is not touched: 0 * an inf in M would make the retrieval NaN.
  if (!reads_memory(den)) return;
  for (index_t r = 0; r < K; ++r) simd::axpy(w.sig[r], M + r * V, w.acc.data(), V);
  if (den >= std::numeric_limits<float>::min()) {
    const float inv = 1.f / den;
    for (index_t c = 0; c < V; ++c) w.acc[c] *= inv;
  } else {  // subnormal (or NaN): 1 / den would overflow to inf where the ratio is finite
    for (index_t c = 0; c < V; ++c) w.acc[c] /= den;
  }
}

// o[b, t0 + i, h] = g_h * A_mem + (1 - g_h) * o for the piece's n tokens and the G query heads
// of KV head hk; o holds A_local on entry.
inline void mix_memory(const ConstView<float, 4>& q, const TensorView<float, 4>& o, const ConstView<float, 1>& beta,
                       index_t b, index_t hk, index_t G, index_t t0, index_t n, const float* M, const float* z,
                       MemoryScratch& w) {
  const index_t K = q.size(3), V = o.size(3);
  for (index_t t = t0; t < t0 + n; ++t)
    for (index_t h = hk * G; h < (hk + 1) * G; ++h) {
      retrieve(q.ptr(b, t, h), q.stride(3), M, z, K, V, w);
      const float g = sigmoid(beta(h));
      float* dst = o.ptr(b, t, h);
      const index_t os = o.stride(3);
      for (index_t c = 0; c < V; ++c) dst[c * os] = g * w.acc[c] + (1.f - g) * dst[c * os];
    }
}

// Writes one finished segment (rows [j0, j0 + S) of k, v at batch b, KV head hk) into M and z.
inline void absorb_segment(const ConstView<float, 4>& k, const ConstView<float, 4>& v, index_t b, index_t hk,
                           index_t j0, index_t S, InfiniMemoryUpdate kind, float* M, float* z, MemoryScratch& w) {
  const index_t K = k.size(3), V = v.size(3);
  w.update.resize(static_cast<std::size_t>(S * V));
  // The corrected values first: the delta rule reads M_{s-1} for every row of the segment.
  for (index_t j = 0; j < S; ++j) {
    float* u = w.update.data() + j * V;
    const float* vr = v.ptr(b, j0 + j, hk);
    for (index_t c = 0; c < V; ++c) u[c] = vr[c * v.stride(3)];
    if (kind == InfiniMemoryUpdate::delta) {
      retrieve(k.ptr(b, j0 + j, hk), k.stride(3), M, z, K, V, w);
      for (index_t c = 0; c < V; ++c) u[c] -= w.acc[c];
    }
  }
  for (index_t j = 0; j < S; ++j) {
    sigma_row(k.ptr(b, j0 + j, hk), k.stride(3), K, w.sig.data());
    const float* u = w.update.data() + j * V;
    for (index_t r = 0; r < K; ++r) {
      z[r] += w.sig[r];
      simd::axpy(w.sig[r], u, M + r * V, V);
    }
  }
}

inline AttentionOptions local_options(const InfiniAttentionOptions& options, index_t K) {
  AttentionOptions ao;
  ao.causal = true;
  ao.scale = local_scale(options, K);
  return ao;
}

}  // namespace detail::infini

/// Infini-attention prefill (definition: reference::infini_attention). `state`, if given, is read as
/// the initial state and overwritten with the final one, so prefill-then-steps and split calls
/// equal one call. Scratch: B*Hkv*(K*V + K) floats for the memory, S*V per task for the delta rule.
inline void infini_attention(const InfiniAttentionInputs& in, const InfiniAttentionOutputs& out,
                             const InfiniAttentionOptions& options = {}, InfiniAttentionState* state = nullptr,
                             const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::infini::reversed_call("infini_attention", in, out);
    return seqmix::infini_attention(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  using namespace detail::infini;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("infini_attention", in, out, options, state,
          [&](const InfiniAttentionInputs& one, const InfiniAttentionOutputs& one_out, InfiniAttentionState* s) {
            seqmix::infini_attention(one, one_out, options, s, executor);
          });
    return;
  }
  const Dims d = validate("infini_attention", in, out, options, state);
  const index_t S = options.segment, G = d.group();
  Memory memory(d, state);
  const AttentionOptions ao = local_options(options, d.K);
  index_t position = state ? state->position : 0;
  for (index_t t0 = 0; t0 < d.T;) {
    const index_t filled = position % S, n = std::min(d.T - t0, S - filled);
    const bool resumes = filled > 0;  // the segment's first rows are in the state's buffer
    const bool completes = filled + n == S;
    ConstView<float, 4> seg_k = in.k, seg_v = in.v;
    index_t seg_j0 = t0;
    if (resumes || (state && !completes)) {
      // Append the piece to the buffer: it is either read now (resuming) or kept for later.
      for (index_t b = 0; b < d.B; ++b)
        for (index_t j = 0; j < n; ++j) {
          copy(in.k[b][t0 + j], state->segment_k[b][filled + j]);
          copy(in.v[b][t0 + j], state->segment_v[b][filled + j]);
        }
    }
    AttentionInputs<float> ai;
    ai.q = in.q.slice(1, t0, n);
    if (resumes) {
      seg_k = state->segment_k, seg_v = state->segment_v, seg_j0 = 0;
      ai.k = seg_k.slice(1, 0, filled + n), ai.v = seg_v.slice(1, 0, filled + n);
    } else {
      ai.k = in.k.slice(1, t0, n), ai.v = in.v.slice(1, t0, n);
    }
    attention(ai, AttentionOutputs{out.o.slice(1, t0, n), {}}, ao, executor);
    parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
      MemoryScratch w(d.K, d.V);
      for (index_t task = begin; task < end; ++task) {
        const index_t b = task / d.Hkv, hk = task % d.Hkv;
        mix_memory(in.q, out.o, in.beta, b, hk, G, t0, n, memory.m(task), memory.norm(task), w);
        if (completes)
          absorb_segment(seg_k, seg_v, b, hk, seg_j0, S, options.update, memory.m(task), memory.norm(task), w);
      }
    });
    position += n, t0 += n;
  }
  if (state) {
    memory.store(*state);
    state->position = position;
  }
}

}  // namespace seqmix
