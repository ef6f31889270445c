// ArgCheck / ShapeError: every failure names the operator, the argument, what was expected and
// what was given.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
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

// --- hostile layouts (issue 24): negative extents, overflowing counts and spans --------------

namespace {

constexpr index_t kMax = std::numeric_limits<index_t>::max();
constexpr index_t kMin = std::numeric_limits<index_t>::min();
constexpr index_t k2to62 = index_t{1} << 62;

}  // namespace

TEST_CASE("negative extents are refused in the view and in the expected shape", "[errors][hostile]") {
  std::vector<float> buffer(64);
  const ArgCheck check("attention");
  const seqmix::ConstView<float, 2> negative(buffer.data(), {-4, 8});
  const ShapeError error = expect_shape_error([&] { check.shape("k", negative, Dims<2>{-1, 8}, "Tk,D"); });
  CHECK(error.argument() == "k");
  CHECK_THAT(std::string(error.what()), Contains("negative extent") && Contains("[-4, 8]"));
  // Also when the expected shape would match it, and for optional views (given or with null data).
  CHECK_THROWS_AS(check.shape("k", negative, Dims<2>{-4, 8}, "Tk,D"), ShapeError);
  CHECK_THROWS_AS(check.optional_shape("k", negative, Dims<2>{-1, 8}, "Tk,D"), ShapeError);
  CHECK_THROWS_AS(check.optional_shape("k", seqmix::ConstView<float, 2>(nullptr, {-3, 0}), Dims<2>{-1, -1}, "T,D"),
                  ShapeError);
  CHECK_THROWS_AS(check.shape("k", seqmix::ConstView<float, 2>(nullptr, {-3, -2}), Dims<2>{-1, -1}, "T,D"),
                  ShapeError);
  // An expected extent computed from a negative size (below the -1 wildcard) matches nothing.
  const seqmix::ConstView<float, 2> empty(buffer.data(), {0, 8});
  CHECK_THROWS_WITH(check.shape("o", empty, Dims<2>{-3, 8}, "T,D"), Contains("negative extent"));
}

TEST_CASE("element counts and spans that overflow index_t are refused", "[errors][hostile]") {
  std::vector<float> buffer(64);
  const ArgCheck check("ssd");
  // 2^62 * 4 elements: the count wraps to 0 in index_t.
  const seqmix::ConstView<float, 2> huge(buffer.data(), {k2to62, 4}, {4, 1});
  CHECK_THROWS_WITH(check.shape("x", huge, Dims<2>{-1, 4}, "T,D"), Contains("element count overflows"));
  CHECK_THROWS_AS(check.optional_shape("x", huge, Dims<2>{-1, 4}, "T,D"), ShapeError);
  const seqmix::ConstView<float, 3> wrapping(buffer.data(), {index_t{1} << 32, index_t{1} << 32, 2}, {0, 0, 1});
  CHECK_THROWS_AS(check.shape("x", wrapping, Dims<3>{-1, -1, -1}, "B,T,D"), ShapeError);
  // A small count whose strides reach beyond index_t (in elements, or in bytes).
  const seqmix::ConstView<float, 2> far(buffer.data(), {3, 2}, {k2to62, 1});
  CHECK_THROWS_WITH(check.shape("x", far, Dims<2>{3, 2}, "T,D"), Contains("memory span overflows"));
  const seqmix::ConstView<float, 2> far_bytes(buffer.data(), {2, 2}, {k2to62 / 2, 1});  // 2^61 floats
  CHECK_THROWS_AS(check.shape("x", far_bytes, Dims<2>{2, 2}, "T,D"), ShapeError);
  const seqmix::ConstView<float, 2> min_stride(buffer.data(), {2, 2}, {kMin, 1});
  CHECK_THROWS_AS(check.shape("x", min_stride, Dims<2>{2, 2}, "T,D"), ShapeError);
  // Huge strides are harmless where the extent is 1 or 0, and so are broadcasts and negative strides.
  CHECK_NOTHROW(check.shape("x", seqmix::ConstView<float, 2>(buffer.data(), {1, 8}, {kMax, 1}), Dims<2>{1, 8}, "T,D"));
  CHECK_NOTHROW(check.shape("x", seqmix::ConstView<float, 2>(buffer.data(), {0, 8}, {kMin, kMax}), Dims<2>{0, 8}, "T,D"));
  CHECK_NOTHROW(check.shape("x", seqmix::ConstView<float, 2>(buffer.data(), {1000, 8}, {0, 1}), Dims<2>{1000, 8}, "T,D"));
  CHECK_NOTHROW(check.shape("x", seqmix::ConstView<float, 2>(buffer.data() + 56, {8, 8}, {-8, 1}), Dims<2>{8, 8}, "T,D"));
  CHECK(check.layout("x", seqmix::ConstView<float, 3>(buffer.data(), {2, 0, k2to62})) == 0);
}

TEST_CASE("checked_product, check_enum and check_positions", "[errors][hostile]") {
  CHECK(seqmix::checked_product("KvCache", "config", 2, index_t{3}, std::size_t{4}) == 24);
  CHECK(seqmix::checked_product("KvCache", "config") == 1);
  CHECK(seqmix::checked_product("KvCache", "config", k2to62, 0, 4) == 0);
  CHECK(seqmix::checked_product("KvCache", "config", kMax) == kMax);
  CHECK_THROWS_WITH(seqmix::checked_product("KvCache", "config", k2to62, 4),
                    Contains("seqmix::KvCache") && Contains("'config'") && Contains("4611686018427387904 * 4") &&
                        Contains("overflows"));
  CHECK_THROWS_WITH(seqmix::checked_product("KvCache", "config", 2, -3), Contains("negative extent -3"));
  CHECK_THROWS_AS(seqmix::checked_product("KvCache", "config", ~std::uint64_t{0}), ShapeError);
  const ArgCheck check("KvCache");
  CHECK(check.product("heads", 8, 128) == 1024);

  enum class Format : std::uint8_t { fp32, int8, int4 };
  CHECK_NOTHROW(seqmix::check_enum("KvCache", "format", Format::int4, 3));
  CHECK_THROWS_WITH(seqmix::check_enum("KvCache", "format", static_cast<Format>(17), 3),
                    Contains("'format' has value 17") && Contains("0..2"));
  enum Plain : int { zero, one };
  CHECK_THROWS_AS(check.enum_value("format", static_cast<Plain>(-1), 2), ShapeError);
  CHECK_NOTHROW(check.enum_value("format", one, 2));

  CHECK_NOTHROW(seqmix::check_positions("KvCache::append", "position", 0, 0));
  CHECK_NOTHROW(seqmix::check_positions("KvCache::append", "position", seqmix::kMaxPosition - 8, 8));
  CHECK_THROWS_AS(seqmix::check_positions("KvCache::append", "position", seqmix::kMaxPosition - 8, 9), ShapeError);
  CHECK_THROWS_AS(seqmix::check_positions("KvCache::append", "position", kMax), ShapeError);
  CHECK_THROWS_AS(seqmix::check_positions("KvCache::append", "position", -1), ShapeError);
  CHECK_THROWS_AS(seqmix::check_positions("KvCache::append", "position", 5, kMax), ShapeError);
  CHECK_THROWS_WITH(check.positions("position", kMin, 1), Contains("[0, 2^62)"));
}

TEST_CASE("no_overlap refuses views sharing memory", "[errors][hostile]") {
  std::vector<float> buffer(100);
  const ArgCheck check("causal_conv1d");
  const seqmix::ConstView<float, 2> x(buffer.data(), {4, 10});
  const seqmix::TensorView<float, 2> y_same(buffer.data(), {4, 10});
  const seqmix::TensorView<float, 2> y_after(buffer.data() + 40, {4, 10});
  const seqmix::TensorView<float, 2> y_shifted(buffer.data() + 39, {4, 10});
  CHECK_THROWS_WITH(check.no_overlap("y", y_same, "x", x), Contains("'y' overlaps argument 'x'"));
  CHECK_THROWS_AS(check.no_overlap("y", y_shifted, "x", x), ShapeError);
  CHECK_NOTHROW(check.no_overlap("y", y_after, "x", x));
  // Negative strides span downwards; zero-sized and absent views never overlap.
  const seqmix::TensorView<float, 2> reversed(buffer.data() + 79, {4, 10}, {-10, -1});  // elements 40..79
  CHECK_NOTHROW(check.no_overlap("y", reversed, "x", x));
  const seqmix::TensorView<float, 2> reversed_low(buffer.data() + 45, {4, 10}, {-10, -1});  // elements 6..45
  CHECK_THROWS_AS(check.no_overlap("y", reversed_low, "x", x), ShapeError);
  CHECK_NOTHROW(check.no_overlap("y", seqmix::TensorView<float, 2>(buffer.data() + 99, {4, 10}, {-10, -1}), "x",
                                 seqmix::ConstView<float, 2>(buffer.data(), {6, 10})));
  CHECK_NOTHROW(check.no_overlap("y", seqmix::TensorView<float, 2>(buffer.data(), {0, 10}), "x", x));
  CHECK_NOTHROW(check.no_overlap("y", seqmix::TensorView<float, 2>(), "x", x));
  // Different element types compare by bytes.
  const auto* base = reinterpret_cast<const std::uint8_t*>(buffer.data());
  CHECK_NOTHROW(check.no_overlap("y", y_after, "x", seqmix::ConstView<std::uint8_t, 1>(base + 159, {1})));
  CHECK_THROWS_AS(check.no_overlap("y", y_after, "x", seqmix::ConstView<std::uint8_t, 1>(base + 160, {1})), ShapeError);
  CHECK_THROWS_AS(check.no_overlap("y", y_after, "x", seqmix::ConstView<std::uint8_t, 1>(base + 319, {1})), ShapeError);
  CHECK_NOTHROW(check.no_overlap("y", y_after, "x", seqmix::ConstView<std::uint8_t, 1>(base + 320, {1})));
}
