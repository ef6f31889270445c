// KV-cache eviction policies: fast observation scores against the reference (ragged shapes, GQA,
// causal / all, sum / mean, strided keys), each policy's kept set on hand-built score patterns,
// budgets, sorting, protected entries and budget errors, SnapKV pooling, PyramidKV and AdaKV
// allocation, DuoAttention / RazorAttention, FastGen's choice, ThinK channel selection and its
// q.k approximation, and merging's weighted mean.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/kv_cache/policies/all.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;
namespace kv = seqmix::kv;

bool strictly_increasing(const std::vector<index_t>& v) {
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v[i] <= v[i - 1]) return false;
  return true;
}

bool contains(const std::vector<index_t>& v, index_t j) { return std::find(v.begin(), v.end(), j) != v.end(); }

std::vector<index_t> iota_vec(index_t n) {
  std::vector<index_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), index_t{0});
  return v;
}

// [1, 1, N] scores: small noise-free ramp (older entries slightly higher) plus planted peaks.
Tensor<float, 3> planted_scores(index_t N, const std::vector<std::pair<index_t, float>>& peaks) {
  Tensor<float, 3> s({1, 1, N});
  for (index_t j = 0; j < N; ++j) s(0, 0, j) = 0.01f + 0.0001f * static_cast<float>(N - j);
  for (auto [j, v] : peaks) s(0, 0, j) = v;
  return s;
}

// Queries and keys where every window query attends strongly to one planted key: the keys are
// random, key `needle` is `strength` * the mean query direction.
struct NeedleProblem {
  Tensor<float, 4> q, k;
  NeedleProblem(index_t B, index_t W, index_t Hq, index_t Hkv, index_t N, index_t D, index_t needle, float strength)
      : q(st::random_tensor<4>({B, W, Hq, D}, 11, -0.2f, 0.2f)), k(st::random_tensor<4>({B, N, Hkv, D}, 12, -0.2f, 0.2f)) {
    for (index_t b = 0; b < B; ++b)
      for (index_t w = 0; w < W; ++w)
        for (index_t h = 0; h < Hq; ++h) q(b, w, h, 0) = 1.f;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hkv; ++h) k(b, needle, h, 0) = strength;
  }
};

}  // namespace

TEST_CASE("kv observation scores fast form matches the reference", "[kv_policies]") {
  struct Case {
    index_t B, W, Hq, Hkv, N, D;
    kv::Visibility vis;
    kv::GroupReduction group;
    bool strided_keys;
  };
  std::vector<Case> cases = {
      {1, 1, 1, 1, 1, 1, kv::Visibility::All, kv::GroupReduction::Sum, false},
      {1, 4, 4, 2, 37, 8, kv::Visibility::Causal, kv::GroupReduction::Sum, false},
      {2, 7, 6, 3, 600, 19, kv::Visibility::Causal, kv::GroupReduction::Mean, false},
      {1, 5, 8, 2, 513, 32, kv::Visibility::All, kv::GroupReduction::Sum, true},
      {2, 3, 4, 4, 1025, 16, kv::Visibility::Causal, kv::GroupReduction::Sum, true},
      {1, 9, 2, 1, 5, 4, kv::Visibility::Causal, kv::GroupReduction::Sum, false},  // W > N: early queries see nothing
  };
  if (!st::small_test_scale()) cases.push_back({1, 16, 8, 2, 3000, 64, kv::Visibility::Causal, kv::GroupReduction::Sum, false});
  std::uint64_t seed = 100;
  for (const auto& c : cases) {
    ++seed;
    std::ostringstream name;
    name << "B=" << c.B << " W=" << c.W << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " N=" << c.N << " D=" << c.D
         << " causal=" << (c.vis == kv::Visibility::Causal) << " mean=" << (c.group == kv::GroupReduction::Mean)
         << " strided=" << c.strided_keys << " seed=" << seed;
    INFO(name.str());
    auto q = st::random_tensor<4>({c.B, c.W, c.Hq, c.D}, seed, -1.f, 1.f);
    // Strided keys: a view of every other head of a tensor twice as wide, and channel stride 2.
    auto k_storage = st::random_tensor<4>({c.B, c.N, c.Hkv, 2 * c.D}, seed + 7, -1.f, 1.f);
    seqmix::ConstView<float, 4> keys =
        c.strided_keys ? seqmix::ConstView<float, 4>(k_storage.data(), {c.B, c.N, c.Hkv, c.D},
                                                     {c.N * c.Hkv * 2 * c.D, c.Hkv * 2 * c.D, 2 * c.D, 2})
                       : k_storage.cview().slice(3, 0, c.D);
    kv::ObservationInputs in{q.cview(), keys, {}};
    kv::ObservationOptions options;
    options.visibility = c.vis, options.group = c.group;
    Tensor<float, 3> fast({c.B, c.Hkv, c.N}), ref({c.B, c.Hkv, c.N});
    kv::ObservationWorkspace ws;
    kv::observation_scores(in, fast.view(), options, ws, st::two_thread_pool());
    kv::reference::observation_scores(in, ref.view(), options);
    st::require_close("observation_scores", fast.cview(), ref.cview(), 2e-5);
    Tensor<float, 4> pfast({c.B, c.Hkv, c.W, c.N}), pref({c.B, c.Hkv, c.W, c.N});
    kv::observation_attention(in, pfast.view(), options, ws);
    kv::reference::observation_attention(in, pref.view(), options);
    st::require_close("observation_attention", pfast.cview(), pref.cview(), 2e-5);
  }
}

TEST_CASE("kv observation scores sum over the GQA group and window", "[kv_policies]") {
  // Each query row's probabilities sum to 1 over its visible entries: the total of a KV head's
  // scores is G * (number of queries that see something) with Sum, that / G with Mean.
  auto q = st::random_tensor<4>({1, 6, 8, 64}, 3);
  auto k = st::random_tensor<4>({1, 40, 2, 64}, 4);
  kv::ObservationInputs in{q.cview(), k.cview(), {}};
  Tensor<float, 3> sum({1, 2, 40}), mean({1, 2, 40});
  kv::ObservationOptions options;
  kv::observation_scores(in, sum.view(), options);
  options.group = kv::GroupReduction::Mean;
  kv::observation_scores(in, mean.view(), options);
  for (index_t h = 0; h < 2; ++h) {
    double ts = 0, tm = 0;
    for (index_t j = 0; j < 40; ++j) ts += sum(0, h, j), tm += mean(0, h, j);
    CHECK(ts == Approx(4 * 6).epsilon(1e-5));
    CHECK(tm == Approx(6).epsilon(1e-5));
  }
  // Causal: the window's last entry is seen only by the last window query.
  options.group = kv::GroupReduction::Sum;
  Tensor<float, 4> probs({1, 2, 6, 40});
  kv::observation_attention(in, probs.view(), options);
  for (index_t w = 0; w + 1 < 6; ++w) CHECK(probs(0, 0, w, 39) == 0.f);
  CHECK(probs(0, 0, 5, 39) > 0.f);
  // Explicit positions: query 0 at position 3 sees entries 0..3 only.
  Tensor<std::int32_t, 2> pos({1, 6});
  for (index_t w = 0; w < 6; ++w) pos(0, w) = static_cast<std::int32_t>(3 + w);
  kv::ObservationInputs in_pos{q.cview(), k.cview(), pos.cview()};
  kv::observation_attention(in_pos, probs.view(), options);
  double seen = 0;
  for (index_t j = 0; j < 4; ++j) seen += probs(0, 0, 0, j);
  CHECK(seen == Approx(4.0).epsilon(1e-5));
  CHECK(probs(0, 0, 0, 4) == 0.f);
}

TEST_CASE("kv streaming_llm keeps sinks and the most recent entries", "[kv_policies]") {
  const auto kept = kv::streaming_llm(2, 3, 100, {10, 4, 0});
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 3; ++h) CHECK(kept(b, h) == std::vector<index_t>({0, 1, 2, 3, 94, 95, 96, 97, 98, 99}));
  CHECK(kv::streaming_llm(1, 1, 7, {10, 4, 0})(0, 0) == iota_vec(7));
  // A planted heavy hitter in the middle is dropped.
  CHECK_FALSE(contains(kv::streaming_llm(1, 1, 100, {10, 4, 0})(0, 0), 50));
  st::require_shape_error("budget", [] { kv::streaming_llm(1, 1, 10, {5, 4, 2}); });
}

TEST_CASE("kv score policies keep exactly the planted entries", "[kv_policies]") {
  const index_t N = 200;
  const auto s = planted_scores(N, {{50, 5.f}, {120, 3.f}, {7, 4.f}});
  const kv::Budget budget{12, 2, 5};  // 2 sinks + 5 recent + 5 by score
  // By score after the peaks the ramp favours the oldest non-sink entries: 2, 3 (7 is a peak).
  std::vector<index_t> top5 = {0, 1, 7, 50, 120, 2, 3, 195, 196, 197, 198, 199};
  std::sort(top5.begin(), top5.end());
  for (auto policy : {0, 1}) {
    const auto kept = policy == 0 ? kv::h2o(s.cview(), budget) : kv::tova(s.cview(), budget);
    INFO("policy " << (policy == 0 ? "h2o" : "tova"));
    CHECK(kept(0, 0) == top5);
    CHECK(static_cast<index_t>(kept(0, 0).size()) == budget.capacity);
  }
  // Budget >= N keeps everything; capacity == sinks + recent keeps only the protected ones.
  CHECK(kv::h2o(s.cview(), {N, 2, 5})(0, 0) == iota_vec(N));
  CHECK(kv::h2o(s.cview(), {N + 50, 0, 0})(0, 0) == iota_vec(N));
  CHECK(kv::h2o(s.cview(), {7, 2, 5})(0, 0) == std::vector<index_t>({0, 1, 195, 196, 197, 198, 199}));
  // Error names the budget fields and values.
  try {
    kv::h2o(s.cview(), {6, 2, 5});
    FAIL("no error");
  } catch (const seqmix::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(e.argument() == "budget");
    CHECK(msg.find("capacity = 6") != std::string::npos);
    CHECK(msg.find("sink_tokens + recent = 2 + 5 = 7") != std::string::npos);
  }
}

TEST_CASE("kv tova streaming drop-one equals top budget", "[kv_policies]") {
  // Streaming: keep a cache of `capacity`, append one entry at a time and drop the entry with the
  // lowest score of the current query. With a fixed score per entry the survivors are the top
  // `capacity` overall, i.e. tova() on all entries.
  const index_t N = 60, cap = 9;
  auto s = st::random_tensor<3>({1, 1, N}, 5, 0.f, 1.f);
  std::vector<index_t> cache;
  for (index_t j = 0; j < N; ++j) {
    cache.push_back(j);
    if (static_cast<index_t>(cache.size()) > cap) {
      Tensor<float, 3> cur({1, 1, static_cast<index_t>(cache.size())});
      for (std::size_t i = 0; i < cache.size(); ++i) cur(0, 0, static_cast<index_t>(i)) = s(0, 0, cache[i]);
      const auto kept = kv::tova(cur.cview(), {cap, 0, 0});
      REQUIRE(static_cast<index_t>(kept(0, 0).size()) == cap);
      std::vector<index_t> next;
      for (index_t i : kept(0, 0)) next.push_back(cache[static_cast<std::size_t>(i)]);
      cache = next;
    }
  }
  CHECK(cache == kv::tova(s.cview(), {cap, 0, 0})(0, 0));
}

TEST_CASE("kv snapkv keeps the planted key and the window and pools neighbours", "[kv_policies]") {
  const index_t B = 2, W = 8, Hq = 8, Hkv = 2, N = 300, D = 32, needle = 137;
  NeedleProblem p(B, W, Hq, Hkv, N, D, needle, 12.f);
  kv::ObservationInputs in{p.q.cview(), p.k.cview(), {}};
  kv::SnapKvOptions options;
  options.kernel = 1;
  const kv::Budget budget{W + 4 + 10, 4, 0};
  const auto kept = kv::snapkv(in, budget, options, st::two_thread_pool());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hkv; ++h) {
      const auto& row = kept(b, h);
      CHECK(static_cast<index_t>(row.size()) == budget.capacity);
      CHECK(strictly_increasing(row));
      CHECK(contains(row, needle));
      for (index_t j = 0; j < 4; ++j) CHECK(contains(row, j));
      for (index_t j = N - W; j < N; ++j) CHECK(contains(row, j));
    }
  CHECK_FALSE(contains(kv::streaming_llm(1, 1, N, budget)(0, 0), needle));
  // Pooling on a hand-built score row: the neighbour of the peak is kept with kernel 3, not 1.
  auto s = planted_scores(100, {{40, 9.f}});
  for (index_t j = 0; j < 100; ++j) s(0, 0, j) = (j % 2) ? 0.2f : 0.1f;  // alternating, no ramp
  s(0, 0, 40) = 9.f;
  s(0, 0, 41) = 0.01f;
  options.kernel = 1;
  const kv::Budget small{3 + 10, 0, 0};  // the window of 10 and 3 by score
  auto k1 = kv::snapkv_from_scores(s.cview(), 10, small, options)(0, 0);
  options.kernel = 3;
  auto k3 = kv::snapkv_from_scores(s.cview(), 10, small, options)(0, 0);
  CHECK(contains(k1, 40));
  CHECK(contains(k3, 40));
  CHECK_FALSE(contains(k1, 41));
  CHECK(contains(k3, 41));
  CHECK(contains(k3, 39));
  for (index_t j = 90; j < 100; ++j) CHECK((contains(k1, j) && contains(k3, j)));
  // Mean pooling spreads the peak too.
  options.pooling = kv::Pooling::Mean;
  CHECK(contains(kv::snapkv_from_scores(s.cview(), 10, small, options)(0, 0), 41));
  // Budget errors name the window; kernel 0 is rejected.
  try {
    kv::snapkv(in, {W + 3, 4, 0});
    FAIL("no error");
  } catch (const seqmix::ShapeError& e) {
    CHECK(e.argument() == "budget");
    CHECK(std::string(e.what()).find("sink_tokens + window = 4 + 8 = 12") != std::string::npos);
  }
  options.kernel = 0;
  st::require_shape_error("kernel", [&] { kv::snapkv_from_scores(s.cview(), 10, small, options); });
}

namespace {
// The two mean conventions written out on their own, as the formulas read: avg_pool1d with zero
// padding kernel/2 (PyTorch's count_include_pad, first n outputs) and the in-range average.
std::vector<double> avg_pool1d_zero_padded(const std::vector<float>& x, index_t kernel) {
  const index_t n = static_cast<index_t>(x.size()), pad = kernel / 2;
  std::vector<float> padded(static_cast<std::size_t>(n + 2 * pad), 0.f);
  for (index_t i = 0; i < n; ++i) padded[static_cast<std::size_t>(i + pad)] = x[static_cast<std::size_t>(i)];
  std::vector<double> out;
  for (index_t j = 0; j + kernel <= static_cast<index_t>(padded.size()) && j < n; ++j) {
    double sum = 0;
    for (index_t t = 0; t < kernel; ++t) sum += padded[static_cast<std::size_t>(j + t)];
    out.push_back(sum / static_cast<double>(kernel));
  }
  return out;
}
std::vector<double> in_range_mean(const std::vector<float>& x, index_t kernel) {
  const index_t n = static_cast<index_t>(x.size());
  std::vector<double> out;
  for (index_t j = 0; j < n; ++j) {
    double sum = 0;
    index_t count = 0;
    for (index_t i = j - kernel / 2; i < j - kernel / 2 + kernel; ++i)
      if (i >= 0 && i < n) sum += x[static_cast<std::size_t>(i)], ++count;
    out.push_back(sum / static_cast<double>(count));
  }
  return out;
}
}  // namespace

TEST_CASE("kv snapkv mean pooling follows avg_pool1d's zero padding, in-range mean on request", "[kv_policies]") {
  for (const index_t n : {1, 2, 3, 7, 40})
    for (const index_t kernel : {1, 2, 3, 4, 5, 6, 7, 9}) {
      CAPTURE(n, kernel);
      std::vector<float> x(static_cast<std::size_t>(n));
      for (index_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = 0.25f + 0.5f * static_cast<float>((i * 7) % 11);
      const auto zero_padded = avg_pool1d_zero_padded(x, kernel), in_range = in_range_mean(x, kernel);
      REQUIRE(static_cast<index_t>(zero_padded.size()) == n);
      std::vector<float> mean(static_cast<std::size_t>(n)), mean_in_range(mean), max(mean);
      kv::pool_scores(x.data(), mean.data(), n, kernel, kv::Pooling::Mean);
      kv::pool_scores(x.data(), mean_in_range.data(), n, kernel, kv::Pooling::MeanInRange);
      kv::pool_scores(x.data(), max.data(), n, kernel, kv::Pooling::Max);
      for (index_t j = 0; j < n; ++j) {
        const std::size_t u = static_cast<std::size_t>(j);
        CHECK(mean[u] == Approx(zero_padded[u]).epsilon(1e-6));
        CHECK(mean_in_range[u] == Approx(in_range[u]).epsilon(1e-6));
        float m = -1.f;
        for (index_t i = std::max<index_t>(0, j - kernel / 2); i < std::min(n, j - kernel / 2 + kernel); ++i)
          m = std::max(m, x[static_cast<std::size_t>(i)]);
        CHECK(max[u] == m);
      }
      // Where the window is clipped the two means differ: at the start for every kernel > 1, at
      // the end from kernel 3 (an even kernel's window reaches kernel/2 - 1 entries to the right).
      if (kernel > 1 && n >= kernel) CHECK(mean.front() < mean_in_range.front());
      if (kernel > 2 && n >= kernel) CHECK(mean.back() < mean_in_range.back());
      if (kernel == 2 && n >= kernel) CHECK(mean.back() == mean_in_range.back());
    }
  // The kept set at each end of the prompt: a flat row with a strong entry at one end and a
  // stronger one in the middle. In-range mean ranks the end first (its window averages fewer
  // values); zero padding counts the missing neighbours as 0 and keeps the middle.
  const index_t N = 60, W = 10, prefix = N - W;
  for (const index_t end : {index_t{0}, prefix - 1})
    for (const index_t kernel : {4, 5}) {
      CAPTURE(end, kernel);
      Tensor<float, 3> s({1, 1, N});
      for (index_t j = 0; j < N; ++j) s(0, 0, j) = 1.f;
      s(0, 0, end) = 3.f;
      s(0, 0, 25) = 3.5f;
      kv::SnapKvOptions options;
      options.kernel = kernel;
      CHECK(options.pooling == kv::Pooling::Max);  // SnapKV's default stays max pooling
      options.pooling = kv::Pooling::Mean;
      const kv::Budget budget{W + 1, 0, 0};
      const auto zero_padded = kv::snapkv_from_scores(s.cview(), W, budget, options)(0, 0);
      options.pooling = kv::Pooling::MeanInRange;
      const auto in_range = kv::snapkv_from_scores(s.cview(), W, budget, options)(0, 0);
      CHECK(zero_padded.front() == 25);
      CHECK(in_range.front() == end);
    }
}

TEST_CASE("kv snapkv keeps every peak before the neighbours max pooling ties with it", "[kv_policies]") {
  // N = 200, window 16, 4 sinks, capacity 40: 20 free slots for 8 equal spikes whose kernel-7
  // neighbourhoods (56 entries) all pool to the spike's score. Ties go to the higher raw score,
  // so all 8 spikes are kept, then the oldest neighbours.
  const index_t N = 200, W = 16;
  Tensor<float, 3> s({1, 1, N});
  for (index_t j = 0; j < N; ++j) s(0, 0, j) = 0.1f;
  std::vector<index_t> spikes;
  for (index_t i = 1; i <= 8; ++i) spikes.push_back(20 * i), s(0, 0, 20 * i) = 5.f;
  kv::SnapKvOptions options;
  options.kernel = 7;
  const kv::Budget budget{40, 4, 0};
  const auto kept = kv::snapkv_from_scores(s.cview(), W, budget, options, st::two_thread_pool())(0, 0);
  REQUIRE(static_cast<index_t>(kept.size()) == 40);
  CHECK(strictly_increasing(kept));
  for (index_t j : spikes) CHECK(contains(kept, j));
  for (index_t j = 0; j < 4; ++j) CHECK(contains(kept, j));
  for (index_t j = N - W; j < N; ++j) CHECK(contains(kept, j));
  // The 12 slots left after the spikes go to the oldest neighbours: 17..23 (6) and 37..43 (6).
  std::vector<index_t> expected = {0, 1, 2, 3};
  for (index_t j = 17; j <= 23; ++j) expected.push_back(j);
  for (index_t j = 37; j <= 43; ++j) expected.push_back(j);
  for (index_t i = 3; i <= 8; ++i) expected.push_back(20 * i);
  for (index_t j = N - W; j < N; ++j) expected.push_back(j);
  std::sort(expected.begin(), expected.end());
  CHECK(kept == expected);
  // The pooled score still ranks first: a weaker spike's raw peak loses to a stronger spike's
  // neighbour (pooled 5 > 3), so only the raw score breaks ties, it is not blended in.
  s(0, 0, 160) = 3.f;
  const kv::Budget tight{4 + W + 8, 4, 0};
  const auto k2 = kv::snapkv_from_scores(s.cview(), W, tight, options)(0, 0);
  for (index_t i = 1; i <= 7; ++i) CHECK(contains(k2, 20 * i));
  CHECK(contains(k2, 17));  // pooled 5, raw 0.1: ahead of the spike of 3
  CHECK_FALSE(contains(k2, 160));
}

TEST_CASE("kv snapkv scores aggregate the GQA group", "[kv_policies]") {
  // Only query head 1 of the group of KV head 0 looks at entry 20; the group sum must keep it.
  const index_t W = 4, Hq = 4, Hkv = 1, N = 64, D = 16;
  auto q = st::random_tensor<4>({1, W, Hq, D}, 21, -0.1f, 0.1f);
  auto k = st::random_tensor<4>({1, N, Hkv, D}, 22, -0.1f, 0.1f);
  for (index_t w = 0; w < W; ++w) q(0, w, 1, 3) = 4.f;
  k(0, 20, 0, 3) = 4.f;
  kv::ObservationInputs in{q.cview(), k.cview(), {}};
  kv::SnapKvOptions options;
  options.kernel = 1;
  CHECK(contains(kv::snapkv(in, {W + 1, 0, 0}, options)(0, 0), 20));
}

TEST_CASE("kv key_norm and qfilters select by key geometry", "[kv_policies]") {
  const index_t N = 50, H = 2, D = 8;
  auto k = st::random_tensor<4>({1, N, H, D}, 31, 1.f, 2.f);  // norms around 4
  for (index_t c = 0; c < D; ++c) k(0, 17, 0, c) = 0.01f, k(0, 33, 1, c) = 0.02f;
  const auto kn = kv::key_norm(k.cview(), {3, 1, 1});
  CHECK(kn(0, 0) == std::vector<index_t>({0, 17, 49}));
  CHECK(kn(0, 1) == std::vector<index_t>({0, 33, 49}));
  Tensor<float, 2> dir({H, D});
  dir(0, 2) = 1.f, dir(1, 5) = -1.f;
  k(0, 9, 0, 2) = 10.f;
  k(0, 40, 1, 5) = -10.f;
  const auto qf = kv::qfilters(k.cview(), dir.cview(), {2, 0, 0});
  CHECK(contains(qf(0, 0), 9));
  CHECK(contains(qf(0, 1), 40));
  CHECK(qf(0, 0).size() == 2);
  st::require_shape_error("directions", [&] { kv::qfilters(k.cview(), Tensor<float, 2>({H, D + 1}).cview(), {2, 0, 0}); });
}

TEST_CASE("kv pyramid budgets decrease linearly and sum to the total", "[kv_policies]") {
  for (index_t layers : {1, 2, 7, 32})
    for (index_t total : {layers * 64, layers * 128 + 13, index_t{100000}}) {
      kv::PyramidOptions o;
      o.total = total, o.beta = 20, o.min_per_layer = std::min<index_t>(40, total / layers);
      const auto b = kv::pyramid_budgets(layers, o);
      INFO("layers=" << layers << " total=" << total);
      CHECK(std::accumulate(b.begin(), b.end(), index_t{0}) == total);
      for (std::size_t l = 1; l < b.size(); ++l) CHECK(b[l] <= b[l - 1]);
      for (index_t x : b) CHECK(x >= o.min_per_layer);
      if (layers > 2 && total == 100000) {
        CHECK(b.front() > b.back());
        // Linear: consecutive differences equal within rounding.
        const double step = double(b.front() - b.back()) / double(layers - 1);
        for (std::size_t l = 1; l < b.size(); ++l) CHECK(std::abs(double(b[l - 1] - b[l]) - step) <= 1.5);
        CHECK(kv::pyramid_layer_budget(3, layers, o) == b[3]);
      }
    }
  kv::PyramidOptions bad;
  bad.total = 10, bad.min_per_layer = 4;
  st::require_shape_error("total", [&] { kv::pyramid_budgets(3, bad); });
}

TEST_CASE("kv adakv allocates the layer total by score mass with floors", "[kv_policies]") {
  const index_t H = 4, N = 100;
  Tensor<float, 3> s({2, H, N});
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t j = 0; j < N; ++j) s(b, h, j) = 0.001f * static_cast<float>((j * 37 + h * 11) % 97) / 97.f;
  // Head 2 of batch 0 has all the mass concentrated on 30 entries.
  for (index_t j = 10; j < 40; ++j) s(0, 2, j) = 1.f;
  kv::AdaKvOptions o;
  // Floors take 4 * 6 = 24; the other 27 go to head 2's remaining heavy entries.
  o.total = 51, o.floor_per_head = 6, o.sink_tokens = 1, o.recent = 2;
  const auto r = kv::adakv(s.cview(), o);
  for (index_t b = 0; b < 2; ++b) {
    index_t sum = 0;
    for (index_t h = 0; h < H; ++h) {
      const auto& row = r.kept(b, h);
      CHECK(strictly_increasing(row));
      CHECK(r.budgets[static_cast<std::size_t>(b * H + h)] == static_cast<index_t>(row.size()));
      CHECK(static_cast<index_t>(row.size()) >= o.floor_per_head);
      CHECK((contains(row, 0) && contains(row, N - 1) && contains(row, N - 2)));
      sum += static_cast<index_t>(row.size());
    }
    CHECK(sum == o.total);
  }
  // Head 2 takes its 30 heavy entries (plus protected 3); the others stay at the floor.
  CHECK(r.budgets[2] == 33);
  for (index_t j = 10; j < 40; ++j) CHECK(contains(r.kept(0, 2), j));
  CHECK(r.budgets[0] == 6);
  // Total above H * N keeps everything.
  o.total = 1000;
  const auto all = kv::adakv(s.cview(), o);
  for (index_t h = 0; h < H; ++h) CHECK(all.kept(1, h) == iota_vec(N));
  o.total = 20;
  st::require_shape_error("total", [&] { kv::adakv(s.cview(), o); });
}

TEST_CASE("kv retrieval heads and razor compensation", "[kv_policies]") {
  const index_t B = 1, N = 20, H = 3, D = 4;
  const auto kept = kv::retrieval_heads(B, N, {true, false, false}, {0, 2, 3});
  CHECK(kept(0, 0) == iota_vec(N));
  CHECK(kept(0, 1) == std::vector<index_t>({0, 1, 17, 18, 19}));
  auto k = st::random_tensor<4>({B, N, H, D}, 41);
  auto v = st::random_tensor<4>({B, N, H, D + 1}, 42);
  Tensor<float, 3> ck({B, H, D}), cv({B, H, D + 1});
  const auto counts = kv::razor_compensation(k.cview(), v.cview(), kept, ck.view(), cv.view());
  CHECK(counts == std::vector<index_t>({0, 15, 15}));
  for (index_t c = 0; c < D; ++c) CHECK(ck(0, 0, c) == 0.f);
  for (index_t h = 1; h < H; ++h) {
    for (index_t c = 0; c < D + 1; ++c) {
      double mk = 0, mv = 0;
      for (index_t j = 2; j < 17; ++j) {
        if (c < D) mk += k(0, j, h, c);
        mv += v(0, j, h, c);
      }
      if (c < D) CHECK(ck(0, h, c) == Approx(mk / 15).margin(1e-6));
      CHECK(cv(0, h, c) == Approx(mv / 15).margin(1e-6));
    }
  }
}

TEST_CASE("kv fastgen picks the cheapest policy recovering the mass", "[kv_policies]") {
  const index_t N = 200;
  Tensor<float, 3> s({1, 4, N});
  for (index_t j = 0; j < N; ++j) {
    s(0, 0, j) = j >= N - 16 ? 1.f : 0.0001f;                 // local head
    s(0, 1, j) = 1.f;                                          // uniform head
    s(0, 2, j) = (j == 0 || j == 77) ? 50.f : 0.001f;          // special-token head
    s(0, 3, j) = (j == 0 || j == 77) ? 30.f : (j >= N - 16 ? 2.f : 0.0001f);  // both
  }
  kv::FastGenOptions o;
  o.special = {0, 77, 500};
  o.recent = 16;
  o.threshold = 0.95;
  const auto r = kv::fastgen(s.cview(), o);
  CHECK(r.choice[0] == kv::HeadPolicy::Local);
  CHECK(r.choice[1] == kv::HeadPolicy::Full);
  CHECK(r.choice[2] == kv::HeadPolicy::Special);
  CHECK(r.choice[3] == kv::HeadPolicy::SpecialLocal);
  const auto all = iota_vec(N);
  CHECK(r.kept(0, 0) == std::vector<index_t>(all.end() - 16, all.end()));
  CHECK(r.kept(0, 1) == iota_vec(N));
  CHECK(r.kept(0, 2) == std::vector<index_t>({0, 77}));
  CHECK(r.kept(0, 3).size() == 18);
  CHECK(std::string(kv::to_string(r.choice[3])) == "special+local");
}

TEST_CASE("kv think keeps high contribution channels and approximates q.k", "[kv_policies]") {
  const index_t B = 2, W = 6, Hq = 4, Hkv = 2, N = 90, D = 32;
  auto q = st::random_tensor<4>({B, W, Hq, D}, 51, -0.05f, 0.05f);
  auto k = st::random_tensor<4>({B, N, Hkv, D}, 52, -0.05f, 0.05f);
  // Large channels: head 0 uses 3, 10, 20, 31; head 1 uses 0, 5, 6, 7 (both q and k).
  const std::vector<index_t> big0 = {3, 10, 20, 31}, big1 = {0, 5, 6, 7};
  auto qt = st::random_tensor<4>({B, W, Hq, D}, 53, 0.5f, 1.5f);
  for (index_t b = 0; b < B; ++b) {
    for (index_t w = 0; w < W; ++w)
      for (index_t g = 0; g < Hq; ++g)
        for (index_t c : (g / 2 == 0 ? big0 : big1)) q(b, w, g, c) = qt(b, w, g, c);
    for (index_t j = 0; j < N; ++j)
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t c : (h == 0 ? big0 : big1)) k(b, j, h, c) = qt(b, j % W, h, c) * ((j % 3) ? 1.f : -1.f);
  }
  kv::ThinkOptions o;
  o.keep_channels = 4;
  const auto ch = kv::think_channels(q.cview(), k.cview(), o);
  for (index_t b = 0; b < B; ++b) {
    CHECK(ch(b, 0) == big0);
    CHECK(ch(b, 1) == big1);
  }
  CHECK(kv::think_kept_channels(128, {0, 0.6}) == 77);
  Tensor<float, 4> qk({B, W, Hq, 4}), kk({B, N, Hkv, 4});
  kv::think_gather_queries(q.cview(), ch, qk.view());
  kv::think_gather_keys(k.cview(), ch, kk.view());
  double max_err = 0, max_ref = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t w = 0; w < W; ++w)
      for (index_t g = 0; g < Hq; ++g)
        for (index_t j = 0; j < N; ++j) {
          double full = 0, pruned = 0;
          for (index_t c = 0; c < D; ++c) full += q(b, w, g, c) * k(b, j, g / 2, c);
          for (index_t c = 0; c < 4; ++c) pruned += qk(b, w, g, c) * kk(b, j, g / 2, c);
          max_err = std::max(max_err, std::abs(full - pruned));
          max_ref = std::max(max_ref, std::abs(full));
        }
  INFO("max |q.k - q_kept.k_kept| = " << max_err << ", max |q.k| = " << max_ref);
  CHECK(max_err < 0.02 * max_ref);
}

TEST_CASE("kv merging keeps the mass weighted mean", "[kv_policies]") {
  const index_t N = 40, Dk = 6, Dv = 5;
  auto keys = st::random_tensor<2>({N, Dk}, 61);
  auto values = st::random_tensor<2>({N, Dv}, 62);
  auto mass = st::random_tensor<1>({N}, 63, 0.f, 1.f);
  const std::vector<index_t> kept = {0, 5, 11, 30, 39};
  const index_t n = 5;
  Tensor<float, 2> ok({n, Dk}), ov({n, Dv});
  Tensor<float, 1> om({n});
  const auto target = kv::merge_evicted({keys.cview(), values.cview(), mass.cview()}, kept, {ok.view(), ov.view(), om.view()});
  REQUIRE(target.size() == static_cast<std::size_t>(N - n));
  // Total mass and mass-weighted sums of keys and values are preserved.
  double total = 0, merged_total = 0;
  for (index_t j = 0; j < N; ++j) total += mass(j);
  for (index_t i = 0; i < n; ++i) merged_total += om(i);
  CHECK(merged_total == Approx(total).epsilon(1e-5));
  for (index_t c = 0; c < Dv; ++c) {
    double before = 0, after = 0;
    for (index_t j = 0; j < N; ++j) before += mass(j) * values(j, c);
    for (index_t i = 0; i < n; ++i) after += om(i) * ov(i, c);
    CHECK(after == Approx(before).margin(1e-5));
  }
  // Each evicted key went to its most similar kept key (cosine).
  std::vector<index_t> evicted;
  for (index_t j = 0; j < N; ++j)
    if (!contains(kept, j)) evicted.push_back(j);
  const auto cosine = [&](index_t a, index_t b) {
    double d = 0, na = 0, nb = 0;
    for (index_t c = 0; c < Dk; ++c) d += keys(a, c) * keys(b, c), na += keys(a, c) * keys(a, c), nb += keys(b, c) * keys(b, c);
    return d / std::sqrt(na * nb);
  };
  for (std::size_t e = 0; e < evicted.size(); ++e)
    for (index_t i = 0; i < n; ++i) CHECK(cosine(evicted[e], kept[target[e]]) >= cosine(evicted[e], kept[i]) - 1e-6);
  // The pairwise rule on a hand case: two entries, keep 0, masses 1 and 3.
  Tensor<float, 2> k2({2, 1}), v2({2, 1});
  Tensor<float, 1> m2({2});
  k2(0, 0) = 1.f, k2(1, 0) = 2.f, v2(0, 0) = 10.f, v2(1, 0) = 20.f, m2(0) = 1.f, m2(1) = 3.f;
  Tensor<float, 2> ok2({1, 1}), ov2({1, 1});
  Tensor<float, 1> om2({1});
  kv::merge_evicted({k2.cview(), v2.cview(), m2.cview()}, {0}, {ok2.view(), ov2.view(), om2.view()});
  CHECK(ok2(0, 0) == Approx(1.75f));
  CHECK(ov2(0, 0) == Approx(17.5f));
  CHECK(om2(0) == Approx(4.f));
  // Batched form on a KeptSet from a policy equals the per-head form.
  auto kb = st::random_tensor<4>({1, N, 2, Dk}, 64), vb = st::random_tensor<4>({1, N, 2, Dv}, 65);
  auto mb = st::random_tensor<3>({1, 2, N}, 66, 0.f, 1.f);
  const auto ks = kv::h2o(mb.cview(), {8, 1, 2});
  Tensor<float, 4> okb({1, 8, 2, Dk}), ovb({1, 8, 2, Dv});
  Tensor<float, 3> omb({1, 2, 8});
  kv::merge_evicted(kb.cview(), vb.cview(), mb.cview(), ks, okb.view(), ovb.view(), omb.view(), st::two_thread_pool());
  Tensor<float, 2> ok1({8, Dk}), ov1({8, Dv});
  Tensor<float, 1> om1({8});
  kv::merge_evicted({kb.cview()[0].select(1, 1), vb.cview()[0].select(1, 1), mb.cview()[0][1]}, ks(0, 1),
                    {ok1.view(), ov1.view(), om1.view()});
  st::require_close("batched merge keys", okb.cview()[0].select(1, 1), ok1.cview(), 1e-6);
  st::require_close("batched merge mass", omb.cview()[0][1], om1.cview(), 1e-6);
  st::require_shape_error("mass", [&] {
    Tensor<float, 1> neg({2});
    neg(0) = -1.f;
    kv::merge_evicted({k2.cview(), v2.cview(), neg.cview()}, {0}, {ok2.view(), ov2.view(), om2.view()});
  });
}

TEST_CASE("kv policies validate their arguments", "[kv_policies]") {
  auto q = st::random_tensor<4>({1, 4, 6, 8}, 71);
  auto k = st::random_tensor<4>({1, 30, 4, 8}, 72);
  Tensor<float, 3> s({1, 4, 30});
  st::require_shape_error("keys", [&] { kv::observation_scores({q.cview(), k.cview(), {}}, s.view()); });
  auto k2 = st::random_tensor<4>({1, 30, 2, 8}, 73);
  st::require_shape_error("scores", [&] { kv::observation_scores({q.cview(), k2.cview(), {}}, s.view()); });
  st::require_shape_error("budget", [&] { kv::select_by_score(s.cview(), {-1, 0, 0}, kv::Keep::Highest); });
  kv::ThinkOptions o;
  o.keep_ratio = 0;
  st::require_shape_error("keep_ratio", [&] { kv::think_channels(q.cview(), k2.cview(), o); });
  // Issue 24: int64 query positions where pos + 1 or pos - window could overflow are refused
  // before any score is written (both forms).
  for (const std::int64_t extreme : {std::numeric_limits<std::int64_t>::max(), -(std::int64_t{1} << 62)}) {
    Tensor<std::int64_t, 2> positions({1, 4});
    for (index_t w = 0; w < 4; ++w) positions(0, w) = 26 + w;
    positions(0, 2) = extreme;
    Tensor<float, 3> s2({1, 2, 30});  // [B, Hkv, N]
    s2.fill(-5.f);
    st::require_shape_error("query_positions", [&] { kv::observation_scores({q.cview(), k2.cview(), positions.view()}, s2.view()); });
    st::require_shape_error("query_positions",
                            [&] { kv::reference::observation_scores({q.cview(), k2.cview(), positions.view()}, s2.view()); });
    CHECK(std::all_of(s2.begin(), s2.end(), [](float x) { return x == -5.f; }));
  }
}
