// block_sparse_attention: the fast form against reference::block_sparse_attention (the dense
// reference with a block mask) over random and built layouts, all blocks selected against dense
// attention, every pattern builder against hand-checked block sets, and argument validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// A layout owned by the test: per (batch row, head) rows when per_batch / per_head.
struct OwnedLayout {
  Tensor<std::int32_t, 3> offsets;
  std::vector<std::int32_t> indices;
  index_t block_q, block_k;
  seqmix::BlockSparseLayout view() const {
    seqmix::BlockSparseLayout l;
    l.block_q = block_q, l.block_k = block_k, l.offsets = offsets.view();
    l.indices = seqmix::ConstView<std::int32_t, 1>(indices.data(), {static_cast<index_t>(indices.size())});
    return l;
  }
};

// Each key block selected with probability `density` (1: every block).
OwnedLayout random_layout(index_t Bl, index_t Hl, index_t Tq, index_t Tk, index_t bq, index_t bk, double density,
                          std::uint64_t seed) {
  const index_t Nq = (Tq + bq - 1) / bq, Nk = (Tk + bk - 1) / bk;
  OwnedLayout l{Tensor<std::int32_t, 3>({Bl, Hl, Nq + 1}), {}, bq, bk};
  std::mt19937_64 engine(seed);
  std::bernoulli_distribution pick(density);
  for (index_t b = 0; b < Bl; ++b)
    for (index_t h = 0; h < Hl; ++h)
      for (index_t qb = 0; qb < Nq; ++qb) {
        l.offsets(b, h, qb) = static_cast<std::int32_t>(l.indices.size());
        for (index_t kb = 0; kb < Nk; ++kb)
          if (pick(engine)) l.indices.push_back(static_cast<std::int32_t>(kb));
        l.offsets(b, h, qb + 1) = static_cast<std::int32_t>(l.indices.size());
      }
  return l;
}

struct Case {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, D, bq, bk;
  bool causal;
  index_t window, sink_tokens;
  bool alibi_mask_sinks;  // ALiBi, a random mask and sink logits together
  index_t Bl, Hl;         // layout batch / head extents (1 = shared)
  double density;
  bool large;

  std::string describe(std::uint64_t seed) const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D
      << " bq=" << bq << " bk=" << bk << " causal=" << causal << " window=" << window << " sinks=" << sink_tokens
      << " extras=" << alibi_mask_sinks << " layout=[" << Bl << "," << Hl << "] density=" << density
      << " seed=" << seed << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

// Block sizes below, equal to and above the 64-key tile, ragged ends, shared and per-head layouts.
const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      // name                 B  Tq   Tk   Hq Hkv D   bq  bk  causal win sinks extras Bl Hl density
      {"square-64", 1, 256, 256, 4, 2, 64, 64, 64, true, 0, 0, false, 1, 1, 0.5, false},
      {"small-blocks", 2, 100, 100, 4, 1, 64, 16, 16, true, 0, 0, false, 2, 4, 0.4, false},
      {"ragged-blocks", 1, 77, 131, 2, 2, 80, 24, 40, false, 0, 0, false, 1, 2, 0.6, false},
      {"big-key-blocks", 1, 130, 300, 8, 2, 64, 32, 128, true, 0, 0, false, 1, 1, 0.5, false},
      {"window-sinks", 1, 200, 400, 4, 4, 64, 50, 30, true, 90, 4, false, 1, 4, 0.7, false},
      {"per-head-gqa", 2, 64, 64, 8, 2, 64, 16, 8, true, 0, 0, true, 2, 8, 0.5, false},
      {"extras-noncausal", 1, 33, 90, 4, 1, 128, 8, 16, false, 0, 0, true, 1, 1, 0.5, false},
      {"empty-rows", 1, 64, 64, 2, 1, 64, 16, 16, true, 0, 0, false, 1, 1, 0.1, false},
      {"long", 1, 512, 1024, 8, 2, 128, 64, 64, true, 256, 4, true, 1, 8, 0.3, true},
  };
  return table;
}

struct Problem {
  Tensor<float, 4> q, k, v;
  Tensor<float, 3> mask;
  Tensor<float, 1> slopes, sinks;
  seqmix::AttentionInputs<float> inputs;
  seqmix::AttentionOptions options;
  Problem(const Case& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 3)) {
    inputs.q = q.view(), inputs.k = k.view(), inputs.v = v.view();
    if (c.alibi_mask_sinks) {
      mask = st::random_tensor<3>({c.B, c.Tq, c.Tk}, seed + 4, -1.f, 1.f);
      slopes = st::random_tensor<1>({c.Hq}, seed + 5, 0.f, 0.1f);
      sinks = st::random_tensor<1>({c.Hq}, seed + 6, -1.f, 2.f);
      inputs.mask = mask.view(), inputs.alibi_slopes = slopes.view(), inputs.sink_logits = sinks.view();
    }
    options.causal = c.causal, options.window = c.window, options.sink_tokens = c.sink_tokens;
  }
};

struct Outputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  Outputs(const Case& c) : o({c.B, c.Tq, c.Hq, c.D}), lse({c.B, c.Tq, c.Hq}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

constexpr double kTol = 1e-4;

void check_same(const std::string& what, Outputs& got, Outputs& want) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), kTol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), kTol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

using Blocks = std::vector<std::vector<int>>;

Blocks blocks_of(const seqmix::BlockPattern& p) {
  Blocks rows;
  for (std::size_t qb = 0; qb + 1 < p.offsets.size(); ++qb)
    rows.emplace_back(p.indices.begin() + p.offsets[qb], p.indices.begin() + p.offsets[qb + 1]);
  return rows;
}

std::string to_string(const Blocks& rows) {
  std::ostringstream s;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    s << "\n  qb " << r << ":";
    for (int kb : rows[r]) s << ' ' << kb;
  }
  return s.str();
}

}  // namespace

TEST_CASE("block_sparse_attention: fast form matches the block-masked reference", "[block_sparse]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    if (c.large && st::small_test_scale()) continue;
    const std::uint64_t seed = 300 + static_cast<std::uint64_t>(&c - cases().data());
    Problem p(c, seed);
    const OwnedLayout layout = random_layout(c.Bl, c.Hl, c.Tq, c.Tk, c.bq, c.bk, c.density, seed);
    Outputs ref(c), fast(c), serial(c);
    seqmix::reference::block_sparse_attention(p.inputs, layout.view(), ref.view(), p.options);
    seqmix::block_sparse_attention(p.inputs, layout.view(), fast.view(), p.options, pool);
    check_same(c.describe(seed) + " form=pool(2)", fast, ref);
    seqmix::block_sparse_attention(p.inputs, layout.view(), serial.view(), p.options);
    check_same(c.describe(seed) + " form=serial", serial, ref);
  }
}

TEST_CASE("block_sparse_attention: every block selected equals dense attention", "[block_sparse]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    if (c.large && st::small_test_scale()) continue;
    const std::uint64_t seed = 400 + static_cast<std::uint64_t>(&c - cases().data());
    Problem p(c, seed);
    const OwnedLayout layout = random_layout(c.Bl, c.Hl, c.Tq, c.Tk, c.bq, c.bk, 1.0, seed);
    Outputs dense(c), fast(c), ref(c);
    seqmix::reference::attention(p.inputs, dense.view(), p.options);
    seqmix::block_sparse_attention(p.inputs, layout.view(), fast.view(), p.options, pool);
    check_same(c.describe(seed) + " all blocks, fast vs dense reference", fast, dense);
    seqmix::reference::block_sparse_attention(p.inputs, layout.view(), ref.view(), p.options);
    check_same(c.describe(seed) + " all blocks, block reference vs dense reference", ref, dense);
  }
}

TEST_CASE("block_sparse_attention: 16-bit K/V and built patterns", "[block_sparse]") {
  const Case c{"f16-power", 1, 300, 300, 8, 2, 64, 32, 32, true, 0, 0, false, 1, 1, 0, false};
  Problem p(c, 9);
  Tensor<seqmix::f16, 4> k16({c.B, c.Tk, c.Hkv, c.D}), v16({c.B, c.Tk, c.Hkv, c.D});
  seqmix::copy(p.k.cview(), k16.view());
  seqmix::copy(p.v.cview(), v16.view());
  seqmix::copy(k16.cview(), p.k.view());  // the reference sees the rounded values
  seqmix::copy(v16.cview(), p.v.view());
  seqmix::AttentionInputs<seqmix::f16> in16;
  in16.q = p.q.view(), in16.k = k16.view(), in16.v = v16.view();
  const seqmix::BlockGrid grid{c.Tq, c.Tk, c.bq, c.bk};
  const std::vector<std::pair<const char*, seqmix::BlockPattern>> patterns = {
      {"power", seqmix::power_pattern(grid, {2, true})},
      {"local_global+random", seqmix::local_global_pattern(grid, {1, 1, 2, 5, true})},
      {"strided", seqmix::strided_pattern(grid, {3, true})},
      {"fixed", seqmix::fixed_pattern(grid, {4, 1, true})},
      {"chunk_diagonal", seqmix::chunk_diagonal_pattern(grid, {3, true})},
  };
  seqmix::ThreadPool pool(2);
  for (const auto& [name, pattern] : patterns) {
    Outputs ref(c), fast(c);
    seqmix::reference::block_sparse_attention(p.inputs, pattern.layout(), ref.view(), p.options);
    seqmix::block_sparse_attention(in16, pattern.layout(), fast.view(), p.options, pool);
    check_same(c.describe(9) + " pattern=" + name + " kv=f16", fast, ref);
  }
}

TEST_CASE("block-sparse pattern builders produce their definitions on hand-checked grids", "[block_sparse]") {
  // Token-level grids (blocks of 1) unless stated, so each row lists the keys a query sees.
  const seqmix::BlockGrid g8{8, 8, 1, 1};
  struct Expect {
    const char* name;
    seqmix::BlockPattern pattern;
    Blocks blocks;
  };
  const std::vector<Expect> table = {
      // Window 1 around the diagonal, key 0 global; query 0 is a global token (sees all, causal: {0}).
      {"local_global causal", seqmix::local_global_pattern(g8, {1, 1, 0, 0, true}),
       {{0}, {0, 1}, {0, 1, 2}, {0, 2, 3}, {0, 3, 4}, {0, 4, 5}, {0, 5, 6}, {0, 6, 7}}},
      {"local_global non-causal", seqmix::local_global_pattern(g8, {1, 1, 0, 0, false}),
       {{0, 1, 2, 3, 4, 5, 6, 7}, {0, 1, 2}, {0, 1, 2, 3}, {0, 2, 3, 4}, {0, 3, 4, 5}, {0, 4, 5, 6}, {0, 5, 6, 7}, {0, 6, 7}}},
      // Two queries at positions 6, 7 of 8 keys (bottom-right aligned).
      {"local_global Tq<Tk", seqmix::local_global_pattern({2, 8, 1, 1}, {1, 1, 0, 0, true}), {{0, 5, 6}, {0, 6, 7}}},
      // Stride 3: the last 3 keys, and every 3rd key back from the diagonal.
      {"strided", seqmix::strided_pattern(g8, {3, true}),
       {{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {1, 2, 3, 4}, {2, 3, 4, 5}, {0, 3, 4, 5, 6}, {1, 4, 5, 6, 7}}},
      // Segments {0,1,2} {3,4,5} {6,7}; summary = last key of each segment (2, 5).
      {"fixed", seqmix::fixed_pattern(g8, {3, 1, true}),
       {{0}, {0, 1}, {0, 1, 2}, {2, 3}, {2, 3, 4}, {2, 3, 4, 5}, {2, 5, 6}, {2, 5, 6, 7}}},
      {"fixed non-causal", seqmix::fixed_pattern(g8, {3, 1, false}),
       {{0, 1, 2, 5}, {0, 1, 2, 5}, {0, 1, 2, 5}, {2, 3, 4, 5}, {2, 3, 4, 5}, {2, 3, 4, 5}, {2, 5, 6, 7}, {2, 5, 6, 7}}},
      // Distances 0 and 1, 2, 4.
      {"power", seqmix::power_pattern(g8, {1, true}),
       {{0}, {0, 1}, {0, 1, 2}, {1, 2, 3}, {0, 2, 3, 4}, {1, 3, 4, 5}, {2, 4, 5, 6}, {3, 5, 6, 7}}},
      // Local 4: distances 0..3, then 4.
      {"power local 4", seqmix::power_pattern(g8, {4, true}),
       {{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}, {1, 2, 3, 4, 5}, {2, 3, 4, 5, 6}, {3, 4, 5, 6, 7}}},
      {"chunk_diagonal", seqmix::chunk_diagonal_pattern(g8, {3, true}),
       {{0}, {0, 1}, {0, 1, 2}, {3}, {3, 4}, {3, 4, 5}, {6}, {6, 7}}},
      {"chunk_diagonal non-causal", seqmix::chunk_diagonal_pattern(g8, {3, false}),
       {{0, 1, 2}, {0, 1, 2}, {0, 1, 2}, {3, 4, 5}, {3, 4, 5}, {3, 4, 5}, {6, 7}, {6, 7}}},
      // Query blocks of 4 tokens, key blocks of 2: query block 1 (positions 4..7) has diagonal
      // key blocks [2, 3]; key block 1 is at distance 1, key block 0 at distance 2.
      {"power bq!=bk", seqmix::power_pattern({8, 8, 4, 2}, {1, true}), {{0, 1}, {0, 1, 2, 3}}},
      {"chunk bq!=bk", seqmix::chunk_diagonal_pattern({8, 8, 4, 2}, {2, true}), {{0, 1}, {2, 3}}},
  };
  for (const Expect& e : table) {
    const Blocks got = blocks_of(e.pattern);
    INFO(e.name << ": got" << to_string(got) << "\nwant" << to_string(e.blocks));
    CHECK(got == e.blocks);
  }

  // BigBird random blocks: exactly `random_blocks` extra blocks per query block outside the
  // window and the global blocks, the same for the same seed.
  const seqmix::BlockGrid g32{32, 32, 1, 1};
  const auto with_random = seqmix::local_global_pattern(g32, {1, 1, 3, 42, true});
  const auto without = seqmix::local_global_pattern(g32, {1, 1, 0, 42, true});
  CHECK(blocks_of(with_random) == blocks_of(seqmix::local_global_pattern(g32, {1, 1, 3, 42, true})));
  for (index_t qb = 0; qb < 32; ++qb) {
    const index_t extra = (with_random.offsets[qb + 1] - with_random.offsets[qb]) - (without.offsets[qb + 1] - without.offsets[qb]);
    const index_t pool = std::max<index_t>(qb - 2, 0);  // blocks 1 .. qb - 2 are neither global nor local
    INFO("query block " << qb);
    CHECK(extra == std::min<index_t>(3, pool));
    for (index_t kb = 0; kb < 32; ++kb)
      if (without.selected(qb, kb)) CHECK(with_random.selected(qb, kb));
  }
}

TEST_CASE("block_sparse_attention: bad layouts are rejected before any output is written", "[block_sparse]") {
  const Case c{"bad", 1, 8, 8, 2, 1, 16, 4, 4, true, 0, 0, false, 1, 1, 1.0, false};
  Problem p(c, 1);
  Outputs out(c);
  out.o.fill(42.f);
  OwnedLayout layout = random_layout(1, 1, 8, 8, 4, 4, 1.0, 1);
  CHECK_NOTHROW(seqmix::block_sparse_attention(p.inputs, layout.view(), out.view(), p.options));
  out.o.fill(42.f);
  OwnedLayout wrong_rows = random_layout(1, 1, 8, 8, 2, 4, 1.0, 1);  // 4 query blocks of 2
  wrong_rows.block_q = 4;
  CHECK_THROWS_WITH(seqmix::block_sparse_attention(p.inputs, wrong_rows.view(), out.view(), p.options),
                    Catch::Contains("layout.offsets"));
  OwnedLayout out_of_range = layout;
  out_of_range.indices[1] = 2;  // 2 key blocks only
  CHECK_THROWS_WITH(seqmix::block_sparse_attention(p.inputs, out_of_range.view(), out.view(), p.options),
                    Catch::Contains("layout.indices") && Catch::Contains("[0, 2)"));
  OwnedLayout unsorted = layout;
  std::swap(unsorted.indices[0], unsorted.indices[1]);
  CHECK_THROWS_WITH(seqmix::reference::block_sparse_attention(p.inputs, unsorted.view(), out.view(), p.options),
                    Catch::Contains("strictly increasing"));
  OwnedLayout per_head_wrong = random_layout(1, 3, 8, 8, 4, 4, 1.0, 1);  // 3 heads, Hq = 2
  CHECK_THROWS_WITH(seqmix::block_sparse_attention(p.inputs, per_head_wrong.view(), out.view(), p.options),
                    Catch::Contains("layout.offsets"));
  OwnedLayout zero_block = layout;
  zero_block.block_k = 0;
  CHECK_THROWS_WITH(seqmix::block_sparse_attention(p.inputs, zero_block.view(), out.view(), p.options),
                    Catch::Contains("block_k"));
  for (float x : out.o) CHECK(x == 42.f);
}
