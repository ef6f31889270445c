// Paged attention: paged_attention (fast) and reference::paged_attention against dense
// reference::attention on each sequence's K/V gathered from its pages, over block sizes 1 / 5 /
// 16 / 64, shuffled block tables with unused blocks, ragged cache lengths, Tq 1..16 (the decode
// kernel, dense and packed) and prefill chunks of 17..700 queries (the flash path), decode and
// prefill sequences mixed in one packed call, GQA, window / sinks / softcap / ALiBi / sink logits, fp32 / fp16 / bf16 pages;
// paged_kv_append then attention equals attention on the concatenated cache; bad arguments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr double kTol = 1e-4;

struct PagedCase {
  const char* name;
  index_t N, Hq, Hkv, Dk, Dv, block_size;
  index_t Tq;  // queries per sequence; 0: packed, 1..max_packed_q per sequence at random
  index_t max_len;
  bool causal;
  index_t window, sink_tokens;
  float softcap;
  bool alibi, sink_logits;
  // Packed cases: queries per sequence at most; above 16, every third sequence still decodes
  // (1..16 queries) beside the prefill chunks.
  index_t max_packed_q = 16;
  // Under the sanitizers (small scale) max_len and max_packed_q are divided by this.
  index_t small_divisor = 2;

  std::string describe(std::uint64_t seed, const char* kv) const {
    std::ostringstream s;
    s << name << ": N=" << N << " Hq=" << Hq << " Hkv=" << Hkv << " Dk=" << Dk << " Dv=" << Dv
      << " block_size=" << block_size << " Tq=" << Tq << " max_len=" << max_len << " causal=" << causal
      << " window=" << window << " sinks=" << sink_tokens << " softcap=" << softcap << " alibi=" << alibi
      << " sink_logits=" << sink_logits << " max_packed_q=" << max_packed_q << " kv=" << kv << " seed=" << seed
      << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const std::vector<PagedCase>& paged_cases() {
  static const std::vector<PagedCase> table = {
      // name                 N  Hq Hkv Dk  Dv  bs  Tq  max  causal win sinks cap  alibi sinkl
      {"decode-bs16-gqa4", 5, 8, 2, 64, 64, 16, 1, 700, true, 0, 0, 0.f, false, false},
      {"decode-bs64-gqa8", 3, 8, 1, 128, 128, 64, 1, 1000, true, 0, 0, 0.f, false, true},
      {"decode-bs1-mha", 4, 4, 4, 64, 64, 1, 1, 200, true, 0, 0, 0.f, false, false},
      {"decode-bs5-d80", 4, 8, 2, 80, 72, 5, 1, 300, true, 0, 0, 0.f, false, false},
      {"verify-tq4-bs16", 6, 8, 2, 64, 64, 16, 4, 500, true, 0, 0, 0.f, false, false},
      // Small scale: 225 tokens, still 3 pages / key tiles of 64 and a ragged one (n = 1 ends on
      // the page boundary 192, n = 2 one past the first page).
      {"verify-tq16-bs64", 3, 8, 2, 128, 128, 64, 16, 900, true, 0, 0, 0.f, true, false, 16, 4},
      {"chunk-tq40-bs16", 2, 4, 1, 64, 64, 16, 40, 400, true, 0, 0, 0.f, false, false},
      {"packed-ragged-bs16", 7, 8, 2, 64, 64, 16, 0, 600, true, 0, 0, 0.f, false, true},
      {"packed-ragged-bs1", 5, 4, 2, 64, 64, 1, 0, 120, true, 0, 0, 0.f, false, false},
      {"window-sinks-bs16", 4, 8, 2, 64, 64, 16, 3, 800, true, 100, 4, 0.f, false, false},
      {"window-sinks-bs64-decode", 3, 8, 1, 128, 128, 64, 1, 1000, true, 200, 8, 0.f, true, true},
      {"softcap-bs16", 3, 8, 4, 64, 64, 16, 2, 300, true, 0, 0, 10.f, false, false},
      {"noncausal-tq5", 3, 4, 2, 64, 64, 16, 5, 300, false, 0, 0, 0.f, false, false},
      {"all-options-packed-bs5", 6, 8, 2, 80, 64, 5, 0, 400, true, 64, 3, 20.f, true, true},
      // Prefill chunks (more than 16 queries: tiles of queries over the pages), around the
      // 64-key tile and the 256 / group query block.
      {"prefill-tq17-bs16", 3, 8, 2, 64, 64, 16, 17, 300, true, 0, 0, 0.f, false, false},
      {"prefill-tq130-bs64", 2, 4, 1, 128, 128, 64, 130, 450, true, 0, 0, 0.f, false, true},
      {"prefill-tq70-bs1", 2, 4, 2, 64, 64, 1, 70, 200, true, 0, 0, 0.f, false, false},
      {"prefill-noncausal-bs5", 2, 4, 1, 64, 72, 5, 33, 150, false, 0, 0, 0.f, false, false},
      // Small scale: 187 tokens (11 pages of 16 and 11, 2 key tiles and a ragged one) and chunks of
      // up to 175 queries (past two 64-query blocks of group 4, 256 / 4) beside decodes.
      {"mixed-packed-bs16", 4, 4, 1, 64, 64, 16, 0, 750, true, 0, 0, 0.f, false, false, 700, 4},
      {"mixed-packed-bs5-options", 4, 4, 2, 80, 64, 5, 0, 400, true, 90, 4, 15.f, true, true, 300},
      {"mixed-packed-bs64-window", 3, 4, 1, 64, 64, 64, 0, 600, true, 200, 0, 0.f, false, false, 500},
      {"mixed-packed-bs1", 4, 4, 2, 64, 64, 1, 0, 160, true, 0, 0, 0.f, false, false, 120},
  };
  return table;
}

// One random paged problem. Stored K/V are `KV`; k_dense / v_dense hold each sequence's rows
// gathered from its pages, widened back to fp32 (exactly what every kernel sees).
template <class KV>
struct PagedProblem {
  index_t N, Hq, Hkv, Dk, Dv, bs, num_blocks, max_blocks, total_q;
  std::vector<index_t> lengths, queries;
  std::vector<std::int32_t> cu_q, seqlens;
  Tensor<std::int32_t, 2> table;
  Tensor<KV, 4> k_pages, v_pages;
  Tensor<float, 4> q;
  Tensor<float, 1> slopes, sinks;
  bool packed;

  PagedProblem(const PagedCase& c, std::uint64_t seed)
      : N(c.N), Hq(c.Hq), Hkv(c.Hkv), Dk(c.Dk), Dv(c.Dv), bs(c.block_size), packed(c.Tq == 0) {
    std::mt19937_64 rng(seed);
    const auto uniform = [&](index_t lo, index_t hi) {
      return std::uniform_int_distribution<index_t>(lo, hi)(rng);
    };
    index_t used_blocks = 0;
    for (index_t n = 0; n < N; ++n) {
      const index_t most_q = c.max_packed_q > 16 && n % 3 == 2 ? 16 : c.max_packed_q;
      const index_t tq = packed ? uniform(n == 0 ? 0 : 1, most_q) : c.Tq;
      // Lengths: a page boundary, one past it, a single query's worth, and random.
      index_t L = uniform(std::max<index_t>(tq, 1), c.max_len);
      if (n == 1) L = std::max(tq, (c.max_len / bs) * bs);
      if (n == 2) L = std::max(tq, std::min(c.max_len, bs + 1));
      if (n == 3) L = std::max<index_t>(tq, 1);
      queries.push_back(tq);
      lengths.push_back(L);
      used_blocks += (L + bs - 1) / bs;
    }
    max_blocks = 1;
    for (index_t L : lengths) max_blocks = std::max(max_blocks, (L + bs - 1) / bs + 1);
    num_blocks = used_blocks + 7;  // unused blocks hold garbage
    std::vector<std::int32_t> ids(static_cast<std::size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    table = Tensor<std::int32_t, 2>({N, max_blocks});
    table.fill(-1);  // entries past a sequence's pages are never read
    std::size_t next = 0;
    for (index_t n = 0; n < N; ++n)
      for (index_t b = 0; b * bs < lengths[n]; ++b) table(n, b) = ids[next++];
    k_pages = to_kv(st::random_tensor<4>({num_blocks, bs, Hkv, Dk}, seed + 1));
    v_pages = to_kv(st::random_tensor<4>({num_blocks, bs, Hkv, Dv}, seed + 2));
    total_q = 0;
    cu_q.push_back(0);
    for (index_t n = 0; n < N; ++n) {
      total_q += queries[n];
      cu_q.push_back(static_cast<std::int32_t>(total_q));
      seqlens.push_back(static_cast<std::int32_t>(lengths[n]));
    }
    q = packed ? st::random_tensor<4>({1, total_q, Hq, Dk}, seed + 3)
               : st::random_tensor<4>({N, c.Tq, Hq, Dk}, seed + 3);
    slopes = Tensor<float, 1>({Hq});
    for (index_t h = 0; h < Hq; ++h) slopes(h) = std::pow(2.f, -8.f * static_cast<float>(h + 1) / static_cast<float>(Hq));
    sinks = st::random_tensor<1>({Hq}, seed + 4, -1.f, 3.f);
  }

  static Tensor<KV, 4> to_kv(const Tensor<float, 4>& x) {
    Tensor<KV, 4> out(x.shape());
    seqmix::copy(x.cview(), out.view());
    return out;
  }

  seqmix::PagedAttentionInputs<KV> inputs(const PagedCase& c) const {
    seqmix::PagedAttentionInputs<KV> in;
    in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view();
    in.block_table = table.view();
    in.cache_seqlens = seqlens;
    if (packed) in.cu_seqlens_q = cu_q;
    if (c.alibi) in.alibi_slopes = slopes.view();
    if (c.sink_logits) in.sink_logits = sinks.view();
    return in;
  }

  // Rows [0, L) of sequence n gathered into [1, L, Hkv, D] fp32.
  Tensor<float, 4> gather(const Tensor<KV, 4>& pages, index_t n) const {
    const index_t L = lengths[n], D = pages.size(3);
    Tensor<float, 4> out({1, L, Hkv, D});
    for (index_t j = 0; j < L; ++j)
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t d = 0; d < D; ++d) out(0, j, h, d) = static_cast<float>(pages(table(n, j / bs), j % bs, h, d));
    return out;
  }
};

seqmix::PagedAttentionOptions paged_options(const PagedCase& c) {
  seqmix::PagedAttentionOptions o;
  o.causal = c.causal, o.window = c.window, o.sink_tokens = c.sink_tokens, o.softcap = c.softcap;
  return o;
}

// Dense reference::attention per sequence on the gathered K/V: the expected o and lse.
template <class KV>
void dense_expected(const PagedCase& c, const PagedProblem<KV>& p, Tensor<float, 4>& o, Tensor<float, 3>& lse) {
  for (index_t n = 0; n < p.N; ++n) {
    const index_t b = p.packed ? 0 : n, i0 = p.packed ? p.cu_q[n] : 0, count = p.queries[n];
    if (count == 0) continue;
    const Tensor<float, 4> k = p.gather(p.k_pages, n), v = p.gather(p.v_pages, n);
    seqmix::AttentionInputs<float> in;
    in.q = p.q.view()[b].slice(0, i0, count).reshape(std::array<index_t, 4>{1, count, p.Hq, p.Dk});
    in.k = k.view(), in.v = v.view();
    if (c.alibi) in.alibi_slopes = p.slopes.view();
    if (c.sink_logits) in.sink_logits = p.sinks.view();
    seqmix::AttentionOutputs out;
    out.o = o.view()[b].slice(0, i0, count).reshape(std::array<index_t, 4>{1, count, p.Hq, p.Dv});
    out.lse = lse.view()[b].slice(0, i0, count).reshape(std::array<index_t, 3>{1, count, p.Hq});
    seqmix::reference::attention(in, out, paged_options(c).dense());
  }
}

template <class KV>
void check_paged_case(const PagedCase& c, std::uint64_t seed, const char* kv) {
  const PagedProblem<KV> p(c, seed);
  const auto in = p.inputs(c);
  const auto options = paged_options(c);
  const std::array<index_t, 4> o_shape{p.q.size(0), p.q.size(1), p.Hq, p.Dv};
  const std::array<index_t, 3> lse_shape{p.q.size(0), p.q.size(1), p.Hq};
  Tensor<float, 4> o_ref(o_shape), o_pref(o_shape), o_fast(o_shape), o_serial(o_shape);
  Tensor<float, 3> lse_ref(lse_shape), lse_pref(lse_shape), lse_fast(lse_shape), lse_serial(lse_shape);
  dense_expected(c, p, o_ref, lse_ref);
  seqmix::reference::paged_attention(in, {o_pref.view(), lse_pref.view()}, options);
  seqmix::paged_attention(in, {o_fast.view(), lse_fast.view()}, options, st::two_thread_pool());
  seqmix::paged_attention(in, {o_serial.view(), lse_serial.view()}, options);
  const std::pair<const char*, std::pair<Tensor<float, 4>*, Tensor<float, 3>*>> forms[] = {
      {"reference::paged_attention", {&o_pref, &lse_pref}},
      {"paged_attention(pool 2)", {&o_fast, &lse_fast}},
      {"paged_attention(serial)", {&o_serial, &lse_serial}}};
  for (const auto& form : forms) {
    const auto co = st::compare(form.second.first->cview(), o_ref.cview(), kTol);
    const auto cl = st::compare(form.second.second->cview(), lse_ref.cview(), kTol);
    INFO(c.describe(seed, kv) << " form=" << form.first << " o: " << co.describe() << "; lse: " << cl.describe());
    CHECK(co.ok);
    CHECK(cl.ok);
  }
}

}  // namespace

TEST_CASE("paged_attention: equals dense attention on the gathered K/V", "[attention][paged]") {
  for (const PagedCase& table_case : paged_cases()) {
    const std::uint64_t seed = 3000 + static_cast<std::uint64_t>(&table_case - paged_cases().data());
    // Under the sanitizers (small scale) the sequences are half as long (a quarter in the two
    // costliest rows without a window): the same page and tile boundaries, windows and packed
    // mixes, at a quarter of the prefill cost or less.
    PagedCase c = table_case;
    if (st::small_test_scale()) {
      c.max_len = std::max<index_t>(c.max_len / c.small_divisor, c.Tq);
      c.max_packed_q = std::max<index_t>(16, c.max_packed_q / c.small_divisor);
    }
    check_paged_case<float>(c, seed, "f32");
    // Under the sanitizers (small scale) every other case checks one 16-bit pool, f16 and bf16
    // in turn: f32 and f16 over the whole table took two minutes there.
    const auto index = &table_case - paged_cases().data();
    if (!st::small_test_scale() || index % 4 == 0) check_paged_case<seqmix::f16>(c, seed, "f16");
    if (!st::small_test_scale() || index % 4 == 2) check_paged_case<seqmix::bf16>(c, seed, "bf16");
  }
}

TEST_CASE("paged_attention: int64 block table and lengths", "[attention][paged]") {
  const PagedCase c{"int64", 3, 8, 2, 64, 64, 16, 2, 300, true, 0, 0, 0.f, false, false};
  const PagedProblem<float> p(c, 11);
  Tensor<std::int64_t, 2> table64({p.N, p.max_blocks});
  for (index_t n = 0; n < p.N; ++n)
    for (index_t b = 0; b < p.max_blocks; ++b) table64(n, b) = p.table(n, b);
  std::vector<std::int64_t> seqlens64(p.seqlens.begin(), p.seqlens.end());
  auto in = p.inputs(c);
  in.block_table = table64.view();
  in.cache_seqlens = seqlens64;
  Tensor<float, 4> o32({p.N, 2, p.Hq, p.Dv}), o64({p.N, 2, p.Hq, p.Dv});
  seqmix::paged_attention(p.inputs(c), {o32.view(), {}}, paged_options(c));
  seqmix::paged_attention(in, {o64.view(), {}}, paged_options(c));
  CHECK(st::compare(o64.cview(), o32.cview(), 0.0).ok);
}

namespace {

// Appends new tokens (dense [N, T] or packed ragged) after random prefixes written by a first
// append, then checks paged_attention over prefix + new tokens against dense attention on the
// concatenated K/V (rounded to the pool type), and that nothing else in the pool changed.
template <class KV, class In>
void check_append(bool packed, bool slot_mapping, index_t bs, std::uint64_t seed) {
  const index_t N = 4, Hq = 8, Hkv = 2, D = 64, T = 3;
  std::mt19937_64 rng(seed);
  std::vector<index_t> prefix(N), fresh(N);
  index_t total_new = 0;
  for (index_t n = 0; n < N; ++n) {
    prefix[n] = std::uniform_int_distribution<index_t>(0, 150)(rng);
    fresh[n] = packed ? std::uniform_int_distribution<index_t>(n == 0 ? 0 : 1, 9)(rng) : T;
    total_new += fresh[n];
  }
  index_t max_blocks = 0, num_blocks = 3;
  for (index_t n = 0; n < N; ++n) {
    max_blocks = std::max(max_blocks, (prefix[n] + fresh[n] + bs - 1) / bs);
    num_blocks += (prefix[n] + fresh[n] + bs - 1) / bs;
  }
  std::vector<std::int32_t> ids(static_cast<std::size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  Tensor<std::int32_t, 2> table({N, std::max<index_t>(max_blocks, 1)});
  table.fill(-1);
  std::size_t next = 0;
  for (index_t n = 0; n < N; ++n)
    for (index_t b = 0; b * bs < prefix[n] + fresh[n]; ++b) table(n, b) = ids[next++];
  Tensor<KV, 4> k_pages({num_blocks, bs, Hkv, D}), v_pages({num_blocks, bs, Hkv, D});
  seqmix::copy(st::random_tensor<4>({num_blocks, bs, Hkv, D}, seed + 1).cview(), k_pages.view());
  seqmix::copy(st::random_tensor<4>({num_blocks, bs, Hkv, D}, seed + 2).cview(), v_pages.view());
  const Tensor<KV, 4> k_before = k_pages, v_before = v_pages;

  // The prefixes, written by one packed append from position 0.
  index_t total_prefix = 0;
  std::vector<std::int32_t> cu_prefix{0};
  for (index_t n = 0; n < N; ++n) cu_prefix.push_back(static_cast<std::int32_t>(total_prefix += prefix[n]));
  const auto k_prefix = st::random_tensor<4>({1, total_prefix, Hkv, D}, seed + 3);
  const auto v_prefix = st::random_tensor<4>({1, total_prefix, Hkv, D}, seed + 4);
  const std::vector<std::int32_t> zeros(static_cast<std::size_t>(N), 0);
  seqmix::PagedKvAppendInputs<float> first;
  first.k = k_prefix.view(), first.v = v_prefix.view(), first.block_table = table.view();
  first.cache_seqlens = zeros, first.cu_seqlens = cu_prefix;
  const seqmix::PagedKvPool<KV> pool{k_pages.view(), v_pages.view()};
  seqmix::paged_kv_append(first, pool);

  // The new tokens, in the input type In.
  const index_t rows = packed ? total_new : N * T;
  const std::array<index_t, 4> new_shape = packed ? std::array<index_t, 4>{1, total_new, Hkv, D}
                                                  : std::array<index_t, 4>{N, T, Hkv, D};
  Tensor<In, 4> k_new(new_shape), v_new(new_shape);
  seqmix::copy(st::random_tensor<4>(new_shape, seed + 5).cview(), k_new.view());
  seqmix::copy(st::random_tensor<4>(new_shape, seed + 6).cview(), v_new.view());
  std::vector<std::int32_t> cu_new{0}, starts, slots;
  for (index_t n = 0; n < N; ++n) {
    cu_new.push_back(cu_new.back() + static_cast<std::int32_t>(fresh[n]));
    starts.push_back(static_cast<std::int32_t>(prefix[n]));
    for (index_t t = 0; t < fresh[n]; ++t) {
      const index_t pos = prefix[n] + t;
      slots.push_back(static_cast<std::int32_t>(table(n, pos / bs) * bs + pos % bs));
    }
  }
  seqmix::PagedKvAppendInputs<In> append;
  append.k = k_new.view(), append.v = v_new.view();
  if (slot_mapping) {
    append.slot_mapping = slots;
  } else {
    append.block_table = table.view(), append.cache_seqlens = starts;
    if (packed) append.cu_seqlens = cu_new;
  }
  seqmix::paged_kv_append(append, pool, st::two_thread_pool());
  (void)rows;

  // Attention of the new tokens (as queries) over prefix + new, against dense attention on the
  // concatenated K/V rounded through KV.
  std::vector<std::int32_t> lengths;
  for (index_t n = 0; n < N; ++n) lengths.push_back(static_cast<std::int32_t>(prefix[n] + fresh[n]));
  const std::array<index_t, 4> q_shape = packed ? std::array<index_t, 4>{1, total_new, Hq, D}
                                                : std::array<index_t, 4>{N, T, Hq, D};
  const auto q = st::random_tensor<4>(q_shape, seed + 7);
  seqmix::PagedAttentionInputs<KV> in;
  in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view(), in.block_table = table.view();
  in.cache_seqlens = lengths;
  if (packed) in.cu_seqlens_q = cu_new;
  Tensor<float, 4> o({q_shape[0], q_shape[1], Hq, D}), o_ref({q_shape[0], q_shape[1], Hq, D});
  o_ref.fill(0.f);
  seqmix::paged_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
  const auto round = [](float x) { return static_cast<float>(static_cast<KV>(static_cast<float>(static_cast<In>(x)))); };
  for (index_t n = 0; n < N; ++n) {
    const index_t L = prefix[n] + fresh[n];
    if (fresh[n] == 0) continue;
    Tensor<float, 4> k({1, L, Hkv, D}), v({1, L, Hkv, D});
    for (index_t j = 0; j < L; ++j)
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t d = 0; d < D; ++d) {
          const bool is_prefix = j < prefix[n];
          const index_t t = j - prefix[n];
          const index_t b = packed ? 0 : n, i = packed ? cu_new[n] + t : t;
          k(0, j, h, d) = is_prefix ? static_cast<float>(static_cast<KV>(k_prefix(0, cu_prefix[n] + j, h, d)))
                                    : round(static_cast<float>(k_new(b, i, h, d)));
          v(0, j, h, d) = is_prefix ? static_cast<float>(static_cast<KV>(v_prefix(0, cu_prefix[n] + j, h, d)))
                                    : round(static_cast<float>(v_new(b, i, h, d)));
        }
    const index_t b = packed ? 0 : n, i0 = packed ? cu_new[n] : 0;
    seqmix::AttentionInputs<float> dense;
    dense.q = q.view()[b].slice(0, i0, fresh[n]).reshape(std::array<index_t, 4>{1, fresh[n], Hq, D});
    dense.k = k.view(), dense.v = v.view();
    seqmix::AttentionOptions causal;
    causal.causal = true;
    seqmix::reference::attention(
        dense, {o_ref.view()[b].slice(0, i0, fresh[n]).reshape(std::array<index_t, 4>{1, fresh[n], Hq, D}), {}}, causal);
  }
  const auto co = st::compare(o.cview(), o_ref.cview(), kTol);
  INFO("append: packed=" << packed << " slot_mapping=" << slot_mapping << " block_size=" << bs << " seed=" << seed
                         << " o: " << co.describe());
  CHECK(co.ok);
  // Pages no sequence owns are untouched.
  std::vector<bool> owned(static_cast<std::size_t>(num_blocks), false);
  for (index_t n = 0; n < N; ++n)
    for (index_t b = 0; b * bs < prefix[n] + fresh[n]; ++b) owned[static_cast<std::size_t>(table(n, b))] = true;
  index_t changed = 0;
  for (index_t blk = 0; blk < num_blocks; ++blk)
    if (!owned[static_cast<std::size_t>(blk)])
      for (index_t r = 0; r < bs; ++r)
        for (index_t h = 0; h < Hkv; ++h)
          for (index_t d = 0; d < D; ++d)
            changed += std::memcmp(&k_pages(blk, r, h, d), &k_before(blk, r, h, d), sizeof(KV)) != 0 ||
                       std::memcmp(&v_pages(blk, r, h, d), &v_before(blk, r, h, d), sizeof(KV)) != 0;
  CHECK(changed == 0);
}

}  // namespace

TEST_CASE("paged_kv_append: append then attend equals attention on the concatenated cache", "[attention][paged]") {
  for (const index_t bs : {1, 16, 64})
    for (const bool packed : {false, true}) {
      check_append<float, float>(packed, false, bs, 40 + bs);
      check_append<seqmix::f16, float>(packed, false, bs, 50 + bs);
      check_append<seqmix::bf16, seqmix::f16>(packed, true, bs, 60 + bs);
      check_append<seqmix::f16, seqmix::bf16>(packed, true, bs, 70 + bs);
    }
}
