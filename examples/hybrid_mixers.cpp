// The sequence mixers of the library side by side on one synthetic input (B = 1, T tokens, H = 16
// heads of 64, i.e. a 1024-wide model): what each one carries from token to token, how many bytes
// that is per sequence after a prefill of T tokens, what the prefill costs per token and what a
// decode step costs. Dense causal softmax attention (its KV cache), GLA, Mamba-2 SSD and Gated
// DeltaNet are the reference points; BASED, RAT, Infini-attention, Mega, Aaren and a minGRU solved
// by parallel Newton are the chunked / hybrid mixers of issue #8.
//
// Every mixer is run the way a decoder runs it: a prefill over tokens [0, T) that leaves a state,
// then kSteps decode steps from that state. The same T + kSteps tokens then go through one prefill
// call, and the largest output difference is printed: the example doubles as a usage reference
// for carrying each mixer's state from prefill to decode.
//
// Usage: seqmix_example_hybrid_mixers [T]   (default 4096). The prefill is timed once, the decode
// figure is the median step; on a shared 2-core machine read them as orders of magnitude, not as
// benchmarks (bench/ has those).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/step.hpp"
#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/newton/cells.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/step.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using Clock = std::chrono::steady_clock;

// Model-like head sizes; every mixer uses H heads of D (no grouped KV heads, so the rows compare
// like with like: GQA would divide the KV-cache-like states by the group size).
constexpr index_t kHeads = 16, kDim = 64, kWidth = kHeads * kDim;
constexpr index_t kSteps = 64;  // decode steps after the prefill: enough for a stable median
constexpr index_t kSsdState = 128;        // Mamba-2's N
constexpr index_t kBasedFeatures = 16;    // BASED's feature dim F (Kf = 1 + F + F^2 = 273)
constexpr index_t kBasedWindow = 64;      // BASED's sliding window (the paper's)
constexpr index_t kRatChunk = 16;         // RAT's L (the paper's default)
constexpr index_t kInfiniSegment = 2048;  // Infini-attention's S (the paper's long-context runs)
constexpr index_t kMegaChunk = 128, kMegaExpansion = 16;
constexpr double kTolerance = 1e-4;  // relative to max(1, max |output|)

template <std::size_t R>
seqmix::ConstView<float, R> tokens(const Tensor<float, R>& x, index_t t0, index_t n) {
  return x.cview().slice(1, t0, n);
}
template <std::size_t R>
seqmix::ConstView<float, R - 1> token(const Tensor<float, R>& x, index_t t) {
  return x.cview().select(1, t);
}

template <std::size_t R, class Dist>
Tensor<float, R> random_tensor(const std::array<index_t, R>& shape, unsigned seed, Dist dist) {
  std::mt19937 rng(seed);
  Tensor<float, R> x(shape);
  for (float& e : x) e = dist(rng);
  return x;
}
std::normal_distribution<float> normal(float stddev = 1.f) { return std::normal_distribution<float>(0.f, stddev); }
std::uniform_real_distribution<float> uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi); }

template <std::size_t R, class F>
Tensor<float, R>& apply(Tensor<float, R>& x, F&& f) {
  for (float& e : x) e = f(e);
  return x;
}

float logsigmoid(float x) { return x >= 0.f ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Bytes of the given state tensors or views, all fp32.
template <class... Views>
double bytes_of(const Views&... views) {
  return 4.0 * static_cast<double>((views.numel() + ...));
}

template <class... Args>
std::string text(const char* format, Args... args) {
  char buffer[192];
  std::snprintf(buffer, sizeof buffer, format, args...);
  return buffer;
}

std::string human_bytes(double bytes) {
  if (bytes >= 1024.0 * 1024.0) return text("%.2f MiB", bytes / (1024.0 * 1024.0));
  if (bytes >= 1024.0) return text("%.1f KiB", bytes / 1024.0);
  return text("%.0f B", bytes);
}

struct Row {
  Row(std::string name_, std::string carries_, std::string growth_)
      : name(std::move(name_)), carries(std::move(carries_)), growth(std::move(growth_)) {}
  std::string name, carries, growth, note;
  double state_bytes = 0, prefill_ms = 0, step_us = 0, max_diff = 0, out_scale = 1;
};

// The shared input: T + kSteps tokens of q, k, v [1,N,H,D]; each mixer derives its own gates.
struct Problem {
  index_t T, N;  // prefill length, total tokens
  const seqmix::Executor& executor;
  Tensor<float, 4> q, k, v;
  Problem(index_t T_, const seqmix::Executor& executor_)
      : T(T_), N(T_ + kSteps), executor(executor_),
        q(random_tensor<4>({1, N, kHeads, kDim}, 1, normal())),
        k(random_tensor<4>({1, N, kHeads, kDim}, 2, normal())),
        v(random_tensor<4>({1, N, kHeads, kDim}, 3, normal())) {}
  Tensor<float, 4> output() const { return Tensor<float, 4>({1, N, kHeads, kDim}); }
};

// Times the prefill (tokens [0, T)) once and each decode step (tokens [T, N)); the step time is
// the median, so a step preempted on the shared machine does not set the figure.
template <class Prefill, class Step>
void time_mixer(const Problem& p, Row& row, Prefill&& prefill, Step&& step) {
  auto start = Clock::now();
  prefill();
  row.prefill_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::vector<double> step_us;
  for (index_t t = p.T; t < p.N; ++t) {
    start = Clock::now();
    step(t);
    step_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  std::nth_element(step_us.begin(), step_us.begin() + kSteps / 2, step_us.end());
  row.step_us = step_us[kSteps / 2];
}

// Prefill + steps (`got`) against one prefill over all N tokens (`want`).
template <std::size_t R>
void compare(Row& row, const Tensor<float, R>& got, const Tensor<float, R>& want) {
  row.max_diff = 0, row.out_scale = 1;
  for (index_t i = 0; i < want.numel(); ++i) {
    row.max_diff = std::max<double>(row.max_diff, std::abs(got.data()[i] - want.data()[i]));
    row.out_scale = std::max<double>(row.out_scale, std::abs(want.data()[i]));
  }
}

// ---------------------------------------------------------------------------------------------
// Reference points

Row dense_attention(const Problem& p) {
  Row row{"dense softmax attention", "K, V cache [T,H,D] each", "O(T)"};
  seqmix::AttentionOptions options;
  options.causal = true;
  // The KV cache is the k / v rows themselves: a decoder appends each token's k and v, so after t
  // tokens the cache is rows [0, t). The query rows are bottom-right aligned (position t0 + i).
  auto inputs = [&](index_t t0, index_t n) {
    seqmix::AttentionInputs<float> in;
    in.q = tokens(p.q, t0, n), in.k = tokens(p.k, 0, t0 + n), in.v = tokens(p.v, 0, t0 + n);
    return in;
  };
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row, [&] { seqmix::attention(inputs(0, p.T), {o.view().slice(1, 0, p.T), {}}, options, p.executor); },
      [&](index_t t) { seqmix::attention(inputs(t, 1), {o.view().slice(1, t, 1), {}}, options, p.executor); });
  seqmix::attention(inputs(0, p.N), {full.view(), {}}, options, p.executor);
  compare(row, o, full);
  row.state_bytes = bytes_of(tokens(p.k, 0, p.T), tokens(p.v, 0, p.T));
  return row;
}

Row gla(const Problem& p) {
  Row row{"GLA", "S [H,K,V]", "const"};
  // Per-channel log-decays <= 0, as GLA's logsigmoid(x W_g) / 16.
  Tensor<float, 4> g = random_tensor<4>({1, p.N, kHeads, kDim}, 10, normal());
  apply(g, [](float x) { return logsigmoid(x) / 16.f; });
  auto inputs = [&](index_t t0, index_t n) {
    seqmix::GatedLinearAttentionInputs in;
    in.q = tokens(p.q, t0, n), in.k = tokens(p.k, t0, n), in.v = tokens(p.v, t0, n), in.g = tokens(g, t0, n);
    return in;
  };
  Tensor<float, 4> state({1, kHeads, kDim, kDim}), o = p.output(), full = p.output();
  time_mixer(
      p, row,
      [&] { seqmix::gated_linear_attention(inputs(0, p.T), {o.view().slice(1, 0, p.T), state.view()}, {}, p.executor); },
      [&](index_t t) {
        seqmix::GatedLinearAttentionStepInputs in;
        in.q = token(p.q, t), in.k = token(p.k, t), in.v = token(p.v, t), in.g = token(g, t);
        seqmix::gated_linear_attention_step(in, {o.view().select(1, t), state.view()}, {}, p.executor);
      });
  // At K = V = 64 the prefill picks the recurrent kernel (faster than chunks for a small state),
  // the same arithmetic as the step: the difference is exactly 0.
  seqmix::gated_linear_attention(inputs(0, p.N), {full.view(), {}}, {}, p.executor);
  compare(row, o, full);
  row.state_bytes = bytes_of(state);
  return row;
}

Row mamba2_ssd(const Problem& p) {
  Row row{"Mamba-2 SSD", text("h [H,P,N] (N=%td; conv state not counted)", kSsdState), "const"};
  // x = v (P = 64 per head), one B/C group, Mamba-2's A in [-16, -1], dt through softplus(dt + bias).
  const Tensor<float, 4> Bm = random_tensor<4>({1, p.N, 1, kSsdState}, 20, normal());
  const Tensor<float, 4> Cm = random_tensor<4>({1, p.N, 1, kSsdState}, 21, normal());
  const Tensor<float, 3> dt = random_tensor<3>({1, p.N, kHeads}, 22, normal(0.5f));
  const Tensor<float, 1> A = random_tensor<1>({kHeads}, 23, uniform(-16.f, -1.f));
  const Tensor<float, 1> dt_bias = random_tensor<1>({kHeads}, 24, uniform(-4.f, -2.f));
  Tensor<float, 1> skip({kHeads});
  skip.fill(1.f);
  seqmix::SsdOptions options;
  options.dt_softplus = true;
  auto inputs = [&](index_t t0, index_t n) {
    seqmix::SsdInputs in;
    in.x = tokens(p.v, t0, n), in.dt = tokens(dt, t0, n), in.A = A.cview(), in.Bm = tokens(Bm, t0, n);
    in.Cm = tokens(Cm, t0, n), in.D = skip.cview(), in.dt_bias = dt_bias.cview();
    return in;
  };
  Tensor<float, 4> state({1, kHeads, kDim, kSsdState}), y = p.output(), full = p.output();
  time_mixer(
      p, row, [&] { seqmix::ssd(inputs(0, p.T), {y.view().slice(1, 0, p.T), state.view()}, options, p.executor); },
      [&](index_t t) {
        seqmix::SsdStepInputs in;
        in.x = token(p.v, t), in.dt = token(dt, t), in.A = A.cview(), in.Bm = token(Bm, t), in.Cm = token(Cm, t);
        in.D = skip.cview(), in.dt_bias = dt_bias.cview();
        seqmix::ssd_step(in, {y.view().select(1, t), state.view()}, options, p.executor);
      });
  seqmix::ssd(inputs(0, p.N), {full.view(), {}}, options, p.executor);
  compare(row, y, full);
  row.state_bytes = bytes_of(state);
  return row;
}

Row gated_deltanet(const Problem& p) {
  Row row{"Gated DeltaNet", "S [H,K,V]", "const"};
  Tensor<float, 3> beta = random_tensor<3>({1, p.N, kHeads}, 30, normal());
  Tensor<float, 3> g = random_tensor<3>({1, p.N, kHeads}, 31, normal());
  apply(beta, sigmoid);
  apply(g, [](float x) { return 0.1f * logsigmoid(x); });  // scalar log-decay per head, <= 0
  seqmix::GatedDeltaRuleOptions options;
  options.gate = seqmix::DeltaGate::scalar;
  options.qk_norm = seqmix::QkNorm::l2;  // the delta rule needs unit keys to stay stable
  auto inputs = [&](index_t t0, index_t n) {
    seqmix::GatedDeltaRuleInputs in;
    in.q = tokens(p.q, t0, n), in.k = tokens(p.k, t0, n), in.v = tokens(p.v, t0, n);
    in.beta = tokens(beta, t0, n), in.g_scalar = tokens(g, t0, n);
    return in;
  };
  Tensor<float, 4> state({1, kHeads, kDim, kDim}), o = p.output(), full = p.output();
  time_mixer(
      p, row,
      [&] { seqmix::gated_delta_rule(inputs(0, p.T), {o.view().slice(1, 0, p.T), state.view()}, options, p.executor); },
      [&](index_t t) {
        seqmix::GatedDeltaRuleStepInputs in;
        in.q = token(p.q, t), in.k = token(p.k, t), in.v = token(p.v, t), in.beta = token(beta, t);
        in.g_scalar = token(g, t);
        seqmix::gated_delta_rule_step(in, {o.view().select(1, t), state.view()}, options, p.executor);
      });
  seqmix::gated_delta_rule(inputs(0, p.N), {full.view(), {}}, options, p.executor);  // recurrent at K = 64, as GLA
  compare(row, o, full);
  row.state_bytes = bytes_of(state);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Chunked / hybrid mixers

Row based(const Problem& p) {
  constexpr index_t F = kBasedFeatures, Kf = 1 + F + F * F, W = kBasedWindow;
  Row row{"BASED", text("S [H,%td,V] + z [H,%td] + K/V ring [W=%td,H,D]", Kf, Kf, W), "const"};
  // Small feature-dim q/k of the linear branch (their own projections in the model).
  const Tensor<float, 4> qf = random_tensor<4>({1, p.N, kHeads, F}, 40, normal());
  const Tensor<float, 4> kf = random_tensor<4>({1, p.N, kHeads, F}, 41, normal());
  seqmix::BasedOptions options;
  options.window = W;
  auto inputs = [&](index_t t0, index_t n) {
    return seqmix::BasedInputs{tokens(qf, t0, n), tokens(kf, t0, n), tokens(p.q, t0, n), tokens(p.k, t0, n),
                               tokens(p.v, t0, n)};
  };
  Tensor<float, 4> kv({1, kHeads, Kf, kDim}), ring_k({1, W, kHeads, kDim}), ring_v({1, W, kHeads, kDim});
  Tensor<float, 3> z({1, kHeads, Kf});
  // The state struct is views plus the position; the calls advance `position` in place.
  seqmix::BasedState state;
  state.kv = kv.view(), state.normalizer = z.view(), state.window_k = ring_k.view(), state.window_v = ring_v.view();
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row, [&] { seqmix::based(inputs(0, p.T), {o.view().slice(1, 0, p.T)}, options, &state, p.executor); },
      [&](index_t t) {
        seqmix::based_step({token(qf, t), token(kf, t), token(p.q, t), token(p.k, t), token(p.v, t)},
                           {o.view().select(1, t)}, state, options, p.executor);
      });
  seqmix::based(inputs(0, p.N), {full.view()}, options, nullptr, p.executor);
  compare(row, o, full);
  row.state_bytes = bytes_of(kv, z, ring_k, ring_v);
  return row;
}

Row rat(const Problem& p) {
  constexpr index_t L = kRatChunk;
  Row row{"RAT", text("chunk K/V summaries [T/%td,H,D] + running k, v [H,D]", L), "O(T/L)"};
  Tensor<float, 4> g = random_tensor<4>({1, p.N, kHeads, kDim}, 50, normal());
  apply(g, [](float x) { return logsigmoid(x + 2.f); });  // forget gates around 0.88
  seqmix::RatOptions options;
  options.chunk_size = L;
  auto inputs = [&](index_t t0, index_t n) {
    return seqmix::RatInputs{tokens(p.q, t0, n), tokens(p.k, t0, n), tokens(p.v, t0, n), tokens(g, t0, n)};
  };
  // The summary cache must hold every chunk the whole run finishes: capacity N / L.
  const index_t capacity = p.N / L + 1;
  Tensor<float, 4> chunk_k({1, capacity, kHeads, kDim}), chunk_v({1, capacity, kHeads, kDim});
  Tensor<float, 3> k_run({1, kHeads, kDim}), v_run({1, kHeads, kDim});
  seqmix::RatState state{chunk_k.view(), chunk_v.view(), k_run.view(), v_run.view(), 0};
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row, [&] { seqmix::rat(inputs(0, p.T), {o.view().slice(1, 0, p.T)}, options, &state, p.executor); },
      [&](index_t t) {
        seqmix::rat_step({token(p.q, t), token(p.k, t), token(p.v, t), token(g, t)}, {o.view().select(1, t)}, state,
                         options, p.executor);
      });
  seqmix::rat(inputs(0, p.N), {full.view()}, options, nullptr, p.executor);
  compare(row, o, full);
  // What a sequence of T tokens holds: the T / L finished summaries, not the spare capacity.
  const index_t used = p.T / L;
  row.state_bytes = bytes_of(chunk_k.cview().slice(1, 0, used), chunk_v.cview().slice(1, 0, used), k_run, v_run);
  return row;
}

Row infini_attention(const Problem& p) {
  constexpr index_t S = kInfiniSegment;
  Row row{"Infini-attention (delta)", text("M [H,K,V] + z [H,K] + segment K/V [S=%td,H,D]", S), "const"};
  const Tensor<float, 1> beta = random_tensor<1>({kHeads}, 60, uniform(-2.f, 2.f));
  seqmix::InfiniAttentionOptions options;
  options.segment = S;
  options.update = seqmix::InfiniMemoryUpdate::delta;
  auto inputs = [&](index_t t0, index_t n) {
    return seqmix::InfiniAttentionInputs{tokens(p.q, t0, n), tokens(p.k, t0, n), tokens(p.v, t0, n), beta.cview()};
  };
  Tensor<float, 4> memory({1, kHeads, kDim, kDim}), seg_k({1, S, kHeads, kDim}), seg_v({1, S, kHeads, kDim});
  Tensor<float, 3> z({1, kHeads, kDim});
  seqmix::InfiniAttentionState state{memory.view(), z.view(), seg_k.view(), seg_v.view(), 0};
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row,
      [&] { seqmix::infini_attention(inputs(0, p.T), {o.view().slice(1, 0, p.T)}, options, &state, p.executor); },
      [&](index_t t) {
        seqmix::infini_attention_step({token(p.q, t), token(p.k, t), token(p.v, t), beta.cview()},
                                      {o.view().select(1, t)}, state, options, p.executor);
      });
  seqmix::infini_attention(inputs(0, p.N), {full.view()}, options, nullptr, p.executor);
  compare(row, o, full);
  // The segment buffer is counted whole: a decoder must keep room for a full segment.
  row.state_bytes = bytes_of(memory, z, seg_k, seg_v);
  // A step attends over the open segment, so its cost depends on where T falls in a segment.
  row.note = text("Infini-attention decode: the steps attend over %td..%td buffered segment tokens (T %% S = %td); "
                  "the cost rises towards S = %td",
                  p.T % S + 1, (p.N - 1) % S + 1, p.T % S, S);
  return row;
}

Row mega(const Problem& p) {
  constexpr index_t c = kMegaChunk, Nx = kMegaExpansion;
  Row row{"Mega (EMA + chunk attn)", text("EMA [H*D,%td] + chunk K/V [c=%td,H,D]", Nx, c), "const"};
  // The EMA runs over the token's kWidth channels; q rows stand in for them (the model's x W).
  const seqmix::ConstView<float, 3> x = p.q.cview().reshape(std::array<index_t, 3>{1, p.N, kWidth});
  const Tensor<float, 2> alpha = random_tensor<2>({kWidth, Nx}, 70, normal());
  const Tensor<float, 2> delta = random_tensor<2>({kWidth, Nx}, 71, normal());
  const Tensor<float, 2> beta = random_tensor<2>({kWidth, Nx}, 72, normal(0.5f));
  const Tensor<float, 2> eta = random_tensor<2>({kWidth, Nx}, 73, normal(0.5f));
  const Tensor<float, 1> q_scale = random_tensor<1>({kWidth}, 74, uniform(0.5f, 1.5f));
  const Tensor<float, 1> k_scale = random_tensor<1>({kWidth}, 75, uniform(0.5f, 1.5f));
  const Tensor<float, 1> q_bias = random_tensor<1>({kWidth}, 76, normal(0.1f));
  const Tensor<float, 1> k_bias = random_tensor<1>({kWidth}, 77, normal(0.1f));
  const seqmix::MegaParams params{alpha.cview(), delta.cview(), beta.cview(),   eta.cview(),
                                  q_scale.cview(), q_bias.cview(), k_scale.cview(), k_bias.cview()};
  seqmix::MegaOptions options;
  options.chunk_size = c;
  Tensor<float, 3> ema({1, kWidth, Nx});
  Tensor<float, 4> k_cache({1, c, kHeads, kDim}), v_cache({1, c, kHeads, kDim});
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row,
      [&] {
        // The prefill hands over the EMA state and the K/V of its last, partial chunk.
        seqmix::mega({x.slice(1, 0, p.T), tokens(p.v, 0, p.T), params, {}},
                     {o.view().slice(1, 0, p.T), {}, ema.view(), k_cache.view(), v_cache.view()}, options, p.executor);
      },
      [&](index_t t) {
        seqmix::mega_step({x.select(1, t), token(p.v, t), params, t}, o.view().select(1, t),
                          {ema.view(), k_cache.view(), v_cache.view()}, options, p.executor);
      });
  seqmix::mega({x, p.v.cview(), params, {}}, {full.view(), {}, {}, {}, {}}, options, p.executor);
  compare(row, o, full);
  row.state_bytes = bytes_of(ema, k_cache, v_cache);
  row.note = text("Mega decode: the steps attend within their chunk of c = %td (T %% c = %td)",
                  c, p.T % c);
  return row;
}

Row aaren(const Problem& p) {
  Row row{"Aaren (attention as scan)", "m, l [H] + acc [H,V]", "const"};
  const Tensor<float, 2> query = random_tensor<2>({kHeads, kDim}, 80, normal());  // the learned query
  Tensor<float, 2> m({1, kHeads}), l({1, kHeads});
  Tensor<float, 3> acc({1, kHeads, kDim});
  const seqmix::AarenState state{m.view(), l.view(), acc.view()};
  Tensor<float, 4> o = p.output(), full = p.output();
  time_mixer(
      p, row,
      [&] {
        seqmix::aaren({query.cview(), tokens(p.k, 0, p.T), tokens(p.v, 0, p.T), {}, {}},
                      {o.view().slice(1, 0, p.T), state, {}}, {}, p.executor);
      },
      [&](index_t t) {
        seqmix::aaren_step({query.cview(), token(p.k, t), token(p.v, t), {}}, o.view().select(1, t), state, {}, p.executor);
      });
  seqmix::aaren({query.cview(), p.k.cview(), p.v.cview(), {}, {}}, {full.view(), {}, {}}, {}, p.executor);
  compare(row, o, full);
  row.state_bytes = bytes_of(m, l, acc);
  return row;
}

Row mingru_newton(const Problem& p) {
  using Cell = seqmix::MinGruCell;
  Row row{"minGRU (parallel Newton)", text("h [%td] (one per channel)", kWidth), "const"};
  // Inputs and recurrent weights in [-1, 1]: nonlinear but contractive, as trained cells are.
  const Tensor<float, 3> x = random_tensor<3>({1, p.N, kWidth}, 90, uniform(-1.f, 1.f));
  const Tensor<float, 3> u = random_tensor<3>({1, p.N, kWidth}, 91, uniform(-1.f, 1.f));
  const Tensor<float, 1> a = random_tensor<1>({kWidth}, 92, uniform(-1.f, 1.f));
  const Tensor<float, 1> w = random_tensor<1>({kWidth}, 93, uniform(-1.f, 1.f));
  auto inputs = [&](index_t t0, index_t n) {
    seqmix::NonlinearRecurrenceInputs<Cell> in;
    in.inputs = {tokens(x, t0, n), tokens(u, t0, n)};
    in.params = {a.cview(), w.cview()};
    return in;
  };
  Tensor<float, 3> h({1, p.N, kWidth}), full({1, p.N, kWidth});
  Tensor<float, 2> state({1, kWidth});  // h_last of the prefill, then advanced by each step
  seqmix::NewtonReport report;
  time_mixer(
      p, row,
      [&] {
        report = seqmix::nonlinear_recurrence_newton<Cell>(inputs(0, p.T), {h.view().slice(1, 0, p.T), state.view()}, {},
                                                           p.executor);
      },
      [&](index_t t) {
        seqmix::NonlinearRecurrenceStepInputs<Cell> in;
        in.inputs = {token(x, t), token(u, t)};
        in.params = {a.cview(), w.cview()};
        seqmix::nonlinear_recurrence_step<Cell>(in, state.view(), p.executor);
        std::copy(state.begin(), state.end(), h.view().ptr(0, t));  // the step's output is the new state
      });
  seqmix::nonlinear_recurrence_newton<Cell>(inputs(0, p.N), {full.view(), {}}, {}, p.executor);
  compare(row, h, full);
  row.state_bytes = bytes_of(state);
  // The honest baseline for an elementwise cell: the vectorized sequential loop.
  Tensor<float, 3> h_seq({1, p.T, kWidth});
  const auto start = Clock::now();
  seqmix::nonlinear_recurrence<Cell>(inputs(0, p.T), {h_seq.view(), {}}, p.executor);
  const double seq_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  row.note = text("minGRU prefill: Newton %s after %td iterations (residual %.1e) in %.2f ms; the sequential loop "
                  "takes %.2f ms",
                  report.converged ? "converged" : "did NOT converge", report.iterations, report.residual,
                  row.prefill_ms, seq_ms);
  if (!report.converged) row.note += " (" + report.message + ")";
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  const index_t T = argc > 1 ? std::atol(argv[1]) : 4096;
  if (T < 1) {
    std::fprintf(stderr, "usage: %s [T >= 1]\n", argv[0]);
    return 2;
  }
  seqmix::ThreadPool pool(2);
  const Problem problem(T, pool);
  std::printf("hybrid mixers: B=1, T=%td prefill + %td decode steps, H=%td heads of D=%td, 2 threads, simd %s\n\n", T,
              kSteps, kHeads, kDim, seqmix::simd::arch_name());

  const std::vector<Row> rows = {dense_attention(problem), gla(problem),   mamba2_ssd(problem),
                                 gated_deltanet(problem),  based(problem), rat(problem),
                                 infini_attention(problem), mega(problem), aaren(problem),
                                 mingru_newton(problem)};

  std::printf("| mixer | carries (per sequence) | grows | state after prefill | prefill ms | prefill us/token | "
              "decode us/token | prefill+steps vs one call |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---:|\n");
  bool ok = true;
  for (const Row& r : rows) {
    const bool close = r.max_diff <= kTolerance * r.out_scale;
    ok = ok && close;
    std::printf("| %s | %s | %s | %s | %.1f | %.2f | %.1f | %.1e%s |\n", r.name.c_str(), r.carries.c_str(),
                r.growth.c_str(), human_bytes(r.state_bytes).c_str(), r.prefill_ms, 1000.0 * r.prefill_ms / T,
                r.step_us, r.max_diff, close ? "" : " MISMATCH");
  }
  std::printf("\n(last column: max |o_prefill+steps - o_one_call| over all %td tokens; outputs are O(1))\n", T + kSteps);
  for (const Row& r : rows)
    if (!r.note.empty()) std::printf("%s\n", r.note.c_str());
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
