// The random projection of Performer's FAVOR+ (Choromanski et al. 2021): M rows w_j in R^K drawn
// so that the positive random features exp(w . x - |x|^2/2) / sqrt(M) (feature_map's
// positive_random) estimate the softmax kernel exp(q . k) without bias.
//
// Orthogonal draws (the default): the rows come in blocks of K that are exactly orthogonal (the
// Gram-Schmidt orthonormalization of a Gaussian K x K block, which is Haar-distributed), each
// row then scaled by the norm of an independent Gaussian vector of length K, so every row has
// the marginal distribution of an N(0, I_K) draw while rows of a block do not repeat directions
// (lower variance; Performer's "scaling = 0" option). The last block is cut to M mod K rows.
// Plain draws: i.i.d. N(0, I_K) rows.
//
// The generator is the library's own (splitmix64 and Box-Muller in double), not <random>'s
// distributions, whose output differs between standard libraries: a seed gives the same
// matrix on every platform.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

namespace detail {

// splitmix64 (Steele, Lea and Flood 2014): a full-period 64-bit generator whose every seed,
// 0 included, gives a good stream.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1): 53 random bits, never 0 (Box-Muller takes its log).
  double uniform_open() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  // One N(0, 1) draw (Box-Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double radius = std::sqrt(-2.0 * std::log(uniform_open()));
    const double angle = 2.0 * 3.14159265358979323846 * uniform_open();
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace detail

/// Fills w [M,K] with Performer's random projection from `seed` (see the top of this header):
/// orthogonal blocks with chi-distributed row norms, or i.i.d. Gaussian rows when `orthogonal`
/// is false. Deterministic for a seed on every platform. M >= 1, K >= 1.
inline void performer_random_features(const TensorView<float, 2>& w, std::uint64_t seed, bool orthogonal = true) {
  const ArgCheck check("performer_random_features");
  check.shape("w", w, std::array<index_t, 2>{-1, -1}, "M,K");
  const index_t M = w.size(0), K = w.size(1);
  if (M <= 0 || K <= 0) check.fail("w", "must have M >= 1 rows and K >= 1 columns, got shape " + shape_to_string(w.shape()));
  detail::SplitMix64 rng(seed);
  std::vector<double> block(static_cast<std::size_t>(K * K));
  for (index_t j0 = 0; j0 < M; j0 += K) {
    const index_t rows = std::min(K, M - j0);
    for (double& value : block) value = rng.normal();
    if (orthogonal) {
      // Modified Gram-Schmidt over all K rows (the first `rows` are kept): a Gaussian square
      // block is full rank with probability 1, and in double the rows come out orthonormal to
      // ~1e-15. A degenerate row (norm 0, probability 0) would be redrawn.
      for (index_t i = 0; i < rows; ++i) {
        double* row = block.data() + i * K;
        for (;;) {
          for (index_t p = 0; p < i; ++p) {
            const double* prev = block.data() + p * K;
            double dot = 0;
            for (index_t k = 0; k < K; ++k) dot += row[k] * prev[k];
            for (index_t k = 0; k < K; ++k) row[k] -= dot * prev[k];
          }
          double norm2 = 0;
          for (index_t k = 0; k < K; ++k) norm2 += row[k] * row[k];
          if (norm2 > 1e-24) {
            const double inv = 1.0 / std::sqrt(norm2);
            for (index_t k = 0; k < K; ++k) row[k] *= inv;
            break;
          }
          for (index_t k = 0; k < K; ++k) row[k] = rng.normal();
        }
        // The norm of an independent N(0, I_K) vector: chi with K degrees of freedom.
        double chi2 = 0;
        for (index_t k = 0; k < K; ++k) {
          const double g = rng.normal();
          chi2 += g * g;
        }
        const double length = std::sqrt(chi2);
        for (index_t k = 0; k < K; ++k) w(j0 + i, k) = static_cast<float>(row[k] * length);
      }
    } else {
      for (index_t i = 0; i < rows; ++i)
        for (index_t k = 0; k < K; ++k) w(j0 + i, k) = static_cast<float>(block[static_cast<std::size_t>(i * K + k)]);
    }
  }
}

}  // namespace seqmix
