// Memory layers and memory-compressing caches (issue 22 item 8): what each keeps per token, what
// it costs and how far it is from its exact counterpart, in three parts.
//
//   1. product_key_memory with N = 1024^2 = 1M fp16 value rows: lookup time per token and the
//      bytes a token reads, and the rows against an exhaustive search over all N keys.
//   2. A stream of 32768 tokens through a causal-attention layer: the RMT segment loop
//      (memory_tokens, M memory tokens, segments of 512) and compressive_memory (FIFO memory plus a
//      4x compressed memory), against dense causal attention over the whole stream (computed for
//      the last segment's queries): state bytes per sequence (the dense KV cache grows with the
//      stream), keys read per token, time, and the relative distance of the last segment's outputs
//      (an untrained memory is no approximation of attention: the distance says how much of the
//      history each design hands the layer, not a quality).
//   3. DMC (dmc_attention prefill, dmc_decode_step) on kv_report's two decode workloads (random
//      N(0,1) K/V/q; needle: planted keys the decode queries look up), with append/merge
//      decisions from two simple rules (every r-th token opens a slot; merge when the key's cosine
//      to the last slot's exceeds a threshold): bytes per token, decode time per step and the
//      relative L2 error of the decode outputs against exact attention over the full cache; the
//      vector-quantized (PQ, k-means codebooks) and 1-bit caches of kv_cache/coded beside them.
//
// Options: --quick (smaller sizes), --tokens N (part 2), --n N --steps S (part 3), --threads T.
// The default run takes a few seconds on 2 cores.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "seqmix/attention.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/memory.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Settings {
  index_t n_sub = 1024, pkm_tokens = 256;  // part 1
  index_t tokens = 32768, segment = 512;    // part 2
  index_t n = 1024, steps = 16;             // part 3
  int threads = 2;
};

template <class T, std::size_t R>
void fill_normal(Tensor<T, R>& t, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> normal(0.f, sd);
  for (auto& x : t) x = T(normal(rng));
}

double relative_l2(const float* a, const float* ref, index_t n) {
  double diff = 0, norm = 0;
  for (index_t i = 0; i < n; ++i) diff += double(a[i] - ref[i]) * (a[i] - ref[i]), norm += double(ref[i]) * ref[i];
  return std::sqrt(diff / norm);
}

// ---- 1. product-key memory ------------------------------------------------------------------------

void product_key_part(const Settings& s, const seqmix::Executor& pool) {
  const index_t H = 4, Dk = 64, Dv = 64, N = s.n_sub * s.n_sub, T = s.pkm_tokens;
  std::mt19937 rng(11);
  Tensor<float, 3> query({T, H, Dk}), keys_a({H, s.n_sub, Dk / 2}), keys_b({H, s.n_sub, Dk / 2});
  Tensor<seqmix::f16, 2> values({N, Dv});
  fill_normal(query, rng), fill_normal(keys_a, rng), fill_normal(keys_b, rng), fill_normal(values, rng, 0.05f);
  seqmix::ProductKeyMemoryOptions options;  // top_k = 32
  const index_t k = options.top_k;
  Tensor<float, 2> y({T, Dv});
  seqmix::product_key_memory<seqmix::f16>({query.cview(), keys_a.cview(), keys_b.cview(), values.cview()}, {y.view()},
                                          options, pool);  // warm-up: pages the table in
  const auto t0 = Clock::now();
  seqmix::product_key_memory<seqmix::f16>({query.cview(), keys_a.cview(), keys_b.cview(), values.cview()}, {y.view()},
                                          options, pool);
  const double per_token = seconds_since(t0) / double(T);
  // The exhaustive search over all N keys (double) for the first token.
  Tensor<float, 2> y1({1, Dv}), y1_ref({1, Dv});
  Tensor<std::int64_t, 3> rows({1, H, k}), rows_ref({1, H, k});
  const seqmix::ProductKeyMemoryInputs<seqmix::f16> first{query.cview().slice(0, 0, 1), keys_a.cview(), keys_b.cview(),
                                                          values.cview()};
  seqmix::product_key_memory(first, {y1.view(), rows.view()}, options);
  seqmix::reference::product_key_memory(first, {y1_ref.view(), rows_ref.view()}, options);
  const bool same_rows = std::equal(rows.begin(), rows.end(), rows_ref.begin());
  const double value_bytes = double(N) * Dv * sizeof(seqmix::f16);
  const double read_per_token = double(H) * k * Dv * sizeof(seqmix::f16) + 2.0 * H * s.n_sub * (Dk / 2) * sizeof(float) / T;
  std::printf("## 1. product_key_memory: N = %lld fp16 value rows of %lld (%.0f MiB), H = %lld, top_k = %lld\n\n",
              (long long)N, (long long)Dv, value_bytes / (1 << 20), (long long)H, (long long)k);
  std::printf("| tokens | time per token | value bytes read per token | sub-key scoring per token | rows = exhaustive search (token 0) | max abs diff of y |\n");
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  double max_diff = 0;
  for (index_t c = 0; c < Dv; ++c) max_diff = std::max(max_diff, double(std::fabs(y1(0, c) - y1_ref(0, c))));
  std::printf("| %lld | %.2f us | %.0f B (%.5f%% of the table) | %lld dot products of %lld | %s | %.2e |\n\n",
              (long long)T, per_token * 1e6, read_per_token, 100.0 * read_per_token / value_bytes,
              (long long)(2 * H * s.n_sub), (long long)(Dk / 2), same_rows ? "yes" : "NO", max_diff);
}

// ---- 2. a long stream: RMT segment loop and compressive memory -----------------------------------

void stream_part(const Settings& s, const seqmix::Executor& pool) {
  const index_t T = s.tokens, H = 4, dh = 16, D = H * dh, M = 16;
  std::mt19937 rng(12);
  Tensor<float, 3> x({1, T, D}), memory({1, M, D});
  fill_normal(x, rng), fill_normal(memory, rng);
  const seqmix::ConstView<float, 4> qkv(x.data(), {1, T, H, dh});
  seqmix::AttentionOptions causal;
  causal.causal = true;
  // Dense causal attention, the exact layer, for the last segment's queries over the whole stream
  // (the full causal pass costs T / (2 segment) times as much: 32x at the default sizes).
  const index_t tail = s.segment, t_tail = T - tail;
  Tensor<float, 4> o_dense({1, tail, H, dh});
  auto t0 = Clock::now();
  seqmix::AttentionInputs<float> dense_in;
  dense_in.q = qkv.slice(1, t_tail, tail), dense_in.k = qkv, dense_in.v = qkv;
  seqmix::attention(dense_in, {o_dense.view(), {}}, causal, pool);
  const double dense_s = seconds_since(t0);
  const auto tail_distance = [&](const float* o) {  // o [1,T,D]: its last segment against dense
    return relative_l2(o + t_tail * D, o_dense.data(), tail * D);
  };
  std::printf("## 2. A stream of %lld tokens, D = %lld (H = %lld x %lld), through causal attention (q = k = v = x)\n\n",
              (long long)T, (long long)D, (long long)H, (long long)dh);
  std::printf("| method | state bytes per sequence | keys read per token (mean) | time | relative distance to dense (last %lld tokens) |\n",
              (long long)tail);
  std::printf("| --- | --- | --- | --- | --- |\n");
  std::printf("| dense causal attention (KV cache of the stream) | %.0f | %.0f | %.3f s for the last %lld queries only | 0 |\n",
              double(T) * 2 * D * sizeof(float), (T + 1) / 2.0, dense_s, (long long)tail);
  // RMT: the same attention as the layer of each segment, with M memory tokens read and written.
  const auto layer = [&pool, H, dh](const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) {
    const index_t B = in.size(0), n = in.size(1);
    const seqmix::ConstView<float, 4> q(in.data(), {B, n, H, dh});
    seqmix::AttentionOptions layer_causal;
    layer_causal.causal = true;
    seqmix::AttentionInputs<float> in_qkv;
    in_qkv.q = q, in_qkv.k = q, in_qkv.v = q;
    seqmix::attention(in_qkv, {seqmix::TensorView<float, 4>(out.data(), {B, n, H, dh}), {}}, layer_causal, pool);
  };
  for (const index_t recall : {index_t(0), index_t(4)}) {
    Tensor<float, 3> y({1, T, D}), final_memory({1, M, D});
    seqmix::MemoryTokensOptions options;
    options.segment = s.segment, options.recall = recall;
    t0 = Clock::now();
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y.view(), final_memory.view()}, layer, options, pool);
    const double rmt_s = seconds_since(t0);
    const std::string name = "memory_tokens (RMT, M = " + std::to_string(M) + ", segments of " +
                             std::to_string(s.segment) + (recall ? ", HMT recall of 4" : "") + ")";
    std::printf("| %s | %.0f | %.0f | %.3f s | %.3f |\n", name.c_str(), double(M) * D * sizeof(float) * (recall ? recall : 1),
                M + (s.segment + 1) / 2.0, rmt_s, tail_distance(y.data()));
  }
  // Compressive memory: memory 512, compressed 512 at rate 4 (the last ~2560 tokens in 1024 rows).
  for (const auto how : {seqmix::Compression::mean, seqmix::Compression::max, seqmix::Compression::most_used}) {
    seqmix::CompressiveMemoryOptions options;
    options.compression = how, options.segment = s.segment, options.memory = 512, options.compressed = 512, options.rate = 4;
    Tensor<float, 4> o({1, T, H, dh});
    t0 = Clock::now();
    seqmix::compressive_memory({qkv, qkv, qkv}, {o.view()}, options, pool);
    const double cm_s = seconds_since(t0);
    const char* names[] = {"mean", "max", "conv", "most_used"};
    std::printf("| compressive_memory (%s, memory 512 + compressed 512, rate 4) | %.0f | %.0f | %.3f s | %.3f |\n",
                names[static_cast<int>(how)], double(options.memory + options.rate - 1 + options.compressed) * 2 * D * sizeof(float),
                double(options.memory + options.compressed) + (s.segment + 1) / 2.0, cm_s, tail_distance(o.data()));
  }
  std::printf("\nState bytes: what a sequence carries between segments (compressive: the most the two memories hold).\n"
              "Keys read per token: in the steady state (RMT: M memory tokens and the causal half of a segment).\n\n");
}

// ---- 3. DMC on kv_report's decode workloads ------------------------------------------------------

struct DecodeWorkload {
  const char* name;
  Tensor<float, 4> q, k, v;  // [1, n + steps, H, D]: prompt then one token per decode step
  Tensor<float, 3> o_ref;    // [steps, Hq, D]: exact attention over the full K/V
};

DecodeWorkload make_decode_workload(const Settings& s, bool needle, index_t Hq, index_t Hkv, index_t D,
                                    const seqmix::Executor& pool) {
  const index_t T = s.n + s.steps, G = Hq / Hkv;
  DecodeWorkload w{needle ? "needle" : "random", Tensor<float, 4>({1, T, Hq, D}), Tensor<float, 4>({1, T, Hkv, D}),
                   Tensor<float, 4>({1, T, Hkv, D}), Tensor<float, 3>({s.steps, Hq, D})};
  std::mt19937 rng(needle ? 14 : 13);
  fill_normal(w.q, rng), fill_normal(w.k, rng), fill_normal(w.v, rng);
  if (needle) {  // decode query t looks up a planted prompt key: its logit is 12 after the scale
    std::uniform_int_distribution<index_t> where(16, s.n - 16);
    std::normal_distribution<float> noise(0.f, 0.5f);
    for (index_t t = 0; t < s.steps; ++t) {
      const index_t at = where(rng);
      for (index_t h = 0; h < Hq; ++h) {
        double norm2 = 0;
        for (index_t c = 0; c < D; ++c) norm2 += double(w.k(0, at, h / G, c)) * w.k(0, at, h / G, c);
        const float g = static_cast<float>(12.0 * std::sqrt(double(D)) / norm2);
        for (index_t c = 0; c < D; ++c) w.q(0, s.n + t, h, c) = g * w.k(0, at, h / G, c) + noise(rng);
      }
    }
  }
  seqmix::AttentionOptions causal;
  causal.causal = true;
  for (index_t t = 0; t < s.steps; ++t) {
    seqmix::AttentionInputs<float> in;
    in.q = w.q.cview().slice(1, s.n + t, 1);
    in.k = w.k.cview().slice(1, 0, s.n + t + 1), in.v = w.v.cview().slice(1, 0, s.n + t + 1);
    seqmix::attention(in, {seqmix::TensorView<float, 4>(&w.o_ref(t, 0, 0), {1, 1, Hq, D}), {}}, causal, pool);
  }
  return w;
}

// Decisions [1, n + steps, Hkv]: every `every`-th token opens a slot (every = 1: all append), or
// (cosine > 0) merge while the key's cosine to the previous token's key exceeds `cosine` and the
// slot holds fewer than 8 tokens.
Tensor<float, 3> dmc_decisions(const DecodeWorkload& w, index_t every, float cosine) {
  const index_t T = w.k.size(1), Hkv = w.k.size(2), D = w.k.size(3);
  Tensor<float, 3> alpha({1, T, Hkv});
  for (index_t h = 0; h < Hkv; ++h) {
    index_t run = 0;
    for (index_t t = 1; t < T; ++t) {
      bool merge = false;
      if (cosine > 0.f) {
        double dot = 0, a = 0, b = 0;
        for (index_t c = 0; c < D; ++c) {
          dot += double(w.k(0, t, h, c)) * w.k(0, t - 1, h, c);
          a += double(w.k(0, t, h, c)) * w.k(0, t, h, c), b += double(w.k(0, t - 1, h, c)) * w.k(0, t - 1, h, c);
        }
        merge = dot > cosine * std::sqrt(a * b) && run < 7;
      } else {
        merge = t % every != 0;
      }
      alpha(0, t, h) = merge ? 1.f : 0.f;
      run = merge ? run + 1 : 0;
    }
  }
  return alpha;
}

// The vector-quantized and 1-bit caches (kv_cache/coded) on the same workload: prefill appended,
// then each decode step appends its token and attends over the codes.
void coded_rows(const Settings& s, const DecodeWorkload& w, const seqmix::Executor& pool) {
  const index_t Hq = w.q.size(2), Hkv = w.k.size(2), D = w.k.size(3), T = s.n + s.steps;
  struct Row {
    const char* name;
    seqmix::KvCodeFormat format;
    index_t subspaces;
  };
  for (const Row& row : {Row{"coded: PQ m = D/4, 256 centroids (k-means on the prompt)", seqmix::KvCodeFormat::pq, D / 4},
                         Row{"coded: 1-bit signs, scale per 32 channels", seqmix::KvCodeFormat::sign1, 0}}) {
    seqmix::CodedKvCacheConfig config;
    config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D, config.format = row.format;
    const auto prompt_k = w.k.cview().slice(1, 0, s.n), prompt_v = w.v.cview().slice(1, 0, s.n);
    if (row.format == seqmix::KvCodeFormat::pq) {
      seqmix::PqFitOptions fit;
      fit.subspaces = row.subspaces;
      config.key_codebooks = seqmix::fit_pq_codebooks(prompt_k, fit, pool);
      config.value_codebooks = seqmix::fit_pq_codebooks(prompt_v, fit, pool);
    }
    seqmix::CodedKvCache cache(config);
    cache.append(prompt_k, prompt_v);
    Tensor<float, 3> o({s.steps, Hq, D});
    std::vector<double> step_s;
    for (index_t t = 0; t < s.steps; ++t) {
      const index_t at = s.n + t;
      const auto t0 = Clock::now();
      cache.append(w.k.cview().slice(1, at, 1), w.v.cview().slice(1, at, 1));
      seqmix::coded_kv_cache_attention(cache, w.q.cview().slice(1, at, 1),
                                       seqmix::TensorView<float, 4>(&o(t, 0, 0), {1, 1, Hq, D}), {}, pool);
      step_s.push_back(seconds_since(t0));
    }
    std::sort(step_s.begin(), step_s.end());
    const std::string name = std::string(row.name) +
                             (row.format == seqmix::KvCodeFormat::pq
                                  ? " + " + std::to_string(cache.codebook_bytes() / 1024) + " KiB codebooks"
                                  : std::string());
    std::printf("| %s | %s | 1.000 | %.1f | %.1f us | %.4f |\n", w.name, name.c_str(),
                double(cache.bytes()) / (double(Hkv) * T), 1e6 * step_s[step_s.size() / 2],
                relative_l2(o.data(), w.o_ref.data(), o.numel()));
  }
}

void dmc_part(const Settings& s, const seqmix::Executor& pool) {
  const index_t Hq = 8, Hkv = 2, D = 64, T = s.n + s.steps;
  std::printf("## 3. DMC and coded (PQ, 1-bit) caches on the kv_report decode workloads: prompt %lld, %lld decode steps, Hq = %lld, Hkv = %lld, D = %lld\n\n",
              (long long)s.n, (long long)s.steps, (long long)Hq, (long long)Hkv, (long long)D);
  std::printf("| workload | cache (DMC: decisions) | slots per token | bytes per token and KV head | decode time per step (median) | rel. L2 error of decode outputs |\n");
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  for (const bool needle : {false, true}) {
    const DecodeWorkload w = make_decode_workload(s, needle, Hq, Hkv, D, pool);
    struct Rule {
      const char* name;
      index_t every;
      float cosine;
    };
    for (const Rule& rule : {Rule{"all append (= fp32 cache)", 1, 0.f}, Rule{"every 2nd token opens a slot", 2, 0.f},
                             Rule{"every 4th token opens a slot", 4, 0.f}, Rule{"merge while key cosine > 0.1", 1, 0.1f}}) {
      const Tensor<float, 3> alpha = dmc_decisions(w, rule.every, rule.cosine);
      Tensor<float, 3> omega({1, T, Hkv});
      for (auto& e : omega) e = 1.f;
      seqmix::DmcCacheConfig config;
      config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D, config.capacity = T;
      seqmix::DmcCache cache(config);
      Tensor<float, 4> o_prefill({1, s.n, Hq, D});
      const auto prompt = [&](const Tensor<float, 4>& t) { return t.cview().slice(1, 0, s.n); };
      seqmix::dmc_attention({prompt(w.q), prompt(w.k), prompt(w.v), alpha.cview().slice(1, 0, s.n), omega.cview().slice(1, 0, s.n)},
                            cache, o_prefill.view(), {}, pool);
      Tensor<float, 3> o({s.steps, Hq, D});
      std::vector<double> step_s;
      for (index_t t = 0; t < s.steps; ++t) {
        const index_t at = s.n + t;
        seqmix::DmcStepInputs in{seqmix::ConstView<float, 3>(&w.q(0, at, 0, 0), {1, Hq, D}),
                                 seqmix::ConstView<float, 3>(&w.k(0, at, 0, 0), {1, Hkv, D}),
                                 seqmix::ConstView<float, 3>(&w.v(0, at, 0, 0), {1, Hkv, D}),
                                 seqmix::ConstView<float, 2>(&alpha(0, at, 0), {1, Hkv}),
                                 seqmix::ConstView<float, 2>(&omega(0, at, 0), {1, Hkv})};
        const auto t0 = Clock::now();
        seqmix::dmc_decode_step(in, cache, seqmix::TensorView<float, 3>(&o(t, 0, 0), {1, Hq, D}), {}, pool);
        step_s.push_back(seconds_since(t0));
      }
      std::sort(step_s.begin(), step_s.end());
      double slots = 0;
      for (index_t h = 0; h < Hkv; ++h) slots += double(cache.size(0, h));
      std::printf("| %s | %s | %.3f | %.1f | %.1f us | %.4f |\n", w.name, rule.name, slots / (double(Hkv) * T),
                  double(cache.bytes()) / (double(Hkv) * T), 1e6 * step_s[step_s.size() / 2],
                  relative_l2(o.data(), w.o_ref.data(), o.numel()));
    }
    coded_rows(s, w, pool);
  }
  std::printf("\nbytes per token and KV head: DMC, the cache's fp32 keys, values and importances over the tokens it\n"
              "absorbed; coded caches, codes and scales per entry (the PQ codebooks, fit by k-means on the prompt's\n"
              "keys and values, are shared by every entry and listed beside). Decode runs 1 query per step.\n");
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "memory_layers: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atol(argv[++i]);
    };
    if (a == "--quick") s.n_sub = 256, s.pkm_tokens = 256, s.tokens = 4096, s.n = 512, s.steps = 8;
    else if (a == "--tokens") s.tokens = value();
    else if (a == "--n") s.n = value();
    else if (a == "--steps") s.steps = value();
    else if (a == "--threads") s.threads = static_cast<int>(value());
    else {
      std::printf("usage: seqmix_example_memory_layers [--quick] [--tokens N] [--n N] [--steps S] [--threads T]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (s.tokens < s.segment || s.n < 64 || s.steps < 1 || s.threads < 1) {
    std::fprintf(stderr, "memory_layers: need --tokens >= 512, --n >= 64, --steps >= 1, --threads >= 1\n");
    return 2;
  }
  const seqmix::ThreadPool pool(s.threads);
  std::printf("# Memory layers and memory-compressing caches (%d threads)\n\n", s.threads);
  product_key_part(s, pool);
  stream_part(s, pool);
  dmc_part(s, pool);
  return 0;
}
