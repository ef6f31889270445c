// matrix_scan benchmarks (issue 23 item 3): h_t = A_t h_{t-1} + x_t with N x N blocks, T = 65536.
//
//   matrix_scan/<form>/<shape>
//     auto        seqmix::matrix_scan, automatic split, 2 threads
//     time        MatrixScanSplit::time on 2 threads (chunk products, N^3 per token)
//     heads       MatrixScanSplit::heads: the vectorized sequential recurrence
//     loop        the baseline: a plain float loop over runtime N (what a caller would write)
//     reference   reference::matrix_scan (the same loop in double)
// GFLOP/s counts the recurrence's work, 2 N^2 per token and head, for every form (so the time
// split's extra products show as a lower figure, not a higher one); GB/s counts A and x read and
// h written once (16x16 blocks are 1 KiB a token: those scans stream A from memory).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "seqmix/ssm/matrix_scan/fast.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct MatrixScanShape {
  const char* name;
  index_t B, T, H, N;
};

// Block-diagonal RNN shapes at a long context: one head of 4x4 and of 16x16 blocks (where only
// time can be split), and 8 heads of 4x4 (one head per thread).
const MatrixScanShape kShapes[] = {{"T65536_H1_N4", 1, 65536, 1, 4},
                                   {"T65536_H1_N16", 1, 65536, 1, 16},
                                   {"T65536_H8_N4", 1, 65536, 8, 4}};

enum class Form { automatic, time, heads, loop, reference };

void plain_loop(const Tensor<float, 5>& A, const Tensor<float, 4>& x, Tensor<float, 4>& h) {
  const index_t T = A.size(1), H = A.size(2), N = A.size(3);
  std::vector<float> state(static_cast<std::size_t>(N)), next(static_cast<std::size_t>(N));
  for (index_t head = 0; head < H; ++head) {
    std::fill(state.begin(), state.end(), 0.f);
    for (index_t t = 0; t < T; ++t) {
      for (index_t i = 0; i < N; ++i) {
        float s = x(0, t, head, i);
        for (index_t j = 0; j < N; ++j) s += A(0, t, head, i, j) * state[j];
        next[i] = s;
      }
      state.swap(next);
      for (index_t i = 0; i < N; ++i) h(0, t, head, i) = state[i];
    }
  }
}

void run(benchmark::State& state, const MatrixScanShape& s, Form form) {
  Tensor<float, 5> A = st::random_tensor<5>({s.B, s.T, s.H, s.N, s.N}, 1, -0.5f / float(s.N), 0.5f / float(s.N));
  const Tensor<float, 4> x = st::random_tensor<4>({s.B, s.T, s.H, s.N}, 2);
  Tensor<float, 4> h({s.B, s.T, s.H, s.N});
  seqmix::MatrixScanOptions options;
  options.split = form == Form::time ? seqmix::MatrixScanSplit::time
                  : form == Form::heads ? seqmix::MatrixScanSplit::heads
                                        : seqmix::MatrixScanSplit::automatic;
  for (auto _ : state) {
    if (form == Form::loop)
      plain_loop(A, x, h);
    else if (form == Form::reference)
      seqmix::reference::matrix_scan({A.view(), x.view()}, {h.view(), {}});
    else
      seqmix::matrix_scan({A.view(), x.view()}, {h.view(), {}}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  const double tokens = double(s.B * s.T * s.H);
  st::report_throughput(state, 2.0 * tokens * double(s.N * s.N), tokens * double(s.N * s.N + 2 * s.N) * 4.0);
}

void register_all() {
  const std::pair<const char*, Form> forms[] = {{"auto", Form::automatic}, {"time", Form::time}, {"heads", Form::heads},
                                                {"loop", Form::loop},      {"reference", Form::reference}};
  for (const MatrixScanShape& s : kShapes)
    for (const auto& f : forms) {
      const Form form = f.second;
      const MatrixScanShape shape = s;
      benchmark::RegisterBenchmark((std::string("matrix_scan/") + f.first + "/" + s.name).c_str(),
                                   [=](benchmark::State& st_) { run(st_, shape, form); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
}

const bool registered = (register_all(), true);

}  // namespace
