// titans with Miras' retention gates (TitansOptions::retention): Moneta's l_q-normalized
// accumulator and Memora's softmax (KL) retention, prefill and step against the double reference
// over T in {1, 17, 64, 65}, K = V in {16, 64}, B in {1, 3}, with and without initial states;
// prefill + steps = one call; q = 2 Moneta is the decay form; Memora's slices sum to 1; bad
// options and a Memora memory off its simplices refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"
#include "seqmix_testing/titans_problem.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TitansRetention;
using seqmix::TitansSoftmaxAxis;
namespace st = seqmix::testing;

// m0 is drawn positive, so it serves Memora too (it need not be normalized: the first softmax
// puts it on the simplices).
struct RetentionProblem : st::TitansProblem {
  RetentionProblem(index_t B_, index_t T_, index_t HK_, index_t HV_, index_t K_, index_t V_, std::uint64_t seed)
      : st::TitansProblem(B_, T_, HK_, HV_, K_, V_, seed, {0.9f, 0.05f, 0.5f}) {}
};

using RetentionResult = st::TitansResult;

// The retentions the sweeps cover: Moneta at the paper's q = 4 (l2 loss) and at q = 3 with the
// l3 loss (Moneta's p = 3 pairing), Memora over each axis.
std::vector<seqmix::TitansOptions> retention_variants() {
  std::vector<seqmix::TitansOptions> all(4);
  all[0].retention = TitansRetention::lq_normalized;
  all[1].retention = TitansRetention::lq_normalized, all[1].retention_q = 3.f, all[1].loss = seqmix::TitansLoss::l3;
  all[2].retention = TitansRetention::softmax_kl, all[2].softmax_axis = TitansSoftmaxAxis::key;
  all[3].retention = TitansRetention::softmax_kl, all[3].softmax_axis = TitansSoftmaxAxis::value;
  return all;
}

// The prefill (default algorithm: runs token by token) and a chain of steps from the same initial
// state, against the reference.
void retention_sweep(std::initializer_list<index_t> lengths, std::initializer_list<index_t> sizes, index_t heads,
                     std::uint64_t seed) {
  const std::vector<seqmix::TitansOptions> variants = retention_variants();
  for (index_t T : lengths)
    for (index_t D : sizes)
      for (index_t B : {1, 3}) {
        const index_t HK = seed % 2 ? 1 : heads;
        const RetentionProblem p(B, T, HK, heads, D, D, seed);
        const bool with_state = seed % 3 != 0;
        for (std::size_t i = 0; i < variants.size(); ++i) {
          const seqmix::TitansOptions& o = variants[i];
          INFO("variant " << i << " B=" << B << " T=" << T << " K=V=" << D << " HK=" << HK << " initial_state=" << with_state);
          RetentionResult ref(p), out(p);
          seqmix::reference::titans(p.inputs(with_state), ref.outputs(), o);
          seqmix::titans(p.inputs(with_state), out.outputs(), o, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
          st::titans_check_close(out, ref, 2e-4);
          // Steps from the same state (Memora's fresh memory is its uniform point).
          RetentionResult stepped(p);
          if (with_state) {
            stepped.m = p.m0, stepped.s = p.s0;
          } else {
            const bool memora = o.retention == TitansRetention::softmax_kl;
            stepped.m.fill(memora ? 1.f / float(o.softmax_axis == TitansSoftmaxAxis::key ? p.K : p.V) : 0.f);
            stepped.s.fill(0.f);
          }
          for (index_t t = 0; t < T; ++t)
            seqmix::titans_step(p.step(t), {stepped.y.view().select(1, t), stepped.m.view(), stepped.s.view()}, o);
          st::titans_check_close(stepped, ref, 2e-4);
        }
        ++seed;
      }
}

bool all_equal(const Tensor<float, 4>& x, float value) {
  for (float e : x)
    if (!(e == value)) return false;
  return true;
}

}  // namespace

TEST_CASE("titans retention: Moneta and Memora prefill and steps equal the reference, 16 heads", "[titans]") {
  if (st::small_test_scale())
    retention_sweep({1, 17, 65}, {16}, 16, 301);
  else
    retention_sweep({1, 17, 64, 65}, {16}, 16, 301);
}

TEST_CASE("titans retention: Moneta and Memora prefill and steps equal the reference, 64 channels", "[titans]") {
  if (st::small_test_scale())
    retention_sweep({17, 65}, {64}, 2, 331);
  else
    retention_sweep({1, 17, 64, 65}, {64}, 2, 331);
}

TEST_CASE("titans retention: prefill then steps equals one call, states in place", "[titans]") {
  const RetentionProblem p(3, 40, 1, 2, 16, 12, 401);
  for (const seqmix::TitansOptions& o : retention_variants()) {
    INFO("retention " << int(o.retention) << " q " << o.retention_q << " axis " << int(o.softmax_axis));
    RetentionResult full(p);
    seqmix::titans(p.inputs(true), full.outputs(), o);
    const index_t T1 = 23;
    Tensor<float, 4> y({p.B, p.T, p.HV, p.V});
    Tensor<float, 4> m = p.m0, s = p.s0;
    seqmix::TitansInputs in = p.prefix_inputs(T1);
    in.initial_memory = m.cview(), in.initial_momentum = s.cview();
    seqmix::titans(in, {y.view().slice(1, 0, T1), m.view(), s.view()}, o);  // final states = the initial views
    for (index_t t = T1; t < p.T; ++t)
      seqmix::titans_step(p.step(t), {y.view().select(1, t), m.view(), s.view()}, o,
                          t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    st::require_close("y", y.cview(), full.y.cview(), 1e-5);
    st::require_close("memory", m.cview(), full.m.cview(), 1e-5);
    st::require_close("momentum", s.cview(), full.s.cview(), 1e-5);
  }
}

TEST_CASE("titans retention: a reverse prefill equals the reference's reverse run", "[titans]") {
  const RetentionProblem p(2, 30, 2, 2, 12, 10, 411);
  for (seqmix::TitansOptions o : retention_variants()) {
    INFO("retention " << int(o.retention) << " q " << o.retention_q << " axis " << int(o.softmax_axis));
    o.reverse = true;
    RetentionResult ref(p), out(p);
    seqmix::reference::titans(p.inputs(true), ref.outputs(), o);
    seqmix::titans(p.inputs(true), out.outputs(), o, st::two_thread_pool());
    st::titans_check_close(out, ref, 2e-4);
  }
}

// W = A / ||A||_2^0 = A: Moneta at q = 2 is Titans' decay retention, the same arithmetic.
TEST_CASE("titans retention: Moneta with q = 2 equals the decay retention", "[titans]") {
  const RetentionProblem p(2, 65, 2, 4, 16, 24, 421);
  RetentionResult decay(p), ref(p), fast(p);
  seqmix::reference::titans(p.inputs(true), decay.outputs());
  seqmix::TitansOptions o;
  o.retention = TitansRetention::lq_normalized, o.retention_q = 2.f;
  seqmix::reference::titans(p.inputs(true), ref.outputs(), o);
  seqmix::titans(p.inputs(true), fast.outputs(), o);
  st::titans_check_close(ref, decay, 1e-6);
  st::titans_check_close(fast, decay, 2e-4);
}

TEST_CASE("titans retention: Moneta reads A / ||A||_4^2 and Memora's slices sum to 1", "[titans]") {
  const RetentionProblem p(1, 33, 1, 2, 8, 6, 441);
  // Moneta: y_T = W_T^T q_T with W = A / ||A||_4^2 from the final accumulator A.
  seqmix::TitansOptions moneta;
  moneta.retention = TitansRetention::lq_normalized;
  RetentionResult m(p);
  seqmix::titans(p.inputs(true), m.outputs(), moneta);
  for (index_t hv = 0; hv < p.HV; ++hv) {
    double sum4 = 0.0;
    for (index_t r = 0; r < p.K; ++r)
      for (index_t c = 0; c < p.V; ++c) sum4 += std::pow(double(m.m(0, hv, r, c)), 4);
    const double norm2 = std::sqrt(sum4);  // ||A||_4^2
    for (index_t c = 0; c < p.V; ++c) {
      double y = 0.0;
      for (index_t r = 0; r < p.K; ++r) y += double(m.m(0, hv, r, c)) * p.q(0, p.T - 1, 0, r);
      REQUIRE(std::abs(y / norm2 - m.y(0, p.T - 1, hv, c)) <= 1e-5 * (1.0 + std::abs(y / norm2)));
    }
  }
  // Memora: entries >= 0, each slice of the chosen axis sums to 1.
  for (const TitansSoftmaxAxis axis : {TitansSoftmaxAxis::key, TitansSoftmaxAxis::value}) {
    seqmix::TitansOptions memora;
    memora.retention = TitansRetention::softmax_kl, memora.softmax_axis = axis;
    RetentionResult w(p);
    seqmix::titans(p.inputs(true), w.outputs(), memora);
    const bool over_key = axis == TitansSoftmaxAxis::key;
    for (index_t hv = 0; hv < p.HV; ++hv)
      for (index_t i = 0; i < (over_key ? p.V : p.K); ++i) {
        double sum = 0.0;
        bool nonnegative = true;
        for (index_t j = 0; j < (over_key ? p.K : p.V); ++j) {
          const float x = over_key ? w.m(0, hv, j, i) : w.m(0, hv, i, j);
          nonnegative = nonnegative && x >= 0.f;
          sum += x;
        }
        INFO("axis " << int(axis) << " head " << hv << " slice " << i);
        REQUIRE(nonnegative);
        REQUIRE(std::abs(sum - 1.0) <= 1e-5);
      }
  }
}

// An exact 0 in Memora's memory (log 0 = -inf) stays 0 while alpha < 1, in every form alike.
TEST_CASE("titans retention: Memora keeps an exact zero entry at zero", "[titans]") {
  const RetentionProblem p(1, 12, 1, 2, 8, 16, 451);
  Tensor<float, 4> m0 = p.m0;
  m0(0, 0, 3, 5) = 0.f, m0(0, 1, 0, 15) = 0.f;
  seqmix::TitansInputs in = p.inputs(true);
  in.initial_memory = m0.cview();
  for (const TitansSoftmaxAxis axis : {TitansSoftmaxAxis::key, TitansSoftmaxAxis::value}) {
    INFO("axis " << int(axis));
    seqmix::TitansOptions o;
    o.retention = TitansRetention::softmax_kl, o.softmax_axis = axis;
    RetentionResult ref(p), out(p);
    seqmix::reference::titans(in, ref.outputs(), o);
    seqmix::titans(in, out.outputs(), o);
    st::titans_check_close(out, ref, 2e-4);
    REQUIRE(out.m(0, 0, 3, 5) == 0.f);
    REQUIRE(out.m(0, 1, 0, 15) == 0.f);
  }
}

TEST_CASE("titans retention: gates at both extremes stay finite over 4096 tokens", "[titans]") {
  const index_t T = st::small_test_scale() ? 512 : 4096;
  RetentionProblem p(1, T, 1, 2, 16, 16, 461);
  for (index_t t = 0; t < T; ++t)
    for (index_t hv = 0; hv < 2; ++hv) {
      const bool edge = (t / 7 + hv) % 2 == 0;
      p.alpha(0, t, hv) = edge ? 1.f : 0.f, p.eta(0, t, hv) = edge ? 0.f : 1.f, p.theta(0, t, hv) = edge ? 0.5f : 0.f;
    }
  for (const seqmix::TitansOptions& o : retention_variants()) {
    INFO("retention " << int(o.retention) << " axis " << int(o.softmax_axis));
    if (o.loss == seqmix::TitansLoss::l3) continue;  // l3's gradient grows with the cube of the error
    RetentionResult out(p);
    seqmix::titans(p.inputs(false), out.outputs(), o);
    bool finite = true;
    for (float x : out.y) finite = finite && std::isfinite(x);
    for (float x : out.m) finite = finite && std::isfinite(x);
    REQUIRE(finite);
  }
}

TEST_CASE("titans retention: bad options and a Memora memory off its simplices are rejected before any write",
          "[titans]") {
  const RetentionProblem p(2, 9, 1, 2, 8, 4, 481);
  RetentionResult out(p);
  out.y.fill(7.f), out.m.fill(7.f), out.s.fill(7.f);
  const auto expect = [&](const char* argument, const seqmix::TitansInputs& in, const seqmix::TitansOptions& o) {
    st::require_shape_error(argument, [&] { seqmix::titans(in, out.outputs(), o); });
    st::require_shape_error(argument, [&] { seqmix::reference::titans(in, out.outputs(), o); });
  };
  seqmix::TitansOptions o;
  o.retention = TitansRetention::lq_normalized, o.retention_q = 1.5f;
  expect("options.retention_q", p.inputs(true), o);
  o.retention_q = std::nanf("");
  expect("options.retention_q", p.inputs(true), o);
  o = {}, o.retention = static_cast<TitansRetention>(3);
  expect("options.retention", p.inputs(true), o);
  o = {}, o.softmax_axis = static_cast<TitansSoftmaxAxis>(2);
  expect("options.softmax_axis", p.inputs(true), o);
  // Memora: a negative entry, a NaN, a slice of zeros in the initial memory.
  o = {}, o.retention = TitansRetention::softmax_kl;
  Tensor<float, 4> m_bad = p.m0;
  m_bad(1, 1, 3, 2) = -0.25f;
  seqmix::TitansInputs in = p.inputs(true);
  in.initial_memory = m_bad.cview();
  expect("initial_memory", in, o);
  m_bad = p.m0, m_bad(0, 0, 0, 0) = std::nanf("");
  expect("initial_memory", in, o);
  m_bad = p.m0;
  for (index_t r = 0; r < p.K; ++r) m_bad(0, 1, r, 3) = 0.f;  // column 3 of head 1: a key-axis slice of zeros
  expect("initial_memory", in, o);
  o.softmax_axis = TitansSoftmaxAxis::value;  // the same memory is fine over rows (each row keeps positives)
  RetentionResult ok(p);
  seqmix::titans(in, ok.outputs(), o);
  // The step: a memory with a negative entry is refused, the state untouched.
  Tensor<float, 3> ys({2, 2, 4});
  ys.fill(7.f);
  Tensor<float, 4> mem = p.m0, mom = p.s0;
  mem(1, 0, 2, 1) = -1.f;
  const Tensor<float, 4> mem_before = mem, mom_before = mom;
  st::require_shape_error("memory", [&] { seqmix::titans_step(p.step(0), {ys.view(), mem.view(), mom.view()}, o); });
  st::require_close("memory kept", mem.cview(), mem_before.cview(), 0.0);
  st::require_close("momentum kept", mom.cview(), mom_before.cview(), 0.0);
  bool untouched = all_equal(out.y, 7.f) && all_equal(out.m, 7.f) && all_equal(out.s, 7.f);
  for (float x : ys) untouched = untouched && x == 7.f;
  REQUIRE(untouched);
}
