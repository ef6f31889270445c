// infllm (Xiao et al. 2024, "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an
// Efficient Context Memory"): causal attention over the initial tokens, a local window, and the
// top_k blocks of a context memory, each block looked up through a few representative keys.
//
// Positions: the initial tokens are [0, n_init) (n_init = init_tokens). After them the stream
// is cut into memory blocks of bs = block_size tokens, block n = [n_init + n * bs,
// n_init + (n + 1) * bs). A block is sealed (enters the memory) once it lies wholly before the
// local window of w = local_window tokens: for a query at pos, the sealed blocks are n < M(pos),
//   M(pos) = max(0, floor((pos + 1 - w - n_init) / bs)),
// and the local part is every later token, [n_init + M(pos) * bs, pos] (at least w tokens, fewer
// than w + bs: nothing falls between the memory and the window).
//
// Representative keys (computed once, when the block is sealed): every query at position p in
// block n attends causally within the block (keys [start_n, p], softmax of scale * q . k, each
// head of the KV head's group); key j's received attention is the sum of those weights over the
// block's queries and the group's heads. The r = representatives keys with the highest received
// attention (ties: the lower position) represent the block, per KV head.
//
// Lookup: query head h scores block n < M(pos) by (1/r) sum_e q_h . rep_e (its KV head's
// representatives, no scale), and the top_k blocks (ties: the lower block; NaN / -inf never)
// are retrieved. The query attends, in one plain softmax (s = scale * q . k), to
//   [0, min(n_init, pos + 1))  U  the retrieved blocks  U  [n_init + M(pos) * bs, pos],
// so top_k >= M(pos) is dense causal attention.
//
// The memory (InfllmMemory) is the caller's object, grown as the stream goes: every call of
// infllm_attention / reference::infllm_attention takes the Tq new queries and the cache of all
// Tk = memory.length() + Tq keys, accumulates the received attention of the new queries' blocks,
// seals the blocks that left the window, then attends. Feeding a stream in pieces gives the same
// memory and outputs as one call.
//
// Differences from the published code, on purpose: InfLLM scores representatives from the
// attention of the local-window computation over chunks of the prompt; here the score is the
// attention received inside the block (the brief's definition, independent of how the stream is
// chunked). Block lookup is per query head (InfLLM shares it over a layer's heads).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/moba/reference.hpp"  // moba_select_row
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of an InfllmMemory (fixed when it is built; every call reads them from the memory).
struct InfllmOptions {
  /// Tokens per memory block, >= 1.
  index_t block_size = 128;
  /// Representative keys per block, in [1, block_size].
  index_t representatives = 4;
  /// Memory blocks retrieved per query, >= 0.
  index_t top_k = 4;
  /// Initial tokens every query attends to, >= 0.
  index_t init_tokens = 128;
  /// Local window: the last local_window tokens (and up to block_size - 1 more), >= 1.
  index_t local_window = 4096;
  /// Multiplies q.k in the attention and in the representative scores; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale = {};
};

/// Arguments of infllm_attention (KV: float, f16 or bf16).
template <class KV = float>
struct InfllmInputs {
  ConstView<float, 4> q;  ///< [B,Tq,Hq,Dk], the new queries (positions memory.length() .. Tk - 1)
  ConstView<KV, 4> k;     ///< [B,Tk,Hkv,Dk], the whole cache, Tk = memory.length() + Tq
  ConstView<KV, 4> v;     ///< [B,Tk,Hkv,Dv]
};

/// The context memory of a batch of B streams in lockstep: the representative keys of the sealed
/// blocks, and the received attention of the keys not yet sealed. Owned by the caller, grown by
/// every infllm_attention call (or by append).
class InfllmMemory {
 public:
  /// An empty memory for B streams of Hq query heads over Hkv KV heads of Dk channels. Throws
  /// ShapeError on bad options or sizes.
  InfllmMemory(index_t batch, index_t q_heads, index_t kv_heads, index_t head_dim, const InfllmOptions& options = {})
      : options_(options), B_(batch), Hq_(q_heads), Hkv_(kv_heads), Dk_(head_dim) {
    const ArgCheck check("InfllmMemory");
    check.that(options.block_size >= 1, "options.block_size", "must be >= 1, got " + std::to_string(options.block_size));
    check.that(options.representatives >= 1 && options.representatives <= options.block_size,
               "options.representatives",
               "must be in [1, block_size = " + std::to_string(options.block_size) + "], got " +
                   std::to_string(options.representatives));
    check.that(options.top_k >= 0, "options.top_k", "must be >= 0, got " + std::to_string(options.top_k));
    check.that(options.init_tokens >= 0, "options.init_tokens", "must be >= 0, got " + std::to_string(options.init_tokens));
    check.that(options.local_window >= 1, "options.local_window",
               "must be >= 1, got " + std::to_string(options.local_window));
    check.that(batch >= 0 && head_dim >= 0, "batch", "batch and head_dim must be >= 0");
    check.that(kv_heads >= 1 && q_heads >= kv_heads && q_heads % kv_heads == 0, "q_heads",
               "must be a multiple of kv_heads >= 1, got " + std::to_string(q_heads) + " and " + std::to_string(kv_heads));
    pending_.resize(static_cast<std::size_t>(B_ * Hkv_));
  }

  /// The options the memory was built with.
  const InfllmOptions& options() const noexcept { return options_; }
  /// Streams (B).
  index_t batch() const noexcept { return B_; }
  /// Query heads (Hq).
  index_t q_heads() const noexcept { return Hq_; }
  /// KV heads (Hkv).
  index_t kv_heads() const noexcept { return Hkv_; }
  /// Key channels (Dk).
  index_t head_dim() const noexcept { return Dk_; }
  /// Tokens seen so far.
  index_t length() const noexcept { return length_; }
  /// Sealed blocks.
  index_t blocks() const noexcept { return blocks_; }
  /// M(pos): the blocks sealed for a query at position pos.
  index_t blocks_at(index_t pos) const noexcept {
    const index_t free = pos + 1 - options_.local_window - options_.init_tokens;
    return free > 0 ? free / options_.block_size : 0;
  }
  /// First position of block n.
  index_t block_start(index_t n) const noexcept { return options_.init_tokens + n * options_.block_size; }
  /// The representative keys of stream b, block n < blocks(), KV head hk: r rows of Dk floats.
  const float* representatives(index_t b, index_t n, index_t hk) const {
    return reps_.data() + ((n * B_ + b) * Hkv_ + hk) * options_.representatives * Dk_;
  }
  /// Position of representative e of (b, n, hk), increasing in e.
  std::int32_t representative_position(index_t b, index_t n, index_t hk, index_t e) const {
    return positions_[static_cast<std::size_t>(((n * B_ + b) * Hkv_ + hk) * options_.representatives + e)];
  }

  /// Takes the Tq new queries q [B,Tq,Hq,Dk] and the cache k [B,Tk,Hkv,Dk], Tk = length() + Tq:
  /// adds their received attention inside their blocks, seals the blocks that left the window of
  /// the last new query and copies their representative keys. infllm_attention calls it itself;
  /// call it directly only for tokens that are not attended. Throws ShapeError (memory unchanged)
  /// on shapes that do not fit.
  template <class KV>
  void append(const ConstView<float, 4>& q, const ConstView<KV, 4>& k, const Executor& executor = serial_executor()) {
    check_append("InfllmMemory::append", q, k);
    append_checked(q, k, executor);
  }

  /// The checks of append, with op in the messages.
  template <class KV>
  void check_append(const char* op, const ConstView<float, 4>& q, const ConstView<KV, 4>& k) const {
    const ArgCheck check(op);
    check.shape("q", q, std::array<index_t, 4>{B_, -1, Hq_, Dk_}, "B,Tq,Hq,Dk (the memory's B, Hq, Dk)");
    check.shape("k", k, std::array<index_t, 4>{B_, length_ + q.size(1), Hkv_, Dk_},
                "B,memory.length()+Tq,Hkv,Dk (the memory's B, Hkv, Dk)");
  }

  /// append after check_append passed.
  template <class KV>
  void append_checked(const ConstView<float, 4>& q, const ConstView<KV, 4>& k, const Executor& executor) {
    const index_t Tq = q.size(1);
    if (Tq == 0) return;
    const index_t len0 = length_, len1 = len0 + Tq, G = Hq_ / Hkv_, bs = options_.block_size,
                  init = options_.init_tokens, r = options_.representatives;
    const index_t base = block_start(blocks_), sealed = blocks_at(len1 - 1);
    const double scale = options_.scale.has_value() ? static_cast<double>(*options_.scale)
                                                    : 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(Dk_, 1)));
    reps_.resize(static_cast<std::size_t>(sealed * B_ * Hkv_ * r * Dk_));
    positions_.resize(static_cast<std::size_t>(sealed * B_ * Hkv_ * r));
    parallel_for(executor, B_ * Hkv_, 1, [&](index_t first, index_t last) {
      std::vector<double> s;
      std::vector<index_t> order;
      for (index_t bh = first; bh < last; ++bh) {
        const index_t b = bh / Hkv_, hk = bh % Hkv_;
        std::vector<double>& pending = pending_[static_cast<std::size_t>(bh)];
        pending.resize(static_cast<std::size_t>(std::max<index_t>(len1 - base, 0)), 0.0);
        for (index_t i = 0; i < Tq; ++i) {
          const index_t pos = len0 + i;
          if (pos < init) continue;
          const index_t start = block_start((pos - init) / bs);
          for (index_t g = 0; g < G; ++g) {
            s.clear();
            double top = -HUGE_VAL;
            const float* qr = q.ptr(b, i, hk * G + g);
            for (index_t j = start; j <= pos; ++j) {
              // Four partial sums (a fixed order, the same in every form): the dot products are
              // most of an update's cost.
              const KV* kr = k.ptr(b, j, hk);
              double part[4] = {0.0, 0.0, 0.0, 0.0};
              index_t c = 0;
              for (; c + 4 <= Dk_; c += 4)
                for (index_t u = 0; u < 4; ++u)
                  part[u] += static_cast<double>(qr[(c + u) * q.stride(3)]) *
                             static_cast<double>(static_cast<float>(kr[(c + u) * k.stride(3)]));
              for (; c < Dk_; ++c)
                part[0] += static_cast<double>(qr[c * q.stride(3)]) * static_cast<double>(static_cast<float>(kr[c * k.stride(3)]));
              s.push_back(scale * ((part[0] + part[1]) + (part[2] + part[3])));
              top = std::max(top, s.back());
            }
            if (!(top > -HUGE_VAL) || top == HUGE_VAL) continue;  // nothing finite to share out
            double z = 0.0;
            for (double& x : s) x = std::exp(x - top), z += x;
            if (!(z > 0.0) || std::isnan(z)) continue;
            for (index_t j = start; j <= pos; ++j) pending[static_cast<std::size_t>(j - base)] += s[static_cast<std::size_t>(j - start)] / z;
          }
        }
        for (index_t n = blocks_; n < sealed; ++n) {
          const index_t j0 = block_start(n), off = j0 - base;
          order.resize(static_cast<std::size_t>(bs));
          for (index_t e = 0; e < bs; ++e) order[static_cast<std::size_t>(e)] = e;
          const auto better = [&](index_t a, index_t c) {
            const double x = pending[static_cast<std::size_t>(off + a)], y = pending[static_cast<std::size_t>(off + c)];
            return x > y || (x == y && a < c);
          };
          std::partial_sort(order.begin(), order.begin() + r, order.end(), better);
          std::sort(order.begin(), order.begin() + r);
          for (index_t e = 0; e < r; ++e) {
            const index_t j = j0 + order[static_cast<std::size_t>(e)], slot = ((n * B_ + b) * Hkv_ + hk) * r + e;
            positions_[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(j);
            for (index_t c = 0; c < Dk_; ++c) reps_[static_cast<std::size_t>(slot * Dk_ + c)] = static_cast<float>(k(b, j, hk, c));
          }
        }
        if (sealed > blocks_) pending.erase(pending.begin(), pending.begin() + (sealed - blocks_) * bs);
      }
    });
    blocks_ = sealed;
    length_ = len1;
  }

 private:
  InfllmOptions options_;
  index_t B_, Hq_, Hkv_, Dk_;
  index_t length_ = 0, blocks_ = 0;
  std::vector<float> reps_;                   // [blocks, B, Hkv, r, Dk]
  std::vector<std::int32_t> positions_;       // [blocks, B, Hkv, r]
  std::vector<std::vector<double>> pending_;  // per (b, hk): received attention of keys from block_start(blocks_)
};

namespace detail {

template <class KV>
AttentionInputs<KV> infllm_dense_inputs(const InfllmInputs<KV>& in) {
  AttentionInputs<KV> dense;
  dense.q = in.q, dense.k = in.k, dense.v = in.v;
  return dense;
}

inline AttentionOptions infllm_attention_options(const InfllmOptions& options, bool causal) {
  AttentionOptions o;
  o.scale = options.scale, o.causal = causal;
  return o;
}

// Validation shared by every form; neither the memory nor the outputs change before it passes.
template <class KV>
AttentionDims validate_infllm(const char* op, const InfllmMemory& memory, const InfllmInputs<KV>& in,
                              const AttentionOutputs& out) {
  const ArgCheck check(op);
  const AttentionDims d =
      validate_attention(check, infllm_dense_inputs(in), out, infllm_attention_options(memory.options(), true));
  memory.check_append(op, in.q, in.k);
  return d;
}

// Block scores of query row q (Dk floats) against the first `count` sealed blocks of (b, hk):
// score[n] = (1/r) sum_e q . rep_e in float, one fixed order: the one routine every form uses,
// so every form retrieves the same blocks. One vector of partial sums runs over all r
// representatives of a block (lane u holds channels u, u + W, ... of every rep_e) and is reduced
// once: at decode this reads the M * r representative rows per query head, about 2M
// multiply-adds per KV head group at Tk = 131072, which a scalar loop (one dependent add per
// product) made a third of a decode step.
inline void infllm_block_scores(const InfllmMemory& memory, const float* q, index_t q_stride, index_t b, index_t hk,
                                index_t count, float* score) {
  const index_t r = memory.options().representatives, Dk = memory.head_dim(), nv = simd::vector_end(Dk);
  const float inv = 1.f / static_cast<float>(r);
  thread_local std::vector<float> packed;  // q contiguous (the views may be strided), kept per thread
  if (q_stride != 1) {
    packed.resize(static_cast<std::size_t>(Dk));
    for (index_t c = 0; c < Dk; ++c) packed[static_cast<std::size_t>(c)] = q[c * q_stride];
    q = packed.data();
  }
  for (index_t n = 0; n < count; ++n) {
    const float* rep = memory.representatives(b, n, hk);
    simd::Batch<float> acc(0.f);
    for (index_t e = 0; e < r; ++e)
      for (index_t c = 0; c < nv; c += simd::kWidth) acc = simd::fma(simd::load(q + c), simd::load(rep + e * Dk + c), acc);
    float total = simd::reduce_add(acc);
    for (index_t e = 0; e < r; ++e)
      for (index_t c = nv; c < Dk; ++c) total += q[c] * rep[e * Dk + c];
    score[n] = total * inv;
  }
}

// The retrieved blocks of one query head: top_k of the M(pos) sealed blocks, increasing.
inline void infllm_select_row(const InfllmMemory& memory, const float* q, index_t q_stride, index_t b, index_t hk,
                              index_t sealed, std::vector<float>& scores, std::vector<std::int32_t>& chosen,
                              std::vector<std::pair<float, std::int32_t>>& candidates) {
  const index_t K = memory.options().top_k;
  scores.resize(static_cast<std::size_t>(std::max<index_t>(sealed, 1)));
  infllm_block_scores(memory, q, q_stride, b, hk, sealed, scores.data());
  chosen.resize(static_cast<std::size_t>(std::max<index_t>(K, 1)));
  const index_t count = moba_select_row(scores.data(), 1, sealed, K, chosen.data(), candidates);
  chosen.resize(static_cast<std::size_t>(count));
}

}  // namespace detail

namespace reference {

/// The definition: memory.append (shared with the fast form), then per query and head the shared
/// lookup and a plain softmax in double over the initial tokens, the retrieved blocks and the
/// local part. Single-threaded attention; `executor` runs the memory update only.
template <class KV>
void infllm_attention(InfllmMemory& memory, const InfllmInputs<KV>& in, const AttentionOutputs& out,
                      const Executor& executor = serial_executor()) {
  using namespace detail;
  const AttentionDims d = validate_infllm("reference::infllm_attention", memory, in, out);
  memory.append_checked(in.q, in.k, executor);
  if (d.B * d.Tq * d.Hq == 0) return;
  const InfllmOptions& opt = memory.options();
  const double scale = attention_scale(infllm_attention_options(opt, true), d.Dk);
  const index_t G = d.group(), bs = opt.block_size;
  std::vector<index_t> keys;
  std::vector<float> scores;
  std::vector<std::int32_t> chosen;
  std::vector<std::pair<float, std::int32_t>> candidates;
  std::vector<double> s, acc(static_cast<std::size_t>(d.Dv));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t pos = d.Tk - d.Tq + i, hk = h / G, sealed = memory.blocks_at(pos);
        infllm_select_row(memory, in.q.ptr(b, i, h), in.q.stride(3), b, hk, sealed, scores, chosen, candidates);
        keys.clear();
        for (index_t j = 0; j < std::min(opt.init_tokens, pos + 1); ++j) keys.push_back(j);
        for (const std::int32_t n : chosen)
          for (index_t j = memory.block_start(n); j < memory.block_start(n) + bs; ++j) keys.push_back(j);
        for (index_t j = memory.block_start(sealed); j <= pos; ++j)
          if (j >= opt.init_tokens) keys.push_back(j);
        const double top = reference_listed_logits(in.q, in.k, b, i, h, hk, keys, scale, s);
        const auto value_of = [&](std::size_t e, index_t c) {
          return static_cast<double>(static_cast<float>(in.v(b, keys[e], hk, c)));
        };
        reference_plain_softmax_row(s, top, value_of, out, b, i, h, acc);
      }
}

}  // namespace reference
}  // namespace seqmix
