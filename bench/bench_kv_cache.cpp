// Decode attention over a compressed KV cache (kv_cache/attention.hpp), 2 threads.
//
// Names kv/<storage>/decode/Hq<>_Hkv<>_D<>_Tk<>; GB/s = KvCache::bytes() (codes + parameters +
// positions + entry map) / time, i.e. the cache bytes read once per call; compare with the
// machine's ~68 GB/s 2-core streaming bandwidth. The reference form (entry-by-entry
// dequantization, double accumulation, single thread) runs on Tk = 1024 as a baseline.
#include <benchmark/benchmark.h>

#include <string>

#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/bench_counters.hpp"
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

void decode(benchmark::State& state, Setup setup, index_t Hq, index_t Hkv, index_t D, index_t Tk, bool reference) {
  seqmix::KvCacheConfig config;
  config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D;
  config.key_format = setup.key, config.value_format = setup.value, config.key_quant = KeyQuant::per_channel;
  seqmix::KvCache cache(config);
  {
    const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 1), v = st::random_tensor<4>({1, Tk, Hkv, D}, 2);
    cache.append(k.view(), v.view());
  }
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 3);
  seqmix::Tensor<float, 4> o({1, 1, Hq, D});
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache;
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    if (reference)
      seqmix::reference::kv_cache_attention(in, {o.view(), {}}, options);
    else
      seqmix::kv_cache_attention(in, {o.view(), {}}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
  }
  seqmix::testing::report_gbytes(state, static_cast<double>(cache.bytes()));
  state.counters["bytes/token"] = cache.bytes_per_token();
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
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 1024)).c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 1024, false); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + shape_name(32, 8, 128, 1024) + "_reference").c_str(),
                                 [s](benchmark::State& st_) { decode(st_, s, 32, 8, 128, 1024, true); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  return true;
}();

}  // namespace
