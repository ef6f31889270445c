// Recurrent memories on a long sequence: an xLSTM block (an mLSTM layer, then an sLSTM layer) and
// a Titans linear-memory layer, beside Gated DeltaNet at the same heads and head sizes, with
// deterministic random weights. Each layer is pre-norm and residual:
//
//   mLSTM layer   u = rmsnorm(x); q, k, v = u Wq, u Wk, u Wv  [NH*DK];  i, f = u Wi + b_i, u Wf + b_f  [NH]
//                 x1 = x + mlstm(q, k, v, i, f) Wo                      (chunkwise-parallel prefill)
//   sLSTM layer   u = rmsnorm(x1); [i f z o] = u Wg + b  [4H], R head-wise block-diagonal (H/NH units a head)
//                 x2 = x1 + slstm(...) Wo                                (the recurrent engine)
//   Titans layer  u = rmsnorm(x); q, k L2-normalized per head, v;  alpha = sigmoid(u wa - 6),
//                 eta = sigmoid(u we + 1), theta = 0.2 sigmoid(u wt);  y = x + titans(...) Wo
//   Gated DeltaNet: the Titans layer's q, k, v with g = log(1 - alpha), beta = sigmoid(u wb)
//
// The first --tokens tokens (default 8192) are one prefill call per layer (states carried out),
// the next --steps tokens (default 64) decode steps. Every mixer is checked against its sequential
// reference (seqmix::reference::*, double state) run over all tokens in one call: max abs error
// of the prefill outputs and of the decode outputs (the sLSTM's reference reads the pre-activations
// the fast block gave the fast sLSTM, so both see identical inputs).
// Printed per mixer: state bytes per sequence and time per token of prefill (fastest of three
// calls, wall and CPU) and decode (median step), the mixer call only: projections and norms are the same dense
// work for every layer and are left out.
//
// The default shape, 4 heads of 32 (model width 128), keeps the whole run, the double-precision
// references over all 8256 tokens included, near 5 s on a 2-core machine shared with other jobs
// (load average 10; about 1.3 s of CPU); the references take most of it. --heads and --head-dim
// change the shape (4 heads of 64 takes about 3x as long).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/rnn/mlstm/chunked.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"
#include "seqmix/rnn/mlstm/step.hpp"
#include "seqmix/rnn/slstm/fast.hpp"
#include "seqmix/rnn/slstm/reference.hpp"
#include "seqmix/rnn/slstm/step.hpp"
#include "seqmix/rnn/titans/chunked.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/titans/step.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

struct Settings {
  index_t tokens = 8192, steps = 64, heads = 4, head_dim = 32;
  int threads = 2;
};

struct Shape {
  index_t NH, Dk, D;  // heads, head size (keys = values), model width NH * Dk (= sLSTM units H)
};

Matrix random_matrix(std::mt19937& rng, index_t rows, index_t cols, float stddev) {
  std::normal_distribution<float> normal(0.f, stddev);
  Matrix m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

Matrix rmsnorm(const Matrix& x) {
  Matrix y(x.rows(), x.cols());
  for (index_t t = 0; t < x.rows(); ++t) y.row(t) = x.row(t) / std::sqrt(x.row(t).squaredNorm() / x.cols() + 1e-6f);
  return y;
}

// Row-major [rows, heads * size] as a [1, rows, heads, size] view, and a row of it as [1, heads, size].
ConstView<float, 4> tokens4(const Matrix& m, index_t heads) { return {m.data(), {1, m.rows(), heads, m.cols() / heads}}; }
ConstView<float, 3> gates3(const Matrix& m) { return {m.data(), {1, m.rows(), m.cols()}}; }
ConstView<float, 3> row3(const Matrix& m, index_t t, index_t heads) {
  return {m.data() + t * m.cols(), {1, heads, m.cols() / heads}};
}
ConstView<float, 2> row2(const Matrix& m, index_t t) { return {m.data() + t * m.cols(), {1, m.cols()}}; }

double max_abs_diff(const Matrix& a, const Matrix& b, index_t r0, index_t r1) {
  return r1 > r0 ? (a.middleRows(r0, r1 - r0) - b.middleRows(r0, r1 - r0)).cwiseAbs().maxCoeff() : 0.0;
}

// Prefill timings: the fastest of three identical calls (no initial state, so each call computes
// the same outputs and final states), as one call on a shared machine is often descheduled.
// Also the process CPU time of the calls (all threads), which a loaded machine inflates less.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
struct Timing {
  double wall = 1e30, cpu = 1e30;
};
template <class F>
Timing best_of_three(F&& call) {
  Timing best;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    call();
    best.cpu = std::min(best.cpu, cpu_seconds() - c0);
    best.wall = std::min(best.wall, seconds_since(t0));
  }
  return best;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// ----- xLSTM block -----------------------------------------------------------------------------

struct XlstmWeights {
  Matrix Wq, Wk, Wv, Wi, Wf, Wo1, Wg, Wo2;
  Eigen::RowVectorXf b_i, b_f, b_g;
  Tensor<float, 2> w_hh;  // [4H, H/NH], head-wise recurrence
  XlstmWeights(std::mt19937& rng, const Shape& s) : w_hh({4 * s.D, s.Dk}) {
    const float in = 1.f / std::sqrt(static_cast<float>(s.D));
    Wq = random_matrix(rng, s.D, s.D, in), Wk = random_matrix(rng, s.D, s.D, in), Wv = random_matrix(rng, s.D, s.D, in);
    Wi = random_matrix(rng, s.D, s.NH, in), Wf = random_matrix(rng, s.D, s.NH, in);
    Wo1 = random_matrix(rng, s.D, s.D, in);
    Wg = random_matrix(rng, s.D, 4 * s.D, in), Wo2 = random_matrix(rng, s.D, s.D, in);
    // Forget biases spread over heads as xLSTM initializes them (long to short memories).
    b_i = Eigen::RowVectorXf::Constant(s.NH, -2.f);
    b_f = Eigen::RowVectorXf::LinSpaced(s.NH, 3.f, 6.f);
    b_g = Eigen::RowVectorXf::Zero(4 * s.D);
    for (index_t j = 0; j < s.D; ++j) b_g(s.D + j) = 3.f + 3.f * static_cast<float>(j / s.Dk) / std::max<index_t>(1, s.NH - 1);
    const Matrix r = random_matrix(rng, 4 * s.D, s.Dk, 1.f / std::sqrt(static_cast<float>(s.Dk)));
    std::copy(r.data(), r.data() + r.size(), w_hh.data());
  }
};

struct MlstmIn {
  Matrix q, k, v, i, f;
};
MlstmIn mlstm_inputs(const XlstmWeights& w, const Matrix& x) {
  const Matrix u = rmsnorm(x);
  MlstmIn in{u * w.Wq, u * w.Wk, u * w.Wv, u * w.Wi, u * w.Wf};
  in.i.rowwise() += w.b_i, in.f.rowwise() += w.b_f;
  return in;
}
Matrix slstm_inputs(const XlstmWeights& w, const Matrix& x1) {
  Matrix g = rmsnorm(x1) * w.Wg;
  g.rowwise() += w.b_g;
  return g;
}

Timing per_token(Timing t, index_t tokens) { return {t.wall / tokens, t.cpu / tokens}; }

struct MixerReport {
  const char* name;
  double state_bytes;
  Timing prefill;
  double decode_s, reference_s, err_prefill, err_decode, scale;
};

// Runs the block over x's rows: the first `tokens` in one prefill per layer, the rest as decode
// steps; returns the block output and fills the two mixers' outputs and timings.
struct XlstmRun {
  Matrix h_mlstm, y_slstm, out;
  Timing mlstm_prefill, slstm_prefill;
  std::vector<double> mlstm_steps, slstm_steps;
};

XlstmRun run_xlstm(const XlstmWeights& w, const Shape& s, const Matrix& x, index_t tokens, const seqmix::Executor& ex) {
  const index_t total = x.rows(), NH = s.NH, Dk = s.Dk, D = s.D;
  XlstmRun r;
  r.h_mlstm.resize(total, D), r.y_slstm.resize(total, D), r.out.resize(total, D);
  Tensor<float, 4> C({1, NH, Dk, Dk});
  Tensor<float, 3> n({1, NH, Dk}), sl_state({1, 4, D});
  Tensor<float, 2> m({1, NH});
  // Prefill.
  {
    const Matrix xp = x.topRows(tokens);
    const MlstmIn in = mlstm_inputs(w, xp);
    Matrix h(tokens, D);
    seqmix::MlstmInputs mi{tokens4(in.q, NH), tokens4(in.k, NH), tokens4(in.v, NH), gates3(in.i), gates3(in.f)};
    seqmix::MlstmOutputs mo{{h.data(), {1, tokens, NH, Dk}}, C.view(), n.view(), m.view()};
    r.mlstm_prefill = best_of_three([&] { seqmix::mlstm(mi, mo, {}, ex); });
    const Matrix x1 = xp + h * w.Wo1;
    const Matrix g = slstm_inputs(w, x1);
    Matrix y(tokens, D);
    seqmix::RnnInputs si;
    si.x = gates3(g), si.w_hh = w.w_hh.view();
    seqmix::RnnOptions so;
    so.heads = NH;
    r.slstm_prefill = best_of_three([&] { seqmix::slstm(si, {{y.data(), {1, tokens, D}}, sl_state.view()}, so, ex); });
    r.h_mlstm.topRows(tokens) = h, r.y_slstm.topRows(tokens) = y;
    r.out.topRows(tokens) = x1 + y * w.Wo2;
  }
  // Decode, one token at a time through both layers.
  for (index_t t = tokens; t < total; ++t) {
    const Matrix xt = x.row(t);
    const MlstmIn in = mlstm_inputs(w, xt);
    Matrix h(1, D);
    auto t0 = Clock::now();
    seqmix::mlstm_step({row3(in.q, 0, NH), row3(in.k, 0, NH), row3(in.v, 0, NH), row2(in.i, 0), row2(in.f, 0)},
                       {{h.data(), {1, NH, Dk}}, C.view(), n.view(), m.view()}, {}, ex);
    r.mlstm_steps.push_back(seconds_since(t0));
    const Matrix x1 = xt + h * w.Wo1;
    const Matrix g = slstm_inputs(w, x1);
    Matrix y(1, D);
    seqmix::RnnStepInputs si;
    si.x = row2(g, 0), si.w_hh = w.w_hh.view();
    seqmix::RnnOptions so;
    so.heads = NH;
    t0 = Clock::now();
    seqmix::slstm_step(si, {{y.data(), {1, D}}, sl_state.view()}, so, ex);
    r.slstm_steps.push_back(seconds_since(t0));
    r.h_mlstm.row(t) = h, r.y_slstm.row(t) = y;
    r.out.row(t) = x1 + y * w.Wo2;
  }
  return r;
}

// The reference mixers over all rows in one call each: the mLSTM on the block's inputs, the sLSTM
// on the very pre-activations the fast block gave its sLSTM (from the fast mLSTM's output), so
// that each mixer is checked on identical inputs.
XlstmRun reference_xlstm(const XlstmWeights& w, const Shape& s, const Matrix& x, const XlstmRun& fast,
                         double& seconds_mlstm, double& seconds_slstm) {
  const index_t total = x.rows(), NH = s.NH, Dk = s.Dk, D = s.D;
  XlstmRun r;
  r.h_mlstm.resize(total, D), r.y_slstm.resize(total, D);
  const MlstmIn in = mlstm_inputs(w, x);
  seqmix::MlstmInputs mi{tokens4(in.q, NH), tokens4(in.k, NH), tokens4(in.v, NH), gates3(in.i), gates3(in.f)};
  auto t0 = Clock::now();
  seqmix::reference::mlstm(mi, {{r.h_mlstm.data(), {1, total, NH, Dk}}});
  seconds_mlstm = seconds_since(t0);
  const Matrix x1 = x + fast.h_mlstm * w.Wo1;
  const Matrix g = slstm_inputs(w, x1);
  seqmix::RnnInputs si;
  si.x = gates3(g), si.w_hh = w.w_hh.view();
  seqmix::RnnOptions so;
  so.heads = NH;
  t0 = Clock::now();
  seqmix::reference::slstm(si, {{r.y_slstm.data(), {1, total, D}}}, so);
  seconds_slstm = seconds_since(t0);
  return r;
}

// ----- Titans and Gated DeltaNet -----------------------------------------------------------------

struct MemoryInputs {
  Matrix q, k, v, alpha, eta, theta, g, beta;  // q, k L2-normalized per head
};

MemoryInputs memory_inputs(std::mt19937& rng, const Shape& s, const Matrix& x) {
  const float in = 1.f / std::sqrt(static_cast<float>(s.D));
  const Matrix Wq = random_matrix(rng, s.D, s.D, in), Wk = random_matrix(rng, s.D, s.D, in),
               Wv = random_matrix(rng, s.D, s.D, in), Wg = random_matrix(rng, s.D, 4 * s.NH, in);
  const Matrix u = rmsnorm(x);
  MemoryInputs m{u * Wq, u * Wk, u * Wv, {}, {}, {}, {}, {}};
  for (Matrix* qk : {&m.q, &m.k})
    for (index_t t = 0; t < x.rows(); ++t)
      for (index_t h = 0; h < s.NH; ++h) {
        auto seg = qk->row(t).segment(h * s.Dk, s.Dk);
        seg /= std::max(seg.norm(), 1e-6f);
      }
  const Matrix gates = u * Wg;
  m.alpha.resize(x.rows(), s.NH), m.eta = m.theta = m.g = m.beta = m.alpha;
  for (index_t t = 0; t < x.rows(); ++t)
    for (index_t h = 0; h < s.NH; ++h) {
      m.alpha(t, h) = sigmoid(gates(t, h) - 6.f);
      m.eta(t, h) = sigmoid(gates(t, s.NH + h) + 1.f);
      m.theta(t, h) = 0.2f * sigmoid(gates(t, 2 * s.NH + h));
      m.g(t, h) = std::log1p(-m.alpha(t, h));
      m.beta(t, h) = sigmoid(gates(t, 3 * s.NH + h));
    }
  return m;
}

MixerReport run_titans(const MemoryInputs& mi, const Shape& s, index_t tokens, const seqmix::Executor& ex) {
  const index_t total = mi.q.rows(), NH = s.NH, Dk = s.Dk;
  Matrix y(total, s.D), y_ref(total, s.D);
  Tensor<float, 4> M({1, NH, Dk, Dk}), S({1, NH, Dk, Dk});
  const auto prefix = [&](const Matrix& a) { return ConstView<float, 3>(a.data(), {1, tokens, a.cols()}); };
  const auto prefix4 = [&](const Matrix& a) { return ConstView<float, 4>(a.data(), {1, tokens, NH, a.cols() / NH}); };
  const Timing prefill = best_of_three([&] {
    seqmix::titans({prefix4(mi.q), prefix4(mi.k), prefix4(mi.v), prefix(mi.alpha), prefix(mi.eta), prefix(mi.theta)},
                   {{y.data(), {1, tokens, NH, Dk}}, M.view(), S.view()}, {}, ex);
  });
  auto t0 = Clock::now();
  std::vector<double> steps;
  for (index_t t = tokens; t < total; ++t) {
    t0 = Clock::now();
    seqmix::titans_step({row3(mi.q, t, NH), row3(mi.k, t, NH), row3(mi.v, t, NH), row2(mi.alpha, t), row2(mi.eta, t),
                         row2(mi.theta, t)},
                        {{y.data() + t * s.D, {1, NH, Dk}}, M.view(), S.view()}, {}, ex);
    steps.push_back(seconds_since(t0));
  }
  t0 = Clock::now();
  seqmix::reference::titans({tokens4(mi.q, NH), tokens4(mi.k, NH), tokens4(mi.v, NH), gates3(mi.alpha), gates3(mi.eta),
                             gates3(mi.theta)},
                            {{y_ref.data(), {1, total, NH, Dk}}});
  const double ref = seconds_since(t0);
  return {"titans (linear memory)", 2.0 * NH * Dk * Dk * 4, per_token(prefill, tokens), median(steps), ref / total,
          max_abs_diff(y, y_ref, 0, tokens), max_abs_diff(y, y_ref, tokens, total), y_ref.cwiseAbs().maxCoeff()};
}

MixerReport run_gdn(const MemoryInputs& mi, const Shape& s, index_t tokens, const seqmix::Executor& ex) {
  const index_t total = mi.q.rows(), NH = s.NH, Dk = s.Dk;
  Matrix o(total, s.D), o_ref(total, s.D);
  Tensor<float, 4> state({1, NH, Dk, Dk});
  seqmix::GatedDeltaRuleInputs in;
  in.q = {mi.q.data(), {1, tokens, NH, Dk}}, in.k = {mi.k.data(), {1, tokens, NH, Dk}};
  in.v = {mi.v.data(), {1, tokens, NH, Dk}};
  in.beta = {mi.beta.data(), {1, tokens, NH}}, in.g_scalar = {mi.g.data(), {1, tokens, NH}};
  const Timing prefill =
      best_of_three([&] { seqmix::gated_delta_rule(in, {{o.data(), {1, tokens, NH, Dk}}, state.view()}, {}, ex); });
  auto t0 = Clock::now();
  std::vector<double> steps;
  for (index_t t = tokens; t < total; ++t) {
    seqmix::GatedDeltaRuleStepInputs si;
    si.q = row3(mi.q, t, NH), si.k = row3(mi.k, t, NH), si.v = row3(mi.v, t, NH);
    si.beta = row2(mi.beta, t), si.g_scalar = row2(mi.g, t);
    t0 = Clock::now();
    seqmix::gated_delta_rule_step(si, {{o.data() + t * s.D, {1, NH, Dk}}, state.view()}, {}, ex);
    steps.push_back(seconds_since(t0));
  }
  seqmix::GatedDeltaRuleInputs all;
  all.q = tokens4(mi.q, NH), all.k = tokens4(mi.k, NH), all.v = tokens4(mi.v, NH);
  all.beta = gates3(mi.beta), all.g_scalar = gates3(mi.g);
  t0 = Clock::now();
  seqmix::reference::gated_delta_rule(all, {{o_ref.data(), {1, total, NH, Dk}}});
  const double ref = seconds_since(t0);
  return {"gated_delta_rule", 1.0 * NH * Dk * Dk * 4, per_token(prefill, tokens), median(steps), ref / total,
          max_abs_diff(o, o_ref, 0, tokens), max_abs_diff(o, o_ref, tokens, total), o_ref.cwiseAbs().maxCoeff()};
}

void print_row(const MixerReport& r) {
  std::printf("| %-22s | %10.0f | %8.3f | %8.3f | %8.2f | %8.2f | %8.2e | %8.2e | %6.2f |\n", r.name, r.state_bytes,
              r.prefill.wall * 1e6, r.prefill.cpu * 1e6, r.decode_s * 1e6, r.reference_s * 1e6, r.err_prefill, r.err_decode, r.scale);
}

}  // namespace

int main(int argc, char** argv) {
  Settings cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "recurrent_memories: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atol(argv[++i]);
    };
    if (a == "--tokens") cfg.tokens = value();
    else if (a == "--steps") cfg.steps = value();
    else if (a == "--heads") cfg.heads = value();
    else if (a == "--head-dim") cfg.head_dim = value();
    else if (a == "--threads") cfg.threads = static_cast<int>(value());
    else {
      std::printf("usage: seqmix_example_recurrent_memories [--tokens N] [--steps S] [--heads H] [--head-dim K] [--threads T]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (cfg.tokens < 2 || cfg.steps < 1 || cfg.heads < 1 || cfg.head_dim < 1 || cfg.threads < 1) {
    std::fprintf(stderr, "recurrent_memories: need --tokens >= 2, --steps, --heads, --head-dim, --threads >= 1\n");
    return 2;
  }
  const Shape s{cfg.heads, cfg.head_dim, cfg.heads * cfg.head_dim};
  const index_t total = cfg.tokens + cfg.steps;
  const seqmix::ThreadPool pool(cfg.threads);
  std::mt19937 rng(17);
  const Matrix x = random_matrix(rng, total, s.D, 1.f);

  std::printf("# Recurrent memories: %td-token prefill + %td decode steps, %td heads x %td (model width %td), "
              "%d threads, %s\n\n", cfg.tokens, cfg.steps, s.NH, s.Dk, s.D, cfg.threads, seqmix::simd::arch_name());

  const XlstmWeights xw(rng, s);
  const XlstmRun fast = run_xlstm(xw, s, x, cfg.tokens, pool);
  double ref_mlstm = 0, ref_slstm = 0;
  const XlstmRun ref = reference_xlstm(xw, s, x, fast, ref_mlstm, ref_slstm);
  const index_t T = cfg.tokens;
  const MixerReport mlstm_row{"mlstm (chunked)", 4.0 * s.NH * (s.Dk * s.Dk + s.Dk + 1), per_token(fast.mlstm_prefill, T),
                              median(fast.mlstm_steps), ref_mlstm / total, max_abs_diff(fast.h_mlstm, ref.h_mlstm, 0, T),
                              max_abs_diff(fast.h_mlstm, ref.h_mlstm, T, total), ref.h_mlstm.cwiseAbs().maxCoeff()};
  const MixerReport slstm_row{"slstm (head-wise R)", 4.0 * 4 * s.D, per_token(fast.slstm_prefill, T), median(fast.slstm_steps),
                              ref_slstm / total, max_abs_diff(fast.y_slstm, ref.y_slstm, 0, T),
                              max_abs_diff(fast.y_slstm, ref.y_slstm, T, total), ref.y_slstm.cwiseAbs().maxCoeff()};

  const MemoryInputs mem = memory_inputs(rng, s, x);
  const MixerReport titans_row = run_titans(mem, s, T, pool);
  const MixerReport gdn_row = run_gdn(mem, s, T, pool);

  std::printf("| mixer                  | state B/seq | prefill us/token | prefill CPU us/token | decode us/token | reference us/token | "
              "max err prefill | max err decode | max abs ref |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const MixerReport& r : {mlstm_row, slstm_row, titans_row, gdn_row}) print_row(r);
  std::printf("\nxLSTM block (mLSTM + sLSTM) state: %.0f B per sequence; Titans: %.0f B (memory + momentum), "
              "Gated DeltaNet: %.0f B;\na dense attention KV cache at %td tokens and the same heads: %.0f B.\n",
              mlstm_row.state_bytes + slstm_row.state_bytes, titans_row.state_bytes, gdn_row.state_bytes, total,
              2.0 * total * s.D * 4);
  std::printf("prefill: one call per layer over %td tokens (fastest of 3; wall, and process CPU time of all threads);\n"
              "decode: median wall time of a step; times are the mixer calls only, on a shared machine.\n", T);

  // float kernels against double references over thousands of tokens: relative 1e-3 of the scale.
  bool ok = true;
  for (const MixerReport& r : {mlstm_row, slstm_row, titans_row, gdn_row})
    ok = ok && r.err_prefill <= 1e-3 * std::max(1.0, r.scale) && r.err_decode <= 1e-3 * std::max(1.0, r.scale);
  std::printf("%s\n", ok ? "OK: prefill and decode match the sequential references" : "MISMATCH");
  return ok ? 0 : 1;
}
