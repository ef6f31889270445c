// ttt_linear with the inner bias (options.inner_bias = trained, f(x) = x W + b as the TTT
// authors' TTT-Linear): the dual-form prefill against the per-mini-batch reference over
// T in {1, 17, 64, 65, 1000}, K in {16, 64}, B in {1, 3}, with and without initial weights, bias
// and position scales; the bias gradient against finite differences of the inner loss (double);
// prefill then steps (slotted, fresh and padding rows), packed serving, reverse; bad arguments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// One ttt_linear problem with an inner bias: tokens [B,T,H,K], initial W and b per row.
struct BiasProblem {
  index_t B, T, H, K;
  Tensor<float, 4> q, k, v, w0;
  Tensor<float, 3> eta, b0;
  Tensor<float, 2> gamma, beta;
  Tensor<float, 1> scale;

  BiasProblem(index_t B_, index_t T_, index_t H_, index_t K_, std::uint64_t seed) : B(B_), T(T_), H(H_), K(K_) {
    q = st::random_tensor<4>({B, T, H, K}, seed);
    k = st::random_tensor<4>({B, T, H, K}, seed + 1);
    v = st::random_tensor<4>({B, T, H, K}, seed + 2);
    eta = st::random_tensor<3>({B, T, H}, seed + 3, 0.f, 1.f / static_cast<float>(K));
    const float a = 1.f / std::sqrt(static_cast<float>(K));
    w0 = st::random_tensor<4>({B, H, K, K}, seed + 4, -a, a);
    b0 = st::random_tensor<3>({B, H, K}, seed + 5, -0.5f, 0.5f);
    gamma = st::random_tensor<2>({H, K}, seed + 6, 0.5f, 1.5f);
    beta = st::random_tensor<2>({H, K}, seed + 7, -0.2f, 0.2f);
    scale = Tensor<float, 1>({16});
    for (index_t i = 0; i < 16; ++i) scale(i) = 1.f / static_cast<float>(i + 1);
  }

  seqmix::TttLinearInputs inputs(bool with_w, bool with_b, bool with_scale = false) const {
    seqmix::TttLinearInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
    in.ln_weight = gamma.cview(), in.ln_bias = beta.cview();
    if (with_w) in.initial_w = w0.cview();
    if (with_b) in.initial_b = b0.cview();
    if (with_scale) in.token_scale = scale.cview();
    return in;
  }
  seqmix::TttLinearStepInputs step(index_t t) const {
    return {q.cview().select(1, t), k.cview().select(1, t), v.cview().select(1, t), eta.cview().select(1, t),
            gamma.cview(), beta.cview()};
  }
};

struct BiasResult {
  Tensor<float, 4> z, w;
  Tensor<float, 3> b;
  explicit BiasResult(const BiasProblem& p) : z({p.B, p.T, p.H, p.K}), w({p.B, p.H, p.K, p.K}), b({p.B, p.H, p.K}) {}
  seqmix::TttLinearOutputs outputs() { return {z.view(), w.view(), b.view()}; }
};

seqmix::TttOptions biased(index_t mini_batch = 16) {
  seqmix::TttOptions o;
  o.inner_bias = seqmix::TttInnerBias::trained;
  o.mini_batch = mini_batch;
  return o;
}

void bias_check_close(const BiasResult& a, const BiasResult& ref, double tol) {
  st::require_close("z", a.z.cview(), ref.z.cview(), tol);
  st::require_close("final_w", a.w.cview(), ref.w.cview(), tol);
  st::require_close("final_b", a.b.cview(), ref.b.cview(), tol);
}

}  // namespace

TEST_CASE("ttt_linear inner bias: the dual-form prefill equals the per-mini-batch reference", "[ttt]") {
  std::uint64_t seed = 21;
  for (index_t T : {1, 17, 64, 65, 1000})
    for (index_t K : {16, 64})
      for (index_t B : {1, 3}) {
        if (st::small_test_scale() && T == 1000 && B == 3) continue;
        const BiasProblem p(B, T, 2, K, seed);
        const bool with_w = seed % 2 == 0, with_b = seed % 4 != 1, with_scale = seed % 3 == 0;
        INFO("B=" << B << " T=" << T << " K=" << K << " initial_w=" << with_w << " initial_b=" << with_b
                  << " token_scale=" << with_scale << " seed=" << seed);
        BiasResult ref(p), out(p);
        seqmix::reference::ttt_linear(p.inputs(with_w, with_b, with_scale), ref.outputs(), biased());
        seqmix::ttt_linear(p.inputs(with_w, with_b, with_scale), out.outputs(), biased(),
                           seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
        bias_check_close(out, ref, 2e-4);
        ++seed;
      }
}

TEST_CASE("ttt_linear inner bias: it is trained and changes the outputs", "[ttt]") {
  const BiasProblem p(1, 40, 2, 16, 61);
  BiasResult with(p), without(p);
  seqmix::ttt_linear(p.inputs(true, false), with.outputs(), biased());
  seqmix::ttt_linear(p.inputs(true, false), {without.z.view(), without.w.view()});
  // Started from zeros, the bias moved (its gradient is dl/dz), and the outputs and W differ.
  double moved = 0, dz = 0, dw = 0;
  for (index_t h = 0; h < p.H; ++h)
    for (index_t j = 0; j < p.K; ++j) moved = std::max(moved, double(std::abs(with.b(0, h, j))));
  for (index_t t = 16; t < p.T; ++t) dz = std::max(dz, double(std::abs(with.z(0, t, 0, 3) - without.z(0, t, 0, 3))));
  for (index_t j = 0; j < p.K; ++j) dw = std::max(dw, double(std::abs(with.w(0, 0, 2, j) - without.w(0, 0, 2, j))));
  CHECK(moved > 1e-3);
  CHECK(dz > 1e-4);
  CHECK(dw > 1e-5);
  // Mini-batch sizes 1, 5 and 64 (larger than T) against the reference.
  for (index_t mb : {1, 5, 64}) {
    INFO("mini_batch " << mb);
    BiasResult ref(p), out(p);
    seqmix::reference::ttt_linear(p.inputs(true, true), ref.outputs(), biased(mb));
    seqmix::ttt_linear(p.inputs(true, true), out.outputs(), biased(mb), st::two_thread_pool());
    bias_check_close(out, ref, 2e-4);
  }
}

TEST_CASE("ttt_linear inner bias: the gradients equal finite differences of the inner loss in double", "[ttt]") {
  for (index_t K : {5, 16}) {
    std::uint64_t r = 7654321 + static_cast<std::uint64_t>(K);
    const auto uniform = [&r](double lo, double hi) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      return lo + (hi - lo) * static_cast<double>(r >> 11) / 9007199254740992.0;
    };
    std::vector<double> W(static_cast<std::size_t>(K * K)), bias(static_cast<std::size_t>(K)), k(bias), v(bias), g(bias),
        be(bias);
    for (double& x : W) x = uniform(-0.5, 0.5);
    for (index_t j = 0; j < K; ++j) {
      bias[j] = uniform(-0.5, 0.5), k[j] = uniform(-1, 1), v[j] = uniform(-1, 1);
      g[j] = uniform(0.5, 1.5), be[j] = uniform(-0.3, 0.3);
    }
    std::vector<double> grad_w, grad_b;
    seqmix::reference::ttt_linear_inner_loss(W, bias, k, v, g, be, 1e-6, &grad_w, &grad_b);
    const auto loss = [&](const std::vector<double>& w, const std::vector<double>& b) {
      return seqmix::reference::ttt_linear_inner_loss(w, b, k, v, g, be, 1e-6, nullptr, nullptr);
    };
    const double h = 1e-6;
    double worst = 0, largest = 0;
    for (std::size_t e = 0; e < bias.size(); ++e) {
      std::vector<double> bp = bias, bm = bias;
      bp[e] += h, bm[e] -= h;
      const double fd = (loss(W, bp) - loss(W, bm)) / (2 * h);
      worst = std::max(worst, std::abs(fd - grad_b[e]));
      largest = std::max(largest, std::abs(grad_b[e]));
    }
    for (std::size_t e = 0; e < W.size(); e += 3) {  // dl/dW at the biased point too
      std::vector<double> wp = W, wm = W;
      wp[e] += h, wm[e] -= h;
      worst = std::max(worst, std::abs((loss(wp, bias) - loss(wm, bias)) / (2 * h) - grad_w[e]));
    }
    INFO("K=" << K << " max |fd - grad| = " << worst << ", max |dl/db| = " << largest);
    CHECK(largest > 1e-2);
    CHECK(worst <= 1e-7 * std::max(1.0, largest));
    // The bias-free overload is the biased one at b = 0.
    const std::vector<double> zero(bias.size(), 0.0);
    CHECK(seqmix::reference::ttt_linear_inner_loss(W, k, v, g, be, 1e-6) == loss(W, zero));
  }
}

TEST_CASE("ttt_linear inner bias: prefill then steps equals the reference, slotted steps too", "[ttt]") {
  const BiasProblem p(3, 50, 2, 16, 71);
  const index_t T1 = 37;  // b = 16 over 37 tokens, then b = 1 (the steps) over the rest
  BiasResult ref(p);
  ref.w = p.w0, ref.b = p.b0;
  seqmix::TttLinearInputs in = p.inputs(false, false);
  const auto segment = [&](seqmix::TttLinearInputs& s, index_t t0, index_t t1) {
    s.q = p.q.cview().slice(1, t0, t1 - t0), s.k = p.k.cview().slice(1, t0, t1 - t0);
    s.v = p.v.cview().slice(1, t0, t1 - t0), s.eta = p.eta.cview().slice(1, t0, t1 - t0);
  };
  segment(in, 0, T1);
  in.initial_w = ref.w.cview(), in.initial_b = ref.b.cview();
  seqmix::reference::ttt_linear(in, {ref.z.view().slice(1, 0, T1), ref.w.view(), ref.b.view()}, biased());
  segment(in, T1, p.T);
  seqmix::reference::ttt_linear(in, {ref.z.view().slice(1, T1, p.T - T1), ref.w.view(), ref.b.view()}, biased(1));

  // Dense: prefill, then steps on the same state.
  Tensor<float, 4> z({p.B, p.T, p.H, p.K});
  Tensor<float, 4> w = p.w0;
  Tensor<float, 3> b = p.b0;
  segment(in, 0, T1);
  in.initial_w = w.cview(), in.initial_b = b.cview();
  seqmix::ttt_linear(in, {z.view().slice(1, 0, T1), w.view(), b.view()}, biased());
  for (index_t t = T1; t < p.T; ++t)
    seqmix::ttt_linear_step(p.step(t), {z.view().select(1, t), w.view(), b.view()}, biased(),
                            t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
  st::require_close("z", z.cview(), ref.z.cview(), 2e-4);
  st::require_close("w", w.cview(), ref.w.cview(), 2e-4);
  st::require_close("b", b.cview(), ref.b.cview(), 2e-4);

  // Slotted steps: rows 0, 1, 2 in pool slots 4, 1, 2 of 5 (slot 2 fresh: W = 0, b = 0), plus a
  // padding row whose slot stays untouched.
  const std::vector<std::int32_t> slots = {4, 1, 2, -1};
  const std::vector<std::uint8_t> init = {1, 1, 0, 1};
  Tensor<float, 4> wp = st::random_tensor<4>({5, p.H, p.K, p.K}, 81, -0.2f, 0.2f);
  Tensor<float, 3> bp = st::random_tensor<3>({5, p.H, p.K}, 82);
  const Tensor<float, 4> wp0 = wp;
  const Tensor<float, 3> bp0 = bp;
  const index_t t = 5;
  Tensor<float, 3> q4({4, p.H, p.K}), k4(q4), v4(q4), zs({4, p.H, p.K});
  Tensor<float, 2> e4({4, p.H});
  for (index_t r = 0; r < 4; ++r)
    for (index_t h = 0; h < p.H; ++h) {
      e4(r, h) = p.eta(r % 3, t, h);
      for (index_t j = 0; j < p.K; ++j)
        q4(r, h, j) = p.q(r % 3, t, h, j), k4(r, h, j) = p.k(r % 3, t, h, j), v4(r, h, j) = p.v(r % 3, t, h, j);
    }
  seqmix::TttLinearStepInputs si{q4.cview(), k4.cview(), v4.cview(), e4.cview(), p.gamma.cview(), p.beta.cview()};
  si.batch.state_indices = slots, si.batch.has_initial_state = init;
  seqmix::ttt_linear_step(si, {zs.view(), wp.view(), bp.view()}, biased(), st::two_thread_pool());
  for (index_t r = 0; r < 3; ++r) {
    INFO("row " << r << " slot " << slots[r]);
    const index_t s = slots[r];
    Tensor<float, 3> w1({1, p.H, p.K}), z1({1, p.H, p.K});
    Tensor<float, 4> wr({1, p.H, p.K, p.K});
    Tensor<float, 3> br({1, p.H, p.K});
    for (index_t h = 0; h < p.H; ++h)
      for (index_t i = 0; i < p.K; ++i) {
        br(0, h, i) = init[r] ? bp0(s, h, i) : 0.f;
        for (index_t j = 0; j < p.K; ++j) wr(0, h, i, j) = init[r] ? wp0(s, h, i, j) : 0.f;
      }
    const seqmix::TttLinearStepInputs one{q4.cview().slice(0, r, 1), k4.cview().slice(0, r, 1), v4.cview().slice(0, r, 1),
                                          e4.cview().slice(0, r, 1), p.gamma.cview(), p.beta.cview()};
    seqmix::ttt_linear_step(one, {z1.view(), wr.view(), br.view()}, biased());
    st::require_close("z", zs.cview().slice(0, r, 1), z1.cview(), 1e-6);
    st::require_close("w", wp.cview().slice(0, s, 1), wr.cview(), 1e-6);
    st::require_close("b", bp.cview().slice(0, s, 1), br.cview(), 1e-6);
  }
  st::require_close("untouched slot w", wp.cview().slice(0, 0, 1), wp0.cview().slice(0, 0, 1), 0.0);
  st::require_close("untouched slot b", bp.cview().slice(0, 3, 1), bp0.cview().slice(0, 3, 1), 0.0);
}

TEST_CASE("ttt_linear inner bias: packed serving and reverse equal their plain calls", "[ttt]") {
  // Three sequences of 21, 16 and 30 tokens packed into one row, weights and biases in pool slots
  // 2, 0, 3 of 4 (slot 0 fresh).
  const index_t H = 2, K = 16, total = 67;
  const BiasProblem p(1, total, H, K, 91);
  const std::vector<std::int64_t> cu = {0, 21, 37, 67};
  const std::vector<std::int32_t> slots = {2, 0, 3};
  const std::vector<std::uint8_t> init = {1, 0, 1};
  const Tensor<float, 4> wpool0 = st::random_tensor<4>({4, H, K, K}, 92, -0.2f, 0.2f);
  const Tensor<float, 3> bpool0 = st::random_tensor<3>({4, H, K}, 93);
  Tensor<float, 4> wpool = wpool0, z({1, total, H, K});
  Tensor<float, 3> bpool = bpool0;
  seqmix::TttLinearInputs in = p.inputs(false, false);
  in.initial_w = wpool.cview(), in.initial_b = bpool.cview();
  in.batch.cu_seqlens = cu, in.batch.state_indices = slots, in.batch.has_initial_state = init;
  seqmix::ttt_linear(in, {z.view(), wpool.view(), bpool.view()}, biased(), st::two_thread_pool());
  for (std::size_t n = 0; n < slots.size(); ++n) {
    INFO("sequence " << n);
    const index_t t0 = cu[n], len = cu[n + 1] - cu[n], s = slots[n];
    seqmix::TttLinearInputs one = p.inputs(false, false);
    one.q = p.q.cview().slice(1, t0, len), one.k = p.k.cview().slice(1, t0, len);
    one.v = p.v.cview().slice(1, t0, len), one.eta = p.eta.cview().slice(1, t0, len);
    if (init[n]) one.initial_w = wpool0.cview().slice(0, s, 1), one.initial_b = bpool0.cview().slice(0, s, 1);
    Tensor<float, 4> z1({1, len, H, K}), w1({1, H, K, K});
    Tensor<float, 3> b1({1, H, K});
    seqmix::reference::ttt_linear(one, {z1.view(), w1.view(), b1.view()}, biased());
    st::require_close("z", z.cview().slice(1, t0, len), z1.cview(), 2e-4);
    st::require_close("w", wpool.cview().slice(0, s, 1), w1.cview(), 2e-4);
    st::require_close("b", bpool.cview().slice(0, s, 1), b1.cview(), 2e-4);
  }
  st::require_close("untouched slot", bpool.cview().slice(0, 1, 1), bpool0.cview().slice(0, 1, 1), 0.0);

  // Reverse: the fast form against the reference, both reversed, with final biases.
  const BiasProblem r(2, 45, 2, 16, 95);
  seqmix::TttOptions o = biased();
  o.reverse = true;
  BiasResult ref(r), out(r);
  seqmix::reference::ttt_linear(r.inputs(true, true), ref.outputs(), o);
  seqmix::ttt_linear(r.inputs(true, true), out.outputs(), o, st::two_thread_pool());
  bias_check_close(out, ref, 2e-4);
}

TEST_CASE("ttt_linear inner bias: bad arguments are refused before any output", "[ttt]") {
  const BiasProblem p(2, 8, 2, 16, 99);
  Tensor<float, 4> z({p.B, p.T, p.H, p.K}), w({p.B, p.H, p.K, p.K});
  Tensor<float, 3> b({p.B, p.H, p.K}), b_bad({p.B, p.H, p.K + 1}), b_rows({p.B + 1, p.H, p.K});
  z.fill(7.f);
  const auto untouched = [&] { CHECK(z(0, 0, 0, 0) == 7.f); };
  // A bias state without the option, and the option with a wrong bias shape.
  st::require_shape_error("initial_b", [&] { seqmix::ttt_linear(p.inputs(true, true), {z.view(), w.view()}); });
  st::require_shape_error("final_b", [&] { seqmix::ttt_linear(p.inputs(true, false), {z.view(), w.view(), b.view()}); });
  st::require_shape_error("final_b", [&] { seqmix::ttt_linear(p.inputs(true, true), {z.view(), w.view(), b_bad.view()}, biased()); });
  st::require_shape_error("final_b", [&] { seqmix::ttt_linear(p.inputs(true, true), {z.view(), w.view(), b_rows.view()}, biased()); });
  seqmix::TttLinearInputs in = p.inputs(true, false);
  in.initial_b = b_bad.cview();
  st::require_shape_error("initial_b", [&] { seqmix::reference::ttt_linear(in, {z.view(), w.view()}, biased()); });
  untouched();
  // Steps: b required with the option, refused without it.
  Tensor<float, 3> zs({p.B, p.H, p.K});
  zs.fill(7.f);
  st::require_shape_error("b", [&] { seqmix::ttt_linear_step(p.step(0), {zs.view(), w.view()}, biased()); });
  st::require_shape_error("b", [&] { seqmix::ttt_linear_step(p.step(0), {zs.view(), w.view(), b.view()}); });
  st::require_shape_error("b", [&] { seqmix::ttt_linear_step(p.step(0), {zs.view(), w.view(), b_bad.view()}, biased()); });
  CHECK(zs(0, 0, 0) == 7.f);
  untouched();
}
