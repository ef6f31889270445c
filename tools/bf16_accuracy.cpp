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
//   seqmix-bf16-accuracy [T ...]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/bf16_gemm.hpp"

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
  return ok ? 0 : 1;
}
