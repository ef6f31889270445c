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
