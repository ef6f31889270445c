// seqmix-stability: long-run stability of the recurrent decode steps (issue 24 item 6).
//
// Runs N decode steps (default 1,000,000) of gated_linear_attention_step, gated_delta_rule_step,
// ssd_step, rwkv7_step and selective_scan_step on fresh random tokens at realistic gates, beside a
// double-precision recurrence written here from the formulas of docs/operators.md (not the
// library's references), and reports per operator:
//   - whether every output and state stayed finite,
//   - the worst relative error of a step's output: max |o - o_ref| / max |o_ref| over that step,
//   - the relative error of the state at the end (and every --report-every steps).
// The recurrences are contractive at these gates, so fp32 rounding must not accumulate: the errors
// at step 1,000,000 are those of step 1,000. Exit status 1 when a value went non-finite or an
// error passed --tolerance (default 1e-4, the SPEC tolerance), so a ctest can run it briefly.
//
//   seqmix-stability [--steps N] [--report-every N] [--tolerance X]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;

// Small heads: the point is the length of the run, not the width of a step.
constexpr index_t kHeads = 2, kKey = 16, kValue = 16;       // GLA, gated delta rule, RWKV-7
constexpr index_t kSsdP = 16, kSsdN = 16;                   // Mamba-2 head
constexpr index_t kScanD = 32, kScanN = 16;                 // Mamba-1 channels

struct Rng {
  std::mt19937_64 engine{20261202};
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(engine); }
  void fill(float* p, index_t n, float lo, float hi) {
    for (index_t i = 0; i < n; ++i) p[i] = uniform(lo, hi);
  }
  // A random unit vector: the delta rules' keys are l2-normalized in every model that uses them.
  void fill_unit(float* p, index_t n) {
    double norm = 0;
    for (index_t i = 0; i < n; ++i) {
      p[i] = uniform(-1.f, 1.f);
      norm += double(p[i]) * p[i];
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(std::max(norm, 1e-12)));
    for (index_t i = 0; i < n; ++i) p[i] *= inv;
  }
};

// Errors of one operator over the run.
// max |x - ref| / max |ref| over ref.size() values; clears `finite` when x holds a NaN or inf.
double relative_error(const float* x, const std::vector<double>& ref, bool& finite) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(x[i])) finite = false;
    diff = std::max(diff, std::abs(x[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return diff / std::max(scale, 1e-30);
}

struct Tally {
  double worst_output = 0;  // max over steps of max|o - o_ref| / max|o_ref|
  index_t worst_step = -1;
  bool finite = true;
  void output(const float* o, const std::vector<double>& ref, index_t step) {
    const double rel = relative_error(o, ref, finite);
    if (rel > worst_output) worst_output = rel, worst_step = step;
  }
};

// The outputs and the [kHeads, kKey, kValue] state of the matrix-state steps (GLA, gated delta
// rule, RWKV-7), in fp32 (the library's, zeros to start) and in float64 (the recurrence here).
struct MatrixHeads {
  Tensor<float, 3> o{{1, kHeads, kValue}};
  Tensor<float, 4> state{{1, kHeads, kKey, kValue}};
  std::vector<double> ref = std::vector<double>(kHeads * kKey * kValue, 0.0);
  std::vector<double> o_ref = std::vector<double>(kHeads * kValue);
};

// One operator: a step of the library and of the double recurrence on the same random token.
struct Case {
  std::string name;
  std::function<void(Rng&)> draw;                  // the next token's inputs
  std::function<void(index_t, Tally&)> step;        // library step + reference step, compare
  std::function<double(bool&)> state_error;         // library state vs reference state
};

// Case::state_error of an operator whose data keeps `state` (fp32) beside `ref` (float64).
template <class Data>
std::function<double(bool&)> compare_states(const std::shared_ptr<Data>& d) {
  return [d](bool& finite) { return relative_error(d->state.data(), d->ref, finite); };
}

// S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t (one state per head).
Case gla_case() {
  struct Data : MatrixHeads {
    Tensor<float, 3> q{{1, kHeads, kKey}}, k{{1, kHeads, kKey}}, v{{1, kHeads, kValue}}, g{{1, kHeads, kKey}};
  };
  auto d = std::make_shared<Data>();
  Case c;
  c.name = "gated_linear_attention_step";
  c.draw = [d](Rng& r) {
    r.fill(d->q.data(), d->q.numel(), -1, 1), r.fill(d->k.data(), d->k.numel(), -1, 1);
    r.fill(d->v.data(), d->v.numel(), -1, 1), r.fill(d->g.data(), d->g.numel(), -0.2f, -0.005f);
  };
  c.step = [d](index_t t, Tally& tally) {
    seqmix::gated_linear_attention_step({d->q.cview(), d->k.cview(), d->v.cview(), d->g.cview()}, {d->o.view(), d->state.view()});
    const double scale = 1.0 / std::sqrt(double(kKey));
    for (index_t h = 0; h < kHeads; ++h)
      for (index_t j = 0; j < kValue; ++j) {
        double acc = 0;
        for (index_t i = 0; i < kKey; ++i) {
          double& s = d->ref[(h * kKey + i) * kValue + j];
          s = std::exp(double(d->g(0, h, i))) * s + double(d->k(0, h, i)) * d->v(0, h, j);
          acc += s * d->q(0, h, i);
        }
        d->o_ref[h * kValue + j] = scale * acc;
      }
    tally.output(d->o.data(), d->o_ref, t);
  };
  c.state_error = compare_states(d);
  return c;
}

// S' = exp(g_t) S_{t-1}; S_t = S' + beta_t k_t (v_t - S'^T k_t)^T; o_t = scale * S_t^T q_t.
Case gated_delta_case() {
  struct Data : MatrixHeads {
    Tensor<float, 3> q{{1, kHeads, kKey}}, k{{1, kHeads, kKey}}, v{{1, kHeads, kValue}};
    Tensor<float, 2> beta{{1, kHeads}}, g{{1, kHeads}};
  };
  auto d = std::make_shared<Data>();
  Case c;
  c.name = "gated_delta_rule_step";
  c.draw = [d](Rng& r) {
    for (index_t h = 0; h < kHeads; ++h) r.fill_unit(&d->k(0, h, 0), kKey), r.fill_unit(&d->q(0, h, 0), kKey);
    r.fill(d->v.data(), d->v.numel(), -1, 1);
    r.fill(d->beta.data(), d->beta.numel(), 0.05f, 0.95f), r.fill(d->g.data(), d->g.numel(), -0.1f, -0.001f);
  };
  c.step = [d](index_t t, Tally& tally) {
    seqmix::GatedDeltaRuleStepInputs in{d->q.cview(), d->k.cview(), d->v.cview(), d->beta.cview(), d->g.cview()};
    seqmix::gated_delta_rule_step(in, {d->o.view(), d->state.view()});
    const double scale = 1.0 / std::sqrt(double(kKey));
    for (index_t h = 0; h < kHeads; ++h) {
      double* S = &d->ref[h * kKey * kValue];
      const double decay = std::exp(double(d->g(0, h)));
      for (index_t x = 0; x < kKey * kValue; ++x) S[x] *= decay;
      for (index_t j = 0; j < kValue; ++j) {
        double kS = 0;  // (S'^T k)_j
        for (index_t i = 0; i < kKey; ++i) kS += S[i * kValue + j] * d->k(0, h, i);
        const double delta = d->beta(0, h) * (d->v(0, h, j) - kS);
        double acc = 0;
        for (index_t i = 0; i < kKey; ++i) {
          S[i * kValue + j] += double(d->k(0, h, i)) * delta;
          acc += S[i * kValue + j] * d->q(0, h, i);
        }
        d->o_ref[h * kValue + j] = scale * acc;
      }
    }
    tally.output(d->o.data(), d->o_ref, t);
  };
  c.state_error = compare_states(d);
  return c;
}

// S_t = diag(exp(g_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T; o_t = S_t^T r_t, with RWKV-7's
// a = -kappa_hat, b = kappa_hat * a_lr (a unit kappa_hat and a learning rate in (0, 1)).
Case rwkv7_case() {
  struct Data : MatrixHeads {
    Tensor<float, 3> r{{1, kHeads, kKey}}, k{{1, kHeads, kKey}}, v{{1, kHeads, kValue}};
    Tensor<float, 3> a{{1, kHeads, kKey}}, b{{1, kHeads, kKey}}, g{{1, kHeads, kKey}};
  };
  auto d = std::make_shared<Data>();
  Case c;
  c.name = "rwkv7_step";
  c.draw = [d](Rng& rng) {
    rng.fill(d->r.data(), d->r.numel(), -1, 1), rng.fill(d->v.data(), d->v.numel(), -1, 1);
    rng.fill(d->g.data(), d->g.numel(), -0.5f, -0.01f);
    for (index_t h = 0; h < kHeads; ++h) {
      rng.fill_unit(&d->a(0, h, 0), kKey);  // kappa_hat
      rng.fill(&d->k(0, h, 0), kKey, -0.5f, 0.5f);
      for (index_t i = 0; i < kKey; ++i) {
        const float kappa = d->a(0, h, i), rate = rng.uniform(0.05f, 0.95f);
        d->a(0, h, i) = -kappa, d->b(0, h, i) = kappa * rate;
      }
    }
  };
  c.step = [d](index_t t, Tally& tally) {
    seqmix::rwkv7_step({d->r.cview(), d->k.cview(), d->v.cview(), d->a.cview(), d->b.cview(), d->g.cview()},
                       {d->o.view(), d->state.view()});
    std::vector<double> aS(kValue);
    for (index_t h = 0; h < kHeads; ++h) {
      double* S = &d->ref[h * kKey * kValue];
      for (index_t j = 0; j < kValue; ++j) {
        aS[j] = 0;
        for (index_t i = 0; i < kKey; ++i) aS[j] += double(d->a(0, h, i)) * S[i * kValue + j];
      }
      for (index_t j = 0; j < kValue; ++j) {
        double acc = 0;
        for (index_t i = 0; i < kKey; ++i) {
          double& s = S[i * kValue + j];
          s = std::exp(double(d->g(0, h, i))) * s + double(d->b(0, h, i)) * aS[j] + double(d->k(0, h, i)) * d->v(0, h, j);
          acc += s * d->r(0, h, i);
        }
        d->o_ref[h * kValue + j] = acc;
      }
    }
    tally.output(d->o.data(), d->o_ref, t);
  };
  c.state_error = compare_states(d);
  return c;
}

// Mamba-2, one group: h_t = exp(dt A) h_{t-1} + dt x_t Bm_t^T; y_t = h_t Cm_t + D x_t.
Case ssd_case() {
  struct Data {
    Tensor<float, 3> x{{1, kHeads, kSsdP}}, Bm{{1, 1, kSsdN}}, Cm{{1, 1, kSsdN}};
    Tensor<float, 2> dt{{1, kHeads}};
    Tensor<float, 1> A{{kHeads}}, D{{kHeads}};
    Tensor<float, 3> y{{1, kHeads, kSsdP}};
    Tensor<float, 4> state{{1, kHeads, kSsdP, kSsdN}};
    std::vector<double> ref = std::vector<double>(kHeads * kSsdP * kSsdN, 0.0), y_ref = std::vector<double>(kHeads * kSsdP);
  };
  auto d = std::make_shared<Data>();
  for (index_t h = 0; h < kHeads; ++h) d->A(h) = -1.f - h, d->D(h) = 0.5f;
  Case c;
  c.name = "ssd_step";
  c.draw = [d](Rng& r) {
    r.fill(d->x.data(), d->x.numel(), -1, 1), r.fill(d->Bm.data(), d->Bm.numel(), -1, 1);
    r.fill(d->Cm.data(), d->Cm.numel(), -1, 1), r.fill(d->dt.data(), d->dt.numel(), 0.001f, 0.1f);  // softplus'd dt
  };
  c.step = [d](index_t t, Tally& tally) {
    seqmix::SsdStepInputs in{d->x.cview(), d->dt.cview(), d->A.cview(), d->Bm.cview(), d->Cm.cview(), d->D.cview()};
    seqmix::ssd_step(in, {d->y.view(), d->state.view()});
    for (index_t h = 0; h < kHeads; ++h) {
      const double dt = d->dt(0, h), decay = std::exp(dt * d->A(h));
      for (index_t p = 0; p < kSsdP; ++p) {
        double acc = 0;
        for (index_t n = 0; n < kSsdN; ++n) {
          double& s = d->ref[(h * kSsdP + p) * kSsdN + n];
          s = decay * s + dt * d->x(0, h, p) * d->Bm(0, 0, n);
          acc += s * d->Cm(0, 0, n);
        }
        d->y_ref[h * kSsdP + p] = acc + double(d->D(h)) * d->x(0, h, p);
      }
    }
    tally.output(d->y.data(), d->y_ref, t);
  };
  c.state_error = compare_states(d);
  return c;
}

// Mamba-1, one group, S4D-real A[d][n] = -(n + 1): h = exp(dt A) h + dt Bm u; y = Cm h + D u.
Case selective_scan_case() {
  struct Data {
    Tensor<float, 2> u{{1, kScanD}}, delta{{1, kScanD}}, A{{kScanD, kScanN}};
    Tensor<float, 3> Bm{{1, 1, kScanN}}, Cm{{1, 1, kScanN}};
    Tensor<float, 1> Dskip{{kScanD}};
    Tensor<float, 2> y{{1, kScanD}};
    Tensor<float, 3> state{{1, kScanD, kScanN}};
    std::vector<double> ref = std::vector<double>(kScanD * kScanN, 0.0), y_ref = std::vector<double>(kScanD);
  };
  auto d = std::make_shared<Data>();
  for (index_t c = 0; c < kScanD; ++c) {
    d->Dskip(c) = 1.f;
    for (index_t n = 0; n < kScanN; ++n) d->A(c, n) = -static_cast<float>(n + 1);
  }
  Case c;
  c.name = "selective_scan_step";
  c.draw = [d](Rng& r) {
    r.fill(d->u.data(), d->u.numel(), -1, 1), r.fill(d->delta.data(), d->delta.numel(), 0.001f, 0.1f);
    r.fill(d->Bm.data(), d->Bm.numel(), -1, 1), r.fill(d->Cm.data(), d->Cm.numel(), -1, 1);
  };
  c.step = [d](index_t t, Tally& tally) {
    seqmix::SelectiveScanStepInputs in{d->u.cview(), d->delta.cview(), d->A.cview(), d->Bm.cview(), d->Cm.cview(),
                                       d->Dskip.cview()};
    seqmix::selective_scan_step(in, {d->y.view(), d->state.view()});
    for (index_t ch = 0; ch < kScanD; ++ch) {
      const double dt = d->delta(0, ch);
      double acc = 0;
      for (index_t n = 0; n < kScanN; ++n) {
        double& s = d->ref[ch * kScanN + n];
        s = std::exp(dt * d->A(ch, n)) * s + dt * d->Bm(0, 0, n) * d->u(0, ch);
        acc += s * d->Cm(0, 0, n);
      }
      d->y_ref[ch] = acc + double(d->Dskip(ch)) * d->u(0, ch);
    }
    tally.output(d->y.data(), d->y_ref, t);
  };
  c.state_error = compare_states(d);
  return c;
}

index_t parse_count(const char* text, const char* flag) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < 1) {
    std::fprintf(stderr, "%s expects a positive integer, got '%s'\n", flag, text);
    std::exit(2);
  }
  return static_cast<index_t>(value);
}

}  // namespace

int main(int argc, char** argv) {
  index_t steps = 1000000, report_every = 0;
  double tolerance = 1e-4;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--steps" && i + 1 < argc) {
      steps = parse_count(argv[++i], "--steps");
    } else if (arg == "--report-every" && i + 1 < argc) {
      report_every = parse_count(argv[++i], "--report-every");
    } else if (arg == "--tolerance" && i + 1 < argc) {
      tolerance = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "usage: %s [--steps N] [--report-every N] [--tolerance X]\n", argv[0]);
      return 2;
    }
  }
  if (report_every == 0) report_every = std::max<index_t>(steps / 4, 1);

  std::vector<Case> cases = {gla_case(), gated_delta_case(), ssd_case(), rwkv7_case(), selective_scan_case()};
  std::printf("seqmix-stability: %lld decode steps per operator against a float64 recurrence (tolerance %.1e)\n",
              static_cast<long long>(steps), tolerance);
  std::printf("%-28s %10s %14s %12s %12s %8s %9s\n", "operator", "steps", "worst output", "at step", "final state",
              "finite", "seconds");
  bool all_ok = true;
  for (Case& c : cases) {
    Rng rng;
    Tally tally;
    const auto start = std::chrono::steady_clock::now();
    double last_state = 0;
    for (index_t t = 0; t < steps; ++t) {
      c.draw(rng);
      c.step(t, tally);
      if ((t + 1) % report_every == 0 || t + 1 == steps) {
        last_state = c.state_error(tally.finite);
        if ((t + 1) != steps)
          std::printf("  %-26s %10lld %14.3e %12s %12.3e\n", c.name.c_str(), static_cast<long long>(t + 1),
                      tally.worst_output, "", last_state);
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool ok = tally.finite && tally.worst_output <= tolerance && last_state <= tolerance;
    all_ok = all_ok && ok;
    std::printf("%-28s %10lld %14.3e %12lld %12.3e %8s %9.2f%s\n", c.name.c_str(), static_cast<long long>(steps),
                tally.worst_output, static_cast<long long>(tally.worst_step), last_state, tally.finite ? "yes" : "NO",
                seconds, ok ? "" : "  FAILED");
  }
  return all_ok ? 0 : 1;
}
