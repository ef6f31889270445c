// Zero-copy interop between 2-D tensor views and Eigen.
//
// A rank-2 view maps to an Eigen row-major matrix whose outer stride is the row stride and whose
// inner stride is the column stride, so a slice of a [B,T,H,D] tensor (e.g. the [T,D] rows of one
// batch and head) becomes an Eigen expression without copying.
#pragma once

#include <cassert>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// `Type`, spelled so that it depends on `Tag`. A function template that names Eigen's heavy
/// solvers (eigen-decompositions, QR, matrix functions) through it compiles them only in the
/// translation units that call it: a non-template inline function would instantiate them in
/// every one that includes the header, 4-7 s of compiler front end each (docs/compile_time.md).
template <class Type, class Tag>
struct Deferred {
  using type = Type;  ///< always `Type`
};

/// `Deferred<Type, Tag>::type`.
template <class Type, class Tag>
using deferred_t = typename Deferred<Type, Tag>::type;

/// A dynamic-size row-major Eigen matrix of T (const removed).
template <class T>
using RowMajorMatrix = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An Eigen map over a rank-2 view's memory with its row and column strides (const T: read-only).
template <class T>
using MatrixMap = Eigen::Map<std::conditional_t<std::is_const_v<T>, const RowMajorMatrix<T>, RowMajorMatrix<T>>,
                             Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// A [rows, cols] view as an Eigen map with the view's strides.
template <class T>
MatrixMap<T> as_matrix(const TensorView<T, 2>& view) {
  return MatrixMap<T>(view.data(), view.size(0), view.size(1),
                      Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(view.stride(0), view.stride(1)));
}

/// as_matrix, its type named through `Tag` (see Deferred): a product of such maps inside a
/// function template with a `Deferred` parameter compiles only where that template is called.
template <class Tag, class T>
deferred_t<MatrixMap<T>, Tag> as_deferred_matrix(const TensorView<T, 2>& view) {
  return as_matrix(view);
}

/// An Eigen map over a rank-2 view whose columns are adjacent (stride(1) == 1; the row stride
/// may be negative, as in a reversed view): the inner stride is 1 at compile time, so Eigen's
/// products read the operand in place. With MatrixMap's runtime inner stride a product first
/// copies the operand element by element into a temporary, a loop GCC -O2 leaves scalar.
template <class T>
using RowStrideMap = Eigen::Map<std::conditional_t<std::is_const_v<T>, const RowMajorMatrix<T>, RowMajorMatrix<T>>,
                                Eigen::Unaligned, Eigen::OuterStride<>>;

/// A [rows, cols] view with stride(1) == 1 as a RowStrideMap (debug builds assert the stride).
template <class T>
RowStrideMap<T> as_row_stride_matrix(const TensorView<T, 2>& view) {
  assert(view.stride(1) == 1 || view.size(1) <= 1);
  return RowStrideMap<T>(view.data(), view.size(0), view.size(1), Eigen::OuterStride<>(view.stride(0)));
}

/// as_row_stride_matrix, its type named through `Tag` (see Deferred).
template <class Tag, class T>
deferred_t<RowStrideMap<T>, Tag> as_deferred_row_stride_matrix(const TensorView<T, 2>& view) {
  return as_row_stride_matrix(view);
}

/// as_deferred_row_stride_matrix where kUnitStride (the caller checked stride(1) == 1), else
/// as_deferred_matrix: one function body serves both layouts.
template <class Tag, bool kUnitStride, class T>
auto as_deferred_matrix_for(const TensorView<T, 2>& view) {
  if constexpr (kUnitStride)
    return as_deferred_row_stride_matrix<Tag>(view);
  else
    return as_deferred_matrix<Tag>(view);
}

/// A view over an Eigen row-major matrix (or map) without copying.
template <class Derived>
auto as_view(Eigen::PlainObjectBase<Derived>& matrix) {
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                "as_view expects a row-major matrix");
  using Scalar = typename Derived::Scalar;
  return TensorView<Scalar, 2>(matrix.data(), {matrix.rows(), matrix.cols()},
                               {matrix.outerStride(), matrix.innerStride()});
}

/// Softmax numerators in place: row = exp(row - top), with exp(-inf) exactly 0. Eigen 3.4's
/// vectorized exp clamps its argument on SSE2 builds and returns 2.9e-39 for -inf, so a weight the
/// definition makes 0 would carry a hidden key's inf into the output (docs/reliability.md).
template <class Row>
void softmax_numerators_in_place(Row&& row, typename std::decay_t<Row>::Scalar top) {
  using Scalar = typename std::decay_t<Row>::Scalar;
  const Scalar minus_inf = -std::numeric_limits<Scalar>::infinity();
  row = (row.array() == minus_inf).select(Scalar(0), (row.array() - top).exp()).matrix();
}

}  // namespace seqmix
