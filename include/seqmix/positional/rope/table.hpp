// rope: RopeTable, the cos/sin of every (position, pair) a configuration defines, computed once
// and kept by the caller (one per layer shape and scheme, shared by q and k and by every call).
//
// The frequencies and every angle are computed in double: at position 1,000,000 an angle of
// p * inv_freq[0] = 1e6 radians computed in float would be off by up to 0.03 rad (float's ulp at
// 1e6 is 0.0625), where the double angle is good to 1e-10 and only the final cos/sin is rounded
// to float (0.5 ulp). Memory: positions * rotary_dim * 4 bytes (cos and sin, R/2 each).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/positional/rope/config.hpp"

namespace seqmix {

namespace detail {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// transformers' get_mscale.
inline double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace detail

/// The per-pair inverse frequencies of `c` (R/2 values) for a sequence of `sequence_length`
/// tokens (dynamic_ntk and longrope depend on it), and the attention factor. Validated first.
struct RopeFrequencies {
  std::vector<double> inv_freq;   ///< R/2 inverse frequencies, radians per position
  double attention_factor = 1.0;  ///< multiplies cos and sin
};

/// The frequencies of `c` for a sequence of `sequence_length` tokens.
inline RopeFrequencies rope_frequencies(const RopeConfig& c, index_t sequence_length) {
  validate_rope_config(ArgCheck("rope_frequencies"), c);
  const index_t pairs = c.rotary_dim / 2;
  const double R = static_cast<double>(c.rotary_dim);
  const double L0 = static_cast<double>(c.original_max_position_embeddings);
  RopeFrequencies f;
  f.inv_freq.resize(static_cast<std::size_t>(pairs));
  auto plain = [&](double base, index_t i) { return std::pow(base, -2.0 * static_cast<double>(i) / R); };
  double base = c.base;
  if (c.scheme == RopeScheme::ntk) base = c.base * std::pow(c.factor, R / (R - 2.0));
  if (c.scheme == RopeScheme::dynamic_ntk && static_cast<double>(sequence_length) > L0)
    base = c.base * std::pow(c.factor * static_cast<double>(sequence_length) / L0 - (c.factor - 1.0), R / (R - 2.0));
  for (index_t i = 0; i < pairs; ++i) f.inv_freq[static_cast<std::size_t>(i)] = plain(base, i);

  switch (c.scheme) {
    case RopeScheme::linear:
      for (double& w : f.inv_freq) w /= c.factor;
      break;
    case RopeScheme::yarn: {
      // The pair index at which `rotations` full turns fit in L0 tokens, then the ramp from
      // extrapolation (fast pairs, below `low`) to interpolation (slow pairs, above `high`).
      auto correction_dim = [&](double rotations) {
        return R * std::log(L0 / (rotations * detail::kTwoPi)) / (2.0 * std::log(c.base));
      };
      double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
      if (c.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0);
      high = std::min(high, R - 1.0);
      if (low == high) high += 0.001;
      for (index_t i = 0; i < pairs; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation = plain(c.base, i), interpolation = extrapolation / c.factor;
        f.inv_freq[static_cast<std::size_t>(i)] = interpolation * ramp + extrapolation * (1.0 - ramp);
      }
      f.attention_factor = (c.mscale != 0.0 && c.mscale_all_dim != 0.0)
                               ? detail::yarn_mscale(c.factor, c.mscale) / detail::yarn_mscale(c.factor, c.mscale_all_dim)
                               : detail::yarn_mscale(c.factor, 1.0);
      break;
    }
    case RopeScheme::llama3: {
      const double low_wavelen = L0 / c.low_freq_factor, high_wavelen = L0 / c.high_freq_factor;
      for (double& w : f.inv_freq) {
        const double wavelen = detail::kTwoPi / w;
        if (wavelen > low_wavelen) {
          w /= c.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (L0 / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
          w = (1.0 - smooth) * w / c.factor + smooth * w;
        }
      }
      break;
    }
    case RopeScheme::longrope: {
      const auto& ext = static_cast<double>(sequence_length) > L0 ? c.long_factor : c.short_factor;
      for (index_t i = 0; i < pairs; ++i) f.inv_freq[static_cast<std::size_t>(i)] /= ext[static_cast<std::size_t>(i)];
      const double scale = static_cast<double>(c.max_position_embeddings) / L0;
      f.attention_factor = scale <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(scale) / std::log(L0));
      break;
    }
    default:
      break;
  }
  if (c.attention_factor) f.attention_factor = *c.attention_factor;
  return f;
}

/// The cos and sin of every (position, pair) of a configuration, computed once in double and
/// kept by the caller; rope() reads it.
class RopeTable {
 public:
  /// An empty table (refused by rope()).
  RopeTable() = default;

  /// cos and sin for positions [0, positions). `sequence_length` (0: `positions`) is the length
  /// dynamic_ntk and longrope adapt to, as transformers does for a sequence of that many tokens:
  /// an engine serving longer sequences builds a new table.
  RopeTable(const RopeConfig& config, index_t positions, index_t sequence_length = 0) : config_(config) {
    const ArgCheck check("RopeTable");
    validate_rope_config(check, config);
    if (positions < 1) check.fail("positions", "must be >= 1, got " + std::to_string(positions));
    if (sequence_length < 0) check.fail("sequence_length", "must be >= 0, got " + std::to_string(sequence_length));
    const index_t pairs = config.rotary_dim / 2;
    const index_t elements = check.product("positions", positions, pairs);
    positions_ = positions;
    frequencies_ = rope_frequencies(config, sequence_length > 0 ? sequence_length : positions);
    // xPos: a factor that leaves float's normal range would turn scores into inf or 0. Each
    // pair's factor is monotonic in p, so the first and last positions bound it.
    for (index_t i = 0; config.xpos_scale_base > 0.0 && i < pairs; ++i)
      for (const index_t p : {index_t{0}, positions - 1}) {
        const double scale = frequencies_.attention_factor * xpos_scale(p, i);
        if (!(scale >= static_cast<double>(std::numeric_limits<float>::min()) &&
              scale <= static_cast<double>(std::numeric_limits<float>::max())))
          check.fail("positions", "reach position " + std::to_string(p) + ", where the xPos factor of pair " +
                                      std::to_string(i) + " is " + detail::rope_number(scale) +
                                      ", outside float's range: build the table with xpos_center nearer the positions "
                                      "used, a larger xpos_scale_base, or fewer positions");
      }
    cos_.resize(static_cast<std::size_t>(elements));
    sin_.resize(static_cast<std::size_t>(elements));
    const double m = frequencies_.attention_factor;
    for (index_t p = 0; p < positions; ++p) {
      for (index_t i = 0; i < pairs; ++i) {
        const double angle = static_cast<double>(p) * frequencies_.inv_freq[static_cast<std::size_t>(i)];
        const double scale = m * xpos_scale(p, i);
        cos_[static_cast<std::size_t>(p * pairs + i)] = static_cast<float>(scale * std::cos(angle));
        sin_[static_cast<std::size_t>(p * pairs + i)] = static_cast<float>(scale * std::sin(angle));
      }
    }
  }

  const RopeConfig& config() const noexcept { return config_; }  ///< the configuration
  index_t positions() const noexcept { return positions_; }      ///< positions [0, positions()) are covered
  index_t rotary_dim() const noexcept { return config_.rotary_dim; }  ///< R
  index_t pairs() const noexcept { return config_.rotary_dim / 2; }   ///< R/2
  RopeLayout layout() const noexcept { return config_.layout; }       ///< the pair layout
  const std::vector<double>& inv_freq() const noexcept { return frequencies_.inv_freq; }  ///< R/2 frequencies
  double attention_factor() const noexcept { return frequencies_.attention_factor; }  ///< on cos and sin
  bool empty() const noexcept { return positions_ == 0; }  ///< default-constructed
  /// An xPos table (config().xpos_scale_base > 0): it scales one side only, config().xpos_role.
  bool xpos() const noexcept { return config_.xpos_scale_base > 0.0; }
  /// The xPos factor of position p and pair i, in double (1 without xPos):
  /// zeta_i^(+-(p - center) / scale_base), zeta_i = (2i/R + gamma) / (1 + gamma).
  double xpos_scale(index_t p, index_t i) const noexcept {
    if (!xpos()) return 1.0;
    const double zeta = (2.0 * static_cast<double>(i) / static_cast<double>(config_.rotary_dim) + config_.xpos_gamma) /
                        (1.0 + config_.xpos_gamma);
    const double exponent = (static_cast<double>(p) - config_.xpos_center) / config_.xpos_scale_base;
    return std::pow(zeta, config_.xpos_role == XposRole::query ? exponent : -exponent);
  }

  /// attention_factor * cos of position p, pairs() floats; p in [0, positions()).
  const float* cos_row(index_t p) const noexcept { return cos_.data() + p * pairs(); }
  /// attention_factor * sin of position p, pairs() floats.
  const float* sin_row(index_t p) const noexcept { return sin_.data() + p * pairs(); }

 private:
  RopeConfig config_;
  index_t positions_ = 0;
  RopeFrequencies frequencies_;
  std::vector<float> cos_, sin_;  // [positions, R/2]
};

}  // namespace seqmix
