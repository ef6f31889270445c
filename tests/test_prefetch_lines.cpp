// The cache-line list the recurrent look-aheads share (core/prefetch.hpp): which lines a row adds,
// what a full list does with the rest, and the spans handed to the passes. A prefetch changes no
// result, so what is checked is the bookkeeping: a wrong span would ask for the wrong rows (or
// read past the list) without any output showing it.
#include <catch2/catch.hpp>


#include "seqmix/core/prefetch.hpp"

namespace {

using seqmix::detail::LineList;

}  // namespace

TEST_CASE("LineList: a row adds one address per 64-byte line from its start", "[prefetch]") {
  alignas(64) static char rows[4096];
  LineList<16, 3> list;
  list.add_row(rows, 256);       // 4 lines
  list.add_row(rows + 1000, 65);  // 2 lines: a partial second one counts
  list.add_row(rows + 2048, 0);   // none
  REQUIRE(list.count == 6);
  for (int i = 0; i < 4; ++i) CHECK(list.line[i] == rows + 64 * i);
  CHECK(list.line[4] == rows + 1000);
  CHECK(list.line[5] == rows + 1064);
}

TEST_CASE("LineList: lines beyond the capacity are not kept (asked for at once)", "[prefetch]") {
  alignas(64) static char rows[4096];
  LineList<5, 3> list;
  list.add_row(rows, 64 * 3);
  list.add_row(rows + 1024, 64 * 4);  // two fit, two overflow
  REQUIRE(list.count == 5);
  CHECK(list.line[3] == rows + 1024);
  CHECK(list.line[4] == rows + 1088);
  list.add_row(rows + 2048, 64);  // full: nothing kept
  CHECK(list.count == 5);
}

TEST_CASE("LineList / PassLines: spans handed to the passes stay within the list", "[prefetch]") {
  alignas(64) static char rows[8192];
  LineList<64, 3> list;
  list.add_row(rows, 64 * 10);
  const auto all = list.lines();
  CHECK(all.line == list.line);
  CHECK(all.count == 10);
  const auto share = list.lines(4, 4);  // a pass's share
  CHECK(share.line == list.line + 4);
  CHECK(share.count == 4);
  const auto last = list.lines(8, 4);  // the last pass gets what is left
  CHECK(last.count == 2);
  CHECK(list.lines(10, 4).count == 0);
  CHECK(all.first(3).count == 3);   // a pass over 3 rows reaches 3 lines
  CHECK(all.first(32).count == 10); // more rows than lines: all of them
  // Requests themselves change nothing observable; they must not read past the span.
  all.request(9);
  all.request(10);
  all.request_from(7);
  all.request_from(10);
  const seqmix::detail::PassLines<3> none;
  none.request(0);
  none.request_from(0);
  CHECK(none.first(8).count == 0);
}
