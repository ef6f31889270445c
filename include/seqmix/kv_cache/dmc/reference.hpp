// dmc: Dynamic Memory Compression (Nawrot et al., "Dynamic Memory Compression: Retrofitting LLMs
// for Accelerated Inference", ICML 2024). README.md has the semantics and the fast form.
//
// This header holds the cache (DmcCache: per batch row and KV head a variable-length list of
// slots with their accumulated importance), the arguments shared by every form, their validation
// and the readable definition (seqmix::reference::dmc_attention: per-token loops in double). The
// fast prefill is in fast.hpp, the decode step in step.hpp.
//
// Per batch row b, KV head h and token t (in order), with the caller's decision alpha[b,t,h] and
// importance omega[b,t,h]:
//   merge = round(alpha) == 1 and the head already holds a slot     (alpha >= 0.5 rounds to 1)
//   merge:   K[last] = (z[last] K[last] + omega k_t) / (z[last] + omega), same for V; z[last] += omega
//   append:  K[n] = k_t, V[n] = v_t, z[n] = omega, n += 1
// then every query head of h's group (query head hq reads KV head hq / (Hq / Hkv)) attends over
// the head's slots as they are right after token t's update:
//   o[b,t,hq] = sum_j softmax_j(scale <q[b,t,hq], K[j]>) V[j]
// So a query sees every closed slot and the last slot's running average up to its own token (the
// paper's prefill, which masks a partial accumulation once the next token merged into it).
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Sizes of a DmcCache (docs/operators.md section 6, dmc).
struct DmcCacheConfig {
  ///@{
  index_t batch = 1, kv_heads = 1, key_dim = 0, value_dim = 0;  ///< B, Hkv, Dk, Dv (all >= 1)
  ///@}
  /// Slots per (batch row, KV head), allocated once; an update that would need more is refused.
  index_t capacity = 0;
};

namespace detail {
struct DmcCacheAccess;
}

/// The DMC cache of one attention layer: per batch row b and KV head h, `size(b, h)` slots of an
/// fp32 key [Dk], an fp32 value [Dv] and the summed importance z of the tokens merged into it.
/// Storage is allocated once in the constructor ([B,Hkv,capacity,Dk] keys, [B,Hkv,capacity,Dv]
/// values, [B,Hkv,capacity] importances); dmc_attention and dmc_decode_step write it.
class DmcCache {
 public:
  /// Allocates the storage of `config` (ShapeError on a size below 1 or an overflowing product).
  explicit DmcCache(const DmcCacheConfig& config) : config_(config) {
    const ArgCheck check("DmcCache");
    check.that(config.batch >= 1, "batch", "must be >= 1, got " + std::to_string(config.batch))
        .that(config.kv_heads >= 1, "kv_heads", "must be >= 1, got " + std::to_string(config.kv_heads))
        .that(config.key_dim >= 1, "key_dim", "must be >= 1, got " + std::to_string(config.key_dim))
        .that(config.value_dim >= 1, "value_dim", "must be >= 1, got " + std::to_string(config.value_dim))
        .that(config.capacity >= 1, "capacity", "must be >= 1, got " + std::to_string(config.capacity));
    const index_t heads = check.product("batch", config.batch, config.kv_heads);
    const index_t slots = check.product("capacity", heads, config.capacity);
    keys_.assign(static_cast<std::size_t>(check.product("key_dim", slots, config.key_dim)), 0.f);
    values_.assign(static_cast<std::size_t>(check.product("value_dim", slots, config.value_dim)), 0.f);
    z_.assign(static_cast<std::size_t>(slots), 0.f);
    size_.assign(static_cast<std::size_t>(heads), 0);
    tokens_.assign(static_cast<std::size_t>(config.batch), 0);
  }

  /// The sizes the cache was made with.
  const DmcCacheConfig& config() const noexcept { return config_; }
  /// Slots held by (b, h).
  index_t size(index_t b, index_t h) const { return size_[head_index(b, h)]; }
  /// Tokens absorbed by batch row b (appended or merged); tokens(b) / size(b, h) is the
  /// compression ratio of head h.
  index_t tokens(index_t b) const { return tokens_[static_cast<std::size_t>(b)]; }
  /// Keys of (b, h): [size(b,h), Dk].
  ConstView<float, 2> keys(index_t b, index_t h) const {
    return ConstView<float, 2>(keys_.data() + head_index(b, h) * config_.capacity * config_.key_dim,
                               {size(b, h), config_.key_dim});
  }
  /// Values of (b, h): [size(b,h), Dv].
  ConstView<float, 2> values(index_t b, index_t h) const {
    return ConstView<float, 2>(values_.data() + head_index(b, h) * config_.capacity * config_.value_dim,
                               {size(b, h), config_.value_dim});
  }
  /// Summed importance of (b, h)'s slots: [size(b,h)].
  ConstView<float, 1> importance(index_t b, index_t h) const {
    return ConstView<float, 1>(z_.data() + head_index(b, h) * config_.capacity, {size(b, h)});
  }
  /// Empties batch row b (a new sequence in that row); storage is kept.
  void clear(index_t b) {
    const ArgCheck check("DmcCache::clear");
    check.that(b >= 0 && b < config_.batch, "b", "must be in [0, " + std::to_string(config_.batch) + "), got " + std::to_string(b));
    for (index_t h = 0; h < config_.kv_heads; ++h) size_[head_index(b, h)] = 0;
    tokens_[static_cast<std::size_t>(b)] = 0;
  }
  /// Bytes the held slots occupy (keys, values and importances, fp32).
  std::size_t bytes() const {
    std::size_t slots = 0;
    for (const index_t s : size_) slots += static_cast<std::size_t>(s);
    return slots * sizeof(float) * static_cast<std::size_t>(config_.key_dim + config_.value_dim + 1);
  }

 private:
  friend struct detail::DmcCacheAccess;
  std::size_t head_index(index_t b, index_t h) const { return static_cast<std::size_t>(b * config_.kv_heads + h); }

  DmcCacheConfig config_;
  std::vector<float> keys_, values_, z_;  // [B,Hkv,capacity,Dk], [B,Hkv,capacity,Dv], [B,Hkv,capacity]
  std::vector<index_t> size_;             // [B,Hkv]
  std::vector<index_t> tokens_;           // [B]
  std::vector<float> scratch_;            // [B*Hkv, row]: the decode step's queries, accumulators and scores per task
};

/// Inputs of a DMC prefill (or a chunk of one): T new tokens per batch row.
struct DmcInputs {
  ConstView<float, 4> q;      ///< [B,T,Hq,Dk], Hq a multiple of the cache's Hkv
  ConstView<float, 4> k;      ///< [B,T,Hkv,Dk]
  ConstView<float, 4> v;      ///< [B,T,Hkv,Dv]
  ConstView<float, 3> alpha;  ///< [B,T,Hkv]: decision in [0, 1], rounded (>= 0.5: merge into the last slot)
  ConstView<float, 3> omega;  ///< [B,T,Hkv]: importance, finite and > 0
};

/// Inputs of one DMC decode step: one token per batch row.
struct DmcStepInputs {
  ConstView<float, 3> q;      ///< [B,Hq,Dk]
  ConstView<float, 3> k;      ///< [B,Hkv,Dk]
  ConstView<float, 3> v;      ///< [B,Hkv,Dv]
  ConstView<float, 2> alpha;  ///< [B,Hkv]
  ConstView<float, 2> omega;  ///< [B,Hkv]
};

/// Options of dmc_attention and dmc_decode_step.
struct DmcOptions {
  /// Multiplies every score; 0 means 1 / sqrt(Dk).
  float scale = 0.f;
};

namespace detail {

/// The cache's storage, for the operators of this folder.
struct DmcCacheAccess {
  static float* key(DmcCache& c, index_t b, index_t h, index_t slot) {
    return c.keys_.data() + (c.head_index(b, h) * c.config_.capacity + slot) * c.config_.key_dim;
  }
  static float* value(DmcCache& c, index_t b, index_t h, index_t slot) {
    return c.values_.data() + (c.head_index(b, h) * c.config_.capacity + slot) * c.config_.value_dim;
  }
  static float& z(DmcCache& c, index_t b, index_t h, index_t slot) {
    return c.z_[c.head_index(b, h) * c.config_.capacity + slot];
  }
  static index_t& size(DmcCache& c, index_t b, index_t h) { return c.size_[c.head_index(b, h)]; }
  static index_t& tokens(DmcCache& c, index_t b) { return c.tokens_[static_cast<std::size_t>(b)]; }
  /// Grows the step's scratch to B*Hkv rows of `row` floats (allocates only when it grows).
  static void reserve_scratch(DmcCache& c, index_t row) {
    const auto need = static_cast<std::size_t>(c.config_.batch * c.config_.kv_heads * row);
    if (c.scratch_.size() < need) c.scratch_.resize(need);
  }
  static float* scratch(DmcCache& c, index_t offset) { return c.scratch_.data() + offset; }
};

/// The rounded decision: true = merge into the last slot (the paper's inference rounds alpha).
inline bool dmc_merges(float alpha) { return alpha >= 0.5f; }

/// Sizes of one DMC call.
struct DmcDims {
  index_t B, T, Hq, Hkv, group, Dk, Dv;
  float scale;
};

/// Shapes, then every alpha and omega, then the capacity each head needs: all before any write.
/// The 4-D views of a step are its [B,1,H,D] form (see dmc_step_as_prefill).
inline DmcDims validate_dmc(const ArgCheck& check, const DmcInputs& in, const DmcCache& cache,
                            const TensorView<float, 4>& o, const DmcOptions& options) {
  const auto& cfg = cache.config();
  check.shape("q", in.q, {cfg.batch, -1, -1, cfg.key_dim}, "B,T,Hq,Dk");
  DmcDims d{};
  d.B = cfg.batch, d.T = in.q.size(1), d.Hq = in.q.size(2), d.Hkv = cfg.kv_heads, d.Dk = cfg.key_dim, d.Dv = cfg.value_dim;
  check.divides(d.Hkv, d.Hq, "q", "KV heads (the cache's)");
  d.group = d.Hq / d.Hkv;
  check.shape("k", in.k, {d.B, d.T, d.Hkv, d.Dk}, "B,T,Hkv,Dk")
      .shape("v", in.v, {d.B, d.T, d.Hkv, d.Dv}, "B,T,Hkv,Dv")
      .shape("alpha", in.alpha, {d.B, d.T, d.Hkv}, "B,T,Hkv")
      .shape("omega", in.omega, {d.B, d.T, d.Hkv}, "B,T,Hkv")
      .shape("o", o, {d.B, d.T, d.Hq, d.Dv}, "B,T,Hq,Dv");
  check.finite(options.scale, "scale");
  d.scale = options.scale == 0.f ? 1.f / std::sqrt(static_cast<float>(d.Dk)) : options.scale;
  check.no_overlap("o", o, "q", in.q).no_overlap("o", o, "k", in.k).no_overlap("o", o, "v", in.v)
      .no_overlap("o", o, "alpha", in.alpha).no_overlap("o", o, "omega", in.omega);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hkv; ++h) {
      index_t n = cache.size(b, h);
      for (index_t t = 0; t < d.T; ++t) {
        const float a = in.alpha(b, t, h), w = in.omega(b, t, h);
        if (!(a >= 0.f && a <= 1.f))  // also refuses NaN
          check.fail("alpha", "must be in [0, 1], got " + std::to_string(a) + " at [" + std::to_string(b) + "," +
                                  std::to_string(t) + "," + std::to_string(h) + "]");
        if (!(w > 0.f) || !std::isfinite(w))
          check.fail("omega", "must be finite and > 0, got " + std::to_string(w) + " at [" + std::to_string(b) +
                                  "," + std::to_string(t) + "," + std::to_string(h) + "]");
        if (!(dmc_merges(a) && n > 0)) ++n;
      }
      if (n > cfg.capacity)
        check.fail("cache", "holds " + std::to_string(cfg.capacity) + " slots per head, but batch row " +
                                std::to_string(b) + ", KV head " + std::to_string(h) + " would need " + std::to_string(n));
    }
  return d;
}

/// A step's [B,H,D] views as a one-token prefill's [B,1,H,D] views (no copy).
template <class T>
TensorView<T, 4> dmc_one_token(const TensorView<T, 3>& x) {
  return TensorView<T, 4>(x.data(), {x.size(0), 1, x.size(1), x.size(2)}, {x.stride(0), 0, x.stride(1), x.stride(2)});
}
template <class T>
TensorView<T, 3> dmc_one_token(const TensorView<T, 2>& x) {
  return TensorView<T, 3>(x.data(), {x.size(0), 1, x.size(1)}, {x.stride(0), 0, x.stride(1)});
}

inline DmcInputs dmc_step_as_prefill(const DmcStepInputs& in) {
  return {dmc_one_token(in.q), dmc_one_token(in.k), dmc_one_token(in.v), dmc_one_token(in.alpha), dmc_one_token(in.omega)};
}

}  // namespace detail

namespace reference {

/// DMC prefill by its definition: per batch row and KV head, the cache's slots copied to double,
/// each token merged or appended in turn and every query head of the group attending over the
/// slots as they are then (softmax in double). The cache is written at the end (fp32). For tests.
inline void dmc_attention(const DmcInputs& in, DmcCache& cache, const TensorView<float, 4>& o,
                          const DmcOptions& options = {}) {
  const ArgCheck check("reference::dmc_attention");
  const auto d = detail::validate_dmc(check, in, cache, o, options);
  using Acc = detail::DmcCacheAccess;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hkv; ++h) {
      std::vector<std::vector<double>> K, V;
      std::vector<double> z;
      for (index_t j = 0; j < cache.size(b, h); ++j) {
        K.emplace_back(Acc::key(cache, b, h, j), Acc::key(cache, b, h, j) + d.Dk);
        V.emplace_back(Acc::value(cache, b, h, j), Acc::value(cache, b, h, j) + d.Dv);
        z.push_back(Acc::z(cache, b, h, j));
      }
      for (index_t t = 0; t < d.T; ++t) {
        const double w = in.omega(b, t, h);
        if (detail::dmc_merges(in.alpha(b, t, h)) && !K.empty()) {
          const double zl = z.back();
          for (index_t c = 0; c < d.Dk; ++c) K.back()[c] = (zl * K.back()[c] + w * in.k(b, t, h, c)) / (zl + w);
          for (index_t c = 0; c < d.Dv; ++c) V.back()[c] = (zl * V.back()[c] + w * in.v(b, t, h, c)) / (zl + w);
          z.back() = zl + w;
        } else {
          K.emplace_back(), V.emplace_back();
          for (index_t c = 0; c < d.Dk; ++c) K.back().push_back(in.k(b, t, h, c));
          for (index_t c = 0; c < d.Dv; ++c) V.back().push_back(in.v(b, t, h, c));
          z.push_back(w);
        }
        for (index_t g = 0; g < d.group; ++g) {
          const index_t hq = h * d.group + g;
          std::vector<double> s(K.size());
          double top = -INFINITY;
          for (std::size_t j = 0; j < K.size(); ++j) {
            double dot = 0;
            for (index_t c = 0; c < d.Dk; ++c) dot += static_cast<double>(in.q(b, t, hq, c)) * K[j][c];
            s[j] = d.scale * dot;
            top = std::fmax(top, s[j]);
          }
          // Attention's non-finite rule (docs/reliability.md): a NaN logit (dropped by fmax,
          // kept by exp) or a +inf one makes the row NaN; a row whose every logit is -inf gives
          // 0; a slot of weight exactly 0 takes no part (its inf / NaN value reaches nothing).
          bool nan = false;
          for (double e : s) nan = nan || std::isnan(e);
          if (nan) top = NAN;
          double total = 0;
          for (auto& e : s) total += e = top == -INFINITY ? 0.0 : std::exp(e - top);
          for (index_t c = 0; c < d.Dv; ++c) {
            double acc = 0;
            for (std::size_t j = 0; j < K.size(); ++j)
              if (s[j] != 0.0) acc += s[j] * V[j][c];
            o(b, t, hq, c) = top == -INFINITY ? 0.f : static_cast<float>(acc / total);
          }
        }
      }
      Acc::size(cache, b, h) = static_cast<index_t>(K.size());
      for (std::size_t j = 0; j < K.size(); ++j) {
        const auto slot = static_cast<index_t>(j);
        for (index_t c = 0; c < d.Dk; ++c) Acc::key(cache, b, h, slot)[c] = static_cast<float>(K[j][c]);
        for (index_t c = 0; c < d.Dv; ++c) Acc::value(cache, b, h, slot)[c] = static_cast<float>(V[j][c]);
        Acc::z(cache, b, h, slot) = static_cast<float>(z[j]);
      }
    }
  for (index_t b = 0; b < d.B; ++b) Acc::tokens(cache, b) += d.T;
}

}  // namespace reference
}  // namespace seqmix
