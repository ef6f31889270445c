// topk_attention and its selectors: fast attention against reference::topk_attention for the
// selections of every scorer, k >= Tk against dense attention, the exact selector against a
// brute-force top-k (ties to the lower index), Quest's bound, the kept sinks / recent window, and
// argument validation.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/topk/fast.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

enum class Scorer { exact, block_mean, quest, low_rank, indexer };

const char* name_of(Scorer s) {
  switch (s) {
    case Scorer::exact: return "exact";
    case Scorer::block_mean: return "block_mean";
    case Scorer::quest: return "quest";
    case Scorer::low_rank: return "low_rank";
    default: return "indexer";
  }
}

struct Case {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, Hs, D;
  index_t k, block, sinks, recent;
  bool causal, sink_logits;
  bool large;

  std::string describe(Scorer s, std::uint64_t seed) const {
    std::ostringstream o;
    o << name << ": scorer=" << name_of(s) << " B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq
      << " Hkv=" << Hkv << " Hs=" << Hs << " D=" << D << " k=" << k << " block=" << block << " sinks=" << sinks
      << " recent=" << recent << " causal=" << causal << " seed=" << seed << " simd=" << seqmix::simd::arch_name();
    return o.str();
  }
};

// Selection per head, per KV group and per token; k below / around / above Tk; ragged blocks.
const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      // name              B  Tq  Tk    Hq Hkv Hs D    k    blk sinks recent causal sinklog
      {"decode-per-head", 1, 1, 1000, 8, 2, 8, 128, 100, 16, 4, 32, true, false, false},
      {"decode-per-group", 2, 1, 777, 8, 2, 2, 64, 64, 16, 0, 0, true, true, false},
      {"decode-per-token", 1, 1, 500, 4, 1, 1, 80, 50, 7, 2, 10, true, false, false},
      {"draft-tokens", 1, 4, 300, 4, 4, 4, 64, 40, 8, 1, 5, true, true, false},
      {"prefill", 1, 40, 40, 4, 2, 2, 32, 8, 4, 1, 3, true, false, false},
      {"noncausal", 1, 3, 200, 2, 1, 2, 64, 30, 1, 0, 0, false, false, false},
      {"long-decode", 1, 1, 20000, 8, 2, 8, 128, 512, 32, 4, 64, true, true, true},
  };
  return table;
}

struct Problem {
  Tensor<float, 4> q, k, v;
  Tensor<float, 1> sinks;
  Tensor<float, 3> projection;  // Loki P [Hkv, D, R]
  Tensor<float, 4> iq;          // indexer q [B,Tq,Hi,Di]
  Tensor<float, 3> ik, iw;      // indexer k [B,Tk,Di], weights [B,Tq,Hi]
  Problem(const Case& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 3)),
        sinks(st::random_tensor<1>({c.Hq}, seed + 4)),
        projection(st::random_tensor<3>({c.Hkv, c.D, 16}, seed + 5)),
        iq(st::random_tensor<4>({c.B, c.Tq, 4, 32}, seed + 6)),
        ik(st::random_tensor<3>({c.B, c.Tk, 32}, seed + 7)),
        iw(st::random_tensor<3>({c.B, c.Tq, 4}, seed + 8, 0.f, 1.f)) {}
};

seqmix::TopkOptions topk_options(const Case& c, Scorer s) {
  seqmix::TopkOptions o;
  o.k = c.k, o.sink_tokens = c.sinks, o.recent = c.recent, o.causal = c.causal;
  o.block = (s == Scorer::block_mean || s == Scorer::quest) ? c.block : 1;
  return o;
}

// Scores of one scorer, and the selection they give.
Tensor<std::int32_t, 4> select(const Case& c, const Problem& p, Scorer s, const seqmix::TopkOptions& o,
                               const seqmix::Executor& ex) {
  const index_t Hs = s == Scorer::indexer ? 1 : c.Hs;
  const index_t N = (c.Tk + o.block - 1) / o.block;
  Tensor<float, 4> scores({c.B, c.Tq, Hs, N});
  if (s == Scorer::exact) {
    seqmix::topk_scores_exact(p.q.cview(), p.k.cview(), scores.view(), ex);
  } else if (s == Scorer::block_mean || s == Scorer::quest) {
    Tensor<float, 4> mean({c.B, N, c.Hkv, c.D}), lo({c.B, N, c.Hkv, c.D}), hi({c.B, N, c.Hkv, c.D});
    seqmix::block_key_summaries(p.k.cview(), o.block, mean.view(), lo.view(), hi.view(), ex);
    if (s == Scorer::block_mean)
      seqmix::topk_scores_exact(p.q.cview(), mean.cview(), scores.view(), ex);
    else
      seqmix::topk_scores_quest(p.q.cview(), lo.cview(), hi.cview(), scores.view(), ex);
  } else if (s == Scorer::low_rank) {
    Tensor<float, 4> k_low({c.B, c.Tk, c.Hkv, 16});
    seqmix::project_keys(p.k.cview(), p.projection.cview(), k_low.view(), ex);
    seqmix::topk_scores_low_rank(p.q.cview(), p.projection.cview(), k_low.cview(), scores.view(), ex);
  } else {
    seqmix::LightningIndexerInputs in;
    in.q = p.iq.cview(), in.k = p.ik.cview(), in.weights = p.iw.cview();
    seqmix::topk_scores_indexer(in, scores.view(), ex);
  }
  Tensor<std::int32_t, 4> indices({c.B, c.Tq, Hs, seqmix::topk_capacity(o)});
  seqmix::select_topk(scores.cview(), c.Tk, indices.view(), o, {}, ex);
  return indices;
}

struct Outputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  explicit Outputs(const Case& c) : o({c.B, c.Tq, c.Hq, c.D}), lse({c.B, c.Tq, c.Hq}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

void check_same(const std::string& what, Outputs& got, Outputs& want, double tol) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), tol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), tol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

constexpr Scorer kScorers[] = {Scorer::exact, Scorer::block_mean, Scorer::quest, Scorer::low_rank, Scorer::indexer};

}  // namespace

TEST_CASE("topk_attention: fast form matches the reference for every selector", "[topk]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    if (c.large && st::small_test_scale()) continue;
    const std::uint64_t seed = 600 + static_cast<std::uint64_t>(&c - cases().data());
    const Problem p(c, seed);
    for (const Scorer s : kScorers) {
      const auto o = topk_options(c, s);
      const Tensor<std::int32_t, 4> indices = select(c, p, s, o, pool);
      // The same selection from a serial run.
      const Tensor<std::int32_t, 4> serial = select(c, p, s, o, seqmix::serial_executor());
      CHECK(std::equal(indices.begin(), indices.end(), serial.begin()));
      seqmix::TopkAttentionInputs<float> in;
      in.q = p.q.cview(), in.k = p.k.cview(), in.v = p.v.cview(), in.indices = indices.cview();
      if (c.sink_logits) in.sink_logits = p.sinks.cview();
      Outputs ref(c), fast(c);
      seqmix::reference::topk_attention(in, ref.view());
      seqmix::topk_attention(in, fast.view(), {}, pool);
      check_same(c.describe(s, seed), fast, ref, 1e-4);
    }
  }
}

TEST_CASE("topk_attention: k >= Tk equals dense attention, also with 16-bit K/V", "[topk]") {
  seqmix::ThreadPool pool(2);
  for (const Case& base : cases()) {
    if (base.large) continue;
    Case c = base;
    c.k = c.Tk;
    const std::uint64_t seed = 700 + static_cast<std::uint64_t>(&base - cases().data());
    Problem p(c, seed);
    Tensor<seqmix::bf16, 4> k16({c.B, c.Tk, c.Hkv, c.D}), v16({c.B, c.Tk, c.Hkv, c.D});
    seqmix::copy(p.k.cview(), k16.view());
    seqmix::copy(p.v.cview(), v16.view());
    seqmix::copy(k16.cview(), p.k.view());  // everyone sees the rounded values
    seqmix::copy(v16.cview(), p.v.view());
    seqmix::AttentionInputs<float> dense;
    dense.q = p.q.cview(), dense.k = p.k.cview(), dense.v = p.v.cview();
    if (c.sink_logits) dense.sink_logits = p.sinks.cview();
    seqmix::AttentionOptions dense_options;
    dense_options.causal = c.causal;
    Outputs want(c);
    seqmix::reference::attention(dense, want.view(), dense_options);
    for (const Scorer s : {Scorer::exact, Scorer::quest}) {
      const Tensor<std::int32_t, 4> indices = select(c, p, s, topk_options(c, s), pool);
      seqmix::TopkAttentionInputs<seqmix::bf16> in;
      in.q = p.q.cview(), in.k = k16.cview(), in.v = v16.cview(), in.indices = indices.cview();
      if (c.sink_logits) in.sink_logits = p.sinks.cview();
      Outputs got(c);
      seqmix::topk_attention(in, got.view(), {}, pool);
      check_same(c.describe(s, seed) + " k=Tk kv=bf16 vs dense reference", got, want, 1e-4);
    }
  }
}

TEST_CASE("topk selection: the exact selector picks the true top-k, ties to the lower index", "[topk]") {
  // Entries in {-1, -0.5, 0, 0.5, 1}: every dot product is exact in float, so equal keys tie exactly.
  const index_t Tk = 300, D = 16, Hq = 4, Hkv = 2, k = 37;
  Tensor<float, 4> q({1, 1, Hq, D}), keys({1, Tk, Hkv, D});
  std::uint64_t state = 12345;
  const auto draw = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return 0.5f * static_cast<float>(static_cast<int>((state >> 33) % 5) - 2);
  };
  for (float& x : q) x = draw();
  for (float& x : keys) x = draw();
  for (index_t j = 200; j < 240; ++j)  // duplicates of earlier keys: guaranteed ties
    for (index_t h = 0; h < Hkv; ++h)
      for (index_t c = 0; c < D; ++c) keys(0, j, h, c) = keys(0, j - 150, h, c);
  for (const index_t Hs : {index_t{4}, index_t{2}, index_t{1}}) {
    Tensor<float, 4> scores({1, 1, Hs, Tk});
    seqmix::topk_scores_exact(q.cview(), keys.cview(), scores.view());
    seqmix::TopkOptions o;
    o.k = k, o.causal = true;
    Tensor<std::int32_t, 4> got({1, 1, Hs, seqmix::topk_capacity(o) + 1});  // one spare slot
    seqmix::select_topk(scores.cview(), Tk, got.view(), o);
    for (index_t s = 0; s < Hs; ++s) {
      // Brute force: max over the selection head's query heads, sort by (score desc, index asc).
      std::vector<std::pair<double, index_t>> all;
      for (index_t j = 0; j < Tk; ++j) {
        double best = -INFINITY;
        for (index_t h = s * (Hq / Hs); h < (s + 1) * (Hq / Hs); ++h) {
          double dot = 0;
          for (index_t c = 0; c < D; ++c) dot += q(0, 0, h, c) * keys(0, j, h / (Hq / Hkv), c);
          best = std::max(best, dot);
        }
        all.push_back({-best, j});
      }
      std::sort(all.begin(), all.end());
      std::vector<std::int32_t> want;
      for (index_t e = 0; e < k; ++e) want.push_back(static_cast<std::int32_t>(all[e].second));
      std::sort(want.begin(), want.end());
      const std::vector<std::int32_t> selected(got.data() + s * got.size(3), got.data() + s * got.size(3) + k);
      INFO("Hs=" << Hs << " selection head " << s);
      CHECK(selected == want);
      CHECK(got(0, 0, s, k) == -1);  // exactly k keys, then padding
    }
  }
}

TEST_CASE("topk selection: Quest's bound is at least every score of its block", "[topk]") {
  const index_t B = 2, Tq = 3, Tk = 500, Hq = 8, Hkv = 2, D = 64, block = 16;
  const index_t Nb = (Tk + block - 1) / block;
  const auto q = st::random_tensor<4>({B, Tq, Hq, D}, 1), k = st::random_tensor<4>({B, Tk, Hkv, D}, 2);
  Tensor<float, 4> lo({B, Nb, Hkv, D}), hi({B, Nb, Hkv, D}), bound({B, Tq, Hq, Nb}), exact({B, Tq, Hq, Tk});
  seqmix::block_key_summaries(k.cview(), block, {}, lo.view(), hi.view());
  seqmix::topk_scores_quest(q.cview(), lo.cview(), hi.cview(), bound.view());
  seqmix::topk_scores_exact(q.cview(), k.cview(), exact.view());
  index_t violations = 0;
  double slack = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t nb = 0; nb < Nb; ++nb) {
          float top = -INFINITY;
          for (index_t j = nb * block; j < std::min(Tk, (nb + 1) * block); ++j) top = std::max(top, exact(b, i, h, j));
          if (bound(b, i, h, nb) < top - 1e-5f * (1.f + std::abs(top))) ++violations;
          slack += bound(b, i, h, nb) - top;
        }
  INFO("mean slack " << slack / (B * Tq * Hq * Nb));
  CHECK(violations == 0);
}

TEST_CASE("topk selection: sinks and the recent window are kept, -inf never selected", "[topk]") {
  // 20 keys, one query at position 19, per-key scores rising with j except a few -inf.
  const index_t Tk = 20;
  Tensor<float, 4> scores({1, 1, 1, Tk});
  for (index_t j = 0; j < Tk; ++j) scores(0, 0, 0, j) = static_cast<float>(j % 7);
  scores(0, 0, 0, 13) = -INFINITY;  // 13 % 7 = 6 would be a top score
  seqmix::TopkOptions o;
  o.k = 3, o.sink_tokens = 2, o.recent = 4;
  Tensor<std::int32_t, 4> got({1, 1, 1, seqmix::topk_capacity(o) + 2});
  seqmix::select_topk(scores.cview(), Tk, got.view(), o);
  // Kept: 0, 1 and 16..19. Candidates 2..15 without 13: scores 6 at j = 6, 5 at 5 and 12 -> 5, 6, 12.
  const std::vector<std::int32_t> want = {0, 1, 5, 6, 12, 16, 17, 18, 19, -1, -1};
  CHECK(std::vector<std::int32_t>(got.begin(), got.end()) == want);

  // Blocks of 4 (scores per block): the two best blocks that are not fully kept.
  Tensor<float, 4> block_scores({1, 1, 1, 5});
  const float values[5] = {9.f, 1.f, 3.f, 2.f, 8.f};  // block 4 = keys 16..19 is all recent
  for (index_t nb = 0; nb < 5; ++nb) block_scores(0, 0, 0, nb) = values[nb];
  o.block = 4, o.k = 8;
  Tensor<std::int32_t, 4> got_blocks({1, 1, 1, seqmix::topk_capacity(o)});
  seqmix::select_topk(block_scores.cview(), Tk, got_blocks.view(), o);
  // Block 0 (keys 2, 3 new) and block 2 (keys 8..11); block 4 holds only kept keys.
  const std::vector<std::int32_t> want_blocks = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, -1, -1};
  CHECK(std::vector<std::int32_t>(got_blocks.begin(), got_blocks.end()) == want_blocks);

  // Non-causal, query at explicit position 10: the recent window is 8..10 (not the keys after
  // it); candidates are every other key, the best by score (j % 7 = 6 at 6 and 13, 5 at 5, 12, 19).
  seqmix::TopkOptions nc;
  nc.k = 4, nc.recent = 3, nc.causal = false;
  Tensor<std::int32_t, 2> position({1, 1});
  position(0, 0) = 10;
  Tensor<float, 4> all_scores({1, 1, 1, Tk});
  for (index_t j = 0; j < Tk; ++j) all_scores(0, 0, 0, j) = static_cast<float>(j % 7);
  Tensor<std::int32_t, 4> got_nc({1, 1, 1, seqmix::topk_capacity(nc)});
  seqmix::select_topk(all_scores.cview(), Tk, got_nc.view(), nc, position.cview());
  const std::vector<std::int32_t> want_nc = {5, 6, 8, 9, 10, 12, 13};
  CHECK(std::vector<std::int32_t>(got_nc.begin(), got_nc.end()) == want_nc);
}

TEST_CASE("topk: bad arguments are rejected before any output is written", "[topk]") {
  const auto q = st::random_tensor<4>({1, 1, 4, 16}, 1), k = st::random_tensor<4>({1, 10, 2, 16}, 2);
  Tensor<std::int32_t, 4> indices({1, 1, 3, 4});  // 3 selection heads do not divide 4
  indices.fill(-1);
  Tensor<float, 4> o({1, 1, 4, 16});
  o.fill(42.f);
  seqmix::TopkAttentionInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = k.cview(), in.indices = indices.cview();
  CHECK_THROWS_WITH(seqmix::topk_attention(in, {o.view(), {}}), Catch::Contains("'indices'") && Catch::Contains("3"));
  Tensor<std::int32_t, 4> bad({1, 1, 2, 3});
  bad(0, 0, 0, 0) = 5, bad(0, 0, 0, 1) = 3, bad(0, 0, 0, 2) = -1;  // not increasing
  bad(0, 0, 1, 0) = 0, bad(0, 0, 1, 1) = 10, bad(0, 0, 1, 2) = -1;  // out of range
  in.indices = bad.cview();
  CHECK_THROWS_WITH(seqmix::topk_attention(in, {o.view(), {}}), Catch::Contains("strictly increasing"));
  Tensor<float, 4> scores({1, 1, 2, 10});
  seqmix::TopkOptions opt;
  opt.k = 5;
  Tensor<std::int32_t, 4> small({1, 1, 2, 4});
  CHECK_THROWS_WITH(seqmix::select_topk(scores.cview(), 10, small.view(), opt), Catch::Contains("capacity"));
  Tensor<float, 4> wrong_scores({1, 1, 2, 9});
  CHECK_THROWS_WITH(seqmix::topk_scores_exact(q.cview(), k.cview(), wrong_scores.view()), Catch::Contains("'scores'"));
  for (float x : o) CHECK(x == 42.f);
}

TEST_CASE("topk selection: NaN scores are never selected, extreme int64 positions are refused", "[topk][hostile]") {
  // Issue 24: a NaN index score (e.g. the lightning indexer's, from a NaN query or key) ranks
  // nowhere, so it never reaches topk_attention; a position where pos - recent or pos + 1 could
  // overflow is refused before any row is written.
  const index_t Tk = 12;
  Tensor<float, 4> scores({1, 1, 1, Tk});
  for (index_t j = 0; j < Tk; ++j) scores(0, 0, 0, j) = static_cast<float>(j);
  scores(0, 0, 0, 11) = NAN, scores(0, 0, 0, 9) = NAN;
  seqmix::TopkOptions o;
  o.k = 3;
  Tensor<std::int32_t, 4> got({1, 1, 1, seqmix::topk_capacity(o)});
  seqmix::select_topk(scores.cview(), Tk, got.view(), o);
  CHECK(std::vector<std::int32_t>(got.begin(), got.end()) == std::vector<std::int32_t>{7, 8, 10});
  for (const std::int64_t extreme : {std::numeric_limits<std::int64_t>::max(), -(std::int64_t{1} << 62)}) {
    Tensor<std::int64_t, 2> positions({1, 1});
    positions(0, 0) = extreme;
    got.fill(-5);
    st::require_shape_error("positions", [&] { seqmix::select_topk(scores.cview(), Tk, got.view(), o, positions.view()); });
    CHECK(std::all_of(got.begin(), got.end(), [](std::int32_t x) { return x == -5; }));
  }
}
