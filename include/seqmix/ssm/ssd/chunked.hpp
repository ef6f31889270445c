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
#include <cmath>
#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/chunkwise/engine.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/core/thread_keep.hpp"
#include "seqmix/ssm/ssd/bf16_products.hpp"
#include "seqmix/ssm/ssd/gemm.hpp"
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

// Rows [t0, t0 + rows) of (b, ., i) of a 16-bit view widened into the top rows of dst (row-major,
// v.size(3) columns): how the chunked form loads x, Bm and Cm stored as bf16 / f16, a chunk at a time.
template <class H>
void ssd_widen_tile(const ConstView<H, 4>& v, index_t b, index_t t0, index_t rows, index_t i, SsdMatrix& dst) {
  for (index_t r = 0; r < rows; ++r) ssd_gather(v.ptr(b, t0 + r, i), v.stride(3), v.size(3), dst.row(r).data());
}

// The top `rows` rows of a widened tile, as the tile the fp32 path maps onto the input.
inline SsdConstTile ssd_widened(const SsdMatrix& m, index_t rows) {
  return SsdConstTile(m.data(), rows, m.cols(), Eigen::OuterStride<>(m.cols()));
}

// n rounded up to a whole number of vectors: the padded length of the rows ssd_decay_mask reads.
constexpr index_t ssd_vector_ceil(index_t n) noexcept { return simd::vector_end(n + simd::kWidth - 1); }

// Per-task scratch of the chunked kernel, allocated once per task (never inside the chunk loop).
// The state-to-output and intra-chunk products share one GEMM with K = N + l:
//   Y = [diag(exp(cs)) C | CB ∘ Lmask] · [S^T ; Xd]
// so the state is kept transposed ([N,P]) in the top rows of `rhs`, with Xd below it.
struct SsdChunkScratch {
  SsdMatrix lhs;  // [L, N+Lp]: exp(cs) ∘ C, then the decay-masked C B^T tile (Lp: L in whole vectors)
  SsdMatrix rhs;  // [N+L, P]: S^T (the state entering the chunk, transposed), then dt ∘ x
  SsdMatrix xw;   // [L,P] exp(cs_end - cs) ∘ dt ∘ x
  SsdMatrix y;    // [L,P] output tile before D and z
  // [L] each ([Lp] cs and cs_lo): step size, log-decay a = dt*A, its prefix sum cs, exp(cs), exp(cs_end - cs)
  std::vector<float> dt, a, cs, decay_in, decay_out;
  std::vector<float> cs_lo;  // [L] rounding error of cs (see ssd_decay_mask)
  chunkwise::ProductScratch nonfinite_xd;  // dt * x of a chunk holding a NaN / inf (sized on first use)
  bool xd_finite = true;  // no NaN / inf in the chunk's dt * x (load_chunk)
  bool growing = false;  // some token's log-decay is > 0: the chunk runs token by token (ssd_chunk_decays)
  // 16-bit x, Bm, Cm only (else empty): the chunk's rows widened to fp32 by load_chunk, [L,P] / [L,N].
  SsdMatrix xc, bc, cc;
  SsdBf16Tiles bf16;  // the output product's bf16 operands (SsdChunkKernel::bf16_dot only)

  SsdChunkScratch(index_t L, index_t P, index_t N, bool widened = false)
      : lhs(L, N + ssd_vector_ceil(L)), rhs(N + L, P), xw(L, P), y(L, P), dt(static_cast<std::size_t>(L)),
        a(static_cast<std::size_t>(L)), cs(static_cast<std::size_t>(ssd_vector_ceil(L))),
        decay_in(static_cast<std::size_t>(L)), decay_out(static_cast<std::size_t>(L)),
        cs_lo(static_cast<std::size_t>(ssd_vector_ceil(L))), xc(widened ? L : 0, P), bc(widened ? L : 0, N), cc(widened ? L : 0, N) {}

  // A scratch kept across calls (SsdTaskScratch) is reused only for the same dimensions, after
  // reset() puts back what the constructor initialized (the zeroed vectors; the matrices are
  // written before they are read, the bf16 tiles and nonfinite_xd are sized and filled on use),
  // so a call computes what it would on a fresh one, bit for bit.
  bool fits(index_t L, index_t P, index_t N, bool widened) const {
    return y.rows() == L && y.cols() == P && rhs.rows() == N + L && xc.rows() == (widened ? L : 0);
  }
  void reset() {
    for (std::vector<float>* v : {&dt, &a, &cs, &decay_in, &decay_out, &cs_lo}) std::fill(v->begin(), v->end(), 0.f);
    xd_finite = true;
    growing = false;
  }
  std::size_t bytes() const {
    const index_t floats = lhs.size() + rhs.size() + xw.size() + y.size() + nonfinite_xd.size() + xc.size() +
                           bc.size() + cc.size();
    const std::size_t vectors = dt.size() + a.size() + cs.size() + decay_in.size() + decay_out.size() + cs_lo.size();
    return (static_cast<std::size_t>(floats) + vectors) * sizeof(float) +
           (bf16.a.capacity() + bf16.b.capacity()) * sizeof(std::uint32_t);
  }
};

// The chunked form's memory, kept by each thread across calls (core/thread_keep.hpp): allocated
// per call, it faulted fresh pages in on every call wherever glibc handed it back (with
// MALLOC_MMAP_THRESHOLD_=131072, mamba2-780m T 4096: 131 faults per call, the C B^T tiles).
// Per-task scratch of a column block on shared records (SsdBlockKernel): the block's state rows
// (sized for all P; a block uses the first `cols`) and, for a chunk whose dt ∘ x holds a NaN or
// inf, that chunk's xd with those values as 0.
struct SsdBlockScratch {
  SsdMatrix state;      // [P,N] the block's rows of the head's state, not transposed
  SsdMatrix xd_zeroed;  // [L,P]
  const float* record = nullptr;  // the current chunk's shared record (SsdRecordLayout)
  bool xd_finite = true;

  SsdBlockScratch(index_t L, index_t P, index_t N) : state(P, N), xd_zeroed(L, P) {}
  bool fits(index_t L, index_t P, index_t N) const {
    return state.rows() == P && state.cols() == N && xd_zeroed.rows() == L;
  }
  void reset() {
    record = nullptr;
    xd_finite = true;
  }
  std::size_t bytes() const { return static_cast<std::size_t>(state.size() + xd_zeroed.size()) * sizeof(float); }
};

// A parallel block's chunk scratch, reused for the same dimensions (SsdChunkScratch::fits,
// SsdBlockScratch::fits): the whole-head kernel's, or the shared-record blocks':
struct SsdTaskScratch {
  std::optional<SsdChunkScratch> chunk;
  std::optional<SsdBlockScratch> block;
  std::size_t bytes() const { return (chunk ? chunk->bytes() : 0) + (block ? block->bytes() : 0); }
};
using SsdTaskKeep = ThreadKept<SsdTaskScratch>;
// The calling thread's C B^T tiles (SsdCbTiles), reused while large enough:
struct SsdCbStorage {
  std::unique_ptr<float[]> data;  // not zeroed: the C B^T tasks write a tile before it is read
  std::size_t floats = 0;
  std::size_t bytes() const { return floats * sizeof(float); }
};
using SsdCbKeep = ThreadKept<SsdCbStorage>;
// The calling thread's shared chunk records of a column-block split (ssd_chunk_records), reused
// while large enough:
struct SsdRecordStorage {
  std::unique_ptr<float[]> data;  // not zeroed: the record pass writes every float a block reads
  std::size_t floats = 0;
  std::size_t bytes() const { return floats * sizeof(float); }
};
using SsdRecordKeep = ThreadKept<SsdRecordStorage>;
// ... and their output tiles (ssd_store_chunks); a type of its own, so a thread keeps one of each:
struct SsdOutputStorage : SsdRecordStorage {};
using SsdOutputKeep = ThreadKept<SsdOutputStorage>;

// mask[i][j] = cb[i][j] * exp(cs_i - cs_j) for j <= i, 0 above the diagonal. cs comes as a
// float pair hi + lo (hi = cs rounded, lo = the rounding error of a double-precision prefix sum)
// and the difference is (hi_i - hi_j) + (lo_i - lo_j): once |cs| grows past a few hundred (long
// chunks, strong decay) a plain float prefix sum has lost digits exactly where exp(cs_i - cs_j)
// still matters (1.8e-5 relative error at chunk size 300, against 9e-7 this way). The exponent
// is not clamped to <= 0: without softplus a negative dt + dt_bias makes a token's log-decay
// positive (a growing state), and exp(cs_i - cs_j) > 1 is then the right weight (clamping it
// gave errors of 10% of the output). The vector holding the diagonal is computed whole and its
// lanes past the diagonal selected to 0 (they may overflow or read another row's cb): done per
// lane with std::exp, that vector cost about 15% of the prefill (mamba2-780m, L 64). So each
// row reads and writes up to the next multiple of the vector width: cb, cs_hi and cs_lo must be
// readable and mask writable that far (SsdChunkScratch and ssd_chunked pad them).
inline void ssd_decay_mask(const float* cb, index_t cb_stride, const float* cs_hi, const float* cs_lo, index_t l,
                           float* mask, index_t mask_stride) noexcept {
  alignas(64) static constexpr float kLane[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(simd::kWidth <= 16, "kLane covers one vector");
  const SsdBatch lane = simd::load(kLane);
  for (index_t i = 0; i < l; ++i) {
    const float* cb_row = cb + i * cb_stride;
    float* row = mask + i * mask_stride;
    const SsdBatch hi(cs_hi[i]), lo(cs_lo[i]);
    const auto weight = [&](index_t j) {
      const SsdBatch exponent = (hi - simd::load(cs_hi + j)) + (lo - simd::load(cs_lo + j));
      return simd::load(cb_row + j) * simd::exp(exponent);
    };
    const index_t jd = simd::vector_end(i);  // the vector holding the diagonal
    for (index_t j = 0; j < jd; j += simd::kWidth) simd::store(row + j, weight(j));
    const auto visible = (SsdBatch(static_cast<float>(jd)) + lane) <= SsdBatch(static_cast<float>(i));
    simd::store(row + jd, xsimd::select(visible, weight(jd), SsdBatch(0.f)));
    if (jd + simd::kWidth < l) std::fill(row + jd + simd::kWidth, row + l, 0.f);
  }
}

// Prefetches the cache lines of `rows` rows of `width` floats, `stride` floats apart, for
// reading. A head's token rows are H*P floats apart (a new page every few rows), which the
// hardware prefetchers do not follow; reading x and z otherwise stalls on every row.
template <class E>
void ssd_prefetch_rows(const E* p, index_t stride, index_t rows, index_t width) noexcept {
  constexpr index_t kLineElements = 64 / sizeof(E);  // 64-byte lines
  for (index_t r = 0; r < rows; ++r, p += stride)
    for (index_t i = 0; i < width; i += kLineElements) {
#if defined(__GNUC__) || defined(__clang__)  // a compiler builtin, not an ISA switch
      __builtin_prefetch(p + i);
#else
      (void)p;
#endif
    }
}

// xd = dt * x and xw = decay * xd over one token's row of P values; false if some xd is NaN or
// inf (xd * 0 is then NaN), the test the intra-chunk product needs, here while the row is loaded
// (a separate pass over the chunk cost about 5% of the prefill).
inline bool ssd_scale_row(float dt, float decay, const float* x, index_t P, float* xd, float* xw) noexcept {
  const SsdBatch d(dt), w(decay);
  SsdBatch probe(0.f);
  const index_t pv = simd::vector_end(P);
  for (index_t p = 0; p < pv; p += simd::kWidth) {
    const SsdBatch v = d * simd::load(x + p);
    simd::store(xd + p, v);
    simd::store(xw + p, w * v);
    probe += v * SsdBatch(0.f);
  }
  float tail = 0.f;
  for (index_t p = pv; p < P; ++p) {
    xd[p] = dt * x[p];
    xw[p] = decay * xd[p];
    tail += xd[p] * 0.f;
  }
  return simd::reduce_add(probe) + tail == 0.f;
}

// The floor of a token's log-decay dt * A in the chunked form (see ssd_chunk_decays): exp(-128)
// is 0 in fp32 already (the diagonal-decay families floor their gates at the same value).
constexpr float kSsdLogDecayFloor = -128.f;

// softplus over a batch (the scalar ssd_softplus, lane by lane).
inline SsdBatch ssd_softplus(const SsdBatch& x) noexcept {
  return xsimd::select(x > SsdBatch(20.f), x, xsimd::log1p(simd::exp(x)));
}

// The per-token scalars of one chunk of head h: dt (bias, softplus), a = dt*A, cs (prefix sums
// of a, summed in double and kept as float hi + lo), exp(cs) and exp(cs_end - cs); the latter from suffix sums of a,
// for the accuracy reason given at ssd_decay_mask. Vectorized over the chunk's tokens: done per scalar, the exps cost
// about 5% of the whole prefill.
template <class E>
void ssd_chunk_decays(const SsdInputsOf<E>& in, bool softplus, index_t b, index_t t0, index_t l, index_t h,
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
  s.growing = false;
  for (index_t i = 0; i < l; ++i) {
    // Floored (NaN kept): the recurrence's exp(dt * A) is 0 for any dt * A below about -104,
    // and a dt * A of -inf (a finite dt near FLT_MAX overflows it) would make every later prefix
    // sum -inf and their differences NaN. Any difference spanning a floored token is <= -128, so
    // its exp is 0 as in the recurrence.
    s.a[i] = s.dt[i] * A;
    if (s.a[i] < kSsdLogDecayFloor) s.a[i] = kSsdLogDecayFloor;
    if (s.a[i] > 0.f) s.growing = true;
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

// The chunk grid of a call: every sequence is cut into chunks of L tokens on its own grid (its
// last chunk may be shorter), so a short sequence costs about its tokens.
struct SsdChunkPlan {
  struct Chunk {
    index_t b, t0, l;  // batch row, first token (in the token tensors), tokens
  };
  index_t L = 1;
  std::vector<SequenceSpan> seqs;   // ssd_sequences: longest first
  std::vector<index_t> first_chunk;  // [seqs]: index of each sequence's first chunk in `chunks`
  std::vector<Chunk> chunks;         // all chunks of all sequences

  SsdChunkPlan(const SequenceMap& map, index_t chunk_size) : seqs(ssd_sequences(map)) {
    index_t longest = 1;
    for (const SequenceSpan& s : seqs) longest = std::max(longest, s.tokens);
    L = std::min(chunk_size, longest);
    // Sized once: each regrowth is an allocation on the call's serial part (cold after the
    // previous call's tasks, docs/parallel_grain.md).
    std::size_t count = 0;
    for (const SequenceSpan& s : seqs) count += static_cast<std::size_t>((s.tokens + L - 1) / L);
    first_chunk.reserve(seqs.size());
    chunks.reserve(count);
    for (const SequenceSpan& s : seqs) {
      first_chunk.push_back(static_cast<index_t>(chunks.size()));
      for (index_t t = 0; t < s.tokens; t += L) chunks.push_back({s.batch_row, s.token_begin + t, std::min(L, s.tokens - t)});
    }
  }
  index_t chunk_count() const { return static_cast<index_t>(chunks.size()); }
};

// The shared C B^T tiles: one per (group, chunk), each [l,l] packed at the start of a slot of
// L*L floats and a vector. ssd_decay_mask reads a row up to the next whole vector, so past the
// tile's last row by less than a vector: the slot's padding, zeroed by the tile's writer.
// For the column blocks on shared records (SsdBlockKernel) the slot also holds C^T [N,Lp]
// (Lp: L in whole vectors, zero past the chunk's l tokens), what their output product reads.
// The memory comes from `storage` (the thread's kept one), grown when too small.
struct SsdCbTiles {
  index_t L = 1, Lp = 1, ct_rows = 0, slot = 1;
  SsdCbStorage storage;

  // ct_rows: N to hold C^T as well, else 0.
  SsdCbTiles(index_t tiles, index_t chunk, SsdCbStorage kept, index_t ct_rows_ = 0)
      : L(chunk), Lp(ssd_vector_ceil(chunk)), ct_rows(ct_rows_), slot(chunk * chunk + simd::kWidth + ct_rows_ * Lp),
        storage(std::move(kept)) {
    const auto floats = static_cast<std::size_t>(tiles * slot);
    if (storage.floats < floats) {
      storage = SsdCbStorage{};  // the old tiles are freed before the larger ones are allocated
      storage = SsdCbStorage{std::unique_ptr<float[]>(new float[floats]), floats};
    }
  }
  float* tile(index_t t) const noexcept { return storage.data.get() + t * slot; }
  float* transposed_c(index_t t) const noexcept { return tile(t) + L * L + simd::kWidth; }  // [ct_rows, Lp]
};

// Row blocks per C B^T tile: one, unless the tiles are fewer than the threads (16 chunks at T 512
// against 64 threads) and the whole pass is worth a second thread: then enough that every thread
// gets a task (they are woken for the pass anyway), rows at least kMinRows (an [8,N]·[N,l]
// product still runs whole vectors of l). `work`: the pass's work in ssd_grain's units.
inline index_t ssd_cb_row_blocks(index_t tiles, index_t L, int threads, index_t work) {
  constexpr index_t kMinRows = 8;
  if (work < kSsdMinParallelStateWork) return 1;
  const index_t wanted = (static_cast<index_t>(threads) + tiles - 1) / std::max<index_t>(1, tiles);
  return std::clamp<index_t>(wanted, 1, std::max<index_t>(1, L / kMinRows));
}

// C B^T for every (group, chunk), shared by the heads of a group; a task computes row blocks
// of tiles. 16-bit Bm, Cm: each block's rows are widened into per-task tiles first.
template <class E>
void ssd_chunk_cb(const ConstView<E, 4>& Bm, const ConstView<E, 4>& Cm, const SsdDims& dims, const SsdChunkPlan& plan,
                  const SsdCbTiles& cb, const Executor& executor) {
  const index_t L = plan.L, chunks = plan.chunk_count(), tiles = dims.G * chunks;
  const index_t tile_work = 2 * L * L * dims.N / 4;  // flops / 4
  const index_t blocks = ssd_cb_row_blocks(tiles, L, executor.concurrency(), tiles * tile_work);
  const index_t grain = blocks > 1 ? 1 : ssd_grain(tile_work);
  parallel_for(executor, tiles * blocks, grain, [&](index_t begin, index_t end) {
    constexpr bool widen = !std::is_same_v<E, float>;
    SsdMatrix bw(widen ? L : 0, dims.N), cw(widen ? L : 0, dims.N);
    for (index_t item = begin; item < end; ++item) {
      const index_t t = item / blocks, block = item % blocks;
      const SsdChunkPlan::Chunk& c = plan.chunks[static_cast<std::size_t>(t % chunks)];
      const index_t g = t / chunks, r0 = c.l * block / blocks, rows = c.l * (block + 1) / blocks - r0;
      float* tile = cb.tile(t);
      Eigen::Map<SsdMatrix> out(tile + r0 * c.l, rows, c.l);
      if constexpr (widen) {
        ssd_widen_tile(Bm, c.b, c.t0, c.l, g, bw);
        ssd_widen_tile(Cm, c.b, c.t0 + r0, rows, g, cw);
        out.noalias() = ssd_widened(cw, rows) * ssd_widened(bw, c.l).transpose();
      } else {
        const SsdConstTile c_rows = ssd_tile(Cm, c.b, c.t0 + r0, rows, g);
        out.noalias() = c_rows * ssd_tile(Bm, c.b, c.t0, c.l, g).transpose();
        if (cb.ct_rows > 0) {  // this block's tokens' columns of C^T
          Eigen::Map<SsdMatrix> ct(cb.transposed_c(t), cb.ct_rows, cb.Lp);
          ct.middleCols(r0, rows) = c_rows.transpose();
          if (block + 1 == blocks) ct.rightCols(cb.Lp - c.l).setZero();
        }
      }
      if (block + 1 == blocks) std::fill(tile + c.l * c.l, tile + c.l * c.l + simd::kWidth, 0.f);
    }
  });
}

// The state's P rows evolve independently, and so do the output columns p: a head can split
// into column blocks of whole vectors when the (sequence, head) items alone leave threads idle.
// How much a split costs depends on how its blocks get the chunk's P-independent operands:
//  - repeated (SsdChunkKernel): each block recomputes the chunk's decays and decay-masked C B^T
//    and runs the products on register panels as wide as its columns (one vector for 16). On
//    one core (AMD EPYC Zen 5, mamba2-780m T 512, thread CPU time): 2 blocks of 32 cost 1.14x
//    the whole head, 4 blocks of 16 1.68x (ssd-h128-p80, blocks of 48 + 32: 1.18x).
//  - shared (SsdBlockKernel, fp32 x / Bm / Cm): a first pass writes those operands once per
//    (head, chunk) (ssd_chunk_records) and the blocks run transposed products whose panels
//    run along the tokens and N, whatever the block's width: SSD_SHARED_COST_NOTE
// The count is the one that minimizes waves x per-block cost with those factors.
enum class SsdBlockOperands { repeated, shared };

struct SsdColumnBlocks {
  index_t count = 1, width = 1;  // blocks per head, columns per block (the last may be narrower)
};

// The work of `count` blocks of `width` columns over the whole head's (the factors above).
inline double ssd_column_blocks_cost(SsdBlockOperands operands, index_t count, index_t width) {
  if (count == 1) return 1.0;
  if (operands == SsdBlockOperands::shared) return width >= 32 ? 1.05 : 1.15;
  // by width in columns: the repeated work is per block, whatever the vector width
  return width >= 32 ? 1.15 : 1.7;
}

inline SsdColumnBlocks ssd_column_blocks(index_t items, index_t P, int threads,
                                         SsdBlockOperands operands = SsdBlockOperands::repeated) {
  const index_t T = std::max(1, threads), vectors = std::max<index_t>(1, (P + simd::kWidth - 1) / simd::kWidth);
  const auto time = [&](const SsdColumnBlocks& b) {
    return double((items * b.count + T - 1) / T) * ssd_column_blocks_cost(operands, b.count, b.width) / double(b.count);
  };
  SsdColumnBlocks best{1, P};
  for (index_t count = 2; count <= vectors; ++count) {
    // count blocks of whole vectors, as equal as they come (P = 64 in 4 blocks of 16, at any width)
    const index_t width = std::min(P, (P + count * simd::kWidth - 1) / (count * simd::kWidth) * simd::kWidth);
    const SsdColumnBlocks b{(P + width - 1) / width, width};
    if (time(b) < time(best)) best = b;
  }
  return best;
}

// The chunked SSD form as a kernel of the chunkwise engine (core/chunkwise/engine.hpp): an item is
// one (sequence, head, column block), numbered item = (h * blocks + block) * count + rank (head
// and block major, as ssd_sequences says), its state's rows [p0, p0 + cols) carried transposed in
// the first cols columns of the workspace's rhs (and of xw, y: row strides stay P). Chunk offsets
// from the engine are relative to the sequence's first token.
// state_to_output has nothing to do of its own: the read of the state and the intra-chunk term
// are one GEMM (intra). E: the storage type of x, Bm and Cm; 16-bit rows are widened by load_chunk
// into the workspace (xc, bc, cc), which the later hooks of the same chunk read.
template <class E>
struct SsdChunkKernel {
  static constexpr bool kWidened = !std::is_same_v<E, float>;
  const SsdInputsOf<E>& in;
  const SsdOutputs& out;
  const SsdOptions& options;
  const SsdDims& dims;
  const SsdChunkPlan& plan;
  const SsdCbTiles& cb;  // the shared C B^T tiles (ssd_chunk_cb)
  SsdColumnBlocks blocks;  // the column blocks of a head (ssd_column_blocks)
  bool bf16_dot = false;  // the output product on bf16 dot products (bf16_products.hpp)

  using Workspace = SsdChunkScratch;
  struct Head {
    index_t rank, h, g;  // rank: the sequence's position in plan.seqs
    index_t p0, cols;    // the column block: state rows and output columns [p0, p0 + cols)
    SequenceSpan seq;
    float D;
  };

  Workspace make_workspace() const { return SsdChunkScratch(plan.L, dims.P, dims.N, kWidened); }
  // make_workspace() in `kept`: the one kept there, reset, when it has those dimensions.
  Workspace& workspace_in(std::optional<Workspace>& kept) const {
    if (kept && kept->fits(plan.L, dims.P, dims.N, kWidened))
      kept->reset();
    else
      kept.emplace(make_workspace());
    return *kept;
  }
  // The chunk's x, Bm and Cm rows: the inputs themselves (fp32) or their widened copies.
  SsdConstTile x_tile(const Head& hd, index_t t0, index_t l, const Workspace& s) const {
    if constexpr (kWidened) return ssd_widened(s.xc, l);
    else return ssd_tile(in.x, hd.seq.batch_row, t0, l, hd.h);  // all P columns: callers add p0
  }
  SsdConstTile b_tile(const Head& hd, index_t t0, index_t l, const Workspace& s) const {
    if constexpr (kWidened) return ssd_widened(s.bc, l);
    else return ssd_tile(in.Bm, hd.seq.batch_row, t0, l, hd.g);
  }
  SsdConstTile c_tile(const Head& hd, index_t t0, index_t l, const Workspace& s) const {
    if constexpr (kWidened) return ssd_widened(s.cc, l);
    else return ssd_tile(in.Cm, hd.seq.batch_row, t0, l, hd.g);
  }
  Head begin_head(index_t item, Workspace& s) const {
    const index_t count = static_cast<index_t>(plan.seqs.size());
    const index_t rank = item % count, h = item / count / blocks.count, block = item / count % blocks.count;
    const index_t p0 = block * blocks.width, cols = std::min(blocks.width, dims.P - p0);
    const Head head{rank, h, h / (dims.H / dims.G), p0, cols, plan.seqs[static_cast<std::size_t>(rank)],
                    in.D.has_value() ? in.D(h) : 0.f};
    auto state_t = s.rhs.topLeftCorner(dims.N, cols);  // [N,cols]
    if (head.seq.read_state) {
      state_t = as_matrix(in.initial_state.select(0, head.seq.state_row).select(0, h)).middleRows(p0, cols).transpose();
    } else {
      state_t.setZero();
    }
    return head;
  }
  index_t tokens(const Head& hd) const { return hd.seq.tokens; }

  // Decays, dt-scaled x (below the state in rhs), decayed C and the decay-masked C B^T (lhs).
  void load_chunk(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    const index_t N = dims.N, L = plan.L, b = hd.seq.batch_row, h = hd.h, g = hd.g, p0 = hd.p0, cols = hd.cols;
    const index_t t0 = hd.seq.token_begin + c0;
    ssd_chunk_decays(in, options.dt_softplus, b, t0, l, h, s);
    if (c0 + L < hd.seq.tokens) {  // the next chunk's rows arrive while this one computes
      const index_t next = std::min(L, hd.seq.tokens - c0 - L);
      ssd_prefetch_rows(in.x.ptr(b, t0 + L, h) + p0 * in.x.stride(3), in.x.stride(1), next, cols);
      if (in.z.has_value()) ssd_prefetch_rows(in.z.ptr(b, t0 + L, h) + p0, in.z.stride(1), next, cols);
    }
    if constexpr (kWidened) {
      ssd_widen_tile(in.x, b, t0, l, h, s.xc);
      ssd_widen_tile(in.Bm, b, t0, l, g, s.bc);
      ssd_widen_tile(in.Cm, b, t0, l, g, s.cc);
    }
    const SsdConstTile x = x_tile(hd, t0, l, s), Cm = c_tile(hd, t0, l, s);
    s.xd_finite = true;
    for (index_t i = 0; i < l; ++i) {
      s.xd_finite &= ssd_scale_row(s.dt[i], s.decay_out[i], x.data() + i * x.outerStride() + p0, cols,
                                   s.rhs.row(N + i).data(), s.xw.row(i).data());
      s.lhs.row(i).head(N) = s.decay_in[i] * Cm.row(i);
    }
    const index_t chunk = g * plan.chunk_count() + plan.first_chunk[static_cast<std::size_t>(hd.rank)] + c0 / L;
    ssd_decay_mask(cb.tile(chunk), l, s.cs.data(), s.cs_lo.data(), l, s.lhs.data() + N, s.lhs.cols());
  }
  void state_to_output(const Head&, index_t, index_t, Workspace&) const {}
  // State to output and intra-chunk term in one product (see SsdChunkScratch).
  void intra(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    const index_t N = dims.N;
    if (s.growing) return recurrent_chunk(hd, c0, l, s);
    // A NaN or inf in dt * x takes part as 0 and is added to the rows that see it afterwards:
    // causal for non-finite values (core/chunkwise/causal_product.hpp), and every other row is
    // what a clean chunk gives, bit for bit.
    const index_t P = dims.P, cols = hd.cols;
    auto xd = s.rhs.block(N, 0, l, cols);
    const bool finite = s.xd_finite;
    if (!finite) {
      s.nonfinite_xd = xd;
      xd = xd.array().isFinite().select(xd, 0.f);
    }
    if (bf16_dot)
      ssd_output_product_bf16(s.lhs.data(), s.lhs.cols(), s.rhs.data(), l, N + l, cols, P, s.y.data(), s.bf16);
    else
      ssd_gemm(SsdLhs{s.lhs.data(), s.lhs.cols(), 1}, s.rhs.data(), P, s.y.data(), P, l, cols, N + l, 0.f, false, N);
    if (!finite) chunkwise::add_nonfinite_lower(s.lhs.block(0, N, l, l), s.nonfinite_xd, s.y.topLeftCorner(l, cols));
  }
  // A chunk in which some token's log-decay dt * A is positive (without softplus, dt + dt_bias
  // < 0: the state grows) runs the recurrence token by token, reading and advancing the state
  // in rhs: the chunked products weigh token j into row i by exp(cs_i - cs_j), which then exceeds
  // 1, and their sum cancels far above the result (1.5% off the recurrence in fuzzing, at
  // growths of e^0.3 a token over chunks of 16). Decaying chunks never take this path.
  void recurrent_chunk(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    const index_t N = dims.N, t0 = hd.seq.token_begin + c0, cols = hd.cols;
    const SsdConstTile Bm = b_tile(hd, t0, l, s), Cm = c_tile(hd, t0, l, s);
    auto state_t = s.rhs.topLeftCorner(N, cols);  // [N,cols]
    for (index_t i = 0; i < l; ++i) {
      state_t *= std::exp(s.a[i]);
      state_t.noalias() += Bm.row(i).transpose() * s.rhs.row(N + i).head(cols);
      s.y.row(i).head(cols).noalias() = Cm.row(i) * state_t;
    }
  }
  // Chunk state: decay the incoming state over the chunk, add the chunk's own contribution.
  void update_state(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    if (s.growing) return;  // recurrent_chunk advanced it
    // state_t [N,cols] (top of rhs) = exp(cs_end) state_t + Bm^T xw, Bm^T read in place.
    const SsdConstTile Bm = b_tile(hd, hd.seq.token_begin + c0, l, s);
    const index_t P = dims.P;
    ssd_gemm(SsdLhs{Bm.data(), 1, Bm.outerStride()}, s.xw.data(), P, s.rhs.data(), P, dims.N, hd.cols, l,
             std::exp(s.cs[l - 1]), true);
  }
  // D skip and z gate, row by row, then out to y (any stride).
  void store_outputs(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    const index_t P = dims.P, b = hd.seq.batch_row, h = hd.h, t0 = hd.seq.token_begin + c0, p0 = hd.p0;
    const SsdConstTile x = x_tile(hd, t0, l, s);
    for (index_t i = 0; i < l; ++i) {
      const float* zrow = nullptr;
      if (in.z.has_value()) zrow = in.z.ptr(b, t0 + i, h) + p0;  // last dim contiguous (see ssd_chunked)
      float* yrow = s.y.data() + i * P;
      ssd_finish(yrow, x.data() + i * x.outerStride() + p0, hd.D, zrow, hd.cols);
      ssd_scatter(yrow, hd.cols, out.y.ptr(b, t0 + i, h) + p0 * out.y.stride(3), out.y.stride(3));
    }
  }
  void end_head(const Head& hd, Workspace& s) const {
    if (out.final_state.has_value())
      as_matrix(out.final_state.select(0, hd.seq.state_row).select(0, hd.h)).middleRows(hd.p0, hd.cols) =
          s.rhs.topLeftCorner(dims.N, hd.cols).transpose();
  }
};

// ---- Column blocks on shared chunk records ----------------------------------------------------
//
// Split into column blocks of P, a head's chunks have work that every block needs (the decays
// and the decay-masked C B^T) and work on the head's x, z and y rows, which a narrow block would
// read and write one cache line per token row, rows H*P floats apart: a page (and a TLB walk) per
// line, where the whole head uses each page for P/16 lines. Measured on one core, such blocks of
// 16 spent 1.4x the whole head's time, their products costing the same. So the split runs three
// passes after the C B^T tiles (which then hold C^T as well, shared by the heads of a group):
//   records (ssd_chunk_records), per (head, chunk): the decays, the mask, and dt ∘ x and
//     exp(cs_end - cs) ∘ dt ∘ x of the chunk's whole rows, stored block by block;
//   blocks (SsdBlockKernel), per (sequence, head, block): only the products, transposed so that a
//     narrow block keeps wide register panels (along the tokens and along N, the block's columns
//     being the panel rows), writing Y^T into the chunk's output tile:
//       Y^T    [cols,L] = (S [cols,N] · C^T [N,L]) diag(exp(cs))  +  Xd^T [cols,L] · (CB ∘ Lmask)^T [L,L]
//       S_next [cols,N] = exp(cs_end) S  +  (exp(cs_end - cs) ∘ Xd)^T [cols,L] · B [L,N]
//     with S the block's rows of the head's [P,N] state, not transposed;
//   store (ssd_store_chunks), per (head, chunk): Y^T back to token rows, D skip, z gate, out to y.

// One record: the mask [Lp, Lp] (row j, column i: token j's weight in token i's output,
// CB[i][j] exp(cs_i - cs_j) for j <= i; zero elsewhere and past the chunk's l tokens), then dt,
// exp(cs_end - cs), a = dt * A and exp(cs) ([Lp] each; exp(cs) zero past l, the others written
// for the first l), exp(cs_end), 1 if the chunk grows (some a > 0), then per block its
// finiteness (1 if its dt ∘ x has no NaN / inf) and its xd and xw [L, width] (token rows of the
// block's columns). Records are numbered h * chunks + chunk (SsdChunkPlan::chunks), each a whole
// number of 64-byte lines long; so are the blocks' areas.
struct SsdRecordLayout {
  index_t Lp = 0, L = 0, blocks = 1, width = 1, area = 0, floats = 0;
  SsdRecordLayout(index_t L_, SsdColumnBlocks b)
      : Lp(ssd_vector_ceil(L_)), L(L_), blocks(b.count), width(b.width), area((L_ * b.width + 15) / 16 * 16) {
    floats = xd(0) + 2 * blocks * area;
  }
  index_t dt() const noexcept { return Lp * Lp; }
  index_t decay_out() const noexcept { return dt() + Lp; }
  index_t log_decay() const noexcept { return dt() + 2 * Lp; }
  index_t decay_in() const noexcept { return dt() + 3 * Lp; }
  index_t decay_end() const noexcept { return dt() + 4 * Lp; }
  index_t growing() const noexcept { return decay_end() + 1; }
  index_t finite(index_t block) const noexcept { return decay_end() + 2 + block; }
  index_t xd(index_t block) const noexcept { return (finite(blocks) + 15) / 16 * 16 + 2 * block * area; }
  index_t xw(index_t block) const noexcept { return xd(block) + area; }
};

// At most this much memory for the records and output tiles of one call (21 KB a head and chunk
// at L 32, P 64: mamba2-780m T 512 B 1 16 MB, and 8 KB of output tile); a larger call's blocks
// repeat the operands instead.
constexpr std::size_t kSsdRecordMaxBytes = std::size_t{256} << 20;

// Items of a (head, chunk) pass: about one task per thread, unless the whole pass is small.
inline index_t ssd_chunk_pass_grain(index_t items, index_t work_per_item, int threads) {
  if (items * work_per_item < kSsdMinParallelStateWork) return items;
  return (items + threads - 1) / threads;
}

// The record of every (head, chunk).
inline void ssd_chunk_records(const SsdInputsOf<float>& in, const SsdOptions& options, const SsdDims& dims,
                              const SsdChunkPlan& plan, const SsdCbTiles& cb, const SsdRecordLayout& layout,
                              float* records, const Executor& executor) {
  const index_t L = plan.L, Lp = layout.Lp, chunks = plan.chunk_count(), items = dims.H * chunks;
  const index_t grain = ssd_chunk_pass_grain(items, L * (L + 2 * dims.P), executor.concurrency());
  parallel_for(executor, items, grain, [&](index_t begin, index_t end) {
    SsdChunkScratch s(L, 1, 0);  // the decays, and the mask (row-major) in lhs
    for (index_t item = begin; item < end; ++item) {
      const index_t h = item / chunks, k = item % chunks, g = h / (dims.H / dims.G);
      const SsdChunkPlan::Chunk& c = plan.chunks[static_cast<std::size_t>(k)];
      const index_t l = c.l;
      float* record = records + item * layout.floats;
      ssd_chunk_decays(in, options.dt_softplus, c.b, c.t0, l, h, s);
      ssd_decay_mask(cb.tile(g * chunks + k), l, s.cs.data(), s.cs_lo.data(), l, s.lhs.data(), s.lhs.cols());
      Eigen::Map<SsdMatrix> mask_t(record, Lp, Lp);
      mask_t.setZero();
      mask_t.topLeftCorner(l, l) = SsdConstTile(s.lhs.data(), l, l, Eigen::OuterStride<>(s.lhs.cols())).transpose();
      std::copy_n(s.dt.data(), l, record + layout.dt());
      std::copy_n(s.decay_out.data(), l, record + layout.decay_out());
      std::copy_n(s.a.data(), l, record + layout.log_decay());
      std::copy_n(s.decay_in.data(), l, record + layout.decay_in());
      std::fill(record + layout.decay_in() + l, record + layout.decay_in() + Lp, 0.f);
      record[layout.decay_end()] = std::exp(s.cs[static_cast<std::size_t>(l - 1)]);
      record[layout.growing()] = s.growing ? 1.f : 0.f;
      // dt ∘ x and its decayed copy, whole rows read once, written block by block
      const SsdConstTile x = ssd_tile(in.x, c.b, c.t0, l, h);
      for (index_t block = 0; block < layout.blocks; ++block) {
        const index_t p0 = block * layout.width, cols = std::min(layout.width, dims.P - p0);
        bool finite = true;
        for (index_t i = 0; i < l; ++i)
          finite &= ssd_scale_row(s.dt[static_cast<std::size_t>(i)], s.decay_out[static_cast<std::size_t>(i)],
                                  x.data() + i * x.outerStride() + p0, cols, record + layout.xd(block) + i * layout.width,
                                  record + layout.xw(block) + i * layout.width);
        record[layout.finite(block)] = finite ? 1.f : 0.f;
      }
    }
  });
}

// The column blocks as a kernel of the chunkwise engine: items numbered as SsdChunkKernel's,
// (h * blocks + block) * count + rank. Each chunk reads its record and C^T and writes its rows of
// the chunk's output tile Y^T [P, Lp] (tiles numbered as the records); the store pass does the rest.
struct SsdBlockKernel {
  const SsdInputsOf<float>& in;
  const SsdOutputs& out;
  const SsdDims& dims;
  const SsdChunkPlan& plan;
  const SsdCbTiles& cb;  // C B^T tiles with C^T (SsdCbTiles::transposed_c)
  const SsdRecordLayout& layout;
  const float* records;
  float* outputs;  // [records][P][Lp]
  SsdColumnBlocks blocks;

  using Workspace = SsdBlockScratch;
  struct Head {
    index_t rank, h, g;  // rank: the sequence's position in plan.seqs
    index_t block, p0, cols;  // the column block: state rows and output columns [p0, p0 + cols)
    SequenceSpan seq;
  };

  Workspace& workspace_in(std::optional<Workspace>& kept) const {
    if (kept && kept->fits(plan.L, dims.P, dims.N))
      kept->reset();
    else
      kept.emplace(plan.L, dims.P, dims.N);
    return *kept;
  }
  Workspace make_workspace() const { return Workspace(plan.L, dims.P, dims.N); }

  Head begin_head(index_t item, Workspace& s) const {
    const index_t count = static_cast<index_t>(plan.seqs.size());
    const index_t rank = item % count, h = item / count / blocks.count, block = item / count % blocks.count;
    const index_t p0 = block * blocks.width, cols = std::min(blocks.width, dims.P - p0);
    const Head head{rank, h, h / (dims.H / dims.G), block, p0, cols, plan.seqs[static_cast<std::size_t>(rank)]};
    auto state = s.state.topRows(cols);  // [cols,N]
    if (head.seq.read_state)
      state = as_matrix(in.initial_state.select(0, head.seq.state_row).select(0, h)).middleRows(p0, cols);
    else
      state.setZero();
    return head;
  }
  index_t tokens(const Head& hd) const { return hd.seq.tokens; }
  // The chunk from token c0 of the head's sequence, as numbered in the records.
  index_t record_index(const Head& hd, index_t c0) const {
    return hd.h * plan.chunk_count() + plan.first_chunk[static_cast<std::size_t>(hd.rank)] + c0 / plan.L;
  }
  bool growing(const Workspace& s) const { return s.record[layout.growing()] != 0.f; }
  // The block's rows of the chunk's output tile.
  float* output_rows(const Head& hd, index_t c0) const {
    return outputs + (record_index(hd, c0) * dims.P + hd.p0) * layout.Lp;
  }

  void load_chunk(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    s.record = records + record_index(hd, c0) * layout.floats;
    s.xd_finite = s.record[layout.finite(hd.block)] != 0.f;
    if (c0 + l < hd.seq.tokens) {  // the next chunk's mask and scalars, and this block's xd and xw there
      const float* next = s.record + layout.floats;
      ssd_prefetch_rows(next, 0, 1, layout.xd(0));
      ssd_prefetch_rows(next + layout.xd(hd.block), 0, 1, 2 * layout.area);
    }
  }
  void state_to_output(const Head&, index_t, index_t, Workspace&) const {}
  // Y^T = (S C^T) diag(exp(cs)) + Xd^T (CB ∘ Lmask)^T, tokens along the panels. A NaN or inf in
  // dt ∘ x takes part as 0 and is added to the tokens that see it afterwards (as SsdChunkKernel).
  void intra(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    if (growing(s)) return recurrent_chunk(hd, c0, l, s);
    constexpr std::size_t R = ssd_tile_rows<2>();
    const index_t N = dims.N, Lp = layout.Lp, W = layout.width, cols = hd.cols;
    const index_t chunk = plan.first_chunk[static_cast<std::size_t>(hd.rank)] + c0 / plan.L;
    float* yt = output_rows(hd, c0);
    small_product<R, 2>(StridedOperand{s.state.data(), N, 1}, cols, N, cb.transposed_c(hd.g * plan.chunk_count() + chunk),
                        Lp, Lp, yt, Lp, Accumulate{false});
    const float* decay_in = s.record + layout.decay_in();
    for (index_t p = 0; p < cols; ++p)
      for (index_t i = 0; i < Lp; i += simd::kWidth) simd::store(yt + p * Lp + i, simd::load(yt + p * Lp + i) * simd::load(decay_in + i));
    const float* xd_raw = s.record + layout.xd(hd.block);
    const float* xd = xd_raw;
    if (!s.xd_finite) {
      const SsdConstTile raw(xd_raw, l, cols, Eigen::OuterStride<>(W));
      s.xd_zeroed.topLeftCorner(l, cols) = raw.array().isFinite().select(raw, 0.f);
      xd = s.xd_zeroed.data();
    }
    const index_t ld = s.xd_finite ? W : s.xd_zeroed.cols();
    const float* mask_t = s.record;
    small_product<R, 2>(StridedOperand{xd, 1, ld}, cols, l, mask_t, Lp, Lp, yt, Lp, Accumulate{true});
    if (!s.xd_finite) {
      for (index_t j = 0; j < l; ++j)
        for (index_t p = 0; p < cols; ++p) {
          const float v = xd_raw[j * W + p];
          if (!std::isfinite(v))
            for (index_t i = j; i < l; ++i) yt[p * Lp + i] += mask_t[j * Lp + i] * v;
        }
    }
  }
  // A growing chunk token by token (see SsdChunkKernel::recurrent_chunk), on the block's rows.
  void recurrent_chunk(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    const index_t t0 = hd.seq.token_begin + c0, cols = hd.cols, W = layout.width, Lp = layout.Lp;
    const SsdConstTile Bm = ssd_tile(in.Bm, hd.seq.batch_row, t0, l, hd.g);
    const SsdConstTile Cm = ssd_tile(in.Cm, hd.seq.batch_row, t0, l, hd.g);
    const SsdConstTile xd(s.record + layout.xd(hd.block), l, cols, Eigen::OuterStride<>(W));
    const float* a = s.record + layout.log_decay();
    Eigen::Map<SsdMatrix, Eigen::Unaligned, Eigen::OuterStride<>> yt(output_rows(hd, c0), cols, l, Eigen::OuterStride<>(Lp));
    auto state = s.state.topRows(cols);  // [cols,N]
    for (index_t i = 0; i < l; ++i) {
      state *= std::exp(a[i]);
      state.noalias() += xd.row(i).transpose() * Bm.row(i);
      yt.col(i).noalias() = state * Cm.row(i).transpose();
    }
  }
  // S = exp(cs_end) S + (exp(cs_end - cs) ∘ Xd)^T B, B read in place, panels along N.
  void update_state(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    if (growing(s)) return;  // recurrent_chunk advanced it
    constexpr std::size_t R = ssd_tile_rows<4>();
    const SsdConstTile Bm = ssd_tile(in.Bm, hd.seq.batch_row, hd.seq.token_begin + c0, l, hd.g);
    small_product<R, 4>(StridedOperand{s.record + layout.xw(hd.block), 1, layout.width}, hd.cols, l, Bm.data(),
                        Bm.outerStride(), dims.N, s.state.data(), dims.N, Accumulate{true, s.record[layout.decay_end()]});
  }
  void store_outputs(const Head&, index_t, index_t, Workspace&) const {}  // ssd_store_chunks
  void end_head(const Head& hd, Workspace& s) const {
    if (out.final_state.has_value())
      as_matrix(out.final_state.select(0, hd.seq.state_row).select(0, hd.h)).middleRows(hd.p0, hd.cols) =
          s.state.topRows(hd.cols);
  }
};

// The store pass: every (head, chunk)'s output tile Y^T [P, Lp] back to token rows, D skip and
// z gate, out to y (whole rows, as the whole-head kernel stores them).
inline void ssd_store_chunks(const SsdInputsOf<float>& in, const SsdOutputs& out, const SsdDims& dims,
                             const SsdChunkPlan& plan, const SsdRecordLayout& layout, const float* outputs,
                             const Executor& executor) {
  const index_t L = plan.L, P = dims.P, chunks = plan.chunk_count(), items = dims.H * chunks;
  parallel_for(executor, items, ssd_chunk_pass_grain(items, 3 * L * P, executor.concurrency()), [&](index_t begin, index_t end) {
    SsdMatrix y(L, P);
    for (index_t item = begin; item < end; ++item) {
      const index_t h = item / chunks;
      const SsdChunkPlan::Chunk& c = plan.chunks[static_cast<std::size_t>(item % chunks)];
      const float D = in.D.has_value() ? in.D(h) : 0.f;
      y.topRows(c.l) = SsdConstTile(outputs + item * P * layout.Lp, P, c.l, Eigen::OuterStride<>(layout.Lp)).transpose();
      const SsdConstTile x = ssd_tile(in.x, c.b, c.t0, c.l, h);
      for (index_t i = 0; i < c.l; ++i) {
        const float* zrow = in.z.has_value() ? in.z.ptr(c.b, c.t0 + i, h) : nullptr;
        float* yrow = y.row(i).data();
        ssd_finish(yrow, x.data() + i * x.outerStride(), D, zrow, P);
        ssd_scatter(yrow, P, out.y.ptr(c.b, c.t0 + i, h), out.y.stride(3));
      }
    }
  });
}

// Whether a call's column blocks would take the shared records: fp32 x / Bm / Cm, and records
// and output tiles within kSsdRecordMaxBytes (sized for the narrowest blocks, 16 columns).
template <class E>
bool ssd_shares_records(const SsdDims& dims, const SsdChunkPlan& plan) {
  if (!std::is_same_v<E, float>) return false;
  const index_t narrow = std::min<index_t>(dims.P, simd::kWidth);
  const SsdRecordLayout layout(plan.L, SsdColumnBlocks{(dims.P + narrow - 1) / narrow, narrow});
  const index_t floats = dims.H * plan.chunk_count() * (layout.floats + dims.P * layout.Lp);
  return static_cast<std::size_t>(floats) * sizeof(float) <= kSsdRecordMaxBytes;
}

// The shared form's three runs after the C B^T tiles (with C^T): records, blocks, store.
inline void ssd_shared_blocks(const SsdInputsOf<float>& in, const SsdOutputs& out, const SsdOptions& options,
                              const SsdDims& dims, const SsdChunkPlan& plan, const SsdCbTiles& cb,
                              SsdColumnBlocks blocks, const Executor& executor) {
  const SsdRecordLayout layout(plan.L, blocks);
  const auto grown = [](SsdRecordStorage& kept, std::size_t floats) {
    if (kept.floats < floats) {
      kept = SsdRecordStorage{};  // the old memory is freed before the larger one is allocated
      kept = SsdRecordStorage{std::unique_ptr<float[]>(new float[floats]), floats};
    }
  };
  SsdRecordStorage records = SsdRecordKeep::take();
  SsdOutputStorage outputs = SsdOutputKeep::take();
  grown(records, static_cast<std::size_t>(dims.H * plan.chunk_count() * layout.floats));
  grown(outputs, static_cast<std::size_t>(dims.H * plan.chunk_count() * dims.P * layout.Lp));
  ssd_chunk_records(in, options, dims, plan, cb, layout, records.data.get(), executor);
  const index_t count = static_cast<index_t>(plan.seqs.size());
  const SsdBlockKernel kernel{in, out, dims, plan, cb, layout, records.data.get(), outputs.data.get(), blocks};
  const index_t mean_tokens = std::max<index_t>(1, ssd_total_tokens(plan.seqs) / count);
  seqmix::chunkwise::run_kept<SsdTaskKeep>(
      kernel, count * dims.H * blocks.count, ssd_grain(mean_tokens * blocks.width * dims.N), plan.L, executor,
      [&](SsdTaskScratch& scratch) -> SsdBlockScratch& { return kernel.workspace_in(scratch.block); });
  ssd_store_chunks(in, out, dims, plan, layout, outputs.data.get(), executor);
  SsdRecordKeep::give_back(std::move(records));
  SsdOutputKeep::give_back(std::move(outputs));
}

// The chunked prefill. Workspace: G*chunks*(L*L + a vector) floats for the shared C B^T tiles
// and per parallel block O(L*(L+P) + P*N) floats, both kept by the thread across calls
// (SsdCbKeep, SsdTaskKeep; freed by ssd_release_thread_scratch), plus contiguous copies of x, z,
// Bm, Cm if they have a strided last dimension (per call).
// 16-bit x, Bm, Cm are never copied whole: they are widened a chunk at a time (any strides).
template <class E>
void ssd_chunked(const SsdInputsOf<E>& in_arg, const SsdOutputs& out, const SsdOptions& options, const SsdDims& dims,
                 const SequenceMap& map, const Executor& executor) {
  SsdInputsOf<E> in = in_arg;
  Tensor<float, 4> x_copy, z_copy, B_copy, C_copy;
  in.z = ssd_contiguous_last(in.z, z_copy);
  if constexpr (std::is_same_v<E, float>) {
    in.x = ssd_contiguous_last(in.x, x_copy);
    in.Bm = ssd_contiguous_last(in.Bm, B_copy);
    in.Cm = ssd_contiguous_last(in.Cm, C_copy);
  }

  const SsdChunkPlan plan(map, options.chunk_size);
  const index_t count = static_cast<index_t>(plan.seqs.size());
  if (count == 0) return;
  const index_t L = plan.L;
  const bool shared = ssd_shares_records<E>(dims, plan);
  const SsdColumnBlocks blocks =
      ssd_column_blocks(count * dims.H, dims.P, executor.concurrency(),
                        shared ? SsdBlockOperands::shared : SsdBlockOperands::repeated);
  const bool shared_blocks = shared && blocks.count > 1;
  SsdCbTiles cb(dims.G * plan.chunk_count(), L, SsdCbKeep::take(), shared_blocks ? dims.N : 0);
  ssd_chunk_cb(in.Bm, in.Cm, dims, plan, cb, executor);

  const bool bf16_dot = std::is_same_v<E, bf16> && options.bf16_compute == Bf16Compute::dot &&
                        ssd_bf16_products_fit(dims.P);
  if constexpr (std::is_same_v<E, float>) {
    if (shared_blocks) {
      ssd_shared_blocks(in, out, options, dims, plan, cb, blocks, executor);
      SsdCbKeep::give_back(std::move(cb.storage));
      return;
    }
  }
  const SsdChunkKernel<E> kernel{in, out, options, dims, plan, cb, blocks, bf16_dot};
  const index_t mean_tokens = std::max<index_t>(1, ssd_total_tokens(plan.seqs) / count);
  seqmix::chunkwise::run_kept<SsdTaskKeep>(
      kernel, count * dims.H * blocks.count, ssd_grain(mean_tokens * blocks.width * dims.N), L, executor,
      [&](SsdTaskScratch& scratch) -> SsdChunkScratch& { return kernel.workspace_in(scratch.chunk); });
  SsdCbKeep::give_back(std::move(cb.storage));
}

// Below this many tokens the recurrent form wins: the chunked form has fixed costs per call and
// per chunk (transposing the state in and out, the O(P*N) state GEMMs of a chunk, whatever its
// length). Measured at H=48 P=64 N=128 on one core: T=4 recurrent 0.15 ms vs chunked 0.25 ms;
// T=16 0.43 vs 0.39 ms; the gap grows with T from there.
constexpr index_t kSsdChunkedMinTokens = 16;

// The state after every token (token_states) comes from the recurrent form only.
inline bool ssd_use_chunked(const SsdOptions& options, const SequenceMap& map, const SsdOutputs& out) {
  if (out.token_states.has_value()) return false;
  switch (options.algorithm) {
    case SsdAlgorithm::chunked:
      return true;
    case SsdAlgorithm::recurrent:
      return false;
    case SsdAlgorithm::automatic:
    default:
      return map.max_tokens() >= kSsdChunkedMinTokens;
  }
}

// The prefill on x, Bm and Cm stored as E (float, bf16, f16): see seqmix::ssd.
template <class E>
void ssd_prefill(const SsdInputsOf<E>& in, const SsdOutputs& out, const SsdOptions& options, const Executor& executor) {
  if (options.reverse) {
    const auto rev = reversed_call("ssd", in, out);
    return ssd_prefill(rev.first, rev.second, forward_options(options), executor);
  }
  const SsdCall call = validate_ssd("ssd", in, out, options);
  if (ssd_use_chunked(options, call.map, out))
    ssd_chunked(in, out, options, call.dims, call.map, executor);
  else
    ssd_recurrent(in, out, options, call.dims, call.map, executor);
}

}  // namespace detail

/// Mamba-2 SSD prefill (SPEC section 3): y [B,T,H,P] and optionally final_state [B,H,P,N] from x,
/// dt, A, Bm, Cm and the optional D, z, dt_bias, initial_state; in.batch packs sequences and
/// maps them to state slots, out.token_states keeps every token's state (README.md, "Serving").
/// options.algorithm picks the chunked or recurrent form (automatic by default; token_states
/// forces the recurrent one); both agree with reference::ssd to rounding. Threaded over
/// (sequence, head) pairs, a head split into column blocks of P when the pairs are too few for
/// the threads (docs/operators.md, ssd, "Threads").
inline void ssd(const SsdInputs& in, const SsdOutputs& out, const SsdOptions& options = {},
                const Executor& executor = serial_executor()) {
  detail::ssd_prefill(in, out, options, executor);
}

/// The same on x, Bm and Cm stored as seqmix::bf16 or seqmix::f16 (dt, A, D, z, dt_bias, states
/// and y fp32): each chunk's (or token's) rows are widened as they are loaded, never the whole
/// tensor. docs/operators.md (section 4, half storage) gives the accuracy against fp32 inputs.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void ssd(const SsdInputsOf<H>& in, const SsdOutputs& out, const SsdOptions& options = {},
         const Executor& executor = serial_executor()) {
  detail::ssd_prefill(in, out, options, executor);
}

/// Frees the memory the calling thread keeps for ssd's chunked prefill, kept across calls so that
/// a call does not fault fresh pages in: the C B^T tiles of the calling thread's calls (G * chunks
/// * (L * L + 16) floats: 0.5 MiB at mamba2-780m T 4096, chunk 32; with C^T as well when heads
/// split into column blocks), the chunk records of such a split (H * chunks * (L^2 + 4L) floats:
/// 3.6 MB at mamba2-780m T 512) and the chunk scratch of the parallel blocks this thread ran
/// (O(L * (L + P) + P * N) floats). At most 64 MiB of each per
/// thread (a call that needs more frees it when it ends). Each thread that ran such a call or
/// block (the caller's and every pool worker) keeps its own. Call it when the memory is wanted
/// elsewhere; not while such a call runs on this thread. The next call allocates again.
inline void ssd_release_thread_scratch() {
  detail::SsdCbKeep::release();
  detail::SsdRecordKeep::release();
  detail::SsdOutputKeep::release();
  detail::SsdTaskKeep::release();
}

}  // namespace seqmix
