// RAT, the fast prefill, in three library stages:
//   1. recurrence: keys and values of every KV head side by side as 2*Hkv*D channels, one call of
//      seqmix::linear_scan (h_t = a_t h_{t-1} + b_t, a_t = exp(g_t) or 0 at a chunk start,
//      b_t = (1 - exp(g_t)) x_t), in place over the b buffer;
//   2. across chunks: the chunk-end rows of the scan are the chunk summaries; seqmix::attention
//      (tiled flash prefill) over them with explicit query positions c - 1 and the causal rule,
//      so a query of chunk c sees summaries 0..c-1 exactly, returning o and the log-sum-exp;
//   3. the own-state key: one more logit per query, folded in with the attention_merge rule
//      (lse, o) + (s_self, vr) -> o.
// See README.md for the derivation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/core/scan/linear.hpp"
#include "seqmix/core/simd.hpp"

namespace seqmix {

namespace detail::rat {

// Folds the own-state key into a partial result (o, lse) over the chunk summaries:
// o <- (exp(lse - m) o + exp(s - m) vr) / (exp(lse - m) + exp(s - m)), s = scale * q.kr, m = max.
// q, kr, vr have unit stride; o has stride os. lse = -inf means no summary was visible.
// Non-finite logits follow attention's rule (chunked/softmax.hpp): a NaN or +inf one (s, or the
// summaries' NaN lse) makes o NaN; a -inf own logit gives the own state weight 0 (its value takes
// no part), and with no summary either the row saw no key: o = 0.
inline void merge_own_state(const float* q, const float* kr, const float* vr, index_t D, float scale, float lse,
                            float* o, index_t os) {
  const float s = scale * simd::dot(q, kr, D);
  if (std::isnan(s) || std::isnan(lse) || s == -kMinusInf) {
    for (index_t i = 0; i < D; ++i) o[i * os] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  if (s == kMinusInf) {  // weight 0: o keeps the summaries' result (0 when it saw none)
    if (lse == kMinusInf)
      for (index_t i = 0; i < D; ++i) o[i * os] = 0.f;
    return;
  }
  const float m = std::max(lse, s);
  const float w_sum = lse == kMinusInf ? 0.f : std::exp(lse - m), w_own = std::exp(s - m);
  const float inv = 1.f / (w_sum + w_own);
  if (w_sum == 0.f) {  // o was never written (or is zero): do not read it
    for (index_t i = 0; i < D; ++i) o[i * os] = vr[i];
    return;
  }
  if (w_own == 0.f) return;  // negligible next to the summaries: o is theirs, its value takes no part
  for (index_t i = 0; i < D; ++i) o[i * os] = (w_sum * o[i * os] + w_own * vr[i]) * inv;
}

// Gate and scaled input of one (batch, token, KV head) row of D channels: a = keep ? exp(g) : 0,
// bk = (1 - exp(g)) k, bv = (1 - exp(g)) v (gk, ik, iv strides sg, sk, sv).
inline void gate_row(const float* g, index_t sg, const float* k, index_t sk, const float* v, index_t sv, index_t D,
                     bool keep, float* a_k, float* a_v, float* b_k, float* b_v) {
  index_t i = 0;
  if (sg == 1 && sk == 1 && sv == 1) {
    const simd::Batch<float> one(1.f), zero(0.f);
    for (; i < simd::vector_end(D); i += simd::kWidth) {
      const simd::Batch<float> e = simd::exp(simd::load(g + i)), rest = one - e;
      simd::store(a_k + i, keep ? e : zero);
      simd::store(a_v + i, keep ? e : zero);
      simd::store(b_k + i, rest * simd::load(k + i));
      simd::store(b_v + i, rest * simd::load(v + i));
    }
  }
  for (; i < D; ++i) {
    const float e = std::exp(g[i * sg]);
    a_k[i] = a_v[i] = keep ? e : 0.f;
    b_k[i] = (1.f - e) * k[i * sk];
    b_v[i] = (1.f - e) * v[i * sv];
  }
}

// A chunk starts from a zero state, which the scan expresses as a = 0 times the previous chunk's
// last state; when that state is inf or NaN, 0 * inf = NaN carries into a chunk that never reads
// it, and on through every later chunk start (docs/reliability.md). A chunk whose first row came
// out non-finite is rescanned here from its own fresh value (1 - exp(g)) x, with gate_row's
// arithmetic: also when that value is itself +-inf, which the scan's 0 * NaN would have made NaN.
// x: the scan's output [B,T,2*Hkv*D] (keys, then values). Clean inputs cost one finiteness test
// of a row per chunk.
inline void rescan_after_non_finite(const RatInputs& in, index_t pos0, index_t L, const Dims& d, Tensor<float, 3>& x) {
  const index_t D = d.D, HD = d.Hkv * D, C2 = 2 * HD;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = (L - pos0 % L) % L; t < d.T; t += L)  // the tokens that start a chunk
      for (index_t ch = 0; ch < C2; ++ch) {
        if (std::isfinite(x(b, t, ch))) continue;
        const index_t hk = (ch % HD) / D, i = ch % D;
        const ConstView<float, 4>& src = ch < HD ? in.k : in.v;
        const float e0 = std::exp(in.g(b, t, hk, i)), fresh = (1.f - e0) * src(b, t, hk, i);
        float h = fresh;
        x(b, t, ch) = h;
        for (index_t u = t + 1; u < std::min(d.T, t + L); ++u) {
          const float e = std::exp(in.g(b, u, hk, i));
          h = e * h + (1.f - e) * src(b, u, hk, i);
          x(b, u, ch) = h;
        }
      }
}

}  // namespace detail::rat

/// RAT prefill (definition: reference::rat). `state`, if given, is read as the initial state and
/// overwritten with the final one (chunk summaries appended), so prefill-then-steps and split calls
/// equal one call. Scratch: 2 * B*T*2*Hkv*D floats for the scan, B*T*H for the log-sum-exp, and,
/// without a state, the B*(T/L)*Hkv*D*2 summaries.
inline void rat(const RatInputs& in, const RatOutputs& out, const RatOptions& options = {}, RatState* state = nullptr,
                const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::rat::reversed_call("rat", in, out);
    return seqmix::rat(rev.first, rev.second, detail::forward_options(options), state, executor);
  }
  using namespace detail::rat;
  if (detail::serving::uses_positions(in.batch, state && state->positions.has_value())) {
    serve("rat", in, out, options, state, [&](const RatInputs& one, const RatOutputs& one_out, RatState* s) {
      seqmix::rat(one, one_out, options, s, executor);
    });
    return;
  }
  const Dims d = validate("rat", in, out, options, state);
  const index_t L = chunk_length(options), pos0 = state ? state->position : 0, D = d.D, HD = d.Hkv * D, C2 = 2 * HD;
  const float scale = scale_of(options, D);
  if (d.B * d.T == 0) {
    if (state) state->position += d.T;
    return;
  }
  // 1. The recurrence over [B,T,C2] channels: keys of every KV head, then values.
  Tensor<float, 3> a({d.B, d.T, C2}), x({d.B, d.T, C2});
  parallel_for(executor, d.B * d.T, 64, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / d.T, t = r % d.T;
      const bool keep = (pos0 + t) % L != 0;
      float* ar = a.data() + r * C2;
      float* xr = x.data() + r * C2;
      for (index_t hk = 0; hk < d.Hkv; ++hk)
        gate_row(in.g.ptr(b, t, hk), in.g.stride(3), in.k.ptr(b, t, hk), in.k.stride(3), in.v.ptr(b, t, hk),
                 in.v.stride(3), D, keep, ar + hk * D, ar + HD + hk * D, xr + hk * D, xr + HD + hk * D);
    }
  });
  Tensor<float, 2> h0;
  if (state && pos0 % L != 0) {
    h0 = Tensor<float, 2>({d.B, C2});
    for (index_t b = 0; b < d.B; ++b)
      for (index_t hk = 0; hk < d.Hkv; ++hk)
        for (index_t i = 0; i < D; ++i) {
          h0(b, hk * D + i) = state->k_run(b, hk, i);
          h0(b, HD + hk * D + i) = state->v_run(b, hk, i);
        }
  }
  LinearScanOptions so;
  so.gate_space = GateSpace::direct;
  so.stores = OutputStores::cached;  // stage 2 reads the states right away
  linear_scan(a.view(), x.view(), h0.view(), x.view(), {}, so, executor);
  rescan_after_non_finite(in, pos0, L, d, x);

  // 2. Chunk summaries (the state's cache, or a scratch) and attention over them.
  const index_t first_new = pos0 / L, total = (pos0 + d.T) / L;
  Tensor<float, 4> own_k, own_v;
  TensorView<float, 4> chunk_k, chunk_v;
  if (state) {
    chunk_k = state->chunk_k, chunk_v = state->chunk_v;
  } else {
    own_k = Tensor<float, 4>({d.B, total, d.Hkv, D}), own_v = Tensor<float, 4>({d.B, total, d.Hkv, D});
    chunk_k = own_k.view(), chunk_v = own_v.view();
  }
  for (index_t c = first_new; c < total; ++c) {
    const index_t t = c * L + L - 1 - pos0;  // the chunk's last token, inside this call
    for (index_t b = 0; b < d.B; ++b)
      for (index_t hk = 0; hk < d.Hkv; ++hk) {
        const float* row = x.data() + (b * d.T + t) * C2;
        copy(ConstView<float, 1>(row + hk * D, {D}), chunk_k[b][c][hk]);
        copy(ConstView<float, 1>(row + HD + hk * D, {D}), chunk_v[b][c][hk]);
      }
  }
  Tensor<float, 3> lse({d.B, d.T, d.H});
  if (total > 0) {
    Tensor<std::int32_t, 2> positions({d.B, d.T});
    for (index_t b = 0; b < d.B; ++b)
      for (index_t t = 0; t < d.T; ++t) positions(b, t) = static_cast<std::int32_t>((pos0 + t) / L - 1);
    AttentionInputs<float> ai;
    ai.q = in.q, ai.k = chunk_k.as_const().slice(1, 0, total), ai.v = chunk_v.as_const().slice(1, 0, total);
    ai.positions = positions.view();
    AttentionOptions ao;
    ao.causal = true;
    ao.scale = scale;
    attention(ai, AttentionOutputs{out.o, lse.view()}, ao, executor);
  } else {
    lse.fill(detail::kMinusInf);  // no summary yet: the own state is the only key
  }

  // 3. The own-state key of every query.
  parallel_for(executor, d.B * d.T, 16, [&](index_t r0, index_t r1) {
    std::vector<float> qrow(static_cast<std::size_t>(D));
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / d.T, t = r % d.T;
      const float* xr = x.data() + r * C2;
      for (index_t h = 0; h < d.H; ++h) {
        const index_t hk = h / d.group();
        for (index_t i = 0; i < D; ++i) qrow[i] = in.q(b, t, h, i);
        merge_own_state(qrow.data(), xr + hk * D, xr + HD + hk * D, D, scale, lse(b, t, h), out.o.ptr(b, t, h),
                        out.o.stride(3));
      }
    }
  });
  if (state) {
    const float* last = x.data();
    for (index_t b = 0; b < d.B; ++b) {
      last = x.data() + (b * d.T + d.T - 1) * C2;
      for (index_t hk = 0; hk < d.Hkv; ++hk)
        for (index_t i = 0; i < D; ++i) {
          state->k_run(b, hk, i) = last[hk * D + i];
          state->v_run(b, hk, i) = last[HD + hk * D + i];
        }
    }
    state->position = pos0 + d.T;
  }
}

}  // namespace seqmix
