// Budget allocation across layers (PyramidKV) and across the heads of a layer (AdaKV).
//
//   pyramid_budgets   per-layer capacities on a linear (arithmetic) schedule, largest at the
//                     bottom layer, summing exactly to a total
//   adakv             per-head capacities from score mass: every head first keeps its floor
//                     (protected entries, then its best scores), the rest of the layer's total goes
//                     to the globally best remaining scores of all heads
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// Options of pyramid_budgets / pyramid_budget (PyramidKV's per-layer capacities).
struct PyramidOptions {
  /// Sum of the per-layer capacities.
  index_t total = 0;
  /// Top-layer capacity = total / (layers * beta) (PyramidKV's beta; larger = steeper pyramid).
  /// beta = 1 gives a flat schedule.
  double beta = 20.0;
  /// No layer gets less (e.g. sink_tokens + window, so every layer's Budget stays valid).
  index_t min_per_layer = 0;
};

/// Capacities of layers 0 (bottom) .. layers-1 (top): a decreasing arithmetic sequence from
/// 2 * total / layers - top to top (both ends clamped to min_per_layer), rounded down, with the
/// remainder handed to the bottom layers one entry each, so the result is non-increasing and
/// sums exactly to total.
inline std::vector<index_t> pyramid_budgets(index_t layers, const PyramidOptions& options) {
  const ArgCheck check("kv::pyramid_budgets");
  check.that(layers >= 1, "layers", "must be >= 1, got " + std::to_string(layers));
  check.that(options.beta >= 1.0, "beta", "must be >= 1 (top layer at most the mean), got " + std::to_string(options.beta));
  check.that(options.min_per_layer >= 0, "min_per_layer", "must be >= 0, got " + std::to_string(options.min_per_layer));
  if (options.total < layers * options.min_per_layer)
    check.fail("total", "= " + std::to_string(options.total) + " is below layers * min_per_layer = " +
                            std::to_string(layers) + " * " + std::to_string(options.min_per_layer) + " = " +
                            std::to_string(layers * options.min_per_layer));
  const double mean = static_cast<double>(options.total) / static_cast<double>(layers);
  const double top = std::max(mean / options.beta, static_cast<double>(options.min_per_layer));
  const double bottom = 2.0 * mean - top;
  std::vector<index_t> budgets(static_cast<std::size_t>(layers));
  index_t assigned = 0;
  for (index_t l = 0; l < layers; ++l) {
    const double value = layers == 1 ? mean : bottom - (bottom - top) * static_cast<double>(l) / static_cast<double>(layers - 1);
    budgets[static_cast<std::size_t>(l)] = std::max(options.min_per_layer, static_cast<index_t>(std::floor(value)));
    assigned += budgets[static_cast<std::size_t>(l)];
  }
  // Floors lose less than one entry per layer; give them back from the bottom up.
  for (index_t l = 0; assigned < options.total; l = (l + 1) % layers, ++assigned) ++budgets[static_cast<std::size_t>(l)];
  // Clamping to min_per_layer can overshoot (only when top was clamped); take back from the top down
  // among layers above the minimum.
  for (index_t l = layers - 1; assigned > options.total; l = (l + layers - 1) % layers) {
    auto& b = budgets[static_cast<std::size_t>(l)];
    if (b > options.min_per_layer) --b, --assigned;
  }
  return budgets;
}

/// One layer's capacity (bottom = 0) from the same schedule.
inline index_t pyramid_layer_budget(index_t layer, index_t layers, const PyramidOptions& options) {
  const ArgCheck check("kv::pyramid_layer_budget");
  check.that(layer >= 0 && layer < layers, "layer",
             "must be in [0, " + std::to_string(layers) + "), got " + std::to_string(layer));
  return pyramid_budgets(layers, options)[static_cast<std::size_t>(layer)];
}

/// Options of adakv (AdaKV's budget split across the heads of a layer).
struct AdaKvOptions {
  /// Entries kept per batch row over all heads of the layer.
  index_t total = 0;
  /// Every head keeps at least this many (AdaKV's safeguard, e.g. alpha * total / heads); it
  /// includes the protected entries, so it must be >= sink_tokens + recent.
  index_t floor_per_head = 0;
  /// Leading entries every head keeps whatever their score (StreamingLLM sinks).
  index_t sink_tokens = 0;
  /// Newest entries every head keeps whatever their score.
  index_t recent = 0;
};

/// What adakv returns: the kept entries and the budget each head got.
struct AdaKvResult {
  /// Kept entries per (b, h), strictly increasing.
  KeptSet kept;
  std::vector<index_t> budgets;  ///< [B * H]: budgets[b * H + h] = kept(b, h).size()
};

/// scores [B, H, N] must be comparable across heads (e.g. observation_scores probabilities,
/// pooled as in SnapKV). Per batch row: each head keeps min(N, floor_per_head) (protected
/// entries first, then its best scores); the remaining total - sum of floors goes to the
/// highest remaining scores over all heads (ties: lower head, then older entry). A head with
/// N entries never exceeds N; the kept counts sum to min(total, H * N).
inline AdaKvResult adakv(const ConstView<float, 3>& scores, const AdaKvOptions& options,
                         const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::adakv");
  check.shape("scores", scores, {-1, -1, -1}, "B,H,N");
  const index_t B = scores.size(0), H = scores.size(1), N = scores.size(2);
  Budget floor_budget{options.floor_per_head, options.sink_tokens, options.recent};
  detail::check_budget(check, floor_budget);
  if (options.total < H * options.floor_per_head)
    check.fail("total", "= " + std::to_string(options.total) + " is below heads * floor_per_head = " +
                            std::to_string(H) + " * " + std::to_string(options.floor_per_head) + " = " +
                            std::to_string(H * options.floor_per_head));
  AdaKvResult result{KeptSet(B, H, N), std::vector<index_t>(static_cast<std::size_t>(B * H))};
  parallel_for(executor, B, 1, [&](index_t begin, index_t end) {
    std::vector<index_t> scratch, pool;
    std::vector<char> taken(static_cast<std::size_t>(H * N));
    for (index_t b = begin; b < end; ++b) {
      std::fill(taken.begin(), taken.end(), char{0});
      index_t used = 0;
      for (index_t h = 0; h < H; ++h) {
        const auto score = [&](index_t j) { return scores(b, h, j); };
        result.kept(b, h) = detail::select_head(N, floor_budget, Keep::Highest, score, scratch);
        for (index_t j : result.kept(b, h)) taken[static_cast<std::size_t>(h * N + j)] = 1;
        used += static_cast<index_t>(result.kept(b, h).size());
      }
      // Global competition among the entries no head has kept yet; flat index h * N + j.
      pool.clear();
      const auto flat_score = [&](index_t f) { return scores(b, f / std::max<index_t>(N, 1), f % std::max<index_t>(N, 1)); };
      for (index_t f = 0; f < H * N; ++f)
        if (!taken[static_cast<std::size_t>(f)]) pool.push_back(f);
      const index_t extra = std::min<index_t>(options.total - used, static_cast<index_t>(pool.size()));
      if (extra > 0 && extra < static_cast<index_t>(pool.size())) {
        std::nth_element(pool.begin(), pool.begin() + extra, pool.end(), [&](index_t x, index_t y) {
          const float kx = detail::rank_key(flat_score(x), Keep::Highest), ky = detail::rank_key(flat_score(y), Keep::Highest);
          return kx > ky || (kx == ky && x < y);
        });
      }
      for (index_t e = 0; e < std::max<index_t>(extra, 0); ++e) {
        const index_t f = pool[static_cast<std::size_t>(e)];
        result.kept(b, f / N).push_back(f % N);
      }
      for (index_t h = 0; h < H; ++h) {
        auto& row = result.kept(b, h);
        std::sort(row.begin(), row.end());
        result.budgets[static_cast<std::size_t>(b * H + h)] = static_cast<index_t>(row.size());
      }
    }
  });
  return result;
}

}  // namespace seqmix::kv
