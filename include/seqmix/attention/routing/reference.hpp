// routing_attention (Routing Transformer, Roy et al. 2021, SPEC section 5): attention within
// balanced clusters found by online k-means.
//
// Centroids mu [Hq, C, Dk] are given by the caller (one set per query head), who may update them
// between calls with routing_update_centroids (the paper's exponential moving average). Routing
// compares unit vectors: x^ = x / |x| (a zero row stays zero) against the centroids as given
// (routing_update_centroids keeps them unit length). For query head h (KV head h / G):
//   query score  a_c(i) = q^_i . mu_c,   key score  b_c(j) = k^_j . mu_c   (k^ from the KV head)
// Cluster c holds the top-w queries by a_c and the top-w keys by b_c (ties: the lower position;
// NaN scores rank last), w = cluster_size, default ceil(T / C) (the paper's T / C): balanced
// clusters, as the paper's code sorts the tokens by their score against each centroid. A token
// may be in several clusters or in none. In cluster c, a member query i attends to the member keys
// j with j <= i (causal) by a plain softmax of s_ij = scale * q_i . k_j (the raw q and k: the
// unit vectors only route), giving (o_c(i), lse_c(i)). A query in several clusters combines them
// by lse (lse = log sum_c exp(lse_c), o = sum_c exp(lse_c - lse) o_c; a key in two of its
// clusters counts twice). A query in no cluster, or whose clusters hold no visible key, gets
// o = 0 and lse = -inf: the paper's code scatters the clusters' outputs into a zero tensor, so
// unselected positions are zero (no local fallback here; combine with a local attention through
// attention_merge if one is wanted).
//
// Shared QK (k not given): the keys are q (so Hkv = Hq), as the paper's shared-QK language
// models. Separate k: GQA allowed, each query head routes its KV head's keys with its own
// centroids. One cluster with w = T is dense causal attention (tested).
//
// The membership is one routine, routing_clusters (Eigen GEMM of the unit rows against the
// centroids, then a strict top-w per centroid), shared by the forms so they cluster identically.
// No decode form: membership is a ranking over all T tokens, so a new token can push an earlier
// key out of a cluster (or into one) and a step could not reproduce the prefill's row without
// re-ranking the whole sequence.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of routing_attention, reference::routing_attention and routing_clusters.
struct RoutingOptions {
  /// Queries (and keys) per cluster, w; 0 means ceil(T / C) (the paper's T / C); capped at T.
  index_t cluster_size = 0;
  /// Only member keys at positions <= the query's.
  bool causal = true;
  /// Multiplies q . k; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments of routing_attention. k absent: shared QK (the keys are q).
struct RoutingInputs {
  ConstView<float, 4> q;          ///< [B,T,Hq,Dk]
  ConstView<float, 4> k;          ///< [B,T,Hkv,Dk], Hkv divides Hq; optional (shared QK)
  ConstView<float, 4> v;          ///< [B,T,Hkv,Dv]
  ConstView<float, 3> centroids;  ///< [Hq,C,Dk], finite, C >= 1
};

namespace detail {

inline AttentionInputs<float> routing_dense_inputs(const RoutingInputs& in) {
  AttentionInputs<float> dense;
  dense.q = in.q, dense.k = in.k.has_value() ? in.k : in.q, dense.v = in.v;
  return dense;
}

inline AttentionOptions routing_attention_options(const RoutingOptions& options) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = options.causal;
  return o;
}

inline bool routing_all_finite(const ConstView<float, 3>& x) {
  for (index_t a = 0; a < x.size(0); ++a)
    for (index_t b = 0; b < x.size(1); ++b)
      for (index_t c = 0; c < x.size(2); ++c)
        if (!std::isfinite(x(a, b, c))) return false;
  return true;
}

// Checks of what routing_clusters reads; returns w.
inline index_t validate_routing_clusters(const ArgCheck& check, const RoutingInputs& in, const RoutingOptions& options) {
  check.that(options.cluster_size >= 0, "options.cluster_size",
             "must be >= 0 (0: ceil(T / C)), got " + std::to_string(options.cluster_size));
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,Hq,Dk");
  const index_t B = in.q.size(0), T = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3);
  if (in.k.has_value()) {
    check.shape("k", in.k, std::array<index_t, 4>{B, T, -1, Dk}, "B,T,Hkv,Dk");
    if (Hq > 0 || in.k.size(2) > 0) check.divides(in.k.size(2), Hq, "k", "KV heads (dimension 2)");
  }
  check.shape("centroids", in.centroids, std::array<index_t, 3>{Hq, -1, Dk}, "Hq,C,Dk");
  check.that(in.centroids.size(1) >= 1, "centroids", "needs at least one cluster (C >= 1)");
  check.that(routing_all_finite(in.centroids), "centroids", "must be finite");
  const index_t C = in.centroids.size(1);
  const index_t w = options.cluster_size > 0 ? options.cluster_size : (T + C - 1) / C;
  return std::min(w, T);
}

// Validation shared by every form; nothing is written before it passes. Returns w.
inline index_t validate_routing(const char* op, const RoutingInputs& in, const AttentionOutputs& out,
                                const RoutingOptions& options, AttentionDims& d) {
  const ArgCheck check(op);
  const index_t w = validate_routing_clusters(check, in, options);
  d = validate_attention(check, routing_dense_inputs(in), out, routing_attention_options(options));
  if (views_overlap(out.o, in.centroids) || views_overlap(out.lse, in.centroids))
    check.fail("o", "overlaps centroids; routing_attention cannot write in place");
  return w;
}

// Unit rows of x(b, :, h, :) into u [T, Dk] (a zero row stays zero).
inline void routing_unit_rows(const ConstView<float, 4>& x, index_t b, index_t h, RowMajorMatrix<float>& u) {
  const index_t T = x.size(1), D = x.size(3);
  u.resize(T, D);
  const index_t stride = x.stride(3);
  for (index_t t = 0; t < T; ++t) {
    const float* src = x.ptr(b, t, h);
    float* row = u.data() + t * D;
    for (index_t c = 0; c < D; ++c) row[c] = src[c * stride];
    double n = 0.0;
    for (index_t c = 0; c < D; ++c) n += static_cast<double>(row[c]) * row[c];
    const float inv = n > 0.0 ? static_cast<float>(1.0 / std::sqrt(n)) : 0.f;
    for (index_t c = 0; c < D; ++c) row[c] *= inv;
  }
}

// The top-w positions of column c of scores [T, C] (higher first, the lower position on ties,
// NaN last), written increasing to out[0..w).
inline void routing_top_w(const RowMajorMatrix<float>& scores, index_t c, index_t w, std::int32_t* out,
                          std::vector<std::pair<float, std::int32_t>>& cand) {
  const index_t T = scores.rows();
  cand.resize(static_cast<std::size_t>(T));
  for (index_t t = 0; t < T; ++t) {
    const float s = scores(t, c);
    cand[static_cast<std::size_t>(t)] = {s != s ? -std::numeric_limits<float>::infinity() : s, static_cast<std::int32_t>(t)};
  }
  const auto better = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::nth_element(cand.begin(), cand.begin() + (w - 1), cand.end(), better);
  for (index_t e = 0; e < w; ++e) out[e] = cand[static_cast<std::size_t>(e)].second;
  std::sort(out, out + w);
}

}  // namespace detail

/// The clusters: queries[b, h, c, :] and keys[b, h, c, :] are the w member positions of cluster
/// c of query head h (increasing), w as RoutingOptions::cluster_size says. Every form uses this
/// membership. Threaded over (batch row, query head).
inline void routing_clusters(const RoutingInputs& in, const TensorView<std::int32_t, 4>& queries,
                             const TensorView<std::int32_t, 4>& keys, const RoutingOptions& options = {},
                             const Executor& executor = serial_executor()) {
  const ArgCheck check("routing_clusters");
  const index_t w = detail::validate_routing_clusters(check, in, options);
  const index_t B = in.q.size(0), Hq = in.q.size(2), C = in.centroids.size(1), Dk = in.q.size(3);
  check.shape("queries", queries, std::array<index_t, 4>{B, Hq, C, w}, "B,Hq,C,w");
  check.shape("keys", keys, std::array<index_t, 4>{B, Hq, C, w}, "B,Hq,C,w");
  if (B * Hq * w == 0) return;
  const ConstView<float, 4> kk = in.k.has_value() ? in.k : in.q;
  const index_t G = Hq / kk.size(2);
  parallel_for(executor, B * Hq, 1, [&](index_t first, index_t last) {
    RowMajorMatrix<float> u, mu(C, Dk), scores;
    std::vector<std::pair<float, std::int32_t>> cand;
    for (index_t task = first; task < last; ++task) {
      const index_t h = task % Hq, b = task / Hq;
      for (index_t c = 0; c < C; ++c)
        for (index_t x = 0; x < Dk; ++x) mu(c, x) = in.centroids(h, c, x);
      detail::routing_unit_rows(in.q, b, h, u);
      scores.noalias() = u * mu.transpose();
      for (index_t c = 0; c < C; ++c) detail::routing_top_w(scores, c, w, queries.ptr(b, h, c, 0), cand);
      detail::routing_unit_rows(kk, b, h / G, u);
      scores.noalias() = u * mu.transpose();
      for (index_t c = 0; c < C; ++c) detail::routing_top_w(scores, c, w, keys.ptr(b, h, c, 0), cand);
    }
  });
}

/// The paper's online k-means step, called by the caller between forward calls: each unit row
/// x^ of x [B,T,H,Dk] (H = the centroids' heads) is assigned to its nearest centroid (the largest
/// x^ . mu_c; ties: the lower c), then mu_c <- decay mu_c + (1 - decay) mean of its assigned x^,
/// normalized to unit length. A centroid with no assigned row is left as it is. decay in [0, 1]
/// (the paper uses 0.999). Call it with the queries and again with the keys to update on both.
inline void routing_update_centroids(const TensorView<float, 3>& centroids, const ConstView<float, 4>& x, float decay,
                                     const Executor& executor = serial_executor()) {
  const ArgCheck check("routing_update_centroids");
  check.that(std::isfinite(decay) && decay >= 0.f && decay <= 1.f, "decay",
             "must be in [0, 1], got " + std::to_string(decay));
  check.shape("centroids", centroids, std::array<index_t, 3>{-1, -1, -1}, "H,C,Dk");
  check.that(centroids.size(1) >= 1, "centroids", "needs at least one cluster (C >= 1)");
  check.that(detail::routing_all_finite(ConstView<float, 3>(centroids)), "centroids", "must be finite");
  const index_t H = centroids.size(0), C = centroids.size(1), Dk = centroids.size(2);
  check.shape("x", x, std::array<index_t, 4>{-1, -1, H, Dk}, "B,T,H,Dk");
  if (views_overlap(centroids, x)) check.fail("centroids", "overlaps x");
  const index_t B = x.size(0), T = x.size(1);
  parallel_for(executor, H, 1, [&](index_t first, index_t last) {
    RowMajorMatrix<float> u, mu(C, Dk), scores;
    std::vector<double> sum(static_cast<std::size_t>(C * Dk));
    std::vector<index_t> count(static_cast<std::size_t>(C));
    for (index_t h = first; h < last; ++h) {
      for (index_t c = 0; c < C; ++c)
        for (index_t e = 0; e < Dk; ++e) mu(c, e) = centroids(h, c, e);
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (index_t b = 0; b < B; ++b) {
        detail::routing_unit_rows(x, b, h, u);
        scores.noalias() = u * mu.transpose();
        for (index_t t = 0; t < T; ++t) {
          index_t best = 0;
          for (index_t c = 1; c < C; ++c)
            if (scores(t, c) > scores(t, best)) best = c;
          ++count[static_cast<std::size_t>(best)];
          for (index_t e = 0; e < Dk; ++e) sum[static_cast<std::size_t>(best * Dk + e)] += u(t, e);
        }
      }
      for (index_t c = 0; c < C; ++c) {
        const auto n = count[static_cast<std::size_t>(c)];
        if (n == 0) continue;
        std::vector<double> m(static_cast<std::size_t>(Dk));
        double norm = 0.0;
        for (index_t e = 0; e < Dk; ++e) {
          m[static_cast<std::size_t>(e)] = decay * static_cast<double>(mu(c, e)) +
                                           (1.0 - decay) * sum[static_cast<std::size_t>(c * Dk + e)] / static_cast<double>(n);
          norm += m[static_cast<std::size_t>(e)] * m[static_cast<std::size_t>(e)];
        }
        norm = std::sqrt(norm);
        for (index_t e = 0; e < Dk; ++e)
          centroids(h, c, e) = static_cast<float>(norm > 0.0 ? m[static_cast<std::size_t>(e)] / norm : 0.0);
      }
    }
  });
}

namespace reference {

/// The definition (see the top of this file): the shared membership (routing_clusters), then for
/// each cluster and member query a plain softmax in double over its visible member keys, the
/// clusters of a query combined by lse in double. Single-threaded attention; `executor` runs the
/// clustering only.
inline void routing_attention(const RoutingInputs& in, const AttentionOutputs& out, const RoutingOptions& options = {},
                              const Executor& executor = serial_executor()) {
  detail::AttentionDims d{};
  const index_t w = detail::validate_routing("reference::routing_attention", in, out, options, d);
  if (d.B * d.Tq * d.Hq == 0) return;
  const index_t T = d.Tq, C = in.centroids.size(1), G = d.group();
  Tensor<std::int32_t, 4> qm({d.B, d.Hq, C, w}), km({d.B, d.Hq, C, w});
  routing_clusters(in, qm.view(), km.view(), options, executor);
  const ConstView<float, 4> kk = in.k.has_value() ? in.k : in.q;
  const double scale = detail::attention_scale(detail::routing_attention_options(options), d.Dk);
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<double> part_o(static_cast<std::size_t>(T * C * d.Dv)), part_lse(static_cast<std::size_t>(T * C)), s;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hq; ++h) {
      const index_t hk = h / G;
      std::fill(part_lse.begin(), part_lse.end(), -inf);
      for (index_t c = 0; c < C; ++c)
        for (index_t e = 0; e < w; ++e) {
          const index_t i = qm(b, h, c, e);
          s.assign(static_cast<std::size_t>(w), -inf);
          double top = -inf;
          for (index_t f = 0; f < w; ++f) {
            const index_t j = km(b, h, c, f);
            if (options.causal && j > i) continue;
            double dot = 0.0;
            for (index_t x = 0; x < d.Dk; ++x) dot += static_cast<double>(in.q(b, i, h, x)) * kk(b, j, hk, x);
            s[static_cast<std::size_t>(f)] = scale * dot;
            top = std::max(top, s[static_cast<std::size_t>(f)]);
          }
          if (top == -inf) continue;
          double l = 0.0;
          double* o = part_o.data() + (i * C + c) * d.Dv;
          std::fill(o, o + d.Dv, 0.0);
          for (index_t f = 0; f < w; ++f) {
            if (s[static_cast<std::size_t>(f)] == -inf) continue;
            const double p = std::exp(s[static_cast<std::size_t>(f)] - top);
            l += p;
            for (index_t x = 0; x < d.Dv; ++x) o[x] += p * in.v(b, km(b, h, c, f), hk, x);
          }
          for (index_t x = 0; x < d.Dv; ++x) o[x] /= l;
          part_lse[static_cast<std::size_t>(i * C + c)] = top + std::log(l);
        }
      for (index_t i = 0; i < T; ++i) {
        double top = -inf;
        for (index_t c = 0; c < C; ++c) top = std::max(top, part_lse[static_cast<std::size_t>(i * C + c)]);
        double total = 0.0;
        for (index_t c = 0; c < C && top > -inf; ++c) total += std::exp(part_lse[static_cast<std::size_t>(i * C + c)] - top);
        for (index_t x = 0; x < d.Dv; ++x) {
          double acc = 0.0;
          for (index_t c = 0; c < C && top > -inf; ++c) {
            const double lc = part_lse[static_cast<std::size_t>(i * C + c)];
            if (lc > -inf) acc += std::exp(lc - top) * part_o[static_cast<std::size_t>((i * C + c) * d.Dv + x)];
          }
          out.o(b, i, h, x) = static_cast<float>(top > -inf ? acc / total : 0.0);
        }
        if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(top > -inf ? top + std::log(total) : -inf);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
