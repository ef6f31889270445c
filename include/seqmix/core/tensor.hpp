// Non-owning strided tensor view, and a small aligned owning tensor for tests and examples.
//
// Element [i0, i1, ..., iR-1] of a view lives at data()[i0*stride(0) + ... + iR-1*stride(R-1)];
// strides count elements, not bytes, and may be any value (including 0 for broadcasting).
// Operators take views and never own caller memory.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/huge_pages.hpp"

namespace seqmix {

namespace detail {

// a * b wrapping around like unsigned arithmetic: views are built from any shape the caller
// gives (validation refuses the overflowing ones later, with a message), so building one must
// not be undefined behaviour.
constexpr index_t wrapping_mul(index_t a, index_t b) noexcept {
  return static_cast<index_t>(static_cast<std::uint64_t>(a) * static_cast<std::uint64_t>(b));
}

template <std::size_t Rank>
std::array<index_t, Rank> contiguous_strides(const std::array<index_t, Rank>& shape) {
  std::array<index_t, Rank> strides{};
  index_t stride = 1;
  for (std::size_t d = Rank; d-- > 0;) {
    strides[d] = stride;
    stride = wrapping_mul(stride, shape[d]);
  }
  return strides;
}

// The failure of debug_check_index, out of line: with the message built inline the check was
// not inlined at -O1 and every element access paid for the string stream's frame (under
// AddressSanitizer a third of a reference-heavy test's time).
[[noreturn, gnu::noinline, gnu::cold]] inline void throw_index_out_of_range(index_t i, index_t extent,
                                                                             std::size_t dim) {
  std::ostringstream msg;
  msg << "seqmix::TensorView: index " << i << " out of range [0, " << extent << ") in dimension " << dim;
  throw std::out_of_range(msg.str());
}

// Bounds checks compiled into debug builds only: element access sits in inner loops.
inline void debug_check_index(index_t i, index_t extent, std::size_t dim) {
#ifndef NDEBUG
  if (i < 0 || i >= extent) throw_index_out_of_range(i, extent, dim);
#else
  (void)i, (void)extent, (void)dim;
#endif
}

}  // namespace detail

/// Non-owning strided view of a rank-`Rank` tensor of `T` (const T for read-only arguments).
/// Element [i0, ..., iR-1] is at data()[i0 * stride(0) + ... + iR-1 * stride(R-1)]; strides
/// count elements and may be anything, 0 included (broadcast). Copying a view copies the handle.
template <class T, std::size_t Rank>
class TensorView {
  static_assert(Rank >= 1, "TensorView needs at least one dimension");

 public:
  /// The element type without const.
  using value_type = std::remove_const_t<T>;
  /// `T` as given (const for a read-only view).
  using element_type = T;
  /// Extents or strides, one per dimension.
  using shape_type = std::array<index_t, Rank>;
  /// Number of dimensions.
  static constexpr std::size_t rank = Rank;

  /// An empty view: data() == nullptr, all extents 0. Used for "optional argument not given".
  TensorView() = default;

  /// Contiguous row-major view (last dimension fastest).
  TensorView(T* data, const shape_type& shape)
      : data_(data), shape_(shape), strides_(detail::contiguous_strides(shape)) {}

  /// Strided view: element [i...] at data[sum_d i_d * strides[d]] (strides in elements).
  TensorView(T* data, const shape_type& shape, const shape_type& strides)
      : data_(data), shape_(shape), strides_(strides) {}

  /// A mutable view converts to a read-only one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U, Rank>& other)  // NOLINT: implicit by design
      : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

  /// Pointer to element [0, ..., 0] (nullptr for an empty view).
  T* data() const noexcept { return data_; }
  /// Extents of every dimension.
  const shape_type& shape() const noexcept { return shape_; }
  /// Strides of every dimension, in elements.
  const shape_type& strides() const noexcept { return strides_; }
  /// Extent of dimension `dim`.
  index_t size(std::size_t dim) const noexcept { return shape_[dim]; }
  /// Stride of dimension `dim`, in elements.
  index_t stride(std::size_t dim) const noexcept { return strides_[dim]; }
  /// False for the default-constructed view (an optional argument not given).
  bool has_value() const noexcept { return data_ != nullptr; }

  /// Wraps around for shapes beyond index_t, which ArgCheck refuses.
  index_t numel() const noexcept {
    index_t n = 1;
    for (index_t extent : shape_) n = detail::wrapping_mul(n, extent);
    return n;
  }
  /// True when some extent is 0.
  bool empty() const noexcept { return numel() == 0; }

  /// True when the elements are densely packed in row-major order.
  bool is_contiguous() const noexcept {
    index_t expected = 1;
    for (std::size_t d = Rank; d-- > 0;) {
      if (shape_[d] != 1 && strides_[d] != expected) return false;
      expected = detail::wrapping_mul(expected, shape_[d]);
    }
    return true;
  }
  /// True when the last dimension has unit stride (what SIMD fast paths need).
  bool is_last_dim_contiguous() const noexcept { return shape_[Rank - 1] <= 1 || strides_[Rank - 1] == 1; }

  /// Element at the given indices, one per dimension (bounds-checked in debug builds only).
  template <class... Indices>
  T& operator()(Indices... indices) const {
    static_assert(sizeof...(Indices) == Rank, "wrong number of indices");
    const std::array<index_t, Rank> idx{static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
      detail::debug_check_index(idx[d], shape_[d], d);
      offset += idx[d] * strides_[d];
    }
    return data_[offset];
  }

  /// Pointer to the element at the given leading indices (remaining indices zero).
  template <class... Indices>
  T* ptr(Indices... indices) const {
    static_assert(sizeof...(Indices) <= Rank, "too many indices");
    const std::array<index_t, sizeof...(Indices)> idx{static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (std::size_t d = 0; d < sizeof...(Indices); ++d) {
      detail::debug_check_index(idx[d], shape_[d], d);
      offset += idx[d] * strides_[d];
    }
    return data_ + offset;
  }

  /// Fixes dimension `dim` at index `i`: a view of one rank less.
  template <std::size_t R = Rank, class = std::enable_if_t<(R > 1)>>
  TensorView<T, Rank - 1> select(std::size_t dim, index_t i) const {
    check_dim(dim);
    detail::debug_check_index(i, shape_[dim], dim);
    std::array<index_t, Rank - 1> shape{}, strides{};
    for (std::size_t d = 0, o = 0; d < Rank; ++d) {
      if (d == dim) continue;
      shape[o] = shape_[d];
      strides[o] = strides_[d];
      ++o;
    }
    // An empty view (no data: an optional argument not given) stays empty: no offset on null.
    return TensorView<T, Rank - 1>(data_ == nullptr ? nullptr : data_ + i * strides_[dim], shape, strides);
  }

  /// Shorthand for select(0, i).
  template <std::size_t R = Rank, class = std::enable_if_t<(R > 1)>>
  TensorView<T, Rank - 1> operator[](index_t i) const {
    return select(0, i);
  }

  /// Sub-view [start, start + length) along dimension `dim`; same rank.
  TensorView slice(std::size_t dim, index_t start, index_t length) const {
    check_dim(dim);
    if (start < 0 || length < 0 || start + length > shape_[dim]) {
      std::ostringstream msg;
      msg << "seqmix::TensorView::slice: range [" << start << ", " << start + length
          << ") does not fit dimension " << dim << " of extent " << shape_[dim];
      throw std::out_of_range(msg.str());
    }
    shape_type shape = shape_;
    shape[dim] = length;
    return TensorView(length > 0 ? data_ + start * strides_[dim] : data_, shape, strides_);
  }

  /// The same elements under another shape; only for contiguous views.
  template <std::size_t NewRank>
  TensorView<T, NewRank> reshape(const std::array<index_t, NewRank>& shape) const {
    // Counted with overflow checks: a hostile shape must not wrap around to a matching count.
    index_t n = 0, own = 0;
    bool valid = detail::element_count(shape, &n) && detail::element_count(shape_, &own) && n == own;
    for (index_t extent : shape) valid = valid && extent >= 0;
    if (!valid || !is_contiguous()) {
      throw ShapeError("TensorView::reshape", "shape",
                       "cannot view " + shape_to_string(shape_) + (is_contiguous() ? "" : " (strided)") +
                           " as " + shape_to_string(shape));
    }
    return TensorView<T, NewRank>(data_, shape);
  }

  /// The same view, read-only.
  TensorView<const T, Rank> as_const() const { return TensorView<const T, Rank>(data_, shape_, strides_); }

 private:
  static void check_dim(std::size_t dim) {
    if (dim >= Rank)
      throw std::out_of_range("seqmix::TensorView: dimension " + std::to_string(dim) +
                              " out of range for rank " + std::to_string(Rank));
  }

  T* data_ = nullptr;
  shape_type shape_{};
  shape_type strides_{};
};

/// A read-only view: what operators take for their inputs.
template <class T, std::size_t Rank>
using ConstView = TensorView<const T, Rank>;

/// Copies a view elementwise into another of the same shape (any strides).
template <class Src, class Dst, std::size_t Rank>
void copy(const TensorView<Src, Rank>& src, const TensorView<Dst, Rank>& dst) {
  if (src.shape() != dst.shape())
    throw std::invalid_argument("seqmix::copy: source shape " + shape_to_string(src.shape()) +
                                " differs from destination shape " + shape_to_string(dst.shape()));
  if constexpr (Rank == 1) {
    for (index_t i = 0; i < src.size(0); ++i) dst(i) = static_cast<std::remove_const_t<Dst>>(src(i));
  } else {
    for (index_t i = 0; i < src.size(0); ++i) copy(src[i], dst[i]);
  }
}

/// Allocator returning 64-byte aligned memory: one cache line, one AVX-512 register. Buffers of
/// kHugePageMinBytes (4 MiB) and more are, on Linux, mappings of their own on a 2 MiB boundary,
/// marked for transparent huge pages (core/huge_pages.hpp): dense decode over a large K/V took
/// 1.04-1.16x the CPU time in 4 KiB pages (attention/README.md, "Huge pages").
template <class T>
struct AlignedAllocator {
  /// Allocator interface (std::allocator_traits).
  ///@{
  using value_type = T;
  static constexpr std::size_t alignment = 64;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  /// Allocates n elements rounded up to whole 64-byte lines; throws std::bad_alloc when refused.
  T* allocate(std::size_t n) {
    if (n == 0) return nullptr;
    if (n > (std::numeric_limits<std::size_t>::max() - 2 * kHugePageBytes) / sizeof(T)) throw std::bad_array_new_length();
    void* p = allocate_maybe_huge(bytes_for(n), alignment);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  /// Frees memory from allocate(n), with the same n (its size decides how it was placed).
  void deallocate(T* p, std::size_t n) noexcept {
    if (p != nullptr) deallocate_maybe_huge(p, bytes_for(n));
  }
  /// All AlignedAllocators are interchangeable.
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const AlignedAllocator<U>&) const noexcept { return false; }
  ///@}

 private:
  // n elements rounded up to whole 64-byte lines.
  static std::size_t bytes_for(std::size_t n) noexcept { return (n * sizeof(T) + alignment - 1) / alignment * alignment; }
};

/// A std::vector whose buffer is 64-byte aligned.
template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

/// A contiguous, 64-byte aligned, zero-initialised owning tensor. For tests, examples and
/// benchmarks; the operators themselves only ever see views.
template <class T, std::size_t Rank>
class Tensor {
 public:
  /// Extents, one per dimension.
  using shape_type = std::array<index_t, Rank>;
  /// Number of dimensions.
  static constexpr std::size_t rank = Rank;

  Tensor() = default;
  /// Allocates shape's elements, zeroed; a negative extent or an overflowing size is a ShapeError.
  explicit Tensor(const shape_type& shape) : shape_(shape), storage_(count(shape)) {}

  /// Pointer to the first element (row-major, contiguous).
  ///@{
  T* data() noexcept { return storage_.data(); }
  const T* data() const noexcept { return storage_.data(); }
  ///@}
  /// Extents of every dimension.
  const shape_type& shape() const noexcept { return shape_; }
  /// Extent of dimension `dim`.
  index_t size(std::size_t dim) const noexcept { return shape_[dim]; }
  /// Number of elements.
  index_t numel() const noexcept { return static_cast<index_t>(storage_.size()); }

  /// A view of the whole tensor (read-only from a const tensor).
  ///@{
  TensorView<T, Rank> view() noexcept { return TensorView<T, Rank>(data(), shape_); }
  TensorView<const T, Rank> view() const noexcept { return TensorView<const T, Rank>(data(), shape_); }
  ///@}
  /// A read-only view of the whole tensor.
  TensorView<const T, Rank> cview() const noexcept { return view(); }
  /// Converts to a view, so a Tensor can be passed where an operator takes one.
  ///@{
  operator TensorView<T, Rank>() noexcept { return view(); }  // NOLINT: implicit by design
  operator TensorView<const T, Rank>() const noexcept { return view(); }  // NOLINT

  ///@}
  /// Element at the given indices, one per dimension.
  ///@{
  template <class... Indices>
  T& operator()(Indices... indices) {
    return view()(indices...);
  }
  template <class... Indices>
  const T& operator()(Indices... indices) const {
    return view()(indices...);
  }

  ///@}
  /// Iterators over every element in memory order.
  ///@{
  T* begin() noexcept { return data(); }
  T* end() noexcept { return data() + numel(); }
  const T* begin() const noexcept { return data(); }
  const T* end() const noexcept { return data() + numel(); }

  ///@}
  /// Sets every element to `value`.
  void fill(const T& value) { std::fill(storage_.begin(), storage_.end(), value); }

 private:
  /// Refuses negative extents, and counts whose elements or bytes overflow, before allocating.
  static std::size_t count(const shape_type& shape) {
    const ArgCheck check("Tensor");
    for (index_t extent : shape)
      check.that(extent >= 0, "shape", "has a negative extent in " + shape_to_string(shape));
    index_t n = 0;
    check.that(detail::element_count(shape, &n) && n <= detail::kIndexMax / static_cast<index_t>(sizeof(T)),
               "shape", shape_to_string(shape) + " holds more bytes than index_t counts");
    return static_cast<std::size_t>(n);
  }

  shape_type shape_{};
  AlignedVector<T> storage_;
};

}  // namespace seqmix
