// Recurrent-cell benchmarks (issue 17), 2 threads unless the name says 1core.
//
//   lstm/prefill/H1024_T4096_B<1|16>     seqmix::lstm, I = H = 1024: input projection (one GEMM
//                                        per chunk of tokens) plus the recurrence
//   lstm/prefill/H<256|512|1024>_T512_B1_preact[_1core], lstm/prefill/H1024_T64_B16_preact
//                                        the recurrent part alone (x given as pre-activations,
//                                        no w_ih), on two cores and on one: whether the split of
//                                        the hidden units with one barrier per token pays
//   lstm/step/H1024_B<1|16>              lstm_step, one token
//   gru/prefill/H1024_T4096_B1, slstm/prefill/NH4x256_T4096_B1 (4 heads x 256 units,
//                                        block-diagonal recurrence, pre-activation input as xLSTM
//                                        feeds it)
//   lstm/reference/H256_T256_B1          the reference (baseline), beside lstm/prefill on it
//   lem/prefill/H1024_T4096_B<1|16>, lem/prefill/H<256|1024>_T512_B1_preact[_1core],
//   lem/step/H1024_B<1|16>, lem/reference/H256_T256_B1 (beside lem/prefill/H256_T256_B1)
//                                        Long Expressive Memory beside lstm at the same hidden
//                                        size: the same 4H x (I + H) weights per token, but two
//                                        dependent products (W_hh y, then W_z z) and two barriers
//                                        per token when split over the cores
//   mlstm/prefill/NH8_D256_T4096_B1_<chunked|recurrent>, mlstm/step/NH8_D256_B1,
//   mlstm/reference/NH8_D256_T256_B1 (beside mlstm/prefill/NH8_D256_T256_B1_chunked)
//                                        xLSTM-7B-like heads (8 x 256, K = V); GFLOP/s counts the
//                                        recurrence's 4*DK*DV per token and head for every form,
//                                        so the figures compare speeds
//   ttt_linear/prefill/H16_K64_T8192, ttt_linear/step/H16_K64_B1, ttt_linear/reference/H16_K64_T256
//   (beside ttt_linear/prefill/H16_K64_T256), gated_delta_rule/prefill/H16_K64_T8192 (its chunked
//                                        default, same shape, as the linear memory to compare with):
//                                        GFLOP/s counts 6*K*K per token and head for both (TTT: k W,
//                                        q W and the update of W; the delta rule: S^T k, k u^T, S^T q)
//                                        plus, for TTT, the 4*b*K of its two [b,b] products
//   ttt_mlp/prefill/H16_K64_T8192, ttt_mlp/step/H16_K64_B1 (M = 4K = 256 hidden units): GFLOP/s
//                                        counts 14*K*M per token and head (k's forward and
//                                        backward, q's forward, both updates) plus 4*b*(K + M)
//   <mlstm|titans>/prefill/packed16_T64-300_*_<one_call|per_sequence>
//                                        a packed serving prefill of 16 sequences of 64-300 tokens
//                                        (8 heads, K = V = 64, chunked) as one call (every
//                                        (sequence, head) pair in one parallel loop) against the
//                                        loop of per-sequence dense calls; real and process CPU time
//   titans/prefill/H16_K64_T8192[_recurrent], titans/step/H16_K64_B1, and
//   titans/prefill/H16_K64_T8192_gated_delta_rule (seqmix::gated_delta_rule, scalar gate, at the
//                                        same shape in the same run): the linear Titans memory
//                                        beside the Gated DeltaNet it generalizes. GFLOP/s counts
//                                        8*K*V per token and head for titans (M^T k, the rank-1
//                                        momentum update, the memory update, M^T q) and gated
//                                        delta rule's own 6*K*V, so compare times for the ratio
//   titans_mlp/prefill/H16_K64_T8192[_b1], titans_mlp/step/H16_K64_B1, titans_mlp/prefill and
//   titans_mlp/reference/H16_K64_T256 (M = 4K = 256): Titans' MLP memory, mini-batch 16 (or 1,
//                                        the exact recurrence); GFLOP/s counts 22*K*M per token and
//                                        head (k's forward and backward, q's two layers with the
//                                        momentum terms, both weights' and momenta's updates) plus
//                                        4*b*(K + M); titans/prefill/H16_K64_T8192_yaad_delta_t: the
//                                        linear memory with Huber and a per-token delta_t (recurrent)
//   ttt_mlp/prefill/H16_K64_T8192_inner_bias (trained b1, b2), titans/prefill/H16_K64_T8192_<moneta|memora>
//   (Miras' retentions, token by token: compare with titans/prefill/H16_K64_T8192_recurrent) and
//   titans_mlp/prefill/H16_K64_T8192_<moneta|memora> (b = 16): the options beside their plain rows,
//                                        same shape and FLOP count, so the time ratio is the cost
// GFLOP/s = 2 * B * T * G * H * (I + H/heads) / time (the two matrix products; the elementwise
// update is not counted), eff against the machine's measured fp32 FMA peak. The recurrence of
// a single sequence (B = 1) is a chain of T matrix-vector products: it streams W_hh (16 MiB at
// H = 1024, more than the L2) once per token and cannot use the FMA peak; its limit is the
// bandwidth at which W_hh comes from L3/DRAM, reported as GB/s.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
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
      {"lstm/prefill/H1024_T512_B1_preact", Cell::lstm, 1, 512, 0, 1024, 1, false, false, Form::fast},
      {"lstm/prefill/H1024_T512_B1_preact_1core", Cell::lstm, 1, 512, 0, 1024, 1, false, true, Form::fast},
      {"lstm/prefill/H512_T512_B1_preact", Cell::lstm, 1, 512, 0, 512, 1, false, false, Form::fast},
      {"lstm/prefill/H512_T512_B1_preact_1core", Cell::lstm, 1, 512, 0, 512, 1, false, true, Form::fast},
      {"lstm/prefill/H256_T512_B1_preact", Cell::lstm, 1, 512, 0, 256, 1, false, false, Form::fast},
      {"lstm/prefill/H256_T512_B1_preact_1core", Cell::lstm, 1, 512, 0, 256, 1, false, true, Form::fast},
      {"lstm/prefill/H128_T512_B1_preact", Cell::lstm, 1, 512, 0, 128, 1, false, false, Form::fast},
      {"lstm/prefill/H1024_T64_B16_preact", Cell::lstm, 16, 64, 0, 1024, 1, false, false, Form::fast},
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

struct LemShape {
  std::string name;
  index_t B, T, I, H;
  bool project, one_core;
  Form form;
};

void run_lem(benchmark::State& state, const LemShape& s) {
  const index_t H = s.H, T = s.form == Form::step ? 1 : s.T;
  const float a = 0.5f / static_cast<float>(H);
  const Tensor<float, 3> x = st::random_tensor<3>({s.B, T, s.project ? s.I : 4 * H}, 1);
  const Tensor<float, 2> w_ih = st::random_tensor<2>({4 * H, s.I}, 2, -a, a), w_hh = st::random_tensor<2>({3 * H, H}, 3, -a, a);
  const Tensor<float, 2> w_z = st::random_tensor<2>({H, H}, 4, -a, a);
  Tensor<float, 3> y({s.B, T, H}), fs({s.B, 2, H});
  fs.fill(0.f);
  seqmix::LemInputs in;
  in.x = x.cview(), in.w_hh = w_hh.cview(), in.w_z = w_z.cview();
  if (s.project) in.w_ih = w_ih.cview();
  seqmix::LemStepInputs si;
  si.x = x.cview().select(1, 0), si.w_hh = w_hh.cview(), si.w_z = w_z.cview();
  if (s.project) si.w_ih = w_ih.cview();
  const seqmix::Executor& ex = s.one_core ? seqmix::serial_executor() : st::two_thread_pool();
  for (auto _ : state) {
    if (s.form == Form::reference)
      seqmix::reference::lem(in, {y.view(), fs.view()});
    else if (s.form == Form::step)
      seqmix::lem_step(si, {y.view().select(1, 0), fs.view()}, {}, ex);
    else
      seqmix::lem(in, {y.view(), fs.view()}, {}, ex);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  // Both recurrent matrices (4 H^2 floats) read once per token, as lstm's W_hh.
  const double flop = 2.0 * static_cast<double>(s.B * T * 4 * H) * static_cast<double>((s.project ? s.I : 0) + H);
  st::report_throughput(state, flop, static_cast<double>(T * 4 * H * H) * sizeof(float));
}

void register_lem() {
  const LemShape shapes[] = {
      {"lem/prefill/H1024_T4096_B1", 1, 4096, 1024, 1024, true, false, Form::fast},
      {"lem/prefill/H1024_T4096_B16", 16, 4096, 1024, 1024, true, false, Form::fast},
      {"lem/prefill/H1024_T512_B1_preact", 1, 512, 0, 1024, false, false, Form::fast},
      {"lem/prefill/H1024_T512_B1_preact_1core", 1, 512, 0, 1024, false, true, Form::fast},
      {"lem/prefill/H256_T512_B1_preact", 1, 512, 0, 256, false, false, Form::fast},
      {"lem/step/H1024_B1", 1, 1, 1024, 1024, true, false, Form::step},
      {"lem/step/H1024_B16", 16, 1, 1024, 1024, true, false, Form::step},
      {"lem/prefill/H256_T256_B1", 1, 256, 256, 256, true, false, Form::fast},
      {"lem/reference/H256_T256_B1", 1, 256, 256, 256, true, true, Form::reference},
  };
  for (const LemShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_lem(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

struct MlstmShape {
  std::string name;
  index_t B, T, NH, D;
  int form;  // 0 chunked, 1 recurrent, 2 step, 3 reference
};

void run_mlstm(benchmark::State& state, const MlstmShape& s) {
  const index_t T = s.form == 2 ? 1 : s.T;
  const Tensor<float, 4> q = st::random_tensor<4>({s.B, T, s.NH, s.D}, 1), k = st::random_tensor<4>({s.B, T, s.NH, s.D}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({s.B, T, s.NH, s.D}, 3);
  const Tensor<float, 3> i = st::random_tensor<3>({s.B, T, s.NH}, 4, -3.f, 3.f), f = st::random_tensor<3>({s.B, T, s.NH}, 5, 0.f, 6.f);
  Tensor<float, 4> h({s.B, T, s.NH, s.D}), c({s.B, s.NH, s.D, s.D});
  Tensor<float, 3> n({s.B, s.NH, s.D});
  Tensor<float, 2> m({s.B, s.NH});
  const seqmix::MlstmInputs in{q.cview(), k.cview(), v.cview(), i.cview(), f.cview()};
  seqmix::MlstmOptions options;
  if (s.form == 1) options.algorithm = seqmix::MlstmAlgorithm::recurrent;
  const seqmix::MlstmStepInputs si{q.cview().select(1, 0), k.cview().select(1, 0), v.cview().select(1, 0),
                                   i.cview().select(1, 0), f.cview().select(1, 0)};
  for (auto _ : state) {
    if (s.form == 2)
      seqmix::mlstm_step(si, {h.view().select(1, 0), c.view(), n.view(), m.view()}, options, st::two_thread_pool());
    else if (s.form == 3)
      seqmix::reference::mlstm(in, {h.view(), c.view(), n.view(), m.view()}, options);
    else
      seqmix::mlstm(in, {h.view(), c.view(), n.view(), m.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  // The state (C) is read and written once per token in the recurrent forms.
  st::report_throughput(state, 4.0 * static_cast<double>(s.B * T * s.NH * s.D * s.D),
                        s.form == 0 ? 0.0 : 2.0 * static_cast<double>(s.B * T * s.NH * s.D * s.D) * sizeof(float));
}

void register_mlstm() {
  const MlstmShape shapes[] = {{"mlstm/prefill/NH8_D256_T4096_B1_chunked", 1, 4096, 8, 256, 0},
                               {"mlstm/prefill/NH8_D256_T4096_B1_recurrent", 1, 4096, 8, 256, 1},
                               {"mlstm/step/NH8_D256_B1", 1, 1, 8, 256, 2},
                               {"mlstm/prefill/NH8_D256_T256_B1_chunked", 1, 256, 8, 256, 0},
                               {"mlstm/reference/NH8_D256_T256_B1", 1, 256, 8, 256, 3}};
  for (const MlstmShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_mlstm(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

struct TttShape {
  std::string name;
  index_t T, H, K;
  int form;  // 0 ttt_linear prefill, 1 ttt_linear_step, 2 reference::ttt_linear, 3 gated_delta_rule prefill
};

// ttt_mlp forms: 0 prefill, 1 step, 2 prefill with trained inner biases b1, b2 (zeros to start).
void run_ttt_mlp(benchmark::State& state, const TttShape& s) {
  const index_t T = s.form == 1 ? 1 : s.T, H = s.H, K = s.K, M = 4 * K;
  const float a1 = 1.f / std::sqrt(static_cast<float>(K)), a2 = 1.f / std::sqrt(static_cast<float>(M));
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, K}, 1), k = st::random_tensor<4>({1, T, H, K}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({1, T, H, K}, 3);
  const Tensor<float, 3> eta = st::random_tensor<3>({1, T, H}, 4, 0.f, 1.f / static_cast<float>(K));
  const Tensor<float, 2> gamma = st::random_tensor<2>({H, K}, 5, 0.5f, 1.5f), beta = st::random_tensor<2>({H, K}, 6, -0.2f, 0.2f);
  const Tensor<float, 4> w1 = st::random_tensor<4>({1, H, K, M}, 7, -a1, a1), w2 = st::random_tensor<4>({1, H, M, K}, 8, -a2, a2);
  Tensor<float, 4> z({1, T, H, K}), f1 = w1, f2 = w2;
  seqmix::TttMlpInputs in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
  in.ln_weight = gamma.cview(), in.ln_bias = beta.cview(), in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
  const seqmix::TttMlpStepInputs si{q.cview().select(1, 0), k.cview().select(1, 0), v.cview().select(1, 0),
                                    eta.cview().select(1, 0), gamma.cview(), beta.cview()};
  seqmix::TttOptions options;
  if (s.form == 2) options.inner_bias = seqmix::TttInnerBias::trained;
  for (auto _ : state) {
    if (s.form == 1)
      seqmix::ttt_mlp_step(si, {z.view().select(1, 0), f1.view(), f2.view()}, {}, st::two_thread_pool());
    else
      seqmix::ttt_mlp(in, {z.view(), f1.view(), f2.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(z.data());
    benchmark::ClobberMemory();
  }
  const double per_token = 14.0 * static_cast<double>(K * M) + 4.0 * 16.0 * static_cast<double>(K + M);
  st::report_throughput(state, per_token * static_cast<double>(T * H),
                        s.form == 1 ? 4.0 * static_cast<double>(H * K * M) * sizeof(float) : 0.0);
}

void run_ttt(benchmark::State& state, const TttShape& s) {
  const index_t T = s.form == 1 ? 1 : s.T, H = s.H, K = s.K;
  const float a = 1.f / std::sqrt(static_cast<float>(K));
  Tensor<float, 4> q = st::random_tensor<4>({1, T, H, K}, 1), k = st::random_tensor<4>({1, T, H, K}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({1, T, H, K}, 3);
  const Tensor<float, 3> eta = st::random_tensor<3>({1, T, H}, 4, 0.f, 1.f / static_cast<float>(K));
  const Tensor<float, 2> gamma = st::random_tensor<2>({H, K}, 5, 0.5f, 1.5f), beta = st::random_tensor<2>({H, K}, 6, -0.2f, 0.2f);
  const Tensor<float, 4> w0 = st::random_tensor<4>({1, H, K, K}, 7, -a, a);
  Tensor<float, 4> z({1, T, H, K}), w({1, H, K, K});
  seqmix::TttLinearInputs in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.eta = eta.cview();
  in.ln_weight = gamma.cview(), in.ln_bias = beta.cview(), in.initial_w = w0.cview();
  const seqmix::TttLinearStepInputs si{q.cview().select(1, 0), k.cview().select(1, 0), v.cview().select(1, 0),
                                       eta.cview().select(1, 0), gamma.cview(), beta.cview()};
  // The gated delta rule on the same q, k, v (unit-norm keys as Gated DeltaNet feeds it).
  Tensor<float, 3> gs({1, T, H}), beta_gdr = st::random_tensor<3>({1, T, H}, 8, 0.f, 1.f);
  st::fill_log_gate(gs.view(), 9, -0.1f, 0.f);
  if (s.form == 3)
    for (Tensor<float, 4>* x : {&q, &k})
      for (index_t r = 0; r < T * H; ++r) {
        float* row = x->data() + r * K;
        float sum = 0.f;
        for (index_t j = 0; j < K; ++j) sum += row[j] * row[j];
        for (index_t j = 0; j < K; ++j) row[j] /= std::sqrt(sum + 1e-6f);
      }
  seqmix::GatedDeltaRuleInputs gin;
  gin.q = q.cview(), gin.k = k.cview(), gin.v = v.cview(), gin.beta = beta_gdr.cview(), gin.g_scalar = gs.cview();
  seqmix::GatedDeltaRuleOptions gopt;
  gopt.gate = seqmix::DeltaGate::scalar;
  for (auto _ : state) {
    if (s.form == 0)
      seqmix::ttt_linear(in, {z.view(), w.view()}, {}, st::two_thread_pool());
    else if (s.form == 1)
      seqmix::ttt_linear_step(si, {z.view().select(1, 0), w.view()}, {}, st::two_thread_pool());
    else if (s.form == 2)
      seqmix::reference::ttt_linear(in, {z.view(), w.view()});
    else
      seqmix::gated_delta_rule(gin, {z.view(), w.view()}, gopt, st::two_thread_pool());
    benchmark::DoNotOptimize(z.data());
    benchmark::ClobberMemory();
  }
  const double per_token = 6.0 * static_cast<double>(K * K) + (s.form == 3 ? 0.0 : 4.0 * 16.0 * static_cast<double>(K));
  st::report_throughput(state, per_token * static_cast<double>(T * H),
                        s.form == 1 ? 2.0 * static_cast<double>(H * K * K) * sizeof(float) : 0.0);
}

void register_ttt() {
  const TttShape shapes[] = {{"ttt_linear/prefill/H16_K64_T8192", 8192, 16, 64, 0},
                             {"gated_delta_rule/prefill/H16_K64_T8192", 8192, 16, 64, 3},
                             {"ttt_linear/step/H16_K64_B1", 1, 16, 64, 1},
                             {"ttt_linear/prefill/H16_K64_T256", 256, 16, 64, 0},
                             {"ttt_linear/reference/H16_K64_T256", 256, 16, 64, 2}};
  for (const TttShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_ttt(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  const TttShape mlp_shapes[] = {{"ttt_mlp/prefill/H16_K64_T8192", 8192, 16, 64, 0},
                                 {"ttt_mlp/prefill/H16_K64_T8192_inner_bias", 8192, 16, 64, 2},
                                 {"ttt_mlp/step/H16_K64_B1", 1, 16, 64, 1}};
  for (const TttShape& s : mlp_shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_ttt_mlp(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

struct TitansShape {
  std::string name;
  index_t B, T, H, D;
  int form;  // 0 chunked, 1 recurrent, 2 step, 3 gated_delta_rule at the same shape, 4 Moneta (q 4), 5 Memora (key axis)
};

void run_titans(benchmark::State& state, const TitansShape& s) {
  const index_t T = s.form == 2 ? 1 : s.T;
  const Tensor<float, 4> q = st::random_tensor<4>({s.B, T, s.H, s.D}, 1), v = st::random_tensor<4>({s.B, T, s.H, s.D}, 3);
  Tensor<float, 4> k = st::random_tensor<4>({s.B, T, s.H, s.D}, 2);
  for (index_t i = 0; i < k.numel() / s.D; ++i) {  // unit-norm keys, as both models use them
    float sum = 0.f;
    for (index_t r = 0; r < s.D; ++r) sum += k.data()[i * s.D + r] * k.data()[i * s.D + r];
    for (index_t r = 0; r < s.D; ++r) k.data()[i * s.D + r] /= std::sqrt(sum);
  }
  const Tensor<float, 3> alpha = st::random_tensor<3>({s.B, T, s.H}, 4, 0.f, 0.1f), eta = st::random_tensor<3>({s.B, T, s.H}, 5, 0.f, 0.9f);
  const Tensor<float, 3> theta = st::random_tensor<3>({s.B, T, s.H}, 6, 0.f, 0.4f), g = st::random_tensor<3>({s.B, T, s.H}, 7, -0.1f, 0.f);
  Tensor<float, 4> y({s.B, T, s.H, s.D}), m({s.B, s.H, s.D, s.D}), mom({s.B, s.H, s.D, s.D});
  const seqmix::TitansInputs in{q.cview(), k.cview(), v.cview(), alpha.cview(), eta.cview(), theta.cview()};
  seqmix::TitansOptions options;
  if (s.form == 1) options.algorithm = seqmix::TitansAlgorithm::recurrent;
  if (s.form == 4) options.retention = seqmix::TitansRetention::lq_normalized;
  if (s.form == 5) options.retention = seqmix::TitansRetention::softmax_kl;  // from the uniform memory
  const seqmix::TitansStepInputs si{q.cview().select(1, 0), k.cview().select(1, 0), v.cview().select(1, 0),
                                    alpha.cview().select(1, 0), eta.cview().select(1, 0), theta.cview().select(1, 0)};
  seqmix::GatedDeltaRuleInputs gin;
  gin.q = q.cview(), gin.k = k.cview(), gin.v = v.cview(), gin.beta = theta.cview(), gin.g_scalar = g.cview();
  for (auto _ : state) {
    if (s.form == 2)
      seqmix::titans_step(si, {y.view().select(1, 0), m.view(), mom.view()}, options, st::two_thread_pool());
    else if (s.form == 3)
      seqmix::gated_delta_rule(gin, {y.view(), m.view()}, {}, st::two_thread_pool());
    else
      seqmix::titans(in, {y.view(), m.view(), mom.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double per_token = (s.form == 3 ? 6.0 : 8.0) * static_cast<double>(s.B * T * s.H * s.D * s.D);
  // The step reads and writes memory and momentum once.
  st::report_throughput(state, per_token, s.form == 2 ? 4.0 * static_cast<double>(s.B * s.H * s.D * s.D) * sizeof(float) : 0.0);
}

void register_titans() {
  const TitansShape shapes[] = {{"titans/prefill/H16_K64_T8192", 1, 8192, 16, 64, 0},
                                {"titans/prefill/H16_K64_T8192_recurrent", 1, 8192, 16, 64, 1},
                                {"titans/prefill/H16_K64_T8192_gated_delta_rule", 1, 8192, 16, 64, 3},
                                {"titans/prefill/H16_K64_T8192_moneta", 1, 8192, 16, 64, 4},
                                {"titans/prefill/H16_K64_T8192_memora", 1, 8192, 16, 64, 5},
                                {"titans/step/H16_K64_B1", 1, 1, 16, 64, 2}};
  for (const TitansShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_titans(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

struct TitansMlpShape {
  std::string name;
  index_t T, H, K;
  // 0 prefill b = 16, 1 prefill b = 1, 2 step, 3 reference b = 16, 4 linear titans Huber with delta_t (Yaad),
  // 5 prefill b = 16 with Moneta's retention (q 4), 6 with Memora's (key axis, from the uniform W1, W2)
  int form;
};

void run_titans_mlp(benchmark::State& state, const TitansMlpShape& s) {
  const index_t T = s.form == 2 ? 1 : s.T, H = s.H, K = s.K, M = 4 * K;
  const float a1 = 1.f / std::sqrt(static_cast<float>(K)), a2 = 1.f / std::sqrt(static_cast<float>(M));
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, K}, 1), v = st::random_tensor<4>({1, T, H, K}, 3);
  Tensor<float, 4> k = st::random_tensor<4>({1, T, H, K}, 2);
  for (index_t i = 0; i < k.numel() / K; ++i) {  // unit-norm keys
    float sum = 0.f;
    for (index_t r = 0; r < K; ++r) sum += k.data()[i * K + r] * k.data()[i * K + r];
    for (index_t r = 0; r < K; ++r) k.data()[i * K + r] /= std::sqrt(sum);
  }
  const Tensor<float, 3> alpha = st::random_tensor<3>({1, T, H}, 4, 0.f, 0.1f), eta = st::random_tensor<3>({1, T, H}, 5, 0.f, 0.9f);
  const Tensor<float, 3> theta = st::random_tensor<3>({1, T, H}, 6, 0.f, 0.1f), delta = st::random_tensor<3>({1, T, H}, 7, 0.05f, 0.5f);
  const Tensor<float, 4> w1 = st::random_tensor<4>({1, H, K, M}, 8, -a1, a1), w2 = st::random_tensor<4>({1, H, M, K}, 9, -a2, a2);
  Tensor<float, 4> y({1, T, H, K}), f1 = w1, f2 = w2, s1({1, H, K, M}), s2({1, H, M, K}), m({1, H, K, K}), mom({1, H, K, K});
  seqmix::TitansMlpInputs in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.alpha = alpha.cview(), in.eta = eta.cview();
  in.theta = theta.cview(), in.initial_w1 = w1.cview(), in.initial_w2 = w2.cview();
  const seqmix::TitansMlpStepInputs si{q.cview().select(1, 0), k.cview().select(1, 0), v.cview().select(1, 0),
                                       alpha.cview().select(1, 0), eta.cview().select(1, 0), theta.cview().select(1, 0)};
  seqmix::TitansMlpOptions options;
  if (s.form == 1) options.mini_batch = 1;
  if (s.form == 5) options.retention = seqmix::TitansRetention::lq_normalized;
  Tensor<float, 4> u1({1, H, K, M}), u2({1, H, M, K});  // Memora's start: every column of W1, W2 uniform
  u1.fill(1.f / static_cast<float>(K)), u2.fill(1.f / static_cast<float>(M));
  if (s.form == 6) options.retention = seqmix::TitansRetention::softmax_kl, in.initial_w1 = u1.cview(), in.initial_w2 = u2.cview();
  seqmix::TitansInputs yin{q.cview(), k.cview(), v.cview(), alpha.cview(), eta.cview(), theta.cview()};
  yin.huber_delta = delta.cview();
  seqmix::TitansOptions yaad;
  yaad.loss = seqmix::TitansLoss::huber;
  for (auto _ : state) {
    if (s.form == 2)
      seqmix::titans_mlp_step(si, {y.view().select(1, 0), f1.view(), f2.view(), s1.view(), s2.view()}, options,
                              st::two_thread_pool());
    else if (s.form == 3)
      seqmix::reference::titans_mlp(in, {y.view(), f1.view(), f2.view(), s1.view(), s2.view()}, options);
    else if (s.form == 4)
      seqmix::titans(yin, {y.view(), m.view(), mom.view()}, yaad, st::two_thread_pool());
    else
      seqmix::titans_mlp(in, {y.view(), f1.view(), f2.view(), s1.view(), s2.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double per_token = s.form == 4 ? 8.0 * static_cast<double>(K * K)
                                       : 22.0 * static_cast<double>(K * M) + 4.0 * 16.0 * static_cast<double>(K + M);
  st::report_throughput(state, per_token * static_cast<double>(T * H),
                        s.form == 2 ? 8.0 * static_cast<double>(H * K * M) * sizeof(float) : 0.0);
}

void register_titans_mlp() {
  const TitansMlpShape shapes[] = {{"titans_mlp/prefill/H16_K64_T8192", 8192, 16, 64, 0},
                                   {"titans_mlp/prefill/H16_K64_T8192_b1", 8192, 16, 64, 1},
                                   {"titans_mlp/prefill/H16_K64_T8192_moneta", 8192, 16, 64, 5},
                                   {"titans_mlp/prefill/H16_K64_T8192_memora", 8192, 16, 64, 6},
                                   {"titans_mlp/step/H16_K64_B1", 1, 16, 64, 2},
                                   {"titans_mlp/prefill/H16_K64_T256", 256, 16, 64, 0},
                                   {"titans_mlp/reference/H16_K64_T256", 256, 16, 64, 3},
                                   {"titans/prefill/H16_K64_T8192_yaad_delta_t", 8192, 16, 64, 4}};
  for (const TitansMlpShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_titans_mlp(st_, s); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

// Packed serving prefills of many short sequences: 16 sequences of 64-300 tokens (4,064 in all),
// 8 heads, K = V = 64, states [16,...] written. `one_call` is the serving call (all (sequence,
// head) pairs in one parallel loop); `per_sequence` the loop of dense B = 1 calls it replaces,
// each threaded over the 8 heads only.
struct PackedShape {
  std::string name;
  bool titans;     // titans (chunked) or mlstm (chunked)
  bool one_call;   // the serving call, or the per-sequence loop
};

std::vector<std::int64_t> packed_offsets() {
  std::vector<std::int64_t> cu = {0};
  for (index_t n = 0; n < 16; ++n) cu.push_back(cu.back() + 64 + (n * 97) % 237);  // 64..300 tokens
  return cu;
}

void run_packed(benchmark::State& state, const PackedShape& s) {
  const index_t H = 8, K = 64, N = 16;
  const std::vector<std::int64_t> cu = packed_offsets();
  const index_t T = static_cast<index_t>(cu.back());
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, H, K}, 1), v = st::random_tensor<4>({1, T, H, K}, 3);
  Tensor<float, 4> k = st::random_tensor<4>({1, T, H, K}, 2);
  for (index_t i = 0; i < k.numel() / K; ++i) {  // unit-norm keys (titans' inner step stays contractive)
    float sum = 0.f;
    for (index_t r = 0; r < K; ++r) sum += k.data()[i * K + r] * k.data()[i * K + r];
    for (index_t r = 0; r < K; ++r) k.data()[i * K + r] /= std::sqrt(sum);
  }
  const Tensor<float, 3> g1 = st::random_tensor<3>({1, T, H}, 4, 0.f, 0.2f), g2 = st::random_tensor<3>({1, T, H}, 5, 0.f, 0.5f);
  const Tensor<float, 3> g3 = st::random_tensor<3>({1, T, H}, 6, 0.f, 0.5f);
  Tensor<float, 4> y({1, T, H, K}), c({N, H, K, K}), c2({N, H, K, K});
  Tensor<float, 3> n({N, H, K});
  Tensor<float, 2> m({N, H});
  const auto rows = [&](auto view, index_t i) {
    return view.slice(1, static_cast<index_t>(cu[static_cast<std::size_t>(i)]),
                      static_cast<index_t>(cu[static_cast<std::size_t>(i) + 1] - cu[static_cast<std::size_t>(i)]));
  };
  const auto titans_call = [&](index_t i) {  // i < 0: the packed call
    seqmix::TitansInputs in{q.cview(), k.cview(), v.cview(), g1.cview(), g2.cview(), g3.cview()};
    seqmix::TitansOutputs out{y.view(), c.view(), c2.view()};
    if (i < 0) {
      in.batch.cu_seqlens = cu;
    } else {
      in.q = rows(in.q, i), in.k = rows(in.k, i), in.v = rows(in.v, i);
      in.alpha = rows(in.alpha, i), in.eta = rows(in.eta, i), in.theta = rows(in.theta, i);
      out.y = rows(out.y, i), out.final_memory = c.view().slice(0, i, 1), out.final_momentum = c2.view().slice(0, i, 1);
    }
    seqmix::titans(in, out, {}, st::two_thread_pool());
  };
  const auto mlstm_call = [&](index_t i) {
    seqmix::MlstmInputs in{q.cview(), k.cview(), v.cview(), g1.cview(), g2.cview()};
    seqmix::MlstmOutputs out{y.view(), c.view(), n.view(), m.view()};
    if (i < 0) {
      in.batch.cu_seqlens = cu;
    } else {
      in.q = rows(in.q, i), in.k = rows(in.k, i), in.v = rows(in.v, i), in.i = rows(in.i, i), in.f = rows(in.f, i);
      out.h = rows(out.h, i), out.final_c = c.view().slice(0, i, 1), out.final_n = n.view().slice(0, i, 1);
      out.final_m = m.view().slice(0, i, 1);
    }
    seqmix::mlstm(in, out, {}, st::two_thread_pool());
  };
  for (auto _ : state) {
    for (index_t i = s.one_call ? -1 : 0; i < (s.one_call ? 0 : N); ++i) s.titans ? titans_call(i) : mlstm_call(i);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st::report_throughput(state, (s.titans ? 8.0 : 4.0) * static_cast<double>(T * H * K * K), 0.0);
}

void register_packed() {
  const PackedShape shapes[] = {{"mlstm/prefill/packed16_T64-300_NH8_K64_one_call", false, true},
                                {"mlstm/prefill/packed16_T64-300_NH8_K64_per_sequence", false, false},
                                {"titans/prefill/packed16_T64-300_H8_K64_one_call", true, true},
                                {"titans/prefill/packed16_T64-300_H8_K64_per_sequence", true, false}};
  for (const PackedShape& s : shapes)
    benchmark::RegisterBenchmark(s.name.c_str(), [=](benchmark::State& st_) { run_packed(st_, s); })
        ->UseRealTime()
        ->MeasureProcessCPUTime()
        ->Unit(benchmark::kMillisecond);
}

const int kRegistered = (register_all(), register_lem(), register_mlstm(), register_ttt(), register_titans(),
                         register_titans_mlp(), register_packed(), 0);

}  // namespace
