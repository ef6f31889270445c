// slot_memory, fast form and segment step: per segment, the read (tokens over slots) and the write
// (slots over tokens) of every (batch row, head) are two small GEMM pairs with a row softmax
// between, split over the executor by (b, head); the gates are GEMMs over blocks of 32 slot rows
// (and token rows for lm2's output gate) of all batch rows, split over the executor. README.md has
// the definition.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/memory/slot/reference.hpp"

namespace seqmix {
namespace detail {

/// Rows of the gate GEMMs per task: 32 rows of D = 512 (64 KiB) and the weights' panel stay in L2.
constexpr index_t kSlotGateRows = 32;

/// Row-wise softmax in place.
inline void slot_softmax_rows(RowMajorMatrix<float>& a) {
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    const float top = a.row(r).maxCoeff();
    softmax_numerators_in_place(a.row(r), top);
    a.row(r) /= a.row(r).sum();
  }
}

/// A [D,D] weight view as a contiguous Eigen matrix.
inline RowMajorMatrix<float> slot_weight(const ConstView<float, 2>& w) {
  RowMajorMatrix<float> m(w.size(0), w.size(1));
  for (index_t i = 0; i < w.size(0); ++i)
    for (index_t j = 0; j < w.size(1); ++j) m(i, j) = w(i, j);
  return m;
}

/// Copies n floats read `stride` apart into contiguous dst. The unit-stride case is spelled as
/// std::copy because g++ -O2 leaves the element loop scalar (its cheap vectorizer cost model
/// will not version a loop on a runtime stride), which made these gathers 1.4x slower than -O3.
inline void slot_copy_row(const float* src, index_t stride, index_t n, float* dst) {
  if (stride == 1) {
    std::copy(src, src + n, dst);
    return;
  }
  for (index_t c = 0; c < n; ++c) dst[c] = src[c * stride];
}

/// Stores a row expression to n = row.size() floats `stride` apart, in Eigen's vectors when the
/// stride is 1 (same per-element arithmetic either way; see slot_copy_row for why).
template <class Row>
void slot_store_row(const Row& row, float* dst, index_t stride) {
  const Eigen::Index n = row.size();
  if (stride == 1) {
    Eigen::Map<Eigen::Matrix<float, 1, Eigen::Dynamic>>(dst, n) = row;
    return;
  }
  for (Eigen::Index c = 0; c < n; ++c) dst[c * stride] = row(c);
}

/// Runs the segments of x over `memory` (updated in place) into y. Validated by the caller.
inline void slot_memory_run(const SlotDims& d, const ConstView<float, 3>& x, const TensorView<float, 3>& memory,
                            const SlotMemoryWeights& w, SlotGate gate, const TensorView<float, 3>& y,
                            const Executor& executor) {
  if (d.T == 0) return;
  const RowMajorMatrix<float> wi = slot_weight(w.w_input), wf = slot_weight(w.w_forget);
  const RowMajorMatrix<float> wo = gate == SlotGate::lm2 ? slot_weight(w.w_output) : RowMajorMatrix<float>();
  RowMajorMatrix<float> U(d.B * d.S, d.D), R(d.B * std::min(d.L, d.T), d.D);  // rows b * S + s, b * len + j
  for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
    const index_t len = std::min(d.L, d.T - t0);
    parallel_for(executor, d.B * d.H, 1, [&](index_t begin, index_t end) {
      RowMajorMatrix<float> xh(len, d.dh), mh(d.S, d.dh), scores;
      for (index_t task = begin; task < end; ++task) {
        const index_t b = task / d.H, c0 = (task % d.H) * d.dh;
        for (index_t j = 0; j < len; ++j) slot_copy_row(x.ptr(b, t0 + j, c0), x.stride(2), d.dh, xh.row(j).data());
        for (index_t s = 0; s < d.S; ++s) slot_copy_row(memory.ptr(b, s, c0), memory.stride(2), d.dh, mh.row(s).data());
        scores.noalias() = d.scale * (xh * mh.transpose());  // read: [len,S]
        slot_softmax_rows(scores);
        R.block(b * len, c0, len, d.dh).noalias() = scores * mh;
        scores.noalias() = d.scale * (mh * xh.transpose());  // write: [S,len]
        slot_softmax_rows(scores);
        U.block(b * d.S, c0, d.S, d.dh).noalias() = scores * xh;
      }
    });
    // Gates: slot rows then (lm2) token rows, in blocks over all batch rows.
    const index_t slot_blocks = (d.B * d.S + kSlotGateRows - 1) / kSlotGateRows;
    const index_t token_blocks = (d.B * len + kSlotGateRows - 1) / kSlotGateRows;
    parallel_for(executor, slot_blocks + token_blocks, 1, [&](index_t begin, index_t end) {
      RowMajorMatrix<float> gi, gf;
      for (index_t blk = begin; blk < end; ++blk) {
        if (blk < slot_blocks) {
          const index_t r0 = blk * kSlotGateRows, rows = std::min(kSlotGateRows, d.B * d.S - r0);
          const auto u = U.middleRows(r0, rows);
          gi.noalias() = u * wi.transpose();
          gf.noalias() = u * wf.transpose();
          for (index_t r = 0; r < rows; ++r) {
            const index_t b = (r0 + r) / d.S, s = (r0 + r) % d.S;
            for (index_t c = 0; c < d.D; ++c) {
              const float i = 1.f / (1.f + std::exp(-(gi(r, c) + w.b_input(c))));
              const float f = 1.f / (1.f + std::exp(-(gf(r, c) + w.b_forget(c))));
              const float write = gate == SlotGate::lm2 ? std::tanh(u(r, c)) : u(r, c);
              memory(b, s, c) = f * memory(b, s, c) + i * write;
            }
          }
        } else {
          const index_t r0 = (blk - slot_blocks) * kSlotGateRows, rows = std::min(kSlotGateRows, d.B * len - r0);
          const auto r_rows = R.middleRows(r0, rows);
          if (gate == SlotGate::lm2) gi.noalias() = r_rows * wo.transpose();
          for (index_t r = 0; r < rows; ++r) {
            const index_t b = (r0 + r) / len, j = (r0 + r) % len;
            if (gate == SlotGate::lm2) {
              for (index_t c = 0; c < d.D; ++c) gi(r, c) = 1.f / (1.f + std::exp(-(gi(r, c) + w.b_output(c))));
              slot_store_row(gi.row(r).cwiseProduct(r_rows.row(r)), y.ptr(b, t0 + j, 0), y.stride(2));
            } else {
              slot_store_row(r_rows.row(r), y.ptr(b, t0 + j, 0), y.stride(2));
            }
          }
        }
      }
    });
  }
}

}  // namespace detail

/// slot_memory (docs/operators.md section 13): reads and gated writes of S memory slots over the
/// segments of x; y [B,T,D] and final_memory [B,S,D]. Validation (ShapeError, before any write):
/// shapes, heads not dividing D, a negative segment, a non-finite scale, an unknown gate, lm2
/// without (or input_forget with) output-gate weights, outputs overlapping inputs or each other.
inline void slot_memory(const SlotMemoryInputs& in, const SlotMemoryOutputs& out, const SlotMemoryOptions& options = {},
                        const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::slot_reversed_call(in, out);
    return slot_memory(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const ArgCheck check("slot_memory");
  const auto d = detail::validate_slot_memory(check, in.x, in.memory, in.weights, options);
  detail::validate_slot_outputs(check, d, in.x, in.memory, in.weights, out.y, out.final_memory, "final_memory");
  check.no_overlap("final_memory", out.final_memory, "memory", in.memory);
  for (index_t b = 0; b < d.B; ++b)
    for (index_t s = 0; s < d.S; ++s)
      for (index_t c = 0; c < d.D; ++c) out.final_memory(b, s, c) = in.memory(b, s, c);
  detail::slot_memory_run(d, in.x, out.final_memory, in.weights, options.gate, out.y, executor);
}

/// slot_memory's segment step: the tokens of x (one or more segments of options.segment) read
/// and then update `memory` [B,S,D] in place, so a stream fed in pieces that end on segment
/// boundaries equals one slot_memory call. Same validation (memory must not overlap x, y or a
/// weight).
inline void slot_memory_step(const ConstView<float, 3>& x, const TensorView<float, 3>& memory,
                             const SlotMemoryWeights& weights, const TensorView<float, 3>& y,
                             const SlotMemoryOptions& options = {}, const Executor& executor = serial_executor()) {
  const ArgCheck check("slot_memory_step");
  const auto d = detail::validate_slot_memory(check, x, memory, weights, options);
  detail::validate_slot_outputs(check, d, x, memory, weights, y, memory, "memory");
  detail::slot_memory_run(d, x, memory, weights, options.gate, y, executor);
}

}  // namespace seqmix
