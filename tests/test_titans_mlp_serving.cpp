// titans_mlp serving (SequenceBatch): packed sequences (cu_seqlens, lengths 17 1 5 0 9 1), state
// slots in pools with -1 padding, in the prefill (fast and reference) and the step, each equal to
// per-sequence dense calls on copies of the sequence's state rows; padding rows and unused slots
// untouched; bad batches (and packed + reverse, has_initial_state) refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
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

const std::vector<index_t> kLengths = {17, 1, 5, 0, 9, 1};

// Pools of weights and momenta [P,HV,...] with random contents.
struct TitansMlpPool {
  Tensor<float, 4> w1, w2, s1, s2;
  explicit TitansMlpPool(const st::TitansMlpProblem& p) : w1(p.w1), w2(p.w2), s1(p.s1), s2(p.s2) {}
  // Row r as its own [1,...] copy.
  static Tensor<float, 4> row(const Tensor<float, 4>& x, index_t r) {
    Tensor<float, 4> out({1, x.size(1), x.size(2), x.size(3)});
    for (index_t a = 0; a < x.size(1); ++a)
      for (index_t b = 0; b < x.size(2); ++b)
        for (index_t c = 0; c < x.size(3); ++c) out(0, a, b, c) = x(r, a, b, c);
    return out;
  }
  static void store(Tensor<float, 4>& x, index_t r, const Tensor<float, 4>& one) {
    for (index_t a = 0; a < x.size(1); ++a)
      for (index_t b = 0; b < x.size(2); ++b)
        for (index_t c = 0; c < x.size(3); ++c) x(r, a, b, c) = one(0, a, b, c);
  }
};

using Prefill = std::function<void(const seqmix::TitansMlpInputs&, const seqmix::TitansMlpOutputs&,
                                   const seqmix::TitansMlpOptions&)>;

// Packed tokens p [1, total_T, ...]; sequence n runs on pool row slots[n] (n itself without slots),
// in place. The expectation: each sequence a dense B = 1 call on copies of its rows.
void titans_mlp_packed_check(const Prefill& run, const std::vector<std::int64_t>& slots, index_t pool_rows,
                             const seqmix::TitansMlpOptions& o, bool per_token, std::uint64_t seed) {
  index_t total = 0;
  std::vector<std::int64_t> cu = {0};
  for (index_t len : kLengths) total += len, cu.push_back(total);
  const st::TitansMlpProblem p(1, total, 1, 2, 8, 12, seed);
  const st::TitansMlpProblem pool_src(pool_rows, 1, 1, 2, 8, 12, seed + 50);
  TitansMlpPool pool(pool_src), expected(pool_src);
  Tensor<float, 4> y({1, total, 2, 8}), y_expected({1, total, 2, 8});
  y.fill(7.f), y_expected.fill(7.f);
  for (std::size_t n = 0; n < kLengths.size(); ++n) {
    const index_t row = slots.empty() ? index_t(n) : index_t(slots[n]);
    if (row < 0) continue;
    Tensor<float, 4> w1 = TitansMlpPool::row(pool.w1, row), w2 = TitansMlpPool::row(pool.w2, row);
    Tensor<float, 4> s1 = TitansMlpPool::row(pool.s1, row), s2 = TitansMlpPool::row(pool.s2, row);
    seqmix::TitansMlpInputs in = p.segment(cu[n], kLengths[n], w1, w2, s1, s2);
    if (per_token) in.huber_delta = p.delta.cview().slice(1, cu[n], kLengths[n]);
    run(in, {y_expected.view().slice(1, cu[n], kLengths[n]), w1.view(), w2.view(), s1.view(), s2.view()}, o);
    TitansMlpPool::store(expected.w1, row, w1), TitansMlpPool::store(expected.w2, row, w2);
    TitansMlpPool::store(expected.s1, row, s1), TitansMlpPool::store(expected.s2, row, s2);
  }
  seqmix::TitansMlpInputs in = p.inputs(false);
  in.initial_w1 = pool.w1.cview(), in.initial_w2 = pool.w2.cview();
  in.initial_s1 = pool.s1.cview(), in.initial_s2 = pool.s2.cview();
  if (per_token) in.huber_delta = p.delta.cview();
  in.batch.cu_seqlens = cu;
  if (!slots.empty()) in.batch.state_indices = slots;
  run(in, {y.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()}, o);
  st::require_close("y", y.cview(), y_expected.cview(), 1e-6);
  st::require_close("w1", pool.w1.cview(), expected.w1.cview(), 1e-6);
  st::require_close("w2", pool.w2.cview(), expected.w2.cview(), 1e-6);
  st::require_close("s1", pool.s1.cview(), expected.s1.cview(), 1e-6);
  st::require_close("s2", pool.s2.cview(), expected.s2.cview(), 1e-6);
}

const Prefill kFast = [](const seqmix::TitansMlpInputs& in, const seqmix::TitansMlpOutputs& out,
                         const seqmix::TitansMlpOptions& o) { seqmix::titans_mlp(in, out, o, st::two_thread_pool()); };
const Prefill kReference = [](const seqmix::TitansMlpInputs& in, const seqmix::TitansMlpOutputs& out,
                              const seqmix::TitansMlpOptions& o) { seqmix::reference::titans_mlp(in, out, o); };

}  // namespace

TEST_CASE("titans_mlp serving: packed and slotted prefills equal per-sequence calls", "[titans][titans_mlp][serving]") {
  seqmix::TitansMlpOptions o;
  o.mini_batch = 4;  // the 17- and 9-token sequences end in ragged mini-batches of their own
  for (bool fast : {true, false}) {
    INFO((fast ? "fast" : "reference"));
    const Prefill& run = fast ? kFast : kReference;
    {
      INFO("packed, states [N,...]");
      titans_mlp_packed_check(run, {}, index_t(kLengths.size()), o, false, 5000);
    }
    {
      INFO("packed, slots with padding");
      titans_mlp_packed_check(run, {3, 0, -1, 5, 7, 1}, 9, o, false, 5100);
    }
    {
      INFO("packed, slots, Huber delta_t");
      seqmix::TitansMlpOptions h = o;
      h.loss = seqmix::TitansLoss::huber;
      titans_mlp_packed_check(run, {2, -1, 4, 0, 1, 6}, 7, h, true, 5200);
    }
  }
}

TEST_CASE("titans_mlp serving: dense slotted prefill, reverse included, equals per-row calls", "[titans][titans_mlp][serving]") {
  const st::TitansMlpProblem p(3, 11, 1, 2, 8, 12, 5300);
  const st::TitansMlpProblem pool_src(4, 1, 1, 2, 8, 12, 5350);
  const std::vector<std::int32_t> slots = {2, -1, 0};
  for (bool reverse : {false, true}) {
    INFO("reverse " << reverse);
    seqmix::TitansMlpOptions o;
    o.mini_batch = 4, o.reverse = reverse;
    TitansMlpPool pool(pool_src), expected(pool_src);
    Tensor<float, 4> y({3, 11, 2, 8}), y_expected({3, 11, 2, 8});
    y.fill(7.f), y_expected.fill(7.f);
    for (index_t b = 0; b < 3; ++b) {
      if (slots[b] < 0) continue;
      Tensor<float, 4> w1 = TitansMlpPool::row(pool.w1, slots[b]), w2 = TitansMlpPool::row(pool.w2, slots[b]);
      Tensor<float, 4> s1 = TitansMlpPool::row(pool.s1, slots[b]), s2 = TitansMlpPool::row(pool.s2, slots[b]);
      seqmix::TitansMlpInputs in = p.segment(0, 11, w1, w2, s1, s2);
      in.q = in.q.slice(0, b, 1), in.k = in.k.slice(0, b, 1), in.v = in.v.slice(0, b, 1);
      in.alpha = in.alpha.slice(0, b, 1), in.eta = in.eta.slice(0, b, 1), in.theta = in.theta.slice(0, b, 1);
      seqmix::titans_mlp(in, {y_expected.view().slice(0, b, 1), w1.view(), w2.view(), s1.view(), s2.view()}, o);
      TitansMlpPool::store(expected.w1, slots[b], w1), TitansMlpPool::store(expected.w2, slots[b], w2);
      TitansMlpPool::store(expected.s1, slots[b], s1), TitansMlpPool::store(expected.s2, slots[b], s2);
    }
    seqmix::TitansMlpInputs in = p.inputs(false);
    in.initial_w1 = pool.w1.cview(), in.initial_w2 = pool.w2.cview();
    in.initial_s1 = pool.s1.cview(), in.initial_s2 = pool.s2.cview();
    in.batch.state_indices = slots;
    seqmix::titans_mlp(in, {y.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()}, o,
                       st::two_thread_pool());
    st::require_close("y", y.cview(), y_expected.cview(), 1e-6);
    st::require_close("w1", pool.w1.cview(), expected.w1.cview(), 1e-6);
    st::require_close("s2", pool.s2.cview(), expected.s2.cview(), 1e-6);
  }
}

TEST_CASE("titans_mlp serving: slotted steps equal per-row steps, padding rows untouched", "[titans][titans_mlp][serving]") {
  const st::TitansMlpProblem p(4, 3, 1, 2, 8, 12, 5400);
  const st::TitansMlpProblem pool_src(5, 1, 1, 2, 8, 12, 5450);
  const std::vector<std::int64_t> slots = {2, -1, 0, 3};
  TitansMlpPool pool(pool_src), expected(pool_src);
  Tensor<float, 3> y({4, 2, 8}), y_expected({4, 2, 8});
  y.fill(7.f), y_expected.fill(7.f);
  seqmix::TitansMlpOptions o;
  o.loss = seqmix::TitansLoss::l3;
  for (index_t t = 0; t < p.T; ++t) {
    for (index_t b = 0; b < 4; ++b) {
      if (slots[b] < 0) continue;
      Tensor<float, 4> w1 = TitansMlpPool::row(expected.w1, slots[b]), w2 = TitansMlpPool::row(expected.w2, slots[b]);
      Tensor<float, 4> s1 = TitansMlpPool::row(expected.s1, slots[b]), s2 = TitansMlpPool::row(expected.s2, slots[b]);
      seqmix::TitansMlpStepInputs si = p.step(t);
      si.q = si.q.slice(0, b, 1), si.k = si.k.slice(0, b, 1), si.v = si.v.slice(0, b, 1);
      si.alpha = si.alpha.slice(0, b, 1), si.eta = si.eta.slice(0, b, 1), si.theta = si.theta.slice(0, b, 1);
      seqmix::titans_mlp_step(si, {y_expected.view().slice(0, b, 1), w1.view(), w2.view(), s1.view(), s2.view()}, o);
      TitansMlpPool::store(expected.w1, slots[b], w1), TitansMlpPool::store(expected.w2, slots[b], w2);
      TitansMlpPool::store(expected.s1, slots[b], s1), TitansMlpPool::store(expected.s2, slots[b], s2);
    }
    seqmix::TitansMlpStepInputs si = p.step(t);
    si.batch.state_indices = slots;
    seqmix::titans_mlp_step(si, {y.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()}, o,
                            t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    st::require_close("y", y.cview(), y_expected.cview(), 1e-6);
  }
  st::require_close("w1", pool.w1.cview(), expected.w1.cview(), 1e-6);
  st::require_close("w2", pool.w2.cview(), expected.w2.cview(), 1e-6);
  st::require_close("s1", pool.s1.cview(), expected.s1.cview(), 1e-6);
  st::require_close("s2", pool.s2.cview(), expected.s2.cview(), 1e-6);
  for (index_t j = 0; j < 8; ++j) REQUIRE(y(1, 0, j) == 7.f);  // the padding row
}

TEST_CASE("titans_mlp serving: bad batches are refused before any write", "[titans][titans_mlp][serving]") {
  const st::TitansMlpProblem p(1, 8, 1, 1, 4, 6, 5500);
  const st::TitansMlpProblem pool_src(3, 1, 1, 1, 4, 6, 5550);
  TitansMlpPool pool(pool_src);
  Tensor<float, 4> y({1, 8, 1, 4});
  y.fill(7.f);
  const TitansMlpPool before = pool;
  const auto untouched = [&] {
    bool same = true;
    for (float e : y) same = same && e == 7.f;
    for (index_t i = 0; i < pool.w1.numel(); ++i) same = same && pool.w1.data()[i] == before.w1.data()[i];
    for (index_t i = 0; i < pool.s2.numel(); ++i) same = same && pool.s2.data()[i] == before.s2.data()[i];
    return same;
  };
  const auto prefill = [&](const seqmix::TitansMlpInputs& in, const seqmix::TitansMlpOptions& o) {
    seqmix::titans_mlp(in, {y.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()}, o);
  };
  const auto reference = [&](const seqmix::TitansMlpInputs& in, const seqmix::TitansMlpOptions& o) {
    seqmix::reference::titans_mlp(in, {y.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()}, o);
  };
  seqmix::TitansMlpInputs base = p.inputs(false);
  base.initial_w1 = pool.w1.cview(), base.initial_w2 = pool.w2.cview();
  base.initial_s1 = pool.s1.cview(), base.initial_s2 = pool.s2.cview();
  const std::vector<std::int64_t> cu_bad_end = {0, 3, 7}, cu_ok = {0, 5, 8}, cu_down = {0, 6, 5, 8};
  const std::vector<std::int64_t> slots_ok = {2, 0}, slots_range = {3, 0}, slots_dup = {1, 1}, slots_short = {1};
  const std::vector<std::uint8_t> fresh = {1, 0};
  seqmix::TitansMlpOptions o;
  seqmix::TitansMlpInputs in = base;
  in.batch.cu_seqlens = cu_bad_end, in.batch.state_indices = slots_ok;
  st::require_shape_error("cu_seqlens", [&] { prefill(in, o); });
  in.batch.cu_seqlens = cu_down;
  st::require_shape_error("cu_seqlens", [&] { reference(in, o); });
  in.batch.cu_seqlens = cu_ok, in.batch.state_indices = slots_range;
  st::require_shape_error("state_indices", [&] { prefill(in, o); });
  in.batch.state_indices = slots_dup;
  st::require_shape_error("state_indices", [&] { prefill(in, o); });
  in.batch.state_indices = slots_short;
  st::require_shape_error("state_indices", [&] { reference(in, o); });
  in.batch.state_indices = {};
  st::require_shape_error("state", [&] { prefill(in, o); });  // 3 state rows for 2 packed sequences
  in.batch.state_indices = slots_ok, in.batch.has_initial_state = fresh;
  st::require_shape_error("has_initial_state", [&] { prefill(in, o); });
  in.batch.has_initial_state = {};
  o.reverse = true;
  st::require_shape_error("options.reverse", [&] { prefill(in, o); });
  st::require_shape_error("options.reverse", [&] { reference(in, o); });
  o.reverse = false;
  REQUIRE(untouched());
  // Steps: cu_seqlens, has_initial_state, a slot out of range, the wrong number of slots.
  Tensor<float, 3> ys({1, 1, 4});
  ys.fill(7.f);
  const std::vector<std::int64_t> cu_step = {0, 1}, one_bad = {3}, two = {0, 1};
  const std::vector<std::uint8_t> fresh1 = {0};
  const auto step = [&](const seqmix::TitansMlpStepInputs& si) {
    seqmix::titans_mlp_step(si, {ys.view(), pool.w1.view(), pool.w2.view(), pool.s1.view(), pool.s2.view()});
  };
  seqmix::TitansMlpStepInputs si = p.step(0);
  si.batch.cu_seqlens = cu_step;
  st::require_shape_error("cu_seqlens", [&] { step(si); });
  si.batch.cu_seqlens = {}, si.batch.state_indices = one_bad;
  st::require_shape_error("state_indices", [&] { step(si); });
  si.batch.state_indices = two;
  st::require_shape_error("state_indices", [&] { step(si); });
  si.batch.state_indices = {}, si.batch.has_initial_state = fresh1;
  st::require_shape_error("has_initial_state", [&] { step(si); });
  si.batch.has_initial_state = {};
  st::require_shape_error("w1", [&] { step(si); });  // without slots the states need B = 1 rows, the pool has 3
  REQUIRE(untouched());
  for (float e : ys) REQUIRE(e == 7.f);
}
