// One (batch, value head) slice of a linear-attention-family problem, and the per-token
// loaders every form shares (feature maps, gates, strided rows). Internal.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <string>

#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/common.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunk_ops.hpp"
#include "seqmix/linear_attention/feature_maps/dpfp.hpp"
#include "seqmix/linear_attention/value_columns.hpp"

namespace seqmix::detail::la {

// Gates below this are clamped: exp(-128) is 0 in fp32 already, and a finite floor keeps the
// chunked form's cumulative sums free of -inf - -inf = NaN after a hard reset (g = -inf).
constexpr float kGateFloor = -128.f;

// When o_t reads the state: GLA / linear_attention read S_t (after the update at t); rwkv6
// reads S_{t-1} and adds the bonus (q_t . (u * k_t)) v_t for the current token.
enum class Readout { inclusive, exclusive_bonus };

// Where the recurrent prefill's look-ahead requests put the next head's rows: L2 (see
// InputRows::prefetch).
constexpr int kAheadLocality = 2;

// [T, D] input rows of one head (q, k or v) in their stored element type: float, or 16-bit
// storage (bf16 / f16) that the loaders widen one row at a time into the operand buffers they
// fill anyway, so a 16-bit input is never copied whole to fp32. Built implicitly from the fp32
// views every operator of the family passes; GLA and linear_attention (any feature map) pass 16-bit views.
class InputRows {
 public:
  InputRows() = default;
  InputRows(const ConstView<float, 2>& x) : f32_(x) {}  // implicit: fp32 heads are built as before
  InputRows(const ConstView<bf16, 2>& x) : bf16_(x), storage_(Storage::bf16) {}
  InputRows(const ConstView<f16, 2>& x) : f16_(x), storage_(Storage::f16) {}

  index_t size(int dim) const {
    switch (storage_) {
      case Storage::bf16: return bf16_.size(dim);
      case Storage::f16: return f16_.size(dim);
      case Storage::f32: break;
    }
    return f32_.size(dim);
  }
  bool is_float() const { return storage_ == Storage::f32; }
  // The fp32 rows (is_float() only: the forms that take fp32 inputs alone, e.g. the slice forms).
  const ConstView<float, 2>& floats() const { return f32_; }
  // Rows [t0, t0 + n).
  InputRows slice(index_t t0, index_t n) const {
    InputRows s = *this;
    switch (storage_) {
      case Storage::bf16: s.bf16_ = bf16_.slice(0, t0, n); break;
      case Storage::f16: s.f16_ = f16_.slice(0, t0, n); break;
      case Storage::f32: s.f32_ = f32_.slice(0, t0, n); break;
    }
    return s;
  }
  // Columns [c0, c0 + n) of every row (a block of a head's value columns).
  InputRows columns(index_t c0, index_t n) const {
    InputRows s = *this;
    switch (storage_) {
      case Storage::bf16: s.bf16_ = bf16_.slice(1, c0, n); break;
      case Storage::f16: s.f16_ = f16_.slice(1, c0, n); break;
      case Storage::f32: s.f32_ = f32_.slice(1, c0, n); break;
    }
    return s;
  }
  // Row t as fp32: the stored row itself, or widened into `scratch` (size(1) floats).
  ConstView<float, 1> row(index_t t, float* scratch) const {
    if (is_float()) return f32_[t];
    load(t, scratch);
    return ConstView<float, 1>(scratch, {size(1)});
  }
  // Asks for row t's cache lines ahead of its load, into L2 (contiguous rows only; others are left
  // to the hardware). The recurrent prefill asks for the next head's block of rows (~20 KB at
  // K = V = 64) while its state and operands fill most of L1: requested into L1 they evicted
  // those, and gla-1.3b-t8192 ran 1.04-1.12x slower (one thread, 2026-12-05).
  void prefetch(index_t t) const {
    switch (storage_) {
      case Storage::bf16: return prefetch_row(bf16_[t]);
      case Storage::f16: return prefetch_row(f16_[t]);
      case Storage::f32: return prefetch_row(f32_[t]);
    }
  }
  // Row t widened (or copied) into dst[0..size(1)).
  void load(index_t t, float* dst) const {
    switch (storage_) {
      case Storage::bf16: return widen(bf16_[t], dst);
      case Storage::f16: return widen(f16_[t], dst);
      case Storage::f32: break;
    }
    const ConstView<float, 1> r = f32_[t];
    if (r.is_last_dim_contiguous()) {
      std::copy(r.data(), r.data() + r.size(0), dst);
      return;
    }
    for (index_t i = 0; i < r.size(0); ++i) dst[i] = r(i);
  }

 private:
  enum class Storage { f32, bf16, f16 };
  template <class H>
  static void widen(const ConstView<H, 1>& r, float* dst) {
    if (r.size(0) <= 1 || r.stride(0) == 1) return convert(r.data(), dst, r.size(0));  // vectorized
    for (index_t i = 0; i < r.size(0); ++i) dst[i] = r(i).to_float();
  }
  template <class E>
  static void prefetch_row(const ConstView<E, 1>& r) {
    if (r.size(0) <= 1 || r.stride(0) == 1) detail::prefetch_row<false, kAheadLocality>(r.data(), r.size(0));
  }
  ConstView<float, 2> f32_;
  ConstView<bf16, 2> bf16_;
  ConstView<f16, 2> f16_;
  Storage storage_ = Storage::f32;
};

// The work of one (b, hv): everything the recurrent and chunked engines need.
struct HeadProblem {
  InputRows q, k;            // [T,K] raw rows (phi is applied while loading)
  InputRows v;               // [T,V]
  // [T,K] log-decays. A scalar gate is the same view with column stride 0 (and a fixed per-head
  // decay has both strides 0), so one loader serves every gate kind. Empty: no decay.
  ConstView<float, 2> g;
  bool scalar_gate = false;  // g is constant along K: cheaper per-token exp and masks
  ConstView<float, 1> u;     // [K] rwkv6 bonus (Readout::exclusive_bonus only)
  TensorView<float, 2> o;    // [T,V]
  FeatureMap phi = FeatureMap::identity;
  float scale = 1.f;         // folded into the loaded q
  bool normalize = false;    // o_t /= scale * phi(q_t).z_t (the state carries z as column V)
  Readout readout = Readout::inclusive;
  // Chunked form only: the GEMMs on AVX512-BF16 dot products (operands rounded to bf16, fp32
  // accumulation and state; chunked.hpp) where the target has them. Set by GLA's and
  // linear_attention's bf16_compute.
  bool bf16_dot = false;

  index_t T() const { return q.size(0); }
  index_t K() const { return q.size(1); }
  index_t Kf() const { return feature_dim(phi, q.size(1)); }
  index_t V() const { return v.size(1); }
  // Columns of the internal state: z rides along as an extra value column when normalizing.
  index_t Vp() const { return v.size(1) + (normalize ? 1 : 0); }
  bool gated() const { return g.has_value(); }
};

// Tokens [t0, t0 + n) of a head, as a head of its own.
inline HeadProblem slice_head(const HeadProblem& p, index_t t0, index_t n) {
  HeadProblem s = p;
  s.q = p.q.slice(t0, n);
  s.k = p.k.slice(t0, n);
  s.v = p.v.slice(t0, n);
  s.o = p.o.slice(0, t0, n);
  if (p.g.has_value()) s.g = p.g.slice(0, t0, n);
  return s;
}

// Columns cols of a head's values and outputs, as a head of its own (value_columns.hpp: the
// state's columns evolve independently, o = sum_r q_r s_r): the same q, k and gates, the block's
// v and o columns. With normalize, the block carries its own z column: every block divides by it.
inline HeadProblem value_columns(const HeadProblem& p, ValueColumns cols) {
  HeadProblem s = p;
  s.v = p.v.columns(cols.begin, cols.width);
  s.o = p.o.slice(1, cols.begin, cols.width);
  return s;
}

// Copies a strided row into contiguous memory (or returns it when it already is contiguous).
inline const float* row_ptr(const ConstView<float, 1>& row, float* scratch) {
  if (row.size(0) <= 1 || row.stride(0) == 1) return row.data();
  for (index_t i = 0; i < row.size(0); ++i) scratch[i] = row(i);
  return scratch;
}

// out[0..Kf) = phi(x) * factor, x a row of K values.
inline void apply_feature_map(FeatureMap phi, const ConstView<float, 1>& x, float factor, float* out) {
  const index_t K = x.size(0);
  switch (phi) {
    case FeatureMap::identity:
      if (K <= 1 || x.stride(0) == 1) return scaled_copy(x.data(), factor, out, K);  // vectorized
      for (index_t i = 0; i < K; ++i) out[i] = factor * x(i);
      return;
    case FeatureMap::elu1:
      if (x.stride(0) == 1) return elu1_scaled(x.data(), factor, out, K);
      for (index_t i = 0; i < K; ++i) {
        const float a = x(i);
        out[i] = factor * (a > 0.f ? a + 1.f : std::exp(a));
      }
      return;
    case FeatureMap::relu:
      if (x.stride(0) == 1) return relu_scaled(x.data(), factor, out, K);
      for (index_t i = 0; i < K; ++i) out[i] = factor * std::max(x(i), 0.f);
      return;
    case FeatureMap::taylor2: {
      const float d = static_cast<float>(K);
      const float c1 = factor / std::sqrt(std::sqrt(d));
      const float c2 = factor / (std::sqrt(2.f) * std::sqrt(d));
      out[0] = factor;
      for (index_t i = 0; i < K; ++i) out[1 + i] = c1 * x(i);
      float* quad = out + 1 + K;
      for (index_t i = 0; i < K; ++i) {
        const float xi = c2 * x(i);
        if (x.stride(0) == 1) {
          scaled_copy(x.data(), xi, quad + i * K, K);
          continue;
        }
        for (index_t j = 0; j < K; ++j) quad[i * K + j] = xi * x(j);
      }
      return;
    }
    case FeatureMap::dpfp1:
    case FeatureMap::dpfp2:
    case FeatureMap::dpfp3:
      dpfp_row(x, dpfp_rolls(phi), factor, out);
      return;
  }
}

// Loads v_t into out[0..V) and appends the constant 1 that accumulates z when normalizing.
inline void load_value_row(const HeadProblem& p, index_t t, float* out) {
  p.v.load(t, out);
  if (p.normalize) out[p.V()] = 1.f;
}

// out[0..K) = g_t (the decay row of token t, broadcast for scalar gates).
inline void load_gate_row(const HeadProblem& p, index_t t, float* out) {
  const ConstView<float, 1> row = p.g[t];
  for (index_t i = 0; i < row.size(0); ++i) out[i] = row(i);
}

// out[0..n) = exp(x[0..n)), vectorized (x contiguous).
inline void exp_copy(const float* x, float* out, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) simd::store(out + i, simd::exp(simd::load(x + i)));
  for (index_t i = nv; i < n; ++i) out[i] = std::exp(x[i]);
}

// Elementwise exp of n contiguous floats, in place.
inline void exp_inplace(float* x, index_t n) { exp_copy(x, x, n); }

// q . (u * k), rwkv6's bonus of one token: vectorized, as a scalar loop it was ~20% of an rwkv6
// step or prefill (64 dependent adds per token and head), and ~4% of the chunked form's
// one-thread call at K = V = 1024 (load_chunk). Here beside the loaders so that every form calls
// it (the recurrent prefill sums it inside its block prep where u is contiguous).
inline float bonus_dot(const float* q, const ConstView<float, 1>& u, const float* k, index_t K) {
  float sum = 0.f;
  index_t i = 0;
  if (u.is_last_dim_contiguous()) {
    const float* up = u.data();
    simd::Batch<float> acc(0.f);
    for (; i + simd::kWidth <= K; i += simd::kWidth)
      acc = simd::fma(simd::load(q + i) * simd::load(up + i), simd::load(k + i), acc);
    sum = simd::reduce_add(acc);
  }
  for (; i < K; ++i) sum += q[i] * u(i) * k[i];
  return sum;
}

// Writes one output row from the internal row of Vp values (dividing by the z column).
inline void store_output_row(const HeadProblem& p, index_t t, const float* row) {
  const TensorView<float, 1> out = p.o[t];
  const index_t V = p.V();
  if (p.normalize) {
    const float inv = 1.f / row[V];
    for (index_t i = 0; i < V; ++i) out(i) = row[i] * inv;
  } else if (out.stride(0) == 1) {  // the element loop through the view cost the chunked GLA call at K = 64 ~9%
    std::copy(row, row + V, out.data());
  } else {
    for (index_t i = 0; i < V; ++i) out(i) = row[i];
  }
}

// Whether x[0..n) (elements `stride` apart) holds a value that is no log-decay (> 0 or NaN).
// Vectorized for unit stride: a scalar compare per element (and integer divisions per row to
// find it) made the check 10-16% of a one-thread GLA recurrent prefill at K = 64.
inline bool has_bad_log_gate(const float* x, index_t n, index_t stride) {
  index_t i = 0;
  if (stride == 1) {
    const simd::Batch<float> zero(0.f);
    simd::BatchBool<float> bad(false);
    for (; i + simd::kWidth <= n; i += simd::kWidth) bad = bad | !(simd::load(x + i) <= zero);
    if (xsimd::any(bad)) return true;
  }
  bool bad = false;
  for (; i < n; ++i) bad |= !(x[i * stride] <= 0.f);
  return bad;
}

// Rejects a positive or NaN log-gate: exp(g) > 1 makes the state grow without bound and the
// chunked form's decay factors overflow. One read of g, split over the executor; it costs about
// 1/V of the op itself. A contiguous g is scanned as one flat array per task (rows located only
// on failure), a strided one row by row. `dims` names the layout for the message.
template <std::size_t Rank>
void check_log_gate(const ArgCheck& check, const char* argument, const ConstView<float, Rank>& g,
                    const Executor& executor) {
  if (!g.has_value() || g.numel() == 0) return;
  const index_t rows = g.numel() / g.size(Rank - 1);
  const index_t inner = g.size(Rank - 1);
  const bool contiguous = g.is_contiguous();
  // Index of row r's first element: rows enumerate all leading indices in row-major order.
  auto row_offset = [&](index_t r, std::array<index_t, Rank>& idx) {
    index_t offset = 0;
    for (std::size_t d = Rank - 1; d-- > 0;) {
      idx[d] = r % g.size(d);
      r /= g.size(d);
      offset += idx[d] * g.stride(d);
    }
    return offset;
  };
  std::atomic<index_t> first_bad{rows};
  parallel_for(executor, rows, 4096 / std::max<index_t>(inner, 1) + 1, [&](index_t r0, index_t r1) {
    if (contiguous && !has_bad_log_gate(g.data() + r0 * inner, (r1 - r0) * inner, 1)) return;
    std::array<index_t, Rank> idx{};
    for (index_t r = r0; r < r1; ++r) {
      const float* row = g.data() + (contiguous ? r * inner : row_offset(r, idx));
      if (has_bad_log_gate(row, inner, g.stride(Rank - 1))) {
        index_t expected = first_bad.load();
        while (r < expected && !first_bad.compare_exchange_weak(expected, r)) {
        }
        return;
      }
    }
  });
  const index_t r = first_bad.load();
  if (r == rows) return;
  std::array<index_t, Rank> idx{};
  const float* row = g.data() + row_offset(r, idx);
  for (index_t i = 0; i < inner; ++i) {
    const float value = row[i * g.stride(Rank - 1)];
    if (value <= 0.f) continue;
    idx[Rank - 1] = i;
    check.fail(argument,
               "must be a log-space decay <= 0 everywhere (multiplier exp(g) <= 1), got " +
                   std::to_string(value) + " at " + shape_to_string(idx) + " of shape " +
                   shape_to_string(g.shape()));
  }
}

}  // namespace seqmix::detail::la
