// rope: the rotary position embedding's configuration and the frequencies it defines
// (docs/operators.md section 10).
//
// Rotary dimension pair i (0 <= i < R/2, R = rotary_dim) turns by the angle p * inv_freq[i] at
// position p. The schemes differ only in inv_freq and in one attention factor that multiplies
// both cos and sin (as Hugging Face's rotary embeddings do):
//
//   plain        inv_freq[i] = base^(-2i/R)
//   linear       inv_freq[i] = base^(-2i/R) / factor                       (position interpolation)
//   ntk          base' = base * factor^(R/(R-2)), then plain                (NTK-aware, static)
//   dynamic_ntk  base' = base * (factor*L/L0 - (factor-1))^(R/(R-2)) when L > L0, else plain
//                (L: the sequence length the table serves, L0: original_max_position_embeddings)
//   yarn         interpolation base^(-2i/R)/factor and extrapolation base^(-2i/R) blended by a
//                ramp over i between the correction dims of beta_fast and beta_slow rotations;
//                attention factor 0.1*ln(factor)+1 (or the mscale / mscale_all_dim ratio)
//   llama3       wavelengths 2*pi/inv_freq above L0/low_freq_factor divided by factor, below
//                L0/high_freq_factor kept, a linear blend in between
//   longrope     inv_freq[i] = base^(-2i/R) / ext[i], ext = long_factor when L > L0 else
//                short_factor; attention factor sqrt(1 + ln(M/L0)/ln(L0)), M the model's
//                max_position_embeddings
//
// rope_config_from_hf maps the keys of a Hugging Face config.json (rope_theta, rope_scaling.*,
// partial_rotary_factor, ...) onto RopeConfig, with the same defaults transformers applies.
#pragma once

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"

namespace seqmix {

/// How the rotation frequencies are derived from the base (the rope_scaling types of the field).
enum class RopeScheme : int {
  plain,        ///< base^(-2i/R) (no rope_scaling)
  linear,       ///< position interpolation: frequencies divided by factor
  ntk,          ///< NTK-aware: base multiplied by factor^(R/(R-2))
  dynamic_ntk,  ///< NTK-aware with the factor adapted to the sequence length (HF "dynamic")
  yarn,         ///< YaRN: ramp between interpolation and extrapolation, attention factor mscale
  llama3,       ///< Llama-3.1: low frequencies divided by factor, high kept, a blend between
  longrope,     ///< LongRoPE / Phi-3: per-pair short or long factors
};
/// The number of RopeScheme values (for validation).
constexpr int kRopeSchemeCount = 7;

/// Which dimensions form a rotated pair.
enum class RopeLayout : int {
  half_split,   ///< (x[i], x[i + R/2]): GPT-NeoX, Hugging Face `rotate_half`, Llama in HF format
  interleaved,  ///< (x[2i], x[2i+1]): GPT-J, Meta's original Llama, DeepSeek's checkpoints
};
/// The number of RopeLayout values.
constexpr int kRopeLayoutCount = 2;

/// Which side an xPos table scales (RopeConfig::xpos_scale_base > 0): queries are multiplied by
/// zeta^((p - center) / scale_base) per pair, keys by its inverse, so a score depends on the
/// distance only. A fused form takes the table of the side it rotates.
enum class XposRole : int {
  query,  ///< the table of the queries: factor zeta^((p - center) / scale_base)
  key,    ///< the table of the keys: factor zeta^(-(p - center) / scale_base)
};
/// The number of XposRole values.
constexpr int kXposRoleCount = 2;

/// A rotary embedding: which dimensions rotate, and the scheme with its parameters
/// (docs/operators.md section 10). Build one directly or with rope_config_from_hf.
struct RopeConfig {
  RopeScheme scheme = RopeScheme::plain;       ///< how inv_freq is derived
  RopeLayout layout = RopeLayout::half_split;  ///< which dimensions pair up
  /// R: the leading dimensions of each head that rotate (even, 2 <= R <= D); the other D - R
  /// pass through unchanged (partial rotary: GPT-NeoX rotary_pct, Phi partial_rotary_factor).
  index_t rotary_dim = 0;
  double base = 10000.0;  ///< rope_theta
  double factor = 1.0;    ///< rope_scaling.factor (linear, ntk, dynamic_ntk, yarn, llama3)
  /// L0: the context the model was trained with (rope_scaling.original_max_position_embeddings,
  /// else max_position_embeddings). dynamic_ntk, yarn, llama3 and longrope need it.
  index_t original_max_position_embeddings = 0;
  index_t max_position_embeddings = 0;  ///< M: longrope's attention factor (the extended context)
  double beta_fast = 32.0;  ///< yarn: rotations in L0 below which pairs extrapolate
  double beta_slow = 1.0;   ///< yarn: rotations in L0 above which pairs interpolate
  bool truncate = true;     ///< yarn: round the correction range outwards (transformers' default)
  double mscale = 0.0;          ///< yarn, DeepSeek: numerator mscale of the attention factor (0: unused)
  double mscale_all_dim = 0.0;  ///< yarn, DeepSeek: denominator mscale of the attention factor (0: unused)
  double low_freq_factor = 1.0;   ///< llama3: wavelengths above L0 / low_freq_factor are scaled
  double high_freq_factor = 4.0;  ///< llama3: wavelengths below L0 / high_freq_factor are kept
  std::vector<double> short_factor;  ///< longrope: R/2 factors used up to L0 tokens
  std::vector<double> long_factor;   ///< longrope: R/2 factors used beyond L0 tokens
  /// Multiplies cos and sin when given; else the scheme's own (1 except yarn and longrope).
  std::optional<double> attention_factor;
  /// xPos (Sun et al. 2022, torchscale's XPOS) decay per frequency pair: 0 = off; else the scale
  /// base (512 in torchscale) of the factor zeta_i^(+-(p - xpos_center) / xpos_scale_base),
  /// zeta_i = (2i/R + xpos_gamma) / (1 + xpos_gamma), on top of the rotation.
  double xpos_scale_base = 0.0;
  double xpos_gamma = 0.4;              ///< xPos: gamma > 0 of zeta_i (torchscale's 0.4)
  XposRole xpos_role = XposRole::query; ///< xPos: the side this table scales
  /// xPos: the position whose factor is 1 (the factors leave float's range some thousands of
  /// positions away from it at scale base 512; the table refuses such positions).
  double xpos_center = 0.0;
};

/// The keys of a Hugging Face config.json that define its rotary embedding. Unset optionals take
/// transformers' defaults.
struct HfRopeKeys {
  index_t head_dim = 0;                          ///< head_dim, else hidden_size / num_attention_heads
  double rope_theta = 10000.0;                   ///< rope_theta
  double partial_rotary_factor = 1.0;            ///< partial_rotary_factor (rotary_pct)
  index_t max_position_embeddings = 0;           ///< max_position_embeddings
  index_t config_original_max_position_embeddings = 0;  ///< top-level original_max_position_embeddings (Phi-3)
  /// rope_scaling: absent, or a type ("default", "linear", "dynamic", "ntk", "yarn", "llama3",
  /// "longrope"; "su" is longrope's old name) with its keys. `rope_type` and `type` are synonyms.
  std::string rope_type = "default";
  std::optional<double> factor;            ///< rope_scaling.factor
  std::optional<double> beta_fast;         ///< rope_scaling.beta_fast (yarn, default 32)
  std::optional<double> beta_slow;         ///< rope_scaling.beta_slow (yarn, default 1)
  std::optional<double> mscale;            ///< rope_scaling.mscale (yarn, DeepSeek)
  std::optional<double> mscale_all_dim;    ///< rope_scaling.mscale_all_dim (yarn, DeepSeek)
  std::optional<double> attention_factor;  ///< rope_scaling.attention_factor
  std::optional<double> low_freq_factor;   ///< rope_scaling.low_freq_factor (llama3, default 1)
  std::optional<double> high_freq_factor;  ///< rope_scaling.high_freq_factor (llama3, default 4)
  std::optional<index_t> original_max_position_embeddings;  ///< rope_scaling.original_max_position_embeddings
  std::optional<bool> truncate;       ///< rope_scaling.truncate (yarn, default true)
  std::vector<double> short_factor;   ///< rope_scaling.short_factor (longrope)
  std::vector<double> long_factor;    ///< rope_scaling.long_factor (longrope)
  bool interleaved = false;  ///< the checkpoint's layout (HF format is half-split)
};

namespace detail {

inline std::string rope_number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace detail

/// Every configuration error a RopeTable would meet, as a ShapeError naming `op` and the field.
inline void validate_rope_config(const ArgCheck& check, const RopeConfig& c) {
  check.enum_value("scheme", c.scheme, kRopeSchemeCount).enum_value("layout", c.layout, kRopeLayoutCount);
  if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0)
    check.fail("rotary_dim", "must be even and >= 2, got " + std::to_string(c.rotary_dim));
  check.finite(c.base, "base");
  if (!(c.base > 1.0)) check.fail("base", "(rope_theta) must be > 1, got " + detail::rope_number(c.base));
  const bool scaled = c.scheme != RopeScheme::plain && c.scheme != RopeScheme::longrope;
  if (scaled) {
    check.finite(c.factor, "factor");
    if (!(c.factor > 0.0)) check.fail("factor", "must be > 0, got " + detail::rope_number(c.factor));
  }
  const bool needs_l0 = c.scheme == RopeScheme::dynamic_ntk || c.scheme == RopeScheme::yarn ||
                        c.scheme == RopeScheme::llama3 || c.scheme == RopeScheme::longrope;
  if (needs_l0 && c.original_max_position_embeddings < 1)
    check.fail("original_max_position_embeddings", "must be >= 1 for this scheme, got " +
                                                       std::to_string(c.original_max_position_embeddings));
  if (c.scheme == RopeScheme::yarn) {
    check.finite(c.beta_fast, "beta_fast").finite(c.beta_slow, "beta_slow");
    if (!(c.beta_fast > 0.0) || !(c.beta_slow > 0.0))
      check.fail("beta_fast", "and beta_slow must be > 0, got " + detail::rope_number(c.beta_fast) + " and " +
                                  detail::rope_number(c.beta_slow));
    check.finite(c.mscale, "mscale").finite(c.mscale_all_dim, "mscale_all_dim");
  }
  if (c.scheme == RopeScheme::llama3) {
    check.finite(c.low_freq_factor, "low_freq_factor").finite(c.high_freq_factor, "high_freq_factor");
    if (!(c.low_freq_factor > 0.0) || !(c.high_freq_factor > c.low_freq_factor))
      check.fail("high_freq_factor", "must exceed low_freq_factor > 0, got low " +
                                         detail::rope_number(c.low_freq_factor) + ", high " +
                                         detail::rope_number(c.high_freq_factor));
  }
  if (c.scheme == RopeScheme::longrope) {
    const auto pairs = static_cast<std::size_t>(c.rotary_dim / 2);
    for (const auto* list : {&c.short_factor, &c.long_factor}) {
      const char* name = list == &c.short_factor ? "short_factor" : "long_factor";
      if (list->size() != pairs)
        check.fail(name, "must hold rotary_dim/2 = " + std::to_string(pairs) + " factors, got " +
                             std::to_string(list->size()));
      for (const double f : *list)
        if (!std::isfinite(f) || !(f > 0.0)) check.fail(name, "must hold finite factors > 0, got " + detail::rope_number(f));
    }
  }
  check.finite(c.xpos_scale_base, "xpos_scale_base");
  if (c.xpos_scale_base < 0.0)
    check.fail("xpos_scale_base", "must be >= 0 (0: no xPos decay), got " + detail::rope_number(c.xpos_scale_base));
  if (c.xpos_scale_base > 0.0) {
    check.enum_value("xpos_role", c.xpos_role, kXposRoleCount);
    check.finite(c.xpos_gamma, "xpos_gamma").finite(c.xpos_center, "xpos_center");
    if (!(c.xpos_gamma > 0.0)) check.fail("xpos_gamma", "must be > 0, got " + detail::rope_number(c.xpos_gamma));
  }
  if (c.attention_factor) {
    check.finite(*c.attention_factor, "attention_factor");
    if (!(*c.attention_factor > 0.0))
      check.fail("attention_factor", "must be > 0, got " + detail::rope_number(*c.attention_factor));
  }
}

/// transformers' `_compute_*_parameters`, as a RopeConfig. Throws ShapeError naming the key for
/// an unknown rope type, a missing factor, a head size that gives an odd rotary dimension, ...
inline RopeConfig rope_config_from_hf(const HfRopeKeys& keys) {
  const ArgCheck check("rope_config_from_hf");
  RopeConfig c;
  c.layout = keys.interleaved ? RopeLayout::interleaved : RopeLayout::half_split;
  if (keys.head_dim < 1) check.fail("head_dim", "must be >= 1, got " + std::to_string(keys.head_dim));
  check.finite(keys.partial_rotary_factor, "partial_rotary_factor");
  if (!(keys.partial_rotary_factor > 0.0 && keys.partial_rotary_factor <= 1.0))
    check.fail("partial_rotary_factor", "must lie in (0, 1], got " + detail::rope_number(keys.partial_rotary_factor));
  // transformers: dim = int(head_dim * partial_rotary_factor)
  c.rotary_dim = static_cast<index_t>(static_cast<double>(keys.head_dim) * keys.partial_rotary_factor);
  c.base = keys.rope_theta;
  c.max_position_embeddings = keys.max_position_embeddings;
  c.original_max_position_embeddings = keys.original_max_position_embeddings.value_or(
      keys.config_original_max_position_embeddings > 0 ? keys.config_original_max_position_embeddings
                                                       : keys.max_position_embeddings);
  const std::string& t = keys.rope_type;
  auto need_factor = [&] {
    if (!keys.factor) check.fail("rope_scaling.factor", "is required for rope type '" + t + "'");
    return *keys.factor;
  };
  if (t == "default" || t.empty()) {
    c.scheme = RopeScheme::plain;
  } else if (t == "linear") {
    c.scheme = RopeScheme::linear;
    c.factor = need_factor();
  } else if (t == "ntk") {
    c.scheme = RopeScheme::ntk;
    c.factor = need_factor();
  } else if (t == "dynamic") {
    c.scheme = RopeScheme::dynamic_ntk;
    c.factor = need_factor();
    // transformers' dynamic scaling compares with max_position_embeddings itself.
    c.original_max_position_embeddings = keys.original_max_position_embeddings.value_or(keys.max_position_embeddings);
  } else if (t == "yarn") {
    c.scheme = RopeScheme::yarn;
    c.factor = need_factor();
    c.beta_fast = keys.beta_fast.value_or(32.0);
    c.beta_slow = keys.beta_slow.value_or(1.0);
    c.mscale = keys.mscale.value_or(0.0);
    c.mscale_all_dim = keys.mscale_all_dim.value_or(0.0);
    c.truncate = keys.truncate.value_or(true);
  } else if (t == "llama3") {
    c.scheme = RopeScheme::llama3;
    c.factor = need_factor();
    c.low_freq_factor = keys.low_freq_factor.value_or(1.0);
    c.high_freq_factor = keys.high_freq_factor.value_or(4.0);
  } else if (t == "longrope" || t == "su") {
    c.scheme = RopeScheme::longrope;
    c.short_factor = keys.short_factor;
    c.long_factor = keys.long_factor;
    // transformers: with a top-level original_max_position_embeddings (Phi-3) the factor is
    // max_position_embeddings / original; else rope_scaling.factor.
    if (keys.config_original_max_position_embeddings > 0) {
      c.original_max_position_embeddings = keys.config_original_max_position_embeddings;
    } else {
      c.max_position_embeddings = static_cast<index_t>(
          std::llround(need_factor() * static_cast<double>(c.original_max_position_embeddings)));
    }
  } else {
    check.fail("rope_scaling.rope_type", "'" + t +
                                             "' is not a known rope type (default, linear, ntk, dynamic, yarn, "
                                             "llama3, longrope, su)");
  }
  c.attention_factor = keys.attention_factor;
  validate_rope_config(ArgCheck("rope_config_from_hf"), c);
  return c;
}

}  // namespace seqmix
