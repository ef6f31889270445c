// Serving forms of the delta-rule family (delta_rule, gated_delta_rule with scalar and
// per-channel (KDA) gates, rwkv7): packed (cu_seqlens) prefill, state slots, has_initial_state,
// token_states for speculative verify, steps on a slot pool, against calls of the dense op on
// each sequence alone; and the ShapeErrors of bad serving arguments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::DeltaAlgorithm;
using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::SequenceBatch;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

enum class Op { delta_rule, gated_deltanet, kda, rwkv7 };

const char* op_name(Op op) {
  switch (op) {
    case Op::delta_rule: return "delta_rule";
    case Op::gated_deltanet: return "gated_delta_rule(scalar)";
    case Op::kda: return "gated_delta_rule(channel)";
    default: return "rwkv7";
  }
}

constexpr Op kOps[] = {Op::delta_rule, Op::gated_deltanet, Op::kda, Op::rwkv7};

// The per-token inputs of one op over TT tokens packed as [1, TT, ...]. q/k (r/k for rwkv7)
// have HK heads, everything else H (a multiple of HK; rwkv7 has HK = H).
struct Tokens {
  Op op;
  index_t TT, HK, H, K, V;
  Tensor<float, 4> q, k, v, g, a, b;
  Tensor<float, 3> beta, gs;

  Tokens(Op op_, index_t TT_, index_t K_, index_t V_, std::uint64_t seed)
      : op(op_), TT(TT_), HK(op_ == Op::rwkv7 ? 2 : 1), H(2), K(K_), V(V_) {
    q = st::random_tensor<4>({1, TT, HK, K}, seed + 1);
    k = st::random_tensor<4>({1, TT, HK, K}, seed + 2);
    v = st::random_tensor<4>({1, TT, H, V}, seed + 3);
    st::normalize_rows(q);
    st::normalize_rows(k, op == Op::rwkv7 ? 0.5f : 1.f);
    beta = st::random_tensor<3>({1, TT, H}, seed + 4, 0.f, 1.f);
    if (op == Op::gated_deltanet) gs = st::random_tensor<3>({1, TT, H}, seed + 5, -0.3f, 0.f);
    if (op == Op::kda || op == Op::rwkv7) g = st::random_tensor<4>({1, TT, H, K}, seed + 5, -0.3f, 0.f);
    if (op == Op::rwkv7) {
      a = st::random_tensor<4>({1, TT, H, K}, seed + 6);
      st::normalize_rows(a);
      b = Tensor<float, 4>({1, TT, H, K});
      for (index_t i = 0; i < a.numel(); ++i) b.data()[i] = -0.7f * a.data()[i];  // a = -kappa, b = 0.7 kappa
    }
  }
  index_t state_numel() const { return H * K * V; }
};

// One prefill call's views. Token tensors are `tok` sliced to tokens [t0, t0 + len) (all of
// them by default).
struct Prefill {
  index_t t0 = 0, len = -1;
  SequenceBatch batch;
  ConstView<float, 4> initial;
  TensorView<float, 4> o, final_state;
  TensorView<float, 5> token_states;
  DeltaAlgorithm algorithm = DeltaAlgorithm::automatic;
  index_t chunk = 64;
};

template <class T, std::size_t R>
TensorView<const T, R> tokens_of(const Tensor<T, R>& x, const Prefill& p) {
  if (x.numel() == 0) return {};
  return x.view().slice(1, p.t0, p.len < 0 ? x.size(1) - p.t0 : p.len);
}

void run_prefill(const Tokens& d, const Prefill& p, bool reference, const seqmix::Executor& ex = seqmix::serial_executor()) {
  if (d.op == Op::rwkv7) {
    seqmix::Rwkv7Inputs in{tokens_of(d.q, p), tokens_of(d.k, p), tokens_of(d.v, p), tokens_of(d.a, p),
                           tokens_of(d.b, p), tokens_of(d.g, p), p.initial, p.batch};
    seqmix::Rwkv7Outputs out{p.o, p.final_state, p.token_states};
    reference ? seqmix::reference::rwkv7(in, out, ex) : seqmix::rwkv7(in, out, ex);
  } else if (d.op == Op::delta_rule) {
    seqmix::DeltaRuleInputs in{tokens_of(d.q, p), tokens_of(d.k, p), tokens_of(d.v, p), tokens_of(d.beta, p),
                               p.initial, p.batch};
    seqmix::DeltaRuleOutputs out{p.o, p.final_state, p.token_states};
    seqmix::DeltaRuleOptions opt;
    opt.algorithm = p.algorithm, opt.chunk_size = p.chunk;
    reference ? seqmix::reference::delta_rule(in, out, opt, ex) : seqmix::delta_rule(in, out, opt, ex);
  } else {
    seqmix::GatedDeltaRuleInputs in{tokens_of(d.q, p), tokens_of(d.k, p), tokens_of(d.v, p), tokens_of(d.beta, p),
                                    tokens_of(d.gs, p), tokens_of(d.g, p), p.initial, p.batch};
    seqmix::GatedDeltaRuleOutputs out{p.o, p.final_state, p.token_states};
    seqmix::GatedDeltaRuleOptions opt;
    opt.gate = d.op == Op::kda ? DeltaGate::channel : DeltaGate::scalar;
    opt.algorithm = p.algorithm, opt.chunk_size = p.chunk;
    reference ? seqmix::reference::gated_delta_rule(in, out, opt, ex) : seqmix::gated_delta_rule(in, out, opt, ex);
  }
}

// Token pos[b] of `x` [1, TT, ...] as row b of a step tensor [B, ...] (pos -1: token 0).
template <std::size_t R>
Tensor<float, R - 1> gather(const Tensor<float, R>& x, const std::vector<index_t>& pos) {
  if (x.numel() == 0) return {};
  std::array<index_t, R - 1> shape{};
  shape[0] = static_cast<index_t>(pos.size());
  for (std::size_t i = 1; i + 1 < R; ++i) shape[i] = x.size(i + 1);
  Tensor<float, R - 1> out(shape);
  const index_t row = x.numel() / x.size(1);
  for (std::size_t b = 0; b < pos.size(); ++b)
    std::copy_n(x.data() + std::max<index_t>(pos[b], 0) * row, row, out.data() + static_cast<index_t>(b) * row);
  return out;
}

template <class T, std::size_t R>
TensorView<const T, R> view_or_empty(const Tensor<T, R>& x) {
  return x.numel() ? x.view() : TensorView<const T, R>();
}

// One step: row b takes token pos[b]; `pool` [S,H,K,V] in place.
void run_step(const Tokens& d, const std::vector<index_t>& pos, const SequenceBatch& batch, TensorView<float, 4> pool,
              TensorView<float, 3> o, const seqmix::Executor& ex = seqmix::serial_executor()) {
  const auto q = gather(d.q, pos), k = gather(d.k, pos), v = gather(d.v, pos), g = gather(d.g, pos);
  const auto a = gather(d.a, pos), b = gather(d.b, pos);
  const auto beta = gather(d.beta, pos), gs = gather(d.gs, pos);
  if (d.op == Op::rwkv7) {
    seqmix::rwkv7_step({q.view(), k.view(), v.view(), a.view(), b.view(), g.view(), batch}, {o, pool}, ex);
  } else if (d.op == Op::delta_rule) {
    seqmix::delta_rule_step({q.view(), k.view(), v.view(), beta.view(), batch}, {o, pool}, {}, ex);
  } else {
    seqmix::GatedDeltaRuleOptions opt;
    opt.gate = d.op == Op::kda ? DeltaGate::channel : DeltaGate::scalar;
    seqmix::gated_delta_rule_step({q.view(), k.view(), v.view(), beta.view(), view_or_empty(gs), view_or_empty(g), batch},
                                  {o, pool}, opt, ex);
  }
}

// Random lengths with the interesting ones near the chunk (1, chunk-1, chunk, chunk+1) and zero.
std::vector<index_t> ragged_lengths(std::mt19937_64& rng, index_t N, index_t chunk, index_t max_len) {
  const index_t special[] = {1, chunk - 1, chunk, chunk + 1, 0, 2 * chunk + 3};
  std::vector<index_t> len(static_cast<std::size_t>(N));
  for (index_t n = 0; n < N; ++n)
    len[static_cast<std::size_t>(n)] = n < 6 ? special[n] : std::uniform_int_distribution<index_t>(1, max_len)(rng);
  std::shuffle(len.begin(), len.end(), rng);
  return len;
}

std::vector<std::int64_t> offsets(const std::vector<index_t>& len) {
  std::vector<std::int64_t> cu{0};
  for (index_t l : len) cu.push_back(cu.back() + l);
  return cu;
}

void require_equal(const char* what, const TensorView<const float, 4>& a, const TensorView<const float, 4>& b,
                   double tol) {
  st::require_close(what, a, b, tol);
}

// Fast serving forms agree with the dense op bit for bit (one code path per sequence); the
// reference serving form agrees with the reference per sequence.
constexpr double kExact = 0.0;
// Different token kernels for the same function (step vs prefill forms, prefixes of different
// algorithms), fp32.
constexpr double kTol = 2e-5;

// A pool of S rows with random content, slots handed out with holes.
struct Pool {
  Tensor<float, 4> rows;
  std::vector<std::int64_t> slots;
  Pool(const Tokens& d, index_t N, std::mt19937_64& rng, std::uint64_t seed)
      : rows(st::random_tensor<4>({2 * N + 3, d.H, d.K, d.V}, seed, -0.5f, 0.5f)) {
    std::vector<std::int64_t> free(static_cast<std::size_t>(rows.size(0)));
    for (std::size_t i = 0; i < free.size(); ++i) free[i] = static_cast<std::int64_t>(i);
    std::shuffle(free.begin(), free.end(), rng);
    slots.assign(free.begin(), free.begin() + N);
  }
};

}  // namespace

TEST_CASE("delta family serving: packed prefill with slots equals each sequence alone", "[delta_serving]") {
  std::mt19937_64 rng(1401);
  const index_t K = 16, V = 16, chunk = 16;
  const int rounds = st::small_test_scale() ? 1 : 3;
  for (Op op : kOps)
    for (int round = 0; round < rounds; ++round)
      for (DeltaAlgorithm alg : {DeltaAlgorithm::automatic, DeltaAlgorithm::chunked}) {
        if (op == Op::rwkv7 && alg == DeltaAlgorithm::chunked) continue;  // rwkv7 is recurrent only
        const index_t N = std::uniform_int_distribution<index_t>(6, 16)(rng);
        const index_t max_len[] = {40, 150, 700};
        const std::vector<index_t> len = ragged_lengths(rng, N, chunk, max_len[round]);
        const std::vector<std::int64_t> cu = offsets(len);
        const index_t TT = cu.back();
        const Tokens d(op, TT, K, V, rng());
        Pool pool(d, N, rng, rng());
        std::vector<std::uint8_t> has_init(static_cast<std::size_t>(N));
        for (auto& f : has_init) f = rng() % 3 != 0;
        // Padding sequences: slot -1.
        pool.slots[static_cast<std::size_t>(rng() % N)] = -1;
        std::ostringstream what;
        what << op_name(op) << " round " << round << " alg " << static_cast<int>(alg) << " N " << N;
        INFO(what.str());

        for (bool reference : {false, true}) {
          const Tensor<float, 4> pool_before = pool.rows;
          Tensor<float, 4> o({1, TT, d.H, V});
          std::fill(o.data(), o.data() + o.numel(), 7.f);  // untouched rows keep this
          Tensor<float, 4> pool_out = pool.rows;
          Prefill p;
          p.batch.cu_seqlens = cu;
          p.batch.state_indices = pool.slots;
          p.batch.has_initial_state = has_init;
          p.initial = pool_out.view();
          p.final_state = pool_out.view();  // in place
          p.o = o.view();
          p.algorithm = alg, p.chunk = chunk;
          run_prefill(d, p, reference);

          for (index_t n = 0; n < N; ++n) {
            const std::size_t nn = static_cast<std::size_t>(n);
            const index_t t0 = cu[nn], L = len[nn];
            const auto o_n = o.view().slice(1, t0, L);
            if (pool.slots[nn] < 0) {
              for (index_t i = 0; i < o_n.numel(); ++i) REQUIRE(o.data()[t0 * d.H * V + i] == 7.f);
              continue;
            }
            Tensor<float, 4> o1({1, L, d.H, V}), s1({1, d.H, K, V});
            Prefill one;
            one.t0 = t0, one.len = L;
            one.o = o1.view(), one.final_state = s1.view();
            if (has_init[nn]) one.initial = pool_before.view().slice(0, pool.slots[nn], 1);
            one.algorithm = alg, one.chunk = chunk;
            run_prefill(d, one, reference);
            INFO("sequence " << n << " of length " << L << (reference ? " (reference)" : " (fast)"));
            require_equal("o", o_n, o1.view(), kExact);
            require_equal("final state", pool_out.view().slice(0, pool.slots[nn], 1), s1.view(), kExact);
          }
          // Rows no sequence names are untouched.
          for (index_t s = 0; s < pool.rows.size(0); ++s)
            if (std::find(pool.slots.begin(), pool.slots.end(), s) == pool.slots.end())
              require_equal("unused pool row", pool_out.view().slice(0, s, 1), pool_before.view().slice(0, s, 1), kExact);
        }
      }
}

TEST_CASE("delta family serving: dense batches with slots and with a thread pool", "[delta_serving]") {
  const index_t K = 16, V = 32, B = 3, T = 37;
  for (Op op : kOps) {
    INFO(op_name(op));
    // A dense [B,T] batch is the packed one with equal lengths: compare to a per-row call.
    const Tokens flat(op, B * T, K, V, 77);
    std::mt19937_64 rng(5);
    Pool pool(flat, B, rng, 99);
    for (const seqmix::Executor* ex : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&st::two_thread_pool())}) {
      Tensor<float, 4> o_packed({1, B * T, flat.H, V}), pool_packed = pool.rows;
      Prefill p;
      const std::vector<std::int64_t> cu = {0, T, 2 * T, 3 * T};
      p.batch.cu_seqlens = cu;
      p.batch.state_indices = pool.slots;
      p.initial = pool_packed.view(), p.final_state = pool_packed.view(), p.o = o_packed.view();
      run_prefill(flat, p, false, *ex);
      for (index_t b = 0; b < B; ++b) {
        Tensor<float, 4> o1({1, T, flat.H, V}), s1({1, flat.H, K, V});
        Prefill one;
        one.t0 = b * T, one.len = T;
        one.initial = pool.rows.view().slice(0, pool.slots[static_cast<std::size_t>(b)], 1);
        one.o = o1.view(), one.final_state = s1.view();
        run_prefill(flat, one, false);
        require_equal("o", o_packed.view().slice(1, b * T, T), o1.view(), kExact);
        require_equal("state", pool_packed.view().slice(0, pool.slots[static_cast<std::size_t>(b)], 1), s1.view(), kExact);
      }
    }
  }
}

TEST_CASE("delta family serving: token_states, prefill then steps, rollback", "[delta_serving]") {
  std::mt19937_64 rng(2024);
  const index_t K = 16, V = 16, N = 5;
  for (Op op : kOps) {
    INFO(op_name(op));
    // Sequence n: prompt of P[n] tokens, then a verify of 4 draft tokens of which acc[n] + 1
    // are kept (acc in [0, 3]), then 3 decode steps. Tokens are laid out per sequence:
    // [prompt | draft | decode], so the rollback run is "the same tokens minus the rejected".
    const std::vector<index_t> P = {1, 17, 40, 3, 64};
    const std::vector<index_t> acc = {0, 3, 1, 2, 0};
    const index_t draft = 4, decode = 3;
    std::vector<index_t> begin;
    index_t TT = 0;
    for (index_t n = 0; n < N; ++n) begin.push_back(TT), TT += P[static_cast<std::size_t>(n)] + draft + decode;
    const Tokens d(op, TT, K, V, rng());
    Pool pool(d, N, rng, rng());
    std::vector<std::uint8_t> fresh(static_cast<std::size_t>(N), 0);  // all start from zeros

    // 1. Prompts, packed (they are not contiguous in `d`: one call per sequence through slots,
    //    dense B = 1 with state_indices = {slot}).
    for (index_t n = 0; n < N; ++n) {
      const std::size_t nn = static_cast<std::size_t>(n);
      Tensor<float, 4> o({1, P[nn], d.H, V});
      Prefill p;
      p.t0 = begin[nn], p.len = P[nn];
      const std::vector<std::int64_t> slot = {pool.slots[nn]};
      const std::vector<std::uint8_t> from_zeros = {0};
      p.batch.state_indices = slot;
      p.batch.has_initial_state = from_zeros;
      p.initial = pool.rows.view(), p.final_state = pool.rows.view(), p.o = o.view();
      run_prefill(d, p, false);
    }
    // 2. Verify: 4 draft tokens each, token_states kept; the pool row advances to the state
    //    after the accepted token (copied from token_states: the engine's rollback).
    for (index_t n = 0; n < N; ++n) {
      const std::size_t nn = static_cast<std::size_t>(n);
      Tensor<float, 4> o({1, draft, d.H, V});
      Tensor<float, 5> ts({1, draft, d.H, K, V});
      Prefill p;
      p.t0 = begin[nn] + P[nn], p.len = draft;
      const std::vector<std::int32_t> slot = {static_cast<std::int32_t>(pool.slots[nn])};
      p.batch.state_indices = slot;
      const Tensor<float, 4> before = pool.rows;
      Tensor<float, 4> scratch = pool.rows;  // the verify writes its final state here, discarded
      p.initial = before.view(), p.final_state = scratch.view(), p.o = o.view(), p.token_states = ts.view();
      run_prefill(d, p, false);
      // token_states[t] equals the final state of a prefill of the first t+1 draft tokens.
      for (index_t t = 0; t < draft; ++t) {
        Tensor<float, 4> o1({1, t + 1, d.H, V}), s1({1, d.H, K, V});
        Prefill one;
        one.t0 = p.t0, one.len = t + 1;
        one.initial = before.view().slice(0, pool.slots[nn], 1);
        one.o = o1.view(), one.final_state = s1.view();
        run_prefill(d, one, false);
        const auto ts_t = ts.view()[0][t];
        const TensorView<const float, 4> got(ts_t.data(), {1, d.H, K, V});
        INFO("token_states[" << t << "]");
        require_equal("token state", got, s1.view(), kTol);
      }
      // Keep the state after the last accepted token.
      const auto keep = ts.view()[0][acc[nn]];
      std::copy_n(keep.data(), d.state_numel(), pool.rows.data() + pool.slots[nn] * d.state_numel());
    }
    // 3. Decode steps, all sequences in one call per step, slot order shuffled, one padding row.
    std::vector<index_t> order = {3, 0, 4, 1, 2};
    for (index_t s = 0; s < decode; ++s) {
      std::vector<index_t> pos;
      std::vector<std::int64_t> slots;
      for (index_t n : order) {
        const std::size_t nn = static_cast<std::size_t>(n);
        pos.push_back(begin[nn] + P[nn] + draft + s);
        slots.push_back(pool.slots[nn]);
      }
      pos.push_back(-1), slots.push_back(-1);  // padding row
      Tensor<float, 3> o({N + 1, d.H, V});
      std::fill(o.data(), o.data() + o.numel(), 3.f);
      SequenceBatch batch;
      batch.state_indices = slots;
      run_step(d, pos, batch, pool.rows.view(), o.view());
      for (index_t i = 0; i < d.H * V; ++i) REQUIRE(o.data()[N * d.H * V + i] == 3.f);
    }
    // Each sequence's final pool row equals one prefill of prompt + accepted + decode tokens.
    for (index_t n = 0; n < N; ++n) {
      const std::size_t nn = static_cast<std::size_t>(n);
      // The kept tokens are not contiguous (rejected drafts sit between); gather them.
      std::vector<index_t> kept;
      for (index_t t = 0; t < P[nn] + acc[nn] + 1; ++t) kept.push_back(begin[nn] + t);
      for (index_t s = 0; s < decode; ++s) kept.push_back(begin[nn] + P[nn] + draft + s);
      Tokens g = d;
      g.TT = static_cast<index_t>(kept.size());
      auto pick = [&](auto& x) {
        if (x.numel() == 0) return;
        auto rows = gather(x, kept);
        std::remove_reference_t<decltype(x)> y(
            [&] { auto s = x.shape(); s[1] = g.TT; return s; }());
        std::copy_n(rows.data(), rows.numel(), y.data());
        x = std::move(y);
      };
      pick(g.q), pick(g.k), pick(g.v), pick(g.g), pick(g.a), pick(g.b), pick(g.beta), pick(g.gs);
      Tensor<float, 4> o1({1, g.TT, d.H, V}), s1({1, d.H, K, V});
      Prefill one;
      one.o = o1.view(), one.final_state = s1.view();
      run_prefill(g, one, false);
      INFO("sequence " << n);
      require_equal("state after verify, rollback and steps", pool.rows.view().slice(0, pool.slots[nn], 1), s1.view(), kTol);
    }
  }
}

TEST_CASE("delta family serving: step slots equal a plain step, fresh rows start from zeros", "[delta_serving]") {
  const index_t K = 16, V = 32, B = 4;
  for (Op op : kOps) {
    INFO(op_name(op));
    const Tokens d(op, B, K, V, 31);
    std::mt19937_64 rng(9);
    Pool pool(d, B, rng, 41);
    const std::vector<std::uint8_t> has_init = {1, 0, 1, 1};
    const std::vector<index_t> pos = {0, 1, 2, 3};
    Tensor<float, 4> slotted = pool.rows;
    Tensor<float, 3> o_slot({B, d.H, V});
    SequenceBatch batch;
    batch.state_indices = pool.slots;
    batch.has_initial_state = has_init;
    run_step(d, pos, batch, slotted.view(), o_slot.view(), st::two_thread_pool());
    // Plain: gather the rows (zeroed where fresh), step, compare.
    Tensor<float, 4> dense({B, d.H, K, V});
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < d.state_numel(); ++i)
        dense.data()[b * d.state_numel() + i] =
            has_init[static_cast<std::size_t>(b)] ? pool.rows.data()[pool.slots[static_cast<std::size_t>(b)] * d.state_numel() + i] : 0.f;
    Tensor<float, 3> o_dense({B, d.H, V});
    run_step(d, pos, SequenceBatch(), dense.view(), o_dense.view());
    st::require_close("o", o_slot.view(), o_dense.view(), kExact);
    for (index_t b = 0; b < B; ++b)
      require_equal("state", slotted.view().slice(0, pool.slots[static_cast<std::size_t>(b)], 1), dense.view().slice(0, b, 1), kExact);
  }
}

TEST_CASE("delta family serving: bad serving arguments throw before anything is written", "[delta_serving]") {
  const index_t K = 8, V = 8;
  for (Op op : kOps) {
    INFO(op_name(op));
    const Tokens d(op, 10, K, V, 3);
    Tensor<float, 4> pool = st::random_tensor<4>({4, d.H, K, V}, 4);
    Tensor<float, 4> o({1, 10, d.H, V});
    std::fill(o.data(), o.data() + o.numel(), 5.f);
    const Tensor<float, 4> pool0 = pool, o0 = o;
    auto expect = [&](const char* argument, const std::vector<std::int64_t>& cu, const std::vector<std::int64_t>& slots) {
      Prefill p;
      p.batch.cu_seqlens = cu;
      if (!slots.empty()) p.batch.state_indices = slots;
      p.initial = pool.view(), p.final_state = pool.view(), p.o = o.view();
      st::require_shape_error(argument, [&] { run_prefill(d, p, false); });
      st::require_shape_error(argument, [&] { run_prefill(d, p, true); });
      require_equal("pool unchanged", pool.view(), pool0.view(), kExact);
      require_equal("o unchanged", o.view(), o0.view(), kExact);
    };
    expect("cu_seqlens", {0, 6, 4, 10}, {0, 1, 2});     // not monotone
    expect("cu_seqlens", {0, 4, 9}, {0, 1});            // does not end at total_T
    expect("cu_seqlens", {1, 4, 10}, {0, 1});           // does not start at 0
    expect("state_indices", {0, 4, 10}, {0, 4});        // out of range
    expect("state_indices", {0, 4, 10}, {2, 2});        // duplicate
    expect("state_indices", {0, 4, 10}, {0, 1, 2});     // wrong count
    expect("state_indices", {0, 4, 10}, {-2, 1});       // below -1
    expect("state", {0, 4, 10}, {});                    // 4 state rows for 2 sequences
    {
      // o overlapping an input.
      Prefill p;
      Tokens alias = d;
      p.o = TensorView<float, 4>(const_cast<float*>(alias.v.data()), {1, 10, d.H, V});
      std::vector<float> v_before(alias.v.data(), alias.v.data() + alias.v.numel());
      st::require_shape_error("o", [&] { run_prefill(alias, p, false); });
      REQUIRE(std::equal(v_before.begin(), v_before.end(), alias.v.data()));
    }
    {
      // token_states of the wrong shape; a state row count that is not the sequence count.
      Tensor<float, 5> ts({1, 9, d.H, K, V});
      Prefill p;
      p.o = o.view(), p.token_states = ts.view();
      st::require_shape_error("token_states", [&] { run_prefill(d, p, false); });
    }
    // Steps: cu_seqlens refused, bad slots refused, nothing written.
    auto expect_step = [&](const char* argument, const SequenceBatch& batch) {
      Tensor<float, 3> os({2, d.H, V});
      std::fill(os.data(), os.data() + os.numel(), 5.f);
      st::require_shape_error(argument, [&] { run_step(d, {0, 1}, batch, pool.view(), os.view()); });
      for (index_t i = 0; i < os.numel(); ++i) REQUIRE(os.data()[i] == 5.f);
      require_equal("pool unchanged", pool.view(), pool0.view(), kExact);
    };
    SequenceBatch bad;
    const std::vector<std::int64_t> cu = {0, 1, 2}, dup = {1, 1}, out_of_range = {0, 4}, one = {0};
    bad.cu_seqlens = cu;
    expect_step("cu_seqlens", bad);
    bad = SequenceBatch();
    bad.state_indices = dup;
    expect_step("state_indices", bad);
    bad.state_indices = out_of_range;
    expect_step("state_indices", bad);
    bad.state_indices = one;
    expect_step("state_indices", bad);
    expect_step("state", SequenceBatch());  // 4 pool rows, 2 token rows, no slots
  }
}
