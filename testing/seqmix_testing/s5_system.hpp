// Random S5 parameters for the s5 tests (test_s5.cpp, test_s5_timestep.cpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/s5/reference.hpp"
#include "seqmix_testing/random.hpp"

namespace seqmix::testing {

// S5-style parameters: Lambda from S4D-Lin-like eigenvalues (real part in [-1, -0.1], imaginary
// part pi p), B and C random and scaled by 1/sqrt of their inner size, dt log-uniform in
// [1e-3, 1e-1]. Owns its tensors; params() views them.
struct S5System {
  Tensor<float, 1> L_re, L_im, dt, D;
  Tensor<float, 2> B_re, B_im, C_re, C_im;

  S5System(index_t H, index_t P, std::uint64_t seed)
      : L_re(random_tensor<1>({P}, seed, -1.f, -0.1f)),
        L_im({P}),
        dt({P}),
        D(random_tensor<1>({H}, seed + 1)),
        B_re(random_tensor<2>({P, H}, seed + 2, -inv_sqrt(H), inv_sqrt(H))),
        B_im(random_tensor<2>({P, H}, seed + 3, -inv_sqrt(H), inv_sqrt(H))),
        C_re(random_tensor<2>({H, P}, seed + 4, -inv_sqrt(P), inv_sqrt(P))),
        C_im(random_tensor<2>({H, P}, seed + 5, -inv_sqrt(P), inv_sqrt(P))) {
    const Tensor<float, 1> r = random_tensor<1>({P}, seed + 6, 0.f, 1.f);
    for (index_t i = 0; i < P; ++i) {
      L_im(i) = 3.14159265f * float(i);
      dt(i) = std::exp(std::log(1e-3f) + r(i) * (std::log(1e-1f) - std::log(1e-3f)));
    }
  }

  S5Params params() const {
    return {L_re.view(), L_im.view(), B_re.view(), B_im.view(), C_re.view(), C_im.view(), dt.view(), D.view()};
  }

 private:
  static float inv_sqrt(index_t n) { return 1.f / std::sqrt(float(n)); }
};

}  // namespace seqmix::testing
