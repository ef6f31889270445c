// h3, fast prefill: per head, the shift SSM as a long_conv on k, then the diagonal SSM as one
// long_conv over the key x value products, read out by q. The products are formed for a block
// of value columns at a time (kH3Channels channels), so the scratch stays O(B T kH3Channels)
// instead of the O(B T H P^2) of the whole product. With prepared filter spectra
// (h3_filter_spectra) the filters are transformed once, not per call, head and block.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
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

/// What h3_filter_spectra prepares for.
struct H3SpectrumShape {
  index_t heads = 0;       ///< H: the filters' H*P columns are split into heads of P
  index_t max_tokens = 0;  ///< the longest call's T (LongConvFilterSpectrum: the T range served)
};

/// h3's filters transformed once (inference: fixed SSM kernels), for h3(in, prepared, out, ...):
/// per head h, the spectra of the shift and diagonal filters' columns [h P, h P + P), each for P
/// channels (causal, no state). The diagonal one is not expanded over the value columns (see h3:
/// the products are laid out so that P channels' spectrum serves every value column), so the
/// whole holds about 2 H P N floats, N the FFT length (twice the filters at L = T).
struct H3FilterSpectra {
  index_t heads = 0;                          ///< H
  index_t head_size = 0;                      ///< P
  std::vector<LongConvFilterSpectrum> shift;  ///< [H]: shift_filter's columns of head h, for P channels
  std::vector<LongConvFilterSpectrum> diag;   ///< [H]: diag_filter's columns of head h, for P channels
};

/// Prepares h3's filters (shift [Ls,H*P], diagonal [L,H*P]) for calls of up to shape.max_tokens
/// tokens: a LongConvFilterSpectrum per head and filter (validated like h3's filters: shapes,
/// finite taps; ShapeError naming the argument). Threaded through `executor`.
inline H3FilterSpectra h3_filter_spectra(const ConstView<float, 2>& shift_filter, const ConstView<float, 2>& diag_filter,
                                         const H3SpectrumShape& shape, const Executor& executor = serial_executor()) {
  const ArgCheck check("h3_filter_spectra");
  if (shape.heads < 1) check.fail("shape.heads", "must be at least 1, got " + std::to_string(shape.heads));
  check.shape("shift_filter", shift_filter, {-1, -1}, "Ls,H*P");
  const index_t D = shift_filter.size(1), H = shape.heads;
  if (D < 1 || D % H != 0)
    check.fail("shift_filter", "must have H*P columns for H = shape.heads = " + std::to_string(H) + ", got shape " +
                                   shape_to_string(shift_filter.shape()));
  check.shape("diag_filter", diag_filter, {-1, D}, "L,H*P");
  if (shift_filter.size(0) < 1) check.fail("shift_filter", "must have at least one tap (Ls >= 1)");
  if (diag_filter.size(0) < 1) check.fail("diag_filter", "must have at least one tap (L >= 1)");
  // Named here, before LongConvFilterSpectrum would name its own "filter".
  detail::check_finite_filter(check, "shift_filter", shift_filter, executor);
  detail::check_finite_filter(check, "diag_filter", diag_filter, executor);
  const index_t P = D / H;
  H3FilterSpectra spectra{H, P, {}, {}};
  const LongConvSpectrumShape per_head{P, shape.max_tokens, LongConvDirection::causal, false};
  for (index_t h = 0; h < H; ++h) {
    spectra.shift.emplace_back(shift_filter.slice(1, h * P, P), ConstView<float, 2>(), per_head, executor);
    spectra.diag.emplace_back(diag_filter.slice(1, h * P, P), ConstView<float, 2>(), per_head, executor);
  }
  return spectra;
}

namespace detail {

// Refuses prepared spectra that do not serve this (validated, forward) call, before any write.
inline void check_h3_spectra(const H3Inputs& in, const H3FilterSpectra& prepared, const H3Dims& dims) {
  const ArgCheck check("h3");
  const auto n = [](index_t v) { return std::to_string(v); };
  const auto heads = static_cast<std::size_t>(dims.H);
  if (prepared.heads != dims.H || prepared.head_size != dims.P || prepared.shift.size() != heads ||
      prepared.diag.size() != heads)
    check.fail("prepared", "was made for H = " + n(prepared.heads) + ", P = " + n(prepared.head_size) + " (" +
                               n(static_cast<index_t>(prepared.shift.size())) + " heads of spectra), the call has H = " +
                               n(dims.H) + ", P = " + n(dims.P));
  for (index_t h = 0; h < dims.H; ++h) {
    const auto i = static_cast<std::size_t>(h);
    const ConstView<float, 3> u = in.k.select(2, h);  // any [B,T,P] view: the spectra check extents only
    check_long_conv_spectrum(check, "prepared.shift[" + n(h) + "]", prepared.shift[i],
                             {u, in.shift_filter.slice(1, h * dims.P, dims.P)}, LongConvOptions{});
    check_long_conv_spectrum(check, "prepared.diag[" + n(h) + "]", prepared.diag[i],
                             {u, in.diag_filter.slice(1, h * dims.P, dims.P)}, LongConvOptions{});
  }
}

// Whether a head's diagonal convolutions take its prepared spectrum: P a multiple of the FFT's
// channel block (so the tiled layout maps each block of channels to one block of filter
// columns) and the FFT form chosen (options.method, or the cost model with a spectrum).
inline bool h3_tiles(const H3Dims& dims, const H3Options& options) {
  if (dims.P % kFftElement != 0) return false;
  LongConvOptions conv;
  conv.method = options.method;
  const LongConvDims conv_dims{dims.B, dims.T, dims.P * h3_value_block(dims.P), dims.L, 0, dims.P};
  return long_conv_pick(conv, conv_dims, false, true) == LongConvMethod::fft;
}

// The per-row kernels of h3_fill_products and h3_read_out. GCC -O2 leaves their loops scalar (its
// cheap cost model vectorizes no loop of runtime length), so where the rows are contiguous they
// run on xsimd batches: over j for the i-major layout when the block is at least a vector wide,
// over i for the tiled one, and for narrower power-of-two blocks (P = 64: width 4) over whole
// vectors of the flat [P, width] row, kbar[i] or q[i] spread over its `width` lanes by a constant
// swizzle. Other widths keep the scalar loops.

// Lane l of the k-th vector of a narrow row reads element k W / width + l / width of the
// W-element vector it was loaded from (each spread over `width` lanes).
template <index_t kBlockWidth, index_t kPart>
struct H3SpreadLane {
  static constexpr std::uint32_t get(std::size_t l, std::size_t W) {
    return static_cast<std::uint32_t>(kPart * (W / kBlockWidth) + l / kBlockWidth);
  }
};
// Lane l reads element l % width: the block's width values repeated over the vector.
template <index_t kBlockWidth>
struct H3RepeatLane {
  static constexpr std::uint32_t get(std::size_t l, std::size_t) { return static_cast<std::uint32_t>(l % kBlockWidth); }
};

template <index_t kBlockWidth, index_t kPart>
simd::Batch<float> h3_spread(const simd::Batch<float>& x) noexcept {
  return xsimd::swizzle(x, simd::batch_constant<simd::Batch<std::uint32_t>, H3SpreadLane<kBlockWidth, kPart>>());
}

// Whether the narrow kernels serve `width` (a power of two below the vector width: it divides it).
inline bool h3_narrow_width(index_t width) { return width < simd::kWidth && simd::kWidth % width == 0 && width <= 8; }

// Calls f with width as a compile-time constant (h3_narrow_width(width) holds).
template <class F>
void h3_with_narrow_width(index_t width, F&& f) {
  switch (width) {
    case 1: return f(std::integral_constant<index_t, 1>{});
    case 2: return f(std::integral_constant<index_t, 2>{});
    case 4: return f(std::integral_constant<index_t, 4>{});
    default: return f(std::integral_constant<index_t, 8>{});
  }
}

// dst[i*w + j] = kb[i] v[j] (i < P, j < w = kBlockWidth): per W values of kb, w vectors.
template <index_t kBlockWidth>
void h3_products_narrow(float* dst, const float* kb, const float* v, index_t P) noexcept {
  constexpr index_t W = simd::kWidth;
  alignas(64) float lanes[W];
  for (index_t j = 0; j < kBlockWidth; ++j) lanes[j] = v[j];
  const simd::Batch<float> v_rep =
      xsimd::swizzle(simd::load(lanes), simd::batch_constant<simd::Batch<std::uint32_t>, H3RepeatLane<kBlockWidth>>());
  const index_t pv = simd::vector_end(P);
  for (index_t i0 = 0; i0 < pv; i0 += W) {
    const simd::Batch<float> k = simd::load(kb + i0);
    unrolled(std::make_index_sequence<kBlockWidth>{}, [&](auto part) {
      constexpr index_t m = decltype(part)::value;
      simd::store(dst + i0 * kBlockWidth + m * W, h3_spread<kBlockWidth, m>(k) * v_rep);
    });
  }
  for (index_t i = pv; i < P; ++i)
    for (index_t j = 0; j < kBlockWidth; ++j) dst[i * kBlockWidth + j] = kb[i] * v[j];
}

// y[j] = sum_i q[i] src[i*w + j] (i < P, j < w = kBlockWidth): lane l of the sum collects the
// terms of j = l % w, folded at the end.
template <index_t kBlockWidth>
void h3_read_narrow(float* y, const float* q, const float* src, index_t P) noexcept {
  constexpr index_t W = simd::kWidth;
  simd::Batch<float> acc(0.f);
  const index_t pv = simd::vector_end(P);
  for (index_t i0 = 0; i0 < pv; i0 += W) {
    const simd::Batch<float> qv = simd::load(q + i0);
    unrolled(std::make_index_sequence<kBlockWidth>{}, [&](auto part) {
      constexpr index_t m = decltype(part)::value;
      acc = simd::fma(h3_spread<kBlockWidth, m>(qv), simd::load(src + i0 * kBlockWidth + m * W), acc);
    });
  }
  alignas(64) float lanes[W];
  simd::store(lanes, acc);
  for (index_t j = 0; j < kBlockWidth; ++j) {
    float sum = 0.f;
    for (index_t l = j; l < W; l += kBlockWidth) sum += lanes[l];
    for (index_t i = pv; i < P; ++i) sum += q[i] * src[i * kBlockWidth + j];
    y[j] = sum;
  }
}

// dst[i*width + j] = kb[i] v[j], width >= W: vectors over j, a scalar tail.
inline void h3_products_wide(float* dst, const float* kb, const float* v, index_t P, index_t width) noexcept {
  const index_t jv = simd::vector_end(width);
  for (index_t i = 0; i < P; ++i) {
    const simd::Batch<float> ki(kb[i]);
    float* row = dst + i * width;
    for (index_t j = 0; j < jv; j += simd::kWidth) simd::store(row + j, ki * simd::load(v + j));
    for (index_t j = jv; j < width; ++j) row[j] = kb[i] * v[j];
  }
}

// y[j] = sum_i q[i] src[i*width + j], width >= W: each vector of j keeps its sum in a register
// over i (the scalar loop's terms in its order).
inline void h3_read_wide(float* y, const float* q, const float* src, index_t P, index_t width) noexcept {
  const index_t jv = simd::vector_end(width);
  for (index_t j = 0; j < jv; j += simd::kWidth) {
    simd::Batch<float> acc(0.f);
    for (index_t i = 0; i < P; ++i) acc = simd::fma(simd::Batch<float>(q[i]), simd::load(src + i * width + j), acc);
    simd::store(y + j, acc);
  }
  for (index_t j = jv; j < width; ++j) {
    float sum = 0.f;
    for (index_t i = 0; i < P; ++i) sum += q[i] * src[i * width + j];
    y[j] = sum;
  }
}

// kv[b,t,(i,j)] = kbar[b,t,i] v[b,t,h,j0+j] for the block's `width` value columns (kv's
// last extent is P * width): channel j*P + i (tiled) or i*width + j. Each layout's loop has its
// unit stride innermost.
inline void h3_fill_products(const ConstView<float, 4>& v, index_t h, index_t j0, const Tensor<float, 3>& kbar,
                             const TensorView<float, 3>& kv, bool tiled, index_t grain, const Executor& executor) {
  const index_t T = kbar.shape()[1], P = kbar.shape()[2], width = kv.shape()[2] / P;
  const bool contiguous = v.stride(3) == 1 && kv.stride(2) == 1;
  parallel_for(executor, kbar.shape()[0] * T, grain, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const index_t b = r / T, t = r % T;
      float* dst = kv.ptr(b, t, 0);
      const float* kb = kbar.data() + (b * T + t) * P;
      if (tiled) {
        for (index_t j = 0; j < width; ++j) {
          const float vj = v(b, t, h, j0 + j);
          if (contiguous) {
            const simd::Batch<float> vjv(vj);
            const index_t pv = simd::vector_end(P);
            for (index_t i = 0; i < pv; i += simd::kWidth) simd::store(dst + j * P + i, simd::load(kb + i) * vjv);
            for (index_t i = pv; i < P; ++i) dst[j * P + i] = kb[i] * vj;
          } else {
            for (index_t i = 0; i < P; ++i) dst[j * P + i] = kb[i] * vj;
          }
        }
        continue;
      }
      if (contiguous && width >= simd::kWidth) {
        h3_products_wide(dst, kb, v.ptr(b, t, h, j0), P, width);
      } else if (contiguous && h3_narrow_width(width)) {
        h3_with_narrow_width(width, [&](auto w) { h3_products_narrow<decltype(w)::value>(dst, kb, v.ptr(b, t, h, j0), P); });
      } else {
        for (index_t i = 0; i < P; ++i) {
          const float ki = kb[i];
          for (index_t j = 0; j < width; ++j) dst[i * width + j] = ki * v(b, t, h, j0 + j);
        }
      }
    }
  });
}

// y[b,t,h,j0+j] = sum_i q[b,t,h,i] conv[b,t,(i,j)] over the block's value columns (conv laid
// out as h3_fill_products wrote kv).
inline void h3_read_out(const ConstView<float, 4>& q, index_t h, index_t j0, const TensorView<float, 3>& conv,
                        const TensorView<float, 4>& y, bool tiled, index_t grain, const Executor& executor) {
  const index_t T = conv.shape()[1], P = q.shape()[3], width = conv.shape()[2] / P;
  const bool contiguous = q.stride(3) == 1 && conv.stride(2) == 1;
  parallel_for(executor, conv.shape()[0] * T, grain, [&](index_t begin, index_t end) {
    float acc[kH3Channels];
    for (index_t r = begin; r < end; ++r) {
      const index_t b = r / T, t = r % T;
      const float* src = conv.ptr(b, t, 0);
      if (contiguous && tiled) {
        for (index_t j = 0; j < width; ++j) acc[j] = simd::dot(q.ptr(b, t, h, 0), src + j * P, P);
      } else if (contiguous && width >= simd::kWidth) {
        h3_read_wide(acc, q.ptr(b, t, h, 0), src, P, width);
      } else if (contiguous && h3_narrow_width(width)) {
        h3_with_narrow_width(width, [&](auto w) { h3_read_narrow<decltype(w)::value>(acc, q.ptr(b, t, h, 0), src, P); });
      } else {
        std::fill(acc, acc + width, 0.f);
        if (tiled) {
          for (index_t j = 0; j < width; ++j)
            for (index_t i = 0; i < P; ++i) acc[j] += q(b, t, h, i) * src[j * P + i];
        } else {
          for (index_t i = 0; i < P; ++i) {
            const float qi = q(b, t, h, i);
            for (index_t j = 0; j < width; ++j) acc[j] += qi * src[i * width + j];
          }
        }
      }
      for (index_t j = 0; j < width; ++j) y(b, t, h, j0 + j) = acc[j];
    }
  });
}

// The forward call (validated; prepared checked, or null). Per head: kbar = shift (*) k, then the
// diagonal SSM over the products, a block of `width` value columns at a time.
//
// Unprepared (and prepared where h3_tiles is false): products laid out i-major, channel
// i*width + j, so long_conv's per-head sharing (channel c reads column c / width) is the diagonal
// filter's column i. Prepared: j-major, channel j*P + i, reading column c % P: with P a multiple
// of the FFT block, channel block m reads the P-channel spectrum's block m % (P / E) in place
// (long_conv_fft_run's tile). Why not a spectrum expanded to P x width channels (the i-major
// layout's, tried): it holds width (4 at P = 64) times the filter's spectrum, and the tiled one
// also ran faster (one thread, CPU time, P = 64, L = T, AMD EPYC (Zen 5), loaded, medians of 5
// alternated runs: 0.95x the expanded one's time at H = 4, T = 4096, 0.86x at H = 1, T = 16384).
inline void h3_run(const H3Inputs& in, const H3Outputs& out, const H3Dims& dims, const H3Options& options,
                   const H3FilterSpectra* prepared, const Executor& executor) {
  const index_t B = dims.B, T = dims.T, P = dims.P, jb = h3_value_block(P);
  const bool tiled = prepared != nullptr && h3_tiles(dims, options);
  Tensor<float, 3> kbar({B, T, P}), kv({B, T, P * jb}), conv({B, T, P * jb});
  LongConvOptions conv_options;
  conv_options.method = options.method;
  // Rows per task for the elementwise passes: about 16K products each.
  const index_t grain = std::max<index_t>(1, 16384 / (P * jb));
  for (index_t h = 0; h < dims.H; ++h) {
    const auto i_h = static_cast<std::size_t>(h);
    const LongConvInputs shift_call{in.k.select(2, h), in.shift_filter.slice(1, h * P, P)};
    if (prepared != nullptr)
      long_conv(shift_call, prepared->shift[i_h], {kbar.view()}, conv_options, executor);
    else
      long_conv(shift_call, {kbar.view()}, conv_options, executor);
    const ConstView<float, 2> diag = in.diag_filter.slice(1, h * P, P);
    for (index_t j0 = 0; j0 < P; j0 += jb) {
      const index_t width = std::min(jb, P - j0);
      const TensorView<float, 3> kv_block = kv.view().slice(2, 0, P * width);
      const TensorView<float, 3> conv_block = conv.view().slice(2, 0, P * width);
      h3_fill_products(in.v, h, j0, kbar, kv_block, tiled, grain, executor);
      if (tiled)
        long_conv_fft_run({kv_block, diag}, conv_block, executor, prepared->diag[i_h].data(), P / kFftElement);
      else
        long_conv({kv_block, diag}, {conv_block}, conv_options, executor);
      h3_read_out(in.q, h, j0, conv_block, out.y, tiled, grain, executor);
    }
  }
}

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
  detail::h3_run(in, out, dims, options, nullptr, executor);
}

/// Fast prefill with the filters' spectra prepared (h3_filter_spectra; fixed filters): the same
/// results as h3(in, out, options) up to float rounding. `in` must still name the filters the
/// spectra were made from (the direct form reads them). options.reverse is served (the spectra
/// are causal; a reverse call is the forward one on reversed views). `prepared` must have H heads
/// of size P and each spectrum must serve its head's call (LongConvFilterSpectrum: T in
/// [min_tokens(), max_tokens()]); anything else is a ShapeError naming `prepared` (or
/// `prepared.shift[h]`, `prepared.diag[h]`) before any output is written. The diagonal spectra
/// are used where P is a multiple of 2 * simd::kWidth (the FFT's channel block: 32 with AVX-512)
/// and the FFT form is chosen; elsewhere that head's diagonal SSM runs as in the unprepared call
/// (its filter transformed per call). The shift spectra are always used (long_conv's prepared
/// call, which takes the direct form for short shift filters).
inline void h3(const H3Inputs& in, const H3FilterSpectra& prepared, const H3Outputs& out,
               const H3Options& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::h3_reversed_call(in, out);
    return h3(rev.first, prepared, rev.second, detail::forward_options(options), executor);
  }
  const auto dims = detail::validate_h3("h3", in, out, options);
  detail::check_h3_spectra(in, prepared, dims);
  detail::h3_run(in, out, dims, options, &prepared, executor);
}

}  // namespace seqmix
