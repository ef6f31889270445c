// ConvS5-style tensor states (issue 23 item 3): the state of each (batch row, channel) is a 2-D
// feature map, and the transition is a small depthwise convolution of it:
//
//   h[b,t,c] = K[c] * h[b,t-1,c] + x[b,t,c]      h[b,-1,c] = h0[b,c] (or 0)
//   (K * h)[i,j] = sum_{di,dj} K[c,di,dj] h[i + di - Kh/2, j + dj - Kw/2]   (zero outside the map)
//
// i.e. matrix_scan with the N x N block replaced by the (sparse, banded) convolution operator of
// an Hs x Ws map, applied without forming it. Time-invariant kernels; odd kernel sizes ("same"
// padding keeps the map's size). Fast form: one task per (batch row, channel), each tap an axpy
// along contiguous map rows (vectorized); reference in double; conv_state_step for decode.
//
//   kernel  [C,Kh,Kw]         Kh, Kw odd
//   x       [B,T,C,Hs,Ws]     map rows contiguous for the vectorized kernel (any strides accepted)
//   h0      [B,C,Hs,Ws]       optional (zero)
//   h_all   [B,T,C,Hs,Ws]     optional
//   h_last  [B,C,Hs,Ws]       optional (one of the two required); may be the very h0 view
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Prefill inputs of conv_state_scan. Optional views are empty when not given.
struct ConvStateScanInputs {
  ConstView<float, 3> kernel;   ///< [C,Kh,Kw], odd Kh and Kw
  ConstView<float, 5> x;        ///< [B,T,C,Hs,Ws]
  ConstView<float, 4> h0 = {};  ///< [B,C,Hs,Ws], optional (zero)
};

/// Outputs of conv_state_scan; at least one must be given. h_last may be the very h0 view.
struct ConvStateScanOutputs {
  TensorView<float, 5> h_all = {};   ///< [B,T,C,Hs,Ws], optional
  TensorView<float, 4> h_last = {};  ///< [B,C,Hs,Ws], optional
};

namespace detail {

struct ConvStateDims {
  index_t B, T, C, Hs, Ws, Kh, Kw;
};

inline ConvStateDims validate_conv_state(const char* op, const ConvStateScanInputs& in, const ConvStateScanOutputs& out) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1, -1, -1}, "B,T,C,Hs,Ws");
  const index_t B = in.x.size(0), T = in.x.size(1), C = in.x.size(2), Hs = in.x.size(3), Ws = in.x.size(4);
  check.shape("kernel", in.kernel, {C, -1, -1}, "C,Kh,Kw");
  const index_t Kh = in.kernel.size(1), Kw = in.kernel.size(2);
  if (Kh % 2 == 0 || Kw % 2 == 0)
    check.fail("kernel", "must have odd sizes (same padding), got " + shape_to_string(in.kernel.shape()));
  check.optional_shape("h0", in.h0, {B, C, Hs, Ws}, "B,C,Hs,Ws")
      .optional_shape("h_all", out.h_all, {B, T, C, Hs, Ws}, "B,T,C,Hs,Ws")
      .optional_shape("h_last", out.h_last, {B, C, Hs, Ws}, "B,C,Hs,Ws");
  check.that(is_given(out.h_all) || is_given(out.h_last), "h_all",
             "and argument 'h_last' are both empty: give at least one output");
  check.no_overlap("h_all", out.h_all, "x", in.x)
      .no_overlap("h_all", out.h_all, "kernel", in.kernel)
      .no_overlap("h_all", out.h_all, "h0", in.h0)
      .no_overlap("h_last", out.h_last, "x", in.x)
      .no_overlap("h_last", out.h_last, "kernel", in.kernel)
      .no_overlap("h_last", out.h_last, "h_all", out.h_all);
  check_in_place(check, "h_last", out.h_last, "h0", in.h0);
  return {B, T, C, Hs, Ws, Kh, Kw};
}

// next = K * state + x for one map (state, next contiguous [Hs*Ws]; x with row stride xs_i and
// column stride xs_j). Each tap adds a shifted copy of state rows: contiguous, so it vectorizes.
inline void conv_state_apply(const ConstView<float, 3>& kernel, index_t c, const float* state, const float* x,
                             index_t xs_i, index_t xs_j, float* next, index_t Hs, index_t Ws) {
  const index_t Kh = kernel.size(1), Kw = kernel.size(2), ch = Kh / 2, cw = Kw / 2;
  for (index_t i = 0; i < Hs; ++i) {
    float* row = next + i * Ws;
    for (index_t j = 0; j < Ws; ++j) row[j] = x[i * xs_i + j * xs_j];
    for (index_t di = 0; di < Kh; ++di) {
      const index_t si = i + di - ch;
      if (si < 0 || si >= Hs) continue;
      const float* src = state + si * Ws;
      for (index_t dj = 0; dj < Kw; ++dj) {
        const float k = kernel(c, di, dj);
        const index_t shift = dj - cw;  // row[j] += k * src[j + shift] where 0 <= j + shift < Ws
        const index_t j0 = std::max<index_t>(0, -shift), j1 = std::min<index_t>(Ws, Ws - shift);
        for (index_t j = j0; j < j1; ++j) row[j] += k * src[j + shift];
      }
    }
  }
}

}  // namespace detail

namespace reference {

/// The definition, token by token, in double. Single-threaded; `executor` is accepted for a
/// uniform signature.
inline void conv_state_scan(const ConvStateScanInputs& in, const ConvStateScanOutputs& out,
                            const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_conv_state("reference::conv_state_scan", in, out);
  const index_t M = d.Hs * d.Ws;
  std::vector<double> h(static_cast<std::size_t>(M)), next(static_cast<std::size_t>(M));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t c = 0; c < d.C; ++c) {
      for (index_t i = 0; i < d.Hs; ++i)
        for (index_t j = 0; j < d.Ws; ++j) h[i * d.Ws + j] = in.h0.has_value() ? in.h0(b, c, i, j) : 0.0;
      for (index_t t = 0; t < d.T; ++t) {
        for (index_t i = 0; i < d.Hs; ++i)
          for (index_t j = 0; j < d.Ws; ++j) {
            double s = in.x(b, t, c, i, j);
            for (index_t di = 0; di < d.Kh; ++di)
              for (index_t dj = 0; dj < d.Kw; ++dj) {
                const index_t si = i + di - d.Kh / 2, sj = j + dj - d.Kw / 2;
                if (si >= 0 && si < d.Hs && sj >= 0 && sj < d.Ws) s += double(in.kernel(c, di, dj)) * h[si * d.Ws + sj];
              }
            next[i * d.Ws + j] = s;
          }
        h.swap(next);
        if (out.h_all.has_value())
          for (index_t i = 0; i < d.Hs; ++i)
            for (index_t j = 0; j < d.Ws; ++j) out.h_all(b, t, c, i, j) = static_cast<float>(h[i * d.Ws + j]);
      }
      if (out.h_last.has_value())  // after h0 was read: h_last may be the same view
        for (index_t i = 0; i < d.Hs; ++i)
          for (index_t j = 0; j < d.Ws; ++j) out.h_last(b, c, i, j) = static_cast<float>(h[i * d.Ws + j]);
    }
}

}  // namespace reference

/// Fast prefill: same arguments and results as reference::conv_state_scan (float rounding). One
/// task per (batch row, channel) over the executor; per token Hs Ws Kh Kw FMAs as row axpys.
/// Scratch: two maps per task.
inline void conv_state_scan(const ConvStateScanInputs& in, const ConvStateScanOutputs& out,
                            const Executor& executor = serial_executor()) {
  const auto d = detail::validate_conv_state("conv_state_scan", in, out);
  const index_t M = d.Hs * d.Ws;
  if (M == 0) return;  // empty maps: nothing to write
  parallel_for(executor, d.B * d.C, 1, [&](index_t p0, index_t p1) {
    std::vector<float> state(static_cast<std::size_t>(M)), next(static_cast<std::size_t>(M));
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / d.C, c = p % d.C;
      for (index_t i = 0; i < d.Hs; ++i)
        for (index_t j = 0; j < d.Ws; ++j) state[i * d.Ws + j] = in.h0.has_value() ? in.h0(b, c, i, j) : 0.f;
      for (index_t t = 0; t < d.T; ++t) {
        detail::conv_state_apply(in.kernel, c, state.data(), in.x.ptr(b, t, c, 0, 0), in.x.stride(3), in.x.stride(4),
                                 next.data(), d.Hs, d.Ws);
        state.swap(next);
        if (out.h_all.has_value())
          for (index_t i = 0; i < d.Hs; ++i)
            for (index_t j = 0; j < d.Ws; ++j) out.h_all(b, t, c, i, j) = state[i * d.Ws + j];
      }
      if (out.h_last.has_value())
        for (index_t i = 0; i < d.Hs; ++i)
          for (index_t j = 0; j < d.Ws; ++j) out.h_last(b, c, i, j) = state[i * d.Ws + j];
    }
  });
}

/// Decode step: state[b,c] = kernel[c] * state[b,c] + x[b,c] in place; x, state [B,C,Hs,Ws],
/// kernel [C,Kh,Kw] (odd sizes); state overlaps neither input. Same kernel (and rounding) as the
/// prefill, so prefill-then-steps equals one call. Allocates one map of scratch per task.
inline void conv_state_step(ConstView<float, 3> kernel, ConstView<float, 4> x, TensorView<float, 4> state,
                            const Executor& executor = serial_executor()) {
  const ArgCheck check("conv_state_step");
  check.shape("x", x, {-1, -1, -1, -1}, "B,C,Hs,Ws");
  const index_t B = x.size(0), C = x.size(1), Hs = x.size(2), Ws = x.size(3);
  check.shape("kernel", kernel, {C, -1, -1}, "C,Kh,Kw").shape("state", state, {B, C, Hs, Ws}, "B,C,Hs,Ws");
  if (kernel.size(1) % 2 == 0 || kernel.size(2) % 2 == 0)
    check.fail("kernel", "must have odd sizes (same padding), got " + shape_to_string(kernel.shape()));
  check.no_overlap("state", state, "x", x).no_overlap("state", state, "kernel", kernel);
  const index_t M = Hs * Ws;
  if (M == 0) return;
  parallel_for(executor, B * C, 16, [&](index_t p0, index_t p1) {
    std::vector<float> cur(static_cast<std::size_t>(M)), next(static_cast<std::size_t>(M));
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / C, c = p % C;
      for (index_t i = 0; i < Hs; ++i)
        for (index_t j = 0; j < Ws; ++j) cur[i * Ws + j] = state(b, c, i, j);
      detail::conv_state_apply(kernel, c, cur.data(), x.ptr(b, c, 0, 0), x.stride(2), x.stride(3), next.data(), Hs, Ws);
      for (index_t i = 0; i < Hs; ++i)
        for (index_t j = 0; j < Ws; ++j) state(b, c, i, j) = next[i * Ws + j];
    }
  });
}

}  // namespace seqmix
