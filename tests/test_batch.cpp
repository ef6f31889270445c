// SequenceMap: how packed batches and state slots resolve, and what bad serving arguments get.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/core/batch.hpp"

using seqmix::IndexList;
using seqmix::SequenceBatch;
using seqmix::SequenceMap;
using seqmix::ShapeError;

TEST_CASE("SequenceMap resolves dense batches row by row", "[batch]") {
  const SequenceMap m = SequenceMap::make("op", SequenceBatch{}, 3, 17, true, 3);
  REQUIRE(m.sequences() == 3);
  for (seqmix::index_t n = 0; n < 3; ++n) {
    const auto s = m[n];
    CHECK(s.batch_row == n);
    CHECK(s.token_begin == 0);
    CHECK(s.tokens == 17);
    CHECK(s.state_row == n);
    CHECK(s.read_state);
  }
  CHECK_FALSE(SequenceMap::make("op", SequenceBatch{}, 3, 17, false, 3)[1].read_state);
}

TEST_CASE("SequenceMap resolves packed sequences and slots, int32 and int64", "[batch]") {
  const std::vector<std::int32_t> cu32{0, 5, 5, 12};
  const std::vector<std::int64_t> cu64{0, 5, 5, 12};
  const std::vector<std::int64_t> slots{4, -1, 0};
  const std::vector<std::uint8_t> init{1, 1, 0};
  for (const IndexList& cu : {IndexList(cu32), IndexList(cu64)}) {
    SequenceBatch batch;
    batch.cu_seqlens = cu;
    batch.state_indices = slots;
    batch.has_initial_state = init;
    const SequenceMap m = SequenceMap::make("op", batch, 1, 12, true, 6);
    REQUIRE(m.sequences() == 3);
    CHECK(m.max_tokens() == 7);
    CHECK(m[0].token_begin == 0);
    CHECK(m[0].tokens == 5);
    CHECK(m[0].state_row == 4);
    CHECK(m[0].read_state);
    CHECK(m[1].tokens == 0);
    CHECK(m[1].state_row == -1);
    CHECK_FALSE(m[1].read_state);
    CHECK(m[2].token_begin == 5);
    CHECK(m[2].tokens == 7);
    CHECK(m[2].state_row == 0);
    CHECK_FALSE(m[2].read_state);
  }
}

TEST_CASE("SequenceMap refuses bad serving arguments with a ShapeError", "[batch][errors]") {
  auto packed = [](std::vector<std::int64_t> cu) {
    SequenceBatch b;
    static std::vector<std::int64_t> keep;
    keep = std::move(cu);
    b.cu_seqlens = IndexList(keep);
    return b;
  };
  CHECK_THROWS_AS(SequenceMap::make("op", packed({0, 4, 3, 9}), 1, 9, false, -1), ShapeError);  // decreasing
  CHECK_THROWS_AS(SequenceMap::make("op", packed({1, 4, 9}), 1, 9, false, -1), ShapeError);     // not from 0
  CHECK_THROWS_AS(SequenceMap::make("op", packed({0, 4, 8}), 1, 9, false, -1), ShapeError);     // short of T
  CHECK_THROWS_AS(SequenceMap::make("op", packed({0, 4, 9}), 2, 9, false, -1), ShapeError);     // B != 1
  CHECK_THROWS_AS(SequenceMap::make("op", packed({0, 4, 9}), 1, 9, true, 3), ShapeError);       // 3 state rows for 2
  CHECK_NOTHROW(SequenceMap::make("op", packed({0, 4, 9}), 1, 9, true, 2));

  SequenceBatch slots;
  const std::vector<std::int32_t> dup{2, 0, 2};
  slots.state_indices = dup;
  CHECK_THROWS_AS(SequenceMap::make("op", slots, 3, 4, true, 5), ShapeError);  // duplicated slot
  const std::vector<std::int32_t> out_of_range{0, 5, 1};
  slots.state_indices = out_of_range;
  CHECK_THROWS_AS(SequenceMap::make("op", slots, 3, 4, true, 5), ShapeError);
  const std::vector<std::int32_t> below{0, -2, 1};
  slots.state_indices = below;
  CHECK_THROWS_AS(SequenceMap::make("op", slots, 3, 4, true, 5), ShapeError);
  const std::vector<std::int32_t> padded{-1, 4, -1};
  slots.state_indices = padded;
  CHECK_NOTHROW(SequenceMap::make("op", slots, 3, 4, true, 5));  // -1 may repeat
  const std::vector<std::uint8_t> flags{1, 0};
  slots.has_initial_state = flags;
  CHECK_THROWS_AS(SequenceMap::make("op", slots, 3, 4, true, 5), ShapeError);  // wrong flag count
}

TEST_CASE("views_overlap sees shared memory, not neighbours", "[batch]") {
  std::vector<float> buffer(64);
  seqmix::TensorView<float, 2> a(buffer.data(), {4, 8});
  seqmix::TensorView<float, 2> b(buffer.data() + 32, {4, 8});
  seqmix::TensorView<float, 2> c(buffer.data() + 31, {4, 8});
  CHECK_FALSE(seqmix::views_overlap(a, b));
  CHECK(seqmix::views_overlap(a, c));
  CHECK(seqmix::views_overlap(a, a));
  CHECK_FALSE(seqmix::views_overlap(a, seqmix::TensorView<float, 2>()));
}
