// matrix_scan, decode step: one token per (batch row, head), state = A state + x in place, with
// the prefill's kernels (fast.hpp).
#pragma once

#include <array>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/matrix_scan/fast.hpp"

namespace seqmix {

/// Decode-step arguments: one token per batch row.
struct MatrixScanStepInputs {
  ConstView<float, 4> A;  ///< [B,H,N,N]
  ConstView<float, 3> x;  ///< [B,H,N]
};

namespace detail {

template <int kN>
void matrix_scan_step_heads(const MatrixScanStepInputs& in, const TensorView<float, 3>& state, const Executor& executor) {
  const index_t B = in.A.size(0), H = in.A.size(1), N = in.A.size(2);
  parallel_for(executor, B * H, 64, [&](index_t p0, index_t p1) {
    // Stack scratch for the blocks the fixed kernels handle; larger N is rare and allocates.
    std::array<float, 32> small{};
    std::vector<float> large(N > 16 ? static_cast<std::size_t>(2 * N) : 0);
    float* buffer = N > 16 ? large.data() : small.data();
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / H, head = p % H;
      const MatrixScanHead s{in.A.ptr(b, head, 0, 0), 0, in.A.stride(2), in.A.stride(3),
                             in.x.ptr(b, head, 0),    0, in.x.stride(2), nullptr, 0, 0};
      for (index_t i = 0; i < N; ++i) buffer[i] = state(b, head, i);
      if (kN > 0 && matrix_scan_packed(s, N))
        matrix_scan_rows<kN>(s, N, buffer, buffer + N, 0, 1);
      else
        matrix_scan_rows<0>(s, N, buffer, buffer + N, 0, 1);
      for (index_t i = 0; i < N; ++i) state(b, head, i) = buffer[i];
    }
  });
}

}  // namespace detail

/// Decode step of matrix_scan: state[b,h] = A[b,h] state[b,h] + x[b,h], in place. state [B,H,N]
/// must overlap neither A nor x. Same kernels (and rounding) as the prefill's heads split, so
/// prefill-then-steps equals one prefill call bit for bit on that split. No heap allocation for
/// N <= 16.
inline void matrix_scan_step(const MatrixScanStepInputs& in, TensorView<float, 3> state,
                             const Executor& executor = serial_executor()) {
  static const ArgCheck check("matrix_scan_step");
  check.shape("A", in.A, {-1, -1, -1, -1}, "B,H,N,N");
  const index_t B = in.A.size(0), H = in.A.size(1), N = in.A.size(2);
  if (N < 1 || in.A.size(3) != N)
    check.fail("A", "must hold square blocks of size N >= 1, got shape " + shape_to_string(in.A.shape()));
  check.shape("x", in.x, {B, H, N}, "B,H,N").shape("state", state, {B, H, N}, "B,H,N");
  check.no_overlap("state", state, "A", in.A).no_overlap("state", state, "x", in.x);
  detail::with_block_size(N, [&](auto kN) { detail::matrix_scan_step_heads<decltype(kN)::value>(in, state, executor); });
}

}  // namespace seqmix
