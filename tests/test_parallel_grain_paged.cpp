// The paged decodes (paged_attention over fp32 / 16-bit pages and over quantized pages) split
// each sequence's keys into pieces and, from 8 threads on, combine the pieces' rows in parallel
// as the dense decode does (merge.hpp, finish_row_groups / combine_grain). With an executor that
// claims 64 threads (CountingExecutor, serial) and one that claims 2: outputs match the
// reference, and the runs are the ones intended (the pieces, then the combine's tasks; on 2
// threads the combine stays on the caller).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/kv_cache/paged.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

namespace st = seqmix::testing;
using seqmix::index_t;
using seqmix::Tensor;

// Top-level run() sizes recorded by `ex` (cleared before each call).
std::vector<index_t> run_sizes(const st::CountingExecutor& ex) {
  std::vector<index_t> sizes;
  for (const st::RecordedRun& run : ex.runs())
    if (!run.nested) sizes.push_back(run.tasks);
  return sizes;
}

// Llama-3-8B's decode layout (32 query heads on 8 KV heads, D = 128), one query per sequence,
// three sequences of ragged lengths; pages of 16 tokens, each sequence's pages after the last's.
constexpr index_t kN = 3, kHq = 32, kHkv = 8, kD = 128, kBlock = 16, kMaxPages = 150;
const std::vector<std::int32_t> kLengths = {2400, 900, 40};

index_t pages_of(index_t n) { return (kLengths[static_cast<std::size_t>(n)] + kBlock - 1) / kBlock; }

index_t page_count() {
  index_t pages = 0;
  for (index_t n = 0; n < kN; ++n) pages += pages_of(n);
  return pages;
}

Tensor<std::int32_t, 2> block_table() {
  Tensor<std::int32_t, 2> table({kN, kMaxPages});
  table.fill(-1);  // past a sequence's pages: never read
  std::int32_t next = 0;
  for (index_t n = 0; n < kN; ++n)
    for (index_t b = 0; b < pages_of(n); ++b) table(n, b) = next++;
  return table;
}

}  // namespace

TEST_CASE("parallel grain paged: paged_attention combines split rows in parallel on 64 claimed threads",
          "[parallel_grain][paged]") {
  const auto k = st::random_tensor<4>({page_count(), kBlock, kHkv, kD}, 31);
  const auto v = st::random_tensor<4>({page_count(), kBlock, kHkv, kD}, 32);
  const auto q = st::random_tensor<4>({kN, 1, kHq, kD}, 33);
  const auto sinks = st::random_tensor<1>({kHq}, 34);
  const auto table = block_table();
  seqmix::PagedAttentionInputs<float> in;
  in.q = q.view(), in.k_pages = k.view(), in.v_pages = v.view(), in.block_table = table.view();
  in.cache_seqlens = kLengths, in.sink_logits = sinks.view();
  Tensor<float, 4> o({kN, 1, kHq, kD}), o_ref({kN, 1, kHq, kD});
  Tensor<float, 3> lse({kN, 1, kHq}), lse_ref({kN, 1, kHq});
  seqmix::reference::paged_attention(in, {o_ref.view(), lse_ref.view()});
  st::CountingExecutor wide(64), narrow(2);
  for (const st::CountingExecutor* ex : {&wide, &narrow}) {
    o.fill(-7.f), lse.fill(-7.f);
    seqmix::paged_attention(in, {o.view(), lse.view()}, {}, *ex);
    INFO("concurrency " << ex->concurrency());
    CHECK(st::compare(o.cview(), o_ref.cview(), 1e-4).ok);
    CHECK(st::compare(lse.cview(), lse_ref.cview(), 1e-4).ok);
  }
  // Tiles of 32 keys (8 heads x 128 floats a key): 75, 29 and 2 of them. 64 threads: 256
  // pieces wanted, shared in proportion to the tiles but none under 4 tiles (kMinTilesPerSplit):
  // 18, 7 and 1 pieces; the combine: the two split sequences' 2 x 32 rows, each merging up to
  // 18 pieces of 128 floats, in 10 tasks of 6-7 rows (combine_grain: 7).
  CHECK(run_sizes(wide) == std::vector<index_t>{26, 10});
  // 2 threads: 8 pieces wanted (6, 3 and 1); the combine on the caller.
  CHECK(run_sizes(narrow) == std::vector<index_t>{10});
}

TEST_CASE("parallel grain paged: quantized paged_attention combines rows in parallel on 64 claimed threads",
          "[parallel_grain][paged][quantized]") {
  const seqmix::QuantizedPageFormat format{seqmix::KvFormat::int8, seqmix::KvFormat::int8,
                                           seqmix::KeyQuant::per_channel, 0};
  const index_t page_bytes = seqmix::quantized_page_bytes(format, kBlock, kHkv, kD, kD);
  Tensor<std::uint8_t, 2> pages({page_count(), page_bytes});
  Tensor<float, 4> tail_k({kN, 32, kHkv, kD}), tail_v({kN, 32, kHkv, kD});
  seqmix::QuantizedKvPages pool;
  pool.pages = pages.view(), pool.block_size = kBlock, pool.tail_k = tail_k.view(), pool.tail_v = tail_v.view();
  pool.format = format;
  // The same tokens into the pages and into a KvCache (residual 0, same formats).
  std::vector<std::int32_t> cu(1, 0);
  for (std::int32_t L : kLengths) cu.push_back(cu.back() + L);
  const auto k = st::random_tensor<4>({1, cu.back(), kHkv, kD}, 41), v = st::random_tensor<4>({1, cu.back(), kHkv, kD}, 42);
  const auto table = block_table();
  const std::vector<std::int32_t> empty(kN, 0);
  seqmix::PagedKvAppendInputs<float> append;
  append.k = k.cview(), append.v = v.cview(), append.block_table = table.cview(), append.cache_seqlens = empty;
  append.cu_seqlens = cu;
  seqmix::paged_kv_append(append, pool);
  seqmix::KvCacheConfig cfg;
  cfg.batch = kN, cfg.kv_heads = kHkv, cfg.key_dim = kD, cfg.value_dim = kD, cfg.residual = 0;
  cfg.key_format = format.key_format, cfg.value_format = format.value_format, cfg.key_quant = format.key_quant;
  seqmix::KvCache cache(cfg);
  seqmix::KvAppendInputs cache_append;
  cache_append.keys = k.cview(), cache_append.values = v.cview(), cache_append.batch.cu_seqlens = cu;
  cache.append(cache_append);

  const auto q = st::random_tensor<4>({kN, 1, kHq, kD}, 43);
  const auto sinks = st::random_tensor<1>({kHq}, 44);
  seqmix::QuantizedPagedAttentionInputs in;
  in.q = q.cview(), in.pages = pool, in.block_table = table.cview(), in.cache_seqlens = kLengths;
  in.sink_logits = sinks.cview();
  seqmix::KvCacheAttentionInputs cache_in;
  cache_in.q = q.cview(), cache_in.cache = &cache, cache_in.sink_logits = sinks.cview();
  Tensor<float, 4> o({kN, 1, kHq, kD}), o_cache({kN, 1, kHq, kD}), o_ref({kN, 1, kHq, kD});
  Tensor<float, 3> lse({kN, 1, kHq}), lse_cache({kN, 1, kHq}), lse_ref({kN, 1, kHq});
  seqmix::reference::kv_cache_attention(cache_in, {o_ref.view(), lse_ref.view()});
  st::CountingExecutor wide(64), narrow(2);
  for (st::CountingExecutor* ex : {&wide, &narrow}) {
    INFO("concurrency " << ex->concurrency());
    seqmix::kv_cache_attention(cache_in, {o_cache.view(), lse_cache.view()}, {}, *ex);
    ex->clear();
    seqmix::paged_attention(in, {o.view(), lse.view()}, {}, *ex);
    // The same kernels, pieces and combine as kv_cache_attention: within rounding of each other
    // (and of the definition over the dequantized entries).
    CHECK(st::compare(o.cview(), o_cache.cview(), 1e-5).ok);
    CHECK(st::compare(lse.cview(), lse_cache.cview(), 1e-5).ok);
    CHECK(st::compare(o.cview(), o_ref.cview(), 2e-4).ok);
    CHECK(st::compare(lse.cview(), lse_ref.cview(), 2e-4).ok);
  }
  // 64 threads: up to ceil(16 * 64 / 24) = 43 pieces per (sequence, KV head) of at least 8
  // groups of 32 tokens: 9, 3 and 1 of them (8 x 13 pieces); the combine: 3 x 32 rows merging
  // up to 9 pieces of 128 floats, in 7 tasks of 13-14 rows (combine_grain: 14).
  CHECK(run_sizes(wide) == std::vector<index_t>{104, 7});
  CHECK(run_sizes(narrow) == std::vector<index_t>{8});  // the pieces in blocks; the combine inline
}
