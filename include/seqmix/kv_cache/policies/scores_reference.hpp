// Attention scores of an observation window, the input of SnapKV, H2O, TOVA, AdaKV and FastGen.
//
// Given the queries of the last W tokens, q_obs [B, W, Hq, D], and the cached keys
// keys [B, N, Hkv, D] (Hq % Hkv == 0; query head h reads KV head h / (Hq / Hkv)):
//
//   p[b, h, w, j] = softmax_j( scale * q_obs[b, w, h] . keys[b, j, h / G] )   over visible j
//
// with j visible to window query w when Visibility::All, or when j <= pos_w under
// Visibility::Causal, pos_w = query_positions[b, w] if given, else N - W + w (the window is the
// last W entries, bottom-right aligned as in `attention`). A query with no visible key has all
// probabilities 0. Probabilities are then aggregated over the G query heads of each KV head
// (GroupReduction::Sum or Mean):
//
//   observation_attention  probs  [B, Hkv, W, N]  = agg_{h in group} p[b, h, w, j]
//   observation_scores     scores [B, Hkv, N]     = sum_w agg_{h in group} p[b, h, w, j]
//
// observation_scores is SnapKV's "vote" (attention of the window queries summed over the
// window) and H2O's accumulated attention. This header holds the argument structs, validation
// and the reference forms (plain loops); scores.hpp holds the fast forms.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::kv {

/// Which entries each observation-window query sees.
enum class Visibility {
  All,     ///< every window query sees every entry (e.g. TOVA's current query over the whole cache)
  Causal,  ///< window query w sees entries j <= pos_w (prefill: the window's own keys are causal)
};

/// How the query heads of a GQA group combine into their KV head's score.
enum class GroupReduction {
  Sum,   ///< add the probabilities of the G query heads of a KV head (SnapKV's GQA vote)
  Mean,  ///< average them (keeps scores on the scale of one head's probabilities)
};

/// Options of observation_scores / observation_attention (the window attention score-based
/// policies rank entries by).
struct ObservationOptions {
  /// Multiplies q.k before the softmax; std::nullopt means 1/sqrt(D).
  std::optional<float> scale;
  /// Causal by default (the window's own keys are seen causally).
  Visibility visibility = Visibility::Causal;
  /// Sum over the GQA group by default (SnapKV's vote).
  GroupReduction group = GroupReduction::Sum;
};

/// Arguments of observation_scores / observation_attention: the window's queries and the cached
/// keys they score.
struct ObservationInputs {
  ConstView<float, 4> q;                        ///< [B, W, Hq, D] the observation window's queries
  ConstView<float, 4> keys;                     ///< [B, N, Hkv, D] the cached keys, entry j at index j
  IndexTable query_positions = {};              ///< [B, W] int32 or int64, optional; Causal: query w sees j <= pos
};

namespace detail {

struct ObservationDims {
  index_t B, W, Hq, Hkv, D, N;
  index_t group() const noexcept { return Hq / Hkv; }
};

inline ObservationDims validate_observation(const ArgCheck& check, const ObservationInputs& in,
                                            const ObservationOptions& options) {
  check.shape("q", in.q, {-1, -1, -1, -1}, "B,W,Hq,D");
  const index_t B = in.q.size(0), W = in.q.size(1), Hq = in.q.size(2), D = in.q.size(3);
  check.shape("keys", in.keys, {B, -1, -1, D}, "B,N,Hkv,D");
  const index_t N = in.keys.size(1), Hkv = in.keys.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "keys", "KV heads (dimension 2)");
  in.query_positions.check_optional_shape(check, "query_positions", {B, W}, "B,W");
  in.query_positions.check_position_range(check, "query_positions");
  if (options.scale) check.finite(*options.scale, "scale");
  return {B, W, Hq, Hkv, D, N};
}

// Last visible entry index + 1 of window query w (0: it sees nothing), clamped to [0, N].
inline index_t visible_end(const ObservationInputs& in, const ObservationOptions& options, const ObservationDims& d,
                           index_t b, index_t w) {
  if (options.visibility == Visibility::All) return d.N;
  const index_t pos = in.query_positions.has_value() ? in.query_positions(b, w) : d.N - d.W + w;
  return std::clamp<index_t>(pos + 1, 0, d.N);
}

inline float observation_scale(const ObservationOptions& options, index_t D) {
  return options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(std::max<index_t>(D, 1)));
}

}  // namespace detail

namespace reference {

/// The definition, one query row at a time (double accumulation); probs [B, Hkv, W, N].
inline void observation_attention(const ObservationInputs& in, const TensorView<float, 4>& probs,
                                  const ObservationOptions& options = {}) {
  const ArgCheck check("kv::reference::observation_attention");
  const auto d = detail::validate_observation(check, in, options);
  check.shape("probs", probs, {d.B, d.Hkv, d.W, d.N}, "B,Hkv,W,N");
  const float scale = detail::observation_scale(options, d.D);
  const double weight = options.group == GroupReduction::Mean ? 1.0 / static_cast<double>(d.group()) : 1.0;
  std::vector<double> logits(static_cast<std::size_t>(d.N));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hk = 0; hk < d.Hkv; ++hk)
      for (index_t w = 0; w < d.W; ++w) {
        for (index_t j = 0; j < d.N; ++j) probs(b, hk, w, j) = 0.f;
        const index_t end = detail::visible_end(in, options, d, b, w);
        for (index_t h = hk * d.group(); h < (hk + 1) * d.group(); ++h) {
          double max_logit = -std::numeric_limits<double>::infinity();
          for (index_t j = 0; j < end; ++j) {
            double s = 0.0;
            for (index_t c = 0; c < d.D; ++c) s += static_cast<double>(in.q(b, w, h, c)) * in.keys(b, j, hk, c);
            logits[static_cast<std::size_t>(j)] = s * scale;
            max_logit = std::max(max_logit, logits[static_cast<std::size_t>(j)]);
          }
          double sum = 0.0;
          for (index_t j = 0; j < end; ++j) sum += std::exp(logits[static_cast<std::size_t>(j)] - max_logit);
          for (index_t j = 0; j < end; ++j)
            probs(b, hk, w, j) += static_cast<float>(weight * std::exp(logits[static_cast<std::size_t>(j)] - max_logit) / sum);
        }
      }
}

/// scores[b, h, j] = sum_w probs[b, h, w, j] of observation_attention; scores [B, Hkv, N].
inline void observation_scores(const ObservationInputs& in, const TensorView<float, 3>& scores,
                               const ObservationOptions& options = {}) {
  const ArgCheck check("kv::reference::observation_scores");
  const auto d = detail::validate_observation(check, in, options);
  check.shape("scores", scores, {d.B, d.Hkv, d.N}, "B,Hkv,N");
  Tensor<float, 4> probs({d.B, d.Hkv, d.W, d.N});
  observation_attention(in, probs.view(), options);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hkv; ++h)
      for (index_t j = 0; j < d.N; ++j) {
        double s = 0.0;
        for (index_t w = 0; w < d.W; ++w) s += probs(b, h, w, j);
        scores(b, h, j) = static_cast<float>(s);
      }
}

}  // namespace reference
}  // namespace seqmix::kv
