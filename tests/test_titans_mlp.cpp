// titans_mlp (Titans' two-layer MLP memory with momentum, mini-batch form): the fast prefill and
// the step against the double reference over ragged T, B > 1, GQA, mini-batches 16 / 7 / 1, with
// and without initial momenta; prefill + steps = the reference's mini-batch prefill followed by
// its b = 1 recurrence; streaming segments cut at multiples of b; the explicit gradient against
// finite differences of the inner loss (double); gates at both extremes stay finite; bad input
// refused before any output is written. Also Miras' Yaad: the linear titans memory with a per-token
// Huber threshold delta_t (TitansInputs::huber_delta) against the reference, steps and bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"
#include "seqmix_testing/titans_mlp.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

using st::TitansMlpProblem;
using st::TitansMlpResult;
using st::titans_mlp_check_close;

void titans_mlp_sweep(std::initializer_list<index_t> lengths, index_t K, index_t M, std::uint64_t seed) {
  for (index_t T : lengths)
    for (index_t B : {1, 3}) {
      const index_t HV = 2, HK = seed % 2 ? 1 : 2;
      const TitansMlpProblem p(B, T, HK, HV, K, M, seed);
      const bool with_momentum = seed % 3 != 0;
      for (index_t mb : {16, 7, 1}) {
        if (mb != 16 && T < 17) continue;
        INFO("B=" << B << " T=" << T << " K=" << K << " M=" << M << " HK=" << HK << " b=" << mb
                  << " initial momentum=" << with_momentum);
        seqmix::TitansMlpOptions o;
        o.mini_batch = mb;
        TitansMlpResult ref(p), out(p);
        seqmix::reference::titans_mlp(p.inputs(with_momentum), ref.outputs(), o);
        seqmix::titans_mlp(p.inputs(with_momentum), out.outputs(), o,
                           seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
        titans_mlp_check_close(out, ref, 2e-4);
      }
      ++seed;
    }
}

}  // namespace

TEST_CASE("titans_mlp: the fast prefill equals the reference, T up to 65, mini-batches 16 7 1", "[titans][titans_mlp]") {
  titans_mlp_sweep({1, 17, 64, 65}, 16, 33, 11);
}

TEST_CASE("titans_mlp: the fast prefill equals the reference, T 100, K 64", "[titans][titans_mlp]") {
  titans_mlp_sweep({st::small_test_scale() ? index_t(40) : index_t(100)}, 64, 32, 24);
}

TEST_CASE("titans_mlp: the gradient of ||x + gelu(x W1) W2 - v||^2 against finite differences", "[titans][titans_mlp]") {
  const index_t K = 5, M = 7;
  const TitansMlpProblem p(1, 1, 1, 1, K, M, 77);
  std::vector<double> W1(K * M), W2(M * K), k(K), v(K), g1, g2;
  for (index_t i = 0; i < K; ++i) {
    k[i] = p.k(0, 0, 0, i), v[i] = p.v(0, 0, 0, i);
    for (index_t m = 0; m < M; ++m) W1[i * M + m] = 2.0 * p.w1(0, 0, i, m), W2[m * K + i] = 2.0 * p.w2(0, 0, m, i);
  }
  seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, &g1, &g2);
  const double h = 1e-6;
  double worst = 0.0;
  for (std::vector<double>* w : {&W1, &W2})
    for (std::size_t e = 0; e < w->size(); ++e) {
      const double keep = (*w)[e];
      (*w)[e] = keep + h;
      const double up = seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v);
      (*w)[e] = keep - h;
      const double down = seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v);
      (*w)[e] = keep;
      const double fd = (up - down) / (2 * h), g = w == &W1 ? g1[e] : g2[e];
      worst = std::max(worst, std::abs(fd - g));
    }
  REQUIRE(worst < 1e-7);
  // One token with alpha = eta = 0 and no momentum: the reference and the fast form take exactly
  // W - theta grad (at the float weights).
  TitansMlpProblem one(1, 1, 1, 1, K, M, 78);
  one.alpha(0, 0, 0) = 0.f, one.eta(0, 0, 0) = 0.f, one.theta(0, 0, 0) = 0.3f;
  for (index_t i = 0; i < K; ++i) {
    k[i] = one.k(0, 0, 0, i), v[i] = one.v(0, 0, 0, i);
    for (index_t m = 0; m < M; ++m) W1[i * M + m] = one.w1(0, 0, i, m), W2[m * K + i] = one.w2(0, 0, m, i);
  }
  seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, &g1, &g2);
  TitansMlpResult ref(one), fast(one);
  seqmix::reference::titans_mlp(one.inputs(false), ref.outputs());
  seqmix::titans_mlp(one.inputs(false), fast.outputs());
  for (index_t i = 0; i < K; ++i)
    for (index_t m = 0; m < M; ++m) {
      CHECK(std::abs(ref.w1(0, 0, i, m) - (W1[i * M + m] - 0.3 * g1[i * M + m])) < 1e-6);
      CHECK(std::abs(ref.w2(0, 0, m, i) - (W2[m * K + i] - 0.3 * g2[m * K + i])) < 1e-6);
      CHECK(std::abs(fast.w1(0, 0, i, m) - (W1[i * M + m] - 0.3 * g1[i * M + m])) < 1e-5);
      CHECK(std::abs(ref.s1(0, 0, i, m) + 0.3 * g1[i * M + m]) < 1e-6);
    }
}

TEST_CASE("titans_mlp: prefill then steps equals the mini-batch prefill then the b = 1 recurrence", "[titans][titans_mlp]") {
  const TitansMlpProblem p(3, 41, 1, 2, 16, 24, 91);
  const index_t T1 = 32;
  // The reference: mini-batches of 16 over the prompt, then mini-batches of one, states carried.
  TitansMlpResult ref(p);
  Tensor<float, 4> r1 = p.w1, r2 = p.w2, rs1 = p.s1, rs2 = p.s2;
  seqmix::TitansMlpOptions one;
  one.mini_batch = 1;
  seqmix::reference::titans_mlp(p.segment(0, T1, r1, r2, rs1, rs2),
                                {ref.y.view().slice(1, 0, T1), r1.view(), r2.view(), rs1.view(), rs2.view()});
  seqmix::reference::titans_mlp(p.segment(T1, p.T - T1, r1, r2, rs1, rs2),
                                {ref.y.view().slice(1, T1, p.T - T1), r1.view(), r2.view(), rs1.view(), rs2.view()}, one);
  // The fast prefill over the prompt (final states = the initial views), then steps in place.
  Tensor<float, 4> y({p.B, p.T, p.HV, p.K});
  Tensor<float, 4> w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
  seqmix::titans_mlp(p.segment(0, T1, w1, w2, s1, s2), {y.view().slice(1, 0, T1), w1.view(), w2.view(), s1.view(), s2.view()},
                     {}, st::two_thread_pool());
  for (index_t t = T1; t < p.T; ++t) {
    const seqmix::TitansMlpStepInputs si{p.q.cview().select(1, t),     p.k.cview().select(1, t),
                                         p.v.cview().select(1, t),     p.alpha.cview().select(1, t),
                                         p.eta.cview().select(1, t),   p.theta.cview().select(1, t)};
    seqmix::titans_mlp_step(si, {y.view().select(1, t), w1.view(), w2.view(), s1.view(), s2.view()}, {},
                            t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
  }
  st::require_close("y", y.cview(), ref.y.cview(), 2e-5);
  st::require_close("w1", w1.cview(), r1.cview(), 2e-5);
  st::require_close("w2", w2.cview(), r2.cview(), 2e-5);
  st::require_close("s1", s1.cview(), rs1.cview(), 2e-5);
  st::require_close("s2", s2.cview(), rs2.cview(), 2e-5);
  // b = 1 prefill over everything equals the prompt at b = 1 followed by steps.
  TitansMlpResult all1(p);
  seqmix::titans_mlp(p.inputs(true), all1.outputs(), one);
  TitansMlpResult ref1(p);
  seqmix::reference::titans_mlp(p.inputs(true), ref1.outputs(), one);
  titans_mlp_check_close(all1, ref1, 2e-5);
}

TEST_CASE("titans_mlp: streaming segments cut at multiples of b carry weights and momenta", "[titans][titans_mlp]") {
  const TitansMlpProblem p(2, 77, 2, 2, 8, 12, 171);
  TitansMlpResult full(p);
  seqmix::TitansMlpOptions o;
  o.mini_batch = 8;
  seqmix::titans_mlp(p.inputs(true), full.outputs(), o);
  Tensor<float, 4> y({p.B, p.T, p.HV, p.K});
  Tensor<float, 4> w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
  index_t t0 = 0;
  for (index_t len : {8, 32, 24, 13}) {
    seqmix::titans_mlp(p.segment(t0, len, w1, w2, s1, s2),
                       {y.view().slice(1, t0, len), w1.view(), w2.view(), s1.view(), s2.view()}, o, st::two_thread_pool());
    t0 += len;
  }
  REQUIRE(t0 == p.T);
  st::require_close("y", y.cview(), full.y.cview(), 1e-5);
  st::require_close("w1", w1.cview(), full.w1.cview(), 1e-5);
  st::require_close("s2", s2.cview(), full.s2.cview(), 1e-5);
}

TEST_CASE("titans_mlp: gates at both extremes stay finite over 65536 tokens (b 16), 16384 (b 1)", "[titans][titans_mlp]") {
  const index_t T = st::small_test_scale() ? 2048 : 65536;
  TitansMlpProblem p(1, T, 1, 1, 8, 4, 1234);
  std::uint64_t r = 5;
  for (index_t t = 0; t < T; ++t) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    p.alpha(0, t, 0) = (r >> 63) ? 1.f : 0.f;
    p.eta(0, t, 0) = ((r >> 62) & 1) ? 1.f : 0.f;
    p.theta(0, t, 0) = ((r >> 61) & 1) ? 0.1f : 0.f;
  }
  for (index_t mb : {16, 1}) {
    TitansMlpResult out(p);
    seqmix::TitansMlpOptions o;
    o.mini_batch = mb;
    // b = 1 (a mini-batch per token) over the first quarter only, to keep the case cheap.
    seqmix::TitansMlpInputs in = p.inputs(true);
    seqmix::TitansMlpOutputs outs = out.outputs();
    const index_t len = mb == 1 ? T / 4 : T;
    in.q = in.q.slice(1, 0, len), in.k = in.k.slice(1, 0, len), in.v = in.v.slice(1, 0, len);
    in.alpha = in.alpha.slice(1, 0, len), in.eta = in.eta.slice(1, 0, len), in.theta = in.theta.slice(1, 0, len);
    outs.y = outs.y.slice(1, 0, len);
    out.y.fill(0.f);
    seqmix::titans_mlp(in, outs, o);
    bool finite = true;
    for (const Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2})
      for (float e : *x) finite = finite && std::isfinite(e);
    INFO("mini_batch " << mb);
    REQUIRE(finite);
  }
}

TEST_CASE("titans_mlp: bad shapes, gates and options are rejected before any output is written", "[titans][titans_mlp]") {
  const TitansMlpProblem p(2, 9, 1, 2, 8, 6, 201);
  TitansMlpResult out(p);
  for (Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2}) x->fill(7.f);
  auto expect = [&](const char* argument, seqmix::TitansMlpInputs in, seqmix::TitansMlpOutputs o, seqmix::TitansMlpOptions opt) {
    st::require_shape_error(argument, [&] { seqmix::titans_mlp(in, o, opt); });
    st::require_shape_error(argument, [&] { seqmix::reference::titans_mlp(in, o, opt); });
  };
  Tensor<float, 4> v_bad({2, 9, 2, 5}), w2_bad({2, 2, 5, 8}), s1_bad({2, 2, 8, 5});
  seqmix::TitansMlpInputs in = p.inputs(true);
  in.v = v_bad.cview();
  expect("v", in, out.outputs(), {});
  in = p.inputs(true), in.initial_w1 = {};
  expect("initial_w1", in, out.outputs(), {});
  in = p.inputs(true), in.initial_w2 = w2_bad.cview();
  expect("initial_w2", in, out.outputs(), {});
  in = p.inputs(true), in.initial_s1 = s1_bad.cview();
  expect("initial_s1", in, out.outputs(), {});
  Tensor<float, 3> gate = p.alpha;
  gate(1, 3, 1) = 1.5f;
  in = p.inputs(true), in.alpha = gate.cview();
  expect("alpha", in, out.outputs(), {});
  gate = p.theta, gate(0, 0, 0) = std::nanf("");
  in = p.inputs(true), in.theta = gate.cview();
  expect("theta", in, out.outputs(), {});
  seqmix::TitansMlpOptions mb;
  mb.mini_batch = 0;
  expect("options.mini_batch", p.inputs(true), out.outputs(), mb);
  mb.mini_batch = 1025;
  expect("options.mini_batch", p.inputs(true), out.outputs(), mb);
  expect("y", p.inputs(true), {TensorView<float, 4>(const_cast<float*>(p.q.data()), {2, 9, 2, 8}), {}, {}, {}, {}}, {});
  expect("final_w1", p.inputs(true), {out.y.view(), out.s1.view(), {}, out.s1.view(), {}}, {});
  // final_w1 partly overlapping initial_w1 (shifted by one element).
  Tensor<float, 4> big({2, 2, 8, 7});
  in = p.inputs(true);
  in.initial_w1 = TensorView<float, 4>(big.data(), {2, 2, 8, 6}, {112, 56, 7, 1});
  expect("final_w1", in, {out.y.view(), TensorView<float, 4>(big.data() + 1, {2, 2, 8, 6}, {112, 56, 7, 1}), {}, {}, {}}, {});
  // The step: w2 of the wrong hidden size, s1 = w1 (named by the first of the two), a gate out of range.
  Tensor<float, 3> ys({2, 2, 8});
  ys.fill(7.f);
  seqmix::TitansMlpStepInputs si{p.q.cview().select(1, 0),     p.k.cview().select(1, 0),   p.v.cview().select(1, 0),
                                 p.alpha.cview().select(1, 0), p.eta.cview().select(1, 0), p.theta.cview().select(1, 0)};
  st::require_shape_error("w2", [&] { seqmix::titans_mlp_step(si, {ys.view(), out.w1.view(), w2_bad.view(), out.s1.view(), out.s2.view()}); });
  st::require_shape_error("w1", [&] { seqmix::titans_mlp_step(si, {ys.view(), out.w1.view(), out.w2.view(), out.w1.view(), out.s2.view()}); });
  Tensor<float, 2> eta2({2, 2});
  eta2.fill(-0.5f);
  si.eta = eta2.cview();
  st::require_shape_error("eta", [&] { seqmix::titans_mlp_step(si, {ys.view(), out.w1.view(), out.w2.view(), out.s1.view(), out.s2.view()}); });
  bool untouched = true;
  for (const Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2})
    for (float e : *x) untouched = untouched && e == 7.f;
  for (float e : ys) untouched = untouched && e == 7.f;
  REQUIRE(untouched);
}

namespace {

// Yaad's data-dependent Huber threshold on the linear titans memory: per-token delta_t.
struct TitansYaadProblem {
  index_t B = 2, T, HK = 1, HV = 2, K = 16, V = 12;
  Tensor<float, 4> q, k, v;
  Tensor<float, 3> alpha, eta, theta, delta;
  TitansYaadProblem(index_t T_, std::uint64_t seed) : T(T_) {
    q = st::random_tensor<4>({B, T, HK, K}, seed);
    k = st::random_tensor<4>({B, T, HK, K}, seed + 1, -0.25f, 0.25f);
    v = st::random_tensor<4>({B, T, HV, V}, seed + 2);
    alpha = st::random_tensor<3>({B, T, HV}, seed + 3, 0.f, 0.2f);
    eta = st::random_tensor<3>({B, T, HV}, seed + 4, 0.f, 0.9f);
    theta = st::random_tensor<3>({B, T, HV}, seed + 5, 0.f, 0.5f);
    delta = st::random_tensor<3>({B, T, HV}, seed + 6, 0.02f, 0.6f);
  }
  seqmix::TitansInputs inputs(bool per_token) const {
    seqmix::TitansInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    in.alpha = alpha.cview(), in.eta = eta.cview(), in.theta = theta.cview();
    if (per_token) in.huber_delta = delta.cview();
    return in;
  }
  seqmix::TitansStepInputs step(index_t t) const {
    seqmix::TitansStepInputs si{q.cview().select(1, t),     k.cview().select(1, t),   v.cview().select(1, t),
                                alpha.cview().select(1, t), eta.cview().select(1, t), theta.cview().select(1, t),
                                delta.cview().select(1, t)};
    return si;
  }
};

struct TitansYaadResult {
  Tensor<float, 4> y, m, s;
  explicit TitansYaadResult(const TitansYaadProblem& p) : y({p.B, p.T, p.HV, p.V}), m({p.B, p.HV, p.K, p.V}), s(m) {}
  seqmix::TitansOutputs outputs() { return {y.view(), m.view(), s.view()}; }
};

}  // namespace

TEST_CASE("titans miras yaad: a per-token Huber delta_t in prefill, recurrent prefill and steps equals the reference",
          "[titans][titans_yaad]") {
  for (index_t T : {1, 17, 65}) {
    const TitansYaadProblem p(T, 3001 + static_cast<std::uint64_t>(T));
    INFO("T=" << T);
    seqmix::TitansOptions o;
    o.loss = seqmix::TitansLoss::huber, o.huber_delta = 1e6f;  // ignored where huber_delta is given
    TitansYaadResult ref(p), fast(p), rec(p);
    seqmix::reference::titans(p.inputs(true), ref.outputs(), o);
    seqmix::titans(p.inputs(true), fast.outputs(), o, st::two_thread_pool());
    o.algorithm = seqmix::TitansAlgorithm::recurrent;
    seqmix::titans(p.inputs(true), rec.outputs(), o);
    for (const TitansYaadResult* r : {&fast, &rec}) {
      st::require_close("y", r->y.cview(), ref.y.cview(), 2e-4);
      st::require_close("memory", r->m.cview(), ref.m.cview(), 2e-4);
      st::require_close("momentum", r->s.cview(), ref.s.cview(), 2e-4);
    }
    Tensor<float, 4> y({p.B, p.T, p.HV, p.V}), m({p.B, p.HV, p.K, p.V}), s({p.B, p.HV, p.K, p.V});
    for (index_t t = 0; t < T; ++t) seqmix::titans_step(p.step(t), {y.view().select(1, t), m.view(), s.view()}, o);
    st::require_close("step y", y.cview(), ref.y.cview(), 2e-4);
    st::require_close("step memory", m.cview(), ref.m.cview(), 2e-4);
    // The thresholds matter: the fixed huge delta (l2 at half the rate) gives other outputs.
    TitansYaadResult fixed(p);
    seqmix::reference::titans(p.inputs(false), fixed.outputs(), o);
    double diff = 0;
    for (std::size_t i = 0; i < static_cast<std::size_t>(fixed.y.numel()); ++i) diff = std::max(diff, double(std::abs(fixed.y.data()[i] - ref.y.data()[i])));
    if (T > 1) CHECK(diff > 1e-3);
  }
}

TEST_CASE("titans miras yaad: a constant delta_t equals options.huber_delta exactly", "[titans][titans_yaad]") {
  TitansYaadProblem p(40, 3101);
  for (float& x : p.delta) x = 0.07f;
  seqmix::TitansOptions o;
  o.loss = seqmix::TitansLoss::huber, o.huber_delta = 0.07f;
  TitansYaadResult a(p), b(p);
  seqmix::titans(p.inputs(true), a.outputs(), o);
  seqmix::titans(p.inputs(false), b.outputs(), o);
  for (std::size_t i = 0; i < static_cast<std::size_t>(a.y.numel()); ++i) REQUIRE(a.y.data()[i] == b.y.data()[i]);
  for (std::size_t i = 0; i < static_cast<std::size_t>(a.m.numel()); ++i) REQUIRE(a.m.data()[i] == b.m.data()[i]);
}

TEST_CASE("titans miras yaad: a bad delta_t is rejected before any output is written", "[titans][titans_yaad]") {
  TitansYaadProblem p(6, 3201);
  TitansYaadResult out(p);
  out.y.fill(7.f), out.m.fill(7.f), out.s.fill(7.f);
  seqmix::TitansOptions huber;
  huber.loss = seqmix::TitansLoss::huber;
  // Given with the l2 loss (nothing would read it).
  st::require_shape_error("huber_delta", [&] { seqmix::titans(p.inputs(true), out.outputs(), {}); });
  st::require_shape_error("huber_delta", [&] { seqmix::reference::titans(p.inputs(true), out.outputs(), {}); });
  Tensor<float, 3> bad({2, 5, 2});
  bad.fill(0.1f);
  seqmix::TitansInputs in = p.inputs(true);
  in.huber_delta = bad.cview();
  st::require_shape_error("huber_delta", [&] { seqmix::titans(in, out.outputs(), huber); });
  for (const float x : {0.f, -0.5f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    Tensor<float, 3> d = p.delta;
    d(1, 4, 1) = x;
    in = p.inputs(true), in.huber_delta = d.cview();
    st::require_shape_error("huber_delta", [&] { seqmix::titans(in, out.outputs(), huber); });
    st::require_shape_error("huber_delta", [&] { seqmix::reference::titans(in, out.outputs(), huber); });
    seqmix::TitansStepInputs si = p.step(4);
    si.huber_delta = d.cview().select(1, 4);
    st::require_shape_error("huber_delta", [&] {
      seqmix::titans_step(si, {out.y.view().select(1, 0), out.m.view(), out.s.view()}, huber);
    });
  }
  bool untouched = true;
  for (const Tensor<float, 4>* x : {&out.y, &out.m, &out.s})
    for (float e : *x) untouched = untouched && e == 7.f;
  REQUIRE(untouched);
  // titans_mlp_step has only the l2 loss: a delta_t given to it is refused.
  const TitansMlpProblem mp(1, 1, 1, 1, 4, 4, 3301);
  Tensor<float, 3> ys({1, 1, 4});
  Tensor<float, 4> w1 = mp.w1, w2 = mp.w2, s1 = mp.s1, s2 = mp.s2;
  Tensor<float, 2> d2({1, 1});
  d2.fill(0.5f);
  seqmix::TitansMlpStepInputs si{mp.q.cview().select(1, 0),     mp.k.cview().select(1, 0),   mp.v.cview().select(1, 0),
                                 mp.alpha.cview().select(1, 0), mp.eta.cview().select(1, 0), mp.theta.cview().select(1, 0),
                                 d2.cview()};
  st::require_shape_error("huber_delta",
                          [&] { seqmix::titans_mlp_step(si, {ys.view(), w1.view(), w2.view(), s1.view(), s2.view()}); });
}
