// KV cache hot path without heap allocation: a cache in a caller arena serving a speculative
// decode loop (append a draft, truncate to the accepted tokens, append the correction) makes no
// heap allocation after warm-up.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/kv_cache/paged.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/random.hpp"

namespace {

using seqmix::index_t;

TEST_CASE("kv cache in an arena: append and truncate allocate nothing after warm-up", "[alloc][kv_cache]") {
  for (seqmix::KvFormat f : {seqmix::KvFormat::f16, seqmix::KvFormat::int8, seqmix::KvFormat::int4}) {
    std::vector<std::uint8_t> buffer(16u << 20);
    seqmix::KvArena arena(buffer.data(), buffer.size());
    seqmix::KvCacheConfig cfg;
    cfg.batch = 4, cfg.kv_heads = 2, cfg.key_dim = 64, cfg.value_dim = 64;
    cfg.key_format = f, cfg.value_format = f, cfg.residual = 16, cfg.rollback = 8, cfg.arena = &arena;
    seqmix::KvCache cache(cfg);
    // Dense decode-style appends of 4 tokens to every row (SequenceMap::make, used by the ragged
    // form, still formats message strings on each call: core/batch.hpp), then rollbacks of 1 to
    // 3 tokens per row.
    const auto k = seqmix::testing::random_tensor<4>({4, 4, 2, 64}, 1);
    const auto v = seqmix::testing::random_tensor<4>({4, 4, 2, 64}, 2);
    auto step = [&] {
      cache.append(k.cview(), v.cview());
      for (index_t b = 0; b < 4; ++b) cache.truncate(b, cache.next_position(b) - 1 - b % 3);
    };
    for (int i = 0; i < 200; ++i) step();  // warm-up: the residual and block free lists reach steady state
    seqmix::testing::AllocationCounter counter;
    for (int i = 0; i < 100; ++i) step();
    const std::size_t allocations = counter.allocations();  // read before INFO, whose stream allocates
    INFO(seqmix::format_name(f));
    // Nothing (before: 4 per ragged append from SequenceMap's messages). The "sporadic"
    // allocations once bounded here were this test's own: counted after INFO had built its
    // message stream (Catch allocates it on first use), not the cache's.
    CHECK(allocations == 0);
    CHECK(cache.size(0, 1) > 200);
  }
}

TEST_CASE("kv cache decode attention allocates nothing after warm-up", "[alloc][kv_cache]") {
  const seqmix::ThreadPool pool(2);
  for (seqmix::KvFormat f : {seqmix::KvFormat::f16, seqmix::KvFormat::int8, seqmix::KvFormat::int4})
    for (seqmix::KeyQuant kq : {seqmix::KeyQuant::per_channel, seqmix::KeyQuant::per_token}) {
      seqmix::KvCacheConfig cfg;
      cfg.batch = 2, cfg.kv_heads = 2, cfg.key_dim = 64, cfg.value_dim = 64;
      cfg.key_format = f, cfg.value_format = f, cfg.key_quant = kq, cfg.group_size = kq == seqmix::KeyQuant::per_token ? 32 : 0;
      cfg.residual = 16;
      seqmix::KvCache cache(cfg);
      const auto k = seqmix::testing::random_tensor<4>({2, 700, 2, 64}, 1);
      const auto v = seqmix::testing::random_tensor<4>({2, 700, 2, 64}, 2);
      cache.append(k.cview(), v.cview());
      const auto q = seqmix::testing::random_tensor<4>({2, 1, 8, 64}, 3);
      seqmix::Tensor<float, 4> o({2, 1, 8, 64});
      seqmix::Tensor<float, 3> lse({2, 1, 8});
      seqmix::KvCacheAttentionInputs in;
      in.q = q.cview(), in.cache = &cache;
      seqmix::AttentionOptions opt;
      opt.causal = true;
      for (const seqmix::Executor* ex : {static_cast<const seqmix::Executor*>(&seqmix::serial_executor()),
                                         static_cast<const seqmix::Executor*>(&pool)})
        for (seqmix::KvOperandPrecision precision : {seqmix::KvOperandPrecision::two_byte, seqmix::KvOperandPrecision::one_byte}) {
          in.operand_precision = precision;
          const std::size_t allocations = seqmix::testing::allocations_after_warmup(*ex,
              [&] { seqmix::kv_cache_attention(in, {o.view(), lse.view()}, opt, *ex); });
          INFO(seqmix::format_name(f) << (kq == seqmix::KeyQuant::per_token ? " per-token" : " per-channel")
                                      << (ex == &pool ? " pool(2)" : " serial")
                                      << (precision == seqmix::KvOperandPrecision::one_byte ? " one-byte" : " two-byte"));
          // Nothing (before: 4 per call from validation messages, and the per-call tables and task
          // scratch). The sporadic allocations once bounded here (< 10) were a pool worker building
          // its thread_local scratch in the first call it joined, which under load came after the
          // warm-up: the tasks now take scratch the calling thread builds (KvScratchSet).
          CHECK(allocations == 0);
        }
    }
}

TEST_CASE("quantized paged append and decode attention allocate nothing after warm-up", "[alloc][kv_cache][paged]") {
  // 4 sequences of 700..703 tokens in int8 / int4 pages of 64 and 16 (a group over two pages); each step appends one token per
  // sequence (a group is quantized into its page every 32 steps) and attends: sequences grow,
  // split into more pieces, and cross page and group boundaries inside the counted steps.
  const seqmix::ThreadPool pool(2);
  constexpr index_t N = 4, Hkv = 2, Hq = 8, D = 64;
  for (const index_t bs : {64, 16})
  for (seqmix::KvFormat f : {seqmix::KvFormat::int8, seqmix::KvFormat::int4})
    for (const seqmix::Executor* ex : {static_cast<const seqmix::Executor*>(&seqmix::serial_executor()),
                                       static_cast<const seqmix::Executor*>(&pool)}) {
      const index_t max_blocks = 1024 / bs;
      seqmix::QuantizedKvPages pages;
      pages.format = {f, f, seqmix::KeyQuant::per_channel, 0};
      seqmix::Tensor<std::uint8_t, 2> storage({N * max_blocks, seqmix::quantized_page_bytes(pages.format, bs, Hkv, D, D)});
      seqmix::Tensor<float, 4> tail_k({N, 32, Hkv, D}), tail_v({N, 32, Hkv, D});
      pages.pages = storage.view(), pages.block_size = bs, pages.tail_k = tail_k.view(), pages.tail_v = tail_v.view();
      seqmix::Tensor<std::int32_t, 2> table({N, max_blocks});
      for (index_t i = 0; i < table.numel(); ++i) table.data()[i] = static_cast<std::int32_t>((i * 7) % (N * max_blocks));
      std::vector<std::int32_t> lengths(N, 0);
      {
        const auto k = seqmix::testing::random_tensor<4>({N, 700, Hkv, D}, 1), v = seqmix::testing::random_tensor<4>({N, 700, Hkv, D}, 2);
        seqmix::PagedKvAppendInputs<float> in;
        in.k = k.cview(), in.v = v.cview(), in.block_table = table.cview(), in.cache_seqlens = lengths;
        seqmix::paged_kv_append(in, pages, *ex);
        for (auto& L : lengths) L += 700;
      }
      const auto k1 = seqmix::testing::random_tensor<4>({N, 1, Hkv, D}, 3), v1 = seqmix::testing::random_tensor<4>({N, 1, Hkv, D}, 4);
      const auto q = seqmix::testing::random_tensor<4>({N, 1, Hq, D}, 5);
      seqmix::Tensor<float, 4> o({N, 1, Hq, D});
      seqmix::PagedKvAppendInputs<float> append;
      append.k = k1.cview(), append.v = v1.cview(), append.block_table = table.cview(), append.cache_seqlens = lengths;
      seqmix::QuantizedPagedAttentionInputs attend;
      attend.q = q.cview(), attend.pages = pages, attend.block_table = table.cview(), attend.cache_seqlens = lengths;
      const std::size_t allocations = seqmix::testing::allocations_after_warmup(*ex, [&] {
        seqmix::paged_kv_append(append, pages, *ex);
        for (auto& L : lengths) ++L;
        seqmix::paged_attention(attend, {o.view(), {}}, {}, *ex);
      });
      INFO(seqmix::format_name(f) << " bs " << bs << (ex == &pool ? " pool(2)" : " serial"));
      CHECK(allocations == 0);
      // The warm-up on every thread and the counted calls: each appended a token.
      CHECK(lengths[0] == 700 + seqmix::testing::calls_of_allocations_after_warmup(*ex));
    }
}

}  // namespace
