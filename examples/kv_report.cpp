// KV-cache compression report (issue 7): for every storage format and every eviction policy at
// several budgets, the memory a compressed cache takes and how far decode attention over it is
// from attention over the uncompressed cache, on two synthetic decode workloads of one layer:
//
//   random   keys, values and queries i.i.d. N(0, 1). Attention is flat (logits ~ N(0, 1)), so
//            every evicted entry carries a little mass: the hard case for eviction.
//   needle   the same background plus `needles` planted entries at random prompt positions.
//            The last `window` prompt queries (the "question") and the decode queries each look
//            up one needle: q = gain * sqrt(D) * k_needle / ||k_needle||^2 + N(0, 0.5^2) noise,
//            so after the 1/sqrt(D) scale the needle's logit is gain (12) and the others' are
//            ~N(0, gain^2 / D + 0.25): in exact attention the needle gets most of the mass
//            (~95% at N=4096, D=128) and the output is close to its value.
//
// Every method ends in a seqmix::KvCache (storage: the cache's formats or its coded storage; eviction: an fp32 cache
// on which KvCache::retain applied the policy's kept set right after prefill). Then `steps`
// decode steps each append one random token and call seqmix::kv_cache_attention; the reference
// is seqmix::attention over the uncompressed fp32 K/V. Output: Markdown (## / ### headings, a
// legend, one table per workload) to paste into a README; include/seqmix/kv_cache/RESULTS.md
// holds one. Options: --n --steps --d --hq --hkv --needles --window --profile --seed --threads,
// --quick (N=1024, D=64, 16 steps) for a small run, and --only TEXT to run only the methods whose
// name contains TEXT.
// Issue 22 rows: the age-based bit schedule (applied once after prefill), CacheBlend on a
// synthetic chunk reuse (recompute 0 / 15 / 100%), SpAtten token pruning and HeadKV per-head
// budgets; SirLLM's token entropy from a synthetic LM head (the workloads have no model).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache.hpp"
#include "example_common.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvCache;
using seqmix::KvCacheConfig;
using seqmix::KvFormat;
using seqmix::Tensor;
namespace kv = seqmix::kv;

// ---- settings -------------------------------------------------------------------------------------

struct Settings {
  index_t n = 4096, steps = 32, d = 128, hq = 32, hkv = 8, needles = 8;
  index_t window = 32;    // SnapKV observation window: the last prompt queries (the needle question)
  index_t profile = 256;  // prompt queries whose attention H2O / FastGen / ZipCache accumulate
  index_t sinks = 4;
  int threads = 2;
  std::string only;  // --only: run the methods whose name contains it (ThinK alone included), empty = all
  unsigned seed = 1;
  float gain = 12.f;      // needle logit (after the 1/sqrt(D) scale)
  float cos_found = 0.9f;
};

void usage() {
  std::printf("usage: seqmix_example_kv_report [--quick] [--n N] [--steps S] [--d D] [--hq H] [--hkv H]\n"
              "                                [--needles K] [--window W] [--profile P] [--seed X] [--threads T]\n"
              "                                [--only TEXT]  (only the methods whose name contains TEXT)\n");
}

Settings parse(int argc, char** argv) {
  Settings s;
  seqmix_examples::Args args(argc, argv, usage);
  while (args.next()) {
    if (args.is("--quick")) s.n = 1024, s.steps = 16, s.d = 64, s.profile = 64, s.window = 16;
    else if (args.is("--n")) s.n = args.value();
    else if (args.is("--steps")) s.steps = args.value();
    else if (args.is("--d")) s.d = args.value();
    else if (args.is("--hq")) s.hq = args.value();
    else if (args.is("--hkv")) s.hkv = args.value();
    else if (args.is("--needles")) s.needles = args.value();
    else if (args.is("--window")) s.window = args.value();
    else if (args.is("--profile")) s.profile = args.value();
    else if (args.is("--seed")) s.seed = static_cast<unsigned>(args.value());
    else if (args.is("--threads")) s.threads = static_cast<int>(args.value());
    else if (args.is("--only")) s.only = args.text();
    else args.unknown();
  }
  // The question is part of the profiled queries; needles sit between the sinks and the window.
  s.profile = std::max(s.profile, s.window);
  if (s.n < 4 * s.profile || s.hq % s.hkv != 0 || s.needles < 1 || s.steps < 1 || s.n / 16 < s.sinks + s.window) {
    std::fprintf(stderr, "kv_report: need n >= 4 * profile, n / 16 >= sinks + window, hkv | hq, needles, steps >= 1\n");
    std::exit(2);
  }
  return s;
}

// ---- workloads ------------------------------------------------------------------------------------

struct Workload {
  std::string name;
  bool needle = false;
  Tensor<float, 4> k, v;          // [1, N + steps, Hkv, D]: prompt, then one token per decode step
  Tensor<float, 4> q_profile;     // [1, P, Hq, D]: queries of the last P prompt tokens
  Tensor<float, 4> q_decode;      // [1, steps, Hq, D]
  std::vector<index_t> needles;   // prompt positions, sorted
  Tensor<float, 4> o_ref;         // [1, steps, Hq, D]: exact attention over the uncompressed K/V
};

// Needle targeted by decode step s (every head of the step looks up the same needle position, in
// its own KV head's copy of it) and by window query w.
index_t needle_of_step(const Settings& s, index_t step) { return step % s.needles; }

void needle_query(const Settings& s, const Workload& w, index_t position, float* q, index_t h, std::mt19937& rng) {
  std::normal_distribution<float> noise(0.f, 0.5f);
  const index_t hk = h / (s.hq / s.hkv);
  seqmix_examples::aim_at_key(&w.k(0, position, hk, 0), 1, s.d, s.gain, q, 1, [&] { return noise(rng); });
}

Workload make_workload(const Settings& s, bool needle, const seqmix::Executor& pool) {
  Workload w;
  w.name = needle ? "needle" : "random";
  w.needle = needle;
  const index_t T = s.n + s.steps;
  w.k = Tensor<float, 4>({1, T, s.hkv, s.d}), w.v = Tensor<float, 4>({1, T, s.hkv, s.d});
  w.q_profile = Tensor<float, 4>({1, s.profile, s.hq, s.d}), w.q_decode = Tensor<float, 4>({1, s.steps, s.hq, s.d});
  std::mt19937 rng(s.seed * 2 + (needle ? 1 : 0));
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto* t : {&w.k, &w.v, &w.q_profile, &w.q_decode})
    for (float& x : *t) x = normal(rng);
  if (needle) {
    // Distinct positions after the sinks and before the profiled tail, so that neither the sinks
    // nor any recent window hold a needle by construction.
    std::uniform_int_distribution<index_t> where(s.sinks + 16, s.n - s.profile - 16);
    while (static_cast<index_t>(w.needles.size()) < s.needles) {
      const index_t p = where(rng);
      if (std::find(w.needles.begin(), w.needles.end(), p) == w.needles.end()) w.needles.push_back(p);
    }
    std::sort(w.needles.begin(), w.needles.end());
    for (index_t i = 0; i < s.window; ++i)  // the question: the last `window` prompt queries
      for (index_t h = 0; h < s.hq; ++h)
        needle_query(s, w, w.needles[i % s.needles], &w.q_profile(0, s.profile - s.window + i, h, 0), h, rng);
    for (index_t t = 0; t < s.steps; ++t)
      for (index_t h = 0; h < s.hq; ++h)
        needle_query(s, w, w.needles[needle_of_step(s, t)], &w.q_decode(0, t, h, 0), h, rng);
  }
  // Reference: dense attention over the full fp32 K/V, query t at position N + t.
  w.o_ref = Tensor<float, 4>({1, s.steps, s.hq, s.d});
  seqmix::AttentionOptions causal;
  causal.causal = true;
  for (index_t t = 0; t < s.steps; ++t) {
    seqmix::AttentionInputs<float> in;
    in.q = w.q_decode.cview().slice(1, t, 1);
    in.k = w.k.cview().slice(1, 0, s.n + t + 1), in.v = w.v.cview().slice(1, 0, s.n + t + 1);
    seqmix::attention(in, {w.o_ref.view().slice(1, t, 1), {}}, causal, pool);
  }
  return w;
}

// Attention statistics of the prompt every policy draws on, computed once per workload.
struct Observed {
  Tensor<float, 3> window;   // [1, Hkv, N] SnapKV's vote: last `window` prompt queries, summed
  Tensor<float, 3> profile;  // [1, Hkv, N] accumulated attention of the last P prompt queries
  Tensor<float, 3> last;     // [1, Hkv, N] attention of the last prompt query (TOVA)
  Tensor<float, 3> saliency; // [1, N, Hkv] ZipCache normalized attention (profile / queries seeing j)
  Tensor<float, 2> direction;  // [Hkv, D] Q-Filters: normalized mean profile query of each group
};

Observed observe(const Settings& s, const Workload& w, const seqmix::Executor& pool) {
  Observed o;
  const auto keys = w.k.cview().slice(1, 0, s.n);
  kv::ObservationWorkspace ws;
  kv::ObservationInputs in;
  in.keys = keys;
  o.window = Tensor<float, 3>({1, s.hkv, s.n});
  o.profile = Tensor<float, 3>({1, s.hkv, s.n});
  o.last = Tensor<float, 3>({1, s.hkv, s.n});
  in.q = w.q_profile.cview().slice(1, s.profile - s.window, s.window);
  kv::observation_scores(in, o.window.view(), {}, ws, pool);
  in.q = w.q_profile.cview();
  kv::observation_scores(in, o.profile.view(), {}, ws, pool);
  in.q = w.q_profile.cview().slice(1, s.profile - 1, 1);
  kv::ObservationOptions all;
  all.visibility = kv::Visibility::All;
  kv::observation_scores(in, o.last.view(), all, ws, pool);
  // Normalized attention: a prompt token j is seen by the profiled queries at positions >= j.
  o.saliency = Tensor<float, 3>({1, s.n, s.hkv});
  for (index_t j = 0; j < s.n; ++j)
    for (index_t h = 0; h < s.hkv; ++h) o.saliency(0, j, h) = o.profile(0, h, j) / std::min(s.profile, s.n - j);
  o.direction = Tensor<float, 2>({s.hkv, s.d});
  const index_t G = s.hq / s.hkv;
  for (index_t h = 0; h < s.hkv; ++h) {
    double norm = 0.0;
    for (index_t c = 0; c < s.d; ++c) {
      double m = 0.0;
      for (index_t t = 0; t < s.profile; ++t)
        for (index_t g = h * G; g < (h + 1) * G; ++g) m += w.q_profile(0, t, g, c);
      o.direction(h, c) = static_cast<float>(m);
      norm += m * m;
    }
    for (index_t c = 0; c < s.d; ++c) o.direction(h, c) = static_cast<float>(o.direction(h, c) / std::sqrt(norm));
  }
  return o;
}

// ---- evaluation -----------------------------------------------------------------------------------

struct Result {
  double bytes = 0, kept = 0, error = 0;
  double packed = 0;  // B/token the kept entries take in the uncompressed cache's layout (full blocks)
  std::vector<index_t> hits;  // per needle: (decode query, head) pairs that found it
  std::string note;
};

KvCacheConfig storage_config(const Settings& s, KvFormat kf, KvFormat vf, index_t residual = 0) {
  KvCacheConfig c;
  c.kv_heads = s.hkv, c.key_dim = s.d, c.value_dim = s.d;
  c.key_format = kf, c.value_format = vf;
  c.key_quant = seqmix::KeyQuant::per_channel;
  c.group_size = 32;
  c.residual = residual;
  return c;
}

KvCache prefill(const Settings& s, const Workload& w, const KvCacheConfig& config, const Observed* saliency = nullptr) {
  KvCache cache(config);
  cache.append(w.k.cview().slice(1, 0, s.n), w.v.cview().slice(1, 0, s.n), {},
               saliency ? saliency->saliency.cview() : seqmix::ConstView<float, 3>{});
  return cache;
}

// Decodes over a compressed cache and scores it. `channels` (ThinK): the cache holds pruned keys,
// so appended keys and queries are gathered to the kept channels and the scale stays 1/sqrt(D).
Result evaluate(const Settings& s, const Workload& w, KvCache cache, const seqmix::Executor& pool,
                const kv::KeptSet* channels = nullptr) {
  Result r;
  const double tokens = double(s.hkv) * double(s.n);
  r.bytes = double(cache.bytes()) / tokens;
  r.kept = double(cache.total_entries()) / tokens;
  r.packed = r.bytes;
  // Needle kept at all (before decode): per KV head.
  std::vector<std::vector<char>> present(static_cast<std::size_t>(s.needles));
  for (index_t i = 0; i < s.needles && w.needle; ++i)
    for (index_t h = 0; h < s.hkv; ++h) {
      const auto pos = cache.positions(0, h);
      present[i].push_back(std::binary_search(pos.begin(), pos.end(), std::int64_t(w.needles[i])));
    }
  r.hits.assign(static_cast<std::size_t>(s.needles), 0);
  seqmix::AttentionOptions causal;
  causal.causal = true;
  causal.scale = 1.f / std::sqrt(static_cast<float>(s.d));
  const index_t Dk = cache.config().key_dim, G = s.hq / s.hkv;
  Tensor<float, 4> key({1, 1, s.hkv, Dk}), q({1, 1, s.hq, Dk}), o({1, 1, s.hq, s.d});
  for (index_t t = 0; t < s.steps; ++t) {
    const auto k_new = w.k.cview().slice(1, s.n + t, 1), q_new = w.q_decode.cview().slice(1, t, 1);
    if (channels) {
      kv::think_gather_keys(k_new, *channels, key.view());
      kv::think_gather_queries(q_new, *channels, q.view());
    }
    cache.append(channels ? key.cview() : k_new, w.v.cview().slice(1, s.n + t, 1));
    seqmix::KvCacheAttentionInputs in;
    in.q = channels ? q.cview() : q_new, in.cache = &cache;
    seqmix::kv_cache_attention(in, {o.view(), {}}, causal, pool);
    double diff = 0, norm = 0;
    for (index_t h = 0; h < s.hq; ++h) {
      const index_t needle = w.needle ? w.needles[needle_of_step(s, t)] : 0;
      for (index_t c = 0; c < s.d; ++c) {
        const double x = o(0, 0, h, c), ref = w.o_ref(0, t, h, c);
        diff += (x - ref) * (x - ref), norm += ref * ref;
      }
      const index_t i = needle_of_step(s, t);
      if (w.needle && present[i][h / G] &&
          seqmix_examples::points_at(s.d, [&](index_t c) { return o(0, 0, h, c); },
                                     [&](index_t c) { return w.v(0, needle, h / G, c); }, s.cos_found))
        ++r.hits[i];
    }
    r.error += std::sqrt(diff / norm) / double(s.steps);
  }
  return r;
}

// The exact attention's own needle score (the header reports it: the criterion is attainable).
Result evaluate_exact(const Settings& s, const Workload& w, const seqmix::Executor& pool) {
  return evaluate(s, w, prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32)), pool);
}

// Applies a kept set; returns the B/token of the cache before eviction (for Result::packed).
double retain_all(KvCache& cache, const kv::KeptSet& kept) {
  const double before = double(cache.bytes()) / double(cache.total_entries());
  for (index_t h = 0; h < kept.heads(); ++h) cache.retain(0, h, kept(0, h));
  return before;
}

// Evaluates an evicted cache; `before` is retain_all's return value.
Result evaluate_evicted(const Settings& s, const Workload& w, KvCache cache, double before, const seqmix::Executor& pool,
                        const kv::KeptSet* channels = nullptr) {
  Result r = evaluate(s, w, std::move(cache), pool, channels);
  r.packed = before * r.kept;
  return r;
}

// Coded storage (KvCacheConfig::coded, issue 22 item 5: product-quantized or 1-bit blocks in a
// KvCache) on the same workload: prefill, then the decode steps through kv_cache_attention, which
// reads the codes, scored by evaluate() like every other storage row (every entry is kept, so a
// needle is always present; decode tokens wait in the cache's fp32 window until 32 of them are
// coded together). PQ codebooks (256 centroids) are fit by k-means, 4 iterations, on the first
// 1024 prompt tokens' keys and values; B/token counts codes, scales and flags, the note gives the
// codebooks' bytes per layer.
Result evaluate_coded(const Settings& s, const Workload& w, seqmix::KvCodeFormat format, index_t subspaces, index_t group,
                      const seqmix::Executor& pool) {
  KvCacheConfig c = storage_config(s, KvFormat::f32, KvFormat::f32);
  seqmix::KvCodedStorage coded;
  coded.format = format, coded.group_size = group;
  if (format == seqmix::KvCodeFormat::pq) {
    seqmix::PqFitOptions fit;
    fit.subspaces = subspaces, fit.centroids = 256, fit.iterations = 4;
    const index_t sample = std::min<index_t>(s.n, 1024);
    coded.key_codebooks = seqmix::fit_pq_codebooks(w.k.cview().slice(1, 0, sample), fit, pool);
    coded.value_codebooks = seqmix::fit_pq_codebooks(w.v.cview().slice(1, 0, sample), fit, pool);
  }
  c.coded = std::move(coded);
  KvCache cache = prefill(s, w, c);
  const std::size_t codebooks = cache.codebook_bytes();
  Result r = evaluate(s, w, std::move(cache), pool);
  if (codebooks > 0) r.note = "+ " + std::to_string(codebooks / 1024) + " KiB codebooks per layer";
  return r;
}

// ---- methods --------------------------------------------------------------------------------------

struct Method {
  std::string name;
  // Builds the compressed cache for a workload at a capacity (entries per KV head; 0 = storage
  // only) and evaluates it.
  std::function<Result(const Workload&, const Observed&, index_t)> run;
  bool evicts = true;
};

std::vector<Method> storage_methods(const Settings& s, const seqmix::Executor& pool) {
  struct Row {
    const char* name;
    KvFormat k, v;
    seqmix::KeyQuant kq;
    index_t residual;
    bool zip;
  };
  const seqmix::KeyQuant pc = seqmix::KeyQuant::per_channel, pt = seqmix::KeyQuant::per_token;
  const std::vector<Row> rows = {
      {"fp32", KvFormat::f32, KvFormat::f32, pc, 0, false},
      {"fp16", KvFormat::f16, KvFormat::f16, pc, 0, false},
      {"bf16", KvFormat::bf16, KvFormat::bf16, pc, 0, false},
      {"int8 (K per-channel, V per-token g32)", KvFormat::int8, KvFormat::int8, pc, 0, false},
      {"int8 (K per-token g32, V per-token g32)", KvFormat::int8, KvFormat::int8, pt, 0, false},
      {"int4 (K per-channel, V per-token g32)", KvFormat::int4, KvFormat::int4, pc, 0, false},
      {"int4 K + int2 V", KvFormat::int4, KvFormat::int2, pc, 0, false},
      {"KIVI int4, R=128", KvFormat::int4, KvFormat::int4, pc, 128, false},
      {"KIVI int4 K + int2 V, R=128", KvFormat::int4, KvFormat::int2, pc, 128, false},
      {"ZipCache 20% int8 / 80% int4 K + int2 V", KvFormat::int8, KvFormat::int8, pc, 0, true},
  };
  std::vector<Method> out;
  for (const Row& row : rows)
    out.push_back({row.name,
                   [&s, &pool, row](const Workload& w, const Observed& obs, index_t) {
                     KvCacheConfig c = storage_config(s, row.k, row.v, row.residual);
                     c.key_quant = row.kq;
                     if (row.zip) c.mixed = seqmix::KvMixedPrecision{KvFormat::int4, KvFormat::int2, 0.2f};
                     return evaluate(s, w, prefill(s, w, c, row.zip ? &obs : nullptr), pool);
                   },
                   false});
  // Age-based bit schedule (issue 22): fp16 prefill, then the older prompt tokens re-encoded by
  // age once after prefill (decode tokens stay fp16).
  out.push_back({"age schedule fp16 / int8 >= N/8 / int4 >= N/2 / int4 K + int2 V >= 3N/4",
                 [&s, &pool](const Workload& w, const Observed&, index_t) {
                   KvCache cache = prefill(s, w, storage_config(s, KvFormat::f16, KvFormat::f16));
                   kv::apply_age_schedule(cache, {{{s.n / 8, KvFormat::int8, KvFormat::int8},
                                                   {s.n / 2, KvFormat::int4, KvFormat::int4},
                                                   {3 * s.n / 4, KvFormat::int4, KvFormat::int2}}});
                   return evaluate(s, w, std::move(cache), pool);
                 },
                 false});
  // CacheBlend (issue 22) on a synthetic reuse: the prompt is 4 chunks prefilled on their own;
  // the cached KV of chunks 2-4 deviates from the fresh KV by noise of std 0.5 u^4 per token
  // (u uniform: few tokens deviate much). ratio = share of tokens recomputed (fresh rows blended in).
  for (double ratio : {0.0, 0.15, 1.0}) {
    out.push_back({"CacheBlend recompute " + std::to_string(int(ratio * 100)) + "% (synthetic chunk deviation)",
                   [&s, &pool, ratio](const Workload& w, const Observed&, index_t) {
                     const auto fk = w.k.cview().slice(1, 0, s.n), fv = w.v.cview().slice(1, 0, s.n);
                     Tensor<float, 4> ck({1, s.n, s.hkv, s.d}), cv({1, s.n, s.hkv, s.d});
                     std::mt19937 rng(s.seed + 17);
                     std::uniform_real_distribution<float> u(0.f, 1.f);
                     std::normal_distribution<float> normal(0.f, 1.f);
                     for (index_t j = 0; j < s.n; ++j) {
                       const float sigma = j < s.n / 4 ? 0.f : 0.5f * std::pow(u(rng), 4.f);
                       for (index_t h = 0; h < s.hkv; ++h)
                         for (index_t c = 0; c < s.d; ++c) {
                           ck(0, j, h, c) = fk(0, j, h, c) + sigma * normal(rng);
                           cv(0, j, h, c) = fv(0, j, h, c) + sigma * normal(rng);
                         }
                     }
                     Tensor<float, 2> deviation({1, s.n});
                     kv::cacheblend_deviation({ck.cview(), cv.cview(), fk, fv}, deviation.view(), pool);
                     const kv::CacheBlendSelection sel = kv::cacheblend_select(deviation.cview(), {ratio});
                     kv::cacheblend_blend(ck.view(), cv.view(), fk, fv, sel);
                     KvCache cache(storage_config(s, KvFormat::f32, KvFormat::f32));
                     cache.append(ck.cview(), cv.cview());
                     Result r = evaluate(s, w, std::move(cache), pool);
                     r.note = std::to_string(sel.rows[0].size()) + " tokens recomputed";
                     return r;
                   },
                   false});
  }
  // Coded storage (KvCacheConfig::coded, issue 22 item 5): product quantization with m sub-spaces of 256
  // centroids, and 1-bit signs with a mean-|x| scale per group of channels.
  struct CodedRow {
    const char* name;
    seqmix::KvCodeFormat format;
    index_t subspaces, group;
  };
  const std::vector<CodedRow> coded = {
      {"PQ m=D/4, 256 centroids (coded)", seqmix::KvCodeFormat::pq, s.d / 4, 0},
      {"PQ m=D/8, 256 centroids (coded)", seqmix::KvCodeFormat::pq, s.d / 8, 0},
      {"1-bit, scale per 32 channels (coded)", seqmix::KvCodeFormat::sign1, 0, 32},
      {"1-bit, scale per row (coded)", seqmix::KvCodeFormat::sign1, 0, 0},
  };
  for (const CodedRow& row : coded)
    if (row.format != seqmix::KvCodeFormat::pq || (row.subspaces > 0 && s.d % row.subspaces == 0))  // m must divide D
      out.push_back({row.name,
                   [&s, &pool, row](const Workload& w, const Observed&, index_t) {
                     return evaluate_coded(s, w, row.format, row.subspaces, row.group, pool);
                   },
                   false});
  return out;
}

std::vector<Method> eviction_methods(const Settings& s, const seqmix::Executor& pool) {
  const index_t S = s.sinks, W = s.window;
  std::vector<Method> out;
  // Every eviction starts from the fp32 cache; `select` returns the kept set for a capacity.
  const auto policy = [&](std::string name, std::function<kv::KeptSet(const Workload&, const Observed&, index_t)> select) {
    out.push_back({std::move(name), [&s, &pool, select](const Workload& w, const Observed& obs, index_t cap) {
                     KvCache cache = prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32));
                     const double before = retain_all(cache, select(w, obs, cap));
                     return evaluate_evicted(s, w, std::move(cache), before, pool);
                   }});
  };
  const auto prompt_keys = [&s](const Workload& w) { return w.k.cview().slice(1, 0, s.n); };
  const auto snap = [&pool, S, W](const Observed& obs, index_t cap) {
    kv::SnapKvOptions o;
    o.kernel = 7;
    return kv::snapkv_from_scores(obs.window.cview(), W, {cap, S, W}, o, pool);
  };

  policy("StreamingLLM (4 sinks + recent)", [&s, S](const Workload&, const Observed&, index_t cap) {
    return kv::streaming_llm(1, s.hkv, s.n, {cap, S, 0});
  });
  policy("H2O (profile attention, recent = cap/2)", [&pool, S](const Workload&, const Observed& obs, index_t cap) {
    return kv::h2o(obs.profile.cview(), {cap, S, cap / 2}, pool);
  });
  policy("SnapKV (window " + std::to_string(W) + ", max-pool 7)", [snap](const Workload&, const Observed& obs, index_t cap) { return snap(obs, cap); });
  policy("TOVA (last prompt query)", [&pool](const Workload&, const Observed& obs, index_t cap) {
    return kv::tova(obs.last.cview(), {cap, 0, 0}, pool);
  });
  policy("key-norm (lowest L2)", [&pool, prompt_keys, S, W](const Workload& w, const Observed&, index_t cap) {
    return kv::key_norm(prompt_keys(w), {cap, S, W}, pool);
  });
  policy("Q-Filters (mean query direction)", [&pool, prompt_keys, S, W](const Workload& w, const Observed& obs, index_t cap) {
    return kv::qfilters(prompt_keys(w), obs.direction.cview(), {cap, S, W}, pool);
  });
  policy("AdaKV (SnapKV scores, floor cap/5)", [&s, &pool, S, W](const Workload&, const Observed& obs, index_t cap) {
    // SnapKV's pooled scores (comparable across heads: each is a sum of probabilities).
    Tensor<float, 3> pooled({1, s.hkv, s.n});
    const index_t prefix = s.n - W;
    for (index_t h = 0; h < s.hkv; ++h) {
      kv::pool_scores(&obs.window(0, h, 0), &pooled(0, h, 0), prefix, 7, kv::Pooling::Max);
      for (index_t j = prefix; j < s.n; ++j) pooled(0, h, j) = obs.window(0, h, j);
    }
    kv::AdaKvOptions o;
    o.total = cap * s.hkv, o.floor_per_head = std::max(S + W, cap / 5), o.sink_tokens = S, o.recent = W;
    return kv::adakv(pooled.cview(), o, pool).kept;
  });

  // SpAtten (issue 22): one layer, so the cascade is one pruning step; importance = the profile
  // attention summed over the KV heads, the same tokens kept in every head.
  policy("SpAtten token pruning (profile attention over heads)", [&s, S, W](const Workload&, const Observed& obs, index_t cap) {
    kv::SpAttenCascade cascade(1, s.n);
    cascade.accumulate(obs.profile.cview());
    return cascade.prune({cap, S, W}, s.hkv);
  });
  // SirLLM (issue 22): token entropy -log p(token | prefix) from a synthetic LM head, as the
  // workloads have no language model: the logits predicting token t are W k_{t-1} (W [256, D]
  // i.i.d. N(0, 16 / D); k_{t-1} = token t-1's key in KV head 0), a background token's id is drawn
  // from their softmax, a needle's uniformly (a fact the model did not predict, SirLLM's "key
  // token"). kv::token_entropy gives the entropies; kv::SirLlmScores keeps the highest besides
  // the sinks and the window (one round, so no decay), the same tokens in every head.
  policy("SirLLM token entropy (synthetic LM head; needle ids unpredicted)", [&s, S, W](const Workload& w, const Observed&, index_t cap) {
    const index_t V = 256, D = s.d;
    std::mt19937 rng(s.seed + 29);
    std::normal_distribution<float> normal(0.f, 4.f / std::sqrt(static_cast<float>(D)));
    std::vector<float> head(static_cast<std::size_t>(V * D));
    for (float& x : head) x = normal(rng);
    Tensor<float, 3> logits({1, s.n, V});
    Tensor<std::int32_t, 2> tokens({1, s.n});
    std::vector<double> p(static_cast<std::size_t>(V));
    for (index_t t = 0; t < s.n; ++t) {
      double m = -1e300;
      for (index_t v = 0; v < V; ++v) {
        float x = 0.f;
        for (index_t c = 0; t > 0 && c < D; ++c) x += head[v * D + c] * w.k(0, t - 1, 0, c);
        logits(0, t, v) = x;
        m = std::max(m, double(x));
      }
      const bool is_needle = w.needle && std::binary_search(w.needles.begin(), w.needles.end(), t);
      for (index_t v = 0; v < V; ++v) p[v] = std::exp(double(logits(0, t, v)) - m);
      tokens(0, t) = is_needle ? static_cast<std::int32_t>(rng() % V)
                               : static_cast<std::int32_t>(std::discrete_distribution<index_t>(p.begin(), p.end())(rng));
    }
    Tensor<float, 2> entropy({1, s.n});
    kv::token_entropy(logits.cview(), tokens.cview(), entropy.view());
    kv::SirLlmScores scores(1);
    scores.append(entropy.cview());
    return scores.evict({cap, S, W}, s.hkv);
  });
  // HeadKV (issue 22): per-head budgets from a retrieval score (here the window's attention mass
  // outside sinks + window, given by the caller), half of the layer's total pooled by score,
  // applied to SnapKV's pooled scores.
  out.push_back({"HeadKV budgets (window mass far from the end) + SnapKV mean-pooled scores",
                 [&s, &pool, S, W](const Workload& w, const Observed& obs, index_t cap) {
                   const index_t H = s.hkv, prefix = s.n - W;
                   std::vector<float> score(static_cast<std::size_t>(H), 0.f);
                   Tensor<float, 3> pooled({1, H, s.n});
                   for (index_t h = 0; h < H; ++h) {
                     for (index_t j = S; j < prefix; ++j) score[h] += obs.window(0, h, j);
                     // Mean pooling: max pooling's plateaus tie, and select_with_head_budgets breaks
                     // ties by age only (snapkv_from_scores also by the raw score).
                     kv::pool_scores(&obs.window(0, h, 0), &pooled(0, h, 0), prefix, 7, kv::Pooling::Mean);
                     for (index_t j = prefix; j < s.n; ++j) pooled(0, h, j) = obs.window(0, h, j);
                   }
                   const std::vector<index_t> budgets = kv::headkv_budgets(score, {cap * H, 0.5, S + W});
                   KvCache cache = prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32));
                   const double before =
                       retain_all(cache, kv::select_with_head_budgets(pooled.cview(), budgets, S, W, kv::Keep::Highest, pool));
                   Result res = evaluate_evicted(s, w, std::move(cache), before, pool);
                   const auto mm = std::minmax_element(budgets.begin(), budgets.end());
                   res.note = "head budgets " + std::to_string(*mm.first) + " to " + std::to_string(*mm.second);
                   return res;
                 }});
  // DuoAttention: as many full retrieval heads as the layer's budget allows (the heads with the
  // most window attention outside sinks + window), the rest of the budget split evenly over the
  // streaming heads' recent windows.
  out.push_back({"DuoAttention (retrieval heads by profile)", [&s, &pool, S, W](const Workload& w, const Observed& obs,
                                                                               index_t cap) {
                   const index_t H = s.hkv, total = cap * H, minimal = S + W;
                   const index_t r = std::max<index_t>(0, std::min<index_t>(H, (total - H * minimal) / (s.n - minimal)));
                   std::vector<double> far(static_cast<std::size_t>(H), 0.0);
                   for (index_t h = 0; h < H; ++h)
                     for (index_t j = S; j < s.n - W; ++j) far[h] += obs.window(0, h, j);
                   std::vector<index_t> order(static_cast<std::size_t>(H));
                   std::iota(order.begin(), order.end(), 0);
                   std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return far[a] > far[b]; });
                   std::vector<bool> retrieval(static_cast<std::size_t>(H), false);
                   for (index_t i = 0; i < r; ++i) retrieval[order[i]] = true;
                   const index_t recent = r < H ? (total - r * s.n) / (H - r) - S : 0;
                   KvCache cache = prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32));
                   const double before = retain_all(cache, kv::retrieval_heads(1, s.n, retrieval, {0, S, recent}));
                   Result res = evaluate_evicted(s, w, std::move(cache), before, pool);
                   res.note = std::to_string(r) + " retrieval head" + (r == 1 ? "" : "s");
                   return res;
                 }});
  // FastGen: per head the cheapest of special (the sinks) / local (cap - sinks) / both / full that
  // holds 95% of the profiled attention; it may exceed the budget (heads fall back to full).
  out.push_back({"FastGen (95% of profile attention)", [&s, &pool, S](const Workload& w, const Observed& obs, index_t cap) {
                   kv::FastGenOptions o;
                   for (index_t j = 0; j < S; ++j) o.special.push_back(j);
                   o.recent = cap - S, o.threshold = 0.95;
                   const kv::FastGenResult fg = kv::fastgen(obs.profile.cview(), o);
                   KvCache cache = prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32));
                   const double before = retain_all(cache, fg.kept);
                   Result res = evaluate_evicted(s, w, std::move(cache), before, pool);
                   int counts[4] = {0, 0, 0, 0};
                   for (kv::HeadPolicy p : fg.choice) ++counts[static_cast<int>(p)];
                   for (int p = 0; p < 4; ++p)
                     if (counts[p] > 0)
                       res.note += (res.note.empty() ? "" : ", ") + std::to_string(counts[p]) + " " +
                                   kv::to_string(static_cast<kv::HeadPolicy>(p));
                   return res;
                 }});
  // SnapKV + merging: evicted entries fold into their most similar kept key, weighted by the
  // window's attention mass; the merged rows replace the kept ones in the cache.
  out.push_back({"SnapKV + merging", [&s, &pool, snap](const Workload& w, const Observed& obs, index_t cap) {
                   const kv::KeptSet kept = snap(obs, cap);
                   const index_t C = kept.max_kept();
                   Tensor<float, 4> mk({1, C, s.hkv, s.d}), mv({1, C, s.hkv, s.d});
                   Tensor<float, 3> mm({1, s.hkv, C});
                   kv::merge_evicted(w.k.cview().slice(1, 0, s.n), w.v.cview().slice(1, 0, s.n), obs.window.cview(), kept,
                                     mk.view(), mv.view(), mm.view(), pool);
                   KvCache cache = prefill(s, w, storage_config(s, KvFormat::f32, KvFormat::f32));
                   const double before = retain_all(cache, kept);
                   for (index_t h = 0; h < s.hkv; ++h)
                     for (index_t i = 0; i < static_cast<index_t>(kept(0, h).size()); ++i)
                       cache.replace(0, h, i, &mk(0, i, h, 0), &mv(0, i, h, 0));
                   return evaluate_evicted(s, w, std::move(cache), before, pool);
                 }});
  // Eviction on a quantized cache: the policy picks from fp32 scores, the cache drops entries
  // without requantizing the survivors.
  for (const auto& q : {std::make_pair("SnapKV + int8", KvFormat::int8), std::make_pair("SnapKV + int4", KvFormat::int4)}) {
    const KvFormat f = q.second;
    out.push_back({q.first, [&s, &pool, snap, f](const Workload& w, const Observed& obs, index_t cap) {
                     KvCache cache = prefill(s, w, storage_config(s, f, f));
                     const double before = retain_all(cache, snap(obs, cap));
                     return evaluate_evicted(s, w, std::move(cache), before, pool);
                   }});
  }
  // ThinK: half of the key channels (by ||Q_window[:, c]|| * ||K[:, c]||), with SnapKV eviction.
  out.push_back({"SnapKV + ThinK 50% key channels", [&s, &pool, snap](const Workload& w, const Observed& obs, index_t cap) {
                   const auto keys = w.k.cview().slice(1, 0, s.n);
                   const kv::KeptSet channels =
                       kv::think_channels(w.q_profile.cview().slice(1, s.profile - s.window, s.window), keys, {0, 0.5}, pool);
                   Tensor<float, 4> pruned({1, s.n, s.hkv, channels.max_kept()});
                   kv::think_gather_keys(keys, channels, pruned.view());
                   KvCacheConfig c = storage_config(s, KvFormat::f32, KvFormat::f32);
                   c.key_dim = channels.max_kept();
                   KvCache cache(c);
                   cache.append(pruned.cview(), w.v.cview().slice(1, 0, s.n));
                   if (cap == 0) return evaluate(s, w, std::move(cache), pool, &channels);
                   const double before = retain_all(cache, snap(obs, cap));
                   return evaluate_evicted(s, w, std::move(cache), before, pool, &channels);
                 }});
  return out;
}

// ---- output ---------------------------------------------------------------------------------------

std::string needle_marks(const Settings& s, const Result& r) {
  std::string marks;
  index_t found = 0;
  for (index_t i = 0; i < s.needles; ++i) {
    // Pairs that looked up needle i: one per head for each decode step with step % needles == i.
    const index_t steps_i = s.steps / s.needles + (i < s.steps % s.needles ? 1 : 0);
    const index_t total = steps_i * s.hq;
    const index_t hits = r.hits[static_cast<std::size_t>(i)];
    marks += total == 0 ? '-' : hits == total ? '#' : hits > 0 ? '+' : '.';
    found += total > 0 && hits == total;
  }
  return std::to_string(found) + "/" + std::to_string(s.needles) + " `" + marks + "`";
}

void print_row(const Settings& s, const std::string& method, const std::string& budget, const Result& r,
               double fp32_bytes, bool needle) {
  std::printf("| %s | %s | %.1f | %.1f | %.1fx | %.3f | %.2e |", method.c_str(), budget.c_str(), r.bytes, r.packed,
              fp32_bytes / r.bytes, r.kept, r.error);
  if (needle) std::printf(" %s |", needle_marks(s, r).c_str());
  std::printf(" %s |\n", r.note.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  seqmix::ThreadPool pool(s.threads);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<index_t> fractions = {4, 8, 16};

  std::printf("## KV-cache compression report\n\n");
  std::printf("One layer, B=1, Hq=%ld, Hkv=%ld, D=%ld, prompt N=%ld, %ld decode steps (each appends one token), "
              "%d threads, seed %u, simd %s.\n\n",
              long(s.hq), long(s.hkv), long(s.d), long(s.n), long(s.steps), s.threads, s.seed, seqmix::simd::arch_name());
  std::printf("- **B/token**: `KvCache::bytes()` right after compression / (Hkv * N): codes, scales, positions and the "
              "entry map of one token in one KV head (K and V together). **x fp32**: the fp32 cache's B/token over it. "
              "**packed**: kept fraction * B/token of the same storage before eviction, i.e. what the kept entries "
              "would take in full blocks (`retain` repacks a head's blocks once they are less than half full on "
              "average, so B/token is at most one partly filled block per head above it).\n"
              "- **kept**: entries left / (Hkv * N). Budgets are per KV head: N/4, N/8, N/16 entries.\n"
              "- **rel. error**: ||o - o_ref|| / ||o_ref|| over all Hq heads of a decode step, averaged over the "
              "steps; o_ref is dense fp32 `seqmix::attention` over the uncompressed K/V.\n"
              "- **needles** (needle workload): decode step t looks up needle t %% %ld in every head. A (step, head) "
              "finds its needle when the needle is still in that KV head's cache and cos(o, v_needle) > %.1f. "
              "Per needle: `#` found by every (step, head) that looks it up, `+` by some, `.` by none; the count "
              "is the number of `#`.\n"
              "- Eviction is one-shot after prefill on an fp32 cache (unless the method says otherwise); "
              "decode tokens are appended without further eviction. Profile = attention of the last %ld prompt "
              "queries (H2O, FastGen, ZipCache saliency); window = the last %ld (SnapKV, AdaKV, merging mass, "
              "ThinK); 4 sink tokens.\n\n",
              long(s.needles), double(s.cos_found), long(s.profile), long(s.window));

  std::vector<Method> storage = storage_methods(s, pool), eviction = eviction_methods(s, pool);
  for (bool needle : {false, true}) {
    const Workload w = make_workload(s, needle, pool);
    const Observed obs = observe(s, w, pool);
    const Result exact = evaluate_exact(s, w, pool);
    const double fp32_bytes = exact.bytes;
    std::printf("### %s workload\n\n", needle ? "Needle" : "Random");
    if (needle) {
      std::printf("Needles at prompt positions");
      for (index_t p : w.needles) std::printf(" %ld", long(p));
      std::printf("; the uncompressed fp32 cache finds %s.\n\n", needle_marks(s, exact).c_str());
    }
    std::printf("| method | budget | B/token | packed | x fp32 | kept | rel. error |%s notes |\n", needle ? " needles |" : "");
    std::printf("|---|---|---:|---:|---:|---:|---:|%s---|\n", needle ? "---|" : "");
    const auto wanted = [&](const std::string& name) { return s.only.empty() || name.find(s.only) != std::string::npos; };
    for (const Method& m : storage)
      if (wanted(m.name)) print_row(s, m.name, "all", m.run(w, obs, 0), fp32_bytes, needle);
    if (wanted("ThinK 50% key channels")) {
      // ThinK alone: every token, half of the key channels.
      const Method& think = eviction.back();
      print_row(s, "ThinK 50% key channels", "all", think.run(w, obs, 0), fp32_bytes, needle);
    }
    for (const Method& m : eviction)
      for (index_t f : fractions)
        if (wanted(m.name)) print_row(s, m.name, "N/" + std::to_string(f), m.run(w, obs, s.n / f), fp32_bytes, needle);
    std::printf("\n");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("(report took %.1f s)\n", seconds);
  return 0;
}
