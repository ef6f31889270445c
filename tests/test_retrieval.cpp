// Retrieval attention: exact memory search against brute force (ties to the lower id), and the
// merged memory + local attention against dense attention over concat(memory, local) when every
// entry is retrieved, and against the top-k reference when only some are.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/retrieval/retrieval.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Case {
  const char* name;
  index_t N, Tq, T_local, Hq, Hkv, D, k;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      {"decode-gqa4", 1000, 1, 64, 8, 2, 64, 50},
      {"prefill-chunk", 300, 16, 16, 4, 4, 32, 20},
      {"small-memory", 5, 3, 8, 2, 1, 80, 10},  // k > N: -1 padded, everything retrieved
  };
  return table;
}

}  // namespace

TEST_CASE("retrieval: exact memory search returns the true top-k", "[retrieval]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    INFO(c.name << " N=" << c.N << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " D=" << c.D << " k=" << c.k);
    seqmix::KeyValueMemory memory(c.Hkv, c.D, c.D);
    // Two appends, so growth is exercised; the second repeats rows of the first (exact ties).
    auto keys = st::random_tensor<3>({c.N, c.Hkv, c.D}, 1);
    auto values = st::random_tensor<3>({c.N, c.Hkv, c.D}, 2);
    const index_t half = c.N / 2;
    for (index_t n = half; n < std::min(c.N, 2 * half); ++n)
      for (index_t h = 0; h < c.Hkv; ++h)
        for (index_t d = 0; d < c.D; ++d) keys(n, h, d) = keys(n - half, h, d);
    memory.append(keys.cview().slice(0, 0, half), values.cview().slice(0, 0, half));
    memory.append(keys.cview().slice(0, half, c.N - half), values.cview().slice(0, half, c.N - half));
    REQUIRE(memory.size() == c.N);
    const auto q = st::random_tensor<3>({c.Tq, c.Hq, c.D}, 3);
    Tensor<std::int32_t, 3> ids({c.Tq, c.Hq, c.k});
    seqmix::ExactMemoryIndex(memory).search(q.cview(), ids.view(), pool);
    const auto mk = memory.keys();
    for (index_t i = 0; i < c.Tq; ++i)
      for (index_t h = 0; h < c.Hq; ++h) {
        // Scores through the same float kernel order are not available here; rank by the
        // double dot product and accept the kernel's set if it agrees up to float rounding.
        std::vector<std::pair<double, index_t>> all;
        for (index_t n = 0; n < c.N; ++n) {
          double dot = 0;
          for (index_t d = 0; d < c.D; ++d) dot += q(i, h, d) * mk(0, n, h / (c.Hq / c.Hkv), d);
          all.push_back({-dot, n});
        }
        std::sort(all.begin(), all.end());
        const index_t kept = std::min(c.k, c.N);
        std::vector<std::int32_t> got(ids.data() + (i * c.Hq + h) * c.k, ids.data() + (i * c.Hq + h) * c.k + c.k);
        CHECK(std::is_sorted(got.begin(), got.begin() + kept));
        CHECK(std::all_of(got.begin() + kept, got.end(), [](std::int32_t x) { return x == -1; }));
        // Every returned id scores at least the k-th best score (minus rounding); duplicates
        // tie exactly, and then the lower id must be the one returned.
        const double kth = -all[kept - 1].first;
        for (index_t e = 0; e < kept; ++e) {
          double dot = 0;
          for (index_t d = 0; d < c.D; ++d) dot += q(i, h, d) * mk(0, got[e], h / (c.Hq / c.Hkv), d);
          CHECK(dot >= kth - 1e-5);
          if (got[e] >= half && got[e] < 2 * half)  // a duplicate: its twin must be in too
            CHECK(std::binary_search(got.begin(), got.begin() + kept, got[e] - static_cast<std::int32_t>(half)));
        }
      }
  }
}

TEST_CASE("retrieval: memory + local attention merged equals dense attention over both", "[retrieval]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    for (const bool everything : {true, false}) {
      INFO(c.name << " everything=" << everything);
      const index_t k = everything ? c.N : c.k;
      seqmix::KeyValueMemory memory(c.Hkv, c.D, c.D);
      const auto mk = st::random_tensor<3>({c.N, c.Hkv, c.D}, 11), mv = st::random_tensor<3>({c.N, c.Hkv, c.D}, 12);
      memory.append(mk.cview(), mv.cview());
      const auto q = st::random_tensor<4>({1, c.Tq, c.Hq, c.D}, 13);
      const auto lk = st::random_tensor<4>({1, c.T_local, c.Hkv, c.D}, 14);
      const auto lv = st::random_tensor<4>({1, c.T_local, c.Hkv, c.D}, 15);
      seqmix::AttentionInputs<float> local;
      local.q = q.cview(), local.k = lk.cview(), local.v = lv.cview();
      seqmix::AttentionOptions local_options;
      local_options.causal = true;
      seqmix::RetrievalAttentionOptions options;
      options.k = k;
      Tensor<float, 4> got({1, c.Tq, c.Hq, c.D});
      Tensor<float, 3> got_lse({1, c.Tq, c.Hq});
      const seqmix::ExactMemoryIndex index(memory);
      seqmix::retrieval_attention_merged(local, local_options, memory, index, {got.view(), got_lse.view()}, options, pool);

      // Reference: dense attention over concat(memory, local) with a mask: a memory entry is
      // visible iff retrieved (all of them when everything), local keys causally.
      const index_t Tk = c.N + c.T_local;
      Tensor<float, 4> ck({1, Tk, c.Hkv, c.D}), cv({1, Tk, c.Hkv, c.D});
      seqmix::copy(mk.cview(), ck.view().select(0, 0).slice(0, 0, c.N));
      seqmix::copy(mv.cview(), cv.view().select(0, 0).slice(0, 0, c.N));
      seqmix::copy(lk.cview().select(0, 0), ck.view().select(0, 0).slice(0, c.N, c.T_local));
      seqmix::copy(lv.cview().select(0, 0), cv.view().select(0, 0).slice(0, c.N, c.T_local));
      Tensor<std::int32_t, 3> ids({c.Tq, c.Hq, k});
      index.search(q.cview().select(0, 0), ids.view());
      Tensor<float, 4> want({1, c.Tq, c.Hq, c.D});
      Tensor<float, 3> want_lse({1, c.Tq, c.Hq});
      for (index_t h = 0; h < c.Hq; ++h) {
        Tensor<float, 3> mask({1, c.Tq, Tk});
        mask.fill(-std::numeric_limits<float>::infinity());
        for (index_t i = 0; i < c.Tq; ++i) {
          for (index_t e = 0; e < k; ++e)
            if (ids(i, h, e) >= 0) mask(0, i, ids(i, h, e)) = 0.f;
          for (index_t j = 0; j <= c.T_local - c.Tq + i; ++j) mask(0, i, c.N + j) = 0.f;
        }
        seqmix::AttentionInputs<float> dense;
        dense.q = q.cview().slice(2, h, 1), dense.k = ck.cview().slice(2, h / (c.Hq / c.Hkv), 1);
        dense.v = cv.cview().slice(2, h / (c.Hq / c.Hkv), 1), dense.mask = mask.cview();
        seqmix::reference::attention(dense, {want.view().slice(2, h, 1), want_lse.view().slice(2, h, 1)});
      }
      const auto co = st::compare(got.cview(), want.cview(), 1e-4), cl = st::compare(got_lse.cview(), want_lse.cview(), 1e-4);
      INFO("o: " << co.describe() << "; lse: " << cl.describe());
      CHECK(co.ok);
      CHECK(cl.ok);
    }
  }
}
