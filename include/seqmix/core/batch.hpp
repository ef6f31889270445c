// How a call's tokens and states map to sequences: dense batches, packed (varlen) batches and
// state slots in a caller-owned pool. Shared by every operator that serves ragged batches.
//
// Three independent choices, each optional (an empty view means "not used"):
//
//   cu_seqlens [N+1]          packed tokens: the token tensors are [1, total_T, ...] and
//                             sequence n holds tokens [cu_seqlens[n], cu_seqlens[n+1]). Without
//                             it the batch is dense: sequence n is batch row n, tokens [0, T).
//                             (flash-linear-attention's `cu_seqlens`, flash-attn's varlen.)
//   state_indices [N]         state slots: initial / final states are rows of a pool [S, ...]
//                             and sequence n reads and writes row state_indices[n], in place;
//                             -1 marks a padding sequence: no state is read or written and its
//                             outputs are left untouched. Without it sequence n uses row n.
//                             (vLLM's mamba / GDN `state_indices`, `cache_indices`.)
//   has_initial_state [N]     false: sequence n starts from zeros whatever the pool holds
//                             (a slot handed to a new request). Without it every sequence with
//                             an initial state given starts from it.
//
// Index lists are int32 or int64, as the caller's engine keeps them. Nothing here allocates
// on the hot path: every query reads the caller's views directly.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// A read-only list of indices stored as int32 or int64 (the caller's choice), read as index_t.
class IndexList {
 public:
  IndexList() = default;  ///< not given
  /// Wraps a caller's int32 or int64 index tensor or vector (not copied: it must outlive the call).
  ///@{
  IndexList(ConstView<std::int32_t, 1> v) : i32_(v) {}  // NOLINT: implicit by design
  IndexList(ConstView<std::int64_t, 1> v) : i64_(v) {}  // NOLINT
  IndexList(TensorView<std::int32_t, 1> v) : i32_(v) {}  // NOLINT
  IndexList(TensorView<std::int64_t, 1> v) : i64_(v) {}  // NOLINT
  IndexList(const std::vector<std::int32_t>& v)  // NOLINT
      : i32_(v.data(), {static_cast<index_t>(v.size())}) {}
  IndexList(const std::vector<std::int64_t>& v)  // NOLINT
      : i64_(v.data(), {static_cast<index_t>(v.size())}) {}

  ///@}
  /// False for the default (not given).
  bool has_value() const noexcept { return i32_.has_value() || i64_.has_value(); }
  /// Number of indices.
  index_t size() const noexcept { return i32_.has_value() ? i32_.size(0) : i64_.size(0); }
  /// Index i, widened to index_t.
  index_t operator[](index_t i) const {
    return i32_.has_value() ? static_cast<index_t>(i32_(i)) : static_cast<index_t>(i64_(i));
  }
  /// A null pointer with a non-zero extent: refused by validation.
  bool dangling() const noexcept {
    return (i32_.data() == nullptr && i32_.size(0) > 0) || (i64_.data() == nullptr && i64_.size(0) > 0);
  }

 private:
  ConstView<std::int32_t, 1> i32_;
  ConstView<std::int64_t, 1> i64_;
};

/// A read-only 2-D table of indices or positions stored as int32 or int64 (the caller's choice),
/// read as index_t: attention's query positions [B,Tq], the KV cache's token positions [B,T],
/// paged attention's block tables [N,max_blocks]. The 2-D sibling of IndexList.
class IndexTable {
 public:
  IndexTable() = default;  ///< not given
  /// Wraps a caller's int32 or int64 [rows, cols] tensor (not copied).
  ///@{
  IndexTable(ConstView<std::int32_t, 2> v) : i32_(v) {}   // NOLINT: implicit by design
  IndexTable(ConstView<std::int64_t, 2> v) : i64_(v) {}   // NOLINT
  IndexTable(TensorView<std::int32_t, 2> v) : i32_(v) {}  // NOLINT
  IndexTable(TensorView<std::int64_t, 2> v) : i64_(v) {}  // NOLINT
  ///@}

  /// False for the default (not given).
  bool has_value() const noexcept { return i32_.has_value() || i64_.has_value(); }
  /// Extent of dimension 0.
  index_t rows() const noexcept { return i32_.has_value() ? i32_.size(0) : i64_.size(0); }
  /// Extent of dimension 1.
  index_t cols() const noexcept { return i32_.has_value() ? i32_.size(1) : i64_.size(1); }
  /// Entry (n, i), read as index_t.
  index_t operator()(index_t n, index_t i) const {
    return i32_.has_value() ? static_cast<index_t>(i32_(n, i)) : static_cast<index_t>(i64_(n, i));
  }
  /// A null pointer with a non-zero extent: refused by validation.
  bool dangling() const noexcept {
    return (i32_.data() == nullptr && i32_.numel() > 0) || (i64_.data() == nullptr && i64_.numel() > 0);
  }
  /// ArgCheck::optional_shape on the table: a table not given passes, a given one must have the
  /// expected shape (-1 = any extent) and a data pointer.
  void check_optional_shape(const ArgCheck& check, const char* argument, const std::array<index_t, 2>& expected,
                            const char* dims) const {
    check.optional_shape(argument, i32_, expected, dims);
    check.optional_shape(argument, i64_, expected, dims);
  }
  /// Positions given as a table: every entry within (-2^62, 2^62), so that the differences and
  /// windows an operator forms from them cannot overflow (int64 positions come from the caller).
  void check_position_range(const ArgCheck& check, const char* argument) const {
    if (!i64_.has_value()) return;  // int32 entries cannot reach the bound
    for (index_t n = 0; n < rows(); ++n)
      for (index_t i = 0; i < cols(); ++i) {
        const index_t p = (*this)(n, i);
        if (p <= -kMaxPosition || p >= kMaxPosition)
          check.fail(argument, "entry (" + std::to_string(n) + ", " + std::to_string(i) + ") = " + std::to_string(p) +
                                   " is outside (-2^62, 2^62), where position arithmetic could overflow");
      }
  }

 private:
  ConstView<std::int32_t, 2> i32_;
  ConstView<std::int64_t, 2> i64_;
};

/// A read-only list of flags stored as bool or uint8 (non-zero is true).
class FlagList {
 public:
  FlagList() = default;
  /// Wraps a caller's bool or uint8 flag tensor or vector (not copied: it must outlive the call).
  ///@{
  FlagList(ConstView<bool, 1> v) : b_(v) {}           // NOLINT: implicit by design
  FlagList(ConstView<std::uint8_t, 1> v) : u8_(v) {}  // NOLINT
  FlagList(TensorView<bool, 1> v) : b_(v) {}          // NOLINT
  FlagList(TensorView<std::uint8_t, 1> v) : u8_(v) {} // NOLINT
  FlagList(const std::vector<std::uint8_t>& v)        // NOLINT
      : u8_(v.data(), {static_cast<index_t>(v.size())}) {}

  ///@}
  /// False for the default (not given).
  bool has_value() const noexcept { return b_.has_value() || u8_.has_value(); }
  /// Number of flags.
  index_t size() const noexcept { return b_.has_value() ? b_.size(0) : u8_.size(0); }
  /// Flag i.
  bool operator[](index_t i) const { return b_.has_value() ? b_(i) : u8_(i) != 0; }

 private:
  ConstView<bool, 1> b_;
  ConstView<std::uint8_t, 1> u8_;
};

/// The serving arguments of one call. Operators take it as the `batch` member of their inputs.
struct SequenceBatch {
  IndexList cu_seqlens = {};   ///< [N+1], optional: packed tokens
  IndexList state_indices = {}; ///< [N], optional: state rows in a pool, -1 = padding
  FlagList has_initial_state = {}; ///< [N], optional: false = start from zeros

  /// True when cu_seqlens is given (tokens packed along dim 1 of a [1, total_T, ...] tensor).
  bool packed() const noexcept { return cu_seqlens.has_value(); }
  /// True when state_indices is given (states are rows of a pool).
  bool slotted() const noexcept { return state_indices.has_value(); }
};

/// One sequence of a call, resolved.
struct SequenceSpan {
  index_t batch_row = 0;    ///< row of dim 0 of the token tensors
  index_t token_begin = 0;  ///< first token in dim 1
  index_t tokens = 0;       ///< number of tokens
  index_t state_row = -1;   ///< row of the state tensors / pool; -1: padding (skip the sequence)
  bool read_state = false;  ///< start from the state at state_row (else from zeros)
};

/// The validated map from sequences to tokens and state rows. Cheap to copy, owns nothing.
class SequenceMap {
 public:
  SequenceMap() = default;

  /// Checks `batch` against token tensors [B, T, ...] and a state tensor of `state_rows` rows
  /// (the pool size S with slots, else the number of sequences is required). `has_initial`
  /// says whether the call was given an initial state at all. Throws ShapeError naming `op`.
  static SequenceMap make(const std::string& op, const SequenceBatch& batch, index_t B, index_t T,
                          bool has_initial, index_t state_rows) {
    return make(ArgCheck(op), batch, B, T, has_initial, state_rows);
  }

  /// The same with the caller's ArgCheck: no allocation on a valid call (decode steps keep theirs
  /// in a function-local static), messages are formatted only on failure.
  static SequenceMap make(const ArgCheck& check, const SequenceBatch& batch, index_t B, index_t T,
                          bool has_initial, index_t state_rows) {
    SequenceMap m;
    m.batch_ = batch;
    m.B_ = B;
    m.T_ = T;
    m.has_initial_ = has_initial;
    if (batch.packed()) {
      const IndexList& cu = batch.cu_seqlens;
      if (cu.dangling()) check.fail("cu_seqlens", "has a null data pointer");
      if (cu.size() < 1) check.fail("cu_seqlens", "must hold N+1 >= 1 offsets, got an empty list");
      if (B != 1) check.fail("cu_seqlens", "needs packed token tensors with batch 1, got B = " + std::to_string(B));
      if (cu[0] != 0) check.fail("cu_seqlens", "must start at 0, got " + std::to_string(cu[0]));
      for (index_t n = 1; n < cu.size(); ++n)
        if (cu[n] < cu[n - 1]) {
          std::ostringstream msg;
          msg << "must be non-decreasing, got cu_seqlens[" << n - 1 << "] = " << cu[n - 1] << " > cu_seqlens[" << n
              << "] = " << cu[n];
          check.fail("cu_seqlens", msg.str());
        }
      if (cu[cu.size() - 1] != T)
        check.fail("cu_seqlens", "must end at total_T = " + std::to_string(T) + ", got " +
                                     std::to_string(cu[cu.size() - 1]));
      m.N_ = cu.size() - 1;
    } else {
      m.N_ = B;
    }
    if (batch.slotted()) {
      const IndexList& idx = batch.state_indices;
      if (idx.dangling()) check.fail("state_indices", "has a null data pointer");
      if (idx.size() != m.N_)
        check.fail("state_indices", "must hold one entry per sequence (" + std::to_string(m.N_) + "), got " +
                                        std::to_string(idx.size()));
      check_slots(check, idx, state_rows);
    } else if (state_rows >= 0 && state_rows != m.N_) {
      check.fail("state", "must have one row per sequence (" + std::to_string(m.N_) + "), got " +
                              std::to_string(state_rows));
    }
    if (batch.has_initial_state.has_value() && batch.has_initial_state.size() != m.N_)
      check.fail("has_initial_state", "must hold one flag per sequence (" + std::to_string(m.N_) + "), got " +
                                          std::to_string(batch.has_initial_state.size()));
    return m;
  }

  /// Number of sequences N.
  index_t sequences() const noexcept { return N_; }
  /// True for a packed (cu_seqlens) batch.
  bool packed() const noexcept { return batch_.packed(); }
  /// True when states live in pool slots (state_indices).
  bool slotted() const noexcept { return batch_.slotted(); }

  /// Sequence n: its batch row, token range and state row.
  SequenceSpan operator[](index_t n) const {
    SequenceSpan s;
    if (batch_.packed()) {
      s.batch_row = 0;
      s.token_begin = batch_.cu_seqlens[n];
      s.tokens = batch_.cu_seqlens[n + 1] - s.token_begin;
    } else {
      s.batch_row = n;
      s.token_begin = 0;
      s.tokens = T_;
    }
    s.state_row = batch_.slotted() ? batch_.state_indices[n] : n;
    s.read_state = has_initial_ && s.state_row >= 0 &&
                   (!batch_.has_initial_state.has_value() || batch_.has_initial_state[n]);
    return s;
  }

  /// The longest sequence (for workspace sizing).
  index_t max_tokens() const {
    if (!batch_.packed()) return T_;
    index_t m = 0;
    for (index_t n = 0; n < N_; ++n) m = std::max(m, batch_.cu_seqlens[n + 1] - batch_.cu_seqlens[n]);
    return m;
  }

 private:
  /// Every slot in [-1, S), no slot twice: two sequences writing one row would race.
  static void check_slots(const ArgCheck& check, const IndexList& idx, index_t S) {
    const index_t N = idx.size();
    for (index_t n = 0; n < N; ++n) {
      const index_t row = idx[n];
      if (row < -1 || row >= S) {
        std::ostringstream msg;
        msg << "entry " << n << " is " << row << ", outside [-1, " << S << ") (the state pool has " << S
            << " rows)";
        check.fail("state_indices", msg.str());
      }
    }
    // Duplicates: a per-thread mark table over the pool, reused across calls (no allocation
    // after warm-up), cleared by walking the list again.
    thread_local std::vector<std::uint8_t> seen;
    if (static_cast<index_t>(seen.size()) < S) seen.resize(static_cast<std::size_t>(S), 0);
    index_t duplicate = -1;
    for (index_t n = 0; n < N && duplicate < 0; ++n) {
      const index_t row = idx[n];
      if (row < 0) continue;
      if (seen[static_cast<std::size_t>(row)]) duplicate = n;
      seen[static_cast<std::size_t>(row)] = 1;
    }
    for (index_t n = 0; n < N; ++n)
      if (idx[n] >= 0) seen[static_cast<std::size_t>(idx[n])] = 0;
    if (duplicate >= 0)
      check.fail("state_indices", "names row " + std::to_string(idx[duplicate]) + " twice (entry " +
                                      std::to_string(duplicate) + "); each sequence needs its own slot");
  }

  SequenceBatch batch_;
  index_t N_ = 0, B_ = 0, T_ = 0;
  bool has_initial_ = false;
};

/// True when the memory spanned by two views overlaps (used to refuse aliasing an operator
/// forbids). Conservative: compares the address ranges the views can touch.
template <class A, std::size_t RA, class B, std::size_t RB>
bool views_overlap(const TensorView<A, RA>& a, const TensorView<B, RB>& b) {
  if (!a.has_value() || !b.has_value() || a.numel() == 0 || b.numel() == 0) return false;
  const auto ra = detail::address_range(a), rb = detail::address_range(b);
  return ra.first < rb.second && rb.first < ra.second;
}

}  // namespace seqmix
