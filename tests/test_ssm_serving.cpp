// Serving forms of the selective state-space family (issue 14): packed (cu_seqlens) prefill,
// state slots in a pool with holes, padding sequences, has_initial_state, token_states for a
// speculative verify, slotted decode steps, the channel-major conv state, and bad input. Every
// serving call is checked against the dense operator run on each sequence alone (B = 1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr double kTol = 2e-5;
constexpr float kSentinel = 7.25f;  // what untouched output rows keep

// A ragged batch: lengths, packed offsets, slots in a pool with holes (-1 = padding sequence)
// and has_initial_state flags. The lists outlive the SequenceBatch that views them.
struct Ragged {
  std::vector<index_t> len;
  std::vector<std::int64_t> cu;
  std::vector<std::int32_t> slot;
  std::vector<std::uint8_t> init;
  index_t S = 0, total = 0;

  index_t begin(std::size_t n) const { return static_cast<index_t>(cu[n]); }
  seqmix::SequenceBatch batch() const {
    seqmix::SequenceBatch b;
    b.cu_seqlens = cu;
    b.state_indices = slot;
    b.has_initial_state = init;
    return b;
  }
  std::string describe() const {
    std::ostringstream s;
    s << "S=" << S << " lengths/slot/init:";
    for (std::size_t n = 0; n < len.size(); ++n) s << ' ' << len[n] << '/' << slot[n] << '/' << int(init[n]);
    return s.str();
  }
};

// Lengths mix the tile edges (1, chunk-1, chunk, chunk+1), an empty sequence and random ones.
Ragged make_ragged(std::uint64_t seed, index_t sequences, index_t chunk, index_t max_len, bool padding = true) {
  std::mt19937_64 rng(seed);
  Ragged r;
  const index_t edges[] = {1, chunk - 1, chunk, chunk + 1, 0, 2 * chunk + 3};
  for (index_t n = 0; n < sequences; ++n) {
    index_t l = n < 6 ? edges[n] : static_cast<index_t>(rng() % static_cast<std::uint64_t>(max_len)) + 1;
    r.len.push_back(std::max<index_t>(0, std::min(l, max_len)));
  }
  std::shuffle(r.len.begin(), r.len.end(), rng);
  r.cu.push_back(0);
  for (index_t l : r.len) r.cu.push_back(r.cu.back() + l);
  r.total = static_cast<index_t>(r.cu.back());
  r.S = sequences + 5;  // holes: rows no sequence uses
  std::vector<std::int32_t> rows(static_cast<std::size_t>(r.S));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  for (index_t n = 0; n < sequences; ++n) {
    const bool pad = padding && rng() % 6 == 0;
    r.slot.push_back(pad ? -1 : rows[static_cast<std::size_t>(n)]);
    r.init.push_back(static_cast<std::uint8_t>(rng() % 3 != 0));
  }
  return r;
}

template <std::size_t R>
Tensor<float, R> clone(const TensorView<const float, R>& v) {
  Tensor<float, R> t(v.shape());
  seqmix::copy(v, t.view());
  return t;
}

template <std::size_t R>
void fill(const TensorView<float, R>& v, float value) {
  st::fill_with(v, 0, [value](auto&) { return value; });
}

// Tokens [begin, begin + n) of a packed [1, total, ...] tensor.
template <class V>
V tokens(const V& v, index_t begin, index_t n) {
  return v.slice(1, begin, n);
}

template <std::size_t R>
void require_equal(const char* what, const TensorView<const float, R>& a, const TensorView<const float, R>& b) {
  st::require_close(what, a, b, 0.0);
}

template <std::size_t R>
void require_unchanged(const char* what, const TensorView<float, R>& now, const Tensor<float, R>& before) {
  require_equal(what, now.as_const(), before.view());
}

// Checks an operator refuses a call with a ShapeError naming `argument` and leaves `y` and the
// pool as they were.
template <class Call, class Y, class Pool>
void require_refused(const char* argument, const Y& y, const Pool& pool, Call&& call) {
  const auto y0 = clone(y.as_const());
  const auto pool0 = clone(pool.as_const());
  st::require_shape_error(argument, call);
  require_unchanged("y after a refused call", y, y0);
  require_unchanged("pool after a refused call", pool, pool0);
}

const seqmix::ThreadPool& pool2() { return st::two_thread_pool(); }

// ---- ssd ---------------------------------------------------------------------------------------

struct SsdData {
  index_t H, P, N, G;
  Tensor<float, 4> x, z, Bm, Cm;
  Tensor<float, 3> dt;
  Tensor<float, 1> A, D, dt_bias;

  SsdData(index_t total, index_t H_, index_t P_, index_t N_, index_t G_, std::uint64_t seed)
      : H(H_), P(P_), N(N_), G(G_),
        x(st::random_tensor<4>({1, total, H_, P_}, seed + 1)),
        z(st::random_tensor<4>({1, total, H_, P_}, seed + 2, -3.f, 3.f)),
        Bm(st::random_tensor<4>({1, total, G_, N_}, seed + 3)),
        Cm(st::random_tensor<4>({1, total, G_, N_}, seed + 4)),
        dt(st::random_tensor<3>({1, total, H_}, seed + 5, -4.f, 1.f)),
        A(st::random_tensor<1>({H_}, seed + 6, -3.f, -0.05f)),
        D(st::random_tensor<1>({H_}, seed + 7)),
        dt_bias(st::random_tensor<1>({H_}, seed + 8, -1.f, 1.f)) {}

  seqmix::SsdInputs inputs() const {
    return {x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view(), dt_bias.view(), {}, {}};
  }
  // Tokens [t0, t0 + n) as a dense batch of one.
  seqmix::SsdInputs slice(index_t t0, index_t n) const {
    seqmix::SsdInputs in = inputs();
    in.x = tokens(in.x, t0, n), in.dt = tokens(in.dt, t0, n), in.Bm = tokens(in.Bm, t0, n);
    in.Cm = tokens(in.Cm, t0, n), in.z = tokens(in.z, t0, n);
    return in;
  }
  // Token t as one row of a step.
  seqmix::SsdStepInputs step(index_t t) const {
    const seqmix::SsdInputs in = inputs();
    return {in.x.select(1, t), in.dt.select(1, t), in.A, in.Bm.select(1, t), in.Cm.select(1, t),
            in.D, in.z.select(1, t), in.dt_bias, {}};
  }
};

// Sequence n alone through the dense operator: y rows and final state, from pool0's row when the
// sequence reads its state.
void ssd_alone(const SsdData& d, const Ragged& r, std::size_t n, const Tensor<float, 4>& pool0,
               const seqmix::SsdOptions& o, bool reference, Tensor<float, 4>& y, Tensor<float, 4>& final_state) {
  seqmix::SsdInputs in = d.slice(r.begin(n), r.len[n]);
  if (r.init[n]) in.initial_state = pool0.view().slice(0, r.slot[n], 1);
  y = Tensor<float, 4>({1, r.len[n], d.H, d.P});
  final_state = Tensor<float, 4>({1, d.H, d.P, d.N});
  if (reference)
    seqmix::reference::ssd(in, {y.view(), final_state.view(), {}}, o);
  else
    seqmix::ssd(in, {y.view(), final_state.view(), {}}, o);
}

void check_ssd_varlen(const Ragged& r, const SsdData& d, const seqmix::SsdOptions& o, bool reference,
                      const seqmix::Executor& ex) {
  INFO(r.describe() << " chunk=" << o.chunk_size << " algorithm=" << int(o.algorithm) << " reference=" << reference);
  Tensor<float, 4> pool = st::random_tensor<4>({r.S, d.H, d.P, d.N}, 77);
  const Tensor<float, 4> pool0 = clone(pool.cview());
  Tensor<float, 4> y({1, r.total, d.H, d.P});
  fill(y.view(), kSentinel);
  seqmix::SsdInputs in = d.inputs();
  in.initial_state = pool.view();
  in.batch = r.batch();
  const seqmix::SsdOutputs out{y.view(), pool.view(), {}};
  if (reference)
    seqmix::reference::ssd(in, out, o, ex);
  else
    seqmix::ssd(in, out, o, ex);
  std::vector<bool> used(static_cast<std::size_t>(r.S), false);
  for (std::size_t n = 0; n < r.len.size(); ++n) {
    INFO("sequence " << n);
    const auto y_n = tokens(y.cview(), r.begin(n), r.len[n]);
    if (r.slot[n] < 0) {
      Tensor<float, 4> untouched(y_n.shape());
      fill(untouched.view(), kSentinel);
      require_equal("padding rows of y", y_n, untouched.cview());
      continue;
    }
    used[static_cast<std::size_t>(r.slot[n])] = true;
    Tensor<float, 4> y_ref, s_ref;
    ssd_alone(d, r, n, pool0, o, reference, y_ref, s_ref);
    st::require_close("y", y_n, y_ref.cview(), kTol);
    st::require_close("final state in the slot", pool.cview().slice(0, r.slot[n], 1), s_ref.cview(), kTol);
  }
  for (index_t s = 0; s < r.S; ++s)
    if (!used[static_cast<std::size_t>(s)]) require_equal("pool hole", pool.cview()[s], pool0.cview()[s]);
}

TEST_CASE("ssd packed batches with slots equal each sequence alone", "[ssd][serving]") {
  const bool small = st::small_test_scale();
  struct Config {
    index_t sequences, chunk, max_len;
    seqmix::SsdAlgorithm algorithm;
    bool reference, threads;
  };
  const Config configs[] = {
      {7, 32, 90, seqmix::SsdAlgorithm::automatic, false, false},
      {16, 16, small ? 100 : 700, seqmix::SsdAlgorithm::chunked, false, true},
      {9, 8, 40, seqmix::SsdAlgorithm::recurrent, false, true},
      {6, 5, 30, seqmix::SsdAlgorithm::automatic, true, false},
      {12, 64, small ? 100 : 300, seqmix::SsdAlgorithm::automatic, false, true},
  };
  std::uint64_t seed = 1;
  for (const Config& c : configs) {
    const Ragged r = make_ragged(seed, c.sequences, c.chunk, c.max_len);
    const SsdData d(r.total, 4, 16, 12, 2, seed * 100);
    seqmix::SsdOptions o;
    o.dt_softplus = true;
    o.chunk_size = c.chunk;
    o.algorithm = c.algorithm;
    check_ssd_varlen(r, d, o, c.reference, c.threads ? static_cast<const seqmix::Executor&>(pool2())
                                                     : seqmix::serial_executor());
    ++seed;
  }
}

TEST_CASE("ssd dense batches with slots and has_initial_state", "[ssd][serving]") {
  // Dense: B sequences of T tokens, states in a pool through state_indices.
  const index_t B = 4, T = 37, H = 2, P = 8, N = 16;
  const SsdData d(B * T, H, P, N, 1, 5);  // packed data reshaped as [B, T, ...] below
  seqmix::SsdInputs in = d.inputs();
  in.x = in.x.reshape<4>({B, T, H, P}), in.dt = in.dt.reshape<3>({B, T, H});
  in.Bm = in.Bm.reshape<4>({B, T, 1, N}), in.Cm = in.Cm.reshape<4>({B, T, 1, N}), in.z = in.z.reshape<4>({B, T, H, P});
  Tensor<float, 4> pool = st::random_tensor<4>({9, H, P, N}, 6);
  const Tensor<float, 4> pool0 = clone(pool.cview());
  const std::vector<std::int64_t> slots = {5, -1, 0, 8};
  const std::vector<std::uint8_t> init = {1, 1, 0, 1};
  in.initial_state = pool.view();
  in.batch.state_indices = slots;
  in.batch.has_initial_state = init;
  Tensor<float, 4> y({B, T, H, P});
  fill(y.view(), kSentinel);
  seqmix::SsdOptions o;
  o.dt_softplus = true;
  seqmix::ssd(in, {y.view(), pool.view(), {}}, o, pool2());
  for (index_t b = 0; b < B; ++b) {
    INFO("row " << b);
    if (slots[b] < 0) {
      CHECK(y(b, 3, 1, 2) == kSentinel);
      continue;
    }
    seqmix::SsdInputs one = in;
    one.batch = {};
    one.x = in.x.slice(0, b, 1), one.dt = in.dt.slice(0, b, 1), one.Bm = in.Bm.slice(0, b, 1);
    one.Cm = in.Cm.slice(0, b, 1), one.z = in.z.slice(0, b, 1);
    one.initial_state = init[b] ? pool0.view().slice(0, slots[b], 1) : seqmix::ConstView<float, 4>();
    Tensor<float, 4> y_ref({1, T, H, P}), s_ref({1, H, P, N});
    seqmix::ssd(one, {y_ref.view(), s_ref.view(), {}}, o);
    st::require_close("y", y.cview().slice(0, b, 1), y_ref.cview(), kTol);
    st::require_close("slot", pool.cview().slice(0, slots[b], 1), s_ref.cview(), kTol);
  }
  require_equal("hole", pool.cview()[3], pool0.cview()[3]);
}

// token_states[t] is the final state of a prefill of tokens [0, t]; restoring it into the slot
// and continuing equals never having gone past token t.
TEST_CASE("ssd token_states for speculative verify and rollback", "[ssd][serving]") {
  const Ragged r = make_ragged(11, 6, 4, 12, /*padding=*/false);
  const SsdData d(r.total + 6 * 3, 3, 8, 8, 1, 1100);  // 3 extra tokens per sequence for the continuation
  const index_t H = d.H, P = d.P, N = d.N;
  Tensor<float, 4> pool = st::random_tensor<4>({r.S, H, P, N}, 12);
  const Tensor<float, 4> pool0 = clone(pool.cview());
  Tensor<float, 4> y({1, r.total, H, P});
  Tensor<float, 5> ts({1, r.total, H, P, N});
  seqmix::SsdInputs in = d.slice(0, r.total);
  in.initial_state = pool.view();
  in.batch = r.batch();
  seqmix::SsdOptions o;
  o.dt_softplus = true;
  seqmix::ssd(in, {y.view(), pool.view(), ts.view()}, o, pool2());
  for (std::size_t n = 0; n < r.len.size(); ++n) {
    INFO("sequence " << n << " " << r.describe());
    for (index_t t = 0; t < r.len[n]; ++t) {
      Tensor<float, 4> y_ref({1, t + 1, H, P}), s_ref({1, H, P, N});
      seqmix::SsdInputs one = d.slice(r.begin(n), t + 1);
      if (r.init[n]) one.initial_state = pool0.view().slice(0, r.slot[n], 1);
      seqmix::reference::ssd(one, {y_ref.view(), s_ref.view(), {}}, o);
      st::require_close("token_states[t]", ts.cview().select(0, 0).select(0, r.begin(n) + t), s_ref.cview().select(0, 0), kTol);
    }
  }
  // Rollback: sequence n accepts j = len/2 of its tokens (its state becomes token_states[j-1]),
  // then decodes 3 new tokens (taken from the tail of the data) through its slot.
  const index_t extra0 = r.total;
  std::vector<std::int32_t> slots;
  std::vector<index_t> accepted;
  for (std::size_t n = 0; n < r.len.size(); ++n) {
    const index_t j = r.len[n] / 2;
    accepted.push_back(j);
    slots.push_back(r.slot[n]);
    auto slot = pool.view().select(0, r.slot[n]);
    if (j > 0)
      seqmix::copy(ts.cview().select(0, 0).select(0, r.begin(n) + j - 1), slot);
    else if (r.init[n])
      seqmix::copy(pool0.cview().select(0, r.slot[n]), slot);
    else
      fill(slot, 0.f);
  }
  const index_t B = static_cast<index_t>(r.len.size());
  for (index_t k = 0; k < 3; ++k) {
    // Step inputs: row n takes extra token extra0 + 3n + k.
    Tensor<float, 3> x({B, H, P}), z({B, H, P}), Bm({B, 1, N}), Cm({B, 1, N});
    Tensor<float, 2> dt({B, H});
    for (index_t n = 0; n < B; ++n) {
      const index_t t = extra0 + 3 * n + k;
      seqmix::copy(d.x.cview().select(1, t).select(0, 0), x.view()[n]);
      seqmix::copy(d.z.cview().select(1, t).select(0, 0), z.view()[n]);
      seqmix::copy(d.Bm.cview().select(1, t).select(0, 0), Bm.view()[n]);
      seqmix::copy(d.Cm.cview().select(1, t).select(0, 0), Cm.view()[n]);
      seqmix::copy(d.dt.cview().select(1, t).select(0, 0), dt.view()[n]);
    }
    Tensor<float, 3> y_step({B, H, P});
    seqmix::SsdStepInputs s{x.view(), dt.view(), d.A.view(), Bm.view(), Cm.view(), d.D.view(), z.view(), d.dt_bias.view(), {}};
    s.batch.state_indices = slots;
    seqmix::ssd_step(s, {y_step.view(), pool.view()}, o);
    if (k < 2) continue;
    for (index_t n = 0; n < B; ++n) {
      INFO("rolled-back sequence " << n);
      // Never gone forward: the accepted prefix, then the 3 new tokens, in one dense call.
      const index_t j = accepted[static_cast<std::size_t>(n)], L = j + 3;
      Tensor<float, 4> xx({1, L, H, P}), zz({1, L, H, P}), BB({1, L, 1, N}), CC({1, L, 1, N});
      Tensor<float, 3> dd({1, L, H});
      auto put = [&](index_t dst, index_t src) {
        seqmix::copy(d.x.cview().select(1, src), xx.view().select(1, dst));
        seqmix::copy(d.z.cview().select(1, src), zz.view().select(1, dst));
        seqmix::copy(d.Bm.cview().select(1, src), BB.view().select(1, dst));
        seqmix::copy(d.Cm.cview().select(1, src), CC.view().select(1, dst));
        seqmix::copy(d.dt.cview().select(1, src), dd.view().select(1, dst));
      };
      for (index_t t = 0; t < j; ++t) put(t, r.begin(static_cast<std::size_t>(n)) + t);
      for (index_t t = 0; t < 3; ++t) put(j + t, extra0 + 3 * n + t);
      seqmix::SsdInputs one{xx.view(), dd.view(), d.A.view(), BB.view(), CC.view(), d.D.view(), zz.view(), d.dt_bias.view(), {}, {}};
      if (r.init[static_cast<std::size_t>(n)]) one.initial_state = pool0.view().slice(0, slots[n], 1);
      Tensor<float, 4> y_ref({1, L, H, P}), s_ref({1, H, P, N});
      seqmix::reference::ssd(one, {y_ref.view(), s_ref.view(), {}}, o);
      st::require_close("last step output", y_step.cview()[n], y_ref.cview().select(0, 0).select(0, L - 1), kTol);
      st::require_close("state after rollback and steps", pool.cview()[slots[n]], s_ref.cview()[0], kTol);
    }
  }
}

// A packed prefill of the prompts into slots, then decode steps of every sequence in one call
// (rows in another order than the slots, padding rows among them), equals one call per sequence.
TEST_CASE("ssd prefill then slotted steps equal one call", "[ssd][serving]") {
  const index_t steps = 4;
  const Ragged r = make_ragged(21, 8, 16, 60, /*padding=*/false);
  const index_t seqs = static_cast<index_t>(r.len.size());
  const SsdData d(r.total + seqs * steps, 4, 8, 16, 2, 2100);
  const index_t H = d.H, P = d.P, N = d.N;
  Tensor<float, 4> pool = st::random_tensor<4>({r.S, H, P, N}, 22);
  const Tensor<float, 4> pool0 = clone(pool.cview());
  Tensor<float, 4> y({1, r.total, H, P});
  seqmix::SsdInputs in = d.slice(0, r.total);
  in.initial_state = pool.view();
  in.batch = r.batch();
  seqmix::SsdOptions o;
  o.dt_softplus = true;
  seqmix::ssd(in, {y.view(), pool.view(), {}}, o, pool2());
  // Step rows: the sequences reversed, with a padding row in between.
  const index_t B = seqs + 1;
  std::vector<std::int64_t> slots;
  for (index_t n = seqs; n-- > 0;) {
    slots.push_back(r.slot[static_cast<std::size_t>(n)]);
    if (n == seqs / 2) slots.push_back(-1);
  }
  Tensor<float, 3> last_y({B, H, P});
  for (index_t k = 0; k < steps; ++k) {
    Tensor<float, 3> x({B, H, P}), z({B, H, P}), Bm({B, 2, N}), Cm({B, 2, N});
    Tensor<float, 2> dt({B, H});
    for (index_t b = 0; b < B; ++b) {
      const auto it = std::find(r.slot.begin(), r.slot.end(), static_cast<std::int32_t>(slots[b]));
      const index_t n = slots[b] < 0 ? 0 : static_cast<index_t>(it - r.slot.begin());
      const index_t t = r.total + n * steps + k;
      seqmix::copy(d.x.cview().select(1, t).select(0, 0), x.view()[b]);
      seqmix::copy(d.z.cview().select(1, t).select(0, 0), z.view()[b]);
      seqmix::copy(d.Bm.cview().select(1, t).select(0, 0), Bm.view()[b]);
      seqmix::copy(d.Cm.cview().select(1, t).select(0, 0), Cm.view()[b]);
      seqmix::copy(d.dt.cview().select(1, t).select(0, 0), dt.view()[b]);
    }
    fill(last_y.view(), kSentinel);
    seqmix::SsdStepInputs s{x.view(), dt.view(), d.A.view(), Bm.view(), Cm.view(), d.D.view(), z.view(), d.dt_bias.view(), {}};
    s.batch.state_indices = slots;
    seqmix::ssd_step(s, {last_y.view(), pool.view()}, o, pool2());
  }
  for (index_t b = 0; b < B; ++b) {
    if (slots[b] < 0) {
      CHECK(last_y(b, 0, 0) == kSentinel);
      continue;
    }
    const index_t n = static_cast<index_t>(std::find(r.slot.begin(), r.slot.end(), static_cast<std::int32_t>(slots[b])) - r.slot.begin());
    const index_t L = r.len[static_cast<std::size_t>(n)] + steps;
    Tensor<float, 4> xx({1, L, H, P}), zz({1, L, H, P}), BB({1, L, 2, N}), CC({1, L, 2, N});
    Tensor<float, 3> dd({1, L, H});
    for (index_t t = 0; t < L; ++t) {
      const index_t len = r.len[static_cast<std::size_t>(n)];
      const index_t src = t < len ? r.begin(static_cast<std::size_t>(n)) + t : r.total + n * steps + (t - len);
      seqmix::copy(d.x.cview().select(1, src), xx.view().select(1, t));
      seqmix::copy(d.z.cview().select(1, src), zz.view().select(1, t));
      seqmix::copy(d.Bm.cview().select(1, src), BB.view().select(1, t));
      seqmix::copy(d.Cm.cview().select(1, src), CC.view().select(1, t));
      seqmix::copy(d.dt.cview().select(1, src), dd.view().select(1, t));
    }
    seqmix::SsdInputs one{xx.view(), dd.view(), d.A.view(), BB.view(), CC.view(), d.D.view(), zz.view(), d.dt_bias.view(), {}, {}};
    if (r.init[static_cast<std::size_t>(n)]) one.initial_state = pool0.view().slice(0, slots[b], 1);
    Tensor<float, 4> y_ref({1, L, H, P}), s_ref({1, H, P, N});
    seqmix::ssd(one, {y_ref.view(), s_ref.view(), {}}, o);
    INFO("row " << b << " sequence " << n);
    st::require_close("last step output", last_y.cview()[b], y_ref.cview().select(0, 0).select(0, L - 1), kTol);
    st::require_close("slot", pool.cview()[slots[b]], s_ref.cview()[0], kTol);
  }
}

TEST_CASE("ssd serving forms refuse bad input before writing", "[ssd][serving][errors]") {
  const index_t total = 20, H = 2, P = 4, N = 4, S = 4;
  const SsdData d(total, H, P, N, 1, 3100);
  Tensor<float, 4> pool = st::random_tensor<4>({S, H, P, N}, 31);
  Tensor<float, 4> y = st::random_tensor<4>({1, total, H, P}, 32);
  auto call = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&d, &pool, &y, cu, slots] {
      seqmix::SsdInputs in = d.inputs();
      in.initial_state = pool.view();
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::ssd(in, {y.view(), pool.view(), {}});
    };
  };
  require_refused("cu_seqlens", y.view(), pool.view(), call({0, 12, 8, 20}, {0, 1, 2}));
  require_refused("cu_seqlens", y.view(), pool.view(), call({0, 8, 19}, {0, 1}));
  require_refused("state_indices", y.view(), pool.view(), call({0, 8, 20}, {0, 4}));
  require_refused("state_indices", y.view(), pool.view(), call({0, 8, 20}, {2, 2}));
  require_refused("state_indices", y.view(), pool.view(), call({0, 8, 20}, {1}));
  // Without slots the state needs one row per sequence.
  require_refused("state", y.view(), pool.view(), call({0, 8, 20}, {}));
  // y over x: the chunked form reads x while it writes y.
  Tensor<float, 4> xy = clone(d.x.cview());
  require_refused("y", xy.view(), pool.view(), [&] {
    seqmix::SsdInputs in = d.inputs();
    in.x = xy.view();
    seqmix::ssd(in, {xy.view(), {}, {}});
  });
  // Steps: cu_seqlens has no meaning, slots must be in range.
  Tensor<float, 3> ys({2, H, P});
  auto step = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&d, &pool, &ys, cu, slots] {
      seqmix::SsdStepInputs s = d.step(0);
      s.x = d.x.cview().slice(1, 0, 2).select(0, 0), s.dt = d.dt.cview().slice(1, 0, 2).select(0, 0);
      s.Bm = d.Bm.cview().slice(1, 0, 2).select(0, 0), s.Cm = d.Cm.cview().slice(1, 0, 2).select(0, 0);
      s.z = d.z.cview().slice(1, 0, 2).select(0, 0);
      s.batch.cu_seqlens = cu;
      s.batch.state_indices = slots;
      seqmix::ssd_step(s, {ys.view(), pool.view()});
    };
  };
  require_refused("batch.cu_seqlens", ys.view(), pool.view(), step({0, 1, 2}, {0, 1}));
  require_refused("state_indices", ys.view(), pool.view(), step({}, {0, 9}));
  require_refused("state_indices", ys.view(), pool.view(), step({}, {3, 3}));
  require_refused("state", ys.view(), pool.view(), step({}, {}));  // 4 rows for 2 tokens
}

// ---- causal_conv1d -----------------------------------------------------------------------------

struct ConvData {
  index_t D, W;
  Tensor<float, 3> x;
  Tensor<float, 2> weight;
  Tensor<float, 1> bias;
  ConvData(index_t total, index_t D_, index_t W_, std::uint64_t seed)
      : D(D_), W(W_), x(st::random_tensor<3>({1, total, D_}, seed + 1)),
        weight(st::random_tensor<2>({D_, W_}, seed + 2)), bias(st::random_tensor<1>({D_}, seed + 3)) {}
};

// A conv state pool stored channel-major ([S, D, W-1], as causal-conv1d / vLLM keep it) or
// token-major ([S, W-1, D]); view() is the [S, W-1, D] view the operators take either way.
struct ConvPool {
  Tensor<float, 3> storage;
  bool channel_major;
  ConvPool(index_t S, index_t W, index_t D, bool cm, std::uint64_t seed)
      : storage(cm ? st::random_tensor<3>({S, D, W - 1}, seed) : st::random_tensor<3>({S, W - 1, D}, seed)),
        channel_major(cm) {}
  TensorView<float, 3> view() {
    return channel_major ? seqmix::channel_major_conv_state(storage.view()) : storage.view();
  }
};

TEST_CASE("causal_conv1d packed batches with slots equal each sequence alone", "[causal_conv1d][serving]") {
  struct Config {
    index_t sequences, D, W, max_len;
    bool channel_major, reference, threads, silu;
  };
  const Config configs[] = {
      {7, 17, 4, 80, false, false, false, true},  {16, 40, 4, 700, true, false, true, false},
      {9, 33, 3, 70, true, true, false, true},    {5, 1100, 2, 130, false, false, true, true},
      {8, 20, 1, 30, false, false, false, false}, {8, 24, 6, 66, true, false, true, true},
  };
  std::uint64_t seed = 40;
  for (const Config& c : configs) {
    const Ragged r = make_ragged(seed, c.sequences, 64, st::small_test_scale() ? std::min<index_t>(c.max_len, 150) : c.max_len);
    INFO(r.describe() << " D=" << c.D << " W=" << c.W << " channel_major=" << c.channel_major << " reference=" << c.reference);
    const ConvData d(r.total, c.D, c.W, seed * 10);
    ConvPool pool(r.S, c.W, c.D, c.channel_major, seed);
    const Tensor<float, 3> pool0 = clone(pool.view().as_const());  // token-major copy
    Tensor<float, 3> y({1, r.total, c.D});
    Tensor<float, 4> ts({1, r.total, c.W - 1, c.D});
    fill(y.view(), kSentinel);
    fill(ts.view(), kSentinel);
    seqmix::CausalConv1dInputs in{d.x.view(), d.weight.view(), d.bias.view(), pool.view(), r.batch()};
    const seqmix::CausalConv1dOutputs out{y.view(), pool.view(), ts.view()};
    seqmix::CausalConv1dOptions o{c.silu ? seqmix::ConvActivation::silu : seqmix::ConvActivation::none};
    const seqmix::Executor& ex = c.threads ? static_cast<const seqmix::Executor&>(pool2()) : seqmix::serial_executor();
    if (c.reference)
      seqmix::reference::causal_conv1d(in, out, o, ex);
    else
      seqmix::causal_conv1d(in, out, o, ex);
    std::vector<bool> used(static_cast<std::size_t>(r.S), false);
    for (std::size_t n = 0; n < r.len.size(); ++n) {
      INFO("sequence " << n);
      const index_t t0 = r.begin(n), T = r.len[n];
      if (r.slot[n] < 0) {
        for (index_t t = 0; t < T; ++t) CHECK(y(0, t0 + t, 0) == kSentinel);
        continue;
      }
      used[static_cast<std::size_t>(r.slot[n])] = true;
      seqmix::CausalConv1dInputs one{tokens(d.x.cview(), t0, T), d.weight.view(), d.bias.view(), {}, {}};
      if (r.init[n]) one.initial_state = pool0.view().slice(0, r.slot[n], 1);
      Tensor<float, 3> y_ref({1, T, c.D}), s_ref({1, c.W - 1, c.D});
      seqmix::causal_conv1d(one, {y_ref.view(), s_ref.view(), {}}, o);
      st::require_close("y", tokens(y.cview(), t0, T), y_ref.cview(), kTol);
      st::require_close("slot", pool.view().as_const().slice(0, r.slot[n], 1), s_ref.cview(), kTol);
      // The window after token t: the final state of a prefill of tokens [0, t].
      for (index_t t = 0; t < T; t += std::max<index_t>(1, T / 5)) {
        one.x = tokens(d.x.cview(), t0, t + 1);
        Tensor<float, 3> y_t({1, t + 1, c.D}), s_t({1, c.W - 1, c.D});
        seqmix::reference::causal_conv1d(one, {y_t.view(), s_t.view(), {}}, o);
        st::require_close("token_states[t]", ts.cview().select(1, t0 + t), s_t.cview(), 0.0);
      }
    }
    for (index_t s = 0; s < r.S; ++s)
      if (!used[static_cast<std::size_t>(s)]) require_equal("pool hole", pool.view().as_const()[s], pool0.cview()[s]);
    ++seed;
  }
}

TEST_CASE("causal_conv1d prefill then slotted steps equal one call, in either state layout", "[causal_conv1d][serving]") {
  for (const bool channel_major : {false, true}) {
    INFO("channel_major=" << channel_major);
    const index_t steps = 3, D = 70, W = 4;
    const Ragged r = make_ragged(50, 8, 3, 12, /*padding=*/false);  // lengths around W-1
    const index_t seqs = static_cast<index_t>(r.len.size());
    const ConvData d(r.total + seqs * steps, D, W, 500);
    ConvPool pool(r.S, W, D, channel_major, 51);
    const Tensor<float, 3> pool0 = clone(pool.view().as_const());
    Tensor<float, 3> y({1, r.total, D});
    const seqmix::CausalConv1dOptions o{seqmix::ConvActivation::silu};
    seqmix::causal_conv1d({tokens(d.x.cview(), 0, r.total), d.weight.view(), d.bias.view(), pool.view(), r.batch()},
                          {y.view(), pool.view(), {}}, o, pool2());
    std::vector<std::int32_t> slots(r.slot.rbegin(), r.slot.rend());
    slots.insert(slots.begin() + 2, -1);
    const index_t B = static_cast<index_t>(slots.size());
    Tensor<float, 2> y_step({B, D});
    for (index_t k = 0; k < steps; ++k) {
      Tensor<float, 2> x({B, D});
      for (index_t b = 0; b < B; ++b) {
        const index_t n = slots[b] < 0 ? 0 : static_cast<index_t>(std::find(r.slot.begin(), r.slot.end(), slots[b]) - r.slot.begin());
        seqmix::copy(d.x.cview().select(1, r.total + n * steps + k).select(0, 0), x.view()[b]);
      }
      fill(y_step.view(), kSentinel);
      seqmix::CausalConv1dStepInputs s{x.view(), d.weight.view(), d.bias.view(), {}};
      s.batch.state_indices = slots;
      seqmix::causal_conv1d_step(s, {y_step.view(), pool.view()}, o);
    }
    for (index_t b = 0; b < B; ++b) {
      if (slots[b] < 0) {
        CHECK(y_step(b, 5) == kSentinel);
        continue;
      }
      const index_t n = static_cast<index_t>(std::find(r.slot.begin(), r.slot.end(), slots[b]) - r.slot.begin());
      const index_t len = r.len[static_cast<std::size_t>(n)], L = len + steps;
      Tensor<float, 3> xx({1, L, D});
      for (index_t t = 0; t < L; ++t)
        seqmix::copy(d.x.cview().select(1, t < len ? r.begin(static_cast<std::size_t>(n)) + t : r.total + n * steps + t - len),
                     xx.view().select(1, t));
      seqmix::CausalConv1dInputs one{xx.view(), d.weight.view(), d.bias.view(), {}, {}};
      if (r.init[static_cast<std::size_t>(n)]) one.initial_state = pool0.view().slice(0, slots[b], 1);
      Tensor<float, 3> y_ref({1, L, D}), s_ref({1, W - 1, D});
      seqmix::reference::causal_conv1d(one, {y_ref.view(), s_ref.view(), {}}, o);
      INFO("row " << b);
      st::require_close("last step output", y_step.cview()[b], y_ref.cview()[0][L - 1], kTol);
      st::require_close("slot", pool.view().as_const()[slots[b]], s_ref.cview()[0], kTol);
    }
  }
}

TEST_CASE("causal_conv1d serving forms refuse bad input before writing", "[causal_conv1d][serving][errors]") {
  const index_t total = 20, D = 8, W = 4, S = 4;
  const ConvData d(total, D, W, 600);
  Tensor<float, 3> pool = st::random_tensor<3>({S, W - 1, D}, 61);
  Tensor<float, 3> y = st::random_tensor<3>({1, total, D}, 62);
  auto call = [&](std::vector<std::int32_t> cu, std::vector<std::int64_t> slots) {
    return [&d, &pool, &y, cu, slots] {
      seqmix::CausalConv1dInputs in{d.x.view(), d.weight.view(), {}, pool.view(), {}};
      in.batch.cu_seqlens = cu;
      in.batch.state_indices = slots;
      seqmix::causal_conv1d(in, {y.view(), pool.view(), {}});
    };
  };
  require_refused("cu_seqlens", y.view(), pool.view(), call({0, 12, 8, 20}, {0, 1, 2}));
  require_refused("cu_seqlens", y.view(), pool.view(), call({1, 8, 20}, {0, 1}));
  require_refused("state_indices", y.view(), pool.view(), call({0, 8, 20}, {-2, 1}));
  require_refused("state_indices", y.view(), pool.view(), call({0, 8, 20}, {3, 3}));
  // y == x used to give silently wrong results; now it is refused.
  Tensor<float, 3> xy = clone(d.x.cview());
  require_refused("y", xy.view(), pool.view(), [&] {
    seqmix::causal_conv1d({xy.view(), d.weight.view(), {}, {}, {}}, {xy.view(), {}, {}});
  });
  // y shifted by one token over x.
  Tensor<float, 3> big({1, total + 1, D});
  require_refused("y", big.view(), pool.view(), [&] {
    seqmix::causal_conv1d({big.view().slice(1, 1, total), d.weight.view(), {}, {}, {}}, {big.view().slice(1, 0, total), {}, {}});
  });
  // A final state that overlaps the initial state without being the same view.
  Tensor<float, 3> states({3, W - 1, D});
  require_refused("final_state", y.view(), states.view(), [&] {
    seqmix::causal_conv1d({tokens(d.x.cview(), 0, total), d.weight.view(), {}, states.view().slice(0, 0, 1), {}},
                          {y.view(), TensorView<float, 3>(states.view().data() + 1, {1, W - 1, D}), {}});
  });
  Tensor<float, 2> ys({2, D});
  auto step = [&](std::vector<std::int64_t> cu, std::vector<std::int32_t> slots) {
    return [&d, &pool, &ys, cu, slots] {
      seqmix::CausalConv1dStepInputs s{d.x.cview().slice(1, 0, 2).select(0, 0), d.weight.view(), {}, {}};
      s.batch.cu_seqlens = cu;
      s.batch.state_indices = slots;
      seqmix::causal_conv1d_step(s, {ys.view(), pool.view()});
    };
  };
  require_refused("batch.cu_seqlens", ys.view(), pool.view(), step({0, 1, 2}, {0, 1}));
  require_refused("state_indices", ys.view(), pool.view(), step({}, {0, 4}));
  require_refused("state_indices", ys.view(), pool.view(), step({}, {1, 1}));
  // y over the conv state.
  require_refused("y", pool.view(), pool.view(), [&] {
    seqmix::causal_conv1d_step({d.x.cview().slice(1, 0, 2).select(0, 0), d.weight.view(), {}, {}},
                               {pool.view().select(1, 0).slice(0, 0, 2), pool.view().slice(0, 0, 2)});
  });
}

// ---- selective_scan ----------------------------------------------------------------------------

struct ScanData {
  index_t D, N, G;
  Tensor<float, 3> u, delta, z;
  Tensor<float, 4> Bm, Cm;
  Tensor<float, 2> A;
  Tensor<float, 1> Dskip, delta_bias;
  ScanData(index_t total, index_t D_, index_t N_, index_t G_, std::uint64_t seed)
      : D(D_), N(N_), G(G_),
        u(st::random_tensor<3>({1, total, D_}, seed + 1)),
        delta(st::random_tensor<3>({1, total, D_}, seed + 2, -3.f, 1.f)),
        z(st::random_tensor<3>({1, total, D_}, seed + 3, -3.f, 3.f)),
        Bm(st::random_tensor<4>({1, total, G_, N_}, seed + 4)),
        Cm(st::random_tensor<4>({1, total, G_, N_}, seed + 5)),
        A(st::random_tensor<2>({D_, N_}, seed + 6, -3.f, -0.05f)),
        Dskip(st::random_tensor<1>({D_}, seed + 7)),
        delta_bias(st::random_tensor<1>({D_}, seed + 8, -1.f, 1.f)) {}
  seqmix::SelectiveScanInputs slice(index_t t0, index_t n) const {
    return {tokens(u.cview(), t0, n), tokens(delta.cview(), t0, n), A.view(), tokens(Bm.cview(), t0, n),
            tokens(Cm.cview(), t0, n), Dskip.view(), tokens(z.cview(), t0, n), delta_bias.view(), {}, {}};
  }
};

TEST_CASE("selective_scan packed batches with slots and token_states equal each sequence alone",
          "[selective_scan][serving]") {
  for (const bool reference : {false, true}) {
    const Ragged r = make_ragged(70 + reference, 10, 16, reference ? 40 : (st::small_test_scale() ? 120 : 500));
    INFO(r.describe() << " reference=" << reference);
    const ScanData d(r.total, 40, 16, 2, 700);
    Tensor<float, 3> pool = st::random_tensor<3>({r.S, d.D, d.N}, 71);
    const Tensor<float, 3> pool0 = clone(pool.cview());
    Tensor<float, 3> y({1, r.total, d.D});
    Tensor<float, 4> ts({1, r.total, d.D, d.N});
    fill(y.view(), kSentinel);
    seqmix::SelectiveScanInputs in = d.slice(0, r.total);
    in.initial_state = pool.view();
    in.batch = r.batch();
    const seqmix::SelectiveScanOptions o{true};
    if (reference)
      seqmix::reference::selective_scan(in, {y.view(), pool.view(), ts.view()}, o);
    else
      seqmix::selective_scan(in, {y.view(), pool.view(), ts.view()}, o, pool2());
    std::vector<bool> used(static_cast<std::size_t>(r.S), false);
    for (std::size_t n = 0; n < r.len.size(); ++n) {
      INFO("sequence " << n);
      const index_t t0 = r.begin(n), T = r.len[n];
      if (r.slot[n] < 0) {
        for (index_t t = 0; t < T; ++t) CHECK(y(0, t0 + t, 1) == kSentinel);
        continue;
      }
      used[static_cast<std::size_t>(r.slot[n])] = true;
      seqmix::SelectiveScanInputs one = d.slice(t0, T);
      if (r.init[n]) one.initial_state = pool0.view().slice(0, r.slot[n], 1);
      Tensor<float, 3> y_ref({1, T, d.D}), s_ref({1, d.D, d.N});
      seqmix::selective_scan(one, {y_ref.view(), s_ref.view(), {}}, o);
      st::require_close("y", tokens(y.cview(), t0, T), y_ref.cview(), kTol);
      st::require_close("slot", pool.cview().slice(0, r.slot[n], 1), s_ref.cview(), kTol);
      for (index_t t = 0; t < T; t += std::max<index_t>(1, T / 4)) {
        seqmix::SelectiveScanInputs prefix = d.slice(t0, t + 1);
        prefix.initial_state = one.initial_state;
        Tensor<float, 3> y_t({1, t + 1, d.D}), s_t({1, d.D, d.N});
        seqmix::reference::selective_scan(prefix, {y_t.view(), s_t.view(), {}}, o);
        st::require_close("token_states[t]", ts.cview().select(1, t0 + t), s_t.cview(), kTol);
      }
    }
    for (index_t s = 0; s < r.S; ++s)
      if (!used[static_cast<std::size_t>(s)]) require_equal("pool hole", pool.cview()[s], pool0.cview()[s]);
  }
}

TEST_CASE("selective_scan slotted steps equal the dense step", "[selective_scan][serving]") {
  const index_t S = 7, D = 24, N = 8;
  const ScanData d(3, D, N, 1, 800);
  Tensor<float, 3> pool = st::random_tensor<3>({S, D, N}, 81);
  const Tensor<float, 3> pool0 = clone(pool.cview());
  const std::vector<std::int32_t> slots = {4, -1, 0};
  const std::vector<std::uint8_t> init = {1, 1, 0};
  seqmix::SelectiveScanStepInputs s{d.u.cview()[0], d.delta.cview()[0], d.A.view(), d.Bm.cview()[0], d.Cm.cview()[0],
                                    d.Dskip.view(), d.z.cview()[0], d.delta_bias.view(), {}};
  s.batch.state_indices = slots;
  s.batch.has_initial_state = init;
  Tensor<float, 2> y({3, D});
  fill(y.view(), kSentinel);
  const seqmix::SelectiveScanOptions o{true};
  seqmix::selective_scan_step(s, {y.view(), pool.view()}, o);
  // The dense step over the gathered states.
  Tensor<float, 3> dense({3, D, N});
  seqmix::copy(pool0.cview()[4], dense.view()[0]);
  seqmix::copy(pool0.cview()[0], dense.view()[2]);
  fill(dense.view()[2], 0.f);
  Tensor<float, 2> y_ref({3, D});
  s.batch = {};
  seqmix::selective_scan_step(s, {y_ref.view(), dense.view()}, o);
  require_equal("row 0", y.cview()[0], y_ref.cview()[0]);
  require_equal("row 2", y.cview()[2], y_ref.cview()[2]);
  CHECK(y(1, 0) == kSentinel);
  require_equal("slot 4", pool.cview()[4], dense.cview()[0]);
  require_equal("slot 0", pool.cview()[0], dense.cview()[2]);
  for (index_t r : {1, 2, 3, 5, 6}) require_equal("untouched", pool.cview()[r], pool0.cview()[r]);
}

// Tokens `ids` of a packed [1, total, ...] tensor, gathered into a [1, ids.size(), ...] tensor.
template <std::size_t R>
Tensor<float, R> gather_tokens(const TensorView<const float, R>& packed, const std::vector<index_t>& ids) {
  auto shape = packed.shape();
  shape[1] = static_cast<index_t>(ids.size());
  Tensor<float, R> out(shape);
  for (std::size_t i = 0; i < ids.size(); ++i)
    seqmix::copy(packed.select(1, ids[i]), out.view().select(1, static_cast<index_t>(i)));
  return out;
}

// A Mamba-1 block (causal_conv1d, then selective_scan on its output) verifies T draft tokens per
// sequence in one packed call keeping both token_states; sequence n accepts j = len/2 tokens,
// restores its conv window and scan state to token j-1 (or to its initial state for j = 0), then
// decodes 3 new tokens through slotted steps. That equals running the accepted prefix and the 3
// new tokens alone, as if the verify had never gone past token j-1.
TEST_CASE("selective_scan and causal_conv1d token_states roll a speculative verify back",
          "[selective_scan][causal_conv1d][serving]") {
  const index_t D = 24, N = 8, G = 2, W = 4, extra = 3;
  const Ragged r = make_ragged(90, 7, 4, 16, /*padding=*/false);
  INFO(r.describe());
  const index_t seqs = static_cast<index_t>(r.len.size()), extra0 = r.total;
  const ScanData sd(r.total + seqs * extra, D, N, G, 900);
  const ConvData cd(r.total + seqs * extra, D, W, 910);
  Tensor<float, 3> ssm_pool = st::random_tensor<3>({r.S, D, N}, 91);
  Tensor<float, 3> conv_pool = st::random_tensor<3>({r.S, W - 1, D}, 92);
  const Tensor<float, 3> ssm0 = clone(ssm_pool.cview()), conv0 = clone(conv_pool.cview());
  const seqmix::CausalConv1dOptions co{seqmix::ConvActivation::silu};
  const seqmix::SelectiveScanOptions so{true};

  // The verify pass over every sequence's drafts.
  Tensor<float, 3> u({1, r.total, D}), y({1, r.total, D});
  Tensor<float, 4> conv_ts({1, r.total, W - 1, D}), ssm_ts({1, r.total, D, N});
  seqmix::causal_conv1d({tokens(cd.x.cview(), 0, r.total), cd.weight.view(), cd.bias.view(), conv_pool.view(), r.batch()},
                        {u.view(), conv_pool.view(), conv_ts.view()}, co, pool2());
  seqmix::SelectiveScanInputs in = sd.slice(0, r.total);
  in.u = u.cview();
  in.initial_state = ssm_pool.view();
  in.batch = r.batch();
  seqmix::selective_scan(in, {y.view(), ssm_pool.view(), ssm_ts.view()}, so, pool2());

  // Rollback to j accepted tokens.
  std::vector<index_t> accepted;
  for (std::size_t n = 0; n < r.len.size(); ++n) {
    const index_t j = r.len[n] / 2, slot = r.slot[n];
    accepted.push_back(j);
    if (j > 0) {
      seqmix::copy(conv_ts.cview().select(0, 0).select(0, r.begin(n) + j - 1), conv_pool.view()[slot]);
      seqmix::copy(ssm_ts.cview().select(0, 0).select(0, r.begin(n) + j - 1), ssm_pool.view()[slot]);
    } else if (r.init[n]) {
      seqmix::copy(conv0.cview()[slot], conv_pool.view()[slot]);
      seqmix::copy(ssm0.cview()[slot], ssm_pool.view()[slot]);
    } else {
      fill(conv_pool.view()[slot], 0.f);
      fill(ssm_pool.view()[slot], 0.f);
    }
  }

  // Decode: row n takes token extra0 + extra * n + k through its slots.
  Tensor<float, 2> y_step({seqs, D});
  for (index_t k = 0; k < extra; ++k) {
    std::vector<index_t> ids;
    for (index_t n = 0; n < seqs; ++n) ids.push_back(extra0 + extra * n + k);
    const auto x = gather_tokens(cd.x.cview(), ids), delta = gather_tokens(sd.delta.cview(), ids),
               z = gather_tokens(sd.z.cview(), ids);
    const auto Bm = gather_tokens(sd.Bm.cview(), ids), Cm = gather_tokens(sd.Cm.cview(), ids);
    Tensor<float, 2> u_step({seqs, D});
    seqmix::CausalConv1dStepInputs cs{x.cview()[0], cd.weight.view(), cd.bias.view(), {}};
    cs.batch.state_indices = r.slot;
    seqmix::causal_conv1d_step(cs, {u_step.view(), conv_pool.view()}, co);
    seqmix::SelectiveScanStepInputs ss{u_step.cview(), delta.cview()[0], sd.A.view(), Bm.cview()[0], Cm.cview()[0],
                                       sd.Dskip.view(), z.cview()[0], sd.delta_bias.view(), {}};
    ss.batch.state_indices = r.slot;
    seqmix::selective_scan_step(ss, {y_step.view(), ssm_pool.view()}, so);
  }

  for (std::size_t n = 0; n < r.len.size(); ++n) {
    INFO("sequence " << n << " accepted " << accepted[n] << " of " << r.len[n]);
    std::vector<index_t> ids;
    for (index_t t = 0; t < accepted[n]; ++t) ids.push_back(r.begin(n) + t);
    for (index_t k = 0; k < extra; ++k) ids.push_back(extra0 + extra * static_cast<index_t>(n) + k);
    const index_t L = static_cast<index_t>(ids.size()), slot = r.slot[n];
    const auto x = gather_tokens(cd.x.cview(), ids);
    seqmix::CausalConv1dInputs conv_one{x.cview(), cd.weight.view(), cd.bias.view(), {}, {}};
    if (r.init[n]) conv_one.initial_state = conv0.view().slice(0, slot, 1);
    Tensor<float, 3> u_ref({1, L, D}), conv_ref({1, W - 1, D});
    seqmix::reference::causal_conv1d(conv_one, {u_ref.view(), conv_ref.view(), {}}, co);
    const auto Bm = gather_tokens(sd.Bm.cview(), ids), Cm = gather_tokens(sd.Cm.cview(), ids);
    const auto delta = gather_tokens(sd.delta.cview(), ids), z = gather_tokens(sd.z.cview(), ids);
    seqmix::SelectiveScanInputs scan_one{u_ref.cview(), delta.cview(), sd.A.view(), Bm.cview(), Cm.cview(),
                                         sd.Dskip.view(), z.cview(), sd.delta_bias.view(), {}, {}};
    if (r.init[n]) scan_one.initial_state = ssm0.view().slice(0, slot, 1);
    Tensor<float, 3> y_ref({1, L, D}), ssm_ref({1, D, N});
    seqmix::reference::selective_scan(scan_one, {y_ref.view(), ssm_ref.view(), {}}, so);
    st::require_close("last step output", y_step.cview()[static_cast<index_t>(n)], y_ref.cview()[0][L - 1], kTol);
    st::require_close("conv window after rollback and steps", conv_pool.cview()[slot], conv_ref.cview()[0], kTol);
    st::require_close("scan state after rollback and steps", ssm_pool.cview()[slot], ssm_ref.cview()[0], kTol);
  }
}

}  // namespace
