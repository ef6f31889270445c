// Public types shared by the linear-attention family (SPEC section 4): linear_attention,
// gated_linear_attention (with its named special cases) and rwkv6.
//
// Every op of the family keeps a state S[k][v] per (batch, value head), shape [B,HV,K,V], and
// reads it as o = S^T q. q/k may have fewer heads (H) than v (HV, a multiple of H): value head
// hv uses q/k head hv / (HV/H) (repeat-interleave, SPEC section 1).
#pragma once

#include <cmath>
#include <optional>

#include "seqmix/core/error.hpp"

namespace seqmix {

/// The feature map phi that linear_attention applies to q and k before the recurrence.
enum class FeatureMap {
  identity,  ///< phi(x) = x
  elu1,      ///< phi(x) = elu(x) + 1 (Katharopoulos et al. 2020); always > 0, safe to normalize
  relu,      ///< phi(x) = max(x, 0)
  taylor2,   ///< Based: phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) * sqrt(d))], d = K, so
             ///< phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d); 1 + K + K^2 features
  dpfp1,     ///< DPFP with nu = 1 (Schlag et al. 2021; feature_maps/dpfp.hpp): 2K features
  dpfp2,     ///< DPFP with nu = 2: 4K features
  dpfp3,     ///< DPFP with nu = 3 (ARMT's choice): 6K features
};

/// The number of FeatureMap values (for range checks).
constexpr int kFeatureMapCount = 7;

/// DPFP's roll count nu of a FeatureMap (0 for the other maps).
inline index_t dpfp_rolls(FeatureMap map) {
  switch (map) {
    case FeatureMap::dpfp1: return 1;
    case FeatureMap::dpfp2: return 2;
    case FeatureMap::dpfp3: return 3;
    default: return 0;
  }
}

/// How the decay of gated_linear_attention is given (all in natural-log space, <= 0).
enum class GateKind {
  channel,  ///< g [B,T,Hg,K]: one log-decay per token and key channel (GLA)
  scalar,   ///< g_scalar [B,T,Hg]: one per token and head (simple GLA, "Mamba-2 as attention")
  retnet,   ///< fixed per value head h: log(1 - 2^(-5-h)) (RetNet retention); no gate input
  none,     ///< no decay (plain linear attention)
};

/// Which prefill algorithm an op runs. All compute the same function (to rounding).
enum class LinearAttentionAlgorithm {
  automatic,  ///< whichever measured faster for the shape (see detail::choose_algorithm)
  chunked,    ///< chunkwise-parallel on GEMMs (README.md in this folder)
  recurrent,  ///< token by token, vectorized over V: the decode step's kernel applied T times
};

/// Number of features phi produces from K inputs: the state's key dimension.
inline index_t feature_dim(FeatureMap map, index_t K) {
  if (map == FeatureMap::taylor2) return 1 + K + K * K;
  if (dpfp_rolls(map) > 0) return 2 * dpfp_rolls(map) * K;
  return K;
}

/// RetNet's fixed decay of head h, in log space: log(1 - 2^(-5-h)).
inline float retnet_log_decay(index_t h) {
  return static_cast<float>(std::log1p(-std::exp2(-5.0 - static_cast<double>(h))));
}

}  // namespace seqmix
