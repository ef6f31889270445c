// Recurrent-cell benchmarks (issue 17), 2 threads unless the name says 1core.
//
//   lstm/prefill/H1024_T4096_B<1|16>     seqmix::lstm, I = H = 1024: input projection (one GEMM
//                                        per chunk of tokens) plus the recurrence
//   lstm/recurrence/H<256|1024>_T512_B1[_1core]
//                                        the recurrent part alone (x given as pre-activations,
//                                        no w_ih), on two cores and on one: whether the split of
//                                        the hidden units with one barrier per token pays
//   lstm/step/H1024_B<1|16>              lstm_step, one token
//   gru/prefill/H1024_T4096_B1, slstm/prefill/NH4x256_T4096_B1 (4 heads x 256 units,
//                                        block-diagonal recurrence, pre-activation input as xLSTM
//                                        feeds it)
//   lstm/reference/H256_T256_B1          the reference (baseline), beside lstm/prefill on it
// GFLOP/s = 2 * B * T * G * H * (I + H/heads) / time (the two matrix products; the elementwise
// update is not counted), eff against the machine's measured fp32 FMA peak. The recurrence of
// a single sequence (B = 1) is a chain of T matrix-vector products: it streams W_hh (16 MiB at
// H = 1024, more than the L2) once per token and cannot use the FMA peak; its limit is the
// bandwidth at which W_hh comes from L3/DRAM, reported as GB/s.
#include <benchmark/benchmark.h>

#include <string>

#include "seqmix/rnn.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

enum class Cell { lstm, gru, slstm };
enum class Form { fast, reference, step };

struct Shape {
  std::string name;
  Cell cell;
  index_t B, T, I, H, heads;
  bool project;     // false: x holds the gate pre-activations
  bool one_core;
  Form form;
};

index_t gates(Cell c) { return c == Cell::gru ? 3 : 4; }
index_t states(Cell c) { return c == Cell::lstm ? 2 : c == Cell::gru ? 1 : 4; }

void run(benchmark::State& state, const Shape& s) {
  const index_t G = gates(s.cell), GH = G * s.H, Dh = s.H / s.heads, T = s.form == Form::step ? 1 : s.T;
  const float a = 0.5f / static_cast<float>(Dh);
  const Tensor<float, 3> x = st::random_tensor<3>({s.B, T, s.project ? s.I : GH}, 1);
  const Tensor<float, 2> w_ih = st::random_tensor<2>({GH, s.I}, 2, -a, a), w_hh = st::random_tensor<2>({GH, Dh}, 3, -a, a);
  Tensor<float, 3> y({s.B, T, s.H}), fs({s.B, states(s.cell), s.H});
  seqmix::RnnInputs in;
  in.x = x.cview(), in.w_hh = w_hh.cview();
  if (s.project) in.w_ih = w_ih.cview();
  seqmix::RnnOptions options;
  options.heads = s.heads;
  const seqmix::Executor& ex = s.one_core ? seqmix::serial_executor() : st::two_thread_pool();
  seqmix::RnnStepInputs si;
  si.x = x.cview().select(1, 0), si.w_hh = w_hh.cview();
  if (s.project) si.w_ih = w_ih.cview();
  for (auto _ : state) {
    if (s.form == Form::reference) {
      seqmix::reference::lstm(in, {y.view(), fs.view()}, options);
    } else if (s.form == Form::step) {
      seqmix::lstm_step(si, {y.view().select(1, 0), fs.view()}, options, ex);
    } else if (s.cell == Cell::lstm) {
      seqmix::lstm(in, {y.view(), fs.view()}, options, ex);
    } else if (s.cell == Cell::gru) {
      seqmix::gru(in, {y.view(), fs.view()}, options, ex);
    } else {
      seqmix::slstm(in, {y.view(), fs.view()}, options, ex);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flop = 2.0 * static_cast<double>(s.B * T * GH) * static_cast<double>((s.project ? s.I : 0) + Dh);
  // W_hh read once per token (what bounds B = 1).
  st::report_throughput(state, flop, static_cast<double>(T * GH * Dh) * sizeof(float));
}

void register_all() {
  const Shape shapes[] = {
      {"lstm/prefill/H1024_T4096_B1", Cell::lstm, 1, 4096, 1024, 1024, 1, true, false, Form::fast},
      {"lstm/prefill/H1024_T4096_B16", Cell::lstm, 16, 4096, 1024, 1024, 1, true, false, Form::fast},
      {"lstm/recurrence/H1024_T512_B1", Cell::lstm, 1, 512, 0, 1024, 1, false, false, Form::fast},
      {"lstm/recurrence/H1024_T512_B1_1core", Cell::lstm, 1, 512, 0, 1024, 1, false, true, Form::fast},
      {"lstm/recurrence/H256_T512_B1", Cell::lstm, 1, 512, 0, 256, 1, false, false, Form::fast},
      {"lstm/recurrence/H256_T512_B1_1core", Cell::lstm, 1, 512, 0, 256, 1, false, true, Form::fast},
      {"lstm/recurrence/H128_T512_B1", Cell::lstm, 1, 512, 0, 128, 1, false, false, Form::fast},
      {"lstm/step/H1024_B1", Cell::lstm, 1, 1, 1024, 1024, 1, true, false, Form::step},
      {"lstm/step/H1024_B16", Cell::lstm, 16, 1, 1024, 1024, 1, true, false, Form::step},
      {"gru/prefill/H1024_T4096_B1", Cell::gru, 1, 4096, 1024, 1024, 1, true, false, Form::fast},
      {"slstm/prefill/NH4x256_T4096_B1", Cell::slstm, 1, 4096, 0, 1024, 4, false, false, Form::fast},
      {"lstm/prefill/H256_T256_B1", Cell::lstm, 1, 256, 256, 256, 1, true, false, Form::fast},
      {"lstm/reference/H256_T256_B1", Cell::lstm, 1, 256, 256, 256, 1, true, true, Form::reference},
  };
  for (const Shape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

const int kRegistered = (register_all(), 0);

}  // namespace
