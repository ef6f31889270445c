// Scan direction: running a recurrent operator from the last token to the first without copying
// its input, and the bidirectional combinator (forward + reverse, merged).
//
// A reversed sequence is a view: TensorView strides may be negative, so reversed_view() points at
// the last token and negates the time stride. Every recurrent operator reaches its tokens through
// the time stride as a pointer step, so its `reverse` option reverses the views of every
// token-indexed argument (inputs, outputs, token_states) and runs the forward code on them:
// nothing is copied, and states mean the same thing mirrored (the state after token t is the state
// having consumed tokens T-1, ..., t; the final state is the one after token 0, and an initial
// state is the one "after token T").
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <utility>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// The same elements with dimension `dim` running backwards: element i along `dim` of the result
/// is element size(dim) - 1 - i of `view`. No copy; an empty view or an extent of 0 or 1 is
/// returned as it is.
template <class T, std::size_t Rank>
TensorView<T, Rank> reversed_view(const TensorView<T, Rank>& view, std::size_t dim) {
  if (dim >= Rank) throw std::out_of_range("seqmix::reversed_view: dimension " + std::to_string(dim) + " out of range");
  if (!view.has_value() || view.size(dim) <= 1) return view;
  auto strides = view.strides();
  T* last = view.data() + (view.size(dim) - 1) * strides[dim];
  strides[dim] = -strides[dim];
  return TensorView<T, Rank>(last, view.shape(), strides);
}

/// reversed_view along the token axis of the token-major layouts (dimension 1 of [B,T,...]).
template <class T, std::size_t Rank>
TensorView<T, Rank> reversed_time_view(const TensorView<T, Rank>& view) {
  static_assert(Rank >= 2, "token-major views are [B,T,...]");
  return reversed_view(view, 1);
}

namespace detail {

// The reverse option reverses each batch row; packed sequences ([1, total_T] with cu_seqlens)
// would come out in reverse order with reversed offsets, which needs a rewritten index list, so
// they are refused for now.
inline void check_reversible(const char* op, const SequenceBatch& batch, bool reverse) {
  if (reverse && batch.packed())
    throw ShapeError(op, "options.reverse",
                     "is not supported with packed sequences (batch.cu_seqlens); give a dense batch");
}

// Replaces each view by its reversed_time_view: the token-indexed arguments of a reverse call.
template <class... Views>
void reverse_time_of(Views&... views) {
  ((views = reversed_time_view(views)), ...);
}

// The options of a reverse call with the direction taken out: the reversed views then run forward.
template <class Options>
Options forward_options(Options options) {
  options.reverse = false;
  return options;
}

// Elementwise dst += src over equal shapes (any strides).
template <std::size_t Rank>
void accumulate_into(const ConstView<float, Rank>& src, const TensorView<float, Rank>& dst) {
  if constexpr (Rank == 1) {
    for (index_t i = 0; i < src.size(0); ++i) dst(i) += src(i);
  } else {
    for (index_t i = 0; i < src.size(0); ++i) accumulate_into(src[i], dst[i]);
  }
}

}  // namespace detail

/// How bidirectional() merges the forward and the reverse outputs.
enum class BidirectionalMerge {
  sum,     ///< y = forward + reverse (same shape)
  concat,  ///< y = [forward, reverse] along options.concat_dim (y's extent there is twice)
  mix,     ///< y = mix(forward, reverse), a caller-given function (same shape)
};

/// Options of bidirectional().
struct BidirectionalOptions {
  /// How the two directions are merged.
  BidirectionalMerge merge = BidirectionalMerge::sum;
  /// Dimension that BidirectionalMerge::concat doubles; -1 = the last (channels).
  int concat_dim = -1;
};

/// The merge function of BidirectionalMerge::mix: writes `out` from the forward and reverse
/// outputs (all three of y's shape; `out` is y itself).
template <std::size_t Rank>
using BidirectionalMix =
    std::function<void(ConstView<float, Rank> forward, ConstView<float, Rank> reverse, TensorView<float, Rank> out)>;

/// Runs an operator in both directions and merges the outputs into y.
///   run(reverse, y_dir)  the caller's call of the operator with options.reverse = `reverse`,
///                        writing its output to `y_dir` (y's shape; for concat, y's shape with
///                        the concat dimension halved)
/// The reverse direction runs first, so an operator that refuses its reverse call (a packed
/// batch) leaves y untouched. Scratch: one output-sized buffer for sum, two for mix, none for
/// concat (each direction writes its half of y through a view). States the closure writes are
/// its own business (give each direction its own state rows).
template <std::size_t Rank, class Run>
void bidirectional(Run&& run, TensorView<float, Rank> y, const BidirectionalOptions& options = {},
                   const BidirectionalMix<Rank>& mix = {}) {
  const ArgCheck check("bidirectional");
  check.shape("y", y, [] { std::array<index_t, Rank> any{}; any.fill(-1); return any; }(), "any");
  check.that(y.has_value() || y.empty(), "y", "is required");
  const auto merge = options.merge;
  check.that(merge == BidirectionalMerge::sum || merge == BidirectionalMerge::concat || merge == BidirectionalMerge::mix,
             "options.merge", "must be sum, concat or mix");
  if (merge == BidirectionalMerge::mix) check.that(static_cast<bool>(mix), "mix", "is required for BidirectionalMerge::mix");
  if (merge == BidirectionalMerge::concat) {
    const int dim = options.concat_dim < 0 ? static_cast<int>(Rank) + options.concat_dim : options.concat_dim;
    check.that(dim >= 0 && dim < static_cast<int>(Rank), "options.concat_dim",
               "must name a dimension of y (or be negative, from the end), got " + std::to_string(options.concat_dim));
    const auto d = static_cast<std::size_t>(dim);
    check.that(y.size(d) % 2 == 0, "y",
               "has shape " + shape_to_string(y.shape()) + ": concat needs an even extent in dimension " +
                   std::to_string(dim));
    const index_t half = y.size(d) / 2;
    run(true, y.slice(d, half, half));
    run(false, y.slice(d, 0, half));
    return;
  }
  Tensor<float, Rank> backward(y.shape());
  run(true, backward.view());
  if (merge == BidirectionalMerge::sum) {
    run(false, y);
    detail::accumulate_into<Rank>(backward.view().as_const(), y);
    return;
  }
  Tensor<float, Rank> forward(y.shape());
  run(false, forward.view());
  mix(forward.view().as_const(), backward.view().as_const(), y);
}

}  // namespace seqmix
