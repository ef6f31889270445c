// The counter itself: it must see allocations, or every zero-allocation test below would pass
// vacuously.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "counting_new.hpp"

TEST_CASE("allocation counter sees new and vector growth", "[alloc]") {
  seqmix::testing::AllocationCounter counter;
  auto p = std::make_unique<int>(3);
  std::vector<double> v(100);
  CHECK(counter.allocations() >= 2);
  CHECK(*p == 3);
  CHECK(v.size() == 100);
}
