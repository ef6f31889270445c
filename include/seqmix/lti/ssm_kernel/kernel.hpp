// ssm_kernel, fast generation: the Vandermonde sum kernel[l,h] = c Re(sum_n W[h,n] z[h,n]^l)
// (W = C B_bar, z = A_bar), vectorized over channels, threaded over channel blocks.
//
// Powers are advanced by one complex multiply per step in float, 4 states at a time so four
// independent multiply chains hide the FMA latency. The float chain's error grows with the steps
// taken, so every kSsmKernelBlock steps the powers restart from an anchor z^l0 kept in double
// (advanced by a double multiply by z^kSsmKernelBlock): the error stays that of 256 float steps,
// about 1e-5 relative, whatever L.
#pragma once

#include <algorithm>
#include <complex>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"

namespace seqmix {
namespace detail {

// Steps per anchor: the kernel rows of a block, [256][kWidth] floats, stay in L1 (16 KiB with
// AVX-512) while every state adds its terms to them.
constexpr index_t kSsmKernelBlock = 256;
// States advanced together (independent multiply chains).
constexpr index_t kSsmKernelStates = 4;

using SsmBatch = simd::Batch<float>;

// One block of up to kWidth channels [h0, h0 + lanes), all L rows.
inline void ssm_kernel_channels(const SsmParams& params, const SsmKernelOptions& options,
                                const TensorView<float, 2>& kernel, index_t h0, index_t lanes) {
  constexpr index_t W = simd::kWidth;
  const index_t N = params.A_real.size(1), L = kernel.size(0);
  const index_t padded = (N + kSsmKernelStates - 1) / kSsmKernelStates * kSsmKernelStates;
  const auto at = [](index_t n, index_t lane) { return static_cast<std::size_t>(n * W + lane); };
  // [state][lane]: W = C B_bar and z = A_bar in float; the anchors z^l0 and z^block in double.
  // Padding states and lanes have W = 0: they add nothing.
  AlignedVector<float> wr(at(padded, 0), 0.f), wi(at(padded, 0), 0.f), zr(at(padded, 0), 0.f), zi(at(padded, 0), 0.f);
  std::vector<SsmComplex> anchor(at(padded, 0), SsmComplex(1.0)), jump(at(padded, 0), SsmComplex(0.0));
  for (index_t n = 0; n < N; ++n)
    for (index_t lane = 0; lane < lanes; ++lane) {
      SsmComplex A_bar, B_bar;
      ssm_discrete_value(params, options, h0 + lane, n, &A_bar, &B_bar);
      const SsmComplex w = ssm_value(params.C_real, params.C_imag, h0 + lane, n) * B_bar * ssm_output_scale(options);
      wr[at(n, lane)] = static_cast<float>(w.real()), wi[at(n, lane)] = static_cast<float>(w.imag());
      zr[at(n, lane)] = static_cast<float>(A_bar.real()), zi[at(n, lane)] = static_cast<float>(A_bar.imag());
      jump[at(n, lane)] = std::pow(A_bar, double(kSsmKernelBlock));
    }
  AlignedVector<float> pr(at(padded, 0)), pi(at(padded, 0));
  alignas(64) float acc[kSsmKernelBlock * W];
  for (index_t l0 = 0; l0 < L; l0 += kSsmKernelBlock) {
    const index_t steps = std::min(kSsmKernelBlock, L - l0);
    std::fill(acc, acc + steps * W, 0.f);
    for (std::size_t i = 0; i < anchor.size(); ++i)
      pr[i] = static_cast<float>(anchor[i].real()), pi[i] = static_cast<float>(anchor[i].imag());
    for (index_t n = 0; n < padded; n += kSsmKernelStates) {
      SsmBatch p_re[kSsmKernelStates], p_im[kSsmKernelStates], z_re[kSsmKernelStates], z_im[kSsmKernelStates],
          w_re[kSsmKernelStates], w_im[kSsmKernelStates];
      for (index_t k = 0; k < kSsmKernelStates; ++k) {
        const std::size_t i = at(n + k, 0);
        p_re[k] = simd::load(pr.data() + i), p_im[k] = simd::load(pi.data() + i);
        z_re[k] = simd::load(zr.data() + i), z_im[k] = simd::load(zi.data() + i);
        w_re[k] = simd::load(wr.data() + i), w_im[k] = simd::load(wi.data() + i);
      }
      for (index_t l = 0; l < steps; ++l) {
        SsmBatch sum = simd::load(acc + l * W);
        for (index_t k = 0; k < kSsmKernelStates; ++k) {
          sum = simd::fma(w_re[k], p_re[k], sum);
          sum = simd::fma(-w_im[k], p_im[k], sum);
          const SsmBatch re = simd::fma(p_re[k], z_re[k], -(p_im[k] * z_im[k]));
          p_im[k] = simd::fma(p_re[k], z_im[k], p_im[k] * z_re[k]);
          p_re[k] = re;
        }
        simd::store(acc + l * W, sum);
      }
    }
    for (std::size_t i = 0; i < anchor.size(); ++i) anchor[i] *= jump[i];
    for (index_t l = 0; l < steps; ++l)
      for (index_t lane = 0; lane < lanes; ++lane) kernel(l0 + l, h0 + lane) = acc[l * W + lane];
  }
}

}  // namespace detail

/// Fast kernel generation: kernel [L,H] as reference::ssm_kernel (float rounding, about 1e-5
/// relative to sum_n |C B_bar|), O(L H N) multiply-adds, vectorized over channels and threaded
/// over blocks of simd::kWidth channels. Validates like the reference (ShapeError before any
/// write: shapes, non-finite values, Re(A) >= 0, dt <= 0). The kernel feeds long_conv as its
/// filter ([L,H] with H = D, or G = H heads).
inline void ssm_kernel(const SsmParams& params, const TensorView<float, 2>& kernel, const SsmKernelOptions& options = {},
                       const Executor& executor = serial_executor()) {
  const ArgCheck check("ssm_kernel");
  const auto dims = detail::validate_ssm_params(check, params, options);
  detail::validate_ssm_kernel_output(check, params, kernel, dims.H);
  const index_t blocks = (dims.H + simd::kWidth - 1) / simd::kWidth;
  parallel_for(executor, blocks, 1, [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) {
      const index_t h0 = i * simd::kWidth;
      detail::ssm_kernel_channels(params, options, kernel, h0, std::min(simd::kWidth, dims.H - h0));
    }
  });
}

}  // namespace seqmix
