// A random linear-Titans problem for the titans tests (test_titans.cpp, test_titans_retention.cpp):
// token tensors, gates and initial states with the shapes TitansInputs takes, and the outputs.
#pragma once

#include <cmath>
#include <cstdint>

#include "seqmix/core/tensor.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"

namespace seqmix::testing {

// The ranges the draws that differ between the tests come from: eta in [0, eta_max), the initial
// memory in [memory_lo, memory_hi) (positive for Memora's retention, which reads log M).
struct TitansDraw {
  float eta_max = 0.95f;
  float memory_lo = -0.5f, memory_hi = 0.5f;
};

// Keys are l2-normalized per token (as Titans normalizes them), so 2 theta |k|^2 <= 1 keeps the
// inner gradient step contractive and the sequences stay O(1) for every gate draw.
struct TitansProblem {
  index_t B, T, HK, HV, K, V;
  Tensor<float, 4> q, k, v, m0, s0;
  Tensor<float, 3> alpha, eta, theta;

  TitansProblem(index_t B_, index_t T_, index_t HK_, index_t HV_, index_t K_, index_t V_, std::uint64_t seed,
                const TitansDraw& draw = {})
      : B(B_), T(T_), HK(HK_), HV(HV_), K(K_), V(V_) {
    q = random_tensor<4>({B, T, HK, K}, seed);
    k = random_tensor<4>({B, T, HK, K}, seed + 1);
    v = random_tensor<4>({B, T, HV, V}, seed + 2);
    alpha = random_tensor<3>({B, T, HV}, seed + 3, 0.f, 0.2f);
    eta = random_tensor<3>({B, T, HV}, seed + 4, 0.f, draw.eta_max);
    theta = random_tensor<3>({B, T, HV}, seed + 5, 0.f, 0.5f);
    m0 = random_tensor<4>({B, HV, K, V}, seed + 6, draw.memory_lo, draw.memory_hi);
    s0 = random_tensor<4>({B, HV, K, V}, seed + 7, -0.1f, 0.1f);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < HK; ++h) {
          double sum = 0;
          for (index_t r = 0; r < K; ++r) sum += double(k(b, t, h, r)) * k(b, t, h, r);
          const float f = static_cast<float>(1.0 / std::sqrt(sum + 1e-12));
          for (index_t r = 0; r < K; ++r) k(b, t, h, r) *= f;
        }
  }

  TitansInputs inputs(bool with_state) const {
    TitansInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    in.alpha = alpha.cview(), in.eta = eta.cview(), in.theta = theta.cview();
    if (with_state) in.initial_memory = m0.cview(), in.initial_momentum = s0.cview();
    return in;
  }

  // The first T1 tokens as a prefill (no initial state: the caller sets it).
  TitansInputs prefix_inputs(index_t T1) const {
    TitansInputs in;
    in.q = q.cview().slice(1, 0, T1), in.k = k.cview().slice(1, 0, T1), in.v = v.cview().slice(1, 0, T1);
    in.alpha = alpha.cview().slice(1, 0, T1), in.eta = eta.cview().slice(1, 0, T1);
    in.theta = theta.cview().slice(1, 0, T1);
    return in;
  }

  // Token t's step inputs.
  TitansStepInputs step(index_t t) const {
    return {q.cview().select(1, t),     k.cview().select(1, t),   v.cview().select(1, t),
            alpha.cview().select(1, t), eta.cview().select(1, t), theta.cview().select(1, t)};
  }
};

// Output y and final memory / momentum for a TitansProblem.
struct TitansResult {
  Tensor<float, 4> y, m, s;
  explicit TitansResult(const TitansProblem& p)
      : y({p.B, p.T, p.HV, p.V}), m({p.B, p.HV, p.K, p.V}), s({p.B, p.HV, p.K, p.V}) {}
  TitansOutputs outputs() { return {y.view(), m.view(), s.view()}; }
};

inline void titans_check_close(const TitansResult& a, const TitansResult& ref, double tol) {
  require_close("y", a.y.cview(), ref.y.cview(), tol);
  require_close("final_memory", a.m.cview(), ref.m.cview(), tol);
  require_close("final_momentum", a.s.cview(), ref.s.cview(), tol);
}

}  // namespace seqmix::testing
