// Issue 22 item 6 policies: CacheBlend deviation (fast against the double reference, ragged and
// strided), selection (r = 0 / 1, ties, NaN, gradual filtering) and blend; SpAtten's cascade
// against the full-sort reference over several layers; SirLLM token entropy (fast against
// reference, masked logits) and its decayed scorer against naive bookkeeping; HeadKV retrieval
// scores, budgets and per-head selection; bad input refused before anything is written.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

#include "seqmix/kv_cache/policies/cacheblend.hpp"
#include "seqmix/kv_cache/policies/head_budgets.hpp"
#include "seqmix/kv_cache/policies/head_types.hpp"
#include "seqmix/kv_cache/policies/token_scores.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;
namespace kv = seqmix::kv;

struct RecomputeKv {
  Tensor<float, 4> ck, cv, fk, fv;
  RecomputeKv(index_t B, index_t N, index_t H, index_t Dk, index_t Dv, std::uint64_t seed)
      : ck(st::random_tensor<4>({B, N, H, Dk}, seed)), cv(st::random_tensor<4>({B, N, H, Dv}, seed + 1)),
        fk(st::random_tensor<4>({B, N, H, Dk}, seed + 2)), fv(st::random_tensor<4>({B, N, H, Dv}, seed + 3)) {}
  kv::CacheBlendInputs inputs() const { return {ck.cview(), cv.cview(), fk.cview(), fv.cview()}; }
};

std::vector<index_t> recompute_iota(index_t n) {
  std::vector<index_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), index_t{0});
  return v;
}

}  // namespace

TEST_CASE("kv cacheblend deviation fast equals reference", "[kv_policies][cacheblend]") {
  const auto& pool = st::two_thread_pool();
  for (auto [B, N, H, Dk, Dv] : std::vector<std::array<index_t, 5>>{{1, 1, 1, 1, 1}, {2, 37, 3, 17, 5}, {1, 130, 2, 64, 64}}) {
    RecomputeKv kvs(B, N, H, Dk, Dv, 100 + N);
    Tensor<float, 2> fast({B, N}), ref({B, N});
    kv::cacheblend_deviation(kvs.inputs(), fast.view(), pool);
    kv::reference::cacheblend_deviation(kvs.inputs(), ref.view());
    st::require_close("deviation", fast.view(), ref.view(), 1e-5);
    // One element by hand.
    double s = 0.0;
    for (index_t h = 0; h < H; ++h) {
      for (index_t c = 0; c < Dk; ++c) s += std::pow(double(kvs.ck(B - 1, N - 1, h, c)) - kvs.fk(B - 1, N - 1, h, c), 2);
      for (index_t c = 0; c < Dv; ++c) s += std::pow(double(kvs.cv(B - 1, N - 1, h, c)) - kvs.fv(B - 1, N - 1, h, c), 2);
    }
    CHECK(ref(B - 1, N - 1) == Approx(std::sqrt(s)).epsilon(1e-6));
  }
  // Strided channels (a transposed view) take the scalar path and agree.
  RecomputeKv kvs(1, 9, 2, 6, 6, 7);
  Tensor<float, 4> kt({1, 9, 6, 2});
  for (index_t j = 0; j < 9; ++j)
    for (index_t h = 0; h < 2; ++h)
      for (index_t c = 0; c < 6; ++c) kt(0, j, c, h) = kvs.ck(0, j, h, c);
  auto in = kvs.inputs();
  in.cached_keys = seqmix::ConstView<float, 4>(kt.data(), {1, 9, 2, 6}, {9 * 12, 12, 1, 2});
  Tensor<float, 2> fast({1, 9}), ref({1, 9});
  kv::cacheblend_deviation(in, fast.view());
  kv::reference::cacheblend_deviation(kvs.inputs(), ref.view());
  st::require_close("strided deviation", fast.view(), ref.view(), 1e-5);
}

TEST_CASE("kv cacheblend ratio one gives fresh and zero gives cached", "[kv_policies][cacheblend]") {
  const index_t B = 2, N = 23, H = 2, D = 7;
  RecomputeKv kvs(B, N, H, D, D, 40);
  Tensor<float, 2> dev({B, N});
  kv::cacheblend_deviation(kvs.inputs(), dev.view());
  for (double r : {0.0, 1.0}) {
    Tensor<float, 4> k = kvs.ck, v = kvs.cv;
    const auto sel = kv::cacheblend_select(dev.cview(), {r});
    for (index_t b = 0; b < B; ++b) CHECK(sel.rows[b] == (r == 1.0 ? recompute_iota(N) : std::vector<index_t>{}));
    kv::cacheblend_blend(k.view(), v.view(), kvs.fk.cview(), kvs.fv.cview(), sel);
    const auto& want_k = r == 1.0 ? kvs.fk : kvs.ck;
    const auto& want_v = r == 1.0 ? kvs.fv : kvs.cv;
    bool same = true;
    for (index_t b = 0; b < B; ++b)
      for (index_t j = 0; j < N; ++j)
        for (index_t h = 0; h < H; ++h)
          for (index_t c = 0; c < D; ++c) same = same && k(b, j, h, c) == want_k(b, j, h, c) && v(b, j, h, c) == want_v(b, j, h, c);
    CHECK(same);
  }
}

TEST_CASE("kv cacheblend selection picks the largest deviations with deterministic ties", "[kv_policies][cacheblend]") {
  // Deviation by hand: row 0 has ties at 5.0 (entries 2, 4, 7), NaN at 9; row 1 is a ramp.
  Tensor<float, 2> dev({2, 10});
  for (index_t j = 0; j < 10; ++j) dev(0, j) = 1.f, dev(1, j) = float(j);
  dev(0, 2) = dev(0, 4) = dev(0, 7) = 5.f;
  dev(0, 9) = std::numeric_limits<float>::quiet_NaN();
  const auto sel = kv::cacheblend_select(dev.cview(), {0.3});  // round(3.0) = 3
  CHECK(sel.rows[0] == std::vector<index_t>({2, 4, 9}));  // NaN first, then the two older 5.0
  CHECK(sel.rows[1] == std::vector<index_t>({7, 8, 9}));
  // Naive rule on random deviations: every selected >= every unselected; count = round(r N).
  Tensor<float, 2> rnd = st::random_tensor<2>({3, 41}, 9, 0.f, 1.f);
  const auto s2 = kv::cacheblend_select(rnd.cview(), {0.15});
  for (index_t b = 0; b < 3; ++b) {
    REQUIRE(s2.rows[b].size() == 6u);
    float lo = 2.f;
    for (index_t j : s2.rows[b]) lo = std::min(lo, rnd(b, j));
    for (index_t j = 0; j < 41; ++j)
      if (std::find(s2.rows[b].begin(), s2.rows[b].end(), j) == s2.rows[b].end()) CHECK(rnd(b, j) <= lo);
  }
  // Gradual filtering: the next layer picks among the previous selection only.
  kv::CacheBlendOptions next{0.05, &s2};
  const auto s3 = kv::cacheblend_select(rnd.cview(), next);
  for (index_t b = 0; b < 3; ++b) {
    REQUIRE(s3.rows[b].size() == 2u);
    for (index_t j : s3.rows[b]) CHECK(std::find(s2.rows[b].begin(), s2.rows[b].end(), j) != s2.rows[b].end());
  }
  // Partial blend replaces exactly the selected rows.
  RecomputeKv kvs(1, 12, 2, 5, 3, 77);
  Tensor<float, 2> d1({1, 12});
  kv::cacheblend_deviation(kvs.inputs(), d1.view());
  const auto s4 = kv::cacheblend_select(d1.cview(), {0.25});
  Tensor<float, 4> k = kvs.ck, v = kvs.cv;
  kv::cacheblend_blend(k.view(), v.view(), kvs.fk.cview(), kvs.fv.cview(), s4);
  for (index_t j = 0; j < 12; ++j) {
    const bool picked = std::find(s4.rows[0].begin(), s4.rows[0].end(), j) != s4.rows[0].end();
    CHECK(k(0, j, 1, 4) == (picked ? kvs.fk(0, j, 1, 4) : kvs.ck(0, j, 1, 4)));
    CHECK(v(0, j, 0, 2) == (picked ? kvs.fv(0, j, 0, 2) : kvs.cv(0, j, 0, 2)));
  }
}

TEST_CASE("kv cacheblend bad input is refused before any write", "[kv_policies][cacheblend]") {
  RecomputeKv kvs(1, 6, 2, 4, 4, 3);
  Tensor<float, 2> dev({1, 6});
  auto in = kvs.inputs();
  Tensor<float, 4> short_fk({1, 5, 2, 4});
  in.fresh_keys = short_fk.cview();
  st::require_shape_error("fresh_keys", [&] { kv::cacheblend_deviation(in, dev.view()); });
  st::require_shape_error("ratio", [&] { kv::cacheblend_select(dev.cview(), {1.5}); });
  st::require_shape_error("ratio", [&] { kv::cacheblend_select(dev.cview(), {std::nan("")}); });
  kv::CacheBlendSelection bad{{{3, 2}}};
  st::require_shape_error("candidates", [&] { kv::cacheblend_select(dev.cview(), {0.5, &bad}); });
  Tensor<float, 4> k = kvs.ck, v = kvs.cv;
  kv::CacheBlendSelection late{{{1, 6}}};  // 6 is out of range: nothing may be written, not even row 1
  st::require_shape_error("selection", [&] { kv::cacheblend_blend(k.view(), v.view(), kvs.fk.cview(), kvs.fv.cview(), late); });
  CHECK(k(0, 1, 0, 0) == kvs.ck(0, 1, 0, 0));
  CHECK(v(0, 1, 1, 3) == kvs.cv(0, 1, 1, 3));
}

TEST_CASE("kv spatten cascade equals the full-sort reference over layers", "[kv_policies][spatten]") {
  const index_t B = 2, H = 3, N = st::small_test_scale() ? 40 : 97;
  const std::vector<kv::Budget> budgets = {{N - 10, 2, 3}, {N / 2, 2, 3}, {N / 2, 1, 4}, {N / 4, 2, 3}};
  std::vector<Tensor<float, 3>> full;
  for (std::size_t l = 0; l < budgets.size(); ++l) {
    full.push_back(st::random_tensor<3>({B, H, N}, 500 + l, 0.f, 1.f));
    if (l == 1) full[l](1, 0, 50 % N) = std::numeric_limits<float>::quiet_NaN();  // NaN ranks last
  }
  // Quantize to multiples of 1/8 so some importances tie (ties to the older token).
  for (auto& t : full)
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < N; ++j)
          if (!std::isnan(t(b, h, j))) t(b, h, j) = std::floor(t(b, h, j) * 8.f) / 8.f;
  kv::SpAttenCascade cascade(B, N);
  for (std::size_t l = 0; l < budgets.size(); ++l) {
    // The layer only sees the survivors: gather their columns.
    Tensor<float, 3> alive({B, H, cascade.alive()});
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < cascade.alive(); ++i) alive(b, h, i) = full[l](b, h, cascade.survivors(b)[i]);
    const index_t before = cascade.alive();
    cascade.accumulate(alive.cview());
    const kv::KeptSet kept = cascade.prune(budgets[l], 2);
    CHECK(kept.entries() == before);
    CHECK(kept(0, 0) == kept(0, 1));
    CHECK(static_cast<index_t>(kept(1, 1).size()) == std::min(before, budgets[l].capacity));
  }
  std::vector<seqmix::ConstView<float, 3>> views;
  for (const auto& t : full) views.push_back(t.cview());
  const auto ref = kv::reference::spatten_cascade(views, budgets);
  for (index_t b = 0; b < B; ++b) CHECK(cascade.survivors(b) == ref[b]);
  st::require_shape_error("scores", [&] { cascade.accumulate(full[0].cview()); });
  st::require_shape_error("budget", [&] { cascade.prune({3, 2, 2}, 1); });
  st::require_shape_error("heads", [&] { cascade.prune({30, 2, 2}, 0); });
}

TEST_CASE("kv sirllm token entropy fast equals reference", "[kv_policies][sirllm]") {
  const index_t B = 2, T = 5, V = st::small_test_scale() ? 50 : 301;
  Tensor<float, 3> logits = st::random_tensor<3>({B, T, V}, 61, -4.f, 4.f);
  logits(0, 1, 3) = -std::numeric_limits<float>::infinity();  // a masked vocabulary entry
  logits(0, 1, 0) = -std::numeric_limits<float>::infinity();  // masked first entry
  Tensor<std::int32_t, 2> tokens({B, T});
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t) tokens(b, t) = static_cast<std::int32_t>((7 * t + 13 * b + 1) % V);
  Tensor<float, 2> fast({B, T}), ref({B, T});
  kv::token_entropy(logits.cview(), tokens.cview(), fast.view(), st::two_thread_pool());
  kv::reference::token_entropy(logits.cview(), tokens.cview(), ref.view());
  st::require_close("entropy", fast.view(), ref.view(), 1e-5);
  // Uniform logits: -log(1 / V).
  Tensor<float, 3> flat({1, 1, 8});
  for (index_t v = 0; v < 8; ++v) flat(0, 0, v) = 0.5f;
  Tensor<std::int32_t, 2> one({1, 1});
  Tensor<float, 2> e({1, 1});
  kv::token_entropy(flat.cview(), one.cview(), e.view());
  CHECK(e(0, 0) == Approx(std::log(8.0)).epsilon(1e-6));
  tokens(1, 4) = static_cast<std::int32_t>(V);
  st::require_shape_error("tokens", [&] { kv::token_entropy(logits.cview(), tokens.cview(), fast.view()); });
}

TEST_CASE("kv sirllm decayed scorer equals naive bookkeeping", "[kv_policies][sirllm]") {
  const index_t B = 2;
  kv::SirLlmScores scorer(B);
  // Naive model: per row a list of (position, score), full sort per eviction.
  std::vector<std::vector<std::pair<index_t, double>>> naive(B);
  index_t next_pos = 0;
  const kv::Budget budget{12, 2, 3};
  for (int round = 0; round < 6; ++round) {
    const index_t T = 4 + round % 3;
    Tensor<float, 2> ent = st::random_tensor<2>({B, T}, 900 + round, 0.f, 6.f);
    if (round == 2) ent(0, 0) = ent(0, 1);  // a tie
    scorer.append(ent.cview());
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t) naive[b].push_back({next_pos + t, ent(b, t)});
    next_pos += T;
    scorer.decay(0.8f);
    for (auto& row : naive)
      for (auto& e : row) e.second = static_cast<float>(static_cast<float>(e.second) * 0.8f);
    const index_t n = scorer.size();
    const kv::KeptSet kept = scorer.evict(budget, 3);
    for (index_t b = 0; b < B; ++b) {
      auto& row = naive[b];
      if (n > budget.capacity) {
        std::vector<std::size_t> mid;
        for (std::size_t i = 2; i < row.size() - 3; ++i) mid.push_back(i);
        std::sort(mid.begin(), mid.end(), [&](std::size_t x, std::size_t y) {
          return row[x].second > row[y].second || (row[x].second == row[y].second && x < y);
        });
        mid.resize(static_cast<std::size_t>(budget.capacity - 5));
        std::vector<std::size_t> keep = {0, 1, row.size() - 3, row.size() - 2, row.size() - 1};
        keep.insert(keep.end(), mid.begin(), mid.end());
        std::sort(keep.begin(), keep.end());
        std::vector<index_t> want;
        std::vector<std::pair<index_t, double>> next;
        for (std::size_t i : keep) want.push_back(static_cast<index_t>(i)), next.push_back(row[i]);
        CHECK(kept(b, 2) == want);
        row = next;
      } else {
        CHECK(kept(b, 0) == recompute_iota(n));
      }
      REQUIRE(scorer.size() == static_cast<index_t>(row.size()));
      for (std::size_t i = 0; i < row.size(); ++i) CHECK(scorer.score(b, static_cast<index_t>(i)) == static_cast<float>(row[i].second));
    }
  }
  st::require_shape_error("rate", [&] { scorer.decay(1.5f); });
  Tensor<float, 2> wrong({B + 1, 2});
  st::require_shape_error("entropy", [&] { scorer.append(wrong.cview()); });
}

TEST_CASE("kv headkv retrieval scores and budgets", "[kv_policies][headkv]") {
  // Probe: 3 heads, 4 queries, 10 entries; head 0 always attends the target, head 1 half the
  // time, head 2 never (attends entry 0).
  const index_t H = 3, Tq = 4, N = 10;
  Tensor<float, 3> probs({H, Tq, N});
  for (index_t h = 0; h < H; ++h)
    for (index_t t = 0; t < Tq; ++t)
      for (index_t j = 0; j < N; ++j) probs(h, t, j) = 0.02f;
  kv::RetrievalProbe probe{probs.cview(), {5, 6, 7, 8}, 5, 9};
  for (index_t t = 0; t < Tq; ++t) {
    probs(0, t, 5 + t) = 0.8f;
    probs(1, t, t % 2 ? 5 + t : 1) = 0.8f;
    probs(2, t, 0) = 0.8f;
  }
  const auto copy = kv::retrieval_scores(probe, kv::RetrievalScoreRule::Copy);
  CHECK(copy == std::vector<float>({1.f, 0.5f, 0.f}));
  const auto mass = kv::retrieval_scores(probe, kv::RetrievalScoreRule::NeedleMass);
  CHECK(mass[0] == Approx(0.8 + 3 * 0.02));
  CHECK(mass[1] == Approx(0.5 * (0.8 + 3 * 0.02) + 0.5 * (4 * 0.02)));
  CHECK(mass[2] == Approx(4 * 0.02));

  // Budgets: base = floor(0.5 * 100 / 3) = 16 each, pool 52 split 2:1:0 -> 34.67, 17.33, 0.
  const auto budgets = kv::headkv_budgets(copy, {100, 0.5, 0});
  CHECK(budgets == std::vector<index_t>({16 + 35, 16 + 17, 16}));
  CHECK(std::accumulate(budgets.begin(), budgets.end(), index_t{0}) == 100);
  CHECK(kv::headkv_budgets({0.f, 0.f, 0.f, 0.f}, {10, 1.0, 0}) == std::vector<index_t>({3, 3, 2, 2}));
  CHECK(kv::headkv_budgets({5.f, 1.f}, {40, 0.0, 0}) == std::vector<index_t>({20, 20}));
  CHECK(kv::headkv_budgets({1.f, 0.f, 0.f}, {30, 1.0, 6}) == std::vector<index_t>({18, 6, 6}));
  CHECK(kv::top_heads(copy, 2) == std::vector<bool>({true, true, false}));
  // Classes feed retrieval_heads.
  const auto classes = kv::retrieval_heads(1, 20, kv::top_heads(copy, 1), {0, 2, 3});
  CHECK(classes(0, 0).size() == 20u);
  CHECK(classes(0, 1) == std::vector<index_t>({0, 1, 17, 18, 19}));

  // Per-head selection equals select_by_score run with each head's capacity.
  const index_t B = 2, Ns = 60;
  Tensor<float, 3> scores = st::random_tensor<3>({B, H, Ns}, 31, 0.f, 1.f);
  const std::vector<index_t> caps = {40, 12, 7};
  const auto kept = kv::select_with_head_budgets(scores.cview(), caps, 2, 3, kv::Keep::Highest, st::two_thread_pool());
  for (index_t h = 0; h < H; ++h) {
    Tensor<float, 3> one({B, 1, Ns});
    for (index_t b = 0; b < B; ++b)
      for (index_t j = 0; j < Ns; ++j) one(b, 0, j) = scores(b, h, j);
    const auto want = kv::select_by_score(one.cview(), {caps[h], 2, 3}, kv::Keep::Highest);
    for (index_t b = 0; b < B; ++b) CHECK(kept(b, h) == want(b, 0));
  }

  st::require_shape_error("budgets", [&] { kv::select_with_head_budgets(scores.cview(), {40, 12}, 2, 3); });
  st::require_shape_error("budget", [&] { kv::select_with_head_budgets(scores.cview(), {40, 12, 4}, 2, 3); });
  st::require_shape_error("scores", [&] { kv::headkv_budgets({1.f, -1.f}, {10, 0.5, 0}); });
  st::require_shape_error("total", [&] { kv::headkv_budgets({1.f, 1.f}, {10, 0.5, 6}); });
  st::require_shape_error("pool_fraction", [&] { kv::headkv_budgets({1.f}, {10, 2.0, 0}); });
  st::require_shape_error("count", [&] { kv::top_heads(copy, 4); });
  kv::RetrievalProbe bad = probe;
  bad.targets = {5, 6, 70, 8};
  st::require_shape_error("targets", [&] { kv::retrieval_scores(bad, kv::RetrievalScoreRule::Copy); });
  bad.needle_begin = 9, bad.needle_end = 9;
  st::require_shape_error("needle_begin", [&] { kv::retrieval_scores(bad, kv::RetrievalScoreRule::NeedleMass); });
}
