// infllm: the fast form against reference::infllm_attention (each with its own memory) over T in
// {1, 64, 65, 1000}, D in {64, 128}, GQA 1 and 4, B = 2; top_k covering every sealed block is
// dense causal attention; decode equals the prefill's last row; a stream fed in pieces gives the
// same outputs and memory as one call; the representative rule on a hand-made case; bad
// options and shapes refused before the memory or the outputs change.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/infllm/fast.hpp"
#include "seqmix/attention/infllm/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct InfllmCase {
  index_t B, T, Hq, Hkv, D, block, reps, top_k, init, window;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " block=" << block << " r=" << reps
      << " top_k=" << top_k << " init=" << init << " window=" << window;
    return s.str();
  }
  seqmix::InfllmOptions options() const {
    seqmix::InfllmOptions o;
    o.block_size = block, o.representatives = reps, o.top_k = top_k, o.init_tokens = init, o.local_window = window;
    return o;
  }
  seqmix::InfllmMemory memory() const { return seqmix::InfllmMemory(B, Hq, Hkv, D, options()); }
};

template <class KV>
struct InfllmProblem {
  Tensor<float, 4> q, kf, vf;
  Tensor<KV, 4> k, v;
  InfllmProblem(const InfllmCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.Hq, c.D}, seed + 1)),
        kf(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 2)),
        vf(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 3)),
        k({c.B, c.T, c.Hkv, c.D}),
        v({c.B, c.T, c.Hkv, c.D}) {
    for (index_t e = 0; e < kf.numel(); ++e) k.data()[e] = KV(kf.data()[e]), v.data()[e] = KV(vf.data()[e]);
  }
  // Queries [t0, t1) against the cache up to t1.
  seqmix::InfllmInputs<KV> piece(index_t t0, index_t t1) const {
    seqmix::InfllmInputs<KV> in;
    in.q = q.cview().slice(1, t0, t1 - t0), in.k = k.cview().slice(1, 0, t1), in.v = v.cview().slice(1, 0, t1);
    return in;
  }
};

struct InfllmOutputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  InfllmOutputs(index_t B, index_t T, index_t H, index_t D) : o({B, T, H, D}), lse({B, T, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
  seqmix::AttentionOutputs rows(index_t t0, index_t t1) {
    return {o.view().slice(1, t0, t1 - t0), lse.view().slice(1, t0, t1 - t0)};
  }
};

constexpr double kInfllmTol = 1e-4;

void infllm_check_same(const std::string& what, InfllmOutputs& got, InfllmOutputs& want) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), kInfllmTol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), kInfllmTol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

void infllm_check_same_memory(const seqmix::InfllmMemory& a, const seqmix::InfllmMemory& b) {
  REQUIRE(a.length() == b.length());
  REQUIRE(a.blocks() == b.blocks());
  const index_t r = a.options().representatives;
  for (index_t bb = 0; bb < a.batch(); ++bb)
    for (index_t n = 0; n < a.blocks(); ++n)
      for (index_t hk = 0; hk < a.kv_heads(); ++hk)
        for (index_t e = 0; e < r; ++e) {
          REQUIRE(a.representative_position(bb, n, hk, e) == b.representative_position(bb, n, hk, e));
          for (index_t c = 0; c < a.head_dim(); ++c)
            REQUIRE(a.representatives(bb, n, hk)[e * a.head_dim() + c] == b.representatives(bb, n, hk)[e * a.head_dim() + c]);
        }
}

}  // namespace

TEST_CASE("infllm: fast prefill and decode match the reference", "[infllm]") {
  seqmix::ThreadPool pool(2);
  std::vector<InfllmCase> cases = {
      {1, 1, 4, 1, 64, 16, 4, 2, 4, 32},   {2, 64, 2, 2, 64, 8, 2, 2, 4, 16},  {1, 65, 8, 2, 128, 8, 3, 1, 0, 8},
      {2, 65, 4, 1, 64, 7, 7, 3, 5, 9},    {1, 64, 4, 4, 64, 8, 1, 0, 2, 8},
  };
  if (!st::small_test_scale()) {
    cases.push_back({1, 1000, 4, 1, 64, 32, 4, 3, 16, 128});
    cases.push_back({1, 1000, 2, 2, 128, 64, 8, 2, 4, 100});
  }
  std::uint64_t seed = 500;
  for (const InfllmCase& c : cases) {
    seed += 10;
    const InfllmProblem<float> p(c, seed);
    seqmix::InfllmMemory m_ref = c.memory(), m_fast = c.memory(), m_serial = c.memory(), m_step = c.memory();
    InfllmOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), fast1(c.B, c.T, c.Hq, c.D),
        step(c.B, c.T, c.Hq, c.D);
    seqmix::reference::infllm_attention(m_ref, p.piece(0, c.T), want.view());
    seqmix::infllm_attention(m_fast, p.piece(0, c.T), fast.view(), pool);
    seqmix::infllm_attention(m_serial, p.piece(0, c.T), fast1.view());
    // Decode: the prompt but its last token, then one step.
    seqmix::infllm_attention(m_step, p.piece(0, c.T - 1), step.rows(0, c.T - 1), pool);
    seqmix::infllm_attention(m_step, p.piece(c.T - 1, c.T), step.rows(c.T - 1, c.T), pool);
    infllm_check_same("infllm " + c.describe(), fast, want);
    infllm_check_same("infllm serial " + c.describe(), fast1, want);
    infllm_check_same("infllm prefill + step " + c.describe(), step, want);
    infllm_check_same_memory(m_fast, m_ref);
    infllm_check_same_memory(m_step, m_ref);
  }
}

TEST_CASE("infllm: 16-bit K/V match the reference on the same values", "[infllm]") {
  seqmix::ThreadPool pool(2);
  const InfllmCase c{1, 130, 4, 1, 64, 16, 4, 2, 4, 24};
  const InfllmProblem<seqmix::bf16> p(c, 7);
  seqmix::InfllmMemory m_ref = c.memory(), m_fast = c.memory();
  InfllmOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D);
  seqmix::reference::infllm_attention(m_ref, p.piece(0, c.T), want.view());
  seqmix::infllm_attention(m_fast, p.piece(0, c.T), fast.view(), pool);
  infllm_check_same("infllm bf16", fast, want);
}

TEST_CASE("infllm: retrieving every sealed block is dense causal attention", "[infllm]") {
  seqmix::ThreadPool pool(2);
  for (const InfllmCase& c : {InfllmCase{1, 200, 8, 2, 64, 16, 4, 13, 4, 16}, InfllmCase{2, 65, 4, 4, 128, 8, 8, 100, 0, 1},
                              InfllmCase{1, 300, 4, 1, 64, 32, 2, 9, 10, 20}}) {
    const InfllmProblem<float> p(c, 3);
    seqmix::AttentionInputs<float> dense;
    dense.q = p.q.cview(), dense.k = p.k.cview(), dense.v = p.v.cview();
    seqmix::AttentionOptions causal;
    causal.causal = true;
    seqmix::InfllmMemory m_ref = c.memory(), m_fast = c.memory();
    InfllmOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), ref(c.B, c.T, c.Hq, c.D);
    seqmix::reference::attention(dense, want.view(), causal);
    seqmix::reference::infllm_attention(m_ref, p.piece(0, c.T), ref.view());
    seqmix::infllm_attention(m_fast, p.piece(0, c.T), fast.view(), pool);
    CHECK(m_fast.blocks() > 0);
    infllm_check_same("reference::infllm_attention vs dense " + c.describe(), ref, want);
    infllm_check_same("infllm_attention vs dense " + c.describe(), fast, want);
  }
}

TEST_CASE("infllm: a stream fed in pieces equals one call, outputs and memory", "[infllm]") {
  seqmix::ThreadPool pool(2);
  const InfllmCase c{2, 400, 8, 2, 64, 16, 4, 3, 8, 40};
  const InfllmProblem<float> p(c, 41);
  seqmix::InfllmMemory whole = c.memory(), pieces = c.memory();
  InfllmOutputs one(c.B, c.T, c.Hq, c.D), many(c.B, c.T, c.Hq, c.D);
  seqmix::infllm_attention(whole, p.piece(0, c.T), one.view(), pool);
  const index_t cuts[] = {0, 1, 2, 9, 40, 41, 100, 227, 228, 229, 300, 400};
  for (std::size_t e = 0; e + 1 < std::size(cuts); ++e) {
    seqmix::infllm_attention(pieces, p.piece(cuts[e], cuts[e + 1]), many.rows(cuts[e], cuts[e + 1]), pool);
    REQUIRE(pieces.length() == cuts[e + 1]);
    REQUIRE(pieces.blocks() == pieces.blocks_at(cuts[e + 1] - 1));
  }
  infllm_check_same("pieces vs one call", many, one);
  infllm_check_same_memory(pieces, whole);
}

// The decode form (up to 4 queries per call) runs each retrieved block once for the heads of
// the group that chose it; with GQA 4 and random queries the heads of a group choose different
// blocks, which the test checks happened, so the per-block head lists are exercised.
TEST_CASE("infllm: decode steps with GQA 4 heads choosing different blocks match the reference", "[infllm]") {
  seqmix::ThreadPool pool(2);
  const index_t T = st::small_test_scale() ? 300 : 700;
  const InfllmCase c{2, T, 8, 2, 64, 16, 4, 3, 8, 40};
  const InfllmProblem<seqmix::f16> p(c, 77);
  seqmix::InfllmMemory m_ref = c.memory(), m_step = c.memory();
  InfllmOutputs want(c.B, c.T, c.Hq, c.D), step(c.B, c.T, c.Hq, c.D);
  seqmix::reference::infllm_attention(m_ref, p.piece(0, c.T), want.view());
  const index_t prompt = c.T - 24;
  seqmix::infllm_attention(m_step, p.piece(0, prompt), step.rows(0, prompt), pool);
  // Steps of 1, 2, 3 and 4 queries, threaded and serial, to the end of the stream.
  index_t t = prompt, size = 1;
  bool serial = false;
  while (t < c.T) {
    const index_t t1 = std::min(c.T, t + size);
    const seqmix::Executor& executor = serial ? seqmix::serial_executor() : static_cast<const seqmix::Executor&>(pool);
    seqmix::infllm_attention(m_step, p.piece(t, t1), step.rows(t, t1), executor);
    t = t1, size = size % 4 + 1, serial = !serial;
  }
  infllm_check_same("decode steps " + c.describe(), step, want);
  infllm_check_same_memory(m_step, m_ref);
  // Did the heads of one group choose different blocks for the last query?
  std::vector<float> scores;
  std::vector<std::int32_t> chosen, first;
  std::vector<std::pair<float, std::int32_t>> candidates;
  bool differ = false;
  const index_t G = c.Hq / c.Hkv, pos = c.T - 1;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hq; ++h) {
      seqmix::detail::infllm_select_row(m_step, p.q.cview().ptr(b, pos, h), p.q.cview().stride(3), b, h / G,
                                        m_step.blocks_at(pos), scores, chosen, candidates);
      REQUIRE(static_cast<index_t>(chosen.size()) == c.top_k);
      if (h % G == 0) first = chosen;
      differ = differ || chosen != first;
    }
  CHECK(differ);
}

TEST_CASE("infllm: representatives are the keys with the most attention received inside the block", "[infllm]") {
  // D = 1, scale 1, q = 1, no initial tokens, window 1, blocks of 3, r = 1. Block 0 keys 0, 5, 5:
  // query 0 gives key 0 weight 1; query 1 gives key 1 ~0.993; query 2 gives keys 1, 2 ~0.5 each:
  // key 1 receives the most. Block 0 is sealed by the query at position 3 (M(3) = 1).
  const index_t T = 4;
  Tensor<float, 4> q({1, T, 1, 1}), k({1, T, 1, 1}), v({1, T, 1, 1});
  const float keys[T] = {0.f, 5.f, 5.f, 1.f};
  for (index_t j = 0; j < T; ++j) q(0, j, 0, 0) = 1.f, k(0, j, 0, 0) = keys[j], v(0, j, 0, 0) = static_cast<float>(j);
  seqmix::InfllmOptions opt;
  opt.block_size = 3, opt.representatives = 1, opt.top_k = 1, opt.init_tokens = 0, opt.local_window = 1, opt.scale = 1.f;
  seqmix::InfllmMemory memory(1, 1, 1, 1, opt);
  seqmix::InfllmInputs<float> in;
  in.q = q.cview().slice(1, 0, 3), in.k = k.cview().slice(1, 0, 3), in.v = v.cview().slice(1, 0, 3);
  Tensor<float, 4> o({1, T, 1, 1});
  seqmix::infllm_attention(memory, in, {o.view().slice(1, 0, 3), {}});
  CHECK(memory.blocks() == 0);
  in.q = q.cview().slice(1, 3, 1), in.k = k.cview(), in.v = v.cview();
  seqmix::infllm_attention(memory, in, {o.view().slice(1, 3, 1), {}});
  REQUIRE(memory.blocks() == 1);
  CHECK(memory.representative_position(0, 0, 0, 0) == 1);
  CHECK(memory.representatives(0, 0, 0)[0] == 5.f);
  // The query at 3 retrieves block 0 (top_k = 1) and attends its own token: keys 0..3.
  const double w[T] = {1.0, std::exp(5.0), std::exp(5.0), std::exp(1.0)};
  double z = 0.0, num = 0.0;
  for (index_t j = 0; j < T; ++j) z += w[j], num += w[j] * static_cast<double>(j);
  CHECK(o(0, 3, 0, 0) == Approx(num / z).epsilon(1e-5));
}

TEST_CASE("infllm: bad options and shapes are refused before the memory or outputs change", "[infllm]") {
  const auto bad_option = [](const char* argument, seqmix::InfllmOptions opt) {
    st::require_shape_error(argument, [&] { seqmix::InfllmMemory m(1, 4, 2, 64, opt); });
  };
  seqmix::InfllmOptions opt;
  opt.block_size = 0;
  bad_option("options.block_size", opt);
  opt = {}, opt.representatives = 0;
  bad_option("options.representatives", opt);
  opt = {}, opt.block_size = 8, opt.representatives = 9;
  bad_option("options.representatives", opt);
  opt = {}, opt.top_k = -1;
  bad_option("options.top_k", opt);
  opt = {}, opt.local_window = 0;
  bad_option("options.local_window", opt);
  opt = {}, opt.init_tokens = -1;
  bad_option("options.init_tokens", opt);
  st::require_shape_error("q_heads", [] { seqmix::InfllmMemory m(1, 3, 2, 64); });

  const InfllmCase c{1, 40, 4, 2, 64, 8, 2, 1, 2, 8};
  const InfllmProblem<float> p(c, 5);
  seqmix::InfllmMemory memory = c.memory();
  InfllmOutputs first(c.B, 20, c.Hq, c.D);
  seqmix::infllm_attention(memory, p.piece(0, 20), first.view());
  const index_t blocks = memory.blocks();
  const auto refused = [&](const char* argument, const seqmix::InfllmInputs<float>& in, index_t Tq, index_t Hq) {
    InfllmOutputs a(c.B, Tq, Hq, c.D), r(c.B, Tq, Hq, c.D);
    st::require_shape_error(argument, [&] { seqmix::infllm_attention(memory, in, a.view()); });
    st::require_shape_error(argument, [&] { seqmix::reference::infllm_attention(memory, in, r.view()); });
    for (index_t e = 0; e < a.o.numel(); ++e) REQUIRE((std::isnan(a.o.data()[e]) && std::isnan(r.o.data()[e])));
    REQUIRE(memory.length() == 20);
    REQUIRE(memory.blocks() == blocks);
  };
  auto skipped = p.piece(21, 30);  // cache of 30 keys, but the memory has seen 20 + 9 = 29 needed
  refused("k", skipped, 9, c.Hq);
  auto bad_v = p.piece(20, 30);
  bad_v.v = p.v.cview().slice(1, 0, 29);
  refused("v", bad_v, 10, c.Hq);
  Tensor<float, 4> wide_q = st::random_tensor<4>({c.B, 10, 8, c.D}, 3);  // 8 query heads, memory built for 4
  auto bad_q = p.piece(20, 30);
  bad_q.q = wide_q.cview();
  refused("q", bad_q, 10, 8);
  st::require_shape_error("k", [&] { memory.append(p.q.cview().slice(1, 20, 5), p.k.cview().slice(1, 0, 26)); });
  REQUIRE(memory.length() == 20);
}
