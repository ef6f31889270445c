// Catch2 checks shared by the test files (include after <catch2/catch.hpp>; tests only, the
// benchmarks use the Catch-free helpers in testing.hpp).
#pragma once

#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix_testing/compare.hpp"

namespace seqmix::testing {

// Requires out to match ref under the SPEC rule max|out - ref| <= tol * max(1, max|ref|),
// reporting where the worst difference is.
template <class A, class B, std::size_t Rank>
void require_close(const char* what, const TensorView<A, Rank>& out, const TensorView<B, Rank>& ref, double tol) {
  const Comparison cmp = compare(out, ref, tol);
  INFO(what << ": " << cmp.describe());
  REQUIRE(cmp.ok);
}

// Requires `call()` to throw a seqmix::ShapeError that names `argument`.
template <class Call>
void require_shape_error(const char* argument, Call&& call) {
  INFO("expected a ShapeError naming argument '" << argument << "'");
  try {
    call();
    FAIL("no error thrown");
  } catch (const ShapeError& e) {
    CHECK(e.argument() == argument);
    CHECK(std::string(e.what()).find(argument) != std::string::npos);
  }
}

}  // namespace seqmix::testing
