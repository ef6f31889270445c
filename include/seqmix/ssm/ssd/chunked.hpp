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
// A parallel block's chunk scratch, reused for the same dimensions (SsdChunkScratch::fits):
struct SsdTaskScratch {
  std::optional<SsdChunkScratch> chunk;
  std::size_t bytes() const { return chunk ? chunk->bytes() : 0; }
};
using SsdTaskKeep = ThreadKept<SsdTaskScratch>;
// The calling thread's C B^T tiles (SsdCbTiles), reused while large enough:
struct SsdCbStorage {
  std::unique_ptr<float[]> data;  // not zeroed: the C B^T tasks write a tile before it is read
  std::size_t floats = 0;
  std::size_t bytes() const { return floats * sizeof(float); }
};
using SsdCbKeep = ThreadKept<SsdCbStorage>;

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

// The next chunk's x and z rows of a head, asked for into L1 a row at a time between the row
// blocks of the chunk-state product, so that their misses overlap its FMAs: all of them over the
// first half of the product's N rows (then they are in flight well before load_chunk and
// store_outputs read them). Asked for in one burst at the start of load_chunk, as before, they
// waited on the full miss queue about as long as the loads they replace; measured (AMD EPYC Zen 5,
// one and two threads, T 512, old and new alternated in one process): spread over the first half
// 0.92-0.95x the time at mamba2-780m, 0.955-0.98x at ssd-h128-p80; over the whole product
// 0.95-0.98x / 0.98x; over the first quarter or eighth about the first half's (README.md).
template <class E>
struct SsdNextRows {
  const E* x = nullptr;  // first row of x (nullptr: no next chunk)
  index_t x_stride = 0;
  const float* z = nullptr;  // first row of z, or nullptr
  index_t z_stride = 0;
  index_t rows = 0, cols = 0;
  index_t product_rows = 1;  // N: the rows of the product the asks are spread over
  index_t asked = 0;

  // Rows [asked, upto).
  void ask(index_t upto) noexcept {
    for (; asked < std::min(upto, rows); ++asked) {
      ssd_prefetch_rows(x + asked * x_stride, x_stride, 1, cols);
      if (z) ssd_prefetch_rows(z + asked * z_stride, z_stride, 1, cols);
    }
  }
  // The rows due once `done` of the product's rows are complete: all of them by half of them.
  void ask_for_product_rows(index_t done) noexcept { ask((2 * done * rows + product_rows - 1) / product_rows); }
};

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
// The memory comes from `storage` (the thread's kept one), grown when too small.
struct SsdCbTiles {
  index_t L = 1, slot = 1;
  SsdCbStorage storage;

  SsdCbTiles(index_t tiles, index_t chunk, SsdCbStorage kept)
      : L(chunk), slot(chunk * chunk + simd::kWidth), storage(std::move(kept)) {
    const auto floats = static_cast<std::size_t>(tiles * slot);
    if (storage.floats < floats) {
      storage = SsdCbStorage{};  // the old tiles are freed before the larger ones are allocated
      storage = SsdCbStorage{std::unique_ptr<float[]>(new float[floats]), floats};
    }
  }
  float* tile(index_t t) const noexcept { return storage.data.get() + t * slot; }
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
        out.noalias() = ssd_tile(Cm, c.b, c.t0 + r0, rows, g) * ssd_tile(Bm, c.b, c.t0, c.l, g).transpose();
      }
      if (block + 1 == blocks) std::fill(tile + c.l * c.l, tile + c.l * c.l + simd::kWidth, 0.f);
    }
  });
}

// The state's P rows evolve independently, and so do the output columns p: a head can split
// into column blocks of whole vectors when the (sequence, head) items alone leave threads idle.
// A block is not free: each repeats the chunk's decays and decay-masked C B^T, and a one-vector
// block runs the products on one-vector register panels (a load per FMA). Measured on one core
// (AMD EPYC Zen 5, mamba2-780m T 512, thread CPU time): 2 blocks of 32 cost 1.14x the whole
// head, 4 blocks of 16 1.68x (ssd-h128-p80, blocks of 48 + 32: 1.18x). So the count is the one
// that minimizes waves x per-block cost, with those factors: 48 heads on 64 threads stay whole
// (4 blocks would fill 3 waves exactly but take about 1.27x as long), 16 heads take 4 blocks,
// 1 head on 2 threads takes 2, the model shapes on 2 threads stay whole.
struct SsdColumnBlocks {
  index_t count = 1, width = 1;  // blocks per head, columns per block (the last may be narrower)
};

inline SsdColumnBlocks ssd_column_blocks(index_t items, index_t P, int threads) {
  const index_t T = std::max(1, threads), vectors = std::max<index_t>(1, (P + simd::kWidth - 1) / simd::kWidth);
  const auto time = [&](const SsdColumnBlocks& b) {
    // The factors above, by block width in columns (the repeated work is per block, whatever the
    // vector width; a narrower vector only makes the panels less of a loss).
    const double cost = b.count == 1 ? 1.0 : b.width >= 32 ? 1.15 : 1.7;
    return double((items * b.count + T - 1) / T) * cost / double(b.count);
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
  // The x and z rows of the chunk after the one at c0 (none after the last), for update_state.
  SsdNextRows<E> next_chunk_rows(const Head& hd, index_t c0) const {
    const index_t t = hd.seq.token_begin + c0 + plan.L, b = hd.seq.batch_row, h = hd.h;
    const index_t rows = std::max<index_t>(0, std::min(plan.L, hd.seq.tokens - c0 - plan.L));
    if (rows == 0) return {};
    const bool z = in.z.has_value();
    return {in.x.ptr(b, t, h) + hd.p0 * in.x.stride(3), in.x.stride(1), z ? in.z.ptr(b, t, h) + hd.p0 : nullptr,
            z ? in.z.stride(1) : 0, rows, hd.cols, dims.N};
  }
  // Chunk state: decay the incoming state over the chunk, add the chunk's own contribution; the
  // next chunk's x and z rows are asked for between its row blocks (SsdNextRows).
  void update_state(const Head& hd, index_t c0, index_t l, Workspace& s) const {
    SsdNextRows<E> next = next_chunk_rows(hd, c0);
    if (s.growing) return next.ask(next.rows);  // recurrent_chunk advanced the state
    // state_t [N,cols] (top of rhs) = exp(cs_end) state_t + Bm^T xw, Bm^T read in place.
    const SsdConstTile Bm = b_tile(hd, hd.seq.token_begin + c0, l, s);
    const index_t P = dims.P;
    ssd_gemm(SsdLhs{Bm.data(), 1, Bm.outerStride()}, s.xw.data(), P, s.rhs.data(), P, dims.N, hd.cols, l,
             std::exp(s.cs[l - 1]), true, -1, [&](index_t i, index_t rows) { next.ask_for_product_rows(i + rows); });
    next.ask(next.rows);
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
  SsdCbTiles cb(dims.G * plan.chunk_count(), L, SsdCbKeep::take());
  ssd_chunk_cb(in.Bm, in.Cm, dims, plan, cb, executor);

  const bool bf16_dot = std::is_same_v<E, bf16> && options.bf16_compute == Bf16Compute::dot &&
                        ssd_bf16_products_fit(dims.P);
  const SsdColumnBlocks blocks = ssd_column_blocks(count * dims.H, dims.P, executor.concurrency());
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
/// * (L * L + 16) floats: 0.5 MiB at mamba2-780m T 4096, chunk 32) and the chunk scratch of the
/// parallel blocks this thread ran (O(L * (L + P) + P * N) floats). At most 64 MiB of each per
/// thread (a call that needs more frees it when it ends). Each thread that ran such a call or
/// block (the caller's and every pool worker) keeps its own. Call it when the memory is wanted
/// elsewhere; not while such a call runs on this thread. The next call allocates again.
inline void ssd_release_thread_scratch() {
  detail::SsdCbKeep::release();
  detail::SsdTaskKeep::release();
}

}  // namespace seqmix
