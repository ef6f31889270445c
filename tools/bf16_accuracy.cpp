// seqmix-bf16-accuracy: the error of attention's bf16 dot-product prefill
// (AttentionOptions::bf16_compute = dot) against its fp32 form on the same bf16 K/V, over long
// sequences (issue 19 item 3; the bound is in docs/operators.md section 5).
//
// For each length T (default 1024, 8192 and 65536 tokens) it runs the last Tq = 256 queries of a
// causal sequence of T tokens (a prefill chunk after a long prefix: every query attends to up to
// T keys) at 4 query heads on 1 KV head of 128 features, random normal q / k / v, in both forms,
// and prints:
//   max_err/max|v|   the largest |o_dot - o_fp32| over the largest |v|
//   rms_rel          the RMS of o_dot - o_fp32 over the RMS of o_fp32
//   max_lse_err      the largest |lse_dot - lse_fp32|
//   bound/max|v|     the largest per-row bound exp(2 Delta) - 1 + 2^-8 (Delta: the row's largest
//                    logit change from rounding q to bf16, measured here in double)
// Exit status 1 if a row passes its bound. Where the target has no AVX512-BF16 both forms are the
// same computation and every error is 0.
//
// A second table does the same for the chunked linear-attention forms with bf16_compute = dot
// (docs/operators.md section 4): GLA (channel gate), simple GLA (scalar gate), Gated DeltaNet
// (scalar gate, l2-normalized q/k), KDA (channel gate), ungated linear attention and DeltaNet
// (no decay: the worst case for rounding errors accumulating in the state), one sequence of T tokens, 2 heads of
// K = V = 128, uniform q / k / v in [-1, 1], log-gates in [-0.1, 0] (weak decays: the state
// remembers ~20 tokens and more, so rounding errors accumulate in it), beta in [0, 1]. It prints the normwise relative error of all outputs
// (o_rel) and of the final state (state_rel) against the fp32 chunked form, and the worst per-head
// value of both against the documented bound 2^-6. Its last five rows (GLA, simple GLA, Gated
// DeltaNet and DeltaNet with q/k/v stored as bf16) compare bf16 storage plus dot products (and,
// for Gated DeltaNet, bf16 storage alone with fp32 products) with fp32 inputs and products; the
// two after them rwkv6 (r/k/v) and rwkv7 (r/k/v/a/b, a = -kappa and b = kappa * beta with kappa
// the unit-norm k, RWKV-7's parameterization) stored as bf16 against fp32 inputs, both with fp32
// products (their prefills have no dot-product form). The last three rows compare bf16 storage
// alone (fp32 products: these ops have no dot form) with fp32 inputs: linear_attention with the
// identity map (no decay, no normalizer), with elu1 and the normalizer, and Mamba-2 SSD (x, Bm,
// Cm as bf16 from v, k, q; one group per head, P = N = 128, dt in [0.001, 0.1], A = -1, D and z
// absent).
//
//   seqmix-bf16-accuracy [T ...]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"

namespace {

using seqmix::bf16;
using seqmix::index_t;
using seqmix::Tensor;

constexpr index_t kQueries = 256, kHq = 4, kHkv = 1, kD = 128;

struct Errors {
  double max_err = 0, vmax = 0, sq_err = 0, sq_ref = 0, max_lse = 0, max_bound = 0;
  bool within = true;
};

Errors run(index_t T, const seqmix::Executor& executor) {
  Tensor<float, 4> q({1, kQueries, kHq, kD}), o_ref({1, kQueries, kHq, kD}), o_dot({1, kQueries, kHq, kD});
  Tensor<float, 3> lse_ref({1, kQueries, kHq}), lse_dot({1, kQueries, kHq});
  Tensor<bf16, 4> k({1, T, kHkv, kD}), v({1, T, kHkv, kD});
  std::mt19937_64 engine(static_cast<std::uint64_t>(T));
  std::normal_distribution<float> normal;
  for (index_t i = 0; i < q.numel(); ++i) q.data()[i] = normal(engine);
  for (index_t i = 0; i < k.numel(); ++i) k.data()[i] = bf16(normal(engine)), v.data()[i] = bf16(normal(engine));
  seqmix::AttentionInputs<bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  seqmix::AttentionOptions options;
  options.causal = true;
  seqmix::attention(in, {o_ref.view(), lse_ref.view()}, options, executor);
  options.bf16_compute = seqmix::Bf16Compute::dot;
  seqmix::attention(in, {o_dot.view(), lse_dot.view()}, options, executor);

  Errors e;
  for (index_t i = 0; i < v.numel(); ++i) e.vmax = std::max(e.vmax, std::abs(double{v.data()[i].to_float()}));
  const float scale = seqmix::detail::attention_scale(options, kD);
  // The keys and their magnitudes as fp32 rows (bf16 values are exact in fp32), for simd::dot.
  std::vector<float> keys(static_cast<std::size_t>(T * kHkv * kD)), magnitudes(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = k.data()[i].to_float(), magnitudes[i] = std::abs(keys[i]);
  std::vector<float> dq(kD), aq(kD);
  for (index_t i = 0; i < kQueries; ++i)
    for (index_t h = 0; h < kHq; ++h) {
      for (index_t c = 0; c < kD; ++c) {
        const float scaled = scale * q(0, i, h, c);
        dq[c] = bf16(scaled).to_float() - scaled;  // exact: both are floats within 2^-8 of each other
        aq[c] = std::abs(scaled);
      }
      double delta = 0, size = 0;
      for (index_t j = 0; j <= T - kQueries + i; ++j) {  // the keys query i sees
        const std::size_t row = static_cast<std::size_t>((j * kHkv + h / (kHq / kHkv)) * kD);
        delta = std::max(delta, std::abs(static_cast<double>(seqmix::simd::dot(dq.data(), keys.data() + row, kD))));
        size = std::max(size, static_cast<double>(seqmix::simd::dot(aq.data(), magnitudes.data() + row, kD)));
      }
      delta += 2e-6 * size;  // the fp32 sums' order, here and in the kernels
      const double bound = std::expm1(2 * delta) + std::ldexp(1.0, -8);
      e.max_bound = std::max(e.max_bound, bound);
      for (index_t c = 0; c < kD; ++c) {
        const double err = std::abs(static_cast<double>(o_dot(0, i, h, c)) - o_ref(0, i, h, c));
        e.max_err = std::max(e.max_err, err);
        e.sq_err += err * err, e.sq_ref += static_cast<double>(o_ref(0, i, h, c)) * o_ref(0, i, h, c);
        if (err > bound * e.vmax + 1e-6) e.within = false;
      }
      const double lse_err = std::abs(static_cast<double>(lse_dot(0, i, h)) - lse_ref(0, i, h));
      e.max_lse = std::max(e.max_lse, lse_err);
      if (lse_err > delta + 1e-6 * (1 + std::abs(lse_ref(0, i, h)))) e.within = false;
    }
  return e;
}

// ---- chunked linear attention --------------------------------------------------------------

using ConstView4 = seqmix::ConstView<float, 4>;

constexpr index_t kLaHeads = 2, kLaK = 128;

struct LaErrors {
  double sq_o = 0, ref_o = 0, sq_s = 0, ref_s = 0, worst_head = 0;
};

// Accumulates ||a - b||^2 and ||b||^2 per head (head dimension hd of a rank-4 tensor, n the
// other inner extent) and overall.
void la_accumulate(const Tensor<float, 4>& a, const Tensor<float, 4>& b, int hd, double& sq, double& ref,
                   double& worst) {
  for (index_t h = 0; h < b.size(hd); ++h) {
    double d2 = 0, r2 = 0;
    const index_t X = b.size(hd == 2 ? 1 : 2);
    for (index_t x = 0; x < X; ++x)
      for (index_t c = 0; c < b.size(3); ++c) {
        const double va = hd == 2 ? a(0, x, h, c) : a(0, h, x, c), vb = hd == 2 ? b(0, x, h, c) : b(0, h, x, c);
        d2 += (va - vb) * (va - vb), r2 += vb * vb;
      }
    sq += d2, ref += r2;
    worst = std::max(worst, std::sqrt(d2 / r2));
  }
}

// Ops 8-10 of run_linear: Gated DeltaNet (8, 9) or DeltaNet (10), l2-normalized q/k, chunked; q/k/v
// stored as bf16 when `half` (the second run), fp32 otherwise.
void run_delta_bf16_storage(int op, bool half, seqmix::Bf16Compute compute, const Tensor<float, 4>& q,
                            const Tensor<float, 4>& k, const Tensor<float, 4>& v, const Tensor<float, 3>& gs,
                            const Tensor<float, 3>& beta, Tensor<float, 4>& out, Tensor<float, 4>& state,
                            const seqmix::Executor& executor) {
  seqmix::GatedDeltaRuleOptions options;
  options.algorithm = seqmix::DeltaAlgorithm::chunked, options.bf16_compute = compute;
  options.qk_norm = seqmix::QkNorm::l2;
  seqmix::DeltaRuleOptions plain;
  plain.algorithm = options.algorithm, plain.bf16_compute = compute, plain.qk_norm = options.qk_norm;
  const seqmix::ConstView<float, 3> gate = op == 10 ? seqmix::ConstView<float, 3>{} : gs.cview();
  if (!half) {
    if (op == 10) return seqmix::delta_rule({q.cview(), k.cview(), v.cview(), beta.cview()}, {out.view(), state.view()}, plain, executor);
    return seqmix::gated_delta_rule({q.cview(), k.cview(), v.cview(), beta.cview(), gate}, {out.view(), state.view()}, options,
                                    executor);
  }
  Tensor<bf16, 4> q16(q.shape()), k16(k.shape()), v16(v.shape());
  seqmix::convert(q.data(), q16.data(), q.numel()), seqmix::convert(k.data(), k16.data(), k.numel());
  seqmix::convert(v.data(), v16.data(), v.numel());
  if (op == 10) {
    const seqmix::DeltaRuleInputsOf<bf16> in{q16.cview(), k16.cview(), v16.cview(), beta.cview()};
    return seqmix::delta_rule(in, {out.view(), state.view()}, plain, executor);
  }
  const seqmix::GatedDeltaRuleInputsOf<bf16> in{q16.cview(), k16.cview(), v16.cview(), beta.cview(), gate};
  seqmix::gated_delta_rule(in, {out.view(), state.view()}, options, executor);
}

// rwkv6 (op 11) or rwkv7 (op 12) on fp32 r/k/v (half false) or the same values stored as bf16
// (half true); r is q, rwkv6's bonus u a fixed pattern in [-0.5, 0.5], rwkv7's a / b follow from k
// and beta (see the header).
void run_rwkv_bf16_storage(int op, bool half, const Tensor<float, 4>& q, const Tensor<float, 4>& k,
                           const Tensor<float, 4>& v, const Tensor<float, 4>& g, const Tensor<float, 3>& beta,
                           Tensor<float, 4>& out, Tensor<float, 4>& state, const seqmix::Executor& executor) {
  const auto to_bf16 = [](const Tensor<float, 4>& x) {
    Tensor<bf16, 4> y(x.shape());
    seqmix::convert(x.data(), y.data(), x.numel());
    return y;
  };
  const index_t H = k.size(2), K = k.size(3);
  if (op == 11) {
    Tensor<float, 2> u({H, K});
    for (index_t i = 0; i < u.numel(); ++i) u.data()[i] = 0.5f * std::sin(static_cast<float>(i));
    seqmix::Rwkv6Options options;
    options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
    if (!half) return seqmix::rwkv6({q.cview(), k.cview(), v.cview(), g.cview(), u.cview()}, {out.view(), state.view()},
                                    options, executor);
    const Tensor<bf16, 4> r16 = to_bf16(q), k16 = to_bf16(k), v16 = to_bf16(v);
    const seqmix::Rwkv6InputsOf<bf16> in{r16.cview(), k16.cview(), v16.cview(), g.cview(), u.cview()};
    return seqmix::rwkv6(in, {out.view(), state.view()}, options, executor);
  }
  Tensor<float, 4> a(k.shape()), b(k.shape());
  for (index_t row = 0; row < k.numel() / K; ++row) {
    const float* x = k.data() + row * K;
    double norm = 0;
    for (index_t i = 0; i < K; ++i) norm += double(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(std::max(norm, 1e-24)));
    for (index_t i = 0; i < K; ++i)
      a.data()[row * K + i] = -x[i] * inv, b.data()[row * K + i] = x[i] * inv * beta.data()[row];
  }
  if (!half)
    return seqmix::rwkv7({q.cview(), k.cview(), v.cview(), a.cview(), b.cview(), g.cview()}, {out.view(), state.view()},
                         executor);
  const Tensor<bf16, 4> r16 = to_bf16(q), k16 = to_bf16(k), v16 = to_bf16(v), a16 = to_bf16(a), b16 = to_bf16(b);
  const seqmix::Rwkv7InputsOf<bf16> in{r16.cview(), k16.cview(), v16.cview(), a16.cview(), b16.cview(), g.cview()};
  seqmix::rwkv7(in, {out.view(), state.view()}, executor);
}

// Ops 13-15 of run_linear: linear_attention (13: identity map, 14: elu1 normalized) on q/k/v, or
// SSD (15) with x = v, Bm = k, Cm = q (one group per head); chunked, fp32 products; the inputs
// stored as bf16 when `half` (the second run), fp32 otherwise.
void run_half_storage(int op, bool half, const Tensor<float, 4>& q, const Tensor<float, 4>& k,
                      const Tensor<float, 4>& v, Tensor<float, 4>& out, Tensor<float, 4>& state,
                      const seqmix::Executor& executor) {
  Tensor<bf16, 4> q16, k16, v16;
  if (half) {
    q16 = Tensor<bf16, 4>(q.shape()), k16 = Tensor<bf16, 4>(k.shape()), v16 = Tensor<bf16, 4>(v.shape());
    seqmix::convert(q.data(), q16.data(), q.numel()), seqmix::convert(k.data(), k16.data(), k.numel());
    seqmix::convert(v.data(), v16.data(), v.numel());
  }
  if (op == 15) {
    const index_t T = q.size(1), H = q.size(2);
    Tensor<float, 3> dt({1, T, H});
    Tensor<float, 1> A({H});
    std::mt19937_64 engine(static_cast<std::uint64_t>(T));
    std::uniform_real_distribution<float> step(0.001f, 0.1f);
    for (index_t i = 0; i < dt.numel(); ++i) dt.data()[i] = step(engine);
    for (index_t h = 0; h < H; ++h) A(h) = -1.f;
    seqmix::SsdOptions options;
    options.algorithm = seqmix::SsdAlgorithm::chunked;
    if (!half) {
      seqmix::SsdInputs in;
      in.x = v.cview(), in.Bm = k.cview(), in.Cm = q.cview(), in.dt = dt.cview(), in.A = A.cview();
      return seqmix::ssd(in, {out.view(), state.view()}, options, executor);
    }
    seqmix::SsdInputsOf<bf16> in;
    in.x = v16.cview(), in.Bm = k16.cview(), in.Cm = q16.cview(), in.dt = dt.cview(), in.A = A.cview();
    return seqmix::ssd(in, {out.view(), state.view()}, options, executor);
  }
  seqmix::LinearAttentionOptions options;
  options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
  if (op == 14) options.feature_map = seqmix::FeatureMap::elu1, options.normalize = true;
  if (!half) return seqmix::linear_attention({q.cview(), k.cview(), v.cview()}, {out.view(), state.view()}, options, executor);
  seqmix::LinearAttentionInputsOf<bf16> in;
  in.q = q16.cview(), in.k = k16.cview(), in.v = v16.cview();
  seqmix::linear_attention(in, {out.view(), state.view()}, options, executor);
}

// op 0: GLA channel, 1: simple GLA, 2: Gated DeltaNet, 3: KDA, 4: ungated linear attention
// (nothing decays: every token's rounding stays in the state), 5: DeltaNet (delta_rule), 6 / 7:
// GLA channel / simple GLA with q/k/v stored as bf16 (GatedLinearAttentionInputsOf<bf16>) and dot
// products, against fp32 inputs and products: the storage's and the products' roundings together;
// 8: Gated DeltaNet with q/k/v stored as bf16 (GatedDeltaRuleInputsOf<bf16>) and fp32 products (the
// storage's rounding alone), 9: the same with dot products, 10: DeltaNet with q/k/v stored as bf16
// and dot products, 11 / 12: rwkv6 / rwkv7 with bf16 storage and fp32 products, 13-15:
// run_half_storage (linear_attention identity / elu1 normalized, SSD).
LaErrors run_linear(int op, index_t T, const seqmix::Executor& executor) {
  const index_t H = kLaHeads, K = kLaK;
  Tensor<float, 4> q({1, T, H, K}), k({1, T, H, K}), v({1, T, H, K}), g({1, T, H, K});
  Tensor<float, 3> gs({1, T, H}), beta({1, T, H});
  Tensor<float, 4> o({1, T, H, K}), o_dot({1, T, H, K}), s({1, H, K, K}), s_dot({1, H, K, K});
  std::mt19937_64 engine(static_cast<std::uint64_t>(T * 4 + op));
  std::uniform_real_distribution<float> unit(-1.f, 1.f), gate(-0.1f, 0.f), half(0.f, 1.f);
  for (index_t i = 0; i < q.numel(); ++i)
    q.data()[i] = unit(engine), k.data()[i] = unit(engine), v.data()[i] = unit(engine), g.data()[i] = gate(engine);
  for (index_t i = 0; i < gs.numel(); ++i) gs.data()[i] = gate(engine), beta.data()[i] = half(engine);
  for (int dot = 0; dot < 2; ++dot) {
    const seqmix::Bf16Compute compute = dot && op != 8 ? seqmix::Bf16Compute::dot : seqmix::Bf16Compute::fp32;
    Tensor<float, 4>& out = dot ? o_dot : o;
    Tensor<float, 4>& state = dot ? s_dot : s;
    if (op >= 13) {
      run_half_storage(op, dot != 0, q, k, v, out, state, executor);
    } else if (op >= 11) {
      run_rwkv_bf16_storage(op, dot != 0, q, k, v, g, beta, out, state, executor);
    } else if (op >= 8) {
      run_delta_bf16_storage(op, dot != 0, compute, q, k, v, gs, beta, out, state, executor);
    } else if (op >= 6) {
      seqmix::GatedLinearAttentionOptions options;
      options.algorithm = seqmix::LinearAttentionAlgorithm::chunked, options.bf16_compute = compute;
      options.gate = op == 6 ? seqmix::GateKind::channel : seqmix::GateKind::scalar;
      const ConstView4 gc = op == 6 ? g.cview() : ConstView4{};
      const seqmix::ConstView<float, 3> gsc = op == 7 ? gs.cview() : seqmix::ConstView<float, 3>{};
      if (dot) {
        Tensor<seqmix::bf16, 4> q16({1, T, H, K}), k16({1, T, H, K}), v16({1, T, H, K});
        seqmix::convert(q.data(), q16.data(), q.numel()), seqmix::convert(k.data(), k16.data(), k.numel());
        seqmix::convert(v.data(), v16.data(), v.numel());
        seqmix::GatedLinearAttentionInputsOf<seqmix::bf16> in;
        in.q = q16.cview(), in.k = k16.cview(), in.v = v16.cview(), in.g = gc, in.g_scalar = gsc;
        seqmix::gated_linear_attention(in, {out.view(), state.view()}, options, executor);
      } else {
        seqmix::GatedLinearAttentionInputs in;
        in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.g = gc, in.g_scalar = gsc;
        seqmix::gated_linear_attention(in, {out.view(), state.view()}, options, executor);
      }
    } else if (op < 2 || op == 4) {
      seqmix::GatedLinearAttentionInputs in;
      in.q = q.view(), in.k = k.view(), in.v = v.view();
      seqmix::GatedLinearAttentionOptions options;
      options.algorithm = seqmix::LinearAttentionAlgorithm::chunked, options.bf16_compute = compute;
      options.gate = op == 0 ? seqmix::GateKind::channel : op == 1 ? seqmix::GateKind::scalar : seqmix::GateKind::none;
      if (op == 0) in.g = g.view();
      if (op == 1) in.g_scalar = gs.view();
      seqmix::gated_linear_attention(in, {out.view(), state.view()}, options, executor);
    } else {
      seqmix::GatedDeltaRuleInputs in;
      in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view();
      seqmix::GatedDeltaRuleOptions options;
      options.algorithm = seqmix::DeltaAlgorithm::chunked, options.bf16_compute = compute;
      options.qk_norm = seqmix::QkNorm::l2;
      options.gate = op == 2 ? seqmix::DeltaGate::scalar : seqmix::DeltaGate::channel;
      if (op == 2) in.g_scalar = gs.view();
      if (op == 3) in.g = g.view();
      if (op == 5) {
        seqmix::DeltaRuleOptions plain;
        plain.algorithm = options.algorithm, plain.bf16_compute = compute, plain.qk_norm = options.qk_norm;
        seqmix::delta_rule({in.q, in.k, in.v, in.beta}, {out.view(), state.view()}, plain, executor);
      } else {
        seqmix::gated_delta_rule(in, {out.view(), state.view()}, options, executor);
      }
    }
  }
  LaErrors e;
  la_accumulate(o_dot, o, 2, e.sq_o, e.ref_o, e.worst_head);
  la_accumulate(s_dot, s, 1, e.sq_s, e.ref_s, e.worst_head);
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<index_t> lengths;
  for (int a = 1; a < argc; ++a) lengths.push_back(std::max<index_t>(kQueries, std::atol(argv[a])));
  if (lengths.empty()) lengths = {1024, 8192, 65536};
  const seqmix::ThreadPool pool(2);
  std::printf("bf16 dot products %s; %ld queries at the end of T causal tokens, Hq=%ld Hkv=%ld D=%ld\n",
              seqmix::detail::kNativeBf16Dot ? "on (AVX512-BF16)" : "off (no AVX512-BF16: both forms fp32)",
              static_cast<long>(kQueries), static_cast<long>(kHq), static_cast<long>(kHkv), static_cast<long>(kD));
  std::printf("%8s %16s %10s %12s %14s %s\n", "T", "max_err/max|v|", "rms_rel", "max_lse_err", "bound/max|v|", "");
  bool ok = true;
  for (const index_t T : lengths) {
    const Errors e = run(T, pool);
    std::printf("%8ld %16.3e %10.3e %12.3e %14.3e %s\n", static_cast<long>(T), e.max_err / e.vmax,
                std::sqrt(e.sq_err / e.sq_ref), e.max_lse, e.max_bound, e.within ? "within" : "OUTSIDE THE BOUND");
    ok = ok && e.within;
  }
  const double la_bound = 1.0 / 64;
  std::printf("\nchunked linear attention, bf16_compute = dot vs fp32 chunked: 1 sequence, %ld heads, K = V = %ld\n",
              static_cast<long>(kLaHeads), static_cast<long>(kLaK));
  std::printf("%8s %-22s %10s %10s %12s %s\n", "T", "op", "o_rel", "state_rel", "worst_head", "");
  const char* names[] = {"gla (channel)", "simple_gla", "gated_delta_rule", "kda (channel)", "ungated_linear_attn",
                         "delta_rule", "gla bf16 q/k/v", "simple_gla bf16 q/k/v", "gdr bf16 q/k/v fp32",
                         "gdr bf16 q/k/v", "delta_rule bf16 q/k/v", "rwkv6 bf16 r/k/v fp32",
                         "rwkv7 bf16 rkvab fp32", "linear_attn bf16 q/k/v", "la elu1 bf16 q/k/v",
                         "ssd bf16 x/B/C"};
  for (const index_t T : lengths)
    for (int op = 0; op < 16; ++op) {
      const LaErrors e = run_linear(op, T, pool);
      const bool within = e.worst_head <= la_bound;
      std::printf("%8ld %-22s %10.3e %10.3e %12.3e %s\n", static_cast<long>(T), names[op], std::sqrt(e.sq_o / e.ref_o),
                  std::sqrt(e.sq_s / e.ref_s), e.worst_head, within ? "within 2^-6" : "OUTSIDE THE BOUND");
      ok = ok && within;
    }
  return ok ? 0 : 1;
}
