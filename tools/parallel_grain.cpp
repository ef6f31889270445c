// seqmix-parallel-grain: how each family's main prefill and decode would split its work on 2 and on
// 64 cores (issue 19 item 5), measured on any machine. Every call goes through a CountingExecutor
// (testing/seqmix_testing/counting_executor.hpp) that claims 2 or 64 threads but runs the tasks
// serially, so the task counts are exactly what the partition code hands a pool of that size, and
// the tasks' thread CPU times give, by a list schedule, the fraction of the cores that would sit
// idle. An operator is flagged when more than 25% of 64 cores would idle.
//
//   seqmix-parallel-grain            the README's model shapes (the benchmark shapes), a few seconds
//   seqmix-parallel-grain --quick    tiny shapes (the test suite's run: task counts only mean
//                                    something at the full shapes)
//   seqmix-parallel-grain --times    also the 1-thread and 2-thread wall times (ThreadPool(2), median
//                                    of 5 calls); meaningful only on an idle machine
//   --filter TEXT                    only the cases whose operator or shape contains TEXT
//
// Columns: tasks at 2 / at 64 are the top-level run() sizes of one call, in call order ("128x3"
// = three runs of 128 tasks); idle at 64 (work) is 1 - work / (64 * time on 64 cores) with the time
// from scheduling the measured tasks, the serial part of the call included; idle (counts) uses only
// the counts (1 - min(tasks, 64) / 64, weighted by each run's work). Both at 2 threads likewise.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix/lti/long_conv/fast.hpp"
#include "seqmix/lti/long_conv/step.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/step.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::Executor;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

using Call = std::function<void(const Executor&)>;

/// One row of the table. `make` allocates the inputs only when the case runs, so the largest
/// problems are never resident together.
struct Case {
  std::string op, kind, shape;
  std::function<Call()> make;
};

constexpr int kWide = 64;
constexpr double kIdleLimit = 0.25;
// Below 20 us of work per core on 64 cores a call cannot fill them whatever its grain: waking a
// pool's workers costs a few microseconds each time. Such calls are reported as "small".
constexpr double kSmallWork = 64 * 20e-6;

template <std::size_t R>
Tensor<float, R> rnd(const std::array<index_t, R>& shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return st::random_tensor<R>(shape, seed, lo, hi);
}

// Row t of a [B, T, ...] tensor as the step forms take it.
template <class TensorT>
auto row0(TensorT& x) {
  return x.view().select(1, 0);
}

const st::SsmShape& ssm_shape(const std::string& name) {
  for (const auto& s : st::ssm_shapes())
    if (s.name == name) return s;
  throw std::invalid_argument("parallel_grain: no ssm shape " + name);
}

const st::LinearAttentionShape& la_shape(const std::string& name) {
  for (const auto& s : st::linear_attention_shapes())
    if (s.name == name) return s;
  throw std::invalid_argument("parallel_grain: no linear-attention shape " + name);
}

const st::AttentionShape& attn_shape(const std::string& name) {
  for (const auto& s : st::attention_shapes())
    if (s.name == name) return s;
  throw std::invalid_argument("parallel_grain: no attention shape " + name);
}

std::string dims(std::initializer_list<std::pair<const char*, index_t>> parts) {
  std::string out;
  for (const auto& [name, value] : parts) out += (out.empty() ? "" : " ") + std::string(name) + "=" + std::to_string(value);
  return out;
}

// ---- the cases --------------------------------------------------------------------------------
// Full: the shapes of the README's performance table (model shapes from seqmix_testing). Quick:
// the same calls at a few tokens and heads, for the test suite.

void scan_cases(std::vector<Case>& cases, bool quick) {
  const index_t T = quick ? 64 : 65536, D = quick ? 32 : 1024;
  cases.push_back({"linear_scan", "prefill", dims({{"B", 1}, {"T", T}, {"D", D}}), [=]() -> Call {
                     auto a = std::make_shared<Tensor<float, 3>>(rnd<3>({1, T, D}, 1, 0.f, 1.f));
                     auto b = std::make_shared<Tensor<float, 3>>(rnd<3>({1, T, D}, 2));
                     auto h = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{1, T, D});
                     auto h0 = std::make_shared<Tensor<float, 2>>(rnd<2>({1, D}, 3));
                     auto last = std::make_shared<Tensor<float, 2>>(std::array<index_t, 2>{1, D});
                     return [=](const Executor& ex) {
                       seqmix::linear_scan(a->view(), b->view(), h0->view(), h->view(), last->view(), {}, ex);
                     };
                   }});
}

void ssm_cases(std::vector<Case>& cases, bool quick) {
  {  // causal_conv1d: Mamba-2 780M's conv over d_inner + 2 d_state channels
    const index_t T = quick ? 9 : 515, D = quick ? 40 : 3328, W = 4;
    auto data = [=](index_t steps) {
      struct Conv {
        Tensor<float, 3> x, state, y, final_state;
        Tensor<float, 2> weight, y1;
        Tensor<float, 1> bias;
      };
      return std::make_shared<Conv>(Conv{rnd<3>({1, steps, D}, 1), rnd<3>({1, W - 1, D}, 2), Tensor<float, 3>({1, steps, D}),
                                         Tensor<float, 3>({1, W - 1, D}), rnd<2>({D, W}, 3), Tensor<float, 2>({1, D}),
                                         rnd<1>({D}, 4)});
    };
    cases.push_back({"causal_conv1d", "prefill", dims({{"D", D}, {"T", T}, {"W", W}}), [=]() -> Call {
                       auto d = data(T);
                       return [d](const Executor& ex) {
                         seqmix::causal_conv1d({d->x.view(), d->weight.view(), d->bias.view(), d->state.view(), {}},
                                               {d->y.view(), d->final_state.view(), {}}, {seqmix::ConvActivation::silu}, ex);
                       };
                     }});
    cases.push_back({"causal_conv1d_step", "decode", dims({{"D", D}, {"W", W}}), [=]() -> Call {
                       auto d = data(1);
                       return [d](const Executor& ex) {
                         seqmix::causal_conv1d_step({row0(d->x), d->weight.view(), d->bias.view(), {}},
                                                    {d->y1.view(), d->state.view()}, {seqmix::ConvActivation::silu}, ex);
                       };
                     }});
  }
  {  // selective_scan: Mamba-1 130M
    const auto& s = ssm_shape("mamba-130m");
    const index_t T = quick ? 9 : 1024, D = quick ? 24 : s.D, N = s.N, G = s.G;
    struct Scan {
      Tensor<float, 3> u, delta, z, y, state, final_state;
      Tensor<float, 2> A, y1;
      Tensor<float, 4> Bm, Cm;
      Tensor<float, 1> Dskip, delta_bias;
      seqmix::SelectiveScanInputs inputs() const {
        return {u.view(), delta.view(), A.view(), Bm.view(), Cm.view(), Dskip.view(), z.view(), delta_bias.view(), state.view(), {}};
      }
    };
    auto data = [=](index_t steps) {
      return std::make_shared<Scan>(Scan{rnd<3>({1, steps, D}, 1), rnd<3>({1, steps, D}, 2, -4.f, 0.f), rnd<3>({1, steps, D}, 3),
                                         Tensor<float, 3>({1, steps, D}), rnd<3>({1, D, N}, 4), Tensor<float, 3>({1, D, N}),
                                         rnd<2>({D, N}, 5, -16.f, -1.f), Tensor<float, 2>({1, D}), rnd<4>({1, steps, G, N}, 6),
                                         rnd<4>({1, steps, G, N}, 7), rnd<1>({D}, 8), rnd<1>({D}, 9, -2.f, 0.f)});
    };
    seqmix::SelectiveScanOptions options;
    options.delta_softplus = true;
    cases.push_back({"selective_scan", "prefill", s.name + " " + dims({{"D", D}, {"N", N}, {"T", T}}), [=]() -> Call {
                       auto d = data(T);
                       return [d, options](const Executor& ex) {
                         seqmix::selective_scan(d->inputs(), {d->y.view(), d->final_state.view(), {}}, options, ex);
                       };
                     }});
    cases.push_back({"selective_scan_step", "decode", s.name + " " + dims({{"D", D}, {"N", N}}), [=]() -> Call {
                       auto d = data(1);
                       return [d, options](const Executor& ex) {
                         const auto in = d->inputs();
                         const seqmix::SelectiveScanStepInputs step{in.u.select(1, 0), in.delta.select(1, 0), in.A,
                                                                    in.Bm.select(1, 0), in.Cm.select(1, 0), in.Dskip,
                                                                    in.z.select(1, 0), in.delta_bias, {}};
                         seqmix::selective_scan_step(step, {d->y1.view(), d->state.view()}, options, ex);
                       };
                     }});
  }
  for (const char* name : {"mamba2-780m", "ssd-h128-p80"}) {  // ssd (Mamba-2)
    const auto& s = ssm_shape(name);
    const index_t T = quick ? 17 : 512, H = quick ? 3 : s.H, P = quick ? 8 : s.P, N = quick ? 16 : s.N, G = s.G;
    struct Ssd {
      Tensor<float, 4> x, z, Bm, Cm, state, y, final_state;
      Tensor<float, 3> dt, y1;
      Tensor<float, 1> A, D, dt_bias;
      seqmix::SsdInputs inputs() const {
        return {x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view(), dt_bias.view(), state.view(), {}};
      }
    };
    auto data = [=](index_t steps) {
      return std::make_shared<Ssd>(Ssd{rnd<4>({1, steps, H, P}, 1), rnd<4>({1, steps, H, P}, 2), rnd<4>({1, steps, G, N}, 3),
                                       rnd<4>({1, steps, G, N}, 4), rnd<4>({1, H, P, N}, 5), Tensor<float, 4>({1, steps, H, P}),
                                       Tensor<float, 4>({1, H, P, N}), rnd<3>({1, steps, H}, 6), Tensor<float, 3>({1, H, P}),
                                       rnd<1>({H}, 7, -16.f, -1.f), rnd<1>({H}, 8), rnd<1>({H}, 9, -6.f, -2.5f)});
    };
    seqmix::SsdOptions options;
    options.dt_softplus = true;
    const std::string shape = s.name + " " + dims({{"H", H}, {"P", P}, {"N", N}});
    cases.push_back({"ssd", "prefill", shape + " T=" + std::to_string(T), [=]() -> Call {
                       auto d = data(T);
                       return [d, options](const Executor& ex) {
                         seqmix::ssd(d->inputs(), {d->y.view(), d->final_state.view(), {}}, options, ex);
                       };
                     }});
    cases.push_back({"ssd_step", "decode", shape, [=]() -> Call {
                       auto d = data(1);
                       return [d, options](const Executor& ex) {
                         const auto in = d->inputs();
                         const seqmix::SsdStepInputs step{in.x.select(1, 0), in.dt.select(1, 0), in.A, in.Bm.select(1, 0),
                                                          in.Cm.select(1, 0), in.D, in.z.select(1, 0), in.dt_bias, {}};
                         seqmix::ssd_step(step, {d->y1.view(), d->state.view()}, options, ex);
                       };
                     }});
  }
}

// q, k, v (and gates) of the linear-attention family, B = 1.
struct LaData {
  Tensor<float, 4> q, k, v, g, a, b, o, state;
  Tensor<float, 3> gs, beta;
  Tensor<float, 2> u;
  LaData(index_t T, index_t H, index_t HV, index_t K, index_t V)
      : q(rnd<4>({1, T, H, K}, 1, -0.2f, 0.2f)), k(rnd<4>({1, T, H, K}, 2, -0.2f, 0.2f)), v(rnd<4>({1, T, HV, V}, 3)),
        g({1, T, H, K}), a(rnd<4>({1, T, H, K}, 4, -0.1f, 0.f)), b({1, T, H, K}), o({1, T, HV, V}),
        state(rnd<4>({1, HV, K, V}, 5, -0.1f, 0.1f)), gs({1, T, HV}), beta(rnd<3>({1, T, HV}, 6, 0.f, 1.f)),
        u(rnd<2>({H, K}, 7)) {
    st::fill_log_gate(g.view(), 8, -0.3f, 0.f);
    st::fill_log_gate(gs.view(), 9, -0.1f, 0.f);
    for (index_t i = 0; i < a.numel(); ++i) b.data()[i] = -0.5f * a.data()[i];
  }
};

void linear_attention_cases(std::vector<Case>& cases, bool quick) {
  const auto add = [&](const char* op, const char* kind, const st::LinearAttentionShape& s, index_t T,
                       std::function<void(LaData&, const Executor&)> body) {
    const index_t H = quick ? 2 : s.H, HV = quick ? 2 * s.HV / s.H : s.HV, K = quick ? 8 : s.K, V = quick ? 8 : s.V;
    const index_t steps = quick && T > 1 ? 33 : T;
    std::string shape = s.name + " " + dims({{"H", H}, {"K", K}, {"V", V}});
    if (HV != H) shape += " HV=" + std::to_string(HV);
    if (T > 1) shape += " T=" + std::to_string(steps);
    cases.push_back({op, kind, shape, [=]() -> Call {
                       auto d = std::make_shared<LaData>(steps, H, HV, K, V);
                       return [d, body](const Executor& ex) { body(*d, ex); };
                     }});
  };
  const auto gla = [](LaData& d, const Executor& ex) {
    seqmix::GatedLinearAttentionInputs in;
    in.q = d.q.view(), in.k = d.k.view(), in.v = d.v.view(), in.g = d.g.view();
    seqmix::gated_linear_attention(in, {d.o.view(), d.state.view()}, {}, ex);
  };
  add("gated_linear_attention", "prefill", la_shape("gla-1.3b"), 512, gla);
  add("gated_linear_attention", "prefill", la_shape("gla-k128"), 512, gla);
  add("gated_linear_attention_step", "decode", la_shape("gla-1.3b"), 1, [](LaData& d, const Executor& ex) {
    seqmix::GatedLinearAttentionStepInputs in;
    in.q = row0(d.q), in.k = row0(d.k), in.v = row0(d.v), in.g = row0(d.g);
    seqmix::gated_linear_attention_step(in, {row0(d.o), d.state.view()}, {}, ex);
  });
  add("linear_attention", "prefill", la_shape("gla-1.3b"), 8192, [](LaData& d, const Executor& ex) {
    seqmix::linear_attention({d.q.view(), d.k.view(), d.v.view(), {}, {}}, {d.o.view(), d.state.view(), {}}, {}, ex);
  });
  add("rwkv6", "prefill", la_shape("rwkv-h32-k64"), 512, [](LaData& d, const Executor& ex) {
    seqmix::rwkv6({d.q.view(), d.k.view(), d.v.view(), d.g.view(), d.u.view(), {}}, {d.o.view(), d.state.view()}, {}, ex);
  });
  add("rwkv6_step", "decode", la_shape("rwkv-h32-k64"), 1, [](LaData& d, const Executor& ex) {
    seqmix::rwkv6_step({row0(d.q), row0(d.k), row0(d.v), row0(d.g), d.u.view()}, {row0(d.o), d.state.view()}, {}, ex);
  });
  const auto gdr = [](seqmix::DeltaGate gate) {
    return [gate](LaData& d, const Executor& ex) {
      seqmix::GatedDeltaRuleInputs in;
      in.q = d.q.view(), in.k = d.k.view(), in.v = d.v.view(), in.beta = d.beta.view();
      if (gate == seqmix::DeltaGate::channel) in.g = d.g.view(); else in.g_scalar = d.gs.view();
      seqmix::GatedDeltaRuleOptions options;
      options.gate = gate;
      seqmix::gated_delta_rule(in, {d.o.view(), d.state.view()}, options, ex);
    };
  };
  const auto gdr_step = [](seqmix::DeltaGate gate) {
    return [gate](LaData& d, const Executor& ex) {
      seqmix::GatedDeltaRuleStepInputs in;
      in.q = row0(d.q), in.k = row0(d.k), in.v = row0(d.v), in.beta = row0(d.beta);
      if (gate == seqmix::DeltaGate::channel) in.g = row0(d.g); else in.g_scalar = row0(d.gs);
      seqmix::GatedDeltaRuleOptions options;
      options.gate = gate;
      seqmix::gated_delta_rule_step(in, {row0(d.o), d.state.view()}, options, ex);
    };
  };
  const st::LinearAttentionShape h4{"gdn-h4", 4, 128, 128, 4}, h16{"gdn-h16-k64", 16, 64, 64, 16};
  add("gated_delta_rule", "prefill", la_shape("gated-deltanet-h32"), 512, gdr(seqmix::DeltaGate::scalar));
  add("gated_delta_rule", "prefill", h4, 1024, gdr(seqmix::DeltaGate::scalar));
  add("gated_delta_rule", "prefill", la_shape("qwen3-next-gdn"), 512, gdr(seqmix::DeltaGate::scalar));
  add("gated_delta_rule_step", "decode", la_shape("gated-deltanet-h32"), 1, gdr_step(seqmix::DeltaGate::scalar));
  add("gated_delta_rule_step", "decode", h16, 1, gdr_step(seqmix::DeltaGate::scalar));
  add("kda", "prefill", la_shape("gated-deltanet-h32"), 64, gdr(seqmix::DeltaGate::channel));
  add("kda_step", "decode", la_shape("gated-deltanet-h32"), 1, gdr_step(seqmix::DeltaGate::channel));
  add("rwkv7", "prefill", la_shape("rwkv-h32-k64"), 512, [](LaData& d, const Executor& ex) {
    seqmix::rwkv7({d.q.view(), d.k.view(), d.v.view(), d.a.view(), d.b.view(), d.g.view(), seqmix::ConstView<float, 4>()},
                  {d.o.view(), d.state.view()}, ex);
  });
  add("rwkv7_step", "decode", la_shape("rwkv-h32-k64"), 1, [](LaData& d, const Executor& ex) {
    seqmix::Rwkv7StepInputs in;
    in.r = row0(d.q), in.k = row0(d.k), in.v = row0(d.v), in.a = row0(d.a), in.b = row0(d.b), in.g = row0(d.g);
    seqmix::rwkv7_step(in, {row0(d.o), d.state.view()}, ex);
  });
}

void attention_cases(std::vector<Case>& cases, bool quick) {
  const auto& s = attn_shape("llama3-8b");
  const index_t Hq = quick ? 4 : s.Hq, Hkv = quick ? 2 : s.Hkv, D = quick ? 16 : s.D;
  const std::string heads = s.name + " " + dims({{"Hq", Hq}, {"Hkv", Hkv}, {"D", D}});
  const index_t T = quick ? 40 : 1024, Tk = quick ? 300 : 16384;
  struct Attn {
    Tensor<float, 4> q, k, v, o;
  };
  auto data = [=](index_t Tq, index_t keys) {
    return std::make_shared<Attn>(Attn{rnd<4>({1, Tq, Hq, D}, 1), rnd<4>({1, keys, Hkv, D}, 2), rnd<4>({1, keys, Hkv, D}, 3),
                                       Tensor<float, 4>({1, Tq, Hq, D})});
  };
  const auto call = [](const std::shared_ptr<Attn>& d) -> Call {
    return [d](const Executor& ex) {
      seqmix::AttentionInputs<float> in;
      in.q = d->q.view(), in.k = d->k.view(), in.v = d->v.view();
      seqmix::AttentionOptions options;
      options.causal = true;
      seqmix::attention(in, {d->o.view(), {}}, options, ex);
    };
  };
  cases.push_back({"attention", "prefill", heads + " T=" + std::to_string(T) + " causal", [=] { return call(data(T, T)); }});
  cases.push_back({"attention", "decode", heads + " Tk=" + std::to_string(Tk), [=] { return call(data(1, Tk)); }});
  cases.push_back({"kv_cache_attention", "decode", heads + " Tk=" + std::to_string(Tk) + " fp16", [=]() -> Call {
                     seqmix::KvCacheConfig config;
                     config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D;
                     config.key_format = seqmix::KvFormat::f16, config.value_format = seqmix::KvFormat::f16;
                     auto cache = std::make_shared<seqmix::KvCache>(config);
                     {
                       const auto k = rnd<4>({1, Tk, Hkv, D}, 1), v = rnd<4>({1, Tk, Hkv, D}, 2);
                       cache->append(k.view(), v.view());
                     }
                     auto q = std::make_shared<Tensor<float, 4>>(rnd<4>({1, 1, Hq, D}, 3));
                     auto o = std::make_shared<Tensor<float, 4>>(std::array<index_t, 4>{1, 1, Hq, D});
                     return [cache, q, o](const Executor& ex) {
                       seqmix::KvCacheAttentionInputs in;
                       in.q = q->view(), in.cache = cache.get();
                       seqmix::AttentionOptions options;
                       options.causal = true;
                       seqmix::kv_cache_attention(in, {o->view(), {}}, options, ex);
                     };
                   }});
}

void long_conv_cases(std::vector<Case>& cases, bool quick) {
  const index_t D = quick ? 40 : 768;
  for (index_t L : {quick ? index_t{50} : index_t{4096}, index_t{64}}) {
    const index_t T = quick ? 50 : 4096;
    cases.push_back({"long_conv", "prefill", dims({{"D", D}, {"T", T}, {"L", L}}), [=]() -> Call {
                       auto u = std::make_shared<Tensor<float, 3>>(rnd<3>({1, T, D}, 1));
                       auto h = std::make_shared<Tensor<float, 2>>(rnd<2>({L, D}, 2, -0.05f, 0.05f));
                       auto y = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{1, T, D});
                       return [u, h, y](const Executor& ex) { seqmix::long_conv({u->view(), h->view()}, {y->view()}, {}, ex); };
                     }});
  }
  const index_t L = quick ? 20 : 1024;
  cases.push_back({"long_conv_step", "decode", dims({{"D", D}, {"L", L}}), [=]() -> Call {
                     auto u = std::make_shared<Tensor<float, 2>>(rnd<2>({1, D}, 1));
                     auto h = std::make_shared<Tensor<float, 2>>(rnd<2>({L, D}, 2, -0.05f, 0.05f));
                     auto state = std::make_shared<Tensor<float, 3>>(rnd<3>({1, L - 1, D}, 3));
                     auto y = std::make_shared<Tensor<float, 2>>(std::array<index_t, 2>{1, D});
                     return [u, h, state, y](const Executor& ex) {
                       seqmix::long_conv_step({u->view(), h->view()}, {y->view(), state->view()}, ex);
                     };
                   }});
}

// ---- measuring and printing -----------------------------------------------------------------

struct Observed {
  std::string tasks;  // the top-level run sizes, run-length coded
  st::GrainEstimate estimate;
};

std::string run_sizes(const std::vector<st::RecordedRun>& runs) {
  std::vector<index_t> sizes;
  index_t nested = 0;
  for (const auto& r : runs) {
    if (r.nested)
      ++nested;
    else
      sizes.push_back(r.tasks);
  }
  std::string out;
  int shown = 0;
  for (std::size_t i = 0; i < sizes.size();) {
    std::size_t j = i;
    while (j < sizes.size() && sizes[j] == sizes[i]) ++j;
    if (shown++ == 4) {
      out += ", ...";
      break;
    }
    out += (out.empty() ? "" : ", ") + std::to_string(sizes[i]);
    if (j - i > 1) out += "x" + std::to_string(j - i);
    i = j;
  }
  if (out.empty()) out = "1 (serial)";
  if (nested > 0) out += " (+" + std::to_string(nested) + " nested)";
  return out;
}

// Runs the call once to warm up (first-touch pages, per-thread scratch), then three times
// recorded, keeping each task's fastest time and the fastest serial part.
Observed observe(const Call& call, int threads) {
  st::CountingExecutor ex(threads);
  call(ex);
  std::vector<st::RecordedRun> runs;
  double serial = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    ex.clear();
    const double start = st::thread_cpu_seconds();
    call(ex);
    const double outside = st::serial_seconds(ex.runs(), st::thread_cpu_seconds() - start);
    if (rep == 0) {
      runs = ex.runs(), serial = outside;
    } else {
      st::keep_faster(runs, ex.runs()), serial = std::min(serial, outside);
    }
  }
  Observed o;
  o.tasks = run_sizes(runs);
  o.estimate = st::estimate_grain(runs, serial, threads);
  return o;
}

double median_wall_ms(const Call& call, const Executor& ex) {
  call(ex);
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    call(ex);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[2];
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, times = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--times") == 0) {
      times = true;
    } else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
      filter = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--times] [--filter TEXT]\n", argv[0]);
      return 2;
    }
  }
  std::vector<Case> cases;
  scan_cases(cases, quick);
  ssm_cases(cases, quick);
  linear_attention_cases(cases, quick);
  attention_cases(cases, quick);
  long_conv_cases(cases, quick);

  std::printf("# parallel grain (%s shapes): tasks per run() and idle cores, from a serial counting executor\n",
              quick ? "quick" : "README model");
  std::printf("| operator | call | shape | work ms | tasks at 2 | tasks at 64 | idle at 2 | idle at 64 | idle at 64, equal tasks | serial share |%s verdict |\n",
              times ? " 1 thread ms | 2 threads ms |" : "");
  std::printf("|---|---|---|---|---|---|---|---|---|---|%s---|\n", times ? "---|---|" : "");
  int flagged = 0, small = 0;
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases) {
    if (!filter.empty() && c.op.find(filter) == std::string::npos && c.shape.find(filter) == std::string::npos) continue;
    const Call call = c.make();
    const Observed two = observe(call, 2), wide = observe(call, kWide);
    const st::GrainEstimate& e = wide.estimate;
    const char* verdict = "ok";
    if (e.idle_fraction > kIdleLimit && e.total_seconds < kSmallWork) {
      verdict = "small", ++small;
    } else if (e.idle_fraction > kIdleLimit) {
      verdict = "IDLE > 25%", ++flagged;
    }
    std::string timing;
    if (times) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %.3f | %.3f |", median_wall_ms(call, seqmix::serial_executor()), median_wall_ms(call, pool));
      timing = buf;
    }
    const double serial = e.total_seconds > 0 ? e.serial_seconds / e.total_seconds : 0.0;
    std::printf("| %s | %s | %s | %.3f | %s | %s | %.0f%% | %.0f%% | %.0f%% | %.0f%% |%s %s |\n", c.op.c_str(), c.kind.c_str(),
                c.shape.c_str(), 1e3 * e.total_seconds, two.tasks.c_str(), wide.tasks.c_str(), 100 * two.estimate.idle_fraction,
                100 * e.idle_fraction, 100 * e.equal_idle_fraction, 100 * serial, timing.c_str(), verdict);
    std::fflush(stdout);
  }
  std::printf("flagged: %d with more than %.0f%% of %d cores idle, %d more too small to fill them (under %.2f ms of work)\n",
              flagged, 100 * kIdleLimit, kWide, small, 1e3 * kSmallWork);
  return 0;
}
