// titans (linear memory) serving (SequenceBatch): packed sequences (cu_seqlens, ragged lengths
// 17 1 40 0 9 1 33 around chunk 8), state slots in pools with -1 padding and has_initial_state,
// in the chunked and recurrent prefills (every loss / retention kind) and the step, each against
// per-sequence dense reference calls on copies of the sequence's state rows; padding rows and
// unused slots untouched; bad batches refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"
#include "seqmix_testing/titans_problem.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TitansOptions;
namespace st = seqmix::testing;

const std::vector<index_t> kLengths = {17, 1, 40, 0, 9, 1, 33};
constexpr index_t kHK = 1, kHV = 2, kK = 16, kV = 12;  // GQA; V = 12 leaves a SIMD tail

// Row r of a [P,HV,K,V] pool as its own [1,HV,K,V] copy, and back.
Tensor<float, 4> pool_row(const Tensor<float, 4>& x, index_t r) {
  Tensor<float, 4> out({1, x.size(1), x.size(2), x.size(3)});
  for (index_t a = 0; a < x.size(1); ++a)
    for (index_t b = 0; b < x.size(2); ++b)
      for (index_t c = 0; c < x.size(3); ++c) out(0, a, b, c) = x(r, a, b, c);
  return out;
}
void store_row(Tensor<float, 4>& x, index_t r, const Tensor<float, 4>& one) {
  for (index_t a = 0; a < x.size(1); ++a)
    for (index_t b = 0; b < x.size(2); ++b)
      for (index_t c = 0; c < x.size(3); ++c) x(r, a, b, c) = one(0, a, b, c);
}

// Memora reads log M: its pools draw positive entries and are scaled onto the simplices.
st::TitansDraw draw_for(const TitansOptions& o) {
  st::TitansDraw draw;
  if (o.retention == seqmix::TitansRetention::softmax_kl) draw.memory_lo = 0.1f, draw.memory_hi = 1.f;
  return draw;
}
void onto_simplices(Tensor<float, 4>& m, const TitansOptions& o) {
  if (o.retention != seqmix::TitansRetention::softmax_kl) return;
  const bool key = o.softmax_axis == seqmix::TitansSoftmaxAxis::key;
  for (index_t p = 0; p < m.size(0); ++p)
    for (index_t h = 0; h < m.size(1); ++h)
      for (index_t i = 0; i < (key ? m.size(3) : m.size(2)); ++i) {
        double sum = 0;
        for (index_t j = 0; j < (key ? m.size(2) : m.size(3)); ++j) sum += key ? m(p, h, j, i) : m(p, h, i, j);
        for (index_t j = 0; j < (key ? m.size(2) : m.size(3)); ++j) (key ? m(p, h, j, i) : m(p, h, i, j)) /= float(sum);
      }
}

using Prefill = std::function<void(const seqmix::TitansInputs&, const seqmix::TitansOutputs&, const TitansOptions&)>;

const Prefill kFast = [](const seqmix::TitansInputs& in, const seqmix::TitansOutputs& out, const TitansOptions& o) {
  seqmix::titans(in, out, o, st::two_thread_pool());
};
const Prefill kReference = [](const seqmix::TitansInputs& in, const seqmix::TitansOutputs& out,
                              const TitansOptions& o) { seqmix::reference::titans(in, out, o); };

// How a packed case hands states over.
struct PackedCase {
  std::vector<std::int64_t> slots;  // empty: states [N,...], sequence n on row n
  std::vector<std::uint8_t> fresh;  // has_initial_state (empty: not given)
  bool initial = true;              // initial states given (the pool, read in place)
  bool final_states = true;         // final states written (the pool itself)
  bool per_token_delta = false;     // Huber's delta_t as an input
};

// Packed tokens [1,total_T,...]; sequence n on pool row slots[n] (n itself without slots), updated in
// place. The expectation: each running sequence a dense B = 1 reference call on copies of its rows.
void packed_check(const Prefill& run, const PackedCase& pc, index_t pool_rows, const TitansOptions& o, double tol,
                  std::uint64_t seed) {
  index_t total = 0;
  std::vector<std::int64_t> cu = {0};
  for (index_t len : kLengths) total += len, cu.push_back(total);
  INFO("seed " << seed << ", total_T " << total << ", pool " << pool_rows);
  st::TitansProblem p(1, total, kHK, kHV, kK, kV, seed);
  if (o.loss == seqmix::TitansLoss::l3)  // the cubic gradient needs a smaller step to stay bounded
    for (float& x : p.theta) x *= 0.1f;
  const Tensor<float, 3> delta = st::random_tensor<3>({1, total, kHV}, seed + 20, 0.1f, 2.f);
  const st::TitansProblem pool_src(pool_rows, 1, kHK, kHV, kK, kV, seed + 50, draw_for(o));
  Tensor<float, 4> pm = pool_src.m0, ps = pool_src.s0;
  onto_simplices(pm, o);
  Tensor<float, 4> em = pm, es = ps;  // the expected pools
  Tensor<float, 4> y({1, total, kHV, kV}), y_expected({1, total, kHV, kV});
  y.fill(7.f), y_expected.fill(7.f);
  for (std::size_t n = 0; n < kLengths.size(); ++n) {
    const index_t row = pc.slots.empty() ? index_t(n) : index_t(pc.slots[n]);
    if (row < 0) continue;
    Tensor<float, 4> m = pool_row(em, row), s = pool_row(es, row);
    const index_t t0 = index_t(cu[n]), len = kLengths[n];
    seqmix::TitansInputs in;
    in.q = p.q.cview().slice(1, t0, len), in.k = p.k.cview().slice(1, t0, len), in.v = p.v.cview().slice(1, t0, len);
    in.alpha = p.alpha.cview().slice(1, t0, len), in.eta = p.eta.cview().slice(1, t0, len);
    in.theta = p.theta.cview().slice(1, t0, len);
    if (pc.per_token_delta) in.huber_delta = delta.cview().slice(1, t0, len);
    const bool reads = pc.initial && (pc.fresh.empty() || pc.fresh[n] != 0);
    if (reads) in.initial_memory = m.cview(), in.initial_momentum = s.cview();
    seqmix::TitansOutputs out{y_expected.view().slice(1, t0, len)};
    if (pc.final_states) out.final_memory = m.view(), out.final_momentum = s.view();
    seqmix::reference::titans(in, out, o);
    store_row(em, row, m), store_row(es, row, s);
  }
  seqmix::TitansInputs in = p.inputs(false);
  if (pc.per_token_delta) in.huber_delta = delta.cview();
  if (pc.initial) in.initial_memory = pm.cview(), in.initial_momentum = ps.cview();
  in.batch.cu_seqlens = cu;
  if (!pc.slots.empty()) in.batch.state_indices = pc.slots;
  if (!pc.fresh.empty()) in.batch.has_initial_state = pc.fresh;
  seqmix::TitansOutputs out{y.view()};
  if (pc.final_states) out.final_memory = pm.view(), out.final_momentum = ps.view();
  run(in, out, o);
  st::require_close("y", y.cview(), y_expected.cview(), tol);
  st::require_close("memory pool", pm.cview(), em.cview(), tol);
  st::require_close("momentum pool", ps.cview(), es.cview(), tol);
  // Tokens of padding sequences keep the caller's contents exactly.
  for (std::size_t n = 0; n < kLengths.size(); ++n)
    if (!pc.slots.empty() && pc.slots[n] < 0)
      for (index_t t = index_t(cu[n]); t < index_t(cu[n + 1]); ++t)
        for (index_t h = 0; h < kHV; ++h)
          for (index_t c = 0; c < kV; ++c) REQUIRE(y(0, t, h, c) == 7.f);
}

struct NamedOptions {
  const char* name;
  TitansOptions options;
};

std::vector<NamedOptions> option_kinds() {
  std::vector<NamedOptions> kinds;
  TitansOptions o;
  o.chunk_size = 8;  // lengths 17, 9, 33 end in ragged chunks, 40 in whole ones, 1 below one
  kinds.push_back({"chunked", o});
  o.algorithm = seqmix::TitansAlgorithm::recurrent;
  kinds.push_back({"recurrent", o});
  o.algorithm = seqmix::TitansAlgorithm::chunked;
  o.loss = seqmix::TitansLoss::l1;
  kinds.push_back({"l1", o});
  o.loss = seqmix::TitansLoss::l3;
  kinds.push_back({"l3", o});
  o.loss = seqmix::TitansLoss::huber, o.huber_delta = 0.5f;
  kinds.push_back({"huber", o});
  o.loss = seqmix::TitansLoss::l2, o.retention = seqmix::TitansRetention::lq_normalized;
  kinds.push_back({"moneta", o});
  o.retention = seqmix::TitansRetention::softmax_kl;
  kinds.push_back({"memora key", o});
  o.softmax_axis = seqmix::TitansSoftmaxAxis::value;
  kinds.push_back({"memora value", o});
  return kinds;
}

}  // namespace

TEST_CASE("titans serving: packed prefills equal per-sequence reference calls", "[titans][serving]") {
  const std::vector<NamedOptions> kinds = option_kinds();
  std::uint64_t seed = 9000;
  for (const NamedOptions& kind : kinds) {
    for (bool fast : {true, false}) {
      INFO(kind.name << (fast ? ", fast" : ", reference"));
      const Prefill& run = fast ? kFast : kReference;
      const double tol = fast ? 2e-4 : 1e-6;
      const bool huber = kind.options.loss == seqmix::TitansLoss::huber;
      {
        INFO("packed, states [N,...]");
        packed_check(run, {}, index_t(kLengths.size()), kind.options, tol, seed += 100);
      }
      {
        INFO("packed, slots with padding, has_initial_state");
        PackedCase pc;
        pc.slots = {3, 0, -1, 5, 7, 1, 8};
        pc.fresh = {1, 0, 1, 1, 0, 1, 1};
        pc.per_token_delta = huber;
        packed_check(run, pc, 10, kind.options, tol, seed += 100);
      }
    }
  }
}

TEST_CASE("titans serving: packed prefills without initial or final states", "[titans][serving]") {
  TitansOptions o;
  o.chunk_size = 8;
  for (bool fast : {true, false}) {
    INFO((fast ? "fast" : "reference"));
    const Prefill& run = fast ? kFast : kReference;
    const double tol = fast ? 2e-4 : 1e-6;
    PackedCase none;
    none.initial = false, none.final_states = false;
    {
      INFO("y only");
      packed_check(run, none, index_t(kLengths.size()), o, tol, 9900);
    }
    PackedCase finals;
    finals.initial = false, finals.slots = {6, -1, 2, 0, 4, 1, 3};
    {
      INFO("final states into slots, from zeros");
      packed_check(run, finals, 7, o, tol, 9910);
    }
  }
}

TEST_CASE("titans serving: dense slotted prefill, reverse included, equals per-row reference calls",
          "[titans][serving]") {
  const index_t B = 3, T = 21;
  const st::TitansProblem p(B, T, kHK, kHV, kK, kV, 9500);
  const st::TitansProblem pool_src(4, 1, kHK, kHV, kK, kV, 9550);
  const std::vector<std::int32_t> slots = {2, -1, 0};
  const std::vector<std::uint8_t> fresh = {1, 1, 0};
  for (bool reverse : {false, true})
    for (auto algorithm : {seqmix::TitansAlgorithm::chunked, seqmix::TitansAlgorithm::recurrent}) {
      INFO("reverse " << reverse << ", recurrent " << (algorithm == seqmix::TitansAlgorithm::recurrent));
      TitansOptions o;
      o.chunk_size = 8, o.reverse = reverse, o.algorithm = algorithm;
      Tensor<float, 4> pm = pool_src.m0, ps = pool_src.s0, em = pm, es = ps;
      Tensor<float, 4> y({B, T, kHV, kV}), y_expected({B, T, kHV, kV});
      y.fill(7.f), y_expected.fill(7.f);
      for (index_t b = 0; b < B; ++b) {
        if (slots[b] < 0) continue;
        Tensor<float, 4> m = pool_row(em, slots[b]), s = pool_row(es, slots[b]);
        seqmix::TitansInputs in = p.inputs(false);
        in.q = in.q.slice(0, b, 1), in.k = in.k.slice(0, b, 1), in.v = in.v.slice(0, b, 1);
        in.alpha = in.alpha.slice(0, b, 1), in.eta = in.eta.slice(0, b, 1), in.theta = in.theta.slice(0, b, 1);
        if (fresh[b]) in.initial_memory = m.cview(), in.initial_momentum = s.cview();
        seqmix::reference::titans(in, {y_expected.view().slice(0, b, 1), m.view(), s.view()}, o);
        store_row(em, slots[b], m), store_row(es, slots[b], s);
      }
      seqmix::TitansInputs in = p.inputs(false);
      in.initial_memory = pm.cview(), in.initial_momentum = ps.cview();
      in.batch.state_indices = slots, in.batch.has_initial_state = fresh;
      seqmix::titans(in, {y.view(), pm.view(), ps.view()}, o, st::two_thread_pool());
      st::require_close("y", y.cview(), y_expected.cview(), 2e-4);
      st::require_close("memory pool", pm.cview(), em.cview(), 2e-4);
      st::require_close("momentum pool", ps.cview(), es.cview(), 2e-4);
      for (index_t t = 0; t < T; ++t)
        for (index_t c = 0; c < kV; ++c) REQUIRE(y(1, t, 0, c) == 7.f);  // the padding row
      for (index_t h = 0; h < kHV; ++h)                                   // the unused slot 1
        for (index_t r = 0; r < kK; ++r)
          for (index_t c = 0; c < kV; ++c) REQUIRE(pm(1, h, r, c) == pool_src.m0(1, h, r, c));
    }
}

TEST_CASE("titans serving: packed prefill then slotted steps equal one reference call per sequence",
          "[titans][serving]") {
  // Three sequences of a 5-slot pool prefilled packed (lengths 11, 1, 8), then 6 steps each
  // through their slots (a padding row beside them): the same as one reference call on 11 + 6,
  // 1 + 6 and 8 + 6 tokens.
  const std::vector<index_t> lengths = {11, 1, 8};
  const std::vector<std::int64_t> slots = {4, 0, 2};
  const index_t steps = 6, N = 3, P = 5;
  for (auto retention : {seqmix::TitansRetention::decay, seqmix::TitansRetention::softmax_kl}) {
    INFO("softmax_kl " << (retention == seqmix::TitansRetention::softmax_kl));
    TitansOptions o;
    o.chunk_size = 4, o.retention = retention;
    // Token tensors [N, 11 + steps, ...]: sequence n's tokens are its row's first lengths[n] + steps.
    const index_t Tmax = 11 + steps;
    const st::TitansProblem p(N, Tmax, kHK, kHV, kK, kV, 9700);
    // Packed prefill inputs copied out of the rows.
    index_t total = 0;
    std::vector<std::int64_t> cu = {0};
    for (index_t len : lengths) total += len, cu.push_back(total);
    st::TitansProblem packed(1, total, kHK, kHV, kK, kV, 9701);
    for (index_t n = 0; n < N; ++n)
      for (index_t j = 0; j < lengths[n]; ++j) {
        const index_t t = index_t(cu[n]) + j;
        for (index_t h = 0; h < kHK; ++h)
          for (index_t r = 0; r < kK; ++r) packed.q(0, t, h, r) = p.q(n, j, h, r), packed.k(0, t, h, r) = p.k(n, j, h, r);
        for (index_t h = 0; h < kHV; ++h) {
          for (index_t c = 0; c < kV; ++c) packed.v(0, t, h, c) = p.v(n, j, h, c);
          packed.alpha(0, t, h) = p.alpha(n, j, h), packed.eta(0, t, h) = p.eta(n, j, h);
          packed.theta(0, t, h) = p.theta(n, j, h);
        }
      }
    Tensor<float, 4> pm({P, kHV, kK, kV}), ps({P, kHV, kK, kV});
    pm.fill(-3.f), ps.fill(-3.f);  // garbage in every slot: all three sequences start fresh
    const std::vector<std::uint8_t> fresh = {0, 0, 0};
    seqmix::TitansInputs in = packed.inputs(false);
    in.initial_memory = pm.cview(), in.initial_momentum = ps.cview();
    in.batch.cu_seqlens = cu, in.batch.state_indices = slots, in.batch.has_initial_state = fresh;
    Tensor<float, 4> y({1, total, kHV, kV});
    seqmix::titans(in, {y.view(), pm.view(), ps.view()}, o, st::two_thread_pool());
    // Steps: token row N is padding (slot -1).
    const std::vector<std::int64_t> step_slots = {4, 0, 2, -1};
    std::vector<Tensor<float, 3>> ys;
    for (index_t i = 0; i < steps; ++i) {
      Tensor<float, 3> q({N + 1, kHK, kK}), k({N + 1, kHK, kK}), v({N + 1, kHV, kV});
      Tensor<float, 2> alpha({N + 1, kHV}), eta({N + 1, kHV}), theta({N + 1, kHV});
      q.fill(0.f), k.fill(0.f), v.fill(0.f), alpha.fill(0.f), eta.fill(0.f), theta.fill(0.f);
      for (index_t n = 0; n < N; ++n) {
        const index_t t = lengths[n] + i;
        for (index_t h = 0; h < kHK; ++h)
          for (index_t r = 0; r < kK; ++r) q(n, h, r) = p.q(n, t, h, r), k(n, h, r) = p.k(n, t, h, r);
        for (index_t h = 0; h < kHV; ++h) {
          for (index_t c = 0; c < kV; ++c) v(n, h, c) = p.v(n, t, h, c);
          alpha(n, h) = p.alpha(n, t, h), eta(n, h) = p.eta(n, t, h), theta(n, h) = p.theta(n, t, h);
        }
      }
      seqmix::TitansStepInputs si{q.cview(), k.cview(), v.cview(), alpha.cview(), eta.cview(), theta.cview()};
      si.batch.state_indices = step_slots;
      Tensor<float, 3> ys_i({N + 1, kHV, kV});
      ys_i.fill(7.f);
      seqmix::titans_step(si, {ys_i.view(), pm.view(), ps.view()}, o,
                          i % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      for (index_t h = 0; h < kHV; ++h)
        for (index_t c = 0; c < kV; ++c) REQUIRE(ys_i(N, h, c) == 7.f);  // the padding row
      ys.push_back(ys_i);
    }
    for (index_t n = 0; n < N; ++n) {
      INFO("sequence " << n << " (" << lengths[n] << " + " << steps << " tokens)");
      const index_t T = lengths[n] + steps;
      seqmix::TitansInputs rin = p.inputs(false);
      for (auto* view : {&rin.q, &rin.k}) *view = view->slice(0, n, 1).slice(1, 0, T);
      rin.v = rin.v.slice(0, n, 1).slice(1, 0, T);
      for (auto* view : {&rin.alpha, &rin.eta, &rin.theta}) *view = view->slice(0, n, 1).slice(1, 0, T);
      Tensor<float, 4> ry({1, T, kHV, kV}), rm({1, kHV, kK, kV}), rs({1, kHV, kK, kV});
      seqmix::reference::titans(rin, {ry.view(), rm.view(), rs.view()}, o);
      Tensor<float, 4> got_y({1, T, kHV, kV});
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < kHV; ++h)
          for (index_t c = 0; c < kV; ++c)
            got_y(0, t, h, c) = t < lengths[n] ? y(0, index_t(cu[n]) + t, h, c) : ys[std::size_t(t - lengths[n])](n, h, c);
      st::require_close("y", got_y.cview(), ry.cview(), 2e-4);
      st::require_close("memory", pool_row(pm, slots[n]).cview(), rm.cview(), 2e-4);
      st::require_close("momentum", pool_row(ps, slots[n]).cview(), rs.cview(), 2e-4);
    }
    // The two slots no sequence names keep their contents.
    for (index_t slot : {1, 3})
      for (index_t h = 0; h < kHV; ++h)
        for (index_t r = 0; r < kK; ++r)
          for (index_t c = 0; c < kV; ++c) REQUIRE((pm(slot, h, r, c) == -3.f && ps(slot, h, r, c) == -3.f));
  }
}

TEST_CASE("titans serving: slotted steps with fresh rows equal dense steps", "[titans][serving]") {
  const st::TitansProblem p(4, 3, kHK, kHV, kK, kV, 9600);
  const st::TitansProblem pool_src(5, 1, kHK, kHV, kK, kV, 9650);
  const std::vector<std::int32_t> slots = {2, -1, 0, 3};
  const std::vector<std::uint8_t> fresh = {1, 1, 0, 1};  // row 2 starts over at its first step
  TitansOptions o;
  o.loss = seqmix::TitansLoss::l3;
  Tensor<float, 4> pm = pool_src.m0, ps = pool_src.s0, em = pm, es = ps;
  Tensor<float, 3> y({4, kHV, kV}), y_expected({4, kHV, kV});
  y.fill(7.f), y_expected.fill(7.f);
  for (index_t t = 0; t < p.T; ++t) {
    for (index_t b = 0; b < 4; ++b) {
      if (slots[b] < 0) continue;
      Tensor<float, 4> m = pool_row(em, slots[b]), s = pool_row(es, slots[b]);
      if (t == 0 && !fresh[b]) m.fill(0.f), s.fill(0.f);
      seqmix::TitansStepInputs si = p.step(t);
      si.q = si.q.slice(0, b, 1), si.k = si.k.slice(0, b, 1), si.v = si.v.slice(0, b, 1);
      si.alpha = si.alpha.slice(0, b, 1), si.eta = si.eta.slice(0, b, 1), si.theta = si.theta.slice(0, b, 1);
      seqmix::titans_step(si, {y_expected.view().slice(0, b, 1), m.view(), s.view()}, o);
      store_row(em, slots[b], m), store_row(es, slots[b], s);
    }
    seqmix::TitansStepInputs si = p.step(t);
    si.batch.state_indices = slots;
    if (t == 0) si.batch.has_initial_state = fresh;
    seqmix::titans_step(si, {y.view(), pm.view(), ps.view()}, o,
                        t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    st::require_close("y", y.cview(), y_expected.cview(), 1e-6);
  }
  st::require_close("memory pool", pm.cview(), em.cview(), 1e-6);
  st::require_close("momentum pool", ps.cview(), es.cview(), 1e-6);
  for (index_t h = 0; h < kHV; ++h)
    for (index_t c = 0; c < kV; ++c) REQUIRE(y(1, h, c) == 7.f);  // the padding row
  for (index_t h = 0; h < kHV; ++h)                              // the unused slots 1 and 4
    for (index_t r = 0; r < kK; ++r)
      for (index_t c = 0; c < kV; ++c)
        REQUIRE((pm(1, h, r, c) == pool_src.m0(1, h, r, c) && ps(4, h, r, c) == pool_src.s0(4, h, r, c)));
}

TEST_CASE("titans serving: bad batches are refused before any write", "[titans][serving]") {
  const index_t total = 8;
  const st::TitansProblem p(1, total, kHK, kHV, kK, kV, 9800);
  const st::TitansProblem pool_src(3, 1, kHK, kHV, kK, kV, 9850);
  Tensor<float, 4> pm = pool_src.m0, ps = pool_src.s0;
  Tensor<float, 4> y({1, total, kHV, kV});
  y.fill(7.f);
  const auto untouched = [&] {
    bool same = true;
    for (float e : y) same = same && e == 7.f;
    for (index_t i = 0; i < pm.numel(); ++i) same = same && pm.data()[i] == pool_src.m0.data()[i];
    for (index_t i = 0; i < ps.numel(); ++i) same = same && ps.data()[i] == pool_src.s0.data()[i];
    return same;
  };
  const auto refused = [&](const char* argument, const seqmix::SequenceBatch& batch, const TitansOptions& o) {
    seqmix::TitansInputs in = p.inputs(false);
    in.initial_memory = pm.cview(), in.initial_momentum = ps.cview();
    in.batch = batch;
    INFO("argument " << argument);
    st::require_shape_error(argument, [&] { seqmix::titans(in, {y.view(), pm.view(), ps.view()}, o); });
    st::require_shape_error(argument, [&] { seqmix::reference::titans(in, {y.view(), pm.view(), ps.view()}, o); });
    REQUIRE(untouched());
  };
  const TitansOptions o;
  // IndexList does not own its vector: keep each list alive for the call.
  const std::vector<std::int64_t> cu_start = {1, 8}, cu_down = {0, 5, 3, 8}, cu_end = {0, 4, 7};
  const std::vector<std::int64_t> cu_ok = {0, 3, 8}, slot_high = {0, 3}, slot_low = {-2, 0}, slot_twice = {1, 1};
  const std::vector<std::int64_t> slot_count = {0, 1, 2};
  seqmix::SequenceBatch b;
  b.cu_seqlens = cu_start;
  refused("cu_seqlens", b, o);
  b.cu_seqlens = cu_down;
  refused("cu_seqlens", b, o);
  b.cu_seqlens = cu_end;
  refused("cu_seqlens", b, o);
  b.cu_seqlens = cu_ok;
  refused("state", b, o);  // two sequences, a state of three rows without slots
  b.state_indices = slot_high;
  refused("state_indices", b, o);
  b.state_indices = slot_low;
  refused("state_indices", b, o);
  b.state_indices = slot_twice;
  refused("state_indices", b, o);
  b.state_indices = slot_count;
  refused("state_indices", b, o);
  const std::vector<std::uint8_t> flags_count = {1, 1, 1};
  const std::vector<std::int64_t> slots_ok = {2, 0};
  b.state_indices = slots_ok;
  b.has_initial_state = flags_count;
  refused("has_initial_state", b, o);
  b.has_initial_state = seqmix::FlagList();
  {
    TitansOptions rev;
    rev.reverse = true;
    refused("options.reverse", b, rev);
  }
  {
    // Packed token tensors must have batch 1.
    const st::TitansProblem p2(2, 4, kHK, kHV, kK, kV, 9860);
    seqmix::TitansInputs in = p2.inputs(false);
    in.batch.cu_seqlens = cu_ok;
    Tensor<float, 4> y2({2, 4, kHV, kV});
    st::require_shape_error("cu_seqlens", [&] { seqmix::titans(in, {y2.view()}, o); });
  }
  {
    // Initial and final states with different row counts.
    Tensor<float, 4> fm({2, kHV, kK, kV});
    seqmix::TitansInputs in = p.inputs(false);
    in.initial_memory = pm.cview(), in.batch.cu_seqlens = cu_ok, in.batch.state_indices = slots_ok;
    st::require_shape_error("final_memory", [&] { seqmix::titans(in, {y.view(), fm.view()}, o); });
    REQUIRE(untouched());
  }
  {
    // Memora reads only the named slots: garbage in slot 1 (unused) passes, in slot 2 (read) not.
    TitansOptions memora;
    memora.retention = seqmix::TitansRetention::softmax_kl;
    Tensor<float, 4> mem({3, kHV, kK, kV});
    mem.fill(1.f / float(kK));
    for (index_t r = 0; r < kK; ++r) mem(1, 0, r, 0) = -1.f;
    seqmix::TitansInputs in = p.inputs(false);
    in.initial_memory = mem.cview(), in.batch.cu_seqlens = cu_ok, in.batch.state_indices = slots_ok;
    seqmix::titans(in, {y.view()}, memora);  // reads slots 2 and 0
    for (index_t r = 0; r < kK; ++r) mem(2, 1, r, 3) = -1.f;
    y.fill(7.f);
    st::require_shape_error("initial_memory", [&] { seqmix::titans(in, {y.view()}, memora); });
    for (float e : y) REQUIRE(e == 7.f);
    const std::vector<std::uint8_t> skip_two = {0, 1};  // slot 2 starts fresh: not read
    in.batch.has_initial_state = skip_two;
    seqmix::titans(in, {y.view()}, memora);
  }
  // Steps: cu_seqlens, slots out of range or twice, flags not one per row; nothing written.
  {
    y.fill(7.f);
    Tensor<float, 3> ys({2, kHV, kV});
    ys.fill(7.f);
    const st::TitansProblem sp(2, 1, kHK, kHV, kK, kV, 9870);
    const auto step_refused = [&](const char* argument, const seqmix::SequenceBatch& batch) {
      seqmix::TitansStepInputs si = sp.step(0);
      si.batch = batch;
      INFO("step, argument " << argument);
      st::require_shape_error(argument, [&] { seqmix::titans_step(si, {ys.view(), pm.view(), ps.view()}, o); });
      for (float e : ys) REQUIRE(e == 7.f);
      REQUIRE(untouched());
    };
    seqmix::SequenceBatch sb;
    sb.cu_seqlens = cu_ok;
    step_refused("cu_seqlens", sb);
    sb.cu_seqlens = seqmix::IndexList();
    step_refused("memory", sb);  // no slots: the state must have B = 2 rows, the pool has 3
    sb.state_indices = slot_high;
    step_refused("state_indices", sb);
    sb.state_indices = slot_twice;
    step_refused("state_indices", sb);
    sb.state_indices = slots_ok;
    sb.has_initial_state = flags_count;
    step_refused("has_initial_state", sb);
  }
}
