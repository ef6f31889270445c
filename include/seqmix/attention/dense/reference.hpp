// attention: dense softmax attention (SPEC section 5).
//
// This header holds the readable definition (seqmix::reference::attention), the argument
// structs shared by every form, and their validation. The tiled prefill is in flash.hpp (which
// also holds seqmix::attention, the entry point that picks a form), the split-KV decode in
// decode.hpp, and attention_merge in merge.hpp.
//
//   pos_i    = positions[b,i] if given, else Tk - Tq + i          (bottom-right aligned)
//   s_ij     = scale * q_i . k_j
//   s_ij     = softcap * tanh(s_ij / softcap)                      if softcap > 0
//   s_ij    += -alibi_slopes[h] * |pos_i - j|                      if slopes are given
//   s_ij    += mask[b,i,j]                                         if a mask is given
//   visible  = (!causal || j <= pos_i) && (window == 0 || j > pos_i - window || j < sink_tokens)
//   o_i      = sum_{visible j} exp(s_ij) v_j / (sum_{visible j} exp(s_ij) + exp(sink_logits[h]))
//   lse_i    = log of that denominator
// Query head h reads KV head h / (Hq / Hkv).
//
// Packed (varlen) self-attention: with inputs.batch.cu_seqlens [N+1], q, k, v, o and lse are
// [1, total_T, ...] and sequence n is tokens [cu[n], cu[n+1]) of all of them, attending only to
// its own keys (Tq = Tk = its length, so bottom-right and top-left alignment coincide). The
// result equals one call per sequence on those slices. A row without a visible key (or whose mask is all
// -inf) gives o = 0 and lse = -inf (lse = sink_logits[h] when sink logits are given, since the
// denominator is then exp(sink_logits[h])).
//
// Non-finite values (docs/reliability.md): a NaN logit of a visible key (a NaN in q, in that k,
// or in the mask entry) makes the row's o and lse NaN; a +inf logit makes them NaN too
// (exp(inf - inf)); a -inf logit hides the key, and so does a -inf mask entry whatever the
// logit (a masked-out NaN key does not contaminate the row). A key whose weight exp(s_ij - max) is exactly 0
// (hidden, or negligible in the precision of the form) takes no part, so a NaN or inf in its
// value reaches no output; any other key's non-finite value makes the row's o non-finite, and
// leaves its lse (which does not depend on values) as it is.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/positional/rope/fast.hpp"

namespace seqmix {

/// Options of attention, attention_step and the attention forms built on them (masking rules,
/// scale, ALiBi, softcap; docs/operators.md section 5). The defaults are plain non-causal softmax
/// attention with scale 1/sqrt(Dk).
struct AttentionOptions {
  /// Multiplies q.k; std::nullopt means 1/sqrt(Dk).
  std::optional<float> scale;
  /// Hides keys after the query's position (j > pos_i).
  bool causal = false;
  /// Sliding window W > 0 also hides keys j <= pos_i - W, so each query sees at most W keys ending
  /// at its own position (Mistral / Gemma local layers). 0: no window.
  index_t window = 0;
  /// StreamingLLM attention sinks: the first n keys stay visible whatever the window says (the
  /// causal rule still applies). Only meaningful together with `window`.
  index_t sink_tokens = 0;
  /// Gemma-2 / Grok logit soft-capping: s = softcap * tanh(s / softcap) before biases. 0: off.
  float softcap = 0.f;
  /// bf16 K/V only: Bf16Compute::dot rounds q and the softmax weights to bf16 and runs the
  /// prefill's and the decode's (attention_step) Q K^T and P V tiles as AVX512-BF16 dot products
  /// (fp32 accumulation and softmax) where the target has them; fp32 (the default) widens K/V and
  /// computes in fp32.
  Bf16Compute bf16_compute = {};
};

/// Relative position biases added to the logits inside the tile loop (docs/operators.md section
/// 10), never formed as a [Tq, Tk] tensor.
enum class RelativeBiasKind : int {
  none,          ///< no bias
  t5,            ///< T5: table[h, bucket(j - pos_i)], causal or bidirectional buckets
  kerple_log,    ///< KERPLE logarithmic: -r1[h] * log(1 + r2[h] * |pos_i - j|)
  kerple_power,  ///< KERPLE power: -r1[h] * |pos_i - j|^r2[h]
  fire,          ///< FIRE: MLP_h(ln(1 + c d) / (ln(1 + c max(pos_i, L)) + 1e-6)), d = |pos_i - j|
  /// A caller's per-distance lookup: table[h, min(|pos_i - j|, num_distances - 1)] (FIRE or any
  /// learned function of the distance, tabulated once; the last entry holds for farther keys).
  distance_table,
};

/// A relative position bias and its per-head parameters (AttentionInputs::relative_bias).
struct RelativeBias {
  RelativeBiasKind kind = RelativeBiasKind::none;  ///< which bias; none: the rest is unused
  /// t5: [Hq, num_buckets] (HF relative_attention_bias weights, transposed); distance_table:
  /// [Hq, num_distances], entry d the bias of distance d (clamped at the last entry).
  ConstView<float, 2> table = {};
  bool bidirectional = false;      ///< t5: keys after the query get buckets of their own (encoders)
  index_t max_distance = 128;      ///< t5: relative_attention_max_distance; farther keys share the last bucket
  ConstView<float, 1> r1 = {};     ///< kerple: [Hq], > 0
  ConstView<float, 1> r2 = {};     ///< kerple: [Hq], > 0 (power: <= 2)
  /// fire: [Hq, W] weights of the hidden layer of head h's MLP, whose input is the normalized
  /// distance (a view with stride 0 along the heads gives the paper's MLP, whose hidden layer
  /// every head shares: Linear(1, W).weight).
  ConstView<float, 2> fire_w1 = {};
  ConstView<float, 2> fire_b1 = {};  ///< fire: [Hq, W] hidden biases (Linear(1, W).bias, stride 0 along heads)
  ConstView<float, 2> fire_w2 = {};  ///< fire: [Hq, W] output weights (Linear(W, Hq).weight)
  ConstView<float, 1> fire_b2 = {};  ///< fire: [Hq] output biases (Linear(W, Hq).bias)
  float fire_c = 0.1f;               ///< fire: c > 0 of psi(d) = ln(1 + c d)
  /// fire: L > 0, the progressive normalizer psi(max(pos_i, L)) (the paper's |L_multiplier * init_L|).
  float fire_threshold = 512.f;
};

/// Arguments. KV is the storage type of k and v, Q that of q: each float, seqmix::f16 or
/// seqmix::bf16 (read through on-the-fly conversion, never copied whole to fp32: the fast forms
/// widen each query tile as they load it). Optional views are empty (default-constructed) when
/// not given.
template <class KV = float, class Q = float>
struct AttentionInputs {
  static_assert(std::is_same_v<Q, float> || std::is_same_v<Q, f16> || std::is_same_v<Q, bf16>,
                "AttentionInputs: q is stored as float, seqmix::f16 or seqmix::bf16");
  ConstView<Q, 4> q;                 ///< [B,Tq,Hq,Dk]
  ConstView<KV, 4> k;                ///< [B,Tk,Hkv,Dk], Hkv divides Hq
  ConstView<KV, 4> v;                ///< [B,Tk,Hkv,Dv]
  ConstView<float, 3> mask;          ///< [B,Tq,Tk] or [1,Tq,Tk] (shared by every batch row); additive, may hold -inf
  ConstView<float, 1> alibi_slopes;  ///< [Hq]: adds -slope_h * |pos_i - j|
  ConstView<float, 1> sink_logits;   ///< [Hq]: adds exp(sink_h) to each softmax denominator only
  IndexTable positions;  ///< [B,Tq] int32 or int64: absolute query positions (default Tk - Tq + i)
  /// Packed sequences (cu_seqlens only: attention keeps no state, so state_indices and
  /// has_initial_state are refused). Not combinable with mask or positions.
  SequenceBatch batch = {};
  /// Rotary embedding fused into the kernel (docs/operators.md section 10), or nullptr (none).
  /// Query i is rotated at its position pos_i (the one causal masking uses) into the kernel's q
  /// tile, key j >= rope_rotated_keys at position j as its tile is loaded (within its sequence
  /// when packed): the result is seqmix::rope on q and those keys, then attention. The table is
  /// the caller's and must outlive the call; every position must lie inside it.
  const RopeTable* rope = nullptr;
  /// Keys [0, rope_rotated_keys) of k are stored rotated already (a cache filled by a rotating
  /// append, or an earlier chunk); only the rest are rotated. Decode over a rotated cache passes
  /// Tk (or more), so only q is rotated. 0: every key is rotated.
  index_t rope_rotated_keys = 0;
  /// Relative position bias computed in the tile loop (section 10); kind none by default.
  RelativeBias relative_bias = {};
  /// [Hq], optional: per-head factor on the scale (temperature, NoPE length scaling), so head h
  /// uses scale * head_scales[h]. Applied to the kernel's q tile.
  ConstView<float, 1> head_scales = {};
};

/// o and lse must not overlap any input (ShapeError).
struct AttentionOutputs {
  TensorView<float, 4> o;    ///< [B,Tq,Hq,Dv]
  TensorView<float, 3> lse = {}; ///< [B,Tq,Hq], optional: log of each softmax denominator
};

/// A [Tq,Tk] mask shared by every batch row, as the [1,Tq,Tk] view AttentionInputs::mask takes.
inline ConstView<float, 3> shared_mask(const ConstView<float, 2>& mask) {
  return ConstView<float, 3>(mask.data(), {1, mask.size(0), mask.size(1)}, {0, mask.stride(0), mask.stride(1)});
}

namespace detail {

// s + mask, except that a -inf mask entry hides the key even when s is NaN or +inf (SPEC: a
// masked-out key takes no part), as the fast forms' LogitRule does.
template <class T>
T add_mask(T s, float mask) {
  return mask == -std::numeric_limits<float>::infinity() ? T(mask) : s + mask;
}

struct AttentionDims {
  index_t B, Tq, Tk, Hq, Hkv, Dk, Dv;
  index_t group() const noexcept { return Hq / Hkv; }
};

// The number of sequences of a packed call, cu_seqlens checked against token tensors [B, T].
// SequenceMap::make builds its messages' strings even when a check passes (an allocation per
// call), so it runs only once the quick test below has found a problem, to throw its message.
inline index_t packed_sequences(const ArgCheck& check, const IndexList& cu, index_t B, index_t T) {
  bool ok = !cu.dangling() && cu.size() >= 1 && B == 1 && cu[0] == 0 && cu[cu.size() - 1] == T;
  for (index_t n = 1; ok && n < cu.size(); ++n) ok = cu[n] >= cu[n - 1];
  if (!ok) {
    SequenceBatch batch = {};
    batch.cu_seqlens = cu;
    SequenceMap::make(check.op(), batch, B, T, false, -1);
  }
  return cu.size() - 1;
}

inline void validate_attention_options(const ArgCheck& check, const AttentionOptions& options) {
  if (options.scale) check.finite(*options.scale, "options.scale");
  check.finite(options.softcap, "options.softcap");
  if (!(options.softcap >= 0.f))
    check.fail("options.softcap", "must be >= 0 (0 disables it), got " + std::to_string(options.softcap));
  if (options.window < 0) check.fail("options.window", "must be >= 0 (0 disables it), got " + std::to_string(options.window));
  if (options.sink_tokens < 0) check.fail("options.sink_tokens", "must be >= 0, got " + std::to_string(options.sink_tokens));
}

// Attention never writes in place: o and lse may overlap neither an input nor each other.
template <class Q, class K, class V>
void refuse_output_overlap(const ArgCheck& check, const TensorView<float, 4>& o, const TensorView<float, 3>& lse,
                           const Q& q, const K& k, const V& v, const char* inputs) {
  for (int which = 0; which < 2; ++which) {
    const bool overlaps = which == 0 ? views_overlap(o, q) || views_overlap(o, k) || views_overlap(o, v)
                                     : views_overlap(lse, q) || views_overlap(lse, k) || views_overlap(lse, v);
    if (overlaps) check.fail(which == 0 ? "o" : "lse", std::string("overlaps an input ") + inputs + "; attention cannot write in place");
  }
  if (views_overlap(o, lse)) check.fail("lse", "overlaps o");
}

// T5's bucket of relative position rel = j - pos_i (transformers' _relative_position_bucket):
// exact buckets for the nearest distances, then logarithmic ones up to max_distance, beyond it
// the last; bidirectional splits the buckets between keys before and after the query. The log is
// taken in double by every form, so they all pick the same bucket.
inline index_t t5_bucket(index_t rel, bool bidirectional, index_t num_buckets, index_t max_distance) {
  index_t bucket = 0, nb = num_buckets;
  if (bidirectional) {
    nb /= 2;
    if (rel > 0) bucket = nb;
    rel = rel < 0 ? -rel : rel;
  } else {
    rel = rel < 0 ? -rel : 0;  // keys after the query share bucket 0
  }
  const index_t exact = nb / 2;
  if (rel < exact) return bucket + rel;
  if (rel >= max_distance) return bucket + nb - 1;
  const double large = static_cast<double>(exact) +
                       std::log(static_cast<double>(rel) / static_cast<double>(exact)) /
                           std::log(static_cast<double>(max_distance) / static_cast<double>(exact)) *
                           static_cast<double>(nb - exact);
  return bucket + std::min<index_t>(static_cast<index_t>(large), nb - 1);
}

// FIRE's normalizer of a query at position pos: psi(max(pos, L)) + eps, in double.
constexpr double kFireEps = 1e-6;
inline double fire_normalizer(const RelativeBias& rb, index_t pos) {
  const double c = rb.fire_c, top = std::max(static_cast<double>(pos), static_cast<double>(rb.fire_threshold));
  return std::log1p(c * top) + kFireEps;
}

// FIRE's bias of head h at distance d for a query whose normalizer is `normalizer`: the MLP
// 1 -> W (ReLU) -> 1 on x = psi(d) / normalizer, in double. Every form calls this one function.
inline double fire_value(const RelativeBias& rb, index_t h, double normalizer, double distance) {
  const double x = std::log1p(static_cast<double>(rb.fire_c) * distance) / normalizer;
  const index_t W = rb.fire_w1.size(1);
  double out = rb.fire_b2(h);
  for (index_t k = 0; k < W; ++k)
    out += static_cast<double>(rb.fire_w2(h, k)) *
           std::max(0.0, static_cast<double>(rb.fire_w1(h, k)) * x + static_cast<double>(rb.fire_b1(h, k)));
  return out;
}

// KERPLE's bias of head h at distance d, in double: -r1 ln(1 + r2 d) or -r1 d^r2. Every form
// calls this one function (the fast ones for the keys their vector lanes leave).
inline double kerple_value(const RelativeBias& rb, index_t h, double distance) {
  const double r1 = rb.r1(h), r2 = rb.r2(h);
  return rb.kind == RelativeBiasKind::kerple_power ? -r1 * std::pow(distance, r2) : -r1 * std::log1p(r2 * distance);
}

// The bias of (query head h at position pos, key j), in double.
inline double relative_bias_value(const RelativeBias& rb, index_t h, index_t pos, index_t j) {
  const double distance = std::abs(static_cast<double>(pos - j));
  switch (rb.kind) {
    case RelativeBiasKind::fire:
      return fire_value(rb, h, fire_normalizer(rb, pos), distance);
    case RelativeBiasKind::t5:
      return rb.table(h, t5_bucket(j - pos, rb.bidirectional, rb.table.size(1), rb.max_distance));
    case RelativeBiasKind::distance_table: {
      const index_t d = pos >= j ? pos - j : j - pos, last = rb.table.size(1) - 1;
      return rb.table(h, d < last ? d : last);
    }
    case RelativeBiasKind::kerple_log:
    case RelativeBiasKind::kerple_power:
      return kerple_value(rb, h, distance);
    default:
      return 0.0;
  }
}

// The relative bias and head scales of a call; no allocation unless a check fails.
inline void validate_relative_bias(const ArgCheck& check, const RelativeBias& rb, const ConstView<float, 1>& head_scales,
                                   index_t Hq) {
  check.optional_shape("head_scales", head_scales, std::array<index_t, 1>{Hq}, "Hq");
  for (index_t h = 0; head_scales.has_value() && h < Hq; ++h) check.finite(head_scales(h), "head_scales");
  switch (rb.kind) {
    case RelativeBiasKind::none:
      return;
    case RelativeBiasKind::t5: {
      check.shape("relative_bias.table", rb.table, std::array<index_t, 2>{Hq, -1}, "Hq,num_buckets");
      const index_t nb = rb.table.size(1), exact = (rb.bidirectional ? nb / 2 : nb) / 2;
      if (exact < 1)
        check.fail("relative_bias.table", "needs num_buckets >= " + std::string(rb.bidirectional ? "4" : "2") +
                                              ", got " + std::to_string(nb));
      if (rb.max_distance <= exact)
        check.fail("relative_bias.max_distance", "must exceed the exact buckets (" + std::to_string(exact) +
                                                     "), got " + std::to_string(rb.max_distance));
      return;
    }
    case RelativeBiasKind::distance_table: {
      check.shape("relative_bias.table", rb.table, std::array<index_t, 2>{Hq, -1}, "Hq,num_distances");
      if (rb.table.size(1) < 1) check.fail("relative_bias.table", "needs num_distances >= 1, got 0");
      for (index_t h = 0; h < Hq; ++h)
        for (index_t d = 0; d < rb.table.size(1); ++d) check.finite(rb.table(h, d), "relative_bias.table");
      return;
    }
    case RelativeBiasKind::kerple_log:
    case RelativeBiasKind::kerple_power: {
      check.shape("relative_bias.r1", rb.r1, std::array<index_t, 1>{Hq}, "Hq");
      check.shape("relative_bias.r2", rb.r2, std::array<index_t, 1>{Hq}, "Hq");
      const double r2_max = rb.kind == RelativeBiasKind::kerple_power ? 2.0 : std::numeric_limits<double>::infinity();
      for (index_t h = 0; h < Hq; ++h) {
        if (!(rb.r1(h) > 0.f) || !std::isfinite(rb.r1(h)))
          check.fail("relative_bias.r1", "entry " + std::to_string(h) + " must be finite and > 0, got " +
                                             std::to_string(rb.r1(h)));
        if (!(rb.r2(h) > 0.f) || !(rb.r2(h) <= r2_max) || !std::isfinite(rb.r2(h)))
          check.fail("relative_bias.r2", "entry " + std::to_string(h) + " must be finite, > 0" +
                                             (rb.kind == RelativeBiasKind::kerple_power ? " and <= 2" : "") +
                                             ", got " + std::to_string(rb.r2(h)));
      }
      return;
    }
    case RelativeBiasKind::fire: {
      check.shape("relative_bias.fire_w1", rb.fire_w1, std::array<index_t, 2>{Hq, -1}, "Hq,W");
      const index_t W = rb.fire_w1.size(1);
      if (W < 1) check.fail("relative_bias.fire_w1", "needs a hidden width W >= 1, got 0");
      check.shape("relative_bias.fire_b1", rb.fire_b1, std::array<index_t, 2>{Hq, W}, "Hq,W");
      check.shape("relative_bias.fire_w2", rb.fire_w2, std::array<index_t, 2>{Hq, W}, "Hq,W");
      check.shape("relative_bias.fire_b2", rb.fire_b2, std::array<index_t, 1>{Hq}, "Hq");
      for (index_t h = 0; h < Hq; ++h) {
        check.finite(rb.fire_b2(h), "relative_bias.fire_b2");
        for (index_t k = 0; k < W; ++k) {
          check.finite(rb.fire_w1(h, k), "relative_bias.fire_w1");
          check.finite(rb.fire_b1(h, k), "relative_bias.fire_b1");
          check.finite(rb.fire_w2(h, k), "relative_bias.fire_w2");
        }
      }
      if (!(rb.fire_c > 0.f) || !std::isfinite(rb.fire_c))
        check.fail("relative_bias.fire_c", "must be finite and > 0, got " + std::to_string(rb.fire_c));
      if (!(rb.fire_threshold > 0.f) || !std::isfinite(rb.fire_threshold))
        check.fail("relative_bias.fire_threshold", "must be finite and > 0, got " + std::to_string(rb.fire_threshold));
      return;
    }
  }
  check.fail("relative_bias.kind", "is not a RelativeBiasKind (" + std::to_string(static_cast<int>(rb.kind)) + ")");
}

// The fused rope of a call (AttentionInputs::rope): the table against Dk, and every query and key
// position it will look up inside the table. Called once the shapes are checked; no allocation.
template <class KV, class Q>
void validate_attention_rope(const ArgCheck& check, const AttentionInputs<KV, Q>& in) {
  const RopeTable& table = *in.rope;
  const index_t Tq = in.q.size(1), Tk = in.k.size(1), Dk = in.q.size(3);
  if (in.rope_rotated_keys < 0)
    check.fail("rope_rotated_keys", "must be >= 0, got " + std::to_string(in.rope_rotated_keys));
  const index_t P = table.positions();
  // Packed: positions are local to each sequence (0 .. its length - 1, queries and keys alike).
  index_t longest = Tk;
  if (in.batch.packed()) {
    longest = 0;
    for (index_t n = 0; n + 1 < in.batch.cu_seqlens.size(); ++n)
      longest = std::max(longest, in.batch.cu_seqlens[n + 1] - in.batch.cu_seqlens[n]);
  }
  // Every key already rotated: only queries are rotated with this table (an xPos query table fits).
  check_fused_rope_table(check, table, Dk, in.rope_rotated_keys >= longest ? FusedRopeUse::queries : FusedRopeUse::both);
  if (in.rope_rotated_keys < longest && longest > P)
    check.fail("rope", "covers positions [0, " + std::to_string(P) + "), but keys up to position " +
                           std::to_string(longest - 1) + " are to be rotated");
  if (in.positions.has_value()) {
    for (index_t b = 0; b < in.positions.rows(); ++b)
      for (index_t i = 0; i < in.positions.cols(); ++i) {
        const index_t p = in.positions(b, i);
        if (p < 0 || p >= P)
          check.fail("positions", "entry [" + std::to_string(b) + ", " + std::to_string(i) + "] is " +
                                      std::to_string(p) + ", outside the rope table's positions [0, " +
                                      std::to_string(P) + ")");
      }
  } else if (Tq > 0 && !in.batch.packed()) {
    if (Tq > Tk)
      check.fail("q", "has Tq = " + std::to_string(Tq) + " > Tk = " + std::to_string(Tk) +
                          ": the default query positions Tk - Tq + i are negative, which rope cannot rotate");
    if (Tk > P)
      check.fail("rope", "covers positions [0, " + std::to_string(P) + "), but the last query is at position " +
                             std::to_string(Tk - 1));
  } else if (Tq > 0 && longest > P) {
    check.fail("rope", "covers positions [0, " + std::to_string(P) + "), but packed queries reach position " +
                           std::to_string(longest - 1));
  }
}

// Validation shared by every form. Formats a message only on failure, so a call with good
// arguments allocates nothing (decode's zero-allocation contract).
template <class KV, class Q>
AttentionDims validate_attention(const ArgCheck& check, const AttentionInputs<KV, Q>& in, const AttentionOutputs& out,
                                 const AttentionOptions& options) {
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,Hq,Dk");
  const index_t B = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, -1, -1, Dk}, "B,Tk,Hkv,Dk");
  const index_t Tk = in.k.size(1), Hkv = in.k.size(2);
  if (Hq > 0 || Hkv > 0) check.divides(Hkv, Hq, "k", "KV heads (dimension 2)");
  check.shape("v", in.v, std::array<index_t, 4>{B, Tk, Hkv, -1}, "B,Tk,Hkv,Dv");
  const index_t Dv = in.v.size(3);
  if (in.mask.has_value()) {
    const index_t mask_batch = in.mask.size(0) == 1 ? 1 : B;
    check.shape("mask", in.mask, std::array<index_t, 3>{mask_batch, Tq, Tk}, "B,Tq,Tk");
  } else {
    // No data: an absent mask, unless its extents are negative (refused like any view's).
    check.optional_shape("mask", in.mask, std::array<index_t, 3>{-1, -1, -1}, "B,Tq,Tk");
  }
  check.optional_shape("alibi_slopes", in.alibi_slopes, std::array<index_t, 1>{Hq}, "Hq");
  check.optional_shape("sink_logits", in.sink_logits, std::array<index_t, 1>{Hq}, "Hq");
  in.positions.check_optional_shape(check, "positions", {B, Tq}, "B,Tq");
  in.positions.check_position_range(check, "positions");
  check.shape("o", out.o, std::array<index_t, 4>{B, Tq, Hq, Dv}, "B,Tq,Hq,Dv");
  check.optional_shape("lse", out.lse, std::array<index_t, 3>{B, Tq, Hq}, "B,Tq,Hq");
  validate_attention_options(check, options);
  if (in.batch.slotted() || in.batch.has_initial_state.has_value())
    check.fail("batch", "attention keeps no state: state_indices and has_initial_state are not used");
  if (in.batch.packed()) {
    packed_sequences(check, in.batch.cu_seqlens, B, Tq);
    if (Tk != Tq)
      check.fail("k", "packed (cu_seqlens) attention is self-attention: k needs the queries' total_T = " +
                          std::to_string(Tq) + " tokens, got " + std::to_string(Tk));
    if (in.mask.has_value()) check.fail("mask", "is not supported with packed sequences (cu_seqlens)");
    if (in.positions.has_value()) check.fail("positions", "is not supported with packed sequences (cu_seqlens)");
  }
  refuse_output_overlap(check, out.o, out.lse, in.q, in.k, in.v, "(q, k or v)");
  if (in.rope) validate_attention_rope(check, in);
  validate_relative_bias(check, in.relative_bias, in.head_scales, Hq);
  return {B, Tq, Tk, Hq, Hkv, Dk, Dv};
}

template <class KV, class Q>
AttentionDims validate_attention(const char* op, const AttentionInputs<KV, Q>& in, const AttentionOutputs& out,
                                 const AttentionOptions& options) {
  return validate_attention(ArgCheck(op), in, out, options);
}

// Sequence `s` of a packed call as a dense call with B = 1: slices of every token tensor.
template <class KV, class Q>
AttentionInputs<KV, Q> sequence_inputs(const AttentionInputs<KV, Q>& in, const SequenceSpan& s) {
  AttentionInputs<KV, Q> one = in;
  one.batch = {};
  one.q = in.q.slice(1, s.token_begin, s.tokens);
  one.k = in.k.slice(1, s.token_begin, s.tokens);
  one.v = in.v.slice(1, s.token_begin, s.tokens);
  return one;
}

inline AttentionOutputs sequence_outputs(const AttentionOutputs& out, const SequenceSpan& s) {
  AttentionOutputs one;
  one.o = out.o.slice(1, s.token_begin, s.tokens);
  if (out.lse.has_value()) one.lse = out.lse.slice(1, s.token_begin, s.tokens);
  return one;
}

inline float attention_scale(const AttentionOptions& options, index_t Dk) {
  return options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(Dk > 0 ? Dk : 1));
}

// Absolute position of query i of batch row b.
template <class KV, class Q>
index_t query_position(const AttentionInputs<KV, Q>& in, index_t b, index_t i) {
  const index_t Tq = in.q.size(1), Tk = in.k.size(1);
  return in.positions.has_value() ? in.positions(b, i) : Tk - Tq + i;
}

// One query row of the references, after its logits: softmax weights of logits[0..n) (max_logit
// their max over the non-NaN ones, nan_logit whether one is NaN), the value average in double and
// the lse with head h's sink logit, written to o[b, i, h, :] and lse[b, i, h]. value_of(e, c) reads
// the value of logit e; a key of weight 0 (hidden or negligible) takes no part, so its value, even
// NaN, is never read. A NaN logit makes the row's o and lse NaN. Shared by reference::attention
// and reference::topk_attention, so their non-finite rule cannot drift apart.
template <class ValueOf>
void reference_softmax_row(const std::vector<double>& logits, index_t n, double max_logit, bool nan_logit,
                           const ValueOf& value_of, const ConstView<float, 1>& sink_logits,
                           const AttentionOutputs& out, index_t b, index_t i, index_t h, std::vector<double>& acc) {
  const double minus_inf = -std::numeric_limits<double>::infinity();
  const index_t Dv = static_cast<index_t>(acc.size());
  double denominator = 0.0;
  std::fill(acc.begin(), acc.end(), 0.0);
  if (max_logit > minus_inf)
    for (index_t e = 0; e < n; ++e) {
      const double p = std::exp(logits[static_cast<std::size_t>(e)] - max_logit);
      if (p == 0.0) continue;
      denominator += p;
      for (index_t c = 0; c < Dv; ++c) acc[static_cast<std::size_t>(c)] += p * value_of(e, c);
    }
  // Log of the denominator, then the sink's exp(sink_h) added to it in log space.
  double lse = max_logit > minus_inf ? max_logit + std::log(denominator) : minus_inf;
  if (sink_logits.has_value()) {
    const double sink = sink_logits(h);
    const double top = std::max(lse, sink);
    lse = top + std::log(std::exp(lse - top) + std::exp(sink - top));
  }
  if (nan_logit) lse = std::numeric_limits<double>::quiet_NaN();  // max() skipped it
  for (index_t c = 0; c < Dv; ++c)
    out.o(b, i, h, c) = nan_logit ? static_cast<float>(lse)
                        : max_logit > minus_inf ? static_cast<float>(acc[static_cast<std::size_t>(c)] * std::exp(max_logit - lse))
                                                : 0.f;
  if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(lse);
}

// The unnormalised softmax sums of the approximate references, after logits s[0..n) with a finite
// max top: acc = sum_e exp(s_e - top) value_of(e, :) (acc.size() = Dv), returns l = sum_e
// exp(s_e - top). A key of weight exactly 0 takes no part (its NaN / inf value reaches nothing).
template <class ValueOf>
double reference_softmax_sum(const std::vector<double>& s, double top, const ValueOf& value_of,
                             std::vector<double>& acc) {
  const index_t Dv = static_cast<index_t>(acc.size());
  double l = 0.0;
  std::fill(acc.begin(), acc.end(), 0.0);
  for (std::size_t e = 0; e < s.size(); ++e) {
    const double p = std::exp(s[e] - top);
    if (p == 0.0) continue;
    l += p;
    for (index_t c = 0; c < Dv; ++c) acc[static_cast<std::size_t>(c)] += p * value_of(e, c);
  }
  return l;
}

// The logits of query row (b, i, h) over listed key rows of KV head hk, as the sparse references
// (moba, infllm, landmark, hyper_attention) read them, in double with each key rounded to float
// first: s[e] = scale * q[b, i, h, :] . k[b, keys[e], hk, :]. Returns their max (-inf for none).
template <class QView, class KView>
double reference_listed_logits(const QView& q, const KView& k, index_t b, index_t i, index_t h, index_t hk,
                               const std::vector<index_t>& keys, double scale, std::vector<double>& s) {
  const index_t Dk = q.size(3);
  double top = -std::numeric_limits<double>::infinity();
  s.assign(keys.size(), 0.0);
  for (std::size_t e = 0; e < keys.size(); ++e) {
    double dot = 0.0;
    for (index_t c = 0; c < Dk; ++c)
      dot += static_cast<double>(q(b, i, h, c)) * static_cast<double>(static_cast<float>(k(b, keys[e], hk, c)));
    s[e] = scale * dot;
    top = std::max(top, s[e]);
  }
  return top;
}

// The plain softmax row of the approximate references (reference::combiner, reference::moba),
// after their logits s[0..n) with max top: o[b, i, h, :] = sum_e exp(s_e - top) value_of(e, :) / l
// and lse = top + log l in double. No sink; attention's non-finite rule (docs/reliability.md):
// a NaN or +inf logit makes o and lse NaN, a row whose every logit is -inf gives o = 0 and
// lse = -inf, and a key of weight exactly 0 takes no part (its NaN / inf value reaches nothing).
// The naive loop gave NaN for the -inf row (exp(-inf - (-inf))) and let 0 * inf values through
// where the fast forms give 0 / a finite row (tests/test_nonfinite_attention_memory.cpp).
template <class ValueOf>
void reference_plain_softmax_row(const std::vector<double>& s, double top, const ValueOf& value_of,
                                 const AttentionOutputs& out, index_t b, index_t i, index_t h,
                                 std::vector<double>& acc) {
  const index_t Dv = static_cast<index_t>(acc.size());
  constexpr double inf = std::numeric_limits<double>::infinity();
  bool nan = top == inf;
  for (double x : s) nan = nan || std::isnan(x);
  if (nan || top == -inf || s.empty()) {
    const double o = nan ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    for (index_t c = 0; c < Dv; ++c) out.o(b, i, h, c) = static_cast<float>(o);
    if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(nan ? o : -inf);
    return;
  }
  const double l = reference_softmax_sum(s, top, value_of, acc);
  for (index_t c = 0; c < Dv; ++c) out.o(b, i, h, c) = static_cast<float>(acc[static_cast<std::size_t>(c)] / l);
  if (out.lse.has_value()) out.lse(b, i, h) = static_cast<float>(top + std::log(l));
}

}  // namespace detail

namespace reference {

/// The definition, one query row at a time, accumulated in double. Single-threaded; `executor`
/// is accepted for a uniform signature.
template <class KV, class Q>
void attention(const AttentionInputs<KV, Q>& in, const AttentionOutputs& out, const AttentionOptions& options = {},
               const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_attention("reference::attention", in, out, options);
  if (in.batch.packed()) {  // one call per sequence, on its slices
    const SequenceMap seqs = SequenceMap::make("reference::attention", in.batch, d.B, d.Tq, false, -1);
    for (index_t n = 0; n < seqs.sequences(); ++n)
      reference::attention(detail::sequence_inputs(in, seqs[n]), detail::sequence_outputs(out, seqs[n]), options);
    return;
  }
  const double scale = detail::attention_scale(options, d.Dk);
  const double minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> logits(static_cast<std::size_t>(d.Tk));
  std::vector<double> acc(static_cast<std::size_t>(d.Dv));
  // The current query row in double, and with a rope the rotated keys of batch row b, so each
  // key is rotated once per row rather than once per query.
  std::vector<double> query(static_cast<std::size_t>(d.Dk));
  std::vector<double> keys(in.rope ? static_cast<std::size_t>(d.Tk * d.Hkv * d.Dk) : 0);
  for (index_t b = 0; b < d.B; ++b) {
    for (index_t j = 0; in.rope && j < d.Tk; ++j)
      for (index_t hk = 0; hk < d.Hkv; ++hk) {
        double* key = keys.data() + (j * d.Hkv + hk) * d.Dk;
        for (index_t c = 0; c < d.Dk; ++c) key[c] = static_cast<double>(static_cast<float>(in.k(b, j, hk, c)));
        if (in.rope && j >= in.rope_rotated_keys) detail::rope_row_double(*in.rope, j, key);
      }
    for (index_t i = 0; i < d.Tq; ++i)
      for (index_t h = 0; h < d.Hq; ++h) {
        const index_t hk = h / d.group();
        const index_t pos = detail::query_position(in, b, i);
        for (index_t c = 0; c < d.Dk; ++c) query[c] = static_cast<double>(static_cast<float>(in.q(b, i, h, c)));
        if (in.rope) detail::rope_row_double(*in.rope, pos, query.data());
        double max_logit = minus_inf;
        bool nan_logit = false;
        for (index_t j = 0; j < d.Tk; ++j) {
          const bool visible = (!options.causal || j <= pos) &&
                               (options.window == 0 || j > pos - options.window || j < options.sink_tokens);
          double s = minus_inf;
          if (visible) {
            s = 0.0;
            if (in.rope) {
              const double* key = keys.data() + (j * d.Hkv + hk) * d.Dk;
              for (index_t c = 0; c < d.Dk; ++c) s += query[c] * key[c];
            } else {
              for (index_t c = 0; c < d.Dk; ++c) s += query[c] * static_cast<double>(static_cast<float>(in.k(b, j, hk, c)));
            }
            s *= scale;
            if (in.head_scales.has_value()) s *= in.head_scales(h);
            if (options.softcap > 0.f) s = options.softcap * std::tanh(s / options.softcap);
            if (in.alibi_slopes.has_value()) s -= in.alibi_slopes(h) * std::abs(static_cast<double>(pos - j));
            s += detail::relative_bias_value(in.relative_bias, h, pos, j);
            if (in.mask.has_value()) s = detail::add_mask(s, in.mask(in.mask.size(0) == 1 ? 0 : b, i, j));
          }
          logits[j] = s;
          max_logit = std::max(max_logit, s);
          nan_logit |= std::isnan(s);
        }
        const auto value_of = [&](index_t j, index_t c) { return static_cast<double>(static_cast<float>(in.v(b, j, hk, c))); };
        detail::reference_softmax_row(logits, d.Tk, max_logit, nan_logit, value_of, in.sink_logits, out, b, i, h, acc);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
