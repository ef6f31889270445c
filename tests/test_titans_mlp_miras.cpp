// titans_mlp with Miras' attentional biases (TitansMlpOptions::loss: l1, l3, Huber with a
// constant or Yaad's per-token delta_t) and the reverse option: each loss's explicit gradient
// against central finite differences of the inner loss (double) and one inner step taken exactly;
// the fast prefill and the steps against the double reference; reverse calls (fast, reference)
// against forward calls on explicitly reversed copies; bad loss options refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"
#include "seqmix_testing/titans_mlp.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TitansLoss;
namespace st = seqmix::testing;

// A loss configuration of the sweeps: the loss, its constant delta and whether the per-token
// huber_delta input is given.
struct MirasLoss {
  TitansLoss loss;
  float delta;
  bool per_token;
  const char* name;
};

const MirasLoss kMirasLosses[] = {{TitansLoss::l1, 1.f, false, "l1"},
                                  {TitansLoss::l3, 1.f, false, "l3"},
                                  {TitansLoss::huber, 0.2f, false, "huber 0.2"},
                                  {TitansLoss::huber, 1e6f, true, "huber per-token delta_t"}};

seqmix::TitansMlpOptions miras_options(const MirasLoss& l, index_t mini_batch) {
  seqmix::TitansMlpOptions o;
  o.mini_batch = mini_batch, o.loss = l.loss, o.huber_delta = l.delta;
  return o;
}

seqmix::TitansMlpInputs miras_inputs(const st::TitansMlpProblem& p, const MirasLoss& l, bool with_momentum) {
  seqmix::TitansMlpInputs in = p.inputs(with_momentum);
  if (l.per_token) in.huber_delta = p.delta.cview();
  return in;
}

// The error e = k + gelu(k W1) W2 - v of one token (double, row-major W1 [K,M], W2 [M,K]).
std::vector<double> miras_error(const std::vector<double>& W1, const std::vector<double>& W2, const std::vector<double>& k,
                                const std::vector<double>& v) {
  const std::size_t K = k.size(), M = W1.size() / K;
  std::vector<double> e(K);
  for (std::size_t j = 0; j < K; ++j) e[j] = k[j] - v[j];
  for (std::size_t m = 0; m < M; ++m) {
    double z = 0;
    for (std::size_t i = 0; i < K; ++i) z += k[i] * W1[i * M + m];
    const double a = seqmix::detail::ttt_gelu(z);
    for (std::size_t j = 0; j < K; ++j) e[j] += a * W2[m * K + j];
  }
  return e;
}

// The same problem with every token-indexed tensor reversed in time (t -> T-1-t).
st::TitansMlpProblem reversed_copy(const st::TitansMlpProblem& p) {
  st::TitansMlpProblem r = p;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t t = 0; t < p.T; ++t) {
      const index_t u = p.T - 1 - t;
      for (index_t h = 0; h < p.HK; ++h)
        for (index_t j = 0; j < p.K; ++j) r.q(b, u, h, j) = p.q(b, t, h, j), r.k(b, u, h, j) = p.k(b, t, h, j);
      for (index_t h = 0; h < p.HV; ++h) {
        for (index_t j = 0; j < p.K; ++j) r.v(b, u, h, j) = p.v(b, t, h, j);
        r.alpha(b, u, h) = p.alpha(b, t, h), r.eta(b, u, h) = p.eta(b, t, h);
        r.theta(b, u, h) = p.theta(b, t, h), r.delta(b, u, h) = p.delta(b, t, h);
      }
    }
  return r;
}

}  // namespace

TEST_CASE("titans_mlp miras: each loss's gradient against central finite differences, one step exact",
          "[titans][titans_mlp][miras]") {
  const index_t K = 5, M = 7;
  const st::TitansMlpProblem p(1, 1, 1, 1, K, M, 4077);
  std::vector<double> W1(K * M), W2(M * K), k(K), v(K), g1, g2;
  for (index_t i = 0; i < K; ++i) {
    k[i] = p.k(0, 0, 0, i), v[i] = p.v(0, 0, 0, i);
    for (index_t m = 0; m < M; ++m) W1[i * M + m] = 2.0 * p.w1(0, 0, i, m), W2[m * K + i] = 2.0 * p.w2(0, 0, m, i);
  }
  // Finite differences need every error away from the kinks (0 for l1, +-delta for Huber).
  const double delta = 0.3;
  double margin = 1.0;
  for (double e : miras_error(W1, W2, k, v)) margin = std::min({margin, std::abs(e), std::abs(std::abs(e) - delta)});
  REQUIRE(margin > 1e-3);
  int huber_inside = 0;
  for (double e : miras_error(W1, W2, k, v)) huber_inside += std::abs(e) <= delta;
  CHECK(huber_inside > 0);
  CHECK(huber_inside < K);  // both branches of Huber are exercised
  for (TitansLoss loss : {TitansLoss::l2, TitansLoss::l1, TitansLoss::l3, TitansLoss::huber}) {
    INFO("loss " << int(loss));
    const auto value = [&] { return seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, nullptr, nullptr, loss, delta); };
    seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, &g1, &g2, loss, delta);
    const double h = 1e-6;
    double worst = 0.0, scale = 1.0;
    for (std::vector<double>* w : {&W1, &W2})
      for (std::size_t e = 0; e < w->size(); ++e) {
        const double keep = (*w)[e];
        (*w)[e] = keep + h;
        const double up = value();
        (*w)[e] = keep - h;
        const double down = value();
        (*w)[e] = keep;
        const double fd = (up - down) / (2 * h), g = w == &W1 ? g1[e] : g2[e];
        worst = std::max(worst, std::abs(fd - g)), scale = std::max(scale, std::abs(g));
      }
    REQUIRE(worst < 1e-7 * scale);
  }
  // One token with alpha = eta = 0 and no momentum: reference, fast prefill and step take exactly
  // W - theta grad with the token's own Huber threshold (delta_t given, options.huber_delta huge).
  st::TitansMlpProblem one(1, 1, 1, 1, K, M, 4078);
  one.alpha(0, 0, 0) = 0.f, one.eta(0, 0, 0) = 0.f, one.theta(0, 0, 0) = 0.3f, one.delta(0, 0, 0) = 0.25f;
  for (index_t i = 0; i < K; ++i) {
    k[i] = one.k(0, 0, 0, i), v[i] = one.v(0, 0, 0, i);
    for (index_t m = 0; m < M; ++m) W1[i * M + m] = one.w1(0, 0, i, m), W2[m * K + i] = one.w2(0, 0, m, i);
  }
  const MirasLoss yaad{TitansLoss::huber, 1e6f, true, "yaad"};
  seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, &g1, &g2, TitansLoss::huber, double(0.25f));
  st::TitansMlpResult ref(one), fast(one);
  seqmix::reference::titans_mlp(miras_inputs(one, yaad, false), ref.outputs(), miras_options(yaad, 16));
  seqmix::titans_mlp(miras_inputs(one, yaad, false), fast.outputs(), miras_options(yaad, 16));
  Tensor<float, 3> ys({1, 1, K});
  Tensor<float, 4> w1 = one.w1, w2 = one.w2, s1({1, 1, K, M}), s2({1, 1, M, K});
  seqmix::titans_mlp_step(one.step(0, true), {ys.view(), w1.view(), w2.view(), s1.view(), s2.view()}, miras_options(yaad, 1));
  for (index_t i = 0; i < K; ++i)
    for (index_t m = 0; m < M; ++m) {
      const double e1 = W1[i * M + m] - 0.3 * g1[i * M + m], e2 = W2[m * K + i] - 0.3 * g2[m * K + i];
      CHECK(std::abs(ref.w1(0, 0, i, m) - e1) < 1e-6);
      CHECK(std::abs(ref.w2(0, 0, m, i) - e2) < 1e-6);
      CHECK(std::abs(fast.w1(0, 0, i, m) - e1) < 1e-5);
      CHECK(std::abs(fast.w2(0, 0, m, i) - e2) < 1e-5);
      CHECK(std::abs(w1(0, 0, i, m) - e1) < 1e-5);
      CHECK(std::abs(w2(0, 0, m, i) - e2) < 1e-5);
    }
  st::require_close("step y", ys.cview(), ref.y.cview().select(1, 0), 1e-5);
}

TEST_CASE("titans_mlp miras: fast prefill and steps equal the reference for l1, l3, Huber and delta_t",
          "[titans][titans_mlp][miras]") {
  const std::vector<index_t> lengths = st::small_test_scale() ? std::vector<index_t>{1, 17} : std::vector<index_t>{1, 17, 65};
  std::uint64_t seed = 4100;
  for (const MirasLoss& l : kMirasLosses)
    for (index_t T : lengths) {
      const st::TitansMlpProblem p(2, T, 1, 2, 16, 24, seed++);
      for (index_t mb : {16, 7}) {
        INFO("loss " << l.name << " T=" << T << " b=" << mb);
        st::TitansMlpResult ref(p), fast(p);
        seqmix::reference::titans_mlp(miras_inputs(p, l, true), ref.outputs(), miras_options(l, mb));
        seqmix::titans_mlp(miras_inputs(p, l, true), fast.outputs(), miras_options(l, mb),
                           mb == 7 ? st::two_thread_pool() : seqmix::serial_executor());
        st::titans_mlp_check_close(fast, ref, 2e-4);
      }
      // Steps from the initial states equal the reference at b = 1.
      INFO("loss " << l.name << " T=" << T << " steps");
      st::TitansMlpResult ref1(p);
      seqmix::reference::titans_mlp(miras_inputs(p, l, true), ref1.outputs(), miras_options(l, 1));
      Tensor<float, 4> y({p.B, p.T, p.HV, p.K}), w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
      for (index_t t = 0; t < T; ++t)
        seqmix::titans_mlp_step(p.step(t, l.per_token), {y.view().select(1, t), w1.view(), w2.view(), s1.view(), s2.view()},
                                miras_options(l, 1));
      st::require_close("step y", y.cview(), ref1.y.cview(), 2e-4);
      st::require_close("step w1", w1.cview(), ref1.w1.cview(), 2e-4);
      st::require_close("step w2", w2.cview(), ref1.w2.cview(), 2e-4);
      st::require_close("step s1", s1.cview(), ref1.s1.cview(), 2e-4);
      st::require_close("step s2", s2.cview(), ref1.s2.cview(), 2e-4);
    }
}

TEST_CASE("titans_mlp miras: the loss changes the outputs, and a constant delta_t equals options.huber_delta",
          "[titans][titans_mlp][miras]") {
  st::TitansMlpProblem p(1, 33, 1, 1, 8, 12, 4200);
  const MirasLoss l2{TitansLoss::l2, 1.f, false, "l2"};
  st::TitansMlpResult base(p);
  seqmix::titans_mlp(p.inputs(true), base.outputs());
  for (const MirasLoss& l : kMirasLosses) {
    st::TitansMlpResult r(p);
    seqmix::titans_mlp(miras_inputs(p, l, true), r.outputs(), miras_options(l, 16));
    double diff = 0;
    for (index_t i = 0; i < r.w1.numel(); ++i) diff = std::max(diff, double(std::abs(r.w1.data()[i] - base.w1.data()[i])));
    INFO("loss " << l.name);
    CHECK(diff > 1e-4);
  }
  (void)l2;
  for (float& x : p.delta) x = 0.15f;
  const MirasLoss given{TitansLoss::huber, 1e6f, true, "delta_t"}, fixed{TitansLoss::huber, 0.15f, false, "fixed"};
  st::TitansMlpResult a(p), b(p);
  seqmix::titans_mlp(miras_inputs(p, given, true), a.outputs(), miras_options(given, 16));
  seqmix::titans_mlp(miras_inputs(p, fixed, true), b.outputs(), miras_options(fixed, 16));
  st::titans_mlp_check_close(a, b, 0.0);
}

TEST_CASE("titans_mlp reverse: fast and reference equal forward calls on reversed copies", "[titans][titans_mlp][reverse]") {
  std::uint64_t seed = 4300;
  for (index_t T : {1, 23, 40})
    for (index_t mb : {16, 7}) {
      const st::TitansMlpProblem p(2, T, 1, 2, 8, 12, seed++);
      const st::TitansMlpProblem r = reversed_copy(p);
      const MirasLoss l = mb == 7 ? kMirasLosses[3] : MirasLoss{TitansLoss::l2, 1.f, false, "l2"};
      seqmix::TitansMlpOptions o = miras_options(l, mb);
      for (bool fast : {true, false}) {
        INFO("T=" << T << " b=" << mb << " loss " << l.name << (fast ? " fast" : " reference"));
        st::TitansMlpResult rev(p), fwd(r);
        o.reverse = true;
        if (fast)
          seqmix::titans_mlp(miras_inputs(p, l, true), rev.outputs(), o, st::two_thread_pool());
        else
          seqmix::reference::titans_mlp(miras_inputs(p, l, true), rev.outputs(), o);
        o.reverse = false;
        if (fast)
          seqmix::titans_mlp(miras_inputs(r, l, true), fwd.outputs(), o);
        else
          seqmix::reference::titans_mlp(miras_inputs(r, l, true), fwd.outputs(), o);
        // y in token order: token t of the reverse call is token T-1-t of the reversed copy.
        st::TitansMlpResult back = fwd;
        for (index_t b = 0; b < p.B; ++b)
          for (index_t t = 0; t < T; ++t)
            for (index_t h = 0; h < p.HV; ++h)
              for (index_t j = 0; j < p.K; ++j) back.y(b, t, h, j) = fwd.y(b, T - 1 - t, h, j);
        st::titans_mlp_check_close(rev, back, 1e-6);
      }
    }
}

TEST_CASE("titans_mlp miras: bad loss options and delta_t are rejected before any output is written",
          "[titans][titans_mlp][miras]") {
  st::TitansMlpProblem p(1, 5, 1, 1, 4, 6, 4400);
  st::TitansMlpResult out(p);
  for (Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2}) x->fill(7.f);
  const auto untouched = [&] {
    bool same = true;
    for (const Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2})
      for (float e : *x) same = same && e == 7.f;
    return same;
  };
  seqmix::TitansMlpOptions o;
  o.loss = static_cast<TitansLoss>(9);
  st::require_shape_error("options.loss", [&] { seqmix::titans_mlp(p.inputs(true), out.outputs(), o); });
  o.loss = TitansLoss::huber, o.huber_delta = 0.f;
  st::require_shape_error("options.huber_delta", [&] { seqmix::reference::titans_mlp(p.inputs(true), out.outputs(), o); });
  o.huber_delta = 1.f;
  seqmix::TitansMlpInputs in = p.inputs(true);
  p.delta(0, 3, 0) = -0.1f;
  in.huber_delta = p.delta.cview();
  st::require_shape_error("huber_delta", [&] { seqmix::titans_mlp(in, out.outputs(), o); });
  p.delta(0, 3, 0) = 0.1f;
  o.loss = TitansLoss::l1;  // a delta_t with a loss that does not read it
  st::require_shape_error("huber_delta", [&] { seqmix::titans_mlp(in, out.outputs(), o); });
  Tensor<float, 3> short_delta({1, 4, 1});
  short_delta.fill(0.5f);
  o.loss = TitansLoss::huber;
  in.huber_delta = short_delta.cview();
  st::require_shape_error("huber_delta", [&] { seqmix::titans_mlp(in, out.outputs(), o); });
  // The step: a NaN delta_t.
  Tensor<float, 3> ys({1, 1, 4});
  ys.fill(7.f);
  seqmix::TitansMlpStepInputs si = p.step(0, true);
  p.delta(0, 0, 0) = std::nanf("");
  st::require_shape_error("huber_delta", [&] {
    seqmix::titans_mlp_step(si, {ys.view(), out.w1.view(), out.w2.view(), out.s1.view(), out.s2.view()}, o);
  });
  REQUIRE(untouched());
  for (float e : ys) REQUIRE(e == 7.f);
}
