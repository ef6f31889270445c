// Paged attention over quantized pages (kv_cache/paged.hpp): paged_kv_append in
// ragged chunks into a pool of quantized pages with shuffled block tables, then paged_attention,
// against a KvCache (residual 0, same formats) holding the same tokens and kv_cache_attention over
// it: equal bit for bit (same kernels, pieces and merge; two-byte and one-byte operands), over int8 / int4 / int2 formats with
// per-channel and per-token keys, value groups the integer kernels follow and ones they do not,
// block sizes 8 / 16 (a group's image cut between pages) and 32 / 64 / 128, ragged lengths around the 32-token groups, GQA, Tq 1..16, window /
// sinks / softcap / ALiBi / sink logits, serial and 2 threads; also within the documented error
// of reference::kv_cache_attention; packed queries; bad arguments leave pool and outputs as they were.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/kv_cache/paged.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KeyQuant;
using seqmix::KvFormat;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Format {
  const char* name;
  KvFormat key, value;
  KeyQuant key_quant;
  index_t group_size;
};

// Plain arrays of aggregates (no nested initializer lists: see test_attention_varlen).
constexpr Format kFormats[] = {
    {"int8/int8 per-channel", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0},
    {"int4/int4 per-channel", KvFormat::int4, KvFormat::int4, KeyQuant::per_channel, 0},
    {"int8/int2 per-token g32", KvFormat::int8, KvFormat::int2, KeyQuant::per_token, 32},
    {"int4/int8 per-token row", KvFormat::int4, KvFormat::int8, KeyQuant::per_token, 0},
    {"fp16/int4 g16", KvFormat::f16, KvFormat::int4, KeyQuant::per_channel, 16},
    {"int8/int8 per-token g8 (float route)", KvFormat::int8, KvFormat::int8, KeyQuant::per_token, 8},
};

struct Scenario {
  const char* name;
  index_t N, Hq, Hkv, Dk, Dv, block_size, Tq, max_len;
  index_t window, sink_tokens;
  float softcap;
  bool alibi, sink_logits, half_input;
};

constexpr Scenario kScenarios[] = {
    // name            N  Hq Hkv Dk  Dv bs   Tq max  win sinks cap  alibi sinkl half
    {"decode-bs32", 5, 8, 2, 64, 48, 32, 1, 700, 0, 0, 0.f, false, false, false},
    {"decode-bs64-fp16in", 4, 8, 2, 64, 64, 64, 1, 400, 0, 0, 0.f, false, true, true},
    {"verify-bs128", 3, 8, 2, 64, 48, 128, 16, 500, 0, 0, 0.f, false, false, false},
    {"chunk5-window-sinks", 4, 4, 1, 32, 32, 64, 5, 600, 100, 4, 0.f, false, false, false},
    {"decode-softcap-alibi-mha", 3, 4, 4, 64, 32, 32, 1, 300, 0, 0, 20.f, true, true, false},
    {"decode-bs16", 5, 8, 2, 64, 48, 16, 1, 400, 0, 0, 0.f, false, false, false},
    {"verify-bs16-window", 3, 8, 2, 64, 64, 16, 16, 300, 40, 2, 0.f, false, false, false},
    {"chunk3-bs8", 3, 4, 1, 32, 48, 8, 3, 300, 0, 0, 0.f, false, false, false},
};

// A ragged length for sequence n: around the 32-token groups, or random.
index_t pick_length(std::mt19937_64& rng, index_t n, index_t Tq, index_t max_len) {
  const index_t special[] = {1, 31, 32, 33, 63, 64, 65, 96, 257};
  index_t L = n < 9 && (n % 2 == 0) ? special[(n / 2 + rng() % 3) % 9] : 1 + static_cast<index_t>(rng() % max_len);
  return std::max(L, Tq);
}

struct Setup {
  Format format;
  Scenario sc;
  std::vector<index_t> lengths;
  Tensor<float, 4> k, v;           // [1, total, Hkv, D] packed by sequence
  std::vector<index_t> offsets;    // sequence n's tokens start here
  Tensor<std::uint8_t, 2> pages;   // [num_blocks, page_bytes]
  Tensor<float, 4> tail_k, tail_v; // [N + 2, 32, Hkv, D]: sequences use rows n + 2 (tail_indices)
  std::vector<std::int32_t> tails;
  Tensor<std::int32_t, 2> table;   // [N, max_blocks]
  std::vector<std::int32_t> seqlens;
  seqmix::KvCache cache;
  const seqmix::RopeTable* rope = nullptr;  // keys rotated by both appends when set

  static seqmix::KvCacheConfig cache_config(const Format& f, const Scenario& sc) {
    seqmix::KvCacheConfig cfg;
    cfg.batch = sc.N, cfg.kv_heads = sc.Hkv, cfg.key_dim = sc.Dk, cfg.value_dim = sc.Dv;
    cfg.key_format = f.key, cfg.value_format = f.value, cfg.key_quant = f.key_quant, cfg.group_size = f.group_size;
    cfg.residual = 0;
    return cfg;
  }

  Setup(const Format& f, const Scenario& s, std::uint64_t seed) : format(f), sc(s), cache(cache_config(f, s)) {
    std::mt19937_64 rng(seed);
    index_t total = 0, blocks = 0, max_blocks = 1;
    for (index_t n = 0; n < sc.N; ++n) {
      lengths.push_back(pick_length(rng, n, sc.Tq, sc.max_len));
      offsets.push_back(total);
      total += lengths.back();
      const index_t nb = (lengths.back() + sc.block_size - 1) / sc.block_size;
      blocks += nb, max_blocks = std::max(max_blocks, nb);
    }
    k = st::random_tensor<4>({1, total, sc.Hkv, sc.Dk}, seed + 1);
    v = st::random_tensor<4>({1, total, sc.Hkv, sc.Dv}, seed + 2);
    if (sc.half_input) {  // values an fp16 input holds exactly, so both paths see the same floats
      for (index_t i = 0; i < k.numel(); ++i) k.data()[i] = static_cast<float>(seqmix::f16(k.data()[i]));
      for (index_t i = 0; i < v.numel(); ++i) v.data()[i] = static_cast<float>(seqmix::f16(v.data()[i]));
    }
    seqmix::QuantizedPageFormat pf{f.key, f.value, f.key_quant, f.group_size};
    const index_t page_bytes = seqmix::quantized_page_bytes(pf, sc.block_size, sc.Hkv, sc.Dk, sc.Dv);
    const index_t num_blocks = blocks + 3;  // unused pages too
    pages = Tensor<std::uint8_t, 2>({num_blocks, page_bytes});
    std::fill(pages.data(), pages.data() + pages.numel(), std::uint8_t{0xA5});
    tail_k = Tensor<float, 4>({sc.N + 2, 32, sc.Hkv, sc.Dk});
    tail_v = Tensor<float, 4>({sc.N + 2, 32, sc.Hkv, sc.Dv});
    for (index_t n = 0; n < sc.N; ++n) tails.push_back(static_cast<std::int32_t>(sc.N + 1 - n));
    std::vector<std::int32_t> order(static_cast<std::size_t>(num_blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    table = Tensor<std::int32_t, 2>({sc.N, max_blocks});
    std::fill(table.data(), table.data() + table.numel(), 12345);  // unused entries: never read
    std::size_t next = 0;
    for (index_t n = 0; n < sc.N; ++n)
      for (index_t b = 0; b * sc.block_size < lengths[static_cast<std::size_t>(n)]; ++b) table(n, b) = order[next++];
    seqlens.assign(static_cast<std::size_t>(sc.N), 0);
  }

  seqmix::QuantizedKvPages pool() {
    seqmix::QuantizedKvPages p;
    p.pages = pages.view(), p.block_size = sc.block_size, p.tail_k = tail_k.view(), p.tail_v = tail_v.view();
    p.tail_indices = tails;
    p.format = {format.key, format.value, format.key_quant, format.group_size};
    return p;
  }

  // Appends the next `counts[n]` tokens of every sequence to the pool and to the cache.
  void append(const std::vector<index_t>& counts, const seqmix::Executor& ex) {
    std::vector<std::int32_t> cu(1, 0);
    for (index_t n = 0; n < sc.N; ++n) cu.push_back(cu.back() + static_cast<std::int32_t>(counts[static_cast<std::size_t>(n)]));
    const index_t rows = cu.back();
    Tensor<float, 4> kc({1, rows, sc.Hkv, sc.Dk}), vc({1, rows, sc.Hkv, sc.Dv});
    for (index_t n = 0; n < sc.N; ++n)
      for (index_t t = 0; t < counts[static_cast<std::size_t>(n)]; ++t) {
        const index_t src = offsets[static_cast<std::size_t>(n)] + seqlens[static_cast<std::size_t>(n)] + t, dst = cu[static_cast<std::size_t>(n)] + t;
        for (index_t h = 0; h < sc.Hkv; ++h) {
          for (index_t c = 0; c < sc.Dk; ++c) kc(0, dst, h, c) = k(0, src, h, c);
          for (index_t c = 0; c < sc.Dv; ++c) vc(0, dst, h, c) = v(0, src, h, c);
        }
      }
    if (sc.half_input) {
      Tensor<seqmix::f16, 4> kh({1, rows, sc.Hkv, sc.Dk}), vh({1, rows, sc.Hkv, sc.Dv});
      for (index_t i = 0; i < kc.numel(); ++i) kh.data()[i] = seqmix::f16(kc.data()[i]);
      for (index_t i = 0; i < vc.numel(); ++i) vh.data()[i] = seqmix::f16(vc.data()[i]);
      seqmix::PagedKvAppendInputs<seqmix::f16> in;
      in.k = kh.cview(), in.v = vh.cview(), in.block_table = table.cview(), in.cache_seqlens = seqlens, in.cu_seqlens = cu;
      in.rope = rope;
      seqmix::paged_kv_append(in, pool(), ex);
    } else {
      seqmix::PagedKvAppendInputs<float> in;
      in.k = kc.cview(), in.v = vc.cview(), in.block_table = table.cview(), in.cache_seqlens = seqlens, in.cu_seqlens = cu;
      in.rope = rope;
      seqmix::paged_kv_append(in, pool(), ex);
    }
    seqmix::KvAppendInputs ci;
    ci.keys = kc.cview(), ci.values = vc.cview(), ci.batch.cu_seqlens = cu, ci.rope = rope;
    cache.append(ci);
    for (index_t n = 0; n < sc.N; ++n) seqlens[static_cast<std::size_t>(n)] += static_cast<std::int32_t>(counts[static_cast<std::size_t>(n)]);
  }

  // Every token, in three ragged chunks per sequence (a chunk may be empty).
  void fill(std::mt19937_64& rng, const seqmix::Executor& ex) {
    for (int chunk = 0; chunk < 3; ++chunk) {
      std::vector<index_t> counts;
      for (index_t n = 0; n < sc.N; ++n) {
        const index_t left = lengths[static_cast<std::size_t>(n)] - seqlens[static_cast<std::size_t>(n)];
        counts.push_back(chunk == 2 ? left : static_cast<index_t>(rng() % (left + 1)));
      }
      append(counts, ex);
    }
  }

  seqmix::QuantizedPagedAttentionInputs attention_inputs(const Tensor<float, 4>& q) {
    seqmix::QuantizedPagedAttentionInputs in;
    in.q = q.cview(), in.pages = pool(), in.block_table = table.cview(), in.cache_seqlens = seqlens;
    return in;
  }
};

seqmix::PagedAttentionOptions options_of(const Scenario& sc) {
  seqmix::PagedAttentionOptions o;
  o.window = sc.window, o.sink_tokens = sc.sink_tokens, o.softcap = sc.softcap;
  return o;
}

std::string describe(const Format& f, const Scenario& sc, std::uint64_t seed, const std::vector<index_t>& lengths) {
  std::ostringstream s;
  s << f.name << " / " << sc.name << " seed=" << seed << " lengths=";
  for (index_t L : lengths) s << L << ' ';
  return s.str();
}

// Bitwise equality, counting mismatches (reported with the first index).
template <class T, std::size_t R>
void require_identical(const char* what, const seqmix::TensorView<T, R>& a, const seqmix::TensorView<T, R>& b) {
  index_t bad = 0, first = -1;
  for (index_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(a.data() + i, b.data() + i, sizeof(T)) != 0) {
      if (first < 0) first = i;
      ++bad;
    }
  INFO(what << ": " << bad << " of " << a.numel() << " differ, first at flat index " << first);
  REQUIRE(bad == 0);
}

TEST_CASE("quantized paged attention equals kv_cache_attention on a KvCache with the same tokens",
          "[paged][quantized][kv_cache]") {
  const bool small = st::small_test_scale();
  std::uint64_t seed = 100;
  for (const Format& f : kFormats)
    for (const Scenario& sc0 : kScenarios) {
      Scenario sc = sc0;
      if (small) sc.max_len = std::min<index_t>(sc.max_len, 200);
      for (const seqmix::Executor* ex : {static_cast<const seqmix::Executor*>(&seqmix::serial_executor()),
                                         static_cast<const seqmix::Executor*>(&st::two_thread_pool())}) {
        ++seed;
        std::mt19937_64 rng(seed);
        Setup s(f, sc, seed);
        INFO(describe(f, sc, seed, s.lengths) << (ex == &seqmix::serial_executor() ? " serial" : " pool(2)"));
        s.fill(rng, *ex);
        const auto q = st::random_tensor<4>({sc.N, sc.Tq, sc.Hq, sc.Dk}, seed + 3);
        const auto slopes = st::random_tensor<1>({sc.Hq}, seed + 4, 0.01f, 0.1f);
        const auto sinks = st::random_tensor<1>({sc.Hq}, seed + 5);
        Tensor<float, 4> o({sc.N, sc.Tq, sc.Hq, sc.Dv}), o_cache({sc.N, sc.Tq, sc.Hq, sc.Dv}), o_ref({sc.N, sc.Tq, sc.Hq, sc.Dv});
        Tensor<float, 3> lse({sc.N, sc.Tq, sc.Hq}), lse_cache({sc.N, sc.Tq, sc.Hq}), lse_ref({sc.N, sc.Tq, sc.Hq});
        auto in = s.attention_inputs(q);
        if (sc.alibi) in.alibi_slopes = slopes.cview();
        if (sc.sink_logits) in.sink_logits = sinks.cview();
        seqmix::paged_attention(in, {o.view(), lse.view()}, options_of(sc), *ex);

        seqmix::KvCacheAttentionInputs ci;
        ci.q = q.cview(), ci.cache = &s.cache, ci.alibi_slopes = in.alibi_slopes, ci.sink_logits = in.sink_logits;
        const seqmix::AttentionOptions dense = options_of(sc).dense();
        seqmix::kv_cache_attention(ci, {o_cache.view(), lse_cache.view()}, dense, *ex);
        require_identical("o", o.cview(), o_cache.cview());
        require_identical("lse", lse.cview(), lse_cache.cview());
        // And the definition over the cache (entries dequantized, double): the integer kernels'
        // operand rounding only (kv_cache/README.md).
        seqmix::reference::kv_cache_attention(ci, {o_ref.view(), lse_ref.view()}, dense);
        st::require_close("o vs reference::kv_cache_attention", o.cview(), o_ref.cview(), 2e-4);
        st::require_close("lse vs reference::kv_cache_attention", lse.cview(), lse_ref.cview(), 2e-4);

        // One-byte operands: the same pieces and kernels as kv_cache_attention's one-byte call
        // (its accuracy against the definition is test_kv_cache's).
        in.operand_precision = ci.operand_precision = seqmix::KvOperandPrecision::one_byte;
        seqmix::paged_attention(in, {o.view(), lse.view()}, options_of(sc), *ex);
        seqmix::kv_cache_attention(ci, {o_cache.view(), lse_cache.view()}, dense, *ex);
        require_identical("o, one-byte operands", o.cview(), o_cache.cview());
        require_identical("lse, one-byte operands", lse.cview(), lse_cache.cview());
      }
    }
}

TEST_CASE("quantized paged attention with packed queries equals one call per sequence", "[paged][quantized]") {
  const Format f = kFormats[0];
  Scenario sc = kScenarios[0];
  sc.Tq = 1;
  const std::uint64_t seed = 7;
  std::mt19937_64 rng(seed);
  Setup s(f, sc, seed);
  INFO(describe(f, sc, seed, s.lengths));
  s.fill(rng, seqmix::serial_executor());
  // Sequence n gets min(L_n, 1 + 5 n) queries (a verify of up to 16 and decode rows), packed.
  std::vector<std::int32_t> cu(1, 0);
  for (index_t n = 0; n < sc.N; ++n)
    cu.push_back(cu.back() + static_cast<std::int32_t>(std::min<index_t>(s.lengths[static_cast<std::size_t>(n)], 1 + 5 * n)));
  const index_t total = cu.back();
  const auto q = st::random_tensor<4>({1, total, sc.Hq, sc.Dk}, 9);
  Tensor<float, 4> o({1, total, sc.Hq, sc.Dv});
  auto in = s.attention_inputs(q);
  in.cu_seqlens_q = cu;
  seqmix::paged_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
  for (index_t n = 0; n < sc.N; ++n) {
    const index_t q0 = cu[static_cast<std::size_t>(n)], count = cu[static_cast<std::size_t>(n) + 1] - q0;
    Tensor<float, 4> qn({1, count, sc.Hq, sc.Dk}), on({1, count, sc.Hq, sc.Dv});
    for (index_t i = 0; i < count; ++i)
      for (index_t h = 0; h < sc.Hq; ++h)
        for (index_t c = 0; c < sc.Dk; ++c) qn(0, i, h, c) = q(0, q0 + i, h, c);
    auto one = s.attention_inputs(qn);
    const std::int32_t L = s.seqlens[static_cast<std::size_t>(n)];
    const std::vector<std::int32_t> len(1, L), tail(1, s.tails[static_cast<std::size_t>(n)]);
    Tensor<std::int32_t, 2> row({1, s.table.size(1)});
    for (index_t b = 0; b < s.table.size(1); ++b) row(0, b) = s.table(n, b);
    one.block_table = row.cview(), one.cache_seqlens = len, one.pages.tail_indices = tail;
    seqmix::paged_attention(one, {on.view(), {}});
    INFO("sequence " << n << " with " << count << " queries, L=" << L);
    index_t bad = 0;
    for (index_t i = 0; i < count; ++i)
      for (index_t h = 0; h < sc.Hq; ++h)
        for (index_t c = 0; c < sc.Dv; ++c)
          if (std::abs(on(0, i, h, c) - o(0, q0 + i, h, c)) > 1e-5f) ++bad;
    CHECK(bad == 0);
  }
}

TEST_CASE("quantized paged append and attention refuse bad arguments before writing", "[paged][quantized][errors]") {
  // Dk = 32: per-channel and per-token (whole-row) int8 keys then have pages of the same size, so
  // reading a pool in the other key quantization is caught by the page header alone.
  const Format f{"int8/int8 per-channel", KvFormat::int8, KvFormat::int8, KeyQuant::per_channel, 0};
  const Scenario sc{"errors", 2, 4, 2, 32, 32, 32, 1, 100, 0, 0, 0.f, false, false, false};
  std::mt19937_64 rng(3);
  Setup s(f, sc, 3);
  s.fill(rng, seqmix::serial_executor());
  const auto q = st::random_tensor<4>({sc.N, 1, sc.Hq, sc.Dk}, 4);
  Tensor<float, 4> o({sc.N, 1, sc.Hq, sc.Dv});
  std::fill(o.data(), o.data() + o.numel(), 7.f);
  const Tensor<float, 4> o_before = o;
  const Tensor<std::uint8_t, 2> pages_before = s.pages;
  const Tensor<float, 4> tail_before = s.tail_k;
  const auto unchanged = [&] {
    CHECK(std::memcmp(o.data(), o_before.data(), sizeof(float) * static_cast<std::size_t>(o.numel())) == 0);
    CHECK(std::memcmp(s.pages.data(), pages_before.data(), static_cast<std::size_t>(s.pages.numel())) == 0);
    CHECK(std::memcmp(s.tail_k.data(), tail_before.data(), sizeof(float) * static_cast<std::size_t>(s.tail_k.numel())) == 0);
  };
  const auto attend = [&](const seqmix::QuantizedPagedAttentionInputs& in) { seqmix::paged_attention(in, {o.view(), {}}); };
  // For appends: every table entry a valid (spare) page, so only the error under test is hit.
  Tensor<std::int32_t, 2> full_table = s.table;
  for (index_t i = 0; i < full_table.numel(); ++i)
    if (full_table.data()[i] == 12345) full_table.data()[i] = static_cast<std::int32_t>(s.pages.size(0) - 1);

  SECTION("format mismatch: the pool read with per-token keys") {
    auto in = s.attention_inputs(q);
    in.pages.format.key_quant = KeyQuant::per_token;
    st::require_shape_error("pages", [&] { attend(in); });
  }
  SECTION("format mismatch: page bytes of another format") {
    auto in = s.attention_inputs(q);
    in.pages.format.value_format = KvFormat::int4;
    st::require_shape_error("pages", [&] { attend(in); });
  }
  SECTION("block size neither 8, 16 nor a multiple of the group") {
    for (const index_t bs : {1, 4, 24, 48}) {
      auto in = s.attention_inputs(q);
      in.pages.block_size = bs;
      st::require_shape_error("block_size", [&] { attend(in); });
      const auto k1 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dk}, 5), v1 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dv}, 6);
      seqmix::PagedKvAppendInputs<float> ai;
      ai.k = k1.cview(), ai.v = v1.cview(), ai.block_table = full_table.cview(), ai.cache_seqlens = s.seqlens;
      seqmix::QuantizedKvPages pool = s.pool();
      pool.block_size = bs;
      st::require_shape_error("block_size", [&] { seqmix::paged_kv_append(ai, pool); });
    }
  }
  SECTION("a table entry naming a page no sequence wrote, read on two threads") {
    // The headers are checked by the pieces' tasks that read the pages: the error still comes
    // before the merge writes o.
    std::vector<bool> used(static_cast<std::size_t>(s.pages.size(0)), false);
    for (index_t n = 0; n < sc.N; ++n)
      for (index_t b = 0; b * sc.block_size < s.lengths[static_cast<std::size_t>(n)]; ++b)
        used[static_cast<std::size_t>(s.table(n, b))] = true;
    const auto spare = static_cast<std::int32_t>(std::find(used.begin(), used.end(), false) - used.begin());
    for (index_t n = 0; n < sc.N; ++n) {
      if (s.lengths[static_cast<std::size_t>(n)] < 32) continue;  // no whole group: no page read
      INFO("sequence " << n << " of length " << s.lengths[static_cast<std::size_t>(n)] << ", spare page " << spare);
      auto in = s.attention_inputs(q);
      Tensor<std::int32_t, 2> table = s.table;
      table(n, 0) = spare;
      in.block_table = table.cview();
      st::require_shape_error("pages", [&] { seqmix::paged_attention(in, {o.view(), {}}, {}, st::two_thread_pool()); });
    }
  }
  SECTION("operand precision outside the enum") {
    auto in = s.attention_inputs(q);
    in.operand_precision = static_cast<seqmix::KvOperandPrecision>(7);
    st::require_shape_error("operand_precision", [&] { attend(in); });
  }
  SECTION("table entry out of range") {
    auto in = s.attention_inputs(q);
    Tensor<std::int32_t, 2> table = s.table;
    table(1, 0) = static_cast<std::int32_t>(s.pages.size(0));
    in.block_table = table.cview();
    st::require_shape_error("block_table", [&] { attend(in); });
  }
  SECTION("sequence longer than its pages") {
    auto in = s.attention_inputs(q);
    std::vector<std::int32_t> lens = s.seqlens;
    lens[0] = static_cast<std::int32_t>(s.table.size(1) * sc.block_size + 1);
    in.cache_seqlens = lens;
    st::require_shape_error("cache_seqlens", [&] { attend(in); });
  }
  SECTION("tail index out of range, duplicated on append, slot_mapping on append") {
    auto in = s.attention_inputs(q);
    const std::vector<std::int32_t> bad_tails{0, static_cast<std::int32_t>(sc.N + 2)};
    in.pages.tail_indices = bad_tails;
    st::require_shape_error("tail_indices", [&] { attend(in); });
    const auto k1 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dk}, 5), v1 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dv}, 6);
    seqmix::PagedKvAppendInputs<float> ai;
    ai.k = k1.cview(), ai.v = v1.cview(), ai.block_table = full_table.cview(), ai.cache_seqlens = s.seqlens;
    seqmix::QuantizedKvPages pool = s.pool();
    const std::vector<std::int32_t> same{1, 1};
    pool.tail_indices = same;
    st::require_shape_error("tail_indices", [&] { seqmix::paged_kv_append(ai, pool); });
    const std::vector<std::int64_t> slots{0, 1};
    ai.slot_mapping = slots;
    st::require_shape_error("slot_mapping", [&] { seqmix::paged_kv_append(ai, s.pool()); });
  }
  SECTION("append beyond the pages, and into a pool of another format") {
    const index_t extra = s.table.size(1) * sc.block_size;  // more than any sequence has room for
    const auto k1 = st::random_tensor<4>({sc.N, extra, sc.Hkv, sc.Dk}, 5), v1 = st::random_tensor<4>({sc.N, extra, sc.Hkv, sc.Dv}, 6);
    seqmix::PagedKvAppendInputs<float> ai;
    ai.k = k1.cview(), ai.v = v1.cview(), ai.block_table = full_table.cview(), ai.cache_seqlens = s.seqlens;
    st::require_shape_error("cache_seqlens", [&] { seqmix::paged_kv_append(ai, s.pool()); });
    const auto k2 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dk}, 5), v2 = st::random_tensor<4>({sc.N, 1, sc.Hkv, sc.Dv}, 6);
    ai.k = k2.cview(), ai.v = v2.cview();
    seqmix::QuantizedKvPages pool = s.pool();
    pool.format.key_quant = KeyQuant::per_token;
    if (s.lengths[0] >= 32 || s.lengths[1] >= 32) st::require_shape_error("pages", [&] { seqmix::paged_kv_append(ai, pool); });
  }
  unchanged();
}

}  // namespace

TEST_CASE("quantized paged attention with a relative bias, head scales and a fused rope equals kv_cache_attention",
          "[paged][quantized][bias][rope]") {
  // kv_cache_attention with the same bias equals the bias as a dense mask (test_kv_cache_bias);
  // the fused rope equals rope(q) then the plain call; both appends rotate the keys with the
  // table (KvCache::append's is checked against rope then append in test_attention_rope).
  const Format& f = kFormats[0];
  seqmix::RopeConfig rc;
  rc.rotary_dim = 32, rc.scheme = seqmix::RopeScheme::llama3, rc.factor = 8.0, rc.original_max_position_embeddings = 64;
  const seqmix::RopeTable table(rc, 1024);
  std::uint64_t seed = 900;
  for (const Scenario& sc0 : {kScenarios[0], kScenarios[2], kScenarios[3]}) {
    Scenario sc = sc0;
    sc.max_len = std::min<index_t>(sc.max_len, 300);
    const auto t5 = st::random_tensor<2>({sc.Hq, 16}, seed + 10);
    const auto r = st::random_tensor<1>({sc.Hq}, seed + 11, 0.2f, 1.f);
    const auto scales = st::random_tensor<1>({sc.Hq}, seed + 12, 0.5f, 1.5f);
    for (const seqmix::RelativeBiasKind kind : {seqmix::RelativeBiasKind::t5, seqmix::RelativeBiasKind::kerple_log}) {
      ++seed;
      std::mt19937_64 rng(seed);
      Setup s(f, sc, seed);
      INFO(describe(f, sc, seed, s.lengths) << " kind=" << static_cast<int>(kind));
      s.rope = &table;  // the quantized append and KvCache::append rotate the keys they store
      s.fill(rng, st::two_thread_pool());
      const auto q = st::random_tensor<4>({sc.N, sc.Tq, sc.Hq, sc.Dk}, seed + 3);
      Tensor<float, 4> o({sc.N, sc.Tq, sc.Hq, sc.Dv}), o_cache({sc.N, sc.Tq, sc.Hq, sc.Dv}), o_ref({sc.N, sc.Tq, sc.Hq, sc.Dv});
      auto in = s.attention_inputs(q);
      in.relative_bias.kind = kind, in.relative_bias.table = t5.cview(), in.relative_bias.max_distance = 50;
      in.relative_bias.r1 = r.cview(), in.relative_bias.r2 = r.cview();
      in.head_scales = scales.cview(), in.rope = &table;
      seqmix::paged_attention(in, {o.view(), {}}, options_of(sc), st::two_thread_pool());

      seqmix::KvCacheAttentionInputs ci;
      ci.q = q.cview(), ci.cache = &s.cache, ci.relative_bias = in.relative_bias, ci.head_scales = in.head_scales;
      ci.rope = &table;
      const seqmix::AttentionOptions dense = options_of(sc).dense();
      seqmix::kv_cache_attention(ci, {o_cache.view(), {}}, dense, st::two_thread_pool());
      st::require_close("o vs kv_cache_attention (bias, head scales, rope)", o.cview(), o_cache.cview(), 1e-6);
      seqmix::reference::kv_cache_attention(ci, {o_ref.view(), {}}, dense);
      st::require_close("o vs reference::kv_cache_attention (bias, head scales, rope)", o.cview(), o_ref.cview(), 2e-4);

      // rope(q) at the queries' positions, then the call without the table.
      std::vector<std::int64_t> qpos;
      for (index_t n = 0; n < sc.N; ++n)
        for (index_t t = 0; t < sc.Tq; ++t) qpos.push_back(s.seqlens[static_cast<std::size_t>(n)] - sc.Tq + t);
      Tensor<float, 4> qr({sc.N, sc.Tq, sc.Hq, sc.Dk}), o_plain({sc.N, sc.Tq, sc.Hq, sc.Dv});
      seqmix::rope(table, {q.cview(), qpos}, {qr.view()});
      auto plain = in;
      plain.q = qr.cview(), plain.rope = nullptr;
      seqmix::paged_attention(plain, {o_plain.view(), {}}, options_of(sc), st::two_thread_pool());
      st::require_close("o vs rope(q) then paged_attention", o.cview(), o_plain.cview(), 1e-6);

      // A table shorter than the sequences: refused before writing.
      const seqmix::RopeTable short_table(rc, 8);
      in.rope = &short_table;
      o.fill(3.f);
      st::require_shape_error("rope", [&] { seqmix::paged_attention(in, {o.view(), {}}, options_of(sc)); });
      for (float x : o) REQUIRE(x == 3.f);
    }
  }
}
