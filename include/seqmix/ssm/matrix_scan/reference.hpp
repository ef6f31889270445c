// matrix_scan: the linear recurrence with dense (block-diagonal) transitions (issue 23 item 3):
//
//   h[b,t,h,:] = A[b,t,h] h[b,t-1,h,:] + x[b,t,h,:]      A[b,t,h] an N x N block per head
//
// i.e. core/scan's linear_scan with the scalar decay replaced by a small matrix per head, as in
// block-diagonal and unitary RNNs. h starts from h0 (zero if absent). The maps h -> A h + x compose
// associatively, (A2, x2) o (A1, x1) = (A2 A1, A2 x1 + x2): MatrixAffineMonoid below, which the
// fast form (fast.hpp) uses to cut time into chunks. orthogonal.hpp builds orthogonal A from
// caller parameters (Cayley transform or Givens rotations), step.hpp is the decode step.
//
//   A       [B,T,H,N,N]  element (i, j) multiplies h[j] into h[i]; each N x N block contiguous
//                        for the fast kernels (any strides are accepted, at scalar speed)
//   x       [B,T,H,N]    the additive term (named b in SPEC section 2; x here, B is the batch)
//   h0      [B,H,N]      optional initial state (zero)
//   h_all   [B,T,H,N]    optional: every state
//   h_last  [B,H,N]      optional: the last state (h0 or zero when T = 0); may be the very h0 view
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How matrix_scan spreads work over the executor's threads.
enum class MatrixScanSplit {
  /// heads when B*H gives every thread a head (or there is one thread), else time when T is long
  /// enough and N small enough for the chunk products to pay (see fast.hpp), else heads.
  automatic,
  /// Each task owns (batch row, head) for all T: the sequential recurrence, N^2 FMAs per token.
  heads,
  /// The three-pass chunked scan over time with the matrix monoid: chunk c is reduced to its map
  /// (prod of A, local state from zero; N^3 + N^2 FMAs per token), the maps are applied to the
  /// carries serially, and every chunk is rescanned from its carry. For few heads, many threads.
  time,
};

/// Options of matrix_scan (docs/operators.md, "matrix_scan").
struct MatrixScanOptions {
  /// Which dimension runs in parallel (see MatrixScanSplit).
  MatrixScanSplit split = MatrixScanSplit::automatic;
  /// Time-chunk length for MatrixScanSplit::time; 0 = threads + 1 equal chunks. Results do not
  /// depend on it beyond rounding.
  index_t chunk_size = 0;
  /// Run from the last token to the first (core/direction.hpp): A, x and h_all are reached
  /// through reversed views, not copied; h0 is the state "after token T" and h_last the state
  /// after token 0 (h_t = A_t h_{t+1} + x_t).
  bool reverse = false;
};

/// Prefill inputs. Optional views are empty when not given.
struct MatrixScanInputs {
  ConstView<float, 5> A;        ///< [B,T,H,N,N], A(i, j) maps h[j] into h[i]
  ConstView<float, 4> x;        ///< [B,T,H,N]
  ConstView<float, 3> h0 = {};  ///< [B,H,N], optional (zero)
};

/// Outputs; at least one must be given. h_all overlaps no input; h_last may be the very h0 view.
struct MatrixScanOutputs {
  TensorView<float, 4> h_all = {};   ///< [B,T,H,N], optional
  TensorView<float, 3> h_last = {};  ///< [B,H,N], optional
};

/// An affine map h -> A h + x of an N-vector, A row-major (the element of MatrixAffineMonoid).
template <int N>
struct MatrixAffineMap {
  std::array<float, N * N> A;  ///< row-major, A[i * N + j]
  std::array<float, N> x;      ///< the offset
};

/// The monoid of MatrixAffineMap<N> under composition, for core/scan's associative_scan:
/// combine(left, right) applies left first, then right: (A2, x2) o (A1, x1) = (A2 A1, A2 x1 + x2).
/// Not commutative. Scanning the maps (A_t, x_t) and applying prefix t to h0 gives h_t.
template <int N>
struct MatrixAffineMonoid {
  /// The Monoid interface (core/scan/monoids.hpp): element type, identity, associative combine.
  ///@{
  using value_type = MatrixAffineMap<N>;
  value_type identity() const {
    value_type m{};
    for (int i = 0; i < N; ++i) m.A[i * N + i] = 1.f;
    return m;
  }
  value_type combine(const value_type& left, const value_type& right) const {
    value_type out;
    for (int i = 0; i < N; ++i) {
      float xi = right.x[i];
      for (int k = 0; k < N; ++k) xi += right.A[i * N + k] * left.x[k];
      out.x[i] = xi;
      for (int j = 0; j < N; ++j) {
        float s = 0.f;
        for (int k = 0; k < N; ++k) s += right.A[i * N + k] * left.A[k * N + j];
        out.A[i * N + j] = s;
      }
    }
    return out;
  }
  ///@}
};

namespace detail {

struct MatrixScanDims {
  index_t B, T, H, N;
};

inline MatrixScanDims validate_matrix_scan(const char* op, const MatrixScanInputs& in, const MatrixScanOutputs& out,
                                           const MatrixScanOptions& options) {
  const ArgCheck check(op);
  check.enum_value("options.split", options.split, 3);
  check.that(options.chunk_size >= 0, "options.chunk_size",
             "must be >= 0 (0 = automatic), got " + std::to_string(options.chunk_size));
  check.shape("A", in.A, {-1, -1, -1, -1, -1}, "B,T,H,N,N");
  const index_t B = in.A.size(0), T = in.A.size(1), H = in.A.size(2), N = in.A.size(3);
  check.that(N >= 1, "A", "must have a block size N >= 1, got shape " + shape_to_string(in.A.shape()));
  check.shape("A", in.A, {B, T, H, N, N}, "B,T,H,N,N (square blocks)")
      .shape("x", in.x, {B, T, H, N}, "B,T,H,N")
      .optional_shape("h0", in.h0, {B, H, N}, "B,H,N")
      .optional_shape("h_all", out.h_all, {B, T, H, N}, "B,T,H,N")
      .optional_shape("h_last", out.h_last, {B, H, N}, "B,H,N");
  check.that(is_given(out.h_all) || is_given(out.h_last), "h_all",
             "and argument 'h_last' are both empty: give at least one output");
  check.no_overlap("h_all", out.h_all, "A", in.A)
      .no_overlap("h_all", out.h_all, "x", in.x)
      .no_overlap("h_all", out.h_all, "h0", in.h0)
      .no_overlap("h_last", out.h_last, "A", in.A)
      .no_overlap("h_last", out.h_last, "x", in.x)
      .no_overlap("h_last", out.h_last, "h_all", out.h_all);
  check_in_place(check, "h_last", out.h_last, "h0", in.h0);
  return {B, T, H, N};
}

// A reverse call as the forward call on reversed views (core/direction.hpp).
inline std::pair<MatrixScanInputs, MatrixScanOutputs> reversed_call(MatrixScanInputs in, MatrixScanOutputs out) {
  reverse_time_of(in.A, in.x, out.h_all);
  return {in, out};
}

}  // namespace detail

namespace reference {

/// The definition, token by token, in double (the state is rounded to float only when stored).
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void matrix_scan(const MatrixScanInputs& in, const MatrixScanOutputs& out, const MatrixScanOptions& options = {},
                        const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call(in, out);
    return matrix_scan(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const auto [B, T, H, N] = detail::validate_matrix_scan("reference::matrix_scan", in, out, options);
  std::vector<double> h(static_cast<std::size_t>(N)), next(static_cast<std::size_t>(N));
  for (index_t b = 0; b < B; ++b)
    for (index_t head = 0; head < H; ++head) {
      for (index_t i = 0; i < N; ++i) h[i] = in.h0.has_value() ? in.h0(b, head, i) : 0.0;
      for (index_t t = 0; t < T; ++t) {
        for (index_t i = 0; i < N; ++i) {
          double s = in.x(b, t, head, i);
          for (index_t j = 0; j < N; ++j) s += double(in.A(b, t, head, i, j)) * h[j];
          next[i] = s;
        }
        h.swap(next);
        if (out.h_all.has_value())
          for (index_t i = 0; i < N; ++i) out.h_all(b, t, head, i) = static_cast<float>(h[i]);
      }
      // Written after h0 was read: h_last may be the same view.
      if (out.h_last.has_value())
        for (index_t i = 0; i < N; ++i) out.h_last(b, head, i) = static_cast<float>(h[i]);
    }
}

}  // namespace reference
}  // namespace seqmix
