// Dense attention benchmarks on the named model shapes (model_shapes.hpp), 2 threads.
//
// Counters:
//   GFLOP/s (prefill) = 2 * Hq * (Dk + Dv) * B * visible_pairs / time, visible_pairs the (query,
//             key) pairs the mask lets through (T*(T+1)/2 causal, Tq*Tk full): q.k and p.v are
//             one multiply-add per feature each. ggml computes the causal case at full cost, so
//             its rate on the same work is 2x lower than its raw FLOP count suggests.
//   GB/s    (decode)  = B * Tk * Hkv * (Dk + Dv) * sizeof(KV) / time: K and V read once, the
//             bound of decode; compare with the 68 GB/s 2-core streaming bandwidth.
// Each family also runs the reference on a smaller shape (names end in _reference) next to
// the fast form on that same shape, for the speed-up.
#include <benchmark/benchmark.h>

#include <string>
#include <type_traits>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
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

template <class KV>
void prefill(benchmark::State& state, const st::AttentionShape& shape, index_t T, bool causal, Form form) {
  Problem<KV> p(T, T, shape);
  seqmix::AttentionOptions options;
  options.causal = causal;
  for (auto _ : state) {
    if (form == Form::fast)
      seqmix::attention(p.inputs(), p.outputs(), options, pool());
    else
      seqmix::reference::attention(p.inputs(), p.outputs(), options);
    benchmark::DoNotOptimize(p.o.data());
  }
  const double pairs = causal ? 0.5 * static_cast<double>(T) * static_cast<double>(T + 1) : static_cast<double>(T) * T;
  const double flops = 2.0 * static_cast<double>(p.Hq * 2 * p.D) * pairs;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class KV>
void decode(benchmark::State& state, const st::AttentionShape& shape, index_t Tk, Form form) {
  Problem<KV> p(1, Tk, shape);
  seqmix::AttentionOptions options;
  options.causal = true;
  for (auto _ : state) {
    if (form == Form::fast)
      seqmix::attention(p.inputs(), p.outputs(), options, pool());
    else
      seqmix::reference::attention(p.inputs(), p.outputs(), options);
    benchmark::DoNotOptimize(p.o.data());
  }
  const double bytes = static_cast<double>(Tk * p.Hkv * 2 * p.D) * sizeof(KV);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
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
  // Reference baselines on shapes it finishes in well under a second, with the fast form beside.
  for (const Form form : {Form::fast, Form::reference}) {
    const std::string suffix = form == Form::reference ? "_reference" : "";
    add("attention/prefill/" + llama.name + "_T256_causal_" + kv + suffix,
        [&llama, form](benchmark::State& s) { prefill<KV>(s, llama, 256, true, form); });
    add("attention/decode/" + llama.name + "_Tk4096_" + kv + suffix,
        [&llama, form](benchmark::State& s) { decode<KV>(s, llama, 4096, form); });
  }
}

const bool kRegistered = [] {
  register_kv<float>();
  // 16-bit K/V: decode targets at Hq=32 Hkv=8 D=128 are <= 1.5 ms at Tk=16384 and <= 6 ms at
  // Tk=65536 (ggml: 5.82 ms and 27.6 ms).
  register_kv<seqmix::f16>();
  register_kv<seqmix::bf16>();
  return true;
}();

}  // namespace
