// ttt_mlp with the inner biases (options.inner_bias = trained, f(x) = gelu(x W1 + b1) W2 + b2 as
// the TTT authors' TTT-MLP): the dual-form prefill against the per-mini-batch reference over
// T in {1, 17, 64, 65}, K in {16, 64}, mini-batch {1, 16}, B in {1, 3} with non-zero initial
// biases; the bias gradients against central finite differences of the inner loss (double);
// prefill then steps (slotted and padding rows), packed serving, reverse; bad arguments.
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

// One ttt_mlp problem with inner biases: tokens [B,T,H,K], initial W1, W2, b1, b2 per row.
struct MlpBiasProblem {
  index_t B, T, H, K, M;
  Tensor<float, 4> q, k, v, w1, w2;
  Tensor<float, 3> eta, b1, b2;
  Tensor<float, 2> gamma, beta;
  Tensor<float, 1> scale;

  MlpBiasProblem(index_t B_, index_t T_, index_t H_, index_t K_, index_t M_, std::uint64_t seed)
      : B(B_), T(T_), H(H_), K(K_), M(M_) {
    q = st::random_tensor<4>({B, T, H, K}, seed);
    k = st::random_tensor<4>({B, T, H, K}, seed + 1);
    v = st::random_tensor<4>({B, T, H, K}, seed + 2);
    eta = st::random_tensor<3>({B, T, H}, seed + 3, 0.f, 1.f / static_cast<float>(K));
    const float a1 = 1.f / std::sqrt(static_cast<float>(K)), a2 = 1.f / std::sqrt(static_cast<float>(M));
    w1 = st::random_tensor<4>({B, H, K, M}, seed + 4, -a1, a1);
    w2 = st::random_tensor<4>({B, H, M, K}, seed + 5, -a2, a2);
    b1 = st::random_tensor<3>({B, H, M}, seed + 6, -0.5f, 0.5f);
    b2 = st::random_tensor<3>({B, H, K}, seed + 7, -0.5f, 0.5f);
    gamma = st::random_tensor<2>({H, K}, seed + 8, 0.5f, 1.5f);
    beta = st::random_tensor<2>({H, K}, seed + 9, -0.2f, 0.2f);
    scale = Tensor<float, 1>({16});
    for (index_t i = 0; i < 16; ++i) scale(i) = 1.f / static_cast<float>(i + 1);
  }

  seqmix::TttMlpInputs inputs(bool with_b, bool with_scale = false) const {
    seqmix::TttMlpInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
    in.ln_weight = gamma.cview(), in.ln_bias = beta.cview();
    in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
    if (with_b) in.initial_b1 = b1.cview(), in.initial_b2 = b2.cview();
    if (with_scale) in.token_scale = scale.cview();
    return in;
  }
  seqmix::TttMlpInputs segment(seqmix::TttMlpInputs in, index_t t0, index_t t1) const {
    in.q = q.cview().slice(1, t0, t1 - t0), in.k = k.cview().slice(1, t0, t1 - t0);
    in.v = v.cview().slice(1, t0, t1 - t0), in.eta = eta.cview().slice(1, t0, t1 - t0);
    return in;
  }
  seqmix::TttMlpStepInputs step(index_t t) const {
    return {q.cview().select(1, t), k.cview().select(1, t), v.cview().select(1, t), eta.cview().select(1, t),
            gamma.cview(), beta.cview()};
  }
};

struct MlpBiasResult {
  Tensor<float, 4> z, w1, w2;
  Tensor<float, 3> b1, b2;
  explicit MlpBiasResult(const MlpBiasProblem& p)
      : z({p.B, p.T, p.H, p.K}), w1({p.B, p.H, p.K, p.M}), w2({p.B, p.H, p.M, p.K}), b1({p.B, p.H, p.M}),
        b2({p.B, p.H, p.K}) {}
  seqmix::TttMlpOutputs outputs() { return {z.view(), w1.view(), w2.view(), b1.view(), b2.view()}; }
};

seqmix::TttOptions mlp_biased(index_t mini_batch = 16) {
  seqmix::TttOptions o;
  o.inner_bias = seqmix::TttInnerBias::trained;
  o.mini_batch = mini_batch;
  return o;
}

void mlp_bias_check_close(const MlpBiasResult& a, const MlpBiasResult& ref, double tol) {
  st::require_close("z", a.z.cview(), ref.z.cview(), tol);
  st::require_close("final_w1", a.w1.cview(), ref.w1.cview(), tol);
  st::require_close("final_w2", a.w2.cview(), ref.w2.cview(), tol);
  st::require_close("final_b1", a.b1.cview(), ref.b1.cview(), tol);
  st::require_close("final_b2", a.b2.cview(), ref.b2.cview(), tol);
}

// Row `slot` of a contiguous pool [P,...] as a tensor [1,...] of its own.
template <std::size_t R>
Tensor<float, R> slot_of(const Tensor<float, R>& pool, index_t slot) {
  auto shape = pool.shape();
  shape[0] = 1;
  Tensor<float, R> row(shape);
  seqmix::copy(pool.cview().slice(0, slot, 1), row.view());
  return row;
}

}  // namespace

TEST_CASE("ttt_mlp inner biases: the dual-form prefill equals the per-mini-batch reference", "[ttt]") {
  std::uint64_t seed = 31;
  for (index_t T : {1, 17, 64, 65})
    for (index_t K : {16, 64})
      for (index_t mb : {1, 16})
        for (index_t B : {1, 3}) {
          if (st::small_test_scale() && K == 64 && B == 3) continue;
          const MlpBiasProblem p(B, T, 2, K, 4 * K, seed);
          const bool with_b = seed % 4 != 1, with_scale = mb == 16 && seed % 3 == 0;
          INFO("B=" << B << " T=" << T << " K=" << K << " mini_batch=" << mb << " initial_b=" << with_b
                    << " token_scale=" << with_scale << " seed=" << seed);
          MlpBiasResult ref(p), out(p);
          seqmix::reference::ttt_mlp(p.inputs(with_b, with_scale), ref.outputs(), mlp_biased(mb));
          seqmix::ttt_mlp(p.inputs(with_b, with_scale), out.outputs(), mlp_biased(mb),
                          seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
          mlp_bias_check_close(out, ref, 2e-4);
          ++seed;
        }
}

TEST_CASE("ttt_mlp inner biases: they are trained and change the outputs", "[ttt]") {
  const MlpBiasProblem p(1, 40, 2, 16, 48, 161);
  MlpBiasResult with(p), without(p);
  seqmix::ttt_mlp(p.inputs(false), with.outputs(), mlp_biased());
  seqmix::ttt_mlp(p.inputs(false), {without.z.view(), without.w1.view(), without.w2.view()});
  // Started from zeros, both biases moved, and the outputs differ from the bias-free layer's
  // from the second mini-batch on.
  double moved1 = 0, moved2 = 0, dz = 0;
  for (index_t h = 0; h < p.H; ++h) {
    for (index_t m = 0; m < p.M; ++m) moved1 = std::max(moved1, double(std::abs(with.b1(0, h, m))));
    for (index_t j = 0; j < p.K; ++j) moved2 = std::max(moved2, double(std::abs(with.b2(0, h, j))));
  }
  for (index_t t = 16; t < p.T; ++t) dz = std::max(dz, double(std::abs(with.z(0, t, 1, 3) - without.z(0, t, 1, 3))));
  CHECK(moved1 > 1e-5);
  CHECK(moved2 > 1e-3);
  CHECK(dz > 1e-4);
  // An odd hidden size, mini-batches of 5 and 64 (larger than T), and the biases as given as
  // final views written in place.
  const MlpBiasProblem o(2, 45, 1, 12, 20, 171);
  for (index_t mb : {5, 64}) {
    INFO("mini_batch " << mb);
    MlpBiasResult ref(o), out(o);
    out.b1 = o.b1, out.b2 = o.b2;
    seqmix::TttMlpInputs in = o.inputs(false);
    in.initial_b1 = out.b1.cview(), in.initial_b2 = out.b2.cview();
    seqmix::reference::ttt_mlp(o.inputs(true), ref.outputs(), mlp_biased(mb));
    seqmix::ttt_mlp(in, out.outputs(), mlp_biased(mb), st::two_thread_pool());
    mlp_bias_check_close(out, ref, 2e-4);
  }
}

TEST_CASE("ttt_mlp inner biases: the gradients equal finite differences of the inner loss in double", "[ttt]") {
  for (index_t K : {5, 16}) {
    const index_t M = 3 * K;
    std::uint64_t r = 9182736 + static_cast<std::uint64_t>(K);
    const auto uniform = [&r](double lo, double hi) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      return lo + (hi - lo) * static_cast<double>(r >> 11) / 9007199254740992.0;
    };
    std::vector<double> W1(static_cast<std::size_t>(K * M)), W2(W1), b1(static_cast<std::size_t>(M));
    std::vector<double> b2(static_cast<std::size_t>(K)), k(b2), v(b2), g(b2), be(b2);
    for (double& x : W1) x = uniform(-1, 1) / std::sqrt(double(K));
    for (double& x : W2) x = uniform(-1, 1) / std::sqrt(double(M));
    for (double& x : b1) x = uniform(-0.5, 0.5);
    for (index_t j = 0; j < K; ++j) {
      b2[j] = uniform(-0.5, 0.5), k[j] = uniform(-1, 1), v[j] = uniform(-1, 1);
      g[j] = uniform(0.5, 1.5), be[j] = uniform(-0.3, 0.3);
    }
    seqmix::reference::TttMlpInnerGrads grads;
    seqmix::reference::ttt_mlp_inner_loss(W1, b1, W2, b2, k, v, g, be, 1e-6, &grads);
    // Central differences of one parameter vector (the others held), every `stride`-th entry.
    const double h = 1e-6;
    const auto fd_error = [&](std::vector<double>& x, const std::vector<double>& grad, std::size_t stride,
                              double* largest) {
      double worst = 0;
      for (std::size_t e = 0; e < x.size(); e += stride) {
        const double x0 = x[e];
        x[e] = x0 + h;
        const double lp = seqmix::reference::ttt_mlp_inner_loss(W1, b1, W2, b2, k, v, g, be, 1e-6, nullptr);
        x[e] = x0 - h;
        const double lm = seqmix::reference::ttt_mlp_inner_loss(W1, b1, W2, b2, k, v, g, be, 1e-6, nullptr);
        x[e] = x0;
        worst = std::max(worst, std::abs((lp - lm) / (2 * h) - grad[e]));
        *largest = std::max(*largest, std::abs(grad[e]));
      }
      return worst;
    };
    double large_b1 = 0, large_b2 = 0, large_w = 0;
    const double e_b1 = fd_error(b1, grads.b1, 1, &large_b1), e_b2 = fd_error(b2, grads.b2, 1, &large_b2);
    const double e_w1 = fd_error(W1, grads.w1, 7, &large_w), e_w2 = fd_error(W2, grads.w2, 7, &large_w);
    INFO("K=" << K << " M=" << M << " max |fd - grad|: b1 " << e_b1 << " b2 " << e_b2 << " W1 " << e_w1 << " W2 "
              << e_w2 << "; max |dl/db1| " << large_b1 << " |dl/db2| " << large_b2);
    CHECK(large_b1 > 1e-3);
    CHECK(large_b2 > 1e-2);
    const double tol = 1e-7 * std::max(1.0, std::max(large_b2, large_w));
    CHECK(e_b1 <= tol);
    CHECK(e_b2 <= tol);
    CHECK(e_w1 <= tol);
    CHECK(e_w2 <= tol);
    // The bias-free overload is the biased one at b1 = 0, b2 = 0.
    const std::vector<double> zero1(b1.size(), 0.0), zero2(b2.size(), 0.0);
    CHECK(seqmix::reference::ttt_mlp_inner_loss(W1, W2, k, v, g, be, 1e-6) ==
          seqmix::reference::ttt_mlp_inner_loss(W1, zero1, W2, zero2, k, v, g, be, 1e-6, nullptr));
  }
}

TEST_CASE("ttt_mlp inner biases: prefill then steps equals the reference, slotted steps too", "[ttt]") {
  const MlpBiasProblem p(3, 50, 2, 16, 64, 181);
  const index_t T1 = 37;  // b = 16 over 37 tokens, then b = 1 (the steps) over the rest
  MlpBiasResult ref(p);
  ref.w1 = p.w1, ref.w2 = p.w2, ref.b1 = p.b1, ref.b2 = p.b2;
  seqmix::TttMlpInputs in = p.inputs(false);
  in.initial_w1 = ref.w1.cview(), in.initial_w2 = ref.w2.cview(), in.initial_b1 = ref.b1.cview(), in.initial_b2 = ref.b2.cview();
  seqmix::reference::ttt_mlp(p.segment(in, 0, T1), {ref.z.view().slice(1, 0, T1), ref.w1.view(), ref.w2.view(), ref.b1.view(), ref.b2.view()},
                             mlp_biased());
  seqmix::reference::ttt_mlp(p.segment(in, T1, p.T),
                             {ref.z.view().slice(1, T1, p.T - T1), ref.w1.view(), ref.w2.view(), ref.b1.view(), ref.b2.view()},
                             mlp_biased(1));

  // Dense: prefill, then steps on the same state.
  MlpBiasResult got(p);
  got.w1 = p.w1, got.w2 = p.w2, got.b1 = p.b1, got.b2 = p.b2;
  in.initial_w1 = got.w1.cview(), in.initial_w2 = got.w2.cview(), in.initial_b1 = got.b1.cview(), in.initial_b2 = got.b2.cview();
  seqmix::ttt_mlp(p.segment(in, 0, T1), {got.z.view().slice(1, 0, T1), got.w1.view(), got.w2.view(), got.b1.view(), got.b2.view()},
                  mlp_biased());
  for (index_t t = T1; t < p.T; ++t)
    seqmix::ttt_mlp_step(p.step(t), {got.z.view().select(1, t), got.w1.view(), got.w2.view(), got.b1.view(), got.b2.view()},
                         mlp_biased(), t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
  mlp_bias_check_close(got, ref, 2e-4);

  // Slotted steps: rows 0, 1, 2 in pool slots 4, 1, 2 of 5, plus a padding row whose slot stays
  // untouched; each row against a plain step on its own copy.
  const std::vector<std::int32_t> slots = {4, 1, 2, -1};
  const index_t H = p.H, K = p.K, M = p.M, t = 5;
  Tensor<float, 4> w1p = st::random_tensor<4>({5, H, K, M}, 191, -0.25f, 0.25f);
  Tensor<float, 4> w2p = st::random_tensor<4>({5, H, M, K}, 192, -0.125f, 0.125f);
  Tensor<float, 3> b1p = st::random_tensor<3>({5, H, M}, 193, -0.5f, 0.5f), b2p = st::random_tensor<3>({5, H, K}, 194);
  const Tensor<float, 4> w1p0 = w1p, w2p0 = w2p;
  const Tensor<float, 3> b1p0 = b1p, b2p0 = b2p;
  Tensor<float, 3> q4({4, H, K}), k4(q4), v4(q4), zs({4, H, K});
  Tensor<float, 2> e4({4, H});
  for (index_t r = 0; r < 4; ++r)
    for (index_t h = 0; h < H; ++h) {
      e4(r, h) = p.eta(r % 3, t, h);
      for (index_t j = 0; j < K; ++j)
        q4(r, h, j) = p.q(r % 3, t, h, j), k4(r, h, j) = p.k(r % 3, t, h, j), v4(r, h, j) = p.v(r % 3, t, h, j);
    }
  seqmix::TttMlpStepInputs si{q4.cview(), k4.cview(), v4.cview(), e4.cview(), p.gamma.cview(), p.beta.cview()};
  si.batch.state_indices = slots;
  seqmix::ttt_mlp_step(si, {zs.view(), w1p.view(), w2p.view(), b1p.view(), b2p.view()}, mlp_biased(), st::two_thread_pool());
  for (index_t r = 0; r < 3; ++r) {
    INFO("row " << r << " slot " << slots[r]);
    const index_t s = slots[r];
    Tensor<float, 4> w1r = slot_of(w1p0, s), w2r = slot_of(w2p0, s);
    Tensor<float, 3> b1r = slot_of(b1p0, s), b2r = slot_of(b2p0, s), z1({1, p.H, p.K});
    const seqmix::TttMlpStepInputs one{q4.cview().slice(0, r, 1), k4.cview().slice(0, r, 1), v4.cview().slice(0, r, 1),
                                       e4.cview().slice(0, r, 1), p.gamma.cview(), p.beta.cview()};
    seqmix::ttt_mlp_step(one, {z1.view(), w1r.view(), w2r.view(), b1r.view(), b2r.view()}, mlp_biased());
    st::require_close("z", zs.cview().slice(0, r, 1), z1.cview(), 1e-6);
    st::require_close("w1", w1p.cview().slice(0, s, 1), w1r.cview(), 1e-6);
    st::require_close("b1", b1p.cview().slice(0, s, 1), b1r.cview(), 1e-6);
    st::require_close("b2", b2p.cview().slice(0, s, 1), b2r.cview(), 1e-6);
  }
  st::require_close("untouched slot b1", b1p.cview().slice(0, 0, 1), b1p0.cview().slice(0, 0, 1), 0.0);
  st::require_close("untouched slot b2", b2p.cview().slice(0, 3, 1), b2p0.cview().slice(0, 3, 1), 0.0);
}

TEST_CASE("ttt_mlp inner biases: packed serving and reverse equal their plain calls", "[ttt]") {
  // Three sequences of 21, 16 and 30 tokens packed into one row, all states in pool slots 2, 0, 3 of 4.
  const index_t H = 2, K = 16, M = 32, total = 67;
  const MlpBiasProblem p(1, total, H, K, M, 201);
  const std::vector<std::int64_t> cu = {0, 21, 37, 67};
  const std::vector<std::int32_t> slots = {2, 0, 3};
  const Tensor<float, 4> w1_0 = st::random_tensor<4>({4, H, K, M}, 202, -0.25f, 0.25f);
  const Tensor<float, 4> w2_0 = st::random_tensor<4>({4, H, M, K}, 203, -0.18f, 0.18f);
  const Tensor<float, 3> b1_0 = st::random_tensor<3>({4, H, M}, 204, -0.5f, 0.5f), b2_0 = st::random_tensor<3>({4, H, K}, 205);
  Tensor<float, 4> w1 = w1_0, w2 = w2_0, z({1, total, H, K});
  Tensor<float, 3> b1 = b1_0, b2 = b2_0;
  seqmix::TttMlpInputs in = p.inputs(false);
  in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview(), in.initial_b1 = b1.cview(), in.initial_b2 = b2.cview();
  in.batch.cu_seqlens = cu, in.batch.state_indices = slots;
  seqmix::ttt_mlp(in, {z.view(), w1.view(), w2.view(), b1.view(), b2.view()}, mlp_biased(), st::two_thread_pool());
  for (std::size_t n = 0; n < slots.size(); ++n) {
    INFO("sequence " << n);
    const index_t t0 = cu[n], len = cu[n + 1] - cu[n], s = slots[n];
    seqmix::TttMlpInputs one = p.segment(p.inputs(false), t0, t0 + len);
    one.initial_w1 = w1_0.cview().slice(0, s, 1), one.initial_w2 = w2_0.cview().slice(0, s, 1);
    one.initial_b1 = b1_0.cview().slice(0, s, 1), one.initial_b2 = b2_0.cview().slice(0, s, 1);
    Tensor<float, 4> z1({1, len, H, K}), w1r({1, H, K, M}), w2r({1, H, M, K});
    Tensor<float, 3> b1r({1, H, M}), b2r({1, H, K});
    seqmix::reference::ttt_mlp(one, {z1.view(), w1r.view(), w2r.view(), b1r.view(), b2r.view()}, mlp_biased());
    st::require_close("z", z.cview().slice(1, t0, len), z1.cview(), 2e-4);
    st::require_close("w1", w1.cview().slice(0, s, 1), w1r.cview(), 2e-4);
    st::require_close("b1", b1.cview().slice(0, s, 1), b1r.cview(), 2e-4);
    st::require_close("b2", b2.cview().slice(0, s, 1), b2r.cview(), 2e-4);
  }
  st::require_close("untouched slot", b1.cview().slice(0, 1, 1), b1_0.cview().slice(0, 1, 1), 0.0);

  // Reverse: the fast form against the reference, both reversed, with final biases.
  const MlpBiasProblem r(2, 45, 2, 16, 64, 211);
  seqmix::TttOptions o = mlp_biased();
  o.reverse = true;
  MlpBiasResult ref(r), out(r);
  seqmix::reference::ttt_mlp(r.inputs(true), ref.outputs(), o);
  seqmix::ttt_mlp(r.inputs(true), out.outputs(), o, st::two_thread_pool());
  mlp_bias_check_close(out, ref, 2e-4);
}

TEST_CASE("ttt_mlp inner biases: bad arguments are refused before any output", "[ttt]") {
  const MlpBiasProblem p(2, 8, 2, 16, 32, 221);
  MlpBiasResult res(p);
  Tensor<float, 3> b1_bad({p.B, p.H, p.M + 1}), b2_bad({p.B, p.H, p.K + 1}), b1_rows({p.B + 1, p.H, p.M});
  res.z.fill(7.f);
  const auto untouched = [&] { CHECK(res.z(0, 0, 0, 0) == 7.f); };
  const seqmix::TttMlpOutputs plain{res.z.view(), res.w1.view(), res.w2.view()};
  // Bias states without the option.
  st::require_shape_error("initial_b1", [&] { seqmix::ttt_mlp(p.inputs(true), plain); });
  seqmix::TttMlpInputs only2 = p.inputs(false);
  only2.initial_b2 = p.b2.cview();
  st::require_shape_error("initial_b2", [&] { seqmix::reference::ttt_mlp(only2, plain); });
  st::require_shape_error("final_b1", [&] { seqmix::ttt_mlp(p.inputs(false), res.outputs()); });
  // The option with wrong bias sizes or rows.
  seqmix::TttMlpOutputs bad = res.outputs();
  bad.final_b1 = b1_bad.view();
  st::require_shape_error("final_b1", [&] { seqmix::ttt_mlp(p.inputs(true), bad, mlp_biased()); });
  bad.final_b1 = b1_rows.view();
  st::require_shape_error("final_b1", [&] { seqmix::ttt_mlp(p.inputs(true), bad, mlp_biased()); });
  seqmix::TttMlpInputs in = p.inputs(true);
  in.initial_b2 = b2_bad.cview();
  st::require_shape_error("initial_b2", [&] { seqmix::reference::ttt_mlp(in, res.outputs(), mlp_biased()); });
  in = p.inputs(true);
  in.initial_b1 = b1_bad.cview();
  st::require_shape_error("initial_b1", [&] { seqmix::ttt_mlp(in, res.outputs(), mlp_biased()); });
  // A final bias overlapping a weight.
  bad = res.outputs();
  bad.final_b2 = seqmix::TensorView<float, 3>(res.w1.data(), {p.B, p.H, p.K});
  st::require_shape_error("final_b2", [&] { seqmix::ttt_mlp(p.inputs(true), bad, mlp_biased()); });
  untouched();
  // Steps: b1 and b2 required with the option, refused without it, sizes checked.
  Tensor<float, 3> zs({p.B, p.H, p.K});
  zs.fill(7.f);
  const auto step = [&](const seqmix::TttMlpStepOutputs& o, const seqmix::TttOptions& opt) {
    seqmix::ttt_mlp_step(p.step(0), o, opt);
  };
  st::require_shape_error("b1", [&] { step({zs.view(), res.w1.view(), res.w2.view()}, mlp_biased()); });
  st::require_shape_error("b2", [&] { step({zs.view(), res.w1.view(), res.w2.view(), res.b1.view()}, mlp_biased()); });
  st::require_shape_error("b1", [&] { step({zs.view(), res.w1.view(), res.w2.view(), res.b1.view(), res.b2.view()}, {}); });
  st::require_shape_error("b1", [&] { step({zs.view(), res.w1.view(), res.w2.view(), b1_bad.view(), res.b2.view()}, mlp_biased()); });
  st::require_shape_error("b2", [&] { step({zs.view(), res.w1.view(), res.w2.view(), res.b1.view(), b2_bad.view()}, mlp_biased()); });
  CHECK(zs(0, 0, 0) == 7.f);
  untouched();
}
