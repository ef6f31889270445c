// product_key_memory: a key-value memory of N = n_sub^2 rows searched through two sub-key tables
// (Lample et al., "Large Memory Layers with Product Keys", NeurIPS 2019; Berges et al., "Memory
// Layers at Scale", 2024, for the SiLU-gated output). README.md has the derivation.
//
// This header holds the arguments shared by both forms, their validation and the readable
// definition (seqmix::reference::product_key_memory: an exhaustive search over all N keys, in
// double). The fast form, which scores only the 2 n_sub sub-keys, is in fast.hpp.
//
//   query [T,H,Dk] (Dk even), keys_a, keys_b [H,n_sub,Dk/2], values [N,Dv] with N = n_sub^2,
//   optional gate [T,Dv]. For each token t and head h, key (i, j) (value row i * n_sub + j) scores
//     s(i, j) = scale * (<q[:Dk/2], keys_a[h,i]> + <q[Dk/2:], keys_b[h,j]>),
//   the top_k scores are kept (ties to the lower row), w = softmax over them, and
//     y[t] = sum_h sum_r w[h,r] * values[row[h,r]]      (times silu(gate[t]) when a gate is given)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of product_key_memory (docs/operators.md section 13).
struct ProductKeyMemoryOptions {
  /// Rows read per token and head (k); 1 <= top_k <= n_sub (the sub-key count).
  index_t top_k = 32;
  /// Multiplies every score before the top-k and the softmax; 0 means 1 / sqrt(Dk).
  float scale = 0.f;
};

/// Inputs of product_key_memory. Value is float, f16, bf16 or std::int8_t (the value table's
/// storage; int8 rows are quantized with one scale per row, see quantize_pkm_values).
template <class Value>
struct ProductKeyMemoryInputs {
  ConstView<float, 3> query;      ///< [T,H,Dk], Dk even: the first half scores keys_a, the second keys_b
  ConstView<float, 3> keys_a;     ///< [H,n_sub,Dk/2]: sub-keys of the first half
  ConstView<float, 3> keys_b;     ///< [H,n_sub,Dk/2]: sub-keys of the second half
  ConstView<Value, 2> values;     ///< [n_sub * n_sub, Dv]: row i * n_sub + j belongs to key (i, j); rows contiguous
  ConstView<float, 2> gate = {};  ///< [T,Dv], optional: y is multiplied by silu(gate)
  /// [n_sub * n_sub]: row r of an int8 table stands for value_scales[r] * values[r] (required with
  /// int8 values, refused otherwise). A NaN scale marks a row whose source held NaN or inf.
  ConstView<float, 1> value_scales = {};
};

/// Quantizes a float value table to int8 rows with one scale per row (symmetric: scale =
/// max|x| / 127, codes = round(x / scale)), so an int8 table costs a quarter of fp32 plus 4 bytes
/// per row. The per-element error is at most scale / 2. A row holding NaN or inf gets a NaN scale
/// (and zero codes): the rows that read it come out NaN, as they would from the fp32 table, rather
/// than silently finite. values [N,Dv], codes [N,Dv], scales [N]; codes must not overlap values.
inline void quantize_pkm_values(const ConstView<float, 2>& values, const TensorView<std::int8_t, 2>& codes,
                                const TensorView<float, 1>& scales) {
  const ArgCheck check("quantize_pkm_values");
  check.shape("values", values, {-1, -1}, "N,Dv");
  const index_t N = values.size(0), Dv = values.size(1);
  check.shape("codes", codes, {N, Dv}, "N,Dv").shape("scales", scales, {N}, "N");
  check.no_overlap("codes", codes, "values", values).no_overlap("scales", scales, "values", values);
  for (index_t r = 0; r < N; ++r) {
    float amax = 0.f;
    bool finite = true;
    for (index_t c = 0; c < Dv; ++c) {
      const float x = values(r, c);
      finite = finite && std::isfinite(x);
      amax = std::max(amax, std::fabs(x));
    }
    const float scale = !finite ? std::numeric_limits<float>::quiet_NaN() : amax / 127.f;
    scales(r) = scale;
    for (index_t c = 0; c < Dv; ++c) {
      const float q = finite && scale > 0.f ? std::nearbyint(values(r, c) / scale) : 0.f;
      codes(r, c) = static_cast<std::int8_t>(std::clamp(q, -127.f, 127.f));
    }
  }
}

/// Outputs of product_key_memory. y must not overlap an input.
struct ProductKeyMemoryOutputs {
  TensorView<float, 2> y;                   ///< [T,Dv]: the heads' reads, summed (and gated)
  TensorView<std::int64_t, 3> rows = {};    ///< [T,H,top_k], optional: the value rows read, best first
  TensorView<float, 3> weights = {};        ///< [T,H,top_k], optional: their softmax weights
};

namespace detail {

/// Sizes of one product_key_memory call.
struct PkmDims {
  index_t T, H, Dk, half, n_sub, N, Dv, k;
  float scale;
};

template <class Value>
PkmDims validate_pkm(const ArgCheck& check, const ProductKeyMemoryInputs<Value>& in,
                     const ProductKeyMemoryOutputs& out, const ProductKeyMemoryOptions& options) {
  check.shape("query", in.query, {-1, -1, -1}, "T,H,Dk");
  PkmDims d{};
  d.T = in.query.size(0);
  d.H = in.query.size(1);
  d.Dk = in.query.size(2);
  check.that(d.Dk >= 2 && d.Dk % 2 == 0, "query", "needs an even Dk >= 2 (two halves), got Dk = " + std::to_string(d.Dk));
  d.half = d.Dk / 2;
  check.shape("keys_a", in.keys_a, {d.H, -1, d.half}, "H,n_sub,Dk/2");
  d.n_sub = in.keys_a.size(1);
  check.that(d.n_sub >= 1, "keys_a", "needs at least one sub-key");
  check.shape("keys_b", in.keys_b, {d.H, d.n_sub, d.half}, "H,n_sub,Dk/2");
  d.N = check.product("values", d.n_sub, d.n_sub);
  check.shape("values", in.values, {d.N, -1}, "n_sub*n_sub,Dv");
  d.Dv = in.values.size(1);
  check.that(in.values.is_last_dim_contiguous(), "values", "rows must be contiguous (stride 1 along Dv)");
  check.optional_shape("gate", in.gate, {d.T, d.Dv}, "T,Dv");
  if constexpr (std::is_same_v<Value, std::int8_t>)
    check.shape("value_scales", in.value_scales, {d.N}, "n_sub*n_sub");
  else
    check.that(!in.value_scales.has_value(), "value_scales", "is only used with int8 values");
  d.k = options.top_k;
  check.that(d.k >= 1 && d.k <= d.n_sub, "top_k",
             "must be in [1, n_sub] = [1, " + std::to_string(d.n_sub) + "], got " + std::to_string(d.k));
  check.finite(options.scale, "scale");
  d.scale = options.scale == 0.f ? 1.f / std::sqrt(static_cast<float>(d.Dk)) : options.scale;
  check.shape("y", out.y, {d.T, d.Dv}, "T,Dv");
  check.optional_shape("rows", out.rows, {d.T, d.H, d.k}, "T,H,top_k");
  check.optional_shape("weights", out.weights, {d.T, d.H, d.k}, "T,H,top_k");
  check.no_overlap("y", out.y, "query", in.query)
      .no_overlap("y", out.y, "gate", in.gate)
      .no_overlap("y", out.y, "values", in.values)
      .no_overlap("y", out.y, "keys_a", in.keys_a)
      .no_overlap("y", out.y, "keys_b", in.keys_b)
      .no_overlap("y", out.y, "weights", out.weights);
  return d;
}

/// A score as a top-k key: NaN ranks below every number (it is never preferred to a real score).
template <class S>
S pkm_rank(S s) {
  return std::isnan(s) ? -std::numeric_limits<S>::infinity() : s;
}

/// Orders (score, row) pairs best first: higher score, then lower row. Both forms select with it.
template <class S>
bool pkm_better(S sa, std::int64_t ra, S sb, std::int64_t rb) {
  const S a = pkm_rank(sa), b = pkm_rank(sb);
  return a > b || (a == b && ra < rb);
}

inline float pkm_silu(float v) { return v / (1.f + std::exp(-v)); }

/// Element (row, c) of the value table as the number it stands for (int8 rows times their scale).
template <class Value>
double pkm_value(const ProductKeyMemoryInputs<Value>& in, std::int64_t row, index_t c) {
  if constexpr (std::is_same_v<Value, std::int8_t>)
    return static_cast<double>(in.value_scales(row)) * in.values(row, c);
  else
    return static_cast<double>(static_cast<float>(in.values(row, c)));
}

}  // namespace detail

namespace reference {

/// product_key_memory by exhaustive search: all N = n_sub^2 keys scored in double, the top_k kept,
/// softmax, weighted sum of value rows. For small N (tests); O(T H N Dk).
template <class Value>
void product_key_memory(const ProductKeyMemoryInputs<Value>& in, const ProductKeyMemoryOutputs& out,
                        const ProductKeyMemoryOptions& options = {}) {
  const ArgCheck check("reference::product_key_memory");
  const auto d = detail::validate_pkm(check, in, out, options);
  std::vector<double> sa(static_cast<std::size_t>(d.n_sub)), sb(sa), score(static_cast<std::size_t>(d.N));
  std::vector<std::int64_t> order(static_cast<std::size_t>(d.N));
  std::vector<double> acc(static_cast<std::size_t>(d.Dv));
  for (index_t t = 0; t < d.T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (index_t h = 0; h < d.H; ++h) {
      for (index_t i = 0; i < d.n_sub; ++i) {
        double a = 0, b = 0;
        for (index_t c = 0; c < d.half; ++c) {
          a += static_cast<double>(in.query(t, h, c)) * in.keys_a(h, i, c);
          b += static_cast<double>(in.query(t, h, d.half + c)) * in.keys_b(h, i, c);
        }
        sa[static_cast<std::size_t>(i)] = a;
        sb[static_cast<std::size_t>(i)] = b;
      }
      for (index_t i = 0; i < d.n_sub; ++i)
        for (index_t j = 0; j < d.n_sub; ++j)
          score[static_cast<std::size_t>(i * d.n_sub + j)] =
              d.scale * (sa[static_cast<std::size_t>(i)] + sb[static_cast<std::size_t>(j)]);
      std::iota(order.begin(), order.end(), std::int64_t{0});
      std::partial_sort(order.begin(), order.begin() + d.k, order.end(), [&](std::int64_t x, std::int64_t y) {
        return detail::pkm_better(score[static_cast<std::size_t>(x)], x, score[static_cast<std::size_t>(y)], y);
      });
      const double top = detail::pkm_rank(score[static_cast<std::size_t>(order[0])]);
      double total = 0;
      std::vector<double> w(static_cast<std::size_t>(d.k));
      for (index_t r = 0; r < d.k; ++r)
        total += w[static_cast<std::size_t>(r)] = std::exp(score[static_cast<std::size_t>(order[static_cast<std::size_t>(r)])] - top);
      for (index_t r = 0; r < d.k; ++r) {
        const std::int64_t row = order[static_cast<std::size_t>(r)];
        const double weight = w[static_cast<std::size_t>(r)] / total;
        for (index_t c = 0; c < d.Dv; ++c)
          acc[static_cast<std::size_t>(c)] += weight * detail::pkm_value(in, row, c);
        if (out.rows.has_value()) out.rows(t, h, r) = row;
        if (out.weights.has_value()) out.weights(t, h, r) = static_cast<float>(weight);
      }
    }
    for (index_t c = 0; c < d.Dv; ++c) {
      const double g = in.gate.has_value() ? static_cast<double>(detail::pkm_silu(in.gate(t, c))) : 1.0;
      out.y(t, c) = static_cast<float>(acc[static_cast<std::size_t>(c)] * g);
    }
  }
}

}  // namespace reference
}  // namespace seqmix
