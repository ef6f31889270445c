// Errors raised by seqmix's public entry points, and the helper that validates arguments.
//
// Every public operator validates all of its arguments before it writes any output. A failed
// check throws seqmix::ShapeError (a std::invalid_argument), whose message names the operator,
// the argument, what was expected and what was given, e.g.
//   seqmix::ssd: argument 'dt' must have shape [B,T,H] = [2, 64, 4], got [2, 64, 3]
//
// This is the one validation layer of the library: every operator checks its views with
// ArgCheck::shape / optional_shape, which refuse, besides a wrong shape, what no caller means on
// purpose: a negative extent, an element count or element span (sum of (extent-1)*|stride|) that
// overflows index_t, and a null pointer with a non-zero extent. Index arithmetic inside the
// operators may then assume that every offset within a view fits index_t. The free helpers
// below (checked_product, check_enum, check_positions) and ArgCheck::no_overlap serve the
// arguments that are not views. All of them are for public entry points only (they cost a few
// integer operations per argument), never for inner loops.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace seqmix {

/// Signed integer of every extent, stride, index and position in the API (64-bit on 64-bit
/// targets, like ggml's int64_t extents).
using index_t = std::ptrdiff_t;

/// Thrown by every operator for bad arguments (shapes, strides, options, indices, overlaps) before
/// any output or state is written. what() reads "seqmix::<op>: argument '<name>' <problem>".
class ShapeError : public std::invalid_argument {
 public:
  /// `op`: the operator (without "seqmix::"); `argument`: the argument's name; `problem`: what is
  /// wrong with it, naming the expected and the actual shape where there is one.
  ShapeError(const std::string& op, const std::string& argument, const std::string& problem)
      : std::invalid_argument("seqmix::" + op + ": argument '" + argument + "' " + problem),
        op_(op),
        argument_(argument) {}

  /// The operator that refused the call.
  const std::string& op() const noexcept { return op_; }
  /// The argument that was wrong.
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string op_;
  std::string argument_;
};

/// A shape as "[2, 3, 4]", the form every error message uses.
template <std::size_t Rank>
std::string shape_to_string(const std::array<index_t, Rank>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < Rank; ++d) out << (d ? ", " : "") << shape[d];
  out << ']';
  return out.str();
}

/// An expected shape, where -1 (any extent) prints as '*': "[2, *, 4]".
template <std::size_t Rank>
std::string expected_shape_to_string(const std::array<index_t, Rank>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < Rank; ++d) {
    out << (d ? ", " : "");
    if (shape[d] < 0)
      out << '*';
    else
      out << shape[d];
  }
  out << ']';
  return out.str();
}

/// Positions (token indices, cache positions, lengths counted from them) must lie in
/// [0, kMaxPosition): 2^62 leaves room for the sums and differences an operator forms from a
/// position and a length or window (p + T, p - window, -100 - p) without overflowing index_t.
constexpr index_t kMaxPosition = index_t{1} << 62;

namespace detail {

constexpr index_t kIndexMax = std::numeric_limits<index_t>::max();

// a * b for a, b >= 0; false (and *out untouched) when it does not fit index_t.
inline bool checked_mul(index_t a, index_t b, index_t* out) noexcept {
  if (a != 0 && b > kIndexMax / a) return false;
  *out = a * b;
  return true;
}

// a + b for a, b >= 0; false when it does not fit index_t.
inline bool checked_add(index_t a, index_t b, index_t* out) noexcept {
  if (b > kIndexMax - a) return false;
  *out = a + b;
  return true;
}

// The product of a shape's extents (all >= 0); false when it overflows index_t.
template <std::size_t Rank>
bool element_count(const std::array<index_t, Rank>& shape, index_t* out) noexcept {
  index_t count = 1;
  bool fits = true;
  for (const index_t extent : shape) fits = checked_mul(count, extent, &count) && fits;
  // A zero extent makes the count zero however large the others are.
  for (const index_t extent : shape) if (extent == 0) count = 0, fits = true;
  *out = count;
  return fits;
}

// |stride| * (extent - 1) summed over the dimensions, in elements: the distance between a
// view's lowest and highest element. False when it overflows index_t (a stride of INT64_MIN
// has no magnitude in index_t either). Meaningful for views with no zero extent.
template <std::size_t Rank>
bool element_span(const std::array<index_t, Rank>& shape, const std::array<index_t, Rank>& strides,
                  index_t* out) noexcept {
  index_t span = 0;
  for (std::size_t d = 0; d < Rank; ++d) {
    if (shape[d] <= 1) continue;
    if (strides[d] == std::numeric_limits<index_t>::min()) return false;
    const index_t magnitude = strides[d] < 0 ? -strides[d] : strides[d];
    index_t step = 0;
    if (!checked_mul(magnitude, shape[d] - 1, &step) || !checked_add(span, step, &span)) return false;
  }
  *out = span;
  return true;
}

// The address range [first, last) of a validated, non-empty view's elements, as integers (so
// that views of unrelated objects compare without undefined pointer comparisons).
template <class View>
std::pair<std::uintptr_t, std::uintptr_t> address_range(const View& view) noexcept {
  constexpr auto size = static_cast<std::uintptr_t>(sizeof(*view.data()));
  std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(view.data()), hi = lo;
  for (std::size_t d = 0; d < View::rank; ++d) {
    if (view.size(d) <= 1) continue;
    const auto step = static_cast<std::uintptr_t>(view.size(d) - 1) * size;
    if (view.stride(d) < 0)
      lo -= step * static_cast<std::uintptr_t>(-view.stride(d));
    else
      hi += step * static_cast<std::uintptr_t>(view.stride(d));
  }
  return {lo, hi + size};
}

template <class Extent>
index_t extent_value(const std::string& op, const char* argument, Extent extent) {
  static_assert(std::is_integral_v<Extent>, "extents are integers");
  if constexpr (std::is_signed_v<Extent>) {
    if (extent < 0) throw ShapeError(op, argument, "has a negative extent " + std::to_string(extent));
  }
  if (static_cast<std::make_unsigned_t<Extent>>(extent) > static_cast<std::uint64_t>(kIndexMax))
    throw ShapeError(op, argument, "has an extent " + std::to_string(extent) + " beyond index_t");
  return static_cast<index_t>(extent);
}

}  // namespace detail

/// The product of extents, for sizes computed from several arguments before an allocation or an
/// index computation (e.g. a cache's heads * pages * page_size * dim). Throws ShapeError naming
/// `argument` when an extent is negative or the product overflows index_t.
///   const index_t elements = checked_product("KvCache", "config", heads, pages, page_size, dim);
template <class... Extents>
index_t checked_product(const std::string& op, const char* argument, Extents... extents) {
  const index_t values[] = {index_t{1}, detail::extent_value(op, argument, extents)...};
  index_t product = 1;
  for (const index_t value : values) {
    if (!detail::checked_mul(product, value, &product)) {
      std::ostringstream msg;
      msg << "describes " << (sizeof...(Extents) > 1 ? "extents" : "an extent");
      for (std::size_t i = 1; i < sizeof...(Extents) + 1; ++i) msg << (i > 1 ? " * " : " ") << values[i];
      msg << " whose product overflows index_t";
      throw ShapeError(op, argument, msg.str());
    }
  }
  return product;
}

/// Enum arguments read from configs or files: the value must be one of the `count` enumerators
/// 0 .. count-1 (an out-of-range value would index a table or select no branch at all).
template <class Enum>
void check_enum(const std::string& op, const char* argument, Enum value, int count) {
  static_assert(std::is_enum_v<Enum> || std::is_integral_v<Enum>, "check_enum takes an enum");
  long long raw = 0;
  if constexpr (std::is_enum_v<Enum>)
    raw = static_cast<long long>(static_cast<std::underlying_type_t<Enum>>(value));
  else
    raw = static_cast<long long>(value);
  if (raw < 0 || raw >= count) {
    std::ostringstream msg;
    msg << "has value " << raw << ", outside the " << count << " valid values 0.." << count - 1;
    throw ShapeError(op, argument, msg.str());
  }
}

/// Positions [first, first + count) (count >= 0 tokens from position `first`) must lie within
/// [0, kMaxPosition), so that position arithmetic cannot overflow.
inline void check_positions(const std::string& op, const char* argument, index_t first, index_t count = 1) {
  if (first < 0 || count < 0 || first > kMaxPosition - count) {
    std::ostringstream msg;
    msg << "covers positions [" << first << ", " << first << " + " << count
        << "), which must lie within [0, 2^62)";
    throw ShapeError(op, argument, msg.str());
  }
}

/// Validates the arguments of one operator call, one readable line per argument:
///   ArgCheck check("ssd");
///   check.shape("x", x, {B, T, H, P}, "B,T,H,P").shape("dt", dt, {B, T, H}, "B,T,H");
///   check.optional_shape("D", D, {H}, "H");
///   check.that(P > 0, "x", "must have a non-empty head dimension P");
/// An expected extent of -1 accepts any size (used where a dimension is only constrained by
/// another argument).
class ArgCheck {
 public:
  /// `op` names the operator in every message (a static ArgCheck keeps a hot path allocation-free).
  explicit ArgCheck(std::string op) : op_(std::move(op)) {}

  /// The operator name the messages carry.
  const std::string& op() const noexcept { return op_; }

  /// View must be a valid layout (see layout()), non-null unless it has no elements, and match
  /// `expected` exactly. The rank comes from the view, so the expected shape can be written as a
  /// braced list. An expected extent below -1 (one computed from a negative size) is refused too.
  template <class View>
  const ArgCheck& shape(const char* argument, const View& view,
                        const std::array<index_t, View::rank>& expected, const char* dims) const {
    const index_t count = layout(argument, view);
    bool matches = true, negative = false;
    for (std::size_t d = 0; d < View::rank; ++d) {
      if (expected[d] >= 0 && view.size(d) != expected[d]) matches = false;
      if (expected[d] < -1) negative = true;
    }
    if (!matches || negative) {
      throw ShapeError(op_, argument,
                       std::string("must have shape [") + dims + "] = " +
                           expected_shape_to_string(expected) + ", got " + shape_to_string(view.shape()) +
                           (negative ? " (the expected shape has a negative extent)" : ""));
    }
    if (view.data() == nullptr && count > 0)
      throw ShapeError(op_, argument, "has shape " + shape_to_string(view.shape()) +
                                          " but a null data pointer");
    return *this;
  }

  /// Same, but an empty (default-constructed) view means "not given" and passes.
  template <class View>
  const ArgCheck& optional_shape(const char* argument, const View& view,
                                 const std::array<index_t, View::rank>& expected,
                                 const char* dims) const {
    if (view.data() == nullptr && layout(argument, view) == 0) return *this;
    return shape(argument, view, expected, dims);
  }

  /// The layout checks of shape() alone, for views whose shape is checked otherwise: no negative
  /// extent, element count and element span within index_t. Returns the element count.
  template <class View>
  index_t layout(const char* argument, const View& view) const {
    for (std::size_t d = 0; d < View::rank; ++d)
      if (view.size(d) < 0)
        throw ShapeError(op_, argument, "has a negative extent in shape " + shape_to_string(view.shape()));
    index_t count = 0;
    if (!detail::element_count(view.shape(), &count))
      throw ShapeError(op_, argument, "has shape " + shape_to_string(view.shape()) +
                                          ", whose element count overflows index_t");
    index_t span = 0;
    if (count > 0 && (!detail::element_span(view.shape(), view.strides(), &span) ||
                      span > detail::kIndexMax / static_cast<index_t>(sizeof(*view.data())))) {
      throw ShapeError(op_, argument, "has shape " + shape_to_string(view.shape()) + " and strides " +
                                          shape_to_string(view.strides()) +
                                          ", whose memory span overflows index_t");
    }
    return count;
  }

  /// Refuses two views that share memory where the operator forbids aliasing (an output written
  /// while an input that overlaps it is still to be read). Empty or absent views never overlap.
  /// Call after both views passed shape() (their spans are then known to fit).
  template <class ViewA, class ViewB>
  const ArgCheck& no_overlap(const char* a_name, const ViewA& a, const char* b_name, const ViewB& b) const {
    if (a.data() == nullptr || b.data() == nullptr || layout(a_name, a) == 0 || layout(b_name, b) == 0)
      return *this;
    const auto ra = detail::address_range(a), rb = detail::address_range(b);
    if (ra.first < rb.second && rb.first < ra.second)
      fail(a_name, std::string("overlaps argument '") + b_name + "' in memory, which this operator does not allow");
    return *this;
  }

  /// Free-function checks bound to this operator (see checked_product, check_enum,
  /// check_positions above).
  template <class... Extents>
  index_t product(const char* argument, Extents... extents) const {
    return checked_product(op_, argument, extents...);
  }
  /// check_enum bound to this operator: `value` must be one of the enum's first `count` values.
  template <class Enum>
  const ArgCheck& enum_value(const char* argument, Enum value, int count) const {
    check_enum(op_, argument, value, count);
    return *this;
  }
  /// check_positions bound to this operator: positions [first, first + count) fit int64 arithmetic.
  const ArgCheck& positions(const char* argument, index_t first, index_t count = 1) const {
    check_positions(op_, argument, first, count);
    return *this;
  }

  /// Fails with `problem` about `argument` unless `condition` holds.
  const ArgCheck& that(bool condition, const char* argument, const std::string& problem) const {
    if (!condition) fail(argument, problem);
    return *this;
  }

  /// For checks whose message is costly to format: test first, then call fail() to throw.
  [[noreturn]] void fail(const char* argument, const std::string& problem) const {
    throw ShapeError(op_, argument, problem);
  }

  /// For a value that must divide another (grouped heads): names both counts in the message.
  const ArgCheck& divides(index_t small, index_t large, const char* argument,
                          const char* what) const {
    if (small <= 0 || large % small != 0) {
      std::ostringstream msg;
      msg << "has " << small << ' ' << what << ", which must divide " << large;
      throw ShapeError(op_, argument, msg.str());
    }
    return *this;
  }

  /// A value that must be finite (e.g. a scale or a log-gate parameter).
  const ArgCheck& finite(double value, const char* argument) const {
    if (!std::isfinite(value)) {
      std::ostringstream msg;
      msg << "must be finite, got " << value;
      throw ShapeError(op_, argument, msg.str());
    }
    return *this;
  }

 private:
  std::string op_;
};

}  // namespace seqmix
