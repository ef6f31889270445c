// Fast observation-window scores (definitions in scores_reference.hpp).
//
// Per (batch row, KV head), the G query heads' W window queries are stacked into R = G * W rows
// (row r = i * W + w for query head i of the group), so the logits are one GEMM
// [R, D] x [D, N] (Eigen; R = 256 at SnapKV's shape is where Eigen's kernel runs best). Keys are
// taken in tiles of kKeyTile entries: the GEMM writes a [R, kKeyTile] tile, and while it is
// still in L2 each row is exponentiated against the row's running maximum (online softmax: the
// maximum m_rt used for row r in tile t is recorded and the row's sum rescaled when it grows).
// The normalisation of a row is known only after its last tile, so the exponentials are kept,
// tile after tile, in a [R, N] scratch (32 MB at N = 32768, R = 256), and a final pass adds
// row r of tile t into the outputs with weight exp(m_rt - m_r) / l_r. Each stored value is read
// once more; the GEMM dominates (2 * W * N * Hq * D flops).
//
// Work is split over (batch row, KV head) pairs; each executor task owns one scratch slot from
// an ObservationWorkspace (reusable across calls, so repeated calls do not allocate) and takes
// pairs from a shared counter. Very long windows are processed in row blocks so that a slot
// never exceeds kMaxScratchFloats for the exponentials.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache/policies/scores_reference.hpp"

namespace seqmix::kv {

/// Scratch memory for observation_scores / observation_attention. Keep one per thread of
/// callers and pass it to every call; it grows to the largest problem seen and is then reused.
class ObservationWorkspace {
 public:
  /// At least `floats` floats of scratch (grows, never shrinks).
  float* reserve(std::size_t floats) {
    if (buffer_.size() < floats) buffer_.resize(floats);
    return buffer_.data();
  }
  /// Bytes held now.
  std::size_t bytes() const noexcept { return buffer_.size() * sizeof(float); }

 private:
  AlignedVector<float> buffer_;
};

namespace detail {

// 512 keys x R = 256 rows = 512 KB of logits: the tile stays in Zen 4's 1 MB L2 between the GEMM
// and the exp pass. Measured 256..2048 within 5% of each other.
constexpr index_t kKeyTile = 512;
// Cap on the stored exponentials per slot (32 MB): rows beyond it are processed in a second
// block (only when G * W * N exceeds it, e.g. profiling a whole long prompt).
constexpr index_t kMaxScratchFloats = index_t{8} << 20;

inline index_t round_up16(index_t n) { return (n + 15) / 16 * 16; }

// One slot's scratch, carved from the workspace.
struct ObservationSlot {
  float* q;         // [Rb, D]   scaled queries of the row block
  float* exps;      // tile-major: tile t is [rb, nt] at offset rb * t * kKeyTile
  float* tile_max;  // [Rb, T]   running max used for each (row, tile); then the tile weights
  float* row_max;   // [Rb]
  float* row_sum;   // [Rb]
  float* acc;       // [kKeyTile] column sums of one tile
  float* keys;      // [kKeyTile, D] contiguous copy of a key tile when keys are strided
  index_t* row_end; // [Rb] visible_end of each row (stored in float-sized slots)

  static index_t floats(index_t Rb, index_t N, index_t D, index_t T) {
    return round_up16(Rb * D) + round_up16(Rb * N) + round_up16(Rb * T) + 2 * round_up16(Rb) +
           round_up16(kKeyTile) + round_up16(kKeyTile * D) + round_up16(2 * Rb);
  }
  static ObservationSlot carve(float* p, index_t Rb, index_t N, index_t D, index_t T) {
    ObservationSlot s;
    s.q = p, p += round_up16(Rb * D);
    s.exps = p, p += round_up16(Rb * N);
    s.tile_max = p, p += round_up16(Rb * T);
    s.row_max = p, p += round_up16(Rb);
    s.row_sum = p, p += round_up16(Rb);
    s.acc = p, p += round_up16(kKeyTile);
    s.keys = p, p += round_up16(kKeyTile * D);
    s.row_end = reinterpret_cast<index_t*>(p);  // 2 * Rb floats hold Rb 8-byte indices
    return s;
  }
};

inline float simd_max(const float* x, index_t n) {
  using simd::Batch;
  float m = -std::numeric_limits<float>::infinity();
  const index_t nv = simd::vector_end(n);
  if (nv > 0) {
    Batch<float> acc = simd::load(x);
    for (index_t j = simd::kWidth; j < nv; j += simd::kWidth) acc = xsimd::max(acc, simd::load(x + j));
    m = simd::reduce_max(acc);
  }
  for (index_t j = nv; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// x[j] = exp(x[j] - m) for j < n; returns the sum.
inline float simd_exp_sum(float* x, index_t n, float m) {
  using simd::Batch;
  const Batch<float> mv(m);
  Batch<float> acc(0.f);
  const index_t nv = simd::vector_end(n);
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const Batch<float> e = simd::exp(simd::load(x + j) - mv);
    simd::store(x + j, e);
    acc += e;
  }
  float sum = simd::reduce_add(acc);
  for (index_t j = nv; j < n; ++j) sum += (x[j] = std::exp(x[j] - m));
  return sum;
}

// Online softmax over one row of one tile: the first `visible` logits are exponentiated against
// the running max (rescaling the running sum when it grows), the rest zeroed. Returns the max used.
inline float softmax_tile_row(float* row, index_t nt, index_t visible, float& running_max, float& running_sum) {
  std::fill(row + visible, row + nt, 0.f);
  if (visible <= 0) return -std::numeric_limits<float>::infinity();
  const float m = std::max(running_max, simd_max(row, visible));
  if (m > running_max) running_sum *= std::exp(running_max - m);  // exp(-inf) = 0 on the first tile
  running_max = m;
  running_sum += simd_exp_sum(row, visible, m);
  return m;
}

enum class ObservationOutput { Scores, Probs };

// Rows [r0, r1) of KV head hk of batch row b: logits, softmax, then accumulation into `scores`
// (summed over window queries) or `probs` (per window query). Outputs must be zeroed first.
inline void observation_rows(const ObservationInputs& in, const ObservationOptions& options, const ObservationDims& d,
                             index_t b, index_t hk, index_t r0, index_t r1, const ObservationSlot& s,
                             ObservationOutput kind, const TensorView<float, 3>& scores,
                             const TensorView<float, 4>& probs) {
  using Mat = RowMajorMatrix<float>;
  const index_t rb = r1 - r0, D = d.D, N = d.N, W = d.W;
  const index_t T = (N + kKeyTile - 1) / kKeyTile;
  const float scale = observation_scale(options, D);
  const float weight = options.group == GroupReduction::Mean ? 1.f / static_cast<float>(d.group()) : 1.f;

  for (index_t r = 0; r < rb; ++r) {
    const index_t i = (r0 + r) / W, w = (r0 + r) % W;
    const index_t h = hk * d.group() + i;
    for (index_t c = 0; c < D; ++c) s.q[r * D + c] = scale * in.q(b, w, h, c);
    s.row_end[r] = visible_end(in, options, d, b, w);
    s.row_max[r] = -std::numeric_limits<float>::infinity();
    s.row_sum[r] = 0.f;
  }
  const Eigen::Map<const Mat> q(s.q, rb, D);
  const bool keys_dense = in.keys.stride(3) == 1 || D <= 1;

  for (index_t t = 0; t < T; ++t) {
    const index_t j0 = t * kKeyTile, nt = std::min(kKeyTile, N - j0);
    float* tile = s.exps + rb * j0;  // [rb, nt]
    Eigen::Map<Mat> logits(tile, rb, nt);
    if (keys_dense) {
      const Eigen::Map<const Mat, 0, Eigen::OuterStride<>> k(in.keys.ptr(b, j0, hk), nt, D,
                                                             Eigen::OuterStride<>(in.keys.stride(1)));
      logits.noalias() = q * k.transpose();
    } else {
      for (index_t j = 0; j < nt; ++j)
        for (index_t c = 0; c < D; ++c) s.keys[j * D + c] = in.keys(b, j0 + j, hk, c);
      const Eigen::Map<const Mat> k(s.keys, nt, D);
      logits.noalias() = q * k.transpose();
    }
    for (index_t r = 0; r < rb; ++r) {
      const index_t visible = std::clamp<index_t>(s.row_end[r] - j0, 0, nt);
      s.tile_max[r * T + t] = softmax_tile_row(tile + r * nt, nt, visible, s.row_max[r], s.row_sum[r]);
    }
  }
  // Weight of row r's stored exponentials in tile t: exp(m_rt - m_r) / l_r (0 if nothing visible).
  for (index_t r = 0; r < rb; ++r)
    for (index_t t = 0; t < T; ++t) {
      float& m = s.tile_max[r * T + t];
      m = (s.row_sum[r] > 0.f && std::isfinite(m)) ? weight * std::exp(m - s.row_max[r]) / s.row_sum[r] : 0.f;
    }

  for (index_t t = 0; t < T; ++t) {
    const index_t j0 = t * kKeyTile, nt = std::min(kKeyTile, N - j0);
    const float* tile = s.exps + rb * j0;
    if (kind == ObservationOutput::Scores) {
      std::fill(s.acc, s.acc + nt, 0.f);
      for (index_t r = 0; r < rb; ++r) {
        const float c = s.tile_max[r * T + t];
        if (c != 0.f) simd::axpy(c, tile + r * nt, s.acc, nt);
      }
      float* out = scores.ptr(b, hk, j0);
      const index_t stride = scores.stride(2);
      for (index_t j = 0; j < nt; ++j) out[j * stride] += s.acc[j];
    } else {
      for (index_t r = 0; r < rb; ++r) {
        const float c = s.tile_max[r * T + t];
        if (c == 0.f) continue;
        float* out = probs.ptr(b, hk, (r0 + r) % W, j0);
        if (probs.stride(3) == 1) {
          simd::axpy(c, tile + r * nt, out, nt);
        } else {
          for (index_t j = 0; j < nt; ++j) out[j * probs.stride(3)] += c * tile[r * nt + j];
        }
      }
    }
  }
}

// Runs observation_rows over every (batch row, KV head), one scratch slot per executor task.
inline void observation_run(const ObservationInputs& in, const ObservationOptions& options, const ObservationDims& d,
                            ObservationOutput kind, const TensorView<float, 3>& scores,
                            const TensorView<float, 4>& probs, ObservationWorkspace& workspace,
                            const Executor& executor) {
  const index_t rows = d.group() * d.W;
  const index_t pairs = d.B * d.Hkv;
  if (pairs == 0) return;
  const index_t T = (d.N + kKeyTile - 1) / kKeyTile;
  const index_t Rb = std::max<index_t>(1, std::min(rows, kMaxScratchFloats / std::max<index_t>(d.N, 1)));
  const index_t slots = std::min<index_t>(pairs, executor.concurrency());
  const index_t per_slot = ObservationSlot::floats(Rb, d.N, d.D, T);
  float* base = workspace.reserve(static_cast<std::size_t>(slots * per_slot));
  std::atomic<index_t> next{0};
  executor.run(slots, [&](index_t slot) {
    const ObservationSlot s = ObservationSlot::carve(base + slot * per_slot, Rb, d.N, d.D, T);
    for (index_t pair = next.fetch_add(1); pair < pairs; pair = next.fetch_add(1)) {
      const index_t b = pair / d.Hkv, hk = pair % d.Hkv;
      if (kind == ObservationOutput::Scores) {
        for (index_t j = 0; j < d.N; ++j) scores(b, hk, j) = 0.f;
      } else {
        for (index_t w = 0; w < d.W; ++w)
          for (index_t j = 0; j < d.N; ++j) probs(b, hk, w, j) = 0.f;
      }
      for (index_t r0 = 0; r0 < rows; r0 += Rb)
        observation_rows(in, options, d, b, hk, r0, std::min(rows, r0 + Rb), s, kind, scores, probs);
    }
  });
}

}  // namespace detail

/// scores[b, h, j] = sum over window queries w (and the GQA group) of their attention
/// probability on entry j; see scores_reference.hpp. scores [B, Hkv, N].
inline void observation_scores(const ObservationInputs& in, const TensorView<float, 3>& scores,
                               const ObservationOptions& options, ObservationWorkspace& workspace,
                               const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::observation_scores");
  const auto d = detail::validate_observation(check, in, options);
  check.shape("scores", scores, {d.B, d.Hkv, d.N}, "B,Hkv,N");
  detail::observation_run(in, options, d, detail::ObservationOutput::Scores, scores, {}, workspace, executor);
}

/// observation_scores with a workspace of its own (allocates per call).
inline void observation_scores(const ObservationInputs& in, const TensorView<float, 3>& scores,
                               const ObservationOptions& options = {}, const Executor& executor = serial_executor()) {
  ObservationWorkspace workspace;
  observation_scores(in, scores, options, workspace, executor);
}

/// probs[b, h, w, j]: window query w's attention probability on entry j, aggregated over the
/// GQA group; see scores_reference.hpp. probs [B, Hkv, W, N].
inline void observation_attention(const ObservationInputs& in, const TensorView<float, 4>& probs,
                                  const ObservationOptions& options, ObservationWorkspace& workspace,
                                  const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::observation_attention");
  const auto d = detail::validate_observation(check, in, options);
  check.shape("probs", probs, {d.B, d.Hkv, d.W, d.N}, "B,Hkv,W,N");
  detail::observation_run(in, options, d, detail::ObservationOutput::Probs, {}, probs, workspace, executor);
}

/// observation_attention with a workspace of its own (allocates per call).
inline void observation_attention(const ObservationInputs& in, const TensorView<float, 4>& probs,
                                  const ObservationOptions& options = {}, const Executor& executor = serial_executor()) {
  ObservationWorkspace workspace;
  observation_attention(in, probs, options, workspace, executor);
}

}  // namespace seqmix::kv
