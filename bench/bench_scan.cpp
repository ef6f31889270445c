// Benchmarks of the core scans (SPEC section 2): linear_scan in both gate spaces, with all states
// or only the last, on a wide shape (channel-parallel path) and a narrow one (time-parallel
// path), each beside the sequential reference loop (names ending in /reference); and the generic
// associative_scan. Two threads unless the name says otherwise; wall time throughout.
//
// GB/s counts the bytes an ideal one-pass scan must move:
//   linear_scan, all states   12 bytes per element of [B,T,D]: read a, read b, write h
//   linear_scan, last only     8 bytes per element: read a, read b (h_last is negligible)
//   associative_scan          2 * sizeof(value) per element: read in, write out
// The time-parallel path actually moves about 20 (8) bytes per element; the counter does not
// credit that extra traffic. On these machines 2 cores stream about 68 GB/s.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateSpace;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

const seqmix::ThreadPool& pool() {
  static const seqmix::ThreadPool instance(2);
  return instance;
}

void set_bandwidth(benchmark::State& state, double bytes) {
  seqmix::testing::report_gbytes(state, bytes);
}

struct LinearShape {
  const char* name;
  index_t B, T, D;
};

// D = 1024: many channels, split across threads; D = 16: one AVX-512 vector, split across time.
const LinearShape kShapes[] = {
    {"B1_T65536_D1024", 1, 65536, 1024},
    {"B1_T65536_D16", 1, 65536, 16},
};

enum class Form { fast, fast_one_thread, reference };

struct LinearData {
  Tensor<float, 3> a, b, h;
  Tensor<float, 2> h0, last;
  LinearData(const LinearShape& s, GateSpace gate)
      : a({s.B, s.T, s.D}), b({s.B, s.T, s.D}), h({s.B, s.T, s.D}), h0({s.B, s.D}), last({s.B, s.D}) {
    const index_t n = s.B * s.T * s.D;
    // Flat fills: one random engine per tensor instead of one per row.
    if (gate == GateSpace::log)
      st::fill_log_gate(a.view().reshape<1>({n}), 1, -1.f, 0.f);
    else
      st::fill_uniform(a.view().reshape<1>({n}), 1, -1.f, 1.f);
    st::fill_uniform(b.view().reshape<1>({n}), 2);
    st::fill_uniform(h0.view(), 3);
    h.fill(0.f);  // touch the output pages before timing
  }
};

void linear(benchmark::State& state, LinearShape shape, GateSpace gate, bool all_states, Form form) {
  LinearData data(shape, gate);
  const seqmix::LinearScanOptions options{gate};
  const TensorView<float, 3> h_all = all_states ? data.h.view() : TensorView<float, 3>();
  const seqmix::Executor& executor =
      form == Form::fast ? static_cast<const seqmix::Executor&>(pool()) : seqmix::serial_executor();
  for (auto _ : state) {
    if (form == Form::reference)
      seqmix::reference::linear_scan(data.a.view(), data.b.view(), data.h0.view(), h_all, data.last.view(), options);
    else
      seqmix::linear_scan(data.a.view(), data.b.view(), data.h0.view(), h_all, data.last.view(), options, executor);
    benchmark::ClobberMemory();
  }
  set_bandwidth(state, double(shape.B * shape.T * shape.D) * (all_states ? 12.0 : 8.0));
}

template <class Monoid>
void associative(benchmark::State& state, Monoid monoid, std::vector<typename Monoid::value_type> in, bool threaded) {
  std::vector<typename Monoid::value_type> out(in.size());
  const seqmix::Executor& executor =
      threaded ? static_cast<const seqmix::Executor&>(pool()) : seqmix::serial_executor();
  for (auto _ : state) {
    seqmix::associative_scan(monoid, in.data(), out.data(), static_cast<index_t>(in.size()), executor);
    benchmark::ClobberMemory();
  }
  set_bandwidth(state, double(in.size()) * 2.0 * sizeof(typename Monoid::value_type));
}

constexpr index_t kAssociativeN = 1 << 22;

std::vector<float> random_floats(index_t n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  st::fill_uniform(TensorView<float, 1>(v.data(), {n}), seed);
  return v;
}

std::vector<seqmix::AffineMap<float>> random_maps(index_t n) {
  const std::vector<float> a = random_floats(n, 4), b = random_floats(n, 5);
  std::vector<seqmix::AffineMap<float>> maps(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) maps[i] = {a[i], b[i]};
  return maps;
}

std::vector<seqmix::OnlineSoftmaxState> random_softmax(index_t n) {
  const std::vector<float> s = random_floats(n, 6), v = random_floats(n, 7);
  std::vector<seqmix::OnlineSoftmaxState> leaves(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) leaves[i] = seqmix::OnlineSoftmaxState::leaf(4.f * s[i], v[i]);
  return leaves;
}

void register_all() {
  struct Variant {
    const char* name;
    GateSpace gate;
    bool all_states;
  };
  const Variant variants[] = {
      {"linear", GateSpace::direct, true},
      {"linear_log", GateSpace::log, true},
      {"linear_last", GateSpace::direct, false},
  };
  const std::pair<Form, const char*> forms[] = {
      {Form::fast, ""}, {Form::fast_one_thread, "/1thread"}, {Form::reference, "/reference"}};
  for (const Variant& v : variants)
    for (const LinearShape& s : kShapes)
      for (const auto& [form, suffix] : forms) {
        const std::string name = std::string("scan/") + v.name + "/" + s.name + suffix;
        benchmark::RegisterBenchmark(name.c_str(), linear, s, v.gate, v.all_states, form)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
  const std::string n = "n" + std::to_string(kAssociativeN);
  for (bool threaded : {true, false}) {
    const std::string suffix = threaded ? "" : "/1thread";
    benchmark::RegisterBenchmark(("scan/associative/sum_" + n + suffix).c_str(),
                                 [=](benchmark::State& state) {
                                   associative(state, seqmix::SumMonoid<float>{}, random_floats(kAssociativeN, 8),
                                               threaded);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("scan/associative/affine_" + n + suffix).c_str(),
                                 [=](benchmark::State& state) {
                                   associative(state, seqmix::AffineMonoid<float>{}, random_maps(kAssociativeN),
                                               threaded);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("scan/associative/online_softmax_" + n + suffix).c_str(),
                                 [=](benchmark::State& state) {
                                   associative(state, seqmix::OnlineSoftmax{}, random_softmax(kAssociativeN),
                                               threaded);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

const bool registered = (register_all(), true);

}  // namespace
