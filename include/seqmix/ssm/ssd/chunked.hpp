// ssd, fast prefill: the chunked SSD algorithm on Eigen GEMMs (derivation in README.md), and
// seqmix::ssd, which picks it or the recurrent form (step.hpp) by input length.
//
// Per (batch b, head h) and chunk of L tokens starting at t0, with cs_i = sum_{k<=i} dt_k*A
// (log-decay from the chunk start), Xd = dt ∘ X [L,P], S the [P,N] state entering the chunk:
//   Y      = diag(exp(cs)) (C S^T)                 state to output   [L,N]·[N,P]
//          + (CB ∘ Lmask) Xd,  Lmask_ij = exp(cs_i - cs_j) for j <= i, else 0    intra-chunk
//   S_next = exp(cs_end) S + (exp(cs_end - cs) ∘ Xd)^T B                 chunk state [P,L]·[L,N]
// CB = C B^T [L,L] depends only on (b, group, chunk), so it is computed once per group and
// shared by the H/G heads of the group.
#pragma once

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"

namespace seqmix {
namespace detail {

using SsdMatrix = RowMajorMatrix<float>;
// A [rows, cols] tile of a token-major tensor: rows are tokens (outer stride = token stride),
// columns are the contiguous feature dimension.
using SsdConstTile = Eigen::Map<const SsdMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

// The fast path reads x, z, Bm and Cm as tiles with a contiguous last dimension; a view without
// one is copied once into a contiguous tensor owned by the call.
template <std::size_t R>
ConstView<float, R> ssd_contiguous_last(const ConstView<float, R>& view, Tensor<float, R>& storage) {
  if (!view.has_value() || view.is_last_dim_contiguous()) return view;
  storage = Tensor<float, R>(view.shape());
  copy(view, storage.view());
  return storage.view();
}

inline SsdConstTile ssd_tile(const ConstView<float, 4>& v, index_t b, index_t t0, index_t rows, index_t i) {
  return SsdConstTile(v.ptr(b, t0, i), rows, v.size(3), Eigen::OuterStride<>(v.stride(1)));
}

// Per-task scratch of the chunked kernel, allocated once per task (never inside the chunk loop).
// The state-to-output and intra-chunk products share one GEMM with K = N + l:
//   Y = [diag(exp(cs)) C | CB ∘ Lmask] · [S^T ; Xd]
// so the state is kept transposed ([N,P]) in the top rows of `rhs`, with Xd below it.
struct SsdChunkScratch {
  SsdMatrix lhs;  // [L, N+L]: exp(cs) ∘ C, then the decay-masked C B^T tile
  SsdMatrix rhs;  // [N+L, P]: S^T (the state entering the chunk, transposed), then dt ∘ x
  SsdMatrix xw;   // [L,P] exp(cs_end - cs) ∘ dt ∘ x
  SsdMatrix y;    // [L,P] output tile before D and z
  // [L] each: step size, log-decay a = dt*A, its prefix sum cs, exp(cs), exp(cs_end - cs)
  std::vector<float> dt, a, cs, decay_in, decay_out;
  std::vector<float> cs_lo;  // [L] rounding error of cs (see ssd_decay_mask)

  SsdChunkScratch(index_t L, index_t P, index_t N)
      : lhs(L, N + L), rhs(N + L, P), xw(L, P), y(L, P), dt(static_cast<std::size_t>(L)), a(static_cast<std::size_t>(L)),
        cs(static_cast<std::size_t>(L)), decay_in(static_cast<std::size_t>(L)), decay_out(static_cast<std::size_t>(L)),
        cs_lo(static_cast<std::size_t>(L)) {}
};

// mask[i][j] = cb[i][j] * exp(cs_i - cs_j) for j <= i, 0 above the diagonal. cs comes as a
// float pair hi + lo (hi = cs rounded, lo = the rounding error of a double-precision prefix sum)
// and the difference is (hi_i - hi_j) + (lo_i - lo_j): once |cs| grows past a few hundred (long
// chunks, strong decay) a plain float prefix sum has lost digits exactly where exp(cs_i - cs_j)
// still matters (1.8e-5 relative error at chunk size 300, against 9e-7 this way). For j <= i
// the exponent is never positive; lanes past the diagonal are clamped to 0 and cleared after.
inline void ssd_decay_mask(const float* cb, index_t cb_stride, const float* cs_hi, const float* cs_lo, index_t l,
                           float* mask, index_t mask_stride) noexcept {
  const SsdBatch zero(0.f);
  for (index_t i = 0; i < l; ++i) {
    const float* cb_row = cb + i * cb_stride;
    float* row = mask + i * mask_stride;
    const SsdBatch hi(cs_hi[i]), lo(cs_lo[i]);
    // Whole vectors up to the first one that reaches the diagonal, if it fits in the row.
    const index_t jv = std::min(simd::vector_end(i + simd::kWidth), simd::vector_end(l));
    for (index_t j = 0; j < jv; j += simd::kWidth) {
      const SsdBatch exponent = (hi - simd::load(cs_hi + j)) + (lo - simd::load(cs_lo + j));
      simd::store(row + j, simd::load(cb_row + j) * simd::exp(xsimd::min(exponent, zero)));
    }
    for (index_t j = jv; j <= i; ++j) row[j] = cb_row[j] * std::exp((cs_hi[i] - cs_hi[j]) + (cs_lo[i] - cs_lo[j]));
    std::fill(row + i + 1, row + l, 0.f);
  }
}

// Prefetches the cache lines of `rows` rows of `width` floats, `stride` floats apart, for
// reading. A head's token rows are H*P floats apart (a new page every few rows), which the
// hardware prefetchers do not follow; reading x and z otherwise stalls on every row.
inline void ssd_prefetch_rows(const float* p, index_t stride, index_t rows, index_t width) noexcept {
  constexpr index_t kLineFloats = 16;  // 64-byte lines
  for (index_t r = 0; r < rows; ++r, p += stride)
    for (index_t i = 0; i < width; i += kLineFloats) {
#if defined(__GNUC__) || defined(__clang__)  // a compiler builtin, not an ISA switch
      __builtin_prefetch(p + i);
#else
      (void)p;
#endif
    }
}

// softplus over a batch (the scalar ssd_softplus, lane by lane).
inline SsdBatch ssd_softplus(const SsdBatch& x) noexcept {
  return xsimd::select(x > SsdBatch(20.f), x, xsimd::log1p(simd::exp(x)));
}

// The per-token scalars of one chunk of head h: dt (bias, softplus), a = dt*A, cs (prefix sums
// of a, summed in double and kept as float hi + lo), exp(cs) and exp(cs_end - cs); the latter from suffix sums of a,
// for the accuracy reason given at ssd_decay_mask. Vectorized over the chunk's tokens: done per scalar, the exps cost
// about 5% of the whole prefill.
inline void ssd_chunk_decays(const SsdInputs& in, bool softplus, index_t b, index_t t0, index_t l, index_t h,
                             SsdChunkScratch& s) noexcept {
  const float bias = in.dt_bias.has_value() ? in.dt_bias(h) : 0.f, A = in.A(h);
  for (index_t i = 0; i < l; ++i) s.dt[i] = in.dt(b, t0 + i, h) + bias;
  const index_t lv = simd::vector_end(l);
  if (softplus) {
    for (index_t i = 0; i < lv; i += simd::kWidth) simd::store(&s.dt[i], ssd_softplus(simd::load(&s.dt[i])));
    for (index_t i = lv; i < l; ++i) s.dt[i] = ssd_softplus(s.dt[i]);
  }
  double prefix = 0.0;
  float suffix = 0.f;
  for (index_t i = 0; i < l; ++i) {
    s.a[i] = s.dt[i] * A;
    prefix += s.a[i];
    s.cs[i] = static_cast<float>(prefix);
    s.cs_lo[i] = static_cast<float>(prefix - s.cs[i]);
  }
  for (index_t i = l; i-- > 0;) {
    s.decay_out[i] = suffix;  // log of the decay from token i to the chunk end
    suffix += s.a[i];
  }
  for (index_t i = 0; i < lv; i += simd::kWidth) {
    simd::store(&s.decay_in[i], simd::exp(simd::load(&s.cs[i])));
    simd::store(&s.decay_out[i], simd::exp(simd::load(&s.decay_out[i])));
  }
  for (index_t i = lv; i < l; ++i) {
    s.decay_in[i] = std::exp(s.cs[i]);
    s.decay_out[i] = std::exp(s.decay_out[i]);
  }
}

struct SsdChunkPlan {
  index_t L, chunks;
};

// C B^T for every (b, g, chunk): [B*G*chunks] tiles of [L,L], shared by the heads of a group.
inline void ssd_chunk_cb(const ConstView<float, 4>& Bm, const ConstView<float, 4>& Cm, const SsdDims& dims,
                         const SsdChunkPlan& plan, float* cb, const Executor& executor) {
  const index_t L = plan.L, items = dims.B * dims.G * plan.chunks;
  const index_t flops_per_item = 2 * L * L * dims.N;
  parallel_for(executor, items, ssd_grain(flops_per_item / 4), [&](index_t begin, index_t end) {
    for (index_t item = begin; item < end; ++item) {
      const index_t c = item % plan.chunks, bg = item / plan.chunks;
      const index_t b = bg / dims.G, g = bg % dims.G, t0 = c * L, l = std::min(L, dims.T - t0);
      Eigen::Map<SsdMatrix> tile(cb + item * L * L, l, l);
      tile.noalias() = ssd_tile(Cm, b, t0, l, g) * ssd_tile(Bm, b, t0, l, g).transpose();
    }
  });
}

// The chunked SSD form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp): an item is one
// (batch, head), its state carried transposed in the workspace's rhs. state_to_output has
// nothing to do of its own: the read of the state and the intra-chunk term are one GEMM (intra).
struct SsdChunkKernel {
  const SsdInputs& in;
  const SsdOutputs& out;
  const SsdOptions& options;
  const SsdDims& dims;
  const SsdChunkPlan& plan;
  const float* cb;  // the shared C B^T tiles (ssd_chunk_cb)

  using Workspace = SsdChunkScratch;
  struct Head {
    index_t b, h, g;
    float D;
  };

  Workspace make_workspace() const { return SsdChunkScratch(plan.L, dims.P, dims.N); }
  Head begin_head(index_t item, Workspace& s) const {
    const index_t b = item / dims.H, h = item % dims.H;
    const Head head{b, h, h / (dims.H / dims.G), in.D.has_value() ? in.D(h) : 0.f};
    auto state_t = s.rhs.topRows(dims.N);  // [N,P]
    if (in.initial_state.has_value()) {
      state_t = as_matrix(in.initial_state.select(0, b).select(0, h)).transpose();
    } else {
      state_t.setZero();
    }
    return head;
  }
  index_t tokens(const Head&) const { return dims.T; }

  // Decays, dt-scaled x (below the state in rhs), decayed C and the decay-masked C B^T (lhs).
  void load_chunk(const Head& hd, index_t t0, index_t l, Workspace& s) const {
    const index_t P = dims.P, N = dims.N, L = plan.L, b = hd.b, h = hd.h, g = hd.g;
    ssd_chunk_decays(in, options.dt_softplus, b, t0, l, h, s);
    if (t0 + L < dims.T) {  // the next chunk's rows arrive while this one computes
      const index_t next = std::min(L, dims.T - t0 - L);
      ssd_prefetch_rows(in.x.ptr(b, t0 + L, h), in.x.stride(1), next, P);
      if (in.z.has_value()) ssd_prefetch_rows(in.z.ptr(b, t0 + L, h), in.z.stride(1), next, P);
    }
    const SsdConstTile x = ssd_tile(in.x, b, t0, l, h), Cm = ssd_tile(in.Cm, b, t0, l, g);
    auto xd = s.rhs.middleRows(N, l), xw = s.xw.topRows(l);
    for (index_t i = 0; i < l; ++i) {
      xd.row(i) = s.dt[i] * x.row(i);
      xw.row(i) = s.decay_out[i] * xd.row(i);
      s.lhs.row(i).head(N) = s.decay_in[i] * Cm.row(i);
    }
    const float* cb_tile = cb + ((b * dims.G + g) * plan.chunks + t0 / L) * L * L;
    ssd_decay_mask(cb_tile, l, s.cs.data(), s.cs_lo.data(), l, s.lhs.data() + N, s.lhs.cols());
  }
  void state_to_output(const Head&, index_t, index_t, Workspace&) const {}
  // State to output and intra-chunk term in one product (see SsdChunkScratch).
  void intra(const Head&, index_t, index_t l, Workspace& s) const {
    const index_t N = dims.N;
    s.y.topRows(l).noalias() = s.lhs.topLeftCorner(l, N + l) * s.rhs.topRows(N + l);
  }
  // Chunk state: decay the incoming state over the chunk, add the chunk's own contribution.
  void update_state(const Head& hd, index_t t0, index_t l, Workspace& s) const {
    auto state_t = s.rhs.topRows(dims.N);
    state_t *= std::exp(s.cs[l - 1]);
    state_t.noalias() += ssd_tile(in.Bm, hd.b, t0, l, hd.g).transpose() * s.xw.topRows(l);
  }
  // D skip and z gate, row by row, then out to y (any stride).
  void store_outputs(const Head& hd, index_t t0, index_t l, Workspace& s) const {
    const index_t P = dims.P, b = hd.b, h = hd.h;
    const SsdConstTile x = ssd_tile(in.x, b, t0, l, h);
    for (index_t i = 0; i < l; ++i) {
      const float* zrow = nullptr;
      if (in.z.has_value()) zrow = in.z.ptr(b, t0 + i, h);  // last dim contiguous (see ssd_chunked)
      float* yrow = s.y.data() + i * P;
      ssd_finish(yrow, x.data() + i * x.outerStride(), hd.D, zrow, P);
      ssd_scatter(yrow, P, out.y.ptr(b, t0 + i, h), out.y.stride(3));
    }
  }
  void end_head(const Head& hd, Workspace& s) const {
    if (out.final_state.has_value())
      as_matrix(out.final_state.select(0, hd.b).select(0, hd.h)) = s.rhs.topRows(dims.N).transpose();
  }
};

// The chunked prefill. Workspace, allocated once per call: B*G*ceil(T/L)*L*L floats for the
// shared C B^T tiles (plus contiguous copies of x, z, Bm, Cm if they have a strided last
// dimension), and per task O(L*(L+P) + P*N) floats.
inline void ssd_chunked(const SsdInputs& in_arg, const SsdOutputs& out, const SsdOptions& options, const SsdDims& dims,
                        const Executor& executor) {
  if (dims.T == 0) {
    // No tokens: the state passes through unchanged.
    if (out.final_state.has_value())
      for (index_t b = 0; b < dims.B; ++b)
        for (index_t h = 0; h < dims.H; ++h)
          for (index_t p = 0; p < dims.P; ++p)
            for (index_t n = 0; n < dims.N; ++n)
              out.final_state(b, h, p, n) = in_arg.initial_state.has_value() ? in_arg.initial_state(b, h, p, n) : 0.f;
    return;
  }
  SsdInputs in = in_arg;
  Tensor<float, 4> x_copy, z_copy, B_copy, C_copy;
  in.x = ssd_contiguous_last(in.x, x_copy);
  in.z = ssd_contiguous_last(in.z, z_copy);
  in.Bm = ssd_contiguous_last(in.Bm, B_copy);
  in.Cm = ssd_contiguous_last(in.Cm, C_copy);

  const index_t L = std::min(options.chunk_size, dims.T);
  const SsdChunkPlan plan{L, (dims.T + L - 1) / L};
  AlignedVector<float> cb(static_cast<std::size_t>(dims.B * dims.G * plan.chunks * L * L));
  ssd_chunk_cb(in.Bm, in.Cm, dims, plan, cb.data(), executor);

  const SsdChunkKernel kernel{in, out, options, dims, plan, cb.data()};
  seqmix::chunkwise::run(kernel, dims.B * dims.H, ssd_grain(dims.T * dims.P * dims.N), L, executor);
}

// Below this many tokens the recurrent form wins: the chunked form has fixed costs per call and
// per chunk (transposing the state in and out, the O(P*N) state GEMMs of a chunk, whatever its
// length). Measured at H=48 P=64 N=128 on one core: T=4 recurrent 0.15 ms vs chunked 0.25 ms;
// T=16 0.43 vs 0.39 ms; the gap grows with T from there.
constexpr index_t kSsdChunkedMinTokens = 16;

inline bool ssd_use_chunked(const SsdOptions& options, const SsdDims& dims) {
  switch (options.algorithm) {
    case SsdAlgorithm::chunked:
      return true;
    case SsdAlgorithm::recurrent:
      return false;
    case SsdAlgorithm::automatic:
    default:
      return dims.T >= kSsdChunkedMinTokens;
  }
}

}  // namespace detail

// Mamba-2 SSD prefill (SPEC section 3): y [B,T,H,P] and optionally final_state [B,H,P,N] from x,
// dt, A, Bm, Cm and the optional D, z, dt_bias, initial_state. options.algorithm picks the
// chunked or recurrent form (automatic by default); both agree with reference::ssd to rounding.
// Threaded over (batch, head) pairs.
inline void ssd(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                const Executor& executor = serial_executor()) {
  const detail::SsdDims dims = detail::validate_ssd("ssd", in, out, options);
  if (detail::ssd_use_chunked(options, dims))
    detail::ssd_chunked(in, out, options, dims, executor);
  else
    detail::ssd_recurrent(in, out, options, dims, executor);
}

}  // namespace seqmix
