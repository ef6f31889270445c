// KV-cache compression for one attention layer (Hq=32, Hkv=8, D=64): prefill a prompt into a
// seqmix::KvCache, optionally evict with SnapKV under a budget (KvCache::retain), store the rest
// as fp32 / int8 / int4, then decode: every step appends one token and attends over the cache
// with seqmix::kv_cache_attention, which reads the compressed blocks directly.
//
// For each configuration it prints the cache's bytes per token (per KV head, K and V together)
// and the relative error ||o - o_ref|| / ||o_ref|| of the decode outputs against the uncompressed
// fp32 cache. The data is synthetic: random keys and values, plus a few "facts" (planted keys)
// that the end of the prompt and the decode queries look up, as a question about a document
// would. SnapKV sees the question in its observation window and keeps the facts, so the output
// stays dominated by the right values; what error is left is the background mass it dropped.
// examples/kv_report.cpp runs every storage format and policy; include/seqmix/kv_cache/RESULTS.md.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::Tensor;

constexpr index_t kHq = 32, kHkv = 8, kGroup = kHq / kHkv, kD = 64;
constexpr index_t kPrompt = 2048, kSteps = 16, kWindow = 16, kFacts = 4;

struct Data {
  Tensor<float, 4> k{{1, kPrompt + kSteps, kHkv, kD}}, v{{1, kPrompt + kSteps, kHkv, kD}};
  Tensor<float, 4> q_window{{1, kWindow, kHq, kD}}, q_decode{{1, kSteps, kHq, kD}};
};

// A query of head h that looks up the key at `position` (its KV head's copy), plus noise.
void lookup_query(const Data& d, index_t position, float* q, index_t h, std::mt19937& rng) {
  std::normal_distribution<float> noise(0.f, 0.3f);
  const index_t hk = h / kGroup;
  float norm = 0.f;
  for (index_t c = 0; c < kD; ++c) norm += d.k(0, position, hk, c) * d.k(0, position, hk, c);
  // Scaled so the fact's logit is ~10 after the 1/sqrt(D) scale: it dominates the softmax.
  const float gain = 10.f * std::sqrt(static_cast<float>(kD)) / norm;
  for (index_t c = 0; c < kD; ++c) q[c] = gain * d.k(0, position, hk, c) + noise(rng);
}

Data make_data() {
  Data d;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto* t : {&d.k, &d.v})
    for (float& x : *t) x = normal(rng);
  std::vector<index_t> facts;
  for (index_t f = 0; f < kFacts; ++f) facts.push_back(100 + f * (kPrompt - 300) / kFacts);
  for (index_t w = 0; w < kWindow; ++w)
    for (index_t h = 0; h < kHq; ++h) lookup_query(d, facts[w % kFacts], &d.q_window(0, w, h, 0), h, rng);
  for (index_t s = 0; s < kSteps; ++s)
    for (index_t h = 0; h < kHq; ++h) lookup_query(d, facts[(s + h) % kFacts], &d.q_decode(0, s, h, 0), h, rng);
  return d;
}

seqmix::KvCache prefill(const Data& d, KvFormat keys, KvFormat values, index_t residual) {
  seqmix::KvCacheConfig config;
  config.kv_heads = kHkv, config.key_dim = kD, config.value_dim = kD;
  config.key_format = keys, config.value_format = values;
  config.key_quant = seqmix::KeyQuant::per_channel;  // KIVI: keys have outlier channels, values do not
  config.group_size = 32;                            // values: one (scale, min) per 32 channels
  config.residual = residual;                        // newest tokens stay fp32 (KIVI's window)
  seqmix::KvCache cache(config);
  cache.append(d.k.cview().slice(1, 0, kPrompt), d.v.cview().slice(1, 0, kPrompt));
  return cache;
}

// SnapKV: the window queries' attention on the prompt, pooled, top-k per KV head. The window
// itself and 4 sink tokens are always kept. Policies only pick indices; the cache drops the rest
// and keeps every survivor's original position.
void evict_snapkv(const Data& d, seqmix::KvCache& cache, index_t capacity, const seqmix::Executor& pool) {
  seqmix::kv::ObservationInputs in;
  in.q = d.q_window.cview(), in.keys = d.k.cview().slice(1, 0, kPrompt);
  seqmix::kv::SnapKvOptions options;
  options.kernel = 7;
  const seqmix::kv::KeptSet kept = seqmix::kv::snapkv(in, {capacity, 4, kWindow}, options, pool);
  for (index_t h = 0; h < kHkv; ++h) cache.retain(0, h, kept(0, h));
}

// Decodes kSteps tokens; outputs [steps, 1, Hq, D] appended along dim 0 of `out`.
void decode(const Data& d, seqmix::KvCache& cache, Tensor<float, 4>& out, const seqmix::Executor& pool) {
  seqmix::AttentionOptions causal;
  causal.causal = true;  // a step sees every kept entry up to and including its own token
  for (index_t s = 0; s < kSteps; ++s) {
    cache.append(d.k.cview().slice(1, kPrompt + s, 1), d.v.cview().slice(1, kPrompt + s, 1));
    seqmix::KvCacheAttentionInputs in;
    in.q = d.q_decode.cview().slice(1, s, 1), in.cache = &cache;
    seqmix::kv_cache_attention(in, {out.view().slice(1, s, 1), {}}, causal, pool);
  }
}

double relative_error(const Tensor<float, 4>& o, const Tensor<float, 4>& ref) {
  double diff = 0, norm = 0;
  for (index_t i = 0; i < o.numel(); ++i) {
    diff += double(o.data()[i] - ref.data()[i]) * (o.data()[i] - ref.data()[i]);
    norm += double(ref.data()[i]) * ref.data()[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace

int main() {
  seqmix::ThreadPool pool(2);
  const Data d = make_data();
  Tensor<float, 4> o_ref({1, kSteps, kHq, kD}), o({1, kSteps, kHq, kD});
  seqmix::KvCache reference = prefill(d, KvFormat::f32, KvFormat::f32, 0);
  const double ref_bytes = static_cast<double>(reference.bytes()) / (kHkv * kPrompt);
  decode(d, reference, o_ref, pool);

  struct Config {
    const char* name;
    KvFormat keys, values;
    index_t residual, capacity;  // capacity 0: no eviction
  };
  const Config configs[] = {
      {"fp32", KvFormat::f32, KvFormat::f32, 0, 0},
      {"fp16", KvFormat::f16, KvFormat::f16, 0, 0},
      {"int8", KvFormat::int8, KvFormat::int8, 0, 0},
      {"int4 (KIVI, R=64)", KvFormat::int4, KvFormat::int4, 64, 0},
      {"int4 K / int2 V (R=64)", KvFormat::int4, KvFormat::int2, 64, 0},
      {"SnapKV 1/4, fp32", KvFormat::f32, KvFormat::f32, 0, kPrompt / 4},
      {"SnapKV 1/4, int8", KvFormat::int8, KvFormat::int8, 0, kPrompt / 4},
      {"SnapKV 1/8, int4 (R=64)", KvFormat::int4, KvFormat::int4, 64, kPrompt / 8},
  };
  std::printf("one layer: Hq=%ld Hkv=%ld D=%ld, prompt %ld tokens, %ld decode steps\n", long(kHq), long(kHkv),
              long(kD), long(kPrompt), long(kSteps));
  std::printf("%-26s %12s %12s %12s\n", "cache", "bytes/token", "vs fp32", "rel. error");
  for (const Config& c : configs) {
    seqmix::KvCache cache = prefill(d, c.keys, c.values, c.residual);
    if (c.capacity > 0) evict_snapkv(d, cache, c.capacity, pool);
    // Bytes after compression over the tokens the prompt had: eviction counts as compression.
    // Eviction frees less than it drops: retain compacts each 32-token block in place and a
    // block's key rows stay padded to 16 slots (32 for int4).
    const double bytes = static_cast<double>(cache.bytes()) / (kHkv * kPrompt);
    decode(d, cache, o, pool);
    std::printf("%-26s %12.1f %11.1fx %12.2e\n", c.name, bytes, ref_bytes / bytes, relative_error(o, o_ref));
  }
  std::printf("(bytes/token: KvCache::bytes() / (Hkv * prompt tokens), codes + scales + positions; "
              "error: over all decode outputs)\n");
  return 0;
}
