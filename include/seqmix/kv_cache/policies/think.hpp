// ThinK key-channel pruning: per (batch row, KV head), keep the key channels that contribute
// most to the query-key products of an observation window.
//
// For KV head h with query heads g in its GQA group, stack the window queries of all of them into
// Q [G * W, D] and the keys into K [N, D]. Channel c contributes the rank-one slice
// Q[:, c] K[:, c]^T to Q K^T; its score is that slice's Frobenius norm, which factors as
//   score_c = ||Q[:, c] K[:, c]^T||_F = ||Q[:, c]||_2 * ||K[:, c]||_2,
// so it costs O((G * W + N) * D), not a GEMM. The top keep_channels scores are kept; q.k is then
// approximated by q_kept . k_kept (the pruned channels' terms dropped). The kept set of head h
// applies to its keys and to the queries of every query head of its group.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// Options of ThinK's key-channel pruning.
struct ThinkOptions {
  /// Channels kept per head; 0 means round(keep_ratio * D), at least 1.
  index_t keep_channels = 0;
  /// Fraction of channels kept when keep_channels is 0 (ThinK prunes 40-50%: 0.5-0.6 kept).
  double keep_ratio = 0.5;
};

/// Channels ThinK keeps per head of size D: keep_channels (at most D) or round(keep_ratio * D),
/// at least 1.
inline index_t think_kept_channels(index_t D, const ThinkOptions& options) {
  if (options.keep_channels > 0) return std::min(options.keep_channels, D);
  return std::clamp<index_t>(static_cast<index_t>(std::lround(options.keep_ratio * static_cast<double>(D))), 1, D);
}

/// scores[b, h, c] = ||Q[:, c]||_2 * ||K[:, c]||_2 as above. q [B, W, Hq, D], keys [B, N, Hkv, D],
/// scores [B, Hkv, D].
inline void think_scores(const ConstView<float, 4>& q, const ConstView<float, 4>& keys,
                         const TensorView<float, 3>& scores) {
  const ArgCheck check("kv::think_scores");
  check.shape("q", q, {-1, -1, -1, -1}, "B,W,Hq,D");
  const index_t B = q.size(0), W = q.size(1), Hq = q.size(2), D = q.size(3);
  check.shape("keys", keys, {B, -1, -1, D}, "B,N,Hkv,D");
  const index_t N = keys.size(1), Hkv = keys.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "keys", "KV heads (dimension 2)");
  check.shape("scores", scores, {B, Hkv, D}, "B,Hkv,D");
  const index_t G = Hkv > 0 ? Hq / Hkv : 0;
  std::vector<double> qn(static_cast<std::size_t>(D)), kn(static_cast<std::size_t>(D));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hkv; ++h) {
      std::fill(qn.begin(), qn.end(), 0.0);
      std::fill(kn.begin(), kn.end(), 0.0);
      for (index_t w = 0; w < W; ++w)
        for (index_t g = h * G; g < (h + 1) * G; ++g)
          for (index_t c = 0; c < D; ++c) qn[static_cast<std::size_t>(c)] += double(q(b, w, g, c)) * q(b, w, g, c);
      for (index_t j = 0; j < N; ++j)
        for (index_t c = 0; c < D; ++c) kn[static_cast<std::size_t>(c)] += double(keys(b, j, h, c)) * keys(b, j, h, c);
      for (index_t c = 0; c < D; ++c)
        scores(b, h, c) = static_cast<float>(std::sqrt(qn[static_cast<std::size_t>(c)] * kn[static_cast<std::size_t>(c)]));
    }
}

/// The kept channels of every (b, KV head): a KeptSet over D "entries", each row of the same size
/// think_kept_channels(D, options), sorted.
inline KeptSet think_channels(const ConstView<float, 4>& q, const ConstView<float, 4>& keys,
                              const ThinkOptions& options = {}, const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::think_channels");
  check.that(options.keep_channels >= 0, "keep_channels", "must be >= 0, got " + std::to_string(options.keep_channels));
  check.that(options.keep_channels > 0 || (options.keep_ratio > 0.0 && options.keep_ratio <= 1.0), "keep_ratio",
             "must be in (0, 1] when keep_channels is 0, got " + std::to_string(options.keep_ratio));
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,Hkv,D");
  Tensor<float, 3> scores({keys.size(0), keys.size(2), keys.size(3)});
  think_scores(q, keys, scores.view());
  const Budget budget{think_kept_channels(keys.size(3), options), 0, 0};
  return select_by_score(scores.cview(), budget, Keep::Highest, executor, "kv::think_channels");
}

namespace detail {
inline void check_channel_set(const ArgCheck& check, const KeptSet& channels, index_t B, index_t Hkv, index_t D) {
  if (channels.batch() != B || channels.heads() != Hkv || channels.entries() != D)
    check.fail("channels", "is for [B, Hkv, D] = [" + std::to_string(channels.batch()) + ", " +
                               std::to_string(channels.heads()) + ", " + std::to_string(channels.entries()) +
                               "], the tensor has [" + std::to_string(B) + ", " + std::to_string(Hkv) + ", " +
                               std::to_string(D) + "]");
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hkv; ++h)
      if (static_cast<index_t>(channels(b, h).size()) != channels.max_kept())
        check.fail("channels", "must keep the same number of channels in every head");
}
}  // namespace detail

/// out[b, j, h, i] = keys[b, j, h, channels(b, h)[i]]. keys [B, N, Hkv, D], out [B, N, Hkv, Dk].
inline void think_gather_keys(const ConstView<float, 4>& keys, const KeptSet& channels,
                              const TensorView<float, 4>& out) {
  const ArgCheck check("kv::think_gather_keys");
  check.shape("keys", keys, {-1, -1, -1, -1}, "B,N,Hkv,D");
  const index_t B = keys.size(0), N = keys.size(1), Hkv = keys.size(2);
  detail::check_channel_set(check, channels, B, Hkv, keys.size(3));
  const index_t Dk = channels.max_kept();
  check.shape("out", out, {B, N, Hkv, Dk}, "B,N,Hkv,Dk");
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < N; ++j)
      for (index_t h = 0; h < Hkv; ++h) {
        const auto& kept = channels(b, h);
        for (index_t i = 0; i < Dk; ++i) out(b, j, h, i) = keys(b, j, h, kept[static_cast<std::size_t>(i)]);
      }
}

/// out[b, t, g, i] = q[b, t, g, channels(b, g / G)[i]] (a query head uses its KV head's channels).
/// q [B, T, Hq, D], out [B, T, Hq, Dk].
inline void think_gather_queries(const ConstView<float, 4>& q, const KeptSet& channels,
                                 const TensorView<float, 4>& out) {
  const ArgCheck check("kv::think_gather_queries");
  check.shape("q", q, {-1, -1, -1, -1}, "B,T,Hq,D");
  const index_t B = q.size(0), T = q.size(1), Hq = q.size(2), Hkv = channels.heads();
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "channels", "KV heads");
  detail::check_channel_set(check, channels, B, Hkv, q.size(3));
  const index_t Dk = channels.max_kept(), G = Hq / Hkv;
  check.shape("out", out, {B, T, Hq, Dk}, "B,T,Hq,Dk");
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t g = 0; g < Hq; ++g) {
        const auto& kept = channels(b, g / G);
        for (index_t i = 0; i < Dk; ++i) out(b, t, g, i) = q(b, t, g, kept[static_cast<std::size_t>(i)]);
      }
}

}  // namespace seqmix::kv
