// Zero-copy interop between 2-D tensor views and Eigen.
//
// A rank-2 view maps to an Eigen row-major matrix whose outer stride is the row stride and whose
// inner stride is the column stride, so a slice of a [B,T,H,D] tensor (e.g. the [T,D] rows of one
// batch and head) becomes an Eigen expression without copying.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "seqmix/core/tensor.hpp"

namespace seqmix {

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

/// A view over an Eigen row-major matrix (or map) without copying.
template <class Derived>
auto as_view(Eigen::PlainObjectBase<Derived>& matrix) {
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                "as_view expects a row-major matrix");
  using Scalar = typename Derived::Scalar;
  return TensorView<Scalar, 2>(matrix.data(), {matrix.rows(), matrix.cols()},
                               {matrix.outerStride(), matrix.innerStride()});
}

}  // namespace seqmix
