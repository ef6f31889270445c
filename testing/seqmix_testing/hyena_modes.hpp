// Random modal filters of the distilled Hyena (HyenaModalFilters) and the taps they run, for the
// handoff tests (test_hyena_handoff.cpp, test_direction_lti_mixers.cpp).
#pragma once

#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/hyena/step_distilled.hpp"

namespace seqmix::testing {

// Random modes per order and channel (poles of modulus 0.4..0.98), and the taps they define.
struct HyenaModes {
  Tensor<float, 3> pole_real, pole_imag, gain_real, gain_imag;
  Tensor<float, 2> feedthrough;

  HyenaModes(index_t N, index_t D, index_t M, std::uint64_t seed)
      : pole_real({N, D, M}), pole_imag({N, D, M}), gain_real({N, D, M}), gain_imag({N, D, M}), feedthrough({N, D}) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> modulus(0.4, 0.98), angle(-3.0, 3.0), gain(-0.5, 0.5), ft(-1.0, 1.0);
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) {
        feedthrough(n, d) = static_cast<float>(ft(rng));
        for (index_t k = 0; k < M; ++k) {
          const double r = modulus(rng), a = angle(rng);
          pole_real(n, d, k) = static_cast<float>(r * std::cos(a)), pole_imag(n, d, k) = static_cast<float>(r * std::sin(a));
          gain_real(n, d, k) = static_cast<float>(gain(rng)), gain_imag(n, d, k) = static_cast<float>(gain(rng));
        }
      }
  }
  seqmix::HyenaModalFilters filters() const {
    return {pole_real.view(), pole_imag.view(), gain_real.view(), gain_imag.view(), feedthrough.view()};
  }
  // h[0] = feedthrough + Re(sum g^2), h[s] = Re(sum g^2 lambda^s): the filter the modes run.
  Tensor<float, 3> taps(index_t L) const {
    const index_t N = pole_real.size(0), D = pole_real.size(1), M = pole_real.size(2);
    Tensor<float, 3> h({N, L, D});
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) {
        std::vector<std::complex<double>> r(static_cast<std::size_t>(M));
        for (index_t k = 0; k < M; ++k) {
          const std::complex<double> g(gain_real(n, d, k), gain_imag(n, d, k));
          r[static_cast<std::size_t>(k)] = g * g;
        }
        for (index_t s = 0; s < L; ++s) {
          double v = s == 0 ? double(feedthrough(n, d)) : 0.0;
          for (index_t k = 0; k < M; ++k) {
            v += r[static_cast<std::size_t>(k)].real();
            r[static_cast<std::size_t>(k)] *= std::complex<double>(pole_real(n, d, k), pole_imag(n, d, k));
          }
          h(n, s, d) = static_cast<float>(v);
        }
      }
    return h;
  }
};

}  // namespace seqmix::testing
