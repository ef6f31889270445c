// The MPI side of context parallelism: how a sequence is sliced over the ranks of a
// communicator (ContextSlices), and the collective argument check every distributed operator
// runs before its first exchange.
//
// Why a collective check: an operator that throws on one rank only (a bad shape there) would
// leave the other ranks blocked in their first receive forever. So every rank validates its own
// arguments without throwing, then all ranks exchange one fixed-size record (their verdict, the
// refusal message if any, and the values every rank must agree on: shapes, options, slices) with
// one MPI_Allgather, and every rank throws the same ShapeError when any rank refused or two ranks
// disagree. A call either proceeds on every rank or fails on every rank, naming the rank.
//
// This folder needs <mpi.h>: it is the optional component seqmix::mpi (CMake target, built when
// MPI is found), never included by seqmix/seqmix.hpp or any other family.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"

namespace seqmix {
namespace mpi {

/// How ContextSlices assigns the positions of a sequence to ranks.
enum class SliceLayout : int {
  contiguous,  ///< rank r holds one run of positions, after rank r - 1's (any lengths, 0 included)
  zigzag,      ///< 2P chunks; rank r holds chunks r and 2P-1-r (balances causal attention's work)
};

/// One run of consecutive positions a rank holds: global positions [begin, begin + length),
/// stored in the rank's local tensors at rows [local, local + length).
struct SliceSegment {
  index_t begin = 0;   ///< first global position
  index_t length = 0;  ///< number of tokens
  index_t local = 0;   ///< first row in the rank's local tensors
};

/// Which positions of one sequence each rank of a communicator holds. A rank's local tensors
/// ([B, tokens(rank), ...]) are its segments concatenated in order. Every rank must build the same
/// slices (the distributed operators check this collectively).
class ContextSlices {
 public:
  ContextSlices() = default;

  /// Rank r holds positions [sum of tokens_per_rank[0..r), + tokens_per_rank[r]); lengths may
  /// differ and may be 0. A negative length is a ShapeError.
  static ContextSlices contiguous(const std::vector<index_t>& tokens_per_rank) {
    ContextSlices s;
    s.layout_ = SliceLayout::contiguous;
    index_t begin = 0;
    for (std::size_t r = 0; r < tokens_per_rank.size(); ++r) {
      const index_t n = tokens_per_rank[r];
      if (n < 0)
        throw ShapeError("ContextSlices::contiguous", "tokens_per_rank",
                         "entry " + std::to_string(r) + " is " + std::to_string(n) + ", must be >= 0");
      s.segments_.push_back({{begin, n, 0}});
      begin += n;
    }
    s.total_ = begin;
    return s;
  }

  /// `total` tokens cut into 2 * ranks chunks at c * total / (2 * ranks); rank r holds chunks r and
  /// 2 * ranks - 1 - r, so under causal attention every rank has about the same work.
  static ContextSlices zigzag(index_t total, int ranks) {
    if (total < 0) throw ShapeError("ContextSlices::zigzag", "total", "must be >= 0, got " + std::to_string(total));
    if (ranks < 1) throw ShapeError("ContextSlices::zigzag", "ranks", "must be >= 1, got " + std::to_string(ranks));
    ContextSlices s;
    s.layout_ = SliceLayout::zigzag;
    s.total_ = total;
    const index_t chunks = 2 * static_cast<index_t>(ranks);
    const auto edge = [&](index_t c) { return static_cast<index_t>(static_cast<long double>(total) * c / chunks); };
    for (index_t r = 0; r < ranks; ++r) {
      const index_t first = r, second = chunks - 1 - r;
      const SliceSegment a{edge(first), edge(first + 1) - edge(first), 0};
      const SliceSegment b{edge(second), edge(second + 1) - edge(second), a.length};
      s.segments_.push_back({a, b});
    }
    return s;
  }

  /// The layout these slices were built with.
  SliceLayout layout() const noexcept { return layout_; }
  /// Number of ranks described.
  int ranks() const noexcept { return static_cast<int>(segments_.size()); }
  /// Tokens of the whole sequence.
  index_t total() const noexcept { return total_; }
  /// The runs of positions rank `r` holds, in local order.
  const std::vector<SliceSegment>& segments(int r) const { return segments_.at(static_cast<std::size_t>(r)); }
  /// Tokens rank `r` holds (the T of its local tensors).
  index_t tokens(int r) const {
    index_t n = 0;
    for (const SliceSegment& s : segments(r)) n += s.length;
    return n;
  }
  /// The global position of local row `i` of rank `r`.
  index_t position(int r, index_t i) const {
    for (const SliceSegment& s : segments(r))
      if (i < s.local + s.length) return s.begin + (i - s.local);
    return -1;
  }
  /// A hash of the layout and every segment, which the collective check compares across ranks.
  std::int64_t fingerprint() const noexcept {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the integers
    const auto mix = [&](std::int64_t x) {
      for (int b = 0; b < 8; ++b) h = (h ^ ((static_cast<std::uint64_t>(x) >> (8 * b)) & 0xff)) * 1099511628211ull;
    };
    mix(static_cast<std::int64_t>(layout_));
    mix(total_);
    for (const auto& rank : segments_) {
      mix(static_cast<std::int64_t>(rank.size()));
      for (const SliceSegment& s : rank) mix(s.begin), mix(s.length);
    }
    return static_cast<std::int64_t>(h);
  }

 private:
  SliceLayout layout_ = SliceLayout::contiguous;
  index_t total_ = 0;
  std::vector<std::vector<SliceSegment>> segments_;
};

namespace detail {

// One value every rank of a call must agree on, named for the message.
struct AgreedValue {
  const char* name;
  std::int64_t value;
};

// The record each rank contributes: its verdict, the refusal (argument and problem, truncated to
// fit), and the values to agree on. Plain bytes, so one MPI_Allgather of MPI_BYTE carries it.
constexpr int kAgreedMax = 24;
struct CheckRecord {
  std::int32_t refused = 0;
  std::int32_t agreed = 0;
  std::int64_t values[kAgreedMax] = {};
  char argument[64] = {};
  char problem[400] = {};
};

inline void copy_truncated(char* dst, std::size_t size, const std::string& src) {
  const std::size_t n = std::min(size - 1, src.size());
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

inline int comm_rank(MPI_Comm comm) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}

inline int comm_size(MPI_Comm comm) {
  int n = 0;
  MPI_Comm_size(comm, &n);
  return n;
}

// Runs `validate` (the rank's local checks; throws ShapeError) on every rank, exchanges the
// verdicts and `agreed`, and throws the same ShapeError on every rank if any rank refused its
// arguments (the lowest such rank's message, naming it) or two ranks gave different agreed values
// (naming the value and both ranks). Collective: every rank of comm must call it.
template <class Validate>
void collective_check(MPI_Comm comm, const std::string& op, const std::vector<AgreedValue>& agreed,
                      Validate&& validate) {
  if (comm == MPI_COMM_NULL) throw ShapeError(op, "comm", "is MPI_COMM_NULL");
  CheckRecord mine;
  try {
    validate();
  } catch (const ShapeError& e) {
    mine.refused = 1;
    copy_truncated(mine.argument, sizeof mine.argument, e.argument());
    // The problem without the "seqmix::<op>: argument '<name>' " prefix, rebuilt below.
    const std::string what = e.what(), prefix = "seqmix::" + e.op() + ": argument '" + e.argument() + "' ";
    copy_truncated(mine.problem, sizeof mine.problem, what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what);
  }
  mine.agreed = static_cast<std::int32_t>(std::min<std::size_t>(agreed.size(), kAgreedMax));
  for (int i = 0; i < mine.agreed; ++i) mine.values[i] = agreed[static_cast<std::size_t>(i)].value;

  const int ranks = comm_size(comm);
  std::vector<CheckRecord> all(static_cast<std::size_t>(ranks));
  MPI_Allgather(&mine, static_cast<int>(sizeof mine), MPI_BYTE, all.data(), static_cast<int>(sizeof mine), MPI_BYTE,
                comm);
  for (int r = 0; r < ranks; ++r) {
    const CheckRecord& rec = all[static_cast<std::size_t>(r)];
    if (rec.refused)
      throw ShapeError(op, rec.argument, std::string(rec.problem) + " (on rank " + std::to_string(r) + " of " +
                                             std::to_string(ranks) + "; every rank refuses the call)");
  }
  for (int i = 0; i < mine.agreed; ++i)
    for (int r = 1; r < ranks; ++r) {
      const std::int64_t a = all[0].values[i], b = all[static_cast<std::size_t>(r)].values[i];
      if (a != b || all[static_cast<std::size_t>(r)].agreed != mine.agreed)
        throw ShapeError(op, agreed[static_cast<std::size_t>(i)].name,
                         "differs between ranks: rank 0 has " + std::to_string(a) + ", rank " + std::to_string(r) +
                             " has " + std::to_string(b) + " (every rank must pass the same; every rank refuses the call)");
    }
}

// Sends / receives `bytes` bytes in pieces of at most 1 GiB (MPI counts are int), appending the
// requests to `requests`. Messages between a pair of ranks on one tag arrive in order.
inline void isend_bytes(const void* data, std::int64_t bytes, int dest, int tag, MPI_Comm comm,
                        std::vector<MPI_Request>& requests) {
  constexpr std::int64_t kPiece = std::int64_t{1} << 30;
  const char* p = static_cast<const char*>(data);
  for (std::int64_t off = 0; off < bytes; off += kPiece) {
    requests.emplace_back();
    MPI_Isend(p + off, static_cast<int>(std::min(kPiece, bytes - off)), MPI_BYTE, dest, tag, comm, &requests.back());
  }
}

inline void irecv_bytes(void* data, std::int64_t bytes, int source, int tag, MPI_Comm comm,
                        std::vector<MPI_Request>& requests) {
  constexpr std::int64_t kPiece = std::int64_t{1} << 30;
  char* p = static_cast<char*>(data);
  for (std::int64_t off = 0; off < bytes; off += kPiece) {
    requests.emplace_back();
    MPI_Irecv(p + off, static_cast<int>(std::min(kPiece, bytes - off)), MPI_BYTE, source, tag, comm,
              &requests.back());
  }
}

// Lets the MPI library progress pending transfers (Open MPI moves large messages only inside MPI
// calls unless it runs a progress thread), without waiting.
inline void poke(std::vector<MPI_Request>& requests) {
  if (requests.empty()) return;
  int done = 0;
  MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
  if (done) requests.clear();
}

inline void wait_all(std::vector<MPI_Request>& requests) {
  if (!requests.empty()) MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
  requests.clear();
}

// One MPI_Exscan of a self-describing slice summary (`mine`, the same byte count on every rank)
// under a non-commutative user reduction: prefix receives the composition of the lower ranks'
// summaries (left untouched on rank 0). The state-passing transports (state_scan.hpp,
// state_passing.hpp) differ only in their summary layout and `compose`.
inline void exscan_summaries(MPI_Comm comm, std::vector<char>& mine, std::vector<char>& prefix,
                             MPI_User_function* compose) {
  MPI_Datatype type;
  MPI_Type_contiguous(static_cast<int>(mine.size()), MPI_BYTE, &type);
  MPI_Type_commit(&type);
  MPI_Op op;
  MPI_Op_create(compose, /*commute=*/0, &op);
  MPI_Exscan(mine.data(), prefix.data(), 1, type, op, comm);
  MPI_Op_free(&op);
  MPI_Type_free(&type);
}

}  // namespace detail
}  // namespace mpi
}  // namespace seqmix
