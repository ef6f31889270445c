// ArgCheck / ShapeError: every failure names the operator, the argument, what was expected and
// what was given.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace {

using Catch::Contains;
using seqmix::ArgCheck;
using seqmix::index_t;
using seqmix::ShapeError;

// Expected shapes are std::arrays: the rank cannot be deduced from a bare braced list.
template <std::size_t Rank>
using Dims = std::array<index_t, Rank>;

// Runs f, which must throw ShapeError, and returns the error for inspection.
template <class F>
ShapeError expect_shape_error(F&& f) {
  try {
    f();
  } catch (const ShapeError& error) {
    return error;
  }
  FAIL("expected seqmix::ShapeError");
  throw std::logic_error("unreachable");
}

}  // namespace

static_assert(std::is_base_of_v<std::invalid_argument, ShapeError>);

TEST_CASE("shape mismatch names op, argument, dims, expected and actual shape", "[errors]") {
  std::vector<float> buffer(2 * 64 * 3);
  const seqmix::ConstView<float, 3> dt(buffer.data(), {2, 64, 3});
  const ArgCheck check("ssd");
  const ShapeError error = expect_shape_error([&] { check.shape("dt", dt, Dims<3>{2, 64, 4}, "B,T,H"); });
  CHECK(std::string(error.what()) == "seqmix::ssd: argument 'dt' must have shape [B,T,H] = [2, 64, 4], got [2, 64, 3]");
  CHECK(error.op() == "ssd");
  CHECK(error.argument() == "dt");
  CHECK(check.op() == "ssd");

  // A ShapeError is caught as std::invalid_argument too.
  CHECK_THROWS_AS(check.shape("dt", dt, Dims<3>{2, 63, 3}, "B,T,H"), std::invalid_argument);
  CHECK_THROWS_WITH(check.shape("dt", dt, Dims<3>{1, 64, 3}, "B,T,H"),
                    Contains("seqmix::ssd") && Contains("'dt'") && Contains("[B,T,H]") &&
                        Contains("[1, 64, 3]") && Contains("got [2, 64, 3]"));
}

TEST_CASE("matching shapes pass, -1 accepts any extent, checks chain", "[errors]") {
  std::vector<float> buffer(2 * 5 * 4 * 8);
  const seqmix::ConstView<float, 4> x(buffer.data(), {2, 5, 4, 8});
  const seqmix::ConstView<float, 2> d(buffer.data(), {4, 8});
  const ArgCheck check("gla");
  CHECK_NOTHROW(check.shape("x", x, Dims<4>{2, 5, 4, 8}, "B,T,H,D").shape("d", d, Dims<2>{4, 8}, "H,D"));
  CHECK_NOTHROW(check.shape("x", x, Dims<4>{2, -1, 4, -1}, "B,T,H,D"));
  // The wildcard prints as '*' when another extent is wrong.
  CHECK_THROWS_WITH(check.shape("x", x, Dims<4>{3, -1, 4, 8}, "B,T,H,D"),
                    Contains("[B,T,H,D] = [3, *, 4, 8], got [2, 5, 4, 8]"));
  // A failure later in the chain is reported with its own argument name.
  const ShapeError error = expect_shape_error([&] { check.shape("x", x, Dims<4>{2, 5, 4, 8}, "B,T,H,D").shape("d", d, Dims<2>{4, 7}, "H,D"); });
  CHECK(error.argument() == "d");
  // Strided views are checked by shape, not by layout.
  CHECK_NOTHROW(check.shape("x_t", x.select(3, 1), Dims<3>{2, 5, 4}, "B,T,H"));
}

TEST_CASE("optional_shape passes empty views and checks given ones", "[errors]") {
  std::vector<float> buffer(16);
  const ArgCheck check("selective_scan");
  const seqmix::ConstView<float, 1> absent;
  CHECK_NOTHROW(check.optional_shape("D", absent, Dims<1>{16}, "H"));
  const seqmix::ConstView<float, 1> given(buffer.data(), {16});
  CHECK_NOTHROW(check.optional_shape("D", given, Dims<1>{16}, "H"));
  CHECK_THROWS_WITH(check.optional_shape("D", given, Dims<1>{8}, "H"),
                    Contains("seqmix::selective_scan") && Contains("'D'") && Contains("[H] = [8], got [16]"));
  // An explicitly zero-sized but non-null view is "given" and must match.
  const seqmix::ConstView<float, 1> zero(buffer.data(), {0});
  CHECK_THROWS_AS(check.optional_shape("D", zero, Dims<1>{16}, "H"), ShapeError);
}

TEST_CASE("null data with a non-zero shape throws", "[errors]") {
  const ArgCheck check("attention");
  const seqmix::ConstView<float, 2> null_view(nullptr, {3, 4});
  const ShapeError error = expect_shape_error([&] { check.shape("q", null_view, Dims<2>{3, 4}, "T,D"); });
  CHECK(error.argument() == "q");
  CHECK_THAT(std::string(error.what()), Contains("[3, 4]") && Contains("null"));
  CHECK_THROWS_AS(check.optional_shape("q", null_view, Dims<2>{3, 4}, "T,D"), ShapeError);
  // No elements, no data needed.
  const seqmix::ConstView<float, 2> empty(nullptr, {0, 4});
  CHECK_NOTHROW(check.shape("q", empty, Dims<2>{0, 4}, "T,D"));
}

TEST_CASE("divides, finite and that messages", "[errors]") {
  const ArgCheck check("attention");
  CHECK_NOTHROW(check.divides(2, 8, "k", "KV heads"));
  CHECK_NOTHROW(check.divides(8, 8, "k", "KV heads"));
  CHECK(std::string(expect_shape_error([&] { check.divides(3, 8, "k", "KV heads"); }).what()) ==
        "seqmix::attention: argument 'k' has 3 KV heads, which must divide 8");
  CHECK_THROWS_AS(check.divides(0, 8, "k", "KV heads"), ShapeError);
  CHECK_THROWS_AS(check.divides(-2, 8, "k", "KV heads"), ShapeError);

  CHECK_NOTHROW(check.finite(0.125, "scale"));
  CHECK_NOTHROW(check.finite(-1e30, "scale"));
  const ShapeError nan_error = expect_shape_error([&] { check.finite(std::nan(""), "scale"); });
  CHECK(nan_error.argument() == "scale");
  CHECK_THAT(std::string(nan_error.what()), Contains("seqmix::attention: argument 'scale' must be finite, got"));
  CHECK_THROWS_WITH(check.finite(std::numeric_limits<double>::infinity(), "softcap"),
                    Contains("'softcap' must be finite, got inf"));

  CHECK_NOTHROW(check.that(true, "window", "must be positive"));
  CHECK_THROWS_WITH(check.that(false, "window", "must be positive, got -3"),
                    "seqmix::attention: argument 'window' must be positive, got -3");
}

TEST_CASE("ShapeError can be constructed and caught directly", "[errors]") {
  const ShapeError error("rwkv6", "u", "must be given");
  CHECK(error.op() == "rwkv6");
  CHECK(error.argument() == "u");
  CHECK(std::string(error.what()) == "seqmix::rwkv6: argument 'u' must be given");
  CHECK(seqmix::shape_to_string(std::array<index_t, 3>{1, 2, 3}) == "[1, 2, 3]");
  CHECK(seqmix::shape_to_string(std::array<index_t, 1>{0}) == "[0]");
}
