// Serving forms of the diagonal-decay family (gated_linear_attention and its named cases,
// linear_attention, rwkv6): packed (cu_seqlens) prefill, state slots in a pool, has_initial_state,
// token_states, slotted decode steps and bad serving arguments, each against per-sequence calls
// of the dense op.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::GateKind;
using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr float kSentinel = 7.5f;  // what untouched outputs keep
constexpr double kTol = 2e-4;      // fp32 fast forms against the double reference (SPEC)
// The recurrent prefill folds decays over windows of tokens (diagonal_decay/recurrent.hpp); single
// steps, token_states and a sequence cut in pieces not aligned to those blocks take the plain
// per-token update, so they agree with one call to rounding, not bit for bit.
constexpr double kLazyTol = 1e-5;

// A ragged batch: lengths, offsets and the slots of a pool with holes and padding sequences.
struct Ragged {
  std::vector<index_t> lengths;
  std::vector<std::int64_t> cu64;
  std::vector<std::int32_t> cu32;
  std::vector<std::int64_t> slots;     // [N], -1 = padding
  std::vector<std::uint8_t> has_init;  // [N]
  index_t pool_rows = 0;
  index_t total() const { return static_cast<index_t>(cu64.back()); }
  index_t N() const { return static_cast<index_t>(lengths.size()); }
};

// Lengths drawn from the chunk edges (1, 63, 64, 65) and 1..max_len; slots a random subset of a
// pool bigger than N (holes), some sequences padding, has_initial_state mixed.
Ragged make_ragged(std::uint64_t seed, index_t N, index_t max_len, bool padding = true) {
  std::mt19937_64 rng(seed);
  Ragged r;
  const index_t edges[] = {1, 63, 64, 65};
  for (index_t n = 0; n < N; ++n) {
    const bool edge = rng() % 3 == 0;
    r.lengths.push_back(edge ? edges[rng() % 4] : 1 + static_cast<index_t>(rng() % max_len));
  }
  r.cu64.push_back(0);
  for (index_t len : r.lengths) r.cu64.push_back(r.cu64.back() + len);
  for (auto c : r.cu64) r.cu32.push_back(static_cast<std::int32_t>(c));
  r.pool_rows = N + 3;
  std::vector<std::int64_t> rows(static_cast<std::size_t>(r.pool_rows));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  for (index_t n = 0; n < N; ++n) {
    r.slots.push_back(padding && rng() % 5 == 0 ? -1 : rows[static_cast<std::size_t>(n)]);
    r.has_init.push_back(rng() % 3 != 0);
  }
  return r;
}

template <std::size_t R>
bool same(const Tensor<float, R>& a, const Tensor<float, R>& b) {
  return std::equal(a.data(), a.data() + a.numel(), b.data());
}

template <std::size_t R>
Tensor<float, R> filled(const std::array<index_t, R>& shape, float value) {
  Tensor<float, R> t(shape);
  std::fill(t.data(), t.data() + t.numel(), value);
  return t;
}

// Copies view src into dst (same shape).
template <class A, class B, std::size_t R>
void copy_view(const TensorView<A, R>& src, const TensorView<B, R>& dst) {
  std::array<index_t, R> idx{};
  const index_t n = src.numel();
  for (index_t i = 0; i < n; ++i) {
    index_t rest = i;
    for (std::size_t d = R; d-- > 0;) {
      idx[d] = rest % src.size(d);
      rest /= src.size(d);
    }
    std::apply([&](auto... j) { dst(j...) = src(j...); }, idx);
  }
}

// ---------------------------------------------------------------------------------------------
// gated_linear_attention

struct GlaShape {
  index_t H, HV, K, V;
  GateKind gate;
};

// Packed inputs [1,total,...], the pool and its starting content.
struct GlaPacked {
  GlaShape s;
  Tensor<float, 4> q, k, v, g;
  Tensor<float, 3> gs;
  Tensor<float, 4> pool0;
  GlaPacked(const GlaShape& shape, index_t total, index_t S, std::uint64_t seed)
      : s(shape),
        q(st::random_tensor<4>({1, total, shape.H, shape.K}, seed + 1)),
        k(st::random_tensor<4>({1, total, shape.H, shape.K}, seed + 2)),
        v(st::random_tensor<4>({1, total, shape.HV, shape.V}, seed + 3)),
        pool0(st::random_tensor<4>({S, shape.HV, shape.K, shape.V}, seed + 4)) {
    if (shape.gate == GateKind::channel) {
      g = Tensor<float, 4>({1, total, shape.HV, shape.K});
      st::fill_log_gate(g.view(), seed + 5, -2.f, 0.f);
    }
    if (shape.gate == GateKind::scalar) {
      gs = Tensor<float, 3>({1, total, shape.H});
      st::fill_log_gate(gs.view(), seed + 5, -1.f, 0.f);
    }
  }
  // Tokens [t0, t0 + n) as a dense batch of one sequence.
  seqmix::GatedLinearAttentionInputs inputs(index_t t0, index_t n) const {
    seqmix::GatedLinearAttentionInputs in;
    in.q = q.view().slice(1, t0, n), in.k = k.view().slice(1, t0, n), in.v = v.view().slice(1, t0, n);
    if (g.numel()) in.g = g.view().slice(1, t0, n);
    if (gs.numel()) in.g_scalar = gs.view().slice(1, t0, n);
    return in;
  }
  seqmix::GatedLinearAttentionInputs all() const { return inputs(0, q.size(1)); }
};

// Runs each live sequence of `r` alone (B = 1, its initial state from pool0 or zeros) and checks
// the packed call's outputs o and pool against it (tolerance tol; 0 = bit-exact).
void check_gla_against_singles(const GlaPacked& data, const Ragged& r, const seqmix::GatedLinearAttentionOptions& options,
                               const Tensor<float, 4>& o, const Tensor<float, 4>& pool, double tol,
                               const std::string& what) {
  const GlaShape& s = data.s;
  for (index_t n = 0; n < r.N(); ++n) {
    const index_t t0 = r.cu64[n], len = r.lengths[n], slot = r.slots[n];
    INFO(what << " sequence " << n << " of " << r.N() << " length " << len << " slot " << slot);
    if (slot < 0) {
      const auto rows = o.view().slice(1, t0, len);
      for (index_t t = 0; t < len; ++t) REQUIRE(rows(0, t, 0, 0) == kSentinel);
      continue;
    }
    Tensor<float, 4> init({1, s.HV, s.K, s.V}), fin({1, s.HV, s.K, s.V}), o1({1, len, s.HV, s.V});
    if (r.has_init[n]) copy_view(data.pool0.view().slice(0, slot, 1), init.view());
    seqmix::GatedLinearAttentionInputs in = data.inputs(t0, len);
    in.initial_state = init.view();
    seqmix::gated_linear_attention(in, {o1.view(), fin.view()}, options);
    st::require_close("o", o.view().slice(1, t0, len), o1.view(), tol);
    st::require_close("final_state", pool.view().slice(0, slot, 1), fin.view(), tol);
  }
  // Rows of the pool no live sequence names keep their content.
  for (index_t row = 0; row < pool.size(0); ++row)
    if (std::find(r.slots.begin(), r.slots.end(), row) == r.slots.end())
      st::require_close("untouched pool row", pool.view().slice(0, row, 1), data.pool0.view().slice(0, row, 1), 0.0);
}

}  // namespace

TEST_CASE("gated_linear_attention: packed batches with slots equal per-sequence calls", "[gla][serving]") {
  const GlaShape shapes[] = {{2, 4, 32, 32, GateKind::channel},
                             {2, 2, 16, 48, GateKind::scalar},
                             {1, 2, 32, 16, GateKind::retnet},
                             {2, 2, 16, 16, GateKind::none}};
  const index_t max_len = st::small_test_scale() ? 200 : 700;
  std::uint64_t seed = 1;
  for (const GlaShape& shape : shapes) {
    for (auto algorithm : {LinearAttentionAlgorithm::automatic, LinearAttentionAlgorithm::chunked,
                           LinearAttentionAlgorithm::recurrent}) {
      for (int threads : {1, 2}) {
        seed += 17;
        const index_t N = 1 + static_cast<index_t>(seed % 16);
        const Ragged r = make_ragged(seed, N, max_len);
        const GlaPacked data(shape, r.total(), r.pool_rows, seed);
        seqmix::GatedLinearAttentionOptions options;
        options.gate = shape.gate;
        options.algorithm = algorithm;
        Tensor<float, 4> pool = data.pool0;
        auto o = filled<4>({1, r.total(), shape.HV, shape.V}, kSentinel);
        seqmix::GatedLinearAttentionInputs in = data.all();
        in.initial_state = pool.view();
        in.batch.state_indices = r.slots;
        in.batch.has_initial_state = r.has_init;
        if (seed % 2) in.batch.cu_seqlens = r.cu64; else in.batch.cu_seqlens = r.cu32;
        seqmix::ThreadPool pool_exec(threads);
        seqmix::gated_linear_attention(in, {o.view(), pool.view()}, options, pool_exec);
        std::ostringstream what;
        what << "gate " << static_cast<int>(shape.gate) << " algorithm " << static_cast<int>(algorithm) << " threads "
             << threads << " N " << N;
        // The chunk grid restarts at every sequence, so packed and single calls agree bit for bit.
        check_gla_against_singles(data, r, options, o, pool, 0.0, what.str());

        // The reference takes the same batch.
        Tensor<float, 4> ref_pool = data.pool0;
        auto ref_o = filled<4>({1, r.total(), shape.HV, shape.V}, kSentinel);
        in.initial_state = ref_pool.view();
        seqmix::reference::gated_linear_attention(in, {ref_o.view(), ref_pool.view()}, options);
        st::require_close("reference o", o.view(), ref_o.view(), kTol);
        st::require_close("reference pool", pool.view(), ref_pool.view(), kTol);
      }
    }
  }
}

TEST_CASE("gated_linear_attention: dense batches take slots and has_initial_state", "[gla][serving]") {
  const GlaShape shape{2, 4, 16, 32, GateKind::channel};
  const index_t B = 3, T = 70;
  GlaPacked data(shape, B * T, 6, 90);
  // The same numbers viewed as [B,T,...]: sequence b is packed tokens [b*T, (b+1)*T).
  auto dense = [&](const Tensor<float, 4>& t) {
    return t.view().reshape<4>({B, T, t.size(2), t.size(3)});
  };
  Ragged r;
  r.lengths = {T, T, T};
  r.cu64 = {0, T, 2 * T, 3 * T};
  r.slots = {4, -1, 1};
  r.has_init = {1, 1, 0};
  r.pool_rows = 6;
  Tensor<float, 4> pool = data.pool0;
  auto o = filled<4>({1, B * T, shape.HV, shape.V}, kSentinel);
  seqmix::GatedLinearAttentionInputs in;
  in.q = dense(data.q), in.k = dense(data.k), in.v = dense(data.v), in.g = dense(data.g);
  in.initial_state = pool.view();
  in.batch.state_indices = r.slots;
  in.batch.has_initial_state = r.has_init;
  seqmix::gated_linear_attention(in, {o.view().reshape<4>({B, T, shape.HV, shape.V}), pool.view()});
  check_gla_against_singles(data, r, {}, o, pool, 0.0, "dense with slots");
}

TEST_CASE("gated_linear_attention: prefill then slotted steps equals one call", "[gla][serving]") {
  const GlaShape shape{2, 4, 32, 32, GateKind::channel};
  const index_t N = 5, steps = 6;
  Ragged r = make_ragged(400, N, 150, false);
  // Every sequence gets `steps` more tokens after its prompt: a packed layout of the prompts and
  // a second layout of the full sequences.
  std::vector<std::int64_t> full_cu{0};
  for (index_t n = 0; n < N; ++n) full_cu.push_back(full_cu.back() + r.lengths[n] + steps);
  const GlaPacked full(shape, full_cu.back(), r.pool_rows, 401);
  // Prompt tokens gathered into a packed batch.
  GlaPacked prompts(shape, r.total(), r.pool_rows, 401);
  for (index_t n = 0; n < N; ++n) {
    auto pick = [&](const Tensor<float, 4>& src, Tensor<float, 4>& dst) {
      copy_view(src.view().slice(1, full_cu[n], r.lengths[n]), dst.view().slice(1, r.cu64[n], r.lengths[n]));
    };
    pick(full.q, prompts.q), pick(full.k, prompts.k), pick(full.v, prompts.v), pick(full.g, prompts.g);
  }
  for (int threads : {1, 2}) {
    seqmix::ThreadPool exec(threads);
    Tensor<float, 4> pool = full.pool0;
    Tensor<float, 4> o_prompt({1, r.total(), shape.HV, shape.V});
    seqmix::GatedLinearAttentionInputs in = prompts.all();
    in.initial_state = pool.view();
    in.batch.cu_seqlens = r.cu64;
    in.batch.state_indices = r.slots;
    in.batch.has_initial_state = r.has_init;
    seqmix::gated_linear_attention(in, {o_prompt.view(), pool.view()}, {}, exec);
    // Decode: sequences in a shuffled row order, one padding row.
    std::vector<std::int64_t> row_seq = {3, -1, 0, 4, 1, 2};
    std::vector<std::int64_t> row_slot;
    for (auto n : row_seq) row_slot.push_back(n < 0 ? -1 : r.slots[n]);
    const index_t B = static_cast<index_t>(row_seq.size());
    for (index_t j = 0; j < steps; ++j) {
      Tensor<float, 3> q({B, shape.H, shape.K}), k({B, shape.H, shape.K}), v({B, shape.HV, shape.V}),
          g({B, shape.HV, shape.K});
      auto o = filled<3>({B, shape.HV, shape.V}, kSentinel);
      for (index_t b = 0; b < B; ++b) {
        const index_t n = row_seq[b];
        const index_t t = n < 0 ? 0 : full_cu[n] + r.lengths[n] + j;
        copy_view(full.q.view()[0][t], q.view()[b]), copy_view(full.k.view()[0][t], k.view()[b]);
        copy_view(full.v.view()[0][t], v.view()[b]), copy_view(full.g.view()[0][t], g.view()[b]);
      }
      seqmix::GatedLinearAttentionStepInputs sin{q.view(), k.view(), v.view(), g.view(), {}};
      sin.batch.state_indices = row_slot;
      seqmix::gated_linear_attention_step(sin, {o.view(), pool.view()}, {}, exec);
      for (index_t b = 0; b < B; ++b) {
        const index_t n = row_seq[b];
        if (n < 0) {
          CHECK(o(b, 0, 0) == kSentinel);
          continue;
        }
        // One call over the whole sequence.
        const index_t len = r.lengths[n] + j + 1;
        Tensor<float, 4> init({1, shape.HV, shape.K, shape.V}), o1({1, len, shape.HV, shape.V});
        if (r.has_init[n]) copy_view(full.pool0.view().slice(0, r.slots[n], 1), init.view());
        seqmix::GatedLinearAttentionInputs one = full.inputs(full_cu[n], len);
        one.initial_state = init.view();
        seqmix::GatedLinearAttentionOptions recurrent;
        recurrent.algorithm = LinearAttentionAlgorithm::recurrent;
        seqmix::gated_linear_attention(one, {o1.view(), init.view()}, recurrent);
        INFO("threads " << threads << " step " << j << " sequence " << n);
        st::require_close("step o", o.view()[b], o1.view()[0][len - 1], kLazyTol);
        if (j == steps - 1) st::require_close("state", pool.view()[r.slots[n]], init.view()[0], kLazyTol);
      }
    }
  }
}

TEST_CASE("gated_linear_attention: token_states, and rollback to a token continues the sequence", "[gla][serving]") {
  for (GateKind gate : {GateKind::channel, GateKind::scalar}) {
    const GlaShape shape{2, 4, 16, 32, gate};
    Ragged r = make_ragged(500 + static_cast<int>(gate), 6, 40);
    const GlaPacked data(shape, r.total(), r.pool_rows, 501);
    seqmix::GatedLinearAttentionOptions options;
    options.gate = gate;
    Tensor<float, 4> pool = data.pool0;
    auto o = filled<4>({1, r.total(), shape.HV, shape.V}, kSentinel);
    auto ts = filled<5>({1, r.total(), shape.HV, shape.K, shape.V}, kSentinel);
    seqmix::GatedLinearAttentionInputs in = data.all();
    in.initial_state = pool.view();
    in.batch.cu_seqlens = r.cu64;
    in.batch.state_indices = r.slots;
    in.batch.has_initial_state = r.has_init;
    seqmix::GatedLinearAttentionOutputs out{o.view(), pool.view(), ts.view()};
    seqmix::gated_linear_attention(in, out, options, st::two_thread_pool());
    // Outputs and final states are those of a call without token_states.
    check_gla_against_singles(data, r, options, o, pool, kLazyTol, "with token_states");
    // The reference keeps the same states.
    {
      Tensor<float, 4> ref_pool = data.pool0;
      auto ref_o = filled<4>({1, r.total(), shape.HV, shape.V}, kSentinel);
      auto ref_ts = filled<5>({1, r.total(), shape.HV, shape.K, shape.V}, kSentinel);
      in.initial_state = ref_pool.view();
      seqmix::reference::gated_linear_attention(in, {ref_o.view(), ref_pool.view(), ref_ts.view()}, options);
      st::require_close("reference token_states", ts.view(), ref_ts.view(), kTol);
    }
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t0 = r.cu64[n], len = r.lengths[n], slot = r.slots[n];
      if (slot < 0) {
        CHECK(ts(0, t0, 0, 0, 0) == kSentinel);
        continue;
      }
      Tensor<float, 4> init({1, shape.HV, shape.K, shape.V});
      if (r.has_init[n]) copy_view(data.pool0.view().slice(0, slot, 1), init.view());
      Tensor<float, 4> o_all({1, len, shape.HV, shape.V});
      {
        Tensor<float, 4> fin({1, shape.HV, shape.K, shape.V});
        seqmix::GatedLinearAttentionInputs one = data.inputs(t0, len);
        one.initial_state = init.view();
        seqmix::gated_linear_attention(one, {o_all.view(), fin.view()}, options);
      }
      for (index_t t = 0; t < len; ++t) {
        // token_states[t] is the final state of the first t + 1 tokens.
        Tensor<float, 4> fin({1, shape.HV, shape.K, shape.V}), o1({1, t + 1, shape.HV, shape.V});
        seqmix::GatedLinearAttentionInputs one = data.inputs(t0, t + 1);
        one.initial_state = init.view();
        seqmix::gated_linear_attention(one, {o1.view(), fin.view()}, options);
        INFO("sequence " << n << " token " << t);
        st::require_close("token state", ts.view()[0][t0 + t], fin.view()[0], kLazyTol);
        // Rollback: continue from the state of token t over the rest; equals never rolling back.
        if (t + 1 < len && t % 7 == 3) {
          Tensor<float, 4> from({1, shape.HV, shape.K, shape.V}), rest_fin({1, shape.HV, shape.K, shape.V});
          copy_view(ts.view()[0][t0 + t], from.view()[0]);
          Tensor<float, 4> o_rest({1, len - t - 1, shape.HV, shape.V});
          seqmix::GatedLinearAttentionInputs rest = data.inputs(t0 + t + 1, len - t - 1);
          rest.initial_state = from.view();
          seqmix::gated_linear_attention(rest, {o_rest.view(), rest_fin.view()}, options);
          st::require_close("continued o", o_rest.view(), o_all.view().slice(1, t + 1, len - t - 1), kLazyTol);
          st::require_close("continued state", rest_fin.view(), pool.view().slice(0, slot, 1), kLazyTol);
        }
      }
    }
  }
}

TEST_CASE("gated_linear_attention_step: slots, padding rows and fresh states equal dense steps", "[gla][serving]") {
  for (GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::retnet, GateKind::none}) {
    const index_t B = 7, S = 11, H = 2, HV = 4, K = 32, V = 48;
    Tensor<float, 3> q = st::random_tensor<3>({B, H, K}, 1), k = st::random_tensor<3>({B, H, K}, 2),
                     v = st::random_tensor<3>({B, HV, V}, 3);
    Tensor<float, 3> g({B, HV, K});
    Tensor<float, 2> gs({B, H});
    st::fill_log_gate(g.view(), 4), st::fill_log_gate(gs.view(), 5);
    const Tensor<float, 4> pool0 = st::random_tensor<4>({S, HV, K, V}, 6);
    const std::vector<std::int32_t> slots = {9, -1, 0, 4, 10, -1, 2};
    const std::vector<std::uint8_t> keep = {1, 1, 0, 1, 0, 1, 1};
    seqmix::GatedLinearAttentionOptions options;
    options.gate = gate;
    seqmix::GatedLinearAttentionStepInputs in{q.view(), k.view(), v.view()};
    if (gate == GateKind::channel) in.g = g.view();
    if (gate == GateKind::scalar) in.g_scalar = gs.view();
    in.batch.state_indices = slots;
    in.batch.has_initial_state = keep;
    Tensor<float, 4> pool = pool0;
    auto o = filled<3>({B, HV, V}, kSentinel);
    seqmix::gated_linear_attention_step(in, {o.view(), pool.view()}, options);
    for (index_t b = 0; b < B; ++b) {
      INFO("gate " << static_cast<int>(gate) << " row " << b);
      if (slots[b] < 0) {
        CHECK(o(b, 0, 0) == kSentinel);
        continue;
      }
      Tensor<float, 4> state({1, HV, K, V});
      std::fill(state.data(), state.data() + state.numel(), 0.f);
      if (keep[b]) copy_view(pool0.view().slice(0, slots[b], 1), state.view());
      Tensor<float, 3> o1({1, HV, V});
      seqmix::GatedLinearAttentionStepInputs one{q.view().slice(0, b, 1), k.view().slice(0, b, 1), v.view().slice(0, b, 1)};
      if (gate == GateKind::channel) one.g = g.view().slice(0, b, 1);
      if (gate == GateKind::scalar) one.g_scalar = gs.view().slice(0, b, 1);
      seqmix::gated_linear_attention_step(one, {o1.view(), state.view()}, options);
      st::require_close("o", o.view().slice(0, b, 1), o1.view(), 0.0);
      st::require_close("state", pool.view().slice(0, slots[b], 1), state.view(), 0.0);
    }
    for (index_t row : {1, 3, 5, 6, 7, 8})
      st::require_close("untouched row", pool.view()[row], pool0.view()[row], 0.0);
  }
}

TEST_CASE("gated_linear_attention: bad serving arguments throw before anything is written", "[gla][serving][errors]") {
  const GlaShape shape{2, 2, 16, 16, GateKind::channel};
  const Ragged r = make_ragged(700, 4, 30, false);
  const GlaPacked data(shape, r.total(), r.pool_rows, 700);
  Tensor<float, 4> pool = data.pool0;
  auto o = filled<4>({1, r.total(), shape.HV, shape.V}, kSentinel);
  const Tensor<float, 4> o0 = o;
  auto ts = filled<5>({1, r.total(), shape.HV, shape.K, shape.V}, kSentinel);
  auto prefill = [&](const seqmix::SequenceBatch& batch, const char* argument, bool with_ts = false) {
    seqmix::GatedLinearAttentionInputs in = data.all();
    in.initial_state = pool.view();
    in.batch = batch;
    seqmix::GatedLinearAttentionOutputs out{o.view(), pool.view()};
    if (with_ts) out.token_states = ts.view().slice(1, 0, r.total() - 1);
    st::require_shape_error(argument, [&] { seqmix::gated_linear_attention(in, out); });
    st::require_shape_error(argument, [&] { seqmix::reference::gated_linear_attention(in, out); });
    CHECK(same(o, o0));
    CHECK(same(pool, data.pool0));
  };
  seqmix::SequenceBatch good;
  good.cu_seqlens = r.cu64;
  good.state_indices = r.slots;
  std::vector<std::int64_t> cu = r.cu64;
  std::swap(cu[1], cu[2]);
  seqmix::SequenceBatch bad = good;
  bad.cu_seqlens = cu;
  prefill(bad, "cu_seqlens");  // not monotone
  cu = r.cu64;
  cu.back() -= 1;
  bad.cu_seqlens = cu;
  prefill(bad, "cu_seqlens");  // does not end at total_T
  std::vector<std::int64_t> slots = r.slots;
  slots[2] = r.pool_rows;
  bad = good;
  bad.state_indices = slots;
  prefill(bad, "state_indices");  // out of range
  slots = r.slots;
  slots[2] = slots[0];
  bad.state_indices = slots;
  prefill(bad, "state_indices");  // twice
  bad = good;
  bad.state_indices = {};
  prefill(bad, "state");  // a pool of N + 3 rows without slots
  prefill(good, "token_states", true);
  {  // o overlapping q
    seqmix::GatedLinearAttentionInputs in = data.all();
    in.batch = good;
    in.initial_state = pool.view();
    const Tensor<float, 4> q0 = data.q;
    // q is [1,total,2,16], the shape of o: an output written over an input.
    seqmix::GatedLinearAttentionOutputs out{TensorView<float, 4>(const_cast<float*>(data.q.data()), {1, r.total(), 2, 16}), pool.view()};
    st::require_shape_error("o", [&] { seqmix::gated_linear_attention(in, out); });
    CHECK(same(data.q, q0));
    CHECK(same(pool, data.pool0));
  }
  // Steps: cu_seqlens refused, bad slots refused, nothing written.
  const index_t B = 3;
  Tensor<float, 3> q = st::random_tensor<3>({B, 2, 16}, 1), k = st::random_tensor<3>({B, 2, 16}, 2),
                   v = st::random_tensor<3>({B, 2, 16}, 3), g({B, 2, 16});
  st::fill_log_gate(g.view(), 4);
  auto so = filled<3>({B, 2, 16}, kSentinel);
  const Tensor<float, 3> so0 = so;
  auto step = [&](const seqmix::SequenceBatch& batch, const char* argument) {
    seqmix::GatedLinearAttentionStepInputs in{q.view(), k.view(), v.view(), g.view(), {}, batch};
    st::require_shape_error(argument, [&] { seqmix::gated_linear_attention_step(in, {so.view(), pool.view()}); });
    CHECK(same(so, so0));
    CHECK(same(pool, data.pool0));
  };
  // IndexList and FlagList are views: the lists live here.
  const std::vector<std::int64_t> cu_rows = {0, 1, 2, 3}, out_of_range = {0, 1, r.pool_rows}, twice = {0, 1, 1},
                                  short_list = {0, 1}, fine = {0, 1, 2};
  const std::vector<std::uint8_t> two_flags = {1, 0};
  seqmix::SequenceBatch sb;
  sb.cu_seqlens = cu_rows;
  step(sb, "cu_seqlens");
  sb = {};
  sb.state_indices = out_of_range;
  step(sb, "state_indices");
  sb.state_indices = twice;
  step(sb, "state_indices");
  sb.state_indices = short_list;
  step(sb, "state_indices");
  sb = {};
  step(sb, "state");  // a pool of S != B rows without slots
  sb.state_indices = fine;
  sb.has_initial_state = two_flags;
  step(sb, "has_initial_state");
}

// ---------------------------------------------------------------------------------------------
// rwkv6 and linear_attention share the driver: packed + slots against per-sequence calls.

TEST_CASE("rwkv6: packed batches with slots, token_states and slotted steps", "[rwkv6][serving]") {
  const index_t H = 2, HV = 4, K = 32, V = 32;
  for (auto algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent}) {
    const Ragged r = make_ragged(800 + static_cast<int>(algorithm), 9, st::small_test_scale() ? 150 : 400);
    const index_t total = r.total(), S = r.pool_rows;
    const Tensor<float, 4> rr = st::random_tensor<4>({1, total, H, K}, 1), k = st::random_tensor<4>({1, total, H, K}, 2),
                           v = st::random_tensor<4>({1, total, HV, V}, 3);
    Tensor<float, 4> g({1, total, HV, K});
    st::fill_log_gate(g.view(), 4, -3.f, 0.f);
    const Tensor<float, 2> u = st::random_tensor<2>({H, K}, 5);
    const Tensor<float, 4> pool0 = st::random_tensor<4>({S, HV, K, V}, 6);
    auto slice = [&](index_t t0, index_t n) {
      seqmix::Rwkv6Inputs in;
      in.r = rr.view().slice(1, t0, n), in.k = k.view().slice(1, t0, n), in.v = v.view().slice(1, t0, n);
      in.g = g.view().slice(1, t0, n), in.u = u.view();
      return in;
    };
    seqmix::Rwkv6Options options;
    options.algorithm = algorithm;
    Tensor<float, 4> pool = pool0;
    auto o = filled<4>({1, total, HV, V}, kSentinel);
    seqmix::Rwkv6Inputs in = slice(0, total);
    in.initial_state = pool.view();
    in.batch.cu_seqlens = r.cu32;
    in.batch.state_indices = r.slots;
    in.batch.has_initial_state = r.has_init;
    seqmix::rwkv6(in, {o.view(), pool.view()}, options, st::two_thread_pool());
    // token_states through the recurrent form, on a copy of the pool.
    Tensor<float, 4> pool_ts = pool0;
    auto o_ts = filled<4>({1, total, HV, V}, kSentinel);
    Tensor<float, 5> ts({1, total, HV, K, V});
    in.initial_state = pool_ts.view();
    seqmix::rwkv6(in, {o_ts.view(), pool_ts.view(), ts.view()}, options);
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t0 = r.cu64[n], len = r.lengths[n], slot = r.slots[n];
      INFO("algorithm " << static_cast<int>(algorithm) << " sequence " << n << " length " << len);
      if (slot < 0) {
        CHECK(o(0, t0, 0, 0) == kSentinel);
        continue;
      }
      Tensor<float, 4> init({1, HV, K, V}), fin({1, HV, K, V}), o1({1, len, HV, V});
      std::fill(init.data(), init.data() + init.numel(), 0.f);
      if (r.has_init[n]) copy_view(pool0.view().slice(0, slot, 1), init.view());
      seqmix::Rwkv6Inputs one = slice(t0, len);
      one.initial_state = init.view();
      seqmix::rwkv6(one, {o1.view(), fin.view()}, options);
      st::require_close("o", o.view().slice(1, t0, len), o1.view(), 0.0);
      st::require_close("state", pool.view().slice(0, slot, 1), fin.view(), 0.0);
      st::require_close("o with token_states", o_ts.view().slice(1, t0, len), o1.view(), kTol);
      st::require_close("last token state", ts.view()[0][t0 + len - 1], fin.view()[0], kTol);
      st::require_close("state with token_states", pool_ts.view().slice(0, slot, 1), fin.view(), kTol);
      if (len > 1) {  // the state after the first token
        Tensor<float, 4> o2({1, 1, HV, V}), f2({1, HV, K, V});
        seqmix::Rwkv6Inputs first = slice(t0, 1);
        first.initial_state = init.view();
        seqmix::rwkv6(first, {o2.view(), f2.view()}, options);
        st::require_close("first token state", ts.view()[0][t0], f2.view()[0], kTol);
      }
    }
  }
  // Slotted step against dense steps.
  const index_t B = 4, S = 6;
  const Tensor<float, 3> rr = st::random_tensor<3>({B, H, K}, 11), k = st::random_tensor<3>({B, H, K}, 12),
                         v = st::random_tensor<3>({B, HV, V}, 13);
  Tensor<float, 3> g({B, H, K});
  st::fill_log_gate(g.view(), 14);
  const Tensor<float, 2> u = st::random_tensor<2>({H, K}, 15);
  const Tensor<float, 4> pool0 = st::random_tensor<4>({S, HV, K, V}, 16);
  Tensor<float, 4> pool = pool0;
  auto o = filled<3>({B, HV, V}, kSentinel);
  const std::vector<std::int64_t> slots = {5, -1, 0, 2};
  const std::vector<std::uint8_t> keep = {1, 1, 0, 1};
  seqmix::Rwkv6StepInputs in{rr.view(), k.view(), v.view(), g.view(), u.view()};
  in.batch.state_indices = slots;
  in.batch.has_initial_state = keep;
  seqmix::rwkv6_step(in, {o.view(), pool.view()});
  for (index_t b = 0; b < B; ++b) {
    if (slots[b] < 0) {
      CHECK(o(b, 0, 0) == kSentinel);
      continue;
    }
    Tensor<float, 4> state({1, HV, K, V});
    std::fill(state.data(), state.data() + state.numel(), 0.f);
    if (keep[b]) copy_view(pool0.view().slice(0, slots[b], 1), state.view());
    Tensor<float, 3> o1({1, HV, V});
    seqmix::rwkv6_step({rr.view().slice(0, b, 1), k.view().slice(0, b, 1), v.view().slice(0, b, 1),
                        g.view().slice(0, b, 1), u.view()},
                       {o1.view(), state.view()});
    st::require_close("step o", o.view().slice(0, b, 1), o1.view(), 0.0);
    st::require_close("step state", pool.view().slice(0, slots[b], 1), state.view(), 0.0);
  }
  for (index_t row : {1, 3, 4}) st::require_close("untouched", pool.view()[row], pool0.view()[row], 0.0);
}

TEST_CASE("linear_attention: packed batches with slots, normalizers and the JRT prefix per sequence",
          "[linear_attention][serving]") {
  const index_t H = 2, HV = 2, K = 16, V = 32;
  struct Mode {
    seqmix::FeatureMap map;
    bool normalize;
    index_t prefix;
    LinearAttentionAlgorithm algorithm;
  };
  const Mode modes[] = {{seqmix::FeatureMap::identity, false, 0, LinearAttentionAlgorithm::recurrent},
                        {seqmix::FeatureMap::elu1, true, 0, LinearAttentionAlgorithm::chunked},
                        {seqmix::FeatureMap::elu1, true, 0, LinearAttentionAlgorithm::recurrent},
                        {seqmix::FeatureMap::relu, false, 5, LinearAttentionAlgorithm::chunked},
                        {seqmix::FeatureMap::identity, false, 5, LinearAttentionAlgorithm::recurrent}};
  std::uint64_t seed = 900;
  for (const Mode& mode : modes) {
    ++seed;
    const Ragged r = make_ragged(seed, 7, 200);
    const index_t total = r.total(), S = r.pool_rows, Kf = seqmix::feature_dim(mode.map, K);
    const Tensor<float, 4> q = st::random_tensor<4>({1, total, H, K}, seed + 1),
                           k = st::random_tensor<4>({1, total, H, K}, seed + 2),
                           v = st::random_tensor<4>({1, total, HV, V}, seed + 3);
    const Tensor<float, 4> pool0 = st::random_tensor<4>({S, HV, Kf, V}, seed + 4);
    const Tensor<float, 3> z0 = st::random_tensor<3>({S, HV, Kf}, seed + 5, 0.5f, 1.f);
    seqmix::LinearAttentionOptions options;
    options.feature_map = mode.map;
    options.normalize = mode.normalize;
    options.prefix_len = mode.prefix;
    options.algorithm = mode.algorithm;
    Tensor<float, 4> pool = pool0;
    Tensor<float, 3> z = z0;
    auto o = filled<4>({1, total, HV, V}, kSentinel);
    seqmix::LinearAttentionInputs in{q.view(), k.view(), v.view(), pool.view()};
    seqmix::LinearAttentionOutputs out{o.view(), pool.view()};
    if (mode.normalize) in.initial_normalizer = z.view(), out.final_normalizer = z.view();
    in.batch.cu_seqlens = r.cu64;
    in.batch.state_indices = r.slots;
    in.batch.has_initial_state = r.has_init;
    seqmix::linear_attention(in, out, options, st::two_thread_pool());
    for (index_t n = 0; n < r.N(); ++n) {
      const index_t t0 = r.cu64[n], len = r.lengths[n], slot = r.slots[n];
      INFO("mode " << static_cast<int>(mode.map) << " normalize " << mode.normalize << " prefix " << mode.prefix
                   << " sequence " << n << " length " << len);
      if (slot < 0) {
        CHECK(o(0, t0, 0, 0) == kSentinel);
        continue;
      }
      Tensor<float, 4> init({1, HV, Kf, V}), fin({1, HV, Kf, V}), o1({1, len, HV, V});
      Tensor<float, 3> zi({1, HV, Kf}), zf({1, HV, Kf});
      std::fill(init.data(), init.data() + init.numel(), 0.f);
      std::fill(zi.data(), zi.data() + zi.numel(), 0.f);
      if (r.has_init[n]) copy_view(pool0.view().slice(0, slot, 1), init.view());
      if (r.has_init[n]) copy_view(z0.view().slice(0, slot, 1), zi.view());
      seqmix::LinearAttentionInputs one{q.view().slice(1, t0, len), k.view().slice(1, t0, len),
                                        v.view().slice(1, t0, len), init.view()};
      seqmix::LinearAttentionOutputs oo{o1.view(), fin.view()};
      if (mode.normalize) one.initial_normalizer = zi.view(), oo.final_normalizer = zf.view();
      seqmix::LinearAttentionOptions single = options;
      single.prefix_len = std::min(mode.prefix, len);
      seqmix::linear_attention(one, oo, single);
      st::require_close("o", o.view().slice(1, t0, len), o1.view(), 0.0);
      st::require_close("state", pool.view().slice(0, slot, 1), fin.view(), 0.0);
      if (mode.normalize) st::require_close("normalizer", z.view().slice(0, slot, 1), zf.view(), 0.0);
    }
  }
  // Slotted normalized step against a dense step.
  const index_t B = 3, S = 5;
  const Tensor<float, 3> q = st::random_tensor<3>({B, H, K}, 1), k = st::random_tensor<3>({B, H, K}, 2),
                         v = st::random_tensor<3>({B, HV, V}, 3);
  const Tensor<float, 4> pool0 = st::random_tensor<4>({S, HV, K, V}, 4);
  const Tensor<float, 3> z0 = st::random_tensor<3>({S, HV, K}, 5, 0.5f, 1.f);
  Tensor<float, 4> pool = pool0;
  Tensor<float, 3> z = z0;
  auto o = filled<3>({B, HV, V}, kSentinel);
  seqmix::LinearAttentionOptions options;
  options.feature_map = seqmix::FeatureMap::elu1;
  options.normalize = true;
  seqmix::LinearAttentionStepInputs in{q.view(), k.view(), v.view()};
  const std::vector<std::int32_t> slots = {4, 1, -1};
  const std::vector<std::uint8_t> keep = {0, 1, 1};
  in.batch.state_indices = slots;
  in.batch.has_initial_state = keep;
  seqmix::linear_attention_step(in, {o.view(), pool.view(), z.view()}, options);
  for (index_t b = 0; b < 2; ++b) {
    Tensor<float, 4> state({1, HV, K, V});
    Tensor<float, 3> zs({1, HV, K});
    std::fill(state.data(), state.data() + state.numel(), 0.f);
    std::fill(zs.data(), zs.data() + zs.numel(), 0.f);
    if (keep[b]) copy_view(pool0.view().slice(0, slots[b], 1), state.view());
    if (keep[b]) copy_view(z0.view().slice(0, slots[b], 1), zs.view());
    Tensor<float, 3> o1({1, HV, V});
    seqmix::linear_attention_step({q.view().slice(0, b, 1), k.view().slice(0, b, 1), v.view().slice(0, b, 1)},
                                  {o1.view(), state.view(), zs.view()}, options);
    st::require_close("step o", o.view().slice(0, b, 1), o1.view(), 0.0);
    st::require_close("step state", pool.view().slice(0, slots[b], 1), state.view(), 0.0);
    st::require_close("step normalizer", z.view().slice(0, slots[b], 1), zs.view(), 0.0);
  }
  CHECK(o(2, 0, 0) == kSentinel);
  for (index_t row : {0, 2, 3}) {
    st::require_close("untouched", pool.view()[row], pool0.view()[row], 0.0);
    st::require_close("untouched z", z.view()[row], z0.view()[row], 0.0);
  }
}
