// titans_mlp test problems shared by test_titans_mlp, test_titans_mlp_miras and
// test_titans_mlp_serving: random inputs with l2-normalized keys and queries, small initial
// weights and momenta, per-token Huber thresholds, and a result holder with the five outputs.
#pragma once

#include <cmath>
#include <cstdint>

#include "seqmix/rnn/titans/mlp_reference.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"

namespace seqmix::testing {

// Keys and queries l2-normalized per token (as Titans normalizes them), small weights, so the
// inner steps stay contractive for theta <= 0.5. delta (Yaad's per-token Huber threshold) lies
// in [0.05, 0.5], so some errors fall on each side of it.
struct TitansMlpProblem {
  index_t B, T, HK, HV, K, M;
  Tensor<float, 4> q, k, v, w1, w2, s1, s2;
  Tensor<float, 3> alpha, eta, theta, delta;

  TitansMlpProblem(index_t B_, index_t T_, index_t HK_, index_t HV_, index_t K_, index_t M_, std::uint64_t seed)
      : B(B_), T(T_), HK(HK_), HV(HV_), K(K_), M(M_) {
    q = random_tensor<4>({B, T, HK, K}, seed);
    k = random_tensor<4>({B, T, HK, K}, seed + 1);
    v = random_tensor<4>({B, T, HV, K}, seed + 2);
    alpha = random_tensor<3>({B, T, HV}, seed + 3, 0.f, 0.2f);
    eta = random_tensor<3>({B, T, HV}, seed + 4, 0.f, 0.9f);
    theta = random_tensor<3>({B, T, HV}, seed + 5, 0.f, 0.2f);
    const float r1 = 1.f / std::sqrt(float(K)), r2 = 1.f / std::sqrt(float(M));
    w1 = random_tensor<4>({B, HV, K, M}, seed + 6, -r1, r1);
    w2 = random_tensor<4>({B, HV, M, K}, seed + 7, -r2, r2);
    s1 = random_tensor<4>({B, HV, K, M}, seed + 8, -0.05f, 0.05f);
    s2 = random_tensor<4>({B, HV, M, K}, seed + 9, -0.05f, 0.05f);
    delta = random_tensor<3>({B, T, HV}, seed + 10, 0.05f, 0.5f);
    for (Tensor<float, 4>* x : {&q, &k})
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
          for (index_t h = 0; h < HK; ++h) {
            double sum = 0;
            for (index_t r = 0; r < K; ++r) sum += double((*x)(b, t, h, r)) * (*x)(b, t, h, r);
            const float f = static_cast<float>(1.0 / std::sqrt(sum + 1e-12));
            for (index_t r = 0; r < K; ++r) (*x)(b, t, h, r) *= f;
          }
  }

  TitansMlpInputs inputs(bool with_momentum) const {
    TitansMlpInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    in.alpha = alpha.cview(), in.eta = eta.cview(), in.theta = theta.cview();
    in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
    if (with_momentum) in.initial_s1 = s1.cview(), in.initial_s2 = s2.cview();
    return in;
  }
  // Tokens t0 .. t0+len-1 with the given states.
  TitansMlpInputs segment(index_t t0, index_t len, const Tensor<float, 4>& a1, const Tensor<float, 4>& a2,
                          const Tensor<float, 4>& m1, const Tensor<float, 4>& m2) const {
    TitansMlpInputs in;
    in.q = q.cview().slice(1, t0, len), in.k = k.cview().slice(1, t0, len), in.v = v.cview().slice(1, t0, len);
    in.alpha = alpha.cview().slice(1, t0, len), in.eta = eta.cview().slice(1, t0, len);
    in.theta = theta.cview().slice(1, t0, len);
    in.initial_w1 = a1.cview(), in.initial_w2 = a2.cview(), in.initial_s1 = m1.cview(), in.initial_s2 = m2.cview();
    return in;
  }
  // Token t of every batch row as step inputs (huber_delta only when per_token).
  TitansMlpStepInputs step(index_t t, bool per_token = false) const {
    TitansMlpStepInputs si;
    si.q = q.cview().select(1, t), si.k = k.cview().select(1, t), si.v = v.cview().select(1, t);
    si.alpha = alpha.cview().select(1, t), si.eta = eta.cview().select(1, t), si.theta = theta.cview().select(1, t);
    if (per_token) si.huber_delta = delta.cview().select(1, t);
    return si;
  }
};

// The outputs of one titans_mlp call on a TitansMlpProblem.
struct TitansMlpResult {
  Tensor<float, 4> y, w1, w2, s1, s2;
  explicit TitansMlpResult(const TitansMlpProblem& p)
      : y({p.B, p.T, p.HV, p.K}), w1({p.B, p.HV, p.K, p.M}), w2({p.B, p.HV, p.M, p.K}), s1(w1), s2(w2) {}
  TitansMlpOutputs outputs() { return {y.view(), w1.view(), w2.view(), s1.view(), s2.view()}; }
};

// Every output of a against ref within tol (catch_checks.hpp's require_close).
inline void titans_mlp_check_close(const TitansMlpResult& a, const TitansMlpResult& ref, double tol) {
  require_close("y", a.y.cview(), ref.y.cview(), tol);
  require_close("final_w1", a.w1.cview(), ref.w1.cview(), tol);
  require_close("final_w2", a.w2.cview(), ref.w2.cview(), tol);
  require_close("final_s1", a.s1.cview(), ref.s1.cview(), tol);
  require_close("final_s2", a.s2.cview(), ref.s2.cview(), tol);
}

}  // namespace seqmix::testing
