// Deterministic test data for tests, examples and benchmarks. Every generator takes an explicit
// seed so that a failing case can be reproduced from the seed printed in its message.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

#include "seqmix/core/tensor.hpp"

namespace seqmix::testing {

namespace detail {
template <class T, std::size_t Rank, class Draw>
void fill_from_engine(const TensorView<T, Rank>& view, std::mt19937_64& engine, Draw& draw) {
  for (index_t i = 0; i < view.size(0); ++i) {
    if constexpr (Rank == 1)
      view(i) = static_cast<T>(draw(engine));
    else
      fill_from_engine(view[i], engine, draw);
  }
}
}  // namespace detail

// Fills a view (any strides) in row-major order from a distribution drawn by `draw(engine)`.
// One engine per call: seeding a Mersenne Twister costs far more than drawing from it.
template <class T, std::size_t Rank, class Draw>
void fill_with(const TensorView<T, Rank>& view, std::uint64_t seed, Draw draw) {
  std::mt19937_64 engine(seed);
  detail::fill_from_engine(view, engine, draw);
}

template <class T, std::size_t Rank>
void fill_uniform(const TensorView<T, Rank>& view, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  fill_with(view, seed, [lo, hi](std::mt19937_64& e) { return std::uniform_real_distribution<float>(lo, hi)(e); });
}

template <class T, std::size_t Rank>
void fill_normal(const TensorView<T, Rank>& view, std::uint64_t seed, float mean = 0.f, float stddev = 1.f) {
  fill_with(view, seed, [mean, stddev](std::mt19937_64& e) { return std::normal_distribution<float>(mean, stddev)(e); });
}

// Log-space gates g <= 0 with exp(g) spread over [exp(lo), exp(hi)]; lo = -20 is a very strong decay.
template <class T, std::size_t Rank>
void fill_log_gate(const TensorView<T, Rank>& view, std::uint64_t seed, float lo = -1.f, float hi = 0.f) {
  fill_uniform(view, seed, lo, hi);
}

// Owning tensor with uniform random content in [lo, hi).
template <std::size_t Rank>
Tensor<float, Rank> random_tensor(const std::array<index_t, Rank>& shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor<float, Rank> t(shape);
  fill_uniform(t.view(), seed, lo, hi);
  return t;
}

// Scales each row of the last dimension to L2 norm `norm` (unit rows keep the delta rules'
// transitions contractive). The sum runs in double; an all-zero row stays zero.
template <std::size_t Rank>
void normalize_rows(Tensor<float, Rank>& x, float norm = 1.f) {
  const index_t D = x.size(Rank - 1);
  for (index_t i = 0; i < x.numel() / D; ++i) {
    float* row = x.data() + i * D;
    double sum = 0.0;
    for (index_t j = 0; j < D; ++j) sum += double(row[j]) * row[j];
    const float scale = norm / static_cast<float>(std::sqrt(sum + 1e-12));
    for (index_t j = 0; j < D; ++j) row[j] *= scale;
  }
}

}  // namespace seqmix::testing
