// Dense attention benchmarks on the named model shapes (model_shapes.hpp), 2 threads.
//
// Counters:
//   GFLOP/s (prefill) = 2 * Hq * (Dk + Dv) * B * visible_pairs / time, visible_pairs the (query,
//             key) pairs the mask lets through (T*(T+1)/2 causal, Tq*Tk full): q.k and p.v are
//             one multiply-add per feature each. ggml computes the causal case at full cost, so
//             its rate on the same work is 2x lower than its raw FLOP count suggests.
//   GB/s    (decode)  = B * Tk * Hkv * (Dk + Dv) * sizeof(KV) / time: K and V read once, the
//             bound of decode; compare with the 68 GB/s 2-core streaming bandwidth.
// K, V and the page pools are seqmix::Tensor, so from 4 MiB on they sit in 2 MiB transparent huge
// pages (AlignedAllocator, core/huge_pages.hpp), as a serving engine would allocate its KV cache;
// in 4 KiB pages fp32 / fp16 decode took 1.04-1.06x / 1.14-1.16x the CPU time (attention/README.md).
// Serving forms (issue 14), each beside its dense counterpart in the same run:
//   attention/paged/...   paged decode, 16 sequences x 4096 cached tokens in fp16 pages of 16
//                         and 64 tokens (shuffled block table), beside attention/paged/..._contiguous,
//                         dense decode of B = 16 over the same bytes; GB/s as decode.
//   attention/paged/prefill/...  a 512-query chunk against a 4096-token cached prefix in fp16
//                         pages of 16 and 64 (the flash path over pages), beside .._contiguous,
//                         dense prefill of the same queries over contiguous K/V; GFLOP/s as
//                         prefill on the visible (bottom-right causal) pairs.
//   attention/varlen/...  packed causal prefill of 8 sequences {17, 33, 100, 255, 512, 700, 1024,
//                         2048}, beside one dense call on B = 1, T = 4689 (the same tokens) and the
//                         same sequences padded to B = 8 x T = 2048; GFLOP/s on the visible pairs
//                         of the *packed* problem, so the three rates compare as times.
//   attention/prefill|decode/..._rope  the same with the fused rope (Llama-3.1 scaling): prefill
//                         rotates q and every key in the kernel, decode rotates q over a cache of
//                         rotated keys (rope_rotated_keys = Tk); issue 15 asks <= 5% over plain.
//   attention/bf16/prefill/...  bf16 K/V causal prefill with bf16 dot products (bf16_compute =
//                         dot), GFLOP/s as prefill, eff against the bf16 dot peak, and
//                         speedup_vs_f32: the fp32 prefill's CPU time over this one's, alternating
//                         calls in the same run (issue 19 asks >= 1.4x without AMX).
//   attention/decode/..._bf16_dot  bf16 K/V decode with bf16 dot products, GB/s and eff as decode,
//                         and speedup_vs_fp32compute: the same call with fp32 products over this
//                         one, alternating batches of calls (about 0.1 s each) in the same run.
//   attention/prefill/..._causal/bf16io_dot|_fp32  q, k and v all stored as bf16, with bf16 dot
//                         products or fp32 products; speedup_vs_f32 over the fp32 q/k/v prefill,
//                         vs_f32_query over the same call on fp32 q (the query load's conversion).
//   attention/prefill|decode/..._<bias>  the same with a relative bias computed in the tile loop
//                         (t5: 32 causal buckets, max_distance 128; kerple_log / kerple_power;
//                         fire: a 32-wide MLP whose hidden layer the heads share, threshold L = 512,
//                         so prefill rows past 512 take the per-logit path), beside the plain run of
//                         the same shape, so each bias's cost is the ratio of the two times.
// Each family also runs the reference on a smaller shape (names end in _reference) next to
// the fast form on that same shape, for the speed-up.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/positional/rope/table.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const seqmix::ThreadPool& pool() {
  static const seqmix::ThreadPool instance(2);
  return instance;
}

template <class KV>
Tensor<KV, 4> random_kv(const std::array<index_t, 4>& shape, std::uint64_t seed) {
  const Tensor<float, 4> values = st::random_tensor<4>(shape, seed);
  Tensor<KV, 4> out(shape);
  for (index_t i = 0; i < values.numel(); ++i) out.data()[i] = static_cast<KV>(values.data()[i]);
  return out;
}

template <class KV>
struct Problem {
  index_t B, Tq, Tk, Hq, Hkv, D;
  Tensor<float, 4> q, o;
  Tensor<KV, 4> k, v;
  Problem(index_t Tq_, index_t Tk_, const st::AttentionShape& s)
      : B(1), Tq(Tq_), Tk(Tk_), Hq(s.Hq), Hkv(s.Hkv), D(s.D),
        q(st::random_tensor<4>({1, Tq, Hq, D}, 1)),
        o({1, Tq, Hq, D}),
        k(random_kv<KV>({1, Tk, Hkv, D}, 2)),
        v(random_kv<KV>({1, Tk, Hkv, D}, 3)) {}
  seqmix::AttentionInputs<KV> inputs() const {
    seqmix::AttentionInputs<KV> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    return in;
  }
  seqmix::AttentionOutputs outputs() { return {o.view(), {}}; }
};

enum class Form { fast, reference };

// The Llama-3.1 rope table (rope_theta 500000, llama3 scaling x8 from 8192) over `positions`,
// one per size for the process: attention/..._rope runs the fused rope (issue 15 item 2).
const seqmix::RopeTable* llama3_rope(index_t D, index_t positions) {
  static std::vector<std::unique_ptr<seqmix::RopeTable>> tables;
  for (const auto& t : tables)
    if (t->rotary_dim() == D && t->positions() == positions) return t.get();
  seqmix::RopeConfig c;
  c.scheme = seqmix::RopeScheme::llama3, c.rotary_dim = D, c.base = 500000.0, c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  tables.push_back(std::make_unique<seqmix::RopeTable>(c, positions));
  return tables.back().get();
}

enum class Bias { none, t5, kerple_log, kerple_power, fire };

const char* bias_name(Bias bias) {
  switch (bias) {
    case Bias::t5: return "t5";
    case Bias::kerple_log: return "kerple_log";
    case Bias::kerple_power: return "kerple_power";
    case Bias::fire: return "fire";
    case Bias::none: break;
  }
  return "";
}

// Per-head parameters of each bias for Hq heads, made once for the process (the views in the
// returned RelativeBias point into them). Values in the ranges trained models reach.
seqmix::RelativeBias relative_bias(Bias bias, index_t Hq) {
  struct Params {
    index_t Hq = 0;
    Tensor<float, 2> t5_table, fire_w1, fire_b1, fire_w2;
    Tensor<float, 1> r1, r2_log, r2_power, fire_b2;
  };
  static std::vector<std::unique_ptr<Params>> made;
  Params* p = nullptr;
  for (const auto& m : made)
    if (m->Hq == Hq) p = m.get();
  if (p == nullptr) {
    made.push_back(std::make_unique<Params>());
    p = made.back().get();
    const index_t W = 32;
    p->Hq = Hq;
    p->t5_table = st::random_tensor<2>({Hq, 32}, 11, -1.f, 1.f);
    p->r1 = st::random_tensor<1>({Hq}, 12, 0.5f, 2.f);
    p->r2_log = st::random_tensor<1>({Hq}, 13, 0.5f, 2.f);
    p->r2_power = st::random_tensor<1>({Hq}, 14, 0.2f, 1.f);
    p->fire_w1 = st::random_tensor<2>({1, W}, 15, -1.f, 1.f);
    p->fire_b1 = st::random_tensor<2>({1, W}, 16, -1.f, 1.f);
    p->fire_w2 = st::random_tensor<2>({Hq, W}, 17, -1.f, 1.f);
    p->fire_b2 = st::random_tensor<1>({Hq}, 18, -1.f, 1.f);
  }
  seqmix::RelativeBias rb;
  switch (bias) {
    case Bias::none:
      break;
    case Bias::t5:
      rb.kind = seqmix::RelativeBiasKind::t5, rb.table = p->t5_table.view(), rb.max_distance = 128;
      break;
    case Bias::kerple_log:
      rb.kind = seqmix::RelativeBiasKind::kerple_log, rb.r1 = p->r1.view(), rb.r2 = p->r2_log.view();
      break;
    case Bias::kerple_power:
      rb.kind = seqmix::RelativeBiasKind::kerple_power, rb.r1 = p->r1.view(), rb.r2 = p->r2_power.view();
      break;
    case Bias::fire: {
      // The paper's MLP: one hidden layer every head shares (stride 0 along the heads).
      const index_t W = p->fire_w1.size(1);
      rb.kind = seqmix::RelativeBiasKind::fire;
      rb.fire_w1 = seqmix::ConstView<float, 2>(p->fire_w1.data(), {Hq, W}, {0, 1});
      rb.fire_b1 = seqmix::ConstView<float, 2>(p->fire_b1.data(), {Hq, W}, {0, 1});
      rb.fire_w2 = p->fire_w2.view(), rb.fire_b2 = p->fire_b2.view();
      break;
    }
  }
  return rb;
}

// rope: q and every key rotated in the kernel (prefill), q only over a rotated cache (decode).
template <class KV>
void prefill(benchmark::State& state, const st::AttentionShape& shape, index_t T, bool causal, Form form,
             bool rope = false, Bias bias = Bias::none) {
  Problem<KV> p(T, T, shape);
  seqmix::AttentionOptions options;
  options.causal = causal;
  seqmix::AttentionInputs<KV> in = p.inputs();
  if (rope) in.rope = llama3_rope(p.D, T);
  in.relative_bias = relative_bias(bias, p.Hq);
  for (auto _ : state) {
    if (form == Form::fast)
      seqmix::attention(in, p.outputs(), options, pool());
    else
      seqmix::reference::attention(p.inputs(), p.outputs(), options);
    benchmark::DoNotOptimize(p.o.data());
  }
  const double pairs = causal ? 0.5 * static_cast<double>(T) * static_cast<double>(T + 1) : static_cast<double>(T) * T;
  const double flops = 2.0 * static_cast<double>(p.Hq * 2 * p.D) * pairs;
  seqmix::testing::report_gflops(state, flops);
}

template <class KV>
void decode(benchmark::State& state, const st::AttentionShape& shape, index_t Tk, Form form, bool rope = false,
            Bias bias = Bias::none) {
  Problem<KV> p(1, Tk, shape);
  seqmix::AttentionOptions options;
  options.causal = true;
  seqmix::AttentionInputs<KV> in = p.inputs();
  if (rope) in.rope = llama3_rope(p.D, Tk), in.rope_rotated_keys = Tk;  // the cache holds rotated keys
  in.relative_bias = relative_bias(bias, p.Hq);
  for (auto _ : state) {
    if (form == Form::fast)
      seqmix::attention(in, p.outputs(), options, pool());
    else
      seqmix::reference::attention(p.inputs(), p.outputs(), options);
    benchmark::DoNotOptimize(p.o.data());
  }
  const double bytes = static_cast<double>(Tk * p.Hkv * 2 * p.D) * sizeof(KV);
  seqmix::testing::report_gbytes(state, bytes);
}

// bf16 K/V decode with bf16 dot products (bf16_compute = dot), GB/s and eff as decode.
// speedup_vs_fp32compute is the same call with fp32 products (the default) over this one, timed
// by st::alternated_cpu_medians after the timed loop.
void decode_bf16_dot(benchmark::State& state, const st::AttentionShape& shape, index_t Tk) {
  Problem<seqmix::bf16> p(1, Tk, shape);
  seqmix::AttentionOptions options, dot;
  options.causal = true;
  dot = options, dot.bf16_compute = seqmix::Bf16Compute::dot;
  for (auto _ : state) {
    seqmix::attention(p.inputs(), p.outputs(), dot, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::attention(p.inputs(), p.outputs(), options, pool()); },
                                            [&] { seqmix::attention(p.inputs(), p.outputs(), dot, pool()); });
  state.counters["speedup_vs_fp32compute"] = t[0] / t[1];
  seqmix::testing::report_gbytes(state, static_cast<double>(Tk * p.Hkv * 2 * p.D) * sizeof(seqmix::bf16));
}

// bf16 K/V prefill with bf16 dot products (AttentionOptions::bf16_compute = dot), eff against the
// bf16 dot peak. speedup_vs_f32 is the fp32 prefill (fp32 K/V) over this one, timed by
// st::alternated_cpu_medians.
void prefill_bf16_dot(benchmark::State& state, const st::AttentionShape& shape, index_t T) {
  Problem<seqmix::bf16> p(T, T, shape);
  Problem<float> f(T, T, shape);
  seqmix::AttentionOptions options, dot;
  options.causal = true;
  dot = options, dot.bf16_compute = seqmix::Bf16Compute::dot;
  for (auto _ : state) {
    seqmix::attention(p.inputs(), p.outputs(), dot, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::attention(f.inputs(), f.outputs(), options, pool()); },
                                            [&] { seqmix::attention(p.inputs(), p.outputs(), dot, pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[1];
  const double pairs = 0.5 * static_cast<double>(T) * static_cast<double>(T + 1);
  seqmix::testing::report_gflops_bf16(state, 2.0 * static_cast<double>(p.Hq * 2 * p.D) * pairs);
}

// q, k and v all stored as bf16 (AttentionInputs<bf16, bf16>: each query tile is widened on
// load), products as `compute` says. speedup_vs_f32 is the fp32 prefill (fp32 q/k/v, fp32
// products) over this one, vs_f32_query the same call on fp32 q (bf16 K/V) over this one (the
// cost of the query load's conversion; ~1 expected), timed by st::alternated_cpu_medians.
void prefill_bf16_io(benchmark::State& state, const st::AttentionShape& shape, index_t T, seqmix::Bf16Compute compute) {
  Problem<seqmix::bf16> p(T, T, shape);
  Problem<float> f(T, T, shape);
  Tensor<seqmix::bf16, 4> q16({1, T, p.Hq, p.D});
  seqmix::convert(p.q.data(), q16.data(), p.q.numel());
  seqmix::AttentionInputs<seqmix::bf16, seqmix::bf16> in;
  in.q = q16.cview(), in.k = p.k.cview(), in.v = p.v.cview();
  seqmix::AttentionOptions options, half;
  options.causal = true;
  half = options, half.bf16_compute = compute;
  for (auto _ : state) {
    seqmix::attention(in, p.outputs(), half, pool());
    benchmark::DoNotOptimize(p.o.data());
  }
  const auto t = st::alternated_cpu_medians([&] { seqmix::attention(f.inputs(), f.outputs(), options, pool()); },
                                            [&] { seqmix::attention(p.inputs(), p.outputs(), half, pool()); },
                                            [&] { seqmix::attention(in, p.outputs(), half, pool()); });
  state.counters["speedup_vs_f32"] = t[0] / t[2];
  state.counters["vs_f32_query"] = t[1] / t[2];
  const double pairs = 0.5 * static_cast<double>(T) * static_cast<double>(T + 1);
  const double flops = 2.0 * static_cast<double>(p.Hq * 2 * p.D) * pairs;
  if (compute == seqmix::Bf16Compute::dot)
    seqmix::testing::report_gflops_bf16(state, flops);
  else
    st::report_gflops(state, flops);
}

template <class KV>
const char* kv_name() {
  if constexpr (std::is_same_v<KV, seqmix::f16>) return "f16";
  if constexpr (std::is_same_v<KV, seqmix::bf16>) return "bf16";
  return "f32";
}

template <class KV>
void register_kv() {
  const st::AttentionShape& llama = st::attention_shapes().front();  // Hq=32, Hkv=8, D=128
  const std::string kv = kv_name<KV>();
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (const index_t T : {1024, 4096})
    add("attention/prefill/" + llama.name + "_T" + std::to_string(T) + "_causal_" + kv,
        [&llama, T](benchmark::State& s) { prefill<KV>(s, llama, T, true, Form::fast); });
  add("attention/prefill/" + llama.name + "_T1024_full_" + kv,
      [&llama](benchmark::State& s) { prefill<KV>(s, llama, 1024, false, Form::fast); });
  for (const index_t Tk : {16384, 65536})
    add("attention/decode/" + llama.name + "_Tk" + std::to_string(Tk) + "_" + kv,
        [&llama, Tk](benchmark::State& s) { decode<KV>(s, llama, Tk, Form::fast); });
  // Fused rope beside the plain runs above (target: at most 5% slower).
  add("attention/prefill/" + llama.name + "_T1024_causal_" + kv + "_rope",
      [&llama](benchmark::State& s) { prefill<KV>(s, llama, 1024, true, Form::fast, true); });
  add("attention/decode/" + llama.name + "_Tk16384_" + kv + "_rope",
      [&llama](benchmark::State& s) { decode<KV>(s, llama, 16384, Form::fast, true); });
  // Relative biases beside the same plain runs (each bias's cost is the ratio of the times).
  for (const Bias bias : {Bias::t5, Bias::kerple_log, Bias::kerple_power, Bias::fire}) {
    add("attention/prefill/" + llama.name + "_T1024_causal_" + kv + "_" + bias_name(bias),
        [&llama, bias](benchmark::State& s) { prefill<KV>(s, llama, 1024, true, Form::fast, false, bias); });
    add("attention/decode/" + llama.name + "_Tk16384_" + kv + "_" + bias_name(bias),
        [&llama, bias](benchmark::State& s) { decode<KV>(s, llama, 16384, Form::fast, false, bias); });
  }
  // Reference baselines on shapes it finishes in well under a second, with the fast form beside.
  for (const Form form : {Form::fast, Form::reference}) {
    const std::string suffix = form == Form::reference ? "_reference" : "";
    add("attention/prefill/" + llama.name + "_T256_causal_" + kv + suffix,
        [&llama, form](benchmark::State& s) { prefill<KV>(s, llama, 256, true, form); });
    add("attention/decode/" + llama.name + "_Tk4096_" + kv + suffix,
        [&llama, form](benchmark::State& s) { decode<KV>(s, llama, 4096, form); });
  }
}

// 16 sequences x Tk cached tokens, pages of `block_size` in a shuffled pool (with spare pages).
void paged_decode(benchmark::State& state, const st::AttentionShape& shape, index_t Tk, index_t block_size) {
  using KV = seqmix::f16;
  const index_t N = 16, blocks_per_seq = (Tk + block_size - 1) / block_size, blocks = N * blocks_per_seq + 16;
  const auto q = st::random_tensor<4>({N, 1, shape.Hq, shape.D}, 1);
  const Tensor<KV, 4> k_pages = random_kv<KV>({blocks, block_size, shape.Hkv, shape.D}, 2);
  const Tensor<KV, 4> v_pages = random_kv<KV>({blocks, block_size, shape.Hkv, shape.D}, 3);
  Tensor<std::int32_t, 2> table({N, blocks_per_seq});
  for (index_t i = 0; i < N * blocks_per_seq; ++i)
    table.data()[i] = static_cast<std::int32_t>((i * 7919) % blocks);  // 7919 is prime: a permutation
  const std::vector<std::int32_t> lengths(static_cast<std::size_t>(N), static_cast<std::int32_t>(Tk));
  Tensor<float, 4> o({N, 1, shape.Hq, shape.D});
  seqmix::PagedAttentionInputs<KV> in;
  in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view();
  in.block_table = table.view(), in.cache_seqlens = lengths;
  for (auto _ : state) {
    seqmix::paged_attention(in, {o.view(), {}}, {}, pool());
    benchmark::DoNotOptimize(o.data());
  }
  const double bytes = static_cast<double>(N * Tk * shape.Hkv * 2 * shape.D) * sizeof(KV);
  seqmix::testing::report_gbytes(state, bytes);
}

// The contiguous counterpart: dense decode of B = 16 rows over Tk keys each.
void batched_decode(benchmark::State& state, const st::AttentionShape& shape, index_t Tk) {
  using KV = seqmix::f16;
  const index_t B = 16;
  const auto q = st::random_tensor<4>({B, 1, shape.Hq, shape.D}, 1);
  const Tensor<KV, 4> k = random_kv<KV>({B, Tk, shape.Hkv, shape.D}, 2), v = random_kv<KV>({B, Tk, shape.Hkv, shape.D}, 3);
  Tensor<float, 4> o({B, 1, shape.Hq, shape.D});
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    seqmix::attention(in, {o.view(), {}}, options, pool());
    benchmark::DoNotOptimize(o.data());
  }
  const double bytes = static_cast<double>(B * Tk * shape.Hkv * 2 * shape.D) * sizeof(KV);
  seqmix::testing::report_gbytes(state, bytes);
}

// Chunked prefill against the cache: `chunk` new queries of one sequence whose cache holds
// prefix + chunk tokens, fp16 pages of `block_size` in a shuffled pool (block_size 0: the same
// problem as dense attention over contiguous K/V, the baseline). GFLOP/s as prefill, on the
// (query, key) pairs the bottom-right causal mask lets through.
void paged_prefill(benchmark::State& state, const st::AttentionShape& shape, index_t prefix, index_t chunk,
                   index_t block_size) {
  using KV = seqmix::f16;
  const index_t L = prefix + chunk;
  const auto q = st::random_tensor<4>({1, chunk, shape.Hq, shape.D}, 1);
  Tensor<float, 4> o({1, chunk, shape.Hq, shape.D});
  Tensor<KV, 4> k, v;
  Tensor<std::int32_t, 2> table;
  const std::vector<std::int32_t> lengths{static_cast<std::int32_t>(L)};
  if (block_size > 0) {
    const index_t blocks_per_seq = (L + block_size - 1) / block_size, blocks = blocks_per_seq + 16;
    k = random_kv<KV>({blocks, block_size, shape.Hkv, shape.D}, 2);
    v = random_kv<KV>({blocks, block_size, shape.Hkv, shape.D}, 3);
    table = Tensor<std::int32_t, 2>({1, blocks_per_seq});
    for (index_t i = 0; i < blocks_per_seq; ++i) table.data()[i] = static_cast<std::int32_t>((i * 7919) % blocks);
  } else {
    k = random_kv<KV>({1, L, shape.Hkv, shape.D}, 2);
    v = random_kv<KV>({1, L, shape.Hkv, shape.D}, 3);
  }
  seqmix::PagedAttentionInputs<KV> paged;
  paged.q = q.view(), paged.k_pages = k.view(), paged.v_pages = v.view();
  paged.block_table = table.view(), paged.cache_seqlens = lengths;
  seqmix::AttentionInputs<KV> dense;
  dense.q = q.view(), dense.k = k.view(), dense.v = v.view();
  seqmix::AttentionOptions options;
  options.causal = true;  // queries at the end of the keys (bottom-right), as paged
  for (auto _ : state) {
    if (block_size > 0)
      seqmix::paged_attention(paged, {o.view(), {}}, {}, pool());
    else
      seqmix::attention(dense, {o.view(), {}}, options, pool());
    benchmark::DoNotOptimize(o.data());
  }
  const double pairs = static_cast<double>(chunk) * static_cast<double>(prefix) + 0.5 * chunk * (chunk + 1.0);
  const double flops = 2.0 * static_cast<double>(shape.Hq * 2 * shape.D) * pairs;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

const std::vector<index_t>& varlen_lengths() {
  static const std::vector<index_t> lengths = {17, 33, 100, 255, 512, 700, 1024, 2048};
  return lengths;
}

enum class VarlenForm { packed, dense_same_tokens, padded };

void varlen_prefill(benchmark::State& state, const st::AttentionShape& shape, VarlenForm form) {
  const std::vector<index_t>& lengths = varlen_lengths();
  std::vector<std::int64_t> cu{0};
  double pairs = 0.0;
  index_t longest = 0;
  for (index_t L : lengths) {
    cu.push_back(cu.back() + L);
    pairs += 0.5 * static_cast<double>(L) * static_cast<double>(L + 1);
    longest = std::max(longest, L);
  }
  const index_t total = cu.back();
  const index_t B = form == VarlenForm::padded ? static_cast<index_t>(lengths.size()) : 1;
  const index_t T = form == VarlenForm::padded ? longest : total;
  const auto q = st::random_tensor<4>({B, T, shape.Hq, shape.D}, 1);
  const auto k = st::random_tensor<4>({B, T, shape.Hkv, shape.D}, 2);
  const auto v = st::random_tensor<4>({B, T, shape.Hkv, shape.D}, 3);
  Tensor<float, 4> o({B, T, shape.Hq, shape.D});
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (form == VarlenForm::packed) in.batch.cu_seqlens = cu;
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    seqmix::attention(in, {o.view(), {}}, options, pool());
    benchmark::DoNotOptimize(o.data());
  }
  const double flops = 2.0 * static_cast<double>(shape.Hq * 2 * shape.D) * pairs;
  seqmix::testing::report_gflops(state, flops);
}

void register_serving() {
  const st::AttentionShape& llama = st::attention_shapes().front();  // Hq=32, Hkv=8, D=128
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (const index_t bs : {16, 64})
    add("attention/paged/" + llama.name + "_N16_Tk4096_bs" + std::to_string(bs) + "_f16",
        [&llama, bs](benchmark::State& s) { paged_decode(s, llama, 4096, bs); });
  add("attention/paged/" + llama.name + "_N16_Tk4096_f16_contiguous",
      [&llama](benchmark::State& s) { batched_decode(s, llama, 4096); });
  for (const index_t bs : {16, 64})
    add("attention/paged/prefill/" + llama.name + "_prefix4096_chunk512_bs" + std::to_string(bs) + "_f16",
        [&llama, bs](benchmark::State& s) { paged_prefill(s, llama, 4096, 512, bs); });
  add("attention/paged/prefill/" + llama.name + "_prefix4096_chunk512_f16_contiguous",
      [&llama](benchmark::State& s) { paged_prefill(s, llama, 4096, 512, 0); });
  add("attention/varlen/" + llama.name + "_8seqs_causal_f32",
      [&llama](benchmark::State& s) { varlen_prefill(s, llama, VarlenForm::packed); });
  add("attention/varlen/" + llama.name + "_8seqs_causal_f32_dense_same_tokens",
      [&llama](benchmark::State& s) { varlen_prefill(s, llama, VarlenForm::dense_same_tokens); });
  add("attention/varlen/" + llama.name + "_8seqs_causal_f32_padded_2048",
      [&llama](benchmark::State& s) { varlen_prefill(s, llama, VarlenForm::padded); });
}

const bool kRegistered = [] {
  register_serving();
  register_kv<float>();
  // 16-bit K/V: decode targets at Hq=32 Hkv=8 D=128 are <= 1.5 ms at Tk=16384 and <= 6 ms at
  // Tk=65536 (ggml: 5.82 ms and 27.6 ms).
  register_kv<seqmix::f16>();
  register_kv<seqmix::bf16>();
  // bf16 dot products (issue 19 item 3; target >= 1.4x fp32 on AVX512-BF16 without AMX).
  const st::AttentionShape& llama = st::attention_shapes().front();
  for (const index_t T : {1024, 2048, 4096})
    benchmark::RegisterBenchmark(("attention/bf16/prefill/" + llama.name + "_T" + std::to_string(T) + "_causal").c_str(),
                                 [&llama, T](benchmark::State& s) { prefill_bf16_dot(s, llama, T); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  // bf16 K/V decode with bf16 dot products (issue 19 item 4), beside the _bf16 rows above.
  for (const index_t Tk : {16384, 65536})
    benchmark::RegisterBenchmark(("attention/decode/" + llama.name + "_Tk" + std::to_string(Tk) + "_bf16_dot").c_str(),
                                 [&llama, Tk](benchmark::State& s) { decode_bf16_dot(s, llama, Tk); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  // bf16 storage of q as well as K/V (issue 19 item 3): dot products, and fp32 products.
  for (const index_t T : {1024, 4096})
    for (const seqmix::Bf16Compute compute : {seqmix::Bf16Compute::dot, seqmix::Bf16Compute::fp32})
      benchmark::RegisterBenchmark(("attention/prefill/" + llama.name + "_T" + std::to_string(T) + "_causal/bf16io" +
                                    (compute == seqmix::Bf16Compute::dot ? "_dot" : "_fp32"))
                                       .c_str(),
                                   [&llama, T, compute](benchmark::State& s) { prefill_bf16_io(s, llama, T, compute); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
