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

// The value std::uniform_real_distribution<float>(lo, hi)(engine) returns with libstdc++, bit for
// bit: generate_canonical<float, 24> takes one 64-bit draw, float(draw) / 2^64 (kept below 1),
// scaled to [lo, hi). Why: libstdc++ works out the engine's bits per draw with two long double
// logarithms on every call, which the -O1 sanitizer build does not fold away: filling a tensor
// took half of some tests' time there (a 10^7-element u of the long_conv wide-walk tests, 3 s).
inline float uniform_float(std::mt19937_64& engine, float lo, float hi) {
  float unit = static_cast<float>(engine()) / 0x1p64f;
  if (unit >= 1.f) unit = std::nextafter(1.f, 0.f);
  return unit * (hi - lo) + lo;
}

template <class T, std::size_t Rank>
void fill_uniform(const TensorView<T, Rank>& view, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  fill_with(view, seed, [lo, hi](std::mt19937_64& e) { return uniform_float(e, lo, hi); });
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
