// Packed (varlen) attention: one call over sequences packed as [1, total_T, H, D] with
// cu_seqlens equals one call per sequence on its slices (bit-exact against attention_flash per
// sequence, within tolerance against the reference), over ragged lengths around the tile sizes,
// GQA, causal / window / sinks / softcap / ALiBi / sink logits, LSE, fp16 K/V; and every bad
// argument of the serving forms (packed and paged) throws ShapeError before any output changes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr double kTol = 1e-4;

struct VarlenCase {
  const char* name;
  std::vector<index_t> lengths;  // empty: random
  index_t N, Hq, Hkv, D;
  bool causal;
  index_t window, sink_tokens;
  float softcap;
  bool alibi, sink_logits;
  bool reference;  // also against reference::attention (slow in double: only the smaller cases)
};

std::string describe(const VarlenCase& c, const std::vector<index_t>& lengths, std::uint64_t seed, const char* kv) {
  std::ostringstream s;
  s << c.name << ": lengths={";
  for (index_t L : lengths) s << L << ",";
  s << "} Hq=" << c.Hq << " Hkv=" << c.Hkv << " D=" << c.D << " causal=" << c.causal << " window=" << c.window
    << " sinks=" << c.sink_tokens << " softcap=" << c.softcap << " alibi=" << c.alibi << " sink_logits=" << c.sink_logits
    << " kv=" << kv << " seed=" << seed;
  return s.str();
}

// Lengths as static arrays copied into each case: GCC 12 under ASan with
// detect_stack_use_after_return (CI's sanitizer stage) read a nested initializer_list of the static
// table from a stale frame, so the table is built without one.
std::vector<index_t> lengths_of(std::initializer_list<index_t> values) { return std::vector<index_t>(values); }

const std::vector<VarlenCase>& varlen_cases() {
  static const std::vector<VarlenCase> table = [] {
    std::vector<VarlenCase> t;
    // lengths around the 64-key tile and the 64-query block (G = 4: 256 rows / 4)
    t.push_back({"tiles", lengths_of({1, 63, 64, 65, 2, 128, 0, 129}), 8, 8, 2, 64, true, 0, 0, 0.f, false, false, true});
    t.push_back({"random-16", {}, 16, 8, 2, 64, true, 0, 0, 0.f, false, false, false});
    t.push_back({"mha-noncausal", {}, 4, 2, 2, 80, false, 0, 0, 0.f, false, false, false});
    t.push_back({"gqa8-window-sinks", {}, 5, 8, 1, 128, true, 50, 4, 0.f, false, true, false});
    t.push_back({"softcap-alibi", {}, 7, 8, 4, 64, true, 0, 0, 15.f, true, false, false});
    t.push_back({"small-all-options", lengths_of({5, 1, 70, 33}), 4, 4, 2, 64, true, 20, 2, 15.f, true, true, true});
    t.push_back({"single-700", lengths_of({700}), 1, 4, 1, 64, true, 0, 0, 0.f, false, false, false});
    return t;
  }();
  return table;
}

template <class KV>
void check_varlen(const VarlenCase& c, std::uint64_t seed, const char* kv) {
  std::mt19937_64 rng(seed);
  std::vector<index_t> lengths = c.lengths;
  // The sanitizer build (small scale) draws shorter sequences: the same tile boundaries are
  // crossed, at a fraction of the quadratic cost.
  const index_t longest = st::small_test_scale() ? 250 : 700;
  if (lengths.empty())
    for (index_t n = 0; n < c.N; ++n) lengths.push_back(std::uniform_int_distribution<index_t>(1, longest)(rng));
  std::vector<std::int64_t> cu{0};
  for (index_t L : lengths) cu.push_back(cu.back() + L);
  const index_t total = cu.back();
  const auto q = st::random_tensor<4>({1, total, c.Hq, c.D}, seed + 1);
  Tensor<KV, 4> k({1, total, c.Hkv, c.D}), v({1, total, c.Hkv, c.D});
  seqmix::copy(st::random_tensor<4>({1, total, c.Hkv, c.D}, seed + 2).cview(), k.view());
  seqmix::copy(st::random_tensor<4>({1, total, c.Hkv, c.D}, seed + 3).cview(), v.view());
  Tensor<float, 1> slopes({c.Hq});
  for (index_t h = 0; h < c.Hq; ++h) slopes(h) = 0.03f * static_cast<float>(h + 1);
  const auto sinks = st::random_tensor<1>({c.Hq}, seed + 4, -1.f, 2.f);
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.alibi) in.alibi_slopes = slopes.view();
  if (c.sink_logits) in.sink_logits = sinks.view();
  in.batch.cu_seqlens = cu;
  seqmix::AttentionOptions options;
  options.causal = c.causal, options.window = c.window, options.sink_tokens = c.sink_tokens, options.softcap = c.softcap;

  Tensor<float, 4> o({1, total, c.Hq, c.D}), o_ref({1, total, c.Hq, c.D}), o_each({1, total, c.Hq, c.D});
  Tensor<float, 3> lse({1, total, c.Hq}), lse_ref({1, total, c.Hq}), lse_each({1, total, c.Hq});
  seqmix::attention(in, {o.view(), lse.view()}, options, st::two_thread_pool());
  if (c.reference) seqmix::reference::attention(in, {o_ref.view(), lse_ref.view()}, options);
  // Per-sequence calls of the dense prefill on the slices.
  for (std::size_t n = 0; n + 1 < cu.size(); ++n) {
    seqmix::AttentionInputs<KV> one = in;
    one.batch = {};
    one.q = q.view().slice(1, cu[n], cu[n + 1] - cu[n]);
    one.k = k.view().slice(1, cu[n], cu[n + 1] - cu[n]);
    one.v = v.view().slice(1, cu[n], cu[n + 1] - cu[n]);
    seqmix::attention_flash(one, {o_each.view().slice(1, cu[n], cu[n + 1] - cu[n]),
                                  lse_each.view().slice(1, cu[n], cu[n + 1] - cu[n])},
                            options);
  }
  const auto co = st::compare(o.cview(), o_ref.cview(), kTol);
  const auto cl = st::compare(lse.cview(), lse_ref.cview(), kTol);
  const auto ce = st::compare(o.cview(), o_each.cview(), 0.0);
  const auto cle = st::compare(lse.cview(), lse_each.cview(), 0.0);
  INFO(describe(c, lengths, seed, kv) << "\n o vs reference: " << co.describe() << "\n lse vs reference: " << cl.describe()
                                      << "\n o vs per-sequence attention_flash: " << ce.describe()
                                      << "\n lse vs per-sequence: " << cle.describe());
  CHECK((co.ok || !c.reference));
  CHECK((cl.ok || !c.reference));
  CHECK(ce.ok);
  CHECK(cle.ok);
}

}  // namespace

TEST_CASE("attention varlen: packed call equals per-sequence calls", "[attention][varlen]") {
  for (const VarlenCase& c : varlen_cases()) {
    const std::uint64_t seed = 4000 + static_cast<std::uint64_t>(&c - varlen_cases().data());
    check_varlen<float>(c, seed, "f32");
    if (!st::small_test_scale()) check_varlen<seqmix::f16>(c, seed, "f16");
  }
}

TEST_CASE("attention varlen: bad packed arguments throw before any output is written", "[attention][varlen]") {
  const index_t total = 10, H = 4, D = 64;
  const auto q = st::random_tensor<4>({1, total, H, D}, 1);
  const auto k = st::random_tensor<4>({1, total, H, D}, 2);
  const auto v = st::random_tensor<4>({1, total, H, D}, 3);
  Tensor<float, 4> o({1, total, H, D});
  o.fill(42.f);
  const auto attempt = [&](const std::vector<std::int32_t>& cu, const char* expect) {
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    in.batch.cu_seqlens = cu;
    INFO(expect);
    CHECK_THROWS_AS(seqmix::attention(in, {o.view(), {}}), seqmix::ShapeError);
    CHECK_THROWS_WITH(seqmix::reference::attention(in, {o.view(), {}}), Catch::Contains(expect));
  };
  attempt({0, 4, 3, 10}, "non-decreasing");
  attempt({1, 4, 10}, "start at 0");
  attempt({0, 4, 9}, "end at total_T");
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  const std::vector<std::int32_t> cu{0, 4, 10};
  in.batch.cu_seqlens = cu;
  const auto k_short = st::random_tensor<4>({1, 9, H, D}, 2);
  const auto v_short = st::random_tensor<4>({1, 9, H, D}, 3);
  in.k = k_short.view(), in.v = v_short.view();
  CHECK_THROWS_WITH(seqmix::attention(in, {o.view(), {}}), Catch::Contains("'k'") && Catch::Contains("self-attention"));
  in.k = k.view(), in.v = v.view();
  const std::vector<std::int32_t> slots{0, 1};
  in.batch.state_indices = slots;
  CHECK_THROWS_WITH(seqmix::attention(in, {o.view(), {}}), Catch::Contains("no state"));
  in.batch.state_indices = {};
  // o overlapping q (in place) is refused, packed or not.
  Tensor<float, 4> qo = q;
  seqmix::AttentionInputs<float> in_place = in;
  in_place.q = qo.view();
  CHECK_THROWS_WITH(seqmix::attention(in_place, {qo.view(), {}}), Catch::Contains("'o'") && Catch::Contains("overlaps"));
  in_place.batch = {};
  CHECK_THROWS_WITH(seqmix::attention(in_place, {qo.view(), {}}), Catch::Contains("overlaps"));
  CHECK(st::compare(qo.cview(), q.cview(), 0.0).ok);
  for (float x : o) CHECK(x == 42.f);
}

TEST_CASE("paged attention: bad arguments throw before any output or page is written", "[attention][paged]") {
  const index_t N = 2, Hq = 4, Hkv = 2, D = 64, bs = 16, blocks = 6;
  const auto q = st::random_tensor<4>({N, 2, Hq, D}, 1);
  auto k_pages = st::random_tensor<4>({blocks, bs, Hkv, D}, 2);
  auto v_pages = st::random_tensor<4>({blocks, bs, Hkv, D}, 3);
  const Tensor<float, 4> k_copy = k_pages, v_copy = v_pages;
  Tensor<std::int32_t, 2> table({N, 2});
  table(0, 0) = 3, table(0, 1) = 1, table(1, 0) = 0, table(1, 1) = -1;  // sequence 1 uses one page
  std::vector<std::int32_t> lengths{20, 16};
  Tensor<float, 4> o({N, 2, Hq, D});
  o.fill(42.f);
  const auto base = [&] {
    seqmix::PagedAttentionInputs<float> in;
    in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view();
    in.block_table = table.view(), in.cache_seqlens = lengths;
    return in;
  };
  // The good call works (entries past a sequence's pages, like -1, are not read).
  Tensor<float, 4> o_ok({N, 2, Hq, D});
  seqmix::paged_attention(base(), {o_ok.view(), {}});
  const auto rejects = [&](const seqmix::PagedAttentionInputs<float>& in, const char* expect) {
    INFO(expect);
    CHECK_THROWS_AS(seqmix::paged_attention(in, {o.view(), {}}), seqmix::ShapeError);
    CHECK_THROWS_WITH(seqmix::reference::paged_attention(in, {o.view(), {}}), Catch::Contains(expect));
  };
  table(0, 1) = blocks;  // out of range
  rejects(base(), "block_table");
  table(0, 1) = -1;
  rejects(base(), "block_table");
  table(0, 1) = 1;
  lengths[0] = 33;  // longer than its 2 pages
  rejects(base(), "cache_seqlens");
  lengths[0] = 1;  // 2 queries, 1 cached token
  rejects(base(), "queries");
  lengths[0] = 20;
  {
    auto in = base();
    const std::vector<std::int32_t> cu{0, 3, 2};
    Tensor<float, 4> packed_q({1, 2, Hq, D});
    in.q = packed_q.view(), in.cu_seqlens_q = cu;
    Tensor<float, 4> packed_o({1, 2, Hq, D});
    CHECK_THROWS_WITH(seqmix::paged_attention(in, {packed_o.view(), {}}), Catch::Contains("cu_seqlens"));
  }
  {
    auto in = base();
    Tensor<float, 4> qo = q;
    in.q = qo.view();
    CHECK_THROWS_WITH(seqmix::paged_attention(in, {qo.view(), {}}), Catch::Contains("overlaps"));
    const TensorView<float, 4> in_pages(k_pages.data(), {N, 2, Hq, D});
    CHECK_THROWS_WITH(seqmix::paged_attention(base(), {in_pages, {}}), Catch::Contains("overlaps"));
  }
  for (float x : o) CHECK(x == 42.f);

  // Append: a slot or a position beyond the pages leaves the pool untouched.
  const auto k_new = st::random_tensor<4>({N, 3, Hkv, D}, 4);
  const auto v_new = st::random_tensor<4>({N, 3, Hkv, D}, 5);
  const seqmix::PagedKvPool<float> pool{k_pages.view(), v_pages.view()};
  seqmix::PagedKvAppendInputs<float> append;
  append.k = k_new.view(), append.v = v_new.view();
  const std::vector<std::int32_t> bad_slots{0, 1, 2, 3, 4, static_cast<std::int32_t>(blocks * bs)};
  append.slot_mapping = bad_slots;
  CHECK_THROWS_WITH(seqmix::paged_kv_append(append, pool), Catch::Contains("slot_mapping"));
  append.slot_mapping = {};
  append.block_table = table.view();
  const std::vector<std::int32_t> starts{30, 0};  // 30 + 3 > 2 pages of 16
  append.cache_seqlens = starts;
  CHECK_THROWS_WITH(seqmix::paged_kv_append(append, pool), Catch::Contains("beyond its pages"));
  const std::vector<std::int32_t> starts_page{0, 14};  // sequence 1 would reach its page -1
  append.cache_seqlens = starts_page;
  CHECK_THROWS_WITH(seqmix::paged_kv_append(append, pool), Catch::Contains("block_table"));
  CHECK(st::compare(k_pages.cview(), k_copy.cview(), 0.0).ok);
  CHECK(st::compare(v_pages.cview(), v_copy.cview(), 0.0).ok);
}
