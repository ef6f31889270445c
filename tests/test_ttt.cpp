// ttt_linear (TTT layer, Sun et al. 2024): the dual-form prefill and the step against the
// per-mini-batch reference over T in {1, 17, 64, 65, 1000}, head sizes {16, 64}, B in {1, 3},
// with and without initial weights and position scales; prefill + steps (the step is a
// mini-batch of one), streaming segments, the inner-loss gradient against finite differences,
// bad shapes and parameters.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <cstdint>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct TttProblem {
  index_t B, T, H, K;
  Tensor<float, 4> q, k, v, w0;
  Tensor<float, 3> eta;
  Tensor<float, 2> gamma, beta;
  Tensor<float, 1> scale;

  TttProblem(index_t B_, index_t T_, index_t H_, index_t K_, std::uint64_t seed, index_t mini_batch = 16)
      : B(B_), T(T_), H(H_), K(K_) {
    q = st::random_tensor<4>({B, T, H, K}, seed);
    k = st::random_tensor<4>({B, T, H, K}, seed + 1);
    v = st::random_tensor<4>({B, T, H, K}, seed + 2);
    // Learning rates as the paper's sigmoid(.) / K, initial weights of unit-size outputs.
    eta = st::random_tensor<3>({B, T, H}, seed + 3, 0.f, 1.f / static_cast<float>(K));
    const float a = 1.f / std::sqrt(static_cast<float>(K));
    w0 = st::random_tensor<4>({B, H, K, K}, seed + 4, -a, a);
    gamma = st::random_tensor<2>({H, K}, seed + 5, 0.5f, 1.5f);
    beta = st::random_tensor<2>({H, K}, seed + 6, -0.2f, 0.2f);
    scale = Tensor<float, 1>({mini_batch});
    for (index_t i = 0; i < mini_batch; ++i) scale(i) = 1.f / static_cast<float>(i + 1);
  }

  seqmix::TttLinearInputs inputs(bool with_state, bool with_scale = false) const {
    seqmix::TttLinearInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
    in.ln_weight = gamma.cview(), in.ln_bias = beta.cview();
    if (with_state) in.initial_w = w0.cview();
    if (with_scale) in.token_scale = scale.cview();
    return in;
  }
  // Tokens [t0, t1) of every input.
  seqmix::TttLinearInputs segment(index_t t0, index_t t1) const {
    seqmix::TttLinearInputs in = inputs(false);
    in.q = q.cview().slice(1, t0, t1 - t0), in.k = k.cview().slice(1, t0, t1 - t0);
    in.v = v.cview().slice(1, t0, t1 - t0), in.eta = eta.cview().slice(1, t0, t1 - t0);
    return in;
  }
};

struct TttResult {
  Tensor<float, 4> z, w;
  explicit TttResult(const TttProblem& p) : z({p.B, p.T, p.H, p.K}), w({p.B, p.H, p.K, p.K}) {}
  seqmix::TttLinearOutputs outputs() { return {z.view(), w.view()}; }
};

void ttt_check_close(const TttResult& a, const TttResult& ref, double tol) {
  st::require_close("z", a.z.cview(), ref.z.cview(), tol);
  st::require_close("final_w", a.w.cview(), ref.w.cview(), tol);
}

}  // namespace

TEST_CASE("ttt_linear: the dual-form prefill equals the per-mini-batch reference", "[ttt]") {
  std::uint64_t seed = 11;
  for (index_t T : {1, 17, 64, 65, 1000})
    for (index_t K : {16, 64})
      for (index_t B : {1, 3}) {
        if (st::small_test_scale() && T == 1000 && B == 3) continue;
        const TttProblem p(B, T, 2, K, seed);
        const bool with_state = seed % 2 == 0, with_scale = seed % 3 == 0;
        INFO("B=" << B << " T=" << T << " K=" << K << " initial_w=" << with_state << " token_scale=" << with_scale);
        TttResult ref(p), out(p);
        seqmix::reference::ttt_linear(p.inputs(with_state, with_scale), ref.outputs());
        seqmix::ttt_linear(p.inputs(with_state, with_scale), out.outputs(), {},
                           seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
        ttt_check_close(out, ref, 2e-4);
        ++seed;
      }
}

TEST_CASE("ttt_linear: other mini-batch sizes, including one and larger than T", "[ttt]") {
  const TttProblem p(2, 70, 3, 16, 301, 128);
  for (index_t b : {1, 5, 16, 64, 128}) {
    INFO("mini_batch " << b);
    seqmix::TttOptions o;
    o.mini_batch = b;
    seqmix::TttLinearInputs in = p.inputs(true, b == 128);
    TttResult ref(p), out(p);
    seqmix::reference::ttt_linear(in, ref.outputs(), o);
    seqmix::ttt_linear(in, out.outputs(), o, st::two_thread_pool());
    ttt_check_close(out, ref, 2e-4);
  }
}

TEST_CASE("ttt_linear: the step is a mini-batch of one, prefill then steps equals the reference", "[ttt]") {
  const TttProblem p(3, 60, 2, 16, 401);
  const index_t T1 = 37;  // a ragged prefill (two mini-batches of 16 and one of 5), then 23 steps
  // Reference: b = 16 over the prefill tokens, then b = 1 over the rest from its final weights.
  TttResult ref(p);
  seqmix::TttLinearInputs in = p.segment(0, T1);
  in.initial_w = p.w0.cview();
  seqmix::reference::ttt_linear(in, {ref.z.view().slice(1, 0, T1), ref.w.view()});
  seqmix::TttOptions one;
  one.mini_batch = 1;
  in = p.segment(T1, p.T);
  in.initial_w = ref.w.cview();
  seqmix::reference::ttt_linear(in, {ref.z.view().slice(1, T1, p.T - T1), ref.w.view()}, one);

  Tensor<float, 4> z({p.B, p.T, p.H, p.K});
  Tensor<float, 4> w = p.w0;
  in = p.segment(0, T1);
  in.initial_w = w.cview();
  seqmix::ttt_linear(in, {z.view().slice(1, 0, T1), w.view()});  // final_w in place
  for (index_t t = T1; t < p.T; ++t) {
    const seqmix::TttLinearStepInputs si{p.q.cview().select(1, t), p.k.cview().select(1, t), p.v.cview().select(1, t),
                                         p.eta.cview().select(1, t), p.gamma.cview(), p.beta.cview()};
    seqmix::ttt_linear_step(si, {z.view().select(1, t), w.view()}, {},
                            t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
  }
  st::require_close("z", z.cview(), ref.z.cview(), 2e-4);
  st::require_close("w", w.cview(), ref.w.cview(), 2e-4);

  // And the steps alone from the initial weights equal one prefill with mini_batch = 1.
  TttResult full(p);
  seqmix::ttt_linear(p.inputs(true), full.outputs(), one);
  Tensor<float, 4> zs({p.B, p.T, p.H, p.K});
  Tensor<float, 4> ws = p.w0;
  for (index_t t = 0; t < p.T; ++t) {
    const seqmix::TttLinearStepInputs si{p.q.cview().select(1, t), p.k.cview().select(1, t), p.v.cview().select(1, t),
                                         p.eta.cview().select(1, t), p.gamma.cview(), p.beta.cview()};
    seqmix::ttt_linear_step(si, {zs.view().select(1, t), ws.view()});
  }
  st::require_close("z steps", zs.cview(), full.z.cview(), 1e-5);
  st::require_close("w steps", ws.cview(), full.w.cview(), 1e-5);
}

TEST_CASE("ttt_linear: streaming segments carry the weights", "[ttt]") {
  const TttProblem p(2, 81, 2, 16, 501);
  TttResult full(p);
  seqmix::ttt_linear(p.inputs(true), full.outputs());
  // Cut at multiples of b = 16 (the last segment ragged): the same mini-batches, equal to one call.
  for (const std::vector<index_t>& cuts : {std::vector<index_t>{0, 32, 81}, std::vector<index_t>{0, 16, 64, 81}}) {
    Tensor<float, 4> z({p.B, p.T, p.H, p.K});
    Tensor<float, 4> w = p.w0;
    for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
      seqmix::TttLinearInputs in = p.segment(cuts[s], cuts[s + 1]);
      in.initial_w = w.cview();
      seqmix::ttt_linear(in, {z.view().slice(1, cuts[s], cuts[s + 1] - cuts[s]), w.view()}, {}, st::two_thread_pool());
    }
    st::require_close("z", z.cview(), full.z.cview(), 1e-5);
    st::require_close("w", w.cview(), full.w.cview(), 1e-5);
  }
  // Cut elsewhere (17 + 64): each call starts its mini-batches at its first token, so the
  // segments equal the reference run over the same segments, and differ from one call.
  TttResult ref(p);
  Tensor<float, 4> z({p.B, p.T, p.H, p.K});
  Tensor<float, 4> w = p.w0;
  ref.w = p.w0;
  for (const auto& seg : {std::pair<index_t, index_t>{0, 17}, std::pair<index_t, index_t>{17, 81}}) {
    seqmix::TttLinearInputs in = p.segment(seg.first, seg.second);
    in.initial_w = w.cview();
    seqmix::ttt_linear(in, {z.view().slice(1, seg.first, seg.second - seg.first), w.view()});
    in.initial_w = ref.w.cview();
    seqmix::reference::ttt_linear(in, {ref.z.view().slice(1, seg.first, seg.second - seg.first), ref.w.view()});
  }
  st::require_close("z", z.cview(), ref.z.cview(), 2e-4);
  st::require_close("w", w.cview(), ref.w.cview(), 2e-4);
  double diff = 0;
  for (index_t t = 17; t < p.T; ++t) diff = std::max(diff, double(std::abs(z(0, t, 0, 0) - full.z(0, t, 0, 0))));
  CHECK(diff > 1e-3);
}

TEST_CASE("ttt_linear: the inner-loss gradient equals finite differences in double", "[ttt]") {
  for (index_t K : {5, 16}) {
    std::uint64_t r = 1234567 + static_cast<std::uint64_t>(K);
    const auto uniform = [&r](double lo, double hi) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      return lo + (hi - lo) * static_cast<double>(r >> 11) / 9007199254740992.0;
    };
    std::vector<double> W(static_cast<std::size_t>(K * K)), k(static_cast<std::size_t>(K)), v(k), g(k), b(k);
    for (double& x : W) x = uniform(-0.5, 0.5);
    for (index_t j = 0; j < K; ++j) k[j] = uniform(-1, 1), v[j] = uniform(-1, 1), g[j] = uniform(0.5, 1.5), b[j] = uniform(-0.3, 0.3);
    std::vector<double> grad;
    seqmix::reference::ttt_linear_inner_loss(W, k, v, g, b, 1e-6, &grad);
    const double h = 1e-6;
    double worst = 0, largest = 0;
    for (std::size_t e = 0; e < W.size(); ++e) {
      std::vector<double> wp = W, wm = W;
      wp[e] += h, wm[e] -= h;
      const double fd = (seqmix::reference::ttt_linear_inner_loss(wp, k, v, g, b, 1e-6) -
                         seqmix::reference::ttt_linear_inner_loss(wm, k, v, g, b, 1e-6)) / (2 * h);
      worst = std::max(worst, std::abs(fd - grad[e]));
      largest = std::max(largest, std::abs(grad[e]));
    }
    INFO("K=" << K << " max |fd - grad| = " << worst << ", max |grad| = " << largest);
    CHECK(largest > 1e-2);
    CHECK(worst <= 1e-7 * std::max(1.0, largest));
  }
}

TEST_CASE("ttt_linear: bad shapes and parameters are refused before any output", "[ttt]") {
  const TttProblem p(2, 20, 2, 8, 601);
  const Tensor<float, 4> v6 = st::random_tensor<4>({2, 20, 2, 6}, 1);
  const Tensor<float, 3> eta_short = st::random_tensor<3>({2, 19, 2}, 2);
  const Tensor<float, 2> gamma_bad = st::random_tensor<2>({2, 6}, 3);
  const Tensor<float, 1> scale_bad = st::random_tensor<1>({8}, 4);
  const Tensor<float, 4> w_bad = st::random_tensor<4>({2, 2, 8, 6}, 5);
  const auto refused = [&](const seqmix::TttLinearInputs& in, const seqmix::TttOptions& o, const char* what) {
    INFO(what);
    TttResult out(p);
    out.z.fill(7.f), out.w.fill(7.f);
    CHECK_THROWS_AS(seqmix::ttt_linear(in, out.outputs(), o), seqmix::ShapeError);
    CHECK_THROWS_AS(seqmix::reference::ttt_linear(in, out.outputs(), o), seqmix::ShapeError);
    for (index_t e = 0; e < out.z.numel(); ++e) REQUIRE(out.z.data()[e] == 7.f);
    for (index_t e = 0; e < out.w.numel(); ++e) REQUIRE(out.w.data()[e] == 7.f);
  };
  seqmix::TttLinearInputs in = p.inputs(true);
  in.v = v6.cview();
  refused(in, {}, "v with V != K");
  in = p.inputs(true), in.eta = eta_short.cview();
  refused(in, {}, "eta of 19 tokens");
  in = p.inputs(true), in.ln_weight = gamma_bad.cview();
  refused(in, {}, "ln_weight [2,6]");
  in = p.inputs(true), in.ln_bias = gamma_bad.cview();
  refused(in, {}, "ln_bias [2,6]");
  in = p.inputs(true), in.token_scale = scale_bad.cview();
  refused(in, {}, "token_scale of 8 with mini_batch 16");
  in = p.inputs(true), in.initial_w = w_bad.cview();
  refused(in, {}, "initial_w [2,2,8,6]");
  seqmix::TttOptions o;
  o.mini_batch = 0;
  refused(p.inputs(true), o, "mini_batch 0");
  o.mini_batch = 1025;
  refused(p.inputs(true), o, "mini_batch 1025");
  o = {}, o.ln_eps = 0.f;
  refused(p.inputs(true), o, "ln_eps 0");
  o.ln_eps = std::nanf("");
  refused(p.inputs(true), o, "ln_eps NaN");

  // Overlaps: z over q, final_w over part of initial_w (the same view is allowed).
  Tensor<float, 4> qz = p.q;
  in = p.inputs(true), in.q = qz.cview();
  CHECK_THROWS_AS(seqmix::ttt_linear(in, {qz.view(), {}}), seqmix::ShapeError);
  Tensor<float, 4> big({2, 2, 8, 9});
  in = p.inputs(false);
  in.initial_w = big.cview().slice(3, 0, 8);
  Tensor<float, 4> z({2, 20, 2, 8});
  CHECK_THROWS_AS(seqmix::ttt_linear(in, {z.view(), big.view().slice(3, 1, 8)}), seqmix::ShapeError);
  CHECK_NOTHROW(seqmix::ttt_linear(in, {z.view(), big.view().slice(3, 0, 8)}));

  // The step: w of the wrong shape, z over w.
  Tensor<float, 4> w({2, 2, 8, 8});
  Tensor<float, 3> zs({2, 2, 8});
  zs.fill(7.f);
  const seqmix::TttLinearStepInputs si{p.q.cview().select(1, 0), p.k.cview().select(1, 0), p.v.cview().select(1, 0),
                                       p.eta.cview().select(1, 0), p.gamma.cview(), p.beta.cview()};
  Tensor<float, 4> w6({2, 2, 8, 6});
  CHECK_THROWS_AS(seqmix::ttt_linear_step(si, {zs.view(), w6.view()}), seqmix::ShapeError);
  seqmix::TttLinearStepInputs sb = si;
  sb.v = v6.cview().select(1, 0);
  CHECK_THROWS_AS(seqmix::ttt_linear_step(sb, {zs.view(), w.view()}), seqmix::ShapeError);
  for (index_t e = 0; e < zs.numel(); ++e) REQUIRE(zs.data()[e] == 7.f);
  CHECK_THROWS_AS(seqmix::ttt_linear_step(si, {w.view().select(3, 0), w.view()}), seqmix::ShapeError);
}

namespace {

struct TttMlpProblem {
  index_t B, T, H, K, M;
  Tensor<float, 4> q, k, v, w1, w2;
  Tensor<float, 3> eta;
  Tensor<float, 2> gamma, beta;
  Tensor<float, 1> scale;

  TttMlpProblem(index_t B_, index_t T_, index_t H_, index_t K_, index_t M_, std::uint64_t seed)
      : B(B_), T(T_), H(H_), K(K_), M(M_) {
    q = st::random_tensor<4>({B, T, H, K}, seed);
    k = st::random_tensor<4>({B, T, H, K}, seed + 1);
    v = st::random_tensor<4>({B, T, H, K}, seed + 2);
    eta = st::random_tensor<3>({B, T, H}, seed + 3, 0.f, 1.f / static_cast<float>(K));
    const float a1 = 1.f / std::sqrt(static_cast<float>(K)), a2 = 1.f / std::sqrt(static_cast<float>(M));
    w1 = st::random_tensor<4>({B, H, K, M}, seed + 4, -a1, a1);
    w2 = st::random_tensor<4>({B, H, M, K}, seed + 5, -a2, a2);
    gamma = st::random_tensor<2>({H, K}, seed + 6, 0.5f, 1.5f);
    beta = st::random_tensor<2>({H, K}, seed + 7, -0.2f, 0.2f);
    scale = Tensor<float, 1>({16});
    for (index_t i = 0; i < 16; ++i) scale(i) = 1.f / static_cast<float>(i + 1);
  }

  seqmix::TttMlpInputs inputs(bool with_scale = false) const {
    seqmix::TttMlpInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
    in.ln_weight = gamma.cview(), in.ln_bias = beta.cview();
    in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
    if (with_scale) in.token_scale = scale.cview();
    return in;
  }
  seqmix::TttMlpInputs segment(index_t t0, index_t t1) const {
    seqmix::TttMlpInputs in = inputs();
    in.q = q.cview().slice(1, t0, t1 - t0), in.k = k.cview().slice(1, t0, t1 - t0);
    in.v = v.cview().slice(1, t0, t1 - t0), in.eta = eta.cview().slice(1, t0, t1 - t0);
    return in;
  }
};

struct TttMlpResult {
  Tensor<float, 4> z, w1, w2;
  explicit TttMlpResult(const TttMlpProblem& p)
      : z({p.B, p.T, p.H, p.K}), w1({p.B, p.H, p.K, p.M}), w2({p.B, p.H, p.M, p.K}) {}
  seqmix::TttMlpOutputs outputs() { return {z.view(), w1.view(), w2.view()}; }
};

void ttt_mlp_check_close(const TttMlpResult& a, const TttMlpResult& ref, double tol) {
  st::require_close("z", a.z.cview(), ref.z.cview(), tol);
  st::require_close("final_w1", a.w1.cview(), ref.w1.cview(), tol);
  st::require_close("final_w2", a.w2.cview(), ref.w2.cview(), tol);
}

}  // namespace

TEST_CASE("ttt_mlp: the dual-form prefill equals the per-mini-batch reference", "[ttt]") {
  std::uint64_t seed = 701;
  for (index_t T : {1, 17, 64, 65, 1000})
    for (index_t K : {16, 64})
      for (index_t B : {1, 3}) {
        // The double reference forms two K x 4K gradient matrices per token: the largest shape
        // runs on one batch row and one head only.
        if (T == 1000 && K == 64 && B == 3) continue;
        if (st::small_test_scale() && T == 1000 && B == 3) continue;
        const TttMlpProblem p(B, T, T == 1000 && K == 64 ? 1 : 2, K, 4 * K, seed);
        const bool with_scale = seed % 3 == 0;
        INFO("B=" << B << " T=" << T << " K=" << K << " token_scale=" << with_scale);
        TttMlpResult ref(p), out(p);
        seqmix::reference::ttt_mlp(p.inputs(with_scale), ref.outputs());
        seqmix::ttt_mlp(p.inputs(with_scale), out.outputs(), {}, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
        ttt_mlp_check_close(out, ref, 2e-4);
        ++seed;
      }
}

TEST_CASE("ttt_mlp: odd hidden size and mini-batch sizes", "[ttt]") {
  const TttMlpProblem p(2, 45, 1, 12, 20, 801);
  for (index_t b : {1, 7, 16, 64}) {
    INFO("mini_batch " << b);
    seqmix::TttOptions o;
    o.mini_batch = b;
    TttMlpResult ref(p), out(p);
    seqmix::reference::ttt_mlp(p.inputs(), ref.outputs(), o);
    seqmix::ttt_mlp(p.inputs(), out.outputs(), o, st::two_thread_pool());
    ttt_mlp_check_close(out, ref, 2e-4);
  }
}

TEST_CASE("ttt_mlp: prefill then steps (mini-batches of one) and streaming segments", "[ttt]") {
  const TttMlpProblem p(3, 53, 2, 16, 64, 901);
  const index_t T1 = 21;
  // Reference: b = 16 over the prefill, b = 1 over the rest.
  TttMlpResult ref(p);
  seqmix::TttMlpInputs in = p.segment(0, T1);
  seqmix::reference::ttt_mlp(in, {ref.z.view().slice(1, 0, T1), ref.w1.view(), ref.w2.view()});
  seqmix::TttOptions one;
  one.mini_batch = 1;
  in = p.segment(T1, p.T);
  in.initial_w1 = ref.w1.cview(), in.initial_w2 = ref.w2.cview();
  seqmix::reference::ttt_mlp(in, {ref.z.view().slice(1, T1, p.T - T1), ref.w1.view(), ref.w2.view()}, one);

  Tensor<float, 4> z({p.B, p.T, p.H, p.K});
  Tensor<float, 4> w1 = p.w1, w2 = p.w2;
  in = p.segment(0, T1);
  in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
  seqmix::ttt_mlp(in, {z.view().slice(1, 0, T1), w1.view(), w2.view()});
  for (index_t t = T1; t < p.T; ++t) {
    const seqmix::TttMlpStepInputs si{p.q.cview().select(1, t), p.k.cview().select(1, t), p.v.cview().select(1, t),
                                      p.eta.cview().select(1, t), p.gamma.cview(), p.beta.cview()};
    seqmix::ttt_mlp_step(si, {z.view().select(1, t), w1.view(), w2.view()}, {},
                         t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
  }
  st::require_close("z", z.cview(), ref.z.cview(), 2e-4);
  st::require_close("w1", w1.cview(), ref.w1.cview(), 2e-4);
  st::require_close("w2", w2.cview(), ref.w2.cview(), 2e-4);

  // Streaming: cuts at multiples of 16 equal one call; a cut at 17 equals the reference's calls
  // on the same segments.
  TttMlpResult full(p);
  seqmix::ttt_mlp(p.inputs(), full.outputs());
  for (const std::vector<index_t>& cuts : {std::vector<index_t>{0, 32, 53}, std::vector<index_t>{0, 17, 53}}) {
    const bool aligned = cuts[1] % 16 == 0;
    INFO("cut at " << cuts[1]);
    Tensor<float, 4> zs({p.B, p.T, p.H, p.K}), zr({p.B, p.T, p.H, p.K});
    Tensor<float, 4> a1 = p.w1, a2 = p.w2, r1 = p.w1, r2 = p.w2;
    for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
      in = p.segment(cuts[s], cuts[s + 1]);
      in.initial_w1 = a1.cview(), in.initial_w2 = a2.cview();
      seqmix::ttt_mlp(in, {zs.view().slice(1, cuts[s], cuts[s + 1] - cuts[s]), a1.view(), a2.view()}, {}, st::two_thread_pool());
      in.initial_w1 = r1.cview(), in.initial_w2 = r2.cview();
      seqmix::reference::ttt_mlp(in, {zr.view().slice(1, cuts[s], cuts[s + 1] - cuts[s]), r1.view(), r2.view()});
    }
    st::require_close("z vs reference segments", zs.cview(), zr.cview(), 2e-4);
    st::require_close("w2 vs reference segments", a2.cview(), r2.cview(), 2e-4);
    if (aligned) {
      st::require_close("z vs one call", zs.cview(), full.z.cview(), 1e-5);
      st::require_close("w1 vs one call", a1.cview(), full.w1.cview(), 1e-5);
    }
  }
}

TEST_CASE("ttt_mlp: the inner-loss gradients equal finite differences in double", "[ttt]") {
  const index_t K = 6, M = 10;
  std::uint64_t r = 424242;
  const auto uniform = [&r](double lo, double hi) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * static_cast<double>(r >> 11) / 9007199254740992.0;
  };
  std::vector<double> W1(static_cast<std::size_t>(K * M)), W2(W1), k(static_cast<std::size_t>(K)), v(k), g(k), b(k);
  for (double& x : W1) x = uniform(-0.8, 0.8);
  for (double& x : W2) x = uniform(-0.5, 0.5);
  for (index_t j = 0; j < K; ++j) k[j] = uniform(-1, 1), v[j] = uniform(-1, 1), g[j] = uniform(0.5, 1.5), b[j] = uniform(-0.3, 0.3);
  std::vector<double> g1, g2;
  seqmix::reference::ttt_mlp_inner_loss(W1, W2, k, v, g, b, 1e-6, &g1, &g2);
  const double h = 1e-6;
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<double>& W = layer == 0 ? W1 : W2;
    const std::vector<double>& grad = layer == 0 ? g1 : g2;
    double worst = 0, largest = 0;
    for (std::size_t e = 0; e < W.size(); ++e) {
      const double w = W[e];
      W[e] = w + h;
      const double lp = seqmix::reference::ttt_mlp_inner_loss(W1, W2, k, v, g, b, 1e-6);
      W[e] = w - h;
      const double lm = seqmix::reference::ttt_mlp_inner_loss(W1, W2, k, v, g, b, 1e-6);
      W[e] = w;
      worst = std::max(worst, std::abs((lp - lm) / (2 * h) - grad[e]));
      largest = std::max(largest, std::abs(grad[e]));
    }
    INFO("layer " << layer + 1 << ": max |fd - grad| = " << worst << ", max |grad| = " << largest);
    CHECK(largest > 1e-2);
    CHECK(worst <= 1e-7 * std::max(1.0, largest));
  }
}

TEST_CASE("ttt_mlp: bad shapes are refused before any output", "[ttt]") {
  const TttMlpProblem p(1, 10, 2, 8, 32, 1001);
  const Tensor<float, 4> w2_bad = st::random_tensor<4>({1, 2, 31, 8}, 1), w1_bad = st::random_tensor<4>({1, 2, 7, 32}, 2);
  const auto refused = [&](const seqmix::TttMlpInputs& in, const char* what) {
    INFO(what);
    TttMlpResult out(p);
    out.z.fill(7.f), out.w1.fill(7.f), out.w2.fill(7.f);
    CHECK_THROWS_AS(seqmix::ttt_mlp(in, out.outputs()), seqmix::ShapeError);
    CHECK_THROWS_AS(seqmix::reference::ttt_mlp(in, out.outputs()), seqmix::ShapeError);
    for (index_t e = 0; e < out.z.numel(); ++e) REQUIRE(out.z.data()[e] == 7.f);
    for (index_t e = 0; e < out.w1.numel(); ++e) REQUIRE(out.w1.data()[e] == 7.f);
  };
  seqmix::TttMlpInputs in = p.inputs();
  in.initial_w2 = w2_bad.cview();
  refused(in, "initial_w2 [1,2,31,8] with M = 32");
  in = p.inputs(), in.initial_w1 = w1_bad.cview();
  refused(in, "initial_w1 [1,2,7,32] with K = 8");
  in = p.inputs(), in.initial_w1 = {};
  refused(in, "no initial_w1");
  // The step: w2 whose M differs from w1's, z over w1.
  Tensor<float, 4> w1 = p.w1, w2b({1, 2, 16, 8});
  Tensor<float, 3> zs({1, 2, 8});
  zs.fill(7.f);
  const seqmix::TttMlpStepInputs si{p.q.cview().select(1, 0), p.k.cview().select(1, 0), p.v.cview().select(1, 0),
                                    p.eta.cview().select(1, 0), p.gamma.cview(), p.beta.cview()};
  CHECK_THROWS_AS(seqmix::ttt_mlp_step(si, {zs.view(), w1.view(), w2b.view()}), seqmix::ShapeError);
  for (index_t e = 0; e < zs.numel(); ++e) REQUIRE(zs.data()[e] == 7.f);
  Tensor<float, 4> w2 = p.w2;
  CHECK_THROWS_AS(seqmix::ttt_mlp_step(si, {w1.view().select(3, 0), w1.view(), w2.view()}), seqmix::ShapeError);
}

TEST_CASE("ttt_linear and ttt_mlp: head-major and strided views give the contiguous result", "[ttt]") {
  // q, k, v stored head-major [B,H,T,K] and read as [B,T,H,K] views; z written into every other
  // column of a wider buffer.
  const TttMlpProblem p(2, 37, 3, 8, 16, 1101);
  const auto head_major = [&p](const Tensor<float, 4>& x, Tensor<float, 4>& store) {
    store = Tensor<float, 4>({p.B, p.H, p.T, p.K});
    for (index_t b = 0; b < p.B; ++b)
      for (index_t t = 0; t < p.T; ++t)
        for (index_t h = 0; h < p.H; ++h)
          for (index_t j = 0; j < p.K; ++j) store(b, h, t, j) = x(b, t, h, j);
    return seqmix::ConstView<float, 4>(store.data(), {p.B, p.T, p.H, p.K},
                                       {p.H * p.T * p.K, p.K, p.T * p.K, 1});
  };
  Tensor<float, 4> qs, ks, vs;
  const seqmix::ConstView<float, 4> qv = head_major(p.q, qs), kv = head_major(p.k, ks), vv = head_major(p.v, vs);
  Tensor<float, 4> wide({p.B, p.T, p.H, 2 * p.K});
  const seqmix::TensorView<float, 4> zv(wide.data(), {p.B, p.T, p.H, p.K}, {p.T * p.H * 2 * p.K, p.H * 2 * p.K, 2 * p.K, 2});
  const auto narrow = [&p, &wide]() {
    Tensor<float, 4> z({p.B, p.T, p.H, p.K});
    for (index_t b = 0; b < p.B; ++b)
      for (index_t t = 0; t < p.T; ++t)
        for (index_t h = 0; h < p.H; ++h)
          for (index_t j = 0; j < p.K; ++j) z(b, t, h, j) = wide(b, t, h, 2 * j);
    return z;
  };
  {
    TttMlpResult ref(p);
    seqmix::ttt_mlp(p.inputs(), ref.outputs());
    seqmix::TttMlpInputs in = p.inputs();
    in.q = qv, in.k = kv, in.v = vv;
    seqmix::ttt_mlp(in, {zv}, {}, st::two_thread_pool());
    const Tensor<float, 4> z = narrow();
    st::require_close("ttt_mlp z", z.cview(), ref.z.cview(), 1e-6);
  }
  {
    const TttProblem lp(2, 37, 3, 8, 1101);
    Tensor<float, 4> ql, kl, vl;
    const seqmix::ConstView<float, 4> lq = head_major(lp.q, ql), lk = head_major(lp.k, kl), lv = head_major(lp.v, vl);
    TttResult ref(lp);
    seqmix::ttt_linear(lp.inputs(true), ref.outputs());
    seqmix::TttLinearInputs in = lp.inputs(true);
    in.q = lq, in.k = lk, in.v = lv;
    seqmix::ttt_linear(in, {zv}, {}, st::two_thread_pool());
    const Tensor<float, 4> z = narrow();
    st::require_close("ttt_linear z", z.cview(), ref.z.cview(), 1e-6);
  }
}

// A NaN or inf in token j's key or value reaches the outputs of tokens >= j only
// (docs/reliability.md): the dual form's Zq -= A G once multiplied the zeros above A's diagonal
// by the later token's gradient, making every earlier output of its mini-batch NaN.
TEST_CASE("ttt: a non-finite key or value reaches its own and later tokens only", "[ttt]") {
  const index_t B = 1, T = 48, H = 2, K = 16, M = 32, t_bad = 40;  // t_bad inside the third mini-batch
  const auto q = st::random_tensor<4>({B, T, H, K}, 71), k = st::random_tensor<4>({B, T, H, K}, 72);
  const auto v = st::random_tensor<4>({B, T, H, K}, 73);
  const auto eta = st::random_tensor<3>({B, T, H}, 74, 0.f, 0.5f);
  const auto ln_w = st::random_tensor<2>({H, K}, 75, 0.5f, 1.5f), ln_b = st::random_tensor<2>({H, K}, 76);
  const auto w1 = st::random_tensor<4>({B, H, K, M}, 77, -0.2f, 0.2f), w2 = st::random_tensor<4>({B, H, M, K}, 78, -0.2f, 0.2f);
  const auto run = [&](bool mlp, const Tensor<float, 4>& kk, const Tensor<float, 4>& vv) {
    Tensor<float, 4> z({B, T, H, K});
    if (mlp) {
      seqmix::TttMlpInputs in{q.cview(), kk.cview(), vv.cview(), eta.cview(), ln_w.cview(), ln_b.cview(), {},
                              w1.cview(), w2.cview()};
      seqmix::ttt_mlp(in, seqmix::TttMlpOutputs{z.view()});
    } else {
      seqmix::TttLinearInputs in{q.cview(), kk.cview(), vv.cview(), eta.cview(), ln_w.cview(), ln_b.cview()};
      seqmix::ttt_linear(in, seqmix::TttLinearOutputs{z.view()});
    }
    return z;
  };
  for (const bool mlp : {false, true})
    for (const float bad : {std::nanf(""), std::numeric_limits<float>::infinity()})
      for (const bool in_key : {true, false}) {
        Tensor<float, 4> kk = k, vv = v;
        (in_key ? kk : vv)(0, t_bad, 1, 5) = bad;
        const Tensor<float, 4> clean = run(mlp, k, v), hit = run(mlp, kk, vv);
        for (index_t t = 0; t < T; ++t)
          for (index_t h = 0; h < H; ++h)
            for (index_t c = 0; c < K; ++c) {
              if (h == 1 && t >= t_bad) continue;  // reached
              // Finite and equal up to rounding (the bad mini-batch's product runs on a copy with
              // the bad rows zeroed; Eigen's kernels may round differently on other buffers).
              REQUIRE(std::isfinite(hit(0, t, h, c)));
              REQUIRE(std::abs(hit(0, t, h, c) - clean(0, t, h, c)) <= 1e-5f * (1.f + std::abs(clean(0, t, h, c))));
            }
      }
}
