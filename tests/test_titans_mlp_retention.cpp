// titans_mlp with Miras' retention gates on each weight matrix (TitansMlpOptions::retention:
// Moneta's lq_normalized with q 4 and 3, Memora's softmax_kl over either axis): the fast prefill
// (mini-batches 16, 7, 1, serial and two threads) and the steps against the double reference over
// T 1 17 64 65, B 1 and 3, K 16 and 64; prefill then steps and split prefills equal one call;
// packed sequences with slots equal per-sequence calls; the one-token update against central
// finite differences of the inner loss at the memory as read; Moneta at q = 2 equals the decay
// gate; Memora's slices sum to 1; bad options and off-simplex Memora states refused before any
// write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"
#include "seqmix_testing/titans_mlp.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TitansRetention;
using seqmix::TitansSoftmaxAxis;
namespace st = seqmix::testing;

// A retention configuration of the sweeps.
struct MlpRetention {
  TitansRetention retention;
  float q;
  TitansSoftmaxAxis axis;
  seqmix::TitansLoss loss;
  const char* name;
};

const MlpRetention kRetentions[] = {
    {TitansRetention::lq_normalized, 4.f, TitansSoftmaxAxis::key, seqmix::TitansLoss::l2, "moneta q4"},
    {TitansRetention::lq_normalized, 3.f, TitansSoftmaxAxis::key, seqmix::TitansLoss::l3, "moneta q3 l3"},
    {TitansRetention::softmax_kl, 4.f, TitansSoftmaxAxis::key, seqmix::TitansLoss::l2, "memora key"},
    {TitansRetention::softmax_kl, 4.f, TitansSoftmaxAxis::value, seqmix::TitansLoss::huber, "memora value huber"}};

seqmix::TitansMlpOptions retention_options(const MlpRetention& r, index_t mini_batch) {
  seqmix::TitansMlpOptions o;
  o.mini_batch = mini_batch, o.retention = r.retention, o.retention_q = r.q, o.softmax_axis = r.axis, o.loss = r.loss;
  o.huber_delta = 0.2f;
  return o;
}

// x [R,H,rows,cols] turned into a point of Memora's simplices: exp(2 x), then each slice of
// `axis` (key: each column over the rows; value: each row over the columns) divided by its sum.
void to_simplex(Tensor<float, 4>& x, TitansSoftmaxAxis axis) {
  const bool over_rows = axis == TitansSoftmaxAxis::key;
  for (index_t r = 0; r < x.size(0); ++r)
    for (index_t h = 0; h < x.size(1); ++h) {
      const index_t slices = over_rows ? x.size(3) : x.size(2), len = over_rows ? x.size(2) : x.size(3);
      for (index_t i = 0; i < slices; ++i) {
        double sum = 0;
        for (index_t j = 0; j < len; ++j) {
          float& e = over_rows ? x(r, h, j, i) : x(r, h, i, j);
          e = std::exp(2.f * e), sum += e;
        }
        for (index_t j = 0; j < len; ++j) (over_rows ? x(r, h, j, i) : x(r, h, i, j)) /= static_cast<float>(sum);
      }
    }
}

// A problem whose initial weights suit the retention (Memora: points of its simplices; the
// momenta stay as drawn). Moneta: forgetting shrinks A while the read W = A / ||A||_q^{q-2} has
// ||W||_q = ||A||_q^{3-q}, so at q = 4 every forgetting step inflates the read memory; with
// alpha up to 0.2 per token the b = 1 recurrence turns sensitive (float rounding amplified to
// 4e-4 of max|A| over 65 tokens, seeds 6000-6011). alpha is cut to [0, 0.02] there (1e-6).
st::TitansMlpProblem retention_problem(const MlpRetention& r, index_t B, index_t T, index_t HK, index_t HV, index_t K,
                                       index_t M, std::uint64_t seed) {
  st::TitansMlpProblem p(B, T, HK, HV, K, M, seed);
  if (r.retention == TitansRetention::softmax_kl) to_simplex(p.w1, r.axis), to_simplex(p.w2, r.axis);
  if (r.retention == TitansRetention::lq_normalized)
    for (float& x : p.alpha) x *= 0.1f;
  return p;
}

// Fast prefills (mini-batches 16 and 7, the latter on two threads) and b = 1 steps against the
// reference, for every retention at one shape.
void retention_sweep(index_t B, index_t K, index_t M, const std::vector<index_t>& lengths, std::uint64_t seed) {
  for (const MlpRetention& r : kRetentions)
    for (index_t T : lengths) {
      const st::TitansMlpProblem p = retention_problem(r, B, T, 1, 2, K, M, seed++);
      for (index_t mb : {16, 7}) {
        INFO(r.name << " B=" << B << " T=" << T << " K=" << K << " b=" << mb);
        st::TitansMlpResult ref(p), fast(p);
        seqmix::reference::titans_mlp(p.inputs(true), ref.outputs(), retention_options(r, mb));
        seqmix::titans_mlp(p.inputs(true), fast.outputs(), retention_options(r, mb),
                           mb == 7 ? st::two_thread_pool() : seqmix::serial_executor());
        st::titans_mlp_check_close(fast, ref, 2e-4);
      }
      INFO(r.name << " B=" << B << " T=" << T << " K=" << K << " steps");
      st::TitansMlpResult ref1(p);
      seqmix::reference::titans_mlp(p.inputs(true), ref1.outputs(), retention_options(r, 1));
      Tensor<float, 4> y({p.B, p.T, p.HV, p.K}), w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
      for (index_t t = 0; t < T; ++t)
        seqmix::titans_mlp_step(p.step(t), {y.view().select(1, t), w1.view(), w2.view(), s1.view(), s2.view()},
                                retention_options(r, 1), t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::TitansMlpResult steps(p);
      steps.y = y, steps.w1 = w1, steps.w2 = w2, steps.s1 = s1, steps.s2 = s2;
      st::titans_mlp_check_close(steps, ref1, 2e-4);
    }
}

// The error e = k + gelu(k W1) W2 - v's loss at (W1, W2), by the library's inner loss (double).
double inner_loss(const std::vector<double>& W1, const std::vector<double>& W2, const std::vector<double>& k,
                  const std::vector<double>& v, seqmix::TitansLoss loss) {
  return seqmix::reference::titans_mlp_inner_loss(W1, W2, k, v, nullptr, nullptr, loss, 0.2);
}

}  // namespace

TEST_CASE("titans_mlp retention: fast prefill and steps equal the reference, K 16, B 1 and 3",
          "[titans][titans_mlp][miras]") {
  const std::vector<index_t> lengths =
      st::small_test_scale() ? std::vector<index_t>{1, 17, 65} : std::vector<index_t>{1, 17, 64, 65};
  retention_sweep(1, 16, 24, lengths, 6000);
  retention_sweep(3, 16, 24, lengths, 6100);
}

TEST_CASE("titans_mlp retention: fast prefill and steps equal the reference, K 64", "[titans][titans_mlp][miras]") {
  retention_sweep(1, 64, 64, st::small_test_scale() ? std::vector<index_t>{17} : std::vector<index_t>{17, 65}, 6200);
}

TEST_CASE("titans_mlp retention: the one-token update takes the finite-difference gradient at the memory as read",
          "[titans][titans_mlp][miras]") {
  const index_t K = 5, M = 7;
  for (const MlpRetention& r : kRetentions) {
    INFO(r.name);
    // alpha = eta = 0, no momentum: Moneta A_1 = A_0 - theta grad l(W_0) with W_0 = A_0 / ||A_0||_q^{q-2};
    // Memora W_1 = softmax(log W_0 - theta grad l(W_0)) per slice.
    st::TitansMlpProblem p = retention_problem(r, 1, 1, 1, 1, K, M, 6300);
    p.alpha(0, 0, 0) = 0.f, p.eta(0, 0, 0) = 0.f, p.theta(0, 0, 0) = 0.3f;
    const bool moneta = r.retention == TitansRetention::lq_normalized;
    std::vector<double> A1(K * M), A2(M * K), k(K), v(K);
    double sum1 = 0, sum2 = 0;
    for (index_t i = 0; i < K; ++i) {
      k[i] = p.k(0, 0, 0, i), v[i] = p.v(0, 0, 0, i);
      for (index_t m = 0; m < M; ++m) {
        A1[i * M + m] = p.w1(0, 0, i, m), A2[m * K + i] = p.w2(0, 0, m, i);
        sum1 += std::pow(std::abs(A1[i * M + m]), double(r.q)), sum2 += std::pow(std::abs(A2[m * K + i]), double(r.q));
      }
    }
    const double f1 = moneta ? std::pow(sum1, -(r.q - 2.0) / r.q) : 1.0, f2 = moneta ? std::pow(sum2, -(r.q - 2.0) / r.q) : 1.0;
    std::vector<double> W1 = A1, W2 = A2;
    for (double& x : W1) x *= f1;
    for (double& x : W2) x *= f2;
    // Central differences of the inner loss at the read memory, then the expected state.
    std::vector<double> e1 = A1, e2 = A2;
    const double h = 1e-6;
    for (std::vector<double>* w : {&W1, &W2})
      for (std::size_t e = 0; e < w->size(); ++e) {
        const double keep = (*w)[e];
        (*w)[e] = keep + h;
        const double up = inner_loss(W1, W2, k, v, r.loss);
        (*w)[e] = keep - h;
        const double down = inner_loss(W1, W2, k, v, r.loss);
        (*w)[e] = keep;
        const double step = -0.3 * (up - down) / (2 * h);
        std::vector<double>& target = w == &W1 ? e1 : e2;
        target[e] = moneta ? target[e] + step : std::log(target[e]) + step;
      }
    if (!moneta) {
      seqmix::detail::titans_softmax_slices_reference(e1, K, M, r.axis);
      seqmix::detail::titans_softmax_slices_reference(e2, M, K, r.axis);
    }
    st::TitansMlpResult ref(p), fast(p);
    seqmix::reference::titans_mlp(p.inputs(false), ref.outputs(), retention_options(r, 16));
    seqmix::titans_mlp(p.inputs(false), fast.outputs(), retention_options(r, 16));
    Tensor<float, 3> ys({1, 1, K});
    Tensor<float, 4> w1 = p.w1, w2 = p.w2, s1({1, 1, K, M}), s2({1, 1, M, K});
    seqmix::titans_mlp_step(p.step(0), {ys.view(), w1.view(), w2.view(), s1.view(), s2.view()}, retention_options(r, 1));
    double worst = 0;
    for (index_t i = 0; i < K; ++i)
      for (index_t m = 0; m < M; ++m) {
        const double x1 = e1[i * M + m], x2 = e2[m * K + i];
        worst = std::max({worst, std::abs(ref.w1(0, 0, i, m) - x1), std::abs(ref.w2(0, 0, m, i) - x2)});
        worst = std::max({worst, std::abs(fast.w1(0, 0, i, m) - x1), std::abs(fast.w2(0, 0, m, i) - x2)});
        worst = std::max({worst, std::abs(w1(0, 0, i, m) - x1), std::abs(w2(0, 0, m, i) - x2)});
      }
    CHECK(worst < 2e-5);
    st::require_close("step y", ys.cview(), ref.y.cview().select(1, 0), 1e-5);
  }
}

TEST_CASE("titans_mlp retention: prefill then steps and split prefills equal one call", "[titans][titans_mlp][miras]") {
  const index_t T = 40, T1 = 24;  // T1: a multiple of both mini-batches
  std::uint64_t seed = 6400;
  for (const MlpRetention& r : kRetentions) {
    const st::TitansMlpProblem p = retention_problem(r, 2, T, 1, 2, 8, 12, seed++);
    for (index_t mb : {1, 8}) {
      INFO(r.name << " b=" << mb);
      st::TitansMlpResult whole(p);
      seqmix::titans_mlp(p.inputs(true), whole.outputs(), retention_options(r, mb));
      // The first T1 tokens, then (b = 1) steps or (b = 8) a second prefill, states in place.
      Tensor<float, 4> y({p.B, T, p.HV, p.K}), w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
      seqmix::titans_mlp(p.segment(0, T1, w1, w2, s1, s2),
                         {y.view().slice(1, 0, T1), w1.view(), w2.view(), s1.view(), s2.view()}, retention_options(r, mb));
      if (mb == 1) {
        for (index_t t = T1; t < T; ++t)
          seqmix::titans_mlp_step(p.step(t), {y.view().select(1, t), w1.view(), w2.view(), s1.view(), s2.view()},
                                  retention_options(r, 1));
      } else {
        seqmix::titans_mlp(p.segment(T1, T - T1, w1, w2, s1, s2),
                           {y.view().slice(1, T1, T - T1), w1.view(), w2.view(), s1.view(), s2.view()},
                           retention_options(r, mb), st::two_thread_pool());
      }
      st::TitansMlpResult split(p);
      split.y = y, split.w1 = w1, split.w2 = w2, split.s1 = s1, split.s2 = s2;
      st::titans_mlp_check_close(split, whole, 1e-5);
    }
  }
}

TEST_CASE("titans_mlp retention: packed sequences in slots equal per-sequence calls", "[titans][titans_mlp][miras]") {
  const std::vector<std::int64_t> cu = {0, 9, 9, 14, 21};
  const std::vector<std::int64_t> slots = {2, 0, -1, 3};  // pool row 1 unused: garbage, never validated
  std::uint64_t seed = 6500;
  for (const MlpRetention& r : kRetentions)
    for (bool fast : {true, false}) {
      INFO(r.name << (fast ? " fast" : " reference"));
      const st::TitansMlpProblem p = retention_problem(r, 1, 21, 1, 2, 8, 12, seed);
      const st::TitansMlpProblem pool = retention_problem(r, 4, 1, 1, 2, 8, 12, seed + 50);
      ++seed;
      Tensor<float, 4> w1 = pool.w1, w2 = pool.w2, s1 = pool.s1, s2 = pool.s2, y({1, 21, 2, 8});
      for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < 8; ++i)
          for (index_t m = 0; m < 12; ++m) w1(1, h, i, m) = -1.f;
      Tensor<float, 4> ew1 = w1, ew2 = w2, es1 = s1, es2 = s2, ey({1, 21, 2, 8});
      y.fill(7.f), ey.fill(7.f);
      const seqmix::TitansMlpOptions o = retention_options(r, 4);
      const auto run = [&](const seqmix::TitansMlpInputs& in, const seqmix::TitansMlpOutputs& out) {
        if (fast)
          seqmix::titans_mlp(in, out, o, st::two_thread_pool());
        else
          seqmix::reference::titans_mlp(in, out, o);
      };
      for (std::size_t n = 0; n + 1 < cu.size(); ++n) {
        if (slots[n] < 0) continue;
        const index_t s = slots[n], t0 = cu[n], len = cu[n + 1] - cu[n];
        seqmix::TitansMlpInputs in = p.segment(t0, len, ew1, ew2, es1, es2);
        in.initial_w1 = ew1.cview().slice(0, s, 1), in.initial_w2 = ew2.cview().slice(0, s, 1);
        in.initial_s1 = es1.cview().slice(0, s, 1), in.initial_s2 = es2.cview().slice(0, s, 1);
        run(in, {ey.view().slice(1, t0, len), ew1.view().slice(0, s, 1), ew2.view().slice(0, s, 1),
                 es1.view().slice(0, s, 1), es2.view().slice(0, s, 1)});
      }
      seqmix::TitansMlpInputs in = p.inputs(false);
      in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview(), in.initial_s1 = s1.cview(), in.initial_s2 = s2.cview();
      in.batch.cu_seqlens = cu, in.batch.state_indices = slots;
      run(in, {y.view(), w1.view(), w2.view(), s1.view(), s2.view()});
      st::require_close("y", y.cview(), ey.cview(), 1e-6);
      st::require_close("w1", w1.cview(), ew1.cview(), 1e-6);
      st::require_close("w2", w2.cview(), ew2.cview(), 1e-6);
      st::require_close("s1", s1.cview(), es1.cview(), 1e-6);
      st::require_close("s2", s2.cview(), es2.cview(), 1e-6);
    }
}

TEST_CASE("titans_mlp retention: Moneta at q = 2 is the decay gate, Memora's slices sum to 1",
          "[titans][titans_mlp][miras]") {
  const st::TitansMlpProblem p(2, 33, 1, 2, 8, 12, 6600);
  seqmix::TitansMlpOptions decay, q2;
  decay.mini_batch = q2.mini_batch = 8;
  q2.retention = TitansRetention::lq_normalized, q2.retention_q = 2.f;
  st::TitansMlpResult a(p), b(p);
  seqmix::titans_mlp(p.inputs(true), a.outputs(), decay);
  seqmix::titans_mlp(p.inputs(true), b.outputs(), q2);
  st::titans_mlp_check_close(b, a, 1e-5);
  for (TitansSoftmaxAxis axis : {TitansSoftmaxAxis::key, TitansSoftmaxAxis::value}) {
    const MlpRetention r{TitansRetention::softmax_kl, 4.f, axis, seqmix::TitansLoss::l2, "memora"};
    const st::TitansMlpProblem pm = retention_problem(r, 1, 50, 1, 1, 8, 12, 6601);
    st::TitansMlpResult m(pm);
    seqmix::titans_mlp(pm.inputs(true), m.outputs(), retention_options(r, 8));
    INFO("axis " << int(axis));
    for (const Tensor<float, 4>* w : {&m.w1, &m.w2}) {
      const bool over_rows = axis == TitansSoftmaxAxis::key;
      const index_t slices = over_rows ? w->size(3) : w->size(2), len = over_rows ? w->size(2) : w->size(3);
      double worst = 0, smallest = 1;
      for (index_t i = 0; i < slices; ++i) {
        double sum = 0;
        for (index_t j = 0; j < len; ++j) {
          const float x = over_rows ? (*w)(0, 0, j, i) : (*w)(0, 0, i, j);
          sum += x, smallest = std::min(smallest, double(x));
        }
        worst = std::max(worst, std::abs(sum - 1.0));
      }
      CHECK(worst < 1e-5);
      CHECK(smallest >= 0.0);
    }
  }
}

TEST_CASE("titans_mlp retention: bad options and off-simplex Memora states are rejected before any write",
          "[titans][titans_mlp][miras]") {
  st::TitansMlpProblem p(1, 5, 1, 1, 4, 6, 6700);
  st::TitansMlpResult out(p);
  for (Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2}) x->fill(7.f);
  Tensor<float, 3> ys({1, 1, 4});
  ys.fill(7.f);
  Tensor<float, 4> w1 = p.w1, w2 = p.w2, s1 = p.s1, s2 = p.s2;
  const auto prefill_and_step = [&](const char* argument, const seqmix::TitansMlpOptions& o) {
    st::require_shape_error(argument, [&] { seqmix::titans_mlp(p.inputs(true), out.outputs(), o); });
    st::require_shape_error(argument, [&] { seqmix::reference::titans_mlp(p.inputs(true), out.outputs(), o); });
    st::require_shape_error(argument, [&] {
      seqmix::titans_mlp_step(p.step(0), {ys.view(), w1.view(), w2.view(), s1.view(), s2.view()}, o);
    });
  };
  seqmix::TitansMlpOptions o;
  o.retention = TitansRetention::lq_normalized;
  for (float q : {1.5f, 1.99f, std::nanf(""), INFINITY}) {
    INFO("q " << q);
    o.retention_q = q;
    prefill_and_step("options.retention_q", o);
  }
  o.retention_q = 4.f;
  o.retention = static_cast<TitansRetention>(3);
  prefill_and_step("options.retention", o);
  o.retention = TitansRetention::softmax_kl;
  o.softmax_axis = static_cast<TitansSoftmaxAxis>(2);
  prefill_and_step("options.softmax_axis", o);
  // Memora with the drawn weights: negative entries, off the simplices.
  o.softmax_axis = TitansSoftmaxAxis::key;
  st::require_shape_error("initial_w1", [&] { seqmix::titans_mlp(p.inputs(true), out.outputs(), o); });
  st::require_shape_error("w1", [&] {
    seqmix::titans_mlp_step(p.step(0), {ys.view(), w1.view(), w2.view(), s1.view(), s2.view()}, o);
  });
  // W1 on its simplices, W2 with a slice of zeros (log W would be -inf everywhere).
  const MlpRetention r{TitansRetention::softmax_kl, 4.f, TitansSoftmaxAxis::key, seqmix::TitansLoss::l2, "memora"};
  st::TitansMlpProblem pm = retention_problem(r, 1, 5, 1, 1, 4, 6, 6701);
  for (index_t m = 0; m < 6; ++m) pm.w2(0, 0, m, 2) = 0.f;
  st::require_shape_error("initial_w2", [&] { seqmix::reference::titans_mlp(pm.inputs(true), out.outputs(), o); });
  REQUIRE(ys(0, 0, 0) == 7.f);
  for (const Tensor<float, 4>* x : {&out.y, &out.w1, &out.w2, &out.s1, &out.s2})
    for (float e : *x) REQUIRE(e == 7.f);
  st::require_close("w1 untouched", w1.cview(), p.w1.cview(), 0.0);
  st::require_close("s2 untouched", s2.cview(), p.s2.cview(), 0.0);
}
