// h3, fast prefill: per head, the shift SSM as a long_conv on k, then the diagonal SSM as one
// long_conv over the key x value products, read out by q. The products are formed for a block
// of value columns at a time (kH3Channels channels), so the scratch stays O(B T kH3Channels)
// instead of the O(B T H P^2) of the whole product.
#pragma once

#include <algorithm>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/lti/h3/reference.hpp"
#include "seqmix/lti/long_conv/fast.hpp"

namespace seqmix {
namespace detail {

// Products per block: 256 channels = 8 of long_conv's FFT channel blocks (AVX-512), enough to
// keep both threads busy, while the two [B,T,256] buffers stay 32 MiB at T = 16384.
constexpr index_t kH3Channels = 256;

// Value columns per block for head size P.
inline index_t h3_value_block(index_t P) { return std::max<index_t>(1, std::min<index_t>(P, kH3Channels / P)); }

}  // namespace detail

/// Fast prefill: same arguments and results as reference::h3 (see reference.hpp) up to float
/// rounding. Per head one long_conv for the shift SSM and, per block of value columns, one
/// long_conv over P x block products whose filter columns are shared by the block (long_conv's
/// per-head sharing), both by options.method. Threaded through `executor`. Allocates per call
/// B T (P + 2 P jb) floats of scratch, jb = max(1, min(P, 256 / P)).
inline void h3(const H3Inputs& in, const H3Outputs& out, const H3Options& options = {},
               const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::h3_reversed_call(in, out);
    return h3(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_h3("h3", in, out, options);
  const index_t B = dims.B, T = dims.T, P = dims.P, jb = detail::h3_value_block(P);
  Tensor<float, 3> kbar({B, T, P}), kv({B, T, P * jb}), conv({B, T, P * jb});
  LongConvOptions conv_options;
  conv_options.method = options.method;
  // Rows per task for the elementwise passes: about 16K products each.
  const index_t grain = std::max<index_t>(1, 16384 / (P * jb));
  for (index_t h = 0; h < dims.H; ++h) {
    long_conv({in.k.select(2, h), in.shift_filter.slice(1, h * P, P)}, {kbar.view()}, conv_options, executor);
    for (index_t j0 = 0; j0 < P; j0 += jb) {
      const index_t width = std::min(jb, P - j0);
      const TensorView<float, 3> kv_block = kv.view().slice(2, 0, P * width);
      const TensorView<float, 3> conv_block = conv.view().slice(2, 0, P * width);
      // kv[b,t,i*width+j] = kbar[b,t,i] v[b,t,h,j0+j]: channel i*width+j reads filter column i.
      parallel_for(executor, B * T, grain, [&](index_t begin, index_t end) {
        for (index_t r = begin; r < end; ++r) {
          const index_t b = r / T, t = r % T;
          float* dst = kv_block.ptr(b, t, 0);
          for (index_t i = 0; i < P; ++i) {
            const float ki = kbar(b, t, i);
            for (index_t j = 0; j < width; ++j) dst[i * width + j] = ki * in.v(b, t, h, j0 + j);
          }
        }
      });
      long_conv({kv_block, in.diag_filter.slice(1, h * P, P)}, {conv_block}, conv_options, executor);
      // y[b,t,h,j0+j] = sum_i q[b,t,h,i] conv[b,t,i*width+j].
      parallel_for(executor, B * T, grain, [&](index_t begin, index_t end) {
        float acc[detail::kH3Channels];
        for (index_t r = begin; r < end; ++r) {
          const index_t b = r / T, t = r % T;
          const float* src = conv_block.ptr(b, t, 0);
          std::fill(acc, acc + width, 0.f);
          for (index_t i = 0; i < P; ++i) {
            const float qi = in.q(b, t, h, i);
            for (index_t j = 0; j < width; ++j) acc[j] += qi * src[i * width + j];
          }
          for (index_t j = 0; j < width; ++j) out.y(b, t, h, j0 + j) = acc[j];
        }
      });
    }
  }
}

}  // namespace seqmix
