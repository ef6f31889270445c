// Decode attention over a compressed KV cache (kv_cache/attention.hpp), 2 threads.
//
// Names kv/<storage>/decode/Hq<>_Hkv<>_D<>_Tk<>; GB/s = KvCache::bytes() (codes + parameters +
// positions + entry map) / time, i.e. the cache bytes read once per call; compare with the
// machine's ~68 GB/s 2-core streaming bandwidth. The reference form (entry-by-entry
// dequantization, double accumulation, single thread) runs on Tk = 1024 as a baseline. The cache
// draws its blocks from the heap (KvCacheConfig::arena null): blocks of 32 tokens, 8-16 KiB each,
// too small for AlignedAllocator's huge-page path, so they sit in 4 KiB pages.
// kv/<int8|int4>/decode/..._one_byte: the same cache read with one-byte operands
// (KvCacheAttentionInputs::operand_precision); speedup_vs_two_byte = process CPU time of the
// default two-byte call over the one-byte call, alternated (st::alternated_cpu_medians).
// kv/<storage>/decode/..._Tk16384_cold: the same call, each one after reading 256 MB of other
// data (not timed: manual time of the call alone), so the cache comes from DRAM. Without it a
// 16384-token cache that fits the L3 in good part (int8 41 MB, int4 24 MB; fp16 67 MB and fp32
// 134 MB less so) is partly re-read from the L3 call after call, and the row overstates a server
// whose other sequences and layers evict it between two steps of one sequence.
// kv/<storage>/decode/..._Tk16384_huge_arena: the same cache with every byte in a KvArena over
// one HugePageBuffer (2 MiB pages, core/huge_pages.hpp), the way a serving engine allocates its
// KV memory; its ratio to the row above is what huge pages (and the arena's packing) buy.
//
// attention/paged/<format>/decode/N16_Tk4096_Hq32_Hkv8_D128_bs<16|32|64>: paged_attention over
// quantized pages (kv_cache/paged.hpp; pages of 16 tokens, each half a group's image, and of 32
// and 64 tokens, whole quantization groups; shuffled block table) for 16 sequences of 4096 tokens, beside ..._kv_cache_attention:
// a KvCache (batch 16, residual 0) holding the same tokens. GB/s on the bytes read: the pages'
// group images (codes + parameters) of every sequence, or KvCache::bytes(). The page pool is a
// Tensor, so in 2 MiB pages (AlignedAllocator, as a serving engine would allocate it).
//
// kv/dmc_<r>x/decode/Hq32_Hkv8_D128_Tk16384: dmc_decode_step over a DmcCache that absorbed 16384
// tokens merged r to a slot (r = 4: 4096 slots per head; r = 1: no merging), beside
// kv/fp32/decode/..._Tk16384, a KvCache of the same tokens in fp32 (the plain decode DMC
// replaces). The step token merges, so the cache keeps its size over the iterations. GB/s on the
// bytes held (DmcCache::bytes(), KvCache::bytes()).
//
// kv/pq_m<m>_k256/decode/Hq32_Hkv8_D128_Tk16384 and kv/sign1_g<g>/decode/...: coded_kv_cache_attention
// (kv_cache/coded) over a CodedKvCache of the same random tokens: product quantization with m
// sub-spaces of 256 centroids (fit by k-means, 4 iterations, on the first 2048 tokens), or 1-bit
// signs with one mean-|x| scale per g channels. Compare with kv/int4 and kv/fp16 at Tk16384 in the
// same run. GB/s on CodedKvCache::bytes() (codes, scales, flags; the PQ codebooks, 2 x 128 KB per
// KV head, are read once per call and not counted).
// kv/<pq_m..|sign1_g..>/decode/..._kv_cache: the same codes as a KvCache's coded storage
// (KvCacheConfig::coded, residual 0) read by kv_cache_attention; GB/s on KvCache::bytes() (codes,
// scales, positions, entry map).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/huge_pages.hpp"
#include "seqmix/kv_cache/paged.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::KeyQuant;
namespace st = seqmix::testing;

struct Setup {
  const char* name;
  KvFormat key, value;
};

constexpr Setup kSetups[] = {
    {"fp16", KvFormat::f16, KvFormat::f16},
    {"int8", KvFormat::int8, KvFormat::int8},  // per-channel keys, per-token values
    {"int4", KvFormat::int4, KvFormat::int4},
};

// Where a decode benchmark's KvCache keeps its bytes.
enum class Storage { heap, huge_arena };
// Whether each timed call finds the cache where the previous call left it (warm: partly in the
// L3 when it is small enough) or after 256 MB of other reads (cold: from DRAM).
enum class Residency { warm, cold };

// Reads 256 MB (a few times any L3 of the machines this runs on) of a buffer of its own.
void evict_caches() {
  static const std::vector<float> other(std::size_t{64} << 20, 1.f);
  float sum = 0.f;
  for (std::size_t i = 0; i < other.size(); i += 16) sum += other[i];  // one load per 64-byte line
  benchmark::DoNotOptimize(sum);
}

// KV memory as a serving engine allocates it: one buffer in 2 MiB pages, carved by a KvArena.
// Sized for the one-shot append of Tk fp32 tokens (the residual window grows geometrically up to
// twice their bytes before the blocks are flushed) plus the blocks; only what is carved is touched.
struct HugeArena {
  seqmix::HugePageBuffer buffer;
  std::optional<seqmix::KvArena> arena;
  explicit HugeArena(std::size_t bytes) : buffer(bytes) { arena.emplace(buffer.data(), buffer.size()); }
};

void decode(benchmark::State& state, Setup setup, index_t Hq, index_t Hkv, index_t D, index_t Tk, bool reference,
            Storage storage = Storage::heap,
            seqmix::KvOperandPrecision precision = seqmix::KvOperandPrecision::two_byte,
            Residency residency = Residency::warm) {
  seqmix::KvCacheConfig config;
  config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D;
  config.key_format = setup.key, config.value_format = setup.value, config.key_quant = KeyQuant::per_channel;
  std::optional<HugeArena> huge;
  if (storage == Storage::huge_arena) {
    huge.emplace(static_cast<std::size_t>(4 * Tk * Hkv * 2 * D) * sizeof(float) + (std::size_t{64} << 20));
    config.arena = &*huge->arena;
  }
  seqmix::KvCache cache(config);
  {
    const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 1), v = st::random_tensor<4>({1, Tk, Hkv, D}, 2);
    cache.append(k.view(), v.view());
  }
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 3);
  seqmix::Tensor<float, 4> o({1, 1, Hq, D});
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache, in.operand_precision = precision;
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    if (residency == Residency::cold) evict_caches();
    const auto start = std::chrono::steady_clock::now();
    if (reference)
      seqmix::reference::kv_cache_attention(in, {o.view(), {}}, options);
    else
      seqmix::kv_cache_attention(in, {o.view(), {}}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    if (residency == Residency::cold)  // registered with UseManualTime: the call alone
      state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  seqmix::testing::report_gbytes(state, static_cast<double>(cache.bytes()));
  state.counters["bytes/token"] = cache.bytes_per_token();
  if (precision == seqmix::KvOperandPrecision::one_byte) {  // process CPU of two-byte / one-byte calls, alternated
    const auto call = [&](seqmix::KvOperandPrecision p) {
      return [&, p] {
        seqmix::KvCacheAttentionInputs with = in;
        with.operand_precision = p;
        seqmix::kv_cache_attention(with, {o.view(), {}}, options, st::two_thread_pool());
      };
    };
    const auto cpu = st::alternated_cpu_medians(call(seqmix::KvOperandPrecision::two_byte), call(precision));
    state.counters["speedup_vs_two_byte"] = cpu[0] / cpu[1];
  }
}

// The DMC cache is filled with the update the operators apply (detail::dmc_update), not through
// dmc_attention, whose prefill would attend 16384 queries first.
void dmc_decode(benchmark::State& state, index_t ratio, index_t Hq, index_t Hkv, index_t D, index_t Tk) {
  seqmix::DmcCacheConfig config;
  config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D, config.capacity = Tk / ratio;
  seqmix::DmcCache cache(config);
  {
    const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 1), v = st::random_tensor<4>({1, Tk, Hkv, D}, 2);
    for (index_t h = 0; h < Hkv; ++h)
      for (index_t t = 0; t < Tk; ++t)
        seqmix::detail::dmc_update(cache, 0, h, k.cview().ptr(index_t{0}, t, h, index_t{0}), 1, v.cview().ptr(index_t{0}, t, h, index_t{0}), 1,
                                   t % ratio == 0 ? 0.f : 1.f, 0.5f);
  }
  const auto q = st::random_tensor<3>({1, Hq, D}, 3), k1 = st::random_tensor<3>({1, Hkv, D}, 4),
             v1 = st::random_tensor<3>({1, Hkv, D}, 5);
  seqmix::Tensor<float, 2> merge({1, Hkv}), omega({1, Hkv});
  for (auto& x : merge) x = 1.f;
  for (auto& x : omega) x = 0.5f;
  seqmix::Tensor<float, 3> o({1, Hq, D});
  const seqmix::DmcStepInputs in{q.cview(), k1.cview(), v1.cview(), merge.cview(), omega.cview()};
  for (auto _ : state) {
    seqmix::dmc_decode_step(in, cache, o.view(), {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  seqmix::testing::report_gbytes(state, static_cast<double>(cache.bytes()));
  state.counters["slots"] = static_cast<double>(cache.size(0, 0));
  // Per token and KV head, as KvCache::bytes_per_token.
  state.counters["bytes/token"] = static_cast<double>(cache.bytes()) / static_cast<double>(Tk * Hkv);
}

// 16 sequences x Tk tokens in a quantized page pool and in a KvCache; decode one query each.
struct PagedSetup {
  static constexpr index_t N = 16, Hq = 32, Hkv = 8, D = 128;
  seqmix::QuantizedPageFormat format;
  index_t block_size, Tk;
  seqmix::Tensor<std::uint8_t, 2> pages;
  seqmix::Tensor<float, 4> tail_k, tail_v;
  seqmix::Tensor<std::int32_t, 2> table;
  std::vector<std::int32_t> lengths;
  std::unique_ptr<seqmix::KvCache> cache;

  PagedSetup(const Setup& s, index_t bs, index_t tk)
      : format{s.key, s.value, KeyQuant::per_channel, 0}, block_size(bs), Tk(tk),
        pages({N * (tk / bs), seqmix::quantized_page_bytes(format, bs, Hkv, D, D)}),
        tail_k({N, 32, Hkv, D}), tail_v({N, 32, Hkv, D}), table({N, tk / bs}), lengths(N, 0) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(pages.size(0)));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(1));
    for (index_t i = 0; i < table.numel(); ++i) table.data()[i] = order[static_cast<std::size_t>(i)];
    seqmix::KvCacheConfig config;
    config.batch = N, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D;
    config.key_format = s.key, config.value_format = s.value, config.key_quant = KeyQuant::per_channel;
    cache = std::make_unique<seqmix::KvCache>(config);
    for (index_t n = 0; n < N; ++n) {  // one sequence at a time (the fp32 rows of one only)
      const auto k = st::random_tensor<4>({1, tk, Hkv, D}, 10 + n), v = st::random_tensor<4>({1, tk, Hkv, D}, 50 + n);
      std::vector<std::int32_t> cu(static_cast<std::size_t>(N + 1), 0);
      for (index_t m = n; m < N; ++m) cu[static_cast<std::size_t>(m + 1)] = static_cast<std::int32_t>(tk);
      seqmix::PagedKvAppendInputs<float> in;
      in.k = k.cview(), in.v = v.cview(), in.block_table = table.cview(), in.cache_seqlens = lengths, in.cu_seqlens = cu;
      seqmix::paged_kv_append(in, pool());
      seqmix::KvAppendInputs ci;
      ci.keys = k.cview(), ci.values = v.cview(), ci.batch.cu_seqlens = cu;
      cache->append(ci);
      lengths[static_cast<std::size_t>(n)] = static_cast<std::int32_t>(tk);
    }
  }
  seqmix::QuantizedKvPages pool() {
    seqmix::QuantizedKvPages p;
    p.pages = pages.view(), p.block_size = block_size, p.tail_k = tail_k.view(), p.tail_v = tail_v.view(), p.format = format;
    return p;
  }
  double page_bytes_read() const {
    // Per group: its page bytes past the header (pages of 16: both halves, the larger one twice).
    const index_t image = (seqmix::quantized_page_bytes(format, block_size, Hkv, D, D) - 64) * 32 / block_size;
    return static_cast<double>(N) * static_cast<double>(Tk / 32) * static_cast<double>(image);
  }
};

void paged_quantized_decode(benchmark::State& state, Setup setup, index_t block_size, bool kv_cache) {
  PagedSetup p(setup, block_size, 4096);
  const auto q = st::random_tensor<4>({PagedSetup::N, 1, PagedSetup::Hq, PagedSetup::D}, 3);
  seqmix::Tensor<float, 4> o({PagedSetup::N, 1, PagedSetup::Hq, PagedSetup::D});
  seqmix::QuantizedPagedAttentionInputs in;
  in.q = q.cview(), in.pages = p.pool(), in.block_table = p.table.cview(), in.cache_seqlens = p.lengths;
  seqmix::KvCacheAttentionInputs ci;
  ci.q = q.cview(), ci.cache = p.cache.get();
  for (auto _ : state) {
    if (kv_cache)
      seqmix::kv_cache_attention(ci, {o.view(), {}}, {}, st::two_thread_pool());
    else
      seqmix::paged_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  const double bytes = kv_cache ? static_cast<double>(p.cache->bytes()) : p.page_bytes_read();
  seqmix::testing::report_gbytes(state, bytes);
}

struct CodedSetup {
  const char* name;
  seqmix::KvCodeFormat format;
  index_t subspaces, group;
};

void coded_decode(benchmark::State& state, CodedSetup setup, index_t Hq, index_t Hkv, index_t D, index_t Tk,
                  bool kv_cache = false) {
  seqmix::CodedKvCacheConfig config;
  config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D, config.format = setup.format, config.group_size = setup.group;
  const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 1), v = st::random_tensor<4>({1, Tk, Hkv, D}, 2);
  if (setup.format == seqmix::KvCodeFormat::pq) {
    seqmix::PqFitOptions fit;
    fit.subspaces = setup.subspaces, fit.centroids = 256, fit.iterations = 4;
    const index_t sample = std::min<index_t>(Tk, 2048);
    config.key_codebooks = seqmix::fit_pq_codebooks(k.cview().slice(1, 0, sample), fit, st::two_thread_pool());
    config.value_codebooks = seqmix::fit_pq_codebooks(v.cview().slice(1, 0, sample), fit, st::two_thread_pool());
  }
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 3);
  seqmix::Tensor<float, 4> o({1, 1, Hq, D});
  if (kv_cache) {  // the same codes as KvCache storage
    seqmix::KvCacheConfig kc;
    kc.kv_heads = Hkv, kc.key_dim = D, kc.value_dim = D;
    seqmix::KvCodedStorage coded;
    coded.format = setup.format, coded.group_size = setup.group;
    coded.key_codebooks = config.key_codebooks, coded.value_codebooks = config.value_codebooks;
    kc.coded = coded;
    seqmix::KvCache cache(kc);
    cache.append(k.cview(), v.cview());
    seqmix::KvCacheAttentionInputs in;
    in.q = q.cview(), in.cache = &cache;
    for (auto _ : state) {
      seqmix::kv_cache_attention(in, {o.view(), {}}, {}, st::two_thread_pool());
      benchmark::DoNotOptimize(o.data());
    }
    seqmix::testing::report_gbytes(state, static_cast<double>(cache.bytes()));
    state.counters["bytes/token"] = static_cast<double>(cache.bytes()) / static_cast<double>(Tk * Hkv);
    return;
  }
  seqmix::CodedKvCache cache(config);
  cache.append(k.cview(), v.cview());
  for (auto _ : state) {
    seqmix::coded_kv_cache_attention(cache, q.cview(), o.view(), {}, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  seqmix::testing::report_gbytes(state, static_cast<double>(cache.bytes()));
  state.counters["bytes/token"] = static_cast<double>(cache.bytes()) / static_cast<double>(Tk * Hkv);
}

std::string shape_name(index_t Hq, index_t Hkv, index_t D, index_t Tk) {
  return "Hq" + std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) + "_D" + std::to_string(D) + "_Tk" + std::to_string(Tk);
}

const bool registered = [] {
  for (const Setup& s : kSetups) {
    const std::string base = std::string("kv/") + s.name + "/decode/";
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 16384)).c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 16384, false); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 16384) + "_huge_arena").c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 16384, false, Storage::huge_arena); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 16384) + "_cold").c_str(),
                                 [s](benchmark::State& st_) {
                                   decode(st_, s, 32, 8, 128, 16384, false, Storage::heap,
                                          seqmix::KvOperandPrecision::two_byte, Residency::cold);
                                 })
        ->Unit(benchmark::kMillisecond)->UseManualTime();
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 1024)).c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 1024, false); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    if (seqmix::is_quantized(s.key))  // one-byte operands of the integer kernels (KvOperandPrecision)
      for (index_t Tk : {16384, 1024})
        benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, Tk) + "_one_byte").c_str(),
                                     [s, Tk](benchmark::State& st_) {
                                       decode(st_, s, 32, 8, 128, Tk, false, Storage::heap, seqmix::KvOperandPrecision::one_byte);
                                     })
            ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 1024) + "_reference").c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 1024, true); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (const Setup& s : kSetups) {
    if (s.key == KvFormat::f16) continue;  // fp16 pages: attention/paged/... in bench_attention
    const std::string base = std::string("attention/paged/") + s.name + "/decode/N16_Tk4096_Hq32_Hkv8_D128";
    for (index_t bs : {16, 32, 64})
      benchmark::RegisterBenchmark((base + "_bs" + std::to_string(bs)).c_str(),
                                   [s, bs](benchmark::State& st_) { paged_quantized_decode(st_, s, bs, false); })
          ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "_kv_cache_attention").c_str(),
                                 [s](benchmark::State& st_) { paged_quantized_decode(st_, s, 64, true); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  {
    const Setup fp32{"fp32", KvFormat::f32, KvFormat::f32};
    benchmark::RegisterBenchmark(("kv/fp32/decode/" + shape_name(32, 8, 128, 16384)).c_str(),
                                 [fp32](benchmark::State& st_) { decode(st_, fp32, 32, 8, 128, 16384, false); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv/fp32/decode/" + shape_name(32, 8, 128, 16384) + "_huge_arena").c_str(),
                                 [fp32](benchmark::State& st_) { decode(st_, fp32, 32, 8, 128, 16384, false, Storage::huge_arena); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("kv/fp32/decode/" + shape_name(32, 8, 128, 16384) + "_cold").c_str(),
                                 [fp32](benchmark::State& st_) {
                                   decode(st_, fp32, 32, 8, 128, 16384, false, Storage::heap,
                                          seqmix::KvOperandPrecision::two_byte, Residency::cold);
                                 })
        ->Unit(benchmark::kMillisecond)->UseManualTime();
    for (index_t ratio : {4, 1})
      benchmark::RegisterBenchmark(("kv/dmc_" + std::to_string(ratio) + "x/decode/" + shape_name(32, 8, 128, 16384)).c_str(),
                                   [ratio](benchmark::State& st_) { dmc_decode(st_, ratio, 32, 8, 128, 16384); })
          ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (const CodedSetup c : {CodedSetup{"pq_m32_k256", seqmix::KvCodeFormat::pq, 32, 0},
                             CodedSetup{"pq_m16_k256", seqmix::KvCodeFormat::pq, 16, 0},
                             CodedSetup{"sign1_g32", seqmix::KvCodeFormat::sign1, 0, 32},
                             CodedSetup{"sign1_g128", seqmix::KvCodeFormat::sign1, 0, 128}})
    for (bool kv_cache : {false, true})
      benchmark::RegisterBenchmark((std::string("kv/") + c.name + "/decode/" + shape_name(32, 8, 128, 16384) +
                                    (kv_cache ? "_kv_cache" : "")).c_str(),
                                   [c, kv_cache](benchmark::State& st_) { coded_decode(st_, c, 32, 8, 128, 16384, kv_cache); })
          ->Unit(benchmark::kMillisecond)->UseRealTime();
  return true;
}();

}  // namespace
