// Errors raised by seqmix's public entry points, and the helper that validates arguments.
//
// Every public operator validates all of its arguments before it writes any output. A failed
// check throws seqmix::ShapeError (a std::invalid_argument), whose message names the operator,
// the argument, what was expected and what was given, e.g.
//   seqmix::ssd: argument 'dt' must have shape [B,T,H] = [2, 64, 4], got [2, 64, 3]
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace seqmix {

using index_t = std::ptrdiff_t;

class ShapeError : public std::invalid_argument {
 public:
  ShapeError(const std::string& op, const std::string& argument, const std::string& problem)
      : std::invalid_argument("seqmix::" + op + ": argument '" + argument + "' " + problem),
        op_(op),
        argument_(argument) {}

  const std::string& op() const noexcept { return op_; }
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string op_;
  std::string argument_;
};

template <std::size_t Rank>
std::string shape_to_string(const std::array<index_t, Rank>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < Rank; ++d) out << (d ? ", " : "") << shape[d];
  out << ']';
  return out.str();
}

// An expected shape, where -1 (any extent) prints as '*': "[2, *, 4]".
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

// Validates the arguments of one operator call, one readable line per argument:
//   ArgCheck check("ssd");
//   check.shape("x", x, {B, T, H, P}, "B,T,H,P").shape("dt", dt, {B, T, H}, "B,T,H");
//   check.optional_shape("D", D, {H}, "H");
//   check.that(P > 0, "x", "must have a non-empty head dimension P");
// An expected extent of -1 accepts any size (used where a dimension is only constrained by
// another argument).
class ArgCheck {
 public:
  explicit ArgCheck(std::string op) : op_(std::move(op)) {}

  const std::string& op() const noexcept { return op_; }

  // View must be non-null (unless it has no elements) and match `expected` exactly.
  // The rank comes from the view, so the expected shape can be written as a braced list.
  template <class View>
  const ArgCheck& shape(const char* argument, const View& view,
                        const std::array<index_t, View::rank>& expected, const char* dims) const {
    bool matches = true;
    for (std::size_t d = 0; d < View::rank; ++d)
      if (expected[d] >= 0 && view.size(d) != expected[d]) matches = false;
    if (!matches) {
      throw ShapeError(op_, argument,
                       std::string("must have shape [") + dims + "] = " +
                           expected_shape_to_string(expected) + ", got " + shape_to_string(view.shape()));
    }
    if (view.data() == nullptr && view.numel() > 0)
      throw ShapeError(op_, argument, "has shape " + shape_to_string(view.shape()) +
                                          " but a null data pointer");
    return *this;
  }

  // Same, but an empty (default-constructed) view means "not given" and passes.
  template <class View>
  const ArgCheck& optional_shape(const char* argument, const View& view,
                                 const std::array<index_t, View::rank>& expected,
                                 const char* dims) const {
    if (view.data() == nullptr && view.numel() == 0) return *this;
    return shape(argument, view, expected, dims);
  }

  const ArgCheck& that(bool condition, const char* argument, const std::string& problem) const {
    if (!condition) fail(argument, problem);
    return *this;
  }

  // For checks whose message is costly to format: test first, then call fail() to throw.
  [[noreturn]] void fail(const char* argument, const std::string& problem) const {
    throw ShapeError(op_, argument, problem);
  }

  // For a value that must divide another (grouped heads): names both counts in the message.
  const ArgCheck& divides(index_t small, index_t large, const char* argument,
                          const char* what) const {
    if (small <= 0 || large % small != 0) {
      std::ostringstream msg;
      msg << "has " << small << ' ' << what << ", which must divide " << large;
      throw ShapeError(op_, argument, msg.str());
    }
    return *this;
  }

  // A value that must be finite (e.g. a scale or a log-gate parameter).
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
