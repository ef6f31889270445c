// Serving forms of the recurrent cells (issue 17): packed batches (cu_seqlens), state slots
// (state_indices, -1 padding) and has_initial_state for lstm, gru, slstm and mlstm (chunked and
// recurrent), their references and their steps. Each packed / slotted call must equal the same
// sequences run one by one as plain dense calls; padding rows and unnamed pool rows stay
// untouched; bad slots and lengths are refused before anything is written.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

enum class SrvCell { lstm, gru, slstm };
const SrvCell kSrvCells[] = {SrvCell::lstm, SrvCell::gru, SrvCell::slstm};

index_t srv_gates(SrvCell k) { return k == SrvCell::gru ? 3 : 4; }
index_t srv_states(SrvCell k) { return k == SrvCell::lstm ? 2 : k == SrvCell::gru ? 1 : 4; }
const char* srv_name(SrvCell k) { return k == SrvCell::lstm ? "lstm" : k == SrvCell::gru ? "gru" : "slstm"; }

void srv_prefill(SrvCell k, bool reference, const seqmix::RnnInputs& in, const seqmix::RnnOutputs& out,
                 const seqmix::RnnOptions& o, const seqmix::Executor& ex = seqmix::serial_executor()) {
  if (reference) {
    switch (k) {
      case SrvCell::lstm: return seqmix::reference::lstm(in, out, o);
      case SrvCell::gru: return seqmix::reference::gru(in, out, o);
      case SrvCell::slstm: return seqmix::reference::slstm(in, out, o);
    }
  }
  switch (k) {
    case SrvCell::lstm: return seqmix::lstm(in, out, o, ex);
    case SrvCell::gru: return seqmix::gru(in, out, o, ex);
    case SrvCell::slstm: return seqmix::slstm(in, out, o, ex);
  }
}

void srv_step(SrvCell k, const seqmix::RnnStepInputs& in, const seqmix::RnnStepOutputs& out,
              const seqmix::RnnOptions& o, const seqmix::Executor& ex = seqmix::serial_executor()) {
  switch (k) {
    case SrvCell::lstm: return seqmix::lstm_step(in, out, o, ex);
    case SrvCell::gru: return seqmix::gru_step(in, out, o, ex);
    case SrvCell::slstm: return seqmix::slstm_step(in, out, o, ex);
  }
}

// A deep copy of a view as a contiguous tensor.
template <class T, std::size_t R>
Tensor<float, R> srv_copy(const TensorView<T, R>& v) {
  Tensor<float, R> out(v.shape());
  TensorView<float, R> o = out.view();
  // Walk the elements by flat index (row-major).
  const index_t n = out.numel();
  for (index_t flat = 0; flat < n; ++flat) {
    std::array<index_t, R> idx{};
    index_t rest = flat;
    for (std::size_t d = R; d-- > 0;) {
      idx[d] = rest % v.size(d);
      rest /= v.size(d);
    }
    const T* src = v.data();
    float* dst = o.data();
    for (std::size_t d = 0; d < R; ++d) src += idx[d] * v.stride(d), dst += idx[d] * o.stride(d);
    *dst = *src;
  }
  return out;
}

template <std::size_t R>
bool srv_all_equal(const Tensor<float, R>& t, float value) {
  for (float x : t)
    if (x != value) return false;
  return true;
}

template <std::size_t R>
bool srv_same(const Tensor<float, R>& a, const Tensor<float, R>& b) {
  for (index_t i = 0; i < a.numel(); ++i)
    if (a.data()[i] != b.data()[i]) return false;
  return true;
}

// A serving layout: sequence lengths (packed) and their slots in a pool of P rows.
struct SrvLayout {
  std::vector<std::int64_t> cu;      // [N+1]
  std::vector<std::int32_t> slots;   // [N], -1 = padding
  std::vector<std::uint8_t> fresh;   // [N] has_initial_state
  index_t pool = 0;
  index_t total() const { return static_cast<index_t>(cu.back()); }
  index_t sequences() const { return static_cast<index_t>(slots.size()); }
};

// Ragged lengths including 1 and 0, a padding sequence, a fresh slot, unnamed pool rows.
SrvLayout srv_layout() {
  SrvLayout l;
  const index_t lengths[] = {17, 1, 5, 0, 9, 1};
  l.cu.push_back(0);
  for (index_t t : lengths) l.cu.push_back(l.cu.back() + t);
  l.slots = {4, 0, -1, 6, 2, 5};
  l.fresh = {1, 1, 1, 1, 0, 1};
  l.pool = 8;
  return l;
}

struct SrvCellProblem {
  SrvCell kind;
  index_t I = 6, H = 16, heads = 1;
  Tensor<float, 2> w_ih, w_hh;
  Tensor<float, 1> b_ih, b_hh;

  SrvCellProblem(SrvCell k, index_t H_, index_t heads_, std::uint64_t seed) : kind(k), H(H_), heads(heads_) {
    const index_t G = srv_gates(k);
    const float a = 1.f / std::sqrt(static_cast<float>(H / heads));
    w_ih = st::random_tensor<2>({G * H, I}, seed + 1, -a, a);
    w_hh = st::random_tensor<2>({G * H, H / heads}, seed + 2, -a, a);
    b_ih = st::random_tensor<1>({G * H}, seed + 3, -a, a);
    b_hh = st::random_tensor<1>({G * H}, seed + 4, -a, a);
  }
  seqmix::RnnOptions options() const {
    seqmix::RnnOptions o;
    o.heads = heads;
    return o;
  }
  seqmix::RnnInputs inputs(const Tensor<float, 3>& x) const {
    seqmix::RnnInputs in;
    in.x = x.cview(), in.w_ih = w_ih.cview(), in.w_hh = w_hh.cview(), in.b_ih = b_ih.cview(), in.b_hh = b_hh.cview();
    return in;
  }
  // A valid pool of states (sLSTM's normalizer positive).
  Tensor<float, 3> pool(index_t rows, std::uint64_t seed) const {
    Tensor<float, 3> p = st::random_tensor<3>({rows, srv_states(kind), H}, seed, -0.5f, 0.5f);
    if (kind == SrvCell::slstm)
      for (index_t r = 0; r < rows; ++r)
        for (index_t j = 0; j < H; ++j) p(r, 2, j) = 0.5f + std::abs(p(r, 2, j)) * 3;
    return p;
  }
};

// The packed, slotted call against each sequence run alone as a dense call (same form).
void srv_check_packed_cell(const SrvCellProblem& p, bool reference, const seqmix::Executor& ex) {
  const SrvLayout l = srv_layout();
  const index_t S = srv_states(p.kind);
  const Tensor<float, 3> x = st::random_tensor<3>({1, l.total(), p.I}, 77);
  const Tensor<float, 3> pool0 = p.pool(l.pool, 78);
  Tensor<float, 3> pool = pool0, y({1, l.total(), p.H});
  y.fill(7.f);
  seqmix::RnnInputs in = p.inputs(x);
  in.initial_state = pool.cview();
  in.batch.cu_seqlens = l.cu, in.batch.state_indices = l.slots, in.batch.has_initial_state = l.fresh;
  srv_prefill(p.kind, reference, in, {y.view(), pool.view()}, p.options(), ex);

  Tensor<float, 3> pool_expected = pool0;
  for (index_t n = 0; n < l.sequences(); ++n) {
    const index_t t0 = static_cast<index_t>(l.cu[n]), len = static_cast<index_t>(l.cu[n + 1]) - t0;
    const index_t row = l.slots[static_cast<std::size_t>(n)];
    INFO(srv_name(p.kind) << (reference ? " reference" : " fast") << " sequence " << n << " T=" << len);
    const Tensor<float, 3> y_got = srv_copy(y.cview().slice(1, t0, len));
    if (row < 0) {
      REQUIRE(srv_all_equal(y_got, 7.f));
      continue;
    }
    const Tensor<float, 3> x1 = srv_copy(x.cview().slice(1, t0, len));
    Tensor<float, 3> y1({1, len, p.H}), fs1({1, S, p.H});
    Tensor<float, 3> init1 = srv_copy(pool0.cview().slice(0, row, 1));
    seqmix::RnnInputs one = p.inputs(x1);
    if (l.fresh[static_cast<std::size_t>(n)]) one.initial_state = init1.cview();
    srv_prefill(p.kind, reference, one, {y1.view(), fs1.view()}, p.options());
    st::require_close("y", y_got.cview(), y1.cview(), 1e-6);
    st::require_close("final_state", srv_copy(pool.cview().slice(0, row, 1)).cview(), fs1.cview(), 1e-6);
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < p.H; ++j) pool_expected(row, k, j) = fs1(0, k, j);
  }
  // Rows no sequence names (1, 3, 7) are untouched; the others hold the per-sequence states (the
  // batched run sums in another order than the B = 1 calls: a tolerance, not equality).
  st::require_close("pool", pool.cview(), pool_expected.cview(), 1e-6);
}

}  // namespace

TEST_CASE("rnn serving: packed slotted prefill equals per-sequence calls", "[rnn][serving]") {
  for (SrvCell k : kSrvCells) {
    const SrvCellProblem dense(k, 16, 1, 11), heads(k, 32, 2, 13);
    for (bool reference : {false, true}) {
      srv_check_packed_cell(dense, reference, seqmix::serial_executor());
      srv_check_packed_cell(heads, reference, st::two_thread_pool());
    }
  }
}

TEST_CASE("rnn serving: batched packed prefill of many ragged sequences equals the reference", "[rnn][serving]") {
  // 12 sequences of 0..40 tokens at H = 256: 12 x 1024 x 256 multiply-adds per token while all run,
  // above the engine's threading threshold, so the batched rows are split over both threads and
  // the running prefix shrinks token by token as sequences stop.
  const index_t H = st::small_test_scale() ? 128 : 256, N = 12;
  std::vector<std::int64_t> cu = {0};
  std::vector<std::int32_t> slots;
  std::vector<std::uint8_t> fresh;
  for (index_t n = 0; n < N; ++n) {
    cu.push_back(cu.back() + (n * 7 + 3) % 41);
    slots.push_back(n == 5 ? -1 : static_cast<std::int32_t>(N - 1 - n));
    fresh.push_back(n % 4 == 2 ? 0 : 1);
  }
  for (SrvCell k : kSrvCells) {
    INFO(srv_name(k) << " H=" << H);
    const SrvCellProblem p(k, H, k == SrvCell::slstm ? 4 : 1, 31);
    const Tensor<float, 3> x = st::random_tensor<3>({1, static_cast<index_t>(cu.back()), p.I}, 32);
    const Tensor<float, 3> pool0 = p.pool(N, 33);
    Tensor<float, 3> pool = pool0, pool_ref = pool0, y({1, x.size(1), H}), y_ref({1, x.size(1), H});
    y.fill(7.f), y_ref.fill(7.f);
    seqmix::RnnInputs in = p.inputs(x);
    in.initial_state = pool.cview();
    in.batch.cu_seqlens = cu, in.batch.state_indices = slots, in.batch.has_initial_state = fresh;
    srv_prefill(k, false, in, {y.view(), pool.view()}, p.options(), st::two_thread_pool());
    in.initial_state = pool_ref.cview();
    srv_prefill(k, true, in, {y_ref.view(), pool_ref.view()}, p.options());
    st::require_close("y", y.cview(), y_ref.cview(), 1e-4);
    st::require_close("states", pool.cview(), pool_ref.cview(), 1e-4);
  }
}

TEST_CASE("rnn serving: dense prefill with slots and padding rows in both directions", "[rnn][serving]") {
  for (SrvCell k : kSrvCells) {
    INFO(srv_name(k));
    const SrvCellProblem p(k, 16, 1, 21);
    const index_t B = 3, T = 6, S = srv_states(k);
    const Tensor<float, 3> x = st::random_tensor<3>({B, T, p.I}, 23);
    const Tensor<float, 3> pool0 = p.pool(5, 24);
    const std::vector<std::int64_t> slots = {3, -1, 0};
    for (bool reverse : {false, true}) {
      Tensor<float, 3> pool = pool0, fresh_pool({5, S, p.H}), y({B, T, p.H});
      y.fill(7.f), fresh_pool.fill(9.f);
      seqmix::RnnOptions o = p.options();
      o.reverse = reverse;
      seqmix::RnnInputs in = p.inputs(x);
      in.initial_state = pool.cview();
      in.batch.state_indices = slots;
      // Final states into another pool: the initial pool is read only.
      srv_prefill(k, false, in, {y.view(), fresh_pool.view()}, o);
      REQUIRE(srv_same(pool, pool0));
      for (index_t b = 0; b < B; ++b) {
        const index_t row = slots[static_cast<std::size_t>(b)];
        const Tensor<float, 3> y_got = srv_copy(y.cview().slice(0, b, 1));
        if (row < 0) {
          REQUIRE(srv_all_equal(y_got, 7.f));
          continue;
        }
        const Tensor<float, 3> x1 = srv_copy(x.cview().slice(0, b, 1));
        const Tensor<float, 3> init1 = srv_copy(pool0.cview().slice(0, row, 1));
        Tensor<float, 3> y1({1, T, p.H}), fs1({1, S, p.H});
        seqmix::RnnInputs one = p.inputs(x1);
        one.initial_state = init1.cview();
        srv_prefill(k, false, one, {y1.view(), fs1.view()}, o);
        st::require_close("y", y_got.cview(), y1.cview(), 1e-6);
        st::require_close("final_state", srv_copy(fresh_pool.cview().slice(0, row, 1)).cview(), fs1.cview(), 1e-6);
      }
      for (index_t row : {1, 2, 4}) REQUIRE(srv_all_equal(srv_copy(fresh_pool.cview().slice(0, row, 1)), 9.f));
    }
  }
}

TEST_CASE("rnn serving: slotted steps equal per-row steps", "[rnn][serving]") {
  for (SrvCell k : kSrvCells) {
    for (index_t H : {16, 128}) {
      INFO(srv_name(k) << " H=" << H);
      const SrvCellProblem p(k, H, 1, 31);
      const index_t B = 4, S = srv_states(k);
      const std::vector<std::int32_t> slots = {3, -1, 0, 1};
      const std::vector<std::uint8_t> has_initial = {1, 1, 0, 1};
      Tensor<float, 3> pool = p.pool(5, 33);
      Tensor<float, 3> pool_expected = pool;
      Tensor<float, 2> y({B, H});
      for (index_t t = 0; t < 3; ++t) {
        const Tensor<float, 2> x = st::random_tensor<2>({B, p.I}, 40 + static_cast<std::uint64_t>(t));
        y.fill(7.f);
        seqmix::RnnStepInputs si;
        si.x = x.cview(), si.w_ih = p.w_ih.cview(), si.w_hh = p.w_hh.cview(), si.b_ih = p.b_ih.cview(),
        si.b_hh = p.b_hh.cview();
        si.batch.state_indices = slots;
        if (t == 0) si.batch.has_initial_state = has_initial;
        srv_step(k, si, {y.view(), pool.view()}, p.options(), t == 1 ? st::two_thread_pool() : seqmix::serial_executor());
        for (index_t b = 0; b < B; ++b) {
          const index_t row = slots[static_cast<std::size_t>(b)];
          const Tensor<float, 2> y_got = srv_copy(y.cview().slice(0, b, 1));
          if (row < 0) {
            REQUIRE(srv_all_equal(y_got, 7.f));
            continue;
          }
          Tensor<float, 3> state1 = srv_copy(pool_expected.cview().slice(0, row, 1));
          if (t == 0 && !has_initial[static_cast<std::size_t>(b)]) state1.fill(0.f);
          const Tensor<float, 2> x1 = srv_copy(x.cview().slice(0, b, 1));
          Tensor<float, 2> y1({1, H});
          seqmix::RnnStepInputs one = si;
          one.x = x1.cview(), one.batch = seqmix::SequenceBatch();
          srv_step(k, one, {y1.view(), state1.view()}, p.options());
          st::require_close("y", y_got.cview(), y1.cview(), 1e-6);
          for (index_t s = 0; s < S; ++s)
            for (index_t j = 0; j < H; ++j) pool_expected(row, s, j) = state1(0, s, j);
        }
        st::require_close("state pool", pool.cview(), pool_expected.cview(), 1e-6);
      }
    }
  }
}

TEST_CASE("rnn serving: bad slots and lengths are refused before any write", "[rnn][serving]") {
  for (SrvCell k : kSrvCells) {
    INFO(srv_name(k));
    const SrvCellProblem p(k, 8, 1, 51);
    const index_t S = srv_states(k);
    const Tensor<float, 3> x = st::random_tensor<3>({1, 7, p.I}, 52);
    Tensor<float, 3> pool = p.pool(4, 53);
    const Tensor<float, 3> pool0 = pool;
    Tensor<float, 3> y({1, 7, p.H});
    y.fill(7.f);
    auto expect = [&](const char* argument, const seqmix::SequenceBatch& batch, const seqmix::RnnOptions& o) {
      seqmix::RnnInputs in = p.inputs(x);
      in.initial_state = pool.cview();
      in.batch = batch;
      for (bool reference : {false, true})
        st::require_shape_error(argument, [&] { srv_prefill(k, reference, in, {y.view(), pool.view()}, o); });
    };
    const std::vector<std::int64_t> cu_ok = {0, 3, 7}, cu_short = {0, 3, 6}, cu_down = {0, 5, 3, 7};
    const std::vector<std::int32_t> slots_ok = {1, 3}, slots_out = {1, 4}, slots_twice = {2, 2}, slots_low = {-2, 0};
    const std::vector<std::uint8_t> flags_bad = {1, 1, 1};
    const std::vector<std::int32_t> slots_three = {0, 1, 2};
    const std::vector<std::int64_t> cu_step = {0, 1, 2};
    seqmix::SequenceBatch b;
    b.cu_seqlens = cu_short, b.state_indices = slots_ok;
    expect("cu_seqlens", b, p.options());
    b.cu_seqlens = cu_down, b.state_indices = slots_three;
    expect("cu_seqlens", b, p.options());
    b.cu_seqlens = cu_ok, b.state_indices = slots_out;
    expect("state_indices", b, p.options());
    b.state_indices = slots_twice;
    expect("state_indices", b, p.options());
    b.state_indices = slots_low;
    expect("state_indices", b, p.options());
    b.state_indices = slots_ok, b.has_initial_state = flags_bad;
    expect("has_initial_state", b, p.options());
    b.has_initial_state = {};
    seqmix::RnnOptions rev = p.options();
    rev.reverse = true;
    expect("options.reverse", b, rev);
    // Packed without slots: the states must have one row per sequence (2), the pool has 4.
    b.state_indices = {};
    expect("state", b, p.options());
    // The step: slots out of range, packed tokens, flags of the wrong size.
    Tensor<float, 2> xs = st::random_tensor<2>({2, p.I}, 54), ys({2, p.H});
    ys.fill(7.f);
    auto expect_step = [&](const char* argument, const seqmix::SequenceBatch& batch) {
      seqmix::RnnStepInputs si;
      si.x = xs.cview(), si.w_ih = p.w_ih.cview(), si.w_hh = p.w_hh.cview();
      si.batch = batch;
      st::require_shape_error(argument, [&] { srv_step(k, si, {ys.view(), pool.view()}, p.options()); });
    };
    seqmix::SequenceBatch sb;
    sb.state_indices = slots_out;
    expect_step("state_indices", sb);
    sb.state_indices = slots_twice;
    expect_step("state_indices", sb);
    sb.state_indices = slots_ok, sb.cu_seqlens = cu_step;
    expect_step("cu_seqlens", sb);
    sb.cu_seqlens = {}, sb.has_initial_state = flags_bad;
    expect_step("has_initial_state", sb);
    REQUIRE(srv_all_equal(y, 7.f));
    REQUIRE(srv_all_equal(ys, 7.f));
    REQUIRE(srv_same(pool, pool0));
    (void)S;
  }
}

namespace {

struct SrvMlstmPool {
  Tensor<float, 4> c;
  Tensor<float, 3> n;
  Tensor<float, 2> m;
  SrvMlstmPool(index_t rows, index_t NH, index_t DK, index_t DV, std::uint64_t seed)
      : c(st::random_tensor<4>({rows, NH, DK, DV}, seed)),
        n(st::random_tensor<3>({rows, NH, DK}, seed + 1, 0.f, 2.f)),
        m(st::random_tensor<2>({rows, NH}, seed + 2, -2.f, 2.f)) {}
  // Row `row` of the pool becomes the single-row state (c1, n1, m1).
  void store_row(index_t row, const Tensor<float, 4>& c1, const Tensor<float, 3>& n1, const Tensor<float, 2>& m1) {
    for (index_t hd = 0; hd < c.size(1); ++hd) {
      m(row, hd) = m1(0, hd);
      for (index_t r = 0; r < c.size(2); ++r) {
        n(row, hd, r) = n1(0, hd, r);
        for (index_t e = 0; e < c.size(3); ++e) c(row, hd, r, e) = c1(0, hd, r, e);
      }
    }
  }
};

void srv_mlstm_prefill(bool reference, const seqmix::MlstmInputs& in, const seqmix::MlstmOutputs& out,
                       const seqmix::MlstmOptions& o, const seqmix::Executor& ex = seqmix::serial_executor()) {
  if (reference)
    seqmix::reference::mlstm(in, out, o);
  else
    seqmix::mlstm(in, out, o, ex);
}

}  // namespace

TEST_CASE("mlstm serving: packed slotted prefill equals per-sequence calls", "[mlstm][serving]") {
  const SrvLayout l = srv_layout();
  const index_t NH = 2, DK = 16, DV = 8, Tt = l.total();
  const Tensor<float, 4> q = st::random_tensor<4>({1, Tt, NH, DK}, 61), k = st::random_tensor<4>({1, Tt, NH, DK}, 62);
  const Tensor<float, 4> v = st::random_tensor<4>({1, Tt, NH, DV}, 63);
  const Tensor<float, 3> ig = st::random_tensor<3>({1, Tt, NH}, 64, -4.f, 4.f);
  const Tensor<float, 3> fg = st::random_tensor<3>({1, Tt, NH}, 65, -2.f, 6.f);
  const SrvMlstmPool pool0(l.pool, NH, DK, DV, 66);
  for (bool reference : {false, true})
    for (seqmix::MlstmAlgorithm algorithm : {seqmix::MlstmAlgorithm::chunked, seqmix::MlstmAlgorithm::recurrent}) {
      if (reference && algorithm == seqmix::MlstmAlgorithm::recurrent) continue;  // the reference has one form
      seqmix::MlstmOptions o;
      o.algorithm = algorithm;
      o.chunk_size = 4;  // ragged chunks inside the 17- and 9-token sequences
      SrvMlstmPool pool = pool0;
      Tensor<float, 4> h({1, Tt, NH, DV});
      h.fill(7.f);
      seqmix::MlstmInputs in;
      in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.i = ig.cview(), in.f = fg.cview();
      in.initial_c = pool.c.cview(), in.initial_n = pool.n.cview(), in.initial_m = pool.m.cview();
      in.batch.cu_seqlens = l.cu, in.batch.state_indices = l.slots, in.batch.has_initial_state = l.fresh;
      srv_mlstm_prefill(reference, in, {h.view(), pool.c.view(), pool.n.view(), pool.m.view()}, o,
                        st::two_thread_pool());
      SrvMlstmPool expected = pool0;
      for (index_t s = 0; s < l.sequences(); ++s) {
        const index_t t0 = static_cast<index_t>(l.cu[s]), len = static_cast<index_t>(l.cu[s + 1]) - t0;
        const index_t row = l.slots[static_cast<std::size_t>(s)];
        INFO((reference ? "reference" : "fast") << " algorithm " << static_cast<int>(algorithm) << " sequence " << s
                                                << " T=" << len);
        const Tensor<float, 4> h_got = srv_copy(h.cview().slice(1, t0, len));
        if (row < 0) {
          REQUIRE(srv_all_equal(h_got, 7.f));
          continue;
        }
        const Tensor<float, 4> q1 = srv_copy(q.cview().slice(1, t0, len)), k1 = srv_copy(k.cview().slice(1, t0, len));
        const Tensor<float, 4> v1 = srv_copy(v.cview().slice(1, t0, len));
        const Tensor<float, 3> i1 = srv_copy(ig.cview().slice(1, t0, len)), f1 = srv_copy(fg.cview().slice(1, t0, len));
        const Tensor<float, 4> c_init = srv_copy(pool0.c.cview().slice(0, row, 1));
        const Tensor<float, 3> n_init = srv_copy(pool0.n.cview().slice(0, row, 1));
        const Tensor<float, 2> m_init = srv_copy(pool0.m.cview().slice(0, row, 1));
        Tensor<float, 4> h1({1, len, NH, DV}), c1({1, NH, DK, DV});
        Tensor<float, 3> n1({1, NH, DK});
        Tensor<float, 2> m1({1, NH});
        seqmix::MlstmInputs one;
        one.q = q1.cview(), one.k = k1.cview(), one.v = v1.cview(), one.i = i1.cview(), one.f = f1.cview();
        if (l.fresh[static_cast<std::size_t>(s)])
          one.initial_c = c_init.cview(), one.initial_n = n_init.cview(), one.initial_m = m_init.cview();
        srv_mlstm_prefill(reference, one, {h1.view(), c1.view(), n1.view(), m1.view()}, o);
        st::require_close("h", h_got.cview(), h1.cview(), 1e-6);
        st::require_close("final_c", srv_copy(pool.c.cview().slice(0, row, 1)).cview(), c1.cview(), 1e-6);
        st::require_close("final_n", srv_copy(pool.n.cview().slice(0, row, 1)).cview(), n1.cview(), 1e-6);
        st::require_close("final_m", srv_copy(pool.m.cview().slice(0, row, 1)).cview(), m1.cview(), 1e-6);
        expected.store_row(row, c1, n1, m1);
      }
      REQUIRE(srv_same(pool.c, expected.c));
      REQUIRE(srv_same(pool.n, expected.n));
      REQUIRE(srv_same(pool.m, expected.m));
    }
}

TEST_CASE("mlstm serving: slotted steps equal per-row steps and bad batches are refused", "[mlstm][serving]") {
  const index_t B = 4, NH = 2, DK = 16, DV = 8;
  const std::vector<std::int64_t> slots = {3, -1, 0, 1};
  const std::vector<std::uint8_t> has_initial = {1, 1, 0, 1};
  SrvMlstmPool pool(5, NH, DK, DV, 71);
  SrvMlstmPool expected = pool;
  Tensor<float, 3> h({B, NH, DV});
  for (index_t t = 0; t < 3; ++t) {
    const std::uint64_t seed = 80 + 10 * static_cast<std::uint64_t>(t);
    const Tensor<float, 3> q = st::random_tensor<3>({B, NH, DK}, seed), k = st::random_tensor<3>({B, NH, DK}, seed + 1);
    const Tensor<float, 3> v = st::random_tensor<3>({B, NH, DV}, seed + 2);
    const Tensor<float, 2> ig = st::random_tensor<2>({B, NH}, seed + 3, -4.f, 4.f);
    const Tensor<float, 2> fg = st::random_tensor<2>({B, NH}, seed + 4, -2.f, 6.f);
    h.fill(7.f);
    seqmix::MlstmStepInputs si{q.cview(), k.cview(), v.cview(), ig.cview(), fg.cview()};
    si.batch.state_indices = slots;
    if (t == 0) si.batch.has_initial_state = has_initial;
    seqmix::mlstm_step(si, {h.view(), pool.c.view(), pool.n.view(), pool.m.view()}, {},
                       t == 1 ? st::two_thread_pool() : seqmix::serial_executor());
    for (index_t b = 0; b < B; ++b) {
      const index_t row = slots[static_cast<std::size_t>(b)];
      INFO("t=" << t << " row " << b);
      const Tensor<float, 3> h_got = srv_copy(h.cview().slice(0, b, 1));
      if (row < 0) {
        REQUIRE(srv_all_equal(h_got, 7.f));
        continue;
      }
      Tensor<float, 4> c1 = srv_copy(expected.c.cview().slice(0, row, 1));
      Tensor<float, 3> n1 = srv_copy(expected.n.cview().slice(0, row, 1));
      Tensor<float, 2> m1 = srv_copy(expected.m.cview().slice(0, row, 1));
      if (t == 0 && !has_initial[static_cast<std::size_t>(b)]) c1.fill(0.f), n1.fill(0.f), m1.fill(0.f);
      const Tensor<float, 3> q1 = srv_copy(q.cview().slice(0, b, 1)), k1 = srv_copy(k.cview().slice(0, b, 1));
      const Tensor<float, 3> v1 = srv_copy(v.cview().slice(0, b, 1));
      const Tensor<float, 2> i1 = srv_copy(ig.cview().slice(0, b, 1)), f1 = srv_copy(fg.cview().slice(0, b, 1));
      Tensor<float, 3> h1({1, NH, DV});
      seqmix::mlstm_step({q1.cview(), k1.cview(), v1.cview(), i1.cview(), f1.cview()},
                         {h1.view(), c1.view(), n1.view(), m1.view()});
      st::require_close("h", h_got.cview(), h1.cview(), 1e-6);
      expected.store_row(row, c1, n1, m1);
    }
    REQUIRE(srv_same(pool.c, expected.c));
    REQUIRE(srv_same(pool.n, expected.n));
    REQUIRE(srv_same(pool.m, expected.m));
  }

  // Refusals, step and prefill, before anything is written.
  const SrvMlstmPool before = pool;
  const Tensor<float, 3> q = st::random_tensor<3>({B, NH, DK}, 90), v = st::random_tensor<3>({B, NH, DV}, 91);
  const Tensor<float, 2> g = st::random_tensor<2>({B, NH}, 92);
  h.fill(7.f);
  const std::vector<std::int64_t> slots_out = {3, -1, 5, 1}, slots_twice = {3, 0, 0, 1}, cu_step = {0, 1, 2, 3, 4};
  const std::vector<std::uint8_t> flags_short = {1, 1};
  auto expect_step = [&](const char* argument, const seqmix::SequenceBatch& batch) {
    seqmix::MlstmStepInputs si{q.cview(), q.cview(), v.cview(), g.cview(), g.cview()};
    si.batch = batch;
    st::require_shape_error(argument, [&] {
      seqmix::mlstm_step(si, {h.view(), pool.c.view(), pool.n.view(), pool.m.view()});
    });
  };
  seqmix::SequenceBatch sb;
  sb.state_indices = slots_out;
  expect_step("state_indices", sb);
  sb.state_indices = slots_twice;
  expect_step("state_indices", sb);
  sb.state_indices = slots, sb.has_initial_state = flags_short;
  expect_step("has_initial_state", sb);
  sb.has_initial_state = {}, sb.cu_seqlens = cu_step;
  expect_step("cu_seqlens", sb);

  const Tensor<float, 4> q4 = st::random_tensor<4>({1, 7, NH, DK}, 93), v4 = st::random_tensor<4>({1, 7, NH, DV}, 94);
  const Tensor<float, 3> g3 = st::random_tensor<3>({1, 7, NH}, 95);
  Tensor<float, 4> h4({1, 7, NH, DV});
  h4.fill(7.f);
  Tensor<float, 3> n_short({4, NH, DK});
  const std::vector<std::int64_t> cu_bad = {0, 3, 8}, cu_ok = {0, 3, 7};
  const std::vector<std::int32_t> slots2 = {0, 5}, slots_ok2 = {0, 2};
  auto expect = [&](const char* argument, const seqmix::SequenceBatch& batch, const seqmix::MlstmOptions& o,
                    bool short_n) {
    seqmix::MlstmInputs in;
    in.q = q4.cview(), in.k = q4.cview(), in.v = v4.cview(), in.i = g3.cview(), in.f = g3.cview();
    in.initial_c = pool.c.cview(), in.initial_n = short_n ? n_short.cview() : pool.n.cview(), in.initial_m = pool.m.cview();
    in.batch = batch;
    for (bool reference : {false, true})
      st::require_shape_error(argument, [&] {
        srv_mlstm_prefill(reference, in, {h4.view(), pool.c.view(), pool.n.view(), pool.m.view()}, o);
      });
  };
  seqmix::SequenceBatch b;
  b.cu_seqlens = cu_bad, b.state_indices = slots_ok2;
  expect("cu_seqlens", b, {}, false);
  b.cu_seqlens = cu_ok, b.state_indices = slots2;
  expect("state_indices", b, {}, false);
  b.state_indices = slots_ok2;
  expect("initial_n", b, {}, true);
  seqmix::MlstmOptions rev;
  rev.reverse = true;
  expect("options.reverse", b, rev, false);
  REQUIRE(srv_all_equal(h, 7.f));
  REQUIRE(srv_all_equal(h4, 7.f));
  REQUIRE(srv_same(pool.c, before.c));
  REQUIRE(srv_same(pool.n, before.n));
  REQUIRE(srv_same(pool.m, before.m));
}

namespace {

// ttt_linear / ttt_mlp token inputs of a packed call and their per-sequence slices.
struct SrvTttTokens {
  Tensor<float, 4> q, k, v;
  Tensor<float, 3> eta;
  Tensor<float, 2> gamma, beta;
  Tensor<float, 1> scale;
  SrvTttTokens(index_t B, index_t T, index_t H, index_t K, index_t mini_batch, std::uint64_t seed)
      : q(st::random_tensor<4>({B, T, H, K}, seed)), k(st::random_tensor<4>({B, T, H, K}, seed + 1)),
        v(st::random_tensor<4>({B, T, H, K}, seed + 2)),
        eta(st::random_tensor<3>({B, T, H}, seed + 3, 0.f, 1.f / static_cast<float>(K))),
        gamma(st::random_tensor<2>({H, K}, seed + 4, 0.5f, 1.5f)), beta(st::random_tensor<2>({H, K}, seed + 5, -0.2f, 0.2f)),
        scale({mini_batch}) {
    for (index_t i = 0; i < mini_batch; ++i) scale(i) = 1.f / static_cast<float>(i + 1);
  }
  template <class In>
  void fill(In& in) const {
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
    in.ln_weight = gamma.cview(), in.ln_bias = beta.cview(), in.token_scale = scale.cview();
  }
};

}  // namespace

TEST_CASE("ttt serving: packed slotted ttt_linear and ttt_mlp equal per-sequence calls", "[ttt][serving]") {
  SrvLayout l = srv_layout();
  const index_t H = 2, K = 8, M = 12, Tt = l.total();
  seqmix::TttOptions o;
  o.mini_batch = 4;  // ragged mini-batches inside the 17-, 5- and 9-token sequences
  const SrvTttTokens tok(1, Tt, H, K, o.mini_batch, 101);
  const float a = 1.f / std::sqrt(static_cast<float>(K));
  const Tensor<float, 4> w0 = st::random_tensor<4>({l.pool, H, K, K}, 102, -a, a);
  const Tensor<float, 4> w10 = st::random_tensor<4>({l.pool, H, K, M}, 103, -a, a);
  const Tensor<float, 4> w20 = st::random_tensor<4>({l.pool, H, M, K}, 104, -a, a);
  for (bool reference : {false, true}) {
    INFO((reference ? "reference" : "fast"));
    // ttt_linear, with a fresh slot.
    Tensor<float, 4> w = w0, z({1, Tt, H, K});
    z.fill(7.f);
    seqmix::TttLinearInputs in;
    tok.fill(in);
    in.initial_w = w.cview();
    in.batch.cu_seqlens = l.cu, in.batch.state_indices = l.slots, in.batch.has_initial_state = l.fresh;
    if (reference)
      seqmix::reference::ttt_linear(in, {z.view(), w.view()}, o);
    else
      seqmix::ttt_linear(in, {z.view(), w.view()}, o, st::two_thread_pool());
    // ttt_mlp (no fresh flags: its initial weights are required).
    Tensor<float, 4> w1 = w10, w2 = w20, zm({1, Tt, H, K});
    zm.fill(7.f);
    seqmix::TttMlpInputs im;
    tok.fill(im);
    im.initial_w1 = w1.cview(), im.initial_w2 = w2.cview();
    im.batch.cu_seqlens = l.cu, im.batch.state_indices = l.slots;
    if (reference)
      seqmix::reference::ttt_mlp(im, {zm.view(), w1.view(), w2.view()}, o);
    else
      seqmix::ttt_mlp(im, {zm.view(), w1.view(), w2.view()}, o, st::two_thread_pool());

    Tensor<float, 4> w_expected = w0, w1_expected = w10, w2_expected = w20;
    for (index_t s = 0; s < l.sequences(); ++s) {
      const index_t t0 = static_cast<index_t>(l.cu[s]), len = static_cast<index_t>(l.cu[s + 1]) - t0;
      const index_t row = l.slots[static_cast<std::size_t>(s)];
      INFO("sequence " << s << " T=" << len);
      if (row < 0) {
        REQUIRE(srv_all_equal(srv_copy(z.cview().slice(1, t0, len)), 7.f));
        REQUIRE(srv_all_equal(srv_copy(zm.cview().slice(1, t0, len)), 7.f));
        continue;
      }
      SrvTttTokens one(1, len, H, K, o.mini_batch, 1);
      one.q = srv_copy(tok.q.cview().slice(1, t0, len)), one.k = srv_copy(tok.k.cview().slice(1, t0, len));
      one.v = srv_copy(tok.v.cview().slice(1, t0, len)), one.eta = srv_copy(tok.eta.cview().slice(1, t0, len));
      one.gamma = tok.gamma, one.beta = tok.beta;
      Tensor<float, 4> w_one = srv_copy(w0.cview().slice(0, row, 1)), z_one({1, len, H, K});
      seqmix::TttLinearInputs in1;
      one.fill(in1);
      if (l.fresh[static_cast<std::size_t>(s)]) in1.initial_w = w_one.cview();
      Tensor<float, 4> w_final({1, H, K, K});
      if (reference)
        seqmix::reference::ttt_linear(in1, {z_one.view(), w_final.view()}, o);
      else
        seqmix::ttt_linear(in1, {z_one.view(), w_final.view()}, o);
      st::require_close("z", srv_copy(z.cview().slice(1, t0, len)).cview(), z_one.cview(), 1e-6);
      st::require_close("final_w", srv_copy(w.cview().slice(0, row, 1)).cview(), w_final.cview(), 1e-6);
      Tensor<float, 4> w1_one = srv_copy(w10.cview().slice(0, row, 1)), w2_one = srv_copy(w20.cview().slice(0, row, 1));
      Tensor<float, 4> zm_one({1, len, H, K});
      seqmix::TttMlpInputs im1;
      one.fill(im1);
      im1.initial_w1 = w1_one.cview(), im1.initial_w2 = w2_one.cview();
      if (reference)
        seqmix::reference::ttt_mlp(im1, {zm_one.view(), w1_one.view(), w2_one.view()}, o);
      else
        seqmix::ttt_mlp(im1, {zm_one.view(), w1_one.view(), w2_one.view()}, o);
      st::require_close("z (mlp)", srv_copy(zm.cview().slice(1, t0, len)).cview(), zm_one.cview(), 1e-6);
      st::require_close("final_w1", srv_copy(w1.cview().slice(0, row, 1)).cview(), w1_one.cview(), 1e-6);
      st::require_close("final_w2", srv_copy(w2.cview().slice(0, row, 1)).cview(), w2_one.cview(), 1e-6);
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < K; ++i) {
          for (index_t j = 0; j < K; ++j) w_expected(row, h, i, j) = w_final(0, h, i, j);
          for (index_t m = 0; m < M; ++m) w1_expected(row, h, i, m) = w1_one(0, h, i, m), w2_expected(row, h, m, i) = w2_one(0, h, m, i);
        }
    }
    REQUIRE(srv_same(w, w_expected));
    REQUIRE(srv_same(w1, w1_expected));
    REQUIRE(srv_same(w2, w2_expected));
  }
}

TEST_CASE("ttt serving: slotted steps equal per-row steps and bad batches are refused", "[ttt][serving]") {
  const index_t B = 4, H = 2, K = 8, M = 12, P = 5;
  const std::vector<std::int32_t> slots = {3, -1, 0, 1};
  const std::vector<std::uint8_t> has_initial = {1, 1, 0, 1};
  const float a = 1.f / std::sqrt(static_cast<float>(K));
  Tensor<float, 4> w = st::random_tensor<4>({P, H, K, K}, 111, -a, a);
  Tensor<float, 4> w1 = st::random_tensor<4>({P, H, K, M}, 112, -a, a), w2 = st::random_tensor<4>({P, H, M, K}, 113, -a, a);
  Tensor<float, 4> w_exp = w, w1_exp = w1, w2_exp = w2;
  Tensor<float, 3> z({B, H, K}), zm({B, H, K});
  for (index_t t = 0; t < 3; ++t) {
    const SrvTttTokens tok(B, 1, H, K, 1, 120 + 10 * static_cast<std::uint64_t>(t));
    seqmix::TttStepInputs si;
    si.q = tok.q.cview().select(1, 0), si.k = tok.k.cview().select(1, 0), si.v = tok.v.cview().select(1, 0);
    si.eta = tok.eta.cview().select(1, 0), si.ln_weight = tok.gamma.cview(), si.ln_bias = tok.beta.cview();
    si.batch.state_indices = slots;
    seqmix::TttStepInputs sm = si;
    if (t == 0) si.batch.has_initial_state = has_initial;
    z.fill(7.f), zm.fill(7.f);
    const seqmix::Executor& ex = t == 1 ? static_cast<const seqmix::Executor&>(st::two_thread_pool()) : seqmix::serial_executor();
    seqmix::ttt_linear_step(si, {z.view(), w.view()}, {}, ex);
    seqmix::ttt_mlp_step(sm, {zm.view(), w1.view(), w2.view()}, {}, ex);
    for (index_t b = 0; b < B; ++b) {
      const index_t row = slots[static_cast<std::size_t>(b)];
      INFO("t=" << t << " row " << b);
      if (row < 0) {
        REQUIRE(srv_all_equal(srv_copy(z.cview().slice(0, b, 1)), 7.f));
        REQUIRE(srv_all_equal(srv_copy(zm.cview().slice(0, b, 1)), 7.f));
        continue;
      }
      seqmix::TttStepInputs one = sm;
      one.batch = seqmix::SequenceBatch();
      one.q = si.q.slice(0, b, 1), one.k = si.k.slice(0, b, 1), one.v = si.v.slice(0, b, 1), one.eta = si.eta.slice(0, b, 1);
      Tensor<float, 4> w_one = srv_copy(w_exp.cview().slice(0, row, 1));
      if (t == 0 && !has_initial[static_cast<std::size_t>(b)]) w_one.fill(0.f);
      Tensor<float, 3> z_one({1, H, K}), zm_one({1, H, K});
      seqmix::ttt_linear_step(one, {z_one.view(), w_one.view()});
      Tensor<float, 4> w1_one = srv_copy(w1_exp.cview().slice(0, row, 1)), w2_one = srv_copy(w2_exp.cview().slice(0, row, 1));
      seqmix::ttt_mlp_step(one, {zm_one.view(), w1_one.view(), w2_one.view()});
      st::require_close("z", srv_copy(z.cview().slice(0, b, 1)).cview(), z_one.cview(), 1e-6);
      st::require_close("z (mlp)", srv_copy(zm.cview().slice(0, b, 1)).cview(), zm_one.cview(), 1e-6);
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < K; ++i) {
          for (index_t j = 0; j < K; ++j) w_exp(row, h, i, j) = w_one(0, h, i, j);
          for (index_t m = 0; m < M; ++m) w1_exp(row, h, i, m) = w1_one(0, h, i, m), w2_exp(row, h, m, i) = w2_one(0, h, m, i);
        }
    }
    REQUIRE(srv_same(w, w_exp));
    REQUIRE(srv_same(w1, w1_exp));
    REQUIRE(srv_same(w2, w2_exp));
  }

  // Refusals before any write.
  const Tensor<float, 4> wb = w, w1b = w1, w2b = w2;
  const SrvTttTokens tok(B, 1, H, K, 1, 150);
  seqmix::TttStepInputs si;
  si.q = tok.q.cview().select(1, 0), si.k = tok.k.cview().select(1, 0), si.v = tok.v.cview().select(1, 0);
  si.eta = tok.eta.cview().select(1, 0), si.ln_weight = tok.gamma.cview(), si.ln_bias = tok.beta.cview();
  z.fill(7.f), zm.fill(7.f);
  const std::vector<std::int32_t> slots_out = {3, -1, 5, 1}, slots_twice = {3, 0, 0, 1};
  const std::vector<std::int64_t> cu_step = {0, 1, 2, 3, 4};
  auto expect_steps = [&](const char* argument, const seqmix::SequenceBatch& batch, bool linear, bool mlp) {
    seqmix::TttStepInputs in = si;
    in.batch = batch;
    if (linear) st::require_shape_error(argument, [&] { seqmix::ttt_linear_step(in, {z.view(), w.view()}); });
    if (mlp) st::require_shape_error(argument, [&] { seqmix::ttt_mlp_step(in, {zm.view(), w1.view(), w2.view()}); });
  };
  seqmix::SequenceBatch sb;
  sb.state_indices = slots_out;
  expect_steps("state_indices", sb, true, true);
  sb.state_indices = slots_twice;
  expect_steps("state_indices", sb, true, true);
  sb.state_indices = slots, sb.cu_seqlens = cu_step;
  expect_steps("cu_seqlens", sb, true, true);
  sb.cu_seqlens = {}, sb.has_initial_state = has_initial;
  expect_steps("has_initial_state", sb, false, true);  // ttt_mlp needs its initial weights

  const SrvTttTokens pk(1, 7, H, K, 16, 160);
  Tensor<float, 4> zp({1, 7, H, K});
  zp.fill(7.f);
  const std::vector<std::int64_t> cu_bad = {0, 3, 8}, cu_ok = {0, 3, 7};
  const std::vector<std::int32_t> slots2 = {0, 5}, slots_ok2 = {0, 2};
  auto expect_prefill = [&](const char* argument, const seqmix::SequenceBatch& batch, const seqmix::TttOptions& o,
                            bool linear) {
    for (bool reference : {false, true}) {
      if (linear) {
        seqmix::TttLinearInputs in;
        pk.fill(in);
        in.initial_w = w.cview(), in.batch = batch;
        st::require_shape_error(argument, [&] {
          if (reference)
            seqmix::reference::ttt_linear(in, {zp.view(), w.view()}, o);
          else
            seqmix::ttt_linear(in, {zp.view(), w.view()}, o);
        });
      }
      seqmix::TttMlpInputs im;
      pk.fill(im);
      im.initial_w1 = w1.cview(), im.initial_w2 = w2.cview(), im.batch = batch;
      st::require_shape_error(argument, [&] {
        if (reference)
          seqmix::reference::ttt_mlp(im, {zp.view(), w1.view(), w2.view()}, o);
        else
          seqmix::ttt_mlp(im, {zp.view(), w1.view(), w2.view()}, o);
      });
    }
  };
  const std::vector<std::uint8_t> flags2 = {1, 0};
  seqmix::SequenceBatch b;
  b.cu_seqlens = cu_bad, b.state_indices = slots_ok2;
  expect_prefill("cu_seqlens", b, {}, true);
  b.cu_seqlens = cu_ok, b.state_indices = slots2;
  expect_prefill("state_indices", b, {}, true);
  b.state_indices = slots_ok2;
  seqmix::TttOptions rev;
  rev.reverse = true;
  expect_prefill("options.reverse", b, rev, true);
  b.has_initial_state = flags2;
  expect_prefill("has_initial_state", b, {}, false);
  REQUIRE(srv_all_equal(z, 7.f));
  REQUIRE(srv_all_equal(zm, 7.f));
  REQUIRE(srv_all_equal(zp, 7.f));
  REQUIRE(srv_same(w, wb));
  REQUIRE(srv_same(w1, w1b));
  REQUIRE(srv_same(w2, w2b));
}
