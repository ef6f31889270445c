// feature_map: the learned and random feature maps of linear attention as an operator of their
// own, applied to q or k before any member of the family (linear_attention, GLA, the delta rule):
// their cost is a [rows, K] x [K, M] product, the same order as the projection that made q and
// k, so a separate pass costs little against fusing them into every chunk loader. The
// parameter-free DPFP is also fused (FeatureMap::dpfp1..3 of linear_attention).
//
// x [B,T,H,K] -> phi [B,T,H,Kf]; x' = input_scale * x; W [Hw,M,K], b [Hw,M], Hw = 1 or H:
//   dpfp             phi = DPFP_nu(x')  (dpfp.hpp), Kf = 2 nu K          (Schlag et al. 2021)
//   positive_random  phi_j = exp(w_j . x' - |x'|^2 / 2 - c) / sqrt(M), Kf = M
//                    c = max_j w_j . x' with subtract_row_max, else 0    (Performer's FAVOR+)
//   hedgehog         z = W x' + b, phi = [softmax(z), softmax(-z)], Kf = 2M   (Zhang et al. 2024)
// With input_scale = K^(-1/4) on both q and k and W from orthogonal_random_features (random.hpp),
// E[phi(q) . phi(k)] = exp(q . k / sqrt(K)): linear_attention with normalize then estimates
// softmax attention (Choromanski et al. 2021). subtract_row_max changes phi by a per-row factor,
// which cancels only where normalize divides it out: queries, not keys.
//
// Non-finite input: the definition's IEEE arithmetic, row by row (a NaN in x makes its row of phi
// NaN; an infinity makes the softmax rows of hedgehog NaN). Other rows are never touched.
#pragma once

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Which map feature_map applies.
enum class FeatureMapKind {
  dpfp,             ///< DPFP with options.dpfp_nu rolls; no weights
  positive_random,  ///< FAVOR+ positive random features exp(W x - |x|^2/2) / sqrt(M); weight [Hw,M,K]
  hedgehog,         ///< [softmax(W x + b), softmax(-(W x + b))]; weight [Hw,M,K], bias [Hw,M] optional
};

/// Options of feature_map.
struct FeatureMapOptions {
  /// The map.
  FeatureMapKind kind = FeatureMapKind::dpfp;
  /// DPFP's number of rolls nu, in [1, 2K - 1] (ARMT uses 3); Kf = 2 nu K.
  index_t dpfp_nu = 1;
  /// x is multiplied by this first; Performer uses K^(-1/4) on q and k. Finite and > 0.
  float input_scale = 1.f;
  /// positive_random only: subtract the row's largest w_j . x' inside the exp, so no feature
  /// overflows. A per-row factor: use it for queries under linear_attention's normalize only.
  bool subtract_row_max = false;
};

/// feature_map's inputs.
struct FeatureMapInputs {
  ConstView<float, 4> x;            ///< [B,T,H,K]
  ConstView<float, 3> weight = {};  ///< [Hw,M,K], Hw = 1 (shared) or H; positive_random and hedgehog
  ConstView<float, 2> bias = {};    ///< [Hw,M], optional, hedgehog only
};

/// feature_map's output; must not overlap an input.
struct FeatureMapOutputs {
  TensorView<float, 4> phi;  ///< [B,T,H,Kf], Kf = feature_map_dim(options, K, M)
};

/// The number of features of the map: 2 nu K (dpfp), M (positive_random), 2M (hedgehog), with
/// M the weight's row count (ignored by dpfp).
inline index_t feature_map_dim(const FeatureMapOptions& options, index_t K, index_t M = 0) {
  switch (options.kind) {
    case FeatureMapKind::dpfp: return 2 * options.dpfp_nu * K;
    case FeatureMapKind::positive_random: return M;
    case FeatureMapKind::hedgehog: return 2 * M;
  }
  return 0;
}

namespace detail {

// What a validated call resolves.
struct FeatureMapDims {
  index_t B, T, H, K, M, Kf;
  bool shared_weight;  // Hw = 1
};

inline FeatureMapDims validate_feature_map(const char* op, const FeatureMapInputs& in, const FeatureMapOutputs& out,
                                           const FeatureMapOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.kind", options.kind, 3);
  check.shape("x", in.x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,K");
  FeatureMapDims d{in.x.size(0), in.x.size(1), in.x.size(2), in.x.size(3), 0, 0, true};
  if (d.H <= 0 || d.K <= 0)
    check.fail("x", "must have at least one head and one channel, got shape " + shape_to_string(in.x.shape()));
  if (!(std::isfinite(options.input_scale) && options.input_scale > 0.f))
    check.fail("options.input_scale", "must be finite and > 0, got " + std::to_string(options.input_scale));
  if (options.kind == FeatureMapKind::dpfp) {
    check.that(!in.weight.has_value() && !in.bias.has_value(), in.weight.has_value() ? "weight" : "bias",
               "is not used by the dpfp map (it has no parameters)");
    if (options.dpfp_nu < 1 || options.dpfp_nu > 2 * d.K - 1)
      check.fail("options.dpfp_nu", "must be in [1, 2K - 1] = [1, " + std::to_string(2 * d.K - 1) + "], got " +
                                        std::to_string(options.dpfp_nu));
    d.Kf = check.product("options.dpfp_nu", index_t{2}, options.dpfp_nu, d.K);
  } else {
    check.shape("weight", in.weight, std::array<index_t, 3>{-1, -1, d.K}, "Hw,M,K");
    const index_t Hw = in.weight.size(0);
    d.M = in.weight.size(1);
    if (Hw != 1 && Hw != d.H)
      check.fail("weight", "must have Hw = 1 or H = " + std::to_string(d.H) + " heads, got shape " +
                               shape_to_string(in.weight.shape()));
    if (d.M <= 0) check.fail("weight", "must have at least one feature row M, got shape " + shape_to_string(in.weight.shape()));
    d.shared_weight = Hw == 1;
    if (options.kind == FeatureMapKind::positive_random)
      check.that(!in.bias.has_value(), "bias", "is only used by the hedgehog map");
    check.optional_shape("bias", in.bias, std::array<index_t, 2>{Hw, d.M}, "Hw,M");
    d.Kf = options.kind == FeatureMapKind::hedgehog ? check.product("weight", index_t{2}, d.M) : d.M;
    // Parameters, read once: a non-finite weight would turn every row's features into NaN.
    for (index_t h = 0; h < Hw; ++h)
      for (index_t j = 0; j < d.M; ++j) {
        for (index_t k = 0; k < d.K; ++k)
          if (!std::isfinite(in.weight(h, j, k)))
            check.fail("weight", "must be finite; element [" + std::to_string(h) + ", " + std::to_string(j) + ", " +
                                     std::to_string(k) + "] is not");
        if (in.bias.has_value() && !std::isfinite(in.bias(h, j)))
          check.fail("bias", "must be finite; element [" + std::to_string(h) + ", " + std::to_string(j) + "] is not");
      }
  }
  check.shape("phi", out.phi, std::array<index_t, 4>{d.B, d.T, d.H, d.Kf}, "B,T,H,Kf");
  check.no_overlap("phi", out.phi, "x", in.x).no_overlap("phi", out.phi, "weight", in.weight);
  check.no_overlap("phi", out.phi, "bias", in.bias);
  return d;
}

}  // namespace detail

namespace reference {

/// The readable definition of feature_map, in double precision (see the top of this header).
inline void feature_map(const FeatureMapInputs& in, const FeatureMapOutputs& out, const FeatureMapOptions& options = {}) {
  const detail::FeatureMapDims d = detail::validate_feature_map("reference::feature_map", in, out, options);
  const double s = options.input_scale;
  std::vector<double> x(static_cast<std::size_t>(d.K)), z(static_cast<std::size_t>(d.M));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t)
      for (index_t h = 0; h < d.H; ++h) {
        const TensorView<float, 1> phi = out.phi[b][t][h];
        for (index_t k = 0; k < d.K; ++k) x[k] = s * in.x(b, t, h, k);
        if (options.kind == FeatureMapKind::dpfp) {
          const index_t n = 2 * d.K;
          auto r = [&](index_t i) { return i < d.K ? (x[i] < 0 ? 0.0 : x[i]) : (-x[i - d.K] < 0 ? 0.0 : -x[i - d.K]); };
          for (index_t j = 1; j <= options.dpfp_nu; ++j)
            for (index_t i = 0; i < n; ++i) phi((j - 1) * n + i) = static_cast<float>(r(i) * r(((i - j) % n + n) % n));
          continue;
        }
        const index_t hw = d.shared_weight ? 0 : h;
        double norm2 = 0, zmax = -INFINITY;
        for (index_t k = 0; k < d.K; ++k) norm2 += x[k] * x[k];
        for (index_t j = 0; j < d.M; ++j) {
          double acc = in.bias.has_value() ? in.bias(hw, j) : 0.0;
          for (index_t k = 0; k < d.K; ++k) acc += static_cast<double>(in.weight(hw, j, k)) * x[k];
          z[j] = acc;
          if (acc > zmax) zmax = acc;
        }
        if (options.kind == FeatureMapKind::positive_random) {
          const double c = options.subtract_row_max ? zmax : 0.0, inv_sqrt_m = 1.0 / std::sqrt(static_cast<double>(d.M));
          for (index_t j = 0; j < d.M; ++j) phi(j) = static_cast<float>(std::exp(z[j] - norm2 / 2 - c) * inv_sqrt_m);
          continue;
        }
        // hedgehog: softmax(z) and softmax(-z), each shifted by its own maximum.
        double zmin = INFINITY;
        for (index_t j = 0; j < d.M; ++j) zmin = z[j] < zmin ? z[j] : zmin;
        double sum_pos = 0, sum_neg = 0;
        for (index_t j = 0; j < d.M; ++j) sum_pos += std::exp(z[j] - zmax), sum_neg += std::exp(zmin - z[j]);
        for (index_t j = 0; j < d.M; ++j) {
          phi(j) = static_cast<float>(std::exp(z[j] - zmax) / sum_pos);
          phi(d.M + j) = static_cast<float>(std::exp(zmin - z[j]) / sum_neg);
        }
      }
}

}  // namespace reference
}  // namespace seqmix
