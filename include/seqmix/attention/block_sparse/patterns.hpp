// Builders of the usual block-sparse layouts (SPEC section 5). Each returns a BlockPattern: one
// layout row per query block, shared by every batch row and head (layout() views it as the
// [1, 1, Nq + 1] offsets block_sparse_attention takes).
//
// Positions follow dense attention: query i sits at Tk - Tq + i (bottom-right aligned), so the
// "diagonal" of query block qb is the range of key blocks [first, last] that hold the positions
// of its queries, and the distance of key block kb from the query block is
//   dist(qb, kb) = first - kb if kb < first, kb - last if kb > last, 0 inside (never negative).
// A pattern option `causal` drops the key blocks after `last` (they would be fully masked by a
// causal attention call anyway, so dropping them only saves work); the attention options still
// decide visibility inside the selected blocks.
//
//   local_global   Longformer / BigBird / ETC: key blocks with dist <= window_blocks; the first
//                  global_blocks key blocks (global tokens seen by everyone); query blocks that
//                  hold a global token (positions < global_blocks * block_k) see every block;
//                  plus random_blocks other blocks per query block drawn with `seed` (BigBird).
//   strided        Sparse Transformer "strided", in blocks: kb with dist < stride_blocks (the
//                  local band) or (first - kb) a multiple of stride_blocks (the strided column).
//   fixed          Sparse Transformer "fixed": the key axis is cut into segments of
//                  segment_blocks blocks; a query block sees every block of its own segment(s)
//                  and the last summary_blocks blocks of every segment.
//   power          PowerAttention: dist < local_blocks, or dist a power of two (1, 2, 4, ...);
//                  log-many blocks reach exponentially far back.
//   chunk_diagonal Chunked attention (MEGA / TCNCA): the key axis is cut into chunks of
//                  chunk_blocks blocks; a query block sees only the chunk(s) holding its positions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "seqmix/attention/block_sparse/reference.hpp"

namespace seqmix {

/// The query / key sequence lengths and block sizes a pattern is built for.
struct BlockGrid {
  ///@{
  /// Query and key sequence lengths.
  index_t Tq = 0, Tk = 0;
  ///@}
  ///@{
  /// Query and key block sizes, in tokens (64 by default).
  index_t block_q = 64, block_k = 64;
  ///@}
  /// ceil(Tq / block_q).
  index_t query_blocks() const noexcept { return detail::ceil_div(Tq, block_q); }
  /// ceil(Tk / block_k).
  index_t key_blocks() const noexcept { return detail::ceil_div(Tk, block_k); }
};

/// An owned layout for one (batch row, head), shared by all of them.
struct BlockPattern {
  /// What the pattern was built for.
  BlockGrid grid;
  std::vector<std::int32_t> offsets;  ///< [query_blocks + 1]
  std::vector<std::int32_t> indices;  ///< selected key blocks, increasing within each query block

  /// A view of the pattern as the [1, 1, Nq + 1] layout block_sparse_attention takes (valid while
  /// the pattern lives).
  BlockSparseLayout layout() const {
    BlockSparseLayout l;
    l.block_q = grid.block_q, l.block_k = grid.block_k;
    l.offsets = ConstView<std::int32_t, 3>(offsets.data(), {1, 1, static_cast<index_t>(offsets.size())});
    l.indices = ConstView<std::int32_t, 1>(indices.data(), {static_cast<index_t>(indices.size())});
    return l;
  }
  /// Whether query block qb sees key block kb.
  bool selected(index_t qb, index_t kb) const {
    return std::binary_search(indices.begin() + offsets[qb], indices.begin() + offsets[qb + 1], static_cast<std::int32_t>(kb));
  }
  /// Fraction of the query-block x key-block grid that is selected.
  double density() const {
    return static_cast<double>(indices.size()) / static_cast<double>(grid.query_blocks() * grid.key_blocks());
  }
};

/// Options of local_global_pattern (Longformer / BigBird / ETC).
struct LocalGlobalPattern {
  index_t window_blocks = 1;  ///< key blocks on each side of the diagonal
  index_t global_blocks = 1;  ///< leading key blocks that every query block sees, and that see all
  index_t random_blocks = 0;  ///< BigBird: extra random key blocks per query block
  std::uint64_t seed = 0;     ///< for the random blocks
  /// Drop key blocks after the query block's diagonal (they are masked anyway when causal).
  bool causal = true;
};
/// Options of strided_pattern (Sparse Transformer "strided").
struct StridedPattern {
  /// Width of the local band and period of the strided columns, in blocks.
  index_t stride_blocks = 4;
  /// Drop key blocks after the query block's diagonal.
  bool causal = true;
};
/// Options of fixed_pattern (Sparse Transformer "fixed").
struct FixedPattern {
  /// Segment length, in key blocks.
  index_t segment_blocks = 4;
  /// Trailing blocks of every segment that all later query blocks see.
  index_t summary_blocks = 1;
  /// Drop key blocks after the query block's diagonal.
  bool causal = true;
};
/// Options of power_pattern (PowerAttention).
struct PowerPattern {
  /// Blocks at distance below this are always seen.
  index_t local_blocks = 1;
  /// Drop key blocks after the query block's diagonal.
  bool causal = true;
};
/// Options of chunk_diagonal_pattern (chunked attention as in MEGA / TCNCA).
struct ChunkDiagonalPattern {
  /// Chunk length, in key blocks.
  index_t chunk_blocks = 4;
  /// Drop key blocks after the query block's diagonal.
  bool causal = true;
};

namespace detail {

// Key blocks [first, last] holding the positions of query block qb (clamped to the key range;
// queries before key 0 map to block 0).
struct Diagonal {
  index_t first, last;
};

inline Diagonal diagonal(const BlockGrid& g, index_t qb) {
  const index_t i0 = qb * g.block_q, i1 = std::min(i0 + g.block_q, g.Tq) - 1;
  const index_t p0 = g.Tk - g.Tq + i0, p1 = g.Tk - g.Tq + i1;
  const index_t last_block = std::max<index_t>(g.key_blocks() - 1, 0);
  return {std::clamp<index_t>(p0 / g.block_k, 0, last_block), std::clamp<index_t>(p1 / g.block_k, 0, last_block)};
}

inline index_t block_distance(const Diagonal& dg, index_t kb) {
  return kb < dg.first ? dg.first - kb : (kb > dg.last ? kb - dg.last : 0);
}

inline void check_grid(const char* op, const BlockGrid& g) {
  const ArgCheck check(op);
  check.that(g.Tq >= 0 && g.Tk >= 0, "grid", "must have Tq, Tk >= 0");
  check.that(g.block_q >= 1 && g.block_k >= 1, "grid", "must have block sizes >= 1");
}

// Builds a pattern from a predicate keep(qb, kb, diagonal), dropping future blocks if causal.
template <class Keep>
BlockPattern build_pattern(const BlockGrid& g, bool causal, Keep&& keep) {
  BlockPattern p;
  p.grid = g;
  p.offsets.push_back(0);
  for (index_t qb = 0; qb < g.query_blocks(); ++qb) {
    const Diagonal dg = diagonal(g, qb);
    for (index_t kb = 0; kb < g.key_blocks(); ++kb)
      if (!(causal && kb > dg.last) && keep(qb, kb, dg)) p.indices.push_back(static_cast<std::int32_t>(kb));
    p.offsets.push_back(static_cast<std::int32_t>(p.indices.size()));
  }
  return p;
}

inline bool is_power_of_two(index_t x) noexcept { return x > 0 && (x & (x - 1)) == 0; }

}  // namespace detail

/// Longformer / BigBird layout: a band of window_blocks around the diagonal, global_blocks
/// leading blocks seen by and seeing everyone, random_blocks random blocks drawn with seed.
/// Pattern builders throw ShapeError for a non-positive block size or negative option.
inline BlockPattern local_global_pattern(const BlockGrid& g, const LocalGlobalPattern& o) {
  detail::check_grid("local_global_pattern", g);
  const ArgCheck check("local_global_pattern");
  check.that(o.window_blocks >= 0 && o.global_blocks >= 0 && o.random_blocks >= 0, "options",
             "must have window_blocks, global_blocks, random_blocks >= 0");
  // The random blocks of each query block, drawn up front so that the build is a pure predicate.
  std::vector<std::vector<char>> random(static_cast<std::size_t>(g.query_blocks()),
                                        std::vector<char>(static_cast<std::size_t>(g.key_blocks()), 0));
  std::mt19937_64 engine(o.seed);
  for (index_t qb = 0; qb < g.query_blocks() && o.random_blocks > 0; ++qb) {
    const detail::Diagonal dg = detail::diagonal(g, qb);
    const index_t limit = o.causal ? dg.last + 1 : g.key_blocks();
    std::vector<index_t> pool;
    for (index_t kb = o.global_blocks; kb < limit; ++kb)
      if (detail::block_distance(dg, kb) > o.window_blocks) pool.push_back(kb);
    std::shuffle(pool.begin(), pool.end(), engine);
    for (index_t r = 0; r < std::min<index_t>(o.random_blocks, static_cast<index_t>(pool.size())); ++r)
      random[qb][pool[r]] = 1;
  }
  const index_t global_end = o.global_blocks * g.block_k;  // positions of the global tokens
  return detail::build_pattern(g, o.causal, [&](index_t qb, index_t kb, const detail::Diagonal& dg) {
    const bool global_query = g.Tk - g.Tq + qb * g.block_q < global_end;
    return global_query || kb < o.global_blocks || detail::block_distance(dg, kb) <= o.window_blocks || random[qb][kb];
  });
}

/// Sparse Transformer "strided": the local band plus every stride_blocks-th block back.
inline BlockPattern strided_pattern(const BlockGrid& g, const StridedPattern& o) {
  detail::check_grid("strided_pattern", g);
  ArgCheck("strided_pattern").that(o.stride_blocks >= 1, "options.stride_blocks", "must be >= 1");
  return detail::build_pattern(g, o.causal, [&](index_t, index_t kb, const detail::Diagonal& dg) {
    return detail::block_distance(dg, kb) < o.stride_blocks || (kb <= dg.first && (dg.first - kb) % o.stride_blocks == 0);
  });
}

/// Sparse Transformer "fixed": own segment plus the summary blocks of every segment.
inline BlockPattern fixed_pattern(const BlockGrid& g, const FixedPattern& o) {
  detail::check_grid("fixed_pattern", g);
  ArgCheck("fixed_pattern")
      .that(o.segment_blocks >= 1, "options.segment_blocks", "must be >= 1")
      .that(o.summary_blocks >= 0 && o.summary_blocks <= o.segment_blocks, "options.summary_blocks",
            "must lie in [0, segment_blocks]");
  return detail::build_pattern(g, o.causal, [&](index_t, index_t kb, const detail::Diagonal& dg) {
    const index_t segment = kb / o.segment_blocks;
    const bool own = segment >= dg.first / o.segment_blocks && segment <= dg.last / o.segment_blocks;
    return own || kb % o.segment_blocks >= o.segment_blocks - o.summary_blocks;
  });
}

/// PowerAttention: the local band plus blocks at power-of-two distances.
inline BlockPattern power_pattern(const BlockGrid& g, const PowerPattern& o) {
  detail::check_grid("power_pattern", g);
  ArgCheck("power_pattern").that(o.local_blocks >= 1, "options.local_blocks", "must be >= 1");
  return detail::build_pattern(g, o.causal, [&](index_t, index_t kb, const detail::Diagonal& dg) {
    const index_t dist = detail::block_distance(dg, kb);
    return dist < o.local_blocks || detail::is_power_of_two(dist);
  });
}

/// Chunked attention: only the chunk(s) holding the query block's positions.
inline BlockPattern chunk_diagonal_pattern(const BlockGrid& g, const ChunkDiagonalPattern& o) {
  detail::check_grid("chunk_diagonal_pattern", g);
  ArgCheck("chunk_diagonal_pattern").that(o.chunk_blocks >= 1, "options.chunk_blocks", "must be >= 1");
  return detail::build_pattern(g, o.causal, [&](index_t, index_t kb, const detail::Diagonal& dg) {
    const index_t chunk = kb / o.chunk_blocks;
    return chunk >= dg.first / o.chunk_blocks && chunk <= dg.last / o.chunk_blocks;
  });
}

}  // namespace seqmix
