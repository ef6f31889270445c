// Fused query rope of the key scorers (issue 15 item 2, last sentence): the lightning indexer
// (fast and reference) and the top-k scorers (exact, block means, Quest, Loki, indexer) with a
// QueryRope equal seqmix::rope on q at the same positions, then the scorer without it; both
// layouts, partial rotary, default and explicit positions. Bad ropes are refused before a write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RopeLayout;
using seqmix::RopeTable;
using seqmix::Tensor;
namespace st = seqmix::testing;

RopeTable query_rope_table(RopeLayout layout, index_t R, index_t positions) {
  seqmix::RopeConfig c;
  c.layout = layout;
  c.rotary_dim = R;
  c.scheme = seqmix::RopeScheme::yarn;
  c.base = 10000.0;
  c.factor = 4.0;
  c.original_max_position_embeddings = 128;
  return RopeTable(c, positions);
}

struct QueryRopeCase {
  const char* name;
  index_t B, Tq, Tk, H, D, R;
  RopeLayout layout;
  bool positions;
  std::string describe() const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " H=" << H << " D=" << D << " R=" << R
      << " layout=" << (layout == RopeLayout::interleaved ? "interleaved" : "half_split") << " positions=" << positions
      << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const std::vector<QueryRopeCase> kQueryRopeCases = {
    {"decode-half", 2, 1, 300, 8, 64, 64, RopeLayout::half_split, false},
    {"decode-inter-partial", 1, 1, 130, 4, 80, 32, RopeLayout::interleaved, true},
    {"chunk-half-partial", 1, 37, 100, 4, 64, 48, RopeLayout::half_split, false},
    {"chunk-inter-positions", 2, 5, 65, 8, 32, 32, RopeLayout::interleaved, true},
};

// Query positions [B,Tq]: the default Tk - Tq + i, or arbitrary in-table values.
Tensor<std::int64_t, 2> query_rope_positions(const QueryRopeCase& c, bool given) {
  Tensor<std::int64_t, 2> p({c.B, c.Tq});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i) p(b, i) = given ? (37 * b + 5 * i + 3) % 400 : c.Tk - c.Tq + i;
  return p;
}

// q rotated by seqmix::rope at the positions, the unfused path.
Tensor<float, 4> query_rope_unfused(const RopeTable& table, const Tensor<float, 4>& q,
                                    const Tensor<std::int64_t, 2>& positions) {
  Tensor<float, 4> out(q.shape());
  std::vector<std::int64_t> flat(positions.data(), positions.data() + positions.size(0) * positions.size(1));
  seqmix::rope(table, {q.cview(), flat}, {out.view()});
  return out;
}

void query_rope_require_close(const char* what, const seqmix::ConstView<float, 4>& got,
                              const seqmix::ConstView<float, 4>& want) {
  const auto cmp = st::compare(got, want, 2e-5);
  INFO(what << ": " << cmp.describe());
  CHECK(cmp.ok);
}

}  // namespace

TEST_CASE("query rope: the lightning indexer equals rope then the plain indexer", "[attention][rope]") {
  seqmix::ThreadPool pool(2);
  for (const QueryRopeCase& c : kQueryRopeCases) {
    const std::uint64_t seed = 9100 + static_cast<std::uint64_t>(&c - kQueryRopeCases.data()) * 10;
    INFO(c.describe());
    const RopeTable table = query_rope_table(c.layout, c.R, 512);
    const auto q = st::random_tensor<4>({c.B, c.Tq, c.H, c.D}, seed);
    const auto k = st::random_tensor<3>({c.B, c.Tk, c.D}, seed + 1);
    const auto w = st::random_tensor<3>({c.B, c.Tq, c.H}, seed + 2, 0.f, 1.f);
    const auto positions = query_rope_positions(c, c.positions);
    const auto q_rotated = query_rope_unfused(table, q, positions);
    for (const bool causal : {false, true}) {
      INFO("causal=" << causal);
      seqmix::LightningIndexerOptions options;
      options.causal = causal;
      seqmix::LightningIndexerInputs fused;
      fused.q = q.view(), fused.k = k.view(), fused.weights = w.view();
      fused.rope.table = &table;
      if (c.positions) fused.rope.positions = positions.view();
      seqmix::LightningIndexerInputs plain = fused;
      plain.q = q_rotated.view(), plain.rope = {};
      Tensor<float, 3> got({c.B, c.Tq, c.Tk}), got_ref({c.B, c.Tq, c.Tk}), want({c.B, c.Tq, c.Tk});
      seqmix::lightning_indexer(fused, got.view(), options, pool);
      seqmix::reference::lightning_indexer(fused, got_ref.view(), options);
      seqmix::reference::lightning_indexer(plain, want.view(), options);
      const auto a = st::compare(got.cview(), want.cview(), 2e-5), b = st::compare(got_ref.cview(), want.cview(), 2e-5);
      INFO("fast: " << a.describe() << "\nreference: " << b.describe());
      CHECK(a.ok);
      CHECK(b.ok);
    }
  }
}

TEST_CASE("query rope: the top-k scorers equal rope then the plain scorer", "[topk][rope]") {
  seqmix::ThreadPool pool(2);
  for (const QueryRopeCase& c : kQueryRopeCases) {
    const std::uint64_t seed = 9300 + static_cast<std::uint64_t>(&c - kQueryRopeCases.data()) * 10;
    INFO(c.describe());
    const RopeTable table = query_rope_table(c.layout, c.R, 512);
    const index_t Hkv = c.H / 2, Hs = c.H / 4 > 0 ? c.H / 4 : 1, block = 16, Nb = (c.Tk + block - 1) / block;
    const auto q = st::random_tensor<4>({c.B, c.Tq, c.H, c.D}, seed);
    const auto k = st::random_tensor<4>({c.B, c.Tk, Hkv, c.D}, seed + 1);  // stands for rotated keys
    const auto projection = st::random_tensor<3>({Hkv, c.D, 8}, seed + 2);
    const auto positions = query_rope_positions(c, true);  // quest needs them; the rest take them too
    const auto defaults = query_rope_positions(c, false);
    const auto q_rotated = query_rope_unfused(table, q, c.positions ? positions : defaults);
    seqmix::QueryRope rope;
    rope.table = &table;
    if (c.positions) rope.positions = positions.view();

    Tensor<float, 4> got({c.B, c.Tq, Hs, c.Tk}), want({c.B, c.Tq, Hs, c.Tk});
    seqmix::topk_scores_exact(q.cview(), k.cview(), got.view(), rope, pool);
    seqmix::topk_scores_exact(q_rotated.cview(), k.cview(), want.view(), pool);
    query_rope_require_close("topk_scores_exact", got.cview(), want.cview());

    Tensor<float, 4> mean({c.B, Nb, Hkv, c.D}), lo({c.B, Nb, Hkv, c.D}), hi({c.B, Nb, Hkv, c.D});
    seqmix::block_key_summaries(k.cview(), block, mean.view(), lo.view(), hi.view(), pool);
    Tensor<float, 4> got_b({c.B, c.Tq, Hs, Nb}), want_b({c.B, c.Tq, Hs, Nb});
    // Block scores: the summaries do not tell Tk, so positions are given explicitly.
    seqmix::QueryRope block_rope;
    block_rope.table = &table;
    block_rope.positions = (c.positions ? positions : defaults).view();
    seqmix::topk_scores_exact(q.cview(), mean.cview(), got_b.view(), block_rope, pool);
    seqmix::topk_scores_exact(q_rotated.cview(), mean.cview(), want_b.view(), pool);
    query_rope_require_close("topk_scores_exact on block means", got_b.cview(), want_b.cview());
    seqmix::topk_scores_quest(q.cview(), lo.cview(), hi.cview(), got_b.view(), block_rope, pool);
    seqmix::topk_scores_quest(q_rotated.cview(), lo.cview(), hi.cview(), want_b.view(), pool);
    query_rope_require_close("topk_scores_quest", got_b.cview(), want_b.cview());

    Tensor<float, 4> k_low({c.B, c.Tk, Hkv, 8});
    seqmix::project_keys(k.cview(), projection.cview(), k_low.view(), pool);
    seqmix::topk_scores_low_rank(q.cview(), projection.cview(), k_low.cview(), got.view(), rope, pool);
    seqmix::topk_scores_low_rank(q_rotated.cview(), projection.cview(), k_low.cview(), want.view(), pool);
    query_rope_require_close("topk_scores_low_rank", got.cview(), want.cview());
  }
}

TEST_CASE("query rope: bad tables and positions are refused before any write", "[topk][rope]") {
  const RopeTable table = query_rope_table(RopeLayout::half_split, 32, 64);
  const auto q = st::random_tensor<4>({1, 2, 4, 32}, 1);
  const auto k = st::random_tensor<4>({1, 50, 2, 32}, 2);
  Tensor<float, 4> scores({1, 2, 1, 50});
  scores.fill(7.f);
  const auto untouched = [&] {
    for (index_t j = 0; j < 50; ++j) REQUIRE(scores(0, 1, 0, j) == 7.f);
  };
  Tensor<std::int64_t, 2> positions({1, 2});
  positions(0, 0) = 3, positions(0, 1) = 64;  // one past the table
  seqmix::QueryRope rope;
  rope.table = &table;
  rope.positions = positions.view();
  CHECK_THROWS_WITH(seqmix::topk_scores_exact(q.cview(), k.cview(), scores.view(), rope),
                    Catch::Contains("rope.positions") && Catch::Contains("64"));
  untouched();
  Tensor<std::int64_t, 2> wrong_shape({1, 3});
  rope.positions = wrong_shape.view();
  CHECK_THROWS_WITH(seqmix::topk_scores_exact(q.cview(), k.cview(), scores.view(), rope), Catch::Contains("rope.positions"));
  untouched();
  // Default positions Tk - Tq + i beyond the table (Tk = 100 > 64 positions).
  rope.positions = {};
  const auto k_long = st::random_tensor<4>({1, 100, 2, 32}, 3);
  Tensor<float, 4> long_scores({1, 2, 1, 100});
  long_scores.fill(7.f);
  CHECK_THROWS_WITH(seqmix::topk_scores_exact(q.cview(), k_long.cview(), long_scores.view(), rope),
                    Catch::Contains("'rope'") && Catch::Contains("99"));
  CHECK(long_scores(0, 0, 0, 0) == 7.f);
  // A table wider than the head.
  const RopeTable wide = query_rope_table(RopeLayout::half_split, 64, 64);
  rope.table = &wide;
  CHECK_THROWS_WITH(seqmix::topk_scores_exact(q.cview(), k.cview(), scores.view(), rope), Catch::Contains("rotary_dim"));
  untouched();
  // Quest cannot form default positions.
  rope.table = &table;
  Tensor<float, 4> lo({1, 4, 2, 32}), hi({1, 4, 2, 32}), block_scores({1, 2, 1, 4});
  block_scores.fill(7.f);
  CHECK_THROWS_WITH(seqmix::topk_scores_quest(q.cview(), lo.cview(), hi.cview(), block_scores.view(), rope),
                    Catch::Contains("rope.positions") && Catch::Contains("required"));
  CHECK(block_scores(0, 1, 0, 3) == 7.f);
  // The indexer: a position out of the table.
  seqmix::LightningIndexerInputs in;
  const auto iq = st::random_tensor<4>({1, 2, 2, 32}, 4);
  const auto ik = st::random_tensor<3>({1, 50, 32}, 5);
  const auto iw = st::random_tensor<3>({1, 2, 2}, 6);
  in.q = iq.view(), in.k = ik.view(), in.weights = iw.view();
  in.rope.table = &table;
  in.rope.positions = positions.view();
  Tensor<float, 3> iscores({1, 2, 50});
  iscores.fill(7.f);
  CHECK_THROWS_WITH(seqmix::lightning_indexer(in, iscores.view()), Catch::Contains("rope.positions"));
  CHECK_THROWS_WITH(seqmix::reference::lightning_indexer(in, iscores.view()), Catch::Contains("rope.positions"));
  CHECK(iscores(0, 1, 49) == 7.f);
}
