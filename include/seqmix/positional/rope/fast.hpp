// rope: the fast form (seqmix::rope). One pass over x at memory bandwidth: tokens are split
// over the executor, each token reads its table row once (R floats, shared by its H heads) and
// rotates every head with SIMD multiply-adds.
//
//   half-split:  a = x[j..], b = x[j+R/2..]    out[j] = a*c - b*s,  out[j+R/2] = b*c + a*s
//   interleaved: v = x[j..] holds pairs (x0, x1); swap(v) exchanges the two floats of each
//                64-bit lane (a shift pair on the lane, no shuffle table), and
//                out = v * (c0,c0,c1,c1,..) + swap(v) * (-s0,s0,-s1,s1,..)
// The interleaved coefficients are expanded per token into a per-thread buffer (reused, no
// allocation after warm-up). Rows whose last stride is not 1 take a scalar loop.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/positional/rope/reference.hpp"

namespace seqmix {

namespace detail {

using RopeBatch = simd::Batch<float>;

// Exchanges the two floats of every 64-bit lane: (x0, x1, x2, x3) -> (x1, x0, x3, x2).
inline RopeBatch swap_pairs(const RopeBatch& v) noexcept {
  const auto u = simd::bit_cast<std::uint64_t>(v);
  return simd::bit_cast<float>(simd::Batch<std::uint64_t>((u << 32) | (u >> 32)));
}

// One head's rotary part, half-split, contiguous: c, s hold R/2 values.
inline void rope_half_split_row(const float* x, float* o, const float* c, const float* s, index_t half) noexcept {
  const index_t nv = simd::vector_end(half);
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const RopeBatch a = simd::load(x + j), b = simd::load(x + j + half);
    const RopeBatch cj = simd::load(c + j), sj = simd::load(s + j);
    simd::store(o + j, simd::fma(a, cj, -(b * sj)));
    simd::store(o + j + half, simd::fma(b, cj, a * sj));
  }
  for (index_t j = nv; j < half; ++j) {
    const float a = x[j], b = x[j + half];
    o[j] = a * c[j] - b * s[j];
    o[j + half] = b * c[j] + a * s[j];
  }
}

// One head's rotary part, interleaved, contiguous: ce / se hold the expanded R coefficients.
inline void rope_interleaved_row(const float* x, float* o, const float* ce, const float* se, index_t R) noexcept {
  const index_t nv = simd::vector_end(R);  // kWidth is even, so a batch never splits a pair
  for (index_t j = 0; j < nv; j += simd::kWidth) {
    const RopeBatch v = simd::load(x + j);
    simd::store(o + j, simd::fma(v, simd::load(ce + j), swap_pairs(v) * simd::load(se + j)));
  }
  for (index_t j = nv; j < R; j += 2) {
    const float a = x[j], b = x[j + 1];
    o[j] = a * ce[j] + b * se[j];
    o[j + 1] = b * ce[j + 1] + a * se[j + 1];
  }
}

// Any strides: element by element.
inline void rope_strided_row(const float* x, index_t xs, float* o, index_t os, const float* c, const float* s,
                             index_t half, bool interleaved) noexcept {
  for (index_t i = 0; i < half; ++i) {
    const index_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = x[ia * xs], b = x[ib * xs];
    o[ia * os] = a * c[i] - b * s[i];
    o[ib * os] = b * c[i] + a * s[i];
  }
}

// One head's row x[0, R) rotated in place at table position p (already checked against the
// table), features at stride xs: the fused forms (attention's q tile, key tiles and appends)
// rotate rows they already hold in scratch with it, so q and k make no extra trip to memory.
inline void rope_row_in_place(const RopeTable& table, index_t p, float* x, index_t xs) noexcept {
  const index_t half = table.pairs();
  const float* c = table.cos_row(p);
  const float* s = table.sin_row(p);
  if (xs == 1 && table.layout() == RopeLayout::half_split)
    rope_half_split_row(x, x, c, s, half);  // each pair is read before it is written
  else
    rope_strided_row(x, xs, x, xs, c, s, half, table.layout() == RopeLayout::interleaved);
}

}  // namespace detail

/// Rotates x into out (or x in place when out is x). Throws ShapeError before writing anything
/// when a position lies outside the table, the shapes disagree or out partly overlaps x.
inline void rope(const RopeTable& table, const RopeInputs& in, const RopeOutputs& out,
                 const Executor& executor = serial_executor()) {
  static const ArgCheck check("rope");
  detail::validate_rope(check, table, in, out);
  const index_t B = in.x.size(0), T = in.x.size(1), H = in.x.size(2), D = in.x.size(3);
  const index_t R = table.rotary_dim(), half = R / 2;
  const bool interleaved = table.layout() == RopeLayout::interleaved;
  const bool in_place = detail::same_view(in.x, out.out);
  const bool contiguous = in.x.is_last_dim_contiguous() && out.out.is_last_dim_contiguous();
  // 16 KiB of x per block at least: below that, handing a block to another thread costs more
  // than rotating it.
  const index_t grain = std::max<index_t>(1, 4096 / std::max<index_t>(1, H * D));
  parallel_for(executor, B * T, grain, [&](index_t begin, index_t end) {
    thread_local std::vector<float> expanded;  // interleaved: ce[R], se[R]
    if (interleaved && static_cast<index_t>(expanded.size()) < 2 * R) expanded.resize(static_cast<std::size_t>(2 * R));
    float* ce = expanded.data();
    float* se = interleaved ? ce + R : nullptr;  // no offset on the empty buffer's null data()
    for (index_t token = begin; token < end; ++token) {
      const index_t b = token / T, t = token % T;
      const index_t p = detail::rope_position(in.positions, b, t, T);
      const float* c = table.cos_row(p);
      const float* s = table.sin_row(p);
      if (interleaved && contiguous) {
        for (index_t i = 0; i < half; ++i) {
          ce[2 * i] = ce[2 * i + 1] = c[i];
          se[2 * i] = -s[i];
          se[2 * i + 1] = s[i];
        }
      }
      for (index_t h = 0; h < H; ++h) {
        const float* x = in.x.ptr(b, t, h);
        float* o = out.out.ptr(b, t, h);
        if (!contiguous) {
          detail::rope_strided_row(x, in.x.stride(3), o, out.out.stride(3), c, s, half, interleaved);
          if (!in_place)
            for (index_t d = R; d < D; ++d) o[d * out.out.stride(3)] = x[d * in.x.stride(3)];
          continue;
        }
        if (interleaved)
          detail::rope_interleaved_row(x, o, ce, se, R);
        else
          detail::rope_half_split_row(x, o, c, s, half);
        if (!in_place)
          for (index_t d = R; d < D; ++d) o[d] = x[d];
      }
    }
  });
}

}  // namespace seqmix
