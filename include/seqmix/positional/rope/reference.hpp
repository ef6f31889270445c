// rope: the argument structs, their validation and the readable definition
// (seqmix::reference::rope). The fast form is in fast.hpp.
//
// For token (b, t) at position p = positions[b*T + t] (or positions[t] when one list of T
// serves every row, or t when no list is given), head h, pair i < R/2 of the layout's pairs
// (a, b) = (i, i + R/2) half-split or (2i, 2i+1) interleaved, m = attention factor:
//   out[a] = m * (x[a] * cos(p * inv_freq[i]) - x[b] * sin(p * inv_freq[i]))
//   out[b] = m * (x[b] * cos(p * inv_freq[i]) + x[a] * sin(p * inv_freq[i]))
//   out[d] = x[d]                                              for R <= d < D (partial rotary)
// Positions are int32 or int64 (IndexList), so packed ([1, total_T, H, D] with each sequence's
// own positions) and paged batches need no copy. out may be x itself (in place: same data and
// strides) but may not overlap it otherwise.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/positional/rope/table.hpp"

namespace seqmix {

/// rope's inputs.
struct RopeInputs {
  ConstView<float, 4> x;  ///< [B,T,H,D], D >= rotary_dim
  IndexList positions;    ///< [B*T] (token (b,t) at b*T+t) or [T] (every row alike); empty: p = t
};

/// rope's output.
struct RopeOutputs {
  TensorView<float, 4> out;  ///< [B,T,H,D]; may be exactly x (in place)
};

/// Rotary embedding of the queries of an operator that scores them against keys stored rotated
/// (the lightning indexer, the top-k scorers; docs/operators.md section 10). The queries are
/// rotated once per call into the operator's scratch, never written back: the result equals
/// seqmix::rope on q at these positions, then the operator without it.
struct QueryRope {
  /// The table, or nullptr (no rotation). The caller's; it must outlive the call.
  const RopeTable* table = nullptr;
  /// [B,Tq] int32 or int64: query i of batch row b is rotated at positions(b, i). Not given:
  /// Tk - Tq + i (the queries are the last Tq of the Tk keys, as in attention).
  IndexTable positions = {};
};

namespace detail {

inline bool same_view(const ConstView<float, 4>& a, const TensorView<float, 4>& b) noexcept {
  return a.data() == b.data() && a.shape() == b.shape() && a.strides() == b.strides();
}

// Position of token (b, t), the list already validated.
inline index_t rope_position(const IndexList& positions, index_t b, index_t t, index_t T) {
  if (!positions.has_value()) return t;
  return positions.size() == T ? positions[t] : positions[b * T + t];
}

// x[0, R) rotated at position p in double, from the table's frequencies (not its cos/sin): the
// definition, shared by reference::rope and the reference forms of the fused rope.
inline void rope_row_double(const RopeTable& table, index_t p, double* x) {
  const index_t half = table.pairs();
  const bool interleaved = table.layout() == RopeLayout::interleaved;
  const double m = table.attention_factor();
  for (index_t i = 0; i < half; ++i) {
    const index_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const double angle = static_cast<double>(p) * table.inv_freq()[static_cast<std::size_t>(i)];
    const double scale = m * table.xpos_scale(p, i);
    const double c = scale * std::cos(angle), s = scale * std::sin(angle), a = x[ia], b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = b * c + a * s;
  }
}

// A table handed to a fused form (attention, the appends): built, and no wider than the head
// size `D` of the rows it rotates. Positions are the caller's to check.
// `use`: what the form rotates with it. An xPos table scales one side only (its xpos_role), so
// a form rotating both queries and keys with one table refuses it, and each side needs its own.
enum class FusedRopeUse { queries, keys, both };

inline void check_fused_rope_table(const ArgCheck& check, const RopeTable& table, index_t D,
                                   FusedRopeUse use = FusedRopeUse::both) {
  if (table.empty()) check.fail("rope", "is an empty table (default-constructed); build it from a RopeConfig");
  if (table.xpos()) {
    const bool query_table = table.config().xpos_role == XposRole::query;
    if (use == FusedRopeUse::both)
      check.fail("rope", "is an xPos table (xpos_scale_base > 0), which scales only queries or only keys, and this "
                         "form rotates both with it: rotate the keys with the key table first (rope(), the appends) "
                         "and pass the query table (attention: rope_rotated_keys = Tk)");
    if (use == FusedRopeUse::queries && !query_table)
      check.fail("rope", "is an xPos table for keys (xpos_role = key), but this form rotates queries with it");
    if (use == FusedRopeUse::keys && query_table)
      check.fail("rope", "is an xPos table for queries (xpos_role = query), but this form rotates keys with it");
  }
  if (table.rotary_dim() > D)
    check.fail("rope", "has rotary_dim " + std::to_string(table.rotary_dim()) + ", above the key head size Dk = " +
                           std::to_string(D));
}

// A QueryRope for queries [B, Tq, *, D] against Tk keys (Tk < 0: unknown, positions required):
// the table, the positions' shape, every position inside the table. No allocation on success.
inline void validate_query_rope(const ArgCheck& check, const QueryRope& rope, index_t B, index_t Tq, index_t Tk,
                                index_t D) {
  if (!rope.table) {
    rope.positions.check_optional_shape(check, "rope.positions", {B, Tq}, "B,Tq");
    return;
  }
  check_fused_rope_table(check, *rope.table, D, FusedRopeUse::queries);
  const index_t P = rope.table->positions();
  if (!rope.positions.has_value()) {
    if (Tk < 0 && B * Tq > 0)
      check.fail("rope.positions", "are required here (the key count is not known, so Tk - Tq + i cannot be formed)");
    if (Tq > 0 && B > 0 && Tq > Tk)
      check.fail("rope.positions", "not given, and Tq = " + std::to_string(Tq) + " > Tk = " + std::to_string(Tk) +
                                       ": the default query positions Tk - Tq + i are negative");
    if (Tq > 0 && B > 0 && Tk > P)
      check.fail("rope", "covers positions [0, " + std::to_string(P) + "), but the last query is at position " +
                             std::to_string(Tk - 1));
    return;
  }
  rope.positions.check_optional_shape(check, "rope.positions", {B, Tq}, "B,Tq");
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i) {
      const index_t p = rope.positions(b, i);
      if (p < 0 || p >= P)
        check.fail("rope.positions", "entry [" + std::to_string(b) + ", " + std::to_string(i) + "] is " +
                                         std::to_string(p) + ", outside the table's positions [0, " +
                                         std::to_string(P) + ")");
    }
}

// The position query i of batch row b is rotated at (the QueryRope already validated).
inline index_t query_rope_position(const QueryRope& rope, index_t b, index_t i, index_t Tq, index_t Tk) {
  return rope.positions.has_value() ? rope.positions(b, i) : Tk - Tq + i;
}

// Every check of a rope call: the table, the shapes, the aliasing, every position inside the
// table. Nothing is written before it returns. Formats messages only on failure.
inline void validate_rope(const ArgCheck& check, const RopeTable& table, const RopeInputs& in,
                          const RopeOutputs& out) {
  if (table.empty()) check.fail("table", "is empty (default-constructed); build it from a RopeConfig");
  check.shape("x", in.x, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,D");
  const index_t B = in.x.size(0), T = in.x.size(1), H = in.x.size(2), D = in.x.size(3);
  if (D < table.rotary_dim())
    check.fail("x", "has head size D = " + std::to_string(D) + ", below the table's rotary_dim " +
                        std::to_string(table.rotary_dim()));
  check.shape("out", out.out, std::array<index_t, 4>{B, T, H, D}, "B,T,H,D");
  if (!same_view(in.x, out.out)) check.no_overlap("out", out.out, "x", in.x);
  const IndexList& pos = in.positions;
  if (!pos.has_value()) {
    if (T > table.positions())
      check.fail("x", "has T = " + std::to_string(T) + " tokens at positions 0..T-1, beyond the table's " +
                          std::to_string(table.positions()) + " positions");
    return;
  }
  if (pos.dangling()) check.fail("positions", "has a null data pointer");
  const index_t count = B * T;
  if (pos.size() != count && pos.size() != T)
    check.fail("positions", "must hold B*T = " + std::to_string(count) + " (or T = " + std::to_string(T) +
                                ") entries, got " + std::to_string(pos.size()));
  for (index_t i = 0; i < pos.size(); ++i) {
    const index_t p = pos[i];
    if (p < 0 || p >= table.positions())
      check.fail("positions", "entry " + std::to_string(i) + " is " + std::to_string(p) +
                                  ", outside the table's positions [0, " + std::to_string(table.positions()) + ")");
  }
}

}  // namespace detail

namespace reference {

/// Plain loops, angles and rotations in double from the table's frequencies (not its cos/sin).
inline void rope(const RopeTable& table, const RopeInputs& in, const RopeOutputs& out) {
  detail::validate_rope(ArgCheck("reference::rope"), table, in, out);
  const index_t B = in.x.size(0), T = in.x.size(1), H = in.x.size(2), D = in.x.size(3);
  std::vector<double> row(static_cast<std::size_t>(D));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t) {
      const index_t p = detail::rope_position(in.positions, b, t, T);
      for (index_t h = 0; h < H; ++h) {
        for (index_t d = 0; d < D; ++d) row[static_cast<std::size_t>(d)] = in.x(b, t, h, d);
        detail::rope_row_double(table, p, row.data());
        for (index_t d = 0; d < D; ++d) out.out(b, t, h, d) = static_cast<float>(row[static_cast<std::size_t>(d)]);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
