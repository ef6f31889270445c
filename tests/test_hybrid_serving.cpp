// Serving forms of the hybrid mixers (issue 14): packed (cu_seqlens) prefill, state slots in a
// pool with holes, padding sequences, has_initial_state, token_states and rollback, slotted
// decode steps and bad input, for Aaren, the elementwise nonlinear recurrence (Newton) and the
// normalized linear attention (normalizer as a per-sequence state). Every serving call is checked
// against the dense operator run on each sequence alone (B = 1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/chunked.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr float kSentinel = -3.5f;  // what untouched output rows keep

// A ragged batch over a state pool: per-sequence lengths, offsets (int32 and int64 copies),
// slots (a pool with holes; -1 = padding) and has_initial_state flags.
struct Ragged {
  std::vector<index_t> len;
  std::vector<std::int32_t> cu32, slot32;
  std::vector<std::int64_t> cu64, slot64;
  std::vector<std::uint8_t> init;
  index_t pool = 0, total = 0;

  index_t N() const { return static_cast<index_t>(len.size()); }
  index_t begin(index_t n) const { return cu64[static_cast<std::size_t>(n)]; }
  index_t slot(index_t n) const { return slot64[static_cast<std::size_t>(n)]; }
  bool fresh(index_t n) const { return init[static_cast<std::size_t>(n)] == 0; }
  // int64 lists when `wide`, int32 otherwise (both index types an engine may keep).
  seqmix::SequenceBatch batch(bool wide) const {
    seqmix::SequenceBatch b;
    if (wide)
      b.cu_seqlens = cu64, b.state_indices = slot64;
    else
      b.cu_seqlens = cu32, b.state_indices = slot32;
    b.has_initial_state = init;
    return b;
  }
  std::string describe() const {
    std::ostringstream s;
    s << "pool=" << pool << " length/slot/init:";
    for (index_t n = 0; n < N(); ++n) s << ' ' << len[n] << '/' << slot(n) << '/' << int(init[n]);
    return s.str();
  }
};

// N sequences: the tile edges 1, tile-1, tile, tile+1 and an empty one first, then random
// lengths in [1, max_len], shuffled; 4 pool rows no sequence uses; every 5th sequence padding.
Ragged make_ragged(std::uint64_t seed, index_t N, index_t tile, index_t max_len, bool padding = true) {
  std::mt19937_64 rng(seed);
  Ragged r;
  const index_t edges[] = {1, tile - 1, tile, tile + 1, 0};
  for (index_t n = 0; n < N; ++n)
    r.len.push_back(n < 5 ? std::min(std::max<index_t>(edges[n], 0), max_len)
                          : 1 + static_cast<index_t>(rng() % static_cast<std::uint64_t>(max_len)));
  std::shuffle(r.len.begin(), r.len.end(), rng);
  r.pool = N + 4;
  std::vector<std::int64_t> rows(static_cast<std::size_t>(r.pool));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  r.cu64.push_back(0);
  for (index_t n = 0; n < N; ++n) {
    r.cu64.push_back(r.cu64.back() + r.len[n]);
    r.slot64.push_back(padding && n % 5 == 3 ? -1 : rows[static_cast<std::size_t>(n)]);
    r.init.push_back(static_cast<std::uint8_t>(rng() % 3 != 0));
  }
  r.cu32.assign(r.cu64.begin(), r.cu64.end());
  r.slot32.assign(r.slot64.begin(), r.slot64.end());
  r.total = r.cu64.back();
  return r;
}

template <std::size_t R>
Tensor<float, R> filled(const std::array<index_t, R>& shape, float value) {
  Tensor<float, R> t(shape);
  std::fill(t.data(), t.data() + t.numel(), value);
  return t;
}

template <std::size_t R>
void require_equal(const char* what, const TensorView<const float, R>& a, const TensorView<const float, R>& b) {
  st::require_close(what, a, b, 0.0);
}

// Tokens [begin, begin + n) of a packed [1, total, ...] tensor.
template <class V>
V tokens(const V& v, index_t begin, index_t n) {
  return v.slice(1, begin, n);
}

// ---- Aaren ---------------------------------------------------------------------------------

// Packed keys/values, the learned queries and a random state pool [S,H,*].
struct AarenData {
  index_t H, Dk, Dv;
  Tensor<float, 2> query;
  Tensor<float, 4> k, v;
  Tensor<float, 2> m, l;
  Tensor<float, 3> acc;
  AarenData(index_t total, index_t S, index_t H_, index_t Dk_, index_t Dv_, std::uint64_t seed)
      : H(H_), Dk(Dk_), Dv(Dv_), query(st::random_tensor<2>({H_, Dk_}, seed)),
        k(st::random_tensor<4>({1, total, H_, Dk_}, seed + 1, -2.f, 2.f)),
        v(st::random_tensor<4>({1, total, H_, Dv_}, seed + 2)), m(st::random_tensor<2>({S, H_}, seed + 3)),
        l(st::random_tensor<2>({S, H_}, seed + 4, 0.5f, 3.f)), acc(st::random_tensor<3>({S, H_, Dv_}, seed + 5)) {}
  seqmix::AarenState pool() { return {m.view(), l.view(), acc.view()}; }
  seqmix::AarenConstState pool_const() const { return {m.cview(), l.cview(), acc.cview()}; }
};

// The state triple of one sequence as [1,H,*] tensors.
struct AarenTriple {
  Tensor<float, 2> m, l;
  Tensor<float, 3> acc;
  AarenTriple(index_t H, index_t Dv) : m({1, H}), l({1, H}), acc({1, H, Dv}) {}
  seqmix::AarenState view() { return {m.view(), l.view(), acc.view()}; }
};

// Sequence n of a packed call run alone through the dense operator: tokens [begin, begin + count)
// of the sequence, from its initial state (row `slot` of `pool0`, or the empty state if fresh).
void aaren_alone(const AarenData& d, const seqmix::AarenConstState& pool0, index_t slot, bool fresh, index_t begin,
                 index_t count, const TensorView<float, 4>& o, AarenTriple& fin, bool reference) {
  seqmix::AarenInputs one{d.query.cview(), tokens(d.k.cview(), begin, count), tokens(d.v.cview(), begin, count), {}, {}};
  if (!fresh) one.initial_state = {pool0.m.slice(0, slot, 1), pool0.l.slice(0, slot, 1), pool0.acc.slice(0, slot, 1)};
  seqmix::AarenOptions options;
  options.split = seqmix::AarenSplit::heads;
  if (reference)
    seqmix::reference::aaren(one, {o, fin.view(), {}}, options);
  else
    seqmix::aaren(one, {o, fin.view(), {}}, options);
}

void require_triple(const char* what, const seqmix::AarenConstState& got, index_t row, AarenTriple& want) {
  INFO(what);
  require_equal("m", got.m.slice(0, row, 1), want.m.cview());
  require_equal("l", got.l.slice(0, row, 1), want.l.cview());
  require_equal("acc", got.acc.slice(0, row, 1), want.acc.cview());
}

TEST_CASE("aaren packed batches with slots and token_states equal each sequence alone", "[aaren][serving]") {
  struct Config {
    index_t N, H, Dk, Dv, max_len;
    bool threaded, wide, reference;
  };
  const index_t longest = st::small_test_scale() ? 150 : 700;
  const Config configs[] = {{16, 4, 32, 48, longest, true, true, false}, {9, 3, 17, 5, 200, false, false, false},
                            {7, 2, 8, 8, 40, false, true, true},         {1, 6, 16, 16, 1, true, false, false},
                            {12, 1, 64, 33, 90, true, false, false}};
  std::uint64_t seed = 10;
  for (const Config& c : configs) {
    const Ragged r = make_ragged(seed, c.N, 64, c.max_len);
    INFO(r.describe() << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " threaded=" << c.threaded
                      << " wide=" << c.wide << " reference=" << c.reference);
    AarenData d(r.total, r.pool, c.H, c.Dk, c.Dv, seed * 7);
    const Tensor<float, 2> m0 = d.m, l0 = d.l;
    const Tensor<float, 3> acc0 = d.acc;
    const seqmix::AarenConstState pool0{m0.cview(), l0.cview(), acc0.cview()};
    auto o = filled<4>({1, r.total, c.H, c.Dv}, kSentinel);
    Tensor<float, 3> ts_m({1, r.total, c.H}), ts_l({1, r.total, c.H});
    Tensor<float, 4> ts_acc({1, r.total, c.H, c.Dv});
    const seqmix::AarenInputs in{d.query.cview(), d.k.cview(), d.v.cview(), d.pool_const(), r.batch(c.wide)};
    const seqmix::AarenOutputs out{o.view(), d.pool(), {ts_m.view(), ts_l.view(), ts_acc.view()}};
    if (c.reference)
      seqmix::reference::aaren(in, out);
    else
      seqmix::aaren(in, out, {}, (c.threaded ? st::two_thread_pool() : seqmix::serial_executor()));
    std::vector<bool> used(static_cast<std::size_t>(r.pool), false);
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t0 = r.begin(n), T = r.len[n], slot = r.slot(n);
      INFO("sequence " << n << " length " << T << " slot " << slot);
      if (slot < 0) {
        for (index_t t = 0; t < T; ++t) CHECK(o(0, t0 + t, 0, 0) == kSentinel);
        continue;
      }
      used[static_cast<std::size_t>(slot)] = true;
      Tensor<float, 4> o1({1, T, c.H, c.Dv});
      AarenTriple fin(c.H, c.Dv);
      aaren_alone(d, pool0, slot, r.fresh(n), t0, T, o1.view(), fin, c.reference);
      require_equal("o", tokens(o.cview(), t0, T), o1.cview());
      if (T > 0) require_triple("final state", d.pool_const(), slot, fin);
      // token_states[t]: the final state of the same sequence cut after token t.
      for (index_t t = 0; t < T; t += std::max<index_t>(1, T / 4)) {
        Tensor<float, 4> ot({1, t + 1, c.H, c.Dv});
        AarenTriple kept(c.H, c.Dv);
        aaren_alone(d, pool0, slot, r.fresh(n), t0, t + 1, ot.view(), kept, c.reference);
        INFO("token " << t);
        require_equal("token_states.m", ts_m.cview().slice(1, t0 + t, 1).select(1, 0), kept.m.cview());
        require_equal("token_states.l", ts_l.cview().slice(1, t0 + t, 1).select(1, 0), kept.l.cview());
        require_equal("token_states.acc", ts_acc.cview().slice(1, t0 + t, 1).select(1, 0), kept.acc.cview());
      }
    }
    for (index_t s = 0; s < r.pool; ++s)
      if (!used[static_cast<std::size_t>(s)]) {
        INFO("pool hole " << s);
        require_equal("m", d.m.cview()[s], m0.cview()[s]);
        require_equal("acc", d.acc.cview()[s], acc0.cview()[s]);
      }
    ++seed;
  }
}

// A packed verify pass keeps token_states; odd sequences accept all their tokens, even ones roll
// back to half; then slotted steps (rows in another order, a padding row among them) decode 3
// more tokens each. Every row equals the dense operator over [accepted prefix ; new tokens].
TEST_CASE("aaren rollback through token_states, then slotted steps, equals one call", "[aaren][serving]") {
  const index_t H = 3, Dk = 16, Dv = 24, steps = 3;
  const Ragged r = make_ragged(30, 10, 8, 40, /*padding=*/false);
  INFO(r.describe());
  const index_t extra0 = r.total;
  AarenData d(r.total + r.N() * steps, r.pool, H, Dk, Dv, 300);
  const Tensor<float, 2> m0 = d.m, l0 = d.l;
  const Tensor<float, 3> acc0 = d.acc;
  const seqmix::AarenConstState pool0{m0.cview(), l0.cview(), acc0.cview()};
  Tensor<float, 4> o({1, r.total, H, Dv});
  Tensor<float, 3> ts_m({1, r.total, H}), ts_l({1, r.total, H});
  Tensor<float, 4> ts_acc({1, r.total, H, Dv});
  seqmix::aaren({d.query.cview(), tokens(d.k.cview(), 0, r.total), tokens(d.v.cview(), 0, r.total), d.pool_const(),
                 r.batch(true)},
                {o.view(), d.pool(), {ts_m.view(), ts_l.view(), ts_acc.view()}}, {}, st::two_thread_pool());
  std::vector<index_t> accepted;
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t j = n % 2 ? r.len[n] : r.len[n] / 2, slot = r.slot(n);
    accepted.push_back(j);
    if (j == r.len[n] && j > 0) continue;  // the prefill's final state is already in the slot
    if (j > 0) {
      seqmix::copy(ts_m.cview()[0][r.begin(n) + j - 1], d.m.view()[slot]);
      seqmix::copy(ts_l.cview()[0][r.begin(n) + j - 1], d.l.view()[slot]);
      seqmix::copy(ts_acc.cview()[0][r.begin(n) + j - 1], d.acc.view()[slot]);
    } else if (!r.fresh(n)) {
      seqmix::copy(m0.cview()[slot], d.m.view()[slot]);
      seqmix::copy(l0.cview()[slot], d.l.view()[slot]);
      seqmix::copy(acc0.cview()[slot], d.acc.view()[slot]);
    } else {
      seqmix::aaren_reset_state({d.m.view().slice(0, slot, 1), d.l.view().slice(0, slot, 1), d.acc.view().slice(0, slot, 1)});
    }
  }
  // Step rows: the sequences in reverse order with a padding row in the middle.
  std::vector<std::int32_t> rows;
  for (index_t n = r.N() - 1; n >= 0; --n) rows.push_back(static_cast<std::int32_t>(n));
  rows.insert(rows.begin() + 3, -1);
  const index_t B = static_cast<index_t>(rows.size());
  std::vector<std::int32_t> slots;
  for (const std::int32_t n : rows) slots.push_back(n < 0 ? -1 : static_cast<std::int32_t>(r.slot(n)));
  auto o_step = filled<3>({B, H, Dv}, kSentinel);
  for (index_t s = 0; s < steps; ++s) {
    Tensor<float, 3> k({B, H, Dk}), v({B, H, Dv});
    for (index_t b = 0; b < B; ++b) {
      const index_t t = extra0 + std::max<index_t>(rows[b], 0) * steps + s;
      seqmix::copy(d.k.cview()[0][t], k.view()[b]);
      seqmix::copy(d.v.cview()[0][t], v.view()[b]);
    }
    seqmix::AarenStepInputs in{d.query.cview(), k.cview(), v.cview(), {}};
    in.batch.state_indices = slots;
    seqmix::aaren_step(in, o_step.view(), d.pool());
  }
  for (index_t b = 0; b < B; ++b) {
    if (rows[b] < 0) {
      CHECK(o_step(b, 0, 0) == kSentinel);
      continue;
    }
    const index_t n = rows[b], j = accepted[static_cast<std::size_t>(n)], L = j + steps, slot = r.slot(n);
    INFO("row " << b << " sequence " << n << " accepted " << j << " of " << r.len[n]);
    // The sequence as one dense call: its accepted tokens, then its 3 new ones.
    Tensor<float, 4> kk({1, L, H, Dk}), vv({1, L, H, Dv}), oo({1, L, H, Dv});
    for (index_t t = 0; t < L; ++t) {
      const index_t src = t < j ? r.begin(n) + t : extra0 + n * steps + (t - j);
      seqmix::copy(d.k.cview()[0][src], kk.view()[0][t]);
      seqmix::copy(d.v.cview()[0][src], vv.view()[0][t]);
    }
    seqmix::AarenInputs one{d.query.cview(), kk.cview(), vv.cview(), {}, {}};
    if (!r.fresh(n)) one.initial_state = {pool0.m.slice(0, slot, 1), pool0.l.slice(0, slot, 1), pool0.acc.slice(0, slot, 1)};
    AarenTriple fin(H, Dv);
    seqmix::AarenOptions options;
    options.split = seqmix::AarenSplit::heads;
    seqmix::aaren(one, {oo.view(), fin.view(), {}}, options);
    require_equal("last step output", o_step.cview()[b], oo.cview()[0][L - 1]);
    require_triple("slot after the steps", d.pool_const(), slot, fin);
  }
}

// Checks an operator refuses a call with a ShapeError naming `argument` and leaves `out` and
// `pool` as they were.
template <std::size_t RO, std::size_t RP, class Call>
void require_refused(const char* argument, const Tensor<float, RO>& out, const Tensor<float, RP>& pool, Call&& call) {
  const Tensor<float, RO> out0 = out;
  const Tensor<float, RP> pool0 = pool;
  st::require_shape_error(argument, call);
  require_equal("output after a refused call", out.cview(), out0.cview());
  require_equal("pool after a refused call", pool.cview(), pool0.cview());
}

TEST_CASE("aaren serving forms refuse bad input before writing", "[aaren][serving][errors]") {
  const index_t total = 20, H = 2, Dk = 8, Dv = 8, S = 4;
  AarenData d(total, S, H, Dk, Dv, 500);
  Tensor<float, 4> o = st::random_tensor<4>({1, total, H, Dv}, 501);
  auto call = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&d, &o, cu, slots] {
      seqmix::AarenInputs in{d.query.cview(), d.k.cview(), d.v.cview(), d.pool_const(), {}};
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::aaren(in, {o.view(), d.pool(), {}});
    };
  };
  require_refused("cu_seqlens", o, d.acc, call({0, 12, 8, 20}, {0, 1, 2}));
  require_refused("cu_seqlens", o, d.acc, call({0, 8, 19}, {0, 1}));
  require_refused("state_indices", o, d.acc, call({0, 8, 20}, {-2, 1}));
  require_refused("state_indices", o, d.acc, call({0, 8, 20}, {4, 1}));
  require_refused("state_indices", o, d.acc, call({0, 8, 20}, {3, 3}));
  require_refused("state_indices", o, d.acc, call({0, 8, 20}, {0, 1, 2}));
  // Without slots, a packed call needs one state row per sequence.
  require_refused("state", o, d.acc, call({0, 8, 20}, {}));
  // token_states of the wrong shape.
  require_refused("token_states.acc", o, d.acc, [&] {
    Tensor<float, 3> tm({1, total, H}), tl({1, total, H});
    Tensor<float, 4> tacc({1, total, H, Dv + 1});
    seqmix::aaren({d.query.cview(), d.k.cview(), d.v.cview(), {}, {}}, {o.view(), {}, {tm.view(), tl.view(), tacc.view()}});
  });
  // o over the keys.
  Tensor<float, 4> kv = st::random_tensor<4>({1, total, H, Dv}, 502);
  require_refused("o", kv, d.acc, [&] {
    seqmix::aaren({d.query.cview().slice(1, 0, Dv), kv.cview(), kv.cview(), {}, {}}, {kv.view(), {}, {}});
  });
  // Steps: no cu_seqlens, slots in range and distinct.
  Tensor<float, 3> os = st::random_tensor<3>({2, H, Dv}, 503);
  auto step = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&d, &os, cu, slots] {
      seqmix::AarenStepInputs in{d.query.cview(), d.k.cview()[0].slice(0, 0, 2), d.v.cview()[0].slice(0, 0, 2), {}};
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::aaren_step(in, os.view(), d.pool());
    };
  };
  require_refused("batch.cu_seqlens", os, d.acc, step({0, 1, 2}, {0, 1}));
  require_refused("state_indices", os, d.acc, step({}, {0, 4}));
  require_refused("state_indices", os, d.acc, step({}, {1, 1}));
  require_refused("state", os, d.acc, step({}, {}));  // 2 rows against a pool of 4
  // Without states a packed call is a stateless prefill: each sequence from the empty state.
  const std::vector<std::int64_t> cu = {0, 8, 20};
  Tensor<float, 4> o_packed({1, total, H, Dv}), o_alone({1, 12, H, Dv});
  seqmix::AarenInputs packed{d.query.cview(), d.k.cview(), d.v.cview(), {}, {}};
  packed.batch.cu_seqlens = cu;
  seqmix::aaren(packed, {o_packed.view(), {}, {}});
  seqmix::aaren({d.query.cview(), tokens(d.k.cview(), 8, 12), tokens(d.v.cview(), 8, 12), {}, {}}, {o_alone.view(), {}, {}});
  require_equal("stateless packed call", tokens(o_packed.cview(), 8, 12), o_alone.cview());
}

// ---- Nonlinear recurrence (Newton) ---------------------------------------------------------

using Cell = seqmix::MinGruCell;

struct RecurrenceData {
  index_t D;
  std::vector<Tensor<float, 3>> streams;
  std::vector<Tensor<float, 1>> params;
  RecurrenceData(index_t total, index_t D_, std::uint64_t seed) : D(D_) {
    for (int s = 0; s < Cell::kInputs; ++s) streams.push_back(st::random_tensor<3>({1, total, D_}, seed + s));
    for (int s = 0; s < Cell::kParams; ++s) params.push_back(st::random_tensor<1>({D_}, seed + 10 + s));
  }
  seqmix::NonlinearRecurrenceInputs<Cell> slice(index_t begin, index_t count) const {
    seqmix::NonlinearRecurrenceInputs<Cell> in;
    for (int s = 0; s < Cell::kInputs; ++s) in.inputs[s] = tokens(streams[s].cview(), begin, count);
    for (int s = 0; s < Cell::kParams; ++s) in.params[s] = params[s].cview();
    return in;
  }
};

TEST_CASE("nonlinear_recurrence packed batches with slots equal each sequence alone", "[newton][serving]") {
  enum class Form { sequential, reference, newton, newton_reference };
  const Form forms[] = {Form::sequential, Form::reference, Form::newton, Form::newton_reference};
  std::uint64_t seed = 60;
  for (const Form form : forms) {
    for (const bool threaded : {false, true}) {
      const bool newton = form == Form::newton || form == Form::newton_reference;
      const bool reference = form == Form::reference || form == Form::newton_reference;
      const Ragged r = make_ragged(++seed, 11, 16, reference ? 60 : (st::small_test_scale() ? 150 : 700));
      INFO(r.describe() << " form " << static_cast<int>(form) << " threaded=" << threaded);
      const index_t D = 37;
      const RecurrenceData d(r.total, D, seed * 3);
      Tensor<float, 2> pool = st::random_tensor<2>({r.pool, D}, seed);
      const Tensor<float, 2> pool0 = pool;
      auto h = filled<3>({1, r.total, D}, kSentinel);
      seqmix::NonlinearRecurrenceInputs<Cell> in = d.slice(0, r.total);
      in.h0 = pool.cview();
      in.batch = r.batch(threaded);
      const seqmix::NonlinearRecurrenceOutputs out{h.view(), pool.view()};
      seqmix::NonlinearRecurrenceNewtonOptions options;
      options.max_iterations = 1000;
      seqmix::NewtonReport report;
      const seqmix::Executor& ex = threaded ? st::two_thread_pool() : seqmix::serial_executor();
      switch (form) {
        case Form::sequential: seqmix::nonlinear_recurrence(in, out, ex); break;
        case Form::reference: seqmix::reference::nonlinear_recurrence(in, out); break;
        case Form::newton: report = seqmix::nonlinear_recurrence_newton(in, out, options, ex); break;
        case Form::newton_reference: report = seqmix::reference::nonlinear_recurrence_newton(in, out, options); break;
      }
      if (newton) CHECK(report.converged);
      std::vector<bool> used(static_cast<std::size_t>(r.pool), false);
      for (index_t n = 0; n < r.N(); ++n) {
        const index_t t0 = r.begin(n), T = r.len[n], slot = r.slot(n);
        INFO("sequence " << n << " length " << T << " slot " << slot);
        if (slot < 0) {
          for (index_t t = 0; t < T; ++t) CHECK(h(0, t0 + t, 0) == kSentinel);
          continue;
        }
        used[static_cast<std::size_t>(slot)] = true;
        seqmix::NonlinearRecurrenceInputs<Cell> one = d.slice(t0, T);
        if (!r.fresh(n)) one.h0 = pool0.cview().slice(0, slot, 1);
        Tensor<float, 3> h1({1, T, D});
        Tensor<float, 2> last({1, D});
        seqmix::NewtonReport alone;
        switch (form) {
          case Form::sequential: seqmix::nonlinear_recurrence(one, {h1.view(), last.view()}, ex); break;
          case Form::reference: seqmix::reference::nonlinear_recurrence(one, {h1.view(), last.view()}); break;
          case Form::newton: alone = seqmix::nonlinear_recurrence_newton(one, {h1.view(), last.view()}, options, ex); break;
          case Form::newton_reference:
            alone = seqmix::reference::nonlinear_recurrence_newton(one, {h1.view(), last.view()}, options);
            break;
        }
        if (newton) CHECK(alone.iterations <= report.iterations);
        require_equal("h", tokens(h.cview(), t0, T), h1.cview());
        require_equal("h_last in the slot", pool.cview().slice(0, slot, 1), last.cview());
      }
      for (index_t s = 0; s < r.pool; ++s)
        if (!used[static_cast<std::size_t>(s)]) require_equal("pool hole", pool.cview()[s], pool0.cview()[s]);
    }
  }
}

// Prefill into slots, roll every other sequence back to half its tokens (h is the state after
// each token), then slotted steps: equals the sequential loop over [accepted ; new tokens].
TEST_CASE("nonlinear_recurrence rollback and slotted steps equal one call", "[newton][serving]") {
  const index_t D = 21, steps = 3;
  const Ragged r = make_ragged(70, 9, 4, 30, /*padding=*/false);
  INFO(r.describe());
  const RecurrenceData d(r.total + r.N() * steps, D, 710);
  Tensor<float, 2> pool = st::random_tensor<2>({r.pool, D}, 71);
  const Tensor<float, 2> pool0 = pool;
  Tensor<float, 3> h({1, r.total, D});
  seqmix::NonlinearRecurrenceInputs<Cell> in = d.slice(0, r.total);
  in.h0 = pool.cview();
  in.batch = r.batch(false);
  seqmix::nonlinear_recurrence(in, {h.view(), pool.view()}, st::two_thread_pool());
  std::vector<index_t> accepted;
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t j = n % 2 ? r.len[n] : r.len[n] / 2, slot = r.slot(n);
    accepted.push_back(j);
    if (j > 0)
      seqmix::copy(h.cview()[0][r.begin(n) + j - 1], pool.view()[slot]);
    else if (!r.fresh(n))
      seqmix::copy(pool0.cview()[slot], pool.view()[slot]);
  }
  // Fresh sequences that kept no token start from zero through has_initial_state.
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(r.N()), 1);
  for (index_t n = 0; n < r.N(); ++n)
    if (accepted[static_cast<std::size_t>(n)] == 0 && r.fresh(n)) keep[static_cast<std::size_t>(n)] = 0;
  for (index_t s = 0; s < steps; ++s) {
    std::vector<Tensor<float, 2>> x;
    seqmix::NonlinearRecurrenceStepInputs<Cell> step;
    for (int i = 0; i < Cell::kInputs; ++i) {
      x.emplace_back(std::array<index_t, 2>{r.N(), D});
      for (index_t n = 0; n < r.N(); ++n)
        seqmix::copy(d.streams[static_cast<std::size_t>(i)].cview()[0][r.total + n * steps + s], x.back().view()[n]);
    }
    for (int i = 0; i < Cell::kInputs; ++i) step.inputs[i] = x[static_cast<std::size_t>(i)].cview();
    for (int i = 0; i < Cell::kParams; ++i) step.params[i] = d.params[static_cast<std::size_t>(i)].cview();
    step.batch.state_indices = r.slot32;
    if (s == 0) step.batch.has_initial_state = keep;
    seqmix::nonlinear_recurrence_step<Cell>(step, pool.view());
  }
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t j = accepted[static_cast<std::size_t>(n)], L = j + steps, slot = r.slot(n);
    INFO("sequence " << n << " accepted " << j << " of " << r.len[n]);
    std::vector<Tensor<float, 3>> xs;
    seqmix::NonlinearRecurrenceInputs<Cell> one;
    for (int i = 0; i < Cell::kInputs; ++i) {
      xs.emplace_back(std::array<index_t, 3>{1, L, D});
      for (index_t t = 0; t < L; ++t)
        seqmix::copy(d.streams[static_cast<std::size_t>(i)].cview()[0][t < j ? r.begin(n) + t : r.total + n * steps + t - j],
                     xs.back().view()[0][t]);
      one.inputs[i] = xs.back().cview();
    }
    for (int i = 0; i < Cell::kParams; ++i) one.params[i] = d.params[static_cast<std::size_t>(i)].cview();
    if (!r.fresh(n)) one.h0 = pool0.cview().slice(0, slot, 1);
    Tensor<float, 3> h1({1, L, D});
    Tensor<float, 2> last({1, D});
    seqmix::reference::nonlinear_recurrence(one, {h1.view(), last.view()});
    st::require_close("slot after the steps", pool.cview().slice(0, slot, 1), last.cview(), 1e-6);
  }
  // Without h0 or h_last a packed call starts every sequence from h = 0.
  const index_t n1 = 1;
  Tensor<float, 3> h_packed({1, r.total, D}), h_alone({1, r.len[n1], D});
  seqmix::NonlinearRecurrenceInputs<Cell> packed = d.slice(0, r.total);
  packed.batch.cu_seqlens = r.cu32;
  seqmix::nonlinear_recurrence(packed, {h_packed.view(), {}});
  seqmix::nonlinear_recurrence(d.slice(r.begin(n1), r.len[n1]), {h_alone.view(), {}});
  require_equal("stateless packed call", tokens(h_packed.cview(), r.begin(n1), r.len[n1]), h_alone.cview());
}

// ---- Normalized linear attention -----------------------------------------------------------

// token_states and token_normalizers of a normalized packed prefill equal the final state and
// normalizer of the sequence cut after that token; rolling a slot back to them and stepping
// equals one call over [accepted ; new tokens].
TEST_CASE("linear_attention normalizer token states roll a verify back", "[linear_attention][serving]") {
  const index_t H = 2, HV = 4, K = 8, V = 16, steps = 2;
  const Ragged r = make_ragged(80, 8, 8, st::small_test_scale() ? 40 : 120, /*padding=*/true);
  INFO(r.describe());
  const index_t total = r.total + r.N() * steps, Kf = K;
  const Tensor<float, 4> q = st::random_tensor<4>({1, total, H, K}, 81), k = st::random_tensor<4>({1, total, H, K}, 82),
                         v = st::random_tensor<4>({1, total, HV, V}, 83);
  Tensor<float, 4> pool = st::random_tensor<4>({r.pool, HV, Kf, V}, 84);
  Tensor<float, 3> z = st::random_tensor<3>({r.pool, HV, Kf}, 85, 0.5f, 1.f);
  const Tensor<float, 4> pool0 = pool;
  const Tensor<float, 3> z0 = z;
  seqmix::LinearAttentionOptions options;
  options.feature_map = seqmix::FeatureMap::elu1;
  options.normalize = true;
  auto o = filled<4>({1, r.total, HV, V}, kSentinel);
  Tensor<float, 5> ts({1, r.total, HV, Kf, V});
  Tensor<float, 4> tz({1, r.total, HV, Kf});
  seqmix::LinearAttentionInputs in{tokens(q.cview(), 0, r.total), tokens(k.cview(), 0, r.total),
                                   tokens(v.cview(), 0, r.total), pool.cview(), z.cview(), r.batch(true)};
  seqmix::LinearAttentionOutputs out{o.view(), pool.view(), z.view(), ts.view(), tz.view()};
  seqmix::linear_attention(in, out, options, st::two_thread_pool());
  // The same call through the reference keeps the same token states (within tolerance).
  {
    Tensor<float, 4> p2 = pool0, o2({1, r.total, HV, V});
    Tensor<float, 3> z2 = z0;
    Tensor<float, 5> ts2({1, r.total, HV, Kf, V});
    Tensor<float, 4> tz2({1, r.total, HV, Kf});
    seqmix::reference::linear_attention({in.q, in.k, in.v, p2.cview(), z2.cview(), r.batch(false)},
                                        {o2.view(), p2.view(), z2.view(), ts2.view(), tz2.view()}, options);
    for (index_t n = 0; n < r.N(); ++n) {
      if (r.slot(n) < 0) continue;
      INFO("sequence " << n);
      st::require_close("token_states", tokens(ts.cview(), r.begin(n), r.len[n]), tokens(ts2.cview(), r.begin(n), r.len[n]), 1e-5);
      st::require_close("token_normalizers", tokens(tz.cview(), r.begin(n), r.len[n]), tokens(tz2.cview(), r.begin(n), r.len[n]), 1e-5);
    }
  }
  std::vector<index_t> accepted;
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t T = r.len[n], slot = r.slot(n), j = n % 2 ? T : T / 2;
    accepted.push_back(j);
    if (slot < 0) {
      for (index_t t = 0; t < T; ++t) CHECK(o(0, r.begin(n) + t, 0, 0) == kSentinel);
      continue;
    }
    // Token states against the dense call of the sequence cut after token t (bit for bit: the
    // recurrent form runs the same operations either way).
    for (index_t t = 0; t < T; t += std::max<index_t>(1, T / 3)) {
      Tensor<float, 4> s1({1, HV, Kf, V}), o1({1, t + 1, HV, V});
      Tensor<float, 3> z1({1, HV, Kf});
      seqmix::LinearAttentionInputs one{tokens(q.cview(), r.begin(n), t + 1), tokens(k.cview(), r.begin(n), t + 1),
                                        tokens(v.cview(), r.begin(n), t + 1), {}, {}, {}};
      if (!r.fresh(n)) one.initial_state = pool0.cview().slice(0, slot, 1), one.initial_normalizer = z0.cview().slice(0, slot, 1);
      seqmix::LinearAttentionOptions single = options;
      single.algorithm = seqmix::LinearAttentionAlgorithm::recurrent;
      seqmix::linear_attention(one, {o1.view(), s1.view(), z1.view(), {}, {}}, single);
      INFO("sequence " << n << " token " << t);
      require_equal("token_states[t]", ts.cview().slice(1, r.begin(n) + t, 1).select(1, 0), s1.cview());
      require_equal("token_normalizers[t]", tz.cview().slice(1, r.begin(n) + t, 1).select(1, 0), z1.cview());
    }
    if (j == T) continue;
    if (j > 0) {
      seqmix::copy(ts.cview()[0][r.begin(n) + j - 1], pool.view()[slot]);
      seqmix::copy(tz.cview()[0][r.begin(n) + j - 1], z.view()[slot]);
    } else {
      seqmix::copy(pool0.cview()[slot], pool.view()[slot]);
      seqmix::copy(z0.cview()[slot], z.view()[slot]);
    }
  }
  // Steps keep fresh sequences that accepted nothing at zero through has_initial_state.
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(r.N()), 1);
  for (index_t n = 0; n < r.N(); ++n)
    if (accepted[static_cast<std::size_t>(n)] == 0 && r.fresh(n)) keep[static_cast<std::size_t>(n)] = 0;
  auto o_step = filled<3>({r.N(), HV, V}, kSentinel);
  for (index_t s = 0; s < steps; ++s) {
    Tensor<float, 3> qs({r.N(), H, K}), ks({r.N(), H, K}), vs({r.N(), HV, V});
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t = r.total + n * steps + s;
      seqmix::copy(q.cview()[0][t], qs.view()[n]);
      seqmix::copy(k.cview()[0][t], ks.view()[n]);
      seqmix::copy(v.cview()[0][t], vs.view()[n]);
    }
    seqmix::LinearAttentionStepInputs step{qs.cview(), ks.cview(), vs.cview(), {}};
    step.batch.state_indices = r.slot64;
    if (s == 0) step.batch.has_initial_state = keep;
    seqmix::linear_attention_step(step, {o_step.view(), pool.view(), z.view()}, options);
  }
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t slot = r.slot(n), j = accepted[static_cast<std::size_t>(n)], L = j + steps;
    if (slot < 0) {
      CHECK(o_step(n, 0, 0) == kSentinel);
      continue;
    }
    INFO("sequence " << n << " accepted " << j << " of " << r.len[n]);
    Tensor<float, 4> qq({1, L, H, K}), kk({1, L, H, K}), vv({1, L, HV, V}), oo({1, L, HV, V}), s1({1, HV, Kf, V});
    Tensor<float, 3> z1({1, HV, Kf});
    for (index_t t = 0; t < L; ++t) {
      const index_t src = t < j ? r.begin(n) + t : r.total + n * steps + t - j;
      seqmix::copy(q.cview()[0][src], qq.view()[0][t]);
      seqmix::copy(k.cview()[0][src], kk.view()[0][t]);
      seqmix::copy(v.cview()[0][src], vv.view()[0][t]);
    }
    seqmix::LinearAttentionInputs one{qq.cview(), kk.cview(), vv.cview(), {}, {}, {}};
    if (!r.fresh(n)) one.initial_state = pool0.cview().slice(0, slot, 1), one.initial_normalizer = z0.cview().slice(0, slot, 1);
    seqmix::reference::linear_attention(one, {oo.view(), s1.view(), z1.view(), {}, {}}, options);
    st::require_close("last step output", o_step.cview()[n], oo.cview()[0][L - 1], 1e-5);
    st::require_close("state", pool.cview().slice(0, slot, 1), s1.cview(), 1e-5);
    st::require_close("normalizer", z.cview().slice(0, slot, 1), z1.cview(), 1e-5);
  }
  // token_normalizers need normalize, and no JRT prefix.
  seqmix::LinearAttentionOptions plain;
  st::require_shape_error("token_normalizers", [&] {
    seqmix::linear_attention({in.q, in.k, in.v, {}, {}, {}}, {o.view(), {}, {}, {}, tz.view()}, plain);
  });
  seqmix::LinearAttentionOptions prefix = options;
  prefix.prefix_len = 1;
  st::require_shape_error("token_normalizers", [&] {
    seqmix::linear_attention({in.q, in.k, in.v, {}, {}, {}}, {o.view(), {}, {}, {}, tz.view()}, prefix);
  });
}

}  // namespace

// ---- Per-slot positions: RAT, BASED, Infini-attention, Mega -------------------------------------
// Their states hold token buffers addressed by the position, so the pool carries one int64
// position per slot. A serving call (packed prefill or slotted step) must equal each sequence run
// alone through the dense form on a copy of its slot, bit for bit; holes and padding untouched.

// Random start positions of a pool's slots, in [0, max_position].
std::vector<std::int64_t> random_positions(index_t S, index_t max_position, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int64_t> p(static_cast<std::size_t>(S));
  for (auto& x : p) x = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(max_position + 1));
  return p;
}

TensorView<std::int64_t, 1> positions_view(std::vector<std::int64_t>& p) {
  return TensorView<std::int64_t, 1>(p.data(), {static_cast<index_t>(p.size())});
}

// The ragged sizes the position tests sweep: lengths 1..max_len (plus an empty sequence), up to
// 8 sequences, a pool with holes, padding rows; run serially and on two threads.
struct PositionsConfig {
  index_t N, max_len;
  bool threaded, wide, reference;
};
const PositionsConfig kPositionsConfigs[] = {{8, 300, true, true, false},
                                             {5, 40, false, false, false},
                                             {6, 24, false, true, true},
                                             {1, 1, true, false, false}};

// Zeroes row `row` of a contiguous pool tensor (a fresh sequence's recurrent state).
template <std::size_t R>
void clear_row(Tensor<float, R>& x, index_t row) {
  const index_t n = x.numel() / x.size(0);
  std::fill(x.data() + row * n, x.data() + (row + 1) * n, 0.f);
}

// Step rows: every sequence of r once, in reverse order, with a padding row after the second.
std::vector<std::int32_t> step_slots(const Ragged& r, std::vector<index_t>* sequence_of_row) {
  std::vector<std::int32_t> slots;
  sequence_of_row->clear();
  for (index_t n = r.N() - 1; n >= 0; --n) {
    if (r.slot(n) < 0) continue;
    slots.push_back(static_cast<std::int32_t>(r.slot(n)));
    sequence_of_row->push_back(n);
    if (slots.size() == 2) slots.push_back(-1), sequence_of_row->push_back(-1);
  }
  return slots;
}

// The packed-batch check of the families with per-slot positions: one packed call `run(inputs,
// o, &state, reference, executor)` over r's sequences (slots, holes, padding rows, fresh
// sequences) must equal each sequence alone through the same call on a copy of its slot, bit for
// bit, and advance exactly the used slots' positions. Pool: state(), row(slot, position, fresh),
// require_row(), pos; Data: inputs(begin, count). `H` and `Dout` are the output's last two sizes.
template <class Pool, class Data, class Run>
void require_packed_equals_alone(const PositionsConfig& c, const Ragged& r, const Data& d, Pool& pool, index_t H,
                                 index_t Dout, Run&& run) {
  INFO(r.describe() << " threaded=" << c.threaded << " wide=" << c.wide << " reference=" << c.reference);
  Pool alone = pool;
  auto o = filled<4>({1, r.total, H, Dout}, kSentinel);
  auto in = d.inputs(0, r.total);
  in.batch = r.batch(c.wide);
  auto state = pool.state();
  const seqmix::Executor& ex = c.threaded ? st::two_thread_pool() : seqmix::serial_executor();
  run(in, o.view(), &state, c.reference, ex);
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t t0 = r.begin(n), T = r.len[n], slot = r.slot(n);
    INFO("sequence " << n << " length " << T << " slot " << slot);
    if (slot < 0) {
      for (index_t t = 0; t < T; ++t) CHECK(o(0, t0 + t, 0, 0) == kSentinel);
      continue;
    }
    const index_t p0 = r.fresh(n) ? 0 : alone.pos[static_cast<std::size_t>(slot)];
    Tensor<float, 4> o1({1, T, H, Dout});
    auto one = alone.row(slot, p0, r.fresh(n));
    run(d.inputs(t0, T), o1.view(), &one, c.reference, ex);
    require_equal("o", tokens(o.cview(), t0, T), o1.cview());
    pool.require_row("state", alone, slot);
    CHECK(pool.pos[static_cast<std::size_t>(slot)] == p0 + T);
    alone.pos[static_cast<std::size_t>(slot)] = p0 + T;
  }
  CHECK(pool.pos == alone.pos);  // holes and padding slots keep their positions
  for (index_t s = 0; s < r.pool; ++s) pool.require_row("every slot", alone, s);
}

// A packed [1, n, ...] tensor of the tokens src[0..n) of a packed [1, total, ...] tensor.
Tensor<float, 4> gather_tokens(const Tensor<float, 4>& x, const std::vector<index_t>& src) {
  Tensor<float, 4> g({1, static_cast<index_t>(src.size()), x.size(2), x.size(3)});
  for (std::size_t i = 0; i < src.size(); ++i) seqmix::copy(x.cview()[0][src[i]], g.view()[0][static_cast<index_t>(i)]);
  return g;
}

// The prefill-then-steps check of the families with per-slot positions: a packed prefill of r's
// sequences, all fresh, from a pool at position 0, then `steps` slotted steps over every sequence
// (reverse order, a padding row), must equal for each sequence the dense prefill then B = 1 steps
// from `blank` (a one-slot pool) bit for bit, and one call over all its tokens within the
// prefill/step tolerance of test_hybrid_mixers. prefill(inputs, o, state pointer or nullptr,
// executor) and step(step_inputs, o, state, executor) call the operator; Data: inputs(begin,
// count), step_inputs(begin, count), gather(tokens). Step k of sequence n reads token
// r.total + n * steps + k of d.
template <class Pool, class Data, class Prefill, class Step>
void require_prefill_then_steps(const Ragged& r, bool wide, const Data& d, Pool& pool, const Pool& blank,
                                index_t steps, index_t H, index_t Dout, Prefill&& prefill, Step&& step) {
  const index_t extra0 = r.total;
  seqmix::SequenceBatch batch = r.batch(wide);
  const std::vector<std::uint8_t> fresh(static_cast<std::size_t>(r.N()), 0);
  batch.has_initial_state = fresh;  // one dense call from position 0 is then the whole sequence
  auto in = d.inputs(0, r.total);
  in.batch = batch;
  Tensor<float, 4> o({1, r.total, H, Dout});
  auto state = pool.state();
  prefill(in, o.view(), &state, st::two_thread_pool());
  std::vector<index_t> seq_of_row;
  const std::vector<std::int32_t> slots = step_slots(r, &seq_of_row);
  const index_t B = static_cast<index_t>(slots.size());
  auto o_step = filled<4>({steps, B, H, Dout}, kSentinel);
  for (index_t s = 0; s < steps; ++s) {
    std::vector<index_t> src;
    for (index_t b = 0; b < B; ++b) src.push_back(extra0 + std::max<index_t>(seq_of_row[b], 0) * steps + s);
    const Data rows = d.gather(src);
    auto sin = rows.step_inputs(0, B);
    sin.batch.state_indices = slots;
    step(sin, o_step.view()[s], state, st::two_thread_pool());
  }
  for (index_t b = 0; b < B; ++b) {
    const index_t n = seq_of_row[b];
    if (n < 0) {
      for (index_t s = 0; s < steps; ++s) CHECK(o_step(s, b, 0, 0) == kSentinel);
      continue;
    }
    const index_t len = r.len[n], L = len + steps, slot = r.slot(n);
    INFO("row " << b << " sequence " << n << " length " << len);
    CHECK(pool.pos[static_cast<std::size_t>(slot)] == L);
    std::vector<index_t> src;
    for (index_t t = 0; t < L; ++t) src.push_back(t < len ? r.begin(n) + t : extra0 + n * steps + (t - len));
    const Data one_seq = d.gather(src);
    Tensor<float, 4> oo({1, L, H, Dout}), o_pre({1, len, H, Dout});
    prefill(one_seq.inputs(0, L), oo.view(), nullptr, seqmix::serial_executor());
    Pool one = blank;
    auto st1 = one.row(0, 0, true);
    prefill(one_seq.inputs(0, len), o_pre.view(), &st1, seqmix::serial_executor());
    for (index_t s = 0; s < steps; ++s) {
      const index_t t = len + s;
      Tensor<float, 3> o1({1, H, Dout});
      step(one_seq.step_inputs(t, 1), o1.view(), st1, seqmix::serial_executor());
      require_equal("step output = dense step", o_step.cview()[s].slice(0, b, 1), o1.cview());
      st::require_close("step output ~ one call", o_step.cview()[s][b], oo.cview()[0][t], 2e-4);
    }
  }
}

// `call` must throw a ShapeError naming `argument` and leave the packed output `o`, every slot of
// `pool` and its positions as they were.
template <class Pool, class Call>
void require_refused_in_pool(const char* argument, Tensor<float, 4>& o, Pool& pool, Call&& call) {
  const Tensor<float, 4> o0 = o;
  const Pool pool0 = pool;
  st::require_shape_error(argument, call);
  require_equal("output after a refused call", o.cview(), o0.cview());
  for (std::size_t s = 0; s < pool.pos.size(); ++s)
    pool.require_row("pool after a refused call", pool0, static_cast<index_t>(s));
  CHECK(pool.pos == pool0.pos);
}

// ---- RAT

struct RatPool {
  Tensor<float, 4> ck, cv;
  Tensor<float, 3> kr, vr;
  std::vector<std::int64_t> pos;
  RatPool(index_t S, index_t C, index_t Hkv, index_t D, index_t max_position, std::uint64_t seed)
      : ck(st::random_tensor<4>({S, C, Hkv, D}, seed)), cv(st::random_tensor<4>({S, C, Hkv, D}, seed + 1)),
        kr(st::random_tensor<3>({S, Hkv, D}, seed + 2)), vr(st::random_tensor<3>({S, Hkv, D}, seed + 3)),
        pos(random_positions(S, max_position, seed + 4)) {}
  seqmix::RatState state() { return {ck.view(), cv.view(), kr.view(), vr.view(), 0, positions_view(pos)}; }
  // Slot `slot` as a one-row dense state at `position` (no positions). RAT keeps no running sum
  // to clear for a fresh sequence: position 0 restarts its buffers.
  seqmix::RatState row(index_t slot, index_t position, bool /*fresh*/) {
    return {ck.view().slice(0, slot, 1), cv.view().slice(0, slot, 1), kr.view().slice(0, slot, 1),
            vr.view().slice(0, slot, 1), position, {}};
  }
  void require_row(const char* what, const RatPool& want, index_t slot) const {
    INFO(what);
    require_equal("chunk_k", ck.cview()[slot], want.ck.cview()[slot]);
    require_equal("chunk_v", cv.cview()[slot], want.cv.cview()[slot]);
    require_equal("k_run", kr.cview()[slot], want.kr.cview()[slot]);
    require_equal("v_run", vr.cview()[slot], want.vr.cview()[slot]);
  }
};

struct RatData {
  Tensor<float, 4> q, k, v, g;
  RatData(index_t total, index_t H, index_t Hkv, index_t D, std::uint64_t seed)
      : q(st::random_tensor<4>({1, total, H, D}, seed)), k(st::random_tensor<4>({1, total, Hkv, D}, seed + 1)),
        v(st::random_tensor<4>({1, total, Hkv, D}, seed + 2)),
        g(st::random_tensor<4>({1, total, Hkv, D}, seed + 3, -2.f, -0.01f)) {}
  seqmix::RatInputs inputs(index_t begin, index_t count) const {
    return {tokens(q.cview(), begin, count), tokens(k.cview(), begin, count), tokens(v.cview(), begin, count),
            tokens(g.cview(), begin, count), {}};
  }
  seqmix::RatStepInputs step_inputs(index_t begin, index_t count) const {
    return {q.cview()[0].slice(0, begin, count), k.cview()[0].slice(0, begin, count),
            v.cview()[0].slice(0, begin, count), g.cview()[0].slice(0, begin, count), {}};
  }
  RatData gather(const std::vector<index_t>& src) const {
    RatData out = *this;
    out.q = gather_tokens(q, src), out.k = gather_tokens(k, src), out.v = gather_tokens(v, src);
    out.g = gather_tokens(g, src);
    return out;
  }
};

TEST_CASE("rat packed batches with slots and positions equal each sequence alone", "[rat][serving]") {
  const index_t H = 4, Hkv = 2, D = 16, max_position = 50;
  std::uint64_t seed = 1000;
  for (const PositionsConfig& c : kPositionsConfigs) {
    seqmix::RatOptions options;
    options.chunk_size = 8;
    const Ragged r = make_ragged(seed, c.N, options.chunk_size, c.max_len);
    const index_t C = (max_position + c.max_len) / options.chunk_size + 1;
    RatData d(r.total, H, Hkv, D, seed * 3);
    RatPool pool(r.pool, C, Hkv, D, max_position, seed * 5);
    require_packed_equals_alone(c, r, d, pool, H, D,
                                [&](const auto& in, auto o, auto* state, bool reference, const seqmix::Executor& ex) {
                                  if (reference)
                                    seqmix::reference::rat(in, {o}, options, state);
                                  else
                                    seqmix::rat(in, {o}, options, state, ex);
                                });
    ++seed;
  }
}

TEST_CASE("rat packed prefill then slotted steps equals each sequence in one call", "[rat][serving]") {
  const index_t H = 4, Hkv = 1, D = 8, steps = 5;
  seqmix::RatOptions options;
  options.chunk_size = 4;
  const Ragged r = make_ragged(1100, 7, options.chunk_size, 30);
  INFO(r.describe());
  const index_t C = 40;
  RatData d(r.total + r.N() * steps, H, Hkv, D, 1101);
  RatPool pool(r.pool, C, Hkv, D, 0, 1102);
  std::fill(pool.pos.begin(), pool.pos.end(), 0);
  require_prefill_then_steps(
      r, true, d, pool, RatPool(1, C, Hkv, D, 0, 7), steps, H, D,
      [&](const auto& in, auto o, auto state, const seqmix::Executor& ex) { seqmix::rat(in, {o}, options, state, ex); },
      [&](const auto& in, auto o, seqmix::RatState& state, const seqmix::Executor& ex) {
        seqmix::rat_step(in, {o}, state, options, ex);
      });
}


TEST_CASE("rat serving forms refuse bad input before writing", "[rat][serving][errors]") {
  const index_t total = 20, H = 2, Hkv = 1, D = 8, S = 4, C = 6;
  seqmix::RatOptions options;
  options.chunk_size = 4;
  RatData d(total, H, Hkv, D, 1200);
  RatPool pool(S, C, Hkv, D, 0, 1201);
  pool.pos = {0, 3, 20, 1};  // slot 2: 20 + 8 tokens need 7 summaries, C = 6
  Tensor<float, 4> o = st::random_tensor<4>({1, total, H, D}, 1202);
  auto prefill = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots, bool with_positions = true) {
    return [&, cu, slots, with_positions] {
      seqmix::RatInputs in = d.inputs(0, total);
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::RatState state = pool.state();
      if (!with_positions) state.positions = {};
      seqmix::rat(in, {o.view()}, options, &state);
    };
  };
  require_refused_in_pool("cu_seqlens", o, pool, prefill({0, 12, 8, 20}, {0, 1, 3}));
  require_refused_in_pool("state_indices", o, pool, prefill({0, 8, 20}, {4, 1}));
  require_refused_in_pool("state_indices", o, pool, prefill({0, 8, 20}, {3, 3}));
  require_refused_in_pool("state_indices", o, pool, prefill({0, 8, 20}, {-2, 1}));
  require_refused_in_pool("state.chunk_k", o, pool, prefill({0, 12, 20}, {0, 2}));  // capacity, second sequence
  require_refused_in_pool("state.positions", o, pool, prefill({0, 8, 20}, {0, 1}, false));
  pool.pos[1] = -5;
  require_refused_in_pool("state.positions", o, pool, prefill({0, 8, 20}, {0, 1}));
  pool.pos[1] = 3;
  // Steps: a slot out of range, twice, a position past the capacity.
  Tensor<float, 3> q = st::random_tensor<3>({2, H, D}, 1203), k = st::random_tensor<3>({2, Hkv, D}, 1204);
  Tensor<float, 3> g = st::random_tensor<3>({2, Hkv, D}, 1205, -1.f, 0.f);
  Tensor<float, 3> o_step = st::random_tensor<3>({2, H, D}, 1206);
  auto step = [&](std::vector<std::int32_t> slots) {
    return [&, slots] {
      seqmix::RatStepInputs in{q.cview(), k.cview(), k.cview(), g.cview(), {}};
      in.batch.state_indices = slots;
      seqmix::RatState state = pool.state();
      seqmix::rat_step(in, {o_step.view()}, state, options);
    };
  };
  const Tensor<float, 3> o_step0 = o_step;
  for (const auto& slots : {std::vector<std::int32_t>{0, 4}, std::vector<std::int32_t>{1, 1}}) {
    st::require_shape_error("state_indices", step(slots));
    require_equal("step output after a refused call", o_step.cview(), o_step0.cview());
  }
  pool.pos[3] = (C + 1) * options.chunk_size - 1;  // its next token completes a chunk that has no room
  Tensor<float, 4> ck0 = pool.ck;
  st::require_shape_error("state.chunk_k", step({0, 3}));
  require_equal("step output after a refused call", o_step.cview(), o_step0.cview());
  require_equal("pool after a refused step", pool.ck.cview(), ck0.cview());
  CHECK(pool.pos[0] == 0);
}

// ---- BASED

struct BasedPool {
  Tensor<float, 4> kv, wk, wv;
  Tensor<float, 3> z;
  std::vector<std::int64_t> pos;
  BasedPool(index_t S, index_t H, index_t Kf, index_t W, index_t D, index_t V, index_t max_position, std::uint64_t seed)
      : kv(st::random_tensor<4>({S, H, Kf, V}, seed)), wk(st::random_tensor<4>({S, W, H, D}, seed + 1)),
        wv(st::random_tensor<4>({S, W, H, V}, seed + 2)), z(st::random_tensor<3>({S, H, Kf}, seed + 3, 1.f, 4.f)),
        pos(random_positions(S, max_position, seed + 4)) {}
  seqmix::BasedState state() { return {kv.view(), z.view(), wk.view(), wv.view(), 0, positions_view(pos)}; }
  // Slot `slot` as a one-row dense state at `position`; a fresh one has its linear state cleared.
  seqmix::BasedState row(index_t slot, index_t position, bool fresh) {
    if (fresh) clear_row(kv, slot), clear_row(z, slot);
    return {kv.view().slice(0, slot, 1), z.view().slice(0, slot, 1), wk.view().slice(0, slot, 1),
            wv.view().slice(0, slot, 1), position, {}};
  }
  void require_row(const char* what, const BasedPool& want, index_t slot) const {
    INFO(what);
    require_equal("kv", kv.cview()[slot], want.kv.cview()[slot]);
    require_equal("normalizer", z.cview()[slot], want.z.cview()[slot]);
    require_equal("window_k", wk.cview()[slot], want.wk.cview()[slot]);
    require_equal("window_v", wv.cview()[slot], want.wv.cview()[slot]);
  }
};

struct BasedData {
  Tensor<float, 4> qf, kf, q, k, v;
  BasedData(index_t total, index_t Hf, index_t F, index_t H, index_t D, index_t V, std::uint64_t seed)
      : qf(st::random_tensor<4>({1, total, Hf, F}, seed)), kf(st::random_tensor<4>({1, total, Hf, F}, seed + 1)),
        q(st::random_tensor<4>({1, total, H, D}, seed + 2)), k(st::random_tensor<4>({1, total, H, D}, seed + 3)),
        v(st::random_tensor<4>({1, total, H, V}, seed + 4)) {}
  seqmix::BasedInputs inputs(index_t begin, index_t count) const {
    return {tokens(qf.cview(), begin, count), tokens(kf.cview(), begin, count), tokens(q.cview(), begin, count),
            tokens(k.cview(), begin, count), tokens(v.cview(), begin, count), {}};
  }
  seqmix::BasedStepInputs step_inputs(index_t begin, index_t count) const {
    return {qf.cview()[0].slice(0, begin, count), kf.cview()[0].slice(0, begin, count),
            q.cview()[0].slice(0, begin, count), k.cview()[0].slice(0, begin, count),
            v.cview()[0].slice(0, begin, count), {}};
  }
  BasedData gather(const std::vector<index_t>& src) const {
    BasedData out = *this;
    out.qf = gather_tokens(qf, src), out.kf = gather_tokens(kf, src), out.q = gather_tokens(q, src);
    out.k = gather_tokens(k, src), out.v = gather_tokens(v, src);
    return out;
  }
};

TEST_CASE("based packed batches with slots and positions equal each sequence alone", "[based][serving]") {
  const index_t Hf = 1, F = 4, H = 2, D = 8, V = 8, Kf = 1 + F + F * F, max_position = 40;
  std::uint64_t seed = 2000;
  for (const PositionsConfig& c : kPositionsConfigs) {
    seqmix::BasedOptions options;
    options.window = 16;
    options.chunk_size = 8;
    const Ragged r = make_ragged(seed, c.N, options.window, c.max_len);
    BasedData d(r.total, Hf, F, H, D, V, seed * 3);
    BasedPool pool(r.pool, H, Kf, options.window, D, V, max_position, seed * 5);
    require_packed_equals_alone(c, r, d, pool, H, V,
                                [&](const auto& in, auto o, auto* state, bool reference, const seqmix::Executor& ex) {
                                  if (reference)
                                    seqmix::reference::based(in, {o}, options, state);
                                  else
                                    seqmix::based(in, {o}, options, state, ex);
                                });
    ++seed;
  }
}

TEST_CASE("based packed prefill then slotted steps equals each sequence in one call", "[based][serving]") {
  const index_t Hf = 2, F = 4, H = 4, D = 8, V = 6, Kf = 1 + F + F * F, steps = 5;
  seqmix::BasedOptions options;
  options.window = 8;
  options.chunk_size = 4;
  const Ragged r = make_ragged(2100, 7, options.window, 30);
  INFO(r.describe());
  BasedData d(r.total + r.N() * steps, Hf, F, H, D, V, 2101);
  BasedPool pool(r.pool, H, Kf, options.window, D, V, 0, 2102);
  require_prefill_then_steps(
      r, false, d, pool, BasedPool(1, H, Kf, options.window, D, V, 0, 9), steps, H, V,
      [&](const auto& in, auto o, auto state, const seqmix::Executor& ex) { seqmix::based(in, {o}, options, state, ex); },
      [&](const auto& in, auto o, seqmix::BasedState& state, const seqmix::Executor& ex) {
        seqmix::based_step(in, {o}, state, options, ex);
      });
}

TEST_CASE("based serving forms refuse bad input before writing", "[based][serving][errors]") {
  const index_t total = 20, Hf = 1, F = 2, H = 2, D = 4, V = 4, Kf = 1 + F + F * F, S = 4;
  seqmix::BasedOptions options;
  options.window = 4;
  BasedData d(total, Hf, F, H, D, V, 2200);
  BasedPool pool(S, H, Kf, options.window, D, V, 10, 2201);
  Tensor<float, 4> o = st::random_tensor<4>({1, total, H, V}, 2202);
  auto prefill = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots, bool with_positions = true) {
    return [&, cu, slots, with_positions] {
      seqmix::BasedInputs in = d.inputs(0, total);
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::BasedState state = pool.state();
      if (!with_positions) state.positions = {};
      seqmix::based(in, {o.view()}, options, &state);
    };
  };
  for (const auto& [cu, slots] : {std::pair<std::vector<std::int64_t>, std::vector<std::int32_t>>{{0, 8, 20}, {4, 1}},
                                  {{0, 8, 20}, {2, 2}},
                                  {{0, 8, 20}, {-3, 0}}}) {
    require_refused_in_pool("state_indices", o, pool, prefill(cu, slots));
  }
  require_refused_in_pool("cu_seqlens", o, pool, prefill({0, 9, 8, 20}, {0, 1, 2}));
  require_refused_in_pool("state.positions", o, pool, prefill({0, 8, 20}, {0, 1}, false));
  const std::int64_t pos1 = pool.pos[1];
  pool.pos[1] = -1;
  require_refused_in_pool("state.positions", o, pool, prefill({0, 8, 20}, {0, 1}));
  pool.pos[1] = pos1;
  Tensor<float, 3> qf = st::random_tensor<3>({2, Hf, F}, 2203), q = st::random_tensor<3>({2, H, D}, 2204);
  Tensor<float, 3> o_step = st::random_tensor<3>({2, H, V}, 2205);
  const Tensor<float, 3> o_step0 = o_step;
  for (const auto& slots : {std::vector<std::int32_t>{0, 4}, std::vector<std::int32_t>{3, 3}}) {
    require_refused_in_pool("state_indices", o, pool, [&] {
      seqmix::BasedStepInputs in{qf.cview(), qf.cview(), q.cview(), q.cview(), q.cview(), {}};
      in.batch.state_indices = slots;
      seqmix::BasedState state = pool.state();
      seqmix::based_step(in, {o_step.view()}, state, options);
    });
    require_equal("step output after a refused call", o_step.cview(), o_step0.cview());
  }
}

// ---- Infini-attention

struct InfiniPool {
  Tensor<float, 4> mem, sk, sv;
  Tensor<float, 3> z;
  std::vector<std::int64_t> pos;
  InfiniPool(index_t S, index_t Hkv, index_t K, index_t V, index_t seg, index_t max_position, std::uint64_t seed)
      : mem(st::random_tensor<4>({S, Hkv, K, V}, seed)), sk(st::random_tensor<4>({S, seg, Hkv, K}, seed + 1)),
        sv(st::random_tensor<4>({S, seg, Hkv, V}, seed + 2)), z(st::random_tensor<3>({S, Hkv, K}, seed + 3, 1.f, 4.f)),
        pos(random_positions(S, max_position, seed + 4)) {}
  seqmix::InfiniAttentionState state() { return {mem.view(), z.view(), sk.view(), sv.view(), 0, positions_view(pos)}; }
  seqmix::InfiniAttentionState row(index_t slot, index_t position, bool fresh) {
    if (fresh) clear_row(mem, slot), clear_row(z, slot);
    return {mem.view().slice(0, slot, 1), z.view().slice(0, slot, 1), sk.view().slice(0, slot, 1),
            sv.view().slice(0, slot, 1), position, {}};
  }
  void require_row(const char* what, const InfiniPool& want, index_t slot) const {
    INFO(what);
    require_equal("memory", mem.cview()[slot], want.mem.cview()[slot]);
    require_equal("normalizer", z.cview()[slot], want.z.cview()[slot]);
    require_equal("segment_k", sk.cview()[slot], want.sk.cview()[slot]);
    require_equal("segment_v", sv.cview()[slot], want.sv.cview()[slot]);
  }
};

struct InfiniData {
  Tensor<float, 4> q, k, v;
  Tensor<float, 1> beta;
  InfiniData(index_t total, index_t H, index_t Hkv, index_t K, index_t V, std::uint64_t seed)
      : q(st::random_tensor<4>({1, total, H, K}, seed)), k(st::random_tensor<4>({1, total, Hkv, K}, seed + 1)),
        v(st::random_tensor<4>({1, total, Hkv, V}, seed + 2)), beta(st::random_tensor<1>({H}, seed + 3)) {}
  seqmix::InfiniAttentionInputs inputs(index_t begin, index_t count) const {
    return {tokens(q.cview(), begin, count), tokens(k.cview(), begin, count), tokens(v.cview(), begin, count),
            beta.cview(), {}};
  }
  seqmix::InfiniAttentionStepInputs step_inputs(index_t begin, index_t count) const {
    return {q.cview()[0].slice(0, begin, count), k.cview()[0].slice(0, begin, count),
            v.cview()[0].slice(0, begin, count), beta.cview(), {}};
  }
  InfiniData gather(const std::vector<index_t>& src) const {
    InfiniData out = *this;
    out.q = gather_tokens(q, src), out.k = gather_tokens(k, src), out.v = gather_tokens(v, src);
    return out;
  }
};

TEST_CASE("infini_attention packed batches with slots and positions equal each sequence alone", "[infini][serving]") {
  const index_t H = 4, Hkv = 2, K = 8, V = 8, max_position = 60;
  std::uint64_t seed = 3000;
  for (const PositionsConfig& c : kPositionsConfigs) {
    seqmix::InfiniAttentionOptions options;
    options.segment = 32;
    options.update = c.wide ? seqmix::InfiniMemoryUpdate::delta : seqmix::InfiniMemoryUpdate::linear;
    const Ragged r = make_ragged(seed, c.N, options.segment, c.max_len);
    InfiniData d(r.total, H, Hkv, K, V, seed * 3);
    InfiniPool pool(r.pool, Hkv, K, V, options.segment, max_position, seed * 5);
    require_packed_equals_alone(c, r, d, pool, H, V,
                                [&](const auto& in, auto o, auto* state, bool reference, const seqmix::Executor& ex) {
                                  if (reference)
                                    seqmix::reference::infini_attention(in, {o}, options, state);
                                  else
                                    seqmix::infini_attention(in, {o}, options, state, ex);
                                });
    ++seed;
  }
}

TEST_CASE("infini_attention packed prefill then slotted steps equals each sequence in one call", "[infini][serving]") {
  const index_t H = 4, Hkv = 2, K = 8, V = 6, steps = 6;
  seqmix::InfiniAttentionOptions options;
  options.segment = 4;  // steps complete segments
  options.update = seqmix::InfiniMemoryUpdate::delta;
  const Ragged r = make_ragged(3100, 7, options.segment, 30);
  INFO(r.describe());
  InfiniData d(r.total + r.N() * steps, H, Hkv, K, V, 3101);
  InfiniPool pool(r.pool, Hkv, K, V, options.segment, 0, 3102);
  require_prefill_then_steps(
      r, true, d, pool, InfiniPool(1, Hkv, K, V, options.segment, 0, 9), steps, H, V,
      [&](const auto& in, auto o, auto state, const seqmix::Executor& ex) {
        seqmix::infini_attention(in, {o}, options, state, ex);
      },
      [&](const auto& in, auto o, seqmix::InfiniAttentionState& state, const seqmix::Executor& ex) {
        seqmix::infini_attention_step(in, {o}, state, options, ex);
      });
}

TEST_CASE("infini_attention serving forms refuse bad input before writing", "[infini][serving][errors]") {
  const index_t total = 20, H = 2, Hkv = 1, K = 4, V = 4, S = 4;
  seqmix::InfiniAttentionOptions options;
  options.segment = 8;
  InfiniData d(total, H, Hkv, K, V, 3200);
  InfiniPool pool(S, Hkv, K, V, options.segment, 10, 3201);
  Tensor<float, 4> o = st::random_tensor<4>({1, total, H, V}, 3202);
  auto prefill = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots, bool with_positions = true) {
    return [&, cu, slots, with_positions] {
      seqmix::InfiniAttentionInputs in = d.inputs(0, total);
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::InfiniAttentionState state = pool.state();
      if (!with_positions) state.positions = {};
      seqmix::infini_attention(in, {o.view()}, options, &state);
    };
  };
  for (const auto& slots : {std::vector<std::int32_t>{4, 1}, std::vector<std::int32_t>{2, 2},
                            std::vector<std::int32_t>{-3, 0}}) {
    require_refused_in_pool("state_indices", o, pool, prefill({0, 8, 20}, slots));
  }
  require_refused_in_pool("cu_seqlens", o, pool, prefill({0, 8, 19}, {0, 1}));
  require_refused_in_pool("state.positions", o, pool, prefill({0, 8, 20}, {0, 1}, false));
  Tensor<float, 3> q = st::random_tensor<3>({2, H, K}, 3205), kv = st::random_tensor<3>({2, Hkv, K}, 3203);
  Tensor<float, 3> o_step = st::random_tensor<3>({2, H, V}, 3204);
  const Tensor<float, 3> o_step0 = o_step;
  for (const auto& slots : {std::vector<std::int32_t>{0, 4}, std::vector<std::int32_t>{3, 3}}) {
    require_refused_in_pool("state_indices", o, pool, [&] {
      seqmix::InfiniAttentionStepInputs in{q.cview(), kv.cview(), kv.cview(), d.beta.cview(), {}};
      in.batch.state_indices = slots;
      seqmix::InfiniAttentionState state = pool.state();
      seqmix::infini_attention_step(in, {o_step.view()}, state, options);
    });
    require_equal("step output after a refused call", o_step.cview(), o_step0.cview());
  }
}

// ---- Mega: the EMA state and the current chunk's k/v cache per slot; a prefill starts each
// sequence's chunk grid at its first token and sets its slot's position to its token count.

struct MegaPool {
  Tensor<float, 3> ema;
  Tensor<float, 4> kc, vc;
  std::vector<std::int64_t> pos;
  MegaPool(index_t S, index_t D, index_t N, index_t c, index_t H, index_t Dv, std::uint64_t seed)
      : ema(st::random_tensor<3>({S, D, N}, seed)), kc(st::random_tensor<4>({S, c, H, D / H}, seed + 1)),
        vc(st::random_tensor<4>({S, c, H, Dv}, seed + 2)), pos(random_positions(S, 3 * c, seed + 3)) {}
  seqmix::MegaDecodeState state() { return {ema.view(), kc.view(), vc.view(), positions_view(pos)}; }
  void require_row(const char* what, const MegaPool& want, index_t slot) const {
    INFO(what);
    require_equal("ema", ema.cview()[slot], want.ema.cview()[slot]);
    require_equal("k_cache", kc.cview()[slot], want.kc.cview()[slot]);
    require_equal("v_cache", vc.cview()[slot], want.vc.cview()[slot]);
  }
};

struct MegaSeqData {
  index_t D, N, H, Dv;
  Tensor<float, 3> x;
  Tensor<float, 4> v;
  Tensor<float, 2> alpha, delta, beta, eta;
  Tensor<float, 1> qs, qb, ks, kb;
  MegaSeqData(index_t total, index_t D_, index_t N_, index_t H_, index_t Dv_, std::uint64_t seed)
      : D(D_), N(N_), H(H_), Dv(Dv_), x(st::random_tensor<3>({1, total, D_}, seed)),
        v(st::random_tensor<4>({1, total, H_, Dv_}, seed + 1)),
        alpha(st::random_tensor<2>({D_, N_}, seed + 2, -3.f, 3.f)), delta(st::random_tensor<2>({D_, N_}, seed + 3, -3.f, 3.f)),
        beta(st::random_tensor<2>({D_, N_}, seed + 4)), eta(st::random_tensor<2>({D_, N_}, seed + 5)),
        qs(st::random_tensor<1>({D_}, seed + 6, 0.f, 2.f)), qb(st::random_tensor<1>({D_}, seed + 7)),
        ks(st::random_tensor<1>({D_}, seed + 8, 0.f, 2.f)), kb(st::random_tensor<1>({D_}, seed + 9)) {}
  seqmix::MegaParams params() const {
    return {alpha.cview(), delta.cview(), beta.cview(), eta.cview(), qs.cview(), qb.cview(), ks.cview(), kb.cview()};
  }
  seqmix::MegaInputs inputs(index_t begin, index_t count) const {
    return {tokens(x.cview(), begin, count), tokens(v.cview(), begin, count), params(), {}, {}};
  }
};

TEST_CASE("mega packed batches with slots equal each sequence alone", "[mega][serving]") {
  const index_t D = 12, N = 3, H = 3, Dv = 5;
  std::uint64_t seed = 4000;
  for (const PositionsConfig& c : kPositionsConfigs) {
    seqmix::MegaOptions options;
    options.chunk_size = 16;
    const Ragged r = make_ragged(seed, c.N, options.chunk_size, c.max_len);
    INFO(r.describe() << " threaded=" << c.threaded << " wide=" << c.wide << " reference=" << c.reference);
    MegaSeqData d(r.total, D, N, H, Dv, seed * 3);
    MegaPool pool(r.pool, D, N, options.chunk_size, H, Dv, seed * 5);
    MegaPool alone = pool;
    auto o = filled<4>({1, r.total, H, Dv}, kSentinel);
    auto ema = filled<3>({1, r.total, D}, kSentinel);
    seqmix::MegaInputs in = d.inputs(0, r.total);
    in.initial_state = pool.ema.cview();
    in.batch = r.batch(c.wide);
    const seqmix::MegaOutputs out{o.view(), ema.view(), pool.ema.view(), pool.kc.view(), pool.vc.view(),
                                  positions_view(pool.pos)};
    const seqmix::Executor& ex = c.threaded ? st::two_thread_pool() : seqmix::serial_executor();
    if (c.reference)
      seqmix::reference::mega(in, out, options);
    else
      seqmix::mega(in, out, options, ex);
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t0 = r.begin(n), T = r.len[n], slot = r.slot(n);
      INFO("sequence " << n << " length " << T << " slot " << slot);
      if (slot < 0) {
        for (index_t t = 0; t < T; ++t) CHECK((o(0, t0 + t, 0, 0) == kSentinel && ema(0, t0 + t, 0) == kSentinel));
        continue;
      }
      Tensor<float, 4> o1({1, T, H, Dv});
      Tensor<float, 3> ema1({1, T, D});
      seqmix::MegaInputs one = d.inputs(t0, T);
      const Tensor<float, 3> initial = alone.ema;
      if (!r.fresh(n)) one.initial_state = initial.cview().slice(0, slot, 1);
      const seqmix::MegaOutputs one_out{o1.view(), ema1.view(), alone.ema.view().slice(0, slot, 1),
                                        alone.kc.view().slice(0, slot, 1), alone.vc.view().slice(0, slot, 1), {}};
      if (c.reference)
        seqmix::reference::mega(one, one_out, options);
      else
        seqmix::mega(one, one_out, options, ex);
      require_equal("o", tokens(o.cview(), t0, T), o1.cview());
      require_equal("ema", tokens(ema.cview(), t0, T), ema1.cview());
      pool.require_row("state", alone, slot);
      CHECK(pool.pos[static_cast<std::size_t>(slot)] == T);
      alone.pos[static_cast<std::size_t>(slot)] = T;
    }
    CHECK(pool.pos == alone.pos);
    for (index_t s = 0; s < r.pool; ++s) pool.require_row("every slot", alone, s);
    ++seed;
  }
}

TEST_CASE("mega packed prefill then slotted steps equals each sequence in one call", "[mega][serving]") {
  const index_t D = 8, N = 2, H = 2, Dv = 4, steps = 6;
  seqmix::MegaOptions options;
  options.chunk_size = 4;  // steps cross chunk starts
  const Ragged r = make_ragged(4100, 7, options.chunk_size, 30);
  INFO(r.describe());
  const index_t extra0 = r.total;
  MegaSeqData d(r.total + r.N() * steps, D, N, H, Dv, 4101);
  MegaPool pool(r.pool, D, N, options.chunk_size, H, Dv, 4102);
  seqmix::MegaInputs in = d.inputs(0, r.total);
  in.initial_state = pool.ema.cview();
  in.batch = r.batch(true);
  const std::vector<std::uint8_t> fresh(static_cast<std::size_t>(r.N()), 0);
  in.batch.has_initial_state = fresh;  // one dense call from zeros is then the whole sequence
  Tensor<float, 4> o({1, r.total, H, Dv});
  seqmix::mega(in, {o.view(), {}, pool.ema.view(), pool.kc.view(), pool.vc.view(), positions_view(pool.pos)}, options,
               st::two_thread_pool());
  std::vector<index_t> seq_of_row;
  const std::vector<std::int32_t> slots = step_slots(r, &seq_of_row);
  const index_t B = static_cast<index_t>(slots.size());
  auto o_step = filled<4>({steps, B, H, Dv}, kSentinel);
  for (index_t s = 0; s < steps; ++s) {
    Tensor<float, 2> x({B, D});
    Tensor<float, 3> v({B, H, Dv});
    for (index_t b = 0; b < B; ++b) {
      const index_t t = extra0 + std::max<index_t>(seq_of_row[b], 0) * steps + s;
      seqmix::copy(d.x.cview()[0][t], x.view()[b]);
      seqmix::copy(d.v.cview()[0][t], v.view()[b]);
    }
    seqmix::MegaStepInputs sin{x.cview(), v.cview(), d.params(), 0, {}};
    sin.batch.state_indices = slots;
    seqmix::mega_step(sin, o_step.view()[s], pool.state(), options, st::two_thread_pool());
  }
  for (index_t b = 0; b < B; ++b) {
    const index_t n = seq_of_row[b];
    if (n < 0) {
      for (index_t s = 0; s < steps; ++s) CHECK(o_step(s, b, 0, 0) == kSentinel);
      continue;
    }
    const index_t len = r.len[n], L = len + steps, slot = r.slot(n);
    INFO("row " << b << " sequence " << n << " length " << len);
    CHECK(pool.pos[static_cast<std::size_t>(slot)] == L);
    MegaSeqData one_seq(L, D, N, H, Dv, 4101);  // same parameters (same seeds), tokens copied below
    for (index_t t = 0; t < L; ++t) {
      const index_t src = t < len ? r.begin(n) + t : extra0 + n * steps + (t - len);
      seqmix::copy(d.x.cview()[0][src], one_seq.x.view()[0][t]);
      seqmix::copy(d.v.cview()[0][src], one_seq.v.view()[0][t]);
    }
    Tensor<float, 4> oo({1, L, H, Dv}), o_pre({1, len, H, Dv});
    seqmix::mega(one_seq.inputs(0, L), {oo.view(), {}, {}, {}, {}, {}}, options);
    MegaPool one(1, D, N, options.chunk_size, H, Dv, 9);
    seqmix::mega(one_seq.inputs(0, len), {o_pre.view(), {}, one.ema.view(), one.kc.view(), one.vc.view(), {}}, options);
    for (index_t s = 0; s < steps; ++s) {
      const index_t t = len + s;
      Tensor<float, 3> o1({1, H, Dv});
      seqmix::mega_step({one_seq.x.cview()[0].slice(0, t, 1), one_seq.v.cview()[0].slice(0, t, 1), one_seq.params(), t, {}},
                        o1.view(), {one.ema.view(), one.kc.view(), one.vc.view(), {}}, options);
      require_equal("step output = dense step", o_step.cview()[s].slice(0, b, 1), o1.cview());
      st::require_close("step output ~ one call", o_step.cview()[s][b], oo.cview()[0][t], 2e-4);
    }
  }
}

TEST_CASE("mega serving forms refuse bad input before writing", "[mega][serving][errors]") {
  const index_t total = 20, D = 4, N = 2, H = 2, Dv = 3, S = 4;
  seqmix::MegaOptions options;
  options.chunk_size = 4;
  MegaSeqData d(total, D, N, H, Dv, 4200);
  MegaPool pool(S, D, N, options.chunk_size, H, Dv, 4201);
  Tensor<float, 4> o = st::random_tensor<4>({1, total, H, Dv}, 4202);
  const Tensor<float, 4> o0 = o;
  const MegaPool pool0 = pool;
  const auto unchanged = [&] {
    require_equal("output after a refused call", o.cview(), o0.cview());
    for (index_t s = 0; s < S; ++s) pool.require_row("pool after a refused call", pool0, s);
    CHECK(pool.pos == pool0.pos);
  };
  auto prefill = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&, cu, slots] {
      seqmix::MegaInputs in = d.inputs(0, total);
      in.initial_state = pool.ema.cview();
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::mega(in, {o.view(), {}, pool.ema.view(), pool.kc.view(), pool.vc.view(), positions_view(pool.pos)}, options);
    };
  };
  for (const auto& slots : {std::vector<std::int32_t>{4, 1}, std::vector<std::int32_t>{2, 2},
                            std::vector<std::int32_t>{-3, 0}}) {
    require_refused_in_pool("state_indices", o, pool, prefill({0, 8, 20}, slots));
  }
  require_refused_in_pool("cu_seqlens", o, pool, prefill({0, 8, 21}, {0, 1}));
  Tensor<float, 2> x = st::random_tensor<2>({2, D}, 4203);
  Tensor<float, 3> v = st::random_tensor<3>({2, H, Dv}, 4204), o_step = st::random_tensor<3>({2, H, Dv}, 4205);
  const Tensor<float, 3> o_step0 = o_step;
  auto step = [&](std::vector<std::int32_t> slots, bool with_positions) {
    return [&, slots, with_positions] {
      seqmix::MegaStepInputs in{x.cview(), v.cview(), d.params(), 0, {}};
      in.batch.state_indices = slots;
      seqmix::MegaDecodeState state = pool.state();
      if (!with_positions) state.positions = {};
      seqmix::mega_step(in, o_step.view(), state, options);
    };
  };
  st::require_shape_error("state_indices", step({0, 4}, true));
  st::require_shape_error("state_indices", step({3, 3}, true));
  st::require_shape_error("state.positions", step({0, 1}, false));
  pool.pos[1] = -2;
  st::require_shape_error("state.positions", step({0, 1}, true));
  pool.pos[1] = pool0.pos[1];
  require_equal("step output after a refused call", o_step.cview(), o_step0.cview());
  unchanged();
}
