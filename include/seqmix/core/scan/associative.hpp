// Generic inclusive scan over a user-supplied monoid (SPEC section 2), parallel across time.
//
// On one thread it is the sequential fold. On several, the sequence is cut into chunks:
//   pass 1  chunk 0 is scanned for good; every other chunk but the last is reduced to one value,
//   pass 2  the chunk carries are scanned serially: carry[c] = in[0] (+) ... (+) in[start_c - 1],
//   pass 3  every chunk after the first is scanned again starting from its carry.
// Each element is combined about twice (once for chunk 0), so p threads gain about (p+1)/2.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/monoids.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

namespace detail {

// Below this many elements the two extra synchronisations cost more than a cheap monoid (a sum)
// saves by running on two threads.
constexpr index_t kMinParallelAssociativeScan = 4096;

// acc (+) in[i0] (+) ... (+) in[i1 - 1].
template <class Monoid>
typename Monoid::value_type fold_range(const Monoid& monoid, const ConstView<typename Monoid::value_type, 1>& in,
                                       index_t i0, index_t i1, typename Monoid::value_type acc) {
  for (index_t i = i0; i < i1; ++i) acc = monoid.combine(acc, in(i));
  return acc;
}

// Writes the running prefix acc (+) in[i0] (+) ... into out[i0, i1); returns the last prefix.
template <class Monoid>
typename Monoid::value_type scan_range(const Monoid& monoid, const ConstView<typename Monoid::value_type, 1>& in,
                                       const TensorView<typename Monoid::value_type, 1>& out, index_t i0,
                                       index_t i1, typename Monoid::value_type acc) {
  for (index_t i = i0; i < i1; ++i) {
    acc = monoid.combine(acc, in(i));
    out(i) = acc;
  }
  return acc;
}

// Chunk starts (and n at the end) for the chunked scan; a single chunk means "run sequentially".
inline std::vector<index_t> associative_chunks(index_t n, int threads, index_t chunk_size) {
  index_t chunks = 1;
  if (chunk_size > 0)
    chunks = std::max<index_t>(1, (n + chunk_size - 1) / chunk_size);
  else if (threads > 1 && n >= kMinParallelAssociativeScan)
    chunks = threads + 1;  // pass 1 and pass 3 each keep every thread busy with one chunk
  std::vector<index_t> bounds(static_cast<std::size_t>(chunks + 1));
  for (index_t c = 0; c <= chunks; ++c)
    bounds[c] = chunk_size > 0 ? std::min(n, c * chunk_size) : n * c / chunks;
  return bounds;
}

}  // namespace detail

/// Inclusive scan: out[i] = in[0] (+) in[1] (+) ... (+) in[i], with (+) = monoid.combine (see
/// monoids.hpp for the requirements). With options.reverse the elements are processed from the
/// last to the first, out[i] = in[n-1] (+) ... (+) in[i] (the later-processed element on the
/// right), through reversed views: no copy, same threading. Views may be strided; out may be the
/// very same view as in (in place) but must not otherwise overlap it. Allocates one value per chunk.
template <class Monoid>
void associative_scan(const Monoid& monoid, ConstView<typename Monoid::value_type, 1> in,
                      TensorView<typename Monoid::value_type, 1> out, const AssociativeScanOptions& options = {},
                      const Executor& executor = serial_executor()) {
  using Value = typename Monoid::value_type;
  detail::validate_associative_scan("associative_scan", in, out, options);
  if (options.reverse)
    return associative_scan(monoid, reversed_view(in, 0), reversed_view(out, 0), detail::forward_options(options),
                            executor);
  const index_t n = in.size(0);
  const std::vector<index_t> bounds = detail::associative_chunks(n, executor.concurrency(), options.chunk_size);
  const index_t chunks = static_cast<index_t>(bounds.size()) - 1;
  if (chunks <= 1) {
    detail::scan_range(monoid, in, out, 0, n, monoid.identity());
    return;
  }
  // carry[c]: everything before chunk c. Pass 1 leaves chunk c-1's own reduction in carry[c].
  std::vector<Value> carry(static_cast<std::size_t>(chunks), monoid.identity());
  executor.run(chunks - 1, [&](index_t c) {
    if (c == 0)
      carry[1] = detail::scan_range(monoid, in, out, bounds[0], bounds[1], monoid.identity());
    else
      carry[c + 1] = detail::fold_range(monoid, in, bounds[c], bounds[c + 1], monoid.identity());
  });
  for (index_t c = 2; c < chunks; ++c) carry[c] = monoid.combine(carry[c - 1], carry[c]);
  executor.run(chunks - 1, [&](index_t task) {
    const index_t c = task + 1;
    detail::scan_range(monoid, in, out, bounds[c], bounds[c + 1], carry[c]);
  });
}

///@{
/// The same over contiguous arrays of n values.
template <class Monoid>
void associative_scan(const Monoid& monoid, const typename Monoid::value_type* in,
                      typename Monoid::value_type* out, index_t n, const AssociativeScanOptions& options,
                      const Executor& executor = serial_executor()) {
  using Value = typename Monoid::value_type;
  ArgCheck("associative_scan").that(n >= 0, "n", "must be >= 0, got " + std::to_string(n));
  associative_scan(monoid, ConstView<Value, 1>(in, {n}), TensorView<Value, 1>(out, {n}), options, executor);
}

template <class Monoid>
void associative_scan(const Monoid& monoid, const typename Monoid::value_type* in,
                      typename Monoid::value_type* out, index_t n, const Executor& executor = serial_executor()) {
  associative_scan(monoid, in, out, n, AssociativeScanOptions{}, executor);
}

///@}
}  // namespace seqmix
