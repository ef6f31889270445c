// lightning_indexer: DeepSeek sparse attention's key scorer (SPEC section 5).
//
//   scores[b,t,j] = sum_h weights[b,t,h] * relu(q[b,t,h,:] . k[b,j,:])
//
// weights are used as given (callers fold any scale into them). With options.causal, keys after
// the query's position (bottom-right aligned, as in attention: query t sits at Tk - T + t) get
// -inf. With inputs.rope, q[b,t,h] is first rotated at its position (QueryRope: positions[b,t],
// default Tk - T + t) against keys the caller stored rotated, as DeepSeek-V3.2's indexer does;
// the causal rule keeps its own alignment. This header holds the definition, the argument structs and their validation; the fast
// form is in fast.hpp.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/positional/rope/reference.hpp"

namespace seqmix {

/// Options of lightning_indexer (docs/operators.md section 5).
struct LightningIndexerOptions {
  /// Scores of keys j > Tk - T + t are set to -inf.
  bool causal = false;
};

/// Arguments of lightning_indexer: Hi indexer heads of size Di scoring one shared key head.
struct LightningIndexerInputs {
  ConstView<float, 4> q;        ///< [B,T,Hi,Di]
  ConstView<float, 3> k;        ///< [B,Tk,Di], one key head shared by every indexer head
  ConstView<float, 3> weights;  ///< [B,T,Hi]
  /// Rotary embedding of q (nullptr table: none), rotated once per call as each query row is
  /// loaded; k is taken as stored rotated.
  QueryRope rope = {};
};

namespace detail {

struct IndexerDims {
  index_t B, T, Tk, Hi, Di;
};

inline IndexerDims validate_lightning_indexer(const char* op, const LightningIndexerInputs& in,
                                              const TensorView<float, 3>& scores) {
  const ArgCheck check(op);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,Hi,Di");
  const index_t B = in.q.size(0), T = in.q.size(1), Hi = in.q.size(2), Di = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 3>{B, -1, Di}, "B,Tk,Di");
  const index_t Tk = in.k.size(1);
  check.shape("weights", in.weights, std::array<index_t, 3>{B, T, Hi}, "B,T,Hi");
  check.shape("scores", scores, std::array<index_t, 3>{B, T, Tk}, "B,T,Tk");
  validate_query_rope(check, in.rope, B, T, Tk, Di);
  return {B, T, Tk, Hi, Di};
}

}  // namespace detail

namespace reference {

/// The definition, one (query, key) pair at a time, accumulated in double.
inline void lightning_indexer(const LightningIndexerInputs& in, const TensorView<float, 3>& scores,
                              const LightningIndexerOptions& options = {},
                              const Executor& executor = serial_executor()) {
  (void)executor;
  const auto d = detail::validate_lightning_indexer("reference::lightning_indexer", in, scores);
  std::vector<double> query(static_cast<std::size_t>(d.Hi * d.Di));  // the row's heads, rotated
  for (index_t b = 0; b < d.B; ++b)
    for (index_t t = 0; t < d.T; ++t) {
      for (index_t h = 0; h < d.Hi; ++h) {
        double* row = query.data() + h * d.Di;
        for (index_t c = 0; c < d.Di; ++c) row[c] = in.q(b, t, h, c);
        if (in.rope.table)
          detail::rope_row_double(*in.rope.table, detail::query_rope_position(in.rope, b, t, d.T, d.Tk), row);
      }
      for (index_t j = 0; j < d.Tk; ++j) {
        if (options.causal && j > d.Tk - d.T + t) {
          scores(b, t, j) = -std::numeric_limits<float>::infinity();
          continue;
        }
        double total = 0.0;
        for (index_t h = 0; h < d.Hi; ++h) {
          double dot = 0.0;
          for (index_t c = 0; c < d.Di; ++c) dot += query[static_cast<std::size_t>(h * d.Di + c)] * in.k(b, j, c);
          total += in.weights(b, t, h) * std::max(dot, 0.0);
        }
        scores(b, t, j) = static_cast<float>(total);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
