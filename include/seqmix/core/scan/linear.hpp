// Fast first-order linear recurrence h_t = a_t * h_{t-1} + b_t over [B,T,D] (SPEC section 2; the
// definition is reference::linear_scan in reference.hpp).
//
// Vectorized across channels (the recurrence is independent per channel). Two ways to use
// several threads, chosen by LinearScanOptions::split (see ScanSplit):
//   channels  each task owns (batch row, block of channels) for all T: one streaming pass.
//   time      the three-pass chunked scan, for inputs with too few channels to share: chunk c is
//             reduced to the affine map h -> P_c h + L_c (P_c = prod of a over the chunk, L_c = the
//             chunk's scan from zero), the maps are composed serially over chunks, and each chunk
//             is rescanned from its true carry. Chunk 0 knows its carry (h0) at once, so it is
//             scanned for good in pass 1; with only h_last wanted there is no pass 3 at all.
// Both paths give the same results as the reference up to rounding (FMA, vector exp, and the
// regrouped products of the time path).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

namespace detail {

// Below four vectors per thread and time step, the per-step loop overhead and the FMA latency
// chain through the state show, and cutting time instead measures faster.
constexpr index_t kMinChannelsPerTask = 4 * simd::kWidth;
// Shorter time chunks make the fixed cost of the extra passes (two synchronisations, the carry
// scan over B*D channels per chunk) visible next to the chunk's own work.
constexpr index_t kMinTimeChunk = 512;
// Outputs above this size (half the 32 MiB L3 of the target machines) are evicted before anyone
// reads them, so OutputStores::automatic writes them around the caches: that saves the
// read-for-ownership of every output line, a quarter of the traffic of an all-states scan.
constexpr index_t kStreamingOutputBytes = index_t{16} << 20;

// The [T, n] part of one batch row from channel d0 on: element (t, i) is at
// ptr[t * t_stride + i * d_stride].
template <class T>
struct ScanSlice {
  T* ptr = nullptr;
  index_t t_stride = 0, d_stride = 0;
  T* row(index_t t) const { return ptr + t * t_stride; }
};

template <class T>
ScanSlice<T> scan_slice(const TensorView<T, 3>& view, index_t batch, index_t d0) {
  if (!view.has_value()) return {};
  return {view.data() + batch * view.stride(0) + d0 * view.stride(2), view.stride(1), view.stride(2)};
}

template <GateSpace G>
simd::Batch<float> gate_value(const simd::Batch<float>& stored) {
  if constexpr (G == GateSpace::log)
    return simd::exp(stored);
  else
    return stored;
}

template <GateSpace G>
float gate_value(float stored) {
  if constexpr (G == GateSpace::log)
    return std::exp(stored);
  else
    return stored;
}

// How a scan step writes its output row.
enum class StoreKind { none, cached, streaming };

constexpr std::size_t kBatchBytes = simd::kFloatWidth * sizeof(float);

// Scalars to process before `out` is aligned for stream_store (all n if it never will be).
inline index_t stream_head(const float* out, index_t n) {
  const auto address = reinterpret_cast<std::uintptr_t>(out);
  if (address % sizeof(float) != 0) return n;
  return std::min<index_t>(n, static_cast<index_t>((kBatchBytes - address % kBatchBytes) % kBatchBytes / sizeof(float)));
}

// One time step over n channels: state = a * state + b, then out = state unless S is none.
// `state` is contiguous scratch; a, b, out are rows of the operands with channel stride 1.
template <GateSpace G, StoreKind S>
void step_contiguous(const float* a, const float* b, float* state, float* out, index_t n) {
  auto scalar = [&](index_t i) {
    state[i] = gate_value<G>(a[i]) * state[i] + b[i];
    if constexpr (S != StoreKind::none) out[i] = state[i];
  };
  index_t i = 0;
  if constexpr (S == StoreKind::streaming)
    for (const index_t head = stream_head(out, n); i < head; ++i) scalar(i);
  for (const index_t nv = i + simd::vector_end(n - i); i < nv; i += simd::kWidth) {
    const auto h = simd::fma(gate_value<G>(simd::load(a + i)), simd::load(state + i), simd::load(b + i));
    simd::store(state + i, h);
    if constexpr (S == StoreKind::cached) simd::store(out + i, h);
    if constexpr (S == StoreKind::streaming) simd::stream_store(out + i, h);
  }
  for (; i < n; ++i) scalar(i);
}

// The same for rows with any channel strides (scalar).
template <GateSpace G, StoreKind S>
void step_strided(const float* a, index_t sa, const float* b, index_t sb, float* state, float* out,
                  index_t so, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    state[i] = gate_value<G>(a[i * sa]) * state[i] + b[i * sb];
    if constexpr (S != StoreKind::none) out[i * so] = state[i];
  }
}

// Rows narrower than this many vectors keep their state in registers across time steps (a step
// then costs one FMA latency, not a store-to-load round trip through the scratch state). The
// tiles' loops over their kVectors (<= 4) vectors carry `#pragma GCC unroll`: GCC 12 unrolls them
// completely only at -O3, and at -O2 kept the state on the stack, the round trip on every step.
constexpr index_t kMaxTileVectors = 4;

// Rows [t0, t1) of the first kVectors * kWidth channels, state held in registers.
template <GateSpace G, bool kStore, int kVectors>
void scan_tile(const ScanSlice<const float>& a, const ScanSlice<const float>& b, const ScanSlice<float>& h,
               float* state, index_t t0, index_t t1) {
  static_assert(kVectors <= 4, "the loops over kVectors carry #pragma GCC unroll 4");
  simd::Batch<float> s[kVectors];
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) s[v] = simd::load(state + v * simd::kWidth);
  for (index_t t = t0; t < t1; ++t) {
    const float *ar = a.row(t), *br = b.row(t);
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) {
      s[v] = simd::fma(gate_value<G>(simd::load(ar + v * simd::kWidth)), s[v], simd::load(br + v * simd::kWidth));
      if constexpr (kStore) simd::store(h.row(t) + v * simd::kWidth, s[v]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) simd::store(state + v * simd::kWidth, s[v]);
}

// Channels [i0, n) of narrow rows, one channel at a time with its state in a register.
template <GateSpace G, bool kStore>
void scan_lanes(const ScanSlice<const float>& a, const ScanSlice<const float>& b, const ScanSlice<float>& h,
                float* state, index_t t0, index_t t1, index_t i0, index_t n) {
  for (index_t i = i0; i < n; ++i) {
    float s = state[i];
    for (index_t t = t0; t < t1; ++t) {
      s = gate_value<G>(a.row(t)[i * a.d_stride]) * s + b.row(t)[i * b.d_stride];
      if constexpr (kStore) h.row(t)[i * h.d_stride] = s;
    }
    state[i] = s;
  }
}

template <GateSpace G, bool kStore>
void scan_narrow(const ScanSlice<const float>& a, const ScanSlice<const float>& b, const ScanSlice<float>& h,
                 float* state, index_t t0, index_t t1, index_t n) {
  const index_t vectors = n / simd::kWidth;
  switch (vectors) {
    case 1: scan_tile<G, kStore, 1>(a, b, h, state, t0, t1); break;
    case 2: scan_tile<G, kStore, 2>(a, b, h, state, t0, t1); break;
    case 3: scan_tile<G, kStore, 3>(a, b, h, state, t0, t1); break;
    case 4: scan_tile<G, kStore, 4>(a, b, h, state, t0, t1); break;
    default: break;
  }
  scan_lanes<G, kStore>(a, b, h, state, t0, t1, vectors * simd::kWidth, n);
}

// Runs the recurrence over rows [t0, t1) of n channels from `state` (updated in place).
template <GateSpace G, StoreKind S>
void scan_rows(const ScanSlice<const float>& a, const ScanSlice<const float>& b, const ScanSlice<float>& h,
               float* state, index_t t0, index_t t1, index_t n) {
  constexpr bool kStore = S != StoreKind::none;
  const bool contiguous = n <= 1 || (a.d_stride == 1 && b.d_stride == 1 && (!kStore || h.d_stride == 1));
  if (contiguous && n < (kMaxTileVectors + 1) * simd::kWidth) return scan_narrow<G, kStore>(a, b, h, state, t0, t1, n);
  for (index_t t = t0; t < t1; ++t) {
    if (contiguous)
      step_contiguous<G, S>(a.row(t), b.row(t), state, kStore ? h.row(t) : nullptr, n);
    else
      step_strided<G, S>(a.row(t), a.d_stride, b.row(t), b.d_stride, state, kStore ? h.row(t) : nullptr,
                         h.d_stride, n);
  }
  if constexpr (S == StoreKind::streaming) simd::stream_fence();
}

// The chunk reduction of the time split keeps, per channel, three numbers: the local scan from
// zero (state), the product of the gates (prod) and the largest magnitude any prefix of that
// product reached (peak). The peak bounds the part of the true states the carry contributes
// (|prefix product * carry|), which tells pass 2 whether combining the chunk's map with its
// carry is safe (see combine_chunk).
inline simd::Batch<float> running_peak(const simd::Batch<float>& peak, const simd::Batch<float>& prod) {
  return xsimd::max(peak, xsimd::abs(prod));
}
inline float running_peak(float peak, float prod) { return std::max(peak, std::fabs(prod)); }

// One time step of the chunk reduction: state = a * state + b, prod *= a, peak = max(peak, |prod|)
// (all contiguous).
template <GateSpace G>
void reduce_step_contiguous(const float* a, const float* b, float* state, float* prod, float* peak, index_t n) {
  const index_t nv = simd::vector_end(n);
  for (index_t i = 0; i < nv; i += simd::kWidth) {
    const auto gate = gate_value<G>(simd::load(a + i));
    simd::store(state + i, simd::fma(gate, simd::load(state + i), simd::load(b + i)));
    const auto p = gate * simd::load(prod + i);
    simd::store(prod + i, p);
    simd::store(peak + i, running_peak(simd::load(peak + i), p));
  }
  for (index_t i = nv; i < n; ++i) {
    const float gate = gate_value<G>(a[i]);
    state[i] = gate * state[i] + b[i];
    prod[i] *= gate;
    peak[i] = running_peak(peak[i], prod[i]);
  }
}

template <GateSpace G>
void reduce_step_strided(const float* a, index_t sa, const float* b, index_t sb, float* state, float* prod,
                         float* peak, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    const float gate = gate_value<G>(a[i * sa]);
    state[i] = gate * state[i] + b[i * sb];
    prod[i] *= gate;
    peak[i] = running_peak(peak[i], prod[i]);
  }
}

// Narrow rows: the reduction of the first kVectors vectors with state and product in registers.
template <GateSpace G, int kVectors>
void reduce_tile(const ScanSlice<const float>& a, const ScanSlice<const float>& b, float* state, float* prod,
                 float* peak, index_t t0, index_t t1) {
  static_assert(kVectors <= 4, "the loops over kVectors carry #pragma GCC unroll 4");
  simd::Batch<float> s[kVectors], p[kVectors], m[kVectors];
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v)
    s[v] = simd::Batch<float>(0.f), p[v] = simd::Batch<float>(1.f), m[v] = simd::Batch<float>(0.f);
  for (index_t t = t0; t < t1; ++t) {
    const float *ar = a.row(t), *br = b.row(t);
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) {
      const auto gate = gate_value<G>(simd::load(ar + v * simd::kWidth));
      s[v] = simd::fma(gate, s[v], simd::load(br + v * simd::kWidth));
      p[v] = gate * p[v];
      m[v] = running_peak(m[v], p[v]);  // off the latency chains of s and p
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) {
    simd::store(state + v * simd::kWidth, s[v]);
    simd::store(prod + v * simd::kWidth, p[v]);
    simd::store(peak + v * simd::kWidth, m[v]);
  }
}

template <GateSpace G>
void reduce_narrow(const ScanSlice<const float>& a, const ScanSlice<const float>& b, float* state, float* prod,
                   float* peak, index_t t0, index_t t1, index_t n) {
  const index_t vectors = n / simd::kWidth;
  switch (vectors) {
    case 1: reduce_tile<G, 1>(a, b, state, prod, peak, t0, t1); break;
    case 2: reduce_tile<G, 2>(a, b, state, prod, peak, t0, t1); break;
    case 3: reduce_tile<G, 3>(a, b, state, prod, peak, t0, t1); break;
    case 4: reduce_tile<G, 4>(a, b, state, prod, peak, t0, t1); break;
    default: break;
  }
  for (index_t i = vectors * simd::kWidth; i < n; ++i) {
    float s = 0.f, p = 1.f, m = 0.f;
    for (index_t t = t0; t < t1; ++t) {
      const float gate = gate_value<G>(a.row(t)[i * a.d_stride]);
      s = gate * s + b.row(t)[i * b.d_stride];
      p *= gate;
      m = running_peak(m, p);
    }
    state[i] = s, prod[i] = p, peak[i] = m;
  }
}

// Reduces rows [t0, t1) to the affine map h -> prod * h + state, and the peak of its prefix
// products.
template <GateSpace G>
void reduce_rows(const ScanSlice<const float>& a, const ScanSlice<const float>& b, float* state, float* prod,
                 float* peak, index_t t0, index_t t1, index_t n) {
  const bool contiguous = n <= 1 || (a.d_stride == 1 && b.d_stride == 1);
  if (contiguous && n < (kMaxTileVectors + 1) * simd::kWidth)
    return reduce_narrow<G>(a, b, state, prod, peak, t0, t1, n);
  std::fill(state, state + n, 0.f);
  std::fill(prod, prod + n, 1.f);
  std::fill(peak, peak + n, 0.f);
  for (index_t t = t0; t < t1; ++t) {
    if (contiguous)
      reduce_step_contiguous<G>(a.row(t), b.row(t), state, prod, peak, n);
    else
      reduce_step_strided<G>(a.row(t), a.d_stride, b.row(t), b.d_stride, state, prod, peak, n);
  }
}

// Pass 2 of the time split for one channel of one chunk: the state leaving the chunk, given the
// state `carry` entering it (exact, by induction over the chunks) and the chunk's reduction.
//
// Non-finite values: the time split must give what the sequential recurrence gives, also where
// that overflows to +-inf or turns NaN (a = -1.5 over thousands of tokens, log a = +1, a NaN or
// inf in the input). The regrouped form prod * carry + local cannot: prod overflows to inf while
// carry is 0 (inf * 0 = NaN where the recurrence stays finite), prod * carry and local overflow
// to infinities of opposite sign (inf - inf = NaN where the recurrence holds one of them), and a
// prefix of the product can overflow mid-chunk and be multiplied back to a finite value by a
// later zero gate (the recurrence is NaN there, the regrouped form finite). So the regrouped form
// is used only when it is safe: every term finite, and the carry's share of every state inside
// the chunk, at most peak * |carry|, far (a factor 16) below FLT_MAX, so no state in the chunk
// can overflow whatever rounding does. Otherwise this channel's chunk is rescanned from its
// carry one token at a time, exactly as the sequential form does: slow, but only for channels
// that overflow or carry non-finite values, which no useful model produces.
// NaN stays causal either way: a chunk's carry depends only on earlier tokens.
template <GateSpace G>
float combine_chunk(float carry, float prod, float local, float peak, const ScanSlice<const float>& a,
                    const ScanSlice<const float>& b, index_t i, index_t t0, index_t t1) {
  constexpr double kSafeMagnitude = std::numeric_limits<float>::max() / 16.0;
  const float combined = prod * carry + local;
  if (std::isfinite(combined) && std::isfinite(local) && std::isfinite(carry) && std::isfinite(peak) &&
      static_cast<double>(peak) * std::fabs(static_cast<double>(carry)) <= kSafeMagnitude)
    return combined;
  float s = carry;
  for (index_t t = t0; t < t1; ++t) s = gate_value<G>(a.row(t)[i * a.d_stride]) * s + b.row(t)[i * b.d_stride];
  return s;
}

struct LinearScanArgs {
  ConstView<float, 3> a, b;
  ConstView<float, 2> h0;
  TensorView<float, 3> h_all;
  TensorView<float, 2> h_last;
  index_t B, T, D;
  bool stream;  // write h_all with non-temporal stores

  // state[i] = h0[batch, d0 + i], or 0 without h0.
  void load_state(index_t batch, index_t d0, index_t n, float* state) const {
    for (index_t i = 0; i < n; ++i) state[i] = h0.has_value() ? h0(batch, d0 + i) : 0.f;
  }
  void store_last(index_t batch, index_t d0, index_t n, const float* state) const {
    if (h_last.has_value())
      for (index_t i = 0; i < n; ++i) h_last(batch, d0 + i) = state[i];
  }
  // Rows [t0, t1) of channels [d0, d0 + n) of one batch row, from state; h_all written if given.
  template <GateSpace G>
  void scan(index_t batch, index_t d0, index_t n, float* state, index_t t0, index_t t1) const {
    const auto as = scan_slice(a, batch, d0), bs = scan_slice(b, batch, d0);
    if (!h_all.has_value())
      scan_rows<G, StoreKind::none>(as, bs, {}, state, t0, t1, n);
    else if (stream)
      scan_rows<G, StoreKind::streaming>(as, bs, scan_slice(h_all, batch, d0), state, t0, t1, n);
    else
      scan_rows<G, StoreKind::cached>(as, bs, scan_slice(h_all, batch, d0), state, t0, t1, n);
  }
};

inline bool use_streaming_stores(OutputStores requested, const TensorView<float, 3>& h_all) {
  if (requested != OutputStores::automatic) return requested == OutputStores::streaming;
  return h_all.numel() * static_cast<index_t>(sizeof(float)) > kStreamingOutputBytes;
}

// From this many threads on, a memory-bound scan with fewer batch rows than threads is split in
// time after all (below: on few cores, one row per core). One core streams about 60 GB/s, the
// memory of a socket of 8 cores or more several times that (8 to 12 DDR5 channels, 300-460
// GB/s), so a row left on one core leaves most of the bandwidth, and the other cores, unused.
// Time, not channels: a block of channels reads one line per time step from each array, a new
// 4 KB page every step for D >= 1024, which no prefetcher follows (64 blocks of 16 channels at
// B=1, T=65536, D=1024: 256 ms of one-core time against 18 ms for the whole row), while a
// time chunk streams whole rows; the chunked scan's extra pass reads a and b once more.
constexpr int kMinThreadsToSplitStreamingRows = 8;

// The bytes a scan moves: a and b read, h_all written when wanted.
inline index_t scan_bytes(index_t B, index_t T, index_t D, bool wants_all_states) {
  return (wants_all_states ? 3 : 2) * B * T * D * static_cast<index_t>(sizeof(float));
}

// The time split pays a second pass over its chunks; measured here it wins only when just the
// last state is wanted (B=1, T=65536, D=16 on 2 threads: 0.046 vs 0.076 ms on one thread) and
// loses when every state is written (0.155 vs 0.109 ms), so automatic picks it only then, or
// for a memory-bound scan of few rows on many threads (kMinThreadsToSplitStreamingRows).
inline ScanSplit choose_split(ScanSplit requested, index_t B, index_t T, index_t D, int threads,
                              bool wants_all_states) {
  if (requested != ScanSplit::automatic) return requested;
  const bool long_enough = T >= threads * kMinTimeChunk;
  if (threads >= kMinThreadsToSplitStreamingRows && B < threads && long_enough &&
      scan_bytes(B, T, D, wants_all_states) > kStreamingOutputBytes)
    return ScanSplit::time;
  if (threads <= 1 || B * D >= threads * kMinChannelsPerTask || wants_all_states) return ScanSplit::channels;
  return long_enough ? ScanSplit::time : ScanSplit::channels;
}

// Channel blocks per batch row: enough tasks to be a multiple of the thread count (3 rows on 2
// threads become 6 half rows, not 2 + 1), each block at least one vector wide.
inline index_t channel_blocks(index_t B, index_t D, int threads) {
  index_t blocks = 1;
  while ((B * blocks) % threads != 0 && blocks < threads) ++blocks;
  return std::max<index_t>(1, std::min(blocks, D / simd::kWidth));
}

// Block j of `blocks` over D channels; inner boundaries are multiples of the vector width.
inline index_t block_start(index_t D, index_t blocks, index_t j) {
  if (j >= blocks) return D;
  const index_t start = D * j / blocks;
  return start - start % simd::kWidth;
}

// A memory-bound scan (more bytes than the cache holds) keeps each batch row on one thread.
// Measured here (B=1, T=65536, D=1024): one core streams 61.6 GB/s; the row split between two
// cores drops to 40.8 GB/s (33 vs 55 at D=4096; last state only: 26.8 vs 47.8), while two cores
// on separate rows reach 56-79 GB/s together. With B = 1 the scan runs on one core, at the
// memory's speed.
inline index_t channel_blocks_for(const LinearScanArgs& x, int threads) {
  const index_t bytes = scan_bytes(x.B, x.T, x.D, x.h_all.has_value());
  return bytes > kStreamingOutputBytes ? 1 : channel_blocks(x.B, x.D, threads);
}

template <GateSpace G>
void linear_scan_channels(const LinearScanArgs& x, const Executor& executor) {
  const index_t blocks = channel_blocks_for(x, executor.concurrency());
  AlignedVector<float> state(static_cast<std::size_t>(x.B * x.D));  // [B,D], each task its own part
  executor.run(x.B * blocks, [&](index_t task) {
    const index_t batch = task / blocks, j = task % blocks;
    const index_t d0 = block_start(x.D, blocks, j), n = block_start(x.D, blocks, j + 1) - d0;
    float* s = state.data() + batch * x.D + d0;
    x.load_state(batch, d0, n, s);
    x.template scan<G>(batch, d0, n, s, 0, x.T);
    x.store_last(batch, d0, n, s);
  });
}

// Chunk starts along time (and T at the end). With a rescan (h_all wanted), threads + 1 chunks:
// pass 1 scans chunk 0 for good while the others reduce theirs, pass 3 rescans chunks 1..p. For
// wide rows (memory-bound) chunk 0 is two thirds the size of the others, since its scan moves 12
// bytes per element and a reduction 8, so pass 1 stays balanced; narrow rows are bound by the
// FMA latency chain, where scan and reduction cost the same, so all chunks are equal. Without a
// rescan, one equal chunk per thread.
inline std::vector<index_t> linear_scan_chunks(index_t T, int threads, bool rescan, bool narrow, index_t chunk_size) {
  std::vector<index_t> bounds;
  if (chunk_size > 0) {
    for (index_t t = 0; t < T; t += chunk_size) bounds.push_back(t);
    if (bounds.empty()) bounds.push_back(0);
  } else if (rescan) {
    const index_t first = narrow ? 3 : 2, weight = first + 3 * static_cast<index_t>(threads);
    bounds.push_back(0);
    for (index_t c = 1; c <= threads; ++c) bounds.push_back(T * (first + 3 * (c - 1)) / weight);
  } else {
    for (index_t c = 0; c < threads; ++c) bounds.push_back(T * c / threads);
  }
  bounds.push_back(T);
  return bounds;
}

// Scratch of the time split. Up to kKeptScratchFloats it is a per-thread buffer kept across
// calls: a fresh allocation's pages are faulted in and given back on every call, about 0.3 ms
// serial at B=1, T=65536, D=1024 on 64 threads (65 chunks), more than the scan's own 64-thread
// time. Larger ones are allocated per call and left uninitialized (pass 1's tasks write every
// element read later), so their pages are first touched by those tasks, in parallel.
class TimeSplitScratch {
 public:
  static constexpr index_t kKeptScratchFloats = index_t{1} << 20;  // 4 MB per thread at most

  explicit TimeSplitScratch(index_t n) : n_(static_cast<std::size_t>(n)) {
    if (n <= kKeptScratchFloats) {
      AlignedVector<float>& kept = kept_buffer();
      if (kept.size() < n_) kept.resize(n_);
      data_ = kept.data();
    } else {
      owned_ = AlignedAllocator<float>().allocate(n_);
      data_ = owned_;
    }
  }
  ~TimeSplitScratch() {
    if (owned_) AlignedAllocator<float>().deallocate(owned_, n_);
  }
  TimeSplitScratch(const TimeSplitScratch&) = delete;
  TimeSplitScratch& operator=(const TimeSplitScratch&) = delete;
  float* data() const noexcept { return data_; }

 private:
  static AlignedVector<float>& kept_buffer() {
    thread_local AlignedVector<float> buffer;
    return buffer;
  }
  std::size_t n_;
  float* owned_ = nullptr;
  float* data_ = nullptr;
};

// Pass 2 of the time split runs over blocks of channels (each channel's chain over the chunks is
// independent): at least one AVX-512 vector of channels per task (a cache line), and at least
// this many (channel, chunk) combines, so that a short pass (few chunks, few channels: 2 threads)
// stays on the calling thread.
constexpr index_t kMinCombinesPerTask = 1024;
constexpr index_t kMinCombineChannels = 16;

template <GateSpace G>
void linear_scan_time(const LinearScanArgs& x, index_t chunk_size, const Executor& executor) {
  const bool rescan = x.h_all.has_value();
  const bool narrow = x.D < (kMaxTileVectors + 1) * simd::kWidth;  // the rows scan_narrow handles
  const std::vector<index_t> bounds = linear_scan_chunks(x.T, executor.concurrency(), rescan, narrow, chunk_size);
  const index_t chunks = static_cast<index_t>(bounds.size()) - 1;
  if (chunks < 2) return linear_scan_channels<G>(x, executor);
  const index_t B = x.B, D = x.D, BD = B * D;
  // carry[c][b][d]: the state entering chunk c; pass 1 leaves chunk c-1's local scan there.
  // prod[c][b][d]: the product of a over chunk c; peak[c][b][d]: the largest |prefix product|.
  // One scratch for the three; rows c >= 1 of carry (and of prod and peak where c < reduced)
  // are written by pass 1 before anything reads them.
  const TimeSplitScratch scratch((3 * chunks + 1) * BD);
  float* const carry = scratch.data();
  float* const prod = carry + (chunks + 1) * BD;
  float* const peak = prod + chunks * BD;
  const index_t reduced = rescan ? chunks - 1 : chunks;  // the last chunk needs no reduction if rescanned
  executor.run(reduced, [&](index_t c) {
    for (index_t batch = 0; batch < B; ++batch) {
      float* local = carry + ((c + 1) * B + batch) * D;
      if (c == 0) {
        x.load_state(batch, 0, D, local);
        x.template scan<G>(batch, 0, D, local, bounds[0], bounds[1]);
      } else {
        reduce_rows<G>(scan_slice(x.a, batch, 0), scan_slice(x.b, batch, 0), local,
                       prod + (c * B + batch) * D, peak + (c * B + batch) * D, bounds[c],
                       bounds[c + 1], D);
      }
    }
  });
  // Pass 2: carry[c+1] = prod[c] * carry[c] + local[c], serially over chunks (combine_chunk),
  // blocks of the B*D channels in parallel.
  const index_t grain = std::max(kMinCombineChannels, kMinCombinesPerTask / std::max<index_t>(1, reduced - 1));
  parallel_for(executor, BD, grain, [&](index_t begin, index_t end) {
    for (index_t c = 1; c < reduced; ++c) {
      const float* p = prod + c * BD;
      const float* m = peak + c * BD;
      const float* in = carry + c * BD;
      float* out = carry + (c + 1) * BD;
      for (index_t i = begin; i < end;) {
        const index_t batch = i / D, row_end = std::min(end, (batch + 1) * D);
        const auto as = scan_slice(x.a, batch, 0), bs = scan_slice(x.b, batch, 0);
        for (; i < row_end; ++i)
          out[i] = combine_chunk<G>(in[i], p[i], out[i], m[i], as, bs, i - batch * D, bounds[c], bounds[c + 1]);
      }
    }
  });
  if (rescan) {
    executor.run(chunks - 1, [&](index_t task) {
      const index_t c = task + 1;  // updates carry[c] in place; no other task reads it
      for (index_t batch = 0; batch < B; ++batch)
        x.template scan<G>(batch, 0, D, carry + (c * B + batch) * D, bounds[c], bounds[c + 1]);
    });
  }
  const float* last = carry + (rescan ? chunks - 1 : chunks) * BD;
  for (index_t batch = 0; batch < B; ++batch) x.store_last(batch, 0, D, last + batch * D);
}

template <GateSpace G>
void linear_scan_dispatch(const LinearScanArgs& x, const LinearScanOptions& options, const Executor& executor) {
  if (choose_split(options.split, x.B, x.T, x.D, executor.concurrency(), x.h_all.has_value()) == ScanSplit::time)
    linear_scan_time<G>(x, options.chunk_size, executor);
  else
    linear_scan_channels<G>(x, executor);
}

}  // namespace detail

/// h_t = a_t * h_{t-1} + b_t for every batch row and channel (definition: reference::linear_scan).
///   a, b    [B,T,D]  a_t directly or as log a_t (options.gate_space); any strides
///   h0      [B,D]    initial state; empty view = zeros
///   h_all   [B,T,D]  every state h_t; empty view = not wanted
///   h_last  [B,D]    the last state (h0 when T = 0); empty view = not wanted
/// At least one of h_all and h_last must be given. h_all may be the very same view as a or b (the
/// scan runs in place: each element is read before it is overwritten) and h_last may be h0; no
/// other overlap is allowed. Scratch: O(B*D) floats per call (times the chunk count on the time
/// path), allocated here.
inline void linear_scan(ConstView<float, 3> a, ConstView<float, 3> b, ConstView<float, 2> h0,
                        TensorView<float, 3> h_all, TensorView<float, 2> h_last,
                        const LinearScanOptions& options = {}, const Executor& executor = serial_executor()) {
  if (options.reverse)
    return linear_scan(reversed_time_view(a), reversed_time_view(b), h0, reversed_time_view(h_all), h_last,
                       detail::forward_options(options), executor);
  const auto [B, T, D] = detail::validate_linear_scan("linear_scan", a, b, h0, h_all, h_last, options);
  const detail::LinearScanArgs args{a, b, h0, h_all, h_last, B, T, D,
                                    detail::use_streaming_stores(options.stores, h_all)};
  if (options.gate_space == GateSpace::log)
    detail::linear_scan_dispatch<GateSpace::log>(args, options, executor);
  else
    detail::linear_scan_dispatch<GateSpace::direct>(args, options, executor);
}

}  // namespace seqmix
